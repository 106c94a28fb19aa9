//! The approval state machine of a request that needs human review.
//!
//! ```text
//! pending ─┬─ approve (quorum met) ─→ approved ─┬─ consume ─→ executed ─┬─→ failed
//!          ├─ deny ─→ denied                    ├─ revoke ─→ revoked    └─→ unknown
//!          ├─ withdraw ─→ withdrawn             └─ grant expires ─→ expired
//!          ├─ ttl passes ─→ expired
//!          └─ escalate (waited long enough) ─→ pending, more groups may review
//! ```
//!
//! Only a human's approval moves a request to `approved`: an escalation
//! widens who may fill the open slots from then on, and never approves by
//! itself.
//!
//! Every method takes `now` and, where an id is minted, the id itself. It
//! either changes the request and returns a [`Transition`] with the
//! [`CoreEvent`]s to log, or returns an error and leaves the request exactly
//! as it was — with one documented exception: a review that arrives at or
//! after `expires_at` first records the expiry
//! ([`ReviewError::Expired`] carries that transition).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::action::{Action, Digest};
use crate::principal::{Principal, PrincipalId};
use crate::quorum;
use crate::time::Timestamp;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for reviews.
    Pending,
    /// Quorum met; the grant may be used once.
    Approved,
    /// An eligible reviewer said no.
    Denied,
    /// Nobody decided in time, or the grant went unused until it expired.
    Expired,
    /// The requester took it back.
    Withdrawn,
    /// An eligible reviewer took the approval back before it was used.
    Revoked,
    /// The grant was used; the action ran (or is running).
    Executed,
    /// The action ran and failed.
    Failed,
    /// The action ran and its result is unknown.
    Unknown,
}

impl RequestState {
    /// Whether no decision can change it any more (invariant 4). The one move
    /// out of a terminal state is [`Request::record_outcome`], which only
    /// notes how an `Executed` action ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RequestState::Pending | RequestState::Approved)
    }

    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Withdrawn => "withdrawn",
            RequestState::Revoked => "revoked",
            RequestState::Executed => "executed",
            RequestState::Failed => "failed",
            RequestState::Unknown => "unknown",
        }
    }
}

/// What one matching review policy demands: `quorum` distinct humans, each a
/// member of at least one of `groups`. A request needs all its requirements.
///
/// An escalation may widen a requirement ([`Requirement::widened`]): its
/// slots then also accept members of more groups, but only through reviews
/// given after the widening. A review keeps filling exactly the slots it
/// could fill when it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The policy that asked for the review, for explanations.
    pub policy_id: String,
    /// Groups whose members may approve, as the policy names them.
    pub groups: Vec<String>,
    /// How many distinct approvers (0 is treated as 1).
    pub quorum: u32,
    /// Groups an escalation added, in the order added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widened: Vec<Widening>,
    /// The policy's `@reason`: why review is required, for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A group an escalation added to a requirement, and from which review on
/// it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Widening {
    /// The group added.
    pub group: String,
    /// How many reviews the request held when the group was added: only a
    /// review at this position in [`Request::reviews`] or later may fill a
    /// slot through the group.
    pub from_review: usize,
}

/// In which capacity an approval fills a requirement's slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// The group the approver counted for.
    pub group: String,
    /// Whether that group was added by an escalation (the slot was widened).
    pub widened: bool,
}

/// One filled slot of an approved request: who stood in for which
/// requirement, and as what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// The requirement's policy.
    pub requirement: String,
    /// Who approved.
    pub approver: PrincipalId,
    /// The group the approval counted for.
    pub group: String,
    /// Whether the slot was widened by an escalation and filled through it.
    pub widened: bool,
}

impl Requirement {
    /// A requirement as a review policy states it, not widened.
    pub fn new(policy_id: impl Into<String>, groups: Vec<String>, quorum: u32) -> Requirement {
        Requirement {
            policy_id: policy_id.into(),
            groups,
            quorum,
            widened: Vec::new(),
            reason: None,
        }
    }

