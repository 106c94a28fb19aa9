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
//! - [`jwt`] — a reusable RS256 verifier over OpenID metadata and JWKS.
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
pub mod jwt;
pub mod links;
pub mod records;
pub mod slack;
pub mod teams;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use secondkey_core::request::Request;
use secondkey_server::auth::Caller;
use secondkey_server::config::ConfigError;
use secondkey_server::gateway::rfc3339;
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
    pub jwt: jwt::JwksVerifier,
    pub connector: teams::connector::Connector,
    pub service_url: String,
    pub replays: teams::Replays,
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

/// The reviewer's view of `req` with this gateway's links and facts.
pub fn summary(gateway: &Gateway, req: &Request) -> card::Summary {
    card::Summary::of(
        req,
        gateway.request_url(&req.id),
        gateway.config.environment_of(&req.action.resource),
        rfc3339(req.expires_at),
    )
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
            jwt: jwt::JwksVerifier::new(
                &t.openid_metadata,
                vec![t.issuer.clone()],
                &t.app_id,
                Duration::from_secs(300),
                client.clone(),
            ),
            connector: teams::connector::Connector::new(
                &t.app_id,
                &t.app_password,
                &t.token_url,
                client.clone(),
            ),
            service_url: t.service_url.clone(),
            replays: teams::Replays::default(),
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
    body: Bytes,
) -> Response {
    slack::interactions(s.gateway, inner, headers, body).await
}

async fn teams_messages(
    State(s): State<AppState>,
    Extension(inner): Extension<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    teams::messages(s.gateway, inner, headers, body).await
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /chat/link/{code}`: what would be linked. Changes nothing, so a
/// link unfurler or a prefetching browser cannot link anyone.
async fn link_page(State(s): State<AppState>, UrlPath(code): UrlPath<String>) -> Response {
    let url = format!(
        "{}/chat/link/{}",
        s.gateway.config.public_url,
        html_escape(&code)
    );
    match links::describe(&s.gateway, &code).await {
        Ok(ext) => Html(format!(
            "<!doctype html><meta charset=utf-8><title>Link your {p} account</title>\
             <h1>Link {p} account {d}</h1><p>Account id <code>{i}</code>. Confirming makes your clicks in {p} count as \
             your reviews in secondkey. The link works once.</p>\
             <p>Confirm as yourself with your secondkey token:</p>\
             <pre>curl -X POST -H \"Authorization: Bearer $SECONDKEY_TOKEN\" {url}</pre>",
            p = html_escape(&ext.platform),
            d = html_escape(&ext.display),
            i = html_escape(&ext.id),
        ))
        .into_response(),
        Err(e) => (e.status, Html(format!("<!doctype html><meta charset=utf-8><title>Link</title><p>{}</p>", html_escape(&e.message)))).into_response(),
    }
}

/// `POST /chat/link/{code}`: binds the account to the caller.
async fn link_confirm(
    State(s): State<AppState>,
    Caller(who): Caller,
    UrlPath(code): UrlPath<String>,
) -> Result<Json<serde_json::Value>, secondkey_server::error::ApiError> {
    let ext = links::complete(&s.gateway, &code, &who).await?;
    Ok(Json(
        json!({"linked": true, "platform": ext.platform, "external_id": ext.id,
                   "display": ext.display, "principal": who.id.to_string()}),
    ))
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
