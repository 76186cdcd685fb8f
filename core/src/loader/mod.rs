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
//! A background refresh is conditional on the stored copy's `ETag` and
//! `Last-Modified`; a `304 Not Modified` renews that copy's freshness
//! without the body crossing the network again.
//! A refresh that fails never overwrites a good entry, and sets the key's
//! back-off; a KV read error counts as a miss; a KV write error is logged.
//! Every KV call is bounded in time ([`crate::cache::kv`]): a read that
//! times out is a miss, a write that times out is logged.
//!
//! # Layout
//!
//! - this module: [`Loader`], [`Lookup`], [`LoadError`], [`Outcome`] and the
//!   lookup flow (memory, KV, fresh/stale/cold, waiting on flights);
//! - `fragment`: [`Fragment`] and its conversions from origin responses
//!   and stored entries;
//! - `memory`: isolate memory ([`Shared`], [`Recent`], [`TemplateMemo`],
//!   hit-for-pass marks, the write throttle);
//! - `policy`: how a route is loaded (`Policy`) and [`VaryHint`];
//! - `origin`: the origin request ([`SURROGATE_CAPABILITY`], [`HOP_BY_HOP`]);
//! - `store`: the flight leader's fetch, storage decision and KV write-back;
//! - `push`: write-through, a pushed body stored through that same path.

pub mod connections;
mod fragment;
mod memory;
mod origin;
mod policy;
mod push;
mod store;

use std::cell::RefCell;
use std::rc::Rc;

use http::StatusCode;

use crate::assemble::FragmentReport;

use crate::cache::breaker::BreakerState;
use crate::cache::entry::{xfetch_due, META_VERSION};
use crate::cache::flight::{FlightHandle, Flights, Join};
use crate::cache::key::cache_key;
use crate::cache::kv::{TimedStore, KV_READ_TIMEOUT_MS};
use crate::cache::{CacheStatus, EntryMeta, Freshness};
use crate::config::{ColdPolicy, Config, PageRoute};
use crate::ports::{LocalFuture, LogLevel, OriginError, Ports, StoreError, StoredEntry};
use crate::purge::Covered;
use crate::request::ClientRequest;
use crate::url::Url;
use connections::{GatedOrigin, MAX_CONNECTIONS};

pub use fragment::Fragment;
pub use memory::{
    Recent, Shared, TemplateMemo, RECENT_MAX_BYTES, RECENT_MAX_ENTRY_BYTES, TEMPLATE_MEMO_MAX_BYTES,
};
pub use origin::{HOP_BY_HOP, SURROGATE_CAPABILITY};
pub use policy::VaryHint;
pub use push::{PushError, PushTarget, Pushed};
pub use store::{flight_lifetime_ms, FLIGHT_WRITE_BUDGET_MS};

use memory::StoreRead;
use origin::add_validators;
use policy::{CachePolicy, Policy};
use store::fetch_and_store;

/// Why a fragment could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The origin fetch failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The origin answered with a server error, or with `304 Not Modified`
    /// to a request that was not conditional (or whose validator the
    /// answer contradicts).
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
    /// The origin's circuit breaker is open: nothing was sent to it.
    #[error("origin is down (circuit open); retry after {retry_after_s} s")]
    OriginDown {
        /// Seconds until the next probe.
        retry_after_s: u32,
    },
}

