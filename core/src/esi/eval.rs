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

use super::compile::{InlineDef, Node};
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
    /// Inlines being output, innermost last.
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
    ev.nodes(&t.nodes, &mut segments);
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

    fn nodes(&mut self, nodes: &'a [Node], out: &mut Vec<Segment>) {
        let mut scratch = Vec::new();
        for node in nodes {
            match node {
                Node::Literal(r) => push_literal(out, r.clone()),
                Node::Var(v) => {
                    self.read(v);
                    scratch.clear();
                    v.write_markup(self.vars, &mut scratch);
                    push_text(out, &scratch);
                }
                Node::Include {
                    src,
                    alt,
                    onerror_continue,
                } => {
                    for v in src.vars().chain(alt.iter().flat_map(|a| a.vars())) {
                        self.read(v);
                    }
                    let src = src.render(self.vars);
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
                            continue;
                        }
                    }
                    out.push(Segment::Include(Include {
                        src,
                        alt: alt.as_ref().map(|a| a.render(self.vars)),
                        onerror_continue: *onerror_continue,
                    }));
                }
                Node::Choose { whens, otherwise } => {
                    // Every test up to the first true one is evaluated; all
                    // of its variables count as read (even an operand that
                    // `&`/`|` short-circuits past: reporting more is safe).
                    let mut body = otherwise;
                    for (test, when_body) in whens {
                        test.for_each_var(&mut |v| self.inputs.merge(v.input()));
                        if test.is_true(self.vars) {
                            body = when_body;
                            break;
                        }
                    }
                    self.nodes(body, out);
                }
                Node::Try { attempt, except } => {
                    let mut a = Vec::new();
                    self.nodes(attempt, &mut a);
                    let mut e = Vec::new();
                    self.nodes(except, &mut e);
                    out.push(Segment::Try {
                        attempt: a,
                        except: e,
                    });
                }
                Node::Inline(idx) => self.inline(*idx, out),
            }
        }
    }

    fn inline(&mut self, idx: usize, out: &mut Vec<Segment>) {
        let t = self.t;
        if let Some(InlineDef { body }) = t.inlines.get(idx) {
            self.active.push(idx);
            self.nodes(body, out);
            self.active.pop();
        }
    }
}
