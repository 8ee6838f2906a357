//! Flag logs and telemetry that are never lost or mixed.
//!
//! The producer side is one process-wide [`Telemetry`] ([`TELEMETRY`]):
//! request handlers record into it synchronously, right after a resolve,
//! apply or response, and nothing is held across an `await`, so the
//! interleaving that made the reference worker lose and mix logs (a
//! per-request global read after awaits) cannot happen. Recording is
//! lock-free: atomic adds into counters bound to the snapshot, a lock-free
//! queue for exposure events. A checkpoint takes everything at once into
//! queue messages of at most [`MAX_MESSAGE_BYTES`], each with a unique
//! [`CheckpointId`] so the consumer can apply metrics idempotently.
//!
//! Flush contract for the Worker glue (every call here is synchronous):
//!
//! ```text
//! // request path, right after the resolve (same synchronous window):
//! TELEMETRY.record_resolve(&snap, &resolution, &context, flag_assigned);
//! TELEMETRY.record_latency_us(us);              // once measured
//! TELEMETRY.record_request(Route::Resolve, status);
//! if TELEMETRY.try_claim_flush(now) {          // at most one flush scheduled
//!     ctx.wait_until(async move {
//!         if let Some(due) = TELEMETRY.flush_due_at(now) {
//!             sleep(due - now).await;          // 0 when should_flush_now
//!         }
//!         // checkpoint() also releases the claim: requests that record
//!         // while we send schedule the next flush themselves.
//!         for cp in TELEMETRY.checkpoint(Date::now(), ISOLATE_ID) {
//!             match queue.send(cp.encode() as bytes).await {
//!                 Ok(_) => TELEMETRY.record_queue_send(true),
//!                 Err(_) => { TELEMETRY.record_queue_send(false); TELEMETRY.restore(cp) }
//!             }
//!         }
//!     });
//! }
//! ```
//!
//! `ISOLATE_ID` is 16 bytes from `crypto.getRandomValues`, drawn once per
//! isolate. If `flush_due_at` is `None` the task just calls
//! `release_flush`. A restored checkpoint is resent, same id, by the next
//! flush; the next request's claim schedules it.
//!
//! The consumer, per batch: [`decode_message`] each body (a malformed one
//! is counted, logged and acked), send [`checkpoint_metrics`] of every
//! checkpoint to the metrics Durable Object in one call (it runs
//! [`apply_batch`]: each id at most once, the batch atomically), and only
//! once it answered deliver [`aggregate`] of each [`delivery_chunks`]
//! slice of the batch (at most [`MAX_DELIVERY_BYTES`] each, so no encode
//! is large in the isolate that also serves requests); then report the
//! delivery attempts and ack, or hand the messages back to the Queue if
//! delivery failed everywhere (logs go out again, metrics do not count
//! twice).

pub mod aggregator;
mod assign_log;
pub mod consumer;
mod envelope;
pub mod histogram;
mod resolve_log;
pub mod schema;

pub use aggregator::{apply_batch, checkpoint_metrics, DedupRecord, MemoryDedup, Window};
pub use assign_log::MAX_PENDING_ASSIGN_BYTES;
pub use consumer::{
    aggregate, delivery_chunks, render_prometheus, MetricsSnapshot, DECODE_SLICE_BYTES, MAX_DELIVERY_BYTES,
};
pub use envelope::{decode_message, Checkpoint, CheckpointId, DecodeError};
pub use resolve_log::MAX_SCHEMAS_PER_CREDENTIAL;

