//! Worker side of telemetry. Recording happens in the resolve's synchronous
//! window, into the static lock-free loggers; flushing happens later, in a
//! `wait_until` task that one request per interval claims, which takes a
//! checkpoint of everything pending (all requests' data, not its own) and
//! sends it to the Queue as one message (or a few, if it is large). A
//! failed send hands the checkpoint back, to go out with the next flush;
//! a send the Queue throttled (429) also doubles this isolate's interval
//! (up to a minute, recovering on success), so a saturated queue gets
//! fewer, larger messages instead of losing data. Each isolate sends to
//! one of `FLAG_LOGS_QUEUES`, by isolate id, to spread past one queue's
//! 5,000 messages a second.

use super::runtime;
use crate::proto::events::FlagAssigned;
use crate::proto::wkt::Struct;
use crate::resolve::Resolution;
use crate::state::snapshot::Snapshot;
use crate::telemetry::{self, Route, TELEMETRY};
use ::worker::{Delay, QueueContentType, RawMessageBuilder};
use std::sync::{Arc, Once, OnceLock};
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

static CONFIGURED: Once = Once::new();

/// `FLAG_LOGS_INTERVAL_MS`: the configured checkpoint interval (default
/// 1000), read once per isolate.
fn configure(env: &::worker::Env) {
    CONFIGURED.call_once(|| {
        let ms = runtime::config(env, "FLAG_LOGS_INTERVAL_MS").and_then(|v| v.trim().parse::<u64>().ok());
        TELEMETRY.set_flush_interval_ms(ms.unwrap_or(0).min(telemetry::MAX_FLUSH_INTERVAL_MS));
    });
}

/// The producer queue binding of this isolate: one of the comma-separated
/// `FLAG_LOGS_QUEUES` (chosen by isolate id), else `FLAG_LOGS_QUEUE`.
fn queue_binding(env: &::worker::Env) -> String {
    let list = runtime::config(env, "FLAG_LOGS_QUEUES").unwrap_or_default();
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    names
        .get(telemetry::pick_queue(&isolate_id(), names.len()))
        .map_or_else(|| "FLAG_LOGS_QUEUE".to_string(), |name| (*name).to_string())
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

pub fn sticky_write(outcome: telemetry::StickyWrite) {
    TELEMETRY.record_sticky_write(outcome);
}

pub fn state_load(source: crate::state::source::LoadSource, result: crate::state::source::LoadResult) {
    TELEMETRY.record_state_load(source, result);
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
    configure(env);
    let queue = match env.queue(&queue_binding(env)) {
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
        send(&queue).await;
    });
}

/// Outside a request (the cron tick): checkpoints and sends now, awaited.
pub async fn flush_now(env: &::worker::Env) {
    configure(env);
    let now = runtime::now_ms() as u64;
    if !TELEMETRY.has_pending() || !TELEMETRY.try_claim_flush(now) {
        return;
    }
    match env.queue(&queue_binding(env)) {
        Ok(queue) => send(&queue).await,
        Err(_) => TELEMETRY.release_flush(),
    }
}

async fn send(queue: &::worker::Queue) {
    let mut throttled = false;
    for cp in TELEMETRY.checkpoint(runtime::now_ms() as u64, isolate_id()) {
        if throttled {
            // The Queue is over its rate: keep the rest for later.
            TELEMETRY.restore(cp);
            continue;
        }
        let bytes = cp.encode();
        let body = js_sys::Uint8Array::from(bytes.as_slice());
        let msg = RawMessageBuilder::new(body.into()).build_with_content_type(QueueContentType::V8);
        let sent = match super::faults::before(crate::faults::Site::QueueSend).await {
            Ok(()) => queue.send_raw(msg).await.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        match sent {
            Ok(()) => TELEMETRY.record_queue_send(true),
            Err(why) => {
                TELEMETRY.record_queue_send(false);
                TELEMETRY.restore(cp);
                if telemetry::is_throttled(&why) {
                    throttled = true;
                    TELEMETRY.record_queue_throttled();
                    ::worker::console_warn!(
                        "edgeflag: queue throttled, kept for the next flush; interval now {} ms",
                        TELEMETRY.flush_interval_ms()
                    );
                } else {
                    ::worker::console_error!("edgeflag: queue send failed, kept for the next flush: {why}");
                }
            }
        }
    }
}
