//! The core's ports implemented on the Workers platform.
//!
//! Every object here is created by, and used within, the request that owns
//! it: KV and `fetch` calls, timers and `wait_until` all belong to the
//! current request, which is what workerd requires. Only plain bytes and
//! numbers flow back into the isolate-wide state in the core.

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, StatusCode};
use worker::kv::KvStore;
use worker::{
    AbortController, Context, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect,
    Response, ResponseBody,
};

use fragcache_core::admin::BYPASS_HEADER;
use fragcache_core::cache::EntryMeta;
use fragcache_core::loader::HOP_BY_HOP;
use fragcache_core::ports::{
    Background, Clock, FragmentStore, KeyList, LocalFuture, Log, LogLevel, Origin, OriginError,
    OriginRequest, OriginResponse, Ports, Rng, Signals, StoreError, StoredEntry, Wake,
};
use fragcache_core::serve::{passthrough_headers, ADDRESSED_TO_US};
use fragcache_core::url::Url;

/// Builds the ports for one request.
pub fn ports(kv: KvStore, ctx: Rc<Context>) -> Ports {
    ports_with(kv, Rc::new(WaitUntil(ctx)))
}

/// Builds the ports with a given way of running background work (a
/// request's `ctx.waitUntil`, or a Durable Object's `state.waitUntil`).
pub fn ports_with(kv: KvStore, background: Rc<dyn Background>) -> Ports {
    Ports {
        store: Rc::new(KvFragments(kv)),
        origin: Rc::new(FetchOrigin),
        clock: Rc::new(WorkerClock),
        rng: Rc::new(CryptoRng),
        background,
        signals: Rc::new(PromiseSignals),
        log: Rc::new(Console),
        coordinator: None,
    }
}

/// Fragments in Workers KV: body as the value, [`EntryMeta`] as metadata.
struct KvFragments(KvStore);

impl FragmentStore for KvFragments {
    fn get(&self, key: &str) -> LocalFuture<Result<Option<StoredEntry>, StoreError>> {
        let kv = self.0.clone();
        let key = key.to_owned();
        Box::pin(async move {
            let (body, meta) = kv
                .get(&key)
                .bytes_with_metadata::<serde_json::Value>()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            // Metadata from another layout version reads as absent, not as an error.
            let meta = meta.and_then(|m| serde_json::from_value::<EntryMeta>(m).ok());
            Ok(match (body, meta) {
                (Some(body), Some(meta)) => Some(StoredEntry { body, meta }),
                _ => None,
            })
        })
    }

    fn list(&self, prefix: &str) -> LocalFuture<Result<KeyList, StoreError>> {
        let kv = self.0.clone();
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            // KV lists 1,000 keys per call; follow the cursor, within reason
            // (a cursor left over means the listing was cut short).
            for _ in 0..10 {
                let mut req = kv.list().prefix(prefix.clone());
                if let Some(c) = cursor.take() {
                    req = req.cursor(c);
                }
                let page = req.execute().await.map_err(|e| StoreError(e.to_string()))?;
                keys.extend(page.keys.into_iter().map(|k| k.name));
                match page.cursor {
                    Some(c) if !page.list_complete => cursor = Some(c),
                    _ => break,
                }
            }
            Ok(KeyList {
                keys,
                truncated: cursor.is_some(),
            })
        })
    }

    fn delete(&self, key: &str) -> LocalFuture<Result<(), StoreError>> {
        let kv = self.0.clone();
        let key = key.to_owned();
        Box::pin(async move { kv.delete(&key).await.map_err(|e| StoreError(e.to_string())) })
    }

    fn put(
        &self,
        key: &str,
        entry: StoredEntry,
        expiration_ttl_s: u64,
    ) -> LocalFuture<Result<(), StoreError>> {
        let kv = self.0.clone();
        let key = key.to_owned();
        Box::pin(async move {
            kv.put_bytes(&key, &entry.body)
                .and_then(|b| b.expiration_ttl(expiration_ttl_s).metadata(&entry.meta))
                .map_err(|e| StoreError(e.to_string()))?
                .execute()
                .await
                .map_err(|e| StoreError(e.to_string()))
        })
    }
}

/// The origin over the global `fetch`, with an abortable timeout.
struct FetchOrigin;

