//! The declaration of every config key: its kind, default, range and one
//! line of documentation. The raw structs serde fills, the environment
//! names, the checks that name the key and the reference table in README.md
//! all come from here (see `declare`), so a key is added in one place.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use limits_core::EnforcementMode;
use serde::Deserialize;

use super::declare::{FieldDoc, declare};
use super::setting::{
    Addr, Alias, Auto, Choice, Count, Day, Digest, FileOnly, FilePath, Flag, Fraction, Fractions,
    Inherit, KeyPrefix, Limit, LogFilter, OptAddr, Password, Price, Range, RedisUrl, ServerSecret,
    Shards, Size, Slots, Span, Usd, Zone,
};
use super::{ClientAuth, LogFormat, Scope};
use crate::config::rls::{DEFAULT_MAX_COUNTERS, RawDomain};

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
/// KiB (four subjects of 256 bytes, a model name, a rate limit service
/// call of 64 descriptors of small entries).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * KIB;
/// Default `server.memory_budget`.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 * MIB;
/// Default `server.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `server.max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default `server.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default `admin.audit_max_events`.
pub const DEFAULT_AUDIT_MAX_EVENTS: usize = 10_000;
/// Default `admin.sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Default `logging.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `alerts.max_pending`.
pub const DEFAULT_ALERT_MAX_PENDING: usize = 10_000;
/// Default `alerts.max_attempts`.
pub const DEFAULT_ALERT_MAX_ATTEMPTS: u32 = 8;
/// Default `metrics.identifier_cap`.
pub const DEFAULT_IDENTIFIER_CAP: usize = 1000;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Reservation and lease TTLs, as a caller may also ask for per call.
const TTL_RANGE: Range = Range::new(SECOND, crate::MAX_TTL);
const QUEUE_TIMEOUT_RANGE: Range = Range::new(MILLISECOND, HOUR);
const CLEANUP_RANGE: Range = Range::new(SECOND, DAY);
const REDIS_TIMEOUT_RANGE: Range = Range::new(MILLISECOND, Duration::from_secs(300));
/// The guide's `snapshot_interval: 5m` must still load (it is capped to
/// the longest group wait at start-up, with a warning).
const SNAPSHOT_RANGE: Range = Range::new(Duration::from_micros(100), HOUR);
const GRACE_RANGE: Range = Range::new(Duration::ZERO, HOUR).or_zero();
/// Zero turns polling off; otherwise not so often that it burns a core.
const RELOAD_RANGE: Range = Range::new(Duration::from_millis(10), HOUR).or_zero();
/// Often enough to follow other replicas closely, not so often that it
/// loads the store.
const SYNC_RANGE: Range = Range::new(Duration::from_millis(10), Duration::from_secs(60));

const CLIENT_AUTHS: &[(&str, ClientAuth)] = &[
    ("required", ClientAuth::Required),
    ("optional", ClientAuth::Optional),
];

/// The scopes a credential may have.
pub(crate) const SCOPES: &[(&str, Scope)] = &[
    ("data", Scope::Data),
    ("read", Scope::Read),
    ("write", Scope::Write),
];

/// How budgets move: `limits.budgets.period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BudgetPeriod {
    Rolling,
    Calendar,
}

const PERIODS: &[(&str, BudgetPeriod)] = &[
    ("rolling", BudgetPeriod::Rolling),
    ("calendar", BudgetPeriod::Calendar),
];

/// The weekdays, numbered from Monday as calendars take them.
const WEEKDAYS: &[(&str, u8)] = &{
    let names = limits_core::calendar::WEEKDAYS;
    let mut out = [("", 0); 7];
    let mut i = 0;
    while i < names.len() {
        out[i] = (names[i], i as u8);
        i += 1;
    }
    out
};

const ACTIONS: &[(&str, EnforcementMode)] = &[
    ("block", EnforcementMode::Block),
    ("queue", EnforcementMode::Queue),
    ("downgrade", EnforcementMode::Downgrade),
    ("alert", EnforcementMode::Alert),
];

/// `storage.backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Sled,
    Sqlite,
    Redis,
}

const BACKENDS: &[(&str, Backend)] = &[
    ("memory", Backend::Memory),
    ("sled", Backend::Sled),
    ("sqlite", Backend::Sqlite),
    ("redis", Backend::Redis),
];

