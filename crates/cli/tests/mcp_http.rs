//! Black-box tests of the MCP gateway's Streamable HTTP mode (`/mcp/<server>`)
//! when calls are held and when either side is hostile: the real binary and
//! gateway, the official MCP Python SDK's server (or a raw hostile one)
//! upstream, and the client spoken as raw HTTP, so that every message,
//! header and byte is the test's choice. `mcp.rs` runs the SDK's own client.

mod common;
#[path = "common/mcp.rs"]
mod mcp_common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use mcp_common::*;
use serde_json::{json, Value};

const PROTOCOL: &str = "2025-11-25";

const EXPORT_TOOL: &str = "[mcp.servers.tools.export_table]\noperation = \"export\"\nreads = [\"table\"]\nwrites = [\"destination\"]\n";

/// A `[[mcp.servers]]` entry for `url`, holding the upstream's token;
/// `extra` adds keys, then tool tables.
fn server(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[mcp.servers]]\nname = \"{name}\"\nurl = \"{url}\"\nheaders = [{{ name = \"Authorization\", value_file = \"upstream.token\", prefix = \"Bearer \" }}]\n{extra}\n"
    )
}

struct Env {
    g: Gateway,
    up: Upstream,
    runs: PathBuf,
    tmp: tempfile::TempDir,
}

/// An SDK test server upstream (`variant`: `MCP_TEST_VARIANT`), on `port`
/// if given (a restart).
fn sdk_upstream(tmp: &tempfile::TempDir, variant: &str, port: Option<u16>) -> Upstream {
    let runs = tmp.path().join("runs.jsonl");
    upstream_with(
        tmp.path(),
        "test_server.py",
        &[
            ("MCP_TEST_RUNS", runs.to_str().unwrap()),
            ("MCP_TEST_UPSTREAM_TOKEN", "upstream-secret"),
            ("MCP_TEST_VARIANT", variant),
        ],
        port,
    )
}

/// The gateway with `[mcp]` keys `keys` and the servers `servers(url)`
/// returns for the upstream's url.
fn start_with(keys: &str, up: Upstream, tmp: tempfile::TempDir, servers: &str) -> Env {
    std::fs::write(tmp.path().join("upstream.token"), "upstream-secret\n").unwrap();
    let section = format!(
        "\n[mcp]\nprogress_interval_seconds = 1\ntool_admins = [\"data-owners\"]\n{keys}\n{servers}"
    );
    let g = Gateway::start_extra(tmp.path(), MCP_POLICIES, &section);
    Env {
        g,
        up,
        runs: tmp.path().join("runs.jsonl"),
        tmp,
    }
}

/// The gateway with `policies`, `[mcp]` keys `keys` and only the SDK's
/// server as `warehouse`.
fn start_policed(policies: &str, keys: &str) -> Env {
    require_python_mcp();
    let tmp = tempfile::tempdir().unwrap();
    let up = sdk_upstream(&tmp, "", None);
    let servers = server("warehouse", &up.url, "");
    std::fs::write(tmp.path().join("upstream.token"), "upstream-secret\n").unwrap();
    let g = Gateway::start_extra(tmp.path(), policies, &format!("\n[mcp]\n{keys}{servers}"));
    Env {
        g,
        up,
        runs: tmp.path().join("runs.jsonl"),
        tmp,
    }
}

fn start(keys: &str, servers: impl Fn(&str) -> String) -> Env {
    require_python_mcp();
    let tmp = tempfile::tempdir().unwrap();
    let up = sdk_upstream(&tmp, "", None);
    let servers = servers(&up.url);
    start_with(keys, up, tmp, &servers)
}

impl Env {
    fn session(&self, server: &str, who: &str) -> Session {
        Session::open(&self.g, server, who)
    }

    fn runs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn runs_of(&self, tool: &str) -> Vec<Value> {
        self.runs()
            .into_iter()
            .filter(|r| r["tool"] == tool)
            .collect()
    }

    fn state(&self, id: &str) -> String {
        let (s, v) = self
            .g
            .call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
        assert_eq!(s, 200, "{v}");
        v["state"].as_str().unwrap().to_string()
    }

    fn wait_state(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.state(id);
            if st == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} is {st}, never {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pending(&self) -> Vec<String> {
        let (s, v) = self
            .g
            .call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits for a pending request not in `known`.
    fn new_pending(&self, known: &[String]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(id) = self.pending().into_iter().find(|i| !known.contains(i)) {
                return id;
            }
            assert!(Instant::now() < deadline, "no new pending request");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn approve(&self, id: &str) {
        let (s, v) = self.g.review("user:bob", id, "approve");
        assert_eq!(s, 200, "{v}");
    }

    /// The audit log as entries (read-only, while the gateway runs).
    fn log(&self) -> Vec<Value> {
        common::log_entries(&self.g)
    }

    /// Waits for a log entry matching `f` (results are recorded off the
    /// client's path).
    fn wait_log(&self, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.log().into_iter().find(&f) {
                return e;
            }
            assert!(Instant::now() < deadline, "the entry was never logged");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the upstream and starts it again on the same port.
    fn restart_upstream(&mut self, variant: &str) {
        let _ = self.up.child.kill();
        self.up.wait_exited();
        self.up = sdk_upstream(&self.tmp, variant, Some(self.up.port));
    }
}

/// An MCP session spoken as raw HTTP through the gateway.
struct Session {
    url: String,
    token: String,
    id: Option<String>,
    agent: ureq::Agent,
}

/// One HTTP answer and the JSON-RPC messages in it (JSON or event stream).
struct Answer {
    status: u16,
    body: String,
    messages: Vec<Value>,
    session: Option<String>,
}

fn messages_in(content_type: &str, body: &str) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        body.replace("\r\n", "\n")
            .split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                (!data.is_empty()).then(|| {
                    serde_json::from_str(&data.join("\n")).unwrap_or_else(|e| {
                        panic!("an unreadable event reached the client ({e}): {ev}")
                    })
                })
            })
            .collect()
    } else if body.trim().is_empty() {
        vec![]
    } else {
        vec![serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))]
    }
}

impl Answer {
    /// The JSON-RPC response in it.
    fn response(&self) -> &Value {
        self.messages
            .iter()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no response in {}: {}", self.status, self.body))
    }

    fn is_error(&self) -> bool {
        self.response()["result"]["isError"] == true
    }

    fn text(&self) -> String {
        tool_text(self.response())
    }

    fn notifications(&self, method: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m["method"] == method)
            .count()
    }
}

fn tool_text(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not a tool result: {r}"))
        .to_string()
}

