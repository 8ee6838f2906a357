//! Baseline for the Worker benchmark: the cheapest plausible resolve
//! endpoint. Same runtime crate, same JSON parser, same release profile as
//! edgeflag, but no flag state and no resolver, so edgeflag's cost over
//! this one is what resolving flags costs inside workerd.

use worker::{event, Context, Env, Method, Request, Response, Result};

/// What edgeflag answers for `flags/simple-flag` of the conformance state,
/// so response sizes are comparable for the one-flag request.
const RESPONSE: &str = concat!(
    r#"{"resolvedFlags":[{"flag":"flags/simple-flag","variant":"flags/simple-flag/variants/on","#,
    r#""value":{"enabled":true},"reason":"RESOLVE_REASON_MATCH","shouldApply":true,"#,
    r#""assignmentOrigin":"flags/simple-flag/rules/default"}],"resolveId":"bNch7x0Qk2ZlR4aWv9Tt1YhE3uJm5sPd"}"#
);

#[event(fetch)]
async fn fetch(mut req: Request, _env: Env, _ctx: Context) -> Result<Response> {
    if req.method() != Method::Post || req.path() != "/v1/flags:resolve" {
        return Response::error("not found", 404);
    }
    let body = req.bytes().await?;
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Response::error(format!("invalid JSON: {e}"), 400),
    };
    // Read what a resolver reads first, so the parse is not dead code.
    if parsed.get("clientSecret").and_then(|s| s.as_str()).is_none() {
        return Response::error("clientSecret missing", 400);
    }
    let resp = Response::from_bytes(RESPONSE.as_bytes().to_vec())?;
    resp.headers().set("content-type", "application/json")?;
    Ok(resp)
}
