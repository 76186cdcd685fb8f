//! A flight leader's work after its origin fetch: deciding what the
//! response allows ([`crate::cache::policy`]), publishing the outcome to the
//! requests waiting on it, and writing the entry back to KV.
//!
//! # Conditional refresh
//!
//! A refresh of a stored copy asks the origin with that copy's validators
//! (see `origin::add_validators`). A `304 Not Modified` answer is turned
//! into the full response it stands for ([`not_modified`]): the stored
//! status and body, the stored headers updated with the 304's (RFC 9111
//! §4.3.4). That response then goes through the same decision as any other:
//! stored again with its freshness recomputed from now (the route's TTLs, or
//! the 304's `Cache-Control` when the route honours origin headers), under
//! the same write throttle and purge checks, and remembered in memory; or,
//! if the 304's headers now forbid storing, passed on and the stored copy
//! tombstoned. A 304 to a request that carried no validator, or whose `ETag`
//! contradicts the stored one, is an origin failure: the stored copy stays
//! and the key backs off.

use std::rc::Rc;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::cache::entry::{jittered_ms, META_VERSION};
use crate::cache::flight::LeaderGuard;
use crate::cache::kv::{KV_READ_TIMEOUT_MS, KV_WRITE_TIMEOUT_MS};
use crate::cache::policy::{decide, parse_directives, Decision, ResponseHeaders};
use crate::cache::EntryMeta;
use crate::headers::{encode_block, MAX_STORED_HEADER_BYTES};
use crate::ports::{LogLevel, OriginRequest, OriginResponse, StoredEntry};

use super::memory::Cached;
use super::origin::is_conditional;
use super::{Fragment, LoadError, Loader, Outcome, Policy};

/// Time a flight may spend after its origin fetch timed out: the
/// write-back's check for a newer copy and its write, each bounded by
/// [`crate::cache::kv`].
pub const FLIGHT_WRITE_BUDGET_MS: u64 = KV_READ_TIMEOUT_MS + KV_WRITE_TIMEOUT_MS;

/// How long a flight with origin timeout `timeout_ms` may live: its fetch
/// timeout plus [`FLIGHT_WRITE_BUDGET_MS`]. An older flight is dead: the
/// next request leads a new one and waiters stop waiting (the fetch port
/// is trusted to honour its timeout, but not relied on to).
pub fn flight_lifetime_ms(timeout_ms: u32) -> u64 {
    u64::from(timeout_ms) + FLIGHT_WRITE_BUDGET_MS
}

/// The leader's job: fetch, publish the outcome, then write the entry back.
/// `stored`: the copy a refresh replaces (`None` for a cold load); a 304
/// renews it.
pub(super) async fn fetch_and_store(
    loader: Loader,
    guard: LeaderGuard<Outcome>,
    req: OriginRequest,
    policy: Policy,
    stored: Option<Cached>,
) {
    let replaces_entry = stored.is_some();
    let conditional = is_conditional(&req.headers);
    let ports = loader.ports.clone();
    let shared = Rc::clone(&loader.shared);
    let key = guard.key().to_owned();
    let url = req.url.to_string();
    let started = ports.clock.now_ms();
    // A purge recorded after this point covers what this fetch returns.
    let epoch = shared.purges.epoch();
    let result = ports.origin.fetch(req).await;
    let now = ports.clock.now_ms();
    let fetch_ms = u32::try_from(now.saturating_sub(started)).unwrap_or(u32::MAX);
    let Some(cache) = policy.cache else {
        return;
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let delay = shared
                .backoff
                .record_failure(&key, now, ports.rng.next_f64());
            ports.log.log(
                LogLevel::Warn,
                &format!("{url}: refresh failed ({e}); next attempt in {delay} ms"),
            );
            guard.complete(Outcome::Failed(LoadError::Origin(e)));
            return;
        }
    };
    let resp = if resp.status == StatusCode::NOT_MODIFIED {
        match not_modified(&resp, conditional, stored.as_ref()) {
            Ok(full) => {
                ports.log.log(
                    LogLevel::Info,
                    &format!("{url}: not modified; stored copy renewed"),
                );
                full
            }
            Err(why) => {
                let delay = shared
                    .backoff
                    .record_failure(&key, now, ports.rng.next_f64());
                ports.log.log(
                    LogLevel::Warn,
                    &format!("{url}: origin answered 304 {why}; keeping any stored copy; next attempt in {delay} ms"),
                );
                guard.complete(Outcome::Failed(LoadError::Status(resp.status)));
                return;
            }
        }
    } else {
        resp
    };
    let cache_control = resp.header_joined("cache-control");
    let surrogate = resp.header_joined("surrogate-control");
    let headers = ResponseHeaders {
        cache_control: cache_control.as_deref(),
        surrogate_control: surrogate.as_deref(),
        set_cookie: resp.header("set-cookie").is_some(),
    };
    match decide(resp.status.as_u16(), headers, &cache.route) {
        Decision::Failure => {
            let delay = shared
                .backoff
                .record_failure(&key, now, ports.rng.next_f64());
            ports.log.log(
                LogLevel::Warn,
                &format!("{url}: origin answered {}; keeping any stored copy; next attempt in {delay} ms", resp.status.as_u16()),
            );
            guard.complete(Outcome::Failed(LoadError::Status(resp.status)));
        }
        Decision::Pass(why) => {
            shared.backoff.record_success(&key);
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                None,
                false,
                policy.shell,
            ));
            ports.log.log(
                LogLevel::Info,
                &format!("{url}: not cached ({})", why.as_str()),
            );
            if why.is_personal() {
                let pass_ms = u64::from(cache.route.soft_ttl.max(1)) * 1000;
                shared.mark_personal(&key, now + pass_ms, now);
                guard.publish(Outcome::Personal(frag));
            } else {
                guard.publish(Outcome::Shared(frag));
            }
            if replaces_entry {
                // The origin no longer lets us cache this: the stored copy must
                // not keep being served until its hard TTL. An expired
                // tombstone sends the next request down the cold path.
                shared.recent.forget(&key);
                let tombstone = EntryMeta::new(now, now, now, resp.status.as_u16(), fetch_ms);
                write_back(&loader, &key, Vec::new(), tombstone, 0, started, epoch).await;
            }
            drop(guard);
        }
        Decision::Store { .. } if shared.purges.purged_since(epoch, &key) => {
            // Fetched before a purge of this key: possibly the old content.
            // The request that started it asked before the purge and may
            // have it; nobody else may, and it is neither kept nor stored.
            shared.backoff.record_success(&key);
            ports.log.log(
                LogLevel::Info,
                &format!("{url}: purged while being fetched; not stored"),
            );
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                None,
                false,
                policy.shell,
            ));
            guard.publish(Outcome::Personal(frag));
            drop(guard);
        }
        Decision::Store { soft_s, hard_s } => {
            shared.backoff.record_success(&key);
            let soft_ms = jittered_ms(soft_s, cache.jitter, ports.rng.next_f64());
            let hard_ms = jittered_ms(hard_s, cache.jitter, ports.rng.next_f64()).max(soft_ms);
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
            let frag = Rc::new(Fragment::from_response(
                &resp,
                now,
                Some(&key),
                false,
                policy.shell,
            ));
            // A shell's headers are stored ahead of its body in the value.
            let mut value = resp.body;
            if policy.shell && !frag.headers.is_empty() {
                match encode_block(&frag.headers) {
                    Some(mut block) => {
                        meta.header_bytes = block.len() as u32;
                        block.extend_from_slice(&value);
                        value = block;
                    }
                    None => ports.log.log(
                        LogLevel::Warn,
                        &format!(
                            "{url}: response headers exceed {MAX_STORED_HEADER_BYTES} bytes; the cached copy keeps none"
                        ),
                    ),
                }
            }
            shared.recent.remember(&key, &meta, &frag);
            // Publish before writing: waiting requests need the bytes, not the
            // write. The flight stays open until the write is done so that
            // requests arriving meanwhile join it rather than fetch again.
            guard.publish(Outcome::Shared(frag));
            write_back(&loader, &key, value, meta, hard_ms, started, epoch).await;
            drop(guard);
        }
    }
}

