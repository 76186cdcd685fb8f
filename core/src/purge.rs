//! Purging cached fragments and shells when content changes: by path,
//! prefix or tag, hard or soft, and the purge log that carries purges to
//! every isolate.
//!
//! An operator (or the origin's publishing pipeline) sends
//! `POST /_fragcache/purge?path=/fragments/nav&path=/fragments/promo/*&tag=product-42`
//! with `Authorization: Bearer <token>` (see [`crate::admin`]). Each path
//! removes every stored variant of that URL (any query string, any `vary`
//! values) on every route that covers it; a path ending in `*` removes
//! everything under that prefix. A `path` is percent-decoded, then encoded
//! again as a URL path must be (non-ASCII, spaces), so `/fragments/caf%C3%A9`
//! and `/fragments/a%20b` reach the keys of those includes; a character an
//! include spelt encoded without need (`%7C` for `|`) is reached by encoding
//! it twice (`%257C`). Each `tag` removes every entry whose origin response
//! carried that tag ([`crate::tags`]), every variant included, found through
//! the tag index. `soft=1` marks the entries stale instead of removing them.
//!
//! # What a purge does
//!
//! 1. It records the purge in this isolate ([`PurgeLog`]) and applies it to
//!    the isolate's memory copies ([`Shared::apply_purge`]). An origin fetch
//!    of a covered key that *started* before the purge may carry the old
//!    content: it is neither remembered nor written to KV, and it is
//!    published as personal, so the request that started it (which asked
//!    before the purge) gets it while every request waiting on it fetches
//!    its own copy. The check is by purge sequence number, not by clock, so
//!    it holds within one millisecond too.
//! 2. Hard: it overwrites every stored variant in KV with a *tombstone*: an
//!    empty body whose metadata is already expired (`fresh_until =
//!    stale_until = stored_at = now`), with KV's shortest life (60 s).
//!    Reads treat it as absent (cold). A write-back skips its write when KV
//!    holds an entry stored after its fetch started, tombstones included.
//!    Soft: it rewrites every stored variant with `fresh_until = stored_at
//!    = now`, keeping body, tags and hard TTL: the next request is served
//!    that copy (stale) and starts the one background refresh, so a busy
//!    page never goes cold.
//! 3. It tells the coordinator's key objects to drop their copies.
//! 4. It appends a [`PurgeRecord`] to the shared purge log ([`SharedLog`]):
//!    in the coordinator's purge object when there is one (strongly
//!    consistent), else in KV under [`KV_LOG_KEY`].
//!
//! # Reaching every isolate
//!
//! Every isolate reads the shared log at most once per
//! `purge.check_interval_ms` ([`check_shared_log`]): started by a request,
//! run in the background (never on the request's path), at most one read in
//! flight per isolate. A warm page costs no read; the read costs one
//! Durable Object request, or one KV read, per interval per isolate. Each
//! record not seen before is applied like a local purge, by time: copies
//! stored before the purge are forgotten or made stale, and for two
//! minutes KV reads of entries stored before it count as purged, so KV's
//! eventual consistency cannot bring the old content back. The log keeps
//! the last [`LOG_WINDOW_MS`] of purges (at most [`MAX_LOG_RECORDS`]); an
//! isolate that has not read it since before that (idle for longer) cannot
//! know what it missed and forgets all its memory copies.
//!
//! So a purge reaches every isolate that serves traffic within
//! `check_interval_ms` plus one read with the coordinator, and within KV's
//! propagation (up to 60 s) plus `check_interval_ms` without it.
//!
//! Keys are found by KV prefix listing, with the prefix built by
//! [`crate::cache::key::key_prefix`], the function that starts every key,
//! and for tags by listing the tag's index keys. A purge costs one list
//! call per route and per tag, one write per stored variant (soft: one
//! read and one write), one Durable Object request per key with the
//! coordinator, and one log append (a Durable Object request, or a KV read
//! and write); at most [`MAX_DELETES`] keys per request, and the answer says
//! `truncated` when there were more (or a listing itself was cut short).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use futures_util::future::{select, Either};

use crate::cache::key::{covers, key_prefix, list_prefix, KeyKind};
use crate::cache::{EntryMeta, Freshness};
use crate::config::{Config, PathPattern};
use crate::esi::form_decode;
use crate::loader::{Loader, Shared};
use crate::ports::{LogLevel, StoreError, StoredEntry};
use crate::tags::{index_prefix, indexed_key, valid_tag};

