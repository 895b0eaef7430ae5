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
use tonic::transport::server::TcpIncoming;

use limits::{Limiter, MAX_GROUP_WAIT};

use crate::api::queue::Queues;
use crate::api::{LimitsSvc, RlsSvc, Shared};
use crate::config::{Config, Overrides, Storage};
use crate::ops::metrics::{self as m, Labels};
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
            Ok(()) => tracing::info!("Redis answers; the decision script is loaded"),
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
    listener: TcpListener,
    metrics_listener: TcpListener,
    shared: Arc<Shared<AnyStore>>,
    source: Source,
}

/// Opens the store and binds both ports (0 picks a free one). Fails before
/// anything is served if any of them cannot be had.
pub async fn bind(config: Config, source: Source) -> anyhow::Result<Bound> {
    let store = open_store(&config)?;
    probe_store(&store).await;
    let listener = TcpListener::bind(config.server.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.server.grpc_addr))?;
    let metrics_listener = TcpListener::bind(config.server.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", config.server.metrics_addr))?;
    let grpc_addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
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
    Ok(Bound {
        grpc_addr,
        metrics_addr,
        listener,
        metrics_listener,
        shared,
        source,
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
            shared,
            source,
            ..
        } = self;
        let grace = shared.limiter.config().server.shutdown_grace;

        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;

        let mut background = Vec::new();
        background.push(tokio::spawn(sweep_loop(shared.clone())));
        if let Some(handle) = metrics {
            background.push(tokio::spawn(m::serve(metrics_listener, handle)));
        }
        if let Some(path) = source.path.clone() {
            background.push(tokio::spawn(crate::reload::watch(
                shared.clone(),
                path,
                source.overrides,
                source.poll,
            )));
        }

        // The store is open and the config loaded: ready.
        health
            .set_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
            .await;
        health
            .set_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
            .await;
        background.push(tokio::spawn(health_loop(shared.clone(), health.clone())));

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_shared = shared.clone();
        let signal_health = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Readiness fails first, queued calls are answered, then the
            // listener stops accepting and in-flight calls drain.
            signal_health
                .set_not_serving::<LimitsServiceServer<LimitsSvc<AnyStore>>>()
                .await;
            signal_health
                .set_not_serving::<RateLimitServiceServer<RlsSvc<AnyStore>>>()
                .await;
            signal_health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            signal_shared.queues.close();
            let _ = stop_tx.send(());
        });

        let settings = shared.limiter.config().server.clone();
        let incoming = crate::api::guard::bounded(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            settings.max_connections,
        );
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
        // The guard refuses larger messages first, with RESOURCE_EXHAUSTED.
        let decode_limit = settings.max_request_bytes.saturating_mul(2);
        let serve = Server::builder()
            .max_concurrent_streams(settings.max_concurrent_streams)
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(stream_window.saturating_mul(8).max(1 << 20))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(64))
            .layer(guard)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                LimitsServiceServer::new(LimitsSvc::new(shared.clone()))
                    .max_decoding_message_size(decode_limit),
            )
            // Envoy's rate limit service API, on the same port and store.
            .add_service(
                RateLimitServiceServer::new(RlsSvc::new(shared.clone()))
                    .max_decoding_message_size(decode_limit),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
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
        shared.queues.wake_all();
    }
}
