//! Assembles limitsd: opens the store, binds the gRPC and metrics listeners,
//! runs the background sweep and the config watcher, and serves until
//! shutdown: health goes NOT_SERVING, queued calls are answered, in-flight
//! calls drain within the grace period, and the store is flushed last.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use limits_store::{AnyStore, Health};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tonic::transport::Server;

use limits::{Limiter, MAX_GROUP_WAIT};

use crate::api::auth::AuthLayer;
use crate::api::queue::Queues;
use crate::api::{AdminSvc, LimitsSvc, RlsSvc, Shared};
use crate::config::{Config, Overrides, ServerSettings, Storage};
use crate::listen::Tls;
use crate::ops::metrics::{self as m, Labels};
use crate::pb::admin::limits_admin_service_server::LimitsAdminServiceServer;
use crate::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::pb::limits_service_server::LimitsServiceServer;

/// Opens the configured store (a sled store is loaded from disk here,
/// dropping what expired while the service was down), saying what it
/// opened.
pub fn open_store(config: &Config) -> anyhow::Result<AnyStore> {
    if let Storage::Sled {
        snapshot_interval, ..
    } = &config.storage
        && *snapshot_interval > MAX_GROUP_WAIT
    {
        tracing::warn!(
            configured = ?snapshot_interval,
            used = ?MAX_GROUP_WAIT,
            "storage snapshot_interval is the longest a write waits for its group flush; capped"
        );
    }
    if config.secret.is_none() && !matches!(config.storage, Storage::Memory { .. }) {
        tracing::warn!(
            "no limits.security.secret configured: the store keeps a secret of its own beside \
             its data; configure one (the same on every replica) so that reading the store is \
             not enough to test guesses of API keys"
        );
    }
    let store = limits::open_store(config)?;
    match (&store, &config.storage) {
        (AnyStore::Sled(s), Storage::Sled { path, .. }) => {
            tracing::info!(path = %path.display(), subjects = s.len(), "opened the sled store");
        }
        (AnyStore::Redis(_), Storage::Redis(r)) => tracing::info!(
            url = %crate::config::redact_url(&r.url),
            cluster = r.cluster,
            key_prefix = %r.key_prefix,
            fail_open = r.fail_open,
            "using the Redis store"
        ),
        _ => {}
    }
    Ok(store)
}

/// Checks once that Redis answers, without holding up start-up: limitsd
/// serves (UNAVAILABLE, or fail-open) while Redis is down and recovers by
/// itself when it comes back.
async fn probe_store(store: &AnyStore) {
    if let AnyStore::Redis(r) = store {
        match r.ping().await {
            Ok(()) => tracing::info!("Redis answers; the scripts are loaded"),
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS, "operation" => "connect").increment(1);
                tracing::warn!(error = %e, "Redis does not answer yet; calls fail until it does");
            }
        }
    }
}

/// How often expired reservations, leases and idle subjects are swept.
fn sweep_interval(config: &Config) -> Duration {
    match &config.storage {
        Storage::Memory {
            cleanup_interval, ..
        } => *cleanup_interval,
        Storage::Sled { .. } | Storage::Redis(_) => Duration::from_secs(60),
    }
}

/// The most header bytes one call may send (gateways send a few hundred).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// After the last in-flight call returns at shutdown, how long the
/// connections get to write its answer before the process stops.
const FLUSH_ANSWERS: Duration = Duration::from_millis(200);

/// Where the config came from, so it can be reloaded.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
    /// How often to poll the file; zero leaves only SIGHUP.
    pub poll: Duration,
}

/// A bound, not yet serving, limitsd.
#[derive(Debug)]
pub struct Bound {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The admin API's own listener, when `server.admin_addr` is set.
    pub admin_addr: Option<SocketAddr>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared<AnyStore>>,
    source: Source,
    /// The config watcher's start, taken before anything is served.
    watch: Option<crate::reload::Watch>,
}

/// Says at start-up how the admin API and the data plane are reachable,
/// and what is open.
fn announce_security(config: &Config) {
    let security = &config.security;
    let tls = config.server.tls.is_some();
    if !security.any_credential() {
        tracing::warn!(
            "the admin API is off: no credential is configured (set \
             limits.security.admin_token_sha256, tokens, tokens_file or clients to manage \
             limits at runtime)"
        );
    } else {
        tracing::info!(
            tokens = security.tokens.len(),
            client_certificates = security.clients.len(),
            admin_addr = ?config.server.admin_addr,
            tls,
            "the admin API is on"
        );
        if !tls {
            tracing::warn!(
                "the admin API takes bearer tokens over plaintext gRPC: configure \
                 limits.server.tls, or keep the listener on a trusted network"
            );
        }
    }
    if security.data_plane_auth && !security.any_credential() {
        tracing::warn!(
            "limits.security.data_plane_auth is on but no credential is configured: every \
             data-plane call is refused"
        );
    }
}

