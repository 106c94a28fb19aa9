//! Issue 4: "from approve click (API call) to the waiting agent resuming,
//! p99 under 50 ms on loopback".
//!
//! Starts the real `secondkey` binary (bench profile) with Slack and Teams
//! configured against the local stand-ins of the black-box tests. A Slack
//! user and a Teams account are linked to `user:bob` once. Then N times per
//! channel: the agent submits an action needing one approval, a waiter
//! thread long-polls `GET /v1/requests/{id}?wait=30` as the agent, and bob
//! clicks Approve — a signed Slack interaction, or a Teams `Action.Execute`
//! invoke with a Bot Framework token. We record the time from sending the
//! click to the waiter's answer.
//!
//! `cargo bench -p secondkey --bench chat_click` (`SK_BENCH_N`, default 200).

#[path = "../tests/common/fakes.rs"]
mod fakes;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fakes::*;
use secondkey_server::auth::token_sha256_hex as sha;
use serde_json::{json, Value};

const POLICY: &str = r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-one-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.export", resource);
"#;

const AGENT_TOKEN: &str = "bench-agent-token";
const BOB_TOKEN: &str = "bench-reviewer-token";

struct Gateway(Child);
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn send(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    ct: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut r = agent.post(url).set("Content-Type", ct);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let read = |resp: ureq::Response| {
        let s = resp.status();
        (s, resp.into_json::<Value>().unwrap_or(Value::Null))
    };
    match r.send_bytes(body) {
        Ok(resp) => read(resp),
        Err(ureq::Error::Status(_, resp)) => read(resp),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

fn percentiles(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "  {name:<34} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    );
    at(0.99)
}

fn main() {
    let n: usize = std::env::var("SK_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rsa_key(dir.path(), "bf");
    let (bf, _teams_calls) = bot_framework(&key);
    let (api, slack_calls) = slack();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).expect("policy dir");
    std::fs::write(pdir.join("bench.cedar"), POLICY).expect("policy");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n\
         [log]\norigin = \"bench.secondkey.example/log\"\n\
         [[principals]]\nid = \"agent:report-bot\"\nowner = \"user:alice\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nid = \"user:alice\"\ngroups = [\"analysts\"]\n\
         [[principals]]\nid = \"user:bob\"\ngroups = [\"data-owners\"]\ntoken_sha256 = \"{}\"\n\
         [slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
         [teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}/\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\nteams_conversation = \"conv-1\"\n",
        dir.path().join("data").display(),
        pdir.display(),
        sha(AGENT_TOKEN),
        sha(BOB_TOKEN),
    );
    let cfg_path = dir.path().join("secondkey.toml");
    std::fs::write(&cfg_path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_secondkey"))
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .env("SK_SLACK_BOT", SLACK_BOT_TOKEN)
        .env("SK_SLACK_SIGNING", SLACK_SIGNING_SECRET)
        .env("SK_TEAMS_PW", TEAMS_APP_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start secondkey");
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
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    let submit = || -> String {
        let (s, v) = send(
            &agent,
            &format!("{base}/v1/actions"),
            &[bearer(AGENT_TOKEN)],
            "application/json",
            json!({"kind": "sql", "operation": "export", "resource": "postgres://analytics/public.customers"})
                .to_string()
                .as_bytes(),
        );
        assert_eq!((s, v["decision"].as_str()), (200, Some("review")), "{v}");
        v["id"].as_str().expect("id").to_string()
    };
    let slack_click_on = |id: &str| {
        let (body, ts, sig) = slack_click(
            SLACK_SIGNING_SECRET,
            unix_now(),
            "U_BOB",
            "approve",
            id,
            "1.1",
        );
        send(
            &agent,
            &format!("{base}/chat/slack/interactions"),
            &[
                ("X-Slack-Request-Timestamp", ts),
                ("X-Slack-Signature", sig),
            ],
            "application/x-www-form-urlencoded",
            body.as_bytes(),
        )
    };
    let service_url = format!("{bf}/");
    let token = bot_token(&key, TEAMS_APP_ID, &service_url, 3000);
    let mut activity = 0u64;
    let mut teams_click_on = |id: &str| {
        activity += 1;
        let a = invoke(
            &format!("bench-{activity}"),
            &service_url,
            "aad-bob",
            "approve",
            id,
            "1:activity-1",
        );
        send(
            &agent,
            &format!("{base}/chat/teams/messages"),
            &[bearer(&token)],
            "application/json",
            a.to_string().as_bytes(),
        )
    };
    let link_url_in = |text: &str| -> String {
        let start = text.find("http").expect("link");
        text[start..]
            .split_whitespace()
            .next()
            .expect("url")
            .to_string()
    };
    // Link both accounts to bob once.
    let id = submit();
    assert_eq!(slack_click_on(&id).0, 200);
    let text = wait_for(&slack_calls, "the link", |cs| {
        cs.iter()
            .filter(|c| c.path == "chat.postEphemeral")
            .find_map(|c| c.body["text"].as_str().map(str::to_string))
    });
    let (s, v) = send(
        &agent,
        &link_url_in(&text),
        &[bearer(BOB_TOKEN)],
        "application/json",
        b"",
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = teams_click_on(&id);
    let (s, v) = send(
        &agent,
        &link_url_in(v["value"].as_str().expect("link message")),
        &[bearer(BOB_TOKEN)],
        "application/json",
        b"",
    );
    assert_eq!(s, 200, "{v}");

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("approve click → waiting agent resumes, {n} requests per channel (gateway: {build} binary, 127.0.0.1):");
    let mut verdicts = Vec::new();
    for channel in ["slack", "teams"] {
        let mut delays = Vec::with_capacity(n);
        for _ in 0..n {
            let id = submit();
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
            std::thread::sleep(Duration::from_millis(20));
            let sent = Instant::now();
            let (s, v) = if channel == "slack" {
                slack_click_on(&id)
            } else {
                teams_click_on(&id)
            };
            assert_eq!(s, 200, "{v}");
            let (woke, resp) = rx.recv().expect("waiter answer");
            waiter.join().expect("waiter");
            assert_eq!(resp["state"], "approved", "{resp}");
            delays.push(woke - sent);
        }
        let p99 = percentiles(&format!("{channel}: click sent → agent resumes"), delays);
        verdicts.push((channel, p99));
    }
    for (c, p99) in verdicts {
        let v = if p99 < Duration::from_millis(50) {
            "MET"
        } else {
            "MISSED"
        };
        println!(
            "  target p99 < 50 ms ({c}): {v} ({:.2} ms)",
            p99.as_secs_f64() * 1e3
        );
    }
}
