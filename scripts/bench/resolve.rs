//! Native resolver-core benchmark, one thread: `cargo bench --bench resolve`.
//!
//! Prints markdown tables of
//! - `Snapshot::load` time: the conformance state, the demo state (when
//!   there is one), a 5 MB generated pb state (also as the Worker loads it
//!   embedded) and the large synthetic state;
//! - resolve throughput for 1, 10 and all of a client's flags per request,
//!   on the conformance, demo and large synthetic states (≥1,000 flags, 200
//!   segments with full-size bitsets, 5 clients; built in-process by the
//!   same generator as `scripts/bench/gen_state.rs`);
//! - JSON request parsing and response writing per request, and the three
//!   together (what a Worker does per request apart from I/O).
//!
//! Every row runs for a fixed time budget after a warm-up. Each iteration
//! gets a distinct targeting key (`user-<i>`), so every flag is bucketed
//! afresh. Environment: `BENCH_SECS` (budget per row, default 1.0),
//! `BENCH_FILTER` or the first free argument (only rows whose state label
//! contains it).
// Benchmark tool, never shipped: a panic aborts the benchmark run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

#[path = "synth.rs"]
mod synth;

use edgeflag::api;
use edgeflag::ofrep;
use edgeflag::proto::wkt::{value::Kind, Struct, Value};
use edgeflag::resolve::sticky::{Sticky, StickySet};
use edgeflag::resolve::{self, Request, DEFAULT_SELECTOR};
use edgeflag::state::formats::encode_pb;
use edgeflag::state::snapshot::{BitsetCheck, LoadOptions, Snapshot};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONFORMANCE_SECRET: &str = "test-secret";
/// Where the demo state may live, first match wins.
const DEMO_STATES: [&str; 2] = ["demo/state.json", "src/demo_state.json"];
/// A resolve id of the usual length, so response sizes are realistic.
const RESOLVE_ID: &str = "bNch7x0Qk2ZlR4aWv9Tt1YhE3uJm5sPd";

struct Case {
    label: String,
    snap: Snapshot,
    secret: String,
    /// The client's active flags, in state order, plus the first nine again
    /// so any 10-flag window is one contiguous slice.
    flags: Vec<String>,
    client_flags: usize,
    /// Cycled through; each gets a fresh targeting key per iteration.
    contexts: Vec<Struct>,
}

#[derive(Clone, Copy)]
enum Width {
    One,
    Ten,
    All,
}

impl Width {
    fn label(self, case: &Case) -> String {
        match self {
            Width::One => "1".into(),
            Width::Ten => "10".into(),
            Width::All => format!("all ({})", case.client_flags),
        }
    }

    fn names(self, case: &Case, i: usize) -> &[String] {
        let n = case.client_flags;
        match self {
            Width::One => std::slice::from_ref(&case.flags[i % n]),
            Width::Ten => &case.flags[i % n..i % n + 10],
            // Empty means "every flag of the client".
            Width::All => &[],
        }
    }
}

