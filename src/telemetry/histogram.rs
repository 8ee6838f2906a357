//! Confidence's exponential latency histogram: 18 buckets per decade,
//! 174 buckets covering the u32 range, bucket `i` spanning
//! `[e^(i·r), e^((i+1)·r))` with `r = ln(10)/18`.

use crate::proto::edgeflag::v1 as ef;
use crate::proto::resolver::telemetry_data::BucketSpan;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// `ln(10)/18`: the bucket width in log space (Confidence's `ln_ratio`).
pub const LN_RATIO: f64 = std::f64::consts::LN_10 / 18.0;
/// Buckets needed to cover every u32 value.
pub const BUCKETS: usize = 174;

/// Which bucket a value falls in: 0 for 0, else `floor(ln(v)/r)`, capped.
pub fn bucket_index(value: u32) -> usize {
    if value == 0 {
        return 0;
    }
    let i = (f64::from(value).ln() / LN_RATIO).floor();
    // ln(v) >= 0 for v >= 1, so `i` is a small non-negative whole number.
    (i as usize).min(BUCKETS - 1)
}

/// Exclusive upper bound of bucket `i`: the Prometheus `le` of that bucket.
pub fn bucket_upper_bound(i: usize) -> f64 {
    ((i as f64 + 1.0) * LN_RATIO).exp()
}

/// Lock-free recorder: one atomic add per field, so concurrent observers
/// never block and `take` can zero it without losing an observation.
pub(crate) struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) const fn new() -> Self {
        AtomicHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, value: u32) {
        if let Some(b) = self.buckets.get(bucket_index(value)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(u64::from(value), Ordering::Relaxed);
    }

    /// Moves everything out. Each field is swapped to zero on its own, so
    /// an observation racing with `take` lands wholly in this take or the
    /// next one per field: never lost, never counted twice.
    pub(crate) fn take(&self) -> Histogram {
        let mut buckets = vec![0u64; BUCKETS];
        for (out, b) in buckets.iter_mut().zip(&self.buckets) {
            if b.load(Ordering::Relaxed) != 0 {
                *out = b.swap(0, Ordering::AcqRel);
            }
        }
        Histogram { buckets, count: self.count.swap(0, Ordering::AcqRel), sum: self.sum.swap(0, Ordering::AcqRel) }
    }
}

