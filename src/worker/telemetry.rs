//! Worker side of telemetry. Recording happens in the resolve's synchronous
//! window, into the static lock-free loggers; flushing happens later, in a
//! `wait_until` task that one request per interval claims, which takes a
//! checkpoint of everything pending (all requests' data, not its own) and
//! sends it to the Queue as one message (or a few, if it is large). A
//! failed send hands the checkpoint back, to go out with the next flush.

use super::runtime;
use crate::proto::events::FlagAssigned;
use crate::proto::wkt::Struct;
use crate::resolve::Resolution;
use crate::state::snapshot::Snapshot;
use crate::telemetry::{Route, TELEMETRY};
use ::worker::{Delay, QueueContentType, RawMessageBuilder};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Names this isolate in checkpoint ids, which the consumer dedupes on.
static ISOLATE: OnceLock<[u8; 16]> = OnceLock::new();

fn isolate_id() -> [u8; 16] {
    *ISOLATE.get_or_init(|| {
        let mut id = [0u8; 16];
        if runtime::random_bytes(&mut id).is_err() {
            // Time-derived fallback: unique enough to keep ids apart.
            let t = runtime::now_ms().to_bits().to_le_bytes();
            id[..8].copy_from_slice(&t);
        }
        id
    })
}

fn micros(elapsed_ms: f64) -> u32 {
    (elapsed_ms.max(0.0) * 1000.0).min(u32::MAX as f64) as u32
}

pub fn resolved(
    snap: &Arc<Snapshot>,
    res: &Resolution<'_, '_>,
    context: &Struct,
    assigned: Option<FlagAssigned>,
    elapsed_ms: f64,
) {
    TELEMETRY.record_resolve(snap, res, context, assigned);
    TELEMETRY.record_latency_us(micros(elapsed_ms));
}

pub fn applied(assigned: FlagAssigned) {
    TELEMETRY.record_apply(assigned);
}

pub fn failed_resolve(elapsed_ms: f64) {
    TELEMETRY.record_failed_resolve();
    TELEMETRY.record_latency_us(micros(elapsed_ms));
}

pub fn sticky_read_failures(n: usize) {
    TELEMETRY.record_sticky_read_failures(n as u64);
}

pub fn request(route: Route, status: u16) {
    TELEMETRY.record_request(route, status);
}

/// Claims the next flush if nobody has; the claimant's `wait_until` waits
/// for the interval (or less, when enough is pending) and sends.
pub fn schedule_flush(env: &::worker::Env, ctx: &::worker::Context) {
    let now = runtime::now_ms() as u64;
    if !TELEMETRY.has_pending() || !TELEMETRY.try_claim_flush(now) {
        return;
    }
    let queue = match env.queue("FLAG_LOGS_QUEUE") {
        Ok(q) => q,
        Err(_) => {
            // No queue bound: nowhere to send; keep the data bounded in memory.
            TELEMETRY.release_flush();
            return;
        }
    };
    ctx.wait_until(async move {
        let Some(due) = TELEMETRY.flush_due_at(now) else {
            TELEMETRY.release_flush();
            return;
        };
        if due > now {
            Delay::from(Duration::from_millis(due - now)).await;
        }
        for cp in TELEMETRY.checkpoint(runtime::now_ms() as u64, isolate_id()) {
            let bytes = cp.encode();
            let body = js_sys::Uint8Array::from(bytes.as_slice());
            let msg = RawMessageBuilder::new(body.into()).build_with_content_type(QueueContentType::V8);
            match queue.send_raw(msg).await {
                Ok(()) => TELEMETRY.record_queue_send(true),
                Err(e) => {
                    ::worker::console_error!("edgeflag: queue send failed, kept for the next flush: {e}");
                    TELEMETRY.record_queue_send(false);
                    TELEMETRY.restore(cp);
                }
            }
        }
    });
}
