//! Black-box tests of the PostgreSQL gateway: the real `secondkey serve`
//! in front of a throwaway PostgreSQL 15, with psql, pgbench and psycopg
//! as clients.

mod common;

use std::process::{Command, Output, Stdio};

use common::{token_of, wait_until, Gateway, POLICIES};
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
    // A statement refused as unsupported says so once, naming secondkey once.
    let out = psql(
        s.port,
        agent,
        &token_of(agent),
        "SET client_encoding = 'LATIN1'",
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("secondkey: only UTF8 is passed as client_encoding")
            && !err.contains("secondkey: secondkey"),
        "{err}"
    );
    let _ = s.retry_port;
}

/// Principal ids have one spelling wherever they are read (docs/identity.md):
/// `[[postgres]] principals`, the keys of `[postgres.scram]` and the user
/// name a client logs in with are folded to lowercase like every other id.
#[test]
fn principal_ids_in_the_postgres_section_and_the_login_ignore_letter_case() {
    let cluster = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let verifier = secondkey_pg::scram::new_verifier(&token_of("agent:report-bot"));
    let extra = format!(
        "\n[[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"Agent:Report-Bot\"]\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n[postgres.scram]\n\"AGENT:report-bot\" = \"{verifier}\"\n",
        cluster.port,
    );
    let gw = Gateway::start_extra(dir.path(), POLICIES, &extra);
    for user in ["agent:report-bot", "Agent:REPORT-bot"] {
        let out = psql(
            port,
            user,
            &token_of("agent:report-bot"),
            "SELECT count(*) FROM customers",
        );
        assert!(out.status.success(), "{user}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "3");
    }
    // Folding makes no one else: another principal's token is still refused.
    let out = psql(
        port,
        "Agent:REPORT-bot",
        &token_of("agent:other-bot"),
        "SELECT 1",
    );
    assert!(text(&out.stderr).contains("password authentication failed"));
    let actors: Vec<Value> = common::log_entries(&gw)
        .iter()
        .filter(|e| e["event"] == "action.allowed")
        .map(|e| e["actor"].clone())
        .collect();
    assert_eq!(actors, ["agent:report-bot", "agent:report-bot"]);
}

/// A statement held until `hold_timeout` is traffic: the session's
/// `idle_timeout` counts from the error that ends the hold, not from the
/// statement that began it.
#[test]
fn idle_timeout_counts_from_the_end_of_a_hold_not_its_start() {
    let cluster = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let verifier = secondkey_pg::scram::new_verifier(&token_of("agent:report-bot"));
    let extra = format!(
        "\n[[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"agent:report-bot\"]\nhold = \"wait\"\nhold_timeout = \"2s\"\nidle_timeout = \"6s\"\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n[postgres.scram]\n\"agent:report-bot\" = \"{verifier}\"\n",
        cluster.port,
    );
    let _gw = Gateway::start_extra(dir.path(), POLICIES, &extra);
    // The export is held for 2s and times out; 4.5s later, well inside
    // the 6s idle_timeout counted from that error, the session still runs
    // the next statement.
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "agent:report-bot",
            "-d",
            DATABASE,
            "-f",
            "-",
        ])
        .env("PGPASSWORD", token_of("agent:report-bot"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"COPY customers TO STDOUT;\n\\! sleep 4.5\nSELECT 40 + 2;\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("was not decided within 2s"), "{err}");
    assert!(!err.contains("idle-session timeout"), "{err}");
    assert_eq!(text(&out.stdout).trim(), "42", "{err}");
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
    assert!(!common::log_entries(&s.gw)
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
        common::log_entries(&s.gw)
            .iter()
            .any(|e| e["event"] == "action.result.detail")
    });
    let events = common::log_entries(&s.gw);
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
    let allowed = common::log_entries(&s.gw)
        .iter()
        .filter(|e| {
            e["event"] == "action.allowed"
                && e["payload"]["action"]["resource"]
                    == "postgres://analytics/public.pgbench_accounts"
        })
        .count();
    assert_eq!(allowed, 360);
    // As logged, they are lean: each pgbench connection logs the shape of
    // its statement once, and each statement names it with its values.
    let config = s.gw.config.to_str().unwrap();
    let (code, out, err) = common::run_cli(
        &["log", "export", "--config", config, "--format", "jsonl"],
        &s.gw.url,
        None,
    );
    assert_eq!(code, 0, "{err}");
    let raw: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shapes = raw
        .iter()
        .filter(|e| e["event"] == "statement.shape")
        .count();
    let lean = raw
        .iter()
        .filter(|e| e["event"] == "action.allowed" && e["payload"]["shape"].is_string())
        .count();
    assert!(lean >= 360, "{lean} lean entries");
    assert!(
        (9..=60).contains(&shapes),
        "{shapes} shapes for 9 connections"
    );
    // `log verify` rebuilds every one of them.
    let (code, out, err) = common::run_cli(&["log", "verify", "--config", config], &s.gw.url, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "ok: {lean} lean statement entries rebuilt from {shapes} statement shapes"
        )),
        "{out}"
    );
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
    // psycopg sends integers in binary (int2 here): reviewers and policies
    // see the number, and the digest binds the bytes as sent.
    let select = common::log_entries(&s.gw)
        .into_iter()
        .rfind(|e| {
            e["event"] == "action.allowed"
                && e["payload"]["action"]["params"]["statement"]
                    == "SELECT email FROM customers WHERE id = $1"
        })
        .expect("the prepared SELECT in the log");
    let params = &select["payload"]["action"]["params"];
    assert_eq!(params["parameters"], serde_json::json!([4]), "{select}");
    assert!(params["parameters_sha256"].is_string(), "{select}");
}

