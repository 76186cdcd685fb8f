//! Cache keys.
//!
//! A key names the route, the fragment URL and exactly the variant values
//! the route declares (`vary`): selected cookies, selected request headers,
//! selected query parameters of the page request, and the client's country.
//! Nothing else of the client's request can reach a cached entry, so one
//! user's cookie can never select or shape another user's cached content.
//!
//! # Format
//!
//! ```text
//! {kind}{route_id}:{origin}{path}[?{query, parameters sorted}][#{variants}]
//! f4:http://origin.test/v/a?a=1&b=2#c.currency=EUR|cc=DE|h.accept-language=en-gb
//! ```
//!
//! The key must be *injective*: two requests whose declared inputs differ
//! must never share a key, or one variant's content would be served for
//! another (a value chosen by one user could even select another user's
//! entry). Each part is delimited so that it can be read back:
//!
//! - `kind` is one letter ([`KeyKind::as_str`]) and `route_id` digits,
//!   ended by `:`; the origin
//!   has no `/`, and the path starts with one.
//! - A parsed path never contains `?` or `#`, and a parsed query never
//!   contains `#` (see [`crate::url`]), so the first `?` ends the path and
//!   the first `#` ends the URL. Query parameters never contain `&`, so the
//!   sorted list still names exactly one multiset of parameters.
//! - Each variant is `c.` (cookie), `h.` (header) or `q.` (query) and a
//!   name, or `cc` (country), followed by `=value` when the value is present
//!   and by nothing when it is absent: a missing cookie and an empty cookie
//!   are different keys, and the origin receives a different request for
//!   each (no cookie, or `name=`). Names and values are escaped with
//!   [`escape`] (`%`, `|`, `=`, `#`, controls and every non-ASCII byte become
//!   `%XX`), so variants are joined with `|` unambiguously; they are sorted,
//!   which is harmless since each carries its own name.
//!
//! The URL part is kept as parsed (it is ASCII only), so
//! `{kind}{route_id}:{origin}{path}` is a plain prefix of every key of that
//! path: purging lists keys by that prefix, computed by [`key_prefix`], the
//! same function that starts every key.
//!
//! # Normalisations
//!
//! These, and only these, make different requests share a key:
//! query parameter order and empty parameters (`?b=2&&a=1` ≡ `?a=1&b=2`,
//! `?&` ≡ no query);
//! the case of hex digits in `%xx` escapes of the path; header values as
//! [`normalize_header_value`] makes them (several instances joined with
//! `, `, whitespace runs collapsed, ASCII lower-cased); the country's case.
//! Whatever is normalised in the key is sent normalised to the origin
//! (see `loader::origin`), so the origin can never answer two
//! requests that share a key differently because of those differences.
//!
//! # Long keys
//!
//! KV keys are limited to 512 bytes. A key longer than [`MAX_PLAIN_KEY`]
//! bytes becomes its first [`READABLE_PREFIX`] bytes, `…` and the SHA-256
//! of the *whole* key in hex. A weak or truncated hash would let two
//! variants collide, and a collision serves one variant's content (possibly
//! chosen by a crafted cookie) to the other, so the hash is cryptographic.
//! Plain keys never contain `…` (everything variable in them is ASCII), so
//! a plain key can never equal a hashed one. The readable part keeps purge
//! by prefix working; a purge of a path longer than the readable part also
//! removes other long paths sharing those first bytes (never fewer keys).

use sha2::{Digest, Sha256};

use crate::config::Vary;
use crate::request::ClientRequest;
use crate::url::{Origin, Url};

/// Longest key stored as is; longer keys keep a readable prefix and a hash.
pub const MAX_PLAIN_KEY: usize = 400;

/// Bytes of a long key kept readable before its hash (the hashed key is at
/// most this + 3 + 64 bytes, within KV's 512).
pub const READABLE_PREFIX: usize = 300;

/// Separates the readable part of a hashed key from its hash.
const HASH_MARK: char = '…';

/// What a key names: the first letter of every key. The letters are part of
/// the stored keys (and of the prefixes purge lists by), so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A fragment route's entry (`f`).
    Fragment,
    /// A page route's cached shell (`p`).
    Page,
    /// A URL matching no route (`u`); such loads are never cached.
    Unrouted,
}

