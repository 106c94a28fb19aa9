//! Issue 3: "a waiting agent learns of the decision within 50 ms of it".
//!
//! Starts the real `secondkey` binary (built with the bench profile) on
//! 127.0.0.1 with a throwaway data dir. N times: the agent submits an action
//! that needs one approval, a waiter thread long-polls
//! `GET /v1/requests/{id}?wait=30` as the agent, and a reviewer approves.
//! We record when the approval was sent, when its answer came back, and when
//! the waiter's answer arrived, and report the waiter's delay from each.
//!
//! `cargo bench -p secondkey --bench wakeup` (`SK_BENCH_N` sets N, default 300).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secondkey_server::auth::token_sha256_hex as sha;
use serde_json::{json, Value};

const POLICY: &str = r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-one-owner")
@review("data-owners")
@quorum("1")
forbid(principal, action == Action::"sql.export", resource);
"#;

const AGENT_TOKEN: &str = "bench-agent-token";
const REVIEWER_TOKEN: &str = "bench-reviewer-token";

/// Stops the gateway when the bench ends, however it ends.
struct Gateway(Child);
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(agent: &ureq::Agent, url: &str, token: &str, body: &Value) -> Value {
    agent
        .post(url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body.clone())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .into_json()
        .expect("JSON answer")
}

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "  {name:<46} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    );
}

fn main() {
    let n: usize = std::env::var("SK_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).expect("policy dir");
    std::fs::write(pdir.join("bench.cedar"), POLICY).expect("policy");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n\
         [log]\norigin = \"bench.secondkey.example/log\"\n\
         [[principals]]\nid = \"agent:report-bot\"\nowner = \"user:alice\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nid = \"user:alice\"\ngroups = [\"analysts\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nid = \"user:bob\"\ngroups = [\"data-owners\"]\ntoken_sha256 = \"{}\"\n",
        dir.path().join("data").display(),
        pdir.display(),
        sha(AGENT_TOKEN),
        sha("bench-alice-token-unused"),
        sha(REVIEWER_TOKEN),
    );
    let cfg_path = dir.path().join("secondkey.toml");
    std::fs::write(&cfg_path, config).expect("config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_secondkey"))
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start secondkey");
    // The gateway prints "listening" on stderr once it accepts connections.
    let stderr = child.stderr.take().expect("stderr");
    let _gateway = Gateway(child);
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("listening") => break,
            Some(Ok(_)) => continue,
            _ => panic!("secondkey serve exited before listening"),
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let base = format!("http://127.0.0.1:{port}");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut from_sent = Vec::with_capacity(n);
    let mut from_answered = Vec::with_capacity(n);
    let mut early = 0usize;
    for i in 0..n {
        let action = json!({
            "kind": "sql", "operation": "export",
            "resource": "postgres://analytics/public.customers",
            "justification": format!("wake-up bench {i}"),
        });
        let created = post(&agent, &format!("{base}/v1/actions"), AGENT_TOKEN, &action);
        assert_eq!(created["decision"], "review", "{created}");
        let id = created["request"]["id"]
            .as_str()
            .expect("request id")
            .to_owned();

        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let wait_url = format!("{base}/v1/requests/{id}?wait=30");
        let wagent = agent.clone();
        let waiter = std::thread::spawn(move || {
            let _ = ready_tx.send(());
            let resp: Value = wagent
                .get(&wait_url)
                .set("Authorization", &format!("Bearer {AGENT_TOKEN}"))
                .call()
                .expect("long-poll")
                .into_json()
                .expect("JSON");
            let _ = tx.send((Instant::now(), resp));
        });
        ready_rx.recv().expect("waiter started");
        // Give the long-poll time to reach the server and subscribe, so the
        // waiter is really waiting when the decision lands.
        std::thread::sleep(Duration::from_millis(20));

        let sent = Instant::now();
        let reviewed = post(
            &agent,
            &format!("{base}/v1/requests/{id}/reviews"),
            REVIEWER_TOKEN,
            &json!({"decision": "approve", "comment": "bench"}),
        );
        let answered = Instant::now();
        assert_eq!(reviewed["state"], "approved", "{reviewed}");
        let (woke, resp) = rx.recv().expect("waiter answer");
        waiter.join().expect("waiter thread");
        assert_eq!(resp["state"], "approved", "{resp}");
        from_sent.push(woke - sent);
        if woke < answered {
            early += 1;
        }
        from_answered.push(woke.saturating_duration_since(answered));
    }
    println!(
        "waiting agent wake-up after an approval, {n} requests (gateway: release binary, 127.0.0.1):"
    );
    let mut sorted = from_sent.clone();
    sorted.sort_unstable();
    let p99 = sorted[(n * 99 / 100).min(n - 1)];
    percentiles("from the approval being sent", from_sent);
    percentiles("from the approval's answer (0 if earlier)", from_answered);
    println!("  the waiter had its answer before the reviewer in {early} of {n} cases");
    let verdict = if p99 < Duration::from_millis(50) {
        "MET"
    } else {
        "MISSED"
    };
    println!(
        "  target p99 < 50 ms: {verdict} ({:.2} ms)",
        p99.as_secs_f64() * 1e3
    );
}
