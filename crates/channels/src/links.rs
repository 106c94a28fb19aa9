//! Linking a chat account (a Slack user, a Teams/Entra ID object id) to a
//! secondkey identity, once, through the web.
//!
//! A click from an unlinked account never counts. Instead the clicker gets a
//! single-use link code (128 random bits, valid `routing.link_ttl`, 10
//! minutes by default) as a URL only they see. Opening it (`GET`) shows what
//! will be linked and changes nothing — link unfurlers and prefetchers
//! follow URLs. Confirming it (`POST`) as a signed-in human binds the chat
//! account to that human, uses the code up, and records `identity.linked`
//! in the audit log in the same transaction.
//!
//! **Accounts bound by the configuration.** `[routing.accounts]` names
//! chat accounts and the human each one is; those win over any link made
//! here, and cannot be linked to anyone else. With `[routing] linking =
//! "configured"` only they count: no link codes are issued and none is
//! accepted, so nobody can be talked into confirming someone else's
//! account (a link code proves only the consent of whoever confirms it).
//!
//! **Who confirms.** [`complete`] takes the principal that confirms. The
//! HTTP handler in `lib.rs` obtains it from the web session (signed in
//! through OIDC; the form is CSRF-checked) or, for API use without a cookie
//! (so no CSRF exposure), from a human's bearer token.

use std::time::Duration;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_server::error::ApiError;
use secondkey_server::gateway::{rfc3339, Gateway};
use secondkey_server::web::revocation::ended_before;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Linking;
use crate::records;

/// The chat account a link is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct External {
    /// `slack` or `teams`.
    pub platform: String,
    /// Slack: `TEAM/USER`; Teams: `TENANT/AAD-OBJECT-ID`.
    pub id: String,
    /// A name to show (`@bob`), for humans only.
    pub display: String,
}

