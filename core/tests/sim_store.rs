//! Simulations of a slow or hung fragment store and of refreshes that fail
//! or never finish: stale copies are never lost to a refresh in flight,
//! flights have a bounded lifetime, and a hung KV call never holds a
//! request.

use fragcache_core::cache::kv::{KV_READ_TIMEOUT_MS, KV_WRITE_TIMEOUT_MS};
use fragcache_core::cache::{CacheStatus, EntryMeta};
use fragcache_core::loader::LoadError;
use fragcache_core::testing::{take, Script, Site, ORIGIN};

/// The `/f/*` route's origin timeout.
const TIMEOUT_MS: u64 = 2_000;

fn world(seed: u64) -> Site {
    Site::new(
        seed,
        &format!(
            r#"{{
              "origin": "{ORIGIN}",
              "pages": [ {{ "path": "/" }} ],
              "fragments": [
                {{ "path": "/f/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0,
                   "xfetch_beta": 0, "timeout_ms": {TIMEOUT_MS} }},
                {{ "path": "/w/*", "soft_ttl": 10, "hard_ttl": 300, "timeout_ms": {TIMEOUT_MS},
                   "cold_wait_ms": 30000 }}
              ]
            }}"#
        ),
    )
}

/// Stores `body` for `path`, `age_ms` old, stale after 10 s.
fn seed(w: &Site, path: &str, body: &str, age_ms: u64) {
    let stored = w.sim.now() - age_ms;
    w.put(
        path,
        body,
        EntryMeta::new(stored, stored + 10_000, stored + 300_000, 200, 50),
    );
}

#[test]
fn a_hung_store_counts_as_a_miss_and_a_failed_write() {
    let w = world(1);
    w.sim.store.hang.set(true);
    w.sim.origin.script("/f/a", Script::ok("A", 100));
    let start = w.sim.now();
    let slots: Vec<_> = (0..20).map(|_| w.load("/f/a")).collect();
    w.sim.run();
    for s in &slots {
        let (status, body, t) = take(s);
        assert_eq!(body.as_deref(), Ok("A"));
        assert!(matches!(status, CacheStatus::Miss | CacheStatus::Coalesced));
        // One read timeout, then the origin: nobody waits for the write.
        assert_eq!(t, start + KV_READ_TIMEOUT_MS + 100);
    }
    assert_eq!(w.sim.origin.count("/f/a"), 1);
    // One shared lookup read, and the write-back's check for a newer copy.
    assert_eq!(w.sim.store.gets.get(), 2);
    assert!(w.sim.log.contains("KV read failed, treating as a miss"));
    assert!(w.sim.log.contains("get timed out"));
    assert!(w.sim.log.contains("KV write failed"));
    assert!(w.sim.log.contains("put timed out"));
    assert!(
        w.shared.flights.is_empty(),
        "the flight ended despite the hung write"
    );
    // Bounded: the write-back's pre-check read and the put both timed out.
    assert!(w.sim.now() <= start + 2 * KV_READ_TIMEOUT_MS + 100 + KV_WRITE_TIMEOUT_MS);
}

#[test]
fn a_slow_store_is_read_once_per_burst() {
    let w = world(2);
    w.sim.store.latency_ms.set(30);
    seed(&w, "/f/s", "stored", 1_000);
    let slots: Vec<_> = (0..100).map(|_| w.load("/f/s")).collect();
    w.sim.run();
    for s in &slots {
        let (status, body, _) = take(s);
        assert_eq!((status, body.as_deref()), (CacheStatus::Hit, Ok("stored")));
    }
    assert_eq!(w.sim.store.gets.get(), 1);
}

#[test]
fn stale_in_the_store_is_served_while_a_failing_refresh_is_in_flight() {
    let w = world(3);
    w.sim.store.latency_ms.set(20);
    seed(&w, "/f/x", "old", 20_000);
    w.sim.origin.script("/f/x", Script::status(500, 300));
    let start = w.sim.now();
    let first = w.load("/f/x");
    w.sim.run_until(start + 50);
    assert_eq!(take(&first).0, CacheStatus::Stale);
    assert!(
        w.shared.flights.in_flight(&w.key_of("/f/x")),
        "refresh running"
    );
    // The isolate's memory loses its copy (evicted) while the refresh runs.
    w.shared.recent.forget_prefix("");
    let mut slots = Vec::new();
    // A request every 2 ms until the refresh fails, 320 ms in.
    for _ in 0..100 {
        slots.push(w.load("/f/x"));
        w.sim.run_until(w.sim.now() + 2);
    }
    assert!(w.sim.now() < start + 320);
    let gets = w.sim.store.gets.get();
    w.sim.run();
    assert!(
        w.sim.log.contains("origin answered 500"),
        "the refresh failed"
    );
    for s in &slots {
        let (status, body, _) = take(s);
        assert_eq!((status, body.as_deref()), (CacheStatus::Stale, Ok("old")));
    }
    assert_eq!(w.sim.origin.count("/f/x"), 1);
    // The first request's read, the refresh job's check for a newer copy,
    // then one shared read for everyone else.
    assert_eq!(gets, 3);
}

