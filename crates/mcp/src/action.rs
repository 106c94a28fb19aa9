//! A `tools/call` as a secondkey action, and its result as a log summary.
//!
//! The action (digested, shown to reviewers):
//!
//! ```json
//! {"kind": "mcp", "operation": "export", "resource": "mcp://warehouse/export_table",
//!  "params": {"table": "customers", "format": "csv"},
//!  "context": {"client": {"name": "claude-code", "version": "1.2"}},
//!  "lineage": {"reads": ["postgres://warehouse/customers"]}}
//! ```
//!
//! `params` are the call's arguments exactly as sent, so policy conditions
//! on them as `context.params.<argument>` and an approval binds them: a
//! changed argument is a different digest. `context` holds what the client
//! declares (its `clientInfo`). What secondkey derives itself (server,
//! tool, annotations, where the operation came from, whether the tool was
//! listed, the session) are facts: in HTTP mode the gateway passes them to
//! policy under `context.gateway.mcp`; in stdio mode (secondkey runs on the
//! agent's side) they travel in the declared `context.mcp` instead, because
//! there the gateway cannot know them better than the agent. The session is
//! never digested: the identical call retried from a new session after an
//! approval is the same action.

use serde_json::{json, Map, Value};

use crate::config::ServerConfig;
use crate::tools::{annotation_facts, operation};

/// What is known about a call when it is decided.
pub struct Call<'a> {
    pub server: &'a ServerConfig,
    pub tool: &'a str,
    pub arguments: &'a Map<String, Value>,
    /// The tool's definition as listed (pinned), if known.
    pub definition: Option<&'a Value>,
    /// The client's declared `clientInfo`.
    pub client_info: Option<&'a Value>,
    pub session: Option<&'a str>,
    /// The client listed this tool in this session (a listing secondkey
    /// made itself does not count).
    pub listed: bool,
}

