//! Conditional refresh: a background refresh of a stored copy sends its
//! validators (`If-None-Match`, `If-Modified-Since`), and a `304 Not
//! Modified` renews that copy instead of transferring the body again.
//! Simulated on the virtual-time executor in `fragcache_core::testing`.

use std::rc::Rc;

use fragcache_core::cache::{CacheStatus, EntryMeta, Freshness};
use fragcache_core::loader::LoadError;
use fragcache_core::ports::StoredEntry;
use fragcache_core::testing::{take, Script, Site, ORIGIN};
use fragcache_core::url::Url;
use http::{HeaderMap, StatusCode};

const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

type Loaded = (CacheStatus, Result<String, LoadError>);

fn world(seed: u64) -> Site {
    Site::new(
        seed,
        r#"{
          "origin": "http://origin.test",
          "pages": [ { "path": "/", "soft_ttl": 10, "hard_ttl": 300 } ],
          "fragments": [
            { "path": "/h/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0, "xfetch_beta": 0,
              "honor_origin_headers": true },
            { "path": "/f/*", "soft_ttl": 10, "hard_ttl": 300, "jitter": 0, "xfetch_beta": 0 }
          ]
        }"#,
    )
}

/// What the revalidation tests add to [`Site`].
trait Revalidation {
    fn load_now(&self, path: &str) -> Loaded;
    fn load_shell_now(&self) -> (CacheStatus, String, HeaderMap);
    fn seed_stale(&self, path: &str, body: &str, etag: Option<&str>, last_modified: Option<&str>);
    fn stored(&self, path: &str) -> StoredEntry;
    fn only_request_headers(&self, path: &str) -> HeaderMap;
}

impl Revalidation for Site {
    /// Loads `path` and runs the simulation (background work included).
    fn load_now(&self, path: &str) -> Loaded {
        let slot = self.load(path);
        self.sim.run();
        let (status, body, _) = take(&slot);
        (status, body)
    }

    /// Loads the page shell `/`: status, body, and the shell's headers.
    fn load_shell_now(&self) -> (CacheStatus, String, HeaderMap) {
        let loader = self.loader("/", &[]);
        let config = Rc::clone(&self.config);
        let url = Url::parse(&format!("{ORIGIN}/")).unwrap();
        let slot = self.sim.spawn(async move {
            let route = &config.pages[0];
            let (status, r) = loader.lookup_page(&url, route).await.finish().await;
            let f = r.expect("shell loaded");
            (
                status,
                String::from_utf8_lossy(&f.body).into_owned(),
                f.headers.clone(),
            )
        });
        self.sim.run();
        take(&slot)
    }

    /// Stores `body` under `path`, 20 s old: stale (soft TTL 10 s) but
    /// servable (hard TTL 300 s), with the given validators.
    fn seed_stale(&self, path: &str, body: &str, etag: Option<&str>, last_modified: Option<&str>) {
        let stored = self.sim.now() - 20_000;
        let meta = EntryMeta::new(stored, stored + 10_000, stored + 300_000, 200, 50).with_headers(
            Some("text/html"),
            etag,
            last_modified,
            None,
        );
        self.put(path, body, meta);
    }

    fn stored(&self, path: &str) -> StoredEntry {
        self.sim.store.entry(&self.key_of(path)).expect("stored")
    }

    /// The one request the origin received, for `path`.
    fn only_request_headers(&self, path: &str) -> HeaderMap {
        assert_eq!(self.sim.origin.count(path), 1);
        self.sim.origin.requests()[0].headers.clone()
    }
}

/// A `304 Not Modified` with no body after `latency_ms`.
fn not_modified(latency_ms: u64) -> Script {
    Script::Respond {
        status: 304,
        headers: HeaderMap::new(),
        body: Vec::new(),
        latency_ms,
    }
}

