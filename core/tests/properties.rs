//! Property tests of the parsers that read untrusted or operator input:
//! the configuration, `Cache-Control`/`Surrogate-Control`, and URLs (the
//! last also differentially, against the WHATWG parser of the `url` crate).

use fragcache_core::cache::policy::{
    decide, parse_directives, Decision, ResponseHeaders, RoutePolicy, Uncacheable,
};
use fragcache_core::config::Config;
use fragcache_core::url::Url;
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------- config

/// The JSON example of the `config` module doc: a valid configuration with
/// every field set, which the generator below mutates.
fn example_config() -> Value {
    let json = fragcache_core::testing::config_doc_example();
    serde_json::from_str(&json).expect("the module doc example is JSON")
}

/// Replacement values: every JSON type, edge numbers, and strings that look
/// like numbers, booleans, URLs and patterns.
fn odd_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        prop::sample::select(vec![
            0.0, -0.0, 0.5, 1.5, 59.0, 60.0, 1e20, -1e300, 1e300, 30000.0, 30001.0
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "30",
            "true",
            "wait",
            "fail",
            "pass",
            "404",
            "/",
            "/f/*",
            "/*/x",
            "http://o.test",
            "https://a.test/x",
            "ftp://x",
            "é",
            "accept-language",
            "cookie",
            "a b"
        ])
        .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One change to a configuration, applied at the `n`-th node (counted in
/// document order, wrapping) that can take it.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a value.
    Replace(usize, Value),
    /// Rename a key: drop a character, double one, upper-case it, or take a
    /// key from elsewhere in the schema.
    Rename(usize, u8, String),
    /// Remove a key.
    Remove(usize),
    /// Add a key.
    Insert(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let keys = prop::sample::select(vec![
        "origin",
        "limits",
        "max_depth",
        "path",
        "soft_ttl",
        "hard_ttl",
        "private",
        "cold",
        "cookies",
        "vary",
        "timeout_ms",
        "require_surrogate_control",
        "retry_after",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        (any::<usize>(), odd_value()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        (any::<usize>(), any::<u8>(), keys.clone()).prop_map(|(n, h, k)| Mutation::Rename(n, h, k)),
        any::<usize>().prop_map(Mutation::Remove),
        (
            any::<usize>(),
            prop_oneof![keys, "[a-z_]{1,10}"],
            odd_value()
        )
            .prop_map(|(n, k, v)| Mutation::Insert(n, k, v)),
    ]
}

/// Number of nodes for which `pred` holds.
fn count(v: &Value, pred: fn(&Value) -> bool) -> usize {
    let children = match v {
        Value::Object(map) => map.values().map(|c| count(c, pred)).sum(),
        Value::Array(items) => items.iter().map(|c| count(c, pred)).sum(),
        _ => 0,
    };
    usize::from(pred(v)) + children
}

/// The `n`-th node (document order) for which `pred` holds.
fn nth<'a>(v: &'a mut Value, n: &mut usize, pred: fn(&Value) -> bool) -> Option<&'a mut Value> {
    if pred(v) {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
    }
    match v {
        Value::Object(map) => map.values_mut().find_map(|c| nth(c, n, pred)),
        Value::Array(items) => items.iter_mut().find_map(|c| nth(c, n, pred)),
        _ => None,
    }
}

/// The node that mutation number `n` applies to, among those `pred` accepts.
fn pick(config: &mut Value, n: usize, pred: fn(&Value) -> bool) -> Option<&mut Value> {
    let total = count(config, pred);
    if total == 0 {
        return None;
    }
    nth(config, &mut (n % total), pred)
}

fn apply(config: &mut Value, m: &Mutation) {
    match m {
        Mutation::Replace(n, v) => {
            if let Some(node) = pick(config, *n, |_| true) {
                *node = v.clone();
            }
        }
        Mutation::Rename(n, how, other) => {
            let Some(map) = pick(config, *n, Value::is_object).and_then(Value::as_object_mut)
            else {
                return;
            };
            let Some(key) = map.keys().nth(*n % map.len().max(1)).cloned() else {
                return;
            };
            let value = map.remove(&key).unwrap_or(Value::Null);
            let mut chars: Vec<char> = key.chars().collect();
            let at = usize::from(*how) % chars.len().max(1);
            let renamed = match how % 4 {
                0 if !chars.is_empty() => {
                    chars.remove(at);
                    chars.into_iter().collect()
                }
                1 if !chars.is_empty() => {
                    chars.insert(at, chars[at]);
                    chars.into_iter().collect()
                }
                2 => key.to_ascii_uppercase(),
                _ => other.clone(),
            };
            map.insert(renamed, value);
        }
        Mutation::Remove(n) => {
            if let Some(map) = pick(config, *n, Value::is_object).and_then(Value::as_object_mut) {
                if let Some(key) = map.keys().nth(*n % map.len().max(1)).cloned() {
                    map.remove(&key);
                }
            }
        }
        Mutation::Insert(n, key, v) => {
            if let Some(map) = pick(config, *n, Value::is_object).and_then(Value::as_object_mut) {
                map.insert(key.clone(), v.clone());
            }
        }
    }
}

/// What a field path such as `fragments[1].vary.headers[0]` names: `Ok`
/// with the value, or `Err` with the parent object when the last key is
/// absent. Generated keys never contain `.`, `[` or `]`, so the path is
/// unambiguous.
fn resolve_field<'a>(root: &'a Value, path: &str) -> Result<&'a Value, Option<&'a Value>> {
    let mut node = root;
    for (i, part) in path.split('.').enumerate() {
        let is_last = i == path.split('.').count() - 1;
        let (key, indexes) = match part.find('[') {
            Some(b) => (&part[..b], &part[b..]),
            None => (part, ""),
        };
        let parent = node;
        node = match parent.get(key) {
            Some(v) => v,
            None if is_last && indexes.is_empty() && parent.is_object() => {
                return Err(Some(parent))
            }
            None => return Err(None),
        };
        for index in indexes.split(']').filter(|s| !s.is_empty()) {
            let index: usize = index
                .strip_prefix('[')
                .and_then(|s| s.parse().ok())
                .ok_or(None)?;
            node = node.get(index).ok_or(None)?;
        }
    }
    Ok(node)
}

