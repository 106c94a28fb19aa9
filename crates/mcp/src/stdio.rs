//! Stdio mode: secondkey runs as the MCP server the client launched, starts
//! the real server as its child, and relays newline-delimited JSON-RPC both
//! ways. Everything passes through byte for byte except what it decides:
//! `tools/call` requests (decided first, and forwarded as the exact JSON
//! that was digested), `tools/list` results (observed for pinning),
//! cancellations of calls it is still holding (the request is withdrawn),
//! and `tasks/*` requests, which reach only the tasks this session's
//! decided calls created (a `tasks/list` answer is filtered to those).
//!
//! One task reads the client, one reads the server; a decision runs in its
//! own task so that a held call does not stop the rest of the session.
//! Writes to each side go through one writer task, so lines never
//! interleave.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::McpConfig;
use crate::decide::{Decider, PinState};
use crate::flood::Budget;
use crate::frame::{read_frame, Frame};
use crate::intercept::{tool_error, Forward, Interceptor, Known, Outcome, Plan, Waiting};
use crate::jsonrpc::{self, error_response, id_key, result_response, Kind, Message};
use crate::limits::{Exceeded, Hold, Quota};
use crate::methods::ClientRequest;
use crate::tasks::{self, Owned, TaskRequest};
use crate::tools;

/// Server notifications relayed per second at most; a flood beyond that is
/// dropped (and reported on stderr) so it cannot starve the session.
pub use crate::flood::MAX_NOTIFICATIONS_PER_SECOND;

/// A client request the server has not answered yet.
enum Pending {
    Plain,
    ToolsList,
    /// `tasks/list`: its answer keeps only this session's tasks.
    TasksList,
    /// A decided call; `true`: it asked to run as a task.
    ToolsCall(Forward, bool),
    /// Another request that acts, decided and forwarded.
    Acted(Forward, bool),
    /// The first `tasks/result` of a task a decided call created: its
    /// answer is that call's outcome.
    TaskResult(Forward),
}

/// Most tools a relay remembers as unchecked (a server listing more is
/// still refused for them, as "not listed").
const MAX_UNCHECKED: usize = 10_000;

#[derive(Default)]
struct State {
    /// Client requests forwarded to the server, by id, with their share
    /// of the session's quota.
    inflight: HashMap<String, (Pending, Hold)>,
    /// `tools/call`s being decided or held, by id: their cancel switch.
    deciding: HashMap<String, watch::Sender<bool>>,
    /// The tools as last listed in this session (this relay's one server
    /// process), with their pin standing; emptied when the server says its
    /// list changed.
    catalog: HashMap<String, (Value, PinState)>,
    /// Tools the server listed whose definitions the gateway could not
    /// check, with why (until a check of them succeeds).
    unchecked: HashMap<String, String>,
    /// The tools the client itself listed since the list last changed.
    client_listed: HashSet<String>,
    client_info: Option<Value>,
    /// secondkey's own requests to the server (listing a tool the client
    /// calls without having listed it).
    own: HashMap<String, oneshot::Sender<Value>>,
    next_own: u64,
    /// The server is gone: nothing more can be forwarded.
    server_gone: bool,
    /// The server's requests relayed to the client after a decision, by
    /// id: recorded when the client answers.
    server_asked: HashMap<String, (Forward, Hold)>,
    /// The tasks the server created for this session's decided calls: the
    /// only ones its `tasks/*` requests reach.
    tasks: Owned,
}

/// One direction's write queue, bounded in bytes rather than in lines: a
/// side that reads slowly slows the other down (its reader waits for room)
/// instead of making secondkey buffer what it cannot write yet.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    cap: usize,
}

/// A line waiting for its writer, holding its room in the queue.
struct Queued {
    line: String,
    _room: OwnedSemaphorePermit,
}

impl Outbox {
    /// A queue of at most `cap` bytes (a longer line takes it all).
    fn new(cap: usize) -> (Outbox, mpsc::UnboundedReceiver<Queued>) {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(cap));
        (Outbox { tx, room, cap }, rx)
    }

    /// The room `line` takes: its bytes and newline, at most all of it.
    fn room_for(&self, line: &str) -> u32 {
        u32::try_from(line.len().saturating_add(1).min(self.cap)).unwrap_or(u32::MAX)
    }

    fn push(&self, line: String, room: OwnedSemaphorePermit) -> bool {
        self.tx.send(Queued { line, _room: room }).is_ok()
    }

    /// Queues `line`, waiting for room; `Err` once the writer is gone.
    async fn send(&self, line: String) -> Result<(), ()> {
        let n = self.room_for(&line);
        let room = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| ())?;
        self.push(line, room).then_some(()).ok_or(())
    }

    /// Queues `line` only if there is room now (`false`: dropped).
    fn try_send(&self, line: String) -> bool {
        let n = self.room_for(&line);
        match self.room.clone().try_acquire_many_owned(n) {
            Ok(room) => self.push(line, room),
            Err(_) => false,
        }
    }

    /// A sink for secondkey's own small messages (progress notifications)
    /// feeding this queue; it lives as long as the sender.
    fn sink(&self) -> mpsc::Sender<String> {
        let (tx, mut rx) = mpsc::channel::<String>(4);
        let out = self.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if out.send(line).await.is_err() {
                    return;
                }
            }
        });
        tx
    }
}

