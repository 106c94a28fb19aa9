//! Each action's history, rebuilt from log entries in log order.
//!
//! The gateway records a decision (`action.allowed`, `action.denied`,
//! `request.created`), then what happened to it: reviews, approval or
//! denial, expiry, escalation, the grant being used (`grant.consumed`) and
//! the result an adapter reported (`action.result`, `action.result.detail`).
//! [`Tracker`] joins those entries by the ids they name (`subjects.action`,
//! `subjects.request`, `subjects.grant`) into one [`ActionRecord`] per
//! decision, and keeps the exceptions and policy loads an auditor asks
//! about. Nothing here reads anything but entries: the log is the only
//! source.

use std::collections::{BTreeMap, HashMap};

use secondkey_log::entry::Entry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::millis;

/// A point in the log: when and at which index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// RFC 3339, as logged.
    pub at: String,
    /// The entry's log index.
    pub index: u64,
}

impl Mark {
    fn of(e: &Entry) -> Mark {
        Mark {
            at: e.time.clone(),
            index: e.index,
        }
    }
}

/// A human's approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved (`user:bob`).
    pub by: String,
    /// When, and the `review.submitted` entry.
    #[serde(flatten)]
    pub mark: Mark,
}

/// How a run ended, as its adapter reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `succeeded`, `failed` or `unknown`.
    pub outcome: String,
    /// What the adapter said (command tags, rows, duration, error…).
    pub summary: Value,
    #[serde(flatten)]
    pub mark: Mark,
}

/// One decision and everything the log says happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// `act_…` for an allow or a deny, `req_…` for a request.
    pub id: String,
    /// Who asked (`agent:report-bot`).
    pub principal: String,
    pub kind: String,
    pub operation: String,
    pub resource: String,
    /// `on_behalf_of`, as declared.
    pub on_behalf_of: Option<String>,
    /// `context.model`, as declared.
    pub model: Option<String>,
    /// The gateway's configured environment of the resource when logged,
    /// else the declared `context.environment`.
    pub environment: Option<String>,
    /// `api`, `pg`, `mcp`, …: how the action reached the gateway.
    pub transport: String,
    /// `allow`, `deny` or `review`.
    pub decision: String,
    /// Digest of the policy set that decided it.
    pub policy_set: Option<String>,
    /// The action digest.
    pub digest: Option<String>,
    /// The decision entry.
    pub decided: Mark,
    /// Where it stands: `allowed`, `denied`, `pending`, `approved`,
    /// `executed`, `succeeded`, `failed`, `unknown`, `expired`, `withdrawn`,
    /// `revoked`.
    pub state: String,
    /// Approvals of a request, in order.
    pub approvals: Vec<Approval>,
    /// The reviewer who denied a request.
    pub denied_by: Option<Approval>,
    /// When a request was approved (quorum reached).
    pub approved: Option<Mark>,
    /// When it ended without running (denied, expired, withdrawn, revoked).
    pub ended: Option<Mark>,
    /// Whether it was escalated to more reviewer groups.
    pub escalated: bool,
    /// When it ran: the entry that used its authorization up.
    pub executed: Option<Mark>,
    /// What its adapter reported, if anything.
    pub result: Option<RunResult>,
    /// Whether an adapter ran it at once (execute mode) rather than an
    /// agent with a grant.
    pub execute_mode: bool,
    /// Datasets the action declared (`lineage`).
    pub declared_reads: Vec<String>,
    pub declared_writes: Vec<String>,
    /// Datasets the adapter observed when it ran.
    pub observed_reads: Vec<String>,
    pub observed_writes: Vec<String>,
    /// Every log entry about it, in order.
    pub entries: Vec<u64>,
}

/// How an action touched a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Use {
    Read,
    Write,
    Export,
}

impl Use {
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Read => "read",
            Use::Write => "write",
            Use::Export => "export",
        }
    }
}

impl ActionRecord {
    /// Whether it ran.
    pub fn was_executed(&self) -> bool {
        self.executed.is_some()
    }

    /// Whether a human approved it (rather than policy allowing it).
    pub fn human_approved(&self) -> bool {
        self.approved.is_some()
    }

    /// Whether it was held for review.
    pub fn held(&self) -> bool {
        self.decision == "review"
    }

    /// Reads and writes: what the adapter observed when it ran, else what
    /// the action declared.
    pub fn reads(&self) -> &[String] {
        if self.observed_reads.is_empty() && self.observed_writes.is_empty() {
            &self.declared_reads
        } else {
            &self.observed_reads
        }
    }

