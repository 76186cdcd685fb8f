//! The streaming lexer: finds ESI constructs in a growing byte buffer and
//! reports them to the [`Builder`].
//!
//! # Chunk safety
//!
//! The compiler appends each chunk to one buffer and calls [`Lexer::run`].
//! The lexer never decides anything on a prefix that more bytes could
//! change: when a construct might continue past the end of the buffer it
//! stops and waits, and it resumes from a saved position with saved state
//! (quote state inside a tag, the variable scanner), so every byte is
//! examined a bounded number of times whatever the chunking. Text between
//! constructs is reported as byte ranges, and adjacent ranges are merged by
//! the builder, so any chunking yields the same template.
//!
//! # What is recognised
//!
//! Plain markup is skipped with `memmem`, looking for `esi:` and `<!--esi`
//! (rarer than `<`, which is everywhere in HTML); inside `esi:vars` and
//! `<!--esi` it is skipped with `memchr`, looking for `<`, `$` and `-`:
//!
//! - `<esi:` + letter: a start tag; `</esi:` + letter: an end tag. Names and
//!   prefixes are case-sensitive. A tag ends at the first `>` outside a
//!   quoted attribute value.
//! - `<!--esi`: opens a marker; `-->` closes it (only while one is open).
//! - `$(` inside `esi:vars`: a variable reference (see [`super::vars`]).
//! - Inside `esi:remove` only `</esi:remove>` (optionally with whitespace
//!   before `>`) is looked for.
//!
//! # Malformed input
//!
//! - A tag with no closing `>` by end of input: everything from its `<` to
//!   the end is output as literal text, with a warning. (The rest is not
//!   re-lexed: that keeps the worst case linear.)
//! - `esi:remove` not closed: the rest of the input is dropped, warning.
//! - A `$(` that is not a valid reference: literal text.
//! - Attribute syntax is lenient: unquoted values, valueless attributes,
//!   stray `=` and garbage are skipped; the first of duplicate attributes
//!   wins. Entities are decoded in values: `&amp; &lt; &gt; &quot; &apos;`
//!   and numeric `&#NN;`/`&#xNN;` (unknown or invalid ones stay as written).

use std::borrow::Cow;

use memchr::memmem::Finder;
use memchr::{memchr, memchr2, memchr3};

use super::compile::Builder;
use super::vars::{Scan, VarScanner};

/// Whitespace allowed between `</esi:remove` and `>`; bounded so that a
/// long run cannot be rescanned at every chunk.
const MAX_REMOVE_END_SPACE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Text,
    /// Inside `<esi:…` or `</esi:…`, looking for the closing `>`.
    Tag {
        start: usize,
        end_tag: bool,
        /// Next byte to examine.
        scan: usize,
        /// The open quote, or 0.
        quote: u8,
    },
    Var(VarScanner),
    /// Inside `esi:remove` (whose start tag began at `start`).
    Remove {
        start: usize,
    },
}

/// Resumable lexer state (the buffer itself belongs to the compiler).
#[derive(Debug)]
pub(crate) struct Lexer {
    state: State,
    /// Everything before `pos` has been examined.
    pos: usize,
    /// Start of literal text not yet reported to the builder.
    text_start: usize,
    /// `esi:` (the common part of start and end tags).
    tags: Seek,
    markers: Seek,
}

/// A substring search that remembers what it already knows about the
/// buffer, so that asking again after more input (or after handling the
/// previous hit) does not rescan: every byte is searched about once.
#[derive(Debug)]
struct Seek {
    finder: Finder<'static>,
    /// No occurrence starts in `lo..hi`; with `hit`, one starts at `hi`.
    lo: usize,
    hi: usize,
    hit: bool,
}

impl Seek {
    fn new(needle: &'static [u8]) -> Self {
        Seek {
            finder: Finder::new(needle),
            lo: 0,
            hi: 0,
            hit: false,
        }
    }

    /// The first occurrence starting at or after `from`.
    fn next(&mut self, src: &[u8], from: usize) -> Option<usize> {
        let (lo, start) = if (self.lo..=self.hi).contains(&from) {
            if self.hit {
                return Some(self.hi);
            }
            (self.lo, self.hi)
        } else {
            (from, from)
        };
        self.lo = lo;
        match self.finder.find(&src[start.min(src.len())..]) {
            Some(k) => {
                self.hi = start + k;
                self.hit = true;
                Some(self.hi)
            }
            None => {
                // An occurrence may still start in the last `len - 1` bytes.
                let partial = self.finder.needle().len() - 1;
                self.hi = src.len().saturating_sub(partial).max(start);
                self.hit = false;
                None
            }
        }
    }
}

/// Whether a step made progress or needs more input.
enum Step {
    Go,
    Wait,
}

