//! Deterministic simulations of bursts, expiry and origin failures, on the
//! virtual-time executor in `fragcache_core::testing`. Each scenario runs
//! the real loader and page assembler against fakes of every port.

use std::rc::Rc;

use fragcache_core::cache::{CacheStatus, EntryMeta, Freshness};
use fragcache_core::loader::{LoadError, Shared};
use fragcache_core::testing::{self, take, Script, Site, Slot, ORIGIN};
use fragcache_core::url::Url;

const CONFIG: &str = r#"{
  "origin": "http://origin.test",
  "pages": [ { "path": "/", "soft_ttl": 10, "hard_ttl": 300 },
             { "path": "/live" } ],
  "fragments": [
    { "path": "/f/private", "private": true },
    { "path": "/f/cart", "private": true, "pass_set_cookie": true },
    { "path": "/f/fail/*", "soft_ttl": 10, "hard_ttl": 300, "cold": "fail", "retry_after": 7 },
    { "path": "/f/neg", "soft_ttl": 10, "hard_ttl": 300, "negative_ttl": 5 },
    { "path": "/v/*", "soft_ttl": 60, "hard_ttl": 300, "vary": { "headers": ["accept-language"], "cookies": ["currency"] } },
    { "path": "/cc/*", "soft_ttl": 60, "hard_ttl": 300, "vary": { "country": true } },
    { "path": "/xf/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0, "xfetch_beta": 20 },
    { "path": "/jit/*", "soft_ttl": 100, "hard_ttl": 1000, "jitter": 0.1, "xfetch_beta": 0 },
    { "path": "/f/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0, "xfetch_beta": 0 }
  ]
}"#;

fn world(seed: u64) -> Site {
    Site::new(seed, CONFIG)
}

/// What these simulations add to [`Site`].
trait SimSite {
    fn seed_entry(&self, key_path: &str, body: &str, age_ms: u64, soft_ms: u64, hard_ms: u64);
    fn servable_keys(&self) -> Vec<String>;
}

impl SimSite for Site {
    fn seed_entry(&self, key_path: &str, body: &str, age_ms: u64, soft_ms: u64, hard_ms: u64) {
        let stored = self.sim.now() - age_ms;
        let meta = EntryMeta::new(stored, stored + soft_ms, stored + hard_ms, 200, 50);
        self.put(key_path, body, meta);
    }

    /// Stored keys that a read would not treat as absent (purge tombstones
    /// are expired at once).
    fn servable_keys(&self) -> Vec<String> {
        let now = self.sim.now();
        self.sim
            .store
            .keys()
            .into_iter()
            .filter(|k| {
                self.sim
                    .store
                    .entry(k)
                    .is_some_and(|e| e.meta.classify(now) != Freshness::Expired)
            })
            .collect()
    }
}

#[test]
fn cold_burst_of_1000_makes_one_origin_fetch() {
    let w = world(1);
    w.sim.origin.script("/f/a", Script::ok("A", 300));
    let start = w.sim.now();
    let slots: Vec<_> = (0..1000).map(|_| w.load("/f/a")).collect();
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/a"), 1);
    let results: Vec<_> = slots.iter().map(take).collect();
    assert!(results.iter().all(|(_, b, _)| b.as_deref() == Ok("A")));
    let misses = results.iter().filter(|r| r.0 == CacheStatus::Miss).count();
    let coalesced = results
        .iter()
        .filter(|r| r.0 == CacheStatus::Coalesced)
        .count();
    assert_eq!((misses, coalesced), (1, 999));
    // Everyone is answered within one poll interval of the origin's answer.
    assert!(
        results.iter().all(|r| r.2 <= start + 300 + 10),
        "slow followers"
    );
    assert_eq!(w.sim.store.puts.get(), 1);
    assert!(w.shared.flights.is_empty(), "flight entry removed");
}

#[test]
fn stale_burst_is_served_at_once_and_refreshed_once() {
    let w = world(2);
    w.seed_entry("/f/s", "old", 20_000, 10_000, 300_000);
    w.sim.origin.script("/f/s", Script::ok("new", 300));
    let start = w.sim.now();
    let slots: Vec<_> = (0..1000).map(|_| w.load("/f/s")).collect();
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/s"), 1);
    for s in &slots {
        let (status, body, t) = take(s);
        assert_eq!(status, CacheStatus::Stale);
        assert_eq!(body.as_deref(), Ok("old"));
        assert_eq!(t, start, "stale is served without waiting for the origin");
    }
    // The refresh landed: the next request is a fresh hit with the new body.
    let next = w.load("/f/s");
    w.sim.run();
    let (status, body, _) = take(&next);
    assert_eq!((status, body.as_deref()), (CacheStatus::Hit, Ok("new")));
}

#[test]
fn a_mix_of_keys_makes_one_fetch_per_key() {
    let w = world(3);
    for i in 0..10u64 {
        w.sim.origin.script(
            &format!("/f/k{i}"),
            Script::ok(&format!("body{i}"), 50 + i * 20),
        );
    }
    let slots: Vec<_> = (0..1000)
        .map(|i| (i % 10, w.load(&format!("/f/k{}", i % 10))))
        .collect();
    w.sim.run();
    for i in 0..10 {
        assert_eq!(w.sim.origin.count(&format!("/f/k{i}")), 1, "key {i}");
    }
    for (i, s) in slots {
        assert_eq!(take(&s).1, Ok(format!("body{i}")));
    }
}

#[test]
fn failing_refresh_keeps_stale_and_backs_off() {
    let w = world(4);
    w.seed_entry("/f/x", "good", 20_000, 10_000, 300_000);
    w.sim.origin.script("/f/x", Script::status(500, 20));
    // A request every 100 ms for 20 s while the origin is down.
    let mut served = Vec::new();
    for _ in 0..200 {
        served.push(w.load("/f/x"));
        w.sim.run_until(w.sim.now() + 100);
    }
    w.sim.run();
    for s in &served {
        let (status, body, _) = take(s);
        assert_eq!((status, body.as_deref()), (CacheStatus::Stale, Ok("good")));
    }
    let attempts = w.sim.origin.count("/f/x");
    // Back-off 1, 2, 4, 8 s (each jittered to [½d, d)) over 20 s: a handful, not 200.
    assert!((3..=9).contains(&attempts), "{attempts} refresh attempts");
    let entry = w.sim.store.entry(&w.key_of("/f/x")).unwrap();
    assert_eq!(entry.body, b"good", "a failed refresh never overwrites");
    // The origin recovers: the next allowed refresh replaces the entry.
    w.sim.origin.script("/f/x", Script::ok("better", 20));
    w.sim.run_until(w.sim.now() + 61_000);
    let after = w.load("/f/x");
    w.sim.run();
    assert_eq!(take(&after).0, CacheStatus::Stale);
    let again = w.load("/f/x");
    w.sim.run();
    assert_eq!(take(&again).1.as_deref(), Ok("better"));
}

#[test]
fn hang_and_reset_during_refresh_serve_stale() {
    for script in [Script::Hang, Script::Reset { latency_ms: 5 }] {
        let w = world(5);
        w.seed_entry("/f/h", "kept", 20_000, 10_000, 300_000);
        w.sim.origin.script("/f/h", script);
        let s = w.load("/f/h");
        w.sim.run();
        let (status, body, _) = take(&s);
        assert_eq!((status, body.as_deref()), (CacheStatus::Stale, Ok("kept")));
        assert!(w.shared.flights.is_empty());
        assert!(w.sim.log.contains("refresh failed"));
    }
}

#[test]
fn cold_fail_policy_answers_followers_at_once() {
    let w = world(6);
    w.sim.origin.script("/f/fail/a", Script::ok("F", 300));
    let start = w.sim.now();
    let slots: Vec<_> = (0..50).map(|_| w.load("/f/fail/a")).collect();
    w.sim.run();
    let results: Vec<_> = slots.iter().map(take).collect();
    assert_eq!(results[0].1.as_deref(), Ok("F"));
    for (status, body, t) in &results[1..] {
        assert_eq!(*status, CacheStatus::Error);
        assert_eq!(body, &Err(LoadError::ColdBusy { retry_after_s: 7 }));
        assert_eq!(*t, start);
    }
    assert_eq!(w.sim.origin.count("/f/fail/a"), 1);
}

#[test]
fn kv_read_errors_count_as_misses_and_still_coalesce() {
    let w = world(7);
    w.sim.store.fail_gets.set(true);
    w.sim.origin.script("/f/r", Script::ok("R", 100));
    let slots: Vec<_> = (0..100).map(|_| w.load("/f/r")).collect();
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/r"), 1);
    assert!(slots.iter().all(|s| take(s).1.as_deref() == Ok("R")));
}

#[test]
fn kv_write_failure_is_logged_not_shown() {
    let w = world(8);
    w.sim.store.fail_puts.set(true);
    w.sim.origin.script("/f/w", Script::ok("W", 10));
    let s = w.load("/f/w");
    w.sim.run();
    assert_eq!(take(&s).1.as_deref(), Ok("W"));
    assert!(w.sim.log.contains("KV write failed"));
}

#[test]
fn set_cookie_responses_are_neither_stored_nor_shared() {
    let w = world(9);
    w.sim.origin.script(
        "/f/c",
        Script::ok("session {{serial}}", 100).header("set-cookie", "sid=abc"),
    );
    let slots: Vec<_> = (0..5).map(|_| w.load("/f/c")).collect();
    w.sim.run();
    let bodies: Vec<String> = slots.iter().map(|s| take(s).1.unwrap()).collect();
    // The leader keeps its own answer; each follower fetched its own.
    assert_eq!(w.sim.origin.count("/f/c"), 5);
    let mut unique = bodies.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "{bodies:?}");
    assert!(w.sim.store.keys().is_empty());
}

