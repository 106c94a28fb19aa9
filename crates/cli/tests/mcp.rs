//! Black-box tests of the MCP gateway: the real `secondkey` binary and
//! gateway, the official MCP Python SDK as client and server, over stdio
//! (`secondkey mcp stdio`) and Streamable HTTP (`/mcp/<server>`).

mod common;
#[path = "common/mcp.rs"]
mod mcp_common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mcp_common::*;
use serde_json::{json, Value};

/// The `[mcp]` section both modes use (stdio reads it from its own file).
const MCP_SECTION: &str = r#"
[mcp]
hold_seconds = 3
hold_with_progress_seconds = 30
progress_interval_seconds = 1
tool_admins = ["data-owners"]
"#;

fn tools_section(extra: &str) -> String {
    format!(
        "[[mcp.servers]]\nname = \"warehouse\"\n{extra}\n[mcp.servers.tools.export_table]\noperation = \"export\"\nreads = [\"table\"]\nwrites = [\"destination\"]\n[mcp.servers.tools.read_table]\nreads = [\"table\"]\n"
    )
}

struct Env {
    g: Gateway,
    dir: PathBuf,
    runs: PathBuf,
    stdio_cfg: PathBuf,
    _tmp: tempfile::TempDir,
}

fn start(gateway_extra: &str) -> Env {
    require_python_mcp();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let g = Gateway::start_extra(&dir, MCP_POLICIES, &format!("{MCP_SECTION}{gateway_extra}"));
    let stdio_cfg = dir.join("stdio.toml");
    std::fs::write(
        &stdio_cfg,
        format!(
            "url = \"{}\"\ntoken_env = \"AGENT_TOKEN\"\n{MCP_SECTION}{}",
            g.url,
            tools_section("")
        ),
    )
    .unwrap();
    Env {
        g,
        runs: dir.join("runs.jsonl"),
        dir,
        stdio_cfg,
        _tmp: tmp,
    }
}

impl Env {
    /// The Python SDK client driving `secondkey mcp stdio` in front of the
    /// Python SDK server; one JSON line per step.
    fn stdio_client(&self, script: &Value, variant: &str) -> Child {
        self.stdio_client_with(script, variant, &token_of("agent:report-bot"))
    }

