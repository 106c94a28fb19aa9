//! Export formats: JSON Lines and OCSF.
//!
//! JSON Lines is the lossless format: each line is the canonical entry JSON
//! exactly as logged, so a line can be hashed and checked against the log.
//!
//! OCSF is for SIEMs that normalise events (Amazon Security Lake, Splunk,
//! Sentinel). We map every entry to OCSF 1.3.0 class **API Activity**
//! (`class_uid` 6003, category *Application Activity* 6): a secondkey entry
//! records a decision about one API-like action (`kind.operation` on a
//! resource), which is what that class describes. The mapping:
//!
//! | OCSF attribute | from the entry |
//! |---|---|
//! | `time` / `time_dt` | `time` (epoch milliseconds / RFC 3339 as logged) |
//! | `activity_id` | `payload.action.operation`: `create`→1 Create, `read`/`export`→2 Read, `delete`→4 Delete, other verbs→3 Update; no action→0 Unknown |
//! | `type_uid` | `600300 + activity_id` |
//! | `actor.user` | `actor`: `uid` = principal id, `name` = id without its prefix, `type_id` 1 User for `user:`, 4 Service for `service:`, 99 Other (`type` = `"Agent"`) for `agent:` |
//! | `actor.authorizations[0].decision` | the decision (below) |
//! | `api.operation` | `kind.operation` of the action, else the event type |
//! | `api.service.name` | the action `kind` |
//! | `api.request.uid` | `subjects.request` |
//! | `resources[0]` | `uid` = `action.resource`, `type` = `kind`, `name` = `action.target` |
//! | `src_endpoint` | `action.context.source_ip` as `ip`, else `svc_name` = `"secondkey"` |
//! | `status_id` / `status` | 1 Success for allow/approve(d)/executed/consumed, 2 Failure for deny/denied/expired/failed/revoked/withdrawn, else 0 Unknown; `status` = the decision |
//! | `status_detail` | `payload.reasons` joined with `"; "` |
//! | `metadata` | `version` 1.3.0, product secondkey, `event_code` = event type, `sequence` = log index, `uid` = `"<index>"`, `correlation_uid` = request id, `original_time` = `time` |
//! | `message` | a one-line human summary |
//! | `unmapped.secondkey` | `event`, `log_index`, `decision`, `digest`, `request`, `grant`, `approvers`, `reasons`, `on_behalf_of`, `owner`, `subjects` |
//! | `raw_data` | the original entry JSON |
//!
//! The decision is `payload.decision` when present (`allow`, `deny`,
//! `review`, `approve`, …), otherwise the last word of the event type
//! (`request.expired` → `expired`). Missing fields are left out; the mapping
//! never fails.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The OCSF schema version [`to_ocsf`] targets.
pub const OCSF_VERSION: &str = "1.3.0";

/// One JSON Lines line (with its trailing `\n`) holding the entry exactly as
/// logged, so the export stays byte-for-byte verifiable against the log.
///
/// Canonical JSON never contains a raw newline. Should the bytes nevertheless
/// not be a single UTF-8 line, the entry is not dropped: the line becomes
/// `{"index":N,"error":…,"raw_base64":…}` so the gap is visible and the bytes
/// recoverable.
pub fn to_jsonl_line(index: u64, entry_bytes: &[u8]) -> String {
    match std::str::from_utf8(entry_bytes) {
        Ok(text) if !text.contains(['\n', '\r']) && !text.is_empty() => format!("{text}\n"),
        _ => {
            let fallback = json!({
                "index": index,
                "error": "entry is not a single line of UTF-8 JSON; raw bytes attached",
                "raw_base64": base64::engine::general_purpose::STANDARD.encode(entry_bytes),
            });
            format!("{fallback}\n")
        }
    }
}

/// Epoch milliseconds of an RFC 3339 timestamp, if it parses.
pub(crate) fn rfc3339_to_millis(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = value;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str()
}

