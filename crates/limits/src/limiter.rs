//! The facade: one value that owns the limits, the policy and a store, and
//! answers the usage guide's calls — check before a model call, record
//! after it, acquire and release a concurrency slot around it — with the
//! same semantics and errors as limitsd's gRPC API, which is built on it.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use limits_core::headers::{Headers, header_values};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    AcquireOutcome, Attempt, CheckOutcome, Dimension, Hold, LeaseSlot, LimitStatus, NanoUsd, Nanos,
    RecordOutcome, Subject, SubjectLimits,
};
use limits_store::{AnyStore, Call, CheckOp, Health, RecordOp, Secret, Store, SweepStats};

use crate::alerts::AlertEvent;
use crate::config::Config;
use crate::explain::{self, Queued};
use crate::runtime::{self, Runtime, Source};
use crate::scoped::Scoped;
use crate::{Error, identity, ids, validate};

/// The wall clock, read once per call: the engine and the stores below
/// only ever see this value.
pub fn now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(Nanos::from)
        .unwrap_or(Nanos::ZERO)
}

/// One subject's limits: borrowed from the config, or made for a runtime
/// entry or an increase.
pub type Limits<'a> = Cow<'a, SubjectLimits>;

/// What a check asks (the usage guide's `CheckLimits(ctx, id, tokens,
/// cost, model)`, for 1–4 subjects).
#[derive(Debug, Clone, Copy)]
pub struct CheckRequest<'a> {
    /// 1 to 4 subjects, at most one per dimension.
    pub subjects: &'a [Subject],
    /// The model asked for (downgrades start from it; pricing prices it).
    pub model: &'a str,
    /// The tokens the call is expected to use (prompt plus expected completion).
    pub estimated_tokens: u64,
    /// Of those, the input (prompt) part, for input token limits. `None`:
    /// what the output part leaves, or all of them when neither part is
    /// given (see [`validate::token_estimate`]).
    pub estimated_input_tokens: Option<u64>,
    /// Of those, the output (completion) part, for output token limits.
    pub estimated_output_tokens: Option<u64>,
    /// The estimated cost; without one, the pricing table prices the tokens
    /// (at the higher of the model's rates), else it is zero.
    pub estimated_cost: Option<NanoUsd>,
    /// Hold the estimate against budgets and token limits until it is
    /// recorded (see the README: this is what makes concurrent requests
    /// unable to overshoot a budget).
    pub reserve: bool,
    /// How long an unsettled hold lasts; `enforcement.reservation_ttl` by
    /// default.
    pub reservation_ttl: Option<Duration>,
}

/// What a usage record reports.
#[derive(Debug, Clone, Copy)]
pub struct RecordRequest<'a> {
    /// The subjects of the check (a reservation must be settled with the
    /// same ones).
    pub subjects: &'a [Subject],
    /// The reservation to settle, as the check returned it.
    pub reservation_id: Option<&'a str>,
    /// Prompt tokens used.
    pub request_tokens: u64,
    /// Completion tokens used.
    pub response_tokens: u64,
    /// 0 means `request_tokens + response_tokens`.
    pub total_tokens: u64,
    /// The actual cost; without one, the pricing table prices the tokens.
    pub cost: Option<NanoUsd>,
    /// The model that served the call (prices the tokens without a cost).
    pub model: &'a str,
    /// A progress record of a streamed response: the usage is the usage so
    /// far, the reservation stays open (and its hold is renewed for
    /// `enforcement.reservation_ttl`), and [`Recorded::stop`] says whether
    /// the stream may go on. Needs a reservation.
    pub progress: bool,
    /// The record's number in its reservation's sequence (1, 2, ...), or 0:
    /// a record numbered no higher than one already applied charges
    /// nothing. Needs a reservation.
    pub sequence: u32,
}

