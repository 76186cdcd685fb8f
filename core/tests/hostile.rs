//! Hostile input for the ESI compiler and evaluator.
//!
//! Pages and fragments come from the origin, and ESI variables from the
//! client, so neither may be able to crash, hang or subvert the worker. This
//! file checks that from three sides:
//!
//! - **Properties** ([`proptest`]): arbitrary bytes, and arbitrary mixes of
//!   ESI-ish tokens (`<esi:include src=`, `<esi:remove>`, `</esi:try>`,
//!   `<!--esi`, `-->`, `$(`, quotes, `<`, `>`, stray bytes), compile and
//!   evaluate with arbitrary [`RequestVars`] without panicking; any chunking
//!   fed to [`Compiler::feed`] gives the same template and [`Plan`] as the
//!   whole document; a document without ESI comes out byte for byte;
//!   variable values never become markup or add query parameters; and a
//!   relative include with variables is refused or stays on the page's
//!   origin, in its directory, whatever the values.
//! - **A corpus** of nasty documents, `tests/fixtures/hostile/*.html`, each
//!   compiled whole and in chunks and evaluated with several requests. Add a
//!   file there whenever a property finds something: proptest prints the
//!   minimal failing input.
//! - **Complexity guards**: a 2 MB page and a page of 10,000 tiny tags stay
//!   within a bounded amount of work (counted in plan segments and output
//!   bytes, not timed),
//!   and compiling adversarial input is linear: 4 MB may take at most about
//!   8 times as long as 1 MB. That last test does read a clock, but with a
//!   factor twice what linear time needs and far below the 16 of quadratic
//!   time; it guards the algorithm's complexity, it is not a performance
//!   test (throughput is measured by `cargo bench`, never asserted).
//!
//! # Running
//!
//! ```sh
//! cargo test -p fragcache-core --test hostile                         # 256 cases per property
//! PROPTEST_CASES=100000 cargo test -p fragcache-core --test hostile   # a long fuzzing run
//! ```
//!
//! Failures are not persisted to a regressions file; proptest prints the
//! shrunk input, which belongs in the corpus.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fragcache_core::config::Config;
use fragcache_core::esi::{Compiler, Include, Plan, RequestVars, Segment, Template};
use fragcache_core::testing::compile_in_chunks;
use fragcache_core::testing::form_encode;
use fragcache_core::url::Url;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Cases per property: 256 unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces of ESI, whole and broken, plus the characters that matter to the
/// lexer. Byte strings, so invalid UTF-8 is among them.
const ESI_TOKENS: &[&[u8]] = &[
    b"<esi:include src=",
    b"<esi:include src=\"/f/a\"/>",
    b"<esi:include src='/f/$(HTTP_COOKIE{a})' alt=\"/f/b\" onerror=\"continue\"/>",
    b"<esi:include src=/f/c>",
    b"</esi:include>",
    b"<esi:include",
    b" src=",
    b" alt=",
    b" onerror=\"continue\"",
    b"/>",
    b"<esi:remove>",
    b"</esi:remove>",
    b"</esi:remove ",
    b"<esi:comment text=\"c\"/>",
    b"<esi:try>",
    b"</esi:try>",
    b"<esi:attempt>",
    b"</esi:attempt>",
    b"<esi:except>",
    b"</esi:except>",
    b"<esi:choose>",
    b"</esi:choose>",
    b"<esi:when test=\"",
    b"$(HTTP_COOKIE{a})=='1'",
    b"$(QUERY_STRING{q}) != 'x' && (1 < 2 || !false)",
    b"<esi:when test=\"$(HTTP_ACCEPT_LANGUAGE{en})\">",
    b"</esi:when>",
    b"<esi:otherwise>",
    b"</esi:otherwise>",
    b"<esi:vars>",
    b"</esi:vars>",
    b"<esi:inline name=\"/f/a\" fetchable=\"no\">",
    b"</esi:inline>",
    b"<esi:unknown>",
    b"<!--esi",
    b"<!--esi ",
    b"-->",
    b"<!--",
    b"--",
    b"$(",
    b")",
    b"$(HTTP_COOKIE)",
    b"$(HTTP_COOKIE{a})",
    b"$(QUERY_STRING)",
    b"$(QUERY_STRING{q}|'d')",
    b"$(HTTP_USER_AGENT{browser})",
    b"$(HTTP_USER_AGENT{os})",
    b"$(HTTP_HOST)",
    b"$(HTTP_REFERER|\"r\")",
    b"{",
    b"}",
    b"|",
    b"'",
    b"\"",
    b"<",
    b">",
    b"</",
    b"=",
    b" ",
    b"\n",
    b"\t",
    b"&amp;",
    b"&#x3c;",
    b"&#60;",
    b"&#xFFFFFFFF;",
    b"&",
    b"esi:",
    b"<esi:",
    b"</esi:",
    b"(",
    b"==",
    b"&&",
    b"!",
    b"\0",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x82\xac",
];

