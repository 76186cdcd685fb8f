//! Origin protection across isolates, on the virtual clock: several
//! isolates (each its own [`Shared`]) sharing one store, one origin and,
//! when enabled, one simulated coordinator; and an origin outage under
//! steady load, with the circuit breaker.

use std::rc::Rc;

use fragcache_core::cache::CacheStatus;
use fragcache_core::config::Config;
use fragcache_core::loader::Shared;
use fragcache_core::testing::{self, take, Script, Sim, Slot, ORIGIN};
use fragcache_core::url::Url;

const CONFIG: &str = r#"{
  "origin": "http://origin.test",
  "fragments": [
    { "path": "/f/*", "soft_ttl": 10, "hard_ttl": 600, "jitter": 0, "xfetch_beta": 0, "timeout_ms": 1000 }
  ]
}"#;

struct Isolate {
    shared: Rc<Shared>,
    coordinated: bool,
}

struct World {
    sim: Sim,
    config: Rc<Config>,
    isolates: Vec<Isolate>,
}

type Loaded = (CacheStatus, Result<String, String>);

impl World {
    fn new(seed: u64, isolates: usize, coordinated: bool) -> World {
        World {
            sim: Sim::new(seed),
            config: Rc::new(Config::from_json_str(CONFIG).unwrap()),
            isolates: (0..isolates)
                .map(|_| Isolate {
                    shared: Shared::new(),
                    coordinated,
                })
                .collect(),
        }
    }

    fn load(&self, isolate: usize, path: &str) -> Slot<Loaded> {
        let i = &self.isolates[isolate];
        let ports = if i.coordinated {
            self.sim.ports_with_coordinator()
        } else {
            self.sim.ports()
        };
        let loader = testing::loader(ports, &i.shared, &self.config, "/", &[]);
        let url = Url::parse(&format!("{ORIGIN}{path}")).unwrap();
        self.sim.spawn(async move {
            let (status, r, _) = testing::load_fragment(loader, url).await;
            (status, r.map_err(|e| e.to_string()))
        })
    }

    /// `n` concurrent loads of each path, spread over the isolates.
    fn burst(&self, paths: &[String], n: usize) -> Vec<Slot<Loaded>> {
        let mut slots = Vec::new();
        for k in 0..n {
            for p in paths {
                slots.push(self.load(k % self.isolates.len(), p));
            }
        }
        self.sim.run();
        slots
    }
}

fn paths(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/f/p{i}")).collect()
}

fn script_all(sim: &Sim, paths: &[String], latency: u64) {
    for p in paths {
        sim.origin.script(p, Script::ok("v{{serial}}", latency));
    }
}

#[test]
fn a_cold_burst_across_isolates_makes_one_fetch_per_fragment_with_the_coordinator() {
    let ps = paths(5);
    for (coordinated, want) in [(true, 1), (false, 2)] {
        let w = World::new(1, 2, coordinated);
        script_all(&w.sim, &ps, 300);
        let slots = w.burst(&ps, 40);
        for s in &slots {
            let (_, r) = take(s);
            let body = r.unwrap();
            // Per isolate, each isolate's fetch is its own version.
            assert!(body == "v1" || (!coordinated && body == "v2"), "{body}");
        }
        for p in &ps {
            assert_eq!(
                w.sim.origin.count(p),
                want,
                "{p}, coordinator: {coordinated}"
            );
        }
        println!(
            "cold burst, 2 isolates x 5 fragments x 200 requests: {} origin fetches per fragment ({})",
            want,
            if coordinated { "coordinator" } else { "per isolate" }
        );
    }
}

#[test]
fn a_stale_burst_across_isolates_makes_one_refresh_per_fragment() {
    let ps = paths(5);
    let w = World::new(2, 2, true);
    script_all(&w.sim, &ps, 100);
    w.burst(&ps, 2);
    w.sim.run_until(w.sim.now() + 11_000);
    let slots = w.burst(&ps, 40);
    let stale = slots
        .iter()
        .filter(|s| take(s).0 == CacheStatus::Stale)
        .count();
    assert!(stale >= 200 - 10, "served stale: {stale}");
    for p in &ps {
        assert_eq!(w.sim.origin.count(p), 2, "{p}: one cold fetch, one refresh");
    }
    // And both isolates now have the refreshed copy.
    let again = w.burst(&ps, 2);
    assert!(again.iter().all(|s| take(s).1.unwrap() == "v2"));
}

