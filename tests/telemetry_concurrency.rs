//! Many threads record real resolves (conformance state and cases) into
//! one static `Telemetry` while another thread checkpoints in a loop, with
//! failed and ambiguous sends and a serving-snapshot swap mid-run. At the
//! end, the sum over all delivered checkpoints must equal exactly what
//! was recorded: per flag/variant/rule/assignment, per reason, latency,
//! and every exposure event in exactly one checkpoint.
// Test code: a panic is a test failure, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use arc_swap::ArcSwap;
use edgeflag::proto::events::{flag_assigned::AppliedFlag, ClientInfo, FlagAssigned};
use edgeflag::proto::resolver::ResolveReason;
use edgeflag::proto::wkt::Struct;
use edgeflag::resolve::{
    self,
    sticky::{Sticky, StickySet},
    Resolution,
};
use edgeflag::state::snapshot::Snapshot;
use edgeflag::telemetry::{
    self, decode_message, histogram, Checkpoint, MetricsSnapshot, Route, Telemetry, MAX_MESSAGES_PER_CHECKPOINT,
    MAX_MESSAGE_BYTES,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec");
const THREADS: usize = 8;
const ITERATIONS: usize = 20_000;
/// Workers let the checkpointer catch up every this many iterations.
const PACE: usize = 2_000;
const ISOLATE: [u8; 16] = *b"edgeflag-test-01";

/// The way the worker holds it: a process-wide static.
static TELEMETRY: Telemetry = Telemetry::new();

struct Case {
    flags: Vec<String>,
    context: Struct,
    secret: String,
    sticky: StickySet,
}

fn load_snapshot() -> Snapshot {
    let path = format!("{SPEC}/state.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Snapshot::load(&bytes, None, None).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load_cases() -> Vec<Case> {
    let tests: Vec<Value> =
        serde_json::from_slice(&std::fs::read(format!("{SPEC}/tests.json")).expect("tests.json")).expect("parses");
    tests
        .iter()
        .map(|case| {
            let body = serde_json::to_vec(&case["resolveRequest"]).expect("request");
            let req = edgeflag::api::parse_resolve_request(&body).expect("valid request");
            let sticky = match case.get("materializations") {
                Some(m) if !m.is_null() => StickySet::from_suite_json(m).expect("materializations"),
                _ => StickySet::new(),
            };
            Case {
                flags: req.flags,
                context: req.evaluation_context.unwrap_or_default(),
                secret: req.client_secret,
                sticky,
            }
        })
        .collect()
}

/// What the threads recorded, computed from the resolutions themselves.
#[derive(Default, Debug, PartialEq)]
struct Expected {
    variants: BTreeMap<(String, String), i64>,
    rules: BTreeMap<(String, String), i64>,
    assignments: BTreeMap<(String, String, String), i64>,
    reasons: BTreeMap<String, u64>,
    latency: histogram::Histogram,
    resolves: u64,
    events: Vec<String>,
}

impl Expected {
    fn add_resolution(&mut self, res: &Resolution<'_, '_>) {
        self.resolves += 1;
        for f in &res.flags {
            let flag = f.flag.name().to_string();
            for ft in &f.fallthroughs {
                *self.rules.entry((flag.clone(), ft.rule.name.clone())).or_default() += 1;
                *self
                    .assignments
                    .entry((flag.clone(), ft.rule.name.clone(), ft.assignment_id.to_string()))
                    .or_default() += 1;
            }
            let variant = match &f.assigned {
                Some(a) => {
                    *self.rules.entry((flag.clone(), a.rule.name.clone())).or_default() += 1;
                    *self
                        .assignments
                        .entry((flag.clone(), a.rule.name.clone(), a.assignment_id.to_string()))
                        .or_default() += 1;
                    a.variant.map(|v| v.name.clone()).unwrap_or_default()
                }
                None => String::new(),
            };
            *self.variants.entry((flag, variant)).or_default() += 1;
            *self.reasons.entry(f.reason.as_str_name().to_string()).or_default() += 1;
        }
    }

    fn add_latency(&mut self, us: u32) {
        self.latency.add_at(histogram::bucket_index(us) as i64, 1);
        self.latency.count += 1;
        self.latency.sum += u64::from(us);
    }

    fn merge(&mut self, o: Expected) {
        for (k, v) in o.variants {
            *self.variants.entry(k).or_default() += v;
        }
        for (k, v) in o.rules {
            *self.rules.entry(k).or_default() += v;
        }
        for (k, v) in o.assignments {
            *self.assignments.entry(k).or_default() += v;
        }
        for (k, v) in o.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        self.latency.merge(&o.latency);
        self.resolves += o.resolves;
        self.events.extend(o.events);
    }
}

fn exposure(id: String, res: &Resolution<'_, '_>) -> FlagAssigned {
    FlagAssigned {
        resolve_id: id,
        client_info: Some(ClientInfo {
            client: res.credential.client.clone(),
            client_credential: res.credential.credential.clone(),
            sdk: None,
        }),
        flags: res
            .flags
            .iter()
            .filter(|f| f.should_apply())
            .map(|f| AppliedFlag { flag: f.flag.name().to_string(), ..Default::default() })
            .collect(),
    }
}

fn worker(
    thread: usize,
    serving: &ArcSwap<Snapshot>,
    cases: &[Case],
    progress: &AtomicUsize,
    rounds: &AtomicUsize,
) -> Expected {
    let mut exp = Expected::default();
    for i in 0..ITERATIONS {
        // Held for the whole iteration, as a request holds its snapshot.
        let snap = serving.load_full();
        let case = &cases[(i * 7 + thread * 13) % cases.len()];
        let secret = if i % 97 == 0 { "no-such-secret" } else { case.secret.as_str() };
        let req = resolve::Request { flags: &case.flags, context: &case.context, client_secret: secret };
        match resolve::resolve(&snap, &req, Sticky::Known(&case.sticky), None) {
            Ok(res) => {
                exp.add_resolution(&res);
                let event = (i % 3 == 0).then(|| {
                    let id = format!("t{thread}-{i}");
                    exp.events.push(id.clone());
                    exposure(id, &res)
                });
                TELEMETRY.record_resolve(&snap, &res, &case.context, event);
                TELEMETRY.record_request(Route::Resolve, 200);
            }
            Err(_) => {
                TELEMETRY.record_failed_resolve();
                *exp.reasons.entry(ResolveReason::Error.as_str_name().to_string()).or_default() += 1;
                TELEMETRY.record_request(Route::Resolve, 500);
            }
        }
        let us = match i % 50 {
            0 => 0,
            1 => u32::MAX,
            _ => ((i * 7919 + thread * 104_729) % 200_000) as u32,
        };
        TELEMETRY.record_latency_us(us);
        exp.add_latency(us);
        if i % 7 == 3 {
            let id = format!("t{thread}-{i}-apply");
            exp.events.push(id.clone());
            TELEMETRY.record_apply(FlagAssigned { resolve_id: id, ..Default::default() });
        }
        progress.fetch_add(1, Ordering::Relaxed);
        if i % 64 == 0 {
            // 8 threads on few cores: let the checkpointer interleave.
            std::thread::yield_now();
        }
        if i % PACE == PACE - 1 {
            // Now and then wait for the checkpointer to catch up, so the
            // two always overlap however the scheduler treats them.
            let want = i / PACE + 1;
            let deadline = Instant::now() + Duration::from_secs(5);
            while rounds.load(Ordering::Acquire) < want && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
    }
    exp
}

/// The worker glue's side of a flush, with a queue that fails sometimes.
struct Sender {
    delivered: Vec<Checkpoint>,
    sends: u64,
    ok: u64,
    failed: u64,
    /// Send outcomes the latest fresh checkpoint reported.
    reported: (u64, u64),
    seen_sequences: HashSet<u64>,
}

impl Sender {
    fn flush(&mut self, now_ms: u64, failures: bool) -> usize {
        let before = (self.ok, self.failed);
        let batch = TELEMETRY.checkpoint(now_ms, ISOLATE);
        assert!(batch.len() <= MAX_MESSAGES_PER_CHECKPOINT);
        let n = batch.len();
        for cp in batch {
            if self.seen_sequences.insert(cp.id.sequence) && cp.counters != Default::default() {
                self.reported = before;
            }
            let bytes = cp.encode();
            assert!(bytes.len() <= MAX_MESSAGE_BYTES, "message of {} bytes", bytes.len());
            let decoded = decode_message(&bytes).expect("own messages decode");
            if self.sends.is_multiple_of(16) {
                // A deep compare is slow in debug builds; a sample suffices.
                assert_eq!(decoded, cp);
            }
            self.sends += 1;
            if failures && self.sends.is_multiple_of(5) {
                TELEMETRY.record_queue_send(false);
                self.failed += 1;
                TELEMETRY.restore(cp);
            } else if failures && self.sends.is_multiple_of(11) {
                // Sent, but the producer saw an error: redelivered later.
                self.delivered.push(decoded);
                TELEMETRY.record_queue_send(false);
                self.failed += 1;
                TELEMETRY.restore(cp);
            } else {
                self.delivered.push(decoded);
                TELEMETRY.record_queue_send(true);
                self.ok += 1;
            }
        }
        n
    }
}

#[test]
fn concurrent_recording_and_checkpointing_is_exact() {
    let cases = load_cases();
    let serving = ArcSwap::from_pointee(load_snapshot());
    let progress = AtomicUsize::new(0);
    let rounds_done = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let sender = Mutex::new(Sender {
        delivered: Vec::new(),
        sends: 0,
        ok: 0,
        failed: 0,
        reported: (0, 0),
        seen_sequences: HashSet::new(),
    });
    let start = Instant::now();
    let now_ms = || 1_000 + start.elapsed().as_millis() as u64;

    let expected = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn({
                    let (serving, cases, progress, rounds) = (&serving, &cases, &progress, &rounds_done);
                    move || worker(t, serving, cases, progress, rounds)
                })
            })
            .collect();

        // The checkpointer: runs until the workers are done (bounded).
        let checkpointer = s.spawn(|| {
            // Rounds that overlapped recording: the point of the test.
            let mut overlapping = 0;
            let mut rounds = 0;
            while !done.load(Ordering::Acquire) && rounds < 200_000 {
                rounds += 1;
                sender.lock().expect("sender").flush(now_ms(), true);
                if progress.load(Ordering::Relaxed) < THREADS * ITERATIONS {
                    overlapping += 1;
                }
                rounds_done.fetch_add(1, Ordering::Release);
                std::thread::yield_now();
            }
            overlapping
        });

        // Swap the serving snapshot halfway; the old one is released by
        // every worker as it moves on, and its aggregate must still be
        // flushed exactly once.
        let total = THREADS * ITERATIONS;
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress.load(Ordering::Relaxed) < total / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        serving.store(Arc::new(load_snapshot()));

        let mut expected = Expected::default();
        for h in handles {
            expected.merge(h.join().expect("worker"));
        }
        done.store(true, Ordering::Release);
        let rounds = checkpointer.join().expect("checkpointer");
        assert!(rounds >= 5, "the checkpointer ran concurrently ({rounds} rounds)");
        eprintln!("{rounds} checkpoint rounds during {:?}", start.elapsed());
        expected
    });

    // Drain what is left, failures off so it converges.
    let mut sender = sender.into_inner().expect("sender");
    for _ in 0..1000 {
        if sender.flush(now_ms(), false) == 0 && !TELEMETRY.has_pending() {
            break;
        }
    }
    assert!(!TELEMETRY.has_pending(), "everything was flushed");
    assert_eq!(TELEMETRY.live_aggregates(), 1, "the old snapshot's aggregate is gone");
    assert!(sender.failed > 0 && sender.delivered.len() > 20, "the run exercised retries");

    // Consumer: one big batch (ambiguous sends appear twice in it).
    let logs = telemetry::aggregate(&sender.delivered);
    let mut got = Expected::default();
    for f in &logs.flag_resolve_info {
        for v in &f.variant_resolve_info {
            *got.variants.entry((f.flag.clone(), v.variant.clone())).or_default() += v.count;
        }
        for r in &f.rule_resolve_info {
            *got.rules.entry((f.flag.clone(), r.rule.clone())).or_default() += r.count;
            for a in &r.assignment_resolve_info {
                *got.assignments.entry((f.flag.clone(), r.rule.clone(), a.assignment_id.clone())).or_default() +=
                    a.count;
            }
        }
    }
    assert_eq!(got.variants, expected.variants);
    assert_eq!(got.rules, expected.rules);
    assert_eq!(got.assignments, expected.assignments);

    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for ev in &logs.flag_assigned {
        *per_id.entry(ev.resolve_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_id.len(), expected.events.len());
    for id in &expected.events {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "{id}");
    }
    // Within distinct checkpoints too, each id is in exactly one.
    let mut distinct: HashMap<_, &Checkpoint> = HashMap::new();
    for cp in &sender.delivered {
        distinct.insert(cp.id, cp);
    }
    let mut holders: HashMap<&str, usize> = HashMap::new();
    for cp in distinct.values() {
        for ev in &cp.logs.flag_assigned {
            *holders.entry(ev.resolve_id.as_str()).or_default() += 1;
        }
    }
    assert!(holders.values().all(|&n| n == 1));

    // Metrics: apply everything, then every message again (redelivery).
    let mut m = MetricsSnapshot::default();
    let mut dedup = telemetry::MemoryDedup::default();
    let mut applied = 0;
    for cp in &sender.delivered {
        applied += usize::from(telemetry::aggregator::apply(&mut m, &mut dedup, cp, 1));
    }
    assert_eq!(applied, distinct.len());
    for cp in &sender.delivered {
        assert!(!telemetry::aggregator::apply(&mut m, &mut dedup, cp, 1), "redelivery is not counted twice");
    }
    let mut m = MetricsSnapshot::from_json(&m.to_json());
    assert!(!telemetry::aggregator::apply(&mut m, &mut dedup, &sender.delivered[0], 3));
    assert_eq!(m.checkpoints, distinct.len() as u64);
    assert_eq!(m.resolves, expected.reasons);
    assert_eq!((m.latency.count, m.latency.sum), (expected.latency.count, expected.latency.sum));
    let mut want_buckets = expected.latency.buckets.clone();
    want_buckets.resize(histogram::BUCKETS, 0);
    let mut got_buckets = m.latency.buckets.clone();
    got_buckets.resize(histogram::BUCKETS, 0);
    assert_eq!(got_buckets, want_buckets);
    assert_eq!(m.credential_resolves.values().sum::<u64>(), expected.resolves);
    assert_eq!(m.requests["resolve"].values().sum::<u64>(), (THREADS * ITERATIONS) as u64);
    assert_eq!((m.queue_sends.ok, m.queue_sends.failed), sender.reported);
    assert_eq!(m.flag_assigned_events, expected.events.len() as u64 + split_extra(&distinct));
    assert_eq!(m.dropped, Default::default(), "nothing was dropped");

    // Confidence-facing telemetry agrees (u32 totals do not saturate here).
    let t = logs.telemetry_data.expect("telemetry");
    let lat = t.resolve_latency.expect("latency");
    assert_eq!(u64::from(lat.count), expected.latency.count);
    let rates: u64 = t.resolve_rate.iter().map(|r| u64::from(r.count)).sum();
    assert_eq!(rates, expected.reasons.values().sum::<u64>());

    let text = telemetry::render_prometheus(&m);
    if let Ok(dir) = std::env::var("EDGEFLAG_METRICS_OUT") {
        std::fs::write(format!("{dir}/metrics.prom"), &text).expect("write metrics");
    }
    assert!(text.contains(&format!(
        "confidence_resolve_latency_microseconds_count{{resolver_id=\"edgeflag\"}} {}\n",
        expected.latency.count
    )));
}

