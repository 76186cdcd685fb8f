//! The stored entry's metadata and freshness classification.
//!
//! A fragment is one KV entry: the value is the body (for a page shell,
//! preceded by its response headers), the metadata carries everything
//! freshness needs. KV's `expirationTtl` is the hard TTL (KV
//! requires at least 60 s); the soft TTL lives in the metadata, so it may be
//! shorter. Field names are single letters because KV metadata is limited to
//! 1024 bytes of JSON.

use serde::{Deserialize, Serialize};

/// Version of the metadata layout; entries of another version are ignored
/// (treated as absent) rather than misread.
pub const META_VERSION: u8 = 3;

/// Longest header value kept in metadata, so the JSON stays under KV's
/// 1024-byte metadata limit whatever the origin sends.
const MAX_META_STRING: usize = 160;

/// Metadata stored with every cached fragment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Layout version ([`META_VERSION`]).
    #[serde(rename = "v")]
    pub version: u8,
    /// When the origin response was stored (ms since epoch).
    #[serde(rename = "s")]
    pub stored_at: u64,
    /// End of the soft TTL: fresh before this instant (ms).
    #[serde(rename = "f")]
    pub fresh_until: u64,
    /// End of the hard TTL: may be served stale before this instant (ms).
    #[serde(rename = "x")]
    pub stale_until: u64,
    /// HTTP status of the stored response (200, or 404/410 when negatively cached).
    #[serde(rename = "c")]
    pub status: u16,
    /// `Content-Type` of the stored response.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `ETag` validator.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Last-Modified` validator.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// `Cache-Control` the origin sent (passed on for page shells).
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// How long the origin fetch took (ms): XFetch's Δ.
    #[serde(rename = "d")]
    pub fetch_ms: u32,
    /// Whether the origin asked for ESI processing (`Surrogate-Control: content="ESI/1.0"`).
    #[serde(rename = "z", default)]
    pub esi: bool,
    /// Length of the header block at the start of the stored value (a page
    /// shell's response headers, see [`crate::headers::encode_block`]); 0
    /// when the value is the body alone.
    #[serde(rename = "h", default, skip_serializing_if = "is_zero")]
    pub header_bytes: u32,
    /// Length of the tag block after the header block (see [`crate::tags`]);
    /// 0 when the entry has no tags.
    #[serde(rename = "g", default, skip_serializing_if = "is_zero")]
    pub tag_bytes: u32,
    /// Until when (ms) the tag index keys of this entry's tags live; 0 when
    /// none were written. A refresh with the same tags that ends before
    /// this writes no index key.
    #[serde(rename = "i", default, skip_serializing_if = "is_zero_u64")]
    pub index_until: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EntryMeta {
    /// Metadata for a response stored at `stored_at` (all times in ms).
    pub fn new(
        stored_at: u64,
        fresh_until: u64,
        stale_until: u64,
        status: u16,
        fetch_ms: u32,
    ) -> Self {
        EntryMeta {
            version: META_VERSION,
            stored_at,
            fresh_until,
            stale_until,
            status,
            content_type: None,
            etag: None,
            last_modified: None,
            cache_control: None,
            fetch_ms,
            esi: false,
            header_bytes: 0,
            tag_bytes: 0,
            index_until: 0,
        }
    }

    /// Records the response headers worth keeping, dropping any value too
    /// long to fit KV's metadata limit.
    pub fn with_headers(
        mut self,
        content_type: Option<&str>,
        etag: Option<&str>,
        last_modified: Option<&str>,
        cache_control: Option<&str>,
    ) -> Self {
        let keep = |v: Option<&str>| v.filter(|s| s.len() <= MAX_META_STRING).map(str::to_owned);
        self.content_type = keep(content_type);
        self.etag = keep(etag);
        self.last_modified = keep(last_modified);
        self.cache_control = keep(cache_control);
        self
    }

    /// Where `now` falls in this entry's life.
    pub fn classify(&self, now: u64) -> Freshness {
        classify(self.fresh_until, self.stale_until, now)
    }

    /// Age in whole seconds at `now`.
    pub fn age_s(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at) / 1000
    }
}

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Before the soft TTL: serve it.
    Fresh,
    /// Between soft and hard TTL: serve it and refresh in the background.
    Stale,
    /// Past the hard TTL: treat as absent.
    Expired,
}

