//! The operator's configuration, validated into typed routes and limits.
//!
//! The configuration is one JSON object. In `wrangler.toml` it is the
//! `[vars.FRAGCACHE]` table; the adapter reads it as JSON and hands it to
//! [`Config::from_json`]. It is walked by hand rather than derived, so that
//! every mistake is reported as a [`ConfigError`] naming the exact field
//! (`fragments[1].hard_ttl`), the offending value and what would be right,
//! including a "did you mean …?" for misspelt keys. A bad configuration is
//! an error at the first request and in `wrangler dev` output, never a panic
//! and never a silently ignored key.
//!
//! # Example
//!
//! Every field set (the test `full_example_from_module_doc` parses exactly
//! this block). Fields left out take the defaults documented on the types.
//!
//! ```json
//! {
//!   "origin": "http://127.0.0.1:8788",
//!   "allowed_origins": ["https://static.example.com"],
//!   "unknown_routes": "pass",
//!   "limits": {
//!     "max_depth": 3,
//!     "max_includes": 40,
//!     "max_fragment_bytes": 1048576,
//!     "max_page_bytes": 8388608,
//!     "max_shell_bytes": 4194304,
//!     "fragment_timeout_ms": 5000,
//!     "page_timeout_ms": 20000
//!   },
//!   "breaker": { "threshold": 3, "probe_interval_ms": 1000, "probe_timeout_ms": 10000 },
//!   "coordinator": { "enabled": true, "wait_ms": 1000 },
//!   "warm": { "paths": ["/", "/?page=2"], "concurrency": 4 },
//!   "purge": { "check_interval_ms": 10000 },
//!   "pages": [
//!     { "path": "/", "soft_ttl": 30, "hard_ttl": 3600, "require_surrogate_control": false },
//!     { "path": "/account/*", "require_surrogate_control": true }
//!   ],
//!   "fragments": [
//!     {
//!       "path": "/fragments/*",
//!       "soft_ttl": 30,
//!       "hard_ttl": 3600,
//!       "private": false,
//!       "cold": "wait",
//!       "cold_wait_ms": 3000,
//!       "negative_ttl": 10,
//!       "honor_origin_headers": true,
//!       "xfetch_beta": 1.0,
//!       "jitter": 0.1,
//!       "timeout_ms": 4000,
//!       "vary": {
//!         "cookies": ["currency"],
//!         "headers": ["Accept-Language"],
//!         "query": ["page"],
//!         "country": true
//!       },
//!       "forward_headers": ["accept-language"],
//!       "private_if_cookie": "session",
//!       "pass_set_cookie": true
//!     },
//!     { "path": "/fragments/prices", "soft_ttl": 5, "hard_ttl": 60, "cold": "fail", "retry_after": 2 },
//!     {
//!       "path": "/fragments/cart",
//!       "private": true,
//!       "timeout_ms": 2000,
//!       "forward_headers": ["x-request-id"],
//!       "pass_set_cookie": false
//!     }
//!   ]
//! }
//! ```
//!
//! # Unknown keys
//!
//! There is no list of allowed keys next to the parser: the parser *is* the
//! list. Each JSON object is read through a reader that records every key
//! the parser asks for. All of an object's keys are asked for first; then
//! the reader refuses any key in the object that was never asked for, and
//! only after that are the values validated. So a key cannot be accepted
//! without being read, a misspelt key is reported before the error it
//! causes (`sof_ttl` rather than "soft_ttl is required"), and the "did you
//! mean …?" suggestion is the closest key that was actually asked for. Keys
//! that are valid in another object (`max_depth` at the top level, `cookies`
//! outside `vary`) get a hint saying where they belong; those hints are the
//! only keys written down as data. Nested objects (`limits`, each route,
//! `vary`) are checked the same way when they are read.
//!
//! # Routing
//!
//! A request path is matched against the page and fragment patterns. An
//! exact pattern beats any prefix; among prefixes (`/x/*`) the longest
//! wins. Patterns must be unique across pages and fragments, so the result
//! never depends on declaration order. Route ids are positions in their
//! list and are part of cache keys: reordering routes starts their caches
//! afresh, which is safe (old entries simply expire).
//!
//! # Bounds
//!
//! Timeouts are capped at [`MAX_TIMEOUT_MS`] because background work
//! (`wait_until`) ends about 30 s after the response; `hard_ttl` is at least
//! [`MIN_HARD_TTL_S`] because that is the shortest expiry Workers KV accepts.

use std::fmt;

use serde_json::{Map, Value};

use crate::cache::breaker::BreakerConfig;
use crate::url::{AllowList, Origin, Url, UrlError};

/// Shortest `hard_ttl` (seconds): Workers KV refuses an `expirationTtl` below 60.
pub const MIN_HARD_TTL_S: u32 = 60;
/// Longest timeout (ms) anywhere: `wait_until` work ends about 30 s after
/// the response, so a longer wait could never complete.
pub const MAX_TIMEOUT_MS: u32 = 30_000;
/// Largest accepted `limits.max_includes`.
pub const MAX_INCLUDES_CAP: u32 = 1000;
/// Largest accepted `limits.max_depth`.
pub const MAX_DEPTH_CAP: u32 = 32;
/// Largest accepted `limits.max_fragment_bytes`: a KV value holds at most 25 MiB.
pub const MAX_FRAGMENT_BYTES_CAP: usize = 25 * 1024 * 1024;
/// Largest accepted `limits.max_page_bytes`: half the isolate's 128 MB memory.
pub const MAX_PAGE_BYTES_CAP: usize = 64 * 1024 * 1024;
/// Default `retry_after` (seconds) for `cold: "fail"`.
pub const DEFAULT_RETRY_AFTER_S: u32 = 5;
/// Largest accepted `retry_after` (seconds).
pub const MAX_RETRY_AFTER_S: u32 = 3600;
/// Default `negative_ttl` (seconds) for 404/410 responses.
pub const DEFAULT_NEGATIVE_TTL_S: u32 = 10;
/// Default XFetch β: refresh early roughly in proportion to fetch time.
pub const DEFAULT_XFETCH_BETA: f64 = 1.0;
/// Default TTL jitter (fraction of the TTL).
pub const DEFAULT_JITTER: f64 = 0.1;
/// `jitter` must stay below this, so a TTL never shrinks by half or more.
pub const MAX_JITTER: f64 = 0.5;
/// Request headers that `forward_headers` may not name: credentials (they
/// follow the private-fragment rules), `Host` (the fetch sets it) and
/// hop-by-hop headers (they describe one connection, not the request). The
/// order is the point: `loader::HOP_BY_HOP` is this list without the
/// credentials, and `headers::HOP_BY_HOP_RESPONSE` without `Host` either.
pub const UNFORWARDABLE_HEADERS: &[&str] = &[
    "cookie",
    "authorization",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Field name used for errors about the configuration as a whole.
const ROOT: &str = "FRAGCACHE";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The site fragcache sits in front of: pages, fragments and unknown
    /// routes are fetched from here.
    pub origin: Origin,
    /// [`Config::origin`] as a URL (path `/`), for resolving includes and
    /// mapping request URLs onto the origin.
    pub origin_url: Url,
    /// Where includes may be fetched from: the origin plus `allowed_origins`.
    pub allow: AllowList,
    /// What to do with requests that match no route.
    pub unknown_routes: UnknownRoutes,
    /// Size, depth and time limits.
    pub limits: Limits,
    /// Page routes (shells with ESI), in declaration order.
    pub pages: Vec<PageRoute>,
    /// Fragment routes, in declaration order.
    pub fragments: Vec<FragmentRoute>,
    /// The per-origin circuit breaker (`breaker` object).
    pub breaker: BreakerConfig,
    /// The cross-isolate coordinator (`coordinator` object).
    pub coordinator: CoordinatorSettings,
    /// Pages the scheduled (cron) handler warms (`warm` object).
    pub warm: WarmSettings,
    /// How purges reach every isolate (`purge` object).
    pub purge: PurgeSettings,
}

/// What the scheduled handler warms ([`crate::warm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmSettings {
    /// `paths` (default none): page paths, each with an optional query,
    /// each matching a page route.
    pub paths: Vec<String>,
    /// `concurrency` (default 4): pages loaded at once.
    pub concurrency: u32,
}

impl WarmSettings {
    /// Default [`WarmSettings::concurrency`].
    pub const DEFAULT_CONCURRENCY: u32 = 4;
    /// Most pages warmed in one go (the list, or one admin request): each
    /// page costs subrequests, and an invocation has a bounded number.
    pub const MAX_PATHS: usize = 100;
    /// Most pages loaded at once.
    pub const MAX_CONCURRENCY: u32 = 16;
}

impl Default for WarmSettings {
    fn default() -> Self {
        WarmSettings {
            paths: Vec::new(),
            concurrency: Self::DEFAULT_CONCURRENCY,
        }
    }
}

/// How isolates learn of purges made elsewhere (see [`crate::purge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// `check_interval_ms` (default 10 s): each isolate reads the shared
    /// purge log at most this often, in the background. A purge reaches
    /// every serving isolate within this (plus KV's 60 s propagation
    /// without the coordinator); each read is one Durable Object request,
    /// or one KV read, per isolate.
    pub check_interval_ms: u32,
}

impl PurgeSettings {
    /// Default [`PurgeSettings::check_interval_ms`].
    pub const DEFAULT_CHECK_INTERVAL_MS: u32 = 10_000;
}

impl Default for PurgeSettings {
    fn default() -> Self {
        PurgeSettings {
            check_interval_ms: Self::DEFAULT_CHECK_INTERVAL_MS,
        }
    }
}

/// How isolates use the coordinator Durable Object, when the worker has the
/// `COORDINATOR` binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorSettings {
    /// `enabled` (default true): send cold misses and refreshes through the
    /// coordinator. False runs each isolate on its own even with the binding.
    pub enabled: bool,
    /// `wait_ms`: how much longer than the origin timeout an isolate waits
    /// for the coordinator's answer before fetching for itself.
    pub wait_ms: u32,
}

impl CoordinatorSettings {
    /// Default [`CoordinatorSettings::wait_ms`].
    pub const DEFAULT_WAIT_MS: u32 = 1_000;
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        CoordinatorSettings {
            enabled: true,
            wait_ms: Self::DEFAULT_WAIT_MS,
        }
    }
}

/// What happens to a request that matches no page or fragment route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownRoutes {
    /// `"pass"` (default): proxied to the origin untouched.
    Pass,
    /// `"404"`: answered with 404 without asking the origin.
    NotFound,
}

impl UnknownRoutes {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownRoutes::Pass => "pass",
            UnknownRoutes::NotFound => "404",
        }
    }
}

/// Limits that keep one request's work bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How deeply includes nest. The page shell's own includes are at depth
    /// 0, includes inside those fragments at depth 1, and so on; an include
    /// deeper than `max_depth` fails like any other include error. So 0
    /// means the page's includes work but fragments may not include
    /// (no nesting). At most [`MAX_DEPTH_CAP`].
    pub max_depth: u32,
    /// Most includes processed per page, nested ones included; 1 to
    /// [`MAX_INCLUDES_CAP`].
    pub max_includes: u32,
    /// Largest fragment body accepted from the origin; at most
    /// [`MAX_FRAGMENT_BYTES_CAP`] (KV's value limit).
    pub max_fragment_bytes: usize,
    /// Largest assembled page; at most [`MAX_PAGE_BYTES_CAP`].
    pub max_page_bytes: usize,
    /// Largest page shell accepted from the origin, for configured page
    /// routes and origin-driven (`Surrogate-Control`) shells alike. Separate
    /// from fragments because shells are typically whole documents; at most
    /// `max_page_bytes`, since the page contains the shell.
    pub max_shell_bytes: usize,
    /// Default per-fragment origin timeout; at most [`MAX_TIMEOUT_MS`].
    pub fragment_timeout_ms: u32,
    /// Deadline for a whole page; at most [`MAX_TIMEOUT_MS`].
    pub page_timeout_ms: u32,
}

impl Limits {
    /// Default [`Limits::max_depth`].
    pub const DEFAULT_MAX_DEPTH: u32 = 10;
    /// Default [`Limits::max_includes`].
    pub const DEFAULT_MAX_INCLUDES: u32 = 40;
    /// Default [`Limits::max_fragment_bytes`] (1 MiB).
    pub const DEFAULT_MAX_FRAGMENT_BYTES: usize = 1024 * 1024;
    /// Default [`Limits::max_page_bytes`] (8 MiB).
    pub const DEFAULT_MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
    /// Default [`Limits::max_shell_bytes`] (4 MiB, or `max_page_bytes` if
    /// that is smaller).
    pub const DEFAULT_MAX_SHELL_BYTES: usize = 4 * 1024 * 1024;
    /// Default [`Limits::fragment_timeout_ms`].
    pub const DEFAULT_FRAGMENT_TIMEOUT_MS: u32 = 5000;
    /// Default [`Limits::page_timeout_ms`].
    pub const DEFAULT_PAGE_TIMEOUT_MS: u32 = 20_000;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: Limits::DEFAULT_MAX_DEPTH,
            max_includes: Limits::DEFAULT_MAX_INCLUDES,
            max_fragment_bytes: Limits::DEFAULT_MAX_FRAGMENT_BYTES,
            max_page_bytes: Limits::DEFAULT_MAX_PAGE_BYTES,
            max_shell_bytes: Limits::DEFAULT_MAX_SHELL_BYTES,
            fragment_timeout_ms: Limits::DEFAULT_FRAGMENT_TIMEOUT_MS,
            page_timeout_ms: Limits::DEFAULT_PAGE_TIMEOUT_MS,
        }
    }
}