/// Path of the purge endpoint.
pub const PURGE_PATH: &str = "/_fragcache/purge";

/// Most keys one purge request tombstones (KV allows 1,000 operations per
/// invocation); the caller repeats the request for the rest.
pub const MAX_DELETES: usize = 500;

/// Most `path` and `tag` parameters in one purge request.
pub const MAX_TARGETS: usize = 64;

/// KV life of a tombstone (KV's shortest).
pub const TOMBSTONE_TTL_S: u64 = crate::config::MIN_HARD_TTL_S as u64;

/// How long this isolate remembers a purge: far longer than any origin
/// fetch may take (its timeout is at most 30 s) and than KV takes to show
/// a write everywhere (60 s).
const PURGE_MEMORY_MS: u64 = 120_000;

/// Most purges remembered at once.
const MAX_PURGE_MARKS: usize = 1024;

/// How far back the shared log keeps purges.
pub const LOG_WINDOW_MS: u64 = 600_000;

/// Most records the shared log keeps.
pub const MAX_LOG_RECORDS: usize = 100;

/// The KV key of the shared log when there is no coordinator. Cache keys
/// start with a kind letter and index keys with `t:`, never with `!`.
pub const KV_LOG_KEY: &str = "!purges";

/// Longest wait for the coordinator's purge object.
const LOG_CALL_TIMEOUT_MS: u64 = 5_000;

/// Clocks of isolates and objects differ a little: a gap this close to the
/// log's start counts as one.
const CLOCK_SKEW_MS: u64 = 1_000;

/// What one purge covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Keys under a key prefix ([`key_prefix`]); with `exact`, only keys of
    /// that very path (any query, any variants).
    Path {
        /// The key prefix.
        prefix: String,
        /// Exact path rather than whole prefix.
        exact: bool,
    },
    /// Entries carrying this tag.
    Tag(String),
}

impl Target {
    /// Whether the entry `key` with `tags` is covered.
    pub fn covers(&self, key: &str, tags: &[String]) -> bool {
        match self {
            Target::Path { prefix, exact } => covers(prefix, *exact, key),
            Target::Tag(t) => tags.iter().any(|x| x == t),
        }
    }
}

/// Recent purges in this isolate, so that a fetch that started before a
/// purge, or a KV read of a copy stored before it, does not bring the
/// purged content back (see the module doc).
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
    /// When this isolate learnt of it (ms): marks are kept for
    /// [`PURGE_MEMORY_MS`] from then.
    learnt: u64,
    /// When the purge was made (ms, the purging isolate's clock).
    at: u64,
    target: Target,
    soft: bool,
}

/// How a purge covers a stored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// Removed: treat the copy as absent.
    Hard,
    /// Made stale at this instant (ms).
    Soft(u64),
}

impl PurgeLog {
    /// The current epoch: a fetch records it when it starts.
    pub fn epoch(&self) -> u64 {
        self.seq.get()
    }

    /// Records a purge of `target` made at `at`, learnt at `now`.
    pub fn record(&self, target: &Target, soft: bool, at: u64, now: u64) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut marks = self.marks.borrow_mut();
        while let Some(old) = marks.front() {
            if marks.len() < MAX_PURGE_MARKS && now.saturating_sub(old.learnt) < PURGE_MEMORY_MS {
                break;
            }
            // Forgetting a mark would let an older fetch through: from now
            // on every fetch that started before it counts as purged.
            self.floor.set(old.seq);
            marks.pop_front();
        }
        marks.push_back(PurgeMark {
            seq,
            learnt: now,
            at,
            target: target.clone(),
            soft,
        });
    }

    /// Makes every fetch in flight count as purged (the isolate cannot
    /// know which purges it missed).
    pub fn purge_all_in_flight(&self) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.floor.set(seq);
    }

    /// Whether a purge covering `key` (with `tags`) happened after `epoch`.
    pub fn purged_since(&self, epoch: u64, key: &str, tags: &[String]) -> bool {
        epoch < self.floor.get()
            || self
                .marks
                .borrow()
                .iter()
                .any(|m| m.seq > epoch && m.target.covers(key, tags))
    }

    /// How the purges remembered cover a copy of `key` (with `tags`) stored
    /// at `stored_at`: a hard purge after it (or in the same millisecond,
    /// which cannot be ordered) wins over soft ones.
    pub fn covering(&self, key: &str, tags: &[String], stored_at: u64) -> Option<Covered> {
        let mut found = None;
        for m in self.marks.borrow().iter() {
            if stored_at <= m.at && m.target.covers(key, tags) {
                if !m.soft {
                    return Some(Covered::Hard);
                }
                found = Some(Covered::Soft(m.at));
            }
        }
        found
    }
}

