//! The parts of the client's request that the core looks at.
//!
//! The adapter copies them out of the Worker's `Request` once; everything
//! downstream (ESI variables, cache-key variants, header forwarding) reads
//! them from here.

use crate::esi::RequestVars;
use crate::url::Url;

/// The client's request, as far as the core is concerned.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The URL the client asked the worker for.
    pub url: Url,
    /// Request headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// Two-letter country code from `request.cf`, when known.
    pub country: Option<String>,
}

impl ClientRequest {
    /// A request with no headers.
    pub fn new(url: Url) -> Self {
        ClientRequest {
            url,
            headers: Vec::new(),
            country: None,
        }
    }

    /// Adds a header (name lower-cased).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower-case), in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All `Cookie` headers joined with `; `, as one header would carry them.
    pub fn cookie_header(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The value of cookie `name`, if present (first occurrence wins).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let header = self.cookie_header()?;
        header.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    /// The raw (still percent-encoded) value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.url.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The inputs of ESI variables.
    pub fn esi_vars(&self) -> RequestVars {
        RequestVars {
            host: self.header("host").map(str::to_owned).or_else(|| {
                Some(match self.url.port() {
                    Some(p) => format!("{}:{p}", self.url.host()),
                    None => self.url.host().to_owned(),
                })
            }),
            referer: self.header("referer").map(str::to_owned),
            user_agent: self.header("user-agent").map(str::to_owned),
            accept_language: self.header("accept-language").map(str::to_owned),
            cookie: self.cookie_header(),
            query_string: self.url.query().map(str::to_owned),
        }
    }
}