enum Class {
    Text,
    NeedMore,
    StartTag,
    EndTag,
    Marker,
}

/// What the bytes at a `<` are.
fn classify(rest: &[u8], eof: bool) -> Class {
    const START: &[u8] = b"<esi:";
    const END: &[u8] = b"</esi:";
    const MARKER: &[u8] = b"<!--esi";
    for (pat, class) in [(START, Class::StartTag), (END, Class::EndTag)] {
        if rest.starts_with(pat) {
            return match rest.get(pat.len()) {
                Some(c) if c.is_ascii_alphabetic() => class,
                Some(_) => Class::Text,
                None if eof => Class::Text,
                None => Class::NeedMore,
            };
        }
    }
    if rest.starts_with(MARKER) {
        return Class::Marker;
    }
    let partial = |p: &[u8]| rest.len() < p.len() && p.starts_with(rest);
    if !eof && (partial(START) || partial(END) || partial(MARKER)) {
        Class::NeedMore
    } else {
        Class::Text
    }
}

enum RemoveEnd {
    Yes(usize),
    No,
    NeedMore,
}

/// Whether `rest` (starting at a `<`) is `</esi:remove` + whitespace + `>`.
fn remove_end(rest: &[u8], eof: bool) -> RemoveEnd {
    const PAT: &[u8] = b"</esi:remove";
    let n = PAT.len().min(rest.len());
    if rest[..n] != PAT[..n] {
        return RemoveEnd::No;
    }
    let mut i = n;
    if n == PAT.len() {
        while i < rest.len() && i - n <= MAX_REMOVE_END_SPACE {
            match rest[i] {
                b'>' => return RemoveEnd::Yes(i + 1),
                c if c.is_ascii_whitespace() => i += 1,
                _ => return RemoveEnd::No,
            }
        }
        if i - n > MAX_REMOVE_END_SPACE {
            return RemoveEnd::No;
        }
    }
    if eof {
        RemoveEnd::No
    } else {
        RemoveEnd::NeedMore
    }
}

impl Lexer {
    pub(crate) fn new() -> Self {
        Lexer {
            state: State::Text,
            pos: 0,
            text_start: 0,
            tags: Seek::new(b"esi:"),
            markers: Seek::new(b"<!--esi"),
        }
    }

    /// Lexes as far as `src` allows. With `eof`, the buffer is complete:
    /// nothing is left pending afterwards.
    pub(crate) fn run(&mut self, src: &[u8], b: &mut Builder, eof: bool) {
        loop {
            let step = match self.state {
                State::Text => self.text(src, b, eof),
                State::Tag { .. } => self.tag(src, b, eof),
                State::Var(_) => self.var(src, b, eof),
                State::Remove { start } => self.remove(src, b, eof, start),
            };
            if let Step::Wait = step {
                break;
            }
        }
        if eof {
            self.flush(src.len(), b);
        }
    }

    fn flush(&mut self, upto: usize, b: &mut Builder) {
        if self.text_start < upto {
            b.text(self.text_start..upto);
        }
        self.text_start = upto;
    }

    /// Continue as text right after a construct that ended before `at`.
    fn resume_text(&mut self, at: usize) {
        self.state = State::Text;
        self.pos = at;
        self.text_start = at;
    }