/// The `req_…` id a held call's text names.
fn request_id_in(text: &str) -> String {
    let at = text
        .find("request req_")
        .unwrap_or_else(|| panic!("no request id in: {text}"));
    text[at + "request ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn call_msg(id: &Value, tool: &str, args: &Value, progress: Option<&Value>) -> Value {
    let mut params = json!({"name": tool, "arguments": args});
    if let Some(t) = progress {
        params["_meta"] = json!({"progressToken": t});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// An event stream read as it comes, one JSON-RPC message at a time.
struct Events {
    rx: mpsc::Receiver<Value>,
}

impl Events {
    /// The next message (within 20 s); `None` when the stream ended.
    fn next(&self) -> Option<Value> {
        match self.rx.recv_timeout(Duration::from_secs(20)) {
            Ok(v) => Some(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no event within 20 s"),
        }
    }

    /// Everything until the stream ends.
    fn rest(&self) -> Vec<Value> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

impl Session {
    fn open(g: &Gateway, server: &str, who: &str) -> Session {
        let mut s = Session::unopened(g, server, who);
        let a = s.send(&initialize_msg());
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.response()["result"]["protocolVersion"].is_string(),
            "{}",
            a.body
        );
        s.id = a.session.clone();
        assert!(s.id.is_some(), "the upstream names the session");
        let a = s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert_eq!(a.status, 202, "{}", a.body);
        s
    }

    /// The same session id, another caller.
    fn as_other(&self, who: &str) -> Session {
        Session {
            url: self.url.clone(),
            token: token_of(who),
            id: self.id.clone(),
            agent: self.agent.clone(),
        }
    }

    fn request(&self, method: &str) -> ureq::Request {
        let mut r = self
            .agent
            .request(method, &self.url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/json")
            .set("Accept", "application/json, text/event-stream")
            .set("MCP-Protocol-Version", PROTOCOL);
        if let Some(id) = &self.id {
            r = r.set("Mcp-Session-Id", id);
        }
        r
    }

    fn answer(res: Result<ureq::Response, ureq::Error>) -> Answer {
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        let status = resp.status();
        let ct = resp.content_type().to_string();
        let session = resp.header("mcp-session-id").map(str::to_string);
        let body = resp.into_string().unwrap();
        Answer {
            status,
            messages: messages_in(&ct, &body),
            body,
            session,
        }
    }

    fn post(&self, body: &[u8]) -> Answer {
        Self::answer(self.request("POST").send_bytes(body))
    }

    fn send(&self, msg: &Value) -> Answer {
        self.post(msg.to_string().as_bytes())
    }

    fn get(&self) -> Answer {
        Self::answer(
            self.request("GET")
                .set("Accept", "text/event-stream")
                .call(),
        )
    }

    fn list(&self) -> Answer {
        let a = self.send(&json!({"jsonrpc": "2.0", "id": "list", "method": "tools/list"}));
        assert_eq!(a.status, 200, "{}", a.body);
        a
    }

    fn call(&self, id: Value, tool: &str, args: &Value) -> Answer {
        self.send(&call_msg(&id, tool, args, None))
    }

    fn cancel(&self, id: Value) -> Answer {
        self.send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                          "params": {"requestId": id, "reason": "the user gave up"}}),
        )
    }

    /// A call with a progress token, its event stream read in a thread.
    fn call_streaming(&self, id: Value, tool: &str, args: &Value, token: Value) -> Events {
        let req = self.request("POST");
        let body = call_msg(&id, tool, args, Some(&token)).to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let resp = req.send_string(&body).expect("an event stream");
            assert_eq!(resp.content_type(), "text/event-stream");
            let mut data = Vec::new();
            for line in BufReader::new(resp.into_reader()).lines() {
                let Ok(line) = line else { break };
                if line.is_empty() {
                    if !data.is_empty() {
                        let v: Value = serde_json::from_str(&data.join("\n")).unwrap();
                        data.clear();
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                }
            }
        });
        Events { rx }
    }

    /// Opens a socket of its own and writes a POST's head: the session's
    /// headers and `framing` (Content-Length, Transfer-Encoding, Expect).
    fn raw_head(&self, framing: &str) -> TcpStream {
        self.raw_request(
            "POST",
            &format!("Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{framing}"),
        )
    }

    /// Opens a socket of its own and writes a request's head: `method`,
    /// the session's headers and `headers` (each ending in CRLF).
    fn raw_request(&self, method: &str, headers: &str) -> TcpStream {
        let rest = self.url.trim_start_matches("http://");
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut c = TcpStream::connect(host).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nMcp-Session-Id: {}\r\nMCP-Protocol-Version: {PROTOCOL}\r\n{headers}\r\n",
            self.token,
            self.id.as_deref().unwrap_or_default(),
        )
        .unwrap();
        c
    }

    /// Sends a call over a socket of its own and returns the socket
    /// unread: dropping it is the client going away.
    fn raw_call(&self, msg: &Value) -> TcpStream {
        let body = msg.to_string();
        let mut c = self.raw_head(&format!("Content-Length: {}\r\n", body.len()));
        c.write_all(body.as_bytes()).unwrap();
        c.flush().unwrap();
        c
    }

    /// POSTs `body` (if any) after the head with `framing`, as a client
    /// that keeps writing when the server answers early (it may then
    /// close: write errors are ignored), and reads the answer: status and
    /// body.
    fn raw_exchange(&self, framing: &str, body: Option<&[u8]>) -> (u16, String) {
        let mut c = self.raw_head(framing);
        if let Some(b) = body {
            let _ = c.write_all(b).and_then(|_| c.flush());
        }
        read_answer(&mut c)
    }

    /// POSTs a chunked body of `total` bytes in 1 MiB chunks, as a client
    /// that streams on whatever the server answers, while reading the
    /// answer on another thread: its status and body, and how many bytes
    /// were written before the gateway stopped taking them.
    fn raw_stream(&self, total: usize) -> (u16, String, usize) {
        let mut c = self.raw_head("Transfer-Encoding: chunked\r\n");
        let mut r = c.try_clone().unwrap();
        let reader = std::thread::spawn(move || read_answer(&mut r));
        let chunk = vec![b'x'; 1 << 20];
        let size = format!("{:x}\r\n", chunk.len());
        let mut sent = 0;
        while sent < total {
            let ok = c
                .write_all(size.as_bytes())
                .and_then(|_| c.write_all(&chunk))
                .and_then(|_| c.write_all(b"\r\n"));
            if ok.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = c.write_all(b"0\r\n\r\n");
        let (status, body) = reader.join().unwrap();
        (status, body, sent)
    }
}

/// Reads one HTTP answer from `c`: status and body.
fn read_answer(c: &mut TcpStream) -> (u16, String) {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match std::io::Read::read(c, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        // One answer with a length is all there is to read.
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|n| rest.len() >= n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    assert!(
        !head.contains("100 Continue"),
        "the body was never asked for: {head}"
    );
    (status, rest.to_string())
}

#[test]
fn http_silent_hold_names_the_request_and_the_identical_retry_runs_once_after_approval() {
    let e = start("hold_seconds = 3", |url| {
        server("warehouse", url, EXPORT_TOOL)
    });
    let s = e.session("warehouse", "agent:report-bot");
    let args = json!({"table": "customers", "destination": "s3://reports/q.csv"});
    // No progress token: after hold_seconds the call returns, saying what
    // to do.
    let a = s.call(json!(1), "export_table", &args);
    assert_eq!((a.status, a.is_error()), (200, true), "{}", a.body);
    let t = a.text();
    assert!(
        t.contains("for human review")
            && t.contains("Nothing ran yet")
            && t.contains("call the tool again with exactly the same arguments: it then runs once"),
        "{t}"
    );
    let first = request_id_in(&t);
    assert_eq!(e.state(&first), "pending");
    assert!(e.runs_of("export_table").is_empty(), "held: nothing ran");

    // Only an eligible human approves: not the agent, not its owner, not
    // someone outside the reviewing group (who does not even see it).
    let (st, v) = e.g.review("agent:report-bot", &first, "approve");
    assert_eq!(st, 403, "{v}");
    let (st, v) = e.g.review("user:alice", &first, "approve");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("self_review")),
        "{v}"
    );
    let (st, v) = e.g.review("user:erin", &first, "approve");
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    assert_eq!(e.state(&first), "pending");
    e.approve(&first);
    assert_eq!(e.state(&first), "approved");

    // The agent comes back in a new session. Changed arguments are another
    // request, held in turn, and do not run.
    let s = e.session("warehouse", "agent:report-bot");
    let changed = json!({"table": "orders", "destination": "s3://reports/q.csv"});
    let a = s.call(json!(1), "export_table", &changed);
    let t = a.text();
    assert!(a.is_error() && t.contains("for human review"), "{t}");
    let second = request_id_in(&t);
    assert_ne!(second, first, "not the approved request");
    assert!(e.runs_of("export_table").is_empty());
    assert_eq!(e.state(&first), "approved", "the approval is still unused");

    // The identical call runs at once, once.
    let a = s.call(json!(2), "export_table", &args);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.is_error(), "{}", a.body);
    assert_eq!(a.text(), "exported customers to s3://reports/q.csv");
    assert_eq!(
        e.runs_of("export_table"),
        vec![json!({"tool": "export_table", "args": args})]
    );
    e.wait_state(&first, "executed");
    // The approval is used up: the same call again is held anew.
    let a = s.call(json!(3), "export_table", &args);
    let third = request_id_in(&a.text());
    assert!(
        a.is_error() && third != first && third != second,
        "{}",
        a.body
    );
    assert_eq!(e.runs_of("export_table").len(), 1, "ran exactly once");
    assert_eq!(e.state(&second), "pending");
}

#[test]
fn http_cancelling_a_held_call_or_going_away_withdraws_it_and_nothing_runs() {
    let e = start(
        "hold_seconds = 10\nhold_with_progress_seconds = 30",
        |url| server("warehouse", url, EXPORT_TOOL),
    );
    let s = e.session("warehouse", "agent:report-bot");
    s.list();

    // notifications/cancelled for a call held with progress.
    let ev = s.call_streaming(
        json!("c1"),
        "export_table",
        &json!({"table": "customers", "destination": "s3://c/1.csv"}),
        json!("p1"),
    );
    let note = ev.next().unwrap();
    assert_eq!(note["method"], "notifications/progress", "{note}");
    assert_eq!(note["params"]["progressToken"], "p1");
    let held = request_id_in(note["params"]["message"].as_str().unwrap());
    // Another caller cannot cancel it, even naming the same session and id.
    s.as_other("agent:other-bot").cancel(json!("c1"));
    let note = ev.next().unwrap();
    assert_eq!(
        note["method"], "notifications/progress",
        "still held: {note}"
    );
    assert_eq!(e.state(&held), "pending");
    let a = s.cancel(json!("c1"));
    assert_eq!(a.status, 202, "{}", a.body);
    let rest = ev.rest();
    assert!(
        rest.iter().all(|m| m.get("id").is_none()),
        "no answer to a cancelled call: {rest:?}"
    );
    e.wait_state(&held, "withdrawn");

    // The client goes away during a silent hold: the HTTP request is dropped.
    let known = e.pending();
    assert!(known.is_empty(), "{known:?}");
    let conn = s.raw_call(&call_msg(
        &json!("d1"),
        "export_table",
        &json!({"table": "customers", "destination": "s3://c/2.csv"}),
        None,
    ));
    let silent = e.new_pending(&known);
    drop(conn);
    e.wait_state(&silent, "withdrawn");

    // ... and while held with progress: the event stream is dropped.
    let conn = s.raw_call(&call_msg(
        &json!("d2"),
        "export_table",
        &json!({"table": "customers", "destination": "s3://c/3.csv"}),
        Some(&json!("p2")),
    ));
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while !line.starts_with("data:") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
    }
    assert!(line.contains("notifications/progress"), "{line}");
    let streamed = request_id_in(&line);
    drop(r);
    e.wait_state(&streamed, "withdrawn");

    // A withdrawn request cannot be approved; nothing ran.
    for id in [&held, &silent, &streamed] {
        let (st, v) = e.g.review("user:bob", id, "approve");
        assert_eq!(st, 409, "{v}");
    }
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    // The session goes on, and the ids are free again.
    let a = s.call(json!("c1"), "read_table", &json!({"table": "orders"}));
    assert_eq!(a.text(), "10 rows of orders", "{}", a.body);
}

#[test]
fn http_a_duplicate_request_id_while_one_is_held_is_refused_and_nothing_runs_twice() {
    let e = start(
        "hold_seconds = 10\nhold_with_progress_seconds = 30",
        |url| server("warehouse", url, EXPORT_TOOL),
    );
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let args = json!({"table": "customers", "destination": "s3://d/1.csv"});
    let ev = s.call_streaming(json!(5), "export_table", &args, json!("p"));
    let note = ev.next().unwrap();
    let held = request_id_in(note["params"]["message"].as_str().unwrap());
    // Id 5 again in this session, whatever it asks: refused, not decided,
    // not forwarded.
    let seen = e.up.requests_seen();
    for (tool, a) in [
        ("export_table", &args),
        (
            "export_table",
            &json!({"table": "orders", "destination": "s3://d/2.csv"}),
        ),
        ("read_table", &json!({"table": "orders"})),
    ] {
        let a = s.call(json!(5), tool, a);
        assert_eq!(a.status, 200, "{}", a.body);
        let r = a.response();
        assert_eq!(
            (&r["id"], &r["error"]["code"]),
            (&json!(5), &json!(-32600)),
            "{r}"
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("still in progress"),
            "{r}"
        );
    }
    // Nor is another method with that id (a ping is relayed undecided).
    let r = s.send(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}));
    assert_eq!(
        (&r.response()["id"], &r.response()["error"]["code"]),
        (&json!(5), &json!(-32600)),
        "{}",
        r.body
    );
    // Nor the same id as a string: some servers (the official Python SDK's
    // HTTP transport) read 5 and "5" as one id.
    let r = s.send(&json!({"jsonrpc": "2.0", "id": "5", "method": "ping"}));
    assert_eq!(
        (&r.response()["id"], &r.response()["error"]["code"]),
        (&json!("5"), &json!(-32600)),
        "{}",
        r.body
    );
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    assert_eq!(e.pending(), vec![held.clone()], "nothing else was decided");

    // The same id in another session of the same agent is its own call:
    // the identical action waits on the same request.
    let s2 = e.session("warehouse", "agent:report-bot");
    let ev2 = s2.call_streaming(json!(5), "export_table", &args, json!("p"));
    let note = ev2.next().unwrap();
    assert_eq!(
        request_id_in(note["params"]["message"].as_str().unwrap()),
        held
    );
    e.approve(&held);
    let finals: Vec<Value> = [ev, ev2]
        .iter()
        .map(|ev| {
            ev.rest()
                .into_iter()
                .find(|m| m["id"] == 5)
                .expect("each call is answered")
        })
        .collect();
    let ran: Vec<&Value> = finals
        .iter()
        .filter(|r| r["result"]["isError"] != true)
        .collect();
    assert_eq!(ran.len(), 1, "one approval, one run: {finals:?}");
    assert_eq!(tool_text(ran[0]), "exported customers to s3://d/1.csv");
    let other = finals
        .iter()
        .find(|r| r["result"]["isError"] == true)
        .unwrap();
    assert!(tool_text(other).contains("did not run"), "{other}");
    assert_eq!(e.runs_of("export_table").len(), 1, "{:?}", e.runs());
    e.wait_state(&held, "executed");
    // Once answered, the id is free again.
    let a = s.call(json!(5), "read_table", &json!({"table": "orders"}));
    assert_eq!(a.text(), "10 rows of orders", "{}", a.body);
}

