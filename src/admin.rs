//! The admin API on the platform: reads the token secret, lets
//! [`fragcache_core::admin::authorize`] decide access, and runs the
//! operation with this isolate's state. What each operation does is in the
//! core; this module only supplies bindings and the request body.

use std::rc::Rc;

use http::StatusCode;
use worker::{Context, Env, Request, Response, Result};

use fragcache_core::admin::{self, Operation};
use fragcache_core::config::Config;
use fragcache_core::inspect::{inspect, page_request};
use fragcache_core::loader::Loader;
use fragcache_core::purge::request_from_query;
use fragcache_core::request::ClientRequest;
use fragcache_core::serve::Reply;
use fragcache_core::url::Url;
use fragcache_core::{warm, write_through};

use crate::{ports, with_coordinator, KV_BINDING, SHARED};

/// Name of the secret that enables the admin API.
const TOKEN_BINDING: &str = "FRAGCACHE_ADMIN_TOKEN";
/// The name the token had when only purging existed; still honoured.
const OLD_TOKEN_BINDING: &str = "FRAGCACHE_PURGE_TOKEN";

/// The configured token, from a secret or (for local runs) a plain var.
pub(crate) fn token(env: &Env) -> Option<String> {
    [TOKEN_BINDING, OLD_TOKEN_BINDING].iter().find_map(|name| {
        env.secret(name)
            .ok()
            .map(|s| s.to_string())
            .or_else(|| env.var(name).ok().map(|v| v.to_string()))
            .filter(|t| !t.is_empty())
    })
}

/// Serves one request under `/_fragcache/`.
pub(crate) async fn serve(
    req: Request,
    env: &Env,
    ctx: Context,
    config: Rc<Config>,
    url: Url,
) -> Result<Reply> {
    let authorization = req.headers().get("authorization")?;
    let ctx = Rc::new(ctx);
    let method =
        http::Method::from_bytes(req.method().as_ref().as_bytes()).unwrap_or(http::Method::GET);
    let op = match admin::authorize(
        token(env).as_deref(),
        authorization.as_deref(),
        &method,
        url.path(),
    ) {
        Ok(op) => op,
        Err(reply) => return Ok(*reply),
    };
    // The admin request stands in for a client request: a write-through
    // picks its `vary` variant from it (credentials removed).
    let headers = ports::header_map(req.headers());
    let client = Rc::new(write_through::client_request(url.clone(), &headers));
    let loader = |client: Rc<ClientRequest>| -> std::result::Result<Loader, Box<Reply>> {
        let kv = env.kv(KV_BINDING).map_err(|e| {
            Box::new(admin::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("KV binding {KV_BINDING} is missing: {e}"),
            ))
        })?;
        Ok(Loader::new(
            with_coordinator(ports::ports(kv, Rc::clone(&ctx)), env),
            SHARED.with(Rc::clone),
            Rc::clone(&config),
            client,
        ))
    };
    Ok(match op {
        Operation::Index => admin::index(),
        Operation::Purge => {
            let request = match request_from_query(url.query()) {
                Ok(r) => r,
                Err(e) => return Ok(admin::error(StatusCode::BAD_REQUEST, &e.to_string())),
            };
            let loader = match loader(Rc::clone(&client)) {
                Ok(l) => l,
                Err(reply) => return Ok(*reply),
            };
            let report = fragcache_core::purge::purge_request(&loader, &request).await;
            let status = if report.errors.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            Reply::json(status, report.to_json())
        }
        Operation::Fragment => {
            let loader = match loader(Rc::clone(&client)) {
                Ok(l) => l,
                Err(reply) => return Ok(*reply),
            };
            let push = match write_through::prepare(&loader, &headers) {
                Ok(p) => p,
                Err(reply) => return Ok(*reply),
            };
            let max = push.max_body_bytes(&loader);
            let declared = req
                .headers()
                .get("content-length")?
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|n| n > max) {
                return Ok(write_through::too_large(max));
            }
            // The request body as a response body, so that it is read by
            // the one bounded reader (a stream, abandoned at the limit).
            let mut resp = Response::from_body(
                req.inner()
                    .body()
                    .map_or(worker::ResponseBody::Empty, worker::ResponseBody::Stream),
            )?;
            match ports::read_body(&mut resp, max).await? {
                ports::LimitedBody::TooLarge => write_through::too_large(max),
                ports::LimitedBody::Complete(body) => {
                    write_through::store(&loader, &push, &headers, body).await
                }
            }
        }
        Operation::Warm => {
            let (paths, concurrency) = match warm::request_from_query(&config, url.query()) {
                Ok(r) => r,
                Err(e) => return Ok(admin::error(StatusCode::BAD_REQUEST, &e)),
            };
            let loader = match loader(Rc::clone(&client)) {
                Ok(l) => l,
                Err(reply) => return Ok(*reply),
            };
            // The loader's ports, unwrapped again per page by Loader::new.
            let report = warm::warm(
                with_coordinator(ports::ports(env.kv(KV_BINDING)?, Rc::clone(&ctx)), env),
                Rc::clone(loader.shared()),
                config,
                &url,
                &paths,
                concurrency,
            )
            .await;
            worker::console_log!("fragcache: {}", report.summary());
            Reply::json(StatusCode::OK, report.to_json())
        }
        Operation::Inspect => {
            let mut client = match page_request(&url, &headers) {
                Ok(c) => c,
                Err(e) => return Ok(admin::error(StatusCode::BAD_REQUEST, &e)),
            };
            if config.fragments.iter().any(|f| f.vary.country) {
                client.country = req.cf().and_then(|cf| cf.country());
            }
            let accept = req.headers().get("accept")?;
            match loader(Rc::new(client)) {
                Ok(loader) => inspect(loader, accept.as_deref()).await,
                Err(reply) => *reply,
            }
        }
    })
}