fn main() {
    let opts = Opts::from_env();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    println!("## Native core (`cargo bench --bench resolve`)\n");
    println!("{}\n", machine_note());
    println!(
        "One thread; {:.1} s per row after a warm-up; distinct targeting key per request; sticky store empty.\n",
        opts.budget.as_secs_f64()
    );

    let mut loads: Vec<(String, usize, Measure)> = Vec::new();
    let mut cases: Vec<Case> = Vec::new();

    // The conformance state (suite JSON).
    let conf_path = root.join("../shared/conformance/resolver-spec/state.json");
    match std::fs::read(&conf_path) {
        Ok(bytes) => {
            let m = measure(opts.load_budget(), |_| {
                black_box(Snapshot::load(black_box(&bytes), None, None).expect("conformance state loads"));
                1
            });
            loads.push(("conformance (suite JSON)".into(), bytes.len(), m));
            let snap = Snapshot::load(&bytes, None, None).expect("conformance state loads");
            let ctx: Struct = serde_json::from_str(r#"{"targeting_key":"user1","country":"SE"}"#).expect("context");
            cases.push(Case::new("conformance", snap, CONFORMANCE_SECRET, vec![ctx]));
        }
        Err(e) => println!("> skipped the conformance state: {}: {e}\n", conf_path.display()),
    }

    // The demo state a fresh clone's Worker serves; optional.
    let demo_path = DEMO_STATES.iter().map(|p| root.join(p)).find(|p| p.is_file());
    match demo_path.as_ref().map(|p| (p, std::fs::read(p))) {
        Some((path, Ok(bytes))) => match load_any(&bytes) {
            Ok(snap) => {
                let m = measure(opts.load_budget(), |_| {
                    black_box(load_any(black_box(&bytes)).expect("demo state loads"));
                    1
                });
                loads.push((format!("demo ({})", snap.format), bytes.len(), m));
                match first_secret(&bytes) {
                    Some(secret) => cases.push(Case::new("demo", snap, &secret, synth::contexts(64, 7))),
                    None => println!("> demo state has no client secret; not resolving against it\n"),
                }
            }
            Err(e) => println!("> skipped the demo state: {} does not load: {e}\n", path.display()),
        },
        Some((path, Err(e))) => println!("> skipped the demo state: {}: {e}\n", path.display()),
        None => println!("> skipped the demo state: none of {DEMO_STATES:?} exists\n"),
    }

    // A 5 MB pb state, the size used for the Worker cold-start test.
    {
        let cfg = synth::Config { flags: 200, segments: 10, target_bytes: 5_000_000, ..Default::default() };
        let bytes = encode_pb(&synth::generate(&cfg).0);
        let opts_budget = opts.load_budget();
        let m = measure(opts_budget, |_| {
            black_box(Snapshot::load(black_box(&bytes), None, Some(synth::ACCOUNT)).expect("5 MB state loads"));
            1
        });
        loads.push(("generated 5 MB (pb)".into(), bytes.len(), m));
        // As the Worker loads its embedded state: static bytes, validated at
        // build time, so bitsets are sliced and inflated on first use.
        let embedded: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let opts = LoadOptions {
            account: Some(synth::ACCOUNT),
            etag: Some("build-time"),
            bitsets: BitsetCheck::Deferred,
            ..LoadOptions::default()
        };
        let m = measure(opts_budget, |_| {
            black_box(Snapshot::load_static(black_box(embedded), opts).expect("5 MB state loads"));
            1
        });
        loads.push(("generated 5 MB, as embedded (deferred bitsets)".into(), embedded.len(), m));
    }

    // The large synthetic state.
    let cfg = synth::Config::default();
    let t = Instant::now();
    let (state, summary) = synth::generate(&cfg);
    let bytes = encode_pb(&state);
    drop(state);
    let gen_time = t.elapsed();
    let m = measure(opts.load_budget(), |_| {
        black_box(Snapshot::load(black_box(&bytes), None, Some(synth::ACCOUNT)).expect("synthetic state loads"));
        1
    });
    loads.push((format!("synthetic {} flags / {} segments (pb)", summary.flags, summary.segments), bytes.len(), m));
    let snap = Snapshot::load(&bytes, None, Some(synth::ACCOUNT)).expect("synthetic state loads");
    drop(bytes);
    let label = format!("synthetic ({} flags, {} segments)", snap.stats.flags, snap.stats.segments);
    cases.push(Case::new(&label, snap, &synth::secret(0), synth::contexts(64, cfg.seed)));
    println!("(synthetic state generated in {:.2} s)\n", gen_time.as_secs_f64());

    println!("### Snapshot::load\n");
    println!("| state | bytes | ms per load (mean) | ms (fastest) | loads |");
    println!("|---|---:|---:|---:|---:|");
    for (label, size, m) in &loads {
        println!(
            "| {label} | {size} | {:.3} | {:.3} | {} |",
            m.mean_ns() / 1e6,
            m.fastest.as_secs_f64() * 1e3,
            m.iters
        );
    }
    println!();

    let cases: Vec<Case> = cases.into_iter().filter(|c| opts.wants(&c.label)).collect();

    println!("### Resolve (core: `resolve::resolve`, no JSON)\n");
    println!("| state | flags / request | requests/s | flags/s | ns / request | ns / flag | matched |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for case in &cases {
        for w in case.widths() {
            let (m, matched) = bench_resolve(case, w, opts.budget);
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.0}% |",
                case.label,
                w.label(case),
                thousands(m.per_sec()),
                thousands(m.units_per_sec()),
                m.mean_ns(),
                m.mean_ns_per_unit(),
                100.0 * matched
            );
        }
    }
    println!();

    println!("### JSON per request (`api::parse_resolve_request`, `api::write_resolve_response`)\n");
    println!("| state | flags / request | request bytes | parse ns | response bytes | write ns | parse + resolve + write ns |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for case in &cases {
        for w in case.widths() {
            bench_json(case, w, opts.budget);
        }
    }
    println!();

    println!(
        "### OFREP per request (`ofrep::parse_context`, resolve, `ofrep::single` / `ofrep::bulk` + `ofrep::etag`)\n"
    );
    println!("| state | single ns | single bytes | bulk flags | bulk ns | bulk bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for case in &cases {
        bench_ofrep(case, opts.budget);
    }
    println!();
}

