//! The command line: every command, option and example, declared with
//! clap's derive. Parsing ends here; the modules of the commands take
//! these values.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::kind::Kind;
use crate::subject::{Subject, SubjectRef};

const EXAMPLES: &str = "\
Examples:
  export LIMITSD_ADDR=https://limits.internal:50051 LIMITSD_CA_CERT=ca.crt LIMITSD_TOKEN=...
  limitsctl usage team=research
  limitsctl limits set team=research --monthly 25000 --alias research
  limitsctl budget adjust api_key=sk-live-123 --usd -12.50 --reason \"refund of a failed batch\"
  limitsctl audit
  limitsctl alerts watch
  limitsctl token new --name ops --scope write

The admin commands (limits, budget, audit) need a token with the `read` scope
to read and `write` to change; usage, check and alerts watch need one only
where limitsd asks for it (limits.security.data_plane_auth). See README,
\"Securing limitsd\".";

/// The operator's command line for limitsd: see a subject's usage, change
/// its limits at runtime, adjust and raise budgets, read the audit trail,
/// watch budget alerts.
#[derive(Parser)]
#[command(name = "limitsctl", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where limitsd is and how to talk to it; accepted before or after the
/// command.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// limitsd's gRPC address: http://HOST:PORT, https://HOST:PORT, or
    /// HOST:PORT (plaintext unless a TLS option is given).
    #[arg(
        long,
        env = "LIMITSD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// A bearer token, sent as `authorization: Bearer <token>` (never
    /// printed).
    #[arg(long, env = "LIMITSD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed limitsd's; implies TLS. Without
    /// it, https:// trusts the system's roots.
    #[arg(long, env = "LIMITSD_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with --key.
    #[arg(
        long,
        env = "LIMITSD_CERT",
        value_name = "FILE",
        requires = "key",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), with --cert.
    #[arg(
        long,
        env = "LIMITSD_KEY",
        value_name = "FILE",
        requires = "cert",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// The name limitsd's certificate must carry [default: the address's
    /// host].
    #[arg(long, value_name = "NAME", global = true)]
    pub tls_server_name: Option<String>,
    /// How long to wait for a connection and for each answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// How to print answers: tables for people, JSON for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show a subject's limits: used, remaining, reset, where each comes
    /// from; and its open reservations and leases.
    #[command(after_help = USAGE_EXAMPLES)]
    Usage(UsageArgs),
    /// Ask whether a request would be allowed now, as a gateway does
    /// (CheckLimits, without a reservation; an allowed check counts one
    /// request against request-rate limits).
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Read and change subjects' runtime entries (limits that replace the
    /// config's).
    #[command(subcommand, after_help = LIMITS_EXAMPLES)]
    Limits(LimitsCommand),
    /// Credit, debit or reset a subject's usage; raise a limit for a while.
    #[command(subcommand, after_help = BUDGET_EXAMPLES)]
    Budget(BudgetCommand),
    /// List the admin changes made, newest first.
    #[command(after_help = AUDIT_EXAMPLES)]
    Audit(AuditArgs),
    /// Budget alerts: each budget window's crossing of each of its alert
    /// thresholds, as it happens.
    #[command(subcommand, after_help = ALERTS_EXAMPLES)]
    Alerts(AlertsCommand),
    /// Make credentials for limitsd (locally; no server is called).
    #[command(subcommand, after_help = TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion(CompletionArgs),
}

const USAGE_EXAMPLES: &str = "\
Examples:
  limitsctl usage api_key=sk-live-123
  limitsctl usage user=alice@example.com -o json
  limitsctl usage team=research

