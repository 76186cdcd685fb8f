//! Write-through: `PUT /_fragcache/fragment?path=/fragments/nav%3Fx%3D1`
//! with the fragment's body stores it as if the origin had just sent it, so
//! a publishing pipeline can push fresh content and the next page is a hit
//! with no origin fetch.
//!
//! - `path` is the include's path and query on the origin
//!   (percent-encoded as one query value), and must match a cached
//!   fragment route: 404 otherwise, 409 for a private route (personal data
//!   is never stored).
//! - The request's `Content-Type`, `Cache-Control`, `Surrogate-Control`,
//!   `ETag`, `Last-Modified`, `Cache-Tag` and `Surrogate-Key` headers are
//!   the response headers the origin would have sent: the same storage
//!   decision applies (`private`/`no-store` refuse with 409; with
//!   `honor_origin_headers` they set the TTLs). `soft_ttl` and `hard_ttl`
//!   query parameters replace the TTLs instead.
//! - The request's other headers, cookies and query parameters act as the
//!   client request the route's `vary` picks its variant from (a route
//!   varying on the `currency` cookie is pushed once per currency, with
//!   `Cookie: currency=EUR`, …); `Authorization` never does.
//! - The body is read up to `limits.max_fragment_bytes` and no further
//!   (413); an encoded body (`Content-Encoding` other than `identity`) is
//!   refused (415), since it would be stored as it is.
//!
//! The storage itself is [`Loader::push`]: KV, this isolate's memory and
//! the coordinator's object, newer than any load in flight.

use http::{HeaderMap, HeaderName, StatusCode};

use crate::admin::error;
use crate::cache::policy::parse_directives;
use crate::config::MIN_HARD_TTL_S;
use crate::esi::form_decode;
use crate::loader::{Loader, PushError, PushTarget};
use crate::ports::OriginResponse;
use crate::request::ClientRequest;
use crate::serve::Reply;
use crate::url::Url;

/// Longest TTL a push may ask for (one year, in seconds).
pub const MAX_PUSH_TTL_S: u32 = 365 * 24 * 3600;

/// Request headers that are the pushed response's headers.
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "surrogate-control",
    "etag",
    "last-modified",
    "cache-tag",
    "surrogate-key",
];

/// A parsed push: the include URL and any explicit TTLs.
pub struct Push {
    url: Url,
    ttls: (Option<u32>, Option<u32>),
    target: PushTarget,
}

impl Push {
    /// The largest body this push may carry.
    pub fn max_body_bytes(&self, loader: &Loader) -> usize {
        self.target.max_body_bytes(loader)
    }
}

/// The client request a push stands for: the push's own URL, headers and
/// cookies, without its credentials.
pub fn client_request(url: Url, headers: &HeaderMap) -> ClientRequest {
    let mut headers = headers.clone();
    headers.remove(http::header::AUTHORIZATION);
    let mut req = ClientRequest::new(url);
    req.headers = headers;
    req
}

