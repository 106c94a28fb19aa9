//! The secondkey annotations on Cedar policies: `@review`, `@quorum`, `@ttl`,
//! `@grant_ttl`, `@reason`, `@record` (and Cedar's `@id`), checked once at
//! load time so a decision never meets a bad one — and so that a misspelled
//! or misplaced annotation is refused instead of silently weakening a
//! policy. Authors keep their own annotations under [`CUSTOM_PREFIX`] or in
//! an allow-list ([`crate::LoadOptions::annotations`]).

use std::collections::BTreeSet;
use std::time::Duration;

/// How long a review request may wait when a policy does not say (`@ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
/// How long an approval stays usable when a policy does not say (`@grant_ttl`).
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(5 * 60);

/// Every annotation secondkey reads; any other is refused unless it carries
/// [`CUSTOM_PREFIX`] or is allow-listed.
pub const KNOWN_ANNOTATIONS: [&str; 7] = [
    "id",
    "review",
    "quorum",
    "ttl",
    "grant_ttl",
    "reason",
    "record",
];

/// Annotations whose name starts with this are the author's own: secondkey
/// keeps them (explanations show them) and never reads them.
pub const CUSTOM_PREFIX: &str = "x_";

/// The longest `@reason` accepted, in characters: it is shown whole on chat
/// cards and request pages.
pub const MAX_REASON_CHARS: usize = 500;

/// The shortest and longest `@ttl`: a request waits at least a second and
/// at most 30 days.
pub const TTL_BOUNDS: (Duration, Duration) = (
    Duration::from_secs(1),
    Duration::from_secs(30 * 24 * 60 * 60),
);

/// The shortest and longest `@grant_ttl`: an approval stays usable at least
/// a second and at most a day.
pub const GRANT_TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 60 * 60));

/// How an allow may be recorded (`@record`, on `permit` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordMode {
    /// `@record("after")`: the allow may run before its log entry is
    /// durable, recorded within the configured window.
    After,
}

impl RecordMode {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordMode::After => "after",
        }
    }
}

/// What the secondkey annotations of one policy say, once checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Annotated {
    pub review: Option<Review>,
    pub reason: Option<String>,
    pub record: Option<RecordMode>,
}

/// One refused annotation: which one (to locate it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub annotation: String,
    pub message: String,
}

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

/// The known annotation closest to `name`, if it is a plausible misspelling
/// (at most two edits, transpositions counting one, and fewer edits than
/// the known name has letters).
pub(crate) fn closest_known(name: &str) -> Option<&'static str> {
    closest(
        &name.to_ascii_lowercase(),
        KNOWN_ANNOTATIONS.iter().copied(),
    )
}

/// The candidate closest to `name` by edit distance (transpositions count
/// one), if it is at most two edits away and fewer than its own length.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|k| (strsim::osa_distance(name, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn unknown(name: &str) -> String {
    let known = KNOWN_ANNOTATIONS
        .iter()
        .map(|k| format!("@{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match closest_known(name) {
        Some(k) => format!("did you mean @{k}? "),
        None => String::new(),
    };
    format!(
        "unknown annotation @{name}; {hint}secondkey reads {known}; keep your own annotations under the `{CUSTOM_PREFIX}` prefix (@{CUSTOM_PREFIX}{name}) or list them in `[policy] annotations`"
    )
}

/// Checks every annotation of one policy: names, placement and values.
/// `forbid_effect` tells whether the policy is a `forbid`; `allowed` are the
/// configured custom annotation names. Every problem is reported, not just
/// the first.
pub(crate) fn check(
    forbid_effect: bool,
    annotations: &[(String, String)],
    allowed: &BTreeSet<String>,
) -> Result<Annotated, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |annotation: &str, message: String| {
        problems.push(Problem {
            annotation: annotation.to_owned(),
            message,
        })
    };
    for (name, _) in annotations {
        if !KNOWN_ANNOTATIONS.contains(&name.as_str())
            && !name.starts_with(CUSTOM_PREFIX)
            && !allowed.contains(name)
        {
            problem(name, unknown(name));
        }
    }
    let get = |k: &str| {
        annotations
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let review = match parse_review(forbid_effect, get) {
        Ok(r) => r,
        Err((annotation, message)) => {
            problem(annotation, message);
            None
        }
    };
    let reason = match get("reason") {
        None => None,
        Some(r) => match check_reason(r) {
            Ok(r) => Some(r),
            Err(m) => {
                problem("reason", m);
                None
            }
        },
    };
    let record = match get("record") {
        None => None,
        Some(_) if forbid_effect => {
            problem(
                "record",
                "@record only applies to `permit` policies (it says how an allow is recorded; reviews and denials are always recorded before anything runs); remove it from this `forbid`".to_owned(),
            );
            None
        }
        Some("after") => Some(RecordMode::After),
        Some(v) => {
            problem(
                "record",
                format!("@record({v:?}) is not a record mode; the only one is @record(\"after\")"),
            );
            None
        }
    };
    if problems.is_empty() {
        Ok(Annotated {
            review,
            reason,
            record,
        })
    } else {
        Err(problems)
    }
}

/// `@reason`: the sentence reviewers (or a denied agent) read. Non-empty,
/// at most [`MAX_REASON_CHARS`] characters, no control characters but line
/// breaks. Returned trimmed.
fn check_reason(r: &str) -> Result<String, String> {
    let t = r.trim();
    if r.is_empty() {
        return Err(
            "@reason(\"\") is empty; say in a sentence why the policy applies, or drop @reason"
                .to_owned(),
        );
    }
    if t.is_empty() {
        return Err(format!(
            "@reason({r:?}) is only whitespace; say in a sentence why the policy applies, or drop @reason"
        ));
    }
    let n = t.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(format!(
            "@reason is {n} characters long; at most {MAX_REASON_CHARS} are shown to reviewers, so shorten it"
        ));
    }
    if let Some(c) = t.chars().find(|c| c.is_control() && *c != '\n') {
        return Err(format!(
            "@reason contains the control character {c:?}; write plain text (line breaks are allowed)"
        ));
    }
    Ok(t.to_owned())
}

