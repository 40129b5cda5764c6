//! Human units in policy files: sizes (`16KiB`), rates (`10/s`, `64KiB/s`) and durations (`30s`).
//!
//! Each unit type parses with `FromStr` and deserializes from a YAML string through the same code,
//! so an error like `"12XB" is not a size` reaches the user with the parser's line and field path.
//! Bare numbers are refused on purpose: `max_body: 1024` is ambiguous, `max_body: 1KiB` is not.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a unit string did not parse. The message is complete on its own: it quotes the input and
/// shows the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a size (write e.g. 512B, 16KiB, 1MiB, 2GiB or 10kB, 5MB)")]
    Size(String),
    #[error("{0:?} is not a rate (write e.g. 10/s, 600/m, 3600/h)")]
    Rate(String),
    #[error("{0:?} is not a byte rate (write e.g. 64KiB/s, 50MiB/s, 1GiB/m)")]
    ByteRate(String),
    #[error("{0:?} is not a duration (write e.g. 250ms, 30s, 5m, 1h)")]
    Duration(String),
    #[error("{0:?} must be greater than zero")]
    Zero(String),
    #[error("{0:?} is longer than a year, the longest duration a policy may set")]
    TooLong(String),
    #[error("{0:?} is not a fraction (write e.g. 1%, 0.5%, 1/100; at most 100%)")]
    Fraction(String),
}

/// A number of bytes. Binary suffixes (`KiB`, `MiB`, `GiB`) are powers of 1024, decimal ones
/// (`kB`/`KB`, `MB`, `GB`) powers of 1000; `B` is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// An amount per period: `10/s` is ten per second. Used for request rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub amount: u64,
    pub per: Duration,
}

/// Bytes per period: `64KiB/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRate {
    pub bytes: u64,
    pub per: Duration,
}

/// A share of records, at most one: `1%`, `0.5%` or `1/100`. Kept in parts per million, so
/// the finest share is `0.0001%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fraction {
    pub per_million: u32,
}

/// A duration greater than zero: `250ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HumanDuration(pub Duration);

/// The longest duration a policy may write: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

impl From<HumanDuration> for std::time::Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl Rate {
    /// The rate as a float per second, for display and summaries.
    pub fn per_second(&self) -> f64 {
        self.amount as f64 / self.per.as_secs_f64()
    }
}

impl ByteRate {
    pub fn per_second(&self) -> f64 {
        self.bytes as f64 / self.per.as_secs_f64()
    }
}

/// Splits `"16KiB"` into `(16, "KiB")`. The number part is decimal digits only.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (num, rest) = s.split_at(digits);
    Some((num.parse().ok()?, rest.trim_start()))
}

fn size_multiplier(suffix: &str) -> Option<u64> {
    Some(match suffix {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    })
}

fn period(suffix: &str) -> Option<Duration> {
    Some(match suffix {
        "s" | "sec" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Size(s.to_owned());
        let (n, suffix) = split_number(s.trim()).ok_or_else(err)?;
        let mul = size_multiplier(suffix).ok_or_else(err)?;
        n.checked_mul(mul).map(ByteSize).ok_or_else(err)
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Rate(s.to_owned());
        let (amount, per) = s.trim().split_once('/').ok_or_else(err)?;
        let (amount, rest) = split_number(amount.trim()).ok_or_else(err)?;
        if !rest.is_empty() {
            return Err(err());
        }
        let per = period(per.trim()).ok_or_else(err)?;
        if amount == 0 {
            return Err(UnitError::Zero(s.to_owned()));
        }
        Ok(Rate { amount, per })
    }
}

impl FromStr for ByteRate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::ByteRate(s.to_owned());
        let (size, per) = s.trim().split_once('/').ok_or_else(err)?;
        let ByteSize(bytes) = size.parse().map_err(|_| err())?;
        let per = period(per.trim()).ok_or_else(err)?;
        if bytes == 0 {
            return Err(UnitError::Zero(s.to_owned()));
        }
        Ok(ByteRate { bytes, per })
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_owned());
        let (n, suffix) = split_number(s.trim()).ok_or_else(err)?;
        let d = match suffix {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        if d.is_zero() {
            return Err(UnitError::Zero(s.to_owned()));
        }
        // Bounded so that no deadline or product computed from a policy duration (now +
        // timeout, interval * ticks) can overflow the clock.
        if d > MAX_DURATION {
            return Err(UnitError::TooLong(s.to_owned()));
        }
        Ok(HumanDuration(d))
    }
}

