//! The telemetry pipeline at scale, simulated: N isolates share a global
//! request rate and checkpoint on the real `Telemetry` interval policy
//! (throttled sends double the interval, successes walk it back) into Q
//! queues of 5,000 messages a second; the consumer takes batches of 100
//! and makes two aggregator calls per batch; the aggregator mirrors to KV
//! at most once a second. An isolate also flushes at once when a message's
//! worth of events is pending, as the Worker does. Checkpoint sizes are
//! measured, not assumed: the
//! demo state's resolves (all flags, distinct targeting keys, every
//! resolve applied) recorded into a real `Telemetry` and checkpointed.
//!
//! Prints the table the README quotes (`cargo test --release --test
//! telemetry_scale -- --nocapture`, or `bash scripts/bench.sh scale`) and
//! asserts what the design promises: no resolve is lost however hard the
//! Queue throttles, and the settled rates stay inside the platform limits.
// Test code: a panic is a test failure, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use edgeflag::exposure;
use edgeflag::proto::wkt::{Struct, Timestamp};
use edgeflag::resolve::{self, sticky::Sticky};
use edgeflag::state::snapshot::Snapshot;
use edgeflag::telemetry::{Telemetry, FLUSH_NOW_BYTES, MAX_FLUSH_INTERVAL_MS};
use std::collections::HashMap;
use std::sync::Arc;

const QUEUE_MSGS_PER_S: u64 = 5_000;
const BATCH: u64 = 100;
const DO_CALLS_PER_BATCH: u64 = 2;
const DO_SOFT_LIMIT_PER_S: f64 = 1_000.0;
/// Global request rate shared by the isolates.
const GLOBAL_RPS: u64 = 100_000;
const TICK_MS: u64 = 100;
const SIM_SECONDS: u64 = 180;
/// Figures are taken over the last part, once the intervals settled.
const SETTLED_FROM_S: u64 = 100;

struct Sizer {
    snap: Arc<Snapshot>,
    /// resolves per checkpoint (rounded) -> (bytes, messages)
    cache: HashMap<u64, (u64, u64)>,
}

impl Sizer {
    fn new() -> Sizer {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/src/demo_state.json")).expect("demo state");
        Sizer { snap: Arc::new(Snapshot::load(&bytes, None, None).expect("loads")), cache: HashMap::new() }
    }

    /// Encoded bytes and messages of one checkpoint holding `resolves`
    /// resolves (measured at the next power of two, at most 16,384, and
    /// scaled linearly above that).
    fn checkpoint(&mut self, resolves: u64) -> (u64, u64) {
        let measured = resolves.next_power_of_two().clamp(1, 16_384);
        let snap = self.snap.clone();
        let (bytes, _) = *self.cache.entry(measured).or_insert_with(|| measure(&snap, measured));
        let scaled = bytes * resolves.max(1) / measured;
        (scaled, scaled.div_ceil(edgeflag::telemetry::MAX_MESSAGE_BYTES as u64).max(1))
    }
}

fn measure(snap: &Arc<Snapshot>, resolves: u64) -> (u64, u64) {
    let t = Telemetry::new();
    let flags: Vec<String> = Vec::new();
    for i in 0..resolves {
        let country = ["SE", "US", "DE"][(i % 3) as usize];
        let ctx: Struct = serde_json::from_value(serde_json::json!({
            "targeting_key": format!("user-{i:08}"),
            "country": country,
        }))
        .expect("context");
        let req = resolve::Request { flags: &flags, context: &ctx, client_secret: "demo-secret" };
        let res = resolve::resolve(snap, &req, Sticky::Unsupported, None).expect("resolves");
        let applied = exposure::applied_flags_from_resolution(&res, Timestamp { seconds: 1_700_000_000, nanos: 0 });
        let ev = exposure::flag_assigned(&format!("resolve-{i:016x}"), res.credential, None, applied);
        t.record_resolve(snap, &res, &ctx, Some(ev));
        t.record_latency_us(300);
        t.record_request(edgeflag::telemetry::Route::Resolve, 200);
    }
    let mut bytes = 0u64;
    let mut msgs = 0u64;
    // Everything, even past one checkpoint's 16-message cap.
    for round in 0..1_000u64 {
        let cps = t.checkpoint(1_000 + round, [1; 16]);
        if cps.is_empty() {
            break;
        }
        msgs += cps.len() as u64;
        bytes += cps.iter().map(|c| c.encoded_len() as u64).sum::<u64>();
    }
    (bytes, msgs)
}

