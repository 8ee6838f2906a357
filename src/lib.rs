//! edgeflag: a Confidence-compatible feature-flag resolver for Cloudflare
//! Workers.
//!
//! Where a request goes:
//!
//! ```text
//! worker::fetch (worker/mod.rs)        routing, CORS, body limit, errors
//!   POST /v1/flags:resolve  -> worker::confidence::resolve
//!        api::parse_resolve_request     JSON -> ResolveFlagsRequest
//!        worker::flags::resolve_with    the one resolve path every protocol shares:
//!          flags::snapshot              the validated state serving this isolate, from
//!                                       worker::state_source (STATE_KV pointer + blob, else
//!                                       embedded; refreshed in wait_until; a cold isolate's
//!                                       requests share one load; state::source verifies)
//!          resolve::resolve             the pure core: targeting, bucketing, sticky
//!          (sticky flags: worker::sticky_kv reads KV in the layout of
//!           sticky_layout, then resolve again)
//!          the protocol's writer        here: token, api::write_resolve_response
//!          telemetry (worker::telemetry) record in the same synchronous window
//!   POST /v1/flags:apply    -> worker::confidence::apply (token::open, exposure::apply)
//!   POST /ofrep/v1/evaluate/flags/{key}, POST /ofrep/v1/evaluate/flags
//!                           -> worker::ofrep::{evaluate, bulk}
//!        ofrep::parse_key / parse_context, then worker::flags::resolve_with
//!        with ofrep::single / ofrep::bulk (+ ofrep::etag, 304) as the writer
//!   GET  /metrics           -> worker::metrics: METRICS_KV copy (?consistent=1: the
//!                              aggregator), telemetry::render_prometheus
//!   POST /v1/metrics:apply  -> worker::metrics -> the aggregator (METRICS_INGEST_TOKEN)
//!   GET  /v1/state:etag, /readyz, /healthz, POST /v1/telemetry:upload, OPTIONS: worker/mod.rs
//! worker::queue (worker/consumer.rs)   checkpoint metrics -> aggregator, then log delivery
//! MetricsAggregator (worker/metrics_do.rs)  Durable Object, the one writer of the
//!                              metrics: telemetry::apply_batch in one SQLite
//!                              transaction; alarm mirrors to METRICS_KV <= 1/s
//! worker::faults (crate::faults)       EDGEFLAG_FAULTS, tests only: faults injected at the
//!                              sticky KV, Queue and STATE_KV calls
//! ```
//!
//! Everything outside `worker` is synchronous, free of I/O and globals
//! (except the telemetry loggers, which are lock-free statics), and builds
//! and tests natively; `cli` is the native `edgeflag` tool.

// No panics by construction (lints in Cargo.toml); unit tests may panic, as
// a panic there is a test failure.
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)
)]

/// JSON requests in, JSON responses out, API errors.
pub mod api;
/// The `edgeflag` command-line tool.
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
/// Exposure events and apply: resolutions and tokens into FlagAssigned.
pub mod exposure;
/// `EDGEFLAG_FAULTS`: test-only fault injection at the platform calls.
pub mod faults;
/// What the fuzz targets run, shared with the corpus replay test.
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod fuzzing;
/// MurmurHash3 bucketing.
pub mod hash;
/// OFREP: request parsing, reason mapping, typed values, errors, ETags.
pub mod ofrep;
/// Generated wire types and their proto3 JSON mapping.
pub mod proto;
/// URL query strings (the worker parses no `Url`).
pub mod query;
/// The resolver core.
pub mod resolve;
/// State formats, validation, the immutable snapshot and the serving slot.
pub mod state;
/// The KV layout of sticky assignments, shared with the reference worker.
pub mod sticky_layout;
/// Attribute targeting and value coercion.
pub mod targeting;
/// Lock-free loggers, checkpoints, aggregation and metrics.
pub mod telemetry;
/// Sealed resolve tokens.
pub mod token;
/// The Cloudflare Worker glue: routes, KV, Queue, Durable Objects, clock.
#[cfg(target_arch = "wasm32")]
pub mod worker;
