//! Purging cached fragments and shells when content changes.
//!
//! An operator (or the origin's publishing pipeline) sends
//! `POST /_fragcache/purge?path=/fragments/nav&path=/fragments/promo/*` with
//! `Authorization: Bearer <token>`, the token being the Worker secret
//! `FRAGCACHE_PURGE_TOKEN`. Each path removes every stored variant of that
//! URL (any query string, any `vary` values) on every route that covers it;
//! a path ending in `*` removes everything under that prefix. A `path` is
//! percent-decoded, then encoded again as a URL path must be (non-ASCII,
//! spaces), so `/fragments/caf%C3%A9` and `/fragments/a%20b` reach the keys
//! of those includes; a character an include spelt encoded without need
//! (`%7C` for `|`) is reached by encoding it twice (`%257C`).
//!
//! # What a purge does
//!
//! 1. It records the purge in this isolate ([`PurgeLog`]) and forgets the
//!    isolate's memory copies. An origin fetch of a covered key that
//!    *started* before the purge may carry the old content: it is neither
//!    remembered nor written to KV, and it is published as personal, so the
//!    request that started it (which asked before the purge) gets it while
//!    every request waiting on it fetches its own copy. The check is by
//!    purge sequence number, not by clock, so it holds within one
//!    millisecond too.
//! 2. It overwrites every stored variant in KV with a *tombstone*: an empty
//!    body whose metadata is already expired (`fresh_until = stale_until =
//!    stored_at = now`), with KV's shortest life (60 s). Reads treat it as
//!    absent (cold). A write-back skips its write when KV holds an entry
//!    stored after its fetch started, tombstones included, so a refresh
//!    running in another isolate does not put the old content back either,
//!    as far as KV's eventual consistency lets that isolate see the
//!    tombstone (up to 60 s).
//!
//! Other isolates keep serving their in-memory copy until its soft TTL ends,
//! so a purge takes effect everywhere within `max(soft_ttl, 60 s)`. Keys are
//! found by KV prefix listing, with the prefix built by
//! [`crate::cache::key::key_prefix`], the function that starts every key. A
//! purge costs one list call per route and one write per stored variant; at
//! most [`MAX_DELETES`] per request, and the answer says `truncated` when
//! there were more (or the listing itself was cut short).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::cache::key::{covers, key_prefix, list_prefix, KeyKind};
use crate::cache::EntryMeta;
use crate::config::{Config, PathPattern};
use crate::esi::form_decode;
use crate::loader::Loader;
use crate::ports::{LogLevel, StoredEntry};

/// Path of the purge endpoint.
pub const PURGE_PATH: &str = "/_fragcache/purge";

/// Most keys one purge request tombstones (KV allows 1,000 operations per
/// invocation); the caller repeats the request for the rest.
pub const MAX_DELETES: usize = 500;

/// KV life of a tombstone (KV's shortest).
pub const TOMBSTONE_TTL_S: u64 = crate::config::MIN_HARD_TTL_S as u64;

/// How long this isolate remembers a purge: far longer than any origin
/// fetch may take (its timeout is at most 30 s).
const PURGE_MEMORY_MS: u64 = 120_000;

/// Most purges remembered at once.
const MAX_PURGE_MARKS: usize = 1024;

/// Recent purges in this isolate, so that a fetch that started before a
/// purge does not bring the purged content back (see the module doc).
#[derive(Default)]
pub struct PurgeLog {
    /// Sequence number of the latest purge.
    seq: Cell<u64>,
    /// A fetch that started before this purge counts as purged: the marks
    /// older than it were dropped, so nothing finer is known.
    floor: Cell<u64>,
    marks: RefCell<VecDeque<PurgeMark>>,
}

struct PurgeMark {
    seq: u64,
    at_ms: u64,
    prefix: String,
    exact: bool,
}

impl PurgeLog {
    /// The current epoch: a fetch records it when it starts.
    pub fn epoch(&self) -> u64 {
        self.seq.get()
    }

    /// Records a purge of `prefix` (exact path or whole prefix) at `now`.
    pub fn record(&self, prefix: &str, exact: bool, now: u64) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut marks = self.marks.borrow_mut();
        while let Some(old) = marks.front() {
            if marks.len() < MAX_PURGE_MARKS && now.saturating_sub(old.at_ms) < PURGE_MEMORY_MS {
                break;
            }
            // Forgetting a mark would let an older fetch through: from now
            // on every fetch that started before it counts as purged.
            self.floor.set(old.seq);
            marks.pop_front();
        }
        marks.push_back(PurgeMark {
            seq,
            at_ms: now,
            prefix: prefix.to_owned(),
            exact,
        });
    }

    /// Whether a purge covering `key` happened after `epoch`.
    pub fn purged_since(&self, epoch: u64, key: &str) -> bool {
        epoch < self.floor.get()
            || self
                .marks
                .borrow()
                .iter()
                .any(|m| m.seq > epoch && covers(&m.prefix, m.exact, key))
    }
}

/// What one purge request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Keys purged (overwritten with a tombstone).
    pub deleted: Vec<String>,
    /// Whether more keys may match than this request purged: the listing
    /// was cut short, or more matched than [`MAX_DELETES`].
    pub truncated: bool,
    /// Problems (store errors), reported to the caller.
    pub errors: Vec<String>,
}

impl PurgeReport {
    /// The report as JSON for the response body.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "purged": self.deleted.len(),
            "keys": self.deleted,
            "truncated": self.truncated,
            "errors": self.errors,
        })
        .to_string()
    }
}

