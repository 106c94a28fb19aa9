//! JSON-RPC 2.0 messages as MCP uses them: one object per message, parsed
//! strictly (a repeated key is refused, so secondkey and the server cannot
//! read two different calls out of one message), with a size limit.

use serde_json::{json, Map, Value};

/// JSON-RPC's standard error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// secondkey's own (server-defined range): a request that acts was denied
/// or is held by policy, or could not be decided; nothing was forwarded.
pub const DENIED: i64 = -32001;
/// secondkey's own: a limit of `[mcp]` was reached (too many requests in
/// progress in the session, too many bytes held for it, too many
/// sessions); nothing was forwarded.
pub const LIMIT: i64 = -32005;

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub value: Map<String, Value>,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// Why a message was refused, as the JSON-RPC error to answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: i64,
    pub message: String,
    /// The id, when the message had a usable one.
    pub id: Option<Value>,
}

impl Refused {
    /// The JSON-RPC error response for this refusal.
    pub fn response(&self) -> Value {
        error_response(
            self.id.clone().unwrap_or(Value::Null),
            self.code,
            &self.message,
        )
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The `params` key naming what a request acts on: a resource's `uri`,
/// a prompt's or a tool's `name`; `None` for other methods.
pub fn target_key(method: &str) -> Option<&'static str> {
    match method {
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "prompts/get" | "tools/call" => Some("name"),
        _ => None,
    }
}

/// A JSON-RPC result response.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Whether `id` is a valid request id: a string or an integer (MCP forbids
/// null ids).
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.as_i64().is_some() || id.as_u64().is_some()
}