/// Calls sent at once in a fresh session, before the gateway has read the
/// server's tool list: each lists the tools for itself in the upstream
/// session, under an id of its own (the official SDK server matches answers
/// by id: one shared id lost answers and left calls unanswered for ever).
#[test]
fn http_concurrent_first_calls_in_a_session_are_each_answered() {
    let e = start("", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    let answers: Vec<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    s.call(
                        json!(80 + i),
                        "read_table",
                        &json!({"table": format!("t{i}")}),
                    )
                    .text()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &format!("10 rows of t{i}"), "{answers:?}");
    }
}

#[test]
fn http_an_upstream_crash_mid_call_is_a_clear_error_recorded_as_unknown_and_not_retried() {
    let mut e = start("hold_seconds = 3\nhold_with_progress_seconds = 30", |url| {
        format!(
            "{}{}",
            server("warehouse", url, ""),
            server(
                "reviewed",
                url,
                "[mcp.servers.tools.crash]\noperation = \"export\"\n"
            )
        )
    });
    // An allowed call; the server dies while answering it.
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let a = s.call(json!(1), "crash", &json!({"reason": "allowed"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let r = a.response();
    assert_eq!(r["id"], 1, "{r}");
    assert!(a.is_error(), "{}", a.body);
    assert!(
        a.text()
            .contains("the MCP server failed during this call; whether it took effect is unknown"),
        "{}",
        a.text()
    );
    e.up.wait_exited();
    assert_eq!(e.runs_of("crash").len(), 1);
    let entry = e.wait_log(|en| en["event"] == "action.result");
    assert_eq!(entry["payload"]["ok"], false, "{entry}");
    assert_eq!(entry["payload"]["summary"]["status"], "unknown", "{entry}");
    // With the server gone, the next call is a 502 naming it.
    let a = s.call(json!(2), "read_table", &json!({"table": "orders"}));
    assert_eq!(a.status, 502, "{}", a.body);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be reached"));

    // A held call, approved while the client waits; the server dies
    // running it.
    e.restart_upstream("");
    let s = e.session("reviewed", "agent:report-bot");
    s.list();
    let args = json!({"reason": "approved"});
    let ev = s.call_streaming(json!(3), "crash", &args, json!("p"));
    let note = ev.next().unwrap();
    let held = request_id_in(note["params"]["message"].as_str().unwrap());
    e.approve(&held);
    let rest = ev.rest();
    let r = rest.iter().find(|m| m["id"] == 3).expect("an answer");
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        tool_text(r).contains("whether it took effect is unknown"),
        "{r}"
    );
    e.up.wait_exited();
    assert_eq!(e.runs_of("crash").len(), 2);
    // It may or may not have taken effect: `unknown`, not `failed`.
    e.wait_state(&held, "unknown");
    let detail = e.wait_log(|en| {
        en["event"] == "action.result.detail" && en["subjects"]["request"] == held.as_str()
    });
    assert_eq!(
        detail["payload"]["summary"]["status"], "unknown",
        "{detail}"
    );
    // Nothing retries it: with the server back, the identical call is a new
    // request, held, and does not run.
    e.restart_upstream("");
    let s = e.session("reviewed", "agent:report-bot");
    let a = s.call(json!(4), "crash", &args);
    assert!(a.is_error(), "{}", a.body);
    assert_ne!(request_id_in(&a.text()), held);
    assert_eq!(e.runs_of("crash").len(), 2, "{:?}", e.runs());
}

#[test]
fn http_an_oversized_message_is_413_with_a_json_rpc_error_and_nothing_is_forwarded() {
    let e = start("max_message_bytes = 40000", |url| {
        server("warehouse", url, "")
    });
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let seen = e.up.requests_seen();
    let echo =
        |n: usize| call_msg(&json!(7), "echo", &json!({"text": "x".repeat(n)}), None).to_string();
    // Over mcp.max_message_bytes, whether or not it is also over the REST
    // API's body limit (64 KiB in these tests): refused by its length
    // before the body is read (a client that waits for `100 Continue` never
    // sends it), or, without a length, once the limit is read.
    let body = echo(50_000);
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cases: [(String, Option<&[u8]>); 4] = [
        (
            format!("Content-Length: {}\r\n", body.len()),
            Some(body.as_bytes()),
        ),
        (
            "Content-Length: 100000\r\nExpect: 100-continue\r\n".into(),
            None,
        ),
        (
            format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len()),
            None,
        ),
        (
            "Transfer-Encoding: chunked\r\n".into(),
            Some(chunked.as_bytes()),
        ),
    ];
    for (framing, sent) in cases {
        let (status, answer) = s.raw_exchange(&framing, sent);
        assert_eq!(status, 413, "{framing}: {answer}");
        let r: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            (&r["id"], &r["error"]["code"]),
            (&Value::Null, &json!(-32600)),
            "{r}"
        );
        let m = r["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("40000")
                && m.contains("mcp.max_message_bytes")
                && m.contains("nothing was forwarded"),
            "{m}"
        );
    }
    // Within it, arguments over mcp.max_argument_bytes (32 KiB) are refused
    // as a tool error.
    let a = s.post(echo(35_000).as_bytes());
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.is_error() && a.text().contains("max_argument_bytes"),
        "{}",
        a.text()
    );
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    // A message within both limits runs.
    let a = s.post(echo(30_000).as_bytes());
    assert_eq!(
        a.text().len(),
        30_000,
        "{}",
        &a.body[..200.min(a.body.len())]
    );
    assert_eq!(e.runs_of("echo").len(), 1);
}

#[test]
fn http_malformed_json_rpc_is_refused_with_its_code_and_nothing_is_forwarded() {
    let e = start("", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let seen = e.up.requests_seen();
    let cases: [(&[u8], i64, Value); 11] = [
        (b"{nope", -32700, Value::Null),
        (b"", -32700, Value::Null),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"\xff}", -32700, Value::Null),
        // A repeated key could make secondkey and the server read two
        // different calls out of one message.
        (
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#,
            -32700,
            Value::Null,
        ),
        (br#"{"id":3,"method":"tools/list"}"#, -32600, json!(3)),
        (br#"{"jsonrpc":"1.0","id":4,"method":"tools/list"}"#, -32600, json!(4)),
        (br#""tools/list""#, -32600, Value::Null),
        (br#"[{"jsonrpc":"2.0","id":5,"method":"tools/list"}]"#, -32600, Value::Null),
        (br#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"echo"}}"#, -32600, Value::Null),
        (br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":"echo"}"#, -32600, json!(6)),
        (br#"{"jsonrpc":"2.0","id":7,"result":{},"error":{"code":1}}"#, -32600, json!(7)),
    ];
    for (body, code, id) in cases {
        let a = s.post(body);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(a.status, 400, "{shown}: {}", a.body);
        let r = a.response();
        assert_eq!(
            (&r["error"]["code"], &r["id"]),
            (&json!(code), &id),
            "{shown}: {r}"
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
    }
    let a = s.post(br#"[{"jsonrpc":"2.0","id":5,"method":"tools/list"}]"#);
    assert!(a.body.contains("batches"), "says why: {}", a.body);
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    // The session still works.
    let a = s.call(json!(8), "echo", &json!({"text": "still here"}));
    assert_eq!(a.text(), "still here", "{}", a.body);
}

fn fingerprint_in(text: &str) -> String {
    text.split("--fingerprint ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in: {text}"))
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('`')
        .to_string()
}

fn pin_of(e: &Env, server: &str, tool: &str) -> Value {
    let (s, v) = e.g.call(
        "GET",
        &format!("/v1/mcp/pins?server={server}"),
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == tool)
        .cloned()
        .unwrap_or_else(|| panic!("no pin of {tool}: {v}"))
}

#[test]
fn http_a_changed_tool_definition_is_held_or_denied_until_a_tool_admin_accepts_it() {
    let mut e = start("hold_seconds = 3\nhold_with_progress_seconds = 30", |url| {
        format!(
            "{}{}",
            server("warehouse", url, ""),
            server("strict", url, "on_definition_change = \"deny\"")
        )
    });
    let echo = json!({"text": "hi"});
    for server in ["warehouse", "strict"] {
        let s = e.session(server, "agent:report-bot");
        s.list();
        assert_eq!(s.call(json!(1), "echo", &echo).text(), "hi");
    }
    let pinned = pin_of(&e, "warehouse", "echo")["fingerprint"].clone();
    // The server now describes `echo` differently (a "rug pull").
    e.restart_upstream("changed");
    let strict = e.session("strict", "agent:report-bot");
    strict.list();
    let a = strict.call(json!(2), "echo", &echo);
    let t = a.text();
    assert!(
        a.is_error()
            && t.contains("refused")
            && t.contains("changed since it was pinned")
            && t.contains("Nothing ran"),
        "on_change = deny refuses at once: {t}"
    );
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let a = s.call(json!(2), "echo", &echo);
    let t = a.text();
    assert!(
        a.is_error() && t.contains("holding calls of tool") && t.contains("Retry after that"),
        "on_change = hold holds, then says so: {t}"
    );
    assert_eq!(e.runs_of("echo").len(), 2, "the changed tool did not run");
    let fp = fingerprint_in(&t);
    assert_ne!(json!(fp), pinned);
    assert_eq!(pin_of(&e, "warehouse", "echo")["fingerprint"], pinned);

    // A call held with progress waits for the acceptance.
    let ev = s.call_streaming(json!(3), "echo", &echo, json!("p"));
    let note = ev.next().unwrap();
    assert!(
        note["params"]["message"]
            .as_str()
            .unwrap()
            .contains("accept the changed definition"),
        "{note}"
    );
    let accept = |who: &str, fp: &str| {
        e.g.call(
            "POST",
            "/v1/mcp/pins/accept",
            Some(who),
            Some(&json!({"server": "warehouse", "tool": "echo", "fingerprint": fp})),
        )
    };
    let (st, v) = accept("agent:report-bot", &fp);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("not_tool_admin")),
        "{v}"
    );
    let (st, v) = accept("user:erin", &fp);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("not_tool_admin")),
        "{v}"
    );
    let (st, v) = accept("user:bob", pinned.as_str().unwrap());
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("no_such_change")),
        "{v}"
    );
    assert_eq!(e.runs_of("echo").len(), 2, "not accepted yet: nothing ran");
    let (st, v) = accept("user:bob", &fp);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["fingerprint"], &v["accepted_by"]),
        (&json!(fp), &json!("user:bob"))
    );
    let r = ev
        .rest()
        .into_iter()
        .find(|m| m["id"] == 3)
        .expect("an answer");
    assert_eq!(tool_text(&r), "hi", "accepted: the held call runs: {r}");
    assert_eq!(e.runs_of("echo").len(), 3);
    assert_eq!(s.call(json!(4), "echo", &echo).text(), "hi");
    // The acceptance is per server: the other one still refuses.
    let a = strict.call(json!(5), "echo", &echo);
    assert!(
        a.is_error() && a.text().contains("changed since it was pinned"),
        "{}",
        a.text()
    );
    assert_eq!(e.runs_of("echo").len(), 4);
    let log = e.log();
    for ev in ["mcp.tool.changed", "mcp.tool.accepted"] {
        assert!(log.iter().any(|en| en["event"] == ev), "{ev} is logged");
    }
}

