//! Per-origin circuit breaker: one failing origin costs about one request a
//! second, whatever the number of stale keys, and its recovery is noticed
//! within about a second.
//!
//! [`backoff`](super::backoff) works per cache key: with N stale keys of a
//! dead origin, the origin still sees N attempts per back-off window, and
//! once it heals each key waits out its own (by then multi-second) delay
//! before it is refreshed. The breaker adds a second gate, per origin
//! (`scheme://host:port`), in front of every origin request.
//!
//! # States
//!
//! - **closed** — requests go ([`Permit::Go`]). Consecutive failures are
//!   counted; any success resets the count. After
//!   [`threshold`](BreakerConfig::threshold) consecutive failures the
//!   breaker opens.
//! - **open** `{ until_ms }` — requests are denied ([`Permit::Deny`]) until
//!   `until_ms`. The first caller at or after `until_ms` is given the single
//!   [`Permit::Probe`] and the breaker becomes half-open.
//! - **half-open** `{ probe_started_ms }` — one probe is in flight; everybody
//!   else is denied. The probe's success closes the breaker; its failure
//!   re-opens it with the next probe one jittered interval later. A probe
//!   that never reports (its request was cancelled with the isolate) expires
//!   after [`probe_timeout_ms`](BreakerConfig::probe_timeout_ms), and the next
//!   caller probes instead.
//!
//! Any success closes the breaker from any state (a request that started
//! before the breaker opened and succeeds late is as good a proof of health
//! as a probe); any failure while half-open re-opens it.
//!
//! # Why one probe, and why jittered
//!
//! Letting every request through once the open period ends would be the
//! same burst the breaker exists to prevent, aimed at an origin that is
//! just coming back. One probe at a time bounds the load on a dead origin
//! to about one request per [`probe_interval_ms`](BreakerConfig::probe_interval_ms)
//! per breaker. The interval is drawn from [½·interval, interval] so that
//! breakers that opened together (several isolates, several origins behind
//! one load balancer) drift apart instead of probing in lock-step, while a
//! healed origin is still detected within one interval.
//!
//! # Composition with per-key back-off
//!
//! The caller asks per-key back-off first and the breaker second, so a
//! probe is only handed to a request that will actually be made:
//!
//! - a key whose origin is healthy (breaker closed) still backs off on its
//!   own after its own failures (a 5xx on one path does not penalise the
//!   others — unless [`threshold`](BreakerConfig::threshold) of them fail in a
//!   row);
//! - an open breaker suppresses refreshes of every key of that origin: stale
//!   copies keep being served, and cold misses fail fast into `alt`,
//!   `onerror`, `esi:try` or a 503 with `Retry-After` taken from
//!   [`Permit::Deny::retry_after_ms`];
//! - when a probe (or any request) succeeds, [`Breaker::record_success`]
//!   reports the transition to closed; the caller then clears the per-key
//!   back-offs of that origin and refreshes its stale fragments at once,
//!   rather than waiting out each key's delay.
//!
//! # Sharing
//!
//! The state machine is pure (time and randomness are arguments) and its
//! state is serialisable: [`Breaker::snapshot`] and [`Breaker::merge`]
//! exchange [`BreakerSnapshot`]s, and [`OriginRecord::merge`] is a join
//! (commutative, associative, idempotent: the most recently updated record
//! wins, ties going to the more pessimistic state), so the same machine can
//! later live in a Durable Object shared by isolates.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Consecutive failures that open a closed breaker.
pub const DEFAULT_THRESHOLD: u32 = 3;
/// Time between probes of an open origin, before jitter (the actual wait is
/// drawn from [½, 1] × this).
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1_000;
/// How long a probe may stay unanswered before another one may go.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 10_000;
/// Origins tracked at most. Past that, closed records are dropped first,
/// then the least recently updated one (the cost is at worst re-learning
/// that an origin is down: `threshold` more failed requests).
pub const MAX_ORIGINS: usize = 1_024;

