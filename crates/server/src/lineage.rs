//! The lineage graph, read from the log (`GET /v1/lineage/graph`, the
//! `/lineage` page): the entries of the period go through
//! [`secondkey_audit::history::Tracker`] exactly as an auditor's copy of
//! the log would, so the graph shows what the log proves and nothing else.
//! (The per-principal index behind `GET /v1/lineage`, records namespace
//! `lineage`, stays the quick answer to "what did this agent touch".)

use std::collections::BTreeSet;

use secondkey_audit::graph::{self, Filter, Graph};
use secondkey_audit::history::Tracker;
use secondkey_audit::time::{millis, Period};
use secondkey_core::principal::Principal;
use secondkey_log::entry::Entry;

use crate::error::ApiError;
use crate::Gateway;

/// How far before the period the log is read, so that a request created
/// earlier and run inside the period is known whole.
pub const LOOKBACK_MS: i64 = 24 * 3600 * 1000;

/// How far after the period, for results recorded after the run.
pub const LOOKAHEAD_MS: i64 = 3600 * 1000;

/// Most entries one graph reads; a longer period must be narrowed.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// The query of a graph: bounds as typed (`2026-12-01` or RFC 3339) and
/// the filters. Missing bounds: the last 24 hours.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GraphQuery {
    /// Start (inclusive): `2026-12-01` or `2026-12-01T09:00:00Z`.
    pub from: Option<String>,
    /// End (exclusive).
    pub to: Option<String>,
    /// Only this principal (`agent:report-bot`).
    pub agent: Option<String>,
    /// Only this dataset URI, or URIs starting with it.
    pub dataset: Option<String>,
    /// Only this environment (`prod`).
    pub environment: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl GraphQuery {
    /// The filter this query asks for, at `now_ms`.
    pub fn filter(&self, now_ms: i64) -> Result<Filter, ApiError> {
        let bad =
            |e: secondkey_audit::AuditError| ApiError::bad_request("invalid_period", e.to_string());
        let to = match nonempty(&self.to) {
            Some(t) => secondkey_audit::time::parse_bound(&t).map_err(bad)?,
            None => now_ms + 1,
        };
        let from = match nonempty(&self.from) {
            Some(f) => secondkey_audit::time::parse_bound(&f).map_err(bad)?,
            None => to - 24 * 3600 * 1000,
        };
        if to <= from {
            return Err(bad(secondkey_audit::AuditError::EmptyPeriod));
        }
        for (k, v) in [
            ("agent", &self.agent),
            ("dataset", &self.dataset),
            ("environment", &self.environment),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > 2048) {
                return Err(ApiError::bad_request(
                    "invalid_filter",
                    format!("{k} is longer than 2048 bytes"),
                ));
            }
        }
        // A principal id as everywhere else (`kind:name`, folded to lower
        // case): a malformed one is refused, not answered with nothing.
        let agent = match nonempty(&self.agent) {
            Some(a) => Some(
                secondkey_core::principal::PrincipalId::parse(&a)
                    .map_err(|e| ApiError::bad_request("invalid_principal", format!("agent: {e}")))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(Filter {
            period: Period { from, to },
            agent,
            dataset: nonempty(&self.dataset),
            environment: nonempty(&self.environment),
            visible: None,
        })
    }
}

fn entry_at(store: &secondkey_store::Store, i: u64) -> Result<Entry, ApiError> {
    let bytes = store
        .entries(i, i + 1)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::unavailable(format!("log entry {i} is missing")))?;
    Entry::from_bytes(&bytes)
        .map_err(|e| ApiError::unavailable(format!("log entry {i} does not decode: {e}")))
}

/// The first index whose entry is at or after `ms` (entries are appended in
/// time order, give or take the milliseconds between preparing and
/// committing them, which the look-back and look-ahead cover).
fn first_at(store: &secondkey_store::Store, size: u64, ms: i64) -> Result<u64, ApiError> {
    let (mut lo, mut hi) = (0u64, size);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let t = millis(&entry_at(store, mid)?.time).unwrap_or(i64::MIN);
        if t < ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Reads the log around `period` into a tracker (blocking).
pub fn track_period(store: &secondkey_store::Store, period: Period) -> Result<Tracker, ApiError> {
    let size = store.log_size();
    let start = first_at(store, size, period.from.saturating_sub(LOOKBACK_MS))?;
    let end = first_at(store, size, period.to.saturating_add(LOOKAHEAD_MS))?;
    if end - start > MAX_ENTRIES {
        return Err(ApiError::bad_request(
            "period_too_long",
            format!(
                "this period spans {} log entries; narrow it to at most {MAX_ENTRIES}",
                end - start
            ),
        ));
    }
    let mut t = Tracker::new();
    let mut i = start;
    while i < end {
        let j = (i + 4096).min(end);
        for (k, b) in (i..).zip(store.entries(i, j)?) {
            let e = Entry::from_bytes(&b).map_err(|e| {
                ApiError::unavailable(format!("log entry {k} does not decode: {e}"))
            })?;
            t.feed(&e);
        }
        i = j;
    }
    Ok(t)
}

impl Gateway {
    /// Whose actions `who` may see in the graph: everyone's for a log
    /// reader; otherwise its own and those of the agents it owns.
    pub fn lineage_visible(&self, who: &Principal) -> Option<BTreeSet<String>> {
        if self.require_log_reader(who).is_ok() {
            return None;
        }
        let me = who.id.to_string();
        let mut v: BTreeSet<String> = self
            .config
            .principals
            .values()
            .filter(|p| p.owner.as_ref().map(|o| o.to_string()) == Some(me.clone()))
            .map(|p| p.id.to_string())
            .collect();
        v.insert(me);
        Some(v)
    }

    /// The lineage graph of the executed actions `q` selects that `who` may
    /// see, built from the log.
    pub async fn lineage_graph(
        &self,
        who: &Principal,
        q: &GraphQuery,
    ) -> Result<(Filter, Graph), ApiError> {
        let mut filter = q.filter(self.now().0)?;
        filter.visible = self.lineage_visible(who);
        let store = self.store.clone();
        let period = filter.period;
        let tracker = tokio::task::spawn_blocking(move || track_period(&store, period))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??;
        let g = graph::build(tracker.records(), &filter);
        Ok((filter, g))
    }
}
