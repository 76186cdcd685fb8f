//! The tree builder: turns the lexer's events (text, tags, variable
//! references, `<!--esi` markers) into compiled [`Node`]s.
//!
//! Open block elements live on a stack of frames. Closing a frame turns it
//! into a node of its parent, so the tree is built in one pass, without
//! recursion, and its depth is bounded by [`MAX_DEPTH`].
//!
//! # Malformed input
//!
//! Nothing here fails: every problem becomes a [`Warning`] and a
//! well-defined fallback.
//!
//! - Unknown `esi:` elements: the tag is dropped, content kept.
//! - A stray end tag (nothing of that name open): dropped. A mismatched end
//!   tag closes every element opened after the matching one (each with a
//!   warning), then the matching one.
//! - Block elements still open at end of input are closed there.
//! - `esi:when`/`esi:otherwise` outside `esi:choose`, `esi:except` outside
//!   `esi:try`, and a second `esi:otherwise`/`esi:attempt`/`esi:except`:
//!   dropped with their content (it was meant to be shown only under a
//!   condition that cannot be established). `esi:attempt` outside
//!   `esi:try`: tag dropped, content kept (it is what a try would show).
//! - Text directly inside `esi:choose` or `esi:try` is ignored; other ESI
//!   elements there are ignored with a warning. `esi:vars` and `<!--esi`
//!   are transparent here: a `when` inside `<esi:choose><esi:vars>` counts.
//! - Block elements nested deeper than [`MAX_DEPTH`]: the tag is dropped
//!   (content kept) and its end tag is matched and dropped too.
//! - A malformed `test` compiles to "always false".
//! - At most [`MAX_WARNINGS`] warnings are kept.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Range;

use super::expr::{self, Expr, Exprs};
use super::lexer::{Content, Directive, Mode, Name, Sink, Tag};
use super::vars::{lossy, parse_var_at, push_escape, Str, Strs, VarRef};
use super::{IncludeSrc, RequestVars, SrcRefusal, Warning};

/// Deepest nesting of ESI block elements (and `<!--esi` markers) that is
/// honoured; deeper start tags are dropped with a warning.
pub const MAX_DEPTH: usize = 128;

/// Warnings kept per template; the rest are counted in a last warning.
pub(crate) const MAX_WARNINGS: usize = 100;

/// A compiled piece of a template.
///
/// A template is one flat `Vec<Node>` in document order rather than a tree
/// of per-element vectors: a block element is a [`Node::Block`] followed by
/// its content, which ends where its `end` says. Compiling then appends to
/// one vector (no allocation per element, no moving children from frame to
/// frame), and dropping a template frees one vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// Bytes of the source, output verbatim.
    Literal(Range<usize>),
    /// A variable in `esi:vars` content (HTML-escaped on output).
    Var(VarRef),
    Include {
        src: AttrTpl,
        alt: Option<AttrTpl>,
        onerror_continue: bool,
    },
    /// A block element; its content is the nodes after it up to (not
    /// including) index `end`.
    Block { block: Block, end: usize },
}

/// What a [`Node::Block`] is.
///
/// The content of `Choose` and `Try` holds only blocks: the branches
/// (`When`, `Otherwise`; `Attempt`, `Except`) and, to be skipped, blocks
/// that were misplaced there. Evaluation uses the first `Otherwise`,
/// `Attempt` and `Except` (a repeated one is `Dropped` anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Block {
    Choose,
    When(Expr),
    Otherwise,
    Try,
    Attempt,
    Except,
    /// `esi:inline`: the content is output in place, and may be
    /// substituted for includes (see the template's inline index).
    Inline,
    /// Content that is never output (a misplaced branch). Kept rather than
    /// truncated, because an `esi:inline` inside still defines its name.
    Dropped,
}

impl Node {
    /// Index just past this node and its content, for the node at `i`.
    pub(crate) fn next(&self, i: usize) -> usize {
        match self {
            // `max`: always advance, whatever `end` says.
            Node::Block { end, .. } => (*end).max(i + 1),
            _ => i + 1,
        }
    }
}

/// What a template keeps besides its nodes: the texts of variables, tests
/// and include attributes, and the parts of include attributes, each in one
/// vector for the whole template (no allocation per include or variable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pool {
    pub(crate) strs: Strs,
    /// The parts of every [`AttrTpl`], each a run of this.
    pub(crate) parts: Vec<AttrPart>,
    /// The trees of every `esi:when` test.
    pub(crate) exprs: Exprs,
}