/// Bytes in, bytes out, as the Worker's OFREP routes do it (minus I/O and
/// telemetry): one flag's whole value, and every flag with the body ETag.
fn bench_ofrep(case: &Case, budget: Duration) {
    let sticky = StickySet::new();
    let mut ctx = serde_json::to_value(&case.contexts[0]).expect("context as JSON");
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            if let Some(m) = ctx.as_object_mut() {
                m.remove(DEFAULT_SELECTOR);
                m.insert("targetingKey".into(), serde_json::Value::String(format!("user-{i}")));
            }
            serde_json::json!({ "context": ctx }).to_string().into_bytes()
        })
        .collect();
    let client = case.snap.credential(&case.secret).map(|c| c.client.clone()).unwrap_or_default();
    let name = case.flags[0].strip_prefix("flags/").unwrap_or(&case.flags[0]);
    let key = ofrep::parse_key(name).expect("flag key");
    let (mut single_bytes, mut bulk_bytes, mut bulk_flags) = (0, 0, 0);
    let single = measure(budget / 2, |i| {
        let ctx = ofrep::parse_context(black_box(&bodies[i % bodies.len()])).expect("context");
        let flags = [key.flag.clone()];
        let req = Request { flags: &flags, context: &ctx, client_secret: &case.secret };
        let res = resolve::resolve(&case.snap, &req, Sticky::Known(&sticky), None).expect("resolves");
        let (_, out) = ofrep::single(&case.snap, &client, &key, res.flags.first());
        single_bytes = out.len();
        black_box(out);
        1
    });
    let bulk = measure(budget / 2, |i| {
        let ctx = ofrep::parse_context(black_box(&bodies[i % bodies.len()])).expect("context");
        let req = Request { flags: &[], context: &ctx, client_secret: &case.secret };
        let res = resolve::resolve(&case.snap, &req, Sticky::Known(&sticky), None).expect("resolves");
        let out = ofrep::bulk(&case.snap, &client, &res.flags);
        black_box(ofrep::etag(&out));
        bulk_bytes = out.len();
        bulk_flags = res.flags.len();
        black_box(out);
        1
    });
    println!(
        "| {} | {:.0} | {} | {} | {:.0} | {} |",
        case.label,
        single.mean_ns(),
        single_bytes,
        bulk_flags,
        bulk.mean_ns(),
        bulk_bytes
    );
}

struct Opts {
    budget: Duration,
    filter: Option<String>,
}

impl Opts {
    fn from_env() -> Opts {
        let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
        // cargo bench passes `--bench`; any other free argument filters.
        let filter = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .or_else(|| std::env::var("BENCH_FILTER").ok())
            .filter(|f| !f.is_empty());
        Opts { budget: Duration::from_secs_f64(secs.clamp(0.05, 60.0)), filter }
    }

