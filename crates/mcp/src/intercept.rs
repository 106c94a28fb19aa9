//! What happens to one `tools/call`, whatever the transport: the pin check,
//! the decision, the wait of a held call (with progress notifications and
//! cancellation), and recording the result. Transports (`stdio`, `http`)
//! only move messages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::action::{self, Call};
use crate::config::{McpConfig, OnChange, ServerConfig};
use crate::decide::{DecideError, Decider, Decision, PinState, Run};
use crate::tools;

/// What to do with a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send it to the server; report its outcome with [`Interceptor::finished`].
    Forward(Forward),
    /// Answer the client with this `tools/call` result; nothing is sent to
    /// the server.
    Respond(Value),
    /// The client cancelled: answer nothing (MCP: no response to a
    /// cancelled request).
    Cancelled,
}

/// A call on its way to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub run: Run,
    /// Datasets from the configured argument paths, reported on success.
    pub reads: Vec<String>,
    pub writes: Vec<String>,
}

/// How a forwarded call ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The server answered with a result.
    Result(Value),
    /// The server answered with a JSON-RPC error.
    Error(Value),
    /// No answer: the server died, the connection broke, the client
    /// cancelled. Whether it ran is unknown.
    Lost(String),
}

/// What a call waits with: where progress notifications go (if the client
/// asked for them) and the signal of a cancellation.
pub struct Waiting {
    /// (progressToken, sink for `notifications/progress` messages, as JSON
    /// lines).
    pub progress: Option<(Value, mpsc::Sender<String>)>,
    /// Becomes true when the client cancels the call.
    pub cancelled: watch::Receiver<bool>,
}

impl Waiting {
    /// A call nobody can cancel or watch (tests, benchmarks).
    pub fn none() -> (Waiting, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Waiting {
                progress: None,
                cancelled: rx,
            },
            tx,
        )
    }
}

/// The per-server decision logic.
pub struct Interceptor<D: Decider> {
    pub config: Arc<McpConfig>,
    pub server: Arc<ServerConfig>,
    pub decider: Arc<D>,
}

/// What the gateway knows of the called tool when it decides a call.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The tool's definition as the server lists it now, in this upstream
    /// session, and its standing against its pin; `None`: the server does
    /// not list it.
    pub current: Option<(Value, PinState)>,
    /// The client itself listed the tool in this session (a listing
    /// secondkey made does not count): the `listed` fact.
    pub listed: bool,
    /// Why the tool's definition, listed by the server, could not be
    /// checked against its pin (the gateway refused or failed the check):
    /// the refusal says so instead of "not listed".
    pub unchecked: Option<String>,
}

