//! The page as an HTTP response: which of the origin's response headers
//! reach the client, and how the page's `Vary` is built.
//!
//! A user, and every cache between us and the user, sees one response: the
//! page. It carries the shell's headers (security headers such as
//! `Content-Security-Policy` and `Strict-Transport-Security`, `Vary`,
//! `Link`, `Content-Disposition`, custom headers) except for the ones below.
//! Fragment headers never reach the page: a fragment is a piece of the body.
//!
//! Dropped from every shell ([`keep_from_origin`]):
//!
//! | header | why |
//! |---|---|
//! | `Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and any header named in `Connection` | hop-by-hop: they describe the origin's connection to us, not the response (RFC 9110 §7.6.1) |
//! | `Content-Length` | the runtime frames the body it sends |
//! | `Content-Encoding` | the runtime hands us the decoded body, and re-encodes for the client as it negotiates |
//! | `Surrogate-Control`, `Surrogate-Key`, `Cache-Tag` | addressed to surrogates (us), not to browsers or downstream caches; the tags are kept with the entry ([`crate::tags`]) |
//! | `Age` | we state the age of our own copy |
//! | `Set-Cookie` | kept apart: passed on only under the private-fragment rules, and a response that sets one is never cached |
//! | `x-fragcache`, `Server-Timing` | ours are computed per request; an origin `Server-Timing` is kept and ours appended |
//!
//! Dropped as well when the body is rewritten (an assembled page,
//! [`drop_for_rewritten_body`]): `ETag`, `Last-Modified`, `Content-MD5`,
//! `Digest`, `Accept-Ranges` and `Content-Range`, since they describe the
//! shell's bytes, not the page's.
//!
//! `Cache-Control` and `Vary` are decided per page in [`crate::serve`]: a
//! page that depends on who asked is `private, no-store`, and the request
//! headers that shaped a shareable page are merged into the shell's `Vary`
//! ([`merge_vary`]).

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, VARY};

/// A header value as text. HTTP allows any byte from 0x80 up in a value
/// (obs-text); clients send UTF-8 there (a cookie `name=Jürgen`), which
/// `HeaderValue::to_str` refuses, so values are read as UTF-8 instead.
pub fn text(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()).ok()
}

/// A header value from text; `None` for control characters (CR, LF, NUL…),
/// which HTTP does not allow in a value.
pub fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// Response headers that describe one connection (RFC 9110 §7.6.1): the
/// request-side list without credentials and `Host`.
pub const HOP_BY_HOP_RESPONSE: &[&str] = crate::config::UNFORWARDABLE_HEADERS.split_at(3).1;

/// Origin response headers that never reach the client, besides the
/// hop-by-hop ones (see the module table).
pub const NEVER_PASSED: &[&str] = &[
    "content-length",
    "content-encoding",
    "surrogate-control",
    "surrogate-key",
    "cache-tag",
    "age",
    "set-cookie",
    "x-fragcache",
];

/// Headers that describe the shell's exact bytes.
pub const BODY_VALIDATORS: &[&str] = &[
    "etag",
    "last-modified",
    "content-md5",
    "digest",
    "accept-ranges",
    "content-range",
];

/// The origin's response headers that a page built from this shell may
/// carry: everything except hop-by-hop headers (including those the
/// `Connection` header names) and [`NEVER_PASSED`].
pub fn keep_from_origin(origin: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = origin
        .get_all(CONNECTION)
        .iter()
        .filter_map(text)
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut kept = HeaderMap::with_capacity(origin.len());
    for (name, value) in origin {
        let n = name.as_str();
        if HOP_BY_HOP_RESPONSE.contains(&n)
            || NEVER_PASSED.contains(&n)
            || named_by_connection.iter().any(|c| c == n)
        {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// Removes the headers that describe the shell's bytes, for a page whose
/// body differs from the shell's.
pub fn drop_for_rewritten_body(headers: &mut HeaderMap) {
    for name in BODY_VALIDATORS {
        headers.remove(*name);
    }
}

/// Adds `names` (lower-case request header names) to the `Vary` in
/// `headers`, keeping what is there, without repeats (compared
/// case-insensitively), as a single `Vary` field. `Vary: *` already says
/// everything and is left alone.
pub fn merge_vary<'a>(headers: &mut HeaderMap, names: impl IntoIterator<Item = &'a str>) {
    let mut tokens: Vec<String> = headers
        .get_all(VARY)
        .iter()
        .filter_map(text)
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.iter().any(|t| t == "*") {
        headers.insert(VARY, HeaderValue::from_static("*"));
        return;
    }
    let before = tokens.len();
    for name in names {
        if !tokens.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            tokens.push(name.to_owned());
        }
    }
    if tokens.is_empty() || (tokens.len() == before && headers.get_all(VARY).iter().count() <= 1) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&tokens.join(", ")) {
        headers.insert(VARY, v);
    }
}

