//! The `MetricsAggregator` Durable Object: the one writer of the
//! cumulative metrics (one instance, by fixed name), and the Worker-side
//! calls to it.
//!
//! `POST /apply` takes an `edgeflag.v1.MetricsBatch` (protobuf, or proto3
//! JSON) and runs `telemetry::apply_batch` inside one SQLite
//! `transactionSync`: the dedup windows and the snapshot row commit
//! together or not at all, with no await in between. `GET /snapshot`
//! answers the snapshot JSON (`/metrics?consistent=1`).
//!
//! Readers at any colo get the metrics from `METRICS_KV` instead, which
//! this object mirrors at most once a second: an apply only schedules the
//! alarm (if none is), the alarm writes the newest version, so a burst of
//! batches costs one KV write. Nobody else writes that key, so no stale KV
//! read can lose an update.

use super::runtime;
use crate::proto::edgeflag::v1 as ef;
use crate::telemetry::aggregator::{apply_batch, Outcome, DEDUP_TTL_MS};
use crate::telemetry::{DedupRecord, MetricsSnapshot, Window};
use ::worker::{
    durable_object, DurableObject, Env, Method, Request, RequestInit, Response, Result, ScheduledTime, SqlStorage,
    SqlStorageValue, State, Storage,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

/// The Durable Object namespace binding (wrangler.toml).
pub const BINDING: &str = "METRICS_AGGREGATOR";
/// The single instance's name.
const OBJECT_NAME: &str = "metrics";
/// KV key of the mirrored snapshot JSON that `GET /metrics` reads.
pub const METRICS_KEY: &str = "metrics:snapshot";
/// KV takes one write per second per key.
const MIRROR_INTERVAL_MS: f64 = 1000.0;
const CALL_ATTEMPTS: u32 = 3;
const CALL_RETRY_MS: u64 = 200;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY CHECK (id = 0), snapshot TEXT NOT NULL, \
     version INTEGER NOT NULL, mirrored INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS applied (isolate TEXT PRIMARY KEY, window TEXT NOT NULL, at_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS applied_at ON applied (at_ms)",
];

/// The stored snapshot and its version; `mirrored` is the version in KV.
#[derive(Clone, Default)]
struct Current {
    metrics: Rc<MetricsSnapshot>,
    version: i64,
    mirrored: i64,
}

#[derive(serde::Deserialize)]
struct MetricsRow {
    snapshot: String,
    version: f64,
    mirrored: f64,
}

#[derive(serde::Deserialize)]
struct WindowRow {
    window: String,
}

#[durable_object]
pub struct MetricsAggregator {
    state: State,
    env: Env,
    /// What storage holds, once read (single-threaded object: no races).
    current: RefCell<Option<Current>>,
    last_mirror_ms: Cell<f64>,
}

/// The dedup record in the object's SQLite table, one row per isolate.
struct SqlDedup<'a>(&'a SqlStorage);

impl DedupRecord for SqlDedup<'_> {
    type Error = ::worker::Error;

    fn window(&mut self, isolate: &[u8; 16]) -> Result<Window> {
        let rows: Vec<WindowRow> = self
            .0
            .exec("SELECT window FROM applied WHERE isolate = ?", vec![SqlStorageValue::from(hex(isolate))])?
            .to_array()?;
        Ok(rows.first().and_then(|r| serde_json::from_str(&r.window).ok()).unwrap_or_default())
    }

    fn store(&mut self, isolate: &[u8; 16], window: &Window, now_ms: u64) -> Result<()> {
        let json = serde_json::to_string(window).map_err(|e| ::worker::Error::RustError(e.to_string()))?;
        self.0.exec(
            "INSERT INTO applied (isolate, window, at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (isolate) DO UPDATE SET window = excluded.window, at_ms = excluded.at_ms",
            vec![hex(isolate).into(), json.into(), SqlStorageValue::Integer(now_ms as i64)],
        )?;
        Ok(())
    }
}

