//! Fuzz targets for what limitsd reads from outside: gRPC requests (every
//! RPC of the LimitsService, the admin API and Envoy's rate limit service,
//! decoded and handled in-process on a memory store), config files and
//! environment variables, and envoyproxy/ratelimit rule files.
//!
//! Each target takes bytes, so that any input found is replayed exactly.
//! Inputs come from three places: the seed corpus under `corpus/`, random
//! mutations of it, and generators that build well-formed but hostile
//! inputs (every field set from a pool of edge values), which reach deeper
//! than random bytes. The driver runs on the stable toolchain (see
//! FUZZING.md); a target fails on a panic, or when a property breaks:
//! a request refused as `INVALID_ARGUMENT` names its field and changes no
//! state.

#![forbid(unsafe_code)]

use std::sync::Arc;

use limits_server::api::RlsSvc;
use limits_server::api::auth::Actor;
use limits_server::api::queue::Queues;
use limits_server::api::{AdminSvc, LimitsSvc, Shared};
use limits_server::config::Config;
use limits_server::ops::metrics::Labels;
use limits_server::pb;
use limits_server::pb::admin as apb;
use limits_server::pb::admin::limits_admin_service_server::LimitsAdminService;
use limits_server::pb::envoy::service::ratelimit::v3 as rls_pb;
use limits_server::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use limits_server::pb::limits_service_server::LimitsService;
use limits_store::{AnyStore, MemoryStore};
use prost::Message;
use rand::Rng;
use rand::rngs::StdRng;
use tonic::{Code, Request};

