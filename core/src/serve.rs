//! One client request, end to end, as far as it can be decided without the
//! runtime: route matching, the page shell, ESI gating, the page's response
//! headers, and the first chunk of output. The adapter only turns a
//! [`Reply`] into a Worker `Response`.

use std::fmt::Write as _;
use std::rc::Rc;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE,
    RETRY_AFTER, SET_COOKIE,
};
use http::StatusCode;

use crate::assemble::{Chunk, FragmentReport, IncludeError, Page};
use crate::cache::policy::parse_directives;
use crate::cache::CacheStatus;
use crate::config::{Route, UnknownRoutes};
use crate::headers::{drop_for_rewritten_body, merge_vary, value as header_value};
use crate::loader::{Fragment, LoadError, Loader};
use crate::ports::{LogLevel, OriginResponse};
use crate::url::Url;

/// Header listing each fragment's cache status.
pub const STATUS_HEADER: &str = "x-fragcache";

/// `Cache-Control` of a page that depends on who asked.
const PRIVATE: &str = "private, no-store";

/// What the adapter should send.
pub enum Reply {
    /// Proxy the client's request, untouched, to this origin URL.
    Pass(Url),
    /// A complete response.
    Full {
        /// HTTP status.
        status: StatusCode,
        /// Headers.
        headers: HeaderMap,
        /// Body.
        body: Vec<u8>,
    },
    /// A streamed page: send the headers and `first`, then drain `page`.
    Stream {
        /// HTTP status.
        status: StatusCode,
        /// Headers.
        headers: HeaderMap,
        /// Output already produced.
        first: Vec<u8>,
        /// The rest of the page.
        page: Box<Page>,
    },
}

impl Reply {
    /// A plain-text error response, never stored by anyone. Every error the
    /// worker answers with, the adapter's own included, is built here.
    pub fn error(status: StatusCode, message: &str) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Reply::Full {
            status,
            headers,
            body: format!("{message}\n").into_bytes(),
        }
    }

    /// A JSON answer (admin endpoints), never stored.
    pub fn json(status: StatusCode, body: String) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Reply::Full {
            status,
            headers,
            body: body.into_bytes(),
        }
    }

    /// The status of this reply (`None` for a pass-through).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Reply::Pass(_) => None,
            Reply::Full { status, .. } | Reply::Stream { status, .. } => Some(*status),
        }
    }

    /// The headers of this reply (`None` for a pass-through).
    pub fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Reply::Pass(_) => None,
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => Some(headers),
        }
    }
}

/// Serves one request.
pub async fn handle(loader: Loader) -> Reply {
    let config = Rc::clone(loader.config());
    let req = Rc::clone(loader.request());
    let origin_url = req.url.with_origin(&config.origin);
    let route = match config.route(req.url.path()) {
        Route::Page(r) => r,
        Route::Fragment(_) => return Reply::Pass(origin_url),
        Route::Unknown => {
            return match config.unknown_routes {
                UnknownRoutes::Pass => Reply::Pass(origin_url),
                UnknownRoutes::NotFound => Reply::error(StatusCode::NOT_FOUND, "not found"),
            }
        }
    };
    let began = loader.ports().clock.now_ms();
    let report = loader.add_report(FragmentReport::new(
        "shell".into(),
        CacheStatus::Lookup,
        0,
        began.saturating_sub(loader.began_ms()),
    ));
    let lookup = loader.lookup_page(&origin_url, route).await;
    let (age, private_shell) = (lookup.age_s, lookup.private);
    let fetched = matches!(lookup.status, CacheStatus::Miss | CacheStatus::Bypass);
    let (shell_status, shell) = lookup.finish().await;
    let shell_ms = loader.ports().clock.now_ms().saturating_sub(began);
    loader.update_report(report, |r| {
        r.status = shell_status;
        r.age_s = age;
        r.ms = shell_ms;
        r.fetched = fetched;
        r.fragment = shell.as_ref().ok().cloned();
    });
    let shell = match shell {
        Ok(s) => s,
        Err(e) => {
            loader.ports().log.log(
                LogLevel::Error,
                &format!("{}: page shell failed: {e}", origin_url),
            );
            return load_error_reply(&e, "page shell");
        }
    };
    render_shell(
        loader,
        shell,
        age,
        private_shell,
        route.require_surrogate_control,
    )
    .await
}

/// Whether a response the origin sent on a pass-through route asks us to
/// process it as an ESI page shell: a 200 with
/// `Surrogate-Control: content="ESI/1.0"`. The adapter then reads its body
/// (up to `limits.max_shell_bytes`) and calls [`handle_surrogate_shell`];
/// otherwise it sends the response on, through [`passthrough_headers`].
pub fn wants_esi(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK
        && headers
            .get_all("surrogate-control")
            .iter()
            .filter_map(crate::headers::text)
            .any(|v| parse_directives(v).esi)
}

