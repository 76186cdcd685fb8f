//! Bounded-time access to the fragment store.
//!
//! A KV call that hangs must not hold a request, a single-flight or a
//! background job forever. [`TimedStore`] wraps the store port and races
//! every call with a timer from the [`Clock`] port; a call that loses
//! resolves as a [`StoreError`]. The loader installs it on every request
//! ([`crate::loader::Loader::new`]), so the purge handler and write-backs
//! get the same bounds as reads.
//!
//! A read that times out is a miss (the caller logs it, as any read
//! error); a write that times out is logged and the entry is simply not
//! stored (it may still land: KV gives no way to cancel it).

use std::rc::Rc;

use futures_util::future::{select, Either};

use crate::cache::entry::EntryMeta;
use crate::ports::{
    Clock, FragmentStore, KeyList, LocalFuture, LogLevel, Ports, StoreError, StoredEntry,
};

/// Longest wait for one KV `get`. Reads from a KV edge cache take a few
/// milliseconds and cold reads from the central store some hundreds; past a
/// second the read is treated as a miss rather than delay the page.
pub const KV_READ_TIMEOUT_MS: u64 = 1_000;

/// Longest wait for one KV `put` or `delete`. Writes run in the background
/// (after the response), so they may take longer than reads.
pub const KV_WRITE_TIMEOUT_MS: u64 = 5_000;

/// Longest wait for one KV `list`, all of its pages together (purges).
pub const KV_LIST_TIMEOUT_MS: u64 = 5_000;

/// The fragment store with every call bounded in time.
pub struct TimedStore {
    inner: Rc<dyn FragmentStore>,
    clock: Rc<dyn Clock>,
}

impl TimedStore {
    /// Wraps `inner`, timing calls with `clock`.
    pub fn wrap(inner: Rc<dyn FragmentStore>, clock: Rc<dyn Clock>) -> Rc<dyn FragmentStore> {
        Rc::new(TimedStore { inner, clock })
    }

    fn bounded<T: 'static>(
        &self,
        what: &'static str,
        ms: u64,
        call: LocalFuture<Result<T, StoreError>>,
    ) -> LocalFuture<Result<T, StoreError>> {
        // The timer is created by the caller's request, as workerd requires.
        let timer = self.clock.sleep(ms);
        Box::pin(async move {
            match select(call, timer).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => Err(StoreError(format!("{what} timed out after {ms} ms"))),
            }
        })
    }
}

impl FragmentStore for TimedStore {
    fn get(&self, key: &str) -> LocalFuture<Result<Option<StoredEntry>, StoreError>> {
        self.bounded("get", KV_READ_TIMEOUT_MS, self.inner.get(key))
    }

