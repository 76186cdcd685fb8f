//! Cache keys are injective: two requests get the same key exactly when
//! their declared inputs are equal up to the documented normalisations
//! (query parameter order and empty parameters, `%xx` hex case in the path,
//! header whitespace, case and instance splitting, country case).
//!
//! Inputs are drawn from small pools of awkward values (separators, quotes,
//! `%`, `#`, unicode, empty vs absent, values long enough to force hashing)
//! so that random pairs often agree in most fields and differ in one: the
//! cases where an encoding that is not injective would collide.

use fragcache_core::cache::key::{cache_key, KeyKind};
use fragcache_core::config::Vary;
use fragcache_core::request::ClientRequest;
use fragcache_core::url::Url;
use proptest::prelude::*;

/// Cookie and header names that contain separators, as configs allow.
const COOKIES: [&str; 2] = ["a", "c|b#"];
const HEADERS: [&str; 2] = ["x-v", "h|#x"];
const QUERY: &str = "q|";

fn vary() -> Vary {
    Vary {
        cookies: COOKIES.iter().map(|s| (*s).to_owned()).collect(),
        headers: HEADERS.iter().map(|s| (*s).to_owned()).collect(),
        query: vec![QUERY.to_owned()],
        country: true,
    }
}

fn long() -> String {
    "L".repeat(450)
}

/// Cookie values (no `;`, which ends a cookie).
fn cookie_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        prop::sample::select(vec![
            "1",
            "2",
            "1|c.a=2",
            "1|c.c%7Cb%23=2",
            "c.a=1",
            "=",
            "|",
            "#",
            "%",
            "%7C",
            "a=b",
            "\"q\"",
            "é",
            "…",
            "1, 2",
        ])
        .prop_map(|s| Some(s.to_owned())),
        Just(Some(long())),
        Just(Some(format!("{}|c.a=1", long()))),
    ]
}

/// Header values, each possibly split over two instances.
fn header_value() -> BoxedStrategy<Option<Vec<String>>> {
    let one = prop::sample::select(vec![
        "en",
        "EN",
        " en ",
        "en  gb",
        "En Gb",
        "",
        "|",
        "=",
        "a|h.x-v=b",
        "#",
        "%",
        "é",
        "\"x\"",
        "a,b",
        "a, b",
        "a",
        "b|h.x-v",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        Just(None),
        prop::collection::vec(one, 1..3).prop_map(Some),
        Just(Some(vec![long()])),
    ]
    .boxed()
}

/// Raw values of the varied page query parameter (no `&`, `#`, spaces).
fn query_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec!["", "1", "|", "=", "%7C", "%7c", "a=b", "q.x=1", "é"])
            .prop_map(|s| Some(s.to_owned())),
        Just(Some(long())),
    ]
}

fn country() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec!["", "DE", "de", "FR", "|", "="]).prop_map(|s| Some(s.to_owned())),
    ]
}

/// Path of the fragment URL: segments that the URL keeps or encodes.
fn path() -> impl Strategy<Value = String> {
    let seg = prop::sample::select(vec![
        "a", "a|b", "a=b", "%7C", "%7c", "|", "é", "a%20b", "%25", "c.a=1", "x", "",
    ]);
    prop_oneof![
        prop::collection::vec(seg, 1..4).prop_map(|s| format!("/{}", s.join("/"))),
        Just(format!("/{}", "p".repeat(420))),
        Just(format!("/{}q", "p".repeat(420))),
    ]
}

fn fragment_query() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec!["a=1", "b=2", "a=", "a", "%7C=1", "|=|", "", "c.a=1"])
            .prop_map(str::to_owned),
        0..4,
    )
}

#[derive(Debug, Clone)]
struct Input {
    path: String,
    query: Vec<String>,
    cookies: [Option<String>; 2],
    headers: [Option<Vec<String>>; 2],
    page_query: Option<String>,
    country: Option<String>,
}

fn input() -> impl Strategy<Value = Input> {
    (
        path(),
        fragment_query(),
        [cookie_value(), cookie_value()],
        [header_value(), header_value()],
        query_value(),
        country(),
    )
        .prop_map(
            |(path, query, cookies, headers, page_query, country)| Input {
                path,
                query,
                cookies,
                headers,
                page_query,
                country,
            },
        )
}

fn url(i: &Input) -> Url {
    let q = if i.query.is_empty() {
        String::new()
    } else {
        format!("?{}", i.query.join("&"))
    };
    Url::parse(&format!("http://o.test{}{q}", i.path)).expect("generated URL parses")
}

fn request(i: &Input) -> ClientRequest {
    let page = match &i.page_query {
        Some(v) => format!("http://shop.test/p?z=0&{QUERY}={v}"),
        None => "http://shop.test/p?z=0".to_owned(),
    };
    let mut req = ClientRequest::new(Url::parse(&page).expect("page URL parses"));
    let cookies: Vec<String> = COOKIES
        .iter()
        .zip(&i.cookies)
        .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n}={v}")))
        .collect();
    if !cookies.is_empty() {
        req = req.with_header("cookie", &cookies.join("; "));
    }
    for (name, values) in HEADERS.iter().zip(&i.headers) {
        for v in values.iter().flatten() {
            req = req.with_header(name, v);
        }
    }
    req.country = i.country.clone();
    req
}