/// Which request paths a route covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// Exactly this path (`/fragments/nav`).
    Exact(String),
    /// Every path starting with this prefix. Written `/fragments/*`, held as
    /// `/fragments/` (ends with `/`, no `*`), so `/fragments` itself and
    /// `/fragments-old/x` do not match.
    Prefix(String),
}

impl PathPattern {
    /// Whether `path` (as in [`Url::path`], still percent-encoded) is covered.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }

    /// Parses the configuration spelling; the error is the problem text.
    fn parse(s: &str) -> Result<PathPattern, String> {
        if s.is_empty() {
            return Err("is empty: write \"/\" for the home page or \"/*\" for every path".into());
        }
        if !s.starts_with('/') {
            return Err(format!(
                "must start with \"/\" (a URL path such as \"/{s}\")"
            ));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("contains whitespace or a control character".into());
        }
        if s.contains(['?', '#']) {
            return Err(
                "contains ? or #: patterns match the path only, never the query or fragment".into(),
            );
        }
        if let Some(c) = s
            .chars()
            .find(|c| !c.is_ascii() || "\\\"<>`{}".contains(*c))
        {
            return Err(format!(
                "contains {c:?}, which never appears unescaped in a request path; write it percent-encoded (e.g. %C3%A9 for é)"
            ));
        }
        let (body, pattern) = match s.strip_suffix("/*") {
            Some(prefix) => (prefix, PathPattern::Prefix(format!("{prefix}/"))),
            None => (s, PathPattern::Exact(s.to_owned())),
        };
        if body.contains('*') {
            return Err(
                "* is only allowed as a trailing \"/*\" (prefix match), e.g. \"/fragments/*\""
                    .into(),
            );
        }
        if body.split('/').any(|seg| seg == "." || seg == "..") {
            return Err("contains a \".\" or \"..\" segment: request paths are normalised, so it would never match".into());
        }
        Ok(pattern)
    }

    /// Length of the literal part, for longest-prefix matching.
    fn literal_len(&self) -> usize {
        match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p.len(),
        }
    }
}

impl fmt::Display for PathPattern {
    /// The configuration spelling: `/x` or `/x/*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Soft and hard TTL of cached entries, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Fresh until this many seconds after storing; then served stale while
    /// one background refresh runs. At least 1.
    pub soft: u32,
    /// Gone after this many seconds (the KV `expirationTtl`). At least
    /// [`MIN_HARD_TTL_S`] and at least `soft`.
    pub hard: u32,
}

/// A page route: its responses are shells whose ESI is processed.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRoute {
    /// Position in `pages` (part of cache keys).
    pub id: usize,
    /// Which paths this route covers.
    pub pattern: PathPattern,
    /// `None` (both TTLs absent): the shell is fetched from the origin on
    /// every request.
    pub ttls: Option<Ttls>,
    /// Process ESI only when the origin answers with
    /// `Surrogate-Control: content="ESI/1.0"`; default `false` (always).
    pub require_surrogate_control: bool,
}

/// What a request does when its fragment is not in the cache at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdPolicy {
    /// `"wait"`: one request fetches, the others wait for it up to
    /// `timeout_ms` (`cold_wait_ms`, default `limits.fragment_timeout_ms`).
    Wait {
        /// How long followers wait for the leader's fetch.
        timeout_ms: u32,
    },
    /// `"fail"`: one request fetches in the background, the others get 503
    /// with `Retry-After: retry_after_s` (`retry_after`, default 5).
    Fail {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_s: u32,
    },
}

/// The parts of the client's request a cached fragment varies on; each one
/// becomes part of the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vary {
    /// Cookie names (case-sensitive, as cookies are).
    pub cookies: Vec<String>,
    /// Request header names, lower-cased.
    pub headers: Vec<String>,
    /// Query parameter names of the page request, as they appear in the URL
    /// (not percent-decoded).
    pub query: Vec<String>,
    /// The client's country (`request.cf.country`).
    pub country: bool,
}

impl Vary {
    /// Whether the fragment is the same for every request.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty() && self.headers.is_empty() && self.query.is_empty() && !self.country
    }
}

/// A fragment route: how includes under this pattern are fetched and cached.
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentRoute {
    /// Position in `fragments` (part of cache keys).
    pub id: usize,
    /// Which paths this route covers.
    pub pattern: PathPattern,
    /// Fetched from the origin on every request with the user's `Cookie` and
    /// `Authorization`, never cached, and makes the page `private, no-store`.
    /// Always the same as `cache.is_none()`.
    pub private: bool,
    /// How the route is cached; `None` for a private route, which is never
    /// cached and so has no TTLs, cold policy or early refresh at all.
    pub cache: Option<CacheSettings>,
    /// Origin timeout for this route: `timeout_ms`, or
    /// `limits.fragment_timeout_ms` when not set.
    pub timeout_ms: u32,
    /// What the cached copy varies on; empty for a private route (the
    /// configuration refuses `vary` there). It stays beside `cache` rather
    /// than in it because it is also what the page's `Vary` response header
    /// is built from, and the input callers give to the cache key.
    pub vary: Vary,
    /// Request headers (lower-cased) forwarded to the origin. Default none:
    /// forwarding a header the key does not vary on would let the first
    /// requester's value shape everyone's copy.
    pub forward_headers: Vec<String>,
    /// Forward the origin's `Set-Cookie` to the client when the fragment is
    /// fetched privately. Default `false`: headers must wait for such a
    /// fragment, so turning it on trades time to first byte for cookies.
    pub pass_set_cookie: bool,
}

/// The settings of a cached (not private) fragment route: everything that
/// only means something when there is a cached copy.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Soft and hard TTL.
    pub ttls: Ttls,
    /// Behaviour on a cold cache.
    pub cold: ColdPolicy,
    /// How long 404/410 answers are cached, seconds; 0 disables; at most
    /// the hard TTL. Default [`DEFAULT_NEGATIVE_TTL_S`].
    pub negative_ttl: u32,
    /// Let the origin's `Cache-Control`/`Surrogate-Control` set TTLs.
    pub honor_origin_headers: bool,
    /// XFetch β (≥ 0; 0 disables early refresh). Default [`DEFAULT_XFETCH_BETA`].
    pub xfetch_beta: f64,
    /// TTL spread: each TTL is scaled by a random factor in
    /// `[1 − jitter, 1 + jitter)`, jitter in `[0, 0.5)`. Default [`DEFAULT_JITTER`].
    pub jitter: f64,
    /// When this cookie is present the fragment is treated as private for
    /// that request (signed-in users get their own copy).
    pub private_if_cookie: Option<String>,
}

/// What a request path is, according to the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route<'a> {
    /// A page shell to assemble.
    Page(&'a PageRoute),
    /// A fragment requested directly.
    Fragment(&'a FragmentRoute),
    /// Matches nothing: see [`Config::unknown_routes`].
    Unknown,
}

/// A configuration mistake: which field, what it held, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fragcache config: {field} = {value}: {problem}")]
pub struct ConfigError {
    /// Path of the field, e.g. `fragments[1].hard_ttl`; `FRAGCACHE` for the
    /// configuration as a whole.
    pub field: String,
    /// The offending value as JSON (shortened when long), or `(missing)`.
    pub value: String,
    /// What is wrong and, where possible, how to fix it.
    pub problem: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, value: Option<&Value>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            value: value.map_or_else(|| "(missing)".to_owned(), show),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Validates a configuration given as a JSON value.
    pub fn from_json(v: &Value) -> Result<Config, ConfigError> {
        let mut root = match v {
            Value::Object(map) => Obj::root(map),
            Value::String(_) => {
                return Err(ConfigError::new(
                    ROOT,
                    Some(v),
                    "must be an object, got a string: declare it as a [vars.FRAGCACHE] table in wrangler.toml",
                ))
            }
            other => {
                return Err(ConfigError::new(
                    ROOT,
                    Some(other),
                    format!("must be an object, got {}", kind(other)),
                ))
            }
        };
        let origin = root.key("origin");
        let allowed_origins = root.key("allowed_origins");
        let unknown_routes = root.key("unknown_routes");
        let limits = root.key("limits");
        let pages = root.key("pages");
        let fragments = root.key("fragments");
        let breaker = root.key("breaker");
        let coordinator = root.key("coordinator");
        let warm = root.key("warm");
        let purge = root.key("purge");
        root.finish(TOP_MOVED)?;

        let (origin, origin_url) = parse_origin(&origin)?;
        let mut allowed = vec![origin.clone()];
        for (i, item) in allowed_origins.array()?.iter().enumerate() {
            let field = format!("allowed_origins[{i}]");
            let Value::String(s) = item else {
                return Err(ConfigError::new(
                    field,
                    Some(item),
                    format!(
                        "expected a string such as \"https://static.example.com\", got {}",
                        kind(item)
                    ),
                ));
            };
            let o = Origin::parse(s).map_err(|e| {
                ConfigError::new(
                    &field,
                    Some(item),
                    format!("must be a bare origin such as \"https://static.example.com\": {e}"),
                )
            })?;
            allowed.push(o);
        }

        let unknown_routes = match unknown_routes.get() {
            None => UnknownRoutes::Pass,
            Some(Value::String(s)) if s == "pass" => UnknownRoutes::Pass,
            Some(Value::String(s)) if s == "404" => UnknownRoutes::NotFound,
            Some(Value::Number(_)) => {
                return Err(unknown_routes.err("write \"404\" as a string (or \"pass\")"))
            }
            Some(_) => {
                return Err(unknown_routes
                    .err("must be \"pass\" (proxy to the origin untouched) or \"404\""))
            }
        };

        let limits = match limits.object()? {
            Some(o) => parse_limits(o)?,
            None => Limits::default(),
        };
        let breaker = match breaker.object()? {
            Some(o) => parse_breaker(o)?,
            None => BreakerConfig::default(),
        };
        let coordinator = match coordinator.object()? {
            Some(o) => parse_coordinator(o)?,
            None => CoordinatorSettings::default(),
        };
        let purge = match purge.object()? {
            Some(o) => parse_purge(o)?,
            None => PurgeSettings::default(),
        };

        let mut seen = Vec::new();
        let mut page_routes = Vec::new();
        for (id, item) in pages.array()?.iter().enumerate() {
            let o = Obj::new(item, &format!("pages[{id}]"))?;
            page_routes.push(parse_page(id, o, &mut seen)?);
        }
        let mut fragment_routes = Vec::new();
        for (id, item) in fragments.array()?.iter().enumerate() {
            let o = Obj::new(item, &format!("fragments[{id}]"))?;
            fragment_routes.push(parse_fragment(id, o, &limits, &mut seen)?);
        }
        let warm = match warm.object()? {
            Some(o) => parse_warm(o)?,
            None => WarmSettings::default(),
        };

        let config = Config {
            origin,
            origin_url,
            allow: AllowList::new(allowed),
            unknown_routes,
            limits,
            pages: page_routes,
            fragments: fragment_routes,
            breaker,
            coordinator,
            warm,
            purge,
        };
        for (i, p) in config.warm.paths.iter().enumerate() {
            if !matches!(config.route(warm_path(p).unwrap_or(p)), Route::Page(_)) {
                return Err(ConfigError {
                    field: format!("warm.paths[{i}]"),
                    value: show(&Value::String(p.clone())),
                    problem:
                        "matches no page route: only pages are warmed (their fragments with them)"
                            .into(),
                });
            }
        }
        Ok(config)
    }

    /// Validates a configuration given as JSON text; syntax errors are
    /// reported as a [`ConfigError`] on `FRAGCACHE` with the offending line.
    pub fn from_json_str(s: &str) -> Result<Config, ConfigError> {
        let v: Value = serde_json::from_str(s).map_err(|e| {
            let line = s
                .lines()
                .nth(e.line().saturating_sub(1))
                .unwrap_or("")
                .trim();
            ConfigError {
                field: ROOT.to_owned(),
                value: show(&Value::String(line.to_owned())),
                problem: format!("is not valid JSON: {e}"),
            }
        })?;
        Config::from_json(&v)
    }

    /// The route for a request path: an exact pattern first (page or
    /// fragment; patterns are unique), then the longest matching prefix.
    pub fn route(&self, path: &str) -> Route<'_> {
        let pages = self.pages.iter().map(|p| (&p.pattern, Route::Page(p)));
        let fragments = self
            .fragments
            .iter()
            .map(|f| (&f.pattern, Route::Fragment(f)));
        best_match(pages.chain(fragments), path).unwrap_or(Route::Unknown)
    }

    /// The fragment route for an include's path: an exact pattern first,
    /// then the longest matching prefix.
    pub fn fragment_route(&self, path: &str) -> Option<&FragmentRoute> {
        best_match(self.fragments.iter().map(|f| (&f.pattern, f)), path)
    }
}

