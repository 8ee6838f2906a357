//! The `edgeflag` command line: resolve, explain, validate and convert
//! resolver states locally. Everything here is native-only; the binary in
//! `src/bin/edgeflag.rs` only wires real stdin/stdout to [`run`].

mod convert;
mod explain;
mod resolve;
mod validate;

use crate::api;
use crate::proto::resolver::ResolveFlagsRequest;
use crate::resolve::sticky::StickySet;
use crate::state::formats::StateFormat;
use crate::state::snapshot::Snapshot;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Exit code for a command that ran and failed (bad state, bad request, I/O).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a command line that could not be understood.
pub const EXIT_USAGE: u8 = 2;

const ABOUT: &str = "Resolve, explain, validate and convert Confidence resolver states locally.";

const LONG_ABOUT: &str = "\
Resolve, explain, validate and convert Confidence resolver states locally, with the
same resolver the edgeflag worker runs.

A state file may be a protobuf ResolverState, a ClientResolverState envelope, a
ResolverState in proto3 JSON, or the conformance suite's JSON layout (maps keyed by
name). The format is detected from the content; --state-format overrides that.
Formats that carry no account (bare protobuf, proto3 JSON) need --account or
EDGEFLAG_ACCOUNT: the account salts segment-bitset bucketing.

Exit codes: 0 success, 1 failure (unreadable or invalid state, bad request, unknown
client secret), 2 command-line usage error.";

const AFTER_HELP: &str = "\
Examples:
  edgeflag validate --state state.pb --account acme
  echo '{\"clientSecret\":\"s\",\"flags\":[\"flags/f\"],\"evaluationContext\":{\"targeting_key\":\"u1\"}}' \\
    | edgeflag resolve --state state.pb --account acme
  edgeflag explain --state state.pb --account acme --flag flags/f < request.json
  edgeflag convert --state state.pb --to json --out state.json";

#[derive(Debug, Parser)]
#[command(name = "edgeflag", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
#[command(propagate_version = true, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve flags: a ResolveFlagsRequest JSON on stdin, the response JSON on stdout.
    #[command(long_about = "\
Resolve flags: reads a ResolveFlagsRequest in JSON on stdin (clientSecret, flags,
evaluationContext; an empty flags list means every flag of the client) and prints the
ResolveFlagsResponse JSON on stdout, with a random resolveId.

Sticky assignments: --materializations gives what is already stored, in the
conformance suite's layout:
  {\"<unit>\": {\"<materialization>\": {\"isUnitInMaterialization\": true,
                                    \"ruleToVariant\": {\"<rule>\": \"<variant>\"}}}}
Without it every sticky read is answered \"not stored\". Assignments the resolve would
store are printed under \"materializationsToWrite\" as
  [{\"unit\", \"materialization\", \"rule\", \"variant\"}]
(the key is absent when there are none).")]
    Resolve(ResolveArgs),

    /// Explain, rule by rule, why a unit gets what it gets for one flag.
    #[command(long_about = "\
Explain, rule by rule, why a request gets what it gets for one flag. Reads a
ResolveFlagsRequest JSON on stdin (its \"flags\" list is ignored; --flag names the flag)
and prints, for each rule: disabled, environment mismatch, segment targeting or
bitset miss, targeting-key problems, the unit's bucket and the assignment ranges, and
sticky reads; then the outcome (reason, variant, assignment id, rule, sticky writes).

It also explains why a flag is missing from a response: unknown client secret,
flag not in the state, flag archived, or flag not enabled for the caller's client.
An explanation exits 0 whatever the outcome.")]
    Explain(ExplainArgs),

    /// Check a state file; print a summary (exit 0) or every problem found (exit 1).
    #[command(long_about = "\
Check a state file as the worker would before serving it. On success prints a
summary (format, account, size, flags, segments, bitsets, bloom filters, clients,
credentials, etag, warnings) and exits 0. Otherwise prints every problem found, each
naming the flag, rule, segment, bitset or credential at fault, and exits 1.

Warnings are oddities that do not stop the state from serving correctly (a bitset
for a segment that does not exist, a rule whose segment is missing, ...).")]
    Validate(ValidateArgs),

    /// Write a state in another encoding (pb, json or envelope).
    #[command(long_about = "\
Write a state in another encoding:
  pb        a bare protobuf ResolverState
  json      the ResolverState in proto3 JSON (pretty-printed)
  envelope  a protobuf ClientResolverState (state + account), as the worker embeds it;
            needs an account (--account, or one carried by the input)

Writes to --out, or to stdout (binary output is refused when stdout is a terminal).
The state is converted even when it does not validate, so a rejected state can be
turned into JSON to read; a note on stderr says so.

Encodings are canonical: the same state always gives the same bytes (and etag).
With --to envelope, --pointer PATH also writes the STATE_KV pointer JSON for the
output ({etag, bytes, sha256, account, pushedAt, source}), and a state over KV's
25 MiB value limit is refused (scripts/push-state.sh uses this).")]
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Resolver state file: protobuf, envelope, proto3 JSON or suite JSON (detected).
    #[arg(long, value_name = "PATH")]
    state: PathBuf,

    /// Account id (`acme` or `accounts/acme`); overrides the one the state carries.
    #[arg(long, value_name = "ID", env = "EDGEFLAG_ACCOUNT")]
    account: Option<String>,

    /// Read the state as this format instead of detecting it: pb, envelope, json or suite.
    #[arg(long, value_name = "FORMAT", value_parser = parse_state_format)]
    state_format: Option<StateFormat>,
}

#[derive(Debug, Args)]
struct ResolveArgs {
    #[command(flatten)]
    state: StateArgs,

    /// Stored sticky assignments (suite layout; see above).
    #[arg(long, value_name = "PATH")]
    materializations: Option<PathBuf>,

    /// Pretty-print the response JSON.
    #[arg(long)]
    pretty: bool,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    #[command(flatten)]
    state: StateArgs,

    /// The flag to explain (`flags/name`; a bare `name` is tried as `flags/name`).
    #[arg(long, value_name = "NAME")]
    flag: String,

    /// Stored sticky assignments (suite layout, as for `resolve`).
    #[arg(long, value_name = "PATH")]
    materializations: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Bare protobuf ResolverState.
    Pb,
    /// ResolverState in proto3 JSON.
    Json,
    /// Protobuf ClientResolverState (needs an account).
    Envelope,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    #[command(flatten)]
    state: StateArgs,

    /// Output encoding.
    #[arg(long, value_name = "FORMAT")]
    to: Target,

    /// Output file (default: stdout).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// With --to envelope: also write the STATE_KV pointer JSON for the output here.
    #[arg(long, value_name = "PATH")]
    pointer: Option<PathBuf>,
}

fn parse_state_format(s: &str) -> Result<StateFormat, String> {
    s.parse::<StateFormat>().map_err(|e| e.to_string())
}

/// Where a command reads and writes; the binary passes the real streams,
/// tests may pass buffers.
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdin_is_terminal: bool,
    pub stdout: &'a mut dyn Write,
    /// Binary output is refused when this is set and no --out is given.
    pub stdout_is_terminal: bool,
    pub stderr: &'a mut dyn Write,
}

/// Why a command stopped.
#[derive(Debug)]
pub enum CliError {
    /// The command line asked for something impossible: exit 2.
    Usage(String),
    /// The command ran and failed: exit 1.
    Failed(String),
    /// The reader of stdout went away (`| head`): stop quietly.
    BrokenPipe,
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILURE,
            CliError::BrokenPipe => 0,
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Failed(format!("cannot write output: {e}"))
        }
    }
}