/// Opens the store and binds every port (0 picks a free one). Fails before
/// anything is served if any of them cannot be had, or the TLS files do
/// not load.
pub async fn bind(config: Config, source: Source) -> anyhow::Result<Bound> {
    let tls = match &config.server.tls {
        Some(settings) => Some(Arc::new(
            Tls::load(settings).context("loading limits.server.tls")?,
        )),
        None => None,
    };
    let store = open_store(&config)?;
    probe_store(&store).await;
    let listener = TcpListener::bind(config.server.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.server.grpc_addr))?;
    let metrics_listener = TcpListener::bind(config.server.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", config.server.metrics_addr))?;
    let admin_listener = match config.server.admin_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin address {addr}"))?,
        ),
        None => None,
    };
    let grpc_addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    announce_security(&config);
    let labels = Labels::new(&config.metrics);
    let shared = Arc::new(Shared {
        limiter: Limiter::with_store(store, config),
        queues: Queues::new(),
        labels,
        in_flight: Default::default(),
    });
    // The embedded stores know their secret now; Redis's is settled on
    // first contact.
    if !matches!(shared.limiter.store(), AnyStore::Redis(_)) {
        shared
            .secret()
            .await
            .map_err(|s| anyhow::anyhow!("settling the server secret: {}", s.message()))?;
    }
    // Runtime entries are enforced from the first call on.
    shared
        .limiter
        .sync()
        .await
        .map_err(|e| anyhow::anyhow!("loading the runtime limits from the store: {e}"))
        .or_else(|e| match shared.limiter.store() {
            // Redis may come later: the first call loads them.
            AnyStore::Redis(_) => {
                tracing::warn!(error = %e, "runtime limits not loaded yet");
                Ok(false)
            }
            _ => Err(e),
        })?;
    let watch = source
        .path
        .as_deref()
        .map(|path| crate::reload::Watch::start(&shared, path));
    Ok(Bound {
        grpc_addr,
        metrics_addr,
        admin_addr,
        listener,
        metrics_listener,
        admin_listener,
        tls,
        shared,
        source,
        watch,
    })
}

impl Bound {
    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<()> {
        let Bound {
            listener,
            metrics_listener,
            admin_listener,
            tls,
            shared,
            source,
            watch,
            ..
        } = self;
        let grace = shared.limiter.config().server.shutdown_grace;

        let health = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );

        let mut background = Vec::new();
        background.push(tokio::spawn(sweep_loop(shared.clone())));
        background.push(tokio::spawn(sync_loop(shared.clone())));
        // Alert webhooks, as configured at start-up.
        let alerts = shared.limiter.config().alerts.clone();
        background.extend(crate::ops::webhooks::spawn(&alerts, shared.clone()));
        if let Some(handle) = metrics {
            background.push(tokio::spawn(m::serve(metrics_listener, handle)));
        }
        if let (Some(path), Some(watch)) = (source.path.clone(), watch) {
            background.push(tokio::spawn(crate::reload::watch(
                shared.clone(),
                path,
                source.overrides,
                source.poll,
                watch,
            )));
        }
        if let Some(tls) = &tls {
            background.push(tokio::spawn(tls_reload_loop(tls.clone(), source.poll)));
        }

