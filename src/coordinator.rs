//! The coordinator on the platform: the `FragmentCoordinator` Durable
//! Object class, and the isolate's side of talking to it.
//!
//! One object per cache key runs [`KeyObject`]; one object per origin
//! (named by [`origin_object_name`]) holds that origin's circuit breaker.
//! Objects are SQLite-backed (declared with `new_sqlite_classes`), which the
//! free plan requires, though they keep their state in memory: their copy
//! of an entry is also in KV, and a breaker that restarts closed only costs
//! one more failed request. The one exception is the purge log object
//! ([`PURGE_LOG_OBJECT`]): its log is kept in the object's storage, so that
//! a restart cannot make isolates miss a purge. The wire format is
//! [`Reply::encode`]; requests are JSON.

use std::rc::Rc;

use fragcache_core::cache::breaker::{Breaker, Permit};
use fragcache_core::coord::{
    origin_object_name, CoordError, Coordinator, Gate, KeyObject, LoadRequest, LocalGate, Outcome,
    Reply, FORGET_PATH, LOAD_PATH, PERMIT_PATH, PURGE_APPEND_PATH, PURGE_LOG_OBJECT,
    PURGE_LOG_PATH, PUT_PATH, REPORT_PATH,
};
use fragcache_core::ports::{Background, LocalFuture};
use fragcache_core::purge::{PurgeRecord, SharedLog};
use fragcache_core::url::Url;
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, DurableObject, Env, Method, ObjectNamespace, Request, RequestInit, Response,
    Result, State,
};

use crate::ports;

/// Name of the Durable Object binding.
pub const BINDING: &str = "COORDINATOR";

/// Host part of the URLs sent to objects (never leaves the runtime).
const OBJECT_ORIGIN: &str = "https://coordinator.fragcache";

/// A breaker report, as sent to an origin's object.
#[derive(Serialize, Deserialize)]
struct Report {
    origin: String,
    key: String,
    outcome: Outcome,
}

/// A breaker permit request.
#[derive(Serialize, Deserialize)]
struct PermitRequest {
    origin: String,
}

/// The Durable Object class: a key's coordinator, or an origin's breaker,
/// depending on the name it was created under (and so on what it is asked).
#[durable_object(fetch)]
pub struct FragmentCoordinator {
    state: Rc<State>,
    env: Env,
    key: Rc<KeyObject>,
    breaker: Rc<Breaker>,
    /// The purge log object's log, loaded from storage on first use.
    log: std::cell::RefCell<Option<SharedLog>>,
}

/// Storage key of the purge log object's log.
const LOG_STORAGE_KEY: &str = "log";

