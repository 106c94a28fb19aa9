//! The stdio relay against real MCP servers (the official Python SDK's, and
//! a deliberately hostile one), with a scripted decider standing in for the
//! gateway so that each protocol path is driven exactly. The black-box
//! tests in `crates/cli/tests/mcp.rs` run the same paths through the real
//! binary and gateway.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secondkey_mcp::config::{McpConfig, Sources};
use secondkey_mcp::decide::{DecideError, Decider, Decision, PinState, Run};
use secondkey_mcp::intercept::Interceptor;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

#[derive(Default)]
struct Log {
    decided: Vec<Value>,
    approved: HashSet<String>,
    withdrawn: Vec<String>,
    recorded: Vec<(String, bool, Value)>,
    refused: Vec<secondkey_mcp::refused::Refusal>,
    /// The facts each decided call carried.
    facts: Vec<Map<String, Value>>,
    /// Every definition observed against its pin.
    observed: Vec<Value>,
    changed: HashSet<String>,
    next: u64,
}

#[derive(Default, Clone)]
struct Scripted(Arc<Mutex<Log>>);

fn tool_of(action: &Value) -> String {
    action["resource"]
        .as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Scripted {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap()
    }
    fn run(&self) -> Decision {
        let mut l = self.log();
        l.next += 1;
        Decision::Run(Run {
            id: format!("act_{}", l.next),
            request_id: None,
            digest: "0".repeat(64),
            approvers: vec![],
        })
    }
}

impl Decider for Scripted {
    async fn decide(
        &self,
        action: Value,
        facts: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        self.log().decided.push(action.clone());
        self.log().facts.push(facts);
        if action["operation"] == "request"
            || action["operation"] == "sample"
            || tool_of(&action).contains("secret")
        {
            // As policy does: nothing permits an unknown method.
            return Ok(Decision::Deny {
                id: "act_denied".into(),
                reasons: vec![json!({"policy": "no-secrets", "effect": "forbid", "message": ""})],
            });
        }
        match tool_of(&action).as_str() {
            "delete_customer" => Ok(Decision::Deny {
                id: "act_denied".into(),
                reasons: vec![
                    json!({"policy": "no-deleting-customers", "effect": "forbid", "message": ""}),
                ],
            }),
            "export_table" => Ok(Decision::Held {
                request_id: "req_1".into(),
                url: "http://gateway/requests/req_1".into(),
                reused: false,
                required: vec![json!({"groups": ["data-owners"], "quorum": 1})],
            }),
            _ => Ok(self.run()),
        }
    }
    async fn wait(&self, request_id: &str, timeout: Duration) -> Result<String, DecideError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.log().approved.contains(request_id) {
                return Ok("approved".into());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok("pending".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn run_approved(
        &self,
        request_id: &str,
        _a: Value,
        _f: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        if self.log().approved.remove(request_id) {
            Ok(self.run())
        } else {
            Err(DecideError::new("not_approved", "used"))
        }
    }
    async fn withdraw(&self, request_id: &str) -> Result<(), DecideError> {
        self.log().withdrawn.push(request_id.into());
        Ok(())
    }
    async fn record(
        &self,
        run: &Run,
        ok: bool,
        summary: Value,
        _r: Vec<String>,
        _w: Vec<String>,
    ) -> Result<(), DecideError> {
        self.log().recorded.push((run.id.clone(), ok, summary));
        Ok(())
    }
    async fn refused(
        &self,
        _server: &str,
        r: secondkey_mcp::refused::Refusal,
    ) -> Result<(), DecideError> {
        self.log().refused.push(r);
        Ok(())
    }
    async fn observe(
        &self,
        _server: &str,
        tools: Vec<Value>,
    ) -> Result<Vec<(String, PinState)>, DecideError> {
        let mut l = self.log();
        l.observed.extend(tools.iter().cloned());
        Ok(tools
            .iter()
            .map(|t| {
                let n = t["name"].as_str().unwrap_or_default().to_string();
                let st = if l.changed.contains(&n) {
                    PinState::Changed {
                        pinned: "f".repeat(64),
                    }
                } else {
                    PinState::Pinned { new: true }
                };
                (n, st)
            })
            .collect())
    }
}

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

fn require_python_mcp() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import mcp"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "these tests need the official MCP Python SDK: run `python3 -m pip install mcp` (./scripts/test does)");
}

struct Session {
    to: DuplexStream,
    from: tokio::io::Lines<BufReader<DuplexStream>>,
    task: tokio::task::JoinHandle<anyhow::Result<i32>>,
    log: Scripted,
    runs: PathBuf,
    _dir: tempfile::TempDir,
}

fn config(extra: &str) -> McpConfig {
    let text = format!("[mcp]\nhold_seconds = 2\nhold_with_progress_seconds = 10\nprogress_interval_seconds = 1\nmax_argument_bytes = 2048\n{extra}");
    let v: toml::Value = toml::from_str(&text).unwrap();
    let env = |_: &str| None;
    McpConfig::parse(
        v.get("mcp"),
        &Sources {
            env: &env,
            base_dir: std::path::Path::new("."),
        },
    )
    .unwrap()
}

async fn start(script: &str, env: &[(&str, &str)], log: Scripted) -> Session {
    start_with("", script, env, log).await
}

/// [`start`] with `[mcp]` keys `keys` added.
async fn start_with(keys: &str, script: &str, env: &[(&str, &str)], log: Scripted) -> Session {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.jsonl");
    let cfg = config(&format!("{keys}\n[[mcp.servers]]\nname = \"warehouse\"\n[mcp.servers.tools.export_table]\noperation = \"export\"\nreads = [\"table\"]\n"));
    let server = Arc::new(cfg.server("warehouse"));
    let icp = Interceptor::new(Arc::new(cfg), server, Arc::new(log.clone()));
    // The relay starts the server with the environment it has: the test
    // server reads MCP_TEST_* variables; pass them through a wrapper.
    let mut command = vec![
        "env".to_string(),
        format!("MCP_TEST_RUNS={}", runs.display()),
    ];
    for (k, v) in env {
        command.push(format!("{k}={v}"));
    }
    command.push("python3".into());
    command.push(python_dir().join(script).display().to_string());
    command.push("stdio".into());
    let (client_side, relay_in) = tokio::io::duplex(1 << 20);
    let (relay_out, client_read) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move {
        secondkey_mcp::stdio::run(icp, &command, BufReader::new(relay_in), relay_out).await
    });
    Session {
        to: client_side,
        from: BufReader::new(client_read).lines(),
        task,
        log,
        runs,
        _dir: dir,
    }
}