    fn wants(&self, label: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| label.contains(f))
    }

    /// Loads are slow (tens of ms); half a budget still gives a fair mean.
    fn load_budget(&self) -> Duration {
        self.budget / 2
    }
}

impl Case {
    /// A 10-flag row only when the client has more than 10 flags.
    fn widths(&self) -> Vec<Width> {
        let mut w = vec![Width::One];
        if self.client_flags > 10 {
            w.push(Width::Ten);
        }
        w.push(Width::All);
        w
    }

    fn new(label: &str, snap: Snapshot, secret: &str, contexts: Vec<Struct>) -> Case {
        let client = snap.credential(secret).map(|c| c.client.clone()).unwrap_or_default();
        let mut flags: Vec<String> = snap
            .flags
            .iter()
            .filter(|f| f.active && f.proto.clients.contains(&client))
            .map(|f| f.name().to_string())
            .collect();
        let client_flags = flags.len();
        assert!(client_flags > 0, "{label}: client {client:?} of secret {secret} has no active flags");
        let wrap: Vec<String> = flags.iter().take(9).cloned().collect();
        flags.extend(wrap);
        Case { label: label.to_string(), snap, secret: secret.to_string(), flags, client_flags, contexts }
    }
}

/// Returns the measurement (units = flags resolved) and the share of
/// flags that matched a rule.
fn bench_resolve(case: &Case, width: Width, budget: Duration) -> (Measure, f64) {
    let sticky = StickySet::new();
    let mut contexts = case.contexts.clone();
    let mut key = String::new();
    let (mut resolved, mut matched) = (0u64, 0u64);
    let m = measure(budget, |i| {
        key.clear();
        let _ = write!(key, "user-{i}");
        let ctx = &mut contexts[i % case.contexts.len()];
        set_key(ctx, &key);
        let req = Request { flags: width.names(case, i), context: ctx, client_secret: &case.secret };
        let res = resolve::resolve(&case.snap, black_box(&req), Sticky::Known(&sticky), None).expect("resolves");
        let n = res.flags.len() as u64;
        resolved += n;
        matched += res.flags.iter().filter(|f| f.assigned.is_some()).count() as u64;
        black_box(&res);
        n
    });
    (m, matched as f64 / resolved.max(1) as f64)
}

fn set_key(ctx: &mut Struct, key: &str) {
    match ctx.fields.get_mut(DEFAULT_SELECTOR) {
        Some(Value { kind: Some(Kind::StringValue(s)) }) => {
            s.clear();
            s.push_str(key);
        }
        _ => {
            ctx.fields.insert(DEFAULT_SELECTOR.into(), Value { kind: Some(Kind::StringValue(key.to_string())) });
        }
    }
}

fn bench_json(case: &Case, width: Width, budget: Duration) {
    let sticky = StickySet::new();
    let ctx_json = serde_json::to_value(&case.contexts[0]).expect("context as JSON");
    let names = width.names(case, 0);
    let body = serde_json::json!({
        "flags": names,
        "evaluationContext": ctx_json,
        "clientSecret": case.secret,
        "apply": false,
        "sdk": {"id": "SDK_ID_JS_WEB_PROVIDER", "version": "0.3.0"},
    })
    .to_string()
    .into_bytes();

    let parse = measure(budget / 3, |_| {
        black_box(api::parse_resolve_request(black_box(&body)).expect("parses"));
        1
    });

    let parsed = api::parse_resolve_request(&body).expect("parses");
    let empty = Struct::default();
    let req = Request {
        flags: &parsed.flags,
        context: parsed.evaluation_context.as_ref().unwrap_or(&empty),
        client_secret: &parsed.client_secret,
    };
    let res = resolve::resolve(&case.snap, &req, Sticky::Known(&sticky), None).expect("resolves");
    let mut out = Vec::with_capacity(64 * 1024);
    api::write_resolve_response(&mut out, &res, RESOLVE_ID, None, None);
    let response_bytes = out.len();
    let write = measure(budget / 3, |_| {
        out.clear();
        api::write_resolve_response(&mut out, black_box(&res), RESOLVE_ID, None, None);
        black_box(&out);
        1
    });
    drop(res);

    // The whole request minus I/O: bytes in, bytes out.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..64 {
        let mut v: serde_json::Value = serde_json::from_slice(&body).expect("own body");
        v["evaluationContext"][DEFAULT_SELECTOR] = serde_json::Value::String(format!("user-{i}"));
        bodies.push(v.to_string().into_bytes());
    }
    let full = measure(budget / 3, |i| {
        let parsed = api::parse_resolve_request(black_box(&bodies[i % bodies.len()])).expect("parses");
        let req = Request {
            flags: &parsed.flags,
            context: parsed.evaluation_context.as_ref().unwrap_or(&empty),
            client_secret: &parsed.client_secret,
        };
        let res = resolve::resolve(&case.snap, &req, Sticky::Known(&sticky), None).expect("resolves");
        out.clear();
        api::write_resolve_response(&mut out, &res, RESOLVE_ID, None, None);
        black_box(&out);
        1
    });
    println!(
        "| {} | {} | {} | {:.0} | {} | {:.0} | {:.0} |",
        case.label,
        width.label(case),
        body.len(),
        parse.mean_ns(),
        response_bytes,
        write.mean_ns(),
        full.mean_ns()
    );
}

