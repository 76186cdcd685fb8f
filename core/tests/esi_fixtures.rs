//! Data-driven ESI tests: `tests/fixtures/esi/*.fixture`.
//!
//! # Fixture format
//!
//! ```text
//! --- request                      (optional)
//! cookie: a=1; b=2
//! query: x=1&y=2
//! host: example.com
//! user-agent: Mozilla/5.0 …
//! accept-language: en-GB,fr;q=0.5
//! referer: http://ref.example/
//! --- page
//! <html>…
//! --- fragment /fragments/a        (any number; keyed by the evaluated src)
//! body, may contain ESI
//! --- fragment /fragments/b status=500
//! --- expect                       (or `--- expect-error`, empty: the page fails)
//! …expected output…
//! --- warnings                     (optional: one expected substring per warning)
//! --- logs                         (optional: substrings that some log line contains)
//! ```
//!
//! A section header is a line starting with `--- `; its body is the lines up
//! to the next header, without the newline that precedes that header (or
//! the end of the file). Bodies are bytes: invalid UTF-8 is fine.
//!
//! Every fixture is run on the whole page and on the page fed to the
//! [`Compiler`] in random chunks (seeded; the seed is in the failure
//! message), in single bytes, and, for short pages, split at every offset.
//! The chunked runs must give the same [`Plan`] as the whole page.
//!
//! The harness is `libtest-mimic` (`harness = false`): each fixture is a
//! trial named after its file (`fixture::26-choose-when`), so a failure
//! names its fixture and `cargo test --test esi_fixtures -- choose` runs a
//! few. The other tests here are trials too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use libtest_mimic::{Arguments, Failed, Trial};

use fragcache_core::config::Config;
use fragcache_core::esi::{Plan, RequestVars, Template};
use fragcache_core::loader::Shared;
use fragcache_core::testing::{self, Script, Sim};
use fragcache_core::url::Url;

#[derive(Debug, Default)]
struct Fixture {
    name: String,
    vars: RequestVars,
    page: Vec<u8>,
    /// src → (status, body).
    fragments: HashMap<String, (u16, Vec<u8>)>,
    /// `None` for `expect-error`.
    expect: Option<Vec<u8>>,
    warnings: Option<Vec<String>>,
    /// Substrings the worker's log must contain.
    logs: Vec<String>,
}

fn parse_fixture(path: &Path) -> Fixture {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Offsets of every header line.
    let mut headers = Vec::new();
    let mut line_start = 0;
    while line_start < data.len() {
        let eol = data[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |p| line_start + p);
        if data[line_start..eol].starts_with(b"--- ") {
            headers.push((line_start, eol));
        }
        line_start = eol + 1;
    }
    let mut fx = Fixture {
        name: name.clone(),
        ..Fixture::default()
    };
    let mut has_expect = false;
    for (i, &(h, eol)) in headers.iter().enumerate() {
        let header = String::from_utf8_lossy(&data[h + 4..eol]).trim().to_owned();
        let body_start = (eol + 1).min(data.len());
        let body_end = match headers.get(i + 1) {
            Some(&(next, _)) => next.saturating_sub(1).max(body_start),
            None if data.ends_with(b"\n") => (data.len() - 1).max(body_start),
            None => data.len(),
        };
        let body = data[body_start..body_end].to_vec();
        let mut words = header.split_whitespace();
        match words.next() {
            Some("request") => {
                for line in String::from_utf8_lossy(&body).lines() {
                    let Some((k, v)) = line.split_once(':') else {
                        continue;
                    };
                    let v = Some(v.trim().to_owned());
                    match k.trim() {
                        "cookie" => fx.vars.cookie = v,
                        "query" => fx.vars.query_string = v,
                        "host" => fx.vars.host = v,
                        "user-agent" => fx.vars.user_agent = v,
                        "accept-language" => fx.vars.accept_language = v,
                        "referer" => fx.vars.referer = v,
                        other => panic!("{name}: unknown request field {other:?}"),
                    }
                }
            }
            Some("page") => fx.page = body,
            Some("fragment") => {
                let src = words
                    .next()
                    .unwrap_or_else(|| panic!("{name}: fragment without src"));
                let status = words
                    .find_map(|w| w.strip_prefix("status="))
                    .map_or(200, |s| {
                        s.parse()
                            .unwrap_or_else(|_| panic!("{name}: bad status {s}"))
                    });
                fx.fragments.insert(src.to_owned(), (status, body));
            }
            Some("expect") => {
                fx.expect = Some(body);
                has_expect = true;
            }
            Some("expect-error") => has_expect = true,
            Some("logs") => {
                fx.logs = String::from_utf8_lossy(&body)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            }
            Some("warnings") => {
                fx.warnings = Some(
                    String::from_utf8_lossy(&body)
                        .lines()
                        .map(str::to_owned)
                        .collect(),
                )
            }
            other => panic!("{name}: unknown section {other:?}"),
        }
    }
    assert!(has_expect, "{name}: no expect section");
    fx
}