/// A map key for an id: `1` and `"1"` are different ids.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// The id as a server that reads ids loosely sees it: the number `91` and
/// the string `"91"` are one (the official Python SDK's HTTP transport
/// matches answers so). Two requests in progress in one session must not
/// share it, or one of them is never answered.
pub fn loose_id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The top-level `id` of a message of which only `head`, its first bytes,
/// was kept (the rest was over a size limit): how an answer to a request
/// too large to read can still name it. `None` unless the head is the
/// start of a JSON object whose top-level `id` (a number or a string) is
/// complete within it; nested values are skipped, never read as the id.
pub fn id_in_head(head: &[u8]) -> Option<Value> {
    let mut i = 0;
    let ws = |i: &mut usize| {
        while head.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    ws(&mut i);
    if head.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        ws(&mut i);
        let key_start = i;
        skip_value(head, &mut i)?;
        let key: String = match serde_json::from_slice(&head[key_start..i]).ok()? {
            Value::String(k) => k,
            _ => return None,
        };
        ws(&mut i);
        if head.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        ws(&mut i);
        let start = i;
        skip_value(head, &mut i)?;
        if key == "id" {
            return match serde_json::from_slice::<Value>(&head[start..i]).ok()? {
                v @ (Value::Number(_) | Value::String(_)) => Some(v),
                _ => None,
            };
        }
        ws(&mut i);
        match head.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// Moves `i` past one JSON value (not validated beyond its extent);
/// `None` if it does not end within `b`.
fn skip_value(b: &[u8], i: &mut usize) -> Option<()> {
    match *b.get(*i)? {
        b'"' => {
            *i += 1;
            loop {
                match *b.get(*i)? {
                    b'\\' => *i += 2,
                    b'"' => {
                        *i += 1;
                        return Some(());
                    }
                    _ => *i += 1,
                }
            }
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *b.get(*i)? {
                    b'"' => {
                        skip_value(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            *i += 1;
                            return Some(());
                        }
                    }
                    _ => {}
                }
                *i += 1;
            }
        }
        _ => {
            // A number, true, false or null: up to the next delimiter,
            // which must be within the head.
            let start = *i;
            while b
                .get(*i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                *i += 1;
            }
            (*i > start && *i < b.len()).then_some(())
        }
    }
}

/// The members of a JSON-RPC 2.0 message; no other is relayed.
const MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// The members of MCP's request and notification params (revision
/// 2025-11-25): a key that matches one of them only when case is ignored
/// is refused.
const PARAMS: &[&str] = &[
    "_meta",
    "name",
    "arguments",
    "uri",
    "task",
    "taskId",
    "cursor",
    "ref",
    "argument",
    "context",
    "level",
    "protocolVersion",
    "capabilities",
    "clientInfo",
    "progressToken",
    "progress",
    "total",
    "message",
    "requestId",
    "reason",
    "messages",
    "systemPrompt",
    "includeContext",
    "temperature",
    "maxTokens",
    "stopSequences",
    "metadata",
    "modelPreferences",
    "mode",
    "requestedSchema",
    "url",
    "elicitationId",
    "ttl",
    "data",
    "logger",
    "roots",
];

/// One character as a case-insensitive reader compares it: ASCII and
/// Unicode lowercase, and the two characters Go's `EqualFold` also folds
/// into ASCII (`ſ` into `s`, the Kelvin sign into `k`).
fn fold_char(c: char) -> char {
    match c {
        'A'..='Z' => c.to_ascii_lowercase(),
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c if c.is_ascii() => c,
        c => {
            let mut l = c.to_lowercase();
            match (l.next(), l.next()) {
                (Some(one), None) => one,
                _ => c,
            }
        }
    }
}

/// Whether two keys are the same to a reader that ignores case.
fn fold_eq(a: &str, b: &str) -> bool {
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

/// Two keys of one object, anywhere in `v`, that differ only in case.
fn folded_twin(v: &Value) -> Option<(String, String)> {
    match v {
        Value::Object(m) => {
            if (2..=8).contains(&m.len()) {
                for (i, a) in m.keys().enumerate() {
                    if let Some(b) = m.keys().skip(i + 1).find(|b| fold_eq(a, b)) {
                        return Some((a.clone(), b.clone()));
                    }
                }
            } else if m.len() > 8 {
                let mut seen: std::collections::HashMap<String, &str> =
                    std::collections::HashMap::with_capacity(m.len());
                for k in m.keys() {
                    if let Some(other) = seen.insert(k.chars().map(fold_char).collect(), k) {
                        return Some((other.to_string(), k.clone()));
                    }
                }
            }
            m.values().find_map(folded_twin)
        }
        Value::Array(a) => a.iter().find_map(folded_twin),
        _ => None,
    }
}

impl Message {
    /// Parses one message of at most `max` bytes.
    pub fn parse(bytes: &[u8], max: usize) -> Result<Message, Refused> {
        if bytes.len() > max {
            return Err(Refused {
                code: INVALID_REQUEST,
                message: format!(
                    "the message is {} bytes; secondkey relays at most {max} (mcp.max_message_bytes)",
                    bytes.len()
                ),
                id: None,
            });
        }
        let v = secondkey_core::action::parse_strict(bytes).map_err(|e| Refused {
            code: PARSE_ERROR,
            message: format!("not a JSON-RPC message (strict JSON: each key once): {e}"),
            id: None,
        })?;
        Self::from_value(v)
    }

    /// Classifies a parsed value.
    pub fn from_value(v: Value) -> Result<Message, Refused> {
        let obj = match v {
            Value::Object(m) => m,
            Value::Array(_) => {
                return Err(Refused {
                    code: INVALID_REQUEST,
                    message: "JSON-RPC batches are not part of MCP; send one message at a time"
                        .into(),
                    id: None,
                })
            }
            _ => {
                return Err(Refused {
                    code: INVALID_REQUEST,
                    message: "a JSON-RPC message is a JSON object".into(),
                    id: None,
                })
            }
        };
        let id = obj.get("id").cloned();
        let usable_id = id.clone().filter(valid_id);
        let refuse = |message: &str| Refused {
            code: INVALID_REQUEST,
            message: message.to_string(),
            id: usable_id.clone(),
        };
        // Readers that match member names without regard to case (Go's
        // encoding/json, .NET's web defaults) would read `Method`,
        // `Params` or `params.Name` as the members this parser reads under
        // their exact names, and see another call than the one decided.
        if let Some(k) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(refuse(&format!(
                "`{k}` is not a JSON-RPC member (jsonrpc, id, method, params, result, error)"
            )));
        }
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(refuse("`jsonrpc` must be \"2.0\""));
        }
        let kind = match (obj.get("method"), &id) {
            (Some(Value::String(_)), None) => Kind::Notification,
            (Some(Value::String(_)), Some(id)) => {
                if !valid_id(id) {
                    return Err(refuse("a request id is a string or an integer"));
                }
                Kind::Request
            }
            (Some(_), _) => return Err(refuse("`method` must be a string")),
            (None, Some(id)) => {
                let n = usize::from(obj.contains_key("result"))
                    + usize::from(obj.contains_key("error"));
                if n != 1 {
                    return Err(refuse("a response has exactly one of `result` or `error`"));
                }
                if !valid_id(id) && !id.is_null() {
                    return Err(refuse("a response id is a string or an integer"));
                }
                Kind::Response
            }
            (None, None) => return Err(refuse("neither a request, a notification nor a response")),
        };
        // MCP's params are always an object (JSON-RPC would allow an
        // array, which no MCP method takes): anything else is refused
        // rather than decided as empty and forwarded as sent.
        if let Some(p) = obj.get("params") {
            if !p.is_object() {
                return Err(refuse("`params` must be an object"));
            }
        }
        // Requests and notifications (either way) are what a peer acts on;
        // a response's result is the agent's to read, and may hold any
        // data (a row with `id` and `ID`).
        if kind != Kind::Response {
            if let Some(Value::Object(params)) = obj.get("params") {
                if let Some((k, known)) = params.keys().find_map(|k| {
                    PARAMS
                        .iter()
                        .find(|p| *p != k && fold_eq(p, k))
                        .map(|p| (k, *p))
                }) {
                    return Err(refuse(&format!(
                        "`params.{k}` differs from `{known}` only in case; some MCP servers read them as one, so secondkey refuses the message"
                    )));
                }
            }
            if let Some((a, b)) = obj.values().find_map(folded_twin) {
                return Err(refuse(&format!(
                    "the keys `{a}` and `{b}` differ only in case; some MCP servers read them as one, so secondkey refuses the message"
                )));
            }
        }
        // What names the thing a request acts on must be text, or the
        // decision would be about an empty name (a tool's name has its own
        // check and error code: `tool_name`).
        let named = obj
            .get("method")
            .and_then(Value::as_str)
            .filter(|m| *m != "tools/call")
            .and_then(target_key);
        if let (Some(key), Kind::Request) = (named, &kind) {
            if !obj
                .get("params")
                .and_then(|p| p.get(key))
                .is_some_and(Value::is_string)
            {
                return Err(refuse(&format!("`params.{key}` must be a string")));
            }
        }
        Ok(Message { value: obj, kind })
    }

    pub fn id(&self) -> Option<&Value> {
        self.value.get("id")
    }

    pub fn method(&self) -> Option<&str> {
        self.value.get("method").and_then(Value::as_str)
    }

    pub fn params(&self) -> Option<&Map<String, Value>> {
        self.value.get("params").and_then(Value::as_object)
    }

    pub fn result(&self) -> Option<&Value> {
        self.value.get("result")
    }

    /// The message as one JSON line (no trailing newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(&self.value).unwrap_or_default()
    }
}

