//! What each fuzz target runs, in one place: `fuzz/fuzz_targets/*` call
//! these on libFuzzer's inputs, and `tests/fuzz_corpora.rs` replays the
//! saved corpora and regressions through the very same functions on
//! stable. Each returns nothing and must not panic, whatever the bytes.
//! Native only; not part of the public API.

use crate::api;
use crate::ofrep;
use crate::proto::iam::client_credential::Credential;
use crate::proto::resolver::ResolveTokenV1;
use crate::resolve::{self, sticky::Sticky, sticky::StickySet};
use crate::state::formats::{self, StateFormat};
use crate::state::source::{self, Pointer};
use crate::state::snapshot::Snapshot;
use crate::token::{self, TokenKeys};
use prost::Message;

/// The fuzz targets, by name: `fuzz/fuzz_targets/<name>.rs`,
/// `fuzz/corpus/<name>/`, `fuzz/regressions/<name>/`.
pub const TARGETS: &[&str] =
    &["resolve_request", "apply_request", "ofrep", "state", "state_pointer", "token", "evaluate"];

/// Runs the target called `name` on `data`; false for an unknown name.
pub fn run(name: &str, evaluate_state: &Snapshot, data: &[u8]) -> bool {
    match name {
        "resolve_request" => resolve_request(data),
        "apply_request" => apply_request(data),
        "ofrep" => ofrep_request(data),
        "state" => state(data),
        "state_pointer" => state_pointer(data),
        "token" => token(data),
        "evaluate" => evaluate(evaluate_state, data),
        _ => return false,
    }
    true
}

/// `POST /v1/flags:resolve` bodies.
pub fn resolve_request(data: &[u8]) {
    if let Err(e) = api::parse_resolve_request(data) {
        let _ = e.to_json();
    }
}

/// `POST /v1/flags:apply` bodies; a parsed token is opened as the route does.
pub fn apply_request(data: &[u8]) {
    match api::parse_apply_request(data) {
        Ok(req) => {
            if let Some(keys) = token_keys() {
                let _ = token::open(&keys, TOKEN_CREDENTIAL, &req.resolve_token);
            }
        }
        Err(e) => {
            let _ = e.to_json();
        }
    }
}

/// OFREP request bodies, and the same bytes as a flag key from the URL,
/// credentials and query strings.
pub fn ofrep_request(data: &[u8]) {
    let _ = ofrep::parse_context(data);
    let text = String::from_utf8_lossy(data);
    if let Err(f) = ofrep::parse_key(&text) {
        let mut out = Vec::new();
        ofrep::write_failure(&mut out, Some(&text), &f);
    }
    let _ = ofrep::client_secret(Some(&text), Some(&text));
    let _ = ofrep::query_param(&text, "flagConfigEtag");
    let _ = ofrep::may_answer_304(Some(&text), Some(&text), "\"e\"", "e");
}

/// State bytes in every accepted format (detected, then each forced); a
/// state that loads is resolved for each of its first credentials.
pub fn state(data: &[u8]) {
    let formats = [
        None,
        Some(StateFormat::Protobuf),
        Some(StateFormat::Envelope),
        Some(StateFormat::ProtoJson),
        Some(StateFormat::SuiteJson),
    ];
    let _ = formats::detect_format(data);
    for format in formats {
        let Ok(snap) = Snapshot::load(data, format, Some("fuzz")) else {
            continue;
        };
        let _ = snap.bitset_failures();
        let Ok(decoded) = formats::decode(data, format) else {
            continue;
        };
        let secrets = decoded
            .state
            .client_credentials
            .iter()
            .filter_map(|c| c.credential.as_ref().map(|Credential::ClientSecret(s)| s.secret.as_str()));
        for secret in secrets.take(4) {
            resolve_all(&snap, secret, &Default::default());
        }
    }
}

