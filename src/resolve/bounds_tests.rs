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
        assert!(api.message.contains("deeper than 126 levels"), "{}", api.message);
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

/// The suite state with `n` segments chained by reference (`chain-0` ->
/// ... -> `chain-{n-1}` -> `country-se`), and `flags/simple-flag`'s rule
/// on `chain-0`.
fn chained_state(n: usize) -> Json {
    let mut state = suite_state();
    for i in 0..n {
        let next = if i + 1 == n { "segments/country-se".to_string() } else { format!("segments/chain-{}", i + 1) };
        let name = format!("segments/chain-{i}");
        state["segments"][&name] = json!({
            "name": name, "state": "OK",
            "targeting": {"criteria": {"c1": {"segment": {"segment": next}}}, "expression": {"ref": "c1"}},
        });
    }
    state["flags"]["flags/simple-flag"]["rules"][0]["segment"] = json!("segments/chain-0");
    state
}

fn reason_in_se(snap: &Snapshot) -> ResolveReason {
    let ctx: Struct = serde_json::from_str(r#"{"targeting_key":"user1","country":"SE"}"#).expect("context");
    let flags = vec!["flags/simple-flag".to_string()];
    let req = Request { flags: &flags, context: &ctx, client_secret: "test-secret" };
    let res = resolve(snap, &req, Sticky::Unsupported, None).expect("resolves");
    res.flags.first().expect("one flag").reason
}

#[test]
fn a_segment_chain_at_the_depth_bound_loads_and_matches() {
    let snap = load(&chained_state(targeting::MAX_DEPTH)).expect("64 nested segments load");
    assert_eq!(reason_in_se(&snap), ResolveReason::Match);
}

#[test]
fn a_segment_chain_past_the_depth_bound_is_refused_at_load_by_name() {
    let err = load(&chained_state(targeting::MAX_DEPTH + 1)).expect_err("65 nested segments");
    assert!(
        err.contains(
            "segment segments/chain-0: targeting nests deeper than 64 levels, counting the segments it references"
        ),
        "{err}"
    );
    assert!(!err.contains("segments/chain-1:"), "only the chain's head is too deep: {err}");
    // A chain far longer than the bound: refused, and the check's own walk
    // stops at the bound instead of following every reference.
    let err = load(&chained_state(5_000)).expect_err("5k nested segments");
    assert!(err.contains("deeper than 64 levels"), "{err}");
}

#[test]
fn an_expression_past_the_depth_bound_is_refused_at_load() {
    let nots = |n: usize| {
        let mut e = json!({"ref": "c1"});
        for _ in 0..n {
            e = json!({"not": e});
        }
        e
    };
    let mut state = suite_state();
    let mut seg = state["segments"]["segments/country-se"].clone();
    seg["name"] = json!("segments/deep-not");
    state["flags"]["flags/simple-flag"]["rules"][0]["segment"] = json!("segments/deep-not");
    // Two NOTs cancel, so an even count still matches SE.
    seg["targeting"]["expression"] = nots(64);
    state["segments"]["segments/deep-not"] = seg.clone();
    let snap = load(&state).expect("64 levels load");
    assert_eq!(reason_in_se(&snap), ResolveReason::Match);
    seg["targeting"]["expression"] = nots(65);
    state["segments"]["segments/deep-not"] = seg;
    let err = load(&state).expect_err("65 levels");
    assert!(err.contains("segment segments/deep-not: targeting nests deeper than 64"), "{err}");
}

#[test]
fn evaluation_past_the_depth_bound_is_an_error_without_recursing_further() {
    use crate::proto::types::{expression, Expression};
    let mut e = Expression { expression: Some(expression::Expression::Ref("c1".into())) };
    for _ in 0..10_000 {
        e = Expression { expression: Some(expression::Expression::Not(Box::new(e))) };
    }
    let mut leaves = 0;
    let r = targeting::eval_expression(
        &e,
        &Default::default(),
        &mut |_, _| {
            leaves += 1;
            Ok(targeting::Tri::True)
        },
        0,
    );
    assert_eq!(r, Err(targeting::EvalError::Unrecognized), "an error, so the NOT above cannot invert it");
    assert_eq!(leaves, 0);
    // Iterative: measuring it does not recurse either.
    assert_eq!(targeting::nesting_depth(&e, &Default::default(), &mut |_| 0), 10_000);
    // Dropping 10k nested boxes recurses in Drop; keep it off this thread's stack.
    std::mem::forget(e);
}

#[test]
fn a_variant_value_past_the_depth_bound_is_refused_at_load() {
    let nested = |levels: usize| {
        let mut v = json!({});
        for _ in 1..levels {
            v = json!({ "n": v });
        }
        v
    };
    let max = crate::state::snapshot::MAX_VALUE_DEPTH;
    let mut state = suite_state();
    state["flags"]["flags/simple-flag"]["variants"][0]["value"] = nested(max);
    let snap = load(&state).expect("a value at the bound loads");
    assert_eq!(reason_in_se(&snap), ResolveReason::Match);
    state["flags"]["flags/simple-flag"]["variants"][0]["value"] = nested(max + 1);
    let err = load(&state).expect_err("one level deeper");
    assert!(err.contains("flags/simple-flag: variant on value nests deeper than 64 levels"), "{err}");
}

#[test]
fn the_shared_depth_check_counts_structs_and_lists_from_one() {
    let s: Struct = serde_json::from_str(r#"{"a":[{"b":[]}]}"#).expect("struct");
    assert!(!crate::proto::struct_nests_deeper_than(&s, 4));
    assert!(crate::proto::struct_nests_deeper_than(&s, 3));
    assert!(!crate::proto::struct_nests_deeper_than(&Struct::default(), 1));
    assert!(crate::proto::struct_nests_deeper_than(&Struct::default(), 0));
}
