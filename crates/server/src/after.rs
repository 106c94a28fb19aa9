//! `@record("after")`: allows that run before their log entry is durable.
//!
//! Invariant 1's one exception, chosen in policy (issue 19). An allow in
//! execute mode whose matching permits all carry `@record("after")`
//! ([`secondkey_policy::Decision::record_after`]) is *admitted* here and runs
//! at once; its decision waits in a [`Slot`] for the result, so that the two
//! are written as **one** `action.allowed` entry (`"recorded": "after"`,
//! `"result": …`). The entry is handed to the store when the result comes
//! (`Gateway::record_execution`, or a REST caller's report, which waits for
//! that commit) at most 2 ms after its result (at most a quarter of the
//! window): the first result waits that long for others to join its
//! commit, and every result that came meanwhile goes with it; or, if no
//! result came within half the window (`[log] after_window / 2`), the
//! decision alone, the result following later as an ordinary
//! `action.result`. Half, not less: a statement or call that takes a few
//! milliseconds still makes one entry, not two.
//!
//! One task per gateway (the *flusher*) hands over everything due in one
//! job, committed at once, instead of a timer and a commit per allow: under
//! load an allow costs no wake-up of its own. So an entry is durable about
//! `after_window / 2 + one commit` after its allow ran, at the latest.
//!
//! **Back-pressure, fail closed.** An after-allow is admitted only while
//! fewer than `[log] after_max_pending` admitted ones are not yet durable,
//! the oldest of them is younger than three quarters of the window (so a
//! commit may take a quarter of the window before anyone waits), and no
//! write of one has failed since the last strict commit succeeded.
//! Otherwise the allow takes the strict path — it *waits* for its own
//! entry to be durable before it runs, and is refused if that fails. So
//! when the log falls behind (a commit slower than a quarter of the
//! window) or fails, no new allow runs unrecorded; what is exposed to a
//! crash is bounded by the window, in time, and by `after_max_pending`, in
//! number.
//!
//! Nothing else takes this path: reviews, denials, grant-mode allows (a grant
//! token outlives the call) and permits without the annotation keep
//! invariant 1 unchanged (`gateway.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use secondkey_core::time::Timestamp;
use secondkey_store::Store;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

use crate::error::ApiError;
use crate::gateway::{entry, prepared};
use crate::intercept::{Execution, ExecutionResult, LineageBatch, TrackedExecution, EXECUTION_NS};
use secondkey_core::action::Digest;

/// What a result's reporter waits on: the commit of its entry.
type Reply = oneshot::Sender<Result<(), ApiError>>;

/// How long a decision joined by its result waits (at most a quarter of
/// the window) for others to share its commit.
const RESULT_LINGER: Duration = Duration::from_millis(2);

/// A decision that ran and whose entry is not yet handed to the store.
#[derive(Debug)]
struct Slot {
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
    /// The result, once reported, with when and who waits for its commit.
    result: Option<(Timestamp, ExecutionResult, Reply)>,
}