/// Exact match if any, else the longest matching prefix (first on a tie,
/// which unique patterns rule out).
fn best_match<'a, T>(routes: impl Iterator<Item = (&'a PathPattern, T)>, path: &str) -> Option<T> {
    let mut best: Option<(usize, T)> = None;
    for (pattern, route) in routes {
        if !pattern.matches(path) {
            continue;
        }
        if let PathPattern::Exact(_) = pattern {
            return Some(route);
        }
        let len = pattern.literal_len();
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, route));
        }
    }
    best.map(|(_, r)| r)
}

/// Keys that exist, but at another level: (key, hint).
const TOP_MOVED: &[(&str, &str)] = &[
    (
        "max_depth",
        "belongs in the limits object: limits.max_depth",
    ),
    (
        "max_includes",
        "belongs in the limits object: limits.max_includes",
    ),
    (
        "max_fragment_bytes",
        "belongs in the limits object: limits.max_fragment_bytes",
    ),
    (
        "max_page_bytes",
        "belongs in the limits object: limits.max_page_bytes",
    ),
    (
        "max_shell_bytes",
        "belongs in the limits object: limits.max_shell_bytes",
    ),
    (
        "fragment_timeout_ms",
        "belongs in the limits object: limits.fragment_timeout_ms",
    ),
    (
        "page_timeout_ms",
        "belongs in the limits object: limits.page_timeout_ms",
    ),
    ("path", "belongs in an entry of pages or fragments"),
    ("soft_ttl", "belongs in an entry of pages or fragments"),
    ("hard_ttl", "belongs in an entry of pages or fragments"),
];
const PAGE_MOVED: &[(&str, &str)] = &[
    ("private", "is only available on fragment routes"),
    ("cold", "is only available on fragment routes"),
    ("vary", "is only available on fragment routes"),
    ("negative_ttl", "is only available on fragment routes"),
    (
        "timeout_ms",
        "is only available on fragment routes; pages use limits.fragment_timeout_ms",
    ),
    ("forward_headers", "is only available on fragment routes"),
];
const FRAGMENT_MOVED: &[(&str, &str)] = &[
    (
        "require_surrogate_control",
        "is only available on page routes",
    ),
    ("cookies", "belongs in the vary object: vary.cookies"),
    ("headers", "belongs in the vary object: vary.headers"),
    ("query", "belongs in the vary object: vary.query"),
    ("country", "belongs in the vary object: vary.country"),
];
/// Allowed range of an integer field, with the reasons shown when it is out
/// of range.
struct Bounds {
    min: u64,
    max: u64,
    unit: &'static str,
    why_min: &'static str,
    why_max: &'static str,
}

const SOFT_TTL: Bounds = Bounds {
    min: 1,
    max: u32::MAX as u64,
    unit: " s",
    why_min: "a soft TTL of 0 would make every entry stale as soon as it is stored",
    why_max: "",
};
// The prose below says 60.
const _: () = assert!(MIN_HARD_TTL_S == 60);
const HARD_TTL: Bounds = Bounds {
    min: MIN_HARD_TTL_S as u64,
    max: u32::MAX as u64,
    unit: " s",
    why_min: "Workers KV refuses an expirationTtl below 60 seconds",
    why_max: "",
};
const NEGATIVE_TTL: Bounds = Bounds {
    min: 0,
    max: u32::MAX as u64,
    unit: " s",
    why_min: "",
    why_max: "",
};
const TIMEOUT: Bounds = Bounds {
    min: 1,
    max: MAX_TIMEOUT_MS as u64,
    unit: " ms",
    why_min: "a timeout of 0 would fail every fetch",
    why_max: "background work (wait_until) ends about 30 s after the response, so a longer wait could never complete",
};
const RETRY_AFTER: Bounds = Bounds {
    min: 1,
    max: MAX_RETRY_AFTER_S as u64,
    unit: " s",
    why_min: "clients would retry at once, while the fragment is still being fetched",
    why_max:
        "a cold fragment is fetched within seconds; clients should not be told to stay away longer",
};
const MAX_DEPTH: Bounds = Bounds {
    min: 0,
    max: MAX_DEPTH_CAP as u64,
    unit: "",
    why_min: "",
    why_max: "deeper nesting is almost certainly an include loop",
};
const MAX_INCLUDES: Bounds = Bounds {
    min: 1,
    max: MAX_INCLUDES_CAP as u64,
    unit: "",
    why_min: "a page could include nothing; use an unknown route (pass) for pages without ESI",
    why_max: "each include may cost a subrequest, and the platform caps subrequests per request",
};
const FRAGMENT_BYTES: Bounds = Bounds {
    min: 1,
    max: MAX_FRAGMENT_BYTES_CAP as u64,
    unit: " bytes",
    why_min: "every fragment would be refused",
    why_max: "a Workers KV value holds at most 25 MiB",
};
const PAGE_BYTES: Bounds = Bounds {
    min: 1,
    max: MAX_PAGE_BYTES_CAP as u64,
    unit: " bytes",
    why_min: "every page would be refused",
    why_max: "a Worker isolate has 128 MB of memory",
};

/// One JSON object being read. Its schema is the keys the parser asks for:
/// [`Obj::key`] records each one, and [`Obj::finish`] refuses every key of
/// the object that was not asked for. There is no separate list of known
/// keys that could drift from what the parser actually reads.
struct Obj<'a> {
    /// `""` at the root, else e.g. `fragments[2].vary`.
    path: String,
    map: &'a Map<String, Value>,
    /// The keys asked for so far, in the order asked.
    read: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>) -> Self {
        Obj {
            path: String::new(),
            map,
            read: Vec::new(),
        }
    }

    fn new(v: &'a Value, path: &str) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path: path.to_owned(),
                map,
                read: Vec::new(),
            }),
            other => Err(ConfigError::new(
                path,
                Some(other),
                format!("expected an object {{ … }}, got {}", kind(other)),
            )),
        }
    }

    /// The field `key` of this object, which becomes a known key. Every key
    /// is asked for before [`Obj::finish`] and validated after it, so a
    /// misspelt key is reported before the errors it causes (`sof_ttl`
    /// before "soft_ttl is required").
    fn key(&mut self, key: &'static str) -> Field<'a> {
        if !self.read.contains(&key) {
            self.read.push(key);
        }
        Field {
            path: if self.path.is_empty() {
                key.to_owned()
            } else {
                format!("{}.{key}", self.path)
            },
            raw: self.map.get(key),
        }
    }

    /// Refuses the first key that was never asked for, pointing at where it
    /// belongs (`moved`: keys valid in another object, with a hint) or at
    /// the closest key that was asked for.
    fn finish(self, moved: &[(&str, &str)]) -> Result<(), ConfigError> {
        debug_assert!(
            moved.iter().all(|(k, _)| !self.read.contains(k)),
            "a key read at {:?} also has a hint that it belongs elsewhere",
            self.path
        );
        let Some((key, value)) = self
            .map
            .iter()
            .find(|(k, _)| !self.read.contains(&k.as_str()))
        else {
            return Ok(());
        };
        let problem = if let Some((_, hint)) = moved.iter().find(|(k, _)| k == key) {
            format!("unknown field here: {hint}")
        } else if let Some(close) = closest(key, &self.read) {
            format!("unknown field; did you mean {close}?")
        } else {
            format!(
                "unknown field; the fields allowed here are {}",
                self.read.join(", ")
            )
        };
        let field = if self.path.is_empty() {
            key.clone()
        } else {
            format!("{}.{key}", self.path)
        };
        Err(ConfigError::new(field, Some(value), problem))
    }
}

/// One key of an [`Obj`]: its path for messages and its value as written.
/// Made by [`Obj::key`], read once the object's keys have been checked.
struct Field<'a> {
    /// E.g. `fragments[2].hard_ttl`.
    path: String,
    /// The value, `null` included; `None` when the key is absent.
    raw: Option<&'a Value>,
}

