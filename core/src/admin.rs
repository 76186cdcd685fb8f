//! The admin API: every operation an operator (or the origin's publishing
//! pipeline) performs lives under [`ADMIN_PREFIX`], answers JSON, and sits
//! behind one bearer token, the Worker secret `FRAGCACHE_ADMIN_TOKEN`.
//!
//! Access is decided before anything else, in this order, so that a caller
//! without the token learns nothing about what exists:
//!
//! 1. no token configured: every admin path is 404 (the API is off);
//! 2. a missing, malformed or wrong `Authorization: Bearer …`: 401, and
//!    nothing changes;
//! 3. an unknown operation: 404, naming the operations there are;
//! 4. a method the operation does not take: 405 with `Allow`.
//!
//! The token is compared in constant time ([`constant_time_eq`]): how long
//! the comparison takes does not depend on where the first wrong byte is.
//! This module is pure routing and access; each operation's work is in its
//! own module ([`crate::purge`], …) and the adapter wires them to the
//! platform.

use http::header::{HeaderValue, ALLOW};
use http::{Method, StatusCode};

use crate::serve::Reply;

/// Every admin path starts with this.
pub const ADMIN_PREFIX: &str = "/_fragcache/";

/// The operations of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /_fragcache/`: what the API offers.
    Index,
    /// `POST /_fragcache/purge`: purge by path, prefix or tag, hard or soft
    /// (see [`crate::purge`]).
    Purge,
    /// `PUT /_fragcache/fragment?path=…`: store a fragment body as if
    /// fetched (see [`crate::write_through`]).
    Fragment,
    /// `POST /_fragcache/warm?path=…`: load pages through the normal path
    /// (see [`crate::warm`]).
    Warm,
    /// `GET /_fragcache/inspect?path=/page`: one page request, fragment by
    /// fragment (see [`crate::inspect`]).
    Inspect,
}

impl Operation {
    /// Every operation, in the order the index lists them.
    pub const ALL: &'static [Operation] = &[
        Operation::Index,
        Operation::Purge,
        Operation::Fragment,
        Operation::Warm,
        Operation::Inspect,
    ];

    /// The path below [`ADMIN_PREFIX`] that names this operation.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Index => "",
            Operation::Purge => "purge",
            Operation::Fragment => "fragment",
            Operation::Warm => "warm",
            Operation::Inspect => "inspect",
        }
    }

    /// The methods this operation takes (`HEAD` goes with `GET`).
    pub fn methods(self) -> &'static [Method] {
        match self {
            Operation::Index | Operation::Inspect => &[Method::GET, Method::HEAD],
            Operation::Purge => &[Method::POST],
            Operation::Fragment => &[Method::PUT],
            Operation::Warm => &[Method::POST],
        }
    }

    /// One line for the index: what the operation does.
    pub fn summary(self) -> &'static str {
        match self {
            Operation::Index => "this list",
            Operation::Purge => {
                "purge stored entries: ?path=/a (exact), ?path=/a/* (prefix), ?tag=t; add soft=1 to mark them stale instead"
            }
            Operation::Fragment => {
                "write-through: PUT a fragment body to ?path=/fragments/x (optional soft_ttl, hard_ttl); stored as if fetched"
            }
            Operation::Warm => {
                "warm pages through the normal path: ?path=/a&path=/b (default: the configured warm.paths), optional concurrency"
            }
            Operation::Inspect => {
                "serve ?path=/page (other parameters are its query) with your cookies and headers, and show each fragment: status, age against its TTLs, timing, key; HTML, or JSON with Accept: application/json"
            }
        }
    }
}

/// Whether `path` is an admin path at all (the adapter routes it here).
pub fn is_admin_path(path: &str) -> bool {
    path.starts_with(ADMIN_PREFIX) || path == &ADMIN_PREFIX[..ADMIN_PREFIX.len() - 1]
}

/// Compares secrets without revealing the position of the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `authorization` (the request's `Authorization` header, if any)
/// carries `token` as a bearer token. An empty token never matches.
pub fn bearer_matches(token: &str, authorization: Option<&str>) -> bool {
    let Some(given) = authorization.and_then(|a| {
        let (scheme, rest) = a.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }) else {
        return false;
    };
    !token.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Request header that, carrying the admin token, makes one ordinary page
/// request bypass the cache (see [`bypass_requested`]). Never sent to the
/// origin.
pub const BYPASS_HEADER: &str = "x-fragcache-bypass";

/// Whether a request's [`BYPASS_HEADER`] value (`header`) is the admin
/// token: then that one request reads and writes no cache. A wrong or
/// missing value, or no token configured, means an ordinary request. The
/// comparison takes the same time wherever the first wrong byte is.
pub fn bypass_requested(token: Option<&str>, header: Option<&str>) -> bool {
    match (token, header) {
        (Some(t), Some(h)) => !t.is_empty() && constant_time_eq(h.trim().as_bytes(), t.as_bytes()),
        _ => false,
    }
}

/// Decides whether a request to admin `path` may go on: the operation it
/// names, or the reply that ends it (see the module doc for the order).
/// `token` is the configured secret (`None` or empty: the API is off).
pub fn authorize(
    token: Option<&str>,
    authorization: Option<&str>,
    method: &Method,
    path: &str,
) -> Result<Operation, Box<Reply>> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set the FRAGCACHE_ADMIN_TOKEN secret to enable it",
        )));
    };
    if !bearer_matches(token, authorization) {
        let mut reply = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <FRAGCACHE_ADMIN_TOKEN>",
        );
        if let Reply::Full { headers, .. } = &mut reply {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fragcache\""),
            );
        }
        return Err(Box::new(reply));
    }
    let name = path
        .strip_prefix(ADMIN_PREFIX)
        .unwrap_or("")
        .trim_end_matches('/');
    let Some(op) = Operation::ALL.iter().copied().find(|o| o.name() == name) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("no admin operation {path:?}; GET {ADMIN_PREFIX} lists them"),
        )));
    };
    if !op.methods().contains(method) {
        let allow = op
            .methods()
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{ADMIN_PREFIX}{} takes {allow}", op.name()),
        );
        if let (Reply::Full { headers, .. }, Ok(v)) = (&mut reply, HeaderValue::from_str(&allow)) {
            headers.insert(ALLOW, v);
        }
        return Err(Box::new(reply));
    }
    Ok(op)
}