MAX includes any live temporary increase (shown as raised); SOURCE says
whether the limit comes from a runtime entry, the subject's config entry or
the dimension's default. MODEL, shown when the subject has model scopes,
names the scope a limit belongs to (`-`: the subject's own limits, which
every model's requests meet).";

#[derive(Args)]
pub struct UsageArgs {
    /// The subject: api_key=KEY, user=ID, team=ID or org=ID.
    pub subject: Subject,
}

const CHECK_EXAMPLES: &str = "\
Examples:
  limitsctl check api_key=sk-live-123 --cost 0.50
  limitsctl check api_key=sk-live-123 user=alice team=research --model gpt-4o --tokens 2000

Exits 0 whether the request is allowed or denied: read ALLOWED (or
`allowed` with -o json). Without --cost, limitsd prices --tokens from its
pricing table.";

#[derive(Args)]
pub struct CheckArgs {
    /// 1 to 4 subjects, one per dimension: api_key=KEY, user=ID, team=ID, org=ID.
    #[arg(required = true, num_args = 1..=3)]
    pub subjects: Vec<Subject>,
    /// The model asked for.
    #[arg(long, default_value = "gpt-4")]
    pub model: String,
    /// The estimated cost in USD.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub cost: Option<f64>,
    /// The estimated tokens.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub tokens: u64,
}

const LIMITS_EXAMPLES: &str = "\
Examples:
  limitsctl limits set team=research --monthly 25000 --alias research
  limitsctl limits set team=research --model 'gpt-4*' --daily 50
  limitsctl limits set team=research --alert-thresholds 0.5,0.8,0.95
  limitsctl limits get team=research
  limitsctl limits list --dimension api_key
  limitsctl limits delete team=research --reason \"back to the config\"";

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Show a subject's runtime entry, its etag and its temporary increases.
    #[command(after_help = GET_EXAMPLES)]
    Get(GetArgs),
    /// List runtime entries: every page, or with --page-size and
    /// --page-token one page.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Set fields of a subject's runtime entry, or the limits of one of
    /// its model scopes (--model), creating it if there is none; only the
    /// fields given change.
    #[command(after_help = SET_EXAMPLES)]
    Set(Box<SetArgs>),
    /// Remove a subject's runtime entry: its config limits apply again.
    #[command(after_help = DELETE_EXAMPLES)]
    Delete(DeleteArgs),
}

const GET_EXAMPLES: &str = "\
Examples:
  limitsctl limits get team=research
  limitsctl limits get api_key=sk-live-123
  limitsctl limits get api_key_hash=3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d -o json";

#[derive(Args)]
pub struct GetArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
}

const LIST_EXAMPLES: &str = "\
Examples:
  limitsctl limits list
  limitsctl limits list --dimension team -o json
  limitsctl limits list --page-size 50 --page-token <NEXT_PAGE_TOKEN>";

#[derive(Args)]
pub struct ListArgs {
    /// Only entries of this dimension.
    #[arg(long, value_enum)]
    pub dimension: Option<DimensionArg>,
    /// Entries per call (1 to 1000; limitsd's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,
    /// Start at this page (the token a previous page printed); with
    /// --page-size, fetch only that page.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DimensionArg {
    ApiKey,
    User,
    Team,
}

const SET_EXAMPLES: &str = "\
Examples:
  limitsctl limits set team=research --monthly 25000 --alias research
  limitsctl limits set api_key=sk-live-123 --daily 50 --rpm 600 --reason \"new customer\"
  limitsctl limits set user=alice --daily 5 --expires-in 7d --reason trial
  limitsctl limits set api_key_hash=3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d --clear daily
  limitsctl limits set team=research --alert-thresholds 50%,80%,95%
  limitsctl limits set team=research --clear alert-thresholds
  limitsctl limits set team=research --model 'gpt-4*' --daily 50 --tpm 40000
  limitsctl limits set team=research --model 'gpt-4*' --clear tpm
  limitsctl limits set team=research --remove-model 'gpt-4*' --reason \"one budget again\"

The entry replaces the subject's config entry whole: a limit it does not set
is no limit. Budgets are in USD. --etag makes the change only if nobody
changed the entry since `limits get` showed that etag.

--alert-thresholds gives the entry its own alert thresholds (fractions of
each budget, 0.8 or 80%, at most 8), in place of the config's
limits.budgets.alert_thresholds; its model scopes use them too. --clear
alert-thresholds goes back to the config's. `limitsctl alerts watch` shows
the crossings.