use crate::proto::admin::{ClientResolveInfo, FlagResolveInfo};
use crate::proto::edgeflag::v1 as ef;
use crate::proto::events::FlagAssigned;
use crate::proto::resolver::telemetry_data::{ResolveLatency, ResolveRate};
use crate::proto::resolver::{sdk, ResolveReason, Sdk, TelemetryData, WriteFlagLogsRequest};
use crate::proto::wkt::Struct;
use crate::resolve::Resolution;
use crate::state::snapshot::Snapshot;
use crate::state::source::{LoadResult, LoadSource};
use assign_log::{entry_size, split_by, AssignLogger};
use crossbeam_queue::SegQueue;
use histogram::{AtomicHistogram, Histogram, LN_RATIO};
use prost::Message;
use resolve_log::{Drained, ResolveLogger};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// A Cloudflare Queue message holds at most 128 KB; the rest is headroom
/// for the structured-clone framing of the bytes.
pub const MAX_MESSAGE_BYTES: usize = 120_000;
/// One checkpoint sends at most this many messages (about 2 MB); further
/// exposure events stay queued for the next one.
pub const MAX_MESSAGES_PER_CHECKPOINT: usize = 16;
/// Pending exposure bytes that make a flush due at once.
pub const FLUSH_NOW_BYTES: u64 = 64 * 1024;
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// The longest interval a throttled isolate backs off to. At 20,000
/// isolates that is still about 330 messages a second in all.
pub const MAX_FLUSH_INTERVAL_MS: u64 = 60_000;
/// A flush claim older than this is presumed dead (its `wait_until` was
/// cut off) and may be taken over.
pub const FLUSH_LEASE_MS: u64 = 30_000;
/// Failed messages kept for retry; past this the oldest are dropped and
/// counted (`dropped_checkpoints`).
pub const MAX_RETRY_BYTES: u64 = 16 << 20;
/// Telemetry `sdk.custom_id`.
pub const SDK_ID: &str = "edgeflag";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Field overhead of one message besides the logs' entries and counters:
/// format, isolate id, sequence, created_ms and two length prefixes.
const ENVELOPE_OVERHEAD: usize = 64;
/// `ResolveReason` values are dense from 0.
const REASONS: usize = ResolveReason::FlagNotFound as usize + 1;

/// Routes counted in `edgeflag_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Resolve,
    Apply,
    TelemetryUpload,
    StateEtag,
    Metrics,
    Preflight,
    Other,
    OfrepEvaluate,
    OfrepBulk,
}

impl Route {
    pub const ALL: [Route; 9] = [
        Route::Resolve,
        Route::Apply,
        Route::TelemetryUpload,
        Route::StateEtag,
        Route::Metrics,
        Route::Preflight,
        Route::Other,
        Route::OfrepEvaluate,
        Route::OfrepBulk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Resolve => "resolve",
            Route::Apply => "apply",
            Route::TelemetryUpload => "telemetry_upload",
            Route::StateEtag => "state_etag",
            Route::Metrics => "metrics",
            Route::Preflight => "preflight",
            Route::Other => "other",
            Route::OfrepEvaluate => "ofrep_evaluate",
            Route::OfrepBulk => "ofrep_bulk",
        }
    }
}

/// How one sticky-assignment write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickyWrite {
    /// Stored at the first attempt.
    Ok = 0,
    /// The first attempt failed, the retry stored it.
    Retried = 1,
    /// Not stored.
    Failed = 2,
}

/// All producer-side telemetry of one isolate. Const-constructible, so it
/// lives in a `static`; every method takes `&self` and never blocks.
pub struct Telemetry {
    resolves: ResolveLogger,
    assigns: AssignLogger,
    latency: AtomicHistogram,
    reasons: [AtomicU64; REASONS],
    /// By route, then status class 1xx..5xx.
    requests: [[AtomicU64; 5]; Route::ALL.len()],
    sends_ok: AtomicU64,
    sends_failed: AtomicU64,
    dropped_checkpoints: AtomicU64,
    sticky_read_failures: AtomicU64,
    /// Sticky writes by [`StickyWrite`] outcome.
    sticky_writes: [AtomicU64; 3],
    /// By load source, then result.
    state_loads: [[AtomicU64; LoadResult::ALL.len()]; LoadSource::ALL.len()],
    retry: SegQueue<Checkpoint>,
    retry_bytes: AtomicU64,
    /// Set after every record, cleared by a checkpoint before it drains.
    dirty: AtomicBool,
    sequence: AtomicU64,
    isolate: OnceLock<[u8; 16]>,
    /// 0 = free, else claim time + 1.
    flush_claim: AtomicU64,
    last_checkpoint_ms: AtomicU64,
    /// The configured interval, and the current one (at least that; more
    /// after the Queue throttled sends).
    base_interval_ms: AtomicU64,
    interval_ms: AtomicU64,
}

