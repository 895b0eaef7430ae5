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
//!   rls: { ... }      # Envoy's rate limit service API, see crate::rls
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
//! Every scalar key of the fixed sections can be set from the environment;
//! per-id maps, `model_downgrades` and `pricing` only from the file. The
//! variable name is the key path upper-cased with `.` replaced by `_`, and it
//! is matched against the known keys (key names contain underscores
//! themselves, so the name cannot simply be split at `_`). A variable with the
//! `MERCATOR_LIMITS_` prefix that names no key is an error, so a misspelt
//! variable fails loudly; one set to the empty string is ignored.
//!
//! [figment]: https://docs.rs/figment

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::error::Kind;
use figment::providers::YamlExtended;
use figment::value::{Dict, Empty, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use limits_core::enforcement::MAX_DOWNGRADE_STEPS;
use limits_core::{
    Dimension, EnforcementMode, LimitKind, LimitTable, ModelPrice, NanoUsd, Policy, Pricing,
    SubjectLimits,
};
use limits_store::Secret;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// The prefix of every environment variable limitsd reads its config from.
pub const ENV_PREFIX: &str = "MERCATOR_LIMITS_";

/// Default `enforcement.queue_depth`.
pub const DEFAULT_QUEUE_DEPTH: usize = 100;
/// Default `enforcement.queue_timeout`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `enforcement.reservation_ttl`.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(10 * 60);
/// Default `rate_limits.lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10 * 60);
/// Default `storage.memory.max_entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default `storage.memory.cleanup_interval`.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Default `storage.sled.snapshot_interval` (and `storage.sqlite.snapshot_interval`).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(10);
/// Default `storage.redis.url`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default `storage.redis.key_prefix`.
pub const DEFAULT_REDIS_PREFIX: &str = "limits";
/// Default `storage.redis.connect_timeout`.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `storage.redis.command_timeout`.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Default `storage.redis.max_entries`.
pub const DEFAULT_REDIS_MAX_ENTRIES: usize = 10_000_000;
/// Default `server.grpc_addr`.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 50051);
/// Default `server.metrics_addr`.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9090);
/// Default `server.reload_interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Default `server.max_request_bytes`: the largest valid request is a few
/// KiB (three subjects of 256 bytes, a model name, a rate limit service
/// call of 64 descriptors of small entries).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Default `server.memory_budget`.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 * 1024 * 1024;
/// Default `server.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `server.max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default `server.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default `logging.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `metrics.identifier_cap`.
pub const DEFAULT_IDENTIFIER_CAP: usize = 1000;

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
    pub storage: Storage,
    pub server: ServerSettings,
    pub logging: LoggingSettings,
    pub metrics: MetricsSettings,
    /// Envoy's rate limit service API (`limits.rls`): domain mappings and
    /// envoyproxy/ratelimit-format rules.
    pub rls: crate::rls::RlsConfig,
    /// The server secret (`limits.security`), which keys the hashes API keys
    /// are stored under and authenticates reservation and lease ids; `None`
    /// lets the store keep one of its own.
    pub secret: Option<Secret>,
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
            rls: crate::rls::RlsConfig::default(),
            secret: None,
            warnings: Vec::new(),
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
    pub cluster: bool,
    /// Used when the URL carries none (`MERCATOR_LIMITS_STORAGE_REDIS_PASSWORD`).
    pub password: Option<String>,
    /// The hash tag of every key: separate prefixes are separate counters.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub max_entries: usize,
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
    pub grpc_addr: SocketAddr,
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
pub struct LoggingSettings {
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
    /// Whether team ids may appear as labels.
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
    pub grpc_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// `--rls-config FILE` (repeatable): envoyproxy/ratelimit-format files
    /// loaded after those in `limits.rls.config_files`.
    pub rls_config: Vec<PathBuf>,
}

/// A configuration value that cannot be used, naming its key.
///
/// `key` is the full dotted path (`limits.budgets.by_api_key.prod.daily`),
/// the name of an unknown environment variable, or the config file for
/// errors about the file as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

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
    let file = path.map(read_file).transpose()?;
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
    let file = parse_yaml(yaml, Metadata::named(SOURCE_STRING), "config")?;
    load_sources(Some(file), std::iter::empty(), &Overrides::default())
}

/// Every environment variable limitsd reads, with the key it sets, e.g.
/// `("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD", "limits.budgets.alert_threshold")`.
pub fn env_vars() -> impl Iterator<Item = (String, String)> {
    ENV_KEYS
        .iter()
        .map(|&(key, _)| (env_name(key), format!("limits.{key}")))
}

fn load_sources(
    file: Option<SourceDict>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config> {
    let env = env_source(env)?;
    let flags = flag_source(overrides);
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
            .map_or(Ok(()), |v| check_lists(v, "limits"));
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
    validate(raw.limits, &overrides.rls_config).map_err(|mut e| {
        if let Some((_, origin)) = origins.iter().find(|(key, _)| *key == e.key) {
            e.reason.push_str(&format!(" (from {origin})"));
        }
        e
    })
}

/// Names of the sources, as figment metadata; errors use them to say where a
/// bad value came from.
const SOURCE_FILE: &str = "YAML file";
const SOURCE_STRING: &str = "YAML string";
const SOURCE_ENV: &str = "environment";
const SOURCE_FLAGS: &str = "command-line flags";

/// One source's values, already shaped as `{limits: {...}}`.
#[derive(Debug)]
struct SourceDict {
    metadata: Metadata,
    dict: Dict,
    /// `(full key, where it came from)` for each value of an environment or
    /// flag source.
    origins: Vec<(String, String)>,
}

impl Provider for SourceDict {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.dict.clone())]))
    }
}

fn read_file(path: &Path) -> Result<SourceDict> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read config file: {e}")))?;
    parse_yaml(&text, Metadata::from(SOURCE_FILE, path), &origin)
}

/// Parses YAML text and puts it under `limits` unless it already is.
fn parse_yaml(text: &str, metadata: Metadata, origin: &str) -> Result<SourceDict> {
    // YamlExtended resolves `<<: *anchor` merge keys, handy for sharing one
    // set of limits between several ids.
    let YamlNode(value) = YamlExtended::from_str::<YamlNode>(text)
        .map_err(|e| ConfigError::new(origin, format!("invalid YAML: {e}")))?;
    // A file that sets nothing would run with no limits at all: refuse it,
    // so that an empty or truncated file (a ConfigMap caught mid-update)
    // cannot turn every limit off, at start-up or on reload.
    let mut top = match value {
        Value::Dict(_, dict) if !dict.is_empty() => dict,
        Value::Dict(..) | Value::Empty(..) => {
            return Err(ConfigError::new(
                origin,
                "the file sets nothing (it is empty or holds only comments); a config file \
                 needs a `limits:` mapping",
            ));
        }
        other => {
            return Err(ConfigError::new(
                origin,
                format!(
                    "the top level must be a mapping with a `limits:` key, found {}",
                    shape(&other)
                ),
            ));
        }
    };
    let mut limits = match top.remove("limits") {
        // `limits: {}` says, on purpose, "no limits": allowed.
        Some(Value::Dict(_, d)) => Value::from(d),
        // `limits:` with nothing after it is what a truncated file looks like.
        Some(Value::Empty(..)) => {
            return Err(ConfigError::new(
                "limits",
                "is empty: it must be a mapping of settings (budgets, rate_limits, ...); \
                 write `limits: {}` to run without limits on purpose",
            ));
        }
        Some(other) => {
            return Err(ConfigError::new(
                "limits",
                format!(
                    "must be a mapping of settings (budgets, rate_limits, ...), found {}",
                    shape(&other)
                ),
            ));
        }
        // The guide's fragments: the whole document is the limits section.
        None => Value::from(top),
    };
    strip_nulls(&mut limits);
    Ok(SourceDict {
        metadata,
        dict: Dict::from([("limits".to_owned(), limits)]),
        origins: Vec::new(),
    })
}

