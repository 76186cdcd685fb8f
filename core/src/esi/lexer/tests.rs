//! Unit tests of tag parsing, and of the event stream the lexer reports to
//! a [`Sink`]: what it is for representative inputs, and that no chunking
//! of the input changes it.

use std::path::Path;

use super::*;

/// One [`Sink`] event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(Range<usize>),
    Start {
        name: String,
        /// The bytes after the name, up to the `>`.
        rest: Vec<u8>,
        self_closing: bool,
        at: usize,
    },
    End {
        name: String,
        at: usize,
    },
    Var {
        name: super::super::vars::VarName,
        key: Option<String>,
        default: Option<String>,
        at: usize,
    },
    MarkerOpen(usize),
    MarkerClose(usize),
    Warning(usize, &'static str),
}

fn name_str(name: Name<'_>) -> String {
    match name {
        Name::Known(d) => d.as_str().to_owned(),
        Name::Unknown(n) => format!("esi:{}?", String::from_utf8_lossy(n)),
    }
}

/// Records the events, and answers [`Sink::mode`] and
/// [`Sink::start_tag`] as the compiler does for well-nested input (it
/// ignores the depth limit and mismatched end tags).
#[derive(Debug, Default)]
struct Recorder {
    events: Vec<Event>,
    vars: usize,
    markers: usize,
    strs: Strs,
}

impl Sink for Recorder {
    fn text(&mut self, range: Range<usize>) {
        assert!(!range.is_empty(), "empty text event");
        self.events.push(Event::Text(range));
    }

    fn start_tag(&mut self, tag: &Tag<'_>) -> Content {
        self.events.push(Event::Start {
            name: name_str(tag.name),
            rest: tag.rest.to_vec(),
            self_closing: tag.self_closing,
            at: tag.start,
        });
        match tag.name {
            Name::Known(Directive::Vars) if !tag.self_closing => self.vars += 1,
            Name::Known(Directive::Remove) if !tag.self_closing => return Content::Raw,
            _ => {}
        }
        Content::Lexed
    }

    fn end_tag(&mut self, name: Name<'_>, offset: usize) {
        if name == Name::Known(Directive::Vars) {
            self.vars = self.vars.saturating_sub(1);
        }
        self.events.push(Event::End {
            name: name_str(name),
            at: offset,
        });
    }

    fn var(&mut self, var: VarRef, offset: usize) {
        let text = |p: Option<super::super::vars::Str>| p.map(|p| self.strs.get(p).to_owned());
        let (key, default) = (text(var.key), text(var.default));
        self.events.push(Event::Var {
            name: var.name,
            key,
            default,
            at: offset,
        });
    }

    fn strs(&mut self) -> &mut Strs {
        &mut self.strs
    }

    fn marker_open(&mut self, offset: usize) {
        self.markers += 1;
        self.events.push(Event::MarkerOpen(offset));
    }

    fn marker_close(&mut self, offset: usize) {
        self.markers = self.markers.saturating_sub(1);
        self.events.push(Event::MarkerClose(offset));
    }

    fn warning(&mut self, offset: usize, message: &'static str) {
        self.events.push(Event::Warning(offset, message));
    }

    fn mode(&self) -> Mode {
        match (self.vars > 0, self.markers > 0) {
            (false, false) => Mode::Markup,
            (true, false) => Mode::Vars,
            (false, true) => Mode::Marker,
            (true, true) => Mode::VarsInMarker,
        }
    }
}

/// The events for `input` fed in chunks ending at `cuts` (ascending; out
/// of range cuts are clamped), as the compiler feeds its buffer.
fn events_chunked(input: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut lexer = Lexer::new();
    let mut sink = Recorder::default();
    let mut buf = Vec::with_capacity(input.len());
    let mut last = 0;
    for &cut in cuts {
        let cut = cut.clamp(last, input.len());
        buf.extend_from_slice(&input[last..cut]);
        lexer.run(&buf, &mut sink, false);
        last = cut;
    }
    buf.extend_from_slice(&input[last..]);
    lexer.run(&buf, &mut sink, false);
    lexer.run(&buf, &mut sink, true);
    sink.events
}

