//! The parts of the client's request that the core looks at.
//!
//! The adapter copies them out of the Worker's `Request` once; everything
//! downstream (ESI variables, cache-key variants, header forwarding) reads
//! them from here.

use http::header::{HeaderMap, HeaderName, COOKIE};
use http::Method;

use crate::esi::{cookie_value, RequestVars};
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
    /// The authorised debug bypass ([`crate::admin::BYPASS_HEADER`]): every
    /// fragment and the shell come from the origin, no cache is read or
    /// written, and the page is private.
    pub debug_bypass: bool,
}

impl ClientRequest {
    /// A `GET` request with no headers.
    pub fn new(url: Url) -> Self {
        ClientRequest {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            country: None,
            debug_bypass: false,
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

    /// The value of cookie `name`, if present: first occurrence, trimmed,
    /// one pair of surrounding double quotes removed. The same value as the
    /// ESI variable `$(HTTP_COOKIE{name})` (one parser serves both).
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie_value(&self.cookie_header()?, name).map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esi::{Segment, Template};

    /// What `$(HTTP_COOKIE{name})` outputs for `req` inside `esi:vars`.
    fn esi_cookie(req: &ClientRequest, name: &str) -> String {
        let page = format!("<esi:vars>$(HTTP_COOKIE{{{name}}})</esi:vars>");
        let t = Template::compile(page.as_bytes());
        let mut out = Vec::new();
        for s in t.evaluate(&req.esi_vars()).segments {
            match s {
                Segment::Literal(r) => out.extend_from_slice(&t.source()[r]),
                Segment::Text(b) => out.extend(b),
                other => panic!("unexpected {other:?}"),
            }
        }
        String::from_utf8(out).expect("UTF-8")
    }

    /// HTML-escaped as ESI escapes values in markup.
    fn escaped(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    }

    #[test]
    fn cookie_and_esi_variable_agree() {
        let req = ClientRequest::new(Url::parse("http://shop.test/").expect("url"))
            .with_header(
                "cookie",
                "a=\"quoted value\"; b=\"\"twice\"\"; c = \" spaced \" ; d=\"open; e=close\"",
            )
            .with_header("cookie", "f=plain; a=second; g=; h; i=\"; j=\"\"");
        let want = [
            ("a", Some("quoted value")),
            // One pair of quotes is removed, not every quote.
            ("b", Some("\"twice\"")),
            ("c", Some(" spaced ")),
            ("d", Some("\"open")),
            ("e", Some("close\"")),
            ("f", Some("plain")),
            ("g", Some("")),
            ("h", None),
            ("i", Some("\"")),
            ("j", Some("")),
            ("missing", None),
        ];
        for (name, value) in want {
            assert_eq!(req.cookie(name).as_deref(), value, "cookie {name}");
            assert_eq!(
                esi_cookie(&req, name),
                escaped(value.unwrap_or("")),
                "$(HTTP_COOKIE{{{name}}})"
            );
        }
    }
}