/// Tuning of a [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 is taken as 1).
    pub threshold: u32,
    /// Time between probes while open, before jitter.
    pub probe_interval_ms: u64,
    /// Age at which an unanswered probe is given up on.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
        }
    }
}

impl BreakerConfig {
    /// The wait before the next probe: [½, 1] × interval, `uniform` in [0, 1].
    pub fn probe_delay_ms(&self, uniform: f64) -> u64 {
        let u = if uniform.is_nan() {
            0.0
        } else {
            uniform.clamp(0.0, 1.0)
        };
        let half = self.probe_interval_ms / 2;
        half + ((self.probe_interval_ms - half) as f64 * u) as u64
    }
}

/// Where one origin's breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum BreakerState {
    /// Requests go.
    Closed,
    /// Requests are denied; the next probe may go at `until_ms`.
    Open {
        /// When the next probe may go.
        until_ms: u64,
    },
    /// One probe is in flight since `probe_started_ms`; others are denied.
    HalfOpen {
        /// When the probe was handed out.
        probe_started_ms: u64,
    },
}

impl BreakerState {
    /// Lower-case name used in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }

    /// Order used to break ties in [`OriginRecord::merge`]: more pessimistic
    /// is greater.
    fn rank(self) -> (u8, u64) {
        match self {
            BreakerState::Closed => (0, 0),
            BreakerState::HalfOpen { probe_started_ms } => (1, probe_started_ms),
            BreakerState::Open { until_ms } => (2, until_ms),
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker's answer to "may I send a request to this origin now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "permit", rename_all = "kebab-case")]
pub enum Permit {
    /// Closed: send it.
    Go,
    /// Send it as the one probe; its outcome must be reported with
    /// [`Breaker::record_success`] or [`Breaker::record_failure`].
    Probe,
    /// Do not send it: serve stale, or fail fast.
    Deny {
        /// Suggested wait before trying again (for `Retry-After`).
        retry_after_ms: u64,
    },
}

/// One origin's breaker, in the form that is stored, serialised and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRecord {
    /// Current state.
    pub state: BreakerState,
    /// Consecutive failures (reset by a success).
    pub failures: u32,
    /// Time of the last change to this record.
    pub updated_ms: u64,
    /// Keys seen in the current run of failures, counted as changes of key
    /// (see [`Breaker::record_key_failure`]).
    #[serde(default)]
    pub keys: u32,
    /// Hash of the key of the last failure.
    #[serde(default)]
    pub last_key: u64,
}

impl OriginRecord {
    fn order(&self) -> (u64, (u8, u64), u32) {
        (self.updated_ms, self.state.rank(), self.failures)
    }

    /// Joins two views of the same origin: the most recently updated one
    /// wins; on a tie, the more pessimistic state, then the higher count.
    /// Commutative, associative and idempotent.
    pub fn merge(self, other: OriginRecord) -> OriginRecord {
        if other.order() > self.order() {
            other
        } else {
            self
        }
    }
}

/// Serialisable state of a whole [`Breaker`], keyed by origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// Records of the origins that have failed at some point.
    pub origins: BTreeMap<String, OriginRecord>,
}

/// Per-isolate circuit breakers, keyed by origin.
#[derive(Debug, Default)]
pub struct Breaker {
    config: Cell<BreakerConfig>,
    records: RefCell<HashMap<String, OriginRecord>>,
}

impl Breaker {
    /// An empty breaker table with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config: Cell::new(config),
            records: RefCell::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> BreakerConfig {
        self.config.get()
    }

    /// Replaces the configuration (the isolate's breaker is made before the
    /// configuration is read); records are kept.
    pub fn set_config(&self, config: BreakerConfig) {
        self.config.set(config);
    }

