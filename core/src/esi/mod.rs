//! ESI: compiling a page into a [`Template`] once, and evaluating it per
//! request into a [`Plan`] (literal byte ranges, escaped text, includes to
//! fetch, try blocks).
//!
//! # Layout
//!
//! - [`Compiler`] (here) owns the source buffer while it streams;
//!   [`Template::compile_shared`] lexes a complete, shared body in place.
//!   `lexer` finds ESI constructs in it, chunk by chunk, and reports them as
//!   events to a `Sink`; `compile` builds the nodes, its `Builder` being the
//!   sink. The lexer does not depend on the compiler.
//! - A template is flat: one `Vec` of nodes in document order (a block is
//!   a node saying where its content ends), literal text as ranges of the
//!   source, and one pool per template for everything else (variable keys
//!   and defaults, include URL text, test expression trees). Compiling
//!   allocates a handful of vectors, not one per element or variable.
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
//! Request data must never become markup, and must never take an include
//! somewhere its template could not go. Every substituted value (defaults
//! included) is escaped for where it lands:
//!
//! - In markup (`esi:vars` content): HTML-escaped, `& < > " '` become
//!   entities, so a cookie holding `<esi:include src=/evil/>` or `<script>`
//!   is inert text.
//! - In an include `src`/`alt`: substituted as URL text, then the result is
//!   resolved against the page like any `src`, and the origin allow-list
//!   decides whether it may be fetched. A value may supply a path, or a
//!   path with a query; it is percent-encoded only where it would change
//!   the URL's structure:
//!   - always: `"`, `'`, `<`, `>`, `\`, `#`, space and all other whitespace
//!     and control characters (CR, LF, TAB, NUL …), a `%` not followed by
//!     two hex digits (a well-formed `%XX` is kept as written), and every
//!     non-ASCII byte (the UTF-8 is percent-encoded);
//!   - in the query (the text rendered before the value has a `?`, or a `#`):
//!     also `&` and `?`, so a value cannot start another parameter, and `+`,
//!     which a form decoder would read as a space. `=` is kept: after
//!     `name=` it is harmless (servers split a parameter at its first `=`);
//!   - in the path, `/ ? & = : @ ; , +` are kept.
//!
//!   Two variables keep their own rules: `$(QUERY_STRING)` whole keeps `&`,
//!   `?` and `+` in the query (it is a query already), and `$(HTTP_HOST)`
//!   whole keeps only `A-Z a-z 0-9 - . _ ~ : [ ]`, so it can name a host
//!   and port where the template put it (`http://$(HTTP_HOST)/x`, then the
//!   allow-list decides) but never add a path, query or userinfo.
//!
//!   Then the whole rendered text is checked:
//!   - a path segment that is `.` or `..` and that a value touches (`..`,
//!     `../x` or `a/../../b` in a value, or a value next to dots of the
//!     template) has its dots encoded as `%2E`, which `Url::resolve`
//!     refuses: a value never climbs out of the include's directory;
//!   - if the template is a relative reference as written (its text before
//!     the first variable has no `scheme:` and does not start with `//`),
//!     a result that is absolute (`scheme:…`) or scheme-relative (`//…`,
//!     `/\…`, `\\…`) is refused ([`SrcRefusal`]): the include fails like
//!     any failed include (`alt`, `onerror="continue"` and `esi:try` apply).
//!     Userinfo (`@` in the authority) is refused by the URL parser.
//!
//!   With `?frag=%2Ffragments%2Fpromo` (the value `/fragments/promo`):
//!
//!   | `src` | renders | then |
//!   |---|---|---|
//!   | `$(QUERY_STRING{frag})` | `/fragments/promo` | fetched |
//!   | `/f?x=$(QUERY_STRING{frag})` | `/f?x=/fragments/promo` | fetched |
//!   | `$(QUERY_STRING{frag})` with `//evil.test/x` | `//evil.test/x` | refused |
//!   | `/f/$(QUERY_STRING{frag})` with `../../admin` | `/f/%2E%2E/%2E%2E/admin` | refused |
//!   | `/f?q=$(QUERY_STRING{q})` with `a&b=1 #x` | `/f?q=a%26b=1%20%23x` | fetched |
//!   | `http://$(HTTP_HOST)/x` | `http://shop.example/x` | allow-list |
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
use std::rc::Rc;