struct Isolate {
    telemetry: Telemetry,
    next_send_ms: u64,
    /// Resolves recorded since the last accepted checkpoint.
    pending: u64,
    last_accepted_ms: u64,
}

#[derive(Debug, Default)]
struct Figures {
    interval_s: f64,
    resolves_per_cp: f64,
    cp_kb: f64,
    msgs_per_cp: f64,
    msgs_per_s_per_queue: f64,
    throttled_per_s: f64,
    do_calls_per_s: f64,
    kv_writes_per_s: f64,
    /// Longest a resolve waited in an isolate for an accepted send.
    worst_wait_s: f64,
    lost: u64,
}

fn simulate(sizer: &mut Sizer, n: u64, queues: u64) -> Figures {
    let rps = GLOBAL_RPS as f64 / n as f64;
    let mut isolates: Vec<Isolate> = (0..n)
        .map(|i| {
            let t = Telemetry::new();
            t.set_flush_interval_ms(1_000);
            // Spread the first sends over the interval.
            Isolate { telemetry: t, next_send_ms: (i * 7_919) % 1_000, pending: 0, last_accepted_ms: 0 }
        })
        .collect();
    let cap_per_tick = QUEUE_MSGS_PER_S * TICK_MS / 1_000;
    let flush_now_resolves = FLUSH_NOW_BYTES * 1_024 / sizer.checkpoint(1_024).0;
    let (mut recorded, mut delivered) = (0u64, 0u64);
    let mut carry = vec![0f64; n as usize];
    let mut f = Figures::default();
    let (mut cps, mut cp_bytes, mut cp_msgs, mut cp_resolves, mut accepted_msgs, mut throttled) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut intervals = 0u64;
    for tick in 0..(SIM_SECONDS * 1_000 / TICK_MS) {
        let now = tick * TICK_MS;
        let settled = now >= SETTLED_FROM_S * 1_000;
        let mut used = vec![0u64; queues as usize];
        // The Queue serves senders in no fixed order: start elsewhere each tick.
        let start = (tick * 7_919) % n;
        for k in 0..n {
            let i = ((start + k) % n) as usize;
            let iso = &mut isolates[i];
            carry[i] += rps * TICK_MS as f64 / 1_000.0;
            let whole = carry[i].floor();
            carry[i] -= whole;
            iso.pending += whole as u64;
            recorded += whole as u64;
            // A message's worth of exposure events goes at once (FLUSH_NOW_BYTES).
            if iso.pending == 0 || (now < iso.next_send_ms && iso.pending < flush_now_resolves) {
                continue;
            }
            let (bytes, msgs) = sizer.checkpoint(iso.pending);
            let q = i % queues as usize;
            if used[q] + msgs <= cap_per_tick {
                used[q] += msgs;
                iso.telemetry.record_queue_send(true);
                if settled {
                    cps += 1;
                    cp_bytes += bytes;
                    cp_msgs += msgs;
                    cp_resolves += iso.pending;
                    accepted_msgs += msgs;
                }
                delivered += iso.pending;
                iso.pending = 0;
                if settled {
                    f.worst_wait_s = f.worst_wait_s.max((now - iso.last_accepted_ms) as f64 / 1_000.0);
                }
                iso.last_accepted_ms = now;
            } else {
                // 429: the data stays pending and the isolate backs off.
                iso.telemetry.record_queue_send(false);
                iso.telemetry.record_queue_throttled();
                if settled {
                    throttled += 1;
                }
            }
            iso.next_send_ms = now + iso.telemetry.next_flush_wait_ms((i as u64) << 32 ^ now);
        }
        if settled {
            intervals += isolates.iter().map(|i| i.telemetry.flush_interval_ms()).sum::<u64>() / n;
        }
    }
    // Drain: every pending resolve still goes out eventually.
    let pending: u64 = isolates.iter().map(|i| i.pending).sum();
    f.lost = recorded - delivered - pending;
    let secs = (SIM_SECONDS - SETTLED_FROM_S) as f64;
    let ticks = secs * 1_000.0 / TICK_MS as f64;
    f.interval_s = intervals as f64 / ticks / 1_000.0;
    f.resolves_per_cp = cp_resolves as f64 / cps.max(1) as f64;
    f.cp_kb = cp_bytes as f64 / cps.max(1) as f64 / 1_000.0;
    f.msgs_per_cp = cp_msgs as f64 / cps.max(1) as f64;
    let msgs_per_s = accepted_msgs as f64 / secs;
    f.msgs_per_s_per_queue = msgs_per_s / queues as f64;
    f.throttled_per_s = throttled as f64 / secs;
    // Each queue's consumer: full batches of 100, or one per second (the
    // batch timeout) when the queue is quieter than that.
    let batches_per_s = (queues as f64).max(msgs_per_s / BATCH as f64).min(msgs_per_s);
    f.do_calls_per_s = batches_per_s * DO_CALLS_PER_BATCH as f64;
    f.kv_writes_per_s = if msgs_per_s > 0.0 { 1.0 } else { 0.0 };
    f
}

