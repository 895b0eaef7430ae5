//! Operating limitsd: metrics, health, reflection, traces, hot reload and
//! graceful shutdown, against the real binary.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use limits_server::pb;
use tokio_stream::StreamExt;

const SECRET_KEY: &str = "sk-live-very-secret-0042";
/// The server secret of [`traffic_config`].
const SERVER_SECRET: &str = "ops-test-server-secret-0123456789";

fn traffic_config() -> String {
    format!(
        r#"
limits:
  security:
    secret: "{SERVER_SECRET}"
  budgets:
    alert_threshold: 0.5
    by_api_key:
      "{SECRET_KEY}":
        daily: 1.00
    by_team:
      "eng":
        alias: engineering
        daily: 100.00
  rate_limits:
    by_api_key:
      "{SECRET_KEY}":
        requests_per_second: 1
        max_concurrent: 1
  enforcement:
    action: block
  storage:
    backend: memory
"#
    )
}

#[tokio::test]
async fn metrics_have_the_guide_names_and_no_raw_api_key() {
    let d = Limitsd::start(&traffic_config());
    let mut c = d.client().await;
    let subjects = || vec![key(SECRET_KEY), team("eng")];
    assert!(
        c.check_limits(check(subjects(), 0.1))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !c.check_limits(check(subjects(), 0.1))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    c.record_usage(record(subjects(), 0.9)).await.unwrap();
    let denied = c
        .check_limits(check(subjects(), 0.5))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    let lease = c
        .acquire_concurrent(pb::AcquireConcurrentRequest {
            subjects: subjects(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(lease.acquired);

    let text = d.scrape();
    assert!(
        !text.contains(SECRET_KEY),
        "a raw API key leaked into /metrics"
    );
    let hashed = format!(
        "api_key:{}",
        limits_server::identity::short_hash(
            &limits_store::Secret::new(SERVER_SECRET.as_bytes()).unwrap(),
            SECRET_KEY
        )
    );
    for (name, labels) in [
        (
            "mercator_limits_rate_limit_checks_total",
            &["identifier", "result"][..],
        ),
        (
            "mercator_limits_rate_limit_hits_total",
            &["identifier", "limit_type"],
        ),
        (
            "mercator_limits_budget_checks_total",
            &["identifier", "result"],
        ),
        (
            "mercator_limits_budget_hits_total",
            &["identifier", "window"],
        ),
        (
            "mercator_limits_budget_usage_percentage",
            &["identifier", "window"],
        ),
        (
            "mercator_limits_enforcement_actions_total",
            &["identifier", "action"],
        ),
        (
            "mercator_limits_check_duration_seconds_bucket",
            &["operation", "le"],
        ),
        ("mercator_limits_concurrent_requests", &["identifier"]),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        for label in labels {
            assert!(
                line.contains(&format!("{label}=\"")),
                "{name} lacks {label}: {line}"
            );
        }
    }
    assert!(
        text.contains(&format!("identifier=\"{hashed}\"")),
        "keys are labelled by hash"
    );
    assert!(
        text.contains("identifier=\"team:engineering\""),
        "aliases label subjects"
    );
    // The usage gauge is a 0-1 fraction, so `> 0.9` in the guide's alert rule
    // means 90 %.
    let usage = text
        .lines()
        .find(|l| {
            l.starts_with("mercator_limits_budget_usage_percentage{")
                && l.contains(&hashed)
                && l.contains("window=\"daily\"")
        })
        .expect("daily usage of the key");
    let value: f64 = usage.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((value - 0.9).abs() < 1e-9, "{usage}");
    assert!(text.contains("limit_type=\"requests_per_second\""));
    assert!(text.contains("window=\"daily\""));
    assert!(text.contains("action=\"block\""));
}

#[tokio::test]
async fn health_and_reflection() {
    let d = Limitsd::start(&traffic_config());
    let channel = d.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mercator.limits.v1.LimitsService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"mercator.limits.v1.LimitsService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

fn rps_config(rps: u32) -> String {
    format!(
        r#"
limits:
  budgets:
    by_api_key:
      "reload-key":
        daily: {rps}.00
  rate_limits:
    by_api_key:
      "reload-key":
        requests_per_second: {rps}
  storage:
    backend: memory
"#
    )
}

async fn admitted_in_a_burst(d: &Limitsd) -> usize {
    let mut c = d.client().await;
    let mut n = 0;
    for _ in 0..10 {
        if c.check_limits(check(vec![key("reload-key")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
        {
            n += 1;
        }
    }
    n
}

async fn rps_limit(d: &Limitsd) -> Option<f64> {
    let mut c = d.client().await;
    let u = c
        .get_usage(usage_req(key("reload-key")))
        .await
        .unwrap()
        .into_inner();
    u.statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::RequestsPerSecond as i32)
        .map(|s| s.limit)
}

fn reloads(text: &str, result: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("mercator_limits_config_reloads_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn reload_on_file_change_keeps_counters_and_rejects_bad_files() {
    let d = Limitsd::start(&rps_config(2));
    let path = d.dir.path().join("limits.yaml");
    assert_eq!(admitted_in_a_burst(&d).await, 2);

    std::fs::write(&path, rps_config(50)).unwrap();
    let mut c = d.client().await;
    c.record_usage(record(vec![key("reload-key")], 1.5))
        .await
        .unwrap();
    eventually("the new limit to load", || async {
        (rps_limit(&d).await == Some(50.0)).then_some(())
    })
    .await;
    // Counters survived the reload: the spend recorded before still counts
    // against the new, larger budget.
    let u = c
        .get_usage(usage_req(key("reload-key")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used(&u, pb::LimitKind::BudgetDaily), 1.5);
    let budget = u
        .statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::BudgetDaily as i32)
        .unwrap();
    assert_eq!(budget.limit, 50.0);

    std::fs::write(
        &path,
        "limits:\n  rate_limits:\n    by_api_key:\n      k:\n        requests_per_second: -3\n",
    )
    .unwrap();
    eventually("the bad file to be rejected", || async {
        (reloads(&d.scrape(), "failure") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        rps_limit(&d).await,
        Some(50.0),
        "the old limits stay in force"
    );
    // Regression: files of the wrong shape used to reload as "no limits".
    for (i, bad) in ["limits: [1, 2]\n", "limits: 5\n", "", "limits:\n"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&path, bad).unwrap();
        let failures = 2.0 + i as f64;
        eventually("the wrong shape to be rejected", || async {
            (reloads(&d.scrape(), "failure") >= failures).then_some(())
        })
        .await;
        assert_eq!(rps_limit(&d).await, Some(50.0), "{bad:?}: old limits kept");
    }
}

#[tokio::test]
async fn reload_follows_a_configmap_symlink_swap() {
    // The layout a Kubernetes ConfigMap volume has: the file is a symlink
    // through `..data`, and an update swaps `..data` atomically.
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_01");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("limits.yaml"), rps_config(2)).unwrap();
    std::os::unix::fs::symlink("..2026_01", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.yaml", dir.path().join("limits.yaml")).unwrap();
    let config = dir.path().join("limits.yaml");
    let d = Limitsd::spawn(dir, &config, &[]);
    assert_eq!(rps_limit(&d).await, Some(2.0));

    let v2 = d.dir.path().join("..2026_02");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("limits.yaml"), rps_config(7)).unwrap();
    let tmp = d.dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("..2026_02", &tmp).unwrap();
    std::fs::rename(&tmp, d.dir.path().join("..data")).unwrap();
    eventually("the swapped config to load", || async {
        (rps_limit(&d).await == Some(7.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn reload_on_sighup() {
    // Polling off: only the signal can make this reload happen.
    let config = rps_config(2).replacen(
        "limits:\n",
        "limits:\n  server:\n    reload_interval: 0s\n",
        1,
    );
    let d = Limitsd::start(&config);
    let path = d.dir.path().join("limits.yaml");
    let before = reloads(&d.scrape(), "success");
    let updated = rps_config(9).replacen(
        "limits:\n",
        "limits:\n  server:\n    reload_interval: 0s\n",
        1,
    );
    std::fs::write(&path, updated).unwrap();
    d.signal("HUP");
    eventually("SIGHUP to reload", || async {
        (rps_limit(&d).await == Some(9.0)).then_some(())
    })
    .await;
    assert!(reloads(&d.scrape(), "success") > before);
}

const SHUTDOWN: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "q-key":
        requests_per_second: 1
  enforcement:
    action: queue
    queue_timeout: 20s
  server:
    shutdown_grace: 5s
  storage:
    backend: memory
"#;

#[tokio::test]
async fn sigterm_answers_in_flight_calls_flips_health_and_exits_zero() {
    let mut d = Limitsd::start(SHUTDOWN);
    let channel = d.channel().await;
    let mut c = pb::limits_service_client::LimitsServiceClient::new(channel.clone());
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "mercator.limits.v1.LimitsService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(watch.next().await.unwrap().unwrap().status, serving);

    assert!(
        c.check_limits(check(vec![key("q-key")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let queued = tokio::spawn({
        let mut c = c.clone();
        async move { c.check_limits(check(vec![key("q-key")], 0.0)).await }
    });
    // Wait until the call is really queued before stopping the server.
    eventually("the call to queue", || async {
        d.scrape()
            .lines()
            .any(|l| l == "mercator_limits_queue_depth 1")
            .then_some(())
    })
    .await;
    d.signal("TERM");

    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let status = watch.next().await.unwrap().unwrap().status;
    assert_eq!(status, not_serving, "health goes NOT_SERVING at shutdown");
    drop(watch);

    let answer = queued
        .await
        .unwrap()
        .expect("the in-flight call is answered, not dropped")
        .into_inner();
    assert!(!answer.allowed);
    assert!(answer.reason.contains("shutting down"), "{}", answer.reason);
    let status = d.wait_exit();
    assert!(
        status.success(),
        "limitsd exits 0 after a graceful shutdown: {status:?}"
    );
}

/// A minimal OTLP trace collector that keeps the spans it receives.
/// A received span: its name and its attributes as `key=value` strings.
type Span = (String, Vec<String>);

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            if let Some(resource) = &rs.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name" {
                        self.services
                            .lock()
                            .unwrap()
                            .push(format!("{:?}", kv.value));
                    }
                }
            }
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attrs = span
                        .attributes
                        .iter()
                        .map(|kv| format!("{}={:?}", kv.key, kv.value))
                        .collect();
                    self.spans.lock().unwrap().push((span.name, attrs));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn traces_are_exported_over_otlp() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let collector = collector.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        }
    });
    let endpoint = format!("http://{addr}");
    let d = Limitsd::start_with(
        &traffic_config(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "limitsd-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut c = d.client().await;
    c.check_limits(check(vec![key(SECRET_KEY)], 0.1))
        .await
        .unwrap();

    let attrs = eventually("a CheckLimits span at the collector", || async {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == "CheckLimits")
            .map(|(_, a)| a.clone())
    })
    .await;
    assert!(attrs.iter().any(|a| a.starts_with("allowed=")), "{attrs:?}");
    assert!(
        attrs.iter().all(|a| !a.contains(SECRET_KEY)),
        "a raw API key leaked into a span"
    );
    assert!(
        collector
            .services
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("limitsd-under-test"))
    );
    server.abort();
    // Let Duration stay used on every platform.
    let _ = Duration::ZERO;
}

/// Signals that arrive right after the listening line are handled: SIGHUP
/// reloads (it does not kill the process), SIGTERM shuts down gracefully.
#[test]
fn signals_right_after_start_up_are_handled() {
    for _ in 0..5 {
        let mut d =
            Limitsd::start("limits:\n  budgets:\n    by_api_key:\n      k: { daily: 1.0 }\n");
        d.signal("HUP");
        d.signal("TERM");
        let status = d.wait_exit();
        assert!(status.success(), "{status:?}");
    }
}
