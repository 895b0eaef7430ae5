//! Compiles the protos with a pure-Rust compiler (protox), so no system
//! protoc is needed, and writes the file descriptor set for reflection.
//!
//! Two roots: `proto/` holds our own API; `proto/vendor/` holds the Envoy
//! rate limit service API and its imports, copied unchanged from upstream
//! (see proto/vendor/README.md). Both compile into one descriptor set, so
//! reflection describes every service limitsd serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let vendor = root.join("vendor");
    // Names relative to the include roots, as imports spell them.
    let files = [
        "mercator/limits/v1/limits.proto",
        "mercator/limits/admin/v1/admin.proto",
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
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("limits_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Client stubs too: the end-to-end tests (and limits-bench) use them.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // INVALID_ARGUMENT, naming the field, for a request that does not
        // decode (see src/codec.rs).
        .codec_path("crate::api::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