impl Session {
    async fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }
    async fn send_raw(&mut self, s: &str) {
        self.to.write_all(s.as_bytes()).await.unwrap();
        self.to.write_all(b"\n").await.unwrap();
        self.to.flush().await.unwrap();
    }
    /// The next message that is not a notification (notifications collected).
    async fn answer(&mut self, notes: &mut Vec<Value>) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.from.next_line())
                .await
                .expect("an answer within 30 s")
                .unwrap()
                .expect("the relay is still running");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("id").is_none() {
                notes.push(v);
                continue;
            }
            return v;
        }
    }
    async fn call(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.answer(&mut vec![]).await
    }
    async fn init(&mut self) {
        self.init_with(json!({})).await;
    }

    /// Initializes the session declaring the client's `capabilities`.
    async fn init_with(&mut self, capabilities: Value) {
        let r = self
            .call(
                json!(0),
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
                "clientInfo": {"name": "relay-test", "version": "1"}}),
            )
            .await;
        assert!(r["result"]["protocolVersion"].is_string(), "{r}");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }
    fn runs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    async fn close(self) -> i32 {
        drop(self.to);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

fn text(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn allowed_denied_and_passed_through() {
    require_python_mcp();
    let mut s = start("test_server.py", &[], Scripted::default()).await;
    s.init().await;
    let list = s.call(json!(1), "tools/list", json!({})).await;
    assert_eq!(
        list["result"]["tools"].as_array().unwrap().len(),
        7,
        "{list}"
    );
    let r = s
        .call(
            json!(2),
            "tools/call",
            json!({"name": "read_table", "arguments": {"table": "orders"}}),
        )
        .await;
    assert_eq!(text(&r), "10 rows of orders", "{r}");
    let r = s
        .call(
            json!("del"),
            "tools/call",
            json!({"name": "delete_customer", "arguments": {"customer_id": 7}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        text(&r).contains("no-deleting-customers") && text(&r).contains("act_denied"),
        "{r}"
    );
    let r = s.call(json!(3), "ping", json!({})).await;
    assert_eq!(r["result"], json!({}), "pings pass through: {r}");
    let r = s
        .call(
            json!(4),
            "tools/call",
            json!({"name": "no_such_tool", "arguments": {}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(text(&r).contains("does not list a tool"), "{r}");
    let runs = s.runs();
    assert_eq!(
        runs,
        vec![json!({"tool": "read_table", "args": {"table": "orders", "limit": 10}})]
    );
    let log = s.log.clone();
    assert_eq!(s.close().await, 0);
    let l = log.log();
    assert_eq!(
        l.decided.len(),
        2,
        "a call of an unknown tool is refused before any decision"
    );
    assert_eq!(l.decided[0]["params"], json!({"table": "orders"}));
    assert_eq!(l.decided[0]["context"]["client"]["name"], "relay-test");
    assert_eq!(l.recorded.len(), 1);
    assert!(l.recorded[0].1, "the read succeeded");
}

#[tokio::test]
async fn a_call_of_a_tool_never_listed_is_checked_against_the_server_list() {
    require_python_mcp();
    let mut s = start("test_server.py", &[], Scripted::default()).await;
    s.init().await;
    // No tools/list by the client: secondkey lists the tools itself.
    let r = s
        .call(
            json!(1),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(text(&r), "hi", "{r}");
    assert_eq!(s.runs().len(), 1);
    s.close().await;
}

#[tokio::test]
async fn held_call_reports_progress_and_runs_once_after_approval() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    s.call(json!(1), "tools/list", json!({})).await;
    s.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "export_table", "arguments": {"table": "customers", "destination": "s3://x"},
        "_meta": {"progressToken": "p1"}}}),
    )
    .await;
    // Wait for two progress notifications, then approve.
    let mut notes = Vec::new();
    let approver = {
        let log = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            log.log().approved.insert("req_1".into());
        })
    };
    let r = s.answer(&mut notes).await;
    approver.await.unwrap();
    assert_eq!(text(&r), "exported customers to s3://x", "{r}");
    assert!(notes.len() >= 2, "progress while held: {notes:?}");
    assert_eq!(notes[0]["method"], "notifications/progress");
    assert_eq!(notes[0]["params"]["progressToken"], "p1");
    assert!(notes[0]["params"]["message"]
        .as_str()
        .unwrap()
        .contains("req_1"));
    assert_eq!(s.runs().len(), 1, "ran exactly once");
    // The approval is used up: the same call is held again, then times out.
    let r = s
        .call(
            json!(3),
            "tools/call",
            json!({"name": "export_table",
        "arguments": {"table": "customers", "destination": "s3://x"}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        text(&r).contains("req_1") && text(&r).contains("exactly the same arguments"),
        "{r}"
    );
    assert_eq!(s.runs().len(), 1, "nothing ran the second time");
    s.close().await;
}

#[tokio::test]
async fn cancelling_a_held_call_withdraws_it_and_a_duplicate_id_is_refused() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    s.call(json!(1), "tools/list", json!({})).await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "export_table", "arguments": {"table": "customers", "destination": "s3://x"},
        "_meta": {"progressToken": 5}}});
    s.send(call.clone()).await;
    s.send(call).await;
    let dup = s.answer(&mut vec![]).await;
    assert_eq!(dup["error"]["code"], -32600, "{dup}");
    assert!(dup["error"]["message"]
        .as_str()
        .unwrap()
        .contains("still in progress"));
    s.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9, "reason": "user"}}))
        .await;
    // No answer for a cancelled request: the next answer is the ping's.
    let mut notes = Vec::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send(json!({"jsonrpc": "2.0", "id": 10, "method": "ping"}))
        .await;
    let r = s.answer(&mut notes).await;
    assert_eq!(r["id"], 10, "{r}");
    assert_eq!(log.log().withdrawn, vec!["req_1".to_string()]);
    assert_eq!(
        log.log().decided.len(),
        1,
        "the duplicate was never decided"
    );
    assert!(s.runs().is_empty());
    s.close().await;
}

