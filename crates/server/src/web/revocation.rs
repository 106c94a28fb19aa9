//! Ending every web session of one person at once: someone left, or a
//! laptop was stolen. Signing out ends one session and a new session key
//! ends everyone's; this ends all of one principal's, and only theirs.
//!
//! Sessions are cookies the gateway keeps no list of, so a revocation is an
//! instant: "the sessions of `user:alice` issued at or before T are void".
//! It is one record in the store (namespace [`ENDED_NS`], key the principal
//! id, value T in Unix milliseconds), committed in one transaction with the
//! `web.sessions.revoked` log entry that says who ended whose sessions and
//! when. A later sign-in of the same person is issued after T and works.
//!
//! Checking it costs no extra IO on an embedded store: the gateway is the
//! store's only writer, so its memory ([`super::session::Sessions`], loaded
//! at start and updated here) is the whole truth. On a store several
//! replicas share, every check reads the record through (beside the
//! sign-out it already reads, in [`super::session::session_holds`]), so a
//! revocation on one replica holds on all of them from the moment it
//! commits; it is never stale. Both go through [`ended_before`]. API calls
//! with bearer tokens read nothing.
//!
//! T is the revoking replica's clock; a session is compared by the instant
//! its own replica issued it, so replicas' clocks must agree (as expiry
//! and leases already need).

use secondkey_core::principal::{Principal, PrincipalError, PrincipalId, PrincipalKind};
use secondkey_core::time::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::session::ENDED_NS;
use crate::error::ApiError;
use crate::gateway::{entry, rfc3339, Gateway};

/// The log entry's event.
pub const EVENT: &str = "web.sessions.revoked";

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// Whose sessions ended (the principal id, in its one spelling).
    pub user: String,
    /// Sessions of `user` issued at or before this instant (RFC 3339, UTC)
    /// are signed out; a sign-in after it works.
    pub signed_in_before: String,
    /// Who ended them.
    pub revoked_by: String,
    /// Whether `user` is a configured `[[principals]]` entry (an id the
    /// identity provider alone vouches for is valid too; `false` may mean
    /// a typo).
    pub configured: bool,
    /// The index of the `web.sessions.revoked` entry in the audit log.
    pub log_index: u64,
}

/// The person `raw` names, in its one spelling; anything but a `user:` id
/// is refused, with what to send instead.
pub fn parse_user(raw: &str) -> Result<PrincipalId, ApiError> {
    let id = PrincipalId::parse(raw.trim()).map_err(|e| {
        let why = match e {
            PrincipalError::BadKind(_) => {
                format!("{raw:?} is not a person's id: write user:NAME, e.g. user:alice")
            }
            other => other.to_string(),
        };
        ApiError::bad_request("invalid_user", why)
    })?;
    if id.kind() != PrincipalKind::User {
        return Err(ApiError::bad_request(
            "invalid_user",
            format!(
                "{id} has no web sessions: only people (user:NAME) sign in to the web UI; \
                 agents and services use tokens — remove or rotate theirs in [[principals]]"
            ),
        ));
    }
    Ok(id)
}

/// Whether `who` may end `user`'s sessions: anyone their own, and people or
/// services in `[web] session_admins` anyone's. Agents never end another's.
pub fn may_revoke(who: &Principal, user: &PrincipalId, admins: &[String]) -> Result<(), ApiError> {
    if &who.id == user {
        return Ok(());
    }
    let admin =
        who.id.kind() != PrincipalKind::Agent && admins.iter().any(|g| who.groups.contains(g));
    if admin {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "not_session_admin",
        if admins.is_empty() {
            "ending another person's web sessions needs a group in [web] session_admins, and none is configured".to_string()
        } else {
            format!(
                "ending another person's web sessions needs a person or service in one of: {} ([web] session_admins)",
                admins.join(", ")
            )
        },
    ))
}