/// What a target reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A request to one RPC: its first byte picks the RPC, the rest is the
    /// encoded message.
    Requests,
    /// A config file (YAML), then, after a NUL byte, environment variables
    /// one per line.
    Config,
    /// An envoyproxy/ratelimit rule file.
    Rules,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Requests, Target::Config, Target::Rules];

    pub fn name(self) -> &'static str {
        match self {
            Target::Requests => "requests",
            Target::Config => "config",
            Target::Rules => "rules",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The config requests are decided under: every kind of limit, on every
/// dimension, with model scopes, calendar budgets, several alert
/// thresholds, downgrades and pricing, and the Envoy path mapped.
const CONFIG: &str = r#"
limits:
  security:
    secret: "fuzzing secret, not for production"
  budgets:
    alert_threshold: 0.5
    alert_thresholds: [0.25, 0.9]
    by_api_key:
      k1:
        hourly: 1
        daily: 5
        monthly: 50
        alias: one
        models:
          "gpt-4*": { daily: 1 }
          gpt-3.5-turbo: { hourly: 0.2 }
      default: { daily: 2, period: calendar, timezone: Europe/Paris }
    by_user:
      default: { hourly: 0.5 }
    by_team:
      t1: { monthly: 10 }
  rate_limits:
    by_api_key:
      k1:
        requests_per_second: 5
        requests_per_minute: 20
        tokens_per_minute: 5000
        max_concurrent: 2
        models: { "gpt-4*": { tokens_per_minute: 2000 } }
      default: { requests_per_hour: 100, tokens_per_hour: 100000, max_concurrent: 3 }
    by_team:
      t1: { requests_per_minute: 50, max_concurrent: 4 }
  enforcement:
    action: downgrade
    model_downgrades: { gpt-4: gpt-4-turbo, gpt-4-turbo: gpt-3.5-turbo }
  pricing:
    gpt-4: { input_per_1k: 0.03, output_per_1k: 0.06 }
    gpt-3.5-turbo: { input_per_1k: 0.0005, output_per_1k: 0.0015 }
  storage:
    backend: memory
    memory: { max_entries: 2000 }
  rls:
    max_counters: 2000
    domains:
      - domain: edge
        subjects: { api_key: api_key, user: user, team: team }
        tokens: [tokens]
      - domain: shadow
        shadow_mode: true
        subjects: { api_key: api_key }
"#;

/// Runs targets on inputs. Reuse one: the request target keeps its store
/// between inputs, so later requests meet the state earlier ones made.
#[derive(Debug)]
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared<AnyStore>>,
    limits: LimitsSvc<AnyStore>,
    rls: RlsSvc<AnyStore>,
    admin: AdminSvc<AnyStore>,
    /// Reservation and lease ids handed out, for the generators to use.
    pub issued: Vec<String>,
    /// How requests ended, by gRPC code: how deep the inputs reach.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

/// A property that broke on an input.
pub type Failure = String;

impl Harness {
    pub fn new() -> Harness {
        let config: Config = limits_server::config::parse_str(CONFIG).expect("the fuzz config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let shared = runtime.block_on(async {
            let store = AnyStore::Memory(MemoryStore::with_options(
                limits_store::Bounds {
                    subjects: 2000,
                    counters: 2000,
                },
                config.secret.clone(),
            ));
            Arc::new(Shared {
                labels: Labels::new(&config.metrics),
                limiter: limits::Limiter::with_store(store, config),
                queues: Queues::new(),
                in_flight: Default::default(),
            })
        });
        Harness {
            runtime,
            limits: LimitsSvc::new(shared.clone()),
            rls: RlsSvc::new(shared.clone()),
            admin: AdminSvc::new(shared.clone()),
            shared,
            issued: Vec::new(),
            outcomes: Default::default(),
        }
    }

    /// Runs `target` on `input`: `Err` when a property broke (a panic
    /// propagates; the driver catches it).
    pub fn run(&mut self, target: Target, input: &[u8]) -> Result<(), Failure> {
        match target {
            Target::Requests => self.request(input),
            Target::Config => config(input),
            Target::Rules => {
                let _ = limits_server::rls_config::check_rule_file(&String::from_utf8_lossy(input));
                Ok(())
            }
        }
    }

    fn subjects_held(&self) -> usize {
        match self.shared.limiter.store() {
            AnyStore::Memory(m) => m.len(),
            _ => unreachable!("the harness uses the memory store"),
        }
    }

    fn request(&mut self, input: &[u8]) -> Result<(), Failure> {
        let Some((&which, bytes)) = input.split_first() else {
            return Ok(());
        };
        let before = self.subjects_held();
        let svc = &self.limits;
        let rls = &self.rls;
        let admin = &self.admin;
        let outcome: Result<Option<Vec<String>>, tonic::Status> = self.runtime.block_on(async {
            macro_rules! call {
                ($ty:ty, $method:ident, $svc:expr, $ids:expr) => {{
                    match <$ty>::decode(bytes) {
                        Err(e) => Err(limits_server::api::codec::decode_error_status(&e)),
                        Ok(req) => {
                            // As the credential check leaves it.
                            let mut req = Request::new(req);
                            req.extensions_mut().insert(Actor("fuzz".into()));
                            $svc.$method(req).await.map(|r| $ids(r.into_inner()))
                        }
                    }
                }};
            }
            match which % ADMIN_END {
                0 => call!(
                    pb::CheckLimitsRequest,
                    check_limits,
                    svc,
                    |r: pb::CheckLimitsResponse| { Some(vec![r.reservation_id]) }
                ),
                1 => call!(pb::RecordUsageRequest, record_usage, svc, |_| None),
                2 => call!(
                    pb::AcquireConcurrentRequest,
                    acquire_concurrent,
                    svc,
                    |r: pb::AcquireConcurrentResponse| Some(vec![r.lease_id])
                ),
                3 => call!(
                    pb::ReleaseConcurrentRequest,
                    release_concurrent,
                    svc,
                    |_| None
                ),
                4 => call!(
                    pb::GetUsageRequest,
                    get_usage,
                    svc,
                    |r: pb::GetUsageResponse| {
                        Some(
                            r.reservations
                                .into_iter()
                                .map(|x| x.reservation_id)
                                .chain(r.leases.into_iter().map(|l| l.lease_id))
                                .collect(),
                        )
                    }
                ),
                5 => call!(rls_pb::RateLimitRequest, should_rate_limit, rls, |_| None),
                6 => call!(
                    apb::GetSubjectLimitsRequest,
                    get_subject_limits,
                    admin,
                    |_| None
                ),
                7 => call!(
                    apb::ListSubjectLimitsRequest,
                    list_subject_limits,
                    admin,
                    |_| None
                ),
                8 => call!(
                    apb::CreateSubjectLimitsRequest,
                    create_subject_limits,
                    admin,
                    |_| None
                ),
                9 => call!(
                    apb::UpdateSubjectLimitsRequest,
                    update_subject_limits,
                    admin,
                    |_| None
                ),
                10 => call!(
                    apb::DeleteSubjectLimitsRequest,
                    delete_subject_limits,
                    admin,
                    |_| None
                ),
                11 => call!(apb::AdjustUsageRequest, adjust_usage, admin, |_| None),
                12 => call!(apb::ResetUsageRequest, reset_usage, admin, |_| None),
                13 => call!(apb::RaiseBudgetRequest, raise_budget, admin, |_| None),
                _ => call!(
                    apb::ListAuditEventsRequest,
                    list_audit_events,
                    admin,
                    |_| None
                ),
            }
        });
        let code = match &outcome {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        };
        *self.outcomes.entry(code).or_default() += 1;
        match outcome {
            Ok(ids) => {
                for id in ids.into_iter().flatten().filter(|i| !i.is_empty()) {
                    if self.issued.len() >= 256 {
                        self.issued.swap_remove(0);
                    }
                    self.issued.push(id);
                }
                Ok(())
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                let message = status.message();
                let field = message.split(": ").next().unwrap_or("");
                if field.is_empty() || field.contains(' ') {
                    return Err(format!("INVALID_ARGUMENT names no field: {message:?}"));
                }
                if self.subjects_held() != before {
                    return Err(format!("a refused request changed state: {message:?}"));
                }
                Ok(())
            }
            Err(status) if status.code() == Code::Internal => {
                Err(format!("INTERNAL on a memory store: {}", status.message()))
            }
            Err(_) => Ok(()),
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        _ => "OTHER",
    }
}

fn config(input: &[u8]) -> Result<(), Failure> {
    let (file, env) = match input.iter().position(|&b| b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let file = String::from_utf8_lossy(file);
    let _ = limits_server::config::parse_str(&file);
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = if k.starts_with(limits_server::config::ENV_PREFIX) {
                k.to_owned()
            } else {
                format!("{}{k}", limits_server::config::ENV_PREFIX)
            };
            (k, v.to_owned())
        })
        .collect();
    let _ = limits_server::config::load(None, env, &Default::default());
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators: well-formed inputs with hostile values.
// ---------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Most values are ordinary, so that inputs pass validation and reach the
/// engine; the rest are edge cases.
const ORDINARY: f64 = 0.8;

fn id(rng: &mut StdRng) -> String {
    if rng.random_bool(ORDINARY) {
        return pick(rng, &["k1", "k2", "t1", "u1", "sk-live-1", "default"]).to_string();
    }
    match rng.random_range(0..10) {
        0 => String::new(),
        1 => "x".repeat(rng.random_range(250..300)),
        2 => format!("a\u{1}b{}", rng.random::<u8>()),
        3 => "default".into(),
        4 => "ü🙂\u{202e}".into(),
        _ => pick(rng, &["k1", "k2", "t1", "u1", "sk-live-1", "  ", "k1\n"]).to_string(),
    }
}

fn subject(rng: &mut StdRng) -> pb::Subject {
    pb::Subject {
        dimension: *pick(rng, &[0, 1, 1, 2, 3, 3, 4, -1, 99]),
        id: id(rng),
    }
}

fn subjects(rng: &mut StdRng) -> Vec<pb::Subject> {
    if rng.random_bool(ORDINARY) {
        // One per dimension, some of them.
        let mut out = Vec::new();
        for dimension in 1..=3 {
            if rng.random_bool(0.6) {
                out.push(pb::Subject {
                    dimension,
                    id: id(rng),
                });
            }
        }
        if out.is_empty() {
            out.push(pb::Subject {
                dimension: 1,
                id: "k1".into(),
            });
        }
        return out;
    }
    let n = *pick(rng, &[0, 1, 1, 2, 3, 3, 4]);
    (0..n).map(|_| subject(rng)).collect()
}

fn usd(rng: &mut StdRng) -> f64 {
    if rng.random_bool(ORDINARY) {
        return *pick(rng, &[0.0, 0.001, 0.01, 0.1, 0.25, 1.0]);
    }
    *pick(
        rng,
        &[
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            1e-12,
            0.01,
            0.5,
            3.0,
            1e9,
            1e9 + 1.0,
            f64::MAX,
        ],
    )
}

fn count(rng: &mut StdRng) -> u64 {
    if rng.random_bool(ORDINARY) {
        return rng.random_range(0..2000);
    }
    *pick(
        rng,
        &[
            0,
            1,
            7,
            1000,
            100_000,
            u32::MAX as u64,
            u64::MAX / 2,
            u64::MAX,
        ],
    )
}

fn duration(rng: &mut StdRng) -> Option<prost_types::Duration> {
    let seconds = *pick(
        rng,
        &[0, 1, 60, -1, 7 * 86_400, 7 * 86_400 + 1, i64::MAX, i64::MIN],
    );
    let nanos = *pick(rng, &[0, 1, 999_999_999, 1_000_000_000, -1, i32::MAX]);
    if rng.random_bool(ORDINARY) {
        return rng.random_bool(0.5).then_some(prost_types::Duration {
            seconds: rng.random_range(1..120),
            nanos: 0,
        });
    }
    rng.random_bool(0.7)
        .then_some(prost_types::Duration { seconds, nanos })
}

fn model(rng: &mut StdRng) -> String {
    if rng.random_bool(0.05) {
        return "m".repeat(300);
    }
    if rng.random_bool(ORDINARY) {
        return pick(rng, &["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]).to_string();
    }
    pick(
        rng,
        &[
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "",
            "claude",
            "gpt-4\0",
        ],
    )
    .to_string()
}

fn an_id(rng: &mut StdRng, issued: &[String], prefix: &str) -> String {
    if !issued.is_empty() && rng.random_bool(0.6) {
        let mut s = pick(rng, issued).clone();
        if rng.random_bool(0.2) && !s.is_empty() {
            // One digit off.
            let at = rng.random_range(0..s.len());
            let mut b = s.into_bytes();
            b[at] = b'0' + (b[at] % 10);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        return s;
    }
    match rng.random_range(0..4) {
        0 => String::new(),
        1 => format!("{prefix}{}", "0".repeat(rng.random_range(0..60))),
        2 => format!("{prefix}+{}", "f".repeat(47)),
        _ => "garbage".into(),
    }
}

/// Ordinary calls to every RPC, as the request target reads them: the seed
/// corpus the mutations start from.
pub fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use limits_server::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use limits_server::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    let subjects = || {
        vec![
            pb::Subject {
                dimension: 1,
                id: "k1".into(),
            },
            pb::Subject {
                dimension: 2,
                id: "u1".into(),
            },
            pb::Subject {
                dimension: 3,
                id: "t1".into(),
            },
        ]
    };
    let framed = |which: u8, body: Vec<u8>| {
        let mut v = vec![which];
        v.extend(body);
        v
    };
    vec![
        (
            "check",
            framed(
                0,
                pb::CheckLimitsRequest {
                    subjects: subjects(),
                    model: "gpt-4".into(),
                    estimated_tokens: 1200,
                    estimated_input_tokens: Some(1000),
                    estimated_output_tokens: None,
                    estimated_cost_usd: Some(0.05),
                    reserve: true,
                    reservation_ttl: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "record",
            framed(
                1,
                pb::RecordUsageRequest {
                    subjects: subjects(),
                    reservation_id: String::new(),
                    request_tokens: 900,
                    response_tokens: 300,
                    total_tokens: 0,
                    cost_usd: Some(0.04),
                    provider: "openai".into(),
                    model: "gpt-4".into(),
                    progress: false,
                    sequence: 0,
                }
                .encode_to_vec(),
            ),
        ),
        (
            "acquire",
            framed(
                2,
                pb::AcquireConcurrentRequest {
                    subjects: subjects(),
                    ttl: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "release",
            framed(
                3,
                pb::ReleaseConcurrentRequest {
                    lease_id: format!("lease_{}", "0".repeat(40)),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "usage",
            framed(
                4,
                pb::GetUsageRequest {
                    subject: Some(pb::Subject {
                        dimension: 1,
                        id: "k1".into(),
                    }),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "should_rate_limit",
            framed(
                5,
                rls_pb::RateLimitRequest {
                    domain: "edge".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![
                            Entry {
                                key: "api_key".into(),
                                value: "k1".into(),
                            },
                            Entry {
                                key: "tokens".into(),
                                value: "x".into(),
                            },
                        ],
                        limit: None,
                        hits_addend: Some(40),
                        is_negative_hits: false,
                    }],
                    hits_addend: 1,
                }
                .encode_to_vec(),
            ),
        ),
    ]
}

/// One generated input for `target`.
pub fn generate(target: Target, rng: &mut StdRng, issued: &[String]) -> Vec<u8> {
    match target {
        Target::Requests => generate_request(rng, issued),
        Target::Config => generate_config(rng).into_bytes(),
        Target::Rules => generate_rules(rng).into_bytes(),
    }
}

/// The requests target's first byte picks the RPC: 0–5 the data plane
/// (the seed corpus's), 6 up to this the admin API's.
const ADMIN_END: u8 = 15;

fn subject_ref(rng: &mut StdRng) -> Option<apb::SubjectRef> {
    rng.random_bool(0.95).then(|| apb::SubjectRef {
        subject: rng.random_bool(0.95).then(|| subject(rng)),
        key_hash: if rng.random_bool(0.9) {
            String::new()
        } else {
            pick(
                rng,
                &["ab", "api_key:0123456789abcdef0123456789abcdef", "xxxxxxxx"],
            )
            .to_string()
        },
    })
}

fn kind(rng: &mut StdRng) -> i32 {
    *pick(rng, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -3, 99])
}

fn timestamp(rng: &mut StdRng) -> Option<prost_types::Timestamp> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let seconds = *pick(
        rng,
        &[now + 60, now + 3600, now - 10, 0, -1, i64::MAX, 1 << 40],
    );
    let nanos = *pick(rng, &[0, 999_999_999, 1_000_000_000, -1]);
    rng.random_bool(0.9)
        .then_some(prost_types::Timestamp { seconds, nanos })
}

fn reason(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => String::new(),
        1 => "x\u{0}y".into(),
        2 => "r".repeat(300),
        _ => "refund".into(),
    }
}

fn entry(rng: &mut StdRng) -> apb::SubjectLimits {
    let opt_usd = |rng: &mut StdRng| rng.random_bool(0.4).then(|| usd(rng));
    let opt_count = |rng: &mut StdRng| rng.random_bool(0.3).then(|| count(rng));
    apb::SubjectLimits {
        subject: rng.random_bool(0.95).then(|| subject(rng)),
        key_hash: String::new(),
        hourly_usd: opt_usd(rng),
        daily_usd: opt_usd(rng),
        monthly_usd: opt_usd(rng),
        requests_per_second: opt_count(rng),
        requests_per_minute: opt_count(rng),
        requests_per_hour: opt_count(rng),
        tokens_per_minute: opt_count(rng),
        tokens_per_hour: opt_count(rng),
        max_concurrent: rng.random_bool(0.3).then(|| count(rng) as u32),
        alias: match rng.random_range(0..4) {
            0 => String::new(),
            1 => " ".into(),
            2 => "a".repeat(80),
            _ => "acme".into(),
        },
        expire_time: rng.random_bool(0.2).then(|| timestamp(rng)).flatten(),
        ..Default::default()
    }
}

fn generate_admin(rng: &mut StdRng, which: u8) -> Vec<u8> {
    match which {
        6 => apb::GetSubjectLimitsRequest {
            subject: subject_ref(rng),
        }
        .encode_to_vec(),
        7 => apb::ListSubjectLimitsRequest {
            dimension: *pick(rng, &[0, 1, 2, 3, 9]),
            page_size: *pick(rng, &[0, 1, 100, 1000, 1001, -1]),
            page_token: pick(rng, &["", "zz", "6170695f6b65793a"]).to_string(),
        }
        .encode_to_vec(),
        8 => apb::CreateSubjectLimitsRequest {
            subject_limits: rng.random_bool(0.95).then(|| entry(rng)),
            reason: reason(rng),
        }
        .encode_to_vec(),
        9 => apb::UpdateSubjectLimitsRequest {
            subject: subject_ref(rng),
            subject_limits: rng.random_bool(0.9).then(|| entry(rng)),
            update_mask: rng.random_bool(0.9).then(|| prost_types::FieldMask {
                paths: (0..*pick(rng, &[0, 1, 2, 12]))
                    .map(|_| {
                        pick(
                            rng,
                            &["daily_usd", "alias", "*", "max_concurrent", "weekly", ""],
                        )
                        .to_string()
                    })
                    .collect(),
            }),
            etag: pick(rng, &["", "0123456789abcdef", "stale"]).to_string(),
            allow_missing: rng.random_bool(0.5),
            reason: reason(rng),
        }
        .encode_to_vec(),
        10 => apb::DeleteSubjectLimitsRequest {
            subject: subject_ref(rng),
            etag: pick(rng, &["", "stale"]).to_string(),
            reason: reason(rng),
        }
        .encode_to_vec(),
        11 => apb::AdjustUsageRequest {
            subject: subject_ref(rng),
            resource: *pick(rng, &[0, 1, 2, 3, 7]),
            amount: if rng.random_bool(0.5) {
                -usd(rng)
            } else {
                usd(rng)
            },
            kind: kind(rng),
            reason: reason(rng),
        }
        .encode_to_vec(),
        12 => apb::ResetUsageRequest {
            subject: subject_ref(rng),
            kinds: (0..*pick(rng, &[0, 1, 3])).map(|_| kind(rng)).collect(),
            reason: reason(rng),
        }
        .encode_to_vec(),
        13 => apb::RaiseBudgetRequest {
            subject: subject_ref(rng),
            kind: kind(rng),
            amount: usd(rng),
            expire_time: timestamp(rng),
            reason: reason(rng),
        }
        .encode_to_vec(),
        _ => apb::ListAuditEventsRequest {
            page_size: *pick(rng, &[0, 1, 5, 1001, -1]),
            page_token: pick(rng, &["", "31", "zz"]).to_string(),
        }
        .encode_to_vec(),
    }
}

fn generate_request(rng: &mut StdRng, issued: &[String]) -> Vec<u8> {
    let which: u8 = rng.random_range(0..ADMIN_END);
    if which >= 6 {
        let mut out = vec![which];
        out.extend(generate_admin(rng, which));
        return out;
    }
    let body = match which {
        0 => pb::CheckLimitsRequest {
            subjects: subjects(rng),
            model: model(rng),
            estimated_tokens: count(rng),
            estimated_input_tokens: rng.random_bool(0.3).then(|| count(rng)),
            estimated_output_tokens: rng.random_bool(0.3).then(|| count(rng)),
            estimated_cost_usd: rng.random_bool(0.7).then(|| usd(rng)),
            reserve: rng.random_bool(0.5),
            reservation_ttl: duration(rng),
        }
        .encode_to_vec(),
        1 => pb::RecordUsageRequest {
            subjects: subjects(rng),
            reservation_id: an_id(rng, issued, "rsv_"),
            request_tokens: count(rng),
            response_tokens: count(rng),
            total_tokens: count(rng),
            cost_usd: rng.random_bool(0.7).then(|| usd(rng)),
            provider: "p".into(),
            model: model(rng),
            progress: rng.random_bool(0.3),
            sequence: if rng.random_bool(0.3) {
                rng.random_range(0..5)
            } else {
                0
            },
        }
        .encode_to_vec(),
        2 => pb::AcquireConcurrentRequest {
            subjects: subjects(rng),
            ttl: duration(rng),
        }
        .encode_to_vec(),
        3 => pb::ReleaseConcurrentRequest {
            lease_id: an_id(rng, issued, "lease_"),
        }
        .encode_to_vec(),
        4 => pb::GetUsageRequest {
            subject: rng.random_bool(0.9).then(|| subject(rng)),
        }
        .encode_to_vec(),
        _ => generate_rls(rng).encode_to_vec(),
    };
    let mut out = vec![which];
    out.extend(body);
    out
}

fn generate_rls(rng: &mut StdRng) -> rls_pb::RateLimitRequest {
    use limits_server::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use limits_server::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    let descriptors = (0..*pick(rng, &[0, 1, 2, 5, 70]))
        .map(|_| RateLimitDescriptor {
            entries: (0..*pick(rng, &[0, 1, 2, 3, 20]))
                .map(|_| Entry {
                    key: pick(
                        rng,
                        &["api_key", "user", "team", "tokens", "ip", "", "\u{1}"],
                    )
                    .to_string(),
                    value: id(rng),
                })
                .collect(),
            limit: rng.random_bool(0.2).then(|| RateLimitOverride {
                requests_per_unit: *pick(rng, &[0, 1, 5, u32::MAX]),
                unit: *pick(rng, &[0, 1, 2, 3, 4, 5, 6, 99]),
            }),
            hits_addend: rng.random_bool(0.3).then(|| count(rng)),
            is_negative_hits: rng.random_bool(0.1),
        })
        .collect();
    rls_pb::RateLimitRequest {
        domain: pick(rng, &["edge", "shadow", "other", ""]).to_string(),
        descriptors,
        hits_addend: *pick(rng, &[0, 1, 1000, u32::MAX]),
    }
}

/// A YAML value from a pool of edge cases.
fn yaml_value(rng: &mut StdRng, depth: u32) -> String {
    let scalars = [
        "0",
        "-1",
        "1",
        "0.8",
        "1e300",
        "-0.0",
        ".nan",
        ".inf",
        "true",
        "\"x\"",
        "~",
        "''",
        "1ns",
        "5m",
        "1000000000y",
        "\"64KiB\"",
        "99999999999999999999",
        "[]",
        "{}",
        "redis://127.0.0.1:1",
        "block",
        "queue",
        "downgrade",
        "alert",
        "sled",
        "memory",
        "&a 1",
        "*a",
        "!!binary aGk=",
    ];
    if depth == 0 || rng.random_bool(0.6) {
        return pick(rng, &scalars).to_string();
    }
    if rng.random_bool(0.3) {
        let items: Vec<String> = (0..rng.random_range(0..4))
            .map(|_| yaml_value(rng, depth - 1))
            .collect();
        return format!("[{}]", items.join(", "));
    }
    let keys = [
        "budgets",
        "rate_limits",
        "enforcement",
        "storage",
        "server",
        "logging",
        "metrics",
        "rls",
        "security",
        "pricing",
        "by_api_key",
        "by_user",
        "by_team",
        "default",
        "daily",
        "hourly",
        "monthly",
        "requests_per_second",
        "tokens_per_minute",
        "max_concurrent",
        "alias",
        "action",
        "model_downgrades",
        "backend",
        "memory",
        "sled",
        "path",
        "max_entries",
        "cleanup_interval",
        "lease_ttl",
        "queue_timeout",
        "alert_threshold",
        "enabled",
        "domains",
        "subjects",
        "tokens",
        "max_request_bytes",
        "secret",
        "<<",
    ];
    let fields: Vec<String> = (0..rng.random_range(0..5))
        .map(|_| format!("{}: {}", pick(rng, &keys), yaml_value(rng, depth - 1)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn generate_config(rng: &mut StdRng) -> String {
    let body = yaml_value(rng, 4);
    let mut text = if rng.random_bool(0.8) {
        format!("limits: {body}\n")
    } else {
        format!("{body}\n")
    };
    if rng.random_bool(0.3) {
        text.push('\0');
        for _ in 0..rng.random_range(1..4) {
            let name = pick(
                rng,
                &[
                    "BUDGETS_ALERT_THRESHOLD",
                    "ENFORCEMENT_ACTION",
                    "STORAGE_BACKEND",
                    "SERVER_MAX_IN_FLIGHT",
                    "SECURITY_SECRET",
                    "RATE_LIMITS_LEASE_TTL",
                    "NO_SUCH_KEY",
                ],
            );
            text.push_str(&format!("{name}={}\n", yaml_value(rng, 0)));
        }
    }
    text
}

fn generate_rules(rng: &mut StdRng) -> String {
    fn descriptor(rng: &mut StdRng, depth: u32, out: &mut String, indent: usize) {
        let pad = " ".repeat(indent);
        out.push_str(&format!(
            "{pad}- key: {}\n",
            pick(rng, &["k", "ip", "", "\"a.b\"", "[1]"])
        ));
        if rng.random_bool(0.5) {
            out.push_str(&format!(
                "{pad}  value: {}\n",
                pick(rng, &["v", "\"*\"", "pre*", "", "1"])
            ));
        }
        if rng.random_bool(0.6) {
            out.push_str(&format!(
                "{pad}  rate_limit: {{ unit: {}, requests_per_unit: {} }}\n",
                pick(
                    rng,
                    &[
                        "second",
                        "minute",
                        "hour",
                        "day",
                        "month",
                        "year",
                        "fortnight",
                        "1"
                    ]
                ),
                pick(rng, &["0", "1", "10", "-1", "4294967296", "x"])
            ));
        }
        for key in [
            "shadow_mode",
            "replaces",
            "detailed_metric",
            "name",
            "unlimited",
        ] {
            if rng.random_bool(0.1) {
                out.push_str(&format!(
                    "{pad}  {key}: {}\n",
                    pick(rng, &["true", "x", "[a]"])
                ));
            }
        }
        if depth > 0 && rng.random_bool(0.5) {
            out.push_str(&format!("{pad}  descriptors:\n"));
            for _ in 0..rng.random_range(1..3) {
                descriptor(rng, depth - 1, out, indent + 4);
            }
        }
    }
    let mut out = format!(
        "domain: {}\ndescriptors:\n",
        pick(rng, &["d", "", "\"\\u0001\"", "[x]"])
    );
    for _ in 0..rng.random_range(0..4) {
        descriptor(rng, 3, &mut out, 2);
    }
    out
}

// ---------------------------------------------------------------------------
// Mutation.
// ---------------------------------------------------------------------------

/// A random change to `input`: flips, overwrites with edge bytes, inserts,
/// deletes, duplicates or splices a range.
pub fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..5) {
        let len = out.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = *pick(rng, &[0, 1, 0x7f, 0x80, 0xff, b'\n', b':', b'-', b'"']);
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                let copy = out[i..i + n].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, copy);
            }
            _ if !other.is_empty() => {
                let i = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - i).min(64));
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, other[i..i + n].iter().copied());
            }
            _ => {}
        }
    }
    out.truncate(256 * 1024);
    out
}

/// A short stable name for an input, for the file it is saved under.
pub fn input_name(input: &[u8]) -> String {
    hex::encode(&blake3::hash(input).as_bytes()[..8])
}
