//! The inspector, the debug bypass and the per-page record, on the
//! simulation: one page with a fresh, a stale, a cold and a private
//! fragment, checked against what the origin was asked.

use fragcache_core::cache::EntryMeta;
use fragcache_core::inspect::inspect;
use fragcache_core::record::PageRecord;
use fragcache_core::testing::{client_request, serve, take, Script, Site};
use serde_json::Value;

const CONFIG: &str = r#"{
  "origin": "http://origin.test",
  "pages": [ { "path": "/p" } ],
  "fragments": [
    { "path": "/f/me", "private": true },
    { "path": "/f/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0, "xfetch_beta": 0,
      "vary": { "cookies": ["currency"] } }
  ]
}"#;

const SHELL: &str = r#"<esi:include src="/f/fresh"/>|<esi:include src="/f/stale"/>|<esi:include src="/f/cold"/>|<esi:include src="/f/me"/>"#;

/// A site whose /f/fresh is 2 s old and /f/stale 20 s old (soft TTL 10 s).
fn site() -> Site {
    let site = Site::new(7, CONFIG);
    let origin = &site.sim.origin;
    origin.script("/p", Script::ok(SHELL, 5));
    for (path, ms) in [
        ("/f/fresh", 10),
        ("/f/stale", 10),
        ("/f/cold", 40),
        ("/f/me", 20),
    ] {
        origin.script(path, Script::ok(&format!("{path} from origin"), ms));
    }
    origin.script(
        "/f/cold",
        Script::ok("/f/cold from origin", 40).header("cache-tag", "prices, sale-7"),
    );
    let now = site.sim.now();
    for (path, age) in [("/f/fresh", 2_000), ("/f/stale", 20_000)] {
        let stored = now - age;
        let meta = EntryMeta::new(stored, stored + 10_000, stored + 300_000, 200, 10);
        site.put(path, &format!("{path} cached"), meta);
    }
    site
}

fn run_inspector(site: &Site, headers: &[(&str, &str)], accept: &str) -> (String, u16) {
    let req = fragcache_core::inspect::page_request(
        &fragcache_core::url::Url::parse(&format!(
            "http://shop.test/_fragcache/inspect?path={}",
            "%2Fp"
        ))
        .unwrap(),
        &client_request("/", headers).headers,
    )
    .unwrap();
    let loader = site.loader_for(req);
    let accept = accept.to_owned();
    let slot = site.sim.spawn(async move {
        let reply = inspect(loader, Some(&accept)).await;
        let headers = reply.headers().unwrap().clone();
        assert_eq!(headers["cache-control"], "private, no-store");
        match reply {
            fragcache_core::serve::Reply::Full { body, status, .. } => {
                (String::from_utf8(body).unwrap(), status.as_u16())
            }
            _ => panic!("the inspector answers in full"),
        }
    });
    site.sim.run();
    take(&slot)
}

#[test]
fn the_inspector_shows_every_status_with_timing_and_ttls() {
    let site = site();
    let (body, status) = run_inspector(
        &site,
        &[
            ("cookie", "session=abc"),
            ("authorization", "Bearer secret"),
        ],
        "application/json",
    );
    assert_eq!(status, 200);
    let data: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(data["page"], "/p");
    assert_eq!(data["status"], 200);
    let rows = data["rows"].as_array().unwrap();
    let by_path = |p: &str| rows.iter().find(|r| r["path"] == p).unwrap().clone();
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["bypass", "hit", "stale", "miss", "bypass"]);

    let fresh = by_path("/f/fresh");
    assert_eq!(fresh["age_s"], 2);
    assert_eq!(
        (fresh["soft_ttl_s"].as_u64(), fresh["hard_ttl_s"].as_u64()),
        (Some(10), Some(300))
    );
    assert_eq!(fresh["source"], "cache");
    assert_eq!(fresh["variant"], "c.currency", "no currency cookie");
    assert!(fresh["key"].as_str().unwrap().contains("/f/fresh"));
    assert_eq!(fresh["tags"], serde_json::json!([]));
    // Tags the origin sent with the fetched copy.
    assert_eq!(
        by_path("/f/cold")["tags"],
        serde_json::json!(["prices", "sale-7"])
    );

    let stale = by_path("/f/stale");
    assert_eq!(stale["age_s"], 20);

    let cold = by_path("/f/cold");
    assert_eq!(cold["source"], "origin fetch");
    assert!(cold["ms"].as_u64().unwrap() >= 40, "{cold}");
    assert_eq!(cold["soft_ttl_s"], 10, "the entry it just stored");
    let total = data["total_ms"].as_u64().unwrap();
    assert!(cold["start_ms"].as_u64().unwrap() + cold["ms"].as_u64().unwrap() <= total);

    let me = by_path("/f/me");
    assert_eq!(me["key"], Value::Null);
    assert_eq!(me["source"], "origin fetch");

    // The caller's cookie went to the private fragment; the token did not.
    let asked = site.sim.origin.requests();
    let private = asked.iter().find(|r| r.url.path() == "/f/me").unwrap();
    assert!(private.headers.get("cookie").is_some());
    assert!(asked
        .iter()
        .all(|r| r.headers.get("authorization").is_none()));
}

