//! `limits.server`: the addresses and the request bounds, which must agree
//! with each other.

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{RawServer, RawTls};
use crate::config::{ServerSettings, TlsSettings};

pub(super) fn build(raw: &RawServer) -> Result<ServerSettings> {
    let keys = raw.check()?;
    // Port 0 asks for two different ephemeral ports, so only a fixed port
    // can clash.
    if keys.grpc_addr == keys.metrics_addr && keys.grpc_addr.port() != 0 {
        return Err(ConfigError::new(
            "limits.server.metrics_addr",
            format!(
                "{} is also limits.server.grpc_addr; the two need different ports",
                keys.metrics_addr
            ),
        ));
    }
    if let Some(admin) = keys.admin_addr
        && admin.port() != 0
        && (admin == keys.grpc_addr || admin == keys.metrics_addr)
    {
        return Err(ConfigError::new(
            "limits.server.admin_addr",
            format!("{admin} is also the gRPC or metrics address; it needs a port of its own"),
        ));
    }
    if keys.memory_budget < keys.max_request_bytes {
        return Err(ConfigError::new(
            "limits.server.memory_budget",
            "must be at least limits.server.max_request_bytes",
        ));
    }
    Ok(ServerSettings {
        grpc_addr: keys.grpc_addr,
        metrics_addr: keys.metrics_addr,
        shutdown_grace: keys.shutdown_grace,
        reload_interval: keys.reload_interval,
        max_request_bytes: keys.max_request_bytes,
        memory_budget: keys.memory_budget,
        max_in_flight: keys.max_in_flight,
        max_connections: keys.max_connections,
        max_concurrent_streams: keys.max_concurrent_streams,
        admin_addr: keys.admin_addr,
        tls: tls(&raw.tls)?,
    })
}

/// `limits.server.tls`: a certificate and its key together, and client
/// authentication only with a CA to verify against.
fn tls(raw: &RawTls) -> Result<Option<TlsSettings>> {
    let keys = raw.check()?;
    let at = |k: &str| format!("limits.server.tls.{k}");
    match (keys.cert_file, keys.key_file) {
        (None, None) => {
            if keys.client_ca_file.is_some() {
                return Err(ConfigError::new(
                    at("client_ca_file"),
                    "client certificates need TLS: set cert_file and key_file too",
                ));
            }
            Ok(None)
        }
        (Some(_), None) => Err(ConfigError::new(
            at("key_file"),
            "is required with cert_file",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            at("cert_file"),
            "is required with key_file",
        )),
        (Some(cert_file), Some(key_file)) => {
            if raw.client_auth.is_some() && keys.client_ca_file.is_none() {
                return Err(ConfigError::new(
                    at("client_auth"),
                    "needs client_ca_file (the CA client certificates are verified against)",
                ));
            }
            Ok(Some(TlsSettings {
                cert_file,
                key_file,
                client_ca_file: keys.client_ca_file,
                client_auth: keys.client_auth,
            }))
        }
    }
}
