//! The HTTP headers a gateway copies onto its response, computed from the
//! limit statuses: the most restrictive limit decides each header.

use crate::limits::{LimitStatus, Resource};
use crate::money::NanoUsd;
use crate::time::Nanos;

/// `a` is more restrictive than `b`: an exceeded limit beats one that is not;
/// then the smaller fraction remaining; then the later reset.
fn tighter(a: &LimitStatus, b: &LimitStatus) -> bool {
    if a.exceeded != b.exceeded {
        return a.exceeded;
    }
    // remaining_a / limit_a < remaining_b / limit_b, without division.
    let lhs = u128::from(a.remaining()) * u128::from(b.limit);
    let rhs = u128::from(b.remaining()) * u128::from(a.limit);
    if lhs != rhs {
        return lhs < rhs;
    }
    a.reset_at > b.reset_at
}

/// The most restrictive status among those of a resource kind.
pub fn most_restrictive(
    statuses: &[LimitStatus],
    pick: impl Fn(&LimitStatus) -> bool,
) -> Option<&LimitStatus> {
    statuses
        .iter()
        .filter(|s| pick(s))
        .fold(None, |best: Option<&LimitStatus>, s| match best {
            Some(b) if !tighter(s, b) => Some(b),
            _ => Some(s),
        })
}

/// The most restrictive budget: the one with the highest fraction used.
pub fn budget_summary(statuses: &[LimitStatus]) -> Option<&LimitStatus> {
    most_restrictive(statuses, |s| s.kind.is_budget())
}

/// Unix seconds (rounded up) of a reset, or of `now` for an empty window.
fn reset_secs(reset_at: Option<Nanos>, now: Nanos) -> u64 {
    reset_at.unwrap_or(now).as_secs_ceil()
}

/// The names of the headers, in the order they are given.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Name {
    #[default]
    /// `X-RateLimit-Limit`: the most restrictive request-rate limit.
    RateLimitLimit,
    /// `X-RateLimit-Remaining`: requests left under that limit.
    RateLimitRemaining,
    /// `X-RateLimit-Reset`: when that limit's oldest requests expire (Unix
    /// seconds, rounded up).
    RateLimitReset,
    /// `Retry-After`: seconds before a denied request could fit.
    RetryAfter,
    /// `X-Budget-Limit`: the most restrictive budget, in USD.
    BudgetLimit,
    /// `X-Budget-Used`: USD used of that budget.
    BudgetUsed,
    /// `X-Budget-Remaining`: USD left of that budget.
    BudgetRemaining,
    /// `X-Budget-Reset`: when that budget's oldest spend expires (Unix
    /// seconds, rounded up).
    BudgetReset,
    /// `X-RateLimit-Scope`: the model scope (its pattern) of the rate
    /// limit the `X-RateLimit-*` headers describe, when a scope's.
    RateLimitScope,
    /// `X-Budget-Scope`: the model scope of the budget the `X-Budget-*`
    /// headers describe, when a scope's.
    BudgetScope,
}

impl Name {
    /// Every header name, in the order an answer gives them.
    pub const ALL: [Name; 10] = [
        Name::RateLimitLimit,
        Name::RateLimitRemaining,
        Name::RateLimitReset,
        Name::RetryAfter,
        Name::BudgetLimit,
        Name::BudgetUsed,
        Name::BudgetRemaining,
        Name::BudgetReset,
        Name::RateLimitScope,
        Name::BudgetScope,
    ];

    /// The position in [`Name::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name as gateways send it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Name::RateLimitLimit => "X-RateLimit-Limit",
            Name::RateLimitRemaining => "X-RateLimit-Remaining",
            Name::RateLimitReset => "X-RateLimit-Reset",
            Name::RetryAfter => "Retry-After",
            Name::BudgetLimit => "X-Budget-Limit",
            Name::BudgetUsed => "X-Budget-Used",
            Name::BudgetRemaining => "X-Budget-Remaining",
            Name::BudgetReset => "X-Budget-Reset",
            Name::RateLimitScope => "X-RateLimit-Scope",
            Name::BudgetScope => "X-Budget-Scope",
        }
    }

    /// The name in lower case, as HTTP/2 (and gRPC metadata) carries it.
    pub const fn lowercase(self) -> &'static str {
        match self {
            Name::RateLimitLimit => "x-ratelimit-limit",
            Name::RateLimitRemaining => "x-ratelimit-remaining",
            Name::RateLimitReset => "x-ratelimit-reset",
            Name::RetryAfter => "retry-after",
            Name::BudgetLimit => "x-budget-limit",
            Name::BudgetUsed => "x-budget-used",
            Name::BudgetRemaining => "x-budget-remaining",
            Name::BudgetReset => "x-budget-reset",
            Name::RateLimitScope => "x-ratelimit-scope",
            Name::BudgetScope => "x-budget-scope",
        }
    }
}

