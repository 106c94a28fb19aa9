//! Outbound HTTP for the channel APIs: ureq (already in the tree) on a
//! blocking thread, every call bounded by a timeout, no redirects.

use std::time::Duration;

use serde_json::Value;

/// Why a call to a channel API failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered something that is not JSON: {body}")]
    NotJson { url: String, body: String },
    #[error("{0}")]
    Api(String),
}

/// What to send.
pub enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
    Bytes(Vec<u8>),
    Empty,
}

/// A shared agent with sane timeouts.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(Duration::from_secs(10))
    }
}

impl Client {
    pub fn new(timeout: Duration) -> Self {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .redirects(0)
                .user_agent(concat!("secondkey-channels/", env!("CARGO_PKG_VERSION")))
                .build(),
        }
    }

    /// Sends and parses a JSON answer (an empty body is `null`).
    pub async fn call(
        &self,
        method: &'static str,
        url: String,
        bearer: Option<String>,
        body: Body,
    ) -> Result<Value, HttpError> {
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = agent.request(method, &url);
            if let Some(b) = &bearer {
                r = r.set("Authorization", &format!("Bearer {b}"));
            }
            let res = match body {
                Body::Json(v) => r
                    .set("Content-Type", "application/json; charset=utf-8")
                    .send_string(&v.to_string()),
                Body::Form(f) => {
                    let pairs: Vec<(&str, &str)> =
                        f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    r.send_form(&pairs)
                }
                Body::Bytes(b) => r
                    .set("Content-Type", "application/octet-stream")
                    .send_bytes(&b),
                Body::Empty => r.call(),
            };
            let excerpt = |resp: ureq::Response| -> String {
                resp.into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect()
            };
            match res {
                Ok(resp) => {
                    let text = resp.into_string().map_err(|e| HttpError::Transport {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
                    if text.trim().is_empty() {
                        return Ok(Value::Null);
                    }
                    serde_json::from_str(&text).map_err(|_| HttpError::NotJson {
                        url: url.clone(),
                        body: text.chars().take(300).collect(),
                    })
                }
                Err(ureq::Error::Status(status, resp)) => Err(HttpError::Status {
                    url,
                    status,
                    body: excerpt(resp),
                }),
                Err(ureq::Error::Transport(t)) => Err(HttpError::Transport {
                    url,
                    message: t.to_string(),
                }),
            }
        })
        .await
        .map_err(|e| HttpError::Api(format!("HTTP task failed: {e}")))?
    }
}
