//! What an origin response allows us to store, and for how long.
//!
//! The rules, in order:
//! 1. `Cache-Control: private`, `no-store` or any `Set-Cookie` make a response
//!    uncacheable whatever the route says (a cached `Set-Cookie` would hand
//!    one user's session to everybody). `Surrogate-Control: no-store` too.
//! 2. 5xx responses are failures: they never replace a stored entry.
//! 3. 404 and 410 are cached for the route's `negative_ttl` (0 disables).
//! 4. 200 and 203 are cached with the route's TTLs; when the route says
//!    `honor_origin_headers`, `Surrogate-Control: max-age=S[+W]`, then
//!    `s-maxage`/`max-age` set the soft TTL and `stale-while-revalidate` /
//!    `stale-if-error` extend the hard TTL.
//! 5. Anything else (redirects, other 4xx) is passed to this request only.
//!
//! A `304 Not Modified` is not decided here: the loader turns one answering
//! its conditional refresh into the full response it stands for (stored
//! status and body, updated headers) and decides on that; any other 304 is
//! an origin failure.

/// Parsed `Cache-Control` (or `Surrogate-Control`) directives that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `private` (with or without a field list).
    pub private: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `max-age` seconds.
    pub max_age: Option<u32>,
    /// `s-maxage` seconds.
    pub s_maxage: Option<u32>,
    /// `stale-while-revalidate` seconds.
    pub stale_while_revalidate: Option<u32>,
    /// `stale-if-error` seconds.
    pub stale_if_error: Option<u32>,
    /// Surrogate-Control's `max-age=S+W` stale extension.
    pub surrogate_stale: Option<u32>,
    /// Surrogate-Control's `content="ESI/1.0"`.
    pub esi: bool,
}

/// Parses a `Cache-Control` or `Surrogate-Control` value. Unknown directives
/// and malformed numbers are ignored; numbers saturate instead of overflowing.
pub fn parse_directives(value: &str) -> Directives {
    let mut d = Directives::default();
    for part in split_directives(value) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, arg) = match part.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "private" => d.private = true,
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "max-age" => {
                // Surrogate-Control allows `max-age=60+30`.
                if let Some(a) = arg {
                    let (main, extra) = match a.split_once('+') {
                        Some((m, e)) => (m, Some(e)),
                        None => (a, None),
                    };
                    d.max_age = parse_secs(main);
                    d.surrogate_stale = extra.and_then(parse_secs);
                }
            }
            "s-maxage" => d.s_maxage = arg.and_then(parse_secs),
            "stale-while-revalidate" => d.stale_while_revalidate = arg.and_then(parse_secs),
            "stale-if-error" => d.stale_if_error = arg.and_then(parse_secs),
            "content" => {
                if let Some(a) = arg {
                    d.esi |= a
                        .split_ascii_whitespace()
                        .any(|t| t.eq_ignore_ascii_case("ESI/1.0"));
                }
            }
            _ => {}
        }
    }
    d
}

/// Splits on commas outside double quotes (`private="a, b"` is one directive).
/// Splits a header into directives at commas outside quoted strings
/// (RFC 9110 §5.6.4, with `\` escaping inside quotes). A header whose
/// quotes never close is malformed; it is split at every comma instead, so
/// that an unbalanced quote can never hide a later `private` or `no-store`.
fn split_directives(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return value.split(',').collect();
    }
    out.push(&value[start..]);
    out
}

fn parse_secs(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(u32::MAX, |v| v.min(u64::from(u32::MAX)) as u32),
    )
}

/// The response headers the storage decision looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHeaders<'a> {
    /// `Cache-Control`, all values joined.
    pub cache_control: Option<&'a str>,
    /// `Surrogate-Control`, all values joined.
    pub surrogate_control: Option<&'a str>,
    /// Whether any `Set-Cookie` was present.
    pub set_cookie: bool,
}

/// The route's caching parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutePolicy {
    /// Soft TTL in seconds.
    pub soft_ttl: u32,
    /// Hard TTL in seconds.
    pub hard_ttl: u32,
    /// TTL for 404/410 in seconds (0: do not cache them).
    pub negative_ttl: u32,
    /// Let origin headers set the TTLs.
    pub honor_origin_headers: bool,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// `Cache-Control: private`.
    Private,
    /// `no-store` in Cache-Control or Surrogate-Control.
    NoStore,
    /// The response sets a cookie.
    SetCookie,
    /// Honoured `no-cache` or `max-age=0`.
    NoCache,
    /// A status we never store (redirects, 4xx other than 404/410).
    Status(u16),
}

