//! Cache tags, purge by tag, soft purge and purges reaching other isolates,
//! simulated on a virtual clock: tags parsed, stored, indexed and kept from
//! clients; a tag purge removes exactly the tagged entries, every variant;
//! a soft purge serves the old copy once and refreshes it with one origin
//! fetch; a second isolate (its own `Shared` over the same store) applies a
//! purge within `purge.check_interval_ms`, through KV or the coordinator,
//! and KV lag cannot bring a purged copy back to an isolate that knows.

use std::rc::Rc;

use fragcache_core::cache::CacheStatus;
use fragcache_core::loader::Shared;
use fragcache_core::purge::{purge_request, PurgeReport, PurgeRequest, KV_LOG_KEY};
use fragcache_core::tags::index_key;
use fragcache_core::testing::{self, take, Loaded, Script, Site, ORIGIN, SERIAL};
use fragcache_core::url::Url;

/// The shared purge log's check interval in these worlds.
const INTERVAL_MS: u64 = 2_000;

fn world(seed: u64) -> Site {
    Site::new(
        seed,
        &format!(
            r#"{{
              "origin": "{ORIGIN}",
              "purge": {{ "check_interval_ms": {INTERVAL_MS} }},
              "pages": [ {{ "path": "/live" }} ],
              "fragments": [
                {{ "path": "/t/*", "soft_ttl": 900, "hard_ttl": 3600, "jitter": 0,
                   "xfetch_beta": 0, "vary": {{ "query": ["lang"] }} }}
              ]
            }}"#
        ),
    )
}

/// Loads `path` as an include of a page request `page` in isolate `shared`
/// (with the coordinator when `coord`), to the end.
fn load_in(w: &Site, shared: &Rc<Shared>, coord: bool, page: &str, path: &str) -> Loaded {
    let ports = if coord {
        w.sim.ports_with_coordinator()
    } else {
        w.sim.ports()
    };
    let loader = testing::loader(ports, shared, &w.config, page, &[]);
    let url = Url::parse(&format!("{ORIGIN}{path}")).unwrap();
    let slot = w.sim.spawn(testing::load_fragment(loader, url));
    w.sim.run();
    take(&slot)
}

fn load(w: &Site, page: &str, path: &str) -> (CacheStatus, String) {
    let (s, body, _) = load_in(w, &w.shared, false, page, path);
    (s, body.expect("loaded"))
}

fn purge_in(w: &Site, shared: &Rc<Shared>, coord: bool, req: PurgeRequest) -> PurgeReport {
    let ports = if coord {
        w.sim.ports_with_coordinator()
    } else {
        w.sim.ports()
    };
    let loader = testing::loader(ports, shared, &w.config, "/", &[]);
    w.sim
        .block_on(async move { purge_request(&loader, &req).await })
}

fn by_tag(tag: &str, soft: bool) -> PurgeRequest {
    PurgeRequest {
        tags: vec![tag.to_owned()],
        soft,
        ..PurgeRequest::default()
    }
}

