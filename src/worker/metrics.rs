//! `GET /metrics`: the cumulative metrics the queue consumer keeps in KV,
//! in Prometheus text format, for callers holding a client secret of the
//! serving state or the `METRICS_TOKEN`.

use super::http::{self, ApiError};
use super::{consumer, flags, runtime, Call};
use subtle::ConstantTimeEq;

fn authorized(call: &Call<'_>) -> Result<bool, ApiError> {
    let header = call.headers.get("Authorization").ok().flatten().unwrap_or_default();
    let header = header.trim();
    if let Some(secret) = header.strip_prefix("ClientSecret ") {
        return Ok(flags::snapshot()?.has_secret(secret.trim()));
    }
    if let Some(token) = header.strip_prefix("Bearer ") {
        if let Some(expected) = runtime::config(call.env, "METRICS_TOKEN").filter(|t| !t.is_empty()) {
            return Ok(bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())));
        }
    }
    Ok(false)
}

pub async fn get(call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    if !authorized(call)? {
        let err = ApiError::new(
            401,
            "UNAUTHENTICATED",
            "metrics need `Authorization: ClientSecret <client secret>` or `Authorization: Bearer <METRICS_TOKEN>`",
        );
        let resp = http::error_response(&err).map_err(|e| http::internal(e.to_string()))?;
        http::set(resp.headers(), "WWW-Authenticate", "ClientSecret, Bearer")?;
        return Ok(resp);
    }
    let snapshot = match call.env.kv("METRICS_KV") {
        Ok(kv) => consumer::read_metrics(&kv).await.map(|(m, _)| m).unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let body = crate::telemetry::render_prometheus(&snapshot);
    let mut resp = ::worker::Response::from_bytes(body.into_bytes()).map_err(|e| http::internal(e.to_string()))?;
    resp = resp.with_status(200);
    http::set(resp.headers(), "Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
    http::set(resp.headers(), "Cache-Control", "no-store")?;
    Ok(resp)
}
