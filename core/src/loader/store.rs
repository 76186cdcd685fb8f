//! A flight leader's work after its origin fetch: deciding what the
//! response allows ([`crate::cache::policy`]), publishing the outcome to the
//! requests waiting on it, and writing the entry back to KV.
//!
//! # Conditional refresh
//!
//! A refresh of a stored copy asks the origin with that copy's validators
//! (see `origin::add_validators`). A `304 Not Modified` answer is turned
//! into the full response it stands for ([`not_modified`]): the stored
//! status and body, the stored headers updated with the 304's (RFC 9111
//! §4.3.4). That response then goes through the same decision as any other:
//! stored again with its freshness recomputed from now (the route's TTLs, or
//! the 304's `Cache-Control` when the route honours origin headers), under
//! the same write throttle and purge checks, and remembered in memory; or,
//! if the 304's headers now forbid storing, passed on and the stored copy
//! tombstoned. A 304 to a request that carried no validator, or whose `ETag`
//! contradicts the stored one, is an origin failure: the stored copy stays
//! and the key backs off.

use std::rc::Rc;

use http::{HeaderMap, HeaderName, StatusCode};

use futures_util::future::{select, Either};

use crate::cache::breaker::Permit;
use crate::cache::entry::META_VERSION;
use crate::cache::flight::LeaderGuard;
use crate::cache::kv::{put_tagged, KV_READ_TIMEOUT_MS, KV_WRITE_TIMEOUT_MS};
use crate::cache::verdict::{verdict, StoreRules, Verdict};
use crate::cache::{EntryMeta, Freshness};
use crate::coord::{Answer, CoordError, Coordinator, LoadRequest, Reply, Rules};
use crate::headers::{decode_block, text, MAX_STORED_HEADER_BYTES};
use crate::ports::{LogLevel, OriginError, OriginRequest, OriginResponse, StoredEntry};

use super::memory::Cached;
use super::origin::is_conditional;
use super::policy::CachePolicy;
use super::{Fragment, LoadError, Loader, Outcome, Policy};

/// Time a flight may spend after its origin fetch timed out: the
/// write-back's check for a newer copy and its write, each bounded by
/// [`crate::cache::kv`].
pub const FLIGHT_WRITE_BUDGET_MS: u64 = KV_READ_TIMEOUT_MS + KV_WRITE_TIMEOUT_MS;

/// How long a flight whose load may take `load_ms` (the origin timeout,
/// and with a coordinator the wait for it too) may live: that plus
/// [`FLIGHT_WRITE_BUDGET_MS`]. An older flight is dead: the next request
/// leads a new one and waiters stop waiting (the fetch port is trusted to
/// honour its timeout, but not relied on to).
pub fn flight_lifetime_ms(load_ms: u64) -> u64 {
    load_ms + FLIGHT_WRITE_BUDGET_MS
}

/// The leader's job: load (through the coordinator when there is one, else
/// from the origin, gated by the origin's circuit breaker), publish the
/// outcome, then write the entry back. `stored`: the copy a refresh
/// replaces (`None` for a cold load); a 304 renews it.
pub(super) fn fetch_and_store(
    loader: Loader,
    guard: LeaderGuard<Outcome>,
    req: OriginRequest,
    policy: Policy,
    stored: Option<Cached>,
) -> LeaderJob {
    LeaderJob {
        loader,
        guard,
        req,
        policy,
        stored,
        origin_allowed: true,
    }
}

/// A flight leader's load, ready to run as background work.
pub(super) struct LeaderJob {
    loader: Loader,
    guard: LeaderGuard<Outcome>,
    req: OriginRequest,
    policy: Policy,
    stored: Option<Cached>,
    origin_allowed: bool,
}

impl LeaderJob {
    /// With `false`, only look for a newer copy in KV; never ask the origin
    /// (the key backs off, or its origin's circuit is open).
    pub(super) fn origin_allowed(mut self, allowed: bool) -> Self {
        self.origin_allowed = allowed;
        self
    }

