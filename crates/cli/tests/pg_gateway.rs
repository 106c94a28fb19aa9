//! Black-box tests of the PostgreSQL gateway: the real `secondkey serve`
//! in front of a throwaway PostgreSQL 15, with psql, pgbench and psycopg
//! as clients.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{token_of, Gateway, POLICIES};
use secondkey_pg::testing::{Cluster, APP_PASSWORD, APP_USER, DATABASE};
use serde_json::Value;

struct Setup {
    cluster: Cluster,
    gw: Gateway,
    port: u16,
    retry_port: u16,
    _dir: tempfile::TempDir,
}

/// A gateway with two connections to the same database: `analytics`
/// (prod, wait mode) and `scratch` (retry mode).
fn setup(rows: usize) -> Setup {
    let cluster = Cluster::start(rows);
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("upstream.pw");
    std::fs::write(&pwfile, format!("{APP_PASSWORD}\n")).unwrap();
    let (port, retry_port) = (common::free_port(), common::free_port());
    let verifier = secondkey_pg::scram::new_verifier(&token_of("agent:report-bot"));
    let mut extra = String::new();
    for (name, listen, hold) in [
        ("analytics", port, "wait"),
        ("scratch", retry_port, "retry"),
    ] {
        extra.push_str(&format!(
            "\n[[postgres]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{listen}\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"agent:report-bot\", \"agent:other-bot\"]\nhold = \"{hold}\"\nhold_timeout = \"60s\"\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_file = \"{}\"\n[postgres.scram]\n\"agent:report-bot\" = \"{verifier}\"\n\"agent:other-bot\" = \"{}\"\n",
            cluster.port,
            pwfile.display(),
            secondkey_pg::scram::new_verifier(&token_of("agent:other-bot")),
        ));
    }
    let gw = Gateway::start_extra(dir.path(), POLICIES, &extra);
    Setup {
        cluster,
        gw,
        port,
        retry_port,
        _dir: dir,
    }
}

fn psql(port: u16, user: &str, password: &str, sql: &str) -> Output {
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
            user,
            "-d",
            DATABASE,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed (apt-get install -y postgresql-client-15)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The log as JSON lines, read with `secondkey log export`.
fn log_events(gw: &Gateway) -> Vec<Value> {
    let out = Command::new(common::BIN)
        .args(["log", "export", "--format", "jsonl", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn psql_connects_as_its_principal_and_never_learns_the_upstream_password() {
    let s = setup(10);
    let agent = "agent:report-bot";
    let out = psql(
        s.port,
        agent,
        &token_of(agent),
        "SELECT current_user, count(*) FROM customers",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{APP_USER}|10"));
    // Everything psql saw, settings included, is free of the password.
    let all = psql(s.port, agent, &token_of(agent), "SHOW ALL");
    assert!(!text(&all.stdout).contains(APP_PASSWORD) && !text(&all.stderr).contains(APP_PASSWORD));
    // The upstream password is not a way in, nor a wrong token, nor a
    // principal the connection does not list.
    for (user, pw) in [
        (agent, APP_PASSWORD.to_string()),
        (agent, "wrong-token-wrong-token".to_string()),
        (APP_USER, APP_PASSWORD.to_string()),
        ("user:bob", token_of("user:bob")),
    ] {
        let out = psql(s.port, user, &pw, "SELECT 1");
        assert!(!out.status.success(), "{user} logged in with {pw}");
        let err = text(&out.stderr);
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains(APP_PASSWORD) || pw == APP_PASSWORD, "{err}");
    }
    // A denied statement names the policy and the decision id, and runs
    // nothing: DDL in prod is forbidden.
    let out = psql(s.port, agent, &token_of(agent), "DROP TABLE customers");
    let err = text(&out.stderr);
    assert!(
        err.contains("no-ddl-in-prod") && err.contains("decision act_"),
        "{err}"
    );
    assert_eq!(
        s.cluster
            .superuser_sql(DATABASE, "SELECT count(*) FROM customers"),
        "10"
    );
    let _ = s.retry_port;
}

#[test]
fn a_prod_export_is_held_approved_by_two_reviewers_run_once_and_its_rows_logged() {
    let s = setup(1200);
    let agent = "agent:report-bot";
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &s.port.to_string(),
            "-U",
            agent,
            "-d",
            DATABASE,
            "-c",
            "COPY customers TO STDOUT",
        ])
        .env("PGPASSWORD", token_of(agent))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The request appears at once; reviewers find it through the API.
    let mut id = String::new();
    wait_until("the held request", || {
        let (_, v) =
            s.gw.call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
        match v.as_array().and_then(|a| a.first()) {
            Some(r) => {
                assert_eq!(r["action"]["operation"], "export", "{r}");
                assert_eq!(
                    r["action"]["resource"],
                    "postgres://analytics/public.customers"
                );
                true
            }
            None => false,
        }
    });
    let (_, v) =
        s.gw.call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
    id.push_str(v[0]["id"].as_str().unwrap());
    // The owner of the agent may not approve; two data owners do.
    assert_eq!(s.gw.review("user:alice", &id, "approve").0, 403);
    assert_eq!(s.gw.review("user:bob", &id, "approve").0, 200);
    // One approval of two: nothing runs yet, psql still waits.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "psql must still wait");
    let (_, r) =
        s.gw.call("GET", &format!("/v1/requests/{id}"), Some(agent), None);
    assert_eq!(r["state"], "pending", "{r}");
    assert!(!log_events(&s.gw)
        .iter()
        .any(|e| e["event"] == "grant.consumed"));
    assert_eq!(s.gw.review("user:carol", &id, "approve").0, 200);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1200);
    let notice = text(&out.stderr);
    assert!(
        notice.contains(&format!("waiting for approval of request {id}")),
        "{notice}"
    );
    assert!(notice.contains(&format!("/requests/{id}")), "{notice}");
    // Executed once, with its row count in the log.
    wait_until("the result in the log", || {
        log_events(&s.gw)
            .iter()
            .any(|e| e["event"] == "action.result.detail")
    });
    let events = log_events(&s.gw);
    let consumed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "grant.consumed")
        .collect();
    assert_eq!(consumed.len(), 1);
    let detail = events
        .iter()
        .find(|e| e["event"] == "action.result.detail")
        .unwrap();
    assert_eq!(detail["payload"]["summary"]["rows"], 1200, "{detail}");
    assert_eq!(detail["payload"]["summary"]["command_tags"][0], "COPY 1200");
    let (_, r) =
        s.gw.call("GET", &format!("/v1/requests/{id}"), Some(agent), None);
    assert_eq!(r["state"], "executed", "{r}");
}

