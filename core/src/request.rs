//! The parts of the client's request that the core looks at.
//!
//! The adapter copies them out of the Worker's `Request` once; everything
//! downstream (ESI variables, cache-key variants, header forwarding) reads
//! them from here.

use http::header::{HeaderMap, HeaderName, COOKIE};
use http::Method;

use crate::esi::RequestVars;
use crate::headers::{text, value as header_value};
use crate::url::Url;

/// The client's request, as far as the core is concerned.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The request method.
    pub method: Method,
    /// The URL the client asked the worker for.
    pub url: Url,
    /// Request headers.
    pub headers: HeaderMap,
    /// Two-letter country code from `request.cf`, when known.
    pub country: Option<String>,
}

impl ClientRequest {
    /// A `GET` request with no headers.
    pub fn new(url: Url) -> Self {
        ClientRequest {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            country: None,
        }
    }

    /// Adds a header. A name or value that HTTP does not allow is skipped:
    /// the runtime would never have delivered it.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), header_value(value)) {
            self.headers.append(n, v);
        }
        self
    }

    /// The first value of header `name`, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(text)
    }

    /// Every textual value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.get_all(name).into_iter().filter_map(text)
    }

    /// All `Cookie` headers joined with `; `, as one header would carry them.
    pub fn cookie_header(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(text)
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
