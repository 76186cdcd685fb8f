//! # fragcache worker adapter
//!
//! The thin layer between Cloudflare Workers and [`fragcache_core`]. It
//! implements the core's ports on the platform (KV, `fetch`, `Date.now`,
//! `getrandom`, `ctx.wait_until`, the console), reads and validates the
//! configuration once per isolate, and turns the core's [`Reply`] into a
//! `Response`. Every error, the adapter's own included, is a core
//! [`Reply::error`] turned into a response by one function, `respond`.
//!
//! Isolate-wide state (the validated config, the single-flight map, back-off
//! and compiled templates) lives in a thread-local: a Worker isolate runs one
//! thread, and that state holds only plain data, never a JavaScript object
//! owned by one request.

// `#[durable_object]` generates public JS glue methods without docs.
mod admin;
#[allow(missing_docs)]
mod coordinator;
mod ports;

pub use coordinator::FragmentCoordinator;

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::stream::{self, StreamExt};
use http::StatusCode;
use worker::{
    event, AnalyticsEngineDataPointBuilder, AnalyticsEngineDataset, Context, Env, Request,
    Response, Result,
};

use fragcache_core::admin::{bypass_requested, is_admin_path, BYPASS_HEADER};
use fragcache_core::config::{Config, ConfigError};
use fragcache_core::loader::{Loader, Shared};
use fragcache_core::ports::OriginResponse;
use fragcache_core::record::PageRecord;
use fragcache_core::request::ClientRequest;
use fragcache_core::serve::{handle, handle_surrogate_shell, shell_too_large, wants_esi, Reply};
use fragcache_core::url::Url;

/// Name of the `[vars]` object holding the configuration.
const CONFIG_BINDING: &str = "FRAGCACHE";
/// Name of the KV namespace binding for fragments.
pub(crate) const KV_BINDING: &str = "FRAGMENTS";

thread_local! {
    static CONFIG: RefCell<Option<std::result::Result<Rc<Config>, ConfigError>>> = const { RefCell::new(None) };
    pub(crate) static SHARED: Rc<Shared> = Shared::new();
    static HAS_COORDINATOR: RefCell<Option<bool>> = const { RefCell::new(None) };
}

/// The validated config, parsed on the first request of the isolate. A bad
/// config is logged once and answered with a 500 naming the field.
pub(crate) fn config(env: &Env) -> std::result::Result<Rc<Config>, ConfigError> {
    CONFIG.with(|cell| {
        if let Some(c) = cell.borrow().as_ref() {
            return c.clone();
        }
        let parsed = match env.object_var::<serde_json::Value>(CONFIG_BINDING) {
            Ok(v) => Config::from_json(&v).map(Rc::new),
            Err(e) => Err(ConfigError {
                field: CONFIG_BINDING.into(),
                value: "(missing)".into(),
                problem: format!("add a [vars.{CONFIG_BINDING}] table to wrangler.toml ({e})"),
            }),
        };
        if let Err(e) = &parsed {
            worker::console_error!("{e}");
        }
        *cell.borrow_mut() = Some(parsed.clone());
        parsed
    })
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let reply = match serve(req, env, ctx).await {
        Ok(Served::Reply(r)) => r,
        Ok(Served::Page(r, end)) => return respond(r, Some(end)),
        Ok(Served::Response(r)) => return Ok(r),
        Err(e) => {
            worker::console_error!("fragcache: {e}");
            Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("fragcache: {e}"),
            )
        }
    };
    respond(reply, None)
}

/// The cron trigger (`[triggers] crons` in `wrangler.toml`): warms the
/// configured `warm.paths` through the normal path
/// ([`fragcache_core::warm`]) and logs a one-line summary.
#[event(scheduled)]
async fn scheduled(event: worker::ScheduledEvent, env: Env, ctx: worker::ScheduleContext) {
    let config = match config(&env) {
        Ok(c) => c,
        // Already logged by config().
        Err(_) => return,
    };
    if config.warm.paths.is_empty() {
        worker::console_log!(
            "fragcache: cron {}: warm.paths is empty; nothing to warm",
            event.cron()
        );
        return;
    }
    let kv = match env.kv(KV_BINDING) {
        Ok(kv) => kv,
        Err(e) => {
            worker::console_error!("fragcache: KV binding {KV_BINDING} is missing: {e}");
            return;
        }
    };
    let ports = with_coordinator(
        ports::ports_with(kv, Rc::new(ports::ScheduleWaitUntil(ctx))),
        &env,
    );
    // The pages are requested as if on the origin's own host: a cron event has no URL.
    let report = fragcache_core::warm::warm(
        ports,
        SHARED.with(Rc::clone),
        Rc::clone(&config),
        &config.origin_url,
        &config.warm.paths,
        config.warm.concurrency,
    )
    .await;
    worker::console_log!("fragcache: cron {}: {}", event.cron(), report.summary());
}

