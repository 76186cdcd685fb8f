//! The admin API on the platform: reads the token secret, lets
//! [`fragcache_core::admin::authorize`] decide access, and runs the
//! operation with this isolate's state. What each operation does is in the
//! core; this module only supplies bindings and the request body.

use std::rc::Rc;

use http::StatusCode;
use worker::{Context, Env, Request, Result};

use fragcache_core::admin::{self, Operation};
use fragcache_core::config::Config;
use fragcache_core::loader::Loader;
use fragcache_core::purge::request_from_query;
use fragcache_core::request::ClientRequest;
use fragcache_core::serve::Reply;
use fragcache_core::url::Url;

use crate::{ports, with_coordinator, KV_BINDING, SHARED};

/// Name of the secret that enables the admin API.
const TOKEN_BINDING: &str = "FRAGCACHE_ADMIN_TOKEN";
/// The name the token had when only purging existed; still honoured.
const OLD_TOKEN_BINDING: &str = "FRAGCACHE_PURGE_TOKEN";

/// The configured token, from a secret or (for local runs) a plain var.
fn token(env: &Env) -> Option<String> {
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
    let loader = || -> std::result::Result<Loader, Box<Reply>> {
        let kv = env.kv(KV_BINDING).map_err(|e| {
            Box::new(admin::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("KV binding {KV_BINDING} is missing: {e}"),
            ))
        })?;
        Ok(Loader::new(
            with_coordinator(ports::ports(kv, Rc::new(ctx)), env),
            SHARED.with(Rc::clone),
            config,
            Rc::new(ClientRequest::new(url.clone())),
        ))
    };
    Ok(match op {
        Operation::Index => admin::index(),
        Operation::Purge => {
            let request = match request_from_query(url.query()) {
                Ok(r) => r,
                Err(e) => return Ok(admin::error(StatusCode::BAD_REQUEST, &e.to_string())),
            };
            let loader = match loader() {
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
    })
}