// The fixtures run through the real request path: `serve::handle` with the
// loader and assembler, on the simulation's fakes. The page is served from
// `/page` on a scripted origin and every fragment from its `src`.

const CONFIG: &str = r#"{ "origin": "http://origin.test", "pages": [ { "path": "/page" } ] }"#;

fn origin_path(src: &str) -> String {
    match Url::parse(&format!("http://origin.test{src}")) {
        Ok(u) => u.path_and_query(),
        Err(_) => src.to_owned(),
    }
}

/// Serves the fixture's page; `None` when the page fails.
fn run_page(fx: &Fixture) -> Option<Vec<u8>> {
    run_page_logged(fx).0
}

/// Serves the fixture's page: the output (`None` when the page fails) and
/// the worker's log lines.
fn run_page_logged(fx: &Fixture) -> (Option<Vec<u8>>, Vec<String>) {
    let sim = Sim::new(7);
    let query = fx
        .vars
        .query_string
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    sim.origin.script(
        &origin_path(&format!("/page{query}")),
        Script::Respond {
            status: 200,
            headers: Default::default(),
            body: fx.page.clone(),
            latency_ms: 0,
        }
        .header("content-type", "text/html"),
    );
    for (src, (status, body)) in &fx.fragments {
        sim.origin.script(
            &origin_path(src),
            Script::Respond {
                status: *status,
                headers: Default::default(),
                body: body.clone(),
                latency_ms: 1,
            },
        );
    }
    let headers: Vec<(&str, &str)> = [
        ("cookie", &fx.vars.cookie),
        ("host", &fx.vars.host),
        ("user-agent", &fx.vars.user_agent),
        ("accept-language", &fx.vars.accept_language),
        ("referer", &fx.vars.referer),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value.as_deref()?)))
    .collect();
    let config = Rc::new(Config::from_json_str(CONFIG).expect("config"));
    let loader = testing::loader(
        sim.ports(),
        &Shared::new(),
        &config,
        &format!("/page{query}"),
        &headers,
    );
    let out = sim.block_on(async move {
        match testing::serve(loader).await {
            // Bytes are out once a stream starts: a failed include leaves
            // its slot empty, as in the Worker.
            Ok(page) if page.streamed => Some(page.body),
            Ok(page) => {
                if page.status.as_u16() >= 400 {
                    eprintln!("page status {}: {}", page.status, page.text());
                }
                (page.status.as_u16() < 400).then_some(page.body)
            }
            Err(_) => None,
        }
    });
    let logs = sim.log.lines().into_iter().map(|(_, l)| l).collect();
    (out, logs)
}

use fragcache_core::testing::compile_in_chunks as compile_chunked;
use fragcache_core::testing::random_cuts;

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks that chunked compiles of `input` give the same plan as `whole`.
fn check_chunking(label: &str, input: &[u8], vars: &RequestVars, whole: &Template) {
    let plan: Plan = whole.evaluate(vars);
    for seed in 1..=12u64 {
        let t = compile_chunked(input, &random_cuts(input.len(), seed));
        assert!(
            t.evaluate(vars) == plan && t.warnings() == whole.warnings(),
            "{label}: random chunks, seed {seed}"
        );
    }
    let ones: Vec<usize> = (1..input.len()).collect();
    assert!(
        compile_chunked(input, &ones).evaluate(vars) == plan,
        "{label}: one-byte chunks"
    );
    if input.len() <= 600 {
        for cut in 0..=input.len() {
            assert!(
                compile_chunked(input, &[cut]).evaluate(vars) == plan,
                "{label}: split at {cut}"
            );
        }
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esi")
}

/// The fixture files, sorted.
fn fixture_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fixture"))
        .collect();
    paths.sort();
    paths
}

