//! Pre-warming: loading a list of pages exactly as a client request would
//! (the page route, its shell, every include, single-flight and the
//! coordinator included), so that the next visitor gets hits.
//!
//! Each page is served by [`handle`] with a request of its own (no cookies,
//! no headers: the variant a first-time visitor gets) and drained to its
//! end, so every include is loaded and stored; background refreshes of
//! stale copies run as they would for a client. At most `concurrency`
//! pages are loaded at once. Each page is classified by the final cache
//! statuses of its shell and includes:
//!
//! - `warmed`: something was fetched or is being refreshed (`miss`,
//!   `coalesced`, `stale`, `refresh`);
//! - `fresh`: everything was a hit (or is never cached: `bypass`);
//! - `failed`: the page answered an error status, or an include failed.
//!
//! The admin operation `POST /_fragcache/warm`, the scheduled (cron)
//! handler and `npm run warm` all come here.

use std::rc::Rc;

use futures_util::stream::{self, StreamExt};
use http::StatusCode;

use crate::assemble::Chunk;
use crate::cache::CacheStatus;
use crate::config::{Config, WarmSettings};
use crate::loader::{Loader, Shared};
use crate::ports::Ports;
use crate::request::ClientRequest;
use crate::serve::{handle, Reply, STATUS_HEADER};
use crate::url::Url;

/// How a warmed page came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Something was fetched or is being refreshed.
    Warmed,
    /// Everything was already fresh.
    Fresh,
    /// The page or one of its includes failed.
    Failed,
}

impl Outcome {
    /// Lower-case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Warmed => "warmed",
            Outcome::Fresh => "fresh",
            Outcome::Failed => "failed",
        }
    }
}

/// One page's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageResult {
    /// The path (and query) warmed.
    pub path: String,
    /// The page's HTTP status (0 when it was not served as a page).
    pub status: u16,
    /// The shell's and each include's final cache status, in order
    /// (`shell` first).
    pub fragments: Vec<(String, String)>,
    /// The classification.
    pub outcome: Outcome,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Every page's result, and the time the whole run took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// In the order the paths were given.
    pub pages: Vec<PageResult>,
    /// Milliseconds from start to the last page's end.
    pub ms: u64,
}

impl Report {
    /// How many pages came out as `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.pages.iter().filter(|p| p.outcome == outcome).count()
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "warm: {} pages: {} warmed, {} already fresh, {} failed in {} ms",
            self.pages.len(),
            self.count(Outcome::Warmed),
            self.count(Outcome::Fresh),
            self.count(Outcome::Failed),
            self.ms
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        let pages: Vec<_> = self
            .pages
            .iter()
            .map(|p| {
                serde_json::json!({
                    "path": p.path,
                    "status": p.status,
                    "outcome": p.outcome.as_str(),
                    "fragments": p.fragments.iter().map(|(path, s)| serde_json::json!({ "path": path, "status": s })).collect::<Vec<_>>(),
                    "error": p.error,
                })
            })
            .collect();
        serde_json::json!({
            "warmed": self.count(Outcome::Warmed),
            "fresh": self.count(Outcome::Fresh),
            "failed": self.count(Outcome::Failed),
            "ms": self.ms,
            "pages": pages,
        })
        .to_string()
    }
}

/// The pages and concurrency of `POST /_fragcache/warm?path=/a&path=/b
/// &concurrency=N`: the `path` parameters (each a page; default the
/// configured `warm.paths`) and `concurrency` (default
/// `warm.concurrency`). An error names the parameter at fault.
pub fn request_from_query(
    config: &Config,
    query: Option<&str>,
) -> Result<(Vec<String>, u32), String> {
    let mut paths: Vec<String> = Vec::new();
    let mut concurrency = config.warm.concurrency;
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        let v = crate::esi::form_decode(v).into_owned();
        match k {
            "path" => {
                let page = crate::config::warm_path(&v).map_err(|e| format!("path {v:?} {e}"))?;
                if !matches!(config.route(page), crate::config::Route::Page(_)) {
                    return Err(format!("path {v:?} matches no page route"));
                }
                if !paths.contains(&v) {
                    paths.push(v);
                }
            }
            "concurrency" => {
                concurrency = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=WarmSettings::MAX_CONCURRENCY).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "concurrency {v:?} must be a whole number from 1 to {}",
                            WarmSettings::MAX_CONCURRENCY
                        )
                    })?;
            }
            _ => {}
        }
    }
    if paths.is_empty() {
        paths = config.warm.paths.clone();
    }
    if paths.is_empty() {
        return Err("give pages to warm (?path=/&path=/news) or configure warm.paths".into());
    }
    if paths.len() > WarmSettings::MAX_PATHS {
        return Err(format!(
            "at most {} pages per request; split the list",
            WarmSettings::MAX_PATHS
        ));
    }
    Ok((paths, concurrency))
}

