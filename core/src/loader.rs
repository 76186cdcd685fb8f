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

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::backoff::Backoff;
use crate::cache::entry::{jittered_ms, xfetch_due, META_VERSION};
use crate::cache::flight::{FlightHandle, Flights, Join, LeaderGuard};
use crate::cache::key::{cache_key, header_value};
use crate::cache::policy::{decide, parse_directives, Decision, ResponseHeaders, RoutePolicy};
use crate::cache::{CacheStatus, EntryMeta, Freshness};
use crate::config::{ColdPolicy, Config, FragmentRoute, PageRoute, Vary, UNFORWARDABLE_HEADERS};
use crate::esi::Template;
use crate::ports::{
    LocalFuture, Log, LogLevel, OriginError, OriginRequest, OriginResponse, Ports, StoredEntry,
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
    pub status: u16,
    /// The body.
    pub body: Rc<[u8]>,
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
    /// `Location` of a redirect, passed on when a page shell redirects.
    pub location: Option<String>,
}

impl Fragment {
    fn from_response(
        resp: &OriginResponse,
        now: u64,
        key: Option<&str>,
        keep_cookies: bool,
    ) -> Self {
        Fragment {
            status: resp.status,
            body: Rc::from(resp.body.as_slice()),
            content_type: resp.header("content-type").map(str::to_owned),
            cache_control: join_header(resp, "cache-control"),
            esi: join_header(resp, "surrogate-control").is_some_and(|v| parse_directives(&v).esi),
            stored_at: now,
            cache_key: key.map(str::to_owned),
            location: resp.header("location").map(str::to_owned),
            set_cookies: if keep_cookies {
                resp.header_all("set-cookie").map(str::to_owned).collect()
            } else {
                Vec::new()
            },
        }
    }

    fn from_entry(entry: StoredEntry, key: &str) -> Self {
        Fragment {
            status: entry.meta.status,
            body: Rc::from(entry.body),
            content_type: entry.meta.content_type,
            cache_control: entry.meta.cache_control,
            esi: entry.meta.esi,
            stored_at: entry.meta.stored_at,
            cache_key: Some(key.to_owned()),
            set_cookies: Vec::new(),
            location: None,
        }
    }
}

fn join_header(resp: &OriginResponse, name: &str) -> Option<String> {
    let values: Vec<&str> = resp.header_all(name).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Why a fragment could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The origin fetch failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The origin answered with a server error.
    #[error("origin answered {0}")]
    Status(u16),
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
#[derive(Default)]
pub struct TemplateMemo {
    map: RefCell<HashMap<String, (u64, Rc<Template>)>>,
}

/// Templates kept at most; past that the memo starts over (cheap and bounded).
const MAX_TEMPLATES: usize = 256;

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
        if let Some((stored_at, t)) = self.map.borrow().get(key) {
            if *stored_at == frag.stored_at {
                return Rc::clone(t);
            }
        }
        let t = compile();
        let mut map = self.map.borrow_mut();
        if map.len() >= MAX_TEMPLATES {
            map.clear();
        }
        map.insert(key.clone(), (frag.stored_at, Rc::clone(&t)));
        t
    }
}

/// Entries this isolate has seen recently (fetched or read from KV): a
/// per-isolate memory cache in front of KV. While a copy here is fresh it is
/// served without a KV read; once stale, KV is asked for a newer one. It
/// also covers for KV's eventual consistency: a read right after a write may
/// return the old value, or nothing, for up to 60 s. Only cacheable entries
/// ever get here; private fragments never do.
#[derive(Default)]
pub struct Recent {
    map: RefCell<HashMap<String, (EntryMeta, Rc<Fragment>)>>,
    bytes: std::cell::Cell<usize>,
}

/// Upper bound of bodies kept in [`Recent`] (the isolate has 128 MB in all).
const RECENT_MAX_BYTES: usize = 16 << 20;