#[test]
fn negative_results_are_cached_briefly() {
    let w = world(10);
    w.sim.origin.script("/f/neg", Script::status(404, 10));
    let a = w.load("/f/neg");
    w.sim.run();
    assert_eq!(take(&a).1.as_deref(), Ok("status 404"));
    let b = w.load("/f/neg");
    w.sim.run();
    assert_eq!(take(&b).0, CacheStatus::Hit);
    assert_eq!(w.sim.origin.count("/f/neg"), 1);
}

#[test]
fn private_fragments_are_per_request_with_own_cookies() {
    let w = world(11);
    w.sim.origin.script("/f/private", Script::ok("hello", 50));
    let mut slots = Vec::new();
    for user in 0..20 {
        let loader = w.loader("/", &[("cookie", &format!("session=user{user}"))]);
        let url = Url::parse(&format!("{ORIGIN}/f/private")).unwrap();
        slots.push(w.sim.spawn(async move {
            let l = loader.lookup_fragment(&url).await;
            assert!(l.private);
            l.finish().await.0
        }));
    }
    w.sim.run();
    assert!(slots.iter().all(|s| take(s) == CacheStatus::Bypass));
    let reqs = w.sim.origin.requests();
    assert_eq!(reqs.len(), 20, "never coalesced");
    for (user, r) in reqs.iter().enumerate() {
        let cookie = r.headers.get("cookie").and_then(|v| v.to_str().ok());
        assert_eq!(cookie, Some(format!("session=user{user}").as_str()));
    }
    assert!(w.sim.store.keys().is_empty());
}

