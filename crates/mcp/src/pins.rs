//! Tool-definition pinning, on the gateway's side: the fingerprint of each
//! tool when first listed is kept in the store's records (`mcp.pin`,
//! `<server>/<tool>`); a listing that differs is recorded as a change and
//! calls of that tool are held or refused until a human in
//! `mcp.tool_admins` accepts it. Pinning, every change seen and every
//! acceptance are log entries.

use secondkey_core::principal::{Principal, PrincipalKind};
use secondkey_server::error::ApiError;
use secondkey_server::gateway::rfc3339;
use secondkey_server::Gateway;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::is_server_name;
use crate::decide::PinState;
use crate::tools::{fingerprint, pinned_part};

/// The record namespace of pins.
pub const NS: &str = "mcp.pin";

/// Most tools one observation may carry.
pub const MAX_TOOLS: usize = 1000;

/// A pinned tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pin {
    pub server: String,
    pub tool: String,
    pub fingerprint: String,
    pub definition: Value,
    pub pinned_at: String,
    /// Who accepted the current definition (`None`: pinned on first sight).
    #[serde(default)]
    pub accepted_by: Option<String>,
    /// A different definition seen since, waiting for a human.
    #[serde(default)]
    pub changed: Option<Changed>,
}

/// A definition that differs from the pin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Changed {
    pub fingerprint: String,
    pub definition: Value,
    pub seen_at: String,
    pub seen_by: String,
}

fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

fn entry(time: &str, event: &str, actor: &str, payload: Value) -> secondkey_log::entry::Entry {
    secondkey_store::new_entry(time, event, Some(actor), payload)
}

fn check_names(server: &str, tool: &str) -> Result<(), ApiError> {
    if !is_server_name(server) {
        return Err(ApiError::bad_request(
            "invalid_server",
            "a server name is 1 to 64 of A-Z a-z 0-9 - _ .",
        ));
    }
    if tool.is_empty() || tool.len() > 256 || tool.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_tool",
            "a tool name is 1 to 256 characters, no control characters",
        ));
    }
    Ok(())
}

async fn read_pin(gw: &Gateway, server: &str, tool: &str) -> Result<Option<Pin>, ApiError> {
    let k = key(server, tool);
    // The embedded store answers a point read from a pooled connection in
    // microseconds, without waiting on the writer (WAL): read it here, on
    // the call's own task, instead of a hand-off to the blocking pool and
    // back (two thread wake-ups per call). A shared store's read is a
    // network round trip, and goes to the blocking pool.
    let raw = if gw.store.is_shared() {
        let store = gw.store.clone();
        tokio::task::spawn_blocking(move || store.get_record(NS, &k))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??
    } else {
        gw.store.get_record(NS, &k)?
    };
    raw.map(|r| {
        serde_json::from_str(&r)
            .map_err(|e| ApiError::unavailable(format!("a stored pin is unreadable: {e}")))
    })
    .transpose()
}

fn standing(pin: &Pin, fp: &str) -> PinState {
    if pin.fingerprint == fp {
        PinState::Pinned { new: false }
    } else {
        PinState::Changed {
            pinned: pin.fingerprint.clone(),
        }
    }
}