/// What one purge request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Keys purged (overwritten with a tombstone, or made stale).
    pub deleted: Vec<String>,
    /// Whether the purge was soft.
    pub soft: bool,
    /// Whether more keys may match than this request purged: the listing
    /// was cut short, or more matched than [`MAX_DELETES`].
    pub truncated: bool,
    /// Problems (store errors, the shared log), reported to the caller.
    pub errors: Vec<String>,
}

impl PurgeReport {
    /// The report as JSON for the response body: `purged` (hard) or
    /// `softened` (soft) counts the keys.
    pub fn to_json(&self) -> String {
        let (purged, softened) = if self.soft {
            (0, self.deleted.len())
        } else {
            (self.deleted.len(), 0)
        };
        serde_json::json!({
            "purged": purged,
            "softened": softened,
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
    /// No `path` or `tag` parameter.
    #[error("give at least one path or tag: {PURGE_PATH}?path=/fragments/nav or ?tag=product-42")]
    NoPaths,
    /// A path that is not an absolute path.
    #[error("path {0:?} must start with '/'")]
    BadPath(String),
    /// A tag fragcache would never have stored.
    #[error("tag {0:?} must be 1 to 100 bytes of visible ASCII without commas")]
    BadTag(String),
    /// A `soft` value other than 1/0/true/false.
    #[error("soft={0:?}: use soft=1 (mark stale) or soft=0 (remove)")]
    BadSoft(String),
    /// Too many paths and tags in one request.
    #[error("{0} paths and tags in one request; at most {MAX_TARGETS}")]
    TooMany(usize),
}

/// What a purge request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeRequest {
    /// `path` parameters: exact paths, or prefixes ending in `*`.
    pub paths: Vec<String>,
    /// `tag` parameters.
    pub tags: Vec<String>,
    /// `soft=1`: mark stale instead of removing.
    pub soft: bool,
}

/// The purge request in a query string (`path=`, `tag=`, `soft=`; other
/// parameters are ignored).
pub fn request_from_query(query: Option<&str>) -> Result<PurgeRequest, PurgeError> {
    let mut req = PurgeRequest::default();
    for param in query.unwrap_or("").split('&') {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = form_decode(value).into_owned();
        match name {
            "path" if value.starts_with('/') => req.paths.push(value),
            "path" => return Err(PurgeError::BadPath(value)),
            "tag" if valid_tag(&value) => req.tags.push(value),
            "tag" => return Err(PurgeError::BadTag(value)),
            "soft" => {
                req.soft = match value.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(PurgeError::BadSoft(value)),
                }
            }
            _ => {}
        }
    }
    let n = req.paths.len() + req.tags.len();
    if n == 0 {
        return Err(PurgeError::NoPaths);
    }
    if n > MAX_TARGETS {
        return Err(PurgeError::TooMany(n));
    }
    Ok(req)
}

/// The `path` parameters of a purge request's query string.
pub fn paths_from_query(query: Option<&str>) -> Result<Vec<String>, PurgeError> {
    let req = request_from_query(query)?;
    if req.paths.is_empty() {
        return Err(PurgeError::NoPaths);
    }
    Ok(req.paths)
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

/// Hard-purges every stored entry covered by `paths` (see the module doc).
pub async fn purge(loader: &Loader, paths: &[String]) -> PurgeReport {
    let req = PurgeRequest {
        paths: paths.to_vec(),
        ..PurgeRequest::default()
    };
    purge_request(loader, &req).await
}

/// Carries out a purge request (see the module doc).
pub async fn purge_request(loader: &Loader, req: &PurgeRequest) -> PurgeReport {
    let ports = loader.ports();
    let shared = loader.shared();
    let soft = req.soft;
    let mut report = PurgeReport {
        soft,
        ..PurgeReport::default()
    };
    let mut targets: Vec<Target> = req
        .paths
        .iter()
        .flat_map(|p| key_prefixes(loader.config(), p))
        .map(|(prefix, exact)| Target::Path { prefix, exact })
        .collect();
    targets.extend(req.tags.iter().cloned().map(Target::Tag));
    // Before any await: a fetch running now started before this purge.
    let at = ports.clock.now_ms();
    let id = ports.rng.next_u64();
    shared.feed.seen.borrow_mut().push((id, at));
    for t in &targets {
        shared.apply_purge(t, soft, at, at, true);
    }
    let mut keys: Vec<String> = Vec::new();
    for target in &targets {
        let (prefix, listed) = match target {
            Target::Path { prefix, .. } => (list_prefix(prefix).to_owned(), prefix.as_str()),
            Target::Tag(tag) => (index_prefix(tag), ""),
        };
        let list = match ports.store.list(&prefix).await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(format!("{prefix}: {e}"));
                continue;
            }
        };
        report.truncated |= list.truncated;
        for name in list.keys {
            let key = match target {
                Target::Path { exact, .. } => covers(listed, *exact, &name).then_some(name),
                Target::Tag(tag) => indexed_key(tag, &name).map(str::to_owned),
            };
            if let Some(key) = key.filter(|k| !keys.contains(k)) {
                keys.push(key);
            }
        }
    }
    for key in keys {
        if report.deleted.len() >= MAX_DELETES {
            report.truncated = true;
            break;
        }
        let done = if soft {
            soften(loader, &key, at).await
        } else {
            let tombstone = StoredEntry {
                body: Vec::new(),
                meta: EntryMeta::new(at, at, at, 200, 0),
            };
            ports
                .store
                .put(&key, tombstone, TOMBSTONE_TTL_S)
                .await
                .map(|()| true)
        };
        match done {
            Ok(true) => report.deleted.push(key),
            Ok(false) => {}
            Err(e) => report.errors.push(format!("{key}: {e}")),
        }
    }
    // The coordinator's objects hold copies too; an object that cannot be
    // told still finds the tombstone newer than its copy on its next load.
    // After a soft purge the object must not answer its copy as fresh
    // either: dropped, its next load fetches.
    if let Some(coordinator) = &ports.coordinator {
        for key in &report.deleted {
            if let Err(e) = coordinator.forget(key).await {
                ports.log.log(LogLevel::Warn, &format!("purge {key}: {e}"));
            }
        }
    }
    // Last, so that an isolate that learns of the purge finds KV and the
    // objects already purged.
    let record = PurgeRecord {
        id,
        at,
        soft,
        targets,
    };
    if let Err(e) = publish(loader, record).await {
        report.errors.push(format!("shared purge log: {e}"));
    }
    ports.log.log(
        LogLevel::Info,
        &format!(
            "purge paths {:?} tags {:?}{}: {} entries{}",
            req.paths,
            req.tags,
            if soft { " (soft)" } else { "" },
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

/// Makes the stored entry `key` stale as of `at`, keeping its body, tags
/// and hard TTL. `Ok(false)` when there is nothing to soften (absent,
/// expired, a tombstone).
async fn soften(loader: &Loader, key: &str, at: u64) -> Result<bool, StoreError> {
    let store = &loader.ports().store;
    let Some(mut entry) = store.get(key).await? else {
        return Ok(false);
    };
    let meta = &mut entry.meta;
    if meta.classify(at) == Freshness::Expired || meta.fresh_until == meta.stored_at {
        return Ok(false);
    }
    // `stored_at` moves to the purge, like a tombstone's: a write-back of a
    // fetch that started before the purge then finds a newer entry and does
    // not make the old content fresh again.
    meta.fresh_until = meta.fresh_until.min(at);
    meta.stored_at = at;
    let ttl_s = crate::cache::kv::kv_ttl_s(meta.stale_until.saturating_sub(at));
    store.put(key, entry, ttl_s).await.map(|()| true)
}

/// One purge as the shared log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRecord {
    /// Random id: isolates apply each record once.
    pub id: u64,
    /// When it was made (ms, the purging isolate's clock).
    pub at: u64,
    /// Soft (mark stale) rather than hard (remove).
    pub soft: bool,
    /// What it covers.
    pub targets: Vec<Target>,
}

impl PurgeRecord {
    /// One line of [`SharedLog::encode`].
    pub fn encode(&self) -> String {
        let mut out = format!("{} {} {}", self.id, self.at, u8::from(self.soft));
        for t in &self.targets {
            out.push('\t');
            match t {
                Target::Path { prefix, exact } => {
                    out.push(if *exact { 'x' } else { 'p' });
                    out.push_str(prefix);
                }
                Target::Tag(tag) => {
                    out.push('t');
                    out.push_str(tag);
                }
            }
        }
        out
    }

    /// Parses one line of [`SharedLog::encode`].
    pub fn decode(line: &str) -> Option<PurgeRecord> {
        let mut fields = line.split('\t');
        let mut head = fields.next()?.split(' ');
        let id = head.next()?.parse().ok()?;
        let at = head.next()?.parse().ok()?;
        let soft = head.next()? == "1";
        let targets = fields
            .map(|f| {
                let rest = f.get(1..)?.to_owned();
                Some(match f.as_bytes().first()? {
                    b'x' | b'p' => Target::Path {
                        exact: f.starts_with('x'),
                        prefix: rest,
                    },
                    b't' => Target::Tag(rest),
                    _ => return None,
                })
            })
            .collect::<Option<_>>()?;
        Some(PurgeRecord {
            id,
            at,
            soft,
            targets,
        })
    }
}

/// The purge log shared by every isolate: the purges of the last
/// [`LOG_WINDOW_MS`], at most [`MAX_LOG_RECORDS`] of them.
///
/// Its wire and storage form is plain text ([`SharedLog::encode`]), not
/// JSON: it is read by every isolate every interval, and a hand-written
/// form of three numbers and a few strings per record keeps the worker
/// small. Targets never contain tabs or newlines (key prefixes are encoded
/// URLs, tags visible ASCII), so those separate fields and records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedLog {
    /// The log holds every purge made at or after this instant (ms).
    pub since: u64,
    /// The purges, oldest first.
    pub records: Vec<PurgeRecord>,
}

impl SharedLog {
    /// An empty log that knows nothing before `now`.
    pub fn starting(now: u64) -> Self {
        SharedLog {
            since: now,
            records: Vec::new(),
        }
    }

