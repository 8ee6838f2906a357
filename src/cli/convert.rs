//! `edgeflag convert`: re-encode a state (pb, proto3 JSON, envelope).

use super::{read_file, CliError, ConvertArgs, Io, Target};
use crate::state::formats::{self, normalize_account};
use crate::state::snapshot::Snapshot;
use crate::state::source::{self, Pointer};

pub(super) fn run(args: &ConvertArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let a = &args.state;
    let binary = matches!(args.to, Target::Pb | Target::Envelope);
    // Checked before any work so a forgotten redirect costs nothing.
    if binary && args.out.is_none() && io.stdout_is_terminal {
        return Err(CliError::Usage(
            "refusing to write binary protobuf to a terminal: pass --out PATH or redirect stdout".to_string(),
        ));
    }
    let bytes = read_file(&a.state, "state")?;
    let decoded = formats::decode(&bytes, a.state_format)
        .map_err(|e| CliError::Failed(format!("state file {}: {e}", a.state.display())))?;
    let account = a.account.as_deref().map(normalize_account).or_else(|| decoded.account_id.clone());
    let account = account.filter(|acc| !acc.is_empty());

    let output = match args.to {
        Target::Pb => formats::encode_pb(&decoded.state),
        Target::Json => {
            let mut j = formats::to_proto_json(&decoded.state).map_err(|e| CliError::Failed(e.to_string()))?;
            j.push('\n');
            j.into_bytes()
        }
        Target::Envelope => {
            let Some(acc) = account.as_deref() else {
                return Err(CliError::Usage(format!(
                    "--to envelope needs an account and {} carries none: pass --account ID",
                    a.state.display()
                )));
            };
            formats::encode_envelope(&decoded.state, acc, &decoded.log_destinations)
        }
    };

    // Converting a rejected state is allowed (to read it as JSON), but say so.
    let check_account = account.as_deref().unwrap_or("unnamed");
    if let Err(e) = Snapshot::compile(decoded.state, check_account, decoded.log_destinations) {
        let n = e.problems.len();
        let _ = writeln!(
            io.stderr,
            "note: {} does not validate ({n} problem{}); converted anyway. `edgeflag validate` lists them.",
            a.state.display(),
            if n == 1 { "" } else { "s" }
        );
    }

    if let Some(path) = &args.pointer {
        if args.to != Target::Envelope {
            return Err(CliError::Usage("--pointer needs --to envelope: KV holds envelopes".to_string()));
        }
        if output.len() > source::MAX_BLOB_BYTES {
            return Err(CliError::Failed(format!(
                "{} encodes to {} bytes; a KV value holds at most {} (25 MiB), so it cannot be pushed",
                a.state.display(),
                output.len(),
                source::MAX_BLOB_BYTES
            )));
        }
        let pushed_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| chrono::DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, 0))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let pointer = Pointer::for_blob(&output, account.as_deref().unwrap_or_default(), &pushed_at, "push");
        std::fs::write(path, pointer.to_json() + "\n")
            .map_err(|e| CliError::Failed(format!("cannot write pointer file {}: {e}", path.display())))?;
    }

    match &args.out {
        Some(path) => std::fs::write(path, &output)
            .map_err(|e| CliError::Failed(format!("cannot write output file {}: {e}", path.display())))?,
        None => io.stdout.write_all(&output)?,
    }
    Ok(0)
}