impl Recent {
    fn remember(&self, key: &str, meta: &EntryMeta, frag: &Rc<Fragment>) {
        let mut map = self.map.borrow_mut();
        let size = frag.body.len();
        if size > RECENT_MAX_BYTES / 8 {
            return;
        }
        if self.bytes.get() + size > RECENT_MAX_BYTES {
            map.clear();
            self.bytes.set(0);
        }
        if let Some((_, old)) = map.insert(key.to_owned(), (meta.clone(), Rc::clone(frag))) {
            self.bytes
                .set(self.bytes.get().saturating_sub(old.body.len()));
        }
        self.bytes.set(self.bytes.get() + size);
    }

    /// Drops every remembered copy whose key starts with `prefix`.
    pub fn forget_prefix(&self, prefix: &str) {
        let mut map = self.map.borrow_mut();
        let mut freed = 0;
        map.retain(|k, (_, f)| {
            let keep = !k.starts_with(prefix);
            if !keep {
                freed += f.body.len();
            }
            keep
        });
        self.bytes.set(self.bytes.get().saturating_sub(freed));
    }

    /// Drops the remembered copy of `key`.
    fn forget(&self, key: &str) {
        if let Some((_, old)) = self.map.borrow_mut().remove(key) {
            self.bytes
                .set(self.bytes.get().saturating_sub(old.body.len()));
        }
    }

    /// The remembered copy of `key`.
    fn get(&self, key: &str) -> Option<(EntryMeta, Rc<Fragment>)> {
        let map = self.map.borrow();
        map.get(key).map(|(m, f)| (m.clone(), Rc::clone(f)))
    }
}

/// An entry as held in memory: metadata and the shareable fragment.
type Cached = (EntryMeta, Rc<Fragment>);

/// State shared by every request in one isolate.
#[derive(Default)]
pub struct Shared {
    /// In-flight origin loads by cache key.
    pub flights: Rc<Flights<Outcome>>,
    /// In-flight KV reads by cache key: a burst on a key this isolate has
    /// no fresh copy of makes one KV read, not one per request.
    reads: Rc<Flights<Option<Cached>>>,
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
}