    /// Drops records older than the window.
    pub fn prune(&mut self, now: u64) {
        let cut = now.saturating_sub(LOG_WINDOW_MS);
        self.records.retain(|r| r.at >= cut);
        self.since = self.since.max(cut);
    }

    /// The text form: `since`, then one line per record, `id at soft`
    /// followed by its targets, each after a tab (`x` + prefix for an exact
    /// path, `p` + prefix for a prefix, `t` + tag).
    pub fn encode(&self) -> String {
        let mut out = self.since.to_string();
        for r in &self.records {
            out.push('\n');
            out.push_str(&r.encode());
        }
        out
    }

    /// Parses [`SharedLog::encode`]'s form; `None` when malformed.
    pub fn decode(text: &str) -> Option<SharedLog> {
        let mut lines = text.split('\n');
        let since = lines.next()?.parse().ok()?;
        let records = lines.map(PurgeRecord::decode).collect::<Option<_>>()?;
        Some(SharedLog { since, records })
    }

    /// Adds `record` at `now`, dropping the oldest past the bounds.
    pub fn append(&mut self, record: PurgeRecord, now: u64) {
        self.prune(now);
        self.records.push(record);
        while self.records.len() > MAX_LOG_RECORDS {
            let old = self.records.remove(0);
            self.since = self.since.max(old.at.saturating_add(1));
        }
    }
}

/// This isolate's side of the shared log: when to read it next, whether a
/// read is in flight, which records it has applied.
#[derive(Default)]
pub struct SharedFeed {
    next_check: Cell<u64>,
    in_flight: Cell<bool>,
    /// When the last successful read started (0: never).
    last_read: Cell<u64>,
    /// Records applied (or made here): id and time. A list, not a map: it
    /// holds at most the log's records of the last window or two.
    pub(crate) seen: RefCell<Vec<(u64, u64)>>,
}

/// Clears the in-flight flag however the read ends (even if the runtime
/// drops it).
struct InFlight(Rc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.feed.in_flight.set(false);
    }
}

