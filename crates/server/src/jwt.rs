//! Verifying JWTs signed with keys a provider publishes as a JWK set.
//!
//! One verifier per trusted issuer: OpenID Connect ID tokens (the web
//! sign-in), workload identity tokens of agents and services
//! (`[[identity.jwt]]`), and Bot Framework tokens (Microsoft Teams) all go
//! through [`JwtVerifier`]. It checks the signature with a key from the
//! issuer's JWKS (found directly, or through its OpenID metadata document),
//! the algorithm against an allow-list (never `none`, never HMAC: a public
//! key must not double as a shared secret), the issuer, the audience, `exp`
//! and `nbf`.
//!
//! Keys are cached. A token whose `kid` is not in the cache triggers one
//! refetch (providers rotate keys by publishing the new one first), but at
//! most one per `min_refetch`, so tokens with made-up key ids cannot make us
//! hammer the provider. When a refetch fails the cached keys stay in use.
//!
//! ```no_run
//! # async fn f() -> Result<(), secondkey_server::jwt::JwtError> {
//! use secondkey_server::jwt::{JwtVerifier, KeySource, VerifierConfig};
//! let v = JwtVerifier::new(VerifierConfig::new(
//!     vec!["https://api.botframework.com".into()],
//!     vec!["<app id>".into()],
//!     KeySource::Metadata("https://login.botframework.com/v1/.well-known/openidconfiguration".into()),
//! ));
//! let verified = v.verify("eyJ…").await?;
//! let _service_url = verified.claims.get("serviceurl");
//! # Ok(()) }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Why a token was refused, or keys could not be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT (expected three base64url parts separated by dots)")]
    Malformed,
    #[error("the token is longer than 16 KiB")]
    TooLong,
    #[error("algorithm {0} is not accepted for this issuer")]
    Algorithm(String),
    #[error("no key with id {0:?} in the issuer's key set")]
    UnknownKey(String),
    #[error(
        "the key with id {kid:?} in the issuer's key set is not for {alg} (its JWK names {key})"
    )]
    KeyAlgorithm {
        kid: String,
        alg: String,
        key: String,
    },
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the issuer's keys could not be fetched: {0}")]
    Fetch(String),
}

/// Where the issuer's signing keys are published.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document URL.
    Jwks(String),
    /// An OpenID provider metadata URL whose `jwks_uri` names the JWKS.
    Metadata(String),
    /// A fixed key set (tests, air-gapped issuers).
    Static(Value),
}

/// What a verifier trusts.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Accepted `iss` values (one is usual; Entra ID has v1 and v2 spellings).
    pub issuers: Vec<String>,
    /// Accepted `aud` values; the token must name one of them.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// How long fetched keys are used before they are fetched again.
    pub cache_ttl: Duration,
    /// Shortest time between two fetches caused by unknown key ids.
    pub min_refetch: Duration,
    /// Allow `http://` key URLs on hosts other than loopback (never in
    /// production: keys fetched in clear text can be swapped in transit).
    pub allow_insecure_http: bool,
}

impl VerifierConfig {
    /// Defaults: RS256/RS384/RS512/PS256/ES256/ES384/EdDSA, 60 s leeway, keys
    /// cached for an hour, refetched on an unknown `kid` at most every 30 s.
    pub fn new(issuers: Vec<String>, audiences: Vec<String>, keys: KeySource) -> VerifierConfig {
        VerifierConfig {
            issuers,
            audiences,
            keys,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(60),
            cache_ttl: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(30),
            allow_insecure_http: false,
        }
    }
}

/// The asymmetric algorithms accepted unless configured otherwise.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Parses an algorithm name from configuration; HMAC algorithms are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown JWS algorithm {name:?}"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "{name} is a shared-secret algorithm; only public-key algorithms are accepted"
        ));
    }
    Ok(alg)
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// All claims of the payload.
    pub claims: Map<String, Value>,
    /// The JWK that verified it, as published (e.g. Bot Framework's
    /// `endorsements` live here).
    pub key: Value,
}

