//! The serving snapshot of a request ([`snapshot`], from `state_source`) and
//! the one resolve path every protocol shares ([`resolve_with`]). Protocol
//! modules (`confidence`, `ofrep`) only parse their request and write
//! their response. Each resolve runs in one synchronous stretch (resolve,
//! write the response, record telemetry); the only awaits before it are
//! the caller's body read and, for sticky flags, the KV reads between the
//! discovery pass and the real one. Nothing of a request is kept in a
//! global across those awaits.

use super::{runtime, sticky_kv, Call};
use crate::api::{self, ApiError};
use crate::exposure;
use crate::proto::resolver::Sdk;
use crate::proto::wkt::Struct;
use crate::resolve::{self, sticky::Sticky, Resolution};
use crate::state::snapshot::Snapshot;
use std::sync::Arc;

/// The snapshot this request uses for everything (see `state_source`).
pub async fn snapshot(call: &Call<'_>) -> Result<Arc<Snapshot>, ApiError> {
    super::state_source::snapshot(call.env, call.ctx).await
}

static EMPTY: std::sync::OnceLock<Struct> = std::sync::OnceLock::new();

/// An empty evaluation context.
pub fn empty_context() -> &'static Struct {
    EMPTY.get_or_init(Struct::default)
}

/// What a protocol asks the shared resolve path for.
pub struct Ask<'a> {
    /// Empty means every flag the client may see.
    pub flags: &'a [String],
    pub context: &'a Struct,
    pub client_secret: &'a str,
    /// Reported in exposure events.
    pub sdk: Option<Sdk>,
}

/// What the protocol's writer gets, inside the resolve's synchronous window.
pub struct Resolved<'a, 's, 'r> {
    pub snap: &'a Arc<Snapshot>,
    pub res: &'a Resolution<'s, 'r>,
    pub resolve_id: &'a str,
    /// Fresh random bytes for a token nonce.
    pub nonce: [u8; 12],
}

/// The writer's answer: the response, and whether the flags it returns are
/// being used now (recorded as exposures) or only resolved.
pub struct Written<R> {
    pub response: R,
    pub exposed: bool,
}

/// The one resolve path every protocol shares: takes the serving snapshot,
/// resolves (with the sticky KV passes), hands the resolution to `write`
/// and records telemetry for exactly what was written, with no await
/// between resolving, writing and recording. Any failure, whatever its
/// cause, counts as one RESOLVE_REASON_ERROR.
pub async fn resolve_with<R>(
    call: &Call<'_>,
    ask: Ask<'_>,
    write: impl FnOnce(&Resolved<'_, '_, '_>) -> Result<Written<R>, ApiError>,
) -> Result<R, ApiError> {
    let started = runtime::now_ms();
    let result = resolve_inner(call, ask, started, write).await;
    if result.is_err() {
        super::telemetry::failed_resolve(runtime::now_ms() - started);
    }
    result
}

async fn resolve_inner<R>(
    call: &Call<'_>,
    ask: Ask<'_>,
    started: f64,
    write: impl FnOnce(&Resolved<'_, '_, '_>) -> Result<Written<R>, ApiError>,
) -> Result<R, ApiError> {
    let snap = snapshot(call).await?;
    let request = resolve::Request { flags: ask.flags, context: ask.context, client_secret: ask.client_secret };
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
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&random[32..]);
    let written = write(&Resolved { snap: &snap, res: &res, resolve_id: &resolve_id, nonce })?;
    let now = runtime::now_ms();
    // An exposure of no flag says nothing: no event.
    let applied = if written.exposed {
        exposure::applied_flags_from_resolution(&res, runtime::timestamp(now))
    } else {
        Vec::new()
    };
    let assigned =
        (!applied.is_empty()).then(|| exposure::flag_assigned(&resolve_id, res.credential, ask.sdk, applied));
    super::telemetry::resolved(&snap, &res, ask.context, assigned, now - started);
    let writes = res.writes;

    if let (Some(kv), false) = (kv, writes.is_empty()) {
        let ttl = runtime::sticky_ttl(call.env);
        call.ctx.wait_until(sticky_kv::write(kv, writes, ttl));
    }
    Ok(written.response)
}

/// Marks a response with the etag of the snapshot that computed it.
pub fn set_state_etag(resp: &::worker::Response, etag: &str) -> Result<(), ApiError> {
    super::http::set(resp.headers(), STATE_ETAG_HEADER, etag)
}

/// Carried by every response computed from a state.
pub const STATE_ETAG_HEADER: &str = "x-edgeflag-state-etag";