    /// Whether someone in `groups` may fill one of this requirement's slots
    /// now (through the policy's groups or any added by an escalation).
    pub fn admits(&self, groups: &BTreeSet<String>) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
            || self.widened.iter().any(|w| groups.contains(&w.group))
    }

    /// The capacity in which the review at position `review` of the
    /// request, given by someone in `groups`, fills one of this
    /// requirement's slots: a group of the policy's own first; else a group
    /// an escalation added before that review. `None` if it cannot.
    pub fn capacity(&self, groups: &BTreeSet<String>, review: usize) -> Option<Capacity> {
        if let Some(g) = self.groups.iter().find(|g| groups.contains(*g)) {
            return Some(Capacity {
                group: g.clone(),
                widened: false,
            });
        }
        self.widened
            .iter()
            .find(|w| review >= w.from_review && groups.contains(&w.group))
            .map(|w| Capacity {
                group: w.group.clone(),
                widened: true,
            })
    }

    /// Every group whose members may fill a slot now: the policy's, then
    /// those escalations added.
    pub fn all_groups(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        for w in &self.widened {
            if !v.contains(&w.group.as_str()) {
                v.push(&w.group);
            }
        }
        v
    }

    /// The groups escalations added, in order.
    pub fn widened_groups(&self) -> Vec<&str> {
        self.widened.iter().map(|w| w.group.as_str()).collect()
    }

    /// How reviewers read the requirement: `security review`, or
    /// `security review (escalated to data-owners)` once widened.
    pub fn label(&self) -> String {
        let mut s = format!("{} review", self.groups.join(" or "));
        if !self.widened.is_empty() {
            s.push_str(&format!(
                " (escalated to {})",
                self.widened_groups().join(", ")
            ));
        }
        s
    }

    /// Who may fill a slot, for reviewers: `security or dba`, and once
    /// widened `security, or data-owners reviewing after the escalation`.
    pub fn who_may_fill(&self) -> String {
        let own = self.groups.join(" or ");
        if self.widened.is_empty() {
            return own;
        }
        format!(
            "{own}, or {} reviewing after the escalation",
            self.widened_groups().join(" or ")
        )
    }

    /// The number of approvers needed; at least one.
    pub fn needed(&self) -> usize {
        usize::try_from(self.quorum).unwrap_or(usize::MAX).max(1)
    }
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    /// Counts toward quorum.
    Approve,
    /// Denies the request outright.
    Deny,
}

/// One recorded review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Who reviewed.
    pub reviewer: PrincipalId,
    /// What they decided.
    pub decision: ReviewDecision,
    /// Their comment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When.
    pub at: Timestamp,
    /// The reviewer's groups among those this request requires, as they were
    /// at review time; quorum is computed from them, so a later group change
    /// cannot retroactively approve or un-approve.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// The identity-provider accounts the reviewer was known as
    /// ([`Principal::subjects`]): one account reviews once, whatever id.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub subjects: BTreeSet<String>,
}

/// The single-use grant an approval issues. The signed token is derived
/// from it on demand (see [`crate::grant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The grant id (the token's `jti`), minted by the caller.
    pub id: String,
    /// When it stops being usable.
    pub expires_at: Timestamp,
    /// When it was used; a grant is used at most once.
    #[serde(default)]
    pub used_at: Option<Timestamp>,
}

/// How an executed action ended, reported by whoever ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked; the request stays `Executed`.
    Succeeded,
    /// It failed; the request becomes `Failed`.
    Failed,
    /// Nobody knows (e.g. a timeout); the request becomes `Unknown`.
    Unknown,
}

/// Facts a transition produced, which the caller appends to the audit log in
/// the same transaction that stores the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CoreEvent {
    /// A review was recorded.
    Reviewed {
        /// Who.
        reviewer: PrincipalId,
        /// What they decided.
        decision: ReviewDecision,
        /// Their comment.
        comment: Option<String>,
    },
    /// Quorum was met and a grant issued.
    Approved {
        /// The new grant's id.
        grant_id: String,
        /// Everyone who approved, in review order.
        approvers: Vec<PrincipalId>,
        /// Which slot each counted approval filled, requirement by
        /// requirement: who stood in for whom.
        seats: Vec<Seat>,
    },
    /// A reviewer denied the request.
    Denied {
        /// Who.
        by: PrincipalId,
    },
    /// The request (or its unused grant) expired.
    Expired,
    /// The requester withdrew it.
    Withdrawn,
    /// A reviewer revoked the approval.
    Revoked {
        /// Who.
        by: PrincipalId,
    },
    /// The grant was used; execution starts.
    Consumed {
        /// The grant's id.
        grant_id: String,
    },
    /// The executor reported how it ended.
    OutcomeRecorded {
        /// How.
        outcome: Outcome,
    },
    /// The request waited long enough that members of more groups may now
    /// review it (each requirement admits them too, through reviews given
    /// from now on).
    Escalated {
        /// The groups added, sorted.
        groups: Vec<String>,
    },
}

/// A state change and the events that record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The state before.
    pub from: RequestState,
    /// The state after (may equal `from`, e.g. a review below quorum).
    pub to: RequestState,
    /// What to log, in order.
    pub events: Vec<CoreEvent>,
}

