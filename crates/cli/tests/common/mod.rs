//! Harness for black-box tests: starts the real `secondkey` binary on a free
//! port with a throwaway data directory, and talks to it over HTTP.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_secondkey");

pub const POLICIES: &str = r#"
@id("agents-read")
permit(principal in Group::"agents", action == Action::"sql.read", resource);

@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-two-owners")
@review("data-owners")
@quorum("2")
@ttl("1h")
@grant_ttl("5m")
forbid(principal, action == Action::"sql.export", resource);

@id("agents-write")
permit(principal in Group::"agents", action == Action::"sql.write", resource);

@id("writes-expire-fast")
@review("data-owners")
@ttl("2s")
forbid(principal, action == Action::"sql.write", resource);

@id("agents-ddl")
permit(principal in Group::"agents", action == Action::"sql.ddl", resource);

@id("no-ddl-in-prod")
forbid(principal, action == Action::"sql.ddl", resource)
when { context.gateway has environment && context.gateway.environment == "prod" };
"#;

pub struct Person {
    pub id: &'static str,
    pub token: String,
}

pub fn people() -> Vec<(&'static str, Option<&'static str>, Vec<&'static str>)> {
    vec![
        ("agent:report-bot", Some("user:alice"), vec!["agents"]),
        ("agent:other-bot", Some("user:dave"), vec!["agents"]),
        ("agent:rogue-bot", Some("user:dave"), vec!["data-owners"]),
        ("service:ci", None, vec!["data-owners"]),
        ("user:alice", None, vec!["data-owners"]),
        ("user:bob", None, vec!["data-owners"]),
        ("user:carol", None, vec!["data-owners"]),
        ("user:dave", None, vec!["data-owners"]),
        ("user:erin", None, vec!["marketing"]),
        ("user:audrey", None, vec!["auditors"]),
        ("service:monitor", None, vec!["monitoring"]),
    ]
}

pub fn token_of(id: &str) -> String {
    format!("test-token-{}", id.replace(':', "-"))
}

/// A port for a test server: see [`secondkey_pg::testing::free_port`]
/// (never the same one twice in this process, never an ephemeral one).
pub fn free_port() -> u16 {
    secondkey_pg::testing::free_port()
}

pub struct Gateway {
    pub child: Option<Child>,
    /// Extra environment for the gateway process (secrets named by the config).
    pub env: Vec<(String, String)>,
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub agent: ureq::Agent,
}

pub fn write_config(dir: &Path, port: u16, policies: &str) -> PathBuf {
    write_config_extra(dir, port, policies, "")
}

pub fn write_config_extra(dir: &Path, port: u16, policies: &str, extra: &str) -> PathBuf {
    write_config_full(dir, port, policies, "", extra)
}