impl FromStr for Fraction {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnitError::Fraction(s.to_owned());
        let t = s.trim();
        let per_million = if let Some(pct) = t.strip_suffix('%') {
            let pct: f64 = pct.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(bad());
            }
            (pct * 10_000.0).round()
        } else if let Some((n, d)) = t.split_once('/') {
            let (n, d): (u64, u64) = (
                n.trim().parse().map_err(|_| bad())?,
                d.trim().parse().map_err(|_| bad())?,
            );
            if d == 0 || n > d {
                return Err(bad());
            }
            (n as f64 * 1_000_000.0 / d as f64).round()
        } else {
            return Err(bad());
        };
        // In 0..=1e6 by the checks above.
        Ok(Fraction {
            per_million: per_million as u32,
        })
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", f64::from(self.per_million) / 10_000.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (mul, suffix) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if n >= mul && n.is_multiple_of(mul) {
                return write!(f, "{}{suffix}", n / mul);
            }
        }
        write!(f, "{n}B")
    }
}

fn period_suffix(per: Duration) -> String {
    match per.as_secs() {
        1 => "s".into(),
        60 => "m".into(),
        3600 => "h".into(),
        _ => format!("{}s", per.as_secs_f64()),
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.amount, period_suffix(self.per))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", ByteSize(self.bytes), period_suffix(self.per))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// Deserializes any `FromStr` unit from a YAML string. Numbers are refused with the unit's own
/// message, so `max_body: 1024` says what to write instead of "invalid type: integer".
struct UnitVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string with a unit")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! unit_serde {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(UnitVisitor(PhantomData))
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

unit_serde!(ByteSize, Rate, ByteRate, HumanDuration, Fraction);

/// Serializes a duration as seconds (`/policy`, `check`).
pub fn serialize_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions() {
        for (text, ppm) in [
            ("1%", 10_000),
            ("0.5%", 5_000),
            ("100%", 1_000_000),
            ("0%", 0),
            ("1/100", 10_000),
            ("1/3", 333_333),
        ] {
            assert_eq!(
                text.parse::<Fraction>(),
                Ok(Fraction { per_million: ppm }),
                "{text}"
            );
        }
        for bad in ["", "1", "101%", "-1%", "2/1", "1/0", "x%"] {
            assert!(
                matches!(bad.parse::<Fraction>(), Err(UnitError::Fraction(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Fraction {
                per_million: 10_000
            }
            .to_string(),
            "1%"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!("512B".parse(), Ok(ByteSize(512)));
        assert_eq!("16KiB".parse(), Ok(ByteSize(16 * 1024)));
        assert_eq!("1MiB".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("2GiB".parse(), Ok(ByteSize(2 << 30)));
        assert_eq!("10kB".parse(), Ok(ByteSize(10_000)));
        assert_eq!("5MB".parse(), Ok(ByteSize(5_000_000)));
        assert_eq!(" 1 KiB ".parse(), Ok(ByteSize(1024)));
        for bad in [
            "12XB",
            "",
            "KiB",
            "1.5MiB",
            "-1B",
            "1024",
            "99999999999999999999GiB",
        ] {
            assert_eq!(
                bad.parse::<ByteSize>(),
                Err(UnitError::Size(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn rates() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!((r.amount, r.per), (10, Duration::from_secs(1)));
        let r: Rate = "600/m".parse().unwrap();
        assert_eq!(r.per_second(), 10.0);
        assert!(matches!("0/s".parse::<Rate>(), Err(UnitError::Zero(_))));
        assert!(matches!("10/d".parse::<Rate>(), Err(UnitError::Rate(_))));
        assert!(matches!("10s".parse::<Rate>(), Err(UnitError::Rate(_))));
        let b: ByteRate = "64KiB/s".parse().unwrap();
        assert_eq!(b.bytes, 65536);
        assert!(matches!(
            "64/s".parse::<ByteRate>(),
            Err(UnitError::ByteRate(_))
        ));
    }

    #[test]
    fn durations_and_display_round_trip() {
        assert_eq!(
            "250ms".parse(),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!("5m".parse(), Ok(HumanDuration(Duration::from_secs(300))));
        assert!("5".parse::<HumanDuration>().is_err());
        assert!(matches!(
            "0s".parse::<HumanDuration>(),
            Err(UnitError::Zero(_))
        ));
        assert_eq!(
            "8784h".parse::<HumanDuration>().map(|d| d.0),
            Ok(MAX_DURATION)
        );
        assert!(matches!(
            "8785h".parse::<HumanDuration>(),
            Err(UnitError::TooLong(_))
        ));
        for s in ["512B", "16KiB", "1MiB", "3GiB"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
        for s in ["10/s", "600/m", "7/h"] {
            assert_eq!(s.parse::<Rate>().unwrap().to_string(), s);
        }
        assert_eq!(
            "64KiB/s".parse::<ByteRate>().unwrap().to_string(),
            "64KiB/s"
        );
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }
}