impl<'a> Field<'a> {
    /// An error about this field, showing its value (or `(missing)`).
    fn err(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.path, self.raw, problem)
    }

    /// The value; `null` counts as absent, so optional fields can be spelt
    /// out with their default.
    fn get(&self) -> Option<&'a Value> {
        self.raw.filter(|v| !v.is_null())
    }

    fn is_set(&self) -> bool {
        self.get().is_some()
    }

    /// An optional nested object.
    fn object(&self) -> Result<Option<Obj<'a>>, ConfigError> {
        self.get().map(|v| Obj::new(v, &self.path)).transpose()
    }

    fn bool(&self) -> Result<Option<bool>, ConfigError> {
        match self.get() {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "false" => Err(self.err(format!(
                "expected true or false, got a string: write {s} without quotes"
            ))),
            Some(other) => Err(self.err(format!("expected true or false, got {}", kind(other)))),
        }
    }

    fn str(&self) -> Result<Option<&'a str>, ConfigError> {
        match self.get() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(format!("expected a string, got {}", kind(other)))),
        }
    }

    /// An optional array; absent means empty.
    fn array(&self) -> Result<&'a [Value], ConfigError> {
        match self.get() {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.err(format!("expected an array [ … ], got {}", kind(other)))),
        }
    }

    /// A non-negative whole number within `b`.
    fn uint(&self, b: &Bounds) -> Result<Option<u64>, ConfigError> {
        let Some(v) = self.get() else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n,
            Value::String(s) => {
                let hint = if s.trim().parse::<f64>().is_ok() {
                    format!(": write {} without quotes", s.trim())
                } else {
                    String::new()
                };
                return Err(self.err(format!(
                    "expected a whole number{}, got a string{hint}",
                    b.unit
                )));
            }
            other => {
                return Err(self.err(format!(
                    "expected a whole number{}, got {}",
                    b.unit,
                    kind(other)
                )))
            }
        };
        let value = if let Some(u) = n.as_u64() {
            u
        } else if n.as_i64().is_some_and(|i| i < 0) {
            return Err(self.err("must not be negative"));
        } else {
            // A float. `30.0` (what some TOML writers emit) is accepted;
            // fractions are not, since TTLs and limits are whole units.
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f < 0.0 {
                return Err(self.err("must not be negative"));
            }
            if !(f.is_finite() && f.fract() == 0.0 && f <= b.max as f64) {
                if f.is_finite() && f.fract() == 0.0 {
                    return Err(self.out_of_range(b, false));
                }
                return Err(self.err(format!("must be a whole number{}", b.unit)));
            }
            f as u64
        };
        if value < b.min {
            return Err(self.out_of_range(b, true));
        }
        if value > b.max {
            return Err(self.out_of_range(b, false));
        }
        Ok(Some(value))
    }

    /// [`Field::uint`] for fields held as `u32`. Every `u32` field's bounds
    /// are within `u32`, so the conversion cannot fail; it is checked anyway.
    fn u32(&self, b: &Bounds) -> Result<Option<u32>, ConfigError> {
        self.uint(b)?
            .map(|v| u32::try_from(v).map_err(|_| self.out_of_range(b, false)))
            .transpose()
    }

    fn usize(&self, b: &Bounds) -> Result<Option<usize>, ConfigError> {
        self.uint(b)?
            .map(|v| usize::try_from(v).map_err(|_| self.out_of_range(b, false)))
            .transpose()
    }

    /// A finite number.
    fn number(&self) -> Result<Option<f64>, ConfigError> {
        match self.get() {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(self.err("must be a finite number")),
            },
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => Err(self.err(format!(
                "expected a number, got a string: write {} without quotes",
                s.trim()
            ))),
            Some(other) => Err(self.err(format!("expected a number, got {}", kind(other)))),
        }
    }

    /// A list of names, each checked and normalised by `check` (which
    /// returns the problem on failure); duplicates are dropped.
    fn names(
        &self,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for (i, item) in self.array()?.iter().enumerate() {
            let field = format!("{}[{i}]", self.path);
            let Value::String(s) = item else {
                return Err(ConfigError::new(
                    field,
                    Some(item),
                    format!("expected a string, got {}", kind(item)),
                ));
            };
            let name = check(s).map_err(|problem| ConfigError::new(&field, Some(item), problem))?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn out_of_range(&self, b: &Bounds, low: bool) -> ConfigError {
        let (bound, edge, why) = if low {
            ("at least", b.min, b.why_min)
        } else {
            ("at most", b.max, b.why_max)
        };
        let mut problem = format!("must be {bound} {edge}{}", b.unit);
        if !why.is_empty() {
            problem.push_str(": ");
            problem.push_str(why);
        }
        self.err(problem)
    }
}

fn parse_origin(origin: &Field<'_>) -> Result<(Origin, Url), ConfigError> {
    let v = match origin.get() {
        None => {
            return Err(origin.err(
                "is required: the URL of the site fragcache sits in front of, e.g. \"http://127.0.0.1:8788\"",
            ))
        }
        Some(v) => v,
    };
    let Value::String(s) = v else {
        return Err(origin.err(format!(
            "expected a string such as \"https://www.example.com\", got {}",
            kind(v)
        )));
    };
    let parsed = Origin::parse(s).map_err(|e| {
        let problem = match e {
            UrlError::NotAnOrigin(_) => "must be a bare origin (scheme://host[:port]) without path, query or fragment: request paths are forwarded to the origin unchanged".to_owned(),
            UrlError::UserInfo => "must not contain user information (user@ or user:password@)".to_owned(),
            UrlError::Relative => "must be an absolute URL including the scheme, such as \"http://127.0.0.1:8788\"".to_owned(),
            other => format!("is not a usable origin: {other}"),
        };
        origin.err(problem)
    })?;
    let url = parsed.root();
    Ok((parsed, url))
}

const THRESHOLD: Bounds = Bounds {
    min: 1,
    max: 100,
    unit: " failures",
    why_min: "the breaker would open before any failure",
    why_max: "an origin failing that often in a row is down",
};
const PROBE_INTERVAL: Bounds = Bounds {
    min: 100,
    max: 60_000,
    unit: " ms",
    why_min: "probing a failing origin more often than 10 times a second is a stampede",
    why_max: "recovery would go unnoticed for over a minute",
};
const COORDINATOR_WAIT: Bounds = Bounds {
    min: 1,
    max: MAX_TIMEOUT_MS as u64,
    unit: " ms",
    why_min: "the coordinator could never answer",
    why_max: "background work (wait_until) ends about 30 s after the response",
};

fn parse_breaker(mut o: Obj<'_>) -> Result<BreakerConfig, ConfigError> {
    let threshold = o.key("threshold");
    let probe_interval_ms = o.key("probe_interval_ms");
    let probe_timeout_ms = o.key("probe_timeout_ms");
    o.finish(&[])?;
    let d = BreakerConfig::default();
    Ok(BreakerConfig {
        threshold: threshold.u32(&THRESHOLD)?.unwrap_or(d.threshold),
        probe_interval_ms: probe_interval_ms
            .u32(&PROBE_INTERVAL)?
            .map_or(d.probe_interval_ms, u64::from),
        probe_timeout_ms: probe_timeout_ms
            .u32(&TIMEOUT)?
            .map_or(d.probe_timeout_ms, u64::from),
    })
}

fn parse_coordinator(mut o: Obj<'_>) -> Result<CoordinatorSettings, ConfigError> {
    let enabled = o.key("enabled");
    let wait_ms = o.key("wait_ms");
    o.finish(&[])?;
    let d = CoordinatorSettings::default();
    Ok(CoordinatorSettings {
        enabled: enabled.bool()?.unwrap_or(d.enabled),
        wait_ms: wait_ms.u32(&COORDINATOR_WAIT)?.unwrap_or(d.wait_ms),
    })
}

const WARM_CONCURRENCY: Bounds = Bounds {
    min: 1,
    max: WarmSettings::MAX_CONCURRENCY as u64,
    unit: " pages",
    why_min: "nothing would be warmed",
    why_max: "a page holds up to six connections; more pages at once only queue",
};

/// The `warm` object; whether each path is a page is checked once the
/// routes are known ([`Config::from_json`]).
fn parse_warm(mut o: Obj<'_>) -> Result<WarmSettings, ConfigError> {
    let paths = o.key("paths");
    let concurrency = o.key("concurrency");
    o.finish(&[])?;
    let items = paths.array()?;
    if items.len() > WarmSettings::MAX_PATHS {
        return Err(paths.err(format!(
            "at most {} paths: each page costs subrequests, and one invocation has a bounded number",
            WarmSettings::MAX_PATHS
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("{}[{i}]", paths.path);
        let Value::String(s) = item else {
            return Err(ConfigError::new(
                field,
                Some(item),
                format!("expected a page path such as \"/\", got {}", kind(item)),
            ));
        };
        warm_path(s).map_err(|problem| ConfigError::new(field, Some(item), problem))?;
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(WarmSettings {
        paths: out,
        concurrency: concurrency
            .u32(&WARM_CONCURRENCY)?
            .unwrap_or(WarmSettings::DEFAULT_CONCURRENCY),
    })
}

/// Checks a page path to warm (`/a/b?x=1`) and returns its path part.
pub fn warm_path(s: &str) -> Result<&str, &'static str> {
    if !s.starts_with('/') || s.starts_with("//") {
        return Err(
            "must be a path on the origin starting with one /, such as \"/\" or \"/news?page=2\"",
        );
    }
    if s.len() > 2048 {
        return Err("must be at most 2048 bytes long");
    }
    if s.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(
            "must not contain spaces, control characters or a #fragment (percent-encode them)",
        );
    }
    Ok(s.split_once('?').map_or(s, |(p, _)| p))
}

const CHECK_INTERVAL: Bounds = Bounds {
    min: 1_000,
    max: 300_000,
    unit: " ms",
    why_min: "one purge log read per second per isolate is plenty",
    why_max: "purges would take over five minutes to reach every isolate",
};

fn parse_purge(mut o: Obj<'_>) -> Result<PurgeSettings, ConfigError> {
    let check_interval_ms = o.key("check_interval_ms");
    o.finish(&[])?;
    Ok(PurgeSettings {
        check_interval_ms: check_interval_ms
            .u32(&CHECK_INTERVAL)?
            .unwrap_or(PurgeSettings::DEFAULT_CHECK_INTERVAL_MS),
    })
}

fn parse_limits(mut o: Obj<'_>) -> Result<Limits, ConfigError> {
    let max_depth = o.key("max_depth");
    let max_includes = o.key("max_includes");
    let max_fragment_bytes = o.key("max_fragment_bytes");
    let max_page_bytes = o.key("max_page_bytes");
    let max_shell_bytes = o.key("max_shell_bytes");
    let fragment_timeout_ms = o.key("fragment_timeout_ms");
    let page_timeout_ms = o.key("page_timeout_ms");
    o.finish(&[])?;

    let d = Limits::default();
    let page_bytes = max_page_bytes
        .usize(&PAGE_BYTES)?
        .unwrap_or(d.max_page_bytes);
    let shell_bytes = match max_shell_bytes.usize(&PAGE_BYTES)? {
        Some(n) if n > page_bytes => {
            return Err(ConfigError {
                field: max_shell_bytes.path,
                value: n.to_string(),
                problem: format!(
                    "a page contains its shell, so max_shell_bytes must be at most limits.max_page_bytes ({page_bytes})"
                ),
            })
        }
        Some(n) => n,
        None => d.max_shell_bytes.min(page_bytes),
    };
    Ok(Limits {
        max_depth: max_depth.u32(&MAX_DEPTH)?.unwrap_or(d.max_depth),
        max_includes: max_includes.u32(&MAX_INCLUDES)?.unwrap_or(d.max_includes),
        max_fragment_bytes: max_fragment_bytes
            .usize(&FRAGMENT_BYTES)?
            .unwrap_or(d.max_fragment_bytes),
        max_page_bytes: page_bytes,
        max_shell_bytes: shell_bytes,
        fragment_timeout_ms: fragment_timeout_ms
            .u32(&TIMEOUT)?
            .unwrap_or(d.fragment_timeout_ms),
        page_timeout_ms: page_timeout_ms.u32(&TIMEOUT)?.unwrap_or(d.page_timeout_ms),
    })
}

/// Reads `path` and checks it against every pattern seen so far (pages and
/// fragments share one namespace, so routing never depends on order).
fn parse_pattern(
    path: &Field<'_>,
    seen: &mut Vec<(PathPattern, String)>,
) -> Result<PathPattern, ConfigError> {
    let Some(s) = path.str()? else {
        return Err(path.err("is required: the URL path this route covers, e.g. \"/fragments/*\""));
    };
    let pattern = PathPattern::parse(s).map_err(|problem| path.err(problem))?;
    if let Some((_, other)) = seen.iter().find(|(p, _)| *p == pattern) {
        return Err(path.err(format!(
            "duplicates {other}: each pattern may appear only once"
        )));
    }
    seen.push((pattern.clone(), path.path.clone()));
    Ok(pattern)
}

/// Reads `soft_ttl`/`hard_ttl`. With `required` false both may be absent.
fn parse_ttls(
    soft_ttl: &Field<'_>,
    hard_ttl: &Field<'_>,
    required: bool,
) -> Result<Option<Ttls>, ConfigError> {
    let soft = soft_ttl.u32(&SOFT_TTL)?;
    let hard = hard_ttl.u32(&HARD_TTL)?;
    match (soft, hard) {
        (None, None) if !required => Ok(None),
        (None, _) => Err(soft_ttl.err(
            if required {
                "is required for a cacheable fragment (seconds fresh), or set \"private\": true"
            } else {
                "is required when hard_ttl is set (or remove both to fetch the page from the origin every time)"
            },
        )),
        (Some(_), None) => Err(hard_ttl.err(format!(
            "is required when soft_ttl is set: how long a stale copy may still be served (at least {MIN_HARD_TTL_S} s)"
        ))),
        (Some(soft), Some(hard)) if hard < soft => Err(hard_ttl.err(
            format!("must be at least soft_ttl ({soft} s): an entry cannot turn stale after it has expired"),
        )),
        (Some(soft), Some(hard)) => Ok(Some(Ttls { soft, hard })),
    }
}

fn parse_page(
    id: usize,
    mut o: Obj<'_>,
    seen: &mut Vec<(PathPattern, String)>,
) -> Result<PageRoute, ConfigError> {
    let path = o.key("path");
    let soft_ttl = o.key("soft_ttl");
    let hard_ttl = o.key("hard_ttl");
    let require_surrogate_control = o.key("require_surrogate_control");
    o.finish(PAGE_MOVED)?;
    Ok(PageRoute {
        id,
        pattern: parse_pattern(&path, seen)?,
        ttls: parse_ttls(&soft_ttl, &hard_ttl, false)?,
        require_surrogate_control: require_surrogate_control.bool()?.unwrap_or(false),
    })
}

/// The keys of a fragment route that only mean something for a cached
/// route: they become its [`CacheSettings`] (and `vary`), and a private
/// route refuses them.
struct CacheFields<'a> {
    soft_ttl: Field<'a>,
    hard_ttl: Field<'a>,
    cold: Field<'a>,
    cold_wait_ms: Field<'a>,
    retry_after: Field<'a>,
    negative_ttl: Field<'a>,
    honor_origin_headers: Field<'a>,
    xfetch_beta: Field<'a>,
    jitter: Field<'a>,
    vary: Field<'a>,
    private_if_cookie: Field<'a>,
}

impl<'a> CacheFields<'a> {
    /// The first of these fields that is set. The destructuring lists every
    /// field, so one added to the struct cannot be forgotten here.
    fn first_set(&self) -> Option<&Field<'a>> {
        let CacheFields {
            soft_ttl,
            hard_ttl,
            cold,
            cold_wait_ms,
            retry_after,
            negative_ttl,
            honor_origin_headers,
            xfetch_beta,
            jitter,
            vary,
            private_if_cookie,
        } = self;
        [
            soft_ttl,
            hard_ttl,
            cold,
            cold_wait_ms,
            retry_after,
            negative_ttl,
            honor_origin_headers,
            xfetch_beta,
            jitter,
            vary,
            private_if_cookie,
        ]
        .into_iter()
        .find(|f| f.is_set())
    }
}

fn parse_fragment(
    id: usize,
    mut o: Obj<'_>,
    limits: &Limits,
    seen: &mut Vec<(PathPattern, String)>,
) -> Result<FragmentRoute, ConfigError> {
    // Asked for in the order they are listed when a key is unknown.
    let path = o.key("path");
    let soft_ttl = o.key("soft_ttl");
    let hard_ttl = o.key("hard_ttl");
    let private = o.key("private");
    let cold = o.key("cold");
    let cold_wait_ms = o.key("cold_wait_ms");
    let retry_after = o.key("retry_after");
    let negative_ttl = o.key("negative_ttl");
    let honor_origin_headers = o.key("honor_origin_headers");
    let xfetch_beta = o.key("xfetch_beta");
    let jitter = o.key("jitter");
    let timeout_ms = o.key("timeout_ms");
    let vary = o.key("vary");
    let forward_headers = o.key("forward_headers");
    let private_if_cookie = o.key("private_if_cookie");
    let pass_set_cookie = o.key("pass_set_cookie");
    o.finish(FRAGMENT_MOVED)?;
    let c = CacheFields {
        soft_ttl,
        hard_ttl,
        cold,
        cold_wait_ms,
        retry_after,
        negative_ttl,
        honor_origin_headers,
        xfetch_beta,
        jitter,
        vary,
        private_if_cookie,
    };

    let pattern = parse_pattern(&path, seen)?;
    let private = private.bool()?.unwrap_or(false);
    let timeout_ms = timeout_ms
        .u32(&TIMEOUT)?
        .unwrap_or(limits.fragment_timeout_ms);
    let forwarded = forward_headers.names(forward_header)?;
    let pass_set_cookie = pass_set_cookie.bool()?.unwrap_or(false);

    if private {
        // Settings for a cache that a private fragment never uses are most
        // likely a fragment marked private by mistake: say so.
        if let Some(f) = c.first_set() {
            return Err(f.err(
                "has no effect on a private fragment (private fragments are never cached): remove it, or set \"private\": false",
            ));
        }
        return Ok(FragmentRoute {
            id,
            pattern,
            private,
            cache: None,
            timeout_ms,
            vary: Vary::default(),
            forward_headers: forwarded,
            pass_set_cookie,
        });
    }

    let ttls = match parse_ttls(&c.soft_ttl, &c.hard_ttl, true)? {
        Some(t) => t,
        None => return Err(c.soft_ttl.err("is required for a cacheable fragment")),
    };

    let cold = match c.cold.str()?.unwrap_or("wait") {
        "wait" => {
            if c.retry_after.is_set() {
                return Err(c.retry_after.err("only applies with \"cold\": \"fail\""));
            }
            ColdPolicy::Wait {
                timeout_ms: c
                    .cold_wait_ms
                    .u32(&TIMEOUT)?
                    .unwrap_or(limits.fragment_timeout_ms),
            }
        }
        "fail" => {
            if c.cold_wait_ms.is_set() {
                return Err(c.cold_wait_ms.err("only applies with \"cold\": \"wait\""));
            }
            ColdPolicy::Fail {
                retry_after_s: c
                    .retry_after
                    .u32(&RETRY_AFTER)?
                    .unwrap_or(DEFAULT_RETRY_AFTER_S),
            }
        }
        _ => {
            return Err(c.cold.err(
                "must be \"wait\" (requests wait for the one origin fetch) or \"fail\" (they get 503 with Retry-After meanwhile)",
            ))
        }
    };

    let negative_ttl = c
        .negative_ttl
        .u32(&NEGATIVE_TTL)?
        .unwrap_or(DEFAULT_NEGATIVE_TTL_S);
    if negative_ttl > ttls.hard {
        return Err(c
            .negative_ttl
            .err(format!("must not exceed hard_ttl ({} s)", ttls.hard)));
    }

    let xfetch_beta = c.xfetch_beta.number()?.unwrap_or(DEFAULT_XFETCH_BETA);
    if xfetch_beta < 0.0 {
        return Err(c
            .xfetch_beta
            .err("must be 0 or more (0 disables early refresh, 1 is the usual value)"));
    }
    let jitter = c.jitter.number()?.unwrap_or(DEFAULT_JITTER);
    if !(0.0..MAX_JITTER).contains(&jitter) {
        return Err(c.jitter.err(
            "must be at least 0 and below 0.5 (a fraction of the TTL; 0.1 spreads expiries by up to 10%)",
        ));
    }

    let vary = match c.vary.object()? {
        Some(v) => parse_vary(v)?,
        None => Vary::default(),
    };

    // A forwarded header shapes the origin's answer; if the key did not vary
    // on it, the first requester's value would decide everyone's copy.
    for (i, item) in forward_headers.array()?.iter().enumerate() {
        let name = item
            .as_str()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !vary.headers.contains(&name) {
            let vary_field = format!("{}.headers", c.vary.path);
            return Err(ConfigError::new(
                format!("{}[{i}]", forward_headers.path),
                Some(item),
                format!(
                    "a forwarded header shapes the response, so the cached copy must vary on it: add \"{name}\" to {vary_field}, or mark the route private"
                ),
            ));
        }
    }

    let private_if_cookie = match c.private_if_cookie.str()? {
        Some(name) => Some(cookie_name(name).map_err(|problem| c.private_if_cookie.err(problem))?),
        None => None,
    };

    Ok(FragmentRoute {
        id,
        pattern,
        private,
        cache: Some(CacheSettings {
            ttls,
            cold,
            negative_ttl,
            honor_origin_headers: c.honor_origin_headers.bool()?.unwrap_or(false),
            xfetch_beta,
            jitter,
            private_if_cookie,
        }),
        timeout_ms,
        vary,
        forward_headers: forwarded,
        pass_set_cookie,
    })
}

fn parse_vary(mut o: Obj<'_>) -> Result<Vary, ConfigError> {
    let cookies = o.key("cookies");
    let headers = o.key("headers");
    let query = o.key("query");
    let country = o.key("country");
    o.finish(&[])?;
    Ok(Vary {
        cookies: cookies.names(cookie_name)?,
        headers: headers.names(vary_header)?,
        query: query.names(query_name)?,
        country: country.bool()?.unwrap_or(false),
    })
}
/// RFC 9110 `token`: what header and cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_name(s: &str) -> Result<String, String> {
    if is_token(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)".into())
    }
}

