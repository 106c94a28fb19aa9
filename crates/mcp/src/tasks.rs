//! Whose MCP tasks are whose (protocol revision 2025-11-25, "tasks").
//!
//! A request carrying `params.task` is answered with a `CreateTaskResult`
//! whose `task.taskId` names the task; the client then reaches it with
//! `tasks/get`, `tasks/result` and `tasks/cancel` (`params.taskId`) and
//! sees it in `tasks/list`. Every principal reaches an upstream with the
//! gateway's one credential, so an upstream that scopes tasks by
//! authorization (and any stateless one) would show one principal's task
//! to another who names its id. The transports therefore keep, per
//! principal and MCP session, the ids the upstream gave in answer to that
//! caller's own decided calls ([`Owned`]), and:
//! - refuse `tasks/get`, `tasks/result` and `tasks/cancel` naming any other
//!   id (or none) with JSON-RPC -32602, the spec's code for an unknown
//!   task, without forwarding them;
//! - relay a `tasks/list` answer with only the caller's tasks in it
//!   ([`filter_list`]);
//! - drop a server's `notifications/tasks/status` about a task that is
//!   not the caller's ([`foreign_status`]) before the client sees it.
//!
//! Invariant: an id enters an [`Owned`] set only from the upstream's
//! answer to a request this gateway decided and relayed for that caller;
//! nothing a client sends adds one.

use std::collections::{HashSet, VecDeque};

use serde_json::{Map, Value};

/// Most task ids kept per principal and session; past it the oldest is
/// forgotten (its task can no longer be reached through the gateway).
pub const MAX_TASKS: usize = 1000;

/// Longest task id kept, in bytes: a longer one is never the caller's.
pub const MAX_TASK_ID_BYTES: usize = 256;

