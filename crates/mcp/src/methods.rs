//! Which client→server requests act, and as what action.
//!
//! Every request a client sends is one of four classes:
//! - **listing and session upkeep**, relayed undecided: `initialize`,
//!   `server/discover` (the handshake of the 2026-07-28 revision), `ping`, `tools/list`, `resources/list`, `resources/templates/list`,
//!   `prompts/list`, `completion/complete`, `logging/setLevel`,
//!   `resources/unsubscribe`;
//! - **`tasks/*`** (`tasks/get`, `tasks/result`, `tasks/cancel`,
//!   `tasks/list`), not decided but held to the caller's own tasks: those
//!   created by its decided calls in this session (see [`crate::tasks`]);
//! - **`tools/call`**, decided as the tool's action (see [`crate::action`]);
//! - **everything else acts**, and is decided by policy before the server
//!   sees it: `resources/read` and `resources/subscribe` (operation `read`,
//!   resource `mcp://<server>/resources/<uri, percent-encoded>`, params
//!   `{"uri": …}`), `prompts/get` (operation `read`, resource
//!   `mcp://<server>/prompts/<name>`, the prompt's arguments as params),
//!   and any method the gateway does not know, today's or a future
//!   revision's (operation `request`, resource
//!   `mcp://<server>/methods/<method>`, params as sent): no policy permits
//!   `mcp.request` unless an operator writes one, so unknown methods are
//!   refused by default.
//!
//! A tool's resource is `mcp://<server>/<tool>` with any `/` of its name
//! encoded, so these paths can never name a tool.

use serde_json::{json, Map, Value};

use crate::action::resource as encoded;

/// Methods relayed without a decision.
const UPKEEP: [&str; 10] = [
    "initialize",
    "server/discover",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "completion/complete",
    "logging/setLevel",
    "resources/unsubscribe",
];

/// What a client request is.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    Upkeep,
    /// A `tasks/*` request: only the caller's own tasks are reached.
    Task(crate::tasks::TaskRequest),
    ToolsCall,
    Acts(Act),
}

/// A request that acts, as the action policy decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub method: String,
    pub operation: &'static str,
    pub resource: String,
    pub params: Map<String, Value>,
}

/// The class of a client request `method` with `params`.
pub fn client_request(
    server: &str,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> ClientRequest {
    if method == "tools/call" {
        return ClientRequest::ToolsCall;
    }
    if UPKEEP.contains(&method) {
        return ClientRequest::Upkeep;
    }
    if let Some(t) = crate::tasks::request(method, params) {
        return ClientRequest::Task(t);
    }
    let empty = Map::new();
    let p = params.unwrap_or(&empty);
    let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
    let (operation, resource, params) = match method {
        "resources/read" | "resources/subscribe" => (
            "read",
            encoded(server, &format!("resources/{}", text("uri"))).replacen(
                "resources%2F",
                "resources/",
                1,
            ),
            json_map(json!({"uri": text("uri")})),
        ),
        "prompts/get" => (
            "read",
            encoded(server, &format!("prompts/{}", text("name"))).replacen(
                "prompts%2F",
                "prompts/",
                1,
            ),
            match p.get("arguments") {
                Some(Value::Object(a)) => a.clone(),
                _ => Map::new(),
            },
        ),
        _ => {
            let mut rest = p.clone();
            rest.remove("_meta");
            (
                "request",
                encoded(server, &format!("methods/{method}")).replacen("methods%2F", "methods/", 1),
                rest,
            )
        }
    };
    ClientRequest::Acts(Act {
        method: method.to_string(),
        operation,
        resource,
        params,
    })
}

/// A request the server sends the client (sampling, elicitation, roots,
/// or one the gateway does not know), as the action policy decides before
/// the client sees it: `None` for `ping`, which is relayed undecided.
/// Operations: `sampling/createMessage` → `sample`, `elicitation/create` →
/// `elicit`, `roots/list` → `read`, anything else → `request`; resource
/// `mcp://<server>/client/<method>`; params as sent, without `_meta`.
pub fn server_request(
    server: &str,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Option<Act> {
    let operation = match method {
        "ping" => return None,
        "sampling/createMessage" => "sample",
        "elicitation/create" => "elicit",
        "roots/list" => "read",
        _ => "request",
    };
    let mut rest = params.cloned().unwrap_or_default();
    rest.remove("_meta");
    Some(Act {
        method: method.to_string(),
        operation,
        resource: encoded(server, &format!("client/{method}")).replacen("client%2F", "client/", 1),
        params: rest,
    })
}

fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Act {
    /// The action (digested: what a reviewer approves) and the facts the
    /// gateway derived.
    pub fn action(&self, server: &str, session: Option<&str>) -> (Value, Map<String, Value>) {
        let action = json!({
            "kind": "mcp",
            "operation": self.operation,
            "resource": self.resource,
            "params": self.params,
        });
        let mut mcp = Map::new();
        mcp.insert("server".into(), json!(server));
        mcp.insert("method".into(), json!(self.method));
        if let Some(s) = session {
            mcp.insert("session".into(), json!(s));
        }
        let mut facts = Map::new();
        facts.insert("mcp".into(), Value::Object(mcp));
        (action, facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for m in UPKEEP {
            assert_eq!(client_request("s", m, None), ClientRequest::Upkeep);
        }
        assert_eq!(
            client_request("s", "tools/call", None),
            ClientRequest::ToolsCall
        );
        for m in crate::tasks::METHODS {
            assert!(
                matches!(client_request("s", m, None), ClientRequest::Task(_)),
                "{m}"
            );
        }
        let p = json_map(json!({"uri": "file:///etc/passwd", "_meta": {"x": 1}}));
        let ClientRequest::Acts(a) = client_request("s", "resources/read", Some(&p)) else {
            panic!()
        };
        assert_eq!(
            (a.operation, a.resource.as_str()),
            ("read", "mcp://s/resources/file%3A%2F%2F%2Fetc%2Fpasswd")
        );
        assert_eq!(a.params, json_map(json!({"uri": "file:///etc/passwd"})));
        let p = json_map(json!({"name": "summarize/all", "arguments": {"topic": "x"}}));
        let ClientRequest::Acts(a) = client_request("s", "prompts/get", Some(&p)) else {
            panic!()
        };
        assert_eq!(a.resource, "mcp://s/prompts/summarize%2Fall");
        assert_eq!(a.params, json_map(json!({"topic": "x"})));
        // A method of a future revision: decided as `request`.
        let p = json_map(json!({"a": 1, "_meta": {}}));
        let ClientRequest::Acts(a) = client_request("s", "files/delete", Some(&p)) else {
            panic!()
        };
        assert_eq!(
            (a.operation, a.resource.as_str()),
            ("request", "mcp://s/methods/files%2Fdelete")
        );
        assert_eq!(a.params, json_map(json!({"a": 1})));
        let p = json_map(json!({"maxTokens": 5, "_meta": {}}));
        let a = server_request("s", "sampling/createMessage", Some(&p)).unwrap();
        assert_eq!(
            (a.operation, a.resource.as_str()),
            ("sample", "mcp://s/client/sampling%2FcreateMessage")
        );
        assert_eq!(a.params, json_map(json!({"maxTokens": 5})));
        assert_eq!(
            server_request("s", "roots/list", None).unwrap().operation,
            "read"
        );
        assert_eq!(
            server_request("s", "elicitation/create", None)
                .unwrap()
                .operation,
            "elicit"
        );
        assert_eq!(
            server_request("s", "x/new", None).unwrap().operation,
            "request"
        );
        assert!(server_request("s", "ping", None).is_none());
    }
}