fn hex(b: &[u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn err(e: impl std::fmt::Display) -> ::worker::Error {
    ::worker::Error::RustError(e.to_string())
}

/// Runs `f` in `storage.transactionSync`: everything it wrote is rolled
/// back if it returns `Err`. (workers-rs does not wrap this call.)
fn transaction_sync<T: 'static>(storage: &Storage, f: impl FnOnce() -> Result<T> + 'static) -> Result<T> {
    let out: Rc<RefCell<Option<T>>> = Rc::default();
    let slot = out.clone();
    let callback = Closure::once_into_js(move || -> std::result::Result<JsValue, JsValue> {
        let value = f().map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
        *slot.borrow_mut() = Some(value);
        Ok(JsValue::UNDEFINED)
    });
    let raw: &JsValue = storage.as_raw().as_ref();
    let func: js_sys::Function = js_sys::Reflect::get(raw, &JsValue::from_str("transactionSync"))?
        .dyn_into()
        .map_err(|_| err("storage.transactionSync is not available (is the class SQLite-backed?)"))?;
    func.call1(raw, &callback)?;
    let value = out.borrow_mut().take();
    value.ok_or_else(|| err("transaction returned nothing"))
}

impl MetricsAggregator {
    fn current(&self) -> Result<Current> {
        if let Some(c) = self.current.borrow().as_ref() {
            return Ok(c.clone());
        }
        let rows: Vec<MetricsRow> = self
            .state
            .storage()
            .sql()
            .exec("SELECT snapshot, version, mirrored FROM metrics WHERE id = 0", None)?
            .to_array()?;
        let c = rows
            .into_iter()
            .next()
            .map(|r| Current {
                metrics: Rc::new(MetricsSnapshot::from_json(&r.snapshot)),
                version: r.version as i64,
                mirrored: r.mirrored as i64,
            })
            .unwrap_or_default();
        *self.current.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// The batch, applied atomically; synchronous from reading the stored
    /// state to committing, so no other request interleaves.
    fn apply(&self, batch: ef::MetricsBatch) -> Result<Outcome> {
        let current = self.current()?;
        let storage = self.state.storage();
        let sql = storage.sql();
        let mut working = (*current.metrics).clone();
        let version = current.version + 1;
        let mirrored = current.mirrored;
        let now = runtime::now_ms() as u64;
        let (metrics, outcome) = transaction_sync(&storage, move || {
            let outcome = apply_batch(&mut working, &mut SqlDedup(&sql), &batch, now).map_err(err)?;
            sql.exec(
                "INSERT INTO metrics (id, snapshot, version, mirrored) VALUES (0, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, version = excluded.version",
                vec![working.to_json().into(), SqlStorageValue::Integer(version), SqlStorageValue::Integer(mirrored)],
            )?;
            Ok((working, outcome))
        })?;
        *self.current.borrow_mut() = Some(Current { metrics: Rc::new(metrics), version, mirrored });
        Ok(outcome)
    }

    async fn schedule_mirror(&self) -> Result<()> {
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_none() {
            let at = runtime::now_ms().max(self.last_mirror_ms.get() + MIRROR_INTERVAL_MS);
            storage.set_alarm(at_time(at)).await?;
        }
        Ok(())
    }

    async fn mirror(&self) -> Result<()> {
        let now = runtime::now_ms();
        self.state.storage().sql().exec(
            "DELETE FROM applied WHERE at_ms < ?",
            vec![SqlStorageValue::Integer((now as i64).saturating_sub(DEDUP_TTL_MS as i64))],
        )?;
        let current = self.current()?;
        if current.version != current.mirrored {
            self.last_mirror_ms.set(now);
            let put = self.env.kv("METRICS_KV")?.put(METRICS_KEY, current.metrics.to_json()).map_err(err)?;
            match put.execute().await {
                Ok(()) => {
                    self.state.storage().sql().exec(
                        "UPDATE metrics SET mirrored = ? WHERE id = 0",
                        vec![SqlStorageValue::Integer(current.version)],
                    )?;
                    if let Some(c) = self.current.borrow_mut().as_mut() {
                        c.mirrored = c.mirrored.max(current.version);
                    }
                }
                Err(e) => ::worker::console_error!("edgeflag: mirroring metrics to KV failed: {e}"),
            }
        }
        // Newer batches arrived meanwhile, or the write failed: again in a second.
        let after = self.current()?;
        if after.version != after.mirrored {
            self.state.storage().set_alarm(at_time(runtime::now_ms() + MIRROR_INTERVAL_MS)).await?;
        }
        Ok(())
    }
}

/// An absolute alarm time (workers-rs reads a bare integer as an offset).
fn at_time(epoch_ms: f64) -> ScheduledTime {
    ScheduledTime::new(js_sys::Date::new(&JsValue::from_f64(epoch_ms)))
}

fn text(status: u16, body: String) -> Result<Response> {
    Ok(Response::ok(body)?.with_status(status))
}

impl DurableObject for MetricsAggregator {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        for stmt in SCHEMA {
            if let Err(e) = sql.exec(stmt, None) {
                ::worker::console_error!("edgeflag: metrics schema: {e}");
            }
        }
        MetricsAggregator { state, env, current: RefCell::new(None), last_mirror_ms: Cell::new(0.0) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/apply") => {
                let json = req.headers().get("Content-Type")?.unwrap_or_default().starts_with("application/json");
                let body = req.bytes().await?;
                let batch = if json {
                    serde_json::from_slice::<ef::MetricsBatch>(&body).map_err(|e| e.to_string())
                } else {
                    prost::Message::decode(body.as_slice()).map_err(|e: prost::DecodeError| e.to_string())
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return text(400, format!("not an edgeflag.v1.MetricsBatch: {e}")),
                };
                if let Some((i, c)) = batch.checkpoints.iter().enumerate().find(|(_, c)| c.isolate_id.len() != 16) {
                    return text(
                        400,
                        format!("checkpoints[{i}].isolate_id: {} bytes, expected 16", c.isolate_id.len()),
                    );
                }
                let outcome = self.apply(batch)?;
                self.schedule_mirror().await?;
                Response::from_json(&outcome)
            }
            (Method::Get, "/snapshot") => {
                let c = self.current()?;
                let mut resp = Response::ok(c.metrics.to_json())?;
                resp.headers_mut().set("Content-Type", "application/json")?;
                Ok(resp)
            }
            _ => text(404, "no such route".into()),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.mirror().await?;
        Response::ok("")
    }
}

fn stub(env: &Env) -> Result<::worker::Stub> {
    env.durable_object(BINDING)?.get_by_name(OBJECT_NAME)
}

/// Sends one batch to the aggregator (`body` protobuf or JSON), retrying a
/// failed call briefly. `Ok` once it applied the batch; a 4xx is returned
/// as `Ok` with its status, since retrying cannot fix it.
pub async fn apply(env: &Env, body: &[u8], content_type: &str) -> std::result::Result<(u16, String), String> {
    let mut last = String::new();
    for attempt in 0..CALL_ATTEMPTS {
        if attempt > 0 {
            ::worker::Delay::from(std::time::Duration::from_millis(CALL_RETRY_MS)).await;
        }
        let call = async {
            let headers = ::worker::Headers::new();
            headers.set("Content-Type", content_type)?;
            let mut init = RequestInit::new();
            init.with_method(Method::Post).with_headers(headers).with_body(Some(js_sys::Uint8Array::from(body).into()));
            let req = Request::new_with_init("https://metrics-aggregator/apply", &init)?;
            let mut resp = stub(env)?.fetch_with_request(req).await?;
            Ok::<_, ::worker::Error>((resp.status_code(), resp.text().await?))
        };
        match call.await {
            Ok((status, body)) if status < 500 => return Ok((status, body)),
            Ok((status, body)) => last = format!("HTTP {status}: {body}"),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The aggregator's current snapshot (strongly consistent).
pub async fn snapshot(env: &Env) -> Result<MetricsSnapshot> {
    let mut resp = stub(env)?.fetch_with_str("https://metrics-aggregator/snapshot").await?;
    if resp.status_code() != 200 {
        return Err(err(format!("metrics aggregator answered HTTP {}", resp.status_code())));
    }
    Ok(MetricsSnapshot::from_json(&resp.text().await?))
}

/// The snapshot last mirrored to KV (possibly a second or a KV propagation
/// delay behind); empty if none yet.
pub async fn mirrored(env: &Env) -> Result<MetricsSnapshot> {
    let kv = env.kv("METRICS_KV")?;
    let text = kv.get(METRICS_KEY).text().await.map_err(err)?;
    Ok(text.map(|t| MetricsSnapshot::from_json(&t)).unwrap_or_default())
}
