//! Replays every saved fuzz input (fuzz/corpus/<target>/ and the crash
//! inputs kept in fuzz/regressions/<target>/) through the function its fuzz
//! target calls, on stable: a panic on any of them fails `cargo test`.

// A test fails by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use edgeflag::fuzzing;
use edgeflag::state::snapshot::Snapshot;
use std::path::Path;
use std::sync::LazyLock;

static STATE: LazyLock<Snapshot> = LazyLock::new(|| fuzzing::conformance_state().unwrap_or_else(|e| panic!("{e}")));

fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut paths: Vec<_> = entries.map(|e| e.expect("readable corpus dir").path()).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| fuzzing::run(target, &STATE, &data));
            match outcome {
                Ok(known) => assert!(known, "{target}: no such fuzz target"),
                Err(_) => panic!("{target}: {} panics", path.display()),
            }
            count += 1;
        }
    }
    assert!(count > 0, "{target}: no saved inputs under fuzz/corpus/{target}/");
}

#[test]
fn every_target_has_a_test_here() {
    let mut here = vec!["resolve_request", "apply_request", "ofrep", "state", "state_pointer", "token", "evaluate"];
    let mut all = fuzzing::TARGETS.to_vec();
    here.sort();
    all.sort();
    assert_eq!(here, all);
}

#[test]
fn resolve_request() {
    replay("resolve_request");
}

#[test]
fn apply_request() {
    replay("apply_request");
}

#[test]
fn ofrep() {
    replay("ofrep");
}

#[test]
fn state_pointer() {
    replay("state_pointer");
}

#[test]
fn state() {
    replay("state");
}

#[test]
fn token() {
    replay("token");
}

#[test]
fn evaluate() {
    replay("evaluate");
}
