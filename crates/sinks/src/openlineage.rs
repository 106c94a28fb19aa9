//! OpenLineage: one `RunEvent` per executed action, POSTed to an
//! OpenLineage HTTP endpoint (Marquez `/api/v1/lineage`, a data catalog's
//! collector) — its inputs and outputs, and a `secondkey` run facet with
//! the request id, the approvers and the log index (see
//! [`secondkey_audit::openlineage`] for the mapping and when events fire).
//!
//! The sink reads the log like the others and ships in log order, at least
//! once (an event is re-sent after a crash; its `runId` is stable, so a
//! receiver merges). To describe an action when its result arrives, it
//! follows the log with [`secondkey_audit::history::Tracker`]; after a
//! restart it first reads back up to `lookback` entries before its cursor,
//! so actions decided shortly before are known.

use std::sync::Arc;
use std::time::Duration;

use secondkey_audit::history::{Step, Tracker};
use secondkey_audit::openlineage::{emits, run_event};
use secondkey_log::entry::Entry;

use crate::runner::EntrySource;
use crate::{DeliverFuture, Sink, SinkError};

/// Default number of entries read back at start.
pub const DEFAULT_LOOKBACK: u64 = 100_000;

/// The sink.
pub struct OpenLineageSink {
    url: String,
    namespace: String,
    origin: String,
    api_key: Option<String>,
    agent: ureq::Agent,
    tracker: Tracker,
    source: Option<Arc<dyn EntrySource>>,
    lookback: u64,
    primed: bool,
    /// The last entry fed and its event: a retried delivery of the same
    /// entry sends the same event without feeding the entry twice.
    last: Option<(u64, Option<serde_json::Value>)>,
}

impl std::fmt::Debug for OpenLineageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenLineageSink")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl OpenLineageSink {
    /// A sink POSTing events to `url`, jobs in `namespace`; `source` lets it
    /// read back `lookback` entries before where it starts.
    pub fn new(
        url: &str,
        namespace: &str,
        origin: &str,
        api_key: Option<String>,
        timeout: Duration,
        source: Option<Arc<dyn EntrySource>>,
        lookback: u64,
    ) -> OpenLineageSink {
        OpenLineageSink {
            url: url.to_string(),
            namespace: namespace.to_string(),
            origin: origin.to_string(),
            api_key,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .redirects(0)
                .user_agent(concat!("secondkey-sinks/", env!("CARGO_PKG_VERSION")))
                .build(),
            tracker: Tracker::new(),
            source,
            lookback,
            primed: false,
            last: None,
        }
    }

    /// Reads back the entries before `index` (once), without sending.
    fn prime(&mut self, index: u64) {
        self.primed = true;
        let Some(src) = &self.source else { return };
        let mut at = index.saturating_sub(self.lookback);
        while at < index {
            let Ok(batch) = src.read_from(at, (index - at).min(4096) as usize) else {
                tracing::warn!(at, "openlineage sink: could not read back the log; actions decided before may be missed");
                return;
            };
            if batch.is_empty() {
                return;
            }
            for (i, b) in batch {
                if i >= index {
                    return;
                }
                if let Ok(e) = Entry::from_bytes(&b) {
                    self.tracker.feed(&e);
                }
                at = i + 1;
            }
        }
    }

    /// The event `entry` triggers, if any (public for tests).
    pub fn event_for(&mut self, index: u64, entry: &[u8]) -> Option<serde_json::Value> {
        if let Some((i, ev)) = &self.last {
            if *i == index {
                return ev.clone();
            }
        }
        let ev = self.next_event(index, entry);
        self.last = Some((index, ev.clone()));
        ev
    }

    fn next_event(&mut self, index: u64, entry: &[u8]) -> Option<serde_json::Value> {
        if !self.primed {
            self.prime(index);
        }
        let e = Entry::from_bytes(entry).ok()?;
        let (step, i) = self.tracker.feed(&e);
        let i = i?;
        let r = self.tracker.record(i);
        let out = emits(step, r).then(|| run_event(r, &self.namespace, &self.origin, index));
        if step != Step::Nothing {
            // Keep memory bounded: what can change no more is forgotten.
            let n = self.tracker.records().len();
            if n > 10_000 {
                self.tracker.forget(|r| {
                    matches!(r.state.as_str(), "pending" | "approved" | "allowed")
                        || (r.was_executed() && r.result.is_none())
                });
            }
        }
        out
    }
}