#[test]
fn pgbench_runs_through_the_gateway_in_both_protocols() {
    let s = setup(1);
    let init = Command::new("pgbench")
        .args([
            "-q",
            "-i",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &s.cluster.port.to_string(),
            "-U",
            APP_USER,
            DATABASE,
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("pgbench is installed (postgresql-contrib / postgresql-15)");
    assert!(init.status.success(), "{}", text(&init.stderr));
    let agent = "agent:report-bot";
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .args([
                "-n",
                "-S",
                "-M",
                mode,
                "-c",
                "3",
                "-t",
                "40",
                "-h",
                "127.0.0.1",
                "-p",
                &s.port.to_string(),
                "-U",
                agent,
                DATABASE,
            ])
            .env("PGPASSWORD", token_of(agent))
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 120/120"),
            "{mode}: {stdout}"
        );
    }
    let allowed = log_events(&s.gw)
        .iter()
        .filter(|e| {
            e["event"] == "action.allowed"
                && e["payload"]["action"]["resource"]
                    == "postgres://analytics/public.pgbench_accounts"
        })
        .count();
    assert_eq!(allowed, 360);
}

#[test]
fn psycopg_prepared_statements_retry_mode_and_errors() {
    let s = setup(5);
    let script = r#"
import sys, psycopg
from psycopg import errors
port, token, gateway, bob, carol = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
import json, urllib.request
def review(rid, who):
    req = urllib.request.Request(f"{gateway}/v1/requests/{rid}/reviews", method="POST",
        data=json.dumps({"decision": "approve"}).encode(),
        headers={"Authorization": "Bearer " + who, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
conn = psycopg.connect(host="127.0.0.1", port=port, user="agent:report-bot", password=token, dbname="analytics", autocommit=True)
cur = conn.cursor()
for i in (1, 2, 3, 4):
    cur.execute("SELECT email FROM customers WHERE id = %s", (i,), prepare=True)
    assert cur.fetchone()[0] == f"c{i}@example.com"
try:
    cur.execute("DELETE FROM customers WHERE id = %s", (1,))
    raise SystemExit("DELETE was not refused")
except errors.InsufficientPrivilege as e:
    assert "decision act_" in str(e), e
try:
    cur.execute("SELEC 1")
    raise SystemExit("garbage was passed")
except errors.SyntaxError:
    pass
# A write needs review (writes-expire-fast): retry mode gives the request id.
try:
    cur.execute("INSERT INTO orders VALUES (%s, 1, 1)", (900,))
    raise SystemExit("the write was not held")
except psycopg.Error as e:
    assert e.sqlstate == "SK001", e.sqlstate
    rid = e.diag.message_primary.split()[-1]
review(rid, bob)
cur.execute("INSERT INTO orders VALUES (%s, 1, 1)", (900,))
assert cur.rowcount == 1
# Once used, the approval is gone: the same statement is held again.
try:
    cur.execute("INSERT INTO orders VALUES (%s, 1, 1)", (900,))
    raise SystemExit("ran twice")
except psycopg.Error as e:
    assert e.sqlstate == "SK001" and rid not in str(e), str(e)
print("ok")
"#;
    let agent = "agent:report-bot";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([
            s.retry_port.to_string(),
            token_of(agent),
            s.gw.url.clone(),
            token_of("user:bob"),
            token_of("user:carol"),
        ])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("No module named 'psycopg'"),
        "psycopg is missing: run python3 -m pip install 'psycopg[binary]' (scripts/test does)"
    );
    assert!(
        out.status.success() && text(&out.stdout).trim() == "ok",
        "{}{stderr}",
        text(&out.stdout)
    );
    assert_eq!(
        s.cluster
            .superuser_sql(DATABASE, "SELECT count(*) FROM orders WHERE id = 900"),
        "1"
    );
}
