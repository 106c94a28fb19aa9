//! OpenID Connect sign-in: authorization code flow with PKCE (S256),
//! `state` and `nonce`, against any standard provider (Okta, Entra ID,
//! Google, Keycloak).
//!
//! `begin` draws a random `state`, `nonce` and PKCE verifier and sends the
//! browser to the provider; the sign-in's [`LoginState`] travels in the
//! browser's login cookie, sealed with the session key (see
//! [`super::seal`]), so the gateway keeps no memory per sign-in: a flood
//! of `/login` costs it nothing, and any replica with the same session key
//! completes a sign-in another one started. `finish` takes the state back
//! (the `state` the provider returns must equal the sealed one, compared
//! in constant time: no login CSRF), exchanges the code (with the PKCE
//! verifier and the client secret) at the token endpoint, and verifies the
//! ID token through [`crate::jwt::JwtVerifier`] — signature from the
//! provider's JWKS, issuer, audience = client id, lifetime — and its
//! `nonce`. The provider's metadata is discovered on first use and its
//! `issuer` must equal the configured one.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use secondkey_core::principal::PrincipalId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::OidcConfig;
use crate::jwt::{fetch_json, JwtVerifier, KeySource, VerifierConfig};
use crate::web::session::Sessions;

/// How long a sign-in may take between leaving for the provider and coming back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How far ahead of this replica's clock a sign-in may say it started
/// (another replica's clock may run a little fast).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The label login cookies are sealed under.
const SEAL_LABEL: &str = "login";

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
}

