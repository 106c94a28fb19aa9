//! Web sessions of signed-in humans, and the extractors other routes use.
//!
//! A session is a cookie the gateway signs (HMAC-SHA256 with a key kept in
//! `data_dir/keys/session.key`): it names the principal, the groups the
//! identity provider gave it, an id and an expiry. Nothing is stored
//! server-side except the ids of sessions that signed out before they
//! expired, so sessions survive restarts and a forged or altered cookie is
//! simply not a session. The principal is re-resolved against the current
//! `[[principals]]` on every request, so configuration changes apply at once.
//!
//! Signing out is recorded (records namespace `web.signed_out`) and loaded
//! at start, so a signed-out cookie stays dead across restarts. So is the
//! end of all of one person's sessions (see [`super::revocation`]): every
//! session of that principal issued up to that instant is no session. A
//! start that cannot load them all is refused (it would revive some).
//!
//! Cookies are `HttpOnly`, `SameSite=Lax` and, when `public_url` is https,
//! `Secure` with the `__Host-` prefix. Every state-changing form carries a
//! CSRF token bound to the session ([`Posted`] checks it, and refuses
//! cross-site `Origin`/`Sec-Fetch-Site`), so a page elsewhere cannot make a
//! signed-in browser decide anything.
//!
//! Routes that need a signed-in human take [`SignedIn`] (GET: redirects to
//! sign-in and back) or [`Posted`] (POST: session + CSRF + form fields).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use secondkey_core::principal::{Principal, PrincipalId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::AppState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a session cookie carries (signed, not encrypted: nothing secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionClaims {
    /// Random session id (revocation, CSRF binding).
    pub sid: String,
    /// The principal id, `user:<name>`.
    pub sub: String,
    /// Groups from the identity provider (after `group_map`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The provider's account, `<issuer>|<sub>`: who signed in, whatever
    /// principal id that became (see [`Principal::subjects`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
    /// When it was issued, Unix milliseconds (cookies made before this
    /// field existed lack it): what a revocation of all of the principal's
    /// sessions compares, so a sign-in right after one counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<i64>,
}

impl SessionClaims {
    /// When the session was issued, Unix milliseconds (a cookie without
    /// `iat_ms`: the start of its `iat` second, so it predates any
    /// revocation in that second).
    pub fn issued_ms(&self) -> i64 {
        self.iat_ms.unwrap_or(self.iat.saturating_mul(1000))
    }
}

/// Signing and checking of session cookies; sign-out list.
pub struct Sessions {
    key: [u8; 32],
    secure: bool,
    /// Signed-out session ids → their expiry (pruned as they expire).
    revoked: Mutex<HashMap<String, i64>>,
    /// Principal id → Unix milliseconds: its sessions issued at or before
    /// are void ([`super::revocation`]). One entry per person ever revoked.
    ended: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 under `key` over `parts`, each prefixed with its length, so
/// no two different lists of parts are the same input.
pub(super) fn mac(key: &[u8; 32], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A fresh random token (32 bytes, base64url).
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)?;
    Ok(B64.encode(b))
}

