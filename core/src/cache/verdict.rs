//! What an origin response becomes in the cache: one pure decision, shared
//! by an isolate's own fetch and by the coordinator object's, so that both
//! store exactly the same entry for the same response.

use http::HeaderMap;

use super::entry::{jittered_ms, EntryMeta};
use super::policy::{
    decide, parse_directives, Decision, ResponseHeaders, RoutePolicy, Uncacheable,
};
use crate::headers::{encode_block, keep_from_origin};
use crate::ports::{OriginResponse, Rng};
use crate::tags::parse_tags;

/// How the cache treats one origin response.
#[derive(Debug)]
pub enum Verdict {
    /// Store it: the metadata and the stored value (for a page shell, its
    /// kept response headers first, see [`EntryMeta::header_bytes`]).
    Store {
        /// Freshness and response metadata.
        meta: Box<EntryMeta>,
        /// The KV value: header block, tag block, body.
        value: Vec<u8>,
        /// The response's cache tags (in the value's tag block too), for the
        /// tag index.
        tags: Vec<String>,
        /// The shell's kept headers (empty for fragments).
        headers: HeaderMap,
        /// The shell's headers were too large to store and were left out.
        headers_dropped: bool,
    },
    /// Do not store it; serve it to the requests it was fetched for only if
    /// the reason is not personal.
    Pass(Uncacheable),
    /// A server error: keep any stored copy, back off.
    Failure,
}

/// What the route allows, for [`verdict`].
#[derive(Debug, Clone, Copy)]
pub struct StoreRules<'a> {
    /// TTLs and whether origin headers may set them.
    pub route: &'a RoutePolicy,
    /// TTL jitter fraction.
    pub jitter: f64,
    /// A page shell: its response headers are stored with it.
    pub shell: bool,
}

/// Decides what `resp`, fetched at `now` in `fetch_ms`, becomes. `rng`
/// jitters the soft and hard TTLs (two draws, only when storing).
pub fn verdict(
    resp: &OriginResponse,
    rules: StoreRules<'_>,
    now: u64,
    fetch_ms: u32,
    rng: &dyn Rng,
) -> Verdict {
    let cache_control = resp.header_joined("cache-control");
    let surrogate = resp.header_joined("surrogate-control");
    let headers = ResponseHeaders {
        cache_control: cache_control.as_deref(),
        surrogate_control: surrogate.as_deref(),
        set_cookie: resp.header("set-cookie").is_some(),
    };
    let (soft_s, hard_s) = match decide(resp.status.as_u16(), headers, rules.route) {
        Decision::Failure => return Verdict::Failure,
        Decision::Pass(why) => return Verdict::Pass(why),
        Decision::Store { soft_s, hard_s } => (soft_s, hard_s),
    };
    let soft_ms = jittered_ms(soft_s, rules.jitter, rng.next_f64());
    let hard_ms = jittered_ms(hard_s, rules.jitter, rng.next_f64()).max(soft_ms);
    let mut meta = EntryMeta::new(
        now,
        now + soft_ms,
        now + hard_ms,
        resp.status.as_u16(),
        fetch_ms,
    )
    .with_headers(
        resp.header("content-type"),
        resp.header("etag"),
        resp.header("last-modified"),
        cache_control.as_deref(),
    );
    meta.esi = surrogate
        .as_deref()
        .is_some_and(|v| parse_directives(v).esi);
    let tags = parse_tags(&resp.headers);
    let tag_block = crate::tags::encode(&tags);
    let mut kept = HeaderMap::new();
    let mut headers_dropped = false;
    let mut value = Vec::new();
    if rules.shell {
        kept = keep_from_origin(&resp.headers);
        if !kept.is_empty() {
            match encode_block(&kept) {
                Some(block) => {
                    meta.header_bytes = u32::try_from(block.len()).unwrap_or(u32::MAX);
                    value = block;
                }
                None => headers_dropped = true,
            }
        }
    }
    // Bounded by MAX_TAGS × MAX_TAG_BYTES, so it always fits a u32.
    meta.tag_bytes = u32::try_from(tag_block.len()).unwrap_or(0);
    value.reserve(tag_block.len() + resp.body.len());
    value.extend_from_slice(&tag_block);
    value.extend_from_slice(&resp.body);
    Verdict::Store {
        meta: Box::new(meta),
        value,
        tags,
        headers: kept,
        headers_dropped,
    }
}
