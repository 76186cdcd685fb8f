//! The page's output budget under include and inline amplification: shells
//! that include or inline the same big fragment many times, nested
//! fragments with ESI, `esi:try` blocks. The output, every chunk and every
//! byte charged stay within `limits.max_page_bytes`.

use std::rc::Rc;

use proptest::prelude::*;

use fragcache_core::assemble::{Chunk, IncludeError, Page};
use fragcache_core::config::Config;
use fragcache_core::esi::Template;
use fragcache_core::loader::Shared;
use fragcache_core::testing::{self, Script, Sim, ORIGIN};
use fragcache_core::url::Url;

struct Run {
    /// Concatenated output.
    out: Vec<u8>,
    /// Largest single chunk.
    largest: usize,
    /// Bytes charged against the budget.
    charged: usize,
    /// A top-level failure, if the page failed.
    failed: Option<IncludeError>,
    cut: bool,
}

fn config(max_fragment: usize, max_page: usize, max_includes: u32) -> Rc<Config> {
    Rc::new(
        Config::from_json_str(&format!(
            r#"{{
              "origin": "{ORIGIN}",
              "pages": [ {{ "path": "/" }} ],
              "fragments": [ {{ "path": "/f/*", "soft_ttl": 60, "hard_ttl": 300 }} ],
              "limits": {{ "max_fragment_bytes": {max_fragment}, "max_page_bytes": {max_page},
                          "max_includes": {max_includes}, "max_depth": 3 }}
            }}"#
        ))
        .expect("test config is valid"),
    )
}

/// Scripts the fragments: `/f/big` (plain), `/f/self` (inlines a body of
/// `n` bytes and includes it 64 times), `/f/nest` (ESI including both),
/// `/f/bad` (a server error).
fn script(sim: &Sim, n: usize) {
    let big = "B".repeat(n);
    sim.origin.script("/f/big", Script::ok(&big, 20));
    let mut selfish = format!(
        "<esi:inline name=\"/f/x\" fetchable=\"no\">{}</esi:inline>",
        "I".repeat(n / 2)
    );
    for _ in 0..64 {
        selfish.push_str("<esi:include src=\"/f/x\"/>");
    }
    sim.origin.script(
        "/f/self",
        Script::ok(&selfish, 30).header("surrogate-control", "content=\"ESI/1.0\""),
    );
    sim.origin.script(
        "/f/nest",
        Script::ok(
            "<esi:include src=\"/f/big\"/>n<esi:include src=\"/f/big\"/>\
             <esi:try><esi:attempt><esi:include src=\"/f/self\"/></esi:attempt>\
             <esi:except>e</esi:except></esi:try>",
            10,
        ),
    );
    sim.origin.script("/f/bad", Script::status(500, 5));
}

fn run(shell: &str, max_fragment: usize, max_page: usize) -> Run {
    let sim = Sim::new(7);
    script(&sim, max_fragment);
    let config = config(max_fragment, max_page, 200);
    let loader = testing::loader(sim.ports(), &Shared::new(), &config, "/", &[]);
    let template = Rc::new(Template::compile(shell.as_bytes()));
    let base = Url::parse(&format!("{ORIGIN}/")).unwrap();
    let log = Rc::clone(&sim.log);
    let mut r = sim.block_on(async move {
        let mut page = Page::prepare(loader, template, base).await;
        let mut r = Run {
            out: Vec::new(),
            largest: 0,
            charged: 0,
            failed: None,
            cut: false,
        };
        while let Some(c) = page.next_chunk().await {
            match c {
                Chunk::Bytes(b) => {
                    r.largest = r.largest.max(b.len());
                    r.out.extend_from_slice(&b);
                }
                Chunk::Failed(e) => {
                    if r.out.is_empty() {
                        r.failed = Some(e);
                        break;
                    }
                }
            }
        }
        r.charged = page.bytes_charged();
        r
    });
    r.cut = log.contains("exceeds max_page_bytes");
    r
}

fn assert_bounded(r: &Run, max_page: usize) {
    assert!(
        r.out.len() <= max_page,
        "output {} > {max_page}",
        r.out.len()
    );
    assert!(r.largest <= max_page, "chunk {} > {max_page}", r.largest);
    assert!(r.charged <= max_page, "charged {} > {max_page}", r.charged);
    assert!(r.out.len() <= r.charged, "everything sent was charged");
}