/// Text with the characters HTML and ESI care about, but no ESI of its own
/// (after [`defuse`]).
const HTML_TOKENS: &[&[u8]] = &[
    b"<p>",
    b"</p>",
    b"<div class=\"x\">",
    b"<!-- comment -->",
    b"<!--",
    b"-->",
    b"<ESI:include src=\"/x\"/>",
    b"<esix:include src=/x/>",
    b"<esi-include>",
    b"esi:include",
    b"$(HTTP_COOKIE)",
    b"$(",
    b"<",
    b">",
    b"\"",
    b"'",
    b"&amp;",
    b"\0",
    b"\xff",
    b"\n",
    b"e",
    b"s",
    b"i",
    b":",
];

fn token_soup(tokens: &'static [&'static [u8]], max_tokens: usize) -> BoxedStrategy<Vec<u8>> {
    let token = prop_oneof![
        6 => proptest::sample::select(tokens).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => "[a-z0-9/=\"' <>$(){}|&;:.!-]{0,10}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(token, 0..max_tokens)
        .prop_map(|parts| parts.concat())
        .boxed()
}

/// Arbitrary bytes, or arbitrary ESI-ish token soup.
fn document() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..1024),
        3 => token_soup(ESI_TOKENS, 96),
    ]
    .boxed()
}

/// Makes sure `doc` contains no `<esi:`, `</esi:` or `<!--esi`, by
/// upper-casing the `i` of each (tags are case-sensitive, so the result is
/// plain text; the replacement cannot create a new occurrence).
fn defuse(mut doc: Vec<u8>) -> Vec<u8> {
    for pattern in [&b"<esi:"[..], b"</esi:", b"<!--esi"] {
        let i_at = pattern.len() - 2;
        let mut from = 0;
        while let Some(p) = find(&doc[from..], pattern) {
            doc[from + p + i_at] = b'I';
            from += p + 1;
        }
    }
    doc
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Documents with no ESI in them.
fn plain_document() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..1024),
        2 => token_soup(HTML_TOKENS, 96),
        1 => token_soup(ESI_TOKENS, 64),
    ]
    .prop_map(defuse)
    .boxed()
}

/// Values a client could send: anything, or things meant to break out.
fn hostile_value() -> BoxedStrategy<String> {
    const NASTY: &[&str] = &[
        "",
        ".",
        "..",
        "../../admin",
        "<esi:include src=\"/evil\"/>",
        "<script>alert(1)</script>",
        "\" onerror=\"alert(1)",
        "' onmouseover='x",
        "//evil.example/x",
        "http://evil.example/",
        "%2e%2e/%2e%2e/x",
        "a b\tc\r\nX-Injected: 1",
        "$(HTTP_COOKIE)",
        "a=1; b=2; a=3",
        "é€😀",
        "\0",
        "&amp;&lt;",
        "?#@:[]",
    ];
    prop_oneof![
        3 => any::<String>(),
        2 => proptest::sample::select(NASTY).prop_map(str::to_owned),
        2 => "[ -~]{0,40}",
        1 => proptest::collection::vec(proptest::sample::select(NASTY), 0..4)
            .prop_map(|v| v.concat()),
    ]
    .boxed()
}

/// A `Cookie` header that defines the cookies the templates read (`a`, `u`,
/// `session`) with hostile values, among other junk.
fn cookie_header() -> BoxedStrategy<String> {
    prop_oneof![
        1 => hostile_value(),
        2 => (hostile_value(), hostile_value(), hostile_value()).prop_map(|(a, u, junk)| {
            format!("a={a}; u={u}; {junk}; session=\"{u}\"")
        }),
    ]
    .boxed()
}

/// A query string that defines `q`, `u` and `next`, among other junk.
fn query_string() -> BoxedStrategy<String> {
    prop_oneof![
        1 => hostile_value(),
        2 => (hostile_value(), hostile_value(), hostile_value())
            .prop_map(|(q, u, junk)| format!("q={q}&u={u}&{junk}&next={q}")),
    ]
    .boxed()
}

fn request_vars() -> BoxedStrategy<RequestVars> {
    (
        proptest::option::of(hostile_value()),
        proptest::option::of(hostile_value()),
        proptest::option::of(hostile_value()),
        proptest::option::of(hostile_value()),
        proptest::option::of(cookie_header()),
        proptest::option::of(query_string()),
    )
        .prop_map(
            |(host, referer, user_agent, accept_language, cookie, query_string)| RequestVars {
                host,
                referer,
                user_agent,
                accept_language,
                cookie,
                query_string,
            },
        )
        .boxed()
}

/// Cut points for feeding a document in chunks (positions, resolved
/// against the document's length; duplicates make empty chunks).
fn cuts() -> impl Strategy<Value = Vec<Index>> {
    proptest::collection::vec(any::<Index>(), 0..24)
}

// ---------------------------------------------------------------------------
// Helpers and invariants
// ---------------------------------------------------------------------------