impl Sessions {
    /// `secure`: cookies get `Secure` and the `__Host-` prefix (https).
    pub fn new(key: [u8; 32], secure: bool) -> Sessions {
        Sessions {
            key,
            secure,
            revoked: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
        }
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-sk_session"
        } else {
            "sk_session"
        }
    }

    /// Whether cookies are `Secure`.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Signs a new session's claims into a cookie value.
    pub fn encode(&self, claims: &SessionClaims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = B64.encode(mac(&self.key, &[b"session", payload.as_bytes()]));
        format!("{payload}.{sig}")
    }

    /// Checks a cookie value: signature, expiry (against `now`, Unix
    /// seconds) and sign-out. Anything else is no session.
    pub fn decode(&self, value: &str, now: i64) -> Option<SessionClaims> {
        if value.len() > 8192 {
            return None;
        }
        let (payload, sig) = value.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        if !ct_eq(&sig, &mac(&self.key, &[b"session", payload.as_bytes()])) {
            return None;
        }
        let claims: SessionClaims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        self.holds(&claims, now).then_some(claims)
    }

    /// Whether a session (its cookie already checked) still holds as this
    /// replica's memory knows: not expired (`now`, Unix seconds), not
    /// signed out, not ended with all of its principal's sessions.
    pub fn holds(&self, claims: &SessionClaims, now: i64) -> bool {
        if claims.exp <= now {
            return false;
        }
        if self
            .revoked
            .lock()
            .map(|r| r.contains_key(&claims.sid))
            .unwrap_or(true)
        {
            return false;
        }
        // Keyed by the one spelling of the id (a cookie only ever holds
        // that one, but the key is what matters here).
        let Ok(user) = PrincipalId::parse(&claims.sub) else {
            return false;
        };
        self.ended_before(user.as_str())
            .is_none_or(|before| claims.issued_ms() > before)
    }

    /// Voids every session of principal `user` issued at or before
    /// `before_ms` (Unix milliseconds); a later call never moves the
    /// instant back.
    pub fn end_all_of(&self, user: &str, before_ms: i64) {
        if let Ok(mut e) = self.ended.lock() {
            let at = e.entry(user.to_string()).or_insert(before_ms);
            *at = (*at).max(before_ms);
        }
    }

    /// Seals `plaintext` for `label` under this gateway's session key
    /// (see [`super::seal`]): state a browser keeps but cannot read or change.
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Result<String, super::seal::SealError> {
        super::seal::seal(&self.key, label, plaintext)
    }

    /// The plaintext of a value [`Sessions::seal`]ed for `label` by a
    /// gateway with the same session key, or nothing.
    pub fn open(&self, label: &str, sealed: &str) -> Option<Vec<u8>> {
        super::seal::open(&self.key, label, sealed)
    }

    /// The CSRF token of a session: derived from its id with the key, so it
    /// needs no storage and is useless with any other session.
    pub fn csrf_token(&self, sid: &str) -> String {
        B64.encode(mac(&self.key, &[b"csrf", sid.as_bytes()]))
    }

    /// Ends a session before its expiry.
    pub fn revoke(&self, claims: &SessionClaims, now: i64) {
        if let Ok(mut r) = self.revoked.lock() {
            r.retain(|_, exp| *exp > now);
            r.insert(claims.sid.clone(), claims.exp);
        }
    }

    /// Loads the sign-outs and the ends of all of a person's sessions
    /// recorded in the store (at start). On an embedded store this memory
    /// is the whole truth, so a record that cannot be read, or holds no
    /// number, is an error the gateway does not start with: skipping it
    /// would bring the session it ended back to life.
    pub fn load_revoked(
        &self,
        store: &secondkey_store::Store,
        now: i64,
    ) -> Result<(), secondkey_store::StoreError> {
        store.for_each_record(ENDED_NS, |user, before| {
            self.end_all_of(user, parse_record(ENDED_NS, user, before)?);
            Ok::<_, secondkey_store::StoreError>(())
        })?;
        store.for_each_record(SIGNED_OUT_NS, |sid, exp| {
            let exp = parse_record(SIGNED_OUT_NS, sid, exp)?;
            if exp > now {
                self.revoked
                    .lock()
                    .map_err(|_| corrupt("the sign-out list's lock is poisoned".into()))?
                    .insert(sid.to_string(), exp);
            }
            Ok(())
        })
    }

    /// The instant (Unix milliseconds) at or before which `user`'s
    /// sessions are void, as this replica knows it (a poisoned lock: all
    /// of them).
    pub fn ended_before(&self, user: &str) -> Option<i64> {
        self.ended
            .lock()
            .map(|e| e.get(user).copied())
            .unwrap_or(Some(i64::MAX))
    }

    /// `Set-Cookie` for a new session.
    pub fn set_cookie(&self, value: &str, max_age: i64) -> String {
        self.cookie_header(self.cookie_name(), value, max_age)
    }

    /// `Set-Cookie` for cookie `name` with the attributes every gateway
    /// cookie has (`HttpOnly`, `SameSite=Lax`, `Secure` on https).
    pub fn cookie_header(&self, name: &str, value: &str, max_age: i64) -> String {
        format!(
            "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        self.set_cookie("", 0)
    }
}

/// Records namespace of signed-out session ids (value: their expiry).
pub const SIGNED_OUT_NS: &str = "web.signed_out";