#[test]
fn cacheable_fetches_never_carry_credentials() {
    let w = world(12);
    w.sim.origin.script("/f/pub", Script::ok("P", 5));
    w.sim.origin.script("/f/private", Script::ok("me", 5));
    let credentials = [
        ("cookie", "session=alice"),
        ("authorization", "Bearer alice-token"),
    ];
    for path in ["/f/pub", "/f/private"] {
        let loader = w.loader("/", &credentials);
        let url = Url::parse(&format!("{ORIGIN}{path}")).unwrap();
        w.sim
            .block_on(async move { loader.lookup_fragment(&url).await.finish().await.0 });
    }
    let reqs = w.sim.origin.requests();
    assert_eq!(reqs.len(), 2);
    let has = |r: &fragcache_core::ports::OriginRequest, name: &str, value: &str| {
        r.headers.get_all(name).iter().any(|v| v == value)
    };
    // The cacheable load: neither credential, nor any other spelling of them.
    assert_eq!(reqs[0].url.path(), "/f/pub");
    assert!(!reqs[0].headers.contains_key("cookie"));
    assert!(!reqs[0].headers.contains_key("authorization"));
    assert!(reqs[0]
        .headers
        .values()
        .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains("alice")));
    assert!(has(
        &reqs[0],
        "surrogate-capability",
        "fragcache=\"ESI/1.0\""
    ));
    // The private load gets both, so the check above could have seen them.
    assert_eq!(reqs[1].url.path(), "/f/private");
    assert!(has(&reqs[1], "cookie", "session=alice"), "{:?}", reqs[1]);
    assert!(has(&reqs[1], "authorization", "Bearer alice-token"));
}

