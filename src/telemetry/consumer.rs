//! The queue consumer's pure parts: merging a batch of checkpoints into one
//! `WriteFlagLogsRequest` for delivery, and cumulative metrics that apply
//! each checkpoint at most once, rendered as Prometheus text.

use super::envelope::{Checkpoint, CheckpointId};
use super::histogram::{bucket_upper_bound, Histogram, BUCKETS, LN_RATIO};
use super::resolve_log::MAX_SCHEMAS_PER_CREDENTIAL;
use super::schema::canonical_key;
use crate::proto::admin::client_resolve_info::EvaluationContextSchemaInstance as SchemaInstance;
use crate::proto::admin::flag_resolve_info::{AssignmentResolveInfo, RuleResolveInfo, VariantResolveInfo};
use crate::proto::admin::{ClientResolveInfo, FlagResolveInfo};
use crate::proto::edgeflag::v1 as ef;
use crate::proto::resolver::telemetry_data::{ResolveLatency, ResolveRate, StateAge};
use crate::proto::resolver::{ResolveReason, Sdk, TelemetryData, WriteFlagLogsRequest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// One delivery request carries at most this many message bytes, so the
/// consumer's synchronous aggregate + encode stays small (about 1 MB of
/// protobuf, a few MB of JSON) whatever the Queue's batch size; the
/// isolate that runs it also serves requests.
pub const MAX_DELIVERY_BYTES: usize = 1 << 20;
/// Messages decoded between two yields to the event loop.
pub const DECODE_SLICE_BYTES: usize = 512 * 1024;

/// Splits messages of the given encoded sizes, in order, into consecutive
/// ranges of at most `max_bytes` each (a message larger than that gets a
/// range of its own). Each range is one delivery request.
pub fn delivery_chunks(sizes: &[usize], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && bytes + n > max_bytes {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Merges a batch for delivery. A message repeated within the batch is
/// taken once. Counts are summed per flag, variant, rule and assignment id
/// (every id kept); schemas are merged per credential, deduplicated and
/// capped at 50; exposure events are concatenated; latency histograms are
/// merged bucket by bucket. Output order is first-seen order.
pub fn aggregate<'a>(batch: impl IntoIterator<Item = &'a Checkpoint>) -> WriteFlagLogsRequest {
    let mut seen: HashSet<CheckpointId> = HashSet::new();
    let mut out = WriteFlagLogsRequest::default();
    let mut flags = Keyed::<FlagAcc>::default();
    let mut clients = Keyed::<ClientAcc>::default();
    let mut tel = TelemetryAcc::default();
    for cp in batch {
        if !seen.insert(cp.id) {
            continue;
        }
        out.flag_assigned.extend(cp.logs.flag_assigned.iter().cloned());
        for info in &cp.logs.flag_resolve_info {
            flags.get(&info.flag).merge(info);
        }
        for info in &cp.logs.client_resolve_info {
            let acc = clients.get(&info.client_credential);
            if acc.client.is_empty() {
                acc.client = info.client.clone();
            }
            for s in &info.schema {
                acc.add(s);
            }
        }
        if let Some(t) = &cp.logs.telemetry_data {
            tel.merge(t);
        }
    }
    out.flag_resolve_info = flags.items.into_iter().map(|(name, acc)| acc.finish(name)).collect();
    out.client_resolve_info = clients
        .items
        .into_iter()
        .map(|(credential, acc)| ClientResolveInfo {
            client: acc.client,
            client_credential: credential,
            schema: acc.schemas,
        })
        .collect();
    out.telemetry_data = tel.finish();
    out
}

/// Insertion-ordered map from name to accumulator.
struct Keyed<T> {
    index: HashMap<String, usize>,
    items: Vec<(String, T)>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed { index: HashMap::new(), items: Vec::new() }
    }
}

impl<T: Default> Keyed<T> {
    fn get(&mut self, key: &str) -> &mut T {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.index.insert(key.to_string(), self.items.len());
                self.items.push((key.to_string(), T::default()));
                self.items.len() - 1
            }
        };
        // `i` came from the index, which only ever holds positions pushed
        // above (items are never removed), so it is always in range.
        #[allow(clippy::indexing_slicing)]
        &mut self.items[i].1
    }
}

