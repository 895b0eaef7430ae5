//! Alert delivery to webhooks (`limits.alerts.webhooks`): every alert
//! event the limiter publishes is POSTed to each webhook, in order, signed,
//! and retried with backoff until a 2xx answer or `max_attempts`.
//!
//! Each webhook has its own task and its own queue of at most
//! `max_pending` events, fed from the limiter's alert channel: a slow or
//! dead receiver fills its queue (the oldest event is dropped, and
//! counted), never the check path, which only sends on a channel. The
//! limiter also keeps each event in the store's outbox, per webhook, until
//! the task says it is done with it: on the sled store an event not yet
//! delivered when limitsd stops (or is killed) is delivered after the
//! restart. Delivery is at least once: a receiver that answered but whose
//! answer was lost gets the event again, with the same `X-Limits-Event-Id`.
//!
//! The signature is Stripe's and GitHub's scheme: `X-Limits-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with the
//! webhook's secret; a receiver recomputes it and rejects a stale `t`.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use limits::alerts::AlertEvent;
use limits::config::{AlertsSettings, Webhook};
use metrics::counter;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::broadcast::error::RecvError;

/// The metric of deliveries by outcome: `delivered`, `retried`, `failed`,
/// `dropped`.
pub const DELIVERIES: &str = "limits_alert_deliveries_total";

/// The first wait before a retry; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the delivery tasks get events from: the limiter's alert channel,
/// and the store's outbox of what a webhook has not been given yet.
pub trait Source: Send + Sync + 'static {
    /// Every event from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<AlertEvent>>;
    /// The events waiting for the webhook at `url`, oldest first, by key.
    fn pending(&self, url: &str) -> impl Future<Output = Vec<(String, AlertEvent)>> + Send;
    /// The webhook is done with the event at `key` (delivered or given up).
    fn done(&self, key: String) -> impl Future<Output = ()> + Send;
}

/// Starts one delivery task per webhook; they run until the channel
/// closes (the limiter is dropped) or the task is aborted.
pub fn spawn<S: Source>(
    settings: &AlertsSettings,
    source: Arc<S>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if settings.webhooks.is_empty() {
        return Vec::new();
    }
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: alert webhooks are off");
            return Vec::new();
        }
    };
    for result in ["delivered", "retried", "failed", "dropped"] {
        counter!(DELIVERIES, "result" => result).absolute(0);
    }
    settings
        .webhooks
        .iter()
        .map(|w| {
            let outbox = Outbox {
                webhook: w.clone(),
                client: client.clone(),
                events: source.subscribe(),
                source: source.clone(),
                pending: VecDeque::new(),
                restored: HashSet::new(),
                max_pending: settings.max_pending,
                max_attempts: settings.max_attempts,
            };
            tokio::spawn(outbox.run())
        })
        .collect()
}

struct Outbox<S> {
    webhook: Webhook,
    client: reqwest::Client,
    events: tokio::sync::broadcast::Receiver<Arc<AlertEvent>>,
    source: Arc<S>,
    /// Events to deliver, oldest first, with their outbox keys.
    pending: VecDeque<(String, Arc<AlertEvent>)>,
    /// Keys loaded from the outbox at start-up, so that an event also
    /// received from the channel is not delivered twice.
    restored: HashSet<String>,
    max_pending: usize,
    max_attempts: u32,
}