/// What a check decided: a denial carries the limit that decided it, and an
/// admission cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may run, with `model` (the one asked for, or the
    /// downgrade it fits under).
    Allow {
        /// The model to call.
        model: String,
        /// The reservation to settle with [`Limiter::record`].
        reservation_id: Option<String>,
    },
    /// The request may not run.
    Deny {
        /// The limit that decided.
        denial: limits_core::Denial,
        /// How long until it could fit; `None` when it never can.
        retry_after: Option<Duration>,
    },
}

/// A decided check.
#[derive(Debug)]
pub struct Check<'a> {
    /// Allow or deny, with what each needs.
    pub decision: Decision,
    /// The engine's outcome: action, attempt, every limit's status (with
    /// subject indexes into the request's subjects), the alert flag.
    pub outcome: CheckOutcome,
    /// The estimate of the attempt decided, re-priced for a downgrade.
    pub estimated_cost: NanoUsd,
    /// The HTTP headers a gateway copies onto its response.
    pub headers: Headers,
    /// Each subject's limits, in request order.
    pub limits: Vec<Limits<'a>>,
    attempts: Vec<Attempt>,
    names: Names<'a>,
    /// The model scope of the limit that decided, when a scope's.
    scope: Option<Arc<str>>,
    /// The alert thresholds this check took a budget across (also sent to
    /// every [`Limiter::alerts`] subscriber).
    pub alerts: Vec<AlertEvent>,
}

/// What a record charged.
#[derive(Debug)]
pub struct Recorded<'a> {
    /// The engine's outcome: whether a reservation was settled, and the windows after.
    pub outcome: RecordOutcome,
    /// The cost charged (given, or priced from the tokens).
    pub cost: NanoUsd,
    /// The tokens charged.
    pub tokens: u64,
    /// Each subject's limits, in request order.
    pub limits: Vec<Limits<'a>>,
    /// The alert thresholds this record took a budget across (also sent to
    /// every [`Limiter::alerts`] subscriber).
    pub alerts: Vec<AlertEvent>,
    /// When a progress record's usage went past its reservation into a
    /// limit with no room left: which limit, for the stream's caller.
    pub reason: String,
}

impl Recorded<'_> {
    /// Whether a streamed request should stop: its usage so far went past
    /// what its reservation held, into a limit with no room left.
    pub fn stop(&self) -> bool {
        self.outcome.stop
    }
}

/// The outcome of an acquire.
#[derive(Debug)]
pub struct Acquired<'a> {
    /// The engine's outcome: the slot taken, or the limit that is full.
    pub outcome: AcquireOutcome,
    /// The lease to release, when acquired.
    pub lease_id: Option<String>,
    /// Why not, when not.
    pub reason: String,
    /// Each subject's limits, in request order.
    pub limits: Vec<Limits<'a>>,
}

/// One subject as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Every configured limit: its size, what it holds now and when it resets.
    pub statuses: Vec<LimitStatus>,
    /// Open reservations, with their ids.
    pub reservations: Vec<(String, Hold)>,
    /// Live leases, with their ids.
    pub leases: Vec<(String, LeaseSlot)>,
    /// Where the subject's limits come from (every status shares it).
    pub source: Source,
    /// Of each limit, how much is a live temporary increase.
    pub raised: Vec<(limits_core::LimitKind, u64)>,
}

/// How a request's subjects are named in reasons: by alias or keyed hash
/// for API keys, user and team ids unless the config hides them.
#[derive(Debug)]
struct Names<'a> {
    subjects: &'a [Subject],
    secret: Arc<Secret>,
    show_users: bool,
    show_teams: bool,
}

