//! The inspector (`GET /_fragcache/inspect?path=/page`): serves one page
//! through the normal path, as the caller (their cookies and headers, minus
//! `Authorization`), drains it, and shows what happened to the shell and
//! each include: cache status, key and variant, age against the soft and
//! hard TTL, when its lookup started and how long it took on the page's time
//! axis, depth, breaker state and tags.
//!
//! The answer is JSON for `Accept: application/json`, else one
//! self-contained HTML page (inline CSS, no script, no external asset):
//! a static template with every value HTML-escaped, since a key, path or
//! tag can contain anything. Either way it is `private, no-store`: private
//! fragments in it were evaluated for the caller.
//!
//! The TTLs come from the entry this isolate holds in memory
//! ([`Loader::remembered_meta`]), which every entry the request just read
//! or stored is, unless it was too large to keep; then they are left out.

use std::fmt::Write as _;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use serde::Serialize;

use crate::admin::{self, BYPASS_HEADER};
use crate::assemble::{Chunk, FragmentReport};
use crate::cache::{CacheStatus, EntryMeta};
use crate::esi::form_decode;
use crate::loader::Loader;
use crate::request::ClientRequest;
use crate::serve::{handle, Reply};
use crate::url::Url;

/// The page request to inspect, from the inspector's own request: `path`
/// (form-encoded, starting with one `/`) on the same host, its other query
/// parameters as the page's query, and the caller's headers minus
/// `Authorization` (the admin token is not the page's business) and the
/// bypass header (the inspector shows the cache as it is).
pub fn page_request(inspector: &Url, headers: &HeaderMap) -> Result<ClientRequest, String> {
    let mut path = None;
    let mut query = Vec::new();
    for pair in inspector.query().unwrap_or("").split('&') {
        match pair.strip_prefix("path=") {
            Some(p) if path.is_none() => path = Some(form_decode(p).into_owned()),
            _ if !pair.is_empty() => query.push(pair),
            _ => {}
        }
    }
    let path = path.ok_or("give the page to inspect: ?path=/some/page")?;
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "path {path:?} must be a path on this host, starting with one /"
        ));
    }
    let mut target = format!("{}{path}", inspector.origin());
    if !query.is_empty() {
        target.push(if path.contains('?') { '&' } else { '?' });
        target.push_str(&query.join("&"));
    }
    let url = Url::parse(&target).map_err(|e| format!("path {path:?}: {e}"))?;
    let mut req = ClientRequest::new(url);
    req.headers = headers.clone();
    req.headers.remove(AUTHORIZATION);
    req.headers.remove(BYPASS_HEADER);
    Ok(req)
}

/// Serves `loader`'s request to the end and answers with what happened,
/// as JSON when `accept` asks for it, else as HTML.
pub async fn inspect(loader: Loader, accept: Option<&str>) -> Reply {
    let page = loader.request().url.path_and_query();
    let mut failures = Vec::new();
    let status = match handle(loader.clone()).await {
        Reply::Pass(_) => {
            return admin::error(
                StatusCode::BAD_REQUEST,
                &format!("{page} is not a page route: it is proxied to the origin unchanged"),
            )
        }
        Reply::Full { status, .. } => status,
        Reply::Stream {
            status, mut page, ..
        } => {
            // Draining is what a client reading the page would cause: every
            // include finishes, so every status is final.
            while let Some(chunk) = page.next_chunk().await {
                if let Chunk::Failed(e) = chunk {
                    failures.push(e.to_string());
                }
            }
            status
        }
    };
    let total_ms = loader
        .ports()
        .clock
        .now_ms()
        .saturating_sub(loader.began_ms());
    let reports = loader.reports();
    let data = Inspection {
        page: &page,
        status: status.as_u16(),
        total_ms,
        failures,
        rows: reports.iter().map(|r| Row::new(&loader, r)).collect(),
    };
    let wants_json = accept.is_some_and(|a| a.contains("application/json"));
    let (body, content_type) = if wants_json {
        (
            serde_json::to_string(&data).unwrap_or_default(),
            "application/json",
        )
    } else {
        (html(&data), "text/html; charset=utf-8")
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Reply::Full {
        status: StatusCode::OK,
        headers,
        body: body.into_bytes(),
    }
}

/// What the inspector shows (and answers as JSON).
#[derive(Serialize)]
struct Inspection<'a> {
    page: &'a str,
    status: u16,
    total_ms: u64,
    /// Includes that failed after the page had started.
    failures: Vec<String>,
    rows: Vec<Row<'a>>,
}