/// Parses the push's query and finds its target, before the body is read.
/// `loader` must be built on [`client_request`].
pub fn prepare(loader: &Loader, headers: &HeaderMap) -> Result<Push, Box<Reply>> {
    let bad = |m: String| Box::new(error(StatusCode::BAD_REQUEST, &m));
    let query = loader.request().url.query().unwrap_or("");
    let param = |name: &str| -> Vec<String> {
        query
            .split('&')
            .filter_map(|p| p.split_once('=').filter(|(k, _)| *k == name))
            .map(|(_, v)| form_decode(v).into_owned())
            .collect()
    };
    let one = |name: &str| -> Result<Option<String>, Box<Reply>> {
        let mut values = param(name);
        if values.len() > 1 {
            return Err(bad(format!("give {name} once")));
        }
        Ok(values.pop())
    };
    let Some(path) = one("path")? else {
        return Err(bad(
            "give the fragment: PUT /_fragcache/fragment?path=/fragments/nav (its query percent-encoded: %3Fx%3D1)".into(),
        ));
    };
    if !path.starts_with('/') || path.starts_with("//") || path.contains('#') {
        return Err(bad(format!(
            "path {path:?} must be a path on the origin starting with one / (and no #fragment)"
        )));
    }
    let url = loader
        .config()
        .origin_url
        .resolve(&path)
        .map_err(|e| bad(format!("path {path:?} is not a usable URL path: {e}")))?;
    let ttl = |name: &str, min: u32| -> Result<Option<u32>, Box<Reply>> {
        let Some(v) = one(name)? else {
            return Ok(None);
        };
        match v.parse::<u32>() {
            Ok(n) if (min..=MAX_PUSH_TTL_S).contains(&n) => Ok(Some(n)),
            _ => Err(bad(format!(
                "{name} = {v:?}: must be a whole number of seconds from {min} to {MAX_PUSH_TTL_S}"
            ))),
        }
    };
    let ttls = (ttl("soft_ttl", 1)?, ttl("hard_ttl", MIN_HARD_TTL_S)?);
    if let Some(enc) = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Encoding {enc:?}: send the body as it is to be served (identity)"),
        )));
    }
    let target = loader
        .push_target(&url)
        .map_err(|e| Box::new(refusal(&e)))?;
    Ok(Push { url, ttls, target })
}

/// The answer to a body over `max` bytes.
pub fn too_large(max: usize) -> Reply {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body exceeds limits.max_fragment_bytes ({max} bytes); nothing stored"),
    )
}

/// Stores the pushed `body` (read within [`Push::max_body_bytes`]) and
/// answers with the key written, its TTLs and tags, as JSON.
pub async fn store(loader: &Loader, push: &Push, headers: &HeaderMap, body: Vec<u8>) -> Reply {
    let mut resp_headers = HeaderMap::new();
    for name in RESPONSE_HEADERS {
        for v in headers.get_all(*name) {
            resp_headers.append(HeaderName::from_static(name), v.clone());
        }
    }
    let resp = OriginResponse {
        status: StatusCode::OK,
        headers: resp_headers,
        body,
    };
    // The tags as the storage path keeps them (parsed, bounded).
    let tags = crate::tags::parse_tags(&resp.headers);
    let esi = resp
        .header_joined("surrogate-control")
        .is_some_and(|v| parse_directives(&v).esi);
    let pushed = match loader.push(&push.target, resp.clone(), push.ttls).await {
        Ok(p) => p,
        Err(e) => return refusal(&e),
    };
    let m = &pushed.meta;
    let secs = |until: u64| until.saturating_sub(m.stored_at).div_ceil(1000);
    let coordinator = match &pushed.coordinator {
        None => "none".to_owned(),
        Some(Ok(())) => "updated".to_owned(),
        Some(Err(e)) => format!("not updated: {e}"),
    };
    Reply::json(
        StatusCode::OK,
        serde_json::json!({
            "path": push.url.path_and_query(),
            "keys": [pushed.key],
            "bytes": resp.body.len(),
            "soft_ttl": secs(m.fresh_until),
            "hard_ttl": secs(m.stale_until),
            "stored_at": m.stored_at,
            "tags": tags,
            "esi": esi,
            "coordinator": coordinator,
        })
        .to_string(),
    )
}

/// The JSON error for a refused push.
fn refusal(e: &PushError) -> Reply {
    let status = match e {
        PushError::NotAFragment(_) => StatusCode::NOT_FOUND,
        PushError::Private(_) | PushError::Uncacheable(_) => StatusCode::CONFLICT,
        PushError::BadTtl(_) => StatusCode::BAD_REQUEST,
        PushError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        PushError::StoreFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut reply = error(status, &e.to_string());
    if matches!(e, PushError::Throttled(_)) {
        if let Reply::Full { headers, .. } = &mut reply {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
        }
    }
    reply
}