/// A value's kind, in words, for errors.
fn shape(v: &Value) -> &'static str {
    match v {
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
    }
}

/// The keys (by path, `*` for any list index) whose value is a list.
/// serde accepts a list for a struct too (its fields by position), so
/// `budgets: [true, 0.8]` would silently mean something: a list anywhere
/// else is an error.
const LIST_KEYS: &[&str] = &[
    "limits.rls.domains",
    "limits.rls.domains.*.tokens",
    "limits.rls.config_files",
    "limits.storage.redis.nodes",
];

fn check_lists(value: &Value, path: &str) -> Result<()> {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                check_lists(v, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(_, items) => {
            if !LIST_KEYS.contains(&path) {
                return Err(ConfigError::new(
                    path,
                    "expected a mapping or a single value, found a list",
                ));
            }
            for v in items {
                check_lists(v, &format!("{path}.*"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Drops keys whose value is null, so `key:` and `key: ~` mean "not set".
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Dict(_, dict) => {
            dict.retain(|_, v| !matches!(v, Value::Empty(..)));
            dict.values_mut().for_each(strip_nulls);
        }
        Value::Array(_, items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A YAML document as a figment value. figment's own YAML provider needs
/// string keys, which would reject unquoted numeric ids such as a team `42:`;
/// this keeps every scalar key as its text. Duplicate keys, which YAML forbids
/// and which would silently keep one of two limits, are rejected here as well
/// as by the YAML parser, so the guarantee does not hang on parser details.
struct YamlNode(Value);

impl<'de> Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<YamlNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = YamlNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::Empty(Tag::Default, Empty::Unit)))
    }

    fn visit_none<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::Empty(Tag::Default, Empty::None)))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlNode, D::Error> {
        YamlNode::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlNode, A::Error> {
        let mut items = Vec::new();
        while let Some(YamlNode(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(YamlNode(Value::Array(Tag::Default, items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlNode, A::Error> {
        let mut dict = Dict::new();
        while let Some(YamlKey(key)) = map.next_key()? {
            let YamlNode(value) = map.next_value()?;
            if dict.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
        }
        Ok(YamlNode(Value::Dict(Tag::Default, dict)))
    }
}

/// A mapping key: any scalar, as its text.
struct YamlKey(String);

impl<'de> Deserialize<'de> for YamlKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<YamlKey, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = YamlKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlKey, E> {
        Ok(YamlKey(v))
    }
}

// ---------------------------------------------------------------------------
// Environment and flags.
// ---------------------------------------------------------------------------

/// How an environment value is turned into a config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnvKind {
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`, any case).
    Bool,
    /// An integer or a float.
    Number,
    /// Kept as text: strings, paths, addresses, durations and choices, so a
    /// path such as `2024` stays a path.
    Text,
}

/// Every key that can be set from the environment, relative to `limits.`.
const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("budgets.enabled", EnvKind::Bool),
    ("budgets.alert_threshold", EnvKind::Number),
    ("rate_limits.enabled", EnvKind::Bool),
    ("rate_limits.lease_ttl", EnvKind::Text),
    ("enforcement.action", EnvKind::Text),
    ("enforcement.queue_depth", EnvKind::Number),
    ("enforcement.queue_timeout", EnvKind::Text),
    ("enforcement.reservation_ttl", EnvKind::Text),
    ("storage.backend", EnvKind::Text),
    ("storage.memory.max_entries", EnvKind::Number),
    ("storage.memory.cleanup_interval", EnvKind::Text),
    ("storage.sled.path", EnvKind::Text),
    ("storage.sled.snapshot_interval", EnvKind::Text),
    ("storage.sqlite.path", EnvKind::Text),
    ("storage.sqlite.snapshot_interval", EnvKind::Text),
    ("storage.redis.url", EnvKind::Text),
    ("storage.redis.cluster", EnvKind::Bool),
    ("storage.redis.password", EnvKind::Text),
    ("storage.redis.key_prefix", EnvKind::Text),
    ("storage.redis.connect_timeout", EnvKind::Text),
    ("storage.redis.command_timeout", EnvKind::Text),
    ("storage.redis.max_entries", EnvKind::Number),
    ("storage.redis.fail_open", EnvKind::Bool),
    ("server.grpc_addr", EnvKind::Text),
    ("server.metrics_addr", EnvKind::Text),
    ("server.shutdown_grace", EnvKind::Text),
    ("server.reload_interval", EnvKind::Text),
    ("server.max_request_bytes", EnvKind::Text),
    ("server.memory_budget", EnvKind::Text),
    ("server.max_in_flight", EnvKind::Number),
    ("server.max_connections", EnvKind::Number),
    ("server.max_concurrent_streams", EnvKind::Number),
    ("logging.format", EnvKind::Text),
    ("logging.level", EnvKind::Text),
    ("metrics.identifier_cap", EnvKind::Number),
    ("metrics.show_user_ids", EnvKind::Bool),
    ("metrics.show_team_ids", EnvKind::Bool),
    ("security.secret", EnvKind::Text),
    ("security.secret_file", EnvKind::Text),
    ("rls.max_counters", EnvKind::Number),
];

/// `budgets.alert_threshold` -> `MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Builds the environment source. Names are matched whole against the known
/// keys' names rather than split at `_`, since keys such as `rate_limits` and
/// `alert_threshold` contain underscores themselves.
fn env_source(env: impl IntoIterator<Item = (String, String)>) -> Result<SourceDict> {
    let mut limits = Dict::new();
    let mut origins = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Deployment templates often define a variable and leave it empty to
        // mean "not set"; treating that as a value would break them.
        if raw.is_empty() {
            continue;
        }
        let wanted = rest.to_ascii_uppercase();
        let Some(&(key, kind)) = ENV_KEYS
            .iter()
            .find(|(key, _)| key.replace('.', "_").eq_ignore_ascii_case(&wanted))
        else {
            return Err(ConfigError::new(&name, unknown_env_reason(&name)));
        };
        insert_path(&mut limits, key, env_value(&raw, kind));
        origins.push((
            format!("limits.{key}"),
            format!("environment variable {name}"),
        ));
    }
    Ok(SourceDict {
        metadata: Metadata::named(SOURCE_ENV),
        dict: Dict::from([("limits".to_owned(), Value::from(limits))]),
        origins,
    })
}

fn unknown_env_reason(name: &str) -> String {
    let mut reason = String::from("unknown setting: no config key has this environment name");
    let closest = ENV_KEYS
        .iter()
        .map(|&(key, _)| env_name(key))
        .map(|candidate| (edit_distance(name, &candidate), candidate))
        .min();
    match closest {
        Some((distance, candidate)) if distance <= 3 => {
            reason.push_str(&format!("; did you mean {candidate}?"));
        }
        _ => {
            reason.push_str(
                " (per-id limits, model_downgrades and pricing are set in the file only)",
            );
        }
    }
    reason
}

/// Levenshtein distance, for "did you mean" on misspelt variable names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row.push(substitute.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

fn env_value(raw: &str, kind: EnvKind) -> Value {
    let text = raw.trim();
    match kind {
        EnvKind::Bool => Value::from(text)
            .to_bool_lossy()
            .map_or_else(|| Value::from(text), Value::from),
        // Parsed here rather than with figment's parser, which reads short
        // decimals such as "0.8" as f32 and so loses precision.
        EnvKind::Number => {
            if let Ok(n) = text.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = text.parse::<i64>() {
                Value::from(n)
            } else if let Ok(n) = text.parse::<f64>() {
                Value::from(n)
            } else {
                // Left as text, so extraction reports a type error naming
                // the key and the variable.
                Value::from(text)
            }
        }
        EnvKind::Text => Value::from(text),
    }
}

/// Sets `a.b.c` in `dict`, creating the intermediate tables.
fn insert_path(dict: &mut Dict, dotted: &str, value: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = dict;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, next) = entry else {
            return;
        };
        current = next;
    }
}

fn flag_source(overrides: &Overrides) -> SourceDict {
    let mut limits = Dict::new();
    let mut origins = Vec::new();
    let flags = [
        ("server.grpc_addr", "--grpc-addr", overrides.grpc_addr),
        (
            "server.metrics_addr",
            "--metrics-addr",
            overrides.metrics_addr,
        ),
    ];
    for (key, flag, addr) in flags {
        if let Some(addr) = addr {
            insert_path(&mut limits, key, Value::from(addr.to_string()));
            origins.push((format!("limits.{key}"), format!("the {flag} flag")));
        }
    }
    SourceDict {
        metadata: Metadata::named(SOURCE_FLAGS),
        dict: Dict::from([("limits".to_owned(), Value::from(limits))]),
        origins,
    }
}

/// Turns a figment extraction error into one naming the full key.
fn from_figment(error: figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let reason = match &error.kind {
        // figment puts an unknown field's name in the path but not a missing
        // one's; add it only where it is absent.
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(&**field) {
                path.push(field.to_string());
            }
            "required key is missing".to_owned()
        }
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", friendly(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}, expected {}", friendly(expected))
        }
        other => other.to_string(),
    };
    let key = if path.is_empty() {
        "limits".to_owned()
    } else {
        path.join(".")
    };
    let from = match &error.metadata {
        Some(md) if md.name == SOURCE_ENV && path.len() > 1 => {
            format!(
                " (from environment variable {})",
                env_name(&path[1..].join("."))
            )
        }
        Some(md) if md.name == SOURCE_FLAGS => " (from a command-line flag)".to_owned(),
        _ => String::new(),
    };
    ConfigError::new(key, format!("{reason}{from}"))
}

/// Serde's Rust type names, in words.
fn friendly(expected: &str) -> &str {
    match expected {
        "u64" | "usize" => "a whole number, 0 or more",
        "u32" => "a whole number from 0 to 4294967295",
        "f64" => "a number",
        "a boolean" => "true or false",
        other => other,
    }
}

// ---------------------------------------------------------------------------
// The raw stage: what the sources said, before any checking. Field docs here
// are the config reference.
// ---------------------------------------------------------------------------

/// The document: the `limits` section; other top-level keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDocument {
    limits: RawLimits,
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of limits settings"
)]
struct RawLimits {
    /// USD budgets over rolling hourly (1 h), daily (24 h) and monthly (30 d)
    /// windows.
    budgets: RawBudgets,
    /// Request, token and concurrency limits.
    rate_limits: RawRateLimits,
    /// Combined entries taking both budget and rate-limit keys.
    by_api_key: BTreeMap<String, RawCombined>,
    by_user: BTreeMap<String, RawCombined>,
    by_team: BTreeMap<String, RawCombined>,
    /// What happens when a limit would be exceeded.
    enforcement: RawEnforcement,
    /// `model -> price`: prices requests that give tokens but no cost, and
    /// re-prices downgraded requests.
    pricing: BTreeMap<String, RawPrice>,
    storage: RawStorage,
    server: RawServer,
    logging: RawLogging,
    metrics: RawMetrics,
    /// Envoy's rate limit service API; see [`crate::rls`].
    rls: crate::rls::RawRls,
    security: RawSecurity,
}

/// `limits.security`.
#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with secret or secret_file"
)]
struct RawSecurity {
    /// The server secret, at least 16 bytes (32 random bytes recommended);
    /// better set from the environment (`MERCATOR_LIMITS_SECURITY_SECRET`)
    /// or a file than written inline. The same on every replica.
    secret: Option<String>,
    /// A file holding the secret (surrounding whitespace is ignored), e.g. a
    /// mounted Kubernetes Secret.
    secret_file: Option<String>,
}

