//! Coordinating isolates: one origin fetch per fragment per refresh window
//! for the whole network, and one circuit breaker per origin.
//!
//! Single-flight in [`crate::cache::flight`] stops at the isolate. A real
//! deployment runs many isolates in many locations, and KV is eventually
//! consistent, so without coordination every isolate refreshes a popular
//! fragment itself. When the worker has a Durable Object binding
//! (`COORDINATOR`), an isolate's leader for a cold miss or a refresh (after
//! the isolate's own single-flight, so one request per isolate) asks the
//! object named after the cache key instead of the origin:
//!
//! - if the object holds a copy newer than the caller's and still fresh, it
//!   answers with it and nothing reaches the origin (another isolate already
//!   refreshed it; this is also what keeps XFetch's early refreshes from
//!   multiplying);
//! - otherwise it fetches once (concurrent callers share that fetch: inside
//!   one object that is safe, unlike between isolate requests), writes KV
//!   once, and answers every caller with the bytes and metadata.
//!
//! Before fetching, a key's object asks the object of the key's origin for
//! a [`Permit`] from that origin's [`Breaker`], and reports the outcome
//! after: the breaker's state is shared by every isolate and key, so while
//! an origin is down it gets at most about one probe per second in all.
//!
//! Hits never touch an object. An object that cannot be reached, answers
//! late or fails makes the isolate fall back to fetching for itself (with a
//! log line): the page never fails because of the coordinator. The cost is
//! one Durable Object request per cold miss or refresh per isolate, plus the
//! breaker's two per origin fetch, and a round trip to wherever the object
//! lives (cold misses and refreshes only).
//!
//! This module is runtime-free: the wire types, the [`Coordinator`] port the
//! isolate calls, the [`Gate`] port a key object calls, and the object's
//! logic ([`KeyObject`]). The adapter runs [`KeyObject`] inside the Durable
//! Object class and carries the wire types over `fetch`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::future::{FutureExt, Shared};
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

use crate::cache::breaker::{Breaker, BreakerState, Permit};
use crate::cache::entry::{EntryMeta, Freshness, META_VERSION};
use crate::cache::kv::{put_entry, put_tagged};
use crate::cache::policy::RoutePolicy;
use crate::cache::verdict::{verdict, StoreRules, Verdict};
use crate::headers::{encode_block, keep_from_origin, value as header_value};
use crate::ports::{LocalFuture, LogLevel, OriginRequest, Ports};
use crate::purge::{PurgeRecord, SharedLog};
use crate::url::Url;

/// Path of a load request on the coordinator object.
pub const LOAD_PATH: &str = "/load";
/// Path of a breaker permit request on an origin's object.
pub const PERMIT_PATH: &str = "/breaker/permit";
/// Path of a breaker outcome report on an origin's object.
pub const REPORT_PATH: &str = "/breaker/report";
/// Path that makes a key's object drop its copy (after a purge).
pub const FORGET_PATH: &str = "/forget";
/// Path that hands a key's object a written-through copy (the body is a
/// [`Reply::encode`]d [`Answer::Entry`]).
pub const PUT_PATH: &str = "/put";
/// Name of the object that holds an origin's breaker.
pub fn origin_object_name(origin: &str) -> String {
    format!("origin:{origin}")
}

/// What the route lets the object store (the isolate's route policy).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Soft TTL, seconds.
    pub soft_ttl: u32,
    /// Hard TTL, seconds.
    pub hard_ttl: u32,
    /// TTL of 404/410, seconds.
    pub negative_ttl: u32,
    /// Whether origin cache headers may set the TTLs.
    pub honor_origin_headers: bool,
    /// TTL jitter fraction.
    pub jitter: f64,
    /// A page shell (its headers are stored with it).
    pub shell: bool,
}

impl Rules {
    fn route(&self) -> RoutePolicy {
        RoutePolicy {
            soft_ttl: self.soft_ttl,
            hard_ttl: self.hard_ttl,
            negative_ttl: self.negative_ttl,
            honor_origin_headers: self.honor_origin_headers,
        }
    }
}

/// An isolate's request to a key's object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The cache key (also the object's name).
    pub key: String,
    /// The absolute origin URL, already allow-listed by the isolate.
    pub url: String,
    /// The origin request's headers, exactly as the isolate would send them
    /// (the key's normalised variant values; never credentials).
    pub headers: Vec<(String, String)>,
    /// Origin timeout.
    pub timeout_ms: u32,
    /// Body size limit.
    pub max_body_bytes: usize,
    /// `stored_at` of the caller's copy, `None` when it has none (cold).
    pub have: Option<u64>,
    /// What may be stored, and for how long.
    pub rules: Rules,
}