impl Slot {
    /// The execution the slot stands for (lineage names it).
    fn execution(&self) -> Result<Execution, ApiError> {
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
    /// When each slot is due to be handed over, in admission order (so in
    /// order of time); ids whose slot is gone are skipped.
    due: VecDeque<(Instant, String)>,
    /// Slots whose result came: due sooner ([`RESULT_LINGER`]), in order.
    ready: VecDeque<(Instant, String)>,
    /// Admitted and not yet durable, by admission order.
    undurable: BTreeMap<u64, Instant>,
    next: u64,
    /// A write of an after-allow failed; cleared by a strict commit
    /// enqueued after the last failure was noted.
    failed: bool,
    /// Failed writes so far: what a strict commit compares against, so that
    /// one enqueued before a failure does not clear it.
    failures: u64,
    /// Flushed for shutdown: later allows take the strict path.
    closed: bool,
}

impl State {
    /// Admission `seq`'s entry will not be durable (its commit failed, or
    /// it cannot be written at all): it leaves the undurable ones, and
    /// after-allows take the strict path until a strict commit enqueued
    /// after this succeeds ([`AfterLog::recovered`]).
    fn not_durable(&mut self, seq: u64, id: &str, error: &str) {
        self.undurable.remove(&seq);
        self.failed = true;
        self.failures += 1;
        tracing::error!(action = %id, %error,
            "the log entry of a @record(\"after\") allow was not written; after-allows wait for their entry until a commit succeeds");
    }
}

/// The after-allows of one gateway. See the module docs.
#[derive(Debug)]
pub(crate) struct AfterLog {
    window: Duration,
    max_pending: usize,
    store: Store,
    state: Mutex<State>,
    /// Wakes the flusher when the first slot of an idle spell is admitted.
    wake: Arc<Notify>,
    flusher: AtomicBool,
}

/// What the gateway gets back for an admitted allow.
pub(crate) struct Admitted {
    pub id: String,
}

/// What became of a result offered to [`AfterLog::attach`].
pub(crate) enum Attach {
    /// It joined its decision: the entry holding both is durable when this
    /// answers.
    Joined(oneshot::Receiver<Result<(), ApiError>>),
    /// The decision already has its result.
    Twice,
    /// No decision of this actor waits under that id (never one, or
    /// already handed to the store): record the result the ordinary way.
    Absent(ExecutionResult),
}

/// One slot's writes in a hand-over.
struct Write {
    seq: u64,
    id: String,
    record: Option<String>,
    entry: secondkey_log::entry::Prepared,
    lineage: Option<Lineage>,
    reply: Option<Reply>,
}

/// A result's lineage: who ran it, what it read and wrote, when, which run.
struct Lineage {
    actor: String,
    reads: Vec<String>,
    writes: Vec<String>,
    at: String,
    execution: Execution,
}

/// Who a hand-over's commit settles: the admission, and the reporter
/// waiting for it, if any.
struct Settle {
    seq: u64,
    id: String,
    reply: Option<Reply>,
}

/// A hand-over: the commit of its job, and the slots it settles.
struct HandOver {
    commit: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), secondkey_store::StoreError>> + Send>,
    >,
    settle: Vec<Settle>,
}

impl AfterLog {
    pub fn new(window: Duration, max_pending: usize, store: Store) -> Arc<AfterLog> {
        Arc::new(AfterLog {
            window,
            max_pending,
            store,
            state: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
            flusher: AtomicBool::new(false),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an allow that may run now, or says no and gives its payload
    /// back (then it takes the strict path). On yes, its entry is handed to
    /// the store 2 ms after its result, or half the window from now.
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
        let three_quarters = self.window * 3 / 4;
        let first = {
            let mut st = self.state();
            if st.closed || st.failed || st.undurable.len() >= self.max_pending {
                return Err(payload);
            }
            if let Some((_, oldest)) = st.undurable.first_key_value() {
                if now.duration_since(*oldest) >= three_quarters {
                    return Err(payload);
                }
            }
            let seq = st.next;
            st.next += 1;
            st.undurable.insert(seq, now);
            st.due.push_back((now + half, id.clone()));
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
                    result: None,
                },
            );
            st.due.len() == 1
        };
        if !self.flusher.swap(true, Ordering::AcqRel) {
            tokio::spawn(flusher(Arc::downgrade(self), self.wake.clone()));
        }
        if first {
            self.wake.notify_one();
        }
        Ok(Admitted { id })
    }

    /// Joins `result` to the waiting decision `id` if `actor` made it.
    pub fn attach(&self, id: &str, actor: &str, now: Timestamp, result: ExecutionResult) -> Attach {
        let mut st = self.state();
        match st.slots.get_mut(id) {
            Some(slot) if slot.actor == actor => {
                if slot.result.is_some() {
                    return Attach::Twice;
                }
                let (tx, rx) = oneshot::channel();
                slot.result = Some((now, result, tx));
                let at = Instant::now() + RESULT_LINGER.min(self.window / 4);
                st.ready.push_back((at, id.to_string()));
                let first = st.ready.len() == 1;
                drop(st);
                if first {
                    self.wake.notify_one();
                }
                Attach::Joined(rx)
            }
            _ => Attach::Absent(result),
        }
    }

    /// Whether nothing is pending (a cheap check before [`AfterLog::attach`]).
    /// Admitted and not yet durable.
    pub fn pending(&self) -> usize {
        self.state().undurable.len()
    }

    pub fn is_idle(&self) -> bool {
        self.state().slots.is_empty()
    }

    /// Notes that the entry of admission `seq` committed, or why not.
    fn settled(&self, seq: u64, id: &str, outcome: &Result<(), ApiError>) {
        let mut st = self.state();
        match outcome {
            Ok(()) => {
                st.undurable.remove(&seq);
            }
            Err(e) => st.not_durable(seq, id, &e.message),
        }
    }

