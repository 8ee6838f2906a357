//! The OpenFeature Remote Evaluation Protocol (OFREP) as JSON: request
//! parsing, flag keys (`flag` or `flag.path.to.field`), the reason mapping,
//! typed value writing, error bodies and the bulk ETag. Pure and native;
//! the Worker's `ofrep` routes only call into here.
//!
//! What the published clients demand, beyond the spec: every body is JSON;
//! successes always carry `key`, `reason`, `variant` (a string) and
//! `metadata`; errors always carry `errorCode`, `errorDetails`, `metadata`
//! (and `key` on single evaluation); numbers keep their schema type (a
//! double is written `1.0`, never `1`).

use crate::proto::resolver::ResolveReason;
use crate::proto::types::flag_schema::{SchemaType, StructFlagSchema};
use crate::proto::types::FlagSchema;
use crate::proto::wkt::{value::Kind, Struct, Value};
use crate::resolve::FlagResult;
use crate::state::snapshot::{FlagEntry, Snapshot};
use serde_json::Value as Json;
use sha2::Digest;
use std::io::Write as _;

/// The OpenFeature error codes OFREP bodies carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    TypeMismatch,
    FlagNotFound,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::General => "GENERAL",
        }
    }

    /// The HTTP status of a single evaluation failing with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::FlagNotFound => 404,
            ErrorCode::General => 500,
            _ => 400,
        }
    }
}

/// A failed evaluation (or a failed request) as OFREP reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub code: ErrorCode,
    pub details: String,
}

impl Failure {
    pub fn new(code: ErrorCode, details: impl Into<String>) -> Self {
        Failure { status: code.status(), code, details: details.into() }
    }

    /// 401: the clients only need the status; the body is JSON all the same.
    pub fn unauthorized(details: impl Into<String>) -> Self {
        Failure { status: 401, code: ErrorCode::General, details: details.into() }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// The OpenFeature resolution reasons edgeflag answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched and its one assignment covers every bucket, for a
    /// segment without targeting.
    Static,
    /// A rule matched and the unit was bucketed into one of several
    /// assignments.
    Split,
    /// A rule matched on targeting, with a full rollout.
    TargetingMatch,
    /// No rule matched, or the match assigned the client's default: the
    /// value is omitted (the client uses its code default).
    Default,
    /// The flag exists but is archived.
    Disabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Split => "SPLIT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
        }
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// The evaluation context of an OFREP request body, as a Confidence
/// context: `targetingKey` becomes `targeting_key`, everything else passes
/// through. An empty body, `{}` or a missing/null `context` is an empty
/// context (real clients send `{}`).
pub fn parse_context(body: &[u8]) -> Result<Struct, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Struct::default());
    }
    let mut top: serde_json::Map<String, Json> = match serde_json::from_slice(body) {
        Ok(Json::Object(m)) => m,
        Ok(_) => return Err(Failure::new(ErrorCode::ParseError, "the request body must be a JSON object")),
        Err(e) => return Err(Failure::new(ErrorCode::ParseError, format!("the request body is not valid JSON: {e}"))),
    };
    let mut ctx = match top.remove("context") {
        None | Some(Json::Null) => return Ok(Struct::default()),
        Some(Json::Object(m)) => m,
        Some(_) => return Err(Failure::new(ErrorCode::InvalidContext, "`context` must be a JSON object")),
    };
    if json_too_deep(&ctx) {
        return Err(Failure::new(
            ErrorCode::InvalidContext,
            format!("`context` nests deeper than {} levels of objects and lists", crate::resolve::MAX_CONTEXT_DEPTH),
        ));
    }
    if let Some(key) = ctx.remove("targetingKey") {
        match key {
            Json::Null => {}
            Json::String(_) => {
                ctx.insert(crate::resolve::DEFAULT_SELECTOR.to_string(), key);
            }
            _ => return Err(Failure::new(ErrorCode::InvalidContext, "`context.targetingKey` must be a string")),
        }
    }
    let fields = ctx.into_iter().map(|(k, v)| (k, to_value(v))).collect();
    Ok(Struct { fields })
}

/// Whether a context object nests deeper than the resolver accepts
/// ([`crate::resolve::MAX_CONTEXT_DEPTH`], the object itself being level 1).
/// Checked before the recursive [`to_value`], and iterative itself.
fn json_too_deep(ctx: &serde_json::Map<String, Json>) -> bool {
    let mut stack: Vec<(&Json, usize)> = ctx.values().map(|v| (v, 2)).collect();
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Json>> = match v {
            Json::Object(m) => Box::new(m.values()),
            Json::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if depth > crate::resolve::MAX_CONTEXT_DEPTH {
            return true;
        }
        stack.extend(children.map(|c| (c, depth.saturating_add(1))));
    }
    false
}

