//! What one flush and one consumer batch cost synchronously, natively
//! (scripts/bench.sh section `tail` prints it after the latency rows).
//! Fills the producer with demo-like exposure events, then times the
//! checkpoint, each message's encode, and on the consumer side the
//! decode + aggregate + encode of a full batch, one stretch at a time.
//! The wasm build runs these same functions, about 1.5-3x slower.

use edgeflag::proto::events::flag_assigned::{applied_flag::Assignment, AppliedFlag, AssignmentInfo};
use edgeflag::proto::events::ClientInfo;
use edgeflag::proto::events::FlagAssigned;
use edgeflag::proto::wkt::Timestamp;
use edgeflag::telemetry::{self, decode_message, Telemetry, MAX_MESSAGES_PER_CHECKPOINT};
use std::time::Instant;

fn event(i: usize) -> FlagAssigned {
    FlagAssigned {
        client_info: Some(ClientInfo {
            client: "clients/demo".into(),
            client_credential: "clients/demo/clientCredentials/demo".into(),
            sdk: None,
        }),
        resolve_id: format!("{i:032x}"),
        flags: vec![AppliedFlag {
            flag: "flags/welcome-banner".into(),
            targeting_key: format!("user-{i}"),
            targeting_key_selector: "targeting_key".into(),
            assignment: Some(Assignment::AssignmentInfo(AssignmentInfo {
                segment: "segments/everyone".into(),
                variant: "flags/welcome-banner/variants/on".into(),
            })),
            assignment_id: "flags/welcome-banner/variants/on".into(),
            rule: "flags/welcome-banner/rules/all".into(),
            fallthrough_assignments: vec![],
            apply_time: Some(Timestamp { seconds: 1_760_000_000, nanos: 0 }),
        }],
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let tel = Telemetry::new();
    for i in 0..50_000 {
        tel.record_apply(event(i));
    }
    let t = Instant::now();
    let cps = tel.checkpoint(1, [7; 16]);
    let checkpoint_ms = ms(t);
    let mut worst_encode = 0f64;
    let mut bodies = Vec::new();
    for cp in &cps {
        let t = Instant::now();
        bodies.push(cp.encode());
        worst_encode = worst_encode.max(ms(t));
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "| producer: one checkpoint ({} messages, max {MAX_MESSAGES_PER_CHECKPOINT}, {} KB) | {checkpoint_ms:.1} ms |",
        cps.len(),
        bytes / 1024
    );
    println!("| producer: encode of the largest message | {worst_encode:.2} ms |");
    // A consumer batch of 100 distinct messages (wrangler.toml max_batch_size).
    let mut batch = bodies;
    while batch.len() < 100 {
        let more = tel.checkpoint(2, [7; 16]);
        if more.is_empty() {
            break;
        }
        batch.extend(more.iter().map(|cp| cp.encode()));
    }
    batch.truncate(100);
    let t = Instant::now();
    let decoded: Vec<_> = batch.iter().filter_map(|b| decode_message(b).ok()).collect();
    let decode_ms = ms(t);
    let t = Instant::now();
    let logs = telemetry::aggregate(decoded.iter());
    let aggregate_ms = ms(t);
    let t = Instant::now();
    let json = serde_json::to_vec(&logs).unwrap_or_default();
    let json_ms = ms(t);
    println!(
        "| consumer: decode {} messages ({} KB) | {decode_ms:.1} ms |",
        batch.len(),
        batch.iter().map(Vec::len).sum::<usize>() / 1024
    );
    println!("| consumer: aggregate them | {aggregate_ms:.1} ms |");
    println!(
        "| consumer: JSON-encode the aggregate ({} KB, {} events) | {json_ms:.1} ms |",
        json.len() / 1024,
        logs.flag_assigned.len()
    );
    // The consumer as it runs: decode slices and delivery chunks, each a
    // synchronous stretch of its own between awaits.
    let sizes: Vec<usize> = batch.iter().map(Vec::len).collect();
    let mut worst_slice = 0f64;
    let (mut t, mut since) = (Instant::now(), 0usize);
    for b in &batch {
        let _ = decode_message(b);
        since += b.len();
        if since >= telemetry::DECODE_SLICE_BYTES {
            worst_slice = worst_slice.max(ms(t));
            (t, since) = (Instant::now(), 0);
        }
    }
    let mut worst_chunk = 0f64;
    let chunks = telemetry::delivery_chunks(&sizes, telemetry::MAX_DELIVERY_BYTES);
    for range in &chunks {
        let t = Instant::now();
        let logs = telemetry::aggregate(decoded.get(range.clone()).unwrap_or_default().iter());
        let _ = serde_json::to_vec(&logs);
        worst_chunk = worst_chunk.max(ms(t));
    }
    println!(
        "| consumer, bounded: longest decode slice ({} KB) | {worst_slice:.1} ms |",
        telemetry::DECODE_SLICE_BYTES / 1024
    );
    println!(
        "| consumer, bounded: longest aggregate + JSON of one delivery chunk ({} chunks of at most {} KB) | {worst_chunk:.1} ms |",
        chunks.len(),
        telemetry::MAX_DELIVERY_BYTES / 1024
    );
}