impl<'a> Names<'a> {
    /// How `subjects` are shown, as the config's metrics settings say.
    fn new(config: &Config, subjects: &'a [Subject], secret: Arc<Secret>) -> Names<'a> {
        Names {
            subjects,
            secret,
            show_users: config.metrics.show_user_ids,
            show_teams: config.metrics.show_team_ids,
        }
    }

    fn show(&self, i: usize, limits: &SubjectLimits) -> String {
        let subject = &self.subjects[i];
        let hide = match subject.dimension {
            Dimension::ApiKey => false,
            Dimension::User => !self.show_users,
            Dimension::Team | Dimension::Org => !self.show_teams,
        };
        identity::display(&self.secret, subject, limits, hide)
    }
}

impl Check<'_> {
    /// Whether the request may run.
    pub fn allowed(&self) -> bool {
        matches!(self.decision, Decision::Allow { .. })
    }

    /// The model the check was decided for: the admitted one, or the last
    /// tried.
    pub fn model(&self) -> &str {
        &self.attempts[self.outcome.attempt].model
    }

    /// The cheaper model admitted instead of the one asked for.
    pub fn downgrade_to(&self) -> Option<&str> {
        (self.allowed() && self.outcome.attempt > 0).then(|| self.model())
    }

    /// How subject `i` may be named (never a raw API key).
    pub fn shown(&self, i: usize) -> String {
        self.names.show(i, &self.limits[i])
    }

    /// The model scope (its pattern) of the limit that decided a denial,
    /// or that an alert-mode admission is over, when it is a scope's.
    pub fn denied_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The reason, given how queueing went (`Queued::No` without a queue).
    pub fn reason(&self, queued: Queued) -> String {
        explain::reason(
            &self.outcome,
            queued,
            |i| self.shown(i),
            self.denied_scope(),
            &self.attempts[0].model,
            self.downgrade_to().unwrap_or(""),
        )
    }
}

/// The limits engine, its store and its config, embedded.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use limits::{CheckRequest, Decision, Limiter, RecordRequest, Subject, Dimension};
///
/// let limiter = Limiter::from_yaml_str(
///     "limits:\n  budgets:\n    by_api_key:\n      sk-1: { daily: 1.00 }\n",
/// )?;
/// let config = limiter.config();
/// let key = [Subject::new(Dimension::ApiKey, "sk-1")];
/// let check = limiter
///     .check(&config, CheckRequest {
///         subjects: &key,
///         model: "gpt-4",
///         estimated_tokens: 1000,
///         estimated_input_tokens: None,
///         estimated_output_tokens: None,
///         estimated_cost: Some(limits::usd(0.40)?),
///         reserve: true,
///         reservation_ttl: None,
///     })
///     .await?;
/// let Decision::Allow { reservation_id, .. } = &check.decision else {
///     panic!("$0.40 of a $1.00 budget fits");
/// };
/// // ... the model call runs, then its actual usage is recorded:
/// limiter
///     .record(&config, RecordRequest {
///         subjects: &key,
///         reservation_id: reservation_id.as_deref(),
///         request_tokens: 800,
///         response_tokens: 150,
///         total_tokens: 0,
///         cost: Some(limits::usd(0.35)?),
///         model: "gpt-4",
///         progress: false,
///         sequence: 0,
///     })
///     .await?;
/// let usage = limiter.usage(&config, &key[0]).await?;
/// assert_eq!(usage.statuses[0].used, 350_000_000); // nano-dollars
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Limiter<S = AnyStore> {
    pub(crate) store: S,
    config: ArcSwap<Config>,
    /// The admin API's runtime entries and increases, as loaded from the
    /// store.
    pub(crate) runtime: Runtime,
    /// Whether `runtime` has been loaded from the store once.
    loaded: AtomicBool,
    /// Admin changes one at a time in this process (the store's compare
    /// and swap orders them across replicas).
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Where alert events go.
    alerts: tokio::sync::broadcast::Sender<Arc<AlertEvent>>,
}

impl Limiter<AnyStore> {
    /// Opens the store `config` names (a sled store is loaded from disk
    /// here) and serves under `config`.
    pub fn open(config: Config) -> Result<Limiter, crate::OpenError> {
        let store = crate::open::open_store(&config)?;
        Ok(Limiter::with_store(store, config))
    }

