//! Time as an integer count of nanoseconds, passed into the engine.

use std::time::Duration;

/// Nanoseconds: an instant (since the Unix epoch) or a duration.
///
/// The engine never reads a clock; callers pass `now` in, and tests drive a
/// fake clock forward instead of sleeping.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero: the epoch, or no time at all.
    pub const ZERO: Nanos = Nanos(0);
    /// One second.
    pub const SECOND: Nanos = Nanos(1_000_000_000);
    /// One minute.
    pub const MINUTE: Nanos = Nanos(60 * 1_000_000_000);
    /// One hour.
    pub const HOUR: Nanos = Nanos(3_600 * 1_000_000_000);
    /// One day.
    pub const DAY: Nanos = Nanos(86_400 * 1_000_000_000);

    /// Whole seconds.
    pub const fn from_secs(secs: u64) -> Nanos {
        Nanos(secs.saturating_mul(1_000_000_000))
    }

    /// Whole milliseconds.
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// The count of nanoseconds.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The sum, capped at the largest instant rather than wrapping.
    pub const fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    /// The difference, or zero if `other` is later.
    pub const fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }

    /// Whole seconds, rounded up: what `Retry-After` and reset headers carry,
    /// so a client that waits that long is never early.
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(1_000_000_000)
    }

    /// As a `Duration`.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for Duration {
    fn from(n: Nanos) -> Duration {
        Duration::from_nanos(n.0)
    }
}
