//! What an isolate remembers between requests: compiled templates
//! ([`TemplateMemo`]), recently seen entries ([`Recent`]), and in
//! [`Shared`] the flight maps, back-off, purge log, hit-for-pass marks and
//! the per-key write throttle.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::backoff::Backoff;
use crate::cache::breaker::Breaker;
use crate::cache::flight::Flights;
use crate::cache::lru::Lru;
use crate::cache::EntryMeta;
use crate::esi::Template;
use crate::ports::{Log, LogLevel, StoreError};
use crate::purge::{PurgeLog, SharedFeed, Target};
use crate::url::Url;

use super::{Fragment, Outcome};

/// Compiled templates, kept per isolate so a cache hit does not re-parse.
/// Bounded by bytes ([`TEMPLATE_MEMO_MAX_BYTES`]: source plus the compiled
/// nodes, see [`Template::memory_bytes`]), least recently used evicted first.
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

/// Memory of one compiled template, as the template measures it (source,
/// nodes and everything they allocated).
fn template_bytes(t: &Template) -> usize {
    t.memory_bytes()
}

impl TemplateMemo {
    /// The compiled form of `frag` (from `url`), compiling it on first use
    /// of this version and logging its ESI warnings then.
    pub fn get(&self, frag: &Fragment, url: &Url, log: &dyn Log) -> Rc<Template> {
        let compile = || {
            // Shares the body rather than copying it.
            let t = Template::compile_shared(Rc::clone(&frag.body));
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
            + frag.tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + frag
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + std::mem::size_of::<EntryMeta>()
            + std::mem::size_of::<Fragment>()
    }

    pub(super) fn remember(&self, key: &str, meta: &EntryMeta, frag: &Rc<Fragment>) {
        let size = Self::entry_bytes(meta, frag);
        self.lru
            .borrow_mut()
            .insert(key, (Rc::new(meta.clone()), Rc::clone(frag)), size);
    }

    /// Drops every remembered copy whose key starts with `prefix`.
    pub fn forget_prefix(&self, prefix: &str) {
        self.lru.borrow_mut().remove_prefix(prefix);
    }

    /// Applies a purge of `target` made at `at` (ms) to the copies stored
    /// before it (or in the same millisecond: the purge may come after them): a hard purge forgets them, a soft one makes them stale
    /// (`fresh_until` at most `at`), keeping body and hard TTL. Returns the
    /// keys it touched.
    pub fn purge(&self, target: &Target, soft: bool, at: u64) -> Vec<String> {
        let hit = |key: &str, (meta, frag): &Cached| {
            meta.stored_at <= at && target.covers(key, &frag.tags)
        };
        let mut touched = Vec::new();
        let mut lru = self.lru.borrow_mut();
        if soft {
            lru.update(|key, cached| {
                if hit(key, cached) && cached.0.fresh_until > at {
                    let mut meta = (*cached.0).clone();
                    meta.fresh_until = at;
                    cached.0 = Rc::new(meta);
                    touched.push(key.to_owned());
                }
            });
        } else {
            lru.remove_where(|key, cached| {
                let h = hit(key, cached);
                if h {
                    touched.push(key.to_owned());
                }
                h
            });
        }
        touched
    }

    /// Records that the copy of `key` stored at `stored_at` was written
    /// with its tags indexed until `until`.
    pub(super) fn note_indexed(&self, key: &str, stored_at: u64, until: u64) {
        let mut lru = self.lru.borrow_mut();
        if lru.peek(key).is_some_and(|(m, _)| m.stored_at == stored_at) {
            lru.update_one(key, |(meta, _)| {
                let mut m = (**meta).clone();
                m.index_until = until;
                *meta = Rc::new(m);
            });
        }
    }

    /// Drops every remembered copy.
    pub fn clear(&self) {
        self.lru.borrow_mut().clear();
    }

    /// Drops the remembered copy of `key`.
    pub(super) fn forget(&self, key: &str) {
        self.lru.borrow_mut().remove(key);
    }

    /// The remembered copy of `key` (marking it recently used).
    pub(super) fn get(&self, key: &str) -> Option<Cached> {
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
pub(super) type Cached = (Rc<EntryMeta>, Rc<Fragment>);

/// The result of one KV read: the entry if present in the current layout.
pub(super) type StoreRead = Result<Option<Cached>, StoreError>;

/// State shared by every request in one isolate.
#[derive(Default)]
pub struct Shared {
    /// In-flight origin loads by cache key.
    pub flights: Rc<Flights<Outcome>>,
    /// In-flight KV reads by cache key: a burst on a key this isolate has
    /// no fresh copy of makes one KV read, not one per request.
    pub(super) reads: Rc<Flights<StoreRead>>,
    /// Back-off after failed refreshes of one key.
    pub backoff: Backoff,
    /// Per-origin circuit breakers, for fetches this isolate makes itself
    /// (and a mirror of what the coordinator reports).
    pub breaker: Breaker,
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
    /// This isolate's view of the purge log shared by all isolates.
    pub feed: SharedFeed,
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

    /// Applies a purge of `target` made at `at` (here or, learnt from the
    /// shared log, elsewhere): memory copies stored before it are forgotten
    /// (hard) or made stale (soft), and their write throttle and
    /// hit-for-pass marks go, so the next fetch is stored at once. With
    /// `mark`, it is also recorded in [`Shared::purges`], so that fetches
    /// in flight and KV reads of copies stored before it do not bring the
    /// old content back.
    pub fn apply_purge(&self, target: &Target, soft: bool, at: u64, now: u64, mark: bool) {
        if mark {
            self.purges.record(target, soft, at, now);
        }
        let touched = self.recent.purge(target, soft, at);
        let mut personal = self.personal.borrow_mut();
        let mut last_write = self.last_write.borrow_mut();
        if let Target::Path { prefix, .. } = target {
            let list = crate::cache::key::list_prefix(prefix);
            personal.retain(|k, _| !k.starts_with(list));
            last_write.retain(|k, _| !k.starts_with(list));
        }
        for k in &touched {
            personal.remove(k);
            last_write.remove(k);
        }
    }

    /// Remembers that the origin answered `key` as personal, until `until`.
    pub(super) fn mark_personal(&self, key: &str, until: u64, now: u64) {
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
    pub(super) fn is_personal(&self, key: &str, now: u64) -> bool {
        self.personal.borrow().get(key).is_some_and(|t| *t > now)
    }

    /// The write throttle: whether this isolate may write `key` at `now`
    /// (KV takes one write per second per key), recording the write if so.
    pub(super) fn claim_write(&self, key: &str, now: u64) -> bool {
        let mut last = self.last_write.borrow_mut();
        if last
            .get(key)
            .is_some_and(|t| now.saturating_sub(*t) < 1_000)
        {
            return false;
        }
        if last.len() > 10_000 {
            last.retain(|_, t| now.saturating_sub(*t) < 1_000);
        }
        last.insert(key.to_owned(), now);
        true
    }

    /// Fresh isolate state.
    pub fn new() -> Rc<Self> {
        Rc::new(Shared::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{HeaderMap, StatusCode};

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
            tags: Rc::from(Vec::new()),
            may_esi: Default::default(),
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