/// A tool result that tells the agent what happened, as text it can read.
pub fn tool_error(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

fn describe_reasons(reasons: &[Value]) -> String {
    let named: Vec<String> = reasons
        .iter()
        .filter_map(|r| {
            let p = r["policy"].as_str().unwrap_or("");
            let m = r["message"].as_str().unwrap_or("");
            // A default deny, or an action that cannot be evaluated, names
            // no policy: its message says why on its own.
            match (p.is_empty(), m.is_empty()) {
                (true, true) => None,
                (true, false) => Some(m.to_string()),
                (false, true) => Some(format!("policy {p}")),
                (false, false) => Some(format!("policy {p} ({m})")),
            }
        })
        .collect();
    if named.is_empty() {
        "no policy permits it".into()
    } else {
        named.join("; ")
    }
}

fn required_text(required: &[Value]) -> String {
    let parts: Vec<String> = required
        .iter()
        .filter_map(|r| {
            let groups: Vec<&str> = r["groups"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            Some(format!(
                "{} of {}",
                r["quorum"].as_u64().unwrap_or(1),
                groups.join("/")
            ))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (needs approval by {})", parts.join(" and "))
    }
}

impl<D: Decider> Interceptor<D> {
    pub fn new(config: Arc<McpConfig>, server: Arc<ServerConfig>, decider: Arc<D>) -> Self {
        Interceptor {
            config,
            server,
            decider,
        }
    }

    /// Decides a `tools/call` with these params, on what `known` says of
    /// the tool: its current definition in this upstream session and that
    /// definition's standing against its pin.
    pub async fn tools_call(
        &self,
        params: &Map<String, Value>,
        known: &Known,
        client_info: Option<&Value>,
        session: Option<&str>,
        waiting: Waiting,
    ) -> Plan {
        let plan = self
            .decide_call(params, known, client_info, session, waiting)
            .await;
        // The stateless protocol revisions (2026-07-28 on) type every
        // result; a result secondkey writes itself must say it is complete.
        match plan {
            Plan::Respond(mut r)
                if crate::jsonrpc::request_protocol_version(Some(params)).is_some() =>
            {
                r["resultType"] = json!("complete");
                Plan::Respond(r)
            }
            other => other,
        }
    }

    async fn decide_call(
        &self,
        params: &Map<String, Value>,
        known: &Known,
        client_info: Option<&Value>,
        session: Option<&str>,
        mut waiting: Waiting,
    ) -> Plan {
        let Some(tool) = params.get("name").and_then(Value::as_str) else {
            return Plan::Respond(tool_error(
                "secondkey refused this call: `params.name` (the tool) is missing. Nothing ran."
                    .into(),
            ));
        };
        let arguments = match self.arguments(params) {
            Ok(a) => a,
            Err(refusal) => return Plan::Respond(refusal),
        };
        let Some((definition, pin)) = &known.current else {
            if let Some(why) = &known.unchecked {
                return Plan::Respond(tool_error(format!(
                    "secondkey refused this call: the gateway could not check the definition of tool {tool:?} of server `{}` against its pin: {why}. Nothing ran.",
                    self.server.name
                )));
            }
            return Plan::Respond(tool_error(format!(
                "secondkey refused this call: the server `{}` does not list a tool named {tool:?}, so its definition cannot be checked. Nothing ran.",
                self.server.name
            )));
        };
        if let PinState::Changed { pinned } = pin {
            let fp = tools::fingerprint(definition);
            let fix = format!(
                "A human accepts it with `secondkey mcp tools accept --server {} --tool {tool} --fingerprint {fp}` (it was pinned as {pinned}).",
                self.server.name
            );
            match self.server.on_change {
                OnChange::Deny => {
                    return Plan::Respond(tool_error(format!(
                        "secondkey refused this call: the definition of tool {tool:?} changed since it was pinned. {fix} Nothing ran."
                    )))
                }
                OnChange::Hold => {
                    match self.wait_for_acceptance(tool, definition, &mut waiting).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return Plan::Respond(tool_error(format!(
                                "secondkey is holding calls of tool {tool:?}: its definition changed since it was pinned. {fix} Retry after that. Nothing ran."
                            )))
                        }
                        Err(Cancelled) => return Plan::Cancelled,
                    }
                }
            }
        }
        let (action, facts) = action::build(&Call {
            server: &self.server,
            tool,
            arguments: &arguments,
            definition: Some(definition),
            client_info,
            session,
            listed: known.listed,
        });
        let reads = action["lineage"]["reads"]
            .as_array()
            .map(|a| strings(a.as_slice()))
            .unwrap_or_default();
        let writes = action["lineage"]["writes"]
            .as_array()
            .map(|a| strings(a.as_slice()))
            .unwrap_or_default();
        let decision = match self.decider.decide(action.clone(), facts.clone()).await {
            Ok(d) => d,
            Err(e) => return Plan::Respond(undecided(&e)),
        };
        let forward = |run| {
            Plan::Forward(Forward {
                run,
                reads: reads.clone(),
                writes: writes.clone(),
            })
        };
        match decision {
            Decision::Run(run) => forward(run),
            Decision::Deny { id, reasons } => Plan::Respond(tool_error(format!(
                "secondkey denied this call of {tool:?}: {}. Decision {id}. Nothing ran.",
                describe_reasons(&reasons)
            ))),
            Decision::Held {
                request_id,
                url,
                required,
                ..
            } => {
                match self.hold(&request_id, &url, &required, &mut waiting).await {
                    Held::Approved => match self
                        .decider
                        .run_approved(&request_id, action, facts)
                        .await
                    {
                        Ok(Decision::Run(run)) => forward(run),
                        Ok(Decision::Deny { id, reasons }) => Plan::Respond(tool_error(format!(
                            "secondkey denied this call of {tool:?}: {}. Decision {id}. Nothing ran.",
                            describe_reasons(&reasons)
                        ))),
                        Ok(Decision::Held { request_id, url, required, .. }) => {
                            Plan::Respond(held_text(tool, &request_id, &url, &required))
                        }
                        Err(e) => Plan::Respond(undecided(&e)),
                    },
                    Held::Pending => Plan::Respond(held_text(tool, &request_id, &url, &required)),
                    Held::Closed(state) => Plan::Respond(tool_error(format!(
                        "secondkey did not run this call of {tool:?}: request {request_id} is {state}. Nothing ran."
                    ))),
                    Held::Cancelled => {
                        if let Err(e) = self.decider.withdraw(&request_id).await {
                            tracing::warn!(request = %request_id, error = %e, "could not withdraw a cancelled call's request");
                        }
                        Plan::Cancelled
                    }
                    Held::Failed(e) => Plan::Respond(undecided(&e)),
                }
            }
        }
    }

    /// Decides a client request that acts other than `tools/call`
    /// ([`crate::methods`]): the run to forward, or the sentence of a
    /// JSON-RPC error ([`crate::jsonrpc::DENIED`]) to answer instead. A
    /// held one is not waited for: the identical request, made again after
    /// approval, runs once.
    pub async fn act(
        &self,
        act: &crate::methods::Act,
        session: Option<&str>,
    ) -> Result<Forward, String> {
        let (action, facts) = act.action(&self.server.name, session);
        let what = format!("{} {}", act.method, act.resource);
        let nothing = "Nothing was forwarded.";
        match self.decider.decide(action, facts).await {
            Ok(Decision::Run(run)) => Ok(Forward {
                run,
                reads: vec![],
                writes: vec![],
            }),
            Ok(Decision::Deny { id, reasons }) => Err(format!(
                "secondkey denied {what}: {}. Decision {id}. {nothing}",
                describe_reasons(&reasons)
            )),
            Ok(Decision::Held {
                request_id,
                url,
                required,
                ..
            }) => Err(format!(
                "secondkey is holding {what} for human review: request {request_id}{} at {url}. {nothing} \
                 Once it is approved, send the identical request again: it then runs once.",
                required_text(&required)
            )),
            Err(e) => Err(format!(
                "secondkey could not decide {what}, so it was not forwarded: {} ({})",
                e.message, e.code
            )),
        }
    }

    /// A call's `arguments`, checked before anything else is done for it
    /// (even reading the tool's definition): an object within
    /// `mcp.max_argument_bytes`. Else the tool error to answer with.
    pub fn arguments(&self, params: &Map<String, Value>) -> Result<Map<String, Value>, Value> {
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(tool_error(
                    "secondkey refused this call: `arguments` must be an object. Nothing ran."
                        .into(),
                ))
            }
        };
        let size = serde_json::to_vec(&arguments)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > self.config.max_argument_bytes {
            return Err(tool_error(format!(
                "secondkey refused this call: its arguments are {size} bytes, more than the {} allowed (mcp.max_argument_bytes). \
                 Arguments are recorded in the audit log with the call; pass large data by reference (a path or URI) instead. Nothing ran.",
                self.config.max_argument_bytes
            )));
        }
        Ok(arguments)
    }

    async fn hold(&self, request_id: &str, url: &str, required: &[Value], w: &mut Waiting) -> Held {
        let limit = if w.progress.is_some() {
            self.config.hold_with_progress
        } else {
            self.config.hold
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut step = 0u64;
        let progress = |step: u64| {
            w.progress.as_ref().map(|(token, tx)| {
                let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                    "progressToken": token, "progress": step,
                    "message": format!("waiting for human approval of secondkey request {request_id}{}: {url}", required_text(required)),
                }});
                (tx.clone(), note.to_string())
            })
        };
        // Tell the client at once that the call is held, and where.
        if let Some((tx, note)) = progress(0) {
            let _ = tx.send(note).await;
        }
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Held::Pending;
            }
            let slice = self.config.progress_interval.min(deadline - now);
            let state = tokio::select! {
                _ = w.cancelled.wait_for(|c| *c) => return Held::Cancelled,
                s = self.decider.wait(request_id, slice) => s,
            };
            match state.as_deref() {
                Ok("approved") => return Held::Approved,
                Ok("pending") => {}
                Ok(other) => return Held::Closed(other.to_string()),
                Err(e) => return Held::Failed(e.clone()),
            }
            // `?wait` rounds to whole seconds; never spin.
            if tokio::time::Instant::now() < now + Duration::from_millis(200) {
                tokio::select! {
                    _ = w.cancelled.wait_for(|c| *c) => return Held::Cancelled,
                    _ = tokio::time::sleep_until(now + slice) => {}
                }
            }
            step += 1;
            if let Some((tx, note)) = progress(step) {
                let _ = tx.send(note).await;
            }
        }
    }

    async fn wait_for_acceptance(
        &self,
        tool: &str,
        def: &Value,
        w: &mut Waiting,
    ) -> Result<bool, Cancelled> {
        let limit = if w.progress.is_some() {
            self.config.hold_with_progress
        } else {
            self.config.hold
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut step = 0u64;
        loop {
            match self
                .decider
                .observe(&self.server.name, vec![def.clone()])
                .await
            {
                Ok(v)
                    if v.iter()
                        .any(|(n, s)| n == tool && matches!(s, PinState::Pinned { .. })) =>
                {
                    return Ok(true)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a tool pin");
                    return Ok(false);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let slice = Duration::from_secs(1).min(deadline - now);
            tokio::select! {
                _ = w.cancelled.wait_for(|c| *c) => return Err(Cancelled),
                _ = tokio::time::sleep(slice) => {}
            }
            step += 1;
            if step.is_multiple_of(self.config.progress_interval.as_secs().max(1)) {
                if let Some((token, tx)) = &w.progress {
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                        "progressToken": token, "progress": step,
                        "message": format!("waiting for a human to accept the changed definition of tool {tool:?}"),
                    }});
                    let _ = tx.send(note.to_string()).await;
                }
            }
        }
    }

    /// Records how a forwarded call ended. Best effort: a failure to record
    /// is logged, the client still gets the server's answer (the run was
    /// authorized and recorded before it started).
    pub async fn finished(&self, fwd: &Forward, outcome: Outcome) {
        let (ok, summary, reads, writes) = match &outcome {
            Outcome::Result(r) => {
                let (ok, s) = action::result_summary(r, self.server.record_content);
                if ok {
                    (true, s, fwd.reads.clone(), fwd.writes.clone())
                } else {
                    (false, s, vec![], vec![])
                }
            }
            Outcome::Error(e) => (
                false,
                json!({"status": "protocol_error", "code": e["code"], "message": e["message"]}),
                vec![],
                vec![],
            ),
            Outcome::Lost(why) => (
                false,
                json!({"status": "unknown", "reason": why}),
                vec![],
                vec![],
            ),
        };
        if let Err(e) = self
            .decider
            .record(&fwd.run, ok, summary, reads, writes)
            .await
        {
            tracing::warn!(execution = %fwd.run.id, error = %e, "could not record a tool call's result");
        }
    }
}

struct Cancelled;

enum Held {
    Approved,
    Pending,
    Closed(String),
    Cancelled,
    Failed(DecideError),
}

fn strings(a: &[Value]) -> Vec<String> {
    a.iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn held_text(tool: &str, request_id: &str, url: &str, required: &[Value]) -> Value {
    tool_error(format!(
        "secondkey is holding this call of {tool:?} for human review: request {request_id}{} at {url}. Nothing ran yet. \
         Once it is approved, call the tool again with exactly the same arguments: it then runs once. \
         Changed arguments are a new request.",
        required_text(required)
    ))
}

fn undecided(e: &DecideError) -> Value {
    tool_error(format!(
        "secondkey could not decide this call, so it did not run: {} ({})",
        e.message, e.code
    ))
}
