//! ESI: compiling a page into a [`Template`] once, and evaluating it per
//! request into a [`Plan`] (literal byte ranges, escaped text, includes to
//! fetch, try blocks).
//!
//! # Layout
//!
//! - [`Compiler`] (here) owns the source buffer; `lexer` finds ESI
//!   constructs in it, chunk by chunk; `compile` builds the node tree.
//! - `vars` parses `$(…)` references, looks them up in [`RequestVars`] and
//!   escapes values; `expr` compiles and evaluates `test` expressions.
//! - `eval` turns a template and a request into a [`Plan`].
//!
//! # Language
//!
//! ESI 1.0 (W3C Note, 2001) as commonly implemented. Tags are
//! case-sensitive: `<esi:` in lower case. Anything that is not ESI passes
//! through byte for byte, including invalid UTF-8, `<ESI:…>`, `<esix:…>`
//! and `<esi-…>`.
//!
//! - `<esi:include src=… alt=… onerror="continue"/>` (also with an end tag):
//!   becomes [`Segment::Include`]. Either quote style or unquoted values,
//!   any whitespace, unknown attributes ignored, XML entities decoded
//!   (`&amp; &lt; &gt; &quot; &apos; &#NN; &#xNN;`), variables substituted.
//! - `<esi:remove>…</esi:remove>`: dropped without being parsed.
//! - `<esi:comment …/>`: dropped.
//! - `<!--esi … -->`: the markers are dropped and the content processed. The
//!   first `-->` closes the innermost open marker, as in HTML, so a plain
//!   `<!-- … -->` comment cannot be nested inside.
//! - `<esi:vars>…</esi:vars>`: variables in the content are substituted
//!   (in text and in attribute values of ordinary tags alike, since both
//!   are just bytes here). Elsewhere, `$(…)` outside ESI attributes is
//!   literal text.
//! - `<esi:choose>`, `<esi:when test=…>`, `<esi:otherwise>`: the first true
//!   `when` wins, else `otherwise`; text directly inside `choose` is
//!   ignored. See `expr` for the expression language.
//! - `<esi:try><esi:attempt>…</esi:attempt><esi:except>…</esi:except></esi:try>`:
//!   becomes [`Segment::Try`]; text directly inside `try` is ignored; a
//!   missing `attempt` or `except` is empty.
//! - `<esi:inline name=URL fetchable=…>…</esi:inline>`: the content is
//!   output in place; in addition, an `esi:include` in the same document
//!   whose evaluated `src` equals `name` gets that content instead of a
//!   fetch (the inline may appear before or after the include).
//!   `fetchable` is accepted and ignored: this processor never serves
//!   inline fragments to other pages.
//!
//! # Variables
//!
//! | reference | value |
//! |---|---|
//! | `$(HTTP_COOKIE)` | the whole `Cookie` header |
//! | `$(HTTP_COOKIE{name})` | that cookie (first one; surrounding `"` removed) |
//! | `$(QUERY_STRING)` | the raw query, without `?` |
//! | `$(QUERY_STRING{name})` | that parameter, percent-decoded, `+` as space |
//! | `$(HTTP_HOST)`, `$(HTTP_REFERER)` | the header |
//! | `$(HTTP_USER_AGENT)` | the header |
//! | `$(HTTP_USER_AGENT{browser})` | `MSIE`, `MOZILLA` or `OTHER` |
//! | `$(HTTP_USER_AGENT{os})` | `WIN`, `MAC`, `UNIX` or `OTHER` |
//! | `$(HTTP_USER_AGENT{version})` | the browser version, e.g. `5.0` |
//! | `$(HTTP_ACCEPT_LANGUAGE)` | the header |
//! | `$(HTTP_ACCEPT_LANGUAGE{en})` | `true` if `en` (or `en-*`) is accepted, else `false` |
//!
//! Unknown variables and keys are empty. `$(NAME|'default')` or
//! `$(NAME{key}|default)` replaces an empty or missing value.
//!
//! # Escaping
//!
//! Request data must never become markup or change which URL is fetched.
//! Every substituted value (defaults included) is escaped for where it
//! lands:
//!
//! - In markup (`esi:vars` content): HTML-escaped, `& < > " '` become
//!   entities, so a cookie holding `<esi:include src=/evil/>` or `<script>`
//!   is inert text.
//! - In an include `src`/`alt`: percent-encoded as a URL component (only
//!   `A-Z a-z 0-9 - . _ ~` kept). Two exceptions keep their structure:
//!   `$(QUERY_STRING)` (whole) also keeps `& = % + / ? : @ , ;`, and
//!   `$(HTTP_HOST)` (whole) also keeps `: [ ]` for ports and IPv6 literals.
//!   Spaces, quotes, `<`, `>`, `#` and anything else are always encoded.
//! - In `when` tests: used raw; they are compared, never output.
//!
//! # Malformed input
//!
//! Compiling never fails, panics or loops, and takes time linear in the
//! input whatever the chunking. Problems are reported as [`Warning`]s:
//!
//! - A tag whose `>` does not come before end of input: output as literal
//!   text from its `<` to the end.
//! - Block elements (`remove`, `vars`, `choose`, `when`, `otherwise`, `try`,
//!   `attempt`, `except`, `inline`) still open at end of input are closed
//!   there; for `remove`, the rest of the input is dropped. A `<!--esi`
//!   without `-->` likewise: its content up to the end is processed.
//! - Stray end tags are dropped. A mismatched end tag closes the elements
//!   opened after its match, then the match.
//! - Unknown `esi:` elements are dropped (the content of a block is kept).
//! - Misplaced branches (`when` outside `choose`, …): see `compile`.
//! - Malformed `test` expressions are always false.
//! - Nesting is capped: [`MAX_DEPTH`] for blocks (deeper tags are dropped,
//!   content kept), 64 for expressions.
//! - An `esi:include` without `src` is dropped.

