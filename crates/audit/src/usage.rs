//! The data-usage report: per agent, model and on-behalf-of user, which
//! datasets it read, wrote and exported, how much, how often a human had
//! to approve, and who did.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::Filter;
use crate::history::{ActionRecord, Use};

/// One line of the report: one principal (with a model and an on-behalf-of
/// user) and one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub principal: String,
    /// `context.model` as declared; empty when none.
    pub model: String,
    /// `on_behalf_of` as declared; empty when none.
    pub on_behalf_of: String,
    pub dataset: String,
    /// Executed actions that read, wrote, exported it.
    pub read: u64,
    pub written: u64,
    pub exported: u64,
    /// Rows, where the adapter reported them (SQL); 0 otherwise.
    pub rows: u64,
    /// Of those actions, how many were held for a human.
    pub held: u64,
    /// Who approved them.
    pub approvers: Vec<String>,
    /// Attempts on it that were denied (by policy or by a reviewer).
    pub denied: u64,
}

/// Builds the report from the records `filter` admits, sorted by
/// principal, model, on-behalf-of user and dataset.
pub fn report(records: &[ActionRecord], filter: &Filter) -> Vec<UsageRow> {
    type Key = (String, String, String, String);
    let mut rows: BTreeMap<Key, (UsageRow, BTreeSet<String>)> = BTreeMap::new();
    for r in records.iter().filter(|r| filter.admits(r)) {
        let denied = matches!(r.state.as_str(), "denied");
        if !r.was_executed() && !denied {
            continue;
        }
        for (d, u) in r.datasets() {
            if !filter.admits_dataset(&d) {
                continue;
            }
            let key = (
                r.principal.clone(),
                r.model.clone().unwrap_or_default(),
                r.on_behalf_of.clone().unwrap_or_default(),
                d.clone(),
            );
            let (row, approvers) = rows.entry(key.clone()).or_insert_with(|| {
                (
                    UsageRow {
                        principal: key.0.clone(),
                        model: key.1.clone(),
                        on_behalf_of: key.2.clone(),
                        dataset: key.3.clone(),
                        ..UsageRow::default()
                    },
                    BTreeSet::new(),
                )
            });
            if denied {
                row.denied += 1;
                continue;
            }
            match u {
                Use::Read => row.read += 1,
                Use::Write => row.written += 1,
                Use::Export => row.exported += 1,
            }
            row.rows += r.rows().unwrap_or(0);
            if r.held() {
                row.held += 1;
            }
            for a in &r.approvals {
                approvers.insert(a.by.clone());
            }
        }
    }
    rows.into_values()
        .map(|(mut row, a)| {
            row.approvers = a.into_iter().collect();
            row
        })
        .collect()
}

/// The columns, in order, as CSV and the table print them.
pub const COLUMNS: [&str; 11] = [
    "principal",
    "model",
    "on_behalf_of",
    "dataset",
    "read",
    "written",
    "exported",
    "rows",
    "held",
    "approvers",
    "denied",
];

fn cells(r: &UsageRow) -> [String; 11] {
    [
        r.principal.clone(),
        r.model.clone(),
        r.on_behalf_of.clone(),
        r.dataset.clone(),
        r.read.to_string(),
        r.written.to_string(),
        r.exported.to_string(),
        r.rows.to_string(),
        r.held.to_string(),
        r.approvers.join(" "),
        r.denied.to_string(),
    ]
}

/// RFC 4180 CSV with a header line. A cell that starts with `=`, `+`, `-`
/// or `@` is prefixed with `'` so a spreadsheet never runs it as a formula
/// (dataset names and models come from agents).
pub fn to_csv(rows: &[UsageRow]) -> String {
    fn cell(s: &str) -> String {
        let s = if s.starts_with(['=', '+', '-', '@']) {
            format!("'{s}")
        } else {
            s.to_string()
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    }
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = cells(r).iter().map(|c| cell(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// An aligned text table for a terminal.
pub fn to_table(rows: &[UsageRow]) -> String {
    let all: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut width: Vec<usize> = COLUMNS.iter().map(|c| c.len()).collect();
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = width[i].saturating_sub(c.chars().count());
                // Numbers right-aligned, text left-aligned.
                if (4..=8).contains(&i) || i == 10 {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let head: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut out = line(&head);
    out.push('\n');
    for r in &all {
        out.push_str(&line(r));
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no executed action in this period matches)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let r = UsageRow {
            principal: "agent:a".into(),
            model: "=HYPERLINK(\"x\")".into(),
            dataset: "s3://b/a,b.csv".into(),
            approvers: vec!["user:bob".into(), "user:carol".into()],
            read: 2,
            ..UsageRow::default()
        };
        let csv = to_csv(&[r]);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.starts_with("agent:a,\"'=HYPERLINK(\"\"x\"\")\",,\"s3://b/a,b.csv\",2,"));
        assert!(line.contains("user:bob user:carol"));
        assert!(to_table(&[]).contains("no executed action"));
    }
}
