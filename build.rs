//! Compiles proto/ with a pure-Rust compiler (protox), so no system protoc is
//! needed, then generates prost types and their proto3-JSON serde impls.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<PathBuf> = walk("proto")?;
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_bytes = prost::Message::encode_to_vec(&fds);

    let mut config = prost_build::Config::new();
    config.prost_types_path("::pbjson_types");
    // Shared buffers for the two large byte fields, so a state decoded from
    // a `Bytes` (the embedded one is static) slices instead of copying.
    config.bytes([
        ".confidence.flags.admin.v1.ClientResolverState.state",
        ".confidence.flags.admin.v1.ResolverState.PackedBitset.gzipped_bitset",
    ]);
    config.compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // Clients send fields newer than ours; proto3 JSON says ignore them.
        .ignore_unknown_fields()
        .out_dir(&out)
        .build(&[".confidence", ".google.type", ".edgeflag"])?;

    embed_state(&out)?;
    Ok(())
}

/// The worker serves a state compiled into it: `EDGEFLAG_STATE` (any format
/// the CLI accepts, relative to the crate root) or the demo state. Its
/// bytes are embedded as they are; the worker validates them when the
/// isolate first needs them, and scripts/build-worker.sh validates them
/// with `edgeflag validate` before building.
fn embed_state(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=EDGEFLAG_STATE");
    println!("cargo:rerun-if-env-changed=EDGEFLAG_ACCOUNT");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let path = match std::env::var("EDGEFLAG_STATE") {
        Ok(p) if !p.is_empty() => manifest.join(p),
        _ => manifest.join("src/demo_state.json"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let bytes = std::fs::read(&path).map_err(|e| format!("EDGEFLAG_STATE {}: {e}", path.display()))?;
    std::fs::write(out.join("embedded_state.bin"), bytes)?;
    let account = std::env::var("EDGEFLAG_ACCOUNT").ok().filter(|a| !a.is_empty());
    let source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let code = format!(
        "/// The state compiled into this build.\n\
         pub const EMBEDDED_STATE: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/embedded_state.bin\"));\n\
         /// The account, for formats that carry none.\n\
         pub const EMBEDDED_ACCOUNT: Option<&str> = {account:?};\n\
         /// Where the state came from, for logs.\n\
         pub const EMBEDDED_SOURCE: &str = {source:?};\n"
    );
    std::fs::write(out.join("embedded_state.rs"), code)?;
    Ok(())
}

fn walk(dir: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