impl External {
    fn key(&self) -> String {
        format!("{}:{}", self.platform, self.id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    principal: String,
    linked_at: i64,
}

impl Link {
    /// The principal linked, read as an id (folded to lowercase), so a link
    /// stored under another spelling still names the one principal.
    fn principal_id(&self) -> Option<PrincipalId> {
        PrincipalId::parse(&self.principal).ok()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Code {
    external: External,
    expires_at: i64,
    used: bool,
}

fn code_key(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

fn conflict(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, msg)
}

/// Whom a chat account's clicks count for.
pub enum Standing {
    /// This principal, as configured now (its groups are today's, not
    /// those at link time).
    Counts(Principal),
    /// Linked through the web to a person who signs in but is no
    /// configured principal: clicks count for nobody, and linking again
    /// would change nothing (they review in the browser).
    Unconfigured(PrincipalId),
    /// Nobody: not linked, a link voided since, or bound by the
    /// configuration to a principal no longer configured.
    Unlinked,
}

/// How `external` stands: the principal `[routing.accounts]` binds it
/// to, else (self-service linking only) the one it was linked to through
/// the web.
pub async fn standing_of(
    gateway: &Gateway,
    linking: &Linking,
    external: &External,
) -> Result<Standing, ApiError> {
    let key = external.key();
    if let Some(id) = linking.accounts.get(&key) {
        return Ok(match gateway.config.principals.get(id.as_str()) {
            Some(p) => Standing::Counts(p.clone()),
            None => Standing::Unlinked,
        });
    }
    if !linking.self_service {
        return Ok(Standing::Unlinked);
    }
    let link: Option<Link> = records::read_async(&gateway.store, "link", key).await?;
    let Some((link, id)) = link.and_then(|l| l.principal_id().map(|id| (l, id))) else {
        return Ok(Standing::Unlinked);
    };
    // Linked through a web sign-in that `secondkey sessions revoke` has
    // since voided: it counts for nobody until linked again.
    if let Some(before) = ended_before(gateway, id.as_str()).await? {
        if link.linked_at <= before {
            return Ok(Standing::Unlinked);
        }
    }
    Ok(match gateway.config.principals.get(id.as_str()) {
        Some(p) => Standing::Counts(p.clone()),
        None => Standing::Unconfigured(id),
    })
}

/// What a click of an account linked to `id`, who is no configured
/// principal, is told: it counts for nobody; the request's page is
/// where `id` reviews.
pub fn counts_for_nobody(external: &External, id: &PrincipalId, request_url: &str) -> String {
    format!(
        "Your click was not counted: this {p} account is linked to {id}, who is not a configured principal of this gateway, \
         so clicks here count for nobody (linking again changes nothing). Review in the browser instead: {request_url}",
        p = external.platform
    )
}

/// Whether a click from `external`, which counts for nobody, may be
/// answered with a link code: only under self-service linking, and never
/// for an account the configuration binds (to a principal no longer
/// configured).
pub fn may_link(linking: &Linking, external: &External) -> bool {
    linking.self_service && !linking.accounts.contains_key(&external.key())
}

/// What a click that counts for nobody is told when no link code may be
/// issued for it.
pub fn not_configured(external: &External) -> String {
    format!(
        "Your click was not counted: this {p} account ({k}) is not one secondkey knows as a reviewer. \
         This gateway binds chat accounts in its configuration: an administrator adds \"{k}\" = \"user:…\" to [routing.accounts].",
        p = external.platform,
        k = external.key()
    )
}

/// Refuses every link code on a gateway whose chat accounts are bound only
/// by its configuration.
pub fn web_linking(linking: &Linking) -> Result<(), ApiError> {
    if linking.self_service {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "linking_disabled",
        "this gateway binds chat accounts in its configuration ([routing.accounts]); links made through the web are off",
    ))
}

/// Refuses to link an account the configuration binds.
fn linkable(linking: &Linking, external: &External) -> Result<(), ApiError> {
    match linking.accounts.get(&external.key()) {
        Some(who) => Err(conflict(
            "already_linked",
            format!(
                "this {} account is bound to {who} by the gateway's configuration ([routing.accounts])",
                external.platform
            ),
        )),
        None => Ok(()),
    }
}

/// Mints a single-use link code for `external`; returns the URL to show.
pub async fn issue(
    gateway: &Gateway,
    external: External,
    ttl: Duration,
) -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ApiError::unavailable(format!("no randomness available: {e}")))?;
    let code = B64URL.encode(raw);
    let rec = Code {
        external,
        expires_at: gateway.now().plus(ttl).0,
        used: false,
    };
    let key = code_key(&code);
    gateway
        .store
        .transact(move |tx| records::put(tx, "linkcode", &key, &rec))
        .await?;
    Ok(format!("{}/chat/link/{code}", gateway.config.public_url))
}

/// What a code would link, for the confirmation page. Reads only.
pub async fn describe(
    gateway: &Gateway,
    linking: &Linking,
    code: &str,
) -> Result<External, ApiError> {
    web_linking(linking)?;
    let rec: Option<Code> = records::read_async(&gateway.store, "linkcode", code_key(code)).await?;
    match rec {
        Some(c) if !c.used && gateway.now().0 < c.expires_at => {
            linkable(linking, &c.external)?;
            Ok(c.external)
        }
        Some(c) if c.used => Err(conflict(
            "link_code_used",
            "this link code was already used; click a button in the chat again for a new one",
        )),
        Some(_) => Err(conflict(
            "link_code_expired",
            "this link code has expired; click a button in the chat again for a new one",
        )),
        None => Err(ApiError::not_found("no such link code")),
    }
}

/// Binds the code's chat account to `who` (a human), uses the code up and
/// logs `identity.linked`, all in one transaction. Refuses agents and
/// services, used or expired codes, an account already linked to someone
/// else or bound by the configuration, and every code when linking is
/// `configured`.
pub async fn complete(
    gateway: &Gateway,
    linking: &Linking,
    code: &str,
    who: &Principal,
) -> Result<External, ApiError> {
    web_linking(linking)?;
    if !who.is_human() {
        return Err(ApiError::forbidden(
            "not_human",
            "only a human (user:…) can link a chat account; agents and services never review",
        ));
    }
    let now = gateway.now();
    let key = code_key(code);
    let principal = who.id.to_string();
    let linking = linking.clone();
    let time = rfc3339(now);
    let linked = gateway
        .store
        .transact(move |tx| {
            let mut c: Code = records::get(tx, "linkcode", &key)?
                .ok_or_else(|| ApiError::not_found("no such link code"))?;
            if c.used {
                return Err(conflict("link_code_used", "this link code was already used").into());
            }
            if now.0 >= c.expires_at {
                return Err(conflict("link_code_expired", "this link code has expired; click a button in the chat again for a new one").into());
            }
            linkable(&linking, &c.external)?;
            let lkey = c.external.key();
            if let Some(l) = records::get::<Link>(tx, "link", &lkey)? {
                if l.principal != principal {
                    return Err(conflict(
                        "already_linked",
                        format!("this {} account is already linked to {}, who can unlink it (DELETE /v1/chat/links/{})", c.external.platform, l.principal, lkey),
                    )
                    .into());
                }
            }
            records::put(tx, "link", &lkey, &Link { principal: principal.clone(), linked_at: now.0 })?;
            c.used = true;
            records::put(tx, "linkcode", &key, &c)?;
            let mut e = secondkey_store::new_entry(
                &time,
                "identity.linked",
                Some(&principal),
                json!({"platform": c.external.platform, "external_id": c.external.id,
                       "display": c.external.display, "principal": principal}),
            );
            e.subjects.insert("principal".into(), principal.clone());
            tx.append(e)?;
            Ok(c.external)
        })
        .await?;
    Ok(linked)
}

/// A chat account linked to a principal, as `GET /v1/chat/links` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Linked {
    /// `<platform>:<external id>`: what `DELETE /v1/chat/links/{account}` takes.
    pub account: String,
    pub platform: String,
    pub external_id: String,
    /// `web` (linked through a link code) or `configured` (`[routing.accounts]`).
    pub source: &'static str,
    /// Whether its clicks count as this principal's reviews: a web link is
    /// ignored when `linking = "configured"` or when the configuration binds
    /// the account.
    pub counts: bool,
    /// When it was linked through the web.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_at: Option<String>,
}