    /// Records that someone who sees more (the coordinator's shared
    /// breaker) found `origin` open until `until_ms`: this table denies it
    /// until then too, so an isolate stops asking.
    pub fn note_open(&self, origin: &str, until_ms: u64, now: u64) {
        let mut origins = BTreeMap::new();
        origins.insert(
            origin.to_owned(),
            OriginRecord {
                state: BreakerState::Open { until_ms },
                failures: self.config.get().threshold.max(1),
                updated_ms: now,
                keys: 0,
                last_key: 0,
            },
        );
        self.merge(&BreakerSnapshot { origins });
    }

    /// Whether a request to `origin` may be sent at `now`. `uniform` in
    /// [0, 1) jitters the `retry_after_ms` suggested while a probe is out.
    pub fn permit(&self, origin: &str, now: u64, uniform: f64) -> Permit {
        let mut records = self.records.borrow_mut();
        let Some(rec) = records.get_mut(origin) else {
            return Permit::Go;
        };
        match rec.state {
            BreakerState::Closed => Permit::Go,
            BreakerState::Open { until_ms } if now < until_ms => Permit::Deny {
                retry_after_ms: until_ms - now,
            },
            BreakerState::HalfOpen { probe_started_ms }
                if now < probe_started_ms.saturating_add(self.config.get().probe_timeout_ms) =>
            {
                // The probe's outcome decides; if it fails, the next probe
                // is about one jittered interval away.
                Permit::Deny {
                    retry_after_ms: self.config.get().probe_delay_ms(uniform).max(1),
                }
            }
            // Probe time has come, or the last probe expired unanswered.
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                rec.state = BreakerState::HalfOpen {
                    probe_started_ms: now,
                };
                rec.updated_ms = now;
                Permit::Probe
            }
        }
    }

    /// Records a failed request (5xx, timeout, reset — the caller decides)
    /// to `origin` at `now`; `uniform` in [0, 1) jitters the time of the
    /// next probe if the breaker opens. Returns the resulting state.
    pub fn record_failure(&self, origin: &str, now: u64, uniform: f64) -> BreakerState {
        self.failure(origin, None, now, uniform)
    }

    /// Records a failed request for cache key `key` of `origin`. One key
    /// failing again and again is that key's problem (its own back-off
    /// handles it), not the origin's: the breaker opens only once the run
    /// of consecutive failures spans at least two keys (or the threshold
    /// is 1).
    pub fn record_key_failure(
        &self,
        origin: &str,
        key: &str,
        now: u64,
        uniform: f64,
    ) -> BreakerState {
        // FNV-1a: only to tell keys apart, not to resist anyone.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.failure(origin, Some(hash), now, uniform)
    }

    fn failure(&self, origin: &str, key: Option<u64>, now: u64, uniform: f64) -> BreakerState {
        let mut records = self.records.borrow_mut();
        let rec = Self::slot(&mut records, origin, now);
        rec.failures = rec.failures.saturating_add(1);
        rec.updated_ms = now;
        // An unnamed key counts as another key every time.
        if key.is_none_or(|k| rec.keys == 0 || k != rec.last_key) {
            rec.keys = rec.keys.saturating_add(1);
        }
        rec.last_key = key.unwrap_or(0);
        let threshold = self.config.get().threshold.max(1);
        let spans_keys = rec.keys >= 2 || threshold == 1;
        let open = BreakerState::Open {
            until_ms: now.saturating_add(self.config.get().probe_delay_ms(uniform)),
        };
        match rec.state {
            BreakerState::Closed if rec.failures >= threshold && spans_keys => {
                rec.state = open;
            }
            BreakerState::Closed => {}
            // A failed probe: re-open and schedule the next one.
            BreakerState::HalfOpen { .. } => rec.state = open,
            // A straggler that left before the breaker opened: already
            // counted as down; do not push the next probe back.
            BreakerState::Open { .. } => {}
        }
        rec.state
    }