#[derive(Default)]
struct FlagAcc {
    variants: Keyed<i64>,
    rules: Keyed<RuleAcc>,
}

#[derive(Default)]
struct RuleAcc {
    count: i64,
    assignments: Keyed<i64>,
}

impl FlagAcc {
    fn merge(&mut self, info: &FlagResolveInfo) {
        for v in &info.variant_resolve_info {
            let c = self.variants.get(&v.variant);
            *c = c.saturating_add(v.count);
        }
        for r in &info.rule_resolve_info {
            let acc = self.rules.get(&r.rule);
            acc.count = acc.count.saturating_add(r.count);
            // Summed per id: ids missing from this entry keep their counts.
            for a in &r.assignment_resolve_info {
                let c = acc.assignments.get(&a.assignment_id);
                *c = c.saturating_add(a.count);
            }
        }
    }

    fn finish(self, flag: String) -> FlagResolveInfo {
        FlagResolveInfo {
            flag,
            variant_resolve_info: self
                .variants
                .items
                .into_iter()
                .map(|(variant, count)| VariantResolveInfo { variant, count })
                .collect(),
            rule_resolve_info: self
                .rules
                .items
                .into_iter()
                .map(|(rule, acc)| RuleResolveInfo {
                    rule,
                    count: acc.count,
                    assignment_resolve_info: acc
                        .assignments
                        .items
                        .into_iter()
                        .map(|(assignment_id, count)| AssignmentResolveInfo { assignment_id, count })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct ClientAcc {
    client: String,
    keys: HashSet<Vec<u8>>,
    schemas: Vec<SchemaInstance>,
}

impl ClientAcc {
    fn add(&mut self, s: &SchemaInstance) {
        if self.schemas.len() < MAX_SCHEMAS_PER_CREDENTIAL && self.keys.insert(canonical_key(s)) {
            self.schemas.push(s.clone());
        }
    }
}

#[derive(Default)]
struct TelemetryAcc {
    any: bool,
    sdk: Option<Sdk>,
    latency: Option<(Histogram, u32, u32)>,
    ln_ratio: f64,
    rates: BTreeMap<i32, u32>,
    state_age: Option<StateAge>,
    memory_bytes: u64,
    resolver_version: String,
}

impl TelemetryAcc {
    fn merge(&mut self, t: &TelemetryData) {
        self.any = true;
        if self.sdk.is_none() {
            self.sdk = t.sdk.clone();
        }
        if let Some(l) = &t.resolve_latency {
            let (h, sum, count) = self.latency.get_or_insert_with(Default::default);
            h.add_confidence_spans(&l.buckets);
            // The proto's u32 totals saturate rather than wrap.
            *sum = sum.saturating_add(l.sum);
            *count = count.saturating_add(l.count);
            if self.ln_ratio == 0.0 {
                self.ln_ratio = l.ln_ratio;
            }
        }
        for r in &t.resolve_rate {
            let c = self.rates.entry(r.reason).or_default();
            *c = c.saturating_add(r.count);
        }
        if t.state_age.is_some() {
            self.state_age = t.state_age;
        }
        if t.memory_bytes != 0 {
            self.memory_bytes = t.memory_bytes;
        }
        if !t.resolver_version.is_empty() {
            self.resolver_version = t.resolver_version.clone();
        }
    }

    fn finish(self) -> Option<TelemetryData> {
        if !self.any {
            return None;
        }
        let ln_ratio = if self.ln_ratio == 0.0 { LN_RATIO } else { self.ln_ratio };
        Some(TelemetryData {
            sdk: self.sdk,
            resolve_latency: self.latency.map(|(h, sum, count)| ResolveLatency {
                sum,
                count,
                buckets: h.to_confidence_spans(),
                ln_ratio,
            }),
            resolve_rate: self.rates.into_iter().map(|(reason, count)| ResolveRate { count, reason }).collect(),
            state_age: self.state_age,
            memory_bytes: self.memory_bytes,
            resolver_version: self.resolver_version,
            ..Default::default()
        })
    }
}

/// Per-outcome counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcomes {
    pub ok: u64,
    pub failed: u64,
}

impl Outcomes {
    pub(crate) fn add(&mut self, ok: bool, n: u64) {
        let c = if ok { &mut self.ok } else { &mut self.failed };
        *c = c.saturating_add(n);
    }
}

/// Sticky-assignment writes by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StickyWrites {
    pub ok: u64,
    pub retried: u64,
    pub failed: u64,
}

/// What producers gave up on, as reported in their checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dropped {
    pub assign_events: u64,
    pub schemas: u64,
    pub checkpoints: u64,
    pub unattributed: u64,
}

/// Cumulative metrics: kept by the `MetricsAggregator` Durable Object and
/// mirrored to the metrics KV as JSON. Unknown or missing fields default,
/// so older stored snapshots still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSnapshot {
    /// Resolve latency in microseconds, Confidence's bucket layout.
    pub latency: Histogram,
    /// By `ResolveReason` name.
    pub resolves: BTreeMap<String, u64>,
    /// Distinct checkpoints applied, and redeliveries ignored.
    pub checkpoints: u64,
    pub duplicate_checkpoints: u64,
    pub flag_assigned_events: u64,
    pub queue_sends: Outcomes,
    /// By destination (`edge`, `ingest`, ...), as the consumer reports.
    pub deliveries: BTreeMap<String, Outcomes>,
    pub malformed_messages: u64,
    /// By route, then status class (`2xx`).
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub credential_resolves: BTreeMap<String, u64>,
    pub dropped: Dropped,
    /// Sticky-assignment reads that failed (their flags resolved as
    /// MATERIALIZATION_NOT_SUPPORTED).
    pub sticky_read_failures: u64,
    pub sticky_writes: StickyWrites,
    /// State load attempts by source, then result.
    pub state_loads: BTreeMap<String, BTreeMap<String, u64>>,
}

impl MetricsSnapshot {
    /// Parses a stored snapshot; anything unreadable starts afresh.
    pub fn from_json(s: &str) -> MetricsSnapshot {
        serde_json::from_str(s).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        // Only maps with string keys and plain numbers: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A queue message that was not a checkpoint (it was acked anyway).
    pub fn record_malformed(&mut self) {
        self.malformed_messages = self.malformed_messages.saturating_add(1);
    }

    /// One delivery attempt of an aggregated batch.
    pub fn record_delivery(&mut self, destination: &str, ok: bool) {
        self.deliveries.entry(destination.to_string()).or_default().add(ok, 1);
    }
}

impl MetricsSnapshot {
    /// Adds one checkpoint's metrics. Callers make sure each checkpoint
    /// is added once (see `aggregator::apply_batch`).
    pub fn add_checkpoint(&mut self, flag_assigned: u64, counters: Option<&ef::Counters>) {
        let s = self;
        s.checkpoints = s.checkpoints.saturating_add(1);
        s.flag_assigned_events = s.flag_assigned_events.saturating_add(flag_assigned);
        let Some(c) = counters else { return };
        if let Some(l) = &c.latency {
            s.latency.add_envelope(l);
        }
        for r in &c.resolves {
            let name = match ResolveReason::try_from(r.reason) {
                Ok(reason) => reason.as_str_name().to_string(),
                Err(_) => format!("RESOLVE_REASON_{}", r.reason),
            };
            let n = s.resolves.entry(name).or_default();
            *n = n.saturating_add(r.count);
        }
        s.queue_sends.add(true, c.queue_sends_ok);
        s.queue_sends.add(false, c.queue_sends_failed);
        for r in &c.requests {
            let n = s.requests.entry(r.route.clone()).or_default().entry(format!("{}xx", r.status_class)).or_default();
            *n = n.saturating_add(r.count);
        }
        for r in &c.credential_resolves {
            let n = s.credential_resolves.entry(r.client_credential.clone()).or_default();
            *n = n.saturating_add(r.resolves);
        }
        let d = &mut s.dropped;
        d.assign_events = d.assign_events.saturating_add(c.dropped_assign_events);
        d.schemas = d.schemas.saturating_add(c.dropped_schemas);
        d.checkpoints = d.checkpoints.saturating_add(c.dropped_checkpoints);
        d.unattributed = d.unattributed.saturating_add(c.unattributed);
        s.sticky_read_failures = s.sticky_read_failures.saturating_add(c.sticky_read_failures);
        let w = &mut s.sticky_writes;
        w.ok = w.ok.saturating_add(c.sticky_writes_ok);
        w.retried = w.retried.saturating_add(c.sticky_writes_retried);
        w.failed = w.failed.saturating_add(c.sticky_writes_failed);
        for l in &c.state_loads {
            let n = s.state_loads.entry(l.source.clone()).or_default().entry(l.result.clone()).or_default();
            *n = n.saturating_add(l.count);
        }
    }
}

/// Prometheus text exposition (format 0.0.4). Confidence's series keep
/// their names and `resolver_id` label: the latency histogram with a
/// cumulative bucket per 1/18 decade once non-zero, `+Inf`, `_sum`,
/// `_count`, and resolves by reason. edgeflag's own counters follow.
pub fn render_prometheus(s: &MetricsSnapshot) -> String {
    const RID: &str = "resolver_id=\"edgeflag\"";
    let mut o = String::new();
    if s.latency.count > 0 {
        let name = "confidence_resolve_latency_microseconds";
        header(&mut o, name, "Latency of flag resolve operations in microseconds.", "histogram");
        let mut cumulative = 0u64;
        // The whole layout, not just the stored prefix, so a bucket's
        // series does not first appear when a slower resolve reaches it.
        for i in 0..BUCKETS {
            cumulative = cumulative.saturating_add(s.latency.buckets.get(i).copied().unwrap_or(0));
            if cumulative > 0 {
                let _ = writeln!(o, "{name}_bucket{{{RID},le=\"{:.6e}\"}} {cumulative}", bucket_upper_bound(i));
            }
        }
        let _ = writeln!(o, "{name}_bucket{{{RID},le=\"+Inf\"}} {}", s.latency.count);
        let _ = writeln!(o, "{name}_sum{{{RID}}} {}", s.latency.sum);
        let _ = writeln!(o, "{name}_count{{{RID}}} {}", s.latency.count);
    }
    let mut reasons: Vec<(&String, u64)> = s.resolves.iter().filter(|(_, &n)| n > 0).map(|(k, &n)| (k, n)).collect();
    if !reasons.is_empty() {
        reasons.sort_by_key(|(k, _)| ResolveReason::from_str_name(k).map_or(i32::MAX, |r| r as i32));
        header(&mut o, "confidence_resolves_total", "Total number of flag resolve operations.", "counter");
        for (reason, n) in reasons {
            let _ = writeln!(o, "confidence_resolves_total{{{RID},reason=\"{}\"}} {n}", escape(reason));
        }
    }

    scalar(&mut o, "edgeflag_checkpoints_total", "Distinct telemetry checkpoints applied.", s.checkpoints);
    scalar(
        &mut o,
        "edgeflag_duplicate_checkpoints_total",
        "Redelivered checkpoints ignored because they were already applied.",
        s.duplicate_checkpoints,
    );
    scalar(
        &mut o,
        "edgeflag_flag_assigned_events_total",
        "Exposure events carried by applied checkpoints.",
        s.flag_assigned_events,
    );
    header(&mut o, "edgeflag_queue_sends_total", "Flag-log queue sends by the resolver, by result.", "counter");
    let _ = writeln!(o, "edgeflag_queue_sends_total{{result=\"ok\"}} {}", s.queue_sends.ok);
    let _ = writeln!(o, "edgeflag_queue_sends_total{{result=\"failed\"}} {}", s.queue_sends.failed);
    if !s.deliveries.is_empty() {
        header(&mut o, "edgeflag_deliveries_total", "Flag-log batch deliveries, by destination and result.", "counter");
        for (dest, r) in &s.deliveries {
            let d = escape(dest);
            let _ = writeln!(o, "edgeflag_deliveries_total{{destination=\"{d}\",result=\"ok\"}} {}", r.ok);
            let _ = writeln!(o, "edgeflag_deliveries_total{{destination=\"{d}\",result=\"failed\"}} {}", r.failed);
        }
    }
    scalar(
        &mut o,
        "edgeflag_malformed_messages_total",
        "Queue messages that were not checkpoints (acked and skipped).",
        s.malformed_messages,
    );
    if s.requests.values().any(|m| !m.is_empty()) {
        header(&mut o, "edgeflag_requests_total", "Requests served, by route and status class.", "counter");
        for (route, by_status) in &s.requests {
            for (status, n) in by_status {
                let _ = writeln!(
                    o,
                    "edgeflag_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                    escape(route),
                    escape(status)
                );
            }
        }
    }
    if !s.credential_resolves.is_empty() {
        header(&mut o, "edgeflag_credential_resolves_total", "Successful resolves, by client credential.", "counter");
        for (cred, n) in &s.credential_resolves {
            let _ = writeln!(o, "edgeflag_credential_resolves_total{{credential=\"{}\"}} {n}", escape(cred));
        }
    }
    scalar(
        &mut o,
        "edgeflag_sticky_read_failures_total",
        "Sticky-assignment KV reads (per unit and materialization) that failed or timed out; their flags resolved as RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED.",
        s.sticky_read_failures,
    );
    header(
        &mut o,
        "edgeflag_sticky_writes_total",
        "Sticky-assignment KV writes, by result: ok (first attempt), retried (stored by the retry), failed (not stored).",
        "counter",
    );
    let w = &s.sticky_writes;
    for (result, n) in [("ok", w.ok), ("retried", w.retried), ("failed", w.failed)] {
        let _ = writeln!(o, "edgeflag_sticky_writes_total{{result=\"{result}\"}} {n}");
    }
    if s.state_loads.values().any(|m| !m.is_empty()) {
        header(&mut o, "edgeflag_state_loads_total", "Flag-state load attempts, by source and result.", "counter");
        for (source, by_result) in &s.state_loads {
            for (result, n) in by_result {
                let _ = writeln!(
                    o,
                    "edgeflag_state_loads_total{{source=\"{}\",result=\"{}\"}} {n}",
                    escape(source),
                    escape(result)
                );
            }
        }
    }
    header(&mut o, "edgeflag_dropped_total", "Telemetry items producers gave up on, by kind.", "counter");
    let d = &s.dropped;
    for (what, n) in [
        ("assign_events", d.assign_events),
        ("schemas", d.schemas),
        ("checkpoints", d.checkpoints),
        ("unattributed", d.unattributed),
    ] {
        let _ = writeln!(o, "edgeflag_dropped_total{{what=\"{what}\"}} {n}");
    }
    o
}

fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn scalar(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, help, "counter");
    let _ = writeln!(o, "{name} {v}");
}

/// Label-value escaping of the text format: backslash, quote, newline.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod chunk_tests {
    use super::delivery_chunks;

