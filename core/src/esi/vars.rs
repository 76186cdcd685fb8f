//! ESI variables: the `$(NAME{key}|default)` reference syntax, looking a
//! reference up in the request, and escaping the value for where it lands.
//!
//! # Syntax
//!
//! `$(` NAME [ `{` key `}` ] [ `|` default ] `)`, where NAME is
//! `[A-Za-z0-9_]+`, the key is any run of bytes other than `}` and the
//! forbidden bytes below, and the default is either `'quoted'` (may contain
//! `)`, `|`, spaces) or bare (up to the `)`, trimmed). Spaces and tabs are
//! allowed around `|` and before `)`.
//!
//! The bytes `$ < > ( \r \n` may not appear inside a reference, and a
//! reference is at most [`MAX_VAR_LEN`] bytes long. Anything that breaks
//! these rules is not a reference: the `$(` stays literal text. The
//! restriction is what keeps the streaming lexer linear: a failed reference
//! never contains the start of another one, so its bytes are rescanned as
//! text at most once.
//!
//! # Values
//!
//! Unknown variable names and keys that do not apply are *undefined*; an
//! undefined or empty value is replaced by the default (itself treated
//! exactly like a value, including escaping), or the empty string.
//! See the [module documentation of `esi`](super) for the variable table.

use std::borrow::Cow;
use std::num::NonZeroU32;

use super::{RequestInputs, RequestVars};

/// Longest variable reference accepted, `$(` to `)` inclusive.
pub(crate) const MAX_VAR_LEN: usize = 1024;

/// The variables this processor knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarName {
    Cookie,
    QueryString,
    Host,
    Referer,
    UserAgent,
    AcceptLanguage,
    /// Any other name: always undefined.
    Unknown,
}

impl VarName {
    fn from_bytes(name: &[u8]) -> VarName {
        match name {
            b"HTTP_COOKIE" => VarName::Cookie,
            b"QUERY_STRING" => VarName::QueryString,
            b"HTTP_HOST" => VarName::Host,
            b"HTTP_REFERER" => VarName::Referer,
            b"HTTP_USER_AGENT" => VarName::UserAgent,
            b"HTTP_ACCEPT_LANGUAGE" => VarName::AcceptLanguage,
            _ => VarName::Unknown,
        }
    }
}

/// The text a template keeps besides its source (variable keys and
/// defaults, URL text of include attributes, literals of tests), all in one
/// string: a [`Str`] is a range of it. One buffer rather than a `String`
/// per piece saves an allocation and a free per piece, and is what the
/// template's memory accounting counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Strs(String);

/// A piece of a [`Strs`]. Offsets are `u32` to keep nodes small; a
/// template's text is far below 4 GiB (pages are capped well below). The
/// end is kept plus one, so that an `Option<Str>` is no larger than a
/// `Str`: a variable reference has three of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Str {
    start: u32,
    end_plus_one: NonZeroU32,
}

fn offset(n: usize) -> u32 {
    // Saturates rather than wraps: out-of-range pieces read as empty.
    u32::try_from(n).unwrap_or(u32::MAX).min(u32::MAX - 1)
}

impl Strs {
    /// Appends `s` and returns its piece.
    pub(crate) fn push(&mut self, s: &str) -> Str {
        let start = self.mark();
        self.0.push_str(s);
        self.since(start)
    }

    /// Where the next appended text starts, for [`since`](Self::since).
    pub(crate) fn mark(&self) -> u32 {
        offset(self.0.len())
    }

    /// Appends `s` to the piece being built since a [`mark`](Self::mark).
    pub(crate) fn extend(&mut self, s: &str) {
        self.0.push_str(s);
    }

    /// The text appended since `mark`.
    pub(crate) fn since(&self, mark: u32) -> Str {
        Str {
            start: mark,
            end_plus_one: NonZeroU32::MIN.saturating_add(self.mark()),
        }
    }

    /// Drops the text appended since `mark` (what a failed parse added).
    pub(crate) fn truncate(&mut self, mark: u32) {
        let at = mark as usize;
        if self.0.is_char_boundary(at) {
            self.0.truncate(at);
        }
    }

