//! Sticky reads that failed: unavailable is neither present nor absent.

use super::sticky::{Sticky, StickySet};
use super::*;
use crate::state::snapshot::Snapshot;

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");

fn snapshot() -> Snapshot {
    Snapshot::load(&std::fs::read(STATE).expect("conformance state"), None, None).expect("state loads")
}

/// (flag, reason, variant) per flag, and the writes, for user1 in SE.
fn run(
    snap: &Snapshot,
    flags: &[&str],
    country: &str,
    set: &StickySet,
) -> (Vec<(String, ResolveReason, String)>, Vec<Record>) {
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let ctx: Struct =
        serde_json::from_str(&format!(r#"{{"targeting_key":"user1","country":"{country}"}}"#)).expect("context");
    let req = Request { flags: &flags, context: &ctx, client_secret: "test-secret" };
    let res = resolve(snap, &req, Sticky::Known(set), None).expect("resolves");
    let out = res
        .flags
        .iter()
        .map(|f| {
            let v = f.assigned.as_ref().and_then(|a| a.variant).map(|v| v.name.clone()).unwrap_or_default();
            (f.flag.name().to_string(), f.reason, v)
        })
        .collect();
    (out, res.writes)
}

const READ_FLAG: &str = "flags/mat-read-flag";
const MAT1: &str = "materializations/mat1";

#[test]
fn an_absent_record_assigns_afresh_and_writes() {
    let snap = snapshot();
    let (flags, writes) = run(&snap, &[READ_FLAG], "SE", &StickySet::new());
    assert_eq!(flags, vec![(READ_FLAG.into(), ResolveReason::Match, "control".into())]);
    assert_eq!(writes.len(), 1, "absent: the new assignment is stored");
}

#[test]
fn an_unavailable_read_decides_nothing_and_writes_nothing() {
    let snap = snapshot();
    let mut set = StickySet::new();
    set.mark_unavailable("user1", MAT1);
    let (flags, writes) = run(&snap, &[READ_FLAG, "flags/simple-flag"], "SE", &set);
    assert_eq!(
        flags,
        vec![
            (READ_FLAG.into(), ResolveReason::MaterializationNotSupported, String::new()),
            ("flags/simple-flag".into(), ResolveReason::Match, "on".into()),
        ],
        "only the flag that needs the failed read is affected"
    );
    assert!(writes.is_empty(), "a guess must not overwrite what the store may hold: {writes:?}");
}

#[test]
fn a_failed_read_replaces_what_was_known_of_that_pair() {
    let snap = snapshot();
    let mut set = StickySet::new();
    set.insert("user1", MAT1, "flags/mat-read-flag/rules/rule1", "treatment");
    set.mark_unavailable("user1", MAT1);
    assert!(!set.is_empty());
    assert_eq!(set.lookup("user1", MAT1, ""), None);
    assert_eq!(run(&snap, &[READ_FLAG], "SE", &set).0[0].1, ResolveReason::MaterializationNotSupported);
}

#[test]
fn an_unavailable_membership_criterion_is_not_supported_too() {
    let snap = snapshot();
    let mut set = StickySet::new();
    set.mark_unavailable("user1", "materializations/mat-seg");
    let (flags, writes) = run(&snap, &["flags/mat-criterion-flag"], "SE", &set);
    assert_eq!(
        flags,
        vec![("flags/mat-criterion-flag".into(), ResolveReason::MaterializationNotSupported, String::new())]
    );
    assert!(writes.is_empty());
}

#[test]
fn another_units_failure_changes_nothing() {
    let snap = snapshot();
    let mut set = StickySet::new();
    set.mark_unavailable("user2", MAT1);
    set.mark_unavailable("user1", "materializations/mat-seg");
    set.insert("user1", MAT1, "flags/mat-read-flag/rules/rule1", "treatment");
    let (flags, _) = run(&snap, &[READ_FLAG], "SE", &set);
    assert_eq!(flags, vec![(READ_FLAG.into(), ResolveReason::Match, "treatment".into())]);
}

#[test]
fn a_sticky_hit_does_not_rewrite_the_record_it_read() {
    let snap = snapshot();
    // First resolve: nothing stored, so the assignment is written.
    let (first, writes) = run(&snap, &[READ_FLAG], "SE", &StickySet::new());
    let [w] = writes.as_slice() else { panic!("one write, got {writes:?}") };
    // Second resolve with that record stored: the same variant, no write.
    let set = StickySet::from_records([w]);
    let (again, rewrites) = run(&snap, &[READ_FLAG], "SE", &set);
    assert_eq!(again, first);
    assert!(rewrites.is_empty(), "a sticky hit rewrote {rewrites:?}");
    // A stored record of another variant (the allocation moved) still wins,
    // and is not rewritten either.
    let other = Record { variant: "treatment".into(), ..w.clone() };
    let (moved, rewrites) = run(&snap, &[READ_FLAG], "SE", &StickySet::from_records([&other]));
    assert_eq!(moved, vec![(READ_FLAG.into(), ResolveReason::Match, "treatment".into())]);
    assert!(rewrites.is_empty(), "{rewrites:?}");
}
