//! Writes the seed corpora under fuzz/corpus/<target>/ (one file per input,
//! named by a hash of its bytes, so reruns add nothing twice): requests and
//! contexts of the conformance suite, the demo and suite states in every
//! format, real tokens under the fuzzing key, and hostile bodies like those
//! of the e2e bad-input tests. `cargo run --example fuzz_seeds`.

use edgeflag::fuzzing;
use edgeflag::proto::resolver::ResolveTokenV1;
use edgeflag::resolve::{self, sticky::Sticky, sticky::StickySet};
use edgeflag::state::{formats, snapshot::Snapshot, source::Pointer};
use edgeflag::token;
use prost::Message;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = Path::new(ROOT).join("../shared/conformance/resolver-spec");
    let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(spec.join("tests.json"))?)?;
    let suite_state = std::fs::read(spec.join("state.json"))?;
    let demo_state = std::fs::read(Path::new(ROOT).join("src/demo_state.json"))?;
    let mut out = Seeds::default();

    // Requests and contexts from the suite.
    for case in &cases {
        let req = &case["resolveRequest"];
        out.add("resolve_request", serde_json::to_vec(req)?);
        let ctx = req.get("evaluationContext").cloned().unwrap_or(json!({}));
        out.add("evaluate", serde_json::to_vec(&ctx)?);
        let mut ofrep_ctx = ctx.as_object().cloned().unwrap_or_default();
        if let Some(key) = ofrep_ctx.remove("targeting_key") {
            ofrep_ctx.insert("targetingKey".into(), key);
        }
        out.add("ofrep", serde_json::to_vec(&json!({ "context": ofrep_ctx }))?);
        for flag in req["flags"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            out.add("ofrep", flag.as_bytes().to_vec());
            let short = flag.strip_prefix("flags/").unwrap_or(flag);
            out.add("ofrep", format!("{short}.a.b").into_bytes());
            out.add("ofrep", short.replace('-', "%2D").into_bytes());
        }
    }
    for raw in HOSTILE {
        for target in ["resolve_request", "apply_request", "ofrep", "evaluate"] {
            out.add(target, raw.to_vec());
        }
    }
    for key in ["flags%2Fx", "x%2Fy", "%FF%FE", "a..b", ".", "x.", "%", "%zz", "flags/"] {
        out.add("ofrep", key.as_bytes().to_vec());
    }
    out.add("evaluate", deep(200).into_bytes());

    // States in every format.
    for bytes in [&demo_state, &suite_state] {
        out.add("state", bytes.clone());
        let decoded = formats::decode(bytes, None).map_err(|e| e.to_string())?;
        let account = decoded.account_id.clone().unwrap_or_else(|| "demo".into());
        out.add("state", formats::encode_pb(&decoded.state));
        out.add("state", formats::encode_envelope(&decoded.state, &account, &decoded.log_destinations));
        out.add("state", formats::to_proto_json(&decoded.state).map_err(|e| e.to_string())?.into_bytes());
        // STATE_KV as a refresh reads it: the pointer, a newline, the blob.
        let blob = formats::encode_envelope(&decoded.state, &account, &decoded.log_destinations);
        let pointer = Pointer::for_blob(&blob, &account, "2026-01-01T00:00:00Z", "push").to_json();
        out.add("state_pointer", [pointer.as_bytes(), b"\n", &blob].concat());
        out.add("state_pointer", [pointer.as_bytes(), b"\n", blob.get(..blob.len() / 2).unwrap_or_default()].concat());
        out.add("state_pointer", pointer.into_bytes());
    }
    out.add("state_pointer", br#"{"etag":"00","bytes":0,"sha256":"","account":"","pushedAt":"","source":""}"#.to_vec());

    // Tokens: real resolutions of the suite, sealed under the fuzzing key.
    let keys = fuzzing::token_keys().ok_or("the fuzzing token key is invalid")?;
    let snap = Snapshot::load(&suite_state, None, None).map_err(|e| e.to_string())?;
    for case in cases.iter().step_by(8) {
        let req = edgeflag::api::parse_resolve_request(&serde_json::to_vec(&case["resolveRequest"])?)
            .map_err(|e| e.to_json())?;
        let ctx = req.evaluation_context.clone().unwrap_or_default();
        let r = resolve::Request { flags: &req.flags, context: &ctx, client_secret: &req.client_secret };
        let empty = StickySet::new();
        let Ok(res) = resolve::resolve(&snap, &r, Sticky::Known(&empty), None) else { continue };
        let sealed = token::for_resolution(&keys, &[1; token::NONCE_LEN], &res, "resolve-id", "acct");
        let plain = token::open(&keys, &res.credential.credential, &sealed).map_err(|e| format!("{e:?}"))?;
        out.add("token", [&[1u8][..], &plain.encode_to_vec()].concat());
        let for_fuzz = token::seal(&keys, &[2; token::NONCE_LEN], fuzzing::TOKEN_CREDENTIAL, plain.clone());
        out.add("token", [&[0u8][..], &for_fuzz].concat());
        let flags: Vec<Value> =
            res.flags.iter().map(|f| json!({"flag": f.flag.name(), "applyTime": "2026-01-01T00:00:00Z"})).collect();
        let body = json!({
            "clientSecret": req.client_secret,
            "resolveToken": base64_std(&for_fuzz),
            "sendTime": "2026-01-01T00:00:01.5Z",
            "flags": flags,
            "sdk": {"id": "SDK_ID_PYTHON_CONFIDENCE", "version": "1.0.0"},
        });
        out.add("apply_request", serde_json::to_vec(&body)?);
    }
    out.add("token", [&[1u8][..], &ResolveTokenV1::default().encode_to_vec()].concat());
    out.add("token", vec![0]);

    let total = out.write(&Path::new(ROOT).join("fuzz/corpus"))?;
    println!("fuzz seeds: {} files, {total} bytes", out.files.len());
    Ok(())
}