#[test]
fn http_a_hostile_upstream_flood_is_cut_to_a_rate_and_garbage_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(
        tmp.path(),
        "hostile_server.py",
        &[("MCP_FLOOD", "30000")],
        None,
    );
    let servers = server("hostile", &up.url, "");
    // Upstream answers may be 4 × max_message_bytes = 160000 bytes.
    let e = start_with("max_message_bytes = 40000", up, tmp, &servers);
    let s = e.session("hostile", "agent:report-bot");
    s.list();
    // A flood inside a call's answer: relayed as an event stream (no
    // progress token) and through secondkey's own stream (a progress
    // token), and on the session's GET stream.
    for progress in [None, Some(json!("p"))] {
        let t0 = Instant::now();
        let a = s.send(&call_msg(&json!(2), "flood", &json!({}), progress.as_ref()));
        let relayed = a.notifications("notifications/message");
        assert_eq!(a.text(), "flood done", "the answer still comes");
        assert!(
            (2000..=flood_bound(t0.elapsed())).contains(&relayed),
            "a flood of 30000 is cut to 2000 a second: {relayed} relayed in {:?}",
            t0.elapsed()
        );
    }
    let t0 = Instant::now();
    let a = s.get();
    assert_eq!(a.status, 200, "{}", &a.body[..200.min(a.body.len())]);
    let relayed = a.notifications("notifications/message");
    assert!(
        (2000..=flood_bound(t0.elapsed())).contains(&relayed),
        "the GET stream too: {relayed} relayed in {:?}",
        t0.elapsed()
    );
    // An unreadable event and one of 200000 bytes are dropped;
    // the answer comes (an unreadable event reaching the client would fail
    // the parse in `messages_in`).
    let a = s.call(json!(3), "garbage", &json!({}));
    assert_eq!(a.text(), "garbage done");
    assert_eq!(a.messages.len(), 1, "{:?}", a.messages);
    // A JSON answer cut off by the server exiting.
    let a = s.call(json!(4), "crash", &json!({}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.is_error() && a.text().contains("whether it took effect is unknown"),
        "{}",
        a.body
    );
}

/// The most notifications one stream may relay in `elapsed`: 2000 per
/// one-second window, and a window starts at the first notification after
/// the last one ended.
fn flood_bound(elapsed: Duration) -> usize {
    2000 * (elapsed.as_secs() as usize + 2)
}

impl Session {
    fn delete(&self) -> Answer {
        Self::answer(self.request("DELETE").call())
    }
}