use compile::{Builder, Node, Pool};
use lexer::Lexer;

pub use compile::MAX_DEPTH;
pub(crate) use lexer::may_contain_esi;
pub(crate) use vars::{cookie_value, form_decode};

/// A compiled ESI document: the source bytes plus nodes that refer to them.
///
/// Compile once (see [`Compiler`]), keep it with the cached shell, and call
/// [`Template::evaluate`] per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Shared with the cached body it was compiled from, when compiled with
    /// [`Template::compile_shared`]: literal text is never copied.
    source: Rc<[u8]>,
    /// Flat, in document order (see `compile::Node`).
    nodes: Vec<Node>,
    /// Texts and attribute parts the nodes refer to.
    pool: Pool,
    /// `esi:inline` name → index of its block in `nodes`.
    inline_index: HashMap<String, usize>,
    warnings: Vec<Warning>,
    has_esi: bool,
}

impl Template {
    /// Compiles a whole document, keeping a copy of it.
    pub fn compile(input: &[u8]) -> Template {
        Template::compile_shared(Rc::from(input))
    }

    /// Compiles a whole document that is already shared (a cached body),
    /// keeping a reference to it rather than a copy.
    pub fn compile_shared(source: Rc<[u8]>) -> Template {
        let mut lexer = Lexer::new();
        let mut builder = Builder::default();
        builder.reserve_for(source.len());
        lexer.run(&source, &mut builder, true);
        Template::new(source, builder)
    }

    /// The template of `source`, fully lexed into `builder`.
    fn new(source: Rc<[u8]>, builder: Builder) -> Template {
        let built = builder.finish();
        let len = source.len();
        let unchanged = match built.nodes.as_slice() {
            [] => len == 0,
            [Node::Literal(r)] => r.start == 0 && r.end == len,
            _ => false,
        };
        Template {
            source,
            nodes: built.nodes,
            pool: built.pool,
            inline_index: built.inline_index,
            warnings: built.warnings,
            has_esi: !unchanged,
        }
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

    /// Bytes this template holds: the struct, the source, and everything
    /// its compiled form allocated (capacities, not lengths). What the
    /// isolate's template memo charges for it. The source counts in full
    /// even when it is shared with a cached body: the template keeps it
    /// alive after that entry is evicted.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let nodes = self.nodes.capacity() * size_of::<Node>();
        let pool = self.pool.capacity_bytes();
        // A hash table slot holds the entry and a control byte.
        let inlines = self.inline_index.capacity() * (size_of::<(String, usize)>() + 1)
            + self
                .inline_index
                .keys()
                .map(String::capacity)
                .sum::<usize>();
        let warnings = self.warnings.capacity() * size_of::<Warning>()
            + self
                .warnings
                .iter()
                .map(|w| w.message.capacity())
                .sum::<usize>();
        // An `Rc` allocation has two counters before the bytes.
        let source = self.source.len() + 2 * size_of::<usize>();
        size_of::<Template>() + source + nodes + pool + inlines + warnings
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
        Template::new(Rc::from(self.source), self.builder)
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

/// Which request inputs an evaluation read: what a response built from it
/// depends on besides the URL.
///
/// A variable counts as read wherever its value is looked up: `esi:vars`
/// content, include `src` and `alt`, the `test` of every `when` evaluated
/// (in order, up to and including the first true one), the content of an
/// `esi:inline` that is output, and both branches of an `esi:try`. A
/// default (`$(X|'d')`) still reads `X`; unknown variables read nothing.
/// Content of a branch not taken reads nothing: that is sound, because
/// which branch is taken is itself decided only by inputs that were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestInputs {
    /// `HTTP_COOKIE`, whole or `{name}`.
    pub cookie: bool,
    /// `HTTP_HOST`.
    pub host: bool,
    /// `HTTP_REFERER`.
    pub referer: bool,
    /// `HTTP_USER_AGENT`, whole or `{browser}`, `{os}`, `{version}`.
    pub user_agent: bool,
    /// `HTTP_ACCEPT_LANGUAGE`, whole or `{lang}`.
    pub accept_language: bool,
    /// `QUERY_STRING`, whole or `{name}`.
    pub query_string: bool,
}

impl RequestInputs {
    /// Adds what `other` read (for a page and its fragments).
    pub fn merge(&mut self, other: RequestInputs) {
        self.cookie |= other.cookie;
        self.host |= other.host;
        self.referer |= other.referer;
        self.user_agent |= other.user_agent;
        self.accept_language |= other.accept_language;
        self.query_string |= other.query_string;
    }

