//! The gateway as interception adapters see it (PostgreSQL, MCP, …): an
//! adapter turns traffic into an action, asks [`Gateway::intercept`], runs
//! only what comes back as [`Verdict::Run`], and reports what happened with
//! [`Gateway::record_execution`].
//!
//! Unlike the REST API's allow, a `Run` carries no grant token: the
//! authorization is the durable log entry written before `intercept`
//! returns, used up in the same transaction, so there is nothing to replay
//! or leak. An approval of a held action is used the same way, once, either
//! by the adapter that waited for it ([`Gateway::execute_approved`]) or by
//! the identical action submitted again.

use std::sync::Arc;
use std::time::Duration;

use secondkey_core::action::{Action, Digest};
use secondkey_core::principal::Principal;
use secondkey_core::request::{Outcome as ExecOutcome, Request, RequestState};
use secondkey_core::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::gateway::{
    announce_to, approvers, entry, log_executed, record_request_outcome, rfc3339, unsplit, Gateway,
    MAX_ACTION_BYTES,
};
use crate::identity::Credential;
use crate::views::ReasonView;

/// What an adapter intercepted.
#[derive(Debug, Clone)]
pub struct Intercept {
    /// The action, shaped as the brief's contract says (kind, operation,
    /// resource, params, …). Its digest is computed over exactly this JSON.
    pub action: Value,
    /// `context.gateway.transport`: `pg`, `mcp`, `http`, …
    pub transport: &'static str,
    /// Facts the adapter derived itself (the tables the parser found, the
    /// connection, a tool's annotations). Policy sees them under
    /// `context.gateway`, next to the gateway's own, which win on a clash.
    /// Never put what the client declared here (invariant 8).
    pub facts: Map<String, Value>,
}

/// A statement logged lean: its allow entry names the statement's shape
/// (a `statement.shape` entry of the same session, written with the
/// session's first allow of that shape) and carries only its own values,
/// instead of the whole action and facts (`secondkey_log::lean` rebuilds
/// them offline).
#[derive(Debug, Clone)]
pub struct Lean {
    /// The adapter's session id (`pgs_…`): shapes are looked up per session.
    pub session: String,
    /// The shape's digest ([`secondkey_log::lean::Shape::digest`]).
    pub shape: String,
    /// The shape itself when this session has not logged it yet: an allow
    /// logs it first, durably, before its own entry.
    pub new_shape: Option<secondkey_log::lean::Shape>,
    /// What differs per statement: `literals` (the statement's literal
    /// values, in order) or `parameters` / `parameters_sha256`.
    pub values: Map<String, Value>,
}

impl Lean {
    /// Adds the lean fields to an allow's payload; returns the shape entry
    /// to write before it, if the shape is new to the session.
    pub(crate) fn apply(
        self,
        payload: &mut Value,
        now: Timestamp,
        actor: &str,
    ) -> Result<Option<secondkey_log::entry::Prepared>, ApiError> {
        let shape = match self.new_shape {
            Some(shape) => Some(crate::gateway::prepared(entry(
                now,
                secondkey_log::lean::SHAPE_EVENT,
                actor,
                &[("session", &self.session)],
                None,
                shape.entry_payload(&self.session, &self.shape),
            ))?),
            None => None,
        };
        if let Some(p) = payload.as_object_mut() {
            p.insert("session".into(), Value::String(self.session));
            p.insert("shape".into(), Value::String(self.shape));
            p.extend(self.values);
        }
        Ok(shape)
    }
}

/// What to do with an intercepted action.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Run it now, once. The authorization is recorded and used up.
    Run(Execution),
    /// Refuse it; tell the client `message`.
    Deny(Denied),
    /// Hold it: a request waits for reviewers.
    Held(Held),
}

/// An authorized, used-up permission to run one action once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The decision id (`act_…`), or the request id for an approved action.
    pub id: String,
    /// Set when a human approval authorized it.
    pub request_id: Option<String>,
    pub digest: Digest,
    /// Who approved it (empty for an allow).
    pub approvers: Vec<String>,
    #[serde(skip)]
    pub reasons: Vec<ReasonView>,
}

/// A refusal.
#[derive(Debug, Clone)]
pub struct Denied {
    pub id: String,
    pub digest: Digest,
    pub reasons: Vec<ReasonView>,
    /// Names the policies and the decision id, for the client to read.
    pub message: String,
}