// By hand: the secret must not reach a log line through a `{:?}`.
impl fmt::Debug for RawSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSecurity")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

/// `limits.budgets`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of budget settings"
)]
struct RawBudgets {
    /// bool, default true. `false` removes every budget limit.
    enabled: Option<bool>,
    /// float in (0, 1], optional. A request that takes any budget to this
    /// fraction of its limit is allowed with action ALERT.
    alert_threshold: Option<f64>,
    /// id -> budget entry.
    by_api_key: BTreeMap<String, RawBudget>,
    by_user: BTreeMap<String, RawBudget>,
    by_team: BTreeMap<String, RawBudget>,
}

/// `limits.budgets.by_*.<id>`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of budget limits")]
struct RawBudget {
    /// USD per rolling hour; > 0, at most 1e9.
    hourly: Option<f64>,
    /// USD per rolling 24 hours; > 0, at most 1e9.
    daily: Option<f64>,
    /// USD per rolling 30 days; > 0, at most 1e9.
    monthly: Option<f64>,
    /// A name shown in reasons and metrics instead of the id (API keys are
    /// secrets).
    alias: Option<String>,
}

/// `limits.rate_limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of rate-limit settings"
)]
struct RawRateLimits {
    /// bool, default true. `false` removes every request, token and
    /// concurrency limit.
    enabled: Option<bool>,
    /// duration, default 10m. A concurrency lease not released by then is
    /// freed, so a caller that dies holding a slot cannot leak it.
    lease_ttl: Option<DurationText>,
    /// id -> rate-limit entry.
    by_api_key: BTreeMap<String, RawRate>,
    by_user: BTreeMap<String, RawRate>,
    by_team: BTreeMap<String, RawRate>,
}