/// Why a review was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The reviewer is the requester, its owner, or who it acts for.
    #[error(
        "{reviewer} may not review this request: {why}; ask another member of a required group"
    )]
    SelfReview {
        /// The would-be reviewer.
        reviewer: PrincipalId,
        /// Which relation forbids it.
        why: &'static str,
    },
    /// The reviewer is not a human in a required group.
    #[error("{reviewer} may not review this request: {why}")]
    NotEligible {
        /// The would-be reviewer.
        reviewer: PrincipalId,
        /// Why, and who may.
        why: String,
    },
    /// The request is no longer pending.
    #[error("the request is already {}; it cannot be reviewed again", state.as_str())]
    AlreadyDecided {
        /// Its state.
        state: RequestState,
    },
    /// The request expired. If `transition` is set, this call recorded the
    /// expiry and the caller must persist and log it; nothing else changed.
    #[error("the request expired before this review; its requester must submit the action again to ask anew")]
    Expired {
        /// The expiry this call performed, if it performed one.
        transition: Option<Box<Transition>>,
    },
    /// This reviewer already reviewed; one human counts once.
    #[error("{reviewer} already reviewed this request (under this id, or another with the same identity-provider account); quorum counts distinct people")]
    DuplicateReviewer {
        /// Who.
        reviewer: PrincipalId,
    },
}

impl ReviewError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ReviewError::SelfReview { .. } => "self_review",
            ReviewError::NotEligible { .. } => "not_eligible",
            ReviewError::AlreadyDecided { .. } => "already_decided",
            ReviewError::Expired { .. } => "expired",
            ReviewError::DuplicateReviewer { .. } => "duplicate_reviewer",
        }
    }

    /// The HTTP status the contract assigns (403 or 409).
    pub fn http_status(&self) -> u16 {
        match self {
            ReviewError::SelfReview { .. } | ReviewError::NotEligible { .. } => 403,
            _ => 409,
        }
    }

    /// The state change this failed call still made (only an expiry).
    pub fn state_changed(&self) -> Option<&Transition> {
        match self {
            ReviewError::Expired {
                transition: Some(t),
            } => Some(t),
            _ => None,
        }
    }
}

/// Why a withdrawal, revocation or outcome report was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Only the requester withdraws.
    #[error("{by} did not make this request; only its requester may withdraw it")]
    NotRequester {
        /// Who tried.
        by: PrincipalId,
    },
    /// The revoker is the requester, its owner, or who it acts for.
    #[error("{by} may not revoke this request: {why}")]
    SelfReview {
        /// Who tried.
        by: PrincipalId,
        /// Which relation forbids it.
        why: &'static str,
    },
    /// The revoker is not a human in a required group.
    #[error("{by} may not revoke this request: {why}")]
    NotEligible {
        /// Who tried.
        by: PrincipalId,
        /// Why.
        why: String,
    },
    /// The request is in a state that does not allow this.
    #[error("the request is {}; {what}", state.as_str())]
    WrongState {
        /// Its state.
        state: RequestState,
        /// What would have been needed.
        what: &'static str,
    },
    /// The deadline passed (call `expire_if_due` to record it).
    #[error("the request or its grant has expired")]
    Expired,
    /// The grant was already used, so there is nothing to revoke.
    #[error("the grant was already used; an executed action cannot be revoked")]
    GrantUsed,
    /// The outcome was reported already.
    #[error("the outcome of this action was already recorded")]
    OutcomeRecorded,
    /// The request has not waited long enough to escalate.
    #[error("the request is not due for escalation until {due}")]
    NotDue {
        /// When it will be.
        due: Timestamp,
    },
    /// Every group named already may review (or none was named).
    #[error("nothing to escalate: every named group may already review this request")]
    NothingToEscalate,
}

impl TransitionError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::NotRequester { .. } => "not_requester",
            TransitionError::SelfReview { .. } => "self_review",
            TransitionError::NotEligible { .. } => "not_eligible",
            TransitionError::WrongState { .. } => "already_decided",
            TransitionError::Expired => "expired",
            TransitionError::GrantUsed => "grant_used",
            TransitionError::OutcomeRecorded => "outcome_recorded",
            TransitionError::NotDue { .. } => "not_due",
            TransitionError::NothingToEscalate => "nothing_to_escalate",
        }
    }

    /// The HTTP status the contract assigns (403 or 409).
    pub fn http_status(&self) -> u16 {
        match self {
            TransitionError::NotRequester { .. }
            | TransitionError::SelfReview { .. }
            | TransitionError::NotEligible { .. } => 403,
            _ => 409,
        }
    }
}