    /// [`Env::stdio_client`] with the relay given `token`.
    fn stdio_client_with(&self, script: &Value, variant: &str, token: &str) -> Child {
        let mut c = Command::new("python3");
        c.arg(python().join("test_client.py"))
            .arg(script.to_string())
            .arg("--stdio")
            .arg(BIN)
            .args(["mcp", "stdio", "--server", "warehouse", "--config"])
            .arg(&self.stdio_cfg)
            .arg("--")
            .arg("python3")
            .arg(python().join("test_server.py"))
            .arg("stdio")
            .env("MCP_CLIENT_ENV_AGENT_TOKEN", token)
            .env("MCP_CLIENT_ENV_MCP_TEST_RUNS", &self.runs)
            .env("MCP_CLIENT_ENV_MCP_TEST_VARIANT", variant)
            .env(
                "MCP_CLIENT_ENV_PATH",
                std::env::var("PATH").unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().expect("python3")
    }

    fn http_client(&self, script: &Value, url: &str, token: &str) -> Child {
        Command::new("python3")
            .arg(python().join("test_client.py"))
            .arg(script.to_string())
            .args(["--http", url, token])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3")
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

    /// Waits for a pending request and approves it as bob (after a while,
    /// so that a waiting client sees progress).
    fn approve_next(&self, seen: &mut Vec<String>) -> String {
        std::thread::sleep(Duration::from_millis(1500));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self
                .g
                .call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
            assert_eq!(s, 200, "{v}");
            if let Some(r) = v
                .as_array()
                .unwrap()
                .iter()
                .find(|r| !seen.contains(&r["id"].as_str().unwrap().to_string()))
            {
                let id = r["id"].as_str().unwrap().to_string();
                assert_eq!(r["action"]["kind"], "mcp");
                let (s, v) = self.g.review("user:bob", &id, "approve");
                assert_eq!(s, 200, "{v}");
                seen.push(id.clone());
                return id;
            }
            assert!(Instant::now() < deadline, "no pending request appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn outputs(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stdout}\n{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}\n{stderr}")))
        .collect()
}

fn steps(mode: &str, steps: Value) -> Value {
    json!({"mode": mode, "steps": steps})
}

fn check_allow_and_deny(e: &Env, out: &[Value]) {
    assert_eq!(out[0]["tools"].as_array().unwrap().len(), 7, "{out:?}");
    assert_eq!(out[1]["text"], "10 rows of orders", "{out:?}");
    assert_eq!(out[1]["isError"], false);
    assert_eq!(out[2]["isError"], true, "{out:?}");
    let t = out[2]["text"].as_str().unwrap();
    assert!(
        t.contains("no-destructive-tools") && t.contains("act_") && t.contains("Nothing ran"),
        "{t}"
    );
    assert!(e.runs_of("delete_customer").is_empty());
}

/// The 2026-07-28 handshake (`server/discover`, which the SDK's clients
/// send first in every mode but `legacy`) is relayed undecided, like
/// `initialize`: no client's session starts with a denial in the log.
fn assert_discover_relayed(e: &Env) {
    let decided: Vec<Value> =
        e.g.log_entries()
            .into_iter()
            .filter(|en| en.to_string().contains("server%2Fdiscover"))
            .collect();
    assert!(decided.is_empty(), "{decided:?}");
}

#[test]
fn stdio_allow_deny_and_lineage_through_the_real_gateway() {
    let e = start("");
    for mode in ["legacy", "auto", "2026-07-28"] {
        let out = outputs(e.stdio_client(
            &steps(
                mode,
                json!([{"list": true}, {"call": "read_table", "args": {"table": "orders"}},
                                {"call": "delete_customer", "args": {"customer_id": 7}},
                                {"call": "read_table", "args": {"table": "orders", "limit": 1.5}}]),
            ),
            "",
        ));
        check_allow_and_deny(&e, &out);
        // A denial no policy made (here: Cedar cannot evaluate 1.5) says
        // why in its own words, with no empty policy name.
        assert_eq!(out[3]["isError"], true, "{out:?}");
        let t = out[3]["text"].as_str().unwrap();
        assert!(
            t.starts_with(
                "secondkey denied this call of \"read_table\": the action cannot be evaluated"
            ) && t.contains("1.5 is not an integer")
                && !t.contains("policy  ("),
            "{t}"
        );
    }
    assert_eq!(e.runs_of("read_table").len(), 3, "one run per allowed call");
    assert_discover_relayed(&e);
    let (s, v) = e.g.call(
        "GET",
        "/v1/lineage?principal=agent:report-bot",
        Some("agent:report-bot"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert!(
        v.to_string().contains("mcp://warehouse/orders"),
        "lineage from the `table` argument: {v}"
    );
    let (s, v) = e.g.call(
        "GET",
        "/v1/mcp/pins?server=warehouse",
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v.as_array().unwrap().len(),
        7,
        "every listed tool is pinned: {v}"
    );
    // The served OpenAPI document describes the MCP gateway's routes too,
    // next to the gateway's own.
    let (s, v) = e.g.call("GET", "/openapi.json", None, None);
    assert_eq!(s, 200, "{v}");
    for (path, methods) in [
        ("/mcp/{server}", &["post", "get", "delete"][..]),
        ("/v1/mcp/pins", &["get"][..]),
        ("/v1/mcp/pins/observe", &["post"][..]),
        ("/v1/mcp/pins/accept", &["post"][..]),
        ("/v1/actions", &["post"][..]),
    ] {
        for m in methods {
            assert!(
                v["paths"][path].get(m).is_some(),
                "openapi lacks {m} {path}"
            );
        }
    }
    assert!(
        v["components"]["schemas"].get("Pin").is_some(),
        "{}",
        v["components"]
    );
    let refused = &v["paths"]["/mcp/{server}"]["post"]["responses"]["400"];
    assert_eq!(
        refused["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/JsonRpcError",
        "a refused message is a JSON-RPC error: {refused}"
    );
    // And what it says holds: an unknown query parameter is a 400 with the
    // gateway's error body.
    let (s, v) = e.g.call(
        "GET",
        "/v1/mcp/pins?sever=warehouse",
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");
}

/// A relay the gateway does not accept (here: a wrong token) cannot have
/// the definitions checked: a call is refused, and the agent is told the
/// gateway's reason, not that the server lists no such tool.
#[test]
fn stdio_a_relay_the_gateway_refuses_tells_the_agent_why_and_runs_nothing() {
    let e = start("");
    let out = outputs(e.stdio_client_with(
        &steps(
            "legacy",
            json!([{"list": true}, {"call": "read_table", "args": {"table": "orders"}}]),
        ),
        "",
        "not-the-token-of-anyone-here",
    ));
    assert_eq!(out[1]["isError"], true, "{out:?}");
    let t = out[1]["text"].as_str().unwrap();
    assert!(
        t.contains("could not check the definition of tool \"read_table\"")
            && t.contains("token")
            && t.contains("Nothing ran")
            && !t.contains("does not list"),
        "{t}"
    );
    assert!(e.runs_of("read_table").is_empty(), "{:?}", e.runs());
}

#[test]
fn stdio_held_call_runs_once_after_approval_and_changed_arguments_do_not() {
    let e = start("");
    let mut seen = Vec::new();
    let export = json!({"call": "export_table", "args": {"table": "customers", "destination": "s3://reports/c.csv"}, "progress": true});
    let client = e.stdio_client(&steps("auto", json!([{"list": true}, export])), "");
    e.approve_next(&mut seen);
    let out = outputs(client);
    assert_eq!(
        out[1]["text"], "exported customers to s3://reports/c.csv",
        "{out:?}"
    );
    assert!(
        !out[1]["progress"].as_array().unwrap().is_empty(),
        "progress while held: {out:?}"
    );
    assert_eq!(e.runs_of("export_table").len(), 1, "ran exactly once");

    // No progress token: the call returns after hold_seconds, telling the
    // agent the request id; approved, the identical call runs once.
    let quiet = json!({"call": "export_table", "args": {"table": "customers", "destination": "s3://reports/c.csv"}});
    let out = outputs(e.stdio_client(&steps("legacy", json!([quiet])), ""));
    let t = out[0]["text"].as_str().unwrap();
    assert!(
        out[0]["isError"] == true && t.contains("req_") && t.contains("exactly the same arguments"),
        "{t}"
    );
    assert_eq!(
        e.runs_of("export_table").len(),
        1,
        "the held call did not run"
    );
    let id = e.approve_next(&mut seen);
    assert!(t.contains(&id), "the message names the request: {t}");
    let changed = json!({"call": "export_table", "args": {"table": "orders", "destination": "s3://reports/c.csv"}});
    let out = outputs(e.stdio_client(&steps("legacy", json!([changed, quiet, quiet])), ""));
    assert_eq!(
        out[0]["isError"], true,
        "changed arguments are a new request, not the approved one: {out:?}"
    );
    assert_eq!(
        out[1]["text"], "exported customers to s3://reports/c.csv",
        "{out:?}"
    );
    assert_eq!(
        out[2]["isError"], true,
        "the approval was used once: {out:?}"
    );
    let exports = e.runs_of("export_table");
    assert_eq!(exports.len(), 2, "{exports:?}");
    assert!(
        exports.iter().all(|r| r["args"]["table"] == "customers"),
        "orders never ran: {exports:?}"
    );
}

#[test]
fn stdio_changed_tool_definition_is_held_until_a_human_accepts_it() {
    let e = start("");
    let echo = json!({"call": "echo", "args": {"text": "hi"}});
    let out = outputs(e.stdio_client(&steps("legacy", json!([{"list": true}, echo])), ""));
    assert_eq!(out[1]["text"], "hi");
    // The server now describes `echo` differently (a "rug pull").
    let out = outputs(e.stdio_client(&steps("legacy", json!([{"list": true}, echo])), "changed"));
    let t = out[1]["text"].as_str().unwrap();
    assert!(
        out[1]["isError"] == true && t.contains("changed since it was pinned"),
        "{t}"
    );
    assert_eq!(e.runs_of("echo").len(), 1, "the changed tool did not run");
    let fp = t
        .split("--fingerprint ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('`')
        .to_string();
    let accept = [
        "mcp",
        "tools",
        "accept",
        "--server",
        "warehouse",
        "--tool",
        "echo",
        "--fingerprint",
        &fp,
    ];
    let (code, _, err) = e.g.cli(&accept, Some("agent:report-bot"));
    assert_ne!(code, 0, "an agent cannot accept a definition");
    assert!(err.contains("not_tool_admin"), "{err}");
    let (code, out_s, err) = e.g.cli(&accept, Some("user:bob"));
    assert_eq!(code, 0, "{out_s}{err}");
    let out = outputs(e.stdio_client(&steps("legacy", json!([{"list": true}, echo])), "changed"));
    assert_eq!(out[1]["text"], "hi", "accepted: it runs again: {out:?}");
    let (_, pins) = e.g.call(
        "GET",
        "/v1/mcp/pins?server=warehouse",
        Some("user:bob"),
        None,
    );
    let p = pins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == "echo")
        .unwrap();
    assert_eq!(p["accepted_by"], "user:bob");
    assert_eq!(p["fingerprint"], fp);
}

#[test]
fn http_mode_holds_credentials_and_decides_every_call() {
    require_python_mcp();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs.jsonl");
    let up = upstream(tmp.path(), &runs);
    std::fs::write(tmp.path().join("upstream.token"), "upstream-secret\n").unwrap();
    let header = format!(
        "url = \"{}\"\nheaders = [{{ name = \"Authorization\", value_file = \"{}\", prefix = \"Bearer \" }}]",
        up.url,
        tmp.path().join("upstream.token").display()
    );
    let mut e = start(&tools_section(&header));
    e.runs = runs;
    let url = format!("{}/mcp/warehouse", e.g.url);
    let agent = token_of("agent:report-bot");
    for mode in ["legacy", "auto", "2026-07-28"] {
        let out = outputs(e.http_client(
            &steps(
                mode,
                json!([{"list": true}, {"call": "read_table", "args": {"table": "orders"}},
                                {"call": "delete_customer", "args": {"customer_id": 7}}]),
            ),
            &url,
            &agent,
        ));
        check_allow_and_deny(&e, &out);
    }
    assert_discover_relayed(&e);
    let mut seen = Vec::new();
    let export = json!({"call": "export_table", "args": {"table": "customers", "destination": "s3://reports/c.csv"}, "progress": true});
    let client = e.http_client(
        &steps("legacy", json!([{"list": true}, export])),
        &url,
        &agent,
    );
    e.approve_next(&mut seen);
    let out = outputs(client);
    assert_eq!(
        out[1]["text"], "exported customers to s3://reports/c.csv",
        "{out:?}"
    );
    assert!(
        !out[1]["progress"].as_array().unwrap().is_empty(),
        "{out:?}"
    );
    assert_eq!(e.runs_of("export_table").len(), 1);

    // The upstream saw secondkey's credential, never the agent's token.
    let seen_headers = std::fs::read_to_string(&up.headers).unwrap();
    assert!(seen_headers.contains("Bearer upstream-secret"));
    assert!(
        !seen_headers.contains(&agent),
        "the agent's token never reaches the upstream"
    );
    // An unauthenticated caller gets nothing.
    let (s, _) = e.g.raw(
        "POST",
        "/mcp/warehouse",
        None,
        "application/json",
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(s, 401);
    // Nor a malformed message, nor an unknown server.
    let (s, v) = e.g.raw(
        "POST",
        "/mcp/warehouse",
        Some("agent:report-bot"),
        "application/json",
        b"{nope",
    );
    assert_eq!((s, v["error"]["code"].clone()), (400, json!(-32700)), "{v}");
    let (s, _) = e.g.raw(
        "POST",
        "/mcp/elsewhere",
        Some("agent:report-bot"),
        "application/json",
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(s, 404);
    // Pins came from the upstream listing.
    let (_, pins) = e.g.call(
        "GET",
        "/v1/mcp/pins?server=warehouse",
        Some("user:bob"),
        None,
    );
    assert_eq!(pins.as_array().unwrap().len(), 7, "{pins}");
    let _ = e.dir;
}

/// The Rust SDK (`rmcp`) as the client, over stdio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_over_stdio() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
    use rmcp::ServiceExt;

    let e = start("");
    let cmd = tokio::process::Command::new(BIN).configure(|c| {
        c.args(["mcp", "stdio", "--server", "warehouse", "--config"])
            .arg(&e.stdio_cfg)
            .arg("--")
            .arg("python3")
            .arg(python().join("test_server.py"))
            .arg("stdio")
            .env("AGENT_TOKEN", token_of("agent:report-bot"))
            .env("MCP_TEST_RUNS", &e.runs);
    });
    let client =
        ().serve(TokioChildProcess::new(cmd).unwrap())
            .await
            .expect("the handshake through secondkey");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 7);
    let mut args = serde_json::Map::new();
    args.insert("table".into(), json!("orders"));
    let r = client
        .call_tool(CallToolRequestParams::new("read_table").with_arguments(args))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true));
    assert!(
        serde_json::to_string(&r.content)
            .unwrap()
            .contains("10 rows of orders"),
        "{r:?}"
    );
    let mut args = serde_json::Map::new();
    args.insert("customer_id".into(), json!(7));
    let r = client
        .call_tool(CallToolRequestParams::new("delete_customer").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        serde_json::to_string(&r.content)
            .unwrap()
            .contains("no-destructive-tools"),
        "{r:?}"
    );
    client.cancel().await.unwrap();
    assert_eq!(e.runs_of("read_table").len(), 1);
    assert!(e.runs_of("delete_customer").is_empty());
}

/// One gateway and the SDK server behind it, reached by the SDK client
/// over stdio (`secondkey mcp stdio` launching the server) or over
/// Streamable HTTP (the gateway in front of the server as an upstream,
/// restarted when a session asks for another variant of it).
struct Rig {
    e: Env,
    http: Option<HttpUp>,
    /// Holds the upstream's token file (read when the gateway starts).
    _token: Option<tempfile::TempDir>,
}

struct HttpUp {
    up: Upstream,
    url: String,
    variant: String,
}

fn sdk_upstream(dir: &std::path::Path, variant: &str, port: Option<u16>) -> Upstream {
    let runs = dir.join("runs.jsonl");
    upstream_with(
        dir,
        "test_server.py",
        &[
            ("MCP_TEST_RUNS", runs.to_str().unwrap()),
            ("MCP_TEST_UPSTREAM_TOKEN", "upstream-secret"),
            ("MCP_TEST_VARIANT", variant),
        ],
        port,
    )
}

impl Rig {
    fn stdio() -> Rig {
        Rig {
            e: start(""),
            http: None,
            _token: None,
        }
    }

    fn http() -> Rig {
        require_python_mcp();
        // The upstream writes its runs where the gateway's env reads them:
        // start the gateway first, in its own directory.
        let port = free_port();
        let token = tempfile::tempdir().unwrap();
        std::fs::write(token.path().join("upstream.token"), "upstream-secret\n").unwrap();
        let header = format!(
            "url = \"http://127.0.0.1:{port}/mcp\"\nheaders = [{{ name = \"Authorization\", value_file = \"{}\", prefix = \"Bearer \" }}]",
            token.path().join("upstream.token").display()
        );
        let e = start(&tools_section(&header));
        let up = sdk_upstream(&e.dir, "", Some(port));
        let url = format!("{}/mcp/warehouse", e.g.url);
        Rig {
            e,
            http: Some(HttpUp {
                up,
                url,
                variant: String::new(),
            }),
            _token: Some(token),
        }
    }

    fn transport(&self) -> &'static str {
        if self.http.is_some() {
            "http"
        } else {
            "stdio"
        }
    }

    /// Stops the HTTP upstream and starts it again, on the same port, as
    /// `variant`.
    fn restart(&mut self, variant: &str) {
        let dir = self.e.dir.clone();
        let h = self.http.as_mut().expect("an HTTP rig");
        let _ = h.up.child.kill();
        h.up.wait_exited();
        h.up = sdk_upstream(&dir, variant, Some(h.up.port));
        h.variant = variant.to_string();
    }

    /// A client session running `steps` against the server `variant`.
    fn spawn(&mut self, variant: &str, steps_: Value) -> Child {
        let script = steps("legacy", steps_);
        if self.http.as_ref().is_some_and(|h| h.variant != variant) {
            self.restart(variant);
        }
        match &self.http {
            None => self.e.stdio_client(&script, variant),
            Some(h) => self
                .e
                .http_client(&script, &h.url, &token_of("agent:report-bot")),
        }
    }

    fn session(&mut self, variant: &str, steps_: Value) -> Vec<Value> {
        outputs(self.spawn(variant, steps_))
    }

    fn log(&self) -> Vec<Value> {
        self.e.g.log_entries()
    }

    /// The decisions recorded for calls of `tool` (allowed, denied or held).
    fn decisions(&self, tool: &str) -> Vec<Value> {
        let resource = format!("mcp://warehouse/{tool}");
        self.log()
            .into_iter()
            .filter(|en| {
                let ev = en["event"].as_str().unwrap_or_default();
                (ev.starts_with("action.allowed")
                    || ev.starts_with("action.denied")
                    || ev == "request.created")
                    && en.to_string().contains(&resource)
            })
            .collect()
    }

    /// The `listed` fact each allowed call of `tool` was decided with: a
    /// gateway fact over HTTP, the relay's declared context over stdio.
    fn listed_facts(&self, tool: &str) -> Vec<Value> {
        self.decisions(tool)
            .iter()
            .filter(|en| en["event"] == "action.allowed")
            .map(|en| {
                let p = &en["payload"];
                let fact = &p["facts"]["mcp"]["listed"];
                if fact.is_null() {
                    p["action"]["context"]["mcp"]["listed"].clone()
                } else {
                    fact.clone()
                }
            })
            .collect()
    }

    fn changes_seen(&self, tool: &str) -> usize {
        self.log()
            .iter()
            .filter(|en| en["event"] == "mcp.tool.changed" && en["payload"]["tool"] == tool)
            .count()
    }
}

/// Issue 13: a client that keeps a tool list from an earlier session
/// calls straight away in a new one, after the server changed the tool
/// (description, input schema only, or annotations that would change the
/// operation class). The call is checked against the server's current
/// definition: held as a changed tool, never decided, never run.
#[test]
fn a_changed_tool_called_in_a_new_session_without_listing_never_reaches_policy_or_the_server() {
    for mut r in [Rig::stdio(), Rig::http()] {
        let t = r.transport();
        let out = r.session(
            "",
            json!([{"list": true}, {"call": "echo", "args": {"text": "hi"}}]),
        );
        assert_eq!(out[1]["text"], "hi", "{t}: {out:?}");
        // The `listed` fact is true only of a session that listed.
        let read = json!({"call": "read_table", "args": {"table": "orders"}});
        let out = r.session("", json!([read, {"list": true}, read]));
        assert_eq!(out[0]["text"], "10 rows of orders", "{t}: {out:?}");
        assert_eq!(out[2]["text"], "10 rows of orders", "{t}: {out:?}");
        assert_eq!(
            r.listed_facts("read_table"),
            vec![json!(false), json!(true)],
            "{t}"
        );
        for (variant, tool, args) in [
            ("changed", "echo", json!({"text": "hi"})),
            ("schema", "echo", json!({"text": "hi"})),
            ("annotation", "read_table", json!({"table": "orders"})),
        ] {
            let runs = r.e.runs_of(tool).len();
            let decided = r.decisions(tool).len();
            let changes = r.changes_seen(tool);
            let out = r.session(variant, json!([{"call": tool, "args": args}]));
            let text = out[0]["text"].as_str().unwrap_or_default();
            assert!(
                out[0]["isError"] == true && text.contains("changed since it was pinned"),
                "{t} {variant}: {out:?}"
            );
            assert!(
                !text.contains("no-destructive-tools"),
                "{t} {variant}: not decided as the new operation: {text}"
            );
            assert_eq!(r.e.runs_of(tool).len(), runs, "{t} {variant}: nothing ran");
            assert_eq!(
                r.decisions(tool).len(),
                decided,
                "{t} {variant}: the call never reached policy"
            );
            assert_eq!(
                r.changes_seen(tool),
                changes + 1,
                "{t} {variant}: the change is logged when the call comes"
            );
        }
    }
}

/// Issue 13: the server changes a tool and says so
/// (`notifications/tools/list_changed`) in the middle of a session; the
/// next call of it is checked against the new definition.
#[test]
fn a_call_after_the_server_says_its_tool_list_changed_is_checked_against_the_new_list() {
    for mut r in [Rig::stdio(), Rig::http()] {
        let t = r.transport();
        let out = r.session(
            "",
            json!([{"list": true}, {"call": "echo", "args": {"text": "a"}},
                   {"call": "mutate"}, {"call": "echo", "args": {"text": "b"}}]),
        );
        assert_eq!(out[1]["text"], "a", "{t}: {out:?}");
        assert_eq!(out[2]["text"], "mutated", "{t}: {out:?}");
        let text = out[3]["text"].as_str().unwrap_or_default();
        assert!(
            out[3]["isError"] == true && text.contains("changed since it was pinned"),
            "{t}: {out:?}"
        );
        assert_eq!(
            r.e.runs_of("echo"),
            vec![json!({"tool": "echo", "args": {"text": "a"}})],
            "{t}: the changed tool did not run"
        );
        let changed = r
            .log()
            .into_iter()
            .find(|en| en["event"] == "mcp.tool.changed")
            .unwrap_or_else(|| panic!("{t}: the change is logged"));
        assert!(
            changed["payload"]["definition"]["description"]
                .as_str()
                .unwrap()
                .contains("id_rsa"),
            "{t}: {changed}"
        );
    }
}

/// Issue 13: the upstream restarts, changed, between a list and a call of
/// one client session (HTTP: the upstream is a separate service; over
/// stdio the server process is the session, and its end ends the relay).
#[test]
fn http_an_upstream_restart_between_a_list_and_a_call_of_one_session_runs_nothing_changed() {
    use std::io::BufRead;
    let mut r = Rig::http();
    let flag = r.e.dir.join("restarted");
    let mut child = r.spawn(
        "",
        json!([{"list": true}, {"wait_file": flag.to_str().unwrap()},
               {"call": "echo", "args": {"text": "after"}}]),
    );
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["tools"].as_array().unwrap().len(), 7, "{first}");
    r.restart("changed");
    std::fs::write(&flag, "").unwrap();
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let _ = child.wait();
    assert_eq!(rest[0]["waited"], true, "{rest:?}");
    assert!(
        rest[1].get("error").is_some() || rest[1]["isError"] == true,
        "the call in the old session does not run: {rest:?}"
    );
    assert!(r.e.runs_of("echo").is_empty(), "{:?}", r.e.runs());
    assert!(
        r.decisions("echo").is_empty(),
        "never decided on the definition of before the restart"
    );
    // A new session's call of it is held as changed.
    let out = r.session(
        "changed",
        json!([{"call": "echo", "args": {"text": "new"}}]),
    );
    assert!(
        out[0]["isError"] == true
            && out[0]["text"]
                .as_str()
                .unwrap()
                .contains("changed since it was pinned"),
        "{out:?}"
    );
    assert!(r.e.runs_of("echo").is_empty());
}

// Issue 24: bounded memory of `secondkey mcp stdio`. The relay is driven
// as raw newline-delimited JSON (no SDK client writes a 400 MiB line);
// each test checks the relay process's peak resident memory (VmHWM) against
// the bound docs/mcp.md states: 100 MB.

const RELAY_RSS_BOUND: u64 = 100 * MB;

/// `secondkey mcp stdio` started by the test itself, in front of `script`.
struct Relay {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Env {
    /// The relay with the `[mcp]` keys `keys` added to the stdio config,
    /// in front of `script` with the environment `env`.
    fn relay(&self, keys: &str, script: &str, env: &[(&str, &str)]) -> Relay {
        let cfg = self.dir.join("stdio-limits.toml");
        std::fs::write(
            &cfg,
            format!(
                "url = \"{}\"\ntoken_env = \"AGENT_TOKEN\"\n{MCP_SECTION}{keys}\n{}",
                self.g.url,
                tools_section("")
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["mcp", "stdio", "--server", "warehouse", "--config"])
            .arg(&cfg)
            .arg("--")
            .arg("python3")
            .arg(python().join(script))
            .arg("stdio")
            .env("AGENT_TOKEN", token_of("agent:report-bot"))
            .env("MCP_TEST_RUNS", &self.runs)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("secondkey mcp stdio");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).expect("the relay writes JSON lines");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut r = Relay {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        };
        r.send(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw-stdio-test", "version": "1"}}}),
        );
        assert!(r.answer(&json!(0))["result"].is_object());
        r.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }
}

impl Relay {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stdin.as_mut().unwrap().write_all(bytes)
    }