    /// The text of `piece`.
    pub(crate) fn get(&self, piece: Str) -> &str {
        self.0
            .get(piece.start as usize..piece.end_plus_one.get() as usize - 1)
            .unwrap_or("")
    }

    /// Makes room for `n` more bytes.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }

    /// Bytes allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

/// A parsed `$(…)` reference. Its texts are pieces of the template's
/// [`Strs`], so a reference owns no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VarRef {
    pub(crate) name: VarName,
    /// The name as written when it is unknown (for warnings).
    pub(crate) unknown_name: Option<Str>,
    pub(crate) key: Option<Str>,
    pub(crate) default: Option<Str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Right after `$(`: the first name byte is required.
    Start,
    Name,
    Key,
    AfterKey,
    /// After `|`, possibly after whitespace.
    DefaultStart,
    Quoted,
    AfterQuoted,
    Bare,
}

/// Outcome of feeding bytes to a [`VarScanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The reference ends at this absolute offset (the `)`).
    Done(usize),
    /// Not a reference.
    Fail,
    /// All given bytes consumed; the reference is still open.
    More,
}

/// A resumable recogniser for one variable reference.
///
/// It remembers where it stopped, so that a reference split over many
/// chunks is scanned once in total, not once per chunk. Offsets are
/// absolute positions in the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarScanner {
    /// Offset of the `$`.
    start: usize,
    /// Next offset to look at.
    at: usize,
    state: State,
    name_end: usize,
    key: Option<(usize, usize)>,
    default: Option<(usize, usize)>,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_forbidden(b: u8) -> bool {
    matches!(b, b'$' | b'<' | b'>' | b'(' | b'\r' | b'\n')
}

/// Byte classes for [`VarScanner::scan`]'s inner loop, one table lookup
/// per byte: a name byte, or a byte that ends a run of key, quoted default
/// or bare default (a forbidden byte, or that state's delimiters).
const NAME: u8 = 1;
const KEY_STOP: u8 = 2;
const QUOTED_STOP: u8 = 4;
const BARE_STOP: u8 = 8;

