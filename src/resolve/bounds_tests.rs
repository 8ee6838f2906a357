//! Bounds on untrusted input: bucket counts, context depth, segment chains.

use super::sticky::Sticky;
use super::*;
use crate::state::snapshot::Snapshot;
use serde_json::{json, Value as Json};

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");

fn suite_state() -> Json {
    serde_json::from_slice(&std::fs::read(STATE).expect("conformance state")).expect("state JSON")
}

fn load(state: &Json) -> Result<Snapshot, String> {
    Snapshot::load(&serde_json::to_vec(state).expect("json"), None, None).map_err(|e| e.to_string())
}

/// A context of exactly `depth` levels: the object itself, then nested
/// objects (or lists, with `list`) down to an empty one.
fn nested_context(depth: usize, list: bool) -> String {
    let (open, close, empty) = if list { ("[", "]", "[]") } else { (r#"{"n":"#, "}", "{}") };
    let inner = depth.saturating_sub(2);
    format!(r#"{{"targeting_key":"user1","n":{}{empty}{}}}"#, open.repeat(inner), close.repeat(inner))
}

fn resolve_with(snap: &Snapshot, ctx: &Struct) -> Result<usize, ResolveError> {
    let flags = vec!["flags/simple-flag".to_string()];
    let req = Request { flags: &flags, context: ctx, client_secret: "test-secret" };
    resolve(snap, &req, Sticky::Unsupported, None).map(|r| r.flags.len())
}

#[test]
fn a_zero_or_missing_bucket_count_is_refused_at_load() {
    let mut state = suite_state();
    state["flags"]["flags/simple-flag"]["rules"][0]["assignmentSpec"]["bucketCount"] = json!(0);
    let err = load(&state).expect_err("a zero bucket count must not load");
    assert!(err.contains("bucket count 0 must be positive"), "{err}");

    let mut state = suite_state();
    let spec = &mut state["flags"]["flags/simple-flag"]["rules"][0]["assignmentSpec"];
    spec.as_object_mut().expect("spec").remove("bucketCount");
    let err = load(&state).expect_err("an absent bucket count is zero");
    assert!(err.contains("bucket count 0 must be positive"), "{err}");
}

#[test]
fn bucketing_by_a_zero_count_cannot_divide_by_zero() {
    // The loader refuses it; the hash still answers rather than panicking.
    assert_eq!(hash::bucket_of(u64::MAX, 0), 0);
    assert_eq!(hash::bucket("seg", "user", 0), 0);
    let long = "u".repeat(10_000);
    assert!(hash::bucket("seg", &long, 1000) < 1000, "keys past the stack buffer hash too");
}

#[test]
fn a_context_at_the_depth_bound_resolves_and_one_deeper_is_refused() {
    let snap = load(&suite_state()).expect("state loads");
    for list in [false, true] {
        let ok: Struct = serde_json::from_str(&nested_context(MAX_CONTEXT_DEPTH, list)).expect("context");
        assert!(!context_too_deep(&ok));
        assert_eq!(resolve_with(&snap, &ok), Ok(1), "list={list}");

        let deep: Struct = serde_json::from_str(&nested_context(MAX_CONTEXT_DEPTH + 1, list)).expect("context");
        assert!(context_too_deep(&deep));
        let err = resolve_with(&snap, &deep).expect_err("too deep");
        assert_eq!(err, ResolveError::ContextTooDeep);
        let api = crate::api::ApiError::from(err);
        assert_eq!((api.status, api.code), (400, "INVALID_ARGUMENT"));
        assert!(api.message.contains("deeper than 32 levels"), "{}", api.message);
    }
}

#[test]
fn a_request_nested_far_past_any_bound_is_a_clear_400_not_a_stack_overflow() {
    // Just under the body limit: 100k levels of lists.
    let ctx = nested_context(100_000, true);
    let body = format!(r#"{{"flags":["flags/simple-flag"],"clientSecret":"test-secret","evaluationContext":{ctx}}}"#);
    let err = crate::api::parse_resolve_request(body.as_bytes()).expect_err("too deep to parse");
    assert_eq!(err.status, 400);
    assert!(err.message.contains("recursion limit exceeded"), "{}", err.message);
}
