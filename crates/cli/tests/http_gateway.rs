//! Black-box tests of the HTTP gateway: the real binary in front of a real
//! HTTP application (httpbin under gunicorn) reached with curl, Python's
//! httpx and raw sockets (the bypass corpus), and in front of a Kubernetes
//! API fixture (`crates/http/tests/python/k8s_fixture.py`: no API server
//! can run here) reached with the real kubectl. One gateway per test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const UPSTREAM_TOKEN: &str = "upstream-s3cret-7f9a";
const K8S_TOKEN: &str = "k8s-upstream-token-41c2";

const POLICIES: &str = r#"
@id("agents-read") permit(principal in Group::"agents", action in [Action::"http.read", Action::"k8s.read"], resource);
@id("agents-write") permit(principal in Group::"agents", action in [Action::"http.write", Action::"k8s.write", Action::"k8s.exec"], resource);
@id("agents-delete") permit(principal in Group::"agents", action in [Action::"http.delete", Action::"k8s.delete"], resource);
@id("prod-deletes-need-two")
@reason("deleting in production needs two data owners")
@review("data-owners")
@quorum("2")
forbid(principal, action in [Action::"http.delete", Action::"k8s.delete"], resource)
when { context.gateway has environment && context.gateway.environment == "prod" };
@id("no-recursive-rm")
@reason("no recursive deletes inside pods")
forbid(principal, action == Action::"k8s.exec", resource)
when { context.gateway has k8s && context.gateway.k8s has command && context.gateway.k8s.command.contains("-rf") };
"#;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("{what} exited with {s}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cmd`, a server that listens on `port`, and waits until it does.
fn serve(mut cmd: Command, port: u16, what: &str) -> Proc {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    wait_port(port, &mut child, what);
    Proc(child)
}

fn require(module: &str, install: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need {install} (./scripts/test installs it)"
    );
}

/// httpbin under gunicorn; its access log lists every request it served.
fn httpbin(dir: &Path) -> (Proc, u16, PathBuf) {
    require(
        "httpbin, gunicorn",
        "`python3 -m pip install httpbin gunicorn`",
    );
    let port = free_port();
    let log = dir.join("httpbin-access.log");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "gunicorn", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--workers", "2", "--threads", "4", "--access-logfile"])
        .arg(&log)
        .args([
            "--access-logformat",
            "%(m)s %(U)s?%(q)s %(s)s",
            "httpbin:app",
        ]);
    (serve(cmd, port, "httpbin"), port, log)
}

fn served(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn served_matching(log: &Path, needle: &str) -> usize {
    served(log).iter().filter(|l| l.contains(needle)).count()
}

/// How many lines of the upstream's access log hold `needle`, once it has
/// caught up: the server writes its line after the answer has left, so
/// this waits (up to 10 s) for `want`, then a moment more for any extra.
fn served_eventually(log: &Path, needle: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_matching(log, needle) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    served_matching(log, needle)
}

fn gateway_with(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Gateway {
    std::fs::write(dir.join("upstream.token"), format!("{UPSTREAM_TOKEN}\n")).unwrap();
    let extra = format!(
        "\n[[environments]]\nname = \"prod\"\nresources = [\"https://billing/anything/invoices/*\", \"https://billing-retry/*\", \"https://billing-short/*\", \"k8s://prod/prod/*\"]\n{extra}"
    );
    Gateway::start_full(dir, POLICIES, "", &extra, env)
}

fn billing(name: &str, port: u16, keys: &str) -> String {
    format!(
        r#"
[[http]]
name = "{name}"
upstream = "http://127.0.0.1:{port}"
principals = ["group:agents"]
{keys}
[[http.routes]]
match = "GET|HEAD /get"
operation = "read"
[[http.routes]]
match = "GET /headers"
operation = "read"
[[http.routes]]
match = "GET /bearer"
operation = "read"
[[http.routes]]
match = "GET /anything/invoices/**"
operation = "read"
[[http.routes]]
match = "POST /anything/invoices/*/refunds"
operation = "write"
reads = ["billing://invoices/{{1}}"]
writes = ["billing://refunds"]
[[http.routes]]
match = "DELETE /anything/invoices/*"
operation = "delete"
writes = ["billing://invoices/{{1}}"]
"#
    )
}

/// The credential section of an upstream that holds the bearer token.
const CREDENTIAL: &str = "[http.credentials]\ntype = \"bearer\"\nvalue_file = \"upstream.token\"\n";

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-D", "/dev/stderr", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    let headers = String::from_utf8_lossy(&out.stderr).to_string();
    let status = headers
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        String::from_utf8_lossy(&out.stdout).to_string(),
        headers,
    )
}

fn bearer(who: &str) -> String {
    format!("Authorization: Bearer {}", token_of(who))
}

/// Sends raw bytes and reads the whole answer (the connection is closed
/// by the request or by the gateway).
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn problem_code(answer: &str) -> String {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn pending(g: &Gateway) -> Vec<Value> {
    let (s, v) = g.call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn wait_pending(g: &Gateway, resource: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = pending(g)
            .into_iter()
            .find(|r| r["action"]["resource"] == resource)
        {
            return r["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no pending request for {resource}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log's size, from its signed checkpoint.
fn log_size(g: &Gateway) -> u64 {
    let note = g.text("/v1/log/checkpoint");
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("a checkpoint")
}

fn wait_log(g: &Gateway, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = g.log_entries().into_iter().find(&f) {
            return e;
        }
        assert!(Instant::now() < deadline, "the entry was never logged");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn http_gateway_with_curl_httpx_and_httpbin() {
    let tmp = tempfile::tempdir().unwrap();
    let (_httpbin, port, access) = httpbin(tmp.path());
    // billing-short holds no credential of its own.
    let extra = format!(
        "{}{CREDENTIAL}{}{CREDENTIAL}{}",
        billing("billing", port, "hold_timeout = \"60s\""),
        billing("billing-retry", port, "hold = \"retry\""),
        billing(
            "billing-short",
            port,
            "hold_timeout = \"1s\"\nretry_after_seconds = 7"
        ),
    );
    let g = gateway_with(tmp.path(), &extra, &[]);
    let base = format!("{}/http/billing", g.url);
    let agent = bearer("agent:report-bot");

    // The API's OpenAPI document describes the relay under every method it
    // relays, each operation with an id of its own.
    let (s, body, _) = curl(&[&format!("{}/openapi.json", g.url)]);
    assert_eq!(s, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let relay = &doc["paths"]["/http/{upstream}/{path}"];
    for m in ["get", "head", "post", "put", "patch", "delete", "options"] {
        assert!(relay[m]["responses"]["405"].is_object(), "{m}: {relay}");
    }
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");

    // An allowed read: forwarded with the gateway's credential, which never
    // comes back (httpbin echoes it) and is not the agent's token.
    let (s, body, _) = curl(&["-H", &agent, &format!("{base}/bearer")]);
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["authenticated"], true, "httpbin got a bearer token: {v}");
    assert!(
        !body.contains(UPSTREAM_TOKEN),
        "the credential came back: {body}"
    );
    let (s, body, _) = curl(&[
        "-H",
        &agent,
        "-H",
        "Host: evil.example",
        "-H",
        "X-Forwarded-Host: evil.example",
        "-H",
        "Cookie: a=b",
        &format!("{base}/headers"),
    ]);
    assert_eq!(s, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    let h = &echoed["headers"];
    assert_eq!(
        h["Authorization"],
        "*".repeat(format!("Bearer {UPSTREAM_TOKEN}").len()),
        "{h}"
    );
    assert_eq!(
        h["Host"],
        format!("127.0.0.1:{port}"),
        "Host is the upstream's, whatever the client says"
    );
    assert!(
        h.get("X-Forwarded-Host").is_none() && h.get("Cookie").is_none(),
        "{h}"
    );
    assert!(
        !body.contains(&token_of("agent:report-bot")),
        "the client's Authorization was forwarded"
    );

    // Without a credential configured, nothing authorizes the request
    // upstream: the client's own Authorization is never forwarded.
    let (s, body, _) = curl(&[
        "-H",
        &agent,
        &format!("{}/http/billing-short/headers", g.url),
    ]);
    assert_eq!(s, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert!(echoed["headers"].get("Authorization").is_none(), "{echoed}");

    // Not authenticated, or not allowed on this upstream.
    let (s, body, headers) = curl(&[&format!("{base}/get")]);
    assert_eq!(s, 401, "{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("application/problem+json"),
        "{headers}"
    );
    let (s, body, _) = curl(&["-H", &bearer("user:erin"), &format!("{base}/get")]);
    assert_eq!(
        (
            s,
            serde_json::from_str::<Value>(&body).unwrap()["code"].clone()
        ),
        (403, json!("not_allowed"))
    );

    // A route no rule matches is the most privileged class: denied here,
    // with the decision id, and never forwarded.
    let (s, body, _) = curl(&["-H", &agent, &format!("{base}/status/418")]);
    assert_eq!(s, 403, "{body}");
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["code"], "denied");
    assert!(p["decision"].as_str().unwrap().starts_with("act_"), "{p}");
    assert_eq!(served_matching(&access, "/status/418"), 0);
    let denied = wait_log(&g, |e| {
        e["event"] == "action.denied"
            && e["payload"]["action"]["resource"] == "https://billing/status/418"
    });
    assert_eq!(
        denied["payload"]["action"]["operation"], "admin",
        "{denied}"
    );
    // The client's address, as the gateway observed it: a fact.
    assert_eq!(
        denied["payload"]["facts"]["source_ip"], "127.0.0.1",
        "{denied}"
    );

    // httpx: a JSON write, its lineage and its recorded result.
    let script = format!(
        r#"
import httpx, json, sys
c = httpx.Client(base_url="{base}", headers={{"Authorization": "Bearer {tok}"}}, timeout=30)
r = c.post("/anything/invoices/in_1/refunds", json={{"amount": 500}}, params={{"reason": "duplicate"}})
print(r.status_code, json.dumps(r.json()["json"]), r.json()["args"]["reason"])
bad = c.post("/anything/invoices/in_1/refunds", content=b'{{"amount": 1, "amount": 900000}}', headers={{"content-type": "application/json"}})
print(bad.status_code, bad.headers["content-type"], bad.json()["code"])
bom = c.post("/anything/invoices/in_1/refunds", content=b'\xef\xbb\xbf{{"amount": 1}}', headers={{"content-type": "application/json"}})
print(bom.status_code, bom.json()["code"])
"#,
        tok = token_of("agent:report-bot")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines,
        vec![
            "200 {\"amount\": 500} duplicate",
            "400 application/problem+json invalid_json",
            "400 invalid_json",
        ]
    );
    assert_eq!(
        served_eventually(&access, "POST /anything/invoices/in_1/refunds", 1),
        1,
        "only the valid one reached httpbin"
    );
    let result = wait_log(&g, |e| {
        e["event"] == "action.result"
            && e["payload"]["summary"]["http_status"] == 200
            && e["payload"]["reads"] == json!(["billing://invoices/in_1"])
    });
    let summary = &result["payload"]["summary"];
    assert!(
        summary["bytes"].as_u64().unwrap() > 0 && summary["duration_ms"].as_f64().is_some(),
        "{summary}"
    );
    let (s, lineage) = g.call(
        "GET",
        "/v1/lineage?principal=agent:report-bot",
        Some("agent:report-bot"),
        None,
    );
    assert_eq!(s, 200, "{lineage}");
    assert!(
        lineage.to_string().contains("billing://refunds"),
        "{lineage}"
    );
    let all = g
        .log_entries()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(
        !all.contains(UPSTREAM_TOKEN),
        "the credential reached the log"
    );

    // Wait mode: a production DELETE is held while two reviewers approve
    // through the API, then runs once.
    let url = format!("{base}/anything/invoices/in_9");
    let agent2 = agent.clone();
    let held = std::thread::spawn(move || curl(&["-X", "DELETE", "-H", &agent2, &url]));
    let id = wait_pending(&g, "https://billing/anything/invoices/in_9");
    assert_eq!(
        served_matching(&access, "DELETE /anything/invoices/in_9"),
        0,
        "held, not run"
    );
    let (s, v) = g.review("user:bob", &id, "approve");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "pending", "one approval of two: {v}");
    let (s, v) = g.review("user:bob", &id, "approve");
    assert_eq!(s, 409, "the same reviewer twice does not count: {v}");
    let (s, v) = g.review("user:carol", &id, "approve");
    assert_eq!((s, v["state"].clone()), (200, json!("approved")), "{v}");
    let (s, body, _) = held.join().unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        served_eventually(&access, "DELETE /anything/invoices/in_9", 1),
        1
    );
    let (s, v) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!((s, v["state"].clone()), (200, json!("executed")), "{v}");

    // Retry mode: a problem naming the request at once; the identical
    // request after approval runs exactly once; a changed one does not.
    let rbase = format!("{}/http/billing-retry", g.url);
    let (s, body, headers) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &agent,
        &format!("{rbase}/anything/invoices/in_5?force=true"),
    ]);
    assert_eq!(s, 409, "{body}");
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 5"),
        "{headers}"
    );
    let p: Value = serde_json::from_str(&body).unwrap();
    let rid = p["request"].as_str().unwrap().to_string();
    assert_eq!(p["code"], "approval_required");
    assert!(p["url"].as_str().unwrap().ends_with(&rid), "{p}");
    let (s, body, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &agent,
        &format!("{rbase}/anything/invoices/in_5?force=true"),
    ]);
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s, again["request"].clone()),
        (409, json!(rid)),
        "still the same request: {body}"
    );
    for who in ["user:carol", "user:dave"] {
        let (s, v) = g.review(who, &rid, "approve");
        assert_eq!(s, 200, "{v}");
    }
    let (s, body, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &agent,
        &format!("{rbase}/anything/invoices/in_5?force=false"),
    ]);
    assert_eq!(s, 409, "a changed request is a new one: {body}");
    // Six identical retries at once: the approval is used exactly once.
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let (a, u) = (
                agent.clone(),
                format!("{rbase}/anything/invoices/in_5?force=true"),
            );
            std::thread::spawn(move || curl(&["-X", "DELETE", "-H", &a, &u]).0)
        })
        .collect();
    let mut codes: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![200, 409, 409, 409, 409, 409],
        "one ran; the rest are held anew"
    );
    let (s, _, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &agent,
        &format!("{rbase}/anything/invoices/in_5?force=true"),
    ]);
    assert_eq!(s, 409, "the approval was used up");
    assert_eq!(
        served_eventually(&access, "DELETE /anything/invoices/in_5?force=true", 1),
        1
    );
    assert_eq!(
        served_matching(&access, "DELETE /anything/invoices/in_5?force=false"),
        0
    );

    // Wait mode past its limit: 202 with the request and Retry-After.
    let (s, body, headers) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &agent,
        &format!("{}/http/billing-short/anything/invoices/in_7", g.url),
    ]);
    assert_eq!(s, 202, "{body}");
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 7"),
        "{headers}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["request"]["state"], "pending");
    assert!(v["request"]["url"]
        .as_str()
        .unwrap()
        .contains(v["request"]["id"].as_str().unwrap()));
    assert_eq!(served_matching(&access, "/anything/invoices/in_7"), 0);

    // The last run's result is recorded off its path: once it is, the log
    // holds still.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = g.call(
            "GET",
            &format!("/v1/requests/{rid}"),
            Some("user:bob"),
            None,
        );
        if v["state"] == "executed" {
            break;
        }
        assert!(Instant::now() < deadline, "the run was never recorded: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    bypass_corpus(&g, &access);
}

/// The bypass corpus, sent as raw bytes: each trick is classified by what
/// httpbin (werkzeug) would do with it; what could be read two ways is
/// refused with a problem naming it, and nothing reaches the upstream.
fn bypass_corpus(g: &Gateway, access: &Path) {
    let addr = g.url.trim_start_matches("http://").to_string();
    let tok = token_of("agent:report-bot");
    let before = served(access).len();
    let log_before = log_size(g);
    let pending_before = pending(g).len();
    let req = |line: &str, headers: &str, body: &str| {
        format!(
            "{line} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for (line, headers, body, status, code) in [
        ("GET /http/billing/anything/invoices/../../status/200", "", "", 400, "dot_segment"),
        ("GET /http/billing/anything/invoices/%2e%2e/%2e%2e/status/200", "", "", 400, "dot_segment"),
        ("GET /http/billing/anything/invoices/.%2E/x", "", "", 400, "dot_segment"),
        ("GET /http/billing/anything//invoices/x", "", "", 400, "empty_segment"),
        ("GET /http/billing/anything/invoices/x;jsessionid=1", "", "", 400, "path_parameter"),
        ("GET /http/billing/anything/invoices/..;/..;/status/200", "", "", 400, "path_parameter"),
        ("GET /http/billing/anything/invoices%2Fx", "", "", 400, "encoded_slash"),
        ("GET /http/billing/anything/invoices/x%5C..%5Cy", "", "", 400, "encoded_slash"),
        ("GET /http/billing/anything/invoices/x.", "", "", 400, "trailing_dot"),
        ("GET /http/billing/anything/invoices/x?a=1&a=2", "", "", 400, "ambiguous_query"),
        ("GET /http/billing/anything/invoices/x?a=1&A=2", "", "", 400, "ambiguous_query"),
        ("GET /http/billing/anything/invoices/x?a=1;b=2", "", "", 400, "query_semicolon"),
        ("GET /http/billing/anything/invoices/x?_method=DELETE", "", "", 400, "method_override"),
        ("GET /http/billing/anything/invoices/x", "X-HTTP-Method-Override: DELETE\r\n", "", 400, "method_override"),
        ("POST /http/billing/anything/invoices/x/refunds", "X-HTTP-Method: DELETE\r\n", "", 400, "method_override"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Type: application/x-www-form-urlencoded\r\n", "_method=DELETE", 400, "method_override"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Type: application/json\r\n", "{\"a\":1,\"a\":2}", 400, "invalid_json"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Type: application/json\r\n", "{\"a\":1 /* c */}", 400, "invalid_json"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Type: application/json\r\n", "\u{feff}{\"a\":1}", 400, "invalid_json"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Type: application/json\r\nContent-Type: text/plain\r\n", "{}", 400, "ambiguous_content_type"),
        ("POST /http/billing/anything/invoices/x/refunds", "Content-Encoding: gzip\r\nContent-Type: application/json\r\n", "{}", 415, "encoded_body"),
        ("GET /http/billing/get", "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n", "", 400, "upgrade_refused"),
        ("GET http://evil.example/http/billing/get", "", "", 400, "absolute_form"),
        ("GET /http/billing/get", "Host: evil.example\r\n", "", 400, "ambiguous_host"),
        ("GET /http/billing/get", "Impersonate-User: admin\r\n", "", 400, "impersonation"),
        // Two credentials: which one a proxy in front reads is anyone's guess.
        ("GET /http/billing/get", "Authorization: Bearer bogus\r\n", "", 401, "unauthorized"),
        ("TRACE /http/billing/get", "", "", 405, "method_not_supported"),
    ] {
        let answer = raw(&addr, req(line, headers, body).as_bytes());
        assert_eq!((status_of(&answer), problem_code(&answer)), (status, code.to_string()), "{line} {headers:?}: {answer}");
        if status == 405 {
            // RFC 9110 §15.5.6: a 405 says which methods are relayed.
            assert!(
                answer.to_ascii_lowercase().contains("\r\nallow: get, head, post, put, patch, delete, options\r\n"),
                "{answer}"
            );
        }
    }
    // Oversized: a declared length over max_body_bytes is refused before
    // the body is read.
    let big = format!(
        "POST /http/billing/anything/invoices/x/refunds HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n{{"
    );
    let answer = raw(&addr, big.as_bytes());
    assert_eq!(
        (status_of(&answer), problem_code(&answer)),
        (413, "body_too_large".to_string()),
        "{answer}"
    );
    // Malformed and hostile requests change nothing: no log entry, no request.
    assert_eq!(
        log_size(g),
        log_before,
        "refusals are not decisions: the log did not grow"
    );
    assert_eq!(pending(g).len(), pending_before);
    // Case: werkzeug's routes are case-sensitive, so /GET is another route;
    // no rule matches it here: the most privileged class, denied.
    let answer = raw(&addr, req("GET /http/billing/GET", "", "").as_bytes());
    assert_eq!(
        (status_of(&answer), problem_code(&answer)),
        (403, "denied".to_string()),
        "{answer}"
    );
    // Request smuggling: Content-Length with Transfer-Encoding is read by
    // the chunked framing alone and the connection closed (RFC 9112 §6.1),
    // so the request hidden behind it is never read; the upstream gets a
    // body framed by its length.
    let smuggle = format!(
        "POST /http/billing/anything/invoices/s1/refunds HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nContent-Type: application/json\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\nGET /http/billing/get?smuggled=1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n"
    );
    let answer = raw(&addr, smuggle.as_bytes());
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer, the smuggled request unread: {answer}"
    );
    for odd in ["xchunked", "chunked, identity", "identity"] {
        let bad = format!(
            "POST /http/billing/anything/invoices/s2/refunds HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: {odd}\r\n\r\n0\r\n\r\n"
        );
        let answer = raw(&addr, bad.as_bytes());
        assert_eq!(status_of(&answer), 400, "TE {odd:?}: {answer}");
    }
    served_eventually(access, "POST /anything/invoices/s1/refunds", 1);
    let after = served(access);
    let reached: Vec<&String> = after[before..].iter().collect();
    assert_eq!(
        reached.len(),
        1,
        "only the smuggling carrier reached httpbin: {reached:?}"
    );
    assert!(
        reached[0].contains("POST /anything/invoices/s1/refunds"),
        "{reached:?}"
    );
}

fn k8s_fixture(dir: &Path) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let log = dir.join("k8s-requests.jsonl");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../http/tests/python/k8s_fixture.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(port.to_string())
        .env("K8S_FIXTURE_LOG", &log)
        .env("K8S_FIXTURE_TOKEN", K8S_TOKEN)
        .env("K8S_FIXTURE_RELEASE", dir.join("release"));
    let fixture = serve(cmd, port, "the Kubernetes fixture");
    // An open port is not proof enough that it is this fixture listening
    // (a port picked free can be taken meanwhile by another test's process
    // that later goes away): it must answer as the fixture does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut answer = String::new();
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                c,
                "GET /version HTTP/1.0\r\nAuthorization: Bearer {K8S_TOKEN}\r\n\r\n"
            );
            let _ = c.read_to_string(&mut answer);
        }
        if answer.starts_with("HTTP/1.1 200") && answer.contains("v1.32.0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Kubernetes fixture does not answer on {port}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (fixture, port, log)
}

fn k8s_requests(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A body refused from its declared length on an HTTP gateway's own
/// listener reaches a client that writes the whole body before reading the
/// answer, under load too: the listener closes with a lingering close, as
/// the main listener does (a reset would lose the answer; see
/// `gateway.rs`).
#[test]
fn a_body_refused_on_an_own_listener_is_answered_to_a_client_still_sending_it() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = free_port();
    // Nothing is forwarded: the upstream is never reached.
    let extra = format!(
        "\n[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:9\"\nlisten = \"127.0.0.1:{listen}\"\nprincipals = [\"agent:report-bot\"]\n"
    );
    let _g = Gateway::start_extra(tmp.path(), POLICIES, &extra);
    let (n, wrong) = send_whole_bodies(
        "HTTP/1.1 413 ",
        &format!("127.0.0.1:{listen}"),
        "/invoices",
        &bearer("agent:report-bot"),
        4 << 20,
        8,
        15,
    );
    assert!(wrong.is_empty(), "{} of {n}: {wrong:?}", wrong.len());
}

/// A JSON body refused before any decision says what is wrong with the
/// body (not with an "action" the client never sent), and says once that
/// nothing was forwarded.
#[test]
fn a_refused_json_body_is_named_as_the_body_and_nothing_forwarded_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing is forwarded: the upstream is never reached.
    let extra = "\n[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:9\"\nprincipals = [\"agent:report-bot\"]\n";
    let g = Gateway::start_extra(tmp.path(), POLICIES, extra);
    let addr = g.url.trim_start_matches("http://").to_string();
    let body = "{\"a\":1,\"a\":2}";
    let answer = raw(
        &addr,
        format!(
            "POST /http/billing/invoices HTTP/1.1\r\nHost: {addr}\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            bearer("agent:report-bot"),
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(
        (status_of(&answer), problem_code(&answer)),
        (400, "invalid_json".to_string()),
        "{answer}"
    );
    let problem: Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("JSON body"), "{detail}");
    assert!(detail.contains("\"a\" appears twice"), "{detail}");
    assert!(!detail.contains("action"), "{detail}");
    assert_eq!(
        detail
            .to_ascii_lowercase()
            .matches("nothing was forwarded")
            .count(),
        1,
        "{detail}"
    );
}

/// A route rule naming a method the gateway never relays (a typo) would
/// never match, leaving its requests to a later, perhaps wider, rule: the
/// configuration is refused, naming the key.
#[test]
fn a_route_with_a_method_the_gateway_never_relays_refuses_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "\n[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:9\"\nprincipals = [\"agent:report-bot\"]\n[[http.routes]]\nmatch = \"DELTE /invoices/*\"\noperation = \"delete\"\n[[http.routes]]\nmatch = \"* /invoices/**\"\noperation = \"read\"\n";
    let config = write_config_extra(tmp.path(), free_port(), POLICIES, extra);
    let mut c = Command::new(BIN);
    c.args(["serve", "--config"]).arg(&config);
    // It must end: a gateway that started would not.
    let (code, _, err) = Watched::spawn(c).finish(30);
    let err = err.join("\n");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("http[0].routes[0].match") && err.contains("\"DELTE\""),
        "{err}"
    );
}

/// An `openapi` document that is not strict JSON is refused as the
/// document it is, not as an "action".
#[test]
fn an_openapi_document_that_is_not_strict_json_is_named_as_the_document() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("billing-openapi.json");
    std::fs::write(&doc, r#"{"openapi":"3.0.3","paths":{},"paths":{}}"#).unwrap();
    let extra = format!(
        "\n[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:9\"\nprincipals = [\"agent:report-bot\"]\nopenapi = \"{}\"\n",
        doc.display()
    );
    let config = write_config_extra(tmp.path(), free_port(), POLICIES, &extra);
    let mut c = Command::new(BIN);
    c.args(["serve", "--config"]).arg(&config);
    let (code, _, err) = Watched::spawn(c).finish(30);
    let err = err.join("\n");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("http[0].openapi")
            && err.contains("not a JSON OpenAPI document")
            && err.contains("\"paths\" appears twice"),
        "{err}"
    );
    assert!(!err.contains("action"), "{err}");
}

/// A Secret holding the gateway's own cluster token (a service-account
/// token Secret) comes back with the token masked, though the API sends it
/// base64-encoded; other secrets' data pass unchanged.
#[test]
fn a_secret_holding_the_gateways_own_token_comes_back_masked() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let (_fixture, port, _requests) = k8s_fixture(tmp.path());
    let listen = free_port();
    let extra = format!(
        r#"
[[http]]
name = "k8s-prod"
upstream = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{listen}"
profile = "kubernetes"
cluster = "prod"
principals = ["agent:report-bot"]
[http.credentials]
type = "bearer"
value_env = "K8S_UPSTREAM_TOKEN"
"#
    );
    let policies = format!(
        "{POLICIES}\n@id(\"agents-export\") permit(principal in Group::\"agents\", action == Action::\"k8s.export\", resource);\n"
    );
    let g = Gateway::start_full(
        tmp.path(),
        &policies,
        "",
        &extra,
        &[("K8S_UPSTREAM_TOKEN", K8S_TOKEN)],
    );
    let get = |name: &str| {
        let (s, body, _) = curl(&[
            "-H",
            &bearer("agent:report-bot"),
            &format!("http://127.0.0.1:{listen}/api/v1/namespaces/prod/secrets/{name}"),
        ]);
        assert_eq!(s, 200, "{body}");
        body
    };
    let body = get("gateway-token");
    let encoded = base64::engine::general_purpose::STANDARD.encode(K8S_TOKEN);
    assert!(!body.contains(&encoded), "{body}");
    assert!(!body.contains(K8S_TOKEN), "{body}");
    let secret: Value = serde_json::from_str(&body).unwrap();
    let token = secret["data"]["token"].as_str().unwrap();
    assert_eq!(token.len(), encoded.len(), "framing kept: {body}");
    assert!(token.contains("****************"), "{token}");
    // The masked entry is on the record of the call.
    let result = wait_log(&g, |e| {
        e["event"] == "action.result" && e["payload"]["summary"]["masked"].as_u64().unwrap_or(0) > 0
    });
    assert!(result["payload"].to_string().find(&encoded).is_none());
    let db: Value = serde_json::from_str(&get("db")).unwrap();
    assert_eq!(db["data"]["password"], "aHVudGVyMg==");
}

struct Kube {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kube {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG");
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cmd(args).output().expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

#[test]
fn kubectl_through_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let (_fixture, port, requests) = k8s_fixture(tmp.path());
    let (listen, listen_short) = (free_port(), free_port());
    // kubectl sends its token only over TLS: the gateway's listener serves
    // a certificate the kubeconfig trusts.
    let (cert, key) = (tmp.path().join("gw.pem"), tmp.path().join("gw.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=secondkey-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // One cluster behind two listeners: one holds up to a minute, the
    // other a second (so a hold times out within the test).
    let upstream = |name: &str, listen: u16, holds: &str| {
        format!(
            r#"
[[http]]
name = "{name}"
upstream = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{listen}"
profile = "kubernetes"
cluster = "prod"
principals = ["agent:report-bot"]
{holds}
[http.listen_tls]
cert_file = "gw.pem"
key_file = "gw.key"
[http.credentials]
type = "bearer"
value_env = "K8S_UPSTREAM_TOKEN"
"#
        )
    };
    let extra = upstream("k8s-prod", listen, "hold_timeout = \"60s\"")
        + &upstream(
            "k8s-short",
            listen_short,
            "hold_timeout = \"1s\"\nretry_after_seconds = 7",
        );
    let g = gateway_with(tmp.path(), &extra, &[("K8S_UPSTREAM_TOKEN", K8S_TOKEN)]);
    // The kubeconfig an agent gets: the gateway's address and the agent's
    // secondkey token; the cluster's token stays in the gateway.
    let kubeconfig = |file: &str, listen: u16, namespace: &str| {
        let path = tmp.path().join(file);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://127.0.0.1:{listen}\n    certificate-authority: {}\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: agent\n    namespace: {namespace}\ncurrent-context: prod\nusers:\n- name: agent\n  user:\n    token: {}\n",
                cert.display(),
                token_of("agent:report-bot")
            ),
        )
        .unwrap();
        path
    };
    let kube = Kube {
        kubeconfig: kubeconfig("kubeconfig", listen, "default"),
        home: tmp.path().join("home"),
    };
    std::fs::create_dir_all(&kube.home).unwrap();

    let (ok, out, err) = kube.run(&["get", "pods"]);
    assert!(ok, "{err}");
    assert!(out.contains("web-1") && out.contains("Running"), "{out}");
    let (ok, out, err) = kube.run(&["get", "pod", "web-1", "-o", "json"]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["metadata"]["name"],
        "web-1"
    );

    // Reading a secret is an export: no policy permits it.
    let (ok, _, err) = kube.run(&["get", "secret", "db"]);
    // kubectl reads a Kubernetes Status, so it prints the decision.
    assert!(!ok, "{err}");
    assert!(
        err.contains("Error from server (Forbidden): denied by secondkey (decision act_"),
        "{err}"
    );
    // curl (Accept: */*) gets the RFC 9457 problem.
    let (s, body, _) = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-H",
        &bearer("agent:report-bot"),
        &format!("https://127.0.0.1:{listen}/api/v1/namespaces/default/secrets/db"),
    ]);
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((s, p["code"].clone()), (403, json!("denied")), "{body}");
    assert_eq!(p["policies"], json!([]), "no policy permits an export: {p}");
    // A no-op dry-run patch is answered with the whole secret: an export
    // too, though the agent may write.
    let (ok, _, err) = kube.run(&["patch", "secret", "db", "-p", "{}", "--dry-run=server"]);
    assert!(
        !ok && err.contains("Error from server (Forbidden): denied by secondkey"),
        "{err}"
    );
    assert!(!k8s_requests(&requests)
        .iter()
        .any(|r| r["path"].as_str().unwrap().contains("/secrets")));

    let manifest = tmp.path().join("api.yaml");
    std::fs::write(&manifest, "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: default\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: api}\n  template:\n    metadata:\n      labels: {app: api}\n    spec:\n      containers:\n      - name: app\n        image: nginx:1.27\n").unwrap();
    let (ok, out, err) = kube.run(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        ok && out.contains("deployment.apps/api created"),
        "{out} {err}"
    );
    let (ok, out, err) = kube.run(&["scale", "deployment", "web", "--replicas=3"]);
    assert!(ok && out.contains("scaled"), "{out} {err}");
    let (ok, out, err) = kube.run(&["rollout", "restart", "deployment/web"]);
    assert!(ok && out.contains("restarted"), "{out} {err}");

    // exec: the upgrade passes once allowed; the decision sees the command.
    let (ok, out, err) = kube.run(&["exec", "web-1", "-c", "app", "--", "ls", "/"]);
    assert!(ok, "{err}");
    assert_eq!(out, "ran: ls / in app\n");
    let execs = wait_log(&g, |e| {
        e["event"] == "action.result" && e["payload"]["summary"]["upgraded"] == true
    });
    assert!(
        execs["payload"]["summary"]["bytes"].as_u64().unwrap() > 0,
        "{execs}"
    );
    let (ok, _, err) = kube.run(&["exec", "web-1", "--", "rm", "-rf", "/data"]);
    // The upgrade sends no Accept: its refusal is a Status all the same.
    assert!(
        !ok && err.contains("Error from server (Forbidden)") && err.contains("no-recursive-rm"),
        "{err}"
    );
    let execs: Vec<Value> = k8s_requests(&requests)
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/exec"))
        .collect();
    assert_eq!(execs.len(), 1, "only the allowed exec reached the cluster");
    // Sent as every other request is: its target in origin form (path and
    // query), not the absolute URI.
    let target = execs[0]["target"].as_str().unwrap();
    assert!(target.starts_with("/api/v1/namespaces/"), "{target}");

    // A watch and logs -f stream: the first event and line arrive while
    // their streams are open (the fixture holds the rest until released).
    let mut watch = Command::new("curl")
        .args([
            "-sN",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &bearer("agent:report-bot"),
        ])
        .arg(format!(
            "https://127.0.0.1:{listen}/api/v1/namespaces/default/pods?watch=true"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&events.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["type"].clone(), first["object"]["kind"].clone()),
        (json!("ADDED"), json!("Pod"))
    );
    let mut follow = kube
        .cmd(&["logs", "-f", "web-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "line 1: server started");
    std::fs::write(tmp.path().join("release"), "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "line 2: after release");
    assert!(follow.wait().unwrap().success());
    let next: Value = serde_json::from_str(&events.next().unwrap().unwrap()).unwrap();
    assert_eq!(next["type"], "MODIFIED");
    assert!(watch.wait().unwrap().success());

    // A production DELETE is held until two data owners approve, then
    // runs once; kubectl simply waits.
    let del = kube
        .cmd(&["delete", "deployment", "web", "-n", "prod", "--wait=false"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_pending(&g, "k8s://prod/prod/deployments.apps/web");
    let deletes = |r: &Vec<Value>| {
        r.iter()
            .filter(|r| {
                r["method"] == "DELETE"
                    && r["path"] == "/apis/apps/v1/namespaces/prod/deployments/web"
            })
            .count()
    };
    assert_eq!(deletes(&k8s_requests(&requests)), 0);
    let (s, v) = g.review("agent:rogue-bot", &id, "approve");
    assert_eq!(s, 403, "agents never review: {v}");
    for who in ["user:bob", "user:carol"] {
        let (s, v) = g.review(who, &id, "approve");
        assert_eq!(s, 200, "{v}");
    }
    let out = del.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps \"web\" deleted"));
    assert_eq!(deletes(&k8s_requests(&requests)), 1, "runs once");

    // Held past hold_timeout: a Kubernetes client gets a `Status` (reason
    // Timeout, retryAfterSeconds), so kubectl prints why and fails; curl
    // asking for JSON reads the same; nothing reached the cluster.
    let kube_short = Kube {
        kubeconfig: kubeconfig("kubeconfig-short", listen_short, "prod"),
        home: kube.home.clone(),
    };
    let (ok, out, err) = kube_short.run(&["delete", "deployment", "api", "--wait=false"]);
    assert!(!ok, "{out} {err}");
    assert!(
        err.contains("Error from server (Timeout)") && err.contains("awaits approval"),
        "{err}"
    );
    let (s, body, headers) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &bearer("agent:report-bot"),
        "-H",
        "Accept: application/json",
        "--cacert",
        cert.to_str().unwrap(),
        &format!("https://127.0.0.1:{listen_short}/apis/apps/v1/namespaces/prod/deployments/api"),
    ]);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        (
            &st["kind"],
            &st["status"],
            &st["reason"],
            &st["details"]["retryAfterSeconds"]
        ),
        (
            &json!("Status"),
            &json!("Failure"),
            &json!("Timeout"),
            &json!(7)
        ),
        "{st}"
    );
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 7"),
        "{headers}"
    );
    let api_deletes = k8s_requests(&requests)
        .iter()
        .filter(|r| {
            r["method"] == "DELETE" && r["path"].as_str().unwrap().ends_with("/deployments/api")
        })
        .count();
    assert_eq!(api_deletes, 0, "held: nothing reached the cluster");

    // Every request reached the cluster with the gateway's credential.
    let all = k8s_requests(&requests);
    assert!(
        all.iter()
            .all(|r| r["authorization"] == format!("Bearer {K8S_TOKEN}")),
        "{all:?}"
    );
    let log = g
        .log_entries()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(!log.contains(K8S_TOKEN));
}
