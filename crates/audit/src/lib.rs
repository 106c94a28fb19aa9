//! What the secondkey log proves, rebuilt from its entries alone.
//!
//! The transparency log is the only source: [`history::Tracker`] joins its
//! entries (decisions, reviews, approvals, grant uses, results) into one
//! [`history::ActionRecord`] per decision, with the exceptions and policy
//! loads an auditor asks about. From those:
//!
//! - [`graph`] — the lineage graph (principals → actions → datasets, each
//!   edge read / write / export, approved by whom or allowed by policy),
//!   drawn as SVG by [`svg`];
//! - [`usage`] — the data-usage report per agent, model and on-behalf-of user;
//! - [`evidence`] — compliance figures mapped to SOC 2 and NIST SP 800-53
//!   controls, and the printable report rendered from them;
//! - [`openlineage`] — OpenLineage run events for executed actions.
//!
//! **Architecture invariant:** no IO, no clock, no database: everything is
//! a function of entry bytes (and a checkpoint), so the gateway, the CLI on
//! a data directory and an auditor on an exported bundle compute the same
//! answers, and `secondkey evidence verify` can recompute a report.

pub mod evidence;
pub mod graph;
pub mod history;
pub mod openlineage;
pub mod svg;
pub mod time;
pub mod usage;

/// What can go wrong reading the log or the parameters.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An entry does not decode.
    #[error("log entry {index} is not a valid entry: {message}")]
    Entry { index: u64, message: String },
    /// The checkpoint is malformed or does not match the entries.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A time bound is not a date or an RFC 3339 time.
    #[error("{0:?} is not a date (2026-12-01) or an RFC 3339 time (2026-12-01T09:00:00Z)")]
    Time(String),
    /// `to` is not after `from`.
    #[error("the period is empty: --to must be after --from")]
    EmptyPeriod,
    /// An evidence pack's manifest is not one this release reads.
    #[error("manifest.json {0}")]
    Manifest(String),
    /// An unknown framework.
    #[error("unknown framework {0:?}; use soc2 or fedramp-moderate")]
    Framework(String),
}

#[cfg(test)]
mod tests;