#[test]
fn a_cold_burst_reads_the_store_once_even_while_the_fetch_runs() {
    let w = world(4);
    w.sim.store.latency_ms.set(20);
    w.sim.origin.script("/f/c", Script::ok("C", 300));
    let start = w.sim.now();
    let mut slots: Vec<_> = (0..100).map(|_| w.load("/f/c")).collect();
    // More arrive while the origin fetch runs.
    w.sim.run_until(start + 100);
    slots.extend((0..100).map(|_| w.load("/f/c")));
    w.sim.run();
    assert!(slots.iter().all(|s| take(s).1.as_deref() == Ok("C")));
    assert_eq!(w.sim.origin.count("/f/c"), 1);
    // One lookup read; the write-back trusts it (it found nothing) rather
    // than reading again.
    assert_eq!(w.sim.store.gets.get(), 1);
}

#[test]
fn a_fetch_that_never_ends_is_given_up_after_the_flight_lifetime() {
    let lifetime = fragcache_core::loader::flight_lifetime_ms(TIMEOUT_MS);
    assert_eq!(
        lifetime,
        TIMEOUT_MS + KV_READ_TIMEOUT_MS + KV_WRITE_TIMEOUT_MS
    );
    let w = world(5);
    w.sim.origin.script("/f/n", Script::Stall);
    let start = w.sim.now();
    let leader = w.load("/f/n");
    w.sim.run_until(start + 10);
    let follower = w.load("/f/n");
    w.sim.run_until(start + lifetime - 1);
    // Both stopped waiting: the leader at its own deadline, the follower
    // at its cold-wait limit; neither is still parked on the dead flight.
    assert!(take(&leader).1.is_err());
    assert!(take(&follower).1.is_err());
    let before = w.load("/f/n");
    w.sim.run_until(start + lifetime - 1);
    assert_eq!(w.sim.origin.count("/f/n"), 1, "still the same flight");
    // Past the lifetime, the next request leads a new fetch.
    w.sim.origin.script("/f/n", Script::ok("N", 10));
    w.sim.run_until(start + lifetime);
    let after = w.load("/f/n");
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/n"), 2);
    let (status, body, t) = take(&after);
    assert_eq!((status, body.as_deref()), (CacheStatus::Miss, Ok("N")));
    assert_eq!(t, start + lifetime + 10);
    // The request that joined the dead flight stopped waiting at its end.
    let (_, r, t) = take(&before);
    assert!(r.is_err());
    assert!(t <= start + lifetime, "waited past the flight's lifetime");
}

#[test]
fn a_refresh_that_never_ends_is_retried_after_the_flight_lifetime() {
    let lifetime = fragcache_core::loader::flight_lifetime_ms(TIMEOUT_MS);
    let w = world(6);
    seed(&w, "/f/r", "old", 20_000);
    w.sim.origin.script("/f/r", Script::Stall);
    let start = w.sim.now();
    let first = w.load("/f/r");
    w.sim.run_until(start + lifetime - 1);
    let during = w.load("/f/r");
    w.sim.run_until(start + lifetime - 1);
    assert_eq!(take(&first).1.as_deref(), Ok("old"));
    assert_eq!(take(&during).1.as_deref(), Ok("old"));
    assert_eq!(w.sim.origin.count("/f/r"), 1);
    w.sim.origin.script("/f/r", Script::ok("new", 10));
    w.sim.run_until(start + lifetime);
    let after = w.load("/f/r");
    w.sim.run();
    assert_eq!(take(&after).0, CacheStatus::Stale);
    assert_eq!(w.sim.origin.count("/f/r"), 2, "a fresh refresh started");
    let next = w.load("/f/r");
    w.sim.run();
    assert_eq!(take(&next).1.as_deref(), Ok("new"));
}

#[test]
fn followers_stop_waiting_when_the_flight_dies() {
    let lifetime = fragcache_core::loader::flight_lifetime_ms(TIMEOUT_MS);
    let w = world(7);
    w.sim.origin.script("/w/n", Script::Stall);
    let start = w.sim.now();
    let _leader = w.load("/w/n");
    w.sim.run_until(start + 10);
    // Willing to wait 30 s, longer than the flight may live.
    let follower = w.load("/w/n");
    w.sim.run_until(start + 20_000);
    let (status, r, t) = take(&follower);
    assert_eq!(status, CacheStatus::Error);
    assert_eq!(r, Err(LoadError::Abandoned));
    assert_eq!(t, start + lifetime);
}