fn realistic_vars() -> RequestVars {
    RequestVars {
        host: Some("shop.example:8787".into()),
        referer: Some("http://shop.example/list".into()),
        user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Firefox/125.0".into()),
        accept_language: Some("en-GB,fr;q=0.5".into()),
        cookie: Some("a=1; u=alice; session=\"s1\"".into()),
        query_string: Some("q=shoes&u=2&next=/f/next".into()),
    }
}

fn hostile_vars() -> RequestVars {
    RequestVars {
        host: Some("evil.example/<x>".into()),
        referer: Some("javascript:alert(1)".into()),
        user_agent: Some("<esi:include src=\"/evil\"/>\"'".into()),
        accept_language: Some("*;q=2, ../..".into()),
        cookie: Some("a=<script>; u=..; session=\"'\\\"".into()),
        query_string: Some("q=%3Cesi%3A&u=..&next=//evil.example/".into()),
    }
}

fn cut_points(doc: &[u8], indices: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = indices.iter().map(|i| i.index(doc.len() + 1)).collect();
    points.sort_unstable();
    points
}

/// Counts every segment of a plan, nested ones included.
fn count_segments(segments: &[Segment]) -> usize {
    segments
        .iter()
        .map(|s| match s {
            Segment::Try { attempt, except } => {
                1 + count_segments(attempt) + count_segments(except)
            }
            _ => 1,
        })
        .sum()
}

fn includes(segments: &[Segment], out: &mut Vec<Include>) {
    for s in segments {
        match s {
            Segment::Include(inc) => out.push(inc.clone()),
            Segment::Try { attempt, except } => {
                includes(attempt, out);
                includes(except, out);
            }
            _ => {}
        }
    }
}

/// Bytes a plan outputs when every include is empty: its literal ranges
/// and evaluated text, both branches of every `esi:try` included.
fn output_bytes(segments: &[Segment]) -> usize {
    segments
        .iter()
        .map(|s| match s {
            Segment::Literal(r) => r.len(),
            Segment::Text(b) => b.len(),
            Segment::Include(_) => 0,
            Segment::Try { attempt, except } => output_bytes(attempt) + output_bytes(except),
        })
        .sum()
}

/// The longest value a variable can have for `vars` (computed values such
/// as `MOZILLA` or `false` are at most 7 bytes).
fn longest_value(vars: &RequestVars) -> usize {
    [
        &vars.host,
        &vars.referer,
        &vars.user_agent,
        &vars.accept_language,
        &vars.cookie,
        &vars.query_string,
    ]
    .iter()
    .filter_map(|v| v.as_ref().map(String::len))
    .fold(7, usize::max)
}

/// What every plan of every template must satisfy, whatever the input:
/// literal ranges lie inside the source, evaluated text is escaped (it only
/// ever comes from variable values), and the plan's size is bounded by the
/// source's: in segments (each needs at least one source byte, and an
/// `esi:inline` is substituted at most 64 times per evaluation), and in
/// output bytes. One pass over the source outputs each source byte at most
/// once, and a variable reference (at least 4 bytes, `$(X)`) at most 6
/// bytes (`&quot;`) per byte of the longest value or of its default (which
/// is in the source); inline substitution repeats at most 65 passes.
fn check_plan(t: &Template, plan: &Plan, vars: &RequestVars, what: &str) {
    fn walk(t: &Template, segments: &[Segment], what: &str) {
        for s in segments {
            match s {
                Segment::Literal(r) => {
                    assert!(
                        r.start < r.end && r.end <= t.source().len(),
                        "{what}: literal range {r:?} outside a source of {} bytes",
                        t.source().len()
                    );
                }
                Segment::Text(bytes) => {
                    assert!(!bytes.is_empty(), "{what}: empty text segment");
                    assert!(
                        !bytes.iter().any(|b| b"<>\"'".contains(b)),
                        "{what}: unescaped markup in evaluated text {:?}",
                        String::from_utf8_lossy(bytes)
                    );
                }
                Segment::Include(_) => {}
                Segment::Try { attempt, except } => {
                    walk(t, attempt, what);
                    walk(t, except, what);
                }
            }
        }
    }
    walk(t, &plan.segments, what);
    let len = t.source().len();
    let n = count_segments(&plan.segments);
    let bound = 65 * (len + 1);
    assert!(n <= bound, "{what}: {n} segments for {len} bytes");
    let out = output_bytes(&plan.segments);
    let per_byte = 6 * longest_value(vars);
    let bound = 65 * (len + 1) * per_byte;
    assert!(out <= bound, "{what}: {out} output bytes for {len} bytes");
}

/// Compiles and evaluates `doc` for each of `vars`, checking every plan.
fn compile_and_check(doc: &[u8], vars: &[&RequestVars], what: &str) -> Template {
    let t = Template::compile(doc);
    assert_eq!(t.source(), doc, "{what}: source kept as given");
    for (i, v) in vars.iter().enumerate() {
        let plan = t.evaluate(v);
        check_plan(&t, &plan, v, &format!("{what} (vars #{i})"));
        assert_eq!(plan, t.evaluate(v), "{what}: evaluation is deterministic");
    }
    t
}

