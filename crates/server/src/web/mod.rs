//! The reviewer web UI, served by the gateway: OpenID Connect sign-in, an
//! inbox of requests the signed-in human may decide, the request page (the
//! `url` every request carries), batch decisions per agent session, history
//! and the audit page.
//!
//! Server-rendered HTML (`pages`), one vendored stylesheet, and one
//! vendored script only on the request page (live updates, local times),
//! inline under a fresh CSP nonce; every page works without it. What a
//! reviewer reads first comes from [`crate::reviewer`]. The handlers are thin: every decision goes through [`Gateway::review`], the
//! same checks as the REST API (separation of duties, eligibility, quorum,
//! expiry, decided-is-final). GETs never change state; every POST needs a
//! session and its CSRF token ([`session::Posted`]).
//!
//! Other routes that need a signed-in human (e.g. "link your Slack
//! account") use [`SignedIn`] and [`Posted`].

pub mod highlight;
pub mod lineage;
pub mod oidc;
pub mod pages;
pub mod receipt;
pub mod revocation;
pub mod seal;
pub mod session;
pub mod timeline;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use secondkey_core::request::{Request, RequestState, ReviewDecision};
use serde::Deserialize;

use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::AppState;
use session::{now_secs, random_token, SessionClaims, Sessions};
pub use session::{Posted, SignedIn, WebReject};

/// Web UI state: the session signer and the sign-in flow.
#[derive(Debug)]
pub struct WebState {
    /// Shared with the work that records a sign-out or an end of sessions
    /// and then updates this memory, in a task of its own (see
    /// [`session::sign_out`]).
    pub sessions: std::sync::Arc<Sessions>,
    pub oidc: Option<oidc::Oidc>,
}

impl WebState {
    /// `key` signs session cookies (load it with
    /// [`crate::keys::load_or_create_secret`] so sessions survive restarts).
    pub fn new(config: &Config, key: [u8; 32]) -> WebState {
        WebState {
            sessions: std::sync::Arc::new(Sessions::new(
                key,
                config.public_url.starts_with("https://"),
            )),
            oidc: config.oidc.clone().map(oidc::Oidc::new),
        }
    }

    /// With a random key: sessions last until the process ends.
    pub fn ephemeral(config: &Config) -> WebState {
        let mut key = [0u8; 32];
        let _ = getrandom::getrandom(&mut key);
        WebState::new(config, key)
    }
}

/// The routes of the web UI.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/inbox", get(inbox))
        .route("/inbox/batch", post(batch))
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/review", post(review))
        .route("/requests/{id}/events", get(request_events))
        .route("/history", get(history))
        .route("/audit", get(audit))
        .route("/audit/receipt/{index}", get(receipt))
        .route("/lineage", get(lineage::page))
        .route("/assets/app.css", get(css))
}

/// An HTML page with the headers every page gets: never cached, never
/// framed, no script, forms only to this origin.
fn page(status: StatusCode, html: String) -> Response {
    page_with_script(status, html, None)
}

/// [`page`], allowing the one inline script that carries `nonce` (and its
/// event stream to this origin) when there is one.
fn page_with_script(status: StatusCode, html: String, nonce: Option<&str>) -> Response {
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let csp = match nonce {
        None => HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        Some(n) => HeaderValue::from_str(&format!(
            "default-src 'none'; script-src 'nonce-{n}'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
    };
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn ok(html: String) -> Response {
    page(StatusCode::OK, html)
}

/// An API error as an error page; says that nothing changed.
fn api_error_page(e: &ApiError) -> Response {
    let msg = match e.code {
        "self_review" | "not_eligible" | "duplicate_reviewer" | "already_decided" | "expired"
        | "not_found" | "invalid_batch" | "mixed_batch" | "comment_required"
        | "invalid_decision" => {
            format!("{} Nothing was changed.", pages::sentence(&e.message))
        }
        _ => e.message.clone(),
    };
    page(e.status, pages::error_page(e.status, &msg).0)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        pages::CSS,
    )
        .into_response()
}

/// The login cookie of the sign-in whose `state` is `state`: one cookie
/// per sign-in (named by the state's first 16 characters), so several tabs
/// signing in at once do not undo each other. `None` for a state this
/// gateway never makes.
fn login_cookie_name(s: &Sessions, state: &str) -> Option<String> {
    let tag = state.get(..16)?;
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let prefix = if s.secure() { "__Host-" } else { "" };
    Some(format!("{prefix}sk_login_{tag}"))
}

/// `r` with `Set-Cookie: cookie` added.
fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(rename = "return")]
    return_to: Option<String>,
}

