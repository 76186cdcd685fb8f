//! One client request, end to end, as far as it can be decided without the
//! runtime: route matching, the page shell, ESI gating, the page's response
//! headers, and the first chunk of output. The adapter only turns a
//! [`Reply`] into a Worker `Response`.

use std::fmt::Write as _;
use std::rc::Rc;

use crate::assemble::{Chunk, FragmentReport, IncludeError, Page};
use crate::cache::CacheStatus;
use crate::config::{Route, UnknownRoutes};
use crate::loader::{Fragment, LoadError, Loader};
use crate::ports::LogLevel;
use crate::url::Url;

/// Header listing each fragment's cache status.
pub const STATUS_HEADER: &str = "x-fragcache";

/// What the adapter should send.
pub enum Reply {
    /// Proxy the client's request, untouched, to this origin URL.
    Pass(Url),
    /// A complete response.
    Full {
        /// HTTP status.
        status: u16,
        /// Headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// A streamed page: send the headers and `first`, then drain `page`.
    Stream {
        /// HTTP status.
        status: u16,
        /// Headers.
        headers: Vec<(String, String)>,
        /// Output already produced.
        first: Vec<u8>,
        /// The rest of the page.
        page: Box<Page>,
    },
}

impl Reply {
    /// A plain-text error response.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![
                ("content-type".into(), "text/plain; charset=utf-8".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: format!("{message}\n").into_bytes(),
        }
    }
}

/// Serves one request.
pub async fn handle(loader: Loader) -> Reply {
    let config = std::rc::Rc::clone(loader.config());
    let req = std::rc::Rc::clone(loader.request());
    let origin_url = req.url.with_origin(&config.origin);
    let route = match config.route(req.url.path()) {
        Route::Page(r) => r,
        Route::Fragment(_) => return Reply::Pass(origin_url),
        Route::Unknown => {
            return match config.unknown_routes {
                UnknownRoutes::Pass => Reply::Pass(origin_url),
                UnknownRoutes::NotFound => Reply::error(404, "not found"),
            }
        }
    };
    let lookup = loader.lookup_page(&origin_url, route).await;
    let (age, private_shell) = (lookup.age_s, lookup.private);
    let (shell_status, shell) = lookup.finish().await;
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
    let report = FragmentReport {
        path: "shell".into(),
        status: shell_status,
        age_s: age,
        ms: 0,
        depth: 0,
    };
    render_shell(
        loader,
        shell,
        report,
        private_shell,
        route.require_surrogate_control,
    )
    .await
}

/// A shell the origin sent on a pass-through route, with
/// `Surrogate-Control: content="ESI/1.0"`: the origin asks for ESI
/// processing, so the page is assembled like a configured page route (its
/// shell uncached). The adapter calls this after proxying.
pub async fn handle_surrogate_shell(loader: Loader, shell: Rc<Fragment>) -> Reply {
    let report = FragmentReport {
        path: "shell".into(),
        status: CacheStatus::Bypass,
        age_s: None,
        ms: 0,
        depth: 0,
    };
    render_shell(loader, shell, report, false, true).await
}

/// Turns a loaded shell into a reply: passed through when it has no ESI (or
/// is an error, or lacks Surrogate-Control where that is required),
/// otherwise assembled.
async fn render_shell(
    loader: Loader,
    shell: Rc<Fragment>,
    shell_report: FragmentReport,
    private_shell: bool,
    require_surrogate_control: bool,
) -> Reply {
    let origin_url = loader.request().url.with_origin(&loader.config().origin);
    let content_type = shell
        .content_type
        .clone()
        .unwrap_or_else(|| "text/html; charset=utf-8".into());
    let mut headers = vec![("content-type".to_owned(), content_type)];
    for c in &shell.set_cookies {
        headers.push(("set-cookie".into(), c.clone()));
    }
    let passthrough = |mut headers: Vec<(String, String)>| {
        if let Some(cc) = &shell.cache_control {
            headers.push(("cache-control".into(), cc.clone()));
        }
        if let Some(location) = &shell.location {
            headers.push(("location".into(), location.clone()));
        }
        headers.push((
            STATUS_HEADER.into(),
            status_header(std::slice::from_ref(&shell_report)),
        ));
        Reply::Full {
            status: shell.status,
            headers,
            body: shell.body.to_vec(),
        }
    };
    if !(200..300).contains(&shell.status) || (require_surrogate_control && !shell.esi) {
        return passthrough(headers);
    }
    let template = loader
        .shared()
        .templates
        .get(&shell, &origin_url, loader.ports().log.as_ref());
    if !template.has_esi() {
        return passthrough(headers);
    }
    let mut page = Page::prepare(loader.clone(), template, origin_url.clone()).await;
    let mut first = Vec::new();
    loop {
        match page.next_chunk().await {
            None => break,
            Some(Chunk::Bytes(b)) => {
                first.extend_from_slice(&b);
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
        headers.push(("set-cookie".into(), c));
    }
    let vary = page.vary();
    // `Vary` cannot name the client's country: such a page is not shared.
    let private = page.is_private()
        || page.may_be_private()
        || private_shell
        || !shell.set_cookies.is_empty()
        || vary.country;
    if private {
        headers.push(("cache-control".into(), "private, no-store".into()));
    } else {
        if let Some(cc) = &shell.cache_control {
            headers.push(("cache-control".into(), cc.clone()));
        }
        // Downstream caches must keep the variants the fragments keep apart.
        let mut names: Vec<String> = vary.headers;
        if vary.cookie {
            names.push("cookie".into());
        }
        if !names.is_empty() {
            headers.push(("vary".into(), names.join(", ")));
        }
    }
    let mut reports = vec![shell_report];
    reports.extend(page.reports());
    headers.push((STATUS_HEADER.into(), status_header(&reports)));
    headers.push(("server-timing".into(), server_timing(&reports)));
    Reply::Stream {
        status: 200,
        headers,
        first,
        page: Box::new(page),
    }
}

fn load_error_reply(e: &LoadError, what: &str) -> Reply {
    match e {
        LoadError::ColdBusy { retry_after_s } => {
            let mut r = Reply::error(
                503,
                &format!("fragcache: {what} is being fetched; retry shortly"),
            );
            if let Reply::Full { headers, .. } = &mut r {
                headers.push(("retry-after".into(), retry_after_s.to_string()));
            }
            r
        }
        other => Reply::error(
            502,
            &format!("fragcache: {what} could not be loaded: {other}"),
        ),
    }
}

fn include_error_reply(e: &IncludeError) -> Reply {
    match e {
        IncludeError::Load { error, .. } => load_error_reply(error, "a fragment of this page"),
        other => Reply::error(
            502,
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
    }
    out
}

/// `Server-Timing`: one metric per fragment, its status and load time.
pub fn server_timing(reports: &[FragmentReport]) -> String {
    let mut out = String::new();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let desc =
            format!("{} {}", header_safe(&r.path), r.status.as_str()).replace(['"', '\\'], "");
        let _ = write!(out, "frag{i};desc=\"{desc}\";dur={}", r.ms);
    }
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

/// Whether the status means the body came from the cache.
pub fn served_from_cache(s: CacheStatus) -> bool {
    matches!(
        s,
        CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Refresh
    )
}
