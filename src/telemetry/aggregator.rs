//! The single writer's pure part: applying a consumer batch's metrics to
//! the cumulative [`MetricsSnapshot`], each checkpoint at most once.
//!
//! The `MetricsAggregator` Durable Object (worker/metrics_do.rs) runs
//! [`apply_batch`] inside one storage transaction, with a [`DedupRecord`]
//! backed by its SQLite table; tests run it over [`MemoryDedup`]. Either
//! way the whole batch is applied or nothing is: ids are checked against
//! the record, counted into a copy, and only a batch that fully validated
//! changes anything.
//!
//! The dedup record holds one [`Window`] per producer isolate (every
//! sequence below `floor`, plus the sorted ones above it) and is bounded
//! by age: a window untouched for [`DEDUP_TTL_MS`] by the aggregator's own
//! clock is deleted. That is longer than a Queue keeps any message (14 days
//! at most), so a redelivery always finds its id; the number of isolates
//! is not capped.

use super::consumer::MetricsSnapshot;
use super::envelope::Checkpoint;
use crate::proto::edgeflag::v1 as ef;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Queues keep a message at most 14 days; a day more of margin.
pub const DEDUP_TTL_MS: u64 = 15 * 24 * 60 * 60 * 1000;
/// Out-of-order sequences remembered per isolate above its floor (a gap is
/// a send retried later; producers retry within a few checkpoints). Past
/// this the floor moves up and the oldest gap is taken as applied.
pub const MAX_OUT_OF_ORDER: usize = 1024;

/// Which sequences of one isolate were applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Window {
    pub floor: u64,
    pub above: Vec<u64>,
}

impl Window {
    pub fn contains(&self, sequence: u64) -> bool {
        sequence < self.floor || self.above.binary_search(&sequence).is_ok()
    }

    /// Marks `sequence` applied; `false` if it already was.
    pub fn insert(&mut self, sequence: u64) -> bool {
        let pos = match self.above.binary_search(&sequence) {
            _ if sequence < self.floor => return false,
            Ok(_) => return false,
            Err(pos) => pos,
        };
        self.above.insert(pos, sequence);
        if self.above.len() > MAX_OUT_OF_ORDER {
            let cut = self.above.len() - MAX_OUT_OF_ORDER;
            self.floor = self.above.get(cut).copied().unwrap_or(self.floor);
            self.above.drain(..cut);
        }
        let run = self.above.iter().zip(self.floor..).take_while(|(&s, f)| s == *f).count();
        if run > 0 {
            self.floor += run as u64;
            self.above.drain(..run);
        }
        true
    }
}

/// Where [`apply_batch`] looks up and records applied ids.
pub trait DedupRecord {
    type Error: fmt::Display;
    /// The isolate's window (default if never seen or expired).
    fn window(&mut self, isolate: &[u8; 16]) -> Result<Window, Self::Error>;
    /// Stores the isolate's window, applied at `now_ms` (aggregator clock).
    fn store(&mut self, isolate: &[u8; 16], window: &Window, now_ms: u64) -> Result<(), Self::Error>;
}

/// In-memory [`DedupRecord`] with the same age bound, for native use.
#[derive(Debug, Clone, Default)]
pub struct MemoryDedup {
    windows: HashMap<[u8; 16], (Window, u64)>,
}

impl MemoryDedup {
    /// Drops windows untouched for [`DEDUP_TTL_MS`] before `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.windows.retain(|_, (_, at)| at.saturating_add(DEDUP_TTL_MS) >= now_ms);
    }

    pub fn isolates(&self) -> usize {
        self.windows.len()
    }
}

impl DedupRecord for MemoryDedup {
    type Error = std::convert::Infallible;

    fn window(&mut self, isolate: &[u8; 16]) -> Result<Window, Self::Error> {
        Ok(self.windows.get(isolate).map(|(w, _)| w.clone()).unwrap_or_default())
    }

    fn store(&mut self, isolate: &[u8; 16], window: &Window, now_ms: u64) -> Result<(), Self::Error> {
        self.windows.insert(*isolate, (window.clone(), now_ms));
        Ok(())
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub applied: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchError {
    /// A checkpoint whose isolate id is not 16 bytes; nothing was applied.
    IsolateId { index: usize, len: usize },
    /// The dedup record failed; nothing may be kept.
    Storage(String),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::IsolateId { index, len } => {
                write!(f, "checkpoints[{index}].isolate_id: {len} bytes, expected 16")
            }
            BatchError::Storage(e) => write!(f, "dedup record: {e}"),
        }
    }
}

/// The consumer's view of a decoded queue message: its metrics only.
pub fn checkpoint_metrics(cp: &Checkpoint) -> ef::CheckpointMetrics {
    ef::CheckpointMetrics {
        isolate_id: cp.id.isolate.to_vec(),
        sequence: cp.id.sequence,
        created_ms: cp.created_ms,
        flag_assigned: cp.logs.flag_assigned.len() as u64,
        counters: Some(cp.counters.clone()),
    }
}