    fn list(&self, prefix: &str) -> LocalFuture<Result<KeyList, StoreError>> {
        self.bounded("list", KV_LIST_TIMEOUT_MS, self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> LocalFuture<Result<(), StoreError>> {
        self.bounded("delete", KV_WRITE_TIMEOUT_MS, self.inner.delete(key))
    }

    fn put(
        &self,
        key: &str,
        entry: StoredEntry,
        expiration_ttl_s: u64,
    ) -> LocalFuture<Result<(), StoreError>> {
        self.bounded(
            "put",
            KV_WRITE_TIMEOUT_MS,
            self.inner.put(key, entry, expiration_ttl_s),
        )
    }
}

/// KV's `expirationTtl` (s) for an entry that may be served for `hard_ms`
/// more: whole seconds rounded up, and never below the 60 s KV accepts.
pub fn kv_ttl_s(hard_ms: u64) -> u64 {
    hard_ms
        .div_ceil(1000)
        .max(u64::from(crate::config::MIN_HARD_TTL_S))
}

/// Writes an entry that may be served until `hard_ms` from now. KV refuses
/// an `expirationTtl` below 60 s; the soft and hard deadlines in the
/// metadata are what freshness uses, so a longer KV life is harmless. A
/// failed write is logged: the answer it would have stored still goes out.
/// Returns whether the write succeeded.
pub async fn put_entry(
    ports: &Ports,
    key: &str,
    body: Vec<u8>,
    meta: EntryMeta,
    hard_ms: u64,
) -> bool {
    let ttl_s = kv_ttl_s(hard_ms);
    match ports
        .store
        .put(key, StoredEntry { body, meta }, ttl_s)
        .await
    {
        Ok(()) => true,
        Err(e) => {
            ports
                .log
                .log(LogLevel::Warn, &format!("{key}: KV write failed: {e}"));
            false
        }
    }
}

/// Writes an entry with its tag index (see [`crate::tags`]): index keys for
/// `tags` are written, with twice the entry's life, unless the copy it
/// replaces (`prev`: its tags and [`EntryMeta::index_until`]) was indexed
/// under the same tags for at least as long as this entry lives; index keys
/// of tags the entry no longer has are deleted. The index is written first,
/// so an entry is never in KV without its index. Failures are logged.
/// Returns the entry's [`EntryMeta::index_until`] as written, or `None`
/// when the entry itself could not be written.
pub async fn put_tagged(
    ports: &Ports,
    key: &str,
    body: Vec<u8>,
    mut meta: EntryMeta,
    hard_ms: u64,
    tags: &[String],
    prev: Option<(&[String], u64)>,
) -> Option<u64> {
    let now = meta.stored_at;
    let (prev_tags, prev_until) = prev.unwrap_or((&[], 0));
    let indexed = !tags.is_empty() && prev_tags == tags && prev_until >= meta.stale_until;
    meta.index_until = if tags.is_empty() {
        0
    } else if indexed {
        prev_until
    } else {
        let ttl_s = kv_ttl_s(hard_ms) * crate::tags::INDEX_LIFE_FACTOR;
        for tag in tags {
            let marker = StoredEntry {
                body: Vec::new(),
                meta: EntryMeta::new(now, now, now, 200, 0),
            };
            let ik = crate::tags::index_key(tag, key);
            if let Err(e) = ports.store.put(&ik, marker, ttl_s).await {
                ports
                    .log
                    .log(LogLevel::Warn, &format!("{ik}: KV write failed: {e}"));
            }
        }
        now + ttl_s * 1000
    };
    for gone in prev_tags.iter().filter(|t| !tags.contains(t)) {
        // Best effort: a stale index key only makes a purge by that tag
        // also purge this entry until the key expires.
        let _ = ports.store.delete(&crate::tags::index_key(gone, key)).await;
    }
    let until = meta.index_until;
    put_entry(ports, key, body, meta, hard_ms)
        .await
        .then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::EntryMeta;
    use crate::testing::Sim;

    #[test]
    fn hung_calls_resolve_as_errors_after_their_budget() {
        let sim = Sim::new(1);
        sim.store.hang.set(true);
        let ports = sim.ports();
        let store = TimedStore::wrap(Rc::clone(&ports.store), Rc::clone(&ports.clock));
        let start = sim.now();
        let clock = Rc::clone(&ports.clock);
        let (get, list, del, put) = sim.block_on(async move {
            let t0 = clock.now_ms();
            let g = store.get("k").await.map(|_| ()).map(|()| 0);
            let g_ms = clock.now_ms() - t0;
            let l = store.list("k").await.map(|_| 0);
            let l_ms = clock.now_ms() - t0 - g_ms;
            let d = store.delete("k").await.map(|()| 0);
            let entry = StoredEntry {
                body: b"x".to_vec(),
                meta: EntryMeta::new(0, 1, 2, 200, 1),
            };
            let p = store.put("k", entry, 60).await.map(|()| 0);
            ((g, g_ms), (l, l_ms), d, p)
        });
        assert!(get.0.is_err() && get.1 == KV_READ_TIMEOUT_MS, "{get:?}");
        assert!(list.0.is_err() && list.1 == KV_LIST_TIMEOUT_MS, "{list:?}");
        assert!(del.is_err() && put.is_err());
        assert_eq!(
            sim.now() - start,
            KV_READ_TIMEOUT_MS + KV_LIST_TIMEOUT_MS + 2 * KV_WRITE_TIMEOUT_MS
        );
        assert!(sim.store.keys().is_empty());
    }

    #[test]
    fn slow_but_timely_calls_succeed() {
        let sim = Sim::new(1);
        sim.store.latency_ms.set(KV_READ_TIMEOUT_MS - 1);
        let ports = sim.ports();
        let store = TimedStore::wrap(Rc::clone(&ports.store), Rc::clone(&ports.clock));
        let r = sim.block_on(async move { store.get("k").await });
        assert_eq!(r, Ok(None));
    }
}