/// Any state format; a format without an account gets `demo`.
fn load_any(bytes: &[u8]) -> Result<Snapshot, edgeflag::state::snapshot::LoadError> {
    Snapshot::load(bytes, None, None).or_else(|_| Snapshot::load(bytes, None, Some("demo")))
}

/// The first client secret a state defines (any format).
fn first_secret(bytes: &[u8]) -> Option<String> {
    use edgeflag::proto::iam::client_credential::Credential;
    let decoded = edgeflag::state::formats::decode(bytes, None).ok()?;
    decoded.state.client_credentials.iter().find_map(|c| match &c.credential {
        Some(Credential::ClientSecret(s)) if !s.secret.is_empty() => Some(s.secret.clone()),
        _ => None,
    })
}

struct Measure {
    iters: u64,
    units: u64,
    elapsed: Duration,
    /// Fastest single batch, per iteration.
    fastest: Duration,
}

impl Measure {
    fn mean_ns(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.iters.max(1) as f64
    }

    fn mean_ns_per_unit(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.units.max(1) as f64
    }

    fn per_sec(&self) -> f64 {
        self.iters as f64 / self.elapsed.as_secs_f64()
    }

    fn units_per_sec(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `f(i)` (which returns how many units it did) for a warm-up of a
/// fifth of `budget`, then for `budget` and at least three iterations (a
/// 25 MB state load takes longer than a short budget). Batches grow until
/// one takes about a millisecond, so reading the clock costs nothing
/// measurable.
fn measure(budget: Duration, mut f: impl FnMut(usize) -> u64) -> Measure {
    let mut i = 0usize;
    let warm_until = Instant::now() + budget / 5;
    let mut batch = 1usize;
    while Instant::now() < warm_until {
        let t = Instant::now();
        for _ in 0..batch {
            black_box(f(i));
            i += 1;
        }
        if t.elapsed() < Duration::from_millis(1) {
            batch = (batch * 2).min(1 << 20);
        }
    }
    let (mut iters, mut units) = (0u64, 0u64);
    let mut fastest = Duration::MAX;
    let start = Instant::now();
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            units += f(i);
            i += 1;
        }
        let took = t.elapsed();
        iters += batch as u64;
        fastest = fastest.min(took / batch as u32);
        if start.elapsed() >= budget && iters >= 3 {
            break;
        }
        if took < Duration::from_millis(1) {
            batch = (batch * 2).min(1 << 20);
        }
    }
    Measure { iters, units, elapsed: start.elapsed(), fastest }
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU model, core count and load average: numbers mean little without it.
fn machine_note() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load =
        std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    format!(
        "Machine: {cpu}, {cores} cores, load average {} at start; profile `bench` (= release: opt-level s, LTO).",
        load.unwrap_or_else(|_| "n/a".into())
    )
}
