//! limitsd: the limits library (`limits`) served over gRPC.
//!
//! - [`api`]: the services — the LimitsService handlers, the admin API and
//!   Envoy's rate limit service — with the conversions between their
//!   messages and the library's types, the request guard and the
//!   credential check in front of them, and the codec;
//! - [`ops`]: what operating it needs — metrics, logs and traces, config
//!   reload, signals;
//! - [`listen`]: the listeners' connections: bounded, and TLS on them;
//! - [`server`]: assembles them: opens the store, binds, serves, shuts
//!   down.
//!
//! The handlers validate and convert, then call [`limits::Limiter`]: the
//! server and the library cannot disagree.

#![forbid(unsafe_code)]

pub use limits::config;
pub use limits::identity;
pub use limits::rls as rls_config;

pub mod api;
pub mod listen;
pub mod ops;
pub mod reload;
pub mod server;

/// The generated protobuf types and gRPC stubs, one module per protobuf
/// package (generated code refers to other packages through `super::`, so
/// the tree mirrors the package paths). Our own API,
/// `mercator.limits.v1`, is also re-exported at the root (`pb::CheckLimitsRequest`).
/// Nothing outside the service modules and their conversions sees these.
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, rust_2018_idioms)]

    pub mod mercator {
        pub mod limits {
            pub mod v1 {
                tonic::include_proto!("mercator.limits.v1");
            }
            pub mod admin {
                pub mod v1 {
                    tonic::include_proto!("mercator.limits.admin.v1");
                }
            }
        }
    }
    /// The admin API, `mercator.limits.admin.v1`.
    pub use mercator::limits::admin::v1 as admin;
    pub use mercator::limits::v1::*;

    /// The Envoy API (vendored under proto/vendor): the rate limit service
    /// and what it imports.
    pub mod envoy {
        pub mod service {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.ratelimit.v3");
                }
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                    }
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }

    /// cncf/xds annotations and types the Envoy API imports.
    pub mod xds {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("xds.core.v3");
            }
        }
        pub mod annotations {
            pub mod v3 {
                tonic::include_proto!("xds.annotations.v3");
            }
        }
    }

    pub mod udpa {
        pub mod annotations {
            tonic::include_proto!("udpa.annotations");
        }
    }

    /// protoc-gen-validate's rule messages (annotations only).
    pub mod validate {
        tonic::include_proto!("validate");
    }

    /// The encoded file descriptor set of every proto above (and the
    /// well-known types they import), for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/limits_descriptor.bin"));
}
