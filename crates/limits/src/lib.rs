//! limitsd as a library: the limits engine (`limits-core`), its stores
//! (`limits-store`) and the config they run on, read from the same YAML
//! files and `MERCATOR_LIMITS_*` environment as the service.

#![forbid(unsafe_code)]

pub mod config;
pub mod rls;

/// The longest TTL a caller may ask for a reservation or a lease (and the
/// longest configured one).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