#[test]
fn the_inspector_page_is_html_with_every_value_escaped() {
    let site = site();
    let (body, _) = run_inspector(&site, &[("cookie", "currency=<b>\"x\"")], "text/html");
    assert!(body.starts_with("<!doctype html>"));
    assert_eq!(body.matches("<tr class=\"row\"").count(), 5);
    // Another currency is another variant: cold.
    for status in ["miss", "bypass"] {
        assert!(
            body.contains(&format!("data-status=\"{status}\"")),
            "{status}"
        );
    }
    assert!(!body.contains("<b>"), "a cookie value became markup");
    assert!(!body.contains("<script"));
    // The variant holds the cookie's value as it is; the page shows it as text.
    assert!(body.contains("variant c.currency=&lt;b&gt;&quot;x&quot;"));
}

#[test]
fn the_debug_bypass_reads_and_writes_no_cache() {
    let site = site();
    let keys_before = site.sim.store.keys();
    let mut req = client_request("/p", &[]);
    req.debug_bypass = true;
    let loader = site.loader_for(req);
    let probe = loader.clone();
    let slot = site.sim.spawn(serve(loader));
    site.sim.run();
    let page = take(&slot).unwrap();
    assert_eq!(
        page.text(),
        "/f/fresh from origin|/f/stale from origin|/f/cold from origin|/f/me from origin"
    );
    assert_eq!(page.headers["cache-control"], "private, no-store");
    assert!(probe
        .reports()
        .iter()
        .all(|r| r.status.as_str() == "bypass"));
    for path in ["/p", "/f/fresh", "/f/stale", "/f/cold", "/f/me"] {
        assert_eq!(site.sim.origin.count(path), 1, "{path}");
    }
    assert_eq!(site.sim.store.keys(), keys_before, "nothing stored");

    // The next ordinary request sees the cache as it was.
    let slot = site.serve("/p", &[]);
    site.sim.run();
    assert!(take(&slot)
        .text()
        .starts_with("/f/fresh cached|/f/stale cached|"));
}

#[test]
fn the_page_record_counts_what_the_origin_saw() {
    let site = site();
    let loader = site.loader("/p", &[]);
    let probe = loader.clone();
    let slot = site.sim.spawn(serve(loader));
    site.sim.run();
    let page = take(&slot).unwrap();
    let record = PageRecord::new("/p", &probe.reports(), page.first_byte_ms, page.total_ms);
    assert_eq!(
        (
            record.hit,
            record.stale,
            record.miss,
            record.bypass,
            record.error
        ),
        (1, 1, 1, 2, 0)
    );
    // The shell, the cold fragment and the private one; the stale one's
    // refresh runs in the background, not for this page.
    assert_eq!(record.origin_fetches, 3);
    let seen: usize = ["/p", "/f/cold", "/f/me"]
        .iter()
        .map(|p| site.sim.origin.count(p))
        .sum();
    assert_eq!(seen, 3);
    assert!(record.ttfb_ms <= record.total_ms);

    // Warm: the cold fragment is now a hit, and only the uncached pieces
    // reach the origin.
    let loader = site.loader("/p", &[]);
    let probe = loader.clone();
    let slot = site.sim.spawn(serve(loader));
    site.sim.run();
    let page = take(&slot).unwrap();
    let record = PageRecord::new("/p", &probe.reports(), page.first_byte_ms, page.total_ms);
    assert_eq!((record.hit, record.miss, record.origin_fetches), (3, 0, 2));
}