impl LoadError {
    /// `Retry-After` seconds for a client, when the failure is temporary
    /// and its end is known.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            LoadError::ColdBusy { retry_after_s } | LoadError::OriginDown { retry_after_s } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }
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
    /// When the request began (ms): zero on the page's time axis.
    began: u64,
    /// What happened to the shell and every include of this request, in
    /// order; shared by every clone, so it outlives the page it describes
    /// (the per-page record and the inspector read it once the page is
    /// drained).
    reports: Rc<RefCell<Vec<FragmentReport>>>,
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
        ports.origin = GatedOrigin::wrap(ports.origin, MAX_CONNECTIONS);
        if !config.coordinator.enabled {
            ports.coordinator = None;
        }
        shared.breaker.set_config(config.breaker);
        let began = ports.clock.now_ms();
        let loader = Loader {
            ports,
            shared,
            config,
            req,
            began,
            reports: Rc::default(),
        };
        // Every request may start the isolate's periodic read of the
        // shared purge log; it runs in the background, never on this path.
        crate::purge::check_shared_log(&loader);
        loader
    }

    /// When this request began (ms on the clock).
    pub fn began_ms(&self) -> u64 {
        self.began
    }

    /// Reports of the shell and includes seen so far, in order (a copy).
    pub fn reports(&self) -> Vec<FragmentReport> {
        self.reports.borrow().clone()
    }

    /// Runs `f` on the reports so far without copying them: every page
    /// reads them for its headers and its record. `f` must not add or
    /// update reports.
    pub fn with_reports<R>(&self, f: impl FnOnce(&[FragmentReport]) -> R) -> R {
        f(&self.reports.borrow())
    }

    /// Records a report; returns its index for [`Loader::update_report`].
    pub fn add_report(&self, report: FragmentReport) -> usize {
        let mut reports = self.reports.borrow_mut();
        reports.push(report);
        reports.len() - 1
    }

    /// Changes report `index` (no-op if there is none).
    pub fn update_report(&self, index: usize, change: impl FnOnce(&mut FragmentReport)) {
        if let Some(r) = self.reports.borrow_mut().get_mut(index) {
            change(r);
        }
    }

    /// The metadata of the copy of `key` this isolate holds in memory, if
    /// any (the inspector's soft and hard TTLs). Not a lookup: no KV read.
    pub fn remembered_meta(&self, key: &str) -> Option<Rc<EntryMeta>> {
        self.shared.recent.get(key).map(|(meta, _)| meta)
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
        // The authorised debug bypass: fetched like the cacheable load it
        // is (no credentials), for this request alone, nothing read or
        // stored, and the page private.
        if self.req.debug_bypass {
            return self.personal_pass(url, policy);
        }
        let key = cache_key(policy.kind, policy.route_id, url, &cache.vary, &self.req);
        let now = self.ports.clock.now_ms();
        if self.shared.is_personal(&key, now) {
            return self.personal_pass(url, policy);
        }
        // This isolate's own copy, if still fresh, answers without a KV read;
        // otherwise KV may hold a newer one (another isolate refreshed it).
        let mut found = self.shared.recent.get(&key);
        let here = found.as_ref().map(|(m, _)| m.classify(now));
        // While a fetch of this key is in flight here and its leader found
        // nothing usable in KV before starting, KV cannot know better than
        // its outcome: a cold burst costs one KV read, not one per request.
        // Without a copy of its own, a request reads KV even while a refresh
        // is in flight (reads are shared), so a stale copy there is served
        // rather than waiting on a refresh that may fail.
        // A copy of its own that is still servable (fresh or stale) is used
        // at once: a stale one is served while the refresh job, not this
        // request, asks KV whether another isolate has a newer copy. So a
        // stale burst costs what hits cost, and no lookup delays the page.
        let flight = self.shared.flights.current(&key, now);
        let skip_read = matches!(here, Some(Freshness::Fresh | Freshness::Stale))
            || flight.as_ref().is_some_and(|f| f.nothing_stored());
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
                    let status =
                        if early && self.start_refresh(&key, url, &policy, &meta, &frag, now) {
                            CacheStatus::Refresh
                        } else {
                            CacheStatus::Hit
                        };
                    return Lookup::ready(status, age, false, Ok(frag));
                }
                Freshness::Stale => {
                    self.start_refresh(&key, url, &policy, &meta, &frag, now);
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
                let result = self.stored(key, got, epoch);
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
                        self.stored(key, got, epoch)
                    }
                }
            }
        }
    }

    /// A KV answer as held in memory (and remembered there), read by a read
    /// that started at purge `epoch`. A purge while the read was out may
    /// have left it the purged copy: it counts as absent. So does a copy
    /// stored before a hard purge this isolate knows of (KV may show it for
    /// up to 60 s after the tombstone was written); one stored before a
    /// soft purge is stale.
    fn stored(
        &self,
        key: &str,
        r: Result<Option<StoredEntry>, StoreError>,
        epoch: u64,
    ) -> StoreRead {
        let Some(e) = r?.filter(|e| e.meta.version == META_VERSION) else {
            return Ok(None);
        };
        let meta = e.meta.clone();
        let frag = Rc::new(Fragment::from_entry(e, key));
        let purges = &self.shared.purges;
        if purges.purged_since(epoch, key, &frag.tags) {
            return Ok(None);
        }
        let mut meta = meta;
        match purges.covering(key, &frag.tags, meta.stored_at) {
            Some(Covered::Hard) => return Ok(None),
            Some(Covered::Soft(at)) => meta.fresh_until = meta.fresh_until.min(at),
            None => {}
        }
        self.shared.recent.remember(key, &meta, &frag);
        Ok(Some((Rc::new(meta), frag)))
    }

    /// A key the origin recently answered as personal: fetched for this
    /// request alone, like the cacheable load it is configured as (the
    /// route's varied headers and cookies, never the user's credentials),
    /// and known to be private before the page's headers are decided.
    fn personal_pass(&self, url: &Url, policy: Policy) -> Lookup {
        self.bypass(url, policy, true, false, false)
    }

    /// A load that never touches the cache nor other requests.
    fn direct(&self, url: &Url, policy: Policy) -> Lookup {
        let private = policy.private;
        let wants_set_cookie = private && policy.pass_set_cookie;
        self.bypass(url, policy, private, wants_set_cookie, true)
    }

    /// A fetch for this request alone (`bypass` status).
    fn bypass(
        &self,
        url: &Url,
        policy: Policy,
        private: bool,
        wants_set_cookie: bool,
        with_credentials: bool,
    ) -> Lookup {
        let this = self.clone();
        let url = url.clone();
        Lookup {
            status: CacheStatus::Bypass,
            age_s: None,
            private,
            wants_set_cookie,
            vary: VaryHint::default(),
            inner: LookupInner::Pending(Box::pin(async move {
                let result = this.fetch_direct(&url, &policy, with_credentials).await;
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
        let origin = url.origin().to_string();
        let id = url.to_string();
        let result = self.ports.origin.fetch(req).await;
        let now = self.ports.clock.now_ms();
        let healthy = matches!(&result, Ok(r) if !r.status.is_server_error());
        // Every answer the origin gives teaches its breaker, not only the
        // cache's own fetches: a healthy page shell closes a circuit too.
        self.record_origin(&origin, &id, healthy, now);
        let resp = result?;
        if resp.status.is_server_error() {
            return Err(LoadError::Status(resp.status));
        }
        Ok(Rc::new(Fragment::from_response(
            &resp,
            now,
            None,
            policy.pass_set_cookie,
            policy.shell,
        )))
    }

    /// Tells this isolate's breaker what `origin` did for `key` (a cache
    /// key, or the URL of an uncached fetch). When the origin is back, its
    /// keys' back-offs are cleared so stale copies refresh at once.
    pub(super) fn record_origin(&self, origin: &str, key: &str, healthy: bool, now: u64) {
        let shared = &self.shared;
        let log = &self.ports.log;
        if healthy {
            if shared.breaker.record_success(origin, now) {
                shared.backoff.forget_where(|k| key_origin_is(k, origin));
                log.log(
                    LogLevel::Warn,
                    &format!("origin {origin}: answering again; circuit closed"),
                );
            }
            return;
        }
        let before = shared.breaker.state(origin, now);
        let after = shared
            .breaker
            .record_key_failure(origin, key, now, self.ports.rng.next_f64());
        if before.as_str() != after.as_str() {
            log.log(
                LogLevel::Warn,
                &format!(
                    "origin {origin}: failing; circuit {after}: stale copies are served and one probe at a time tests it"
                ),
            );
        }
    }

    /// Starts a background refresh of `key` unless one is in flight or the
    /// key is backing off. Returns whether one started. The request is
    /// conditional on the stored copy's validators (`meta`), and the job
    /// keeps that copy (`meta`, `frag`): a `304 Not Modified` renews it.
    fn start_refresh(
        &self,
        key: &str,
        url: &Url,
        policy: &Policy,
        meta: &EntryMeta,
        frag: &Rc<Fragment>,
        now: u64,
    ) -> bool {
        // While the key backs off or its origin's circuit is open the
        // origin is not asked, but KV still is: another isolate may have
        // refreshed the key, and its copy should be served at once.
        let origin_allowed =
            self.shared.backoff.allows(key, now) && self.origin_down(url, now).is_none();
        let lifetime = flight_lifetime_ms(self.load_budget_ms(policy.timeout_ms));
        match self.shared.flights.join_for(key, now, lifetime) {
            Join::Follower(_) => false,
            Join::Leader(guard) => {
                let mut req = self.origin_request(url, policy, false);
                add_validators(&mut req.headers, meta);
                let stored = Some((Rc::new(meta.clone()), Rc::clone(frag)));
                let job = fetch_and_store(self.clone(), guard, req, policy.clone(), stored)
                    .origin_allowed(origin_allowed);
                self.ports.background.spawn(Box::pin(job.run()));
                origin_allowed
            }
        }
    }

    /// Seconds until `url`'s origin may be tried again, when its circuit
    /// is open (this isolate's breaker, which also mirrors what the
    /// coordinator reports).
    fn origin_down(&self, url: &Url, now: u64) -> Option<u32> {
        match self.shared.breaker.state(&url.origin().to_string(), now) {
            BreakerState::Open { until_ms } if until_ms > now => Some(
                u32::try_from((until_ms - now).div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1),
            ),
            _ => None,
        }
    }

    /// The longest a leader's load may take before its write-back: the
    /// origin timeout, and with a coordinator also the wait for it and a
    /// fetch of our own if it does not answer.
    pub(super) fn load_budget_ms(&self, timeout_ms: u32) -> u64 {
        let t = u64::from(timeout_ms);
        match self.ports.coordinator {
            Some(_) => 2 * t + u64::from(self.config.coordinator.wait_ms),
            None => t,
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
        if let Some(retry_after_s) = self.origin_down(&url, now) {
            // Fail fast: the page uses alt, onerror, esi:try or a 503.
            return Lookup::ready(
                CacheStatus::Error,
                None,
                false,
                Err(LoadError::OriginDown { retry_after_s }),
            );
        }
        let lifetime = flight_lifetime_ms(self.load_budget_ms(policy.timeout_ms));
        let (status, handle, deadline) = match self.shared.flights.join_for(&key, now, lifetime) {
            Join::Leader(guard) => {
                if nothing_stored {
                    guard.set_nothing_stored();
                }
                let handle = guard.handle();
                let req = self.origin_request(&url, &policy, false);
                // A cold load sends no validators: there is nothing to renew.
                let job = fetch_and_store(self.clone(), guard, req, policy.clone(), None);
                self.ports.background.spawn(Box::pin(job.run()));
                // The fetch has its own timeout; allow a little for the write-back.
                (
                    CacheStatus::Miss,
                    handle,
                    now + self.load_budget_ms(policy.timeout_ms) + 1_000,
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

/// Whether cache key `key` is for a URL on `origin` (keys are
/// `{kind}{route}:{origin}{path}…`).
fn key_origin_is(key: &str, origin: &str) -> bool {
    key.split_once(':')
        .and_then(|(_, rest)| rest.strip_prefix(origin))
        .is_some_and(|path| path.starts_with('/'))
}