/// Runs one fixture file: its output, logs and warnings, and chunked
/// compiles of its page and fragments.
fn run_fixture(path: &Path) {
    let fx = parse_fixture(path);
    let name = &fx.name;
    let t = Template::compile(&fx.page);
    let (got, logs) = run_page_logged(&fx);
    for want in &fx.logs {
        assert!(
            logs.iter().any(|l| l.contains(want.as_str())),
            "{name}: no log line contains {want:?}: {logs:#?}"
        );
    }
    match (&fx.expect, &got) {
        (Some(want), Some(got)) => assert!(
            want == got,
            "{name}: output differs\n--- want\n{}\n--- got\n{}",
            show(want),
            show(got)
        ),
        (None, None) => {}
        (None, Some(got)) => panic!("{name}: expected an error, got\n{}", show(got)),
        (Some(_), None) => panic!("{name}: page failed"),
    }
    if let Some(want) = &fx.warnings {
        let msgs: Vec<&str> = t.warnings().iter().map(|w| w.message.as_str()).collect();
        assert_eq!(msgs.len(), want.len(), "{name}: warnings {msgs:#?}");
        for (m, w) in msgs.iter().zip(want) {
            assert!(m.contains(w.as_str()), "{name}: warning {m:?} lacks {w:?}");
        }
    }
    if !t.has_esi() {
        assert_eq!(got.as_deref(), Some(&fx.page[..]), "{name}: has_esi false");
    }
    check_chunking(name, &fx.page, &fx.vars, &t);
    for (src, (_, body)) in &fx.fragments {
        let ft = Template::compile(body);
        check_chunking(&format!("{name} fragment {src}"), body, &fx.vars, &ft);
    }
}

/// A trial that fails when `test` panics (libtest-mimic reports the
/// panic message).
fn trial(name: impl Into<String>, test: impl FnOnce() + Send + 'static) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let paths = fixture_paths();
    let count = paths.len();
    let mut trials = vec![
        Trial::test("fixture_count", move || {
            if count >= 40 {
                Ok(())
            } else {
                Err(Failed::from(format!("only {count} fixtures found")))
            }
        }),
        trial("fixture_parser_rules", fixture_parser_rules),
        trial(
            "tags_straddling_stream_boundaries",
            tags_straddling_stream_boundaries,
        ),
    ];
    for path in paths {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        trials.push(trial(format!("fixture::{stem}"), move || {
            run_fixture(&path)
        }));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

fn fixture_parser_rules() {
    let dir = std::env::temp_dir().join(format!("esi-fixture-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("x.fixture");
    std::fs::write(
        &path,
        b"--- page\nline1\n\nline3\n--- fragment /a status=503\n--- fragment /b\nB\n--- expect\nE\n\n",
    )
    .expect("write");
    let fx = parse_fixture(&path);
    assert_eq!(fx.page, b"line1\n\nline3");
    assert_eq!(fx.fragments["/a"], (503, Vec::new()));
    assert_eq!(fx.fragments["/b"], (200, b"B".to_vec()));
    assert_eq!(fx.expect.as_deref(), Some(&b"E\n"[..]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tags straddling the chunk boundaries a streaming body typically has
/// (16 KiB, 64 KiB), with multi-byte UTF-8 right next to them.
fn tags_straddling_stream_boundaries() {
    let tag = "<esi:include src=\"/fragments/é\"/>".as_bytes();
    let vars_tag = b"<esi:vars>$(HTTP_COOKIE{user})</esi:vars>";
    let mut fx = Fixture {
        name: "generated".into(),
        ..Fixture::default()
    };
    fx.vars.cookie = Some("user=ann".into());
    fx.fragments
        .insert("/fragments/é".into(), (200, "[F€]".as_bytes().to_vec()));
    for boundary in [16_384usize, 65_536] {
        for offset_in_tag in [1, 5, 10, tag.len() - 1] {
            let mut page = Vec::new();
            let filler = "ü".as_bytes();
            while page.len() + filler.len() <= boundary - offset_in_tag {
                page.extend_from_slice(filler);
            }
            while page.len() < boundary - offset_in_tag {
                page.push(b'.');
            }
            let at = page.len();
            page.extend_from_slice(tag);
            page.extend_from_slice("€".as_bytes());
            page.extend_from_slice(vars_tag);
            page.extend_from_slice("ü-end".as_bytes());
            let mut want = page[..at].to_vec();
            want.extend_from_slice("[F€]€annü-end".as_bytes());

            let whole = Template::compile(&page);
            fx.page = page.clone();
            assert_eq!(run_page(&fx).as_deref(), Some(&want[..]));
            for chunk in [16_384, 65_536, 4096, 1000, 7] {
                let cuts: Vec<usize> = (chunk..page.len()).step_by(chunk).collect();
                let t = compile_chunked(&page, &cuts);
                assert!(
                    t.evaluate(&fx.vars) == whole.evaluate(&fx.vars),
                    "boundary {boundary}, offset {offset_in_tag}, chunk {chunk}"
                );
            }
            for seed in 1..=4u64 {
                let t = compile_chunked(&page, &random_cuts(page.len(), seed));
                assert!(
                    t.evaluate(&fx.vars) == whole.evaluate(&fx.vars),
                    "boundary {boundary}, offset {offset_in_tag}, seed {seed}"
                );
            }
        }
    }
}
