//! Where reviewers work: Slack and Microsoft Teams approvals, signed
//! request-event webhooks, routing, reminders and escalation.
//!
//! This crate is an adapter of the gateway (`secondkey-server`): it owns no
//! approval rule. A click in Slack or Teams becomes a call to
//! [`Gateway::review`], exactly what `POST /v1/requests/{id}/reviews` runs,
//! so self-review, eligibility, quorum, double clicks and late clicks are
//! refused by the same code; escalation is the core's
//! `Request::escalate`, reached through [`Gateway::escalate`].
//!
//! - [`slack`] — Block Kit messages, signed interactions, the Web API.
//! - [`teams`] — Adaptive Cards, Bot Framework JWTs, the Bot Connector.
//! - [`links`] — chat accounts linked once to secondkey humans.
//! - [`webhooks`] — request events as Standard Webhooks, from the log.
//! - [`follow`] — the task that posts, redraws, reminds and escalates.
//! - [`config`] — the `[slack]`, `[teams]`, `[[webhooks]]`, `[routing]`
//!   sections.
//!
//! HTTP endpoints (under `/chat`): `POST /chat/slack/interactions` (the
//! Slack app's Interactivity Request URL), `POST /chat/teams/messages` (the
//! bot's messaging endpoint), `GET`/`POST /chat/link/{code}`. No `GET`
//! changes anything.

pub mod card;
pub mod config;
pub mod follow;
pub mod http;
pub mod links;
pub mod records;
pub mod slack;
pub mod teams;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts};
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use secondkey_core::request::Request;
use secondkey_server::api::RawBody;
use secondkey_server::auth::Caller;
use secondkey_server::config::ConfigError;
use secondkey_server::gateway::rfc3339;
use secondkey_server::web::highlight::esc;
use secondkey_server::web::pages::layout;
use secondkey_server::web::{Posted, SignedIn, WebReject};
use secondkey_server::{AppState, Gateway};
use serde_json::json;

pub use config::ChannelsConfig;

/// Slack, once configured.
pub struct SlackSide {
    pub api: slack::api::SlackApi,
    pub verifier: slack::verify::Verifier,
    pub inline_limit: usize,
}

/// Teams, once configured.
pub struct TeamsSide {
    pub jwt: secondkey_server::jwt::JwtVerifier,
    pub connector: teams::connector::Connector,
    pub service_url: String,
    pub replays: teams::Replays,
    /// `[teams] tenant_id`: the only tenant whose activities count.
    pub tenant: Option<String>,
}

/// What handlers and the follower share.
pub struct Inner {
    pub config: ChannelsConfig,
    pub slack: Option<SlackSide>,
    pub teams: Option<TeamsSide>,
}

/// The channels adapter: routes for incoming interactions, and a start
/// hook that spawns the follower and the webhooks.
pub struct Channels {
    inner: Arc<Inner>,
}

/// The reviewer's view of `req` with this gateway's links and facts, and
/// what changed since the last similar approved action.
pub async fn summary(gateway: &Gateway, req: &Request) -> card::Summary {
    let prev = secondkey_server::reviewer::similar_approved_for_channel(gateway, req).await;
    card::Summary::of(
        req,
        gateway.request_url(&req.id),
        gateway.config.environment_of(&req.action.resource),
        rfc3339(req.expires_at),
    )
    .with_changes(req, prev.as_ref())
}

impl Channels {
    /// Builds the adapter from the raw config sections; `None` when none of
    /// them is present (nothing to run).
    pub fn from_sections(
        sections: &BTreeMap<String, toml::Value>,
        env: &HashMap<String, String>,
        base: &Path,
    ) -> Result<Option<Channels>, ConfigError> {
        if !config::SECTIONS.iter().any(|s| sections.contains_key(*s)) {
            return Ok(None);
        }
        Ok(Some(Channels::new(config::parse(sections, env, base)?)))
    }

