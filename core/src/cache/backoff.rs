//! Jittered exponential back-off after failed refreshes.
//!
//! Classic caches start a new refresh on nearly every request while the
//! origin is down. Here, after a refresh of a key fails, the next attempt
//! for that key waits 1 s, then 2 s, 4 s … up to 60 s, each delay drawn
//! from [½·d, d) so isolates that saw the same failure do not retry in
//! lock-step. Users keep being served the stale copy meanwhile. Success
//! clears the key's record. An origin that fails as a whole is the circuit
//! breaker's business ([`super::breaker`]); back-off is for one broken key
//! on a healthy origin.

use std::cell::RefCell;
use std::collections::HashMap;

/// First delay after a failure.
pub const BASE_MS: u64 = 1_000;
/// Longest delay.
pub const MAX_MS: u64 = 60_000;
/// Keys remembered at most; past that, records whose delay has run out are
/// dropped first, then everything (the cost is at worst one extra refresh).
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    retry_at: u64,
}

/// Per-isolate back-off state, keyed by cache key.
#[derive(Debug, Default)]
pub struct Backoff {
    records: RefCell<HashMap<String, Record>>,
}

impl Backoff {
    /// An empty back-off table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a refresh of `key` may start at `now`.
    pub fn allows(&self, key: &str, now: u64) -> bool {
        self.records
            .borrow()
            .get(key)
            .is_none_or(|r| now >= r.retry_at)
    }

    /// When the next refresh of `key` may start, if it is backing off.
    pub fn retry_at(&self, key: &str) -> Option<u64> {
        self.records.borrow().get(key).map(|r| r.retry_at)
    }

    /// Records a failed refresh at `now`; `uniform` in [0, 1) jitters the delay.
    /// Returns the delay chosen (ms).
    pub fn record_failure(&self, key: &str, now: u64, uniform: f64) -> u64 {
        let mut records = self.records.borrow_mut();
        if records.len() >= MAX_KEYS && !records.contains_key(key) {
            records.retain(|_, r| r.retry_at > now);
            if records.len() >= MAX_KEYS {
                records.clear();
            }
        }
        let rec = records.entry(key.to_owned()).or_insert(Record {
            failures: 0,
            retry_at: now,
        });
        rec.failures = rec.failures.saturating_add(1);
        let delay = delay_ms(rec.failures, uniform);
        rec.retry_at = now.saturating_add(delay);
        delay
    }

    /// Records a successful refresh: the key is healthy again.
    pub fn record_success(&self, key: &str) {
        self.records.borrow_mut().remove(key);
    }

    /// Holds off refreshes of `key` until `until` without counting a
    /// failure of the key itself (its origin is known to be down: when the
    /// origin is back, the key must not still be serving a long back-off).
    pub fn defer(&self, key: &str, until: u64) {
        let mut records = self.records.borrow_mut();
        let rec = records.entry(key.to_owned()).or_insert(Record {
            failures: 0,
            retry_at: until,
        });
        rec.retry_at = rec.retry_at.max(until);
    }

    /// Clears the records of every key `belongs` picks: when an origin
    /// recovers (its circuit breaker closes), its keys refresh at once
    /// instead of each sleeping through its own back-off.
    pub fn forget_where(&self, belongs: impl Fn(&str) -> bool) {
        self.records.borrow_mut().retain(|k, _| !belongs(k));
    }

    /// Number of consecutive failures recorded for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.records.borrow().get(key).map_or(0, |r| r.failures)
    }
}

/// The delay after the `failures`-th consecutive failure.
pub fn delay_ms(failures: u32, uniform: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    let ceiling = BASE_MS.saturating_mul(1u64 << exp).min(MAX_MS);
    let u = uniform.clamp(0.0, 1.0);
    ceiling / 2 + ((ceiling / 2) as f64 * u) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_jitter_band() {
        for (n, ceiling) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (6, 32_000),
            (7, 60_000),
            (40, 60_000),
        ] {
            let lo = delay_ms(n, 0.0);
            let hi = delay_ms(n, 0.999_999);
            assert_eq!(lo, ceiling / 2, "failure {n}");
            assert!(hi < ceiling && hi >= ceiling - 1, "failure {n}: {hi}");
        }
    }

    #[test]
    fn failure_blocks_until_retry_and_success_clears() {
        let b = Backoff::new();
        assert!(b.allows("k", 0));
        let d = b.record_failure("k", 10_000, 0.0);
        assert_eq!(d, 500);
        assert!(!b.allows("k", 10_499));
        assert!(b.allows("k", 10_500));
        assert!(b.allows("other", 10_000));
        let d2 = b.record_failure("k", 10_500, 0.0);
        assert_eq!(d2, 1000);
        assert_eq!(b.failures("k"), 2);
        b.record_success("k");
        assert!(b.allows("k", 10_501));
        assert_eq!(b.failures("k"), 0);
    }

    #[test]
    fn table_is_bounded() {
        let b = Backoff::new();
        for i in 0..(MAX_KEYS + 10) {
            b.record_failure(&format!("k{i}"), 0, 0.5);
        }
        assert!(b.records.borrow().len() <= MAX_KEYS);
    }
}