    /// Loads the config from a YAML file and the `MERCATOR_LIMITS_*`
    /// environment, as limitsd does, then opens it.
    pub fn from_yaml(path: impl AsRef<std::path::Path>) -> Result<Limiter, crate::OpenError> {
        let config = crate::config::load_from_env(Some(path.as_ref()), &Default::default())?;
        Limiter::open(config)
    }

    /// Parses a YAML config (no environment) and opens it.
    pub fn from_yaml_str(yaml: &str) -> Result<Limiter, crate::OpenError> {
        Limiter::open(crate::config::parse_str(yaml)?)
    }
}

impl<S: Store> Limiter<S> {
    /// A limiter on a store made by the caller.
    pub fn with_store(store: S, config: Config) -> Limiter<S> {
        Limiter {
            store,
            config: ArcSwap::from_pointee(config),
            runtime: Runtime::new(),
            loaded: AtomicBool::new(false),
            admin: tokio::sync::Mutex::new(()),
            alerts: tokio::sync::broadcast::channel(crate::alerts::CHANNEL_CAPACITY).0,
        }
    }

    /// Every alert event from now on: each budget window's crossing of
    /// each of its alert thresholds, once, from the operation that made it
    /// (see [`crate::alerts`]). A receiver that falls more than
    /// [`crate::alerts::CHANNEL_CAPACITY`] events behind misses the oldest
    /// and is told how many (`RecvError::Lagged`).
    pub fn alerts(&self) -> tokio::sync::broadcast::Receiver<Arc<AlertEvent>> {
        self.alerts.subscribe()
    }

    /// Makes the events of an operation's crossings.
    fn publish(
        &self,
        config: &Config,
        secret: &Secret,
        crossings: &[limits_core::Crossing],
        scoped: &Scoped<'_, '_>,
        now: Nanos,
    ) -> Vec<AlertEvent> {
        if crossings.is_empty() {
            return Vec::new();
        }
        crate::alerts::events(
            secret,
            crossings,
            |i| {
                let (parent, scope) = scoped.parent(i);
                (&scoped.subjects[parent], scoped.limits[parent], scope)
            },
            |d| match d {
                Dimension::ApiKey => false,
                Dimension::User => !config.metrics.show_user_ids,
                Dimension::Team | Dimension::Org => !config.metrics.show_team_ids,
            },
            now,
        )
    }

    /// Keeps an operation's events in the outbox of every webhook (the
    /// durable store keeps them across restarts until they are delivered),
    /// then sends them to the subscribers. A failed outbox write is
    /// logged: the events still go out from memory.
    async fn send_alerts(&self, config: &Config, events: &[AlertEvent]) {
        if events.is_empty() {
            return;
        }
        let entries: Vec<(String, Option<Vec<u8>>)> = config
            .alerts
            .webhooks
            .iter()
            .flat_map(|w| {
                events
                    .iter()
                    .map(|e| (e.outbox_key(&w.url), Some(e.encode())))
            })
            .collect();
        if let Err(e) = self.store.outbox_write(&entries).await {
            tracing::warn!(error = %e, "alert events could not be kept in the outbox; delivering from memory");
        }
        for e in events {
            // No subscriber is not an error: the events are also answered.
            let _ = self.alerts.send(Arc::new(e.clone()));
        }
    }