// ---- bounded memory ---------------------------------------------------------

/// Resident memory of process `pid` in KiB: `(VmRSS, VmHWM)`.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `case` and returns how far the gateway's resident memory peaked
/// above where it was (KiB): the peak (VmHWM) is reset to the current
/// resident size first (`clear_refs`).
fn peak_growth(pid: u32, case: impl FnOnce()) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = memory(pid);
    case();
    let (_, peak) = memory(pid);
    peak.saturating_sub(before)
}

/// The bound every case below must keep: growth of the gateway's resident
/// memory while one agent feeds it (or a huge row passes through it).
const MEMORY_BOUND_KIB: u64 = 64 * 1024;

/// A raw protocol client logged in as `who` (SCRAM).
async fn raw_client(port: u16, who: &str) -> secondkey_pg::upstream::Session {
    secondkey_pg::testing::raw_login(port, who, &token_of(who)).await
}

fn query_frame(sql: &str) -> Vec<u8> {
    let mut b = vec![b'Q'];
    b.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b
}

/// Reads messages without keeping them, up to ReadyForQuery or the end of
/// the connection: `(type, length)` of each, and the error fields of
/// errors and notices.
async fn skim(s: &mut secondkey_pg::upstream::Session) -> Vec<(char, usize, String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = std::mem::take(&mut s.leftover).to_vec();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        while buf.len() >= 5 {
            let ty = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if matches!(ty, b'E' | b'N') {
                if buf.len() < 1 + len {
                    break;
                }
                let (code, msg) = secondkey_pg::proto::error_fields(&buf[5..1 + len]);
                out.push((ty as char, len, code, msg));
                buf.drain(..1 + len);
                continue;
            }
            // Skip the body as it arrives, keeping nothing.
            let mut left = 1 + len;
            let have = left.min(buf.len());
            buf.drain(..have);
            left -= have;
            while left > 0 {
                let n = s.stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    out.push((ty as char, len, String::new(), "cut".into()));
                    return out;
                }
                let used = n.min(left);
                left -= used;
                buf.extend_from_slice(&chunk[used..n]);
            }
            out.push((ty as char, len, String::new(), String::new()));
            if ty == b'Z' {
                return out;
            }
        }
        match s.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Holds `COPY customers TO STDOUT` (two approvals) on the wait-mode
/// listener; returns the client and the request id.
async fn held_export(port: u16) -> (secondkey_pg::upstream::Session, String) {
    use tokio::io::AsyncWriteExt;
    let mut c = raw_client(port, "agent:report-bot").await;
    c.stream
        .write_all(&query_frame("COPY customers TO STDOUT"))
        .await
        .unwrap();
    let (ty, msg) = skim_until_notice(&mut c).await;
    assert_eq!(ty, 'N', "{msg}");
    let id = msg
        .split_whitespace()
        .find(|w| w.starts_with("req_"))
        .map(|w| w.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("{msg}"));
    (c, id)
}

