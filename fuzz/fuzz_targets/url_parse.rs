//! Parses arbitrary strings as URLs and resolves them against a base:
//! nothing may panic, and every URL that parsing or resolving produces
//! serialises to text that parses back to the same URL.

#![no_main]

use fragcache_core::url::Url;
use libfuzzer_sys::fuzz_target;

/// `url` must re-parse to itself from its serialisation.
fn round_trip(url: &Url, from: &str) {
    let text = url.to_string();
    match Url::parse(&text) {
        Ok(again) => assert!(
            again == *url && again.to_string() == text,
            "{from:?} gave {text:?}, which parses to {again:?}, not {url:?}"
        ),
        Err(e) => panic!("{from:?} gave {text:?}, which does not parse: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = Url::parse(s) {
        round_trip(&url, s);
    }
    for base in ["http://origin.test/a/b/c?q=1", "https://h.test:8443/"] {
        let base = Url::parse(base).expect("base URL");
        if let Ok(url) = base.resolve(s) {
            round_trip(&url, s);
        }
    }
});
