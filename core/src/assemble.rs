//! Ordered, concurrent, streaming page assembly.
//!
//! A page is a compiled shell evaluated for one request into a
//! [`Plan`]: literal byte ranges, evaluated text, includes and `esi:try`
//! blocks. Assembly works in two phases:
//!
//! 1. [`Page::prepare`] looks up every top-level include at once (KV reads
//!    in parallel, no origin wait), so the response headers can say which
//!    fragments are private and what each one's cache status is.
//! 2. [`Page::next_chunk`] yields the output in document order. Every
//!    segment's work runs concurrently; bytes go out as soon as everything
//!    before them is ready, so time to first byte does not wait for a slow
//!    fragment further down, and total time is close to the slowest fragment.
//!
//! Nested includes (a fragment that contains ESI) are assembled recursively,
//! up to `limits.max_depth` levels, with cycle detection; their output is
//! held as references to template sources and fragment bodies, not copies.
//!
//! # Failure policy
//!
//! A failed include tries its `alt`, then `onerror="continue"` drops it. An
//! include that still fails makes its enclosing `esi:try` output the except
//! branch, or fails the fragment that contains it. At the top level, a
//! failure before any byte was sent fails the page (the adapter answers with
//! an error status: 503 with `Retry-After` for a cold fragment on a `fail`
//! route, 502 otherwise); after bytes were sent the slot stays empty and the
//! failure is logged, because a streamed page cannot change its status.
//! Includes past `max_includes`, past the page deadline, outside the
//! allow-list, or beyond `max_depth` fail the same way. Output past
//! `max_page_bytes` ends the page, logged, as described next.
//!
//! # Output budget
//!
//! The page has one byte budget, `limits.max_page_bytes`, and every piece
//! of output is charged against it *before* it is used: literal ranges of
//! a template (so `esi:inline` copies count each time they are output),
//! evaluated text, fragment bodies (each time a fragment is included), at
//! every nesting level. Pieces are not copied while the page is assembled:
//! a segment's output is a list of references to template sources and
//! fragment bodies, and bytes are copied once, into the chunk handed to the
//! caller. So neither the output nor any buffer built for it can exceed the
//! budget, however often a shell includes or inlines the same big fragment.
//!
//! The budget counts bytes *produced*, not bytes sent, and is never given
//! back: the output of an `esi:try` attempt that is discarded for the
//! except branch stays charged. This keeps the budget monotone (a piece
//! refused for lack of budget could not have fitted later either) and
//! bounds the work done, not only what is sent.
//!
//! A piece that does not fit exhausts the budget: it and every later piece
//! fail with [`IncludeError::PageTooLarge`], which no fallback (`alt`,
//! `onerror="continue"`, `esi:except`) absorbs. At the top level this ends
//! the page: the segments before the first one that failed are sent, the
//! rest is cut off and an error is logged; if nothing was produced yet, the
//! page fails like any other include failure before the first byte.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::future::{join_all, select, Either, FutureExt};
use futures_util::stream::{FuturesOrdered, StreamExt};

use crate::cache::breaker::BreakerState;
use crate::cache::CacheStatus;
use crate::esi::{
    Include, IncludeSrc, Plan, RequestInputs, RequestVars, Segment, SrcRefusal, Template,
};
use crate::loader::{Fragment, LoadError, Loader, Lookup, VaryHint};
use crate::ports::{LocalFuture, LogLevel};
use crate::url::{Url, UrlError};

