//! The limits of a subject as the command line names them: the config's
//! own keys (`daily`, `requests_per_minute`, `max_concurrent`), so a name
//! an operator reads in a table is the one they type and the one the
//! config file uses.

use clap::ValueEnum;
use clap::builder::PossibleValue;
use limits_core::{LimitKind, Resource};
use limits_server::api::convert::pb_kind;
use limits_server::pb;

/// One limit kind, as `--window` takes it and tables show it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Kind(pub LimitKind);

/// Every kind, in the API's order.
const ALL: [Kind; LimitKind::LIMITS.len()] = {
    let mut out = [Kind(LimitKind::MaxConcurrent); LimitKind::LIMITS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = Kind(LimitKind::LIMITS[i]);
        i += 1;
    }
    out
};

impl Kind {
    /// The config key, e.g. `daily`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The short forms `limits set` uses as flags, accepted by `--window`
    /// too.
    fn short(self) -> Option<&'static str> {
        match self.0 {
            LimitKind::RequestsPerSecond => Some("rps"),
            LimitKind::RequestsPerMinute => Some("rpm"),
            LimitKind::RequestsPerHour => Some("rph"),
            LimitKind::TokensPerMinute => Some("tpm"),
            LimitKind::TokensPerHour => Some("tph"),
            LimitKind::InputTokensPerMinute => Some("itpm"),
            LimitKind::InputTokensPerHour => Some("itph"),
            LimitKind::OutputTokensPerMinute => Some("otpm"),
            LimitKind::OutputTokensPerHour => Some("otph"),
            _ => None,
        }
    }

    /// The kind on the wire.
    pub fn pb(self) -> pb::LimitKind {
        pb_kind(self.0)
    }

    /// The kind of a wire value; `None` for unspecified or unknown values.
    pub fn from_pb(raw: i32) -> Option<Kind> {
        ALL.into_iter().find(|k| k.pb() as i32 == raw)
    }

    /// Whether amounts of this kind are US dollars.
    pub fn is_usd(self) -> bool {
        self.0.resource() == Resource::Cost
    }

    /// What an adjustment of this kind counts; `None` for the concurrency
    /// limit, which has no window to adjust.
    pub fn resource(self) -> Option<pb::admin::Resource> {
        match self.0.resource() {
            Resource::Cost => Some(pb::admin::Resource::Usd),
            Resource::Requests => Some(pb::admin::Resource::Requests),
            Resource::Tokens | Resource::InputTokens | Resource::OutputTokens => {
                Some(pb::admin::Resource::Tokens)
            }
            Resource::Leases => None,
        }
    }
}

impl ValueEnum for Kind {
    fn value_variants<'a>() -> &'a [Self] {
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let value = PossibleValue::new(self.name());
        Some(match self.short() {
            Some(short) => value.alias(short),
            None => value,
        })
    }
}

/// The name a table shows for a wire kind (`kind N` for one this build
/// does not know, from a newer server).
pub fn name_of(raw: i32) -> String {
    match Kind::from_pb(raw) {
        Some(k) => k.name().to_owned(),
        None => format!("kind {raw}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_kind_has_a_name_and_comes_back() {
        for k in ALL {
            assert_eq!(Kind::from_pb(k.pb() as i32), Some(k));
        }
        assert_eq!(Kind::from_pb(pb::LimitKind::Unspecified as i32), None);
        assert_eq!(
            Kind::from_str("rpm", false),
            Ok(Kind(LimitKind::RequestsPerMinute))
        );
        assert_eq!(
            Kind::from_str("daily", false),
            Ok(Kind(LimitKind::BudgetDaily))
        );
    }
}