/// A held action.
#[derive(Debug, Clone)]
pub struct Held {
    /// Boxed: a request is large next to the other verdicts.
    pub request: Box<Request>,
    /// The page a human opens to decide.
    pub url: String,
    pub reasons: Vec<ReasonView>,
    /// The requester already had this exact action pending: no new request.
    pub reused: bool,
}

/// Whose result is being recorded.
pub(crate) enum Reported {
    /// An execution the caller holds (an adapter in this process, or an
    /// approved request it was given).
    Known(Execution),
    /// The id of an `?execute=true` allow, as a REST caller names it.
    Tracked(String),
}

/// What happened when an adapter ran an action.
#[derive(Debug, Clone, Default)]
pub struct ExecutionResult {
    /// Whether it succeeded.
    pub ok: bool,
    /// Command tag, rows, duration, error, size… as the adapter knows them.
    /// `"status": "unknown"` says the adapter cannot tell whether it took
    /// effect (the connection was lost mid-call): the request then ends
    /// `unknown`, not `failed`.
    pub summary: Value,
    /// Datasets (URIs) it read and wrote, as the adapter observed them.
    pub reads: Vec<String>,
    pub writes: Vec<String>,
}

impl ExecutionResult {
    /// Whether the adapter could not tell if the action took effect.
    pub fn outcome_unknown(&self) -> bool {
        !self.ok && self.summary.get("status").and_then(Value::as_str) == Some("unknown")
    }
}

/// The parsed submission, shared by the REST API and the adapters.
pub(crate) struct Submitted {
    pub raw: Value,
    pub action: Action,
    pub digest: Digest,
    pub transport: &'static str,
    pub facts: Map<String, Value>,
    /// Keep a record of an execute-mode allow (REST callers report results
    /// by id).
    pub track: bool,
    /// What the caller's token proved (adapters in the process: nothing
    /// beyond the principal).
    pub credential: crate::identity::Credential,
    /// Log an allow lean (an adapter's statement of a known shape).
    pub lean: Option<Lean>,
}

/// Whether the caller takes a grant (REST) or runs the action at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Grant,
    Execute,
}

/// A recorded decision.
pub(crate) enum Decided {
    Denied(Denied),
    Granted {
        id: String,
        digest: Digest,
        reasons: Vec<ReasonView>,
        token: String,
    },
    Run(Execution),
    Held(Held),
}

/// Executions allowed through the REST API (`?execute=true`), by id, so
/// their result is reported by their own caller and only once. In-process
/// adapters hold their [`Execution`] and need no such record.
pub(crate) const EXECUTION_NS: &str = "execution";

/// The record kept for a tracked execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrackedExecution {
    pub actor: String,
    pub digest: String,
    #[serde(default)]
    pub reported: bool,
}

impl TrackedExecution {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Lineage keys are `"<principal> <dataset>"`: principal ids have no spaces.
pub const LINEAGE_NS: &str = "lineage";

/// What one principal did with one dataset, as the lineage index keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineageRecord {
    pub principal: String,
    pub dataset: String,
    pub reads: u64,
    pub writes: u64,
    pub first_at: String,
    pub last_at: String,
    /// The execution that touched it last, and who approved that one.
    pub last_execution: String,
    pub last_approvers: Vec<String>,
}

impl Gateway {
    /// Decides an intercepted action and records the decision durably
    /// before returning (invariant 1).
    ///
    /// If policy holds it for review and this requester already has the
    /// identical action (same digest) approved and unused, that approval is
    /// used now (`Run` with `request_id`); if it has it pending, that
    /// request comes back (`Held` with `reused`) instead of a second one.
    pub async fn intercept(&self, who: &Principal, it: Intercept) -> Result<Verdict, ApiError> {
        self.intercept_as(who, &Credential::default(), it, None)
            .await
    }

    /// [`Gateway::intercept`] for a caller whose token proved more than who
    /// it is: the human a delegation token acts for never reviews what the
    /// agent asks with it ([`Credential::acting_for`]).
    pub async fn intercept_by(
        &self,
        who: &Principal,
        credential: &Credential,
        it: Intercept,
    ) -> Result<Verdict, ApiError> {
        self.intercept_as(who, credential, it, None).await
    }

