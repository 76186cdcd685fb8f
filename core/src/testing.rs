//! In-memory fakes of every port and a deterministic executor, for fast
//! native simulations of stampedes, expiry and origin failures.
//!
//! [`Sim`] owns a single-threaded executor with *virtual* time: when no task
//! can make progress, the clock jumps to the earliest pending timer. A burst
//! of 1,000 requests against an origin with 300 ms latency therefore runs in
//! milliseconds of real time, and always the same way for the same seed.
//!
//! - [`SimClock`]: manual clock whose `sleep` futures are driven by [`Sim`].
//! - [`MemStore`]: KV stand-in with expiry, counters, failure injection,
//!   latency and hangs.
//! - [`ScriptedOrigin`]: origin with per-path responses, latency, failures,
//!   hangs, and a record of every request it received.
//! - [`SeededRng`]: xorshift generator, the one source of randomness in
//!   tests.
//! - [`MemLog`]: captured log lines.
//!
//! On top of these, the harness the simulation tests share:
//!
//! - [`Site`]: a [`Sim`] with one configuration and one isolate's
//!   [`Shared`], which builds loaders for client requests on
//!   `http://shop.test`, loads fragments from [`ORIGIN`] and serves pages.
//! - [`loader`], [`load_fragment`], [`serve`]: the same steps for tests that
//!   model several isolates or configurations themselves.
//! - [`Collected`]: a reply drained to its end, with its timing.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::select;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::assemble::Chunk;
use crate::cache::key::{cache_key, KeyKind};
use crate::cache::{CacheStatus, EntryMeta};
use crate::config::Config;
use crate::loader::{LoadError, Loader, Shared};
use crate::ports::{
    Background, Clock, FragmentStore, KeyList, LocalFuture, Log, LogLevel, Origin, OriginError,
    OriginRequest, OriginResponse, Ports, Rng, Signals, StoreError, StoredEntry, Wake as WakeFn,
};
use crate::request::ClientRequest;
use crate::serve::Reply;
use crate::url::Url;

/// Wakes a task by pushing its id on the ready queue.
struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut q) = self.ready.lock() {
            q.push_back(self.id);
        }
    }
}

#[derive(Default)]
struct Executor {
    tasks: RefCell<Vec<Option<LocalFuture<()>>>>,
    ready: Arc<Mutex<VecDeque<usize>>>,
    live: Cell<usize>,
}

impl Executor {
    fn spawn(&self, fut: LocalFuture<()>) {
        let mut tasks = self.tasks.borrow_mut();
        tasks.push(Some(fut));
        self.live.set(self.live.get() + 1);
        if let Ok(mut q) = self.ready.lock() {
            q.push_back(tasks.len() - 1);
        }
    }

    /// Polls ready tasks until none is ready. Returns how many polls ran.
    fn run_ready(&self) -> usize {
        let mut polls = 0;
        loop {
            let next = self.ready.lock().ok().and_then(|mut q| q.pop_front());
            let Some(id) = next else { return polls };
            // Take the task out so it can spawn others while being polled.
            let Some(mut fut) = self.tasks.borrow_mut().get_mut(id).and_then(Option::take) else {
                continue;
            };
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: Arc::clone(&self.ready),
            }));
            polls += 1;
            match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(()) => self.live.set(self.live.get() - 1),
                Poll::Pending => self.tasks.borrow_mut()[id] = Some(fut),
            }
        }
    }
}

/// A virtual clock: time moves only when the simulation says so.
pub struct SimClock {
    now: Cell<u64>,
    seq: Cell<u64>,
    timers: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl SimClock {
    fn new(start: u64) -> Rc<Self> {
        Rc::new(SimClock {
            now: Cell::new(start),
            seq: Cell::new(0),
            timers: RefCell::new(BinaryHeap::new()),
            wakers: RefCell::new(HashMap::new()),
        })
    }

    fn fire_due(&self) {
        let now = self.now.get();
        let mut timers = self.timers.borrow_mut();
        while let Some(Reverse((at, id))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            if let Some(w) = self.wakers.borrow_mut().remove(&id) {
                w.wake();
            }
        }
    }

    fn next_timer(&self) -> Option<u64> {
        self.timers.borrow().peek().map(|Reverse((at, _))| *at)
    }
}

struct Sleep {
    clock: Rc<SimClock>,
    at: u64,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now.get() >= self.at {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.clock.seq.get();
                self.clock.seq.set(id + 1);
                self.clock.timers.borrow_mut().push(Reverse((self.at, id)));
                self.id = Some(id);
                id
            }
        };
        self.clock
            .wakers
            .borrow_mut()
            .insert(id, cx.waker().clone());
        Poll::Pending
    }
}

