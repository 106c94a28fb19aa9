//! Who a caller is, beyond static bearer tokens: principals from workload
//! identity JWTs (`[[identity.jwt]]`) and from OpenID Connect sign-in.
//!
//! Both end in [`principal_for`], which merges what the token says with the
//! `[[principals]]` entry of the same id, so an agent's configured `owner`
//! (separation of duties) and configured groups hold however it signed in.

use std::collections::BTreeSet;
use std::sync::Arc;

use secondkey_core::principal::{Principal, PrincipalId, PrincipalKind};
use serde_json::Value;

use crate::config::{Config, JwtIssuerConfig};
use crate::jwt::{peek_issuer, JwtVerifier, VerifierConfig};

/// The principal `id` as the gateway knows it: the configured entry's owner
/// and groups, plus `extra_groups` from the identity provider.
pub fn principal_for(
    config: &Config,
    id: PrincipalId,
    extra_groups: BTreeSet<String>,
) -> Principal {
    match config.principals.get(id.as_str()) {
        Some(p) => {
            let mut p = p.clone();
            p.groups.extend(extra_groups);
            p
        }
        None => Principal {
            id,
            owner: None,
            groups: extra_groups,
            subjects: Default::default(),
        },
    }
}

/// Who a web sign-in is: the principal that pins the provider account
/// `subject` (`oidc_subjects`), whatever the username claim says; else
/// `user:<username>` (`named`) — refused when that principal pins other
/// accounts only, or, with `[oidc] require_configured`, when no principal of
/// that id is configured.
pub fn web_principal(
    config: &Config,
    named: PrincipalId,
    subject: &str,
) -> Result<PrincipalId, String> {
    if let Some(p) = config
        .principals
        .values()
        .find(|p| p.subjects.contains(subject))
    {
        return Ok(p.id.clone());
    }
    let require = config.oidc.as_ref().is_some_and(|o| o.require_configured);
    match config.principals.get(named.as_str()) {
        Some(p) if !p.subjects.is_empty() => Err(format!(
            "{named} signs in only with the accounts its oidc_subjects pin, not {subject:?}"
        )),
        None if require => Err(format!(
            "{named} ({subject:?}) is not a configured principal, and [oidc] require_configured is set; add it to [[principals]] (or pin the account with oidc_subjects)"
        )),
        _ => Ok(named),
    }
}

/// Group names from a claim: a JSON array of strings (or one string).
/// Values that could not be group names (empty, with `,` or `"`) are dropped.
pub fn groups_from_claim(v: Option<&Value>) -> Vec<String> {
    let items: Vec<&str> = match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => vec![],
    };
    items
        .into_iter()
        .filter(|g| !g.is_empty() && g.len() <= 256 && !g.contains(',') && !g.contains('"'))
        .map(str::to_string)
        .collect()
}

/// What a bearer token proved beyond who the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credential {
    /// The `[[identity.jwt]]` issuer of a workload token whose principal no
    /// `[[principals]]` entry names: such principals are counted per issuer
    /// too, so minting fresh subjects buys no fresh long-polls or streams.
    pub unconfigured_issuer: Option<String>,
    /// The human a verified RFC 8693 delegation token (`act` claim) says
    /// the caller acts for: what backs an `on_behalf_of` naming them.
    pub acting_for: Option<PrincipalId>,
    /// For a workload token whose `agent:NAME` or `service:NAME` no
    /// `[[principals]]` entry names (so it has no owner): `user:NAME`, who
    /// never reviews what it asks. With one identity provider for web
    /// sign-in and workload tokens, that is the same person signed in twice.
    pub namesake: Option<PrincipalId>,
    /// When a workload token stops being valid (its `exp`, Unix seconds):
    /// what it opened that lasts (an event stream) ends then.
    pub expires_at: Option<i64>,
}