impl Pool {
    /// Bytes allocated.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.strs.capacity()
            + self.parts.capacity() * std::mem::size_of::<AttrPart>()
            + self.exprs.capacity_bytes()
    }
}

/// An attribute value with variables (`src`, `alt`): a run of
/// [`Pool::parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttrTpl {
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttrPart {
    /// URL text (see [`push_url_text`]).
    Lit(Str),
    Var(VarRef),
}

impl AttrTpl {
    /// Splits an entity-decoded attribute value into literal text and
    /// variable references, appended to `pool`. A `$` that does not start a
    /// valid reference is literal.
    pub(crate) fn parse(value: &[u8], pool: &mut Pool) -> AttrTpl {
        let start = pool.parts.len();
        let mut lit_start = 0;
        let mut i = 0;
        while let Some(k) = memchr::memchr(b'$', &value[i..]) {
            let at = i + k;
            match parse_var_at(value, at, &mut pool.strs) {
                Some((var, end)) => {
                    if lit_start < at {
                        let lit = push_url_text(&mut pool.strs, &value[lit_start..at]);
                        pool.parts.push(AttrPart::Lit(lit));
                    }
                    pool.parts.push(AttrPart::Var(var));
                    lit_start = end;
                    i = end;
                }
                None => i = at + 1,
            }
        }
        if lit_start < value.len() {
            let lit = push_url_text(&mut pool.strs, &value[lit_start..]);
            pool.parts.push(AttrPart::Lit(lit));
        }
        let index = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        AttrTpl {
            start: index(start),
            end: index(pool.parts.len()),
        }
    }

