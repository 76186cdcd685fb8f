//! The streaming lexer: finds ESI constructs in a growing byte buffer and
//! reports them, as events, to a [`Sink`] (the compiler's tree builder).
//!
//! The lexer knows nothing about the tree: what little it must know about
//! the elements open around it (whether `$(` and `-->` mean anything, and
//! whether an element's content is raw) it asks the sink, as a [`Mode`] and
//! a [`Content`].
//!
//! # Chunk safety
//!
//! The compiler appends each chunk to one buffer and calls [`Lexer::run`].
//! The lexer never decides anything on a prefix that more bytes could
//! change: when a construct might continue past the end of the buffer it
//! stops and waits, and it resumes from a saved position with saved state
//! (quote state inside a tag, the variable scanner), so every byte is
//! examined a bounded number of times whatever the chunking. Text between
//! constructs is reported as byte ranges, only when a construct or the end
//! of input ends them, so any chunking yields the same events.
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
use std::ops::Range;
use std::sync::OnceLock;

use memchr::memmem::Finder;
use memchr::{memchr, memchr2, memchr3};

use super::vars::{Scan, Strs, VarRef, VarScanner};

/// What the lexer reports, in document order. Offsets index the whole
/// buffer (not the chunk).
pub(crate) trait Sink {
    /// Literal bytes `range` of the buffer. Never empty.
    fn text(&mut self, range: Range<usize>);
    /// An ESI start tag `<esi:NAME …>`; the answer says whether its
    /// content is to be lexed or skipped raw up to its end tag.
    fn start_tag(&mut self, tag: &Tag<'_>) -> Content;
    /// An ESI end tag `</esi:NAME>` starting at `offset`.
    fn end_tag(&mut self, name: Name<'_>, offset: usize);
    /// A variable reference `$(…)` starting at `offset` (only lexed in
    /// [`Mode::Vars`] or [`Mode::VarsInMarker`]).
    fn var(&mut self, var: VarRef, offset: usize);
    /// Where the texts of variable references are kept.
    fn strs(&mut self) -> &mut Strs;
    /// `<!--esi` at `offset`.
    fn marker_open(&mut self, offset: usize);
    /// `-->` at `offset` (only lexed in [`Mode::Marker`] or
    /// [`Mode::VarsInMarker`]).
    fn marker_close(&mut self, offset: usize);
    /// A problem the lexer found (and worked around).
    fn warning(&mut self, offset: usize, message: &'static str);
    /// How text is to be lexed from here on: asked before every search for
    /// the next construct, so an answer may change after any event.
    fn mode(&self) -> Mode;
}

/// How the sink wants text lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plain markup: only tags and `<!--esi` are constructs.
    Markup,
    /// Inside `esi:vars`: `$(` too.
    Vars,
    /// Inside `<!--esi`: `-->` too.
    Marker,
    /// Inside both: `$(` and `-->` too.
    VarsInMarker,
}

/// What follows a start tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Lexed as usual.
    Lexed,
    /// Skipped unlexed up to `</esi:remove>` (the content of `esi:remove`).
    Raw,
}

/// The ESI elements (the `NAME` of `<esi:NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    Include,
    Comment,
    Remove,
    Vars,
    Choose,
    When,
    Otherwise,
    Try,
    Attempt,
    Except,
    Inline,
}

impl Directive {
    /// Number of variants (they are numbered from 0).
    pub(crate) const COUNT: usize = Directive::Inline as usize + 1;

    fn from_name(name: &[u8]) -> Option<Directive> {
        Some(match name {
            b"include" => Directive::Include,
            b"comment" => Directive::Comment,
            b"remove" => Directive::Remove,
            b"vars" => Directive::Vars,
            b"choose" => Directive::Choose,
            b"when" => Directive::When,
            b"otherwise" => Directive::Otherwise,
            b"try" => Directive::Try,
            b"attempt" => Directive::Attempt,
            b"except" => Directive::Except,
            b"inline" => Directive::Inline,
            _ => return None,
        })
    }

    /// `esi:NAME`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Directive::Include => "esi:include",
            Directive::Comment => "esi:comment",
            Directive::Remove => "esi:remove",
            Directive::Vars => "esi:vars",
            Directive::Choose => "esi:choose",
            Directive::When => "esi:when",
            Directive::Otherwise => "esi:otherwise",
            Directive::Try => "esi:try",
            Directive::Attempt => "esi:attempt",
            Directive::Except => "esi:except",
            Directive::Inline => "esi:inline",
        }
    }
}

/// The name of an ESI tag: a known element, or the bytes of another name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name<'a> {
    Known(Directive),
    /// Not an ESI 1.0 element: the name after `esi:`.
    Unknown(&'a [u8]),
}

impl<'a> Name<'a> {
    fn new(name: &'a [u8]) -> Self {
        Directive::from_name(name).map_or(Name::Unknown(name), Name::Known)
    }
}

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
    finder: &'static Finder<'static>,
    /// No occurrence starts in `lo..hi`; with `hit`, one starts at `hi`.
    lo: usize,
    hi: usize,
    hit: bool,
}