/// The error's value is the value at its field, as JSON (shortened when
/// long); a whole number may be shown without its `.0`.
fn shows(value: &Value, shown: &str) -> bool {
    let json = value.to_string();
    if json == shown {
        return true;
    }
    if let Some(prefix) = shown.strip_suffix('…') {
        return json.starts_with(prefix) && json.len() > 120;
    }
    matches!((value.as_f64(), shown.parse::<f64>()), (Some(a), Ok(b)) if a == b)
}

fn check_config(input: &Value) -> Result<(), TestCaseError> {
    let Err(e) = Config::from_json(input) else {
        return Ok(());
    };
    prop_assert!(!e.problem.is_empty(), "{e}");
    if e.field == "FRAGCACHE" {
        prop_assert!(!input.is_object(), "root error on an object: {e}");
        return Ok(());
    }
    match resolve_field(input, &e.field) {
        Ok(v) => prop_assert!(shows(v, &e.value), "{e}: value at the field is {v}"),
        Err(Some(_)) => prop_assert_eq!(&e.value, "(missing)", "{}", e),
        Err(None) => prop_assert!(false, "{e}: the field is not in the input {input}"),
    }
    if e.value == "(missing)" {
        let v = resolve_field(input, &e.field);
        prop_assert!(
            matches!(v, Err(Some(_)) | Ok(Value::Null)),
            "{e}: reported missing but is {v:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutated valid configurations never panic, and every error names a
    /// field that is in the input with the value found there, or a key
    /// that is absent (or null) from an object that is there.
    #[test]
    fn config_errors_name_fields_of_the_input(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut config = example_config();
        for m in &mutations {
            apply(&mut config, m);
        }
        check_config(&config)?;
    }

    /// Arbitrary JSON, not derived from the schema, likewise.
    #[test]
    fn config_never_panics_on_arbitrary_json(v in odd_value()) {
        check_config(&v)?;
        let mut with_origin = serde_json::json!({ "origin": "http://o.test" });
        if let (Some(map), Value::Object(extra)) = (with_origin.as_object_mut(), &v) {
            map.extend(extra.clone());
        }
        check_config(&with_origin)?;
    }
}

// ----------------------------------------------- Cache-Control directives

/// A directive other than `private` and `no-store`: a token, optionally
/// with a token or quoted-string argument (quoted strings may hold commas;
/// quoted-pair escapes are covered by `quoted_pair_hides_private`).
fn other_directive() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "max-age",
            "s-maxage",
            "no-cache",
            "public",
            "must-revalidate",
            "stale-while-revalidate",
            "stale-if-error",
            "content",
            "immutable",
            "no-transform",
            "privat",
            "no-stor"
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,10}",
    ];
    let arg = prop_oneof![
        Just(String::new()),
        "[0-9]{1,12}".prop_map(|n| format!("={n}")),
        "[0-9]{1,3}\\+[0-9]{1,3}".prop_map(|n| format!("={n}")),
        "[a-zA-Z0-9/.-]{0,10}".prop_map(|t| format!("={t}")),
        "[a-zA-Z0-9 ,/=.-]{0,16}".prop_map(|q| format!("=\"{q}\"")),
    ];
    (name, arg).prop_map(|(n, a)| format!("{n}{a}"))
}