/// Why an include produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncludeError {
    /// `src` is not a usable URL.
    #[error("bad include URL {src:?}: {error}")]
    BadUrl {
        /// The evaluated `src`.
        src: String,
        /// What is wrong with it.
        error: UrlError,
    },
    /// A variable substituted into `src` made it a URL the template did
    /// not allow for (a relative include made absolute): never fetched.
    #[error("include {src:?} refused: {reason}")]
    RefusedSrc {
        /// The evaluated `src`.
        src: String,
        /// What the variable did.
        reason: SrcRefusal,
    },
    /// The URL is not on an allowed origin: never fetched.
    #[error("include {0} is not on an allowed origin")]
    NotAllowed(String),
    /// More includes than `limits.max_includes` on one page.
    #[error("more than {0} includes on one page")]
    TooManyIncludes(u32),
    /// Nested deeper than `limits.max_depth`.
    #[error("include {url} is nested deeper than {max}")]
    TooDeep {
        /// The include that was not fetched.
        url: String,
        /// The configured limit.
        max: u32,
    },
    /// The include would include itself.
    #[error("include cycle through {0}")]
    Cycle(String),
    /// The page deadline passed first.
    #[error("page deadline of {0} ms passed")]
    Deadline(u32),
    /// The origin answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The include.
        url: String,
        /// Its status.
        status: u16,
    },
    /// The page's output budget (`limits.max_page_bytes`) is used up.
    #[error("page output exceeds max_page_bytes ({0})")]
    PageTooLarge(usize),
    /// Loading failed.
    #[error("{url}: {error}")]
    Load {
        /// The include.
        url: String,
        /// Why.
        error: LoadError,
    },
}

impl IncludeError {
    /// `Retry-After` seconds when the failure is temporary: a busy cold
    /// fragment, or an origin whose circuit is open.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            IncludeError::Load { error, .. } => error.retry_after(),
            _ => None,
        }
    }
}

/// What happened to one include (or the page shell), for headers, logs,
/// the per-page record and the inspector.
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentReport {
    /// Path (and query) of the include on its origin.
    pub path: String,
    /// Cache status.
    pub status: CacheStatus,
    /// Age of a cached copy, in seconds.
    pub age_s: Option<u64>,
    /// When its lookup began, in milliseconds after the request began
    /// ([`Loader::began_ms`]): its place on the page's time axis.
    pub start_ms: u64,
    /// Milliseconds from lookup to body.
    pub ms: u64,
    /// Whether this request itself asked the origin for it (a miss it led,
    /// or a bypass), rather than reading a cache or waiting for another
    /// request's fetch.
    pub fetched: bool,
    /// Nesting depth (0 for the shell's own includes).
    pub depth: u32,
    /// The state of the include's origin's circuit breaker, when it is not
    /// closed (`open`, `half-open`).
    pub origin: Option<&'static str>,
    /// The fragment served, once known: its cache key and version. Shared,
    /// not copied.
    pub fragment: Option<Rc<Fragment>>,
}

impl FragmentReport {
    /// A report whose lookup starts now, `start_ms` into the request.
    pub fn new(path: String, status: CacheStatus, depth: u32, start_ms: u64) -> Self {
        FragmentReport {
            path,
            status,
            age_s: None,
            start_ms,
            ms: 0,
            fetched: false,
            depth,
            origin: None,
            fragment: None,
        }
    }
}

/// One piece of page output.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes to send.
    Bytes(Vec<u8>),
    /// An include at the top level failed after all fallbacks.
    Failed(IncludeError),
}

/// Per-page state shared by every include future of the page.
struct PageState {
    loader: Loader,
    vars: RequestVars,
    includes: Cell<u32>,
    deadline: u64,
    private: Cell<bool>,
    uncertain: Cell<bool>,
    /// Request inputs read by every template evaluated for this page.
    inputs: Cell<RequestInputs>,
    set_cookies: RefCell<Vec<String>>,
    vary: RefCell<VaryHint>,
    /// Bytes of output charged so far (see the module's "Output budget").
    produced: Cell<usize>,
    /// `limits.max_page_bytes`.
    max_bytes: usize,
    /// Set once a piece did not fit: every later charge fails too.
    exhausted: Cell<bool>,
}

/// One piece of output, referenced rather than copied.
enum Piece {
    /// A byte range of a template's source.
    Source(Rc<Template>, std::ops::Range<usize>),
    /// A whole fragment body.
    Body(Rc<[u8]>),
    /// Bytes made during evaluation.
    Owned(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Source(t, r) => t.source().get(r.clone()).unwrap_or_default(),
            Piece::Body(b) => b,
            Piece::Owned(v) => v,
        }
    }
}

/// The output of a segment, in order.
type Output = Vec<Piece>;

type SegmentFuture = LocalFuture<Result<Output, IncludeError>>;

/// A page being assembled.
pub struct Page {
    state: Rc<PageState>,
    /// The whole page, when everything was ready at once (see
    /// [`PageState::stitch_ready`]); the stream is then empty.
    ready: Option<Output>,
    stream: FuturesOrdered<SegmentFuture>,
    sent: usize,
    done: bool,
    /// A failure found while merging ready chunks, reported next time.
    held_error: Option<IncludeError>,
}