/// The decision an entry records: `payload.decision`, or the last word of the
/// event type.
pub(crate) fn decision_of(entry: &Value) -> Option<String> {
    if let Some(d) = str_at(entry, &["payload", "decision"]) {
        return Some(d.to_string());
    }
    let event = entry.get("event")?.as_str()?;
    let last = event.rsplit('.').next()?;
    (!last.is_empty()).then(|| last.to_string())
}

fn activity_of(operation: Option<&str>) -> (u8, &'static str) {
    match operation {
        None => (0, "Unknown"),
        Some("create") => (1, "Create"),
        Some("read") | Some("export") => (2, "Read"),
        Some("delete") => (4, "Delete"),
        Some(_) => (3, "Update"),
    }
}

fn status_of(decision: Option<&str>) -> (u8, &'static str) {
    match decision {
        Some(
            "allow" | "allowed" | "approve" | "approved" | "executed" | "consumed" | "created",
        ) => (1, "Success"),
        Some("deny" | "denied" | "expired" | "failed" | "revoked" | "withdrawn" | "rejected") => {
            (2, "Failure")
        }
        _ => (0, "Unknown"),
    }
}

fn user_of(principal: &str) -> Value {
    let (prefix, name) = principal.split_once(':').unwrap_or(("", principal));
    let mut user = Map::new();
    user.insert("uid".into(), json!(principal));
    user.insert("name".into(), json!(name));
    match prefix {
        "user" => {
            user.insert("type_id".into(), json!(1));
            user.insert("type".into(), json!("User"));
        }
        "service" => {
            user.insert("type_id".into(), json!(4));
            user.insert("type".into(), json!("Service"));
        }
        "agent" => {
            user.insert("type_id".into(), json!(99));
            user.insert("type".into(), json!("Agent"));
        }
        _ => {
            user.insert("type_id".into(), json!(0));
        }
    }
    Value::Object(user)
}

fn approvers_of(entry: &Value) -> Vec<Value> {
    let Some(list) = entry
        .pointer("/payload/approvers")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|a| match a {
            Value::String(_) => Some(a.clone()),
            Value::Object(o) => o
                .get("id")
                .or_else(|| o.get("principal"))
                .or_else(|| o.get("reviewer"))
                .cloned(),
            _ => None,
        })
        .collect()
}

fn reasons_of(entry: &Value) -> Vec<String> {
    match entry.pointer("/payload/reasons") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_string(), v);
    }
}

