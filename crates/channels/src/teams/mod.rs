//! Microsoft Teams through the Bot Framework: requests go out as Adaptive
//! Cards with `Action.Execute` buttons; a click comes back as an `invoke`
//! activity named `adaptiveCard/action`.
//!
//! An activity is accepted only with a Bot Framework JWT that verifies:
//! RS256 with a key from the configured OpenID metadata, issuer
//! `https://api.botframework.com`, audience = our app id, not expired (5 min
//! skew), its `serviceurl` claim equal to the activity's `serviceUrl`, and
//! the key endorsing the activity's channel (a key that lists no
//! endorsements endorses nothing), and — with `[teams] tenant_id` — the
//! activity naming that tenant. The same (token, activity id)
//! pair is accepted once: the Bot Framework reuses a token across
//! activities for its lifetime, so the token alone cannot be single use,
//! but a captured request replayed as is is refused. The clicker's Entra ID
//! object id (`from.aadObjectId`) must be linked to a secondkey human, and
//! the click becomes a [`Gateway::review`] with the API's checks.

pub mod card;
pub mod connector;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secondkey_core::request::ReviewDecision;
use secondkey_server::error::ApiError;
use secondkey_server::Gateway;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::links::{self, External};
use crate::Inner;

/// Remembers (token, activity id) pairs until the token expires.
#[derive(Default)]
pub struct Replays(Mutex<HashMap<[u8; 32], i64>>);

impl Replays {
    /// True the first time; false for a replay.
    pub fn first(&self, token: &str, activity_id: &str, exp: i64, now: i64) -> bool {
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update([0]);
        h.update(activity_id.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, e| *e + 300 >= now);
        m.insert(key, exp).is_none()
    }
}

fn refuse(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Response {
    ApiError::new(status, code, msg).into_response()
}

/// An invoke response that shows `text` to the clicker.
fn message(text: String) -> Response {
    Json(json!({"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text}))
        .into_response()
}

/// `POST /chat/teams/messages`: the bot's messaging endpoint.
pub(crate) async fn messages(
    gateway: Arc<Gateway>,
    inner: Arc<Inner>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(teams) = inner.teams.as_ref() else {
        return ApiError::not_found("Teams is not configured").into_response();
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <Bot Framework token>`",
        );
    };
    let verified = match teams.jwt.verify(token).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "refused a Teams activity");
            return refuse(StatusCode::UNAUTHORIZED, "bad_token", e.to_string());
        }
    };
    let activity: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_activity",
                "the body is not an activity (a JSON object)",
            )
        }
    };
    let s = |p: &str| activity.pointer(p).and_then(Value::as_str);
    let service_url = s("/serviceUrl").unwrap_or_default();
    // The Bot Framework names the claim `serviceurl` (its SDKs'
    // `AuthenticationConstants.ServiceUrlClaim`); any spelling of it counts,
    // and a token that carries several must agree in each.
    let claimed: Vec<Option<&str>> = verified
        .claims
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("serviceurl"))
        .map(|(_, v)| v.as_str())
        .collect();
    let want = service_url.trim_end_matches('/');
    if claimed.is_empty()
        || claimed
            .iter()
            .any(|c| c.map(|c| c.trim_end_matches('/')) != Some(want))
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the token's serviceurl claim does not match the activity's serviceUrl",
        );
    }
    let channel_id = s("/channelId").unwrap_or_default();
    // The Bot Framework lists on each key the channels it may sign for; a
    // key that lists none signs for none (its own SDKs refuse it too).
    let endorsed = verified
        .key
        .get("endorsements")
        .and_then(Value::as_array)
        .is_some_and(|e| e.iter().any(|x| x.as_str() == Some(channel_id)));
    if !endorsed {
        return refuse(
            StatusCode::FORBIDDEN,
            "not_endorsed",
            format!("the signing key does not endorse channel {channel_id:?}"),
        );
    }
    let now = gateway.now().0.div_euclid(1000);
    let exp = verified
        .claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or(now);
    let activity_id = s("/id").unwrap_or_default();
    if !teams.replays.first(token, activity_id, exp, now) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "replayed",
            "this activity was already received with this token: replay refused",
        );
    }
    let tenant = s("/conversation/tenantId")
        .or(s("/channelData/tenant/id"))
        .unwrap_or("-");
    // A bot installed in another organization is not ours to hear from:
    // every activity of another tenant is refused, not only clicks.
    if let Some(ours) = &teams.tenant {
        if tenant != ours {
            return refuse(
                StatusCode::FORBIDDEN,
                "wrong_tenant",
                format!(
                    "this gateway serves Teams tenant {ours} only; the activity is from {tenant}"
                ),
            );
        }
    }
    if s("/type") != Some("invoke") || s("/name") != Some("adaptiveCard/action") {
        // Messages, conversation updates, …: acknowledged, nothing happens.
        return StatusCode::OK.into_response();
    }
    let decision = match s("/value/action/verb") {
        Some("approve") => ReviewDecision::Approve,
        Some("deny") => ReviewDecision::Deny,
        other => return message(format!("Unknown action {other:?}; nothing was recorded.")),
    };
    let Some(id) = s("/value/action/data/request").filter(|i| crate::slack::valid_request_id(i))
    else {
        return message("This card names no request; nothing was recorded.".into());
    };
    let Some(aad) = s("/from/aadObjectId") else {
        return message(
            "Your Teams account has no Entra ID object id; only organization accounts can review."
                .into(),
        );
    };
    let external = External {
        platform: "teams".into(),
        id: format!("{tenant}/{aad}"),
        display: s("/from/name").unwrap_or(aad).to_string(),
    };
    let linking = &inner.config.routing.linking;
    let who = match links::standing_of(&gateway, linking, &external).await {
        Ok(links::Standing::Counts(p)) => p,
        Ok(links::Standing::Unconfigured(linked)) => {
            return message(links::counts_for_nobody(
                &external,
                &linked,
                &gateway.request_url(id),
            ))
        }
        Ok(links::Standing::Unlinked) if !links::may_link(linking, &external) => {
            return message(links::not_configured(&external))
        }
        Ok(links::Standing::Unlinked) => {
            return match links::issue(&gateway, external, inner.config.routing.link_ttl).await {
                Ok(url) => message(format!(
                    "Your click was not counted: link your Teams account to your secondkey identity first (once). \
                     Open {url} and sign in — the link works once and for {} minutes. Then click again.",
                    inner.config.routing.link_ttl.as_secs() / 60
                )),
                Err(e) => message(format!("Your click was not counted, and no link could be made: {}", e.message)),
            }
        }
        Err(e) => return message(format!("Your click was not counted: {}", e.message)),
    };
    match gateway
        .review(&who, id, decision, Some("via Microsoft Teams".into()))
        .await
    {
        Ok(req) => {
            let summary = crate::summary(&gateway, &req).await;
            Json(json!({"statusCode": 200, "type": card::CONTENT_TYPE, "value": card::card(&summary, None)}))
                .into_response()
        }
        Err(e) => message(format!(
            "Your click was not counted ({}): {}",
            e.code, e.message
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_accepted_once() {
        let r = Replays::default();
        assert!(r.first("tok", "a1", 1000, 900));
        assert!(!r.first("tok", "a1", 1000, 901));
        assert!(r.first("tok", "a2", 1000, 901));
        assert!(r.first("other", "a1", 1000, 901));
    }
}