/// Why a grant could not be consumed. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// The grant id is not this request's grant.
    #[error("grant {grant_id} does not belong to this request")]
    UnknownGrant {
        /// The id presented.
        grant_id: String,
    },
    /// Single use: it was used already.
    #[error(
        "this grant was already used; approvals execute at most once — submit the action again"
    )]
    AlreadyUsed,
    /// The action differs from what was approved.
    #[error("the action's digest differs from the approved one; nothing was executed — submit the changed action for review")]
    DigestMismatch,
    /// The grant (or the request) expired.
    #[error("this grant has expired; submit the action again")]
    Expired,
    /// The request is not approved (pending, denied, revoked, …).
    #[error("the request is {}, not approved; nothing was executed", state.as_str())]
    NotApproved {
        /// Its state.
        state: RequestState,
    },
    /// Only the requester may use its grant.
    #[error("this grant was issued to {requester}; only it may use it")]
    WrongRequester {
        /// Who the grant belongs to.
        requester: PrincipalId,
    },
}

impl ConsumeError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConsumeError::UnknownGrant { .. } => "unknown_grant",
            ConsumeError::AlreadyUsed => "grant_used",
            ConsumeError::DigestMismatch => "digest_mismatch",
            ConsumeError::Expired => "expired",
            ConsumeError::NotApproved { .. } => "not_approved",
            ConsumeError::WrongRequester { .. } => "wrong_requester",
        }
    }

    /// The HTTP status the contract assigns (403 or 409).
    pub fn http_status(&self) -> u16 {
        match self {
            ConsumeError::WrongRequester { .. } => 403,
            _ => 409,
        }
    }
}

/// An action waiting for, or past, human review.
///
/// Serializable so the store can persist it whole; the requester is a
/// snapshot (with its owner) taken at submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The id, minted by the caller.
    pub id: String,
    /// The digest of the action as submitted; the grant is bound to it.
    pub digest: Digest,
    /// The action.
    pub action: Action,
    /// Who asked, as known at submission.
    pub requester: Principal,
    /// What must be satisfied, all of it.
    pub requirements: Vec<Requirement>,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it expires if undecided.
    pub expires_at: Timestamp,
    /// How long an approval stays usable, in milliseconds.
    pub grant_ttl_ms: i64,
    /// Reviews so far, in order.
    #[serde(default)]
    pub reviews: Vec<Review>,
    /// Where it is.
    pub state: RequestState,
    /// When it was approved or denied.
    #[serde(default)]
    pub decided_at: Option<Timestamp>,
    /// The grant, once approved.
    #[serde(default)]
    pub grant: Option<GrantRecord>,
    /// Whether the escalation notice went out.
    #[serde(default)]
    pub escalated: bool,
    /// Groups added to the requirements by [`Request::escalate`] (each
    /// requirement's [`Requirement::widened`] says from which review on).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub escalated_to: BTreeSet<String>,
    /// More principals barred from reviewing, beyond the requester, its owner
    /// and a backed `on_behalf_of`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub excluded: BTreeSet<PrincipalId>,
    /// Whether the action's `on_behalf_of` is backed — by a delegation the
    /// gateway is configured with or a verified token claim — rather than
    /// only declared by the agent. Only a backed one counts (see
    /// [`Request::acting_for`]). Requests stored before this field existed
    /// read as backed: they keep the exclusion they were created with.
    #[serde(default = "backed_before_this_field", skip_serializing_if = "is_true")]
    pub on_behalf_of_backed: bool,
    /// How execution ended, once reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The action JSON exactly as submitted (what `digest` covers), so that
    /// reviewers see those very bytes' meaning rather than a re-encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted: Option<serde_json::Value>,
}

fn backed_before_this_field() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A separation-of-duties or eligibility failure, before it is phrased for
/// the operation at hand.
enum Refusal {
    SelfReview(&'static str),
    NotEligible(String),
}

impl Request {
    /// A new pending request. `ttl` bounds how long it may wait for a
    /// decision; `grant_ttl` how long an approval stays usable.
    ///
    /// A request without requirements can never be approved (nobody is
    /// eligible); it simply expires.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        digest: Digest,
        action: Action,
        requester: Principal,
        requirements: Vec<Requirement>,
        ttl: Duration,
        grant_ttl: Duration,
        now: Timestamp,
    ) -> Request {
        Request {
            id,
            digest,
            action,
            requester,
            requirements,
            created_at: now,
            expires_at: now.plus(ttl),
            grant_ttl_ms: i64::try_from(grant_ttl.as_millis()).unwrap_or(i64::MAX),
            reviews: Vec::new(),
            state: RequestState::Pending,
            decided_at: None,
            grant: None,
            escalated: false,
            escalated_to: BTreeSet::new(),
            excluded: BTreeSet::new(),
            on_behalf_of_backed: false,
            outcome: None,
            submitted: None,
        }
    }