const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)];

/// A per-id map: id → entry.
pub(crate) type IdMap<T> = BTreeMap<String, T>;

/// The row every per-id map shares.
const PER_ID: FieldDoc = FieldDoc::new("map", "`{}`", ".<id>");

/// The row of an entry's model scopes.
const MODELS: FieldDoc = FieldDoc::new("map", "`{}`", ".<model>");

declare! {
    /// `limits.budgets`.
    section RawBudgets at "budgets", expecting "a mapping of budget settings" => BudgetSettings {
        /// `false` removes every budget limit (including defaults).
        enabled: Flag = Flag(true),
        /// A request that takes any budget to this fraction is allowed with action ALERT.
        alert_threshold: Fraction = Fraction,
        /// Alert events: each budget window's crossing of each of these fractions (and of
        /// `alert_threshold`) is reported once, to WatchAlerts streams and `limits.alerts`
        /// webhooks. Without `alert_threshold`, the lowest also sets action ALERT.
        alert_thresholds: Fractions = Fractions,
        /// `calendar`: daily, weekly and monthly budgets reset at local midnight, on
        /// `week_start` and on `month_anchor_day` in `timezone`, instead of rolling. An entry's own
        /// `period` overrides it. The hourly budget always rolls.
        period: Choice<BudgetPeriod> = Choice(BudgetPeriod::Rolling, PERIODS),
        /// IANA time zone of calendar periods (e.g. `Europe/Paris`); daylight-saving changes
        /// make some days 23 or 25 hours long.
        timezone: Zone = Zone,
        /// The day calendar weeks start on.
        week_start: Choice<u8> = Choice(0, WEEKDAYS),
        /// The day of the month calendar months start on; a shorter month starts on its last
        /// day.
        month_anchor_day: Day = Day,
    } and {
        /// Per-id budgets. The id `default` applies to unlisted ids of that dimension; `{}`
        /// exempts an id from the default.
        by_api_key, by_user, by_team, by_org: IdMap<RawBudget> => PER_ID;
    };

    /// `limits.budgets.by_*.<id>`: one id's budgets.
    entry RawBudget at "budgets.by_*.<id>", expecting "a mapping of budget limits" => BudgetKeys {
        /// Spend allowed over a rolling hour.
        hourly: Usd = Usd,
        /// Spend allowed over a rolling 24 hours.
        daily: Usd = Usd,
        /// Spend allowed over a rolling 7 days (on a calendar: this week).
        weekly: Usd = Usd,
        /// Spend allowed over a rolling 30 days.
        monthly: Usd = Usd,
        /// Name shown in reasons and metrics instead of the id (API keys are secrets).
        alias: Alias = Alias,
        /// `rolling` or `calendar` for this id's budgets.
        period: Inherit<Choice<BudgetPeriod>> = Inherit(Choice(BudgetPeriod::Rolling, PERIODS), "`limits.budgets.period`"),
        /// As `limits.budgets.timezone`, for this id; needs `period: calendar` here or there.
        timezone: Inherit<Zone> = Inherit(Zone, "`limits.budgets.timezone`"),
        /// As `limits.budgets.week_start`, for this id.
        week_start: Inherit<Choice<u8>> = Inherit(Choice(0, WEEKDAYS), "`limits.budgets.week_start`"),
        /// As `limits.budgets.month_anchor_day`, for this id.
        month_anchor_day: Inherit<Day> = Inherit(Day, "`limits.budgets.month_anchor_day`"),
        /// This id's alert thresholds, in place of `limits.budgets.alert_thresholds`.
        alert_thresholds: Inherit<Fractions> = Inherit(Fractions, "`limits.budgets.alert_thresholds`"),
    } and {
        /// Budgets for the requests of some models only (see `by_*.<id>.models.<model>`).
        models: IdMap<RawScope> => MODELS;
    };

    /// `limits.*.by_*.<id>.models.<model>`: limits for the requests of one model, or of the
    /// models a glob matches (`gpt-4*`), beside the id's own; the most specific match applies.
    entry RawScope at "by_*.<id>.models.<model>", expecting "a mapping of limits" => ScopeKeys {
        /// As the id's `hourly`, for these models.
        hourly: Usd = Usd,
        /// As the id's `daily` (on the id's calendar, if it has one).
        daily: Usd = Usd,
        /// As the id's `weekly`.
        weekly: Usd = Usd,
        /// As the id's `monthly`.
        monthly: Usd = Usd,
        /// As the id's `requests_per_second`, for these models.
        requests_per_second: Limit = Limit,
        /// As the id's `requests_per_minute`.
        requests_per_minute: Limit = Limit,
        /// As the id's `requests_per_hour`.
        requests_per_hour: Limit = Limit,
        /// As the id's `tokens_per_minute`.
        tokens_per_minute: Limit = Limit,
        /// As the id's `tokens_per_hour`.
        tokens_per_hour: Limit = Limit,
        /// As the id's `input_tokens_per_minute`.
        input_tokens_per_minute: Limit = Limit,
        /// As the id's `input_tokens_per_hour`.
        input_tokens_per_hour: Limit = Limit,
        /// As the id's `output_tokens_per_minute`.
        output_tokens_per_minute: Limit = Limit,
        /// As the id's `output_tokens_per_hour`.
        output_tokens_per_hour: Limit = Limit,
    };

    /// `limits.rate_limits`.
    section RawRateLimits at "rate_limits", expecting "a mapping of rate-limit settings" => RateSettings {
        /// `false` removes every request, token and concurrency limit.
        enabled: Flag = Flag(true),
        /// A concurrency lease that is never released is freed after this.
        lease_ttl: Span = Span(DEFAULT_LEASE_TTL, TTL_RANGE),
    } and {
        /// Per-id rate limits; `default` and `{}` work as for budgets. An id in only one family
        /// gets the other family's `default`.
        by_api_key, by_user, by_team, by_org: IdMap<RawRate> => PER_ID;
    };

    /// `limits.rate_limits.by_*.<id>`: one id's rate and concurrency limits.
    entry RawRate at "rate_limits.by_*.<id>", expecting "a mapping of rate limits" => RateKeys {
        /// Requests admitted per rolling second.
        requests_per_second: Limit = Limit,
        /// Requests admitted per rolling minute.
        requests_per_minute: Limit = Limit,
        /// Requests admitted per rolling hour.
        requests_per_hour: Limit = Limit,
        /// Tokens admitted per rolling minute.
        tokens_per_minute: Limit = Limit,
        /// Tokens admitted per rolling hour.
        tokens_per_hour: Limit = Limit,
        /// Input (prompt) tokens per rolling minute: a check holds its input estimate, a
        /// record charges `request_tokens`.
        input_tokens_per_minute: Limit = Limit,
        /// Input (prompt) tokens per rolling hour.
        input_tokens_per_hour: Limit = Limit,
        /// Output (completion) tokens per rolling minute: a check holds its output estimate,
        /// a record charges `response_tokens`.
        output_tokens_per_minute: Limit = Limit,
        /// Output (completion) tokens per rolling hour.
        output_tokens_per_hour: Limit = Limit,
        /// In-flight requests (leases) at once.
        max_concurrent: Slots = Slots,
        /// As the budgets' `alias`; an id's aliases must agree.
        alias: Alias = Alias,
    } and {
        /// Rate limits for the requests of some models only (no `max_concurrent`).
        models: IdMap<RawScope> => MODELS;
    };

    /// `limits`: the sections, and the entries that combine both families.
    /// Other top-level keys of the file are ignored.
    section RawLimits at "", expecting "a mapping of limits settings" => LimitsKeys {
    } and {
        budgets: RawBudgets;
        rate_limits: RawRateLimits;
        /// Combined entry: any budget and rate keys plus `alias` and `models`, with no family
        /// default. An id
        /// may not also appear under `budgets`/`rate_limits`.
        by_api_key, by_user, by_team, by_org: IdMap<RawCombined> => PER_ID;
        enforcement: RawEnforcement;
        pricing: IdMap<RawPrice>;
        storage: RawStorage;
        server: RawServer;
        logging: RawLogging;
        metrics: RawMetrics;
        rls: RawRls;
        security: RawSecurity;
        admin: RawAdmin;
        alerts: RawAlerts;
    };

    /// `limits.enforcement`.
    section RawEnforcement at "enforcement", expecting "a mapping of enforcement settings" => EnforcementSettings {
        /// What happens when a request would exceed a limit.
        action: Choice<EnforcementMode> = Choice(EnforcementMode::Block, ACTIONS),
        /// Requests waiting per subject in queue mode.
        queue_depth: Count<usize> = Count(DEFAULT_QUEUE_DEPTH),
        /// Longest a queued request waits (never past the caller's deadline).
        queue_timeout: Span = Span(DEFAULT_QUEUE_TIMEOUT, QUEUE_TIMEOUT_RANGE),
        /// An unsettled reservation is released after this.
        reservation_ttl: Span = Span(DEFAULT_RESERVATION_TTL, TTL_RANGE),
    } and {
        /// Downgrade chain. No self-maps, no cycles, at most 16 steps.
        model_downgrades: BTreeMap<String, String> => FieldDoc::new("map model → model", "`{}`", "");
    };

    /// `limits.pricing.<model>`.
    entry RawPrice at "pricing.<model>", expecting "a mapping with input_per_1k and output_per_1k" => PriceKeys {
        /// USD per 1000 prompt tokens. Prices usage sent without a cost (exactly, in
        /// nano-dollars), and re-prices downgraded estimates.
        input_per_1k: Price = Price,
        /// USD per 1000 completion tokens; estimates without a cost are priced at the higher of
        /// the two rates.
        output_per_1k: Price = Price,
    };

    /// `limits.storage`.
    section RawStorage at "storage", expecting "a mapping of storage settings" => StorageSettings {
        /// `sqlite` is served by the sled store at `storage.sqlite.path`, with a start-up
        /// warning; `redis` shares counters between replicas (see below).
        backend: Choice<Backend> = Choice(Backend::Memory, BACKENDS),
    } and {
        memory: RawMemory;
        sled: RawSled;
        sqlite: RawSqlite;
        redis: RawRedis;
    };

    /// `limits.storage.memory`.
    section RawMemory at "storage.memory", expecting "a mapping of memory-store settings" => MemorySettings {
        /// Most subjects kept in memory; past it, new subjects get `RESOURCE_EXHAUSTED` (spend is
        /// never forgotten to make room).
        max_entries: Count<usize> = Count(DEFAULT_MAX_ENTRIES),
        /// How often idle, empty subjects are dropped and expired holds swept.
        cleanup_interval: Span = Span(DEFAULT_CLEANUP_INTERVAL, CLEANUP_RANGE),
    };

    /// `limits.storage.sled`.
    section RawSled at "storage.sled", expecting "a mapping with path and snapshot_interval" => SledSettings {
        /// The sled database directory (created on first start).
        path: FilePath = FilePath("required for `sled`"),
        /// Longest a durable write waits for its group flush (capped at 1 s at start-up).
        snapshot_interval: Span = Span(DEFAULT_SNAPSHOT_INTERVAL, SNAPSHOT_RANGE),
    };

    /// `limits.storage.sqlite`: the usage guide's name for a file store,
    /// served by sled.
    section RawSqlite at "storage.sqlite", expecting "a mapping with path and snapshot_interval" => SqliteSettings {
        /// Where `backend: sqlite` keeps its store: a sled database at this path.
        path: FilePath = FilePath("required for `sqlite`"),
        /// As `storage.sled.snapshot_interval`, for `backend: sqlite`.
        snapshot_interval: Span = Span(DEFAULT_SNAPSHOT_INTERVAL, SNAPSHOT_RANGE),
    };

    /// `limits.storage.redis`.
    section RawRedis at "storage.redis", expecting "a mapping of Redis settings" => RedisKeys {
        /// `redis://[user:password@]host:port[/db]`; for a cluster, any node.
        url: RedisUrl = RedisUrl(DEFAULT_REDIS_URL),
        /// Talk to a Redis Cluster.
        cluster: Flag = Flag(false),
        /// Used when the URL has none; set it with `MERCATOR_LIMITS_STORAGE_REDIS_PASSWORD`.
        password: Password = Password,
        /// Every key starts with `{prefix}:` (a hash tag); different prefixes are separate
        /// counters.
        key_prefix: KeyPrefix = KeyPrefix(DEFAULT_REDIS_PREFIX),
        /// Longest a connection attempt may take before the call is `UNAVAILABLE`.
        connect_timeout: Span = Span(DEFAULT_REDIS_CONNECT_TIMEOUT, REDIS_TIMEOUT_RANGE),
        /// Longest one decision may take before the call is `UNAVAILABLE`.
        command_timeout: Span = Span(DEFAULT_REDIS_COMMAND_TIMEOUT, REDIS_TIMEOUT_RANGE),
        /// Most subjects kept; past it, new subjects get `RESOURCE_EXHAUSTED` (with several
        /// `shards`, each has its share).
        max_entries: Count<usize> = Count(DEFAULT_REDIS_MAX_ENTRIES),
        /// Hash tags subjects are spread over, so that a Redis Cluster spreads them over its
        /// masters; the same on every replica of a `key_prefix`.
        shards: Shards = Shards,
        /// With Redis unreachable, allow `CheckLimits` / `AcquireConcurrent` (logged, counted)
        /// instead of `UNAVAILABLE`.
        fail_open: Flag = Flag(false),
    } and {
        /// Further seed nodes of a Redis Cluster.
        nodes: Vec<String> => FieldDoc::new("list of URLs", "`[]`", "");
    };

    /// `limits.server`.
    section RawServer at "server", expecting "a mapping of server settings" => ServerKeys {
        /// gRPC listen address; port 0 picks a free port.
        grpc_addr: Addr = Addr(DEFAULT_GRPC_ADDR),
        /// Prometheus `/metrics` address.
        metrics_addr: Addr = Addr(DEFAULT_METRICS_ADDR),
        /// Time in-flight calls get to finish after SIGTERM.
        shutdown_grace: Span = Span(DEFAULT_SHUTDOWN_GRACE, GRACE_RANGE),
        /// How often the config file is checked for changes; `0s` leaves reloads to SIGHUP.
        reload_interval: Span = Span(DEFAULT_RELOAD_INTERVAL, RELOAD_RANGE),
        /// Largest request message; a larger one is `RESOURCE_EXHAUSTED` as soon as its header
        /// arrives (see Overload).
        max_request_bytes: Size = Size(DEFAULT_MAX_REQUEST_BYTES, 1024..=4 << 20),
        /// Request bytes being read at once; a message that would pass it is
        /// `RESOURCE_EXHAUSTED`.
        memory_budget: Size = Size(DEFAULT_MEMORY_BUDGET, 1 << 20..=1 << 40),
        /// Calls in progress at once; one more is `UNAVAILABLE` at once.
        max_in_flight: Count<usize> = Count(DEFAULT_MAX_IN_FLIGHT),
        /// Client connections at once; past it the listener stops accepting.
        max_connections: Count<usize> = Count(DEFAULT_MAX_CONNECTIONS),
        /// Calls at once on one HTTP/2 connection.
        max_concurrent_streams: Count<u32> = Count(DEFAULT_MAX_CONCURRENT_STREAMS),
        /// A listener of its own for the admin API (e.g. reachable only from the operator
        /// network), which then is not served on `grpc_addr`. Same TLS as `grpc_addr`.
        admin_addr: OptAddr = OptAddr("unset: served on `grpc_addr`"),
    } and {
        tls: RawTls;
    };

    /// `limits.server.tls`: TLS on the gRPC listeners.
    section RawTls at "server.tls", expecting "a mapping with cert_file, key_file and client_ca_file" => TlsKeys {
        /// PEM certificate chain the gRPC listeners present; with `key_file` it turns TLS on.
        /// Both files are read again when they change.
        cert_file: FilePath = FilePath("none (plaintext)"),
        /// PEM private key of `cert_file`.
        key_file: FilePath = FilePath("none"),
        /// PEM CA bundle client certificates are verified against (mTLS); read again when it
        /// changes.
        client_ca_file: FilePath = FilePath("none (no client certificates)"),
        /// With `client_ca_file`: `required` refuses a client without a valid certificate,
        /// `optional` lets it in (and its calls need a token).
        client_auth: Choice<ClientAuth> = Choice(ClientAuth::Required, CLIENT_AUTHS),
    };

    /// `limits.security`.
    section RawSecurity at "security", expecting "a mapping of security settings (secret, tokens, clients)" => SecurityKeys {
        /// The server secret: keys the hash API keys are stored under and authenticates
        /// reservation and lease ids. The same on every replica. Better set with
        /// `MERCATOR_LIMITS_SECURITY_SECRET` or `secret_file` than inline. See "Secrets".
        secret: ServerSecret = ServerSecret,
        /// A file holding the secret (e.g. a mounted Kubernetes Secret); surrounding whitespace
        /// is ignored.
        secret_file: FilePath = FilePath("none"),
        /// SHA-256 of a bearer token with the `write` scope, named `admin`: the shortest way to
        /// turn the admin API on. Best set with `MERCATOR_LIMITS_SECURITY_ADMIN_TOKEN_SHA256`.
        admin_token_sha256: Digest = Digest,
        /// A YAML file with a list of tokens as in `tokens` (e.g. a mounted Kubernetes Secret);
        /// read at start-up and on reload.
        tokens_file: FilePath = FilePath("none"),
        /// Require a token (any scope) or a mapped client certificate on the LimitsService and
        /// Envoy's rate limit service too, not only on the admin API.
        data_plane_auth: Flag = Flag(false),
    } and {
        /// Bearer tokens, each `{name, sha256, scope}`: the SHA-256 of the token (never the
        /// token), and `read` (get, list, audit), `write` (every admin call) or `data` (the data
        /// plane only, with `data_plane_auth`).
        tokens: Vec<RawToken> => FieldDoc::new("list", "`[]`", "");
        /// Client certificates (mTLS) allowed in, each `{subject, scope}`: matched against the
        /// certificate's common name or DNS names.
        clients: Vec<RawClient> => FieldDoc::new("list", "`[]`", "");
    };

    /// `limits.admin`: the admin API (runtime limits, budget operations, audit).
    section RawAdmin at "admin", expecting "a mapping of admin API settings" => AdminKeys {
        /// Audit events kept in the store; the oldest beyond it are dropped.
        audit_max_events: Count<usize> = Count(DEFAULT_AUDIT_MAX_EVENTS),
        /// How often a replica looks for admin changes made through other replicas (Redis):
        /// the longest a change takes to be enforced everywhere.
        sync_interval: Span = Span(DEFAULT_SYNC_INTERVAL, SYNC_RANGE),
    };

    /// `limits.rls`: Envoy's rate limit service API; see [`crate::config::rls`].
    section RawRls at "rls", expecting "a mapping of rate limit service settings" => RlsKeys {
        /// Off: `ShouldRateLimit` answers `UNIMPLEMENTED`.
        enabled: FileOnly<Auto> = FileOnly(Auto("`true` once a domain or rule file is configured, else `false`")),
        /// Count and report everything, but always answer `OK` overall.
        dry_run: FileOnly<Flag> = FileOnly(Flag(false)),
        /// Also return the IETF draft `RateLimit` and `RateLimit-Policy` fields.
        ietf_headers: FileOnly<Flag> = FileOnly(Flag(false)),
        /// Most rate limit service counters kept (every backend), apart from
        /// `storage.*.max_entries`, so a flood of descriptors (one per client address, say)
        /// cannot lock out API keys.
        max_counters: Count<usize> = Count(DEFAULT_MAX_COUNTERS),
    } and {
        domains: Vec<RawDomain>;
        config_files: Vec<String>;
    };

    /// `limits.alerts`: where alert events go besides WatchAlerts streams.
    section RawAlerts at "alerts", expecting "a mapping of alert settings" => AlertsKeys {
        /// Events waiting for each webhook; when it is full the oldest is dropped
        /// (`limits_alert_deliveries_total{result="dropped"}`).
        max_pending: Count<usize> = Count(DEFAULT_ALERT_MAX_PENDING),
        /// Attempts per event and webhook (the first and its retries, 0.5 s doubling to 30 s
        /// apart) before the event is given up (`result="failed"`).
        max_attempts: Count<u32> = Count(DEFAULT_ALERT_MAX_ATTEMPTS),
    } and {
        /// Webhooks every alert event is POSTed to: `url`, one of `secret_env` (the variable
        /// holding the signing secret), `secret_file` or `secret`, and `format` (`json`, or `slack`
        /// for an incoming webhook). See README "Alerts".
        webhooks: Vec<RawWebhook> => FieldDoc::new("list", "`[]`", "");
    };

    /// `limits.logging`.
    section RawLogging at "logging", expecting "a mapping of logging settings" => LoggingKeys {
        /// Log line format (stderr).
        format: Choice<LogFormat> = Choice(LogFormat::Pretty, LOG_FORMATS),
        /// e.g. `info,limits_server=debug`; `RUST_LOG` overrides it.
        level: LogFilter = LogFilter(DEFAULT_LOG_LEVEL),
    };

    /// `limits.metrics`.
    section RawMetrics at "metrics", expecting "a mapping of metrics settings" => MetricsKeys {
        /// Most distinct `identifier` label values; the rest are `other`.
        identifier_cap: Count<usize> = Count(DEFAULT_IDENTIFIER_CAP),
        /// Whether user ids may appear raw in labels and reasons (else hashed).
        show_user_ids: Flag = Flag(true),
        /// Whether team and org ids may appear raw in labels and reasons (else hashed).
        show_team_ids: Flag = Flag(true),
    };
}

