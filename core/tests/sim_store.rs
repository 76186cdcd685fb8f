//! Simulations of a slow or hung fragment store and of refreshes that fail
//! or never finish: stale copies are never lost to a refresh in flight,
//! flights have a bounded lifetime, and a hung KV call never holds a
//! request.

use std::rc::Rc;

use fragcache_core::cache::kv::{KV_READ_TIMEOUT_MS, KV_WRITE_TIMEOUT_MS};
use fragcache_core::cache::{CacheStatus, EntryMeta};
use fragcache_core::config::Config;
use fragcache_core::loader::{LoadError, Loader, Shared};
use fragcache_core::ports::StoredEntry;
use fragcache_core::request::ClientRequest;
use fragcache_core::testing::{Script, Sim, Slot};
use fragcache_core::url::Url;

const ORIGIN: &str = "http://origin.test";
/// The `/f/*` route's origin timeout.
const TIMEOUT_MS: u64 = 2_000;

fn config() -> Rc<Config> {
    Rc::new(
        Config::from_json_str(&format!(
            r#"{{
              "origin": "{ORIGIN}",
              "pages": [ {{ "path": "/" }} ],
              "fragments": [
                {{ "path": "/f/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0,
                   "xfetch_beta": 0, "timeout_ms": {TIMEOUT_MS} }}
              ]
            }}"#
        ))
        .expect("test config is valid"),
    )
}

type Loaded = (CacheStatus, Result<String, LoadError>, u64);

struct World {
    sim: Sim,
    shared: Rc<Shared>,
    config: Rc<Config>,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            sim: Sim::new(seed),
            shared: Shared::new(),
            config: config(),
        }
    }

    fn load(&self, path: &str) -> Slot<Loaded> {
        let req = ClientRequest::new(Url::parse("http://shop.test/").unwrap());
        let loader = Loader::new(
            self.sim.ports(),
            Rc::clone(&self.shared),
            Rc::clone(&self.config),
            Rc::new(req),
        );
        let url = Url::parse(&format!("{ORIGIN}{path}")).unwrap();
        let clock = self.sim.ports().clock;
        self.sim.spawn(async move {
            let lookup = loader.lookup_fragment(&url).await;
            let (status, r) = lookup.finish().await;
            let body = r.map(|f| String::from_utf8_lossy(&f.body).into_owned());
            (status, body, clock.now_ms())
        })
    }

    fn key_of(&self, path: &str) -> String {
        let url = Url::parse(&format!("{ORIGIN}{path}")).unwrap();
        let route = self.config.fragment_route(url.path()).expect("routed");
        let req = ClientRequest::new(Url::parse("http://shop.test/").unwrap());
        fragcache_core::cache::key::cache_key("f", route.id, &url, &route.vary, &req)
    }

    /// Stores `body` for `path`, `age_ms` old, stale after 10 s.
    fn seed(&self, path: &str, body: &str, age_ms: u64) {
        let stored = self.sim.now() - age_ms;
        let meta = EntryMeta::new(stored, stored + 10_000, stored + 300_000, 200, 50);
        self.sim.store.insert(
            &self.key_of(path),
            StoredEntry {
                body: body.as_bytes().to_vec(),
                meta,
            },
            3600,
        );
    }
}

fn take<T>(slot: &Slot<T>) -> T {
    slot.borrow_mut().take().expect("request answered")
}

#[test]
fn a_hung_store_counts_as_a_miss_and_a_failed_write() {
    let w = World::new(1);
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
    let w = World::new(2);
    w.sim.store.latency_ms.set(30);
    w.seed("/f/s", "stored", 1_000);
    let slots: Vec<_> = (0..100).map(|_| w.load("/f/s")).collect();
    w.sim.run();
    for s in &slots {
        let (status, body, _) = take(s);
        assert_eq!((status, body.as_deref()), (CacheStatus::Hit, Ok("stored")));
    }
    assert_eq!(w.sim.store.gets.get(), 1);
}
