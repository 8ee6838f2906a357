//! The Confidence resolver API as JSON: request parsing with errors that
//! name the field, and response writing straight into a byte buffer (the
//! variant values were serialized once, when the state loaded).

use crate::proto::resolver::{ApplyFlagsRequest, ResolveFlagsRequest, ResolveReason};
use crate::resolve::{FlagResult, Resolution, ResolveError};
use base64::Engine as _;
use serde::de::DeserializeOwned;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// An error as the API reports it: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_ARGUMENT", message)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::UnknownClientSecret => ApiError::new(401, "UNAUTHENTICATED", e.to_string()),
            ResolveError::TooManyFlags { .. } | ResolveError::ContextTooDeep => ApiError::bad_request(e.to_string()),
        }
    }
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "PAYLOAD_TOO_LARGE",
            format!("request body is {} bytes; the limit is {MAX_BODY_BYTES}", body.len()),
        ));
    }
    match parse_typed(body, what) {
        Ok(v) => Ok(v),
        // proto3 JSON: `null` means the field's default. The generated
        // parsers refuse it for scalars and lists, so drop such top-level
        // fields and try once more (its error, if any, is the real problem).
        Err(first) => match without_top_level_nulls(body) {
            Some(cleaned) => parse_typed(&cleaned, what),
            None => Err(first),
        },
    }
}

/// The body with its top-level `null` members removed, when it has any.
fn without_top_level_nulls(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let before = v.len();
    v.retain(|_, value| !value.is_null());
    if v.len() == before {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

fn parse_typed<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    // Tracking the path costs on every request; only an error needs it.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || path == "?" {
            ApiError::bad_request(format!("invalid {what} JSON: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid {what} field `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("invalid {what} JSON: {e}")))?;
    Ok(value)
}

pub fn parse_resolve_request(body: &[u8]) -> Result<ResolveFlagsRequest, ApiError> {
    parse(body, "ResolveFlagsRequest")
}

pub fn parse_apply_request(body: &[u8]) -> Result<ApplyFlagsRequest, ApiError> {
    parse(body, "ApplyFlagsRequest")
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail; escaping is serde_json's.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_field(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// One `ResolvedFlag` in proto3 JSON, default values omitted.
pub fn write_resolved_flag(out: &mut Vec<u8>, f: &FlagResult<'_, '_>) {
    let mut first = true;
    out.push(b'{');
    push_field(out, &mut first, "flag");
    push_str(out, f.flag.name());
    if let (ResolveReason::Match, Some(a)) = (f.reason, &f.assigned) {
        match a.variant {
            Some(v) => {
                push_field(out, &mut first, "variant");
                push_str(out, &v.name);
                push_field(out, &mut first, "value");
                out.extend_from_slice(v.value_json.as_bytes());
                if let Some(schema) = &f.flag.schema_json {
                    push_field(out, &mut first, "flagSchema");
                    out.extend_from_slice(schema.as_bytes());
                }
            }
            None => {
                push_field(out, &mut first, "value");
                out.extend_from_slice(b"{}");
                push_field(out, &mut first, "flagSchema");
                out.extend_from_slice(b"{}");
            }
        }
    }
    push_field(out, &mut first, "reason");
    push_str(out, f.reason.as_str_name());
    if f.should_apply() {
        push_field(out, &mut first, "shouldApply");
        out.extend_from_slice(b"true");
    }
    if let (ResolveReason::Match, Some(a)) = (f.reason, &f.assigned) {
        if !a.rule.name.is_empty() {
            push_field(out, &mut first, "assignmentOrigin");
            push_str(out, &a.rule.name);
        }
    }
    out.push(b'}');
}

/// A `ResolveFlagsResponse` in proto3 JSON. `extra` is appended as more
/// top-level fields (already JSON, without braces), for the CLI's
/// `materializationsToWrite`.
pub fn write_resolve_response(
    out: &mut Vec<u8>,
    res: &Resolution<'_, '_>,
    resolve_id: &str,
    token: Option<&[u8]>,
    extra: Option<&str>,
) {
    out.extend_from_slice(b"{\"resolvedFlags\":[");
    for (i, f) in res.flags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_resolved_flag(out, f);
    }
    out.push(b']');
    // Always present, empty when no token was issued: published SDKs
    // (Confidence Python 3.0.3) read the field unconditionally.
    out.extend_from_slice(b",\"resolveToken\":\"");
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(t).as_bytes());
    }
    out.push(b'"');
    if !resolve_id.is_empty() {
        out.extend_from_slice(b",\"resolveId\":");
        push_str(out, resolve_id);
    }
    if let Some(extra) = extra.filter(|e| !e.is_empty()) {
        out.push(b',');
        out.extend_from_slice(extra.as_bytes());
    }
    out.push(b'}');
}

/// 32 characters from `[A-Za-z0-9]`, from caller-supplied random bytes.
pub fn resolve_id_from(random: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 * 62: rejection-free mapping would bias; the modulo bias of
    // 256 % 62 is irrelevant for an identifier that only needs uniqueness.
    random.iter().filter_map(|b| ALPHABET.get(usize::from(*b) % ALPHABET.len())).map(|&c| char::from(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse_resolve_request(br#"{"flags": ["a", 3]}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("`flags[1]`"), "{}", e.message);
        let e = parse_resolve_request(br#"{"apply": "yes"}"#).unwrap_err();
        assert!(e.message.contains("`apply`"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_say_json() {
        let e = parse_resolve_request(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid ResolveFlagsRequest JSON"), "{}", e.message);
        let e = parse_resolve_request(b"{} trailing").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn snake_case_and_unknown_fields_are_accepted() {
        let r = parse_resolve_request(br#"{"client_secret": "s", "evaluation_context": {"a": 1}, "whatever": 1}"#)
            .expect("parses");
        assert_eq!(r.client_secret, "s");
        assert!(r.evaluation_context.is_some());
    }

    #[test]
    fn null_means_default() {
        let r = parse_resolve_request(
            br#"{"clientSecret": "s", "apply": null, "flags": null, "evaluationContext": {"a": null}}"#,
        )
        .expect("nulls are defaults");
        assert!(!r.apply && r.flags.is_empty());
        assert!(r.evaluation_context.is_some_and(|c| c.fields.contains_key("a")), "nulls inside the context stay");
        let e = parse_resolve_request(br#"{"apply": null, "flags": 3}"#).unwrap_err();
        assert!(e.message.contains("`flags`"), "{}", e.message);
    }

    #[test]
    fn oversized_bodies_are_413() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_resolve_request(&body).unwrap_err().status, 413);
    }
}
