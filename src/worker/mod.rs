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
//! | `GET  /metrics`              | [`handle_metrics`]       |
//! | `OPTIONS` any path           | CORS preflight, 204      |
//!
//! Any other path is a 404, a known path with another method a 405 with
//! `Allow`. Every response, errors and preflights included, carries the
//! CORS headers (see [`http::Cors`]). Bodies over [`MAX_BODY_BYTES`] are a
//! 413 before the handler runs.

pub mod http;

use ::worker::{event, Context, Env, Headers, Request, Response};

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

/// The identity of the flag state this build serves, as `GET /v1/state:etag`
/// reports it.
pub fn state_etag() -> String {
    "unversioned".to_string()
}

/// `POST /v1/flags:resolve`.
pub async fn handle_resolve(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = (req_body, call);
    Err(http::unimplemented("flags:resolve"))
}

/// `POST /v1/flags:apply`.
pub async fn handle_apply(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = (req_body, call);
    Err(http::unimplemented("flags:apply"))
}

/// `POST /v1/telemetry:upload`: SDKs report their own telemetry here; it is
/// accepted (within the body limit) and dropped.
pub async fn handle_telemetry(req_body: Vec<u8>, call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = (req_body, call);
    json_response(200, b"{}".to_vec())
}

/// `GET /v1/state:etag`: which state and which build answer here.
pub async fn handle_state_etag(call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = call;
    let body = serde_json::json!({ "etag": state_etag(), "version": env!("CARGO_PKG_VERSION") });
    json_response(200, body.to_string().into_bytes())
}

/// `GET /metrics`.
pub async fn handle_metrics(call: &Call<'_>) -> Result<Response, ApiError> {
    let _ = call;
    Err(http::unimplemented("metrics"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Resolve,
    Apply,
    TelemetryUpload,
    StateEtag,
    Metrics,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/v1/flags:resolve" => Route::Resolve,
            "/v1/flags:apply" => Route::Apply,
            "/v1/telemetry:upload" => Route::TelemetryUpload,
            "/v1/state:etag" => Route::StateEtag,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }

    /// The one method this route serves (besides the `OPTIONS` preflight).
    fn method(self) -> &'static str {
        match self {
            Route::Resolve | Route::Apply | Route::TelemetryUpload => "POST",
            Route::StateEtag | Route::Metrics => "GET",
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

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> ::worker::Result<Response> {
    let cors = Cors::from_request(&req, &env);
    let mut resp = match dispatch(&req, &env, &ctx).await {
        Ok(resp) => resp,
        Err(err) => http::error_response(&err)?,
    };
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
    let Some(route) = Route::from_path(&path) else {
        return Err(http::not_found(&path));
    };
    if method != route.method() {
        let err = http::method_not_allowed(&method, &path, route.allow());
        let resp = http::error_response(&err).map_err(|e| http::internal(e.to_string()))?;
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
        Route::Metrics => handle_metrics(&call).await,
    }
}
