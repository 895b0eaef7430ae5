//! limitsd's configuration: what the YAML file, the environment and the
//! command-line flags say (the raw stage), checked and converted into the
//! [`Config`] the server runs on (the validated stage).
//!
//! # Sources
//!
//! Three sources are merged with [figment], later ones winning key by key:
//!
//! 1. the YAML file given with `--config`, if any;
//! 2. environment variables named `MERCATOR_LIMITS_<SECTION>_<KEY>`, e.g.
//!    `MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD=0.8` (see [`env_vars`] for the
//!    full list);
//! 3. the `--grpc-addr` / `--metrics-addr` flags ([`Overrides`]), and
//!    `--rls-config` files, added to `limits.rls.config_files`.
//!
//! With no file and no environment every default applies: no limits at all,
//! the in-memory store, gRPC on `0.0.0.0:50051` and metrics on
//! `0.0.0.0:9090`.
//!
//! # File layout
//!
//! Everything lives under a root `limits:` key, as in the usage guide:
//!
//! ```yaml
//! limits:
//!   budgets: { ... }
//!   rate_limits: { ... }
//!   enforcement: { ... }
//!   pricing: { ... }
//!   storage: { ... }
//!   server: { ... }
//!   logging: { ... }
//!   metrics: { ... }
//!   rls: { ... }      # Envoy's rate limit service API, see config::rls
//! ```
//!
//! Other top-level keys are ignored, so the `limits:` section can sit in a
//! larger application config. A file without a top-level `limits` key is read
//! as the `limits` section itself, which is what lets the guide's fragments
//! (a bare `budgets:` or `storage:` block) load unchanged. Inside `limits`,
//! an unknown key is an error naming its full path, so a typo never silently
//! turns a limit off. A key set to `null` (or left empty, `key:`) is the same
//! as leaving it out.
//!
//! # Per-id limits
//!
//! `budgets.by_api_key`, `budgets.by_user` and `budgets.by_team` (and the same
//! under `rate_limits`, and the combined `limits.by_*` maps below) map the id
//! a gateway sends to that id's limits. The entry whose id is exactly `default` applies to every
//! id of that dimension that has no entry of its own (so an id literally named
//! `default` *is* the default). An id with no entry and no default is
//! unlimited in that dimension.
//!
//! Budgets and rate limits are two families, merged per id: an id listed in
//! one family but not the other takes the other family's `default` entry. An
//! entry replaces its family's default for that id, so an empty entry
//! (`"ci-key": {}`) exempts an id from the default. `enabled: false` switches
//! a whole family off: no budgets anywhere, or no request, token and
//! concurrency limits anywhere.
//!
//! The combined maps `limits.by_api_key` / `by_user` / `by_team` (the guide's
//! "combine multiple limit types" fragment) take budget and rate-limit keys in
//! one entry. Such an entry sets all of the id's limits; a limit it does not
//! name is unlimited for that id rather than taken from a default. An id may
//! be listed in the combined map or in the family maps, not both.
//!
//! # Environment
//!
//! Every scalar key of the fixed sections can be set from the environment,
//! except `rls.enabled`, `rls.dry_run` and `rls.ietf_headers` (declared
//! file-only, as they always were); per-id maps, `model_downgrades`,
//! `pricing` and the lists only from the file. The
//! variable name is the key path upper-cased with `.` replaced by `_`, and it
//! is matched against the known keys (key names contain underscores
//! themselves, so the name cannot simply be split at `_`). A variable with the
//! `MERCATOR_LIMITS_` prefix that names no key is an error, so a misspelt
//! variable fails loudly; one set to the empty string is ignored.
//!
//! # Where things are
//!
//! Each key is declared once, in `keys`, with its kind, default, range and
//! documentation; `declare` turns that into the raw serde structs, the
//! environment names, the checks naming the key and [`reference_table`].
//! `setting` holds the kinds of value, `sources` the file, environment and
//! flags, `yaml` the YAML reader, `validate` what spans several keys, and
//! `error` the error type and the rewriting of figment's errors.
//!
//! [figment]: https://docs.rs/figment

mod declare;
mod docs;
pub(crate) mod error;
pub(crate) mod keys;
pub mod rls;
mod setting;
mod sources;
mod validate;
pub(crate) mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::{Figment, Metadata};
use limits_core::{LimitTable, Policy};
use limits_store::Secret;
use serde::Deserialize;

