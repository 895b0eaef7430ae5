//! Calendar budget periods: a daily budget that resets at local midnight, a
//! weekly one on a given weekday, a monthly one on a given day of the month,
//! in an IANA time zone, correct across daylight-saving changes.
//!
//! A calendar budget is counted in a window of its own (a calendar slot,
//! see [`LimitKind::calendar`](crate::LimitKind::calendar)) whose buckets
//! are whole periods: an amount charged lands in the bucket of the period
//! it was charged in and leaves when that period ends. The bucket's index
//! is the period's last nanosecond, so that the window arithmetic shared
//! with rolling windows (an amount leaves when its bucket ends, with no
//! window length after it) needs no calendar to expire or read it; only
//! opening a period's bucket asks the calendar where that period ends.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

use crate::time::Nanos;

/// A calendar period.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// From local midnight to the next.
    Day = 0,
    /// Seven days from local midnight of the week's first day.
    Week = 1,
    /// From local midnight of the anchor day to the same day next month.
    Month = 2,
}

/// Why a calendar could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The time zone is not in the IANA database this build carries.
    #[error("unknown time zone {0:?} (an IANA name such as \"Europe/Paris\" or \"UTC\")")]
    UnknownZone(String),
    /// The week's first day is not 0 (Monday) to 6 (Sunday).
    #[error("week start {0} is not 0 (Monday) to 6 (Sunday)")]
    WeekStart(u8),
    /// The monthly anchor day is not 1 to 31.
    #[error("month anchor day {0} is not 1 to 31")]
    AnchorDay(u8),
}

/// Where calendar periods begin: a time zone, the week's first day and the
/// month's anchor day. Shared by every subject of one config entry; it
/// remembers the current period of each kind, so that finding it is one
/// atomic load until the period ends.
pub struct Calendar {
    zone: TimeZone,
    zone_name: Box<str>,
    /// 0 = Monday … 6 = Sunday.
    week_start: u8,
    /// 1 to 31; a month shorter than this starts its period on its last day.
    anchor_day: u8,
    /// Per period: the last one found, as `end seconds << 24 | length
    /// seconds` (0 when none yet). One word, so a reader never pairs the
    /// start of one period with the end of another.
    current: [AtomicU64; 3],
}

/// Seconds fit 40 bits until the year 36812; a period's length (at most 32
/// days) fits 24.
const LENGTH_BITS: u32 = 24;

impl Calendar {
    /// UTC, weeks from Monday, months from the 1st.
    pub fn utc() -> Calendar {
        Calendar::new("UTC", 0, 1).expect("UTC is always known")
    }