/// `limits.by_*.<id>`: budget and rate-limit keys in one entry. Its keys
/// are those of [`RawBudget`] and [`RawRate`], which [`split`](Self::split)
/// checks at compile time: a key added to either must be added here.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of limits")]
pub(crate) struct RawCombined {
    hourly: Option<f64>,
    daily: Option<f64>,
    weekly: Option<f64>,
    monthly: Option<f64>,
    period: Option<String>,
    timezone: Option<String>,
    week_start: Option<String>,
    month_anchor_day: Option<u64>,
    alert_thresholds: Option<super::setting::RawFractions>,
    requests_per_second: Option<u64>,
    requests_per_minute: Option<u64>,
    requests_per_hour: Option<u64>,
    tokens_per_minute: Option<u64>,
    tokens_per_hour: Option<u64>,
    input_tokens_per_minute: Option<u64>,
    input_tokens_per_hour: Option<u64>,
    output_tokens_per_minute: Option<u64>,
    output_tokens_per_hour: Option<u64>,
    max_concurrent: Option<u32>,
    alias: Option<String>,
    /// Checked as a budget entry's and a rate entry's, in one.
    pub(crate) models: IdMap<RawScope>,
}

impl RawCombined {
    /// The entry as a budget entry and a rate entry, both with its alias.
    pub(crate) fn split(&self) -> (RawBudget, RawRate) {
        let RawCombined {
            hourly,
            daily,
            weekly,
            monthly,
            period,
            timezone,
            week_start,
            month_anchor_day,
            alert_thresholds,
            requests_per_second,
            requests_per_minute,
            requests_per_hour,
            tokens_per_minute,
            tokens_per_hour,
            input_tokens_per_minute,
            input_tokens_per_hour,
            output_tokens_per_minute,
            output_tokens_per_hour,
            max_concurrent,
            alias,
            models: _,
        } = self;
        let budget = RawBudget {
            hourly: *hourly,
            daily: *daily,
            weekly: *weekly,
            monthly: *monthly,
            alias: alias.clone(),
            period: period.clone(),
            timezone: timezone.clone(),
            week_start: week_start.clone(),
            month_anchor_day: *month_anchor_day,
            alert_thresholds: alert_thresholds.clone(),
            models: IdMap::new(),
        };
        let rate = RawRate {
            requests_per_second: *requests_per_second,
            requests_per_minute: *requests_per_minute,
            requests_per_hour: *requests_per_hour,
            tokens_per_minute: *tokens_per_minute,
            tokens_per_hour: *tokens_per_hour,
            input_tokens_per_minute: *input_tokens_per_minute,
            input_tokens_per_hour: *input_tokens_per_hour,
            output_tokens_per_minute: *output_tokens_per_minute,
            output_tokens_per_hour: *output_tokens_per_hour,
            max_concurrent: *max_concurrent,
            alias: alias.clone(),
            models: IdMap::new(),
        };
        (budget, rate)
    }
}

/// `limits.alerts.webhooks[i]`: one receiver of alert events.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with url, a secret (secret_env, secret_file or secret) and format"
)]
pub(crate) struct RawWebhook {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    pub format: Option<String>,
}

/// `limits.security.tokens[i]`: one bearer token, by its SHA-256.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with name, sha256 and scope"
)]
pub(crate) struct RawToken {
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub scope: Option<String>,
}

/// `limits.security.clients[i]`: one client certificate identity.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with subject and scope"
)]
pub(crate) struct RawClient {
    pub subject: Option<String>,
    pub scope: Option<String>,
}