pub use self::docs::reference_table;
pub use self::error::ConfigError;
use self::error::{Result, from_figment};
use self::keys::RawLimits;
pub use self::keys::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_GRPC_ADDR, DEFAULT_IDENTIFIER_CAP, DEFAULT_LEASE_TTL,
    DEFAULT_LOG_LEVEL, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_ENTRIES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MEMORY_BUDGET,
    DEFAULT_METRICS_ADDR, DEFAULT_QUEUE_DEPTH, DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_REDIS_COMMAND_TIMEOUT, DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_MAX_ENTRIES,
    DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_URL, DEFAULT_RELOAD_INTERVAL, DEFAULT_RESERVATION_TTL,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_SNAPSHOT_INTERVAL,
};
use self::sources::{SOURCE_STRING, SourceDict};

/// The prefix of every environment variable limitsd reads its config from.
pub const ENV_PREFIX: &str = "MERCATOR_LIMITS_";

// ---------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------

/// The validated configuration the server runs on.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every subject's limits: budgets (in nano-USD) merged with rate and
    /// concurrency limits, with the per-dimension `default` entries.
    pub table: LimitTable,
    /// Enforcement mode, alert threshold, downgrade chains and pricing.
    pub policy: Policy,
    /// At most this many requests wait per subject in queue mode.
    pub queue_depth: usize,
    /// The longest a queued request waits.
    pub queue_timeout: Duration,
    /// Unsettled reservations are released after this long.
    pub reservation_ttl: Duration,
    /// A concurrency lease lives this long unless released.
    pub lease_ttl: Duration,
    /// Where counters, reservations and leases are kept (`limits.storage`).
    pub storage: Storage,
    /// Listening addresses, request bounds, reloads (`limits.server`).
    pub server: ServerSettings,
    /// Log format and level (`limits.logging`).
    pub logging: LoggingSettings,
    /// Bounds on metric labels (`limits.metrics`).
    pub metrics: MetricsSettings,
    /// Envoy's rate limit service API (`limits.rls`): domain mappings and
    /// envoyproxy/ratelimit-format rules.
    pub rls: rls::RlsConfig,
    /// The server secret (`limits.security`), which keys the hashes API keys
    /// are stored under and authenticates reservation and lease ids; `None`
    /// lets the store keep one of its own.
    pub secret: Option<Secret>,
    /// Credentials: bearer tokens and client certificates, with their
    /// scopes (`limits.security`).
    pub security: SecuritySettings,
    /// The admin API's audit trail and replica sync (`limits.admin`).
    pub admin: AdminSettings,
    /// Where alert events are delivered (`limits.alerts`).
    pub alerts: AlertsSettings,
    /// Things the server should log at start-up, e.g. that `sqlite` is served
    /// by the sled store.
    pub warnings: Vec<String>,
}

impl Default for Config {
    /// What an empty file and environment give: no limits, memory store.
    fn default() -> Config {
        Config {
            table: LimitTable::new(),
            policy: Policy::default(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            storage: Storage::default(),
            server: ServerSettings::default(),
            logging: LoggingSettings::default(),
            metrics: MetricsSettings::default(),
            rls: rls::RlsConfig::default(),
            secret: None,
            security: SecuritySettings::default(),
            admin: AdminSettings::default(),
            alerts: AlertsSettings::default(),
            warnings: Vec::new(),
        }
    }
}

/// Where alert events go (`limits.alerts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertsSettings {
    /// The receivers every event is POSTed to.
    pub webhooks: Vec<Webhook>,
    /// Events waiting per webhook; when full, the oldest is dropped.
    pub max_pending: usize,
    /// Attempts per event and webhook before it is given up.
    pub max_attempts: u32,
}

impl Default for AlertsSettings {
    fn default() -> AlertsSettings {
        AlertsSettings {
            webhooks: Vec::new(),
            max_pending: keys::DEFAULT_ALERT_MAX_PENDING,
            max_attempts: keys::DEFAULT_ALERT_MAX_ATTEMPTS,
        }
    }
}

/// One receiver of alert events.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The key of the HMAC-SHA256 signature of each body.
    pub secret: std::sync::Arc<[u8]>,
    /// `{"text": ...}` for a Slack incoming webhook, instead of the event.
    pub slack: bool,
}

impl std::fmt::Debug for Webhook {
    /// The secret is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("slack", &self.slack)
            .finish_non_exhaustive()
    }
}

/// What a credential may do. Each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The data plane (LimitsService, Envoy's rate limit service) only,
    /// where `data_plane_auth` asks for a credential.
    Data,
    /// The data plane, and the admin API's reads: get, list, the audit
    /// trail.
    Read,
    /// Everything: the admin API's changes too.
    Write,
}

