//! Loading one fragment (or page shell) through the cache.
//!
//! A load happens in two steps so that the page can send its headers as soon
//! as the cache status of every top-level include is known, without waiting
//! for any origin fetch:
//!
//! 1. [`Loader::lookup_fragment`] (or [`Loader::lookup_page`]) matches the
//!    URL to a route, finds the entry (isolate memory, else KV) and
//!    classifies it. Fresh and stale entries are ready at once (a stale one, or a
//!    fresh one that XFetch picks for early renewal, starts one background
//!    refresh if none is in flight and the key is not backing off). Private
//!    and uncacheable URLs, and cold keys, come back pending.
//! 2. [`Lookup::finish`] completes a pending load: a private fetch for this
//!    request alone, or a cold load through the single-flight map, where the
//!    leader's fetch runs as background work and everyone, leader included,
//!    waits for the outcome on a signal of their own (see
//!    [`crate::cache::flight`] and [`crate::ports::Signals`]).
//!
//! What the origin returns decides what is stored ([`crate::cache::policy`]).
//! A refresh that fails never overwrites a good entry, and sets the key's
//! back-off; a KV read error counts as a miss; a KV write error is logged.
//! Every KV call is bounded in time ([`crate::cache::kv`]): a read that
//! times out is a miss, a write that times out is logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::cache::backoff::Backoff;
use crate::cache::entry::{jittered_ms, xfetch_due, META_VERSION};
use crate::cache::flight::{FlightHandle, Flights, Join, LeaderGuard};
use crate::cache::key::{cache_key, header_value};
use crate::cache::kv::{TimedStore, KV_READ_TIMEOUT_MS, KV_WRITE_TIMEOUT_MS};
use crate::cache::lru::Lru;
use crate::cache::policy::{decide, parse_directives, Decision, ResponseHeaders, RoutePolicy};
use crate::cache::{CacheStatus, EntryMeta, Freshness};
use crate::config::{ColdPolicy, Config, FragmentRoute, PageRoute, Vary, UNFORWARDABLE_HEADERS};
use crate::esi::Template;
use crate::headers::{
    decode_block, encode_block, keep_from_origin, value as to_header_value, MAX_STORED_HEADER_BYTES,
};
use crate::ports::{
    LocalFuture, Log, LogLevel, OriginError, OriginRequest, OriginResponse, Ports, StoreError,
    StoredEntry,
};
use crate::purge::PurgeLog;
use crate::request::ClientRequest;
use crate::url::Url;

/// Header that tells the origin we process ESI (Edge Architecture Spec).
pub const SURROGATE_CAPABILITY: (&str, &str) = ("surrogate-capability", "fragcache=\"ESI/1.0\"");

/// Request headers that describe one connection and are never forwarded.
pub const HOP_BY_HOP: &[&str] = UNFORWARDABLE_HEADERS.split_at(2).1;

/// Headers forwarded for includes that match no fragment route.
const DEFAULT_FORWARD: &[&str] = &["accept-language", "user-agent"];

