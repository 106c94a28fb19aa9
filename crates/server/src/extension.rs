//! How interception adapters and channels plug into the gateway process.
//!
//! An extension (the PostgreSQL proxy, the MCP endpoint, Slack, Teams, …)
//! lives in its own crate, reads its own raw configuration section from
//! [`Config::sections`](crate::Config::sections), serves routes under its
//! own path prefix and starts its listeners and background tasks once the
//! gateway is built. It reaches the rules only through [`Gateway`]; it never
//! touches the store's log directly.

use std::sync::Arc;

use crate::{AppState, Gateway};

/// A part of the gateway process that lives outside this crate.
pub trait Extension: Send + Sync {
    /// Short name for logs and errors (`pg`, `mcp`, `slack`).
    fn name(&self) -> &'static str;

    /// Routes merged into the gateway's router, under the extension's own
    /// prefix (e.g. `/slack/…`, `/mcp/…`).
    fn routes(&self) -> axum::Router<AppState> {
        axum::Router::new()
    }

    /// The OpenAPI description of [`Extension::routes`], merged into the
    /// document served at `/openapi.json`.
    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        None
    }

    /// Called inside the runtime once the gateway is built and before it
    /// serves: spawn listeners and background tasks here. An error stops
    /// the gateway from starting.
    fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        let _ = gateway;
        Ok(())
    }
}
