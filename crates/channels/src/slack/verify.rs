//! Slack request signatures (`X-Slack-Signature`, version `v0`).
//!
//! Slack signs every interaction with the app's signing secret:
//! `v0=` + hex HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}`.
//! We accept a request only if that matches (constant-time), the timestamp
//! is within five minutes of our clock, and the same signature was not seen
//! before within that window (a captured request replayed inside the window
//! is refused too; outside it the timestamp check refuses it).

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from our clock.
pub const TOLERANCE_SECS: i64 = 300;

/// Why an interaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Request-Timestamp or X-Slack-Signature header")]
    Missing,
    #[error("X-Slack-Request-Timestamp is not unix seconds")]
    BadTimestamp,
    #[error(
        "the request timestamp is {0} s away from now (more than five minutes): stale or replayed"
    )]
    Stale(i64),
    #[error(
        "X-Slack-Signature does not match the body: not signed with this app's signing secret"
    )]
    Mismatch,
    #[error("this exact signed request was already received: replay refused")]
    Replayed,
}

/// `v0=<hex>` for a body at `timestamp`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// Checks signature and freshness (no replay memory; see [`Verifier`]).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let t: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(t).saturating_abs();
    if skew > TOLERANCE_SECS {
        return Err(SignatureError::Stale(skew));
    }
    let tag = sig
        .trim()
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Mismatch)?;
    mac(secret, ts.trim(), body)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)
}

/// [`verify`] plus a memory of signatures seen in the last five minutes.
///
/// The memory is per process: after a restart a replay inside the window
/// gets through this check, but every click is a review, and the core
/// refuses a second review by the same person or of a decided request.
pub struct Verifier {
    secret: Vec<u8>,
    seen: Mutex<HashMap<Vec<u8>, i64>>,
}

impl Verifier {
    pub fn new(secret: Vec<u8>) -> Self {
        Verifier {
            secret,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), SignatureError> {
        verify(&self.secret, timestamp, signature, body, now_secs)?;
        // Keyed on the MAC itself, not its spelling: hex is accepted in
        // either case, so the text could differ for the same request.
        let key = signature
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .into_bytes();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now_secs.saturating_sub(*at) <= 2 * TOLERANCE_SECS);
        if seen.insert(key, now_secs).is_some() {
            return Err(SignatureError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from Slack's "Verifying requests from Slack" guide.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn reproduces_slacks_published_example() {
        assert_eq!(sign(SECRET, TS, BODY), SIG);
        verify(SECRET, Some(TS), Some(SIG), BODY, 1531420618 + 10).unwrap();
    }

    #[test]
    fn refuses_forgery_staleness_and_replay() {
        let now = 1531420618;
        let v = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now| {
            verify(SECRET, ts, sig, body, now)
        };
        assert_eq!(v(None, Some(SIG), BODY, now), Err(SignatureError::Missing));
        assert_eq!(v(Some(TS), None, BODY, now), Err(SignatureError::Missing));
        assert_eq!(
            v(Some("x"), Some(SIG), BODY, now),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            v(Some(TS), Some(SIG), b"tampered", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(TS), Some("v0=00"), BODY, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(TS), Some("v1=ab"), BODY, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret-entirely", Some(TS), Some(SIG), BODY, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(TS), Some(SIG), BODY, now + 301),
            Err(SignatureError::Stale(301))
        );
        assert_eq!(
            v(Some(TS), Some(SIG), BODY, now - 301),
            Err(SignatureError::Stale(301))
        );
        v(Some(TS), Some(SIG), BODY, now + 300).unwrap();

        let ver = Verifier::new(SECRET.to_vec());
        ver.check(Some(TS), Some(SIG), BODY, now).unwrap();
        assert_eq!(
            ver.check(Some(TS), Some(SIG), BODY, now + 1),
            Err(SignatureError::Replayed)
        );
        // The same MAC in capitals is the same request.
        let upper = format!("v0={}", SIG.trim_start_matches("v0=").to_ascii_uppercase());
        verify(SECRET, Some(TS), Some(&upper), BODY, now).unwrap();
        assert_eq!(
            ver.check(Some(TS), Some(&upper), BODY, now + 2),
            Err(SignatureError::Replayed)
        );
        // a forged request does not poison the memory for the real one
        let ver = Verifier::new(SECRET.to_vec());
        assert!(ver.check(Some(TS), Some(SIG), b"x", now).is_err());
        ver.check(Some(TS), Some(SIG), BODY, now).unwrap();
    }

    proptest::proptest! {
        /// Any change to the body, the timestamp or the signature is refused.
        #[test]
        fn any_tampering_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                                    at in 0usize..300, flip in 1u8..=255, skew in -300i64..=300) {
            let ts = "1700000000";
            let sig = sign(SECRET, ts, &body);
            let now = 1_700_000_000 + skew;
            proptest::prop_assert!(verify(SECRET, Some(ts), Some(&sig), &body, now).is_ok());
            if !body.is_empty() {
                let mut b = body.clone();
                let i = at % b.len();
                b[i] ^= flip;
                proptest::prop_assert_eq!(verify(SECRET, Some(ts), Some(&sig), &b, now), Err(SignatureError::Mismatch));
            }
            let mut s = sig.clone().into_bytes();
            let i = 3 + at % (s.len() - 3);
            s[i] = if s[i] == b'0' { b'1' } else { b'0' };
            let s = String::from_utf8(s).unwrap();
            proptest::prop_assert!(verify(SECRET, Some(ts), Some(&s), &body, now).is_err());
            proptest::prop_assert!(verify(SECRET, Some("1700000001"), Some(&sig), &body, now).is_err());
        }
    }
}
