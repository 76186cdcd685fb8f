//! Cache keys.
//!
//! A key names the route, the fragment URL (query parameters sorted, so
//! `?a=1&b=2` and `?b=2&a=1` share an entry) and exactly the variant values
//! the route declares (`vary`): selected cookies, selected request headers
//! (values lower-cased and trimmed), selected query parameters of the page
//! request, and the client's country. Nothing else of the client's request
//! can reach a cached entry, so one user's cookie can never select or shape
//! another user's cached content. Keys longer than [`MAX_PLAIN_KEY`] bytes
//! are hashed, since KV keys are limited to 512 bytes.

use crate::config::Vary;
use crate::request::ClientRequest;
use crate::url::Url;

/// Longest key stored as is; longer keys keep a readable prefix and a hash.
pub const MAX_PLAIN_KEY: usize = 400;

/// The cache key of `url` under route `route_id` for `req`.
pub fn cache_key(
    kind: &str,
    route_id: usize,
    url: &Url,
    vary: &Vary,
    req: &ClientRequest,
) -> String {
    let mut key = format!("{kind}{route_id}:{}", url.origin());
    key.push_str(url.path());
    if let Some(q) = url.query() {
        let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        key.push('?');
        key.push_str(&params.join("&"));
    }
    let mut variants = Vec::new();
    for name in &vary.cookies {
        variants.push(format!("c.{name}={}", req.cookie(name).unwrap_or_default()));
    }
    for name in &vary.headers {
        let v = req
            .header(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        variants.push(format!("h.{name}={v}"));
    }
    for name in &vary.query {
        variants.push(format!(
            "q.{name}={}",
            req.query_param(name).unwrap_or_default()
        ));
    }
    if vary.country {
        variants.push(format!(
            "cc={}",
            req.country.as_deref().unwrap_or("").to_ascii_uppercase()
        ));
    }
    if !variants.is_empty() {
        variants.sort_unstable();
        key.push('#');
        key.push_str(&variants.join("|"));
    }
    if key.len() > MAX_PLAIN_KEY {
        let mut cut = 200;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        let digest = hash128(key.as_bytes());
        key = format!("{}…{digest:032x}", &key[..cut]);
    }
    key
}

/// FNV-1a with a 128-bit state. Not cryptographic: variant values are not
/// secrets (private content is never cached), it only has to spread keys.
pub fn hash128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(q: &str) -> ClientRequest {
        ClientRequest::new(Url::parse(&format!("http://shop.test/p?{q}")).unwrap())
    }

    #[test]
    fn query_order_does_not_matter() {
        let none = Vary::default();
        let a = cache_key(
            "f",
            1,
            &Url::parse("http://o.test/x?a=1&b=2").unwrap(),
            &none,
            &req(""),
        );
        let b = cache_key(
            "f",
            1,
            &Url::parse("http://o.test/x?b=2&a=1").unwrap(),
            &none,
            &req(""),
        );
        assert_eq!(a, b);
        let c = cache_key(
            "f",
            2,
            &Url::parse("http://o.test/x?b=2&a=1").unwrap(),
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
        let url = Url::parse("http://o.test/prices").unwrap();
        let r1 = req("sort=asc&page=1")
            .with_header("cookie", "session=alice; currency=EUR")
            .with_header("accept-language", " EN-gb ");
        let r2 = req("page=2&sort=asc")
            .with_header("cookie", "currency=EUR; session=bob")
            .with_header("accept-language", "en-GB");
        assert_eq!(
            cache_key("f", 0, &url, &vary, &r1),
            cache_key("f", 0, &url, &vary, &r2)
        );
        let r3 = req("sort=asc")
            .with_header("cookie", "currency=USD")
            .with_header("accept-language", "en-gb");
        assert_ne!(
            cache_key("f", 0, &url, &vary, &r1),
            cache_key("f", 0, &url, &vary, &r3)
        );
        assert!(!cache_key("f", 0, &url, &vary, &r1).contains("alice"));
    }

    #[test]
    fn long_keys_are_hashed_and_bounded() {
        let url = Url::parse(&format!("http://o.test/{}", "é".repeat(400)))
            .unwrap_or_else(|_| Url::parse(&format!("http://o.test/{}", "a".repeat(800))).unwrap());
        let k = cache_key("f", 0, &url, &Vary::default(), &req(""));
        assert!(k.len() <= 512, "{}", k.len());
        let url2 = Url::parse(&format!("http://o.test/{}b", "a".repeat(800))).unwrap();
        assert_ne!(k, cache_key("f", 0, &url2, &Vary::default(), &req("")));
    }
}