struct Relay<D: Decider> {
    icp: Interceptor<D>,
    state: Mutex<State>,
    to_client: Outbox,
    to_server: Outbox,
    session: String,
    /// Largest line taken from the client.
    max_message: usize,
    /// Largest line taken from the server.
    max_result: usize,
    /// What the session holds: requests in progress and their bytes.
    quota: Quota,
    /// Results being recorded: awaited before the relay exits, so that the
    /// last calls' results are not lost with the process.
    recording: Mutex<tokio::task::JoinSet<()>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    close: Arc<tokio::sync::Notify>,
) {
    loop {
        let queued = tokio::select! {
            l = rx.recv() => match l {
                Some(l) => l,
                None => break,
            },
            _ = close.notified() => break,
        };
        // The line keeps its room in the queue until it is written.
        if w.write_all(queued.line.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err() {
            break;
        }
        drop(queued);
        // Flush whenever the queue is drained, not per line.
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Runs the relay until the client closes its end (or the server exits);
/// returns the server's exit code.
pub async fn run<D, R, W>(
    icp: Interceptor<D>,
    command: &[String],
    client_in: R,
    client_out: W,
) -> anyhow::Result<i32>
where
    D: Decider,
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    use anyhow::Context;
    let (program, args) = command
        .split_first()
        .context("no server command given: put it after `--`")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the MCP server {program:?}"))?;
    let server_in = child.stdin.take().context("no stdin for the server")?;
    let server_out = child.stdout.take().context("no stdout from the server")?;
    let cfg = icp.config.clone();
    // Each direction queues at most twice its largest line.
    let (to_client, client_rx) = Outbox::new(cfg.max_result_bytes.saturating_mul(2));
    let (to_server, server_rx) = Outbox::new(cfg.max_message_bytes.saturating_mul(2));
    let close_server = Arc::new(tokio::sync::Notify::new());
    let client_writer = tokio::spawn(writer(
        client_out,
        client_rx,
        Arc::new(tokio::sync::Notify::new()),
    ));
    let server_writer = tokio::spawn(writer(server_in, server_rx, close_server.clone()));
    let relay = Arc::new(Relay {
        icp,
        state: Mutex::new(State::default()),
        to_client,
        to_server,
        session: session_id(),
        max_message: cfg.max_message_bytes,
        max_result: cfg.max_result_bytes,
        quota: Quota::new(cfg.max_pending_requests, cfg.max_session_bytes),
        recording: Mutex::new(tokio::task::JoinSet::new()),
    });

    let from_server = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .read_server(tokio::io::BufReader::with_capacity(64 * 1024, server_out))
                .await
        })
    };
    let from_client = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.read_client(client_in).await })
    };

    // Whichever side ends first ends the session.
    let mut from_server = from_server;
    let mut from_client = from_client;
    tokio::select! {
        _ = &mut from_client => {
            // The client closed stdin: close the server's, as the MCP stdio
            // transport prescribes, and give it a moment to exit.
            relay.close_server();
            close_server.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut from_server).await;
        }
        _ = &mut from_server => {
            from_client.abort();
        }
    }
    relay
        .fail_all("the session ended before the server answered")
        .await;
    let mut recording =
        std::mem::take(&mut *relay.recording.lock().unwrap_or_else(|p| p.into_inner()));
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while recording.join_next().await.is_some() {}
    })
    .await;
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => s.code().unwrap_or(1),
        _ => {
            let _ = child.kill().await;
            1
        }
    };
    drop(relay);
    let _ = tokio::time::timeout(Duration::from_secs(5), client_writer).await;
    server_writer.abort();
    Ok(status)
}

/// How the server's answer `msg` ended the request it answers.
fn outcome_of(msg: &Message) -> Outcome {
    match (msg.result(), msg.value.get("error")) {
        (Some(r), _) => Outcome::Result(r.clone()),
        (None, Some(e)) => Outcome::Error(e.clone()),
        _ => Outcome::Lost("an empty response".into()),
    }
}

fn session_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::getrandom(&mut b);
    format!("mcp_{}", hex::encode(b))
}

impl<D: Decider> Relay<D> {
    fn close_server(&self) {
        let mut st = lock(&self.state);
        st.server_gone = true;
    }

    async fn send_client(&self, v: &Value) {
        let _ = self.to_client.send(v.to_string()).await;
    }

