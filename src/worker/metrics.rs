//! `GET /metrics`: the cumulative metrics in Prometheus text format, for
//! callers holding a client secret of the serving state or the
//! `METRICS_TOKEN`. By default the copy the `MetricsAggregator` mirrors to
//! KV (a cheap read at any colo, at most about a second plus KV
//! propagation behind); `?consistent=1` asks the aggregator itself.
//!
//! `POST /v1/metrics:apply`: a `MetricsBatch` (proto3 JSON) straight to the
//! aggregator, for producers outside this Worker (and the end-to-end dedup
//! test). Only with `Authorization: Bearer <METRICS_INGEST_TOKEN>`; a 404
//! when that secret is not set.

use super::http::{self, ApiError};
use super::{flags, metrics_do, runtime, Call};
use subtle::ConstantTimeEq;

async fn authorized(call: &Call<'_>) -> Result<bool, ApiError> {
    let header = call.headers.get("Authorization").ok().flatten().unwrap_or_default();
    let header = header.trim();
    if let Some(secret) = header.strip_prefix("ClientSecret ") {
        return Ok(flags::snapshot(call).await?.has_secret(secret.trim()));
    }
    if let Some(token) = header.strip_prefix("Bearer ") {
        if let Some(expected) = runtime::config(call.env, "METRICS_TOKEN").filter(|t| !t.is_empty()) {
            return Ok(bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())));
        }
    }
    Ok(false)
}

pub async fn get(call: &Call<'_>, consistent: bool) -> Result<::worker::Response, ApiError> {
    if !authorized(call).await? {
        let err = ApiError::new(
            401,
            "UNAUTHENTICATED",
            "metrics need `Authorization: ClientSecret <client secret>` or `Authorization: Bearer <METRICS_TOKEN>`",
        );
        let resp = http::error_response(&err).map_err(|e| http::internal(e.to_string()))?;
        http::set(resp.headers(), "WWW-Authenticate", "ClientSecret, Bearer")?;
        return Ok(resp);
    }
    let snapshot = if consistent {
        metrics_do::snapshot(call.env).await.map_err(|e| unavailable(&e))?
    } else {
        metrics_do::mirrored(call.env).await.map_err(|e| unavailable(&e))?
    };
    let body = crate::telemetry::render_prometheus(&snapshot);
    let mut resp = ::worker::Response::from_bytes(body.into_bytes()).map_err(|e| http::internal(e.to_string()))?;
    resp = resp.with_status(200);
    http::set(resp.headers(), "Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
    http::set(resp.headers(), "Cache-Control", "no-store")?;
    Ok(resp)
}

fn unavailable(e: &::worker::Error) -> ApiError {
    ::worker::console_error!("edgeflag: reading metrics failed: {e}");
    ApiError::new(503, "UNAVAILABLE", "metrics are unavailable right now; retry shortly")
}

fn ingest_token(env: &::worker::Env) -> Option<String> {
    runtime::config(env, "METRICS_INGEST_TOKEN").filter(|t| !t.is_empty())
}

/// Whether `POST /v1/metrics:apply` exists here.
pub fn ingest_enabled(env: &::worker::Env) -> bool {
    ingest_token(env).is_some()
}

pub async fn apply(body: Vec<u8>, call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    let Some(expected) = ingest_token(call.env) else {
        return Err(http::not_found("/v1/metrics:apply"));
    };
    let header = call.headers.get("Authorization").ok().flatten().unwrap_or_default();
    let token = header.trim().strip_prefix("Bearer ").map(str::trim).unwrap_or_default();
    if !bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ApiError::new(401, "UNAUTHENTICATED", "needs `Authorization: Bearer <METRICS_INGEST_TOKEN>`"));
    }
    if let Err(e) = serde_json::from_slice::<crate::proto::edgeflag::v1::MetricsBatch>(&body) {
        return Err(ApiError::new(400, "INVALID_ARGUMENT", format!("not an edgeflag.v1.MetricsBatch: {e}")));
    }
    match metrics_do::apply(call.env, &body, "application/json").await {
        Ok((200, outcome)) => http::json_response(200, outcome.into_bytes()),
        Ok((status, why)) => Err(ApiError::new(status, "INVALID_ARGUMENT", why)),
        Err(e) => {
            ::worker::console_error!("edgeflag: metrics aggregator unavailable: {e}");
            Err(ApiError::new(503, "UNAVAILABLE", "metrics aggregator unavailable; retry shortly"))
        }
    }
}