    /// A calendar in the IANA time zone `zone`, with weeks starting on
    /// `week_start` (0 = Monday … 6 = Sunday) and months on `anchor_day`
    /// (1 to 31, clamped to each month's length).
    pub fn new(zone: &str, week_start: u8, anchor_day: u8) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(zone).map_err(|_| CalendarError::UnknownZone(zone.to_owned()))?;
        if week_start > 6 {
            return Err(CalendarError::WeekStart(week_start));
        }
        if !(1..=31).contains(&anchor_day) {
            return Err(CalendarError::AnchorDay(anchor_day));
        }
        Ok(Calendar {
            zone: tz,
            zone_name: zone.into(),
            week_start,
            anchor_day,
            current: Default::default(),
        })
    }

    /// The time zone's IANA name, as configured.
    pub fn zone(&self) -> &str {
        &self.zone_name
    }

    /// The week's first day: 0 = Monday … 6 = Sunday.
    pub fn week_start(&self) -> u8 {
        self.week_start
    }

    /// The week's first day by name (`monday` … `sunday`).
    pub fn week_start_name(&self) -> &'static str {
        WEEKDAYS[usize::from(self.week_start)]
    }

    /// The day of the month monthly periods start on (1 to 31).
    pub fn anchor_day(&self) -> u8 {
        self.anchor_day
    }

    /// When the period containing `now` ends (the next boundary).
    #[inline]
    pub fn end(&self, period: Period, now: Nanos) -> Nanos {
        self.period(period, now).1
    }

    /// The period containing `now`: `[start, end)`.
    #[inline]
    pub fn period(&self, period: Period, now: Nanos) -> (Nanos, Nanos) {
        let packed = self.current[period as usize].load(Ordering::Relaxed);
        let end = packed >> LENGTH_BITS;
        let start = end.saturating_sub(packed & ((1 << LENGTH_BITS) - 1));
        let (start, end) = (Nanos::from_secs(start), Nanos::from_secs(end));
        if packed != 0 && start <= now && now < end {
            return (start, end);
        }
        self.find(period, now)
    }

    #[inline(never)]
    fn find(&self, period: Period, now: Nanos) -> (Nanos, Nanos) {
        let (start, end) = self.bounds(period, now);
        let (s, e) = (start.0 / 1_000_000_000, end.0 / 1_000_000_000);
        if e < 1 << (64 - LENGTH_BITS) && e - s < 1 << LENGTH_BITS {
            self.current[period as usize].store(e << LENGTH_BITS | (e - s), Ordering::Relaxed);
        }
        (start, end)
    }

    /// The period's bounds, from the time zone's rules.
    fn bounds(&self, period: Period, now: Nanos) -> (Nanos, Nanos) {
        let ts = Timestamp::from_nanosecond(i128::from(now.0)).unwrap_or(Timestamp::MAX);
        let today = ts.to_zoned(self.zone.clone()).date();
        let (first, next) = match period {
            Period::Day => (today, today.tomorrow().unwrap_or(Date::MAX)),
            Period::Week => {
                let offset = (i16::from(today.weekday().to_monday_zero_offset())
                    - i16::from(self.week_start))
                .rem_euclid(7);
                let first = today
                    .checked_sub(jiff::Span::new().days(offset))
                    .unwrap_or(Date::MIN);
                (
                    first,
                    first
                        .checked_add(jiff::Span::new().days(7))
                        .unwrap_or(Date::MAX),
                )
            }
            Period::Month => {
                let this = anchored(today, 0, self.anchor_day);
                if today >= this {
                    (this, anchored(today, 1, self.anchor_day))
                } else {
                    (anchored(today, -1, self.anchor_day), this)
                }
            }
        };
        (self.midnight(first), self.midnight(next))
    }

    /// The first instant of a local date (later than midnight when a
    /// daylight-saving change skips midnight).
    fn midnight(&self, date: Date) -> Nanos {
        let instant = date
            .to_zoned(self.zone.clone())
            .and_then(|z| z.start_of_day())
            .map(|z| z.timestamp().as_nanosecond())
            .unwrap_or(i128::MAX);
        Nanos(u64::try_from(instant.max(0)).unwrap_or(u64::MAX))
    }
}

/// The anchor day of the month `months` away from `date`'s, clamped to that
/// month's length.
fn anchored(date: Date, months: i8, anchor_day: u8) -> Date {
    let first = date.first_of_month();
    let month = match months {
        0 => first,
        m => first
            .checked_add(jiff::Span::new().months(m))
            .unwrap_or(first),
    };
    let day = (anchor_day as i8).min(month.days_in_month());
    Date::new(month.year(), month.month(), day).unwrap_or(month)
}

impl Clone for Calendar {
    fn clone(&self) -> Calendar {
        Calendar {
            zone: self.zone.clone(),
            zone_name: self.zone_name.clone(),
            week_start: self.week_start,
            anchor_day: self.anchor_day,
            current: Default::default(),
        }
    }
}

/// Calendars are equal when they draw the same boundaries: same zone name,
/// week start and anchor day (what each remembers is not compared).
impl PartialEq for Calendar {
    fn eq(&self, other: &Calendar) -> bool {
        self.zone_name == other.zone_name
            && self.week_start == other.week_start
            && self.anchor_day == other.anchor_day
    }
}

impl Eq for Calendar {}

impl fmt::Debug for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calendar")
            .field("zone", &self.zone_name)
            .field("week_start", &self.week_start_name())
            .field("anchor_day", &self.anchor_day)
            .finish()
    }
}

