//! Counters behind `/metrics` that the decision path bumps: relaxed atomic
//! adds, no lock, nothing allocated.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use secondkey_policy::Outcome;

/// The surfaces a decision comes from (`transport` of its entry); anything
/// else counts as `other`.
const TRANSPORTS: [&str; 6] = ["api", "pg", "mcp", "http", "ssh", "other"];
const OUTCOMES: [&str; 3] = ["allow", "deny", "review"];

/// What this gateway decided since it started.
#[derive(Debug, Default)]
pub struct Counters {
    decisions: [[AtomicU64; 3]; 6],
    /// `@record("after")` allows that ran before their entry was durable.
    after_admitted: AtomicU64,
    /// `@record("after")` allows that waited for their own entry instead
    /// (the log behind or failing, or the gateway stopping).
    after_strict: AtomicU64,
}

impl Counters {
    pub fn decided(&self, transport: &str, outcome: &Outcome) {
        let t = TRANSPORTS
            .iter()
            .position(|t| *t == transport)
            .unwrap_or(TRANSPORTS.len() - 1);
        let o = match outcome {
            Outcome::Allow => 0,
            Outcome::Deny => 1,
            Outcome::Review => 2,
        };
        self.decisions[t][o].fetch_add(1, Ordering::Relaxed);
    }

    pub fn after_admitted(&self) {
        self.after_admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn after_strict(&self) {
        self.after_strict.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus' text format, with `after_pending` (the
    /// after-allows not yet durable now) as a gauge.
    pub fn render(&self, after_pending: usize, out: &mut String) {
        out.push_str("# HELP secondkey_decisions_total Decisions since start, by outcome and by the surface that asked.\n# TYPE secondkey_decisions_total counter\n");
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.decisions[t][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "secondkey_decisions_total{{decision=\"{outcome}\",transport=\"{transport}\"}} {n}"
                );
            }
        }
        let _ = write!(
            out,
            "# HELP secondkey_after_admitted_total @record(\"after\") allows that ran before their entry was durable.\n# TYPE secondkey_after_admitted_total counter\nsecondkey_after_admitted_total {}\n\
             # HELP secondkey_after_strict_total @record(\"after\") allows that waited for their own entry instead (log behind or failing, or shutting down).\n# TYPE secondkey_after_strict_total counter\nsecondkey_after_strict_total {}\n\
             # HELP secondkey_after_pending @record(\"after\") allows that ran and whose entry is not durable yet.\n# TYPE secondkey_after_pending gauge\nsecondkey_after_pending {}\n",
            self.after_admitted.load(Ordering::Relaxed),
            self.after_strict.load(Ordering::Relaxed),
            after_pending,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decision_counts_once_under_its_surface() {
        let c = Counters::default();
        c.decided("api", &Outcome::Allow);
        c.decided("api", &Outcome::Allow);
        c.decided("pg", &Outcome::Review);
        c.decided("exec-wrapper", &Outcome::Deny);
        c.after_admitted();
        c.after_strict();
        let mut out = String::new();
        c.render(3, &mut out);
        for line in [
            "secondkey_decisions_total{decision=\"allow\",transport=\"api\"} 2",
            "secondkey_decisions_total{decision=\"review\",transport=\"pg\"} 1",
            "secondkey_decisions_total{decision=\"deny\",transport=\"other\"} 1",
            "secondkey_decisions_total{decision=\"deny\",transport=\"api\"} 0",
            "secondkey_after_admitted_total 1",
            "secondkey_after_strict_total 1",
            "secondkey_after_pending 3",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        // Every sample line is a name, optional labels and a number.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<u64>().is_ok(), "{l}");
        }
    }
}
