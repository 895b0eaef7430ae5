//! The enforcement policy: what happens when a limit would be exceeded
//! (block, queue, downgrade, alert), the alert threshold, model downgrade
//! chains and the pricing table that re-prices a downgraded request.

use ahash::AHashMap;

use crate::money::NanoUsd;
use crate::time::Nanos;

/// What the service did with a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The request runs.
    Allow,
    /// The request is refused.
    Block,
    /// The request waited for room (the server's queue mode) before an answer.
    Queue,
    /// The request runs on a cheaper model.
    Downgrade,
    /// The request runs, flagged: a limit was reached or the alert threshold crossed.
    Alert,
}

impl Action {
    /// The name used in the API, metrics and logs (`allow`, `block`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
            Action::Queue => "queue",
            Action::Downgrade => "downgrade",
            Action::Alert => "alert",
        }
    }
}

/// The configured `enforcement.action`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum EnforcementMode {
    #[default]
    /// Refuse a request that does not fit.
    Block,
    /// The engine answers as for `Block`; the server waits and retries.
    Queue,
    /// Try the model's cheaper alternatives, in order, and run the first that fits.
    Downgrade,
    /// Let the request run, flagged, even past a limit.
    Alert,
}

/// The price of a model, per 1000 tokens.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    /// Dollars per 1000 input (prompt) tokens.
    pub input_per_1k: NanoUsd,
    /// Dollars per 1000 output (completion) tokens.
    pub output_per_1k: NanoUsd,
}

/// Model prices, used when a caller gives tokens but no cost.
#[derive(Clone, Debug, Default)]
pub struct Pricing {
    models: AHashMap<String, ModelPrice>,
}

fn per_1k(tokens: u64, price: NanoUsd) -> u128 {
    u128::from(tokens) * u128::from(price.0)
}

impl Pricing {
    /// An empty table.
    pub fn new() -> Pricing {
        Pricing::default()
    }

    /// Sets the price of a model, replacing any earlier one.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into(), price);
    }

    /// The price of a model, if it has one.
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        self.models.get(model).copied()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The cost of actual usage, rounded up to the nano-dollar.
    pub fn cost(&self, model: &str, input: u64, output: u64) -> Option<NanoUsd> {
        let p = self.get(model)?;
        let total = per_1k(input, p.input_per_1k) + per_1k(output, p.output_per_1k);
        Some(NanoUsd(
            u64::try_from(total.div_ceil(1000)).unwrap_or(u64::MAX),
        ))
    }

    /// The estimated cost of `tokens` whose split between input and output is
    /// unknown: priced at the higher of the two rates, so estimates err high.
    pub fn estimate(&self, model: &str, tokens: u64) -> Option<NanoUsd> {
        let p = self.get(model)?;
        let rate = p.input_per_1k.max(p.output_per_1k);
        Some(NanoUsd(
            u64::try_from(per_1k(tokens, rate).div_ceil(1000)).unwrap_or(u64::MAX),
        ))
    }
}

/// One way to run a request: a model with its estimated cost and tokens. A
/// check tries its attempts in order and admits the first that fits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// The model name.
    pub model: String,
    /// The estimated cost on this model.
    pub cost: NanoUsd,
    /// The estimated tokens on this model.
    pub tokens: u64,
    /// The estimated input (prompt) tokens, held against input token
    /// limits.
    pub input: u64,
    /// The estimated output (completion) tokens, held against output token
    /// limits.
    pub output: u64,
    /// The request's subjects this attempt does not meet: bit `i` for
    /// subject `i` (a model scope of another attempt's model). 0: all.
    pub skip: u16,
}

/// The longest downgrade chain followed; config validation rejects cycles,
/// this bounds the walk regardless.
pub const MAX_DOWNGRADE_STEPS: usize = 16;

/// How the service enforces limits.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// What happens when a limit would be exceeded.
    pub mode: EnforcementMode,
    /// Flag a request when a budget reaches this fraction, in parts per
    /// million (800_000 = 80 %). `None` never flags.
    pub alert_threshold_ppm: Option<u32>,
    /// The thresholds whose crossings are reported as alert events (see
    /// [`crate::alerts`]), unless a subject has its own.
    pub alert_thresholds: crate::alerts::Thresholds,
    /// `model -> cheaper model`.
    pub downgrades: AHashMap<String, String>,
    /// Model prices, to re-price a downgraded request.
    pub pricing: Pricing,
}

