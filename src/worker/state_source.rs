//! The one place that knows where states come from. Order: the KV pointer
//! (`STATE_KV`, `state:current` → `state:blob:<etag>`) when one exists,
//! else the embedded state (unless the build has none, or `EMBEDDED_STATE`
//! is `off`).
//!
//! A request takes the serving snapshot once ([`snapshot`]) and uses it for
//! everything, across its awaits. Only an isolate with no state at all waits
//! for a load; otherwise, once the snapshot's source was last checked more
//! than `STATE_REFRESH_SECONDS` (default 30) ago, one request claims a
//! refresh and runs it in `wait_until`, off the response. Concurrent first
//! requests of a cold isolate share one load ([`claim_cold_load`]): one
//! pointer read, one blob read and decode, however many arrive. A refresh reads
//! the pointer, and only if it names another state reads, verifies, decodes
//! and validates the blob, then swaps it in whole. Every attempt is counted
//! (`edgeflag_state_loads_total`) and logged as one JSON line; a failed one
//! keeps the serving state and is retried by the next refresh (no backoff:
//! the interval is the retry).

use super::{faults, runtime, sticky_kv, telemetry};
use crate::api::ApiError;
use crate::faults::Site;
use crate::state::embedded;
use crate::state::live::LiveState;
use crate::state::snapshot::{LoadError, Snapshot};
use crate::state::source::{self, LoadResult, LoadSource, Pointer, Rejected};
use ::worker::{Context, Env};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The state this isolate serves.
static STATE: LiveState = LiveState::new();
/// When the serving state's source last confirmed it (epoch ms; 0 never).
static CONFIRMED_MS: AtomicU64 = AtomicU64::new(0);
/// When a refresh was last started (epoch ms).
static CHECKED_MS: AtomicU64 = AtomicU64::new(0);
/// 0 when no refresh runs, else its start time + 1.
static REFRESH_CLAIM: AtomicU64 = AtomicU64::new(0);

/// 0 when no cold load runs, else its start time + 1. The load runs in the
/// `wait_until` of the request that started it; every request waiting for
/// it (that one included) checks on its own timer, so none is woken from
/// another request's I/O (workerd ties I/O to the request that made it).
static COLD_CLAIM: AtomicU64 = AtomicU64::new(0);

pub const KV_BINDING: &str = "STATE_KV";
const DEFAULT_REFRESH_SECONDS: u64 = 30;
/// A refresh that has not finished by then (its `wait_until` was cut
/// short) no longer blocks the next one.
const CLAIM_TIMEOUT_MS: u64 = 30_000;
/// Per KV read of a load, retries included.
const READ_BUDGET_MS: f64 = 5_000.0;
/// The longest a request waits for a cold load: its two KV reads' budgets
/// plus decoding. A load still running by then no longer blocks a fresh one.
const COLD_WAIT_MS: u64 = 15_000;
/// How often a waiting request checks whether the cold load finished.
const COLD_POLL_MS: u64 = 5;

/// The serving snapshot, if any (no load, no refresh).
pub fn current() -> Option<Arc<Snapshot>> {
    STATE.current()
}

/// When the serving state was last confirmed by its source (epoch ms).
pub fn confirmed_ms() -> u64 {
    CONFIRMED_MS.load(Ordering::Relaxed)
}

/// The reason the last load failed, for a 503's message.
pub fn last_error() -> Option<String> {
    STATE.last_error().map(|e| e.to_string())
}

/// The snapshot this request uses for everything. With none yet, waits
/// for a load (503 if none succeeds); otherwise schedules a refresh when
/// one is due and returns at once.
pub async fn snapshot(env: &Env, ctx: &Context) -> Result<Arc<Snapshot>, ApiError> {
    if let Some(s) = STATE.current() {
        schedule_refresh(env, ctx);
        return Ok(s);
    }
    if let Some(started) = claim_cold_load() {
        let env = env.clone();
        // In wait_until: the load finishes even if this request's client goes.
        ctx.wait_until(async move {
            load(&env).await;
            let _ = COLD_CLAIM.compare_exchange(started, 0, Ordering::AcqRel, Ordering::Acquire);
        });
    }
    wait_for_cold_load().await;
    STATE.current().ok_or_else(|| {
        let why = last_error().unwrap_or_else(|| "no state has been pushed".to_string());
        ApiError::new(503, "UNAVAILABLE", format!("no valid flag state is loaded yet: {why}"))
    })
}