    /// Whether this request waits on the requirements `evaluated` — the
    /// same policies, groups and quorums, whatever escalation widened
    /// since. Only then may a new submission of the same action ride on it:
    /// after policy tightens, an older request asks too little.
    pub fn requires_as(&self, evaluated: &[Requirement]) -> bool {
        fn key(rs: &[Requirement]) -> Vec<(&str, Vec<&str>, u32)> {
            let mut k: Vec<_> = rs
                .iter()
                .map(|r| {
                    let mut groups: Vec<&str> = r.groups.iter().map(String::as_str).collect();
                    groups.sort_unstable();
                    (r.policy_id.as_str(), groups, r.quorum)
                })
                .collect();
            k.sort_unstable();
            k
        }
        key(&self.requirements) == key(evaluated)
    }

    /// Keeps the action JSON exactly as submitted alongside the parsed one.
    pub fn with_submitted(mut self, raw: serde_json::Value) -> Request {
        self.submitted = Some(raw);
        self
    }

    /// Bars more principals from reviewing or revoking, which only the
    /// caller can know about.
    pub fn with_excluded(mut self, ids: impl IntoIterator<Item = PrincipalId>) -> Request {
        self.excluded.extend(ids);
        self
    }

    /// Marks the action's `on_behalf_of` as backed (a configured delegation
    /// or a verified token claim) or as only declared by the agent.
    pub fn with_on_behalf_of_backed(mut self, backed: bool) -> Request {
        self.on_behalf_of_backed = backed;
        self
    }

    /// The human this request is done for, when that counts: the action's
    /// `on_behalf_of` if it is backed. A merely declared one is shown to
    /// reviewers as declared and changes nobody's rights — it neither bars
    /// that human from reviewing (an agent could otherwise strike its
    /// strictest reviewer) nor lets them see the request.
    pub fn acting_for(&self) -> Option<&PrincipalId> {
        self.action
            .on_behalf_of
            .as_ref()
            .filter(|_| self.on_behalf_of_backed)
    }

    /// Everyone who may never review this request: the requester, its owner,
    /// the principal it is backed to be done for ([`Request::acting_for`]),
    /// and [`Request::excluded`].
    pub fn sod_set(&self) -> BTreeSet<PrincipalId> {
        let mut set = self.excluded.clone();
        set.insert(self.requester.id.clone());
        set.extend(self.requester.owner.iter().cloned());
        set.extend(self.acting_for().cloned());
        set
    }

    fn refusal(&self, who: &Principal) -> Option<Refusal> {
        let id = &who.id;
        if *id == self.requester.id {
            return Some(Refusal::SelfReview("it is the requester"));
        }
        if self.requester.owner.as_ref() == Some(id) {
            return Some(Refusal::SelfReview("it owns the requesting agent"));
        }
        if self.acting_for() == Some(id) {
            return Some(Refusal::SelfReview("the action is done on its behalf"));
        }
        if who.same_person(&self.requester.subjects) {
            return Some(Refusal::SelfReview(
                "it signed in with the identity-provider account the request came from",
            ));
        }
        if self.excluded.contains(id) {
            return Some(Refusal::SelfReview(
                "it is excluded from reviewing this request: it is the person the requesting agent's delegation token acts for, or the user of the same name as a requester no [[principals]] entry names (docs/identity.md)",
            ));
        }
        if !who.is_human() {
            return Some(Refusal::NotEligible(
                "agents and services never review; a human must".to_string(),
            ));
        }
        if !self.requirements.iter().any(|r| r.admits(&who.groups)) {
            let mut groups: Vec<&str> = self
                .requirements
                .iter()
                .flat_map(Requirement::all_groups)
                .collect();
            groups.sort_unstable();
            groups.dedup();
            return Some(Refusal::NotEligible(format!(
                "it is not a member of any required group ({})",
                groups.join(", ")
            )));
        }
        None
    }

    /// Separation of duties and eligibility: the requester, its owner, the
    /// principal the action is done for and whoever signed in with an
    /// identity-provider account the requester's credential came from
    /// ([`Principal::subjects`]) never review; agents and services
    /// never review; the reviewer must be in a group some requirement names.
    pub fn check_reviewer(&self, reviewer: &Principal) -> Result<(), ReviewError> {
        match self.refusal(reviewer) {
            None => Ok(()),
            Some(Refusal::SelfReview(why)) => Err(ReviewError::SelfReview {
                reviewer: reviewer.id.clone(),
                why,
            }),
            Some(Refusal::NotEligible(why)) => Err(ReviewError::NotEligible {
                reviewer: reviewer.id.clone(),
                why,
            }),
        }
    }