/// The tool a `tools/call` request names: `params.name`, which must be a
/// string. Anything else is refused with -32602 (invalid params) before the
/// call is decided or forwarded.
pub fn tool_name(msg: &Message) -> Result<String, Refused> {
    let refuse = |what: &str| Refused {
        code: INVALID_PARAMS,
        message: format!(
            "`params.name` (the tool to call) {what}; nothing was decided or forwarded"
        ),
        id: msg.id().cloned(),
    };
    match msg.params().and_then(|p| p.get("name")) {
        None => Err(refuse("is missing")),
        Some(Value::String(s)) if s.is_empty() => Err(refuse("is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(refuse(&format!(
            "must be a string, not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                _ => "an object",
            }
        ))),
    }
}

/// The params of secondkey's own `tools/list` (page `cursor`) on behalf of
/// a call with `call_params`: the call's `_meta` envelope (stateless
/// protocol versions need it on every request) without its progress token
/// (progress belongs to the call).
pub fn own_list_params(
    call_params: &Map<String, Value>,
    cursor: Option<Value>,
) -> Map<String, Value> {
    let mut params = Map::new();
    if let Some(meta) = call_params.get("_meta").and_then(Value::as_object) {
        let mut m = meta.clone();
        m.remove("progressToken");
        params.insert("_meta".into(), Value::Object(m));
    }
    if let Some(c) = cursor {
        params.insert("cursor".into(), c);
    }
    params
}