#[tokio::test]
async fn bad_input_from_the_client_is_refused_and_forwards_nothing() {
    require_python_mcp();
    let mut s = start("test_server.py", &[], Scripted::default()).await;
    s.init().await;
    s.send_raw("{not json").await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(r["error"]["code"], -32700, "{r}");
    s.send_raw(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","method":"tools/call","params":{"name":"delete_customer","arguments":{"customer_id":1}}}"#).await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(r["error"]["code"], -32700, "a repeated key is refused: {r}");
    s.send_raw(r#"[{"jsonrpc":"2.0","id":6,"method":"ping"}]"#)
        .await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(r["error"]["code"], -32600, "{r}");
    let big = "x".repeat(4000);
    let r = s
        .call(
            json!(7),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": big}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(text(&r).contains("max_argument_bytes"), "{r}");
    let huge = "y".repeat(5 * 1024 * 1024);
    s.send_raw(&format!(r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{huge}"}}}}}}"#)).await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(
        r["error"]["code"],
        -32600,
        "{}",
        &r.to_string()[..200.min(r.to_string().len())]
    );
    let r = s
        .call(
            json!(9),
            "tools/call",
            json!({"name": "echo", "arguments": "not an object"}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(s.runs().is_empty(), "nothing ran: {:?}", s.runs());
    // The session still works.
    let r = s
        .call(
            json!(10),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "still here"}}),
        )
        .await;
    assert_eq!(text(&r), "still here");
    s.close().await;
}

/// A carriage return is JSON whitespace, so a line can parse as one
/// harmless `ping` while a server reading with universal newlines (the
/// official Python SDK's stdio transport) reads three lines, the middle a
/// `tools/call`. The relay forwards no `\r`: the server sees the ping,
/// no tool runs, and nothing answers the smuggled id.
#[tokio::test]
async fn a_call_hidden_behind_carriage_returns_never_reaches_the_server() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    s.send_raw(concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"#,
        "\r",
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"smuggled"}}}"#,
        "\r",
        "}}"
    ))
    .await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(r["id"], 1, "the ping is answered: {r}");
    // Whatever the server made of it, id 2 is never answered and no tool
    // ran: the next answer is the one to id 3.
    let r = s
        .call(
            json!(3),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "decided"}}),
        )
        .await;
    assert_eq!(r["id"], 3, "no answer to the smuggled id: {r}");
    assert_eq!(text(&r), "decided");
    let runs: Vec<String> = s.runs().iter().map(|r| r.to_string()).collect();
    assert!(
        runs.iter().all(|r| !r.contains("smuggled")),
        "the smuggled call never ran: {runs:?}"
    );
    assert_eq!(runs.len(), 1, "{runs:?}");
    s.close().await;
}

