//! OpenID Connect sign-in: authorization code flow with PKCE (S256),
//! `state` and `nonce`, against any standard provider (Okta, Entra ID,
//! Google, Keycloak).
//!
//! `begin` remembers a pending sign-in under a random `state` (single use,
//! ten minutes) and sends the browser to the provider; `finish` takes the
//! state back exactly once, exchanges the code (with the PKCE verifier and
//! the client secret) at the token endpoint, and verifies the ID token
//! through [`crate::jwt::JwtVerifier`] — signature from the provider's JWKS,
//! issuer, audience = client id, lifetime — and its `nonce`. The provider's
//! metadata is discovered on first use and its `issuer` must equal the
//! configured one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use secondkey_core::principal::PrincipalId;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::OidcConfig;
use crate::jwt::{fetch_json, JwtVerifier, KeySource, VerifierConfig};

/// How long a sign-in may take between leaving for the provider and coming back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Most sign-ins pending at once (bounds memory under a flood of /login).
pub const MAX_PENDING: usize = 10_000;

/// Why sign-in failed. Shown to the user; never reveals secrets.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error(
        "this sign-in link is unknown, was already used, or is older than ten minutes; start again"
    )]
    UnknownState,
    #[error("the identity provider refused: {0}")]
    Provider(String),
    #[error("the identity provider cannot be reached or answered badly: {0}")]
    Unavailable(String),
    #[error("the ID token was refused: {0}")]
    Token(String),
    #[error("too many sign-ins are in progress; try again in a minute")]
    Busy,
}

struct Pending {
    nonce: String,
    verifier: String,
    return_to: String,
    created: Instant,
}

struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    verifier: JwtVerifier,
}