/// Events split across messages would count more than once; none here.
fn split_extra(distinct: &HashMap<edgeflag::telemetry::CheckpointId, &Checkpoint>) -> u64 {
    let total: usize = distinct.values().map(|cp| cp.logs.flag_assigned.len()).sum();
    let unique: HashSet<&str> =
        distinct.values().flat_map(|cp| cp.logs.flag_assigned.iter().map(|e| e.resolve_id.as_str())).collect();
    (total - unique.len()) as u64
}

/// `cargo test --release --test telemetry_concurrency -- --ignored --nocapture`
#[test]
#[ignore]
fn record_resolve_cost() {
    let snap = Arc::new(load_snapshot());
    let t = Telemetry::new();
    let ctx: Struct =
        serde_json::from_str(r#"{"targeting_key":"user-123","country":"SE","app":{"version":"1.2.3"}}"#).expect("ctx");
    for flags in [vec![], vec!["flags/simple-flag".to_string()]] {
        let req = resolve::Request { flags: &flags, context: &ctx, client_secret: "test-secret" };
        let res = resolve::resolve(&snap, &req, Sticky::Unsupported, None).expect("resolves");
        let n = 200_000u32;
        let start = Instant::now();
        for i in 0..n {
            t.record_resolve(&snap, &res, &ctx, None);
            if i % 10_000 == 0 {
                let _ = t.checkpoint(u64::from(i) + 1, ISOLATE);
            }
        }
        let per_call = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "record_resolve: {} flags, {:.0} ns per call, {:.1} ns per flag",
            res.flags.len(),
            per_call,
            per_call / res.flags.len().max(1) as f64
        );
        let ev = exposure("r".into(), &res);
        let start = Instant::now();
        for _ in 0..n {
            t.record_apply(ev.clone());
        }
        let _ = t.checkpoint(1, ISOLATE);
        println!(
            "record_apply (incl. clone of a {}-flag event): {:.0} ns",
            ev.flags.len(),
            start.elapsed().as_nanos() as f64 / f64::from(n)
        );
    }
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..200_000 {
        acc = acc.wrapping_add(telemetry::schema::fingerprint(&ctx));
    }
    println!("schema fingerprint (3 fields): {:.0} ns ({acc:x})", start.elapsed().as_nanos() as f64 / 2e5);
    let start = Instant::now();
    for i in 0..1_000_000u32 {
        t.record_latency_us(i);
    }
    println!("record_latency_us: {:.1} ns", start.elapsed().as_nanos() as f64 / 1e6);
}
