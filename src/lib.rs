//! # fragcache worker adapter
//!
//! The thin layer between Cloudflare Workers and [`fragcache_core`]. It
//! implements the core's ports on the platform (KV, `fetch`, `Date.now`,
//! `getrandom`, `ctx.wait_until`, the console), reads and validates the
//! configuration once per isolate, and turns the core's [`Reply`] into a
//! `Response`. Errors become HTTP responses here and nowhere else.
//!
//! Isolate-wide state (the validated config, the single-flight map, back-off
//! and compiled templates) lives in a thread-local: a Worker isolate runs one
//! thread, and that state holds only plain data, never a JavaScript object
//! owned by one request.

mod ports;

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::stream::{self, StreamExt};
use worker::{event, Context, Env, Headers, Request, Response, Result};

use fragcache_core::config::{Config, ConfigError};
use fragcache_core::loader::{Loader, Shared};
use fragcache_core::purge::{paths_from_query, PURGE_PATH};
use fragcache_core::request::ClientRequest;
use fragcache_core::serve::{handle, handle_surrogate_shell, Reply};
use fragcache_core::url::Url;

/// Name of the `[vars]` object holding the configuration.
const CONFIG_BINDING: &str = "FRAGCACHE";
/// Name of the KV namespace binding for fragments.
const KV_BINDING: &str = "FRAGMENTS";

thread_local! {
    static CONFIG: RefCell<Option<std::result::Result<Rc<Config>, ConfigError>>> = const { RefCell::new(None) };
    static SHARED: Rc<Shared> = Shared::new();
}

/// The validated config, parsed on the first request of the isolate. A bad
/// config is logged once and answered with a 500 naming the field.
fn config(env: &Env) -> std::result::Result<Rc<Config>, ConfigError> {
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
    let config = match config(&env) {
        Ok(c) => c,
        Err(e) => return text(500, &format!("{e}\n")),
    };
    let url = match Url::parse(req.url()?.as_str()) {
        Ok(u) => u,
        Err(e) => return text(400, &format!("bad request URL: {e}\n")),
    };
    let method = req.method();
    if url.path() == PURGE_PATH {
        return purge(&req, &env, ctx, config, url).await;
    }
    if method != worker::Method::Get && method != worker::Method::Head {
        // Only safe methods are assembled; everything else goes to the origin as is.
        return ports::proxy(req, &url.with_origin(&config.origin)).await;
    }
    let mut client = ClientRequest::new(url);
    for (name, value) in req.headers().entries() {
        client.headers.push((name.to_ascii_lowercase(), value));
    }
    client.country = req.cf().and_then(|cf| cf.country());
    let kv = match env.kv(KV_BINDING) {
        Ok(kv) => kv,
        Err(e) => {
            worker::console_error!("KV binding {KV_BINDING} is missing: {e}");
            return text(500, &format!("fragcache: KV namespace binding `{KV_BINDING}` is missing from wrangler.toml\n"));
        }
    };
    let ctx = Rc::new(ctx);
    let shared = SHARED.with(Rc::clone);
    let loader = Loader::new(ports::ports(kv, ctx), shared, config, Rc::new(client));
    match handle(loader.clone()).await {
        Reply::Pass(target) => {
            let resp = ports::forward(req, &target).await?;
            match ports::surrogate_shell(resp, &loader).await? {
                Ok(shell) => respond(handle_surrogate_shell(loader, Rc::new(shell)).await),
                Err(resp) => Ok(resp),
            }
        }
        other => respond(other),
    }
}

/// Name of the secret that enables the purge endpoint.
const PURGE_TOKEN_BINDING: &str = "FRAGCACHE_PURGE_TOKEN";

/// `POST /_fragcache/purge?path=…` with `Authorization: Bearer <token>`.
async fn purge(
    req: &Request,
    env: &Env,
    ctx: Context,
    config: Rc<Config>,
    url: Url,
) -> Result<Response> {
    let Some(token) = env
        .secret(PURGE_TOKEN_BINDING)
        .ok()
        .map(|s| s.to_string())
        .or_else(|| env.var(PURGE_TOKEN_BINDING).ok().map(|v| v.to_string()))
        .filter(|t| !t.is_empty())
    else {
        return text(404, &format!("fragcache: purging is disabled; set the {PURGE_TOKEN_BINDING} secret to enable it\n"));
    };
    if req.method() != worker::Method::Post {
        return text(405, "fragcache: purge with POST\n");
    }
    let given = req.headers().get("authorization")?.unwrap_or_default();
    let expected = format!("Bearer {token}");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return text(401, "fragcache: wrong or missing purge token\n");
    }
    let paths = match paths_from_query(url.query()) {
        Ok(p) => p,
        Err(e) => return text(400, &format!("fragcache: {e}\n")),
    };
    let kv = match env.kv(KV_BINDING) {
        Ok(kv) => kv,
        Err(e) => {
            return text(
                500,
                &format!("fragcache: KV binding {KV_BINDING} is missing: {e}\n"),
            )
        }
    };
    let shared = SHARED.with(Rc::clone);
    let loader = Loader::new(
        ports::ports(kv, Rc::new(ctx)),
        shared,
        config,
        Rc::new(ClientRequest::new(url)),
    );
    let report = fragcache_core::purge::purge(&loader, &paths).await;
    let h = Headers::new();
    h.set("content-type", "application/json")?;
    h.set("cache-control", "no-store")?;
    let status = if report.errors.is_empty() { 200 } else { 500 };
    Ok(Response::ok(report.to_json())?
        .with_status(status)
        .with_headers(h))
}

/// Compares secrets without revealing the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns the core's reply into a Worker response.
fn respond(reply: Reply) -> Result<Response> {
    match reply {
        Reply::Pass(target) => text(
            500,
            &format!("fragcache: unexpected pass-through to {target}\n"),
        ),
        Reply::Full {
            status,
            headers,
            body,
        } => Ok(Response::from_bytes(body)?
            .with_status(status)
            .with_headers(to_headers(&headers)?)),
        Reply::Stream {
            status,
            headers,
            first,
            page,
        } => {
            let rest = stream::unfold(page, |mut page| async move {
                loop {
                    match page.next_chunk().await? {
                        fragcache_core::assemble::Chunk::Bytes(b) => {
                            return Some((Ok::<Vec<u8>, worker::Error>(b), page))
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
                .with_status(status)
                .with_headers(to_headers(&headers)?))
        }
    }
}

fn to_headers(list: &[(String, String)]) -> Result<Headers> {
    let h = Headers::new();
    for (n, v) in list {
        h.append(n, v)?;
    }
    Ok(h)
}

fn text(status: u16, body: &str) -> Result<Response> {
    let h = Headers::new();
    h.set("content-type", "text/plain; charset=utf-8")?;
    h.set("cache-control", "no-store")?;
    Ok(Response::ok(body)?.with_status(status).with_headers(h))
}
