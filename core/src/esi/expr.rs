//! `esi:when test="…"` expressions: compiled once into an AST, evaluated per
//! request.
//!
//! # Grammar
//!
//! ```text
//! or      := and ( ('|' | '||') and )*
//! and     := cmp ( ('&' | '&&') cmp )*
//! cmp     := unary [ ('==' | '!=' | '<' | '>' | '<=' | '>=') unary ]
//! unary   := '!' unary | '(' or ')' | operand
//! operand := 'single-quoted' | "double-quoted" | number | $(VARIABLE…)
//! ```
//!
//! So `!` binds tightest, then comparisons, then `&`, then `|`. Comparisons
//! do not chain (`a == b == c` is malformed). In quoted literals a backslash
//! escapes a following quote or backslash and is literal otherwise.
//!
//! # Semantics
//!
//! Variables are looked up raw (no escaping: the value is never output).
//! A comparison is numeric when both sides are numbers (`-?digits[.digits]`),
//! otherwise a byte-wise string comparison; booleans compare as `true` /
//! `false`. A bare operand is true when it is non-empty and not `false`.
//!
//! # Malformed input
//!
//! Any syntax error, and nesting of `(` or `!` deeper than [`MAX_DEPTH`],
//! makes [`compile`] return an error; the caller turns that into an
//! expression that is always false plus a warning. `&`/`|` chains are n-ary
//! nodes, so even a very long chain cannot make evaluation recurse deeply.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::compile::Pool;
use super::vars::{parse_var_at, Str, Strs, VarRef};
use super::RequestVars;

/// Deepest nesting of parentheses and `!` accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// A compiled test expression: a constant, or the root of a tree in the
/// template's [`Exprs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expr {
    /// What a malformed expression compiles to (as `Const(false)`).
    Const(bool),
    /// Index of the root in [`Exprs`].
    Tree(u32),
}

/// The expression trees of a template's tests, all in one vector: operands
/// refer to each other by index, so a test costs no allocation of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exprs {
    ops: Vec<Op>,
    /// The operands of every `&`/`|` chain, each a run of this.
    lists: Vec<u32>,
    /// Operands of the chains being parsed, innermost last (empty between
    /// compiles; kept to reuse its allocation). A finished chain moves its
    /// run to `lists`.
    chain: Vec<u32>,
}

/// One node of an expression tree; `u32`s index [`Exprs::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Text kept in the template's [`Strs`].
    Literal(Str),
    Var(VarRef),
    Not(u32),
    /// A run `start..end` of [`Exprs::lists`].
    And(u32, u32),
    Or(u32, u32),
    Cmp(CmpOp, u32, u32),
}