/// Largest header block stored with a cached shell. Origins that send more
/// are stored without the excess headers (logged by the caller); 16 KiB is
/// above what any real security-header set needs and far below KV limits.
pub const MAX_STORED_HEADER_BYTES: usize = 16 * 1024;

/// Encodes headers for storage ahead of a cached shell's body: one
/// `name: value\r\n` line per field. Header values cannot contain CR or LF,
/// so the block parses back exactly. Returns `None` when the block would
/// exceed [`MAX_STORED_HEADER_BYTES`].
pub fn encode_block(headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        if out.len() > MAX_STORED_HEADER_BYTES {
            return None;
        }
    }
    Some(out)
}

/// Parses a block written by [`encode_block`]; malformed lines are skipped.
pub fn decode_block(block: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn security_and_custom_headers_are_kept_connection_headers_dropped() {
        let origin = map(&[
            ("content-security-policy", "default-src 'self'"),
            ("strict-transport-security", "max-age=63072000"),
            ("x-frame-options", "DENY"),
            ("link", "</a.css>; rel=preload"),
            ("link", "</b.js>; rel=preload"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("surrogate-control", "content=\"ESI/1.0\""),
            ("surrogate-key", "a b"),
            ("cache-tag", "a,b"),
            ("set-cookie", "a=1"),
            ("age", "100"),
            ("x-custom", "yes"),
        ]);
        let kept = keep_from_origin(&origin);
        let names: Vec<&str> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-security-policy",
                "strict-transport-security",
                "x-frame-options",
                "link",
                "x-custom"
            ]
        );
        assert_eq!(kept.get_all("link").iter().count(), 2);
    }

    #[test]
    fn validators_go_when_the_body_changes() {
        let mut h = map(&[("etag", "\"1\""), ("last-modified", "x"), ("x-a", "b")]);
        drop_for_rewritten_body(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn vary_merges_without_repeats() {
        let mut h = map(&[("vary", "Accept-Encoding"), ("vary", "accept-language")]);
        merge_vary(&mut h, ["accept-language", "user-agent"]);
        assert_eq!(
            h.get("vary").unwrap(),
            "Accept-Encoding, accept-language, user-agent"
        );
        assert_eq!(h.get_all("vary").iter().count(), 1);
        let mut star = map(&[("vary", "*")]);
        merge_vary(&mut star, ["cookie"]);
        assert_eq!(star.get("vary").unwrap(), "*");
        let mut none = HeaderMap::new();
        merge_vary(&mut none, []);
        assert!(none.get("vary").is_none());
        merge_vary(&mut none, ["cookie"]);
        assert_eq!(none.get("vary").unwrap(), "cookie");
    }

    #[test]
    fn header_blocks_round_trip() {
        let h = map(&[
            ("content-security-policy", "default-src 'self'; img-src *"),
            ("link", "</a.css>; rel=preload"),
            ("link", "</b.js>; rel=preload"),
            ("x-empty", ""),
        ]);
        let block = encode_block(&h).unwrap();
        assert_eq!(decode_block(&block), h);
        let huge = map(&[("x-big", &"a".repeat(MAX_STORED_HEADER_BYTES))]);
        assert!(encode_block(&huge).is_none());
    }
}