    /// Runs the job.
    pub(super) async fn run(self) {
        let LeaderJob {
            loader,
            guard,
            req,
            policy,
            stored,
            origin_allowed,
        } = self;
        let Some(cache) = policy.cache.clone() else {
            return;
        };
        let ports = loader.ports.clone();
        let shared = Rc::clone(&loader.shared);
        let key = guard.key().to_owned();
        let url = req.url.to_string();
        let origin = req.url.origin().to_string();
        // A purge recorded after this point covers what this load returns.
        let epoch = shared.purges.epoch();
        let job = Job {
            loader: &loader,
            key: &key,
            url: &url,
            origin: &origin,
            policy: &policy,
            cache: &cache,
            epoch,
        };
        // A refresh first asks KV: another isolate may have refreshed the key
        // already, and then the origin need not be asked at all.
        if let Some((old, _)) = &stored {
            if let Some((meta, frag)) = job.newer_in_store(old.stored_at).await {
                shared.backoff.record_success(&key);
                shared.recent.remember(&key, &meta, &frag);
                ports.log.log(
                    LogLevel::Info,
                    &format!("{url}: a newer copy was already in KV; no origin fetch"),
                );
                guard.publish(Outcome::Shared(frag));
                return;
            }
        }
        if !origin_allowed {
            // Nobody waits on this: the stale copy is being served.
            return;
        }
        if let Some(coordinator) = ports.coordinator.clone() {
            match job.ask(coordinator.as_ref(), &req, stored.as_ref()).await {
                Ok(reply) => return job.settle(guard, reply, stored.is_some()),
                Err(e) => ports
                    .log
                    .log(LogLevel::Warn, &format!("{url}: {e}; fetching directly")),
            }
        }
        let now = ports.clock.now_ms();
        if let Permit::Deny { retry_after_ms } =
            shared.breaker.permit(&origin, now, ports.rng.next_f64())
        {
            return job.origin_down(guard, now, retry_after_ms);
        }
        let conditional = is_conditional(&req.headers);
        let started = ports.clock.now_ms();
        let result = ports.origin.fetch(req).await;
        let now = ports.clock.now_ms();
        let fetch_ms = u32::try_from(now.saturating_sub(started)).unwrap_or(u32::MAX);
        job.record_origin(matches!(&result, Ok(r) if !r.status.is_server_error()), now);
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => return job.failed(guard, now, format!("refresh failed ({e})"), e.into()),
        };
        let resp = if resp.status == StatusCode::NOT_MODIFIED {
            match not_modified(&resp, conditional, stored.as_ref()) {
                Ok(full) => {
                    ports.log.log(
                        LogLevel::Info,
                        &format!("{url}: not modified; stored copy renewed"),
                    );
                    full
                }
                Err(why) => {
                    let what = format!("origin answered 304 {why}");
                    return job.failed(guard, now, what, LoadError::Status(resp.status));
                }
            }
        } else {
            resp
        };
        let rules = StoreRules {
            route: &cache.route,
            jitter: cache.jitter,
            shell: policy.shell,
        };
        // The response as a fragment: keyed when it is stored, so that its
        // compiled template is remembered; headers kept for a page shell.
        let fragment = |key: Option<&str>| {
            Rc::new(Fragment::from_response(
                &resp,
                now,
                key,
                false,
                policy.shell,
            ))
        };
        match verdict(&resp, rules, now, fetch_ms, ports.rng.as_ref()) {
            Verdict::Failure => {
                let what = format!("origin answered {}", resp.status.as_u16());
                job.failed(guard, now, what, LoadError::Status(resp.status));
            }
            Verdict::Pass(why) => {
                let frag = fragment(None);
                job.pass(
                    guard,
                    frag,
                    why.is_personal(),
                    stored.is_some(),
                    now,
                    why.as_str(),
                );
                if stored.is_some() {
                    // The origin no longer lets us cache this: the stored copy must
                    // not keep being served until its hard TTL. An expired
                    // tombstone sends the next request down the cold path.
                    let tombstone = EntryMeta::new(now, now, now, resp.status.as_u16(), fetch_ms);
                    let since = Since {
                        started,
                        epoch,
                        known_absent: false,
                    };
                    let entry = Entry {
                        value: Vec::new(),
                        meta: tombstone,
                        hard_ms: 0,
                        tags: &[],
                        prev: None,
                    };
                    let _ = write_back(&loader, &key, entry, since).await;
                }
            }
            Verdict::Store { ref tags, .. } if shared.purges.purged_since(epoch, &key, tags) => {
                job.purged_meanwhile(guard, fragment(None));
            }
            Verdict::Store {
                meta,
                value,
                tags,
                headers,
                headers_dropped,
            } => {
                shared.backoff.record_success(&key);
                // A copy stored here after this fetch started (a
                // write-through) is newer than what the fetch brought: it
                // stays, and is what the waiting requests get.
                if let Some(newer) = job.superseded(started) {
                    guard.publish(Outcome::Shared(newer));
                    return;
                }
                if headers_dropped {
                    ports.log.log(
                        LogLevel::Warn,
                        &format!(
                            "{url}: response headers exceed {MAX_STORED_HEADER_BYTES} bytes; the cached copy keeps none"
                        ),
                    );
                }
                // The verdict already kept a shell's headers: not again.
                let mut frag = Fragment::from_response(&resp, now, Some(&key), false, false);
                frag.headers = headers;
                let frag = Rc::new(frag);
                shared.recent.remember(&key, &meta, &frag);
                let known_absent = stored.is_none() && guard.handle().nothing_stored();
                // Publish before writing: waiting requests need the bytes, not the
                // write. The flight stays open until the write is done so that
                // requests arriving meanwhile join it rather than fetch again.
                guard.publish(Outcome::Shared(frag));
                let hard_ms = meta.stale_until.saturating_sub(now);
                let since = Since {
                    started,
                    epoch,
                    known_absent,
                };
                let prev = stored
                    .as_ref()
                    .map(|(m, f)| (Rc::clone(&f.tags), m.index_until));
                let entry = Entry {
                    value,
                    meta: *meta,
                    hard_ms,
                    tags: &tags,
                    prev: prev.as_ref().map(|(t, u)| (&t[..], *u)),
                };
                let _ = write_back(&loader, &key, entry, since).await;
                drop(guard);
            }
        }
    }
}