/// Starts a background read of the shared log if one is due (every
/// `purge.check_interval_ms`) and none is in flight. Costs a request two
/// cell reads otherwise.
pub fn check_shared_log(loader: &Loader) {
    let shared = loader.shared();
    let feed = &shared.feed;
    let now = loader.ports().clock.now_ms();
    if feed.in_flight.get() || now < feed.next_check.get() {
        return;
    }
    if feed.last_read.get() == 0 {
        // The isolate's first request: its memory holds nothing older.
        feed.last_read.set(now);
    }
    feed.in_flight.set(true);
    feed.next_check
        .set(now + u64::from(loader.config().purge.check_interval_ms));
    let guard = InFlight(Rc::clone(shared));
    let background = Rc::clone(&loader.ports().background);
    let loader = loader.clone();
    background.spawn(Box::pin(async move {
        let _guard = guard;
        match read_log(&loader).await {
            Ok(log) => apply_log(&loader, &log, now),
            Err(e) => loader
                .ports()
                .log
                .log(LogLevel::Warn, &format!("shared purge log unreadable: {e}")),
        }
    }));
}

/// Applies the records of `log` this isolate has not seen; `started`: when
/// this read began (ms).
pub fn apply_log(loader: &Loader, log: &SharedLog, started: u64) {
    let shared = loader.shared();
    let feed = &shared.feed;
    let now = loader.ports().clock.now_ms();
    if feed.last_read.get() < log.since.saturating_add(CLOCK_SKEW_MS) && log.since > 0 {
        // Purges may have come and gone since this isolate last looked.
        if !shared.recent.is_empty() {
            loader.ports().log.log(
                LogLevel::Info,
                "purge log: not read within its window; forgetting every memory copy",
            );
        }
        shared.recent.clear();
        shared.purges.purge_all_in_flight();
    }
    let mut seen = feed.seen.borrow_mut();
    for r in &log.records {
        if seen.iter().any(|(id, _)| *id == r.id) {
            continue;
        }
        seen.push((r.id, r.at));
        // Fetches in flight and KV's lag matter for two minutes after a
        // purge; older ones only still apply to memory copies.
        let recent = r.at.saturating_add(PURGE_MEMORY_MS) > now;
        for t in &r.targets {
            shared.apply_purge(t, r.soft, r.at, now, recent);
        }
    }
    let cut = now.saturating_sub(LOG_WINDOW_MS + PURGE_MEMORY_MS);
    seen.retain(|(_, at)| *at >= cut);
    feed.last_read.set(feed.last_read.get().max(started));
}