/// A key's object's answer. The bytes travel beside it (see [`Reply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Answer {
    /// A stored entry (the object's copy, or what it just fetched and
    /// stored); the bytes are the KV value.
    Entry {
        /// Its metadata.
        meta: EntryMeta,
        /// Whether this answer cost an origin fetch.
        fetched: bool,
    },
    /// The origin's answer may not be stored; the bytes are the kept
    /// response headers (`header_bytes` long) followed by the body.
    Pass {
        /// Origin status.
        status: u16,
        /// Marked for one user (`private`, `no-store`, `Set-Cookie`): only
        /// the request that caused the fetch may use it.
        personal: bool,
        /// Length of the header block at the start of the bytes.
        header_bytes: u32,
    },
    /// The origin failed (5xx, timeout, reset); nothing was stored.
    Failed {
        /// The status, for a 5xx.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// The origin's breaker is open: nothing was sent to it.
    OriginDown {
        /// When the next probe may go, ms from now.
        retry_after_ms: u64,
    },
}

/// An answer and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// What happened.
    pub answer: Answer,
    /// The value, or headers and body (see [`Answer`]).
    pub bytes: Rc<[u8]>,
}

impl Reply {
    fn bare(answer: Answer) -> Reply {
        Reply {
            answer,
            bytes: Rc::from(Vec::new()),
        }
    }

    /// The reply as one body: a 4-byte big-endian length, the answer as
    /// JSON, then the bytes. A body rather than headers, so that neither
    /// size nor non-ASCII text in origin metadata can break it.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.answer).unwrap_or_default();
        let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(4 + json.len() + self.bytes.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Parses a body written by [`Reply::encode`].
    pub fn decode(body: &[u8]) -> Result<Reply, CoordError> {
        let bad = |why: &str| CoordError(format!("malformed reply: {why}"));
        let len: [u8; 4] = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        let end = 4usize.saturating_add(u32::from_be_bytes(len) as usize);
        let json = body.get(4..end).ok_or_else(|| bad("truncated answer"))?;
        let answer = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
        Ok(Reply {
            answer,
            bytes: Rc::from(&body[end..]),
        })
    }
}

/// Why the coordinator could not answer. Always answered by fetching
/// directly, never by failing the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("coordinator: {0}")]
pub struct CoordError(pub String);

/// The coordinator as an isolate sees it (a Durable Object namespace in the
/// Worker).
pub trait Coordinator {
    /// Asks the object for `req.key` to load it.
    fn load(&self, req: LoadRequest) -> LocalFuture<Result<Reply, CoordError>>;
    /// Tells the object for `key` to drop its copy (after a purge).
    fn forget(&self, key: &str) -> LocalFuture<Result<(), CoordError>>;
    /// Hands the object for `key` a copy written through (already in KV):
    /// it replaces the object's copy, and a fetch the object has in flight
    /// neither overwrites it nor stores what it got.
    fn put(&self, key: &str, entry: Reply) -> LocalFuture<Result<(), CoordError>>;
    /// Appends a purge to the shared purge log (the [`PURGE_LOG_OBJECT`]).
    fn publish_purge(&self, record: PurgeRecord) -> LocalFuture<Result<(), CoordError>>;
    /// The shared purge log.
    fn purge_log(&self) -> LocalFuture<Result<SharedLog, CoordError>>;
}

/// Name of the object that holds the shared purge log
/// ([`crate::purge::SharedLog`]): one object, so every isolate sees every
/// purge in the order it was appended.
pub const PURGE_LOG_OBJECT: &str = "purge-log";
/// Path that appends a [`PurgeRecord`] (its text form) to the purge log object.
pub const PURGE_APPEND_PATH: &str = "/purges/append";
/// Path that answers the purge log (its text form, [`SharedLog::encode`]).
pub const PURGE_LOG_PATH: &str = "/purges/log";

/// A breaker outcome, as reported to an origin's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The origin answered (any status below 500).
    Healthy,
    /// 5xx, timeout or reset.
    Failed,
}

/// The shared per-origin breaker, as a key's object sees it.
pub trait Gate {
    /// May the object fetch from `origin` now?
    fn permit(&self, origin: &str) -> LocalFuture<Permit>;
    /// Reports what a permitted fetch of cache key `key` found.
    fn report(&self, origin: &str, key: &str, outcome: Outcome) -> LocalFuture<()>;
}

/// A [`Gate`] on a breaker in this isolate: an origin's object uses it for
/// its own breaker, and the simulations share one between key objects.
pub struct LocalGate {
    breaker: Rc<Breaker>,
    ports: Ports,
}

impl LocalGate {
    /// A gate on `breaker`, reading time and randomness from `ports`.
    pub fn new(breaker: Rc<Breaker>, ports: Ports) -> Self {
        LocalGate { breaker, ports }
    }
}

