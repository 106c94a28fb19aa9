//! The gateway's use cases: submit an action, review, withdraw, revoke,
//! consume a grant, expire and escalate. Handlers in `api` only extract
//! input and call these; the rules themselves live in `secondkey-core` and
//! `secondkey-policy`. Every change and the log entries that record it
//! commit in one store transaction before anyone is told (invariant 1).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use secondkey_core::action::{Action, Digest};
use secondkey_core::grant::{sign_grant, verify_grant, GrantClaims};
use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_core::request::{
    CoreEvent, Outcome as ExecOutcome, Request, RequestState, ReviewDecision, ReviewError,
    Transition,
};
use secondkey_core::time::Timestamp;
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::entry::Entry;
use secondkey_log::note::Signer;
use secondkey_policy::{Outcome, PolicyEngine};
use secondkey_store::{GrantRow, Store, StoreError, Tx};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::admission::{on_behalf_of_record, Backing};
use crate::config::Config;
use crate::error::ApiError;
use crate::identity::Credential;
use crate::intercept::{Decided, Denied, Execution, Held, Mode, Submitted};
use crate::views::{
    ActionResponse, ExecutionView, OnBehalfOfView, ReasonView, RequestSummary, RequestView,
    RequirementView, ReviewView,
};

/// Largest action, as canonical JSON, that the gateway accepts: the whole
/// action must fit in one audit-log entry (64 KiB), with room to spare.
pub const MAX_ACTION_BYTES: usize = 48 * 1024;

/// Something that happened to a request, for waiters and channels.
#[derive(Debug, Clone, Serialize)]
pub struct RequestChange {
    pub id: String,
    pub state: RequestState,
    /// `request.created`, `request.approved`, `request.escalation_due`, …
    /// or [`RequestChange::RESYNC`].
    pub event: String,
}

impl RequestChange {
    /// The event of a change that names no request: changes made on other
    /// replicas may have been missed (the store re-connected its `LISTEN`,
    /// or this feed lagged), so whoever waits on a request reads it again.
    /// Its `id` is empty and its `state` means nothing.
    pub const RESYNC: &'static str = "resync";

    /// Whether this is a [`RequestChange::RESYNC`].
    pub fn is_resync(&self) -> bool {
        self.event == Self::RESYNC
    }
}

/// The gateway: configuration, keys, policy, store and the change feed.
pub struct Gateway {
    pub config: Config,
    pub store: Store,
    policy: RwLock<Arc<PolicyEngine>>,
    log_signer: Signer,
    grant_key: SigningKey,
    grant_kid: String,
    changes: broadcast::Sender<RequestChange>,
    /// This replica, and whether it runs the background work (see
    /// `replicas.rs`).
    pub replica: crate::replicas::Replica,
    checkpoint_cache: Mutex<Option<(u64, String)>>,
    /// Largest size anchored in the store by this process.
    anchored: Mutex<u64>,
    /// Long-polls, streams, pending requests and request rate per principal.
    pub(crate) admission: Arc<crate::admission::Admission>,
    /// The main listener's connection counts, once it listens (metrics).
    pub connections: std::sync::OnceLock<Arc<crate::limits::Connections>>,
    clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
    /// Workload identity providers (JWT bearer tokens) and their key caches.
    pub identity: crate::identity::Identity,
    /// Web sessions and OpenID Connect sign-in.
    pub web: crate::web::WebState,
    /// What the `[[log.witnesses]]` cosigned last.
    pub witnessing: crate::witness::Witnessing,
    /// Allows under `@record("after")` whose entry is not yet durable.
    pub(crate) after: Arc<crate::after::AfterLog>,
    /// Decisions since start (`/metrics`).
    pub counters: crate::metrics::Counters,
}

/// Wall-clock time in Unix milliseconds: the only clock the gateway reads.
pub fn system_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: Timestamp) -> String {
    // Every entry carries one or more of these: the common case (years
    // 1970–9999) is written by hand, the rest by `time`, which the fast
    // path is tested against.
    match rfc3339_fast(t.0) {
        Some(s) => s,
        None => rfc3339_slow(t),
    }
}

