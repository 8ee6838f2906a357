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
    config.compile_fds(fds)?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.out_dir(&out).build(&[
        ".confidence",
        ".google.type",
        ".edgeflag",
    ])?;
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
