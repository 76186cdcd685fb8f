//! Write-through: a fragment body pushed by the origin, stored as if it had
//! been fetched ([`crate::write_through`] parses the request; this is the
//! storage side, inside the loader so that it shares the fetch path's
//! rules).
//!
//! The pushed body is made into an [`OriginResponse`] and goes through the
//! same [`verdict`] a fetched response does, then the same write-back
//! ([`write_claimed`]): one set of rules decides what is stored and for how
//! long, whatever the storage path learns later (tags included).
//!
//! A push is newer than any load in flight for its key: it is stored with
//! `stored_at` = now, and a load that started earlier finds it in isolate
//! memory (`Job::superseded`), in KV (the write-back's newer-copy check) or
//! in the coordinator's object ([`crate::coord::KeyObject::put`]) and keeps
//! it instead of what it fetched.

use std::rc::Rc;

use crate::cache::key::cache_key;
use crate::cache::policy::Uncacheable;
use crate::cache::verdict::{verdict, StoreRules, Verdict};
use crate::cache::EntryMeta;
use crate::coord::{Answer, Reply};
use crate::ports::{LogLevel, OriginResponse};
use crate::url::Url;

use super::store::{write_claimed, Entry, Since, Written};
use super::{Fragment, Loader, Policy};

/// Where a push goes: the include URL, its route's policy and its key for
/// this (push) request.
pub struct PushTarget {
    url: Url,
    policy: Policy,
    key: String,
}

impl PushTarget {
    /// The cache key the push writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The largest body the route stores (`limits.max_fragment_bytes`):
    /// the adapter reads the body up to this and no further.
    pub fn max_body_bytes(&self, loader: &Loader) -> usize {
        loader.config.limits.max_fragment_bytes
    }
}

/// Why a push was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The URL matches no fragment route on the origin.
    #[error("{0} matches no fragment route: only fragments are written through")]
    NotAFragment(String),
    /// The route (or this request, signed in) is private.
    #[error("{0} is private for this request: personal data is never stored")]
    Private(String),
    /// The pushed headers forbid storing it.
    #[error("the body would not be stored: its headers say {0}")]
    Uncacheable(&'static str),
    /// Explicit TTLs that the store cannot keep.
    #[error("{0}")]
    BadTtl(String),
    /// This isolate wrote the key less than a second ago.
    #[error(
        "{0} was written less than a second ago (KV takes one write per second per key); retry"
    )]
    Throttled(String),
    /// KV did not take the write.
    #[error("the KV write of {0} failed; nothing stored")]
    StoreFailed(String),
}

/// What a push stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The key written.
    pub key: String,
    /// Its metadata (stored-at, fresh-until, stale-until in ms).
    pub meta: EntryMeta,
    /// Whether the coordinator's object took the copy (`None`: there is no
    /// coordinator; `Some(Err)`: it could not be told).
    pub coordinator: Option<Result<(), String>>,
}

impl Loader {
    /// The target of a push of `url` for this loader's request, which acts
    /// as the client request for the route's `vary` (and
    /// `private_if_cookie`).
    pub fn push_target(&self, url: &Url) -> Result<PushTarget, PushError> {
        let route = (url.origin() == self.config.origin)
            .then(|| self.config.fragment_route(url.path()))
            .flatten()
            .ok_or_else(|| PushError::NotAFragment(url.path_and_query()))?;
        let policy = Policy::for_fragment(route, &self.req);
        let Some(cache) = &policy.cache else {
            return Err(PushError::Private(url.path_and_query()));
        };
        let key = cache_key(policy.kind, policy.route_id, url, &cache.vary, &self.req);
        Ok(PushTarget {
            url: url.clone(),
            policy,
            key,
        })
    }