    #[test]
    fn chunks_are_bounded_ordered_and_cover_everything() {
        assert_eq!(delivery_chunks(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(delivery_chunks(&[4, 4, 4, 4], 10), vec![0..2, 2..4]);
        assert_eq!(delivery_chunks(&[10, 1], 10), vec![0..1, 1..2]);
        // Larger than the bound: alone, never dropped.
        assert_eq!(delivery_chunks(&[3, 25, 3], 10), vec![0..1, 1..2, 2..3]);
        let sizes: Vec<usize> = (0..100).map(|i| 1 + (i * 7919) % 120_000).collect();
        let chunks = delivery_chunks(&sizes, 1 << 20);
        assert_eq!(chunks.first().map(|c| c.start), Some(0));
        assert_eq!(chunks.last().map(|c| c.end), Some(100));
        for w in chunks.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for c in &chunks {
            let bytes: usize = sizes[c.clone()].iter().sum();
            assert!(bytes <= 1 << 20 || c.len() == 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::edgeflag::v1 as ef;
    use crate::proto::events::FlagAssigned;
    use crate::telemetry::schema;

    fn cp(seq: u64, logs: WriteFlagLogsRequest, counters: ef::Counters) -> Checkpoint {
        Checkpoint { id: CheckpointId { isolate: [7; 16], sequence: seq }, created_ms: 1_000 + seq, logs, counters }
    }

    fn rule(name: &str, count: i64, ids: &[(&str, i64)]) -> RuleResolveInfo {
        RuleResolveInfo {
            rule: name.into(),
            count,
            assignment_resolve_info: ids
                .iter()
                .map(|&(a, c)| AssignmentResolveInfo { assignment_id: a.into(), count: c })
                .collect(),
        }
    }

    fn flag_info(variants: &[(&str, i64)], rules: Vec<RuleResolveInfo>) -> WriteFlagLogsRequest {
        WriteFlagLogsRequest {
            flag_resolve_info: vec![FlagResolveInfo {
                flag: "flags/f".into(),
                variant_resolve_info: variants
                    .iter()
                    .map(|&(v, c)| VariantResolveInfo { variant: v.into(), count: c })
                    .collect(),
                rule_resolve_info: rules,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn aggregation_keeps_every_assignment_id() {
        // The reference merge replaced a rule's ids with the incoming ones:
        // a1, a2, a1 gave [a1:1]. Every id must survive with its sum.
        let batch = [
            cp(0, flag_info(&[("on", 1)], vec![rule("r1", 1, &[("a1", 1)])]), Default::default()),
            cp(1, flag_info(&[("off", 1)], vec![rule("r1", 1, &[("a2", 1)])]), Default::default()),
            cp(
                2,
                flag_info(&[("on", 1), ("", 2)], vec![rule("r1", 1, &[("a1", 1)]), rule("r0", 2, &[("f", 2)])]),
                Default::default(),
            ),
        ];
        let out = aggregate(&batch);
        assert_eq!(out.flag_resolve_info.len(), 1);
        let f = &out.flag_resolve_info[0];
        let variants: Vec<(&str, i64)> = f.variant_resolve_info.iter().map(|v| (v.variant.as_str(), v.count)).collect();
        assert_eq!(variants, vec![("on", 2), ("off", 1), ("", 2)]);
        assert_eq!(f.rule_resolve_info[0], rule("r1", 3, &[("a1", 2), ("a2", 1)]));
        assert_eq!(f.rule_resolve_info[1], rule("r0", 2, &[("f", 2)]));
    }

    #[test]
    fn aggregation_merges_clients_events_and_histograms() {
        let schema_a = schema::derive(&serde_json::from_str(r#"{"targeting_key":"u","country":"SE"}"#).expect("ctx"));
        let schema_b = schema::derive(&serde_json::from_str(r#"{"targeting_key":"u","n":1}"#).expect("ctx"));
        let client = |schemas: Vec<SchemaInstance>| ClientResolveInfo {
            client: "clients/c".into(),
            client_credential: "clients/c/credentials/k".into(),
            schema: schemas,
        };
        let tel = |offset: i32, counts: Vec<u32>, sum: u32, count: u32| TelemetryData {
            resolve_latency: Some(ResolveLatency {
                sum,
                count,
                buckets: vec![crate::proto::resolver::telemetry_data::BucketSpan { offset, counts }],
                ln_ratio: LN_RATIO,
            }),
            resolve_rate: vec![ResolveRate { count, reason: ResolveReason::Match as i32 }],
            resolver_version: "x".into(),
            ..Default::default()
        };
        let one = WriteFlagLogsRequest {
            flag_assigned: vec![FlagAssigned { resolve_id: "r1".into(), ..Default::default() }],
            client_resolve_info: vec![client(vec![schema_a.clone()])],
            telemetry_data: Some(tel(43, vec![1, 0, 2], 100, 3)),
            ..Default::default()
        };
        let two = WriteFlagLogsRequest {
            flag_assigned: vec![FlagAssigned { resolve_id: "r2".into(), ..Default::default() }],
            client_resolve_info: vec![client(vec![schema_a.clone(), schema_b.clone()])],
            telemetry_data: Some(tel(44, vec![5, 1], 50, 6)),
            ..Default::default()
        };
        let batch =
            [cp(0, one.clone(), Default::default()), cp(1, two, Default::default()), cp(0, one, Default::default())];
        let out = aggregate(&batch);
        let ids: Vec<&str> = out.flag_assigned.iter().map(|e| e.resolve_id.as_str()).collect();
        assert_eq!(ids, vec!["r1", "r2"], "a repeated message is taken once");
        assert_eq!(out.client_resolve_info.len(), 1);
        assert_eq!(out.client_resolve_info[0].schema, vec![schema_a, schema_b]);
        let t = out.telemetry_data.expect("telemetry");
        let l = t.resolve_latency.expect("latency");
        assert_eq!((l.sum, l.count), (150, 9));
        assert_eq!(l.buckets.len(), 1, "overlapping spans merge into one run");
        assert_eq!((l.buckets[0].offset, l.buckets[0].counts.clone()), (43, vec![1, 5, 3]));
        assert_eq!(t.resolve_rate, vec![ResolveRate { count: 9, reason: ResolveReason::Match as i32 }]);
    }

    fn counters(ok: u64, latency_us: &[u32]) -> ef::Counters {
        let mut h = Histogram::default();
        for &v in latency_us {
            h.add_at(crate::telemetry::histogram::bucket_index(v) as i64, 1);
            h.count += 1;
            h.sum += u64::from(v);
        }
        ef::Counters {
            latency: Some(h.to_envelope()),
            resolves: vec![ef::ReasonCount { reason: ResolveReason::Match as i32, count: latency_us.len() as u64 }],
            queue_sends_ok: ok,
            requests: vec![ef::RequestCount { route: "resolve".into(), status_class: 2, count: 2 }],
            ..Default::default()
        }
    }

    #[test]
    fn metrics_apply_is_idempotent() {
        use crate::telemetry::aggregator::{apply, MemoryDedup};
        let mut m = MetricsSnapshot::default();
        let mut d = MemoryDedup::default();
        let a = cp(0, WriteFlagLogsRequest::default(), counters(1, &[250, 1000]));
        let b = cp(1, WriteFlagLogsRequest::default(), counters(0, &[1000]));
        assert!(apply(&mut m, &mut d, &a, 1));
        assert!(!apply(&mut m, &mut d, &a, 1));
        assert!(apply(&mut m, &mut d, &b, 1));
        assert!(!apply(&mut m, &mut d, &b, 1));
        // Round trip through the mirrored JSON: the counts survive.
        let mut m = MetricsSnapshot::from_json(&m.to_json());
        assert!(!apply(&mut m, &mut d, &a, 2));
        assert_eq!((m.latency.count, m.latency.sum), (3, 2250));
        assert_eq!(m.latency.buckets[43], 1);
        assert_eq!(m.latency.buckets[54], 2);
        assert_eq!(m.resolves.get("RESOLVE_REASON_MATCH"), Some(&3));
        assert_eq!((m.checkpoints, m.duplicate_checkpoints), (2, 3));
        assert_eq!(m.queue_sends.ok, 1);
        assert_eq!(m.requests["resolve"]["2xx"], 4);
        assert_eq!(MetricsSnapshot::from_json("not json"), MetricsSnapshot::default());
    }

    fn sample_metrics() -> MetricsSnapshot {
        let mut m = MetricsSnapshot::default();
        let c = cp(0, WriteFlagLogsRequest::default(), counters(2, &[0, 250, 1000, 1000, 4_000_000]));
        m.add_checkpoint(0, Some(&c.counters));
        m.resolves.insert("RESOLVE_REASON_ERROR".into(), 1);
        m.resolves.insert("RESOLVE_REASON_FLAG_ARCHIVED".into(), 0);
        m.record_delivery("edge", true);
        m.record_delivery("edge", false);
        m.record_delivery("ingest", true);
        m.record_malformed();
        m.credential_resolves.insert("clients/c/credentials/\"odd\"".into(), 5);
        m
    }

    #[test]
    fn prometheus_text() {
        let text = render_prometheus(&sample_metrics());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "# HELP confidence_resolve_latency_microseconds Latency of flag resolve operations in microseconds."
        );
        assert_eq!(lines[1], "# TYPE confidence_resolve_latency_microseconds histogram");
        assert_eq!(
            lines[2],
            "confidence_resolve_latency_microseconds_bucket{resolver_id=\"edgeflag\",le=\"1.136464e0\"} 1"
        );
        assert!(text.contains(
            "confidence_resolve_latency_microseconds_bucket{resolver_id=\"edgeflag\",le=\"2.782559e2\"} 2\n"
        ));
        assert!(text.contains(
            "confidence_resolve_latency_microseconds_bucket{resolver_id=\"edgeflag\",le=\"1.136464e3\"} 4\n"
        ));
        assert!(
            text.contains("confidence_resolve_latency_microseconds_bucket{resolver_id=\"edgeflag\",le=\"+Inf\"} 5\n")
        );
        assert!(text.contains("confidence_resolve_latency_microseconds_sum{resolver_id=\"edgeflag\"} 4002250\n"));
        assert!(text.contains("confidence_resolve_latency_microseconds_count{resolver_id=\"edgeflag\"} 5\n"));
        // Cumulative and non-decreasing, one line per bucket from the first hit.
        let buckets: Vec<u64> = lines
            .iter()
            .filter(|l| l.contains("_bucket{") && !l.contains("+Inf"))
            .map(|l| l.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("count"))
            .collect();
        assert_eq!(buckets.len(), BUCKETS);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        let match_at = text.find("reason=\"RESOLVE_REASON_MATCH\"} 5").expect("match");
        let error_at = text.find("reason=\"RESOLVE_REASON_ERROR\"} 1").expect("error");
        assert!(match_at < error_at, "reasons in enum order");
        assert!(!text.contains("FLAG_ARCHIVED"), "zero reasons are left out");
        assert!(text.contains("edgeflag_queue_sends_total{result=\"ok\"} 2\n"));
        assert!(text.contains("edgeflag_deliveries_total{destination=\"edge\",result=\"failed\"} 1\n"));
        assert!(text.contains("edgeflag_malformed_messages_total 1\n"));
        assert!(text.contains("edgeflag_requests_total{route=\"resolve\",status=\"2xx\"} 2\n"));
        assert!(text.contains("credential=\"clients/c/credentials/\\\"odd\\\"\"} 5\n"));
        // Every sample's family has HELP and TYPE before it.
        let mut typed = HashSet::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().expect("name").to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().expect("name");
                let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| {
                    if n.starts_with("confidence_resolve_latency") {
                        n.strip_suffix(s).unwrap_or(n)
                    } else {
                        n
                    }
                });
                assert!(typed.contains(family), "{l}");
            }
        }
    }

    /// `promtool check metrics` on `text`: `None` when it is not installed.
    fn promtool(text: &str) -> Option<(bool, String)> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(text.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // Exit 3 is lint only. The one lint allowed is the base unit of
        // Confidence's latency name, which dashboards depend on as it is.
        let only_unit_lint = out.status.code() == Some(3)
            && report
                .lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.starts_with("confidence_resolve_latency_microseconds use base unit \"seconds\""));
        Some((out.status.success() || only_unit_lint, report))
    }

    #[test]
    fn prometheus_passes_promtool_when_installed() {
        for m in [sample_metrics(), MetricsSnapshot::default()] {
            let text = render_prometheus(&m);
            match promtool(&text) {
                None => eprintln!("promtool not installed; skipped"),
                Some((ok, report)) => assert!(ok, "promtool: {report}\n{text}"),
            }
        }
    }
}