With --model PATTERN (an exact model name, or a glob such as 'gpt-4*'), the
budget and rate flags and --clear change that model scope's limits instead of
the entry's: the requests of a matching model meet the entry's own limits and
those of its most specific matching scope. The entry's other scopes, and the
scope's other limits, are kept; a scope left with no limit is removed. The
entry is read and written back only if nobody changed it in between (or
--etag's version, if given). --remove-model PATTERN removes one scope.";

/// The limits of `limits set` (their argument ids), which --model applies
/// to a model scope and --remove-model cannot be given with.
const LIMIT_FLAGS: [&str; 13] = [
    "hourly", "daily", "weekly", "monthly", "rps", "rpm", "rph", "tpm", "tph", "itpm", "itph",
    "otpm", "otph",
];
/// The fields of `limits set` that belong to the entry, not to a model
/// scope (their argument ids): none may be given with --model or
/// --remove-model.
const ENTRY_FLAGS: [&str; 8] = [
    "calendar",
    "week_start",
    "month_anchor_day",
    "max_concurrent",
    "alias",
    "expires",
    "expires_in",
    "alert_thresholds",
];

#[derive(Args)]
pub struct SetArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
    /// USD budget over the last hour.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub hourly: Option<f64>,
    /// USD budget over the last 24 hours (with --calendar: today).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub daily: Option<f64>,
    /// USD budget over the last 7 days (with --calendar: this week).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub weekly: Option<f64>,
    /// USD budget over the last 30 days (with --calendar: this month).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub monthly: Option<f64>,
    /// Reset the daily, weekly and monthly budgets at local midnight in
    /// this IANA time zone (e.g. Europe/Paris, UTC) instead of rolling.
    #[arg(long, value_name = "ZONE")]
    pub calendar: Option<String>,
    /// With --calendar: the day weeks start on (default monday).
    #[arg(long, value_name = "DAY", requires = "calendar")]
    pub week_start: Option<String>,
    /// With --calendar: the day of the month months start on, 1-31
    /// (default 1).
    #[arg(long, value_name = "N", requires = "calendar")]
    pub month_anchor_day: Option<u32>,
    /// Requests per second.
    #[arg(long, value_name = "N")]
    pub rps: Option<u64>,
    /// Requests per minute.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Requests per hour.
    #[arg(long, value_name = "N")]
    pub rph: Option<u64>,
    /// Tokens per minute.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Tokens per hour.
    #[arg(long, value_name = "N")]
    pub tph: Option<u64>,
    /// Input (prompt) tokens per minute.
    #[arg(long, value_name = "N")]
    pub itpm: Option<u64>,
    /// Input (prompt) tokens per hour.
    #[arg(long, value_name = "N")]
    pub itph: Option<u64>,
    /// Output (completion) tokens per minute.
    #[arg(long, value_name = "N")]
    pub otpm: Option<u64>,
    /// Output (completion) tokens per hour.
    #[arg(long, value_name = "N")]
    pub otph: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u32>,
    /// A name shown for the subject in reasons, metrics and the audit trail.
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// When the entry falls away by itself (RFC 3339, UTC).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant, conflicts_with = "expires_in")]
    pub expires: Option<SystemTime>,
    /// When the entry falls away by itself, from now (e.g. 7d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// The entry's own alert thresholds, comma-separated fractions of each
    /// budget (0.5,0.8,0.95 or 50%,80%,95%; at most 8), in place of the
    /// config's; replaces the entry's list.
    #[arg(
        long,
        value_name = "FRACTIONS",
        value_delimiter = ',',
        num_args = 1,
        value_parser = parse_threshold
    )]
    pub alert_thresholds: Option<Vec<f64>>,
    /// Unset a field of the entry, or with --model a limit of the scope
    /// (repeatable).
    #[arg(long, value_name = "FIELD", value_enum)]
    pub clear: Vec<Field>,
    /// Set the limits given (and --clear) on the model scope PATTERN, an
    /// exact model name or a glob such as 'gpt-4*', creating it if the
    /// entry has none; the entry's other scopes are kept.
    #[arg(long, value_name = "PATTERN", conflicts_with_all = ENTRY_FLAGS)]
    pub model: Option<String>,
    /// Remove the model scope PATTERN from the entry, keeping everything
    /// else.
    #[arg(
        long,
        value_name = "PATTERN",
        conflicts_with_all = [&LIMIT_FLAGS[..], &ENTRY_FLAGS, &["model", "clear"]].concat()
    )]
    pub remove_model: Option<String>,
    /// Change the entry only if its etag is still this.
    #[arg(long)]
    pub etag: Option<String>,
    /// Why, for the audit trail.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub reason: String,
}