/// The weekdays' names, Monday first, as config spells them.
pub const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A weekday's number (0 = Monday … 6 = Sunday) by its name, in any case.
pub fn weekday(name: &str) -> Option<u8> {
    WEEKDAYS
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

// Keep the Monday-first numbering in step with jiff's.
const _: () = assert!(Weekday::Monday.to_monday_zero_offset() == 0);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Nanos {
        let ts: Timestamp = s.parse().unwrap();
        Nanos(u64::try_from(ts.as_nanosecond()).unwrap())
    }

    #[test]
    fn a_day_ends_at_local_midnight() {
        let c = Calendar::new("America/New_York", 0, 1).unwrap();
        assert_eq!(
            c.period(Period::Day, at("2026-03-05T15:00:00Z")),
            (at("2026-03-05T05:00:00Z"), at("2026-03-06T05:00:00Z"))
        );
    }

    #[test]
    fn days_across_daylight_saving_changes_are_23_and_25_hours() {
        let c = Calendar::new("America/New_York", 0, 1).unwrap();
        // Spring forward on 2026-03-08: a 23-hour day.
        assert_eq!(
            c.period(Period::Day, at("2026-03-08T12:00:00Z")),
            (at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z"))
        );
        // Fall back on 2026-11-01: a 25-hour day.
        assert_eq!(
            c.period(Period::Day, at("2026-11-01T12:00:00Z")),
            (at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z"))
        );
    }

    #[test]
    fn a_zone_that_skips_midnight_starts_the_day_when_it_resumes() {
        // Santiago springs forward at midnight: 2026-09-06 starts at 01:00.
        let c = Calendar::new("America/Santiago", 0, 1).unwrap();
        let (start, _) = c.period(Period::Day, at("2026-09-06T12:00:00Z"));
        assert_eq!(start, at("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn weeks_start_on_the_configured_day() {
        let monday = Calendar::new("UTC", 0, 1).unwrap();
        let sunday = Calendar::new("UTC", 6, 1).unwrap();
        // 2026-12-09 is a Wednesday.
        let now = at("2026-12-09T10:00:00Z");
        assert_eq!(
            monday.period(Period::Week, now),
            (at("2026-12-07T00:00:00Z"), at("2026-12-14T00:00:00Z"))
        );
        assert_eq!(
            sunday.period(Period::Week, now),
            (at("2026-12-06T00:00:00Z"), at("2026-12-13T00:00:00Z"))
        );
        // On the first day itself, the week is the one it starts.
        assert_eq!(
            monday.period(Period::Week, at("2026-12-07T00:00:00Z")).0,
            at("2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn months_start_on_the_anchor_day_clamped_to_the_month() {
        let first = Calendar::new("UTC", 0, 1).unwrap();
        assert_eq!(
            first.period(Period::Month, at("2026-02-14T00:00:00Z")),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        let late = Calendar::new("UTC", 0, 31).unwrap();
        // Before February's clamped anchor (the 28th): the period began on
        // January 31st.
        assert_eq!(
            late.period(Period::Month, at("2026-02-14T00:00:00Z")),
            (at("2026-01-31T00:00:00Z"), at("2026-02-28T00:00:00Z"))
        );
        assert_eq!(
            late.period(Period::Month, at("2026-02-28T00:00:00Z")),
            (at("2026-02-28T00:00:00Z"), at("2026-03-31T00:00:00Z"))
        );
        // December into January crosses the year.
        let mid = Calendar::new("Asia/Tokyo", 0, 15).unwrap();
        assert_eq!(
            mid.period(Period::Month, at("2026-12-20T00:00:00Z")),
            (at("2026-12-14T15:00:00Z"), at("2027-01-14T15:00:00Z"))
        );
    }

    #[test]
    fn the_remembered_period_is_only_used_inside_it() {
        let c = Calendar::new("Europe/Paris", 0, 1).unwrap();
        let d1 = c.end(Period::Day, at("2026-06-01T12:00:00Z"));
        assert_eq!(d1, at("2026-06-01T22:00:00Z"));
        // Later and earlier instants find their own periods.
        assert_eq!(
            c.end(Period::Day, at("2026-06-01T22:00:00Z")),
            at("2026-06-02T22:00:00Z")
        );
        assert_eq!(
            c.end(Period::Day, at("2026-05-31T12:00:00Z")),
            at("2026-05-31T22:00:00Z")
        );
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(matches!(
            Calendar::new("Mars/Olympus", 0, 1),
            Err(CalendarError::UnknownZone(_))
        ));
        assert_eq!(
            Calendar::new("UTC", 7, 1).unwrap_err(),
            CalendarError::WeekStart(7)
        );
        assert_eq!(
            Calendar::new("UTC", 0, 0).unwrap_err(),
            CalendarError::AnchorDay(0)
        );
    }
}
