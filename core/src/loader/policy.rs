//! How a URL is to be loaded ([`Policy`]), derived from its route, and
//! what its content varies on ([`VaryHint`]).

use crate::cache::key::KeyKind;
use crate::cache::policy::RoutePolicy;
use crate::config::{ColdPolicy, Config, FragmentRoute, PageRoute, Vary};
use crate::request::ClientRequest;

/// Headers forwarded for includes that match no fragment route.
const DEFAULT_FORWARD: &[&str] = &["accept-language", "user-agent"];

/// How one URL is to be loaded: derived from its route.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// What the cache key names.
    pub(super) kind: KeyKind,
    /// The route's id (part of the cache key).
    pub(super) route_id: usize,
    /// `None`: never cached.
    pub(super) cache: Option<CachePolicy>,
    /// Fetched with the user's credentials; makes the page private.
    pub(super) private: bool,
    /// Origin timeout.
    pub(super) timeout_ms: u32,
    /// Client headers forwarded to the origin by an uncached load.
    pub(super) forward: Vec<String>,
    /// Whether the origin's `Set-Cookie` reaches the client.
    pub(super) pass_set_cookie: bool,
    /// What the content varies on, for the page.
    pub(super) vary: VaryHint,
    /// A page shell: its response headers are kept for the page, and its
    /// body may be as large as `limits.max_shell_bytes`.
    pub(super) shell: bool,
}

/// How a cacheable URL is cached.
#[derive(Debug, Clone)]
pub(super) struct CachePolicy {
    /// TTLs and whether origin headers may set them.
    pub(super) route: RoutePolicy,
    /// What a request does when another is fetching the cold key.
    pub(super) cold: ColdPolicy,
    /// XFetch early-refresh factor (0 disables it).
    pub(super) xfetch_beta: f64,
    /// Random spread of the TTLs.
    pub(super) jitter: f64,
    /// What the key (and the origin request) varies on.
    pub(super) vary: Vary,
}

impl Policy {
    pub(super) fn for_fragment(r: &FragmentRoute, req: &ClientRequest) -> Policy {
        let private_if_cookie = r
            .cache
            .as_ref()
            .and_then(|c| c.private_if_cookie.as_deref());
        let signed_in = private_if_cookie.is_some_and(|c| req.cookie(c).is_some());
        let private = r.private || signed_in;
        Policy {
            kind: KeyKind::Fragment,
            route_id: r.id,
            cache: r.cache.as_ref().filter(|_| !private).map(|c| CachePolicy {
                route: RoutePolicy {
                    soft_ttl: c.ttls.soft,
                    hard_ttl: c.ttls.hard,
                    negative_ttl: c.negative_ttl,
                    honor_origin_headers: c.honor_origin_headers,
                },
                cold: c.cold.clone(),
                xfetch_beta: c.xfetch_beta,
                jitter: c.jitter,
                vary: r.vary.clone(),
            }),
            private,
            timeout_ms: r.timeout_ms,
            forward: r.forward_headers.clone(),
            pass_set_cookie: r.pass_set_cookie,
            shell: false,
            vary: VaryHint {
                headers: r.vary.headers.clone(),
                cookie: !r.vary.cookies.is_empty() || private_if_cookie.is_some(),
                country: r.vary.country,
            },
        }
    }

    pub(super) fn for_page(r: &PageRoute, config: &Config) -> Policy {
        let timeout_ms = config.limits.fragment_timeout_ms;
        Policy {
            kind: KeyKind::Page,
            route_id: r.id,
            cache: r.ttls.as_ref().map(|t| CachePolicy {
                route: RoutePolicy {
                    soft_ttl: t.soft,
                    hard_ttl: t.hard,
                    negative_ttl: 0,
                    honor_origin_headers: false,
                },
                cold: ColdPolicy::Wait { timeout_ms },
                xfetch_beta: crate::config::DEFAULT_XFETCH_BETA,
                jitter: crate::config::DEFAULT_JITTER,
                vary: Vary::default(),
            }),
            // An uncached shell is fetched per request with credentials, like
            // a private fragment, but does not by itself make the page private:
            // the origin's own Cache-Control for it is passed on.
            private: false,
            timeout_ms,
            // A cached shell must not depend on the first requester's headers.
            forward: if r.ttls.is_some() {
                Vec::new()
            } else {
                DEFAULT_FORWARD.iter().map(|s| (*s).to_owned()).collect()
            },
            pass_set_cookie: true,
            shell: true,
            vary: VaryHint::default(),
        }
    }

    pub(super) fn unrouted(config: &Config) -> Policy {
        Policy {
            kind: KeyKind::Unrouted,
            route_id: 0,
            cache: None,
            private: true,
            timeout_ms: config.limits.fragment_timeout_ms,
            forward: DEFAULT_FORWARD.iter().map(|s| (*s).to_owned()).collect(),
            pass_set_cookie: false,
            shell: false,
            vary: VaryHint::default(),
        }
    }
}

/// What a cached fragment's content depends on besides its URL, so that a
/// page built from it can tell downstream caches (`Vary`) or stay private.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryHint {
    /// Request headers (lower-case) the content varies on.
    pub headers: Vec<String>,
    /// Whether it varies on cookies (selected cookies, or signed-in state).
    pub cookie: bool,
    /// Whether it varies on the client's country, which `Vary` cannot express.
    pub country: bool,
}

impl VaryHint {
    /// Adds what `other` varies on.
    pub fn merge(&mut self, other: &VaryHint) {
        for h in &other.headers {
            if !self.headers.contains(h) {
                self.headers.push(h.clone());
            }
        }
        self.cookie |= other.cookie;
        self.country |= other.country;
    }
}