impl Verified {
    /// A string claim, if present.
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

struct Cache {
    /// (raw JWK, parsed JWK) pairs.
    keys: Vec<(Value, Jwk)>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Verifies tokens of one issuer; cheap to share (`Arc`), safe to call from
/// many tasks at once.
pub struct JwtVerifier {
    config: VerifierConfig,
    cache: Mutex<Cache>,
    /// Serializes fetches so a burst of tokens causes one download.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.config.issuers)
            .field("audiences", &self.config.audiences)
            .finish_non_exhaustive()
    }
}

/// The `iss` claim of a token, read without verifying anything: only to
/// choose which verifier to try.
pub fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// The longest token [`JwtVerifier::verify`] reads.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The `alg` of a token's header, read without verifying anything: only to
/// name an algorithm that is refused.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = v.get("alg")?.as_str()?;
    // Echoed in an error: keep it short and printable.
    Some(
        alg.chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect(),
    )
}

/// Whether a bearer token has the shape of a compact JWS.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

impl JwtVerifier {
    pub fn new(config: VerifierConfig) -> JwtVerifier {
        let keys = match &config.keys {
            KeySource::Static(set) => parse_set(set).unwrap_or_default(),
            _ => Vec::new(),
        };
        let fetched = matches!(config.keys, KeySource::Static(_)).then(Instant::now);
        JwtVerifier {
            config,
            cache: Mutex::new(Cache {
                keys,
                fetched,
                last_attempt: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Checks signature, algorithm, issuer, audience and lifetime.
    pub async fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        if !looks_like_jwt(token) {
            return Err(JwtError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| match header_alg(token) {
            // An algorithm we do not know at all (`none`, a typo) is named
            // as such, not as a malformed token.
            Some(alg) if alg.parse::<Algorithm>().is_err() => JwtError::Algorithm(alg),
            _ => JwtError::Malformed,
        })?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone();
        let (raw, jwk) = match self.find_key(kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                // A key set that has the key, but for another algorithm:
                // said so, and no refetch (the key id is not new).
                if let Some(e) = self.other_algorithm(kid.as_deref(), header.alg) {
                    return Err(e);
                }
                self.refresh(kid.is_some()).await?;
                match self.find_key(kid.as_deref(), header.alg) {
                    Some(k) => k,
                    None => {
                        return Err(self
                            .other_algorithm(kid.as_deref(), header.alg)
                            .unwrap_or_else(|| {
                                JwtError::UnknownKey(kid.clone().unwrap_or_default())
                            }))
                    }
                }
            }
        };
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| JwtError::Invalid(format!("the issuer's key is unusable: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&self.config.issuers);
        v.set_audience(&self.config.audiences);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| JwtError::Invalid(describe(&e)))?;
        Ok(Verified {
            claims: data.claims,
            key: raw,
        })
    }

    /// The refusal of a token whose key id names a key of the cached set
    /// that is not for `alg` (another key type, or a JWK `alg` naming
    /// another algorithm); `None` without such a key.
    fn other_algorithm(&self, kid: Option<&str>, alg: Algorithm) -> Option<JwtError> {
        let kid = kid?;
        let cache = self.cache.lock().ok()?;
        let fresh = cache
            .fetched
            .is_some_and(|t| t.elapsed() < self.config.cache_ttl)
            || matches!(self.config.keys, KeySource::Static(_));
        let (_, j) = cache
            .keys
            .iter()
            .find(|(_, j)| j.common.key_id.as_deref() == Some(kid))
            .filter(|(_, j)| fresh && !usable(j, alg))?;
        let key = match (&j.common.key_algorithm, &j.algorithm) {
            (Some(ka), _) => format!("alg {ka:?}"),
            (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => "an RSA key".into(),
            (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)) => "an EC key".into(),
            (None, jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_)) => "an OKP key".into(),
            (None, _) => "another key type".into(),
        };
        Some(JwtError::KeyAlgorithm {
            kid: kid.to_string(),
            alg: format!("{alg:?}"),
            key,
        })
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<(Value, Jwk)> {
        let cache = self.cache.lock().ok()?;
        let fresh = cache
            .fetched
            .is_some_and(|t| t.elapsed() < self.config.cache_ttl)
            || matches!(self.config.keys, KeySource::Static(_));
        if !fresh {
            return None;
        }
        let mut candidates = cache.keys.iter().filter(|(_, j)| usable(j, alg));
        match kid {
            Some(kid) => candidates
                .find(|(_, j)| j.common.key_id.as_deref() == Some(kid))
                .cloned(),
            None => {
                // Without a key id only an unambiguous key set will do.
                let first = candidates.next().cloned();
                if candidates.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }

    /// Fetches the key set again if allowed now. `forced` is a refetch for an
    /// unknown key id, rate-limited by `min_refetch`.
    async fn refresh(&self, forced: bool) -> Result<(), JwtError> {
        let _guard = self.fetching.lock().await;
        {
            let cache = self
                .cache
                .lock()
                .map_err(|_| JwtError::Fetch("key cache poisoned".into()))?;
            let fresh = cache
                .fetched
                .is_some_and(|t| t.elapsed() < self.config.cache_ttl);
            let recent = cache
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.config.min_refetch);
            if matches!(self.config.keys, KeySource::Static(_)) || recent || (fresh && !forced) {
                return Ok(());
            }
        }
        let source = self.config.keys.clone();
        let insecure = self.config.allow_insecure_http;
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&source, insecure))
            .await
            .map_err(|e| JwtError::Fetch(e.to_string()))?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| JwtError::Fetch("key cache poisoned".into()))?;
        cache.last_attempt = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) if !cache.keys.is_empty() => {
                // Keep verifying with what we had; the provider may be down.
                tracing::warn!(error = %e, "JWKS refetch failed; keeping cached keys");
                cache.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature".into(),
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        other => format!("{other:?}"),
    }
}

fn parse_set(set: &Value) -> Result<Vec<(Value, Jwk)>, JwtError> {
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwtError::Fetch("the key set has no `keys` array".into()))?;
    // Keys of types we do not know are skipped, not fatal: a provider may
    // publish more kinds than we use.
    Ok(keys
        .iter()
        .filter_map(|k| {
            serde_json::from_value::<Jwk>(k.clone())
                .ok()
                .map(|j| (k.clone(), j))
        })
        .collect())
}

/// Refuses plain-HTTP URLs except on loopback (where tests and sidecars run).
pub fn check_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    if url.starts_with("https://") || allow_insecure_http {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let name = if host.starts_with('[') {
            host.split(']').next().map(|h| &h[1..]).unwrap_or("")
        } else {
            host.split(':').next().unwrap_or("")
        };
        if matches!(name, "127.0.0.1" | "localhost" | "::1") {
            return Ok(());
        }
    }
    Err(format!(
        "{url:?} must be an https:// URL (plain http is accepted only on loopback)"
    ))
}