/// The last millisecond of 9999-12-31.
const LAST_FOUR_DIGIT_YEAR_MS: i64 = 253_402_300_799_999;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` since the epoch, from 1970 through
/// 9999.
fn rfc3339_fast(ms: i64) -> Option<String> {
    if !(0..=LAST_FOUR_DIGIT_YEAR_MS).contains(&ms) {
        return None;
    }
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let (year, month, day) = secondkey_core::time::civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3_600_000);
    put(14, 2, in_day / 60_000 % 60);
    put(17, 2, in_day / 1000 % 60);
    put(20, 3, in_day % 1000);
    String::from_utf8(b.to_vec()).ok()
}

fn rfc3339_slow(t: Timestamp) -> String {
    let nanos = (t.0 as i128) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(dt) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            dt.format(&fmt).unwrap_or_else(|_| t.0.to_string())
        }
        Err(_) => t.0.to_string(),
    }
}

/// A fresh id with a type prefix, e.g. `req_019ad7c3e1f03f9a…`: 48 bits of
/// wall-clock milliseconds, then 80 random bits. Ids minted later sort
/// later, so the store's primary-key indexes grow at their right edge
/// instead of taking every insert at a random page (random keys made each
/// grant insert touch pages all over an index that outgrows the cache).
pub fn new_id(prefix: &str) -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&id_randomness()?);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('_');
    for x in b {
        id.push(char::from(HEX[usize::from(x >> 4)]));
        id.push(char::from(HEX[usize::from(x & 15)]));
    }
    Ok(id)
}

/// 80 unpredictable bits without a system call each time: HMAC-SHA-256,
/// under a key drawn from the operating system once per process, of a
/// counter. Two ids per allow made `getrandom` a visible share of its cost.
fn id_randomness() -> Result<[u8; 10], ApiError> {
    use hmac::Mac;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEY: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = KEY
        .get_or_init(|| {
            let mut k = [0u8; 32];
            getrandom::getrandom(&mut k).map_err(|e| e.to_string())?;
            Ok(k)
        })
        .as_ref()
        .map_err(|e| ApiError::internal(format!("no randomness available: {e}")))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    mac.update(&n.to_le_bytes());
    let out = mac.finalize().into_bytes();
    let mut r = [0u8; 10];
    r.copy_from_slice(&out[..10]);
    Ok(r)
}

/// `e` encoded now, before its job reaches the store writer (see
/// [`Entry::prepare`]); an entry too large is refused like in the store.
pub(crate) fn prepared(e: Entry) -> Result<secondkey_log::entry::Prepared, ApiError> {
    e.prepare()
        .map_err(|e| ApiError::from(StoreError::Entry(e.to_string())))
}

pub(crate) fn entry(
    now: Timestamp,
    event: &str,
    actor: &str,
    subjects: &[(&str, &str)],
    digest: Option<&str>,
    payload: Value,
) -> Entry {
    Entry {
        index: 0,
        time: rfc3339(now),
        event: event.to_string(),
        actor: Some(actor.to_string()),
        subjects: subjects
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        digest: digest.map(str::to_string),
        payload,
    }
}

/// The fact `source_ip` for a connection's peer `ip` (an IPv4 address
/// mapped into IPv6 is written as IPv4): every transport names the
/// address it observed the same way.
pub fn source_fact(ip: std::net::IpAddr) -> (String, Value) {
    (
        "source_ip".to_string(),
        json!(ip.to_canonical().to_string()),
    )
}

/// Appends the log entries for the events a core transition produced.
pub(crate) fn log_events(
    tx: &mut dyn Tx,
    now: Timestamp,
    actor: &str,
    req: &Request,
    events: &[CoreEvent],
) -> Result<(), StoreError> {
    append_events(tx, now, actor, req, events, false)
}

/// [`log_events`] for an approval the gateway uses up itself for a caller
/// that runs the action now (`?execute=true`, an adapter): its
/// `grant.consumed` says `"executed": true`, as an execute-mode allow's
/// `action.allowed` does, so a reader of the log alone (the OpenLineage
/// sink) knows the caller reports the run's result, and waits for it.
pub(crate) fn log_executed(
    tx: &mut dyn Tx,
    now: Timestamp,
    actor: &str,
    req: &Request,
    events: &[CoreEvent],
) -> Result<(), StoreError> {
    append_events(tx, now, actor, req, events, true)
}

fn append_events(
    tx: &mut dyn Tx,
    now: Timestamp,
    actor: &str,
    req: &Request,
    events: &[CoreEvent],
    executed: bool,
) -> Result<(), StoreError> {
    for ev in events {
        let (name, mut payload) = event_payload(req, ev);
        if executed && matches!(ev, CoreEvent::Consumed { .. }) {
            payload["executed"] = json!(true);
        }
        tx.append(entry(
            now,
            &name,
            actor,
            &[("request", &req.id)],
            Some(req.digest.as_str()),
            payload,
        ))?;
    }
    Ok(())
}

/// Records the outcome of request `id`'s execution, reported by `actor`:
/// only its requester, or a configured executor (`is_executor`), may; the
/// transition's events and `detail` (as `action.result.detail`) are
/// logged. Returns the request as changed.
pub(crate) fn record_request_outcome(
    tx: &mut dyn Tx,
    now: Timestamp,
    actor: &str,
    is_executor: bool,
    id: &str,
    outcome: ExecOutcome,
    detail: Value,
) -> Result<Request, StoreError> {
    let mut req = tx
        .get_request(id)?
        .ok_or_else(|| ApiError::not_found(format!("no request {id}")))?;
    if actor != req.requester.id.as_str() && !is_executor {
        return Err(ApiError::forbidden(
            "not_requester",
            "only the requester, or a configured executor, reports the result",
        )
        .into());
    }
    let t = req.record_outcome(outcome, now).map_err(transition_error)?;
    tx.put_request(&req)?;
    log_events(tx, now, actor, &req, &t.events)?;
    tx.append(entry(
        now,
        "action.result.detail",
        actor,
        &[("request", &req.id)],
        Some(req.digest.as_str()),
        detail,
    ))?;
    Ok(req)
}

/// Puts `req`, changed under `event`, on the change feed `changes`.
pub(crate) fn announce_to(changes: &broadcast::Sender<RequestChange>, req: &Request, event: &str) {
    let _ = changes.send(RequestChange {
        id: req.id.clone(),
        state: req.state,
        event: event.to_string(),
    });
}

/// Runs `work` in a task of its own and waits for it. A request handler's
/// future is dropped when its client goes away or the server drains, but
/// the store commits a job once it is sent, whether or not anyone still
/// waits for it: memory updated after the commit, in the same future,
/// would miss a change the store holds. Work that commits and then updates
/// memory runs here, so that dropping the caller stops neither half.
pub(crate) async fn unsplit<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::spawn(work).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(StoreError::Unavailable),
    }
}

/// Stores a request after a core transition that may have approved it, in
/// the caller's transaction: the new state, the log entries of its events
/// and, if it was approved, the grant row that consuming checks and the
/// `web.similar` record (the request page diffs the next similar action
/// against this one). Every path into `approved` goes through here.
fn record_transition(
    tx: &mut dyn Tx,
    now: Timestamp,
    actor: &str,
    req: &Request,
    t: &Transition,
) -> Result<(), StoreError> {
    tx.put_request(req)?;
    log_events(tx, now, actor, req, &t.events)?;
    if let (RequestState::Approved, RequestState::Pending, Some(g)) = (t.to, t.from, &req.grant) {
        tx.insert_grant(&GrantRow {
            id: g.id.clone(),
            request_id: Some(req.id.clone()),
            digest: req.digest.as_str().to_string(),
            requester: req.requester.id.to_string(),
            expires_at: g.expires_at.0,
            used_at: None,
        })?;
        tx.put_record(
            crate::reviewer::SIMILAR_NS,
            &crate::reviewer::similar_key(req),
            &req.id,
        )?;
    }
    Ok(())
}

pub(crate) fn approvers(req: &Request) -> Vec<String> {
    req.reviews
        .iter()
        .filter(|r| r.decision == ReviewDecision::Approve)
        .map(|r| r.reviewer.to_string())
        .collect()
}

fn event_payload(req: &Request, ev: &CoreEvent) -> (String, Value) {
    let state = serde_json::to_value(req.state).unwrap_or(Value::Null);
    match ev {
        CoreEvent::Reviewed {
            reviewer,
            decision,
            comment,
        } => (
            "review.submitted".into(),
            json!({"reviewer": reviewer.to_string(), "decision": decision, "comment": comment, "state": state}),
        ),
        CoreEvent::Approved {
            grant_id,
            approvers,
            seats,
        } => (
            "request.approved".into(),
            json!({"decision": "approved", "grant": grant_id,
                   "approvers": approvers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   // who stood in for which requirement, and as what
                   "filled": seats.iter().map(|s| json!({
                       "requirement": s.requirement, "approver": s.approver.to_string(),
                       "group": s.group, "widened": s.widened})).collect::<Vec<_>>(),
                   "action": {"kind": req.action.kind, "operation": req.action.operation, "resource": req.action.resource},
                   "requester": req.requester.id.to_string()}),
        ),
        CoreEvent::Denied { by } => (
            "request.denied".into(),
            json!({"decision": "denied", "by": by.to_string(),
                   "action": {"kind": req.action.kind, "operation": req.action.operation, "resource": req.action.resource},
                   "requester": req.requester.id.to_string()}),
        ),
        CoreEvent::Expired => (
            "request.expired".into(),
            json!({"decision": "expired", "state": state}),
        ),
        CoreEvent::Withdrawn => ("request.withdrawn".into(), json!({"state": state})),
        CoreEvent::Revoked { by } => (
            "request.revoked".into(),
            json!({"by": by.to_string(), "state": state}),
        ),
        CoreEvent::Consumed { grant_id } => (
            "grant.consumed".into(),
            json!({"grant": grant_id, "approvers": approvers(req),
                   "action": {"kind": req.action.kind, "operation": req.action.operation, "resource": req.action.resource}}),
        ),
        CoreEvent::OutcomeRecorded { outcome } => (
            "action.result".into(),
            json!({"outcome": outcome, "state": state}),
        ),
        CoreEvent::Escalated { groups } => (
            "request.escalated".into(),
            json!({"groups": groups, "state": state,
                   "required": req.requirements.iter().map(RequirementView::from).collect::<Vec<_>>()}),
        ),
    }
}

/// What a review call produced: the request, or an error that still needed
/// the store (an expiry discovered while reviewing is recorded, then
/// reported).
enum Reviewed {
    Done(Box<Request>),
    /// Refused, with the request as it was stored (expired).
    Refused(ApiError, Box<Request>),
}

impl Gateway {
    pub fn new(
        config: Config,
        store: Store,
        policy: PolicyEngine,
        log_signer: Signer,
        grant_key: SigningKey,
    ) -> Gateway {
        let grant_kid = secondkey_core::grant::kid_for(&grant_key.verifying_key());
        let (changes, _) = broadcast::channel(4096);
        let replica = crate::replicas::Replica::new(store.is_shared());
        let identity = crate::identity::Identity::new(&config);
        let web = crate::web::WebState::ephemeral(&config);
        let admission = Arc::new(crate::admission::Admission::new(&config.limits));
        let after = crate::after::AfterLog::new(
            config.after_window,
            config.after_max_pending,
            store.clone(),
        );
        Gateway {
            after,
            identity,
            web,
            witnessing: Default::default(),
            config,
            store,
            policy: RwLock::new(Arc::new(policy)),
            log_signer,
            grant_key,
            grant_kid,
            changes,
            replica,
            checkpoint_cache: Mutex::new(None),
            anchored: Mutex::new(0),
            admission,
            connections: std::sync::OnceLock::new(),
            clock: Box::new(system_now),
            counters: Default::default(),
        }
    }

    /// Signs web sessions with `key` (kept on disk, so sessions survive a
    /// restart) instead of the per-process random one.
    pub fn with_session_key(mut self, key: [u8; 32]) -> Self {
        self.web = crate::web::WebState::new(&self.config, key);
        self
    }

    /// Replaces the clock (tests of expiry use a fake one; nothing sleeps).
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// `@record("after")` allows that ran and whose entry is not yet
    /// durable.
    pub fn after_pending(&self) -> usize {
        self.after.pending()
    }

    /// Writes the entries of `@record("after")` allows still waiting for
    /// their result, in one commit (a clean shutdown does this).
    pub async fn flush_after(&self) {
        self.after.flush_all().await;
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    pub fn policy(&self) -> Arc<PolicyEngine> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new policy set atomically and records it.
    pub async fn replace_policy(
        &self,
        engine: PolicyEngine,
        summary: Value,
    ) -> Result<(), ApiError> {
        let now = self.now();
        self.store
            .transact(move |tx| {
                tx.append(entry(
                    now,
                    "policy.reloaded",
                    "service:secondkey",
                    &[],
                    None,
                    summary,
                ))
            })
            .await?;
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        Ok(())
    }

    /// Records that a new policy set was rejected and the old one stays.
    pub async fn policy_rejected(&self, error: String) -> Result<(), ApiError> {
        let now = self.now();
        self.store
            .transact(move |tx| {
                tx.append(entry(
                    now,
                    "policy.rejected",
                    "service:secondkey",
                    &[],
                    None,
                    json!({"error": error, "kept": "previous policy set"}),
                ))
            })
            .await?;
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RequestChange> {
        self.changes.subscribe()
    }

    /// Announces a request another replica changed (its id came through
    /// the store): read it, and put it on this gateway's feed as
    /// `request.changed`.
    pub(crate) async fn announce_remote(&self, id: &str) {
        let store = self.store.clone();
        let id = id.to_string();
        if let Ok(Ok(Some(req))) = tokio::task::spawn_blocking(move || store.get_request(&id)).await
        {
            self.announce(&req, "request.changed");
        }
    }

    /// Tells every waiter and follower on this gateway's feed to read again
    /// what it waits on: changes from other replicas may have been missed.
    pub(crate) fn announce_resync(&self) {
        let _ = self.changes.send(RequestChange {
            id: String::new(),
            state: RequestState::Pending,
            event: RequestChange::RESYNC.to_string(),
        });
    }

    /// The log key's verifier and the grant key's id (what every replica
    /// on one store must share).
    pub fn key_ids(&self) -> (String, String) {
        (
            self.log_signer.verifier().to_string(),
            self.grant_kid.clone(),
        )
    }

    pub(crate) fn announce(&self, req: &Request, event: &str) {
        announce_to(&self.changes, req, event);
    }

    /// Commits `job`, then runs `then` on what it returned — in a task of
    /// its own that the caller waits for, so the two cannot be separated
    /// ([`unsplit`]). For memory that other requests rely on and that must
    /// follow what was committed: this replica's sign-outs and ended
    /// sessions (the whole truth on an embedded store), and the change
    /// feed that long-polls, held adapter sessions and chat channels wait
    /// on. `then` runs only once the job committed: nothing changes unless
    /// recorded.
    pub(crate) async fn commit_then<T, F, A>(&self, job: F, then: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let commit = self.store.transact_sent(job);
        unsplit(async move {
            let out = commit.await?;
            then(&out);
            Ok(out)
        })
        .await
    }

    /// What [`Gateway::commit_then`] runs to announce a committed request
    /// under `event` on this gateway's change feed.
    pub(crate) fn announcing(&self, event: &'static str) -> impl FnOnce(&Request) + Send + 'static {
        let changes = self.changes.clone();
        move |req| announce_to(&changes, req, event)
    }

    /// A sender on this gateway's change feed, for work that announces
    /// from a task of its own ([`unsplit`]).
    pub(crate) fn feed(&self) -> broadcast::Sender<RequestChange> {
        self.changes.clone()
    }

    /// Log entries hold actions with their parameters: only members of the
    /// configured reader groups (`[log] readers`, default `auditors`) read them.
    pub fn require_log_reader(&self, who: &Principal) -> Result<(), ApiError> {
        require_member(
            who,
            &self.config.log_readers,
            "not_log_reader",
            "reading log entries",
        )
    }

    /// Metrics tell request counts by state and the log's size: only
    /// members of the `[metrics] readers` groups (default `monitoring`)
    /// read them.
    pub fn require_metrics_reader(&self, who: &Principal) -> Result<(), ApiError> {
        require_member(
            who,
            &self.config.metrics_readers,
            "not_metrics_reader",
            "reading /metrics ([metrics] readers)",
        )
    }

    pub fn request_url(&self, id: &str) -> String {
        format!("{}/requests/{id}", self.config.public_url)
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [secondkey_core::grant::jwk(&self.grant_key.verifying_key(), &self.grant_kid)]})
    }

    pub fn verifier_key(&self) -> String {
        self.log_signer.verifier().to_string()
    }

    fn sign_claims(&self, claims: &GrantClaims) -> Result<String, ApiError> {
        sign_grant(claims, &self.grant_key, &self.grant_kid)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Facts the gateway itself knows about this call, kept apart from what
    /// the agent declares (invariant 8).
    /// `environment` is the configured environment of the action's resource.
    pub(crate) fn facts(
        principal: &Principal,
        environment: Option<&str>,
        transport: &str,
    ) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Some(env) = environment {
            m.insert("environment".into(), json!(env));
        }
        m.insert("principal_kind".into(), json!(principal.id.kind().as_str()));
        m.insert("transport".into(), json!(transport));
        m
    }

    /// `POST /v1/actions`: decide an action and record the decision.
    /// The body is parsed strictly (a repeated key is refused) and the parsed
    /// JSON is what gets logged and digested. With `execute`, the caller runs
    /// the action itself at once: an allow (or an approved identical request)
    /// comes back already used up as an `execution` instead of a grant.
    pub async fn submit(
        &self,
        principal: &Principal,
        body: &[u8],
        execute: bool,
    ) -> Result<ActionResponse, ApiError> {
        self.submit_as(principal, &Credential::default(), body, execute)
            .await
    }

    /// [`Gateway::submit`] for a caller whose token proved more than who it
    /// is (a delegation that backs `on_behalf_of`; see [`Credential`]).
    pub async fn submit_as(
        &self,
        principal: &Principal,
        credential: &Credential,
        body: &[u8],
        execute: bool,
    ) -> Result<ActionResponse, ApiError> {
        self.submit_from(principal, credential, body, execute, None)
            .await
    }

    /// [`Gateway::submit_as`] from a connection whose peer address the
    /// gateway observed: recorded as the fact `source_ip`, what policy
    /// reads as `context.gateway.source_ip` and the request page shows as
    /// established, apart from any `context.source_ip` the agent declares.
    pub async fn submit_from(
        &self,
        principal: &Principal,
        credential: &Credential,
        body: &[u8],
        execute: bool,
        peer: Option<std::net::IpAddr>,
    ) -> Result<ActionResponse, ApiError> {
        // The whole action must fit in one log entry. The body's size is a
        // cheap bound (canonical JSON is never much larger); the log's own
        // entry limit backs it up with `entry_too_large`.
        if body.len() > MAX_ACTION_BYTES {
            return Err(too_large(body.len()));
        }
        let (raw, action, digest) =
            Action::from_slice(body).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        let mode = if execute { Mode::Execute } else { Mode::Grant };
        let submitted = Submitted {
            raw,
            action,
            digest,
            transport: "api",
            facts: peer
                .map(|ip| std::iter::once(source_fact(ip)).collect())
                .unwrap_or_default(),
            track: execute,
            credential: credential.clone(),
            lean: None,
        };
        let decided = self.decide_recorded(principal, submitted, mode).await?;
        Ok(self.action_response(decided))
    }

    /// Decides a parsed action and records the decision in one durable
    /// transaction before anything is returned (invariant 1). Shared by the
    /// REST API and the interception adapters.
    pub(crate) async fn decide_recorded(
        &self,
        principal: &Principal,
        s: Submitted,
        mode: Mode,
    ) -> Result<Decided, ApiError> {
        let Submitted {
            raw,
            action,
            digest,
            transport,
            facts: derived,
            track,
            credential,
            lean,
        } = s;
        let backing = action.on_behalf_of.as_ref().map_or(Backing::Declared, |o| {
            crate::admission::backing(&self.config, principal, &credential, o)
        });
        let obo = on_behalf_of_record(action.on_behalf_of.as_ref(), backing);
        let env = self
            .config
            .environment_of(&action.resource)
            .map(str::to_string);
        // What the adapter derived, then the gateway's own facts on top: an
        // adapter cannot override the environment or the principal kind.
        let mut facts = derived.clone();
        facts.extend(Self::facts(principal, env.as_deref(), transport));
        let policy = self.policy();
        let decision = policy.decide(principal, &action, &facts);
        self.counters.decided(transport, &decision.outcome);
        let policy_set = policy.fingerprint().to_string();
        let reasons: Vec<ReasonView> = decision.reasons.iter().map(ReasonView::from).collect();
        let now = self.now();
        let actor = principal.id.to_string();
        let dg = digest.as_str().to_string();
        // Adapter-derived facts are part of the record: they are what policy saw.
        let seen = (!derived.is_empty()).then(|| Value::Object(derived));
        // So is the configured environment of the resource (the lineage
        // graph and the evidence pack filter by it).
        let seen_env = env.clone();
        match decision.outcome {
            Outcome::Deny => {
                let id = new_id("act")?;
                let mut payload = json!({"decision": "deny", "action": raw, "reasons": reasons,
                    "errors": decision.errors, "policy_set": policy_set, "transport": transport});
                add_facts(&mut payload, seen, obo);
                add_environment(&mut payload, &seen_env);
                let e = prepared(entry(
                    now,
                    "action.denied",
                    &actor,
                    &[("action", &id)],
                    Some(&dg),
                    payload,
                ))?;
                self.store.transact(move |tx| tx.append_later(e)).await?;
                Ok(Decided::Denied(Denied {
                    message: deny_message(&id, &reasons),
                    id,
                    digest,
                    reasons,
                }))
            }
            Outcome::Allow => {
                let id = new_id("act")?;
                let mut payload = json!({"decision": "allow", "reasons": reasons,
                    "policy_set": policy_set, "transport": transport});
                // A lean statement names its shape (logged once per session,
                // with the action around the statement and the facts) and
                // carries its values; otherwise the whole action and facts.
                let mut shape_entry = None;
                match lean.filter(|_| mode == Mode::Execute) {
                    Some(l) => {
                        shape_entry = l.apply(&mut payload, now, &actor)?;
                        add_facts(&mut payload, None, obo);
                    }
                    None => {
                        payload["action"] = raw;
                        add_facts(&mut payload, seen, obo);
                    }
                }
                add_environment(&mut payload, &seen_env);
                match mode {
                    Mode::Execute => {
                        // The caller runs it now: no token to leak or replay,
                        // so the authorization is this entry alone.
                        payload["executed"] = json!(true);
                        if decision.record_after {
                            // A statement shape new to its session is durable
                            // before anything names it.
                            if let Some(e) = shape_entry.take() {
                                self.store.transact(move |tx| tx.append_prepared(e)).await?;
                            }
                            // `@record("after")`: runs now, recorded with its
                            // result within the window (`after.rs`), unless
                            // the log is behind or failing.
                            payload["recorded"] = json!("after");
                            match self
                                .after
                                .admit(id.clone(), now, &actor, &dg, payload, track)
                            {
                                Ok(a) => {
                                    self.counters.after_admitted();
                                    return Ok(Decided::Run(Execution {
                                        id: a.id,
                                        request_id: None,
                                        digest,
                                        approvers: vec![],
                                        reasons,
                                    }));
                                }
                                // Not admitted: the strict path, with the
                                // payload back as it was.
                                Err(mut back) => {
                                    self.counters.after_strict();
                                    if let Some(m) = back.as_object_mut() {
                                        m.remove("recorded");
                                    }
                                    payload = back;
                                }
                            }
                        }
                        let e = prepared(entry(
                            now,
                            "action.allowed",
                            &actor,
                            &[("action", &id)],
                            Some(&dg),
                            payload,
                        ))?;
                        let tracked = track.then(|| {
                            crate::intercept::TrackedExecution {
                                actor: actor.clone(),
                                digest: dg.clone(),
                                reported: false,
                            }
                            .encode()
                        });
                        let id2 = id.clone();
                        // Taken before the commit is enqueued (`recovered`).
                        let failures = decision.record_after.then(|| self.after.failures());
                        self.store
                            .transact(move |tx| {
                                if let Some(rec) = tracked {
                                    tx.put_record(crate::intercept::EXECUTION_NS, &id2, &rec)?;
                                }
                                if let Some(shape) = shape_entry {
                                    tx.append_later(shape)?;
                                }
                                tx.append_later(e)
                            })
                            .await?;
                        if let Some(f) = failures {
                            self.after.recovered(f);
                        }
                        Ok(Decided::Run(Execution {
                            id,
                            request_id: None,
                            digest,
                            approvers: vec![],
                            reasons,
                        }))
                    }
                    Mode::Grant => {
                        let grant_id = new_id("grt")?;
                        let exp = now.plus(self.config.allow_grant_ttl);
                        let claims = GrantClaims {
                            jti: grant_id.clone(),
                            rid: None,
                            dig: dg.clone(),
                            sub: actor.clone(),
                            apr: vec![],
                            env,
                            iat: now.0 / 1000,
                            exp: exp.0 / 1000,
                            iss: self.config.log_origin.clone(),
                        };
                        let token = self.sign_claims(&claims)?;
                        let row = GrantRow {
                            id: grant_id.clone(),
                            request_id: None,
                            digest: dg.clone(),
                            requester: actor.clone(),
                            expires_at: exp.0,
                            used_at: None,
                        };
                        payload["grant"] = json!(grant_id);
                        payload["grant_expires_at"] = json!(rfc3339(exp));
                        let e = prepared(entry(
                            now,
                            "action.allowed",
                            &actor,
                            &[("action", &id), ("grant", &row.id)],
                            Some(&dg),
                            payload,
                        ))?;
                        self.store
                            .transact(move |tx| {
                                tx.insert_grant(&row)?;
                                tx.append_later(e)
                            })
                            .await?;
                        Ok(Decided::Granted {
                            id,
                            digest,
                            reasons,
                            token,
                        })
                    }
                }
            }
            Outcome::Review => {
                let id = new_id("req")?;
                let summary = json!({"kind": action.kind, "operation": action.operation, "resource": action.resource});
                let req = Request::new(
                    id.clone(),
                    digest.clone(),
                    action,
                    principal.clone(),
                    decision.requirements.clone(),
                    decision.ttl,
                    decision.grant_ttl,
                    now,
                )
                .with_on_behalf_of_backed(backing.is_backed())
                // The human a delegation token acts for never reviews what
                // the agent asks with it, whatever `on_behalf_of` says (or
                // leaves out).
                .with_excluded(credential.acting_for.clone())
                // An unconfigured workload principal's namesake user: the
                // same person, when one provider serves both.
                .with_excluded(credential.namesake.clone())
                .with_submitted(raw.clone());
                let mut payload = json!({
                    "decision": "review", "action": raw, "reasons": reasons,
                    "required": decision.requirements.iter().map(RequirementView::from).collect::<Vec<_>>(),
                    "expires_at": rfc3339(req.expires_at), "summary": summary,
                    "policy_set": policy_set, "transport": transport,
                });
                add_facts(&mut payload, seen, obo);
                add_environment(&mut payload, &seen_env);
                let execute = mode == Mode::Execute;
                let admission = self.admission.clone();
                let changes = self.feed();
                let out = self
                    .commit_then(
                        move |tx| {
                            if execute {
                                if let Some(found) = reuse_identical(tx, &req, now)? {
                                    return Ok(found);
                                }
                            }
                            // Only a request actually opened counts against the
                            // caps: an identical one found above does not.
                            admission.admit(tx, &actor, now)?;
                            tx.put_request(&req)?;
                            tx.append(entry(
                                now,
                                "request.created",
                                &actor,
                                &[("request", &req.id)],
                                Some(req.digest.as_str()),
                                payload,
                            ))?;
                            Ok(Reused::New(Box::new(req)))
                        },
                        move |out: &Reused| match out {
                            Reused::New(req) => announce_to(&changes, req, "request.created"),
                            Reused::Executed(req) => announce_to(&changes, req, "grant.consumed"),
                            Reused::Pending(_) => {}
                        },
                    )
                    .await
                    .map_err(|e| {
                        let e = ApiError::from(e);
                        self.note_refusal(principal, &e);
                        e
                    })?;
                match out {
                    Reused::New(req) => Ok(Decided::Held(self.held(req, reasons, false))),
                    Reused::Pending(req) => Ok(Decided::Held(self.held(req, reasons, true))),
                    Reused::Executed(req) => Ok(Decided::Run(Execution {
                        id: req.id.clone(),
                        request_id: Some(req.id.clone()),
                        digest,
                        approvers: approvers(&req),
                        reasons,
                    })),
                }
            }
        }
    }

    fn held(&self, request: Box<Request>, reasons: Vec<ReasonView>, reused: bool) -> Held {
        Held {
            url: self.request_url(&request.id),
            request,
            reasons,
            reused,
        }
    }

    /// The REST shape of a decision.
    fn action_response(&self, d: Decided) -> ActionResponse {
        let base = |id: String, digest: &Digest, decision: &str, reasons: Vec<ReasonView>| {
            ActionResponse {
                id,
                digest: digest.as_str().to_string(),
                decision: decision.into(),
                reasons,
                request: None,
                grant: None,
                execution: None,
            }
        };
        match d {
            Decided::Denied(x) => base(x.id, &x.digest, "deny", x.reasons),
            Decided::Granted {
                id,
                digest,
                reasons,
                token,
            } => ActionResponse {
                grant: Some(token),
                ..base(id, &digest, "allow", reasons)
            },
            Decided::Run(x) => ActionResponse {
                execution: Some(ExecutionView {
                    id: x.id.clone(),
                    request_id: x.request_id.clone(),
                    approvers: x.approvers.clone(),
                }),
                ..base(x.id, &x.digest, "allow", x.reasons)
            },
            Decided::Held(h) => {
                let req = &h.request;
                ActionResponse {
                    request: Some(RequestSummary {
                        id: req.id.clone(),
                        state: req.state,
                        url: h.url.clone(),
                        expires_at: rfc3339(req.expires_at),
                        required: req.requirements.iter().map(RequirementView::from).collect(),
                    }),
                    ..base(req.id.clone(), &req.digest, "review", h.reasons)
                }
            }
        }
    }

    /// Loads a request the caller may see (404 otherwise, so ids do not leak).
    pub async fn get_request(&self, who: &Principal, id: &str) -> Result<Request, ApiError> {
        let store = self.store.clone();
        let id2 = id.to_string();
        let req = tokio::task::spawn_blocking(move || store.get_request(&id2))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??;
        match req {
            Some(r) if may_view(who, &r) => Ok(r),
            _ => Err(ApiError::not_found(format!(
                "no request {id} that you may see"
            ))),
        }
    }

    /// The public view of a request; the grant is included only for its
    /// requester, once approved and while unused.
    pub fn view(&self, who: &Principal, req: &Request) -> Result<RequestView, ApiError> {
        let mut grant = None;
        let mut grant_expires_at = None;
        if let Some(g) = &req.grant {
            grant_expires_at = Some(rfc3339(g.expires_at));
            if req.state == RequestState::Approved && who.id == req.requester.id {
                let claims = GrantClaims {
                    jti: g.id.clone(),
                    rid: Some(req.id.clone()),
                    dig: req.digest.as_str().to_string(),
                    sub: req.requester.id.to_string(),
                    apr: approvers(req),
                    env: self
                        .config
                        .environment_of(&req.action.resource)
                        .map(str::to_string),
                    iat: req
                        .decided_at
                        .map(|t| t.0 / 1000)
                        .unwrap_or(req.created_at.0 / 1000),
                    exp: g.expires_at.0 / 1000,
                    iss: self.config.log_origin.clone(),
                };
                grant = Some(self.sign_claims(&claims)?);
            }
        }
        Ok(RequestView {
            id: req.id.clone(),
            state: req.state,
            url: self.request_url(&req.id),
            digest: req.digest.as_str().to_string(),
            action: match &req.submitted {
                Some(raw) => raw.clone(),
                None => serde_json::to_value(&req.action).unwrap_or(Value::Null),
            },
            requester: req.requester.id.to_string(),
            owner: req.requester.owner.as_ref().map(|o| o.to_string()),
            on_behalf_of: req.action.on_behalf_of.as_ref().map(|o| OnBehalfOfView {
                principal: o.to_string(),
                backed: req.acting_for().is_some(),
            }),
            required: req.requirements.iter().map(RequirementView::from).collect(),
            reviews: req.reviews.iter().map(ReviewView::from).collect(),
            created_at: rfc3339(req.created_at),
            expires_at: rfc3339(req.expires_at),
            decided_at: req.decided_at.map(rfc3339),
            grant,
            grant_expires_at,
        })
    }

    /// `GET /v1/requests`: what the caller asked for or may review, newest
    /// first, a page at a time.
    pub async fn list(
        &self,
        who: &Principal,
        state: Option<RequestState>,
        limit: usize,
        before: Option<String>,
    ) -> Result<secondkey_store::RequestPage, ApiError> {
        let store = self.store.clone();
        let viewer = secondkey_store::Viewer {
            principal: who.id.to_string(),
            groups: who.groups.iter().cloned().collect(),
        };
        let mut page = tokio::task::spawn_blocking(move || {
            store.list_for(&viewer, state, limit, before.as_deref())
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| match e {
            StoreError::Corrupt(m) if m.starts_with("bad page cursor") => {
                ApiError::bad_request("invalid_cursor", m)
            }
            other => ApiError::from(other),
        })?;
        // The SQL filter is by party; this check is the authority.
        page.requests.retain(|r| may_view(who, r));
        Ok(page)
    }

    /// `POST /v1/requests/{id}/reviews`.
    pub async fn review(
        &self,
        reviewer: &Principal,
        id: &str,
        decision: ReviewDecision,
        comment: Option<String>,
    ) -> Result<Request, ApiError> {
        if let Some(c) = &comment {
            if c.len() > 4096 {
                return Err(ApiError::bad_request(
                    "invalid_comment",
                    "a comment is at most 4096 bytes",
                ));
            }
        }
        let now = self.now();
        let grant_id = new_id("grt")?;
        let who = reviewer.clone();
        let id2 = id.to_string();
        let owned = self.owned_by(&reviewer.id);
        let changes = self.feed();
        let out = self
            .commit_then(
                move |tx| {
                    let mut req = visible_request(tx, &id2, &who)?;
                    let actor = who.id.to_string();
                    if owned.contains(&req.requester.id) {
                        return Err(review_error(ReviewError::SelfReview {
                            reviewer: who.id.clone(),
                            why: OWNS_NOW,
                        })
                        .into());
                    }
                    match req.review(&who, decision, comment, now, &grant_id) {
                        Ok(t) => {
                            record_transition(tx, now, &actor, &req, &t)?;
                            Ok(Reviewed::Done(Box::new(req)))
                        }
                        Err(ReviewError::Expired {
                            transition: Some(t),
                        }) => {
                            tx.put_request(&req)?;
                            log_events(tx, now, "service:secondkey", &req, &t.events)?;
                            Ok(Reviewed::Refused(
                                ApiError::conflict(
                                    "expired",
                                    format!("request {} expired before this review", req.id),
                                ),
                                Box::new(req),
                            ))
                        }
                        Err(e) => Err(review_error(e).into()),
                    }
                },
                move |out: &Reviewed| match out {
                    Reviewed::Done(req) => announce_to(&changes, req, "request.reviewed"),
                    Reviewed::Refused(_, req) => announce_to(&changes, req, "request.expired"),
                },
            )
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = ApiError::from(e);
                if matches!(
                    e.code,
                    "self_review" | "not_eligible" | "duplicate_reviewer"
                ) {
                    self.log_refusal("review.refused", reviewer, &[("request", id)], &e)
                        .await;
                }
                return Err(e);
            }
        };
        match out {
            Reviewed::Done(req) => Ok(*req),
            Reviewed::Refused(e, _) => Err(e),
        }
    }

    /// `POST /v1/requests/{id}/withdraw`.
    pub async fn withdraw(&self, who: &Principal, id: &str) -> Result<Request, ApiError> {
        let now = self.now();
        let by = who.id.clone();
        let id2 = id.to_string();
        let withdrawn = self.announcing("request.withdrawn");
        let req = self
            .commit_then(
                move |tx| {
                    let mut req = tx
                        .get_request(&id2)?
                        .filter(|r| r.requester.id == by)
                        .ok_or_else(|| ApiError::not_found(format!("no request {id2} of yours")))?;
                    let t = req.withdraw(&by, now).map_err(transition_error)?;
                    tx.put_request(&req)?;
                    log_events(tx, now, &by.to_string(), &req, &t.events)?;
                    Ok(req)
                },
                withdrawn,
            )
            .await?;
        Ok(req)
    }

    /// `POST /v1/requests/{id}/revoke`.
    pub async fn revoke(&self, who: &Principal, id: &str) -> Result<Request, ApiError> {
        let now = self.now();
        let by = who.clone();
        let id2 = id.to_string();
        let owned = self.owned_by(&who.id);
        let revoked = self.announcing("request.revoked");
        let req = self
            .commit_then(
                move |tx| {
                    let mut req = visible_request(tx, &id2, &by)?;
                    if owned.contains(&req.requester.id) {
                        return Err(transition_error(
                            secondkey_core::request::TransitionError::SelfReview {
                                by: by.id.clone(),
                                why: OWNS_NOW,
                            },
                        )
                        .into());
                    }
                    let t = req.revoke(&by, now).map_err(transition_error)?;
                    tx.put_request(&req)?;
                    log_events(tx, now, &by.id.to_string(), &req, &t.events)?;
                    Ok(req)
                },
                revoked,
            )
            .await?;
        Ok(req)
    }

    /// The agents `who` owns as configured now. A request keeps the owner
    /// its agent had when it was made; after the configuration moves the
    /// agent to another owner, both of them are barred from reviewing it.
    fn owned_by(&self, who: &PrincipalId) -> Vec<PrincipalId> {
        self.config
            .principals
            .values()
            .filter(|p| p.owner.as_ref() == Some(who))
            .map(|p| p.id.clone())
            .collect()
    }

    /// `POST /v1/grants/consume`: single use, exactly as approved.
    pub async fn consume(
        &self,
        who: &Principal,
        token: &str,
        digest: &str,
    ) -> Result<Value, ApiError> {
        let now = self.now();
        let vk = self.grant_key.verifying_key();
        // Signature first, expiry checked below against the stored row so the
        // error names the real cause.
        let claims = verify_grant(token, &vk, Timestamp(0))
            .map_err(|e| ApiError::bad_request("invalid_grant", e.to_string()))?;
        let result = self.consume_checked(who, &claims, digest, now).await;
        match result {
            // The request it used up is announced with the commit.
            Ok(_) => Ok(json!({
                "consumed": true,
                "grant": claims.jti,
                "request": claims.rid,
                "digest": claims.dig,
                "requester": claims.sub,
                "approvers": claims.apr,
            })),
            Err(e) => {
                // A refused use of a valid grant is security-relevant: record it.
                if matches!(
                    e.code,
                    "digest_mismatch"
                        | "grant_used"
                        | "not_requester"
                        | "expired"
                        | "wrong_requester"
                ) {
                    // Under its request too (the claims are verified): the
                    // request's timeline shows the refused use.
                    let mut subjects = vec![("grant", claims.jti.as_str())];
                    if let Some(rid) = &claims.rid {
                        subjects.push(("request", rid.as_str()));
                    }
                    self.log_refusal("grant.refused", who, &subjects, &e).await;
                }
                Err(e)
            }
        }
    }

    async fn consume_checked(
        &self,
        who: &Principal,
        claims: &GrantClaims,
        digest: &str,
        now: Timestamp,
    ) -> Result<Option<Request>, ApiError> {
        if claims.dig != digest {
            return Err(ApiError::conflict(
                "digest_mismatch",
                "the action's digest differs from the one approved: nothing was executed",
            ));
        }
        let is_executor = self.config.executors.contains(who.id.as_str());
        if claims.sub != who.id.as_str() && !is_executor {
            return Err(ApiError::forbidden(
                "not_requester",
                format!(
                    "this grant belongs to {}; only it, or a configured executor ([grants] executors), may use it",
                    claims.sub
                ),
            ));
        }
        let actor = who.id.to_string();
        let consumer = who.id.clone();
        let c2 = claims.clone();
        let digest_s = digest.to_string();
        let consumed = self.announcing("grant.consumed");
        let changed = self
            .commit_then(
                move |tx| {
                    let row = tx
                        .get_grant(&c2.jti)?
                        .ok_or_else(|| ApiError::not_found("unknown grant"))?;
                    if row.used_at.is_some() {
                        return Err(ApiError::conflict(
                            "grant_used",
                            "this grant was already used",
                        )
                        .into());
                    }
                    if now.0 >= row.expires_at {
                        return Err(ApiError::conflict("expired", "this grant has expired").into());
                    }
                    if row.digest != digest_s {
                        return Err(ApiError::conflict(
                            "digest_mismatch",
                            "digest differs from the approved one",
                        )
                        .into());
                    }
                    let mut changed = None;
                    if let Some(rid) = &row.request_id {
                        let mut req = tx.get_request(rid)?.ok_or_else(|| {
                            ApiError::not_found(format!("grant's request {rid} is missing"))
                        })?;
                        let dg = Digest::from_hex(&digest_s)
                            .map_err(|e| ApiError::bad_request("invalid_digest", e.to_string()))?;
                        // An executor consumes on the requester's behalf; anyone
                        // else is checked by the core as themselves.
                        let as_who = if is_executor {
                            req.requester.id.clone()
                        } else {
                            consumer
                        };
                        let t = req
                            .consume(&row.id, &dg, &as_who, now)
                            .map_err(consume_error)?;
                        tx.put_request(&req)?;
                        log_events(tx, now, &actor, &req, &t.events)?;
                        changed = Some(req);
                    } else {
                        tx.append(entry(
                            now,
                            "grant.consumed",
                            &actor,
                            &[("grant", &row.id)],
                            Some(&row.digest),
                            json!({"grant": row.id, "requester": row.requester}),
                        ))?;
                    }
                    if !tx.use_grant(&row.id, now.0)? {
                        return Err(ApiError::conflict(
                            "grant_used",
                            "this grant was already used",
                        )
                        .into());
                    }
                    Ok(changed)
                },
                move |changed: &Option<Request>| {
                    if let Some(req) = changed {
                        consumed(req);
                    }
                },
            )
            .await?;
        Ok(changed)
    }

    /// Appends a record of a refused attempt. Best effort: the refusal stands
    /// whether or not the record could be written.
    async fn log_refusal(
        &self,
        event: &str,
        who: &Principal,
        subjects: &[(&str, &str)],
        e: &ApiError,
    ) {
        let now = self.now();
        let event = event.to_string();
        let actor = who.id.to_string();
        let subjects: Vec<(String, String)> = subjects
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let payload = json!({"code": e.code, "message": e.message});
        let r = self
            .store
            .transact(move |tx| {
                let subs: Vec<(&str, &str)> = subjects
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                tx.append(entry(now, &event, &actor, &subs, None, payload))
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record a refused attempt");
        }
    }

    /// Records the result of an executed action (adapters call this).
    pub async fn record_outcome(
        &self,
        who: &Principal,
        id: &str,
        outcome: ExecOutcome,
        detail: Value,
    ) -> Result<Request, ApiError> {
        crate::intercept::check_numbers(&detail, "detail")?;
        let now = self.now();
        let actor = who.id.to_string();
        let id2 = id.to_string();
        let is_executor = self.config.executors.contains(who.id.as_str());
        let recorded = self.announcing("action.result");
        let req = self
            .commit_then(
                move |tx| {
                    record_request_outcome(tx, now, &actor, is_executor, &id2, outcome, detail)
                },
                recorded,
            )
            .await?;
        Ok(req)
    }

    /// Escalates a pending request to more reviewer groups once it has
    /// waited `requests.escalation_fraction` of its TTL (the rule is the
    /// core's [`Request::escalate`]); the change is logged as
    /// `request.escalated` and announced. Channels call this when they see
    /// `escalation_due` and a route names groups to escalate to.
    ///
    /// An escalation never approves: the widened slots are filled only by
    /// reviews given after it (see [`Request::escalate`]).
    pub async fn escalate(
        &self,
        id: &str,
        groups: std::collections::BTreeSet<String>,
    ) -> Result<Request, ApiError> {
        let now = self.now();
        let fraction = self.config.escalation_fraction;
        let id2 = id.to_string();
        let escalated = self.announcing("request.escalated");
        let req = self
            .commit_then(
                move |tx| {
                    let mut req = tx
                        .get_request(&id2)?
                        .ok_or_else(|| ApiError::not_found(format!("no request {id2}")))?;
                    let t = req
                        .escalate(&groups, fraction, now)
                        .map_err(transition_error)?;
                    record_transition(tx, now, "service:secondkey", &req, &t)?;
                    Ok(req)
                },
                escalated,
            )
            .await?;
        Ok(req)
    }

    /// Expires what is due and fires `escalation_due`; called every second.
    pub async fn sweep(&self) -> Result<(), ApiError> {
        let now = self.now();
        let store = self.store.clone();
        let fraction = self.config.escalation_fraction;
        let (due, esc) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((
                store.due_for_expiry(now.0)?,
                store.due_for_escalation(now.0, fraction)?,
            ))
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
        // One transaction for all due expiries; a record that cannot be read
        // is skipped (and reported) rather than blocking every other one.
        if !due.is_empty() {
            let (expired, unreadable) = self
                .store
                .transact(move |tx| {
                    let mut expired = Vec::new();
                    let mut unreadable = Vec::new();
                    for id in due {
                        let mut req = match tx.get_request(&id) {
                            Ok(Some(r)) => r,
                            Ok(None) => continue,
                            Err(StoreError::Corrupt(m)) => {
                                unreadable.push(format!("{id}: {m}"));
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        if let Some(t) = req.expire_if_due(now) {
                            tx.put_request(&req)?;
                            log_events(tx, now, "service:secondkey", &req, &t.events)?;
                            expired.push(req);
                        }
                    }
                    Ok((expired, unreadable))
                })
                .await?;
            for req in &expired {
                self.announce(req, "request.expired");
            }
            for u in unreadable {
                tracing::error!(record = %u, "a stored request cannot be read; it cannot expire");
            }
        }
        if !esc.is_empty() {
            let escalated = self
                .store
                .transact(move |tx| {
                    let mut out = Vec::new();
                    for id in esc {
                        let mut req = match tx.get_request(&id) {
                            Ok(Some(r)) => r,
                            Ok(None) | Err(StoreError::Corrupt(_)) => continue,
                            Err(e) => return Err(e),
                        };
                        if !req.escalation_due(now, fraction) {
                            continue;
                        }
                        req.mark_escalated();
                        tx.put_request(&req)?;
                        tx.append(entry(
                            now,
                            "request.escalation_due",
                            "service:secondkey",
                            &[("request", &req.id)],
                            Some(req.digest.as_str()),
                            json!({"fraction": fraction, "expires_at": rfc3339(req.expires_at)}),
                        ))?;
                        out.push(req);
                    }
                    Ok(out)
                })
                .await?;
            for req in &escalated {
                self.announce(req, "escalation_due");
            }
        }
        Ok(())
    }

    /// The current signed checkpoint (C2SP signed note), signed once per
    /// tree size. Reading it writes nothing; [`Gateway::anchor_latest`]
    /// persists it.
    pub async fn checkpoint(&self) -> Result<String, ApiError> {
        Ok(self.signed_checkpoint()?.2)
    }

    /// Persists the latest signed checkpoint as the store's anchor (only ever
    /// forward), so that a later start, `log verify --config` and
    /// `log export` detect entries edited behind the gateway's back. Runs
    /// every second from the background loop.
    pub async fn anchor_latest(&self) -> Result<(), ApiError> {
        let (size, root, note) = self.signed_checkpoint()?;
        if size == 0 {
            return Ok(());
        }
        let already = self.anchored.lock().map(|a| *a >= size).unwrap_or(false);
        if already {
            return Ok(());
        }
        self.store.anchor(size, root, note).await?;
        if let Ok(mut a) = self.anchored.lock() {
            *a = (*a).max(size);
        }
        Ok(())
    }

    fn signed_checkpoint(&self) -> Result<(u64, secondkey_log::merkle::Hash, String), ApiError> {
        // On a shared store, what other replicas committed counts too: a
        // client that appended through A and asks B sees its entry.
        if self.store.is_shared() {
            self.store.catch_up()?;
        }
        let (size, root) = self.store.with_tree(|t| (t.size(), t.root()))?;
        if let Ok(c) = self.checkpoint_cache.lock() {
            if let Some((s, note)) = c.as_ref() {
                if *s == size {
                    return Ok((size, root, note.clone()));
                }
            }
        }
        let cp = Checkpoint {
            origin: self.config.log_origin.clone(),
            size,
            root,
            extensions: vec![],
        };
        let note = cp
            .sign(&self.log_signer)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if let Ok(mut c) = self.checkpoint_cache.lock() {
            *c = Some((size, note.clone()));
        }
        Ok((size, root, note))
    }

    /// Records gateway start in the log (also proves the log is writable:
    /// the gateway refuses to start if it is not).
    pub async fn started(&self) -> Result<(), ApiError> {
        let now = self.now();
        let version = env!("CARGO_PKG_VERSION");
        let policies =
            json!({"count": self.policy().len(), "policy_set": self.policy().fingerprint()});
        self.store
            .transact(move |tx| {
                tx.append(entry(
                    now,
                    "gateway.started",
                    "service:secondkey",
                    &[],
                    None,
                    json!({"version": version, "policies": policies}),
                ))
            })
            .await?;
        Ok(())
    }
}

/// `403 code` unless `who` is in one of `groups`.
fn require_member(
    who: &Principal,
    groups: &[String],
    code: &'static str,
    what: &str,
) -> Result<(), ApiError> {
    if groups.iter().any(|g| who.groups.contains(g)) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            code,
            format!("{what} needs membership in one of: {}", groups.join(", ")),
        ))
    }
}

/// Why the current owner of a requesting agent is refused.
const OWNS_NOW: &str = "it owns the requesting agent (as configured now)";

fn review_error(e: ReviewError) -> ApiError {
    let code = e.code();
    let msg = e.to_string();
    match code {
        "self_review" | "not_eligible" => ApiError::forbidden(code, msg),
        "not_found" => ApiError::not_found(msg),
        _ => ApiError::conflict(code, msg),
    }
}

pub(crate) fn transition_error(e: secondkey_core::request::TransitionError) -> ApiError {
    let code = e.code();
    let msg = e.to_string();
    match code {
        "not_requester" | "self_review" | "not_eligible" => ApiError::forbidden(code, msg),
        _ => ApiError::conflict(code, msg),
    }
}

pub(crate) fn consume_error(e: secondkey_core::request::ConsumeError) -> ApiError {
    let code = e.code();
    let msg = e.to_string();
    match code {
        "wrong_requester" => ApiError::forbidden(code, msg),
        _ => ApiError::conflict(code, msg),
    }
}

fn too_large(len: usize) -> ApiError {
    ApiError::bad_request(
        "action_too_large",
        format!("the action is {len} bytes; the limit is {MAX_ACTION_BYTES}. Move bulk data out of params"),
    )
}

fn add_environment(payload: &mut Value, env: &Option<String>) {
    if let Some(e) = env {
        payload["environment"] = json!(e);
    }
}

/// What a decision's log entry adds to the action: the adapter-derived
/// facts policy saw, and what backs the action's `on_behalf_of`.
fn add_facts(payload: &mut Value, facts: Option<Value>, on_behalf_of: Option<Value>) {
    if let Some(f) = facts {
        payload["facts"] = f;
    }
    if let Some(o) = on_behalf_of {
        payload["on_behalf_of"] = o;
    }
}

/// What a denied agent reads: which policies (with their `@reason`, when
/// they give one) and which decision id, so it can change course and a
/// human can find the record.
fn deny_message(id: &str, reasons: &[ReasonView]) -> String {
    let policies: Vec<String> = reasons
        .iter()
        .filter(|r| r.effect != "permit" && !r.policy.is_empty())
        .map(|r| match &r.reason {
            Some(why) => format!("{} ({why})", r.policy),
            None => r.policy.clone(),
        })
        .collect();
    if policies.is_empty() {
        format!("denied by secondkey (decision {id}): default deny (no permit matched)")
    } else {
        format!(
            "denied by secondkey (decision {id}) under policy {}",
            policies.join(", ")
        )
    }
}

/// What an identical earlier request of the same requester gives a new
/// submission in execute mode.
pub(crate) enum Reused {
    New(Box<Request>),
    /// Still waiting: the same request, not a second one.
    Pending(Box<Request>),
    /// Approved and unused: used now.
    Executed(Box<Request>),
}

/// Finds an approved (then a pending) request of `req`'s requester for the
/// same digest, made under the requirements policy sets now. An approved
/// one is consumed here, in the caller's transaction, so it runs once; one
/// whose deadline passed is expired on the spot and not reused.
fn reuse_identical(
    tx: &mut dyn Tx,
    req: &Request,
    now: Timestamp,
) -> Result<Option<Reused>, StoreError> {
    let who = req.requester.id.to_string();
    let dg = req.digest.as_str();
    // A request reviewed by someone this submission bars (the human its
    // delegation token acts for) is not this submission's to reuse; nor is
    // one made under other requirements than policy sets now (a tightened
    // quorum or another group opens a new request).
    let reusable = |r: &Request| {
        r.requires_as(&req.requirements)
            && !r.reviews.iter().any(|v| req.excluded.contains(&v.reviewer))
    };
    if let Some(mut found) = tx
        .find_request(&who, dg, RequestState::Approved)?
        .filter(reusable)
    {
        if let Some(t) = found.expire_if_due(now) {
            tx.put_request(&found)?;
            log_events(tx, now, "service:secondkey", &found, &t.events)?;
        } else if let Some(grant_id) = found.grant.as_ref().map(|g| g.id.clone()) {
            let digest = found.digest.clone();
            let requester = found.requester.id.clone();
            if let Ok(t) = found.consume(&grant_id, &digest, &requester, now) {
                if !tx.use_grant(&grant_id, now.0)? {
                    return Err(
                        ApiError::conflict("grant_used", "this approval was already used").into(),
                    );
                }
                tx.put_request(&found)?;
                log_executed(tx, now, &who, &found, &t.events)?;
                return Ok(Some(Reused::Executed(Box::new(found))));
            }
        }
    }
    if let Some(mut found) = tx
        .find_request(&who, dg, RequestState::Pending)?
        .filter(reusable)
    {
        if let Some(t) = found.expire_if_due(now) {
            tx.put_request(&found)?;
            log_events(tx, now, "service:secondkey", &found, &t.events)?;
        } else {
            // Waiting on it now bars whom this submission bars, too.
            if !req.excluded.is_subset(&found.excluded) {
                found.excluded.extend(req.excluded.iter().cloned());
                tx.put_request(&found)?;
            }
            return Ok(Some(Reused::Pending(Box::new(found))));
        }
    }
    Ok(None)
}

/// How long `?wait=` may hold a request open.
pub fn clamp_wait(asked: u64, max: Duration) -> Duration {
    Duration::from_secs(asked).min(max)
}

/// Whether `who` may see request `req`: its requester side (requester, the
/// agent's owner, the human it is backed to act for — a merely declared
/// `on_behalf_of` grants nothing), or anyone who could review it.
pub fn may_view(who: &Principal, req: &Request) -> bool {
    let id = &who.id;
    if *id == req.requester.id || req.requester.owner.as_ref() == Some(id) {
        return true;
    }
    if req.acting_for() == Some(id) {
        return true;
    }
    req.requirements.iter().any(|r| r.admits(&who.groups))
}

/// Loads a request inside a job, as `not_found` unless `who` may see it (so
/// ids of other people's requests do not leak through 403s).
fn visible_request(tx: &mut dyn Tx, id: &str, who: &Principal) -> Result<Request, StoreError> {
    tx.get_request(id)?
        .filter(|r| may_view(who, r))
        .ok_or_else(|| ApiError::not_found(format!("no request {id} that you may see")).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn timestamps_are_written_as_time_writes_them(
            ms in prop_oneof![
                0i64..=LAST_FOUR_DIGIT_YEAR_MS,
                1_600_000_000_000i64..1_900_000_000_000,
                -100_000_000_000_000i64..0,
                LAST_FOUR_DIGIT_YEAR_MS..i64::MAX,
            ]
        ) {
            prop_assert_eq!(rfc3339(Timestamp(ms)), rfc3339_slow(Timestamp(ms)));
        }
    }

    #[test]
    fn timestamps_at_the_edges() {
        for ms in [
            0,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
            LAST_FOUR_DIGIT_YEAR_MS,
            LAST_FOUR_DIGIT_YEAR_MS + 1,
            -1,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(rfc3339(Timestamp(ms)), rfc3339_slow(Timestamp(ms)), "{ms}");
        }
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Timestamp(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Timestamp(LAST_FOUR_DIGIT_YEAR_MS)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn ids_are_the_prefix_and_32_hex_digits_in_minting_order() {
        let a = new_id("act").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("act").unwrap();
        for id in [&a, &b] {
            let hex = id.strip_prefix("act_").unwrap();
            assert_eq!(hex.len(), 32);
            assert!(hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn deny_messages_name_policies_and_their_reasons() {
        let r = |policy: &str, effect: &str, reason: Option<&str>| ReasonView {
            policy: policy.into(),
            effect: effect.into(),
            message: String::new(),
            reason: reason.map(String::from),
        };
        assert_eq!(
            deny_message("act_1", &[r("", "default", None)]),
            "denied by secondkey (decision act_1): default deny (no permit matched)"
        );
        assert_eq!(
            deny_message(
                "act_2",
                &[
                    r("p:no-ddl", "forbid", Some("Schema changes go through a migration.")),
                    r("p:other", "forbid", None),
                    r("p:agents", "permit", Some("ignored")),
                ]
            ),
            "denied by secondkey (decision act_2) under policy p:no-ddl (Schema changes go through a migration.), p:other"
        );
    }
}