    async fn read_client<R: AsyncBufRead + Unpin>(self: &Arc<Self>, mut r: R) {
        let mut buf = Vec::new();
        loop {
            match read_frame(&mut r, self.max_message, &mut buf).await {
                Ok(Frame::Eof) | Err(_) => return,
                Ok(Frame::TooLong(n)) => {
                    eprintln!(
                        "secondkey: refused a message of {n}+ bytes from the MCP client (limit mcp.max_message_bytes = {})",
                        self.max_message
                    );
                    // Answered under its id when its head names one that is
                    // not another request's in progress.
                    let id = jsonrpc::id_in_head(&buf)
                        .filter(|id| {
                            let st = lock(&self.state);
                            let k = id_key(id);
                            !st.inflight.contains_key(&k) && !st.deciding.contains_key(&k)
                        })
                        .unwrap_or(Value::Null);
                    self.send_client(&error_response(
                        id,
                        jsonrpc::INVALID_REQUEST,
                        &format!(
                            "a message of {n} bytes or more was refused: secondkey relays at most {} (mcp.max_message_bytes); nothing was forwarded",
                            self.max_message
                        ),
                    ))
                    .await;
                }
                Ok(Frame::Line) => {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.from_client_line(&buf).await;
                }
            }
        }
    }

    async fn from_client_line(self: &Arc<Self>, line: &[u8]) {
        let msg = match Message::parse(line, self.max_message) {
            Ok(m) => m,
            Err(e) => {
                // Not forwarded: the server must never act on a message
                // secondkey could not read the same way.
                self.send_client(&e.response()).await;
                return;
            }
        };
        match msg.kind {
            Kind::Request => self.client_request(msg, line).await,
            Kind::Notification => {
                let method = msg.method().unwrap_or_default();
                if !method.starts_with("notifications/") {
                    // A request method without an id (`tools/call` sent as a
                    // notification): a lenient server would run it, and
                    // nothing could be answered or recorded. Refused.
                    self.refuse_notification(&msg).await;
                    return;
                }
                if method == "notifications/cancelled" {
                    let target = msg.params().and_then(|p| p.get("requestId")).map(id_key);
                    let held = target.is_some_and(|k| {
                        let st = lock(&self.state);
                        match st.deciding.get(&k) {
                            // The server never saw this call: withdraw it
                            // here and tell the server nothing.
                            Some(cancel) => {
                                let _ = cancel.send(true);
                                true
                            }
                            None => false,
                        }
                    });
                    if held {
                        return;
                    }
                }
                self.forward_raw(line).await;
            }
            Kind::Response => {
                let key = msg.id().map(id_key).unwrap_or_default();
                let asked = lock(&self.state).server_asked.remove(&key);
                if let Some((fwd, _slot)) = asked {
                    let outcome = match (msg.result(), msg.value.get("error")) {
                        (Some(r), _) => Outcome::Result(r.clone()),
                        (None, Some(e)) => Outcome::Error(e.clone()),
                        _ => Outcome::Lost("an empty response".into()),
                    };
                    let relay = self.clone();
                    let mut recording = self.recording.lock().unwrap_or_else(|p| p.into_inner());
                    while recording.try_join_next().is_some() {}
                    recording.spawn(async move { relay.icp.finished(&fwd, outcome).await });
                }
                self.forward_raw(line).await
            }
        }
    }

    /// Decides a request of the server (sampling, elicitation, roots, …)
    /// before the client sees it: relayed if allowed (its answer recorded),
    /// else answered to the server with the refusal (JSON-RPC -32001).
    async fn server_request(
        self: Arc<Self>,
        msg: Message,
        act: crate::methods::Act,
        line: Vec<u8>,
        mut hold: Hold,
    ) {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        match self.icp.act(&act, Some(&self.session)).await {
            Ok(fwd) => {
                let line = String::from_utf8_lossy(&line).into_owned();
                hold.sent();
                lock(&self.state)
                    .server_asked
                    .insert(id_key(&id), (fwd, hold));
                let _ = self.to_client.send(line).await;
            }
            Err(text) => {
                let refusal = error_response(id, jsonrpc::DENIED, &text);
                let _ = self.to_server.send(refusal.to_string()).await;
            }
        }
    }

    /// Refuses a request method sent without an id: never forwarded,
    /// answered with an error without an id (JSON-RPC's way to answer what
    /// has none), and recorded as a refused attempt.
    async fn refuse_notification(&self, msg: &Message) {
        let method = msg.method().unwrap_or_default().to_string();
        let reason = crate::refused::idless_message(&method);
        self.refuse(
            (Value::Null, jsonrpc::INVALID_REQUEST),
            &method,
            "request_without_id",
            reason,
        )
        .await;
    }