impl Page {
    /// Phase one: evaluate `template` for this request and look up every
    /// top-level include. `base` is the shell's URL on the origin.
    pub async fn prepare(loader: Loader, template: Rc<Template>, base: Url) -> Page {
        let vars = loader.request().esi_vars();
        let config = Rc::clone(loader.config());
        let now = loader.ports().clock.now_ms();
        let state = Rc::new(PageState {
            loader,
            vars,
            includes: Cell::new(0),
            deadline: now + u64::from(config.limits.page_timeout_ms),
            private: Cell::new(false),
            uncertain: Cell::new(false),
            inputs: Cell::new(RequestInputs::default()),
            set_cookies: RefCell::new(Vec::new()),
            vary: RefCell::new(VaryHint::default()),
            produced: Cell::new(0),
            max_bytes: config.limits.max_page_bytes,
            exhausted: Cell::new(false),
        });
        let plan: Plan = template.evaluate(&state.vars);
        state.read(plan.inputs);
        let base = Rc::new(base);
        // Start every top-level lookup at once, in document order. What
        // completes without waiting (isolate memory, private fragments,
        // includes that fail at once) informs the headers; the rest goes on
        // inside its segment, so that neither a KV read nor an origin fetch
        // delays the first bytes. Unknown at header time means private.
        let mut lookups: Vec<Option<Pre>> = Vec::with_capacity(plan.segments.len());
        for seg in &plan.segments {
            let Segment::Include(inc) = seg else {
                lookups.push(None);
                continue;
            };
            let (state, base, src) = (Rc::clone(&state), Rc::clone(&base), inc.src.clone());
            let mut fut: StartFuture =
                Box::pin(async move { state.start(&src, &base, 0, &[]).await });
            lookups.push(Some(match (&mut fut).now_or_never() {
                Some(started) => Pre::Ready(started),
                None => Pre::Pending(fut),
            }));
        }
        // Private fragments whose Set-Cookie goes to the client must finish
        // before the headers are sent (all of them concurrently).
        let lookups = join_all(lookups.into_iter().map(|pre| async move {
            match pre {
                Some(Pre::Ready(Ok(started))) if started.lookup.wants_set_cookie => {
                    let lookup = started.lookup.settle().await;
                    Some(Pre::Ready(Ok(Started { lookup, ..started })))
                }
                other => other,
            }
        }))
        .await;
        for pre in lookups.iter().flatten() {
            if let Pre::Ready(Ok(started)) = pre {
                state
                    .set_cookies
                    .borrow_mut()
                    .extend_from_slice(started.lookup.set_cookies());
                state.vary.borrow_mut().merge(&started.lookup.vary);
            }
        }
        let uncertain = plan
            .segments
            .iter()
            .zip(&lookups)
            .any(|(seg, pre)| header_time_unknown(seg, pre.as_ref()));
        state.uncertain.set(uncertain);
        if !uncertain {
            if let Some(pieces) = state.stitch_ready(&template, &plan.segments, &lookups) {
                return Page {
                    state,
                    ready: Some(pieces),
                    stream: FuturesOrdered::new(),
                    sent: 0,
                    done: false,
                    held_error: None,
                };
            }
        }
        let mut stream: FuturesOrdered<SegmentFuture> = FuturesOrdered::new();
        for (seg, pre) in plan.segments.into_iter().zip(lookups) {
            stream.push_back(segment_future(
                &state,
                &template,
                seg,
                &base,
                0,
                Rc::new(Vec::new()),
                pre,
            ));
        }
        Page {
            state,
            ready: None,
            stream,
            sent: 0,
            done: false,
            held_error: None,
        }
    }

    /// Whether any include seen so far is user-specific.
    pub fn is_private(&self) -> bool {
        self.state.private.get()
    }

    /// Whether, when the headers are decided, part of the page is not yet
    /// known: a fragment still loading (the origin may mark it private), a
    /// cached fragment with nested includes, an `esi:try`, or a fallback
    /// `alt` nobody has looked up. Such a page is sent `private, no-store`:
    /// a private fragment found after the headers are sent could not change
    /// them.
    pub fn may_be_private(&self) -> bool {
        self.state.uncertain.get()
    }