/// The headers of a response proxied as it is: the origin's, minus what is
/// addressed to us (`Surrogate-Control`, and the tags: `Surrogate-Key`,
/// `Cache-Tag`). The body is the origin's own, so
/// framing, encoding and validators stay (the runtime handles the
/// connection-level headers itself).
pub fn passthrough_headers(origin: &HeaderMap) -> HeaderMap {
    let mut kept = origin.clone();
    for name in ADDRESSED_TO_US {
        kept.remove(*name);
    }
    kept
}

/// Origin response headers addressed to us (a surrogate), removed even from
/// responses otherwise passed on as they are.
pub const ADDRESSED_TO_US: &[&str] = &["surrogate-control", "surrogate-key", "cache-tag"];

/// The answer when an origin-driven ESI shell is larger than
/// `limits.max_shell_bytes`: its markup must not reach the client
/// unprocessed, so the page fails instead.
pub fn shell_too_large(loader: &Loader) -> Reply {
    let max = loader.config().limits.max_shell_bytes;
    loader.ports().log.log(
        LogLevel::Error,
        &format!(
            "{}: ESI page shell exceeds limits.max_shell_bytes ({max}); answering 502",
            loader.request().url
        ),
    );
    Reply::error(
        StatusCode::BAD_GATEWAY,
        &format!("fragcache: the page shell exceeds {max} bytes"),
    )
}

/// A shell the origin sent on a pass-through route with
/// `Surrogate-Control: content="ESI/1.0"` (see [`wants_esi`]): the origin
/// asks for ESI processing, so the page is assembled like a configured page
/// route (its shell uncached).
pub async fn handle_surrogate_shell(loader: Loader, shell: OriginResponse) -> Reply {
    let now = loader.ports().clock.now_ms();
    // Like any uncached shell: its own Set-Cookie and headers kept.
    let fragment = Rc::new(Fragment::from_response(&shell, now, None, true, true));
    // The shell came with the pass-through request, which began with the
    // request itself.
    let mut report = FragmentReport::new("shell".into(), CacheStatus::Bypass, 0, 0);
    report.ms = now.saturating_sub(loader.began_ms());
    report.fetched = true;
    report.fragment = Some(Rc::clone(&fragment));
    loader.add_report(report);
    render_shell(loader, fragment, None, false, true).await
}

/// The headers every page built from `shell` starts with: the origin's
/// (already filtered by [`crate::headers::keep_from_origin`]), a `Content-Type`, the
/// shell's `Set-Cookie`s, and the age of a cached shell.
fn shell_headers(shell: &Fragment, age_s: Option<u64>) -> HeaderMap {
    let mut headers = shell.headers.clone();
    if !headers.contains_key(CONTENT_TYPE) {
        let ct = shell
            .content_type
            .as_deref()
            .and_then(header_value)
            .unwrap_or(HeaderValue::from_static("text/html; charset=utf-8"));
        headers.insert(CONTENT_TYPE, ct);
    }
    for c in &shell.set_cookies {
        if let Some(v) = header_value(c) {
            headers.append(SET_COOKIE, v);
        }
    }
    if let Some(age) = age_s {
        headers.insert(AGE, HeaderValue::from(age));
    }
    headers
}