#[tokio::test]
async fn a_changed_definition_holds_calls_of_that_tool() {
    require_python_mcp();
    let log = Scripted::default();
    log.log().changed.insert("echo".into());
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    s.call(json!(1), "tools/list", json!({})).await;
    let r = s
        .call(
            json!(2),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        text(&r).contains("changed since it was pinned")
            && text(&r).contains("secondkey mcp tools accept"),
        "{r}"
    );
    assert!(s.runs().is_empty());
    assert!(log.log().decided.is_empty(), "not even decided");
    s.close().await;
}

#[tokio::test]
async fn a_hostile_server_floods_writes_garbage_and_crashes() {
    let log = Scripted::default();
    let mut s = start("hostile_server.py", &[("MCP_FLOOD", "30000")], log.clone()).await;
    s.init().await;
    s.call(json!(1), "tools/list", json!({})).await;
    let mut notes = Vec::new();
    s.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "flood", "arguments": {}}})).await;
    let r = s.answer(&mut notes).await;
    assert_eq!(text(&r), "flood done", "{r}");
    assert!(
        notes.len() < 30000,
        "a flood is cut to a rate: {} of 30000 relayed",
        notes.len()
    );
    let r = s
        .call(
            json!(3),
            "tools/call",
            json!({"name": "garbage", "arguments": {}}),
        )
        .await;
    assert_eq!(
        text(&r),
        "garbage done",
        "malformed and over-long lines are dropped, the answer still comes: {r}"
    );
    let r = s
        .call(
            json!(4),
            "tools/call",
            json!({"name": "crash", "arguments": {}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text(&r).contains("unknown"), "{r}");
    let code = s.close().await;
    assert_eq!(code, 7, "the relay exits with the server's code");
    let l = log.log();
    let last = l.recorded.last().unwrap();
    assert!(!last.1);
    assert_eq!(
        last.2["status"], "unknown",
        "the crashed call is recorded as unknown: {:?}",
        l.recorded
    );
}

#[tokio::test]
async fn a_call_without_an_id_or_with_a_non_string_name_is_refused_and_never_reaches_the_server() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    // `tools/call` as a notification: answered with an error without an id,
    // never forwarded, recorded as a refused attempt.
    s.send(json!({"jsonrpc": "2.0", "method": "tools/call",
                  "params": {"name": "echo", "arguments": {"text": "sneaky"}}}))
        .await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(
        (&r["id"], &r["error"]["code"]),
        (&Value::Null, &json!(-32600)),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without an `id`"),
        "{r}"
    );
    for (name, says) in [
        (json!(5), "must be a string, not a number"),
        (json!(["echo"]), "must be a string, not an array"),
        (Value::Null, "must be a string, not null"),
    ] {
        let r = s
            .call(
                json!("n"),
                "tools/call",
                json!({"name": name, "arguments": {"text": "x"}}),
            )
            .await;
        assert_eq!(
            (&r["id"], &r["error"]["code"]),
            (&json!("n"), &json!(-32602)),
            "{r}"
        );
        assert!(
            r["error"]["message"].as_str().unwrap().contains(says),
            "{r}"
        );
    }
    let r = s
        .call(json!("m"), "tools/call", json!({"arguments": {}}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is missing"),
        "{r}"
    );
    // A request that proves the server saw nothing of the above.
    let r = s
        .call(
            json!(1),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "ok"}}),
        )
        .await;
    assert_eq!(text(&r), "ok", "{r}");
    assert_eq!(
        s.runs(),
        vec![json!({"tool": "echo", "args": {"text": "ok"}})]
    );
    {
        let l = log.log();
        assert_eq!(l.decided.len(), 1, "only the valid call was decided");
        assert_eq!(l.refused.len(), 1, "{:?}", l.refused);
        assert_eq!(
            (l.refused[0].method.as_str(), l.refused[0].code.as_str()),
            ("tools/call", "request_without_id")
        );
    }
    s.close().await;
}

