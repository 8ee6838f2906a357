//! Producer-side tests against the conformance state.

use super::*;
use crate::proto::admin::context_field_semantic_type::Type as SemType;
use crate::proto::admin::evaluation_context_schema_field::Kind as FieldKind;
use crate::proto::events::flag_assigned::AppliedFlag;
use crate::resolve::{self, sticky::Sticky};

const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");
const ISOLATE: [u8; 16] = [9; 16];

fn snapshot() -> Arc<Snapshot> {
    let bytes = std::fs::read(STATE).expect("conformance state");
    Arc::new(Snapshot::load(&bytes, None, None).expect("state loads"))
}

fn context(json: &str) -> Struct {
    serde_json::from_str(json).expect("context")
}

fn record(t: &Telemetry, snap: &Arc<Snapshot>, flags: &[&str], ctx: &Struct, ev: Option<FlagAssigned>) {
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let req = resolve::Request { flags: &flags, context: ctx, client_secret: "test-secret" };
    let res = resolve::resolve(snap, &req, Sticky::Unsupported, None).expect("resolves");
    t.record_resolve(snap, &res, ctx, ev);
}

fn event(id: &str, pad: usize) -> FlagAssigned {
    FlagAssigned {
        resolve_id: id.to_string(),
        flags: vec![AppliedFlag {
            flag: "flags/simple-flag".into(),
            targeting_key: "k".repeat(pad),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn flag<'a>(logs: &'a WriteFlagLogsRequest, name: &str) -> &'a FlagResolveInfo {
    logs.flag_resolve_info.iter().find(|f| f.flag == name).expect(name)
}

#[test]
fn one_resolve_becomes_one_message() {
    let t = Telemetry::new();
    let snap = snapshot();
    let ctx = context(r#"{"targeting_key":"user1","country":"SE"}"#);
    record(
        &t,
        &snap,
        &["flags/simple-flag", "flags/fallthrough-flag", "flags/client-default-flag", "flags/eq-match-flag"],
        &ctx,
        Some(event("r1", 4)),
    );
    t.record_latency_us(1000);
    t.record_request(Route::Resolve, 200);
    let cps = t.checkpoint(5_000, ISOLATE);
    assert_eq!(cps.len(), 1);
    let cp = &cps[0];
    assert_eq!(cp.id, CheckpointId { isolate: ISOLATE, sequence: 0 });
    let logs = &cp.logs;

    let simple = flag(logs, "flags/simple-flag");
    assert_eq!(simple.variant_resolve_info[0].variant, "on");
    assert_eq!(simple.variant_resolve_info[0].count, 1);
    assert_eq!(simple.rule_resolve_info[0].rule, "flags/simple-flag/rules/rule1");
    assert_eq!(simple.rule_resolve_info[0].assignment_resolve_info[0].assignment_id, "a1");

    // The fallthrough rule is counted as well as the rule that assigned.
    let ft = flag(logs, "flags/fallthrough-flag");
    assert_eq!(ft.rule_resolve_info.len(), 2);
    assert!(ft.rule_resolve_info.iter().all(|r| r.count == 1 && r.assignment_resolve_info.len() == 1));

    // Client default and no-match both count the "" variant.
    let cd = flag(logs, "flags/client-default-flag");
    assert_eq!((cd.variant_resolve_info[0].variant.as_str(), cd.variant_resolve_info[0].count), ("", 1));
    assert_eq!(cd.rule_resolve_info.len(), 1);
    let eq = flag(logs, "flags/eq-match-flag");
    assert_eq!(eq.variant_resolve_info.len(), 1);

    let client = &logs.client_resolve_info[0];
    assert_eq!(client.client, "clients/test-client");
    assert_eq!(client.client_credential, "clients/test-client/credentials/cred1");
    assert_eq!(client.schema.len(), 1);
    let s = &client.schema[0];
    assert_eq!(s.schema.get("country"), Some(&(FieldKind::StringKind as i32)));
    assert!(matches!(s.semantic_types.get("country").and_then(|t| t.r#type.as_ref()), Some(SemType::Country(_))));

    assert_eq!(logs.flag_assigned.len(), 1);
    let tel = logs.telemetry_data.as_ref().expect("telemetry");
    assert_eq!(tel.sdk.as_ref().and_then(|s| s.sdk.clone()), Some(sdk::Sdk::CustomId("edgeflag".into())));
    assert_eq!(tel.resolver_version, VERSION);
    let lat = tel.resolve_latency.as_ref().expect("latency");
    assert_eq!((lat.sum, lat.count, lat.buckets[0].offset), (1000, 1, 54));
    let rates: u32 = tel.resolve_rate.iter().map(|r| r.count).sum();
    assert_eq!(rates, 4, "one per resolved flag");

    let c = &cp.counters;
    assert_eq!(
        c.credential_resolves,
        vec![ef::CredentialCount { client_credential: client.client_credential.clone(), resolves: 1 }]
    );
    assert_eq!(c.requests, vec![ef::RequestCount { route: "resolve".into(), status_class: 2, count: 1 }]);
    assert_eq!(c.unattributed, 0);

    assert!(t.checkpoint(6_000, ISOLATE).is_empty(), "nothing left");
    assert!(!t.has_pending());
}

#[test]
fn schemas_are_deduplicated_per_epoch_and_bounded() {
    let t = Telemetry::new();
    let snap = snapshot();
    let same_a = context(r#"{"targeting_key":"u1","country":"SE"}"#);
    let same_b = context(r#"{"targeting_key":"u2","country":"NO"}"#);
    for _ in 0..10 {
        record(&t, &snap, &["flags/simple-flag"], &same_a, None);
        record(&t, &snap, &["flags/simple-flag"], &same_b, None);
    }
    for i in 0..70 {
        record(&t, &snap, &["flags/simple-flag"], &context(&format!(r#"{{"targeting_key":"u","f{i}":1}}"#)), None);
    }
    let cp = t.checkpoint(1, ISOLATE).remove(0);
    let client = &cp.logs.client_resolve_info[0];
    assert_eq!(client.schema.len(), MAX_SCHEMAS_PER_CREDENTIAL);
    assert_eq!(cp.counters.credential_resolves[0].resolves, 90);
    assert_eq!(cp.counters.dropped_schemas, 71 - MAX_SCHEMAS_PER_CREDENTIAL as u64);
    // Next epoch: the shape is reported again.
    record(&t, &snap, &["flags/simple-flag"], &same_a, None);
    let cp = t.checkpoint(2, ISOLATE).remove(0);
    assert_eq!(cp.logs.client_resolve_info[0].schema.len(), 1);
}

#[test]
fn large_drains_split_into_bounded_messages_and_keep_the_rest() {
    let t = Telemetry::new();
    let n = 4000;
    for i in 0..n {
        t.record_apply(event(&format!("r{i}"), 900));
    }
    // One event too big for any message is split by flag.
    let mut big = event("big", 10);
    big.flags = (0..600)
        .map(|i| AppliedFlag { flag: format!("flags/f{i}"), targeting_key: "x".repeat(400), ..Default::default() })
        .collect();
    t.record_apply(big);
    assert!(t.should_flush_now(0));

    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut ids = std::collections::HashSet::new();
    let mut big_flags = 0;
    for round in 0..10 {
        let cps = t.checkpoint(round + 1, ISOLATE);
        assert!(cps.len() <= MAX_MESSAGES_PER_CHECKPOINT);
        for cp in cps {
            assert!(cp.encoded_len() <= MAX_MESSAGE_BYTES, "{} bytes", cp.encoded_len());
            assert_eq!(cp.encode().len(), cp.encoded_len());
            assert!(ids.insert(cp.id));
            for ev in &cp.logs.flag_assigned {
                *seen.entry(ev.resolve_id.clone()).or_default() += 1;
                if ev.resolve_id == "big" {
                    big_flags += ev.flags.len();
                }
            }
        }
        if !t.has_pending() {
            break;
        }
    }
    assert!(!t.has_pending());
    assert_eq!(seen.len(), n + 1);
    assert!((0..n).all(|i| seen.get(&format!("r{i}")) == Some(&1)));
    assert!(seen["big"] > 1);
    assert_eq!(big_flags, 600);
}

#[test]
fn failed_sends_are_retried_with_the_same_id() {
    let t = Telemetry::new();
    t.record_failed_resolve();
    let cp = t.checkpoint(10, ISOLATE).remove(0);
    assert_eq!(cp.counters.resolves, vec![ef::ReasonCount { reason: ResolveReason::Error as i32, count: 1 }]);
    t.record_queue_send(false);
    t.restore(cp.clone());
    assert!(t.has_pending());
    t.record_latency_us(250);
    let again = t.checkpoint(20, ISOLATE);
    assert_eq!(again.len(), 2);
    assert_eq!(again[0], cp, "the retry comes first, unchanged");
    assert_eq!(again[1].id.sequence, 1);
    assert_eq!(again[1].counters.queue_sends_failed, 1);
}

#[test]
fn queue_send_results_alone_make_no_message() {
    let t = Telemetry::new();
    t.record_queue_send(true);
    assert!(!t.has_pending());
    assert!(t.checkpoint(1, ISOLATE).is_empty());
    t.record_request(Route::Metrics, 200);
    let cp = t.checkpoint(2, ISOLATE).remove(0);
    assert_eq!(cp.counters.queue_sends_ok, 1);
    assert_eq!(cp.id.sequence, 0, "empty checkpoints use no sequence number");
}

#[test]
fn flush_scheduling() {
    let t = Telemetry::new();
    assert_eq!(t.flush_due_at(1_000), None);
    t.record_latency_us(5);
    assert!(!t.should_flush_now(1_000));
    assert_eq!(t.flush_due_at(1_000), Some(1_000 + DEFAULT_FLUSH_INTERVAL_MS));
    assert!(t.try_claim_flush(1_000));
    assert!(!t.try_claim_flush(1_500), "one flush scheduled at a time");
    assert!(t.try_claim_flush(1_000 + FLUSH_LEASE_MS), "a dead claim is taken over");
    assert_eq!(t.checkpoint(2_000, ISOLATE).len(), 1);
    assert!(t.try_claim_flush(2_000), "checkpoint released the claim");
    t.release_flush();
    assert_eq!(t.flush_due_at(2_100), None);
    t.record_latency_us(5);
    assert_eq!(t.flush_due_at(2_100), Some(3_000));
    assert!(t.should_flush_now(3_000), "overdue");
    t.set_flush_interval_ms(250);
    assert_eq!(t.flush_due_at(2_100), Some(2_250));
    for i in 0..100 {
        t.record_apply(event(&format!("e{i}"), 1000));
    }
    assert!(t.should_flush_now(2_100));
    assert_eq!(t.flush_due_at(2_100), Some(2_100));
}

#[test]
fn old_snapshot_aggregate_is_drained_exactly_once_then_dropped() {
    let t = Telemetry::new();
    let a = snapshot();
    let b = snapshot();
    let ctx = context(r#"{"targeting_key":"user1","country":"SE"}"#);
    record(&t, &a, &["flags/simple-flag"], &ctx, None);
    record(&t, &b, &["flags/simple-flag"], &ctx, None);
    assert_eq!(t.live_aggregates(), 2);
    let cp = t.checkpoint(1, ISOLATE).remove(0);
    let total: i64 = cp.logs.flag_resolve_info.iter().map(|f| f.variant_resolve_info[0].count).sum();
    assert_eq!(total, 2);
    assert_eq!(t.live_aggregates(), 2, "both snapshots are still held");

    record(&t, &a, &["flags/simple-flag"], &ctx, None);
    drop(a);
    let cp = t.checkpoint(2, ISOLATE).remove(0);
    assert_eq!(flag(&cp.logs, "flags/simple-flag").variant_resolve_info[0].count, 1);
    assert_eq!(t.live_aggregates(), 1, "the old aggregate went after its last drain");
    assert!(t.checkpoint(3, ISOLATE).is_empty());
}

#[test]
fn a_resolution_from_another_snapshot_is_not_miscounted() {
    let t = Telemetry::new();
    let a = snapshot();
    let b = snapshot();
    let ctx = context(r#"{"targeting_key":"user1","country":"SE"}"#);
    let flags = vec!["flags/simple-flag".to_string()];
    let req = resolve::Request { flags: &flags, context: &ctx, client_secret: "test-secret" };
    let res = resolve::resolve(&a, &req, Sticky::Unsupported, None).expect("resolves");
    t.record_resolve(&b, &res, &ctx, None);
    let cp = t.checkpoint(1, ISOLATE).remove(0);
    assert!(cp.logs.flag_resolve_info.is_empty());
    assert_eq!(cp.counters.unattributed, 1);
}

#[test]
fn sticky_read_failures_reach_the_metrics() {
    let t = Telemetry::new();
    t.record_sticky_read_failures(0);
    assert!(!t.has_pending(), "nothing failed, nothing to send");
    t.record_sticky_read_failures(2);
    t.record_sticky_read_failures(1);
    let cps = t.checkpoint(10, ISOLATE);
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].counters.sticky_read_failures, 3);
    let decoded = decode_message(&cps[0].encode()).expect("decodes");
    let mut m = MetricsSnapshot::default();
    let mut dedup = aggregator::MemoryDedup::default();
    assert!(aggregator::apply(&mut m, &mut dedup, &decoded, 10));
    assert!(!aggregator::apply(&mut m, &mut dedup, &decoded, 11), "a redelivery adds nothing");
    let m = MetricsSnapshot::from_json(&m.to_json());
    assert!(render_prometheus(&m).contains("\nedgeflag_sticky_read_failures_total 3\n"));
    assert!(t.checkpoint(20, ISOLATE).is_empty(), "taken once");
}

#[test]
fn state_loads_reach_the_metrics_by_source_and_result() {
    use crate::state::source::{LoadResult, LoadSource};
    let t = Telemetry::new();
    t.record_state_load(LoadSource::Kv, LoadResult::Ok);
    t.record_state_load(LoadSource::Kv, LoadResult::MissingBlob);
    t.record_state_load(LoadSource::Kv, LoadResult::MissingBlob);
    t.record_state_load(LoadSource::Embedded, LoadResult::Ok);
    let cps = t.checkpoint(10, ISOLATE);
    assert_eq!(cps.len(), 1);
    let decoded = decode_message(&cps[0].encode()).expect("decodes");
    let mut m = MetricsSnapshot::default();
    let mut dedup = aggregator::MemoryDedup::default();
    assert!(aggregator::apply(&mut m, &mut dedup, &decoded, 10));
    let text = render_prometheus(&MetricsSnapshot::from_json(&m.to_json()));
    assert!(text.contains("\nedgeflag_state_loads_total{source=\"kv\",result=\"missing_blob\"} 2\n"), "{text}");
    assert!(text.contains("\nedgeflag_state_loads_total{source=\"kv\",result=\"ok\"} 1\n"), "{text}");
    assert!(text.contains("\nedgeflag_state_loads_total{source=\"embedded\",result=\"ok\"} 1\n"), "{text}");
    assert!(t.checkpoint(20, ISOLATE).is_empty(), "taken once");
}

#[test]
fn throttled_sends_back_off_and_recover() {
    let t = Telemetry::new();
    t.set_flush_interval_ms(500);
    let mut seen = vec![t.flush_interval_ms()];
    for _ in 0..10 {
        t.record_queue_throttled();
        seen.push(t.flush_interval_ms());
    }
    assert_eq!(&seen[..5], &[500, 1000, 2000, 4000, 8000]);
    assert_eq!(t.flush_interval_ms(), MAX_FLUSH_INTERVAL_MS, "capped");
    // Backed off, the waits spread over +-25% of the interval.
    let waits: Vec<u64> = (0..1000).map(|salt| t.next_flush_wait_ms(salt)).collect();
    assert!(waits.iter().all(|w| (45_000..=75_000).contains(w)), "{:?}", &waits[..10]);
    assert!(waits.iter().max().unwrap_or(&0) - waits.iter().min().unwrap_or(&0) > 20_000, "spread");
    // Successes walk it back slowly, never below the configured interval.
    t.record_queue_send(true);
    assert_eq!(t.flush_interval_ms(), 60_000 - 3_719, "a sixteenth of the way back");
    for _ in 0..300 {
        t.record_queue_send(true);
    }
    assert_eq!(t.flush_interval_ms(), 500);
    assert_eq!(t.next_flush_wait_ms(7), 500, "no jitter at the configured interval");
}

#[test]
fn throttling_and_queue_choice() {
    assert!(super::is_throttled("Error: Too Many Requests"));
    assert!(super::is_throttled("Queue send failed: 429"));
    assert!(!super::is_throttled("Queue send failed: internal error"));
    // Isolates spread evenly over the queues, each always to the same one.
    let mut per_queue = [0usize; 3];
    for i in 0..3000u64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        let q = super::pick_queue(&id, 3);
        assert_eq!(q, super::pick_queue(&id, 3));
        per_queue[q] += 1;
    }
    assert!(per_queue.iter().all(|&n| (900..=1100).contains(&n)), "{per_queue:?}");
    assert_eq!(super::pick_queue(&[9; 16], 1), 0);
    assert_eq!(super::pick_queue(&[9; 16], 0), 0);
}

#[test]
fn sticky_write_outcomes_reach_the_metrics() {
    use crate::telemetry::StickyWrite;
    let t = Telemetry::new();
    t.record_sticky_write(StickyWrite::Ok);
    t.record_sticky_write(StickyWrite::Ok);
    t.record_sticky_write(StickyWrite::Retried);
    t.record_sticky_write(StickyWrite::Failed);
    t.record_sticky_write(StickyWrite::Failed);
    t.record_sticky_write(StickyWrite::Failed);
    let cps = t.checkpoint(10, ISOLATE);
    assert_eq!(cps.len(), 1);
    let c = &cps[0].counters;
    assert_eq!((c.sticky_writes_ok, c.sticky_writes_retried, c.sticky_writes_failed), (2, 1, 3));
    let decoded = decode_message(&cps[0].encode()).expect("decodes");
    let mut m = MetricsSnapshot::default();
    let mut dedup = aggregator::MemoryDedup::default();
    assert!(aggregator::apply(&mut m, &mut dedup, &decoded, 10));
    assert!(!aggregator::apply(&mut m, &mut dedup, &decoded, 11), "a redelivery adds nothing");
    let m = MetricsSnapshot::from_json(&m.to_json());
    let text = render_prometheus(&m);
    assert!(text.contains("\nedgeflag_sticky_writes_total{result=\"ok\"} 2\n"), "{text}");
    assert!(text.contains("\nedgeflag_sticky_writes_total{result=\"retried\"} 1\n"), "{text}");
    assert!(text.contains("\nedgeflag_sticky_writes_total{result=\"failed\"} 3\n"), "{text}");
    assert!(t.checkpoint(20, ISOLATE).is_empty(), "taken once");
}
