//! The Queue consumer: decodes each checkpoint message, sends the batch's
//! metrics to the `MetricsAggregator` Durable Object in one call (it
//! applies each checkpoint id once; the consumer never reads or writes the
//! metrics itself), then delivers the aggregated flag logs — primary
//! destination, then fallback — in requests of at most about 1 MB of
//! messages, and reports the delivery attempts. It shares the isolate with
//! requests, so decoding yields to the event loop every 512 KB and no
//! aggregate or encode covers the whole batch.
//! Transient delivery failures are retried a few times with a short fixed
//! delay; if every destination still fails, the messages are handed back
//! to the Queue (which redelivers, then dead-letters) and the aggregator,
//! which already counted them, ignores them when they come again. If the
//! aggregator cannot be reached, nothing is delivered and the whole batch
//! is retried.

use super::{metrics_do, runtime, state_source};
use crate::proto::admin::resolver_state::LogDestination;
use crate::proto::edgeflag::v1 as ef;
use crate::proto::resolver::WriteFlagLogsRequest;
use crate::telemetry::{self, Checkpoint};
use ::worker::{Context, Delay, Env, Fetch, Headers, MessageBatch, MessageExt, Method, RequestInit};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use wasm_bindgen::JsCast;

const DELIVERY_ATTEMPTS: u32 = 3;
const RETRY_DELAY_MS: u64 = 200;
const CONFIDENCE_EDGE_URL: &str = "https://resolver.confidence.dev/v1/clientFlagLogs:write";
const CONFIDENCE_CLOUDFLARE_URL: &str =
    "https://epx-flags-logs.experimentation-platform.workers.dev/v1/flagLogs:ingest";

#[derive(Clone, PartialEq, prost::Message)]
struct IngestFlagLogsRequest {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(bytes = "vec", tag = "2")]
    batch: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Destination {
    /// JSON `WriteFlagLogsRequest`: Confidence's edge, or FLAG_LOGS_ENDPOINT.
    Json { name: &'static str, url: String },
    /// Protobuf `IngestFlagLogsRequest`: Confidence's Cloudflare ingest.
    Ingest { url: String },
}

impl Destination {
    fn name(&self) -> &'static str {
        match self {
            Destination::Json { name, .. } => name,
            Destination::Ingest { .. } => "confidence-cloudflare",
        }
    }
}

fn destinations(env: &Env) -> Vec<Destination> {
    if let Some(url) = runtime::config(env, "FLAG_LOGS_ENDPOINT").filter(|u| !u.trim().is_empty()) {
        return vec![Destination::Json { name: "endpoint", url: url.trim().to_string() }];
    }
    let configured = state_source::current().map(|s| s.log_destinations.clone()).unwrap_or_default();
    let list = if configured.is_empty() { vec![LogDestination::SpotifyEdge as i32] } else { configured };
    list.into_iter()
        .take(2)
        .map(|d| {
            if d == LogDestination::Cloudflare as i32 {
                Destination::Ingest { url: CONFIDENCE_CLOUDFLARE_URL.to_string() }
            } else {
                Destination::Json { name: "confidence-edge", url: CONFIDENCE_EDGE_URL.to_string() }
            }
        })
        .collect()
}

fn body_bytes(v: &wasm_bindgen::JsValue) -> Option<Vec<u8>> {
    if let Some(arr) = v.dyn_ref::<js_sys::Uint8Array>() {
        return Some(arr.to_vec());
    }
    v.dyn_ref::<js_sys::ArrayBuffer>().map(|b| js_sys::Uint8Array::new(b).to_vec())
}

/// Lets requests waiting on this isolate run (a zero-delay timer).
async fn yield_now() {
    Delay::from(Duration::ZERO).await;
}

