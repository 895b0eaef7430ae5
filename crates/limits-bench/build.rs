//! Compiles the limits proto with a pure-Rust compiler (protox), exactly as
//! limits-server does, so no system protoc is needed. Both the client stubs
//! (the load generator) and the server stubs (the baseline server) are built.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("mercator/limits/v1/limits.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