    /// Everyone who approved, in review order.
    pub fn approvers(&self) -> Vec<PrincipalId> {
        self.reviews
            .iter()
            .filter(|r| r.decision == ReviewDecision::Approve)
            .map(|r| r.reviewer.clone())
            .collect()
    }

    /// Which approvers fill which requirement's slots, if the approvals so far
    /// satisfy every requirement with distinct people (see [`quorum`]).
    pub fn assignment(&self) -> Option<Vec<Vec<PrincipalId>>> {
        self.seats().map(|per| {
            per.into_iter()
                .map(|v| v.into_iter().map(|s| s.approver).collect())
                .collect()
        })
    }

    /// Like [`Request::assignment`], with the capacity each approver fills
    /// its slot in. Each approval counts only for the slots open to it when
    /// it was given: a group an escalation added counts for reviews after
    /// the escalation, never for earlier ones.
    pub fn seats(&self) -> Option<Vec<Vec<Seat>>> {
        if self.requirements.is_empty() {
            return None;
        }
        quorum::assignment(&self.requirements, &self.approvals())
    }

    /// Each approval with the groups the approver held at review time and
    /// its position among the reviews.
    fn approvals(&self) -> Vec<quorum::Approval> {
        self.reviews
            .iter()
            .enumerate()
            .filter(|(_, r)| r.decision == ReviewDecision::Approve)
            .map(|(i, r)| quorum::Approval {
                id: r.reviewer.clone(),
                groups: r.groups.clone(),
                review: i,
            })
            .collect()
    }

    /// Where each requirement stands (same order): the seats filled so far,
    /// by the same matching that decides approval (see [`quorum::seated`]).
    /// Complete exactly when [`Request::seats`] is.
    pub fn progress(&self) -> Vec<Vec<Seat>> {
        quorum::seated(&self.requirements, &self.approvals())
    }

    fn expire(&mut self) -> Transition {
        let from = self.state;
        self.state = RequestState::Expired;
        Transition {
            from,
            to: RequestState::Expired,
            events: vec![CoreEvent::Expired],
        }
    }

    /// Approves a pending request whose approvals fill every requirement with
    /// distinct humans, issuing a grant with id `grant_id` that expires
    /// `grant_ttl` after `now`. The one way into `Approved`, called only
    /// right after a human's approval was recorded.
    fn approve_if_met(&mut self, now: Timestamp, grant_id: &str) -> Option<CoreEvent> {
        if self.state != RequestState::Pending {
            return None;
        }
        let seats = self.seats()?;
        self.state = RequestState::Approved;
        self.decided_at = Some(now);
        self.grant = Some(GrantRecord {
            id: grant_id.to_string(),
            expires_at: now.plus_millis(self.grant_ttl_ms),
            used_at: None,
        });
        Some(CoreEvent::Approved {
            grant_id: grant_id.to_string(),
            approvers: self.approvers(),
            seats: seats.into_iter().flatten().collect(),
        })
    }

    /// Records a review. A deny by any eligible reviewer denies; approvals
    /// approve once distinct humans fill every requirement, issuing a grant
    /// with id `next_grant_id` that expires `grant_ttl` after `now`.
    pub fn review(
        &mut self,
        reviewer: &Principal,
        decision: ReviewDecision,
        comment: Option<String>,
        now: Timestamp,
        next_grant_id: &str,
    ) -> Result<Transition, ReviewError> {
        match self.state {
            RequestState::Pending => {}
            RequestState::Expired => return Err(ReviewError::Expired { transition: None }),
            state => return Err(ReviewError::AlreadyDecided { state }),
        }
        if now >= self.expires_at {
            let t = self.expire();
            return Err(ReviewError::Expired {
                transition: Some(Box::new(t)),
            });
        }
        self.check_reviewer(reviewer)?;
        if self
            .reviews
            .iter()
            .any(|r| r.reviewer == reviewer.id || reviewer.same_person(&r.subjects))
        {
            return Err(ReviewError::DuplicateReviewer {
                reviewer: reviewer.id.clone(),
            });
        }
        let relevant: BTreeSet<String> = reviewer
            .groups
            .iter()
            .filter(|g| {
                self.requirements
                    .iter()
                    .any(|r| r.all_groups().contains(&g.as_str()))
            })
            .cloned()
            .collect();
        self.reviews.push(Review {
            reviewer: reviewer.id.clone(),
            decision,
            comment: comment.clone(),
            at: now,
            groups: relevant,
            subjects: reviewer.subjects.clone(),
        });
        let mut events = vec![CoreEvent::Reviewed {
            reviewer: reviewer.id.clone(),
            decision,
            comment,
        }];
        match decision {
            ReviewDecision::Deny => {
                self.state = RequestState::Denied;
                self.decided_at = Some(now);
                events.push(CoreEvent::Denied {
                    by: reviewer.id.clone(),
                });
            }
            ReviewDecision::Approve => events.extend(self.approve_if_met(now, next_grant_id)),
        }
        Ok(Transition {
            from: RequestState::Pending,
            to: self.state,
            events,
        })
    }