/// Starts sign-in at the identity provider. The sign-in's state, nonce and
/// PKCE verifier go into a short-lived login cookie, sealed with the
/// session key ([`oidc::LoginState`]): the gateway remembers nothing, and
/// a callback only completes in the browser that started it (no login
/// CSRF).
async fn login(State(s): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let web = &s.gateway.web;
    let Some(oidc) = &web.oidc else {
        return page(
            StatusCode::NOT_FOUND,
            pages::error_page(
                StatusCode::NOT_FOUND,
                "Web sign-in is not configured (no [oidc] section).",
            )
            .0,
        );
    };
    let back = oidc::safe_return(q.return_to.as_deref().unwrap_or("/"));
    let begun = match oidc.begin(&back, now_secs(&s.gateway)).await {
        Ok((url, login)) => login.seal(&web.sessions).map(|sealed| (url, login, sealed)),
        Err(e) => Err(e),
    };
    match begun {
        Ok((url, login, sealed)) => {
            let Some(name) = login_cookie_name(&web.sessions, &login.state) else {
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    pages::error_page(StatusCode::INTERNAL_SERVER_ERROR, "bad sign-in state").0,
                );
            };
            let cookie =
                web.sessions
                    .cookie_header(&name, &sealed, oidc::LOGIN_TTL.as_secs() as i64);
            let mut r = with_cookie(Redirect::to(&url).into_response(), &cookie);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => page(
            StatusCode::BAD_GATEWAY,
            pages::error_page(StatusCode::BAD_GATEWAY, &e.to_string()).0,
        ),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

const NOT_THIS_BROWSER: &str = "This sign-in was not started in this browser (or its cookie expired). Start again from the gateway.";

/// The provider sends the browser back here with a code and our state.
/// The sign-in's login cookie must open (this gateway's session key, under
/// ten minutes old) and hold that state; every answer after that clears
/// it, so a callback is single use in the browser.
async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let g = &s.gateway;
    let web = &g.web;
    let fail = |status: StatusCode, m: &str| page(status, pages::error_page(status, m).0);
    let Some(oidc) = &web.oidc else {
        return fail(StatusCode::NOT_FOUND, "Web sign-in is not configured.");
    };
    let state = q.state.clone().unwrap_or_default();
    let Some(name) = login_cookie_name(&web.sessions, &state) else {
        return fail(StatusCode::FORBIDDEN, NOT_THIS_BROWSER);
    };
    let login = session::cookie(&headers, &name)
        .and_then(|v| oidc::LoginState::open(&web.sessions, v, now_secs(g)));
    let r = match login {
        None => fail(StatusCode::FORBIDDEN, NOT_THIS_BROWSER),
        Some(login) => complete(g, oidc, &login, &state, q).await,
    };
    with_cookie(r, &web.sessions.cookie_header(&name, "", 0))
}

/// The rest of [`callback`], once the login cookie opened: the provider's
/// answer, the code exchange, at most one completion per sign-in, and the
/// session.
async fn complete(
    g: &Gateway,
    oidc: &oidc::Oidc,
    login: &oidc::LoginState,
    state: &str,
    q: CallbackQuery,
) -> Response {
    let web = &g.web;
    let fail = |status: StatusCode, m: &str| page(status, pages::error_page(status, m).0);
    if let Some(err) = q.error {
        return fail(
            StatusCode::UNAUTHORIZED,
            &format!(
                "The identity provider refused sign-in: {err} {}",
                q.error_description.unwrap_or_default()
            ),
        );
    }
    let refused = |e: oidc::LoginError| {
        tracing::warn!(error = %e, "web sign-in refused");
        let status = match e {
            oidc::LoginError::UnknownState => StatusCode::FORBIDDEN,
            oidc::LoginError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::UNAUTHORIZED,
        };
        fail(status, &e.to_string())
    };
    let now_ms = g.now().0;
    let now = now_ms / 1000;
    match completions::check(g, login, now, false).await {
        Ok(true) => {}
        Ok(false) => return refused(oidc::LoginError::UnknownState),
        Err(m) => return fail(StatusCode::SERVICE_UNAVAILABLE, &m),
    }
    let user = match oidc
        .finish(login, state, q.code.as_deref().unwrap_or(""))
        .await
    {
        Ok(u) => u,
        Err(e) => return refused(e),
    };
    // The account decides who this is when a principal pins it.
    let id = match crate::identity::web_principal(&g.config, user.id.clone(), &user.subject) {
        Ok(id) => id,
        Err(m) => return refused(oidc::LoginError::Token(m)),
    };
    // Recorded only now, once the provider vouched for the human: a flood
    // of /login or of forged callbacks writes nothing.
    match completions::check(g, login, now, true).await {
        Ok(true) => {}
        Ok(false) => return refused(oidc::LoginError::UnknownState),
        Err(m) => return fail(StatusCode::SERVICE_UNAVAILABLE, &m),
    }
    let ttl = oidc.config.session_ttl.as_secs() as i64;
    let sid = match random_token() {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let claims = SessionClaims {
        sid,
        sub: id.to_string(),
        groups: user.groups.iter().cloned().collect(),
        subject: Some(user.subject.clone()),
        iat: now,
        exp: now + ttl,
        iat_ms: Some(now_ms),
    };
    tracing::info!(principal = %id, groups = ?user.groups, "signed in through OpenID Connect");
    let mut r = with_cookie(
        Redirect::to(&user.return_to).into_response(),
        &web.sessions.set_cookie(&web.sessions.encode(&claims), ttl),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Completed sign-ins, so one sign-in completes at most once even where a
/// provider would take its code twice. One record per *completed* sign-in
/// (records namespace [`completions::NS`], key: start time and a hash of
/// the state), kept ten minutes and pruned a few at a time by later
/// completions; nothing is written for a sign-in that does not complete.
mod completions {
    use sha2::{Digest, Sha256};

    use super::oidc::{LoginState, CLOCK_SKEW, LOGIN_TTL};
    use crate::gateway::Gateway;

    /// Records namespace of completed sign-ins.
    pub const NS: &str = "web.signed_in";
    /// Most old records one completion prunes.
    const PRUNE: usize = 16;

    fn key(login: &LoginState) -> String {
        let h = hex::encode(Sha256::digest(login.state.as_bytes()));
        format!("{:012}.{}", login.created.max(0), &h[..32])
    }

    /// Whether `login` has not completed yet; with `record`, also records
    /// that it completes now (in one transaction, so two racing callbacks
    /// cannot both pass), after pruning records too old to matter. An
    /// error is a sentence for the user: the store could not answer.
    pub async fn check(
        g: &Gateway,
        login: &LoginState,
        now: i64,
        record: bool,
    ) -> Result<bool, String> {
        let key = key(login);
        let unavailable = |e: String| {
            format!(
                "The gateway cannot check this sign-in right now ({e}); start again in a moment."
            )
        };
        if !record {
            let store = g.store.clone();
            return match tokio::task::spawn_blocking(move || store.get_record(NS, &key)).await {
                Ok(Ok(seen)) => Ok(seen.is_none()),
                Ok(Err(e)) => Err(unavailable(e.to_string())),
                Err(e) => Err(unavailable(e.to_string())),
            };
        }
        let store = g.store.clone();
        let cutoff = now - (LOGIN_TTL + CLOCK_SKEW).as_secs() as i64;
        let old: Vec<String> =
            tokio::task::spawn_blocking(move || store.list_records(NS, "", None, PRUNE))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| {
                    k.split('.')
                        .next()
                        .and_then(|t| t.parse::<i64>().ok())
                        .is_some_and(|t| t < cutoff)
                })
                .collect();
        g.store
            .transact(move |tx| {
                for k in &old {
                    tx.delete_record(NS, k)?;
                }
                if tx.get_record(NS, &key)?.is_some() {
                    return Ok(false);
                }
                tx.put_record(NS, &key, "")?;
                Ok(true)
            })
            .await
            .map_err(|e| unavailable(e.to_string()))
    }
}

async fn logout(State(s): State<AppState>, p: Posted) -> Response {
    let g = &s.gateway;
    let web = &g.web;
    // A sign-out that cannot be recorded changes nothing and says so: a
    // "signed out" page over a session that comes back after a restart,
    // or still works on another replica, would leave a copied cookie
    // working while its owner believes it dead.
    if let Err(e) = session::sign_out(g, &p.user.session).await {
        tracing::warn!(error = %e, "sign-out not recorded; the session stays signed in");
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let msg = format!(
            "You are still signed in: the gateway could not record the sign-out ({e}). Try signing out again in a moment."
        );
        return page(status, pages::error_page(status, &msg).0);
    }
    let mut r = ok(pages::signed_out());
    if let Ok(v) = HeaderValue::from_str(&web.sessions.clear_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Whether `who` may decide `req` now, or why not (the same checks the
/// review itself makes; this only decides whether to show the form).
pub fn cannot_decide(req: &Request, who: &secondkey_core::principal::Principal) -> Option<String> {
    if req.state != RequestState::Pending {
        return Some(format!(
            "This request is {} and can no longer be decided.",
            req.state.as_str()
        ));
    }
    if req.reviews.iter().any(|r| r.reviewer == who.id) {
        return Some("You already reviewed this request.".into());
    }
    req.check_reviewer(who)
        .err()
        .map(|e| format!("You cannot review this request: {e}."))
}

/// Unexpired pending requests the user may see that pass `keep` (up to 500).
async fn pending_where(
    g: &Gateway,
    who: &secondkey_core::principal::Principal,
    keep: impl Fn(&Request) -> bool,
) -> Result<Vec<Request>, ApiError> {
    let page = g.list(who, Some(RequestState::Pending), 500, None).await?;
    let now = g.now();
    Ok(page
        .requests
        .into_iter()
        .filter(|r| r.expires_at > now && keep(r))
        .collect())
}

/// Pending requests the user may decide.
async fn decidable(
    g: &Gateway,
    who: &secondkey_core::principal::Principal,
) -> Result<Vec<Request>, ApiError> {
    pending_where(g, who, |r| cannot_decide(r, who).is_none()).await
}

#[derive(Deserialize)]
struct NoticeQuery {
    done: Option<String>,
}

fn notice_text(done: Option<&str>) -> Option<&'static str> {
    match done {
        Some("approve") => Some("Your approval was recorded."),
        Some("deny") => Some("Your denial was recorded."),
        _ => None,
    }
}

/// Requests the user approved that still wait for others.
async fn waiting_on_others(
    g: &Gateway,
    who: &secondkey_core::principal::Principal,
) -> Result<Vec<Request>, ApiError> {
    pending_where(g, who, |r| {
        r.reviews
            .iter()
            .any(|v| v.reviewer == who.id && v.decision == ReviewDecision::Approve)
    })
    .await
}

/// The inbox and batch pages' view of requests.
fn rows<'a>(g: &'a Gateway, reqs: &'a [Request]) -> Vec<pages::Row<'a>> {
    reqs.iter()
        .map(|r| {
            let environment = g.config.environment_of(&r.action.resource);
            pages::Row {
                req: r,
                environment,
                needs_comment: crate::reviewer::needs_comment(r, environment, &g.config.web),
            }
        })
        .collect()
}

async fn inbox(
    State(s): State<AppState>,
    user: SignedIn,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let g = &s.gateway;
    let mine = match decidable(g, &user.principal).await {
        Ok(r) => r,
        Err(e) => return api_error_page(&e),
    };
    let waiting = match waiting_on_others(g, &user.principal).await {
        Ok(r) => r,
        Err(e) => return api_error_page(&e),
    };
    ok(pages::inbox(
        &user,
        &rows(g, &mine),
        &rows(g, &waiting),
        g.now().0,
        notice_text(q.done.as_deref()),
    ))
}

fn parse_decision(v: Option<&str>) -> Result<ReviewDecision, ApiError> {
    match v {
        Some("approve") => Ok(ReviewDecision::Approve),
        Some("deny") => Ok(ReviewDecision::Deny),
        _ => Err(ApiError::bad_request(
            "invalid_decision",
            "choose Approve or Deny",
        )),
    }
}

fn comment_of(p: &Posted) -> Option<String> {
    p.get("comment")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

pub use crate::reviewer::{similar_approved, similar_key, SIMILAR_NS};

/// The page at each request's `url`.
async fn request_page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let g = &s.gateway;
    let user = match SignedIn::current(g, &headers).await {
        Some(u) => u,
        None if g.web.oidc.is_none() => return ok(pages::cli_hint(&id, &g.config.public_url)),
        None => return WebReject::SignIn(uri.path().to_string()).into_response(),
    };
    let req = match g.get_request(&user.principal, &id).await {
        Ok(r) => r,
        Err(e) => return api_error_page(&e),
    };
    let similar = similar_approved(g, &user.principal, &req).await;
    // The timeline is evidence, not the decision: a read that fails shows
    // an empty timeline with the error logged rather than no page.
    let entries = crate::logview::request_entries(g, &req.id, timeline::MAX_EVENTS)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(request = %req.id, error = %e.message, "timeline not read");
            Vec::new()
        });
    let timeline = timeline::Timeline::from_entries(&entries);
    // A fresh nonce per page (256 random bits); without randomness the page
    // goes without its script rather than with a guessable nonce.
    let nonce = random_token().ok();
    page_with_script(
        StatusCode::OK,
        render_request(
            g,
            &user,
            &req,
            similar.as_ref(),
            notice_text(q.done.as_deref()),
            nonce.as_deref(),
            &timeline,
        ),
        nonce.as_deref(),
    )
}

/// The request page's live updates: the API's event stream, reached with
/// the session (the same visibility rules as the page), ending once the
/// session no longer holds.
async fn request_events(
    State(s): State<AppState>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Response {
    match crate::api::event_stream(
        s.gateway.clone(),
        user.principal,
        &crate::identity::Credential::default(),
        Some(user.session),
        id,
    )
    .await
    {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Renders the request page (separate from IO so it can be benchmarked).
pub fn render_request(
    g: &Gateway,
    user: &SignedIn,
    req: &Request,
    similar: Option<&Request>,
    notice: Option<&str>,
    nonce: Option<&str>,
    timeline: &timeline::Timeline,
) -> String {
    let fallback;
    let submitted = match &req.submitted {
        Some(v) => v,
        None => {
            fallback = serde_json::to_value(&req.action).unwrap_or_default();
            &fallback
        }
    };
    let mut cannot = cannot_decide(req, &user.principal);
    if cannot.is_none() && req.expires_at <= g.now() {
        cannot = Some("This request has expired.".into());
    }
    pages::request(
        user,
        &pages::RequestPage {
            req,
            submitted,
            environment: g.config.environment_of(&req.action.resource),
            similar,
            cannot_decide: cannot,
            now_ms: g.now().0,
            notice,
            nonce,
            timeline,
        },
    )
}

/// A review through the web needs a sign-in no older than `[oidc]
/// review_max_age`: the session cookie carries the identity provider's
/// groups of the moment it was made, and the provider is not asked again
/// while it lives. Past that age nothing is decided and the reviewer signs
/// in again (usually without typing anything), then returns to `back`.
/// Linking a chat account asks the same: the link makes that account's
/// clicks count as this person's reviews.
pub fn stale_sign_in(g: &Gateway, p: &Posted, back: &str) -> Option<Response> {
    let oidc = g.web.oidc.as_ref()?;
    let age = now_secs(g) - p.user.session.iat;
    // The one sign-in redirect, with the parameter `/login` reads.
    (age > oidc.config.review_max_age.as_secs() as i64)
        .then(|| session::WebReject::SignIn(back.to_string()).into_response())
}

/// Approve or deny from the request page; the same review as the API.
async fn review(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Response {
    let g = &s.gateway;
    let page = format!(
        "/requests/{}",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    );
    if let Some(again) = stale_sign_in(g, &p, &page) {
        return again;
    }
    let decision = match parse_decision(p.get("decision")) {
        Ok(d) => d,
        Err(e) => return api_error_page(&e),
    };
    match g
        .review(&p.user.principal, &id, decision, comment_of(&p))
        .await
    {
        Ok(_) => {
            let done = if decision == ReviewDecision::Approve {
                "approve"
            } else {
                "deny"
            };
            Redirect::to(&format!("{page}?done={done}")).into_response()
        }
        Err(e) => api_error_page(&e),
    }
}

/// Largest batch decided at once.
pub const MAX_BATCH: usize = 100;

/// Decides several requests of one agent session, each as its own review
/// through [`Gateway::review`]. All must share a requester and a session:
/// a batch never mixes unrelated work. A batch that holds a sensitive
/// operation in a production environment (see `[web]` and
/// [`crate::reviewer::needs_comment`]) needs a comment, or nothing is
/// decided (`comment_required`). The web form and `POST /v1/reviews/batch`
/// both come here, so the rules are the same.
pub async fn review_batch(
    g: &Gateway,
    who: &secondkey_core::principal::Principal,
    ids: &[String],
    decision: ReviewDecision,
    comment: Option<String>,
) -> Result<Vec<(String, Result<Request, ApiError>)>, ApiError> {
    if ids.is_empty() || ids.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch holds 1 to {MAX_BATCH} requests"),
        ));
    }
    let mut unique = ids.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() != ids.len() {
        return Err(ApiError::bad_request(
            "invalid_batch",
            "a request appears twice in the batch",
        ));
    }
    let comment = comment
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let mut key = None;
    let mut sensitive = None;
    for id in ids {
        let r = g.get_request(who, id).await?;
        if comment.is_none()
            && sensitive.is_none()
            && crate::reviewer::needs_comment(
                &r,
                g.config.environment_of(&r.action.resource),
                &g.config.web,
            )
        {
            sensitive = Some(id.clone());
        }
        let k = (
            r.requester.id.clone(),
            pages::session_of(&r).map(str::to_string),
        );
        if k.1.is_none() && ids.len() > 1 {
            return Err(ApiError::bad_request(
                "mixed_batch",
                format!("{id} belongs to no agent session; decide it on its own"),
            ));
        }
        match &key {
            None => key = Some(k),
            Some(first) if *first != k => {
                return Err(ApiError::bad_request(
                    "mixed_batch",
                    "every request of a batch must come from the same agent session",
                ))
            }
            _ => {}
        }
    }
    if let Some(id) = sensitive {
        return Err(ApiError::bad_request(
            "comment_required",
            format!("{id} is a sensitive operation in production: a batch that holds it needs a comment saying why. Nothing was decided; decide again with a comment"),
        ));
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let r = g.review(who, id, decision, comment.clone()).await;
        out.push((id.clone(), r));
    }
    Ok(out)
}

/// A batch takes two steps. `step=confirm` (from the inbox, with the
/// ticked ids) decides nothing: it shows every selected request in full.
/// `step=decide` (from that page) decides them, and refuses — changing
/// nothing — when a comment is required and missing.
async fn batch(State(s): State<AppState>, p: Posted) -> Response {
    let g = &s.gateway;
    let ids: Vec<String> = p.all("id").into_iter().map(str::to_string).collect();
    match p.get("step") {
        Some("confirm") => {
            if ids.is_empty() {
                return api_error_page(&ApiError::bad_request(
                    "invalid_batch",
                    "No request was selected. Tick the requests to review together, then choose Review selected.",
                ));
            }
            if ids.len() > MAX_BATCH {
                return api_error_page(&ApiError::bad_request(
                    "invalid_batch",
                    format!("A batch holds at most {MAX_BATCH} requests. Select fewer."),
                ));
            }
            let mut reqs = Vec::with_capacity(ids.len());
            for id in &ids {
                match g.get_request(&p.user.principal, id).await {
                    Ok(r) => reqs.push(r),
                    Err(e) => return api_error_page(&e),
                }
            }
            ok(pages::batch_confirm(&p.user, &rows(g, &reqs), g.now().0))
        }
        Some("decide") => {
            if let Some(again) = stale_sign_in(g, &p, "/inbox") {
                return again;
            }
            let decision = match parse_decision(p.get("decision")) {
                Ok(d) => d,
                Err(e) => return api_error_page(&e),
            };
            let comment = comment_of(&p);
            match review_batch(g, &p.user.principal, &ids, decision, comment).await {
                Ok(results) => {
                    let rows: Vec<(String, Result<RequestState, String>)> = results
                        .into_iter()
                        .map(|(id, r)| (id, r.map(|r| r.state).map_err(|e| e.message)))
                        .collect();
                    ok(pages::batch_result(&p.user, &rows))
                }
                Err(e) => api_error_page(&e),
            }
        }
        _ => api_error_page(&ApiError::bad_request(
            "invalid_batch",
            "Select requests in the inbox and choose Review selected: each statement is shown before you decide.",
        )),
    }
}

async fn history(State(s): State<AppState>, user: SignedIn) -> Response {
    let g = &s.gateway;
    match g.list(&user.principal, None, 200, None).await {
        Ok(page) => {
            // Decided requests, and every request this user reviewed
            // (a pending one they approved waits on others).
            let decided: Vec<&Request> = page
                .requests
                .iter()
                .filter(|r| {
                    r.state != RequestState::Pending
                        || r.reviews.iter().any(|v| v.reviewer == user.principal.id)
                })
                .collect();
            ok(pages::history(&user, &decided))
        }
        Err(e) => api_error_page(&e),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    index: Option<String>,
    before: Option<String>,
}

/// A non-negative integer typed in a query, or a sentence saying so.
fn parse_index(v: &str, what: &str) -> Result<u64, ApiError> {
    v.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_index",
            format!("{what} must be a non-negative integer"),
        )
    })
}

/// The readable receipt of entry `index`, if `who` may read it.
async fn readable_receipt(
    g: &Gateway,
    who: &secondkey_core::principal::Principal,
    index: u64,
) -> Result<String, ApiError> {
    crate::logview::may_read_entry(g, who, index).await?;
    let r = crate::logview::receipt_of(g, index).await?;
    let verifier: secondkey_log::note::Verifier = g
        .verifier_key()
        .parse()
        .map_err(|e: secondkey_log::note::NoteError| ApiError::internal(e.to_string()))?;
    Ok(receipt::readable(&r, &verifier))
}

/// One page of entries, newest first, ending before `before` (default:
/// the newest).
async fn entry_page(g: &Gateway, before: Option<&str>) -> Result<String, ApiError> {
    let size = g.store.log_size();
    let before = match before.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) => parse_index(b, "before")?.min(size),
        None => size,
    };
    let start = before.saturating_sub(receipt::PAGE);
    let bytes = crate::logview::entries(g, start, before).await?;
    let entries: Vec<(u64, Vec<u8>)> = (start..).zip(bytes).collect();
    Ok(receipt::entry_list(&entries, size, before))
}

