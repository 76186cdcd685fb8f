//! Tests of the whole pipeline (lex, compile, evaluate), rendered through
//! a tiny textual form of the plan so that expectations stay readable:
//! includes print as `[inc src|alt|c]`, try blocks as `[try …|except …]`.

use super::*;
use crate::testing::form_encode;
use crate::url::UrlError;

fn render_into(t: &Template, segs: &[Segment], out: &mut Vec<u8>) {
    for s in segs {
        match s {
            Segment::Literal(r) => out.extend_from_slice(&t.source()[r.clone()]),
            Segment::Text(b) => out.extend_from_slice(b),
            Segment::Include(i) => {
                out.extend_from_slice(b"[inc ");
                out.extend_from_slice(i.src.as_bytes());
                if let Some(a) = &i.alt {
                    out.push(b'|');
                    out.extend_from_slice(a.as_bytes());
                }
                if i.onerror_continue {
                    out.extend_from_slice(b"|c");
                }
                out.push(b']');
            }
            Segment::Try { attempt, except } => {
                out.extend_from_slice(b"[try ");
                render_into(t, attempt, out);
                out.extend_from_slice(b"|except ");
                render_into(t, except, out);
                out.push(b']');
            }
        }
    }
}

fn render_with(input: &str, vars: &RequestVars) -> String {
    let t = Template::compile(input.as_bytes());
    let mut out = Vec::new();
    render_into(&t, &t.evaluate(vars).segments, &mut out);
    String::from_utf8(out).expect("utf-8 output")
}

fn render(input: &str) -> String {
    render_with(input, &vars())
}

fn vars() -> RequestVars {
    RequestVars {
        host: Some("example.com".into()),
        referer: Some("http://ref.example/?a=1".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into()),
        accept_language: Some("en-GB,fr;q=0.5".into()),
        cookie: Some(
            "user=ann; evil=<esi:include src=\"/evil\"/>; xss=<script>alert(1)</script>; q=\"it's\"; n=7; inj=x' | 'a'=='a"
                .into(),
        ),
        query_string: Some("id=42&s=a+b%26c&x=%3Cesi%3Ainclude%20src%3D%2Fevil%2F%3E".into()),
    }
}

fn warnings(input: &str) -> Vec<String> {
    Template::compile(input.as_bytes())
        .warnings()
        .iter()
        .map(|w| w.message.clone())
        .collect()
}

use crate::testing::compile_in_chunks as compile_chunks;
use crate::testing::SeededRng;

#[test]
fn include_forms() {
    assert_eq!(render("a<esi:include src=\"/x\"/>b"), "a[inc /x]b");
    assert_eq!(
        render("<esi:include src='/x' alt='/y' onerror='continue'/>"),
        "[inc /x|/y|c]"
    );
    assert_eq!(render("<esi:include src=/x />"), "[inc /x]");
    assert_eq!(
        render("<esi:include\n\tsrc = \"/x\"\n\talt=\n'/y'\n/>"),
        "[inc /x|/y]"
    );
    assert_eq!(render("<esi:include src=\"/x\"></esi:include>"), "[inc /x]");
    assert_eq!(
        render("<esi:include src=\"/a\"/><esi:include src=\"/b\"/> <esi:include src=\"/c\"/>"),
        "[inc /a][inc /b] [inc /c]"
    );
    assert_eq!(
        render("<esi:include src=\"/x\" ttl=\"5m\" dca=\"none\"/>"),
        "[inc /x]"
    );
    assert_eq!(
        render("<esi:include src=\"/x\" onerror=\"abort\"/>"),
        "[inc /x]"
    );
    assert_eq!(
        render("<esi:include src=\"/x?a=1&amp;b=&lt;&#62;&#x27;&quot;\"/>"),
        "[inc /x?a=1&b=<>'\"]"
    );
    assert_eq!(render("<esi:include src=\"  /x  \"/>"), "[inc /x]");
    assert_eq!(render("<esi:include alt=\"/y\"/>ok"), "ok");
    assert_eq!(
        warnings("<esi:include alt=\"/y\"/>"),
        ["`esi:include` without `src` dropped"]
    );
    assert_eq!(render("<esi:include src=\"\"/>ok"), "ok");
}

#[test]
fn include_src_with_invalid_utf8_is_percent_encoded() {
    let t = Template::compile(b"<esi:include src=\"/a\xff\xfeb\"/>");
    let plan = t.evaluate(&RequestVars::default());
    assert_eq!(
        plan.segments,
        [Segment::Include(Include {
            src: "/a%FF%FEb".into(),
            alt: None,
            onerror_continue: false,
        })]
    );
}

#[test]
fn remove_comment_and_markers() {
    assert_eq!(
        render("a<esi:remove>b<esi:include src=\"/x\"/>c</esi:remove>d"),
        "ad"
    );
    assert_eq!(render("a<esi:remove>x</esi:remove >b"), "ab");
    assert_eq!(render("a<esi:remove/>b"), "ab");
    assert_eq!(render("a<esi:comment text=\"hi\"/>b"), "ab");
    assert_eq!(
        render("a<!--esi b<esi:include src=\"/x\"/>c -->d"),
        "a b[inc /x]c d"
    );
    assert_eq!(render("a<!--esi-->b"), "ab");
    assert_eq!(
        render("a<!--esi <p class=\"x\">p</p> -->b"),
        "a <p class=\"x\">p</p> b"
    );
    // Plain HTML comments are untouched, and `-->` outside a marker is text.
    assert_eq!(render("<!-- <b> --> -->"), "<!-- <b> --> -->");
    // Remove inside a marker: `-->` inside the removed part does not count.
    assert_eq!(
        render("<!--esi a<esi:remove>-->x</esi:remove>b-->c"),
        " ab".to_owned() + "c"
    );
}

