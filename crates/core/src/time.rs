//! Time as plain numbers: the caller reads the clock, the core only compares.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time as Unix milliseconds.
///
/// The core never reads a clock; callers pass `now` in, so expiry rules are
/// testable by advancing a number. Serialized as a bare integer so stored
/// requests stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// `self + d`, saturating at `i64::MAX` so a huge TTL means "never"
    /// instead of wrapping into the past.
    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self + ms` milliseconds, saturating.
    pub fn plus_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Whole seconds since the epoch (floor), the unit JWT claims use.
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration; write it like \"30s\", \"15m\", \"1h\", \"2h30m\" or \"1d\"")]
    Empty,
    /// A character that is neither a digit nor a known unit.
    #[error("duration {input:?} is not valid at {at:?}; write numbers followed by a unit (d, h, m, s or ms), e.g. \"2h30m\"")]
    Syntax {
        /// The whole input.
        input: String,
        /// The rest of the input where parsing stopped.
        at: String,
    },
    /// Units must go from largest to smallest, each at most once.
    #[error("duration {input:?} repeats a unit or lists units out of order; write them largest first, each once, e.g. \"1h30m\"")]
    UnitOrder {
        /// The whole input.
        input: String,
    },
    /// A zero duration would expire immediately.
    #[error("duration {input:?} is zero; use a positive duration such as \"1m\"")]
    Zero {
        /// The whole input.
        input: String,
    },
    /// Too large to represent as milliseconds in an `i64`.
    #[error("duration {input:?} is too large; use something below 100000 days")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// The largest accepted duration, in milliseconds: far beyond any sensible
/// TTL, and small enough that `Timestamp::plus` never saturates in practice.
const MAX_MILLIS: u128 = 100_000 * 86_400_000;

/// The proleptic Gregorian (year, month, day) `days` after 1970-01-01
/// (H. Hinnant's `civil_from_days`); negative days go back before it.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest
/// unit that divides it (`"1h"`, `"90m"`, `"45s"`; `"0s"` for zero);
/// sub-second parts are dropped. For messages such as "waiting up to 10m".
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Parses durations such as `"30s"`, `"15m"`, `"1h"`, `"2h30m"`, `"1d"` or
/// `"500ms"`.
///
/// Units are `d`, `h`, `m`, `s`, `ms`, each used at most once, largest first.
/// Zero, signs, spaces, fractions and overflow are rejected, because a TTL
/// that silently means something else is worse than a clear error.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = |at: &str| DurationError::Syntax {
        input: input.to_string(),
        at: at.to_string(),
    };
    let overflow = || DurationError::Overflow {
        input: input.to_string(),
    };
    let mut rest = input;
    let mut total: u128 = 0;
    // Rank of the last unit seen; units must strictly decrease.
    let mut last_rank = u8::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax(rest));
        }
        if digits > 12 {
            return Err(overflow());
        }
        let number: u128 = rest[..digits].parse().map_err(|_| syntax(rest))?;
        let after = &rest[digits..];
        let (unit_ms, rank, len): (u128, u8, usize) = if after.starts_with("ms") {
            (1, 0, 2)
        } else if after.starts_with('s') {
            (1_000, 1, 1)
        } else if after.starts_with('m') {
            (60_000, 2, 1)
        } else if after.starts_with('h') {
            (3_600_000, 3, 1)
        } else if after.starts_with('d') {
            (86_400_000, 4, 1)
        } else {
            return Err(syntax(after));
        };
        if rank >= last_rank {
            return Err(DurationError::UnitOrder {
                input: input.to_string(),
            });
        }
        last_rank = rank;
        total = number
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(overflow)?;
        if total > MAX_MILLIS {
            return Err(overflow());
        }
        rest = &after[len..];
    }
    if total == 0 {
        return Err(DurationError::Zero {
            input: input.to_string(),
        });
    }
    let ms = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {

    #[test]
    fn formatted_durations_parse_back() {
        for secs in [1u64, 45, 60, 90, 600, 3600, 5400, 86_400, 172_800] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{secs}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(Duration::from_millis(93_784_005))
        );
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "", "0s", "0h0m", "-1h", "+1h", "1", "h", "1x", "1.5h", " 1h", "1h ", "1H", "30m2h",
            "1h1h", "1m1ms1s", "1e3s", "1_000s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            parse_duration("0s"),
            Err(DurationError::Zero { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("100001d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("30m2h"),
            Err(DurationError::UnitOrder { .. })
        ));
    }

    #[test]
    fn timestamp_plus_saturates_and_serializes_as_integer() {
        assert_eq!(
            Timestamp(i64::MAX - 1).plus(Duration::from_secs(5)),
            Timestamp(i64::MAX)
        );
        assert_eq!(
            Timestamp(1000).plus(Duration::from_millis(1)),
            Timestamp(1001)
        );
        assert_eq!(
            serde_json::to_string(&Timestamp(42)).ok().as_deref(),
            Some("42")
        );
        assert_eq!(Timestamp(-1).as_secs(), -1);
        assert_eq!(Timestamp(1999).as_secs(), 1);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn round_trips_components(d in 0u64..1000, h in 0u64..24, m in 0u64..60, s in 0u64..60) {
            let mut text = String::new();
            for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
                if n > 0 { text.push_str(&format!("{n}{u}")); }
            }
            let total = ((d * 24 + h) * 60 + m) * 60 + s;
            if total == 0 {
                prop_assert!(parse_duration(&text).is_err());
            } else {
                prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(total)));
            }
        }
    }
}