fn key(i: &Input) -> String {
    cache_key(KeyKind::Fragment, 0, &url(i), &vary(), &request(i))
}

/// What the key must distinguish, computed without the key code: the
/// parsed path with `%xx` hex upper-cased, the sorted non-empty query
/// parameters, each variant's value (absent ≠ empty).
#[derive(Debug, PartialEq, Eq)]
struct Model {
    path: String,
    query: Vec<String>,
    cookies: Vec<Option<String>>,
    headers: Vec<Option<String>>,
    page_query: Option<String>,
    country: Option<String>,
}

fn model(i: &Input) -> Model {
    let u = url(i);
    let mut path = String::new();
    let mut chars = u.path().chars().peekable();
    while let Some(c) = chars.next() {
        path.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    path.push(h.to_ascii_uppercase());
                }
            }
        }
    }
    let mut query: Vec<String> = u
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    query.sort();
    let req = request(i);
    Model {
        path,
        query,
        // As the cookie header parser reads them back.
        cookies: COOKIES.iter().map(|n| req.cookie(n)).collect(),
        headers: i
            .headers
            .iter()
            .map(|h| {
                h.as_ref().map(|vs| {
                    vs.join(", ")
                        .split([' ', '\t'])
                        .filter(|w| !w.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_ascii_lowercase()
                })
            })
            .collect(),
        page_query: req.query_param(QUERY).map(str::to_owned),
        country: i.country.as_ref().map(|c| c.to_ascii_uppercase()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Failures are printed with their inputs, not kept in a file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Same key exactly when the model says the inputs are the same. `b`
    /// is `a` with one or two fields taken from another random input, so
    /// that most pairs differ in a single field (the near misses).
    #[test]
    fn keys_are_injective(a in input(), other in input(), i in 0usize..8, j in 0usize..8) {
        let mut b = a.clone();
        for f in [i, j] {
            match f {
                0 => b.path = other.path.clone(),
                1 => b.query = other.query.clone(),
                2 => b.cookies[0] = other.cookies[0].clone(),
                3 => b.cookies[1] = other.cookies[1].clone(),
                4 => b.headers[0] = other.headers[0].clone(),
                5 => b.headers[1] = other.headers[1].clone(),
                6 => b.page_query = other.page_query.clone(),
                _ => b.country = other.country.clone(),
            }
        }
        let (ka, kb) = (key(&a), key(&b));
        prop_assert_eq!(model(&a) == model(&b), ka == kb, "{:?}\n{:?}\n{}\n{}", a, b, ka, kb);
        let kc = key(&other);
        prop_assert_eq!(model(&a) == model(&other), ka == kc);
        prop_assert!(ka.len() <= 512, "{}", ka.len());
    }

    /// The documented normalisations do not split a key.
    #[test]
    fn normalisations_share_a_key(a in input(), rot in 0usize..4, split in any::<bool>()) {
        let mut b = a.clone();
        if !b.query.is_empty() {
            let n = rot % b.query.len();
            b.query.rotate_left(n);
            b.query.push(String::new());
        }
        for h in b.headers.iter_mut().flatten() {
            let joined = h.join(", ");
            let spaced = format!("  {}\t", joined.replace(' ', "  ").to_ascii_uppercase());
            *h = match spaced.split_once(", ") {
                Some((x, y)) if split => vec![x.to_owned(), y.to_owned()],
                _ => vec![spaced],
            };
        }
        b.country = b.country.map(|c| c.to_ascii_lowercase());
        prop_assert_eq!(model(&a), model(&b));
        prop_assert_eq!(key(&a), key(&b));
    }
}

#[test]
fn forged_variants_do_not_collide() {
    let base = Input {
        path: "/f".into(),
        query: Vec::new(),
        cookies: [Some("1".into()), Some("2".into())],
        headers: [None, None],
        page_query: None,
        country: None,
    };
    let mut forged = base.clone();
    forged.cookies = [Some("1|c.c%7Cb%23=2".into()), None];
    assert_ne!(key(&base), key(&forged));
    // A value that swallows the next variant vs one that repeats its name.
    let mut swallow = base.clone();
    swallow.headers = [None, Some(vec!["a|h.x-v=b".into()])];
    let mut repeat = base.clone();
    repeat.headers = [Some(vec!["b|h.x-v".into()]), Some(vec!["a".into()])];
    assert_ne!(key(&swallow), key(&repeat));
    let mut empty = base.clone();
    empty.cookies[1] = Some(String::new());
    let mut absent = base.clone();
    absent.cookies[1] = None;
    assert_ne!(key(&empty), key(&absent));
    // Long values are hashed over the whole key.
    let mut l1 = base.clone();
    l1.cookies[0] = Some(format!("{}1", long()));
    let mut l2 = base;
    l2.cookies[0] = Some(format!("{}2", long()));
    let (k1, k2) = (key(&l1), key(&l2));
    assert!(k1.contains('…') && k2.contains('…'));
    assert_ne!(k1, k2);
}