#[test]
fn vars_substitution() {
    assert_eq!(render("$(HTTP_HOST)"), "$(HTTP_HOST)");
    assert_eq!(render("<esi:vars>$(HTTP_HOST)</esi:vars>"), "example.com");
    assert_eq!(
        render(
            "<esi:vars><a href=\"/u/$(HTTP_COOKIE{user})?id=$(QUERY_STRING{id})\">x</a></esi:vars>"
        ),
        "<a href=\"/u/ann?id=42\">x</a>"
    );
    assert_eq!(
        render("<esi:vars>[$(HTTP_COOKIE{none}|'dflt')]</esi:vars>"),
        "[dflt]"
    );
    assert_eq!(
        render("<esi:vars>[$(HTTP_COOKIE{none}|dflt)]</esi:vars>"),
        "[dflt]"
    );
    assert_eq!(render("<esi:vars>[$(NOPE)]</esi:vars>"), "[]");
    assert_eq!(
        render("<esi:vars>$(QUERY_STRING{s})</esi:vars>"),
        "a b&amp;c"
    );
    assert_eq!(
        render("<esi:vars>$ $( $(x $(HTTP_HOST</esi:vars>"),
        "$ $( $(x $(HTTP_HOST"
    );
    assert_eq!(
        render("<esi:vars>$(HTTP_USER_AGENT{browser})/$(HTTP_USER_AGENT{os})/$(HTTP_USER_AGENT{version})</esi:vars>"),
        "MOZILLA/UNIX/5.0"
    );
    assert_eq!(
        render("<esi:vars>$(HTTP_ACCEPT_LANGUAGE{en}) $(HTTP_ACCEPT_LANGUAGE{de})</esi:vars>"),
        "true false"
    );
    // Variables in ESI attributes work without esi:vars.
    assert_eq!(
        render("<esi:include src=\"/u/$(HTTP_COOKIE{user})\"/>"),
        "[inc /u/ann]"
    );
    assert_eq!(
        render("<esi:include src=\"/p?$(QUERY_STRING)\" alt=\"/r?$(HTTP_REFERER)\"/>"),
        "[inc /p?id=42&s=a+b%26c&x=%3Cesi%3Ainclude%20src%3D%2Fevil%2F%3E|/r?http://ref.example/%3Fa=1]"
    );
    assert_eq!(
        render("<esi:include src=\"http://$(HTTP_HOST)/f\"/>"),
        "[inc http://example.com/f]"
    );
    assert_eq!(
        warnings("<esi:vars>$(NOPE)</esi:vars>"),
        ["unknown variable `NOPE` (always empty)"]
    );
}

#[test]
fn hostile_values_are_escaped() {
    let out = render(
        "<esi:vars><p title='$(HTTP_COOKIE{q})'>$(HTTP_COOKIE{evil})$(HTTP_COOKIE{xss})$(QUERY_STRING{x})</p></esi:vars>",
    );
    assert_eq!(
        out,
        "<p title='it&#39;s'>&lt;esi:include src=&quot;/evil&quot;/&gt;\
         &lt;script&gt;alert(1)&lt;/script&gt;&lt;esi:include src=/evil/&gt;</p>"
    );
    // In a URL the same values cannot end the attribute, add parameters
    // or start a fragment.
    assert_eq!(
        render("<esi:include src=\"/f?c=$(HTTP_COOKIE{evil})&x=$(QUERY_STRING{x})\"/>"),
        "[inc /f?c=%3Cesi:include%20src=%22/evil%22/%3E&x=%3Cesi:include%20src=/evil/%3E]"
    );
    let v = RequestVars {
        query_string: Some("a=1 2\"<>#frag".into()),
        host: Some("evil.com/x?".into()),
        ..Default::default()
    };
    assert_eq!(
        render_with(
            "<esi:include src=\"http://$(HTTP_HOST)/p?$(QUERY_STRING)\"/>",
            &v
        ),
        "[inc http://evil.com%2Fx%3F/p?a=1%202%22%3C%3E%23frag]"
    );
    // Values are never re-parsed: a value that looks like ESI stays text.
    let t = Template::compile(b"<esi:vars>$(HTTP_COOKIE{evil})</esi:vars>");
    let plan = t.evaluate(&vars());
    assert!(plan.segments.iter().all(|s| matches!(s, Segment::Text(_))));
}

#[test]
fn choose() {
    let page = |test: &str| {
        format!(
            "<esi:choose>\n  <esi:when test=\"{test}\">W</esi:when>\n  junk\n  <esi:otherwise>O</esi:otherwise>\n</esi:choose>"
        )
    };
    assert_eq!(render(&page("$(HTTP_COOKIE{user}) == 'ann'")), "W");
    assert_eq!(render(&page("$(HTTP_COOKIE{user}) == 'bob'")), "O");
    assert_eq!(
        render(&page(
            "$(HTTP_COOKIE{n}) &gt; 5 &amp; $(HTTP_COOKIE{n}) &lt;= 7"
        )),
        "W"
    );
    assert_eq!(
        render(&page("$(HTTP_COOKIE{n}) > 5 & $(HTTP_COOKIE{n}) < 7")),
        "O"
    );
    assert_eq!(render(&page("$(HTTP_COOKIE{missing})")), "O");
    assert_eq!(render(&page("!$(HTTP_COOKIE{missing})")), "W");
    assert_eq!(render(&page("$(HTTP_COOKIE{missing}) == ''")), "W");
    assert_eq!(render(&page("$(HTTP_ACCEPT_LANGUAGE{en})")), "W");
    assert_eq!(render(&page("this is not ( valid")), "O");
    assert_eq!(
        render(
            "<esi:choose><esi:when test=\"'a'=='b'\">1</esi:when><esi:when test=\"'a'=='a'\">2</esi:when>\
             <esi:when test=\"'b'=='b'\">3</esi:when></esi:choose>"
        ),
        "2"
    );
    assert_eq!(
        render("<esi:choose><esi:when test=\"'a'=='b'\">1</esi:when></esi:choose>x"),
        "x"
    );
    // Nested.
    assert_eq!(
        render(
            "<esi:choose><esi:when test=\"'a'=='a'\">[<esi:choose><esi:when test=\"'x'=='y'\">no</esi:when>\
             <esi:otherwise>in<esi:include src=\"/n\"/></esi:otherwise></esi:choose>]</esi:when>\
             <esi:otherwise>out</esi:otherwise></esi:choose>"
        ),
        "[in[inc /n]]"
    );
    // Branch elements through transparent vars and markers.
    assert_eq!(
        render(
            "<esi:choose><esi:vars><esi:when test=\"'1'=='1'\">$(HTTP_HOST)</esi:when></esi:vars></esi:choose>"
        ),
        "example.com"
    );
    assert_eq!(
        render("<esi:choose><!--esi <esi:when test=\"'1'=='1'\">m</esi:when> --></esi:choose>"),
        "m"
    );
    // Variables in a test are raw: a quote in a cookie cannot break out.
    assert_eq!(render(&page("$(HTTP_COOKIE{q}) == 'it\\'s'")), "W");
    assert_eq!(render(&page("$(HTTP_COOKIE{inj}) == 'x'")), "O");
    let w = warnings(&page("'a' = 'a'"));
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("malformed test expression"), "{w:?}");
    assert_eq!(
        warnings("<esi:choose><esi:when>x</esi:when></esi:choose>"),
        ["`esi:when` without `test` is always false"]
    );
}