/// Turns a loaded shell into a reply: passed through when it has no ESI (or
/// is an error, or lacks Surrogate-Control where that is required),
/// otherwise assembled.
async fn render_shell(
    loader: Loader,
    shell: Rc<Fragment>,
    shell_age_s: Option<u64>,
    private_shell: bool,
    require_surrogate_control: bool,
) -> Reply {
    let origin_url = loader.request().url.with_origin(&loader.config().origin);
    let mut headers = shell_headers(&shell, shell_age_s);
    let debug_bypass = loader.request().debug_bypass;
    if debug_bypass {
        // Whatever the shell says: this answer was made for one debugging
        // request and must not be stored anywhere.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
        headers.remove(AGE);
    }
    let passthrough = |mut headers: HeaderMap| {
        set_text(
            &mut headers,
            STATUS_HEADER,
            &loader.with_reports(status_header),
        );
        Reply::Full {
            status: shell.status,
            headers,
            body: shell.body.to_vec(),
        }
    };
    if !shell.status.is_success() || (require_surrogate_control && !shell.esi) {
        return passthrough(headers);
    }
    let template = loader
        .shared()
        .templates
        .get(&shell, &origin_url, loader.ports().log.as_ref());
    if !template.has_esi() {
        return passthrough(headers);
    }
    drop_for_rewritten_body(&mut headers);
    let assembling = loader.ports().clock.now_ms();
    let mut page = Page::prepare(loader.clone(), template, origin_url.clone()).await;
    let mut first = Vec::new();
    loop {
        match page.next_chunk().await {
            None => break,
            Some(Chunk::Bytes(b)) => {
                if first.is_empty() {
                    first = b;
                } else {
                    first.extend_from_slice(&b);
                }
                if !first.is_empty() {
                    break;
                }
            }
            Some(Chunk::Failed(e)) => {
                loader
                    .ports()
                    .log
                    .log(LogLevel::Error, &format!("{}: {e}", origin_url));
                return include_error_reply(&e);
            }
        }
    }
    for c in page.set_cookies() {
        if let Some(v) = header_value(&c) {
            headers.append(SET_COOKIE, v);
        }
    }
    let vary = page.vary();
    let inputs = page.request_inputs();
    // A page that read a cookie was made for one user. `Vary` cannot name
    // the client's country. Neither page may be shared.
    let private = debug_bypass
        || page.is_private()
        || page.may_be_private()
        || private_shell
        || !shell.set_cookies.is_empty()
        || vary.country
        || inputs.reads_cookie();
    // Downstream caches must keep apart what the fragments keep apart, and
    // what the shell's own ESI read (the query and host are in the URL).
    let mut names: Vec<&str> = vary.headers.iter().map(String::as_str).collect();
    for name in inputs.vary_headers() {
        names.push(name);
    }
    if vary.cookie {
        names.push("cookie");
    }
    merge_vary(&mut headers, names);
    if private {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
        headers.remove(AGE);
    }
    let until_headers = loader.ports().clock.now_ms().saturating_sub(assembling);
    let (status, timing) = loader.with_reports(|reports| {
        (
            status_header(reports),
            server_timing(reports, until_headers),
        )
    });
    set_text(&mut headers, STATUS_HEADER, &status);
    if let Ok(v) = HeaderValue::from_str(&timing) {
        headers.append(HeaderName::from_static("server-timing"), v);
    }
    if page.is_complete() {
        // Everything was ready at once (a warm page): one body, no stream,
        // which is far cheaper for the runtime than a ReadableStream.
        return Reply::Full {
            status: StatusCode::OK,
            headers,
            body: first,
        };
    }
    // A page still waiting for fragments is streamed uncompressed: the
    // runtime's compressor would hold its first bytes until the end (measured
    // under workerd: 1 s for a page whose last fragment takes 1 s, against
    // 3 ms). Complete pages above are compressed as usual.
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
    Reply::Stream {
        status: StatusCode::OK,
        headers,
        first,
        page: Box::new(page),
    }
}

/// Sets a header whose value we built from printable ASCII.
fn set_text(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn load_error_reply(e: &LoadError, what: &str) -> Reply {
    if let Some(retry_after_s) = e.retry_after() {
        let why = match e {
            LoadError::OriginDown { .. } => "its origin is down",
            _ => "it is being fetched",
        };
        let mut r = Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("fragcache: {what} is not available: {why}; retry shortly"),
        );
        if let Reply::Full { headers, .. } = &mut r {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        return r;
    }
    Reply::error(
        StatusCode::BAD_GATEWAY,
        &format!("fragcache: {what} could not be loaded: {e}"),
    )
}

fn include_error_reply(e: &IncludeError) -> Reply {
    match e {
        IncludeError::Load { error, .. } => load_error_reply(error, "a fragment of this page"),
        other => Reply::error(
            StatusCode::BAD_GATEWAY,
            &format!("fragcache: a fragment of this page failed: {other}"),
        ),
    }
}

/// `x-fragcache`: `shell=hit;age=3, /fragments/nav=stale;age=40, …`.
pub fn status_header(reports: &[FragmentReport]) -> String {
    let mut out = String::new();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}={}", header_safe(&r.path), r.status.as_str());
        if let Some(age) = r.age_s {
            let _ = write!(out, ";age={age}");
        }
        if let Some(state) = r.origin {
            let _ = write!(out, ";origin={state}");
        }
    }
    out
}

/// `Server-Timing`: only what is known when the headers go out, the time
/// to load the shell and the time from the shell to the headers (lookups
/// and first bytes). Fragments still loading then have no duration yet, so
/// none is claimed; their statuses are in `x-fragcache`.
pub fn server_timing(reports: &[FragmentReport], until_headers_ms: u64) -> String {
    let mut out = String::new();
    if let Some(shell) = reports.first() {
        let _ = write!(
            out,
            "shell;desc=\"{}\";dur={}, ",
            shell.status.as_str(),
            shell.ms
        );
    }
    let _ = write!(
        out,
        "assemble;desc=\"{} fragments\";dur={until_headers_ms}",
        reports.len().saturating_sub(1)
    );
    out
}

/// Keeps header values printable ASCII without separators that would break parsing.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != ',' && c != '"' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