/// `mcp://<server>/<tool>`, the tool name percent-encoded outside
/// `A-Z a-z 0-9 - . _ ~` so that a name cannot pose as a path.
pub fn resource(server: &str, tool: &str) -> String {
    let mut s = format!("mcp://{server}/");
    for b in tool.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The action and the derived facts for a call.
pub fn build(call: &Call<'_>) -> (Value, Map<String, Value>) {
    let cfg = call.server.tools.get(call.tool);
    let (op, source) = operation(call.definition, cfg);
    let mut context = Map::new();
    if let Some(ci) = call.client_info.and_then(client_info) {
        context.insert("client".into(), ci);
    }
    let mut action = json!({
        "kind": "mcp",
        "operation": op,
        "resource": resource(&call.server.name, call.tool),
        "params": call.arguments,
    });
    let (reads, writes) = match cfg {
        Some(c) => (
            datasets(call.arguments, &c.reads, &call.server.dataset_prefix),
            datasets(call.arguments, &c.writes, &call.server.dataset_prefix),
        ),
        None => (vec![], vec![]),
    };
    if !reads.is_empty() || !writes.is_empty() {
        let mut l = Map::new();
        if !reads.is_empty() {
            l.insert("reads".into(), json!(reads));
        }
        if !writes.is_empty() {
            l.insert("writes".into(), json!(writes));
        }
        action["lineage"] = Value::Object(l);
    }
    let mut mcp = Map::new();
    mcp.insert("server".into(), json!(call.server.name));
    mcp.insert("tool".into(), json!(call.tool));
    mcp.insert("operation_source".into(), json!(source));
    mcp.insert(
        "annotations".into(),
        Value::Object(annotation_facts(call.definition)),
    );
    mcp.insert("listed".into(), json!(call.listed));
    // Not part of the action: a retry after approval comes in a new
    // session as often as not, and must still be the identical action.
    if let Some(s) = call.session {
        mcp.insert("session".into(), json!(s));
    }
    let mut facts = Map::new();
    facts.insert("mcp".into(), Value::Object(mcp));
    if !context.is_empty() {
        action["context"] = Value::Object(context);
    }
    (action, facts)
}

/// Moves derived facts into the declared context (stdio mode: the adapter
/// runs on the agent's side, so what it derives is what the agent says).
/// The session stays out: the context is digested, and the identical call
/// retried from a new session must be the same action.
pub fn declare_facts(action: &mut Value, mut facts: Map<String, Value>) {
    if let Some(Value::Object(m)) = facts.get_mut("mcp") {
        m.remove("session");
    }
    if let Some(obj) = action.as_object_mut() {
        let ctx = obj
            .entry("context")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(c) = ctx.as_object_mut() {
            for (k, v) in facts {
                c.insert(k, v);
            }
        }
    }
}

/// The declared `clientInfo`, reduced to short strings (`name`, `version`,
/// `title`): it is shown to reviewers and logged, and the client may send
/// anything there.
fn client_info(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let mut m = Map::new();
    for k in ["name", "version", "title"] {
        if let Some(s) = o.get(k).and_then(Value::as_str) {
            let s: String = s.chars().filter(|c| !c.is_control()).take(128).collect();
            m.insert(k.into(), json!(s));
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// The string values at the dotted `paths` of the arguments (arrays of
/// strings give several), as dataset URIs: kept as they are when they have
/// a scheme, else prefixed.
pub fn datasets(args: &Map<String, Value>, paths: &[String], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        let mut cur: Option<&Value> = None;
        for (i, seg) in p.split('.').enumerate() {
            cur = if i == 0 {
                args.get(seg)
            } else {
                cur.and_then(|c| c.get(seg))
            };
        }
        let vals: Vec<&str> = match cur {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        for v in vals {
            if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
                continue;
            }
            let uri = if v.contains("://") {
                v.to_string()
            } else {
                format!("{prefix}{v}")
            };
            if !out.contains(&uri) {
                out.push(uri);
            }
        }
    }
    out
}

/// What the log keeps of a tool result: whether it failed, how big it was,
/// and the content itself only when configured.
pub fn result_summary(result: &Value, record_content: bool) -> (bool, Value) {
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let content = result
        .get("content")
        .cloned()
        .unwrap_or(Value::Array(vec![]));
    let bytes = serde_json::to_vec(&content).map(|b| b.len()).unwrap_or(0)
        + result
            .get("structuredContent")
            .and_then(|s| serde_json::to_vec(s).ok())
            .map(|b| b.len())
            .unwrap_or(0);
    let items = content.as_array().map(Vec::len).unwrap_or(0);
    let mut s = json!({"status": if is_error { "error" } else { "ok" }, "content_items": items, "bytes": bytes});
    if record_content {
        // The log entry has a size limit; keep the content when it fits.
        if bytes <= 16 * 1024 {
            s["content"] = content;
            if let Some(sc) = result.get("structuredContent") {
                s["structuredContent"] = sc.clone();
            }
        } else {
            s["content_omitted"] = json!("larger than 16 KiB");
        }
    }
    (!is_error, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ToolConfig;
    use std::collections::BTreeMap;

    fn server() -> ServerConfig {
        let mut tools = BTreeMap::new();
        tools.insert(
            "export_table".to_string(),
            ToolConfig {
                operation: Some("export".into()),
                reads: vec!["table".into()],
                writes: vec!["dest.path".into()],
            },
        );
        ServerConfig {
            name: "warehouse".into(),
            url: None,
            headers: vec![],
            on_change: crate::config::OnChange::Hold,
            record_content: false,
            dataset_prefix: "postgres://warehouse/".into(),
            tools,
        }
    }

    #[test]
    fn a_call_becomes_an_action() {
        let s = server();
        let args = json!({"table": "customers", "dest": {"path": "s3://out/c.csv"}});
        let def =
            json!({"name": "export_table", "annotations": {"readOnlyHint": true, "title": "x"}});
        let (a, facts) = build(&Call {
            server: &s,
            tool: "export_table",
            arguments: args.as_object().unwrap(),
            definition: Some(&def),
            client_info: Some(&json!({"name": "cli", "version": "1", "extra": "dropped"})),
            session: Some("s1"),
            listed: false,
        });
        assert_eq!(a["kind"], "mcp");
        assert_eq!(a["operation"], "export");
        assert_eq!(a["resource"], "mcp://warehouse/export_table");
        assert_eq!(a["params"], args);
        assert_eq!(
            a["context"],
            json!({"client": {"name": "cli", "version": "1"}})
        );
        assert_eq!(facts["mcp"]["session"], "s1");
        assert_eq!(
            facts["mcp"]["listed"], false,
            "a definition known is not a listing"
        );
        let mut declared = a.clone();
        declare_facts(&mut declared, facts.clone());
        assert!(
            declared["context"]["mcp"].get("session").is_none(),
            "the session is not digested"
        );
        assert_eq!(
            a["lineage"],
            json!({"reads": ["postgres://warehouse/customers"], "writes": ["s3://out/c.csv"]})
        );
        assert_eq!(facts["mcp"]["operation_source"], "config");
        assert_eq!(facts["mcp"]["annotations"], json!({"readOnlyHint": true}));
        secondkey_core::action::Action::from_json(&a).expect("a valid action");
    }

    #[test]
    fn tool_names_cannot_pose_as_paths() {
        assert_eq!(resource("s", "a/../b c"), "mcp://s/a%2F..%2Fb%20c");
    }

    #[test]
    fn summaries() {
        let r = json!({"content": [{"type": "text", "text": "hello"}], "isError": false});
        let (ok, s) = result_summary(&r, false);
        assert!(ok);
        assert_eq!(s["status"], "ok");
        assert!(s.get("content").is_none());
        let (ok, s) = result_summary(&json!({"content": [], "isError": true}), true);
        assert!(!ok);
        assert_eq!(s["content"], json!([]));
    }
}