    /// [`Gateway::intercept`] of a statement of a known shape: an allow is
    /// logged lean — the shape's digest and the statement's values, after
    /// the shape's own entry if the session has not logged it yet — and
    /// rebuilds offline to exactly the entry `intercept` would write (same
    /// action, same digest). Denials and reviews are logged in full, and
    /// log no shape. A `Run` without `request_id` is such an allow.
    pub async fn intercept_lean(
        &self,
        who: &Principal,
        it: Intercept,
        lean: Lean,
    ) -> Result<Verdict, ApiError> {
        self.intercept_as(who, &Credential::default(), it, Some(lean))
            .await
    }

    async fn intercept_as(
        &self,
        who: &Principal,
        credential: &Credential,
        it: Intercept,
        lean: Option<Lean>,
    ) -> Result<Verdict, ApiError> {
        let (action, digest, size) = Action::from_json_sized(&it.action)
            .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        if size > MAX_ACTION_BYTES {
            return Err(ApiError::bad_request(
                "action_too_large",
                format!("the action is {size} bytes; the limit is {MAX_ACTION_BYTES}"),
            ));
        }
        let s = Submitted {
            raw: it.action,
            action,
            digest,
            transport: it.transport,
            facts: it.facts,
            track: false,
            credential: credential.clone(),
            lean,
        };
        Ok(match self.decide_recorded(who, s, Mode::Execute).await? {
            Decided::Run(x) => Verdict::Run(x),
            Decided::Denied(d) => Verdict::Deny(d),
            Decided::Held(h) => Verdict::Held(h),
            Decided::Granted { .. } => {
                return Err(ApiError::unavailable("a grant was minted in execute mode"))
            }
        })
    }

