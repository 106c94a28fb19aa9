//! Single-use grants as compact JWS tokens (EdDSA / Ed25519; RFC 7515,
//! RFC 8037), so any service can verify a grant offline with the gateway's
//! published key (`/.well-known/jwks.json`, built from [`jwk`]).
//!
//! The encoder and decoder are small on purpose: one algorithm, one
//! serialization, strict base64url, no `crit` extensions, signature checked
//! before anything in the payload is trusted.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::time::Timestamp;

/// Longest token accepted, in bytes; bounds work on hostile input.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims a grant carries: what it authorizes, for whom, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// The grant id; a grant is consumed at most once.
    pub jti: String,
    /// The request id, or `None` for an immediate allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// The action digest the grant is bound to.
    pub dig: String,
    /// The requester, the only principal that may use it.
    pub sub: String,
    /// Who approved (empty for an immediate allow).
    #[serde(default)]
    pub apr: Vec<String>,
    /// The environment the action targets, if declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds; unusable from this second on.
    pub exp: i64,
    /// The issuing gateway.
    pub iss: String,
}

/// Why a grant token was rejected (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the grant token is {len} bytes; grants are at most {MAX_TOKEN_BYTES} bytes — pass the token exactly as issued")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not a well-formed compact JWS or claims set.
    #[error("the grant token is malformed: {0}; pass the token exactly as issued")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("the grant token uses algorithm {0:?}; only EdDSA grants are accepted")]
    UnsupportedAlgorithm(String),
    /// No key for the header's `kid`.
    #[error(
        "no verification key for kid {0:?}; fetch the current keys from /.well-known/jwks.json"
    )]
    UnknownKey(Option<String>),
    /// The signature does not verify: forged or altered.
    #[error("the grant's signature does not verify; the token was altered or not issued by this gateway")]
    BadSignature,
    /// Past `exp`.
    #[error("the grant expired at {exp} (Unix seconds); submit the action again")]
    Expired {
        /// Its `exp` claim.
        exp: i64,
    },
    /// The claims could not be encoded.
    #[error("the grant could not be encoded: {0}")]
    Encoding(String),
}

impl GrantError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::TooLarge { .. } | GrantError::Malformed(_) => "invalid_grant",
            GrantError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            GrantError::UnknownKey(_) => "unknown_key",
            GrantError::BadSignature => "bad_signature",
            GrantError::Expired { .. } => "expired",
            GrantError::Encoding(_) => "internal",
        }
    }
}

/// Where verification finds the public key for a token's `kid`.
pub trait KeyLookup {
    /// The key for `kid` (absent when the header has none).
    fn key_for(&self, kid: Option<&str>) -> Option<VerifyingKey>;
}

/// A single key verifies whatever `kid` the token names: the signature, not
/// the label, is what is checked.
impl KeyLookup for VerifyingKey {
    fn key_for(&self, _kid: Option<&str>) -> Option<VerifyingKey> {
        Some(*self)
    }
}

/// Several keys (e.g. during rotation), matched by [`kid_for`].
impl KeyLookup for [VerifyingKey] {
    fn key_for(&self, kid: Option<&str>) -> Option<VerifyingKey> {
        let kid = kid?;
        self.iter().find(|k| kid_for(k) == kid).copied()
    }
}

impl KeyLookup for HashMap<String, VerifyingKey> {
    fn key_for(&self, kid: Option<&str>) -> Option<VerifyingKey> {
        self.get(kid?).copied()
    }
}

impl KeyLookup for BTreeMap<String, VerifyingKey> {
    fn key_for(&self, kid: Option<&str>) -> Option<VerifyingKey> {
        self.get(kid?).copied()
    }
}

/// Signs `claims` as a compact JWS with header
/// `{"alg":"EdDSA","typ":"JWT","kid":kid}`.
pub fn sign_grant(claims: &GrantClaims, key: &SigningKey, kid: &str) -> Result<String, GrantError> {
    // Written directly rather than through a `Value`: this runs once per allow.
    let kid = serde_json::to_string(kid).map_err(|e| GrantError::Encoding(e.to_string()))?;
    let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":{kid}}}"#);
    let payload = serde_json::to_vec(claims).map_err(|e| GrantError::Encoding(e.to_string()))?;
    Ok(sign_compact(header.as_bytes(), &payload, key))
}

