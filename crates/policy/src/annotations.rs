//! The secondkey annotations on Cedar policies: `@review`, `@quorum`, `@ttl`,
//! `@grant_ttl` and `@reason`, checked once at load time so a decision never
//! meets a bad one.

use std::time::Duration;

/// How long a review request may wait when a policy does not say (`@ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
/// How long an approval stays usable when a policy does not say (`@grant_ttl`).
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(5 * 60);

/// The review settings of one `forbid` policy carrying `@review`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Review {
    pub groups: Vec<String>,
    pub quorum: u32,
    pub ttl: Duration,
    pub grant_ttl: Duration,
}

/// Parses a duration such as `30s`, `15m`, `1h` or `1d` (one unsigned integer
/// and one unit). Zero is refused: a zero TTL would expire before anyone acts.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write e.g. `30s`, `15m`, `1h` or `1d`"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` must start with a whole number, e.g. `15m`"))?;
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => {
            return Err(format!(
                "`{s}` has unknown unit `{unit}`; use s, m, h or d (e.g. `15m`)"
            ))
        }
    };
    if n == 0 {
        return Err(format!("`{s}` is zero; a duration must be positive"));
    }
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Longest `@reason` accepted, in characters: one or two sentences, read on
/// a phone in a chat card as much as on the request page.
pub const MAX_REASON_CHARS: usize = 300;

/// Reads `@reason("…")`: the sentence a reviewer (or a denied agent) reads
/// about why a policy applies. Surrounding whitespace is dropped; an empty
/// value, a control character (a line break included) or more than
/// [`MAX_REASON_CHARS`] characters is refused. The one parser of the
/// annotation, shared by loading and validation.
pub fn parse_reason(value: Option<&str>) -> Result<Option<String>, String> {
    let Some(v) = value else { return Ok(None) };
    let t = v.trim();
    if t.is_empty() {
        return Err(
            "@reason(\"\") is empty; write the sentence a reviewer reads, or remove @reason"
                .to_owned(),
        );
    }
    if t.chars().any(char::is_control) {
        return Err(
            "@reason must be one line of text without control characters (no line breaks or tabs)"
                .to_owned(),
        );
    }
    let n = t.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(format!(
            "@reason is {n} characters long; keep it to {MAX_REASON_CHARS} (one or two sentences)"
        ));
    }
    Ok(Some(t.to_owned()))
}

/// Reads and checks the secondkey annotations of one policy.
///
/// `forbid_effect` tells whether the policy is a `forbid`: `@review` only makes
/// sense there, and `@quorum`/`@ttl`/`@grant_ttl` only make sense with `@review`.
pub(crate) fn parse_review<'a>(
    forbid_effect: bool,
    mut get: impl FnMut(&str) -> Option<&'a str>,
) -> Result<Option<Review>, String> {
    let review = get("review");
    let quorum = get("quorum");
    let ttl = get("ttl");
    let grant_ttl = get("grant_ttl");
    let Some(review) = review else {
        for (name, v) in [("quorum", quorum), ("ttl", ttl), ("grant_ttl", grant_ttl)] {
            if v.is_some() {
                return Err(format!(
                    "@{name} only applies to a `forbid` policy with @review(\"<group>\"); add @review or remove @{name}"
                ));
            }
        }
        return Ok(None);
    };
    if !forbid_effect {
        return Err(
            "@review only applies to `forbid` policies (a review is a forbid that approvers can lift); change `permit` to `forbid`"
                .to_owned(),
        );
    }
    let mut groups = Vec::new();
    for g in review.split(',') {
        let g = g.trim();
        if g.is_empty() || g.chars().any(char::is_whitespace) {
            return Err(format!(
                "@review(\"{review}\") must be a comma-separated list of group names, e.g. @review(\"dba,security\")"
            ));
        }
        if !groups.iter().any(|x| x == g) {
            groups.push(g.to_owned());
        }
    }
    let quorum = match quorum {
        None => 1,
        Some(q) => match q.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "@quorum(\"{q}\") must be a whole number of approvers, at least 1"
                ))
            }
        },
    };
    let ttl = match ttl {
        None => DEFAULT_TTL,
        Some(t) => parse_duration(t).map_err(|e| format!("@ttl: {e}"))?,
    };
    let grant_ttl = match grant_ttl {
        None => DEFAULT_GRANT_TTL,
        Some(t) => parse_duration(t).map_err(|e| format!("@grant_ttl: {e}"))?,
    };
    Ok(Some(Review {
        groups,
        quorum,
        ttl,
        grant_ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn review(
        forbid: bool,
        pairs: &[(&'static str, &'static str)],
    ) -> Result<Option<Review>, String> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        parse_review(forbid, |k| map.get(k).copied())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "",
            "15",
            "m",
            "0m",
            "1.5h",
            "-1m",
            "1w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn review_defaults_and_values() {
        assert_eq!(review(true, &[]), Ok(None));
        let r = review(true, &[("review", "dba, security,dba")])
            .unwrap()
            .unwrap();
        assert_eq!(r.groups, vec!["dba", "security"]);
        assert_eq!(
            (r.quorum, r.ttl, r.grant_ttl),
            (1, DEFAULT_TTL, DEFAULT_GRANT_TTL)
        );
        let r = review(
            true,
            &[
                ("review", "x"),
                ("quorum", "2"),
                ("ttl", "15m"),
                ("grant_ttl", "1m"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.quorum, r.ttl, r.grant_ttl),
            (2, Duration::from_secs(900), Duration::from_secs(60))
        );
    }

    #[test]
    fn review_errors() {
        assert!(review(false, &[("review", "x")]).is_err());
        assert!(review(true, &[("quorum", "2")]).is_err());
        assert!(review(true, &[("ttl", "1h")]).is_err());
        assert!(review(true, &[("review", "")]).is_err());
        assert!(review(true, &[("review", "a,,b")]).is_err());
        assert!(review(true, &[("review", "a b")]).is_err());
        assert!(review(true, &[("review", "a"), ("quorum", "0")]).is_err());
        assert!(review(true, &[("review", "a"), ("quorum", "two")]).is_err());
        assert!(review(true, &[("review", "a"), ("ttl", "soon")]).is_err());
        assert!(review(true, &[("review", "a"), ("grant_ttl", "0s")]).is_err());
    }

    #[test]
    fn reasons() {
        assert_eq!(parse_reason(None), Ok(None));
        assert_eq!(
            parse_reason(Some("  Production writes need a data owner. ")),
            Ok(Some("Production writes need a data owner.".into()))
        );
        for bad in ["", "   ", "two\nlines", "tab\there", "nul\u{0}"] {
            assert!(parse_reason(Some(bad)).is_err(), "{bad:?}");
        }
        let long = "é".repeat(MAX_REASON_CHARS);
        assert_eq!(parse_reason(Some(&long)), Ok(Some(long.clone())));
        assert!(parse_reason(Some(&format!("{long}x"))).is_err());
    }
}