/// Records namespace of people whose sessions were all ended: key the
/// principal id, value the instant (Unix milliseconds) at or before which
/// its sessions were issued to be void.
pub const ENDED_NS: &str = "web.sessions_ended";

fn corrupt(why: String) -> secondkey_store::StoreError {
    secondkey_store::StoreError::Corrupt(why)
}

/// The number a sign-out or ended-sessions record holds. Anything else
/// names the record and how to mend it: skipped, it would sign the
/// sessions it ended back in.
fn parse_record(ns: &str, key: &str, value: &str) -> Result<i64, secondkey_store::StoreError> {
    value.parse().map_err(|_| {
        let fix = if ns == ENDED_NS {
            "the current Unix time in milliseconds (that person's sessions issued until then stay ended)"
        } else {
            "a Unix time in seconds after the session's expiry, e.g. 4102444800"
        };
        corrupt(format!(
            "record {ns}/{key} holds {value:?}, not a number; skipped, it would sign the sessions it ended back in. Restore the store from a backup, or set the value to {fix}"
        ))
    })
}

/// The value of cookie `name`, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Unix seconds from the gateway's clock.
pub fn now_secs(g: &Gateway) -> i64 {
    g.now().0 / 1000
}

/// A signed-in human, for any route that needs one.
///
/// On a GET without a valid session it redirects to sign-in and back to
/// the same path; otherwise it answers 401. The principal is the configured
/// `[[principals]]` entry of the same id (if any) with the provider's groups
/// added, so ownership and separation of duties apply.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub session: SessionClaims,
    /// Put this in a hidden `csrf` field of every form that changes state.
    pub csrf: String,
}

/// Why a web route refused: sign-in needed, or an HTML error page.
#[derive(Debug)]
pub enum WebReject {
    /// Redirect to sign-in, then back to this local path.
    SignIn(String),
    /// An error page with this status and message.
    Page(StatusCode, String),
}

impl IntoResponse for WebReject {
    fn into_response(self) -> Response {
        match self {
            WebReject::SignIn(back) => {
                let q = form_urlencoded::Serializer::new(String::new())
                    .append_pair("return", &back)
                    .finish();
                Redirect::to(&format!("/login?{q}")).into_response()
            }
            WebReject::Page(status, msg) => {
                (status, super::pages::error_page(status, &msg)).into_response()
            }
        }
    }
}

impl SignedIn {
    /// The signed-in human of a request, if any.
    pub fn from_headers(g: &Gateway, headers: &HeaderMap) -> Option<SignedIn> {
        let sessions = &g.web.sessions;
        let value = cookie(headers, sessions.cookie_name())?;
        let claims = sessions.decode(value, now_secs(g))?;
        let id: PrincipalId = claims.sub.parse().ok()?;
        let groups: BTreeSet<String> = claims.groups.iter().cloned().collect();
        let mut principal = crate::identity::principal_for(&g.config, id, groups);
        principal.subjects.extend(claims.subject.iter().cloned());
        Some(SignedIn {
            csrf: sessions.csrf_token(&claims.sid),
            principal,
            session: claims,
        })
    }
}

impl SignedIn {
    /// [`SignedIn::from_headers`], if its session still holds
    /// ([`session_holds`]).
    pub async fn current(g: &Gateway, headers: &HeaderMap) -> Option<SignedIn> {
        let s = SignedIn::from_headers(g, headers)?;
        session_holds(g, &s.session).await.then_some(s)
    }
}

/// Signs the session `claims` out: recorded first (namespace
/// [`SIGNED_OUT_NS`]), so the cookie stays dead after a restart and on
/// every replica (records whose session has expired are harmless and
/// skipped at load), then voided in this replica's memory — the whole
/// truth on an embedded store. The two run as one step a dropped caller
/// cannot separate ([`Gateway::commit_then`]): a sign-out the store holds
/// is never one this replica's memory misses until a restart. Nothing
/// changes unless it is recorded.
pub async fn sign_out(g: &Gateway, claims: &SessionClaims) -> Result<(), ApiError> {
    let (sid, exp) = (claims.sid.clone(), claims.exp);
    let (sessions, claims, now) = (g.web.sessions.clone(), claims.clone(), now_secs(g));
    g.commit_then(
        move |tx| tx.put_record(SIGNED_OUT_NS, &sid, &exp.to_string()),
        move |()| sessions.revoke(&claims, now),
    )
    .await?;
    Ok(())
}