    /// Waits until request `request_id` leaves `pending`, or `timeout`
    /// passes; returns it as it is then.
    pub async fn wait_decided(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Request, ApiError> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let req = self.load_request(request_id).await?;
            if req.state != RequestState::Pending {
                return Ok(req);
            }
            loop {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Err(_) => return self.load_request(request_id).await,
                    Ok(Ok(c)) if c.id == request_id || c.is_resync() => break,
                    Ok(Ok(_)) => continue,
                    // Lagged or closed: look again.
                    Ok(Err(_)) => break,
                }
            }
        }
    }

    async fn load_request(&self, id: &str) -> Result<Request, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || store.get_request(&id2))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??
            .ok_or_else(|| ApiError::not_found(format!("no request {id}")))
    }

    /// Uses the approval of request `request_id` now, once: `who` must be
    /// its requester (or a configured executor), and `digest` must be the
    /// digest of what is about to run.
    pub async fn execute_approved(
        &self,
        who: &Principal,
        request_id: &str,
        digest: &Digest,
    ) -> Result<Execution, ApiError> {
        let now = self.now();
        let is_executor = self.config.executors.contains(who.id.as_str());
        let actor = who.id.clone();
        let id = request_id.to_string();
        let dg = digest.clone();
        let consumed = self.announcing("grant.consumed");
        let req = self
            .commit_then(
                move |tx| {
                    let mut req = tx
                        .get_request(&id)?
                        .filter(|r| r.requester.id == actor || is_executor)
                        .ok_or_else(|| ApiError::not_found(format!("no request {id} of yours")))?;
                    let grant_id = req.grant.as_ref().map(|g| g.id.clone()).ok_or_else(|| {
                        ApiError::conflict(
                            "not_approved",
                            format!("request {id} is {}, not approved", req.state.as_str()),
                        )
                    })?;
                    let as_who = req.requester.id.clone();
                    let t = req
                        .consume(&grant_id, &dg, &as_who, now)
                        .map_err(crate::gateway::consume_error)?;
                    if !tx.use_grant(&grant_id, now.0)? {
                        return Err(ApiError::conflict(
                            "grant_used",
                            "this approval was already used",
                        )
                        .into());
                    }
                    tx.put_request(&req)?;
                    log_executed(tx, now, actor.as_str(), &req, &t.events)?;
                    Ok(req)
                },
                consumed,
            )
            .await?;
        Ok(Execution {
            id: req.id.clone(),
            request_id: Some(req.id.clone()),
            digest: req.digest.clone(),
            approvers: approvers(&req),
            reasons: vec![],
        })
    }

    /// Records what happened when `ex` ran (`action.result`) and updates
    /// the lineage of `who` with what it read and wrote.
    pub async fn record_execution(
        &self,
        who: &Principal,
        ex: &Execution,
        result: ExecutionResult,
    ) -> Result<(), ApiError> {
        self.record_result(who, Reported::Known(ex.clone()), result)
            .await
    }

    /// [`Gateway::record_execution`] for an adapter that does not wait for
    /// the entry: a result that joins its waiting `@record("after")`
    /// decision is handed to it here, with no task of its own (the after
    /// log writes the entry and reports a failed write itself); any other
    /// result is recorded on a task, a failure logged as `what`'s.
    pub fn record_execution_later(
        self: &Arc<Self>,
        who: &Principal,
        ex: Execution,
        result: ExecutionResult,
        what: &'static str,
    ) {
        let mut result = result;
        if ex.request_id.is_none()
            && !self.after.is_idle()
            && check_numbers(&result.summary, "summary").is_ok()
        {
            let actor = who.id.to_string();
            match self.after.attach(&ex.id, &actor, self.now(), result) {
                crate::after::Attach::Joined(_) => return,
                crate::after::Attach::Twice => {
                    tracing::warn!(execution = %ex.id, "{what}: its result was already recorded");
                    return;
                }
                crate::after::Attach::Absent(r) => result = r,
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(execution = %ex.id, "{what}: no runtime left to record its result");
            return;
        };
        let (gw, who) = (self.clone(), who.clone());
        rt.spawn(async move {
            if let Err(e) = gw.record_execution(&who, &ex, result).await {
                tracing::warn!(execution = %ex.id, error = %e.message, "could not record {what}'s result");
            }
        });
    }

    /// Records the result of `target`: an execution the caller holds, or
    /// one a caller outside the process names by id, which must be the
    /// caller's own and is reported once (checked and marked in the same
    /// transaction that records it).
    pub(crate) async fn record_result(
        &self,
        who: &Principal,
        target: Reported,
        result: ExecutionResult,
    ) -> Result<(), ApiError> {
        check_numbers(&result.summary, "summary")?;
        let now = self.now();
        let at = rfc3339(now);
        let actor = who.id.to_string();
        let is_executor = self.config.executors.contains(who.id.as_str());
        // An allow under `@record("after")` whose decision is still waiting:
        // one entry for both (`after.rs`).
        let result = if self.after.is_idle() {
            result
        } else {
            let id = match &target {
                Reported::Known(ex) if ex.request_id.is_none() => Some(ex.id.as_str()),
                Reported::Tracked(id) => Some(id.as_str()),
                Reported::Known(_) => None,
            };
            match id {
                Some(id) => match self.after.attach(id, &actor, now, result) {
                    crate::after::Attach::Joined(committed) => {
                        return committed.await.unwrap_or_else(|_| {
                            Err(ApiError::unavailable(
                                "the gateway stopped before the result was recorded",
                            ))
                        });
                    }
                    crate::after::Attach::Twice => {
                        return Err(ApiError::conflict(
                            "outcome_recorded",
                            format!("the result of {id} is already recorded"),
                        ));
                    }
                    crate::after::Attach::Absent(result) => result,
                },
                None => result,
            }
        };
        // The common case (an allow an adapter ran) is encoded here, off the
        // store writer's thread.
        let ready = match &target {
            Reported::Known(ex) if ex.request_id.is_none() => Some(crate::gateway::prepared(
                result_entry(now, &actor, ex, &result),
            )?),
            _ => None,
        };
        let of_request = matches!(&target, Reported::Known(ex) if ex.request_id.is_some());
        let (store, changes) = (self.store.clone(), self.feed());
        let job = move |tx: &mut dyn secondkey_store::Tx| {
            let ex = match target {
                Reported::Known(ex) => ex,
                Reported::Tracked(id) => {
                    let mut rec: TrackedExecution = tx
                        .get_record(EXECUTION_NS, &id)?
                        .and_then(|v| serde_json::from_str(&v).ok())
                        .filter(|r: &TrackedExecution| r.actor == actor)
                        .ok_or_else(|| {
                            ApiError::not_found(format!("no execution {id} of yours"))
                        })?;
                    if rec.reported {
                        return Err(ApiError::conflict(
                            "outcome_recorded",
                            format!("the result of {id} is already recorded"),
                        )
                        .into());
                    }
                    rec.reported = true;
                    tx.put_record(EXECUTION_NS, &id, &rec.encode())?;
                    let digest = Digest::from_hex(&rec.digest)
                        .map_err(|e| ApiError::unavailable(format!("stored digest: {e}")))?;
                    Execution {
                        id,
                        request_id: None,
                        digest,
                        approvers: vec![],
                        reasons: vec![],
                    }
                }
            };
            let mut changed = None;
            let mut lineage_owner = actor.clone();
            match &ex.request_id {
                Some(rid) => {
                    let outcome = if result.ok {
                        ExecOutcome::Succeeded
                    } else if result.outcome_unknown() {
                        ExecOutcome::Unknown
                    } else {
                        ExecOutcome::Failed
                    };
                    let detail = result_detail(&ex.id, &result);
                    let req =
                        record_request_outcome(tx, now, &actor, is_executor, rid, outcome, detail)?;
                    lineage_owner = req.requester.id.to_string();
                    changed = Some(req);
                }
                None => match ready {
                    Some(e) => {
                        tx.append_later(e)?;
                    }
                    None => {
                        tx.append(result_entry(now, &actor, &ex, &result))?;
                    }
                },
            }
            let mut lineage = LineageBatch::default();
            lineage.add(&lineage_owner, (&result.reads, &result.writes), &ex, &at);
            lineage.apply(tx)?;
            Ok(changed)
        };
        let work = async move {
            if let Some(req) = store.transact_background(job).await? {
                announce_to(&changes, &req, "action.result");
            }
            Ok(())
        };
        // A request's result is committed and announced in a task of its
        // own, so a caller dropped meanwhile leaves neither half undone. An
        // allow's result changes no request: nothing to announce, and no
        // task to spawn on this frequent path.
        if of_request {
            unsplit(work).await?;
        } else {
            work.await?;
        }
        Ok(())
    }

    /// `POST /v1/executions/{id}/result`: a REST caller that ran an action
    /// with `?execute=true` reports how it went, once.
    pub async fn report_execution(
        &self,
        who: &Principal,
        id: &str,
        result: ExecutionResult,
    ) -> Result<(), ApiError> {
        let target = if id.starts_with("req_") {
            let req = self.get_request(who, id).await?;
            Reported::Known(Execution {
                id: req.id.clone(),
                request_id: Some(req.id.clone()),
                digest: req.digest.clone(),
                approvers: approvers(&req),
                reasons: vec![],
            })
        } else {
            // Looked up inside the recording transaction: no read (and no
            // blocking-pool hop) ahead of it on this frequent path.
            Reported::Tracked(id.to_string())
        };
        self.record_result(who, target, result).await
    }

    /// The lineage index of `principal`: every dataset it read or wrote
    /// through an adapter, with counts and who approved the last use.
    /// Visible to the principal itself, its owner, and log readers.
    pub async fn lineage(
        &self,
        who: &Principal,
        principal: &str,
    ) -> Result<Vec<LineageRecord>, ApiError> {
        let owner = self
            .config
            .principals
            .get(principal)
            .and_then(|p| p.owner.as_ref())
            .map(|o| o.to_string());
        let me = who.id.to_string();
        if me != principal
            && owner.as_deref() != Some(me.as_str())
            && self.require_log_reader(who).is_err()
        {
            return Err(ApiError::forbidden(
                "not_lineage_reader",
                format!("only {principal}, its owner, or a log reader may read its lineage"),
            ));
        }
        let store = self.store.clone();
        let prefix = format!("{principal} ");
        let rows = tokio::task::spawn_blocking(move || {
            store.list_records(LINEAGE_NS, &prefix, None, 10_000)
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
        rows.into_iter()
            .map(|(k, v)| {
                serde_json::from_str(&v).map_err(|e| {
                    ApiError::unavailable(format!("lineage record {k:?} is unreadable: {e}"))
                })
            })
            .collect()
    }
}

/// Refuses a number the audit log cannot hold exactly: beyond ±(2^53 − 1),
/// integer or double (canonical JSON numbers are doubles, and past that
/// bound a double's digits read back as an unsafe integer). Says where it
/// is and what to send instead — `400 unsafe_number`, not a size error.
pub(crate) fn check_numbers(v: &Value, path: &str) -> Result<(), ApiError> {
    // The common case, every number safe, builds no paths.
    if numbers_safe(v) {
        return Ok(());
    }
    locate_unsafe(v, path)
}

fn number_safe(n: &serde_json::Number) -> bool {
    let max = secondkey_log::entry::MAX_SAFE_INTEGER;
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u <= max,
        (None, Some(i)) => i.unsigned_abs() <= max,
        (None, None) => n.as_f64().is_some_and(|f| f.abs() <= max as f64),
    }
}

fn numbers_safe(v: &Value) -> bool {
    match v {
        Value::Number(n) => number_safe(n),
        Value::Array(items) => items.iter().all(numbers_safe),
        Value::Object(m) => m.values().all(numbers_safe),
        _ => true,
    }
}

/// [`check_numbers`]'s error, naming where the unsafe number is.
fn locate_unsafe(v: &Value, path: &str) -> Result<(), ApiError> {
    match v {
        Value::Number(n) => {
            if number_safe(n) {
                Ok(())
            } else {
                Err(ApiError::bad_request(
                    "unsafe_number",
                    format!("{path}: {n} is beyond ±(2^53 − 1), which the audit log cannot record exactly; send it as a string"),
                ))
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| locate_unsafe(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m
            .iter()
            .try_for_each(|(k, x)| locate_unsafe(x, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

/// What an `action.result` (or `.detail`) entry says about a run.
fn result_detail(execution: &str, result: &ExecutionResult) -> Value {
    json!({"execution": execution, "ok": result.ok, "summary": result.summary,
           "reads": result.reads, "writes": result.writes})
}

/// The `action.result` entry of an allow `ex` that ran.
fn result_entry(
    now: Timestamp,
    actor: &str,
    ex: &Execution,
    result: &ExecutionResult,
) -> secondkey_log::entry::Entry {
    entry(
        now,
        "action.result",
        actor,
        &[("action", &ex.id)],
        Some(ex.digest.as_str()),
        result_detail(&ex.id, result),
    )
}

/// Lineage touches folded per principal and dataset, written once each:
/// a job that records many results (the after-allow hand-over) reads and
/// writes each lineage record once instead of once per result. Applying
/// the batch leaves every record as applying its touches one by one, in
/// order, would: counts summed, `first_at` from the first touch of a new
/// record, the `last_*` fields from the last touch. Records are written in
/// key order, so concurrent jobs (replicas on one store) lock them in the
/// same order.
#[derive(Debug, Default)]
pub(crate) struct LineageBatch {
    touches: std::collections::BTreeMap<String, LineageRecord>,
}

impl LineageBatch {
    /// Adds what `ex` of `principal` read and wrote, at `at`.
    pub(crate) fn add(
        &mut self,
        principal: &str,
        result: (&[String], &[String]),
        ex: &Execution,
        at: &str,
    ) {
        for (datasets, write) in [(result.0, false), (result.1, true)] {
            for dataset in datasets {
                let t = self
                    .touches
                    .entry(format!("{principal} {dataset}"))
                    .or_insert_with(|| LineageRecord {
                        principal: principal.to_string(),
                        dataset: dataset.clone(),
                        first_at: at.to_string(),
                        ..LineageRecord::default()
                    });
                if write {
                    t.writes += 1;
                } else {
                    t.reads += 1;
                }
                t.last_at = at.to_string();
                t.last_execution = ex.id.clone();
                t.last_approvers = ex.approvers.clone();
            }
        }
    }

    /// Reads, updates and writes each touched record once.
    pub(crate) fn apply(
        self,
        tx: &mut dyn secondkey_store::Tx,
    ) -> Result<(), secondkey_store::StoreError> {
        for (key, t) in self.touches {
            let mut rec: LineageRecord = match tx.get_record(LINEAGE_NS, &key)? {
                Some(v) => serde_json::from_str(&v).unwrap_or_default(),
                None => LineageRecord::default(),
            };
            if rec.first_at.is_empty() {
                rec.first_at = t.first_at;
            }
            rec.principal = t.principal;
            rec.dataset = t.dataset;
            rec.reads += t.reads;
            rec.writes += t.writes;
            rec.last_at = t.last_at;
            rec.last_execution = t.last_execution;
            rec.last_approvers = t.last_approvers;
            let value = serde_json::to_string(&rec)
                .map_err(|e| secondkey_store::StoreError::Corrupt(e.to_string()))?;
            tx.put_record(LINEAGE_NS, &key, &value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lineage(store: &secondkey_store::Store) -> Vec<(String, String)> {
        store.list_records(LINEAGE_NS, "", None, 10_000).unwrap()
    }

    fn execution(id: String, approvers: usize) -> Execution {
        Execution {
            id,
            request_id: None,
            digest: secondkey_core::action::Digest::of_json(&serde_json::json!("x")).unwrap(),
            approvers: (0..approvers).map(|k| format!("user:r{k}")).collect(),
            reasons: vec![],
        }
    }

    /// One touch: (principal, reads, writes, approvers), by index.
    type Touch = (usize, Vec<usize>, Vec<usize>, usize);

    /// A touch as a result records it: who, reads, writes, the run, when.
    type Touched = (&'static str, Vec<String>, Vec<String>, Execution, String);

    fn touches() -> impl Strategy<Value = Vec<Touch>> {
        let sets = || proptest::collection::vec(0..3usize, 0..3);
        proptest::collection::vec((0..2usize, sets(), sets(), 0..2usize), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// One batch over a whole sequence of results leaves every lineage
        /// record exactly as applying the results one at a time does, over
        /// records that exist before (`earlier`) and records it creates.
        #[test]
        fn a_lineage_batch_equals_its_touches_applied_one_by_one(
            seq in touches(),
            earlier in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sets = ["db.a", "db.b", "db.c"];
            let names = |v: &[usize]| -> Vec<String> { v.iter().map(|&d| sets[d].to_string()).collect() };
            let seq: Vec<Touched> = seq
                .iter()
                .enumerate()
                .map(|(i, (who, r, w, appr))| {
                    (
                        ["agent:a", "agent:b"][*who],
                        names(r),
                        names(w),
                        execution(format!("act_{i}"), *appr),
                        format!("2026-12-03T11:00:{i:02}Z"),
                    )
                })
                .collect();
            let one = tempfile::tempdir().unwrap();
            let all = tempfile::tempdir().unwrap();
            let open = |d: &tempfile::TempDir| {
                secondkey_store::Store::open(secondkey_store::StoreOptions::new(d.path())).unwrap()
            };
            let (s1, s2) = (open(&one), open(&all));
            rt.block_on(async {
                if earlier {
                    for s in [&s1, &s2] {
                        s.transact(|tx| {
                            let mut b = LineageBatch::default();
                            let old = execution("act_old".into(), 0);
                            b.add("agent:a", (&["db.a".into()], &["db.b".into()]), &old, "2026-12-02T00:00:00Z");
                            b.apply(tx)
                        })
                        .await
                        .unwrap();
                    }
                }
                for (who, r, w, ex, at) in seq.clone() {
                    s1.transact(move |tx| {
                        let mut b = LineageBatch::default();
                        b.add(who, (&r, &w), &ex, &at);
                        b.apply(tx)
                    })
                    .await
                    .unwrap();
                }
                let batch = seq.clone();
                s2.transact(move |tx| {
                    let mut b = LineageBatch::default();
                    for (who, r, w, ex, at) in &batch {
                        b.add(who, (r, w), ex, at);
                    }
                    b.apply(tx)
                })
                .await
                .unwrap();
            });
            let got = lineage(&s2);
            prop_assert_eq!(lineage(&s1), got.clone());
            // And the counts are every touch's, on top of what was there.
            let recs: Vec<LineageRecord> =
                got.iter().map(|(_, v)| serde_json::from_str(v).unwrap()).collect();
            let before = u64::from(earlier);
            let reads: u64 = seq.iter().map(|t| t.1.len() as u64).sum();
            let writes: u64 = seq.iter().map(|t| t.2.len() as u64).sum();
            prop_assert_eq!(recs.iter().map(|r| r.reads).sum::<u64>(), reads + before);
            prop_assert_eq!(recs.iter().map(|r| r.writes).sum::<u64>(), writes + before);
        }
    }
}