    /// `Set-Cookie` values of top-level private fragments whose route passes
    /// them on (`pass_set_cookie`).
    pub fn set_cookies(&self) -> Vec<String> {
        self.state.set_cookies.borrow().clone()
    }

    /// The request inputs (cookies, headers, query, host) that the shell's
    /// evaluation read, and those of nested fragments evaluated so far.
    /// A page that read a cookie depends on who asked; one that read a
    /// request header varies on it.
    pub fn request_inputs(&self) -> RequestInputs {
        self.state.inputs.get()
    }

    /// What the page's top-level fragments vary on besides the URL.
    pub fn vary(&self) -> VaryHint {
        self.state.vary.borrow().clone()
    }

    /// Reports for the request so far: the shell's first, then every
    /// include seen, in document order ([`Loader::reports`]).
    pub fn reports(&self) -> Vec<FragmentReport> {
        self.state.loader.reports()
    }

    /// Phase two: the next piece of output in document order, or `None` at
    /// the end. Failed top-level includes are reported as [`Chunk::Failed`];
    /// the caller decides (by whether it has sent anything) what that means.
    pub async fn next_chunk(&mut self) -> Option<Chunk> {
        if let Some(e) = self.held_error.take() {
            return self.failed(e);
        }
        if self.done {
            return None;
        }
        let mut pieces = if let Some(pieces) = self.ready.take() {
            self.done = true;
            pieces
        } else {
            match self.stream.next().await? {
                Ok(pieces) => pieces,
                Err(e) => return self.failed(e),
            }
        };
        // Everything after it that is ready right now goes out in the same
        // chunk: one write instead of one per literal and fragment. Segments
        // not ready stay queued and their wake-ups are kept by the stream.
        while !self.done {
            match self.stream.next().now_or_never() {
                Some(Some(Ok(more))) => pieces.extend(more),
                Some(Some(Err(e))) => {
                    self.held_error = Some(e);
                    break;
                }
                Some(None) => {
                    self.done = true;
                    break;
                }
                None => break,
            }
        }
        // The only copy of the output: every piece was charged, so this
        // buffer stays within the budget.
        let len = pieces.iter().map(|p| p.bytes().len()).sum();
        let mut bytes = Vec::with_capacity(len);
        for p in &pieces {
            bytes.extend_from_slice(p.bytes());
        }
        self.sent += bytes.len();
        debug_assert!(self.sent <= self.state.max_bytes);
        if bytes.is_empty() {
            if let Some(e) = self.held_error.take() {
                return self.failed(e);
            }
        }
        Some(Chunk::Bytes(bytes))
    }

    /// A failed top-level segment. An exhausted budget ends the page: as a
    /// failure if nothing was produced yet, else by cutting the rest off.
    fn failed(&mut self, e: IncludeError) -> Option<Chunk> {
        if !matches!(e, IncludeError::PageTooLarge(_)) {
            return Some(Chunk::Failed(e));
        }
        self.done = true;
        self.stream = FuturesOrdered::new();
        self.state.log(
            LogLevel::Error,
            &format!(
                "page exceeds max_page_bytes ({}); output cut off after {} bytes",
                self.state.max_bytes, self.sent
            ),
        );
        if self.sent == 0 {
            Some(Chunk::Failed(e))
        } else {
            None
        }
    }

    /// Whether the whole page has been produced (nothing left to stream).
    pub fn is_complete(&self) -> bool {
        self.done && self.held_error.is_none()
    }

    /// Bytes of output charged against the page's budget so far: an upper
    /// bound of what was, or will be, copied into chunks.
    pub fn bytes_charged(&self) -> usize {
        self.state.produced.get()
    }
}

/// A top-level include's lookup as the page was prepared: done, or still
/// going (waiting for KV), to be finished inside its segment.
enum Pre {
    Ready(Result<Started, IncludeError>),
    Pending(StartFuture),
}

type StartFuture = LocalFuture<Result<Started, IncludeError>>;

/// A started include: the resolved URL and its lookup.
struct Started {
    url: Url,
    report: usize,
    began: u64,
    lookup: Lookup,
}

