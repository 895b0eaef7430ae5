//! limitsd: the limits API served over gRPC on top of limits-core and
//! limits-store.

#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod metrics;
pub mod queue;
pub mod reload;
pub mod server;
pub mod service;
pub mod signal;
pub mod telemetry;
pub mod validate;

/// The generated protobuf types and gRPC stubs. Nothing outside the service
/// module and its conversions sees these.
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]
    tonic::include_proto!("mercator.limits.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/limits_descriptor.bin"));
}
