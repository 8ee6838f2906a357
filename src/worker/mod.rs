//! The Cloudflare Worker entry point: routing, CORS and bounded body
//! reading around the resolver. Kept thin on purpose; the work happens in
//! the `handle_*` functions, which get the raw body plus a [`Call`] with the
//! bindings, and return a response or an [`ApiError`].
//!
//! | method + path                | handler                  |
//! |------------------------------|--------------------------|
//! | `POST /v1/flags:resolve`     | [`handle_resolve`]       |
//! | `POST /v1/flags:apply`       | [`handle_apply`]         |
//! | `POST /v1/telemetry:upload`  | [`handle_telemetry`]     |
//! | `GET  /v1/state:etag`        | [`handle_state_etag`]    |
//! | `GET  /readyz`               | [`handle_readyz`]        |
//! | `GET  /healthz`              | [`handle_healthz`]       |
//! | `GET  /metrics`              | [`handle_metrics`]       |
//! | `POST /v1/metrics:apply`     | [`handle_metrics_apply`] |
//! | `POST /ofrep/v1/evaluate/flags/{key}` | [`handle_ofrep_evaluate`] |
//! | `POST /ofrep/v1/evaluate/flags`       | [`handle_ofrep_bulk`]     |
//! | `OPTIONS` any path           | CORS preflight, 204      |
//!
//! Any other path is a 404, a known path with another method a 405 with
//! `Allow`. Under `/ofrep/`, errors are written in OFREP's shape. Every response, errors and preflights included, carries the
//! CORS headers (see [`http::Cors`]). Bodies over [`MAX_BODY_BYTES`] are a
//! 413 before the handler runs.

mod confidence;
mod consumer;
mod faults;
mod flags;
pub mod http;
mod metrics;
mod metrics_do;
mod ofrep;
mod runtime;
mod state_source;
mod sticky_kv;
mod telemetry;

use ::worker::{event, Context, Env, Headers, MessageBatch, Request, Response};

use http::{json_response, ApiError, Cors, MAX_BODY_BYTES};

/// What a handler gets besides the request body.
pub struct Call<'a> {
    /// Vars, secrets and bindings (`METRICS_KV`, `MATERIALIZATIONS_KV`,
    /// `FLAG_LOGS_QUEUE`, ...), as declared in `wrangler.toml`.
    pub env: &'a Env,
    /// For `wait_until` work that must not delay the response.
    pub ctx: &'a Context,
    /// The request headers.
    pub headers: &'a Headers,
}

/// `POST /v1/flags:resolve`.
pub async fn handle_resolve(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    confidence::resolve(req_body, call).await
}

/// `POST /v1/flags:apply`.
pub async fn handle_apply(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    confidence::apply(req_body, call).await
}

/// `POST /ofrep/v1/evaluate/flags/{key}`: one flag, `{key}` URL-encoded.
pub async fn handle_ofrep_evaluate(raw_key: &str, req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    ofrep::evaluate(raw_key, req_body, call).await
}

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an ETag.
pub async fn handle_ofrep_bulk(req_body: Vec<u8>, query: &str, call: &Call<'_>) -> Result<Response, ApiError> {
    ofrep::bulk(req_body, query, call).await
}

/// `POST /v1/telemetry:upload`: SDKs report their own telemetry here; it is
/// accepted (within the body limit) and dropped.
pub async fn handle_telemetry(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = (req_body, call);
    json_response(200, b"{}".to_vec())
}

/// `GET /v1/state:etag`: which state serves here, from where, since when,
/// and how long ago its source last confirmed it.
pub async fn handle_state_etag(call: &Call<'_>) -> Result<Response, ApiError> {
    let snap = flags::snapshot(call).await?;
    let now = runtime::now_ms().max(0.0) as u64;
    let confirmed = state_source::confirmed_ms();
    let body = serde_json::json!({
        "etag": snap.etag,
        "version": env!("CARGO_PKG_VERSION"),
        "source": snap.source,
        "loadedAt": rfc3339(snap.loaded_at_ms),
        "confirmedAt": rfc3339(confirmed),
        "ageSeconds": now.saturating_sub(confirmed) / 1000,
    });
    let resp = json_response(200, body.to_string().into_bytes())?;
    flags::set_state_etag(&resp, &snap.etag)?;
    Ok(resp)
}

fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `GET /readyz`: 200 once a valid state serves (the same swap that
/// installs it flips this), 503 with a JSON reason before, and, with
/// `MAX_STATE_AGE_SECONDS`, while the serving state's source has not
/// confirmed it for longer than that. A failed load alone never makes a
/// ready isolate unready.
pub async fn handle_readyz(call: &Call<'_>) -> Result<Response, ApiError> {
    let not_ready = |reason: String| {
        let body = serde_json::json!({ "ready": false, "reason": reason });
        json_response(503, body.to_string().into_bytes())
    };
    let snap = match flags::snapshot(call).await {
        Ok(s) => s,
        Err(e) => return not_ready(e.message),
    };
    let now = runtime::now_ms().max(0.0) as u64;
    let age_s = now.saturating_sub(state_source::confirmed_ms()) / 1000;
    let max_age = runtime::config(call.env, "MAX_STATE_AGE_SECONDS").and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(max) = max_age.filter(|&m| age_s > m) {
        let last = state_source::last_error().unwrap_or_default();
        return not_ready(format!(
            "state {} was last confirmed by its source {age_s} s ago (MAX_STATE_AGE_SECONDS={max}); last error: {last}",
            snap.etag
        ));
    }
    let body = serde_json::json!({ "ready": true, "etag": snap.etag, "source": snap.source, "ageSeconds": age_s });
    let resp = json_response(200, body.to_string().into_bytes())?;
    flags::set_state_etag(&resp, &snap.etag)?;
    Ok(resp)
}

/// `GET /healthz`: 200 while the isolate runs, whatever its state; names
/// the bundle's embedded state, and `EDGEFLAG_FAULTS` when set.
pub async fn handle_healthz(call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = call;
    let (faults, faults_error) = faults::describe();
    let mut body = serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "embeddedEtag": crate::state::embedded::EMBEDDED_ETAG,
        "serving": state_source::current().map(|s| s.etag.clone()),
    });
    // Only when set (tests): a fault config is never silently active.
    if let Some(obj) = body.as_object_mut() {
        if !faults.is_empty() {
            obj.insert("faults".into(), faults.into());
        }
        if let Some(e) = faults_error {
            obj.insert("faultsError".into(), e.into());
        }
    }
    json_response(200, body.to_string().into_bytes())
}

/// `GET /metrics` (`?consistent=1`: from the aggregator, not the KV copy).
pub async fn handle_metrics(call: &Call<'_>, consistent: bool) -> Result<Response, ApiError> {
    metrics::get(call, consistent).await
}

/// `POST /v1/metrics:apply` (only with `METRICS_INGEST_TOKEN` set).
pub async fn handle_metrics_apply(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    metrics::apply(req_body, call).await
}

/// The flag-log queue's consumer (see `consumer`). Never returns an error:
/// workers-rs turns one into a trap, and failures are per message anyway.
#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, ctx: Context) -> ::worker::Result<()> {
    faults::init(&env);
    consumer::consume(batch, env, ctx).await
}

/// The cron tick (`[triggers] crons` in wrangler.toml): the Confidence CDN
/// state source, when `CONFIDENCE_CLIENT_SECRET` is set.
#[event(scheduled)]
async fn scheduled(_event: ::worker::ScheduledEvent, env: Env, _ctx: ::worker::ScheduleContext) {
    faults::init(&env);
    state_source::cdn_tick(&env).await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Resolve,
    Apply,
    TelemetryUpload,
    StateEtag,
    Readyz,
    Healthz,
    Metrics,
    MetricsApply,
    OfrepEvaluate,
    OfrepBulk,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/v1/flags:resolve" => Route::Resolve,
            "/v1/flags:apply" => Route::Apply,
            "/v1/telemetry:upload" => Route::TelemetryUpload,
            "/v1/state:etag" => Route::StateEtag,
            "/readyz" => Route::Readyz,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/v1/metrics:apply" => Route::MetricsApply,
            ofrep::BULK_PATH => Route::OfrepBulk,
            p if ofrep::single_key(p).is_some() => Route::OfrepEvaluate,
            _ => return None,
        })
    }

    /// The one method this route serves (besides the `OPTIONS` preflight).
    fn method(self) -> &'static str {
        match self {
            Route::Resolve
            | Route::Apply
            | Route::TelemetryUpload
            | Route::MetricsApply
            | Route::OfrepEvaluate
            | Route::OfrepBulk => "POST",
            Route::StateEtag | Route::Readyz | Route::Healthz | Route::Metrics => "GET",
        }
    }

    fn allow(self) -> &'static str {
        match self.method() {
            "POST" => "POST, OPTIONS",
            _ => "GET, OPTIONS",
        }
    }
}

