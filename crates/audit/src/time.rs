//! Times as the log writes them (RFC 3339, UTC) and as people type them.

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

/// Unix milliseconds of an RFC 3339 time, if it parses.
pub fn millis(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// RFC 3339 UTC with milliseconds, the way the gateway logs times.
pub fn rfc3339(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => {
            let f = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&f).unwrap_or_else(|_| ms.to_string())
        }
        Err(_) => ms.to_string(),
    }
}

/// Reads a bound typed by a person: `2026-12-01` (midnight UTC) or an RFC
/// 3339 time. Returns Unix milliseconds.
pub fn parse_bound(text: &str) -> Result<i64, crate::AuditError> {
    let text = text.trim();
    if let Some(ms) = millis(text) {
        return Ok(ms);
    }
    let f = time::macros::format_description!("[year]-[month]-[day]");
    let bad = || crate::AuditError::Time(text.to_string());
    let d = Date::parse(text, &f).map_err(|_| bad())?;
    let t = PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// A half-open period `[from, to)` in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Period {
    pub from: i64,
    pub to: i64,
}

impl Period {
    /// From two typed bounds; `to` must be after `from`.
    pub fn parse(from: &str, to: &str) -> Result<Period, crate::AuditError> {
        let p = Period {
            from: parse_bound(from)?,
            to: parse_bound(to)?,
        };
        if p.to <= p.from {
            return Err(crate::AuditError::EmptyPeriod);
        }
        Ok(p)
    }

    /// Everything.
    pub fn all() -> Period {
        Period {
            from: i64::MIN,
            to: i64::MAX,
        }
    }

    /// Whether the RFC 3339 time `at` falls inside.
    pub fn contains(&self, at: &str) -> bool {
        millis(at).is_some_and(|t| t >= self.from && t < self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(parse_bound("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_bound("1970-01-01T00:00:01.500Z").unwrap(), 1500);
        assert!(parse_bound("yesterday").is_err());
        assert!(parse_bound("2026-13-01").is_err());
        assert!(Period::parse("2026-01-02", "2026-01-01").is_err());
        let p = Period::parse("2026-01-01", "2026-01-02").unwrap();
        assert!(p.contains("2026-01-01T00:00:00.000Z"));
        assert!(!p.contains("2026-01-02T00:00:00.000Z"));
        assert!(!p.contains("garbage"));
        assert_eq!(rfc3339(1500), "1970-01-01T00:00:01.500Z");
    }
}