fn events(input: &[u8]) -> Vec<Event> {
    let mut sink = Recorder::default();
    Lexer::new().run(input, &mut sink, true);
    sink.events
}

/// The events of `input`, one line each, for comparing with expectations.
fn show(input: &str) -> Vec<String> {
    let src = input.as_bytes();
    let lossy = |r: Range<usize>| String::from_utf8_lossy(&src[r]).into_owned();
    events(src)
        .into_iter()
        .map(|e| match e {
            Event::Text(r) => format!("text {:?}", lossy(r)),
            Event::Start {
                name,
                rest,
                self_closing,
                at,
            } => format!(
                "@{at} <{name}{}{}>",
                String::from_utf8_lossy(&rest),
                if self_closing { " (empty)" } else { "" }
            ),
            Event::End { name, at } => format!("@{at} </{name}>"),
            Event::Var {
                name,
                key,
                default,
                at,
            } => {
                let mut s = format!("@{at} var {name:?}");
                if let Some(k) = &key {
                    s.push_str(&format!("{{{k}}}"));
                }
                if let Some(d) = &default {
                    s.push_str(&format!("|{d:?}"));
                }
                s
            }
            Event::MarkerOpen(at) => format!("@{at} <!--esi"),
            Event::MarkerClose(at) => format!("@{at} -->"),
            Event::Warning(at, m) => format!("@{at} warning: {m}"),
        })
        .collect()
}

#[track_caller]
fn expect(input: &str, want: &[&str]) {
    assert_eq!(show(input), want, "events of {input:?}");
}

#[test]
fn events_of_plain_markup() {
    expect("", &[]);
    expect(
        "<p>a $(HTTP_HOST) -- --> <ESI:x> esi: <esi-x></p>",
        &["text \"<p>a $(HTTP_HOST) -- --> <ESI:x> esi: <esi-x></p>\""],
    );
}

#[test]
fn events_of_tags() {
    expect(
        "a<esi:include src=\"/x\"/>b<esi:include src=/z></esi:include>c",
        &[
            "text \"a\"",
            "@1 <esi:include src=\"/x\"/ (empty)>",
            "text \"b\"",
            "@25 <esi:include src=/z>",
            "@45 </esi:include>",
            "text \"c\"",
        ],
    );
    expect(
        "<esi:include src='a>b'/><esi:bogus x=1></esi:bogus >",
        &[
            "@0 <esi:include src='a>b'/ (empty)>",
            "@24 <esi:bogus? x=1>",
            "@39 </esi:bogus?>",
        ],
    );
}

#[test]
fn events_of_vars_mode() {
    // `$(` is a construct only inside `esi:vars`.
    expect(
        "$(HTTP_HOST)<esi:vars>$(HTTP_COOKIE{a}|'x') $(bad</esi:vars>$(HTTP_HOST)",
        &[
            "text \"$(HTTP_HOST)\"",
            "@12 <esi:vars>",
            "@22 var Cookie{a}|\"x\"",
            // A `$(` that is no reference is text, in two pieces.
            "text \" \"",
            "text \"$(bad\"",
            "@49 </esi:vars>",
            "text \"$(HTTP_HOST)\"",
        ],
    );
}

#[test]
fn events_of_markers() {
    // `-->` closes a marker only while one is open.
    expect(
        "--><!--esi a <!--esi b--> c-->-->",
        &[
            "text \"-->\"",
            "@3 <!--esi",
            "text \" a \"",
            "@13 <!--esi",
            "text \" b\"",
            "@22 -->",
            "text \" c\"",
            "@27 -->",
            "text \"-->\"",
        ],
    );
}