#[test]
fn pipeline_scales_to_20000_isolates_without_loss() {
    let mut sizer = Sizer::new();
    println!(
        "\n{} requests/s in all, spread over N isolates; base interval 1 s, max {} s; {} msgs/s per queue",
        GLOBAL_RPS,
        MAX_FLUSH_INTERVAL_MS / 1_000,
        QUEUE_MSGS_PER_S
    );
    println!(
        "| isolates | queues | req/s per isolate | interval (s) | resolves per checkpoint | checkpoint KB | \
         messages per checkpoint | messages/s per queue | throttled sends/s | worst wait (s) | DO calls/s | \
         KV writes/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, queues) in [(10, 1), (1_000, 1), (20_000, 1), (20_000, 4), (20_000, 8)] {
        let f = simulate(&mut sizer, n, queues);
        println!(
            "| {n} | {queues} | {:.0} | {:.2} | {:.0} | {:.1} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
            GLOBAL_RPS as f64 / n as f64,
            f.interval_s,
            f.resolves_per_cp,
            f.cp_kb,
            f.msgs_per_cp,
            f.msgs_per_s_per_queue,
            f.throttled_per_s,
            f.worst_wait_s,
            f.do_calls_per_s,
            f.kv_writes_per_s
        );
        assert_eq!(f.lost, 0, "N={n}: resolves lost");
        assert!(f.msgs_per_s_per_queue <= QUEUE_MSGS_PER_S as f64, "N={n}: over the queue limit");
        assert!(f.do_calls_per_s < DO_SOFT_LIMIT_PER_S, "N={n}: over the object's soft limit");
        assert!(f.kv_writes_per_s <= 1.0);
        assert!(f.interval_s * 1_000.0 <= MAX_FLUSH_INTERVAL_MS as f64);
        // Throttling delays data (an unlucky isolate is throttled a few
        // times in a row at the longest interval); it never drops it.
        assert!(f.worst_wait_s * 1_000.0 <= 4.0 * MAX_FLUSH_INTERVAL_MS as f64, "N={n}: starved isolates {f:?}");
        if n == 20_000 && queues == 1 {
            assert!(f.interval_s > 2.0, "one queue cannot take 20,000 isolates at 1 s: the interval must grow");
        }
    }
}
