//! The Confidence resolver-spec conformance suite (`../shared/conformance/
//! resolver-spec`), one named test per case, against each case's `general`
//! expectation. Each case runs three times: through the library (response
//! JSON as the worker writes it), through the library on the state as the
//! Worker embeds it (a protobuf envelope, segment bitsets inflated on first
//! use, by whichever test thread gets there first), and through the
//! `edgeflag resolve` CLI.
// Test code: a panic is a test failure, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use edgeflag::api;
use edgeflag::resolve::{self, sticky::Sticky, sticky::StickySet};
use edgeflag::state::formats;
use edgeflag::state::snapshot::{BitsetCheck, LoadOptions, Snapshot};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec");

fn main() {
    let args = Arguments::from_args();
    let state_path = format!("{SPEC}/state.json");
    let bytes = std::fs::read(&state_path).unwrap_or_else(|e| panic!("{state_path}: {e}"));
    let snap = Arc::new(Snapshot::load(&bytes, None, None).unwrap_or_else(|e| panic!("{state_path}: {e}")));
    let decoded = formats::decode(&bytes, None).expect("state decodes");
    let account = decoded.account_id.clone().expect("the suite state names its account");
    let envelope = formats::encode_envelope(&decoded.state, &account, &decoded.log_destinations);
    let opts = LoadOptions { bitsets: BitsetCheck::Deferred, ..LoadOptions::default() };
    let deferred = Arc::new(Snapshot::load_with(&envelope, opts).expect("embedded form loads"));
    assert!(deferred.stats.bitsets > 0, "the suite state has gzipped bitsets to defer");
    // The cases alone would not notice a deferred bitset read as empty.
    for (name, seg) in &snap.segments {
        assert_eq!(deferred.segments[name].bitset(), seg.bitset(), "{name}: deferred bits differ");
    }
    let tests: Vec<Value> = serde_json::from_slice(&std::fs::read(format!("{SPEC}/tests.json")).expect("tests.json"))
        .expect("tests.json parses");
    assert_eq!(tests.len(), 166, "the suite has 166 cases");

    let mut trials = Vec::new();
    for case in tests {
        let name = case["name"].as_str().expect("case name").to_string();
        let case = Arc::new(case);
        let (s, c) = (snap.clone(), case.clone());
        trials.push(Trial::test(format!("lib::{name}"), move || run_lib(&s, &c)));
        let (s, c) = (deferred.clone(), case.clone());
        trials.push(Trial::test(format!("embedded::{name}"), move || run_lib(&s, &c)));
        let c = case.clone();
        let state = state_path.clone();
        trials.push(Trial::test(format!("cli::{name}"), move || run_cli(&state, &c)));
    }
    libtest_mimic::run(&args, trials).exit();
}

fn sticky_of(case: &Value) -> Result<StickySet, Failed> {
    match case.get("materializations") {
        Some(m) if !m.is_null() => Ok(StickySet::from_suite_json(m)?),
        _ => Ok(StickySet::new()),
    }
}

fn run_lib(snap: &Snapshot, case: &Value) -> Result<(), Failed> {
    let body = serde_json::to_vec(&case["resolveRequest"])?;
    let req = api::parse_resolve_request(&body).map_err(|e| e.to_string())?;
    let ctx = req.evaluation_context.clone().unwrap_or_default();
    let sticky = sticky_of(case)?;
    let r = resolve::Request { flags: &req.flags, context: &ctx, client_secret: &req.client_secret };
    let res = resolve::resolve(snap, &r, Sticky::Known(&sticky), None).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    api::write_resolve_response(&mut out, &res, "test-resolve-id", None, None);
    let actual: Value = serde_json::from_slice(&out)?;
    let expected = &case["expectedResult"]["general"];
    compare(expected, &actual)?;
    // assignmentId is not part of the response; check it on the result.
    for e in expected["resolvedFlags"].as_array().into_iter().flatten() {
        if let Some(id) = e.get("assignmentId").and_then(Value::as_str) {
            let f = res.flags.iter().find(|f| f.flag.name() == e["flag"]).ok_or("flag missing")?;
            let got = f.assigned.as_ref().map(|a| a.assignment_id).unwrap_or("");
            if got != id {
                return Err(format!("{}: assignmentId {got:?}, expected {id:?}", e["flag"]).into());
            }
        }
    }
    Ok(())
}

fn run_cli(state: &str, case: &Value) -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("edgeflag-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflag"));
    cmd.args(["resolve", "--state", state]);
    if let Some(m) = case.get("materializations").filter(|m| !m.is_null()) {
        let path = dir.join(format!("{}.json", case["name"].as_str().unwrap_or("case")));
        std::fs::write(&path, serde_json::to_vec(m)?)?;
        cmd.arg("--materializations").arg(path);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().ok_or("stdin")?.write_all(&serde_json::to_vec(&case["resolveRequest"])?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("edgeflag resolve failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let actual: Value = serde_json::from_slice(&out.stdout)?;
    compare(&case["expectedResult"]["general"], &actual)
}

/// Numbers compare by value: the resolver writes `12.0` where the suite has `12`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn compare(expected: &Value, actual: &Value) -> Result<(), Failed> {
    if !expected["expectError"].is_null() {
        return Err("the general expectation never expects an error".into());
    }
    let exp = expected["resolvedFlags"].as_array().ok_or("expected resolvedFlags")?;
    let act = actual["resolvedFlags"].as_array().ok_or("response has no resolvedFlags")?;
    if exp.len() != act.len() {
        return Err(format!("{} flags resolved, expected {}: {actual}", act.len(), exp.len()).into());
    }
    for e in exp {
        let name = &e["flag"];
        let a = act.iter().find(|a| &a["flag"] == name).ok_or_else(|| format!("{name} missing from {actual}"))?;
        let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
        if e["reason"] != field("reason") {
            return Err(format!("{name}: reason {}, expected {} ({a})", field("reason"), e["reason"]).into());
        }
        let variant = field("variant");
        let variant = if variant.is_null() { Value::String(String::new()) } else { variant };
        if e["variant"] != variant {
            return Err(format!("{name}: variant {variant}, expected {} ({a})", e["variant"]).into());
        }
        let value = field("value");
        let ok = if e["value"].is_null() {
            value.is_null() || value == serde_json::json!({})
        } else {
            json_eq(&e["value"], &value)
        };
        if !ok {
            return Err(format!("{name}: value {value}, expected {}", e["value"]).into());
        }
        if let Some(sa) = e.get("shouldApply") {
            let got = a.get("shouldApply").cloned().unwrap_or(Value::Bool(false));
            if sa != &got {
                return Err(format!("{name}: shouldApply {got}, expected {sa}").into());
            }
        }
        if let Some(origin) = e.get("assignmentOrigin") {
            let got = a.get("assignmentOrigin").cloned().unwrap_or(Value::String(String::new()));
            if origin != &got {
                return Err(format!("{name}: assignmentOrigin {got}, expected {origin}").into());
            }
        }
    }
    Ok(())
}