static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b.is_ascii_alphanumeric() || b == b'_' {
            c |= NAME;
        }
        if matches!(b, b'$' | b'<' | b'>' | b'(' | b'\r' | b'\n') {
            c |= KEY_STOP | QUOTED_STOP | BARE_STOP;
        }
        if matches!(b, b'{' | b'}' | b')') {
            c |= KEY_STOP;
        }
        if b == b'\'' {
            c |= QUOTED_STOP | BARE_STOP;
        }
        if b == b')' {
            c |= BARE_STOP;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The length of the run at the start of `bytes` that leaves the scanner
/// in `state` without a transition.
fn plain_run(state: State, bytes: &[u8]) -> usize {
    // (mask, wanted): a byte continues the run while `class & mask == wanted`.
    let (mask, wanted) = match state {
        State::Name => (NAME, NAME),
        State::Key => (KEY_STOP, 0),
        State::Quoted => (QUOTED_STOP, 0),
        State::Bare => (BARE_STOP, 0),
        _ => return 0,
    };
    bytes
        .iter()
        .position(|&b| CLASSES[usize::from(b)] & mask != wanted)
        .unwrap_or(bytes.len())
}

impl VarScanner {
    /// A scanner for a reference whose `$(` starts at `start`.
    pub(crate) fn new(start: usize) -> Self {
        VarScanner {
            start,
            at: start + 2,
            state: State::Start,
            name_end: start + 2,
            key: None,
            default: None,
        }
    }

    /// Offset of the reference's `$`.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// Continues over `buf[self.at..]`.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Scan {
        // Bytes past the longest reference are never looked at.
        let limit = buf.len().min(self.start + MAX_VAR_LEN);
        while self.at < limit {
            // Runs of bytes that change nothing in this state are skipped
            // in a tight loop (names, keys and defaults are runs of them).
            self.at += plain_run(self.state, &buf[self.at..limit]);
            if self.at >= limit {
                break;
            }
            let i = self.at;
            let b = buf[i];
            self.at += 1;
            if is_forbidden(b) {
                return Scan::Fail;
            }
            match self.state {
                State::Start if is_name_byte(b) => self.state = State::Name,
                State::Start => return Scan::Fail,
                State::Name => match b {
                    _ if is_name_byte(b) => {}
                    b'{' => {
                        self.name_end = i;
                        self.key = Some((i + 1, i + 1));
                        self.state = State::Key;
                    }
                    b'|' => {
                        self.name_end = i;
                        self.state = State::DefaultStart;
                    }
                    b')' => {
                        self.name_end = i;
                        return Scan::Done(i);
                    }
                    b' ' | b'\t' => {
                        self.name_end = i;
                        self.state = State::AfterKey;
                    }
                    _ => return Scan::Fail,
                },
                State::Key => match b {
                    b'}' => {
                        if let Some(k) = &mut self.key {
                            k.1 = i;
                        }
                        self.state = State::AfterKey;
                    }
                    b'{' | b')' => return Scan::Fail,
                    _ => {}
                },
                State::AfterKey => match b {
                    b' ' | b'\t' => {}
                    b'|' => self.state = State::DefaultStart,
                    b')' => return Scan::Done(i),
                    _ => return Scan::Fail,
                },
                State::DefaultStart => match b {
                    b' ' | b'\t' => {}
                    b'\'' => {
                        self.default = Some((i + 1, i + 1));
                        self.state = State::Quoted;
                    }
                    b')' => {
                        self.default = Some((i, i));
                        return Scan::Done(i);
                    }
                    _ => {
                        self.default = Some((i, i + 1));
                        self.state = State::Bare;
                    }
                },
                State::Quoted => {
                    if b == b'\'' {
                        if let Some(d) = &mut self.default {
                            d.1 = i;
                        }
                        self.state = State::AfterQuoted;
                    }
                }
                State::AfterQuoted => match b {
                    b' ' | b'\t' => {}
                    b')' => return Scan::Done(i),
                    _ => return Scan::Fail,
                },
                State::Bare => match b {
                    b')' => {
                        if let Some(d) = &mut self.default {
                            d.1 = i;
                        }
                        return Scan::Done(i);
                    }
                    b'\'' => return Scan::Fail,
                    _ => {}
                },
            }
        }
        if self.at < buf.len() {
            // Stopped by the length limit, not by the end of the input.
            return Scan::Fail;
        }
        Scan::More
    }

    /// Builds the reference after [`Scan::Done`]; `buf` is the same buffer,
    /// its texts go to `strs`.
    pub(crate) fn build(&self, buf: &[u8], strs: &mut Strs) -> VarRef {
        let mut text = |(a, b): (usize, usize), trim: bool| {
            let s = lossy(&buf[a..b]);
            strs.push(if trim { s.trim() } else { &s })
        };
        let raw = &buf[self.start + 2..self.name_end];
        let default = self.default.map(|d| text(d, self.state == State::Bare));
        let key = self.key.map(|k| text(k, false));
        let name = VarName::from_bytes(raw);
        VarRef {
            name,
            unknown_name: (name == VarName::Unknown).then(|| strs.push(&lossy(raw))),
            key,
            default,
        }
    }
}