    /// The count of failed writes, taken before a strict commit is
    /// enqueued and given back to [`AfterLog::recovered`].
    pub fn failures(&self) -> u64 {
        self.state().failures
    }

    /// A strict commit enqueued when `failures` writes had failed
    /// succeeded: the log is writable again, unless a write failed since
    /// (that failure's batch may have come after the strict commit's).
    pub fn recovered(&self, failures: u64) {
        let mut st = self.state();
        if st.failed && st.failures == failures {
            st.failed = false;
        }
    }

    /// When the next slot is due, if any. Drops the queues' stale heads
    /// first (slots already handed over the other way: a slot whose result
    /// came leaves its half-window mark behind), so that the flusher
    /// does not wake for them.
    fn next_due(&self) -> Option<Instant> {
        let mut guard = self.state();
        let st = &mut *guard;
        for q in [&mut st.ready, &mut st.due] {
            while q.front().is_some_and(|(_, id)| !st.slots.contains_key(id)) {
                q.pop_front();
            }
        }
        let due = st.due.front().map(|(t, _)| *t);
        let ready = st.ready.front().map(|(t, _)| *t);
        due.into_iter().chain(ready).min()
    }

    /// Hands to the store, in one job, every decision joined by its result
    /// (whether or not its linger is over: earlier is only more durable,
    /// and one commit serves them all) and every decision still alone that
    /// is due by `alone` — queued while the state is locked: a report that
    /// finds its slot gone queues its own job after this one (and finds the
    /// execution record it writes). Returns the commit to wait for and the
    /// writes it settles.
    fn hand_over(&self, alone: Instant) -> Option<HandOver> {
        let mut guard = self.state();
        let st = &mut *guard;
        let mut writes = Vec::new();
        let mut ids: Vec<String> = st.ready.drain(..).map(|(_, id)| id).collect();
        while st.due.front().is_some_and(|(t, _)| *t <= alone) {
            if let Some((_, id)) = st.due.pop_front() {
                ids.push(id);
            }
        }
        for id in ids {
            let Some(slot) = st.slots.remove(&id) else {
                continue;
            };
            match write_of(slot) {
                Ok(w) => writes.push(w),
                Err((unwritten, e)) => {
                    st.not_durable(unwritten.seq, &unwritten.id, &e.message);
                    if let Some(r) = unwritten.reply {
                        let _ = r.send(Err(e));
                    }
                }
            }
        }
        if writes.is_empty() {
            return None;
        }
        let settle = writes
            .iter_mut()
            .map(|w| Settle {
                seq: w.seq,
                id: w.id.clone(),
                reply: w.reply.take(),
            })
            .collect();
        let job = self.store.transact_soon(move |tx| {
            // Each lineage record once per hand-over, after the entries.
            let mut lineage = LineageBatch::default();
            for w in writes {
                if let Some(rec) = w.record {
                    tx.put_record(EXECUTION_NS, &w.id, &rec)?;
                }
                tx.append_later(w.entry)?;
                if let Some(l) = w.lineage {
                    lineage.add(&l.actor, (&l.reads, &l.writes), &l.execution, &l.at);
                }
            }
            lineage.apply(tx)
        });
        drop(guard);
        Some(HandOver {
            commit: Box::pin(job),
            settle,
        })
    }

    /// Waits for a hand-over's commit and settles its slots.
    async fn settle(&self, h: HandOver) {
        let out = h.commit.await.map_err(ApiError::from);
        for s in h.settle {
            self.settled(s.seq, &s.id, &out);
            if let Some(r) = s.reply {
                let _ = r.send(out.clone());
            }
        }
    }

    /// Writes every slot still waiting, in one commit (shutdown). Allows
    /// decided from now on take the strict path: none is admitted after
    /// the last hand-over, where no flusher would write it before the store
    /// closes.
    pub async fn flush_all(&self) {
        self.state().closed = true;
        let far = Instant::now() + Duration::from_secs(3600);
        if let Some(h) = self.hand_over(far) {
            self.settle(h).await;
        }
    }
}