    fn send(&mut self, v: &Value) {
        self.write(format!("{v}\n").as_bytes()).unwrap();
    }

    /// The next message, within 30 s.
    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no message; stderr: {}", self.stderr()))
    }

    /// The answer to `id` (notifications before it skipped).
    fn answer(&self, id: &Value) -> Value {
        loop {
            let v = self.next();
            if v.get("id") == Some(id) && v.get("method").is_none() {
                return v;
            }
        }
    }

    fn call(&mut self, id: Value, tool: &str, args: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}));
        self.answer(&id)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the relay wrote `needle` on stderr (within 10 s: it is read
    /// on a thread of its own).
    fn said(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A client writing a 400 MiB line at the default limit (4 MiB) gets a
/// JSON-RPC error once the line ends; nothing of it is kept or forwarded,
/// and the session goes on.
#[test]
fn stdio_a_400_mib_line_is_refused_at_the_default_limit_and_memory_stays_bounded() {
    let e = start("");
    let mut r = e.relay("", "test_server.py", &[]);
    // A call whose text argument never ends: answered under its id, which
    // its head names.
    r.write(br#"{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{"name":"echo","arguments":{"text":""#)
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..400 {
        r.write(&chunk).unwrap();
    }
    r.write(b"\"}}}\n").unwrap();
    let v = r.next();
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("big"), &json!(-32600)),
        "{v}"
    );
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("4194304")
            && m.contains("mcp.max_message_bytes")
            && m.contains("nothing was forwarded"),
        "{m}"
    );
    assert!(r.said("refused a message of"), "{}", r.stderr());
    let a = r.call(json!(1), "echo", json!({"text": "still serving"}));
    assert_eq!(text_of(&a), "still serving", "{a}");
    assert_eq!(e.runs_of("echo").len(), 1, "only the call after it ran");
    assert_peak_rss_under(r.pid(), RELAY_RSS_BOUND, "stdio relay");
}

