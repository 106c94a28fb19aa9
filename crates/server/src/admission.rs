//! Admission: what one principal may hold and open, and whose
//! `on_behalf_of` counts.
//!
//! - Long-polls (`?wait=`) and event streams are held slots, capped per
//!   principal and, for principals no `[[principals]]` entry names, per
//!   token issuer too ([`Gateway::hold`]).
//! - Opening a request (a review) is capped by the principal's pending
//!   requests and by a request rate, checked inside the transaction that
//!   would store it ([`Admission::admit`]), so concurrent submissions
//!   cannot slip past together, and for every path that creates requests:
//!   the REST API and [`Gateway::intercept`] alike.
//! - Refusals by these limits are not logged one by one — a flood would
//!   grow the append-only log without bound — but tallied per principal
//!   and written as one `limit.refused` entry per principal per window
//!   ([`Gateway::flush_refusals`]).
//! - An action's `on_behalf_of` counts only when backed ([`backing`]).

use std::sync::Arc;
use std::time::Duration;

use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_core::time::Timestamp;
use secondkey_store::{StoreError, Tx};
use serde_json::{json, Value};

use crate::config::{ActsFor, Config, Limits};
use crate::error::ApiError;
use crate::gateway::{entry, rfc3339, Gateway};
use crate::identity::Credential;
use crate::limits::{Buckets, RefusalTally, SlotGuard, Slots};

/// How long refusals are tallied before their `limit.refused` entry is
/// written.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// The gateway's admission state.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    slots: Arc<Slots>,
    opened: Buckets,
    refusals: RefusalTally,
}

/// What a caller holds while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A long-poll, `GET /v1/requests/{id}?wait=`.
    Wait,
    /// An event stream, `GET /v1/requests/{id}/events`.
    Stream,
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            limits: limits.clone(),
            slots: Slots::new(),
            opened: Buckets::new(limits.requests_per_minute),
            refusals: RefusalTally::new(REFUSAL_WINDOW),
        }
    }

    /// Whether `requester` may open one more request at `now`: fewer than
    /// `max_pending_per_principal` pending, and a token of its request
    /// rate. Runs inside the store job that would store the request.
    pub(crate) fn admit(
        &self,
        tx: &mut dyn Tx,
        requester: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let max = self.limits.max_pending_per_principal;
        let (pending, first_deadline) = tx.pending_of(requester, now.0)?;
        if pending >= max {
            // The earliest a slot frees up without a reviewer: when the
            // oldest pending request expires (told as at most a minute).
            let ms = first_deadline.map_or(1000, |d| (d - now.0).clamp(1000, 60_000));
            return Err(ApiError::limited(
                "too_many_pending",
                format!(
                    "{requester} already has the most requests waiting for review that one principal may ({pending}, [limits] max_pending_per_principal); wait for a decision, withdraw one, or retry later"
                ),
                Duration::from_millis(u64::try_from(ms).unwrap_or(1000)),
            )
            .into());
        }
        if let Err(wait) = self.opened.try_take(requester, now.0) {
            return Err(ApiError::limited(
                "rate_limited",
                format!(
                    "{requester} is opening requests faster than {} a minute ([limits] requests_per_minute); retry in {} s",
                    self.limits.requests_per_minute,
                    wait.as_millis().div_ceil(1000).max(1)
                ),
                wait,
            )
            .into());
        }
        Ok(())
    }

    /// Counts a refusal of `who` for the next `limit.refused` entry.
    pub(crate) fn note(&self, who: &PrincipalId, code: &str, now: Timestamp) {
        self.refusals.record(who.as_str(), code, now.0);
    }
}

