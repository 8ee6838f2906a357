//! HTTP plumbing for the Worker: JSON and error responses, CORS headers and
//! bounded body reading. Errors are [`ApiError`]s (the same type the
//! resolver's request parsing returns), rendered as
//! `{"error": {"code": "...", "message": "..."}}` with their status.
//!
//! Nothing here trusts its input: no `unwrap` on anything a client controls,
//! and every fallible runtime call is mapped to an error response.

use ::worker::wasm_bindgen::{JsCast, JsValue};
use ::worker::wasm_bindgen_futures::JsFuture;
use ::worker::web_sys::ReadableStreamDefaultReader;
use ::worker::{Env, Headers, Request, Response};
use js_sys::{Reflect, Uint8Array};

pub use crate::api::{ApiError, MAX_BODY_BYTES};

/// `Access-Control-Max-Age` on every response: browsers may cache a
/// preflight for a day.
pub const CORS_MAX_AGE_SECS: u32 = 86_400;

/// Methods the API answers to, as listed in `Access-Control-Allow-Methods`.
pub const CORS_ALLOW_METHODS: &str = "GET, POST, OPTIONS";

/// Request headers allowed when a preflight names none: what the
/// Confidence and OFREP clients send.
pub const CORS_ALLOW_HEADERS: &str = "Content-Type, Authorization, X-API-Key, If-None-Match";

/// Response headers a browser may read: the bulk OFREP `ETag` (the web
/// provider's 304s depend on it) and the serving state's etag.
pub const CORS_EXPOSE_HEADERS: &str = "ETag, x-edgeflag-state-etag";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// 404: no route for this path.
pub fn not_found(path: &str) -> ApiError {
    ApiError::new(404, "NOT_FOUND", format!("no such endpoint: {}", truncate(path, 200)))
}

/// 405: the path exists but not for this method (the caller adds `Allow`).
pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> ApiError {
    ApiError::new(
        405,
        "METHOD_NOT_ALLOWED",
        format!("{} is not allowed on {}; use {allow}", truncate(method, 20), truncate(path, 200)),
    )
}

/// 413: the body is larger than [`MAX_BODY_BYTES`].
pub fn payload_too_large(got: Option<u64>) -> ApiError {
    let message = match got {
        Some(n) => format!("request body is {n} bytes; the limit is {MAX_BODY_BYTES}"),
        None => format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
    };
    ApiError::new(413, "PAYLOAD_TOO_LARGE", message)
}

/// 500: something on our side failed.
pub fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(500, "INTERNAL", message)
}

/// 501: a route that exists but is not served by this build.
pub fn unimplemented(what: &str) -> ApiError {
    ApiError::new(501, "UNIMPLEMENTED", format!("{what} is not implemented yet"))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// A JSON response with `status` and an already-serialized body.
pub fn json_response(status: u16, body: Vec<u8>) -> Result<Response, ApiError> {
    let headers = Headers::new();
    set(&headers, "Content-Type", "application/json")?;
    Ok(Response::from_bytes(body)
        .map_err(|e| internal(format!("building response: {e}")))?
        .with_status(status)
        .with_headers(headers))
}

/// The JSON response for `err`.
pub fn error_response(err: &ApiError) -> ::worker::Result<Response> {
    let status = if (400..=599).contains(&err.status) { err.status } else { 500 };
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    Ok(Response::from_bytes(err.to_json().into_bytes())?.with_status(status).with_headers(headers))
}

/// Sets a header, mapping the (JS-side) failure to a 500.
pub fn set(headers: &Headers, name: &str, value: &str) -> Result<(), ApiError> {
    headers.set(name, value).map_err(|e| internal(format!("setting header {name}: {e}")))
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

/// CORS policy from the `ALLOWED_ORIGIN` var: `*` (the default, also when
/// unset or empty) or a comma-separated list of exact origins. With a list,
/// a request `Origin` on the list is echoed back, anything else gets the
/// first listed origin (which the browser then refuses), and `Vary: Origin`
/// is sent so caches keep the answers apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    allow_origin: String,
    vary_origin: bool,
    allow_headers: String,
}

impl Cors {
    pub fn new(allowed_origin: Option<&str>, request_origin: Option<&str>, request_headers: Option<&str>) -> Self {
        let configured = allowed_origin.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("*");
        let (allow_origin, vary_origin) = if configured == "*" {
            ("*".to_string(), false)
        } else {
            let mut listed = configured.split(',').map(str::trim).filter(|s| !s.is_empty());
            let first = listed.clone().next().unwrap_or("*");
            let chosen = match request_origin {
                Some(o) if listed.any(|l| l == o) => o,
                _ => first,
            };
            (chosen.to_string(), true)
        };
        // Echo what a preflight asks for (a bare `*` does not cover
        // `Authorization` in browsers); otherwise name what clients send.
        let allow_headers = request_headers
            .map(str::trim)
            .filter(|h| !h.is_empty() && h.len() <= 1024 && h.bytes().all(is_header_list_byte))
            .unwrap_or(CORS_ALLOW_HEADERS)
            .to_string();
        Cors { allow_origin, vary_origin, allow_headers }
    }

    pub fn from_request(req: &Request, env: &Env) -> Self {
        let configured = env.var("ALLOWED_ORIGIN").ok().map(|v| v.to_string());
        let header = |name: &str| req.headers().get(name).ok().flatten();
        Cors::new(
            configured.as_deref(),
            header("Origin").as_deref(),
            header("Access-Control-Request-Headers").as_deref(),
        )
    }

    /// Adds the CORS headers to `resp`.
    pub fn apply(&self, resp: &mut Response) -> ::worker::Result<()> {
        let h = resp.headers_mut();
        h.set("Access-Control-Allow-Origin", &self.allow_origin)?;
        h.set("Access-Control-Allow-Methods", CORS_ALLOW_METHODS)?;
        h.set("Access-Control-Allow-Headers", &self.allow_headers)?;
        h.set("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)?;
        h.set("Access-Control-Max-Age", &CORS_MAX_AGE_SECS.to_string())?;
        if self.vary_origin {
            h.append("Vary", "Origin")?;
        }
        Ok(())
    }
}

fn is_header_list_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' ' | b'.')
}