/// A server writing a 300 MiB line (over the default 16 MiB of
/// `mcp.max_result_bytes`): dropped as it streams, reported on stderr, and
/// the answer after it still comes; a 300 MiB answer is a tool error for
/// its call.
#[test]
fn stdio_a_300_mib_line_of_the_server_is_dropped_and_memory_stays_bounded() {
    let e = start("");
    let mut r = e.relay("", "hostile_server.py", &[("MCP_HUGE", "314572800")]);
    let a = r.call(json!(1), "huge", json!({}));
    assert_eq!(text_of(&a), "huge done", "{a}");
    assert!(r.said("mcp.max_result_bytes = 16777216"), "{}", r.stderr());
    // The answer itself over the limit: the client is answered with a
    // tool error under the call's id (its head names it), not left waiting.
    let a = r.call(json!(2), "huge_answer", json!({}));
    let t = text_of(&a);
    assert!(
        a["result"]["isError"] == true
            && t.contains("mcp.max_result_bytes = 16777216")
            && t.contains("whether the call took effect is unknown"),
        "{a}"
    );
    let a = r.call(json!(3), "garbage", json!({}));
    assert_eq!(text_of(&a), "garbage done", "{a}");
    assert_peak_rss_under(r.pid(), RELAY_RSS_BOUND, "stdio relay");
}