/// The output of a plan whose segments are all literal.
fn literal_output(t: &Template, plan: &Plan) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for s in &plan.segments {
        match s {
            Segment::Literal(r) => out.extend_from_slice(&t.source()[r.clone()]),
            _ => return None,
        }
    }
    Some(out)
}

/// URL text a substituted value may leave raw anywhere: printable ASCII
/// other than `" ' < > \ #` and space, with every `%` starting a
/// well-formed `%XX` escape.
fn is_url_text(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| match c {
        b'%' => b
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        b'"' | b'\'' | b'<' | b'>' | b'\\' | b'#' => false,
        c => c.is_ascii_graphic(),
    })
}

/// URL text that also cannot start another query parameter or query.
fn is_query_value(s: &str) -> bool {
    is_url_text(s) && !s.contains(['&', '?', '+'])
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes and token soup compile, and evaluate with arbitrary
    /// request variables, without panicking, into well-formed plans.
    #[test]
    fn compile_and_evaluate_never_panic(doc in document(), vars in request_vars()) {
        compile_and_check(
            &doc,
            &[&vars, &RequestVars::default(), &hostile_vars()],
            "document",
        );
    }

    /// Feeding the compiler in arbitrary chunks (empty ones included) gives
    /// the same template, warnings and plan as compiling the whole document.
    #[test]
    fn any_chunking_gives_the_same_plan(
        doc in document(),
        indices in cuts(),
        vars in request_vars(),
    ) {
        let whole = Template::compile(&doc);
        let points = cut_points(&doc, &indices);
        let chunked = compile_in_chunks(&doc, &points);
        prop_assert_eq!(chunked.source(), whole.source());
        prop_assert_eq!(chunked.has_esi(), whole.has_esi());
        prop_assert_eq!(chunked.warnings(), whole.warnings(), "cuts at {:?}", points);
        prop_assert_eq!(chunked.evaluate(&vars), whole.evaluate(&vars), "cuts at {:?}", points);
        prop_assert_eq!(
            chunked.evaluate(&realistic_vars()),
            whole.evaluate(&realistic_vars()),
            "cuts at {:?}", points
        );
        prop_assert_eq!(&chunked, &whole, "cuts at {:?}", points);
    }

    /// Byte-at-a-time feeding, the worst chunking, on short documents.
    #[test]
    fn byte_at_a_time_gives_the_same_plan(doc in token_soup(ESI_TOKENS, 24)) {
        let whole = Template::compile(&doc);
        let every: Vec<usize> = (1..doc.len()).collect();
        let chunked = compile_in_chunks(&doc, &every);
        prop_assert_eq!(
            chunked.evaluate(&realistic_vars()),
            whole.evaluate(&realistic_vars())
        );
        prop_assert_eq!(chunked, whole);
    }

    /// A document without `<esi:`, `</esi:` or `<!--esi` is output byte for
    /// byte, however it is chunked, and is known to need no processing.
    #[test]
    fn documents_without_esi_pass_through(
        doc in plain_document(),
        indices in cuts(),
        vars in request_vars(),
    ) {
        for t in [Template::compile(&doc), compile_in_chunks(&doc, &cut_points(&doc, &indices))] {
            prop_assert!(!t.has_esi(), "has_esi for {:?}", String::from_utf8_lossy(&doc));
            let plan = t.evaluate(&vars);
            let out = literal_output(&t, &plan);
            prop_assert_eq!(out.as_deref(), Some(&doc[..]));
            prop_assert!(t.warnings().is_empty());
        }
    }

    /// `Plan::inputs` is sound: changing any request input the evaluation
    /// did not report as read changes nothing in the plan.
    #[test]
    fn unread_inputs_do_not_change_the_plan(
        doc in document(),
        vars in request_vars(),
        other in request_vars(),
    ) {
        let t = Template::compile(&doc);
        let plan = t.evaluate(&vars);
        let read = plan.inputs;
        let pick = |r: bool, mine: &Option<String>, theirs: &Option<String>| {
            if r { mine.clone() } else { theirs.clone() }
        };
        let changed = RequestVars {
            cookie: pick(read.cookie, &vars.cookie, &other.cookie),
            host: pick(read.host, &vars.host, &other.host),
            referer: pick(read.referer, &vars.referer, &other.referer),
            user_agent: pick(read.user_agent, &vars.user_agent, &other.user_agent),
            accept_language: pick(
                read.accept_language,
                &vars.accept_language,
                &other.accept_language,
            ),
            query_string: pick(read.query_string, &vars.query_string, &other.query_string),
        };
        prop_assert_eq!(t.evaluate(&changed), plan);
    }

    /// Request data is escaped for where it lands: HTML-escaped in markup,
    /// URL text in `src` and `alt`, so it can neither create tags nor end
    /// the URL, add query parameters, or move a relative include to
    /// another host or out of its directory.
    #[test]
    fn variables_cannot_create_markup_or_reshape_urls(vars in request_vars()) {
        const PAGE: &[u8] = b"<esi:vars><p title=\"$(HTTP_COOKIE{a})\" data-x='$(QUERY_STRING{q})'>\
            $(HTTP_COOKIE) $(QUERY_STRING) $(HTTP_USER_AGENT) $(HTTP_REFERER) $(HTTP_HOST) \
            $(HTTP_ACCEPT_LANGUAGE) $(QUERY_STRING{u}|'<d>') $(HTTP_COOKIE{zz}|\"\\\"'\")</p></esi:vars>\
            <esi:include src=\"/f/x?c=$(HTTP_COOKIE{a})&amp;q=$(QUERY_STRING{q})&amp;u=$(HTTP_USER_AGENT)\" \
            alt=\"/f/alt/p-$(HTTP_REFERER)\"/>";
        let t = Template::compile(PAGE);
        let plan = t.evaluate(&vars);
        check_plan(&t, &plan, &vars, "variables page");
        let mut incs = Vec::new();
        includes(&plan.segments, &mut incs);
        prop_assert_eq!(incs.len(), 1);
        let inc = &incs[0];
        let query = inc.src.strip_prefix("/f/x?").expect("src keeps its path");
        let params: Vec<&str> = query.split('&').collect();
        prop_assert_eq!(params.len(), 3, "src {:?}", inc.src);
        for (param, name) in params.iter().zip(["c", "q", "u"]) {
            let value = param
                .strip_prefix(name)
                .and_then(|p| p.strip_prefix('='))
                .expect("parameter names kept");
            prop_assert!(is_query_value(value), "{:?} in {:?}", value, inc.src);
        }
        let alt = inc.alt.as_deref().expect("alt kept");
        let tail = alt.strip_prefix("/f/alt/p-").expect("alt keeps its path");
        prop_assert!(is_url_text(tail), "alt {:?}", alt);
        // Resolved, the include stays on the page's origin and path.
        let base = Url::parse("http://origin.test/page").unwrap();
        if let Ok(u) = base.resolve(&inc.src) {
            prop_assert_eq!(u.host(), "origin.test");
            prop_assert_eq!(u.path(), "/f/x");
        }
        if let Ok(u) = base.resolve(alt) {
            prop_assert_eq!(u.host(), "origin.test");
            prop_assert!(u.path().starts_with("/f/alt/p-"), "alt resolved to {}", u);
        }
    }
}