// ---------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------

/// Reads the whole body, failing with 413 as soon as it is known to exceed
/// `limit`: up front from `Content-Length`, else while streaming (chunked
/// bodies, or a `Content-Length` that lies).
///
/// Reads the JS stream directly so that, on overflow, the rest of the body
/// is cancelled *before* the response goes out: a cancel left to a drop
/// handler runs after the response and workerd reports it as an uncaught
/// "Can't read from request stream after response has been sent".
pub async fn read_body(req: &Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if let Ok(Some(cl)) = req.headers().get("Content-Length") {
        match cl.trim().parse::<u64>() {
            Ok(n) if n > limit as u64 => return Err(payload_too_large(Some(n))),
            // The common case: a declared size within the limit is read in
            // one call instead of chunk by chunk (each chunk is a JS await).
            Ok(_) => {
                let promise = req
                    .inner()
                    .array_buffer()
                    .map_err(|e| ApiError::bad_request(format!("cannot read request body: {}", js_text(&e))))?;
                let buf = JsFuture::from(promise)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("cannot read request body: {}", js_text(&e))))?;
                let bytes = Uint8Array::new(&buf);
                if bytes.length() as usize > limit {
                    return Err(payload_too_large(Some(bytes.length() as u64)));
                }
                return Ok(bytes.to_vec());
            }
            Err(_) => return Err(ApiError::bad_request("invalid Content-Length header")),
        }
    }
    let Some(stream) = req.inner().body() else {
        return Ok(Vec::new());
    };
    if stream.locked() {
        return Err(internal("request body already consumed"));
    }
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut body = Vec::new();
    loop {
        let result = JsFuture::from(reader.read())
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read request body: {}", js_text(&e))))?;
        if Reflect::get(&result, &JsValue::from_str("done")).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
            return Ok(body);
        }
        let chunk = Reflect::get(&result, &JsValue::from_str("value"))
            .ok()
            .and_then(|v| v.dyn_into::<Uint8Array>().ok())
            .ok_or_else(|| internal("request body chunk is not a byte array"))?;
        let n = chunk.length() as usize;
        if body.len().saturating_add(n) > limit {
            // Cancelled (and awaited) before the 413 goes out; whether the
            // cancel succeeds does not change the answer.
            let _ = JsFuture::from(reader.cancel()).await;
            return Err(payload_too_large(None));
        }
        let start = body.len();
        body.resize(start.saturating_add(n), 0);
        // `copy_to` needs a destination of exactly the chunk's length.
        let tail = body.get_mut(start..).ok_or_else(|| internal("request body buffer too short"))?;
        chunk.copy_to(tail);
    }
}

fn js_text(v: &JsValue) -> String {
    v.as_string()
        .or_else(|| v.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| "unknown error".to_string())
}