impl Origin for FetchOrigin {
    fn fetch(&self, req: OriginRequest) -> LocalFuture<Result<OriginResponse, OriginError>> {
        Box::pin(async move {
            let controller = AbortController::default();
            let signal = controller.signal();
            let timeout_ms = req.timeout_ms;
            let max = req.max_body_bytes;
            let url = req.url.to_string();
            let work = async move {
                let headers = worker_headers(&req.headers);
                let mut init = RequestInit::new();
                init.with_method(Method::Get)
                    .with_headers(headers)
                    // Never follow redirects: the target was not allow-listed.
                    .with_redirect(RequestRedirect::Manual);
                let request = Request::new_with_init(&url, &init)
                    .map_err(|e| OriginError::Network(e.to_string()))?;
                let mut resp = Fetch::Request(request)
                    .send_with_signal(&signal)
                    .await
                    .map_err(|e| OriginError::Network(e.to_string()))?;
                let headers = header_map(resp.headers());
                let status = StatusCode::from_u16(resp.status_code())
                    .map_err(|e| OriginError::Network(format!("bad status: {e}")))?;
                let body = match read_body(&mut resp, max)
                    .await
                    .map_err(|e| OriginError::Network(e.to_string()))?
                {
                    LimitedBody::Complete(body) => body,
                    // Dropping the rest of the stream cancels it.
                    LimitedBody::TooLarge => return Err(OriginError::TooLarge(max)),
                };
                Ok(OriginResponse {
                    status,
                    headers,
                    body,
                })
            };
            let timer = Delay::from(Duration::from_millis(u64::from(timeout_ms)));
            match select(Box::pin(work), timer).await {
                Either::Left((r, _)) => {
                    if matches!(r, Err(OriginError::TooLarge(_))) {
                        controller.abort();
                    }
                    r
                }
                Either::Right(_) => {
                    controller.abort();
                    Err(OriginError::Timeout(timeout_ms))
                }
            }
        })
    }
}

/// A response body read up to a limit.
pub enum LimitedBody {
    /// The whole body, at most the limit.
    Complete(Vec<u8>),
    /// The body is larger than the limit; reading stopped at the first
    /// chunk that passed it, and the rest of the stream was cancelled.
    TooLarge,
}

