//! The Confidence resolver API: `flags:resolve` on the shared resolve path
//! ([`flags::resolve_with`]) and `flags:apply` (tokens into exposures).

use super::flags::{self, set_state_etag, Ask, Written};
use super::http::json_response;
use super::{runtime, Call};
use crate::api::{self, ApiError};
use crate::exposure;
use crate::resolve;
use crate::token;

/// `POST /v1/flags:resolve`: the Confidence resolver API.
pub async fn resolve(body: Vec<u8>, call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    let started = runtime::now_ms();
    let req = api::parse_resolve_request(&body).inspect_err(|_| {
        // Counted like any failed resolve.
        super::telemetry::failed_resolve(runtime::now_ms() - started);
    })?;
    let apply = runtime::force_apply(call.env) || req.apply;
    let context = req.evaluation_context.as_ref().unwrap_or_else(|| flags::empty_context());
    let ask = Ask { flags: &req.flags, context, client_secret: &req.client_secret, sdk: req.sdk.clone() };
    let (out, etag) = flags::resolve_with(call, ask, |r| {
        let token = if apply {
            None
        } else {
            let keys = runtime::token_keys(call.env)?;
            Some(token::for_resolution(&keys, &r.nonce, r.res, r.resolve_id, &r.snap.account_id))
        };
        let mut out = Vec::with_capacity(256 + 192 * r.res.flags.len());
        api::write_resolve_response(&mut out, r.res, r.resolve_id, token.as_deref(), None);
        Ok(Written { response: (out, r.snap.etag.clone()), exposed: apply })
    })
    .await?;
    let resp = json_response(200, out)?;
    set_state_etag(&resp, &etag)?;
    Ok(resp)
}

/// `POST /v1/flags:apply`.
pub async fn apply(body: Vec<u8>, call: &Call<'_>) -> Result<::worker::Response, ApiError> {
    let req = api::parse_apply_request(&body)?;
    let snap = flags::snapshot(call).await?;
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
    let resp = json_response(200, b"{}".to_vec())?;
    set_state_etag(&resp, &snap.etag)?;
    Ok(resp)
}