/// The `_meta.progressToken` of a request's params, if the client asked for
/// progress notifications.
pub fn progress_token(params: Option<&Map<String, Value>>) -> Option<Value> {
    params?
        .get("_meta")?
        .get("progressToken")
        .filter(|t| t.is_string() || t.is_i64() || t.is_u64())
        .cloned()
}

/// The protocol version a stateless (2026-07-28 and later) request carries
/// in `_meta`; `None` for the handshake era.
pub fn request_protocol_version(params: Option<&Map<String, Value>>) -> Option<&str> {
    params?
        .get("_meta")?
        .get("io.modelcontextprotocol/protocolVersion")?
        .as_str()
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// Any head of any message: no panic, and an id found is the
        /// message's own when the whole message is an object.
        #[test]
        fn id_in_head_never_panics_and_finds_only_the_top_level_id(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            id in 0u32..1000,
            cut in 0usize..200,
        ) {
            let _ = id_in_head(&bytes);
            let msg = json!({"jsonrpc": "2.0", "params": {"id": "nested", "a": [1, {"id": 2}]}, "id": id, "method": "m"}).to_string();
            let head = &msg.as_bytes()[..cut.min(msg.len())];
            if let Some(found) = id_in_head(head) {
                proptest::prop_assert_eq!(found, json!(id));
            }
        }
    }

    #[test]
    fn the_id_of_a_message_cut_off_after_its_head() {
        let cases: [(&[u8], Option<Value>); 10] = [
            (
                br#"{"jsonrpc":"2.0","id":7,"result":{"text":"xxxx"#,
                Some(json!(7)),
            ),
            (
                br#" { "id" : "a\"b" , "method": "tools/call", "params": {"#,
                Some(json!("a\"b")),
            ),
            (
                br#"{"jsonrpc":"2.0","result":{"id":5,"x":[1,2]},"id":9,"#,
                Some(json!(9)),
            ),
            (br#"{"jsonrpc":"2.0","result":{"id":5,"x":"yyyyyy"#, None),
            (br#"{"params":{"a":"}"},"id":3}"#, Some(json!(3))),
            (br#"{"id":12"#, None),
            (br#"{"id":null,"#, None),
            (br#"{"id":{"x":1},"#, None),
            (br#"["id",1]"#, None),
            (br#"{"method":"x","id":-1.5e3 }"#, Some(json!(-1.5e3))),
        ];
        for (head, want) in cases {
            assert_eq!(id_in_head(head), want, "{}", String::from_utf8_lossy(head));
        }
    }
    use super::*;

    fn p(s: &str) -> Result<Message, Refused> {
        Message::parse(s.as_bytes(), 1024)
    }

    #[test]
    fn kinds() {
        assert_eq!(
            p(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .unwrap()
                .kind,
            Kind::Request
        );
        assert_eq!(
            p(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .kind,
            Kind::Notification
        );
        assert_eq!(
            p(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap().kind,
            Kind::Response
        );
    }

    #[test]
    fn malformed_is_refused_with_the_right_code() {
        assert_eq!(p("{not json").unwrap_err().code, PARSE_ERROR);
        let dup = p(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#);
        assert_eq!(
            dup.unwrap_err().code,
            PARSE_ERROR,
            "a repeated key could hide a second call"
        );
        assert_eq!(
            p(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
                .unwrap_err()
                .code,
            INVALID_REQUEST
        );
        let e = p(r#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (INVALID_REQUEST, Some(json!(7))));
        assert!(p(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).is_err());
        assert!(p(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).is_err());
        assert!(p(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#).is_err());
        assert!(p(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#).is_err());
        // MCP takes no array params; what a request acts on must be named
        // by text (else it would be decided as an empty name).
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":["file:///etc/passwd"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":["file:///x"]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":{"x":1}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/x","params":[1]}"#,
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.code, INVALID_REQUEST, "{bad}");
        }
        assert!(p(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#
        )
        .is_ok());
        assert!(
            p(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#).is_ok()
        );
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "x".repeat(2000)
        );
        assert!(p(&big).unwrap_err().message.contains("at most 1024"));
    }

    #[test]
    fn keys_a_case_blind_reader_would_merge_are_refused() {
        // What a reader matching names without regard to case (Go's
        // encoding/json: the last match wins) would read as a tools/call.
        for bad in [
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{},"Method":"tools/call","Params":{"name":"delete_customer","arguments":{"id":42}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized","Id":3,"Method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_report","arguments":{"q":"weekly"},"Name":"delete_customer","Arguments":{"id":42}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_report","Arguments":{"id":42}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q","arguments":{"limit":5,"Limit":50000}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q","arguments":{"a":[{"x":{"mode":"r","MODE":"w"}}]}}}"#,
            // Go folds the long s into s and the Kelvin sign into k.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"q\",\"arguments\":{\"status\":\"open\",\"\u{017F}tatus\":\"closed\"}}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"q\",\"arguments\":{\"kind\":1,\"\u{212A}ind\":2}}}",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"Error":{"code":1,"message":"x"}}"#,
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.code, INVALID_REQUEST, "{bad}");
        }
        // Distinct names that share no folded form, and case in values, pass.
        for good in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"Q","arguments":{"limit":5,"limits":"A","Name":"x"},"_meta":{"progressToken":1}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            // A result is data for the agent to read: a row may have both.
            r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"id":1,"ID":2}}}"#,
        ] {
            assert!(p(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ids_of_different_types_differ() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
        assert_eq!(loose_id_key(&json!(91)), loose_id_key(&json!("91")));
        assert_ne!(loose_id_key(&json!(91)), loose_id_key(&json!("x91")));
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                "[a-z\\u{0}-\\u{7f}\\u{e9}\\u{1f600}]{0,6}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("jsonrpc".to_string()),
                            Just("id".to_string()),
                            Just("method".to_string()),
                            Just("params".to_string()),
                            Just("result".to_string()),
                            Just("error".to_string()),
                            "[a-z]{1,3}"
                        ],
                        inner,
                        0..5
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An object with each JSON-RPC member absent, well-typed or not.
        fn near_message() -> impl Strategy<Value = Value> {
            let member = |good: BoxedStrategy<Value>| prop_oneof![2 => Just(None), 3 => good.prop_map(Some), 1 => json().prop_map(Some)];
            (
                member(prop_oneof![Just(json!("2.0")), Just(json!("1.0"))].boxed()),
                member(
                    prop_oneof![
                        any::<i64>().prop_map(Value::from),
                        "[a-z0-9]{0,4}".prop_map(Value::from),
                        Just(Value::Null)
                    ]
                    .boxed(),
                ),
                member(prop_oneof![Just(json!("tools/call")), Just(json!("ping"))].boxed()),
                member(prop_oneof![Just(json!({})), Just(json!([]))].boxed()),
                member(json().boxed()),
                member(Just(json!({"code": -1, "message": "x"})).boxed()),
            )
                .prop_map(|(jsonrpc, id, method, params, result, error)| {
                    let mut m = Map::new();
                    for (k, v) in [
                        ("jsonrpc", jsonrpc),
                        ("id", id),
                        ("method", method),
                        ("params", params),
                        ("result", result),
                        ("error", error),
                    ] {
                        if let Some(v) = v {
                            m.insert(k.into(), v);
                        }
                    }
                    Value::Object(m)
                })
        }

        proptest! {
            /// Any bytes: an answer, never a panic, and a refusal carries a
            /// JSON-RPC code.
            #[test]
            fn any_bytes_are_parsed_or_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
                max in 0usize..256,
            ) {
                match Message::parse(&bytes, max) {
                    Err(e) if bytes.len() > max => {
                        prop_assert_eq!(e.code, INVALID_REQUEST);
                        prop_assert!(e.message.contains("mcp.max_message_bytes"), "{}", e.message);
                    }
                    Err(e) => prop_assert!([PARSE_ERROR, INVALID_REQUEST].contains(&e.code)),
                    Ok(_) => prop_assert!(bytes.len() <= max),
                }
            }

            /// Messages near the valid ones (each member present or not,
            /// of the right type or not) and any JSON value: what is
            /// accepted has the shape its kind says, and reads back the same
            /// from its own line; the rest is refused as an invalid request.
            #[test]
            fn accepted_messages_have_their_kind_and_round_trip(
                v in prop_oneof![json(), near_message()],
            ) {
                let line = serde_json::to_vec(&v).unwrap();
                match Message::parse(&line, 1 << 20) {
                    Ok(m) => {
                        prop_assert_eq!(m.value.get("jsonrpc"), Some(&json!("2.0")));
                        match m.kind {
                            Kind::Request => prop_assert!(m.method().is_some() && m.id().is_some_and(valid_id)),
                            Kind::Notification => prop_assert!(m.method().is_some() && m.id().is_none()),
                            Kind::Response => {
                                prop_assert!(m.method().is_none() && m.id().is_some());
                                prop_assert!(m.value.contains_key("result") != m.value.contains_key("error"));
                            }
                        }
                        if let Some(p) = m.value.get("params") {
                            prop_assert!(p.is_object() || p.is_array());
                        }
                        let again = Message::parse(m.to_line().as_bytes(), 1 << 20).unwrap();
                        prop_assert_eq!(again, m);
                    }
                    Err(e) => prop_assert!(e.code == INVALID_REQUEST, "{:?}", e),
                }
            }

            /// Two keys of one object differing only in case, at any depth,
            /// refuse the whole message.
            #[test]
            fn a_key_repeated_in_another_case_anywhere_is_refused(depth in 0usize..4, key in "[a-z]{1,4}", upper in 0usize..4, a in json(), b in json()) {
                let other: String = key.chars().enumerate().map(|(i, c)| if i == upper % key.len() { c.to_ascii_uppercase() } else { c }).collect();
                let mut inner = format!(r#"{{"{key}":{a},"{other}":{b}}}"#);
                for _ in 0..depth {
                    inner = format!(r#"{{"x":[{inner}]}}"#);
                }
                let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{inner}}}}}"#);
                let e = Message::parse(line.as_bytes(), 1 << 20).unwrap_err();
                prop_assert_eq!(e.code, INVALID_REQUEST);
            }

            /// A key repeated in any object, at any depth, refuses the whole
            /// message: no two readers can see two different calls in it.
            #[test]
            fn a_repeated_key_anywhere_is_refused(depth in 0usize..4, key in "[a-z]{1,4}", a in json(), b in json()) {
                let mut inner = format!(r#"{{"{key}":{a},"{key}":{b}}}"#);
                for _ in 0..depth {
                    inner = format!(r#"{{"x":[{inner}]}}"#);
                }
                let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{inner}}}"#);
                let e = Message::parse(line.as_bytes(), 1 << 20).unwrap_err();
                prop_assert_eq!(e.code, PARSE_ERROR);
            }
        }
    }
}