/// A sign-in in progress, kept by the browser in the login cookie, sealed:
/// only a gateway holding the session key reads or makes one. It holds the
/// PKCE verifier and the nonce, so it must never travel unsealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` sent to the provider.
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    nonce: String,
    #[serde(rename = "v")]
    verifier: String,
    /// Where to send the browser once signed in (a local path).
    #[serde(rename = "r")]
    pub return_to: String,
    /// When the sign-in started, Unix seconds.
    #[serde(rename = "t")]
    pub created: i64,
}

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("return_to", &self.return_to)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl LoginState {
    /// The cookie value: this state sealed with the session key.
    pub fn seal(&self, sessions: &Sessions) -> Result<String, LoginError> {
        let json = serde_json::to_vec(self).map_err(|e| LoginError::Unavailable(e.to_string()))?;
        sessions
            .seal(SEAL_LABEL, &json)
            .map_err(|e| LoginError::Unavailable(e.to_string()))
    }

    /// The sign-in a cookie value holds, if it was sealed with this session
    /// key and started less than [`LOGIN_TTL`] before `now` (Unix seconds).
    /// Anything else — altered, cut, too long, another key, expired — is
    /// nothing.
    pub fn open(sessions: &Sessions, value: &str, now: i64) -> Option<LoginState> {
        let json = sessions.open(SEAL_LABEL, value)?;
        let s: LoginState = serde_json::from_slice(&json).ok()?;
        let age = now.checked_sub(s.created)?;
        let fresh = age < LOGIN_TTL.as_secs() as i64 && age >= -(CLOCK_SKEW.as_secs() as i64);
        fresh.then_some(s)
    }
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
    /// The provider's account, `<issuer>|<sub>` (see
    /// [`crate::identity::subject_key`]).
    pub subject: String,
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

    /// Starts a sign-in at `now` (Unix seconds): returns the provider URL
    /// to redirect to and the sign-in's state, which the caller seals into
    /// the browser's login cookie. Nothing is kept here.
    pub async fn begin(
        &self,
        return_to: &str,
        now: i64,
    ) -> Result<(String, LoginState), LoginError> {
        let d = self.discovered().await?;
        let rand = || {
            crate::web::session::random_token().map_err(|e| LoginError::Unavailable(e.to_string()))
        };
        let state = rand()?;
        let nonce = rand()?;
        let verifier = rand()?;
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
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
        let login = LoginState {
            state,
            nonce,
            verifier,
            return_to: safe_return(return_to),
            created: now,
        };
        Ok((format!("{}{sep}{query}", d.authorization_endpoint), login))
    }

    /// Completes the sign-in `login` (opened from the browser's login
    /// cookie) with the `state` and `code` the provider sent back. The state
    /// must be the sealed one: a callback meant for another browser, or for
    /// another sign-in of this one, is refused before the provider is asked.
    pub async fn finish(
        &self,
        login: &LoginState,
        state: &str,
        code: &str,
    ) -> Result<SignedInUser, LoginError> {
        if state.is_empty() || !crate::web::session::ct_eq(state.as_bytes(), login.state.as_bytes())
        {
            return Err(LoginError::UnknownState);
        }
        if code.is_empty() || code.len() > 4096 {
            return Err(LoginError::Provider("no authorization code".into()));
        }
        let d = self.discovered().await?;
        let id_token = self.exchange(d, code, &login.verifier).await?;
        let verified = d
            .verifier
            .verify(&id_token)
            .await
            .map_err(|e| LoginError::Token(e.to_string()))?;
        if verified.str_claim("nonce") != Some(login.nonce.as_str()) {
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
        // Every ID token names its account (OpenID Connect Core 2): the
        // one thing that tells this person from a namesake elsewhere.
        let subject = verified
            .str_claim("sub")
            .map(|sub| crate::identity::subject_key(&self.config.issuer, sub))
            .ok_or_else(|| LoginError::Token("the ID token has no sub claim".into()))?;
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
        // With `[oidc.group_map]` (even an empty one) only its targets
        // count; without it, the provider's groups as sent.
        let groups = match &self.config.group_map {
            None => raw_groups.into_iter().collect(),
            Some(map) => raw_groups
                .iter()
                .filter_map(|g| map.get(g))
                .flatten()
                .cloned()
                .collect(),
        };
        Ok(SignedInUser {
            id,
            groups,
            subject,
            return_to: login.return_to.clone(),
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

    fn login(created: i64) -> LoginState {
        LoginState {
            state: "st".into(),
            nonce: "no".into(),
            verifier: "ve".into(),
            return_to: "/inbox".into(),
            created,
        }
    }

    #[test]
    fn login_cookies_open_with_the_key_and_expire() {
        let s = Sessions::new([7; 32], false);
        let v = login(1000).seal(&s).unwrap();
        assert_eq!(LoginState::open(&s, &v, 1000), Some(login(1000)));
        // Another replica whose clock is a little behind still opens it.
        assert!(LoginState::open(&s, &v, 1000 - 60).is_some());
        assert_eq!(LoginState::open(&s, &v, 1000 - 61), None, "from the future");
        assert!(LoginState::open(&s, &v, 1000 + 599).is_some());
        assert_eq!(LoginState::open(&s, &v, 1000 + 600), None, "expired");
        // Another key; a session cookie's label.
        assert_eq!(
            LoginState::open(&Sessions::new([8; 32], false), &v, 1000),
            None
        );
        let session = s
            .seal("session", &serde_json::to_vec(&login(1000)).unwrap())
            .unwrap();
        assert_eq!(LoginState::open(&s, &session, 1000), None);
        // Sealed, but not a sign-in.
        let other = s.seal(SEAL_LABEL, b"{}").unwrap();
        assert_eq!(LoginState::open(&s, &other, 1000), None);
        // The secrets do not show in Debug output.
        let dbg = format!("{:?}", login(1000));
        assert!(!dbg.contains("\"ve\"") && !dbg.contains("\"no\""), "{dbg}");
    }

    #[tokio::test]
    async fn a_state_other_than_the_sealed_one_is_refused_before_the_provider() {
        // The issuer is unreachable: a refusal here comes before any call.
        let oidc = Oidc::new(OidcConfig {
            issuer: "http://127.0.0.1:1".into(),
            client_id: "c".into(),
            client_secret: None,
            redirect_url: "http://127.0.0.1:2/auth/callback".into(),
            scopes: vec!["openid".into()],
            username_claim: "sub".into(),
            groups_claim: None,
            group_map: None,
            session_ttl: Duration::from_secs(60),
            secret_in_body: false,
            require_configured: false,
            review_max_age: Duration::from_secs(3600),
        });
        for state in ["", "s", "st2", "ST"] {
            assert_eq!(
                oidc.finish(&login(0), state, "code").await,
                Err(LoginError::UnknownState),
                "{state:?}"
            );
        }
    }

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