impl Gateway {
    /// Takes a long-poll or event-stream slot for `who`, or refuses with
    /// `429` (`too_many_waits`, `too_many_streams`). The slot is given back
    /// when the guard drops, however the wait ends.
    pub fn hold(
        &self,
        kind: Hold,
        who: &Principal,
        cred: &Credential,
    ) -> Result<SlotGuard, ApiError> {
        let l = &self.admission.limits;
        let (what, code, per_principal, per_issuer, instead) = match kind {
            Hold::Wait => (
                "long-polls",
                "too_many_waits",
                l.max_waits_per_principal,
                l.max_waits_per_issuer,
                "wait for one to end, or follow GET /v1/requests/{id}/events",
            ),
            Hold::Stream => (
                "event streams",
                "too_many_streams",
                l.max_streams_per_principal,
                l.max_streams_per_issuer,
                "close one, or long-poll with ?wait=",
            ),
        };
        let tag = match kind {
            Hold::Wait => "wait",
            Hold::Stream => "stream",
        };
        let mut keys = vec![(format!("{tag} p:{}", who.id), per_principal)];
        if let Some(iss) = &cred.unconfigured_issuer {
            keys.push((format!("{tag} iss:{iss}"), per_issuer));
        }
        self.admission.slots.try_take(&keys).map_err(|(key, cap)| {
            self.admission.note(&who.id, code, self.now());
            let whose = if key.contains(" iss:") {
                format!(
                    "the principals of token issuer {:?} that no [[principals]] entry names already have",
                    cred.unconfigured_issuer.as_deref().unwrap_or_default()
                )
            } else {
                format!("{} already has", who.id)
            };
            ApiError::limited(
                code,
                format!("{whose} the most {what} allowed at once ({cap}, [limits]); {instead}"),
                Duration::from_secs(1),
            )
        })
    }

    /// Counts a limit's refusal of `who` (see [`Admission`]).
    pub(crate) fn note_refusal(&self, who: &Principal, e: &ApiError) {
        if e.is_limited() {
            self.admission.note(&who.id, e.code, self.now());
        }
    }

    /// Writes the tallied refusals whose window is over (all of them with
    /// `all`, at shutdown) as `limit.refused` entries: one per principal
    /// per window, with counts by code. Returns how many were written.
    /// What cannot be written now is kept for the next try.
    pub async fn flush_refusals(&self, all: bool) -> Result<usize, ApiError> {
        let now = self.now();
        let due = self.admission.refusals.take_due(now.0, all);
        if due.is_empty() {
            return Ok(0);
        }
        let entries: Vec<_> = due
            .iter()
            .map(|(who, t)| {
                entry(
                    now,
                    "limit.refused",
                    "service:secondkey",
                    &[("principal", who)],
                    None,
                    json!({"count": t.count(), "by_code": t.by_code,
                           "first": rfc3339(Timestamp(t.first_ms)), "last": rfc3339(Timestamp(t.last_ms)),
                           "window_seconds": REFUSAL_WINDOW.as_secs()}),
                )
            })
            .collect();
        let n = entries.len();
        let r = self
            .store
            .transact(move |tx| {
                for e in entries {
                    tx.append(e)?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => Ok(n),
            Err(e) => {
                self.admission.refusals.restore(due);
                Err(e.into())
            }
        }
    }
}

/// What backs an action's `on_behalf_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Only the agent says so: shown as declared, changes nobody's rights.
    Declared,
    /// The requester's `[[principals]] may_act_for` names this human (or
    /// `user:*`).
    Delegation,
    /// The requester's token is an RFC 8693 delegation token for this
    /// human, verified against its issuer.
    Token,
}

impl Backing {
    pub fn is_backed(self) -> bool {
        self != Backing::Declared
    }

    /// How the log and the API name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::Declared => "declared",
            Backing::Delegation => "delegation",
            Backing::Token => "token",
        }
    }
}

/// What backs `who` acting for `on_behalf_of` (a human: the action parser
/// refuses agents and services there).
pub fn backing(
    config: &Config,
    who: &Principal,
    cred: &Credential,
    on_behalf_of: &PrincipalId,
) -> Backing {
    if cred.acting_for.as_ref() == Some(on_behalf_of) {
        return Backing::Token;
    }
    let delegated = config.delegations.get(who.id.as_str()).is_some_and(|list| {
        list.iter().any(|d| match d {
            ActsFor::AnyUser => true,
            ActsFor::User(u) => u == on_behalf_of,
        })
    });
    if delegated {
        Backing::Delegation
    } else {
        Backing::Declared
    }
}

/// The `on_behalf_of` of a decision's log entry: who, and what backs it.
pub(crate) fn on_behalf_of_record(obo: Option<&PrincipalId>, b: Backing) -> Option<Value> {
    obo.map(|o| json!({"principal": o.as_str(), "backing": b.as_str()}))
}