/// The sign-in flow for one provider.
pub struct Oidc {
    pub config: OidcConfig,
    discovered: tokio::sync::OnceCell<Discovered>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Who signed in, as the provider says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInUser {
    pub id: PrincipalId,
    pub groups: BTreeSet<String>,
    /// Where to send the browser now (a local path).
    pub return_to: String,
}

/// A local path to return to after sign-in, or `/`. Anything that a browser
/// could read as another origin (`//host`, `/\host`, `https://…`, control
/// characters) is refused, so the return URL is never an open redirect.
pub fn safe_return(s: &str) -> String {
    let ok = s.starts_with('/')
        && !s.starts_with("//")
        && s.len() <= 2048
        && !s
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
        && !s.starts_with("/login")
        && !s.starts_with("/auth/");
    if ok {
        s.to_string()
    } else {
        "/".to_string()
    }
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Oidc {
        Oidc {
            config,
            discovered: tokio::sync::OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    async fn discovered(&self) -> Result<&Discovered, LoginError> {
        self.discovered
            .get_or_try_init(|| async {
                let issuer = self.config.issuer.clone();
                let url = format!("{issuer}/.well-known/openid-configuration");
                let meta = tokio::task::spawn_blocking(move || fetch_json(&url, false))
                    .await
                    .map_err(|e| LoginError::Unavailable(e.to_string()))?
                    .map_err(LoginError::Unavailable)?;
                let field = |k: &str| {
                    meta.get(k)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            LoginError::Unavailable(format!("the provider metadata has no {k}"))
                        })
                };
                if field("issuer")?.trim_end_matches('/') != issuer {
                    return Err(LoginError::Unavailable(format!(
                        "the provider calls itself {:?}, not the configured issuer {issuer:?}",
                        field("issuer")?
                    )));
                }
                let authorization_endpoint = field("authorization_endpoint")?;
                let token_endpoint = field("token_endpoint")?;
                let jwks_uri = field("jwks_uri")?;
                for u in [&authorization_endpoint, &token_endpoint, &jwks_uri] {
                    crate::jwt::check_url(u, false).map_err(LoginError::Unavailable)?;
                }
                // Accept the issuer with and without a trailing slash: both
                // spellings occur in the wild (and are the same issuer).
                let verifier = JwtVerifier::new(VerifierConfig::new(
                    vec![issuer.clone(), format!("{issuer}/")],
                    vec![self.config.client_id.clone()],
                    KeySource::Jwks(jwks_uri),
                ));
                Ok(Discovered {
                    authorization_endpoint,
                    token_endpoint,
                    verifier,
                })
            })
            .await
    }

    /// Starts a sign-in: returns the provider URL to redirect to and the
    /// `state` (which the caller also binds to the browser with a cookie).
    pub async fn begin(&self, return_to: &str) -> Result<(String, String), LoginError> {
        let d = self.discovered().await?;
        let rand = || {
            crate::web::session::random_token().map_err(|e| LoginError::Unavailable(e.to_string()))
        };
        let state = rand()?;
        let nonce = rand()?;
        let verifier = rand()?;
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        {
            let mut p = self.pending.lock().map_err(|_| LoginError::Busy)?;
            p.retain(|_, v| v.created.elapsed() < LOGIN_TTL);
            if p.len() >= MAX_PENDING {
                return Err(LoginError::Busy);
            }
            p.insert(
                state.clone(),
                Pending {
                    nonce: nonce.clone(),
                    verifier,
                    return_to: safe_return(return_to),
                    created: Instant::now(),
                },
            );
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((format!("{}{sep}{query}", d.authorization_endpoint), state))
    }

    /// Completes a sign-in. The state is used up whatever happens next, so
    /// a replayed callback is always refused.
    pub async fn finish(&self, state: &str, code: &str) -> Result<SignedInUser, LoginError> {
        let pending = self
            .pending
            .lock()
            .map_err(|_| LoginError::Busy)?
            .remove(state)
            .filter(|p| p.created.elapsed() < LOGIN_TTL)
            .ok_or(LoginError::UnknownState)?;
        if code.is_empty() || code.len() > 4096 {
            return Err(LoginError::Provider("no authorization code".into()));
        }
        let d = self.discovered().await?;
        let id_token = self.exchange(d, code, &pending.verifier).await?;
        let verified = d
            .verifier
            .verify(&id_token)
            .await
            .map_err(|e| LoginError::Token(e.to_string()))?;
        if verified.str_claim("nonce") != Some(pending.nonce.as_str()) {
            return Err(LoginError::Token(
                "the nonce does not match this sign-in".into(),
            ));
        }
        if let Some(azp) = verified.str_claim("azp") {
            if azp != self.config.client_id {
                return Err(LoginError::Token(format!(
                    "the token was issued to another client ({azp})"
                )));
            }
        }
        let claim = &self.config.username_claim;
        let name = verified.str_claim(claim).ok_or_else(|| {
            LoginError::Token(format!(
                "the ID token has no {claim:?} claim; set [oidc] username_claim to a claim your provider sends"
            ))
        })?;
        // An email address names a person only once the provider checked
        // it: where users type their own (self-registration, a changeable
        // profile field) anyone could claim a reviewer's.
        if claim == "email" && !email_verified(verified.claims.get("email_verified")) {
            return Err(LoginError::Token(format!(
                "the provider has not verified the email {name:?} (email_verified is not true); sign-in by email needs a verified address, or set [oidc] username_claim to a name users cannot choose"
            )));
        }
        let id: PrincipalId = format!("user:{name}").parse().map_err(|e| {
            LoginError::Token(format!("{claim} {name:?} is not a usable user name: {e}"))
        })?;
        let raw_groups = self
            .config
            .groups_claim
            .as_ref()
            .map(|g| crate::identity::groups_from_claim(verified.claims.get(g)))
            .unwrap_or_default();
        let groups = if self.config.group_map.is_empty() {
            raw_groups.into_iter().collect()
        } else {
            raw_groups
                .iter()
                .filter_map(|g| self.config.group_map.get(g))
                .flatten()
                .cloned()
                .collect()
        };
        Ok(SignedInUser {
            id,
            groups,
            return_to: pending.return_to,
        })
    }

    async fn exchange(
        &self,
        d: &Discovered,
        code: &str,
        verifier: &str,
    ) -> Result<String, LoginError> {
        let c = &self.config;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", c.redirect_url.clone()),
            ("code_verifier", verifier.to_string()),
            ("client_id", c.client_id.clone()),
        ];
        let mut basic = None;
        if let Some(secret) = &c.client_secret {
            if c.secret_in_body {
                form.push(("client_secret", secret.clone()));
            } else {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                basic = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!(
                        "{}:{}",
                        enc(&c.client_id),
                        enc(secret)
                    ))
                ));
            }
        }
        let url = d.token_endpoint.clone();
        let resp = tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .redirects(0)
                .build();
            let mut r = agent.post(&url).set("Accept", "application/json");
            if let Some(b) = &basic {
                r = r.set("Authorization", b);
            }
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match r.send_form(&pairs) {
                Ok(resp) => resp
                    .into_json::<Value>()
                    .map_err(|e| LoginError::Unavailable(format!("token endpoint: {e}"))),
                Err(ureq::Error::Status(status, resp)) => {
                    let body: Value = resp.into_json().unwrap_or(Value::Null);
                    let err = body.get("error").and_then(Value::as_str).unwrap_or("error");
                    let desc = body
                        .get("error_description")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    Err(LoginError::Provider(
                        format!("{status} {err} {desc}").trim().to_string(),
                    ))
                }
                Err(e) => Err(LoginError::Unavailable(format!("token endpoint: {e}"))),
            }
        })
        .await
        .map_err(|e| LoginError::Unavailable(e.to_string()))??;
        resp.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                LoginError::Provider(
                    "the token response has no id_token (is the openid scope granted?)".into(),
                )
            })
    }
}

/// `email_verified` as providers send it: `true`, or the string `"true"`
/// (some send booleans as strings).
fn email_verified(v: Option<&serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_stay_local() {
        for ok in ["/", "/requests/req_1", "/inbox?x=1", "/requests/a%2Fb"] {
            assert_eq!(safe_return(ok), ok);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/\t/evil.example",
            "/%0a",
            "",
            "javascript:alert(1)",
            "/login?return=//evil",
            "/auth/callback",
        ] {
            let got = safe_return(bad);
            if bad == "/%0a" {
                // Percent-encoded bytes stay in the path; still local.
                assert_eq!(got, bad);
            } else {
                assert_eq!(got, "/", "{bad:?}");
            }
        }
    }
}