#[test]
fn tags_are_parsed_stored_indexed_and_never_reach_the_client() {
    let w = world(1);
    w.sim.origin.script(
        "/t/a",
        Script::ok("A", 5)
            .header("cache-tag", "shoes, sale,")
            .header("surrogate-key", "sale  home"),
    );
    let loader = w.loader("/", &[]);
    let url = Url::parse(&format!("{ORIGIN}/t/a")).unwrap();
    let frag = w.sim.block_on(async move {
        let (_, r) = loader.lookup_fragment(&url).await.finish().await;
        r.unwrap()
    });
    assert_eq!(&frag.tags[..], ["shoes", "sale", "home"]);
    let key = w.key_of("/t/a");
    let entry = w.sim.store.entry(&key).expect("stored");
    assert!(entry.meta.tag_bytes > 0 && entry.meta.index_until > w.sim.now());
    for tag in ["shoes", "sale", "home"] {
        assert!(
            w.sim.store.entry(&index_key(tag, &key)).is_some(),
            "{tag} indexed"
        );
    }
    // Read back from KV by another isolate: the body and the tags.
    let other = Shared::new();
    let (status, body, _) = load_in(&w, &other, false, "/", "/t/a");
    assert_eq!((status, body.as_deref()), (CacheStatus::Hit, Ok("A")));
    assert_eq!(&other.recent.len(), &1);

    // A refresh with the same tags writes the entry and no index key.
    w.sim.run_until(w.sim.now() + 901_000);
    let puts = w.sim.store.puts.get();
    assert_eq!(load(&w, "/", "/t/a").0, CacheStatus::Stale);
    assert_eq!(w.sim.origin.count("/t/a"), 2);
    assert_eq!(w.sim.store.puts.get() - puts, 1, "the entry only");

    // Tags on a page shell are kept from the client.
    w.sim.origin.script(
        "/live",
        Script::ok(r#"<esi:include src="/t/a"/>"#, 1)
            .header("cache-tag", "page")
            .header("surrogate-key", "page"),
    );
    let page = w.serve("/live", &[]);
    w.sim.run();
    let page = take(&page);
    assert_eq!(page.text(), "A");
    assert!(page.headers.get("cache-tag").is_none());
    assert!(page.headers.get("surrogate-key").is_none());
}

#[test]
fn purge_by_tag_removes_every_variant_of_the_tagged_entries_and_nothing_else() {
    let w = world(2);
    w.sim.origin.script(
        "/t/a",
        Script::ok("A{{serial}}", 5).header("cache-tag", "shoes"),
    );
    w.sim
        .origin
        .script("/t/b", Script::ok("B", 5).header("surrogate-key", "hats"));
    for page in ["/?lang=en", "/?lang=de", "/"] {
        assert_eq!(load(&w, page, "/t/a").0, CacheStatus::Miss);
        assert_eq!(load(&w, page, "/t/b").0, CacheStatus::Miss);
    }
    let report = purge_in(&w, &w.shared, false, by_tag("shoes", false));
    assert_eq!(report.deleted.len(), 3, "{report:?}");
    assert!(report.deleted.iter().all(|k| k.contains("/t/a")));
    assert!(report.errors.is_empty() && !report.truncated);
    for page in ["/?lang=en", "/?lang=de", "/"] {
        let (status, body) = load(&w, page, "/t/a");
        assert_eq!(status, CacheStatus::Miss, "{page}");
        assert!(body.starts_with('A') && body != "A1", "{page}: {body}");
        assert_eq!(load(&w, page, "/t/b").0, CacheStatus::Hit, "{page}");
    }
    assert_eq!(w.sim.origin.count("/t/a"), 6);
    assert_eq!(w.sim.origin.count("/t/b"), 3);
    // A tag nobody carries purges nothing.
    let report = purge_in(&w, &w.shared, false, by_tag("nothing", false));
    assert!(report.deleted.is_empty());
}

#[test]
fn soft_purge_serves_the_old_copy_once_then_the_new_one_with_one_fetch() {
    for by_path in [false, true] {
        let w = world(3);
        w.sim.origin.script(
            "/t/s",
            Script::ok(&format!("v{SERIAL}"), 50).header("cache-tag", "s"),
        );
        assert_eq!(load(&w, "/", "/t/s"), (CacheStatus::Miss, "v1".into()));
        assert_eq!(load(&w, "/", "/t/s"), (CacheStatus::Hit, "v1".into()));
        let req = if by_path {
            PurgeRequest {
                paths: vec!["/t/s".into()],
                soft: true,
                ..PurgeRequest::default()
            }
        } else {
            by_tag("s", true)
        };
        let report = purge_in(&w, &w.shared, false, req);
        assert_eq!(report.deleted.len(), 1, "{report:?}");
        assert!(report.soft);
        // KV keeps the body; the copy is stale, not gone.
        let entry = w.sim.store.entry(&w.key_of("/t/s")).unwrap();
        assert!(String::from_utf8_lossy(&entry.body).ends_with("v1"));
        assert!(entry.meta.fresh_until <= w.sim.now());
        assert!(entry.meta.stale_until > w.sim.now() + 3_000_000);
        assert_eq!(load(&w, "/", "/t/s"), (CacheStatus::Stale, "v1".into()));
        assert_eq!(load(&w, "/", "/t/s"), (CacheStatus::Hit, "v2".into()));
        assert_eq!(w.sim.origin.count("/t/s"), 2, "one refresh");
    }
}

#[test]
fn a_second_isolate_applies_a_purge_within_the_check_interval() {
    // Without the coordinator the log is in KV; with it, in its object.
    for coord in [false, true] {
        for soft in [false, true] {
            let w = world(4);
            w.sim.origin.script(
                "/t/x",
                Script::ok(&format!("x{SERIAL}"), 10).header("cache-tag", "x"),
            );
            let a = Shared::new();
            let b = Shared::new();
            let (s, body, _) = load_in(&w, &b, coord, "/", "/t/x");
            assert_eq!((s, body.as_deref()), (CacheStatus::Miss, Ok("x1")));
            let purged_at = w.sim.now();
            let report = purge_in(&w, &a, coord, by_tag("x", soft));
            assert_eq!(report.deleted.len(), 1, "{report:?}");
            assert!(report.errors.is_empty(), "{report:?}");
            // Isolate b serves its memory copy until its next read of the log
            // is due and done, then applies the purge.
            let mut served_new_at = None;
            let mut stale_served = 0;
            for _ in 0..100 {
                w.sim.run_until(w.sim.now() + 100);
                let (s, body, _) = load_in(&w, &b, coord, "/", "/t/x");
                match (s, body.unwrap().as_str()) {
                    (CacheStatus::Hit, "x1") => {}
                    (CacheStatus::Stale, "x1") if soft => stale_served += 1,
                    (CacheStatus::Miss | CacheStatus::Hit, "x2") => {
                        served_new_at = Some(w.sim.now());
                        break;
                    }
                    other => panic!("coord {coord} soft {soft}: {other:?}"),
                }
            }
            let took = served_new_at.expect("the purge reached isolate b") - purged_at;
            println!(
                "coord {coord} soft {soft}: isolate b served new content {took} ms after the purge"
            );
            assert!(took <= INTERVAL_MS + 200, "{took} ms");
            assert_eq!(stale_served, usize::from(soft), "soft: old copy once");
            assert_eq!(w.sim.origin.count("/t/x"), 2, "one fetch after the purge");
            if coord {
                assert!(w.sim.coordinator.log_reads.get() >= 2);
                assert_eq!(w.sim.store.log_gets.get(), 0);
            } else {
                assert!(w.sim.store.entry(KV_LOG_KEY).is_some());
            }
        }
    }
}

#[test]
fn warm_pages_read_nothing_and_the_log_once_per_interval() {
    let w = world(5);
    w.sim.origin.script("/t/w", Script::ok("W", 1));
    load(&w, "/", "/t/w");
    let (gets, log_gets) = (w.sim.store.gets.get(), w.sim.store.log_gets.get());
    assert_eq!(log_gets, 1, "the isolate's first request reads the log");
    // 100 warm requests over 10 s.
    for _ in 0..100 {
        w.sim.run_until(w.sim.now() + 100);
        assert_eq!(load(&w, "/", "/t/w").0, CacheStatus::Hit);
    }
    assert_eq!(w.sim.store.gets.get(), gets, "no entry read");
    let reads = w.sim.store.log_gets.get() - log_gets;
    assert!((4..=5).contains(&reads), "{reads} log reads in 10 s");
}

#[test]
fn an_isolate_that_missed_the_log_window_forgets_its_memory() {
    let w = world(6);
    w.sim.origin.script("/t/g", Script::ok("G", 1));
    load(&w, "/", "/t/g");
    assert_eq!(w.shared.recent.len(), 1);
    // Idle longer than the log keeps purges (still within the soft TTL).
    w.sim
        .run_until(w.sim.now() + fragcache_core::purge::LOG_WINDOW_MS + 1_000);
    // KV answers in 5 ms: the request that starts the log read is served
    // from memory; the read then finds it cannot vouch for that memory.
    w.sim.store.latency_ms.set(5);
    let gets = w.sim.store.gets.get();
    assert_eq!(load(&w, "/", "/t/g").0, CacheStatus::Hit);
    assert_eq!(w.sim.store.gets.get(), gets, "served from memory");
    assert!(w.shared.recent.is_empty(), "forgotten by the log read");
    assert!(w.sim.log.contains("not read within its window"));
    assert_eq!(load(&w, "/", "/t/g").0, CacheStatus::Hit);
    assert_eq!(w.sim.store.gets.get(), gets + 1, "read from KV again");
}

#[test]
fn kv_lag_cannot_bring_purged_content_back_to_an_isolate_that_knows_of_the_purge() {
    for soft in [false, true] {
        let w = world(7);
        w.sim.origin.script(
            "/t/k",
            Script::ok(&format!("k{SERIAL}"), 10).header("cache-tag", "k"),
        );
        assert_eq!(load(&w, "/", "/t/k"), (CacheStatus::Miss, "k1".into()));
        let key = w.key_of("/t/k");
        let old = w.sim.store.entry(&key).expect("stored");
        w.sim.run_until(w.sim.now() + 10);
        let a = Shared::new();
        purge_in(&w, &a, false, by_tag("k", soft));
        // Isolate b has no copy in memory and learns of the purge from the
        // log; then KV, lagging, still shows it the old entry.
        let b = Shared::new();
        let (s, _, _) = load_in(&w, &b, false, "/", "/t/other");
        assert_eq!(s, CacheStatus::Miss, "b's first request reads the log");
        w.sim.store.insert(&key, old.clone(), 3600);
        let (s, body, _) = load_in(&w, &b, false, "/", "/t/k");
        let expected = if soft {
            (CacheStatus::Stale, "k1")
        } else {
            (CacheStatus::Miss, "k2")
        };
        assert_eq!((s, body.as_deref().unwrap()), expected, "soft {soft}");
        assert_eq!(w.sim.origin.count("/t/k"), 2, "soft {soft}: one fetch");
    }
}

#[test]
fn a_304_keeps_the_tags_and_changed_tags_move_the_index() {
    let w = world(8);
    w.sim.origin.script(
        "/t/e",
        Script::ok("E", 5)
            .header("etag", "\"v1\"")
            .header("cache-tag", "a,b"),
    );
    load(&w, "/", "/t/e");
    let key = w.key_of("/t/e");
    let indexed = |tag: &str| w.sim.store.entry(&index_key(tag, &key)).is_some();
    assert!(indexed("a") && indexed("b"));
    // Not modified: renewed with the stored tags, no index write.
    w.sim.run_until(w.sim.now() + 901_000);
    w.sim
        .origin
        .script("/t/e", Script::status(304, 5).header("etag", "\"v1\""));
    let puts = w.sim.store.puts.get();
    assert_eq!(load(&w, "/", "/t/e"), (CacheStatus::Stale, "E".into()));
    assert_eq!(w.sim.store.puts.get() - puts, 1, "the entry only");
    let other = Shared::new();
    let loader = testing::loader(w.sim.ports(), &other, &w.config, "/", &[]);
    let url = Url::parse(&format!("{ORIGIN}/t/e")).unwrap();
    let frag = w.sim.block_on(async move {
        let (_, r) = loader.lookup_fragment(&url).await.finish().await;
        r.unwrap()
    });
    assert_eq!(
        &frag.tags[..],
        ["a", "b"],
        "the renewed entry keeps its tags"
    );
    // New tags: the index follows.
    w.sim.run_until(w.sim.now() + 901_000);
    w.sim
        .origin
        .script("/t/e", Script::ok("E2", 5).header("surrogate-key", "b c"));
    assert_eq!(load(&w, "/", "/t/e"), (CacheStatus::Stale, "E".into()));
    assert!(!indexed("a") && indexed("b") && indexed("c"));
    let report = purge_in(&w, &w.shared, false, by_tag("a", false));
    assert!(report.deleted.is_empty(), "{report:?}");
}