struct SimClockPort(Rc<SimClock>);

impl Clock for SimClockPort {
    fn now_ms(&self) -> u64 {
        self.0.now.get()
    }
    fn sleep(&self, ms: u64) -> LocalFuture<()> {
        Box::pin(Sleep {
            clock: Rc::clone(&self.0),
            at: self.0.now.get() + ms,
            id: None,
        })
    }
}

/// A signal: fired by a [`Wake`], or times out on the virtual clock.
struct SimSignals(Rc<SimClock>);

#[derive(Default)]
struct SignalState {
    fired: bool,
    waker: Option<Waker>,
}

struct Fired(Rc<RefCell<SignalState>>);

impl Future for Fired {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.borrow_mut();
        if st.fired {
            Poll::Ready(())
        } else {
            st.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Signals for SimSignals {
    fn signal(&self, timeout_ms: u64) -> (WakeFn, LocalFuture<()>) {
        let state = Rc::new(RefCell::new(SignalState::default()));
        let waker_state = Rc::clone(&state);
        let wake: WakeFn = Box::new(move || {
            let waker = {
                let mut st = waker_state.borrow_mut();
                st.fired = true;
                st.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        });
        let sleep = SimClockPort(Rc::clone(&self.0)).sleep(timeout_ms);
        let fut = async move {
            // Either way the wait is over; the caller re-checks the outcome.
            let _ = select(Fired(state), sleep).await;
        };
        (wake, Box::pin(fut))
    }
}

/// Deterministic xorshift64* generator.
pub struct SeededRng(Cell<u64>);

impl SeededRng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        SeededRng(Cell::new(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        }))
    }
}

impl SeededRng {
    /// A generator from `seed` multiplied by the golden-ratio constant (and
    /// made odd), so that consecutive small seeds start far apart.
    pub fn scrambled(seed: u64) -> Self {
        SeededRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

impl Rng for SeededRng {
    fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Captured log lines.
#[derive(Default)]
pub struct MemLog {
    lines: RefCell<Vec<(LogLevel, String)>>,
}

impl MemLog {
    /// Every line logged so far.
    pub fn lines(&self) -> Vec<(LogLevel, String)> {
        self.lines.borrow().clone()
    }
    /// Whether any line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines.borrow().iter().any(|(_, l)| l.contains(needle))
    }
}

impl Log for MemLog {
    fn log(&self, level: LogLevel, message: &str) {
        self.lines.borrow_mut().push((level, message.to_owned()));
    }
}

/// An in-memory fragment store with KV-like expiry.
pub struct MemStore {
    clock: Rc<SimClock>,
    entries: RefCell<HashMap<String, (StoredEntry, u64)>>,
    /// Number of `get` calls for entries (every key but the shared purge
    /// log's, whose reads are in [`MemStore::log_gets`]).
    pub gets: Cell<usize>,
    /// Number of `get` calls for the shared purge log
    /// ([`crate::purge::KV_LOG_KEY`]).
    pub log_gets: Cell<usize>,
    /// Number of successful `put` calls.
    pub puts: Cell<usize>,
    /// When set, every `get` fails.
    pub fail_gets: Cell<bool>,
    /// When set, every `put` fails.
    pub fail_puts: Cell<bool>,
    /// When set, every call (get, put, delete, list) never completes.
    pub hang: Cell<bool>,
    /// Virtual delay before every call completes (its effect happens then).
    pub latency_ms: Cell<u64>,
    /// Most keys one `list` call returns (unlimited by default).
    pub list_limit: Cell<usize>,
}

impl MemStore {
    /// The live entry under `key`, if any.
    pub fn entry(&self, key: &str) -> Option<StoredEntry> {
        let now = self.clock.now.get();
        self.entries
            .borrow()
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(e, _)| e.clone())
    }
    /// All live keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let now = self.clock.now.get();
        let mut keys: Vec<String> = self
            .entries
            .borrow()
            .iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }
    /// Stores an entry directly (test set-up).
    pub fn insert(&self, key: &str, entry: StoredEntry, ttl_s: u64) {
        let exp = self.clock.now.get() + ttl_s * 1000;
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), (entry, exp));
    }
}

