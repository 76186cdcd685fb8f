//! URLs, include resolution and the origin allow-list.
//!
//! Every include `src` in a page ends up here before anything is fetched, so
//! this module is the SSRF boundary: an include may only reach an origin the
//! operator listed. That only works if the URL we check is the URL that gets
//! fetched, so the parser is deliberately much stricter than a browser's.
//! Wherever a WHATWG parser would quietly repair input (strip tabs and
//! newlines, turn `\` into `/`, accept `http:/host`, read `0x7f.1` as an IPv4
//! address, take `user@` off the front of a host), [`Url::parse`] refuses
//! instead, so two parsers can never disagree about which host is meant.
//!
//! What is accepted:
//!
//! - absolute `http` and `https` URLs only, scheme case-insensitive;
//! - host names of ASCII letters, digits, `-`, `_` and dots (lower-cased, one
//!   trailing dot dropped), or a canonical dotted-decimal IPv4 address.
//!   Internationalised names must be given in punycode (`xn--…`). IPv6
//!   literals (`[::1]`) are rejected: no deployment needs them for an origin,
//!   and their many spellings are one more way to smuggle a host past a
//!   string comparison;
//! - ports `1`–`65535`; the scheme's default port is normalised away;
//! - paths with dot segments removed per RFC 3986 (never climbing above `/`).
//!   Percent-encoded octets are kept exactly as written (`%2e` is not
//!   decoded), but a segment that a WHATWG parser would read as `.` or `..`
//!   because of them is refused (below). Non-ASCII characters and the few
//!   ASCII characters a WHATWG serialiser would escape are percent-encoded,
//!   so the canonical form is what `fetch` sends;
//! - the fragment (`#…`) is dropped: it never reaches a server.
//!
//! What is refused: userinfo (`user@host`), backslashes before the query,
//! path segments of dots spelled with `%2e` (`%2e`, `.%2E`, `%2e%2e` …:
//! WHATWG `fetch` would remove them as dot segments *after* our route
//! matching, so `/fragments/%2e%2e/admin` would reach `/admin`),
//! control characters and whitespace anywhere, `%` or non-ASCII in the host,
//! numeric hosts other than dotted-decimal IPv4 (`2130706433`, `0x7f.1`,
//! `017.0.0.1`, `127.1`), empty hosts, and URLs longer than [`MAX_URL_LEN`].

use std::fmt;
use std::str::FromStr;

/// Longest URL (in bytes) accepted, the same as the platform's request URL
/// limit: anything longer could not be fetched anyway.
pub const MAX_URL_LEN: usize = 16 * 1024;

/// Why a string is not an acceptable URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Nothing to parse (or, for a reference, only a `#fragment`, which
    /// would include the including document itself).
    #[error("empty URL")]
    Empty,
    /// Longer than [`MAX_URL_LEN`] bytes; carries the length.
    #[error("URL is {0} bytes long, the limit is {MAX_URL_LEN}")]
    TooLong(usize),
    /// A control character or whitespace (tab, CR, LF, NUL, space …)
    /// somewhere in the input. Browsers strip some of these silently, which
    /// is exactly why they are refused here.
    #[error("URL contains a control character or whitespace")]
    ControlCharacter,
    /// An absolute URL was required but the input has no scheme.
    #[error("not an absolute URL (no scheme)")]
    Relative,
    /// A scheme other than `http` or `https` (lower-cased).
    #[error("unsupported scheme {0:?}: only http and https are allowed")]
    UnsupportedScheme(String),
    /// `http:` not followed by `//` (`http:/host`, `http:path`).
    #[error("missing \"//\" after the scheme")]
    MissingAuthority,
    /// A backslash before the query; browsers read it as `/`.
    #[error("backslash in URL")]
    Backslash,
    /// `user@` or `user:password@` before the host.
    #[error("user information (\"…@\") in URL")]
    UserInfo,
    /// No host at all (`http:///x`, `http://:80/`).
    #[error("empty host")]
    EmptyHost,
    /// The host is not a plain DNS name or dotted-decimal IPv4 address.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// A path segment that is `.` or `..` once its percent-encoded dots
    /// (`%2e`, `%2E`) are decoded, such as `%2e%2e` or `.%2E`; carries the
    /// segment as written. A WHATWG parser (and so `fetch`) treats it as a
    /// dot segment and removes it, which would move the request to another
    /// path than the one routes were matched on.
    #[error("percent-encoded dot segment {0:?} in path")]
    EncodedDotSegment(String),
    /// An origin was expected but the URL has a path, query or fragment.
    #[error("{0:?} is not a bare origin (scheme://host[:port] without path, query or fragment)")]
    NotAnOrigin(String),
}