impl Seek {
    fn new(finder: &'static Finder<'static>) -> Self {
        Seek {
            finder,
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

/// The searchers, built once per process: building one costs more than
/// scanning a small document.
fn finders() -> &'static (Finder<'static>, Finder<'static>) {
    static FINDERS: OnceLock<(Finder<'static>, Finder<'static>)> = OnceLock::new();
    FINDERS.get_or_init(|| (Finder::new(b"esi:"), Finder::new(b"<!--esi")))
}

/// Whether `body` may contain ESI at all (`esi:` or `<!--esi` somewhere):
/// a cheap check, with the same searchers, that lets bodies without ESI
/// skip compiling.
pub(crate) fn may_contain_esi(body: &[u8]) -> bool {
    let (tags, markers) = finders();
    tags.find(body).is_some() || markers.find(body).is_some()
}

impl Lexer {
    pub(crate) fn new() -> Self {
        let (tags, markers) = finders();
        Lexer {
            state: State::Text,
            pos: 0,
            text_start: 0,
            tags: Seek::new(tags),
            markers: Seek::new(markers),
        }
    }

    /// Lexes as far as `src` allows. With `eof`, the buffer is complete:
    /// nothing is left pending afterwards.
    pub(crate) fn run(&mut self, src: &[u8], sink: &mut impl Sink, eof: bool) {
        loop {
            let step = match self.state {
                State::Text => self.text(src, sink, eof),
                State::Tag { .. } => self.tag(src, sink, eof),
                State::Var(_) => self.var(src, sink, eof),
                State::Remove { start } => self.remove(src, sink, eof, start),
            };
            if let Step::Wait = step {
                break;
            }
        }
        if eof {
            self.flush(src.len(), sink);
        }
    }

    fn flush(&mut self, upto: usize, sink: &mut impl Sink) {
        if self.text_start < upto {
            sink.text(self.text_start..upto);
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
        // ESI blocks put tags next to each other (`</esi:when><esi:when …>`):
        // one right here needs no search. Nothing can start before it.
        let here = &src[self.pos..];
        if here.starts_with(b"<esi:") || here.starts_with(b"</esi:") {
            return Some(self.pos);
        }
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

    fn text(&mut self, src: &[u8], sink: &mut impl Sink, eof: bool) -> Step {
        let hay = &src[self.pos..];
        let found = match sink.mode() {
            // Plain markup, the common case: `<` is everywhere in HTML, so
            // look for the rarer `esi:` and `<!--esi` instead.
            Mode::Markup => {
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
            Mode::Vars => memchr2(b'<', b'$', hay),
            Mode::Marker => memchr2(b'<', b'-', hay),
            Mode::VarsInMarker => memchr3(b'<', b'$', b'-', hay),
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
                    self.flush(at, sink);
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
                    self.flush(at, sink);
                    sink.marker_open(at);
                    self.resume_text(at + 7);
                }
            },
            b'$' => match rest.get(1) {
                Some(b'(') => {
                    self.flush(at, sink);
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
                    self.flush(at, sink);
                    sink.marker_close(at);
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

    fn tag(&mut self, src: &[u8], sink: &mut impl Sink, eof: bool) -> Step {
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
            sink.warning(
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
            sink.end_tag(tag.name, start);
        } else if sink.start_tag(&tag) == Content::Raw {
            self.state = State::Remove { start };
        }
        Step::Go
    }

    fn var(&mut self, src: &[u8], sink: &mut impl Sink, eof: bool) -> Step {
        let State::Var(sc) = &mut self.state else {
            return Step::Go;
        };
        let start = sc.start();
        match sc.scan(src) {
            Scan::Done(end) => {
                let var = sc.build(src, sink.strs());
                sink.var(var, start);
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

    fn remove(&mut self, src: &[u8], sink: &mut impl Sink, eof: bool, start: usize) -> Step {
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
            sink.warning(
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

/// Attributes of a tag remembered by [`parse_tag`]; a tag with more is
/// parsed again on lookup. ESI tags have at most three that mean anything
/// (`src`, `alt`, `onerror`); every tag is built with room for this many.
const TAG_ATTRS: usize = 4;

/// A parsed ESI tag. The attributes are found in the one pass that decides
/// `self_closing` and kept as slices of the source (no allocation per tag);
/// values are decoded on lookup.
#[derive(Debug)]
pub(crate) struct Tag<'a> {
    /// Element name (after the `esi:` prefix).
    pub(crate) name: Name<'a>,
    /// Everything after the name, up to (not including) the `>`.
    rest: &'a [u8],
    /// The first `(name, raw value)` pairs, in order.
    attrs: [(&'a [u8], &'a [u8]); TAG_ATTRS],
    n_attrs: usize,
    /// Whether `attrs[..n_attrs]` are all of them.
    all_attrs: bool,
    pub(crate) self_closing: bool,
    /// Offset of the `<`.
    pub(crate) start: usize,
}

impl<'a> Tag<'a> {
    /// The decoded value of the first attribute called `name`.
    pub(crate) fn attr(&self, name: &[u8]) -> Option<Cow<'a, [u8]>> {
        let found = match self.attrs[..self.n_attrs].iter().find(|(n, _)| *n == name) {
            Some(&(_, v)) => Some(v),
            None if self.all_attrs => None,
            None => Attrs {
                s: self.rest,
                i: 0,
                last_slash: None,
            }
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v),
        };
        found.map(decode_entities)
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
    let mut kept = [(&[][..], &[][..]); TAG_ATTRS];
    let mut n_attrs = 0;
    let mut all_attrs = true;
    for a in attrs.by_ref() {
        match kept.get_mut(n_attrs) {
            Some(slot) => {
                *slot = a;
                n_attrs += 1;
            }
            None => all_attrs = false,
        }
    }
    // `<esi:x … />`: the last byte before `>`, spaces aside, is a bare `/`.
    let end = rest.trim_ascii_end().len();
    let self_closing = attrs.last_slash.is_some_and(|p| p + 1 == end);
    Tag {
        name: Name::new(&inner[..name_len]),
        rest,
        attrs: kept,
        n_attrs,
        all_attrs,
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
mod tests;
