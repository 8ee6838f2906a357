//! The Queue consumer: decodes each checkpoint message, folds the batch into
//! the cumulative metrics in KV (idempotent per checkpoint id), and delivers
//! the aggregated flag logs — primary destination, then fallback. Transient
//! delivery failures are retried a few times with a short fixed delay; if
//! every destination still fails, the messages are handed back to the Queue
//! (which redelivers, then dead-letters) and the metrics, already counted,
//! are not counted again.

use super::{flags, runtime};
use crate::proto::admin::resolver_state::LogDestination;
use crate::proto::resolver::WriteFlagLogsRequest;
use crate::telemetry::{self, Checkpoint, MetricsSnapshot};
use ::worker::{Context, Delay, Env, Fetch, Headers, MessageBatch, MessageExt, Method, RequestInit};
use std::time::Duration;
use wasm_bindgen::JsCast;

/// KV key of the cumulative metrics snapshot.
pub const METRICS_KEY: &str = "metrics:snapshot";
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
    let configured = flags::snapshot().map(|s| s.log_destinations.clone()).unwrap_or_default();
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

pub async fn consume(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> ::worker::Result<()> {
    let mut decoded: Vec<(::worker::RawMessage, Checkpoint)> = Vec::new();
    let mut malformed = 0u32;
    for msg in batch.raw_iter() {
        match body_bytes(&msg.body())
            .ok_or_else(|| "not bytes".to_string())
            .and_then(|b| telemetry::decode_message(&b).map_err(|e| e.to_string()))
        {
            Ok(cp) => decoded.push((msg, cp)),
            Err(e) => {
                // Retrying cannot fix a message that does not decode.
                ::worker::console_error!("edgeflag: dropping a malformed flag-log message: {e}");
                malformed += 1;
                msg.ack();
            }
        }
    }

    let kv = env.kv("METRICS_KV").ok();
    let mut metrics = match &kv {
        Some(kv) => read_metrics(kv).await,
        None => None,
    };
    if let Some((m, _)) = metrics.as_mut() {
        for _ in 0..malformed {
            m.record_malformed();
        }
        for (_, cp) in &decoded {
            telemetry::apply(m, cp);
        }
    }

    let delivered = if decoded.is_empty() {
        true
    } else {
        let logs = telemetry::aggregate(decoded.iter().map(|(_, cp)| cp));
        deliver(&env, &logs, metrics.as_mut().map(|(m, _)| m)).await
    };

    if let (Some(kv), Some((m, written_ms))) = (&kv, metrics) {
        write_metrics(kv, &m, written_ms).await;
    }
    for (msg, _) in decoded {
        if delivered {
            msg.ack();
        } else {
            msg.retry();
        }
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct WrittenAt {
    ms: f64,
}

pub async fn read_metrics(kv: &::worker::kv::KvStore) -> Option<(MetricsSnapshot, f64)> {
    for _ in 0..2 {
        match kv.get(METRICS_KEY).text_with_metadata::<WrittenAt>().await {
            Ok((text, meta)) => {
                let snap = text.map(|t| MetricsSnapshot::from_json(&t)).unwrap_or_default();
                return Some((snap, meta.map(|m| m.ms).unwrap_or(0.0)));
            }
            Err(e) => ::worker::console_error!("edgeflag: reading metrics failed: {e}"),
        }
    }
    None
}

async fn write_metrics(kv: &::worker::kv::KvStore, m: &MetricsSnapshot, written_ms: f64) {
    // KV allows one write per second per key: wait out the remainder.
    let since = runtime::now_ms() - written_ms;
    if since < 1000.0 {
        Delay::from(Duration::from_millis((1000.0 - since).clamp(0.0, 1000.0) as u64 + 5)).await;
    }
    let json = m.to_json();
    for attempt in 0..3 {
        let put = kv.put(METRICS_KEY, json.as_str()).and_then(|p| p.metadata(WrittenAt { ms: runtime::now_ms() }));
        let result = match put {
            Ok(p) => p.execute().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                ::worker::console_error!("edgeflag: writing metrics failed (attempt {}): {e}", attempt + 1);
                Delay::from(Duration::from_millis(1000)).await;
            }
        }
    }
}

/// Primary, then fallback. True once one destination took the batch.
async fn deliver(env: &Env, logs: &WriteFlagLogsRequest, mut metrics: Option<&mut MetricsSnapshot>) -> bool {
    let dests = destinations(env);
    let secret = runtime::config(env, "CONFIDENCE_CLIENT_SECRET").filter(|s| !s.is_empty());
    let is_endpoint = matches!(dests.first(), Some(Destination::Json { name: "endpoint", .. }));
    if secret.is_none() && !is_endpoint {
        // Nowhere to deliver: count it, do not loop the batch through retries.
        if let Some(m) = metrics.as_deref_mut() {
            m.record_delivery("none", false);
        }
        ::worker::console_warn!("edgeflag: no CONFIDENCE_CLIENT_SECRET or FLAG_LOGS_ENDPOINT; flag logs not delivered");
        return true;
    }
    for dest in &dests {
        for attempt in 0..DELIVERY_ATTEMPTS {
            let outcome = send(dest, logs, secret.as_deref(), env).await;
            if let Some(m) = metrics.as_deref_mut() {
                m.record_delivery(dest.name(), outcome.is_ok());
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
            let account_id = flags::snapshot().map(|s| s.account_id.clone()).unwrap_or_default();
            let batch = prost::Message::encode_to_vec(logs);
            (
                url.as_str(),
                prost::Message::encode_to_vec(&IngestFlagLogsRequest { account_id, batch }),
                "application/protobuf",
            )
        }
    };
    headers.set("Content-Type", ctype).map_err(|e| (false, e.to_string()))?;
    if let Some(s) = secret {
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