/// A field of a runtime entry, as `--clear` names it (the flag's name, or
/// the API's field name).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Field {
    #[value(alias = "hourly_usd")]
    Hourly,
    #[value(alias = "daily_usd")]
    Daily,
    #[value(alias = "weekly_usd")]
    Weekly,
    #[value(alias = "monthly_usd")]
    Monthly,
    #[value(alias = "requests_per_second")]
    Rps,
    #[value(alias = "requests_per_minute")]
    Rpm,
    #[value(alias = "requests_per_hour")]
    Rph,
    #[value(alias = "tokens_per_minute")]
    Tpm,
    #[value(alias = "tokens_per_hour")]
    Tph,
    #[value(alias = "input_tokens_per_minute")]
    Itpm,
    #[value(alias = "input_tokens_per_hour")]
    Itph,
    #[value(alias = "output_tokens_per_minute")]
    Otpm,
    #[value(alias = "output_tokens_per_hour")]
    Otph,
    #[value(alias = "max_concurrent")]
    MaxConcurrent,
    Alias,
    #[value(alias = "expire_time", alias = "expires-in")]
    Expires,
    Calendar,
    #[value(alias = "alert_thresholds")]
    AlertThresholds,
}

impl Field {
    /// The field's name in an update mask (the proto field's name).
    pub fn mask(self) -> &'static str {
        match self {
            Field::Hourly => "hourly_usd",
            Field::Daily => "daily_usd",
            Field::Weekly => "weekly_usd",
            Field::Monthly => "monthly_usd",
            Field::Rps => "requests_per_second",
            Field::Rpm => "requests_per_minute",
            Field::Rph => "requests_per_hour",
            Field::Tpm => "tokens_per_minute",
            Field::Tph => "tokens_per_hour",
            Field::Itpm => "input_tokens_per_minute",
            Field::Itph => "input_tokens_per_hour",
            Field::Otpm => "output_tokens_per_minute",
            Field::Otph => "output_tokens_per_hour",
            Field::MaxConcurrent => "max_concurrent",
            Field::Alias => "alias",
            Field::Expires => "expire_time",
            Field::Calendar => "calendar",
            Field::AlertThresholds => "alert_thresholds",
        }
    }

    /// Whether the field is a budget or a rate, which a model scope may
    /// hold (the others belong to the entry).
    pub fn in_scope(self) -> bool {
        !matches!(
            self,
            Field::MaxConcurrent
                | Field::Alias
                | Field::Expires
                | Field::Calendar
                | Field::AlertThresholds
        )
    }

    /// The flag that sets it: `--` and the name `--clear` takes.
    pub fn flag(self) -> String {
        let name = self.to_possible_value().map(|v| v.get_name().to_owned());
        format!("--{}", name.unwrap_or_default())
    }
}

const DELETE_EXAMPLES: &str = "\
Examples:
  limitsctl limits delete team=research --reason \"back to the config\"
  limitsctl limits delete api_key_hash=3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d --etag <ETAG>";

#[derive(Args)]
pub struct DeleteArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
    /// Delete only if the entry's etag is still this.
    #[arg(long)]
    pub etag: Option<String>,
    /// Why, for the audit trail.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub reason: String,
}