#[test]
fn events_of_remove_raw_mode() {
    // Nothing inside `esi:remove` is lexed; its end tag is not an event.
    expect(
        "<esi:remove>x<esi:include src=/a/><!--esi</esi:remove >y<esi:remove/>z",
        &[
            "@0 <esi:remove>",
            "text \"y\"",
            "@56 <esi:remove/ (empty)>",
            "text \"z\"",
        ],
    );
    expect(
        "a<esi:remove>never closed",
        &[
            "text \"a\"",
            "@1 <esi:remove>",
            "@1 warning: `esi:remove` not closed; the rest of the input is dropped",
        ],
    );
}

#[test]
fn events_of_unterminated_tag() {
    // A `>` inside quotes does not end a tag.
    expect(
        "a<esi:include src=\"/x <p>b",
        &[
            "text \"a\"",
            "@1 warning: ESI tag not closed by `>` before the end of input; output as text",
            "text \"<esi:include src=\\\"/x <p>b\"",
        ],
    );
}

/// Every input used to check chunking: the samples of the compiler tests,
/// the hostile corpus, and the pages and fragments of the fixtures.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = crate::esi::tests::SAMPLES
        .iter()
        .map(|s| (format!("{s:?}"), s.as_bytes().to_vec()))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for dir in ["hostile", "esi"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("fixture directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("fixture");
            all.push((p.display().to_string(), bytes));
        }
    }
    assert!(all.len() > 60, "corpus too small: {}", all.len());
    all
}

use crate::testing::random_cuts;

#[test]
fn chunking_never_changes_events_random_cuts() {
    for (label, input) in corpus() {
        let whole = events(&input);
        for seed in 1..=16u64 {
            let got = events_chunked(&input, &random_cuts(input.len(), seed));
            assert!(got == whole, "{label}: random cuts, seed {seed}");
        }
    }
}

#[test]
fn chunking_never_changes_events_byte_at_a_time() {
    for (label, input) in corpus() {
        let ones: Vec<usize> = (1..input.len()).collect();
        assert!(
            events_chunked(&input, &ones) == events(&input),
            "{label}: one byte at a time"
        );
    }
}

#[test]
fn chunking_never_changes_events_every_split_point() {
    for (label, input) in corpus().into_iter().filter(|(_, i)| i.len() <= 600) {
        let whole = events(&input);
        for cut in 0..=input.len() {
            assert!(
                events_chunked(&input, &[cut]) == whole,
                "{label}: split at {cut}"
            );
        }
    }
}

fn tag(s: &str) -> Tag<'_> {
    let gt = s.len() - 1;
    parse_tag(s.as_bytes(), 0, gt, s.starts_with("</"))
}

fn attr(t: &Tag<'_>, n: &str) -> Option<String> {
    t.attr(n.as_bytes())
        .map(|v| String::from_utf8(v.into_owned()).unwrap())
}

#[test]
fn attributes() {
    let t = tag("<esi:include src=\"/a\" alt='/b' onerror=continue/>");
    assert_eq!(t.name, Name::Known(Directive::Include));
    assert_eq!(attr(&t, "src").as_deref(), Some("/a"));
    assert_eq!(attr(&t, "alt").as_deref(), Some("/b"));
    // An unquoted value takes the `/` (as in HTML).
    assert_eq!(attr(&t, "onerror").as_deref(), Some("continue/"));
    assert!(!t.self_closing);
    let t = tag("<esi:include\n\tsrc\n=\n  \"/a b\"\r\n  alt = '/c' />");
    assert_eq!(attr(&t, "src").as_deref(), Some("/a b"));
    assert_eq!(attr(&t, "alt").as_deref(), Some("/c"));
    assert!(t.self_closing);
    let t = tag("<esi:include src=\"/first\" src=\"/second\" checked = bogus\"x\"/>");
    assert_eq!(attr(&t, "src").as_deref(), Some("/first"));
    assert_eq!(attr(&t, "checked").as_deref(), Some("bogus\"x\"/"));
    let t = tag("<esi:vars>");
    assert_eq!(t.name, Name::Known(Directive::Vars));
    assert!(!t.self_closing);
    let t = tag("<esi:when test=\"$(A) > 1 & $(B)=='x'\">");
    assert_eq!(attr(&t, "test").as_deref(), Some("$(A) > 1 & $(B)=='x'"));
    let t = tag("<esi:comment text=\"a\" / >");
    assert!(t.self_closing);
    let t = tag("<esi:include = src=\"/q\" novalue/>");
    assert_eq!(attr(&t, "src").as_deref(), Some("/q"));
    assert_eq!(attr(&t, "novalue").as_deref(), Some(""));
    let t = tag("<esi:include src=\"unterminated/>");
    assert_eq!(attr(&t, "src").as_deref(), Some("unterminated/"));
    let t = tag("</esi:vars >");
    assert_eq!(t.name, Name::Known(Directive::Vars));
    let t = tag("<esi:includes src=/a>");
    assert_eq!(t.name, Name::Unknown(b"includes"));
}