struct MemStorePort(Rc<MemStore>);

impl MemStorePort {
    /// Runs `op` on the store after the configured latency, or never when
    /// the store hangs.
    fn call<T: 'static>(&self, op: impl FnOnce(&MemStore) -> T + 'static) -> LocalFuture<T> {
        let s = Rc::clone(&self.0);
        if s.hang.get() {
            return Box::pin(std::future::pending());
        }
        let latency = s.latency_ms.get();
        if latency == 0 {
            return Box::pin(std::future::ready(op(&s)));
        }
        let sleep = SimClockPort(Rc::clone(&s.clock)).sleep(latency);
        Box::pin(async move {
            sleep.await;
            op(&s)
        })
    }
}

impl FragmentStore for MemStorePort {
    fn list(&self, prefix: &str) -> LocalFuture<Result<KeyList, StoreError>> {
        let prefix = prefix.to_owned();
        self.call(move |s| {
            let mut keys: Vec<String> = s
                .keys()
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
                .collect();
            let limit = s.list_limit.get();
            let truncated = keys.len() > limit;
            keys.truncate(limit);
            Ok(KeyList { keys, truncated })
        })
    }
    fn delete(&self, key: &str) -> LocalFuture<Result<(), StoreError>> {
        let key = key.to_owned();
        self.call(move |s| {
            s.entries.borrow_mut().remove(&key);
            Ok(())
        })
    }
    fn get(&self, key: &str) -> LocalFuture<Result<Option<StoredEntry>, StoreError>> {
        let s = &self.0;
        let counter = if key == crate::purge::KV_LOG_KEY {
            &s.log_gets
        } else {
            &s.gets
        };
        counter.set(counter.get() + 1);
        let key = key.to_owned();
        self.call(move |s| {
            if s.fail_gets.get() {
                Err(StoreError("injected read failure".into()))
            } else {
                Ok(s.entry(&key))
            }
        })
    }
    fn put(
        &self,
        key: &str,
        entry: StoredEntry,
        ttl_s: u64,
    ) -> LocalFuture<Result<(), StoreError>> {
        let key = key.to_owned();
        self.call(move |s| s.put_now(&key, entry, ttl_s))
    }
}

impl MemStore {
    fn put_now(&self, key: &str, entry: StoredEntry, ttl_s: u64) -> Result<(), StoreError> {
        let s = self;
        if s.fail_puts.get() {
            Err(StoreError("injected write failure".into()))
        } else if ttl_s < u64::from(crate::config::MIN_HARD_TTL_S) {
            Err(StoreError(format!(
                "expirationTtl {ttl_s} is below KV's minimum of {}",
                crate::config::MIN_HARD_TTL_S
            )))
        } else {
            s.puts.set(s.puts.get() + 1);
            s.insert(key, entry, ttl_s);
            Ok(())
        }
    }
}

/// How the scripted origin answers one path.
#[derive(Debug, Clone)]
pub enum Script {
    /// A response after `latency_ms`.
    Respond {
        /// HTTP status.
        status: u16,
        /// Headers.
        headers: HeaderMap,
        /// Body.
        body: Vec<u8>,
        /// Delay before answering.
        latency_ms: u64,
    },
    /// Never answers (the request's timeout fires).
    Hang,
    /// Never answers at all, ignoring the request's timeout: an origin
    /// port that fails to honour it.
    Stall,
    /// Connection reset after `latency_ms`.
    Reset {
        /// Delay before the reset.
        latency_ms: u64,
    },
}