    /// The requester takes a pending request back.
    pub fn withdraw(
        &mut self,
        by: &PrincipalId,
        now: Timestamp,
    ) -> Result<Transition, TransitionError> {
        if *by != self.requester.id {
            return Err(TransitionError::NotRequester { by: by.clone() });
        }
        if self.state != RequestState::Pending {
            return Err(TransitionError::WrongState {
                state: self.state,
                what: "only a pending request can be withdrawn",
            });
        }
        if now >= self.expires_at {
            return Err(TransitionError::Expired);
        }
        self.state = RequestState::Withdrawn;
        Ok(Transition {
            from: RequestState::Pending,
            to: RequestState::Withdrawn,
            events: vec![CoreEvent::Withdrawn],
        })
    }

    /// An eligible reviewer (same separation-of-duties rules as reviewing)
    /// takes back an approval whose grant is still unused.
    pub fn revoke(
        &mut self,
        by: &Principal,
        now: Timestamp,
    ) -> Result<Transition, TransitionError> {
        match self.refusal(by) {
            None => {}
            Some(Refusal::SelfReview(why)) => {
                return Err(TransitionError::SelfReview {
                    by: by.id.clone(),
                    why,
                })
            }
            Some(Refusal::NotEligible(why)) => {
                return Err(TransitionError::NotEligible {
                    by: by.id.clone(),
                    why,
                })
            }
        }
        if self.grant.as_ref().is_some_and(|g| g.used_at.is_some()) {
            return Err(TransitionError::GrantUsed);
        }
        let grant_expiry = match (&self.state, &self.grant) {
            (RequestState::Approved, Some(g)) => g.expires_at,
            (state, _) => {
                return Err(TransitionError::WrongState {
                    state: *state,
                    what: "only an approved request with an unused grant can be revoked",
                })
            }
        };
        if now >= grant_expiry {
            return Err(TransitionError::Expired);
        }
        self.state = RequestState::Revoked;
        Ok(Transition {
            from: RequestState::Approved,
            to: RequestState::Revoked,
            events: vec![CoreEvent::Revoked { by: by.id.clone() }],
        })
    }

    /// Expires a pending request past `expires_at`, or an approved one whose
    /// grant went unused past its expiry. `None` if nothing was due.
    pub fn expire_if_due(&mut self, now: Timestamp) -> Option<Transition> {
        let due = match (self.state, &self.grant) {
            (RequestState::Pending, _) => now >= self.expires_at,
            (RequestState::Approved, Some(g)) => g.used_at.is_none() && now >= g.expires_at,
            _ => false,
        };
        due.then(|| self.expire())
    }

    /// When `fraction` (0..=1) of the waiting time has passed; `None` for a
    /// fraction that is not a number.
    pub fn escalation_time(&self, fraction: f64) -> Option<Timestamp> {
        if !fraction.is_finite() {
            return None;
        }
        let span = self.expires_at.0.saturating_sub(self.created_at.0) as f64;
        // `as` saturates for out-of-range floats, which is what we want here.
        let offset = (fraction.clamp(0.0, 1.0) * span).floor() as i64;
        Some(self.created_at.plus_millis(offset))
    }

    /// Whether reviewers should be reminded: still pending, not yet
    /// escalated, and `fraction` (0..=1) of the waiting time has passed.
    pub fn escalation_due(&self, now: Timestamp, fraction: f64) -> bool {
        if self.state != RequestState::Pending || self.escalated || now >= self.expires_at {
            return false;
        }
        self.escalation_time(fraction).is_some_and(|t| now >= t)
    }

