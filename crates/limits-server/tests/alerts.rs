//! Alert events through limitsd: `WatchAlerts` streams each crossing of a
//! budget's alert thresholds once, under 200 concurrent requests.

mod common;

use std::time::Duration;

use common::*;
use limits_server::pb;

const CONFIG: &str = r#"
limits:
  budgets:
    alert_thresholds: [0.5, 0.8, 0.95]
    by_api_key:
      "sk-watched": { daily: 100, alias: watched }
  storage:
    backend: memory
"#;

/// `n` reserved checks of `cost` for `subject` at once; how many were
/// allowed.
async fn reserved_checks(d: &Limitsd, subject: pb::Subject, n: usize, cost: f64) -> usize {
    let calls = (0..n).map(|_| {
        let mut req = check(vec![subject.clone()], cost);
        req.reserve = true;
        async move {
            d.client()
                .await
                .check_limits(req)
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    answers.iter().filter(|a| a.allowed).count()
}

#[tokio::test]
async fn watch_alerts_streams_each_crossing_once_under_concurrency() {
    let d = Limitsd::start(CONFIG);
    let mut stream = d
        .client()
        .await
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .expect("WatchAlerts")
        .into_inner();
    // 200 reserved checks of $0.50 at once: $100 in all, every one fits,
    // and the budget passes 50 %, 80 % and 95 % on the way.
    assert_eq!(reserved_checks(&d, key("sk-watched"), 200, 0.5).await, 200);

    let mut events = Vec::new();
    while events.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("three events within 10 s")
            .expect("the stream stays open")
            .expect("an event");
        events.push(next.event.expect("the message carries its event"));
    }
    // Nothing more arrives: the last check changed nothing that crosses.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(more.is_err(), "a fourth event: {more:?}");
    let mut thresholds: Vec<f64> = events.iter().map(|e| e.threshold).collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds, [0.5, 0.8, 0.95]);
    for e in &events {
        assert_eq!(e.subject, "watched", "the alias, never the key");
        assert_eq!(e.dimension, pb::Dimension::ApiKey as i32);
        assert_eq!(e.kind, pb::LimitKind::BudgetDaily as i32);
        assert_eq!(e.period, pb::BudgetPeriod::Rolling as i32);
        assert_eq!(e.limit_usd, 100.0);
        assert!(e.used_usd >= e.threshold * 100.0 - 1e-9, "{e:?}");
        assert!(e.time.is_some() && e.id.len() == 32);
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
}

/// 200 concurrent requests cross 50 % once: one event, POSTed signed to
/// the webhook, retried after a 500 with the same id, and to a Slack one
/// as `{"text"}`.
#[tokio::test]
async fn webhooks_get_each_crossing_signed_and_retried() {
    let (url, got) = receiver(vec![500]).await;
    let (slack_url, slack) = receiver(vec![]).await;
    let d = Limitsd::start(&format!(
        r#"
limits:
  budgets:
    alert_thresholds: [0.5]
    by_team:
      research: {{ daily: 100 }}
  alerts:
    webhooks:
      - url: {url}
        secret: {SECRET}
      - url: {slack_url}
        secret: {SECRET}
        format: slack
  storage:
    backend: memory
"#
    ));
    assert_eq!(reserved_checks(&d, team("research"), 200, 0.4).await, 200);

    // The first POST is answered 500, the retry 200: two requests, one id.
    let posts = wait_for(&got, 2).await;
    let id = posts[0].headers["x-limits-event-id"].to_str().unwrap();
    assert_eq!(posts[1].headers["x-limits-event-id"].to_str().unwrap(), id);
    assert_eq!(posts[0].body, posts[1].body);
    for p in &posts {
        verify(p);
        assert_eq!(p.headers["content-type"], "application/json");
    }
    let event: serde_json::Value = serde_json::from_str(&posts[1].body).unwrap();
    assert_eq!(event["id"], id);
    assert_eq!(event["type"], "budget.threshold_crossed");
    assert_eq!(event["dimension"], "team");
    assert_eq!(event["subject"], "research");
    assert_eq!(event["budget"], "daily");
    assert_eq!(event["threshold"], 0.5);
    assert!(event["used_usd"].as_f64().unwrap() >= 50.0);

    let slack = wait_for(&slack, 1).await;
    verify(&slack[0]);
    let text: serde_json::Value = serde_json::from_str(&slack[0].body).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(
        text.contains("team research reached 50% of its daily budget"),
        "{text}"
    );

    // Exactly once: nothing more arrives, however many requests crossed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().len(), 2);
    assert_eq!(slack.len(), 1);
    let metrics = d.scrape();
    assert!(
        metrics.contains(r#"limits_alert_deliveries_total{result="delivered"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"limits_alert_deliveries_total{result="retried"} 1"#));
}

/// On sled, an event not yet delivered survives `kill -9`: the receiver
/// fails every attempt, limitsd is killed, and after the restart the event
/// is delivered, with the same id, once.
#[tokio::test]
async fn the_sled_outbox_survives_kill_9() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let status = std::sync::Arc::new(AtomicU16::new(500));
    let (url, got) = switchable_receiver(status.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
limits:
  budgets:
    alert_thresholds: [0.5]
    by_team:
      research: {{ daily: 10 }}
  alerts:
    max_attempts: 1000
    webhooks:
      - url: {url}
        secret: {SECRET}
  storage:
    backend: sled
    sled:
      path: ./store
"#
        ),
    )
    .unwrap();
    let mut d = Limitsd::start_in(dir.path(), &config);
    d.client()
        .await
        .record_usage(record(vec![team("research")], 6.0))
        .await
        .unwrap();
    let first = wait_for(&got, 1).await;
    let id = first[0].headers["x-limits-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    d.signal("KILL");
    let _ = d.wait_exit();

    status.store(200, Ordering::SeqCst);
    let seen = got.lock().len();
    let d = Limitsd::start_in(dir.path(), &config);
    let posts = wait_for(&got, seen + 1).await;
    let delivered = posts.last().unwrap();
    verify(delivered);
    assert_eq!(delivered.headers["x-limits-event-id"].to_str().unwrap(), id);
    // Delivered: out of the outbox, so nothing more, and a second restart
    // delivers nothing again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().len(), seen + 1);
    drop(d);
    let _again = Limitsd::start_in(dir.path(), &config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().len(),
        seen + 1,
        "delivered events stay delivered"
    );
}