impl PageState {
    fn read(&self, inputs: RequestInputs) {
        let mut all = self.inputs.get();
        all.merge(inputs);
        self.inputs.set(all);
    }

    fn log(&self, level: LogLevel, msg: &str) {
        self.loader.ports().log.log(level, msg);
    }

    /// The whole top level of a page whose every piece is already at hand:
    /// literal text, evaluated text, and fragments found in memory that are
    /// plain (no ESI, a 2xx, not personal). Then no segment future is made
    /// at all: the page is stitched from references and copied once. `None`
    /// when anything needs work (the page then goes the general way).
    fn stitch_ready(
        &self,
        template: &Rc<Template>,
        segments: &[Segment],
        lookups: &[Option<Pre>],
    ) -> Option<Output> {
        let mut pieces = Vec::with_capacity(segments.len());
        let mut total = 0usize;
        for (seg, pre) in segments.iter().zip(lookups) {
            let piece = match (seg, pre) {
                (Segment::Literal(r), _) => Piece::Source(Rc::clone(template), r.clone()),
                (Segment::Text(b), _) => Piece::Owned(b.clone()),
                (Segment::Include(_), Some(Pre::Ready(Ok(started)))) => {
                    let lookup = &started.lookup;
                    let f = lookup.ready_fragment()?;
                    let plain = f.status.is_success()
                        && f.set_cookies.is_empty()
                        && lookup.status != CacheStatus::Bypass
                        && !f.may_contain_esi();
                    if !plain {
                        return None;
                    }
                    Piece::Body(Rc::clone(&f.body))
                }
                _ => return None,
            };
            total += piece.bytes().len();
            pieces.push(piece);
        }
        // Over budget: the general way cuts the page off where it must.
        if self.produced.get().saturating_add(total) > self.max_bytes {
            return None;
        }
        self.charge(total).ok()?;
        Some(pieces)
    }

    /// Charges `n` bytes of output against the page's budget, before they
    /// are used. Once a charge fails, every later one fails too.
    fn charge(&self, n: usize) -> Result<(), IncludeError> {
        let used = self.produced.get();
        if self.exhausted.get() || used.saturating_add(n) > self.max_bytes {
            self.exhausted.set(true);
            return Err(IncludeError::PageTooLarge(self.max_bytes));
        }
        self.produced.set(used + n);
        Ok(())
    }

    /// Resolves, checks and looks up one include `src`.
    async fn start(
        &self,
        src: &IncludeSrc,
        base: &Url,
        depth: u32,
        chain: &[String],
    ) -> Result<Started, IncludeError> {
        let config = self.loader.config();
        let limits = &config.limits;
        let n = self.includes.get() + 1;
        self.includes.set(n);
        if n > limits.max_includes {
            return Err(IncludeError::TooManyIncludes(limits.max_includes));
        }
        if let Some(reason) = src.refusal() {
            return Err(IncludeError::RefusedSrc {
                src: src.to_string(),
                reason,
            });
        }
        let mut url = base.resolve(src).map_err(|error| IncludeError::BadUrl {
            src: src.to_string(),
            error,
        })?;
        // An include addressed to the worker's own host means the origin.
        if url.origin() == self.loader.request().url.origin() {
            url = url.with_origin(&config.origin);
        }
        if !config.allow.allows(&url) {
            return Err(IncludeError::NotAllowed(url.to_string()));
        }
        if depth > limits.max_depth {
            return Err(IncludeError::TooDeep {
                url: url.to_string(),
                max: limits.max_depth,
            });
        }
        let id = url.to_string();
        if chain.contains(&id) {
            return Err(IncludeError::Cycle(id));
        }
        let began = self.loader.ports().clock.now_ms();
        // Take the report slot before waiting, so reports stay in document order.
        let start_ms = began.saturating_sub(self.loader.began_ms());
        let report = self.loader.add_report(FragmentReport::new(
            url.path_and_query(),
            CacheStatus::Lookup,
            depth,
            start_ms,
        ));
        let lookup = self.loader.lookup_fragment(&url).await;
        if lookup.private {
            self.private.set(true);
        }
        // The breaker table is empty while every origin is healthy: then
        // there is no origin string to build and look up per include.
        let breakers = &self.loader.shared().breaker;
        let breaker = if breakers.is_empty() {
            BreakerState::Closed
        } else {
            breakers.state(&url.origin().to_string(), began)
        };
        self.loader.update_report(report, |r| {
            r.status = lookup.status;
            r.age_s = lookup.age_s;
            r.fetched = matches!(lookup.status, CacheStatus::Miss | CacheStatus::Bypass);
            r.origin = (breaker != BreakerState::Closed).then(|| breaker.as_str());
        });
        Ok(Started {
            url,
            report,
            began,
            lookup,
        })
    }