/// Reads `resp`'s body as a stream with a running count, stopping as soon
/// as it passes `max` bytes, so a body is never buffered past its limit,
/// whether or not it declares a `Content-Length` (chunked bodies do not).
pub async fn read_body(resp: &mut Response, max: usize) -> worker::Result<LimitedBody> {
    let declared = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(LimitedBody::TooLarge);
    }
    let mut stream = match resp.body() {
        ResponseBody::Empty => return Ok(LimitedBody::Complete(Vec::new())),
        ResponseBody::Body(bytes) if bytes.len() <= max => {
            return Ok(LimitedBody::Complete(bytes.clone()))
        }
        ResponseBody::Body(_) => return Ok(LimitedBody::TooLarge),
        ResponseBody::Stream(_) => resp.stream()?,
    };
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > max {
            // Dropping the stream cancels the rest of the body.
            return Ok(LimitedBody::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(LimitedBody::Complete(body))
}

/// `Date.now()` and `setTimeout`.
struct WorkerClock;

impl Clock for WorkerClock {
    fn now_ms(&self) -> u64 {
        worker::Date::now().as_millis()
    }
    fn sleep(&self, ms: u64) -> LocalFuture<()> {
        Box::pin(Delay::from(Duration::from_millis(ms)))
    }
}

/// A signal made of this request's own promise raced with its own timer.
///
/// The resolver may be called from another request (the single-flight
/// leader): workerd then resumes the promise in *this* request's context
/// (`handle_cross_request_promise_resolution`, on by default since
/// compatibility date 2024-10-14). The timer matters too: a request with
/// nothing pending of its own is cancelled as hung, so the wait must always
/// include a timer this request created. Measured under Miniflare with 200
/// concurrent followers (`docs/design.md` §2).
struct PromiseSignals;

impl Signals for PromiseSignals {
    fn signal(&self, timeout_ms: u64) -> (Wake, LocalFuture<()>) {
        let mut resolver: Option<js_sys::Function> = None;
        let promise = js_sys::Promise::new(&mut |resolve, _reject| resolver = Some(resolve));
        let wake: Wake = match resolver {
            Some(resolve) => Box::new(move || {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }),
            // The executor runs synchronously, so this never happens; the
            // timer alone still ends the wait.
            None => Box::new(|| {}),
        };
        let timer = Delay::from(Duration::from_millis(timeout_ms));
        let fut = async move {
            let resolved = wasm_bindgen_futures::JsFuture::from(promise);
            let _ = select(resolved, timer).await;
        };
        (wake, Box::pin(fut))
    }
}

/// `crypto.getRandomValues` through getrandom.
struct CryptoRng;

/// Random bytes drawn 256 at a time: XFetch draws once per fresh fragment
/// per page, and one `crypto.getRandomValues` call per draw would cost a
/// JavaScript crossing each.
const RANDOM_BATCH: usize = 256;

thread_local! {
    static RANDOM: std::cell::RefCell<([u8; RANDOM_BATCH], usize)> =
        const { std::cell::RefCell::new(([0; RANDOM_BATCH], RANDOM_BATCH)) };
}

impl Rng for CryptoRng {
    fn next_u64(&self) -> u64 {
        RANDOM.with(|cell| {
            let (buf, pos) = &mut *cell.borrow_mut();
            if *pos + 8 > RANDOM_BATCH {
                // Jitter and XFetch only need spread, not secrecy: on the
                // (never observed) failure, fall back to the clock.
                if getrandom::fill(buf).is_err() {
                    return worker::Date::now()
                        .as_millis()
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                }
                *pos = 0;
            }
            let mut word = [0u8; 8];
            word.copy_from_slice(&buf[*pos..*pos + 8]);
            *pos += 8;
            u64::from_le_bytes(word)
        })
    }
}

/// `ctx.wait_until`.
struct WaitUntil(Rc<Context>);

impl Background for WaitUntil {
    fn spawn(&self, fut: LocalFuture<()>) {
        self.0.wait_until(fut);
    }
}

/// A scheduled event's `ctx.waitUntil`.
pub struct ScheduleWaitUntil(pub worker::ScheduleContext);

impl Background for ScheduleWaitUntil {
    fn spawn(&self, fut: LocalFuture<()>) {
        self.0.wait_until(fut);
    }
}

/// The Worker console (shown by `wrangler dev` and `wrangler tail`).
struct Console;

impl Log for Console {
    fn log(&self, level: LogLevel, message: &str) {
        match level {
            LogLevel::Info => worker::console_log!("fragcache: {message}"),
            LogLevel::Warn => worker::console_warn!("fragcache: {message}"),
            LogLevel::Error => worker::console_error!("fragcache: {message}"),
        }
    }
}

/// The request or response headers of the platform as an `http` map.
/// Names or values HTTP does not allow (which the runtime never hands us)
/// are skipped rather than trusted.
pub fn header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.entries() {
        if let (Ok(n), Some(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            fragcache_core::headers::value(&value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// An `http` header map as the platform's headers.
pub fn worker_headers(map: &HeaderMap) -> Headers {
    let headers = Headers::new();
    for (name, value) in map {
        if let Some(v) = fragcache_core::headers::text(value) {
            // Only values HTTP allows reach here, so append cannot refuse them.
            let _ = headers.append(name.as_str(), v);
        }
    }
    headers
}

/// Sends the client's request to `target` unchanged (method, headers,
/// body), and its response back unchanged, redirects included, except that
/// `Surrogate-Control` is removed.
pub async fn proxy(req: Request, target: &Url) -> worker::Result<Response> {
    Ok(pass_on(forward(req, target).await?))
}

/// A response sent to the client as the origin made it, minus what is
/// addressed to us ([`passthrough_headers`]); headers are rebuilt only when
/// something is to be removed.
pub fn pass_on(resp: Response) -> Response {
    let h = resp.headers();
    if !ADDRESSED_TO_US.iter().any(|n| h.has(n).unwrap_or(false)) {
        return resp;
    }
    let headers = passthrough_headers(&header_map(resp.headers()));
    resp.with_headers(worker_headers(&headers))
}

/// Sends the client's request to `target` and returns the origin's response
/// as it is; `Err` when the origin could not be reached.
pub async fn forward(req: Request, target: &Url) -> worker::Result<Response> {
    let headers = Headers::new();
    for (n, v) in req.headers().entries() {
        let name = n.to_ascii_lowercase();
        // The debug bypass header is ours, and carries the admin token.
        if !HOP_BY_HOP.contains(&name.as_str()) && name != BYPASS_HEADER {
            headers.append(&n, &v)?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(req.method())
        .with_headers(headers)
        .with_redirect(RequestRedirect::Manual);
    if let Some(body) = req.inner().body() {
        init.with_body(Some(body.into()));
    }
    let outgoing = Request::new_with_init(&target.to_string(), &init)?;
    Fetch::Request(outgoing).send().await
}