/// Fetches a JSON document (at most 1 MiB, 10 s).
pub fn fetch_json(url: &str, allow_insecure_http: bool) -> Result<Value, String> {
    check_url(url, allow_insecure_http)?;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build();
    let resp = agent
        .get(url)
        .set("Accept", "application/json")
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(resp.into_reader(), 1 << 20),
        &mut body,
    )
    .map_err(|e| format!("GET {url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

fn fetch_keys(source: &KeySource, insecure: bool) -> Result<Vec<(Value, Jwk)>, JwtError> {
    let url = match source {
        KeySource::Static(set) => return parse_set(set),
        KeySource::Jwks(u) => u.clone(),
        KeySource::Metadata(m) => {
            let meta = fetch_json(m, insecure).map_err(JwtError::Fetch)?;
            meta.get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| JwtError::Fetch(format!("{m} names no jwks_uri")))?
                .to_string()
        }
    };
    let set = fetch_json(&url, insecure).map_err(JwtError::Fetch)?;
    parse_set(&set)
}

/// Whether `j` may verify a token signed with `alg`: its key type is of
/// `alg`'s family, its JWK `alg` (if any) is `alg`, and it is not an
/// encryption key.
fn usable(j: &Jwk, alg: Algorithm) -> bool {
    let family_ok = matches!(
        (&j.algorithm, alg),
        (
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_),
            Algorithm::EdDSA
        )
    );
    let alg_ok = j
        .common
        .key_algorithm
        .is_none_or(|ka| format!("{ka:?}") == format!("{alg:?}"));
    let use_ok = !matches!(
        j.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    );
    family_ok && alg_ok && use_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn key(seed: u8) -> (EncodingKey, Value) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let der = sk.to_pkcs8_der().unwrap();
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        (
            EncodingKey::from_ed_der(der.as_bytes()),
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": format!("k{seed}"), "alg": "EdDSA", "use": "sig"}),
        )
    }

    fn token(k: &EncodingKey, kid: &str, claims: Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        encode(&h, &claims, k).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn verifier(set: Value) -> JwtVerifier {
        JwtVerifier::new(VerifierConfig::new(
            vec!["https://idp.test".into()],
            vec!["secondkey".into()],
            KeySource::Static(set),
        ))
    }

    #[tokio::test]
    async fn checks_signature_issuer_audience_and_lifetime() {
        let (k1, j1) = key(1);
        let (k2, _) = key(2);
        let v = verifier(json!({"keys": [j1]}));
        let good =
            json!({"iss": "https://idp.test", "aud": "secondkey", "sub": "ci", "exp": now() + 300});
        let ok = v.verify(&token(&k1, "k1", good.clone())).await.unwrap();
        assert_eq!(ok.str_claim("sub"), Some("ci"));
        assert_eq!(ok.key["kid"], "k1");

        // Signed by another key under the same kid.
        assert_eq!(
            v.verify(&token(&k2, "k1", good.clone())).await.unwrap_err(),
            JwtError::Invalid("bad signature".into())
        );
        // Unknown kid (static sets are never refetched).
        assert!(matches!(
            v.verify(&token(&k1, "nope", good.clone())).await,
            Err(JwtError::UnknownKey(_))
        ));
        // A known kid whose key is for another algorithm: said so, not
        // "no key with id".
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let es = format!(
            "{}.{}.AAAA",
            b64(&json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})),
            b64(&good)
        );
        let e = v.verify(&es).await.unwrap_err();
        assert_eq!(
            e,
            JwtError::KeyAlgorithm {
                kid: "k1".into(),
                alg: "ES256".into(),
                key: "alg EdDSA".into()
            }
        );
        assert!(e.to_string().contains("is not for ES256"), "{e}");
        let mut c = good.clone();
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            v.verify(&token(&k1, "k1", c)).await.unwrap_err(),
            JwtError::Invalid("wrong issuer".into())
        );
        let mut c = good.clone();
        c["aud"] = json!("other");
        assert_eq!(
            v.verify(&token(&k1, "k1", c)).await.unwrap_err(),
            JwtError::Invalid("wrong audience".into())
        );
        let mut c = good.clone();
        c["exp"] = json!(now() - 600);
        assert_eq!(
            v.verify(&token(&k1, "k1", c)).await.unwrap_err(),
            JwtError::Invalid("expired".into())
        );
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("exp");
        assert!(v.verify(&token(&k1, "k1", c)).await.is_err());
        let mut c = good;
        c["nbf"] = json!(now() + 600);
        assert!(v.verify(&token(&k1, "k1", c)).await.is_err());
    }

    #[tokio::test]
    async fn refuses_hmac_none_and_garbage() {
        let (_, j1) = key(1);
        let v = verifier(json!({"keys": [j1.clone()]}));
        // HS256 "signed" with the public key bytes: the classic confusion.
        let claims = json!({"iss": "https://idp.test", "aud": "secondkey", "exp": now() + 60});
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(j1["x"].as_str().unwrap().as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs).await, Err(JwtError::Algorithm(_))));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none"}"#),
            b64.encode(claims.to_string())
        );
        assert_eq!(
            v.verify(&none).await.unwrap_err(),
            JwtError::Algorithm("none".into()),
            "`none` is named as the refused algorithm, not as a malformed token"
        );
        let unsigned_with_sig = format!("{none}c2ln");
        assert_eq!(
            v.verify(&unsigned_with_sig).await.unwrap_err(),
            JwtError::Algorithm("none".into())
        );
        // A known algorithm in a header that is otherwise wrong is malformed.
        let bad_kid = format!(
            "{}.{}.c2ln",
            b64.encode(br#"{"alg":"EdDSA","kid":5}"#),
            b64.encode(claims.to_string())
        );
        for bad in ["", "a.b", "eyJ.eyJ.x", &bad_kid] {
            assert_eq!(
                v.verify(bad).await.unwrap_err(),
                JwtError::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            v.verify(&"ey".repeat(20_000)).await.unwrap_err(),
            JwtError::TooLong
        );
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("RS256").is_ok());
    }

    /// A JWKS server on loopback whose key set can be swapped, counting
    /// fetches; also serves OpenID metadata pointing at it.
    async fn jwks_server(
        set: Value,
    ) -> (
        String,
        std::sync::Arc<Mutex<Value>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let keys = Arc::new(Mutex::new(set));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (k, h, b) = (keys.clone(), hits.clone(), base.clone());
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (k, h) = (k.clone(), h.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        axum::Json(k.lock().unwrap().clone())
                    }
                }),
            )
            .route(
                "/meta",
                axum::routing::get(move || {
                    let b = b.clone();
                    async move { axum::Json(json!({"jwks_uri": format!("{b}/jwks")})) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, keys, hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_keys_follows_rotation_and_rate_limits_refetches() {
        use std::sync::atomic::Ordering;
        let (k1, j1) = key(1);
        let (k2, j2) = key(2);
        let (base, keys, hits) = jwks_server(json!({"keys": [j1]})).await;
        let mut cfg = VerifierConfig::new(
            vec!["https://idp.test".into()],
            vec!["secondkey".into()],
            KeySource::Metadata(format!("{base}/meta")),
        );
        cfg.min_refetch = Duration::ZERO;
        let v = JwtVerifier::new(cfg.clone());
        let claims = json!({"iss": "https://idp.test", "aud": "secondkey", "exp": now() + 300});
        v.verify(&token(&k1, "k1", claims.clone())).await.unwrap();
        v.verify(&token(&k1, "k1", claims.clone())).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1, "keys are cached");
        // The provider rotates: k2 published, k1 withdrawn.
        *keys.lock().unwrap() = json!({"keys": [j2]});
        v.verify(&token(&k2, "k2", claims.clone())).await.unwrap();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "an unknown kid refetches once"
        );
        assert!(matches!(
            v.verify(&token(&k1, "k1", claims.clone())).await,
            Err(JwtError::UnknownKey(_))
        ));
        // Made-up key ids cannot make us hammer the provider.
        cfg.min_refetch = Duration::from_secs(3600);
        let limited = JwtVerifier::new(cfg);
        limited
            .verify(&token(&k2, "k2", claims.clone()))
            .await
            .unwrap();
        let before = hits.load(Ordering::SeqCst);
        for i in 0..20 {
            let r = limited
                .verify(&token(&k2, &format!("bogus{i}"), claims.clone()))
                .await;
            assert!(matches!(r, Err(JwtError::UnknownKey(_))));
        }
        assert!(hits.load(Ordering::SeqCst) <= before + 1);
        // An unreachable provider is a clear error, not a panic.
        let dead = JwtVerifier::new(VerifierConfig::new(
            vec!["https://idp.test".into()],
            vec!["secondkey".into()],
            KeySource::Jwks("http://127.0.0.1:9/jwks".into()),
        ));
        assert!(matches!(
            dead.verify(&token(&k1, "k1", claims)).await,
            Err(JwtError::Fetch(_))
        ));
    }

    #[test]
    fn http_only_on_loopback() {
        assert!(check_url("https://idp.example/jwks", false).is_ok());
        assert!(check_url("http://127.0.0.1:9400/jwks", false).is_ok());
        assert!(check_url("http://localhost/jwks", false).is_ok());
        assert!(check_url("http://[::1]:80/jwks", false).is_ok());
        assert!(check_url("http://idp.example/jwks", false).is_err());
        assert!(check_url("http://127.0.0.1.evil.example/jwks", false).is_err());
        assert!(check_url("http://user@evil.example/jwks", false).is_err());
        assert!(check_url("http://idp.example/jwks", true).is_ok());
        assert_eq!(
            peek_issuer(&format!(
                "eyJ.{}.x",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iss":"a"}"#)
            )),
            Some("a".into())
        );
    }
}
