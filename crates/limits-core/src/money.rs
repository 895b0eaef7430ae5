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
    /// Not a finite number (NaN or infinite).
    NotFinite,
    #[error("must not be negative")]
    /// Below zero.
    Negative,
    #[error("must be at most {MAX_USD:e} USD")]
    /// Above [`MAX_USD`].
    TooLarge,
}

impl NanoUsd {
    /// No money.
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

    /// The amount in USD, as a float (for display and the API; never summed).
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD
    }

    /// The sum, capped at the largest amount rather than wrapping.
    pub const fn saturating_add(self, other: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(other.0))
    }
}

/// Writes `n` in decimal at the start of `out` and returns the length.
/// `core::fmt` costs more than the formatting itself on the response path
/// (three amounts and four integers per answer), so this uses `itoa`.
///
/// Panics if `out` is shorter than the number (20 bytes always suffice).
pub fn write_u64(out: &mut [u8], n: u64) -> usize {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    out[..digits.len()].copy_from_slice(digits);
    digits.len()
}

/// The longest text of a `NanoUsd`: 11 whole digits, a point, 9 decimals.
pub const USD_TEXT_MAX: usize = 21;

impl NanoUsd {
    /// Writes what `Display` shows (`100.00`, `78.50`, `0.000123`) at the
    /// start of `out`, without `core::fmt`, and returns the length.
    ///
    /// Panics if `out` is shorter than the text ([`USD_TEXT_MAX`] bytes
    /// always suffice).
    pub fn write_text(self, out: &mut [u8]) -> usize {
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        let mut len = write_u64(out, whole);
        out[len] = b'.';
        len += 1;
        // The nine decimals with their leading zeros: `1_frac` has ten
        // digits, and its first one is dropped.
        let mut buf = itoa::Buffer::new();
        let decimals = &buf.format(frac + 1_000_000_000).as_bytes()[1..];
        // At least two decimals, and as many more as the amount needs.
        let mut keep = decimals.len();
        while keep > 2 && decimals[keep - 1] == b'0' {
            keep -= 1;
        }
        out[len..len + keep].copy_from_slice(&decimals[..keep]);
        len + keep
    }
}

impl fmt::Display for NanoUsd {
    /// Dollars with at least two decimals and as many more as the amount
    /// needs, exactly: `100.00`, `78.50`, `0.000123`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; USD_TEXT_MAX];
        let len = self.write_text(&mut buf);
        // Digits and a point only: always ASCII.
        f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
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
        assert_eq!(NanoUsd(1).to_string(), "0.000000001");
        assert_eq!(NanoUsd(u64::MAX).to_string(), "18446744073.709551615");
    }

    /// The text is byte-identical to the `core::fmt` one it replaced,
    /// which stays here as the reference.
    #[test]
    fn text_matches_the_fmt_reference() {
        fn reference(n: u64) -> String {
            let whole = n / 1_000_000_000;
            let frac = n % 1_000_000_000;
            let mut digits = format!("{frac:09}");
            while digits.len() > 2 && digits.ends_with('0') {
                digits.pop();
            }
            format!("{whole}.{digits}")
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut samples = vec![0, 1, 9, 10, 99, 100, 999_999_999, 1_000_000_000, u64::MAX];
        for shift in 0..64 {
            samples.push(1u64 << shift);
            samples.push((1u64 << shift) - 1);
        }
        for _ in 0..100_000 {
            // xorshift: a spread of magnitudes and trailing zeros.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x >> (x % 64));
            samples.push((x >> (x % 64)) / 1_000_000 * 1_000_000);
        }
        for n in samples {
            assert_eq!(NanoUsd(n).to_string(), reference(n), "{n}");
            let mut buf = [0u8; 20];
            let len = write_u64(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
    }
}
