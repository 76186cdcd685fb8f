//! Criterion benchmarks of the hot paths: compiling a 20 KB shell (against
//! a `memmem` scan of it, the floor for any ESI scanner), evaluating
//! it for a request, and serving a warm page of 10 cached fragments end to
//! end through the real loader and assembler (on the in-memory fakes).
//!
//! Run with `cargo bench -p fragcache-core`.

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use fragcache_core::config::Config;
use fragcache_core::esi::{RequestVars, Segment, Template};
use fragcache_core::loader::{Loader, Shared};
use fragcache_core::request::ClientRequest;
use fragcache_core::testing::{Script, Sim};
use fragcache_core::url::Url;

/// A realistic 20 KB shell: mostly markup, 10 includes, 5 variables and 2
/// choose blocks.
fn shell() -> Vec<u8> {
    let mut s = String::from("<!doctype html><html><head><title>Shop</title></head><body>\n");
    let filler = "<div class=\"card\"><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p></div>\n";
    for i in 0..10 {
        s.push_str(&format!(
            "<section id=\"s{i}\"><esi:include src=\"/f/{i}\"/></section>\n"
        ));
        for _ in 0..20 {
            s.push_str(filler);
        }
        if i == 3 || i == 7 {
            s.push_str(
                "<esi:choose><esi:when test=\"$(HTTP_COOKIE{tier}) == 'gold'\">gold</esi:when>\
                 <esi:when test=\"$(QUERY_STRING{x}) > 3 &amp; $(HTTP_HOST) != 'a'\">x</esi:when>\
                 <esi:otherwise>plain</esi:otherwise></esi:choose>\n",
            );
        }
        if i % 2 == 0 {
            s.push_str("<esi:vars><p>Hi $(HTTP_COOKIE{name}|'guest')</p></esi:vars>\n");
        }
    }
    s.push_str("</body></html>\n");
    s.into_bytes()
}

fn vars() -> RequestVars {
    RequestVars {
        host: Some("shop.test".into()),
        cookie: Some("name=alice; tier=gold".into()),
        query_string: Some("x=5".into()),
        ..RequestVars::default()
    }
}

fn bench_compile(c: &mut Criterion) {
    let shell = shell();
    let mut g = c.benchmark_group("esi");
    g.throughput(Throughput::Bytes(shell.len() as u64));
    // As the isolate's template memo compiles a cached body: the template
    // shares the body's bytes (`Rc<[u8]>`) rather than copying them.
    let shared: Rc<[u8]> = Rc::from(&shell[..]);
    g.bench_function("compile 20KB shell", |b| {
        b.iter(|| Template::compile_shared(black_box(Rc::clone(&shared))))
    });
    // From a slice, which costs a copy of the 20 KB into the template.
    g.bench_function("compile 20KB shell, copying", |b| {
        b.iter(|| Template::compile(black_box(&shell)))
    });
    // The floor for compile: one SIMD substring scan for `<esi:` over the
    // same bytes, with the searcher built once.
    let finder = memchr::memmem::Finder::new(b"<esi:");
    g.bench_function("memmem scan 20KB shell", |b| {
        b.iter(|| finder.find_iter(black_box(&shell[..])).count())
    });
    let template = Template::compile(&shell);
    let v = vars();
    g.bench_function("evaluate 20KB shell", |b| {
        b.iter(|| template.evaluate(black_box(&v)))
    });
    // Evaluate and stitch: the per-request work on a hit, with the ten
    // fragment bodies already in memory (no loader, no I/O).
    let bodies: std::collections::HashMap<String, Vec<u8>> = (0..10)
        .map(|i| (format!("/f/{i}"), "<li>item</li>".repeat(40).into_bytes()))
        .collect();
    g.bench_function("evaluate+stitch 20KB shell", |b| {
        b.iter(|| {
            let plan = template.evaluate(black_box(&v));
            let mut out = Vec::with_capacity(template.source().len() + 6_000);
            stitch(&template, &plan.segments, &bodies, &mut out);
            out
        })
    });
    g.finish();
}

fn stitch(
    template: &Template,
    segments: &[Segment],
    bodies: &std::collections::HashMap<String, Vec<u8>>,
    out: &mut Vec<u8>,
) {
    for seg in segments {
        match seg {
            Segment::Literal(r) => out.extend_from_slice(&template.source()[r.clone()]),
            Segment::Text(t) => out.extend_from_slice(t),
            Segment::Include(inc) => {
                if let Some(b) = bodies.get(inc.src.as_str()) {
                    out.extend_from_slice(b);
                }
            }
            Segment::Try { attempt, .. } => stitch(template, attempt, bodies, out),
        }
    }
}

fn bench_warm_page(c: &mut Criterion) {
    let sim = Sim::new(1);
    let config = Rc::new(
        Config::from_json_str(
            r#"{ "origin": "http://origin.test",
                 "pages": [ { "path": "/", "soft_ttl": 600, "hard_ttl": 3600 } ],
                 "fragments": [ { "path": "/f/*", "soft_ttl": 600, "hard_ttl": 3600, "xfetch_beta": 0 } ] }"#,
        )
        .expect("valid"),
    );
    sim.origin.script(
        "/",
        Script::ok(&String::from_utf8(shell()).expect("utf-8"), 0),
    );
    for i in 0..10 {
        sim.origin.script(
            &format!("/f/{i}"),
            Script::ok(&"<li>item</li>".repeat(40), 0),
        );
    }
    let shared = Shared::new();
    let serve = || {
        let req = ClientRequest::new(Url::parse("http://shop.test/").expect("url"))
            .with_header("cookie", "name=alice; tier=gold");
        let loader = Loader::new(
            sim.ports(),
            Rc::clone(&shared),
            Rc::clone(&config),
            Rc::new(req),
        );
        sim.block_on(async move {
            fragcache_core::testing::serve(loader)
                .await
                .map_or(0, |page| page.body.len())
        })
    };
    // Warm the cache (shell and fragments), then measure hits only.
    serve();
    let size = serve();
    assert!(size > 20_000, "warm page assembled ({size} bytes)");
    c.bench_function("warm page, 10 cached fragments", |b| b.iter(serve));
}

criterion_group!(benches, bench_compile, bench_warm_page);
criterion_main!(benches);