/// One row: a report with what the cache knows of it.
#[derive(Serialize)]
struct Row<'a> {
    path: &'a str,
    status: &'static str,
    key: Option<&'a str>,
    variant: Option<&'a str>,
    age_s: Option<u64>,
    soft_ttl_s: Option<u64>,
    hard_ttl_s: Option<u64>,
    start_ms: u64,
    ms: u64,
    source: &'static str,
    depth: u32,
    origin: Option<&'static str>,
    tags: &'a [String],
}

impl<'a> Row<'a> {
    fn new(loader: &Loader, r: &'a FragmentReport) -> Self {
        let key = r.fragment.as_ref().and_then(|f| f.cache_key.as_deref());
        let meta = key.and_then(|k| loader.remembered_meta(k));
        let ttl = |until: fn(&EntryMeta) -> u64| {
            meta.as_ref()
                .map(|m| until(m).saturating_sub(m.stored_at) / 1000)
        };
        Row {
            path: &r.path,
            status: r.status.as_str(),
            key,
            variant: key.and_then(|k| k.split_once('#')).map(|(_, v)| v),
            // A copy fetched by this very request is zero seconds old.
            age_s: r.age_s.or(key.map(|_| 0)),
            soft_ttl_s: ttl(|m| m.fresh_until),
            hard_ttl_s: ttl(|m| m.stale_until),
            start_ms: r.start_ms,
            ms: r.ms,
            source: match r.status {
                CacheStatus::Hit | CacheStatus::Refresh | CacheStatus::Stale => "cache",
                CacheStatus::Coalesced => "waited for another request's fetch",
                _ if r.fetched => "origin fetch",
                _ => "none",
            },
            depth: r.depth,
            origin: r.origin,
            tags: r.fragment.as_ref().map_or(&[][..], |f| &f.tags[..]),
        }
    }
}

