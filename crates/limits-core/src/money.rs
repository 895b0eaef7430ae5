//! Money as integer nano-dollars, so sums of many small costs never drift.

use std::fmt;

/// The largest amount accepted from a caller or a config file, in USD.
pub const MAX_USD: f64 = 1e9;

const NANOS_PER_USD: f64 = 1e9;

/// An amount of US dollars in integer nano-dollars (1e-9 USD).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NanoUsd(pub u64);

/// Why a dollar amount was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a finite number")]
    NotFinite,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {MAX_USD:e} USD")]
    TooLarge,
}

impl NanoUsd {
    pub const ZERO: NanoUsd = NanoUsd(0);

    /// Converts a caller's USD amount, rounding up to the next nano-dollar so
    /// the service never under-counts spend.
    pub fn try_from_usd(usd: f64) -> Result<NanoUsd, MoneyError> {
        if !usd.is_finite() {
            return Err(MoneyError::NotFinite);
        }
        if usd < 0.0 {
            return Err(MoneyError::Negative);
        }
        if usd > MAX_USD {
            return Err(MoneyError::TooLarge);
        }
        // `usd * 1e9` is at most 1e18, well inside u64 and exact to within one
        // unit in the last place; a tiny relative slack keeps values such as
        // 0.000001 (not exactly representable) from rounding up to 1001 nanos.
        let scaled = usd * NANOS_PER_USD;
        let nearest = scaled.round();
        let nanos = if (scaled - nearest).abs() <= nearest.abs() * 1e-12 {
            nearest
        } else {
            scaled.ceil()
        };
        Ok(NanoUsd(nanos as u64))
    }

    pub fn as_usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD
    }

    pub const fn saturating_add(self, other: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for NanoUsd {
    /// Dollars with at least two decimals and as many more as the amount
    /// needs, exactly: `100.00`, `78.50`, `0.000123`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        let mut digits = format!("{frac:09}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{whole}.{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_rounds_up() {
        assert_eq!(NanoUsd::try_from_usd(1.0), Ok(NanoUsd(1_000_000_000)));
        assert_eq!(NanoUsd::try_from_usd(0.000001), Ok(NanoUsd(1_000)));
        assert_eq!(NanoUsd::try_from_usd(0.1), Ok(NanoUsd(100_000_000)));
        assert_eq!(NanoUsd::try_from_usd(1e-10), Ok(NanoUsd(1)));
        assert_eq!(NanoUsd::try_from_usd(0.0), Ok(NanoUsd(0)));
        assert_eq!(
            NanoUsd::try_from_usd(1e9),
            Ok(NanoUsd(1_000_000_000_000_000_000))
        );
    }

    #[test]
    fn rejects_bad_amounts() {
        assert_eq!(NanoUsd::try_from_usd(f64::NAN), Err(MoneyError::NotFinite));
        assert_eq!(
            NanoUsd::try_from_usd(f64::INFINITY),
            Err(MoneyError::NotFinite)
        );
        assert_eq!(NanoUsd::try_from_usd(-0.01), Err(MoneyError::Negative));
        assert_eq!(NanoUsd::try_from_usd(1e9 + 1.0), Err(MoneyError::TooLarge));
    }

    #[test]
    fn ten_million_micro_dollars_sum_to_exactly_ten() {
        let one = NanoUsd::try_from_usd(0.000001).unwrap();
        let mut total = NanoUsd::ZERO;
        for _ in 0..10_000_000 {
            total = total.saturating_add(one);
        }
        assert_eq!(total, NanoUsd::try_from_usd(10.0).unwrap());
        assert_eq!(total.to_string(), "10.00");
    }

    #[test]
    fn displays_dollars() {
        assert_eq!(NanoUsd(100_000_000_000).to_string(), "100.00");
        assert_eq!(NanoUsd(78_500_000_000).to_string(), "78.50");
        assert_eq!(NanoUsd(123_000).to_string(), "0.000123");
        assert_eq!(NanoUsd(0).to_string(), "0.00");
    }
}
