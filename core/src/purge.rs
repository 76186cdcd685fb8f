//! Purging cached fragments and shells when content changes.
//!
//! An operator (or the origin's publishing pipeline) sends
//! `POST /_fragcache/purge?path=/fragments/nav&path=/fragments/promo/*` with
//! `Authorization: Bearer <token>`, the token being the Worker secret
//! `FRAGCACHE_PURGE_TOKEN`. Each path removes every stored variant of that
//! URL (any query string, any `vary` values) on every route that covers it;
//! a path ending in `*` removes everything under that prefix.
//!
//! Purging deletes the KV entries and this isolate's in-memory copies.
//! Other isolates keep serving their in-memory copy until its soft TTL ends,
//! and KV itself is eventually consistent (up to 60 s), so a purge takes
//! effect everywhere within `max(soft_ttl, 60 s)`. Keys are found by KV
//! prefix listing, so purging costs one list call per route and one delete
//! per stored variant.

use crate::config::{Config, PathPattern};
use crate::loader::Loader;
use crate::ports::LogLevel;

/// Path of the purge endpoint.
pub const PURGE_PATH: &str = "/_fragcache/purge";

/// Most keys one purge request deletes (KV allows 1,000 operations per
/// invocation); the caller repeats the request for the rest.
pub const MAX_DELETES: usize = 500;

/// What one purge request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Whether more keys matched than one request may delete.
    pub truncated: bool,
    /// Problems (store errors), reported to the caller.
    pub errors: Vec<String>,
}

impl PurgeReport {
    /// The report as JSON for the response body.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "purged": self.deleted.len(),
            "keys": self.deleted,
            "truncated": self.truncated,
            "errors": self.errors,
        })
        .to_string()
    }
}

/// Why a purge request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    /// No `path` parameter.
    #[error("give at least one path: {PURGE_PATH}?path=/fragments/nav")]
    NoPaths,
    /// A path that is not an absolute path.
    #[error("path {0:?} must start with '/'")]
    BadPath(String),
}

/// The `path` parameters of a purge request's query string.
pub fn paths_from_query(query: Option<&str>) -> Result<Vec<String>, PurgeError> {
    let paths: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.strip_prefix("path="))
        .map(percent_decode)
        .collect();
    if paths.is_empty() {
        return Err(PurgeError::NoPaths);
    }
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(PurgeError::BadPath(bad.clone()));
    }
    Ok(paths)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The key prefixes that cover `path`, with whether a match must end there
/// (exact purge: the key continues only with a query, variants or a hash).
pub fn key_prefixes(config: &Config, path: &str) -> Vec<(String, bool)> {
    let (base, wildcard) = match path.strip_suffix('*') {
        Some(b) => (b, true),
        None => (path, false),
    };
    let origin = config.origin.to_string();
    let covers = |pattern: &PathPattern| {
        if wildcard {
            // Any route that can match something under the prefix.
            match pattern {
                PathPattern::Exact(p) => p.starts_with(base),
                PathPattern::Prefix(p) => p.starts_with(base) || base.starts_with(p.as_str()),
            }
        } else {
            pattern.matches(base)
        }
    };
    let mut out = Vec::new();
    for r in &config.fragments {
        if !r.private && covers(&r.pattern) {
            out.push((format!("f{}:{origin}{base}", r.id), !wildcard));
        }
    }
    for r in &config.pages {
        if r.ttls.is_some() && covers(&r.pattern) {
            out.push((format!("p{}:{origin}{base}", r.id), !wildcard));
        }
    }
    out
}

/// Deletes every stored entry covered by `paths`.
pub async fn purge(loader: &Loader, paths: &[String]) -> PurgeReport {
    let ports = loader.ports();
    let mut report = PurgeReport::default();
    for path in paths {
        for (prefix, exact) in key_prefixes(loader.config(), path) {
            loader.shared().forget_prefix(&prefix);
            let keys = match ports.store.list(&prefix).await {
                Ok(k) => k,
                Err(e) => {
                    report.errors.push(format!("{prefix}: {e}"));
                    continue;
                }
            };
            for key in keys {
                let rest = &key[prefix.len()..];
                // `…` starts the hash of a long key (see cache::key).
                let belongs = !exact
                    || rest.is_empty()
                    || rest.starts_with('?')
                    || rest.starts_with('#')
                    || rest.starts_with('…');
                if !belongs {
                    continue;
                }
                if report.deleted.len() >= MAX_DELETES {
                    report.truncated = true;
                    break;
                }
                match ports.store.delete(&key).await {
                    Ok(()) => report.deleted.push(key),
                    Err(e) => report.errors.push(format!("{key}: {e}")),
                }
            }
        }
    }
    ports.log.log(
        LogLevel::Info,
        &format!("purge {paths:?}: {} entries deleted", report.deleted.len()),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_the_query() {
        assert_eq!(
            paths_from_query(Some("path=%2Ffragments%2Fnav&x=1&path=/a/*")),
            Ok(vec!["/fragments/nav".to_owned(), "/a/*".to_owned()])
        );
        assert_eq!(paths_from_query(None), Err(PurgeError::NoPaths));
        assert_eq!(
            paths_from_query(Some("path=nav")),
            Err(PurgeError::BadPath("nav".into()))
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn prefixes_cover_the_routes_that_cache_the_path() {
        let c = Config::from_json_str(
            r#"{ "origin": "http://o.test",
                 "pages": [ { "path": "/", "soft_ttl": 5, "hard_ttl": 60 }, { "path": "/live" } ],
                 "fragments": [ { "path": "/f/me", "private": true },
                                { "path": "/f/*", "soft_ttl": 5, "hard_ttl": 60 } ] }"#,
        )
        .unwrap();
        let f = c.fragment_route("/f/x").unwrap().id;
        assert_eq!(
            key_prefixes(&c, "/f/x"),
            vec![(format!("f{f}:http://o.test/f/x"), true)]
        );
        assert!(key_prefixes(&c, "/f/me").is_empty() || key_prefixes(&c, "/f/me").len() == 1);
        assert!(
            key_prefixes(&c, "/live").is_empty(),
            "uncached pages have no keys"
        );
        assert_eq!(key_prefixes(&c, "/").len(), 1);
        assert_eq!(
            key_prefixes(&c, "/f/*"),
            vec![(format!("f{f}:http://o.test/f/"), false)]
        );
    }
}