#[test]
fn choose_odd_structure() {
    assert_eq!(render("<esi:when test=\"'a'=='a'\">x</esi:when>y"), "y");
    assert_eq!(render("<esi:otherwise>x</esi:otherwise>y"), "y");
    assert_eq!(
        render(
            "<esi:choose><esi:otherwise>1</esi:otherwise><esi:otherwise>2</esi:otherwise>\
             <esi:include src=\"/ignored\"/></esi:choose>"
        ),
        "1"
    );
    assert_eq!(
        render("<esi:choose><esi:otherwise>O</esi:otherwise><esi:when test=\"1==1\">W</esi:when></esi:choose>"),
        "W"
    );
    assert_eq!(render("<esi:choose/>x<esi:choose></esi:choose>"), "x");
    let w = warnings("<esi:choose><esi:include src=\"/i\"/></esi:choose>");
    assert_eq!(w, ["`esi:include` directly inside `esi:choose` is ignored"]);
}

#[test]
fn try_blocks() {
    assert_eq!(
        render(
            "<esi:try>\n<esi:attempt>a<esi:include src=\"/a\"/></esi:attempt>\nx\n<esi:except>e</esi:except>\n</esi:try>"
        ),
        "[try a[inc /a]|except e]"
    );
    assert_eq!(
        render("<esi:try><esi:attempt><esi:include src=\"/a\"/></esi:attempt></esi:try>"),
        "[try [inc /a]|except ]"
    );
    assert_eq!(
        render("<esi:try><esi:except>e</esi:except></esi:try>"),
        "[try |except e]"
    );
    assert_eq!(
        render(
            "<esi:try><esi:attempt><esi:try><esi:attempt>[inner]</esi:attempt><esi:except>ie</esi:except></esi:try>\
             </esi:attempt><esi:except>oe</esi:except></esi:try>"
        ),
        "[try [try [inner]|except ie]|except oe]"
    );
    assert_eq!(
        render("<esi:attempt>kept</esi:attempt><esi:except>gone</esi:except>"),
        "kept"
    );
    assert_eq!(
        render(
            "<esi:try><esi:attempt>1</esi:attempt><esi:attempt>2</esi:attempt><esi:except>3</esi:except>\
             <esi:except>4</esi:except></esi:try>"
        ),
        "[try 1|except 3]"
    );
}

#[test]
fn inline() {
    assert_eq!(
        render(
            "<esi:inline name=\"/frag\" fetchable=\"no\">F</esi:inline>|<esi:include src=\"/frag\"/>|<esi:include src=\"/other\"/>"
        ),
        "F|F|[inc /other]"
    );
    // Declared after the include; include inside a try.
    assert_eq!(
        render(
            "<esi:try><esi:attempt><esi:include src=\"/frag\"/></esi:attempt></esi:try>\
             <esi:inline name=\"/frag\">F<esi:include src=\"/x\"/></esi:inline>"
        ),
        "[try F[inc /x]|except ]F[inc /x]"
    );
    // Self-reference does not loop.
    assert_eq!(
        render("<esi:inline name=\"/a\">a<esi:include src=\"/a\"/></esi:inline>"),
        "a[inc /a]"
    );
    assert_eq!(
        render(
            "<esi:include src=\"/a\"/>|<esi:inline name=\"/a\">a<esi:include src=\"/b\"/></esi:inline>|\
             <esi:inline name=\"/b\">b<esi:include src=\"/a\"/></esi:inline>"
        ),
        "ab[inc /a]|ab[inc /a]|ba[inc /b]"
    );
    // Duplicate names: the first wins.
    assert_eq!(
        render(
            "<esi:inline name=\"/d\">1</esi:inline><esi:inline name=\"/d\">2</esi:inline><esi:include src=\"/d\"/>"
        ),
        "121"
    );
    assert_eq!(render("<esi:inline>anon</esi:inline>"), "anon");
}

#[test]
fn inline_expansion_is_bounded() {
    // Each level includes the next one ten times: without limits the plan
    // would be exponential in the number of levels.
    let mut page = String::new();
    for level in 0..20 {
        page.push_str(&format!("<esi:inline name=\"/l{level}\">"));
        for _ in 0..10 {
            page.push_str(&format!("<esi:include src=\"/l{}\"/>", level + 1));
        }
        page.push_str("</esi:inline>");
    }
    let t = Template::compile(page.as_bytes());
    let plan = t.evaluate(&RequestVars::default());
    fn count(segs: &[Segment]) -> usize {
        segs.iter()
            .map(|s| match s {
                Segment::Try { attempt, except } => 1 + count(attempt) + count(except),
                _ => 1,
            })
            .sum()
    }
    assert!(count(&plan.segments) < 2000 * (eval::MAX_INLINE_SUBSTITUTIONS + 1));
}

#[test]
fn not_esi_passes_through() {
    for s in [
        "<ESI:include src=\"/x\"/>",
        "<esix:foo/>",
        "<esi-foo/>",
        "<esi:>",
        "<esi: include>",
        "</esi:>",
        "< esi:include src=\"/x\"/>",
        "<!-- esi -->",
        "a $(HTTP_HOST) b",
        "<<<>>>",
        "",
    ] {
        let t = Template::compile(s.as_bytes());
        assert!(!t.has_esi(), "{s:?}");
        assert_eq!(render(s), s, "{s:?}");
        assert!(t.warnings().is_empty(), "{s:?}");
    }
}

#[test]
fn has_esi() {
    assert!(Template::compile(b"<esi:vars></esi:vars>").has_esi());
    assert!(Template::compile(b"<esi:comment text=\"\"/>").has_esi());
    assert!(Template::compile(b"a</esi:vars>b").has_esi());
    assert!(Template::compile(b"<!--esi-->").has_esi());
    assert!(!Template::compile(b"<esi:include src=\"/x\"").has_esi());
}

#[test]
fn invalid_utf8_and_multibyte() {
    let input: &[u8] =
        b"\xff\xfe<p>\xc3</p>\xe2\x82<esi:include src=\"/\xc3\xa9\"/>\xac\x80\xf0\x9f\x98\x80\xff";
    let t = Template::compile(input);
    let mut out = Vec::new();
    render_into(&t, &t.evaluate(&vars()).segments, &mut out);
    let mut want = b"\xff\xfe<p>\xc3</p>\xe2\x82".to_vec();
    want.extend_from_slice("[inc /é]".as_bytes());
    want.extend_from_slice(b"\xac\x80\xf0\x9f\x98\x80\xff");
    assert_eq!(out, want);
    let t = Template::compile(b"\xff<b>\x80</b>\xc0");
    assert!(!t.has_esi());
}