/// Issue 13: a session is bound to the principal that opened it. Another
/// principal naming its id (in a call, a notification, the GET stream or a
/// DELETE) is answered as for an unknown session, nothing reaches the
/// upstream, and each attempt is recorded.
#[test]
fn http_a_session_is_bound_to_its_principal_and_another_cannot_use_it() {
    let e = start("", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let thief = s.as_other("agent:other-bot");
    let seen = e.up.requests_seen();
    let unknown = |a: &Answer| {
        assert_eq!(a.status, 404, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown MCP session"),
            "{v}"
        );
    };
    unknown(&thief.call(json!(1), "echo", &json!({"text": "stolen"})));
    unknown(&thief.send(&json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"})));
    unknown(&thief.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})));
    unknown(&thief.get());
    unknown(&thief.delete());
    // A session id nobody opened is unknown too, whoever asks.
    let mut forged = s.as_other("agent:report-bot");
    forged.id = Some("0123456789abcdef".into());
    unknown(&forged.call(json!(2), "echo", &json!({"text": "forged"})));
    assert_eq!(e.up.requests_seen(), seen, "nothing reached the upstream");
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    let refused: Vec<Value> = e
        .log()
        .into_iter()
        .filter(|en| en["event"] == "mcp.refused")
        .collect();
    let codes: Vec<(&str, &str)> = refused
        .iter()
        .map(|en| {
            (
                en["actor"].as_str().unwrap(),
                en["payload"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("agent:other-bot", "foreign_session"),
            ("agent:other-bot", "foreign_session"),
            ("agent:other-bot", "foreign_session"),
            ("agent:other-bot", "foreign_session"),
            ("agent:other-bot", "foreign_session"),
            ("agent:report-bot", "unknown_session"),
        ],
        "{refused:?}"
    );
    // A second Mcp-Session-Id (an upstream reading the last one would
    // join that session) or one that is not visible ASCII: 400, nothing
    // forwarded. So is a routing header naming another call than the
    // message (SEP-2243 `Mcp-Method`, `Mcp-Name`).
    let call = call_msg(&json!(9), "echo", &json!({"text": "steered"}), None).to_string();
    let len = format!("Content-Length: {}\r\n", call.len());
    for extra in [
        "Mcp-Session-Id: 0123456789abcdef\r\n",
        "Mcp-Name: delete_customer\r\n",
        "Mcp-Method: tools/list\r\n",
        "Mcp-Name: echo\r\nMcp-Name: delete_customer\r\n",
    ] {
        let (status, answer) = s.raw_exchange(&format!("{len}{extra}"), Some(call.as_bytes()));
        assert_eq!(status, 400, "{extra:?}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["code"], -32600, "{extra:?}: {v}");
    }
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    // The owner's session is untouched.
    assert_eq!(
        s.call(json!(3), "echo", &json!({"text": "mine"})).text(),
        "mine"
    );
    let a = s.delete();
    assert!(a.status < 300, "{}", a.body);
    unknown(&s.call(json!(4), "echo", &json!({"text": "ended"})));
}

/// Issue 24 (finding 2) and issue 13: a `tools/call` without an id is
/// refused and never forwarded (a lenient server would run it), and one
/// whose `params.name` is not a string is invalid params (-32602).
#[test]
fn http_a_call_without_an_id_or_with_a_non_string_name_never_reaches_the_upstream() {
    let e = start("", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let seen = e.up.requests_seen();
    let a = s.send(&json!({"jsonrpc": "2.0", "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "sneaky"}}}));
    assert_eq!(a.status, 400, "{}", a.body);
    let r = a.response();
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
        (json!({"n": "echo"}), "must be a string, not an object"),
    ] {
        let a = s.send(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                               "params": {"name": name, "arguments": {"text": "x"}}}));
        assert_eq!(a.status, 200, "{}", a.body);
        let r = a.response();
        assert_eq!(
            (&r["id"], &r["error"]["code"]),
            (&json!(9), &json!(-32602)),
            "{r}"
        );
        assert!(
            r["error"]["message"].as_str().unwrap().contains(says),
            "{r}"
        );
    }
    assert_eq!(e.up.requests_seen(), seen, "nothing reached the upstream");
    assert!(e.runs().is_empty(), "{:?}", e.runs());
    let refused = e.wait_log(|en| en["event"] == "mcp.refused");
    assert_eq!(
        (
            &refused["actor"],
            &refused["payload"]["method"],
            &refused["payload"]["code"]
        ),
        (
            &json!("agent:report-bot"),
            &json!("tools/call"),
            &json!("request_without_id")
        ),
        "{refused}"
    );
}

/// Issue 24 ("Also"): `resources/read`, `prompts/get` and methods the
/// gateway does not know are actions decided by policy before the
/// upstream sees them; unknown methods are refused by default.
#[test]
fn http_resources_prompts_and_unknown_methods_are_decided_before_the_upstream_sees_them() {
    let policies = format!(
        "{MCP_POLICIES}\n@id(\"no-secrets\") forbid(principal, action, resource == Resource::\"mcp://warehouse/resources/file%3A%2F%2F%2Fsecret.txt\");\n"
    );
    let e = start_policed(&policies, "");
    let s = e.session("warehouse", "agent:report-bot");
    let send = |id: i64, method: &str, params: Value| {
        s.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
    };
    let a = send(1, "resources/read", json!({"uri": "file:///notes.txt"}));
    assert_eq!(
        a.response()["result"]["contents"][0]["text"],
        "the notes",
        "{}",
        a.body
    );
    let seen = e.up.requests_seen();
    for (id, method, params, says) in [
        (
            2,
            "resources/read",
            json!({"uri": "file:///secret.txt"}),
            "no-secrets",
        ),
        (
            3,
            "files/delete",
            json!({"path": "/"}),
            "mcp://warehouse/methods/files%2Fdelete",
        ),
    ] {
        let a = send(id, method, params);
        assert_eq!(a.status, 200, "{}", a.body);
        let r = a.response();
        assert_eq!(
            (&r["id"], &r["error"]["code"]),
            (&json!(id), &json!(-32001)),
            "{r}"
        );
        let m = r["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(says) && m.contains("Nothing was forwarded"),
            "{m}"
        );
    }
    assert_eq!(
        e.up.requests_seen(),
        seen,
        "the denied ones were not forwarded"
    );
    let a = send(
        4,
        "prompts/get",
        json!({"name": "summarize", "arguments": {"topic": "q3"}}),
    );
    let text = a.response()["result"]["messages"][0]["content"]["text"].clone();
    assert!(
        text.as_str().unwrap_or_default().contains("Summarize q3"),
        "{}",
        a.body
    );
    assert_eq!(
        e.runs(),
        vec![
            json!({"tool": "resource", "args": {"uri": "file:///notes.txt"}}),
            json!({"tool": "prompt", "args": {"topic": "q3"}}),
        ]
    );
    let log = e.log();
    // Every decision carries the client's address, as the gateway observed it.
    for en in log
        .iter()
        .filter(|en| en["event"] == "action.allowed" || en["event"] == "action.denied")
    {
        assert_eq!(en["payload"]["facts"]["source_ip"], "127.0.0.1", "{en}");
        assert_eq!(en["payload"]["transport"], "mcp", "{en}");
    }
    let decided: Vec<(String, String)> = log
        .iter()
        .filter(|en| en["event"] == "action.allowed" || en["event"] == "action.denied")
        .map(|en| {
            (
                en["event"].as_str().unwrap().to_string(),
                en["payload"]["action"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            (
                "action.allowed",
                "mcp://warehouse/resources/file%3A%2F%2F%2Fnotes.txt"
            ),
            (
                "action.denied",
                "mcp://warehouse/resources/file%3A%2F%2F%2Fsecret.txt"
            ),
            ("action.denied", "mcp://warehouse/methods/files%2Fdelete"),
            ("action.allowed", "mcp://warehouse/prompts/summarize"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{log:?}"
    );
}

/// A call (id 1) of `ask_client` for the client's roots, streamed: the
/// server's `roots/list` as relayed to the client, and the call's events.
fn roots_asked(s: &Session) -> (Value, Events) {
    let ev = s.call_streaming(
        json!(1),
        "ask_client",
        &json!({"what": "roots"}),
        json!("p1"),
    );
    let asked = ev.next().unwrap();
    assert_eq!(asked["method"], "roots/list", "{asked}");
    (asked, ev)
}

/// The id of the allow of the server's `roots/list` to the client.
fn roots_decision(e: &Env) -> Value {
    e.log()
        .into_iter()
        .find(|en| {
            en["event"] == "action.allowed"
                && en["payload"]["action"]["resource"] == "mcp://warehouse/client/roots%2Flist"
        })
        .expect("the server's request was decided")["subjects"]["action"]
        .clone()
}

/// Issue 24 ("Also"): the server's requests to the client (here roots and
/// sampling, asked for in the middle of a tool call) are decided for the
/// client's principal before the client sees them.
#[test]
fn http_the_servers_requests_to_the_client_are_decided_before_the_client_sees_them() {
    let policies = format!(
        "{MCP_POLICIES}\n@id(\"no-sampling\") forbid(principal, action == Action::\"mcp.sample\", resource);\n"
    );
    let e = start_policed(&policies, "");
    let s = e.session("warehouse", "agent:report-bot");
    // Allowed: the roots request reaches the client, which answers it.
    let (asked, ev) = roots_asked(&s);
    // Meanwhile the call (id 1) is in progress upstream: no other request
    // of the session may use its id (the upstream could answer either, or
    // leave the call waiting for ever); refused, never forwarded.
    let seen = e.up.requests_seen();
    for msg in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        call_msg(&json!(1), "read_table", &json!({"table": "orders"}), None),
    ] {
        let a = s.send(&msg);
        assert_eq!(
            (&a.response()["id"], &a.response()["error"]["code"]),
            (&json!(1), &json!(-32600)),
            "{}",
            a.body
        );
    }
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    let a = s.send(&json!({"jsonrpc": "2.0", "id": asked["id"],
                           "result": {"roots": [{"uri": "file:///work", "name": "work"}]}}));
    assert_eq!(a.status, 202, "{}", a.body);
    let rest = ev.rest();
    let r = rest.iter().find(|m| m["id"] == 1).expect("an answer");
    assert_eq!(tool_text(r), "roots: 1", "{r}");
    // Answered, the id is free again.
    let a = s.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
    assert_eq!(a.response()["result"], json!({}), "{}", a.body);
    // Denied: the sampling request never reaches the client; the server
    // is answered with the refusal, which ends the call.
    let ev = s.call_streaming(
        json!(2),
        "ask_client",
        &json!({"what": "sample"}),
        json!("p2"),
    );
    let rest = ev.rest();
    assert!(
        rest.iter().all(|m| m["method"] != "sampling/createMessage"),
        "{rest:?}"
    );
    let r = rest.iter().find(|m| m["id"] == 2).expect("an answer");
    assert!(
        r.to_string().contains("no-sampling") && r.to_string().contains("Nothing was forwarded"),
        "the server got the refusal: {r}"
    );
    let log = e.log();
    let decided: Vec<(String, String)> = log
        .iter()
        .filter(|en| en["event"] == "action.allowed" || en["event"] == "action.denied")
        .filter(|en| en.to_string().contains("/client/"))
        .map(|en| {
            (
                en["event"].as_str().unwrap().to_string(),
                en["payload"]["action"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("action.allowed", "mcp://warehouse/client/roots%2Flist"),
            (
                "action.denied",
                "mcp://warehouse/client/sampling%2FcreateMessage"
            ),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{log:?}"
    );
}

/// A server request relayed to the client that the client never answers
/// gets its one result entry, unknown, once its session ends: no answer
/// can reach it through the gateway after that.
#[test]
fn http_a_server_request_its_client_never_answered_is_recorded_unknown_when_its_session_ends() {
    let e = start_policed(MCP_POLICIES, "");
    let s = e.session("warehouse", "agent:report-bot");
    let (_asked, _events) = roots_asked(&s);
    let action = roots_decision(&e);
    let result = || {
        e.log()
            .into_iter()
            .filter(|en| en["event"] == "action.result" && en["subjects"]["action"] == action)
            .collect::<Vec<_>>()
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(result().is_empty(), "not settled while the session lasts");
    // The client ends its session without answering.
    assert_eq!(s.delete().status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while result().is_empty() {
        assert!(Instant::now() < deadline, "no result entry: {:?}", e.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let results = result();
    assert_eq!(results.len(), 1, "one result: {results:?}");
    assert_unknown(
        &results[0],
        "the session ended before the client answered the server's request",
    );
}

/// The same when the session idles out: the client asked for progress,
/// so the call is answered with an event stream, which relays the server's
/// `roots/list`; the client then goes away without answering or ending the
/// session. Once the call has ended and the session has been unused for
/// `session_idle_seconds`, it idles out: the call and the server's request
/// each have one result entry, unknown.
#[test]
fn http_a_server_request_its_client_never_answered_is_recorded_unknown_when_its_session_idles_out()
{
    let e = start_policed(MCP_POLICIES, "session_idle_seconds = 1\n");
    let s = e.session("warehouse", "agent:report-bot");
    let call = call_msg(
        &json!(1),
        "ask_client",
        &json!({"what": "roots"}),
        Some(&json!("p1")),
    );
    let mut conn = s.raw_call(&call);
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("roots/list") {
        let n = std::io::Read::read(&mut conn, &mut buf).expect("the relayed request");
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(conn);
    let results = settled_results(&e, 2);
    let roots = roots_decision(&e);
    let (asked, call): (Vec<&Value>, Vec<&Value>) = results
        .iter()
        .partition(|en| en["subjects"]["action"] == roots);
    assert_eq!((asked.len(), call.len()), (1, 1), "{results:?}");
    assert_unknown(
        asked[0],
        "the session idled out (unused for mcp.session_idle_seconds) before the client answered the server's request",
    );
    // The upstream answers the call with an event stream, which ends as
    // its client did.
    assert_eq!(
        call[0]["payload"]["summary"]["status"], "unknown",
        "{}",
        call[0]
    );
    assert_eq!(s.list_status(), 404, "the session was ended");
}

// Issue 24: bounded memory. Each test below checks the gateway process's
// peak resident memory (VmHWM in /proc/<pid>/status, over the whole test)
// against the bound docs/mcp.md states: 200 MB.

const GATEWAY_RSS_BOUND: u64 = 200 * MB;

impl Env {
    fn gateway_pid(&self) -> u32 {
        self.g.child.as_ref().expect("the gateway runs").id()
    }
}

/// The gateway in front of `hostile_server.py` (as server `hostile`) with
/// `[mcp]` keys `keys` and the server's environment `env`.
fn hostile(keys: &str, env: &[(&str, &str)]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(tmp.path(), "hostile_server.py", env, None);
    let servers = server("hostile", &up.url, "");
    start_with(keys, up, tmp, &servers)
}

/// A client streaming a 400 MiB message at the default limit (4 MiB) gets
/// 413 once the limit is read; nothing is forwarded, memory stays bounded
/// and other sessions go on.
#[test]
fn http_a_400_mib_message_is_refused_at_the_default_limit_and_memory_stays_bounded() {
    let e = start("", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let seen = e.up.requests_seen();
    let (status, body, sent) = s.raw_stream(400 << 20);
    eprintln!("{} MiB written before the gateway answered", sent >> 20);
    assert_eq!(status, 413, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["error"]["code"], -32600, "{r}");
    let m = r["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("4194304") && m.contains("mcp.max_message_bytes"),
        "{m}"
    );
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    let other = e.session("warehouse", "agent:report-bot");
    let a = other.call(json!(1), "echo", &json!({"text": "still serving"}));
    assert_eq!(a.text(), "still serving", "{}", a.body);
    assert_eq!(
        s.call(json!(2), "echo", &json!({"text": "same session"}))
            .text(),
        "same session"
    );
    assert_peak_rss_under(e.gateway_pid(), GATEWAY_RSS_BOUND, "gateway");
}

/// An upstream answering a call with 64 MiB where 1 MiB is the limit: the
/// gateway stops reading at the limit, the client gets a tool error that
/// names it, and the session goes on.
#[test]
fn http_an_upstream_answer_over_max_result_bytes_is_a_tool_error_and_memory_stays_bounded() {
    let e = hostile("max_result_bytes = 1048576", &[("MCP_HUGE", "67108864")]);
    let s = e.session("hostile", "agent:report-bot");
    s.list();
    let a = s.call(json!(2), "huge", &json!({}));
    assert_eq!(a.status, 200, "{}", &a.body[..200.min(a.body.len())]);
    assert!(
        a.is_error()
            && a.text().contains("1048576")
            && a.text().contains("mcp.max_result_bytes")
            && a.text().contains("whether it took effect is unknown"),
        "{}",
        a.text()
    );
    assert_eq!(
        s.call(json!(3), "garbage", &json!({})).text(),
        "garbage done"
    );
    let other = e.session("hostile", "agent:report-bot");
    assert_eq!(
        other.call(json!(1), "garbage", &json!({})).text(),
        "garbage done"
    );
    assert_peak_rss_under(e.gateway_pid(), GATEWAY_RSS_BOUND, "gateway");
}

/// An upstream event stream whose one event never ends (300 MiB without a
/// line end, then the connection closes): nothing of it is kept past the
/// limit, the call ends with a tool error naming the limit, and the
/// session goes on.
#[test]
fn http_an_upstream_event_without_end_is_dropped_and_memory_stays_bounded() {
    let e = hostile("max_result_bytes = 1048576", &[]);
    let s = e.session("hostile", "agent:report-bot");
    s.list();
    let a = s.call(json!(2), "endless", &json!({}));
    assert_eq!(a.status, 200, "{}", &a.body[..200.min(a.body.len())]);
    assert!(
        a.is_error()
            && a.text()
                .contains("larger than 1048576 bytes (mcp.max_result_bytes)"),
        "{}",
        a.text()
    );
    assert_eq!(a.messages.len(), 1, "only the error: {:?}", a.messages);
    assert_eq!(
        s.call(json!(3), "garbage", &json!({})).text(),
        "garbage done"
    );
    assert_peak_rss_under(e.gateway_pid(), GATEWAY_RSS_BOUND, "gateway");
}

/// An upstream answer that is not one strict JSON-RPC answer to the call —
/// a key twice (`isError` false and true), not JSON, another id — never
/// reaches the client as it is: the call ends with a tool error saying
/// whether it took effect is unknown, as the log records it.
#[test]
fn http_an_unreadable_answer_is_not_relayed_and_is_recorded_unknown() {
    let e = hostile("", &[]);
    let s = e.session("hostile", "agent:report-bot");
    s.list();
    for (i, tool) in ["dupkey", "notjson", "otherid"].into_iter().enumerate() {
        let id = json!(10 + i);
        let a = s.call(id.clone(), tool, &json!({}));
        assert_eq!(a.status, 200, "{tool}: {}", a.body);
        assert_eq!(a.response()["id"], id, "{tool}: {}", a.body);
        assert!(
            a.is_error() && a.text().contains("whether it took effect is unknown"),
            "{tool}: {}",
            a.body
        );
        assert!(
            !a.body.contains("not json") && !a.body.contains("\"other\""),
            "{tool}: {}",
            a.body
        );
    }
    // Each is recorded with an unknown outcome, saying why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = e.log();
        let unknown: Vec<&Value> = log
            .iter()
            .filter(|l| {
                let p = l["payload"].to_string();
                p.contains("without a readable result") && p.contains("unknown")
            })
            .collect();
        if unknown.len() >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            &log[log.len().saturating_sub(6)..]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Past `mcp.max_sessions`, an `initialize` is refused with 503 and a
/// JSON-RPC error naming the key, and never reaches the upstream; the
/// sessions open go on, and ending one makes room.
#[test]
fn http_sessions_past_mcp_max_sessions_are_refused_with_503_and_memory_stays_bounded() {
    let e = start("max_sessions = 40", |url| server("warehouse", url, ""));
    let open: Vec<Session> = (0..40)
        .map(|_| e.session("warehouse", "agent:report-bot"))
        .collect();
    let seen = e.up.requests_seen();
    let late = Session::unopened(&e.g, "warehouse", "agent:other-bot");
    let a = late.send(&initialize_msg());
    assert_eq!(a.status, 503, "{}", a.body);
    let r = a.response();
    assert_eq!(
        (&r["id"], &r["error"]["code"]),
        (&json!(0), &json!(-32005)),
        "{r}"
    );
    let m = r["error"]["message"].as_str().unwrap();
    assert!(m.contains("40") && m.contains("mcp.max_sessions"), "{m}");
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    for s in &open {
        s.list();
    }
    assert_eq!(open[0].delete().status, 200);
    let s = e.session("warehouse", "agent:other-bot");
    assert_eq!(
        s.call(json!(1), "echo", &json!({"text": "room made"}))
            .text(),
        "room made"
    );
    assert_peak_rss_under(e.gateway_pid(), GATEWAY_RSS_BOUND, "gateway");
}

/// A full gateway forgets a session idle for `mcp.session_idle_seconds` to
/// open a new one (its client then gets 404 and opens another).
#[test]
fn http_a_full_gateway_forgets_an_idle_session_to_open_a_new_one() {
    let e = start("max_sessions = 2\nsession_idle_seconds = 1", |url| {
        server("warehouse", url, "")
    });
    let idle = e.session("warehouse", "agent:report-bot");
    std::thread::sleep(Duration::from_millis(1200));
    let busy = e.session("warehouse", "agent:report-bot");
    let fresh = e.session("warehouse", "agent:report-bot");
    assert_eq!(idle.list_status(), 404, "the idle one was forgotten");
    assert_eq!(busy.list_status(), 200);
    assert_eq!(fresh.list_status(), 200);
}

fn initialize_msg() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": PROTOCOL, "capabilities": {"roots": {}, "sampling": {}},
    "clientInfo": {"name": "raw-http-test", "version": "1"}}})
}

impl Session {
    /// A session of `who` on `server` not opened yet.
    fn unopened(g: &Gateway, server: &str, who: &str) -> Session {
        Session {
            url: format!("{}/mcp/{server}", g.url),
            token: token_of(who),
            id: None,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    fn list_status(&self) -> u16 {
        self.send(&json!({"jsonrpc": "2.0", "id": "list", "method": "tools/list"}))
            .status
    }
}

/// Past `mcp.max_pending_requests`, a request of the session is answered
/// `429` with -32005 naming the key and never reaches the upstream; the
/// session can still cancel, and the slot comes back.
#[test]
fn http_requests_past_max_pending_requests_are_429_and_the_slot_comes_back() {
    let e = start("max_pending_requests = 1", |url| {
        server("warehouse", url, EXPORT_TOOL)
    });
    let s = e.session("warehouse", "agent:report-bot");
    s.list();
    let args = json!({"table": "orders", "destination": "s3://b"});
    let held = s.call_streaming(json!(2), "export_table", &args, json!("p"));
    let note = held.next().expect("a progress notification");
    assert_eq!(note["method"], "notifications/progress", "{note}");
    let seen = e.up.requests_seen();
    let a = s.call(json!(3), "echo", &json!({"text": "one too many"}));
    assert_eq!(a.status, 429, "{}", a.body);
    let r = a.response();
    assert_eq!(
        (&r["id"], &r["error"]["code"]),
        (&json!(3), &json!(-32005)),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(mcp.max_pending_requests)"),
        "{r}"
    );
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    assert_eq!(s.cancel(json!(2)).status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = s.call(json!(4), "echo", &json!({"text": "room again"}));
        if a.status == 200 {
            assert_eq!(a.text(), "room again");
            break;
        }
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(e.runs_of("export_table").is_empty());
}

/// One principal cannot take every session: past
/// `mcp.max_sessions_per_principal` its `initialize` is refused (503,
/// -32005, nothing forwarded) while another principal still opens one.
#[test]
fn http_sessions_past_max_sessions_per_principal_are_refused_and_others_still_open() {
    let e = start("max_sessions = 10\nmax_sessions_per_principal = 2", |url| {
        server("warehouse", url, "")
    });
    let _mine: Vec<Session> = (0..2)
        .map(|_| e.session("warehouse", "agent:report-bot"))
        .collect();
    let seen = e.up.requests_seen();
    let a = Session::unopened(&e.g, "warehouse", "agent:report-bot").send(&initialize_msg());
    assert_eq!(a.status, 503, "{}", a.body);
    let r = a.response();
    assert_eq!(r["error"]["code"], -32005, "{r}");
    let m = r["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("agent:report-bot") && m.contains("mcp.max_sessions_per_principal"),
        "{m}"
    );
    assert_eq!(e.up.requests_seen(), seen, "nothing was forwarded");
    let other = e.session("warehouse", "agent:other-bot");
    assert_eq!(
        other
            .call(json!(1), "echo", &json!({"text": "mine"}))
            .text(),
        "mine"
    );
}

/// A request of the server past its session's `mcp.max_pending_requests`
/// (the call it belongs to holds the one slot) is refused to the server
/// with -32005, never decided nor shown to the client; the session goes on.
#[test]
fn http_a_server_request_past_max_pending_requests_is_refused_to_the_server() {
    let e = start("max_pending_requests = 1", |url| {
        server("warehouse", url, "")
    });
    let s = e.session("warehouse", "agent:report-bot");
    let ev = s.call_streaming(
        json!(1),
        "ask_client",
        &json!({"what": "roots"}),
        json!("p"),
    );
    let rest = ev.rest();
    assert!(
        rest.iter().all(|m| m["method"] != "roots/list"),
        "the client never sees it: {rest:?}"
    );
    let r = rest.iter().find(|m| m["id"] == 1).expect("an answer");
    assert!(
        r.to_string().contains("(mcp.max_pending_requests)"),
        "the server got the refusal: {r}"
    );
    assert!(
        !e.log().iter().any(|en| en.to_string().contains("/client/")),
        "not even decided"
    );
    assert_eq!(
        s.call(json!(2), "echo", &json!({"text": "goes on"})).text(),
        "goes on"
    );
}

/// A session's event stream (GET) read as it comes; shut down when dropped.
struct Listen {
    events: Events,
    socket: TcpStream,
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Session {
    /// Opens the session's event stream: returns once the gateway answered
    /// its head (the upstream accepted it).
    fn listen(&self) -> Listen {
        let c = self.raw_request("GET", "Accept: text/event-stream\r\n");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "the event stream opens: {status}");
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Chunked framing: only `data:` lines matter here.
            let mut data = Vec::new();
            for line in r.lines() {
                let Ok(line) = line else { break };
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                } else if line.is_empty() && !data.is_empty() {
                    let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) else {
                        data.clear();
                        continue;
                    };
                    data.clear();
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Listen {
            events: Events { rx },
            socket: c,
        }
    }
}

impl Env {
    /// How many times the gateway itself listed the upstream's tools (its
    /// own listings carry `Mcp-Method: tools/list`; the raw test client
    /// sends no such header).
    fn own_lists(&self) -> usize {
        std::fs::read_to_string(&self.up.headers)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|h| h["mcp-method"] == "tools/list")
            .count()
    }
}

/// Issue 19 (with issue 13's guarantees): within one session whose event
/// stream the gateway relays, what the server listed is reused for later
/// calls instead of listing before each; the server saying its list
/// changed, the stream ending and the client listing itself each make the
/// gateway read the list again, and a changed tool is still held.
#[test]
fn http_a_session_reuses_its_tool_list_until_the_server_says_it_changed() {
    let e = start("hold_seconds = 1", |url| server("warehouse", url, ""));
    let s = e.session("warehouse", "agent:report-bot");
    let listen = s.listen();
    let echo = |id: i64, text: &str| s.call(json!(id), "echo", &json!({"text": text}));
    assert_eq!(echo(1, "a").text(), "a");
    assert_eq!(e.own_lists(), 1, "the first call reads the list");
    assert_eq!(echo(2, "b").text(), "b");
    let read = s.call(json!(3), "read_table", &json!({"table": "orders"}));
    assert_eq!(read.text(), "10 rows of orders");
    assert_eq!(
        e.own_lists(),
        1,
        "later calls of the session, of that tool or another it listed, do not list again"
    );

    // The server changes echo and says so (on the event stream, or on the
    // call's own stream).
    let m = s.call(json!(4), "mutate", &json!({}));
    assert_eq!(m.text(), "mutated");
    if m.notifications("notifications/tools/list_changed") == 0 {
        let note = listen.events.next().expect("the event stream is open");
        assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    }
    let a = echo(5, "c");
    assert!(
        a.is_error() && a.text().contains("changed since it was pinned"),
        "a call after the change is checked against the new list: {}",
        a.text()
    );
    assert_eq!(e.own_lists(), 2, "the call after list_changed listed again");
    assert_eq!(
        e.runs_of("echo").len(),
        2,
        "the changed tool did not run: {:?}",
        e.runs()
    );

    // The client lists: what it got is what later calls are decided on.
    s.list();
    let read = s.call(json!(6), "read_table", &json!({"table": "a"}));
    assert_eq!(read.text(), "10 rows of a");
    assert_eq!(e.own_lists(), 2, "the client's own listing is reused");

    // Without an event stream the gateway could miss a change: it lists
    // before every call.
    drop(listen);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = e.own_lists();
    let mut id = 10;
    loop {
        id += 1;
        let read = s.call(json!(id), "read_table", &json!({"table": "b"}));
        assert_eq!(read.text(), "10 rows of b");
        let now = e.own_lists();
        // The gateway notices the closed stream asynchronously: once it
        // has, every call lists.
        if now > n {
            n = now;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls never listed again after the stream closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for k in 1..=2 {
        let read = s.call(json!(100 + k), "read_table", &json!({"table": "c"}));
        assert_eq!(read.text(), "10 rows of c");
        assert_eq!(e.own_lists(), n + k as usize, "every call lists");
    }
}

/// A stateless upstream (no `Mcp-Session-Id`) gives the gateway no
/// session to tie a list to: every call lists first.
#[test]
fn http_a_stateless_upstream_is_listed_before_every_call() {
    require_python_mcp();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.jsonl");
    let up = upstream_with(
        tmp.path(),
        "test_server.py",
        &[
            ("MCP_TEST_RUNS", runs.to_str().unwrap()),
            ("MCP_TEST_UPSTREAM_TOKEN", "upstream-secret"),
            ("MCP_TEST_STATELESS", "1"),
        ],
        None,
    );
    let servers = server("warehouse", &up.url, "");
    let e = start_with("", up, tmp, &servers);
    let s = Session::unopened(&e.g, "warehouse", "agent:report-bot");
    let a = s.send(&initialize_msg());
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.session.is_none(), "a stateless server names no session");
    for k in 1..=3 {
        let a = s.call(json!(k), "echo", &json!({"text": "s"}));
        assert_eq!(a.text(), "s");
        assert_eq!(e.own_lists(), k as usize, "every call lists");
    }
}

/// `tasks/*` (protocol revision 2025-11-25) reach only the tasks the
/// upstream created for the caller's own decided calls in its session,
/// whether the call was answered as JSON, as the upstream's event stream
/// or through the gateway's own (progress). The upstream binds no task to
/// its creator (every principal reaches it with the gateway's one
/// credential): another principal naming the task id, or a malformed id,
/// is refused with -32602, never reaches it, and is recorded;
/// `tasks/list` (JSON or event stream) shows each only its own tasks and
/// keeps the upstream's cursor.
#[test]
fn http_tasks_reach_only_those_the_callers_own_decided_calls_created() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(
        tmp.path(),
        "task_server.py",
        &[("MCP_TASKS_PAGE", "2")],
        None,
    );
    let servers = server("tasks", &up.url, "");
    let e = start_with("", up, tmp, &servers);
    let a = e.session("tasks", "agent:report-bot");
    let b = e.session("tasks", "agent:other-bot");
    let a1 = task_created(&a, 1, "payroll", json!({}));
    let a2 = task_created(&a, 2, "salaries", json!({"test/sse": true}));
    let a3 = task_created(&a, 3, "bonuses", json!({"progressToken": "p3"}));
    let a4 = task_created(
        &a,
        4,
        "pensions",
        json!({"progressToken": "p4", "test/sse": true}),
    );
    let b1 = task_created(&b, 1, "weather", json!({}));

    // B names A's tasks: refused as for tasks that do not exist.
    let seen = e.up.requests_seen();
    for (i, t) in [&a1, &a2, &a3, &a4].into_iter().enumerate() {
        for (j, m) in ["tasks/get", "tasks/result", "tasks/cancel"]
            .into_iter()
            .enumerate()
        {
            let why = task_refused(&b, 10 + 3 * i as u64 + j as u64, m, json!({"taskId": t}));
            assert!(why.contains("unknown task"), "{why}");
        }
    }
    for (i, p) in [
        json!({}),
        json!({"taskId": 7}),
        json!({"taskId": ""}),
        json!({"taskId": [a1]}),
    ]
    .into_iter()
    .enumerate()
    {
        let why = task_refused(&b, 40 + i as u64, "tasks/result", p);
        assert!(why.contains("params.taskId"), "{why}");
    }
    assert_eq!(e.up.requests_seen(), seen, "nothing reached the upstream");
    let codes: Vec<(String, String)> = e
        .log()
        .into_iter()
        .filter(|en| en["event"] == "mcp.refused")
        .map(|en| {
            (
                en["actor"].as_str().unwrap().to_string(),
                en["payload"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let of = |code: &str| {
        codes
            .iter()
            .filter(|(who, c)| who == "agent:other-bot" && c == code)
            .count()
    };
    assert_eq!(
        (of("unknown_task"), of("invalid_task_id"), codes.len()),
        (12, 4, 16),
        "{codes:?}"
    );

    // Each reaches its own.
    assert_eq!(
        task_request(&a, 50, "tasks/get", &a1)["result"]["status"],
        "working"
    );
    assert_eq!(
        tool_text(&task_request(&a, 51, "tasks/result", &a2)),
        "report on salaries"
    );
    assert_eq!(
        task_request(&a, 52, "tasks/cancel", &a3)["result"]["status"],
        "cancelled"
    );
    assert_eq!(
        tool_text(&task_request(&a, 53, "tasks/result", &a4)),
        "report on pensions"
    );
    // Of the upstream's status notifications of every task, only B's own
    // reaches B.
    let r = b.send(
        &json!({"jsonrpc": "2.0", "id": 54, "method": "tasks/result",
                           "params": {"taskId": b1, "_meta": {"test/statuses": true}}}),
    );
    assert_eq!(tool_text(r.response()), "report on weather");
    let statuses: Vec<&Value> = r
        .messages
        .iter()
        .filter(|m| m["method"] == "notifications/tasks/status")
        .map(|m| &m["params"]["taskId"])
        .collect();
    assert_eq!(statuses, [&json!(b1)], "{}", r.body);

    // Listed in pages of 2 of the upstream's 5 tasks: each its own only.
    let mut mine = vec![a1.clone(), a2.clone(), a3.clone(), a4.clone()];
    mine.sort();
    assert_eq!(tasks_listed(&a, json!({})), (mine, 3));
    assert_eq!(tasks_listed(&b, json!({"test/sse": true})), (vec![b1], 3));

    // A task belongs to its session too: A's next session does not reach it.
    let again = e.session("tasks", "agent:report-bot");
    let why = task_refused(&again, 70, "tasks/result", json!({"taskId": a1}));
    assert!(why.contains("unknown task"), "{why}");
    assert_eq!(tasks_listed(&again, json!({})), (vec![], 3));
}

/// A decided call that runs as a task has its outcome recorded once, from
/// the task's result (JSON or event stream): not from the
/// `CreateTaskResult`, and not again on a second `tasks/result`.
#[test]
fn http_a_task_run_call_is_recorded_once_with_its_result() {
    let e = start_tasks("");
    let a = e.session("tasks", "agent:report-bot");
    let t1 = task_created(&a, 1, "payroll", json!({}));
    let t2 = task_created(&a, 2, "salaries", json!({"test/sse": true}));
    for round in 0..2 {
        assert_eq!(
            tool_text(&task_request(&a, 10 + round, "tasks/result", &t1)),
            "report on payroll"
        );
        let r = a.send(
            &json!({"jsonrpc": "2.0", "id": 20 + round, "method": "tasks/result",
                               "params": {"taskId": t2, "_meta": {"test/sse": true}}}),
        );
        assert_eq!(tool_text(r.response()), "report on salaries", "{}", r.body);
    }
    // A direct call after them: once its result is in, theirs are too.
    let r = a.send(&json!({"jsonrpc": "2.0", "id": 30, "method": "tools/call",
                           "params": {"name": "report", "arguments": {"topic": "direct"}}}));
    assert_eq!(tool_text(r.response()), "report on direct", "{}", r.body);
    let results = settled_results(&e, 3);
    let mut actions = std::collections::HashSet::new();
    for en in &results {
        assert!(actions.insert(en["subjects"]["action"].clone()), "{en}");
        assert_eq!(en["payload"]["ok"], true, "{en}");
        // The task's result (one content item), not the CreateTaskResult.
        assert_eq!(en["payload"]["summary"]["content_items"], 1, "{en}");
    }
}

/// A client that drops the connection of a task's first `tasks/result`
/// before the answer arrives does not stop the fetch: the call still gets
/// exactly one result entry — the task's result on the JSON path, unknown
/// for an event stream the client no longer reads — and a later fetch of
/// the same task is relayed and records nothing more.
#[test]
fn http_a_task_runs_first_fetch_is_recorded_when_its_client_goes_away() {
    let e = start_tasks("");
    let a = e.session("tasks", "agent:report-bot");
    let t1 = task_created(&a, 1, "payroll", json!({}));
    let t2 = task_created(&a, 2, "salaries", json!({}));
    // The upstream answers each first fetch 2 s after it arrives; the
    // client leaves as soon as it is there.
    for (id, t, meta) in [
        (10, &t1, json!({"test/delay": 2})),
        (11, &t2, json!({"test/delay": 2, "test/sse": true})),
    ] {
        let seen = e.up.requests_seen();
        let fetch = json!({"jsonrpc": "2.0", "id": id, "method": "tasks/result",
                           "params": {"taskId": t, "_meta": meta}});
        let conn = a.raw_call(&fetch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.up.requests_seen() == seen {
            assert!(
                Instant::now() < deadline,
                "the fetch never reached the upstream"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(conn);
    }
    let results = settled_results(&e, 2);
    let with_ok = |ok: bool| {
        results
            .iter()
            .find(|en| en["payload"]["ok"] == ok)
            .unwrap_or_else(|| panic!("{results:?}"))
    };
    // The JSON answer was read after the client left: the task's result.
    assert_eq!(with_ok(true)["payload"]["summary"]["content_items"], 1);
    // The event stream nobody read: unknown.
    let lost = &with_ok(false)["payload"]["summary"];
    assert_eq!(lost["status"], "unknown", "{lost}");
    assert!(
        lost["reason"].as_str().unwrap().contains("disconnected"),
        "{lost}"
    );
    // Fetched again: relayed, nothing more recorded.
    assert_eq!(
        tool_text(&task_request(&a, 20, "tasks/result", &t1)),
        "report on payroll"
    );
    assert_eq!(
        tool_text(&task_request(&a, 21, "tasks/result", &t2)),
        "report on salaries"
    );
    assert_eq!(settled_results(&e, 2), results);
}

/// A call run as a task whose result was never fetched gets one result
/// entry, unknown, when its session ends: ended by its client (DELETE) or
/// forgotten as idle (to make room for another, or by the idle sweep,
/// whichever comes first).
#[test]
fn http_a_task_run_never_fetched_is_recorded_unknown_when_its_session_ends() {
    let e = start_tasks("max_sessions = 1\nsession_idle_seconds = 1");
    let ended = e.session("tasks", "agent:report-bot");
    task_created(&ended, 1, "payroll", json!({}));
    assert_eq!(ended.delete().status, 200);
    let first = settled_results(&e, 1);
    let idle = e.session("tasks", "agent:report-bot");
    task_created(&idle, 1, "salaries", json!({}));
    std::thread::sleep(Duration::from_millis(1200));
    let _next = e.session("tasks", "agent:report-bot");
    assert_eq!(idle.list_status(), 404, "the idle one was forgotten");
    let results = settled_results(&e, 2);
    assert_eq!(results[0], first[0]);
    let mut actions = std::collections::HashSet::new();
    for (en, reason) in results.iter().zip([ENDED, IDLE]) {
        assert!(actions.insert(en["subjects"]["action"].clone()), "{en}");
        assert_unknown(en, reason);
    }
}

const ENDED: &str = "the session ended before the task's result was fetched through secondkey";
const IDLE: &str = "the session idled out (unused for mcp.session_idle_seconds) before the task's result was fetched through secondkey";

/// `en` is a result entry recording the call's outcome as unknown because
/// `reason`.
fn assert_unknown(en: &Value, reason: &str) {
    assert_eq!(en["payload"]["ok"], false, "{en}");
    let summary = &en["payload"]["summary"];
    assert_eq!(summary["status"], "unknown", "{en}");
    assert_eq!(summary["reason"], reason, "{en}");
}

/// A client that goes away without ending its session (it crashed) has
/// the session ended once it has been unused for
/// `mcp.session_idle_seconds`, as a DELETE would end it: its call run as
/// a task and never fetched gets its one result entry, unknown. A session
/// whose request is still in progress past the limit is in use, not idle.
#[test]
fn http_a_session_its_client_left_idles_out_and_its_unfetched_runs_are_recorded_unknown() {
    let e = start_tasks("session_idle_seconds = 3");
    let left = e.session("tasks", "agent:report-bot");
    task_created(&left, 1, "payroll", json!({}));
    let busy = e.session("tasks", "agent:report-bot");
    let t = task_created(&busy, 1, "salaries", json!({}));
    // One request of 5 s: longer than the limit and a sweep's interval
    // after it.
    let r = busy.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/get",
                              "params": {"taskId": t, "_meta": {"test/delay": 5}}}));
    assert_eq!(r.response()["result"]["status"], "working", "{}", r.body);
    assert_eq!(busy.list_status(), 200, "in use, not idle");
    let results = settled_results(&e, 1);
    assert_unknown(&results[0], IDLE);
    assert_eq!(left.list_status(), 404, "the session left was ended");
    // Upstream too, as the client's DELETE would have: only that one,
    // with the protocol version its client used.
    let deleted = e.up.headers.with_extension("jsonl.deleted");
    let left_id = left.id.clone().expect("a session");
    let busy_id = busy.id.clone().expect("a session");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = std::fs::read_to_string(&deleted).unwrap_or_default();
        let ended: Vec<(&str, &str)> = d.lines().filter_map(|l| l.split_once(' ')).collect();
        if ended.iter().any(|(sid, _)| *sid == left_id) {
            assert_eq!(ended, [(left_id.as_str(), PROTOCOL)], "{d}");
            assert!(
                !ended.iter().any(|(sid, _)| *sid == busy_id),
                "the session in use was not ended: {d}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream got no DELETE: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The session in use fetches its task's result, recorded once.
    assert_eq!(
        tool_text(&task_request(&busy, 3, "tasks/result", &t)),
        "report on salaries"
    );
    let results = settled_results(&e, 2);
    assert_eq!(results[1]["payload"]["ok"], true, "{}", results[1]);
}

/// A session ended while its call that creates a task is in progress:
/// the client gets the task, but nobody can fetch its result through the
/// gateway any more, so the call's one result entry is unknown (not the
/// task's creation).
#[test]
fn http_a_task_created_after_its_session_ended_is_recorded_unknown() {
    let e = start_tasks("");
    let a = e.session("tasks", "agent:report-bot");
    let seen = e.up.requests_seen();
    std::thread::scope(|sc| {
        let call = sc.spawn(|| {
            a.send(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "report", "arguments": {"topic": "payroll"}, "task": {"ttl": 60000},
                "_meta": {"test/delay": 2}}}),
            )
        });
        // The gateway's own listing, then the call, reached the upstream.
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.up.requests_seen() < seen + 2 {
            assert!(
                Instant::now() < deadline,
                "the call never reached the upstream"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(a.delete().status, 200);
        let r = call.join().unwrap();
        assert!(
            r.response()["result"]["task"]["taskId"].is_string(),
            "{}",
            r.body
        );
    });
    let results = settled_results(&e, 1);
    assert_unknown(&results[0], ENDED);
}

/// Without sessions (a stateless upstream), a call run as a task whose
/// result its principal has not fetched, and who has sent that server
/// nothing for `mcp.session_idle_seconds`, gets its one result entry,
/// unknown; the task stays theirs, and fetching it later records nothing
/// more. A principal still using the server is not affected.
#[test]
fn http_without_sessions_a_task_run_never_fetched_is_recorded_unknown_after_the_idle_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(
        tmp.path(),
        "task_server.py",
        &[("MCP_TASKS_STATELESS", "1")],
        None,
    );
    let servers = server("tasks", &up.url, "");
    let e = start_with("session_idle_seconds = 2", up, tmp, &servers);
    let a = Session::unopened(&e.g, "tasks", "agent:report-bot");
    let b = Session::unopened(&e.g, "tasks", "agent:other-bot");
    let a1 = task_created(&a, 1, "payroll", json!({}));
    let b1 = task_created(&b, 1, "weather", json!({}));
    // B keeps polling its task for longer than the limit; A is silent.
    let until = Instant::now() + Duration::from_secs(4);
    for k in 10.. {
        if Instant::now() > until {
            break;
        }
        assert_eq!(
            task_request(&b, k, "tasks/get", &b1)["result"]["status"],
            "working"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let results = settled_results(&e, 1);
    assert_unknown(&results[0], IDLE);
    assert_eq!(
        tool_text(&task_request(&b, 2, "tasks/result", &b1)),
        "report on weather"
    );
    assert_eq!(
        tool_text(&task_request(&a, 2, "tasks/result", &a1)),
        "report on payroll"
    );
    let results = settled_results(&e, 2);
    assert_eq!(results[1]["payload"]["ok"], true, "{}", results[1]);
    assert_eq!(results[1]["actor"], "agent:other-bot", "{}", results[1]);
}

/// A first `tasks/result` whose client went away is not held forever by
/// an upstream that never answers: `mcp.session_idle_seconds` after the
/// client left, the call's one result entry is recorded, unknown.
#[test]
fn http_a_task_runs_first_fetch_without_a_client_or_an_answer_is_given_up_after_the_idle_limit() {
    let e = start_tasks("session_idle_seconds = 2");
    let a = e.session("tasks", "agent:report-bot");
    let t = task_created(&a, 1, "payroll", json!({}));
    let seen = e.up.requests_seen();
    let fetch = json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/result",
                       "params": {"taskId": t, "_meta": {"test/delay": 3600}}});
    let conn = a.raw_call(&fetch);
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.up.requests_seen() == seen {
        assert!(
            Instant::now() < deadline,
            "the fetch never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    let results = settled_results(&e, 1);
    assert_unknown(&results[0], "the client went away during the first fetch of the task's result, and the upstream did not answer within mcp.session_idle_seconds after");
}

/// A decided `tools/call` whose client went away is not held forever by
/// an upstream that never answers: `mcp.session_idle_seconds` after the
/// client left, the call's one result entry is recorded, unknown. Both
/// ways of answering a call: one JSON answer, and an event stream (the
/// client asked for progress).
#[test]
fn http_a_call_without_a_client_or_an_answer_is_given_up_after_the_idle_limit() {
    let e = start_tasks("session_idle_seconds = 2");
    let a = e.session("tasks", "agent:report-bot");
    for (n, meta) in [
        (1, json!({"test/delay": 3600})),
        (2, json!({"test/delay": 3600, "progressToken": "p"})),
    ] {
        // The gateway lists the tools (with the call's `_meta`, which the
        // server does not delay a listing for) before it forwards the
        // call: wait for the call itself.
        let calls = || {
            std::fs::read_to_string(&e.up.headers)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(r#""method": "tools/call""#))
                .count()
        };
        let seen = calls();
        let call = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
            "name": "report", "arguments": {"topic": "payroll"}, "_meta": meta}});
        let conn = a.raw_call(&call);
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls() == seen {
            assert!(
                Instant::now() < deadline,
                "the call never reached the upstream"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(conn);
        let results = settled_results(&e, n);
        assert_unknown(
            &results[n - 1],
            "the client went away during the call, and the upstream did not answer within mcp.session_idle_seconds after",
        );
    }
}

/// The gateway with `[mcp]` keys `keys` and `task_server.py` upstream as
/// server `tasks`.
fn start_tasks(keys: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(tmp.path(), "task_server.py", &[], None);
    let servers = server("tasks", &up.url, "");
    start_with(keys, up, tmp, &servers)
}

/// The log's `action.result` entries once there are `n` of them, checked
/// again a moment later to be exactly `n` (results are recorded off the
/// client's path).
fn settled_results(e: &Env, n: usize) -> Vec<Value> {
    let results = || -> Vec<Value> {
        e.log()
            .into_iter()
            .filter(|en| en["event"] == "action.result")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while results().len() < n {
        assert!(Instant::now() < deadline, "{:?}", results());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = results();
    assert_eq!(got.len(), n, "one result per call: {got:?}");
    got
}

/// A `tools/call` of `report` run as a task; the task id it created.
fn task_created(s: &Session, id: u64, topic: &str, meta: Value) -> String {
    let msg = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "report", "arguments": {"topic": topic}, "task": {"ttl": 60000}, "_meta": meta}});
    let r = s.send(&msg);
    assert_eq!(r.status, 200, "{}", r.body);
    r.response()["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("no task created: {}", r.body))
        .to_string()
}

/// The response to a `tasks/*` request naming task `t`.
fn task_request(s: &Session, id: u64, method: &str, t: &str) -> Value {
    let r = s.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"taskId": t}}));
    assert_eq!(r.status, 200, "{}", r.body);
    r.response().clone()
}

/// The message of the -32602 error refusing a `tasks/*` request.
fn task_refused(s: &Session, id: u64, method: &str, params: Value) -> String {
    let r = s.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.response()["error"]["code"],
        -32602,
        "{method}: {}",
        r.body
    );
    r.response()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The task ids (sorted) `tasks/list` gives over all pages, and how many
/// pages it took.
fn tasks_listed(s: &Session, meta: Value) -> (Vec<String>, u64) {
    let (mut ids, mut pages, mut cursor) = (vec![], 0u64, Value::Null);
    loop {
        let mut params = json!({"_meta": meta});
        if !cursor.is_null() {
            params["cursor"] = cursor.clone();
        }
        let r = s.send(
            &json!({"jsonrpc": "2.0", "id": 60 + pages, "method": "tasks/list", "params": params}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        for t in r.response()["result"]["tasks"].as_array().unwrap() {
            ids.push(t["taskId"].as_str().unwrap().to_string());
        }
        cursor = r.response()["result"]["nextCursor"].clone();
        if cursor.is_null() {
            ids.sort();
            return (ids, pages);
        }
    }
}

/// Without sessions (a stateless upstream), a task belongs to the
/// principal whose decided call created it: another principal naming it
/// is refused and nothing reaches the upstream; each lists its own.
#[test]
fn http_without_sessions_a_task_belongs_to_the_principal_whose_call_created_it() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream_with(
        tmp.path(),
        "task_server.py",
        &[("MCP_TASKS_STATELESS", "1")],
        None,
    );
    let servers = server("tasks", &up.url, "");
    let e = start_with("", up, tmp, &servers);
    let a = Session::unopened(&e.g, "tasks", "agent:report-bot");
    let b = Session::unopened(&e.g, "tasks", "agent:other-bot");
    for s in [&a, &b] {
        let r = s.send(&initialize_msg());
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.session.is_none(), "a stateless server names no session");
    }
    let a1 = task_created(&a, 1, "payroll", json!({}));
    let b1 = task_created(&b, 1, "weather", json!({"test/sse": true}));
    let seen = e.up.requests_seen();
    for (i, m) in ["tasks/get", "tasks/result", "tasks/cancel"]
        .into_iter()
        .enumerate()
    {
        let why = task_refused(&b, 10 + i as u64, m, json!({"taskId": a1}));
        assert!(why.contains("unknown task"), "{why}");
    }
    assert_eq!(e.up.requests_seen(), seen, "nothing reached the upstream");
    assert_eq!(
        tool_text(&task_request(&a, 2, "tasks/result", &a1)),
        "report on payroll"
    );
    assert_eq!(tasks_listed(&a, json!({})), (vec![a1], 1));
    assert_eq!(tasks_listed(&b, json!({})), (vec![b1], 1));
}
