//! The embedded demo state: it loads cleanly and its flags behave as the
//! README describes.
// Test code: a panic is a test failure, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use edgeflag::api;
use edgeflag::resolve::{self, sticky::Sticky, sticky::StickySet};
use edgeflag::state::snapshot::Snapshot;
use serde_json::{json, Value};

fn snapshot() -> Snapshot {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/src/demo_state.json")).expect("demo state");
    Snapshot::load(&bytes, None, None).expect("demo state loads")
}

fn resolve(snap: &Snapshot, secret: &str, ctx: Value, sticky: Sticky<'_>) -> Value {
    let body = serde_json::to_vec(&json!({"clientSecret": secret, "evaluationContext": ctx})).expect("json");
    let req = api::parse_resolve_request(&body).expect("request");
    let ctx = req.evaluation_context.clone().unwrap_or_default();
    let r = resolve::Request { flags: &req.flags, context: &ctx, client_secret: &req.client_secret };
    let res = resolve::resolve(snap, &r, sticky, None).expect("resolves");
    let mut out = Vec::new();
    api::write_resolve_response(&mut out, &res, "id", None, None);
    serde_json::from_slice(&out).expect("response json")
}

fn flag<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["resolvedFlags"].as_array().and_then(|a| a.iter().find(|f| f["flag"] == name)).expect(name)
}

#[test]
fn demo_state_loads_without_warnings() {
    let snap = snapshot();
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    assert_eq!(snap.account_id, "edgeflag-demo");
    assert_eq!(snap.stats.flags, 6);
    assert_eq!(snap.stats.active_flags, 5);
}

#[test]
fn demo_flags_resolve_as_documented() {
    let snap = snapshot();
    let set = StickySet::new();
    let se = resolve(&snap, "demo-secret", json!({"targeting_key": "user-1", "country": "SE"}), Sticky::Known(&set));
    assert_eq!(se["resolvedFlags"].as_array().map(Vec::len), Some(5), "archived flag left out: {se}");
    assert_eq!(flag(&se, "flags/welcome-banner")["value"]["message"], "Hej och välkommen!");
    let us = resolve(&snap, "demo-secret", json!({"targeting_key": "user-1", "country": "US"}), Sticky::Known(&set));
    assert_eq!(flag(&us, "flags/welcome-banner")["value"]["message"], "Welcome!");
    // Staging credential: the staging rule gives everyone the new checkout.
    let st = resolve(&snap, "demo-staging-secret", json!({"targeting_key": "user-1"}), Sticky::Known(&set));
    assert_eq!(flag(&st, "flags/new-checkout")["variant"], "flags/new-checkout/variants/on");
    // Schema null-filling: `steps` is null for the off variant.
    let mut saw_off = false;
    for i in 0..200 {
        let r = resolve(&snap, "demo-secret", json!({"targeting_key": format!("user-{i}")}), Sticky::Known(&set));
        let f = flag(&r, "flags/new-checkout");
        if f["variant"] == "flags/new-checkout/variants/off" {
            assert!(f["value"]["steps"].is_null() && f["value"].get("steps").is_some());
            saw_off = true;
        }
    }
    assert!(saw_off);
    // Version targeting and client default.
    let old =
        resolve(&snap, "demo-secret", json!({"targeting_key": "u", "app": {"version": "1.9.3"}}), Sticky::Known(&set));
    assert_eq!(flag(&old, "flags/dark-mode")["reason"], "RESOLVE_REASON_NO_SEGMENT_MATCH");
}

#[test]
fn sticky_experiment_needs_a_store_and_keeps_its_variant() {
    let snap = snapshot();
    let ctx = json!({"targeting_key": "user-7", "plan": "premium"});
    let none = resolve(&snap, "demo-secret", ctx.clone(), Sticky::Unsupported);
    assert_eq!(flag(&none, "flags/pricing-experiment")["reason"], "RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED");
    // A unit stored with the discount variant keeps it even after leaving the segment.
    let mut set = StickySet::new();
    set.insert(
        "user-7",
        "materializations/pricing-experiment",
        "flags/pricing-experiment/rules/premium-ab",
        "flags/pricing-experiment/variants/discount",
    );
    let kept = resolve(&snap, "demo-secret", json!({"targeting_key": "user-7", "plan": "free"}), Sticky::Known(&set));
    assert_eq!(flag(&kept, "flags/pricing-experiment")["variant"], "flags/pricing-experiment/variants/discount");
}