fn index(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Exprs {
    fn push(&mut self, op: Op) -> u32 {
        self.ops.push(op);
        index(self.ops.len() - 1)
    }

    fn op(&self, i: u32) -> Option<&Op> {
        self.ops.get(i as usize)
    }

    fn list(&self, start: u32, end: u32) -> &[u32] {
        self.lists
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Bytes allocated.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.ops.capacity() * std::mem::size_of::<Op>()
            + (self.lists.capacity() + self.chain.capacity()) * std::mem::size_of::<u32>()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Lit(Str),
    Var(VarRef),
}

/// The tokens of `src`, one at a time (no token vector is built); their
/// texts go to `strs`.
struct Tokens<'a> {
    src: &'a str,
    i: usize,
    strs: &'a mut Strs,
}

impl Tokens<'_> {
    /// The next token, `None` at the end, or the first lexical error.
    fn next_tok(&mut self) -> Result<Option<Tok>, String> {
        let src = self.src;
        let b = src.as_bytes();
        loop {
            let i = self.i;
            let Some(&c) = b.get(i) else {
                return Ok(None);
            };
            let next = b.get(i + 1).copied();
            let (tok, len) = match c {
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.i += 1;
                    continue;
                }
                b'(' => (Tok::LParen, 1),
                b')' => (Tok::RParen, 1),
                b'!' if next == Some(b'=') => (Tok::Cmp(CmpOp::Ne), 2),
                b'!' => (Tok::Not, 1),
                b'&' if next == Some(b'&') => (Tok::And, 2),
                b'&' => (Tok::And, 1),
                b'|' if next == Some(b'|') => (Tok::Or, 2),
                b'|' => (Tok::Or, 1),
                b'=' if next == Some(b'=') => (Tok::Cmp(CmpOp::Eq), 2),
                b'<' if next == Some(b'=') => (Tok::Cmp(CmpOp::Le), 2),
                b'<' => (Tok::Cmp(CmpOp::Lt), 1),
                b'>' if next == Some(b'=') => (Tok::Cmp(CmpOp::Ge), 2),
                b'>' => (Tok::Cmp(CmpOp::Gt), 1),
                b'\'' | b'"' => {
                    let (lit, end) = quoted(src, i, self.strs)?;
                    self.i = end;
                    return Ok(Some(Tok::Lit(lit)));
                }
                b'$' => {
                    let (var, end) = parse_var_at(b, i, self.strs)
                        .ok_or_else(|| format!("bad variable at {i}"))?;
                    self.i = end;
                    return Ok(Some(Tok::Var(var)));
                }
                b'-' | b'0'..=b'9' => {
                    let end = number_end(b, i).ok_or_else(|| format!("bad number at {i}"))?;
                    self.i = end;
                    return Ok(Some(Tok::Lit(self.strs.push(&src[i..end]))));
                }
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(format!("unexpected {ch:?} at {i}"));
                }
            };
            self.i = i + len;
            return Ok(Some(tok));
        }
    }
}

/// A quoted literal starting at `src[start]` (the quote). Appends the
/// unescaped text to `strs`; returns it and the offset past the closing
/// quote.
fn quoted(src: &str, start: usize, strs: &mut Strs) -> Result<(Str, usize), String> {
    let b = src.as_bytes();
    let q = b[start];
    // Quotes and backslashes are ASCII, so every piece between them is a
    // `str` slice and the result is built without re-validating.
    let mark = strs.mark();
    let mut from = start + 1;
    let mut i = from;
    while let Some(k) = memchr::memchr2(q, b'\\', &b[i..]) {
        let at = i + k;
        if b[at] == q {
            strs.extend(&src[from..at]);
            return Ok((strs.since(mark), at + 1));
        }
        // A backslash: it escapes a following quote or backslash only.
        if matches!(b.get(at + 1), Some(&n) if n == q || n == b'\\') {
            strs.extend(&src[from..at]);
            from = at + 1;
            i = at + 2;
        } else {
            i = at + 1;
        }
    }
    Err(format!("unterminated string starting at {start}"))
}

/// End of a `-?digits[.digits]` number at `b[start]`.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| {
        b[from..]
            .iter()
            .position(|c| !c.is_ascii_digit())
            .map_or(b.len(), |p| from + p)
    };
    let int_start = if b[start] == b'-' { start + 1 } else { start };
    let mut end = digits(int_start);
    if end == int_start {
        return None;
    }
    if b.get(end) == Some(&b'.') {
        let frac_end = digits(end + 1);
        if frac_end == end + 1 {
            return None;
        }
        end = frac_end;
    }
    Some(end)
}

/// The number a string spells, if it is exactly `-?digits[.digits]`.
fn as_number(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.is_empty() || number_end(b, 0)? != b.len() {
        return None;
    }
    s.parse().ok()
}