/// What serving produced: a reply of the core's, a page (with what its
/// record needs once it is sent), or an origin response passed on as it is.
enum Served {
    Reply(Reply),
    Page(Reply, PageEnd),
    Response(Response),
}

/// Name of the optional Analytics Engine binding for per-page records.
const ANALYTICS_BINDING: &str = "FRAGCACHE_ANALYTICS";

/// What is needed to write a page's record when its last byte is out.
struct PageEnd {
    loader: Loader,
    analytics: Option<AnalyticsEngineDataset>,
}

impl PageEnd {
    fn new(env: &Env, loader: Loader) -> Self {
        PageEnd {
            loader,
            analytics: env.analytics_engine(ANALYTICS_BINDING).ok(),
        }
    }

    fn now_ms(&self) -> u64 {
        let clock = &self.loader.ports().clock;
        clock.now_ms().saturating_sub(self.loader.began_ms())
    }

    /// Writes the page's record: one Analytics Engine data point with the
    /// binding, else one JSON log line (the README documents both layouts).
    fn finish(self, ttfb_ms: u64) {
        let path = self.loader.request().url.path_and_query();
        let total_ms = self.now_ms();
        let record = self
            .loader
            .with_reports(|reports| PageRecord::new(&path, reports, ttfb_ms, total_ms));
        match &self.analytics {
            Some(dataset) => {
                let written = AnalyticsEngineDataPointBuilder::new()
                    .indexes([record.index()])
                    .blobs([record.path.as_str()])
                    .doubles(record.doubles())
                    .write_to(dataset);
                if let Err(e) = written {
                    worker::console_warn!("fragcache: page record not written: {e}");
                }
            }
            None => worker::console_log!("{}", record.to_json_line()),
        }
    }
}

async fn serve(req: Request, env: Env, ctx: Context) -> Result<Served> {
    let config = match config(&env) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Served::Reply(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )))
        }
    };
    // The raw URL string, parsed by the core's own parser: `Request::url()`
    // would parse it with the `url` crate first, whose IDNA tables alone
    // cost about 70 KB of the gzipped bundle.
    let url = match Url::parse(&req.inner().url()) {
        Ok(u) => u,
        Err(e) => {
            return Ok(Served::Reply(Reply::error(
                StatusCode::BAD_REQUEST,
                &format!("bad request URL: {e}"),
            )))
        }
    };
    if is_admin_path(url.path()) {
        return admin::serve(req, &env, ctx, config, url)
            .await
            .map(Served::Reply);
    }
    let method = req.method();
    if method != worker::Method::Get && method != worker::Method::Head {
        // Only safe methods are assembled; everything else goes to the origin as is.
        let target = url.with_origin(&config.origin);
        return Ok(match ports::proxy(req, &target).await {
            Ok(resp) => Served::Response(resp),
            Err(e) => Served::Reply(unreachable(&target, &e)),
        });
    }
    let mut client = ClientRequest::new(url);
    if method == worker::Method::Head {
        client.method = http::Method::HEAD;
    }
    client.headers = ports::header_map(req.headers());
    // The debug header goes no further, whatever it holds; with the admin
    // token it makes this one request skip the cache.
    if let Some(given) = client.headers.remove(BYPASS_HEADER) {
        client.debug_bypass = bypass_requested(admin::token(&env).as_deref(), given.to_str().ok());
    }
    // `request.cf` is only read when some route varies on the country.
    if config.fragments.iter().any(|f| f.vary.country) {
        client.country = req.cf().and_then(|cf| cf.country());
    }
    let kv = match env.kv(KV_BINDING) {
        Ok(kv) => kv,
        Err(e) => {
            worker::console_error!("KV binding {KV_BINDING} is missing: {e}");
            return Ok(Served::Reply(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "fragcache: KV namespace binding `{KV_BINDING}` is missing from wrangler.toml"
                ),
            )));
        }
    };
    let ctx = Rc::new(ctx);
    let shared = SHARED.with(Rc::clone);
    let loader = Loader::new(
        with_coordinator(ports::ports(kv, ctx), &env),
        shared,
        config,
        Rc::new(client),
    );
    let end = PageEnd::new(&env, loader.clone());
    match handle(loader.clone()).await {
        Reply::Pass(target) => match ports::forward(req, &target).await {
            Ok(resp) => pass_or_assemble(resp, loader, end).await,
            Err(e) => Ok(Served::Reply(unreachable(&target, &e))),
        },
        other => Ok(Served::Page(other, end)),
    }
}

