//! edgeflag: a Confidence-compatible flag resolver for Cloudflare Workers.
pub mod proto;