    /// Stores `resp` under `target` as if the origin had just sent it.
    /// `ttls`: explicit soft and hard TTLs (seconds) that replace the
    /// route's, and the pushed headers' when the route honours them.
    pub async fn push(
        &self,
        target: &PushTarget,
        resp: OriginResponse,
        ttls: (Option<u32>, Option<u32>),
    ) -> Result<Pushed, PushError> {
        let Some(cache) = &target.policy.cache else {
            return Err(PushError::Private(target.url.path_and_query()));
        };
        let mut route = cache.route;
        if ttls.0.is_some() || ttls.1.is_some() {
            route.soft_ttl = ttls.0.unwrap_or(route.soft_ttl);
            route.hard_ttl = ttls.1.unwrap_or(route.hard_ttl);
            route.honor_origin_headers = false;
            if route.hard_ttl < route.soft_ttl {
                return Err(PushError::BadTtl(format!(
                    "hard_ttl ({}) must be at least soft_ttl ({})",
                    route.hard_ttl, route.soft_ttl
                )));
            }
        }
        let rules = StoreRules {
            route: &route,
            jitter: cache.jitter,
            shell: false,
        };
        let ports = &self.ports;
        let now = ports.clock.now_ms();
        let key = target.key.as_str();
        let (meta, value, tags) = match verdict(&resp, rules, now, 0, ports.rng.as_ref()) {
            Verdict::Store {
                meta, value, tags, ..
            } => (*meta, value, tags),
            Verdict::Pass(why) => return Err(PushError::Uncacheable(why_text(why))),
            Verdict::Failure => return Err(PushError::Uncacheable("a server error")),
        };
        // Refused before anything changes, so a throttled push stores
        // nothing anywhere.
        if !self.shared.claim_write(key, now) {
            return Err(PushError::Throttled(key.to_owned()));
        }
        let hard_ms = meta.stale_until.saturating_sub(now);
        let since = Since {
            started: now,
            epoch: self.shared.purges.epoch(),
            // Nothing can have been stored after this instant yet.
            known_absent: true,
        };
        // Into memory before the write's await: a load of this key that
        // ends meanwhile finds it and keeps it rather than its own result.
        // The copy it replaces decides whether the tag index needs writing.
        let prev = self
            .shared
            .recent
            .get(key)
            .map(|(m, f)| (Rc::clone(&f.tags), m.index_until));
        let frag = Rc::new(Fragment::from_response(&resp, now, Some(key), false, false));
        self.shared.recent.remember(key, &meta, &frag);
        let entry = Entry {
            value: value.clone(),
            meta: meta.clone(),
            hard_ms,
            tags: &tags,
            prev: prev.as_ref().map(|(t, u)| (&t[..], *u)),
        };
        let written = write_claimed(self, key, entry, since).await;
        if written != Written::Stored {
            // Failed, or purged during the write's own await (the purge
            // wins): not in KV, so not in memory either.
            self.shared.recent.forget(key);
            return Err(PushError::StoreFailed(key.to_owned()));
        }
        // Whatever this key failed with before, it has content now.
        self.shared.backoff.record_success(key);
        let coordinator = match &ports.coordinator {
            None => None,
            Some(c) => {
                let entry = Reply {
                    answer: Answer::Entry {
                        meta: meta.clone(),
                        fetched: false,
                    },
                    bytes: Rc::from(value),
                };
                let told = c.put(key, entry).await.map_err(|e| e.to_string());
                if let Err(e) = &told {
                    ports.log.log(
                        LogLevel::Warn,
                        &format!("write-through {key}: {e}; the object keeps its older copy until its next load"),
                    );
                }
                Some(told)
            }
        };
        ports.log.log(
            LogLevel::Info,
            &format!("{}: written through as {key}", target.url),
        );
        Ok(Pushed {
            key: key.to_owned(),
            meta,
            coordinator,
        })
    }
}

fn why_text(why: Uncacheable) -> &'static str {
    match why {
        Uncacheable::Private => "Cache-Control: private",
        Uncacheable::NoStore => "no-store",
        Uncacheable::SetCookie => "Set-Cookie",
        Uncacheable::NoCache => "no-cache or max-age=0",
        Uncacheable::Status(_) => "a status that is never stored",
    }
}