/// Recursion depth is bounded by [`json_too_deep`], checked first.
fn to_value(v: Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => {
            Kind::ListValue(crate::proto::wkt::ListValue { values: a.into_iter().map(to_value).collect() })
        }
        Json::Object(m) => Kind::StructValue(Struct { fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect() }),
    };
    Value { kind: Some(kind) }
}

/// The client secret from `Authorization: Bearer <secret>` or `X-API-Key`.
pub fn client_secret<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> Option<&'a str> {
    let bearer = authorization.map(str::trim).and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.or(api_key.map(str::trim)).filter(|s| !s.is_empty())
}

/// A flag key from the URL: percent-decoded, then split at the first `.`
/// into the flag name and the path into its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagKey {
    /// As the client asked for it (decoded): echoed back as `key`.
    pub key: String,
    /// `flags/<name>`
    pub flag: String,
    pub path: Vec<String>,
}

pub fn parse_key(raw: &str) -> Result<FlagKey, Failure> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Failure::new(ErrorCode::ParseError, "the flag key is not valid UTF-8 once URL-decoded"))?
        .into_owned();
    let mut parts = key.split('.');
    let name = parts.next().unwrap_or_default();
    let name = name.strip_prefix("flags/").unwrap_or(name);
    if name.is_empty() || name.contains('/') {
        return Err(
            Failure::new(ErrorCode::FlagNotFound, format!("no flag named {:?}", truncate(&key, 200))).with_status(404)
        );
    }
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(Failure::new(ErrorCode::ParseError, "the flag key has an empty path segment"));
    }
    Ok(FlagKey { flag: format!("flags/{name}"), key, path })
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Evaluation results
// ---------------------------------------------------------------------------

/// What one flag evaluated to, before it is written.
#[derive(Debug)]
pub enum Evaluation<'s> {
    Success { reason: Reason, variant: &'s str, value: Option<Json>, ty: Ty<'s> },
    Failure(Failure),
}

/// The short variant name: `flags/f/variants/on` → `on`.
pub fn short_variant(name: &str) -> &str {
    name.rsplit_once("/variants/").map_or(name, |(_, v)| v)
}

/// The reason for a resolved flag.
#[allow(deprecated)] // NoTreatmentMatch: old states may still say it
pub fn reason(snap: &Snapshot, f: &FlagResult<'_, '_>) -> Result<Reason, Failure> {
    match f.reason {
        ResolveReason::Match => {}
        ResolveReason::NoSegmentMatch | ResolveReason::NoTreatmentMatch => return Ok(Reason::Default),
        ResolveReason::FlagArchived => return Ok(Reason::Disabled),
        ResolveReason::TargetingKeyError => {
            return Err(Failure::new(ErrorCode::InvalidContext, "the targeting key is not a string or whole number"))
        }
        other => {
            return Err(Failure::new(ErrorCode::General, format!("the flag did not resolve: {}", other.as_str_name())))
        }
    }
    let Some(a) = &f.assigned else { return Ok(Reason::Default) };
    if a.variant.is_none() {
        return Ok(Reason::Default);
    }
    let split = f.flag.rules.get(a.rule_index).is_some_and(|r| !r.full_rollout);
    if split {
        return Ok(Reason::Split);
    }
    let targeted = snap
        .segments
        .get(&a.rule.segment)
        .and_then(|s| s.proto.targeting.as_ref())
        .is_some_and(|t| !t.criteria.is_empty());
    Ok(if targeted { Reason::TargetingMatch } else { Reason::Static })
}