async fn audit(State(s): State<AppState>, user: SignedIn, Query(q): Query<AuditQuery>) -> Response {
    let g = &s.gateway;
    let checkpoint = match g.checkpoint().await {
        Ok(c) => c,
        Err(e) => return api_error_page(&e),
    };
    let reader = g.require_log_reader(&user.principal).map_err(|e| e.message);
    let receipt = match q.index.as_deref().map(str::trim) {
        Some(ix) if !ix.is_empty() => Some(match parse_index(ix, "the index") {
            Ok(index) => readable_receipt(g, &user.principal, index)
                .await
                .map(|html| (index, html))
                .map_err(|e| e.message),
            Err(e) => Err(e.message),
        }),
        _ => None,
    };
    let list = match reader {
        Ok(()) => match entry_page(g, q.before.as_deref()).await {
            Ok(html) => Some(html),
            Err(e) => return api_error_page(&e),
        },
        Err(_) => None,
    };
    ok(pages::audit(
        &user,
        &checkpoint,
        &g.verifier_key(),
        reader,
        receipt,
        list,
    ))
}

/// A receipt as a JSON download: log readers, and viewers of the request
/// the entry concerns (see [`crate::logview::may_read_entry`]).
async fn receipt(State(s): State<AppState>, user: SignedIn, Path(index): Path<String>) -> Response {
    let g = &s.gateway;
    let index = match parse_index(&index, "the index") {
        Ok(i) => i,
        Err(e) => return api_error_page(&e),
    };
    if let Err(e) = crate::logview::may_read_entry(g, &user.principal, index).await {
        return api_error_page(&e);
    }
    match crate::logview::receipt(g, index).await {
        Ok(v) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_DISPOSITION,
                    &*format!("attachment; filename=\"receipt-{index}.json\""),
                ),
            ],
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => api_error_page(&e),
    }
}