#[test]
fn etag_304_renews_the_stored_copy_without_the_body() {
    let w = world(1);
    w.seed_stale("/f/e", "stored body", Some("\"v1\""), None);
    let before = w.stored("/f/e").meta;
    w.sim
        .origin
        .script("/f/e", not_modified(40).header("etag", "\"v1\""));
    let (status, body) = w.load_now("/f/e");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Stale, Ok("stored body"))
    );

    let sent = w.only_request_headers("/f/e");
    assert_eq!(sent.get("if-none-match").unwrap(), "\"v1\"");
    assert!(sent.get("if-modified-since").is_none());

    // The stored copy is fresh again: same body, freshness from the 304.
    let renewed = w.stored("/f/e");
    let now = w.sim.now();
    assert_eq!(renewed.body, b"stored body");
    assert!(renewed.meta.stored_at > before.stored_at);
    assert_eq!(renewed.meta.stored_at, now, "renewed when the 304 arrived");
    assert_eq!(renewed.meta.fresh_until, now + 10_000);
    assert_eq!(renewed.meta.stale_until, now + 300_000);
    assert_eq!(renewed.meta.classify(now), Freshness::Fresh);
    assert_eq!(renewed.meta.etag.as_deref(), Some("\"v1\""));
    assert_eq!(renewed.meta.content_type.as_deref(), Some("text/html"));
    assert_eq!(w.sim.store.puts.get(), 1);

    // Remembered in isolate memory: the next request is a hit without a
    // KV read or an origin request.
    let gets = w.sim.store.gets.get();
    let (status, body) = w.load_now("/f/e");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Hit, Ok("stored body"))
    );
    assert_eq!(w.sim.store.gets.get(), gets);
    assert_eq!(w.sim.origin.count("/f/e"), 1);
}

#[test]
fn last_modified_304_renews_with_the_origin_cache_control_when_honoured() {
    let w = world(2);
    w.seed_stale("/h/lm", "dated body", None, Some(LAST_MODIFIED));
    w.sim.origin.script(
        "/h/lm",
        not_modified(40).header("cache-control", "max-age=42, stale-while-revalidate=8"),
    );
    let (status, body) = w.load_now("/h/lm");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Stale, Ok("dated body"))
    );

    let sent = w.only_request_headers("/h/lm");
    assert_eq!(sent.get("if-modified-since").unwrap(), LAST_MODIFIED);
    assert!(sent.get("if-none-match").is_none());

    let renewed = w.stored("/h/lm");
    let now = w.sim.now();
    assert_eq!(renewed.body, b"dated body");
    assert_eq!(renewed.meta.fresh_until, now + 42_000);
    assert_eq!(renewed.meta.stale_until, now + 50_000);
    assert_eq!(renewed.meta.last_modified.as_deref(), Some(LAST_MODIFIED));
    assert_eq!(
        renewed.meta.cache_control.as_deref(),
        Some("max-age=42, stale-while-revalidate=8")
    );
}

#[test]
fn a_304_to_a_request_without_validators_is_a_failure() {
    let w = world(3);
    // A stored copy with no validators: the refresh is unconditional.
    w.seed_stale("/f/nv", "kept", None, None);
    let before = w.stored("/f/nv");
    w.sim.origin.script("/f/nv", not_modified(40));
    let (status, body) = w.load_now("/f/nv");
    assert_eq!((status, body.as_deref()), (CacheStatus::Stale, Ok("kept")));
    let sent = w.only_request_headers("/f/nv");
    assert!(sent.get("if-none-match").is_none() && sent.get("if-modified-since").is_none());
    // Nothing was written; the stale copy is still served, and the key
    // backs off instead of asking again at once.
    assert_eq!(w.stored("/f/nv").meta, before.meta);
    assert_eq!(w.sim.store.puts.get(), 0);
    assert!(w
        .sim
        .log
        .contains("origin answered 304 to an unconditional request"));
    let (status, body) = w.load_now("/f/nv");
    assert_eq!((status, body.as_deref()), (CacheStatus::Stale, Ok("kept")));
    assert_eq!(w.sim.origin.count("/f/nv"), 1, "backing off");

    // A cold load sends no validators either, and a 304 to it fails.
    w.sim.origin.script("/f/cold", not_modified(40));
    let (status, body) = w.load_now("/f/cold");
    assert_eq!(status, CacheStatus::Error);
    assert_eq!(body, Err(LoadError::Status(StatusCode::NOT_MODIFIED)));
    let cold = &w.sim.origin.requests()[1];
    assert_eq!(cold.url.path(), "/f/cold");
    assert!(cold.headers.get("if-none-match").is_none());
    assert!(w.sim.store.entry(&w.key_of("/f/cold")).is_none());
}