#[test]
fn an_unreachable_coordinator_degrades_to_one_fetch_per_isolate() {
    let ps = paths(5);
    let w = World::new(3, 2, true);
    w.sim.coordinator.unavailable.set(true);
    script_all(&w.sim, &ps, 200);
    let slots = w.burst(&ps, 40);
    assert!(slots.iter().all(|s| take(s).1.is_ok()), "every load served");
    for p in &ps {
        assert_eq!(w.sim.origin.count(p), 2, "{p}");
    }
    assert!(w.sim.log.contains("fetching directly"));
}

#[test]
fn an_early_refresh_in_one_isolate_is_answered_from_another_isolates_fresher_copy() {
    let w = World::new(4, 2, true);
    w.sim.origin.script("/f/x", Script::ok("v{{serial}}", 50));
    let (_, first) = take(&w.burst(&["/f/x".to_owned()], 1)[0]);
    assert_eq!(first.unwrap(), "v1");
    // Isolate 0 goes stale and refreshes through the coordinator.
    w.sim.run_until(w.sim.now() + 11_000);
    w.load(0, "/f/x");
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/x"), 2);
    // Isolate 1 only read the old copy from the store before: it now asks
    // to refresh too, and is answered with the copy isolate 0 fetched.
    let loads = w.sim.coordinator.loads.get();
    let s = w.load(1, "/f/x");
    w.sim.run();
    let first = take(&s);
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/x"), 2, "no second refresh");
    assert!(w.sim.coordinator.loads.get() <= loads + 1);
    let s = w.load(1, "/f/x");
    w.sim.run();
    assert_eq!(take(&s).1.unwrap(), "v2", "after {first:?}");
}

/// The outage the issue describes: 20 stale fragments, 20 requests a second
/// each, the origin failing for 30 s (500, hang, reset in turn), then
/// healthy again.
fn outage(isolates: usize, coordinated: bool) -> (usize, u64) {
    let ps = paths(20);
    let w = World::new(5, isolates, coordinated);
    script_all(&w.sim, &ps, 20);
    w.burst(&ps, isolates);
    w.sim.run_until(w.sim.now() + 11_000);
    let before = w.sim.origin.requests().len();
    let start = w.sim.now();
    let heal = start + 30_000;
    let mut t = start;
    let mut served = 0;
    let mut failed = 0;
    let mut recovered_at = None;
    while t < heal + 5_000 {
        let phase = t.saturating_sub(start) / 10_000;
        for p in &ps {
            let script = match (t >= heal, phase) {
                (true, _) => Script::ok("fresh{{serial}}", 20),
                (false, 0) => Script::status(500, 20),
                (false, 1) => Script::Hang,
                (false, _) => Script::Reset { latency_ms: 20 },
            };
            w.sim.origin.script(p, script);
        }
        let slots: Vec<_> = (0..isolates)
            .flat_map(|i| ps.iter().map(move |p| (i, p)))
            .map(|(i, p)| w.load(i, p))
            .collect();
        t += 50;
        w.sim.run_until(t);
        let mut all_fresh = t > heal;
        for s in &slots {
            match s.borrow_mut().take() {
                Some((_, Ok(body))) => {
                    served += 1;
                    all_fresh &= body.starts_with("fresh");
                }
                Some((_, Err(_))) => failed += 1,
                None => all_fresh = false,
            }
        }
        if all_fresh && recovered_at.is_none() {
            recovered_at = Some(t - heal);
        }
    }
    w.sim.run();
    assert_eq!(failed, 0, "every page served (stale during the outage)");
    assert!(served > 0);
    let during: usize = w.sim.origin.requests().iter().skip(before).count();
    (during, recovered_at.expect("fresh content came back"))
}

#[test]
fn an_outage_is_probed_about_once_a_second_and_recovery_takes_under_two_seconds() {
    for (isolates, coordinated) in [(1, false), (2, false), (2, true)] {
        let (requests, recovery_ms) = outage(isolates, coordinated);
        println!(
            "30 s outage, 20 stale fragments x 20 req/s, {isolates} isolate(s), coordinator {coordinated}: \
             {requests} origin requests in 35 s (outage + recovery), fresh again {recovery_ms} ms after healing"
        );
        let per_isolate_bound = if coordinated { 1 } else { isolates };
        // Opening takes a few failures per key at first, then about one
        // probe a second (jittered: 0.5 to 1 s) per breaker, plus the
        // refreshes of all 20 keys after healing.
        assert!(
            requests <= per_isolate_bound * (20 + 3 + 35 * 2) + 20 * isolates,
            "{requests} origin requests"
        );
        assert!(recovery_ms <= 2_000, "recovered after {recovery_ms} ms");
    }
}