/// For work outside a request (the queue consumer): the serving state,
/// loaded or refreshed inline when missing or due (nothing waits on it).
pub async fn for_background(env: &Env) -> Option<Arc<Snapshot>> {
    let now = runtime::now_ms() as u64;
    if STATE.current().is_none() {
        if let Some(started) = claim_cold_load() {
            load(env).await;
            let _ = COLD_CLAIM.compare_exchange(started, 0, Ordering::AcqRel, Ordering::Acquire);
        } else {
            wait_for_cold_load().await;
        }
    } else if refresh_due(env, now) && try_claim(now) {
        load(env).await;
        REFRESH_CLAIM.store(0, Ordering::Release);
    }
    STATE.current()
}

/// Claims the cold load (returns its claim) unless one is running and
/// younger than [`COLD_WAIT_MS`]. One that finished without a state left
/// no claim: the next request retries it.
fn claim_cold_load() -> Option<u64> {
    let now = runtime::now_ms() as u64;
    let claim = COLD_CLAIM.load(Ordering::Acquire);
    if claim != 0 && now.saturating_sub(claim.saturating_sub(1)) < COLD_WAIT_MS {
        return None;
    }
    let mine = now.saturating_add(1);
    COLD_CLAIM.compare_exchange(claim, mine, Ordering::AcqRel, Ordering::Acquire).ok()?;
    CHECKED_MS.store(now, Ordering::Relaxed);
    Some(mine)
}

/// Waits until a state serves or no cold load runs, at most [`COLD_WAIT_MS`].
async fn wait_for_cold_load() {
    for _ in 0..COLD_WAIT_MS / COLD_POLL_MS {
        if STATE.current().is_some() || COLD_CLAIM.load(Ordering::Acquire) == 0 {
            return;
        }
        ::worker::Delay::from(std::time::Duration::from_millis(COLD_POLL_MS)).await;
    }
}

/// `STATE_REFRESH_SECONDS`, in ms.
fn refresh_interval_ms(env: &Env) -> u64 {
    runtime::config(env, "STATE_REFRESH_SECONDS")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_REFRESH_SECONDS)
        .saturating_mul(1000)
}

fn refresh_due(env: &Env, now: u64) -> bool {
    now.saturating_sub(CHECKED_MS.load(Ordering::Relaxed)) >= refresh_interval_ms(env)
}

/// One refresh at a time per isolate, so refreshes install in order.
fn try_claim(now: u64) -> bool {
    let claim = REFRESH_CLAIM.load(Ordering::Acquire);
    if claim != 0 && now.saturating_sub(claim.saturating_sub(1)) < CLAIM_TIMEOUT_MS {
        return false;
    }
    if REFRESH_CLAIM.compare_exchange(claim, now.saturating_add(1), Ordering::AcqRel, Ordering::Acquire).is_err() {
        return false;
    }
    CHECKED_MS.store(now, Ordering::Relaxed);
    true
}

fn schedule_refresh(env: &Env, ctx: &Context) {
    let now = runtime::now_ms() as u64;
    if !refresh_due(env, now) || !try_claim(now) {
        return;
    }
    let env = env.clone();
    ctx.wait_until(async move {
        load(&env).await;
        REFRESH_CLAIM.store(0, Ordering::Release);
    });
}

/// What one attempt found.
struct Attempt {
    source: LoadSource,
    etag: Option<String>,
    outcome: Result<Option<Snapshot>, Rejected>,
}

/// One load attempt against the sources in order; installs what it finds.
async fn load(env: &Env) {
    let started = runtime::now_ms();
    let serving = STATE.current();
    let kv_attempt = match env.kv(KV_BINDING) {
        Ok(kv) => Some(from_kv(&kv, serving.as_deref()).await),
        Err(_) => None,
    };
    let now = runtime::now_ms() as u64;
    let mut fallback = serving.is_none();
    if let Some(a) = kv_attempt {
        let result = finish(a, started, now).await;
        // No pointer: the embedded state is what the source says serves.
        let confirms_embedded = result == Some(LoadResult::NoPointer)
            && serving.as_ref().is_some_and(|s| s.source == LoadSource::Embedded.as_str());
        if confirms_embedded {
            CONFIRMED_MS.store(now, Ordering::Relaxed);
        }
        fallback = fallback && STATE.current().is_none();
    } else if serving.is_some() {
        // Nothing to refresh from: the embedded state is the only one.
        CONFIRMED_MS.store(now, Ordering::Relaxed);
    }
    if fallback {
        let started = runtime::now_ms();
        let a = from_embedded(env);
        finish(a, started, now).await;
    }
}