impl DurableObject for FragmentCoordinator {
    fn new(state: State, env: Env) -> Self {
        FragmentCoordinator {
            state: Rc::new(state),
            env,
            key: KeyObject::new(),
            breaker: Rc::new(Breaker::default()),
            log: std::cell::RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        match path.as_str() {
            LOAD_PATH => {
                let load: LoadRequest = req.json().await?;
                let config = match crate::config(&self.env) {
                    Ok(c) => c,
                    Err(e) => return Response::error(e.to_string(), 500),
                };
                // The object re-checks what the isolate checked: only
                // allow-listed origins are ever fetched.
                match Url::parse(&load.url) {
                    Ok(u) if config.allow.allows(&u) => {}
                    _ => return Response::error("not an allowed URL", 403),
                }
                let kv = self.env.kv(crate::KV_BINDING)?;
                let background: Rc<dyn Background> =
                    Rc::new(ObjectWaitUntil(Rc::clone(&self.state)));
                let ports = ports::ports_with(kv, background);
                let gate: Rc<dyn Gate> = match self.env.durable_object(BINDING) {
                    Ok(ns) => Rc::new(ObjectGate(ns)),
                    Err(_) => Rc::new(LocalGate::new(Rc::clone(&self.breaker), ports.clone())),
                };
                let reply = Rc::clone(&self.key).load(ports, gate, load).await;
                Response::from_bytes(reply.encode())
            }
            PERMIT_PATH => {
                let p: PermitRequest = req.json().await?;
                Response::from_json(&self.local_gate()?.permit_now(&p.origin))
            }
            REPORT_PATH => {
                let r: Report = req.json().await?;
                self.local_gate()?
                    .report(&r.origin, &r.key, r.outcome)
                    .await;
                Response::ok("")
            }
            FORGET_PATH => {
                self.key.forget();
                Response::ok("")
            }
            PUT_PATH => {
                let body = req.bytes().await?;
                match Reply::decode(&body) {
                    Ok(entry) => {
                        self.key.put(&entry);
                        Response::ok("")
                    }
                    Err(e) => Response::error(e.to_string(), 400),
                }
            }
            PURGE_APPEND_PATH => {
                let Some(record) = PurgeRecord::decode(&req.text().await?) else {
                    return Response::error("malformed purge record", 400);
                };
                let mut log = self.purge_log().await?;
                log.append(record, worker::Date::now().as_millis());
                // Stored before answering: an acknowledged purge survives
                // the object's restart.
                self.state
                    .storage()
                    .put(LOG_STORAGE_KEY, log.encode())
                    .await?;
                *self.log.borrow_mut() = Some(log);
                Response::ok("")
            }
            PURGE_LOG_PATH => {
                let mut log = self.purge_log().await?;
                log.prune(worker::Date::now().as_millis());
                Response::ok(log.encode())
            }
            _ => Response::error("unknown coordinator path", 404),
        }
    }
}

impl FragmentCoordinator {
    /// The purge log, from memory or storage. A log never written starts
    /// complete (`since` 0): every purge is appended here, so none came
    /// before it.
    async fn purge_log(&self) -> Result<SharedLog> {
        if let Some(log) = self.log.borrow().clone() {
            return Ok(log);
        }
        let stored: Option<String> = self.state.storage().get(LOG_STORAGE_KEY).await?;
        // Unreadable storage counts as a log that knows nothing before now.
        let log = match stored {
            None => SharedLog::default(),
            Some(text) => SharedLog::decode(&text)
                .unwrap_or_else(|| SharedLog::starting(worker::Date::now().as_millis())),
        };
        *self.log.borrow_mut() = Some(log.clone());
        Ok(log)
    }

    fn local_gate(&self) -> Result<LocalGateNow> {
        let kv = self.env.kv(crate::KV_BINDING)?;
        let background: Rc<dyn Background> = Rc::new(ObjectWaitUntil(Rc::clone(&self.state)));
        Ok(LocalGateNow(LocalGate::new(
            Rc::clone(&self.breaker),
            ports::ports_with(kv, background),
        )))
    }
}

/// An origin object's own breaker, answered synchronously.
struct LocalGateNow(LocalGate);

impl LocalGateNow {
    fn permit_now(&self, origin: &str) -> Permit {
        futures_util::FutureExt::now_or_never(self.0.permit(origin)).unwrap_or(Permit::Go)
    }

    async fn report(&self, origin: &str, key: &str, outcome: Outcome) {
        self.0.report(origin, key, outcome).await;
    }
}

/// `state.waitUntil` for work an object starts.
struct ObjectWaitUntil(Rc<State>);

impl Background for ObjectWaitUntil {
    fn spawn(&self, fut: LocalFuture<()>) {
        self.0.wait_until(fut);
    }
}

/// Sends one JSON request to the object named `name`.
async fn call(ns: &ObjectNamespace, name: &str, path: &str, json: String) -> Result<Response> {
    call_with(ns, name, path, wasm_bindgen::JsValue::from_str(&json)).await
}

/// Sends one request with `body` to the object named `name`.
async fn call_with(
    ns: &ObjectNamespace,
    name: &str,
    path: &str,
    body: wasm_bindgen::JsValue,
) -> Result<Response> {
    let stub = ns.get_by_name(name)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body));
    let req = Request::new_with_init(&format!("{OBJECT_ORIGIN}{path}"), &init)?;
    stub.fetch_with_request(req).await
}

/// A key object's view of the shared breaker: its origin's object. An
/// unreachable breaker lets the fetch go (the origin is then protected by
/// the key object's single flight alone).
struct ObjectGate(ObjectNamespace);