/// A plain histogram: dense bucket counts (index = bucket) plus totals.
/// Serialized as `{"sum":u64,"count":u64,"buckets":[u64...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.sum == 0 && self.buckets.iter().all(|&c| c == 0)
    }

    /// Adds `count` at bucket `index`, growing up to [`BUCKETS`]; indices
    /// outside the layout are ignored (they cannot come from this crate).
    pub fn add_at(&mut self, index: i64, count: u64) {
        let Ok(i) = usize::try_from(index) else { return };
        if i >= BUCKETS || count == 0 {
            return;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        if let Some(b) = self.buckets.get_mut(i) {
            *b = b.saturating_add(count);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, &c) in other.buckets.iter().enumerate() {
            self.add_at(i as i64, c);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn add_envelope(&mut self, l: &ef::Latency) {
        for span in &l.buckets {
            for (k, &c) in span.counts.iter().enumerate() {
                self.add_at(i64::from(span.offset) + k as i64, c);
            }
        }
        self.count = self.count.saturating_add(l.count);
        self.sum = self.sum.saturating_add(l.sum);
    }

    pub fn add_confidence_spans(&mut self, spans: &[BucketSpan]) {
        for span in spans {
            for (k, &c) in span.counts.iter().enumerate() {
                self.add_at(i64::from(span.offset) + k as i64, u64::from(c));
            }
        }
    }

    pub fn to_envelope(&self) -> ef::Latency {
        let buckets =
            runs(&self.buckets).map(|(offset, counts)| ef::Span { offset, counts: counts.to_vec() }).collect();
        ef::Latency { sum: self.sum, count: self.count, buckets }
    }

    /// Confidence's spans carry u32 counts; a bucket past u32 saturates.
    pub fn to_confidence_spans(&self) -> Vec<BucketSpan> {
        runs(&self.buckets)
            .map(|(offset, counts)| BucketSpan {
                offset,
                counts: counts.iter().map(|&c| u32::try_from(c).unwrap_or(u32::MAX)).collect(),
            })
            .collect()
    }
}

/// Runs of consecutive non-zero buckets as (offset, counts): one span per
/// run, so merged input never yields overlapping spans.
fn runs(buckets: &[u64]) -> impl Iterator<Item = (i32, &[u64])> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while buckets.get(i).is_some_and(|&c| c == 0) {
            i += 1;
        }
        let start = i;
        while buckets.get(i).is_some_and(|&c| c != 0) {
            i += 1;
        }
        let run = buckets.get(start..i).filter(|r| !r.is_empty())?;
        Some((i32::try_from(start).unwrap_or(i32::MAX), run))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_vectors() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 0);
        assert_eq!(bucket_index(250), 43);
        assert_eq!(bucket_index(1000), 54);
        assert_eq!(bucket_index(u32::MAX), 173);
        assert_eq!(LN_RATIO, 0.12792139405522476);
    }

    #[test]
    fn every_value_lands_inside_its_bucket() {
        for v in [1u32, 2, 3, 9, 10, 11, 99, 100, 101, 999, 1001, 65_535, 1_000_000, u32::MAX / 2] {
            let i = bucket_index(v);
            assert!(f64::from(v) < bucket_upper_bound(i) * (1.0 + 1e-12), "{v} above bucket {i}");
            if i > 0 {
                assert!(f64::from(v) >= bucket_upper_bound(i - 1) * (1.0 - 1e-12), "{v} below bucket {i}");
            }
        }
    }

    #[test]
    fn le_formatting_matches_confidence() {
        assert_eq!(format!("{:.6e}", bucket_upper_bound(0)), "1.136464e0");
        assert_eq!(format!("{:.6e}", bucket_upper_bound(17)), "1.000000e1");
    }

    #[test]
    fn spans_are_runs_and_round_trip() {
        let mut h = Histogram::default();
        for (i, c) in [(0, 2), (1, 1), (5, 4), (6, 1), (7, 3), (173, 1)] {
            h.add_at(i, c);
        }
        h.count = 12;
        h.sum = 99;
        let env = h.to_envelope();
        let offsets: Vec<(i32, Vec<u64>)> = env.buckets.iter().map(|s| (s.offset, s.counts.clone())).collect();
        assert_eq!(offsets, vec![(0, vec![2, 1]), (5, vec![4, 1, 3]), (173, vec![1])]);
        let mut back = Histogram::default();
        back.add_envelope(&env);
        assert_eq!(back, h);

        // Merging by index: overlapping input yields one run, not two spans.
        let mut merged = h.clone();
        merged.merge(&h);
        assert_eq!(merged.to_confidence_spans().len(), 3);
        assert_eq!(merged.to_confidence_spans()[1].counts, vec![8, 2, 6]);
        assert_eq!(merged.count, 24);
    }

    #[test]
    fn out_of_range_spans_are_ignored() {
        let mut h = Histogram::default();
        h.add_confidence_spans(&[
            BucketSpan { offset: -1, counts: vec![1, 1] },
            BucketSpan { offset: 173, counts: vec![1, 1] },
        ]);
        assert_eq!(h.buckets.len(), BUCKETS);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[173], 1);
    }

    #[test]
    fn atomic_take_zeroes() {
        let a = AtomicHistogram::new();
        a.record(250);
        a.record(1000);
        a.record(0);
        let h = a.take();
        assert_eq!((h.count, h.sum), (3, 1250));
        assert_eq!((h.buckets[0], h.buckets[43], h.buckets[54]), (1, 1, 1));
        assert!(a.take().is_empty());
    }
}