/// `b` as text, invalid UTF-8 replaced by U+FFFD; valid text (the usual
/// case) is validated in one pass rather than chunk by chunk.
pub(crate) fn lossy(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Parses a complete reference starting at `buf[start]` (which must be the
/// `$` of `$(`). Returns it and the offset just past its `)`.
pub(crate) fn parse_var_at(buf: &[u8], start: usize, strs: &mut Strs) -> Option<(VarRef, usize)> {
    if buf.get(start..start + 2) != Some(b"$(") {
        return None;
    }
    let mut sc = VarScanner::new(start);
    match sc.scan(buf) {
        Scan::Done(end) => Some((sc.build(buf, strs), end + 1)),
        Scan::Fail | Scan::More => None,
    }
}

impl VarRef {
    /// The value for this request: undefined or empty values fall back to
    /// the default, and then to the empty string.
    /// `strs` holds the template's texts.
    pub(crate) fn value<'a>(&self, vars: &'a RequestVars, strs: &'a Strs) -> Cow<'a, str> {
        match lookup(self, vars, strs) {
            Some(v) if !v.is_empty() => v,
            _ => Cow::Borrowed(self.default.map_or("", |d| strs.get(d))),
        }
    }

    /// Appends the value HTML-escaped, for markup (`esi:vars` content).
    pub(crate) fn write_markup(&self, vars: &RequestVars, strs: &Strs, out: &mut Vec<u8>) {
        html_escape(&self.value(vars, strs), out);
    }

    /// Appends the value as URL text, for an include `src`/`alt`: escaped
    /// only where it could change the URL's structure (see the `esi` module
    /// doc, "Escaping"). `in_query` says whether the text rendered before it
    /// already has a `?` or `#`. Dot segments and absolute results are
    /// handled on the whole rendered value, by the caller.
    pub(crate) fn write_url(
        &self,
        vars: &RequestVars,
        strs: &Strs,
        in_query: bool,
        out: &mut String,
    ) {
        let value = self.value(vars, strs);
        match (self.name, &self.key) {
            (VarName::Host, None) => percent_encode(value.as_bytes(), keep_in_host, out),
            (VarName::QueryString, None) => url_text_encode(&value, in_query, true, out),
            _ => url_text_encode(&value, in_query, false, out),
        }
    }

    /// Which request input a lookup of this reference reads, if any.
    pub(crate) fn input(&self) -> RequestInputs {
        let mut i = RequestInputs::default();
        match self.name {
            VarName::Cookie => i.cookie = true,
            VarName::QueryString => i.query_string = true,
            VarName::Host => i.host = true,
            VarName::Referer => i.referer = true,
            VarName::UserAgent => i.user_agent = true,
            VarName::AcceptLanguage => i.accept_language = true,
            VarName::Unknown => {}
        }
        i
    }
}

fn lookup<'a>(var: &VarRef, vars: &'a RequestVars, strs: &Strs) -> Option<Cow<'a, str>> {
    let key = var.key.map(|k| strs.get(k));
    match (var.name, key) {
        (VarName::Cookie, None) => vars.cookie.as_deref().map(Cow::Borrowed),
        (VarName::Cookie, Some(k)) => cookie_value(vars.cookie.as_deref()?, k).map(Cow::Borrowed),
        (VarName::QueryString, None) => vars.query_string.as_deref().map(Cow::Borrowed),
        (VarName::QueryString, Some(k)) => query_value(vars.query_string.as_deref()?, k),
        (VarName::Host, None) => vars.host.as_deref().map(Cow::Borrowed),
        (VarName::Referer, None) => vars.referer.as_deref().map(Cow::Borrowed),
        (VarName::UserAgent, None) => vars.user_agent.as_deref().map(Cow::Borrowed),
        (VarName::UserAgent, Some(k)) => {
            let ua = vars.user_agent.as_deref()?;
            match k {
                "browser" => Some(Cow::Borrowed(browser(ua))),
                "os" => Some(Cow::Borrowed(os(ua))),
                "version" => browser_version(ua).map(Cow::Borrowed),
                _ => None,
            }
        }
        (VarName::AcceptLanguage, None) => vars.accept_language.as_deref().map(Cow::Borrowed),
        (VarName::AcceptLanguage, Some(k)) => {
            let yes = vars
                .accept_language
                .as_deref()
                .is_some_and(|h| accepts_language(h, k));
            Some(Cow::Borrowed(if yes { "true" } else { "false" }))
        }
        // Keys on scalar variables, and unknown names.
        _ => None,
    }
}

/// The value of cookie `name` in a `Cookie` header: first occurrence,
/// whitespace trimmed, one pair of surrounding double quotes removed
/// (RFC 6265 allows a quoted cookie value).
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim();
        Some(
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v),
        )
    })
}

/// The percent-decoded value of the first query parameter named `name`
/// (names are compared after decoding). `+` means space.
pub(crate) fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v))
    })
}