    /// The parts, in order.
    fn parts(self, pool: &Pool) -> &[AttrPart] {
        pool.parts
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The URL text for this request: variables substituted as URL text,
    /// then checked (see the `esi` module doc, "Escaping"):
    ///
    /// - a path segment that is `.` or `..` and that a value touches gets
    ///   its dots encoded as `%2E`, which `Url::resolve` refuses;
    /// - if the template is a relative reference as written (its text before
    ///   the first variable has no scheme and does not start with `//`), a
    ///   result that is absolute or scheme-relative is refused.
    pub(crate) fn render(self, vars: &RequestVars, pool: &Pool) -> IncludeSrc {
        let parts = self.parts(pool);
        let strs = &pool.strs;
        let mut out = String::new();
        // Byte ranges of `out` that came from values (empty for empty ones).
        let mut from_vars: Vec<Range<usize>> = Vec::new();
        let mut in_query = false;
        for p in parts {
            let start = out.len();
            match p {
                AttrPart::Lit(s) => out.push_str(strs.get(*s)),
                AttrPart::Var(v) => {
                    v.write_url(vars, strs, in_query, &mut out);
                    from_vars.push(start..out.len());
                }
            }
            in_query = in_query
                || out.as_bytes()[start..]
                    .iter()
                    .any(|&b| b == b'?' || b == b'#');
        }
        if from_vars.is_empty() {
            return IncludeSrc::new(out);
        }
        let out = encode_value_dot_segments(out, &from_vars);
        let leading = match parts.first() {
            Some(AttrPart::Lit(s)) => strs.get(*s),
            _ => "",
        };
        match relative_made_absolute(leading, &out) {
            Some(reason) => IncludeSrc::refused(out, reason),
            None => IncludeSrc::new(out),
        }
    }

    /// The variable references, in order.
    pub(crate) fn vars(self, pool: &Pool) -> impl Iterator<Item = &VarRef> {
        self.parts(pool).iter().filter_map(|p| match p {
            AttrPart::Var(v) => Some(v),
            AttrPart::Lit(_) => None,
        })
    }
}

/// Whether `s` starts with a URL scheme (`name:`), as `Url::resolve` reads it.
fn has_scheme(s: &str) -> bool {
    let Some((name, _)) = s.split_once(':') else {
        return false;
    };
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Whether a reference starts with what `Url::resolve` (or a browser)
/// reads as an authority: `//`, or a slash pair written with backslashes.
fn is_scheme_relative(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b, [b'/' | b'\\', b'/' | b'\\', ..])
}

/// Why `rendered` must be refused when the template's text before its first
/// variable is `leading`: a relative template may not become absolute or
/// scheme-relative through a value.
pub(crate) fn relative_made_absolute(leading: &str, rendered: &str) -> Option<SrcRefusal> {
    if has_scheme(leading) || is_scheme_relative(leading) {
        // Absolute as written: the allow-list decides where it goes.
        return None;
    }
    if is_scheme_relative(rendered) {
        Some(SrcRefusal::MadeSchemeRelative)
    } else if has_scheme(rendered) {
        Some(SrcRefusal::MadeAbsolute)
    } else {
        None
    }
}

/// Encodes the dots of every path segment (before any `?` or `#`) that is
/// `.` or `..` and that a value touches (`from_vars`, sorted: a value inside
/// it, or at its edge, as an empty value or a `/` that ends a value can
/// make a segment of dots written in the template), so a value can never
/// climb out of the include's directory: `Url::resolve` refuses such `%2E`
/// segments. Dot segments written in the template alone are left to
/// ordinary resolution.
pub(crate) fn encode_value_dot_segments(s: String, from_vars: &[Range<usize>]) -> String {
    let path_end = s.find(['?', '#']).unwrap_or(s.len());
    let mut hits: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    let mut vars = from_vars.iter().peekable();
    for seg in s[..path_end].split('/') {
        let end = start + seg.len();
        if matches!(seg, "." | "..") {
            while vars.peek().is_some_and(|r| r.end < start) {
                vars.next();
            }
            if vars.peek().is_some_and(|r| r.start <= end) {
                hits.push(start..end);
            }
        }
        start = end + 1;
    }
    if hits.is_empty() {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 4 * hits.len());
    let mut last = 0;
    for r in hits {
        out.push_str(&s[last..r.start]);
        out.push_str(&"%2E".repeat(r.len()));
        last = r.end;
    }
    out.push_str(&s[last..]);
    out
}

/// Bytes meant for a URL as a `String`: invalid UTF-8 is percent-encoded
/// rather than replaced, so the URL keeps the bytes the author wrote.
pub(crate) fn url_text(b: &[u8]) -> String {
    let mut strs = Strs::default();
    let piece = push_url_text(&mut strs, b);
    strs.get(piece).to_owned()
}

/// Appends [`url_text`] of `b` to `strs`, without an intermediate `String`.
pub(crate) fn push_url_text(strs: &mut Strs, b: &[u8]) -> Str {
    if let Ok(s) = std::str::from_utf8(b) {
        return strs.push(s);
    }
    let mark = strs.mark();
    for chunk in b.utf8_chunks() {
        strs.extend(chunk.valid());
        // Rare (invalid UTF-8 in a URL): a small `String` is fine here.
        let mut escaped = String::new();
        for &byte in chunk.invalid() {
            push_escape(byte, &mut escaped);
        }
        strs.extend(&escaped);
    }
    strs.since(mark)
}

/// What a frame was opened by: an ESI element, or the `<!--esi` marker,
/// which nests like one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Esi(Directive),
    Marker,
}

/// Number of [`Elem`] values.
const ELEM_COUNT: usize = Directive::COUNT + 1;

impl Elem {
    /// A distinct index below [`ELEM_COUNT`].
    fn index(self) -> usize {
        match self {
            Elem::Esi(d) => d as usize,
            Elem::Marker => Directive::COUNT,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Elem::Esi(d) => d.as_str(),
            Elem::Marker => "<!--esi",
        }
    }
}

#[derive(Debug)]
enum Kind {
    Root,
    /// `esi:vars`, `<!--esi`, a misplaced `esi:attempt`: the content
    /// belongs to the enclosing non-transparent frame and goes straight
    /// there.
    Transparent,
    /// Content dropped.
    Discard,
    Choose {
        has_otherwise: bool,
    },
    When(Expr),
    Otherwise,
    Try {
        has_attempt: bool,
        has_except: bool,
    },
    Attempt,
    Except,
    Inline(Option<String>),
}