/// The task ids one caller (principal and session) may reach, oldest
/// first, at most [`MAX_TASKS`].
#[derive(Debug, Default, Clone)]
pub struct Owned {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Owned {
    /// Keeps `id` as the caller's; the oldest is forgotten when full.
    pub fn insert(&mut self, id: String) {
        if id.len() > MAX_TASK_ID_BYTES || self.ids.contains(&id) {
            return;
        }
        if self.order.len() >= MAX_TASKS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A client's `tasks/*` request, as the gateway treats it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRequest {
    /// `tasks/get`, `tasks/result` or `tasks/cancel` naming this task.
    One(String),
    /// `tasks/get`, `tasks/result` or `tasks/cancel` whose `params.taskId`
    /// is missing, not a string, empty or too long: the sentence saying so.
    BadId(String),
    /// `tasks/list`: relayed, its answer filtered.
    List,
}

/// The methods of [`TaskRequest`].
pub const METHODS: [&str; 4] = ["tasks/get", "tasks/result", "tasks/cancel", "tasks/list"];

/// What a `tasks/*` request is; `None` for any other method.
pub fn request(method: &str, params: Option<&Map<String, Value>>) -> Option<TaskRequest> {
    if method == "tasks/list" {
        return Some(TaskRequest::List);
    }
    if !METHODS.contains(&method) {
        return None;
    }
    let why = match params.and_then(|p| p.get("taskId")) {
        None => "is missing",
        Some(Value::String(s)) if s.is_empty() => "is empty",
        Some(Value::String(s)) if s.len() > MAX_TASK_ID_BYTES => "is too long",
        Some(Value::String(s)) => return Some(TaskRequest::One(s.clone())),
        Some(_) => "must be a string",
    };
    Some(TaskRequest::BadId(format!(
        "`params.taskId` {why}; nothing was forwarded"
    )))
}

/// The sentence of the -32602 error answering a request for a task that
/// is not the caller's: the same whether it exists or not, so that another
/// principal's task cannot be told from none.
pub fn unknown(id: &str) -> String {
    let shown: String = id.chars().take(64).collect();
    format!(
        "unknown task {shown:?}: no task with this id was created by a call of yours in this session (or it is no longer tracked); nothing was forwarded"
    )
}

/// Whether a request asks to run as a task (`params.task`, an object):
/// only then does its answer name a task the caller owns.
pub fn asks(params: Option<&Map<String, Value>>) -> bool {
    params
        .and_then(|p| p.get("task"))
        .is_some_and(Value::is_object)
}

/// The task an answer to a request that [`asks`] for one created: the
/// `result.task.taskId` of the upstream's `CreateTaskResult`.
pub fn created(response: &Value) -> Option<String> {
    let id = response
        .get("result")?
        .get("task")?
        .get("taskId")?
        .as_str()?;
    (!id.is_empty() && id.len() <= MAX_TASK_ID_BYTES).then(|| id.to_string())
}

/// Whether a server message to the caller tells the state of a task that
/// is not theirs: a `notifications/tasks/status` whose `params.taskId` is
/// not in `own` (such a notification is dropped; the spec makes it
/// optional, so a client never depends on one).
pub fn foreign_status(
    method: Option<&str>,
    params: Option<&Map<String, Value>>,
    own: &Owned,
) -> bool {
    method == Some("notifications/tasks/status")
        && !params
            .and_then(|p| p.get("taskId"))
            .and_then(Value::as_str)
            .is_some_and(|id| own.contains(id))
}

/// Keeps in a `tasks/list` answer only the caller's tasks: the entries of
/// `result.tasks` whose `taskId` is in `own` (a result without a `tasks`
/// array gets an empty one). `nextCursor` and everything else of the
/// result stay; an error answer is left as it is.
pub fn filter_list(response: &mut Value, own: &Owned) {
    let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    let mine: Vec<Value> = match result.remove("tasks") {
        Some(Value::Array(all)) => all
            .into_iter()
            .filter(|t| {
                t.get("taskId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| own.contains(id))
            })
            .collect(),
        _ => vec![],
    };
    result.insert("tasks".into(), Value::Array(mine));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn task_requests_and_their_ids() {
        let p = params(json!({"taskId": "t-1", "_meta": {}}));
        for m in ["tasks/get", "tasks/result", "tasks/cancel"] {
            assert_eq!(request(m, Some(&p)), Some(TaskRequest::One("t-1".into())));
        }
        assert_eq!(request("tasks/list", None), Some(TaskRequest::List));
        assert_eq!(request("tools/call", Some(&p)), None);
        let long = "x".repeat(MAX_TASK_ID_BYTES + 1);
        for bad in [
            None,
            Some(json!({})),
            Some(json!({"taskId": 7})),
            Some(json!({"taskId": null})),
            Some(json!({"taskId": ["t-1"]})),
            Some(json!({"taskId": {"id": "t-1"}})),
            Some(json!({"taskId": ""})),
            Some(json!({"taskId": long})),
        ] {
            let p = bad.map(params);
            assert!(
                matches!(
                    request("tasks/result", p.as_ref()),
                    Some(TaskRequest::BadId(_))
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_task_is_asked_for_with_params_task_and_named_by_its_creation() {
        assert!(asks(Some(&params(
            json!({"name": "t", "task": {"ttl": 1000}})
        ))));
        assert!(asks(Some(&params(json!({"name": "t", "task": {}})))));
        // A call that did not ask for a task: whatever its result says.
        for p in [
            json!({"name": "t"}),
            json!({"task": true}),
            json!({"task": null}),
        ] {
            assert!(!asks(Some(&params(p))));
        }
        assert!(!asks(None));
        let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "t-1", "status": "working"}}});
        assert_eq!(created(&answer), Some("t-1".into()));
        for answer in [
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": 5}}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": ""}}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "x".repeat(MAX_TASK_ID_BYTES + 1)}}}),
        ] {
            assert_eq!(created(&answer), None, "{answer}");
        }
    }

    #[test]
    fn the_set_is_bounded_and_forgets_the_oldest() {
        let mut own = Owned::default();
        for i in 0..MAX_TASKS + 10 {
            own.insert(format!("t-{i}"));
        }
        assert_eq!(own.len(), MAX_TASKS);
        assert!(
            !own.contains("t-0") && !own.contains("t-9"),
            "the oldest went"
        );
        assert!(own.contains("t-10") && own.contains(&format!("t-{}", MAX_TASKS + 9)));
        // Seen again: kept once, not moved.
        own.insert("t-10".into());
        assert_eq!(own.len(), MAX_TASKS);
        own.insert("y".repeat(MAX_TASK_ID_BYTES + 1));
        assert!(!own.contains(&"y".repeat(MAX_TASK_ID_BYTES + 1)));
    }

    #[test]
    fn only_the_callers_task_statuses_pass() {
        let mut own = Owned::default();
        own.insert("mine".into());
        let status = "notifications/tasks/status";
        let of = |v: Value| params(v);
        assert!(!foreign_status(
            Some(status),
            Some(&of(json!({"taskId": "mine"}))),
            &own
        ));
        assert!(foreign_status(
            Some(status),
            Some(&of(json!({"taskId": "theirs"}))),
            &own
        ));
        assert!(foreign_status(
            Some(status),
            Some(&of(json!({"taskId": 1}))),
            &own
        ));
        assert!(foreign_status(Some(status), None, &own));
        let other = Some("notifications/message");
        assert!(!foreign_status(
            other,
            Some(&of(json!({"taskId": "theirs"}))),
            &own
        ));
    }

    #[test]
    fn a_listing_keeps_only_the_callers_tasks_and_its_cursor() {
        let mut own = Owned::default();
        own.insert("mine".into());
        let mut answer = json!({"jsonrpc": "2.0", "id": 5, "result": {
            "tasks": [{"taskId": "theirs", "status": "completed"}, {"taskId": "mine", "status": "working"},
                      {"status": "working"}, "mine", {"taskId": ["mine"]}],
            "nextCursor": "page-2", "_meta": {"k": 1}}});
        filter_list(&mut answer, &own);
        assert_eq!(
            answer["result"],
            json!({"tasks": [{"taskId": "mine", "status": "working"}], "nextCursor": "page-2", "_meta": {"k": 1}})
        );
        let mut odd = json!({"jsonrpc": "2.0", "id": 5, "result": {"tasks": {"theirs": {}}}});
        filter_list(&mut odd, &own);
        assert_eq!(odd["result"], json!({"tasks": []}));
        let mut err =
            json!({"jsonrpc": "2.0", "id": 5, "error": {"code": -32602, "message": "bad cursor"}});
        let before = err.clone();
        filter_list(&mut err, &own);
        assert_eq!(err, before);
    }
}
