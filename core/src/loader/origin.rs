//! The request sent to the origin: which client headers go (and in what
//! form), credentials, the capability header announcing ESI, and the
//! validators that make a refresh conditional.

use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderName};

use crate::cache::EntryMeta;

use crate::cache::key::header_value;
use crate::config::UNFORWARDABLE_HEADERS;
use crate::headers::value as to_header_value;
use crate::ports::OriginRequest;
use crate::url::Url;

use super::{Loader, Policy};

/// Header that tells the origin we process ESI (Edge Architecture Spec).
pub const SURROGATE_CAPABILITY: (&str, &str) = ("surrogate-capability", "fragcache=\"ESI/1.0\"");

/// Request headers that describe one connection and are never forwarded.
pub const HOP_BY_HOP: &[&str] = UNFORWARDABLE_HEADERS.split_at(2).1;

/// Makes a refresh conditional on the stored copy: `If-None-Match` with its
/// `ETag`, `If-Modified-Since` with its `Last-Modified` (both when both are
/// known, as RFC 9110 allows: the origin then judges by the ETag). Returns
/// whether any validator was added.
pub(super) fn add_validators(headers: &mut HeaderMap, meta: &EntryMeta) -> bool {
    let mut added = false;
    for (name, v) in [
        (IF_NONE_MATCH, &meta.etag),
        (IF_MODIFIED_SINCE, &meta.last_modified),
    ] {
        if let Some(v) = v.as_deref().and_then(to_header_value) {
            headers.insert(name, v);
            added = true;
        }
    }
    added
}

/// Whether `headers` make the request conditional.
pub(super) fn is_conditional(headers: &HeaderMap) -> bool {
    headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE)
}

impl Loader {
    /// The origin request for `url`. Credentials (`Cookie`, `Authorization`)
    /// go only to the configured origin and only for loads that are never
    /// cached or shared; a cacheable load sends just the headers its key
    /// varies on, each with the very value that went into the key
    /// ([`header_value`]: normalised, so requests that share a key send the
    /// same request), and the cookies it varies on. A route's forwarded
    /// headers are among its varied ones (the configuration insists on it);
    /// an uncached load forwards them as the client sent them.
    pub(super) fn origin_request(
        &self,
        url: &Url,
        policy: &Policy,
        with_credentials: bool,
    ) -> OriginRequest {
        let mut headers = HeaderMap::new();
        let own_origin = url.origin() == self.config.origin;
        let add = |headers: &mut HeaderMap, name: &str, value: &str| {
            if let (Ok(n), Some(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                to_header_value(value),
            ) {
                headers.append(n, v);
            }
        };
        if let Some(cache) = &policy.cache {
            for name in &cache.vary.headers {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                if let Some(v) = header_value(&self.req, name) {
                    add(&mut headers, name, &v);
                }
            }
            let cookies: Vec<String> = cache
                .vary
                .cookies
                .iter()
                .filter_map(|c| self.req.cookie(c).map(|v| format!("{c}={v}")))
                .collect();
            if own_origin && !cookies.is_empty() {
                add(&mut headers, "cookie", &cookies.join("; "));
            }
        } else {
            for name in &policy.forward {
                if UNFORWARDABLE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                for v in self.req.headers.get_all(name.as_str()) {
                    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                        headers.append(n, v.clone());
                    }
                }
            }
            if with_credentials && own_origin {
                if let Some(c) = self.req.cookie_header() {
                    add(&mut headers, "cookie", &c);
                }
                if let Some(a) = self.req.header("authorization") {
                    add(&mut headers, "authorization", a);
                }
            }
        }
        add(&mut headers, SURROGATE_CAPABILITY.0, SURROGATE_CAPABILITY.1);
        OriginRequest {
            url: url.clone(),
            headers,
            timeout_ms: policy.timeout_ms,
            max_body_bytes: if policy.shell {
                self.config.limits.max_shell_bytes
            } else {
                self.config.limits.max_fragment_bytes
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_make_a_request_conditional() {
        let mut h = HeaderMap::new();
        let none = EntryMeta::new(0, 1, 2, 200, 1);
        assert!(!add_validators(&mut h, &none) && !is_conditional(&h));
        let both = none.with_headers(
            None,
            Some("\"v1\""),
            Some("Tue, 01 Dec 2026 00:00:00 GMT"),
            None,
        );
        assert!(add_validators(&mut h, &both) && is_conditional(&h));
        assert_eq!(h.get(IF_NONE_MATCH).unwrap(), "\"v1\"");
        assert_eq!(
            h.get(IF_MODIFIED_SINCE).unwrap(),
            "Tue, 01 Dec 2026 00:00:00 GMT"
        );
    }

    #[test]
    fn hop_by_hop_is_the_unforwardable_list_without_credentials() {
        assert!(!HOP_BY_HOP.contains(&"cookie") && !HOP_BY_HOP.contains(&"authorization"));
        assert!(HOP_BY_HOP.contains(&"connection") && HOP_BY_HOP.contains(&"host"));
        assert_eq!(HOP_BY_HOP.len() + 2, UNFORWARDABLE_HEADERS.len());
    }
}