#[tokio::test]
async fn the_listed_fact_is_the_clients_and_a_changed_list_is_read_again_before_a_call() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    let echo = |t: &str| json!({"name": "echo", "arguments": {"text": t}});
    // Not listed by the client: secondkey lists, but `listed` is false.
    assert_eq!(text(&s.call(json!(1), "tools/call", echo("a")).await), "a");
    s.call(json!(2), "tools/list", json!({})).await;
    assert_eq!(text(&s.call(json!(3), "tools/call", echo("b")).await), "b");
    // The server changes echo and says so; the next call is decided on the
    // definition it lists now, and the client has not listed that one.
    let mut notes = vec![];
    s.send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                  "params": {"name": "mutate", "arguments": {}}}))
        .await;
    let r = s.answer(&mut notes).await;
    assert_eq!(text(&r), "mutated", "{r}");
    assert!(
        notes
            .iter()
            .any(|n| n["method"] == "notifications/tools/list_changed"),
        "the notification is relayed: {notes:?}"
    );
    let seen_before = log.log().observed.len();
    assert_eq!(text(&s.call(json!(5), "tools/call", echo("c")).await), "c");
    {
        let l = log.log();
        let listed: Vec<Value> = l
            .facts
            .iter()
            .filter(|f| f["mcp"]["tool"] == "echo")
            .map(|f| f["mcp"]["listed"].clone())
            .collect();
        assert_eq!(listed, vec![json!(false), json!(true), json!(false)]);
        let relisted: Vec<&Value> = l.observed[seen_before..]
            .iter()
            .filter(|d| d["name"] == "echo")
            .collect();
        assert!(
            relisted
                .iter()
                .any(|d| d["description"].as_str().unwrap().contains("id_rsa")),
            "decided on the definition listed after the change: {relisted:?}"
        );
    }
    s.close().await;
}

