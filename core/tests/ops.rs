//! Write-through and warming on the simulation: a pushed body is served
//! with no origin fetch, refused pushes store nothing, a push beats a load
//! already in flight (in the isolate and in the coordinator's object), a
//! push picks its `vary` variant from its own request, and warming loads
//! pages through the normal path and classifies them.

use std::rc::Rc;

use fragcache_core::cache::EntryMeta;
use fragcache_core::serve::Reply;
use fragcache_core::testing::{client_request, take, Script, Site, ORIGIN};
use fragcache_core::url::Url;
use fragcache_core::{loader::Loader, warm, write_through};
use http::HeaderMap;

const CONFIG: &str = r#"{
  "origin": "http://origin.test",
  "pages": [ { "path": "/p/*" } ],
  "fragments": [
    { "path": "/f/me", "private": true },
    { "path": "/f/cur", "soft_ttl": 30, "hard_ttl": 600, "jitter": 0, "vary": { "cookies": ["currency"] } },
    { "path": "/f/*", "soft_ttl": 30, "hard_ttl": 600, "jitter": 0, "xfetch_beta": 0 }
  ]
}"#;

/// A push's query, request headers and expected status.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    client_request("/", list).headers
}

/// Sends `PUT /_fragcache/fragment?{query}` with `hdrs` and `body` through
/// the write-through path, as the adapter does; returns status and JSON.
fn push(site: &Site, query: &str, hdrs: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let h = headers(hdrs);
    let url = Url::parse(&format!("https://worker.test/_fragcache/fragment?{query}")).unwrap();
    let loader = Loader::new(
        site.sim.ports(),
        Rc::clone(&site.shared),
        Rc::clone(&site.config),
        Rc::new(write_through::client_request(url, &h)),
    );
    let body = body.as_bytes().to_vec();
    let slot = site.sim.spawn(async move {
        match write_through::prepare(&loader, &h) {
            Err(reply) => *reply,
            Ok(p) if body.len() > p.max_body_bytes(&loader) => {
                write_through::too_large(p.max_body_bytes(&loader))
            }
            Ok(p) => write_through::store(&loader, &p, &h, body).await,
        }
    });
    site.sim.run();
    match take(&slot) {
        Reply::Full { status, body, .. } => (
            status.as_u16(),
            serde_json::from_slice(&body).expect("JSON answer"),
        ),
        _ => panic!("not a full reply"),
    }
}

fn page(site: &Site, path: &str, hdrs: &[(&str, &str)]) -> String {
    let slot = site.serve(path, hdrs);
    site.sim.run();
    take(&slot).text()
}