const HEAD: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>fragcache inspector</title><style>
body{font:14px system-ui,sans-serif;margin:20px;color:#222}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
code{font-size:12px;word-break:break-all}small{color:#666}
.s{color:#fff;border-radius:3px;padding:1px 6px;font-weight:600}
.hit,.refresh{background:#2e7d32}.stale{background:#ef8f00}.miss{background:#c62828}.coalesced{background:#6a1b9a}.bypass{background:#1565c0}.error{background:#111}.lookup{background:#888}
.axis{position:relative;height:14px;width:260px;background:#f1f1f1}.axis i{position:absolute;top:0;height:14px}
.fresh{background:#a5d6a7}.stalez{background:#ffe0b2}.age{width:2px;background:#000}
.legend span{margin-right:6px}
</style></head><body><h1>fragcache inspector</h1>
"#;

/// The inspector page for `data`, every value escaped.
fn html(data: &Inspection) -> String {
    let mut out = String::from(HEAD);
    let total = data.total_ms.max(1);
    out.push_str("<p>GET <code>");
    esc(&mut out, data.page);
    let _ = write!(
        out,
        "</code> answered <strong>{}</strong> in {total} ms</p><p class=\"legend\">",
        data.status
    );
    for s in ["hit", "stale", "miss", "coalesced", "bypass", "error"] {
        let _ = write!(out, "<span class=\"s {s}\">{s}</span>");
    }
    out.push_str("</p>");
    for f in &data.failures {
        out.push_str("<p class=\"failure\">failed after the page started: ");
        esc(&mut out, f);
        out.push_str("</p>");
    }
    out.push_str("<table><tr><th>fragment</th><th>status</th><th>time (page axis)</th><th>age / soft / hard TTL</th><th>key · variant</th><th>tags</th><th>depth</th></tr>");
    for r in &data.rows {
        // Status names are our own static words: no escaping needed.
        let status = r.status;
        let _ = write!(
            out,
            "<tr class=\"row\" data-status=\"{status}\"><td><code class=\"path\">"
        );
        esc(&mut out, r.path);
        let _ = write!(
            out,
            "</code></td><td><span class=\"s {status}\">{status}</span>"
        );
        if let Some(o) = r.origin {
            let _ = write!(out, " <small>circuit {o}</small>");
        }
        let _ = write!(
            out,
            "</td><td><div class=\"axis\"><i class=\"{status}\" style=\"left:{};width:{}\"></i></div><small>+{} ms, {} ms, {}</small></td><td>",
            pct(r.start_ms, total),
            pct(r.ms.max(total / 200), total),
            r.start_ms,
            r.ms,
            r.source,
        );
        match (r.age_s, r.soft_ttl_s, r.hard_ttl_s) {
            (Some(age), Some(soft), Some(hard)) if hard > 0 => {
                let _ = write!(
                    out,
                    "<div class=\"axis\"><i class=\"fresh\" style=\"left:0;width:{s}\"></i><i class=\"stalez\" style=\"left:{s};width:{rest}\"></i><i class=\"age\" style=\"left:{a}\"></i></div><small>age {age} s, soft {soft} s, hard {hard} s</small>",
                    s = pct(soft, hard),
                    rest = pct(hard - soft.min(hard), hard),
                    a = pct(age, hard),
                );
            }
            (Some(age), ..) => {
                let _ = write!(out, "<small>age {age} s</small>");
            }
            _ => out.push_str("<small>not cached</small>"),
        }
        out.push_str("</td><td><code>");
        esc(&mut out, r.key.unwrap_or(""));
        out.push_str("</code>");
        if let Some(v) = r.variant {
            out.push_str("<br><small>variant ");
            esc(&mut out, v);
            out.push_str("</small>");
        }
        out.push_str("</td><td>");
        for t in r.tags {
            out.push_str("<code class=\"tag\">");
            esc(&mut out, t);
            out.push_str("</code> ");
        }
        let _ = write!(out, "</td><td>{}</td></tr>", r.depth);
    }
    out.push_str("</table></body></html>\n");
    out
}

/// `part` of `whole` as a CSS percentage with one decimal, at most 100%.
fn pct(part: u64, whole: u64) -> String {
    let tenths = (part.saturating_mul(1000) / whole.max(1)).min(1000);
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// Appends `s` HTML-escaped (text and attribute values alike).
fn esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_markup_could_use() {
        let mut s = String::new();
        esc(&mut s, r#"<script>"a"&'b'</script>"#);
        assert_eq!(
            s,
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn percentages_are_clamped() {
        assert_eq!(pct(1, 3), "33.3%");
        assert_eq!(pct(5, 0), "100.0%");
        assert_eq!(pct(0, 7), "0.0%");
    }

    #[test]
    fn page_request_takes_path_and_query_and_drops_credentials() {
        let url = Url::parse("https://w.example/_fragcache/inspect?a=1&path=%2Fp%2Fx&b=2").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(BYPASS_HEADER, HeaderValue::from_static("t"));
        headers.insert("cookie", HeaderValue::from_static("session=1"));
        let req = page_request(&url, &headers).unwrap();
        assert_eq!(req.url.to_string(), "https://w.example/p/x?a=1&b=2");
        assert!(req.header("authorization").is_none());
        assert!(req.header(BYPASS_HEADER).is_none());
        assert_eq!(req.cookie("session").as_deref(), Some("1"));
        for bad in ["", "?x=1", "?path=p", "?path=//evil.example/"] {
            let url = Url::parse(&format!("https://w.example/_fragcache/inspect{bad}")).unwrap();
            assert!(page_request(&url, &headers).is_err(), "{bad}");
        }
    }
}
