//! `@record("after")`: allows that run before their log entry is durable.
//!
//! Invariant 1's one exception, chosen in policy (issue 19). An allow in
//! execute mode whose matching permits all carry `@record("after")`
//! ([`secondkey_policy::Decision::record_after`]) is *admitted* here and runs
//! at once; its decision waits in a [`Slot`] for the result, so that the two
//! are written as **one** `action.allowed` entry (`"recorded": "after"`,
//! `"result": …`). Whichever comes first hands the entry to the store:
//!
//! * the result (`Gateway::record_execution`, or a REST caller's report), or
//! * a quarter of the window after the run (`[log] after_window / 4`): the decision
//!   alone, the result following later as an ordinary `action.result`.
//!
//! Both go through the store's background commit (at most 2 ms of linger),
//! so an entry is durable about `after_window / 4 + 2 ms + one commit` after
//! its allow ran.
//!
//! **Back-pressure, fail closed.** An after-allow is admitted only while
//! fewer than `[log] after_max_pending` admitted ones are not yet durable,
//! the oldest of them is younger than half the window (so a commit may
//! take a quarter of the window before anyone waits), and no write of one
//! has failed since the last strict commit succeeded. Otherwise the allow
//! takes the strict path — it *waits* for its own entry to be durable before
//! it runs, and is refused if that fails. So when the log falls behind (a
//! commit slower than a quarter of the window) or fails, no new allow runs
//! unrecorded; what is exposed to a crash is bounded by the window, in
//! time, and by `after_max_pending`, in number.
//!
//! Nothing else takes this path: reviews, denials, grant-mode allows (a grant
//! token outlives the call) and permits without the annotation keep
//! invariant 1 unchanged (`gateway.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secondkey_core::time::Timestamp;
use secondkey_store::Store;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::gateway::{entry, prepared};
use crate::intercept::{Execution, ExecutionResult, TrackedExecution, EXECUTION_NS};
use secondkey_core::action::Digest;

/// A decision that ran and whose entry is not yet handed to the store.
#[derive(Debug)]
pub(crate) struct Slot {
    seq: u64,
    /// When the decision was made (the entry's own time is when it is written).
    decided: Timestamp,
    actor: String,
    id: String,
    digest: String,
    /// The `action.allowed` payload as decided (`"recorded": "after"`).
    payload: Value,
    /// A REST `?execute=true` allow: its caller reports the result by id.
    tracked: bool,
}

impl Slot {
    /// Who ran it.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The execution the slot stands for (lineage names it).
    pub fn execution(&self) -> Result<Execution, ApiError> {
        Ok(Execution {
            id: self.id.clone(),
            request_id: None,
            digest: Digest::from_hex(&self.digest)
                .map_err(|e| ApiError::internal(format!("digest of {}: {e}", self.id)))?,
            approvers: vec![],
            reasons: vec![],
        })
    }

    /// The one entry: the decision, and the result when there is one.
    /// Written once: the payload is moved into it, not copied.
    fn entry(
        &mut self,
        now: Timestamp,
        result: Option<&ExecutionResult>,
    ) -> Result<secondkey_log::entry::Prepared, ApiError> {
        let mut payload = std::mem::take(&mut self.payload);
        payload["decided_at"] = json!(crate::gateway::rfc3339(self.decided));
        if let Some(r) = result {
            payload["result"] = json!({"ok": r.ok, "summary": r.summary,
                "reads": r.reads, "writes": r.writes});
        }
        prepared(entry(
            now,
            "action.allowed",
            &self.actor,
            &[("action", &self.id)],
            Some(&self.digest),
            payload,
        ))
    }

