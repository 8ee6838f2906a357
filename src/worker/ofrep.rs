//! OFREP routes: `POST /ofrep/v1/evaluate/flags/{key}` (single) and
//! `POST /ofrep/v1/evaluate/flags` (bulk, with a body ETag and 304). Each
//! parses its request, calls the shared resolve path and writes its
//! response with [`crate::ofrep`]; every answer, errors included, is JSON
//! in OFREP's shape (a 304 has no body).
//!
//! Telemetry, like `flags:resolve`: a single evaluation that succeeds is an
//! exposure of the flag (its value is being used now); a bulk one exposes every flag
//! it returns with a variant unless `OFREP_BULK_APPLY=false`; a 304 counts
//! as an evaluation, not as a new exposure.

use super::flags::{self, set_state_etag, Ask, Written};
use super::http::{self, json_response};
use super::{runtime, Call};
use crate::api::ApiError;
use crate::ofrep::{self, ErrorCode, Failure};
use crate::proto::resolver::{sdk, Sdk};
use ::worker::Response;

/// The bulk route's path; the single route is this plus `/{key}`.
pub const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";

/// The `{key}` of a single-evaluation path, still URL-encoded.
pub fn single_key(path: &str) -> Option<&str> {
    path.strip_prefix(BULK_PATH)?.strip_prefix('/').filter(|k| !k.is_empty())
}

fn sdk_info() -> Option<Sdk> {
    Some(Sdk { sdk: Some(sdk::Sdk::CustomId("OFREP".to_string())), version: String::new() })
}

/// `OFREP_BULK_APPLY`: on unless it is exactly `false` (any case, trimmed).
fn bulk_apply(env: &::worker::Env) -> bool {
    !runtime::config(env, "OFREP_BULK_APPLY").is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

fn header(call: &Call<'_>, name: &str) -> Option<String> {
    call.headers.get(name).ok().flatten()
}

/// The client secret, or the 401 for a request that sends none.
fn secret(call: &Call<'_>) -> Result<String, Failure> {
    let auth = header(call, "Authorization");
    let key = header(call, "X-API-Key");
    ofrep::client_secret(auth.as_deref(), key.as_deref())
        .map(str::to_string)
        .ok_or_else(|| Failure::unauthorized("send a client secret as `Authorization: Bearer <secret>` or `X-API-Key`"))
}

/// A request that fails before it resolves still counts as a failed
/// resolve, as it does on `flags:resolve`.
fn refused(started: f64, key: Option<&str>, failure: &Failure) -> Result<Response, ApiError> {
    super::telemetry::failed_resolve(runtime::now_ms() - started);
    failure_response(key, failure)
}

fn failure_response(key: Option<&str>, failure: &Failure) -> Result<Response, ApiError> {
    let mut out = Vec::with_capacity(128);
    ofrep::write_failure(&mut out, key, failure);
    json_response(failure.status, out)
}

/// An [`ApiError`] (unknown secret, no state, body too large, ...) in
/// OFREP's error shape, with the key on single evaluation.
pub fn error_response(path: &str, err: &ApiError) -> ::worker::Result<Response> {
    let code = match err.code {
        "PARSE_ERROR" => ErrorCode::ParseError,
        "INVALID_CONTEXT" => ErrorCode::InvalidContext,
        "TARGETING_KEY_MISSING" => ErrorCode::TargetingKeyMissing,
        "FLAG_NOT_FOUND" => ErrorCode::FlagNotFound,
        _ => ErrorCode::General,
    };
    let status = if (400..=599).contains(&err.status) { err.status } else { 500 };
    let failure = Failure { status, code, details: err.message.clone() };
    let key = single_key(path).and_then(|k| ofrep::parse_key(k).ok()).map(|k| k.key);
    failure_response(key.as_deref(), &failure).or_else(|e| http::error_response(&e))
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate(raw_key: &str, body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    let started = runtime::now_ms();
    let key = match ofrep::parse_key(raw_key) {
        Ok(k) => k,
        Err(f) => return refused(started, Some(raw_key), &f),
    };
    let context = match ofrep::parse_context(&body) {
        Ok(c) => c,
        Err(f) => return refused(started, Some(&key.key), &f),
    };
    let secret = match secret(call) {
        Ok(s) => s,
        Err(f) => return refused(started, Some(&key.key), &f),
    };
    let flags = [key.flag.clone()];
    let ask = Ask { flags: &flags, context: &context, client_secret: &secret, sdk: sdk_info() };
    let (status, out, state_etag) = flags::resolve_with(call, ask, |r| {
        let (status, out) = ofrep::single(r.snap, &r.res.credential.client, &key, r.res.flags.first());
        // The value is used now, unless the client gets an error instead.
        Ok(Written { response: (status, out, r.snap.etag.clone()), exposed: status == 200 })
    })
    .await?;
    let resp = json_response(status, out)?;
    set_state_etag(&resp, &state_etag)?;
    Ok(resp)
}

/// `POST /ofrep/v1/evaluate/flags`.
pub async fn bulk(body: Vec<u8>, query: &str, call: &Call<'_>) -> Result<Response, ApiError> {
    let started = runtime::now_ms();
    let context = match ofrep::parse_context(&body) {
        Ok(c) => c,
        Err(f) => return refused(started, None, &f),
    };
    let secret = match secret(call) {
        Ok(s) => s,
        Err(f) => return refused(started, None, &f),
    };
    let if_none_match = header(call, "If-None-Match");
    let config_etag = ofrep::query_param(query, "flagConfigEtag");
    let apply = bulk_apply(call.env);
    let ask = Ask { flags: &[], context: &context, client_secret: &secret, sdk: sdk_info() };
    let (unchanged, out, etag, state_etag) = flags::resolve_with(call, ask, |r| {
        let out = ofrep::bulk(r.snap, &r.res.credential.client, &r.res.flags);
        let etag = ofrep::etag(&out);
        let unchanged = ofrep::may_answer_304(if_none_match.as_deref(), config_etag.as_deref(), &etag, &r.snap.etag);
        Ok(Written { response: (unchanged, out, etag, r.snap.etag.clone()), exposed: apply && !unchanged })
    })
    .await?;
    let resp = if unchanged {
        Response::empty().map_err(|e| http::internal(e.to_string()))?.with_status(304)
    } else {
        json_response(200, out)?
    };
    http::set(resp.headers(), "ETag", &etag)?;
    set_state_etag(&resp, &state_etag)?;
    Ok(resp)
}