    /// Refuses a `tasks/*` request for a task that is not this session's
    /// (or that names none) with -32602, as the spec answers an unknown
    /// task; nothing is forwarded and the attempt is recorded.
    async fn refuse_task(&self, id: Value, method: &str, code: &str, why: String) {
        self.refuse((id, jsonrpc::INVALID_PARAMS), method, code, why)
            .await;
    }

    /// Answers the client with error `code` under `id` saying `reason`,
    /// and records the refused attempt (`refusal`: its code).
    async fn refuse(&self, (id, code): (Value, i64), method: &str, refusal: &str, reason: String) {
        self.send_client(&error_response(id, code, &reason)).await;
        if let Err(e) = self
            .icp
            .decider
            .refused(
                &self.icp.server.name,
                crate::refused::Refusal {
                    method: method.to_string(),
                    code: refusal.into(),
                    reason,
                    session: Some(self.session.clone()),
                },
            )
            .await
        {
            eprintln!("secondkey: could not record a refused message: {e}");
        }
    }

    async fn forward_raw(&self, line: &[u8]) {
        let _ = self
            .to_server
            .send(String::from_utf8_lossy(line).into_owned())
            .await;
    }

    async fn client_request(self: &Arc<Self>, msg: Message, line: &[u8]) {
        let Some(id) = msg.id().cloned() else { return };
        let key = id_key(&id);
        let method = msg.method().unwrap_or_default().to_string();
        enum Next {
            Act(crate::methods::Act, Hold),
            BadName,
            /// A `tasks/*` request for no task of this session's: the
            /// refusal's code and sentence.
            NotOwnTask(&'static str, String),
            Duplicate,
            Gone,
            Limit(Exceeded),
            Decide(watch::Receiver<bool>, Hold),
            Forward,
        }
        let next = {
            let mut st = lock(&self.state);
            if st.inflight.contains_key(&key) || st.deciding.contains_key(&key) {
                Next::Duplicate
            } else if st.server_gone {
                Next::Gone
            } else {
                let params = msg.params();
                let declared = match method.as_str() {
                    "initialize" => params.and_then(|p| p.get("clientInfo")).cloned(),
                    _ => params
                        .and_then(|p| p.get("_meta"))
                        .and_then(|m| m.get("io.modelcontextprotocol/clientInfo"))
                        .cloned(),
                };
                if declared.is_some() {
                    st.client_info = declared;
                }
                let class = crate::methods::client_request(&self.icp.server.name, &method, params);
                match (class, method.as_str()) {
                    (_, "tools/call") if jsonrpc::tool_name(&msg).is_err() => Next::BadName,
                    (ClientRequest::Task(TaskRequest::BadId(why)), _) => {
                        Next::NotOwnTask("invalid_task_id", why)
                    }
                    (ClientRequest::Task(TaskRequest::One(t)), _) if !st.tasks.contains(&t) => {
                        Next::NotOwnTask("unknown_task", tasks::unknown(&t))
                    }
                    // Counted against the session before anything is kept.
                    (class, _) => match self.quota.take(line.len()) {
                        Err(e) => Next::Limit(e),
                        Ok(mut hold) => match (class, method.as_str()) {
                            (ClientRequest::Acts(act), _) => {
                                let (tx, _) = watch::channel(false);
                                st.deciding.insert(key.clone(), tx);
                                Next::Act(act, hold)
                            }
                            (_, "tools/call") => {
                                let (tx, rx) = watch::channel(false);
                                st.deciding.insert(key.clone(), tx);
                                Next::Decide(rx, hold)
                            }
                            (class, m) => {
                                let p = match (class, m) {
                                    (_, "tools/list") => Pending::ToolsList,
                                    (ClientRequest::Task(TaskRequest::List), _) => {
                                        Pending::TasksList
                                    }
                                    (ClientRequest::Task(TaskRequest::One(t)), "tasks/result") => {
                                        match st.tasks.take_result(&t) {
                                            Some(fwd) => Pending::TaskResult(fwd),
                                            None => Pending::Plain,
                                        }
                                    }
                                    _ => Pending::Plain,
                                };
                                hold.sent();
                                st.inflight.insert(key, (p, hold));
                                Next::Forward
                            }
                        },
                    },
                }
            }
        };
        match next {
            Next::Act(act, hold) => {
                let relay = self.clone();
                tokio::spawn(async move { relay.act(msg, act, hold).await });
            }
            Next::Limit(e) => {
                eprintln!("secondkey: refused a {method} request of the MCP client: {e}");
                self.send_client(&error_response(id, jsonrpc::LIMIT, &e.to_string()))
                    .await;
            }
            Next::BadName => {
                if let Err(e) = jsonrpc::tool_name(&msg) {
                    self.send_client(&e.response()).await;
                }
            }
            Next::NotOwnTask(code, why) => self.refuse_task(id, &method, code, why).await,
            Next::Duplicate => {
                self.send_client(&error_response(
                    id,
                    jsonrpc::INVALID_REQUEST,
                    "a request with this id is still in progress; ids must be unique within a session. This one was not forwarded",
                ))
                .await;
            }
            Next::Gone => {
                self.send_client(&error_response(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    "the MCP server has exited",
                ))
                .await;
            }
            Next::Decide(rx, hold) => {
                let relay = self.clone();
                tokio::spawn(async move { relay.tools_call(msg, rx, hold).await });
            }
            Next::Forward => self.forward_raw(line).await,
        }
    }

    async fn tools_call(
        self: Arc<Self>,
        msg: Message,
        cancelled: watch::Receiver<bool>,
        hold: Hold,
    ) {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let key = id_key(&id);
        let empty = Map::new();
        let params = msg.params().unwrap_or(&empty);
        let tool = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Err(refusal) = self.icp.arguments(params) {
            lock(&self.state).deciding.remove(&key);
            self.send_client(&result_response(id, refusal)).await;
            return;
        }
        // Decided only on the definition the server gives in this session:
        // one it listed since it last said its list changed, or one read
        // now.
        let mut current = lock(&self.state).catalog.get(&tool).cloned();
        if current.is_none() && !tool.is_empty() {
            self.list_tools(params).await;
            current = lock(&self.state).catalog.get(&tool).cloned();
        }
        let (client_info, listed, unchecked) = {
            let st = lock(&self.state);
            (
                st.client_info.clone(),
                st.client_listed.contains(&tool),
                st.unchecked.get(&tool).cloned(),
            )
        };
        let progress = jsonrpc::progress_token(Some(params)).map(|t| (t, self.to_client.sink()));
        let waiting = Waiting {
            progress,
            cancelled,
        };
        let known = Known {
            current,
            listed,
            unchecked,
        };
        let plan = self
            .icp
            .tools_call(
                params,
                &known,
                client_info.as_ref(),
                Some(&self.session),
                waiting,
            )
            .await;
        match plan {
            Plan::Cancelled => {
                lock(&self.state).deciding.remove(&key);
            }
            Plan::Respond(result) => {
                lock(&self.state).deciding.remove(&key);
                self.send_client(&result_response(id, result)).await;
            }
            Plan::Forward(fwd) => {
                let task = tasks::asks(Some(params));
                let gone = self.sending(key, Pending::ToolsCall(fwd.clone(), task), hold);
                if gone {
                    self.icp
                        .finished(
                            &fwd,
                            Outcome::Lost("the MCP server exited before the call was sent".into()),
                        )
                        .await;
                    self.send_client(&result_response(
                        id,
                        tool_error("the MCP server has exited; the call was not sent".into()),
                    ))
                    .await;
                    return;
                }
                // Exactly the JSON that was decided and digested.
                let _ = self.to_server.send(msg.to_line()).await;
            }
        }
    }

    /// A decided request leaves `deciding` for `inflight`, unless the
    /// server is gone (then `true`: it cannot be sent).
    fn sending(&self, key: String, pending: Pending, mut hold: Hold) -> bool {
        let mut st = lock(&self.state);
        st.deciding.remove(&key);
        if st.server_gone {
            return true;
        }
        // Its line is queued for the server right after; the slot stays
        // taken until the answer.
        hold.sent();
        st.inflight.insert(key, (pending, hold));
        false
    }

    /// Decides a request that acts (other than `tools/call`), then forwards
    /// exactly what was decided, or answers the client with the refusal.
    async fn act(self: Arc<Self>, msg: Message, act: crate::methods::Act, hold: Hold) {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let key = id_key(&id);
        let plan = self.icp.act(&act, Some(&self.session)).await;
        let fwd = match plan {
            Err(text) => {
                lock(&self.state).deciding.remove(&key);
                self.send_client(&error_response(id, jsonrpc::DENIED, &text))
                    .await;
                return;
            }
            Ok(fwd) => fwd,
        };
        let gone = self.sending(
            key,
            Pending::Acted(fwd.clone(), tasks::asks(msg.params())),
            hold,
        );
        if gone {
            self.icp
                .finished(
                    &fwd,
                    Outcome::Lost("the MCP server exited before the request was sent".into()),
                )
                .await;
            self.send_client(&error_response(
                id,
                jsonrpc::INTERNAL_ERROR,
                "the MCP server has exited; the request was not sent",
            ))
            .await;
            return;
        }
        let _ = self.to_server.send(msg.to_line()).await;
    }

    /// Asks the server for its tools (all pages) and observes them: how a
    /// call of a tool the client never listed still gets checked.
    async fn list_tools(&self, call_params: &Map<String, Value>) {
        let mut cursor: Option<Value> = None;
        for _ in 0..20 {
            let params = jsonrpc::own_list_params(call_params, cursor.take());
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut st = lock(&self.state);
                if st.server_gone {
                    return;
                }
                st.next_own += 1;
                let id = format!("secondkey-tools-{}", st.next_own);
                st.own.insert(id_key(&json!(id)), tx);
                id
            };
            let req = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
            let _ = self.to_server.send(req.to_string()).await;
            let answer = match tokio::time::timeout(Duration::from_secs(15), rx).await {
                Ok(Ok(v)) => v,
                _ => {
                    lock(&self.state).own.remove(&id_key(&json!(id)));
                    return;
                }
            };
            let Some(result) = answer.get("result") else {
                return;
            };
            self.observe(result, false).await;
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => return,
            }
        }
    }

    /// Records a `tools/list` result's definitions against their pins;
    /// `by_client`: the client asked for this list (the `listed` fact).
    async fn observe(&self, result: &Value, by_client: bool) {
        let Some(list) = result.get("tools").and_then(Value::as_array) else {
            return;
        };
        let defs: Vec<Value> = list
            .iter()
            .filter(|t| t.get("name").and_then(Value::as_str).is_some())
            .map(tools::pinned_part)
            .collect();
        if defs.is_empty() {
            return;
        }
        match self
            .icp
            .decider
            .observe(&self.icp.server.name, defs.clone())
            .await
        {
            Ok(states) => {
                let mut st = lock(&self.state);
                for (d, (name, pin)) in defs.into_iter().zip(states) {
                    if by_client {
                        st.client_listed.insert(name.clone());
                    }
                    st.unchecked.remove(&name);
                    st.catalog.insert(name, (d, pin));
                }
            }
            Err(e) => {
                // Without a pin check, calls of these tools stay unknown and
                // are refused, saying why.
                eprintln!("secondkey: cannot check the tool definitions with the gateway: {e}");
                let mut st = lock(&self.state);
                let why = e.to_string();
                for d in &defs {
                    if let Some(name) = d.get("name").and_then(Value::as_str) {
                        if st.unchecked.len() < MAX_UNCHECKED || st.unchecked.contains_key(name) {
                            st.unchecked.insert(name.to_string(), why.clone());
                        }
                    }
                }
            }
        }
    }

    async fn read_server<R: AsyncBufRead + Unpin>(self: &Arc<Self>, mut r: R) {
        let mut buf = Vec::new();
        let mut budget = Budget::new(tokio::time::Instant::now());
        loop {
            match read_frame(&mut r, self.max_result, &mut buf).await {
                Ok(Frame::Eof) | Err(_) => break,
                Ok(Frame::TooLong(n)) => {
                    eprintln!(
                        "secondkey: dropped a message of {n}+ bytes from the MCP server (limit mcp.max_result_bytes = {})",
                        self.max_result
                    );
                    if let Some(id) = jsonrpc::id_in_head(&buf) {
                        self.answer_dropped(id, n).await;
                    }
                }
                Ok(Frame::Line) => {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let msg = match Message::parse(&buf, self.max_result) {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!(
                                "secondkey: dropped an unreadable message from the MCP server: {e}"
                            );
                            continue;
                        }
                    };
                    if msg.kind == Kind::Notification && !budget.admit(tokio::time::Instant::now())
                    {
                        if budget.report_drop() {
                            eprintln!(
                                "secondkey: the MCP server floods notifications; dropped {} so far",
                                budget.dropped()
                            );
                        }
                        continue;
                    }
                    self.from_server_msg(msg, &buf).await;
                }
            }
        }
        lock(&self.state).server_gone = true;
    }

    async fn from_server_msg(self: &Arc<Self>, msg: Message, line: &[u8]) {
        if msg.method() == Some("notifications/tools/list_changed") {
            // What this session knew of the tools is out of date: the next
            // call lists them again before it is decided.
            let mut st = lock(&self.state);
            st.catalog.clear();
            st.client_listed.clear();
            st.unchecked.clear();
        }
        if msg.kind == Kind::Request {
            let method = msg.method().unwrap_or_default();
            if let Some(act) =
                crate::methods::server_request(&self.icp.server.name, method, msg.params())
            {
                // Decided on a task of its own: the server's other messages
                // go on meanwhile.
                let id = msg.id().cloned().unwrap_or(Value::Null);
                let hold = match self.quota.take(line.len()) {
                    Ok(h) => h,
                    Err(e) => {
                        eprintln!("secondkey: refused a {method} request of the MCP server: {e}");
                        // Never waits: a server that floods requests
                        // without reading its input must not stall the
                        // reading of its output.
                        let refusal = error_response(id, jsonrpc::LIMIT, &e.to_string());
                        if !self.to_server.try_send(refusal.to_string()) {
                            eprintln!("secondkey: the MCP server does not read its input; the refusal was dropped");
                        }
                        return;
                    }
                };
                let relay = self.clone();
                let line = line.to_vec();
                tokio::spawn(async move { relay.server_request(msg, act, line, hold).await });
                return;
            }
        }
        if msg.kind == Kind::Notification
            && tasks::foreign_status(msg.method(), msg.params(), &lock(&self.state).tasks)
        {
            // Another's task's state is not this client's to see.
            return;
        }
        if msg.kind != Kind::Response {
            let _ = self
                .to_client
                .send(String::from_utf8_lossy(line).into_owned())
                .await;
            return;
        }
        let key = msg.id().map(id_key).unwrap_or_default();
        let (own, pending) = {
            let mut st = lock(&self.state);
            (st.own.remove(&key), st.inflight.remove(&key))
        };
        if let Some(tx) = own {
            let _ = tx.send(Value::Object(msg.value));
            return;
        }
        match pending {
            Some((Pending::ToolsList, _)) => {
                if let Some(r) = msg.result() {
                    self.observe(r, true).await;
                }
            }
            Some((Pending::TasksList, _)) => {
                // Only this session's own tasks reach its client.
                let mut answer = Value::Object(msg.value);
                tasks::filter_list(&mut answer, &lock(&self.state).tasks);
                self.send_client(&answer).await;
                return;
            }
            Some((Pending::ToolsCall(fwd, task), _)) | Some((Pending::Acted(fwd, task), _)) => {
                // A task it created is the client's before the client sees
                // its id; the call's outcome then comes with the task's
                // result.
                let learned = tasks::learn(
                    &mut lock(&self.state).tasks,
                    task,
                    &Value::Object(msg.value.clone()),
                    fwd,
                );
                if let Some(fwd) = learned.now {
                    self.record(fwd, outcome_of(&msg));
                }
                if let Some(fwd) = learned.forgotten {
                    self.record(fwd, Outcome::Lost(tasks::FORGOTTEN.into()));
                }
            }
            Some((Pending::TaskResult(fwd), _)) => self.record(fwd, outcome_of(&msg)),
            Some((Pending::Plain, _)) | None => {}
        }
        let _ = self
            .to_client
            .send(String::from_utf8_lossy(line).into_owned())
            .await;
    }

    /// Records `outcome` as how `fwd` ended, off the answer's path.
    fn record(self: &Arc<Self>, fwd: Forward, outcome: Outcome) {
        let relay = self.clone();
        let mut recording = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        while recording.try_join_next().is_some() {}
        recording.spawn(async move { relay.icp.finished(&fwd, outcome).await });
    }

    /// The server's answer to `id` was `n`+ bytes, over the limit, and
    /// dropped: if `id` is a request waiting for it, the client gets an
    /// error instead (a call's outcome is recorded as unknown), so that it
    /// does not wait for ever.
    async fn answer_dropped(&self, id: Value, n: usize) {
        let key = id_key(&id);
        let (own, pending) = {
            let mut st = lock(&self.state);
            (st.own.remove(&key), st.inflight.remove(&key))
        };
        // secondkey's own listing gets no answer: it stops waiting.
        drop(own);
        let why = format!(
            "the MCP server's answer was {n} bytes or more, over what secondkey takes (mcp.max_result_bytes = {}), and was dropped",
            self.max_result
        );
        match pending {
            None => {}
            Some((Pending::ToolsCall(fwd, _), _slot)) => {
                self.icp.finished(&fwd, Outcome::Lost(why.clone())).await;
                self.send_client(&result_response(
                    id,
                    tool_error(format!("{why}; whether the call took effect is unknown")),
                ))
                .await;
            }
            Some((Pending::Acted(fwd, _), _slot)) | Some((Pending::TaskResult(fwd), _slot)) => {
                self.icp.finished(&fwd, Outcome::Lost(why.clone())).await;
                self.send_client(&error_response(id, jsonrpc::LIMIT, &why))
                    .await;
            }
            Some((_, _slot)) => {
                self.send_client(&error_response(id, jsonrpc::LIMIT, &why))
                    .await;
            }
        }
    }

    /// Answers every request still waiting on the server, and records the
    /// calls that may or may not have run.
    async fn fail_all(&self, why: &str) {
        let (pending, deciding, unfetched) = {
            let mut st = lock(&self.state);
            st.server_gone = true;
            st.own.clear();
            (
                std::mem::take(&mut st.inflight),
                std::mem::take(&mut st.deciding),
                st.tasks.take_all_results(),
            )
        };
        for (_, cancel) in deciding {
            let _ = cancel.send(true);
        }
        for fwd in unfetched {
            self.icp
                .finished(&fwd, Outcome::Lost(tasks::ENDED.into()))
                .await;
        }
        for (key, (p, _slot)) in pending {
            let id: Value = serde_json::from_str(&key).unwrap_or(Value::Null);
            match p {
                Pending::ToolsCall(fwd, _) => {
                    self.icp.finished(&fwd, Outcome::Lost(why.into())).await;
                    self.send_client(&result_response(
                        id,
                        tool_error(format!(
                            "the MCP server exited during this call; whether it took effect is unknown ({why})"
                        )),
                    ))
                    .await;
                }
                Pending::Acted(fwd, _) | Pending::TaskResult(fwd) => {
                    self.icp.finished(&fwd, Outcome::Lost(why.into())).await;
                    self.send_client(&error_response(id, jsonrpc::INTERNAL_ERROR, why))
                        .await;
                }
                _ => {
                    self.send_client(&error_response(id, jsonrpc::INTERNAL_ERROR, why))
                        .await;
                }
            }
        }
    }
}