/// One leader's load: what it is loading and for whom, and the steps of
/// publishing an outcome that the coordinator's answers share with the
/// isolate's own fetches.
struct Job<'a> {
    loader: &'a Loader,
    key: &'a str,
    url: &'a str,
    origin: &'a str,
    policy: &'a Policy,
    cache: &'a CachePolicy,
    epoch: u64,
}

impl Job<'_> {
    /// Asks the coordinator, waiting at most the origin timeout plus the
    /// configured `coordinator.wait_ms`.
    async fn ask(
        &self,
        coordinator: &dyn Coordinator,
        req: &OriginRequest,
        stored: Option<&Cached>,
    ) -> Result<Reply, CoordError> {
        let headers = req
            .headers
            .iter()
            // The object revalidates with what it holds, not our validators.
            .filter(|(n, _)| *n != "if-none-match" && *n != "if-modified-since")
            .filter_map(|(n, v)| text(v).map(|v| (n.as_str().to_owned(), v.to_owned())))
            .collect();
        let load = LoadRequest {
            key: self.key.to_owned(),
            url: self.url.to_owned(),
            headers,
            timeout_ms: req.timeout_ms,
            max_body_bytes: req.max_body_bytes,
            have: stored.map(|(meta, _)| meta.stored_at),
            rules: Rules {
                soft_ttl: self.cache.route.soft_ttl,
                hard_ttl: self.cache.route.hard_ttl,
                negative_ttl: self.cache.route.negative_ttl,
                honor_origin_headers: self.cache.route.honor_origin_headers,
                jitter: self.cache.jitter,
                shell: self.policy.shell,
            },
        };
        let ports = &self.loader.ports;
        let wait = u64::from(req.timeout_ms) + u64::from(self.loader.config.coordinator.wait_ms);
        match select(coordinator.load(load), ports.clock.sleep(wait)).await {
            Either::Left((answer, _)) => answer,
            Either::Right(_) => Err(CoordError(format!("no answer within {wait} ms"))),
        }
    }

    /// A fresh copy in KV stored after `have` (another isolate's refresh),
    /// unless a purge has happened since this job started.
    async fn newer_in_store(&self, have: u64) -> Option<Cached> {
        let ports = &self.loader.ports;
        let entry = ports.store.get(self.key).await.ok()??;
        let now = ports.clock.now_ms();
        let meta = Rc::new(entry.meta.clone());
        if meta.version != META_VERSION
            || meta.stored_at <= have
            || meta.classify(now) != Freshness::Fresh
        {
            return None;
        }
        let frag = Rc::new(Fragment::from_entry(entry, self.key));
        let purges = &self.loader.shared.purges;
        let purged = purges.purged_since(self.epoch, self.key, &frag.tags)
            || purges
                .covering(self.key, &frag.tags, meta.stored_at)
                .is_some();
        (!purged).then_some((meta, frag))
    }

    /// Publishes the coordinator's answer as if this isolate had fetched
    /// it; the object has already written KV.
    fn settle(&self, guard: LeaderGuard<Outcome>, reply: Reply, replaces: bool) {
        let shared = &self.loader.shared;
        let ports = &self.loader.ports;
        let now = ports.clock.now_ms();
        match reply.answer {
            Answer::Entry { meta, fetched } => {
                if fetched {
                    self.record_origin(true, now);
                }
                let entry = StoredEntry {
                    body: reply.bytes.to_vec(),
                    meta: meta.clone(),
                };
                let frag = Rc::new(Fragment::from_entry(entry, self.key));
                if shared.purges.purged_since(self.epoch, self.key, &frag.tags) {
                    return self.purged_meanwhile(guard, frag);
                }
                shared.backoff.record_success(self.key);
                if let Some(newer) = self.superseded(meta.stored_at) {
                    guard.publish(Outcome::Shared(newer));
                    return;
                }
                shared.recent.remember(self.key, &meta, &frag);
                if !fetched {
                    ports.log.log(
                        LogLevel::Info,
                        &format!("{}: the coordinator answered with a newer copy", self.url),
                    );
                }
                guard.publish(Outcome::Shared(frag));
            }
            Answer::Pass {
                status,
                personal,
                header_bytes,
            } => {
                self.record_origin(true, now);
                let split = (header_bytes as usize).min(reply.bytes.len());
                let resp = OriginResponse {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    headers: decode_block(&reply.bytes[..split]),
                    body: reply.bytes[split..].to_vec(),
                };
                let frag = Rc::new(Fragment::from_response(
                    &resp,
                    now,
                    None,
                    false,
                    self.policy.shell,
                ));
                self.pass(guard, frag, personal, replaces, now, "origin");
            }
            Answer::Failed { status, message } => {
                let what = format!("{message} (through the coordinator)");
                let error = match status.and_then(|s| StatusCode::from_u16(s).ok()) {
                    Some(s) => LoadError::Status(s),
                    None => LoadError::Origin(OriginError::Network(message)),
                };
                self.failed(guard, now, what, error);
            }
            Answer::OriginDown { retry_after_ms } => {
                shared
                    .breaker
                    .note_open(self.origin, now + retry_after_ms, now);
                self.origin_down(guard, now, retry_after_ms);
            }
        }
    }

    /// The copy this isolate holds when it was stored after `since` (ms):
    /// a write-through made while this load was out, which counts as newer
    /// than anything the load brings back (as a newer copy in KV does for
    /// [`write_back`]).
    fn superseded(&self, since: u64) -> Option<Rc<Fragment>> {
        let (meta, frag) = self.loader.shared.recent.get(self.key)?;
        (meta.stored_at > since).then_some(frag)
    }

    /// A failed load: any stored copy stays and is served, and the key backs
    /// off.
    fn failed(&self, guard: LeaderGuard<Outcome>, now: u64, what: String, error: LoadError) {
        let rng = self.loader.ports.rng.next_f64();
        let delay = self
            .loader
            .shared
            .backoff
            .record_failure(self.key, now, rng);
        self.loader.ports.log.log(
            LogLevel::Warn,
            &format!(
                "{}: {what}; keeping any stored copy; next attempt in {delay} ms",
                self.url
            ),
        );
        guard.complete(Outcome::Failed(error));
    }

    /// An origin whose circuit is open: nothing was fetched; stale copies
    /// keep being served, and this key tries again when the next probe is
    /// due (without counting a failure of its own).
    fn origin_down(&self, guard: LeaderGuard<Outcome>, now: u64, retry_after_ms: u64) {
        self.loader
            .shared
            .backoff
            .defer(self.key, now + retry_after_ms);
        let retry_after_s = u32::try_from(retry_after_ms.div_ceil(1000))
            .unwrap_or(u32::MAX)
            .max(1);
        guard.complete(Outcome::Failed(LoadError::OriginDown { retry_after_s }));
    }

    /// A response that may not be stored.
    fn pass(
        &self,
        guard: LeaderGuard<Outcome>,
        frag: Rc<Fragment>,
        personal: bool,
        replaces: bool,
        now: u64,
        why: &str,
    ) {
        let shared = &self.loader.shared;
        shared.backoff.record_success(self.key);
        self.loader
            .ports
            .log
            .log(LogLevel::Info, &format!("{}: not cached ({why})", self.url));
        if replaces {
            shared.recent.forget(self.key);
        }
        if personal {
            let pass_ms = u64::from(self.cache.route.soft_ttl.max(1)) * 1000;
            shared.mark_personal(self.key, now + pass_ms, now);
            guard.publish(Outcome::Personal(frag));
        } else {
            guard.publish(Outcome::Shared(frag));
        }
    }

    /// Loaded before a purge of this key: possibly the old content. The
    /// request that started the load asked before the purge and may have
    /// it; nobody else may, and it is neither kept nor stored.
    fn purged_meanwhile(&self, guard: LeaderGuard<Outcome>, frag: Rc<Fragment>) {
        self.loader.shared.backoff.record_success(self.key);
        self.loader.ports.log.log(
            LogLevel::Info,
            &format!("{}: purged while being fetched; not stored", self.url),
        );
        guard.publish(Outcome::Personal(frag));
    }

    /// Tells this isolate's breaker what the origin did.
    fn record_origin(&self, healthy: bool, now: u64) {
        self.loader
            .record_origin(self.origin, self.key, healthy, now);
    }
}

