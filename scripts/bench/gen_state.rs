//! Writes a large synthetic resolver state for benchmarks and cold-start
//! tests (see `scripts/bench/synth.rs` for its shape).
//!
//! ```text
//! cargo run --release --example gen_state -- --flags 1000 --segments 200 --clients 5 \
//!     [--target-bytes 5000000] [--seed N] [--format pb|envelope] --out PATH
//! ```
//!
//! The pb format carries no account: load it with account `bench-account`
//! (`EDGEFLAG_ACCOUNT=bench-account`); the envelope carries it. Secrets are
//! `bench-secret-0` .. `bench-secret-<clients-1>`. The state is loaded with
//! `Snapshot::load` before it is written, so a file on disk always loads.
// Benchmark tool, never shipped: a panic aborts generation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

#[path = "synth.rs"]
mod synth;

use edgeflag::state::formats::{encode_envelope, encode_pb, StateFormat};
use edgeflag::state::snapshot::Snapshot;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: gen_state --flags N --segments M --clients K [--target-bytes B] [--seed S] \
                     [--format pb|envelope] --out PATH";

struct Args {
    cfg: synth::Config,
    out: String,
    format: StateFormat,
}

fn parse_args() -> Result<Args, String> {
    let mut cfg = synth::Config::default();
    let mut out = None;
    let mut format = StateFormat::Protobuf;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || -> Result<usize, String> {
            // Accept 5_000_000 as well as 5000000.
            value.replace('_', "").parse().map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--flags" => cfg.flags = number()?,
            "--segments" => cfg.segments = number()?,
            "--clients" => cfg.clients = number()?,
            "--target-bytes" => cfg.target_bytes = number()?,
            "--seed" => cfg.seed = number()? as u64,
            "--out" => out = Some(value),
            "--format" => {
                format = match value.parse() {
                    Ok(f @ (StateFormat::Protobuf | StateFormat::Envelope)) => f,
                    _ => return Err(format!("--format: expected pb or envelope, got {value}")),
                }
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if cfg.clients == 0 {
        return Err("--clients must be at least 1".to_string());
    }
    if cfg.segments == 0 && cfg.target_bytes == 0 {
        return Err("--segments must be at least 1 (rules need a segment)".to_string());
    }
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    Ok(Args { cfg, out, format })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let t = Instant::now();
    let (state, summary) = synth::generate(&args.cfg);
    let bytes = match args.format {
        StateFormat::Envelope => encode_envelope(&state, synth::ACCOUNT, &[]),
        _ => encode_pb(&state),
    };
    let gen_time = t.elapsed();

    let t = Instant::now();
    // The envelope must load on its own account; pb needs it named.
    let account = (args.format == StateFormat::Protobuf).then_some(synth::ACCOUNT);
    let snap = match Snapshot::load(&bytes, Some(args.format), account) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gen_state: generated state does not load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load_time = t.elapsed();
    if let Err(e) = std::fs::write(&args.out, &bytes) {
        eprintln!("gen_state: cannot write {}: {e}", args.out);
        return ExitCode::FAILURE;
    }

    let st = &snap.stats;
    println!("wrote {} ({} format, {} bytes, {:.2} MB)", args.out, args.format, bytes.len(), bytes.len() as f64 / 1e6);
    println!(
        "  flags {} ({} active, {} from padding), segments {} ({} from padding), bitsets {} gzipped ({:.0} KB avg)",
        st.flags,
        st.active_flags,
        summary.padded_flags,
        st.segments,
        summary.padded_segments,
        st.bitsets,
        summary.gzipped_bitset_bytes as f64 / summary.segments.max(1) as f64 / 1024.0,
    );
    println!("  clients {} / credentials {}: secrets bench-secret-0..{}", st.clients, st.credentials, st.clients - 1);
    println!("  active flags per client: {:?}", summary.flags_per_client);
    println!("  account {} (etag {})", snap.account_id, snap.etag);
    println!("  generated in {:.2?}, Snapshot::load in {:.2?}, {} warnings", gen_time, load_time, snap.warnings.len());
    for w in snap.warnings.iter().take(5) {
        println!("    warning: {w}");
    }
    ExitCode::SUCCESS
}
