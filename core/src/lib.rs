//! # fragcache-core
//!
//! The runtime-free engine of fragcache. Nothing in this crate knows about
//! Cloudflare Workers, JavaScript or wasm: time, randomness, storage, the
//! origin and background work arrive through the traits in [`ports`], so
//! every behaviour (stampedes, TTL expiry, origin failures) can be simulated
//! deterministically in native tests.
//!
//! # Layout
//!
//! - [`esi`]: the streaming, chunk-safe ESI lexer and the compiler that turns
//!   a page into a [`esi::Template`] (literal byte ranges plus instructions),
//!   and the per-request evaluation of that template into a [`esi::Plan`]
//!   (variables substituted, conditions decided, includes listed).
//! - [`config`]: the operator's configuration (a JSON object from
//!   `wrangler.toml`) validated into typed routes and limits.
//! - [`url`]: URL parsing, include resolution and the origin allow-list.
//! - [`cache`]: the KV entry format, freshness classification, origin cache
//!   header parsing, back-off, XFetch and the in-isolate single-flight map.
//! - [`headers`]: the page as an HTTP response: which origin headers pass,
//!   how `Vary` is merged, how a cached shell's headers are stored.
//! - [`ports`]: the traits the adapter implements (store, origin, clock,
//!   randomness, background work).
//! - [`loader`]: loading one fragment through the cache (hit, stale refresh,
//!   cold single-flight, private bypass).
//! - [`assemble`]: ordered, concurrent, streaming page assembly.
//! - [`serve`]: one request end to end: route, shell, headers, first bytes.
//! - [`purge`]: purging stored entries when content changes.
//! - [`request`]: the parts of the client request the core reads.
//! - `testing` (feature `testing`, and in this crate's own tests):
//!   in-memory fakes and a deterministic executor for simulations; not
//!   compiled into the worker.

pub mod assemble;
pub mod cache;
pub mod config;
pub mod coord;
pub mod esi;
pub mod headers;
pub mod loader;
pub mod ports;
pub mod purge;
pub mod request;
pub mod serve;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod url;