impl Kind {
    /// The block node a frame of this kind opens with, if any. Takes the
    /// test expression out of a `When` (the frame does not need it).
    fn block(&mut self) -> Option<Block> {
        Some(match self {
            Kind::Root | Kind::Transparent => return None,
            Kind::Discard => Block::Dropped,
            Kind::Choose { .. } => Block::Choose,
            Kind::When(e) => Block::When(*e),
            Kind::Otherwise => Block::Otherwise,
            Kind::Try { .. } => Block::Try,
            Kind::Attempt => Block::Attempt,
            Kind::Except => Block::Except,
            Kind::Inline(_) => Block::Inline,
        })
    }
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    /// `None` only for the root.
    elem: Option<Elem>,
    start: usize,
    /// Index of the innermost non-transparent frame at or below this one:
    /// where content inside this frame goes.
    container: usize,
    /// Index of this frame's [`Node::Block`] (none for the root and for
    /// transparent frames).
    node: Option<usize>,
}

/// Builds the node list from lexer events.
#[derive(Debug)]
pub(crate) struct Builder {
    stack: Vec<Frame>,
    /// Elements opened beyond [`MAX_DEPTH`], counted per element (indexed
    /// by [`Elem::index`]), so that as many of their end tags are dropped.
    /// Counters rather than a stack: an end tag is handled in O(1).
    overflow: [usize; ELEM_COUNT],
    /// The template, flat (see [`Node`]).
    nodes: Vec<Node>,
    /// A literal may be merged into the previous node only if that node's
    /// index is at least this: not across the start or end of a block.
    merge_floor: usize,
    /// Texts and attribute parts the nodes refer to.
    pool: Pool,
    /// `esi:inline` name → index of its block in `nodes`.
    inline_index: HashMap<String, usize>,
    warnings: Vec<Warning>,
    suppressed: usize,
    vars_depth: usize,
    marker_depth: usize,
}

/// What [`Builder::finish`] hands to the template.
pub(crate) struct Built {
    pub(crate) nodes: Vec<Node>,
    pub(crate) pool: Pool,
    pub(crate) inline_index: HashMap<String, usize>,
    pub(crate) warnings: Vec<Warning>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            stack: {
                // Room for a few levels without regrowing.
                let mut stack = Vec::with_capacity(8);
                stack.push(Frame {
                    kind: Kind::Root,
                    elem: None,
                    start: 0,
                    container: 0,
                    node: None,
                });
                stack
            },
            overflow: [0; ELEM_COUNT],
            nodes: Vec::new(),
            merge_floor: 0,
            pool: Pool::default(),
            inline_index: HashMap::new(),
            warnings: Vec::new(),
            suppressed: 0,
            vars_depth: 0,
            marker_depth: 0,
        }
    }
}

impl Builder {
    /// Sizes the node vector and the pool for a whole document of `len`
    /// bytes, so that a typical page (about one node per 256 bytes of
    /// markup, a few pooled bytes per node) compiles without regrowing
    /// them. Capped, so that a large page with little ESI reserves little:
    /// what is reserved is charged to the template.
    pub(crate) fn reserve_for(&mut self, len: usize) {
        let nodes = (len / 256).clamp(8, 256);
        self.nodes.reserve(nodes);
        self.pool.parts.reserve(nodes / 4);
        self.pool.strs.reserve(nodes * 2);
    }
}

/// The lexer's events, in document order.
impl Sink for Builder {
    /// Literal source bytes.
    fn text(&mut self, r: Range<usize>) {
        if !r.is_empty() {
            self.add_node(Node::Literal(r));
        }
    }

    /// An ESI start tag; `esi:remove` asks for its content raw.
    fn start_tag(&mut self, tag: &Tag<'_>) -> Content {
        let directive = match tag.name {
            Name::Known(d) => d,
            Name::Unknown(name) => {
                let msg = format!(
                    "unknown element `esi:{}` dropped (content kept)",
                    String::from_utf8_lossy(name)
                );
                self.warn(tag.start, msg);
                return Content::Lexed;
            }
        };
        self.directive(directive, tag)
    }

    /// An ESI end tag `</esi:NAME>`.
    fn end_tag(&mut self, name: Name<'_>, offset: usize) {
        match name {
            Name::Unknown(name) => {
                let msg = format!(
                    "unknown end tag `</esi:{}>` dropped",
                    String::from_utf8_lossy(name)
                );
                self.warn(offset, msg);
            }
            // Empty elements may be written with an end tag; it means nothing.
            Name::Known(Directive::Include | Directive::Comment) => {}
            Name::Known(d) => self.close(Elem::Esi(d), offset),
        }
    }