#[test]
fn a_pushed_body_is_served_without_an_origin_fetch() {
    let site = Site::new(1, CONFIG);
    site.sim.origin.script(
        "/p/home",
        Script::ok(r#"[<esi:include src="/f/nav?x=1"/>]"#, 5),
    );
    let (status, json) = push(
        &site,
        "path=/f/nav%3Fx%3D1&soft_ttl=120&hard_ttl=900",
        &[("content-type", "text/html"), ("cache-tag", "nav, menu")],
        "NAV v2",
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["keys"][0], site.key_of("/f/nav?x=1"));
    assert_eq!(json["soft_ttl"], 120);
    assert_eq!(json["hard_ttl"], 900);
    assert_eq!(json["tags"], serde_json::json!(["nav", "menu"]));
    assert_eq!(json["coordinator"], "none");
    let stored = site.sim.store.entry(&site.key_of("/f/nav?x=1")).unwrap();
    let m = &stored.meta;
    let tags = fragcache_core::tags::of_value(m.header_bytes, m.tag_bytes, &stored.body);
    assert_eq!(tags, ["nav", "menu"], "stored with its tags");
    assert!(stored.body.ends_with(b"NAV v2"));
    assert_eq!(page(&site, "/p/home", &[]), "[NAV v2]");
    assert_eq!(site.sim.origin.count("/f/nav"), 0, "no origin fetch");
    // Another isolate (fresh memory) reads it from KV: still no fetch.
    let other = Site {
        sim: site.sim,
        config: site.config,
        shared: fragcache_core::loader::Shared::new(),
    };
    assert_eq!(page(&other, "/p/home", &[]), "[NAV v2]");
    assert_eq!(other.sim.origin.count("/f/nav"), 0);
}

#[test]
fn refused_pushes_store_nothing() {
    let site = Site::new(2, CONFIG);
    let cases: &[Case] = &[
        ("", &[], 400),
        ("path=f/x", &[], 400),
        ("path=//evil.test/x", &[], 400),
        ("path=/p/home", &[], 404),
        ("path=/nowhere", &[], 404),
        ("path=/f/me", &[], 409),
        ("path=/f/x", &[("cache-control", "private")], 409),
        ("path=/f/x", &[("cache-control", "no-store")], 409),
        ("path=/f/x&soft_ttl=0", &[], 400),
        ("path=/f/x&hard_ttl=59", &[], 400),
        ("path=/f/x&soft_ttl=abc", &[], 400),
        ("path=/f/x&soft_ttl=900&hard_ttl=600", &[], 400),
        ("path=/f/x&path=/f/y", &[], 400),
        ("path=/f/x", &[("content-encoding", "gzip")], 415),
        // A route varying on a cookie: the push's own cookie picks the variant.
        ("path=/f/cur", &[("cookie", "currency=EUR")], 200),
    ];
    for (query, hdrs, want) in cases {
        let before = site.sim.store.keys().len();
        let (status, json) = push(&site, query, hdrs, "body");
        assert_eq!(status, *want, "{query}: {json}");
        if *want != 200 {
            assert!(json["error"].as_str().unwrap().starts_with("fragcache: "));
            assert_eq!(
                site.sim.store.keys().len(),
                before,
                "{query} stored something"
            );
        }
    }
    let big = "x".repeat(site.config.limits.max_fragment_bytes + 1);
    assert_eq!(push(&site, "path=/f/big", &[], &big).0, 413);
    assert!(site.sim.store.entry(&site.key_of("/f/big")).is_none());
    // KV takes one write per second per key: the second push waits.
    assert_eq!(push(&site, "path=/f/t", &[], "one").0, 200);
    let (status, _) = push(&site, "path=/f/t", &[], "two");
    assert_eq!(status, 429);
    assert_eq!(
        site.sim.store.entry(&site.key_of("/f/t")).unwrap().body,
        b"one"
    );
    site.sim.run_until(site.sim.now() + 1_000);
    assert_eq!(push(&site, "path=/f/t", &[], "three").0, 200);
}

#[test]
fn the_pushed_headers_decide_like_an_origin_response() {
    let config = CONFIG.replace(
        r#""jitter": 0, "xfetch_beta": 0"#,
        r#""jitter": 0, "xfetch_beta": 0, "honor_origin_headers": true"#,
    );
    let site = Site::new(3, &config);
    let (status, json) = push(&site, "path=/f/a", &[("cache-control", "max-age=90")], "A");
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["soft_ttl"], 90);
    // Explicit TTLs win over the headers.
    let (_, json) = push(
        &site,
        "path=/f/b&soft_ttl=5",
        &[("cache-control", "max-age=90")],
        "B",
    );
    assert_eq!(json["soft_ttl"], 5);
    assert_eq!(json["hard_ttl"], 600);
}