impl Gate for LocalGate {
    fn permit(&self, origin: &str) -> LocalFuture<Permit> {
        let now = self.ports.clock.now_ms();
        let p = self.breaker.permit(origin, now, self.ports.rng.next_f64());
        Box::pin(std::future::ready(p))
    }

    fn report(&self, origin: &str, key: &str, outcome: Outcome) -> LocalFuture<()> {
        let now = self.ports.clock.now_ms();
        let before = self.breaker.state(origin, now);
        let after = match outcome {
            Outcome::Healthy => {
                self.breaker.record_success(origin, now);
                BreakerState::Closed
            }
            Outcome::Failed => {
                self.breaker
                    .record_key_failure(origin, key, now, self.ports.rng.next_f64())
            }
        };
        if before.as_str() != after.as_str() {
            self.ports.log.log(
                LogLevel::Warn,
                &format!("origin {origin}: breaker {} → {}", before, after),
            );
        }
        Box::pin(std::future::ready(()))
    }
}

type SharedLoad = Shared<LocalFuture<Rc<Reply>>>;

/// One cache key's coordinator: its latest copy and the fetch in flight.
#[derive(Default)]
pub struct KeyObject {
    copy: RefCell<Option<(EntryMeta, Rc<[u8]>)>>,
    looked_in_store: Cell<bool>,
    flight: RefCell<Option<SharedLoad>>,
    /// Copies written through so far: a fetch that sees this change while
    /// it is out was overtaken by newer content.
    pushes: Cell<u64>,
}

impl KeyObject {
    /// A key object with no copy yet (it reads KV on first use).
    pub fn new() -> Rc<Self> {
        Rc::new(KeyObject::default())
    }

    /// Drops the copy (after a purge): the next load fetches.
    pub fn forget(&self) {
        *self.copy.borrow_mut() = None;
        self.looked_in_store.set(true);
    }

    /// Takes a copy written through (see [`Coordinator::put`]); an answer
    /// other than [`Answer::Entry`] is ignored.
    pub fn put(&self, entry: &Reply) {
        if let Answer::Entry { meta, .. } = &entry.answer {
            *self.copy.borrow_mut() = Some((meta.clone(), Rc::clone(&entry.bytes)));
            self.looked_in_store.set(true);
            self.pushes.set(self.pushes.get() + 1);
        }
    }

    /// The copy written through since the push count was `pushes`, as a
    /// load's answer; `None` when nothing was pushed meanwhile.
    fn pushed_since(&self, pushes: u64) -> Option<Reply> {
        if self.pushes.get() == pushes {
            return None;
        }
        let (meta, value) = self.copy.borrow().clone()?;
        Some(Reply {
            answer: Answer::Entry {
                meta,
                fetched: true,
            },
            bytes: value,
        })
    }

    /// Serves one load request: a newer fresh copy if there is one, else
    /// the fetch in flight, else a new fetch (gated by the origin's
    /// breaker) that is stored once and shared by every caller.
    pub async fn load(
        self: Rc<Self>,
        ports: Ports,
        gate: Rc<dyn Gate>,
        req: LoadRequest,
    ) -> Rc<Reply> {
        if !self.looked_in_store.get() {
            self.looked_in_store.set(true);
            if let Ok(Some(e)) = ports.store.get(&req.key).await {
                if e.meta.version == META_VERSION && self.copy.borrow().is_none() {
                    *self.copy.borrow_mut() = Some((e.meta, Rc::from(e.body)));
                }
            }
        }
        let now = ports.clock.now_ms();
        if let Some((meta, value)) = self.copy.borrow().clone() {
            let newer = req.have.is_none_or(|have| meta.stored_at > have);
            let usable = match meta.classify(now) {
                Freshness::Fresh => true,
                // A caller with nothing gets the stale copy at once (it then
                // asks for a refresh, with `have` set).
                Freshness::Stale => req.have.is_none(),
                Freshness::Expired => false,
            };
            if newer && usable && !meta_is_tombstone(&meta) {
                return Rc::new(Reply {
                    answer: Answer::Entry {
                        meta,
                        fetched: false,
                    },
                    bytes: value,
                });
            }
        }
        let running = self.flight.borrow().clone();
        if let Some(flight) = running {
            return flight.await;
        }
        let this = Rc::clone(&self);
        let fut: LocalFuture<Rc<Reply>> =
            Box::pin(async move { Rc::new(this.fetch(ports, gate, req).await) });
        let shared = fut.shared();
        *self.flight.borrow_mut() = Some(shared.clone());
        let reply = shared.await;
        *self.flight.borrow_mut() = None;
        reply
    }