/// Warms `paths` (each a page path with an optional query) as requests to
/// `base` (the worker's own URL; its path is ignored), at most
/// `concurrency` at once.
pub async fn warm(
    ports: Ports,
    shared: Rc<Shared>,
    config: Rc<Config>,
    base: &Url,
    paths: &[String],
    concurrency: u32,
) -> Report {
    let clock = Rc::clone(&ports.clock);
    let started = clock.now_ms();
    let pages = stream::iter(paths.iter().map(|path| {
        let loader = base.resolve(path).ok().map(|url| {
            Loader::new(
                ports.clone(),
                Rc::clone(&shared),
                Rc::clone(&config),
                Rc::new(ClientRequest::new(url)),
            )
        });
        warm_page(loader, path.clone())
    }))
    .buffered(concurrency.max(1) as usize)
    .collect::<Vec<_>>()
    .await;
    Report {
        pages,
        ms: clock.now_ms().saturating_sub(started),
    }
}

async fn warm_page(loader: Option<Loader>, path: String) -> PageResult {
    let failed = |status: u16, why: String| PageResult {
        path: path.clone(),
        status,
        fragments: Vec::new(),
        outcome: Outcome::Failed,
        error: Some(why),
    };
    let Some(loader) = loader else {
        return failed(0, "not a usable path".into());
    };
    let (status, header, mut fragments, mut error) = match handle(loader).await {
        Reply::Pass(_) => return failed(0, "not a page route".into()),
        Reply::Full {
            status, headers, ..
        } => (status, header_text(&headers), None, None),
        Reply::Stream {
            status,
            headers,
            mut page,
            ..
        } => {
            let mut error = None;
            while let Some(chunk) = page.next_chunk().await {
                if let Chunk::Failed(e) = chunk {
                    error.get_or_insert_with(|| e.to_string());
                }
            }
            let reports = page
                .reports()
                .into_iter()
                .map(|r| (r.path, r.status.as_str().to_owned()))
                .collect::<Vec<_>>();
            (status, header_text(&headers), Some(reports), error)
        }
    };
    let mut statuses = parse_status_header(&header);
    if let Some(reports) = fragments.take() {
        // A streamed page's header was written before its includes ended:
        // take the final statuses from the reports (the shell's first).
        statuses = reports;
    }
    if !served(status) {
        error.get_or_insert_with(|| format!("page answered {}", status.as_u16()));
    }
    let is = |s: CacheStatus| statuses.iter().any(|(_, v)| v == s.as_str());
    if error.is_none() && is(CacheStatus::Error) {
        error = Some("an include failed".into());
    }
    let outcome = if error.is_some() {
        Outcome::Failed
    } else if is(CacheStatus::Miss)
        || is(CacheStatus::Coalesced)
        || is(CacheStatus::Stale)
        || is(CacheStatus::Refresh)
    {
        Outcome::Warmed
    } else {
        Outcome::Fresh
    };
    PageResult {
        path,
        status: status.as_u16(),
        fragments: statuses,
        outcome,
        error,
    }
}

fn header_text(headers: &http::HeaderMap) -> String {
    headers
        .get(STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `shell=hit;age=3, /f/a=miss` as `(path, status)` pairs.
fn parse_status_header(h: &str) -> Vec<(String, String)> {
    h.split(", ")
        .filter_map(|entry| {
            let head = entry.split(';').next()?;
            let (path, status) = head.rsplit_once('=')?;
            Some((path.to_owned(), status.to_owned()))
        })
        .collect()
}

/// Whether a page status counts as served rather than failed.
fn served(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_header_is_read_back() {
        assert_eq!(
            parse_status_header("shell=hit;age=3, /f/a?x=1=miss, /f/b=stale;age=40;origin=open"),
            vec![
                ("shell".into(), "hit".into()),
                ("/f/a?x=1".into(), "miss".into()),
                ("/f/b".into(), "stale".into())
            ]
        );
        assert!(parse_status_header("").is_empty());
    }
}