/// `application/x-www-form-urlencoded` decoding; malformed `%` sequences are
/// kept as they are, invalid UTF-8 becomes U+FFFD.
pub(crate) fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| {
                    let hi = (h[0] as char).to_digit(16)?;
                    let lo = (h[1] as char).to_digit(16)?;
                    u8::try_from(hi * 16 + lo).ok()
                });
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `$(HTTP_USER_AGENT{browser})`: `MSIE` for Internet Explorer (including
/// IE 11, which says `Trident/` instead of `MSIE`), `MOZILLA` for anything
/// else that starts with `Mozilla` (all current browsers), `OTHER` otherwise.
pub(crate) fn browser(ua: &str) -> &'static str {
    if ua.contains("MSIE") || ua.contains("Trident/") {
        "MSIE"
    } else if ua.starts_with("Mozilla") {
        "MOZILLA"
    } else {
        "OTHER"
    }
}

/// `$(HTTP_USER_AGENT{version})`: for MSIE the number after `MSIE ` (or
/// after `rv:` for IE 11), otherwise the version of the first product token
/// (`Mozilla/5.0` → `5.0`). Undefined when there is none.
pub(crate) fn browser_version(ua: &str) -> Option<&str> {
    let token_end = |s: &str| s.find([';', ')', ' ']).unwrap_or(s.len());
    let version = if let Some(i) = ua.find("MSIE ") {
        let s = &ua[i + 5..];
        &s[..token_end(s)]
    } else if let (true, Some(i)) = (ua.contains("Trident/"), ua.find("rv:")) {
        let s = &ua[i + 3..];
        &s[..token_end(s)]
    } else {
        let first = ua.split_whitespace().next()?;
        first.split_once('/')?.1
    };
    (!version.is_empty()).then_some(version)
}

/// `$(HTTP_USER_AGENT{os})`: `WIN`, `MAC`, `UNIX` (X11, Linux including
/// Android, BSD, SunOS) or `OTHER`. Matching is case-sensitive so that
/// `Darwin` is not taken for `Win`.
pub(crate) fn os(ua: &str) -> &'static str {
    if ua.contains("Win") {
        "WIN"
    } else if ua.contains("Mac") {
        "MAC"
    } else if ["X11", "Linux", "Unix", "UNIX", "BSD", "SunOS"]
        .iter()
        .any(|m| ua.contains(m))
    {
        "UNIX"
    } else {
        "OTHER"
    }
}

/// Whether an `Accept-Language` header lists `lang`: case-insensitive, a
/// listed `en-GB` matches `en`, and entries with `q=0` do not count.
pub(crate) fn accepts_language(header: &str, lang: &str) -> bool {
    let lang = lang.trim();
    if lang.is_empty() {
        return false;
    }
    header.split(',').any(|item| {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused || tag.len() < lang.len() {
            return false;
        }
        // Bytes, not `str` slicing: `lang.len()` need not be a char boundary.
        let (head, rest) = tag.as_bytes().split_at(lang.len());
        head.eq_ignore_ascii_case(lang.as_bytes()) && rest.first().is_none_or(|&b| b == b'-')
    })
}