impl KeyKind {
    /// The letter that starts this kind's keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Fragment => "f",
            KeyKind::Page => "p",
            KeyKind::Unrouted => "u",
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The start of every key of `path` under route `route_id`: what purging
/// lists by. `path` is a parsed URL path, or a decoded path given to purge:
/// either way it is brought to the form [`crate::url::Url`] gives paths
/// (non-ASCII, whitespace, controls and `"<>`{}` percent-encoded), with
/// `%xx` escapes upper-cased.
pub fn key_prefix(kind: KeyKind, route_id: usize, origin: &Origin, path: &str) -> String {
    let mut key = format!("{}{route_id}:{origin}", kind.as_str());
    canonical_path(path, &mut key);
    key
}

fn canonical_path(path: &str, out: &mut String) {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
            i += 3;
            continue;
        }
        if c.is_ascii_graphic() && !b"\"<>`{}".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
        i += 1;
    }
}

/// Escapes a variable part of a key: `%`, `|`, `=`, `#`, ASCII controls
/// and every non-ASCII byte become `%XX`; everything else (spaces included)
/// stays readable. Injective, and the result never contains `|`, `=`, `#`
/// or `…`.
pub fn escape(s: &str, out: &mut String) {
    for &c in s.as_bytes() {
        if c.is_ascii() && !c.is_ascii_control() && !b"%|=#".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

/// The one normal form of a request header's value, used both in the cache
/// key and in the origin request of a cacheable load: leading and trailing
/// whitespace removed, inner runs of whitespace collapsed to one space, and
/// ASCII letters lower-cased.
///
/// Lower-casing is right for what routes vary on (language tags, device
/// classes, feature flags: case-insensitive tokens) and it is safe whatever
/// the header: the origin receives this value, never the raw one, so two
/// requests that share a key also share the origin's answer. An origin
/// that needs a case-sensitive value must have it in a cookie or the URL.
pub fn normalize_header_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for word in raw.split_ascii_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.make_ascii_lowercase();
    out
}

/// Request header `name` (lower-case) as a cacheable load uses it: every
/// instance joined with `, ` (as one header would carry them), then
/// [`normalize_header_value`]. `None` when the request has no such header.
pub fn header_value(req: &ClientRequest, name: &str) -> Option<String> {
    let values: Vec<&str> = req.header_all(name).collect();
    (!values.is_empty()).then(|| normalize_header_value(&values.join(", ")))
}

/// The cache key of `url` under route `route_id` for `req`.
pub fn cache_key(
    kind: KeyKind,
    route_id: usize,
    url: &Url,
    vary: &Vary,
    req: &ClientRequest,
) -> String {
    let mut key = key_prefix(kind, route_id, &url.origin(), url.path());
    let mut params: Vec<&str> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    if !params.is_empty() {
        params.sort_unstable();
        key.push('?');
        key.push_str(&params.join("&"));
    }
    let mut variants = Vec::new();
    let mut variant = |tag: &str, name: &str, value: Option<&str>| {
        let mut v = String::from(tag);
        escape(name, &mut v);
        if let Some(value) = value {
            v.push('=');
            escape(value, &mut v);
        }
        variants.push(v);
    };
    for name in &vary.cookies {
        variant("c.", name, req.cookie(name).as_deref());
    }
    for name in &vary.headers {
        variant("h.", name, header_value(req, name).as_deref());
    }
    for name in &vary.query {
        variant("q.", name, req.query_param(name));
    }
    if vary.country {
        let cc = req.country.as_deref().map(str::to_ascii_uppercase);
        variant("cc", "", cc.as_deref());
    }
    if !variants.is_empty() {
        variants.sort_unstable();
        key.push('#');
        key.push_str(&variants.join("|"));
    }
    if key.len() > MAX_PLAIN_KEY {
        let mut cut = READABLE_PREFIX;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        let digest = Sha256::digest(key.as_bytes());
        let mut hashed = String::with_capacity(cut + 3 + 64);
        hashed.push_str(&key[..cut]);
        hashed.push(HASH_MARK);
        for b in digest {
            hashed.push_str(&format!("{b:02x}"));
        }
        key = hashed;
    }
    key
}

/// Whether stored key `key` is covered by a purge of `prefix` (from
/// [`key_prefix`]): with `exact`, only keys of that very path (any query,
/// any variants); otherwise every key starting with it. A hashed key whose
/// readable part ends inside `prefix` is counted as covered: it may be one.
pub fn covers(prefix: &str, exact: bool, key: &str) -> bool {
    let (readable, hashed) = match key.split_once(HASH_MARK) {
        Some((r, _)) => (r, true),
        None => (key, false),
    };
    if hashed && readable.len() < prefix.len() {
        return prefix.starts_with(readable);
    }
    let Some(rest) = readable.strip_prefix(prefix) else {
        return false;
    };
    !exact || rest.is_empty() || rest.starts_with('?') || rest.starts_with('#')
}

/// What to list the store by to find every key [`covers`] accepts.
pub fn list_prefix(prefix: &str) -> &str {
    if prefix.len() <= READABLE_PREFIX {
        return prefix;
    }
    let mut cut = READABLE_PREFIX;
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    &prefix[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(q: &str) -> ClientRequest {
        ClientRequest::new(Url::parse(&format!("http://shop.test/p?{q}")).unwrap())
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn key_kinds_keep_their_stored_letters() {
        let u = url("http://o.test/x");
        let none = Vary::default();
        for (kind, key) in [
            (KeyKind::Fragment, "f7:http://o.test/x"),
            (KeyKind::Page, "p7:http://o.test/x"),
            (KeyKind::Unrouted, "u7:http://o.test/x"),
        ] {
            assert_eq!(cache_key(kind, 7, &u, &none, &req("")), key);
            assert_eq!(key_prefix(kind, 7, &u.origin(), "/x"), key);
        }
    }

    #[test]
    fn query_order_does_not_matter() {
        let none = Vary::default();
        let a = cache_key(
            KeyKind::Fragment,
            1,
            &url("http://o.test/x?a=1&b=2"),
            &none,
            &req(""),
        );
        let b = cache_key(
            KeyKind::Fragment,
            1,
            &url("http://o.test/x?b=2&a=1"),
            &none,
            &req(""),
        );
        assert_eq!(a, b);
        assert_eq!(a, "f1:http://o.test/x?a=1&b=2");
        let c = cache_key(
            KeyKind::Fragment,
            2,
            &url("http://o.test/x?b=2&a=1"),
            &none,
            &req(""),
        );
        assert_ne!(a, c, "routes do not share entries");
    }

    #[test]
    fn only_declared_variants_count() {
        let vary = Vary {
            cookies: vec!["currency".into()],
            headers: vec!["accept-language".into()],
            query: vec!["sort".into()],
            country: true,
        };
        let u = url("http://o.test/prices");
        let r1 = req("sort=asc&page=1")
            .with_header("cookie", "session=alice; currency=EUR")
            .with_header("accept-language", " EN-gb ");
        let r2 = req("page=2&sort=asc")
            .with_header("cookie", "currency=EUR; session=bob")
            .with_header("accept-language", "en-GB");
        let k1 = cache_key(KeyKind::Fragment, 0, &u, &vary, &r1);
        assert_eq!(k1, cache_key(KeyKind::Fragment, 0, &u, &vary, &r2));
        assert_eq!(
            k1,
            "f0:http://o.test/prices#c.currency=EUR|cc|h.accept-language=en-gb|q.sort=asc"
        );
        let r3 = req("sort=asc")
            .with_header("cookie", "currency=USD")
            .with_header("accept-language", "en-gb");
        assert_ne!(k1, cache_key(KeyKind::Fragment, 0, &u, &vary, &r3));
        assert!(!k1.contains("alice"));
    }

    #[test]
    fn separators_in_values_cannot_forge_other_variants() {
        let vary = Vary {
            cookies: vec!["a".into(), "b".into()],
            ..Vary::default()
        };
        let u = url("http://o.test/x");
        let forged = req("").with_header("cookie", "a=1|c.b=2");
        let real = req("").with_header("cookie", "a=1; b=2");
        let kf = cache_key(KeyKind::Fragment, 0, &u, &vary, &forged);
        assert_ne!(kf, cache_key(KeyKind::Fragment, 0, &u, &vary, &real));
        assert_eq!(kf, "f0:http://o.test/x#c.a=1%7Cc.b%3D2|c.b");
    }

    #[test]
    fn absent_and_empty_differ() {
        let vary = Vary {
            cookies: vec!["a".into()],
            headers: vec!["x-v".into()],
            ..Vary::default()
        };
        let u = url("http://o.test/x");
        let absent = cache_key(KeyKind::Fragment, 0, &u, &vary, &req(""));
        let empty = cache_key(
            KeyKind::Fragment,
            0,
            &u,
            &vary,
            &req("").with_header("cookie", "a="),
        );
        let blank = cache_key(
            KeyKind::Fragment,
            0,
            &u,
            &vary,
            &req("").with_header("x-v", "  "),
        );
        assert_eq!(absent, "f0:http://o.test/x#c.a|h.x-v");
        assert_eq!(empty, "f0:http://o.test/x#c.a=|h.x-v");
        assert_eq!(blank, "f0:http://o.test/x#c.a|h.x-v=");
    }

    #[test]
    fn header_values_are_normalised_once() {
        assert_eq!(
            normalize_header_value("  En-GB,\t fr ;q=0.5 "),
            "en-gb, fr ;q=0.5"
        );
        let r = req("")
            .with_header("accept-language", "EN")
            .with_header("Accept-Language", " fr  ");
        assert_eq!(
            header_value(&r, "accept-language").as_deref(),
            Some("en, fr")
        );
        assert_eq!(header_value(&r, "x"), None);
    }

    #[test]
    fn long_keys_are_hashed_and_bounded() {
        let long = url(&format!("http://o.test/{}", "é".repeat(400)));
        let k = cache_key(KeyKind::Fragment, 0, &long, &Vary::default(), &req(""));
        assert!(k.len() <= 512, "{}", k.len());
        assert!(k.starts_with("f0:http://o.test/%C3%A9%C3%A9"));
        let (readable, hash) = k.split_once('…').unwrap();
        assert_eq!(readable.len(), READABLE_PREFIX);
        assert_eq!(hash.len(), 64);
        let url2 = url(&format!("http://o.test/{}b", "é".repeat(400)));
        assert_ne!(
            k,
            cache_key(KeyKind::Fragment, 0, &url2, &Vary::default(), &req(""))
        );
        // A short path keeps its whole prefix readable when variants are long.
        let vary = Vary {
            cookies: vec!["a".into()],
            ..Vary::default()
        };
        let r = req("").with_header("cookie", &format!("a={}", "v".repeat(600)));
        let k = cache_key(KeyKind::Fragment, 0, &url("http://o.test/x"), &vary, &r);
        assert!(k.starts_with("f0:http://o.test/x#c.a=vvv") && k.contains('…'));
        let p = key_prefix(KeyKind::Fragment, 0, &url("http://o.test/x").origin(), "/x");
        assert!(covers(&p, true, &k));
    }

    #[test]
    fn prefixes_match_keys_of_awkward_paths() {
        let o = url("http://o.test/").origin();
        for (parsed, decoded) in [
            ("http://o.test/a%20b", "/a b"),
            ("http://o.test/%c3%a9t%C3%A9", "/été"),
            ("http://o.test/a|b=c", "/a|b=c"),
            ("http://o.test/100%25", "/100%25"),
        ] {
            let k = cache_key(
                KeyKind::Fragment,
                3,
                &url(parsed),
                &Vary::default(),
                &req(""),
            );
            let p = key_prefix(KeyKind::Fragment, 3, &o, decoded);
            assert!(covers(&p, true, &k), "{p} / {k}");
            assert!(k.starts_with(list_prefix(&p)));
        }
        let p = key_prefix(KeyKind::Fragment, 3, &o, "/a");
        assert!(covers(&p, true, "f3:http://o.test/a?x=1"));
        assert!(!covers(&p, true, "f3:http://o.test/ab"));
        assert!(covers(&p, false, "f3:http://o.test/ab"));
    }
}