impl Uncacheable {
    /// Short name for logs and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Uncacheable::Private => "private",
            Uncacheable::NoStore => "no-store",
            Uncacheable::SetCookie => "set-cookie",
            Uncacheable::NoCache => "no-cache",
            Uncacheable::Status(_) => "status",
        }
    }

    /// Whether the body may depend on who asked (and so must never be
    /// shared with another request, not even a concurrent one).
    pub fn is_personal(self) -> bool {
        matches!(
            self,
            Uncacheable::Private | Uncacheable::NoStore | Uncacheable::SetCookie
        )
    }
}

/// The storage decision for one origin response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store it: soft and hard TTL in seconds (hard ≥ soft).
    Store {
        /// Seconds until stale.
        soft_s: u32,
        /// Seconds until expired.
        hard_s: u32,
    },
    /// Serve it to this request only.
    Pass(Uncacheable),
    /// An origin failure (5xx): keep serving what we have.
    Failure,
}

/// Decides whether and how long to store a response.
pub fn decide(status: u16, headers: ResponseHeaders<'_>, route: &RoutePolicy) -> Decision {
    let cc = headers
        .cache_control
        .map(parse_directives)
        .unwrap_or_default();
    let sc = headers
        .surrogate_control
        .map(parse_directives)
        .unwrap_or_default();
    if status >= 500 {
        return Decision::Failure;
    }
    if cc.private {
        return Decision::Pass(Uncacheable::Private);
    }
    if cc.no_store || sc.no_store {
        return Decision::Pass(Uncacheable::NoStore);
    }
    if headers.set_cookie {
        return Decision::Pass(Uncacheable::SetCookie);
    }
    match status {
        200 | 203 => {}
        404 | 410 if route.negative_ttl > 0 => {
            return Decision::Store {
                soft_s: route.negative_ttl,
                hard_s: route
                    .negative_ttl
                    .max(route.hard_ttl.min(route.negative_ttl * 6)),
            }
        }
        _ => return Decision::Pass(Uncacheable::Status(status)),
    }
    if !route.honor_origin_headers {
        return Decision::Store {
            soft_s: route.soft_ttl,
            hard_s: route.hard_ttl.max(route.soft_ttl),
        };
    }
    if cc.no_cache {
        return Decision::Pass(Uncacheable::NoCache);
    }
    // Surrogate-Control is addressed to us and wins over Cache-Control.
    let (soft, extra) = if let Some(age) = sc.max_age {
        (age, sc.surrogate_stale)
    } else if let Some(age) = cc.s_maxage.or(cc.max_age) {
        let extra = match (cc.stale_while_revalidate, cc.stale_if_error) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        (age, extra)
    } else {
        (route.soft_ttl, None)
    };
    if soft == 0 && extra.unwrap_or(0) == 0 {
        return Decision::Pass(Uncacheable::NoCache);
    }
    let soft = soft.max(1);
    let hard = match extra {
        Some(extra) => soft.saturating_add(extra),
        None => route.hard_ttl.max(soft),
    };
    Decision::Store {
        soft_s: soft,
        hard_s: hard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: RoutePolicy = RoutePolicy {
        soft_ttl: 30,
        hard_ttl: 3600,
        negative_ttl: 10,
        honor_origin_headers: false,
    };
    const HONOR: RoutePolicy = RoutePolicy {
        honor_origin_headers: true,
        ..ROUTE
    };

    fn cc(v: &str) -> ResponseHeaders<'_> {
        ResponseHeaders {
            cache_control: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn parses_directives() {
        let d = parse_directives(
            r#"public, Max-Age=60, s-maxage="120", stale-while-revalidate=30, private="set-cookie, x", stale-if-error=600"#,
        );
        assert!(d.private);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        let s = parse_directives(r#"content="ESI/1.0", max-age=60+30"#);
        assert!(s.esi);
        assert_eq!((s.max_age, s.surrogate_stale), (Some(60), Some(30)));
        let junk = parse_directives("max-age=-1, max-age, =, ,,s-maxage=99999999999999999");
        assert_eq!(junk.max_age, None);
        assert_eq!(junk.s_maxage, Some(u32::MAX));
    }

    #[test]
    fn personal_responses_are_never_stored() {
        for h in [
            cc("private"),
            cc("public, no-store"),
            cc("max-age=60, private=\"x\""),
        ] {
            assert!(matches!(decide(200, h, &HONOR), Decision::Pass(u) if u.is_personal()));
        }
        let cookie = ResponseHeaders {
            set_cookie: true,
            cache_control: Some("public, max-age=600"),
            ..Default::default()
        };
        assert_eq!(
            decide(200, cookie, &ROUTE),
            Decision::Pass(Uncacheable::SetCookie)
        );
        let sc = ResponseHeaders {
            surrogate_control: Some("no-store"),
            ..Default::default()
        };
        assert_eq!(
            decide(200, sc, &ROUTE),
            Decision::Pass(Uncacheable::NoStore)
        );
    }

    #[test]
    fn quoted_values_cannot_hide_private() {
        let route = RoutePolicy {
            soft_ttl: 10,
            hard_ttl: 100,
            negative_ttl: 0,
            honor_origin_headers: true,
        };
        for cc in [
            r#"ext="a\"b", private, x="y""#,
            r#"ext="a,b", no-store"#,
            r#"ext="unclosed, private"#,
            r#"max-age=60, ext="\\", private"#,
        ] {
            let h = ResponseHeaders {
                cache_control: Some(cc),
                ..ResponseHeaders::default()
            };
            assert!(
                matches!(decide(200, h, &route), Decision::Pass(_)),
                "{cc} was stored"
            );
        }
    }

    #[test]
    fn statuses() {
        let none = ResponseHeaders::default();
        assert_eq!(decide(500, none, &ROUTE), Decision::Failure);
        assert_eq!(decide(503, cc("private"), &ROUTE), Decision::Failure);
        assert_eq!(
            decide(200, none, &ROUTE),
            Decision::Store {
                soft_s: 30,
                hard_s: 3600
            }
        );
        assert_eq!(
            decide(404, none, &ROUTE),
            Decision::Store {
                soft_s: 10,
                hard_s: 60
            }
        );
        assert_eq!(
            decide(302, none, &ROUTE),
            Decision::Pass(Uncacheable::Status(302))
        );
        assert_eq!(
            decide(403, none, &ROUTE),
            Decision::Pass(Uncacheable::Status(403))
        );
        let no_neg = RoutePolicy {
            negative_ttl: 0,
            ..ROUTE
        };
        assert_eq!(
            decide(410, none, &no_neg),
            Decision::Pass(Uncacheable::Status(410))
        );
    }

    #[test]
    fn origin_headers_only_when_honoured() {
        assert_eq!(
            decide(200, cc("max-age=5"), &ROUTE),
            Decision::Store {
                soft_s: 30,
                hard_s: 3600
            }
        );
        assert_eq!(
            decide(200, cc("max-age=5"), &HONOR),
            Decision::Store {
                soft_s: 5,
                hard_s: 3600
            }
        );
        assert_eq!(
            decide(
                200,
                cc("max-age=5, s-maxage=50, stale-while-revalidate=100"),
                &HONOR
            ),
            Decision::Store {
                soft_s: 50,
                hard_s: 150
            }
        );
        assert_eq!(
            decide(
                200,
                cc("max-age=5, stale-if-error=900, stale-while-revalidate=100"),
                &HONOR
            ),
            Decision::Store {
                soft_s: 5,
                hard_s: 905
            }
        );
        let sc = ResponseHeaders {
            cache_control: Some("max-age=1"),
            surrogate_control: Some("max-age=60+30"),
            set_cookie: false,
        };
        assert_eq!(
            decide(200, sc, &HONOR),
            Decision::Store {
                soft_s: 60,
                hard_s: 90
            }
        );
        assert_eq!(
            decide(200, cc("max-age=0"), &HONOR),
            Decision::Pass(Uncacheable::NoCache)
        );
        assert_eq!(
            decide(200, cc("no-cache"), &HONOR),
            Decision::Pass(Uncacheable::NoCache)
        );
        assert_eq!(
            decide(200, cc("no-cache"), &ROUTE),
            Decision::Store {
                soft_s: 30,
                hard_s: 3600
            }
        );
    }
}