/// Writes an entry, at most once per second per key from this isolate, and
/// not at all if another isolate stored a newer copy (or a purge its
/// tombstone) after our fetch started at `started`, nor if this isolate
/// purged the key since `epoch`.
async fn write_back(
    loader: &Loader,
    key: &str,
    body: Vec<u8>,
    meta: EntryMeta,
    hard_ms: u64,
    started: u64,
    epoch: u64,
) {
    let ports = &loader.ports;
    let now = ports.clock.now_ms();
    if !loader.shared.claim_write(key, now) {
        return;
    }
    if let Ok(Some(current)) = ports.store.get(key).await {
        if current.meta.version == META_VERSION && current.meta.stored_at > started {
            return;
        }
    }
    // The read above let a purge run; nothing is awaited from here to the put.
    if loader.shared.purges.purged_since(epoch, key) {
        return;
    }
    // KV refuses expirationTtl below 60 s; the soft/hard deadlines in the
    // metadata are what freshness uses, so a longer KV life is harmless.
    let ttl_s = hard_ms
        .div_ceil(1000)
        .max(u64::from(crate::config::MIN_HARD_TTL_S));
    if let Err(e) = ports
        .store
        .put(key, StoredEntry { body, meta }, ttl_s)
        .await
    {
        ports
            .log
            .log(LogLevel::Warn, &format!("{key}: KV write failed: {e}"));
    }
}

/// Response headers of a 304 that describe the message rather than the
/// stored representation, and so never update it.
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "transfer-encoding",
];

/// The full response a `304 Not Modified` stands for: the stored copy's
/// status and body, its headers (for a fragment, the few kept in the
/// metadata; for a shell, the ones kept for the page) updated with those
/// the 304 carries. An error, saying why, when the 304 cannot be used: the
/// request was not conditional, nothing is stored, or the 304's `ETag`
/// names another representation than the stored one.
fn not_modified(
    resp: &OriginResponse,
    conditional: bool,
    stored: Option<&Cached>,
) -> Result<OriginResponse, &'static str> {
    let (meta, frag) = match stored {
        Some(s) if conditional => s,
        _ => return Err("to an unconditional request"),
    };
    if let (Some(new), Some(old)) = (resp.header("etag"), meta.etag.as_deref()) {
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        if opaque(new) != opaque(old) {
            return Err("with another ETag than the stored one");
        }
    }
    let mut headers: HeaderMap = frag.headers.clone();
    let esi = meta.esi && !headers.contains_key("surrogate-control");
    let mut set = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.and_then(crate::headers::value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("content-type", meta.content_type.as_deref());
    set("etag", meta.etag.as_deref());
    set("last-modified", meta.last_modified.as_deref());
    set("cache-control", meta.cache_control.as_deref());
    if esi {
        set("surrogate-control", Some("content=\"ESI/1.0\""));
    }
    let mut updated: Vec<&HeaderName> = Vec::new();
    for (name, value) in &resp.headers {
        if NOT_UPDATED_BY_304.contains(&name.as_str()) {
            continue;
        }
        // The first value replaces the stored ones in place (keeping the
        // headers' order); further values of the same name follow it.
        if updated.contains(&name) {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
            updated.push(name);
        }
    }
    Ok(OriginResponse {
        status: StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK),
        headers,
        body: frag.body.to_vec(),
    })
}