fn bounded(name: &str, v: &str, (lo, hi): (Duration, Duration)) -> Result<Duration, String> {
    let d = parse_duration(v).map_err(|e| format!("@{name}: {e}"))?;
    if d < lo || d > hi {
        return Err(format!(
            "@{name}(\"{v}\") is outside {} to {}",
            fmt_duration(lo),
            fmt_duration(hi)
        ));
    }
    Ok(d)
}

/// A duration the way policies write it: `1d`, `2h`, `15m`, `30s`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s != 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s != 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s != 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Reads and checks the review annotations of one policy; an error names
/// the annotation at fault.
///
/// `forbid_effect` tells whether the policy is a `forbid`: `@review` only makes
/// sense there, and `@quorum`/`@ttl`/`@grant_ttl` only make sense with `@review`.
pub(crate) fn parse_review<'a>(
    forbid_effect: bool,
    mut get: impl FnMut(&str) -> Option<&'a str>,
) -> Result<Option<Review>, (&'static str, String)> {
    let review = get("review");
    let quorum = get("quorum");
    let ttl = get("ttl");
    let grant_ttl = get("grant_ttl");
    let Some(review) = review else {
        for (name, v) in [("quorum", quorum), ("ttl", ttl), ("grant_ttl", grant_ttl)] {
            if v.is_some() {
                let why = if forbid_effect {
                    "add @review(\"<group>\") or remove"
                } else {
                    "a `permit` never waits for review; remove"
                };
                return Err((
                    name,
                    format!(
                        "@{name} only applies to a `forbid` policy with @review(\"<group>\"); {why} @{name}"
                    ),
                ));
            }
        }
        return Ok(None);
    };
    if !forbid_effect {
        return Err((
            "review",
            "@review only applies to `forbid` policies (a review is a forbid that approvers can lift); change `permit` to `forbid`"
                .to_owned(),
        ));
    }
    let mut groups = Vec::new();
    for g in review.split(',') {
        let g = g.trim();
        if g.is_empty() || g.chars().any(char::is_whitespace) {
            return Err((
                "review",
                format!(
                    "@review(\"{review}\") must be a comma-separated list of group names, e.g. @review(\"dba,security\")"
                ),
            ));
        }
        if !groups.iter().any(|x| x == g) {
            groups.push(g.to_owned());
        }
    }
    let quorum = match quorum {
        None => 1,
        // Digits only: no sign, no spaces (as @ttl's number).
        Some(q) => match q.parse::<u32>() {
            Ok(n) if n >= 1 && q.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err((
                    "quorum",
                    format!("@quorum(\"{q}\") must be a whole number of approvers, at least 1"),
                ))
            }
        },
    };
    let ttl = match ttl {
        None => DEFAULT_TTL,
        Some(t) => bounded("ttl", t, TTL_BOUNDS).map_err(|e| ("ttl", e))?,
    };
    let grant_ttl = match grant_ttl {
        None => DEFAULT_GRANT_TTL,
        Some(t) => bounded("grant_ttl", t, GRANT_TTL_BOUNDS).map_err(|e| ("grant_ttl", e))?,
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
    ) -> Result<Option<Review>, (&'static str, String)> {
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
    fn record_after_only_on_permit() {
        let record = |forbid: bool, v: Option<&str>| {
            let a: Vec<(String, String)> = v
                .map(|v| vec![("record".to_owned(), v.to_owned())])
                .unwrap_or_default();
            check(forbid, &a, &BTreeSet::new()).map(|a| a.record)
        };
        assert_eq!(record(false, None).unwrap(), None);
        assert_eq!(record(true, None).unwrap(), None);
        assert_eq!(
            record(false, Some("after")).unwrap(),
            Some(RecordMode::After)
        );
        for (forbid, v) in [
            (true, "after"),
            (false, "before"),
            (false, "After"),
            (false, " after"),
            (false, ""),
        ] {
            assert!(record(forbid, Some(v)).is_err(), "{forbid} {v:?}");
        }
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
        // A whole number as written: no sign, no spaces.
        for q in ["+2", " 2", "2 ", "-1", "2.0"] {
            assert!(
                review(true, &[("review", "a"), ("quorum", q)]).is_err(),
                "{q:?}"
            );
        }
        assert!(review(true, &[("review", "a"), ("quorum", "2")]).is_ok());
        assert!(review(true, &[("review", "a"), ("ttl", "soon")]).is_err());
        assert!(review(true, &[("review", "a"), ("grant_ttl", "0s")]).is_err());
    }

    #[test]
    fn reasons() {
        assert_eq!(
            check_reason("  Production writes need a data owner. ").as_deref(),
            Ok("Production writes need a data owner.")
        );
        // Line breaks are kept; other control characters are refused.
        assert!(check_reason("two\nlines").is_ok());
        for bad in ["", "   ", "tab\there", "nul\u{0}"] {
            assert!(check_reason(bad).is_err(), "{bad:?}");
        }
        // A blank one is quoted as written, not as if it were empty.
        let e = check_reason("   ").unwrap_err();
        assert!(e.starts_with("@reason(\"   \") is only whitespace"), "{e}");
        let long = "é".repeat(MAX_REASON_CHARS);
        assert_eq!(check_reason(&long).as_deref(), Ok(long.as_str()));
        assert!(check_reason(&format!("{long}x")).is_err());
    }
}
