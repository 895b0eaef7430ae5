//! The baseline server: the limits proto, and Envoy's rate limit service,
//! served by tonic with no work at all. Every RPC clones a prebuilt answer
//! of realistic size, so what the load generator measures against it is the
//! ceiling of tonic (HTTP/2, protobuf, the runtime) on this machine;
//! limitsd is compared against it.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::pb::limits_service_server::{LimitsService, LimitsServiceServer};
use crate::pb::rls;

/// `ShouldRateLimit` answers are prebuilt for up to this many descriptors
/// (the load generator sends 1–3); larger requests get theirs built.
const RLS_PREBUILT: usize = 8;

/// The prebuilt answers.
#[derive(Debug, Clone)]
pub struct Baseline {
    check: pb::CheckLimitsResponse,
    check_reserved: pb::CheckLimitsResponse,
    record: pb::RecordUsageResponse,
    acquire: pb::AcquireConcurrentResponse,
    release: pb::ReleaseConcurrentResponse,
    usage: pb::GetUsageResponse,
    /// limitsd also sends the rate-limit headers as response metadata.
    metadata: MetadataMap,
    /// `ShouldRateLimit`: the answer to `i + 1` descriptors at index `i`.
    rls: Vec<rls::RateLimitResponse>,
}

/// An `OK` answer to `n` descriptors, shaped as limitsd's to a bench
/// request (one mapped subject per descriptor, bench.yaml's limits): one
/// status per descriptor with its most restrictive limit (requests per
/// minute, under load: the window that has counted most of its limit), and
/// the three `X-RateLimit-*` headers.
fn rls_answer(n: usize) -> rls::RateLimitResponse {
    let status = rls::DescriptorStatus {
        code: rls::Code::Ok as i32,
        current_limit: Some(rls::RateLimit {
            name: "requests_per_minute".into(),
            requests_per_unit: 1_000_000,
            unit: rls::Unit::Minute as i32,
        }),
        limit_remaining: 999_873,
        duration_until_reset: Some(prost_types::Duration {
            seconds: 59,
            nanos: 983_000_000,
        }),
        quota: None,
    };
    let header = |key: &str, value: &str| rls::HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: Vec::new(),
    };
    rls::RateLimitResponse {
        overall_code: rls::Code::Ok as i32,
        statuses: vec![status; n],
        response_headers_to_add: vec![
            header("X-RateLimit-Limit", "1000000"),
            header("X-RateLimit-Remaining", "999873"),
            header("X-RateLimit-Reset", "60"),
        ],
        ..Default::default()
    }
}

fn duration(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

fn timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 123_000_000,
    }
}

/// `n` statuses of one API key, cycling through the kinds limitsd reports
/// for the bench config (two budgets, three rates, one concurrency limit).
fn statuses(n: usize, now: i64) -> Vec<pb::LimitStatus> {
    let kinds = [
        (pb::LimitKind::BudgetDaily, Some(86_400), 1000.0),
        (pb::LimitKind::BudgetMonthly, Some(2_592_000), 10_000.0),
        (pb::LimitKind::RequestsPerSecond, Some(1), 100_000.0),
        (pb::LimitKind::RequestsPerMinute, Some(60), 1_000_000.0),
        (pb::LimitKind::TokensPerMinute, Some(60), 1_000_000_000.0),
        (pb::LimitKind::MaxConcurrent, None, 1000.0),
    ];
    (0..n)
        .map(|i| {
            let (kind, window, limit) = kinds[i % kinds.len()];
            pb::LimitStatus {
                subject: Some(pb::Subject {
                    dimension: pb::Dimension::ApiKey as i32,
                    id: "key-123".into(),
                }),
                kind: kind as i32,
                window: window.map(duration),
                limit,
                used: limit / 7.0,
                remaining: limit - limit / 7.0,
                reset_at: Some(timestamp(now + window.unwrap_or(600))),
                exceeded: false,
                // As limitsd says of a budget.
                period: match kind {
                    pb::LimitKind::BudgetDaily | pb::LimitKind::BudgetMonthly => {
                        pb::BudgetPeriod::Rolling as i32
                    }
                    _ => pb::BudgetPeriod::Unspecified as i32,
                },
                ..Default::default()
            }
        })
        .collect()
}