/// The two supported schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn from_name(name: &str) -> Result<Scheme, UrlError> {
        if name.eq_ignore_ascii_case("http") {
            Ok(Scheme::Http)
        } else if name.eq_ignore_ascii_case("https") {
            Ok(Scheme::Https)
        } else {
            Err(UrlError::UnsupportedScheme(name.to_ascii_lowercase()))
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An absolute `http`/`https` URL in canonical form.
///
/// Two `Url`s are equal exactly when their canonical serialisations are, so
/// the type can be used directly in maps and compared against the
/// allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    scheme: Scheme,
    /// Lower-case, without a trailing dot.
    host: String,
    /// `None` for the scheme's default port, so `:80` and no port compare equal.
    port: Option<u16>,
    /// Starts with `/`, dot segments removed.
    path: String,
    /// Without the `?`; `None` when absent or empty.
    query: Option<String>,
}

/// The scheme, host and port of a URL: the unit the allow-list works in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    /// Always explicit, so equality does not depend on how the port was written.
    port: u16,
}

impl Url {
    /// Parses an absolute `http` or `https` URL (see the module doc for
    /// everything that is refused).
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        check_chars(s)?;
        let s = strip_fragment(s);
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        match split_scheme(s) {
            Some((name, rest)) => parse_hierarchical(Scheme::from_name(name)?, rest),
            None => Err(UrlError::Relative),
        }
    }

    /// Resolves `reference` against `self` as RFC 3986 section 5.2 does:
    /// absolute URLs, scheme-relative (`//host/x`), absolute-path (`/x`),
    /// relative-path (`x`, `./x`, `../x`) and query-only (`?a=1`)
    /// references. Dot segments are removed and never climb above `/`; the
    /// fragment is dropped.
    ///
    /// Unlike RFC 3986, an empty or fragment-only reference is an error
    /// ([`UrlError::Empty`]) rather than the base itself: as an include it
    /// could only ever mean "include this very document". A reference such as
    /// `http:x` is refused ([`UrlError::MissingAuthority`]) instead of being
    /// read as relative, the strict reading RFC 3986 recommends.
    pub fn resolve(&self, reference: &str) -> Result<Url, UrlError> {
        check_chars(reference)?;
        let r = strip_fragment(reference);
        if r.is_empty() {
            return Err(UrlError::Empty);
        }
        if let Some((name, rest)) = split_scheme(r) {
            return parse_hierarchical(Scheme::from_name(name)?, rest);
        }
        let (before_query, query) = split_query(r);
        if before_query.contains('\\') {
            return Err(UrlError::Backslash);
        }
        if before_query.starts_with("//") {
            return parse_hierarchical(self.scheme, r);
        }
        let path = if before_query.is_empty() {
            // Query-only reference: same document, new query.
            self.path.clone()
        } else if before_query.starts_with('/') {
            check_encoded_dots(before_query)?;
            remove_dot_segments(&encode(before_query, PATH_ESCAPES))
        } else {
            check_encoded_dots(before_query)?;
            // Merge: replace everything after the base path's last '/'.
            let dir_end = self.path.rfind('/').map_or(0, |i| i + 1);
            let mut merged = String::with_capacity(dir_end + before_query.len());
            merged.push_str(&self.path[..dir_end]);
            merged.push_str(&encode(before_query, PATH_ESCAPES));
            remove_dot_segments(&merged)
        };
        Ok(Url {
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            path,
            query: encode_query(query),
        })
    }

    /// `"http"` or `"https"`.
    pub fn scheme(&self) -> &str {
        self.scheme.as_str()
    }

    /// The host, lower-case and without a trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The explicit port, or `None` when it is the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port a connection goes to (80 or 443 when not explicit).
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.scheme.default_port())
    }

    /// The path: starts with `/`, dot segments removed, percent-encoding as
    /// written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query without the leading `?`; `None` when absent or empty.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The path followed by `?query` when there is one: the request target.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// Scheme, host and effective port.
    pub fn origin(&self) -> Origin {
        Origin {
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.effective_port(),
        }
    }

    /// The same path and query on `origin`. The worker receives requests for
    /// its own host name and uses this to address the configured origin.
    pub fn with_origin(&self, origin: &Origin) -> Url {
        Url {
            scheme: origin.scheme,
            host: origin.host.clone(),
            port: explicit_port(origin.scheme, origin.port),
            path: self.path.clone(),
            query: self.query.clone(),
        }
    }

    /// Whether this URL is on `origin`, without building an [`Origin`].
    fn is_on(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.effective_port() == origin.port
            && self.host == origin.host
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

impl Origin {
    /// Parses a bare origin: `scheme://host[:port]`, optionally with a single
    /// trailing `/`, and nothing else (no path, query or fragment), with the
    /// same strictness as [`Url::parse`].
    pub fn parse(s: &str) -> Result<Origin, UrlError> {
        let url = Url::parse(s)?;
        // `Url::parse` drops fragments and normalises the path, so look at the
        // raw text to refuse `http://x/#a` or `http://x/./` as an origin.
        let raw_after_authority = s
            .split_once("//")
            .map(|(_, rest)| rest.find(['/', '?', '#']).map_or("", |i| &rest[i..]))
            .unwrap_or("");
        if !(raw_after_authority.is_empty() || raw_after_authority == "/") {
            return Err(UrlError::NotAnOrigin(s.to_owned()));
        }
        Ok(url.origin())
    }

    /// `"http"` or `"https"`.
    pub fn scheme(&self) -> &str {
        self.scheme.as_str()
    }

    /// The host, lower-case and without a trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, always explicit (80 or 443 when the URL had none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of this origin's root (`/`).
    pub fn root(&self) -> Url {
        Url {
            scheme: self.scheme,
            host: self.host.clone(),
            port: explicit_port(self.scheme, self.port),
            path: "/".to_owned(),
            query: None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = explicit_port(self.scheme, self.port) {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl FromStr for Origin {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Origin, UrlError> {
        Origin::parse(s)
    }
}

/// The origins includes may be fetched from. Anything else is never fetched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    origins: Vec<Origin>,
}

impl AllowList {
    /// An allow-list of exactly `origins` (duplicates dropped, order kept).
    pub fn new(origins: Vec<Origin>) -> Self {
        let mut unique: Vec<Origin> = Vec::with_capacity(origins.len());
        for o in origins {
            if !unique.contains(&o) {
                unique.push(o);
            }
        }
        AllowList { origins: unique }
    }

    /// Whether `url` may be fetched: its scheme, host and effective port
    /// must all equal one allowed origin's. A different port or scheme on an
    /// allowed host is a different service and is not allowed.
    pub fn allows(&self, url: &Url) -> bool {
        self.origins.iter().any(|o| url.is_on(o))
    }

    /// The allowed origins, in the order given.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }
}

/// `None` when `port` is the scheme's default, so there is one canonical form.
fn explicit_port(scheme: Scheme, port: u16) -> Option<u16> {
    (port != scheme.default_port()).then_some(port)
}

/// Refuses empty, over-long input and input with control characters or
/// whitespace anywhere (including in the fragment, which is dropped later:
/// such input is malformed, not merely decorated).
fn check_chars(s: &str) -> Result<(), UrlError> {
    if s.is_empty() {
        return Err(UrlError::Empty);
    }
    if s.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong(s.len()));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::ControlCharacter);
    }
    Ok(())
}

fn strip_fragment(s: &str) -> &str {
    s.find('#').map_or(s, |i| &s[..i])
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (s, None),
    }
}