/// What a write-back must not overwrite: anything stored after the fetch
/// `started`, or purged since `epoch`. `known_absent`: the lookup found
/// nothing in KV just before this fetch, so it need not look again.
pub(super) struct Since {
    pub(super) started: u64,
    pub(super) epoch: u64,
    pub(super) known_absent: bool,
}

/// What [`write_back`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// The entry is in KV.
    Stored,
    /// This isolate wrote the key less than a second ago (KV takes one
    /// write per second per key): nothing written.
    Throttled,
    /// KV holds a newer copy, or the key was purged: nothing written.
    Superseded,
    /// The KV write failed (logged).
    Failed,
}

/// An entry to write back: the KV value, its metadata and hard TTL, its
/// tags and, for the tag index, the replaced copy's tags and index life.
pub(super) struct Entry<'a> {
    pub(super) value: Vec<u8>,
    pub(super) meta: EntryMeta,
    pub(super) hard_ms: u64,
    pub(super) tags: &'a [String],
    pub(super) prev: Option<(&'a [String], u64)>,
}

/// Writes an entry, at most once per second per key from this isolate, and
/// not at all if another isolate stored a newer copy (or a purge its
/// tombstone) after our fetch started at `started`, nor if this isolate
/// purged the key since `epoch`.
async fn write_back(loader: &Loader, key: &str, entry: Entry<'_>, since: Since) -> Written {
    if !loader.shared.claim_write(key, loader.ports.clock.now_ms()) {
        return Written::Throttled;
    }
    write_claimed(loader, key, entry, since).await
}