#[tokio::test]
async fn resources_prompts_and_unknown_methods_are_decided_before_the_server_sees_them() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init().await;
    let r = s
        .call(
            json!(1),
            "resources/read",
            json!({"uri": "file:///notes.txt"}),
        )
        .await;
    assert_eq!(r["result"]["contents"][0]["text"], "the notes", "{r}");
    let r = s
        .call(
            json!(2),
            "resources/read",
            json!({"uri": "file:///secret.txt"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-secrets"),
        "{r}"
    );
    let r = s
        .call(
            json!(3),
            "files/delete",
            json!({"path": "/", "_meta": {"x": 1}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let r = s
        .call(
            json!(4),
            "prompts/get",
            json!({"name": "summarize", "arguments": {"topic": "q3"}}),
        )
        .await;
    assert!(
        r["result"]["messages"][0]["content"]["text"]
            .as_str()
            .unwrap()
            .contains("Summarize q3"),
        "{r}"
    );
    // Listing passes undecided.
    let r = s.call(json!(5), "resources/list", json!({})).await;
    assert_eq!(r["result"]["resources"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        s.runs(),
        vec![
            json!({"tool": "resource", "args": {"uri": "file:///notes.txt"}}),
            json!({"tool": "prompt", "args": {"topic": "q3"}}),
        ],
        "the denied ones never reached the server"
    );
    {
        let l = log.log();
        let decided: Vec<(String, String)> = l
            .decided
            .iter()
            .map(|a| {
                (
                    a["operation"].as_str().unwrap().to_string(),
                    a["resource"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            decided,
            [
                (
                    "read",
                    "mcp://warehouse/resources/file%3A%2F%2F%2Fnotes.txt"
                ),
                (
                    "read",
                    "mcp://warehouse/resources/file%3A%2F%2F%2Fsecret.txt"
                ),
                ("request", "mcp://warehouse/methods/files%2Fdelete"),
                ("read", "mcp://warehouse/prompts/summarize"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(
            l.decided[2]["params"],
            json!({"path": "/"}),
            "`_meta` is not an argument"
        );
        assert_eq!(
            l.recorded.len(),
            2,
            "both runs' outcomes recorded: {:?}",
            l.recorded
        );
    }
    s.close().await;
}

#[tokio::test]
async fn the_servers_requests_to_the_client_are_decided_before_the_client_sees_them() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start("test_server.py", &[], log.clone()).await;
    s.init_with(json!({"roots": {}, "sampling": {}})).await;
    // Allowed: the server's roots/list reaches the client, which answers.
    s.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                  "params": {"name": "ask_client", "arguments": {"what": "roots"}}}))
        .await;
    let asked = s.answer(&mut vec![]).await;
    assert_eq!(asked["method"], "roots/list", "{asked}");
    s.send(json!({"jsonrpc": "2.0", "id": asked["id"],
                  "result": {"roots": [{"uri": "file:///work", "name": "work"}]}}))
        .await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(text(&r), "roots: 1", "{r}");
    // Denied: the client never sees the sampling request; the server is
    // answered with the refusal.
    let mut notes = vec![];
    s.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "ask_client", "arguments": {"what": "sample"}}}))
        .await;
    let r = s.answer(&mut notes).await;
    assert_eq!(
        r["id"], 2,
        "the next message is the call's answer, not the request: {r}"
    );
    // The SDK server turns the refusal it got into the call's error.
    assert!(
        r.to_string().contains("no-secrets") && r.to_string().contains("Nothing was forwarded"),
        "the server got the refusal: {r}"
    );
    {
        let l = log.log();
        let decided: Vec<(&str, &str)> = l
            .decided
            .iter()
            .filter(|a| a["resource"].as_str().unwrap().contains("/client/"))
            .map(|a| {
                (
                    a["operation"].as_str().unwrap(),
                    a["resource"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            decided,
            [
                ("read", "mcp://warehouse/client/roots%2Flist"),
                ("sample", "mcp://warehouse/client/sampling%2FcreateMessage"),
            ]
        );
    }
    s.close().await;
    // The allowed request's outcome was recorded with the calls'.
    assert!(
        log.log()
            .recorded
            .iter()
            .any(|(_, ok, summary)| *ok && summary["status"] == "ok"),
        "{:?}",
        log.log().recorded
    );
}

/// Issue 24: a request of the server past the session's
/// `mcp.max_pending_requests` is refused to the server with -32005 and
/// never decided nor shown to the client; the session goes on.
#[tokio::test]
async fn a_server_request_past_max_pending_requests_is_refused_to_the_server() {
    require_python_mcp();
    let log = Scripted::default();
    let mut s = start_with(
        "max_pending_requests = 1",
        "test_server.py",
        &[],
        log.clone(),
    )
    .await;
    s.init_with(json!({"roots": {}, "sampling": {}})).await;
    // The call takes the session's one slot until it is answered, so the
    // roots/list the server asks meanwhile is one too many.
    s.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                  "params": {"name": "ask_client", "arguments": {"what": "roots"}}}))
        .await;
    let r = s.answer(&mut vec![]).await;
    assert_eq!(r["id"], 1, "the client never sees the request: {r}");
    assert!(
        r.to_string().contains("(mcp.max_pending_requests)"),
        "the server got the refusal: {r}"
    );
    assert!(
        !log.log()
            .decided
            .iter()
            .any(|a| a["resource"].as_str().unwrap().contains("/client/")),
        "not even decided"
    );
    let r = s
        .call(
            json!(2),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "goes on"}}),
        )
        .await;
    assert_eq!(text(&r), "goes on", "{r}");
    s.close().await;
}