/// HTML-escapes `s` so that it can never form a tag or end an attribute.
pub(crate) fn html_escape(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut last = 0;
    for (i, &c) in b.iter().enumerate() {
        let rep: &[u8] = match c {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&b[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&b[last..]);
}

/// RFC 3986 unreserved characters: safe anywhere in a URL.
fn keep_in_component(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A host keeps its port and IPv6 brackets, but never `/`, `@` or `?`,
/// which would move the request to another host or path.
fn keep_in_host(b: u8) -> bool {
    keep_in_component(b) || matches!(b, b':' | b'[' | b']')
}

/// Appends a value as URL text: every byte is kept except those that could
/// change the URL's structure, which are percent-encoded:
///
/// - always: `"`, `'`, `<`, `>`, `\`, `#`, space and every other control
///   or whitespace byte, non-ASCII bytes (the UTF-8 is encoded), and a `%`
///   not followed by two hex digits (a well-formed `%XX` is kept);
/// - in the query (`in_query`), unless the value is the whole query string
///   (`whole_query`): also `&` and `?` (a value cannot start another
///   parameter) and `+` (a form decoder would read it as a space).
pub(crate) fn url_text_encode(s: &str, in_query: bool, whole_query: bool, out: &mut String) {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let encode = match c {
            b'"' | b'\'' | b'<' | b'>' | b'\\' | b'#' => true,
            0..=0x20 | 0x7F..=0xFF => true,
            b'%' => !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
            b'&' | b'?' | b'+' => in_query && !whole_query,
            _ => false,
        };
        if encode {
            push_escape(c, out);
        } else {
            // Only ASCII is kept, so a byte is a char.
            out.push(char::from(c));
        }
    }
}

/// Appends `%XX` for byte `b`.
pub(crate) fn push_escape(b: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Percent-encodes every byte of `s` for which `keep` is false.
pub(crate) fn percent_encode(s: &[u8], keep: fn(u8) -> bool, out: &mut String) {
    for &b in s {
        if keep(b) {
            out.push(char::from(b));
        } else {
            push_escape(b, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference `s`, with the texts it keeps.
    fn var(s: &str) -> Option<(VarRef, Strs)> {
        let mut strs = Strs::default();
        parse_var_at(s.as_bytes(), 0, &mut strs).map(|(v, end)| {
            assert_eq!(end, s.len(), "whole input consumed: {s}");
            (v, strs)
        })
    }

    fn key_default(s: &str) -> (Option<String>, Option<String>) {
        let (v, strs) = var(s).expect(s);
        let text = |p: Option<Str>| p.map(|p| strs.get(p).to_owned());
        (text(v.key), text(v.default))
    }

    fn req() -> RequestVars {
        RequestVars {
            host: Some("example.com:8080".into()),
            referer: Some("http://ref.example/a b".into()),
            user_agent: Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/120.0".into()),
            accept_language: Some("en-GB,fr;q=0.5,de;q=0".into()),
            cookie: Some("a=1; name = \"Jo\" ; evil=<esi:include src=/x/>; a=2".into()),
            query_string: Some("x=1&q=hello+world%21&e=%3Cb%3E&flag&x=2&bad=%zz".into()),
        }
    }

    fn val(s: &str) -> String {
        let (v, strs) = var(s).expect(s);
        v.value(&req(), &strs).into_owned()
    }

    #[test]
    fn syntax() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            var("$(HTTP_COOKIE{a}|'d f')").unwrap().0.name,
            VarName::Cookie
        );
        assert_eq!(
            key_default("$(HTTP_COOKIE{a}|'d f')"),
            (some("a"), some("d f"))
        );
        assert_eq!(
            key_default("$(QUERY_STRING| bare default )"),
            (None, some("bare default"))
        );
        assert_eq!(key_default("$(X|'a)b|c')").1, some("a)b|c"));
        assert_eq!(key_default("$(X|)").1, some(""));
        assert_eq!(key_default("$(X{k} | 'y' )").1, some("y"));
        let (lower, strs) = var("$(lower)").unwrap();
        assert_eq!(lower.name, VarName::Unknown);
        assert_eq!(lower.unknown_name.map(|n| strs.get(n)), Some("lower"));
        for bad in [
            "$()",
            "$( X)",
            "$(X",
            "$(X{a)",
            "$(X{a}b)",
            "$(X|'a)",
            "$(X|'a'b)",
            "$(X$(Y))",
            "$(X|a<b)",
            "$(X{a\nb})",
            "$(X|a'b)",
            "$(X-Y)",
            "(X)",
        ] {
            let mut strs = Strs::default();
            assert!(
                parse_var_at(bad.as_bytes(), 0, &mut strs).is_none(),
                "{bad:?}"
            );
        }
        let long = format!("$(X|'{}')", "a".repeat(MAX_VAR_LEN));
        assert!(parse_var_at(long.as_bytes(), 0, &mut Strs::default()).is_none());
    }

    /// The scanner's byte table says what the syntax rules say, for every
    /// byte.
    #[test]
    fn byte_classes_match_the_syntax() {
        for b in 0..=255u8 {
            let run = |state| plain_run(state, &[b]) == 1;
            assert_eq!(run(State::Name), is_name_byte(b), "{b}");
            assert_eq!(
                run(State::Key),
                !is_forbidden(b) && !matches!(b, b'{' | b'}' | b')'),
                "{b}"
            );
            assert_eq!(run(State::Quoted), !is_forbidden(b) && b != b'\'', "{b}");
            assert_eq!(
                run(State::Bare),
                !is_forbidden(b) && !matches!(b, b')' | b'\''),
                "{b}"
            );
            assert!(!run(State::Start) && !run(State::AfterKey), "{b}");
        }
    }

    #[test]
    fn scanner_resumes_across_chunks() {
        let s = b"..$(HTTP_COOKIE{a}|'x')..";
        for cut in 2..s.len() {
            let mut sc = VarScanner::new(2);
            let first = sc.scan(&s[..cut]);
            let r = if first == Scan::More {
                sc.scan(s)
            } else {
                first
            };
            assert_eq!(r, Scan::Done(22), "cut {cut}");
            let mut strs = Strs::default();
            let default = sc.build(s, &mut strs).default.map(|d| strs.get(d));
            assert_eq!(default, Some("x"));
        }
    }

    #[test]
    fn every_variable() {
        assert_eq!(val("$(HTTP_HOST)"), "example.com:8080");
        assert_eq!(val("$(HTTP_REFERER)"), "http://ref.example/a b");
        assert_eq!(val("$(HTTP_COOKIE{a})"), "1");
        assert_eq!(val("$(HTTP_COOKIE{name})"), "Jo");
        assert_eq!(val("$(HTTP_COOKIE{nope}|'dflt')"), "dflt");
        assert!(val("$(HTTP_COOKIE)").starts_with("a=1; name"));
        assert_eq!(val("$(QUERY_STRING{x})"), "1");
        assert_eq!(val("$(QUERY_STRING{q})"), "hello world!");
        assert_eq!(val("$(QUERY_STRING{e})"), "<b>");
        assert_eq!(val("$(QUERY_STRING{flag}|yes)"), "yes");
        assert_eq!(val("$(QUERY_STRING{bad})"), "%zz");
        assert_eq!(val("$(QUERY_STRING{none})"), "");
        assert!(val("$(QUERY_STRING)").starts_with("x=1&q="));
        assert_eq!(val("$(HTTP_USER_AGENT{browser})"), "MOZILLA");
        assert_eq!(val("$(HTTP_USER_AGENT{os})"), "WIN");
        assert_eq!(val("$(HTTP_USER_AGENT{version})"), "5.0");
        assert_eq!(val("$(HTTP_USER_AGENT{colour}|c)"), "c");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE{en})"), "true");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE{EN-gb})"), "true");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE{fr})"), "true");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE{de})"), "false");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE{e})"), "false");
        assert_eq!(val("$(HTTP_ACCEPT_LANGUAGE)"), "en-GB,fr;q=0.5,de;q=0");
        assert_eq!(val("$(HTTP_HOST{x}|'k')"), "k");
        assert_eq!(val("$(NO_SUCH_VAR)"), "");
        assert_eq!(val("$(NO_SUCH_VAR|'d')"), "d");
        let empty = RequestVars::default();
        let (v, strs) = var("$(HTTP_ACCEPT_LANGUAGE{en})").unwrap();
        assert_eq!(v.value(&empty, &strs), "false");
        let (v, strs) = var("$(HTTP_USER_AGENT{browser}|'none')").unwrap();
        assert_eq!(v.value(&empty, &strs), "none");
    }

    #[test]
    fn user_agents() {
        let table = [
            (
                "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)",
                "MSIE",
                "WIN",
                Some("6.0"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Trident/7.0; rv:11.0) like Gecko",
                "MSIE",
                "WIN",
                Some("11.0"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15",
                "MOZILLA",
                "MAC",
                Some("5.0"),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
                "MOZILLA",
                "UNIX",
                Some("5.0"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14) Chrome/120.0 Mobile",
                "MOZILLA",
                "UNIX",
                Some("5.0"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
                "MOZILLA",
                "MAC",
                Some("5.0"),
            ),
            ("curl/8.4.0", "OTHER", "OTHER", Some("8.4.0")),
            ("Opera/9.80 (Darwin) Presto", "OTHER", "OTHER", Some("9.80")),
            ("Lynx (FreeBSD)", "OTHER", "UNIX", None),
            ("", "OTHER", "OTHER", None),
        ];
        for (ua, b, o, v) in table {
            assert_eq!(browser(ua), b, "{ua}");
            assert_eq!(os(ua), o, "{ua}");
            assert_eq!(browser_version(ua), v, "{ua}");
        }
    }

    #[test]
    fn accept_language_edge_cases() {
        assert!(accepts_language("en", "en"));
        assert!(accepts_language(" fr-CA ; q=0.8 , en", "fr"));
        assert!(!accepts_language("english", "en"));
        assert!(!accepts_language("en;q=0.0", "en"));
        assert!(!accepts_language("en", ""));
        assert!(!accepts_language("é", "e"));
        assert!(accepts_language("zh-Hant-TW", "zh-hant"));
    }

    #[test]
    fn escaping() {
        let mut out = Vec::new();
        html_escape("<esi:include src=\"/x\"/> & 'q'", &mut out);
        assert_eq!(
            out,
            b"&lt;esi:include src=&quot;/x&quot;/&gt; &amp; &#39;q&#39;".to_vec()
        );
        let url = |s: &str, in_query: bool, whole: bool| {
            let mut out = String::new();
            url_text_encode(s, in_query, whole, &mut out);
            out
        };
        // Path: `/ ? & = : @ ; , + ~` kept; structure breakers encoded.
        assert_eq!(
            url("/a/b?c=d&e+f:g@h;i,~", false, false),
            "/a/b?c=d&e+f:g@h;i,~"
        );
        assert_eq!(
            url("a b\t\r\n\0\"'<>\\#é\u{7f}", false, false),
            "a%20b%09%0D%0A%00%22%27%3C%3E%5C%23%C3%A9%7F"
        );
        assert_eq!(url("%41%zz%4%", false, false), "%41%25zz%254%25");
        // Query: also `& ? +`, but `=` and `/` are kept.
        assert_eq!(url("a=1&b?c+d/e", true, false), "a=1%26b%3Fc%2Bd/e");
        // The whole query string keeps its parameters.
        assert_eq!(url("a=1&b=%20+c?d #", true, true), "a=1&b=%20+c?d%20%23");
        let mut out = String::new();
        percent_encode(b"[::1]:80/evil@x%", keep_in_host, &mut out);
        assert_eq!(out, "[::1]:80%2Fevil%40x%25");
    }

    #[test]
    fn escaped_by_sink() {
        let r = req();
        let (evil, strs) = var("$(HTTP_COOKIE{evil})").unwrap();
        let mut out = Vec::new();
        evil.write_markup(&r, &strs, &mut out);
        assert_eq!(out, b"&lt;esi:include src=/x/&gt;".to_vec());
        let url = |v: &str, in_query: bool| {
            let mut out = String::new();
            let (v, strs) = var(v).unwrap();
            v.write_url(&r, &strs, in_query, &mut out);
            out
        };
        assert_eq!(
            url("$(HTTP_COOKIE{evil})", false),
            "%3Cesi:include%20src=/x/%3E"
        );
        assert_eq!(url("$(HTTP_HOST)", false), "example.com:8080");
        assert_eq!(
            url("$(QUERY_STRING)", true),
            "x=1&q=hello+world%21&e=%3Cb%3E&flag&x=2&bad=%25zz"
        );
        assert_eq!(url("$(QUERY_STRING{q})", true), "hello%20world!");
        assert_eq!(url("$(QUERY_STRING{x})", true), "1");
        assert_eq!(
            url("$(HTTP_COOKIE{evil})", true),
            "%3Cesi:include%20src=/x/%3E"
        );
    }
}
