//! `flags:resolve` and `flags:apply`. Each resolve runs start to finish in
//! one synchronous stretch (resolve, record telemetry, write the response);
//! the only awaits are reading the body and, for sticky flags, reading KV
//! between the discovery pass and the real one. Nothing of a request is
//! kept in a global across those awaits.

use super::http::json_response;
use super::{runtime, sticky_kv, Call};
use crate::api::{self, ApiError};
use crate::exposure;
use crate::proto::wkt::Struct;
use crate::resolve::{self, sticky::Sticky};
use crate::state::embedded;
use crate::state::live::LiveState;
use crate::state::snapshot::Snapshot;
use crate::token;
use std::sync::Arc;

/// The state this isolate serves.
static STATE: LiveState = LiveState::new();

/// The serving snapshot, loading (and logging) the embedded state on first
/// use. A state that fails validation serves nothing: 503, never half.
pub fn snapshot() -> Result<Arc<Snapshot>, ApiError> {
    STATE
        .get_or_load(|| {
            let (ok, failed) = STATE.load_counts();
            let n = ok + failed + 1;
            let result = embedded::load();
            match &result {
                Ok(s) => ::worker::console_log!(
                    "edgeflag: state load #{n}: {} ({}, {} bytes, {} flags, {} segments, etag {})",
                    embedded::EMBEDDED_SOURCE,
                    s.format,
                    s.stats.bytes,
                    s.stats.flags,
                    s.stats.segments,
                    s.etag
                ),
                Err(e) => {
                    ::worker::console_error!("edgeflag: state load #{n}: {} rejected: {e}", embedded::EMBEDDED_SOURCE)
                }
            }
            result
        })
        .map_err(|_| ApiError::new(503, "UNAVAILABLE", "no valid flag state is loaded; see the worker logs"))
}

static EMPTY: std::sync::OnceLock<Struct> = std::sync::OnceLock::new();

/// Any failure, whatever its cause, counts as one RESOLVE_REASON_ERROR.
pub async fn resolve(body: Vec<u8>, call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    let started = runtime::now_ms();
    let result = resolve_inner(body, call, started).await;
    if result.is_err() {
        super::telemetry::failed_resolve(runtime::now_ms() - started);
    }
    result
}

async fn resolve_inner(body: Vec<u8>, call: &Call<'_>, started: f64) -> Result<::worker::Response, ApiError> {
    let snap = snapshot()?;
    let req = api::parse_resolve_request(&body)?;
    let apply = runtime::force_apply(call.env) || req.apply;
    let context = req.evaluation_context.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Struct::default));
    let request = resolve::Request { flags: &req.flags, context, client_secret: &req.client_secret };
    let sticky = runtime::sticky_bound(call.env);

    // Discovery pass: if no flag needs a sticky read, it is final.
    let mode = if sticky { Sticky::Discover } else { Sticky::Unsupported };
    let first = resolve::resolve(&snap, &request, mode, None)?;
    let known;
    let kv = if sticky && (first.needs_reads() || !first.writes.is_empty()) {
        call.env.kv("MATERIALIZATIONS_KV").ok()
    } else {
        None
    };
    let res = match (&kv, first.needs_reads()) {
        (Some(kv), true) => {
            let reads = first.reads.reads;
            let (set, failed) = sticky_kv::read(kv, &reads).await;
            // Counted even if the resolve below fails: the read did fail.
            super::telemetry::sticky_read_failures(failed);
            known = set;
            resolve::resolve(&snap, &request, Sticky::Known(&known), None).map_err(ApiError::from)?
        }
        _ => first,
    };

    // From here to the response: one synchronous window.
    let mut random = [0u8; 44];
    runtime::random_bytes(&mut random)?;
    let mut id_bytes = [0u8; 32];
    id_bytes.copy_from_slice(&random[..32]);
    let resolve_id = api::resolve_id_from(&id_bytes);
    let now = runtime::now_ms();
    let token = if apply {
        None
    } else {
        let keys = runtime::token_keys(call.env)?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&random[32..]);
        Some(token::for_resolution(&keys, &nonce, &res, &resolve_id, &snap.account_id))
    };
    let assigned = apply.then(|| {
        let flags = exposure::applied_flags_from_resolution(&res, runtime::timestamp(now));
        exposure::flag_assigned(&resolve_id, res.credential, req.sdk.clone(), flags)
    });
    super::telemetry::resolved(&snap, &res, context, assigned, now - started);
    let mut out = Vec::with_capacity(256 + 192 * res.flags.len());
    api::write_resolve_response(&mut out, &res, &resolve_id, token.as_deref(), None);
    let writes = res.writes;

    if let (Some(kv), false) = (kv, writes.is_empty()) {
        let ttl = runtime::sticky_ttl(call.env);
        call.ctx.wait_until(sticky_kv::write(kv, writes, ttl));
    }
    json_response(200, out)
}

pub async fn apply(body: Vec<u8>, call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    let req = api::parse_apply_request(&body)?;
    let snap = snapshot()?;
    let credential = snap
        .credential(&req.client_secret)
        .ok_or_else(|| ApiError::from(resolve::ResolveError::UnknownClientSecret))?;
    // SDKs that resolved with apply=true still send an apply with no token.
    if req.resolve_token.is_empty() {
        return json_response(200, b"{}".to_vec());
    }
    let keys = runtime::token_keys(call.env)?;
    let token = token::open(&keys, &credential.credential, &req.resolve_token).map_err(ApiError::from)?;
    let assigned = exposure::apply(&token, &req, credential, runtime::timestamp(runtime::now_ms()))?;
    super::telemetry::applied(assigned);
    json_response(200, b"{}".to_vec())
}
