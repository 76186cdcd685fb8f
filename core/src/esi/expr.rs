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

/// A compiled test expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// What a malformed expression compiles to (as `Const(false)`).
    Const(bool),
    /// Text kept in the template's [`Strs`].
    Literal(Str),
    Var(VarRef),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
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
            other => format!("{other:?}"),
        }
    }

    fn skip(&mut self) {
        self.peeked = None;
    }

    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let first = self.and(depth)?;
        if self.peek()? != Some(&Tok::Or) {
            return Ok(first);
        }
        let mut items = Vec::with_capacity(2);
        items.push(first);
        while self.peek()? == Some(&Tok::Or) {
            self.skip();
            items.push(self.and(depth)?);
        }
        Ok(Expr::Or(items))
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let first = self.cmp(depth)?;
        if self.peek()? != Some(&Tok::And) {
            return Ok(first);
        }
        let mut items = Vec::with_capacity(2);
        items.push(first);
        while self.peek()? == Some(&Tok::And) {
            self.skip();
            items.push(self.cmp(depth)?);
        }
        Ok(Expr::And(items))
    }

    fn cmp(&mut self, depth: usize) -> Result<Expr, String> {
        let left = self.unary(depth)?;
        let Some(&Tok::Cmp(op)) = self.peek()? else {
            return Ok(left);
        };
        self.skip();
        let right = self.unary(depth)?;
        if matches!(self.peek()?, Some(Tok::Cmp(_))) {
            return Err("comparisons do not chain".into());
        }
        Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, String> {
        if depth >= MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        match self.next()? {
            Some(Tok::Not) => Ok(Expr::Not(Box::new(self.unary(depth + 1)?))),
            Some(Tok::LParen) => {
                let inner = self.or(depth + 1)?;
                if self.peek()? != Some(&Tok::RParen) {
                    return Err("missing `)`".into());
                }
                self.skip();
                Ok(inner)
            }
            Some(Tok::Lit(s)) => Ok(Expr::Literal(s)),
            Some(Tok::Var(v)) => Ok(Expr::Var(v)),
            Some(other) => Err(format!("unexpected {}", self.describe(&other))),
            None => Err("unexpected end of expression".into()),
        }
    }

    /// The whole expression, then nothing.
    fn all(&mut self) -> Result<Expr, String> {
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

/// Compiles a test expression (already entity-decoded); its texts go to
/// `strs` (nothing is left there on error).
///
/// Tokens are read as the parser needs them; a lexical error anywhere in
/// the source wins over a syntax error before it, as if the whole source
/// had been tokenized first.
pub(crate) fn compile(src: &str, strs: &mut Strs) -> Result<Expr, String> {
    let mark = strs.mark();
    let mut p = Parser {
        toks: Tokens { src, i: 0, strs },
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
    if result.is_err() {
        p.toks.strs.truncate(mark);
    }
    result
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
    /// Whether the expression holds for this request (`strs`: the
    /// template's texts).
    pub(crate) fn is_true(&self, vars: &RequestVars, strs: &Strs) -> bool {
        self.val(vars, strs).truthy()
    }

    /// Bytes the expression allocated besides itself (boxes and vectors;
    /// its texts are in the template's [`Strs`]).
    pub(crate) fn heap_bytes(&self) -> usize {
        let node = std::mem::size_of::<Expr>();
        match self {
            Expr::Const(_) | Expr::Literal(_) | Expr::Var(_) => 0,
            Expr::Not(e) => node + e.heap_bytes(),
            Expr::And(items) | Expr::Or(items) => {
                items.capacity() * node + items.iter().map(Expr::heap_bytes).sum::<usize>()
            }
            Expr::Cmp(_, l, r) => 2 * node + l.heap_bytes() + r.heap_bytes(),
        }
    }

    /// Calls `f` on every variable reference in the expression.
    pub(crate) fn for_each_var(&self, f: &mut dyn FnMut(&VarRef)) {
        match self {
            Expr::Const(_) | Expr::Literal(_) => {}
            Expr::Var(v) => f(v),
            Expr::Not(e) => e.for_each_var(f),
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.for_each_var(f)),
            Expr::Cmp(_, l, r) => {
                l.for_each_var(f);
                r.for_each_var(f);
            }
        }
    }

    fn val<'a>(&self, vars: &'a RequestVars, strs: &'a Strs) -> Val<'a> {
        match self {
            Expr::Const(b) => Val::Bool(*b),
            Expr::Literal(s) => Val::Str(Cow::Borrowed(strs.get(*s))),
            Expr::Var(v) => Val::Str(v.value(vars, strs)),
            Expr::Not(e) => Val::Bool(!e.is_true(vars, strs)),
            Expr::And(items) => Val::Bool(items.iter().all(|e| e.is_true(vars, strs))),
            Expr::Or(items) => Val::Bool(items.iter().any(|e| e.is_true(vars, strs))),
            Expr::Cmp(op, l, r) => {
                let (l, r) = (l.val(vars, strs), r.val(vars, strs));
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
        let mut strs = Strs::default();
        compile(src, &mut strs)
            .ok()
            .map(|e| e.is_true(&req(), &strs))
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
            compile("1 2 $(", &mut Strs::default()).unwrap_err(),
            "bad variable at 4"
        );
        assert_eq!(
            compile("( 1 'x", &mut Strs::default()).unwrap_err(),
            "unterminated string starting at 4"
        );
        assert_eq!(
            compile("1 2 3", &mut Strs::default()).unwrap_err(),
            "unexpected Lit(\"2\")"
        );
        assert_eq!(
            compile("  ", &mut Strs::default()).unwrap_err(),
            "empty expression"
        );
        assert_eq!(
            compile(" # ", &mut Strs::default()).unwrap_err(),
            "unexpected '#' at 1"
        );
        assert_eq!(
            compile("1 == 2 == 3", &mut Strs::default()).unwrap_err(),
            "comparisons do not chain"
        );
        assert_eq!(
            compile("(1", &mut Strs::default()).unwrap_err(),
            "missing `)`"
        );
        assert_eq!(
            compile("1 &", &mut Strs::default()).unwrap_err(),
            "unexpected end of expression"
        );
    }

    /// The texts of a token are in the pool, but an error names the token
    /// as its `Debug` form did when it owned them.
    #[test]
    fn errors_show_tokens_with_their_texts() {
        let err = |src: &str| compile(src, &mut Strs::default()).unwrap_err();
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
        let mut strs = Strs::default();
        assert!(compile("'kept' == 'x' 'y'", &mut strs).is_err());
        assert_eq!(strs, Strs::default(), "a failed compile leaves no text");
    }

    #[test]
    fn quoted_literals_unescape() {
        let lit = |src: &str| {
            let mut strs = Strs::default();
            match compile(src, &mut strs) {
                Ok(Expr::Literal(s)) => strs.get(s).to_owned(),
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
        assert!(compile(&deep, &mut Strs::default()).is_err());
        assert!(compile(&"!".repeat(100_000), &mut Strs::default()).is_err());
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
