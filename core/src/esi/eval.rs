//! Per-request evaluation of a compiled template into a [`Plan`].
//!
//! This walks the node tree only: literal text is referenced by range, test
//! expressions and attribute templates were parsed at compile time, so the
//! source is never scanned again.
//!
//! # Inline substitution
//!
//! An `esi:include` whose evaluated `src` equals the `name` of an
//! `esi:inline` in the same template is replaced by that inline's content.
//! To keep the plan (and the recursion) bounded, at most
//! [`MAX_INLINE_SUBSTITUTIONS`] includes are replaced per evaluation,
//! substitutions nest at most [`MAX_INLINE_NESTING`] deep, and an inline is
//! never substituted inside itself (directly or through other inlines); such includes stay ordinary
//! includes for the assembler, which has its own depth and cycle limits.

use std::ops::Range;

use super::compile::{Block, Node};
use super::vars::VarRef;
use super::{Include, Plan, RequestInputs, RequestVars, Segment, Template};

/// Most includes replaced by inline content in one evaluation.
pub(crate) const MAX_INLINE_SUBSTITUTIONS: usize = 64;

/// Deepest nesting of inline substitutions (inline content that includes
/// another inline).
pub(crate) const MAX_INLINE_NESTING: usize = 4;

struct Evaluator<'a> {
    t: &'a Template,
    vars: &'a RequestVars,
    /// Inlines being output (their block's node index), innermost last.
    active: Vec<usize>,
    substitutions: usize,
    nesting: usize,
    /// The request inputs read so far.
    inputs: RequestInputs,
}

fn push_literal(out: &mut Vec<Segment>, r: std::ops::Range<usize>) {
    if r.is_empty() {
        return;
    }
    if let Some(Segment::Literal(prev)) = out.last_mut() {
        if prev.end == r.start {
            prev.end = r.end;
            return;
        }
    }
    out.push(Segment::Literal(r));
}

fn push_text(out: &mut Vec<Segment>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(Segment::Text(prev)) = out.last_mut() {
        prev.extend_from_slice(bytes);
        return;
    }
    out.push(Segment::Text(bytes.to_vec()));
}

pub(crate) fn evaluate(t: &Template, vars: &RequestVars) -> Plan {
    let mut ev = Evaluator {
        t,
        vars,
        active: Vec::new(),
        substitutions: 0,
        nesting: 0,
        inputs: RequestInputs::default(),
    };
    let mut segments = Vec::new();
    ev.nodes(0..t.nodes.len(), &mut segments);
    Plan {
        segments,
        inputs: ev.inputs,
    }
}

impl<'a> Evaluator<'a> {
    /// Records that the value of `v` is looked up.
    fn read(&mut self, v: &VarRef) {
        self.inputs.merge(v.input());
    }

    /// Evaluates the nodes in `range` of the template (a whole block
    /// content: it starts and ends between blocks).
    fn nodes(&mut self, range: Range<usize>, out: &mut Vec<Segment>) {
        let nodes = &self.t.nodes;
        let mut scratch = Vec::new();
        let mut i = range.start;
        while let Some(node) = nodes.get(i).filter(|_| i < range.end) {
            let next = node.next(i);
            match node {
                Node::Literal(r) => push_literal(out, r.clone()),
                Node::Var(v) => {
                    self.read(v);
                    scratch.clear();
                    v.write_markup(self.vars, &self.t.pool.strs, &mut scratch);
                    push_text(out, &scratch);
                }
                Node::Include {
                    src,
                    alt,
                    onerror_continue,
                } => {
                    let pool = &self.t.pool;
                    for v in src.vars(pool).chain(alt.iter().flat_map(|a| a.vars(pool))) {
                        self.read(v);
                    }
                    let src = src.render(self.vars, pool);
                    let inline = match src.refusal() {
                        None => self.t.inline_index.get(src.as_str()),
                        Some(_) => None,
                    };
                    if let Some(&idx) = inline {
                        if self.substitutions < MAX_INLINE_SUBSTITUTIONS
                            && self.nesting < MAX_INLINE_NESTING
                            && !self.active.contains(&idx)
                        {
                            self.substitutions += 1;
                            self.nesting += 1;
                            self.inline(idx, out);
                            self.nesting -= 1;
                            i = next;
                            continue;
                        }
                    }
                    out.push(Segment::Include(Include {
                        src,
                        alt: alt.map(|a| a.render(self.vars, pool)),
                        onerror_continue: *onerror_continue,
                    }));
                }
                Node::Block { block, .. } => match block {
                    Block::Choose => {
                        let body = self.choose(i + 1..next);
                        self.nodes(body, out);
                    }
                    Block::Try => {
                        let (attempt, except) = self.branches(i + 1..next);
                        let mut a = Vec::new();
                        self.nodes(attempt, &mut a);
                        let mut e = Vec::new();
                        self.nodes(except, &mut e);
                        out.push(Segment::Try {
                            attempt: a,
                            except: e,
                        });
                    }
                    Block::Inline => self.inline(i, out),
                    // Branches are only reached through their parent;
                    // dropped content never.
                    Block::When(_)
                    | Block::Otherwise
                    | Block::Attempt
                    | Block::Except
                    | Block::Dropped => {}
                },
            }
            i = next;
        }
    }

    /// The content to output for the `esi:choose` whose content is
    /// `range`: that of the first true `when`, else of the `otherwise`.
    ///
    /// Every test up to the first true one is evaluated; all of its
    /// variables count as read (even an operand that `&`/`|`
    /// short-circuits past: reporting more is safe).
    fn choose(&mut self, range: Range<usize>) -> Range<usize> {
        let nodes = &self.t.nodes;
        let mut otherwise = 0..0;
        let mut i = range.start;
        while let Some(node) = nodes.get(i).filter(|_| i < range.end) {
            let next = node.next(i);
            match node {
                Node::Block {
                    block: Block::When(test),
                    ..
                } => {
                    let pool = &self.t.pool;
                    test.for_each_var(&pool.exprs, &mut |v| self.inputs.merge(v.input()));
                    if test.is_true(self.vars, pool) {
                        return i + 1..next;
                    }
                }
                Node::Block {
                    block: Block::Otherwise,
                    ..
                } if otherwise.is_empty() => otherwise = i + 1..next,
                _ => {}
            }
            i = next;
        }
        otherwise
    }

    /// The contents of the `esi:attempt` and `esi:except` of the `esi:try`
    /// whose content is `range` (empty when missing).
    fn branches(&self, range: Range<usize>) -> (Range<usize>, Range<usize>) {
        let nodes = &self.t.nodes;
        let (mut attempt, mut except) = (None, None);
        let mut i = range.start;
        while let Some(node) = nodes.get(i).filter(|_| i < range.end) {
            let next = node.next(i);
            match node {
                Node::Block {
                    block: Block::Attempt,
                    ..
                } => {
                    attempt.get_or_insert(i + 1..next);
                }
                Node::Block {
                    block: Block::Except,
                    ..
                } => {
                    except.get_or_insert(i + 1..next);
                }
                _ => {}
            }
            i = next;
        }
        (attempt.unwrap_or(0..0), except.unwrap_or(0..0))
    }

    /// Outputs the content of the `esi:inline` whose block is node `at`.
    fn inline(&mut self, at: usize, out: &mut Vec<Segment>) {
        if let Some(node) = self.t.nodes.get(at) {
            self.active.push(at);
            self.nodes(at + 1..node.next(at), out);
            self.active.pop();
        }
    }
}
