//! The few Slack Web API methods we call, in Slack's documented format:
//! `POST {api_base}/{method}` with `Authorization: Bearer xoxb-…`, JSON
//! bodies (form-encoded for `files.getUploadURLExternal`), and answers of
//! the form `{"ok": true, …}` or `{"ok": false, "error": "…"}`.

use serde_json::{json, Value};

use crate::http::{Body, Client, HttpError};

/// A Slack Web API client for one bot token.
#[derive(Clone)]
pub struct SlackApi {
    base: String,
    token: String,
    http: Client,
}

/// Where a posted message lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

impl SlackApi {
    pub fn new(base: &str, token: &str, http: Client) -> Self {
        SlackApi {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    async fn call(&self, method: &str, body: Body) -> Result<Value, HttpError> {
        let url = format!("{}/{method}", self.base);
        let v = self
            .http
            .call("POST", url, Some(self.token.clone()), body)
            .await?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            let err = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no `ok` in the answer");
            Err(HttpError::Api(format!("Slack {method} failed: {err}")))
        }
    }

    /// `chat.postMessage`.
    pub async fn post_message(
        &self,
        channel: &str,
        text: &str,
        blocks: &[Value],
        thread_ts: Option<&str>,
    ) -> Result<Posted, HttpError> {
        let mut body = json!({"channel": channel, "text": text,
                              "unfurl_links": false, "unfurl_media": false});
        if !blocks.is_empty() {
            body["blocks"] = json!(blocks);
        }
        if let Some(t) = thread_ts {
            body["thread_ts"] = json!(t);
        }
        let v = self.call("chat.postMessage", Body::Json(body)).await?;
        let ts = v.get("ts").and_then(Value::as_str);
        let ch = v.get("channel").and_then(Value::as_str).unwrap_or(channel);
        match ts {
            Some(ts) => Ok(Posted {
                channel: ch.to_string(),
                ts: ts.to_string(),
            }),
            None => Err(HttpError::Api(
                "chat.postMessage answered without ts".into(),
            )),
        }
    }

    /// `chat.update`.
    pub async fn update(&self, at: &Posted, text: &str, blocks: &[Value]) -> Result<(), HttpError> {
        self.call(
            "chat.update",
            Body::Json(json!({"channel": at.channel, "ts": at.ts, "text": text, "blocks": blocks})),
        )
        .await
        .map(|_| ())
    }

    /// `chat.postEphemeral`: only `user` sees it.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), HttpError> {
        self.call(
            "chat.postEphemeral",
            Body::Json(json!({"channel": channel, "user": user, "text": text})),
        )
        .await
        .map(|_| ())
    }

    /// Uploads `content` as a file shared in `channel` (in the thread of
    /// `thread_ts`): `files.getUploadURLExternal`, a POST of the bytes to
    /// the URL it returns, then `files.completeUploadExternal`.
    pub async fn upload(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        filename: &str,
        title: &str,
        content: &str,
        comment: &str,
    ) -> Result<String, HttpError> {
        let v = self
            .call(
                "files.getUploadURLExternal",
                Body::Form(vec![
                    ("filename".into(), filename.into()),
                    ("length".into(), content.len().to_string()),
                    ("snippet_type".into(), "javascript".into()),
                ]),
            )
            .await?;
        let (Some(url), Some(id)) = (
            v.get("upload_url").and_then(Value::as_str),
            v.get("file_id").and_then(Value::as_str),
        ) else {
            return Err(HttpError::Api(
                "files.getUploadURLExternal answered without upload_url or file_id".into(),
            ));
        };
        let id = id.to_string();
        self.http
            .call(
                "POST",
                url.to_string(),
                None,
                Body::Bytes(content.as_bytes().to_vec()),
            )
            .await
            .or_else(|e| match e {
                // The upload endpoint answers plain text ("OK - 123").
                HttpError::NotJson { .. } => Ok(Value::Null),
                e => Err(e),
            })?;
        let mut body = json!({"files": [{"id": id, "title": title}], "channel_id": channel,
                              "initial_comment": comment});
        if let Some(t) = thread_ts {
            body["thread_ts"] = json!(t);
        }
        self.call("files.completeUploadExternal", Body::Json(body))
            .await?;
        Ok(id)
    }
}