/// The chat accounts bound to `who`: by the configuration, then through
/// the web.
pub async fn linked_to(
    gateway: &Gateway,
    linking: &Linking,
    who: &PrincipalId,
) -> Result<Vec<Linked>, ApiError> {
    let ended = ended_before(gateway, who.as_str()).await?;
    let store = gateway.store.clone();
    let all = tokio::task::spawn_blocking(move || records::list::<Link>(&store, "link"))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    let configured = linking
        .accounts
        .iter()
        .filter(|(_, p)| *p == who)
        .filter_map(|(account, _)| {
            let (platform, id) = account.split_once(':')?;
            Some(Linked {
                account: account.clone(),
                platform: platform.to_string(),
                external_id: id.to_string(),
                source: "configured",
                counts: true,
                linked_at: None,
            })
        });
    let web = all
        .into_iter()
        .filter(|(_, l)| l.principal_id().as_ref() == Some(who))
        .filter_map(|(account, l)| {
            let (platform, id) = account.split_once(':')?;
            Some(Linked {
                platform: platform.to_string(),
                external_id: id.to_string(),
                source: "web",
                counts: linking.self_service
                    && !linking.accounts.contains_key(&account)
                    && ended.is_none_or(|before| l.linked_at > before),
                linked_at: Some(rfc3339(secondkey_core::time::Timestamp(l.linked_at))),
                account,
            })
        });
    Ok(configured.chain(web).collect())
}

/// Unlinks `account` (`<platform>:<external id>`) if it is linked to
/// `who`: its clicks count for nobody again until someone links it anew.
/// Recorded as `identity.unlinked`. Someone else's link, or none, is
/// `404`: which accounts others linked is not told. An account the
/// configuration binds to `who` (and no web link of it) is `409
/// configured_binding`: it is changed only in the configuration.
pub async fn unlink(
    gateway: &Gateway,
    linking: &Linking,
    who: &PrincipalId,
    account: &str,
) -> Result<(), ApiError> {
    let Some((platform, id)) = account.split_once(':') else {
        return Err(ApiError::bad_request(
            "invalid_account",
            "the account is <platform>:<external id>, e.g. slack:T0123/U0456",
        ));
    };
    let bound = linking.accounts.get(account) == Some(who);
    let (platform, id, key) = (platform.to_string(), id.to_string(), account.to_string());
    let (owner, principal) = (who.clone(), who.to_string());
    let time = rfc3339(gateway.now());
    let missing = format!("no chat account {account} is linked to you");
    gateway
        .store
        .transact(move |tx| {
            let mine = records::get::<Link>(tx, "link", &key)?
                .is_some_and(|l| l.principal_id().as_ref() == Some(&owner));
            if !mine && bound {
                return Err(conflict(
                    "configured_binding",
                    "this account is bound to you by the gateway's configuration ([routing.accounts]): only an operator can unbind it, there",
                )
                .into());
            }
            if !mine {
                return Err(ApiError::not_found(missing).into());
            }
            records::delete(tx, "link", &key)?;
            let mut e = secondkey_store::new_entry(
                &time,
                "identity.unlinked",
                Some(&principal),
                json!({"platform": platform, "external_id": id, "principal": principal}),
            );
            e.subjects.insert("principal".into(), principal.clone());
            tx.append(e)?;
            Ok(())
        })
        .await?;
    Ok(())
}
