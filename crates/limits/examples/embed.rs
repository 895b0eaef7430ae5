//! limitsd embedded in a Rust gateway, no network hop: every model call is
//! checked (holding its estimate), run, and recorded; a concurrency slot is
//! held around it.
//!
//! Fifty calls race for a $1.00 daily budget at $0.05 each, twenty of them
//! at a time. However they interleave, exactly twenty are admitted and the
//! spend is exactly $1.00: each check holds its estimate until the record
//! settles it, so concurrent checks cannot all see the same headroom.
//!
//! ```text
//! cargo run -p limits --example embed
//! ```

use std::sync::Arc;

use limits::{CheckRequest, Decision, Dimension, LimitKind, Limiter, RecordRequest, Subject};

const CONFIG: &str = r#"
limits:
  budgets:
    by_api_key:
      sk-gateway: { daily: 1.00 }
  rate_limits:
    by_api_key:
      sk-gateway: { max_concurrent: 20 }
"#;

const CALLS: usize = 50;

/// One model call through the limiter: acquire a slot, check, "call the
/// model", record, release. `Ok(true)` when the call ran.
async fn call_model(limiter: &Limiter, key: &[Subject]) -> Result<bool, limits::Error> {
    let config = limiter.config();
    let slot = limiter.acquire(&config, key, None).await?;
    let Some(lease_id) = slot.lease_id else {
        return Ok(false);
    };
    let check = limiter
        .check(
            &config,
            CheckRequest {
                subjects: key,
                model: "gpt-4o",
                estimated_tokens: 1_200,
                estimated_input_tokens: None,
                estimated_output_tokens: None,
                estimated_cost: Some(limits::usd(0.05)?),
                reserve: true,
                reservation_ttl: None,
            },
        )
        .await?;
    let ran = match &check.decision {
        Decision::Allow { reservation_id, .. } => {
            // The model call would run here; its actual usage comes back.
            tokio::task::yield_now().await;
            limiter
                .record(
                    &config,
                    RecordRequest {
                        subjects: key,
                        reservation_id: reservation_id.as_deref(),
                        request_tokens: 1_000,
                        response_tokens: 200,
                        total_tokens: 0,
                        cost: Some(limits::usd(0.05)?),
                        model: "gpt-4o",
                        progress: false,
                        sequence: 0,
                    },
                )
                .await?;
            true
        }
        Decision::Deny { .. } => false,
    };
    limiter.release(&lease_id).await?;
    Ok(ran)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The memory store; a `storage:` section would name sled or Redis.
    let limiter = Arc::new(Limiter::from_yaml_str(CONFIG)?);
    let key = Arc::new([Subject::new(Dimension::ApiKey, "sk-gateway")]);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let (limiter, key) = (limiter.clone(), key.clone());
        calls.spawn(async move { call_model(&limiter, &key[..]).await });
    }
    let mut ran = 0;
    let mut turned_away = 0;
    while let Some(result) = calls.join_next().await {
        if result?? {
            ran += 1;
        } else {
            turned_away += 1;
        }
    }

    let config = limiter.config();
    let usage = limiter.usage(&config, &key[0]).await?;
    let daily = usage
        .statuses
        .iter()
        .find(|s| s.kind == LimitKind::BudgetDaily)
        .ok_or("the key has a daily budget")?;
    println!(
        "{ran} calls ran, {turned_away} turned away; spent ${:.2} of ${:.2}, {} reservations and {} leases open",
        daily.used as f64 / 1e9,
        daily.limit as f64 / 1e9,
        usage.reservations.len(),
        usage.leases.len(),
    );

    // What the example demonstrates, checked so that CI notices if it stops
    // being true: twenty calls fit $1.00 at $0.05, and nothing leaked.
    assert_eq!(ran, 20, "exactly the calls the budget pays for");
    assert_eq!(daily.used, limits::usd(1.00)?.0);
    assert!(usage.reservations.is_empty() && usage.leases.is_empty());

    // A denial says which limit decided and why, in the gateway's words.
    let over = limiter
        .check(
            &config,
            CheckRequest {
                subjects: &key[..],
                model: "gpt-4o",
                estimated_tokens: 1_200,
                estimated_input_tokens: None,
                estimated_output_tokens: None,
                estimated_cost: Some(limits::usd(0.05)?),
                reserve: true,
                reservation_ttl: None,
            },
        )
        .await?;
    assert!(!over.allowed());
    println!("the next call: {}", over.reason(limits::Queued::No));
    limiter.flush().await?;
    Ok(())
}