/// Directives joined with commas and optional whitespace, with the names'
/// case changed where `upper` says.
fn render(directives: &[String], upper: &[bool], spaces: &[bool]) -> String {
    let mut out = String::new();
    for (i, d) in directives.iter().enumerate() {
        if i > 0 {
            out.push(',');
            if spaces.get(i).copied().unwrap_or(false) {
                out.push(' ');
            }
        }
        let (name, arg) = d.split_at(d.find('=').unwrap_or(d.len()));
        let name: String = name
            .chars()
            .enumerate()
            .map(|(j, c)| {
                if upper
                    .get((i * 7 + j) % upper.len().max(1))
                    .copied()
                    .unwrap_or(false)
                {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        out.push_str(&name);
        out.push_str(arg);
    }
    out
}

const ROUTE: RoutePolicy = RoutePolicy {
    soft_ttl: 30,
    hard_ttl: 3600,
    negative_ttl: 10,
    honor_origin_headers: true,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn directives_never_panic(s in "\\PC{0,64}", t in "[a-z=\",+ 0-9-]{0,40}", status in 100u16..600) {
        for value in [&s, &t] {
            let _ = parse_directives(value);
            for honor in [false, true] {
                let route = RoutePolicy { honor_origin_headers: honor, ..ROUTE };
                let headers = ResponseHeaders {
                    cache_control: Some(value),
                    surrogate_control: Some(value),
                    set_cookie: false,
                };
                if let Decision::Store { soft_s, hard_s } = decide(status, headers, &route) {
                    prop_assert!(soft_s >= 1 && hard_s >= soft_s);
                }
            }
        }
    }

    /// `private` or `no-store` as one of the directives, in any case and at
    /// any position, with or without an argument: never stored.
    #[test]
    fn private_or_no_store_is_never_stored(
        mut directives in prop::collection::vec(other_directive(), 0..6),
        which in prop::sample::select(vec!["private", "no-store", "private=\"set-cookie, x\"", "no-store=1"]),
        at in any::<prop::sample::Index>(),
        upper in prop::collection::vec(any::<bool>(), 1..16),
        spaces in prop::collection::vec(any::<bool>(), 0..8),
        status in prop::sample::select(vec![200u16, 203, 301, 404, 410]),
        in_surrogate in any::<bool>(),
        honor in any::<bool>(),
    ) {
        let at = at.index(directives.len() + 1);
        directives.insert(at, which.to_owned());
        let header = render(&directives, &upper, &spaces);
        let d = parse_directives(&header);
        prop_assert!(d.private || d.no_store, "{header}");
        let route = RoutePolicy { honor_origin_headers: honor, ..ROUTE };
        let (cc, sc) = if in_surrogate && which.starts_with("no-store") {
            (None, Some(header.as_str()))
        } else {
            (Some(header.as_str()), None)
        };
        let headers = ResponseHeaders { cache_control: cc, surrogate_control: sc, set_cookie: false };
        let decision = decide(status, headers, &route);
        prop_assert!(
            matches!(decision, Decision::Pass(Uncacheable::Private | Uncacheable::NoStore)),
            "{header}: {decision:?}"
        );
    }

    /// Directive names are case-insensitive: changing their case changes
    /// nothing parsed.
    #[test]
    fn directive_names_are_case_insensitive(
        directives in prop::collection::vec(other_directive(), 0..6),
        extra in prop::sample::select(vec!["private", "no-store", "no-cache", "content=\"ESI/1.0\"", "max-age=60+30"]),
        upper in prop::collection::vec(any::<bool>(), 1..16),
        spaces in prop::collection::vec(any::<bool>(), 0..8),
    ) {
        let mut directives = directives;
        directives.push(extra.to_owned());
        let plain = render(&directives, &[false], &spaces);
        let mixed = render(&directives, &upper, &spaces);
        prop_assert_eq!(parse_directives(&plain), parse_directives(&mixed), "{} vs {}", plain, mixed);
    }
}

/// A quoted string may contain `\"` (RFC 9110 quoted-pair): the escaped
/// quote must not end the string, or the next real quote would open one
/// that swallows the following directives and `private` would be missed.
#[test]
fn quoted_pair_hides_private() {
    let d = parse_directives(r#"ext="a\"b", private, x="y""#);
    assert!(d.private);
}

// ------------------------------------------------------------------- URLs

fn scheme() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "http://",
        "https://",
        "HTTP://",
        "HtTpS://",
        "http:/",
        "http:",
        "https:\\\\",
        "ftp://",
        "file://",
        "ws://",
        "x-y.z://",
        "",
    ])
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_-]{1,8}(\\.[a-zA-Z0-9_-]{1,8}){0,3}\\.?",
        1 => prop::sample::select(vec![
            "127.0.0.1", "1.2.3.4", "255.255.255.255", "256.1.1.1", "1.2.3.256", "0x7f.1",
            "127.1", "2130706433", "017.0.0.1", "1.2.3.4.5", "0.0.0.0", "[::1]",
            "[2001:db8::1]", "[::ffff:127.0.0.1]", "xn--nxasmq6b.com", "xn--zz", "xn--a.test",
            "EXAMPLE.com.", "a..b", "%41.com", "ex%2eample", "", ".", "a.-b", "a-.b",
            "ex%00ample", "a.0x1", "a.1e", "1.2.3.04", "example.com..", "_dmarc.test",
            "ab--cd.test", "münchen.de", "u@h.test", "a:b@h.test",
        ])
        .prop_map(str::to_owned),
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => prop::sample::select(vec![
            ":80", ":443", ":8080", ":0", ":65535", ":65536", ":0080", ":", ":abc", ":99999999999",
        ])
        .prop_map(str::to_owned),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_~-]{0,6}",
        2 => prop::sample::select(vec![
            ".", "..", "...", "%2e", "%2E%2e", ".%2e", "%2e.", "%41", "%zz", "%", "%4", "é",
            "<", ">", "`", "{", "}", "^", "|", "'", "\"", "a:b", "@", "!", "$", "&", "(", ";",
            "=", "+", "a%2Fb", "%2f", "\\", "[", "]", "%E2%82%AC", "€", "😀",
        ])
        .prop_map(str::to_owned),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..6), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = String::new();
        for s in segs {
            p.push('/');
            p.push_str(&s);
        }
        if trailing {
            p.push('/');
        }
        p
    })
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        1 => Just("?".to_owned()),
        3 => prop::collection::vec(
            prop_oneof![
                "[a-z0-9=&]{0,6}",
                prop::sample::select(vec![
                    "%20", "é", "'", "\"", "<", ">", "`", "{", "}", "^", "|", "?", "/", "=",
                    "&", "%zz", "\\", "+", "[", "]",
                ])
                .prop_map(str::to_owned),
            ],
            1..5,
        )
        .prop_map(|parts| format!("?{}", parts.concat())),
    ]
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => "#[a-z0-9/?#%]{0,6}",
    ]
}