/// Reads the shared log: from the coordinator's purge object when there is
/// one, else from KV.
async fn read_log(loader: &Loader) -> Result<SharedLog, String> {
    let ports = loader.ports();
    if let Some(c) = &ports.coordinator {
        let call = c.purge_log();
        return match select(call, ports.clock.sleep(LOG_CALL_TIMEOUT_MS)).await {
            Either::Left((r, _)) => r.map_err(|e| e.to_string()),
            Either::Right(_) => Err(format!("no answer within {LOG_CALL_TIMEOUT_MS} ms")),
        };
    }
    let now = ports.clock.now_ms();
    Ok(
        match ports
            .store
            .get(KV_LOG_KEY)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(e) => std::str::from_utf8(&e.body)
                .ok()
                .and_then(SharedLog::decode)
                .ok_or("malformed")?,
            // Absent: no purge within the log's life.
            None => SharedLog {
                since: now.saturating_sub(LOG_WINDOW_MS),
                records: Vec::new(),
            },
        },
    )
}

/// Appends `record` to the shared log. In KV this is a read and a write of
/// one key: two purges sent to different locations within KV's propagation
/// time may keep only one of them in the log (both still purge KV and their
/// own isolate); the coordinator has no such race.
async fn publish(loader: &Loader, record: PurgeRecord) -> Result<(), String> {
    let ports = loader.ports();
    if let Some(c) = &ports.coordinator {
        let call = c.publish_purge(record);
        return match select(call, ports.clock.sleep(LOG_CALL_TIMEOUT_MS)).await {
            Either::Left((r, _)) => r.map_err(|e| e.to_string()),
            Either::Right(_) => Err(format!("no answer within {LOG_CALL_TIMEOUT_MS} ms")),
        };
    }
    let now = ports.clock.now_ms();
    let mut log = match ports.store.get(KV_LOG_KEY).await {
        // A log that cannot be read is started afresh, knowing nothing
        // before now: isolates then forget their memory copies.
        Ok(Some(e)) => std::str::from_utf8(&e.body)
            .ok()
            .and_then(SharedLog::decode)
            .unwrap_or_else(|| SharedLog::starting(now)),
        Ok(None) => SharedLog::starting(now.saturating_sub(LOG_WINDOW_MS)),
        Err(e) => return Err(e.to_string()),
    };
    log.append(record, now);
    let entry = StoredEntry {
        body: log.encode().into_bytes(),
        meta: EntryMeta::new(now, now, now, 200, 0),
    };
    ports
        .store
        .put(KV_LOG_KEY, entry, LOG_WINDOW_MS / 1000)
        .await
        .map_err(|e| e.to_string())
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
    fn requests_take_paths_tags_and_soft() {
        let r = request_from_query(Some("tag=product-42&path=/a&soft=1&tag=x%3Ay")).unwrap();
        assert_eq!(r.paths, ["/a"]);
        assert_eq!(r.tags, ["product-42", "x:y"]);
        assert!(r.soft);
        assert!(!request_from_query(Some("tag=a")).unwrap().soft);
        assert_eq!(
            request_from_query(Some("tag=a+b")),
            Err(PurgeError::BadTag("a b".into()))
        );
        assert_eq!(
            request_from_query(Some("tag=")),
            Err(PurgeError::BadTag(String::new()))
        );
        assert_eq!(
            request_from_query(Some("tag=a&soft=yes")),
            Err(PurgeError::BadSoft("yes".into()))
        );
        assert_eq!(request_from_query(Some("soft=1")), Err(PurgeError::NoPaths));
        let many = vec!["tag=a"; MAX_TARGETS + 1].join("&");
        assert_eq!(
            request_from_query(Some(&many)),
            Err(PurgeError::TooMany(MAX_TARGETS + 1))
        );
    }

    #[test]
    fn the_shared_log_is_bounded_and_says_since_when_it_is_complete() {
        let mut log = SharedLog::starting(0);
        let rec = |id: u64, at: u64| PurgeRecord {
            id,
            at,
            soft: false,
            targets: vec![Target::Tag("a".into())],
        };
        for i in 0..(MAX_LOG_RECORDS as u64 + 5) {
            log.append(rec(i, 1_000 + i), 1_000 + i);
        }
        assert_eq!(log.records.len(), MAX_LOG_RECORDS);
        assert_eq!(log.since, 1_005);
        log.append(rec(999, LOG_WINDOW_MS + 50_000), LOG_WINDOW_MS + 50_000);
        assert_eq!(log.records.len(), 1, "older than the window");
        assert_eq!(log.since, 50_000);
        log.records.push(PurgeRecord {
            id: u64::MAX,
            at: 7,
            soft: true,
            targets: vec![
                Target::Path {
                    prefix: "f0:http://o.test/a b?".into(),
                    exact: true,
                },
                Target::Path {
                    prefix: "p1:http://o.test/".into(),
                    exact: false,
                },
                Target::Tag("x:y".into()),
            ],
        });
        assert_eq!(SharedLog::decode(&log.encode()), Some(log));
        assert_eq!(SharedLog::decode("5"), Some(SharedLog::starting(5)));
        assert_eq!(SharedLog::decode("5\n1 2"), None);
        assert_eq!(SharedLog::decode("5\n1 2 0\tqx"), None);
    }

    #[test]
    fn covering_prefers_hard_and_only_counts_older_copies() {
        let log = PurgeLog::default();
        let tags = vec!["t".to_owned()];
        log.record(&Target::Tag("t".into()), true, 100, 100);
        assert_eq!(log.covering("k", &tags, 99), Some(Covered::Soft(100)));
        assert_eq!(log.covering("k", &tags, 101), None);
        assert_eq!(log.covering("k", &[], 99), None);
        let p = Target::Path {
            prefix: "f0:http://o.test/a".into(),
            exact: true,
        };
        log.record(&p, false, 200, 200);
        assert_eq!(
            log.covering("f0:http://o.test/a?x=1", &tags, 150),
            Some(Covered::Hard)
        );
        assert!(log.purged_since(0, "f0:http://o.test/a#c.x=1", &[]));
        assert!(!log.purged_since(2, "f0:http://o.test/a", &[]));
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