        // The store is open and the config loaded: ready.
        health
            .set_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
            .await;
        health
            .set_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
            .await;
        health
            .set_serving::<LimitsAdminServiceServer<AdminSvc<AnyStore>>>()
            .await;
        background.push(tokio::spawn(health_loop(shared.clone(), health.clone())));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signal_shared = shared.clone();
        let signal_health = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Readiness fails first, queued calls are answered, then the
            // listeners stop accepting and in-flight calls drain.
            signal_health
                .set_not_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
                .await;
            signal_health
                .set_not_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
                .await;
            signal_health
                .set_not_serving::<LimitsAdminServiceServer<AdminSvc<AnyStore>>>()
                .await;
            signal_health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            signal_shared.queues.close();
            let _ = stop_tx.send(true);
        });
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let settings = shared.limiter.config().server.clone();
        let parts = Parts::new(&shared, &settings, health_service)?;
        let own_admin = admin_listener.is_some();
        let incoming = crate::listen::incoming(listener, settings.max_connections, tls.clone());
        let serve = parts
            .server(&settings)
            .add_service(
                LimitsServiceServer::new(LimitsSvc::new(shared.clone()))
                    .max_decoding_message_size(parts.decode_limit),
            )
            // Envoy's rate limit service API, on the same port and store.
            .add_service(
                RateLimitServiceServer::new(RlsSvc::new(shared.clone()))
                    .max_decoding_message_size(parts.decode_limit),
            )
            // The admin API here too, unless it has a listener of its own.
            .add_optional_service((!own_admin).then(|| parts.admin()))
            .serve_with_incoming_shutdown(incoming, stopped());
        if let Some(admin_listener) = admin_listener {
            let incoming =
                crate::listen::incoming(admin_listener, settings.max_connections, tls.clone());
            let admin = parts
                .server(&settings)
                .add_service(parts.admin())
                .serve_with_incoming_shutdown(incoming, stopped());
            background.push(tokio::spawn(async move {
                if let Err(e) = admin.await {
                    tracing::error!(error = %e, "the admin listener failed");
                }
            }));
        }
        tokio::pin!(serve);

        // Serve until the shutdown begins, then give in-flight calls the
        // grace period.
        let result = tokio::select! {
            r = &mut serve => r.context("serving gRPC"),
            () = shared.queues.closed() => {
                // Done when the server has drained every connection, or when
                // no call is in progress (idle client connections must not
                // hold the process), or when the grace period is over.
                let drained = async {
                    tokio::select! {
                        r = &mut serve => r.context("serving gRPC"),
                        () = shared.in_flight.idle() => {
                            // The last answers are handed to the connections
                            // but may not be written yet: give them a moment.
                            match tokio::time::timeout(FLUSH_ANSWERS, &mut serve).await {
                                Ok(r) => r.context("serving gRPC"),
                                Err(_) => Ok(()),
                            }
                        }
                    }
                };
                match tokio::time::timeout(grace, drained).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(
                            grace = ?grace,
                            in_flight = shared.in_flight.count(),
                            "calls still in flight at the end of the shutdown grace period"
                        );
                        Ok(())
                    }
                }
            }
        };
        for task in background {
            task.abort();
        }
        // After a failed write this also tries to recover (reopen, write
        // memory out, flush): exit 0 once it succeeds, non-zero if it cannot.
        if let Err(e) = shared.limiter.flush().await {
            tracing::error!(
                error = %e,
                "the final flush failed: changes since the last successful flush are lost"
            );
            return Err(anyhow::anyhow!("flushing the store at shutdown: {e}"));
        }
        tracing::info!("limitsd stopped");
        result
    }
}

/// What both gRPC servers (the main listener and the admin one) are made
/// of: the same bounds, guard, credential check, health and reflection.
struct Parts {
    shared: Arc<Shared<AnyStore>>,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    guard: crate::api::guard::GuardLayer,
    decode_limit: usize,
    stream_window: u32,
}

impl Parts {
    fn new(
        shared: &Arc<Shared<AnyStore>>,
        settings: &ServerSettings,
        health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    ) -> anyhow::Result<Parts> {
        // A stream's window holds one largest message; a connection's a few
        // streams' worth: unread data a peer can park stays small.
        let stream_window = u32::try_from(settings.max_request_bytes + 5)
            .unwrap_or(u32::MAX)
            .max(65_535);
        let guard = crate::api::guard::GuardLayer::new(crate::api::guard::Limits {
            max_request_bytes: settings.max_request_bytes,
            memory_budget: settings.memory_budget,
            max_in_flight: settings.max_in_flight,
        });
        Ok(Parts {
            shared: shared.clone(),
            health,
            guard,
            // The guard refuses larger messages first, with RESOURCE_EXHAUSTED.
            decode_limit: settings.max_request_bytes.saturating_mul(2),
            stream_window,
        })
    }

    fn reflection(
        &self,
    ) -> anyhow::Result<
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    > {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")
    }

    fn admin(&self) -> LimitsAdminServiceServer<AdminSvc<AnyStore>> {
        LimitsAdminServiceServer::new(AdminSvc::new(self.shared.clone()))
            .max_decoding_message_size(self.decode_limit)
    }

