//! edgeflag: a Confidence-compatible flag resolver for Cloudflare Workers.
pub mod api;
pub mod exposure;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod hash;
pub mod proto;
pub mod resolve;
pub mod state;
pub mod targeting;
pub mod telemetry;
pub mod token;
#[cfg(target_arch = "wasm32")]
pub mod worker;