    /// See [`ActionRecord::reads`].
    pub fn writes(&self) -> &[String] {
        if self.observed_reads.is_empty() && self.observed_writes.is_empty() {
            &self.declared_writes
        } else {
            &self.observed_writes
        }
    }

    /// Every dataset it touched and how. What it read is `export` when the
    /// operation is `export` (the data left), else `read`; what it wrote is
    /// `write`. The resource itself counts too when neither list names it
    /// (a tool, an endpoint): `read`/`export` by its operation, else
    /// `write`.
    pub fn datasets(&self) -> Vec<(String, Use)> {
        let read_use = if self.operation == "export" {
            Use::Export
        } else {
            Use::Read
        };
        let mut out: Vec<(String, Use)> = Vec::new();
        let mut push = |d: &str, u: Use| {
            if !out.iter().any(|(x, y)| x == d && *y == u) {
                out.push((d.to_string(), u));
            }
        };
        for d in self.reads() {
            push(d, read_use);
        }
        for d in self.writes() {
            push(d, Use::Write);
        }
        let named = self
            .reads()
            .iter()
            .chain(self.writes())
            .any(|d| *d == self.resource);
        if !named && !self.resource.is_empty() {
            let u = match self.operation.as_str() {
                "read" => Use::Read,
                "export" => Use::Export,
                _ => Use::Write,
            };
            push(&self.resource, u);
        }
        out
    }

    /// Rows the adapter reported (`summary.rows`), if it did.
    pub fn rows(&self) -> Option<u64> {
        self.result
            .as_ref()
            .and_then(|r| r.summary.get("rows"))
            .and_then(Value::as_u64)
    }

    /// Milliseconds from the request to its approval.
    pub fn approval_latency_ms(&self) -> Option<i64> {
        let a = self.approved.as_ref()?;
        Some(millis(&a.at)? - millis(&self.decided.at)?)
    }

    /// When it ran, else when it was decided: the time that places it in a
    /// period.
    pub fn time(&self) -> &str {
        self.executed
            .as_ref()
            .map(|m| m.at.as_str())
            .unwrap_or(&self.decided.at)
    }
}

/// Something an auditor looks at twice: a refused self-approval, an expiry,
/// an escalation, a denial, a refused grant use, a rejected policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// `self_review`, `not_eligible`, `duplicate_reviewer`, `expired`,
    /// `escalated`, `denied_by_policy`, `denied_by_reviewer`,
    /// `grant_refused`, `policy_rejected`, `revoked`,
    /// `statement_unresolved` (a lean statement entry whose shape is not in
    /// the log, or does not rebuild to its digest).
    pub kind: String,
    /// Who acted (the refused reviewer, the denying reviewer, the agent).
    pub actor: Option<String>,
    /// The request or action concerned.
    pub subject: Option<String>,
    /// One line: what happened.
    pub detail: String,
    #[serde(flatten)]
    pub mark: Mark,
}

/// A policy set coming into force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoad {
    /// `gateway.started` or `policy.reloaded`.
    pub event: String,
    /// SHA-256 over the policy files and schema.
    pub policy_set: String,
    /// How many policies.
    pub policies: u64,
    #[serde(flatten)]
    pub mark: Mark,
}

/// What an entry did to the history, for a streaming consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing a consumer acts on.
    Nothing,
    /// The action ran: its authorization was used up (`id` of the record).
    Executed,
    /// Its adapter reported how it went.
    Result,
}

