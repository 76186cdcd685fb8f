//! The coordinator object on the simulation: one origin fetch however many
//! isolates ask, answers from a newer copy without any fetch, one write to
//! the store, and a breaker shared by every key of an origin.

use std::rc::Rc;

use fragcache_core::cache::breaker::Breaker;
use fragcache_core::coord::{Answer, Gate, KeyObject, LoadRequest, LocalGate, Rules};
use fragcache_core::testing::{Script, Sim};

const RULES: Rules = Rules {
    soft_ttl: 10,
    hard_ttl: 300,
    negative_ttl: 5,
    honor_origin_headers: false,
    jitter: 0.0,
    shell: false,
};

fn request(path: &str, have: Option<u64>) -> LoadRequest {
    LoadRequest {
        key: format!("f0:http://origin.test{path}"),
        url: format!("http://origin.test{path}"),
        headers: vec![(
            "surrogate-capability".into(),
            "fragcache=\"ESI/1.0\"".into(),
        )],
        timeout_ms: 5_000,
        max_body_bytes: 1 << 20,
        have,
        rules: RULES,
    }
}

fn gate(sim: &Sim) -> Rc<dyn Gate> {
    Rc::new(LocalGate::new(Rc::new(Breaker::default()), sim.ports()))
}

#[test]
fn many_callers_one_fetch_one_write() {
    let sim = Sim::new(1);
    sim.origin.script("/f/a", Script::ok("A", 300));
    let object = KeyObject::new();
    let gate = gate(&sim);
    let slots: Vec<_> = (0..200)
        .map(|_| {
            let o = Rc::clone(&object);
            let (ports, gate) = (sim.ports(), Rc::clone(&gate));
            sim.spawn(async move { o.load(ports, gate, request("/f/a", None)).await })
        })
        .collect();
    sim.run();
    assert_eq!(sim.origin.count("/f/a"), 1);
    assert_eq!(sim.store.puts.get(), 1, "one write");
    let mut fetched = 0;
    for s in &slots {
        let reply = s.borrow_mut().take().unwrap();
        match &reply.answer {
            Answer::Entry { fetched: f, .. } => fetched += usize::from(*f),
            other => panic!("{other:?}"),
        }
        assert_eq!(&*reply.bytes, b"A");
    }
    assert_eq!(fetched, 200, "all shared the one fetch");
}

#[test]
fn a_newer_fresh_copy_answers_without_a_fetch() {
    let sim = Sim::new(2);
    sim.origin.script("/f/a", Script::ok("v{{serial}}", 10));
    let object = KeyObject::new();
    let gate = gate(&sim);
    let first = sim.block_on({
        let (o, p, g) = (Rc::clone(&object), sim.ports(), Rc::clone(&gate));
        async move { o.load(p, g, request("/f/a", None)).await }
    });
    let Answer::Entry { meta, .. } = first.answer.clone() else {
        panic!("{first:?}")
    };
    // Another isolate, whose copy is older, asks to refresh: answered from
    // the object's copy.
    let older = Some(meta.stored_at - 1);
    let again = sim.block_on({
        let (o, p, g) = (Rc::clone(&object), sim.ports(), Rc::clone(&gate));
        async move { o.load(p, g, request("/f/a", older)).await }
    });
    assert!(matches!(again.answer, Answer::Entry { fetched: false, .. }));
    assert_eq!(sim.origin.count("/f/a"), 1);
    // A caller holding this very copy, now stale, gets a refresh.
    sim.run_until(sim.now() + 11_000);
    let refreshed = sim.block_on({
        let (o, p, g) = (Rc::clone(&object), sim.ports(), Rc::clone(&gate));
        async move { o.load(p, g, request("/f/a", Some(meta.stored_at))).await }
    });
    assert!(matches!(
        refreshed.answer,
        Answer::Entry { fetched: true, .. }
    ));
    assert_eq!(&*refreshed.bytes, b"v2");
    assert_eq!(sim.origin.count("/f/a"), 2);
}

#[test]
fn a_fresh_object_starts_from_the_store() {
    let sim = Sim::new(3);
    sim.origin.script("/f/a", Script::ok("A", 10));
    let gate = gate(&sim);
    sim.block_on({
        let (p, g) = (sim.ports(), Rc::clone(&gate));
        async move { KeyObject::new().load(p, g, request("/f/a", None)).await }
    });
    // The object was evicted and comes back empty: KV still answers.
    let reply = sim.block_on({
        let (p, g) = (sim.ports(), Rc::clone(&gate));
        async move { KeyObject::new().load(p, g, request("/f/a", None)).await }
    });
    assert!(matches!(reply.answer, Answer::Entry { fetched: false, .. }));
    assert_eq!(sim.origin.count("/f/a"), 1);
}

#[test]
fn the_breaker_is_shared_by_every_key_of_an_origin() {
    let sim = Sim::new(4);
    let gate = gate(&sim);
    let keys: Vec<String> = (0..20).map(|i| format!("/f/k{i}")).collect();
    for k in &keys {
        sim.origin.script(k, Script::status(500, 20));
    }
    let objects: Vec<Rc<KeyObject>> = keys.iter().map(|_| KeyObject::new()).collect();
    // 20 keys, each asked every 50 ms for 10 s while the origin fails.
    let start = sim.now();
    let mut down = 0;
    for tick in 0..200u64 {
        for (k, o) in keys.iter().zip(&objects) {
            let (o, p, g) = (Rc::clone(o), sim.ports(), Rc::clone(&gate));
            let req = request(k, None);
            let slot = sim.spawn(async move { o.load(p, g, req).await });
            sim.run_until(start + tick * 50);
            let answered = slot.borrow_mut().take();
            if let Some(r) = answered {
                down += usize::from(matches!(r.answer, Answer::OriginDown { .. }));
            }
        }
        sim.run_until(start + (tick + 1) * 50);
    }
    sim.run();
    let attempts = sim.origin.requests().len();
    println!("10 s outage, 20 keys x 20/s: {attempts} origin requests, {down} answers denied by the breaker");
    assert!(down > 3000, "denied without reaching the origin: {down}");
    assert!(
        attempts <= 3 + 20 + 15,
        "at most the opening failures plus about one probe a second: {attempts}"
    );
}

#[test]
fn replies_round_trip_through_one_body() {
    use fragcache_core::cache::EntryMeta;
    use fragcache_core::coord::Reply;
    let mut meta = EntryMeta::new(1, 2, 3, 200, 4).with_headers(
        Some("text/html; charset=ütf-8"),
        None,
        None,
        None,
    );
    meta.header_bytes = 3;
    for answer in [
        Answer::Entry {
            meta,
            fetched: true,
        },
        Answer::Pass {
            status: 302,
            personal: true,
            header_bytes: 0,
        },
        Answer::Failed {
            status: Some(503),
            message: "origin answered 503 «down»".into(),
        },
        Answer::OriginDown {
            retry_after_ms: 700,
        },
    ] {
        let reply = Reply {
            answer,
            bytes: Rc::from(&b"\x00\x01body"[..]),
        };
        assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
    }
    assert!(Reply::decode(b"\x00\x00").is_err());
    assert!(Reply::decode(b"\x00\x00\x00\x09{}").is_err());
    assert!(
        Reply::decode(b"\x00\x00\x00\x02{}").is_err(),
        "not an answer"
    );
}