/// Maps one log entry to an OCSF 1.3.0 API Activity event (see the module
/// documentation for the field-by-field mapping).
///
/// Tolerant by design: a SIEM copy must not stop because the server added or
/// omitted a payload field, so anything missing is simply left out and the
/// whole entry always travels in `raw_data`.
pub fn to_ocsf(index: u64, entry_json: &Value) -> Value {
    let event = str_at(entry_json, &["event"]).unwrap_or("unknown");
    let time_text = str_at(entry_json, &["time"]);
    let millis = time_text.and_then(rfc3339_to_millis);
    let action = entry_json.pointer("/payload/action");
    let kind = action.and_then(|a| a.get("kind")).and_then(Value::as_str);
    let operation = action
        .and_then(|a| a.get("operation"))
        .and_then(Value::as_str);
    let resource = action
        .and_then(|a| a.get("resource"))
        .and_then(Value::as_str);
    let target = action.and_then(|a| a.get("target")).and_then(Value::as_str);
    let on_behalf_of = action
        .and_then(|a| a.get("on_behalf_of"))
        .and_then(Value::as_str);
    let source_ip = action
        .and_then(|a| a.pointer("/context/source_ip"))
        .and_then(Value::as_str);
    let actor = str_at(entry_json, &["actor"]);
    let owner = str_at(entry_json, &["payload", "owner"])
        .or_else(|| str_at(entry_json, &["payload", "actor_owner"]));
    let request = str_at(entry_json, &["subjects", "request"]);
    let grant = str_at(entry_json, &["subjects", "grant"]);
    let digest =
        str_at(entry_json, &["digest"]).or_else(|| str_at(entry_json, &["payload", "digest"]));
    let decision = decision_of(entry_json);
    let approvers = approvers_of(entry_json);
    let reasons = reasons_of(entry_json);

    let (activity_id, activity_name) = activity_of(operation);
    let (status_id, status_name) = status_of(decision.as_deref());
    let api_operation = match (kind, operation) {
        (Some(k), Some(o)) => format!("{k}.{o}"),
        _ => event.to_string(),
    };

    let mut out = Map::new();
    out.insert("class_uid".into(), json!(6003));
    out.insert("class_name".into(), json!("API Activity"));
    out.insert("category_uid".into(), json!(6));
    out.insert("category_name".into(), json!("Application Activity"));
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert("type_uid".into(), json!(600300 + u32::from(activity_id)));
    out.insert("severity_id".into(), json!(1));
    out.insert("severity".into(), json!("Informational"));
    out.insert("time".into(), json!(millis.unwrap_or(0)));
    insert_opt(&mut out, "time_dt", time_text.map(|t| json!(t)));
    out.insert("status_id".into(), json!(status_id));
    out.insert(
        "status".into(),
        json!(decision.clone().unwrap_or_else(|| status_name.to_string())),
    );
    if !reasons.is_empty() {
        out.insert("status_detail".into(), json!(reasons.join("; ")));
    }

    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({"name": "secondkey", "vendor_name": "secondkey", "version": env!("CARGO_PKG_VERSION")}),
    );
    metadata.insert("log_name".into(), json!("secondkey-audit"));
    metadata.insert("event_code".into(), json!(event));
    metadata.insert("sequence".into(), json!(index));
    metadata.insert("uid".into(), json!(index.to_string()));
    insert_opt(&mut metadata, "correlation_uid", request.map(|r| json!(r)));
    insert_opt(&mut metadata, "original_time", time_text.map(|t| json!(t)));
    out.insert("metadata".into(), Value::Object(metadata));

    let mut actor_obj = Map::new();
    actor_obj.insert("app_name".into(), json!("secondkey"));
    insert_opt(&mut actor_obj, "user", actor.map(user_of));
    if let Some(d) = &decision {
        actor_obj.insert("authorizations".into(), json!([{ "decision": d }]));
    }
    out.insert("actor".into(), Value::Object(actor_obj));

    let mut api = Map::new();
    api.insert("operation".into(), json!(api_operation));
    insert_opt(&mut api, "service", kind.map(|k| json!({ "name": k })));
    insert_opt(&mut api, "request", request.map(|r| json!({ "uid": r })));
    out.insert("api".into(), Value::Object(api));

    if let Some(res) = resource {
        let mut r = Map::new();
        r.insert("uid".into(), json!(res));
        insert_opt(&mut r, "type", kind.map(|k| json!(k)));
        insert_opt(&mut r, "name", target.map(|t| json!(t)));
        out.insert("resources".into(), json!([Value::Object(r)]));
    }
    out.insert(
        "src_endpoint".into(),
        match source_ip {
            Some(ip) => json!({ "ip": ip }),
            None => json!({ "svc_name": "secondkey" }),
        },
    );

    let summary = format!(
        "{event}: {decision} {api_operation}{on}{by}",
        decision = decision.as_deref().unwrap_or("-"),
        on = resource.map(|r| format!(" on {r}")).unwrap_or_default(),
        by = actor.map(|a| format!(" by {a}")).unwrap_or_default(),
    );
    out.insert("message".into(), json!(summary));

    let mut sk = Map::new();
    sk.insert("event".into(), json!(event));
    sk.insert("log_index".into(), json!(index));
    insert_opt(&mut sk, "decision", decision.map(Value::String));
    insert_opt(&mut sk, "digest", digest.map(|d| json!(d)));
    insert_opt(&mut sk, "request", request.map(|r| json!(r)));
    insert_opt(&mut sk, "grant", grant.map(|g| json!(g)));
    sk.insert("approvers".into(), Value::Array(approvers));
    if !reasons.is_empty() {
        sk.insert("reasons".into(), json!(reasons));
    }
    insert_opt(&mut sk, "on_behalf_of", on_behalf_of.map(|o| json!(o)));
    insert_opt(&mut sk, "owner", owner.map(|o| json!(o)));
    insert_opt(&mut sk, "subjects", entry_json.get("subjects").cloned());
    out.insert("unmapped".into(), json!({ "secondkey": Value::Object(sk) }));
    out.insert("raw_data".into(), json!(entry_json.to_string()));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approved() -> Value {
        json!({
            "index": 7,
            "time": "2025-03-01T12:00:00.250Z",
            "event": "request.approved",
            "actor": "user:bob",
            "subjects": {"request": "req_1", "grant": "gr_9"},
            "digest": "ab12",
            "payload": {
                "action": {"kind": "sql", "operation": "export", "resource": "db://prod/customers",
                           "on_behalf_of": "user:alice", "context": {"source_ip": "10.0.0.5"}},
                "approvers": ["user:bob", {"id": "user:carol"}],
                "reasons": ["policy review-exports", "quorum 2 met"]
            }
        })
    }

    #[test]
    fn jsonl_line_is_the_entry_bytes_plus_newline() {
        let bytes = br#"{"event":"x","index":1}"#;
        assert_eq!(to_jsonl_line(1, bytes), "{\"event\":\"x\",\"index\":1}\n");
    }

    #[test]
    fn jsonl_never_emits_two_lines_for_one_entry() {
        let line = to_jsonl_line(3, b"{\"a\":\n1}");
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["index"], 3);
        assert!(v["raw_base64"].is_string());
        let bad = to_jsonl_line(4, &[0xff, 0xfe]);
        assert!(bad.contains("raw_base64"));
    }

    #[test]
    fn ocsf_maps_the_fields_auditors_filter_on() {
        let o = to_ocsf(7, &approved());
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["activity_id"], 2);
        assert_eq!(o["type_uid"], 600302);
        assert_eq!(o["time"], 1_740_830_400_250i64);
        assert_eq!(o["time_dt"], "2025-03-01T12:00:00.250Z");
        assert_eq!(o["actor"]["user"]["uid"], "user:bob");
        assert_eq!(o["actor"]["user"]["type_id"], 1);
        assert_eq!(o["actor"]["authorizations"][0]["decision"], "approved");
        assert_eq!(o["api"]["operation"], "sql.export");
        assert_eq!(o["api"]["request"]["uid"], "req_1");
        assert_eq!(o["resources"][0]["uid"], "db://prod/customers");
        assert_eq!(o["src_endpoint"]["ip"], "10.0.0.5");
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["status_detail"], "policy review-exports; quorum 2 met");
        assert_eq!(o["metadata"]["sequence"], 7);
        assert_eq!(o["metadata"]["event_code"], "request.approved");
        let sk = &o["unmapped"]["secondkey"];
        assert_eq!(sk["approvers"], json!(["user:bob", "user:carol"]));
        assert_eq!(sk["digest"], "ab12");
        assert_eq!(sk["grant"], "gr_9");
        assert_eq!(sk["on_behalf_of"], "user:alice");
        let raw: Value = serde_json::from_str(o["raw_data"].as_str().unwrap()).unwrap();
        assert_eq!(raw, approved());
    }

    #[test]
    fn ocsf_decision_prefers_payload_and_agents_are_other() {
        let e = json!({"time": "2025-03-01T12:00:00Z", "event": "action.decided", "actor": "agent:report-bot",
                       "payload": {"decision": "deny", "owner": "user:alice"}});
        let o = to_ocsf(1, &e);
        assert_eq!(o["status"], "deny");
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["actor"]["user"]["type_id"], 99);
        assert_eq!(o["actor"]["user"]["type"], "Agent");
        assert_eq!(o["unmapped"]["secondkey"]["owner"], "user:alice");
        assert_eq!(o["activity_id"], 0);
        assert_eq!(o["api"]["operation"], "action.decided");
    }

    #[test]
    fn ocsf_tolerates_an_empty_entry() {
        let o = to_ocsf(0, &json!({}));
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["time"], 0);
        assert_eq!(o["metadata"]["event_code"], "unknown");
        let o = to_ocsf(0, &json!({"event": "request.expired", "time": "garbage"}));
        assert_eq!(o["status"], "expired");
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["time"], 0);
    }
}