    async fn fetch(&self, ports: Ports, gate: Rc<dyn Gate>, req: LoadRequest) -> Reply {
        let url = match Url::parse(&req.url) {
            Ok(u) => u,
            Err(e) => {
                return Reply::bare(Answer::Failed {
                    status: None,
                    message: format!("bad URL {}: {e}", req.url),
                })
            }
        };
        let origin = url.origin().to_string();
        let pushes = self.pushes.get();
        match gate.permit(&origin).await {
            Permit::Deny { retry_after_ms } => {
                return Reply::bare(Answer::OriginDown { retry_after_ms });
            }
            Permit::Go | Permit::Probe => {}
        }
        let mut headers = HeaderMap::new();
        for (n, v) in &req.headers {
            if let (Ok(n), Some(v)) = (HeaderName::from_bytes(n.as_bytes()), header_value(v)) {
                headers.append(n, v);
            }
        }
        let started = ports.clock.now_ms();
        let result = ports
            .origin
            .fetch(OriginRequest {
                url: url.clone(),
                headers,
                timeout_ms: req.timeout_ms,
                max_body_bytes: req.max_body_bytes,
            })
            .await;
        let now = ports.clock.now_ms();
        let fetch_ms = u32::try_from(now.saturating_sub(started)).unwrap_or(u32::MAX);
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                gate.report(&origin, &req.key, Outcome::Failed).await;
                return Reply::bare(Answer::Failed {
                    status: None,
                    message: e.to_string(),
                });
            }
        };
        let rules = StoreRules {
            route: &req.rules.route(),
            jitter: req.rules.jitter,
            shell: req.rules.shell,
        };
        match verdict(&resp, rules, now, fetch_ms, ports.rng.as_ref()) {
            Verdict::Failure => {
                gate.report(&origin, &req.key, Outcome::Failed).await;
                Reply::bare(Answer::Failed {
                    status: Some(resp.status.as_u16()),
                    message: format!("origin answered {}", resp.status.as_u16()),
                })
            }
            Verdict::Pass(why) => {
                gate.report(&origin, &req.key, Outcome::Healthy).await;
                if self.copy.borrow().is_some() {
                    // The origin no longer lets this be cached: the stored
                    // copy must stop being served (an expired tombstone).
                    let tomb = EntryMeta::new(now, now, now, resp.status.as_u16(), fetch_ms);
                    let _ = put_entry(&ports, &req.key, Vec::new(), tomb.clone(), 0).await;
                    *self.copy.borrow_mut() = None;
                }
                let kept = if req.rules.shell {
                    keep_from_origin(&resp.headers)
                } else {
                    HeaderMap::new()
                };
                let mut bytes = encode_block(&kept).unwrap_or_default();
                let header_bytes = u32::try_from(bytes.len()).unwrap_or(0);
                bytes.extend_from_slice(&resp.body);
                Reply {
                    answer: Answer::Pass {
                        status: resp.status.as_u16(),
                        personal: why.is_personal(),
                        header_bytes,
                    },
                    bytes: Rc::from(bytes),
                }
            }
            Verdict::Store {
                meta,
                value,
                tags,
                headers_dropped,
                ..
            } => {
                gate.report(&origin, &req.key, Outcome::Healthy).await;
                // Written through while this fetch was out: that copy is
                // newer, and is the answer.
                if let Some(pushed) = self.pushed_since(pushes) {
                    return pushed;
                }
                if headers_dropped {
                    ports.log.log(
                        LogLevel::Warn,
                        &format!("{url}: response headers too large to store; the cached copy keeps none"),
                    );
                }
                let mut meta = *meta;
                let hard_ms = meta.stale_until.saturating_sub(now);
                let value: Rc<[u8]> = Rc::from(value);
                let prev = self.copy.borrow().as_ref().map(|(m, v)| {
                    let tags = crate::tags::of_value(m.header_bytes, m.tag_bytes, v);
                    (tags, m.index_until)
                });
                let prev = prev.as_ref().map(|(t, u)| (&t[..], *u));
                meta.index_until = put_tagged(
                    &ports,
                    &req.key,
                    value.to_vec(),
                    meta.clone(),
                    hard_ms,
                    &tags,
                    prev,
                )
                .await
                .unwrap_or(meta.index_until);
                // Written through while this copy was being stored: the
                // pushed copy stays the object's answer.
                if let Some(pushed) = self.pushed_since(pushes) {
                    return pushed;
                }
                *self.copy.borrow_mut() = Some((meta.clone(), Rc::clone(&value)));
                Reply {
                    answer: Answer::Entry {
                        meta,
                        fetched: true,
                    },
                    bytes: value,
                }
            }
        }
    }
}

/// An expired entry written to replace one the origin stopped allowing.
fn meta_is_tombstone(meta: &EntryMeta) -> bool {
    meta.fresh_until == meta.stored_at && meta.stale_until == meta.stored_at
}