#[test]
fn a_fragment_inlining_itself_64_times_is_cut_without_copying_it() {
    let mib = 1 << 20;
    let max_page = 8 * mib;
    let r = run("<html><esi:include src=\"/f/self\"/></html>", mib, max_page);
    assert_bounded(&r, max_page);
    assert!(
        r.cut || r.failed.is_some(),
        "64 MiB of output cannot fit in 8 MiB"
    );
    assert!(matches!(
        r.failed,
        None | Some(IncludeError::PageTooLarge(_))
    ));
}

#[test]
fn a_shell_including_the_same_big_fragment_40_times_stays_within_budget() {
    let mib = 1 << 20;
    let max_page = 8 * mib;
    let shell = "<p>".to_owned() + &"<esi:include src=\"/f/big\"/>".repeat(40) + "</p>";
    let r = run(&shell, mib, max_page);
    assert_bounded(&r, max_page);
    assert!(r.cut);
    // Whole fragments only: the shell's opening and as many bodies as fit.
    assert_eq!(r.out.len(), 3 + 7 * mib);
}

#[test]
fn a_page_within_budget_is_complete() {
    let shell = "<a><esi:include src=\"/f/big\"/><esi:include src=\"/f/big\"/></a>";
    let r = run(shell, 1000, 2003 + 7);
    assert!(!r.cut && r.failed.is_none());
    assert_eq!(r.out.len(), 2007);
    assert_eq!(r.charged, 2007);
    // One byte less and the page is cut after the first fragment.
    let r = run(shell, 1000, 2006);
    assert!(r.cut);
    assert_eq!(r.out, [b"<a>".as_slice(), &[b'B'; 1000]].concat());
}

#[test]
fn no_fallback_absorbs_an_exhausted_budget() {
    let shell = "<esi:include src=\"/f/big\"/>\
                 <esi:include src=\"/f/big\" alt=\"/f/big\" onerror=\"continue\"/>\
                 <esi:try><esi:attempt><esi:include src=\"/f/big\"/></esi:attempt>\
                 <esi:except>small</esi:except></esi:try>tail";
    let r = run(shell, 1000, 1500);
    assert!(r.cut);
    assert_eq!(r.out, vec![b'B'; 1000], "nothing after the first overflow");
}

#[test]
fn a_page_whose_first_piece_does_not_fit_fails() {
    let r = run("<esi:include src=\"/f/big\"/>", 1000, 999);
    assert_eq!(r.failed, Some(IncludeError::PageTooLarge(999)));
    assert!(r.out.is_empty());
}

/// One part of a generated shell.
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<esi:include src=\"/f/big\"/>".to_owned()),
        Just("<esi:include src=\"/f/self\"/>".to_owned()),
        Just("<esi:include src=\"/f/nest\"/>".to_owned()),
        Just("<esi:include src=\"/f/bad\" onerror=\"continue\"/>".to_owned()),
        Just("<esi:include src=\"/f/bad\" alt=\"/f/big\"/>".to_owned()),
        Just(
            "<esi:try><esi:attempt><esi:include src=\"/f/big\"/><esi:include src=\"/f/bad\"/>\
             </esi:attempt><esi:except><esi:include src=\"/f/nest\"/></esi:except></esi:try>"
                .to_owned()
        ),
        Just(
            "<esi:inline name=\"/f/big\" fetchable=\"no\">".to_owned()
                + &"L".repeat(3000)
                + "</esi:inline><esi:include src=\"/f/big\"/><esi:include src=\"/f/big\"/>"
        ),
        "[a-z ]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn output_and_charges_never_exceed_the_budget(
        parts in prop::collection::vec(part(), 1..24),
        max_page in 2_000usize..60_000,
    ) {
        let shell = parts.concat();
        let r = run(&shell, 4096, max_page);
        assert_bounded(&r, max_page);
        // Peak-allocation proxy: the bytes charged bound every copy made.
        prop_assert!(r.charged <= max_page);
    }
}