    /// Finishes a started include: body, error status, nested ESI.
    async fn finish(
        self: &Rc<Self>,
        started: Started,
        depth: u32,
        chain: &[String],
    ) -> Result<Output, IncludeError> {
        let Started {
            url,
            report,
            began,
            lookup,
        } = started;
        let (status, result) = self.until_deadline(lookup.finish()).await?;
        let now = self.loader.ports().clock.now_ms();
        self.loader.update_report(report, |r| {
            r.status = status;
            r.ms = now.saturating_sub(began);
            r.fragment = result.as_ref().ok().cloned();
        });
        let frag = result.map_err(|error| IncludeError::Load {
            url: url.to_string(),
            error,
        })?;
        if frag.status.as_u16() >= 400 {
            return Err(IncludeError::Status {
                url: url.to_string(),
                status: frag.status.as_u16(),
            });
        }
        if !frag.set_cookies.is_empty() || status == CacheStatus::Bypass {
            self.private.set(true);
        }
        let mut chain = chain.to_vec();
        chain.push(url.to_string());
        self.render(&frag, url, depth + 1, Rc::new(chain)).await
    }

    /// The output of a loaded fragment: its body, with any ESI in it processed.
    async fn render(
        self: &Rc<Self>,
        frag: &Fragment,
        url: Url,
        depth: u32,
        chain: Rc<Vec<String>>,
    ) -> Result<Output, IncludeError> {
        let whole = |frag: &Fragment| {
            self.charge(frag.body.len())?;
            Ok(vec![Piece::Body(Rc::clone(&frag.body))])
        };
        if !frag.may_contain_esi() {
            return whole(frag);
        }
        let template =
            self.loader
                .shared()
                .templates
                .get(frag, &url, self.loader.ports().log.as_ref());
        if !template.has_esi() {
            return whole(frag);
        }
        let plan = template.evaluate(&self.vars);
        self.read(plan.inputs);
        let base = Rc::new(url);
        let futures: Vec<SegmentFuture> = plan
            .segments
            .into_iter()
            .map(|seg| segment_future(self, &template, seg, &base, depth, Rc::clone(&chain), None))
            .collect();
        let parts = join_all(futures).await;
        let mut out = Vec::new();
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    async fn until_deadline<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, IncludeError> {
        let clock = &self.loader.ports().clock;
        let now = clock.now_ms();
        let limit = self.loader.config().limits.page_timeout_ms;
        if now >= self.deadline {
            return Err(IncludeError::Deadline(limit));
        }
        let timer = clock.sleep(self.deadline - now);
        match select(Box::pin(fut), timer).await {
            Either::Left((v, _)) => Ok(v),
            Either::Right(_) => Err(IncludeError::Deadline(limit)),
        }
    }

    /// One include with its fallbacks: `src`, then `alt`, then `onerror`.
    async fn include(
        self: Rc<Self>,
        inc: Include,
        base: Rc<Url>,
        depth: u32,
        chain: Rc<Vec<String>>,
        pre: Option<Pre>,
    ) -> Result<Output, IncludeError> {
        let first = match pre {
            Some(Pre::Ready(started)) => started,
            Some(Pre::Pending(lookup)) => lookup.await,
            None => self.start(&inc.src, &base, depth, &chain).await,
        };
        let err = match first {
            Ok(started) => match self.finish(started, depth, &chain).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => e,
            },
            Err(e) => e,
        };
        // No fallback can help once the page's output budget is used up.
        if matches!(err, IncludeError::PageTooLarge(_)) {
            return Err(err);
        }
        self.log(LogLevel::Warn, &format!("include failed: {err}"));
        let err = match &inc.alt {
            Some(alt) => {
                let attempt = match self.start(alt, &base, depth, &chain).await {
                    Ok(started) => self.finish(started, depth, &chain).await,
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(bytes) => return Ok(bytes),
                    Err(e @ IncludeError::PageTooLarge(_)) => return Err(e),
                    Err(e) => {
                        self.log(LogLevel::Warn, &format!("alt failed: {e}"));
                        // Report the cause the operator can act on: the src failure
                        // unless the alt's own is more telling (a busy cold alt).
                        if e.retry_after().is_some() {
                            e
                        } else {
                            err
                        }
                    }
                }
            }
            None => err,
        };
        if inc.onerror_continue {
            return Ok(Output::new());
        }
        Err(err)
    }