struct Parser<'a> {
    toks: Tokens<'a>,
    exprs: &'a mut Exprs,
    /// The next token, once looked at.
    peeked: Option<Tok>,
    /// A lexical error was met (it is the first one in the source).
    lex_error: bool,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<Option<&Tok>, String> {
        if self.peeked.is_none() {
            self.peeked = self
                .toks
                .next_tok()
                .inspect_err(|_| self.lex_error = true)?;
        }
        Ok(self.peeked.as_ref())
    }

    fn next(&mut self) -> Result<Option<Tok>, String> {
        match self.peeked.take() {
            Some(t) => Ok(Some(t)),
            None => self.toks.next_tok().inspect_err(|_| self.lex_error = true),
        }
    }

    /// A token as its `Debug` form would show it with its texts inline,
    /// for error messages (they name the offending token that way).
    fn describe(&self, tok: &Tok) -> String {
        let strs = &*self.toks.strs;
        let text = |p: Option<Str>| p.map(|p| strs.get(p));
        match tok {
            Tok::Lit(s) => format!("Lit({:?})", strs.get(*s)),
            Tok::Var(v) => format!(
                "Var(VarRef {{ name: {:?}, unknown_name: {:?}, key: {:?}, default: {:?} }})",
                v.name,
                text(v.unknown_name),
                text(v.key),
                text(v.default)
            ),
            Tok::Cmp(op) => format!("Cmp({op:?})"),
            Tok::LParen => "LParen".into(),
            Tok::RParen => "RParen".into(),
            Tok::Not => "Not".into(),
            Tok::And => "And".into(),
            Tok::Or => "Or".into(),
        }
    }

    fn skip(&mut self) {
        self.peeked = None;
    }

    /// Stores the chain whose operands are `chain[from..]`.
    fn end_chain(&mut self, from: usize, or: bool) -> u32 {
        let start = index(self.exprs.lists.len());
        let Exprs { lists, chain, .. } = &mut *self.exprs;
        lists.extend_from_slice(chain.get(from..).unwrap_or_default());
        chain.truncate(from);
        let end = index(self.exprs.lists.len());
        self.exprs.push(if or {
            Op::Or(start, end)
        } else {
            Op::And(start, end)
        })
    }

    fn or(&mut self, depth: usize) -> Result<u32, String> {
        let first = self.and(depth)?;
        if self.peek()? != Some(&Tok::Or) {
            return Ok(first);
        }
        let from = self.exprs.chain.len();
        self.exprs.chain.push(first);
        while self.peek()? == Some(&Tok::Or) {
            self.skip();
            let item = self.and(depth)?;
            self.exprs.chain.push(item);
        }
        Ok(self.end_chain(from, true))
    }

    fn and(&mut self, depth: usize) -> Result<u32, String> {
        let first = self.cmp(depth)?;
        if self.peek()? != Some(&Tok::And) {
            return Ok(first);
        }
        let from = self.exprs.chain.len();
        self.exprs.chain.push(first);
        while self.peek()? == Some(&Tok::And) {
            self.skip();
            let item = self.cmp(depth)?;
            self.exprs.chain.push(item);
        }
        Ok(self.end_chain(from, false))
    }

    fn cmp(&mut self, depth: usize) -> Result<u32, String> {
        let left = self.unary(depth)?;
        let Some(&Tok::Cmp(op)) = self.peek()? else {
            return Ok(left);
        };
        self.skip();
        let right = self.unary(depth)?;
        if matches!(self.peek()?, Some(Tok::Cmp(_))) {
            return Err("comparisons do not chain".into());
        }
        Ok(self.exprs.push(Op::Cmp(op, left, right)))
    }

    fn unary(&mut self, depth: usize) -> Result<u32, String> {
        if depth >= MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        match self.next()? {
            Some(Tok::Not) => {
                let inner = self.unary(depth + 1)?;
                Ok(self.exprs.push(Op::Not(inner)))
            }
            Some(Tok::LParen) => {
                let inner = self.or(depth + 1)?;
                if self.peek()? != Some(&Tok::RParen) {
                    return Err("missing `)`".into());
                }
                self.skip();
                Ok(inner)
            }
            Some(Tok::Lit(s)) => Ok(self.exprs.push(Op::Literal(s))),
            Some(Tok::Var(v)) => Ok(self.exprs.push(Op::Var(v))),
            Some(other) => Err(format!("unexpected {}", self.describe(&other))),
            None => Err("unexpected end of expression".into()),
        }
    }

    /// The whole expression, then nothing.
    fn all(&mut self) -> Result<u32, String> {
        if self.peek()?.is_none() {
            return Err("empty expression".into());
        }
        let e = self.or(0)?;
        if let Some(extra) = self.peek()?.copied() {
            return Err(format!("unexpected {}", self.describe(&extra)));
        }
        Ok(e)
    }
}