/// Some clients send the `:` of `/v1/flags:resolve` percent-encoded.
fn normalize_path(path: &str) -> String {
    if path.contains('%') {
        path.replace("%3A", ":").replace("%3a", ":")
    } else {
        path.to_string()
    }
}

fn telemetry_route(req: &Request) -> crate::telemetry::Route {
    use crate::telemetry::Route as T;
    if req.inner().method().eq_ignore_ascii_case("OPTIONS") {
        return T::Preflight;
    }
    match Route::from_path(&normalize_path(&req.path())) {
        Some(Route::Resolve) => T::Resolve,
        Some(Route::Apply) => T::Apply,
        Some(Route::TelemetryUpload) => T::TelemetryUpload,
        Some(Route::StateEtag) => T::StateEtag,
        Some(Route::Metrics) => T::Metrics,
        Some(Route::OfrepEvaluate) => T::OfrepEvaluate,
        Some(Route::OfrepBulk) => T::OfrepBulk,
        Some(Route::MetricsApply | Route::Readyz | Route::Healthz) | None => T::Other,
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> ::worker::Result<Response> {
    faults::init(&env);
    let cors = Cors::from_request(&req, &env);
    let mut resp = match dispatch(&req, &env, &ctx).await {
        Ok(resp) => resp,
        Err(err) if req.path().starts_with("/ofrep/") => ofrep::error_response(&req.path(), &err)?,
        Err(err) => http::error_response(&err)?,
    };
    telemetry::request(telemetry_route(&req), resp.status_code());
    // Every request, failed ones included, may carry the flush: telemetry
    // recorded by a request that errors must not wait for a later success.
    telemetry::schedule_flush(&env, &ctx);
    cors.apply(&mut resp)?;
    Ok(resp)
}

async fn dispatch(req: &Request, env: &Env, ctx: &Context) -> Result<Response, ApiError> {
    // The raw method: `worker::Method` maps unknown methods to GET.
    let method = req.inner().method().to_ascii_uppercase();
    if method == "OPTIONS" {
        return Ok(Response::empty().map_err(|e| http::internal(e.to_string()))?.with_status(204));
    }
    let path = normalize_path(&req.path());
    let Some(route) = Route::from_path(&path).filter(|r| *r != Route::MetricsApply || metrics::ingest_enabled(env))
    else {
        // Unconfigured, the ingest route does not exist for any method.
        return Err(http::not_found(&path));
    };
    if method != route.method() {
        let err = http::method_not_allowed(&method, &path, route.allow());
        let resp =
            if path.starts_with("/ofrep/") { ofrep::error_response(&path, &err) } else { http::error_response(&err) }
                .map_err(|e| http::internal(e.to_string()))?;
        http::set(resp.headers(), "Allow", route.allow())?;
        return Ok(resp);
    }

    let body = if route.method() == "POST" { http::read_body(req, MAX_BODY_BYTES).await? } else { Vec::new() };
    let call = Call { env, ctx, headers: req.headers() };
    match route {
        Route::Resolve => handle_resolve(body, &call).await,
        Route::Apply => handle_apply(body, &call).await,
        Route::TelemetryUpload => handle_telemetry(body, &call).await,
        Route::StateEtag => handle_state_etag(&call).await,
        Route::Readyz => handle_readyz(&call).await,
        Route::Healthz => handle_healthz(&call).await,
        Route::Metrics => {
            let url = req.inner().url();
            let consistent =
                crate::query::values(crate::query::of_url(&url), "consistent").any(|v| v == "1" || v == "true");
            handle_metrics(&call, consistent).await
        }
        Route::MetricsApply => handle_metrics_apply(body, &call).await,
        Route::OfrepEvaluate => handle_ofrep_evaluate(ofrep::single_key(&path).unwrap_or_default(), body, &call).await,
        Route::OfrepBulk => {
            let url = req.inner().url();
            handle_ofrep_bulk(body, crate::query::of_url(&url), &call).await
        }
    }
}
