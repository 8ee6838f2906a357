//! The state part of a cold isolate's first request, natively: decoding and
//! indexing each state the way the Worker loads it (bench.sh `cold`).
//!
//! ```text
//! cargo run --release --example cold_load -- [RUNS]
//! ```
//!
//! Each row times whole loads of fresh bytes (median [min-max] ms over RUNS,
//! default 15): as embedded (`Snapshot::load_static`, bitsets validated at
//! build time so inflated on first use, the bundle's protobuf envelope) and
//! as read from KV (`Snapshot::load`, every bitset inflated). Then the
//! first demo resolve's JSON: parsing the request and writing the response.
//! Native code is not the isolate's (wasm runs it slower, and compiles each
//! function on its first call): these are the floor of that step.
// Benchmark tool, never shipped: a panic aborts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

#[path = "synth.rs"]
mod synth;

use edgeflag::api;
use edgeflag::proto::wkt::Struct;
use edgeflag::resolve::sticky::{Sticky, StickySet};
use edgeflag::resolve::{self, Request};
use edgeflag::state::formats::{decode, decode_static, encode_envelope, encode_pb};
use edgeflag::state::snapshot::{BitsetCheck, LoadOptions, Snapshot};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

/// The account the bare protobuf states are loaded with (they carry none).
const ACCOUNT: &str = "bench-account";

fn spread(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let mid = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
    format!("{mid:.3} [{:.3}-{:.3}]", ms[0], ms[n - 1])
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> String {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    spread(ms)
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(15).clamp(1, 1000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    // The demo as build-worker.sh embeds it: converted to the envelope.
    let demo_json = std::fs::read(root.join("src/demo_state.json")).expect("demo state");
    let demo = decode(&demo_json, None).expect("demo decodes");
    let demo_env = encode_envelope(&demo.state, demo.account_id.as_deref().unwrap_or("demo"), &[]);
    let real =
        std::fs::read(root.join("../shared/states/resolver_state.pb")).expect("../shared/states/resolver_state.pb");
    let cfg = synth::Config { flags: 200, segments: 10, target_bytes: 5_000_000, ..Default::default() };
    let big = encode_pb(&synth::generate(&cfg).0);

    println!(
        "| state | bytes | as embedded ms (deferred bitsets) | of which protobuf decode ms | from KV ms (all bitsets inflated) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (label, bytes, account) in [
        ("demo (envelope)", &demo_env, None),
        ("real 3-flag (resolver_state.pb)", &real, Some(ACCOUNT)),
        ("generated 5 MB (pb)", &big, Some(synth::ACCOUNT)),
    ] {
        let leaked: &'static [u8] = Box::leak(bytes.clone().into_boxed_slice());
        let embedded =
            LoadOptions { account, etag: Some("build-time"), bitsets: BitsetCheck::Deferred, ..LoadOptions::default() };
        let static_ms = time_ms(runs, || {
            black_box(Snapshot::load_static(black_box(leaked), embedded).expect("loads"));
        });
        let decode_ms = time_ms(runs, || {
            black_box(decode_static(black_box(leaked), None).expect("decodes"));
        });
        let kv_ms = time_ms(runs, || {
            black_box(Snapshot::load(black_box(bytes), None, account).expect("loads"));
        });
        println!("| {label} | {} | {static_ms} | {decode_ms} | {kv_ms} |", bytes.len());
    }

    let snap = Snapshot::load(&demo_env, None, None).expect("demo loads");
    let secret = demo
        .state
        .client_credentials
        .iter()
        .find_map(|c| match &c.credential {
            Some(edgeflag::proto::iam::client_credential::Credential::ClientSecret(s)) => Some(s.secret.clone()),
            _ => None,
        })
        .expect("demo has a client secret");
    let body = serde_json::json!({
        "flags": [],
        "evaluationContext": {"targeting_key": "user-1", "country": "SE"},
        "clientSecret": secret,
        "apply": false,
    })
    .to_string()
    .into_bytes();
    let sticky = StickySet::new();
    let empty = Struct::default();
    let mut first = None;
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let parsed = api::parse_resolve_request(black_box(&body)).expect("parses");
        let req = Request {
            flags: &parsed.flags,
            context: parsed.evaluation_context.as_ref().unwrap_or(&empty),
            client_secret: &parsed.client_secret,
        };
        let res = resolve::resolve(&snap, &req, Sticky::Known(&sticky), None).expect("resolves");
        let mut out = Vec::new();
        api::write_resolve_response(&mut out, &res, "resolve-id", None, None);
        black_box(&out);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        first.get_or_insert(ms);
        all.push(ms);
    }
    println!();
    println!(
        "Demo resolve, JSON in and out (parse, resolve all flags, write): first {:.3} ms, then {} ms",
        first.unwrap_or_default(),
        spread(all)
    );
}