/// What a refresh reads from STATE_KV: the bytes up to the first newline
/// as `state:current`, the rest as the blob it names. A pointer that parses
/// must survive its own round trip; then the blob is checked against it as
/// the isolate does. The blob is also loaded under the pointer a writer
/// would store for it, so the fuzzer reaches decode and validation, and a
/// pointer edgeflag writes must be one it accepts.
pub fn state_pointer(data: &[u8]) {
    let (head, blob) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (data.get(..at).unwrap_or_default(), data.get(at + 1..).unwrap_or_default()),
        None => (data, &[][..]),
    };
    if let Ok(p) = Pointer::parse(head) {
        let again = Pointer::parse(p.to_json().as_bytes());
        assert_eq!(again.as_ref(), Ok(&p), "a parsed pointer must survive its own round trip");
        let _ = source::blob_key(&p.etag);
        let _ = source::load_blob(&p, blob);
    }
    let written = Pointer::for_blob(blob, "", "2026-01-01T00:00:00Z", "push");
    let accepted = Pointer::parse(written.to_json().as_bytes());
    assert_eq!(accepted.as_ref(), Ok(&written), "a pointer edgeflag writes must be one it accepts");
    if let Ok(snap) = source::load_blob(&written, blob) {
        assert_eq!(snap.etag, written.etag, "a loaded blob serves under the pointer's etag");
    }
}

/// Resolve tokens: the first byte picks how the rest is used. 0: opened as
/// a token under the fixed key. Otherwise: decoded as a `ResolveTokenV1`,
/// sealed, and it must open to the same token.
pub fn token(data: &[u8]) {
    let Some(keys) = token_keys() else {
        return;
    };
    match data.split_first() {
        Some((0, rest)) => {
            let _ = token::open(&keys, TOKEN_CREDENTIAL, rest);
        }
        Some((_, rest)) => {
            let Ok(t) = ResolveTokenV1::decode(rest) else {
                return;
            };
            let sealed = token::seal(&keys, &[7; token::NONCE_LEN], TOKEN_CREDENTIAL, t.clone());
            let opened = token::open(&keys, TOKEN_CREDENTIAL, &sealed);
            // A token too big to be accepted back is refused, not mangled.
            if sealed.len() <= token::MAX_TOKEN_BYTES {
                assert_eq!(opened.ok(), Some(t), "a sealed token opens to itself");
            }
            let other = token::open(&keys, "clients/other/credentials/x", &sealed);
            assert!(other.is_err(), "a token opens only for its own credential");
        }
        None => {}
    }
}

/// The targeting evaluator: `data` is the `evaluationContext` of a resolve
/// request (parsed by the route's own parser) resolved against `snap`
/// (the conformance state) for every flag of its clients.
pub fn evaluate(snap: &Snapshot, data: &[u8]) {
    let mut body = Vec::with_capacity(data.len() + 64);
    body.extend_from_slice(br#"{"clientSecret":"fuzz","evaluationContext":"#);
    body.extend_from_slice(data);
    body.push(b'}');
    let Ok(req) = api::parse_resolve_request(&body) else {
        return;
    };
    let ctx = req.evaluation_context.unwrap_or_default();
    for secret in EVALUATE_SECRETS {
        resolve_all(snap, secret, &ctx);
    }
}

/// The conformance suite's state, which the `evaluate` target runs against.
pub fn conformance_state() -> Result<Snapshot, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Snapshot::load(&bytes, None, None).map_err(|e| format!("{path}: {e}"))
}

/// The conformance state's client secrets.
const EVALUATE_SECRETS: &[&str] = &["test-secret", "minimal-secret"];
pub const TOKEN_CREDENTIAL: &str = "clients/fuzz/credentials/fuzz";
/// A fixed 32-byte key (base64); only ever used by fuzzing.
pub const TOKEN_KEY: &str = "ZnV6ei1rZXktZnV6ei1rZXktZnV6ei1rZXktZnV6ei0=";

pub fn token_keys() -> Option<TokenKeys> {
    TokenKeys::from_config(TOKEN_KEY, None).ok()
}

/// Every flag of the client, each sticky mode, written out as every
/// protocol would.
fn resolve_all(snap: &Snapshot, secret: &str, ctx: &crate::proto::wkt::Struct) {
    let req = resolve::Request { flags: &[], context: ctx, client_secret: secret };
    let empty = StickySet::new();
    for sticky in [Sticky::Unsupported, Sticky::Discover, Sticky::Known(&empty)] {
        let Ok(res) = resolve::resolve(snap, &req, sticky, None) else {
            continue;
        };
        let mut out = Vec::new();
        api::write_resolve_response(&mut out, &res, "fuzz", None, None);
        let client = &res.credential.client;
        let _ = ofrep::bulk(snap, client, &res.flags);
        for f in &res.flags {
            if let Ok(key) = ofrep::parse_key(f.flag.name()) {
                let _ = ofrep::single(snap, client, &key, Some(f));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixed_token_key_is_valid() {
        assert!(super::token_keys().is_some());
    }
}
