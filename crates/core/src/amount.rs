//! USDC amounts in base units (6 decimals): `1 USDC = 1_000_000`. Never floats.

use core::fmt;
use core::str::FromStr;

use alloy_primitives::U256;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// Settle a key's unsettled amount once it reaches 10 USDC (DESIGN §1: one constant).
pub const SETTLEMENT_THRESHOLD: Usdc = Usdc(10_000_000);

/// An amount of USDC in base units.
///
/// Serialised as a decimal string of base units (`"1000"`), never as a JSON number, so
/// JavaScript clients cannot lose precision. Human input such as `"0.002"` goes through
/// [`Usdc::parse_decimal`]; [`Usdc::display`] formats that way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usdc(u64);

impl Usdc {
    /// Zero.
    pub const ZERO: Self = Self(0);
    /// One whole USDC.
    pub const ONE: Self = Self(1_000_000);
    /// Number of decimals of USDC.
    pub const DECIMALS: u32 = 6;

    /// An amount of `units` base units.
    pub const fn from_base_units(units: u64) -> Self {
        Self(units)
    }

    /// The amount in base units.
    pub const fn base_units(self) -> u64 {
        self.0
    }

    /// `self + rhs`, or [`Error::AmountOverflow`].
    pub fn checked_add(self, rhs: Self) -> Result<Self> {
        self.0.checked_add(rhs.0).map(Self).ok_or(Error::AmountOverflow)
    }

    /// `self - rhs`, or [`Error::AmountOverflow`] when `rhs > self`.
    pub fn checked_sub(self, rhs: Self) -> Result<Self> {
        self.0.checked_sub(rhs.0).map(Self).ok_or(Error::AmountOverflow)
    }

    /// `self - rhs`, floored at zero.
    pub const fn saturating_sub(self, rhs: Self) -> Self {
        Self(self.0.saturating_sub(rhs.0))
    }

    /// `self + rhs`, capped at the largest amount.
    pub const fn saturating_add(self, rhs: Self) -> Self {
        Self(self.0.saturating_add(rhs.0))
    }

    /// The amount as a 256-bit integer, as the contract sees it.
    pub fn to_u256(self) -> U256 {
        U256::from(self.0)
    }

    /// Parses a human amount in whole USDC with at most 6 decimals: `"10"`, `"0.002"`, `"$1.5"`.
    pub fn parse_decimal(input: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidAmount { input: input.to_owned(), reason };
        let text = input.trim();
        let text = text.strip_prefix('$').unwrap_or(text);
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(invalid("empty"));
        }
        if !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(invalid("only digits and one '.' are allowed"));
        }
        if frac.len() > Self::DECIMALS as usize {
            return Err(invalid("USDC has at most 6 decimals"));
        }
        let parse = |digits: &str| -> Result<u64> {
            if digits.is_empty() { Ok(0) } else { digits.parse().map_err(|_| invalid("too large")) }
        };
        let scale = 10u64.pow(Self::DECIMALS - frac.len() as u32);
        let units = parse(whole)?
            .checked_mul(Self::ONE.0)
            .and_then(|w| parse(frac).ok()?.checked_mul(scale)?.checked_add(w))
            .ok_or_else(|| invalid("too large"))?;
        Ok(Self(units))
    }

    /// Formats as whole USDC without trailing zeros: `2000` base units shows as `0.002`.
    pub const fn display(self) -> UsdcDisplay {
        UsdcDisplay(self)
    }
}

impl TryFrom<U256> for Usdc {
    type Error = Error;

    fn try_from(value: U256) -> Result<Self> {
        u64::try_from(value).map(Self).map_err(|_| Error::AmountOverflow)
    }
}

impl fmt::Display for Usdc {
    /// Base units, the same text as the JSON form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Usdc {
    type Err = Error;

    /// Parses base units (`"1000"`), the JSON form.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidAmount { input: s.to_owned(), reason: "expected base units as digits" });
        }
        s.parse().map(Self).map_err(|_| Error::InvalidAmount { input: s.to_owned(), reason: "too large" })
    }
}

impl Serialize for Usdc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Usdc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// [`Usdc`] shown as whole USDC (see [`Usdc::display`]).
#[derive(Debug, Clone, Copy)]
pub struct UsdcDisplay(Usdc);

impl fmt::Display for UsdcDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = self.0.0;
        let whole = units / Usdc::ONE.0;
        let frac = units % Usdc::ONE.0;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:06}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_decimals() {
        assert_eq!(Usdc::parse_decimal("0.002"), Ok(Usdc(2_000)));
        assert_eq!(Usdc::parse_decimal("$1.5"), Ok(Usdc(1_500_000)));
        assert_eq!(Usdc::parse_decimal("10"), Ok(Usdc(10_000_000)));
        assert_eq!(Usdc::parse_decimal(".25"), Ok(Usdc(250_000)));
        assert_eq!(Usdc::parse_decimal("0.000001"), Ok(Usdc(1)));
    }

    #[test]
    fn refuses_bad_decimals_with_a_reason() {
        for bad in ["", ".", "1.2.3", "-1", "1e6", "0.0000001", "abc", "99999999999999999999"] {
            let parsed = Usdc::parse_decimal(bad);
            assert!(matches!(parsed, Err(Error::InvalidAmount { .. })), "{bad:?} gave {parsed:?}");
        }
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(Usdc(2_000).display().to_string(), "0.002");
        assert_eq!(Usdc(10_000_000).display().to_string(), "10");
        assert_eq!(Usdc(1_234_567).display().to_string(), "1.234567");
        assert_eq!(Usdc(0).display().to_string(), "0");
    }

    #[test]
    fn json_is_a_decimal_string_of_base_units() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&Usdc(1000))?, "\"1000\"");
        assert_eq!(serde_json::from_str::<Usdc>("\"18446744073709551615\"")?, Usdc(u64::MAX));
        assert!(serde_json::from_str::<Usdc>("1000").is_err(), "numbers are refused");
        assert!(serde_json::from_str::<Usdc>("\"18446744073709551616\"").is_err());
        assert!(serde_json::from_str::<Usdc>("\"-1\"").is_err());
        Ok(())
    }

    #[test]
    fn base_units_print_and_parse_as_plain_digits() {
        assert_eq!(Usdc(1_000).to_string(), "1000");
        assert_eq!(format!("{:>6}", Usdc(42)), "    42", "formatting flags pass through");
        assert_eq!("1000".parse::<Usdc>(), Ok(Usdc(1_000)));
        // u64's own parser takes a sign; amounts are digits only.
        for bad in ["", "+5", "-5", " 5", "5 ", "1.5", "0x10"] {
            assert!(
                matches!(
                    bad.parse::<Usdc>(),
                    Err(Error::InvalidAmount { reason: "expected base units as digits", .. })
                ),
                "{bad:?} must be refused as not digits"
            );
        }
        assert!(matches!(
            "18446744073709551616".parse::<Usdc>(),
            Err(Error::InvalidAmount { reason: "too large", .. })
        ));
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Usdc(u64::MAX).checked_add(Usdc(1)), Err(Error::AmountOverflow));
        assert_eq!(Usdc(1).checked_sub(Usdc(2)), Err(Error::AmountOverflow));
        assert_eq!(Usdc(1).saturating_sub(Usdc(2)), Usdc::ZERO);
        assert_eq!(Usdc(2).checked_add(Usdc(3)), Ok(Usdc(5)));
        assert_eq!(Usdc::try_from(U256::from(u64::MAX) + U256::from(1)), Err(Error::AmountOverflow));
    }
}