impl Policy {
    /// The attempts a check makes: the model asked for, then (in downgrade
    /// mode) each model down its chain, re-priced where the pricing table
    /// knows the cheaper model and the caller gave a token estimate.
    ///
    /// `cost` is the caller's estimate; `None` means "price it from tokens".
    /// Each attempt holds all of `tokens` against the input and the output
    /// token limits alike (either could be all of it); a caller that knows
    /// the split sets `input` and `output`.
    pub fn attempts(&self, model: &str, tokens: u64, cost: Option<NanoUsd>) -> Vec<Attempt> {
        let first_cost = cost
            .or_else(|| self.pricing.estimate(model, tokens))
            .unwrap_or(NanoUsd::ZERO);
        let mut attempts = vec![Attempt {
            model: model.to_owned(),
            cost: first_cost,
            tokens,
            input: tokens,
            output: tokens,
            skip: 0,
        }];
        if self.mode != EnforcementMode::Downgrade {
            return attempts;
        }
        let mut current = model;
        while let Some(next) = self.downgrades.get(current) {
            if attempts.len() > MAX_DOWNGRADE_STEPS || attempts.iter().any(|a| a.model == *next) {
                break;
            }
            let repriced = if tokens > 0 {
                self.pricing.estimate(next, tokens)
            } else {
                None
            };
            attempts.push(Attempt {
                model: next.clone(),
                cost: repriced.unwrap_or(first_cost),
                tokens,
                input: tokens,
                output: tokens,
                skip: 0,
            });
            current = next;
        }
        attempts
    }

    /// Whether `used` of `limit` reaches the alert threshold.
    pub fn crosses_alert(&self, used: u64, limit: u64) -> bool {
        match self.alert_threshold_ppm {
            Some(ppm) => u128::from(used) * 1_000_000 >= u128::from(limit) * u128::from(ppm),
            None => false,
        }
    }
}

/// In queue mode: how long a denied request should wait before trying again,
/// or `None` to deny it at once because it cannot fit within `budget` (the
/// time left before the queue timeout or the caller's deadline, whichever is
/// sooner). `retry_after = None` means the request can never fit.
pub fn queue_wait(retry_after: Option<Nanos>, budget: Nanos) -> Option<Nanos> {
    match retry_after {
        Some(wait) if wait <= budget => Some(wait),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(x: f64) -> NanoUsd {
        NanoUsd::try_from_usd(x).unwrap()
    }

    fn policy() -> Policy {
        let mut p = Policy {
            mode: EnforcementMode::Downgrade,
            ..Policy::default()
        };
        p.downgrades.insert("gpt-4".into(), "gpt-4-turbo".into());
        p.downgrades
            .insert("gpt-4-turbo".into(), "gpt-3.5-turbo".into());
        p.pricing.insert(
            "gpt-4",
            ModelPrice {
                input_per_1k: usd(0.03),
                output_per_1k: usd(0.06),
            },
        );
        p.pricing.insert(
            "gpt-3.5-turbo",
            ModelPrice {
                input_per_1k: usd(0.0005),
                output_per_1k: usd(0.0015),
            },
        );
        p
    }

    #[test]
    fn walks_the_chain_and_reprices() {
        let a = policy().attempts("gpt-4", 1000, None);
        let models: Vec<_> = a.iter().map(|a| a.model.as_str()).collect();
        assert_eq!(models, ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]);
        assert_eq!(a[0].cost, usd(0.06));
        // gpt-4-turbo is unpriced: it keeps the first estimate.
        assert_eq!(a[1].cost, usd(0.06));
        assert_eq!(a[2].cost, usd(0.0015));
    }

    #[test]
    fn block_mode_has_one_attempt_and_cycles_stop() {
        let mut p = policy();
        p.mode = EnforcementMode::Block;
        assert_eq!(p.attempts("gpt-4", 10, Some(usd(1.0))).len(), 1);
        let mut p = policy();
        p.downgrades.insert("gpt-3.5-turbo".into(), "gpt-4".into());
        assert_eq!(p.attempts("gpt-4", 10, None).len(), 3);
    }

    #[test]
    fn prices_usage_exactly() {
        let p = policy();
        assert_eq!(p.pricing.cost("gpt-4", 1000, 500), Some(usd(0.06)));
        assert_eq!(p.pricing.cost("unknown", 1, 1), None);
    }

    #[test]
    fn alert_threshold_and_queue_wait() {
        let p = Policy {
            alert_threshold_ppm: Some(800_000),
            ..Policy::default()
        };
        assert!(!p.crosses_alert(79, 100));
        assert!(p.crosses_alert(80, 100));
        assert_eq!(queue_wait(Some(Nanos(5)), Nanos(10)), Some(Nanos(5)));
        assert_eq!(queue_wait(Some(Nanos(11)), Nanos(10)), None);
        assert_eq!(queue_wait(None, Nanos(10)), None);
    }
}
