//! The per-page record: one summary per page request of how its pieces
//! were served, for dashboards and `npm run stats`.
//!
//! Built from the request's [`FragmentReport`]s once the page has been
//! sent (the streamed body drained), so every status is final. The adapter
//! writes it as one Analytics Engine data point when the worker has that
//! binding, else as one JSON log line marked `"fragcache":"page"`. Building
//! it is pure; writing it is the adapter's.

use crate::assemble::FragmentReport;
use crate::cache::CacheStatus;

/// The marker field of a page record's log line: `{"fragcache":"page",…}`.
pub const LOG_MARKER: &str = "page";

/// Analytics Engine keeps index values up to this many bytes.
const MAX_INDEX_BYTES: usize = 96;

/// How one page request was served. The shell counts like a fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRecord {
    /// The page's path and query.
    pub path: String,
    /// Fresh from the cache (early refreshes included).
    pub hit: u32,
    /// Served stale while a refresh ran.
    pub stale: u32,
    /// Cold: this request fetched it for the cache.
    pub miss: u32,
    /// Cold: this request waited for another request's fetch.
    pub coalesced: u32,
    /// Never cached: private, personal, or the debug bypass.
    pub bypass: u32,
    /// Failed, or never finished.
    pub error: u32,
    /// Origin requests this page made and waited for (misses it led,
    /// bypasses). Background refreshes are not counted: the page did not
    /// wait for them.
    pub origin_fetches: u32,
    /// Milliseconds from the request to its response headers.
    pub ttfb_ms: u64,
    /// Milliseconds from the request to the last byte.
    pub total_ms: u64,
    /// Each piece in order: path, final status, start on the page's time
    /// axis and duration (ms). In the log line only: the durations of
    /// fragments still loading when the headers left are known only here.
    pub pieces: Vec<(String, &'static str, u64, u64)>,
}

impl PageRecord {
    /// The record of page `path` from its final reports.
    pub fn new(path: &str, reports: &[FragmentReport], ttfb_ms: u64, total_ms: u64) -> Self {
        let mut r = PageRecord {
            path: path.to_owned(),
            ttfb_ms,
            total_ms,
            ..PageRecord::default()
        };
        for report in reports {
            let n = match report.status {
                CacheStatus::Hit | CacheStatus::Refresh => &mut r.hit,
                CacheStatus::Stale => &mut r.stale,
                CacheStatus::Miss => &mut r.miss,
                CacheStatus::Coalesced => &mut r.coalesced,
                CacheStatus::Bypass => &mut r.bypass,
                // A lookup still open after the page ended never produced
                // anything (the page deadline passed first).
                CacheStatus::Error | CacheStatus::Lookup => &mut r.error,
            };
            *n += 1;
            r.origin_fetches += u32::from(report.fetched);
            r.pieces.push((
                report.path.clone(),
                report.status.as_str(),
                report.start_ms,
                report.ms,
            ));
        }
        r
    }

    /// The record as one log line, the marker first so that it is found
    /// by a plain text search: `{"fragcache":"page","path":…}`.
    pub fn to_json_line(&self) -> String {
        let path = serde_json::to_string(&self.path).unwrap_or_else(|_| "\"\"".into());
        let pieces = serde_json::to_string(&self.pieces).unwrap_or_else(|_| "[]".into());
        format!(
            "{{\"fragcache\":\"{LOG_MARKER}\",\"path\":{path},\"hit\":{},\"stale\":{},\"miss\":{},\"coalesced\":{},\"bypass\":{},\"error\":{},\"origin_fetches\":{},\"ttfb_ms\":{},\"total_ms\":{},\"pieces\":{pieces}}}",
            self.hit,
            self.stale,
            self.miss,
            self.coalesced,
            self.bypass,
            self.error,
            self.origin_fetches,
            self.ttfb_ms,
            self.total_ms
        )
    }

    /// Analytics Engine `doubles`, in this order: hit, stale, miss,
    /// coalesced, bypass, error, origin fetches, TTFB ms, total ms.
    pub fn doubles(&self) -> [f64; 9] {
        [
            f64::from(self.hit),
            f64::from(self.stale),
            f64::from(self.miss),
            f64::from(self.coalesced),
            f64::from(self.bypass),
            f64::from(self.error),
            f64::from(self.origin_fetches),
            self.ttfb_ms as f64,
            self.total_ms as f64,
        ]
    }

    /// Analytics Engine index (the sampling key): the path, cut to the 96
    /// bytes an index may hold. `blobs` carry the whole path.
    pub fn index(&self) -> &str {
        let mut end = self.path.len().min(MAX_INDEX_BYTES);
        while !self.path.is_char_boundary(end) {
            end -= 1;
        }
        &self.path[..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: CacheStatus, fetched: bool) -> FragmentReport {
        let mut r = FragmentReport::new("/f".into(), status, 0, 0);
        r.fetched = fetched;
        r
    }

    #[test]
    fn counts_each_status_and_the_fetches() {
        let reports = [
            report(CacheStatus::Miss, true),
            report(CacheStatus::Hit, false),
            report(CacheStatus::Refresh, false),
            report(CacheStatus::Stale, false),
            report(CacheStatus::Coalesced, false),
            report(CacheStatus::Bypass, true),
            report(CacheStatus::Error, true),
            report(CacheStatus::Lookup, false),
        ];
        let r = PageRecord::new("/p?a=1", &reports, 3, 40);
        assert_eq!((r.hit, r.stale, r.miss, r.coalesced), (2, 1, 1, 1));
        assert_eq!((r.bypass, r.error, r.origin_fetches), (1, 2, 3));
        assert!(r
            .to_json_line()
            .starts_with(r#"{"fragcache":"page","path":"/p?a=1","#));
        let line: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(line["fragcache"], "page");
        assert_eq!(line["path"], "/p?a=1");
        assert_eq!(line["origin_fetches"], 3);
        assert_eq!(line["ttfb_ms"], 3);
        assert_eq!(r.doubles()[6], 3.0);
        assert_eq!(line["pieces"][0], serde_json::json!(["/f", "miss", 0, 0]));
        assert_eq!(line["pieces"].as_array().unwrap().len(), reports.len());
    }

    #[test]
    fn the_index_fits_analytics_engine() {
        let r = PageRecord::new(&format!("/{}\"\\", "é".repeat(100)), &[], 0, 0);
        let line: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(line["path"], r.path.as_str());
        assert!(r.index().len() <= MAX_INDEX_BYTES);
        assert!(r.path.starts_with(r.index()));
    }
}
