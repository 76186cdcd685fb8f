//! Cache semantics: what a stored fragment looks like, when it is fresh,
//! stale or expired, what an origin response allows us to store, and the
//! in-isolate coordination that keeps a burst of requests from becoming a
//! burst at the origin.
//!
//! - [`entry`]: KV entry metadata and freshness classification, XFetch and
//!   TTL jitter.
//! - [`policy`]: origin response headers (`Cache-Control`,
//!   `Surrogate-Control`, `Set-Cookie`) → store or not, and for how long.
//! - [`key`]: cache keys, including declared variants.
//! - [`flight`]: the single-flight map (one origin fetch per key per isolate).
//! - [`backoff`]: jittered exponential back-off after failed refreshes.
//! - [`breaker`]: per-origin circuit breaker with single jittered probes.
//! - [`kv`]: bounded-time access to the fragment store.
//! - [`lru`]: the byte-bounded LRU map behind the isolate's memory caches.
//! - [`verdict`]: what an origin response becomes in the cache (entry,
//!   pass or failure), shared by every path that stores.

pub mod backoff;
pub mod breaker;
pub mod entry;
pub mod flight;
pub mod key;
pub mod kv;
pub mod lru;
pub mod policy;
pub mod verdict;

pub use entry::{EntryMeta, Freshness};

/// What happened to one fragment on this request. Feeds the `x-fragcache`
/// header, `Server-Timing`, logs and tests alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served fresh from the cache.
    Hit,
    /// Served fresh from the cache, and an early (XFetch) refresh started.
    Refresh,
    /// Served stale from the cache while a background refresh renews it.
    Stale,
    /// Not in the cache: this request fetched it from the origin.
    Miss,
    /// Not in the cache: another request was already fetching it and this
    /// one waited for that fetch instead of making its own.
    Coalesced,
    /// Not cacheable (private route or response): fetched for this request only.
    Bypass,
    /// Could not be loaded.
    Error,
    /// Still being looked up (in KV) when the page's headers went out: the
    /// final status is in the log, not the headers.
    Lookup,
}

impl CacheStatus {
    /// Lower-case name used in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Refresh => "refresh",
            CacheStatus::Stale => "stale",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Error => "error",
            CacheStatus::Lookup => "lookup",
        }
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