#[test]
fn a_push_beats_a_refresh_in_flight() {
    let site = Site::new(4, CONFIG);
    site.sim
        .origin
        .script("/p/home", Script::ok(r#"<esi:include src="/f/news"/>"#, 1));
    let now = site.sim.now();
    site.put(
        "/f/news",
        "old",
        EntryMeta::new(now - 60_000, now - 30_000, now + 500_000, 200, 5),
    );
    site.sim
        .origin
        .script("/f/news", Script::ok("fetched", 500));
    // Served stale; the refresh is out for 500 ms.
    let first = site.serve("/p/home", &[]);
    site.sim.run_until(now + 100);
    let (status, _) = push(&site, "path=/f/news", &[], "pushed");
    assert_eq!(status, 200);
    site.sim.run();
    assert_eq!(take(&first).text(), "old");
    assert_eq!(site.sim.origin.count("/f/news"), 1, "the refresh did run");
    assert_eq!(
        site.sim.store.entry(&site.key_of("/f/news")).unwrap().body,
        b"pushed",
        "the older refresh did not overwrite KV"
    );
    assert_eq!(page(&site, "/p/home", &[]), "pushed");
    assert_eq!(site.sim.origin.count("/f/news"), 1);
}

#[test]
fn a_push_beats_the_coordinators_fetch_in_flight() {
    let site = Site::new(5, CONFIG);
    site.sim
        .origin
        .script("/p/home", Script::ok(r#"<esi:include src="/f/news"/>"#, 1));
    site.sim
        .origin
        .script("/f/news", Script::ok("fetched", 500));
    let with_coord = |path: &str| {
        Loader::new(
            site.sim.ports_with_coordinator(),
            Rc::clone(&site.shared),
            Rc::clone(&site.config),
            Rc::new(client_request(path, &[])),
        )
    };
    let cold = site
        .sim
        .spawn(fragcache_core::testing::serve(with_coord("/p/home")));
    let start = site.sim.now();
    site.sim.run_until(start + 100);
    // The push, through the coordinator too.
    let h = headers(&[]);
    let url = Url::parse("https://worker.test/_fragcache/fragment?path=/f/news").unwrap();
    let loader = Loader::new(
        site.sim.ports_with_coordinator(),
        Rc::clone(&site.shared),
        Rc::clone(&site.config),
        Rc::new(write_through::client_request(url, &h)),
    );
    let pushed = site.sim.spawn(async move {
        let p = write_through::prepare(&loader, &h).ok().unwrap();
        write_through::store(&loader, &p, &h, b"pushed".to_vec()).await
    });
    site.sim.run();
    let Reply::Full { body, .. } = take(&pushed) else {
        panic!()
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["coordinator"], "updated", "{json}");
    // The request that asked before the push may get either; KV and every
    // later request get the pushed copy.
    assert!(take(&cold).is_ok());
    assert_eq!(
        site.sim.store.entry(&site.key_of("/f/news")).unwrap().body,
        b"pushed"
    );
    // A new isolate gets the pushed copy, with no further origin fetch.
    let other = fragcache_core::loader::Shared::new();
    let fresh = Loader::new(
        site.sim.ports_with_coordinator(),
        Rc::clone(&other),
        Rc::clone(&site.config),
        Rc::new(client_request("/p/home", &[])),
    );
    let again = site.sim.spawn(fragcache_core::testing::serve(fresh));
    site.sim.run();
    assert_eq!(take(&again).unwrap().text(), "pushed");
    assert_eq!(site.sim.origin.count("/f/news"), 1);
}

#[test]
fn a_push_writes_the_variant_its_own_request_selects() {
    let site = Site::new(6, CONFIG);
    site.sim
        .origin
        .script("/p/shop", Script::ok(r#"<esi:include src="/f/cur"/>"#, 1));
    site.sim.origin.script("/f/cur", Script::ok("fetched", 5));
    let (status, json) = push(
        &site,
        "path=/f/cur",
        &[("cookie", "currency=EUR; session=s")],
        "EUR price",
    );
    assert_eq!(status, 200, "{json}");
    assert!(
        json["keys"][0].as_str().unwrap().contains("c.currency=EUR"),
        "{json}"
    );
    assert_eq!(
        page(&site, "/p/shop", &[("cookie", "currency=EUR")]),
        "EUR price"
    );
    assert_eq!(site.sim.origin.count("/f/cur"), 0);
    assert_eq!(
        page(&site, "/p/shop", &[("cookie", "currency=USD")]),
        "fetched"
    );
    assert_eq!(site.sim.origin.count("/f/cur"), 1);
}

fn run_warm(site: &Site, paths: &[&str]) -> warm::Report {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    let (ports, shared, config) = (
        site.sim.ports(),
        Rc::clone(&site.shared),
        Rc::clone(&site.config),
    );
    let slot = site.sim.spawn(async move {
        let base = Url::parse(&format!("{ORIGIN}/")).unwrap();
        warm::warm(ports, shared, config, &base, &paths, 2).await
    });
    site.sim.run();
    take(&slot)
}

#[test]
fn warming_loads_pages_through_the_normal_path() {
    let site = Site::new(7, CONFIG);
    for p in ["/p/a", "/p/b", "/p/c"] {
        site.sim.origin.script(
            p,
            Script::ok(
                r#"<esi:include src="/f/shared"/><esi:include src="/f/own"/>"#,
                5,
            ),
        );
    }
    site.sim
        .origin
        .script("/p/bad", Script::ok(r#"<esi:include src="/f/broken"/>"#, 5));
    site.sim.origin.script("/f/shared", Script::ok("S", 50));
    site.sim.origin.script("/f/own", Script::ok("O", 50));
    site.sim.origin.script("/f/broken", Script::status(500, 5));
    let report = run_warm(&site, &["/p/a", "/p/b", "/p/c", "/p/bad"]);
    let outcomes: Vec<_> = report.pages.iter().map(|p| p.outcome.as_str()).collect();
    // Two at a time: /p/b joins /p/a's fetches (coalesced), /p/c comes
    // after them and finds everything fresh.
    assert_eq!(
        outcomes,
        ["warmed", "warmed", "fresh", "failed"],
        "{report:?}"
    );
    assert_eq!(report.pages[1].fragments[1].1, "coalesced");
    assert_eq!(site.sim.origin.count("/f/shared"), 1, "single flight");
    assert_eq!(site.sim.origin.count("/f/own"), 1);
    assert_eq!(report.count(warm::Outcome::Warmed), 2);
    assert_eq!(report.pages[3].status, 502);
    let a = &report.pages[0];
    assert_eq!(a.status, 200);
    assert_eq!(a.fragments[0], ("shell".to_owned(), "bypass".to_owned()));
    assert_eq!(a.fragments.len(), 3, "{a:?}");
    // Again: everything is fresh, and the origin sees only the shells.
    let report = run_warm(&site, &["/p/a", "/p/b"]);
    assert_eq!(report.count(warm::Outcome::Fresh), 2, "{report:?}");
    assert_eq!(site.sim.origin.count("/f/shared"), 1);
    assert!(report
        .summary()
        .contains("0 warmed, 2 already fresh, 0 failed"));
    // A path that is not a page fails, without touching the origin.
    let report = run_warm(&site, &["/f/shared"]);
    assert_eq!(report.pages[0].outcome, warm::Outcome::Failed);
    assert_eq!(site.sim.origin.count("/f/shared"), 1);
}

#[test]
fn the_warm_request_names_its_pages() {
    let site = Site::new(8, CONFIG);
    let c = &site.config;
    assert_eq!(
        warm::request_from_query(c, Some("path=/p/a&path=%2Fp%2Fb%3Fx%3D1&concurrency=3")),
        Ok((vec!["/p/a".to_owned(), "/p/b?x=1".to_owned()], 3))
    );
    assert!(warm::request_from_query(c, None)
        .unwrap_err()
        .contains("warm.paths"));
    assert!(warm::request_from_query(c, Some("path=/f/a"))
        .unwrap_err()
        .contains("no page route"));
    assert!(warm::request_from_query(c, Some("path=p")).is_err());
    assert!(warm::request_from_query(c, Some("path=/p/a&concurrency=0")).is_err());
    assert!(warm::request_from_query(c, Some("path=/p/a&concurrency=99")).is_err());
}