/// Applies `batch` to `metrics`: each checkpoint not yet in `dedup` is
/// counted and recorded, the rest (including repeats within the batch) only
/// count as duplicates; then the batch's malformed-message and delivery
/// counts are added. On `Err`, `metrics` is unchanged, and the caller must
/// discard whatever `dedup` stored (the Durable Object rolls back its
/// transaction).
pub fn apply_batch<D: DedupRecord>(
    metrics: &mut MetricsSnapshot,
    dedup: &mut D,
    batch: &ef::MetricsBatch,
    now_ms: u64,
) -> Result<Outcome, BatchError> {
    let mut ids = Vec::with_capacity(batch.checkpoints.len());
    for (index, c) in batch.checkpoints.iter().enumerate() {
        let isolate: [u8; 16] =
            c.isolate_id.as_slice().try_into().map_err(|_| BatchError::IsolateId { index, len: c.isolate_id.len() })?;
        ids.push(isolate);
    }
    let storage = |e: D::Error| BatchError::Storage(e.to_string());
    let mut windows: HashMap<[u8; 16], (Window, bool)> = HashMap::new();
    let mut next = metrics.clone();
    let mut out = Outcome::default();
    for (c, isolate) in batch.checkpoints.iter().zip(&ids) {
        let entry = match windows.entry(*isolate) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert((dedup.window(isolate).map_err(storage)?, false)),
        };
        if entry.0.insert(c.sequence) {
            entry.1 = true;
            out.applied += 1;
            next.add_checkpoint(c.flag_assigned, c.counters.as_ref());
        } else {
            out.duplicates += 1;
            next.duplicate_checkpoints = next.duplicate_checkpoints.saturating_add(1);
        }
    }
    for _ in 0..batch.malformed_messages {
        next.record_malformed();
    }
    for d in &batch.deliveries {
        let o = next.deliveries.entry(d.destination.clone()).or_default();
        o.ok = o.ok.saturating_add(d.ok);
        o.failed = o.failed.saturating_add(d.failed);
    }
    for (isolate, (window, changed)) in &windows {
        if *changed {
            dedup.store(isolate, window, now_ms).map_err(storage)?;
        }
    }
    *metrics = next;
    Ok(out)
}

/// One checkpoint through [`apply_batch`]: `true` if it was counted.
pub fn apply(metrics: &mut MetricsSnapshot, dedup: &mut MemoryDedup, cp: &Checkpoint, now_ms: u64) -> bool {
    let batch = ef::MetricsBatch { checkpoints: vec![checkpoint_metrics(cp)], ..Default::default() };
    matches!(apply_batch(metrics, dedup, &batch, now_ms), Ok(o) if o.applied == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::resolver::ResolveReason;

    fn entry(isolate: u8, sequence: u64, matches: u64) -> ef::CheckpointMetrics {
        ef::CheckpointMetrics {
            isolate_id: vec![isolate; 16],
            sequence,
            created_ms: 1,
            flag_assigned: matches,
            counters: Some(ef::Counters {
                resolves: vec![ef::ReasonCount { reason: ResolveReason::Match as i32, count: matches }],
                ..Default::default()
            }),
        }
    }

    fn batch(entries: Vec<ef::CheckpointMetrics>) -> ef::MetricsBatch {
        ef::MetricsBatch { checkpoints: entries, ..Default::default() }
    }

    #[test]
    fn window_handles_reordering_and_stays_bounded() {
        let mut w = Window::default();
        for seq in [3, 0, 2] {
            assert!(w.insert(seq));
        }
        assert!(!w.insert(0) && !w.insert(3) && !w.contains(1));
        assert!(w.insert(1));
        assert_eq!(w, Window { floor: 4, above: vec![] });
        let mut w = Window::default();
        for seq in 10..(10 + MAX_OUT_OF_ORDER as u64 + 5) {
            assert!(w.insert(seq));
        }
        assert!(w.above.len() <= MAX_OUT_OF_ORDER);
        assert!(w.contains(3), "below the floor counts as applied");
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut m = MetricsSnapshot::default();
        let mut d = MemoryDedup::default();
        let mut bad = batch(vec![entry(1, 0, 1), entry(2, 0, 1)]);
        bad.checkpoints[1].isolate_id.pop();
        assert_eq!(apply_batch(&mut m, &mut d, &bad, 5), Err(BatchError::IsolateId { index: 1, len: 15 }));
        assert_eq!((m, d.isolates()), (MetricsSnapshot::default(), 0));
    }

    #[test]
    fn repeats_within_and_across_batches_count_once() {
        let mut m = MetricsSnapshot::default();
        let mut d = MemoryDedup::default();
        let b = batch(vec![entry(1, 1, 2), entry(1, 1, 2), entry(1, 0, 3)]);
        assert_eq!(apply_batch(&mut m, &mut d, &b, 5), Ok(Outcome { applied: 2, duplicates: 1 }));
        assert_eq!(apply_batch(&mut m, &mut d, &b, 6), Ok(Outcome { applied: 0, duplicates: 3 }));
        assert_eq!(m.resolves["RESOLVE_REASON_MATCH"], 5);
        assert_eq!((m.checkpoints, m.duplicate_checkpoints, m.flag_assigned_events), (2, 4, 5));
    }

    #[test]
    fn dedup_record_expires_by_age_not_count() {
        let mut m = MetricsSnapshot::default();
        let mut d = MemoryDedup::default();
        let many: Vec<_> = (0..10_000u32).map(|i| entry((i % 251) as u8, u64::from(i / 251), 1)).collect();
        apply_batch(&mut m, &mut d, &batch(many), 0).expect("apply");
        assert_eq!(d.isolates(), 251);
        d.prune(DEDUP_TTL_MS);
        assert_eq!(d.isolates(), 251, "kept for the whole TTL");
        apply_batch(&mut m, &mut d, &batch(vec![entry(1, 999, 1)]), DEDUP_TTL_MS).expect("apply");
        d.prune(DEDUP_TTL_MS + 1);
        assert_eq!(d.isolates(), 1);
    }
}