#[test]
fn header_values_that_differ_in_case_and_spacing_share_a_key_and_an_origin_request() {
    let w = world(24);
    w.sim.origin.script("/v/n", Script::ok("v{{serial}}", 5));
    let first = w.loader("/", &[("accept-language", "EN-gb,\tfr")]);
    // Two instances of the header, odd spacing and case.
    let second = w.loader(
        "/",
        &[("accept-language", " en-GB"), ("Accept-Language", "  FR ")],
    );
    let url = Url::parse(&format!("{ORIGIN}/v/n")).unwrap();
    let u = url.clone();
    let (s1, b1) = w.sim.block_on(async move {
        let (s, r) = first.lookup_fragment(&u).await.finish().await;
        (s, r.map(|f| f.cache_key.clone()))
    });
    assert_eq!(s1, CacheStatus::Miss);
    // Past the soft TTL (60 s ± 10%): the second request is served the same entry
    // (stale, so same key) and refreshes it with its own headers.
    w.sim.run_until(w.sim.now() + 70_000);
    let (s2, b2) = w.sim.block_on(async move {
        let (s, r) = second.lookup_fragment(&url).await.finish().await;
        (s, r.map(|f| f.cache_key.clone()))
    });
    assert_eq!(s2, CacheStatus::Stale);
    assert_eq!(b1, b2);
    let key = b1.unwrap().unwrap();
    assert!(
        key.ends_with("#c.currency|h.accept-language=en-gb, fr"),
        "{key}"
    );
    let reqs = w.sim.origin.requests();
    assert_eq!(reqs.len(), 2, "one miss, one refresh");
    for r in &reqs {
        let langs: Vec<&str> = r
            .headers
            .get_all("accept-language")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(langs, ["en-gb, fr"]);
    }
    assert_eq!(reqs[0].headers, reqs[1].headers);
}

type PageResult = (u16, Vec<(String, String)>, String, u64, u64);

/// Serves `path`: (status, headers, body, time to first byte, total time).
fn page(w: &Site, path: &str, cookie: Option<&str>) -> Slot<PageResult> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let loader = w.loader(path, &headers);
    w.sim.spawn(async move {
        match testing::serve(loader).await {
            Ok(c) => (
                c.status.as_u16(),
                pairs(&c.headers),
                c.text(),
                c.first_byte_ms,
                c.total_ms,
            ),
            Err(u) => (0, Vec::new(), u.to_string(), 0, 0),
        }
    })
}

/// Headers as (name, value) pairs, for terse assertions.
fn pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn page_assembles_in_order_with_private_cache_control() {
    let w = world(13);
    w.sim.origin.script(
        "/",
        Script::ok(
            r#"<h1><esi:include src="/f/a"/></h1><p><esi:include src="/f/private"/></p><esi:include src="/f/b"/>"#,
            20,
        ),
    );
    w.sim.origin.script("/f/a", Script::ok("A", 300));
    w.sim.origin.script("/f/b", Script::ok("B", 10));
    w.sim.origin.script("/f/private", Script::ok("me", 50));
    let p = page(&w, "/", Some("session=x"));
    w.sim.run();
    let (status, headers, body, _, _) = take(&p);
    assert_eq!(status, 200);
    assert_eq!(body, "<h1>A</h1><p>me</p>B");
    assert_eq!(header(&headers, "cache-control"), Some("private, no-store"));
    let x = header(&headers, "x-fragcache").unwrap();
    assert!(
        x.contains("shell=miss") && x.contains("/f/a=miss") && x.contains("/f/private=bypass"),
        "{x}"
    );
    // Second load: every cacheable part is a hit, the private one fetched again.
    let p2 = page(&w, "/", Some("session=x"));
    w.sim.run();
    let (_, headers, body, _, _) = take(&p2);
    assert_eq!(body, "<h1>A</h1><p>me</p>B");
    let x = header(&headers, "x-fragcache").unwrap();
    assert!(
        x.contains("shell=hit") && x.contains("/f/a=hit") && x.contains("/f/b=hit"),
        "{x}"
    );
    assert_eq!(w.sim.origin.count("/f/a"), 1);
    assert_eq!(w.sim.origin.count("/f/private"), 2);
}