    /// Where the next `<esi:`, `</esi:` or `<!--esi` at or after `pos`
    /// might start (`classify` confirms), or `None` if none can start
    /// before the last few bytes of the buffer.
    fn next_construct(&mut self, src: &[u8]) -> Option<usize> {
        let mut from = self.pos;
        let tag = loop {
            let Some(h) = self.tags.next(src, from) else {
                break None;
            };
            let start = if h >= 1 && src[h - 1] == b'<' {
                Some(h - 1)
            } else if h >= 2 && &src[h - 2..h] == b"</" {
                Some(h - 2)
            } else {
                None
            };
            match start {
                Some(s) if s >= self.pos => break Some(s),
                _ => from = h + 1,
            }
        };
        let marker = self.markers.next(src, self.pos);
        match (tag, marker) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (t, m) => t.or(m),
        }
    }

    fn text(&mut self, src: &[u8], b: &mut Builder, eof: bool) -> Step {
        let hay = &src[self.pos..];
        let found = match (b.in_vars(), b.in_marker()) {
            // Plain markup, the common case: `<` is everywhere in HTML, so
            // look for the rarer `esi:` and `<!--esi` instead.
            (false, false) => {
                let Some(at) = self.next_construct(src) else {
                    // A construct may begin in the last 6 bytes (`<!--esi` is 7).
                    self.pos = if eof {
                        src.len()
                    } else {
                        src.len().saturating_sub(6).max(self.pos)
                    };
                    return Step::Wait;
                };
                Some(at - self.pos)
            }
            (true, false) => memchr2(b'<', b'$', hay),
            (false, true) => memchr2(b'<', b'-', hay),
            (true, true) => memchr3(b'<', b'$', b'-', hay),
        };
        let Some(i) = found else {
            self.pos = src.len();
            return Step::Wait;
        };
        let at = self.pos + i;
        let rest = &src[at..];
        match rest[0] {
            b'<' => match classify(rest, eof) {
                Class::NeedMore => {
                    self.pos = at;
                    return Step::Wait;
                }
                Class::Text => self.pos = at + 1,
                Class::StartTag | Class::EndTag => {
                    let end_tag = rest[1] == b'/';
                    self.flush(at, b);
                    let scan = at + if end_tag { 6 } else { 5 };
                    self.state = State::Tag {
                        start: at,
                        end_tag,
                        scan,
                        quote: 0,
                    };
                    self.pos = scan;
                }
                Class::Marker => {
                    self.flush(at, b);
                    b.marker_open(at);
                    self.resume_text(at + 7);
                }
            },
            b'$' => match rest.get(1) {
                Some(b'(') => {
                    self.flush(at, b);
                    self.state = State::Var(VarScanner::new(at));
                    self.pos = at + 2;
                }
                None if !eof => {
                    self.pos = at;
                    return Step::Wait;
                }
                _ => self.pos = at + 1,
            },
            // `-`, only looked for inside a marker.
            _ => {
                if rest.starts_with(b"-->") {
                    self.flush(at, b);
                    b.marker_close(at);
                    self.resume_text(at + 3);
                } else if !eof && rest.len() < 3 && b"-->".starts_with(rest) {
                    self.pos = at;
                    return Step::Wait;
                } else {
                    self.pos = at + 1;
                }
            }
        }
        Step::Go
    }

    fn tag(&mut self, src: &[u8], b: &mut Builder, eof: bool) -> Step {
        let State::Tag {
            start,
            end_tag,
            scan,
            quote,
        } = &mut self.state
        else {
            return Step::Go;
        };
        let (start, end_tag) = (*start, *end_tag);
        let mut i = *scan;
        let mut close = None;
        while i < src.len() {
            if *quote != 0 {
                match memchr(*quote, &src[i..]) {
                    Some(k) => {
                        i += k + 1;
                        *quote = 0;
                    }
                    None => i = src.len(),
                }
            } else {
                match memchr3(b'>', b'"', b'\'', &src[i..]) {
                    Some(k) if src[i + k] == b'>' => {
                        close = Some(i + k);
                        break;
                    }
                    Some(k) => {
                        *quote = src[i + k];
                        i += k + 1;
                    }
                    None => i = src.len(),
                }
            }
        }
        *scan = i;
        let Some(gt) = close else {
            if !eof {
                self.pos = src.len();
                return Step::Wait;
            }
            b.warn(
                start,
                "ESI tag not closed by `>` before the end of input; output as text",
            );
            // `text_start` is `start`: the flush at end of input emits it.
            self.state = State::Text;
            self.pos = src.len();
            return Step::Wait;
        };
        let tag = parse_tag(src, start, gt, end_tag);
        self.resume_text(gt + 1);
        if end_tag {
            b.end_tag(tag.name, start);
        } else if b.start_tag(&tag) {
            self.state = State::Remove { start };
        }
        Step::Go
    }

    fn var(&mut self, src: &[u8], b: &mut Builder, eof: bool) -> Step {
        let State::Var(sc) = &mut self.state else {
            return Step::Go;
        };
        let start = sc.start();
        match sc.scan(src) {
            Scan::Done(end) => {
                let var = sc.build(src);
                b.var(var, start);
                self.resume_text(end + 1);
            }
            Scan::More if !eof => {
                self.pos = src.len();
                return Step::Wait;
            }
            // Not a reference: `$(` is text (`text_start` is still `start`).
            Scan::Fail | Scan::More => {
                self.state = State::Text;
                self.pos = start + 2;
            }
        }
        Step::Go
    }

    fn remove(&mut self, src: &[u8], b: &mut Builder, eof: bool, start: usize) -> Step {
        let mut i = self.pos;
        while let Some(k) = memchr(b'<', &src[i..]) {
            let at = i + k;
            match remove_end(&src[at..], eof) {
                RemoveEnd::Yes(len) => {
                    self.resume_text(at + len);
                    return Step::Go;
                }
                RemoveEnd::NeedMore => {
                    self.pos = at;
                    return Step::Wait;
                }
                RemoveEnd::No => i = at + 1,
            }
        }
        if eof {
            b.warn(
                start,
                "`esi:remove` not closed; the rest of the input is dropped",
            );
            self.resume_text(src.len());
        } else {
            self.pos = src.len();
        }
        Step::Wait
    }
}