// ---------------------------------------------------------------------------
// Variables in relative include URLs
// ---------------------------------------------------------------------------

/// Values meant to move an include elsewhere.
fn url_attack() -> BoxedStrategy<String> {
    const ATTACKS: &[&str] = &[
        "/fragments/promo",
        "//evil.test/x",
        "http://evil.test/",
        "https:evil",
        "/\\evil.test",
        "\\\\evil.test",
        "x@evil.test",
        "..",
        ".",
        "../x",
        "a/../../b",
        "./..",
        "%2e%2e",
        ".%2E",
        "a\r\nb",
        "a b\"c#d",
        "?x=1&y=2",
        "é/ü",
        "%zz%",
    ];
    prop_oneof![
        2 => proptest::sample::select(ATTACKS).prop_map(str::to_owned),
        1 => proptest::collection::vec(proptest::sample::select(ATTACKS), 1..4)
            .prop_map(|v| v.concat()),
        1 => "[ -~]{0,24}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// Relative `src` templates, each with the path every resolved include must
/// stay under (`true`) or be exactly (`false`).
const RELATIVE_TEMPLATES: &[(&str, &str, bool)] = &[
    ("$(QUERY_STRING{u})", "/", true),
    ("/$(QUERY_STRING{u})", "/", true),
    ("h$(QUERY_STRING{u})", "/", true),
    ("$(HTTP_COOKIE{a})$(QUERY_STRING{u})", "/", true),
    ("/fragments/$(QUERY_STRING{u})", "/fragments/", true),
    (
        "/fragments/$(HTTP_COOKIE{a})/$(QUERY_STRING{u})/x",
        "/fragments/",
        true,
    ),
    ("/f/.$(QUERY_STRING{u})/x", "/f/", true),
    ("frag/$(QUERY_STRING{u})", "/frag/", true),
    ("/p/$(QUERY_STRING)", "/p/", true),
    ("/$(HTTP_HOST)/x", "/", true),
    ("/f?x=$(QUERY_STRING{u})&y=$(HTTP_COOKIE{a})", "/f", false),
    ("/p?$(QUERY_STRING)", "/p", false),
    ("?u=$(QUERY_STRING{u})", "/page", false),
];

proptest! {
    #![proptest_config(config())]

    /// Whatever the values, a relative include stays relative: resolved
    /// against the page as `assemble` does, it is refused, or it is on the
    /// page's origin, under the template's directory, with no dot segment;
    /// and the URL text never has a raw CR, LF, space, `"` or `#`.
    #[test]
    fn variables_keep_relative_includes_on_the_origin(
        u in url_attack(),
        a in url_attack(),
        host in url_attack(),
    ) {
        let config = Config::from_json_str(r#"{ "origin": "http://origin.test" }"#).unwrap();
        let base = Url::parse("http://origin.test/page").unwrap();
        let vars = RequestVars {
            query_string: Some(format!("u={}", form_encode(&u))),
            cookie: Some(format!("a={}", a.replace(';', ""))),
            host: Some(host),
            ..RequestVars::default()
        };
        for &(tpl, under, is_prefix) in RELATIVE_TEMPLATES {
            let page = format!("<esi:include src=\"{tpl}\" alt=\"{tpl}\"/>");
            let t = Template::compile(page.as_bytes());
            let mut incs = Vec::new();
            includes(&t.evaluate(&vars).segments, &mut incs);
            prop_assert_eq!(incs.len(), 1);
            let inc = &incs[0];
            for src in std::iter::once(&inc.src).chain(inc.alt.as_ref()) {
                prop_assert!(
                    !src.contains(['\r', '\n', ' ', '"', '#']),
                    "{} gave {:?}", tpl, src.as_str()
                );
                if src.refusal().is_some() {
                    continue;
                }
                let Ok(url) = base.resolve(src) else { continue };
                prop_assert!(config.allow.allows(&url), "{} gave {}", tpl, url);
                prop_assert_eq!(url.host(), "origin.test");
                if is_prefix {
                    prop_assert!(url.path().starts_with(under), "{} gave {}", tpl, url);
                } else {
                    prop_assert_eq!(url.path(), under, "{} gave {}", tpl, url);
                }
                for seg in url.path().split('/') {
                    prop_assert!(seg != ".." && seg != ".", "{} gave {}", tpl, url);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Path climbing through variables
// ---------------------------------------------------------------------------

/// A variable that makes up a whole path segment must not climb:
/// `src="/fragments/$(HTTP_COOKIE{a})/$(HTTP_COOKIE{b})/x"` with `a=..; b=..`
/// would otherwise fetch `/x`, letting the client choose which path on an
/// allowed origin is fetched. Values `.` and `..` are encoded as `%2E`, and
/// `Url::resolve` refuses encoded dot segments.
#[test]
fn variable_dot_segments_cannot_climb() {
    let t = Template::compile(
        b"<esi:include src=\"/fragments/$(HTTP_COOKIE{a})/$(HTTP_COOKIE{b})/x\"/>",
    );
    let base = Url::parse("http://origin.test/page").unwrap();
    for cookie in ["a=..; b=..", "a=.; b=..", "a=x; b=.."] {
        let vars = RequestVars {
            cookie: Some(cookie.into()),
            ..RequestVars::default()
        };
        let mut incs = Vec::new();
        includes(&t.evaluate(&vars).segments, &mut incs);
        if let Ok(u) = base.resolve(&incs[0].src) {
            assert!(
                u.path().starts_with("/fragments/"),
                "cookie {cookie:?}: src {:?} fetches {u}",
                incs[0].src
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

/// Every file of the corpus compiles (whole, byte by byte, and in chunks of
/// several sizes, all to the same template) and evaluates into a
/// well-formed plan for an empty, a realistic and a hostile request.
#[test]
fn corpus_compiles_and_evaluates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/fixtures/hostile exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus has only {} files", files.len());
    let (empty, realistic, hostile) = (RequestVars::default(), realistic_vars(), hostile_vars());
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let whole = compile_and_check(&doc, &[&empty, &realistic, &hostile], &name);
        assert!(
            whole.has_esi(),
            "{name}: the corpus is meant to contain ESI"
        );
        for size in [1, 2, 7, 64, 4096] {
            if size == 1 && doc.len() > 50_000 {
                continue;
            }
            let points: Vec<usize> = (1..=doc.len() / size).map(|k| k * size).collect();
            let chunked = compile_in_chunks(&doc, &points);
            assert!(
                chunked == whole,
                "{name}: chunks of {size} give another template"
            );
        }
    }
}

/// Expectations for a few corpus files, beyond "does not break".
#[test]
fn corpus_spot_checks() {
    let read = |name: &str| std::fs::read(corpus_dir().join(name)).unwrap();
    let vars = realistic_vars();

    // An unterminated tag turns the rest of the input into literal text.
    let doc = read("unterminated-tags.html");
    let t = Template::compile(&doc);
    let plan = t.evaluate(&vars);
    let last = plan.segments.last().expect("output");
    assert!(
        matches!(last, Segment::Literal(r) if r.end == doc.len()),
        "ends in literal text: {last:?}"
    );
    assert!(!t.warnings().is_empty());

    // Includes of hostile URLs compile like any other include; refusing
    // them is the job of `Url::resolve` and the allow-list, called here as
    // `assemble` calls them. Whatever they let through is, by an oracle
    // that does not use them, on one of the two configured origins, and
    // never the origin's `/admin`.
    let config = Config::from_json_str(
        r#"{ "origin": "http://origin.test", "allowed_origins": ["https://cdn.test:8443"] }"#,
    )
    .expect("config");
    let known = [("http", "origin.test", 80), ("https", "cdn.test", 8443)];
    let t = Template::compile(&read("hostile-urls.html"));
    let mut incs = Vec::new();
    includes(&t.evaluate(&vars).segments, &mut incs);
    assert!(incs.len() >= 10, "{incs:?}");
    let base = Url::parse("http://origin.test/page").unwrap();
    let mut fetched = Vec::new();
    for inc in &incs {
        for src in std::iter::once(&inc.src).chain(inc.alt.as_ref()) {
            let Ok(u) = base.resolve(src) else { continue };
            if !config.allow.allows(&u) {
                continue;
            }
            fetched.push(u.to_string());
            let at = (u.scheme(), u.host(), u.effective_port());
            assert!(known.contains(&at), "{src:?} -> {u} allowed");
            assert!(!u.path().starts_with("/admin"), "{src:?} -> {u} allowed");
        }
    }
    // The file ends with near misses and a few harmless includes, so the
    // check is not vacuous: exactly these get through.
    assert_eq!(
        fetched,
        [
            "http://origin.test/fragments/ok",
            "http://origin.test/fragments/case",
            "http://origin.test/fragments/port",
            "https://cdn.test:8443/lib.js",
        ]
    );

    // Inline loops stay bounded: substitutions stop, includes remain.
    let t = Template::compile(&read("inline-loops.html"));
    let plan = t.evaluate(&vars);
    assert!(count_segments(&plan.segments) < 5_000);
}

// ---------------------------------------------------------------------------
// Bounded work on big inputs
// ---------------------------------------------------------------------------

/// A realistic 2 MB page: work is proportional to its ESI constructs, not
/// to its size, and evaluation yields exactly what it contains.
#[test]
fn two_megabyte_page() {
    let block = |i: usize| {
        format!(
            "<section id=\"s{i}\"><h2>Section {i}</h2><p>{}</p>\
             <esi:include src=\"/fragments/item/{i}\" alt=\"/fragments/fallback\" onerror=\"continue\"/>\
             <esi:vars><a href=\"/search?q=$(QUERY_STRING{{q}})\">$(HTTP_COOKIE{{u}})</a></esi:vars>\
             <!-- a plain comment with <tags> inside --></section>\n",
            "lorem ipsum dolor sit amet &amp; more text ".repeat(20)
        )
    };
    let mut doc = String::with_capacity(2 << 20);
    let mut blocks = 0;
    while doc.len() < 2 << 20 {
        doc.push_str(&block(blocks));
        blocks += 1;
    }
    let t = compile_and_check(doc.as_bytes(), &[&realistic_vars()], "2 MB page");
    let plan = t.evaluate(&realistic_vars());
    let mut incs = Vec::new();
    includes(&plan.segments, &mut incs);
    assert_eq!(incs.len(), blocks);
    assert_eq!(incs[7].src, "/fragments/item/7");
    // Per block: literal, include, literal, text (query), literal, text (cookie), literal.
    let n = count_segments(&plan.segments);
    assert!(n <= 7 * blocks + 1, "{n} segments for {blocks} blocks");
    assert!(t.warnings().is_empty(), "{:?}", &t.warnings()[..1]);
}

/// 10,000 tiny tags of each kind: one segment per construct at most.
#[test]
fn ten_thousand_tiny_tags() {
    const N: usize = 10_000;
    let vars = realistic_vars();

    let doc = "<esi:include src=\"/f/x\"/>".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "includes");
    let plan = t.evaluate(&vars);
    assert_eq!(plan.segments.len(), N);
    assert!(plan
        .segments
        .iter()
        .all(|s| matches!(s, Segment::Include(i) if i.src == "/f/x")));

    let doc = "a<esi:comment text=c/>".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "comments");
    assert_eq!(t.evaluate(&vars).segments.len(), N, "one literal per `a`");

    let doc = "<esi:vars>$(HTTP_COOKIE{u})</esi:vars>".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "vars");
    let plan = t.evaluate(&vars);
    assert!(count_segments(&plan.segments) <= N);
    let text: usize = plan
        .segments
        .iter()
        .map(|s| match s {
            Segment::Text(b) => b.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(text, N * "alice".len());

    let doc = "<esi:try><esi:attempt><esi:include src=\"/a\"/></esi:attempt><esi:except>e</esi:except></esi:try>"
        .repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "try");
    let plan = t.evaluate(&vars);
    assert_eq!(plan.segments.len(), N);
    assert_eq!(count_segments(&plan.segments), 3 * N);

    let doc = "<!--esi x-->".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "markers");
    assert!(t.evaluate(&vars).segments.len() <= N);

    let doc = "<esi:remove>x</esi:remove>".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "removes");
    assert!(t.evaluate(&vars).segments.is_empty());

    let doc =
        "<esi:choose><esi:when test=\"$(HTTP_COOKIE{a})=='1'\">y</esi:when></esi:choose>".repeat(N);
    let t = compile_and_check(doc.as_bytes(), &[&vars], "choose");
    assert_eq!(t.evaluate(&vars).segments.len(), N);
}

// ---------------------------------------------------------------------------
// Complexity guard
// ---------------------------------------------------------------------------

/// Adversarial documents of about `len` bytes: each repeats one unit that
/// stresses one part of the compiler.
fn adversarial(kind: &str, len: usize) -> Vec<u8> {
    let repeat = |unit: &[u8]| -> Vec<u8> { unit.repeat(len / unit.len()) };
    match kind {
        // Tags that never close: the quote state flips at every `"`.
        "unclosed include" => repeat(b"<esi:include src=\""),
        "unclosed include, no quotes" => repeat(b"<esi:include src=/x "),
        "markers" => repeat(b"<!--esi "),
        "nested try" => repeat(b"<esi:try><esi:attempt>"),
        "end tags" => {
            let mut d = repeat(b"<esi:try><esi:attempt>")[..len / 2].to_vec();
            d.extend(repeat(b"</esi:attempt></esi:try></esi:choose>")[..len / 2].iter());
            d
        }
        "remove without end" => {
            let mut d = b"<esi:remove>".to_vec();
            d.extend(repeat(b"</esi:remove      "));
            d
        }
        "variables" => {
            let mut d = b"<esi:vars>".to_vec();
            d.extend(repeat(b"$($(HTTP_COOKIE{"));
            d
        }
        "long attribute" => {
            let mut d = b"<esi:include src=\"".to_vec();
            d.extend(repeat(b"&amp;$(HTTP_COOKIE{a})"));
            d.extend(b"\"/>");
            d
        }
        "expression" => {
            let mut d = b"<esi:choose><esi:when test=\"".to_vec();
            d.extend(repeat(b"(!("));
            d.extend(b"\">x</esi:when></esi:choose>");
            d
        }
        "tiny tags" => repeat(b"<esi:comment/>"),
        _ => unreachable!("{kind}"),
    }
}

/// One way of compiling a document, timed.
type CompileFn = dyn Fn(&[u8]) -> Duration;

fn time<F: FnOnce()>(f: F) -> Duration {
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

/// Compile time is linear in the input: 4 MB of adversarial input takes at
/// most ~8 times as long as 1 MB (linear is 4, quadratic 16), whole and in
/// small chunks. A complexity guard, not a performance test: the factor is
/// generous, a few milliseconds of slack absorb timer noise on short runs,
/// and a pair of measurements over the bound is taken again (up to three
/// times) before the test fails, since other tests run alongside this one.
#[test]
fn compile_time_is_linear() {
    const MB: usize = 1 << 20;
    const ATTEMPTS: usize = 3;
    let kinds = [
        "unclosed include",
        "unclosed include, no quotes",
        "markers",
        "nested try",
        "end tags",
        "remove without end",
        "variables",
        "long attribute",
        "expression",
        "tiny tags",
    ];
    let whole = |doc: &[u8]| {
        time(|| {
            std::hint::black_box(Template::compile(doc));
        })
    };
    let chunked = |doc: &[u8]| {
        time(|| {
            let mut c = Compiler::new();
            for chunk in doc.chunks(61) {
                c.feed(chunk);
            }
            std::hint::black_box(c.finish());
        })
    };
    let vars = hostile_vars();
    let mut report = Vec::new();
    for kind in kinds {
        let small = adversarial(kind, MB);
        let large = adversarial(kind, 4 * MB);
        // Evaluate once too: whatever compiling builds must be cheap to walk.
        let t = Template::compile(&large);
        let plan = t.evaluate(&vars);
        check_plan(&t, &plan, &vars, kind);
        // No construct here outputs more than it is made of: whatever the
        // general bound allows, the output stays within the input's size.
        let out = output_bytes(&plan.segments);
        assert!(
            out <= large.len(),
            "{kind}: {out} output bytes for {} input bytes",
            large.len()
        );
        let modes: [(&str, &CompileFn); 2] = [("whole", &whole), ("in 61-byte chunks", &chunked)];
        for (how, compile) in modes {
            let mut tries = Vec::new();
            let linear = (0..ATTEMPTS).any(|_| {
                let (t1, t4) = (compile(&small), compile(&large));
                tries.push(format!("1 MB {t1:?}, 4 MB {t4:?}"));
                t4 <= t1 * 8 + Duration::from_millis(25)
            });
            let tries = tries.join("; ");
            assert!(
                linear,
                "{kind} ({how}): 4 MB took more than 8x as long as 1 MB in each of \
                 {ATTEMPTS} tries ({tries}): compiling is not linear"
            );
            report.push(format!("{kind} ({how}): {tries}"));
        }
    }
    println!("{}", report.join("\n"));
}
