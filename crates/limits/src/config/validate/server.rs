//! `limits.server`: the addresses and the request bounds, which must agree
//! with each other.

use crate::config::ServerSettings;
use crate::config::error::{ConfigError, Result};
use crate::config::keys::RawServer;

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
    })
}