    /// A server with the bounds, the guard and the credential check, and
    /// health and reflection added.
    fn server(
        &self,
        settings: &ServerSettings,
    ) -> tonic::transport::server::Router<
        tower::layer::util::Stack<
            AuthLayer<AnyStore>,
            tower::layer::util::Stack<crate::api::guard::GuardLayer, tower::layer::util::Identity>,
        >,
    > {
        Server::builder()
            .max_concurrent_streams(settings.max_concurrent_streams)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.stream_window.saturating_mul(8).max(1 << 20))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(64))
            .layer(self.guard.clone())
            .layer(AuthLayer::new(self.shared.clone()))
            .add_service(self.health.clone())
            .add_service(self.reflection().expect("the descriptor set is built in"))
    }
}

/// Follows other replicas' admin changes on a shared store (at
/// `admin.sync_interval`), and picks up this store's after a restart: the
/// bound on how long a runtime entry takes to be enforced everywhere.
async fn sync_loop(shared: Arc<Shared<AnyStore>>) {
    let every = shared.limiter.config().admin.sync_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match shared.limiter.sync().await {
            Ok(reloaded) => {
                if reloaded {
                    tracing::debug!("runtime limits reloaded from the store");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the runtime limits from the store");
                }
                failing = true;
                metrics::counter!(m::STORE_ERRORS, "operation" => "sync").increment(1);
            }
        }
    }
}

/// Reads the TLS files again when they change.
async fn tls_reload_loop(tls: Arc<Tls>, poll: Duration) {
    let every = if poll.is_zero() {
        Duration::from_secs(1)
    } else {
        poll
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tls = tls.clone();
        // Reading files is blocking I/O: off the workers.
        let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
    }
}

/// How often the store's health is looked at.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Follows whether the store can write: while it cannot, both services are
/// `NOT_SERVING` (so a load balancer or probe moves traffic away) and the
/// `mercator_limits_store_writable` gauge is 0; the store recovers by
/// itself, and then they serve again.
async fn health_loop(shared: Arc<Shared<AnyStore>>, health: tonic_health::server::HealthReporter) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writable = true;
    metrics::gauge!(m::STORE_WRITABLE).set(1.0);
    loop {
        every.tick().await;
        if shared.queues.is_closed() {
            // Shutting down: health is NOT_SERVING for good.
            return;
        }
        let now_writable = match shared.limiter.health() {
            Health::Writable => true,
            Health::Unwritable { reason, detail } => {
                if writable {
                    tracing::error!(
                        reason,
                        error = %detail,
                        "the store cannot write: refusing calls (NOT_SERVING) until it recovers"
                    );
                }
                false
            }
        };
        if now_writable == writable {
            continue;
        }
        writable = now_writable;
        metrics::gauge!(m::STORE_WRITABLE).set(if writable { 1.0 } else { 0.0 });
        if writable {
            tracing::warn!("the store writes again: serving");
            health
                .set_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
                .await;
            health
                .set_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
                .await;
        } else {
            health
                .set_not_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
                .await;
            health
                .set_not_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
                .await;
        }
    }
}

/// Sweeps expired holds, leases and idle subjects. Expiry is also applied
/// by every operation, so this only reclaims memory, refreshes gauges and
/// wakes queued requests whose capacity came back by expiry.
async fn sweep_loop(shared: Arc<Shared<AnyStore>>) {
    let mut every = tokio::time::interval(sweep_interval(&shared.limiter.config()));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match shared.limiter.sweep().await {
            Ok(stats) => {
                metrics::gauge!(m::RESERVATIONS_OPEN).set(stats.open_reservations as f64);
                metrics::gauge!(m::SUBJECTS).set(stats.subjects as f64);
                tracing::debug!(
                    subjects = stats.subjects,
                    dropped = stats.dropped,
                    open_reservations = stats.open_reservations,
                    live_leases = stats.live_leases,
                    "swept expired state"
                );
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS, "operation" => "sweep").increment(1);
                tracing::warn!(error = %e, "sweep failed");
            }
        }
        // Runtime entries and increases past their expiry already no
        // longer apply; this drops them from the store.
        match shared.limiter.prune_records().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "dropped expired runtime entries and increases"),
            Err(e) => tracing::warn!(error = %e, "dropping expired runtime entries failed"),
        }
        shared.queues.wake_all();
    }
}