/// What `secondkey mcp stdio` runs with.
pub struct Options {
    /// The name the server goes by in resources and pins.
    pub server: String,
    /// The gateway's base URL.
    pub url: String,
    /// The agent's bearer token for the gateway.
    pub token: String,
    pub config: McpConfig,
    /// The real server's command line.
    pub command: Vec<String>,
}

/// The file `secondkey mcp stdio --config FILE` reads: where the gateway is,
/// which variable holds the token, and an optional `[mcp]` section of the
/// same shape as the gateway's (tool operations, lineage paths, limits).
///
/// ```toml
/// url = "http://127.0.0.1:8750"
/// token_env = "SECONDKEY_TOKEN"
/// [mcp]
/// [[mcp.servers]]
/// name = "warehouse"
/// [mcp.servers.tools.export_table]
/// operation = "export"
/// reads = ["table"]
/// ```
pub fn load_options_file(
    path: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<String>, Option<String>, McpConfig), crate::config::ConfigError> {
    let bad = |key: &str, message: String| crate::config::ConfigError {
        key: key.to_string(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("--config", format!("{}: {e}", path.display())))?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| bad("--config", format!("{}: {e}", path.display())))?;
    let table = v
        .as_table()
        .ok_or_else(|| bad("--config", "not a TOML table".into()))?;
    for k in table.keys() {
        if !matches!(k.as_str(), "url" | "token_env" | "mcp") {
            return Err(bad(k, "unknown key (use url, token_env and [mcp])".into()));
        }
    }
    let s = |k: &str| -> Result<Option<String>, crate::config::ConfigError> {
        match table.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(k, "must be a string".into())),
        }
    };
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let cfg = McpConfig::parse(
        table.get("mcp"),
        &crate::config::Sources {
            env,
            base_dir: base,
        },
    )?;
    // The relay starts the server itself: a server's `url` (an HTTP
    // upstream, the gateway's) would be ignored here, so it is refused.
    let servers = table
        .get("mcp")
        .and_then(|m| m.get("servers"))
        .and_then(toml::Value::as_array);
    if let Some(i) = servers.and_then(|l| l.iter().position(|s| s.get("url").is_some())) {
        return Err(bad(
            &format!("mcp.servers[{i}].url"),
            "the stdio relay starts its server as a command; a server with a url is served by the gateway over HTTP (secondkey serve), not by mcp stdio".into(),
        ));
    }
    Ok((s("url")?, s("token_env")?, cfg))
}

