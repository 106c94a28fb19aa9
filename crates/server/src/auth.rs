//! Bearer-token authentication: static tokens of the configured principals,
//! or JWTs from a workload identity provider (`[[identity.jwt]]`).
//!
//! Static tokens are kept only as SHA-256 hashes; lookup is by hash, so the
//! comparison never touches the secret itself. A JWT is verified by
//! [`crate::identity::Identity`] (signature, issuer, audience, lifetime) and
//! its principal merged with the configured entry of the same id.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use secondkey_core::principal::Principal;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::identity::Credential;
use crate::AppState;

/// SHA-256 of a bearer token, as stored in the config (`token_sha256`).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The value of a principal's `token_sha256` config key for `token`.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(token_hash(token))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Authenticated::from_request_parts(parts, state)
            .await
            .map(|Authenticated(p, _)| Caller(p))
    }
}

/// The caller and what its token proved beyond that (see [`Credential`]):
/// for the handlers whose limits or `on_behalf_of` depend on it.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal, pub Credential);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut all = parts
            .headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter();
        let header = all.next().ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <token>` header")
        })?;
        // Two credentials are ambiguous: a proxy in front may read the other.
        if all.next().is_some() {
            return Err(ApiError::unauthorized(
                "more than one Authorization header; send exactly one",
            ));
        }
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?
            .trim();
        let g = &state.gateway;
        if let Some(p) = g.config.tokens.get(&token_hash(token)) {
            return Ok(Authenticated(p.clone(), Credential::default()));
        }
        if g.identity.accepts_jwts() && crate::jwt::looks_like_jwt(token) {
            return g
                .identity
                .authenticate(&g.config, token)
                .await
                .map(|(p, c)| Authenticated(p, c))
                .map_err(|why| ApiError::unauthorized(format!("JWT refused: {why}")));
        }
        Err(ApiError::unauthorized("unknown token"))
    }
}

/// The caller if a token was sent (and then it must be valid), else `None`:
/// for endpoints that are public in part.
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_none()
        {
            return Ok(MaybeCaller(None));
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(|Caller(p)| MaybeCaller(Some(p)))
    }
}