impl Shared {
    /// Forgets everything this isolate remembers about keys starting with
    /// `prefix` (after a purge): memory copies and the write throttle, so the
    /// next fetch is stored at once.
    pub fn forget_prefix(&self, prefix: &str) {
        self.recent.forget_prefix(prefix);
        self.last_write
            .borrow_mut()
            .retain(|k, _| !k.starts_with(prefix));
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
        let signed_in = r
            .private_if_cookie
            .as_deref()
            .is_some_and(|c| req.cookie(c).is_some());
        let private = r.private || signed_in;
        Policy {
            kind: "f",
            route_id: r.id,
            cache: (!private).then(|| CachePolicy {
                route: RoutePolicy {
                    soft_ttl: r.ttls.soft,
                    hard_ttl: r.ttls.hard,
                    negative_ttl: r.negative_ttl,
                    honor_origin_headers: r.honor_origin_headers,
                },
                cold: r.cold.clone(),
                xfetch_beta: r.xfetch_beta,
                jitter: r.jitter,
                vary: r.vary.clone(),
            }),
            private,
            timeout_ms: r.timeout_ms,
            forward: r.forward_headers.clone(),
            pass_set_cookie: r.pass_set_cookie,
            vary: VaryHint {
                headers: r.vary.headers.clone(),
                cookie: !r.vary.cookies.is_empty() || r.private_if_cookie.is_some(),
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
                xfetch_beta: 1.0,
                jitter: 0.1,
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
    /// A loader for one client request.
    pub fn new(
        ports: Ports,
        shared: Rc<Shared>,
        config: Rc<Config>,
        req: Rc<ClientRequest>,
    ) -> Self {
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
        // This isolate's own copy, if still fresh, answers without a KV read;
        // otherwise KV may hold a newer one (another isolate refreshed it).
        let mut found = self.shared.recent.get(&key);
        let fresh_here = found
            .as_ref()
            .is_some_and(|(m, _)| m.classify(now) == Freshness::Fresh);
        // While a fetch of this key is in flight here, KV cannot know better
        // than its outcome: a burst on a cold or stale key then costs one KV
        // read, not one per request.
        if !fresh_here && !self.shared.flights.in_flight(&key) {
            if let Some(read) = self.read(&key, policy.timeout_ms).await {
                if found
                    .as_ref()
                    .is_none_or(|(m, _)| read.0.stored_at > m.stored_at)
                {
                    found = Some(read);
                }
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
        self.cold(key, url.clone(), policy, cache)
    }

    /// Reads `key` from KV, sharing one read among concurrent requests of
    /// this isolate. A read error counts as absent.
    async fn read(&self, key: &str, timeout_ms: u32) -> Option<Cached> {
        let now = self.ports.clock.now_ms();
        let reads = Rc::clone(&self.shared.reads);
        match reads.join(key, now) {
            Join::Leader(guard) => {
                let result = match self.ports.store.get(key).await {
                    Ok(e) => e.filter(|e| e.meta.version == META_VERSION).map(|e| {
                        let meta = e.meta.clone();
                        let frag = Rc::new(Fragment::from_entry(e, key));
                        self.shared.recent.remember(key, &meta, &frag);
                        (meta, frag)
                    }),
                    Err(e) => {
                        self.log(
                            LogLevel::Warn,
                            &format!("{key}: KV read failed, treating as a miss: {e}"),
                        );
                        None
                    }
                };
                guard.complete(result.clone());
                result
            }
            Join::Follower(handle) => {
                let deadline = now + u64::from(timeout_ms);
                match self.wait(&reads, &handle, deadline).await {
                    Ok(r) => (*r).clone(),
                    // The reading request went away: read for ourselves.
                    Err(_) => match self.ports.store.get(key).await {
                        Ok(Some(e)) if e.meta.version == META_VERSION => {
                            Some((e.meta.clone(), Rc::new(Fragment::from_entry(e, key))))
                        }
                        _ => None,
                    },
                }
            }
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
        if resp.status >= 500 {
            return Err(LoadError::Status(resp.status));
        }
        let now = self.ports.clock.now_ms();
        Ok(Rc::new(Fragment::from_response(
            &resp,
            now,
            None,
            policy.pass_set_cookie,
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
        let mut headers: Vec<(String, String)> = Vec::new();
        let own_origin = url.origin() == self.config.origin;
        if let Some(cache) = &policy.cache {
            for name in &cache.vary.headers {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                if let Some(v) = header_value(&self.req, name) {
                    headers.push((name.clone(), v));
                }
            }
            let cookies: Vec<String> = cache
                .vary
                .cookies
                .iter()
                .filter_map(|c| self.req.cookie(c).map(|v| format!("{c}={v}")))
                .collect();
            if own_origin && !cookies.is_empty() {
                headers.push(("cookie".into(), cookies.join("; ")));
            }
        } else {
            for name in &policy.forward {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                for v in self.req.header_all(name) {
                    headers.push((name.clone(), v.to_owned()));
                }
            }
            if with_credentials && own_origin {
                if let Some(c) = self.req.cookie_header() {
                    headers.push(("cookie".into(), c));
                }
                if let Some(a) = self.req.header("authorization") {
                    headers.push(("authorization".into(), a.to_owned()));
                }
            }
        }
        headers.push((SURROGATE_CAPABILITY.0.into(), SURROGATE_CAPABILITY.1.into()));
        OriginRequest {
            url: url.clone(),
            headers,
            timeout_ms: policy.timeout_ms,
            max_body_bytes: self.config.limits.max_fragment_bytes,
        }
    }

    /// Starts a background refresh of `key` unless one is in flight or the
    /// key is backing off. Returns whether one started.
    fn start_refresh(&self, key: &str, url: &Url, policy: &Policy, now: u64) -> bool {
        if !self.shared.backoff.allows(key, now) {
            return false;
        }
        match self.shared.flights.join(key, now) {
            Join::Follower(_) => false,
            Join::Leader(guard) => {
                let req = self.origin_request(url, policy, false);
                let job = fetch_and_store(self.clone(), guard, req, policy.clone(), true);
                self.ports.background.spawn(Box::pin(job));
                true
            }
        }
    }

    fn cold(&self, key: String, url: Url, policy: Policy, cache: CachePolicy) -> Lookup {
        let now = self.ports.clock.now_ms();
        let (status, handle, deadline) = match self.shared.flights.join(&key, now) {
            Join::Leader(guard) => {
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
                            // Someone else's personal answer: fetch our own.
                            let mut own = policy.clone();
                            own.cache = None;
                            // Fetched like the leader's: a cacheable route
                            // never sends the user's credentials.
                            let r = this.fetch_direct(&url, &own, false).await;
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
    /// with the flight so that publishing the outcome wakes it.
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
            if now >= deadline {
                return Err(LoadError::WaitTimeout(now - started));
            }
            if !flights.is_live(handle) {
                // The leader went away without publishing anything.
                return Err(LoadError::Abandoned);
            }
            // No await between the checks above and registering: nothing can
            // publish in between (one thread), so no wake-up is lost.
            let (wake, signal) = self.ports.signals.signal(deadline - now);
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
    let cache_control = join_header(&resp, "cache-control");
    let surrogate = join_header(&resp, "surrogate-control");
    let headers = ResponseHeaders {
        cache_control: cache_control.as_deref(),
        surrogate_control: surrogate.as_deref(),
        set_cookie: resp.header("set-cookie").is_some(),
    };
    match decide(resp.status, headers, &cache.route) {
        Decision::Failure => {
            let delay = shared
                .backoff
                .record_failure(&key, now, ports.rng.next_f64());
            ports.log.log(
                LogLevel::Warn,
                &format!("{url}: origin answered {}; keeping any stored copy; next attempt in {delay} ms", resp.status),
            );
            guard.complete(Outcome::Failed(LoadError::Status(resp.status)));
        }
        Decision::Pass(why) => {
            shared.backoff.record_success(&key);
            let frag = Rc::new(Fragment::from_response(&resp, now, None, false));
            ports.log.log(
                LogLevel::Info,
                &format!("{url}: not cached ({})", why.as_str()),
            );
            if why.is_personal() {
                guard.publish(Outcome::Personal(frag));
            } else {
                guard.publish(Outcome::Shared(frag));
            }
            if replaces_entry {
                // The origin no longer lets us cache this: the stored copy must
                // not keep being served until its hard TTL. An expired
                // tombstone sends the next request down the cold path.
                shared.recent.forget(&key);
                let tombstone = EntryMeta::new(now, now, now, resp.status, fetch_ms);
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
            let frag = Rc::new(Fragment::from_response(&resp, now, None, false));
            guard.publish(Outcome::Personal(frag));
            drop(guard);
        }
        Decision::Store { soft_s, hard_s } => {
            shared.backoff.record_success(&key);
            let soft_ms = jittered_ms(soft_s, cache.jitter, ports.rng.next_f64());
            let hard_ms = jittered_ms(hard_s, cache.jitter, ports.rng.next_f64()).max(soft_ms);
            let mut meta = EntryMeta::new(now, now + soft_ms, now + hard_ms, resp.status, fetch_ms)
                .with_headers(
                    resp.header("content-type"),
                    resp.header("etag"),
                    resp.header("last-modified"),
                    cache_control.as_deref(),
                );
            meta.esi = surrogate
                .as_deref()
                .is_some_and(|v| parse_directives(v).esi);
            let frag = Rc::new(Fragment::from_response(&resp, now, Some(&key), false));
            shared.recent.remember(&key, &meta, &frag);
            // Publish before writing: waiting requests need the bytes, not the
            // write. The flight stays open until the write is done so that
            // requests arriving meanwhile join it rather than fetch again.
            guard.publish(Outcome::Shared(frag));
            write_back(&loader, &key, resp.body, meta, hard_ms, started, epoch).await;
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
}