/// `limits.rate_limits.by_*.<id>`. Every limit is a positive integer.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of rate limits")]
struct RawRate {
    requests_per_second: Option<u64>,
    requests_per_minute: Option<u64>,
    requests_per_hour: Option<u64>,
    tokens_per_minute: Option<u64>,
    tokens_per_hour: Option<u64>,
    /// In-flight requests (leases) at once.
    max_concurrent: Option<u32>,
    alias: Option<String>,
}

/// `limits.by_*.<id>`: budget and rate-limit keys in one entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of limits")]
struct RawCombined {
    hourly: Option<f64>,
    daily: Option<f64>,
    monthly: Option<f64>,
    requests_per_second: Option<u64>,
    requests_per_minute: Option<u64>,
    requests_per_hour: Option<u64>,
    tokens_per_minute: Option<u64>,
    tokens_per_hour: Option<u64>,
    max_concurrent: Option<u32>,
    alias: Option<String>,
}

/// `limits.enforcement`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of enforcement settings"
)]
struct RawEnforcement {
    /// block | queue | downgrade | alert, default block.
    action: Option<String>,
    /// positive integer, default 100: requests waiting per subject in queue
    /// mode.
    queue_depth: Option<u64>,
    /// duration > 0, default 30s: the longest a queued request waits.
    queue_timeout: Option<DurationText>,
    /// model -> cheaper model, walked in downgrade mode. No cycles, no
    /// self-maps, at most 16 steps.
    model_downgrades: BTreeMap<String, String>,
    /// duration > 0, default 10m: an unsettled reservation is released after
    /// this.
    reservation_ttl: Option<DurationText>,
}

/// `limits.pricing.<model>`. Both prices are required; USD, >= 0, <= 1e9.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with input_per_1k and output_per_1k"
)]
struct RawPrice {
    /// USD per 1000 prompt tokens.
    input_per_1k: f64,
    /// USD per 1000 completion tokens.
    output_per_1k: f64,
}

/// `limits.storage`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of storage settings"
)]
struct RawStorage {
    /// memory | sled | sqlite | redis, default memory. `sqlite` is served by
    /// the sled store at `sqlite.path`.
    backend: Option<String>,
    memory: RawMemory,
    sled: RawFileStore,
    sqlite: RawFileStore,
    redis: RawRedis,
}

/// `limits.storage.redis`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of Redis settings"
)]
struct RawRedis {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS),
    /// default redis://127.0.0.1:6379.
    url: Option<String>,
    /// bool, default false: talk to a Redis Cluster (`url` is a seed node).
    cluster: Option<bool>,
    /// Further cluster seed nodes (URLs).
    nodes: Vec<String>,
    /// Used when the URL has none; better set from the environment.
    password: Option<String>,
    /// default `limits`: the hash tag of every key.
    key_prefix: Option<String>,
    /// duration > 0, default 1s.
    connect_timeout: Option<DurationText>,
    /// duration > 0, default 250ms: the longest one decision may take.
    command_timeout: Option<DurationText>,
    /// positive integer, default 10000000: subjects kept at most.
    max_entries: Option<u64>,
    /// bool, default false: allow when Redis cannot be reached.
    fail_open: Option<bool>,
}

/// `limits.storage.memory`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of memory-store settings"
)]
struct RawMemory {
    /// positive integer, default 100000: subjects kept at most.
    max_entries: Option<u64>,
    /// duration > 0, default 1m: how often idle subjects are dropped.
    cleanup_interval: Option<DurationText>,
}

/// `limits.storage.sled` and `limits.storage.sqlite`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with path and snapshot_interval"
)]
struct RawFileStore {
    /// Required when this backend is selected.
    path: Option<String>,
    /// duration > 0, default 10ms: the longest a write waits for its group
    /// flush.
    snapshot_interval: Option<DurationText>,
}

/// `limits.server`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of server settings"
)]
struct RawServer {
    /// IP:PORT, default 0.0.0.0:50051. Port 0 picks a free port.
    grpc_addr: Option<String>,
    /// IP:PORT, default 0.0.0.0:9090, serving `/metrics`.
    metrics_addr: Option<String>,
    /// duration, default 10s: how long in-flight calls may finish after
    /// SIGTERM.
    shutdown_grace: Option<DurationText>,
    /// duration, default 1s: how often the config file is checked for
    /// changes; 0 turns polling off (SIGHUP still reloads).
    reload_interval: Option<DurationText>,
    /// size, default 64KiB (1KiB to 4MiB): the largest request message.
    max_request_bytes: Option<SizeText>,
    /// size, default 64MiB: request bytes being read at once before calls
    /// are shed with RESOURCE_EXHAUSTED.
    memory_budget: Option<SizeText>,
    /// positive integer, default 1024: calls in progress at once before
    /// more are shed with UNAVAILABLE.
    max_in_flight: Option<u64>,
    /// positive integer, default 4096: client connections at once.
    max_connections: Option<u64>,
    /// positive integer, default 256: calls at once on one connection.
    max_concurrent_streams: Option<u64>,
}

/// A size in bytes: a whole number, or text with a unit (`64KiB`, `1MB`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a size in bytes, such as 65536 or \"64KiB\"")]
enum SizeText {
    Bytes(u64),
    Text(String),
}

/// A size key's value, within `min..=max` bytes.
fn size(key: &str, raw: Option<&SizeText>, default: usize, min: u64, max: u64) -> Result<usize> {
    let bytes = match raw {
        None => return Ok(default),
        Some(SizeText::Bytes(n)) => *n,
        Some(SizeText::Text(t)) => t
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|e| {
                ConfigError::new(
                    key,
                    format!("invalid size {t:?} ({e}); write bytes or a unit, e.g. \"64KiB\""),
                )
            })?
            .as_u64(),
    };
    if !(min..=max).contains(&bytes) {
        return Err(ConfigError::new(
            key,
            format!(
                "must be between {} and {}, got {bytes} bytes",
                bytesize::ByteSize::b(min).display().iec(),
                bytesize::ByteSize::b(max).display().iec()
            ),
        ));
    }
    usize::try_from(bytes).map_err(|_| ConfigError::new(key, "is too large"))
}

/// `limits.logging`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of logging settings"
)]
struct RawLogging {
    /// json | pretty, default pretty.
    format: Option<String>,
    /// An EnvFilter directive, default `info`.
    level: Option<String>,
}

/// `limits.metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of metrics settings"
)]
struct RawMetrics {
    /// positive integer, default 1000: distinct identifier labels at most.
    identifier_cap: Option<u64>,
    /// bool, default true: whether user ids may be labels.
    show_user_ids: Option<bool>,
    /// bool, default true: whether team ids may be labels.
    show_team_ids: Option<bool>,
}