/// [`write_back`] once the write throttle has let this write through.
pub(super) async fn write_claimed(
    loader: &Loader,
    key: &str,
    entry: Entry<'_>,
    since: Since,
) -> Written {
    let Since {
        started,
        epoch,
        known_absent,
    } = since;
    let ports = &loader.ports;
    // A cold load whose lookup just found nothing in KV skips the check, so
    // a cold page costs one KV read per key, not two.
    if !known_absent {
        if let Ok(Some(current)) = ports.store.get(key).await {
            if current.meta.version == META_VERSION && current.meta.stored_at > started {
                return Written::Superseded;
            }
        }
    }
    // The read above let a purge run; nothing is awaited from here to the
    // first write.
    if loader.shared.purges.purged_since(epoch, key, entry.tags) {
        return Written::Superseded;
    }
    let stored_at = entry.meta.stored_at;
    let Some(until) = put_tagged(
        ports,
        key,
        entry.value,
        entry.meta,
        entry.hard_ms,
        entry.tags,
        entry.prev,
    )
    .await
    else {
        return Written::Failed;
    };
    // So that this isolate's next refresh knows the index needs no write.
    loader.shared.recent.note_indexed(key, stored_at, until);
    Written::Stored
}

/// Response headers of a 304 that describe the message rather than the
/// stored representation, and so never update it.
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "transfer-encoding",
];