    /// The events waiting in the outbox of the webhook at `url`, oldest
    /// first, with their keys. An entry that cannot be read is dropped
    /// (and logged), never delivered half-read.
    pub async fn outbox_pending(&self, url: &str) -> Result<Vec<(String, AlertEvent)>, Error> {
        let prefix = format!("{}/", crate::alerts::webhook_prefix(url));
        let mut out = Vec::new();
        for (key, bytes) in self.store.outbox().await? {
            if !key.starts_with(&prefix) {
                continue;
            }
            match AlertEvent::decode(&bytes) {
                Ok(event) => out.push((key, event)),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "an unreadable outbox entry is dropped");
                    self.store.outbox_write(&[(key, None)]).await?;
                }
            }
        }
        Ok(out)
    }

    /// Forgets an outbox entry: its event was delivered or given up.
    pub async fn outbox_done(&self, key: &str) -> Result<(), Error> {
        Ok(self.store.outbox_write(&[(key.to_owned(), None)]).await?)
    }

    /// Loads the admin API's records from the store if the store's copy
    /// changed since the last load (or never was loaded): another replica's
    /// change on a shared store, or this store's records after a restart.
    /// Every call loads them once before it decides; a server polls this
    /// to follow other replicas. Returns whether anything was reloaded.
    pub async fn sync(&self) -> Result<bool, Error> {
        // One at a time with admin changes, so that a load cannot put back
        // what a change has just replaced.
        let _one = self.admin.lock().await;
        self.sync_locked().await
    }

    /// [`sync`](Self::sync), with the admin lock already held.
    pub(crate) async fn sync_locked(&self) -> Result<bool, Error> {
        let current = self.store.records_version().await?;
        if self.runtime.version() == Some(current) {
            return Ok(false);
        }
        let records = self.store.records().await?;
        self.runtime
            .replace_all(records)
            .map_err(|e| Error::Store(limits_store::StoreError::Internal(e)))?;
        self.loaded.store(true, Ordering::Release);
        Ok(true)
    }

    /// Makes sure the admin records have been loaded from the store once
    /// (every call does this itself).
    pub async fn ready(&self) -> Result<(), Error> {
        if !self.loaded.load(Ordering::Acquire) {
            let _one = self.admin.lock().await;
            if !self.loaded.load(Ordering::Acquire) {
                self.sync_locked().await?;
            }
        }
        Ok(())
    }

    /// The limits of each subject under `config` at `now`, runtime entries
    /// and increases included, and where each comes from.
    /// The limits one subject has under `config` at `now`: its runtime
    /// entry, config entry or the dimension's default, with live increases
    /// (call [`ready`](Self::ready) first).
    pub fn limits_for<'c>(
        &self,
        config: &'c Config,
        secret: &Secret,
        subject: &Subject,
        now: Nanos,
    ) -> Limits<'c> {
        if self.runtime.is_empty() {
            return Cow::Borrowed(config.table.resolve(subject.dimension, &subject.id));
        }
        runtime::effective(
            config,
            &self.runtime,
            subject.dimension,
            Some(&subject.id),
            || stored_id(secret, subject),
            now,
        )
        .0
    }

    /// [`limits_for`](Self::limits_for) of each subject, in order.
    fn limits_of<'c>(
        &self,
        config: &'c Config,
        secret: &Secret,
        subjects: &[Subject],
        now: Nanos,
    ) -> Vec<Limits<'c>> {
        subjects
            .iter()
            .map(|s| self.limits_for(config, secret, s, now))
            .collect()
    }

    /// The config now: pass it to the calls of one request, so that a
    /// reload during the request cannot mix two versions.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Runs `f` on the config now, without taking a reference to keep (for
    /// a quick look on a hot path; a call that awaits takes
    /// [`config`](Self::config)).
    pub fn with_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        f(&self.config.load())
    }

    /// Replaces the limits and the policy; counters, reservations and
    /// leases carry over. (Storage and server settings are not changed.)
    pub fn reload(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The store the limiter decides on.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The server secret, as the store has settled it.
    pub async fn secret(&self) -> Result<Arc<Secret>, Error> {
        Ok(self.store.secret().await?)
    }

    /// Decides a request under `config`, counting it if allowed (and
    /// holding its estimate, with `reserve`). A denial is an `Ok`.
    pub async fn check<'a>(
        &self,
        config: &'a Config,
        req: CheckRequest<'a>,
    ) -> Result<Check<'a>, Error> {
        validate::subjects(req.subjects)?;
        validate::model("model", req.model)?;
        let reserve_ttl = if req.reserve {
            Some(validate::ttl(
                "reservation_ttl",
                req.reservation_ttl,
                config.reservation_ttl,
            )?)
        } else {
            None
        };
        let (tokens, input, output) = validate::token_estimate(
            req.estimated_tokens,
            req.estimated_input_tokens,
            req.estimated_output_tokens,
        )?;
        self.ready().await?;
        let mut attempts = config
            .policy
            .attempts(req.model, tokens, req.estimated_cost);
        for a in &mut attempts {
            (a.input, a.output) = (input, output);
        }
        let secret = self.store.secret().await?;
        let now = now();
        let limits = self.limits_of(config, &secret, req.subjects, now);
        let bind = secret.subjects_tag(req.subjects);
        let scoped = Scoped::check(req.subjects, &limits, &mut attempts);
        let op = CheckOp {
            attempts: &attempts,
            reserve_ttl,
            tag: bind,
            policy: &config.policy,
        };
        let mut outcome = self
            .store
            .check(Call {
                subjects: &scoped.subjects,
                limits: scoped.limits(),
                op,
                now,
            })
            .await?;
        let scope = scoped.map_check(&mut outcome);
        let alerts = self.publish(config, &secret, &outcome.crossings, &scoped, now);
        drop(scoped);
        self.send_alerts(config, &alerts).await;
        let headers = header_values(&outcome.statuses, outcome.retry_after(), now);
        let decision = match outcome.verdict {
            limits_core::Verdict::Allowed { reservation, .. } => Decision::Allow {
                model: attempts[outcome.attempt].model.clone(),
                reservation_id: reservation.map(|id| ids::reservation_id(&secret, id, bind)),
            },
            limits_core::Verdict::Denied {
                denial,
                retry_after,
            } => Decision::Deny {
                denial,
                retry_after: retry_after.map(Nanos::as_duration),
            },
        };
        Ok(Check {
            decision,
            estimated_cost: attempts[outcome.attempt].cost,
            headers,
            limits,
            names: Names::new(config, req.subjects, secret),
            attempts,
            outcome,
            scope,
            alerts,
        })
    }

    /// Charges what a request used; with a reservation, the actual replaces
    /// the held estimate, and recording it again charges nothing more.
    pub async fn record<'a>(
        &self,
        config: &'a Config,
        req: RecordRequest<'a>,
    ) -> Result<Recorded<'a>, Error> {
        validate::subjects(req.subjects)?;
        validate::model("model", req.model)?;
        let secret = self.store.secret().await?;
        let reservation = req
            .reservation_id
            .filter(|id| !id.is_empty())
            .map(|id| ids::parse_reservation_id(&secret, id, req.subjects))
            .transpose()?;
        if reservation.is_none() {
            if req.progress {
                return Err(Error::invalid(
                    "reservation_id",
                    "is required for a progress record: progress is charged against \
                     the reservation of the request's CheckLimits",
                ));
            }
            if req.sequence != 0 {
                return Err(Error::invalid(
                    "sequence",
                    "numbers the records of a reservation: it needs a reservation_id",
                ));
            }
        }
        let tokens =
            validate::total_tokens(req.request_tokens, req.response_tokens, req.total_tokens)?;
        let cost = match req.cost {
            Some(c) => c,
            None => config
                .policy
                .pricing
                .cost(req.model, req.request_tokens, req.response_tokens)
                .unwrap_or(NanoUsd::ZERO),
        };
        self.ready().await?;
        let now = now();
        let limits = self.limits_of(config, &secret, req.subjects, now);
        let scoped = Scoped::record(req.subjects, &limits, req.model);
        let progress = req.progress.then(|| limits_core::Progress {
            hold_until: now.saturating_add(Nanos::from(config.reservation_ttl)),
            tag: secret.subjects_tag(req.subjects),
        });
        let op = RecordOp {
            reservation,
            cost,
            tokens,
            input: req.request_tokens,
            output: req.response_tokens,
            progress,
            sequence: req.sequence,
            policy: &config.policy,
        };
        let mut outcome = self
            .store
            .record(Call {
                subjects: &scoped.subjects,
                limits: scoped.limits(),
                op,
                now,
            })
            .await
            .map_err(not_found)?;
        scoped.map_statuses(&mut outcome.statuses);
        let alerts = self.publish(config, &secret, &outcome.crossings, &scoped, now);
        drop(scoped);
        self.send_alerts(config, &alerts).await;
        let reason = match outcome.statuses.iter().find(|s| s.exceeded) {
            Some(s) if outcome.stop => {
                let names = Names::new(config, req.subjects, secret);
                let mut r = format!(
                    "{} would be overshot for {}",
                    s.kind.describe(),
                    names.show(s.subject, &limits[s.subject])
                );
                if let Some(pattern) = &s.scope {
                    r.push_str(&format!(" in model scope '{pattern}'"));
                }
                r.push_str(": stop the stream");
                r
            }
            // Told before, and told again.
            None if outcome.stop => "an earlier progress record of this reservation went past \
                                     a limit with no room left: stop the stream"
                .to_owned(),
            _ => String::new(),
        };
        Ok(Recorded {
            outcome,
            cost,
            tokens,
            limits,
            alerts,
            reason,
        })
    }

    /// Takes a concurrency slot on every subject with `max_concurrent`, for
    /// `ttl` (`rate_limits.lease_ttl` by default) unless released sooner.
    pub async fn acquire<'a>(
        &self,
        config: &'a Config,
        subjects: &'a [Subject],
        ttl: Option<Duration>,
    ) -> Result<Acquired<'a>, Error> {
        validate::subjects(subjects)?;
        let ttl = validate::ttl("ttl", ttl, config.lease_ttl)?;
        self.ready().await?;
        let secret = self.store.secret().await?;
        let now = now();
        let limits = self.limits_of(config, &secret, subjects, now);
        let outcome = self
            .store
            .acquire(Call {
                subjects,
                limits: Scoped::plain(subjects, &limits).limits(),
                op: ttl,
                now,
            })
            .await?;
        let reason = match outcome.denial() {
            Some(d) => {
                let names = Names::new(config, subjects, secret.clone());
                let max = limits[d.subject]
                    .get(limits_core::LimitKind::MaxConcurrent)
                    .unwrap_or(0);
                format!(
                    "concurrency limit of {max} reached for {}",
                    names.show(d.subject, &limits[d.subject])
                )
            }
            None => String::new(),
        };
        Ok(Acquired {
            lease_id: outcome.lease().map(|l| ids::lease_id(&secret, l.id)),
            outcome,
            reason,
            limits,
        })
    }

    /// Gives a slot back: `true` if the lease was live, `false` if it was
    /// already released or expired (releasing twice is harmless).
    pub async fn release(&self, lease_id: &str) -> Result<bool, Error> {
        if lease_id.is_empty() {
            return Err(Error::invalid("lease_id", "is required"));
        }
        let secret = self.store.secret().await?;
        let id = ids::parse_lease_id(&secret, lease_id)?;
        self.store.release(id, now()).await.map_err(not_found)
    }

    /// One subject's windows, open reservations and live leases.
    pub async fn usage(&self, config: &Config, subject: &Subject) -> Result<Usage, Error> {
        validate::subject_id("subject", &subject.id)?;
        self.ready().await?;
        let secret = self.store.secret().await?;
        let now = now();
        let stored = stored_id(&secret, subject);
        let (limits, source) = runtime::effective(
            config,
            &self.runtime,
            subject.dimension,
            Some(&subject.id),
            || Cow::Borrowed(&*stored),
            now,
        );
        let raised = match self.runtime.get(subject.dimension, &stored) {
            Some(held) => raised_by(&held.record, &limits, now),
            None => Vec::new(),
        };
        let view = self.store.usage(subject, &limits, now).await?;
        let mut statuses = view.statuses;
        // Each model scope's windows after the subject's own (the scopes
        // hold a reservation's estimate too: its id is listed once, above).
        for scope in limits.scopes().into_iter().flat_map(|s| s.iter()) {
            let scoped = self
                .store
                .usage(&scope.subject(subject), scope.limits(), now)
                .await?;
            statuses.extend(scoped.statuses.into_iter().map(|s| LimitStatus {
                scope: Some(Arc::clone(scope.name())),
                ..s
            }));
        }
        Ok(Usage {
            source,
            raised,
            statuses,
            reservations: view
                .holds
                .into_iter()
                .map(|h| (ids::reservation_id(&secret, h.id, h.tag), h))
                .collect(),
            leases: view
                .leases
                .into_iter()
                .map(|l| (ids::lease_id(&secret, l.id), l))
                .collect(),
        })
    }

    /// Charges counters by count (the rate limit service's path): requests
    /// all or nothing, tokens always. The subjects may include the rate
    /// limit service's internal counters, and up to
    /// [`limits_store::MAX_SUBJECTS`] of them.
    pub async fn hit(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        charges: &[Charge],
    ) -> Result<HitOutcome, Error> {
        Ok(self
            .store
            .hit(Call {
                subjects,
                limits,
                op: charges,
                now: now(),
            })
            .await?)
    }

    /// Expires what has expired and drops idle subjects (every operation
    /// also expires lazily; this reclaims memory and refreshes counts).
    pub async fn sweep(&self) -> Result<SweepStats, Error> {
        let config = self.config();
        Ok(self.store.sweep(&config.table, now()).await?)
    }

    /// Makes everything acknowledged durable.
    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// Flushes and lets go of the store.
    pub async fn close(self) -> Result<(), Error> {
        self.flush().await
    }

    /// Whether the store can take writes now.
    pub fn health(&self) -> Health {
        self.store.health()
    }
}