/// A slot's writes, or why it cannot be written (its entry does not encode).
fn write_of(mut slot: Slot) -> Result<Write, (Settle, ApiError)> {
    let (now, result, reply) = match slot.result.take() {
        Some((now, r, reply)) => (now, Some(r), Some(reply)),
        None => (crate::gateway::system_now(), None, None),
    };
    let built = slot.entry(now, result.as_ref()).and_then(|entry| {
        let lineage = match &result {
            Some(r) if !(r.reads.is_empty() && r.writes.is_empty()) => Some(Lineage {
                actor: slot.actor.clone(),
                reads: r.reads.clone(),
                writes: r.writes.clone(),
                at: crate::gateway::rfc3339(now),
                execution: slot.execution()?,
            }),
            _ => None,
        };
        Ok((entry, lineage))
    });
    match built {
        Ok((entry, lineage)) => Ok(Write {
            seq: slot.seq,
            record: slot.tracked_record(result.is_some()),
            id: slot.id,
            entry,
            lineage,
            reply,
        }),
        Err(e) => Err((
            Settle {
                seq: slot.seq,
                id: slot.id,
                reply,
            },
            e,
        )),
    }
}

/// The gateway's flusher: sleeps until the next slot is due (the first
/// result lingered, or half the window passed without a decision's
/// result), hands over every decision joined by its result and every
/// one due (so that one commit serves all the results of a linger), and
/// lets its commit settle on a task of its own. A decision still without
/// its result is not handed over before half the window: the
/// result may yet join it, in one entry instead of two. Ends with the
/// gateway.
async fn flusher(log: Weak<AfterLog>, wake: Arc<Notify>) {
    loop {
        let next = match log.upgrade() {
            Some(l) => l.next_due(),
            None => return,
        };
        match next {
            // `notify_one` keeps a permit for a slot admitted meanwhile.
            None => {
                wake.notified().await;
                continue;
            }
            Some(t) => tokio::select! {
                _ = tokio::time::sleep_until(t.into()) => {}
                // Something may be due sooner now: look again.
                _ = wake.notified() => continue,
            },
        }
        let Some(l) = log.upgrade() else { return };
        if let Some(h) = l.hand_over(Instant::now()) {
            tokio::spawn(async move { l.settle(h).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, Arc<AfterLog>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(secondkey_store::StoreOptions::new(dir.path())).unwrap();
        (dir, AfterLog::new(Duration::from_secs(60), 10, store))
    }

    fn admitted(log: &Arc<AfterLog>, id: &str) -> bool {
        let now = Timestamp(0);
        log.admit(id.into(), now, "agent:bot", "d", json!({}), false)
            .is_ok()
    }

    /// A decision whose result has not come is not handed over early with
    /// another's that has: the result may still join it in one entry.
    #[tokio::test]
    async fn a_decision_without_its_result_waits_half_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(secondkey_store::StoreOptions::new(dir.path())).unwrap();
        // Half the window is 1 s (a quarter 500 ms, a sixteenth 125 ms).
        let log = AfterLog::new(Duration::from_secs(2), 10, store);
        assert!(admitted(&log, "a"));
        assert!(admitted(&log, "b"));
        let result = || ExecutionResult {
            ok: true,
            summary: json!({}),
            reads: vec![],
            writes: vec![],
        };
        let now = Timestamp(0);
        // `a`'s result at 850 ms: handed over 2 ms later, when `b` is due
        // within a sixteenth of the window (at 1 s), and past its quarter.
        tokio::time::sleep(Duration::from_millis(850)).await;
        let Attach::Joined(a) = log.attach("a", "agent:bot", now, result()) else {
            panic!("a's decision is waiting")
        };
        a.await.unwrap().unwrap();
        // `b`'s result at 900 ms, before its half: one entry for both.
        assert!(
            matches!(
                log.attach("b", "agent:bot", now, result()),
                Attach::Joined(_)
            ),
            "b's decision was handed over without its result"
        );
    }

    #[tokio::test]
    async fn a_strict_commit_enqueued_before_a_failure_does_not_clear_it() {
        let (_dir, log) = log();
        assert!(admitted(&log, "a"));
        // A strict commit is enqueued; a hand-over fails before it answers
        // (the failing batch may be the later one).
        let before = log.failures();
        log.settled(0, "a", &Err(ApiError::internal("the disk is full")));
        log.recovered(before);
        assert!(!admitted(&log, "b"), "still failing: allows go strict");
        // A strict commit enqueued after the failure clears it.
        log.recovered(log.failures());
        assert!(admitted(&log, "c"));
    }

    #[tokio::test]
    async fn nothing_is_admitted_once_flushed_for_shutdown() {
        let (_dir, log) = log();
        assert!(admitted(&log, "a"));
        log.flush_all().await;
        assert!(log.is_idle(), "the waiting slot was written");
        assert!(!admitted(&log, "b"));
        log.store.close();
    }
}