#[test]
fn first_byte_does_not_wait_for_a_slow_fragment_near_the_end() {
    let w = world(14);
    w.sim.origin.script(
        "/live",
        Script::ok(r#"<head>x</head><esi:include src="/f/slow"/>"#, 0),
    );
    w.sim.origin.script("/f/slow", Script::ok("S", 2_000));
    let p = page(&w, "/live", None);
    w.sim.run();
    let (_, _, body, ttfb, total) = take(&p);
    assert_eq!(body, "<head>x</head>S");
    assert_eq!(ttfb, 0);
    assert!(total >= 2_000);
}

#[test]
fn cold_page_time_is_the_slowest_fragment_not_the_sum() {
    // Six connections at once per request: six 100 ms fragments take one
    // round, ten take two (the platform's limit), never ten.
    for (n, rounds) in [(6usize, 1u64), (10, 2)] {
        let w = world(15);
        let shell: String = (0..n)
            .map(|i| format!("<esi:include src=\"/f/p{i}\"/>"))
            .collect();
        w.sim.origin.script("/live", Script::ok(&shell, 0));
        for i in 0..n {
            w.sim
                .origin
                .script(&format!("/f/p{i}"), Script::ok(&i.to_string(), 100));
        }
        let p = page(&w, "/live", None);
        w.sim.run();
        let (_, _, body, _, total) = take(&p);
        let want: String = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(body, want);
        assert!(
            total <= rounds * 100 + 2 * n as u64,
            "took {total} ms for {n} 100 ms fragments"
        );
    }
}

#[test]
fn includes_past_six_connections_queue_in_document_order() {
    let w = world(16);
    let shell: String = (0..10)
        .map(|i| format!("<p><esi:include src=\"/f/q{i}\"/></p>"))
        .collect();
    w.sim.origin.script("/live", Script::ok(&shell, 0));
    for i in 0..10 {
        // Later fragments are faster: without the queue they would finish first.
        let ms = 300 - 20 * i as u64;
        w.sim
            .origin
            .script(&format!("/f/q{i}"), Script::ok(&i.to_string(), ms));
    }
    let start = w.sim.now();
    let p = page(&w, "/live", None);
    w.sim.run_until(start + 50);
    // The fragment paths the origin was asked for, in order.
    let asked = || -> Vec<String> {
        w.sim
            .origin
            .requests()
            .iter()
            .map(|r| r.url.path().to_owned())
            .filter(|p| p.starts_with("/f/"))
            .collect()
    };
    assert_eq!(
        asked(),
        ["/f/q0", "/f/q1", "/f/q2", "/f/q3", "/f/q4", "/f/q5"],
        "six at once, the first six in the page"
    );
    w.sim.run();
    let want: Vec<String> = (0..10).map(|i| format!("/f/q{i}")).collect();
    assert_eq!(
        asked(),
        want,
        "the rest in document order as connections free up"
    );
    let (_, _, body, _, _) = take(&p);
    assert_eq!(body.matches("<p>").count(), 10);
}

#[test]
fn failed_first_include_fails_the_page_with_retry_after_on_cold_fail_routes() {
    let w = world(16);
    w.sim.origin.script(
        "/live",
        Script::ok(r#"<esi:include src="/f/fail/b"/>tail"#, 0),
    );
    w.sim.origin.script("/f/fail/b", Script::ok("B", 300));
    let slots: Vec<_> = (0..3).map(|_| page(&w, "/live", None)).collect();
    w.sim.run();
    let results: Vec<_> = slots.iter().map(take).collect();
    assert_eq!(results[0].0, 200);
    assert_eq!(results[0].2, "Btail");
    for (status, headers, _, _, _) in &results[1..] {
        assert_eq!(*status, 503);
        assert_eq!(header(headers, "retry-after"), Some("7"));
    }
}

#[test]
fn set_cookie_of_a_private_fragment_reaches_the_client_only_when_configured() {
    let w = world(17);
    w.sim.origin.script(
        "/live",
        Script::ok(
            r#"<esi:include src="/f/private"/>|<esi:include src="/f/cart"/>"#,
            0,
        ),
    );
    w.sim.origin.script(
        "/f/private",
        Script::ok("p", 5).header("set-cookie", "quiet=1"),
    );
    w.sim.origin.script(
        "/f/cart",
        Script::ok("c", 30).header("set-cookie", "cart=42"),
    );
    let p = page(&w, "/live", Some("session=s"));
    w.sim.run();
    let (status, headers, body, ttfb, _) = take(&p);
    assert_eq!((status, body.as_str()), (200, "p|c"));
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, vec!["cart=42"]);
    assert!(ttfb >= 30, "headers waited for the cart fragment");
    assert_eq!(header(&headers, "cache-control"), Some("private, no-store"));
}

#[test]
fn xfetch_refreshes_popular_keys_before_they_go_stale() {
    let w = world(18);
    w.sim.origin.script("/xf/a", Script::ok("v{{serial}}", 100));
    let first = w.load("/xf/a");
    w.sim.run();
    assert_eq!(take(&first).1.as_deref(), Ok("v1"));
    // One request per 100 ms; with Δ = 100 ms and β = 20 the chance of an
    // early refresh grows towards the end of the soft TTL, so the key is
    // renewed before anyone reads it stale.
    let mut statuses = Vec::new();
    for _ in 0..99 {
        w.sim.run_until(w.sim.now() + 100);
        let s = w.load("/xf/a");
        w.sim.run_until(w.sim.now());
        statuses.push(s);
    }
    w.sim.run();
    let statuses: Vec<CacheStatus> = statuses.iter().map(|s| take(s).0).collect();
    assert!(statuses.contains(&CacheStatus::Refresh), "{statuses:?}");
    assert!(!statuses.contains(&CacheStatus::Stale), "{statuses:?}");
    // Early refreshes are single-flight too: a handful, not one per request.
    let fetches = w.sim.origin.count("/xf/a");
    assert!((2..=10).contains(&fetches), "{fetches} fetches");
}

#[test]
fn jitter_spreads_the_expiry_of_fragments_stored_together() {
    let w = world(19);
    let slots: Vec<_> = (0..50)
        .map(|i| {
            w.sim
                .origin
                .script(&format!("/jit/{i}"), Script::ok("x", 10));
            w.load(&format!("/jit/{i}"))
        })
        .collect();
    w.sim.run();
    drop(slots);
    let mut fresh_until: Vec<u64> = (0..50)
        .map(|i| {
            w.sim
                .store
                .entry(&w.key_of(&format!("/jit/{i}")))
                .expect("stored")
                .meta
                .fresh_until
        })
        .collect();
    fresh_until.sort_unstable();
    fresh_until.dedup();
    assert!(
        fresh_until.len() > 40,
        "expiries not spread: {}",
        fresh_until.len()
    );
    let (lo, hi) = (fresh_until[0], fresh_until[fresh_until.len() - 1]);
    let stored = w.sim.now() - 10;
    assert!(
        lo >= stored + 90_000 && hi <= stored + 110_000,
        "outside ±10%"
    );
}

#[test]
fn a_refresh_the_origin_now_marks_private_stops_serving_the_stored_copy() {
    let w = world(20);
    w.seed_entry("/f/turned", "public copy", 20_000, 10_000, 300_000);
    w.sim.origin.script(
        "/f/turned",
        Script::ok("for you", 10).header("cache-control", "private"),
    );
    let first = w.load("/f/turned");
    w.sim.run();
    assert_eq!(
        take(&first).1.as_deref(),
        Ok("public copy"),
        "served stale once"
    );
    w.sim.run_until(w.sim.now() + 2_000);
    let next = w.load("/f/turned");
    w.sim.run();
    let (status, body, _) = take(&next);
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Bypass, Ok("for you"))
    );
    let entry = w
        .sim
        .store
        .entry(&w.key_of("/f/turned"))
        .expect("tombstone");
    assert!(entry.body.is_empty());
}