/// Evaluates `key` from a resolved flag: the reason, the short variant and
/// the value at the key's path (the whole value when it has none).
pub fn evaluate<'s>(snap: &'s Snapshot, f: &FlagResult<'s, '_>, path: &[String]) -> Evaluation<'s> {
    let reason = match reason(snap, f) {
        Ok(r) => r,
        Err(e) => return Evaluation::Failure(e),
    };
    let variant = f.assigned.as_ref().and_then(|a| a.variant);
    let (Some(v), Reason::Static | Reason::Split | Reason::TargetingMatch) = (variant, reason) else {
        return Evaluation::Success { reason, variant: "", value: None, ty: Ty::Unknown };
    };
    let whole: Json = match serde_json::from_str(&v.value_json) {
        Ok(j) => j,
        Err(e) => {
            return Evaluation::Failure(Failure::new(ErrorCode::General, format!("stored value unreadable: {e}")))
        }
    };
    let mut value = whole;
    let mut schema = None;
    let mut fields = f.flag.proto.schema.as_ref().map(|s| &s.schema);
    for (depth, part) in path.iter().enumerate() {
        let next = match value {
            Json::Object(mut m) => m.remove(part.as_str()),
            _ => None,
        };
        let Some(next) = next else {
            let at = path.iter().take(depth.saturating_add(1)).map(String::as_str).collect::<Vec<_>>().join(".");
            return Evaluation::Failure(Failure::new(
                ErrorCode::TypeMismatch,
                format!("the value of {} has no field `{at}`", f.flag.name()),
            ));
        };
        value = next;
        schema = fields.and_then(|m| m.get(part.as_str()));
        fields = match schema.and_then(|s| s.schema_type.as_ref()) {
            Some(SchemaType::StructSchema(s)) => Some(&s.schema),
            _ => None,
        };
    }
    // A field the variant leaves unset (null) has no value: the client's
    // default applies, with the variant still reported.
    if value.is_null() {
        return Evaluation::Success {
            reason: Reason::Default,
            variant: short_variant(&v.name),
            value: None,
            ty: Ty::Unknown,
        };
    }
    let ty = match (path.is_empty(), schema, f.flag.proto.schema.as_ref()) {
        (true, _, Some(top)) => Ty::Struct(top),
        (false, Some(s), _) => Ty::Field(s),
        _ => Ty::Unknown,
    };
    Evaluation::Success { reason, variant: short_variant(&v.name), value: Some(value), ty }
}

/// The archived flag `name` when the client may see it: such flags are
/// `DISABLED`, not missing.
pub fn disabled_flag<'s>(snap: &'s Snapshot, name: &str, client: &str) -> Option<&'s FlagEntry> {
    let f = snap.flags.get(snap.flag_index(name)?)?;
    (!f.active && f.proto.clients.iter().any(|c| c == client)).then_some(f)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The schema a value is written by.