/// The longest header value: a dollar amount ([`crate::money::USD_TEXT_MAX`]
/// bytes; an integer takes at most 20).
const VALUE_MAX: usize = crate::money::USD_TEXT_MAX;

/// One header value, held inline: an answer's headers are built on every
/// check, so they are formatted without `core::fmt` and without allocating
/// (a model scope's pattern is shared with its limits).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Value {
    len: u8,
    text: [u8; VALUE_MAX],
    shared: Option<std::sync::Arc<str>>,
}

impl Value {
    fn int(n: u64) -> Value {
        let mut v = Value::default();
        v.len = crate::money::write_u64(&mut v.text, n) as u8;
        v
    }

    fn usd(n: NanoUsd) -> Value {
        let mut v = Value::default();
        v.len = n.write_text(&mut v.text) as u8;
        v
    }

    fn shared(text: &std::sync::Arc<str>) -> Value {
        Value {
            shared: Some(std::sync::Arc::clone(text)),
            ..Value::default()
        }
    }

    /// The value's bytes (ASCII digits and at most one point, or a model
    /// scope's pattern).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.shared {
            Some(text) => text.as_bytes(),
            None => &self.text[..usize::from(self.len)],
        }
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        match &self.shared {
            Some(text) => text,
            // Only digits and a point are written inline.
            None => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The headers of one answer, in the order [`header_values`] documents, held
/// inline (no allocation).
#[derive(Clone, Debug, Default)]
pub struct Headers {
    len: usize,
    entries: [(Name, Value); Name::ALL.len()],
}

impl Headers {
    fn push(&mut self, name: Name, value: Value) {
        self.entries[self.len] = (name, value);
        self.len += 1;
    }

    /// How many headers the answer has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the answer has no headers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Name, &Value)> {
        self.entries[..self.len].iter().map(|(n, v)| (*n, v))
    }

    /// The value of a header, if it is present.
    pub fn get(&self, name: Name) -> Option<&str> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The headers to add, in a fixed order:
/// `X-RateLimit-Limit`, `-Remaining`, `-Reset` from the most restrictive
/// request or token rate limit; `Retry-After` (seconds, rounded up) when the
/// request was denied and can be retried; `X-Budget-Limit`, `-Used`,
/// `-Remaining` (USD) and `-Reset` from the most used budget; then
/// `X-RateLimit-Scope` and `X-Budget-Scope` when that rate limit or budget
/// is a model scope's.
pub fn header_values(statuses: &[LimitStatus], retry_after: Option<Nanos>, now: Nanos) -> Headers {
    let mut out = Headers::default();
    let rate = most_restrictive(statuses, |s| {
        matches!(s.kind.resource(), Resource::Requests | Resource::Tokens)
    });
    if let Some(s) = rate {
        out.push(Name::RateLimitLimit, Value::int(s.limit));
        out.push(Name::RateLimitRemaining, Value::int(s.remaining()));
        out.push(
            Name::RateLimitReset,
            Value::int(reset_secs(s.reset_at, now)),
        );
    }
    if let Some(r) = retry_after {
        out.push(Name::RetryAfter, Value::int(r.as_secs_ceil().max(1)));
    }
    let budget = budget_summary(statuses);
    if let Some(b) = budget {
        out.push(Name::BudgetLimit, Value::usd(NanoUsd(b.limit)));
        out.push(Name::BudgetUsed, Value::usd(NanoUsd(b.used)));
        out.push(Name::BudgetRemaining, Value::usd(NanoUsd(b.remaining())));
        out.push(Name::BudgetReset, Value::int(reset_secs(b.reset_at, now)));
    }
    if let Some(scope) = rate.and_then(|s| s.scope.as_ref()) {
        out.push(Name::RateLimitScope, Value::shared(scope));
    }
    if let Some(scope) = budget.and_then(|s| s.scope.as_ref()) {
        out.push(Name::BudgetScope, Value::shared(scope));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitKind;

    fn st(kind: LimitKind, limit: u64, used: u64, exceeded: bool) -> LimitStatus {
        LimitStatus {
            subject: 0,
            kind,
            limit,
            used,
            reset_at: Some(Nanos::from_secs(100)),
            exceeded,
            scope: None,
        }
    }

    #[test]
    fn the_most_restrictive_limit_decides() {
        let s = vec![
            st(LimitKind::RequestsPerSecond, 10, 2, false),
            st(LimitKind::RequestsPerMinute, 100, 95, false),
            st(
                LimitKind::BudgetDaily,
                100_000_000_000,
                78_500_000_000,
                false,
            ),
            st(
                LimitKind::BudgetMonthly,
                2_500_000_000_000,
                78_500_000_000,
                false,
            ),
        ];
        let h = header_values(&s, None, Nanos::from_secs(50));
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("X-RateLimit-Limit"), Some("100"));
        assert_eq!(get("X-RateLimit-Remaining"), Some("5"));
        assert_eq!(get("X-RateLimit-Reset"), Some("100"));
        assert_eq!(get("Retry-After"), None);
        assert_eq!(get("X-Budget-Limit"), Some("100.00"));
        assert_eq!(get("X-Budget-Used"), Some("78.50"));
        assert_eq!(get("X-Budget-Remaining"), Some("21.50"));
    }

    #[test]
    fn an_exceeded_limit_wins_and_retry_after_rounds_up() {
        let s = vec![
            st(LimitKind::RequestsPerSecond, 10, 10, true),
            st(LimitKind::RequestsPerMinute, 100, 99, false),
        ];
        let h = header_values(&s, Some(Nanos::from_millis(1_200)), Nanos::ZERO);
        assert_eq!(h.get(Name::RateLimitLimit), Some("10"));
        assert_eq!(h.get(Name::RetryAfter), Some("2"));
        assert!(!h.iter().any(|(k, _)| k.as_str().starts_with("X-Budget")));
    }

    #[test]
    fn names_and_values_read_back() {
        let s = vec![
            st(LimitKind::TokensPerMinute, u64::MAX, 0, false),
            st(LimitKind::BudgetHourly, u64::MAX, 1, false),
        ];
        let h = header_values(&s, Some(Nanos(1)), Nanos::ZERO);
        assert_eq!(h.len(), 8);
        assert_eq!(h.get(Name::RateLimitLimit), Some("18446744073709551615"));
        assert_eq!(h.get(Name::RetryAfter), Some("1"));
        assert_eq!(h.get(Name::BudgetLimit), Some("18446744073.709551615"));
        assert_eq!(h.get(Name::BudgetUsed), Some("0.000000001"));
        assert_eq!(h.get(Name::BudgetRemaining), Some("18446744073.709551614"));
        for (i, name) in Name::ALL.into_iter().enumerate() {
            assert_eq!(name.index(), i);
            assert_eq!(name.lowercase(), name.as_str().to_ascii_lowercase());
        }
        assert!(header_values(&[], None, Nanos::ZERO).is_empty());
    }

    #[test]
    fn a_model_scope_is_named_when_its_limit_decides() {
        let mut s = vec![
            st(LimitKind::RequestsPerMinute, 100, 10, false),
            st(LimitKind::BudgetDaily, 100, 10, false),
        ];
        let plain = header_values(&s, None, Nanos::ZERO);
        assert_eq!(plain.get(Name::RateLimitScope), None);
        assert_eq!(plain.get(Name::BudgetScope), None);
        let mut scoped = st(LimitKind::BudgetDaily, 100, 90, false);
        scoped.scope = Some("gpt-4*".into());
        s.push(scoped);
        let h = header_values(&s, None, Nanos::ZERO);
        assert_eq!(h.get(Name::BudgetScope), Some("gpt-4*"));
        assert_eq!(h.get(Name::RateLimitScope), None);
        assert_eq!(
            h.len(),
            8,
            "three rate headers, four budget headers, the scope"
        );
    }
}