impl Baseline {
    /// Answers carrying `n_statuses` limit statuses each.
    pub fn new(n_statuses: usize) -> Baseline {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let statuses = statuses(n_statuses, now);
        let budget = Some(pb::BudgetSummary {
            subject: Some(pb::Subject {
                dimension: pb::Dimension::ApiKey as i32,
                id: "key-123".into(),
            }),
            kind: pb::LimitKind::BudgetDaily as i32,
            limit_usd: 1000.0,
            used_usd: 142.86,
            remaining_usd: 857.14,
            percentage: 0.14286,
            reset_at: Some(timestamp(now + 86_400)),
            period: pb::BudgetPeriod::Rolling as i32,
            model_scope: String::new(),
        });
        let reset = (now + 1).to_string();
        let header_values = [
            ("X-RateLimit-Limit", "100000"),
            ("X-RateLimit-Remaining", "85714"),
            ("X-RateLimit-Reset", reset.as_str()),
            ("X-Budget-Limit", "1000.00"),
            ("X-Budget-Used", "142.86"),
            ("X-Budget-Remaining", "857.14"),
            ("X-Budget-Reset", reset.as_str()),
        ];
        let headers = header_values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut metadata = MetadataMap::new();
        for (k, v) in header_values {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .expect("valid header name");
            metadata.insert(key, MetadataValue::try_from(v).expect("valid header value"));
        }
        let check = pb::CheckLimitsResponse {
            allowed: true,
            action: pb::Action::Allow as i32,
            reason: String::new(),
            downgrade_to: String::new(),
            retry_after: None,
            reservation_id: String::new(),
            statuses: statuses.clone(),
            budget,
            headers,
            alert: false,
            estimated_cost_usd: 0.01,
        };
        let check_reserved = pb::CheckLimitsResponse {
            reservation_id: "r-0123456789abcdef-42".into(),
            ..check.clone()
        };
        Baseline {
            record: pb::RecordUsageResponse {
                cost_usd: 0.008,
                total_tokens: 900,
                statuses: statuses.clone(),
                budget: check.budget.clone(),
                alert: false,
                duplicate: false,
                may_continue: true,
                reason: String::new(),
            },
            acquire: pb::AcquireConcurrentResponse {
                acquired: true,
                lease_id: "l-0123456789abcdef-42".into(),
                expires_at: Some(timestamp(now + 600)),
                retry_after: None,
                reason: String::new(),
                statuses: statuses
                    .iter()
                    .filter(|s| s.kind == pb::LimitKind::MaxConcurrent as i32)
                    .cloned()
                    .collect(),
            },
            release: pb::ReleaseConcurrentResponse { released: true },
            usage: pb::GetUsageResponse {
                subject: Some(pb::Subject {
                    dimension: pb::Dimension::ApiKey as i32,
                    id: "key-123".into(),
                }),
                statuses,
                reservations: Vec::new(),
                leases: Vec::new(),
            },
            check,
            check_reserved,
            metadata,
            rls: (1..=RLS_PREBUILT).map(rls_answer).collect(),
        }
    }

    fn with_metadata<T>(&self, message: T) -> Response<T> {
        let mut r = Response::new(message);
        *r.metadata_mut() = self.metadata.clone();
        r
    }
}

#[tonic::async_trait]
impl LimitsService for Baseline {
    async fn check_limits(
        &self,
        request: Request<pb::CheckLimitsRequest>,
    ) -> Result<Response<pb::CheckLimitsResponse>, Status> {
        let answer = if request.get_ref().reserve {
            &self.check_reserved
        } else {
            &self.check
        };
        Ok(self.with_metadata(answer.clone()))
    }

    async fn record_usage(
        &self,
        _request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        Ok(Response::new(self.record.clone()))
    }

    async fn acquire_concurrent(
        &self,
        _request: Request<pb::AcquireConcurrentRequest>,
    ) -> Result<Response<pb::AcquireConcurrentResponse>, Status> {
        Ok(Response::new(self.acquire.clone()))
    }

    async fn release_concurrent(
        &self,
        _request: Request<pb::ReleaseConcurrentRequest>,
    ) -> Result<Response<pb::ReleaseConcurrentResponse>, Status> {
        Ok(Response::new(self.release))
    }

    async fn get_usage(
        &self,
        _request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        Ok(Response::new(self.usage.clone()))
    }

    type WatchAlertsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::WatchAlertsResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    /// No alerts: the workloads never watch them.
    async fn watch_alerts(
        &self,
        _request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        Err(Status::unimplemented("the baseline has no alerts"))
    }
}

#[tonic::async_trait]
impl rls::RateLimitService for Baseline {
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        let n = request.get_ref().descriptors.len().max(1);
        let answer = match self.rls.get(n - 1) {
            Some(a) => a.clone(),
            None => rls_answer(n),
        };
        Ok(Response::new(answer))
    }
}

/// Binds `addr`, prints `baseline listening grpc=HOST:PORT` and serves
/// until SIGTERM or SIGINT.
pub async fn serve(addr: SocketAddr, n_statuses: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    // Scripts and tests read the bound address from this line.
    println!("baseline listening grpc={bound}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let baseline = Baseline::new(n_statuses);
    Server::builder()
        .add_service(LimitsServiceServer::new(baseline.clone()))
        .add_service(rls::RateLimitServiceServer::new(baseline))
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await
        .context("serving gRPC")
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rls_answers_carry_one_limited_ok_status_per_descriptor() {
        let b = Baseline::new(6);
        for n in 1..=RLS_PREBUILT {
            let a = &b.rls[n - 1];
            assert_eq!(a.statuses.len(), n);
            assert_eq!(a.overall_code, rls::Code::Ok as i32);
            assert!(a.statuses.iter().all(|s| s.current_limit.is_some()));
        }
        assert_eq!(
            rls_answer(RLS_PREBUILT + 1).statuses.len(),
            RLS_PREBUILT + 1
        );
    }
}