impl Credential {
    /// How long from now something this credential opens may last: `max`,
    /// or less when the token expires sooner (nothing once it has).
    pub fn lifetime(&self, max: std::time::Duration) -> std::time::Duration {
        let Some(exp) = self.expires_at else {
            return max;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let left = (exp as f64 - now).max(0.0);
        max.min(std::time::Duration::from_secs_f64(left))
    }
}

/// How an identity-provider account is written in [`Principal::subjects`]
/// and in `oidc_subjects`: `<issuer>|<sub>`, the issuer without a trailing
/// slash (providers write it both ways).
pub fn subject_key(issuer: &str, sub: &str) -> String {
    format!("{}|{sub}", issuer.trim_end_matches('/'))
}

/// Runtime state of the workload identity providers (their key caches).
#[derive(Debug, Default)]
pub struct Identity {
    issuers: Vec<(JwtIssuerConfig, Arc<JwtVerifier>)>,
}

impl Identity {
    pub fn new(config: &Config) -> Identity {
        let issuers = config
            .jwt_issuers
            .iter()
            .map(|c| {
                let mut vc = VerifierConfig::new(
                    vec![c.issuer.clone()],
                    c.audiences.clone(),
                    c.keys.clone(),
                );
                vc.algorithms = c.algorithms.clone();
                vc.leeway = c.leeway;
                vc.cache_ttl = c.keys_ttl;
                (c.clone(), Arc::new(JwtVerifier::new(vc)))
            })
            .collect();
        Identity { issuers }
    }

    /// Whether any workload identity provider is configured.
    pub fn accepts_jwts(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Authenticates a workload JWT: the issuer named in the token picks the
    /// verifier, which checks everything; then the principal claim becomes a
    /// principal id (folded to lowercase, like every id). With
    /// `delegation_user_claim` set, a token carrying an RFC 8693 `act`
    /// claim authenticates its actor (`act.sub`) and backs its acting for
    /// the human named by that claim.
    pub async fn authenticate(
        &self,
        config: &Config,
        token: &str,
    ) -> Result<(Principal, Credential), String> {
        let iss = peek_issuer(token).ok_or("the token names no issuer")?;
        let (c, verifier) = self
            .issuers
            .iter()
            .find(|(c, _)| c.issuer == iss)
            .ok_or_else(|| format!("tokens from issuer {iss:?} are not accepted"))?;
        let verified = verifier.verify(token).await.map_err(|e| e.to_string())?;
        let (value, acting_for) = match (&c.delegation_user_claim, verified.claims.get("act")) {
            (Some(user_claim), Some(act)) => {
                let actor = act.get("sub").and_then(Value::as_str).ok_or(
                    "the token's act claim has no string sub (RFC 8693 section 4.1); it names no actor",
                )?;
                let user = verified.str_claim(user_claim).ok_or_else(|| {
                    format!("the delegation token has no string claim {user_claim:?} naming the human it acts for")
                })?;
                let human: PrincipalId = format!("user:{user}")
                    .parse()
                    .map_err(|e| format!("claim {user_claim:?} is not a user name: {e}"))?;
                (actor, Some(human))
            }
            _ => {
                let value = verified.str_claim(&c.principal_claim).ok_or_else(|| {
                    format!("the token has no string claim {:?}", c.principal_claim)
                })?;
                (value, None)
            }
        };
        let id: PrincipalId = if c.map.is_empty() {
            format!("{}:{value}", c.principal_kind.as_str())
                .parse()
                .map_err(|e| {
                    format!("claim {:?} is not a principal name: {e}", c.principal_claim)
                })?
        } else {
            c.map
                .get(value)
                .cloned()
                .ok_or_else(|| format!("subject {value:?} is not mapped to a principal"))?
        };
        let configured = config.principals.contains_key(id.as_str());
        if c.require_configured && !configured {
            return Err(format!("{id} is not a configured principal"));
        }
        let namesake = match id.kind() {
            PrincipalKind::User => None,
            _ if configured => None,
            _ => format!("user:{}", id.name()).parse().ok(),
        };
        let credential = Credential {
            unconfigured_issuer: (!configured).then(|| c.issuer.clone()),
            acting_for,
            namesake,
            // A NumericDate may have a fraction (RFC 7519 section 2).
            expires_at: verified
                .claims
                .get("exp")
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64))),
        };
        let mut principal = principal_for(config, id, BTreeSet::new());
        // The account the token was issued for (for a delegation token, the
        // human it acts for): whoever signs in with it is the same person.
        if let Some(sub) = verified.str_claim("sub") {
            principal.subjects.insert(subject_key(&c.issuer, sub));
        }
        Ok((principal, credential))
    }
}