    /// The tracked-execution record of a REST allow, if it is one.
    fn tracked_record(&self, reported: bool) -> Option<String> {
        self.tracked.then(|| {
            TrackedExecution {
                actor: self.actor.clone(),
                digest: self.digest.clone(),
                reported,
            }
            .encode()
        })
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ran, entry not yet handed to the store, by decision id.
    slots: HashMap<String, Slot>,
    /// Admitted and not yet durable, by admission order.
    undurable: BTreeMap<u64, Instant>,
    next: u64,
    /// A write of an after-allow failed; cleared by a strict commit.
    failed: bool,
}

/// The after-allows of one gateway. See the module docs.
#[derive(Debug)]
pub(crate) struct AfterLog {
    window: Duration,
    max_pending: usize,
    store: Store,
    state: Mutex<State>,
}

/// What the gateway gets back for an admitted allow.
pub(crate) struct Admitted {
    pub id: String,
}

impl AfterLog {
    pub fn new(window: Duration, max_pending: usize, store: Store) -> Arc<AfterLog> {
        Arc::new(AfterLog {
            window,
            max_pending,
            store,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an allow that may run now, or says no and gives its payload
    /// back (then it takes the strict path). On yes, its entry is handed to
    /// the store by the result or a quarter of the window from now,
    /// whichever comes first.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        self: &Arc<Self>,
        id: String,
        decided: Timestamp,
        actor: &str,
        digest: &str,
        payload: Value,
        tracked: bool,
    ) -> Result<Admitted, Value> {
        let now = Instant::now();
        let half = self.window / 2;
        let quarter = self.window / 4;
        {
            let mut st = self.state();
            if st.failed || st.undurable.len() >= self.max_pending {
                return Err(payload);
            }
            if let Some((_, oldest)) = st.undurable.first_key_value() {
                if now.duration_since(*oldest) >= half {
                    return Err(payload);
                }
            }
            let seq = st.next;
            st.next += 1;
            st.undurable.insert(seq, now);
            st.slots.insert(
                id.clone(),
                Slot {
                    seq,
                    decided,
                    actor: actor.to_string(),
                    id: id.clone(),
                    digest: digest.to_string(),
                    payload,
                    tracked,
                },
            );
        }
        let this = self.clone();
        let key = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(quarter).await;
            this.flush(&key).await;
        });
        Ok(Admitted { id })
    }

    /// Takes the slot of `id` if `actor` made it: the caller writes its entry.
    pub fn take(&self, id: &str, actor: &str) -> Option<Slot> {
        let mut st = self.state();
        if st.slots.get(id).is_some_and(|s| s.actor == actor) {
            st.slots.remove(id)
        } else {
            None
        }
    }

    /// Whether nothing is pending (a cheap check before [`AfterLog::take`]).
    pub fn is_idle(&self) -> bool {
        self.state().slots.is_empty()
    }

    /// The entry of `slot` with its result (and, for a REST allow, the
    /// tracked record marked reported), to append in the result's job.
    pub fn combined(
        &self,
        slot: &mut Slot,
        now: Timestamp,
        result: &ExecutionResult,
    ) -> Result<(secondkey_log::entry::Prepared, Option<String>), ApiError> {
        Ok((slot.entry(now, Some(result))?, slot.tracked_record(true)))
    }

    /// Notes that the entry of `slot` committed (or failed to).
    pub fn settled(&self, slot: &Slot, ok: bool) {
        let mut st = self.state();
        st.undurable.remove(&slot.seq);
        if !ok {
            st.failed = true;
            tracing::error!(
                action = %slot.id,
                "the log entry of a @record(\"after\") allow did not commit; after-allows wait for their entry until a commit succeeds"
            );
        }
    }

    /// A strict commit succeeded: the log is writable again.
    pub fn recovered(&self) {
        let mut st = self.state();
        if st.failed {
            st.failed = false;
        }
    }

    /// A quarter of the window passed without a result: writes the decision alone.
    async fn flush(&self, id: &str) {
        let slot = {
            let mut st = self.state();
            st.slots.remove(id)
        };
        let Some(slot) = slot else { return };
        self.write_alone(slot).await;
    }

    async fn write_alone(&self, mut slot: Slot) {
        let written = async {
            let e = slot.entry(crate::gateway::system_now(), None)?;
            let rec = slot.tracked_record(false);
            let id = slot.id.clone();
            // Background, like results: a report of this execution that
            // comes next is parked behind it, so it finds the record.
            self.store
                .transact_background(move |tx| {
                    if let Some(rec) = rec {
                        tx.put_record(EXECUTION_NS, &id, &rec)?;
                    }
                    tx.append_prepared(e)
                })
                .await
                .map_err(ApiError::from)
        }
        .await;
        self.settled(&slot, written.is_ok());
    }

    /// Writes every slot still waiting, in one commit (shutdown).
    pub async fn flush_all(&self) {
        let mut slots: Vec<Slot> = {
            let mut st = self.state();
            st.slots.drain().map(|(_, s)| s).collect()
        };
        if slots.is_empty() {
            return;
        }
        let now = crate::gateway::system_now();
        let mut writes = Vec::with_capacity(slots.len());
        for s in &mut slots {
            match s.entry(now, None) {
                Ok(e) => writes.push((s.id.clone(), s.tracked_record(false), e)),
                Err(_) => self.settled(s, false),
            }
        }
        let ok = self
            .store
            .transact(move |tx| {
                for (id, rec, e) in writes {
                    if let Some(rec) = rec {
                        tx.put_record(EXECUTION_NS, &id, &rec)?;
                    }
                    tx.append_prepared(e)?;
                }
                Ok(())
            })
            .await
            .is_ok();
        for s in &slots {
            self.settled(s, ok);
        }
    }
}
