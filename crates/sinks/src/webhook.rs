//! Signed HTTP POSTs per the Standard Webhooks specification.
//!
//! Each entry is POSTed as its canonical JSON (`content-type:
//! application/json`) with three headers:
//!
//! - `webhook-id`: `<prefix>-<index>`, the same on every retry so the
//!   receiver can deduplicate (the prefix is the log origin, sanitized);
//! - `webhook-timestamp`: unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//!   where the key is the base64-decoded part of the `whsec_…` secret.
//!
//! A 2xx answer acknowledges the entry. Any other status, a redirect, a
//! transport error or a timeout is a failure that the runner retries with
//! backoff. Unlike syslog, this is an application-level acknowledgement.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::syslog::{client_config_from_ca_file, TlsSetupError};
use crate::{DeliverFuture, Sink, SinkError};

type HmacSha256 = Hmac<Sha256>;

/// A Standard Webhooks signing secret (`whsec_` + base64 of the key bytes).
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not base64 after the prefix.
    #[error("webhook secret is not valid base64 after the whsec_ prefix; generate one with `echo whsec_$(head -c 32 /dev/urandom | base64)`")]
    NotBase64,
    /// Decodes to nothing useful.
    #[error("webhook secret is too short ({0} bytes); use 24 to 64 random bytes")]
    TooShort(usize),
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; the prefix is optional, as in the reference
    /// libraries. At least 16 key bytes are required.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = B64.decode(b64).map_err(|_| SecretError::NotBase64)?;
        if key.len() < 16 {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(WebhookSecret(key))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = secret.mac(id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", B64.encode(tag))
}

/// The `webhook-id` for the entry at `index`: stable across retries.
///
/// Characters outside `A-Za-z0-9._-` in the prefix become `_`.
pub fn webhook_id(prefix: &str, index: u64) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}-{index}")
}

/// Why a received webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The timestamp is not a number.
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    /// The timestamp is outside the tolerance (replay or clock skew).
    #[error("webhook-timestamp is {0} s away from now, beyond the tolerance")]
    OutsideTolerance(u64),
    /// No `v1` signature matched.
    #[error("no v1 signature in webhook-signature matches the body")]
    NoMatch,
}

/// Verifies a received webhook as a Standard Webhooks consumer does:
/// the timestamp must be within `tolerance_secs` of `now` (unix seconds),
/// and one of the space-separated `v1,<base64>` signatures must match,
/// compared in constant time.
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.abs_diff(ts);
    if skew > tolerance_secs {
        return Err(VerifyError::OutsideTolerance(skew));
    }
    for candidate in signature_header.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = B64.decode(b64) else { continue };
        if secret.mac(id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

/// POSTs entries to a webhook URL (HTTPS, or HTTP for tests on loopback).
pub struct WebhookSink {
    url: String,
    secret: WebhookSecret,
    id_prefix: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("id_prefix", &self.id_prefix)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// A sink POSTing to `url`. `id_prefix` (normally the log origin) makes
    /// ids unique across gateways; `ca_file` replaces the built-in web PKI
    /// roots when the receiver uses a private CA; `timeout` bounds each
    /// attempt end to end.
    pub fn new(
        url: &str,
        secret: WebhookSecret,
        id_prefix: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, TlsSetupError> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .redirects(0)
            .user_agent(concat!("secondkey-sinks/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca_file {
            builder = builder.tls_config(Arc::new(client_config_from_ca_file(ca)?));
        }
        Ok(WebhookSink {
            url: url.to_string(),
            secret,
            id_prefix: id_prefix.to_string(),
            agent: builder.build(),
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn deliver<'a>(&'a mut self, index: u64, entry: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let id = webhook_id(&self.id_prefix, index);
            let ts = now_secs();
            let signature = sign(&self.secret, &id, ts, entry);
            let request = self
                .agent
                .post(&self.url)
                .set("content-type", "application/json")
                .set("webhook-id", &id)
                .set("webhook-timestamp", &ts.to_string())
                .set("webhook-signature", &signature);
            let body = entry.to_vec();
            let url = self.url.clone();
            // Runs on a blocking thread; returns (status, body excerpt) or a
            // transport error, small enough to move back cheaply.
            let outcome = tokio::task::spawn_blocking(move || {
                let excerpt = |r: ureq::Response| -> String {
                    r.into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect()
                };
                match request.send_bytes(&body) {
                    Ok(r) if (200..300).contains(&r.status()) => Ok((r.status(), String::new())),
                    Ok(r) => Ok((r.status(), excerpt(r))),
                    Err(ureq::Error::Status(code, r)) => Ok((code, excerpt(r))),
                    Err(ureq::Error::Transport(t)) => Err(t.to_string()),
                }
            })
            .await;
            match outcome {
                Err(e) => Err(SinkError::Http {
                    address: url,
                    message: format!("request task failed: {e}"),
                }),
                Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
                Ok(Ok((status, body))) => Err(SinkError::Rejected {
                    address: url,
                    status,
                    body,
                }),
                Ok(Err(message)) => Err(SinkError::Http {
                    address: url,
                    message,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn reproduces_the_published_standard_webhooks_example() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            body,
            1614265330 + 10,
            300,
        )
        .unwrap();
    }

    #[test]
    fn verify_rejects_tampering_replay_and_wrong_keys() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let sig = sign(&secret, "o-1", 1000, b"{}");
        assert_eq!(
            verify(&secret, "o-1", "1000", &sig, b"{ }", 1000, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "o-2", "1000", &sig, b"{}", 1000, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "o-1", "1001", &sig, b"{}", 1000, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "o-1", "1000", &sig, b"{}", 2000, 300),
            Err(VerifyError::OutsideTolerance(1000))
        );
        assert_eq!(
            verify(&secret, "o-1", "x", &sig, b"{}", 1000, 300),
            Err(VerifyError::BadTimestamp)
        );
        let other = WebhookSecret::parse(&format!("whsec_{}", B64.encode([7u8; 32]))).unwrap();
        assert_eq!(
            verify(&other, "o-1", "1000", &sig, b"{}", 1000, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "o-1", "1000", "v2,abc", b"{}", 1000, 300),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn secrets_parse_strictly() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(matches!(
            WebhookSecret::parse("whsec_!!!"),
            Err(SecretError::NotBase64)
        ));
        assert!(matches!(
            WebhookSecret::parse("whsec_AAAA"),
            Err(SecretError::TooShort(3))
        ));
        assert_eq!(
            format!("{:?}", WebhookSecret::parse(SECRET).unwrap()),
            "WebhookSecret(<redacted>)"
        );
    }

    #[test]
    fn ids_are_stable_and_header_safe() {
        assert_eq!(
            webhook_id("secondkey.example/log", 42),
            "secondkey.example_log-42"
        );
        assert_eq!(webhook_id("a b", 0), "a_b-0");
    }
}