impl Gate for ObjectGate {
    fn permit(&self, origin: &str) -> LocalFuture<Permit> {
        let ns = self.0.clone();
        let origin = origin.to_owned();
        Box::pin(async move {
            let body = serde_json::to_string(&PermitRequest {
                origin: origin.clone(),
            })
            .unwrap_or_default();
            match call(&ns, &origin_object_name(&origin), PERMIT_PATH, body).await {
                Ok(mut r) => r.json::<Permit>().await.unwrap_or(Permit::Go),
                Err(e) => {
                    worker::console_warn!(
                        "fragcache: breaker of {origin} unreachable ({e}); fetching"
                    );
                    Permit::Go
                }
            }
        })
    }

    fn report(&self, origin: &str, key: &str, outcome: Outcome) -> LocalFuture<()> {
        let ns = self.0.clone();
        let origin = origin.to_owned();
        let key = key.to_owned();
        Box::pin(async move {
            let body = serde_json::to_string(&Report {
                origin: origin.clone(),
                key,
                outcome,
            })
            .unwrap_or_default();
            if let Err(e) = call(&ns, &origin_object_name(&origin), REPORT_PATH, body).await {
                worker::console_warn!(
                    "fragcache: could not report to the breaker of {origin}: {e}"
                );
            }
        })
    }
}

/// The isolate's coordinator: the object named after each cache key,
/// looked up in the environment only when asked.
pub struct ObjectCoordinator(pub Env);

impl ObjectCoordinator {
    fn namespace(&self) -> std::result::Result<ObjectNamespace, CoordError> {
        self.0
            .durable_object(BINDING)
            .map_err(|e| CoordError(e.to_string()))
    }
}

impl Coordinator for ObjectCoordinator {
    fn load(&self, req: LoadRequest) -> LocalFuture<std::result::Result<Reply, CoordError>> {
        let ns = self.namespace();
        Box::pin(async move {
            let ns = ns?;
            let json = serde_json::to_string(&req).map_err(|e| CoordError(e.to_string()))?;
            let mut resp = call(&ns, &req.key, LOAD_PATH, json)
                .await
                .map_err(|e| CoordError(e.to_string()))?;
            if resp.status_code() != 200 {
                return Err(CoordError(format!(
                    "object answered {}",
                    resp.status_code()
                )));
            }
            let body = resp.bytes().await.map_err(|e| CoordError(e.to_string()))?;
            Reply::decode(&body)
        })
    }

    fn put(&self, key: &str, entry: Reply) -> LocalFuture<std::result::Result<(), CoordError>> {
        let ns = self.namespace();
        let key = key.to_owned();
        Box::pin(async move {
            let bytes = js_sys::Uint8Array::from(entry.encode().as_slice());
            let resp = call_with(&ns?, &key, PUT_PATH, bytes.into())
                .await
                .map_err(|e| CoordError(e.to_string()))?;
            match resp.status_code() {
                200 => Ok(()),
                s => Err(CoordError(format!("object answered {s}"))),
            }
        })
    }

    fn publish_purge(
        &self,
        record: PurgeRecord,
    ) -> LocalFuture<std::result::Result<(), CoordError>> {
        let ns = self.namespace();
        Box::pin(async move {
            let resp = call(&ns?, PURGE_LOG_OBJECT, PURGE_APPEND_PATH, record.encode())
                .await
                .map_err(|e| CoordError(e.to_string()))?;
            match resp.status_code() {
                200 => Ok(()),
                s => Err(CoordError(format!("purge log object answered {s}"))),
            }
        })
    }

    fn purge_log(&self) -> LocalFuture<std::result::Result<SharedLog, CoordError>> {
        let ns = self.namespace();
        Box::pin(async move {
            let mut resp = call(&ns?, PURGE_LOG_OBJECT, PURGE_LOG_PATH, String::new())
                .await
                .map_err(|e| CoordError(e.to_string()))?;
            if resp.status_code() != 200 {
                return Err(CoordError(format!(
                    "purge log object answered {}",
                    resp.status_code()
                )));
            }
            let text = resp.text().await.map_err(|e| CoordError(e.to_string()))?;
            SharedLog::decode(&text).ok_or_else(|| CoordError("malformed purge log".into()))
        })
    }

    fn forget(&self, key: &str) -> LocalFuture<std::result::Result<(), CoordError>> {
        let ns = self.namespace();
        let key = key.to_owned();
        Box::pin(async move {
            call(&ns?, &key, FORGET_PATH, String::new())
                .await
                .map(|_| ())
                .map_err(|e| CoordError(e.to_string()))
        })
    }
}
