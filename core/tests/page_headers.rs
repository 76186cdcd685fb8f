//! The page as an HTTP response, on the simulation: which of the shell's
//! headers reach the client, how `Vary` and `Cache-Control` are decided,
//! and that a cached shell keeps its headers across isolates (through the
//! store, not just isolate memory).

use std::rc::Rc;

use fragcache_core::config::Config;
use fragcache_core::loader::Shared;
use fragcache_core::testing::{self, take, Script, Sim};
use http::HeaderMap;

const CONFIG: &str = r#"{
  "origin": "http://origin.test",
  "pages": [ { "path": "/cached", "soft_ttl": 10, "hard_ttl": 300 },
             { "path": "/cached-bare", "soft_ttl": 10, "hard_ttl": 300 }, { "path": "/live/*" } ],
  "fragments": [
    { "path": "/f/lang", "soft_ttl": 60, "hard_ttl": 300,
      "vary": { "headers": ["accept-language"] }, "forward_headers": ["accept-language"] },
    { "path": "/f/*", "soft_ttl": 60, "hard_ttl": 300 }
  ]
}"#;

const SITE: &[(&str, &str)] = &[
    ("content-security-policy", "default-src 'self'"),
    ("strict-transport-security", "max-age=63072000"),
    ("x-frame-options", "DENY"),
    ("link", "</a.css>; rel=preload"),
    ("link", "</b.js>; rel=preload"),
    ("x-team", "checkout"),
];

