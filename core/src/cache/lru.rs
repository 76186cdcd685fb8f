//! A small least-recently-used map bounded in bytes, for the isolate's
//! memory caches (entries and compiled templates).
//!
//! Each entry carries a size its owner computes (value bytes plus keys and
//! metadata). A `HashMap` holds the entries and a `BTreeMap` orders them by
//! a use counter that increases on every insert and hit, so a lookup, an
//! insert and the eviction of the oldest entry each cost O(log n). An entry
//! bigger than the per-entry limit is never kept (it would evict everything
//! else for one item).

use std::collections::{BTreeMap, HashMap};

/// Bookkeeping bytes charged per entry on top of what the owner counts:
/// the key is held twice (map and order), plus map slots and counters.
pub const ENTRY_OVERHEAD: usize = 64;

struct Slot<V> {
    value: V,
    size: usize,
    used: u64,
}

/// A byte-bounded LRU map from strings to `V`.
pub struct Lru<V> {
    map: HashMap<String, Slot<V>>,
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    max_bytes: usize,
    max_entry_bytes: usize,
}

impl<V: Clone> Lru<V> {
    /// An empty map holding at most `max_bytes` in all and no single entry
    /// over `max_entry_bytes`.
    pub fn new(max_bytes: usize, max_entry_bytes: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_bytes,
            max_entry_bytes: max_entry_bytes.min(max_bytes),
        }
    }

    /// The bytes an entry of `key` with a value of `value_bytes` is charged.
    pub fn charge(key: &str, value_bytes: usize) -> usize {
        value_bytes
            .saturating_add(2 * key.len())
            .saturating_add(ENTRY_OVERHEAD)
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value under `key`, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let tick = self.next_tick();
        let slot = self.map.get_mut(key)?;
        if let Some(k) = self.order.remove(&slot.used) {
            self.order.insert(tick, k);
        }
        slot.used = tick;
        Some(slot.value.clone())
    }

    /// The value under `key` without changing its recency.
    pub fn peek(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|s| &s.value)
    }

    /// Stores `value` under `key` with a value size of `value_bytes`
    /// (see [`Lru::charge`]), evicting least recently used entries until
    /// everything fits. Returns whether it was kept: an entry over the
    /// per-entry limit is not, and any older value of `key` is dropped.
    pub fn insert(&mut self, key: &str, value: V, value_bytes: usize) -> bool {
        self.remove(key);
        let size = Self::charge(key, value_bytes);
        if size > self.max_entry_bytes {
            return false;
        }
        while self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(s) = self.map.remove(&oldest) {
                self.bytes -= s.size;
            }
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.to_owned());
        self.map.insert(
            key.to_owned(),
            Slot {
                value,
                size,
                used: tick,
            },
        );
        self.bytes += size;
        true
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.used);
        self.bytes -= slot.size;
        Some(slot.value)
    }

    /// Removes every entry whose key starts with `prefix` (O(n)).
    pub fn remove_prefix(&mut self, prefix: &str) {
        let doomed: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in doomed {
            self.remove(&k);
        }
    }

    /// Removes every entry for which `doomed(key, value)` holds (O(n)).
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&str, &V) -> bool) {
        let keys: Vec<String> = self
            .map
            .iter()
            .filter(|(k, s)| doomed(k, &s.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }

    /// Changes values in place, keeping their size and recency (O(n)).
    pub fn update(&mut self, mut change: impl FnMut(&str, &mut V)) {
        for (k, s) in &mut self.map {
            change(k, &mut s.value);
        }
    }

    /// Changes the value of `key` in place, keeping its size and recency.
    pub fn update_one(&mut self, key: &str, change: impl FnOnce(&mut V)) {
        if let Some(s) = self.map.get_mut(key) {
            change(&mut s.value);
        }
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Bytes charged for the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(key: &str, n: usize) -> usize {
        Lru::<u32>::charge(key, n)
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let one = size("a", 100);
        let mut lru: Lru<u32> = Lru::new(3 * one, one);
        assert!(lru.insert("a", 1, 100));
        assert!(lru.insert("b", 2, 100));
        assert!(lru.insert("c", 3, 100));
        // Touch "a": "b" is now the oldest.
        assert_eq!(lru.get("a"), Some(1));
        assert!(lru.insert("d", 4, 100));
        assert_eq!(lru.peek("b"), None, "least recently used went first");
        assert_eq!(lru.len(), 3);
        assert!(lru.insert("e", 5, 100));
        assert_eq!(lru.peek("c"), None);
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.get("d"), Some(4));
        assert_eq!(lru.get("e"), Some(5));
    }

    #[test]
    fn accounts_keys_and_overhead_and_replacements() {
        let mut lru: Lru<u32> = Lru::new(10_000, 10_000);
        lru.insert("key", 1, 100);
        assert_eq!(lru.bytes(), 100 + 6 + ENTRY_OVERHEAD);
        // Replacing a value re-charges it, never double counts.
        lru.insert("key", 2, 300);
        assert_eq!(lru.bytes(), 300 + 6 + ENTRY_OVERHEAD);
        lru.insert("other", 3, 0);
        assert_eq!(lru.bytes(), 300 + 6 + 10 + 2 * ENTRY_OVERHEAD);
        assert_eq!(lru.remove("key"), Some(2));
        assert_eq!(lru.bytes(), 10 + ENTRY_OVERHEAD);
        lru.remove_prefix("oth");
        assert_eq!((lru.bytes(), lru.len()), (0, 0));
        assert!(lru.order.is_empty());
    }

    #[test]
    fn an_entry_bigger_than_the_limit_is_not_kept() {
        let mut lru: Lru<u32> = Lru::new(1_000, 500);
        assert!(lru.insert("small", 1, 100));
        assert!(!lru.insert("big", 2, 500));
        assert_eq!(lru.peek("big"), None);
        assert_eq!(lru.get("small"), Some(1), "nothing evicted for it");
        // A too-big new version drops the old one rather than serving it.
        assert!(!lru.insert("small", 3, 2_000));
        assert!(lru.is_empty());
        assert_eq!(lru.bytes(), 0);
    }

    #[test]
    fn never_exceeds_its_bound() {
        let mut lru: Lru<u32> = Lru::new(5_000, 1_000);
        for i in 0..1_000u32 {
            let n = (i as usize * 37) % 900;
            lru.insert(&format!("k{}", i % 50), i, n);
            assert!(lru.bytes() <= 5_000);
            assert_eq!(lru.map.len(), lru.order.len());
        }
    }
}
