//! Exact money: integer micro-units (one millionth of a currency unit) and a currency code.
//!
//! Amounts enter and leave as decimal strings (`"100.00"`, `"0.008850"`) and never pass
//! through floating point. Costs are rounded once, when usage is priced (see
//! [`cost_micros`]); every sum after that is exact integer addition.

use std::fmt;
use std::str::FromStr;

/// Micro-units per currency unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// The largest amount accepted anywhere: one trillion units.
pub const MAX_MICROS: i64 = 1_000_000_000_000 * MICROS_PER_UNIT;

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a currency code is ASCII")
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(format!(
                "'{s}' is not an ISO 4217 currency code (three upper-case letters, e.g. USD)"
            )),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a non-negative decimal amount (`"3"`, `"3.5"`, `"0.000001"`) into micro-units.
pub fn parse_micros(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "'{text}' is not an amount (a non-negative decimal with at most 6 decimal places, e.g. 100.00)"
        )
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 6
        || (text.contains('.') && fraction.is_empty())
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let fraction: i64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|w| w.checked_add(fraction))
        .filter(|m| *m <= MAX_MICROS)
        .ok_or_else(|| {
            format!("'{text}' is larger than the largest amount accepted (1000000000000)")
        })
}

/// Formats micro-units as an exact decimal with six places: `8850` is `"0.008850"`.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        abs / MICROS_PER_UNIT as u64,
        abs % MICROS_PER_UNIT as u64
    )
}

/// The cost of `tokens` at `micros_per_million` (the price of a million tokens), rounded
/// half up to a whole micro-unit. This is the one place money is rounded.
pub fn cost_micros(tokens: u64, micros_per_million: i64) -> i64 {
    let exact = i128::from(tokens) * i128::from(micros_per_million);
    let rounded = (exact + 500_000) / 1_000_000;
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_micros("100.00"), Ok(100_000_000));
        assert_eq!(parse_micros("3"), Ok(3_000_000));
        assert_eq!(parse_micros("0.000001"), Ok(1));
        assert_eq!(parse_micros("15.5"), Ok(15_500_000));
    }

    #[test]
    fn malformed_or_negative_or_huge_amounts_are_refused() {
        for bad in [
            "",
            "-1",
            "1.",
            ".5",
            "1.2345678",
            "1e3",
            "abc",
            "1,5",
            " 1",
            "99999999999999999999",
        ] {
            assert!(parse_micros(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_micros("1000000000001").is_err());
    }

    #[test]
    fn amounts_format_with_six_places() {
        assert_eq!(format_micros(8_850), "0.008850");
        assert_eq!(format_micros(100_000_000), "100.000000");
        assert_eq!(format_micros(-1), "-0.000001");
    }

    #[test]
    fn the_worked_example_costs_exactly_what_it_should() {
        // 1200 input tokens at 3.00 and 350 output tokens at 15.00 per million.
        let input = cost_micros(1_200, 3_000_000);
        let output = cost_micros(350, 15_000_000);
        assert_eq!((input, output), (3_600, 5_250));
        assert_eq!(format_micros(input + output), "0.008850");
    }

    #[test]
    fn costs_round_half_up_once() {
        assert_eq!(cost_micros(1, 1_500_000), 2);
        assert_eq!(cost_micros(1, 1_499_999), 1);
        assert_eq!(cost_micros(0, 9_999_999), 0);
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!("USD".parse::<Currency>().unwrap().as_str(), "USD");
        for bad in ["usd", "US", "USDT", "U$D", ""] {
            assert!(bad.parse::<Currency>().is_err(), "{bad:?}");
        }
    }
}