fn shell(body: &str) -> Script {
    let mut s = Script::ok(body, 5)
        .header("etag", "\"v1\"")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("surrogate-control", "max-age=60")
        .header("cache-control", "public, max-age=60");
    for (n, v) in SITE {
        s = s.header(n, v);
    }
    s
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

fn serve(sim: &Sim, shared: &Rc<Shared>, path: &str, headers: &[(&str, &str)]) -> Page {
    let config = Rc::new(Config::from_json_str(CONFIG).unwrap());
    let loader = testing::loader(sim.ports(), shared, &config, path, headers);
    let path = path.to_owned();
    let slot = sim.spawn(async move {
        testing::serve(loader)
            .await
            .unwrap_or_else(|_| panic!("{path} passed through"))
    });
    sim.run();
    let c = take(&slot);
    Page {
        status: c.status.as_u16(),
        body: c.text(),
        headers: c.headers,
    }
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn assert_site_headers(h: &HeaderMap, what: &str) {
    for (n, _) in SITE {
        let want: Vec<&str> = SITE
            .iter()
            .filter(|(m, _)| m == n)
            .map(|(_, v)| *v)
            .collect();
        let got: Vec<&str> = h.get_all(*n).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(got, want, "{what}: {n}");
    }
    for dropped in ["connection", "x-hop", "keep-alive", "surrogate-control"] {
        assert!(
            h.get(dropped).is_none(),
            "{what}: {dropped} reached the client"
        );
    }
}

#[test]
fn a_cached_shell_keeps_its_headers_in_another_isolate() {
    let sim = Sim::new(1);
    sim.origin
        .script("/cached", shell(r#"<p><esi:include src="/f/a"/></p>"#));
    sim.origin.script("/f/a", Script::ok("A", 5));
    let first_isolate = Shared::new();
    let p = serve(&sim, &first_isolate, "/cached", &[]);
    assert_eq!(p.body, "<p>A</p>");
    assert_site_headers(&p.headers, "first isolate");
    // A fresh isolate has nothing in memory: the shell comes from the store.
    let other = Shared::new();
    let p = serve(&sim, &other, "/cached", &[]);
    assert_eq!(p.status, 200);
    assert_eq!(p.body, "<p>A</p>");
    let x = get(&p.headers, "x-fragcache").unwrap();
    assert!(x.starts_with("shell=hit"), "{x}");
    assert_site_headers(&p.headers, "from the store");
    assert_eq!(get(&p.headers, "cache-control"), Some("public, max-age=60"));
    assert!(
        get(&p.headers, "etag").is_none(),
        "the page is not the shell's bytes"
    );
    assert_eq!(get(&p.headers, "age"), Some("0"));
    assert_eq!(sim.origin.count("/cached"), 1);
}

#[test]
fn a_shell_without_esi_passes_with_its_validators() {
    let sim = Sim::new(2);
    sim.origin.script("/live/plain", shell("<p>plain</p>"));
    let p = serve(&sim, &Shared::new(), "/live/plain", &[]);
    assert_eq!(p.body, "<p>plain</p>");
    assert_site_headers(&p.headers, "passed through");
    assert_eq!(get(&p.headers, "etag"), Some("\"v1\""));
    assert_eq!(get(&p.headers, "cache-control"), Some("public, max-age=60"));
}

#[test]
fn vary_is_merged_once_fragments_are_known() {
    let sim = Sim::new(3);
    let shared = Shared::new();
    sim.origin.script(
        "/live/v",
        Script::ok(r#"<esi:include src="/f/lang"/>"#, 1)
            .header("vary", "Accept-Encoding")
            .header("cache-control", "public, max-age=60"),
    );
    sim.origin.script("/f/lang", Script::ok("L", 1));
    let cold = serve(&sim, &shared, "/live/v", &[("accept-language", "de")]);
    assert_eq!(
        get(&cold.headers, "cache-control"),
        Some("private, no-store"),
        "cold at header time"
    );
    let warm = serve(&sim, &shared, "/live/v", &[("accept-language", "de")]);
    assert_eq!(
        get(&warm.headers, "cache-control"),
        Some("public, max-age=60")
    );
    assert_eq!(
        get(&warm.headers, "vary"),
        Some("Accept-Encoding, accept-language")
    );
}

#[test]
fn error_replies_are_never_stored() {
    let sim = Sim::new(4);
    sim.origin.script("/live/broken", Script::status(503, 1));
    let p = serve(&sim, &Shared::new(), "/live/broken", &[]);
    assert_eq!(p.status, 502);
    assert_eq!(get(&p.headers, "cache-control"), Some("no-store"));
}

#[test]
fn a_shell_that_reads_a_cookie_is_private_and_one_that_reads_headers_varies() {
    let sim = Sim::new(5);
    let shared = Shared::new();
    let public = |body: &str| Script::ok(body, 1).header("cache-control", "public, max-age=60");
    sim.origin.script(
        "/live/vars",
        public("<esi:vars>Hi $(HTTP_COOKIE{name})</esi:vars>"),
    );
    sim.origin.script(
        "/live/choose",
        public(r#"<esi:choose><esi:when test="$(HTTP_COOKIE{tier})=='gold'">G</esi:when><esi:otherwise>S</esi:otherwise></esi:choose>"#),
    );
    sim.origin.script(
        "/live/lang",
        public(r#"<esi:choose><esi:when test="$(HTTP_ACCEPT_LANGUAGE{de})">Hallo</esi:when><esi:otherwise>Hello</esi:otherwise></esi:choose>"#),
    );
    sim.origin.script(
        "/live/query?q=x",
        public("<esi:vars>$(QUERY_STRING{q})</esi:vars>"),
    );
    sim.origin.script(
        "/live/src",
        public(r#"<esi:include src="/f/$(HTTP_USER_AGENT{os})"/>"#),
    );
    sim.origin.script("/f/WIN", Script::ok("win", 1));

    let p = serve(&sim, &shared, "/live/vars", &[("cookie", "name=ann")]);
    assert_eq!(p.body, "Hi ann");
    assert_eq!(get(&p.headers, "cache-control"), Some("private, no-store"));
    let p = serve(&sim, &shared, "/live/choose", &[("cookie", "tier=gold")]);
    assert_eq!(p.body, "G");
    assert_eq!(get(&p.headers, "cache-control"), Some("private, no-store"));

    let p = serve(&sim, &shared, "/live/lang", &[("accept-language", "de")]);
    assert_eq!(p.body, "Hallo");
    assert_eq!(get(&p.headers, "cache-control"), Some("public, max-age=60"));
    assert_eq!(get(&p.headers, "vary"), Some("accept-language"));

    // The query is part of the URL every cache keys on: nothing to add.
    let p = serve(&sim, &shared, "/live/query?q=x", &[]);
    assert_eq!(p.body, "x");
    assert_eq!(get(&p.headers, "cache-control"), Some("public, max-age=60"));
    assert!(get(&p.headers, "vary").is_none());

    // An include URL built from the User-Agent: the page varies on it.
    let ua = [("user-agent", "Mozilla/5.0 (Windows NT 10.0)")];
    serve(&sim, &shared, "/live/src", &ua);
    let p = serve(&sim, &shared, "/live/src", &ua);
    assert_eq!(p.body, "win");
    assert_eq!(get(&p.headers, "cache-control"), Some("public, max-age=60"));
    assert_eq!(get(&p.headers, "vary"), Some("user-agent"));
}

#[test]
fn a_fragment_the_origin_marks_private_is_known_private_before_headers_next_time() {
    let sim = Sim::new(6);
    let shared = Shared::new();
    sim.origin.script(
        "/live/p",
        Script::ok(r#"<p><esi:include src="/f/mine"/>"#, 1)
            .header("cache-control", "public, max-age=60"),
    );
    sim.origin.script(
        "/f/mine",
        Script::ok("M{{serial}}", 1).header("cache-control", "private"),
    );
    // First time: cold at header time (a miss), so private for that reason.
    let first = serve(&sim, &shared, "/live/p", &[]);
    assert_eq!(first.body, "<p>M1");
    assert_eq!(
        get(&first.headers, "cache-control"),
        Some("private, no-store")
    );
    let x = get(&first.headers, "x-fragcache").unwrap();
    assert!(x.contains("/f/mine=miss"), "{x}");
    // Next time the isolate knows the answer is personal: the lookup says so
    // (bypass, not a cold miss), the page is private for that reason, and
    // every request fetches its own copy.
    for n in 2..5 {
        let p = serve(&sim, &shared, "/live/p", &[]);
        assert_eq!(p.body, format!("<p>M{n}"));
        assert_eq!(get(&p.headers, "cache-control"), Some("private, no-store"));
        let x = get(&p.headers, "x-fragcache").unwrap();
        assert!(x.contains("/f/mine=bypass"), "{x}");
    }
    assert!(sim.store.keys().iter().all(|k| !k.contains("/f/mine")));
}

#[test]
fn an_open_circuit_shows_in_the_status_header_and_fails_fast() {
    let sim = Sim::new(7);
    let shared = Shared::new();
    let page = r#"<p><esi:include src="/f/d1" onerror="continue"/><esi:include src="/f/d2" onerror="continue"/><esi:include src="/f/d3" onerror="continue"/></p>"#;
    // A cached shell: after the first page it is not fetched again, so only
    // the fragments talk to the origin (every answer the origin gives,
    // a shell's included, teaches the breaker).
    sim.origin.script("/cached", Script::ok(page, 1));
    for f in ["/f/d1", "/f/d2", "/f/d3"] {
        sim.origin.script(f, Script::status(503, 1));
    }
    sim.origin.script(
        "/cached-bare",
        Script::ok(r#"<esi:include src="/f/d1"/>"#, 1),
    );
    // Cache that shell first (its include fails: a 502 for now).
    assert_eq!(serve(&sim, &shared, "/cached-bare", &[]).status, 502);
    let first = serve(&sim, &shared, "/cached", &[]);
    assert_eq!(first.body, "<p></p>");
    // Three failures in a row opened the origin's circuit: the next page's
    // includes fail at once, without reaching the origin, and say why.
    let fetched = sim.origin.count("/f/d1");
    let p = serve(&sim, &shared, "/cached", &[]);
    assert_eq!(p.body, "<p></p>");
    let x = get(&p.headers, "x-fragcache").unwrap();
    assert!(x.contains("/f/d1=error;origin=open"), "{x}");
    assert_eq!(sim.origin.count("/f/d1"), fetched, "no request while open");
    // Without a fallback the page is a 503 with Retry-After (its shell was
    // cached before the outage, so nothing reaches the origin now).
    let bare = serve(&sim, &shared, "/cached-bare", &[]);
    assert_eq!(bare.status, 503);
    assert!(get(&bare.headers, "retry-after").is_some());
}

#[test]
fn first_bytes_do_not_wait_for_kv_reads_and_unknown_means_private() {
    let sim = Sim::new(8);
    sim.origin.script(
        "/live/kv",
        Script::ok(
            r#"<h1>Shop</h1><esi:include src="/f/k1"/><esi:include src="/f/k2"/>"#,
            1,
        )
        .header("cache-control", "public, max-age=60"),
    );
    sim.origin.script("/f/k1", Script::ok("K1", 1));
    sim.origin.script("/f/k2", Script::ok("K2", 1));
    // Another isolate stored both fragments.
    serve(&sim, &Shared::new(), "/live/kv", &[]);
    serve(&sim, &Shared::new(), "/live/kv", &[]);
    // This isolate has nothing in memory, and KV answers in 40 ms.
    sim.store.latency_ms.set(40);
    let config = Rc::new(Config::from_json_str(CONFIG).unwrap());
    let loader = testing::loader(sim.ports(), &Shared::new(), &config, "/live/kv", &[]);
    let slot = sim.spawn(testing::serve(loader));
    sim.run();
    let page = take(&slot).expect("a page");
    assert_eq!(page.text(), "<h1>Shop</h1>K1K2");
    assert!(
        page.first_byte_ms < 40,
        "first bytes after {} ms: waited for KV",
        page.first_byte_ms
    );
    let headers = page.headers;
    assert_eq!(
        get(&headers, "cache-control"),
        Some("private, no-store"),
        "fragments not known yet"
    );
}

#[test]
fn kv_reads_per_page_none_when_warm_one_per_key_when_cold() {
    let sim = Sim::new(9);
    let shared = Shared::new();
    let shell: String = (0..5)
        .map(|i| format!("<p><esi:include src=\"/f/r{i}\"/></p>"))
        .collect();
    sim.origin.script("/live/reads", Script::ok(&shell, 1));
    for i in 0..5 {
        sim.origin
            .script(&format!("/f/r{i}"), Script::ok(&format!("R{i}"), 5));
    }
    let before = sim.store.gets.get();
    let cold = serve(&sim, &shared, "/live/reads", &[]);
    assert_eq!(cold.body.matches('R').count(), 5);
    let cold_reads = sim.store.gets.get() - before;
    let before = sim.store.gets.get();
    serve(&sim, &shared, "/live/reads", &[]);
    let warm_reads = sim.store.gets.get() - before;
    println!("KV reads: cold page of 5 fragments {cold_reads}, warm page {warm_reads}");
    assert!(cold_reads <= 5, "cold: {cold_reads} reads for 5 keys");
    assert_eq!(warm_reads, 0, "a warm page in a warm isolate reads nothing");
}

#[test]
fn streamed_pages_are_sent_uncompressed_complete_ones_are_not_marked() {
    let sim = Sim::new(10);
    let shared = Shared::new();
    sim.origin.script(
        "/live/slowpage",
        Script::ok(r#"<h1>x</h1><esi:include src="/f/slowfrag"/>"#, 1),
    );
    sim.origin.script("/f/slowfrag", Script::ok("S", 500));
    let streamed = serve(&sim, &shared, "/live/slowpage", &[]);
    assert_eq!(streamed.body, "<h1>x</h1>S");
    assert_eq!(get(&streamed.headers, "content-encoding"), Some("identity"));
    // Now warm: the page is complete at once and left to the runtime to compress.
    let warm = serve(&sim, &shared, "/live/slowpage", &[]);
    assert_eq!(warm.body, "<h1>x</h1>S");
    assert!(get(&warm.headers, "content-encoding").is_none());
}

#[test]
fn server_timing_claims_only_what_is_known_when_headers_leave() {
    let sim = Sim::new(11);
    let shared = Shared::new();
    sim.origin.script(
        "/live/timing",
        Script::ok(
            r#"<p><esi:include src="/f/t1"/><esi:include src="/f/t2"/></p>"#,
            7,
        ),
    );
    sim.origin.script("/f/t1", Script::ok("1", 300));
    sim.origin.script("/f/t2", Script::ok("2", 300));
    let p = serve(&sim, &shared, "/live/timing", &[]);
    let st = get(&p.headers, "server-timing").unwrap();
    assert!(st.starts_with("shell;desc=\"bypass\";dur=7, "), "{st}");
    assert!(st.contains("assemble;desc=\"2 fragments\";dur=0"), "{st}");
    assert!(!st.contains("frag0"), "no per-fragment durations: {st}");
}