#[test]
fn purge_removes_every_variant_of_a_path_and_nothing_else() {
    let w = world(21);
    for p in ["/f/p1?b=2&a=1", "/f/p1?x=1", "/f/p1", "/f/p10", "/f/other"] {
        w.sim.origin.script(p, Script::ok(p, 5));
        let s = w.load(p);
        w.sim.run();
        assert!(take(&s).1.is_ok());
    }
    assert_eq!(w.sim.store.keys().len(), 5);
    let loader = w.loader("/", &[]);
    let report = w.sim.block_on(async move {
        fragcache_core::purge::purge(&loader, &["/f/p1".to_owned()]).await
    });
    assert_eq!(report.deleted.len(), 3, "{report:?}");
    assert!(!report.truncated);
    let left = w.servable_keys();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|k| k.ends_with("/f/p10")));
    // The isolate's memory forgot them too: the next request is a miss.
    let again = w.load("/f/p1");
    w.sim.run();
    assert_eq!(take(&again).0, CacheStatus::Miss);
    // A trailing * purges the whole prefix.
    let loader = w.loader("/", &[]);
    let report = w
        .sim
        .block_on(async move { fragcache_core::purge::purge(&loader, &["/f/*".to_owned()]).await });
    // The two live entries, and the three tombstones again (a listing does
    // not tell them apart).
    assert_eq!(report.deleted.len(), 5);
    assert!(w.servable_keys().is_empty());
}

#[test]
fn a_redirecting_page_shell_keeps_its_location_and_cookies() {
    let w = world(22);
    w.sim.origin.script(
        "/live",
        Script::status(302, 0)
            .header("location", "/signed-in")
            .header("set-cookie", "session=new"),
    );
    let p = page(&w, "/live", None);
    w.sim.run();
    let (status, headers, _, _, _) = take(&p);
    assert_eq!(status, 302);
    assert_eq!(header(&headers, "location"), Some("/signed-in"));
    assert_eq!(header(&headers, "set-cookie"), Some("session=new"));
}