const BUDGET_EXAMPLES: &str = "\
Examples:
  limitsctl budget adjust api_key=sk-live-123 --usd -12.50 --reason \"refund of a failed batch\"
  limitsctl budget reset user=alice --window daily --reason \"abuse cleared\"
  limitsctl budget raise api_key=sk-live-123 --window daily --usd 100 --for 7d --reason \"launch week\"";

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Credit (negative) or debit (positive) a subject's usage, in every
    /// window of that resource or one.
    #[command(after_help = ADJUST_EXAMPLES)]
    Adjust(AdjustArgs),
    /// Empty windows of a subject (every window unless --window is given);
    /// open reservations and leases are kept.
    #[command(after_help = RESET_EXAMPLES)]
    Reset(ResetArgs),
    /// Add to one limit of a subject until an instant, after which the
    /// increase falls away by itself.
    #[command(after_help = RAISE_EXAMPLES)]
    Raise(RaiseArgs),
}

const ADJUST_EXAMPLES: &str = "\
Examples:
  limitsctl budget adjust api_key=sk-live-123 --usd -12.50 --reason \"refund of a failed batch\"
  limitsctl budget adjust team=research --usd 3 --window monthly --reason \"billed outside the gateway\"
  limitsctl budget adjust user=alice --requests -100 --window requests_per_hour --reason \"retries\"

A credit takes the newest usage first and never takes a window below zero; a
debit counts from now, like a charge.";

#[derive(Args)]
#[command(group(ArgGroup::new("how_much").required(true).args(["usd", "requests", "tokens"])))]
pub struct AdjustArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
    /// USD: negative credits (a refund), positive debits.
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    pub usd: Option<f64>,
    /// Requests: negative credits, positive debits.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub requests: Option<i64>,
    /// Tokens: negative credits, positive debits.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub tokens: Option<i64>,
    /// Only this window [default: every window of the resource].
    #[arg(long, value_name = "LIMIT")]
    pub window: Option<Kind>,
    /// Why, for the audit trail (required).
    #[arg(long)]
    pub reason: String,
}

const RESET_EXAMPLES: &str = "\
Examples:
  limitsctl budget reset user=alice --window daily --reason \"abuse cleared\"
  limitsctl budget reset team=research --window daily --window rpm --reason \"new quarter\"
  limitsctl budget reset api_key=sk-live-123 --reason \"fresh start\"";

#[derive(Args)]
pub struct ResetArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
    /// A window to empty (repeatable) [default: every window].
    #[arg(long, value_name = "LIMIT")]
    pub window: Vec<Kind>,
    /// Why, for the audit trail (required).
    #[arg(long)]
    pub reason: String,
}

const RAISE_EXAMPLES: &str = "\
Examples:
  limitsctl budget raise api_key=sk-live-123 --window daily --usd 100 --for 7d --reason \"launch week\"
  limitsctl budget raise team=research --window rpm --amount 600 --until 2025-07-01T00:00:00Z --reason demo

The subject must have the limit raised (from a runtime entry, its config entry
or the dimension's default).";

#[derive(Args)]
#[command(group(ArgGroup::new("how_much").required(true).args(["usd", "amount"])))]
#[command(group(ArgGroup::new("how_long").required(true).args(["until", "for_"])))]
pub struct RaiseArgs {
    /// The subject: api_key=KEY, api_key_hash=HASH, user=ID or team=ID.
    pub subject: SubjectRef,
    /// The limit to raise.
    #[arg(long, value_name = "LIMIT")]
    pub window: Kind,
    /// How much to add to a budget, in USD.
    #[arg(long, value_name = "AMOUNT")]
    pub usd: Option<f64>,
    /// How much to add to a request or token limit.
    #[arg(long, value_name = "N")]
    pub amount: Option<u64>,
    /// When the increase falls away (RFC 3339, UTC).
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub until: Option<SystemTime>,
    /// How long the increase lasts, from now (e.g. 7d, 12h).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub for_: Option<Duration>,
    /// Why, for the audit trail (required).
    #[arg(long)]
    pub reason: String,
}

const AUDIT_EXAMPLES: &str = "\
Examples:
  limitsctl audit
  limitsctl audit --page-size 20
  limitsctl audit --all -o json";

#[derive(Args)]
pub struct AuditArgs {
    /// Events per page (1 to 1000; limitsd's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,
    /// Start at this page (the token a previous page printed).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Follow the pages to the oldest event kept.
    #[arg(long)]
    pub all: bool,
}

const ALERTS_EXAMPLES: &str = "\
Examples:
  limitsctl alerts watch
  limitsctl alerts watch -o json | jq -c 'select(.threshold >= 0.8)'
  limitsctl alerts watch --count 1";

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Print each alert event as limitsd sends it (WatchAlerts), until
    /// interrupted or --count events.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
}

