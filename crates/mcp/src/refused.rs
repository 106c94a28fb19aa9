//! Messages secondkey refuses before any decision (a request method sent
//! without an id, a message in another principal's session, a method no
//! policy can see), recorded in the log as `mcp.refused` entries so that an
//! auditor sees the attempt, not only what ran.

use secondkey_core::principal::Principal;
use secondkey_server::error::ApiError;
use secondkey_server::gateway::rfc3339;
use secondkey_server::Gateway;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::is_server_name;

/// One refused message, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The JSON-RPC method of the refused message (truncated to 128
    /// characters).
    pub method: String,
    /// Why, as a stable word: `request_without_id`, `unknown_session`, …
    pub code: String,
    /// The sentence the client was answered with.
    pub reason: String,
    /// The MCP session it came in, if any.
    #[serde(default)]
    pub session: Option<String>,
}

/// The answer to a request method sent as a notification.
pub fn idless_message(method: &str) -> String {
    format!(
        "secondkey refused a {:?} message without an `id`: a request sent as a notification could not be answered, so it is never decided nor forwarded. Send it with an id. Nothing ran.",
        short(method)
    )
}

fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// Appends `mcp.refused` for `who` on `server`. The refusal stands whether
/// or not this succeeds; the error says why it was not recorded.
pub async fn record(
    gw: &Gateway,
    who: &Principal,
    server: &str,
    r: Refusal,
) -> Result<(), ApiError> {
    if !is_server_name(server) {
        return Err(ApiError::bad_request(
            "invalid_server",
            "a server name is 1 to 64 of A-Z a-z 0-9 - _ .",
        ));
    }
    if !crate::config::is_word(&r.code) || r.reason.len() > 1024 {
        return Err(ApiError::bad_request(
            "invalid_refusal",
            "`code` is a lowercase word and `reason` at most 1024 bytes",
        ));
    }
    let now = rfc3339(gw.now());
    let actor = who.id.to_string();
    let payload = json!({
        "server": server,
        "method": short(&r.method),
        "code": r.code,
        "reason": r.reason,
        "session": r.session.as_deref().map(short),
    });
    gw.store
        .transact(move |tx| {
            tx.append(secondkey_store::new_entry(
                &now,
                "mcp.refused",
                Some(&actor),
                payload,
            ))
        })
        .await?;
    Ok(())
}