/// `tasks/*` (protocol revision 2025-11-25) reach only the tasks the
/// server created for the session's own decided calls. Two relays (two
/// agents) share one server-side task store, as sessions of a remote
/// server that does not bind tasks to their creator would: the other's
/// task id, or a malformed one, is refused with -32602 and never reaches
/// the server; `tasks/list` shows each only its own, pages and all.
#[tokio::test]
async fn tasks_reach_only_those_the_sessions_own_decided_calls_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tasks.json");
    let env = [
        ("MCP_TASKS_FILE", store.to_str().unwrap()),
        ("MCP_TASKS_PAGE", "2"),
    ];
    let mut a = start("task_server.py", &env, Scripted::default()).await;
    let mut b = start("task_server.py", &env, Scripted::default()).await;
    a.init().await;
    b.init().await;
    let as_task = |topic: &str| json!({"name": "report", "arguments": {"topic": topic}, "task": {"ttl": 60000}});
    let task_of = |r: &Value| {
        r["result"]["task"]["taskId"]
            .as_str()
            .unwrap_or_else(|| panic!("no task created: {r}"))
            .to_string()
    };
    let a1 = task_of(&a.call(json!(1), "tools/call", as_task("payroll")).await);
    let a2 = task_of(&a.call(json!(2), "tools/call", as_task("salaries")).await);
    let b1 = task_of(&b.call(json!(1), "tools/call", as_task("weather")).await);
    assert_eq!(a.log.log().decided.len(), 2, "each task is a decided call");

    // B names A's task: refused, as for a task that does not exist.
    let before = b.runs().len();
    for (i, m) in ["tasks/get", "tasks/result", "tasks/cancel"]
        .into_iter()
        .enumerate()
    {
        let r = b.call(json!(10 + i), m, json!({"taskId": a1})).await;
        assert_eq!(r["error"]["code"], -32602, "{m}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown task"),
            "{r}"
        );
    }
    // A malformed or missing id: refused likewise.
    for (i, p) in [
        json!({}),
        json!({"taskId": 7}),
        json!({"taskId": null}),
        json!({"taskId": ""}),
        json!({"taskId": [a1]}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = b.call(json!(20 + i), "tasks/result", p.clone()).await;
        assert_eq!(r["error"]["code"], -32602, "{p}: {r}");
    }
    assert_eq!(b.runs().len(), before, "nothing reached the server");
    let codes: Vec<(String, String)> = b
        .log
        .log()
        .refused
        .iter()
        .map(|r| (r.method.clone(), r.code.clone()))
        .collect();
    assert_eq!(codes.len(), 8, "{codes:?}");
    assert_eq!(codes[0], ("tasks/get".into(), "unknown_task".into()));
    assert_eq!(codes[7], ("tasks/result".into(), "invalid_task_id".into()));

    // A's own tasks work: get, result, cancel.
    let r = a.call(json!(3), "tasks/get", json!({"taskId": a1})).await;
    assert_eq!(r["result"]["status"], "working", "{r}");
    let r = a
        .call(json!(4), "tasks/result", json!({"taskId": a1}))
        .await;
    assert_eq!(text(&r), "report on payroll", "{r}");
    let r = a
        .call(json!(5), "tasks/cancel", json!({"taskId": a2}))
        .await;
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    // B's own too; of the server's status notifications of every task,
    // only its own reaches it.
    b.send(json!({"jsonrpc": "2.0", "id": 6, "method": "tasks/result",
                  "params": {"taskId": b1, "_meta": {"test/statuses": true}}}))
        .await;
    let mut notes = vec![];
    let r = b.answer(&mut notes).await;
    assert_eq!(text(&r), "report on weather", "{r}");
    let statuses: Vec<&Value> = notes
        .iter()
        .filter(|n| n["method"] == "notifications/tasks/status")
        .map(|n| &n["params"]["taskId"])
        .collect();
    assert_eq!(statuses, [&json!(b1)], "{notes:?}");

    // Listing (pages of 2 of the server's 3 tasks): each sees its own, and
    // the server's cursor still pages.
    async fn listed(s: &mut Session) -> (Vec<String>, usize) {
        let (mut ids, mut pages, mut cursor) = (vec![], 0, Value::Null);
        loop {
            let params = match &cursor {
                Value::Null => json!({}),
                c => json!({"cursor": c}),
            };
            let r = s.call(json!(100 + pages), "tasks/list", params).await;
            pages += 1;
            for t in r["result"]["tasks"].as_array().unwrap() {
                ids.push(t["taskId"].as_str().unwrap().to_string());
            }
            cursor = r["result"]["nextCursor"].clone();
            if cursor.is_null() {
                return (ids, pages);
            }
        }
    }
    let (mut mine, pages) = listed(&mut a).await;
    mine.sort();
    let mut want = vec![a1.clone(), a2.clone()];
    want.sort();
    assert_eq!((mine, pages), (want, 2));
    assert_eq!(listed(&mut b).await, (vec![b1.clone()], 2));
    assert_eq!(a.close().await, 0);
    assert_eq!(b.close().await, 0);
}