    /// Escalates a pending request that has waited `fraction` of its TTL:
    /// members of `groups` may from now on fill any requirement's open
    /// slots. Quorum, separation of duties and earlier reviews stay as they
    /// were; groups are only ever added. Changing who may review is a
    /// decision rule, so it lives here and is logged
    /// ([`CoreEvent::Escalated`]).
    ///
    /// An escalation never approves: a widened slot is filled only by a
    /// review given after it, by a member of a group the slot then accepts
    /// ([`Requirement::capacity`]); reviews given before keep filling
    /// exactly the slots they could fill when given. Someone who already
    /// reviewed cannot review again to fill a widened slot.
    pub fn escalate(
        &mut self,
        groups: &BTreeSet<String>,
        fraction: f64,
        now: Timestamp,
    ) -> Result<Transition, TransitionError> {
        if self.state != RequestState::Pending {
            return Err(TransitionError::WrongState {
                state: self.state,
                what: "only a pending request can be escalated",
            });
        }
        if now >= self.expires_at {
            return Err(TransitionError::Expired);
        }
        let due = self.escalation_time(fraction).unwrap_or(self.expires_at);
        if now < due {
            return Err(TransitionError::NotDue { due });
        }
        let added: Vec<String> = groups
            .iter()
            .filter(|g| {
                !g.is_empty()
                    && !self
                        .requirements
                        .iter()
                        .all(|r| r.all_groups().contains(&g.as_str()))
            })
            .cloned()
            .collect();
        if added.is_empty() || self.requirements.is_empty() {
            return Err(TransitionError::NothingToEscalate);
        }
        let from_review = self.reviews.len();
        for r in &mut self.requirements {
            for g in &added {
                if !r.all_groups().contains(&g.as_str()) {
                    r.widened.push(Widening {
                        group: g.clone(),
                        from_review,
                    });
                }
            }
        }
        self.escalated_to.extend(added.iter().cloned());
        self.escalated = true;
        Ok(Transition {
            from: RequestState::Pending,
            to: RequestState::Pending,
            events: vec![CoreEvent::Escalated { groups: added }],
        })
    }

    /// Notes that the escalation went out, so it goes out once. Returns
    /// whether anything changed.
    pub fn mark_escalated(&mut self) -> bool {
        if self.state != RequestState::Pending || self.escalated {
            return false;
        }
        self.escalated = true;
        true
    }

    /// Uses the grant: exactly once, only by the requester, only for the
    /// approved digest, only before it expires. Success moves the request to
    /// `Executed` (execution starts).
    pub fn consume(
        &mut self,
        grant_id: &str,
        digest: &Digest,
        requester: &PrincipalId,
        now: Timestamp,
    ) -> Result<Transition, ConsumeError> {
        let Some(grant) = &self.grant else {
            return Err(ConsumeError::NotApproved { state: self.state });
        };
        if grant.id != grant_id {
            return Err(ConsumeError::UnknownGrant {
                grant_id: grant_id.to_string(),
            });
        }
        if grant.used_at.is_some() {
            return Err(ConsumeError::AlreadyUsed);
        }
        match self.state {
            RequestState::Approved => {}
            RequestState::Expired => return Err(ConsumeError::Expired),
            state => return Err(ConsumeError::NotApproved { state }),
        }
        if now >= grant.expires_at {
            return Err(ConsumeError::Expired);
        }
        if *requester != self.requester.id {
            return Err(ConsumeError::WrongRequester {
                requester: self.requester.id.clone(),
            });
        }
        if *digest != self.digest {
            return Err(ConsumeError::DigestMismatch);
        }
        if let Some(g) = self.grant.as_mut() {
            g.used_at = Some(now);
        }
        self.state = RequestState::Executed;
        Ok(Transition {
            from: RequestState::Approved,
            to: RequestState::Executed,
            events: vec![CoreEvent::Consumed {
                grant_id: grant_id.to_string(),
            }],
        })
    }

    /// Records how an executed action ended: once, and only after `consume`.
    /// `Succeeded` keeps `Executed`; `Failed` and `Unknown` move there.
    pub fn record_outcome(
        &mut self,
        outcome: Outcome,
        _now: Timestamp,
    ) -> Result<Transition, TransitionError> {
        // Recorded already — whatever state that outcome moved it to.
        if self.outcome.is_some() {
            return Err(TransitionError::OutcomeRecorded);
        }
        if self.state != RequestState::Executed {
            return Err(TransitionError::WrongState {
                state: self.state,
                what: "an outcome can only be recorded for an executed action",
            });
        }
        self.outcome = Some(outcome);
        self.state = match outcome {
            Outcome::Succeeded => RequestState::Executed,
            Outcome::Failed => RequestState::Failed,
            Outcome::Unknown => RequestState::Unknown,
        };
        Ok(Transition {
            from: RequestState::Executed,
            to: self.state,
            events: vec![CoreEvent::OutcomeRecorded { outcome }],
        })
    }
}

#[cfg(test)]
mod tests;
