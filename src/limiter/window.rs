//! Window arithmetic: epoch-aligned fixed windows (replicas agree on them without
//! talking), calendar periods in a timezone, and the sliding window's weights.

use jiff::{Timestamp, ToSpan, Zoned, tz::TimeZone};

use crate::rules::Unit;
use crate::rules::tree::Period;

/// The fixed window that contains `now`, for a window of `length` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First second of the window, since the epoch.
    pub start: u64,
    /// Seconds from `now` until the next window starts: between 1 and `length`, never 0.
    pub until_reset: u64,
}

impl Window {
    /// The window of `length` seconds (at least 1) that contains `now_secs`.
    pub fn containing(now_secs: u64, length: u64) -> Window {
        let length = length.max(1);
        let into = now_secs % length;
        Window {
            start: now_secs - into,
            until_reset: length - into,
        }
    }

    /// The window of `period` that contains `now_secs`.
    pub fn of(period: &Period, now_secs: u64) -> Window {
        match period {
            Period::Fixed(length) => Window::containing(now_secs, *length),
            Period::Calendar { unit, timezone } => Window::calendar(now_secs, *unit, timezone),
        }
    }

    /// The calendar day, ISO week (from Monday), month or year containing `now_secs` in
    /// `timezone`. Boundaries are local midnights, so a day across a DST change lasts 23
    /// or 25 hours; a midnight that does not exist starts at the next valid instant.
    pub fn calendar(now_secs: u64, unit: Unit, timezone: &TimeZone) -> Window {
        let now = Timestamp::from_second(now_secs as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        let local = Zoned::new(now, timezone.clone());
        let (start, next) =
            calendar_bounds(&local, unit).expect("calendar bounds stay inside jiff's range");
        let start = start.timestamp().as_second().max(0) as u64;
        let next = next.timestamp().as_second().max(0) as u64;
        Window {
            start,
            until_reset: next.saturating_sub(now_secs).max(1),
        }
    }
}

fn calendar_bounds(local: &Zoned, unit: Unit) -> Result<(Zoned, Zoned), jiff::Error> {
    let today = local.start_of_day()?;
    Ok(match unit {
        Unit::Week => {
            let back = local.weekday().to_monday_zero_offset();
            let start = today.checked_sub(i64::from(back).days())?.start_of_day()?;
            let next = start.checked_add(1.week())?.start_of_day()?;
            (start, next)
        }
        Unit::Month => {
            let start = local.first_of_month()?.start_of_day()?;
            (start.clone(), start.checked_add(1.month())?.start_of_day()?)
        }
        Unit::Year => {
            let start = local.first_of_year()?.start_of_day()?;
            (start.clone(), start.checked_add(1.year())?.start_of_day()?)
        }
        // Seconds, minutes and hours are not calendar periods; rules reject them, and a
        // day is the safe reading.
        _ => (today.clone(), today.tomorrow()?.start_of_day()?),
    })
}

/// The sliding window's weight of the previous fixed window, in millionths: the share of
/// it that the window ending now still covers.
pub fn previous_weight_ppm(now_us: u64, window: &Window, length_secs: u64) -> u64 {
    let length_us = u128::from(length_secs.max(1)) * 1_000_000;
    let elapsed_us = u128::from(now_us.saturating_sub(window.start * 1_000_000)).min(length_us);
    ((length_us - elapsed_us) * 1_000_000 / length_us) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_at_a_multiple_of_its_length() {
        let w = Window::containing(1_000_005, 60);
        assert_eq!(w.start, 999_960);
        assert_eq!(w.until_reset, 15);
    }

    #[test]
    fn at_a_boundary_the_full_window_remains() {
        let w = Window::containing(120, 60);
        assert_eq!(w.start, 120);
        assert_eq!(w.until_reset, 60);
    }

    #[test]
    fn the_last_second_of_a_window_has_one_second_left() {
        let w = Window::containing(179, 60);
        assert_eq!(w.start, 120);
        assert_eq!(w.until_reset, 1);
    }

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn secs(text: &str) -> u64 {
        text.parse::<Timestamp>().unwrap().as_second() as u64
    }

    #[test]
    fn a_calendar_month_ends_at_local_midnight_in_its_timezone() {
        // 2026-11-30 23:30 in Berlin (UTC+1) is still November there.
        let now = secs("2026-11-30T22:30:00Z");
        let w = Window::calendar(now, Unit::Month, &berlin());
        assert_eq!(w.start, secs("2026-10-31T23:00:00Z"));
        assert_eq!(now + w.until_reset, secs("2026-11-30T23:00:00Z"));
        // Half an hour later it is December in Berlin, still November in UTC.
        let w = Window::calendar(now + 1800, Unit::Month, &berlin());
        assert_eq!(w.start, secs("2026-11-30T23:00:00Z"));
        assert_eq!(now + 1800 + w.until_reset, secs("2026-12-31T23:00:00Z"));
    }

    #[test]
    fn a_month_spanning_the_dst_change_keeps_local_midnights() {
        // October 2026 in Berlin starts in summer time (UTC+2) and ends in winter time.
        let w = Window::calendar(secs("2026-10-15T12:00:00Z"), Unit::Month, &berlin());
        assert_eq!(w.start, secs("2026-09-30T22:00:00Z"));
        assert_eq!(
            secs("2026-10-15T12:00:00Z") + w.until_reset,
            secs("2026-10-31T23:00:00Z")
        );
    }

    #[test]
    fn the_day_of_the_dst_change_lasts_twenty_five_hours() {
        // 2026-10-25 in Berlin: clocks go back at 03:00.
        let w = Window::calendar(secs("2026-10-25T10:00:00Z"), Unit::Day, &berlin());
        assert_eq!(w.start, secs("2026-10-24T22:00:00Z"));
        assert_eq!(
            w.start + 25 * 3600,
            secs("2026-10-25T10:00:00Z") + w.until_reset
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-22 is a Sunday.
        let w = Window::calendar(secs("2026-11-22T12:00:00Z"), Unit::Week, &TimeZone::UTC);
        assert_eq!(w.start, secs("2026-11-16T00:00:00Z"));
        assert_eq!(
            secs("2026-11-22T12:00:00Z") + w.until_reset,
            secs("2026-11-23T00:00:00Z")
        );
    }

    #[test]
    fn years_follow_the_calendar() {
        let w = Window::calendar(secs("2026-11-22T12:00:00Z"), Unit::Year, &TimeZone::UTC);
        assert_eq!(w.start, secs("2026-01-01T00:00:00Z"));
        assert_eq!(
            secs("2026-11-22T12:00:00Z") + w.until_reset,
            secs("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn the_previous_window_weighs_less_as_the_current_one_fills() {
        let w = Window::containing(120, 60);
        assert_eq!(previous_weight_ppm(120_000_000, &w, 60), 1_000_000);
        assert_eq!(previous_weight_ppm(150_000_000, &w, 60), 500_000);
        assert_eq!(previous_weight_ppm(179_000_000, &w, 60), 16_666);
        assert_eq!(previous_weight_ppm(180_000_000, &w, 60), 0);
    }

    #[test]
    fn per_second_windows_always_reset_in_one_second() {
        for now in [0, 1, 17, 1_700_000_000] {
            assert_eq!(
                Window::containing(now, 1),
                Window {
                    start: now,
                    until_reset: 1
                }
            );
        }
    }
}