/// A decided call that runs as a task is recorded once, with the task's
/// result: not when the server answers with the `CreateTaskResult`, and
/// not again when the client fetches the result a second time. A task
/// whose result is never fetched is recorded as unknown when the session
/// ends.
#[tokio::test]
async fn a_task_run_call_is_recorded_once_with_its_result() {
    let mut s = start("task_server.py", &[], Scripted::default()).await;
    s.init().await;
    let as_task =
        |topic: &str| json!({"name": "report", "arguments": {"topic": topic}, "task": {}});
    let r = s.call(json!(1), "tools/call", as_task("payroll")).await;
    let t1 = r["result"]["task"]["taskId"].as_str().unwrap().to_string();
    let r = s.call(json!(2), "tools/call", as_task("unfetched")).await;
    assert!(r["result"]["task"]["taskId"].is_string(), "{r}");
    let r = s.call(json!(3), "tasks/get", json!({"taskId": t1})).await;
    assert_eq!(r["result"]["status"], "working", "{r}");
    assert!(
        s.log.log().recorded.is_empty(),
        "creating a task is not the call's outcome: {:?}",
        s.log.log().recorded
    );
    for i in 0..2 {
        let r = s
            .call(json!(10 + i), "tasks/result", json!({"taskId": t1}))
            .await;
        assert_eq!(text(&r), "report on payroll", "{r}");
    }
    let log = s.log.clone();
    assert_eq!(s.close().await, 0);
    let l = log.log();
    assert_eq!(l.recorded.len(), 2, "{:?}", l.recorded);
    let (run, ok, summary) = &l.recorded[0];
    assert_eq!(run, "act_1");
    assert!(ok);
    assert_eq!(
        (&summary["status"], &summary["content_items"]),
        (&json!("ok"), &json!(1)),
        "the task's result, recorded once: {summary}"
    );
    let (run, ok, summary) = &l.recorded[1];
    assert_eq!(run, "act_2");
    assert!(!ok);
    assert_eq!(summary["status"], "unknown", "{summary}");
}

/// A session keeps at most `tasks::MAX_TASKS` task ids: past that the
/// oldest is forgotten, refused like any unknown task, and no longer
/// listed; the newer ones are still reached.
#[tokio::test]
async fn a_session_keeps_its_newest_tasks_up_to_the_bound() {
    use secondkey_mcp::tasks::MAX_TASKS;
    let mut s = start(
        "task_server.py",
        &[("MCP_TASKS_PAGE", "5000")],
        Scripted::default(),
    )
    .await;
    s.init().await;
    let mut ids = vec![];
    for i in 0..=MAX_TASKS {
        let r = s
            .call(
                json!(i),
                "tools/call",
                json!({"name": "report", "arguments": {"topic": "t"}, "task": {}}),
            )
            .await;
        ids.push(r["result"]["task"]["taskId"].as_str().unwrap().to_string());
    }
    let r = s
        .call(json!("oldest"), "tasks/get", json!({"taskId": ids[0]}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    for t in [&ids[1], &ids[MAX_TASKS]] {
        let r = s
            .call(json!("kept"), "tasks/get", json!({"taskId": t}))
            .await;
        assert_eq!(r["result"]["status"], "working", "{r}");
    }
    let r = s.call(json!("list"), "tasks/list", json!({})).await;
    let listed = r["result"]["tasks"].as_array().unwrap();
    assert_eq!(listed.len(), MAX_TASKS, "the server has one more");
    assert!(listed.iter().all(|t| t["taskId"] != ids[0].as_str()));
    assert_eq!(s.close().await, 0);
}