impl<S: Source> Outbox<S> {
    async fn run(mut self) {
        // Subscribed first, then what the outbox kept: nothing falls in
        // between.
        for (key, event) in self.source.pending(&self.webhook.url).await {
            self.restored.insert(key.clone());
            self.push(key, Arc::new(event)).await;
        }
        loop {
            if self.pending.is_empty() && !self.receive().await {
                return;
            }
            let Some((key, event)) = self.pending.front().cloned() else {
                continue;
            };
            let body = body(&event, self.webhook.slack);
            let mut attempt = 1;
            let mut backoff = FIRST_BACKOFF;
            loop {
                match self.post(&event, &body).await {
                    Ok(()) => {
                        counter!(DELIVERIES, "result" => "delivered").increment(1);
                        break;
                    }
                    Err(why) if attempt >= self.max_attempts => {
                        counter!(DELIVERIES, "result" => "failed").increment(1);
                        tracing::warn!(url = %self.webhook.url, event = %event.id, attempts = attempt, %why, "an alert could not be delivered");
                        break;
                    }
                    Err(why) => {
                        counter!(DELIVERIES, "result" => "retried").increment(1);
                        tracing::debug!(url = %self.webhook.url, event = %event.id, attempt, %why, "alert delivery failed; retrying");
                        // Keep taking events in while waiting, so that the
                        // channel never overflows behind a dead receiver.
                        let wait = tokio::time::sleep(backoff);
                        tokio::pin!(wait);
                        loop {
                            tokio::select! {
                                _ = &mut wait => break,
                                open = self.receive() => if !open { return },
                            }
                        }
                        attempt += 1;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            // The event delivered (or given up) is the front one, unless
            // the queue overflowed meanwhile and dropped it.
            if self
                .pending
                .front()
                .is_some_and(|(_, e)| Arc::ptr_eq(e, &event))
            {
                self.pending.pop_front();
                self.restored.remove(&key);
                self.source.done(key).await;
            }
        }
    }

    /// Queues an event, dropping the oldest when the queue is full.
    async fn push(&mut self, key: String, event: Arc<AlertEvent>) {
        if self.pending.len() >= self.max_pending
            && let Some((dropped, _)) = self.pending.pop_front()
        {
            counter!(DELIVERIES, "result" => "dropped").increment(1);
            self.source.done(dropped).await;
        }
        self.pending.push_back((key, event));
    }

    /// Waits for the next event into the queue; false once the channel is
    /// closed.
    async fn receive(&mut self) -> bool {
        match self.events.recv().await {
            Ok(event) => {
                let key = event.outbox_key(&self.webhook.url);
                if !self.restored.contains(&key) {
                    self.push(key, event).await;
                }
                true
            }
            Err(RecvError::Lagged(missed)) => {
                counter!(DELIVERIES, "result" => "dropped").increment(missed);
                true
            }
            Err(RecvError::Closed) => false,
        }
    }

    async fn post(&self, event: &AlertEvent, body: &str) -> Result<(), String> {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let answer = self
            .client
            .post(&self.webhook.url)
            .header("content-type", "application/json")
            .header("x-limits-event-id", &event.id)
            .header(
                "x-limits-signature",
                signature(&self.webhook.secret, t, body),
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status()))
        }
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body POSTed for an event: the event as JSON, or Slack's `{"text"}`.
pub fn body(e: &AlertEvent, slack: bool) -> String {
    let budget = e.kind.name();
    if slack {
        let scope = e
            .scope
            .as_deref()
            .map(|s| format!(" (models {s})"))
            .unwrap_or_default();
        let text = format!(
            "limitsd: {} {} reached {:.0}% of its {budget} budget{scope}: ${:.2} of ${:.2}",
            e.dimension.as_str(),
            e.subject,
            e.threshold * 100.0,
            e.used.as_usd(),
            e.limit.as_usd(),
        );
        return json!({ "text": text }).to_string();
    }
    json!({
        "id": e.id,
        "type": "budget.threshold_crossed",
        "dimension": e.dimension.as_str(),
        "subject": e.subject,
        "model_scope": e.scope.as_deref(),
        "budget": budget,
        "period": if e.calendar { "calendar" } else { "rolling" },
        "threshold": e.threshold,
        "used_usd": e.used.as_usd(),
        "limit_usd": e.limit.as_usd(),
        "time": limits::admin::rfc3339(e.at),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_time_and_body() {
        // RFC 4231 test case 2's key and data, as "<t>.<body>".
        let sig = signature(b"Jefe", 0, "what do ya want for nothing?");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=0,v1={expected}"));
        assert_ne!(sig, signature(b"Jefe", 1, "what do ya want for nothing?"));
    }
}