/// Past `mcp.max_pending_requests`, a request is refused at once with
/// JSON-RPC error -32005 naming the key and never reaches the server; once
/// the held calls are answered their slots are free again.
#[test]
fn stdio_requests_past_max_pending_requests_are_refused_and_their_slots_come_back() {
    let e = start("");
    let mut r = e.relay("max_pending_requests = 2", "test_server.py", &[]);
    for id in [1, 2] {
        r.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "export_table", "arguments": {"table": "orders", "destination": "s3://b"}}}));
    }
    r.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "one too many"}}}));
    let v = r.answer(&json!(3));
    assert_eq!(v["error"]["code"], -32005, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(
            "2 requests in progress, the most secondkey keeps (mcp.max_pending_requests)"
        ),
        "{v}"
    );
    assert!(e.runs_of("echo").is_empty(), "never forwarded");
    // The held calls end after hold_seconds (3 s) naming their requests.
    // (in either order).
    let mut held = vec![r.next(), r.next()];
    held.sort_by_key(|a| a["id"].as_i64());
    assert_eq!((&held[0]["id"], &held[1]["id"]), (&json!(1), &json!(2)));
    for a in held {
        assert!(
            text_of(&a).contains("holding this call") && text_of(&a).contains("req_"),
            "{a}"
        );
    }
    let a = r.call(json!(4), "echo", json!({"text": "room again"}));
    assert_eq!(text_of(&a), "room again", "{a}");
    assert!(e.runs_of("export_table").is_empty());
}