/// Why a purge request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    /// No `path` parameter.
    #[error("give at least one path: {PURGE_PATH}?path=/fragments/nav")]
    NoPaths,
    /// A path that is not an absolute path.
    #[error("path {0:?} must start with '/'")]
    BadPath(String),
}

/// The `path` parameters of a purge request's query string.
pub fn paths_from_query(query: Option<&str>) -> Result<Vec<String>, PurgeError> {
    let paths: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.strip_prefix("path="))
        .map(|p| form_decode(p).into_owned())
        .collect();
    if paths.is_empty() {
        return Err(PurgeError::NoPaths);
    }
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(PurgeError::BadPath(bad.clone()));
    }
    Ok(paths)
}

/// The key prefixes that cover `path`, with whether a match must end there
/// (exact purge: the key continues only with a query, variants or a hash).
pub fn key_prefixes(config: &Config, path: &str) -> Vec<(String, bool)> {
    let (base, wildcard) = match path.strip_suffix('*') {
        Some(b) => (b, true),
        None => (path, false),
    };
    let covers = |pattern: &PathPattern| {
        if wildcard {
            // Any route that can match something under the prefix.
            match pattern {
                PathPattern::Exact(p) => p.starts_with(base),
                PathPattern::Prefix(p) => p.starts_with(base) || base.starts_with(p.as_str()),
            }
        } else {
            pattern.matches(base)
        }
    };
    let mut out = Vec::new();
    for r in &config.fragments {
        if !r.private && covers(&r.pattern) {
            out.push((
                key_prefix(KeyKind::Fragment, r.id, &config.origin, base),
                !wildcard,
            ));
        }
    }
    for r in &config.pages {
        if r.ttls.is_some() && covers(&r.pattern) {
            out.push((
                key_prefix(KeyKind::Page, r.id, &config.origin, base),
                !wildcard,
            ));
        }
    }
    out
}

/// Purges every stored entry covered by `paths` (see the module doc).
pub async fn purge(loader: &Loader, paths: &[String]) -> PurgeReport {
    let ports = loader.ports();
    let shared = loader.shared();
    let mut report = PurgeReport::default();
    let targets: Vec<(String, bool)> = paths
        .iter()
        .flat_map(|p| key_prefixes(loader.config(), p))
        .collect();
    // Before any await: a fetch running now started before this purge.
    let now = ports.clock.now_ms();
    for (prefix, exact) in &targets {
        shared.purges.record(prefix, *exact, now);
        shared.forget_prefix(list_prefix(prefix));
    }
    for (prefix, exact) in &targets {
        let listed = match ports.store.list(list_prefix(prefix)).await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(format!("{prefix}: {e}"));
                continue;
            }
        };
        report.truncated |= listed.truncated;
        for key in listed.keys {
            if !covers(prefix, *exact, &key) {
                continue;
            }
            if report.deleted.len() >= MAX_DELETES {
                report.truncated = true;
                break;
            }
            let now = ports.clock.now_ms();
            let tombstone = StoredEntry {
                body: Vec::new(),
                meta: EntryMeta::new(now, now, now, 200, 0),
            };
            match ports.store.put(&key, tombstone, TOMBSTONE_TTL_S).await {
                Ok(()) => report.deleted.push(key),
                Err(e) => report.errors.push(format!("{key}: {e}")),
            }
        }
    }
    // The coordinator's objects hold copies too; an object that cannot be
    // told still finds the tombstone newer than its copy on its next load.
    if let Some(coordinator) = &ports.coordinator {
        for key in &report.deleted {
            if let Err(e) = coordinator.forget(key).await {
                ports.log.log(LogLevel::Warn, &format!("purge {key}: {e}"));
            }
        }
    }
    ports.log.log(
        LogLevel::Info,
        &format!(
            "purge {paths:?}: {} entries purged{}",
            report.deleted.len(),
            if report.truncated {
                " (more remain)"
            } else {
                ""
            }
        ),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_the_query() {
        assert_eq!(
            paths_from_query(Some("path=%2Ffragments%2Fnav&x=1&path=/a/*")),
            Ok(vec!["/fragments/nav".to_owned(), "/a/*".to_owned()])
        );
        assert_eq!(paths_from_query(None), Err(PurgeError::NoPaths));
        assert_eq!(
            paths_from_query(Some("path=nav")),
            Err(PurgeError::BadPath("nav".into()))
        );
        assert_eq!(
            paths_from_query(Some("path=/a%zz%4+b")),
            Ok(vec!["/a%zz%4 b".to_owned()])
        );
    }

    #[test]
    fn prefixes_cover_the_routes_that_cache_the_path() {
        let c = Config::from_json_str(
            r#"{ "origin": "http://o.test",
                 "pages": [ { "path": "/", "soft_ttl": 5, "hard_ttl": 60 }, { "path": "/live" } ],
                 "fragments": [ { "path": "/f/me", "private": true },
                                { "path": "/f/*", "soft_ttl": 5, "hard_ttl": 60 } ] }"#,
        )
        .unwrap();
        let f = c.fragment_route("/f/x").unwrap().id;
        assert_eq!(
            key_prefixes(&c, "/f/x"),
            vec![(format!("f{f}:http://o.test/f/x"), true)]
        );
        assert!(key_prefixes(&c, "/f/me").is_empty() || key_prefixes(&c, "/f/me").len() == 1);
        assert!(
            key_prefixes(&c, "/live").is_empty(),
            "uncached pages have no keys"
        );
        assert_eq!(key_prefixes(&c, "/").len(), 1);
        assert_eq!(
            key_prefixes(&c, "/f/*"),
            vec![(format!("f{f}:http://o.test/f/"), false)]
        );
    }
}