#[derive(Debug, Clone, Copy)]
pub enum Ty<'a> {
    Unknown,
    Field(&'a FlagSchema),
    Struct(&'a StructFlagSchema),
}

/// `value` as JSON, numbers written as their schema says: `doubleSchema`
/// always with a decimal point, `intSchema` as an integer. Without a
/// schema, whole numbers are integers.
pub fn write_typed(out: &mut Vec<u8>, value: &Json, ty: Ty<'_>) {
    let kind = match ty {
        Ty::Field(s) => s.schema_type.as_ref(),
        _ => None,
    };
    match value {
        Json::Number(n) => write_number(out, n.as_f64().unwrap_or(0.0), kind),
        Json::Object(m) => {
            let fields = match (ty, kind) {
                (Ty::Struct(s), _) | (_, Some(SchemaType::StructSchema(s))) => Some(&s.schema),
                _ => None,
            };
            out.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, k);
                out.push(b':');
                write_typed(out, v, fields.and_then(|f| f.get(k)).map_or(Ty::Unknown, Ty::Field));
            }
            out.push(b'}');
        }
        Json::Array(a) => {
            let element = match kind {
                Some(SchemaType::ListSchema(l)) => l.element_schema.as_deref().map_or(Ty::Unknown, Ty::Field),
                _ => Ty::Unknown,
            };
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_typed(out, v, element);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

fn write_number(out: &mut Vec<u8>, n: f64, kind: Option<&SchemaType>) {
    if !n.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    // Within f64's exact-integer range.
    let whole = n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15;
    match kind {
        Some(SchemaType::DoubleSchema(_)) => {
            let text = Json::from(n).to_string();
            out.extend_from_slice(text.as_bytes());
            if !text.contains(['.', 'e', 'E']) {
                out.extend_from_slice(b".0");
            }
        }
        _ if whole => {
            let _ = write!(out, "{}", n as i64);
        }
        _ => {
            let _ = write!(out, "{}", Json::from(n));
        }
    }
}

fn write_success(out: &mut Vec<u8>, key: &str, ev: &Evaluation<'_>) {
    let Evaluation::Success { reason, variant, value, ty } = ev else { return };
    out.extend_from_slice(b"{\"key\":");
    push_str(out, key);
    if let Some(v) = value {
        out.extend_from_slice(b",\"value\":");
        write_typed(out, v, *ty);
    }
    out.extend_from_slice(b",\"reason\":");
    push_str(out, reason.as_str());
    out.extend_from_slice(b",\"variant\":");
    push_str(out, variant);
    out.extend_from_slice(b",\"metadata\":{}}");
}

/// An error body: `{"key"?, "errorCode", "errorDetails", "metadata"}`.
pub fn write_failure(out: &mut Vec<u8>, key: Option<&str>, failure: &Failure) {
    out.push(b'{');
    if let Some(k) = key {
        out.extend_from_slice(b"\"key\":");
        push_str(out, k);
        out.push(b',');
    }
    out.extend_from_slice(b"\"errorCode\":");
    push_str(out, failure.code.as_str());
    out.extend_from_slice(b",\"errorDetails\":");
    push_str(out, &failure.details);
    out.extend_from_slice(b",\"metadata\":{}}");
}

/// A single evaluation's body and status. `flag` is the flag's result when
/// it resolved (`None`: not visible to this client, or archived).
pub fn single(snap: &Snapshot, client: &str, key: &FlagKey, flag: Option<&FlagResult<'_, '_>>) -> (u16, Vec<u8>) {
    let mut out = Vec::with_capacity(192);
    let ev = match flag {
        Some(f) => evaluate(snap, f, &key.path),
        None if disabled_flag(snap, &key.flag, client).is_some() => {
            Evaluation::Success { reason: Reason::Disabled, variant: "", value: None, ty: Ty::Unknown }
        }
        None => Evaluation::Failure(Failure::new(
            ErrorCode::FlagNotFound,
            format!("no flag named {:?}", truncate(&key.key, 200)),
        )),
    };
    match &ev {
        Evaluation::Success { .. } => {
            write_success(&mut out, &key.key, &ev);
            (200, out)
        }
        Evaluation::Failure(e) => {
            write_failure(&mut out, Some(&key.key), e);
            (e.status, out)
        }
    }
}

/// A bulk evaluation's body: every flag the client sees, keyed by its name
/// without `flags/`, archived ones as `DISABLED`; `metadata` carries the
/// serving state's etag.
pub fn bulk<'s>(snap: &'s Snapshot, client: &str, flags: &[FlagResult<'s, '_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 160 * flags.len());
    out.extend_from_slice(b"{\"flags\":[");
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    for f in flags {
        sep(&mut out);
        let key = f.flag.name().strip_prefix("flags/").unwrap_or(f.flag.name());
        match evaluate(snap, f, &[]) {
            ev @ Evaluation::Success { .. } => write_success(&mut out, key, &ev),
            Evaluation::Failure(e) => write_failure(&mut out, Some(key), &e),
        }
    }
    for f in snap.flags.iter().filter(|f| !f.active && f.proto.clients.iter().any(|c| c == client)) {
        sep(&mut out);
        let key = f.name().strip_prefix("flags/").unwrap_or(f.name());
        let ev = Evaluation::Success { reason: Reason::Disabled, variant: "", value: None, ty: Ty::Unknown };
        write_success(&mut out, key, &ev);
    }
    out.extend_from_slice(b"],\"metadata\":{\"stateEtag\":");
    push_str(&mut out, &snap.etag);
    out.extend_from_slice(b"}}");
    out
}

/// The bulk ETag: a hash of the exact body, so it changes whenever the
/// body would (a config-only ETag serves stale values when non-key
/// attributes change).
pub fn etag(body: &[u8]) -> String {
    let digest = sha2::Sha256::digest(body);
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in digest.iter().take(16) {
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
    }
    s.push('"');
    s
}

/// Whether `If-None-Match` names `etag` (a list, `*`, weak tags included).
pub fn not_modified(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(h) = if_none_match else { return false };
    h.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `flagConfigEtag` from the query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    crate::query::values(query, name).next()
}

/// Whether a bulk request may be answered 304: its `If-None-Match` names
/// the body's ETag, and a `flagConfigEtag` it sends, if any, is the serving
/// state's (a client that saw another config never gets a 304).
pub fn may_answer_304(
    if_none_match: Option<&str>,
    flag_config_etag: Option<&str>,
    body_etag: &str,
    state_etag: &str,
) -> bool {
    let config_ok = flag_config_etag.is_none_or(|e| e.trim_matches('"') == state_etag.trim_matches('"'));
    config_ok && not_modified(if_none_match, body_etag)
}

#[cfg(test)]
mod tests;