/// `requests` is added to the `[requests]` table (e.g.
/// `escalation_fraction = 0.25`); `extra` is appended at the end.
pub fn write_config_full(
    dir: &Path,
    port: u16,
    policies: &str,
    requests: &str,
    extra: &str,
) -> PathBuf {
    let pdir = dir.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("test.cedar"), policies).unwrap();
    let mut cfg = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n[requests]\nmax_body_bytes = 65536\n{requests}\n[grants]\nexecutors = [\"service:ci\"]\n[log]\norigin = \"test.secondkey/log\"\n[[environments]]\nname = \"prod\"\nresources = [\"postgres://analytics/*\"]\n",
        dir.join("data").display(),
        pdir.display()
    );
    for (id, owner, groups) in people() {
        let hash = hex::encode(Sha256::digest(token_of(id).as_bytes()));
        cfg.push_str(&format!(
            "\n[[principals]]\nid = \"{id}\"\ngroups = {groups:?}\ntoken_sha256 = \"{hash}\"\n"
        ));
        if let Some(o) = owner {
            cfg.push_str(&format!("owner = \"{o}\"\n"));
        }
        if id == "agent:report-bot" {
            // What backs the `on_behalf_of` of `export_action`.
            cfg.push_str("may_act_for = [\"user:carol\"]\n");
        }
    }
    cfg.push_str(extra);
    let path = dir.join("secondkey.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl Gateway {
    pub fn start(dir: &Path) -> Gateway {
        Self::start_with(dir, POLICIES)
    }

    pub fn start_with(dir: &Path, policies: &str) -> Gateway {
        Self::start_extra(dir, policies, "")
    }

    /// Starts with extra TOML appended to the config (e.g. `[[sinks]]`).
    pub fn start_extra(dir: &Path, policies: &str, extra: &str) -> Gateway {
        Self::start_full(dir, policies, "", extra, &[])
    }

    /// Starts with keys for `[requests]`, extra TOML and extra environment.
    pub fn start_full(
        dir: &Path,
        policies: &str,
        requests: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let port = free_port();
        let config = write_config_full(dir, port, policies, requests, extra);
        let mut g = Gateway {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            config,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(90))
                .build(),
        };
        g.spawn();
        g
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("gateway.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start secondkey serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Healthy, and this child is the one answering: it says where
            // it listens once it has bound the port. (A gateway that could
            // not bind exits; another process on the port must not pass.)
            if let Ok(r) = self.agent.get(&format!("{}/healthz", self.url)).call() {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                if r.status() == 200 && log.contains(&format!("listening on {}\n", self.url)) {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                panic!("the gateway exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
            let _ = c.wait();
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        who: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self.agent.request(method, &format!("{}{}", self.url, path));
        if let Some(w) = who {
            r = r.set("Authorization", &format!("Bearer {}", token_of(w)));
        }
        let res = match body {
            Some(b) => r.send_json(b.clone()),
            None => r.call(),
        };
        match res {
            Ok(resp) => {
                let s = resp.status();
                let text = resp.into_string().unwrap_or_default();
                (
                    s,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(ureq::Error::Status(s, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                (
                    s,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        who: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let mut r = self
            .agent
            .request(method, &format!("{}{}", self.url, path))
            .set("Content-Type", content_type);
        if let Some(w) = who {
            r = r.set("Authorization", &format!("Bearer {}", token_of(w)));
        }
        match r.send_bytes(body) {
            Ok(resp) => {
                let s = resp.status();
                (
                    s,
                    serde_json::from_str(&resp.into_string().unwrap_or_default())
                        .unwrap_or(Value::Null),
                )
            }
            Err(ureq::Error::Status(s, resp)) => (
                s,
                serde_json::from_str(&resp.into_string().unwrap_or_default())
                    .unwrap_or(Value::Null),
            ),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    pub fn submit(&self, who: &str, action: &Value) -> Value {
        let (s, v) = self.call("POST", "/v1/actions", Some(who), Some(action));
        assert_eq!(s, 200, "{v}");
        v
    }

    /// A request's state and how many reviews it has, as carol (a data
    /// owner, party to no test request) sees it.
    pub fn state_of(&self, id: &str) -> (String, usize) {
        let (s, v) = self.call(
            "GET",
            &format!("/v1/requests/{id}"),
            Some("user:carol"),
            None,
        );
        assert_eq!(s, 200, "{v}");
        (
            v["state"].as_str().unwrap().to_string(),
            v["reviews"].as_array().unwrap().len(),
        )
    }

    pub fn review(&self, who: &str, id: &str, decision: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/requests/{id}/reviews"),
            Some(who),
            Some(&json!({"decision": decision, "comment": "black-box test"})),
        )
    }

    pub fn text(&self, path: &str) -> String {
        self.agent
            .get(&format!("{}{}", self.url, path))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// The audit log's entries (`log export --format jsonl`, read-only
    /// while the gateway runs).
    pub fn log_entries(&self) -> Vec<Value> {
        let config = self.config.to_str().unwrap();
        // Lean statement entries as the full entries they stand for.
        let args = [
            "log", "export", "--config", config, "--format", "jsonl", "--expand",
        ];
        let (code, out, err) = run_cli(&args, &self.url, None);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Runs the CLI with arguments; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], token_for: Option<&str>) -> (i32, String, String) {
        run_cli(args, &self.url, token_for)
    }
}

/// Starts `secondkey serve --config path` (with `env`) and expects it to
/// refuse the configuration and exit within 10 s: what it printed on
/// stderr, or, if it was still running then (it accepted the
/// configuration; it is killed), an error.
pub fn serve_refusal(path: &Path, env: &[(&str, &str)]) -> Result<String, String> {
    let err_path = path.with_extension("err");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&err_path).unwrap();
            assert!(!status.success(), "serve exited 0: {err}");
            return Ok(err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("serve accepted {}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new key at `out`, named `name`, made offline by `cmd` (`["keys",
/// "generate"]` for a log key, `["witness", "keygen"]` for a witness's):
/// the verifier key it prints. Panics when the command fails.
pub fn new_key(cmd: [&str; 2], name: &str, out: &Path) -> String {
    let (code, vkey, err) = keygen(cmd, name, out);
    assert_eq!(code, 0, "{cmd:?} {name}: {err}");
    vkey.trim().to_string()
}

/// [`new_key`] as run: exit code, stdout, stderr.
pub fn keygen(cmd: [&str; 2], name: &str, out: &Path) -> (i32, String, String) {
    let out = out.to_str().unwrap();
    run_cli(
        &[cmd[0], cmd[1], "--name", name, "--out", out],
        "http://127.0.0.1:1",
        None,
    )
}

pub fn run_cli(args: &[&str], url: &str, token_for: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SECONDKEY_URL", url)
        .env_remove("SECONDKEY_TOKEN");
    if let Some(w) = token_for {
        c.env("SECONDKEY_TOKEN", token_of(w));
    }
    let out = c.output().expect("run secondkey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Long-polls `GET /v1/requests/{id}?wait=secs` as `who`, as a waiting
/// agent does; returns the answer and when it arrived.
pub fn long_poll(url: &str, id: &str, who: &str, secs: u64) -> (Value, Instant) {
    let v: Value = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(secs + 30))
        .build()
        .get(&format!("{url}/v1/requests/{id}?wait={secs}"))
        .set("Authorization", &format!("Bearer {}", token_of(who)))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    (v, Instant::now())
}

pub fn export_action(resource: &str) -> Value {
    json!({
        "kind": "sql",
        "operation": "export",
        "resource": resource,
        "params": {"statement": "COPY customers TO STDOUT"},
        "justification": "quarterly report",
        "on_behalf_of": "user:carol",
        "context": {"environment": "prod", "estimated_rows": 1200},
        "lineage": {"reads": [resource], "writes": ["s3://reports/q3.csv"]}
    })
}

pub fn read_action() -> Value {
    json!({"kind": "sql", "operation": "read", "resource": "postgres://analytics/public.orders",
           "params": {"statement": "SELECT 1"}, "context": {"environment": "prod"}})
}

/// POSTs a body the gateway refuses as too large, on a socket of its own,
/// and returns the raw answer. The gateway answers 413 as soon as it sees
/// the length and closes without reading the body, so sending may fail
/// with EPIPE (ignored) and a pooled connection would be broken by the
/// close; the answer is read either way.
pub fn post_oversized(url: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    sock.write_all(head.as_bytes()).unwrap();
    let _ = sock.write_all(body);
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

impl Gateway {
    /// Waits (up to 15 s) for a log entry matching `f`: results are
    /// recorded off the client's path.
    pub fn wait_log(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.log_entries().into_iter().find(&f) {
                return e;
            }
            assert!(Instant::now() < deadline, "never logged: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A child process whose stderr is read line by line as it comes (a client
/// that prints "held for review …" and waits).
pub struct Watched {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Watched {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Watched {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: vec![],
        }
    }

    /// The next stderr line holding `needle` (within 30 s).
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no stderr line with {needle:?}; saw {:?}", self.seen);
    }

    /// Waits up to `secs` for it to exit: (exit code, stdout, every stderr line).
    pub fn finish(mut self, secs: u64) -> (i32, String, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "did not finish within {secs}s; stderr so far: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut out).unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status.code().unwrap_or(-1), out, self.seen)
    }
}

/// The request id (`req_…`) a line names.
pub fn request_id(line: &str) -> String {
    let at = line
        .find("req_")
        .unwrap_or_else(|| panic!("no request id in {line:?}"));
    line[at..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap()
        .to_string()
}

/// Exports the log through `g`'s config as a bundle, verifies it offline with
/// `secondkey log verify`, and returns (the bundle's dir, the verifier key,
/// the entries as JSON lines).
pub fn export_log(g: &Gateway) -> (tempfile::TempDir, String, Vec<Value>) {
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    export_bundle(g, &bundle);
    let vkey = g.text("/v1/log/verifier-key").trim().to_string();
    let (code, o, e) = verify_bundle(&bundle, &vkey);
    assert_eq!(code, 0, "the log must verify: {o} {e}");
    (out, vkey, log_entries(g))
}

/// `secondkey log verify --bundle bundle --key vkey`: (exit code, stdout,
/// stderr).
pub fn verify_bundle(bundle: &Path, vkey: &str) -> (i32, String, String) {
    run_cli(
        &[
            "log",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            vkey,
        ],
        "http://127.0.0.1:1",
        None,
    )
}

/// `secondkey log export --bundle to` of `g`'s log; it must succeed.
pub fn export_bundle(g: &Gateway, to: &Path) {
    let (code, _o, e) = run_cli(
        &[
            "log",
            "export",
            "--config",
            g.config.to_str().unwrap(),
            "--bundle",
            to.to_str().unwrap(),
        ],
        &g.url,
        None,
    );
    assert_eq!(code, 0, "{e}");
}

/// Every entry of `g`'s log, from `secondkey log export --format jsonl`;
/// each line must be JSON.
pub fn log_entries(g: &Gateway) -> Vec<Value> {
    let (code, o, e) = run_cli(
        &[
            "log",
            "export",
            "--config",
            g.config.to_str().unwrap(),
            "--format",
            "jsonl",
            "--expand",
        ],
        &g.url,
        None,
    );
    assert_eq!(code, 0, "{e}");
    o.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A minimal HTTP receiver: records each POST body with its headers and
/// answers 200.
pub fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<(String, Value)>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || loop {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; len];
                std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                let _ = tx.send((head, serde_json::from_slice(&body).unwrap()));
                std::io::Write::write_all(
                    &mut conn,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                )
                .unwrap();
            });
        }
    });
    (port, rx)
}

/// Polls `f` every 100 ms until it holds, for up to 30 s (generous: CI
/// machines are loaded); panics naming `what` past that.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// From `threads` threads, `each` times: a POST to `path` with a body of
/// `len` bytes, written in full before the answer is read (as most clients
/// do). Returns how many were sent and the outcomes whose status line did
/// not start with `expect` (or what failed).
pub fn send_whole_bodies(
    expect: &str,
    addr: &str,
    path: &str,
    auth: &str,
    len: usize,
    threads: usize,
    each: usize,
) -> (usize, Vec<String>) {
    use std::io::{Read, Write};
    let body = vec![b'x'; len];
    let one = || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        if let Err(e) = sock
            .write_all(head.as_bytes())
            .and_then(|()| sock.write_all(&body))
        {
            return format!("sending failed: {e}");
        }
        let mut answer = Vec::new();
        match sock.read_to_end(&mut answer) {
            Ok(_) => String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            Err(e) => format!("reading failed: {e}"),
        }
    };
    let all: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| (0..each).map(|_| one()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let n = all.len();
    (
        n,
        all.into_iter().filter(|o| !o.starts_with(expect)).collect(),
    )
}