    /// Records a successful request to `origin` at `now`: the breaker
    /// closes. Returns `true` if it was open or half-open, i.e. the origin
    /// has just recovered (the caller then clears per-key back-offs and
    /// refreshes stale fragments of that origin at once).
    pub fn record_success(&self, origin: &str, now: u64) -> bool {
        let mut records = self.records.borrow_mut();
        let Some(rec) = records.get_mut(origin) else {
            return false;
        };
        let was_tripped = rec.state != BreakerState::Closed;
        if was_tripped || rec.failures != 0 {
            *rec = OriginRecord {
                state: BreakerState::Closed,
                failures: 0,
                updated_ms: now,
                keys: 0,
                last_key: 0,
            };
        }
        was_tripped
    }

    /// The state of `origin`'s breaker as of `now`, for status headers. A
    /// probe that has expired unanswered reads as open, its next probe due.
    pub fn state(&self, origin: &str, now: u64) -> BreakerState {
        match self.records.borrow().get(origin).map(|r| r.state) {
            None => BreakerState::Closed,
            Some(BreakerState::HalfOpen { probe_started_ms }) => {
                let expires = probe_started_ms.saturating_add(self.config.get().probe_timeout_ms);
                if now >= expires {
                    BreakerState::Open { until_ms: expires }
                } else {
                    BreakerState::HalfOpen { probe_started_ms }
                }
            }
            Some(state) => state,
        }
    }

    /// Consecutive failures recorded for `origin`.
    pub fn failures(&self, origin: &str) -> u32 {
        self.records.borrow().get(origin).map_or(0, |r| r.failures)
    }

    /// Number of origins tracked.
    pub fn len(&self) -> usize {
        self.records.borrow().len()
    }

    /// Whether no origin is tracked.
    pub fn is_empty(&self) -> bool {
        self.records.borrow().is_empty()
    }

    /// A serialisable copy of every record.
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            origins: self
                .records
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Joins `snapshot` into this table record by record with
    /// [`OriginRecord::merge`] (bounded like any other insertion).
    pub fn merge(&self, snapshot: &BreakerSnapshot) {
        let mut records = self.records.borrow_mut();
        for (origin, theirs) in &snapshot.origins {
            let slot = Self::slot(&mut records, origin, theirs.updated_ms);
            *slot = slot.merge(*theirs);
        }
    }