/// A parsed ESI tag. Attributes are parsed on lookup: a tag has few and
/// the compiler asks for at most three, so this saves an allocation per tag.
#[derive(Debug)]
pub(crate) struct Tag<'a> {
    /// Element name without the `esi:` prefix.
    pub(crate) name: &'a [u8],
    /// Everything after the name, up to (not including) the `>`.
    rest: &'a [u8],
    pub(crate) self_closing: bool,
    /// Offset of the `<`.
    pub(crate) start: usize,
}

impl<'a> Tag<'a> {
    /// The decoded value of the first attribute called `name`.
    pub(crate) fn attr(&self, name: &[u8]) -> Option<Cow<'a, [u8]>> {
        Attrs {
            s: self.rest,
            i: 0,
            last_slash: None,
        }
        .find(|(n, _)| *n == name)
        .map(|(_, v)| decode_entities(v))
    }
}

/// Iterates over `(name, raw value)` pairs, leniently: unquoted values,
/// valueless attributes, stray `=` and `/` are all accepted.
struct Attrs<'a> {
    s: &'a [u8],
    i: usize,
    /// The last `/` skipped between attributes (a `/` inside an unquoted
    /// value belongs to the value, as in HTML).
    last_slash: Option<usize>,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let n = s.len();
        let mut i = self.i;
        loop {
            while i < n && (s[i].is_ascii_whitespace() || s[i] == b'/' || s[i] == b'=') {
                if s[i] == b'/' {
                    self.last_slash = Some(i);
                }
                i += 1;
            }
            if i >= n {
                self.i = n;
                return None;
            }
            let name_start = i;
            while i < n && !s[i].is_ascii_whitespace() && s[i] != b'=' && s[i] != b'/' {
                i += 1;
            }
            let name = &s[name_start..i];
            while i < n && s[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value: &[u8] = b"";
            if i < n && s[i] == b'=' {
                i += 1;
                while i < n && s[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i < n && (s[i] == b'"' || s[i] == b'\'') {
                    let vstart = i + 1;
                    let vend = memchr(s[i], &s[vstart..]).map_or(n, |k| vstart + k);
                    value = &s[vstart..vend];
                    i = (vend + 1).min(n);
                } else {
                    let vstart = i;
                    while i < n && !s[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    value = &s[vstart..i];
                }
            }
            if !name.is_empty() {
                self.i = i;
                return Some((name, value));
            }
        }
    }
}

/// Parses `src[start..=gt]`, a tag whose `>` is at `gt`.
pub(crate) fn parse_tag(src: &[u8], start: usize, gt: usize, end_tag: bool) -> Tag<'_> {
    let inner = &src[start + if end_tag { 6 } else { 5 }..gt];
    let name_len = inner
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
        .unwrap_or(inner.len());
    let rest = &inner[name_len..];
    let mut attrs = Attrs {
        s: rest,
        i: 0,
        last_slash: None,
    };
    attrs.by_ref().for_each(drop);
    // `<esi:x … />`: the last byte before `>`, spaces aside, is a bare `/`.
    let end = rest.trim_ascii_end().len();
    let self_closing = attrs.last_slash.is_some_and(|p| p + 1 == end);
    Tag {
        name: &inner[..name_len],
        rest,
        self_closing,
        start,
    }
}

/// Decodes the XML entities of an attribute value.
pub(crate) fn decode_entities(v: &[u8]) -> Cow<'_, [u8]> {
    if memchr(b'&', v).is_none() {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(k) = memchr(b'&', &v[i..]) {
        let at = i + k;
        out.extend_from_slice(&v[i..at]);
        match entity(&v[at..]) {
            Some((ch, len)) => {
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i = at + len;
            }
            None => {
                out.push(b'&');
                i = at + 1;
            }
        }
    }
    out.extend_from_slice(&v[i..]);
    Cow::Owned(out)
}

/// The entity at the start of `s` (which begins with `&`) and its length.
fn entity(s: &[u8]) -> Option<(char, usize)> {
    let semi = s.iter().take(12).position(|&c| c == b';')?;
    let body = &s[1..semi];
    let ch = match body {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        _ => {
            let num = body.strip_prefix(b"#")?;
            let (digits, radix) = match num.split_first() {
                Some((b'x' | b'X', hex)) => (hex, 16),
                _ => (num, 10),
            };
            if digits.is_empty() || !digits.iter().all(|c| char::from(*c).is_digit(radix)) {
                return None;
            }
            let n = u32::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()?;
            if n == 0 {
                return None;
            }
            char::from_u32(n)?
        }
    };
    Some((ch, semi + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(t.name, b"include");
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
        assert_eq!(t.name, b"vars");
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
        assert_eq!(t.name, b"vars");
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
}
