//! `edgeflag validate`: a one-screen summary of a good state, or the full
//! list of what is wrong with a bad one (exit 1), for CI before deploys.

use super::{read_file, CliError, Io, ValidateArgs, EXIT_FAILURE};
use crate::state::formats::StateFormat;
use crate::state::snapshot::Snapshot;
use std::fmt::Write as _;

pub(super) fn run(args: &ValidateArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let a = &args.state;
    let bytes = read_file(&a.state, "state")?;
    let mut out = String::new();
    let code = match Snapshot::load(&bytes, a.state_format, a.account.as_deref()) {
        Ok(snap) => {
            summary(&mut out, &a.state.display().to_string(), &snap);
            0
        }
        Err(e) => {
            let n = e.problems.len();
            let _ = writeln!(
                out,
                "INVALID: {} ({} bytes): {n} problem{}",
                a.state.display(),
                bytes.len(),
                if n == 1 { "" } else { "s" }
            );
            for p in &e.problems {
                let _ = writeln!(out, "  - {p}");
            }
            EXIT_FAILURE
        }
    };
    io.stdout.write_all(out.as_bytes())?;
    Ok(code)
}

fn format_name(f: StateFormat) -> &'static str {
    match f {
        StateFormat::Protobuf => "pb (protobuf ResolverState)",
        StateFormat::Envelope => "envelope (protobuf ClientResolverState)",
        StateFormat::ProtoJson => "json (ResolverState in proto3 JSON)",
        StateFormat::SuiteJson => "suite (conformance-suite JSON layout)",
    }
}

fn summary(out: &mut String, path: &str, snap: &Snapshot) {
    let s = &snap.stats;
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "  {k:<15}{v}");
    };
    let _ = writeln!(out, "OK: {path}");
    row(out, "format", format_name(snap.format).to_string());
    row(out, "account", snap.account_id.clone());
    row(out, "bytes", s.bytes.to_string());
    row(out, "flags", format!("{} active / {} total", s.active_flags, s.flags));
    row(out, "segments", s.segments.to_string());
    row(out, "bitsets", format!("{} gzipped / {} full", s.bitsets, s.full_bitsets));
    row(out, "bloom filters", s.bloom_filters.to_string());
    row(out, "clients", s.clients.to_string());
    row(out, "credentials", s.credentials.to_string());
    row(out, "etag", snap.etag.clone());
    if snap.warnings.is_empty() {
        row(out, "warnings", "none".to_string());
    } else {
        row(out, "warnings", snap.warnings.len().to_string());
        for w in &snap.warnings {
            let _ = writeln!(out, "    - {w}");
        }
    }
}
