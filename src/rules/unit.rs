//! Time units of the reference format, and their lengths in seconds.

use std::fmt;
use std::str::FromStr;

/// A rate-limit unit as the reference service defines it.
///
/// Month and year are fixed lengths (30 and 365 days), exactly as the reference counts
/// them, so that an unchanged config keeps its old answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The window length in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The upper-case name used by the reference's YAML, protobuf and config dump.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text was not one of the seven unit names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit unit '{0}'")]
pub struct InvalidUnit(pub String);

impl FromStr for Unit {
    type Err = InvalidUnit;

    /// Parses a unit name, ignoring case, as the reference does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| InvalidUnit(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_parse_in_any_case() {
        assert_eq!("second".parse::<Unit>(), Ok(Unit::Second));
        assert_eq!("Minute".parse::<Unit>(), Ok(Unit::Minute));
        assert_eq!("YEAR".parse::<Unit>(), Ok(Unit::Year));
        assert!("fortnight".parse::<Unit>().is_err());
        assert!("".parse::<Unit>().is_err());
    }

    #[test]
    fn month_and_year_are_fixed_lengths_like_the_reference() {
        assert_eq!(Unit::Month.seconds(), 2_592_000);
        assert_eq!(Unit::Year.seconds(), 31_536_000);
        assert_eq!(Unit::Week.seconds(), 7 * Unit::Day.seconds());
    }
}