/// Splits `scheme:rest` when `s` starts with a syntactically valid scheme
/// (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`). A colon after
/// a `/` or `?` is not a scheme separator (`./a:b`, `/x?y=a:b`).
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (name, rest) = s.split_once(':')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((name, rest))
}

/// Parses what follows `scheme:`: `//authority[/path][?query]`, fragment
/// already removed.
fn parse_hierarchical(scheme: Scheme, rest: &str) -> Result<Url, UrlError> {
    let (before_query, query) = split_query(rest);
    // Browsers read `\` as `/` before the query; refusing it keeps
    // `http:\\evil` and `http://good\@evil` from meaning two things.
    if before_query.contains('\\') {
        return Err(UrlError::Backslash);
    }
    let Some(after_slashes) = before_query.strip_prefix("//") else {
        return Err(UrlError::MissingAuthority);
    };
    let (authority, path) = match after_slashes.find('/') {
        Some(i) => after_slashes.split_at(i),
        None => (after_slashes, ""),
    };
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    // IPv6 literals contain ':' themselves; whatever the split made of one,
    // report the whole bracketed text.
    if authority.starts_with('[') {
        return Err(UrlError::BadHost(authority.to_owned()));
    }
    let host = parse_host(host)?;
    let port = match port {
        Some(p) => explicit_port(scheme, parse_port(p)?),
        None => None,
    };
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        check_encoded_dots(path)?;
        remove_dot_segments(&encode(path, PATH_ESCAPES))
    };
    Ok(Url {
        scheme,
        host,
        port,
        path,
        query: encode_query(query),
    })
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    let bad = || UrlError::BadPort(p.to_owned());
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Leading zeros are harmless (`:0080` is 80); overflow is not, so
    // accumulate with a ceiling rather than `parse::<u16>()` on any length.
    let mut value: u32 = 0;
    for b in p.bytes() {
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return Err(bad());
        }
    }
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad()),
    }
}

/// Validates and canonicalises a host: lower-case, one trailing dot removed,
/// labels of `[a-z0-9_-]`, and a numeric-looking host only in canonical
/// dotted-decimal form.
fn parse_host(raw: &str) -> Result<String, UrlError> {
    let bad = || UrlError::BadHost(raw.to_owned());
    let lower = raw.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    if host.len() > 253 {
        return Err(bad());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
    }
    // WHATWG treats a host whose last label is a number (decimal, or hex with
    // 0x) as an IPv4 address in any of several spellings: `2130706433`,
    // `0x7f.1`, `017.0.0.1`, `127.1` all mean 127.0.0.1 to `fetch`. Only the
    // one canonical spelling is allowed, so the allow-list sees what `fetch`
    // will connect to.
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric && !is_canonical_ipv4(host) {
        return Err(bad());
    }
    Ok(host.to_owned())
}

fn is_canonical_ipv4(host: &str) -> bool {
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.bytes().all(|b| b.is_ascii_digit())
                && (o.len() == 1 || !o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|v| v <= 255)
        })
}