    /// The record of `origin`, created closed if missing, evicting to stay
    /// within [`MAX_ORIGINS`].
    fn slot<'a>(
        records: &'a mut HashMap<String, OriginRecord>,
        origin: &str,
        now: u64,
    ) -> &'a mut OriginRecord {
        if records.len() >= MAX_ORIGINS && !records.contains_key(origin) {
            records.retain(|_, r| r.state != BreakerState::Closed);
            if records.len() >= MAX_ORIGINS {
                let oldest = records
                    .iter()
                    .min_by_key(|(k, r)| (r.updated_ms, *k))
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    records.remove(&oldest);
                }
            }
        }
        records.entry(origin.to_owned()).or_insert(OriginRecord {
            state: BreakerState::Closed,
            failures: 0,
            updated_ms: now,
            keys: 0,
            last_key: 0,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_broken_key_does_not_open_the_origin() {
        let b = Breaker::default();
        for t in 0..10 {
            assert_eq!(
                b.record_key_failure("https://o.test", "f0:https://o.test/broken", t, 0.5),
                BreakerState::Closed,
                "failure {t} of the same key"
            );
        }
        // A second key failing too: the origin is down.
        let s = b.record_key_failure("https://o.test", "f0:https://o.test/other", 11, 0.5);
        assert!(matches!(s, BreakerState::Open { .. }), "{s:?}");
        // A success starts the count again from nothing.
        b.record_success("https://o.test", 12);
        assert_eq!(
            b.record_key_failure("https://o.test", "f0:https://o.test/a", 13, 0.5),
            BreakerState::Closed
        );
    }

    use super::*;
    use crate::cache::backoff::Backoff;
    use std::cell::Cell;

    const O: &str = "https://origin.example:443";

    /// Deterministic xorshift64* in [0, 1).
    struct Uniform(Cell<u64>);
    impl Uniform {
        fn new(seed: u64) -> Self {
            Uniform(Cell::new(seed | 1))
        }
        fn next(&self) -> f64 {
            let mut x = self.0.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0.set(x);
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn opened(b: &Breaker, now: u64, u: f64) -> u64 {
        for _ in 0..b.config().threshold {
            b.record_failure(O, now, u);
        }
        match b.state(O, now) {
            BreakerState::Open { until_ms } => until_ms,
            s => panic!("expected open, got {s:?}"),
        }
    }

    #[test]
    fn defaults_and_names() {
        let c = BreakerConfig::default();
        assert_eq!(
            (c.threshold, c.probe_interval_ms, c.probe_timeout_ms),
            (3, 1_000, 10_000)
        );
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open { until_ms: 1 }.to_string(), "open");
        assert_eq!(
            BreakerState::HalfOpen {
                probe_started_ms: 1
            }
            .as_str(),
            "half-open"
        );
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = Breaker::default();
        assert_eq!(b.record_failure(O, 100, 0.0), BreakerState::Closed);
        assert_eq!(b.record_failure(O, 110, 0.0), BreakerState::Closed);
        assert_eq!(b.permit(O, 115, 0.0), Permit::Go);
        assert_eq!(
            b.record_failure(O, 120, 0.0),
            BreakerState::Open { until_ms: 620 }
        );
        assert_eq!(b.failures(O), 3);
        assert_eq!(
            b.state("https://other.example:443", 120),
            BreakerState::Closed
        );
    }

    #[test]
    fn success_in_between_resets_the_count() {
        let b = Breaker::default();
        b.record_failure(O, 0, 0.0);
        b.record_failure(O, 1, 0.0);
        assert!(!b.record_success(O, 2));
        b.record_failure(O, 3, 0.0);
        b.record_failure(O, 4, 0.0);
        assert_eq!(b.state(O, 5), BreakerState::Closed);
    }

    #[test]
    fn denies_while_open() {
        let b = Breaker::default();
        let until = opened(&b, 1_000, 1.0);
        assert_eq!(until, 2_000);
        for now in [1_000, 1_500, 1_999] {
            assert_eq!(
                b.permit(O, now, 0.3),
                Permit::Deny {
                    retry_after_ms: until - now
                }
            );
        }
        // Stragglers failing while open do not push the probe back.
        b.record_failure(O, 1_800, 1.0);
        assert_eq!(b.state(O, 1_800), BreakerState::Open { until_ms: 2_000 });
    }

    #[test]
    fn exactly_one_probe_among_a_thousand_concurrent_permits() {
        let b = Breaker::default();
        let until = opened(&b, 0, 0.5);
        let u = Uniform::new(7);
        let permits: Vec<Permit> = (0..1000).map(|_| b.permit(O, until, u.next())).collect();
        assert_eq!(permits.iter().filter(|p| **p == Permit::Probe).count(), 1);
        assert_eq!(permits[0], Permit::Probe);
        for p in &permits[1..] {
            let Permit::Deny { retry_after_ms } = p else {
                panic!("{p:?}")
            };
            assert!((500..=1_000).contains(retry_after_ms), "{retry_after_ms}");
        }
        assert_eq!(
            b.state(O, until),
            BreakerState::HalfOpen {
                probe_started_ms: until
            }
        );
        // Still one probe over the whole interval that follows.
        let later = (until..until + 1_000)
            .filter(|t| b.permit(O, *t, u.next()) == Permit::Probe)
            .count();
        assert_eq!(later, 0);
    }

    #[test]
    fn failed_probe_reopens_and_schedules_the_next() {
        let b = Breaker::default();
        let until = opened(&b, 0, 0.0);
        assert_eq!(b.permit(O, until, 0.0), Permit::Probe);
        assert_eq!(
            b.record_failure(O, until + 40, 0.5),
            BreakerState::Open {
                until_ms: until + 40 + 750
            }
        );
        assert!(matches!(b.permit(O, until + 789, 0.0), Permit::Deny { .. }));
        assert_eq!(b.permit(O, until + 790, 0.0), Permit::Probe);
    }

    #[test]
    fn success_closes_and_reports_the_transition() {
        let b = Breaker::default();
        assert!(!b.record_success(O, 0), "unknown origin: no transition");
        let until = opened(&b, 0, 0.0);
        assert_eq!(b.permit(O, until, 0.0), Permit::Probe);
        assert!(b.record_success(O, until + 30));
        assert_eq!(b.state(O, until + 30), BreakerState::Closed);
        assert_eq!(b.failures(O), 0);
        assert_eq!(b.permit(O, until + 31, 0.0), Permit::Go);
        assert!(!b.record_success(O, until + 40), "already closed");
        // A late success while open (a straggler) closes too.
        let until = opened(&b, 10_000, 0.0);
        assert!(b.record_success(O, until - 1));
        assert_eq!(b.permit(O, until - 1, 0.0), Permit::Go);
    }

    #[test]
    fn probe_timeout_lets_a_new_probe_go() {
        let b = Breaker::default();
        let until = opened(&b, 0, 0.0);
        assert_eq!(b.permit(O, until, 0.0), Permit::Probe);
        let expiry = until + DEFAULT_PROBE_TIMEOUT_MS;
        assert!(matches!(b.permit(O, expiry - 1, 0.0), Permit::Deny { .. }));
        assert_eq!(b.state(O, expiry), BreakerState::Open { until_ms: expiry });
        assert_eq!(b.permit(O, expiry, 0.0), Permit::Probe);
        assert!(matches!(b.permit(O, expiry, 0.0), Permit::Deny { .. }));
        assert!(b.record_success(O, expiry + 5));
    }

    #[test]
    fn jitter_keeps_probe_gaps_within_half_to_one_interval() {
        let b = Breaker::default();
        let u = Uniform::new(42);
        let mut now = opened(&b, 0, u.next());
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..2_000 {
            assert_eq!(b.permit(O, now, u.next()), Permit::Probe);
            let BreakerState::Open { until_ms } = b.record_failure(O, now, u.next()) else {
                panic!()
            };
            let gap = until_ms - now;
            assert!((500..=1_000).contains(&gap), "{gap}");
            lo = lo.min(gap);
            hi = hi.max(gap);
            now = until_ms;
        }
        // The draws actually spread over the band.
        assert!(lo < 520 && hi > 980, "{lo}..{hi}");
        assert_eq!(BreakerConfig::default().probe_delay_ms(f64::NAN), 500);
        assert_eq!(BreakerConfig::default().probe_delay_ms(7.0), 1_000);
    }

    #[test]
    fn recovery_is_detected_within_an_interval_of_healing() {
        let u = Uniform::new(3);
        for healed_at in (5_000..8_000).step_by(37) {
            let b = Breaker::default();
            let mut now = opened(&b, 0, u.next());
            // Callers ask every millisecond; probes reach the origin at once.
            let closed_at = loop {
                if b.permit(O, now, u.next()) == Permit::Probe {
                    if now >= healed_at {
                        assert!(b.record_success(O, now));
                        break now;
                    }
                    b.record_failure(O, now, u.next());
                }
                now += 1;
            };
            let delay = closed_at - healed_at;
            assert!(
                delay <= DEFAULT_PROBE_INTERVAL_MS,
                "healed {healed_at}: {delay}"
            );
        }
    }

    #[test]
    fn memory_is_bounded_and_closed_records_go_first() {
        let b = Breaker::default();
        // One open origin, then a crowd of closed ones with a failure each.
        opened(&b, 0, 0.0);
        for i in 0..MAX_ORIGINS + 500 {
            let o = format!("https://o{i}.example:443");
            b.record_failure(&o, 1 + i as u64, 0.0);
            assert!(b.len() <= MAX_ORIGINS);
        }
        assert!(matches!(b.state(O, 10), BreakerState::Open { .. }));
        // All open: the least recently updated one goes.
        let b = Breaker::default();
        for i in 0..MAX_ORIGINS + 10 {
            let o = format!("https://o{i}.example:443");
            for _ in 0..3 {
                b.record_failure(&o, i as u64, 0.0);
            }
            assert!(b.len() <= MAX_ORIGINS);
        }
        assert_eq!(b.state("https://o0.example:443", 0), BreakerState::Closed);
        let last = format!("https://o{}.example:443", MAX_ORIGINS + 9);
        assert!(matches!(b.state(&last, 0), BreakerState::Open { .. }));
    }

    #[test]
    fn snapshot_round_trips_and_merge_is_a_join() {
        let b = Breaker::default();
        opened(&b, 100, 0.0);
        b.record_failure("https://b.example:443", 50, 0.0);
        let snap = b.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains(r#""state":"open","until_ms":600"#), "{json}");
        let back: BreakerSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);

        // Another isolate learns the origin is down without failing itself.
        let other = Breaker::default();
        other.merge(&back);
        assert_eq!(other.state(O, 100), BreakerState::Open { until_ms: 600 });
        assert_eq!(other.permit(O, 600, 0.0), Permit::Probe);
        // Its probe succeeds; the newer closed record wins on the way back.
        assert!(other.record_success(O, 650));
        b.merge(&other.snapshot());
        assert_eq!(b.state(O, 650), BreakerState::Closed);
        // An older view does not undo it.
        b.merge(&snap);
        assert_eq!(b.state(O, 650), BreakerState::Closed);

        let recs = [
            OriginRecord {
                state: BreakerState::Closed,
                failures: 2,
                updated_ms: 10,
                keys: 0,
                last_key: 0,
            },
            OriginRecord {
                state: BreakerState::Open { until_ms: 900 },
                failures: 3,
                updated_ms: 10,
                keys: 0,
                last_key: 0,
            },
            OriginRecord {
                state: BreakerState::HalfOpen {
                    probe_started_ms: 9,
                },
                failures: 3,
                updated_ms: 9,
                keys: 0,
                last_key: 0,
            },
        ];
        for a in recs {
            assert_eq!(a.merge(a), a);
            for c in recs {
                assert_eq!(a.merge(c), c.merge(a));
                for d in recs {
                    assert_eq!(a.merge(c).merge(d), a.merge(c.merge(d)));
                }
            }
        }
        assert_eq!(recs[0].merge(recs[1]), recs[1], "tie: pessimistic wins");
        let cfg: BreakerConfig = serde_json::from_str(r#"{"threshold":5}"#).unwrap();
        assert_eq!(cfg.probe_interval_ms, DEFAULT_PROBE_INTERVAL_MS);
    }

    /// 20 stale keys of one origin, each requested 20×/s; the origin fails
    /// for 30 s, then heals. Every request for a stale key wants a refresh
    /// (single-flight per key), gated by per-key back-off, then the breaker.
    /// Origin requests take 50 ms; their outcome depends on when they left.
    struct Outcome {
        attempts_while_failing: usize,
        attempts_after_first_second: usize,
        recovery_ms: u64,
        all_fresh_ms: u64,
    }

    fn simulate(use_breaker: bool, seed: u64) -> Outcome {
        const KEYS: usize = 20;
        const LATENCY: u64 = 50;
        const HEAL: u64 = 30_000;
        let b = Breaker::default();
        let backoff = Backoff::new();
        let u = Uniform::new(seed);
        let key = |k: usize| format!("/fragment/{k}");
        let mut fresh = [false; KEYS];
        let mut in_flight: [Option<u64>; KEYS] = [None; KEYS]; // done_at
        let (mut attempts, mut after_first, mut recovered, mut all_fresh) = (0, 0, None, None);
        for now in 0..HEAL + 120_000 {
            // Completions first.
            for k in 0..KEYS {
                let Some(done_at) = in_flight[k] else {
                    continue;
                };
                if done_at > now {
                    continue;
                }
                in_flight[k] = None;
                if done_at - LATENCY >= HEAL {
                    fresh[k] = true;
                    backoff.record_success(&key(k));
                    if b.record_success(O, now) && recovered.is_none() {
                        recovered = Some(now - HEAL);
                        // The caller clears the origin's per-key back-offs.
                        (0..KEYS).for_each(|j| backoff.record_success(&key(j)));
                    }
                } else {
                    backoff.record_failure(&key(k), now, u.next());
                    b.record_failure(O, now, u.next());
                }
            }
            if all_fresh.is_none() && fresh.iter().all(|f| *f) {
                all_fresh = Some(now - HEAL);
                break;
            }
            // Key k is requested at now ≡ 2k (mod 50): 20×/s each.
            let k = (now % 50) as usize / 2;
            if now % 2 != 0 || k >= KEYS || fresh[k] || in_flight[k].is_some() {
                continue;
            }
            if !backoff.allows(&key(k), now) {
                continue;
            }
            if use_breaker && matches!(b.permit(O, now, u.next()), Permit::Deny { .. }) {
                continue;
            }
            in_flight[k] = Some(now + LATENCY);
            if now < HEAL {
                attempts += 1;
                if now >= 1_000 {
                    after_first += 1;
                }
            }
        }
        Outcome {
            attempts_while_failing: attempts,
            attempts_after_first_second: after_first,
            recovery_ms: recovered.unwrap_or(u64::MAX),
            all_fresh_ms: all_fresh.unwrap_or(u64::MAX),
        }
    }

    #[test]
    fn thirty_second_outage_costs_about_one_attempt_a_second() {
        let mut worst = (0, 0, 0, 0);
        for seed in 1..=20 {
            let o = simulate(true, seed);
            // At most one attempt per probe gap (≥ 500 ms + latency) after
            // the opening burst, ~30 on average over 29 s.
            assert!(
                o.attempts_after_first_second <= 29_000 / 550 + 1,
                "seed {seed}: {}",
                o.attempts_after_first_second
            );
            assert!(o.attempts_while_failing <= 20 + 30_000 / 550 + 1);
            // Healing is seen within one interval plus a round trip or two…
            assert!(
                o.recovery_ms <= DEFAULT_PROBE_INTERVAL_MS + 2 * 50,
                "seed {seed}: {}",
                o.recovery_ms
            );
            // …and every stale key is refreshed right after.
            assert!(o.all_fresh_ms <= o.recovery_ms + 100, "seed {seed}");
            worst = (
                worst.0.max(o.attempts_while_failing),
                worst.1.max(o.attempts_after_first_second),
                worst.2.max(o.recovery_ms),
                worst.3.max(o.all_fresh_ms),
            );
        }
        let base = simulate(false, 1);
        let with = simulate(true, 1);
        println!(
            "breaker (seed 1): {} attempts in 30 s ({} after the first second), \
             closed {} ms after healing, all fresh after {} ms; worst of 20 seeds: {worst:?}",
            with.attempts_while_failing,
            with.attempts_after_first_second,
            with.recovery_ms,
            with.all_fresh_ms,
        );
        println!(
            "per-key back-off only: {} attempts in 30 s, all fresh after {} ms",
            base.attempts_while_failing, base.all_fresh_ms
        );
        assert!(base.attempts_while_failing > 2 * with.attempts_while_failing);
    }
}
