//! Compiles proto/ with a pure-Rust compiler (protox), so no system protoc is
//! needed, then generates prost types and their proto3-JSON serde impls.
// Build script: a panic is a build failure with its message, the right outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing)]

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
    // Ordered maps: prost encodes a HashMap in hash order, so the same
    // state would encode to different bytes (and etags) run to run.
    config.btree_map(["."]);
    config.compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // Clients send fields newer than ours; proto3 JSON says ignore them.
        .ignore_unknown_fields()
        .btree_map(["."])
        .out_dir(&out)
        .build(&[".confidence", ".google.type", ".edgeflag"])?;

    json_states_cfg();
    embed_state(&out)?;
    Ok(())
}

/// `cfg(json_states)`: the JSON state decoders are compiled in. Natively
/// always (the CLI converts JSON); in the wasm only with the
/// `wasm-json-states` feature, which exists to measure what they cost.
fn json_states_cfg() {
    println!("cargo:rustc-check-cfg=cfg(json_states)");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    if !wasm || std::env::var_os("CARGO_FEATURE_WASM_JSON_STATES").is_some() {
        println!("cargo:rustc-cfg=json_states");
    }
}

/// The worker serves a state compiled into it: `EDGEFLAG_STATE` (any format
/// the CLI accepts, relative to the crate root) or the demo state, embedded
/// as it is. Its etag is computed here, so the isolate does not hash it.
///
/// scripts/build-worker.sh validates the state with `edgeflag validate`
/// (converting JSON to protobuf first) and passes the etag of the bytes it
/// validated as `EDGEFLAG_STATE_VALIDATED`. Only when that matches the
/// bytes embedded here may the worker defer inflating segment bitsets to
/// their first use; otherwise it validates everything on its first
/// request. `EDGEFLAG_STATE_ETAG`, the etag of the file converted from,
/// is then served as the state's etag.
fn embed_state(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=EDGEFLAG_STATE");
    println!("cargo:rerun-if-env-changed=EDGEFLAG_ACCOUNT");
    println!("cargo:rerun-if-env-changed=EDGEFLAG_STATE_VALIDATED");
    println!("cargo:rerun-if-env-changed=EDGEFLAG_STATE_ETAG");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    // `none`: a build fed only by KV or the CDN, which can never serve the
    // demo flags; it answers 503 until its first state loads.
    if std::env::var("EDGEFLAG_STATE").is_ok_and(|p| p.trim() == "none") {
        std::fs::write(out.join("embedded_state.bin"), [])?;
        let code = "/// This build embeds no state (EDGEFLAG_STATE=none).\n\
             pub const EMBEDDED: bool = false;\n\
             pub const EMBEDDED_STATE: &[u8] = &[];\n\
             pub const EMBEDDED_ACCOUNT: Option<&str> = None;\n\
             pub const EMBEDDED_SOURCE: &str = \"none\";\n\
             pub const EMBEDDED_ETAG: &str = \"none\";\n\
             pub const EMBEDDED_PREVALIDATED: bool = false;\n";
        std::fs::write(out.join("embedded_state.rs"), code)?;
        return Ok(());
    }
    let path = match std::env::var("EDGEFLAG_STATE") {
        Ok(p) if !p.is_empty() => manifest.join(p),
        _ => manifest.join("src/demo_state.json"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let bytes = std::fs::read(&path).map_err(|e| format!("EDGEFLAG_STATE {}: {e}", path.display()))?;
    // The wasm build decodes protobuf only (src/state/formats.rs); build-worker.sh
    // converts a JSON state before it gets here, a bare `cargo build` does not.
    let json =
        bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes).iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    if json && wasm && std::env::var_os("CARGO_FEATURE_WASM_JSON_STATES").is_none() {
        println!(
            "cargo:warning=embedding the JSON state {}: the worker decodes protobuf only and will refuse it; \
             build with scripts/build-worker.sh (it converts it) or convert it with `edgeflag convert --to envelope`",
            path.display()
        );
    }
    // The same identity as `etag_of` in src/state/snapshot.rs.
    let etag = format!("{:032x}", fastmurmur3::murmur3_x64_128(&bytes, 0));
    let validated = std::env::var("EDGEFLAG_STATE_VALIDATED").ok().filter(|v| !v.is_empty());
    let prevalidated = match validated {
        Some(v) if v.trim() == etag => true,
        Some(v) => {
            println!(
                "cargo:warning=EDGEFLAG_STATE_VALIDATED={v} does not match the etag {etag} of {}; \
                 the worker will validate it at start",
                path.display()
            );
            false
        }
        None => false,
    };
    let etag = match std::env::var("EDGEFLAG_STATE_ETAG") {
        Ok(source) if prevalidated && !source.trim().is_empty() => source.trim().to_string(),
        _ => etag,
    };
    std::fs::write(out.join("embedded_state.bin"), &bytes)?;
    let account = std::env::var("EDGEFLAG_ACCOUNT").ok().filter(|a| !a.is_empty());
    let source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let code = format!(
        "/// This build embeds a state.\n\
         pub const EMBEDDED: bool = true;\n\
         /// The state compiled into this build.\n\
         pub const EMBEDDED_STATE: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/embedded_state.bin\"));\n\
         /// The account, for formats that carry none.\n\
         pub const EMBEDDED_ACCOUNT: Option<&str> = {account:?};\n\
         /// Where the state came from, for logs.\n\
         pub const EMBEDDED_SOURCE: &str = {source:?};\n\
         /// MurmurHash3 x64-128, hex, of EMBEDDED_STATE or of the file it was converted from.\n\
         pub const EMBEDDED_ETAG: &str = {etag:?};\n\
         /// These exact bytes passed `edgeflag validate` before the build.\n\
         pub const EMBEDDED_PREVALIDATED: bool = {prevalidated};\n"
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
