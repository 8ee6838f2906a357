//! What one flush and one consumer batch cost synchronously, natively
//! (scripts/bench.sh section `tail` prints it next to the latency rows).
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
    for i in 0..200_000 {
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
    // A consumer batch of 100 such messages (wrangler.toml max_batch_size).
    let batch: Vec<Vec<u8>> = bodies.iter().cycle().take(100).cloned().collect();
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
        "| consumer: decode 100 messages ({} KB) | {decode_ms:.1} ms |",
        batch.iter().map(Vec::len).sum::<usize>() / 1024
    );
    println!("| consumer: aggregate them | {aggregate_ms:.1} ms |");
    println!(
        "| consumer: JSON-encode the aggregate ({} KB, {} events) | {json_ms:.1} ms |",
        json.len() / 1024,
        logs.flag_assigned.len()
    );
}