/// Parses `args` (program name first) and runs the command; returns the
/// process exit code. Never panics on user input.
pub fn run<I, T>(args: I, io: &mut Io<'_>) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that belong on stdout.
            let text = e.render().to_string();
            let sink: &mut dyn Write = if e.use_stderr() { &mut *io.stderr } else { &mut *io.stdout };
            let _ = sink.write_all(text.as_bytes());
            let _ = sink.flush();
            return u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
        }
    };
    let result = match &cli.command {
        Command::Resolve(a) => resolve::run(a, io),
        Command::Explain(a) => explain::run(a, io),
        Command::Validate(a) => validate::run(a, io),
        Command::Convert(a) => convert::run(a, io),
    };
    let result = result.and_then(|code| io.stdout.flush().map(|_| code).map_err(CliError::from));
    match result {
        Ok(code) => code,
        Err(e) => {
            match &e {
                CliError::Usage(m) => {
                    let _ = writeln!(io.stderr, "error: {m}\n\nFor more information, try '--help'.");
                }
                CliError::Failed(m) => {
                    let _ = writeln!(io.stderr, "error: {m}");
                }
                CliError::BrokenPipe => {}
            }
            let _ = io.stderr.flush();
            e.code()
        }
    }
}

/// Reads a whole file; the error names the file, what it was for, and why.
fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Failed(format!("cannot read {what} file {}: {e}", path.display())))
}

fn load_state(args: &StateArgs) -> Result<Snapshot, CliError> {
    let bytes = read_file(&args.state, "state")?;
    Snapshot::load(&bytes, args.state_format, args.account.as_deref()).map_err(|e| {
        let mut msg = format!("state file {} rejected:", args.state.display());
        for p in &e.problems {
            msg.push_str("\n  - ");
            msg.push_str(p);
        }
        CliError::Failed(msg)
    })
}

/// Sticky assignments from `--materializations`, or an empty set ("absent").
fn load_materializations(path: Option<&Path>) -> Result<StickySet, CliError> {
    let Some(path) = path else {
        return Ok(StickySet::new());
    };
    let bytes = read_file(path, "materializations")?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| CliError::Failed(format!("materializations file {}: invalid JSON: {e}", path.display())))?;
    StickySet::from_suite_json(&value)
        .map_err(|e| CliError::Failed(format!("materializations file {}: {e}", path.display())))
}

/// The request on stdin, with errors that name the offending field.
fn read_request(io: &mut Io<'_>) -> Result<ResolveFlagsRequest, CliError> {
    if io.stdin_is_terminal {
        let _ = writeln!(io.stderr, "reading a ResolveFlagsRequest JSON from stdin (end it with Ctrl-D)...");
    }
    // One byte past the limit is enough for the parser to report the size.
    let limit = u64::try_from(api::MAX_BODY_BYTES).unwrap_or(u64::MAX).saturating_add(1);
    let mut body = Vec::new();
    io.stdin
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| CliError::Failed(format!("cannot read the request from stdin: {e}")))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CliError::Failed(
            "no request on stdin: expected a ResolveFlagsRequest JSON such as \
             {\"clientSecret\":\"...\",\"flags\":[],\"evaluationContext\":{}}"
                .to_string(),
        ));
    }
    api::parse_resolve_request(&body).map_err(|e| CliError::Failed(format!("request on stdin: {}", e.message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