/// The answer when a request proxied to the origin found no origin.
fn unreachable(target: &Url, e: &worker::Error) -> Reply {
    worker::console_error!("fragcache: proxy to {target} failed: {e}");
    Reply::error(
        StatusCode::BAD_GATEWAY,
        &format!("fragcache: origin unreachable: {e}"),
    )
}

/// A response the origin sent on a pass-through route: sent on as it is,
/// unless the origin asks for ESI processing (`Surrogate-Control:
/// content="ESI/1.0"`), in which case it is read as a page shell and
/// assembled. Such a shell over `limits.max_shell_bytes` fails the page
/// with a 502: its markup must never reach the client unprocessed.
async fn pass_or_assemble(mut resp: Response, loader: Loader, end: PageEnd) -> Result<Served> {
    let headers = ports::header_map(resp.headers());
    let Ok(status) = StatusCode::from_u16(resp.status_code()) else {
        return Ok(Served::Response(resp));
    };
    if !wants_esi(status, &headers) {
        return Ok(Served::Response(ports::pass_on(resp)));
    }
    let max = loader.config().limits.max_shell_bytes;
    let body = match ports::read_body(&mut resp, max).await? {
        ports::LimitedBody::Complete(body) => body,
        ports::LimitedBody::TooLarge => return Ok(Served::Reply(shell_too_large(&loader))),
    };
    let shell = OriginResponse {
        status,
        headers,
        body,
    };
    Ok(Served::Page(
        handle_surrogate_shell(loader, shell).await,
        end,
    ))
}

/// The ports with the coordinator, when the worker has its Durable Object
/// binding (see `coordinator`); without it, each isolate on its own.
pub(crate) fn with_coordinator(
    mut ports: fragcache_core::ports::Ports,
    env: &Env,
) -> fragcache_core::ports::Ports {
    // Whether the binding exists is decided once per isolate; the
    // namespace itself is only looked up when a miss or refresh needs it,
    // so hits pay nothing for the coordinator.
    let bound = HAS_COORDINATOR.with(|has| {
        *has.borrow_mut()
            .get_or_insert_with(|| env.durable_object(coordinator::BINDING).is_ok())
    });
    if bound {
        ports.coordinator = Some(Rc::new(coordinator::ObjectCoordinator(env.clone())));
    }
    ports
}

/// Turns the core's reply into a Worker response: the one place where
/// replies, errors included, become responses. A page's record (`end`) is
/// written once its body is complete: at once for a full reply, at the end
/// of the stream for a streamed one (a client that goes away mid-stream
/// leaves no record).
fn respond(reply: Reply, end: Option<PageEnd>) -> Result<Response> {
    let ttfb_ms = end.as_ref().map_or(0, PageEnd::now_ms);
    match reply {
        Reply::Pass(target) => respond(
            Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("fragcache: unexpected pass-through to {target}"),
            ),
            end,
        ),
        Reply::Full {
            status,
            headers,
            body,
        } => {
            if let Some(end) = end {
                end.finish(ttfb_ms);
            }
            Ok(Response::from_bytes(body)?
                .with_status(status.as_u16())
                .with_headers(ports::worker_headers(&headers)))
        }
        Reply::Stream {
            status,
            headers,
            first,
            page,
        } => {
            let rest = stream::unfold((page, end), move |(mut page, mut end)| async move {
                loop {
                    let Some(chunk) = page.next_chunk().await else {
                        if let Some(end) = end.take() {
                            end.finish(ttfb_ms);
                        }
                        return None;
                    };
                    match chunk {
                        fragcache_core::assemble::Chunk::Bytes(b) => {
                            return Some((Ok::<Vec<u8>, worker::Error>(b), (page, end)))
                        }
                        fragcache_core::assemble::Chunk::Failed(e) => {
                            // Bytes are already on the wire: leave the slot empty.
                            worker::console_warn!(
                                "include failed after the page started streaming: {e}"
                            );
                        }
                    }
                }
            });
            let body = stream::once(async move { Ok(first) }).chain(rest);
            Ok(Response::from_stream(body)?
                .with_status(status.as_u16())
                .with_headers(ports::worker_headers(&headers)))
        }
    }
}