/// Counts, logs and (on success) installs an attempt; returns its result.
async fn finish(a: Attempt, started: f64, now: u64) -> Option<LoadResult> {
    let (result, reason, stats) = match a.outcome {
        Ok(Some(mut snap)) => {
            snap.source = a.source.as_str().to_string();
            snap.loaded_at_ms = now;
            let stats = Some((snap.stats.flags, snap.stats.segments, snap.stats.bytes));
            // A cold load (one at a time, but one outlived by COLD_WAIT_MS
            // may still finish) never replaces a state; a refresh runs
            // alone, so it always replaces.
            if STATE.current().is_none() {
                STATE.install_first(snap);
            } else {
                STATE.install(snap);
            }
            CONFIRMED_MS.store(now, Ordering::Relaxed);
            (LoadResult::Ok, String::new(), stats)
        }
        Ok(None) => {
            if a.source != LoadSource::Kv || STATE.current().is_some() {
                CONFIRMED_MS.store(now, Ordering::Relaxed);
            }
            (LoadResult::Unchanged, String::new(), None)
        }
        Err(r) => {
            if !r.result.confirms() {
                STATE.record_failure(LoadError { problems: vec![r.reason.clone()] });
            }
            (r.result, r.reason, None)
        }
    };
    telemetry::state_load(a.source, result);
    if stats.is_some() {
        // The Workers clock stands still during synchronous work; a timer
        // turn lets it catch up, so duration_ms includes decoding and
        // validation, not only the KV reads.
        ::worker::Delay::from(std::time::Duration::from_millis(0)).await;
    }
    let (flags, segments, bytes) = stats.unwrap_or_default();
    let line = serde_json::json!({
        "event": "state_load",
        "source": a.source.as_str(),
        "result": result.as_str(),
        "etag": a.etag,
        "reason": reason,
        "flags": flags,
        "segments": segments,
        "bytes": bytes,
        "duration_ms": (runtime::now_ms() - started).max(0.0).round() as u64,
    });
    if result.confirms() {
        ::worker::console_log!("{line}");
    } else {
        ::worker::console_error!("{line}");
    }
    Some(result)
}

async fn from_kv(kv: &::worker::kv::KvStore, serving: Option<&Snapshot>) -> Attempt {
    let attempt = |etag: Option<String>, outcome| Attempt { source: LoadSource::Kv, etag, outcome };
    let deadline = runtime::now_ms() + READ_BUDGET_MS;
    let pointer = match sticky_kv::bounded("pointer read", deadline, || async {
        faults::before_kv(Site::StatePointer).await?;
        kv.get(source::CURRENT_KEY).bytes().await
    })
    .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return attempt(None, Err(Rejected::new(LoadResult::NoPointer, "no state:current in STATE_KV")));
        }
        Err(e) => return attempt(None, Err(Rejected::new(LoadResult::FetchFailed, e))),
    };
    let pointer = match Pointer::parse(&pointer) {
        Ok(p) => p,
        Err(e) => return attempt(None, Err(Rejected::new(LoadResult::Invalid, e))),
    };
    let etag = Some(pointer.etag.clone());
    if serving.is_some_and(|s| s.etag == pointer.etag) {
        return attempt(etag, Ok(None));
    }
    let key = source::blob_key(&pointer.etag);
    let deadline = runtime::now_ms() + READ_BUDGET_MS;
    let blob = match sticky_kv::bounded("blob read", deadline, || async {
        faults::before_kv(Site::StateBlob).await?;
        kv.get(&key).bytes().await
    })
    .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let why = format!("the pointer names {key}, which STATE_KV does not have (yet)");
            return attempt(etag, Err(Rejected::new(LoadResult::MissingBlob, why)));
        }
        Err(e) => return attempt(etag, Err(Rejected::new(LoadResult::FetchFailed, e))),
    };
    attempt(etag, source::load_blob(&pointer, &blob).map(Some))
}

fn from_embedded(env: &Env) -> Attempt {
    let off = runtime::config(env, "EMBEDDED_STATE").is_some_and(|v| v.trim().eq_ignore_ascii_case("off"));
    let outcome = if !embedded::EMBEDDED || off {
        let why = if off { "EMBEDDED_STATE=off" } else { "this build embeds no state (EDGEFLAG_STATE=none)" };
        Err(Rejected::new(LoadResult::NoState, format!("{why}; waiting for a state in STATE_KV")))
    } else {
        embedded::load().map(Some).map_err(|e| Rejected::new(LoadResult::Invalid, e.to_string()))
    };
    Attempt {
        source: LoadSource::Embedded,
        etag: embedded::EMBEDDED.then(|| embedded::EMBEDDED_ETAG.to_string()),
        outcome,
    }
}

/// The Confidence CDN source, one cron tick: with `CONFIDENCE_CLIENT_SECRET`
/// set, fetches `{STATE_CDN_BASE}/{sha256hex(secret)}` (`.enc`, AES-256-GCM
/// with `STATE_ENCRYPTION_KEY`) with `If-None-Match` of the last CDN state's
/// ETag. 304 writes nothing; 200 is decrypted and validated completely, then
/// written as blob + pointer, which every isolate's refresh picks up. Any
/// failure writes nothing and is counted and logged; the next tick is the
/// retry.
pub async fn cdn_tick(env: &Env) {
    let Some(secret) = runtime::config(env, "CONFIDENCE_CLIENT_SECRET").filter(|s| !s.trim().is_empty()) else {
        return;
    };
    let started = runtime::now_ms();
    let attempt = cdn_attempt(env, &secret).await;
    finish_cdn(attempt, started);
    telemetry::flush_now(env).await;
}