#[test]
fn malformed_policy() {
    // Unterminated tag: literal text to the end.
    let s = "a<esi:include src=\"/x\" b";
    assert_eq!(render(s), s);
    // (A later `>` does close it, even one from ordinary markup.)
    assert_eq!(
        render("a<esi:include src=\"/x\" <p>b</p>"),
        "a[inc /x]b</p>"
    );
    assert_eq!(warnings(s).len(), 1);
    let s = "a<esi:include src=\"/x/> <esi:include src=/y/>";
    assert_eq!(render(s), s);
    // Unclosed blocks are closed at the end.
    assert_eq!(render("<esi:vars>$(HTTP_HOST)"), "example.com");
    assert_eq!(render("a<esi:remove>b<esi:include src=\"/x\"/>"), "a");
    assert_eq!(
        warnings("a<esi:remove>b"),
        ["`esi:remove` not closed; the rest of the input is dropped"]
    );
    assert_eq!(render("<esi:choose><esi:when test=\"1==1\">w"), "w");
    assert_eq!(render("<esi:try><esi:attempt>a"), "[try a|except ]");
    assert_eq!(render("<!--esi a<esi:include src=\"/x\"/>"), " a[inc /x]");
    assert_eq!(
        warnings("<!--esi a"),
        ["`<!--esi` not closed by the end of input; closed there"]
    );
    // Stray and mismatched end tags.
    assert_eq!(render("a</esi:vars>b</esi:choose>c</esi:remove>d"), "abcd");
    assert_eq!(warnings("a</esi:vars>").len(), 1);
    assert_eq!(
        render("<esi:vars><esi:choose><esi:when test=\"1==1\">$(HTTP_HOST)</esi:vars>$(HTTP_HOST)"),
        "example.com$(HTTP_HOST)"
    );
    assert_eq!(
        warnings("<esi:vars><esi:choose><esi:when test=\"1==1\">x</esi:vars>").len(),
        2
    );
    // Unknown elements: tag dropped, content kept.
    assert_eq!(
        render("a<esi:foo bar=\"1\"/>b<esi:block>c</esi:block>d"),
        "abcd"
    );
    assert_eq!(
        warnings("<esi:foo/>"),
        ["unknown element `esi:foo` dropped (content kept)"]
    );
    // Close tags of void elements are silently ignored.
    assert_eq!(render("a</esi:include>b</esi:comment>c"), "abc");
    assert!(warnings("a</esi:include>").is_empty());
    // Tags split by quotes containing `>`.
    assert_eq!(
        render("<esi:choose><esi:when test=\"2 > 1\">yes</esi:when></esi:choose>"),
        "yes"
    );
}