impl Script {
    /// A 200 with `body` after `latency_ms`.
    pub fn ok(body: &str, latency_ms: u64) -> Script {
        Script::Respond {
            status: 200,
            headers: HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/html"),
            )]),
            body: body.as_bytes().to_vec(),
            latency_ms,
        }
    }
    /// A bare `status` after `latency_ms`.
    pub fn status(status: u16, latency_ms: u64) -> Script {
        Script::Respond {
            status,
            headers: HeaderMap::new(),
            body: format!("status {status}").into_bytes(),
            latency_ms,
        }
    }
    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Script {
        if let Script::Respond { headers, .. } = &mut self {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        self
    }
}

/// Compiles `input` fed to a [`crate::esi::Compiler`] in pieces cut at the
/// ascending offsets `cuts`: the chunk-safety tests compare this with
/// compiling the whole input at once.
pub fn compile_in_chunks(input: &[u8], cuts: &[usize]) -> crate::esi::Template {
    let mut c = crate::esi::Compiler::new();
    let mut last = 0;
    for &cut in cuts {
        let cut = cut.clamp(last, input.len());
        c.feed(&input[last..cut]);
        last = cut;
    }
    c.feed(&input[last..]);
    c.finish()
}

/// Marker in a scripted body replaced by how many times the path has been
/// served (1, 2, …), so tests can tell versions apart.
pub const SERIAL: &str = "{{serial}}";

fn number_body(body: Vec<u8>, n: u32) -> Vec<u8> {
    if memchr::memmem::find(&body, SERIAL.as_bytes()).is_none() {
        return body;
    }
    String::from_utf8_lossy(&body)
        .replace(SERIAL, &n.to_string())
        .into_bytes()
}

/// An origin that answers from a script and records what it was asked.
pub struct ScriptedOrigin {
    clock: Rc<SimClock>,
    scripts: RefCell<HashMap<String, Script>>,
    requests: RefCell<Vec<OriginRequest>>,
    served: RefCell<HashMap<String, u32>>,
}

impl ScriptedOrigin {
    /// Sets how `path` (path and query) is answered from now on.
    pub fn script(&self, path: &str, script: Script) {
        self.scripts.borrow_mut().insert(path.to_owned(), script);
    }
    /// Requests received for `path` (path and query).
    pub fn count(&self, path: &str) -> usize {
        self.requests
            .borrow()
            .iter()
            .filter(|r| r.url.path_and_query() == path)
            .count()
    }
    /// Every request received, in order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.requests.borrow().clone()
    }
}

struct OriginPort(Rc<ScriptedOrigin>);