/// A duration as written, e.g. `"30s"`; parsed during validation. Its own
/// type so that a bare number (`30`, which has no unit) is reported as "expected
/// a duration" rather than "expected a string".
#[derive(Debug)]
struct DurationText(String);

impl DurationText {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DurationText, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as \"30s\", \"5m\" or \"100ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
        Ok(DurationText(v.to_owned()))
    }
}

// ---------------------------------------------------------------------------
// Validation: raw -> Config.
// ---------------------------------------------------------------------------

fn validate(raw: RawLimits, rls_files: &[PathBuf]) -> Result<Config> {
    let mut warnings = Vec::new();

    let budgets_enabled = raw.budgets.enabled.unwrap_or(true);
    let rates_enabled = raw.rate_limits.enabled.unwrap_or(true);
    let table = build_table(&raw, budgets_enabled, rates_enabled)?;
    let alert_threshold_ppm = raw
        .budgets
        .alert_threshold
        .map(|t| threshold_ppm("limits.budgets.alert_threshold", t))
        .transpose()?;
    let lease_ttl = duration(
        "limits.rate_limits.lease_ttl",
        raw.rate_limits.lease_ttl.as_ref().map(DurationText::as_str),
        DEFAULT_LEASE_TTL,
        TTL_RANGE,
    )?;

    let enf = &raw.enforcement;
    let mode = choice(
        "limits.enforcement.action",
        enf.action.as_deref(),
        EnforcementMode::Block,
        &[
            ("block", EnforcementMode::Block),
            ("queue", EnforcementMode::Queue),
            ("downgrade", EnforcementMode::Downgrade),
            ("alert", EnforcementMode::Alert),
        ],
    )?;
    let queue_depth = positive(
        "limits.enforcement.queue_depth",
        enf.queue_depth,
        DEFAULT_QUEUE_DEPTH,
    )?;
    let queue_timeout = duration(
        "limits.enforcement.queue_timeout",
        enf.queue_timeout.as_ref().map(DurationText::as_str),
        DEFAULT_QUEUE_TIMEOUT,
        QUEUE_TIMEOUT_RANGE,
    )?;
    let reservation_ttl = duration(
        "limits.enforcement.reservation_ttl",
        enf.reservation_ttl.as_ref().map(DurationText::as_str),
        DEFAULT_RESERVATION_TTL,
        TTL_RANGE,
    )?;
    check_downgrades(&enf.model_downgrades)?;
    if mode == EnforcementMode::Downgrade && enf.model_downgrades.is_empty() {
        warnings.push(
            "enforcement.action is downgrade but enforcement.model_downgrades is empty: \
             requests over a limit are blocked"
                .to_owned(),
        );
    }
    let pricing = build_pricing(&raw.pricing)?;
    let policy = Policy {
        mode,
        alert_threshold_ppm,
        downgrades: enf
            .model_downgrades
            .iter()
            .map(|(from, to)| (from.clone(), to.clone()))
            .collect(),
        pricing,
    };

    let storage = build_storage(&raw.storage, &mut warnings)?;
    let server = build_server(&raw.server)?;
    let logging = build_logging(&raw.logging)?;
    let metrics = MetricsSettings {
        identifier_cap: positive(
            "limits.metrics.identifier_cap",
            raw.metrics.identifier_cap,
            DEFAULT_IDENTIFIER_CAP,
        )?,
        show_user_ids: raw.metrics.show_user_ids.unwrap_or(true),
        show_team_ids: raw.metrics.show_team_ids.unwrap_or(true),
    };
    let rls = crate::rls::build(&raw.rls, rls_files, &mut warnings)?;
    let secret = build_secret(&raw.security)?;

    Ok(Config {
        table,
        policy,
        queue_depth,
        queue_timeout,
        reservation_ttl,
        lease_ttl,
        storage,
        server,
        logging,
        metrics,
        rls,
        secret,
        warnings,
    })
}

fn build_secret(raw: &RawSecurity) -> Result<Option<Secret>> {
    let (key, material) = match (&raw.secret, &raw.secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "limits.security.secret_file",
                "set either limits.security.secret or limits.security.secret_file, not both",
            ));
        }
        (Some(s), None) => ("limits.security.secret", s.trim().as_bytes().to_vec()),
        (None, Some(path)) => {
            let key = "limits.security.secret_file";
            let text = std::fs::read(path.trim()).map_err(|e| {
                ConfigError::new(key, format!("cannot read {:?}: {e}", path.trim()))
            })?;
            (key, text.trim_ascii().to_vec())
        }
        (None, None) => return Ok(None),
    };
    Secret::new(&material)
        .map(Some)
        .map_err(|e| ConfigError::new(key, e.to_string()))
}

/// One id's budget limits, in nano-USD.
#[derive(Clone, Debug, Default)]
struct BudgetPart {
    hourly: Option<NonZeroU64>,
    daily: Option<NonZeroU64>,
    monthly: Option<NonZeroU64>,
}

/// One id's rate and concurrency limits.
#[derive(Clone, Debug, Default)]
struct RatePart {
    requests_per_second: Option<NonZeroU64>,
    requests_per_minute: Option<NonZeroU64>,
    requests_per_hour: Option<NonZeroU64>,
    tokens_per_minute: Option<NonZeroU64>,
    tokens_per_hour: Option<NonZeroU64>,
    max_concurrent: Option<NonZeroU32>,
}

/// What the config says about one id of one dimension. `None` in a family
/// means "not listed there", so the family's default applies.
#[derive(Debug, Default)]
struct Entry {
    budget: Option<BudgetPart>,
    rate: Option<RatePart>,
    /// The alias and the key that set it, to name both sides of a conflict.
    alias: Option<(Arc<str>, String)>,
}

impl Entry {
    fn set_alias(&mut self, alias: Option<&str>, key: String) -> Result<()> {
        let Some(alias) = alias else {
            return Ok(());
        };
        if alias.trim().is_empty() {
            return Err(ConfigError::new(key, "must not be empty"));
        }
        match &self.alias {
            Some((existing, _)) if **existing == *alias => Ok(()),
            Some((existing, other)) => Err(ConfigError::new(
                key,
                format!("alias {alias:?} conflicts with alias {existing:?} set by {other}"),
            )),
            None => {
                self.alias = Some((Arc::from(alias), key));
                Ok(())
            }
        }
    }
}

const DIMENSIONS: [(Dimension, &str); 3] = [
    (Dimension::ApiKey, "by_api_key"),
    (Dimension::User, "by_user"),
    (Dimension::Team, "by_team"),
];

