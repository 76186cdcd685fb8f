//! Compiles arbitrary bytes as an ESI document, whole and fed to the
//! streaming compiler in two chunks: compiling must not panic, and the
//! chunked compile must give the same template.
//!
//! Input: two bytes choosing the split point, then the document.

#![no_main]

use fragcache_core::esi::{Compiler, RequestVars, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, doc) = match data {
        [a, b, doc @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), doc),
        _ => (0, data),
    };
    let split = split % (doc.len() + 1);
    let whole = Template::compile(doc);
    let mut compiler = Compiler::new();
    compiler.feed(&doc[..split]);
    compiler.feed(&doc[split..]);
    let chunked = compiler.finish();
    assert!(
        chunked == whole,
        "feeding {} + {} bytes changed the template",
        split,
        doc.len() - split
    );
    // Evaluating must not panic either, with and without request data.
    whole.evaluate(&RequestVars::default());
    whole.evaluate(&RequestVars {
        host: Some("shop.test".into()),
        cookie: Some("a=1; b=\"x y\"; c=<esi:include src=/x/>".into()),
        query_string: Some("q=%2F..%2Fadmin&x=1+2".into()),
        user_agent: Some("Mozilla/5.0 (Windows NT 10.0)".into()),
        accept_language: Some("en-GB,fr;q=0.5".into()),
        referer: Some("http://ref.test/".into()),
    });
});