/// Whether a session (its cookie already checked) still holds: not
/// expired, not signed out, not ended with all of its principal's sessions
/// ([`super::revocation::ended_before`]). Every web request asks, and so
/// does an open event stream, before each event and at every keep-alive.
/// On an embedded store it is a look into memory. On a store several
/// replicas share, the sign-out and the end are records another replica
/// may have written, read through here (two point reads; none per API
/// call with a token). A store that cannot answer counts as signed out
/// (fail closed).
pub async fn session_holds(g: &Gateway, claims: &SessionClaims) -> bool {
    let sessions = &g.web.sessions;
    if !sessions.holds(claims, now_secs(g)) {
        return false;
    }
    let Ok(user) = PrincipalId::parse(&claims.sub) else {
        return false;
    };
    if g.store.is_shared() {
        let (store, sid) = (g.store.clone(), claims.sid.clone());
        match tokio::task::spawn_blocking(move || store.get_record(SIGNED_OUT_NS, &sid)).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(_))) => {
                sessions.revoke(claims, now_secs(g));
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot check a web session against the sign-outs");
                return false;
            }
            Err(_) => return false,
        }
    }
    match super::revocation::ended_before(g, user.as_str()).await {
        Ok(before) => before.is_none_or(|before| claims.issued_ms() > before),
        Err(e) => {
            tracing::warn!(principal = %user, error = %e, "cannot check a web session against the ended ones; refusing it");
            false
        }
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = WebReject;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebReject> {
        if let Some(s) = SignedIn::current(&state.gateway, &parts.headers).await {
            return Ok(s);
        }
        if state.gateway.web.oidc.is_none() {
            return Err(WebReject::Page(
                StatusCode::UNAUTHORIZED,
                "Web sign-in is not configured on this gateway (no [oidc] section). Use the CLI or the REST API with a token.".into(),
            ));
        }
        if parts.method == Method::GET {
            let back = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            return Err(WebReject::SignIn(back));
        }
        Err(WebReject::Page(
            StatusCode::UNAUTHORIZED,
            "Your session has ended. Sign in again; nothing was changed.".into(),
        ))
    }
}