fn build_table(raw: &RawLimits, budgets_enabled: bool, rates_enabled: bool) -> Result<LimitTable> {
    let mut table = LimitTable::new();
    for (dimension, map) in DIMENSIONS {
        let (budgets, rates, combined) = match dimension {
            Dimension::ApiKey => (
                &raw.budgets.by_api_key,
                &raw.rate_limits.by_api_key,
                &raw.by_api_key,
            ),
            Dimension::User => (&raw.budgets.by_user, &raw.rate_limits.by_user, &raw.by_user),
            Dimension::Team => (&raw.budgets.by_team, &raw.rate_limits.by_team, &raw.by_team),
        };
        let mut entries: BTreeMap<&str, Entry> = BTreeMap::new();

        // Every entry is validated, even in a disabled family: a bad value is
        // an error whether or not it is in force today.
        for (id, b) in budgets {
            let key = format!("limits.budgets.{map}.{id}");
            let entry = entries.entry(id).or_default();
            entry.budget = Some(budget_part(&key, b.hourly, b.daily, b.monthly)?);
            entry.set_alias(b.alias.as_deref(), format!("{key}.alias"))?;
        }
        for (id, r) in rates {
            let key = format!("limits.rate_limits.{map}.{id}");
            let entry = entries.entry(id).or_default();
            entry.rate = Some(rate_part(
                &key,
                r.requests_per_second,
                r.requests_per_minute,
                r.requests_per_hour,
                r.tokens_per_minute,
                r.tokens_per_hour,
                r.max_concurrent,
            )?);
            entry.set_alias(r.alias.as_deref(), format!("{key}.alias"))?;
        }
        for (id, c) in combined {
            let key = format!("limits.{map}.{id}");
            let entry = entries.entry(id).or_default();
            let elsewhere = match (&entry.budget, &entry.rate) {
                (Some(_), _) => Some("budgets"),
                (None, Some(_)) => Some("rate_limits"),
                (None, None) => None,
            };
            if let Some(family) = elsewhere {
                return Err(ConfigError::new(
                    key,
                    format!("id is also listed under limits.{family}.{map}; list it in one place"),
                ));
            }
            entry.budget = Some(budget_part(&key, c.hourly, c.daily, c.monthly)?);
            entry.rate = Some(rate_part(
                &key,
                c.requests_per_second,
                c.requests_per_minute,
                c.requests_per_hour,
                c.tokens_per_minute,
                c.tokens_per_hour,
                c.max_concurrent,
            )?);
            entry.set_alias(c.alias.as_deref(), format!("{key}.alias"))?;
        }

        if !budgets_enabled {
            entries.values_mut().for_each(|e| e.budget = None);
        }
        if !rates_enabled {
            entries.values_mut().for_each(|e| e.rate = None);
        }

        let default = entries.remove("default").unwrap_or_default();
        if default.budget.is_some() || default.rate.is_some() {
            table.set_default(
                dimension,
                Some(subject_limits(
                    default.budget.as_ref(),
                    default.rate.as_ref(),
                    default.alias.as_ref(),
                )),
            );
        }
        for (id, entry) in &entries {
            // Listed only in a disabled family: the id is not listed at all.
            if entry.budget.is_none() && entry.rate.is_none() {
                continue;
            }
            let budget = entry.budget.as_ref().or(default.budget.as_ref());
            let rate = entry.rate.as_ref().or(default.rate.as_ref());
            table.insert(
                dimension,
                *id,
                subject_limits(budget, rate, entry.alias.as_ref()),
            );
        }
    }
    Ok(table)
}

fn subject_limits(
    budget: Option<&BudgetPart>,
    rate: Option<&RatePart>,
    alias: Option<&(Arc<str>, String)>,
) -> SubjectLimits {
    let mut limits = SubjectLimits::default();
    if let Some(b) = budget {
        limits.set(LimitKind::BudgetHourly, b.hourly);
        limits.set(LimitKind::BudgetDaily, b.daily);
        limits.set(LimitKind::BudgetMonthly, b.monthly);
    }
    if let Some(r) = rate {
        limits.set(LimitKind::RequestsPerSecond, r.requests_per_second);
        limits.set(LimitKind::RequestsPerMinute, r.requests_per_minute);
        limits.set(LimitKind::RequestsPerHour, r.requests_per_hour);
        limits.set(LimitKind::TokensPerMinute, r.tokens_per_minute);
        limits.set(LimitKind::TokensPerHour, r.tokens_per_hour);
        limits.set_max_concurrent(r.max_concurrent);
    }
    limits.set_alias(alias.map(|(a, _)| Arc::clone(a)));
    limits
}

fn budget_part(
    key: &str,
    hourly: Option<f64>,
    daily: Option<f64>,
    monthly: Option<f64>,
) -> Result<BudgetPart> {
    Ok(BudgetPart {
        hourly: usd_limit(&format!("{key}.hourly"), hourly)?,
        daily: usd_limit(&format!("{key}.daily"), daily)?,
        monthly: usd_limit(&format!("{key}.monthly"), monthly)?,
    })
}

#[allow(clippy::too_many_arguments)] // One argument per config key reads better than a struct here.
fn rate_part(
    key: &str,
    rps: Option<u64>,
    rpm: Option<u64>,
    rph: Option<u64>,
    tpm: Option<u64>,
    tph: Option<u64>,
    max_concurrent: Option<u32>,
) -> Result<RatePart> {
    let count = |name: &str, v: Option<u64>| -> Result<Option<NonZeroU64>> {
        v.map(|n| {
            NonZeroU64::new(n)
                .ok_or_else(|| ConfigError::new(format!("{key}.{name}"), "must be greater than 0"))
        })
        .transpose()
    };
    Ok(RatePart {
        requests_per_second: count("requests_per_second", rps)?,
        requests_per_minute: count("requests_per_minute", rpm)?,
        requests_per_hour: count("requests_per_hour", rph)?,
        tokens_per_minute: count("tokens_per_minute", tpm)?,
        tokens_per_hour: count("tokens_per_hour", tph)?,
        max_concurrent: max_concurrent
            .map(|n| {
                NonZeroU32::new(n).ok_or_else(|| {
                    ConfigError::new(format!("{key}.max_concurrent"), "must be greater than 0")
                })
            })
            .transpose()?,
    })
}

/// A budget limit: a valid USD amount that is not zero (a zero budget would
/// block everything; leave the key out for "no budget").
fn usd_limit(key: &str, usd: Option<f64>) -> Result<Option<NonZeroU64>> {
    let Some(usd) = usd else {
        return Ok(None);
    };
    let nanos = NanoUsd::try_from_usd(usd).map_err(|e| ConfigError::new(key, e.to_string()))?;
    NonZeroU64::new(nanos.0)
        .map(Some)
        .ok_or_else(|| ConfigError::new(key, "must be greater than 0"))
}

fn threshold_ppm(key: &str, threshold: f64) -> Result<u32> {
    if !threshold.is_finite() || threshold <= 0.0 || threshold > 1.0 {
        return Err(ConfigError::new(
            key,
            format!("must be a fraction greater than 0 and at most 1 (0.8 = 80%), got {threshold}"),
        ));
    }
    // In (0, 1], so the product is in (0, 1e6] and fits a u32. A threshold
    // below half a ppm would round to "alert on any spend"; keep at least 1.
    Ok(((threshold * 1e6).round() as u32).max(1))
}

