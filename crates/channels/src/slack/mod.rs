//! Slack: requests posted with Block Kit, Approve/Deny clicks arriving as
//! signed interaction payloads.
//!
//! A click counts only if its `X-Slack-Signature` verifies with the app's
//! signing secret, its timestamp is within five minutes and it was not seen
//! before ([`verify`]); the Slack user is linked to a secondkey human
//! ([`crate::links`]); and [`Gateway::review`] accepts it — the very checks
//! of the REST API (self-review, eligibility, quorum, decided, expired).
//! Everything else is refused and changes nothing; the clicker is told why
//! in an ephemeral message only they see.

pub mod api;
pub mod blocks;
pub mod verify;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secondkey_core::request::ReviewDecision;
use secondkey_server::error::ApiError;
use secondkey_server::Gateway;
use serde::Deserialize;
use serde_json::Value;

use crate::links::{self, External};
use crate::Inner;

#[derive(Deserialize)]
struct Form {
    payload: String,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    team: Option<IdOnly>,
    #[serde(default)]
    channel: Option<IdOnly>,
    #[serde(default)]
    actions: Vec<SlackAction>,
}

#[derive(Debug, Deserialize)]
struct SlackUser {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    team_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Debug, Deserialize)]
struct SlackAction {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

/// Request ids are minted by the gateway as `req_` + hex.
pub(crate) fn valid_request_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with("req_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A button click on one of our messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub decision: ReviewDecision,
    pub request: String,
    pub external: External,
    /// Where to answer the clicker (ephemeral messages).
    pub channel: Option<String>,
    pub user: String,
}

/// Parses a (verified) interaction body: `payload=<JSON>`, form-encoded.
/// `Ok(None)` for interactions that are not an Approve/Deny click on a
/// request (they do nothing); `Err` for a body that is not a payload.
pub fn parse_click(body: &[u8]) -> Result<Option<Click>, String> {
    let it: Interaction = serde_urlencoded::from_bytes::<Form>(body)
        .map_err(|e| e.to_string())
        .and_then(|f| serde_json::from_str(&f.payload).map_err(|e| e.to_string()))?;
    if it.kind != "block_actions" {
        return Ok(None);
    }
    let Some((decision, request)) = it.actions.iter().find_map(|a| {
        let d = match a.action_id.as_str() {
            "approve" => ReviewDecision::Approve,
            "deny" => ReviewDecision::Deny,
            _ => return None,
        };
        a.value
            .as_deref()
            .filter(|v| valid_request_id(v))
            .map(|v| (d, v.to_string()))
    }) else {
        return Ok(None);
    };
    let team = it
        .user
        .team_id
        .clone()
        .or_else(|| it.team.as_ref().map(|t| t.id.clone()))
        .unwrap_or_else(|| "-".into());
    Ok(Some(Click {
        decision,
        request,
        external: External {
            platform: "slack".into(),
            id: format!("{team}/{}", it.user.id),
            display: it
                .user
                .username
                .clone()
                .or(it.user.name.clone())
                .unwrap_or_else(|| it.user.id.clone()),
        },
        channel: it.channel.as_ref().map(|c| c.id.clone()),
        user: it.user.id,
    }))
}

/// `POST /chat/slack/interactions`.
pub(crate) async fn interactions(
    gateway: Arc<Gateway>,
    inner: Arc<Inner>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(slack) = inner.slack.as_ref() else {
        return ApiError::not_found("Slack is not configured").into_response();
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = gateway.now().0.div_euclid(1000);
    if let Err(e) = slack.verifier.check(
        h("x-slack-request-timestamp"),
        h("x-slack-signature"),
        &body,
        now,
    ) {
        tracing::warn!(error = %e, "refused a Slack interaction");
        return ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string())
            .into_response();
    }
    let click = match parse_click(&body) {
        Ok(Some(c)) => c,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(e) => {
            return ApiError::bad_request(
                "invalid_payload",
                format!("not a Slack interaction payload: {e}"),
            )
            .into_response()
        }
    };
    let Click {
        decision,
        request: id,
        external,
        channel,
        user,
    } = click;
    let tell = |text: String| {
        if let Some(ch) = channel.clone() {
            let api = slack.api.clone();
            let user = user.clone();
            tokio::spawn(async move {
                if let Err(e) = api.post_ephemeral(&ch, &user, &text).await {
                    tracing::warn!(error = %e, "could not send an ephemeral Slack message");
                }
            });
        }
    };
    let linking = &inner.config.routing.linking;
    let who = match links::standing_of(&gateway, linking, &external).await {
        Ok(links::Standing::Counts(p)) => p,
        Ok(links::Standing::Unconfigured(linked)) => {
            tell(links::counts_for_nobody(
                &external,
                &linked,
                &gateway.request_url(&id),
            ));
            return StatusCode::OK.into_response();
        }
        Ok(links::Standing::Unlinked) if !links::may_link(linking, &external) => {
            tell(links::not_configured(&external));
            return StatusCode::OK.into_response();
        }
        Ok(links::Standing::Unlinked) => {
            match links::issue(&gateway, external, inner.config.routing.link_ttl).await {
                Ok(url) => tell(format!(
                    "Your click was not counted: link your Slack account to your secondkey identity first (once). \
                     Open {url} and sign in — the link works once and for {} minutes, and only you can see this message. Then click again.",
                    inner.config.routing.link_ttl.as_secs() / 60
                )),
                Err(e) => tell(format!("Your click was not counted, and no link could be made: {}", e.message)),
            }
            return StatusCode::OK.into_response();
        }
        Err(e) => {
            tell(format!("Your click was not counted: {}", e.message));
            return StatusCode::OK.into_response();
        }
    };
    let comment = Some(format!("via Slack ({user})"));
    match gateway.review(&who, &id, decision, comment).await {
        Ok(_) => {}
        Err(e) => {
            tell(format!(
                "Your click was not counted ({}): {}",
                e.code, e.message
            ));
        }
    }
    StatusCode::OK.into_response()
}

/// Posts the request to `channel`, with the full action as a file in the
/// thread when the statement is too long to show.
pub(crate) async fn post(
    slack: &crate::SlackSide,
    channel: &str,
    s: &crate::card::Summary,
) -> Result<api::Posted, crate::http::HttpError> {
    let blocks = blocks::message(s, slack.inline_limit);
    let posted = slack
        .api
        .post_message(channel, &s.headline(), &blocks, None)
        .await?;
    if blocks::needs_file(s, slack.inline_limit) {
        // The message is out either way; keep it (so it is updated later)
        // and say loudly if its attachment did not make it.
        if let Err(e) = slack
            .api
            .upload(
                &posted.channel,
                Some(&posted.ts),
                &format!("{}.json", s.id),
                &format!("Full action of {}", s.id),
                &s.action_json,
                &format!(
                    "The full action of request {} ({} bytes, as submitted).",
                    s.id,
                    s.action_json.len()
                ),
            )
            .await
        {
            tracing::error!(request = %s.id, error = %e, "the full action could not be attached in Slack; reviewers must open the request page");
        }
    }
    Ok(posted)
}

/// Redraws a posted message.
pub(crate) async fn update(
    slack: &crate::SlackSide,
    at: &api::Posted,
    s: &crate::card::Summary,
) -> Result<(), crate::http::HttpError> {
    slack
        .api
        .update(at, &s.headline(), &blocks::message(s, slack.inline_limit))
        .await
}

/// A reminder in the message's thread.
pub(crate) async fn remind(
    slack: &crate::SlackSide,
    at: &api::Posted,
    text: &str,
) -> Result<(), crate::http::HttpError> {
    let blocks: Vec<Value> = vec![];
    slack
        .api
        .post_message(&at.channel, text, &blocks, Some(&at.ts))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_parse_and_everything_else_does_nothing() {
        let payload = |v: serde_json::Value| {
            serde_urlencoded::to_string([("payload", v.to_string())]).unwrap()
        };
        let b = payload(
            serde_json::json!({"type": "block_actions", "user": {"id": "U1", "username": "bob", "team_id": "T1"},
            "channel": {"id": "C1"}, "actions": [{"action_id": "deny", "value": "req_ab12"}]}),
        );
        let c = parse_click(b.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (c.decision, c.request.as_str(), c.external.id.as_str()),
            (ReviewDecision::Deny, "req_ab12", "T1/U1")
        );
        assert_eq!(c.channel.as_deref(), Some("C1"));
        let other = payload(serde_json::json!({"type": "view_submission", "user": {"id": "U1"}}));
        assert_eq!(parse_click(other.as_bytes()), Ok(None));
        let bad_id = payload(
            serde_json::json!({"type": "block_actions", "user": {"id": "U1"},
            "actions": [{"action_id": "approve", "value": "../etc"}]}),
        );
        assert_eq!(parse_click(bad_id.as_bytes()), Ok(None));
        assert!(parse_click(b"payload=%7Bnot-json").is_err());
        assert!(parse_click(b"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_click(&body);
            let mut b = b"payload=".to_vec();
            b.extend_from_slice(&body);
            let _ = parse_click(&b);
        }
    }

    #[test]
    fn request_ids_are_checked_before_use() {
        assert!(valid_request_id("req_0123abcd"));
        assert!(!valid_request_id("act_0123"));
        assert!(!valid_request_id("req_../../x"));
        assert!(!valid_request_id(&format!("req_{}", "a".repeat(80))));
    }
}