/// The isolate's telemetry.
pub static TELEMETRY: Telemetry = Telemetry::new();

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub const fn new() -> Self {
        Telemetry {
            resolves: ResolveLogger::new(),
            assigns: AssignLogger::new(),
            latency: AtomicHistogram::new(),
            reasons: [const { AtomicU64::new(0) }; REASONS],
            requests: [const { [const { AtomicU64::new(0) }; 5] }; Route::ALL.len()],
            sends_ok: AtomicU64::new(0),
            sends_failed: AtomicU64::new(0),
            dropped_checkpoints: AtomicU64::new(0),
            sticky_read_failures: AtomicU64::new(0),
            sticky_writes: [const { AtomicU64::new(0) }; 3],
            state_loads: [const { [const { AtomicU64::new(0) }; LoadResult::ALL.len()] }; LoadSource::ALL.len()],
            retry: SegQueue::new(),
            retry_bytes: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            isolate: OnceLock::new(),
            flush_claim: AtomicU64::new(0),
            last_checkpoint_ms: AtomicU64::new(0),
            base_interval_ms: AtomicU64::new(DEFAULT_FLUSH_INTERVAL_MS),
            interval_ms: AtomicU64::new(DEFAULT_FLUSH_INTERVAL_MS),
        }
    }

    fn touch(&self) {
        // Release: a checkpoint that sees the flag also sees the adds.
        self.dirty.store(true, Ordering::Release);
    }

    /// Records one successful, final resolve (not a provisional sticky
    /// `Discover` pass): per-flag variant/rule/assignment counts, reasons,
    /// the credential and its context schema, and the exposure event the
    /// resolve logged when it applied (`None` if it did not). `snap` must
    /// be the snapshot `res` was resolved against.
    pub fn record_resolve(
        &self,
        snap: &Arc<Snapshot>,
        res: &Resolution<'_, '_>,
        context: &Struct,
        assigned: Option<FlagAssigned>,
    ) {
        self.resolves.record(snap, res, context);
        for f in &res.flags {
            if let Some(c) = self.reasons.get(f.reason as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(ev) = assigned {
            self.assigns.push(ev);
        }
        self.touch();
    }

    /// Records the exposure event of a `flags:apply`.
    pub fn record_apply(&self, ev: FlagAssigned) {
        self.assigns.push(ev);
        self.touch();
    }

    /// A resolve that failed as a whole counts one `RESOLVE_REASON_ERROR`.
    pub fn record_failed_resolve(&self) {
        if let Some(c) = self.reasons.get(ResolveReason::Error as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
    }

    /// Sticky-assignment reads (per unit and materialization) that failed.
    pub fn record_sticky_read_failures(&self, n: u64) {
        if n > 0 {
            self.sticky_read_failures.fetch_add(n, Ordering::Relaxed);
            self.touch();
        }
    }

    /// One sticky-assignment write's outcome (`edgeflag_sticky_writes_total`).
    pub fn record_sticky_write(&self, outcome: StickyWrite) {
        if let Some(c) = self.sticky_writes.get(outcome as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
    }

    /// One state load attempt (`edgeflag_state_loads_total`).
    pub fn record_state_load(&self, source: LoadSource, result: LoadResult) {
        let row = LoadSource::ALL.iter().position(|s| *s == source);
        let col = LoadResult::ALL.iter().position(|r| *r == result);
        if let Some(c) = row.zip(col).and_then(|(r, c)| self.state_loads.get(r).and_then(|row| row.get(c))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
    }

    pub fn record_latency_us(&self, micros: u32) {
        self.latency.record(micros);
        self.touch();
    }

    pub fn record_request(&self, route: Route, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(c) = self.requests.get(route as usize).and_then(|r| r.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
    }

    /// The outcome of sending one checkpoint. Does not by itself make a
    /// flush due (else every send would cause another): it rides along
    /// with the next checkpoint that has something else to say.
    /// A successful send also walks a backed-off interval a quarter of the
    /// way back to the configured one.
    pub fn record_queue_send(&self, ok: bool) {
        let c = if ok { &self.sends_ok } else { &self.sends_failed };
        c.fetch_add(1, Ordering::Relaxed);
        if ok {
            let base = self.base_interval_ms.load(Ordering::Relaxed);
            let _ = self.interval_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur > base).then(|| (cur - (cur - base).div_ceil(16)).max(base))
            });
        }
    }

    /// The Queue refused a send as over its rate (a 429): the caller keeps
    /// the data ([`Self::restore`]) and this isolate flushes half as often,
    /// up to [`MAX_FLUSH_INTERVAL_MS`], so fewer, larger messages carry it.
    pub fn record_queue_throttled(&self) {
        let base = self.base_interval_ms.load(Ordering::Relaxed);
        let _ = self.interval_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            Some(cur.saturating_mul(2).max(base).min(MAX_FLUSH_INTERVAL_MS.max(base)))
        });
    }

    /// The current flush interval.
    pub fn flush_interval_ms(&self) -> u64 {
        self.interval_ms.load(Ordering::Relaxed)
    }

    /// The wait before the next flush: the current interval, spread over
    /// ±25% (by `salt`) while backed off, so isolates throttled together do
    /// not all come back in the same instant.
    pub fn next_flush_wait_ms(&self, salt: u64) -> u64 {
        let cur = self.interval_ms.load(Ordering::Relaxed);
        if cur <= self.base_interval_ms.load(Ordering::Relaxed) {
            return cur;
        }
        cur - cur / 4 + mix(salt) % (cur / 2 + 1)
    }

    /// Takes back a checkpoint whose send failed; the next checkpoint
    /// returns it first, unchanged and with the same id, so a send that
    /// failed only from our side of the wire is deduplicated downstream.
    pub fn restore(&self, cp: Checkpoint) {
        self.retry_bytes.fetch_add(cp.encoded_len() as u64, Ordering::AcqRel);
        self.retry.push(cp);
        while self.retry_bytes.load(Ordering::Acquire) > MAX_RETRY_BYTES {
            let Some(old) = self.retry.pop() else { break };
            self.retry_bytes.fetch_sub(old.encoded_len() as u64, Ordering::AcqRel);
            self.dropped_checkpoints.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the configured flush interval (0 restores the default) and
    /// resets any back-off.
    pub fn set_flush_interval_ms(&self, ms: u64) {
        let ms = if ms == 0 { DEFAULT_FLUSH_INTERVAL_MS } else { ms };
        self.base_interval_ms.store(ms, Ordering::Relaxed);
        self.interval_ms.store(ms, Ordering::Relaxed);
    }

    /// Queued exposure events plus messages waiting for a retry, in bytes.
    pub fn pending_bytes(&self) -> u64 {
        self.assigns.pending_bytes().saturating_add(self.retry_bytes.load(Ordering::Acquire))
    }

    /// Whether a checkpoint would have anything to send.
    pub fn has_pending(&self) -> bool {
        self.dirty.load(Ordering::Acquire) || self.pending_bytes() > 0
    }

    /// Flush without waiting: a message's worth of events is pending, or
    /// something is pending and the interval has passed.
    pub fn should_flush_now(&self, now_ms: u64) -> bool {
        if self.assigns.pending_bytes() >= FLUSH_NOW_BYTES {
            return true;
        }
        let last = self.last_checkpoint_ms.load(Ordering::Relaxed);
        self.has_pending() && last != 0 && now_ms >= last.saturating_add(self.interval_ms.load(Ordering::Relaxed))
    }

    /// When the next flush should run: `None` if there is nothing to send,
    /// `now_ms` if [`Self::should_flush_now`], else one interval after the
    /// previous checkpoint (or after `now_ms`, for the isolate's first).
    pub fn flush_due_at(&self, now_ms: u64) -> Option<u64> {
        if !self.has_pending() {
            return None;
        }
        if self.should_flush_now(now_ms) {
            return Some(now_ms);
        }
        // The first flush waits an interval too, batching the first requests.
        let last = match self.last_checkpoint_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now_ms,
            Err(last) => last,
        };
        let salt = self.sequence.load(Ordering::Relaxed)
            ^ u64::from_le_bytes(
                self.isolate.get().map_or([0; 8], |id| [id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]),
            );
        Some(last.saturating_add(self.next_flush_wait_ms(salt)).max(now_ms))
    }

    /// Claims the right to schedule the next flush; `false` if another
    /// request's flush is already scheduled (and not older than the lease).
    pub fn try_claim_flush(&self, now_ms: u64) -> bool {
        let cur = self.flush_claim.load(Ordering::Acquire);
        if cur != 0 && now_ms.saturating_sub(cur - 1) < FLUSH_LEASE_MS {
            return false;
        }
        self.flush_claim.compare_exchange(cur, now_ms.saturating_add(1), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Gives up a claim without checkpointing (`checkpoint` releases too).
    pub fn release_flush(&self) {
        self.flush_claim.store(0, Ordering::Release);
    }

    /// Aggregates alive (one per snapshot still in use): for diagnostics.
    pub fn live_aggregates(&self) -> usize {
        self.resolves.live()
    }

    /// Takes everything recorded so far into queue messages: first any
    /// failed ones handed back by [`Self::restore`], then fresh ones, each
    /// under [`MAX_MESSAGE_BYTES`] with its own id. Exposure events beyond
    /// [`MAX_MESSAGES_PER_CHECKPOINT`] messages stay queued. `isolate` is
    /// the isolate's random id; the first value passed is kept for good.
    /// Also releases the flush claim.
    pub fn checkpoint(&self, now_ms: u64, isolate: [u8; 16]) -> Vec<Checkpoint> {
        let isolate = *self.isolate.get_or_init(|| isolate);
        self.release_flush();
        self.last_checkpoint_ms.store(now_ms.max(1), Ordering::Relaxed);
        let mut out = Vec::new();
        while out.len() < MAX_MESSAGES_PER_CHECKPOINT {
            let Some(cp) = self.retry.pop() else { break };
            self.retry_bytes.fetch_sub(cp.encoded_len() as u64, Ordering::AcqRel);
            out.push(cp);
        }

        // Cleared before draining: a record racing with us either lands in
        // this drain or leaves the flag set for the next one.
        self.dirty.swap(false, Ordering::AcqRel);
        let mut drained = Drained::default();
        self.resolves.drain(&mut drained);
        let latency = self.latency.take();
        let reasons: Vec<(i32, u64)> =
            self.reasons.iter().enumerate().map(|(i, c)| (i as i32, take(c))).filter(|&(_, n)| n > 0).collect();
        let mut counters = ef::Counters {
            latency: (!latency.is_empty()).then(|| latency.to_envelope()),
            resolves: reasons.iter().map(|&(reason, count)| ef::ReasonCount { reason, count }).collect(),
            requests: self.take_requests(),
            credential_resolves: drained
                .credential_resolves
                .iter()
                .map(|(c, n)| ef::CredentialCount { client_credential: c.clone(), resolves: *n })
                .collect(),
            dropped_assign_events: self.assigns.take_dropped(),
            dropped_schemas: drained.dropped_schemas,
            dropped_checkpoints: take(&self.dropped_checkpoints),
            unattributed: drained.unattributed,
            sticky_read_failures: take(&self.sticky_read_failures),
            sticky_writes_ok: self.sticky_writes.first().map_or(0, take),
            sticky_writes_retried: self.sticky_writes.get(1).map_or(0, take),
            sticky_writes_failed: self.sticky_writes.get(2).map_or(0, take),
            state_loads: self.take_state_loads(),
            ..Default::default()
        };
        let fresh = counters != ef::Counters::default()
            || !drained.flags.is_empty()
            || !drained.clients.is_empty()
            || self.assigns.pending_bytes() > 0;
        if !fresh {
            return out;
        }
        counters.queue_sends_ok = take(&self.sends_ok);
        counters.queue_sends_failed = take(&self.sends_failed);

        let telemetry = confidence_telemetry(&latency, &reasons);
        let mut packer = Packer::new(
            ENVELOPE_OVERHEAD
                + entry_size(counters.encoded_len())
                + telemetry.as_ref().map_or(0, |t| entry_size(t.encoded_len())),
        );
        let max_item = MAX_MESSAGE_BYTES - ENVELOPE_OVERHEAD;
        let mut dropped_items = 0u64;
        for info in drained.flags {
            let (pieces, dropped) = split_by(info, max_item, |m: &mut FlagResolveInfo| &mut m.rule_resolve_info);
            dropped_items += dropped;
            for p in pieces {
                packer.add(entry_size(p.encoded_len()), |r| r.flag_resolve_info.push(p));
            }
        }
        for info in drained.clients {
            let (pieces, dropped) = split_by(info, max_item, |m: &mut ClientResolveInfo| &mut m.schema);
            dropped_items += dropped;
            for p in pieces {
                packer.add(entry_size(p.encoded_len()), |r| r.client_resolve_info.push(p));
            }
        }
        counters.dropped_schemas += dropped_items;
        self.drain_assigned(&mut packer, MAX_MESSAGES_PER_CHECKPOINT.saturating_sub(out.len()).max(1));

        for (i, logs) in packer.finish().into_iter().enumerate() {
            let mut logs = logs;
            let counters = if i == 0 {
                logs.telemetry_data = telemetry.clone();
                std::mem::take(&mut counters)
            } else {
                ef::Counters::default()
            };
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            out.push(Checkpoint { id: CheckpointId { isolate, sequence }, created_ms: now_ms, logs, counters });
        }
        out
    }

    /// Moves queued exposure events into the packer while they fit in at
    /// most `max_messages` messages; the first that does not is put back.
    fn drain_assigned(&self, packer: &mut Packer, max_messages: usize) {
        let max_item = MAX_MESSAGE_BYTES - ENVELOPE_OVERHEAD;
        let mut full = false;
        while !full {
            let Some((ev, size)) = self.assigns.pop() else { break };
            let pieces = if size <= max_item {
                vec![ev]
            } else {
                let (pieces, dropped) = split_by(ev, max_item, |m: &mut FlagAssigned| &mut m.flags);
                self.assigns.count_dropped(dropped);
                pieces
            };
            for p in pieces {
                let w = entry_size(p.encoded_len());
                if full || (!packer.fits(w) && packer.len() >= max_messages) {
                    full = true;
                    self.assigns.push_front(p, w);
                    continue;
                }
                packer.add(w, |r| r.flag_assigned.push(p));
            }
        }
    }

    fn take_state_loads(&self) -> Vec<ef::StateLoadCount> {
        let mut out = Vec::new();
        for (source, row) in LoadSource::ALL.iter().zip(&self.state_loads) {
            for (result, c) in LoadResult::ALL.iter().zip(row) {
                let count = take(c);
                if count > 0 {
                    out.push(ef::StateLoadCount {
                        source: source.as_str().to_string(),
                        result: result.as_str().to_string(),
                        count,
                    });
                }
            }
        }
        out
    }

    fn take_requests(&self) -> Vec<ef::RequestCount> {
        let mut out = Vec::new();
        for (route, row) in Route::ALL.iter().zip(&self.requests) {
            for (class, c) in row.iter().enumerate() {
                let count = take(c);
                if count > 0 {
                    out.push(ef::RequestCount {
                        route: route.as_str().to_string(),
                        status_class: class as u32 + 1,
                        count,
                    });
                }
            }
        }
        out
    }
}

fn take(c: &AtomicU64) -> u64 {
    if c.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    c.swap(0, Ordering::AcqRel)
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Confidence's `TelemetryData` for a checkpoint (u32 fields saturate;
/// the exact u64 values travel in `Counters`).
fn confidence_telemetry(latency: &Histogram, reasons: &[(i32, u64)]) -> Option<TelemetryData> {
    if latency.count == 0 && reasons.is_empty() {
        return None;
    }
    Some(TelemetryData {
        sdk: Some(Sdk { sdk: Some(sdk::Sdk::CustomId(SDK_ID.to_string())), version: VERSION.to_string() }),
        resolve_latency: (latency.count > 0).then(|| ResolveLatency {
            sum: saturate(latency.sum),
            count: saturate(latency.count),
            buckets: latency.to_confidence_spans(),
            ln_ratio: LN_RATIO,
        }),
        resolve_rate: reasons.iter().map(|&(reason, n)| ResolveRate { count: saturate(n), reason }).collect(),
        resolver_version: VERSION.to_string(),
        ..Default::default()
    })
}

/// Greedy packing of log entries into size-bounded messages.
struct Packer {
    msgs: Vec<(WriteFlagLogsRequest, usize)>,
}

impl Packer {
    /// The first message also carries counters and telemetry: `first` bytes.
    fn new(first: usize) -> Self {
        Packer { msgs: vec![(WriteFlagLogsRequest::default(), first)] }
    }

    fn len(&self) -> usize {
        self.msgs.len()
    }

    fn fits(&self, w: usize) -> bool {
        self.msgs.last().is_some_and(|(_, size)| size + w <= MAX_MESSAGE_BYTES)
    }

    fn add(&mut self, w: usize, put: impl FnOnce(&mut WriteFlagLogsRequest)) {
        if !self.fits(w) {
            self.msgs.push((WriteFlagLogsRequest::default(), ENVELOPE_OVERHEAD));
        }
        if let Some((req, size)) = self.msgs.last_mut() {
            put(req);
            *size += w;
        }
    }

    fn finish(self) -> Vec<WriteFlagLogsRequest> {
        self.msgs.into_iter().map(|(r, _)| r).collect()
    }
}

/// splitmix64's finalizer: spreads a counter into well-mixed bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a Queue send failure is the Queue's rate limit (it throws "Too
/// Many Requests", status 429) rather than a fault.
pub fn is_throttled(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("429") || e.contains("too many requests")
}

/// Which of `queues` producer queues an isolate sends to: fixed per
/// isolate (its random id spreads isolates evenly), so each queue takes
/// about 1/n of the messages.
pub fn pick_queue(isolate: &[u8; 16], queues: usize) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&isolate[..8]);
    (u64::from_le_bytes(first) % queues.max(1) as u64) as usize
}

#[cfg(test)]
mod tests;