fn check_downgrades(map: &BTreeMap<String, String>) -> Result<()> {
    for (from, to) in map {
        let key = format!("limits.enforcement.model_downgrades.{from}");
        if from.trim().is_empty() {
            return Err(ConfigError::new(key, "model name must not be empty"));
        }
        if to.trim().is_empty() {
            return Err(ConfigError::new(key, "must name the model to downgrade to"));
        }
        if from == to {
            return Err(ConfigError::new(key, format!("maps {from:?} to itself")));
        }
        let mut chain = vec![from.as_str()];
        let mut next = Some(to.as_str());
        while let Some(model) = next {
            if chain.contains(&model) {
                chain.push(model);
                return Err(ConfigError::new(
                    key,
                    format!("downgrade chain loops: {}", chain.join(" -> ")),
                ));
            }
            chain.push(model);
            next = map.get(model).map(String::as_str);
        }
        if chain.len() - 1 > MAX_DOWNGRADE_STEPS {
            return Err(ConfigError::new(
                key,
                format!(
                    "downgrade chain has {} steps; at most {MAX_DOWNGRADE_STEPS} are followed",
                    chain.len() - 1
                ),
            ));
        }
    }
    Ok(())
}

fn build_pricing(raw: &BTreeMap<String, RawPrice>) -> Result<Pricing> {
    let mut pricing = Pricing::new();
    for (model, price) in raw {
        let key = format!("limits.pricing.{model}");
        let usd = |name: &str, v: f64| {
            NanoUsd::try_from_usd(v)
                .map_err(|e| ConfigError::new(format!("{key}.{name}"), e.to_string()))
        };
        pricing.insert(
            model.clone(),
            ModelPrice {
                input_per_1k: usd("input_per_1k", price.input_per_1k)?,
                output_per_1k: usd("output_per_1k", price.output_per_1k)?,
            },
        );
    }
    Ok(pricing)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Sled,
    Sqlite,
    Redis,
}

fn build_storage(raw: &RawStorage, warnings: &mut Vec<String>) -> Result<Storage> {
    let backend = choice(
        "limits.storage.backend",
        raw.backend.as_deref(),
        Backend::Memory,
        &[
            ("memory", Backend::Memory),
            ("sled", Backend::Sled),
            ("sqlite", Backend::Sqlite),
            ("redis", Backend::Redis),
        ],
    )?;
    // Every section is checked, selected or not, so switching the backend
    // later cannot surface an old mistake.
    let memory = Storage::Memory {
        max_entries: positive(
            "limits.storage.memory.max_entries",
            raw.memory.max_entries,
            DEFAULT_MAX_ENTRIES,
        )?,
        cleanup_interval: duration(
            "limits.storage.memory.cleanup_interval",
            raw.memory
                .cleanup_interval
                .as_ref()
                .map(DurationText::as_str),
            DEFAULT_CLEANUP_INTERVAL,
            CLEANUP_RANGE,
        )?,
    };
    let sled = file_store("limits.storage.sled", &raw.sled)?;
    let sqlite = file_store("limits.storage.sqlite", &raw.sqlite)?;
    let redis = redis_settings(&raw.redis)?;
    let (section, (path, snapshot_interval)) = match backend {
        Backend::Memory => return Ok(memory),
        Backend::Redis => return Ok(Storage::Redis(redis)),
        Backend::Sled => ("limits.storage.sled", sled),
        Backend::Sqlite => ("limits.storage.sqlite", sqlite),
    };
    let Some(path) = path else {
        return Err(ConfigError::new(
            format!("{section}.path"),
            format!(
                "required when limits.storage.backend is {}",
                if backend == Backend::Sled {
                    "sled"
                } else {
                    "sqlite"
                }
            ),
        ));
    };
    if backend == Backend::Sqlite {
        warnings.push(format!(
            "storage.backend: sqlite is served by the embedded sled store at {}",
            path.display()
        ));
    }
    Ok(Storage::Sled {
        path,
        snapshot_interval,
    })
}

fn redis_settings(raw: &RawRedis) -> Result<RedisSettings> {
    let url = |key: &str, v: &str| -> Result<String> {
        let v = v.trim();
        if !(v.starts_with("redis://") || v.starts_with("rediss://")) {
            return Err(ConfigError::new(
                key,
                format!(
                    "must be a redis:// or rediss:// URL, got {:?}",
                    redact_url(v)
                ),
            ));
        }
        Ok(v.to_owned())
    };
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
        return Err(ConfigError::new(
            "limits.storage.redis.key_prefix",
            "must be non-empty and without braces (it is used as the hash tag)",
        ));
    }
    Ok(RedisSettings {
        url: url(
            "limits.storage.redis.url",
            raw.url.as_deref().unwrap_or(DEFAULT_REDIS_URL),
        )?,
        nodes: raw
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| url(&format!("limits.storage.redis.nodes.{i}"), n))
            .collect::<Result<_>>()?,
        cluster: raw.cluster.unwrap_or(false),
        password: raw.password.clone().filter(|p| !p.is_empty()),
        key_prefix,
        connect_timeout: duration(
            "limits.storage.redis.connect_timeout",
            raw.connect_timeout.as_ref().map(DurationText::as_str),
            DEFAULT_REDIS_CONNECT_TIMEOUT,
            REDIS_TIMEOUT_RANGE,
        )?,
        command_timeout: duration(
            "limits.storage.redis.command_timeout",
            raw.command_timeout.as_ref().map(DurationText::as_str),
            DEFAULT_REDIS_COMMAND_TIMEOUT,
            REDIS_TIMEOUT_RANGE,
        )?,
        max_entries: positive(
            "limits.storage.redis.max_entries",
            raw.max_entries,
            DEFAULT_REDIS_MAX_ENTRIES,
        )?,
        fail_open: raw.fail_open.unwrap_or(false),
    })
}

fn file_store(section: &str, raw: &RawFileStore) -> Result<(Option<PathBuf>, Duration)> {
    let path = match raw.path.as_deref() {
        Some(p) if p.trim().is_empty() => {
            return Err(ConfigError::new(
                format!("{section}.path"),
                "must not be empty",
            ));
        }
        Some(p) => Some(PathBuf::from(p)),
        None => None,
    };
    let interval = duration(
        &format!("{section}.snapshot_interval"),
        raw.snapshot_interval.as_ref().map(DurationText::as_str),
        DEFAULT_SNAPSHOT_INTERVAL,
        SNAPSHOT_RANGE,
    )?;
    Ok((path, interval))
}