impl Origin for OriginPort {
    fn fetch(&self, req: OriginRequest) -> LocalFuture<Result<OriginResponse, OriginError>> {
        let origin = Rc::clone(&self.0);
        let path = req.url.path_and_query();
        origin.requests.borrow_mut().push(req.clone());
        let script = origin.scripts.borrow().get(&path).cloned();
        if matches!(script, Some(Script::Stall)) {
            return Box::pin(std::future::pending());
        }
        let clock = SimClockPort(Rc::clone(&origin.clock));
        Box::pin(async move {
            let timeout = u64::from(req.timeout_ms);
            let (latency, result) = match script {
                None => (
                    0,
                    Ok(OriginResponse {
                        status: StatusCode::NOT_FOUND,
                        headers: HeaderMap::new(),
                        body: b"not found".to_vec(),
                    }),
                ),
                Some(Script::Hang | Script::Stall) => {
                    (u64::MAX, Err(OriginError::Timeout(req.timeout_ms)))
                }
                Some(Script::Reset { latency_ms }) => (
                    latency_ms,
                    Err(OriginError::Network("connection reset".into())),
                ),
                Some(Script::Respond {
                    status,
                    headers,
                    body,
                    latency_ms,
                }) => {
                    let n = {
                        let mut served = origin.served.borrow_mut();
                        let n = served.entry(path.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let body = number_body(body, n);
                    if body.len() > req.max_body_bytes {
                        (latency_ms, Err(OriginError::TooLarge(req.max_body_bytes)))
                    } else {
                        (
                            latency_ms,
                            Ok(OriginResponse {
                                status: StatusCode::from_u16(status)
                                    .expect("a scripted status in 100..=999"),
                                headers,
                                body,
                            }),
                        )
                    }
                }
            };
            if latency >= timeout {
                clock.sleep(timeout).await;
                return Err(OriginError::Timeout(req.timeout_ms));
            }
            clock.sleep(latency).await;
            result
        })
    }
}

/// The coordinator Durable Objects of a simulation: one
/// [`crate::coord::KeyObject`] per key, one breaker shared by them (the
/// origin objects), on the simulation's own store, origin and clock.
#[derive(Default)]
pub struct SimCoordinator {
    objects: RefCell<HashMap<String, Rc<crate::coord::KeyObject>>>,
    breaker: Rc<crate::cache::breaker::Breaker>,
    /// When set, every call fails at once (an unreachable object).
    pub unavailable: Cell<bool>,
    /// Load requests received.
    pub loads: Cell<usize>,
    /// The purge log object's log.
    pub purge_log: RefCell<crate::purge::SharedLog>,
    /// Purge log reads received.
    pub log_reads: Cell<usize>,
}

impl SimCoordinator {
    /// The key objects created so far.
    pub fn objects(&self) -> usize {
        self.objects.borrow().len()
    }
}

struct SimCoordinatorPort {
    coordinator: Rc<SimCoordinator>,
    ports: Ports,
}

impl crate::coord::Coordinator for SimCoordinatorPort {
    fn load(
        &self,
        req: crate::coord::LoadRequest,
    ) -> LocalFuture<Result<crate::coord::Reply, crate::coord::CoordError>> {
        let c = Rc::clone(&self.coordinator);
        if c.unavailable.get() {
            return Box::pin(std::future::ready(Err(crate::coord::CoordError(
                "object unreachable (simulated)".into(),
            ))));
        }
        c.loads.set(c.loads.get() + 1);
        let object = Rc::clone(c.objects.borrow_mut().entry(req.key.clone()).or_default());
        let gate: Rc<dyn crate::coord::Gate> = Rc::new(crate::coord::LocalGate::new(
            Rc::clone(&c.breaker),
            self.ports.clone(),
        ));
        let ports = self.ports.clone();
        Box::pin(async move { Ok((*object.load(ports, gate, req).await).clone()) })
    }

    fn forget(&self, key: &str) -> LocalFuture<Result<(), crate::coord::CoordError>> {
        if let Some(o) = self.coordinator.objects.borrow().get(key) {
            o.forget();
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn put(
        &self,
        key: &str,
        entry: crate::coord::Reply,
    ) -> LocalFuture<Result<(), crate::coord::CoordError>> {
        if self.coordinator.unavailable.get() {
            return Box::pin(std::future::ready(Err(crate::coord::CoordError(
                "object unreachable (simulated)".into(),
            ))));
        }
        let object = Rc::clone(
            self.coordinator
                .objects
                .borrow_mut()
                .entry(key.to_owned())
                .or_default(),
        );
        object.put(&entry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish_purge(
        &self,
        record: crate::purge::PurgeRecord,
    ) -> LocalFuture<Result<(), crate::coord::CoordError>> {
        let now = self.ports.clock.now_ms();
        self.coordinator.purge_log.borrow_mut().append(record, now);
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge_log(&self) -> LocalFuture<Result<crate::purge::SharedLog, crate::coord::CoordError>> {
        let c = &self.coordinator;
        if c.unavailable.get() {
            return Box::pin(std::future::ready(Err(crate::coord::CoordError(
                "object unreachable (simulated)".into(),
            ))));
        }
        c.log_reads.set(c.log_reads.get() + 1);
        let mut log = c.purge_log.borrow_mut();
        log.prune(self.ports.clock.now_ms());
        Box::pin(std::future::ready(Ok(log.clone())))
    }
}

struct SimBackground(Rc<Executor>);

impl Background for SimBackground {
    fn spawn(&self, fut: LocalFuture<()>) {
        self.0.spawn(fut);
    }
}

/// A deterministic simulation: fakes for every port plus the executor.
pub struct Sim {
    exec: Rc<Executor>,
    /// The virtual clock.
    pub clock: Rc<SimClock>,
    /// The fragment store.
    pub store: Rc<MemStore>,
    /// The origin.
    pub origin: Rc<ScriptedOrigin>,
    /// Captured logs.
    pub log: Rc<MemLog>,
    /// The coordinator objects (used by [`Sim::ports_with_coordinator`]).
    pub coordinator: Rc<SimCoordinator>,
    rng: Rc<SeededRng>,
}

/// Where a spawned task's result lands.
pub type Slot<T> = Rc<RefCell<Option<T>>>;

/// Simulations give up after this many polls (a guard against livelock).
const MAX_POLLS: usize = 50_000_000;

impl Sim {
    /// A simulation starting at a fixed instant, seeded with `seed`.
    pub fn new(seed: u64) -> Sim {
        let clock = SimClock::new(1_800_000_000_000);
        Sim {
            exec: Rc::new(Executor::default()),
            store: Rc::new(MemStore {
                clock: Rc::clone(&clock),
                entries: RefCell::new(HashMap::new()),
                gets: Cell::new(0),
                log_gets: Cell::new(0),
                puts: Cell::new(0),
                fail_gets: Cell::new(false),
                fail_puts: Cell::new(false),
                hang: Cell::new(false),
                latency_ms: Cell::new(0),
                list_limit: Cell::new(usize::MAX),
            }),
            origin: Rc::new(ScriptedOrigin {
                clock: Rc::clone(&clock),
                scripts: RefCell::new(HashMap::new()),
                requests: RefCell::new(Vec::new()),
                served: RefCell::new(HashMap::new()),
            }),
            clock,
            log: Rc::new(MemLog::default()),
            coordinator: Rc::new(SimCoordinator::default()),
            rng: Rc::new(SeededRng::new(seed)),
        }
    }

    /// Current virtual time (ms).
    pub fn now(&self) -> u64 {
        self.clock.now.get()
    }

    /// The ports, backed by this simulation's fakes.
    pub fn ports(&self) -> Ports {
        Ports {
            store: Rc::new(MemStorePort(Rc::clone(&self.store))),
            origin: Rc::new(OriginPort(Rc::clone(&self.origin))),
            clock: Rc::new(SimClockPort(Rc::clone(&self.clock))),
            rng: Rc::clone(&self.rng) as Rc<dyn Rng>,
            background: Rc::new(SimBackground(Rc::clone(&self.exec))),
            signals: Rc::new(SimSignals(Rc::clone(&self.clock))),
            log: Rc::clone(&self.log) as Rc<dyn Log>,
            coordinator: None,
        }
    }

    /// The ports of an isolate whose worker has the coordinator: every
    /// isolate given these shares [`Sim::coordinator`], as isolates share
    /// one Durable Object namespace.
    pub fn ports_with_coordinator(&self) -> Ports {
        Ports {
            coordinator: Some(Rc::new(SimCoordinatorPort {
                coordinator: Rc::clone(&self.coordinator),
                ports: self.ports(),
            })),
            ..self.ports()
        }
    }

    /// Starts `fut`; its result appears in the returned slot when it ends.
    pub fn spawn<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> Slot<T> {
        let slot: Slot<T> = Rc::new(RefCell::new(None));
        let out = Rc::clone(&slot);
        self.exec.spawn(Box::pin(async move {
            let v = fut.await;
            *out.borrow_mut() = Some(v);
        }));
        slot
    }

    /// Runs until every task (background work included) has finished,
    /// jumping virtual time from timer to timer. Panics on a livelock.
    pub fn run(&self) {
        self.run_until(u64::MAX);
    }

    /// Runs until virtual time reaches `until` or nothing is left to do.
    pub fn run_until(&self, until: u64) {
        let mut polls = 0;
        loop {
            polls += self.exec.run_ready();
            assert!(polls < MAX_POLLS, "simulation did not settle (livelock?)");
            if self.exec.live.get() == 0 {
                if until != u64::MAX {
                    self.clock.now.set(self.clock.now.get().max(until));
                    self.clock.fire_due();
                }
                return;
            }
            match self.clock.next_timer() {
                Some(at) if at <= until => {
                    self.clock.now.set(self.clock.now.get().max(at));
                    self.clock.fire_due();
                }
                _ => {
                    if until != u64::MAX && self.clock.now.get() < until {
                        self.clock.now.set(until);
                    }
                    return;
                }
            }
        }
    }

    /// Runs `fut` (and everything it spawns) to completion.
    pub fn block_on<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> T {
        let slot = self.spawn(fut);
        self.run();
        let v = slot.borrow_mut().take();
        v.expect("the future did not complete: it is waiting on something that never happens")
    }
}

/// The origin of every configuration the simulation tests use.
pub const ORIGIN: &str = "http://origin.test";

/// The host the simulated clients ask.
const SHOP: &str = "http://shop.test";

/// A fragment load's outcome: cache status, body (lossy UTF-8) or error,
/// and the virtual time it finished at.
pub type Loaded = (CacheStatus, Result<String, LoadError>, u64);

/// The value a spawned task left in `slot`; panics if it has not finished.
pub fn take<T>(slot: &Slot<T>) -> T {
    slot.borrow_mut().take().expect("request answered")
}

/// A client request for `path_and_query` on `http://shop.test`, with
/// `headers` added in order (repeated names stay separate values).
pub fn client_request(path_and_query: &str, headers: &[(&str, &str)]) -> ClientRequest {
    let url = Url::parse(&format!("{SHOP}{path_and_query}")).expect("client URL");
    headers
        .iter()
        .fold(ClientRequest::new(url), |req, (n, v)| req.with_header(n, v))
}

/// A loader for [`client_request`]`(path_and_query, headers)` in the isolate
/// `shared`, on `ports` (which choose, for instance, whether the isolate
/// has the coordinator).
pub fn loader(
    ports: Ports,
    shared: &Rc<Shared>,
    config: &Rc<Config>,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Loader {
    Loader::new(
        ports,
        Rc::clone(shared),
        Rc::clone(config),
        Rc::new(client_request(path_and_query, headers)),
    )
}

/// Loads `url` as an include of `loader`'s request, to the end.
pub async fn load_fragment(loader: Loader, url: Url) -> Loaded {
    let clock = Rc::clone(&loader.ports().clock);
    let (status, r) = loader.lookup_fragment(&url).await.finish().await;
    let body = r.map(|f| String::from_utf8_lossy(&f.body).into_owned());
    (status, body, clock.now_ms())
}

/// A response drained to its end, as the client would receive it.
#[derive(Debug)]
pub struct Collected {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body: every [`Chunk::Bytes`] of a stream, in order (a
    /// [`Chunk::Failed`] adds nothing, as in the Worker).
    pub body: Vec<u8>,
    /// Whether the reply was a [`Reply::Stream`] rather than a
    /// [`Reply::Full`].
    pub streamed: bool,
    /// Virtual milliseconds from the start of [`serve`] to the headers.
    pub first_byte_ms: u64,
    /// Virtual milliseconds from the start of [`serve`] to the last byte.
    pub total_ms: u64,
}

impl Collected {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Answers `loader`'s request with [`crate::serve::handle`] and drains the
/// reply; `Err` holds the URL of a [`Reply::Pass`].
pub async fn serve(loader: Loader) -> Result<Collected, Url> {
    let clock = Rc::clone(&loader.ports().clock);
    let start = clock.now_ms();
    match crate::serve::handle(loader).await {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let t = clock.now_ms() - start;
            Ok(Collected {
                status,
                headers,
                body,
                streamed: false,
                first_byte_ms: t,
                total_ms: t,
            })
        }
        Reply::Stream {
            status,
            headers,
            first,
            mut page,
        } => {
            let first_byte_ms = clock.now_ms() - start;
            let mut body = first;
            while let Some(chunk) = page.next_chunk().await {
                if let Chunk::Bytes(b) = chunk {
                    body.extend_from_slice(&b);
                }
            }
            Ok(Collected {
                status,
                headers,
                body,
                streamed: true,
                first_byte_ms,
                total_ms: clock.now_ms() - start,
            })
        }
        Reply::Pass(url) => Err(url),
    }
}

/// A simulation of one site: one configuration, one isolate.
pub struct Site {
    /// The simulation and its fakes.
    pub sim: Sim,
    /// The configuration every loader uses.
    pub config: Rc<Config>,
    /// The isolate's shared state.
    pub shared: Rc<Shared>,
}

impl Site {
    /// A site configured by `config_json` (which must be valid), simulated
    /// with `seed`.
    pub fn new(seed: u64, config_json: &str) -> Site {
        Site {
            sim: Sim::new(seed),
            config: Rc::new(Config::from_json_str(config_json).expect("test config is valid")),
            shared: Shared::new(),
        }
    }

    /// A loader for a client request to `path_and_query` with `headers`.
    pub fn loader(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Loader {
        loader(
            self.sim.ports(),
            &self.shared,
            &self.config,
            path_and_query,
            headers,
        )
    }

    /// A loader for a client request built by the caller.
    pub fn loader_for(&self, req: ClientRequest) -> Loader {
        Loader::new(
            self.sim.ports(),
            Rc::clone(&self.shared),
            Rc::clone(&self.config),
            Rc::new(req),
        )
    }

    /// Starts loading `path` on [`ORIGIN`] as an include of a bare request
    /// to `/`.
    pub fn load(&self, path: &str) -> Slot<Loaded> {
        let loader = self.loader("/", &[]);
        let url = Url::parse(&format!("{ORIGIN}{path}")).expect("origin URL");
        self.sim.spawn(load_fragment(loader, url))
    }

    /// Starts serving a client request to `path_and_query` with `headers`;
    /// the reply must not be a pass-through.
    pub fn serve(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Slot<Collected> {
        let loader = self.loader(path_and_query, headers);
        let path = path_and_query.to_owned();
        self.sim.spawn(async move {
            serve(loader)
                .await
                .unwrap_or_else(|url| panic!("{path} passed through to {url}"))
        })
    }

    /// The store key of fragment `path` (on [`ORIGIN`]) for a bare request.
    pub fn key_of(&self, path: &str) -> String {
        let url = Url::parse(&format!("{ORIGIN}{path}")).expect("origin URL");
        let route = self.config.fragment_route(url.path()).expect("routed");
        let req = client_request("/", &[]);
        cache_key(KeyKind::Fragment, route.id, &url, &route.vary, &req)
    }

    /// Stores `body` with `meta` as fragment `path`'s entry (KV expiry in
    /// an hour).
    pub fn put(&self, path: &str, body: &str, meta: EntryMeta) {
        let entry = StoredEntry {
            body: body.as_bytes().to_vec(),
            meta,
        };
        self.sim.store.insert(&self.key_of(path), entry, 3600);
    }
}

/// The JSON example in the `config` module doc (a valid configuration with
/// every field set): the config tests parse it, the property tests mutate
/// it, so the documented example can never drift from what is accepted.
pub fn config_doc_example() -> String {
    let source = include_str!("config.rs");
    let mut in_block = false;
    let mut json = String::new();
    for line in source.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with("```json") {
            in_block = true;
        } else if in_block && doc.starts_with("```") {
            break;
        } else if in_block {
            json.push_str(doc);
            json.push('\n');
        }
    }
    json
}

/// `application/x-www-form-urlencoded` encoding of `s` (every byte but
/// letters and digits escaped), so that a query parameter decodes back to
/// exactly `s`.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Ascending cut points for feeding an input of `len` bytes in chunks: a
/// chunk size class (1, 3, 16, 100 or 4096 bytes at most) drawn from
/// `seed`, then chunk lengths up to it. The chunk-safety tests compile
/// inputs cut this way and compare with compiling them whole.
pub fn random_cuts(len: usize, seed: u64) -> Vec<usize> {
    let rng = SeededRng::scrambled(seed);
    let max_chunk = [1, 3, 16, 100, 4096][rng.below(5)];
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        at += 1 + rng.below(max_chunk);
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}