    /// A variable reference in `esi:vars` content.
    fn var(&mut self, var: VarRef, offset: usize) {
        if let Some(name) = var.unknown_name {
            self.warn_unknown_name(name, offset);
        }
        self.add_node(Node::Var(var));
    }

    /// Where variable texts go: the template's pool.
    fn strs(&mut self) -> &mut Strs {
        &mut self.pool.strs
    }

    /// `<!--esi`.
    fn marker_open(&mut self, offset: usize) {
        self.open(Elem::Marker, Kind::Transparent, offset);
    }

    /// `-->` while a marker is open.
    fn marker_close(&mut self, offset: usize) {
        self.close(Elem::Marker, offset);
    }

    fn warning(&mut self, offset: usize, message: &'static str) {
        self.warn(offset, message);
    }

    /// Variables are substituted inside `esi:vars`; `-->` closes an open
    /// `<!--esi` marker.
    fn mode(&self) -> Mode {
        match (self.vars_depth > 0, self.marker_depth > 0) {
            (false, false) => Mode::Markup,
            (true, false) => Mode::Vars,
            (false, true) => Mode::Marker,
            (true, true) => Mode::VarsInMarker,
        }
    }
}

impl Builder {
    pub(crate) fn warn(&mut self, offset: usize, message: impl Into<String>) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(Warning {
                offset,
                message: message.into(),
            });
        } else {
            self.suppressed += 1;
        }
    }

    fn warn_unknown_name(&mut self, name: Str, offset: usize) {
        let msg = format!(
            "unknown variable `{}` (always empty)",
            self.pool.strs.get(name)
        );
        self.warn(offset, msg);
    }

    fn add_node(&mut self, node: Node) {
        let c = self.container();
        let Some(frame) = self.stack.get_mut(c) else {
            return;
        };
        if matches!(
            frame.kind,
            // Only branch elements count inside these.
            Kind::Choose { .. } | Kind::Try { .. } | Kind::Discard
        ) {
            return;
        }
        let mergeable = self.nodes.len() > self.merge_floor;
        if let (Node::Literal(r), Some(Node::Literal(prev))) = (&node, self.nodes.last_mut()) {
            if mergeable && prev.end == r.start {
                prev.end = r.end;
                return;
            }
        }
        self.nodes.push(node);
    }

    /// Index of the innermost frame that is not transparent.
    fn container(&self) -> usize {
        self.stack.last().map_or(0, |f| f.container)
    }

    /// The start tag of a known element.
    fn directive(&mut self, elem: Directive, tag: &Tag<'_>) -> Content {
        let off = tag.start;
        let container = self.container();
        let in_branch_parent = matches!(
            self.stack[container].kind,
            Kind::Choose { .. } | Kind::Try { .. }
        );
        // Branches, the transparent `vars`, and elements that output nothing.
        let allowed_there = matches!(
            elem,
            Directive::When
                | Directive::Otherwise
                | Directive::Attempt
                | Directive::Except
                | Directive::Vars
                | Directive::Comment
                | Directive::Remove
        );
        if in_branch_parent && !allowed_there {
            let parent = self.stack[container].elem.map_or("", Elem::as_str);
            let msg = format!("`{}` directly inside `{parent}` is ignored", elem.as_str());
            self.warn(off, msg);
        }
        match elem {
            Directive::Include => {
                self.include(tag);
                Content::Lexed
            }
            Directive::Comment => Content::Lexed,
            Directive::Remove if tag.self_closing => Content::Lexed,
            Directive::Remove => Content::Raw,
            _ => {
                let kind = self.block_kind(elem, tag, container);
                if self.open(Elem::Esi(elem), kind, off) && tag.self_closing {
                    self.close_top();
                }
                Content::Lexed
            }
        }
    }

    fn block_kind(&mut self, elem: Directive, tag: &Tag<'_>, container: usize) -> Kind {
        let off = tag.start;
        #[derive(Clone, Copy)]
        enum Parent {
            Choose { has_otherwise: bool },
            Try { has_attempt: bool, has_except: bool },
            Other,
        }
        let parent = match self.stack[container].kind {
            Kind::Choose { has_otherwise } => Parent::Choose { has_otherwise },
            Kind::Try {
                has_attempt,
                has_except,
            } => Parent::Try {
                has_attempt,
                has_except,
            },
            _ => Parent::Other,
        };
        let (kind, problem) = match (elem, parent) {
            (Directive::Vars, _) => (Kind::Transparent, None),
            (Directive::Choose, _) => (
                Kind::Choose {
                    has_otherwise: false,
                },
                None,
            ),
            (Directive::Try, _) => (
                Kind::Try {
                    has_attempt: false,
                    has_except: false,
                },
                None,
            ),
            (Directive::When, Parent::Choose { .. }) => (Kind::When(self.test(tag)), None),
            (
                Directive::Otherwise,
                Parent::Choose {
                    has_otherwise: false,
                },
            ) => (Kind::Otherwise, None),
            (Directive::Otherwise, Parent::Choose { .. }) => {
                (Kind::Discard, Some("repeated in one `esi:choose`; dropped"))
            }
            (Directive::When | Directive::Otherwise, _) => {
                (Kind::Discard, Some("outside `esi:choose`; dropped"))
            }
            (
                Directive::Attempt,
                Parent::Try {
                    has_attempt: false, ..
                },
            ) => (Kind::Attempt, None),
            (
                Directive::Except,
                Parent::Try {
                    has_except: false, ..
                },
            ) => (Kind::Except, None),
            (Directive::Attempt | Directive::Except, Parent::Try { .. }) => {
                (Kind::Discard, Some("repeated in one `esi:try`; dropped"))
            }
            (Directive::Attempt, _) => (
                Kind::Transparent,
                Some("outside `esi:try`; tag dropped, content kept"),
            ),
            (Directive::Except, _) => (Kind::Discard, Some("outside `esi:try`; dropped")),
            (Directive::Inline, _) => {
                let name = tag
                    .attr(b"name")
                    .map(|n| url_text(n.trim_ascii()))
                    .filter(|n| !n.is_empty());
                if name.is_none() {
                    self.warn(
                        off,
                        "`esi:inline` without `name`: content output in place only",
                    );
                }
                (Kind::Inline(name), None)
            }
            // Not block elements; `directive` never sends them here.
            (Directive::Include | Directive::Comment | Directive::Remove, _) => {
                (Kind::Transparent, None)
            }
        };
        if let Some(p) = problem {
            self.warn(off, format!("`{}` {p}", elem.as_str()));
        }
        kind
    }

    fn test(&mut self, tag: &Tag<'_>) -> Expr {
        let off = tag.start;
        let Some(src) = tag.attr(b"test") else {
            self.warn(off, "`esi:when` without `test` is always false");
            return Expr::Const(false);
        };
        match expr::compile(&lossy(&src), &mut self.pool) {
            Ok(e) => {
                let mut unknown = Vec::new();
                e.for_each_var(&self.pool.exprs, &mut |v| unknown.extend(v.unknown_name));
                for name in unknown {
                    self.warn_unknown_name(name, off);
                }
                e
            }
            Err(why) => {
                self.warn(
                    off,
                    format!("malformed test expression ({why}): always false"),
                );
                Expr::Const(false)
            }
        }
    }

    fn include(&mut self, tag: &Tag<'_>) {
        let off = tag.start;
        let src = tag.attr(b"src");
        let Some(src) = src
            .as_deref()
            .map(<[u8]>::trim_ascii)
            .filter(|s| !s.is_empty())
        else {
            self.warn(off, "`esi:include` without `src` dropped");
            return;
        };
        let src = AttrTpl::parse(src, &mut self.pool);
        let alt = tag.attr(b"alt");
        let alt = alt
            .as_deref()
            .map(<[u8]>::trim_ascii)
            .filter(|s| !s.is_empty())
            .map(|a| AttrTpl::parse(a, &mut self.pool));
        let onerror = tag.attr(b"onerror");
        let onerror_continue = onerror.as_deref().map(<[u8]>::trim_ascii) == Some(b"continue");
        let pool = &self.pool;
        let unknown: Vec<Str> = src
            .vars(pool)
            .chain(alt.iter().flat_map(|a| a.vars(pool)))
            .filter_map(|v| v.unknown_name)
            .collect();
        for name in unknown {
            self.warn_unknown_name(name, off);
        }
        self.add_node(Node::Include {
            src,
            alt,
            onerror_continue,
        });
    }

    /// Pushes a frame; false when the depth limit refused it.
    fn open(&mut self, elem: Elem, mut kind: Kind, offset: usize) -> bool {
        if self.stack.len() > MAX_DEPTH {
            let msg = format!(
                "`{}` nested deeper than {MAX_DEPTH}: tag dropped, content kept",
                elem.as_str()
            );
            self.warn(offset, msg);
            self.overflow[elem.index()] += 1;
            return false;
        }
        match elem {
            Elem::Esi(Directive::Vars) => self.vars_depth += 1,
            Elem::Marker => self.marker_depth += 1,
            _ => {}
        }
        let container = if matches!(kind, Kind::Transparent) {
            self.container()
        } else {
            self.stack.len()
        };
        let node = kind.block().map(|block| {
            self.nodes.push(Node::Block {
                block,
                // Set when the frame closes.
                end: 0,
            });
            self.merge_floor = self.nodes.len();
            self.nodes.len() - 1
        });
        self.stack.push(Frame {
            kind,
            elem: Some(elem),
            start: offset,
            container,
            node,
        });
        true
    }

    fn close(&mut self, elem: Elem, offset: usize) {
        if self.overflow[elem.index()] > 0 {
            self.overflow[elem.index()] -= 1;
            return;
        }
        let Some(j) = self.stack.iter().rposition(|f| f.elem == Some(elem)) else {
            let msg = format!("stray end of `{}` dropped", elem.as_str());
            self.warn(offset, msg);
            return;
        };
        // Whatever overflowed was opened inside the frames being closed.
        self.overflow = [0; ELEM_COUNT];
        while self.stack.len() > j + 1 {
            if let Some(top) = self.stack.last() {
                let msg = format!(
                    "`{}` not closed before the end of `{}`; closed there",
                    top.elem.map_or("", Elem::as_str),
                    elem.as_str()
                );
                let start = top.start;
                self.warn(start, msg);
            }
            self.close_top();
        }
        self.close_top();
    }

    fn close_top(&mut self) {
        if self.stack.len() <= 1 {
            return;
        }
        let Some(f) = self.stack.pop() else {
            return;
        };
        match f.elem {
            Some(Elem::Esi(Directive::Vars)) => self.vars_depth -= 1,
            Some(Elem::Marker) => self.marker_depth -= 1,
            _ => {}
        }
        let end = self.nodes.len();
        if let Some(Node::Block { end: e, .. }) = f.node.and_then(|i| self.nodes.get_mut(i)) {
            *e = end;
        }
        self.merge_floor = end;
        let c = self.container();
        match (f.kind, &mut self.stack[c].kind) {
            (Kind::Otherwise, Kind::Choose { has_otherwise }) => *has_otherwise = true,
            (Kind::Attempt, Kind::Try { has_attempt, .. }) => *has_attempt = true,
            (Kind::Except, Kind::Try { has_except, .. }) => *has_except = true,
            (Kind::Inline(name), _) => {
                if let (Some(name), Some(idx)) = (name, f.node) {
                    match self.inline_index.entry(name) {
                        Entry::Occupied(e) => {
                            let msg = format!(
                                "duplicate `esi:inline` name {:?}; the first wins",
                                e.key()
                            );
                            self.warn(f.start, msg);
                        }
                        Entry::Vacant(e) => {
                            e.insert(idx);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes everything still open and hands over the result.
    pub(crate) fn finish(mut self) -> Built {
        while self.stack.len() > 1 {
            if let Some(top) = self.stack.last() {
                let msg = format!(
                    "`{}` not closed by the end of input; closed there",
                    top.elem.map_or("", Elem::as_str)
                );
                let start = top.start;
                self.warn(start, msg);
            }
            self.close_top();
        }
        if self.suppressed > 0 {
            let msg = format!("{} further warnings suppressed", self.suppressed);
            let offset = self.warnings.last().map_or(0, |w| w.offset);
            self.warnings.push(Warning {
                offset,
                message: msg,
            });
        }
        Built {
            nodes: self.nodes,
            pool: self.pool,
            inline_index: self.inline_index,
            warnings: self.warnings,
        }
    }
}