fn build_server(raw: &RawServer) -> Result<ServerSettings> {
    let grpc_addr = socket_addr(
        "limits.server.grpc_addr",
        raw.grpc_addr.as_deref(),
        DEFAULT_GRPC_ADDR,
    )?;
    let metrics_addr = socket_addr(
        "limits.server.metrics_addr",
        raw.metrics_addr.as_deref(),
        DEFAULT_METRICS_ADDR,
    )?;
    // Port 0 asks for two different ephemeral ports, so only a fixed port
    // can clash.
    if grpc_addr == metrics_addr && grpc_addr.port() != 0 {
        return Err(ConfigError::new(
            "limits.server.metrics_addr",
            format!("{metrics_addr} is also limits.server.grpc_addr; the two need different ports"),
        ));
    }
    let shutdown_grace = duration(
        "limits.server.shutdown_grace",
        raw.shutdown_grace.as_ref().map(DurationText::as_str),
        DEFAULT_SHUTDOWN_GRACE,
        GRACE_RANGE,
    )?;
    let reload_interval = duration(
        "limits.server.reload_interval",
        raw.reload_interval.as_ref().map(DurationText::as_str),
        DEFAULT_RELOAD_INTERVAL,
        RELOAD_RANGE,
    )?;
    let max_request_bytes = size(
        "limits.server.max_request_bytes",
        raw.max_request_bytes.as_ref(),
        DEFAULT_MAX_REQUEST_BYTES,
        1024,
        4 * 1024 * 1024,
    )?;
    let memory_budget = size(
        "limits.server.memory_budget",
        raw.memory_budget.as_ref(),
        DEFAULT_MEMORY_BUDGET,
        1024 * 1024,
        1 << 40,
    )?;
    if memory_budget < max_request_bytes {
        return Err(ConfigError::new(
            "limits.server.memory_budget",
            "must be at least limits.server.max_request_bytes",
        ));
    }
    let max_concurrent_streams = positive(
        "limits.server.max_concurrent_streams",
        raw.max_concurrent_streams,
        DEFAULT_MAX_CONCURRENT_STREAMS as usize,
    )?;
    Ok(ServerSettings {
        grpc_addr,
        metrics_addr,
        shutdown_grace,
        reload_interval,
        max_request_bytes,
        memory_budget,
        max_in_flight: positive(
            "limits.server.max_in_flight",
            raw.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT,
        )?,
        max_connections: positive(
            "limits.server.max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        )?,
        max_concurrent_streams: u32::try_from(max_concurrent_streams).map_err(|_| {
            ConfigError::new("limits.server.max_concurrent_streams", "is too large")
        })?,
    })
}

fn build_logging(raw: &RawLogging) -> Result<LoggingSettings> {
    let format = choice(
        "limits.logging.format",
        raw.format.as_deref(),
        LogFormat::Pretty,
        &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
    )?;
    let level = raw.level.as_deref().unwrap_or(DEFAULT_LOG_LEVEL).trim();
    if level.is_empty() {
        return Err(ConfigError::new(
            "limits.logging.level",
            "must not be empty",
        ));
    }
    // Parsed here so a broken filter fails at start-up with its key, not as
    // a silently ignored directive.
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map_err(|e| {
            ConfigError::new(
                "limits.logging.level",
                format!("invalid filter {level:?}: {e}"),
            )
        })?;
    Ok(LoggingSettings {
        format,
        level: level.to_owned(),
    })
}

/// The values a duration key takes: between `min` and `max`, or zero where
/// zero means "off". A duration outside a sane range (a sweep every
/// nanosecond, a lease for a billion years) is a mistake, not a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    min: Duration,
    max: Duration,
    /// Zero is allowed (and means off, or "at once").
    zero: bool,
}

const fn range(min: Duration, max: Duration) -> Range {
    Range {
        min,
        max,
        zero: false,
    }
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Reservation and lease TTLs, as a caller may also ask for per call.
const TTL_RANGE: Range = range(SECOND, crate::MAX_TTL);
const QUEUE_TIMEOUT_RANGE: Range = range(Duration::from_millis(1), HOUR);
const CLEANUP_RANGE: Range = range(SECOND, DAY);
const REDIS_TIMEOUT_RANGE: Range = range(Duration::from_millis(1), Duration::from_secs(300));
/// The guide's `snapshot_interval: 5m` must still load (it is capped to
/// the longest group wait at start-up, with a warning).
const SNAPSHOT_RANGE: Range = range(Duration::from_micros(100), HOUR);
const GRACE_RANGE: Range = Range {
    min: Duration::ZERO,
    max: HOUR,
    zero: true,
};
/// Zero turns polling off; otherwise not so often that it burns a core.
const RELOAD_RANGE: Range = Range {
    min: Duration::from_millis(10),
    max: HOUR,
    zero: true,
};

fn duration(key: &str, raw: Option<&str>, default: Duration, range: Range) -> Result<Duration> {
    let Some(text) = raw else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            key,
            format!("invalid duration {text:?} ({e}); write a number and a unit, e.g. \"30s\", \"5m\", \"100ms\""),
        )
    })?;
    if parsed.is_zero() {
        if range.zero {
            return Ok(parsed);
        }
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    if parsed < range.min || parsed > range.max {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        return Err(ConfigError::new(
            key,
            format!(
                "must be between {} and {}{}, got {}",
                show(range.min.max(Duration::from_nanos(1))),
                show(range.max),
                if range.zero { " (or 0 for off)" } else { "" },
                text.trim()
            ),
        ));
    }
    Ok(parsed)
}

fn positive(key: &str, raw: Option<u64>, default: usize) -> Result<usize> {
    match raw {
        None => Ok(default),
        Some(0) => Err(ConfigError::new(key, "must be greater than 0")),
        Some(n) => usize::try_from(n).map_err(|_| ConfigError::new(key, "is too large")),
    }
}

/// One of a fixed set of words, compared without regard to case.
fn choice<T: Copy>(key: &str, raw: Option<&str>, default: T, options: &[(&str, T)]) -> Result<T> {
    let Some(text) = raw else {
        return Ok(default);
    };
    let wanted = text.trim();
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            ConfigError::new(
                key,
                format!(
                    "unknown value {text:?}; expected one of: {}",
                    names.join(", ")
                ),
            )
        })
}

fn socket_addr(key: &str, raw: Option<&str>, default: SocketAddr) -> Result<SocketAddr> {
    let Some(text) = raw else {
        return Ok(default);
    };
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("invalid address {text:?}: expected IP:PORT such as 0.0.0.0:50051 (host names are not resolved)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_unique_and_match_the_guide() {
        let names: Vec<String> = env_vars().map(|(name, _)| name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for guide in [
            "MERCATOR_LIMITS_BUDGETS_ENABLED",
            "MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD",
            "MERCATOR_LIMITS_RATE_LIMITS_ENABLED",
            "MERCATOR_LIMITS_ENFORCEMENT_ACTION",
            "MERCATOR_LIMITS_STORAGE_BACKEND",
            "MERCATOR_LIMITS_STORAGE_SQLITE_PATH",
        ] {
            assert!(names.iter().any(|n| n == guide), "{guide}");
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("ENFORCMENT", "ENFORCEMENT"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }

    #[test]
    fn insert_path_builds_nested_tables() {
        let mut dict = Dict::new();
        insert_path(&mut dict, "storage.sqlite.path", Value::from("/x"));
        insert_path(&mut dict, "storage.backend", Value::from("sqlite"));
        let storage = dict
            .get("storage")
            .and_then(Value::as_dict)
            .expect("storage table");
        assert!(storage.contains_key("backend"));
        assert!(storage.get("sqlite").and_then(Value::as_dict).is_some());
    }
}