impl Scope {
    /// The scope's name in the config (`data`, `read`, `write`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Data => "data",
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// A bearer token, known only by its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Its name, as the audit trail shows who acted.
    pub name: String,
    /// The SHA-256 of the token.
    pub sha256: [u8; 32],
    /// What it may do.
    pub scope: Scope,
}

// By hand: even a digest is not for logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A client certificate identity allowed in, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Matched against the certificate's common name or DNS names.
    pub subject: String,
    /// What it may do.
    pub scope: Scope,
}

/// Whether a client must present a certificate (with `client_ca_file`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a valid certificate is refused during the handshake.
    #[default]
    Required,
    /// A client may come without one (its calls then need a token); one it
    /// presents must be valid.
    Optional,
}

/// TLS on the gRPC listeners (`limits.server.tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The PEM certificate chain presented.
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
    /// The PEM CA bundle client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (with `client_ca_file`).
    pub client_auth: ClientAuth,
}

/// Credentials (`limits.security`, but for the secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Bearer tokens: `tokens`, `tokens_file` and `admin_token_sha256`.
    pub tokens: Vec<Token>,
    /// Client certificate identities mapped to scopes.
    pub clients: Vec<ClientIdentity>,
    /// Whether the data plane needs a credential too.
    pub data_plane_auth: bool,
}

impl SecuritySettings {
    /// Whether any credential is configured (the admin API is off without
    /// one).
    pub fn any_credential(&self) -> bool {
        !self.tokens.is_empty() || !self.clients.is_empty()
    }
}

/// The admin API's settings (`limits.admin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Audit events kept.
    pub audit_max_events: usize,
    /// How often a replica looks for other replicas' admin changes.
    pub sync_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> AdminSettings {
        AdminSettings {
            audit_max_events: keys::DEFAULT_AUDIT_MAX_EVENTS,
            sync_interval: keys::DEFAULT_SYNC_INTERVAL,
        }
    }
}

/// Where the engine's state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// In process memory; nothing survives a restart.
    Memory {
        /// At most this many subjects are kept.
        max_entries: usize,
        /// How often idle subjects with empty windows are dropped.
        cleanup_interval: Duration,
    },
    /// The embedded durable sled store (also what `backend: sqlite` means).
    Sled {
        /// The database directory (created if missing).
        path: PathBuf,
        /// The longest a write waits before its group is flushed to disk.
        snapshot_interval: Duration,
    },
    /// Redis (or Valkey, or Redis Cluster), shared by several replicas.
    Redis(RedisSettings),
}

/// `storage.redis`: where the shared counters live and what to do when
/// they cannot be reached.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (any node, for a cluster).
    pub url: String,
    /// Further cluster seed nodes.
    pub nodes: Vec<String>,
    /// Talk to a Redis Cluster (keys of one subject share a hash slot).
    pub cluster: bool,
    /// Used when the URL carries none (`MERCATOR_LIMITS_STORAGE_REDIS_PASSWORD`).
    pub password: Option<String>,
    /// The hash tag of every key: separate prefixes are separate counters.
    pub key_prefix: String,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The longest one decision may take before the call is `UNAVAILABLE`.
    pub command_timeout: Duration,
    /// The most subjects the Redis store keeps; a new one past it is refused.
    pub max_entries: usize,
    /// Hash tags subjects are spread over (0: the store's default, one on
    /// a server and more on a cluster).
    pub shards: u16,
    /// Allow (logged and counted) instead of answering UNAVAILABLE when
    /// Redis cannot be reached.
    pub fail_open: bool,
}

// By hand: the password, in the field or in the URL, must not reach logs.
impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_entries", &self.max_entries)
            .field("shards", &self.shards)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

/// A Redis URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Default for Storage {
    fn default() -> Storage {
        Storage::Memory {
            max_entries: DEFAULT_MAX_ENTRIES,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
        }
    }
}

/// Listening addresses and shutdown behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// The gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// The Prometheus `/metrics` listen address.
    pub metrics_addr: SocketAddr,
    /// How long in-flight calls may run after SIGTERM before the server stops.
    pub shutdown_grace: Duration,
    /// How often the config file is compared with the running config; zero
    /// leaves reloads to SIGHUP alone.
    pub reload_interval: Duration,
    /// The largest request message accepted (`RESOURCE_EXHAUSTED` past it).
    pub max_request_bytes: usize,
    /// Request bytes being read at once, past which calls are shed.
    pub memory_budget: usize,
    /// Calls in progress at once, past which calls are shed (`UNAVAILABLE`).
    pub max_in_flight: usize,
    /// Client connections at once; past it the listener stops accepting.
    pub max_connections: usize,
    /// Calls at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// The admin API's own listener; `None` serves it on `grpc_addr`.
    pub admin_addr: Option<SocketAddr>,
    /// TLS on the gRPC listeners; `None` is plaintext.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            grpc_addr: DEFAULT_GRPC_ADDR,
            metrics_addr: DEFAULT_METRICS_ADDR,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            admin_addr: None,
            tls: None,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    #[default]
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// How limitsd logs (`limits.logging`).
pub struct LoggingSettings {
    /// Human-readable lines or one JSON object per line.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or
    /// `info,limits_server=debug`.
    pub level: String,
}