/// Runs `secondkey mcp stdio` on this process's stdin and stdout.
pub async fn run_stdio(opts: Options) -> anyhow::Result<i32> {
    if !crate::config::is_server_name(&opts.server) {
        anyhow::bail!(
            "--server {:?}: use 1 to 64 of A-Z a-z 0-9 - _ .",
            opts.server
        );
    }
    let decider = crate::decide::RestDecider::new(&opts.url, &opts.token)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Arc::new(opts.config.server(&opts.server));
    let icp = Interceptor::new(Arc::new(opts.config), server, Arc::new(decider));
    let client_in: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match crate::stdfd::StdFd::new(0)
    {
        Some(fd) => Box::new(fd),
        None => Box::new(tokio::io::stdin()),
    };
    let client_out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> =
        match crate::stdfd::StdFd::new(1) {
            Some(fd) => Box::new(fd),
            None => Box::new(tokio::io::stdout()),
        };
    run(
        icp,
        &opts.command,
        tokio::io::BufReader::with_capacity(64 * 1024, client_in),
        client_out,
    )
    .await
}

#[cfg(test)]
mod options_file_tests {
    /// A server table with a `url` would be ignored by the relay (it starts
    /// its server as a command): refused, naming the key.
    #[test]
    fn a_server_with_a_url_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "[[mcp.servers]]\nname = \"b\"\n[[mcp.servers]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
        )
        .unwrap();
        let e = super::load_options_file(&p, &|_| None).unwrap_err();
        assert_eq!(e.key, "mcp.servers[1].url", "{}", e.message);
        std::fs::write(&p, "[[mcp.servers]]\nname = \"a\"\n").unwrap();
        assert!(super::load_options_file(&p, &|_| None).is_ok());
    }
}
