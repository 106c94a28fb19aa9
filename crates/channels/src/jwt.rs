//! Verifying RS256 JWTs against keys published through OpenID Connect
//! discovery (`…/.well-known/openid-configuration` → `jwks_uri` → JWK set).
//!
//! Written to be reused by anything that accepts tokens from an identity
//! provider (the Bot Framework here; workload identity and OIDC ID tokens
//! elsewhere): one [`JwksVerifier`] per issuer, keys cached and refreshed
//! when an unknown `kid` shows up (at most every 30 s, so a flood of bogus
//! `kid`s cannot turn into a flood of fetches) or after a day. Signatures
//! and claims are checked by the `jsonwebtoken` crate; only `RS256` is
//! accepted, and `exp`, `iss` and `aud` are required.
//!
//! The Bot Framework adds an `endorsements` list to each key: the channels
//! (e.g. `msteams`) the key may sign for. [`Verified::endorsements`]
//! carries it so the caller can check the activity's channel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::http::{Body, Client, HttpError};

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with {0:?}; only RS256 is accepted")]
    Algorithm(String),
    #[error("the token names no key id (kid)")]
    NoKid,
    #[error(
        "no published signing key has id {0:?}: the token was not signed by the expected issuer"
    )]
    UnknownKey(String),
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("the signing keys could not be fetched: {0}")]
    Keys(String),
}

impl From<HttpError> for JwtError {
    fn from(e: HttpError) -> Self {
        JwtError::Keys(e.to_string())
    }
}

/// A token that passed: its claims and the signing key's endorsements.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub endorsements: Option<Vec<String>>,
}

struct Key {
    key: DecodingKey,
    endorsements: Option<Vec<String>>,
}

struct Cache {
    keys: HashMap<String, std::sync::Arc<Key>>,
    fetched: Option<Instant>,
}

/// Verifies tokens of one issuer for one audience.
pub struct JwksVerifier {
    metadata_url: String,
    issuers: Vec<String>,
    audience: String,
    leeway: u64,
    http: Client,
    cache: tokio::sync::Mutex<()>,
    keys: Mutex<Cache>,
}

const REFRESH_FLOOR: Duration = Duration::from_secs(30);
const MAX_AGE: Duration = Duration::from_secs(86_400);

impl JwksVerifier {
    /// `metadata_url` is the OpenID configuration document; `leeway` the
    /// clock skew allowed on `exp`/`nbf` (the Bot Framework allows 5 min).
    pub fn new(
        metadata_url: &str,
        issuers: Vec<String>,
        audience: &str,
        leeway: Duration,
        http: Client,
    ) -> Self {
        JwksVerifier {
            metadata_url: metadata_url.to_string(),
            issuers,
            audience: audience.to_string(),
            leeway: leeway.as_secs(),
            http,
            cache: tokio::sync::Mutex::new(()),
            keys: Mutex::new(Cache {
                keys: HashMap::new(),
                fetched: None,
            }),
        }
    }

    fn cached(&self, kid: &str) -> (Option<std::sync::Arc<Key>>, bool) {
        let c = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let stale = c.fetched.is_none_or(|t| t.elapsed() > MAX_AGE);
        let may_refresh = c.fetched.is_none_or(|t| t.elapsed() > REFRESH_FLOOR);
        match c.keys.get(kid) {
            Some(k) if !stale => (Some(k.clone()), false),
            Some(k) => (Some(k.clone()), true),
            None => (None, may_refresh),
        }
    }

    async fn refresh(&self) -> Result<(), JwtError> {
        let _one = self.cache.lock().await;
        if self
            .keys
            .lock()
            .map(|c| {
                c.fetched
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            })
            .unwrap_or(false)
        {
            return Ok(());
        }
        let meta = self
            .http
            .call("GET", self.metadata_url.clone(), None, Body::Empty)
            .await?;
        let jwks_uri = meta
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| JwtError::Keys(format!("{} has no jwks_uri", self.metadata_url)))?
            .to_string();
        let set = self
            .http
            .call("GET", jwks_uri.clone(), None, Body::Empty)
            .await?;
        let mut keys = HashMap::new();
        for k in set
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |f: &str| k.get(f).and_then(Value::as_str);
            if s("kty") != Some("RSA") || s("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (s("kid"), s("n"), s("e")) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_rsa_components(n, e) else {
                tracing::warn!(kid, "skipping an unusable RSA key in {jwks_uri}");
                continue;
            };
            let endorsements = k.get("endorsements").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
            keys.insert(
                kid.to_string(),
                std::sync::Arc::new(Key { key, endorsements }),
            );
        }
        if keys.is_empty() {
            return Err(JwtError::Keys(format!(
                "{jwks_uri} holds no RSA signing keys"
            )));
        }
        let mut c = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        c.keys = keys;
        c.fetched = Some(Instant::now());
        Ok(())
    }

    /// Checks signature (RS256, a published key), `iss`, `aud`, `exp`
    /// and `nbf` (with the leeway). Returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(JwtError::NoKid)?;
        let key = match self.cached(&kid) {
            (Some(k), false) => k,
            (found, may_refresh) => {
                if may_refresh {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "refreshing signing keys failed");
                        if found.is_none() {
                            return Err(e);
                        }
                    }
                }
                match self.cached(&kid).0.or(found) {
                    Some(k) => k,
                    None => return Err(JwtError::UnknownKey(kid)),
                }
            }
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_audience(&[self.audience.as_str()]);
        v.set_issuer(&self.issuers);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map_err(|e| JwtError::Invalid(e.to_string()))?;
        Ok(Verified {
            claims: data.claims,
            endorsements: key.endorsements.clone(),
        })
    }
}
