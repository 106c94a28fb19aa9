//! Lineage, usage, OpenLineage and evidence, black-box: one gateway, a day
//! of three agents — one through the PostgreSQL gateway (psql, a real
//! PostgreSQL 15), one through the MCP gateway (the official MCP Python
//! SDK's server upstream), one through the REST API — with reads, writes
//! and exports, some allowed by policy and some approved by humans. Then:
//! the graph as JSON and as the `/lineage` page in headless Chromium
//! (screenshots under tests/artifacts/), the OpenLineage events the sink
//! sent (validated against the OpenLineage JSON schema and the
//! openlineage-python client), `report usage`, and an evidence pack that
//! `evidence verify` recomputes — and that fails once edited.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/mcp.rs"]
mod mcp_common;
#[path = "common/oidc.rs"]
mod oidc;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browser::*;
use common::*;
use mcp_common::*;
use oidc::start_idp;
use secondkey_pg::testing::{Cluster, APP_PASSWORD, APP_USER, DATABASE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An OpenLineage endpoint: records each POSTed body, answers 200.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/api/v1/lineage",
        l.local_addr().unwrap().port()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g2.lock().unwrap().push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one pending request of `who` for an action of `operation`, once it
/// appears.
fn pending_of(g: &Gateway, requester: &str, operation: &str) -> String {
    let mut id = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while id.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no pending {operation} of {requester}"
        );
        let (_, v) = g.call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
        if let Some(r) = v.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["requester"] == requester && r["action"]["operation"] == operation)
        }) {
            id = r["id"].as_str().unwrap().to_string();
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    id
}

fn psql(port: u16, who: &str, sql: &str) -> std::process::Child {
    Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            who,
            "-d",
            DATABASE,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", token_of(who))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed (apt-get install -y postgresql-client-15)")
}

/// A minimal MCP client over Streamable HTTP.
struct Mcp {
    url: String,
    token: String,
    session: String,
}

impl Mcp {
    fn post(&self, msg: &Value, session: bool) -> (Option<String>, Vec<Value>) {
        let mut r = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build()
            .post(&self.url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/json")
            .set("Accept", "application/json, text/event-stream")
            .set("MCP-Protocol-Version", "2025-11-25");
        if session {
            r = r.set("Mcp-Session-Id", &self.session);
        }
        let resp = r.send_string(&msg.to_string()).expect("MCP call");
        let sid = resp.header("mcp-session-id").map(str::to_string);
        let ct = resp.content_type().to_string();
        let body = resp.into_string().unwrap();
        let msgs = if ct.starts_with("text/event-stream") {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            serde_json::from_str::<Value>(&body).into_iter().collect()
        };
        (sid, msgs)
    }

    fn open(gw: &str, server: &str, who: &str) -> Mcp {
        let mut m = Mcp {
            url: format!("{gw}/mcp/{server}"),
            token: token_of(who),
            session: String::new(),
        };
        let (sid, _) = m.post(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "lineage-test", "version": "1"}}}),
            false,
        );
        m.session = sid.expect("a session id");
        m.post(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            true,
        );
        m.post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            true,
        );
        m
    }

    fn call(&self, id: u64, tool: &str, args: Value) -> Value {
        let (_, msgs) = self.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}), true);
        msgs.into_iter()
            .find(|m| m.get("id") == Some(&json!(id)))
            .expect("a response")
    }
}

/// MCP tools for agents: reads run, exports wait for a data owner.
const TOOL_POLICIES: &str = r#"
@id("agents-mcp-read") permit(principal in Group::"agents", action == Action::"mcp.read", resource);
@id("agents-mcp-export") permit(principal in Group::"agents", action == Action::"mcp.export", resource);
@id("mcp-export-needs-review")
@review("data-owners")
forbid(principal, action == Action::"mcp.export", resource);
"#;

fn today() -> (String, String) {
    let d = |arg: &str| {
        let o = Command::new("date")
            .args(["-u", arg, "+%F"])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    (d("-d today"), d("-d tomorrow"))
}

fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli(args, "http://127.0.0.1:1", None)
}