/// The full response a `304 Not Modified` stands for: the stored copy's
/// status and body, its headers (for a fragment, the few kept in the
/// metadata; for a shell, the ones kept for the page) updated with those
/// the 304 carries. An error, saying why, when the 304 cannot be used: the
/// request was not conditional, nothing is stored, or the 304's `ETag`
/// names another representation than the stored one.
fn not_modified(
    resp: &OriginResponse,
    conditional: bool,
    stored: Option<&Cached>,
) -> Result<OriginResponse, &'static str> {
    let (meta, frag) = match stored {
        Some(s) if conditional => s,
        _ => return Err("to an unconditional request"),
    };
    if let (Some(new), Some(old)) = (resp.header("etag"), meta.etag.as_deref()) {
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        if opaque(new) != opaque(old) {
            return Err("with another ETag than the stored one");
        }
    }
    let mut headers: HeaderMap = frag.headers.clone();
    let esi = meta.esi && !headers.contains_key("surrogate-control");
    let mut set = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.and_then(crate::headers::value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("content-type", meta.content_type.as_deref());
    set("etag", meta.etag.as_deref());
    set("last-modified", meta.last_modified.as_deref());
    set("cache-control", meta.cache_control.as_deref());
    // The stored copy's tags stand unless the 304 names its own.
    if !frag.tags.is_empty()
        && !resp.headers.contains_key("cache-tag")
        && !resp.headers.contains_key("surrogate-key")
    {
        set("cache-tag", Some(&frag.tags.join(",")));
    }
    if esi {
        set("surrogate-control", Some("content=\"ESI/1.0\""));
    }
    let mut updated: Vec<&HeaderName> = Vec::new();
    for (name, value) in &resp.headers {
        if NOT_UPDATED_BY_304.contains(&name.as_str()) {
            continue;
        }
        // The first value replaces the stored ones in place (keeping the
        // headers' order); further values of the same name follow it.
        if updated.contains(&name) {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
            updated.push(name);
        }
    }
    Ok(OriginResponse {
        status: StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK),
        headers,
        body: frag.body.to_vec(),
    })
}