/// Bodies the e2e bad-input tests send, and their kin.
const HOSTILE: &[&[u8]] = &[
    b"",
    b"{}",
    b"null",
    b"[]",
    b"\xEF\xBB\xBF{}",
    br#"{"clientSecret": "demo-secret", "clientSecret": "demo-secret"}"#,
    br#"{"clientSecret": "demo-secret",}"#,
    b"{\"clientSecret\": \"demo-secret\", \"evaluationContext\": {\"targeting_key\": \"\xc3\x28\xff\"}}",
    br#"{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\ud800"}}"#,
    br#"{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\u00"}}"#,
    br#"{"clientSecret": [], "flags": 1, "apply": {}, "evaluationContext": false, "sdk": 0.5}"#,
    br#"{"clientSecret": "s", "sdk": {"id": 12345678901234567890, "version": []}}"#,
    br#"{"context": {"targetingKey": 7, "n": 1e400, "m": -0.0, "l": [null, true, {"a": []}]}}"#,
    br#"{"targeting_key": 12345678901234567890123, "x": 1.5e308}"#,
    br#"{"resolveToken": "!!!", "flags": [{"flag": "flags/x", "applyTime": "not-a-time"}], "sendTime": "2026-13-99T99:99:99Z"}"#,
];

fn deep(n: usize) -> String {
    format!("{{\"targeting_key\":\"u\",\"d\":{}1{}}}", "[".repeat(n), "]".repeat(n))
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Default)]
struct Seeds {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Seeds {
    fn add(&mut self, target: &str, bytes: Vec<u8>) {
        let name = format!("seed-{:016x}", fastmurmur3::hash(&bytes) as u64);
        self.files.push((PathBuf::from(target).join(name), bytes));
    }

    fn write(&self, dir: &Path) -> std::io::Result<usize> {
        let mut total = 0;
        for (path, bytes) in &self.files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !path.exists() {
                std::fs::write(&path, bytes)?;
            }
            total += bytes.len();
        }
        Ok(total)
    }
}