/// Compares listed definitions with their pins: a tool seen for the first
/// time is pinned; a different definition is recorded as a change (once
/// per distinct definition). Reads only, unless something is new.
pub async fn observe(
    gw: &Gateway,
    who: &Principal,
    server: &str,
    tools: Vec<Value>,
) -> Result<Vec<(String, PinState)>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(
            "too_many_tools",
            format!("at most {MAX_TOOLS} tools per observation"),
        ));
    }
    let mut seen = Vec::with_capacity(tools.len());
    let mut dirty = false;
    for t in &tools {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("invalid_tool", "every tool has a string `name`"))?
            .to_string();
        check_names(server, &name)?;
        let fp = fingerprint(t);
        let pin = read_pin(gw, server, &name).await?;
        let needs_write = match &pin {
            None => true,
            Some(p) => {
                p.fingerprint != fp && p.changed.as_ref().map(|c| &c.fingerprint) != Some(&fp)
            }
        };
        dirty |= needs_write;
        seen.push((name, fp, pinned_part(t), pin));
    }
    if !dirty {
        return Ok(seen
            .into_iter()
            .map(|(n, fp, _, pin)| {
                let st = pin
                    .map(|p| standing(&p, &fp))
                    .unwrap_or(PinState::Pinned { new: false });
                (n, st)
            })
            .collect());
    }
    let now = rfc3339(gw.now());
    let actor = who.id.to_string();
    let server = server.to_string();
    let out = gw
        .store
        .transact(move |tx| {
            let mut out = Vec::with_capacity(seen.len());
            for (name, fp, def, _) in seen {
                let k = key(&server, &name);
                let pin: Option<Pin> = match tx.get_record(NS, &k)? {
                    Some(r) => Some(serde_json::from_str(&r).map_err(|e| {
                        ApiError::unavailable(format!("a stored pin is unreadable: {e}"))
                    })?),
                    None => None,
                };
                match pin {
                    None => {
                        let p = Pin {
                            server: server.clone(),
                            tool: name.clone(),
                            fingerprint: fp.clone(),
                            definition: def,
                            pinned_at: now.clone(),
                            accepted_by: None,
                            changed: None,
                        };
                        tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
                        tx.append(entry(&now, "mcp.tool.pinned", &actor,
                            json!({"server": server, "tool": name, "fingerprint": fp, "definition": p.definition})))?;
                        out.push((name, PinState::Pinned { new: true }));
                    }
                    Some(mut p) => {
                        if p.fingerprint != fp && p.changed.as_ref().map(|c| &c.fingerprint) != Some(&fp) {
                            tx.append(entry(&now, "mcp.tool.changed", &actor, json!({
                                "server": server, "tool": name, "pinned": p.fingerprint,
                                "seen": fp, "definition": def})))?;
                            p.changed = Some(Changed {
                                fingerprint: fp.clone(),
                                definition: def,
                                seen_at: now.clone(),
                                seen_by: actor.clone(),
                            });
                            tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
                        }
                        out.push((name, standing(&p, &fp)));
                    }
                }
            }
            Ok(out)
        })
        .await?;
    Ok(out)
}

/// A human accepts the changed definition `fingerprint` of a tool: it
/// becomes the pin. Only members of `admins` may, and only humans.
pub async fn accept(
    gw: &Gateway,
    who: &Principal,
    admins: &[String],
    server: &str,
    tool: &str,
    fp: &str,
) -> Result<Pin, ApiError> {
    check_names(server, tool)?;
    if who.id.kind() != PrincipalKind::User || !admins.iter().any(|g| who.groups.contains(g)) {
        return Err(ApiError::forbidden(
            "not_tool_admin",
            format!(
                "accepting a tool definition needs a human in one of: {}",
                admins.join(", ")
            ),
        ));
    }
    let now = rfc3339(gw.now());
    let actor = who.id.to_string();
    let (k, server, tool, fp) = (
        key(server, tool),
        server.to_string(),
        tool.to_string(),
        fp.to_string(),
    );
    let pin = gw
        .store
        .transact(move |tx| {
            let mut p: Pin = tx
                .get_record(NS, &k)?
                .and_then(|r| serde_json::from_str(&r).ok())
                .ok_or_else(|| ApiError::not_found(format!("no pinned tool {tool:?} on server {server}")))?;
            let Some(ch) = p.changed.clone().filter(|c| c.fingerprint == fp) else {
                return Err(ApiError::conflict(
                    "no_such_change",
                    if p.fingerprint == fp {
                        "that definition is already the pinned one".to_string()
                    } else {
                        format!("the changed definition waiting for acceptance is not {fp}; see `secondkey mcp tools list`")
                    },
                )
                .into());
            };
            tx.append(entry(&now, "mcp.tool.accepted", &actor, json!({
                "server": server, "tool": tool, "previous": p.fingerprint, "accepted": fp,
                "definition": ch.definition})))?;
            p.fingerprint = ch.fingerprint;
            p.definition = ch.definition;
            p.pinned_at = now.clone();
            p.accepted_by = Some(actor.clone());
            p.changed = None;
            tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
            Ok(p)
        })
        .await?;
    Ok(pin)
}

/// The pins of a server (all servers: `""`), with any waiting change.
pub async fn list(gw: &Gateway, server: &str) -> Result<Vec<Pin>, ApiError> {
    let store = gw.store.clone();
    let prefix = if server.is_empty() {
        String::new()
    } else {
        format!("{server}/")
    };
    let rows = tokio::task::spawn_blocking(move || store.list_records(NS, &prefix, None, 1000))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(rows
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_str(&v).ok())
        .collect())
}
