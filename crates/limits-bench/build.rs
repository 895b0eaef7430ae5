//! Compiles the protos with a pure-Rust compiler (protox), exactly as
//! limits-server does, so no system protoc is needed: our limits API, and
//! Envoy's rate limit service API vendored under `proto/vendor/` (with its
//! imports). Both the client stubs (the load generator) and the server
//! stubs (the baseline server) are built.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let vendor = root.join("vendor");
    // Names relative to the include roots, as imports spell them.
    let files = [
        "mercator/limits/v1/limits.proto",
        "envoy/service/ratelimit/v3/rls.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(files, [&root, &vendor])?;
    for file in &fds.file {
        if let Some(name) = &file.name {
            for dir in [&root, &vendor] {
                let path = dir.join(name);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