/// Ends every web session of `user` issued until now, for `who`: checks
/// the id and the right, then records the instant and the log entry in one
/// transaction (nothing changes unless both are durable) and voids the
/// sessions in this replica's memory, even if the caller is dropped in
/// between ([`Gateway::commit_then`]).
pub async fn revoke_all(g: &Gateway, who: &Principal, user: &str) -> Result<Revoked, ApiError> {
    let user = parse_user(user)?;
    may_revoke(who, &user, &g.config.web.session_admins)?;
    let now = g.now();
    let configured = g.config.principals.contains_key(user.as_str());
    let (key, actor) = (user.to_string(), who.id.to_string());
    let (sessions, ended) = (g.web.sessions.clone(), user.to_string());
    // Recorded, then voided in memory, as one step a dropped caller cannot
    // separate: the store commits the job once it is sent, and memory is
    // the whole truth on an embedded store.
    let (index, before) = g
        .commit_then(
            move |tx| {
                // Never earlier than a revocation already recorded (another
                // replica's clock may be ahead).
                let before = tx
                    .get_record(ENDED_NS, &key)?
                    .and_then(|v| v.parse::<i64>().ok())
                    .map_or(now.0, |old| old.max(now.0));
                let index = tx.append(entry(
                    now,
                    EVENT,
                    &actor,
                    &[("principal", &key)],
                    None,
                    json!({
                        "user": key,
                        "signed_in_before": rfc3339(Timestamp(before)),
                        "configured": configured,
                    }),
                ))?;
                tx.put_record(ENDED_NS, &key, &before.to_string())?;
                Ok((index, before))
            },
            move |&(_, before): &(u64, i64)| sessions.end_all_of(&ended, before),
        )
        .await?;
    tracing::info!(user = %user, by = %who.id, "ended every web session of a person");
    Ok(Revoked {
        user: user.to_string(),
        signed_in_before: rfc3339(Timestamp(before)),
        revoked_by: who.id.to_string(),
        configured,
        log_index: index,
    })
}

/// The instant (Unix milliseconds) at or before which `user`'s web sign-ins
/// are void, if their sessions were ever all ended. The one lookup behind
/// every check of it — a web request's or an open event stream's session
/// ([`super::session::session_holds`]), and a chat account linked through
/// such a sign-in (`crates/channels`, `links.rs`: a stolen session must
/// not leave a chat account behind that still approves) — so they never
/// disagree. An embedded store has one writer, this gateway, whose memory
/// (loaded at start) is the whole truth: a map lookup. A shared store is
/// read through, since another replica may have recorded it, and memory
/// learns what it read.
pub async fn ended_before(g: &Gateway, user: &str) -> Result<Option<i64>, ApiError> {
    let sessions = &g.web.sessions;
    if !g.store.is_shared() {
        return Ok(sessions.ended_before(user));
    }
    let (store, key) = (g.store.clone(), user.to_string());
    let raw = tokio::task::spawn_blocking(move || store.get_record(ENDED_NS, &key))
        .await
        .map_err(|e| ApiError::unavailable(format!("reading ended sessions: {e}")))??;
    if let Some(v) = raw {
        let before = v.parse::<i64>().map_err(|_| {
            ApiError::internal(format!("unreadable record of ended web sessions of {user}"))
        })?;
        sessions.end_all_of(user, before);
    }
    // Never earlier than what this replica already knows.
    Ok(sessions.ended_before(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str, groups: &[&str]) -> Principal {
        Principal {
            id: id.parse().unwrap(),
            owner: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            subjects: Default::default(),
        }
    }

    #[test]
    fn only_user_ids_are_people_with_sessions() {
        assert_eq!(parse_user("User:Alice").unwrap().as_str(), "user:alice");
        assert_eq!(parse_user(" user:bob ").unwrap().as_str(), "user:bob");
        for bad in [
            "",
            "alice",
            "user:",
            "user:al ice",
            "user:ålice",
            "group:security",
            "agent:report-bot",
            "service:ci",
        ] {
            let e = parse_user(bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "invalid_user"), "{bad}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn admins_end_anyone_s_sessions_others_only_their_own() {
        let admins = vec!["security".to_string()];
        let alice: PrincipalId = "user:alice".parse().unwrap();
        for (id, groups, ok) in [
            ("user:alice", &[][..], true),
            ("user:sam", &["security"][..], true),
            ("service:offboarding", &["security"][..], true),
            ("agent:helper", &["security"][..], false),
            ("user:bob", &["dba"][..], false),
        ] {
            let r = may_revoke(&who(id, groups), &alice, &admins);
            assert_eq!(r.is_ok(), ok, "{id}");
            if let Err(e) = r {
                assert_eq!((e.status.as_u16(), e.code), (403, "not_session_admin"));
                assert!(e.message.contains("security"), "{}", e.message);
            }
        }
        assert!(may_revoke(&who("user:sam", &["security"]), &alice, &[]).is_err());
        assert!(may_revoke(&who("user:alice", &[]), &alice, &[]).is_ok());
    }
}