/// Classifies `now` against the soft (`fresh_until`) and hard
/// (`stale_until`) deadlines. Both bounds are exclusive: at exactly
/// `fresh_until` the entry is stale, at exactly `stale_until` expired.
pub fn classify(fresh_until: u64, stale_until: u64, now: u64) -> Freshness {
    if now < fresh_until {
        Freshness::Fresh
    } else if now < stale_until {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

/// XFetch probabilistic early refresh (Vattani et al.): refresh a fresh
/// entry when `now − Δ·β·ln(u) ≥ fresh_until`, where Δ is how long the last
/// fetch took and `u` is uniform in (0, 1]. Expensive, popular fragments are
/// renewed shortly before they go stale, so they rarely do. `beta == 0`
/// disables it.
pub fn xfetch_due(meta: &EntryMeta, now: u64, beta: f64, uniform: f64) -> bool {
    if beta <= 0.0 || now >= meta.fresh_until {
        return false;
    }
    // u in [0,1) from the RNG; map to (0,1] so ln never sees 0.
    let u = 1.0 - uniform.clamp(0.0, 1.0 - f64::EPSILON);
    let delta = f64::from(meta.fetch_ms.max(1));
    let lead = -delta * beta * u.ln();
    now as f64 + lead >= meta.fresh_until as f64
}

/// Scales `ttl_s` by a random factor in `[1 − jitter, 1 + jitter)`, so
/// fragments stored together do not all expire together. Returns
/// milliseconds and never less than one second.
pub fn jittered_ms(ttl_s: u32, jitter: f64, uniform: f64) -> u64 {
    let jitter = jitter.clamp(0.0, 0.5);
    let factor = 1.0 + jitter * (2.0 * uniform.clamp(0.0, 1.0) - 1.0);
    let ms = (f64::from(ttl_s) * 1000.0 * factor).round();
    (ms as u64).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(fresh_until: u64, stale_until: u64, fetch_ms: u32) -> EntryMeta {
        EntryMeta::new(0, fresh_until, stale_until, 200, fetch_ms)
    }

    #[test]
    fn classification_boundaries() {
        let m = meta(1000, 5000, 10);
        assert_eq!(m.classify(0), Freshness::Fresh);
        assert_eq!(m.classify(999), Freshness::Fresh);
        assert_eq!(m.classify(1000), Freshness::Stale);
        assert_eq!(m.classify(4999), Freshness::Stale);
        assert_eq!(m.classify(5000), Freshness::Expired);
        assert_eq!(m.classify(u64::MAX), Freshness::Expired);
        // Soft == hard: never stale.
        assert_eq!(classify(10, 10, 9), Freshness::Fresh);
        assert_eq!(classify(10, 10, 10), Freshness::Expired);
    }

    #[test]
    fn metadata_round_trips_and_stays_small() {
        let long = "x".repeat(5000);
        let mut m = EntryMeta::new(1, 2, 3, 200, 150).with_headers(
            Some("text/html; charset=utf-8"),
            Some(&long),
            Some("Wed, 21 Oct 2026 07:28:00 GMT"),
            Some("max-age=60"),
        );
        m.esi = true;
        assert_eq!(m.etag, None, "oversized validators are dropped");
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.len() < 1024, "{json}");
        let back: EntryMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        // Worst case: every kept string at the limit.
        let s = "y".repeat(MAX_META_STRING);
        let mut m = EntryMeta::new(u64::MAX, u64::MAX, u64::MAX, 599, u32::MAX).with_headers(
            Some(&s),
            Some(&s),
            Some(&s),
            Some(&s),
        );
        m.esi = true;
        m.header_bytes = u32::MAX;
        m.tag_bytes = u32::MAX;
        m.index_until = u64::MAX;
        assert!(serde_json::to_string(&m).unwrap().len() < 1024);
    }

    #[test]
    fn xfetch_never_fires_when_disabled_or_stale_and_always_near_expiry() {
        let m = meta(10_000, 20_000, 100);
        assert!(!xfetch_due(&m, 9_999, 0.0, 0.999));
        assert!(
            !xfetch_due(&m, 10_000, 1.0, 0.999),
            "stale is handled elsewhere"
        );
        // Far from expiry with a typical draw: no early refresh.
        assert!(!xfetch_due(&m, 0, 1.0, 0.5));
        // The most extreme draw leads by Δ·36 (ln of f64::EPSILON), no more.
        assert!(xfetch_due(&m, 7_000, 1.0, 1.0));
        assert!(!xfetch_due(&m, 6_000, 1.0, 1.0));
        // One Δ before expiry, a median draw (ln 0.5 ≈ −0.69) is not enough; a low one is.
        assert!(!xfetch_due(&m, 9_900, 1.0, 0.4));
        assert!(xfetch_due(&m, 9_900, 1.0, 0.7));
    }

    #[test]
    fn xfetch_probability_grows_towards_expiry() {
        let m = meta(10_000, 20_000, 200);
        let rate = |now: u64| {
            (0..1000)
                .filter(|i| xfetch_due(&m, now, 1.0, f64::from(*i) / 1000.0))
                .count()
        };
        let (far, mid, near) = (rate(8_000), rate(9_700), rate(9_990));
        assert!(far < mid && mid < near, "{far} {mid} {near}");
        assert!(far < 10, "{far}");
        assert!(near > 900, "{near}");
    }

    #[test]
    fn jitter_stays_in_band() {
        assert_eq!(jittered_ms(30, 0.0, 0.7), 30_000);
        assert_eq!(jittered_ms(30, 0.1, 0.0), 27_000);
        assert_eq!(jittered_ms(30, 0.1, 0.5), 30_000);
        assert!(jittered_ms(30, 0.1, 0.999_999) <= 33_000);
        assert_eq!(jittered_ms(0, 0.1, 0.5), 1000, "never below one second");
        assert_eq!(
            jittered_ms(30, 9.0, 0.0),
            15_000,
            "jitter is clamped to 50%"
        );
    }
}
