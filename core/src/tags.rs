//! Cache tags: what the origin says an entry is about, so that one purge can
//! reach every entry about one thing (`tag=product-42`).
//!
//! # Where tags come from
//!
//! A fragment or page shell response may carry `Cache-Tag` (Cloudflare's
//! form: comma-separated) and `Surrogate-Key` (Fastly's form:
//! space-separated), each possibly repeated. An entry's tags are the union
//! of both ([`parse_tags`]): trimmed, empties dropped, repeats dropped, in
//! the order first seen. Tags are compared exactly (case-sensitive).
//!
//! # Bounds
//!
//! A tag is at most [`MAX_TAG_BYTES`] bytes of visible ASCII (no spaces, no
//! commas, no controls); an entry keeps at most [`MAX_TAGS`] tags. A tag
//! that is too long or has other characters is dropped, and tags past the
//! first [`MAX_TAGS`] are ignored: the response is stored and served as
//! usual, it just cannot be purged by those tags (purge it by path). The
//! bounds keep an index key within KV's 512-byte key limit and the cost of
//! storing an entry bounded.
//!
//! # Where tags are stored
//!
//! KV metadata is limited to 1024 bytes and already holds up to four
//! header values, so tags do not fit there. They are stored in the KV
//! value, between a shell's header block and the body, as one line of
//! tags separated by spaces; [`crate::cache::EntryMeta::tag_bytes`] says
//! how long that block is. They travel with the value wherever it goes
//! (isolate memory, the coordinator's copy) at no extra KV operation.
//!
//! # The tag index
//!
//! Purge by tag must find the entries without reading every key. Each
//! (tag, entry key) pair has an index key in KV, [`index_key`]:
//! `t:{tag} {entry key}` (a tag has no spaces, so the first space ends it),
//! with an empty value. Purge lists by [`index_prefix`] and reads the entry
//! keys off the names. Index keys are written when an entry is stored with
//! tags it was not indexed under, and live twice the entry's hard TTL
//! ([`INDEX_LIFE_FACTOR`]); the entry's metadata records until when
//! ([`crate::cache::EntryMeta::index_until`]), so a refresh with the same
//! tags writes nothing to the index until the entry would outlive it.
//! Tags an entry loses on refresh have their index keys deleted.

use http::HeaderMap;

use crate::headers::text;

/// Most tags one entry keeps.
pub const MAX_TAGS: usize = 32;

/// Longest tag kept, in bytes: with the `t:` prefix, the separator and the
/// longest cache key (400 bytes), an index key stays within KV's 512.
pub const MAX_TAG_BYTES: usize = 100;

/// Start of every index key; cache keys start with a kind letter and a
/// route number, so no cache key starts with this.
pub const INDEX_PREFIX: &str = "t:";

/// Index keys live this many times the entry's hard TTL, so refreshes
/// within that span need no index write.
pub const INDEX_LIFE_FACTOR: u64 = 2;

/// Whether `tag` is a tag fragcache keeps (see the module doc's bounds).
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_BYTES
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// The tags of an origin response: `Cache-Tag` and `Surrogate-Key`
/// together, bounded as the module doc says.
pub fn parse_tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let cache_tag = headers
        .get_all("cache-tag")
        .iter()
        .filter_map(text)
        .flat_map(|v| v.split(','));
    let surrogate_key = headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(text)
        .flat_map(|v| v.split_ascii_whitespace());
    for t in cache_tag.chain(surrogate_key).map(str::trim) {
        if tags.len() >= MAX_TAGS {
            break;
        }
        if valid_tag(t) && !tags.iter().any(|k| k == t) {
            tags.push(t.to_owned());
        }
    }
    tags
}

/// The tag block stored ahead of the body: the tags separated by spaces.
pub fn encode(tags: &[String]) -> Vec<u8> {
    tags.join(" ").into_bytes()
}

/// Tags from a block written by [`encode`].
pub fn decode(block: &[u8]) -> Vec<String> {
    std::str::from_utf8(block)
        .unwrap_or("")
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The tags in a stored value whose header block is `header_bytes` long
/// and tag block `tag_bytes`.
pub fn of_value(header_bytes: u32, tag_bytes: u32, value: &[u8]) -> Vec<String> {
    let start = (header_bytes as usize).min(value.len());
    let end = start.saturating_add(tag_bytes as usize).min(value.len());
    decode(&value[start..end])
}

/// What purge by `tag` lists the store by.
pub fn index_prefix(tag: &str) -> String {
    format!("{INDEX_PREFIX}{tag} ")
}

/// The index key saying that entry `key` carries `tag`.
pub fn index_key(tag: &str, key: &str) -> String {
    format!("{INDEX_PREFIX}{tag} {key}")
}

/// The entry key an index key points at, if `index` is one for `tag`.
pub fn indexed_key<'a>(tag: &str, index: &'a str) -> Option<&'a str> {
    index
        .strip_prefix(INDEX_PREFIX)?
        .strip_prefix(tag)?
        .strip_prefix(' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_headers_union_trimmed_without_repeats() {
        let h = headers(&[
            ("cache-tag", " product-1, ,category:shoes,product-1"),
            ("surrogate-key", "  sale   product-1 home "),
            ("cache-tag", "extra"),
        ]);
        assert_eq!(
            parse_tags(&h),
            ["product-1", "category:shoes", "extra", "sale", "home"]
        );
        assert!(parse_tags(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn bounds_drop_tags_never_the_response() {
        let long = "x".repeat(MAX_TAG_BYTES + 1);
        let ok = "y".repeat(MAX_TAG_BYTES);
        let h = headers(&[("cache-tag", &format!("{long},{ok},a b,caf\u{e9}"))]);
        assert_eq!(parse_tags(&h), std::slice::from_ref(&ok));
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let h = headers(&[("surrogate-key", &many.join(" "))]);
        assert_eq!(parse_tags(&h), many[..MAX_TAGS]);
        // The longest index key fits KV's 512-byte limit.
        let key = "k".repeat(crate::cache::key::MAX_PLAIN_KEY);
        assert!(index_key(&ok, &key).len() <= 512);
    }

    #[test]
    fn blocks_and_index_keys_round_trip() {
        let tags = vec!["a".to_owned(), "b:c".to_owned()];
        assert_eq!(decode(&encode(&tags)), tags);
        assert!(decode(b"").is_empty());
        let k = index_key("a", "f0:http://o.test/x?q=1 2");
        assert!(k.starts_with(&index_prefix("a")));
        assert_eq!(indexed_key("a", &k), Some("f0:http://o.test/x?q=1 2"));
        assert_eq!(indexed_key("ab", &k), None);
        assert!(!index_key("ab", "k").starts_with(&index_prefix("a")));
    }
}