#[test]
fn pages_built_from_varying_fragments_say_so() {
    let w = world(23);
    w.sim.origin.script(
        "/live",
        Script::ok(r#"<p><esi:include src="/v/a"/></p>"#, 0)
            .header("cache-control", "public, max-age=60"),
    );
    w.sim.origin.script("/v/a", Script::ok("A", 5));
    let warm = page(&w, "/live", None);
    w.sim.run();
    assert_eq!(
        header(&take(&warm).1, "cache-control"),
        Some("private, no-store"),
        "cold: unknown yet"
    );
    let p = page(&w, "/live", None);
    w.sim.run();
    let (_, headers, body, _, _) = take(&p);
    assert_eq!(body, "<p>A</p>");
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=60")
    );
    assert_eq!(header(&headers, "vary"), Some("accept-language, cookie"));

    // Varying on the country cannot be told to a shared cache: private.
    w.sim.origin.script(
        "/live",
        Script::ok(r#"<p><esi:include src="/cc/a"/></p>"#, 0)
            .header("cache-control", "public, max-age=60"),
    );
    w.sim.origin.script("/cc/a", Script::ok("C", 5));
    for _ in 0..2 {
        let p = page(&w, "/live", None);
        w.sim.run();
        assert_eq!(
            header(&take(&p).1, "cache-control"),
            Some("private, no-store")
        );
    }
}

fn purge(w: &Site, shared: &Rc<Shared>, paths: &[&str]) -> fragcache_core::purge::PurgeReport {
    let loader = testing::loader(w.sim.ports(), shared, &w.config, "/", &[]);
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    // Runs the purge without letting virtual time pass (or anything else
    // that is waiting on a timer finish).
    let slot = w
        .sim
        .spawn(async move { fragcache_core::purge::purge(&loader, &paths).await });
    w.sim.run_until(w.sim.now());
    take(&slot)
}

/// Whether the store holds a servable copy of `path` with `body`.
fn stored_body(w: &Site, path: &str) -> Option<String> {
    let now = w.sim.now();
    w.sim
        .store
        .entry(&w.key_of(path))
        .filter(|e| e.meta.classify(now) != Freshness::Expired)
        .map(|e| String::from_utf8_lossy(&e.body).into_owned())
}

/// A stale entry at `path` whose refresh (of "before purge", 1 s at the
/// origin) is half-way: the stale copy was served, the fetch is out.
fn refresh_in_flight(w: &Site, path: &str) -> u64 {
    w.seed_entry(path, "old", 20_000, 10_000, 300_000);
    w.sim.origin.script(path, Script::ok("before purge", 1_000));
    let t0 = w.sim.now();
    let stale = w.load(path);
    w.sim.run_until(t0 + 500);
    assert_eq!(take(&stale).1.as_deref(), Ok("old"));
    t0
}

#[test]
fn a_purge_during_a_refresh_keeps_the_old_content_out() {
    let w = world(25);
    let _ = refresh_in_flight(&w, "/f/pr");
    assert_eq!(w.sim.origin.count("/f/pr"), 1, "refresh in flight");
    // The content changes at the origin and is purged mid-refresh.
    w.sim.origin.script("/f/pr", Script::ok("after purge", 100));
    let report = purge(&w, &w.shared, &["/f/pr"]);
    assert_eq!(report.deleted.len(), 1);
    // A request during the refresh gets neither the old entry nor the
    // refresh's pre-purge answer.
    let during = w.load("/f/pr");
    w.sim.run();
    let (_, body, _) = take(&during);
    assert_eq!(body.as_deref(), Ok("after purge"));
    assert_eq!(stored_body(&w, "/f/pr"), None, "nothing written back");
    assert!(w.sim.log.contains("purged while being fetched"));
    // The next request fetches fresh content, which is stored.
    let next = w.load("/f/pr");
    w.sim.run();
    let (status, body, _) = take(&next);
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Miss, Ok("after purge"))
    );
    assert_eq!(stored_body(&w, "/f/pr").as_deref(), Some("after purge"));
    let again = w.load("/f/pr");
    w.sim.run();
    assert_eq!(take(&again).0, CacheStatus::Hit);
}

