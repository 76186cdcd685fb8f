//! The configuration as the adapter sees it: through the public API only,
//! with errors rendered the way `wrangler dev` prints them.

use fragcache_core::config::{Config, ConfigError, Route};
use fragcache_core::url::Url;
use serde_json::json;

fn rendered(v: serde_json::Value) -> String {
    match Config::from_json(&v) {
        Ok(_) => panic!("expected an error for {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_render_with_field_value_and_problem() {
    assert_eq!(
        rendered(json!({ "origin": "http://o.test", "fragments": [
            { "path": "/f/*", "soft_ttl": 30, "hard_ttl": 3600 },
            { "path": "/g/*", "soft_ttl": 600, "hard_ttl": 120 }
        ] })),
        "invalid fragcache config: fragments[1].hard_ttl = 120: must be at least soft_ttl (600 s): \
         an entry cannot turn stale after it has expired"
    );
    assert_eq!(
        rendered(json!({ "origin": "http://o.test", "fragments": [ { "path": "/f/*", "sof_ttl": 30 } ] })),
        "invalid fragcache config: fragments[0].sof_ttl = 30: unknown field; did you mean soft_ttl?"
    );
    assert_eq!(
        rendered(json!({})),
        "invalid fragcache config: origin = (missing): is required: the URL of the site fragcache \
         sits in front of, e.g. \"http://127.0.0.1:8788\""
    );
}

#[test]
fn errors_are_plain_data() {
    let e = Config::from_json_str(r#"{ "origin": "ftp://x" }"#).unwrap_err();
    let expected = ConfigError {
        field: "origin".into(),
        value: "\"ftp://x\"".into(),
        problem:
            "is not a usable origin: unsupported scheme \"ftp\": only http and https are allowed"
                .into(),
    };
    assert_eq!(e, expected);
}

#[test]
fn adapter_flow_maps_requests_onto_the_origin() {
    let config = Config::from_json(&json!({
        "origin": "http://127.0.0.1:8788",
        "pages": [ { "path": "/*" } ],
        "fragments": [ { "path": "/fragments/*", "soft_ttl": 30, "hard_ttl": 3600 } ]
    }))
    .unwrap();
    let request = Url::parse("https://shop.example.workers.dev/products?id=7").unwrap();
    let upstream = request.with_origin(&config.origin);
    assert_eq!(upstream.to_string(), "http://127.0.0.1:8788/products?id=7");
    assert!(matches!(config.route(upstream.path()), Route::Page(p) if p.id == 0));

    let include = upstream.resolve("/fragments/nav").unwrap();
    assert!(config.allow.allows(&include));
    assert_eq!(config.fragment_route(include.path()).map(|r| r.id), Some(0));

    let hostile = upstream
        .resolve("//169.254.169.254/latest/meta-data/")
        .unwrap();
    assert!(!config.allow.allows(&hostile));
}
