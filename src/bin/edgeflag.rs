//! The `edgeflag` command line; all logic lives in `edgeflag::cli`.
// The CLI is native-only; on wasm32 this target builds to nothing.
#![cfg_attr(target_arch = "wasm32", no_main)]

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    use std::io::{BufWriter, IsTerminal, Write};

    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let stdin_is_terminal = stdin.is_terminal();
    let stdout_is_terminal = stdout.is_terminal();
    let mut input = stdin.lock();
    let mut output = BufWriter::new(stdout.lock());
    let mut errors = stderr.lock();
    let mut io = edgeflag::cli::Io {
        stdin: &mut input,
        stdin_is_terminal,
        stdout: &mut output,
        stdout_is_terminal,
        stderr: &mut errors,
    };
    let code = edgeflag::cli::run(std::env::args_os(), &mut io);
    // `run` flushed already; a failure here has nowhere left to be reported.
    let _ = output.flush();
    std::process::ExitCode::from(code)
}