/// Compiles a test expression (already entity-decoded); its texts and
/// nodes go to `pool` (nothing is left there on error).
///
/// Tokens are read as the parser needs them; a lexical error anywhere in
/// the source wins over a syntax error before it, as if the whole source
/// had been tokenized first.
pub(crate) fn compile(src: &str, pool: &mut Pool) -> Result<Expr, String> {
    let Pool { strs, exprs, .. } = pool;
    if exprs.ops.capacity() == 0 {
        // Room for a few tests at once, rather than regrowing from one.
        exprs.ops.reserve(16);
        exprs.lists.reserve(8);
        exprs.chain.reserve(8);
    }
    let mark = strs.mark();
    let (ops, lists) = (exprs.ops.len(), exprs.lists.len());
    let mut p = Parser {
        toks: Tokens { src, i: 0, strs },
        exprs,
        peeked: None,
        lex_error: false,
    };
    let result = p.all().map_err(|syntax| {
        if p.lex_error {
            return syntax;
        }
        loop {
            match p.toks.next_tok() {
                Ok(Some(_)) => {}
                Ok(None) => return syntax,
                Err(lexical) => return lexical,
            }
        }
    });
    // An error may leave the operands of unfinished chains.
    p.exprs.chain.clear();
    if result.is_err() {
        p.toks.strs.truncate(mark);
        p.exprs.ops.truncate(ops);
        p.exprs.lists.truncate(lists);
    }
    result.map(Expr::Tree)
}

enum Val<'a> {
    Bool(bool),
    Str(Cow<'a, str>),
}

impl Val<'_> {
    fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Str(s) => !s.is_empty() && s != "false",
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Val::Bool(true) => "true",
            Val::Bool(false) => "false",
            Val::Str(s) => s,
        }
    }
}

impl Expr {
    /// Whether the expression holds for this request (`pool`: the
    /// template's texts and expression trees).
    pub(crate) fn is_true(self, vars: &RequestVars, pool: &Pool) -> bool {
        match self {
            Expr::Const(b) => b,
            Expr::Tree(root) => is_true(root, vars, pool),
        }
    }

    /// Calls `f` on every variable reference in the expression.
    pub(crate) fn for_each_var(self, exprs: &Exprs, f: &mut dyn FnMut(&VarRef)) {
        if let Expr::Tree(root) = self {
            for_each_var(root, exprs, f);
        }
    }
}

fn for_each_var(i: u32, exprs: &Exprs, f: &mut dyn FnMut(&VarRef)) {
    match exprs.op(i) {
        None | Some(Op::Literal(_)) => {}
        Some(Op::Var(v)) => f(v),
        Some(&Op::Not(e)) => for_each_var(e, exprs, f),
        Some(&(Op::And(a, b) | Op::Or(a, b))) => {
            for &e in exprs.list(a, b) {
                for_each_var(e, exprs, f);
            }
        }
        Some(&Op::Cmp(_, l, r)) => {
            for_each_var(l, exprs, f);
            for_each_var(r, exprs, f);
        }
    }
}

fn is_true(i: u32, vars: &RequestVars, pool: &Pool) -> bool {
    val(i, vars, pool).truthy()
}