impl Sink for OpenLineageSink {
    fn kind(&self) -> &'static str {
        "openlineage"
    }

    fn deliver<'a>(&'a mut self, index: u64, entry: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let Some(event) = self.event_for(index, entry) else {
                return Ok(());
            };
            let mut req = self
                .agent
                .post(&self.url)
                .set("content-type", "application/json");
            if let Some(k) = &self.api_key {
                req = req.set("authorization", &format!("Bearer {k}"));
            }
            let url = self.url.clone();
            let body = event.to_string();
            let outcome = tokio::task::spawn_blocking(move || match req.send_string(&body) {
                Ok(r) => Ok(r.status()),
                Err(ureq::Error::Status(code, r)) => Err((
                    Some(code),
                    r.into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect::<String>(),
                )),
                Err(ureq::Error::Transport(t)) => Err((None, t.to_string())),
            })
            .await;
            match outcome {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((Some(status), body))) => Err(SinkError::Rejected {
                    address: url,
                    status,
                    body,
                }),
                Ok(Err((None, message))) => Err(SinkError::Http {
                    address: url,
                    message,
                }),
                Err(e) => Err(SinkError::Http {
                    address: url,
                    message: format!("request task failed: {e}"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::SourceError;
    use serde_json::json;

    fn entry(
        index: u64,
        event: &str,
        subjects: &[(&str, &str)],
        payload: serde_json::Value,
    ) -> Vec<u8> {
        Entry {
            index,
            time: format!("2026-12-01T10:00:{index:02}.000Z"),
            event: event.into(),
            actor: Some("agent:a".into()),
            subjects: subjects
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            digest: None,
            payload,
        }
        .to_bytes()
        .unwrap()
    }

    fn log() -> Vec<Vec<u8>> {
        let act = "act_019ad7c3e1f03f9a0000000000000001";
        vec![
            entry(
                0,
                "action.allowed",
                &[("action", act)],
                json!({"decision": "allow", "executed": true, "transport": "pg",
                "action": {"kind": "sql", "operation": "read", "resource": "postgres://a/t", "lineage": {"reads": ["postgres://a/t"]}}}),
            ),
            entry(
                1,
                "gateway.started",
                &[],
                json!({"policies": {"count": 1, "policy_set": "x"}}),
            ),
            entry(
                2,
                "action.result",
                &[("action", act)],
                json!({"execution": act, "ok": true, "summary": {"rows": 1}, "reads": ["postgres://a/t"], "writes": []}),
            ),
        ]
    }

    struct Mem(Vec<Vec<u8>>);

    impl EntrySource for Mem {
        fn read_from(&self, start: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SourceError> {
            Ok((start..)
                .zip(self.0.iter().skip(start as usize).take(max).cloned())
                .collect())
        }
    }

    fn sink(source: Option<Arc<dyn EntrySource>>) -> OpenLineageSink {
        OpenLineageSink::new(
            "http://127.0.0.1:9/x",
            "ns",
            "o",
            None,
            Duration::from_secs(1),
            source,
            100,
        )
    }

    #[test]
    fn one_event_per_run_even_when_a_delivery_is_retried() {
        let l = log();
        let mut s = sink(None);
        assert!(s.event_for(0, &l[0]).is_none());
        assert!(s.event_for(1, &l[1]).is_none());
        let ev = s.event_for(2, &l[2]).unwrap();
        assert_eq!(ev["eventType"], "COMPLETE");
        assert_eq!(ev["run"]["facets"]["secondkey"]["log_index"], 2);
        // The runner retries the same entry after a failed delivery.
        assert_eq!(s.event_for(2, &l[2]).unwrap(), ev);
        assert_eq!(s.tracker.records().len(), 1);
    }

    #[test]
    fn after_a_restart_it_reads_back_what_was_decided_before_its_cursor() {
        let l = log();
        let mut cold = sink(None);
        assert!(
            cold.event_for(2, &l[2]).is_none(),
            "without the decision there is nothing to say"
        );
        let mut s = sink(Some(Arc::new(Mem(l.clone()))));
        let ev = s.event_for(2, &l[2]).unwrap();
        assert_eq!(ev["inputs"][0]["name"], "t");
    }
}