fn forward_header(s: &str) -> Result<String, String> {
    let name = header_name(s)?;
    match name.as_str() {
        "cookie" | "authorization" => Err(format!(
            "{name} is never forwarded for cacheable fragments, since one user's credentials would shape everyone's copy; private fragments (private: true, or private_if_cookie) get the user's Cookie and Authorization automatically"
        )),
        "host" => Err("host is set from the origin URL and cannot be forwarded".into()),
        n if UNFORWARDABLE_HEADERS.contains(&n) => Err(format!(
            "{name} is a hop-by-hop header: it describes one connection and is never forwarded"
        )),
        _ => Ok(name),
    }
}

fn vary_header(s: &str) -> Result<String, String> {
    let name = header_name(s)?;
    match name.as_str() {
        "cookie" => Err("varying on the whole Cookie header gives every user their own copy; list single cookies in vary.cookies".into()),
        "authorization" => Err("varying on Authorization would put credentials into cache keys; make the fragment private instead".into()),
        _ => Ok(name),
    }
}

fn cookie_name(s: &str) -> Result<String, String> {
    if is_token(s) {
        Ok(s.to_owned())
    } else {
        Err("is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)".into())
    }
}

fn query_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=#?".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("is not a valid query parameter name (printable ASCII without & = # ?; percent-encode anything else as it appears in the URL)".into())
    }
}

