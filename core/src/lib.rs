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
//! Where to look, in the order a request meets them:
//!
//! - [`config`]: the operator's `[vars.FRAGCACHE]` object → a validated
//!   [`config::Config`]; the parser is the schema, errors name the field.
//! - [`request`]: the parts of the client request the core reads.
//! - [`serve`]: one request end to end: route, shell, the page's headers
//!   (with [`headers`]), first bytes; every error reply is built here.
//! - [`esi`]: the streaming lexer (it reports to a sink), the compiler into
//!   a [`esi::Template`], and per-request evaluation into a [`esi::Plan`]
//!   that also records which request inputs it read.
//! - [`assemble`]: ordered, concurrent, streaming page assembly within a
//!   byte budget; includes, `alt`, `onerror`, `esi:try`, nesting.
//! - [`url`]: URL parsing, include resolution, the origin allow-list.
//! - [`loader`]: one fragment through the cache: isolate memory, KV,
//!   fresh/stale/cold, single-flight, the leader's fetch and write-back.
//! - [`cache`]: the pieces the loader is built from: entry metadata and
//!   freshness, `Cache-Control` policy, the storage verdict, cache keys,
//!   the flight map, back-off, the per-origin circuit breaker, the LRU and
//!   timed KV access.
//! - [`coord`]: coordination across isolates: the coordinator port and the
//!   logic the Durable Object runs.
//! - [`admin`]: the admin API under `/_fragcache/`: access and routing.
//! - [`purge`]: purging by path, prefix or tag, hard or soft, and the
//!   purge log isolates share.
//! - [`tags`]: cache tags from `Cache-Tag` / `Surrogate-Key`, how they are
//!   stored and indexed.
//! - [`headers`]: the page as an HTTP response: which origin headers pass,
//!   how `Vary` is merged, how a cached shell's headers are stored.
//! - [`ports`]: the traits the adapter implements (store, origin, clock,
//!   randomness, background work, wake-ups, log, coordinator).
//! - `testing` (feature `testing`, and in this crate's own tests):
//!   in-memory fakes and a deterministic executor for simulations; not
//!   compiled into the worker.
//!
//! The reasons the code relies on (workerd's request contexts, cache
//! semantics, privacy, limits, coordination) are in `docs/design.md`.

pub mod admin;
pub mod assemble;
pub mod cache;
pub mod config;
pub mod coord;
pub mod esi;
pub mod headers;
pub mod inspect;
pub mod loader;
pub mod ports;
pub mod purge;
pub mod record;
pub mod request;
pub mod serve;
pub mod tags;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod url;
pub mod warm;
pub mod write_through;