pub async fn consume(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> ::worker::Result<()> {
    // The account and log destinations come from the serving state.
    let _ = state_source::for_background(&env).await;
    // (message, checkpoint, encoded size). Decoding yields every
    // DECODE_SLICE_BYTES: a full batch is about 12 MB of protobuf, and this
    // isolate serves requests in between.
    let mut decoded: Vec<(::worker::RawMessage, Checkpoint, usize)> = Vec::new();
    let mut malformed: Vec<::worker::RawMessage> = Vec::new();
    let mut since_yield = 0usize;
    for msg in batch.raw_iter() {
        let bytes = body_bytes(&msg.body());
        let size = bytes.as_ref().map_or(0, Vec::len);
        match bytes
            .ok_or_else(|| "not bytes".to_string())
            .and_then(|b| telemetry::decode_message(&b).map_err(|e| e.to_string()))
        {
            Ok(cp) => decoded.push((msg, cp, size)),
            Err(e) => {
                ::worker::console_error!("edgeflag: dropping a malformed flag-log message: {e}");
                malformed.push(msg);
            }
        }
        since_yield += size;
        if since_yield >= telemetry::DECODE_SLICE_BYTES {
            since_yield = 0;
            yield_now().await;
        }
    }

    // Metrics first, and only through the aggregator: once it answered,
    // these checkpoints count, whatever happens to their delivery.
    let metrics = ef::MetricsBatch {
        checkpoints: decoded.iter().map(|(_, cp, _)| telemetry::checkpoint_metrics(cp)).collect(),
        malformed_messages: malformed.len() as u64,
        deliveries: Vec::new(),
    };
    if let Err(e) = send_metrics(&env, &metrics).await {
        // Nothing was counted: the Queue brings the whole batch back.
        ::worker::console_error!("edgeflag: metrics aggregator unavailable, batch retried: {e}");
        for msg in malformed {
            msg.retry();
        }
        for (msg, _, _) in decoded {
            msg.retry();
        }
        return Ok(());
    }
    drop(metrics);
    // Retrying cannot fix a message that does not decode.
    for msg in malformed {
        msg.ack();
    }
    if decoded.is_empty() {
        return Ok(());
    }

    // Delivered in requests of at most MAX_DELIVERY_BYTES of messages, so
    // no aggregate or encode is large; the fetch between them lets requests
    // run. Once one request fails everywhere, the rest of the batch goes
    // back to the Queue untried (no point in retrying a dead destination
    // for every chunk). A checkpoint repeated within the batch goes once.
    let sizes: Vec<usize> = decoded.iter().map(|(_, _, n)| *n).collect();
    let mut seen = HashSet::new();
    let mut attempts: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut delivering = true;
    let mut messages = decoded.into_iter();
    for range in telemetry::delivery_chunks(&sizes, telemetry::MAX_DELIVERY_BYTES) {
        let chunk: Vec<_> = messages.by_ref().take(range.len()).collect();
        if delivering {
            let logs = telemetry::aggregate(chunk.iter().map(|(_, cp, _)| cp).filter(|cp| seen.insert(cp.id)));
            delivering = deliver(&env, &logs, &mut attempts).await;
            for (msg, _, _) in &chunk {
                if delivering {
                    msg.ack();
                } else {
                    msg.retry();
                }
            }
        } else {
            for (msg, _, _) in &chunk {
                msg.retry();
            }
        }
    }
    if !attempts.is_empty() {
        let deliveries = attempts
            .into_iter()
            .map(|(destination, (ok, failed))| ef::DeliveryCount { destination: destination.into(), ok, failed })
            .collect();
        let report = ef::MetricsBatch { deliveries, ..Default::default() };
        if let Err(e) = send_metrics(&env, &report).await {
            ::worker::console_error!("edgeflag: delivery attempts not counted: {e}");
        }
    }
    Ok(())
}

async fn send_metrics(env: &Env, batch: &ef::MetricsBatch) -> Result<(), String> {
    let body = prost::Message::encode_to_vec(batch);
    match metrics_do::apply(env, &body, "application/x-protobuf").await? {
        (200, _) => Ok(()),
        (status, why) => Err(format!("HTTP {status}: {why}")),
    }
}

/// Primary, then fallback. True once one destination took the batch.
/// Counts each attempt in `attempts` (destination -> (ok, failed)).
async fn deliver(env: &Env, logs: &WriteFlagLogsRequest, attempts: &mut BTreeMap<&'static str, (u64, u64)>) -> bool {
    let dests = destinations(env);
    let secret = runtime::config(env, "CONFIDENCE_CLIENT_SECRET").filter(|s| !s.is_empty());
    let is_endpoint = matches!(dests.first(), Some(Destination::Json { name: "endpoint", .. }));
    if secret.is_none() && !is_endpoint {
        // Nowhere to deliver: count it, do not loop the batch through retries.
        attempts.entry("none").or_default().1 += 1;
        ::worker::console_warn!("edgeflag: no CONFIDENCE_CLIENT_SECRET or FLAG_LOGS_ENDPOINT; flag logs not delivered");
        return true;
    }
    for dest in &dests {
        for attempt in 0..DELIVERY_ATTEMPTS {
            let outcome = send(dest, logs, secret.as_deref(), env).await;
            let counts = attempts.entry(dest.name()).or_default();
            if outcome.is_ok() {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            match outcome {
                Ok(()) => return true,
                Err((transient, why)) => {
                    ::worker::console_warn!(
                        "edgeflag: delivery to {} failed (attempt {}): {why}",
                        dest.name(),
                        attempt + 1
                    );
                    if !transient {
                        break;
                    }
                    if attempt + 1 < DELIVERY_ATTEMPTS {
                        Delay::from(Duration::from_millis(RETRY_DELAY_MS)).await;
                    }
                }
            }
        }
    }
    false
}

/// `Err((transient, reason))`: network errors, 429 and 5xx are transient.
async fn send(
    dest: &Destination,
    logs: &WriteFlagLogsRequest,
    secret: Option<&str>,
    _env: &Env,
) -> Result<(), (bool, String)> {
    let headers = Headers::new();
    let (url, body, ctype) = match dest {
        Destination::Json { url, .. } => {
            (url.as_str(), serde_json::to_vec(logs).map_err(|e| (false, e.to_string()))?, "application/json")
        }
        Destination::Ingest { url } => {
            let account_id = state_source::current().map(|s| s.account_id.clone()).unwrap_or_default();
            let batch = prost::Message::encode_to_vec(logs);
            (
                url.as_str(),
                prost::Message::encode_to_vec(&IngestFlagLogsRequest { account_id, batch }),
                "application/protobuf",
            )
        }
    };
    headers.set("Content-Type", ctype).map_err(|e| (false, e.to_string()))?;
    // The Confidence backend secret authenticates to Confidence only; a
    // FLAG_LOGS_ENDPOINT is someone else's server and never sees it.
    let to_confidence = !matches!(dest, Destination::Json { name: "endpoint", .. });
    if let (Some(s), true) = (secret, to_confidence) {
        headers.set("Authorization", &format!("ClientSecret {s}")).map_err(|e| (false, e.to_string()))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let req = ::worker::Request::new_with_init(url, &init).map_err(|e| (false, e.to_string()))?;
    match Fetch::Request(req).send().await {
        Ok(resp) => {
            let status = resp.status_code();
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err((status == 429 || status >= 500, format!("HTTP {status}")))
            }
        }
        Err(e) => Err((true, e.to_string())),
    }
}