/// A subject's id as the store keeps it: an API key's keyed hash.
pub(crate) fn stored_id<'a>(secret: &Secret, subject: &'a Subject) -> Cow<'a, str> {
    match subject.dimension {
        Dimension::ApiKey => Cow::Owned(secret.stored_key(&subject.id)),
        Dimension::User | Dimension::Team | Dimension::Org => Cow::Borrowed(&subject.id),
    }
}

/// How much of each of `limits` is a live increase of `record`.
pub(crate) fn raised_by(
    record: &runtime::Record,
    limits: &SubjectLimits,
    now: Nanos,
) -> Vec<(limits_core::LimitKind, u64)> {
    let mut out: Vec<(limits_core::LimitKind, u64)> = Vec::new();
    for inc in record.live_increases(now) {
        if limits.get(inc.kind).is_none() {
            continue;
        }
        match out.iter_mut().find(|(k, _)| *k == inc.kind) {
            Some((_, n)) => *n = n.saturating_add(inc.amount),
            None => out.push((inc.kind, inc.amount)),
        }
    }
    out
}

/// The store's "never issued" errors, as the API names them.
fn not_found(e: limits_store::StoreError) -> Error {
    match e {
        limits_store::StoreError::UnknownReservation => Error::NotFound(
            "reservation_id: unknown reservation (never issued by this service)".into(),
        ),
        limits_store::StoreError::UnknownLease => {
            Error::NotFound("lease_id: unknown lease (never issued by this service)".into())
        }
        e => Error::Store(e),
    }
}

/// A USD amount as nano-dollars, validated (finite, not negative, at most
/// 1e9) and rounded up.
pub fn usd(amount: f64) -> Result<NanoUsd, Error> {
    NanoUsd::try_from_usd(amount).map_err(|e| Error::invalid("usd", e.to_string()))
}