/// Builds [`ActionRecord`]s from entries fed in log order.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    records: Vec<ActionRecord>,
    by_id: HashMap<String, usize>,
    /// Grants of allows (grant mode) → the action id.
    grants: HashMap<String, String>,
    exceptions: Vec<Exception>,
    policies: Vec<PolicyLoad>,
    /// Statement shapes: lean entries are read as the full entries they
    /// stand for.
    shapes: secondkey_log::lean::Shapes,
    /// Entries fed so far.
    pub seen: u64,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Feeds every entry of `entries` (canonical entry bytes, in log order).
    /// An entry that does not decode is an error: the log is the evidence,
    /// and a gap in it is not silently skipped.
    pub fn feed_bytes<I>(&mut self, entries: I) -> Result<(), crate::AuditError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        for b in entries {
            let e = Entry::from_bytes(b.as_ref()).map_err(|e| crate::AuditError::Entry {
                index: self.seen,
                message: e.to_string(),
            })?;
            self.feed(&e);
        }
        Ok(())
    }

    /// Feeds one entry; says what it did, and to which record. A lean
    /// statement entry is read as the full entry it stands for; one whose
    /// statement shape is missing (or does not rebuild to its digest) is an
    /// exception (`statement_unresolved`), recorded with what it says.
    pub fn feed(&mut self, e: &Entry) -> (Step, Option<usize>) {
        use secondkey_log::lean::{is_lean, SHAPE_EVENT};
        if e.event == SHAPE_EVENT || is_lean(&e.event, &e.payload) {
            match self.shapes.feed(e) {
                Ok(Some(full)) => {
                    let mut whole = e.clone();
                    whole.payload = full;
                    return self.feed_full(&whole);
                }
                Ok(None) => {}
                Err(err) => {
                    let subject = e.subjects.get("action").cloned();
                    self.exception(e, "statement_unresolved", subject, err.to_string());
                }
            }
        }
        self.feed_full(e)
    }

    fn feed_full(&mut self, e: &Entry) -> (Step, Option<usize>) {
        self.seen = self.seen.max(e.index + 1);
        let p = &e.payload;
        let request = e.subjects.get("request").cloned();
        let action = e.subjects.get("action").cloned();
        match e.event.as_str() {
            "gateway.started" => {
                if let Some(set) = p
                    .get("policies")
                    .and_then(|x| x.get("policy_set"))
                    .and_then(Value::as_str)
                {
                    self.policies.push(PolicyLoad {
                        event: e.event.clone(),
                        policy_set: set.to_string(),
                        policies: p["policies"]["count"].as_u64().unwrap_or(0),
                        mark: Mark::of(e),
                    });
                }
                (Step::Nothing, None)
            }
            "policy.reloaded" => {
                if let Some(set) = s(p, "policy_set") {
                    self.policies.push(PolicyLoad {
                        event: e.event.clone(),
                        policy_set: set,
                        policies: p["policies"].as_u64().unwrap_or(0),
                        mark: Mark::of(e),
                    });
                }
                (Step::Nothing, None)
            }
            "policy.rejected" => {
                self.exception(
                    e,
                    "policy_rejected",
                    None,
                    s(p, "error").unwrap_or_default(),
                );
                (Step::Nothing, None)
            }
            "action.allowed" | "action.denied" | "request.created" => {
                let id = request.or(action).unwrap_or_default();
                let i = self.decided(e, id);
                if let Some(g) = e.subjects.get("grant") {
                    self.grants.insert(g.clone(), self.records[i].id.clone());
                }
                if e.event == "action.denied" {
                    let detail = reasons_line(p);
                    self.exception(
                        e,
                        "denied_by_policy",
                        Some(self.records[i].id.clone()),
                        detail,
                    );
                }
                if self.records[i].execute_mode && e.event == "action.allowed" {
                    self.records[i].executed = Some(Mark::of(e));
                    self.records[i].state = "executed".into();
                    // `@record("after")`: the decision and its result in one entry.
                    if let Some(result) = p.get("result").filter(|r| r.is_object()) {
                        return (self.result(i, e, result), Some(i));
                    }
                    return (Step::Executed, Some(i));
                }
                (Step::Nothing, Some(i))
            }
            "review.submitted" => {
                let Some(i) = self.find(request.as_deref()) else {
                    return (Step::Nothing, None);
                };
                self.records[i].entries.push(e.index);
                let by = s(p, "reviewer").unwrap_or_default();
                if p["decision"] == "approve" {
                    self.records[i].approvals.push(Approval {
                        by,
                        mark: Mark::of(e),
                    });
                } else if p["decision"] == "deny" {
                    self.records[i].denied_by = Some(Approval {
                        by,
                        mark: Mark::of(e),
                    });
                }
                (Step::Nothing, Some(i))
            }
            "request.approved" => self.touch(e, request.as_deref(), |r, e| {
                r.approved = Some(Mark::of(e));
                r.state = "approved".into();
            }),
            "request.denied" => {
                let out = self.touch(e, request.as_deref(), |r, e| {
                    r.ended = Some(Mark::of(e));
                    r.state = "denied".into();
                });
                let by = s(p, "by");
                self.exception_by(
                    e,
                    "denied_by_reviewer",
                    by,
                    request.clone(),
                    "denied by a reviewer".into(),
                );
                out
            }
            "request.expired" => {
                let out = self.touch(e, request.as_deref(), |r, e| {
                    r.ended = Some(Mark::of(e));
                    r.state = "expired".into();
                });
                self.exception(
                    e,
                    "expired",
                    request.clone(),
                    "expired before it was decided or used".into(),
                );
                out
            }
            "request.withdrawn" => self.touch(e, request.as_deref(), |r, e| {
                r.ended = Some(Mark::of(e));
                r.state = "withdrawn".into();
            }),
            "request.revoked" => {
                let out = self.touch(e, request.as_deref(), |r, e| {
                    r.ended = Some(Mark::of(e));
                    r.state = "revoked".into();
                });
                self.exception_by(
                    e,
                    "revoked",
                    s(p, "by"),
                    request.clone(),
                    "approval revoked before use".into(),
                );
                out
            }
            "request.escalated" => {
                let out = self.touch(e, request.as_deref(), |r, _| r.escalated = true);
                let groups = strings(p.get("groups")).join(", ");
                self.exception(
                    e,
                    "escalated",
                    request.clone(),
                    format!("escalated to {groups}"),
                );
                out
            }
            "request.escalation_due" => self.touch(e, request.as_deref(), |_, _| {}),
            "grant.consumed" => {
                let id = request.or_else(|| {
                    e.subjects
                        .get("grant")
                        .and_then(|g| self.grants.get(g))
                        .cloned()
                });
                // `executed`: the gateway used the approval up for a caller
                // that runs it now (`?execute=true`, an adapter), which
                // reports the result, as after an execute-mode allow.
                let by_gateway = p.get("executed") == Some(&Value::Bool(true));
                let (_, i) = self.touch(e, id.as_deref(), |r, e| {
                    r.executed = Some(Mark::of(e));
                    r.state = "executed".into();
                    r.execute_mode |= by_gateway;
                });
                (
                    if i.is_some() {
                        Step::Executed
                    } else {
                        Step::Nothing
                    },
                    i,
                )
            }
            "action.result" | "action.result.detail" => {
                let of_request = request.is_some();
                let id = request.or(action);
                let Some(i) = self.find(id.as_deref()) else {
                    return (Step::Nothing, None);
                };
                self.records[i].entries.push(e.index);
                let step = self.result(i, e, p);
                // A request's result is two entries, written together: its
                // outcome (`action.result`), then what the run read and
                // wrote, with its summary (`action.result.detail`). It is
                // whole at the second, so that is its result step.
                let step = match (of_request, e.event.as_str()) {
                    (true, "action.result.detail") => Step::Result,
                    (true, _) => Step::Nothing,
                    (false, _) => step,
                };
                (step, Some(i))
            }
            "review.refused" => {
                let code = s(p, "code").unwrap_or_else(|| "refused".into());
                let msg = s(p, "message").unwrap_or_default();
                if let Some(i) = self.find(request.as_deref()) {
                    self.records[i].entries.push(e.index);
                }
                self.exception(e, &code, request, msg);
                (Step::Nothing, None)
            }
            "grant.refused" => {
                let msg = s(p, "message").unwrap_or_default();
                self.exception(e, "grant_refused", e.subjects.get("grant").cloned(), msg);
                (Step::Nothing, None)
            }
            _ => (Step::Nothing, None),
        }
    }

    /// Applies a result (`action.result`, `.detail`, or the `result` of an
    /// after-recorded `action.allowed`) in `p` to record `i`.
    fn result(&mut self, i: usize, e: &Entry, p: &Value) -> Step {
        let r = &mut self.records[i];
        if p.get("reads").is_some() || p.get("writes").is_some() {
            r.observed_reads = strings(p.get("reads"));
            r.observed_writes = strings(p.get("writes"));
        }
        // A request's outcome (`action.result` with `outcome`) and
        // an allow's result (`ok`) both set it; the detail of a
        // request adds the summary.
        let outcome = match (p.get("outcome").and_then(Value::as_str), p.get("ok")) {
            (Some(o), _) => Some(o.to_string()),
            (None, Some(Value::Bool(true))) => Some("succeeded".into()),
            (None, Some(Value::Bool(false))) => Some(
                if p["summary"]["status"] == "unknown" {
                    "unknown"
                } else {
                    "failed"
                }
                .into(),
            ),
            _ => None,
        };
        let summary = p.get("summary").cloned();
        let first = r.result.is_none();
        let res = r.result.get_or_insert_with(|| RunResult {
            outcome: String::new(),
            summary: Value::Null,
            mark: Mark::of(e),
        });
        if let Some(o) = outcome {
            if res.outcome.is_empty() || p.get("outcome").is_some() {
                res.outcome = o;
            }
        }
        if let Some(sm) = summary {
            res.summary = sm;
        }
        if !res.outcome.is_empty() {
            r.state = res.outcome.clone();
        }
        // One result event per run: the first result entry of it.
        if first {
            Step::Result
        } else {
            Step::Nothing
        }
    }

    fn find(&self, id: Option<&str>) -> Option<usize> {
        id.and_then(|i| self.by_id.get(i)).copied()
    }

    fn touch(
        &mut self,
        e: &Entry,
        id: Option<&str>,
        f: impl FnOnce(&mut ActionRecord, &Entry),
    ) -> (Step, Option<usize>) {
        let Some(i) = self.find(id) else {
            return (Step::Nothing, None);
        };
        let r = &mut self.records[i];
        r.entries.push(e.index);
        f(r, e);
        (Step::Nothing, Some(i))
    }

    fn exception(&mut self, e: &Entry, kind: &str, subject: Option<String>, detail: String) {
        self.exception_by(e, kind, e.actor.clone(), subject, detail)
    }

    fn exception_by(
        &mut self,
        e: &Entry,
        kind: &str,
        actor: Option<String>,
        subject: Option<String>,
        detail: String,
    ) {
        self.exceptions.push(Exception {
            kind: kind.to_string(),
            actor,
            subject,
            detail,
            mark: Mark::of(e),
        });
    }

    fn decided(&mut self, e: &Entry, id: String) -> usize {
        let p = &e.payload;
        let a = p.get("action").cloned().unwrap_or(Value::Null);
        let ctx = a.get("context").cloned().unwrap_or(Value::Null);
        let lineage = a.get("lineage").cloned().unwrap_or(Value::Null);
        let decision = s(p, "decision").unwrap_or_else(|| {
            match e.event.as_str() {
                "action.denied" => "deny",
                "request.created" => "review",
                _ => "allow",
            }
            .into()
        });
        let execute_mode = p.get("executed") == Some(&Value::Bool(true));
        let state = match decision.as_str() {
            "deny" => "denied",
            "review" => "pending",
            _ => "allowed",
        };
        let rec = ActionRecord {
            id: id.clone(),
            principal: e.actor.clone().unwrap_or_default(),
            kind: s(&a, "kind").unwrap_or_default(),
            operation: s(&a, "operation").unwrap_or_default(),
            resource: s(&a, "resource").unwrap_or_default(),
            on_behalf_of: s(&a, "on_behalf_of"),
            model: s(&ctx, "model"),
            environment: s(p, "environment").or_else(|| s(&ctx, "environment")),
            transport: s(p, "transport").unwrap_or_else(|| "api".into()),
            decision,
            policy_set: s(p, "policy_set"),
            digest: e.digest.clone(),
            decided: Mark::of(e),
            state: state.into(),
            approvals: vec![],
            denied_by: None,
            approved: None,
            ended: None,
            escalated: false,
            executed: None,
            result: None,
            execute_mode,
            declared_reads: strings(lineage.get("reads")),
            declared_writes: strings(lineage.get("writes")),
            observed_reads: vec![],
            observed_writes: vec![],
            entries: vec![e.index],
        };
        let i = self.records.len();
        self.records.push(rec);
        self.by_id.insert(id, i);
        i
    }

    /// Every action decided so far, in log order.
    pub fn records(&self) -> &[ActionRecord] {
        &self.records
    }

    /// The record at position `i` (as [`Tracker::feed`] names it).
    pub fn record(&self, i: usize) -> &ActionRecord {
        &self.records[i]
    }

    /// Exceptions, in log order.
    pub fn exceptions(&self) -> &[Exception] {
        &self.exceptions
    }

    /// Policy sets as they came into force, in log order.
    pub fn policy_loads(&self) -> &[PolicyLoad] {
        &self.policies
    }

    /// Forgets records that can change no more and were handed on (a
    /// streaming sink keeps memory bounded this way).
    pub fn forget(&mut self, keep: impl Fn(&ActionRecord) -> bool) {
        let old = std::mem::take(&mut self.records);
        self.by_id.clear();
        for r in old {
            if keep(&r) {
                self.by_id.insert(r.id.clone(), self.records.len());
                self.records.push(r);
            }
        }
        let live: std::collections::HashSet<&str> =
            self.records.iter().map(|r| r.id.as_str()).collect();
        self.grants.retain(|_, a| live.contains(a.as_str()));
        self.exceptions.clear();
        self.policies.clear();
    }
}

/// The policies a decision names, as one line.
fn reasons_line(p: &Value) -> String {
    let reasons: Vec<String> = p
        .get("reasons")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("policy").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        "no policy permits it".into()
    } else {
        format!("policy {}", reasons.join(", "))
    }
}

/// Counts per key, ordered (for stable reports).
pub type Counts = BTreeMap<String, u64>;
