//! The ports through which the core reaches the outside world.
//!
//! The core never reads a global clock, never draws randomness on its own,
//! never talks to KV or the network directly and never spawns work. Each of
//! those arrives through one of the traits below, so that the Worker adapter
//! can implement them on `Date.now`, `getrandom`, KV, `fetch` and
//! `ctx.wait_until`, while native tests implement them with a manual clock,
//! a seeded generator, an in-memory store and a scripted origin
//! (see `crate::testing`, behind the `testing` feature).
//!
//! None of the traits require `Send`: JavaScript futures are `!Send`, and
//! everything in a Worker isolate runs on one thread. Futures returned by the
//! ports are `'static` so that background work can own them outright.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use http::{HeaderMap, StatusCode};

use crate::cache::EntryMeta;
use crate::url::Url;

/// A boxed, single-threaded future.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// Wall-clock time and timers.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A future that completes after `ms` milliseconds. In the Worker it must
    /// be created by the request that awaits it: workerd ties timers to the
    /// request that made them (see [`Signals`] for how one request wakes
    /// another).
    fn sleep(&self, ms: u64) -> LocalFuture<()>;
}

/// A source of uniformly distributed randomness.
pub trait Rng {
    /// A uniformly distributed 64-bit value.
    fn next_u64(&self) -> u64;
    /// A uniformly distributed float in `[0, 1)`.
    fn next_f64(&self) -> f64 {
        // 53 random bits fill the mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Completes one waiting request's [`Signals::signal`] future. May be
/// called from another request (it only resolves the waiter's own promise).
pub type Wake = Box<dyn FnOnce()>;

/// One request waking another without sharing futures.
pub trait Signals {
    /// Creates a signal owned by the current request: a future that
    /// completes when the returned [`Wake`] is called (from any request) or
    /// after `timeout_ms`, whichever comes first. In the Worker the future
    /// is the request's own promise raced with its own timer, which is the
    /// only way workerd lets one request resume another (`docs/design.md` §2).
    fn signal(&self, timeout_ms: u64) -> (Wake, LocalFuture<()>);
}

/// Work that must outlive the response (`ctx.wait_until` in the Worker).
pub trait Background {
    /// Runs `fut` to completion even if the client goes away.
    fn spawn(&self, fut: LocalFuture<()>);
}

/// One stored fragment: its body and the metadata freshness needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// The fragment body as the origin sent it.
    pub body: Vec<u8>,
    /// Freshness and response metadata (KV metadata, ≤ 1024 bytes).
    pub meta: EntryMeta,
}

/// Why the fragment store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fragment store: {0}")]
pub struct StoreError(pub String);

/// What [`FragmentStore::list`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyList {
    /// The keys listed.
    pub keys: Vec<String>,
    /// Whether more keys matched than were listed.
    pub truncated: bool,
}

/// The shared fragment cache (Workers KV in production).
pub trait FragmentStore {
    /// Reads one entry; `Ok(None)` when absent.
    fn get(&self, key: &str) -> LocalFuture<Result<Option<StoredEntry>, StoreError>>;
    /// Live keys starting with `prefix` (for purging), as many as the store
    /// lists in one go; [`KeyList::truncated`] says whether there were more.
    fn list(&self, prefix: &str) -> LocalFuture<Result<KeyList, StoreError>>;
    /// Removes one entry.
    fn delete(&self, key: &str) -> LocalFuture<Result<(), StoreError>>;
    /// Writes one entry that the store may drop after `expiration_ttl_s`.
    fn put(
        &self,
        key: &str,
        entry: StoredEntry,
        expiration_ttl_s: u64,
    ) -> LocalFuture<Result<(), StoreError>>;
}

/// A request to the origin (always `GET`).
#[derive(Debug, Clone)]
pub struct OriginRequest {
    /// Absolute URL, already checked against the allow-list.
    pub url: Url,
    /// Request headers to send.
    pub headers: HeaderMap,
    /// Give up after this long.
    pub timeout_ms: u32,
    /// Bodies larger than this are refused.
    pub max_body_bytes: usize,
}

/// A complete origin response.
#[derive(Debug, Clone)]
pub struct OriginResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers, in order (repeats allowed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl OriginResponse {
    /// The first value of header `name`, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(crate::headers::text)
    }

    /// Every textual value of header `name`.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .filter_map(crate::headers::text)
    }

    /// Every value of header `name` joined with `, ` (one list, as RFC 9110
    /// allows for list-valued fields), or `None` when absent.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.header_all(name).collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// Why an origin fetch produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// No complete response within the timeout.
    #[error("origin timed out after {0} ms")]
    Timeout(u32),
    /// Connection refused, reset, DNS failure and the like.
    #[error("origin unreachable: {0}")]
    Network(String),
    /// The body exceeded the configured fragment size limit.
    #[error("origin body exceeds {0} bytes")]
    TooLarge(usize),
}

/// The origin server.
pub trait Origin {
    /// Fetches `req`, honouring its timeout and size limit.
    fn fetch(&self, req: OriginRequest) -> LocalFuture<Result<OriginResponse, OriginError>>;
}

/// Where log lines go (the Worker's console in production).
pub trait Log {
    /// Records one line of operator-facing diagnostics.
    fn log(&self, level: LogLevel, message: &str);
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Something worth knowing that needs no action.
    Info,
    /// Something went wrong and was handled (stale served, include dropped).
    Warn,
    /// A request could not be served as configured.
    Error,
}

/// All ports, bundled so they can be cloned into background work.
#[derive(Clone)]
pub struct Ports {
    /// Fragment cache.
    pub store: Rc<dyn FragmentStore>,
    /// Origin server.
    pub origin: Rc<dyn Origin>,
    /// Time and timers.
    pub clock: Rc<dyn Clock>,
    /// Randomness for jitter and XFetch.
    pub rng: Rc<dyn Rng>,
    /// Work that outlives the response.
    pub background: Rc<dyn Background>,
    /// Cross-request wake-ups for single-flight followers.
    pub signals: Rc<dyn Signals>,
    /// Diagnostics.
    pub log: Rc<dyn Log>,
    /// The cross-isolate coordinator, when the worker has one (a Durable
    /// Object binding); `None` keeps single-flight per isolate.
    pub coordinator: Option<Rc<dyn crate::coord::Coordinator>>,
}