mod compile;
mod eval;
mod expr;
mod lexer;
mod vars;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;

use compile::{Builder, InlineDef, Node};
use lexer::Lexer;

pub use compile::MAX_DEPTH;

/// A compiled ESI document: the source bytes plus nodes that refer to them.
///
/// Compile once (see [`Compiler`]), keep it with the cached shell, and call
/// [`Template::evaluate`] per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: Vec<u8>,
    nodes: Vec<Node>,
    inlines: Vec<InlineDef>,
    /// `esi:inline` name → index in `inlines`.
    inline_index: HashMap<String, usize>,
    warnings: Vec<Warning>,
    has_esi: bool,
}

impl Template {
    /// Compiles a whole document.
    pub fn compile(input: &[u8]) -> Template {
        Compiler {
            source: input.to_vec(),
            ..Compiler::default()
        }
        .finish()
    }

    /// The source bytes; [`Segment::Literal`] ranges index into them.
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    /// Whether compiling changed anything: false means the output is always
    /// the source as it is, and the body can be passed through untouched.
    pub fn has_esi(&self) -> bool {
        self.has_esi
    }

    /// Problems found in malformed ESI (never fatal), in document order of
    /// discovery.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Evaluates the template for one request: decides `choose`, substitutes
    /// variables, renders include `src`/`alt`. Does not re-parse the source.
    pub fn evaluate(&self, vars: &RequestVars) -> Plan {
        eval::evaluate(self, vars)
    }
}

/// A streaming compiler: feed the document in chunks of any size, then
/// [`finish`](Compiler::finish). Any chunking produces the same
/// [`Template`] as compiling the whole document at once.
#[derive(Debug)]
pub struct Compiler {
    source: Vec<u8>,
    lexer: Lexer,
    builder: Builder,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler {
            source: Vec::new(),
            lexer: Lexer::new(),
            builder: Builder::default(),
        }
    }
}

impl Compiler {
    /// A compiler with no input yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk and compiles as far as it allows.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.source.extend_from_slice(chunk);
        self.lexer.run(&self.source, &mut self.builder, false);
    }

    /// Ends the input and returns the template.
    pub fn finish(mut self) -> Template {
        self.lexer.run(&self.source, &mut self.builder, true);
        let built = self.builder.finish();
        let len = self.source.len();
        let unchanged = match built.nodes.as_slice() {
            [] => len == 0,
            [Node::Literal(r)] => r.start == 0 && r.end == len,
            _ => false,
        };
        Template {
            source: self.source,
            nodes: built.nodes,
            inlines: built.inlines,
            inline_index: built.inline_index,
            warnings: built.warnings,
            has_esi: !unchanged,
        }
    }
}

/// A problem in malformed ESI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Byte offset in the source where the offending construct starts.
    pub offset: usize,
    /// What was wrong and what was done about it.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ESI at byte {}: {}", self.offset, self.message)
    }
}

/// The parts of the request that ESI variables read.
#[derive(Debug, Clone, Default)]
pub struct RequestVars {
    /// `Host` header.
    pub host: Option<String>,
    /// `Referer` header.
    pub referer: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// `Accept-Language` header.
    pub accept_language: Option<String>,
    /// The raw `Cookie` header.
    pub cookie: Option<String>,
    /// The raw query string, without `?`.
    pub query_string: Option<String>,
}

/// The outcome of evaluating a template for one request, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What to output, in order.
    pub segments: Vec<Segment>,
}

/// One piece of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A byte range of [`Template::source`], output verbatim.
    Literal(std::ops::Range<usize>),
    /// Bytes produced during evaluation (escaped variable values).
    Text(Vec<u8>),
    /// A fragment to fetch.
    Include(Include),
    /// `esi:try`: output `attempt`, unless an include inside it fails
    /// (one without its own `alt` or `onerror="continue"` to fall back
    /// on); then output `except` instead.
    Try {
        /// The `esi:attempt` content.
        attempt: Vec<Segment>,
        /// The `esi:except` content.
        except: Vec<Segment>,
    },
}

/// An include to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The URL, variable-substituted and entity-decoded but not resolved
    /// against any base URL.
    pub src: String,
    /// The fallback URL, same form.
    pub alt: Option<String>,
    /// `onerror="continue"`: on failure (after `alt`), output nothing.
    pub onerror_continue: bool,
}