fn url_string() -> impl Strategy<Value = String> {
    (scheme(), host(), port(), path(), query(), fragment())
        .prop_map(|(s, h, p, path, q, f)| format!("{s}{h}{p}{path}{q}{f}"))
}

/// A relative (or absolute) reference for `resolve`.
fn reference() -> impl Strategy<Value = String> {
    let relative_path =
        (prop::collection::vec(segment(), 1..5), any::<bool>()).prop_map(|(segs, trailing)| {
            let mut p = segs.join("/");
            if trailing {
                p.push('/');
            }
            p
        });
    prop_oneof![
        3 => (relative_path, query(), fragment()).prop_map(|(p, q, f)| format!("{p}{q}{f}")),
        2 => (path(), query(), fragment()).prop_map(|(p, q, f)| format!("{p}{q}{f}")),
        1 => (host(), port(), path(), query()).prop_map(|(h, p, path, q)| format!("//{h}{p}{path}{q}")),
        1 => (query(), fragment()).prop_map(|(q, f)| format!("{q}{f}")),
        1 => url_string(),
    ]
}

/// Our parts against the WHATWG parser's, modulo the documented
/// normalisations:
/// - an empty query (`?` alone) is no query for us (one cache entry for
///   both spellings), `Some("")` for WHATWG;
/// - we drop one trailing dot from the host (`example.com.` is
///   `example.com`), WHATWG keeps it;
/// - default ports are `None` in both.
///
/// Everything else, including the case of percent-escapes (kept as written
/// by both) and which characters are escaped, must be identical.
fn same_as_whatwg(ours: &Url, theirs: &url::Url) -> Result<(), TestCaseError> {
    let their_host = theirs.host_str().unwrap_or("");
    let their_host = their_host.strip_suffix('.').unwrap_or(their_host);
    prop_assert_eq!(ours.scheme(), theirs.scheme());
    prop_assert_eq!(ours.host(), their_host);
    prop_assert_eq!(ours.port(), theirs.port());
    prop_assert_eq!(ours.path(), theirs.path());
    prop_assert_eq!(ours.query(), theirs.query().filter(|q| !q.is_empty()));
    Ok(())
}