    /// Whether nothing was read: the output depends on the URL alone.
    pub fn is_empty(&self) -> bool {
        *self == RequestInputs::default()
    }

    /// Whether a cookie was read: the output is per user, and must not be
    /// stored by shared caches (`Cache-Control: private, no-store`).
    pub fn reads_cookie(&self) -> bool {
        self.cookie
    }

    /// The request headers, lower-case, that a downstream cache must
    /// `Vary` on: `user-agent`, `accept-language` and `referer` when read.
    ///
    /// `host` and the query string are never listed although they may have
    /// been read: both are part of the URL, which every cache already uses
    /// as its key, so varying on them would add nothing. The cookie is not
    /// listed either: `Vary: Cookie` would make a shared cache keep one copy
    /// per user; a page that reads it must not be shared at all (see
    /// [`reads_cookie`](Self::reads_cookie)).
    pub fn vary_headers(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.user_agent, "user-agent"),
            (self.accept_language, "accept-language"),
            (self.referer, "referer"),
        ]
        .into_iter()
        .filter_map(|(read, name)| read.then_some(name))
    }
}

/// The outcome of evaluating a template for one request, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What to output, in order.
    pub segments: Vec<Segment>,
    /// The request inputs this evaluation read (not those of the fragments
    /// it includes, which are evaluated separately).
    pub inputs: RequestInputs,
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
    pub src: IncludeSrc,
    /// The fallback URL, same form.
    pub alt: Option<IncludeSrc>,
    /// `onerror="continue"`: on failure (after `alt`), output nothing.
    pub onerror_continue: bool,
}

/// An evaluated include `src` or `alt`: URL text, not yet resolved, and
/// whether substituting variables made it a URL that must not be fetched
/// (see the module doc, "Escaping"). Reads as a `&str` of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeSrc {
    text: String,
    refused: Option<SrcRefusal>,
}

impl IncludeSrc {
    /// An accepted URL text (as a template without variables gives).
    pub fn new(text: impl Into<String>) -> Self {
        IncludeSrc {
            text: text.into(),
            refused: None,
        }
    }

    /// URL text that must not be fetched, for `reason`.
    pub fn refused(text: impl Into<String>, reason: SrcRefusal) -> Self {
        IncludeSrc {
            text: text.into(),
            refused: Some(reason),
        }
    }

    /// The URL text, variables substituted.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Why this must not be fetched; `None` when it may be resolved (and
    /// then checked against the allow-list) like any URL.
    pub fn refusal(&self) -> Option<SrcRefusal> {
        self.refused
    }
}

impl From<String> for IncludeSrc {
    fn from(text: String) -> Self {
        IncludeSrc::new(text)
    }
}

impl From<&str> for IncludeSrc {
    fn from(text: &str) -> Self {
        IncludeSrc::new(text)
    }
}

impl std::ops::Deref for IncludeSrc {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for IncludeSrc {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for IncludeSrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<str> for IncludeSrc {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for IncludeSrc {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// Why an evaluated include `src`/`alt` is refused before resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrcRefusal {
    /// The template is a relative reference, but with its variables
    /// substituted it names a scheme (`http://evil/`, `https:evil`).
    #[error("a variable made a relative include absolute")]
    MadeAbsolute,
    /// The template is a relative reference, but with its variables
    /// substituted it starts with `//` (or `/\`, `\\`): another host.
    #[error("a variable made a relative include scheme-relative (another host)")]
    MadeSchemeRelative,
}
