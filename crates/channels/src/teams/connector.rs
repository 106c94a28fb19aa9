//! The Bot Connector REST API, for proactive messages and card updates:
//! `POST {serviceUrl}/v3/conversations/{id}/activities` and
//! `PUT {serviceUrl}/v3/conversations/{id}/activities/{activityId}`, with
//! the bot's own token from the OAuth client-credentials flow
//! (`scope=https://api.botframework.com/.default`), cached until shortly
//! before it expires.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{Body, Client, HttpError};

/// A posted activity, to update later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PostedActivity {
    pub service_url: String,
    pub conversation: String,
    pub activity_id: String,
}

/// A Bot Connector client for one bot.
pub struct Connector {
    app_id: String,
    app_password: String,
    token_url: String,
    http: Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// Sent as `channelData.tenant.id` on every activity (`[teams] tenant_id`).
    tenant: Option<String>,
}

/// Percent-encodes a path segment (conversation ids hold `:`, `@`, `;`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Connector {
    pub fn new(app_id: &str, app_password: &str, token_url: &str, http: Client) -> Self {
        Connector {
            app_id: app_id.to_string(),
            app_password: app_password.to_string(),
            token_url: token_url.to_string(),
            http,
            token: tokio::sync::Mutex::new(None),
            tenant: None,
        }
    }

    /// Names `tenant` on every activity sent (Teams wants the tenant on
    /// proactive messages).
    pub fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    fn stamp(&self, activity: &mut Value) {
        if let (Some(t), Some(a)) = (&self.tenant, activity.as_object_mut()) {
            let data = a
                .entry("channelData")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(d) = data.as_object_mut() {
                d.insert("tenant".into(), serde_json::json!({ "id": t }));
            }
        }
    }

    async fn token(&self) -> Result<String, HttpError> {
        let mut t = self.token.lock().await;
        if let Some((tok, until)) = t.as_ref() {
            if Instant::now() < *until {
                return Ok(tok.clone());
            }
        }
        let v = self
            .http
            .call(
                "POST",
                self.token_url.clone(),
                None,
                Body::Form(vec![
                    ("grant_type".into(), "client_credentials".into()),
                    ("client_id".into(), self.app_id.clone()),
                    ("client_secret".into(), self.app_password.clone()),
                    (
                        "scope".into(),
                        "https://api.botframework.com/.default".into(),
                    ),
                ]),
            )
            .await?;
        let tok = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HttpError::Api("the token endpoint answered without access_token".into())
            })?
            .to_string();
        let secs = v.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(secs.saturating_sub(300).max(30));
        *t = Some((tok.clone(), until));
        Ok(tok)
    }

    fn url(service_url: &str, conversation: &str, activity: Option<&str>) -> String {
        let base = format!(
            "{}/v3/conversations/{}/activities",
            service_url.trim_end_matches('/'),
            segment(conversation)
        );
        match activity {
            Some(a) => format!("{base}/{}", segment(a)),
            None => base,
        }
    }

    /// Sends `activity` to a conversation; returns where it landed.
    pub async fn send(
        &self,
        service_url: &str,
        conversation: &str,
        mut activity: Value,
    ) -> Result<PostedActivity, HttpError> {
        self.stamp(&mut activity);
        let tok = self.token().await?;
        let v = self
            .http
            .call(
                "POST",
                Self::url(service_url, conversation, None),
                Some(tok),
                Body::Json(activity),
            )
            .await?;
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| {
            HttpError::Api("the Bot Connector answered without an activity id".into())
        })?;
        Ok(PostedActivity {
            service_url: service_url.to_string(),
            conversation: conversation.to_string(),
            activity_id: id.to_string(),
        })
    }

    /// Replaces a posted activity (the card) with `activity`.
    pub async fn update(&self, at: &PostedActivity, mut activity: Value) -> Result<(), HttpError> {
        let tok = self.token().await?;
        activity["id"] = Value::String(at.activity_id.clone());
        self.stamp(&mut activity);
        self.http
            .call(
                "PUT",
                Self::url(&at.service_url, &at.conversation, Some(&at.activity_id)),
                Some(tok),
                Body::Json(activity),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_encoded_in_paths() {
        assert_eq!(
            Connector::url("https://smba.example/teams/", "19:abc@thread.tacv2;messageid=1", Some("1:x")),
            "https://smba.example/teams/v3/conversations/19%3Aabc%40thread.tacv2%3Bmessageid%3D1/activities/1%3Ax"
        );
    }
}