const WATCH_EXAMPLES: &str = "\
Examples:
  limitsctl alerts watch
  limitsctl alerts watch -o json
  limitsctl alerts watch --count 1 --token \"$GATEWAY_TOKEN\"

One line per event, as it happens: a budget window of a subject that crossed
one of its alert thresholds (the entry's own, else the config's
limits.budgets.alert_thresholds), once per window and threshold. With
-o json, one JSON object per line, shaped like the webhooks' body. The
subject is its alias, an API key's keyed-hash prefix (never the key), or its
id.

The events are those of the replica reached, from the moment the stream
opens (said on stderr); the webhooks get every event. --timeout bounds the
connection and the stream's opening, never the wait for events; a stream
that limitsd ends is an error (exit 1). Like usage and check,
it needs a `data` token only where limitsd asks for one
(limits.security.data_plane_auth).";

#[derive(Args)]
pub struct WatchArgs {
    /// Exit after N events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

const TOKEN_EXAMPLES: &str = "\
Examples:
  limitsctl token new --name ops --scope write
  limitsctl token new --name dashboards --scope read -o json";

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a random bearer token and print it once, with its SHA-256 and
    /// the config that lets limitsd accept it.
    #[command(after_help = TOKEN_EXAMPLES)]
    New(TokenArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    /// The token's name: the actor the audit trail shows.
    #[arg(long, default_value = "ops")]
    pub name: String,
    /// What the token may do: `read` (Get, List, audit), `write` (every
    /// admin call), `data` (the data plane, with data_plane_auth).
    #[arg(long, value_enum, default_value_t = Scope::Write)]
    pub scope: Scope,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    Read,
    Write,
    Data,
}

const COMPLETION_EXAMPLES: &str = "\
Examples:
  limitsctl completion bash > /etc/bash_completion.d/limitsctl
  limitsctl completion zsh > \"${fpath[1]}/_limitsctl\"
  limitsctl completion fish > ~/.config/fish/completions/limitsctl.fish";

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// An alert threshold: a fraction (`0.8`) or a percentage (`80%`).
/// limitsd checks the range, naming the field.
fn parse_threshold(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(p) => (p.trim_end(), 100.0),
        None => (t, 1.0),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v / scale),
        _ => Err(format!(
            "{s:?} is not a threshold: give fractions of the budget such as 0.5,0.8 or 50%,80%"
        )),
    }
}

/// An instant given as RFC 3339 in UTC (`2025-07-01T00:00:00Z`; the `Z`,
/// the `T` and fractions are optional).
fn parse_instant(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}: expected RFC 3339 in UTC, e.g. 2025-07-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reads_thresholds_as_fractions_or_percentages() {
        assert_eq!(parse_threshold("0.8"), Ok(0.8));
        assert_eq!(parse_threshold("95%"), Ok(0.95));
        assert_eq!(parse_threshold(" 50 %"), Ok(0.5));
        assert!(parse_threshold("").is_err());
        assert!(parse_threshold("half").is_err());
        assert!(parse_threshold("NaN").is_err());
        let cli = Cli::try_parse_from([
            "limitsctl",
            "limits",
            "set",
            "team=t",
            "--alert-thresholds",
            "0.5,80%,0.95",
        ])
        .unwrap();
        let Command::Limits(LimitsCommand::Set(args)) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.alert_thresholds, Some(vec![0.5, 0.8, 0.95]));
    }
}