impl Default for LoggingSettings {
    fn default() -> LoggingSettings {
        LoggingSettings {
            format: LogFormat::default(),
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

/// Bounds on the `identifier` label of the Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// At most this many distinct identifiers are labelled; the rest share
    /// one overflow label, so a flood of ids cannot blow up cardinality.
    pub identifier_cap: usize,
    /// Whether user ids may appear as labels (API keys never do).
    pub show_user_ids: bool,
    /// Whether team and org ids may appear as labels.
    pub show_team_ids: bool,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            identifier_cap: DEFAULT_IDENTIFIER_CAP,
            show_user_ids: true,
            show_team_ids: true,
        }
    }
}

/// Values from command-line flags; they override the file and environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--grpc-addr`.
    pub grpc_addr: Option<SocketAddr>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--rls-config FILE` (repeatable): envoyproxy/ratelimit-format files
    /// loaded after those in `limits.rls.config_files`.
    pub rls_config: Vec<PathBuf>,
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

/// Loads the config: the file at `path` (if any), then the `MERCATOR_LIMITS_*`
/// variables among `env`, then `overrides`, and validates the result.
///
/// `env` is every environment variable (pairs without the prefix are
/// skipped); tests pass their own instead of touching the process
/// environment.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config> {
    let file = path.map(sources::read_file).transpose()?;
    load_sources(file, env, overrides)
}

/// [`load`] with the process environment.
pub fn load_from_env(path: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    // A variable whose name is not UTF-8 cannot be one of ours; a value that
    // is not UTF-8 is kept lossily so validation names the key it broke.
    let env = std::env::vars_os().filter_map(|(name, value)| {
        Some((
            name.into_string().ok()?,
            value.to_string_lossy().into_owned(),
        ))
    });
    load(path, env, overrides)
}

/// Parses and validates a YAML document alone: no environment, no flags.
pub fn parse_str(yaml: &str) -> Result<Config> {
    let file = sources::parse_yaml(yaml, Metadata::named(SOURCE_STRING), "config")?;
    load_sources(Some(file), std::iter::empty(), &Overrides::default())
}

/// Every environment variable limitsd reads, with the key it sets, e.g.
/// `("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD", "limits.budgets.alert_threshold")`.
pub fn env_vars() -> impl Iterator<Item = (String, String)> {
    sources::env_keys().map(|(key, _)| (sources::env_name(&key), format!("limits.{key}")))
}

/// The document: the `limits` section; other top-level keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDocument {
    limits: RawLimits,
}

fn load_sources(
    file: Option<SourceDict>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config> {
    let env = sources::env_source(env)?;
    let flags = sources::flag_source(overrides);
    // Keys set by the later sources, latest first, to say where a value that
    // fails validation came from (the file needs no mention: it is the rest).
    let origins: Vec<(String, String)> =
        flags.origins.iter().chain(&env.origins).cloned().collect();
    let mut figment = Figment::new();
    if let Some(file) = file {
        // The file alone first: merged with the environment, a value of the
        // wrong shape (`budgets: 5`) would be replaced by the variables'
        // mapping instead of being reported.
        let alone = Figment::new()
            .merge(&file)
            .extract::<RawDocument>()
            .map_err(from_figment);
        let lists = file
            .dict
            .get("limits")
            .map_or(Ok(()), |v| sources::check_lists(v, "limits"));
        match (alone, lists) {
            // An unknown key says most about a file that is not ours.
            (Err(e), _) if e.reason.starts_with("unknown key") => return Err(e),
            (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
            (Ok(_), Ok(())) => {}
        }
        figment = figment.merge(file);
    }
    let figment = figment.merge(env).merge(flags);
    let raw: RawDocument = figment.extract().map_err(from_figment)?;
    validate::validate(raw.limits, &overrides.rls_config).map_err(|mut e| {
        if let Some((_, origin)) = origins.iter().find(|(key, _)| *key == e.key) {
            e.reason.push_str(&format!(" (from {origin})"));
        }
        e
    })
}