/// A state-changing form post by a signed-in human, CSRF-checked.
///
/// Refused with 403 (and nothing done) when the `csrf` field is missing or
/// wrong, or the browser says the post comes from another site.
#[derive(Debug, Clone)]
pub struct Posted {
    pub user: SignedIn,
    /// The form's fields in order (a name may repeat, e.g. `id` in batches).
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of field `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Refuses a post the browser marks as coming from another origin.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let public_origin = public_url
                .splitn(4, '/')
                .take(3)
                .collect::<Vec<_>>()
                .join("/");
            origin.eq_ignore_ascii_case(&public_origin)
        }
    }
}

impl FromRequest<AppState> for Posted {
    type Rejection = WebReject;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, WebReject> {
        let (mut parts, body) = req.into_parts();
        let user = SignedIn::from_request_parts(&mut parts, state).await?;
        let forbidden = |m: &str| WebReject::Page(StatusCode::FORBIDDEN, m.to_string());
        if !same_origin(&parts.headers, &state.gateway.config.public_url) {
            return Err(forbidden(
                "This form was posted from another site. Nothing was changed.",
            ));
        }
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(WebReject::Page(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected a form post.".into(),
            ));
        }
        let bytes = axum::body::to_bytes(body, 256 * 1024).await.map_err(|_| {
            WebReject::Page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.".into(),
            )
        })?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !ct_eq(sent.as_bytes(), user.csrf.as_bytes()) {
            return Err(forbidden(
                "The form's security token is missing or stale (reload the page and try again). Nothing was changed.",
            ));
        }
        Ok(Posted { user, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> SessionClaims {
        SessionClaims {
            sid: "s1".into(),
            sub: "user:alice".into(),
            groups: vec!["dba".into()],
            subject: None,
            iat: 0,
            exp,
            iat_ms: None,
        }
    }

    #[test]
    fn cookies_are_signed_expire_and_can_be_revoked() {
        let s = Sessions::new([7; 32], false);
        let v = s.encode(&claims(100));
        assert_eq!(s.decode(&v, 50), Some(claims(100)));
        assert_eq!(s.decode(&v, 100), None, "expired");
        // Another key, an altered payload, an altered signature, junk.
        assert_eq!(Sessions::new([8; 32], false).decode(&v, 50), None);
        let (p, sig) = v.split_once('.').unwrap();
        let mut forged = claims(100);
        forged.groups.push("admins".into());
        let fp = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(s.decode(&format!("{fp}.{sig}"), 50), None);
        assert_eq!(
            s.decode(&format!("{p}.{}", B64.encode([0u8; 32])), 50),
            None
        );
        for junk in ["", ".", "a.b", &"x".repeat(10_000)] {
            assert_eq!(s.decode(junk, 50), None);
        }
        s.revoke(&claims(100), 50);
        assert_eq!(s.decode(&v, 50), None, "signed out");
        // CSRF tokens differ per session and per key.
        assert_ne!(s.csrf_token("s1"), s.csrf_token("s2"));
        assert_ne!(
            s.csrf_token("s1"),
            Sessions::new([8; 32], false).csrf_token("s1")
        );
    }

    #[test]
    fn ending_all_of_a_person_s_sessions_voids_those_issued_until_then() {
        let s = Sessions::new([7; 32], false);
        let at = |sub: &str, iat_ms: Option<i64>| SessionClaims {
            sid: format!("{sub}{iat_ms:?}"),
            sub: sub.into(),
            iat: 5,
            iat_ms,
            ..claims(100)
        };
        let before = at("user:alice", Some(5_400));
        let same = at("user:alice", Some(5_500));
        let after = at("user:alice", Some(5_501));
        let old = at("user:alice", None); // iat 5 s, no milliseconds
        let other = at("user:bob", Some(5_000));
        s.end_all_of("user:alice", 5_500);
        for (c, alive) in [
            (&before, false),
            (&same, false),
            (&after, true),
            (&old, false),
            (&other, true),
        ] {
            assert_eq!(s.decode(&s.encode(c), 50).is_some(), alive, "{c:?}");
        }
        // An earlier instant (another replica's clock) never revives one.
        s.end_all_of("user:alice", 1_000);
        assert_eq!(s.decode(&s.encode(&same), 50), None);
        assert!(s.decode(&s.encode(&after), 50).is_some());
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_read_fails_the_load_and_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            secondkey_store::Store::open(secondkey_store::StoreOptions::new(dir.path())).unwrap();
        let put = |ns: &'static str, key: &'static str, value: &'static str| {
            let store = store.clone();
            async move {
                store
                    .transact(move |tx| tx.put_record(ns, key, value))
                    .await
                    .unwrap()
            }
        };
        put(ENDED_NS, "user:alice", "5500").await;
        put(SIGNED_OUT_NS, "s1", "100").await;
        let s = Sessions::new([7; 32], false);
        s.load_revoked(&store, 50).unwrap();
        assert_eq!(s.ended_before("user:alice"), Some(5_500));
        assert_eq!(s.decode(&s.encode(&claims(100)), 50), None, "signed out");

        for (ns, key) in [(ENDED_NS, "user:bob"), (SIGNED_OUT_NS, "s2")] {
            put(ns, key, "soon").await;
            let e = Sessions::new([7; 32], false)
                .load_revoked(&store, 50)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{ns}/{key}")) && e.contains("soon"),
                "{e}"
            );
            put(ns, key, "4102444800").await;
        }
    }

    #[test]
    fn cookie_attributes() {
        let s = Sessions::new([7; 32], true);
        let c = s.set_cookie("v", 60);
        assert!(c.starts_with("__Host-sk_session=v; Path=/;"), "{c}");
        for a in ["HttpOnly", "SameSite=Lax", "Secure"] {
            assert!(c.contains(a), "{c}");
        }
        assert!(!Sessions::new([7; 32], false)
            .set_cookie("v", 60)
            .contains("Secure"));
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "https://sk.example"));
        h.insert(header::ORIGIN, "https://sk.example".parse().unwrap());
        assert!(same_origin(&h, "https://sk.example"));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h, "https://sk.example"));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h, "https://sk.example"));
    }
}
