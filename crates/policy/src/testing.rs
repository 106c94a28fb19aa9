//! Table-driven policy tests (`*.tests.toml`), like `opa test`: each case is a
//! principal, an action and the expected outcome.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::engine::{Outcome, PolicyEngine};
use crate::types::{Action, Principal, PrincipalId};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    owner: Option<String>,
    action: Action,
    #[serde(default)]
    gateway: serde_json::Map<String, serde_json::Value>,
    expect: Outcome,
    /// Total approvals expected across all requirements.
    quorum: Option<u32>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's `name`.
    pub name: String,
    /// Whether the decision matched the expectation.
    pub passed: bool,
    /// Why it failed (expected vs got, and the decision's reasons); empty on pass.
    pub failure: Option<String>,
}

/// The result of a cases file. `Display` prints one line per case and a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    /// The cases file.
    pub file: String,
    /// Per case, in file order.
    pub cases: Vec<CaseResult>,
    /// A problem with the file itself (unreadable, bad TOML, bad principal);
    /// when set, the report counts as failed.
    pub error: Option<String>,
}

impl TestReport {
    /// True when the file was read and every case passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.cases.iter().all(|c| c.passed)
    }

    /// Number of failed cases.
    pub fn failures(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.file)?;
        if let Some(e) = &self.error {
            return writeln!(f, "  ERROR {e}");
        }
        for c in &self.cases {
            if c.passed {
                writeln!(f, "  PASS {}", c.name)?;
            } else {
                writeln!(
                    f,
                    "  FAIL {}: {}",
                    c.name,
                    c.failure.as_deref().unwrap_or("")
                )?;
            }
        }
        writeln!(
            f,
            "{} passed, {} failed",
            self.cases.len() - self.failures(),
            self.failures()
        )
    }
}

/// Runs the cases of a `*.tests.toml` file against `engine`.
pub fn run_tests(engine: &PolicyEngine, cases_file: impl AsRef<Path>) -> TestReport {
    let path = cases_file.as_ref();
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => run_tests_str(engine, &file, &text),
        Err(e) => TestReport {
            file,
            cases: Vec::new(),
            error: Some(format!("cannot read the cases file: {e}")),
        },
    }
}

/// Like [`run_tests`], for cases already in memory; `file` names them in the report.
pub fn run_tests_str(engine: &PolicyEngine, file: &str, text: &str) -> TestReport {
    let mut report = TestReport {
        file: file.to_owned(),
        cases: Vec::new(),
        error: None,
    };
    let parsed: CasesFile = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            report.error = Some(format!("invalid cases file: {e}"));
            return report;
        }
    };
    for case in parsed.case {
        let result = run_case(engine, &case);
        report.cases.push(CaseResult {
            name: case.name,
            passed: result.is_ok(),
            failure: result.err(),
        });
    }
    report
}

fn run_case(engine: &PolicyEngine, case: &Case) -> Result<(), String> {
    let id = PrincipalId::parse(&case.principal).map_err(|e| format!("bad principal: {e}"))?;
    let owner = case
        .owner
        .as_deref()
        .map(PrincipalId::parse)
        .transpose()
        .map_err(|e| format!("bad owner: {e}"))?;
    let principal = Principal {
        id,
        owner,
        groups: case.groups.iter().cloned().collect::<BTreeSet<_>>(),
        subjects: Default::default(),
    };
    let d = engine.decide(&principal, &case.action, &case.gateway);
    let why = || {
        d.reasons
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if d.outcome != case.expect {
        return Err(format!(
            "expected {}, got {} ({})",
            case.expect,
            d.outcome,
            why()
        ));
    }
    if let Some(q) = case.quorum {
        let total: u32 = d.requirements.iter().map(|r| r.quorum).sum();
        if total != q {
            return Err(format!("expected quorum {q}, got {total} ({})", why()));
        }
    }
    Ok(())
}