#[test]
fn depth_is_capped() {
    let n = 10_000;
    let page = format!(
        "{}x<esi:include src=\"/deep\"/>{}",
        "<esi:vars><esi:try><esi:attempt>".repeat(n),
        "</esi:attempt></esi:try></esi:vars>".repeat(n)
    );
    let t = Template::compile(page.as_bytes());
    let plan = t.evaluate(&RequestVars::default());
    fn depth(segs: &[Segment]) -> usize {
        segs.iter()
            .map(|s| match s {
                Segment::Try { attempt, except } => 1 + depth(attempt).max(depth(except)),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
    assert!(depth(&plan.segments) <= MAX_DEPTH);
    assert!(!t.warnings().is_empty());
    assert!(t.warnings().len() <= compile::MAX_WARNINGS + 1);
    // Deep choose nesting and hostile expressions.
    let page = format!(
        "{}y{}",
        "<esi:choose><esi:when test=\"!(((1==1)))\"></esi:when><esi:otherwise>".repeat(n),
        "</esi:otherwise></esi:choose>".repeat(n)
    );
    let t = Template::compile(page.as_bytes());
    let mut out = Vec::new();
    render_into(&t, &t.evaluate(&RequestVars::default()).segments, &mut out);
    assert_eq!(out, b"y");
    // Markers nest too.
    let page = format!("{}m{}", "<!--esi ".repeat(n), " -->".repeat(n));
    let t = Template::compile(page.as_bytes());
    let mut out = Vec::new();
    render_into(&t, &t.evaluate(&RequestVars::default()).segments, &mut out);
    assert!(out.starts_with(b" "), "markers dropped");
    assert!(out.windows(1).filter(|w| w == b"m").count() == 1);
}

#[test]
fn big_page_and_many_tags() {
    // 2 MB of HTML around a few tags, then an unterminated one.
    let mut page = Vec::new();
    while page.len() < 2 << 20 {
        page.extend_from_slice(
            b"<div class=\"row\"><a href=\"/x\">link</a> text &amp; more text</div>\n",
        );
        if page.len() % 100_000 < 80 {
            page.extend_from_slice(b"<esi:include src=\"/f\"/>");
        }
    }
    let unterminated_at = page.len();
    page.extend_from_slice(b"<esi:include src=\"/never\"");
    page.extend_from_slice(&vec![b'x'; 100_000]);
    let whole = Template::compile(&page);
    // One byte at a time must stay linear (a quadratic lexer would not finish).
    let mut c = Compiler::new();
    for b in page.chunks(1) {
        c.feed(b);
    }
    let split = c.finish();
    assert!(split == whole);
    assert_eq!(whole.warnings().len(), 1);
    assert_eq!(whole.warnings()[0].offset, unterminated_at);
    let plan = whole.evaluate(&RequestVars::default());
    let includes = plan
        .segments
        .iter()
        .filter(|s| matches!(s, Segment::Include(_)))
        .count();
    assert!(includes > 5);

    // 10,000 tiny tags.
    let page = "<esi:include src=\"/t\"/>".repeat(10_000);
    let t = Template::compile(page.as_bytes());
    assert_eq!(t.evaluate(&RequestVars::default()).segments.len(), 10_000);
    let page = "<esi:vars>$(HTTP_HOST)</esi:vars>".repeat(10_000);
    let t = Template::compile(page.as_bytes());
    let plan = t.evaluate(&vars());
    assert_eq!(
        plan.segments,
        [Segment::Text("example.com".repeat(10_000).into_bytes())]
    );
}

#[test]
fn pathological_inputs_stay_linear_byte_by_byte() {
    let n = 200_000;
    let cases: Vec<Vec<u8>> = vec![
        // Unterminated quote inside a tag.
        format!("<esi:include src=\"{}", "a>".repeat(n)).into_bytes(),
        // Many near-miss prefixes.
        "<es<esi<esi:<!-<!--e</esi".repeat(n / 10).into_bytes(),
        // Variables that never close, inside vars.
        format!("<esi:vars>{}", "$(HTTP_COOKIE{aaaa".repeat(n / 10)).into_bytes(),
        format!("<esi:vars>$(X|'{}", "b".repeat(n)).into_bytes(),
        // Remove with many near-miss end tags.
        format!("<esi:remove>{}", "</esi:remov</esi:remove ".repeat(n / 20)).into_bytes(),
        // Many `esi:` that do not start a tag, and tags of unknown names.
        "xesi:/esi:esi:<esi:0".repeat(n / 10).into_bytes(),
        "<esi:x>".repeat(n / 5).into_bytes(),
        // Far too deep, then end tags that match nothing.
        format!(
            "{}{}",
            "<esi:vars>".repeat(n / 10),
            "</esi:choose>".repeat(n / 10)
        )
        .into_bytes(),
        // Lots of content inside the deepest allowed nesting.
        format!(
            "{}{}{}",
            "<esi:vars><!--esi ".repeat(MAX_DEPTH),
            "$(HTTP_HOST)x".repeat(n / 10),
            " --></esi:vars>".repeat(MAX_DEPTH)
        )
        .into_bytes(),
        // One huge tag full of slashes, `=` and attributes.
        format!("<esi:include {}>", "/ = a=b ".repeat(n / 2)).into_bytes(),
        // Markers with many dashes.
        format!("<!--esi {}", "-- - --".repeat(n / 5)).into_bytes(),
    ];
    for input in cases {
        let whole = Template::compile(&input);
        let mut c = Compiler::new();
        for b in input.chunks(1) {
            c.feed(b);
        }
        assert!(c.finish() == whole);
    }
}

/// Inputs for the chunk-safety tests: every construct and malformed case.
pub(super) const SAMPLES: &[&str] = &[
    "plain <b>html</b> with < and > and $( and -- and -->",
    "a<esi:include src=\"/x\" alt='/y' onerror=\"continue\"/>b<esi:include src=/z></esi:include>",
    "<esi:include\n src\n=\n\"/a?x=$(QUERY_STRING{id})&amp;h=$(HTTP_HOST)\"\n/>",
    "<esi:remove>gone<esi:include src=\"/x\"/></esi:remove>kept</esi:remove  >",
    "<!--esi <esi:vars>$(HTTP_COOKIE{user}|'anon')</esi:vars> -->tail-->",
    "<esi:vars>$(HTTP_COOKIE{evil}) $(QUERY_STRING{x}) $(HTTP_USER_AGENT{os}) $(X|'a)b') $(bad</esi:vars>",
    "<esi:choose> x <esi:when test=\"$(HTTP_COOKIE{n}) > 5 &amp; !($(QUERY_STRING{id}) == '1')\">A</esi:when>\
     <esi:otherwise>B</esi:otherwise></esi:choose>",
    "<esi:try><esi:attempt><esi:include src=\"/a\"/></esi:attempt> x <esi:except>E</esi:except></esi:try>",
    "<esi:inline name=\"/i\" fetchable=\"yes\">I</esi:inline><esi:include src=\"/i\"/>",
    "<esi:comment text=\"c\"/>a</esi:vars>b<esi:foo/>c<ESI:include src=\"/no\"/>",
    "<esi:include src=\"/unterminated\" <p>",
    "<esi:vars><esi:choose><esi:when test=\"1==1\">$(HTTP_HOST)</esi:vars>",
    "<esi:remove>never closed <esi:include src=\"/x\"/>",
    "<!--esi never closed $(HTTP_HOST) <esi:vars>$(HTTP_HOST)",
    "\u{e9}<esi:include src=\"/\u{e9}\"/>\u{1F600}",
    "<esi:vars>$(HTTP_COOKIE{a})$(HTTP_COOKIE{b}|x)$$($(()</esi:vars>",
    "<esi:when test=\"1\">x</esi:when><esi:attempt>y</esi:attempt><esi:except>z</esi:except>",
    "<esi:include src=\"a\"/><esi:include src=\"b\"/><esi:include src=\"c\"/>",
    "<!--esi<!--esi-->-->",
    "design esi: xesi:a /esi:b <esi:<esi:a/esi:</esi: <!--es<!--esi--><esi:include src=e/>esi:",
    "<!--esi x <!--esi y--> z--> <esi:vars>-- -> --></esi:vars>",
    "<esi:include src='it\"s>'/>",
];

#[test]
fn chunk_safety_every_split_point() {
    for s in SAMPLES {
        let input = s.as_bytes();
        let whole = Template::compile(input);
        for cut in 0..=input.len() {
            let t = compile_chunks(input, &[cut]);
            assert!(t == whole, "{s:?} cut at {cut}");
        }
        for a in 0..=input.len() {
            for b in (a..=input.len()).step_by(7) {
                let t = compile_chunks(input, &[a, b]);
                assert!(t == whole, "{s:?} cut at {a} and {b}");
            }
        }
        let ones: Vec<usize> = (1..input.len()).collect();
        assert!(
            compile_chunks(input, &ones) == whole,
            "{s:?} one byte at a time"
        );
    }
}

#[test]
fn chunk_safety_random() {
    let mut all = Vec::new();
    for s in SAMPLES {
        all.extend_from_slice(s.as_bytes());
        all.push(b'\n');
    }
    for seed in 1..=50u64 {
        let rng = SeededRng::scrambled(seed);
        let input = if seed % 2 == 0 {
            all.clone()
        } else {
            SAMPLES[rng.below(SAMPLES.len())].as_bytes().to_vec()
        };
        let whole = Template::compile(&input);
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            let max = if rng.below(2) == 0 { 4 } else { 64 };
            at += 1 + rng.below(max);
            if at >= input.len() {
                break;
            }
            cuts.push(at);
        }
        let t = compile_chunks(&input, &cuts);
        assert!(t == whole, "seed {seed}");
        assert_eq!(t.evaluate(&vars()), whole.evaluate(&vars()), "seed {seed}");
    }
}

#[test]
fn warning_display() {
    let w = Warning {
        offset: 7,
        message: "oops".into(),
    };
    assert_eq!(w.to_string(), "ESI at byte 7: oops");
}

/// Random documents made of ESI fragments, near misses and odd bytes: any
/// chunking must give the same template, and nothing may panic.
#[test]
fn chunk_safety_fuzz() {
    const TOKENS: &[&[u8]] = &[
        b"<esi:include src=\"/a\"/>",
        b"<esi:include src='/$(HTTP_HOST)' alt=/b onerror=continue>",
        b"<esi:vars>",
        b"</esi:vars>",
        b"$(HTTP_HOST)",
        b"$(QUERY_STRING{q}|'d')",
        b"$(",
        b"<!--esi",
        b"-->",
        b"<esi:remove>",
        b"</esi:remove>",
        b"<esi:choose>",
        b"<esi:when test=\"$(HTTP_HOST) == 'h' | 1 > 0\">",
        b"</esi:when>",
        b"<esi:otherwise>",
        b"</esi:otherwise>",
        b"</esi:choose>",
        b"<esi:try>",
        b"<esi:attempt>",
        b"</esi:attempt>",
        b"<esi:except>",
        b"</esi:except>",
        b"</esi:try>",
        b"<esi:inline name=\"/a\">",
        b"</esi:inline>",
        b"<esi:comment text=\"c\"/>",
        b"<esi:",
        b"</esi:",
        b"esi:",
        b"<",
        b">",
        b"/",
        b"\"",
        b"'",
        b"-",
        b"$",
        b"x",
        b"\n",
        b"\xff",
        "é".as_bytes(),
    ];
    let v = vars();
    for seed in 1..=400u64 {
        let rng = SeededRng::scrambled(seed);
        let mut doc = Vec::new();
        for _ in 0..rng.below(80) {
            doc.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
        }
        let whole = Template::compile(&doc);
        let plan = whole.evaluate(&v);
        for _ in 0..3 {
            let max = 1 + rng.below(12);
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += 1 + rng.below(max);
                if at >= doc.len() {
                    break;
                }
                cuts.push(at);
            }
            let t = compile_chunks(&doc, &cuts);
            assert!(t == whole, "seed {seed}");
            assert!(t.evaluate(&v) == plan, "seed {seed}");
        }
    }
}

fn inputs(input: &str, vars: &RequestVars) -> RequestInputs {
    Template::compile(input.as_bytes()).evaluate(vars).inputs
}

fn read(names: &[&str]) -> RequestInputs {
    let mut r = RequestInputs::default();
    for n in names {
        match *n {
            "cookie" => r.cookie = true,
            "host" => r.host = true,
            "referer" => r.referer = true,
            "user-agent" => r.user_agent = true,
            "accept-language" => r.accept_language = true,
            "query" => r.query_string = true,
            other => panic!("{other}"),
        }
    }
    r
}

#[test]
fn request_inputs_read_by_each_construct() {
    let v = RequestVars {
        cookie: Some("a=1".into()),
        ..vars()
    };
    let table: &[(&str, &[&str])] = &[
        ("<p>plain</p>", &[]),
        ("<esi:include src=\"/f\" alt=\"/g\"/>", &[]),
        ("<esi:vars>$(NOPE) $(NOPE{x}|'d')</esi:vars>", &[]),
        // Outside esi:vars, `$(…)` is text: nothing is looked up.
        ("<p>$(HTTP_COOKIE)</p>", &[]),
        ("<esi:vars>$(HTTP_COOKIE)</esi:vars>", &["cookie"]),
        ("<esi:vars>$(HTTP_COOKIE{a})</esi:vars>", &["cookie"]),
        ("<esi:vars>$(HTTP_COOKIE{none}|'d')</esi:vars>", &["cookie"]),
        ("<esi:vars>$(HTTP_HOST)</esi:vars>", &["host"]),
        ("<esi:vars>$(HTTP_REFERER)</esi:vars>", &["referer"]),
        ("<esi:vars>$(HTTP_USER_AGENT{os})</esi:vars>", &["user-agent"]),
        ("<esi:vars>$(HTTP_ACCEPT_LANGUAGE{en})</esi:vars>", &["accept-language"]),
        ("<esi:vars>$(QUERY_STRING)</esi:vars>", &["query"]),
        ("<esi:include src=\"/f?x=$(QUERY_STRING{x})\"/>", &["query"]),
        ("<esi:include src=\"$(QUERY_STRING{x})\"/>", &["query"]),
        ("<esi:include src=\"/f\" alt=\"/g/$(HTTP_COOKIE{a})\"/>", &["cookie"]),
        ("<esi:include src=\"http://$(HTTP_HOST)/f\"/>", &["host"]),
        // A refused src was still read.
        ("<esi:include src=\"/$(HTTP_COOKIE{none})/evil\"/>", &["cookie"]),
        // The test of an evaluated `when` is read, its untaken body is not.
        (
            "<esi:choose><esi:when test=\"$(HTTP_COOKIE{a}) == '2'\">\
             <esi:vars>$(HTTP_REFERER)</esi:vars></esi:when></esi:choose>",
            &["cookie"],
        ),
        // A cookie used only inside an untaken branch is not read.
        (
            "<esi:choose><esi:when test=\"'a' == 'b'\"><esi:vars>$(HTTP_COOKIE{a})</esi:vars>\
             <esi:include src=\"/c/$(HTTP_COOKIE{a})\"/></esi:when>\
             <esi:otherwise><esi:vars>$(HTTP_USER_AGENT)</esi:vars></esi:otherwise></esi:choose>",
            &["user-agent"],
        ),
        // Tests after the chosen one are not evaluated.
        (
            "<esi:choose><esi:when test=\"$(HTTP_ACCEPT_LANGUAGE{en})\">en</esi:when>\
             <esi:when test=\"$(HTTP_COOKIE{a})\">c</esi:when>\
             <esi:otherwise>o</esi:otherwise></esi:choose>",
            &["accept-language"],
        ),
        // Every test is evaluated when none is true, then `otherwise` runs.
        (
            "<esi:choose><esi:when test=\"$(HTTP_COOKIE{a}) == 2\">c</esi:when>\
             <esi:when test=\"$(HTTP_USER_AGENT{os}) == 'X'\">u</esi:when>\
             <esi:otherwise><esi:include src=\"/o?$(QUERY_STRING)\"/></esi:otherwise></esi:choose>",
            &["cookie", "user-agent", "query"],
        ),
        // Nested choose: the inner test is read only in the taken branch.
        (
            "<esi:choose><esi:when test=\"1 == 1\"><esi:choose>\
             <esi:when test=\"$(HTTP_HOST) == 'x'\">h</esi:when></esi:choose></esi:when>\
             <esi:otherwise><esi:choose><esi:when test=\"$(HTTP_COOKIE{a})\">c</esi:when>\
             </esi:choose></esi:otherwise></esi:choose>",
            &["host"],
        ),
        // Both branches of a try are evaluated.
        (
            "<esi:try><esi:attempt><esi:include src=\"/a?h=$(HTTP_HOST)\"/></esi:attempt>\
             <esi:except><esi:vars>$(HTTP_COOKIE{a})</esi:vars></esi:except></esi:try>",
            &["host", "cookie"],
        ),
        // Inline content that is output is read, in place or substituted.
        (
            "<esi:inline name=\"/i\" fetchable=\"no\"><esi:vars>$(HTTP_REFERER)</esi:vars></esi:inline>",
            &["referer"],
        ),
        (
            "<esi:choose><esi:when test=\"'a' == 'b'\">\
             <esi:inline name=\"/i\" fetchable=\"no\"><esi:vars>$(HTTP_REFERER)</esi:vars></esi:inline>\
             </esi:when></esi:choose>",
            &[],
        ),
        (
            "<esi:choose><esi:when test=\"'a' == 'b'\">\
             <esi:inline name=\"/i\" fetchable=\"no\"><esi:vars>$(HTTP_REFERER)</esi:vars></esi:inline>\
             </esi:when></esi:choose><esi:include src=\"/i\"/>",
            &["referer"],
        ),
    ];
    for (page, want) in table {
        assert_eq!(inputs(page, &v), read(want), "{page}");
        // What is read does not depend on the values, only on the branches.
        let empty = RequestVars::default();
        if !page.contains("esi:choose") {
            assert_eq!(inputs(page, &empty), read(want), "{page} (empty request)");
        }
    }
}

#[test]
fn request_inputs_api() {
    let none = RequestInputs::default();
    assert!(none.is_empty() && !none.reads_cookie());
    assert_eq!(none.vary_headers().count(), 0);
    let mut all = read(&["host", "query"]);
    assert!(!all.is_empty());
    // Host and query are part of the URL: no Vary.
    assert_eq!(all.vary_headers().count(), 0);
    all.merge(read(&[
        "referer",
        "cookie",
        "user-agent",
        "accept-language",
    ]));
    assert!(all.reads_cookie());
    assert_eq!(
        all.vary_headers().collect::<Vec<_>>(),
        ["user-agent", "accept-language", "referer"]
    );
    assert_eq!(
        all,
        read(&[
            "host",
            "query",
            "referer",
            "cookie",
            "user-agent",
            "accept-language"
        ])
    );
    let mut one = RequestInputs::default();
    one.merge(read(&["accept-language"]));
    assert_eq!(one.vary_headers().collect::<Vec<_>>(), ["accept-language"]);
}

/// What becomes of an include `src` with variables.
#[derive(Debug)]
enum Src {
    /// Renders to this text and resolves to this URL.
    Fetch(&'static str, &'static str),
    /// Refused before resolution.
    Refused(&'static str, SrcRefusal),
    /// Renders to this text, which the URL parser refuses.
    Bad(&'static str, UrlError),
}

#[test]
fn variables_in_src_are_url_text() {
    use Src::{Bad, Fetch, Refused};
    use SrcRefusal::{MadeAbsolute, MadeSchemeRelative};
    use UrlError::{BadHost, EncodedDotSegment, UserInfo};
    const FRAG: &str = "$(QUERY_STRING{frag})";
    let dots = |s: &str| EncodedDotSegment(s.into());
    // (src template with `F` for `$(QUERY_STRING{frag})`, frag, host, outcome)
    let table: Vec<(&str, &str, &str, Src)> = vec![
        (
            "F",
            "/fragments/promo",
            "",
            Fetch("/fragments/promo", "http://origin.test/fragments/promo"),
        ),
        (
            "F",
            "/promo?a=1&b=2",
            "",
            Fetch("/promo?a=1&b=2", "http://origin.test/promo?a=1&b=2"),
        ),
        ("F", "promo", "", Fetch("promo", "http://origin.test/promo")),
        (
            "F",
            "//evil.test/x",
            "",
            Refused("//evil.test/x", MadeSchemeRelative),
        ),
        (
            "/F",
            "/evil.test/x",
            "",
            Refused("//evil.test/x", MadeSchemeRelative),
        ),
        (
            "F",
            "http://evil.test/",
            "",
            Refused("http://evil.test/", MadeAbsolute),
        ),
        ("F", "https:evil", "", Refused("https:evil", MadeAbsolute)),
        (
            "hF",
            "ttp://evil.test/",
            "",
            Refused("http://evil.test/", MadeAbsolute),
        ),
        ("F", "a:b", "", Refused("a:b", MadeAbsolute)),
        // The value `//evil.test`, sent as `frag=%2F%2Fevil.test`.
        (
            "F",
            "//evil.test",
            "",
            Refused("//evil.test", MadeSchemeRelative),
        ),
        // A backslash is always encoded, so `/\` cannot start an authority.
        (
            "F",
            "/\\evil.test",
            "",
            Fetch("/%5Cevil.test", "http://origin.test/%5Cevil.test"),
        ),
        (
            "F",
            "\\\\evil.test",
            "",
            Fetch("%5C%5Cevil.test", "http://origin.test/%5C%5Cevil.test"),
        ),
        // Userinfo can only reach an authority the template wrote, and the
        // URL parser refuses it there.
        (
            "http://F/x",
            "x@evil.test",
            "",
            Bad("http://x@evil.test/x", UserInfo),
        ),
        (
            "http://F/x",
            "origin.test",
            "",
            Fetch("http://origin.test/x", "http://origin.test/x"),
        ),
        (
            "/f/F",
            "a:b@c",
            "",
            Fetch("/f/a:b@c", "http://origin.test/f/a:b@c"),
        ),
        // Structure breakers are always encoded.
        (
            "/f?x=F",
            "a\r\nb",
            "",
            Fetch("/f?x=a%0D%0Ab", "http://origin.test/f?x=a%0D%0Ab"),
        ),
        (
            "/f/F",
            "a\"b'c<d>",
            "",
            Fetch(
                "/f/a%22b%27c%3Cd%3E",
                "http://origin.test/f/a%22b%27c%3Cd%3E",
            ),
        ),
        (
            "/f/F",
            "a#b c\td",
            "",
            Fetch("/f/a%23b%20c%09d", "http://origin.test/f/a%23b%20c%09d"),
        ),
        (
            "/f/F",
            "é",
            "",
            Fetch("/f/%C3%A9", "http://origin.test/f/%C3%A9"),
        ),
        (
            "/f/F",
            "%41%zz%",
            "",
            Fetch("/f/%41%25zz%25", "http://origin.test/f/%41%25zz%25"),
        ),
        // In the query a value cannot add parameters; `=` and `/` are kept.
        (
            "/f?a=F",
            "1&admin=1?x+y",
            "",
            Fetch(
                "/f?a=1%26admin=1%3Fx%2By",
                "http://origin.test/f?a=1%26admin=1%3Fx%2By",
            ),
        ),
        (
            "/f?a=F",
            "../x",
            "",
            Fetch("/f?a=../x", "http://origin.test/f?a=../x"),
        ),
        // Dot segments touched by a value are encoded, and refused.
        ("/f/F", "..", "", Bad("/f/%2E%2E", dots("%2E%2E"))),
        ("/f/F", ".", "", Bad("/f/%2E", dots("%2E"))),
        ("/f/F", "../x", "", Bad("/f/%2E%2E/x", dots("%2E%2E"))),
        (
            "/f/F/x",
            "a/../../b",
            "",
            Bad("/f/a/%2E%2E/%2E%2E/b/x", dots("%2E%2E")),
        ),
        ("/f/.F/x", ".", "", Bad("/f/%2E%2E/x", dots("%2E%2E"))),
        ("/f/F../x", "a/", "", Bad("/f/a/%2E%2E/x", dots("%2E%2E"))),
        ("/f/F", "%2e%2e", "", Bad("/f/%2e%2e", dots("%2e%2e"))),
        (
            "/f/F",
            "..x/.a",
            "",
            Fetch("/f/..x/.a", "http://origin.test/f/..x/.a"),
        ),
        // Dots written in the template alone resolve as usual.
        ("../f/F", "x", "", Fetch("../f/x", "http://origin.test/f/x")),
        // The host stays a host.
        (
            "http://$(HTTP_HOST)/x",
            "",
            "shop.example:8080",
            Fetch("http://shop.example:8080/x", "http://shop.example:8080/x"),
        ),
        (
            "http://$(HTTP_HOST)/x",
            "",
            "evil.test/x?",
            Bad(
                "http://evil.test%2Fx%3F/x",
                BadHost("evil.test%2Fx%3F".into()),
            ),
        ),
        (
            "/$(HTTP_HOST)/x",
            "",
            "",
            Refused("//x", MadeSchemeRelative),
        ),
        // Absolute as written: the allow-list decides.
        (
            "//cdn.test/F",
            "x",
            "",
            Fetch("//cdn.test/x", "http://cdn.test/x"),
        ),
    ];
    let base = crate::url::Url::parse("http://origin.test/page").unwrap();
    for (tpl, frag, host, want) in table {
        let tpl = tpl.replace('F', FRAG);
        let vars = RequestVars {
            query_string: Some(format!("frag={}", form_encode(frag))),
            host: (!host.is_empty()).then(|| host.to_owned()),
            ..RequestVars::default()
        };
        let t = Template::compile(format!("<esi:include src=\"{tpl}\"/>").as_bytes());
        let plan = t.evaluate(&vars);
        let [Segment::Include(inc)] = &plan.segments[..] else {
            panic!("{tpl}: {:?}", plan.segments);
        };
        let src = &inc.src;
        let what = format!("{tpl} with {frag:?}/{host:?}");
        match want {
            Fetch(text, url) => {
                assert_eq!((src.as_str(), src.refusal()), (text, None), "{what}");
                let got = base.resolve(src).map(|u| u.to_string());
                assert_eq!(got.as_deref(), Ok(url), "{what}");
            }
            Refused(text, reason) => {
                assert_eq!(
                    (src.as_str(), src.refusal()),
                    (text, Some(reason)),
                    "{what}"
                );
            }
            Bad(text, error) => {
                assert_eq!((src.as_str(), src.refusal()), (text, None), "{what}");
                assert_eq!(
                    base.resolve(src).map(|u| u.to_string()),
                    Err(error),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn refused_src_is_not_an_inline_name() {
    let t = Template::compile(
        b"<esi:include src=\"$(QUERY_STRING{f})\"/><esi:inline name=\"//evil\" fetchable=\"no\">I</esi:inline>",
    );
    let vars = RequestVars {
        query_string: Some("f=//evil".into()),
        ..RequestVars::default()
    };
    let plan = t.evaluate(&vars);
    let Segment::Include(inc) = &plan.segments[0] else {
        panic!("{:?}", plan.segments);
    };
    assert_eq!(inc.src.refusal(), Some(SrcRefusal::MadeSchemeRelative));
}

/// The flat node layout keeps what the tree did: content of a dropped
/// branch is never output but an `esi:inline` inside still defines its
/// name; a block misplaced directly inside `esi:choose` or `esi:try` is
/// skipped; a branch left open is closed by its parent.
#[test]
fn flat_layout_keeps_block_semantics() {
    assert_eq!(
        render(
            "<esi:when test=\"1\">W<esi:inline name=\"/a\">IN</esi:inline></esi:when>\
             [<esi:include src=\"/a\"/>]"
        ),
        "[IN]"
    );
    assert_eq!(
        render(
            "<esi:choose><esi:try><esi:attempt>T</esi:attempt></esi:try>\
             <esi:when test=\"1==2\">A</esi:when><esi:otherwise>O</esi:otherwise>\
             <esi:when test=\"1\">B</esi:when></esi:choose>!"
        ),
        "B!"
    );
    assert_eq!(
        render(
            "<esi:try><esi:choose><esi:when test=\"1\">C</esi:when></esi:choose>\
             <esi:except>E</esi:except><esi:attempt>A<esi:vars>v</esi:vars></esi:attempt>\
             </esi:try>."
        ),
        "[try Av|except E]."
    );
    // A `when` whose end tag is missing is closed by the `choose`; the
    // text after it belongs to the page again.
    assert_eq!(
        render("a<esi:choose><esi:when test=\"1\">b</esi:choose>c"),
        "abc"
    );
}

/// The memo charges a template what it holds: the source, the node vector
/// and the pooled texts (here, the URL text of every include).
#[test]
fn memory_bytes_counts_the_compiled_form() {
    let src: String = (0..200)
        .map(|i| format!("<p>{i}</p><esi:include src=\"/fragments/{i:0>40}\"/>"))
        .collect();
    let t = Template::compile(src.as_bytes());
    let urls = 200 * "/fragments/".len() + 200 * 40;
    let floor = src.len() + t.nodes.len() * std::mem::size_of::<compile::Node>() + urls;
    assert!(t.memory_bytes() >= floor, "{} < {floor}", t.memory_bytes());
    // Capacities, not wild over-estimates: within a few times the floor.
    assert!(t.memory_bytes() < 4 * floor, "{}", t.memory_bytes());
    let plain = Template::compile(b"<p>no esi</p>");
    assert!(plain.memory_bytes() >= 13 + std::mem::size_of::<Template>());
}

/// A template compiled from a shared body refers to those bytes (no copy)
/// and is the same template as one compiled from a copy.
#[test]
fn compile_shared_keeps_the_body() {
    let body: std::rc::Rc<[u8]> = std::rc::Rc::from(&b"a<esi:include src=\"/x\"/>b"[..]);
    let t = Template::compile_shared(std::rc::Rc::clone(&body));
    assert!(std::ptr::eq(t.source().as_ptr(), body.as_ptr()));
    assert_eq!(t, Template::compile(&body));
    assert_eq!(render("a<esi:include src=\"/x\"/>b"), "a[inc /x]b");
}