/// The one kind of URL we accept and WHATWG refuses: a host label written
/// in punycode (`xn--…`) that does not decode. We do not decode punycode;
/// WHATWG does, and refuses invalid labels, so `fetch` fails on such a URL
/// instead of going anywhere: it can never reach a host other than the one
/// the allow-list saw.
fn punycode_refused(ours: &Url, e: url::ParseError) -> bool {
    e == url::ParseError::IdnaError && ours.host().split('.').any(|l| l.starts_with("xn--"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn url_parse_never_panics(s in "\\PC{0,40}") {
        if let Ok(u) = Url::parse(&s) {
            prop_assert_eq!(Url::parse(&u.to_string()), Ok(u));
        }
    }

    /// Accepted URLs print back to themselves, resolve to absolute http(s)
    /// URLs, and agree with the WHATWG parser.
    #[test]
    fn url_agrees_with_whatwg(s in url_string()) {
        let Ok(ours) = Url::parse(&s) else {
            return Ok(());
        };
        let printed = ours.to_string();
        prop_assert_eq!(Url::parse(&printed), Ok(ours.clone()), "{}", printed);
        match url::Url::parse(&s) {
            Ok(theirs) => same_as_whatwg(&ours, &theirs)?,
            Err(e) => prop_assert!(
                punycode_refused(&ours, e),
                "we accept {s:?}, WHATWG refuses it: {e}"
            ),
        }
    }

    /// `resolve` gives an absolute http(s) URL or an error, and whenever it
    /// gives one it is what `url::Url::join` gives.
    #[test]
    fn resolve_agrees_with_whatwg_join(base in url_string(), r in reference()) {
        let Ok(base) = Url::parse(&base) else {
            return Ok(());
        };
        let Ok(ours) = base.resolve(&r) else {
            return Ok(());
        };
        prop_assert!(matches!(ours.scheme(), "http" | "https"));
        prop_assert!(!ours.host().is_empty() && ours.path().starts_with('/'));
        prop_assert_eq!(Url::parse(&ours.to_string()), Ok(ours.clone()));
        let their_base = match url::Url::parse(&base.to_string()) {
            Ok(b) => b,
            Err(e) => {
                prop_assert!(punycode_refused(&base, e), "WHATWG refuses {base}: {e}");
                return Ok(());
            }
        };
        match their_base.join(&r) {
            Ok(theirs) => same_as_whatwg(&ours, &theirs)?,
            Err(e) => prop_assert!(
                punycode_refused(&ours, e),
                "we resolve {r:?} against {base}, WHATWG refuses: {e}"
            ),
        }
    }
}