    /// `esi:try`: the attempt, or the except branch if an include in the
    /// attempt failed. Only the chosen branch's output is used.
    async fn try_block(
        self: Rc<Self>,
        template: Rc<Template>,
        attempt: Vec<Segment>,
        except: Vec<Segment>,
        base: Rc<Url>,
        depth: u32,
        chain: Rc<Vec<String>>,
    ) -> Result<Output, IncludeError> {
        match self
            .sequence(&template, attempt, &base, depth, &chain)
            .await
        {
            Ok(out) => Ok(out),
            // The attempt's charged output is not given back (see the
            // module's "Output budget"), and an exhausted budget is final.
            Err(e @ IncludeError::PageTooLarge(_)) => Err(e),
            Err(e) => {
                self.log(
                    LogLevel::Info,
                    &format!("esi:try attempt failed ({e}); using except"),
                );
                self.sequence(&template, except, &base, depth, &chain).await
            }
        }
    }

    async fn sequence(
        self: &Rc<Self>,
        template: &Rc<Template>,
        segments: Vec<Segment>,
        base: &Rc<Url>,
        depth: u32,
        chain: &Rc<Vec<String>>,
    ) -> Result<Output, IncludeError> {
        let futures: Vec<SegmentFuture> = segments
            .into_iter()
            .map(|seg| segment_future(self, template, seg, base, depth, Rc::clone(chain), None))
            .collect();
        let mut out = Vec::new();
        for part in join_all(futures).await {
            out.extend(part?);
        }
        Ok(out)
    }
}

fn segment_future(
    state: &Rc<PageState>,
    template: &Rc<Template>,
    seg: Segment,
    base: &Rc<Url>,
    depth: u32,
    chain: Rc<Vec<String>>,
    pre: Option<Pre>,
) -> SegmentFuture {
    match seg {
        Segment::Literal(range) => {
            let len = template.source().get(range.clone()).map_or(0, <[u8]>::len);
            let out = state
                .charge(len)
                .map(|()| vec![Piece::Source(Rc::clone(template), range)]);
            Box::pin(std::future::ready(out))
        }
        Segment::Text(bytes) => {
            let out = state
                .charge(bytes.len())
                .map(|()| vec![Piece::Owned(bytes)]);
            Box::pin(std::future::ready(out))
        }
        Segment::Include(inc) => {
            Box::pin(Rc::clone(state).include(inc, Rc::clone(base), depth, chain, pre))
        }
        Segment::Try { attempt, except } => Box::pin(Rc::clone(state).try_block(
            Rc::clone(template),
            attempt,
            except,
            Rc::clone(base),
            depth,
            chain,
        )),
    }
}

/// Whether a top-level segment could still turn out user-specific after the
/// headers are sent (see [`Page::may_be_private`]).
fn header_time_unknown(seg: &Segment, pre: Option<&Pre>) -> bool {
    match (seg, pre) {
        // An esi:try's includes are looked up only when it runs.
        (Segment::Try { .. }, _) => true,
        // A lookup still waiting (for KV): its privacy is not known yet.
        (Segment::Include(_), Some(Pre::Pending(_))) => true,
        (Segment::Include(inc), Some(Pre::Ready(Err(_)))) => inc.alt.is_some(),
        (Segment::Include(inc), Some(Pre::Ready(Ok(started)))) => {
            let l = &started.lookup;
            if l.private {
                return false;
            }
            if !l.is_ready() {
                return true;
            }
            match l.ready_fragment() {
                Some(f) => f.may_contain_esi() || (f.status.as_u16() >= 300 && inc.alt.is_some()),
                None => inc.alt.is_some(),
            }
        }
        _ => false,
    }
}