fn finish_cdn(a: Attempt, started: f64) {
    let (result, reason) = match a.outcome {
        Ok(Some(_)) => (LoadResult::Ok, String::new()),
        Ok(None) => (LoadResult::Unchanged, String::new()),
        Err(r) => (r.result, r.reason),
    };
    telemetry::state_load(LoadSource::Cdn, result);
    let line = serde_json::json!({
        "event": "state_load",
        "source": LoadSource::Cdn.as_str(),
        "result": result.as_str(),
        "etag": a.etag,
        "reason": reason,
        "duration_ms": (runtime::now_ms() - started).max(0.0).round() as u64,
    });
    if result.confirms() {
        ::worker::console_log!("{line}");
    } else {
        ::worker::console_error!("{line}");
    }
}

async fn cdn_attempt(env: &Env, secret: &str) -> Attempt {
    let attempt = |etag: Option<String>, outcome| Attempt { source: LoadSource::Cdn, etag, outcome };
    let fail = |result, why: String| attempt(None, Err(Rejected::new(result, why)));
    let Ok(kv) = env.kv(KV_BINDING) else {
        return fail(LoadResult::WriteFailed, "the CDN source needs the STATE_KV binding".to_string());
    };
    let key = runtime::config(env, "STATE_ENCRYPTION_KEY").filter(|k| !k.trim().is_empty());
    let base = runtime::config(env, "STATE_CDN_BASE").unwrap_or_else(|| source::DEFAULT_CDN_BASE.to_string());
    let url = source::cdn_url(&base, secret, key.is_some());
    let deadline = runtime::now_ms() + READ_BUDGET_MS;
    let previous = sticky_kv::bounded("pointer read", deadline, || kv.get(source::CURRENT_KEY).bytes())
        .await
        .ok()
        .flatten()
        .and_then(|b| Pointer::parse(&b).ok());
    let headers = ::worker::Headers::new();
    if let Some(etag) = previous.as_ref().and_then(|p| p.cdn_etag.as_deref()) {
        let _ = headers.set("If-None-Match", &format!("\"{etag}\""));
    }
    let mut init = ::worker::RequestInit::new();
    init.with_headers(headers);
    let request = match ::worker::Request::new_with_init(&url, &init) {
        Ok(r) => r,
        Err(e) => return fail(LoadResult::FetchFailed, format!("CDN request for {base}: {e}")),
    };
    let mut resp = match ::worker::Fetch::Request(request).send().await {
        Ok(r) => r,
        Err(e) => return fail(LoadResult::FetchFailed, format!("CDN fetch failed: {e}")),
    };
    match resp.status_code() {
        304 => return attempt(previous.map(|p| p.etag), Ok(None)),
        200 => {}
        s => return fail(LoadResult::FetchFailed, format!("CDN answered HTTP {s}")),
    }
    let cdn_etag = resp.headers().get("ETag").ok().flatten();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return fail(LoadResult::FetchFailed, format!("CDN body: {e}")),
    };
    let plain = match key {
        Some(k) => match source::decrypt_cdn(&k, &body) {
            Ok(p) => p,
            Err(r) => return attempt(None, Err(r)),
        },
        None => body,
    };
    let now = rfc3339_now();
    let (snap, pointer) = match source::prepare_cdn(&plain, cdn_etag.as_deref(), &now) {
        Ok(v) => v,
        Err(r) => return attempt(None, Err(r)),
    };
    let etag = Some(pointer.etag.clone());
    // Blob first, then the pointer: a reader never finds a pointer whose
    // blob was not written (KV may still show it late elsewhere).
    let writes = async {
        kv.put_bytes(&source::blob_key(&pointer.etag), &plain)
            .map_err(|e| e.to_string())?
            .execute()
            .await
            .map_err(|e| e.to_string())?;
        kv.put(source::CURRENT_KEY, pointer.to_json())
            .map_err(|e| e.to_string())?
            .execute()
            .await
            .map_err(|e| e.to_string())
    };
    match writes.await {
        Ok(()) => attempt(etag, Ok(Some(snap))),
        Err(e) => attempt(etag, Err(Rejected::new(LoadResult::WriteFailed, format!("writing STATE_KV: {e}")))),
    }
}

fn rfc3339_now() -> String {
    chrono::DateTime::from_timestamp_millis(runtime::now_ms() as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