#[test]
fn a_304_naming_another_etag_is_a_failure() {
    let w = world(4);
    w.seed_stale("/f/mm", "v1 body", Some("\"v1\""), None);
    let before = w.stored("/f/mm");
    w.sim
        .origin
        .script("/f/mm", not_modified(40).header("etag", "\"v2\""));
    let (status, body) = w.load_now("/f/mm");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Stale, Ok("v1 body"))
    );
    assert_eq!(w.stored("/f/mm").meta, before.meta);
    assert!(w.sim.log.contains("with another ETag"));
    // A weak form of the same tag does match.
    let w = world(5);
    w.seed_stale("/f/wk", "v1 body", Some("\"v1\""), None);
    w.sim
        .origin
        .script("/f/wk", not_modified(40).header("etag", "W/\"v1\""));
    let (status, _) = w.load_now("/f/wk");
    assert_eq!(status, CacheStatus::Stale);
    assert_eq!(
        w.stored("/f/wk").meta.classify(w.sim.now()),
        Freshness::Fresh
    );
}

#[test]
fn a_200_to_a_conditional_refresh_replaces_the_entry() {
    let w = world(6);
    w.seed_stale("/f/new", "old body", Some("\"v1\""), Some(LAST_MODIFIED));
    w.sim.origin.script(
        "/f/new",
        Script::ok("new body", 40).header("etag", "\"v2\""),
    );
    let (status, body) = w.load_now("/f/new");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Stale, Ok("old body"))
    );
    let sent = w.only_request_headers("/f/new");
    assert_eq!(sent.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(sent.get("if-modified-since").unwrap(), LAST_MODIFIED);

    let replaced = w.stored("/f/new");
    let now = w.sim.now();
    assert_eq!(replaced.body, b"new body");
    assert_eq!(replaced.meta.etag.as_deref(), Some("\"v2\""));
    assert_eq!(replaced.meta.last_modified, None);
    assert_eq!(replaced.meta.fresh_until, now + 10_000);
    let (status, body) = w.load_now("/f/new");
    assert_eq!(
        (status, body.as_deref()),
        (CacheStatus::Hit, Ok("new body"))
    );
}

#[test]
fn a_page_shell_keeps_its_headers_through_a_304() {
    let w = world(7);
    w.sim.origin.script(
        "/",
        Script::ok("<p>shell</p>", 40)
            .header("etag", "\"s1\"")
            .header("x-shell", "kept"),
    );
    let (status, body, headers) = w.load_shell_now();
    assert_eq!((status, body.as_str()), (CacheStatus::Miss, "<p>shell</p>"));
    assert_eq!(headers.get("x-shell").unwrap(), "kept");
    let key = w.sim.store.keys().pop().expect("shell stored");
    assert!(key.starts_with("p0:"), "{key}");
    let first = w.sim.store.entry(&key).unwrap();
    assert!(first.meta.header_bytes > 0);

    // Stale 15 s later; the conditional refresh is answered 304.
    w.sim.run_until(w.sim.now() + 15_000);
    w.sim
        .origin
        .script("/", not_modified(40).header("etag", "\"s1\""));
    let (status, body, _) = w.load_shell_now();
    assert_eq!(
        (status, body.as_str()),
        (CacheStatus::Stale, "<p>shell</p>")
    );
    let sent = &w.sim.origin.requests()[1].headers;
    assert_eq!(sent.get("if-none-match").unwrap(), "\"s1\"");
    let renewed = w.sim.store.entry(&key).unwrap();
    assert_eq!(renewed.meta.classify(w.sim.now()), Freshness::Fresh);
    assert_eq!(renewed.meta.header_bytes, first.meta.header_bytes);
    assert_eq!(renewed.body, first.body, "same header block and body");

    // A fresh hit from memory, with the shell's headers.
    let (status, body, headers) = w.load_shell_now();
    assert_eq!((status, body.as_str()), (CacheStatus::Hit, "<p>shell</p>"));
    assert_eq!(headers.get("x-shell").unwrap(), "kept");
    assert_eq!(w.sim.origin.count("/"), 2);
}