#[test]
fn a_day_of_three_agents_as_lineage_openlineage_usage_and_evidence() {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = Cluster::start(25);
    let runs = d.join("runs.jsonl");
    let up = upstream(d, &runs);
    std::fs::write(d.join("upstream.token"), "upstream-secret\n").unwrap();
    std::fs::write(d.join("upstream.pw"), format!("{APP_PASSWORD}\n")).unwrap();
    let (idp, issuer) = start_idp(d);
    let (ol_url, events) = receiver();
    let pg_port = free_port();
    let mcp_bot = "agent:mcp-bot";
    let extra = format!(
        "{oidc}\n[[principals]]\nid = \"{mcp_bot}\"\nowner = \"user:erin\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{hash}\"\n\
         [[environments]]\nname = \"prod\"\nresources = [\"mcp://warehouse/*\"]\n\
         [[sinks]]\nname = \"lineage\"\ntype = \"openlineage\"\nurl = \"{ol_url}\"\nnamespace = \"secondkey-test\"\n\
         [[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:{pg_port}\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"agent:other-bot\"]\nhold = \"wait\"\nhold_timeout = \"60s\"\n\
         [postgres.upstream]\nhost = \"127.0.0.1\"\nport = {cport}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_file = \"{pw}\"\n\
         [postgres.scram]\n\"agent:other-bot\" = \"{scram}\"\n\
         [mcp]\ntool_admins = [\"data-owners\"]\n[[mcp.servers]]\nname = \"warehouse\"\nurl = \"{mcp_url}\"\ndataset_prefix = \"postgres://warehouse/\"\n\
         headers = [{{ name = \"Authorization\", value_file = \"upstream.token\", prefix = \"Bearer \" }}]\n\
         [mcp.servers.tools.export_table]\noperation = \"export\"\nreads = [\"table\"]\nwrites = [\"destination\"]\n\
         [mcp.servers.tools.read_table]\noperation = \"read\"\nreads = [\"table\"]\n",
        oidc = oidc_config(d, &issuer),
        hash = hex::encode(Sha256::digest(token_of(mcp_bot).as_bytes())),
        cport = cluster.port,
        pw = d.join("upstream.pw").display(),
        scram = secondkey_pg::scram::new_verifier(&token_of("agent:other-bot")),
        mcp_url = up.url,
    );
    let g = Gateway::start_extra(d, &format!("{POLICIES}\n{TOOL_POLICIES}"), &extra);

    // REST (agent:report-bot): an allowed read it runs with its grant; an
    // export for carol that two data owners approve (its owner alice may
    // not); a DDL policy denies.
    let read = g.submit("agent:report-bot", &json!({"kind": "sql", "operation": "read", "resource": "postgres://analytics/public.orders",
        "params": {"statement": "SELECT * FROM orders"}, "context": {"model": "gpt-test"}, "lineage": {"reads": ["postgres://analytics/public.orders"]}}));
    let (s, _) = g.call(
        "POST",
        "/v1/grants/consume",
        Some("agent:report-bot"),
        Some(&json!({"grant": read["grant"], "digest": read["digest"]})),
    );
    assert_eq!(s, 200);
    let export = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.customers"),
    );
    let rest_req = export["request"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        g.review("user:alice", &rest_req, "approve").0,
        403,
        "the agent's owner"
    );
    assert_eq!(g.review("user:bob", &rest_req, "approve").0, 200);
    assert_eq!(g.review("user:dave", &rest_req, "approve").0, 200);
    let (_, r) = g.call(
        "GET",
        &format!("/v1/requests/{rest_req}"),
        Some("agent:report-bot"),
        None,
    );
    let (s, _) = g.call(
        "POST",
        "/v1/grants/consume",
        Some("agent:report-bot"),
        Some(&json!({"grant": r["grant"], "digest": export["digest"]})),
    );
    assert_eq!(s, 200);
    let ddl = g.submit("agent:report-bot", &json!({"kind": "sql", "operation": "ddl", "resource": "postgres://analytics/public.orders", "params": {"statement": "DROP TABLE orders"}}));
    assert_eq!(ddl["decision"], "deny");

    // PostgreSQL (agent:other-bot): a read runs at once; an export waits
    // for two data owners (its owner dave may not).
    let out = psql(pg_port, "agent:other-bot", "SELECT count(*) FROM orders")
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = psql(pg_port, "agent:other-bot", "COPY customers TO STDOUT");
    let pg_req = pending_of(&g, "agent:other-bot", "export");
    assert_eq!(
        g.review("user:dave", &pg_req, "approve").0,
        403,
        "the agent's owner"
    );
    assert_eq!(g.review("user:bob", &pg_req, "approve").0, 200);
    assert_eq!(g.review("user:carol", &pg_req, "approve").0, 200);
    let out = copy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 25);

    // MCP (agent:mcp-bot): a read tool runs at once; an export tool call is
    // held until a data owner approves, then runs.
    let m = Mcp::open(&g.url, "warehouse", mcp_bot);
    let r = m.call(2, "read_table", json!({"table": "orders", "limit": 3}));
    assert!(r.get("result").is_some(), "{r}");
    let gw_url = g.url.clone();
    let held = std::thread::spawn(move || {
        let m = Mcp {
            url: format!("{gw_url}/mcp/warehouse"),
            token: token_of("agent:mcp-bot"),
            session: m.session,
        };
        m.call(
            3,
            "export_table",
            json!({"table": "customers", "destination": "s3://reports/customers.csv"}),
        )
    });
    let mcp_req = pending_of(&g, mcp_bot, "export");
    assert_eq!(
        g.review("user:erin", &mcp_req, "approve").0,
        403,
        "erin owns the agent"
    );
    assert_eq!(g.review("user:carol", &mcp_req, "approve").0, 200);
    let r = held.join().unwrap();
    assert!(r.get("result").is_some(), "{r}");

    // Every run's result is recorded (adapters record them off the path).
    let graph = |who: &str, q: &str| {
        let (s, v) = g.call("GET", &format!("/v1/lineage/graph?{q}"), Some(who), None);
        assert_eq!(s, 200, "{v}");
        v
    };
    wait_until("six executed actions with their results", || {
        let v = graph("user:audrey", "");
        v["actions"] == 6
            && v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["kind"] == "action" && n["outcome"].is_string())
                .count()
                >= 4
    });

    // The graph as JSON: three principals, approvals with who and when.
    let v = graph("user:audrey", "");
    let nodes = v["nodes"].as_array().unwrap();
    let principals: Vec<&str> = nodes
        .iter()
        .filter(|n| n["kind"] == "principal")
        .map(|n| n["label"].as_str().unwrap())
        .collect();
    assert_eq!(principals.len(), 3, "{principals:?}");
    for (req, who) in [
        (&rest_req, json!(["user:bob", "user:dave"])),
        (&pg_req, json!(["user:bob", "user:carol"])),
        (&mcp_req, json!(["user:carol"])),
    ] {
        let n = nodes
            .iter()
            .find(|n| n["request"] == json!(req))
            .unwrap_or_else(|| panic!("{req} in {v}"));
        assert_eq!(n["approved"]["by"], who, "{n}");
        assert!(n["entries"].as_array().unwrap().len() >= 3);
    }
    let edges = v["edges"].as_array().unwrap();
    let edge = |to: &str, kind: &str| {
        edges
            .iter()
            .find(|e| e["to"] == format!("dataset:{to}") && e["kind"] == kind)
    };
    assert!(
        edge("postgres://analytics/public.customers", "export").unwrap()["approved"].is_object()
    );
    assert!(edge("s3://reports/q3.csv", "write").is_some());
    assert!(
        edge("postgres://warehouse/customers", "export").unwrap()["approved"]["by"]
            == json!(["user:carol"])
    );
    assert!(
        edge("postgres://analytics/public.orders", "read").unwrap()["approved"].is_null(),
        "policy allowed the reads"
    );
    // Filters, and who may see what: alice owns report-bot only.
    assert_eq!(graph("user:audrey", "agent=agent:other-bot")["actions"], 2);
    assert_eq!(
        graph(
            "user:audrey",
            "environment=prod&dataset=postgres://warehouse/"
        )["actions"],
        2
    );
    let mine = graph("user:alice", "");
    assert!(
        mine["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "principal")
            .all(|n| n["label"] == "agent:report-bot"),
        "{mine}"
    );
    let (s, e) = g.call(
        "GET",
        "/v1/lineage/graph?from=2026-13-01",
        Some("user:audrey"),
        None,
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_period"))
    );
    // A malformed agent is refused; one in capitals is the same agent.
    let (s, e) = g.call(
        "GET",
        "/v1/lineage/graph?agent=bogus",
        Some("user:audrey"),
        None,
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_principal")),
        "{e}"
    );
    let lower = graph("user:audrey", "agent=agent:report-bot")["actions"].clone();
    assert!(lower.as_u64() > Some(0), "{lower}");
    assert_eq!(
        graph("user:audrey", "agent=Agent:Report-Bot")["actions"],
        lower
    );
    let (s, _) = g.call("GET", "/v1/lineage/graph", None, None);
    assert_eq!(s, 401);
    let (_, doc) = g.call("GET", "/openapi.json", None, None);
    assert!(doc["paths"]["/v1/lineage/graph"]["get"].is_object());

    // The page, in Chromium: an auditor signs in at the provider.
    let (from, to) = today();
    let (_chromedriver, browser) = start_chromium(d);
    let page = format!("{}/lineage?from={from}&to={to}", g.url);
    browser.goto(&page);
    browser.wait_for("the provider's sign-in form", |b| {
        b.url().starts_with(&issuer)
    });
    browser.type_into("input[name=sub]", "audrey");
    browser.click("form button[type=submit]");
    browser.wait_for("the lineage page", |b| b.source().contains("id=\"legend\""));
    let src = browser.source();
    for must in [
        "agent:report-bot",
        "agent:other-bot",
        "agent:mcp-bot",
        "approved by bob, dave",
        "approved by bob, carol",
        "approved by carol",
        "allowed by policy",
        "6 executed actions",
    ] {
        assert!(src.contains(must), "the page lacks {must}");
    }
    assert!(!src.contains("<script"), "no script on the page");
    browser.screenshot("lineage-1-day-of-three-agents.png");
    // A node links to its request; an agent's node narrows the graph.
    browser.goto(&format!(
        "{}/lineage?from={from}&to={to}&agent=agent:mcp-bot",
        g.url
    ));
    browser.wait_for("the filtered page", |b| {
        b.source().contains("2 executed actions")
    });
    assert!(browser
        .source()
        .contains(&format!("href=\"/requests/{mcp_req}\"")));
    browser.screenshot("lineage-2-one-agent.png");
    drop(idp);

    // OpenLineage: one event per executed action, valid against the schema.
    wait_until("six OpenLineage events", || {
        events.lock().unwrap().len() >= 6
    });
    std::thread::sleep(Duration::from_millis(500));
    let evs = events.lock().unwrap().clone();
    assert_eq!(evs.len(), 6, "{evs:#?}");
    let mut child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sinks/tests/openlineage/validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = evs.iter().map(|e| format!("{e}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pg_ev = evs
        .iter()
        .find(|e| e["run"]["facets"]["secondkey"]["request"] == json!(pg_req))
        .unwrap();
    assert_eq!(
        pg_ev["run"]["facets"]["secondkey"]["approvers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(pg_ev["run"]["facets"]["secondkey"]["log_index"]
        .as_u64()
        .is_some());
    assert_eq!(
        pg_ev["inputs"][0],
        json!({"namespace": "postgres://analytics", "name": "public.customers"})
    );

    // The usage report, from the data directory.
    let cfg = g.config.to_str().unwrap().to_string();
    let (code, csv, err) = cli(&[
        "report", "usage", "--config", &cfg, "--from", &from, "--to", &to, "--format", "csv",
    ]);
    assert_eq!(code, 0, "{err}");
    let row = csv
        .lines()
        .find(|l| {
            l.starts_with("agent:report-bot,,user:carol,postgres://analytics/public.customers,")
        })
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(
        row.contains(",0,0,1,0,1,user:bob user:dave,"),
        "exported once, held once: {row}"
    );
    let (code, json_out, _) = cli(&[
        "report",
        "usage",
        "--config",
        &cfg,
        "--from",
        &from,
        "--to",
        &to,
        "--agent",
        "Agent:Other-Bot",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "an id in capitals is the same agent");
    let rows: Value = serde_json::from_str(&json_out).unwrap();
    let copy_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dataset"] == "postgres://analytics/public.customers")
        .unwrap();
    assert_eq!(
        (copy_row["exported"].as_u64(), copy_row["rows"].as_u64()),
        (Some(1), Some(25)),
        "{rows}"
    );
    let (code, out, err) = cli(&[
        "report", "usage", "--config", &cfg, "--from", &from, "--to", &to, "--agent", "bogus",
    ]);
    assert!(
        code != 0 && out.is_empty() && err.contains("--agent \"bogus\""),
        "a malformed agent is refused, not answered with nothing: {err}"
    );
    let (code, _, err) = cli(&[
        "report", "usage", "--config", &cfg, "--from", &to, "--to", &from,
    ]);
    assert!(
        code != 0 && err.contains("--to must be after --from"),
        "{err}"
    );

    // The evidence pack: written, verified, and caught when edited.
    let evidence = |framework: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "evidence",
            "--config",
            &cfg,
            "--from",
            &from,
            "--to",
            &to,
            "--framework",
            framework,
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let pack = d.join("evidence");
    let pack_s = pack.to_str().unwrap();
    let (code, outp, err) = evidence("soc2", pack_s, &[]);
    assert_eq!(code, 0, "{err}");
    let vkey = outp.split('\'').nth(1).unwrap().to_string();
    for f in [
        "report.html",
        "report.pdf",
        "figures.json",
        "manifest.json",
        "VERIFY.txt",
        "bundle/checkpoint",
    ] {
        assert!(pack.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read(pack.join("report.pdf"))
        .unwrap()
        .starts_with(b"%PDF"));
    let figures: Value =
        serde_json::from_slice(&std::fs::read(pack.join("figures.json")).unwrap()).unwrap();
    assert_eq!(figures["privileged"].as_array().unwrap().len(), 3);
    assert_eq!(
        figures["totals"]["self_approvals_refused"], 3,
        "{}",
        figures["totals"]
    );
    assert_eq!(figures["totals"]["denied_by_policy"], 1);
    assert!(figures["policies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["policy_set"].as_str().unwrap().len() == 64));
    let html = std::fs::read_to_string(pack.join("report.html")).unwrap();
    for c in [
        "CC6.1", "CC6.2", "CC6.3", "CC7.2", "CC8.1", &rest_req, &pg_req, &mcp_req,
    ] {
        assert!(html.contains(c), "the report lacks {c}");
    }
    let verify = |dir: &str| cli(&["evidence", "verify", dir, "--key", &vkey]);
    // The period runs to tomorrow and the log ends today: every figure
    // matches, and the pack is reported incomplete (exit status 3).
    let (code, o, e) = verify(pack_s);
    assert_eq!(code, 3, "{o}{e}");
    assert!(o.contains("every figure"), "{o}");
    assert!(e.contains("INCOMPLETE: the log ends at"), "{e}");
    assert!(o.contains("report.pdf is NOT verified"), "{o}");
    let (code, _, e) = evidence(
        "fedramp-moderate",
        d.join("fedramp").to_str().unwrap(),
        &["--no-pdf"],
    );
    assert_eq!(code, 0, "{e}");
    let fed = std::fs::read_to_string(d.join("fedramp/report.html")).unwrap();
    for c in [
        "AC-2", "AC-3", "AC-5", "AC-6", "AU-2", "AU-3", "AU-6", "AU-9", "AU-10", "AU-12", "CM-3",
    ] {
        assert!(fed.contains(&format!("<strong>{c}</strong>")), "{c}");
    }
    assert_eq!(verify(d.join("fedramp").to_str().unwrap()).0, 3);
    // Edits: a number in the report; a figure; both consistently; the log.
    let copy = |name: &str| {
        let to = d.join(name);
        Command::new("cp")
            .args(["-r", pack_s, to.to_str().unwrap()])
            .status()
            .unwrap();
        to
    };
    let t1 = copy("t1");
    let n = figures["totals"]["approved"].as_u64().unwrap();
    let edited = html.replacen(
        &format!("<th>approved</th><td class=\"num\">{n}</td>"),
        &format!("<th>approved</th><td class=\"num\">{}</td>", n + 5),
        1,
    );
    assert_ne!(edited, html);
    std::fs::write(t1.join("report.html"), edited).unwrap();
    let (code, _, e) = verify(t1.to_str().unwrap());
    assert!(
        code != 0 && e.contains("report.html is not what the log's figures render to"),
        "{e}"
    );
    let t2 = copy("t2");
    let mut f2 = figures.clone();
    f2["totals"]["expired"] = json!(0);
    f2["privileged"].as_array_mut().unwrap().pop();
    std::fs::write(
        t2.join("figures.json"),
        serde_json::to_string_pretty(&f2).unwrap(),
    )
    .unwrap();
    let (code, _, e) = verify(t2.to_str().unwrap());
    assert!(
        code != 0 && e.contains("figures.json does not match") && e.contains("/privileged"),
        "{e}"
    );
    let t3 = copy("t3");
    let mut bundle_file = t3.join("bundle/tile/entries");
    while bundle_file.is_dir() {
        bundle_file = std::fs::read_dir(&bundle_file)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
    }
    let mut b = std::fs::read(&bundle_file).unwrap();
    let at = b.windows(9).position(|w| w == b"user:bob\"").unwrap();
    b[at + 5..at + 8].copy_from_slice(b"eve");
    std::fs::write(&bundle_file, b).unwrap();
    let (code, _, e) = verify(t3.to_str().unwrap());
    assert!(code != 0 && e.contains("does not verify"), "{e}");
    let t4 = copy("t4");
    std::fs::write(t4.join("report.pdf"), b"%PDF-1.4 forged").unwrap();
    let (code, _, e) = verify(t4.to_str().unwrap());
    assert!(code != 0 && e.contains("report.pdf"), "{e}");
    // Bad input changes nothing and says why.
    let (code, _, e) = evidence("iso27001", d.join("x").to_str().unwrap(), &[]);
    assert!(code != 0 && e.contains("soc2 or fedramp-moderate"), "{e}");
    assert!(!d.join("x").exists());
    let (code, _, e) = evidence("soc2", pack_s, &[]);
    assert!(code != 0 && e.contains("not empty"), "{e}");
    drop(up);
}