/// An admin error: JSON `{"error": …}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(
        status,
        serde_json::json!({ "error": format!("fragcache: {message}") }).to_string(),
    )
}

/// The index: every operation with its methods and what it does.
pub fn index() -> Reply {
    let ops: Vec<_> = Operation::ALL
        .iter()
        .map(|o| {
            serde_json::json!({
                "path": format!("{ADMIN_PREFIX}{}", o.name()),
                "methods": o.methods().iter().map(Method::as_str).collect::<Vec<_>>(),
                "does": o.summary(),
            })
        })
        .collect();
    Reply::json(
        StatusCode::OK,
        serde_json::json!({ "operations": ops }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<Operation, Box<Reply>>) -> Result<Operation, u16> {
        r.map_err(|e| e.status().unwrap().as_u16())
    }

    #[test]
    fn access_is_decided_in_order() {
        let post = Method::POST;
        let purge = "/_fragcache/purge";
        assert_eq!(
            status(authorize(None, Some("Bearer t"), &post, purge)),
            Err(404)
        );
        assert_eq!(
            status(authorize(Some(""), Some("Bearer "), &post, purge)),
            Err(404)
        );
        assert_eq!(status(authorize(Some("t"), None, &post, purge)), Err(401));
        assert_eq!(
            status(authorize(Some("t"), Some("Bearer u"), &post, purge)),
            Err(401)
        );
        assert_eq!(
            status(authorize(Some("t"), Some("t"), &post, purge)),
            Err(401)
        );
        assert_eq!(
            status(authorize(Some("t"), Some("Basic t"), &post, purge)),
            Err(401)
        );
        assert_eq!(
            status(authorize(Some("t"), Some("Bearer tt"), &post, purge)),
            Err(401)
        );
        // A wrong token cannot probe which operations exist.
        assert_eq!(
            status(authorize(Some("t"), None, &post, "/_fragcache/nope")),
            Err(401)
        );
        assert_eq!(
            status(authorize(
                Some("t"),
                Some("Bearer t"),
                &post,
                "/_fragcache/nope"
            )),
            Err(404)
        );
        assert_eq!(
            status(authorize(Some("t"), Some("Bearer t"), &Method::GET, purge)),
            Err(405)
        );
        assert_eq!(
            status(authorize(Some("t"), Some("bearer  t "), &post, purge)),
            Ok(Operation::Purge)
        );
        assert_eq!(
            status(authorize(
                Some("t"),
                Some("Bearer t"),
                &Method::GET,
                "/_fragcache/"
            )),
            Ok(Operation::Index)
        );
        assert_eq!(
            status(authorize(
                Some("t"),
                Some("Bearer t"),
                &Method::GET,
                "/_fragcache"
            )),
            Ok(Operation::Index)
        );
    }

    #[test]
    fn method_not_allowed_names_the_methods() {
        let r = authorize(
            Some("t"),
            Some("Bearer t"),
            &Method::DELETE,
            "/_fragcache/purge",
        );
        let Err(reply) = r else { panic!("allowed") };
        assert_eq!(reply.headers().unwrap()[ALLOW], "POST");
    }

    #[test]
    fn bypass_needs_the_exact_token() {
        assert!(bypass_requested(Some("t0k"), Some("t0k")));
        assert!(bypass_requested(Some("t0k"), Some(" t0k ")));
        assert!(!bypass_requested(Some("t0k"), Some("t0")));
        assert!(!bypass_requested(Some("t0k"), Some("t0kk")));
        assert!(!bypass_requested(Some("t0k"), Some("")));
        assert!(!bypass_requested(Some("t0k"), None));
        assert!(!bypass_requested(None, Some("t0k")));
        assert!(!bypass_requested(Some(""), Some("")));
    }

    #[test]
    fn admin_paths() {
        assert!(is_admin_path("/_fragcache/purge"));
        assert!(is_admin_path("/_fragcache"));
        assert!(!is_admin_path("/_fragcachex"));
    }
}