    pub fn new(config: ChannelsConfig) -> Channels {
        let client = http::Client::new(Duration::from_secs(10));
        let slack = config.slack.as_ref().map(|s| SlackSide {
            api: slack::api::SlackApi::new(&s.api_base, &s.bot_token, client.clone()),
            verifier: slack::verify::Verifier::new(s.signing_secret.clone()),
            inline_limit: s.inline_limit,
        });
        let teams = config.teams.as_ref().map(|t| TeamsSide {
            jwt: {
                use secondkey_server::jwt::{JwtVerifier, KeySource, VerifierConfig};
                let mut c = VerifierConfig::new(
                    vec![t.issuer.clone()],
                    vec![t.app_id.clone()],
                    KeySource::Metadata(t.openid_metadata.clone()),
                );
                // The Bot Framework signs with RS256 and allows 5 min of skew.
                c.algorithms = vec![jsonwebtoken::Algorithm::RS256];
                c.leeway = Duration::from_secs(300);
                JwtVerifier::new(c)
            },
            connector: teams::connector::Connector::new(
                &t.app_id,
                &t.app_password,
                &t.token_url,
                client.clone(),
            )
            .with_tenant(t.tenant_id.clone()),
            service_url: t.service_url.clone(),
            replays: teams::Replays::default(),
            tenant: t.tenant_id.clone(),
        });
        Channels {
            inner: Arc::new(Inner {
                config,
                slack,
                teams,
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        "channels"
    }

    /// The incoming endpoints, merged into the gateway's router.
    pub fn routes(&self) -> Router<AppState> {
        Router::new()
            .route("/chat/slack/interactions", post(slack_interactions))
            .route("/chat/teams/messages", post(teams_messages))
            .route("/chat/link/{code}", get(link_page).post(link_confirm))
            .route("/v1/chat/links", get(my_links))
            .route("/v1/chat/links/{account}", delete(unlink_mine))
            .layer(Extension(self.inner.clone()))
    }

    /// Spawns the follower and the webhooks. Call inside the runtime.
    pub fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        webhooks::start(&gateway, &self.inner.config.webhooks)?;
        // Escalation needs the follower even without a chat channel (e.g.
        // webhooks only): it is what turns `escalation_due` into the core
        // transition.
        let escalates = self
            .inner
            .config
            .routing
            .routes
            .iter()
            .any(|r| !r.escalate_to.is_empty());
        if self.inner.slack.is_some() || self.inner.teams.is_some() || escalates {
            follow::spawn(gateway, self.inner.clone());
        }
        Ok(())
    }
}

async fn slack_interactions(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    slack::interactions(s.gateway, inner, headers, body).await
}

async fn teams_messages(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    teams::messages(s.gateway, inner, headers, body).await
}

/// `GET /v1/chat/links`: the chat accounts linked to the caller.
async fn my_links(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    Caller(who): Caller,
) -> Response {
    match links::linked_to(&s.gateway, &inner.config.routing.linking, &who.id).await {
        Ok(l) => Json(json!({ "links": l })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/chat/links/{account}`: the caller unlinks one of their chat
/// accounts (say, one they were talked into linking).
async fn unlink_mine(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    Caller(who): Caller,
    UrlPath(account): UrlPath<String>,
) -> Response {
    match links::unlink(&s.gateway, &inner.config.routing.linking, &who.id, &account).await {
        Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /chat/link/{code}`: what would be linked, and — for the signed-in
/// human — a confirm form (CSRF-protected POST). Changes nothing, so a link
/// unfurler or a prefetching browser cannot link anyone. Not signed in: the
/// OIDC sign-in, then back here; without `[oidc]`, how to confirm with an
/// API token instead.
async fn link_page(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    user: Result<SignedIn, WebReject>,
    UrlPath(code): UrlPath<String>,
) -> Response {
    // Refused before anyone is sent to sign in for nothing.
    if let Err(e) = links::web_linking(&inner.config.routing.linking) {
        return WebReject::Page(e.status, e.message).into_response();
    }
    let user = match user {
        Ok(u) => Some(u),
        Err(WebReject::SignIn(back)) => return WebReject::SignIn(back).into_response(),
        Err(WebReject::Page(..)) => None,
    };
    let ext = match links::describe(&s.gateway, &inner.config.routing.linking, &code).await {
        Ok(ext) => ext,
        Err(e) => return WebReject::Page(e.status, e.message).into_response(),
    };
    let what = format!(
        "<h1>Link your {p} account</h1><p>{p} account <strong>{d}</strong> (id <code>{i}</code>). \
         Confirming makes your clicks in {p} count as your reviews in secondkey, with the same checks \
         as every other review. The link works once.</p>\
         <p class=\"error\"><strong>Only if this is your own {p} account.</strong> A link someone \
         else sent you would make their clicks count as your approvals: do not confirm it. A link made \
         by mistake is undone with <code>DELETE /v1/chat/links/{{account}}</code>.</p>",
        p = esc(&ext.platform),
        d = esc(&ext.display),
        i = esc(&ext.id),
    );
    let body = match &user {
        Some(u) => format!(
            "{what}<form method=\"post\" action=\"/chat/link/{c}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{t}\">\
             <button class=\"approve\">Link to {me}</button></form>",
            c = esc(&code),
            t = esc(&u.csrf),
            me = esc(u.principal.id.as_str()),
        ),
        None => format!(
            "{what}<p>Web sign-in is not configured on this gateway. Confirm as yourself with your secondkey token:</p>\
             <pre>curl -X POST -H \"Authorization: Bearer $SECONDKEY_TOKEN\" {}/chat/link/{}</pre>",
            esc(&s.gateway.config.public_url),
            esc(&code),
        ),
    };
    let mut r = Html(layout("Link account", user.as_ref(), &body)).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

/// `POST /chat/link/{code}`: binds the account to the caller — the
/// signed-in human of a CSRF-checked form post, or (API, no cookie) the
/// human of a bearer token.
async fn link_confirm(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    UrlPath(code): UrlPath<String>,
    req: axum::extract::Request,
) -> Response {
    let api = req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION);
    // Refused whoever asks, signed in or not.
    if let Err(e) = links::web_linking(&inner.config.routing.linking) {
        return if api {
            e.into_response()
        } else {
            WebReject::Page(e.status, e.message).into_response()
        };
    }
    if api {
        let (mut parts, _) = req.into_parts();
        let who = match Caller::from_request_parts(&mut parts, &s).await {
            Ok(Caller(who)) => who,
            Err(e) => return e.into_response(),
        };
        return match links::complete(&s.gateway, &inner.config.routing.linking, &code, &who).await {
            Ok(ext) => Json(
                json!({"linked": true, "platform": ext.platform, "external_id": ext.id,
                                   "display": ext.display, "principal": who.id.to_string()}),
            )
            .into_response(),
            Err(e) => e.into_response(),
        };
    }
    let posted = match Posted::from_request(req, &s).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // A sign-in older than `[oidc] review_max_age` links nothing: the
    // person signs in again and confirms on the link page.
    let page = format!(
        "/chat/link/{}",
        form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>()
    );
    if let Some(again) = secondkey_server::web::stale_sign_in(&s.gateway, &posted, &page) {
        return again;
    }
    let who = &posted.user.principal;
    match links::complete(&s.gateway, &inner.config.routing.linking, &code, who).await {
        Ok(ext) => {
            // A person who signs in but is no configured principal may
            // link, and their clicks count for nobody: say so here, not
            // after their next click.
            let counts = if s.gateway.config.principals.contains_key(who.id.as_str()) {
                "Your clicks there count as your reviews.".to_string()
            } else {
                format!(
                    "{} is not a configured principal of this gateway, so your clicks there count for nobody: review requests here, in the browser.",
                    esc(who.id.as_str())
                )
            };
            Html(layout(
                "Linked",
                Some(&posted.user),
                &format!(
                    "<h1>Linked</h1><p class=\"notice\">Your {} account <strong>{}</strong> is now linked to {}. \
                     {counts}</p><p><a href=\"/inbox\">Go to the inbox</a></p>",
                    esc(&ext.platform),
                    esc(&ext.display),
                    esc(who.id.as_str())
                ),
            ))
            .into_response()
        }
        Err(e) => WebReject::Page(e.status, e.message).into_response(),
    }
}

impl secondkey_server::Extension for Channels {
    fn name(&self) -> &'static str {
        Channels::name(self)
    }

    fn routes(&self) -> Router<AppState> {
        Channels::routes(self)
    }

    fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        Channels::start(self, gateway)
    }
}