#[test]
fn a_purge_in_the_same_millisecond_as_the_refresh_start_still_wins() {
    // The tombstone's stored_at equals the refresh's start: only this
    // isolate's purge record can tell that the purge came after.
    let w = world(26);
    w.seed_entry("/f/ms", "old", 20_000, 10_000, 300_000);
    w.sim
        .origin
        .script("/f/ms", Script::ok("before purge", 100));
    let t0 = w.sim.now();
    let stale = w.load("/f/ms");
    w.sim.run_until(t0);
    assert_eq!(take(&stale).1.as_deref(), Ok("old"));
    assert_eq!(w.sim.origin.count("/f/ms"), 1);
    purge(&w, &w.shared, &["/f/ms"]);
    assert_eq!(w.sim.now(), t0);
    w.sim.run();
    assert_eq!(stored_body(&w, "/f/ms"), None);
    w.sim.origin.script("/f/ms", Script::ok("after purge", 10));
    let next = w.load("/f/ms");
    w.sim.run();
    assert_eq!(take(&next).1.as_deref(), Ok("after purge"));
}

#[test]
fn a_purge_racing_a_cold_miss() {
    let w = world(27);
    w.sim
        .origin
        .script("/f/cold", Script::ok("before purge", 1_000));
    let t0 = w.sim.now();
    let leader = w.load("/f/cold");
    let early_follower = w.load("/f/cold");
    w.sim.run_until(t0 + 500);
    w.sim
        .origin
        .script("/f/cold", Script::ok("after purge", 100));
    purge(&w, &w.shared, &["/f/cold"]);
    let late_follower = w.load("/f/cold");
    w.sim.run();
    // The leader asked before the purge and may have what it fetched;
    // nobody else gets it, and it is not stored.
    let (status, body, _) = take(&leader);
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Bypass, Ok("before purge"))
    );
    for f in [early_follower, late_follower] {
        let (status, body, _) = take(&f);
        assert_eq!(
            (status, body.as_deref()),
            (CacheStatus::Bypass, Ok("after purge"))
        );
    }
    assert_eq!(stored_body(&w, "/f/cold"), None);
    let next = w.load("/f/cold");
    w.sim.run();
    let (status, body, _) = take(&next);
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Miss, Ok("after purge"))
    );
    assert_eq!(stored_body(&w, "/f/cold").as_deref(), Some("after purge"));
}

#[test]
fn a_refresh_in_another_isolate_does_not_write_over_the_tombstone() {
    let w = world(28);
    let t0 = refresh_in_flight(&w, "/f/iso");
    // The purge request lands on another isolate.
    let other = Shared::new();
    let report = purge(&w, &other, &["/f/iso"]);
    assert_eq!(report.deleted, [w.key_of("/f/iso")]);
    w.sim.run();
    assert_eq!(w.sim.origin.count("/f/iso"), 1);
    assert_eq!(stored_body(&w, "/f/iso"), None, "the tombstone stays");
    let tombstone = w.sim.store.entry(&w.key_of("/f/iso")).unwrap();
    assert!(tombstone.body.is_empty());
    assert_eq!(tombstone.meta.stored_at, t0 + 500);
}

#[test]
fn purge_reaches_paths_that_keys_escape_and_reports_truncation() {
    let w = world(29);
    let paths = [
        "/f/a%20b|c",
        "/f/a%20b|c?x=1",
        "/f/%c3%a9t%C3%A9",
        "/f/100%25",
        "/f/x%7Cy",
    ];
    for p in paths {
        w.sim.origin.script(p, Script::ok(p, 5));
        let s = w.load(p);
        w.sim.run();
        assert!(take(&s).1.is_ok(), "{p}");
    }
    assert_eq!(w.servable_keys().len(), 5);
    // Paths as the purge endpoint hands them over: percent-decoded, then
    // encoded again as a URL path must be. A character the include spelt
    // encoded without need (`%7C` for `|`) is purged by encoding it twice.
    let decoded = fragcache_core::purge::paths_from_query(Some(
        "path=/f/a%20b%7Cc&path=/f/%C3%A9t%C3%A9&path=/f/100%2525&path=/f/x%257Cy",
    ))
    .unwrap();
    assert_eq!(decoded, ["/f/a b|c", "/f/été", "/f/100%25", "/f/x%7Cy"]);
    let decoded: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let report = purge(&w, &w.shared, &decoded);
    assert_eq!(report.deleted.len(), 5, "{report:?}");
    assert!(w.servable_keys().is_empty());
    assert!(!report.truncated);

    // A listing cut short says so.
    for i in 0..3 {
        w.seed_entry(&format!("/f/t{i}"), "x", 0, 10_000, 300_000);
    }
    w.sim.store.list_limit.set(2);
    let report = purge(&w, &w.shared, &["/f/t*"]);
    assert!(report.truncated, "{report:?}");
    assert!(report.to_json().contains("\"truncated\":true"));
    assert_eq!(report.deleted.len(), 2);
}