fn sign_compact(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    token
}

/// Verifies a grant token and returns its claims: size, structure and
/// algorithm first, then the signature, then expiry against `now`.
pub fn verify_grant<K: KeyLookup + ?Sized>(
    token: &str,
    keys: &K,
    now: Timestamp,
) -> Result<GrantClaims, GrantError> {
    let payload = verify_compact(token, keys)?;
    let claims: GrantClaims = serde_json::from_slice(&payload)
        .map_err(|e| GrantError::Malformed(format!("the claims are not a grant: {e}")))?;
    if now.as_secs() >= claims.exp {
        return Err(GrantError::Expired { exp: claims.exp });
    }
    Ok(claims)
}

/// Checks a compact JWS and returns its payload bytes.
fn verify_compact<K: KeyLookup + ?Sized>(token: &str, keys: &K) -> Result<Vec<u8>, GrantError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(GrantError::TooLarge { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(GrantError::Malformed(
            "expected three base64url parts separated by dots".into(),
        ));
    };
    let b64 = |part: &str, what: &str| {
        URL_SAFE_NO_PAD.decode(part).map_err(|e| {
            GrantError::Malformed(format!("the {what} is not base64url without padding: {e}"))
        })
    };
    let header: Value = serde_json::from_slice(&b64(h64, "header")?)
        .map_err(|e| GrantError::Malformed(format!("the header is not JSON: {e}")))?;
    let header = header
        .as_object()
        .ok_or_else(|| GrantError::Malformed("the header is not a JSON object".into()))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "EdDSA" => {}
        Some(Value::String(alg)) => return Err(GrantError::UnsupportedAlgorithm(alg.clone())),
        _ => return Err(GrantError::Malformed("the header has no \"alg\"".into())),
    }
    if header.contains_key("crit") {
        return Err(GrantError::Malformed(
            "critical header extensions are not supported".into(),
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(GrantError::Malformed("\"kid\" is not a string".into())),
    };
    let key = keys
        .key_for(kid)
        .ok_or_else(|| GrantError::UnknownKey(kid.map(str::to_string)))?;
    let sig: [u8; 64] = b64(s64, "signature")?
        .try_into()
        .map_err(|_| GrantError::Malformed("the signature is not 64 bytes".into()))?;
    let signing_input = &token[..h64.len() + 1 + p64.len()];
    key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| GrantError::BadSignature)?;
    b64(p64, "payload")
}