/// ASCII characters a WHATWG serialiser percent-encodes in a path (besides
/// controls and space, refused earlier, and `#`/`?`, which delimit it).
const PATH_ESCAPES: &[u8] = b"\"<>`{}";
/// The same for a query of an http(s) URL.
const QUERY_ESCAPES: &[u8] = b"\"<>'";

/// Percent-encodes non-ASCII bytes and the given ASCII bytes; everything
/// else, including existing `%xx` escapes, is kept as written.
fn encode(s: &str, escapes: &[u8]) -> String {
    if s.bytes().all(|b| b.is_ascii() && !escapes.contains(&b)) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_ascii() && !escapes.contains(&(c as u8)) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// An empty query (`http://x/?`) is treated as no query, so both spellings
/// share one cache entry.
fn encode_query(query: Option<&str>) -> Option<String> {
    query
        .filter(|q| !q.is_empty())
        .map(|q| encode(q, QUERY_ESCAPES))
}

/// Refuses a path (before dot-segment removal, and without its query) that
/// has a segment made of one or two dots of which at least one is written
/// `%2e` or `%2E`: WHATWG's "single-dot" and "double-dot URL path segment".
/// Checking the raw path matters: in `/a/%2e%2e/../b` our removal would
/// drop the `%2e%2e` segment with the `..` and keep `/a/b`, where `fetch`
/// climbs twice and requests `/b`.
fn check_encoded_dots(path: &str) -> Result<(), UrlError> {
    if !path.contains('%') {
        return Ok(());
    }
    for segment in path.split('/') {
        if segment.contains('%') && is_dot_segment(segment) {
            return Err(UrlError::EncodedDotSegment(segment.to_owned()));
        }
    }
    Ok(())
}

/// Whether `segment` is `.` or `..` with each dot written either literally
/// or as `%2e`/`%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// RFC 3986 section 5.2.4, on a path that starts with `/`. Only literal `.`
/// and `..` segments count here; segments spelled with percent-encoded
/// dots were refused earlier ([`check_encoded_dots`]).
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut out = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop_segment(&mut out);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut out);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Removes the last segment and its leading `/` from `out`; at the root
/// there is nothing to remove, which is what stops `..` from climbing.
fn pop_segment(out: &mut String) {
    let cut = out.rfind('/').unwrap_or(0);
    out.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;
    use UrlError::*;

    fn ok(s: &str) -> Result<String, UrlError> {
        Ok(s.to_owned())
    }

    fn bad_host(s: &str) -> Result<String, UrlError> {
        Err(BadHost(s.to_owned()))
    }

    fn bad_port(s: &str) -> Result<String, UrlError> {
        Err(BadPort(s.to_owned()))
    }

    fn scheme(s: &str) -> Result<String, UrlError> {
        Err(UnsupportedScheme(s.to_owned()))
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, Result<String, UrlError>)> = vec![
            // Plain and canonicalised.
            ("http://example.com", ok("http://example.com/")),
            ("HTTP://EXAMPLE.COM/A", ok("http://example.com/A")),
            ("https://example.com:443/x", ok("https://example.com/x")),
            ("http://example.com:80/x", ok("http://example.com/x")),
            ("https://example.com:80/x", ok("https://example.com:80/x")),
            ("http://example.com:00080/", ok("http://example.com/")),
            (
                "http://example.com:8080/x?y=1#frag",
                ok("http://example.com:8080/x?y=1"),
            ),
            ("http://example.com./", ok("http://example.com/")),
            ("http://Ex-Am_ple.COM/", ok("http://ex-am_ple.com/")),
            ("http://127.0.0.1:8788/", ok("http://127.0.0.1:8788/")),
            ("http://0.0.0.0/", ok("http://0.0.0.0/")),
            ("http://1password.com/", ok("http://1password.com/")),
            ("http://0x7f.example/", ok("http://0x7f.example/")),
            ("http://example.com/?", ok("http://example.com/")),
            ("http://example.com?a=1", ok("http://example.com/?a=1")),
            (
                "http://example.com/é?q=ü",
                ok("http://example.com/%C3%A9?q=%C3%BC"),
            ),
            (
                "http://example.com/a\"b<c>",
                ok("http://example.com/a%22b%3Cc%3E"),
            ),
            (
                "http://example.com/%2e%2e/%2E%2E/x",
                Err(EncodedDotSegment("%2e%2e".into())),
            ),
            (
                "http://example.com/a/../../../etc",
                ok("http://example.com/etc"),
            ),
            ("http://example.com/a/./b/.", ok("http://example.com/a/b/")),
            ("http://example.com/..", ok("http://example.com/")),
            ("http://example.com/x?a\\b", ok("http://example.com/x?a\\b")),
            (
                "http://example.com/x?/../y",
                ok("http://example.com/x?/../y"),
            ),
            // The fragment ends the URL before the '@', and the query starts
            // before it: neither is userinfo, and the host is the first one.
            ("http://evil.com#@origin/", ok("http://evil.com/")),
            ("http://origin?@evil/", ok("http://origin/?@evil/")),
            // Schemes.
            ("javascript:alert(1)", scheme("javascript")),
            ("JavaScript:alert(1)", scheme("javascript")),
            ("file:///etc/passwd", scheme("file")),
            ("data:text/html,<script>alert(1)</script>", scheme("data")),
            ("gopher://127.0.0.1:6379/_SET", scheme("gopher")),
            ("ftp://example.com/", scheme("ftp")),
            ("ws://example.com/", scheme("ws")),
            ("localhost:8080/x", scheme("localhost")),
            ("//example.com/", Err(Relative)),
            ("/x", Err(Relative)),
            ("example.com", Err(Relative)),
            ("", Err(Empty)),
            ("#x", Err(Empty)),
            // Userinfo and backslashes.
            ("http://origin@evil/", Err(UserInfo)),
            ("http://user:pw@origin/", Err(UserInfo)),
            ("http://origin:80@evil/", Err(UserInfo)),
            ("http://evil%2f@origin/", Err(UserInfo)),
            ("http://evil\\@origin/", Err(Backslash)),
            ("http:\\\\evil/", Err(Backslash)),
            ("http:/\\evil/", Err(Backslash)),
            ("http://example.com\\x", Err(Backslash)),
            ("http://example.com/a\\b", Err(Backslash)),
            ("http:/evil/", Err(MissingAuthority)),
            ("http:evil", Err(MissingAuthority)),
            ("http:", Err(MissingAuthority)),
            // Hosts.
            ("http:///evil/", Err(EmptyHost)),
            ("http://", Err(EmptyHost)),
            ("http://:80/", Err(EmptyHost)),
            ("http://./", Err(EmptyHost)),
            ("http://ev%69l.com/", bad_host("ev%69l.com")),
            ("http://127.0.0.1%2e/", bad_host("127.0.0.1%2e")),
            ("http://exämple.com/", bad_host("exämple.com")),
            ("http://a..b/", bad_host("a..b")),
            ("http://example.com../", bad_host("example.com..")),
            ("http://exa*mple.com/", bad_host("exa*mple.com")),
            ("http://[::1]/", bad_host("[::1]")),
            (
                "http://[::ffff:127.0.0.1]:80/",
                bad_host("[::ffff:127.0.0.1]:80"),
            ),
            ("http://2130706433/", bad_host("2130706433")),
            ("http://0x7f.1/", bad_host("0x7f.1")),
            ("http://0x7f000001/", bad_host("0x7f000001")),
            ("http://017.0.0.1/", bad_host("017.0.0.1")),
            ("http://127.1/", bad_host("127.1")),
            ("http://127.0.0.1.1/", bad_host("127.0.0.1.1")),
            ("http://256.0.0.1/", bad_host("256.0.0.1")),
            ("http://127.0.0.0x1/", bad_host("127.0.0.0x1")),
            ("http://example.0x/", bad_host("example.0x")),
            ("http://example.123/", bad_host("example.123")),
            // Ports.
            ("http://example.com:0/", bad_port("0")),
            ("http://example.com:65536/", bad_port("65536")),
            (
                "http://example.com:99999999999999999999/",
                bad_port("99999999999999999999"),
            ),
            ("http://example.com:-1/", bad_port("-1")),
            ("http://example.com:+80/", bad_port("+80")),
            ("http://example.com:80:80/", bad_port("80:80")),
            ("http://example.com:/", bad_port("")),
            ("http://example.com:http/", bad_port("http")),
            // Control characters and whitespace, wherever they are.
            ("http://ex\tample.com/", Err(ControlCharacter)),
            ("java\tscript:alert(1)", Err(ControlCharacter)),
            (
                "http://example.com/\r\nX-Injected: 1",
                Err(ControlCharacter),
            ),
            ("http://example.com/\0", Err(ControlCharacter)),
            (" http://example.com/", Err(ControlCharacter)),
            ("http://example.com/ ", Err(ControlCharacter)),
            ("http://example.com/#a b", Err(ControlCharacter)),
            ("http://example.com/\u{85}", Err(ControlCharacter)),
            ("http://\u{3000}example.com/", Err(ControlCharacter)),
            ("http://example.com/\u{7f}", Err(ControlCharacter)),
        ];
        assert!(cases.len() >= 30);
        for (input, expected) in cases {
            let got = Url::parse(input).map(|u| u.to_string());
            assert_eq!(got, expected, "Url::parse({input:?})");
        }
    }

    #[test]
    fn resolve_table() {
        let base = Url::parse("http://origin.test/pages/index.html?q=1").unwrap();
        let cases: Vec<(&str, Result<String, UrlError>)> = vec![
            ("/fragments/a", ok("http://origin.test/fragments/a")),
            ("frag", ok("http://origin.test/pages/frag")),
            ("./frag", ok("http://origin.test/pages/frag")),
            (
                "../../../../etc/passwd",
                ok("http://origin.test/etc/passwd"),
            ),
            ("/../../etc/passwd", ok("http://origin.test/etc/passwd")),
            ("..", ok("http://origin.test/")),
            (".", ok("http://origin.test/pages/")),
            ("?a=1", ok("http://origin.test/pages/index.html?a=1")),
            ("?", ok("http://origin.test/pages/index.html")),
            ("/x#frag", ok("http://origin.test/x")),
            ("/a/./b/../c", ok("http://origin.test/a/c")),
            ("/%2e%2e/secret", Err(EncodedDotSegment("%2e%2e".into()))),
            ("%2e%2e/%2e%2e/x", Err(EncodedDotSegment("%2e%2e".into()))),
            ("./a:b", ok("http://origin.test/pages/a:b")),
            (
                "/x?next=http://evil/",
                ok("http://origin.test/x?next=http://evil/"),
            ),
            ("//other.test/x", ok("http://other.test/x")),
            ("//OTHER.test.:8080", ok("http://other.test:8080/")),
            ("https://other.test/x", ok("https://other.test/x")),
            ("HTTPS://other.test:443/x/../y", ok("https://other.test/y")),
            ("/\\evil.com/x", Err(Backslash)),
            ("\\\\evil.com", Err(Backslash)),
            ("\\/evil.com", Err(Backslash)),
            ("a\\b", Err(Backslash)),
            ("javascript:alert(1)", scheme("javascript")),
            ("data:,x", scheme("data")),
            ("a:b", scheme("a")),
            ("http:x", Err(MissingAuthority)),
            ("", Err(Empty)),
            ("#top", Err(Empty)),
            ("//origin.test@evil/", Err(UserInfo)),
            ("///evil/", Err(EmptyHost)),
            ("//0x7f.1/", bad_host("0x7f.1")),
            ("//[::1]/", bad_host("[::1]")),
            ("/a b", Err(ControlCharacter)),
            ("/a\nb", Err(ControlCharacter)),
            ("\t//evil/", Err(ControlCharacter)),
        ];
        assert!(cases.len() >= 30);
        for (reference, expected) in cases {
            let got = base.resolve(reference).map(|u| u.to_string());
            assert_eq!(got, expected, "resolve({reference:?})");
        }
    }

    /// The examples of RFC 3986 section 5.4, except where this parser is
    /// deliberately stricter (noted inline).
    #[test]
    fn rfc3986_examples() {
        let base = Url::parse("http://a/b/c/d;p?q").unwrap();
        let cases = [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("g#s", "http://a/b/c/g"),
            ("g?y#s", "http://a/b/c/g?y"),
            (";x", "http://a/b/c/;x"),
            ("g;x", "http://a/b/c/g;x"),
            ("g;x?y#s", "http://a/b/c/g;x?y"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("../../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            (".g", "http://a/b/c/.g"),
            ("g..", "http://a/b/c/g.."),
            ("..g", "http://a/b/c/..g"),
            ("./../g", "http://a/b/g"),
            ("./g/.", "http://a/b/c/g/"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
            ("g;x=1/../y", "http://a/b/c/y"),
            ("g?y/./x", "http://a/b/c/g?y/./x"),
            ("g?y/../x", "http://a/b/c/g?y/../x"),
            ("g#s/./x", "http://a/b/c/g"),
            ("g#s/../x", "http://a/b/c/g"),
        ];
        for (reference, expected) in cases {
            let got = base.resolve(reference).map(|u| u.to_string());
            assert_eq!(got.as_deref(), Ok(expected), "resolve({reference:?})");
        }
        // RFC: "g:h" is another scheme, "" and "#s" are the base itself, and
        // "http:g" may be read loosely. All are refused here.
        assert_eq!(base.resolve("g:h"), Err(UnsupportedScheme("g".into())));
        assert_eq!(base.resolve(""), Err(Empty));
        assert_eq!(base.resolve("#s"), Err(Empty));
        assert_eq!(base.resolve("http:g"), Err(MissingAuthority));
    }

    #[test]
    fn accessors() {
        let u = Url::parse("https://Shop.Example.:8443/a/b?c=d#e").unwrap();
        assert_eq!(u.scheme(), "https");
        assert_eq!(u.host(), "shop.example");
        assert_eq!(u.port(), Some(8443));
        assert_eq!(u.effective_port(), 8443);
        assert_eq!(u.path(), "/a/b");
        assert_eq!(u.query(), Some("c=d"));
        assert_eq!(u.path_and_query(), "/a/b?c=d");
        assert_eq!(u.origin().to_string(), "https://shop.example:8443");
        assert_eq!(u.origin().port(), 8443);

        let d = Url::parse("http://x.test/p").unwrap();
        assert_eq!(d.port(), None);
        assert_eq!(d.effective_port(), 80);
        assert_eq!(d.query(), None);
        assert_eq!(d.path_and_query(), "/p");
        assert_eq!(d.origin().to_string(), "http://x.test");
        assert_eq!(d.origin().port(), 80);
        assert_eq!("http://x.test/p".parse::<Url>(), Ok(d));
    }

    #[test]
    fn equal_urls_are_equal() {
        let a = Url::parse("http://EXAMPLE.com.:80/a/./b?x").unwrap();
        let b = Url::parse("http://example.com/a/b?x#y").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.origin(), b.origin());
    }

    #[test]
    fn with_origin_moves_path_and_query() {
        let req = Url::parse("https://worker.example.workers.dev/shop/cart?x=1").unwrap();
        let origin = Origin::parse("http://127.0.0.1:8788").unwrap();
        let mapped = req.with_origin(&origin);
        assert_eq!(mapped.to_string(), "http://127.0.0.1:8788/shop/cart?x=1");
        let https = Origin::parse("https://backend.example:443").unwrap();
        assert_eq!(
            req.with_origin(&https).to_string(),
            "https://backend.example/shop/cart?x=1"
        );
        assert_eq!(req.with_origin(&https).port(), None);
    }

    #[test]
    fn origin_parse() {
        let o = Origin::parse("http://127.0.0.1:8788").unwrap();
        assert_eq!(o.to_string(), "http://127.0.0.1:8788");
        assert_eq!(o.root().to_string(), "http://127.0.0.1:8788/");
        assert_eq!(
            Origin::parse("https://Static.Example.com/")
                .unwrap()
                .to_string(),
            "https://static.example.com"
        );
        assert_eq!(
            Origin::parse("http://a.test:80").unwrap().to_string(),
            "http://a.test"
        );
        for not_bare in [
            "http://a.test/x",
            "http://a.test/?",
            "http://a.test?x=1",
            "http://a.test/#x",
            "http://a.test#",
            "http://a.test/./",
        ] {
            assert_eq!(
                Origin::parse(not_bare),
                Err(NotAnOrigin(not_bare.into())),
                "{not_bare}"
            );
        }
        assert_eq!(
            Origin::parse("ftp://a.test"),
            Err(UnsupportedScheme("ftp".into()))
        );
        assert_eq!(Origin::parse("http://u@a.test"), Err(UserInfo));
        assert_eq!("http://127.0.0.1:8788/".parse::<Origin>(), Ok(o));
    }

    #[test]
    fn allow_list() {
        let allow = AllowList::new(vec![
            Origin::parse("http://origin.test:8788").unwrap(),
            Origin::parse("https://static.example.com").unwrap(),
            Origin::parse("https://static.example.com:443/").unwrap(),
        ]);
        assert_eq!(allow.origins().len(), 2, "duplicates are dropped");
        let allowed = [
            "http://origin.test:8788/fragments/a",
            "http://ORIGIN.test.:8788/x?y",
            "https://static.example.com/app.js",
            "https://static.example.com:443/app.js",
        ];
        for u in allowed {
            assert!(
                allow.allows(&Url::parse(u).unwrap()),
                "{u} should be allowed"
            );
        }
        let refused = [
            // Same host, other port.
            "http://origin.test/fragments/a",
            "http://origin.test:8789/fragments/a",
            "https://static.example.com:8443/app.js",
            // Same host and port, other scheme.
            "https://origin.test:8788/fragments/a",
            "http://static.example.com/app.js",
            "http://static.example.com:443/app.js",
            // Look-alike hosts.
            "http://origin.test.evil:8788/",
            "http://evil-origin.test:8788/",
            "https://sub.static.example.com/",
        ];
        for u in refused {
            assert!(
                !allow.allows(&Url::parse(u).unwrap()),
                "{u} should be refused"
            );
        }
        assert!(!AllowList::default().allows(&Url::parse("http://origin.test:8788/").unwrap()));
    }

    #[test]
    fn resolved_includes_stay_checked() {
        // Includes resolved against a page on the origin keep the origin
        // unless they name another one, and the allow-list sees the result.
        let page = Url::parse("http://origin.test:8788/shop/").unwrap();
        let allow = AllowList::new(vec![page.origin()]);
        let same = page.resolve("../fragments/nav").unwrap();
        assert_eq!(same.to_string(), "http://origin.test:8788/fragments/nav");
        assert!(allow.allows(&same));
        for hostile in [
            "//evil.test/x",
            "http://evil.test/",
            "//origin.test/x",
            "https://origin.test:8788/",
        ] {
            let u = page.resolve(hostile).unwrap();
            assert!(!allow.allows(&u), "{hostile} resolved to {u}");
        }
    }

    /// WHATWG reads `%2e` as `.` when it decides what a dot segment is, and
    /// `fetch` removes such segments after our route matching: every
    /// spelling is refused, in absolute URLs and in references alike.
    #[test]
    fn encoded_dot_segments_are_refused() {
        let base = Url::parse("http://origin.test/fragments/a").unwrap();
        let cases = [
            ("/fragments/%2e%2e/admin", "%2e%2e"),
            ("/fragments/%2E%2E/admin", "%2E%2E"),
            ("/a/.%2e/b", ".%2e"),
            ("/a/%2e./b", "%2e."),
            ("/a/%2E./b", "%2E."),
            ("/a/%2e/b", "%2e"),
            ("/a/%2E", "%2E"),
            ("/a/%2e%2e", "%2e%2e"),
            ("/a/%2e%2e?x=1", "%2e%2e"),
            ("/a/%2e%2e#frag", "%2e%2e"),
            ("%2e%2e/admin", "%2e%2e"),
            ("./%2e%2e/admin", "%2e%2e"),
            ("x/.%2E", ".%2E"),
            ("%2e", "%2e"),
            // Our own removal would drop this one together with the `..`
            // and keep `/a/b`, where `fetch` climbs twice and gets `/b`.
            ("/a/%2e%2e/../b", "%2e%2e"),
        ];
        for (reference, segment) in cases {
            let want = Err(EncodedDotSegment(segment.into()));
            assert_eq!(base.resolve(reference), want, "resolve({reference:?})");
            if reference.starts_with('/') {
                let absolute = format!("http://origin.test{reference}");
                assert_eq!(Url::parse(&absolute), want, "parse({absolute:?})");
                let scheme_relative = format!("//origin.test{reference}");
                assert_eq!(
                    base.resolve(&scheme_relative),
                    want,
                    "resolve({scheme_relative:?})"
                );
            }
        }
        assert_eq!(
            Origin::parse("http://origin.test/%2e"),
            Err(EncodedDotSegment("%2e".into()))
        );
        assert_eq!(
            EncodedDotSegment("%2e%2e".into()).to_string(),
            "percent-encoded dot segment \"%2e%2e\" in path"
        );
    }

    /// Near misses are ordinary segments for WHATWG too, and stay allowed.
    #[test]
    fn encoded_dots_that_are_not_dot_segments() {
        let base = Url::parse("http://origin.test/fragments/a").unwrap();
        let cases = [
            ("/a/%2e%2e%2e/b", "http://origin.test/a/%2e%2e%2e/b"),
            ("/a/.%2e./b", "http://origin.test/a/.%2e./b"),
            ("/a/%2ex/b", "http://origin.test/a/%2ex/b"),
            ("/a/x%2e%2e/b", "http://origin.test/a/x%2e%2e/b"),
            ("/a/%2e%2e;x/b", "http://origin.test/a/%2e%2e;x/b"),
            // Double-encoded: `fetch` decodes nothing, so `%252e` stays.
            ("/a/%252e%252e/b", "http://origin.test/a/%252e%252e/b"),
            ("/a/%2f%2e%2e/b", "http://origin.test/a/%2f%2e%2e/b"),
            ("/a/%2/b", "http://origin.test/a/%2/b"),
            ("/a/%2e%2e-/b", "http://origin.test/a/%2e%2e-/b"),
            // Only the path counts: the query is never normalised.
            ("/a?p=/%2e%2e/x", "http://origin.test/a?p=/%2e%2e/x"),
            ("?%2e%2e", "http://origin.test/fragments/a?%2e%2e"),
        ];
        for (reference, want) in cases {
            let got = base.resolve(reference).map(|u| u.to_string());
            assert_eq!(got.as_deref(), Ok(want), "resolve({reference:?})");
        }
        for ok_url in ["http://origin.test/a/%2e%2e%2e", "http://origin.test/%2ex"] {
            assert!(Url::parse(ok_url).is_ok(), "{ok_url}");
        }
    }

    #[test]
    fn too_long() {
        let long = format!("http://a.test/{}", "x".repeat(MAX_URL_LEN));
        assert_eq!(Url::parse(&long), Err(TooLong(long.len())));
        let base = Url::parse("http://a.test/").unwrap();
        assert_eq!(base.resolve(&long[13..]), Err(TooLong(long.len() - 13)));
    }

    #[test]
    fn host_length_limits() {
        let label63 = "a".repeat(63);
        assert!(Url::parse(&format!("http://{label63}.test/")).is_ok());
        let label64 = "a".repeat(64);
        assert!(matches!(
            Url::parse(&format!("http://{label64}.test/")),
            Err(BadHost(_))
        ));
        let long_host = vec!["abcdefghi"; 26].join(".");
        assert!(long_host.len() > 253);
        assert!(matches!(
            Url::parse(&format!("http://{long_host}/")),
            Err(BadHost(_))
        ));
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            UnsupportedScheme("javascript".into()).to_string(),
            "unsupported scheme \"javascript\": only http and https are allowed"
        );
        assert_eq!(BadPort("0".into()).to_string(), "invalid port \"0\"");
    }

    /// Whatever the input, parsing and resolving return a value or an error;
    /// a crude exhaustive walk over short strings of interesting characters.
    #[test]
    fn no_panics_on_short_inputs() {
        let alphabet: Vec<char> = "h:/\\.@%?#[]0xa1é \t".chars().collect();
        let base = Url::parse("http://a.test/b/c").unwrap();
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            let _ = Url::parse(&s);
            if let Ok(u) = base.resolve(&s) {
                assert!(u.path().starts_with('/'), "{s:?} -> {u}");
                assert_eq!(
                    Url::parse(&u.to_string()),
                    Ok(u.clone()),
                    "{s:?} round-trip"
                );
            }
            if s.chars().count() < 4 {
                for c in &alphabet {
                    stack.push(format!("{s}{c}"));
                }
            }
        }
    }
}