#[test]
fn attributes_beyond_those_kept_by_parse_tag() {
    let t = tag("<esi:include a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 h=x src=\"/late\" a=y />");
    assert_eq!(attr(&t, "a").as_deref(), Some("1"));
    assert_eq!(attr(&t, "h").as_deref(), Some("8"));
    assert_eq!(attr(&t, "i").as_deref(), Some("9"));
    assert_eq!(attr(&t, "src").as_deref(), Some("/late"));
    assert_eq!(attr(&t, "alt"), None);
    assert!(t.self_closing);
}

#[test]
fn entities() {
    let d = |s: &str| String::from_utf8(decode_entities(s.as_bytes()).into_owned()).unwrap();
    assert_eq!(d("a&amp;b&lt;&gt;&quot;&apos;"), "a&b<>\"'");
    assert_eq!(d("&#65;&#x42;&#X43;&#233;&#x1F600;"), "ABCé😀");
    assert_eq!(
        d("&unknown; &amp &#; &#x; &#0; &#xD800; &#x110000; & &#12a;"),
        "&unknown; &amp &#; &#x; &#0; &#xD800; &#x110000; & &#12a;"
    );
    assert_eq!(d("&amp;amp;"), "&amp;");
    assert_eq!(d("&#99999999999999;"), "&#99999999999999;");
}

#[test]
fn classification() {
    assert!(matches!(classify(b"<esi:i", false), Class::StartTag));
    assert!(matches!(classify(b"</esi:i", false), Class::EndTag));
    assert!(matches!(classify(b"<!--esi", false), Class::Marker));
    assert!(matches!(classify(b"<es", false), Class::NeedMore));
    assert!(matches!(classify(b"<esi:", false), Class::NeedMore));
    assert!(matches!(classify(b"<esi:", true), Class::Text));
    assert!(matches!(classify(b"<!-", false), Class::NeedMore));
    assert!(matches!(classify(b"<!-- ", false), Class::Text));
    assert!(matches!(classify(b"<esi: x", false), Class::Text));
    assert!(matches!(classify(b"<ESI:include", false), Class::Text));
    assert!(matches!(classify(b"<esix:foo", false), Class::Text));
    assert!(matches!(classify(b"<esi-foo", false), Class::Text));
    assert!(matches!(classify(b"<", false), Class::NeedMore));
    assert!(matches!(classify(b"<", true), Class::Text));
}

#[test]
fn remove_end_matching() {
    assert!(matches!(
        remove_end(b"</esi:remove>", false),
        RemoveEnd::Yes(13)
    ));
    assert!(matches!(
        remove_end(b"</esi:remove \n>x", false),
        RemoveEnd::Yes(15)
    ));
    assert!(matches!(
        remove_end(b"</esi:rem", false),
        RemoveEnd::NeedMore
    ));
    assert!(matches!(remove_end(b"</esi:rem", true), RemoveEnd::No));
    assert!(matches!(
        remove_end(b"</esi:removed>", false),
        RemoveEnd::No
    ));
    assert!(matches!(remove_end(b"<p>", false), RemoveEnd::No));
    let long = format!("</esi:remove{}>", " ".repeat(MAX_REMOVE_END_SPACE + 1));
    assert!(matches!(remove_end(long.as_bytes(), false), RemoveEnd::No));
}
