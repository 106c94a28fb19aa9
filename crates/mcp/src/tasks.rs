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
//! A decided call that runs as a task has its outcome recorded when the
//! task's result comes back, not when the task is created: the set keeps,
//! with the task's id, the run it belongs to ([`Owned::await_result`]),
//! and the first `tasks/result` for it takes that run out
//! ([`Owned::take_result`]); its answer (a result or a JSON-RPC error) is
//! recorded against the decision once, and later fetches record nothing.
//! The fetch that took the run records it whatever its client does: the
//! answer, or unknown if the answer is lost. A run whose result is never
//! fetched is recorded as unknown when its task is forgotten
//! ([`FORGOTTEN`]), its session ends ([`ENDED`],
//! [`Owned::take_all_results`]) or idles out ([`IDLE`]), and a fetch whose
//! client went away gets a bounded time to finish ([`GAVE_UP`]). So every
//! decided run that a task carries ends with exactly one result, unless
//! the process that kept it stops first (an HTTP gateway's restart forgets
//! its sessions).
//!
//! Invariant: an id enters an [`Owned`] set only from the upstream's
//! answer to a request this gateway decided and relayed for that caller;
//! nothing a client sends adds one.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use crate::intercept::Forward;

/// Most task ids kept per principal and session; past it the oldest is
/// forgotten (its task can no longer be reached through the gateway).
pub const MAX_TASKS: usize = 1000;

/// Longest task id kept, in bytes: a longer one is never the caller's.
pub const MAX_TASK_ID_BYTES: usize = 256;

/// The task ids one caller (principal and session) may reach, oldest
/// first, at most [`MAX_TASKS`], and the decided runs (`R`: a [`Forward`],
/// or whatever a transport records it with) awaiting their task's result.
#[derive(Debug, Clone)]
pub struct Owned<R = Forward> {
    order: VecDeque<String>,
    ids: HashSet<String>,
    /// The runs whose task's result has not been fetched yet, by task id.
    awaiting: HashMap<String, R>,
}

impl<R> Default for Owned<R> {
    fn default() -> Self {
        Owned {
            order: VecDeque::new(),
            ids: HashSet::new(),
            awaiting: HashMap::new(),
        }
    }
}

