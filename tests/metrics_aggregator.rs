//! The metrics single writer's pure logic under a randomized (seeded)
//! delivery schedule: checkpoints from many isolates arrive in shuffled
//! batches, duplicated, redelivered after failed deliveries, in batches
//! whose storage transaction fails and rolls back, across restarts that
//! reload the stored snapshot. The totals must come out exact.
// Test code: a panic is a test failure, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

use edgeflag::proto::edgeflag::v1 as ef;
use edgeflag::proto::resolver::ResolveReason;
use edgeflag::telemetry::{apply_batch, DedupRecord, MemoryDedup, MetricsSnapshot, Window};
use std::collections::BTreeMap;

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A record whose `store` fails once armed: a storage transaction that
/// aborts half-way (the caller rolls back by restoring its copy).
struct Flaky<'a> {
    inner: &'a mut MemoryDedup,
    fail_after: Option<usize>,
}

impl DedupRecord for Flaky<'_> {
    type Error = String;
    fn window(&mut self, isolate: &[u8; 16]) -> Result<Window, String> {
        Ok(self.inner.window(isolate).unwrap_or_else(|e| match e {}))
    }
    fn store(&mut self, isolate: &[u8; 16], window: &Window, now_ms: u64) -> Result<(), String> {
        match self.fail_after.as_mut() {
            Some(0) => return Err("injected storage failure".into()),
            Some(n) => *n -= 1,
            None => {}
        }
        self.inner.store(isolate, window, now_ms).map_err(|e| match e {})
    }
}

const REASONS: [ResolveReason; 3] = [ResolveReason::Match, ResolveReason::NoSegmentMatch, ResolveReason::Error];

fn checkpoint(rng: &mut Rng, isolate: u8, sequence: u64, want: &mut BTreeMap<String, u64>) -> ef::CheckpointMetrics {
    let mut resolves = Vec::new();
    for r in REASONS {
        let n = rng.below(20);
        if n > 0 {
            *want.entry(r.as_str_name().to_string()).or_default() += n;
            resolves.push(ef::ReasonCount { reason: r as i32, count: n });
        }
    }
    let mut id = [0u8; 16];
    id[0] = isolate;
    id[15] = 0xee;
    ef::CheckpointMetrics {
        isolate_id: id.to_vec(),
        sequence,
        created_ms: 1,
        flag_assigned: rng.below(5),
        counters: Some(ef::Counters { resolves, queue_sends_ok: 1, ..Default::default() }),
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let isolates = 40u8;
    let per_isolate = 60u64;
    let mut want_reasons = BTreeMap::new();
    let mut want_assigned = 0u64;
    let mut pool: Vec<ef::CheckpointMetrics> = Vec::new();
    // Producers send out of order: a sequence's send may be retried later.
    let mut order: Vec<(u8, u64)> = (0..isolates).flat_map(|i| (0..per_isolate).map(move |s| (i, s))).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let all: Vec<_> = order
        .into_iter()
        .map(|(i, s)| {
            let c = checkpoint(&mut rng, i, s, &mut want_reasons);
            want_assigned += c.flag_assigned;
            c
        })
        .collect();
    let distinct = all.len() as u64;

    let mut stored = MetricsSnapshot::default();
    let mut dedup = MemoryDedup::default();
    let mut next = all.into_iter();
    let (mut batches, mut redelivered, mut rolled_back, mut duplicates_sent) = (0u64, 0u64, 0u64, 0u64);
    let mut now = 1_000u64;
    for _ in 0..100_000 {
        // Producers keep sending while the consumer drains.
        for _ in 0..rng.below(12) {
            if let Some(c) = next.next() {
                pool.push(c);
            }
        }
        if pool.is_empty() {
            if next.len() == 0 {
                break;
            }
            continue;
        }
        // A batch: random members of what is in flight.
        let mut batch = ef::MetricsBatch::default();
        for _ in 0..(1 + rng.below(10)).min(pool.len() as u64) {
            let i = rng.below(pool.len() as u64) as usize;
            batch.checkpoints.push(pool.swap_remove(i));
        }
        // At-least-once: the Queue sometimes hands a message over twice.
        if rng.chance(15) {
            let i = rng.below(batch.checkpoints.len() as u64) as usize;
            batch.checkpoints.push(batch.checkpoints[i].clone());
            duplicates_sent += 1;
        }
        now += rng.below(500);
        batches += 1;
        let fail_storage = rng.chance(10);
        let saved_dedup = dedup.clone();
        let mut working = stored.clone();
        let result = apply_batch(
            &mut working,
            &mut Flaky { inner: &mut dedup, fail_after: fail_storage.then(|| rng.below(3) as usize) },
            &batch,
            now,
        );
        match result {
            Ok(_) => stored = working,
            Err(_) => {
                // The transaction rolled back: nothing of it is kept.
                dedup = saved_dedup;
                rolled_back += 1;
                pool.extend(batch.checkpoints);
                continue;
            }
        }
        // Delivery failed: the Queue redelivers the whole batch later.
        if rng.chance(20) {
            redelivered += 1;
            pool.extend(batch.checkpoints);
        }
        // The object restarts now and then: state comes back from storage.
        if rng.chance(5) {
            stored = MetricsSnapshot::from_json(&stored.to_json());
        }
    }
    assert!(pool.is_empty() && next.len() == 0, "seed {seed}: schedule did not drain");
    assert!(redelivered > 0 && rolled_back > 0 && duplicates_sent > 0, "seed {seed}: schedule too tame");
    assert_eq!(stored.resolves, want_reasons, "seed {seed}");
    assert_eq!(stored.checkpoints, distinct, "seed {seed}");
    assert_eq!(stored.flag_assigned_events, want_assigned, "seed {seed}");
    assert_eq!(stored.queue_sends.ok, distinct, "seed {seed}");
    assert!(stored.duplicate_checkpoints >= duplicates_sent, "seed {seed}");
    eprintln!(
        "seed {seed}: {distinct} checkpoints in {batches} batches, {redelivered} redelivered, \
         {rolled_back} rolled back, {} duplicates ignored",
        stored.duplicate_checkpoints
    );
}

#[test]
fn randomized_interleaving_counts_every_checkpoint_exactly_once() {
    for seed in [1, 7, 42, 0xC0FFEE, 2026] {
        run(seed);
    }
}
