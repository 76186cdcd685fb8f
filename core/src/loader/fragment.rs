//! [`Fragment`], the one thing that crosses from one request to another,
//! and how it is made from an origin response or a stored entry.

use std::cell::OnceCell;
use std::rc::Rc;

use http::{HeaderMap, StatusCode};

use crate::cache::policy::parse_directives;
use crate::headers::{decode_block, keep_from_origin};
use crate::ports::{OriginResponse, StoredEntry};
use crate::tags::{self, parse_tags};

/// A loaded fragment: plain bytes and the few headers that matter. This is
/// the only thing that ever crosses from one request to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// Origin status (a cached 404 keeps its 404).
    pub status: StatusCode,
    /// The body.
    pub body: Rc<[u8]>,
    /// For a page shell, the origin's response headers that the page may
    /// carry ([`crate::headers::keep_from_origin`]); empty for fragments,
    /// whose headers never reach the page.
    pub headers: HeaderMap,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control` as the origin sent it.
    pub cache_control: Option<String>,
    /// Origin asked for ESI processing (`Surrogate-Control: content="ESI/1.0"`).
    pub esi: bool,
    /// When the body left the origin (ms); with `cache_key`, identifies the version.
    pub stored_at: u64,
    /// The cache key, for cacheable fragments.
    pub cache_key: Option<String>,
    /// `Set-Cookie` values (private fragments only; empty otherwise).
    pub set_cookies: Vec<String>,
    /// The cache tags the origin gave it (`Cache-Tag`, `Surrogate-Key`;
    /// see [`crate::tags`]), which purge by tag matches.
    pub tags: Rc<[String]>,
    /// Whether the body may hold ESI markup, found on first use: a cached
    /// fragment is shared by every request that includes it, so its body is
    /// scanned once per version, not once per page (in wasm the scan has no
    /// SIMD, and it was a tenth of a warm page's time).
    pub(crate) may_esi: EsiScan,
}

/// The memoised answer of [`Fragment::may_contain_esi`]. A cache of a
/// property of the body, so it takes no part in comparing fragments.
#[derive(Debug, Clone, Default)]
pub(crate) struct EsiScan(OnceCell<bool>);

impl PartialEq for EsiScan {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Fragment {
    /// Whether the body may contain ESI (`esi:` or `<!--esi`); a `false`
    /// means it is certainly plain and is included as it is.
    pub fn may_contain_esi(&self) -> bool {
        *self
            .may_esi
            .0
            .get_or_init(|| crate::esi::may_contain_esi(&self.body))
    }

    /// The fragment an origin response gives: `key` when it is stored,
    /// `Set-Cookie` values kept when `keep_cookies`, and the response
    /// headers a page may carry when `keep_headers` (a page shell).
    pub(crate) fn from_response(
        resp: &OriginResponse,
        now: u64,
        key: Option<&str>,
        keep_cookies: bool,
        keep_headers: bool,
    ) -> Self {
        Fragment {
            status: resp.status,
            body: Rc::from(resp.body.as_slice()),
            headers: if keep_headers {
                keep_from_origin(&resp.headers)
            } else {
                HeaderMap::new()
            },
            content_type: resp.header("content-type").map(str::to_owned),
            cache_control: resp.header_joined("cache-control"),
            esi: resp
                .header_joined("surrogate-control")
                .is_some_and(|v| parse_directives(&v).esi),
            stored_at: now,
            cache_key: key.map(str::to_owned),
            set_cookies: if keep_cookies {
                resp.header_all("set-cookie").map(str::to_owned).collect()
            } else {
                Vec::new()
            },
            tags: parse_tags(&resp.headers).into(),
            may_esi: EsiScan::default(),
        }
    }

    pub(crate) fn from_entry(entry: StoredEntry, key: &str) -> Self {
        // A cached shell's value starts with its header block, and a tagged
        // entry's tag block follows (see `crate::tags`).
        let split = (entry.meta.header_bytes as usize).min(entry.body.len());
        let (block, rest) = entry.body.split_at(split);
        let (tag_block, body) = rest.split_at((entry.meta.tag_bytes as usize).min(rest.len()));
        Fragment {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            body: Rc::from(body),
            headers: decode_block(block),
            content_type: entry.meta.content_type,
            cache_control: entry.meta.cache_control,
            esi: entry.meta.esi,
            stored_at: entry.meta.stored_at,
            cache_key: Some(key.to_owned()),
            set_cookies: Vec::new(),
            tags: tags::decode(tag_block).into(),
            may_esi: EsiScan::default(),
        }
    }
}