impl<R> Owned<R> {
    /// Keeps `id` as the caller's; the oldest is forgotten when full, and
    /// the run still awaiting its result there, if any, is returned (its
    /// outcome can no longer be fetched through the gateway).
    pub fn insert(&mut self, id: String) -> Option<R> {
        if id.len() > MAX_TASK_ID_BYTES || self.ids.contains(&id) {
            return None;
        }
        let mut forgotten = None;
        if self.order.len() >= MAX_TASKS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
                forgotten = self.awaiting.remove(&old);
            }
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
        forgotten
    }

    /// Keeps `run` as the decided call whose outcome task `id` will give;
    /// gives `run` back when `id` is not the caller's or already has one
    /// (then the answer that named the task is the run's outcome).
    pub fn await_result(&mut self, id: &str, run: R) -> Option<R> {
        if !self.ids.contains(id) || self.awaiting.contains_key(id) {
            return Some(run);
        }
        self.awaiting.insert(id.to_string(), run);
        None
    }

    /// The run awaiting task `id`'s result, taken: only the first fetch
    /// of a result gets it.
    pub fn take_result(&mut self, id: &str) -> Option<R> {
        self.awaiting.remove(id)
    }

    /// Every run still awaiting its task's result, taken (the session or
    /// the server is gone).
    pub fn take_all_results(&mut self) -> Vec<R> {
        self.awaiting.drain().map(|(_, run)| run).collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The same task ids, without the runs awaiting results: what reading
    /// an answer against them needs, apart from the runs.
    pub fn ids(&self) -> Owned<()> {
        Owned {
            order: self.order.clone(),
            ids: self.ids.clone(),
            awaiting: HashMap::new(),
        }
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

/// What a decided call's answer leaves to record, once [`learn`]ed.
#[derive(Debug)]
pub struct Learned<R = Forward> {
    /// The run whose outcome is this answer: recorded now. `None` when
    /// the answer created a task whose result will give the outcome.
    pub now: Option<R>,
    /// A run of an older task forgotten to make room, its result never
    /// fetched: recorded as unknown ([`FORGOTTEN`]).
    pub forgotten: Option<R>,
}

/// Why a run is recorded as unknown when its task is forgotten unfetched.
pub const FORGOTTEN: &str =
    "the task's result was not fetched through secondkey before the task was forgotten";

/// Why a run is recorded as unknown when its session ends unfetched.
pub const ENDED: &str = "the session ended before the task's result was fetched through secondkey";

/// Why a run is recorded as unknown when its session (over Streamable
/// HTTP; without one, its principal on that server) was unused for
/// `mcp.session_idle_seconds` before the task's result was fetched.
pub const IDLE: &str = "the session idled out (unused for mcp.session_idle_seconds) before the task's result was fetched through secondkey";

/// Why a run is recorded as unknown when the first fetch of its task's
/// result, its client gone, got no answer in time.
pub const GAVE_UP: &str = "the client went away during the first fetch of the task's result, and the upstream did not answer within mcp.session_idle_seconds after";

/// Takes the answer to `run`, a decided request that `asked` for a task
/// (or not): the task it created becomes the caller's, and the run awaits
/// that task's result instead of being recorded now.
pub fn learn<R>(own: &mut Owned<R>, asked: bool, answer: &Value, run: R) -> Learned<R> {
    let Some(id) = asked.then(|| created(answer)).flatten() else {
        return Learned {
            now: Some(run),
            forgotten: None,
        };
    };
    let forgotten = own.insert(id.clone());
    Learned {
        now: own.await_result(&id, run),
        forgotten,
    }
}

/// Whether a server message to the caller tells the state of a task that
/// is not theirs: a `notifications/tasks/status` whose `params.taskId` is
/// not in `own` (such a notification is dropped; the spec makes it
/// optional, so a client never depends on one).
pub fn foreign_status<R>(
    method: Option<&str>,
    params: Option<&Map<String, Value>>,
    own: &Owned<R>,
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
pub fn filter_list<R>(response: &mut Value, own: &Owned<R>) {
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
        let mut own: Owned = Owned::default();
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

    fn run(id: &str) -> Forward {
        Forward {
            run: crate::decide::Run {
                id: id.into(),
                request_id: None,
                digest: "0".repeat(64),
                approvers: vec![],
            },
            reads: vec![],
            writes: vec![],
        }
    }

    #[test]
    fn a_task_runs_outcome_is_taken_once_from_its_result() {
        let mut own: Owned = Owned::default();
        let created = json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "t-1", "status": "working"}}});
        let direct = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": []}});
        // Not asked as a task, or no task created: the answer is the outcome.
        let l = learn(&mut own, false, &created, run("act_0"));
        assert_eq!(l.now, Some(run("act_0")));
        let l = learn(&mut own, true, &direct, run("act_1"));
        assert_eq!((l.now, l.forgotten), (Some(run("act_1")), None));
        // A task created: its result will be.
        let l = learn(&mut own, true, &created, run("act_2"));
        assert_eq!((l.now, l.forgotten), (None, None));
        assert!(own.contains("t-1"));
        // The same id named again keeps the first run; the second is
        // recorded from its own answer.
        let l = learn(&mut own, true, &created, run("act_3"));
        assert_eq!(l.now, Some(run("act_3")));
        // The ids alone carry no run to record.
        let mut ids = own.ids();
        assert!(ids.contains("t-1") && ids.take_all_results().is_empty());
        assert_eq!(own.take_result("t-1"), Some(run("act_2")));
        assert_eq!(own.take_result("t-1"), None, "taken once");
        // Forgotten unfetched: handed back to be recorded as unknown.
        let mut own: Owned = Owned::default();
        let _ = learn(&mut own, true, &created, run("act_4"));
        for i in 0..MAX_TASKS - 1 {
            own.insert(format!("u-{i}"));
        }
        assert_eq!(own.insert("last".into()), Some(run("act_4")));
        assert!(own.take_all_results().is_empty());
    }

    #[test]
    fn only_the_callers_task_statuses_pass() {
        let mut own: Owned = Owned::default();
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
        let mut own: Owned = Owned::default();
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
