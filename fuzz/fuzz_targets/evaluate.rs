#![no_main]
use edgeflag::state::snapshot::Snapshot;
use std::sync::LazyLock;

static STATE: LazyLock<Snapshot> =
    LazyLock::new(|| edgeflag::fuzzing::conformance_state().unwrap_or_else(|e| panic!("{e}")));

libfuzzer_sys::fuzz_target!(init: { LazyLock::force(&STATE); }, |data: &[u8]| edgeflag::fuzzing::evaluate(&STATE, data));
