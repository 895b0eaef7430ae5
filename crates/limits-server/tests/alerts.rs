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
    let calls = (0..200).map(|_| {
        let d = &d;
        async move {
            let mut req = check(vec![key("sk-watched")], 0.5);
            req.reserve = true;
            d.client().await.check_limits(req).await.unwrap().into_inner()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.allowed));

    let mut events = Vec::new();
    while events.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("three events within 10 s")
            .expect("the stream stays open")
            .expect("an event");
        events.push(next);
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