fn val<'a>(i: u32, vars: &'a RequestVars, pool: &'a Pool) -> Val<'a> {
    let exprs = &pool.exprs;
    match exprs.op(i) {
        None => Val::Bool(false),
        Some(Op::Literal(s)) => Val::Str(Cow::Borrowed(pool.strs.get(*s))),
        Some(Op::Var(v)) => Val::Str(v.value(vars, &pool.strs)),
        Some(&Op::Not(e)) => Val::Bool(!is_true(e, vars, pool)),
        Some(&Op::And(a, b)) => Val::Bool(exprs.list(a, b).iter().all(|&e| is_true(e, vars, pool))),
        Some(&Op::Or(a, b)) => Val::Bool(exprs.list(a, b).iter().any(|&e| is_true(e, vars, pool))),
        Some(&Op::Cmp(op, l, r)) => {
            let (l, r) = (val(l, vars, pool), val(r, vars, pool));
            let (l, r) = (l.as_str(), r.as_str());
            let ord = match (as_number(l), as_number(r)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(l.as_bytes().cmp(r.as_bytes())),
            };
            Val::Bool(ord.is_some_and(|o| match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestVars {
        RequestVars {
            cookie: Some("n=10; s=abc; f=false; e=; q=it's".into()),
            query_string: Some("page=2&name=Ann".into()),
            accept_language: Some("de-DE".into()),
            user_agent: Some("Mozilla/5.0 (Macintosh)".into()),
            ..Default::default()
        }
    }

    fn eval(src: &str) -> Option<bool> {
        let mut pool = Pool::default();
        compile(src, &mut pool)
            .ok()
            .map(|e| e.is_true(&req(), &pool))
    }

    #[test]
    fn table() {
        let table: &[(&str, Option<bool>)] = &[
            ("'a' == 'a'", Some(true)),
            ("'a' != 'a'", Some(false)),
            ("'a'=='b'", Some(false)),
            ("$(HTTP_COOKIE{n}) == 10", Some(true)),
            ("$(HTTP_COOKIE{n}) == 10.0", Some(true)),
            ("$(HTTP_COOKIE{n}) > 9", Some(true)),
            ("$(HTTP_COOKIE{n}) > '9'", Some(true)),
            ("'10' > '9x'", Some(false)),
            (
                "$(HTTP_COOKIE{n}) <= 10 & $(HTTP_COOKIE{n}) >= 10",
                Some(true),
            ),
            ("$(HTTP_COOKIE{n}) < -1", Some(false)),
            ("-1.5 < 0", Some(true)),
            ("$(HTTP_COOKIE{s}) == 'abc'", Some(true)),
            ("$(HTTP_COOKIE{s}) < 'abd'", Some(true)),
            ("$(HTTP_COOKIE{q}) == 'it\\'s'", Some(true)),
            ("$(HTTP_COOKIE{q}) == \"it's\"", Some(true)),
            ("$(HTTP_COOKIE{s})", Some(true)),
            ("$(HTTP_COOKIE{f})", Some(false)),
            ("$(HTTP_COOKIE{e})", Some(false)),
            ("$(HTTP_COOKIE{missing})", Some(false)),
            ("$(HTTP_COOKIE{missing}) == ''", Some(true)),
            ("$(HTTP_COOKIE{missing}|'x') == 'x'", Some(true)),
            ("!$(HTTP_COOKIE{missing})", Some(true)),
            ("!$(HTTP_COOKIE{s}) == 'false'", Some(true)),
            ("!('a' == 'b')", Some(true)),
            ("!!'x'", Some(true)),
            ("'a'=='a' | 'a'=='b' & 'c'=='d'", Some(true)),
            ("('a'=='a' | 'a'=='b') & 'c'=='d'", Some(false)),
            ("'a'=='b' || 'c'=='c'", Some(true)),
            ("'a'=='a' && 'c'=='c'", Some(true)),
            (
                "$(QUERY_STRING{page}) == 2 & $(QUERY_STRING{name}) == 'Ann'",
                Some(true),
            ),
            ("$(HTTP_ACCEPT_LANGUAGE{de})", Some(true)),
            ("$(HTTP_ACCEPT_LANGUAGE{en})", Some(false)),
            ("$(HTTP_USER_AGENT{os}) == 'MAC'", Some(true)),
            ("0", Some(true)),
            ("'false'", Some(false)),
            ("(((('x'))))", Some(true)),
            // Malformed.
            ("", None),
            ("   ", None),
            ("'a' = 'a'", None),
            ("'a' == ", None),
            ("== 'a'", None),
            ("'a' == 'a' == 'a'", None),
            ("('a' == 'a'", None),
            ("'a' == 'a')", None),
            ("'unterminated", None),
            ("abc == 'abc'", None),
            ("$(HTTP_COOKIE{n} == 1", None),
            ("1.", None),
            ("-", None),
            ("'a' 'b'", None),
            ("& 'a'", None),
            ("!", None),
            ("()", None),
        ];
        for (src, want) in table {
            assert_eq!(eval(src), *want, "{src:?}");
        }
    }

    #[test]
    fn errors_name_the_first_lexical_problem() {
        // A lexical error anywhere wins over a syntax error before it.
        assert_eq!(
            compile("1 2 $(", &mut Pool::default()).unwrap_err(),
            "bad variable at 4"
        );
        assert_eq!(
            compile("( 1 'x", &mut Pool::default()).unwrap_err(),
            "unterminated string starting at 4"
        );
        assert_eq!(
            compile("1 2 3", &mut Pool::default()).unwrap_err(),
            "unexpected Lit(\"2\")"
        );
        assert_eq!(
            compile("  ", &mut Pool::default()).unwrap_err(),
            "empty expression"
        );
        assert_eq!(
            compile(" # ", &mut Pool::default()).unwrap_err(),
            "unexpected '#' at 1"
        );
        assert_eq!(
            compile("1 == 2 == 3", &mut Pool::default()).unwrap_err(),
            "comparisons do not chain"
        );
        assert_eq!(
            compile("(1", &mut Pool::default()).unwrap_err(),
            "missing `)`"
        );
        assert_eq!(
            compile("1 &", &mut Pool::default()).unwrap_err(),
            "unexpected end of expression"
        );
    }

    /// The texts of a token are in the pool, but an error names the token
    /// as its `Debug` form did when it owned them.
    #[test]
    fn errors_show_tokens_with_their_texts() {
        let err = |src: &str| compile(src, &mut Pool::default()).unwrap_err();
        assert_eq!(
            err("1 $(HTTP_COOKIE{a}|'d')"),
            "unexpected Var(VarRef { name: Cookie, unknown_name: None, key: Some(\"a\"), \
             default: Some(\"d\") })"
        );
        assert_eq!(
            err("1 $(X)"),
            "unexpected Var(VarRef { name: Unknown, unknown_name: Some(\"X\"), key: None, \
             default: None })"
        );
        assert_eq!(err("'a' 'b'"), "unexpected Lit(\"b\")");
        assert_eq!(err("1 !"), "unexpected Not");
        let mut pool = Pool::default();
        assert!(compile("('kept' == 'x' | !(1 & 2 &)", &mut pool).is_err());
        assert_eq!(pool, Pool::default(), "a failed compile leaves nothing");
        assert!(compile("'a' | 'b' & 'c' 'd'", &mut pool).is_err());
        assert_eq!(pool, Pool::default(), "a failed compile leaves nothing");
    }

    #[test]
    fn quoted_literals_unescape() {
        let lit = |src: &str| {
            let mut pool = Pool::default();
            match compile(src, &mut pool) {
                Ok(Expr::Tree(i)) => match pool.exprs.op(i) {
                    Some(Op::Literal(s)) => pool.strs.get(*s).to_owned(),
                    other => panic!("{src}: {other:?}"),
                },
                other => panic!("{src}: {other:?}"),
            }
        };
        assert_eq!(lit(r"'a\'b'"), "a'b");
        assert_eq!(lit(r"'a\\b'"), r"a\b");
        assert_eq!(lit(r#"'a\nb\"c'"#), r#"a\nb\"c"#);
        assert_eq!(lit(r#""é\"x""#), "é\"x");
        assert_eq!(lit("''"), "");
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!(
            "{}'x'{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(eval(&ok), Some(true));
        let deep = format!("{}'x'{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(compile(&deep, &mut Pool::default()).is_err());
        assert!(compile(&"!".repeat(100_000), &mut Pool::default()).is_err());
        // Long flat chains are fine and evaluate without deep recursion.
        let chain = vec!["'a'=='a'"; 50_000].join(" & ");
        assert_eq!(eval(&chain), Some(true));
    }

    #[test]
    fn numbers() {
        assert_eq!(as_number("12"), Some(12.0));
        assert_eq!(as_number("-0.5"), Some(-0.5));
        for bad in ["", "1e3", "inf", "NaN", " 1", "1 ", "+1", "1.", ".5", "--1"] {
            assert_eq!(as_number(bad), None, "{bad:?}");
        }
    }
}