/// The first message on a raw connection: its type and message field.
async fn skim_until_notice(s: &mut secondkey_pg::upstream::Session) -> (char, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = std::mem::take(&mut s.leftover).to_vec();
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                let (_, msg) = secondkey_pg::proto::error_fields(&buf[5..1 + len]);
                return (buf[0] as char, msg);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `total` bytes of `pattern` (repeated) after `head`, until the
/// gateway closes the connection; returns how many bytes went out.
async fn flood(
    s: &mut secondkey_pg::upstream::Session,
    head: &[u8],
    pattern: &[u8],
    total: usize,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() + pattern.len() <= 1 << 20 {
        chunk.extend_from_slice(pattern);
    }
    let mut sent = 0;
    if s.stream.write_all(head).await.is_err() {
        return 0;
    }
    while sent < total {
        if s.stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    sent
}

/// One agent cannot run the gateway out of memory (issue: a `Q` header
/// announcing ~1 GiB plus 400 MiB of filler behind a held statement took
/// it from 36 to 940 MB), and huge result rows pass through without being
/// buffered whole (a 300 MB row added ≈290 MB, four of them four times
/// that). Measured on the real binary: its peak resident memory, from
/// /proc.
#[test]
fn gateway_memory_stays_bounded_against_floods_and_huge_rows() {
    let s = setup(10);
    let pid = s.gw.child.as_ref().unwrap().id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = |id: &str| {
        let (_, r) =
            s.gw.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
        r["state"].as_str().unwrap_or_default().to_string()
    };

    // A held statement, then `total` bytes of `pattern` after `head`: the
    // gateway stops reading, withdraws the request and says which limit.
    let held_flood = |head: &[u8], pattern: &[u8], total: usize, limit: &str| {
        let mut id = String::new();
        let grew = peak_growth(pid, || {
            rt.block_on(async {
                let (mut c, held) = held_export(s.port).await;
                id = held;
                let sent = flood(&mut c, head, pattern, total).await;
                assert!(sent < total, "the gateway read all {sent} bytes");
                let said = skim(&mut c).await;
                assert!(
                    said.iter().any(|m| m.2 == "54000" && m.3.contains(limit)),
                    "{said:?}"
                );
            })
        });
        wait_until("the request withdrawn", || state(&id) == "withdrawn");
        grew
    };
    let grew = held_flood(&[b'Q', 0x40, 0, 0, 0], b"x", 400 << 20, "max_message_bytes");
    eprintln!("1 GiB header + 400 MiB filler while held: peak growth {grew} KiB");
    assert!(grew < MEMORY_BOUND_KIB, "grew {grew} KiB");
    let grew = held_flood(&[], &query_frame("SELECT 1"), 300 << 20, "held_read_bytes");
    eprintln!("300 MiB of queries while held: peak growth {grew} KiB");
    assert!(grew < MEMORY_BOUND_KIB, "grew {grew} KiB");

    // A 300 MB result row, then four at once, each read by its own client.
    const ROW: usize = 300_000_000;
    let big_row = |clients: usize| {
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let port = s.retry_port;
                tasks.push(tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut c = raw_client(port, "agent:report-bot").await;
                    c.stream
                        .write_all(&query_frame(&format!("SELECT repeat('x', {ROW})")))
                        .await
                        .unwrap();
                    skim(&mut c).await
                }));
            }
            for t in tasks {
                let got = t.await.unwrap();
                let row = got
                    .iter()
                    .find(|m| m.0 == 'D')
                    .unwrap_or_else(|| panic!("{got:?}"));
                // Length, column count, column length, the text.
                assert_eq!(row.1, 4 + 2 + 4 + ROW, "{got:?}");
                assert!(got.iter().any(|m| m.0 == 'Z'), "{got:?}");
            }
        })
    };
    let grew = peak_growth(pid, || big_row(1));
    eprintln!("one 300 MB row: peak growth {grew} KiB");
    assert!(grew < MEMORY_BOUND_KIB, "grew {grew} KiB");
    let grew = peak_growth(pid, || big_row(4));
    eprintln!("four 300 MB rows at once: peak growth {grew} KiB");
    assert!(grew < MEMORY_BOUND_KIB, "grew {grew} KiB");
}