/// A JSON value for an error message, shortened when long.
fn show(v: &Value) -> String {
    const MAX: usize = 120;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The known key closest to `key` (case-insensitive, `-` read as `_`), if
/// within edit distance 2 and not a rewrite of most of a short key.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if key.len() > 64 {
        return None;
    }
    let key = key.to_ascii_lowercase().replace('-', "_");
    let len = key.chars().count();
    known
        .iter()
        .map(|k| (edit_distance(&key, k), *k))
        .filter(|(d, _)| *d <= 2 && *d < len)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{ "origin": "http://127.0.0.1:8788" }"#;

    /// Parses `json`, expecting an error.
    #[test]
    fn breaker_and_coordinator_settings_are_validated() {
        let c = Config::from_json_str(
            r#"{ "origin": "http://o.test", "breaker": { "threshold": 5, "probe_interval_ms": 500 },
                 "coordinator": { "enabled": false, "wait_ms": 250 } }"#,
        )
        .unwrap();
        assert_eq!(c.breaker.threshold, 5);
        assert_eq!(c.breaker.probe_interval_ms, 500);
        assert!(!c.coordinator.enabled);
        assert_eq!(c.coordinator.wait_ms, 250);
        let e = error(r#"{ "origin": "http://o.test", "breaker": { "probe_interval_ms": 10 } }"#);
        assert_error(&e, "breaker.probe_interval_ms", "10", "at least 100");
        let e = error(r#"{ "origin": "http://o.test", "breaker": { "treshold": 2 } }"#);
        assert_error(&e, "breaker.treshold", "2", "did you mean threshold?");
        let e = error(r#"{ "origin": "http://o.test", "coordinator": { "enabled": "yes" } }"#);
        assert_error(&e, "coordinator.enabled", "\"yes\"", "true or false");
    }

    #[test]
    fn warm_settings_are_validated() {
        let c = Config::from_json_str(
            r#"{ "origin": "http://o.test", "pages": [ { "path": "/" }, { "path": "/news/*" } ],
                 "warm": { "paths": ["/", "/news/a?page=2", "/"], "concurrency": 2 } }"#,
        )
        .unwrap();
        assert_eq!(c.warm.paths, ["/", "/news/a?page=2"]);
        assert_eq!(c.warm.concurrency, 2);
        let d = Config::from_json_str(r#"{ "origin": "http://o.test" }"#).unwrap();
        assert_eq!(d.warm, WarmSettings::default());
        let base = r#"{ "origin": "http://o.test", "pages": [ { "path": "/" } ], "fragments": [ { "path": "/f/*", "private": true } ], "warm": "#;
        let e = error(&format!(r#"{base}{{ "paths": ["/f/x"] }} }}"#));
        assert_error(&e, "warm.paths[0]", "\"/f/x\"", "no page route");
        let e = error(&format!(r#"{base}{{ "paths": ["news"] }} }}"#));
        assert_error(&e, "warm.paths[0]", "\"news\"", "starting with one /");
        let e = error(&format!(r#"{base}{{ "paths": ["/", 3] }} }}"#));
        assert_error(&e, "warm.paths[1]", "3", "page path");
        let e = error(&format!(r#"{base}{{ "concurrency": 0 }} }}"#));
        assert_error(&e, "warm.concurrency", "0", "at least 1");
        let e = error(&format!(r#"{base}{{ "concurency": 2 }} }}"#));
        assert_error(&e, "warm.concurency", "2", "did you mean concurrency");
        let many: Vec<String> = (0..=WarmSettings::MAX_PATHS)
            .map(|i| format!("\"/?p={i}\""))
            .collect();
        let e = error(&format!(r#"{base}{{ "paths": [{}] }} }}"#, many.join(",")));
        assert_eq!(e.field, "warm.paths");
    }

    fn error(json: &str) -> ConfigError {
        match Config::from_json_str(json) {
            Ok(c) => panic!("expected an error for {json}, got {c:?}"),
            Err(e) => e,
        }
    }

    /// A configuration with one fragment route made of `fields`.
    fn fragment(fields: &str) -> String {
        format!(
            r#"{{ "origin": "http://o.test", "fragments": [ {{ "path": "/f/*", {fields} }} ] }}"#
        )
    }

    /// A configuration with one cacheable fragment route plus `fields`.
    fn cached(fields: &str) -> String {
        fragment(&format!(r#""soft_ttl": 30, "hard_ttl": 3600, {fields}"#))
    }

    /// The cache settings of a route that must be cached.
    fn cache(f: &FragmentRoute) -> &CacheSettings {
        f.cache.as_ref().expect("a cached route")
    }

    fn assert_error(e: &ConfigError, field: &str, value: &str, problem_contains: &str) {
        assert_eq!(e.field, field, "{e}");
        assert_eq!(e.value, value, "{e}");
        assert!(
            e.problem.contains(problem_contains),
            "problem {:?} should mention {problem_contains:?}",
            e.problem
        );
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::from_json_str(MINIMAL).unwrap();
        assert_eq!(c.origin.to_string(), "http://127.0.0.1:8788");
        assert_eq!(c.origin_url.to_string(), "http://127.0.0.1:8788/");
        assert_eq!(c.allow.origins(), std::slice::from_ref(&c.origin));
        assert_eq!(c.unknown_routes, UnknownRoutes::Pass);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_depth, 10);
        assert_eq!(c.limits.max_includes, 40);
        assert_eq!(c.limits.max_fragment_bytes, 1_048_576);
        assert_eq!(c.limits.max_page_bytes, 8_388_608);
        assert_eq!(c.limits.fragment_timeout_ms, 5000);
        assert_eq!(c.limits.page_timeout_ms, 20_000);
        assert!(c.pages.is_empty());
        assert!(c.fragments.is_empty());
        assert_eq!(c.route("/"), Route::Unknown);
    }

    #[test]
    fn fragment_defaults() {
        let c = Config::from_json_str(&cached(r#""private": false"#)).unwrap();
        let f = &c.fragments[0];
        assert_eq!(f.id, 0);
        assert_eq!(f.pattern, PathPattern::Prefix("/f/".into()));
        assert_eq!(
            cache(f).ttls,
            Ttls {
                soft: 30,
                hard: 3600
            }
        );
        assert!(!f.private);
        assert_eq!(cache(f).cold, ColdPolicy::Wait { timeout_ms: 5000 });
        assert_eq!(cache(f).negative_ttl, DEFAULT_NEGATIVE_TTL_S);
        assert!(!cache(f).honor_origin_headers);
        assert_eq!(cache(f).xfetch_beta, 1.0);
        assert_eq!(cache(f).jitter, 0.1);
        assert_eq!(f.timeout_ms, 5000);
        assert!(f.vary.is_empty());
        assert!(f.forward_headers.is_empty());
        assert_eq!(cache(f).private_if_cookie, None);
        assert!(!f.pass_set_cookie);
    }

    #[test]
    fn timeouts_default_to_the_limits() {
        let json = r#"{ "origin": "http://o.test", "limits": { "fragment_timeout_ms": 1234 },
            "fragments": [ { "path": "/a", "soft_ttl": 1, "hard_ttl": 60 },
                           { "path": "/b", "soft_ttl": 1, "hard_ttl": 60, "timeout_ms": 99, "cold_wait_ms": 77 },
                           { "path": "/c", "private": true } ] }"#;
        let c = Config::from_json_str(json).unwrap();
        assert_eq!(c.fragments[0].timeout_ms, 1234);
        assert_eq!(
            cache(&c.fragments[0]).cold,
            ColdPolicy::Wait { timeout_ms: 1234 }
        );
        assert_eq!(c.fragments[1].timeout_ms, 99);
        assert_eq!(
            cache(&c.fragments[1]).cold,
            ColdPolicy::Wait { timeout_ms: 77 }
        );
        assert_eq!(c.fragments[2].timeout_ms, 1234);
        assert_eq!(c.fragments[2].cache, None);
        assert!(c.fragments[2].private);
    }

    fn module_doc_example() -> String {
        crate::testing::config_doc_example()
    }

    /// The example in the module doc, with every field set.
    #[test]
    fn full_example_from_module_doc() {
        let json = module_doc_example();
        let c = Config::from_json_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));

        assert_eq!(c.origin.to_string(), "http://127.0.0.1:8788");
        let allowed: Vec<String> = c.allow.origins().iter().map(|o| o.to_string()).collect();
        assert_eq!(
            allowed,
            ["http://127.0.0.1:8788", "https://static.example.com"]
        );
        assert_eq!(c.unknown_routes, UnknownRoutes::Pass);
        assert_eq!(c.breaker, BreakerConfig::default());
        assert_eq!(c.coordinator, CoordinatorSettings::default());
        assert_eq!(
            c.limits,
            Limits {
                max_depth: 3,
                max_includes: 40,
                max_fragment_bytes: 1_048_576,
                max_page_bytes: 8_388_608,
                max_shell_bytes: 4_194_304,
                fragment_timeout_ms: 5000,
                page_timeout_ms: 20_000,
            }
        );

        assert_eq!(
            c.pages,
            vec![
                PageRoute {
                    id: 0,
                    pattern: PathPattern::Exact("/".into()),
                    ttls: Some(Ttls {
                        soft: 30,
                        hard: 3600
                    }),
                    require_surrogate_control: false,
                },
                PageRoute {
                    id: 1,
                    pattern: PathPattern::Prefix("/account/".into()),
                    ttls: None,
                    require_surrogate_control: true,
                },
            ]
        );

        assert_eq!(
            c.fragments[0],
            FragmentRoute {
                id: 0,
                pattern: PathPattern::Prefix("/fragments/".into()),
                private: false,
                cache: Some(CacheSettings {
                    ttls: Ttls {
                        soft: 30,
                        hard: 3600
                    },
                    cold: ColdPolicy::Wait { timeout_ms: 3000 },
                    negative_ttl: 10,
                    honor_origin_headers: true,
                    xfetch_beta: 1.0,
                    jitter: 0.1,
                    private_if_cookie: Some("session".into()),
                }),
                timeout_ms: 4000,
                vary: Vary {
                    cookies: vec!["currency".into()],
                    headers: vec!["accept-language".into()],
                    query: vec!["page".into()],
                    country: true,
                },
                forward_headers: vec!["accept-language".into()],
                pass_set_cookie: true,
            }
        );
        assert_eq!(
            cache(&c.fragments[1]).cold,
            ColdPolicy::Fail { retry_after_s: 2 }
        );
        assert_eq!(cache(&c.fragments[1]).ttls, Ttls { soft: 5, hard: 60 });
        assert_eq!(c.fragments[1].timeout_ms, 5000);
        let cart = &c.fragments[2];
        assert!(cart.private);
        assert_eq!(cart.cache, None);
        assert_eq!(cart.timeout_ms, 2000);
        assert_eq!(cart.forward_headers, ["x-request-id"]);
        assert!(!cart.pass_set_cookie);

        assert_eq!(c.route("/"), Route::Page(&c.pages[0]));
        assert_eq!(c.route("/account/orders"), Route::Page(&c.pages[1]));
        assert_eq!(c.route("/fragments/nav"), Route::Fragment(&c.fragments[0]));
        assert_eq!(
            c.route("/fragments/prices"),
            Route::Fragment(&c.fragments[1])
        );
        assert_eq!(c.route("/fragments/cart"), Route::Fragment(&c.fragments[2]));
        assert_eq!(c.route("/about"), Route::Unknown);
    }

    #[test]
    fn routing_prefers_exact_then_longest_prefix() {
        let json = r#"{ "origin": "http://o.test",
            "pages": [ { "path": "/*" }, { "path": "/shop/*" }, { "path": "/fragments/special" } ],
            "fragments": [
                { "path": "/fragments/*", "soft_ttl": 1, "hard_ttl": 60 },
                { "path": "/fragments/user/*", "private": true },
                { "path": "/fragments/user/avatar", "soft_ttl": 1, "hard_ttl": 60 }
            ] }"#;
        let c = Config::from_json_str(json).unwrap();
        let (p, f) = (&c.pages, &c.fragments);
        assert_eq!(c.route("/"), Route::Page(&p[0]));
        assert_eq!(c.route("/shop"), Route::Page(&p[0]));
        assert_eq!(c.route("/shop/"), Route::Page(&p[1]));
        assert_eq!(c.route("/shop/cart"), Route::Page(&p[1]));
        // A longer fragment prefix beats the catch-all page prefix.
        assert_eq!(c.route("/fragments/nav"), Route::Fragment(&f[0]));
        assert_eq!(c.route("/fragments/special"), Route::Page(&p[2]));
        assert_eq!(c.route("/fragments/user/name"), Route::Fragment(&f[1]));
        assert_eq!(c.route("/fragments/user/avatar"), Route::Fragment(&f[2]));

        assert_eq!(c.fragment_route("/fragments/nav").map(|r| r.id), Some(0));
        assert_eq!(
            c.fragment_route("/fragments/special").map(|r| r.id),
            Some(0)
        );
        assert_eq!(c.fragment_route("/fragments/user/x").map(|r| r.id), Some(1));
        assert_eq!(
            c.fragment_route("/fragments/user/avatar").map(|r| r.id),
            Some(2)
        );
        assert_eq!(c.fragment_route("/fragments"), None);
        assert_eq!(c.fragment_route("/shop/x"), None);
    }

    #[test]
    fn pattern_matching_and_display() {
        let exact = PathPattern::parse("/a/b").unwrap();
        assert!(exact.matches("/a/b"));
        assert!(!exact.matches("/a/b/"));
        assert!(!exact.matches("/a/bc"));
        assert_eq!(exact.to_string(), "/a/b");
        let prefix = PathPattern::parse("/a/*").unwrap();
        assert!(prefix.matches("/a/"));
        assert!(prefix.matches("/a/b/c"));
        assert!(!prefix.matches("/a"));
        assert!(!prefix.matches("/ab/c"));
        assert_eq!(prefix.to_string(), "/a/*");
        let all = PathPattern::parse("/*").unwrap();
        assert!(all.matches("/"));
        assert!(all.matches("/anything"));
        assert_eq!(all, PathPattern::Prefix("/".into()));
    }

    #[test]
    fn config_error_display() {
        let e = error(&cached(r#""jitter": 0.7"#));
        assert_eq!(
            e.to_string(),
            format!(
                "invalid fragcache config: fragments[0].jitter = 0.7: {}",
                e.problem
            )
        );
    }

    // ---- one test per kind of mistake ----

    #[test]
    fn root_not_an_object() {
        assert_error(
            &error("[1, 2]"),
            "FRAGCACHE",
            "[1,2]",
            "must be an object, got an array",
        );
        assert_error(&error("42"), "FRAGCACHE", "42", "got a number");
        assert_error(
            &error(r#""{\"origin\": 1}""#),
            "FRAGCACHE",
            r#""{\"origin\": 1}""#,
            "[vars.FRAGCACHE]",
        );
        let e = Config::from_json(&Value::Null).unwrap_err();
        assert_error(&e, "FRAGCACHE", "null", "must be an object");
    }

    #[test]
    fn json_syntax_error() {
        let e = error("{\n  \"origin\": \"http://o.test\",\n  \"pages\": [ }\n}");
        assert_eq!(e.field, "FRAGCACHE");
        assert_eq!(e.value, r#""\"pages\": [ }""#);
        assert!(
            e.problem.contains("not valid JSON") && e.problem.contains("line 3"),
            "{e}"
        );
        assert_error(&error(""), "FRAGCACHE", r#""""#, "not valid JSON");
    }

    #[test]
    fn missing_origin() {
        assert_error(&error("{}"), "origin", "(missing)", "is required");
        assert_error(
            &error(r#"{ "origin": null }"#),
            "origin",
            "null",
            "is required",
        );
    }

    #[test]
    fn origin_not_a_string() {
        assert_error(
            &error(r#"{ "origin": 8788 }"#),
            "origin",
            "8788",
            "expected a string",
        );
        assert_error(
            &error(r#"{ "origin": { "host": "x" } }"#),
            "origin",
            r#"{"host":"x"}"#,
            "got an object",
        );
    }

    #[test]
    fn origin_not_http() {
        assert_error(
            &error(r#"{ "origin": "ftp://x" }"#),
            "origin",
            r#""ftp://x""#,
            "only http and https",
        );
        assert_error(
            &error(r#"{ "origin": "127.0.0.1:8788" }"#),
            "origin",
            r#""127.0.0.1:8788""#,
            "scheme",
        );
        assert_error(
            &error(r#"{ "origin": "/x" }"#),
            "origin",
            r#""/x""#,
            "absolute URL",
        );
    }

    #[test]
    fn origin_with_path_or_userinfo() {
        assert_error(
            &error(r#"{ "origin": "http://o.test/app" }"#),
            "origin",
            r#""http://o.test/app""#,
            "bare origin",
        );
        assert_error(
            &error(r#"{ "origin": "http://o.test?x" }"#),
            "origin",
            r#""http://o.test?x""#,
            "bare origin",
        );
        assert_error(
            &error(r#"{ "origin": "http://u:p@o.test" }"#),
            "origin",
            r#""http://u:p@o.test""#,
            "user information",
        );
        assert_error(
            &error(r#"{ "origin": "http://2130706433" }"#),
            "origin",
            r#""http://2130706433""#,
            "invalid host",
        );
        // A trailing slash is fine.
        assert!(Config::from_json_str(r#"{ "origin": "https://O.test:443/" }"#).is_ok());
    }

    #[test]
    fn unknown_keys_with_suggestions() {
        let e = error(&fragment(r#""sof_ttl": 30, "hard_ttl": 60"#));
        assert_error(&e, "fragments[0].sof_ttl", "30", "did you mean soft_ttl?");
        let e = error(r#"{ "origin": "http://o.test", "orign": "x" }"#);
        assert_error(&e, "orign", r#""x""#, "did you mean origin?");
        let e = error(r#"{ "origin": "http://o.test", "limits": { "max-depth": 3 } }"#);
        assert_error(&e, "limits.max-depth", "3", "did you mean max_depth?");
        let e =
            error(r#"{ "origin": "http://o.test", "pages": [ { "path": "/", "softTtl": 3 } ] }"#);
        assert_error(&e, "pages[0].softTtl", "3", "did you mean soft_ttl?");
        let e = error(&cached(r#""vary": { "cookie": ["a"] }"#));
        assert_error(
            &e,
            "fragments[0].vary.cookie",
            r#"["a"]"#,
            "did you mean cookies?",
        );
        // Far from everything: list what is allowed instead.
        let e = error(r#"{ "origin": "http://o.test", "limits": { "banana": 1 } }"#);
        assert_error(
            &e,
            "limits.banana",
            "1",
            "the fields allowed here are max_depth, max_includes",
        );
        assert!(!e.problem.contains("did you mean"));
    }

    /// The schema of every object, as the parser reads it: a key far from
    /// all known ones lists them, in this order.
    #[test]
    fn unknown_keys_list_every_known_key() {
        let cases = [
            (
                r#"{ "origin": "http://o.test", "zzzzz": 1 }"#.to_owned(),
                "zzzzz",
                "origin, allowed_origins, unknown_routes, limits, pages, fragments, breaker, coordinator, warm, purge",
            ),
            (
                r#"{ "origin": "http://o.test", "limits": { "zzzzz": 1 } }"#.to_owned(),
                "limits.zzzzz",
                "max_depth, max_includes, max_fragment_bytes, max_page_bytes, max_shell_bytes, fragment_timeout_ms, page_timeout_ms",
            ),
            (
                r#"{ "origin": "http://o.test", "pages": [ { "path": "/", "zzzzz": 1 } ] }"#.to_owned(),
                "pages[0].zzzzz",
                "path, soft_ttl, hard_ttl, require_surrogate_control",
            ),
            (
                fragment(r#""zzzzz": 1"#),
                "fragments[0].zzzzz",
                "path, soft_ttl, hard_ttl, private, cold, cold_wait_ms, retry_after, negative_ttl, honor_origin_headers, xfetch_beta, jitter, timeout_ms, vary, forward_headers, private_if_cookie, pass_set_cookie",
            ),
            (
                cached(r#""vary": { "zzzzz": 1 }"#),
                "fragments[0].vary.zzzzz",
                "cookies, headers, query, country",
            ),
        ];
        for (json, field, known) in cases {
            let e = error(&json);
            assert_error(&e, field, "1", "unknown field");
            assert_eq!(
                e.problem,
                format!("unknown field; the fields allowed here are {known}")
            );
        }
    }

    /// Unknown keys are checked before any value of the same object, so a
    /// typo is reported rather than the error it causes.
    #[test]
    fn unknown_keys_come_before_value_errors() {
        let e = error(&fragment(r#""soft_ttl": "x", "hard_ttl": 1, "jiter": 7"#));
        assert_error(&e, "fragments[0].jiter", "7", "did you mean jitter?");
        let e = error(r#"{ "origin": 1, "limits": { "max_depth": 99 }, "fragmnets": [] }"#);
        assert_error(&e, "fragmnets", "[]", "did you mean fragments?");
        let e = error(&fragment(
            r#""private": true, "soft_ttl": 30, "jitterr": 0"#,
        ));
        assert_error(&e, "fragments[0].jitterr", "0", "did you mean jitter?");
        // A key valid in a nested object is checked when that object is read.
        let e = error(&cached(r#""jitter": 9, "vary": { "countyr": true }"#));
        assert_error(&e, "fragments[0].jitter", "9", "below 0.5");
    }

    #[test]
    fn unknown_keys_at_the_wrong_level() {
        let e = error(r#"{ "origin": "http://o.test", "max_depth": 3 }"#);
        assert_error(&e, "max_depth", "3", "limits.max_depth");
        let e = error(&cached(r#""cookies": ["a"]"#));
        assert_error(&e, "fragments[0].cookies", r#"["a"]"#, "vary.cookies");
        let e = error(
            r#"{ "origin": "http://o.test", "pages": [ { "path": "/", "private": true } ] }"#,
        );
        assert_error(
            &e,
            "pages[0].private",
            "true",
            "only available on fragment routes",
        );
        let e = error(&cached(r#""require_surrogate_control": true"#));
        assert_error(
            &e,
            "fragments[0].require_surrogate_control",
            "true",
            "only available on page routes",
        );
    }

    #[test]
    fn wrong_types() {
        let e = error(&fragment(r#""soft_ttl": "30", "hard_ttl": 60"#));
        assert_error(
            &e,
            "fragments[0].soft_ttl",
            r#""30""#,
            "write 30 without quotes",
        );
        let e = error(&fragment(r#""soft_ttl": -5, "hard_ttl": 60"#));
        assert_error(&e, "fragments[0].soft_ttl", "-5", "must not be negative");
        let e = error(&fragment(r#""soft_ttl": 1.5, "hard_ttl": 60"#));
        assert_error(&e, "fragments[0].soft_ttl", "1.5", "whole number");
        let e = error(&fragment(r#""soft_ttl": -1.5, "hard_ttl": 60"#));
        assert_error(&e, "fragments[0].soft_ttl", "-1.5", "must not be negative");
        let e = error(&fragment(r#""soft_ttl": true, "hard_ttl": 60"#));
        assert_error(&e, "fragments[0].soft_ttl", "true", "got a boolean");
        let e = error(&cached(r#""private": "false""#));
        assert_error(&e, "fragments[0].private", r#""false""#, "without quotes");
        let e = error(&cached(r#""jitter": "0.1""#));
        assert_error(&e, "fragments[0].jitter", r#""0.1""#, "without quotes");
        let e = error(r#"{ "origin": "http://o.test", "pages": {} }"#);
        assert_error(&e, "pages", "{}", "expected an array");
        let e = error(r#"{ "origin": "http://o.test", "pages": [ "/" ] }"#);
        assert_error(&e, "pages[0]", r#""/""#, "expected an object");
        let e = error(r#"{ "origin": "http://o.test", "limits": [] }"#);
        assert_error(&e, "limits", "[]", "expected an object");
        let e = error(&cached(r#""forward_headers": "accept-language""#));
        assert_error(
            &e,
            "fragments[0].forward_headers",
            r#""accept-language""#,
            "expected an array",
        );
        let e = error(&cached(r#""vary": { "headers": [ 1 ] }"#));
        assert_error(&e, "fragments[0].vary.headers[0]", "1", "expected a string");
        let e = error(r#"{ "origin": "http://o.test", "limits": { "max_page_bytes": 1e40 } }"#);
        assert_error(&e, "limits.max_page_bytes", "1e+40", "at most");
        // Integral floats are fine (some TOML writers emit 30.0).
        let c = Config::from_json_str(&fragment(r#""soft_ttl": 30.0, "hard_ttl": 6e1"#)).unwrap();
        assert_eq!(cache(&c.fragments[0]).ttls, Ttls { soft: 30, hard: 60 });
    }

    #[test]
    fn hard_ttl_below_soft_ttl() {
        let e = error(&fragment(r#""soft_ttl": 600, "hard_ttl": 300"#));
        assert_error(
            &e,
            "fragments[0].hard_ttl",
            "300",
            "at least soft_ttl (600 s)",
        );
    }

    #[test]
    fn hard_ttl_below_kv_minimum() {
        let e = error(&fragment(r#""soft_ttl": 10, "hard_ttl": 59"#));
        assert_error(&e, "fragments[0].hard_ttl", "59", "Workers KV");
        let e = error(
            r#"{ "origin": "http://o.test", "pages": [ { "path": "/", "soft_ttl": 1, "hard_ttl": 30 } ] }"#,
        );
        assert_error(&e, "pages[0].hard_ttl", "30", "at least 60 s");
    }

    #[test]
    fn soft_ttl_rules() {
        let e = error(&fragment(r#""hard_ttl": 3600"#));
        assert_error(
            &e,
            "fragments[0].soft_ttl",
            "(missing)",
            "\"private\": true",
        );
        let e = error(&fragment(r#""soft_ttl": 0, "hard_ttl": 3600"#));
        assert_error(&e, "fragments[0].soft_ttl", "0", "at least 1 s");
        let e = error(&fragment(r#""soft_ttl": 30"#));
        assert_error(&e, "fragments[0].hard_ttl", "(missing)", "is required");
        let e =
            error(r#"{ "origin": "http://o.test", "pages": [ { "path": "/", "hard_ttl": 60 } ] }"#);
        assert_error(&e, "pages[0].soft_ttl", "(missing)", "hard_ttl is set");
        let e = error(r#"{ "origin": "http://o.test", "fragments": [ { "path": "/x" } ] }"#);
        assert_error(&e, "fragments[0].soft_ttl", "(missing)", "is required");
    }

    #[test]
    fn private_fragments_reject_cache_settings() {
        let e = error(&fragment(
            r#""private": true, "soft_ttl": 30, "hard_ttl": 60"#,
        ));
        assert_error(&e, "fragments[0].soft_ttl", "30", "never cached");
        let e = error(&fragment(r#""private": true, "vary": { "country": true }"#));
        assert_error(
            &e,
            "fragments[0].vary",
            r#"{"country":true}"#,
            "never cached",
        );
        // Explicit nulls are the same as absent.
        assert!(Config::from_json_str(&fragment(
            r#""private": true, "soft_ttl": null, "timeout_ms": null"#
        ))
        .is_ok());
    }

    #[test]
    fn malformed_patterns() {
        let cases = [
            (r#""""#, "is empty"),
            (r#""fragments/*""#, "must start with \"/\""),
            (r#""/a*""#, "trailing \"/*\""),
            (r#""/*/x""#, "trailing \"/*\""),
            (r#""/a/*/b/*""#, "trailing \"/*\""),
            (r#""*""#, "must start with"),
            (r#""/a/**""#, "trailing \"/*\""),
            (r#""/a?x=1""#, "query"),
            (r#""/a#top""#, "query or fragment"),
            (r#""/a b""#, "whitespace"),
            (r#""/a\tb""#, "whitespace"),
            (r#""/café""#, "percent-encoded"),
            (r#""/a\\b""#, "percent-encoded"),
            (r#""/a/../b""#, "never match"),
            (r#""/./*""#, "never match"),
        ];
        for (pattern, problem) in cases {
            let e = error(&format!(
                r#"{{ "origin": "http://o.test", "fragments": [ {{ "path": {pattern}, "private": true }} ] }}"#
            ));
            assert_error(&e, "fragments[0].path", pattern, problem);
        }
        let e = error(r#"{ "origin": "http://o.test", "pages": [ { "path": 5 } ] }"#);
        assert_error(&e, "pages[0].path", "5", "expected a string");
        let e = error(r#"{ "origin": "http://o.test", "pages": [ { } ] }"#);
        assert_error(&e, "pages[0].path", "(missing)", "is required");
    }

    #[test]
    fn duplicate_patterns() {
        let e = error(
            r#"{ "origin": "http://o.test", "fragments": [
                { "path": "/f/*", "private": true }, { "path": "/g", "private": true }, { "path": "/f/*", "private": true } ] }"#,
        );
        assert_error(
            &e,
            "fragments[2].path",
            r#""/f/*""#,
            "duplicates fragments[0].path",
        );
        let e = error(
            r#"{ "origin": "http://o.test", "pages": [ { "path": "/x" } ],
                 "fragments": [ { "path": "/x", "private": true } ] }"#,
        );
        assert_error(
            &e,
            "fragments[0].path",
            r#""/x""#,
            "duplicates pages[0].path",
        );
        // An exact path and the prefix of the same directory are different.
        assert!(Config::from_json_str(
            r#"{ "origin": "http://o.test", "pages": [ { "path": "/x/" }, { "path": "/x/*" } ] }"#
        )
        .is_ok());
    }

    #[test]
    fn bad_cold_policy() {
        let e = error(&cached(r#""cold": "alt""#));
        assert_error(&e, "fragments[0].cold", r#""alt""#, "\"wait\"");
        let e = error(&cached(r#""cold": true"#));
        assert_error(&e, "fragments[0].cold", "true", "expected a string");
        let e = error(&cached(r#""cold": "fail", "cold_wait_ms": 100"#));
        assert_error(&e, "fragments[0].cold_wait_ms", "100", "\"cold\": \"wait\"");
        let e = error(&cached(r#""retry_after": 3"#));
        assert_error(&e, "fragments[0].retry_after", "3", "\"cold\": \"fail\"");
        let e = error(&cached(r#""cold": "fail", "retry_after": 0"#));
        assert_error(&e, "fragments[0].retry_after", "0", "at least 1 s");
        let c = Config::from_json_str(&cached(r#""cold": "fail""#)).unwrap();
        assert_eq!(
            cache(&c.fragments[0]).cold,
            ColdPolicy::Fail { retry_after_s: 5 }
        );
    }

    #[test]
    fn jitter_out_of_range() {
        for bad in ["0.5", "-0.1", "1", "7"] {
            let e = error(&cached(&format!(r#""jitter": {bad}"#)));
            assert_error(&e, "fragments[0].jitter", bad, "below 0.5");
        }
        let c = Config::from_json_str(&cached(r#""jitter": 0"#)).unwrap();
        assert_eq!(cache(&c.fragments[0]).jitter, 0.0);
        let c = Config::from_json_str(&cached(r#""jitter": 0.49"#)).unwrap();
        assert_eq!(cache(&c.fragments[0]).jitter, 0.49);
    }

    #[test]
    fn bad_xfetch_beta() {
        let e = error(&cached(r#""xfetch_beta": -1"#));
        assert_error(&e, "fragments[0].xfetch_beta", "-1", "0 or more");
        let e = error(&cached(r#""xfetch_beta": "NaN""#));
        assert_error(
            &e,
            "fragments[0].xfetch_beta",
            r#""NaN""#,
            "expected a number",
        );
        let c = Config::from_json_str(&cached(r#""xfetch_beta": 0"#)).unwrap();
        assert_eq!(cache(&c.fragments[0]).xfetch_beta, 0.0);
    }

    #[test]
    fn negative_ttl_rules() {
        let e = error(&cached(r#""negative_ttl": 7200"#));
        assert_error(
            &e,
            "fragments[0].negative_ttl",
            "7200",
            "must not exceed hard_ttl (3600 s)",
        );
        let e = error(&cached(r#""negative_ttl": -1"#));
        assert_error(
            &e,
            "fragments[0].negative_ttl",
            "-1",
            "must not be negative",
        );
        let c = Config::from_json_str(&cached(r#""negative_ttl": 0"#)).unwrap();
        assert_eq!(cache(&c.fragments[0]).negative_ttl, 0);
    }

    #[test]
    fn forbidden_forward_headers() {
        for name in UNFORWARDABLE_HEADERS {
            let e = error(&cached(&format!(
                r#""forward_headers": ["accept", "{name}"]"#
            )));
            assert_eq!(e.field, "fragments[0].forward_headers[1]", "{e}");
            assert_eq!(e.value, format!("\"{name}\""));
            assert!(e.problem.contains(name), "{e}");
        }
        let e = error(&cached(r#""forward_headers": ["Cookie"]"#));
        assert_error(
            &e,
            "fragments[0].forward_headers[0]",
            r#""Cookie""#,
            "private fragments",
        );
        let e = error(&cached(r#""forward_headers": ["Transfer-Encoding"]"#));
        assert_error(
            &e,
            "fragments[0].forward_headers[0]",
            r#""Transfer-Encoding""#,
            "hop-by-hop",
        );
        let e = error(&cached(r#""forward_headers": ["x header"]"#));
        assert_error(
            &e,
            "fragments[0].forward_headers[0]",
            r#""x header""#,
            "not a valid header name",
        );
        let e = error(&fragment(
            r#""private": true, "forward_headers": ["authorization"]"#,
        ));
        assert_error(
            &e,
            "fragments[0].forward_headers[0]",
            r#""authorization""#,
            "automatically",
        );
        let c = Config::from_json_str(&cached(
            r#""forward_headers": ["Accept-Language", "accept-language", "X-Trace"],
               "vary": { "headers": ["x-trace", "Accept-Language"] }"#,
        ))
        .unwrap();
        assert_eq!(
            c.fragments[0].forward_headers,
            ["accept-language", "x-trace"]
        );
    }

    #[test]
    fn cacheable_routes_vary_on_what_they_forward() {
        let json = r#"{ "origin": "http://o.test", "fragments": [
            { "path": "/a", "private": true, "forward_headers": ["x-request-id"] },
            { "path": "/b", "soft_ttl": 1, "hard_ttl": 60 },
            { "path": "/c/*", "soft_ttl": 1, "hard_ttl": 60,
              "vary": { "headers": ["x-device"] },
              "forward_headers": ["Accept-Language", "X-Device"] } ] }"#;
        let e = error(json);
        assert_eq!(
            e,
            ConfigError {
                field: "fragments[2].forward_headers[0]".into(),
                value: r#""Accept-Language""#.into(),
                problem: "a forwarded header shapes the response, so the cached copy must vary on it: add \"accept-language\" to fragments[2].vary.headers, or mark the route private".into(),
            }
        );
        // Forwarding needs no vary on a private route, and case does not matter.
        let ok = json.replace(r#""X-Device"]"#, r#""X-Device"], "private_if_cookie": "s""#);
        assert!(error(&ok).problem.contains("must vary"), "still cacheable");
        let ok = json.replace(r#"["x-device"]"#, r#"["X-DEVICE", "accept-language"]"#);
        let c = Config::from_json_str(&ok).unwrap();
        assert_eq!(
            c.fragments[2].forward_headers,
            ["accept-language", "x-device"]
        );
        assert_eq!(c.fragments[0].forward_headers, ["x-request-id"]);
    }

    #[test]
    fn vary_rules() {
        let e = error(&cached(r#""vary": { "headers": ["Cookie"] }"#));
        assert_error(
            &e,
            "fragments[0].vary.headers[0]",
            r#""Cookie""#,
            "vary.cookies",
        );
        let e = error(&cached(r#""vary": { "headers": ["authorization"] }"#));
        assert_error(
            &e,
            "fragments[0].vary.headers[0]",
            r#""authorization""#,
            "private",
        );
        let e = error(&cached(r#""vary": { "cookies": ["a=b"] }"#));
        assert_error(
            &e,
            "fragments[0].vary.cookies[0]",
            r#""a=b""#,
            "cookie name",
        );
        let e = error(&cached(r#""vary": { "query": ["a&b"] }"#));
        assert_error(
            &e,
            "fragments[0].vary.query[0]",
            r#""a&b""#,
            "query parameter name",
        );
        let e = error(&cached(r#""vary": { "query": [""] }"#));
        assert_error(
            &e,
            "fragments[0].vary.query[0]",
            r#""""#,
            "query parameter name",
        );
        let e = error(&cached(r#""vary": { "country": "yes" }"#));
        assert_error(&e, "fragments[0].vary.country", r#""yes""#, "true or false");
        let e = error(&cached(r#""vary": ["country"]"#));
        assert_error(
            &e,
            "fragments[0].vary",
            r#"["country"]"#,
            "expected an object",
        );
        let e = error(&cached(r#""private_if_cookie": "my session""#));
        assert_error(
            &e,
            "fragments[0].private_if_cookie",
            r#""my session""#,
            "cookie name",
        );
        let c = Config::from_json_str(&cached(
            r#""vary": { "headers": ["X-Device", "x-device"], "cookies": ["Lang"] }"#,
        ))
        .unwrap();
        assert_eq!(c.fragments[0].vary.headers, ["x-device"]);
        assert_eq!(
            c.fragments[0].vary.cookies,
            ["Lang"],
            "cookie names keep their case"
        );
        assert!(!c.fragments[0].vary.is_empty());
    }

    #[test]
    fn allowed_origins_must_be_bare_origins() {
        let e = error(
            r#"{ "origin": "http://o.test", "allowed_origins": ["https://cdn.test", "https://cdn.test/js"] }"#,
        );
        assert_error(
            &e,
            "allowed_origins[1]",
            r#""https://cdn.test/js""#,
            "bare origin",
        );
        let e = error(r#"{ "origin": "http://o.test", "allowed_origins": ["gopher://cdn.test"] }"#);
        assert_error(
            &e,
            "allowed_origins[0]",
            r#""gopher://cdn.test""#,
            "only http and https",
        );
        let e = error(r#"{ "origin": "http://o.test", "allowed_origins": [ 3 ] }"#);
        assert_error(&e, "allowed_origins[0]", "3", "expected a string");
        let e = error(r#"{ "origin": "http://o.test", "allowed_origins": "https://cdn.test" }"#);
        assert_error(
            &e,
            "allowed_origins",
            r#""https://cdn.test""#,
            "expected an array",
        );
        let c = Config::from_json_str(
            r#"{ "origin": "http://o.test", "allowed_origins": ["https://cdn.test", "http://o.test:80", "https://CDN.test/"] }"#,
        )
        .unwrap();
        let list: Vec<String> = c.allow.origins().iter().map(ToString::to_string).collect();
        assert_eq!(list, ["http://o.test", "https://cdn.test"]);
        assert!(c
            .allow
            .allows(&Url::parse("https://cdn.test/app.js").unwrap()));
        assert!(!c
            .allow
            .allows(&Url::parse("http://cdn.test/app.js").unwrap()));
    }

    #[test]
    fn unknown_routes_values() {
        let c = Config::from_json_str(r#"{ "origin": "http://o.test", "unknown_routes": "404" }"#)
            .unwrap();
        assert_eq!(c.unknown_routes, UnknownRoutes::NotFound);
        assert_eq!(c.unknown_routes.as_str(), "404");
        let e = error(r#"{ "origin": "http://o.test", "unknown_routes": 404 }"#);
        assert_error(&e, "unknown_routes", "404", "as a string");
        let e = error(r#"{ "origin": "http://o.test", "unknown_routes": "proxy" }"#);
        assert_error(&e, "unknown_routes", r#""proxy""#, "\"pass\"");
    }

    #[test]
    fn limits_bounds() {
        let limit = |field: &str, value: &str| {
            error(&format!(
                r#"{{ "origin": "http://o.test", "limits": {{ "{field}": {value} }} }}"#
            ))
        };
        // (field, value given, value reported, problem)
        let cases = [
            ("max_includes", "0", "0", "at least 1"),
            ("max_includes", "1001", "1001", "at most 1000"),
            ("max_depth", "33", "33", "at most 32"),
            ("max_fragment_bytes", "0", "0", "at least 1"),
            ("max_fragment_bytes", "26214401", "26214401", "25 MiB"),
            ("max_page_bytes", "0", "0", "at least 1"),
            ("fragment_timeout_ms", "0", "0", "at least 1 ms"),
            ("page_timeout_ms", "30001", "30001", "wait_until"),
            (
                "fragment_timeout_ms",
                "99999999999999999999",
                "1e+20",
                "at most 30000 ms",
            ),
        ];
        for (field, value, reported, problem) in cases {
            assert_error(
                &limit(field, value),
                &format!("limits.{field}"),
                reported,
                problem,
            );
        }
        let e = error(&cached(r#""timeout_ms": 60000"#));
        assert_error(&e, "fragments[0].timeout_ms", "60000", "at most 30000 ms");
        let e = error(&cached(r#""cold_wait_ms": 45000"#));
        assert_error(&e, "fragments[0].cold_wait_ms", "45000", "wait_until");

        // max_depth 0 is allowed: no nesting.
        let c = Config::from_json_str(r#"{ "origin": "http://o.test", "limits": { "max_depth": 0, "page_timeout_ms": 30000 } }"#)
            .unwrap();
        assert_eq!(c.limits.max_depth, 0);
        assert_eq!(c.limits.page_timeout_ms, 30_000);
        assert_eq!(c.limits.max_includes, Limits::DEFAULT_MAX_INCLUDES);
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(500);
        let e = error(&format!(
            r#"{{ "origin": "http://o.test", "limits": {{ "max_depth": "{long}" }} }}"#
        ));
        assert!(e.value.chars().count() <= 121, "{}", e.value);
        assert!(e.value.ends_with('…'));
    }

    #[test]
    fn suggestions() {
        let known = ["path", "soft_ttl", "hard_ttl", "private", "jitter"];
        assert_eq!(closest("sof_ttl", &known), Some("soft_ttl"));
        assert_eq!(closest("hardttl", &known), Some("hard_ttl"));
        assert_eq!(closest("Private", &known), Some("private"));
        assert_eq!(closest("jiter", &known), Some("jitter"));
        assert_eq!(closest("x", &known), None);
        assert_eq!(closest("completely_else", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    /// Arbitrary JSON never panics: every field of the example replaced by
    /// values of every type.
    #[test]
    fn no_panics_on_odd_values() {
        let odd = [
            "null",
            "true",
            "0",
            "-1",
            "1.5",
            "1e300",
            "-1e300",
            "18446744073709551615",
            "\"\"",
            "\"x\"",
            "[]",
            "[null]",
            "{}",
            "{\"a\":1}",
        ];
        // Every key of every object: the module doc's example sets them all.
        fn collect(v: &Value, keys: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    for (k, v) in map {
                        if !keys.contains(k) {
                            keys.push(k.clone());
                        }
                        collect(v, keys);
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, keys)),
                _ => {}
            }
        }
        let mut keys = Vec::new();
        collect(
            &serde_json::from_str(&module_doc_example()).unwrap(),
            &mut keys,
        );
        // Top level, limits, breaker, coordinator, warm, purge, page-only, fragment and vary keys.
        assert_eq!(keys.len(), 10 + 7 + 3 + 2 + 2 + 1 + 1 + 16 + 4, "{keys:?}");
        for key in &keys {
            for v in odd {
                for json in [
                    format!(r#"{{ "origin": "http://o.test", "{key}": {v} }}"#),
                    format!(r#"{{ "origin": "http://o.test", "limits": {{ "{key}": {v} }} }}"#),
                    fragment(&format!(r#""{key}": {v}"#)),
                    cached(&format!(r#""{key}": {v}"#)),
                    cached(&format!(r#""vary": {{ "{key}": {v} }}"#)),
                ] {
                    if let Err(e) = Config::from_json_str(&json) {
                        assert!(!e.field.is_empty() && !e.problem.is_empty(), "{json}");
                    }
                }
            }
        }
    }
}