/// The public key as a JWK (RFC 8037 OKP), for `/.well-known/jwks.json`.
pub fn jwk(key: &VerifyingKey, kid: &str) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// A stable key id: the RFC 7638 JWK thumbprint (SHA-256, base64url), so
/// anyone holding the public key can recompute it.
pub fn kid_for(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    let members = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims() -> GrantClaims {
        GrantClaims {
            jti: "grt_1".into(),
            rid: Some("req_1".into()),
            dig: "ab".repeat(32),
            sub: "agent:report-bot".into(),
            apr: vec!["user:bob".into(), "user:carol".into()],
            env: Some("prod".into()),
            iat: 1_700_000_000,
            exp: 1_700_000_300,
            iss: "secondkey.example/log".into(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1000)
    }

    /// Rebuilds a token from parts, re-signing or not.
    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_string).collect()
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let kid = kid_for(&k.verifying_key());
        let token = sign_grant(&claims(), &k, &kid).unwrap();
        let got = verify_grant(&token, &k.verifying_key(), at(1_700_000_299)).unwrap();
        assert_eq!(got, claims());
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(&token)[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
        // by kid from a set of keys
        let set = [key(2).verifying_key(), k.verifying_key()];
        assert_eq!(verify_grant(&token, &set[..], at(0)).unwrap(), claims());
        let map: HashMap<String, VerifyingKey> = [(kid.clone(), k.verifying_key())].into();
        assert!(verify_grant(&token, &map, at(0)).is_ok());
        let empty: HashMap<String, VerifyingKey> = HashMap::new();
        assert!(matches!(
            verify_grant(&token, &empty, at(0)),
            Err(GrantError::UnknownKey(Some(_)))
        ));
        // an immediate allow omits rid and env
        let mut c = claims();
        c.rid = None;
        c.env = None;
        c.apr = vec![];
        let t = sign_grant(&c, &k, &kid).unwrap();
        assert_eq!(verify_grant(&t, &k.verifying_key(), at(0)).unwrap(), c);
    }

    #[test]
    fn expiry() {
        let k = key(1);
        let token = sign_grant(&claims(), &k, "k").unwrap();
        let e = verify_grant(&token, &k.verifying_key(), at(1_700_000_300)).unwrap_err();
        assert_eq!(e, GrantError::Expired { exp: 1_700_000_300 });
        assert_eq!(e.code(), "expired");
    }

    #[test]
    fn tampering_is_detected() {
        let k = key(1);
        let vk = k.verifying_key();
        let token = sign_grant(&claims(), &k, "k").unwrap();
        let p = parts(&token);
        // changed claims, original signature
        let mut c = claims();
        c.dig = "cd".repeat(32);
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", p[0], forged_payload, p[2]);
        assert_eq!(
            verify_grant(&forged, &vk, at(0)),
            Err(GrantError::BadSignature)
        );
        // another key's signature
        let other = sign_grant(&claims(), &key(2), "k").unwrap();
        assert_eq!(
            verify_grant(&other, &vk, at(0)),
            Err(GrantError::BadSignature)
        );
        // every single-character change fails
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(bytes).unwrap();
            if t != token {
                assert!(
                    verify_grant(&t, &vk, at(0)).is_err(),
                    "change at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_other_algorithms_and_malformed_tokens() {
        let k = key(1);
        let vk = k.verifying_key();
        let payload = serde_json::to_vec(&claims()).unwrap();
        for alg in ["none", "HS256", "ES256", "eddsa"] {
            let t = sign_compact(json!({"alg": alg}).to_string().as_bytes(), &payload, &k);
            assert_eq!(
                verify_grant(&t, &vk, at(0)),
                Err(GrantError::UnsupportedAlgorithm(alg.into()))
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        assert!(verify_grant(&unsigned, &vk, at(0)).is_err());
        let crit = sign_compact(br#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, &payload, &k);
        assert!(matches!(
            verify_grant(&crit, &vk, at(0)),
            Err(GrantError::Malformed(_))
        ));
        let not_claims = sign_compact(br#"{"alg":"EdDSA"}"#, b"{\"jti\":1}", &k);
        assert!(matches!(
            verify_grant(&not_claims, &vk, at(0)),
            Err(GrantError::Malformed(_))
        ));
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.AAAA"] {
            let e = verify_grant(bad, &vk, at(0)).unwrap_err();
            assert_eq!(e.code(), "invalid_grant", "{bad:?}: {e}");
        }
        // padded base64 is not base64url-without-padding
        let token = sign_grant(&claims(), &k, "k").unwrap();
        let p = parts(&token);
        let padded = format!("{}.{}.{}==", p[0], p[1], p[2]);
        assert!(verify_grant(&padded, &vk, at(0)).is_err());
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify_grant(&huge, &vk, at(0)),
            Err(GrantError::TooLarge {
                len: MAX_TOKEN_BYTES + 1
            })
        );
    }

    /// RFC 8037 Appendix A: the Ed25519 example key, its thumbprint (A.3)
    /// and the example signature (A.4).
    #[test]
    fn rfc8037_vectors() {
        let d: [u8; 32] = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap()
            .try_into()
            .unwrap();
        let k = SigningKey::from_bytes(&d);
        let vk = k.verifying_key();
        let j = jwk(&vk, "x");
        assert_eq!(j["x"], json!("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"));
        assert_eq!(
            (j["kty"].clone(), j["crv"].clone()),
            (json!("OKP"), json!("Ed25519"))
        );
        assert_eq!(kid_for(&vk), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let expected = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        assert_eq!(
            sign_compact(br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing", &k),
            expected
        );
        assert_eq!(
            verify_compact(expected, &vk).unwrap(),
            b"Example of Ed25519 signing"
        );
    }
}