/// A loaded fragment: plain bytes and the few headers that matter. This is
/// the only thing that ever crosses from one request to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// Origin status (a cached 404 keeps its 404).
    pub status: StatusCode,
    /// The body.
    pub body: Rc<[u8]>,
    /// For a page shell, the origin's response headers that the page may
    /// carry ([`crate::headers::keep_from_origin`]); empty for fragments,
    /// whose headers never reach the page.
    pub headers: HeaderMap,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control` as the origin sent it.
    pub cache_control: Option<String>,
    /// Origin asked for ESI processing (`Surrogate-Control: content="ESI/1.0"`).
    pub esi: bool,
    /// When the body left the origin (ms); with `cache_key`, identifies the version.
    pub stored_at: u64,
    /// The cache key, for cacheable fragments.
    pub cache_key: Option<String>,
    /// `Set-Cookie` values (private fragments only; empty otherwise).
    pub set_cookies: Vec<String>,
}

impl Fragment {
    fn from_response(
        resp: &OriginResponse,
        now: u64,
        key: Option<&str>,
        keep_cookies: bool,
        keep_headers: bool,
    ) -> Self {
        Fragment {
            status: resp.status,
            body: Rc::from(resp.body.as_slice()),
            headers: if keep_headers {
                keep_from_origin(&resp.headers)
            } else {
                HeaderMap::new()
            },
            content_type: resp.header("content-type").map(str::to_owned),
            cache_control: resp.header_joined("cache-control"),
            esi: resp
                .header_joined("surrogate-control")
                .is_some_and(|v| parse_directives(&v).esi),
            stored_at: now,
            cache_key: key.map(str::to_owned),
            set_cookies: if keep_cookies {
                resp.header_all("set-cookie").map(str::to_owned).collect()
            } else {
                Vec::new()
            },
        }
    }

    fn from_entry(entry: StoredEntry, key: &str) -> Self {
        // A cached shell's value starts with its header block.
        let split = (entry.meta.header_bytes as usize).min(entry.body.len());
        let (block, body) = entry.body.split_at(split);
        Fragment {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            body: Rc::from(body),
            headers: decode_block(block),
            content_type: entry.meta.content_type,
            cache_control: entry.meta.cache_control,
            esi: entry.meta.esi,
            stored_at: entry.meta.stored_at,
            cache_key: Some(key.to_owned()),
            set_cookies: Vec::new(),
        }
    }
}

/// Why a fragment could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The origin fetch failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The origin answered with a server error.
    #[error("origin answered {}", .0.as_u16())]
    Status(StatusCode),
    /// Cold key, `cold = "fail"` route, and another request is fetching it.
    #[error("fragment is cold and being fetched; retry after {retry_after_s} s")]
    ColdBusy {
        /// Seconds the client should wait.
        retry_after_s: u32,
    },
    /// Waited for another request's fetch longer than `cold_wait_ms`.
    #[error("gave up waiting for the fragment after {0} ms")]
    WaitTimeout(u64),
    /// The leader's load ended without an outcome (it was cancelled).
    #[error("the load this request waited for was abandoned")]
    Abandoned,
}

/// What a flight publishes to the requests waiting on it.
#[derive(Debug)]
pub enum Outcome {
    /// A body any request may use.
    Shared(Rc<Fragment>),
    /// The origin marked the response personal (private, no-store,
    /// Set-Cookie): only the leader may use it; followers fetch their own.
    Personal(Rc<Fragment>),
    /// The load failed.
    Failed(LoadError),
}

/// Compiled templates, kept per isolate so a cache hit does not re-parse.
/// Bounded by bytes ([`TEMPLATE_MEMO_MAX_BYTES`]: source plus an estimate of
/// the compiled nodes), least recently used evicted first.
pub struct TemplateMemo {
    lru: RefCell<Lru<(u64, Rc<Template>)>>,
}

impl Default for TemplateMemo {
    fn default() -> Self {
        TemplateMemo {
            lru: RefCell::new(Lru::new(
                TEMPLATE_MEMO_MAX_BYTES,
                TEMPLATE_MEMO_MAX_BYTES / 4,
            )),
        }
    }
}

/// Bytes of compiled templates kept per isolate.
pub const TEMPLATE_MEMO_MAX_BYTES: usize = 8 << 20;

/// Estimated memory of one compiled template: its copy of the source plus,
/// per ESI tag or variable reference in it, room for a few nodes.
fn template_bytes(t: &Template) -> usize {
    const PER_MARKUP: usize = 4 * 64;
    let src = t.source();
    let markup = memchr::memmem::find_iter(src, b"<esi:").count()
        + memchr::memmem::find_iter(src, b"$(").count()
        + memchr::memmem::find_iter(src, b"<!--esi").count();
    src.len()
        .saturating_add(markup.saturating_mul(PER_MARKUP))
        .saturating_add(std::mem::size_of::<Template>())
}

impl TemplateMemo {
    /// The compiled form of `frag` (from `url`), compiling it on first use
    /// of this version and logging its ESI warnings then.
    pub fn get(&self, frag: &Fragment, url: &Url, log: &dyn Log) -> Rc<Template> {
        let compile = || {
            let t = Template::compile(&frag.body);
            // Once per compiled version, not on every request that uses it.
            for w in t.warnings() {
                log.log(LogLevel::Warn, &format!("{url}: ESI: {w}"));
            }
            Rc::new(t)
        };
        let Some(key) = &frag.cache_key else {
            return compile();
        };
        if let Some((stored_at, t)) = self.lru.borrow_mut().get(key) {
            if stored_at == frag.stored_at {
                return t;
            }
        }
        let t = compile();
        let size = template_bytes(&t);
        self.lru
            .borrow_mut()
            .insert(key, (frag.stored_at, Rc::clone(&t)), size);
        t
    }

    /// Bytes charged for the templates held.
    pub fn bytes(&self) -> usize {
        self.lru.borrow().bytes()
    }
}

/// Entries this isolate has seen recently (fetched or read from KV): a
/// per-isolate memory cache in front of KV. While a copy here is fresh it is
/// served without a KV read; once stale, KV is asked for a newer one. It
/// also covers for KV's eventual consistency: a read right after a write may
/// return the old value, or nothing, for up to 60 s. Only cacheable entries
/// ever get here; private fragments never do.
///
/// Bounded by [`RECENT_MAX_BYTES`], counting bodies, keys and metadata
/// ([`Recent::entry_bytes`]); the least recently used entries are evicted
/// first, and an entry over [`RECENT_MAX_ENTRY_BYTES`] is not kept.
pub struct Recent {
    lru: RefCell<Lru<Cached>>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            lru: RefCell::new(Lru::new(RECENT_MAX_BYTES, RECENT_MAX_ENTRY_BYTES)),
        }
    }
}

/// Upper bound of [`Recent`] (the isolate has 128 MB in all).
pub const RECENT_MAX_BYTES: usize = 16 << 20;

/// Largest single entry [`Recent`] keeps.
pub const RECENT_MAX_ENTRY_BYTES: usize = RECENT_MAX_BYTES / 8;

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

impl Recent {
    /// What one entry costs besides its key: body, header strings kept in
    /// the metadata and the fragment, and the structs themselves.
    pub fn entry_bytes(meta: &EntryMeta, frag: &Fragment) -> usize {
        frag.body.len()
            + opt_len(&meta.content_type)
            + opt_len(&meta.etag)
            + opt_len(&meta.last_modified)
            + opt_len(&meta.cache_control)
            + opt_len(&frag.content_type)
            + opt_len(&frag.cache_control)
            + opt_len(&frag.cache_key)
            + frag
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + std::mem::size_of::<EntryMeta>()
            + std::mem::size_of::<Fragment>()
    }

    fn remember(&self, key: &str, meta: &EntryMeta, frag: &Rc<Fragment>) {
        let size = Self::entry_bytes(meta, frag);
        self.lru
            .borrow_mut()
            .insert(key, (meta.clone(), Rc::clone(frag)), size);
    }

    /// Drops every remembered copy whose key starts with `prefix`.
    pub fn forget_prefix(&self, prefix: &str) {
        self.lru.borrow_mut().remove_prefix(prefix);
    }

    /// Drops the remembered copy of `key`.
    fn forget(&self, key: &str) {
        self.lru.borrow_mut().remove(key);
    }

    /// The remembered copy of `key` (marking it recently used).
    fn get(&self, key: &str) -> Option<Cached> {
        self.lru.borrow_mut().get(key)
    }

    /// Bytes charged for the entries held.
    pub fn bytes(&self) -> usize {
        self.lru.borrow().bytes()
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.lru.borrow().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lru.borrow().is_empty()
    }
}

/// An entry as held in memory: metadata and the shareable fragment.
type Cached = (EntryMeta, Rc<Fragment>);

/// The result of one KV read: the entry if present in the current layout.
type StoreRead = Result<Option<Cached>, StoreError>;

/// Time a flight may spend after its origin fetch timed out: the
/// write-back's check for a newer copy and its write, each bounded by
/// [`crate::cache::kv`].
pub const FLIGHT_WRITE_BUDGET_MS: u64 = KV_READ_TIMEOUT_MS + KV_WRITE_TIMEOUT_MS;

/// How long a flight with origin timeout `timeout_ms` may live: its fetch
/// timeout plus [`FLIGHT_WRITE_BUDGET_MS`]. An older flight is dead: the
/// next request leads a new one and waiters stop waiting (the fetch port
/// is trusted to honour its timeout, but not relied on to).
pub fn flight_lifetime_ms(timeout_ms: u32) -> u64 {
    u64::from(timeout_ms) + FLIGHT_WRITE_BUDGET_MS
}

/// State shared by every request in one isolate.
#[derive(Default)]
pub struct Shared {
    /// In-flight origin loads by cache key.
    pub flights: Rc<Flights<Outcome>>,
    /// In-flight KV reads by cache key: a burst on a key this isolate has
    /// no fresh copy of makes one KV read, not one per request.
    reads: Rc<Flights<StoreRead>>,
    /// Back-off after failed refreshes.
    pub backoff: Backoff,
    /// Compiled templates.
    pub templates: TemplateMemo,
    /// Recently fetched entries, covering for KV's eventual consistency.
    pub recent: Recent,
    /// When this isolate last wrote each key (ms), to respect KV's one write
    /// per second per key.
    last_write: RefCell<HashMap<String, u64>>,
    /// Recent purges: fetches that started before one covering their key
    /// neither keep nor store what they got.
    pub purges: PurgeLog,
    /// Keys the origin recently answered as personal (`private`,
    /// `no-store`, `Set-Cookie`), until when (ms): "hit-for-pass". Until
    /// then they are fetched per request without joining a flight, and the
    /// page knows they are private before its headers go out.
    personal: RefCell<HashMap<String, u64>>,
}

/// Most hit-for-pass marks an isolate keeps; past that, expired ones go
/// and, if none had, all of them (they are only an optimisation).
const MAX_PERSONAL_MARKS: usize = 10_000;

impl Shared {
    /// Forgets everything this isolate remembers about keys starting with
    /// `prefix` (after a purge): memory copies and the write throttle, so the
    /// next fetch is stored at once.
    pub fn forget_prefix(&self, prefix: &str) {
        self.recent.forget_prefix(prefix);
        self.personal
            .borrow_mut()
            .retain(|k, _| !k.starts_with(prefix));
        self.last_write
            .borrow_mut()
            .retain(|k, _| !k.starts_with(prefix));
    }

    /// Remembers that the origin answered `key` as personal, until `until`.
    fn mark_personal(&self, key: &str, until: u64, now: u64) {
        let mut marks = self.personal.borrow_mut();
        if marks.len() >= MAX_PERSONAL_MARKS {
            marks.retain(|_, t| *t > now);
            if marks.len() >= MAX_PERSONAL_MARKS {
                marks.clear();
            }
        }
        marks.insert(key.to_owned(), until);
    }

    /// Whether `key` is marked personal at `now`.
    fn is_personal(&self, key: &str, now: u64) -> bool {
        self.personal.borrow().get(key).is_some_and(|t| *t > now)
    }

    /// Fresh isolate state.
    pub fn new() -> Rc<Self> {
        Rc::new(Shared::default())
    }
}

/// How one URL is to be loaded: derived from its route.
#[derive(Debug, Clone)]
struct Policy {
    kind: &'static str,
    route_id: usize,
    /// `None`: never cached.
    cache: Option<CachePolicy>,
    /// Fetched with the user's credentials; makes the page private.
    private: bool,
    timeout_ms: u32,
    forward: Vec<String>,
    pass_set_cookie: bool,
    vary: VaryHint,
    /// A page shell: its response headers are kept for the page, and its
    /// body may be as large as `limits.max_shell_bytes`.
    shell: bool,
}

#[derive(Debug, Clone)]
struct CachePolicy {
    route: RoutePolicy,
    cold: ColdPolicy,
    xfetch_beta: f64,
    jitter: f64,
    vary: Vary,
}

impl Policy {
    fn for_fragment(r: &FragmentRoute, req: &ClientRequest) -> Policy {
        let private_if_cookie = r
            .cache
            .as_ref()
            .and_then(|c| c.private_if_cookie.as_deref());
        let signed_in = private_if_cookie.is_some_and(|c| req.cookie(c).is_some());
        let private = r.private || signed_in;
        Policy {
            kind: "f",
            route_id: r.id,
            cache: r.cache.as_ref().filter(|_| !private).map(|c| CachePolicy {
                route: RoutePolicy {
                    soft_ttl: c.ttls.soft,
                    hard_ttl: c.ttls.hard,
                    negative_ttl: c.negative_ttl,
                    honor_origin_headers: c.honor_origin_headers,
                },
                cold: c.cold.clone(),
                xfetch_beta: c.xfetch_beta,
                jitter: c.jitter,
                vary: r.vary.clone(),
            }),
            private,
            timeout_ms: r.timeout_ms,
            forward: r.forward_headers.clone(),
            pass_set_cookie: r.pass_set_cookie,
            shell: false,
            vary: VaryHint {
                headers: r.vary.headers.clone(),
                cookie: !r.vary.cookies.is_empty() || private_if_cookie.is_some(),
                country: r.vary.country,
            },
        }
    }

    fn for_page(r: &PageRoute, config: &Config) -> Policy {
        let timeout_ms = config.limits.fragment_timeout_ms;
        Policy {
            kind: "p",
            route_id: r.id,
            cache: r.ttls.as_ref().map(|t| CachePolicy {
                route: RoutePolicy {
                    soft_ttl: t.soft,
                    hard_ttl: t.hard,
                    negative_ttl: 0,
                    honor_origin_headers: false,
                },
                cold: ColdPolicy::Wait { timeout_ms },
                xfetch_beta: crate::config::DEFAULT_XFETCH_BETA,
                jitter: crate::config::DEFAULT_JITTER,
                vary: Vary::default(),
            }),
            // An uncached shell is fetched per request with credentials, like
            // a private fragment, but does not by itself make the page private:
            // the origin's own Cache-Control for it is passed on.
            private: false,
            timeout_ms,
            // A cached shell must not depend on the first requester's headers.
            forward: if r.ttls.is_some() {
                Vec::new()
            } else {
                DEFAULT_FORWARD.iter().map(|s| (*s).to_owned()).collect()
            },
            pass_set_cookie: true,
            shell: true,
            vary: VaryHint::default(),
        }
    }

    fn unrouted(config: &Config) -> Policy {
        Policy {
            kind: "u",
            route_id: 0,
            cache: None,
            private: true,
            timeout_ms: config.limits.fragment_timeout_ms,
            forward: DEFAULT_FORWARD.iter().map(|s| (*s).to_owned()).collect(),
            pass_set_cookie: false,
            shell: false,
            vary: VaryHint::default(),
        }
    }
}

/// What a cached fragment's content depends on besides its URL, so that a
/// page built from it can tell downstream caches (`Vary`) or stay private.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryHint {
    /// Request headers (lower-case) the content varies on.
    pub headers: Vec<String>,
    /// Whether it varies on cookies (selected cookies, or signed-in state).
    pub cookie: bool,
    /// Whether it varies on the client's country, which `Vary` cannot express.
    pub country: bool,
}

impl VaryHint {
    /// Adds what `other` varies on.
    pub fn merge(&mut self, other: &VaryHint) {
        for h in &other.headers {
            if !self.headers.contains(h) {
                self.headers.push(h.clone());
            }
        }
        self.cookie |= other.cookie;
        self.country |= other.country;
    }
}

/// A first-step result: the cache status is known, the body may not be.
pub struct Lookup {
    /// Cache status as far as known (a pending miss may end as an error).
    pub status: CacheStatus,
    /// Age of the served entry in seconds, for cache hits.
    pub age_s: Option<u64>,
    /// Whether this fragment is user-specific (the page must be private).
    pub private: bool,
    /// Whether the response headers must wait for this load, because its
    /// `Set-Cookie` is to be passed to the client.
    pub wants_set_cookie: bool,
    /// What the content depends on besides the URL.
    pub vary: VaryHint,
    inner: LookupInner,
}

enum LookupInner {
    Ready(Result<Rc<Fragment>, LoadError>),
    Pending(LocalFuture<(CacheStatus, Result<Rc<Fragment>, LoadError>)>),
}

impl Lookup {
    fn ready(
        status: CacheStatus,
        age_s: Option<u64>,
        private: bool,
        r: Result<Rc<Fragment>, LoadError>,
    ) -> Self {
        Lookup {
            status,
            age_s,
            private,
            wants_set_cookie: false,
            vary: VaryHint::default(),
            inner: LookupInner::Ready(r),
        }
    }

    /// Completes a pending load now, keeping the result for [`Lookup::finish`].
    pub async fn settle(self) -> Lookup {
        let (status, r) = match self.inner {
            LookupInner::Ready(r) => (self.status, r),
            LookupInner::Pending(f) => f.await,
        };
        Lookup {
            status,
            inner: LookupInner::Ready(r),
            ..self
        }
    }

    /// Whether the body is already known (a cache hit, a stale copy, or a
    /// settled load).
    pub fn is_ready(&self) -> bool {
        matches!(self.inner, LookupInner::Ready(_))
    }

    /// The fragment, when it is already known.
    pub fn ready_fragment(&self) -> Option<&Rc<Fragment>> {
        match &self.inner {
            LookupInner::Ready(Ok(f)) => Some(f),
            _ => None,
        }
    }

    /// The `Set-Cookie` values of a settled load.
    pub fn set_cookies(&self) -> &[String] {
        match &self.inner {
            LookupInner::Ready(Ok(f)) => &f.set_cookies,
            _ => &[],
        }
    }

    /// Completes the load: the final status and the fragment.
    pub async fn finish(self) -> (CacheStatus, Result<Rc<Fragment>, LoadError>) {
        match self.inner {
            LookupInner::Ready(r) => (self.status, r),
            LookupInner::Pending(f) => f.await,
        }
    }
}

/// Loads fragments for one client request.
#[derive(Clone)]
pub struct Loader {
    ports: Ports,
    shared: Rc<Shared>,
    config: Rc<Config>,
    req: Rc<ClientRequest>,
}

impl Loader {
    /// A loader for one client request. Every store call made through it
    /// (reads, write-backs, purges) is bounded in time ([`TimedStore`]).
    pub fn new(
        mut ports: Ports,
        shared: Rc<Shared>,
        config: Rc<Config>,
        req: Rc<ClientRequest>,
    ) -> Self {
        ports.store = TimedStore::wrap(ports.store, Rc::clone(&ports.clock));
        Loader {
            ports,
            shared,
            config,
            req,
        }
    }

    /// The ports this loader uses.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The isolate's shared state.
    pub fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }

    /// The validated configuration.
    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    /// The client request being served.
    pub fn request(&self) -> &Rc<ClientRequest> {
        &self.req
    }

    /// Step one for an include (already resolved and allow-listed).
    pub async fn lookup_fragment(&self, url: &Url) -> Lookup {
        let policy = if url.origin() == self.config.origin {
            match self.config.fragment_route(url.path()) {
                Some(r) => Policy::for_fragment(r, &self.req),
                None => Policy::unrouted(&self.config),
            }
        } else {
            Policy::unrouted(&self.config)
        };
        self.lookup(url, policy).await
    }

    /// Step one for a page shell.
    pub async fn lookup_page(&self, url: &Url, route: &PageRoute) -> Lookup {
        let policy = Policy::for_page(route, &self.config);
        self.lookup(url, policy).await
    }

    async fn lookup(&self, url: &Url, policy: Policy) -> Lookup {
        let vary = policy.vary.clone();
        let mut lookup = self.lookup_with(url, policy).await;
        lookup.vary = vary;
        lookup
    }

    async fn lookup_with(&self, url: &Url, policy: Policy) -> Lookup {
        let Some(cache) = policy.cache.clone() else {
            return self.direct(url, policy);
        };
        let key = cache_key(policy.kind, policy.route_id, url, &cache.vary, &self.req);
        let now = self.ports.clock.now_ms();
        if self.shared.is_personal(&key, now) {
            return self.personal_pass(url, policy);
        }
        // This isolate's own copy, if still fresh, answers without a KV read;
        // otherwise KV may hold a newer one (another isolate refreshed it).
        let mut found = self.shared.recent.get(&key);
        let here = found.as_ref().map(|(m, _)| m.classify(now));
        // While a fetch of this key is in flight here, KV cannot know better
        // than its outcome when this isolate has a stale copy to serve
        // meanwhile, or when the flight's leader found nothing usable in KV
        // before starting: a burst on a stale or cold key then costs one KV
        // read, not one per request. Without a copy of its own, a request
        // reads KV even while a refresh is in flight (reads are shared), so
        // a stale copy there is served rather than waiting on a refresh that
        // may fail.
        let flight = self.shared.flights.current(&key, now);
        let skip_read = here == Some(Freshness::Fresh)
            || flight
                .as_ref()
                .is_some_and(|f| f.nothing_stored() || here == Some(Freshness::Stale));
        // Whether KV answered and had nothing usable.
        let mut nothing_stored = false;
        if !skip_read {
            match self.read(&key, policy.timeout_ms).await {
                Ok(Some(read)) => {
                    nothing_stored = read.0.classify(now) == Freshness::Expired;
                    if found
                        .as_ref()
                        .is_none_or(|(m, _)| read.0.stored_at > m.stored_at)
                    {
                        found = Some(read);
                    }
                }
                Ok(None) => nothing_stored = true,
                // Logged by the read; KV's content is unknown.
                Err(_) => {}
            }
        }
        // The awaits above let other requests run: one may have fetched and
        // stored this key meanwhile. Look again before going cold, with no
        // await between this check and joining the flight map.
        if let Some(mem) = self.shared.recent.get(&key) {
            if found
                .as_ref()
                .is_none_or(|(m, _)| mem.0.stored_at > m.stored_at)
            {
                found = Some(mem);
            }
        }
        if let Some((meta, frag)) = found {
            let now = self.ports.clock.now_ms().max(now);
            let age = Some(meta.age_s(now));
            match meta.classify(now) {
                Freshness::Fresh => {
                    let early = cache.xfetch_beta > 0.0
                        && xfetch_due(&meta, now, cache.xfetch_beta, self.ports.rng.next_f64());
                    let status = if early && self.start_refresh(&key, url, &policy, now) {
                        CacheStatus::Refresh
                    } else {
                        CacheStatus::Hit
                    };
                    return Lookup::ready(status, age, false, Ok(frag));
                }
                Freshness::Stale => {
                    self.start_refresh(&key, url, &policy, now);
                    return Lookup::ready(CacheStatus::Stale, age, false, Ok(frag));
                }
                Freshness::Expired => {}
            }
        }
        self.cold(key, url.clone(), policy, cache, nothing_stored)
    }

    /// Reads `key` from KV, sharing one read among concurrent requests of
    /// this isolate. An error (or a timeout) is logged; callers treat it as
    /// a miss.
    async fn read(&self, key: &str, timeout_ms: u32) -> StoreRead {
        let now = self.ports.clock.now_ms();
        let reads = Rc::clone(&self.shared.reads);
        match reads.join_for(key, now, KV_READ_TIMEOUT_MS) {
            Join::Leader(guard) => {
                let epoch = self.shared.purges.epoch();
                let got = self.ports.store.get(key).await;
                // A purge while the read was out: what it read may be the
                // purged copy, so it counts as absent.
                let got = if self.shared.purges.purged_since(epoch, key) {
                    Ok(None)
                } else {
                    got
                };
                let result = self.stored(key, got);
                if let Err(e) = &result {
                    self.log(
                        LogLevel::Warn,
                        &format!("{key}: KV read failed, treating as a miss: {e}"),
                    );
                }
                guard.complete(result.clone());
                result
            }
            Join::Follower(handle) => {
                let deadline = now + u64::from(timeout_ms);
                match self.wait(&reads, &handle, deadline).await {
                    Ok(r) => (*r).clone(),
                    // The reading request went away: read for ourselves.
                    Err(_) => {
                        let epoch = self.shared.purges.epoch();
                        let got = self.ports.store.get(key).await;
                        if self.shared.purges.purged_since(epoch, key) {
                            Ok(None)
                        } else {
                            self.stored(key, got)
                        }
                    }
                }
            }
        }
    }

    /// A KV answer as held in memory (and remembered there).
    fn stored(&self, key: &str, r: Result<Option<StoredEntry>, StoreError>) -> StoreRead {
        Ok(r?.filter(|e| e.meta.version == META_VERSION).map(|e| {
            let meta = e.meta.clone();
            let frag = Rc::new(Fragment::from_entry(e, key));
            self.shared.recent.remember(key, &meta, &frag);
            (meta, frag)
        }))
    }

    /// A key the origin recently answered as personal: fetched for this
    /// request alone, like the cacheable load it is configured as (the
    /// route's varied headers and cookies, never the user's credentials),
    /// and known to be private before the page's headers are decided.
    fn personal_pass(&self, url: &Url, policy: Policy) -> Lookup {
        let this = self.clone();
        let url = url.clone();
        Lookup {
            status: CacheStatus::Bypass,
            age_s: None,
            private: true,
            wants_set_cookie: false,
            vary: VaryHint::default(),
            inner: LookupInner::Pending(Box::pin(async move {
                let result = this.fetch_direct(&url, &policy, false).await;
                let status = if result.is_ok() {
                    CacheStatus::Bypass
                } else {
                    CacheStatus::Error
                };
                (status, result)
            })),
        }
    }

    /// A load that never touches the cache nor other requests.
    fn direct(&self, url: &Url, policy: Policy) -> Lookup {
        let this = self.clone();
        let url = url.clone();
        let private = policy.private;
        Lookup {
            status: CacheStatus::Bypass,
            age_s: None,
            private,
            wants_set_cookie: private && policy.pass_set_cookie,
            vary: VaryHint::default(),
            inner: LookupInner::Pending(Box::pin(async move {
                let result = this.fetch_direct(&url, &policy, true).await;
                let status = if result.is_ok() {
                    CacheStatus::Bypass
                } else {
                    CacheStatus::Error
                };
                (status, result)
            })),
        }
    }

    async fn fetch_direct(
        &self,
        url: &Url,
        policy: &Policy,
        with_credentials: bool,
    ) -> Result<Rc<Fragment>, LoadError> {
        let req = self.origin_request(url, policy, with_credentials);
        let resp = self.ports.origin.fetch(req).await?;
        if resp.status.is_server_error() {
            return Err(LoadError::Status(resp.status));
        }
        let now = self.ports.clock.now_ms();
        Ok(Rc::new(Fragment::from_response(
            &resp,
            now,
            None,
            policy.pass_set_cookie,
            policy.shell,
        )))
    }

    /// The origin request for `url`. Credentials (`Cookie`, `Authorization`)
    /// go only to the configured origin and only for loads that are never
    /// cached or shared; a cacheable load sends just the headers its key
    /// varies on, each with the very value that went into the key
    /// ([`header_value`]: normalised, so requests that share a key send the
    /// same request), and the cookies it varies on. A route's forwarded
    /// headers are among its varied ones (the configuration insists on it);
    /// an uncached load forwards them as the client sent them.
    fn origin_request(&self, url: &Url, policy: &Policy, with_credentials: bool) -> OriginRequest {
        let mut headers = HeaderMap::new();
        let own_origin = url.origin() == self.config.origin;
        let add = |headers: &mut HeaderMap, name: &str, value: &str| {
            if let (Ok(n), Some(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                to_header_value(value),
            ) {
                headers.append(n, v);
            }
        };
        if let Some(cache) = &policy.cache {
            for name in &cache.vary.headers {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                if let Some(v) = header_value(&self.req, name) {
                    add(&mut headers, name, &v);
                }
            }
            let cookies: Vec<String> = cache
                .vary
                .cookies
                .iter()
                .filter_map(|c| self.req.cookie(c).map(|v| format!("{c}={v}")))
                .collect();
            if own_origin && !cookies.is_empty() {
                add(&mut headers, "cookie", &cookies.join("; "));
            }
        } else {
            for name in &policy.forward {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                for v in self.req.headers.get_all(name.as_str()) {
                    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                        headers.append(n, v.clone());
                    }
                }
            }
            if with_credentials && own_origin {
                if let Some(c) = self.req.cookie_header() {
                    add(&mut headers, "cookie", &c);
                }
                if let Some(a) = self.req.header("authorization") {
                    add(&mut headers, "authorization", a);
                }
            }
        }
        add(&mut headers, SURROGATE_CAPABILITY.0, SURROGATE_CAPABILITY.1);
        OriginRequest {
            url: url.clone(),
            headers,
            timeout_ms: policy.timeout_ms,
            max_body_bytes: if policy.shell {
                self.config.limits.max_shell_bytes
            } else {
                self.config.limits.max_fragment_bytes
            },
        }
    }

    /// Starts a background refresh of `key` unless one is in flight or the
    /// key is backing off. Returns whether one started.
    fn start_refresh(&self, key: &str, url: &Url, policy: &Policy, now: u64) -> bool {
        if !self.shared.backoff.allows(key, now) {
            return false;
        }
        let lifetime = flight_lifetime_ms(policy.timeout_ms);
        match self.shared.flights.join_for(key, now, lifetime) {
            Join::Follower(_) => false,
            Join::Leader(guard) => {
                let req = self.origin_request(url, policy, false);
                let job = fetch_and_store(self.clone(), guard, req, policy.clone(), true);
                self.ports.background.spawn(Box::pin(job));
                true
            }
        }
    }

    /// Joins (or leads) the flight of a key with no usable copy at hand.
    /// `nothing_stored`: KV answered and had none either.
    fn cold(
        &self,
        key: String,
        url: Url,
        policy: Policy,
        cache: CachePolicy,
        nothing_stored: bool,
    ) -> Lookup {
        let now = self.ports.clock.now_ms();
        let lifetime = flight_lifetime_ms(policy.timeout_ms);
        let (status, handle, deadline) = match self.shared.flights.join_for(&key, now, lifetime) {
            Join::Leader(guard) => {
                if nothing_stored {
                    guard.set_nothing_stored();
                }
                let handle = guard.handle();
                let req = self.origin_request(&url, &policy, false);
                let job = fetch_and_store(self.clone(), guard, req, policy.clone(), false);
                self.ports.background.spawn(Box::pin(job));
                // The fetch has its own timeout; allow a little for the write-back.
                (
                    CacheStatus::Miss,
                    handle,
                    now + u64::from(policy.timeout_ms) + 1_000,
                )
            }
            Join::Follower(handle) => match cache.cold {
                ColdPolicy::Fail { retry_after_s } => {
                    return Lookup::ready(
                        CacheStatus::Error,
                        None,
                        false,
                        Err(LoadError::ColdBusy { retry_after_s }),
                    )
                }
                ColdPolicy::Wait { timeout_ms } => {
                    (CacheStatus::Coalesced, handle, now + u64::from(timeout_ms))
                }
            },
        };
        let this = self.clone();
        Lookup {
            status,
            age_s: None,
            private: false,
            wants_set_cookie: false,
            vary: VaryHint::default(),
            inner: LookupInner::Pending(Box::pin(async move {
                match this.wait(&this.shared.flights, &handle, deadline).await {
                    Err(e) => (CacheStatus::Error, Err(e)),
                    Ok(outcome) => match &*outcome {
                        Outcome::Shared(f) => (status, Ok(Rc::clone(f))),
                        Outcome::Personal(f) if status == CacheStatus::Miss => {
                            (CacheStatus::Bypass, Ok(Rc::clone(f)))
                        }
                        Outcome::Personal(_) => {
                            // Someone else's personal answer: fetch our own,
                            // exactly like the leader's (the route's varied
                            // headers and cookies, never the user's
                            // credentials), and keep it to ourselves.
                            let r = this.fetch_direct(&url, &policy, false).await;
                            let s = if r.is_ok() {
                                CacheStatus::Bypass
                            } else {
                                CacheStatus::Error
                            };
                            (s, r)
                        }
                        Outcome::Failed(e) => (CacheStatus::Error, Err(e.clone())),
                    },
                }
            })),
        }
    }

    /// Waits for a flight's outcome until `deadline`, on a signal owned by
    /// this request (its own promise and timer in the Worker), registered
    /// with the flight so that publishing the outcome wakes it. A flight
    /// past its lifetime is given up on as abandoned.
    async fn wait<T>(
        &self,
        flights: &Flights<T>,
        handle: &FlightHandle<T>,
        deadline: u64,
    ) -> Result<Rc<T>, LoadError> {
        let started = self.ports.clock.now_ms();
        loop {
            if let Some(o) = handle.outcome() {
                return Ok(o);
            }
            let now = self.ports.clock.now_ms();
            if now >= handle.expires_at() {
                return Err(LoadError::Abandoned);
            }
            if now >= deadline {
                return Err(LoadError::WaitTimeout(now - started));
            }
            if !flights.is_live(handle) {
                // The leader went away without publishing anything.
                return Err(LoadError::Abandoned);
            }
            // No await between the checks above and registering: nothing can
            // publish in between (one thread), so no wake-up is lost.
            let until = deadline.min(handle.expires_at());
            let (wake, signal) = self.ports.signals.signal(until - now);
            let id = handle.add_waiter(wake);
            signal.await;
            handle.remove_waiter(id);
        }
    }

    fn log(&self, level: LogLevel, msg: &str) {
        self.ports.log.log(level, msg);
    }
}

/// The leader's job: fetch, publish the outcome, then write the entry back.
async fn fetch_and_store(
    loader: Loader,
    guard: LeaderGuard<Outcome>,
    req: OriginRequest,
    policy: Policy,
    replaces_entry: bool,
) {
    let ports = loader.ports.clone();
    let shared = Rc::clone(&loader.shared);
    let key = guard.key().to_owned();
    let url = req.url.to_string();
    let started = ports.clock.now_ms();
    // A purge recorded after this point covers what this fetch returns.
    let epoch = shared.purges.epoch();
    let result = ports.origin.fetch(req).await;
    let now = ports.clock.now_ms();
    let fetch_ms = u32::try_from(now.saturating_sub(started)).unwrap_or(u32::MAX);
    let Some(cache) = policy.cache else {
        return;
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let delay = shared
                .backoff
                .record_failure(&key, now, ports.rng.next_f64());
            ports.log.log(
                LogLevel::Warn,
                &format!("{url}: refresh failed ({e}); next attempt in {delay} ms"),
            );
            guard.complete(Outcome::Failed(LoadError::Origin(e)));
            return;
        }
    };
    let cache_control = resp.header_joined("cache-control");
    let surrogate = resp.header_joined("surrogate-control");
    let headers = ResponseHeaders {
        cache_control: cache_control.as_deref(),
        surrogate_control: surrogate.as_deref(),
        set_cookie: resp.header("set-cookie").is_some(),
    };
    match decide(resp.status.as_u16(), headers, &cache.route) {
        Decision::Failure => {
            let delay = shared
                .backoff
                .record_failure(&key, now, ports.rng.next_f64());
            ports.log.log(
                LogLevel::Warn,
                &format!("{url}: origin answered {}; keeping any stored copy; next attempt in {delay} ms", resp.status.as_u16()),
            );
            guard.complete(Outcome::Failed(LoadError::Status(resp.status)));
        }
        Decision::Pass(why) => {
            shared.backoff.record_success(&key);
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                None,
                false,
                policy.shell,
            ));
            ports.log.log(
                LogLevel::Info,
                &format!("{url}: not cached ({})", why.as_str()),
            );
            if why.is_personal() {
                let pass_ms = u64::from(cache.route.soft_ttl.max(1)) * 1000;
                shared.mark_personal(&key, now + pass_ms, now);
                guard.publish(Outcome::Personal(frag));
            } else {
                guard.publish(Outcome::Shared(frag));
            }
            if replaces_entry {
                // The origin no longer lets us cache this: the stored copy must
                // not keep being served until its hard TTL. An expired
                // tombstone sends the next request down the cold path.
                shared.recent.forget(&key);
                let tombstone = EntryMeta::new(now, now, now, resp.status.as_u16(), fetch_ms);
                write_back(&loader, &key, Vec::new(), tombstone, 0, started, epoch).await;
            }
            drop(guard);
        }
        Decision::Store { .. } if shared.purges.purged_since(epoch, &key) => {
            // Fetched before a purge of this key: possibly the old content.
            // The request that started it asked before the purge and may
            // have it; nobody else may, and it is neither kept nor stored.
            shared.backoff.record_success(&key);
            ports.log.log(
                LogLevel::Info,
                &format!("{url}: purged while being fetched; not stored"),
            );
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                None,
                false,
                policy.shell,
            ));
            guard.publish(Outcome::Personal(frag));
            drop(guard);
        }
        Decision::Store { soft_s, hard_s } => {
            shared.backoff.record_success(&key);
            let soft_ms = jittered_ms(soft_s, cache.jitter, ports.rng.next_f64());
            let hard_ms = jittered_ms(hard_s, cache.jitter, ports.rng.next_f64()).max(soft_ms);
            let mut meta = EntryMeta::new(
                now,
                now + soft_ms,
                now + hard_ms,
                resp.status.as_u16(),
                fetch_ms,
            )
            .with_headers(
                resp.header("content-type"),
                resp.header("etag"),
                resp.header("last-modified"),
                cache_control.as_deref(),
            );
            meta.esi = surrogate
                .as_deref()
                .is_some_and(|v| parse_directives(v).esi);
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                Some(&key),
                false,
                policy.shell,
            ));
            // A shell's headers are stored ahead of its body in the value.
            let mut value = resp.body;
            if policy.shell && !frag.headers.is_empty() {
                match encode_block(&frag.headers) {
                    Some(mut block) => {
                        meta.header_bytes = block.len() as u32;
                        block.extend_from_slice(&value);
                        value = block;
                    }
                    None => ports.log.log(
                        LogLevel::Warn,
                        &format!(
                            "{url}: response headers exceed {MAX_STORED_HEADER_BYTES} bytes; the cached copy keeps none"
                        ),
                    ),
                }
            }
            shared.recent.remember(&key, &meta, &frag);
            // Publish before writing: waiting requests need the bytes, not the
            // write. The flight stays open until the write is done so that
            // requests arriving meanwhile join it rather than fetch again.
            guard.publish(Outcome::Shared(frag));
            write_back(&loader, &key, value, meta, hard_ms, started, epoch).await;
            drop(guard);
        }
    }
}

/// Writes an entry, at most once per second per key from this isolate, and
/// not at all if another isolate stored a newer copy (or a purge its
/// tombstone) after our fetch started at `started`, nor if this isolate
/// purged the key since `epoch`.
async fn write_back(
    loader: &Loader,
    key: &str,
    body: Vec<u8>,
    meta: EntryMeta,
    hard_ms: u64,
    started: u64,
    epoch: u64,
) {
    let ports = &loader.ports;
    let now = ports.clock.now_ms();
    {
        let mut last = loader.shared.last_write.borrow_mut();
        if last
            .get(key)
            .is_some_and(|t| now.saturating_sub(*t) < 1_000)
        {
            return;
        }
        if last.len() > 10_000 {
            last.retain(|_, t| now.saturating_sub(*t) < 1_000);
        }
        last.insert(key.to_owned(), now);
    }
    if let Ok(Some(current)) = ports.store.get(key).await {
        if current.meta.version == META_VERSION && current.meta.stored_at > started {
            return;
        }
    }
    // The read above let a purge run; nothing is awaited from here to the put.
    if loader.shared.purges.purged_since(epoch, key) {
        return;
    }
    // KV refuses expirationTtl below 60 s; the soft/hard deadlines in the
    // metadata are what freshness uses, so a longer KV life is harmless.
    let ttl_s = hard_ms.div_ceil(1000).max(60);
    if let Err(e) = ports
        .store
        .put(key, StoredEntry { body, meta }, ttl_s)
        .await
    {
        ports
            .log
            .log(LogLevel::Warn, &format!("{key}: KV write failed: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_is_the_unforwardable_list_without_credentials() {
        assert!(!HOP_BY_HOP.contains(&"cookie") && !HOP_BY_HOP.contains(&"authorization"));
        assert!(HOP_BY_HOP.contains(&"connection") && HOP_BY_HOP.contains(&"host"));
        assert_eq!(HOP_BY_HOP.len() + 2, UNFORWARDABLE_HEADERS.len());
    }

    fn entry(key: &str, body_len: usize, stored_at: u64) -> (EntryMeta, Rc<Fragment>) {
        let meta = EntryMeta::new(stored_at, stored_at + 10, stored_at + 20, 200, 1).with_headers(
            Some("text/html"),
            Some("\"e\""),
            None,
            Some("max-age=10"),
        );
        let frag = Fragment {
            status: StatusCode::OK,
            body: Rc::from(vec![b'x'; body_len]),
            headers: HeaderMap::new(),
            content_type: Some("text/html".into()),
            cache_control: Some("max-age=10".into()),
            esi: false,
            stored_at,
            cache_key: Some(key.to_owned()),
            set_cookies: Vec::new(),
        };
        (meta, Rc::new(frag))
    }

    #[test]
    fn recent_counts_keys_and_metadata_and_evicts_lru() {
        let recent = Recent::default();
        let (m, f) = entry("k0", 1_000, 1);
        recent.remember("k0", &m, &f);
        let one = Lru::<Cached>::charge("k0", Recent::entry_bytes(&m, &f));
        assert_eq!(recent.bytes(), one);
        assert!(
            one > 1_000 + 2 * 2 + "text/html".len() * 2,
            "metadata counted"
        );
        // Fill to the cap with entries of the same size; "k0" is kept in use.
        let per = RECENT_MAX_ENTRY_BYTES - 1_000;
        let mut i = 1;
        while recent.bytes() + Lru::<Cached>::charge("kN", per) <= RECENT_MAX_BYTES {
            let (m, f) = entry(&format!("k{i}"), per, 1);
            recent.remember(&format!("k{i}"), &m, &f);
            assert!(recent.get("k0").is_some());
            i += 1;
        }
        let held = recent.len();
        let (m, f) = entry("new", per, 1);
        recent.remember("new", &m, &f);
        assert!(recent.bytes() <= RECENT_MAX_BYTES);
        assert!(recent.get("k0").is_some(), "recently used survives");
        assert!(recent.get("k1").is_none(), "least recently used evicted");
        assert!(recent.get("new").is_some());
        assert_eq!(
            recent.len(),
            held,
            "one out, one in: nothing cleared wholesale"
        );
    }

    #[test]
    fn recent_does_not_keep_an_entry_over_its_limit() {
        let recent = Recent::default();
        let (m, f) = entry("small", 10, 1);
        recent.remember("small", &m, &f);
        let (m, f) = entry("big", RECENT_MAX_ENTRY_BYTES, 1);
        recent.remember("big", &m, &f);
        assert!(recent.get("big").is_none());
        assert!(recent.get("small").is_some());
        recent.forget_prefix("sm");
        assert_eq!((recent.len(), recent.bytes()), (0, 0));
    }

    #[test]
    fn template_memo_is_bounded_in_bytes_and_keeps_recent_templates() {
        struct NoLog;
        impl Log for NoLog {
            fn log(&self, _: LogLevel, _: &str) {}
        }
        let memo = TemplateMemo::default();
        let url = Url::parse("http://o.test/t").unwrap();
        let body = |n: usize| {
            let mut b = vec![b'a'; n];
            b.extend_from_slice(b"<esi:include src=\"/x\"/>");
            b
        };
        let frag = |key: &str, n: usize, at: u64| Fragment {
            body: Rc::from(body(n)),
            cache_key: Some(key.to_owned()),
            stored_at: at,
            ..(*entry(key, 0, at).1).clone()
        };
        let hot = frag("hot", 100, 1);
        let first = memo.get(&hot, &url, &NoLog);
        for i in 0..64 {
            memo.get(&frag(&format!("t{i}"), 512 << 10, 1), &url, &NoLog);
            assert!(Rc::ptr_eq(&first, &memo.get(&hot, &url, &NoLog)));
            assert!(memo.bytes() <= TEMPLATE_MEMO_MAX_BYTES);
        }
        assert!(memo.bytes() > TEMPLATE_MEMO_MAX_BYTES / 2);
        // A new version of the same key is recompiled.
        let hot2 = frag("hot", 100, 2);
        assert!(!Rc::ptr_eq(&first, &memo.get(&hot2, &url, &NoLog)));
    }
}
