//! The proxy against a real PostgreSQL 15 cluster and a real gateway
//! (in-process), with tokio-postgres as the client.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use secondkey_core::principal::Principal;
use secondkey_core::request::ReviewDecision;
use secondkey_pg::testing::{Cluster, APP_PASSWORD, APP_USER, DATABASE};
use secondkey_pg::PgGateway;
use secondkey_server::{Config, Gateway, Running};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const POLICIES: &str = r#"
@id("agents-read") permit(principal in Group::"agents", action == Action::"sql.read", resource);
@id("agents-write") permit(principal in Group::"agents", action == Action::"sql.write", resource);
@id("agents-export") permit(principal in Group::"agents", action == Action::"sql.export", resource);
@id("exports-need-two-owners")
@review("data-owners") @quorum("2")
forbid(principal, action == Action::"sql.export", resource)
  when { context.gateway has environment && context.gateway.environment == "prod" };
@id("orders-writes-reviewed")
@review("data-owners")
forbid(principal, action == Action::"sql.write", resource)
  when { context.gateway has tables && context.gateway.tables.contains("public.orders") };
@id("agents-delete") permit(principal in Group::"agents", action == Action::"sql.delete", resource);
@id("no-deletes-of-customers")
forbid(principal, action == Action::"sql.delete", resource)
  when { context.gateway has tables && context.gateway.tables.contains("public.customers") };
@id("no-purges")
forbid(principal, action == Action::"sql.write", resource)
  when { context.gateway has functions && context.gateway.functions.contains("purge_customer") };
"#;

fn token(id: &str) -> String {
    format!("test-token-{}", id.replace(':', "-"))
}

struct Env {
    _cluster: Cluster,
    cluster_port: u16,
    running: Option<Running>,
    gw: Arc<Gateway>,
    pg: SocketAddr,
    /// Every connection's listener, in configuration order.
    addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

async fn setup(hold: &str) -> Env {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1200))
        .await
        .unwrap();
    let verifier = secondkey_pg::scram::new_verifier(&token("agent:report-bot"));
    let section = format!(
        "[[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:0\"\nprincipals = [\"agent:report-bot\"]\nhold = \"{hold}\"\nhold_timeout = \"20s\"\nestimate_rows = true\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_env = \"SK_TEST_PG_PASSWORD\"\n[postgres.scram]\n\"agent:report-bot\" = \"{verifier}\"\n",
        cluster.port
    );
    start_gateway(cluster, &section).await
}

/// A gateway (in-process) with the test principals and policies, and the
/// `[[postgres]]` sections `postgres` in front of `cluster`.
async fn start_gateway(cluster: Cluster, postgres: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("p.cedar"), POLICIES).unwrap();
    let mut cfg = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n[[environments]]\nname = \"prod\"\nresources = [\"postgres://analytics/*\"]\n",
        dir.path().join("data").display(),
        pdir.display()
    );
    for (id, owner, group) in [
        ("agent:report-bot", Some("user:alice"), "agents"),
        ("agent:other-bot", Some("user:alice"), "agents"),
        ("agent:third-bot", Some("user:alice"), "agents"),
        ("user:alice", None, "data-owners"),
        ("user:bob", None, "data-owners"),
        ("user:carol", None, "data-owners"),
    ] {
        let hash = hex::encode(Sha256::digest(token(id).as_bytes()));
        cfg.push_str(&format!(
            "[[principals]]\nid = \"{id}\"\ngroups = [\"{group}\"]\ntoken_sha256 = \"{hash}\"\n"
        ));
        if let Some(o) = owner {
            cfg.push_str(&format!("owner = \"{o}\"\n"));
        }
    }
    cfg.push_str(postgres);
    let env: HashMap<String, String> =
        [("SK_TEST_PG_PASSWORD".to_string(), APP_PASSWORD.to_string())].into();
    let config = Config::from_toml(&cfg, "test.toml", dir.path(), &env).unwrap();
    let principals = config.principals.keys().cloned().collect();
    let pg = PgGateway::from_section(
        config.sections.get("postgres"),
        dir.path(),
        &principals,
        &env,
    )
    .unwrap()
    .unwrap();
    let running = secondkey_server::start(config).await.unwrap();
    let gw = running.gateway.clone();
    let addrs = pg.listen(gw.clone()).unwrap();
    Env {
        cluster_port: cluster.port,
        _cluster: cluster,
        running: Some(running),
        gw,
        pg: addrs[0],
        addrs,
        _dir: dir,
    }
}

impl Env {
    async fn connect(&self) -> Client {
        self.connect_to(self.pg)
            .await
            .expect("connect through the gateway")
    }

    /// Logs in as agent:report-bot (SCRAM, no TLS) at one listener.
    async fn connect_to(&self, addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(addr.port())
            .user("agent:report-bot")
            .password(token("agent:report-bot"))
            .dbname(DATABASE)
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Straight to the database as the application role, past the gateway.
    fn direct(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.cluster_port)
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname(DATABASE);
        c
    }

    fn who(&self, id: &str) -> Principal {
        self.gw.config.principals[id].clone()
    }

    async fn approve(&self, reviewer: &str, id: &str) {
        self.gw
            .review(&self.who(reviewer), id, ReviewDecision::Approve, None)
            .await
            .unwrap();
    }

    async fn deny(&self, reviewer: &str, id: &str) {
        self.gw
            .review(&self.who(reviewer), id, ReviewDecision::Deny, None)
            .await
            .unwrap();
    }

    /// The log's entries, lean statement entries read as the full entries
    /// they stand for (their shape must be in the log: checked here).
    fn entries(&self) -> Vec<Value> {
        let n = self.gw.store.log_size();
        let mut shapes = secondkey_log::lean::Shapes::default();
        self.gw
            .store
            .entries(0, n)
            .unwrap()
            .iter()
            .map(|b| {
                let e = secondkey_log::entry::Entry::from_bytes(b).unwrap();
                let mut v = serde_json::to_value(&e).unwrap();
                if let Some(full) = shapes.feed(&e).unwrap() {
                    v["payload"] = full;
                }
                v
            })
            .collect()
    }

    /// The log's entries exactly as logged.
    fn raw_entries(&self) -> Vec<Value> {
        let n = self.gw.store.log_size();
        self.gw
            .store
            .entries(0, n)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect()
    }

    fn events(&self, name: &str) -> Vec<Value> {
        self.entries()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("{e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| format!("{e}"))
}

async fn wait_for<F: Fn() -> bool>(f: F) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_run_denials_name_the_policy_and_nothing_unparseable_passes() {
    let env = setup("retry").await;
    let c = env.connect().await;
    // The client logged in as its principal; upstream it is the app role.
    let row = c.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), APP_USER);
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1200);

    // Deny: no policy permits DDL (a default deny, said so). The table
    // survives.
    let e = c.batch_execute("DROP TABLE customers").await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(message(&e).contains("decision act_"), "{}", message(&e));
    assert!(
        message(&e).ends_with("default deny (no permit matched)"),
        "{}",
        message(&e)
    );
    // Deny naming the policy.
    let e = c
        .batch_execute("DELETE FROM customers WHERE id = 1")
        .await
        .unwrap_err();
    assert!(
        message(&e).contains("no-deletes-of-customers"),
        "{}",
        message(&e)
    );
    // Smuggling behind a harmless statement, comments, case tricks.
    for sql in [
        "SELECT 1; DROP TABLE customers",
        "select 1;/**/DrOp/**/TABLE customers",
        "WITH d AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM d",
        "COPY customers TO PROGRAM 'cat > /tmp/x'",
        "SELECT pg_read_file('/etc/passwd')",
        "SET ROLE postgres",
        "DO $$ BEGIN DROP TABLE customers; END $$",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {e}");
    }
    // Unparseable: refused, never passed through.
    let e = c
        .batch_execute("DROP TABLE customers; SELEC 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42601", "{e}");
    let e = c
        .batch_execute("SET client_encoding = 'SJIS'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1200);
    // Writes carry EXPLAIN's estimate as a gateway fact.
    c.batch_execute("DELETE FROM orders WHERE id > 15")
        .await
        .unwrap();
    let del = env
        .events("action.allowed")
        .into_iter()
        .find(|e| e["payload"]["action"]["operation"] == "delete")
        .unwrap();
    assert!(
        del["payload"]["facts"]["estimated_rows"]
            .as_i64()
            .is_some_and(|n| n > 0),
        "{del}"
    );
    // The client's address, as the gateway observed it: a fact.
    assert_eq!(del["payload"]["facts"]["source_ip"], "127.0.0.1", "{del}");
    // The log holds a decision for each, and results with row counts.
    assert!(env.events("action.denied").len() >= 9);
    wait_for(|| {
        env.events("action.result").iter().any(|e| {
            e["payload"]["summary"]["command_tags"][0] == "SELECT 1" && e["payload"]["ok"] == true
        })
    })
    .await;
    env.stop().await;
}

/// Allowed statements are logged lean: each session records a statement
/// shape once (its text cut at its literals, the action around it, the
/// facts), durably before the first statement of that shape runs, and each
/// statement's entry names the shape by digest with its own values. The
/// full entry — text, parameters, digest — is rebuilt from the log alone,
/// and a lean entry whose shape is missing is detected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_statements_are_logged_lean_by_shape_once_per_session() {
    let env = setup("retry").await;
    let c = env.connect().await;
    for id in [1, 2, 3] {
        c.simple_query(&format!("SELECT email FROM customers  WHERE id = {id}"))
            .await
            .unwrap();
    }
    let st = c
        .prepare("SELECT email FROM customers WHERE id = $1")
        .await
        .unwrap();
    for id in [4i32, 5] {
        c.query_one(&st, &[&id]).await.unwrap();
    }
    let c2 = env.connect().await;
    c2.simple_query("SELECT email FROM customers  WHERE id = 9")
        .await
        .unwrap();
    // Held for review (and not run): logged in full, no shape.
    let e = c
        .execute("UPDATE orders SET total = 1 WHERE id = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SK001", "{e}");

    let raw = env.raw_entries();
    let shapes: Vec<&Value> = raw
        .iter()
        .filter(|e| e["event"] == "statement.shape")
        .collect();
    let simple_text = serde_json::json!(["SELECT email FROM customers  WHERE id = ", ""]);
    let of = |text: &Value| -> Vec<&Value> {
        shapes
            .iter()
            .copied()
            .filter(|e| e["payload"]["text"] == *text)
            .collect()
    };
    // One shape per session for the simple query, one for the prepared one.
    let simple = of(&simple_text);
    assert_eq!(simple.len(), 2, "{shapes:?}");
    let (s1, s2) = (&simple[0]["payload"], &simple[1]["payload"]);
    assert_ne!(s1["session"], s2["session"]);
    assert!(s1["session"].as_str().unwrap().starts_with("pgs_"));
    // The same statement shape, so the same digest in both sessions.
    assert_eq!(s1["shape"], s2["shape"]);
    assert_eq!(
        s1["facts"]["tables"],
        serde_json::json!(["public.customers"])
    );
    assert!(s1["action"]["params"].get("statement").is_none(), "{s1}");
    let bound = of(&serde_json::json!([
        "SELECT email FROM customers WHERE id = $1"
    ]));
    assert_eq!(bound.len(), 1, "{shapes:?}");
    assert_eq!(shapes.len(), 3, "{shapes:?}");
    let held = raw
        .iter()
        .rfind(|e| e["event"] == "request.created")
        .expect("the held UPDATE");
    assert_eq!(
        held["payload"]["action"]["params"]["statement"],
        "UPDATE orders SET total = 1 WHERE id = $1"
    );
    assert_eq!(bound[0]["payload"]["session"], s1["session"]);

    // Each statement's own entry names its shape and carries its values,
    // not the action.
    let lean: Vec<&Value> = raw
        .iter()
        .filter(|e| e["event"] == "action.allowed" && e["payload"]["session"] == s1["session"])
        .collect();
    assert_eq!(lean.len(), 5, "{lean:?}");
    for (e, want) in lean[..3].iter().zip(["1", "2", "3"]) {
        assert_eq!(e["payload"]["shape"], s1["shape"], "{e}");
        assert_eq!(e["payload"]["literals"], serde_json::json!([want]), "{e}");
        assert!(e["payload"].get("action").is_none() && e["payload"].get("facts").is_none());
    }
    for (e, want) in lean[3..].iter().zip([4, 5]) {
        assert_eq!(e["payload"]["shape"], bound[0]["payload"]["shape"], "{e}");
        assert_eq!(e["payload"]["parameters"], serde_json::json!([want]), "{e}");
        assert!(e["payload"]["parameters_sha256"].is_string(), "{e}");
    }
    // Shapes come before the statements that name them.
    let index = |e: &Value| e["index"].as_u64().unwrap();
    assert!(index(simple[0]) < index(lean[0]) && index(bound[0]) < index(lean[3]));

    // Rebuilt from the log alone: the text, the parameters, the facts, and
    // the action digest logged with each statement (`entries` checks it).
    let full = env.entries();
    let rebuilt: Vec<&Value> = full
        .iter()
        .filter(|e| e["event"] == "action.allowed" && e["payload"]["session"].is_null())
        .filter(|e| lean.iter().any(|l| l["index"] == e["index"]))
        .collect();
    assert_eq!(rebuilt.len(), 5);
    assert_eq!(
        rebuilt[2]["payload"]["action"]["params"]["statement"],
        "SELECT email FROM customers  WHERE id = 3"
    );
    assert_eq!(rebuilt[2]["payload"]["facts"]["protocol"], "simple");
    assert_eq!(
        rebuilt[4]["payload"]["action"]["params"]["parameters"],
        serde_json::json!([5])
    );
    assert_eq!(
        rebuilt[4]["payload"]["action"]["params"]["statement"],
        "SELECT email FROM customers WHERE id = $1"
    );
    assert_eq!(rebuilt[4]["payload"]["facts"]["source_ip"], "127.0.0.1");

    // Without the shape entry of the first session, its statements are
    // detected as unresolvable.
    let bytes = env.gw.store.entries(0, env.gw.store.log_size()).unwrap();
    let report = secondkey_log::lean::check_statements(&bytes).unwrap();
    assert_eq!(report.lean, 6);
    assert_eq!(report.shapes, 3);
    let without: Vec<&Vec<u8>> = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 != index(simple[0]))
        .map(|(_, b)| b)
        .collect();
    match secondkey_log::lean::check_statements(&without) {
        Err(secondkey_log::lean::LeanError::MissingShape { session, .. }) => {
            assert_eq!(session, s1["session"].as_str().unwrap())
        }
        other => panic!("a missing shape went unnoticed: {other:?}"),
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_binds_parameters_into_the_action() {
    let env = setup("retry").await;
    let c = env.connect().await;
    let st = c
        .prepare("SELECT email FROM customers WHERE id = $1")
        .await
        .unwrap();
    for id in [1i32, 2, 3] {
        let r = c.query_one(&st, &[&id]).await.unwrap();
        assert_eq!(r.get::<_, String>(0), format!("c{id}@example.com"));
    }
    let allowed = env.events("action.allowed");
    let last = &allowed.last().unwrap()["payload"]["action"];
    assert_eq!(
        last["params"]["statement"],
        "SELECT email FROM customers WHERE id = $1"
    );
    // tokio-postgres sends the int4 in binary: shown decoded, and the
    // digest binds the bytes as sent.
    assert_eq!(last["params"]["parameters"][0], 3);
    assert_eq!(
        last["params"]["parameters_sha256"].as_str().map(str::len),
        Some(64)
    );
    // A NULL parameter is decided like any other (policies see the other
    // values), not refused as undecidable; it is logged as null.
    let none: Option<i32> = None;
    let r = c.query_opt(&st, &[&none]).await.unwrap();
    assert!(r.is_none());
    let allowed = env.events("action.allowed");
    let last = &allowed.last().unwrap()["payload"]["action"];
    assert_eq!(last["params"]["parameters"], serde_json::json!([null]));
    // DISCARD PLANS keeps the prepared statements (only DISCARD ALL and
    // DEALLOCATE drop them), in the server and in the gateway's mirror.
    c.batch_execute("DISCARD PLANS").await.unwrap();
    let r = c.query_one(&st, &[&1i32]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "c1@example.com");
    c.batch_execute("DISCARD ALL").await.unwrap();
    let e = c.query_one(&st, &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), "26000", "{e}");
    // A write to orders needs one review: held with its own parameters.
    let ins = c
        .prepare("INSERT INTO orders VALUES ($1, 1, 10)")
        .await
        .unwrap();
    let e = c.execute(&ins, &[&100i32]).await.unwrap_err();
    assert_eq!(code(&e), "SK001", "{e}");
    let rid = message(&e).rsplit(' ').next().unwrap().to_string();
    env.approve("user:bob", &rid).await;
    // The same statement with other parameters is not what was approved.
    let e = c.execute(&ins, &[&101i32]).await.unwrap_err();
    assert_eq!(code(&e), "SK001", "{e}");
    assert!(!message(&e).contains(&rid));
    // The approved one runs, once.
    assert_eq!(c.execute(&ins, &[&100i32]).await.unwrap(), 1);
    let e = c.execute(&ins, &[&100i32]).await.unwrap_err();
    assert_eq!(code(&e), "SK001", "{e}");
    assert!(!message(&e).contains(&rid), "a used approval ran twice");
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders WHERE id >= 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // Text values of a Parse that declared their types: bound with the
    // types (an int8 '1' is not a text '1').
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_login(env.pg, "agent:report-bot").await;
    let mut hashes = Vec::new();
    for oid in [20u32, 25] {
        let mut p = bytes::BytesMut::new();
        secondkey_pg::proto::put_cstr(&mut p, "");
        secondkey_pg::proto::put_cstr(&mut p, "SELECT $1 IS NULL");
        p.put_u16(1);
        p.put_u32(oid);
        let mut batch = frame(b'P', &p);
        batch.extend(frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        raw.stream.write_all(&batch).await.unwrap();
        let got = answers(&mut raw, true).await;
        let types: String = got.iter().map(|m| m.0).collect();
        assert_eq!(types, "12DCZ", "{got:?}");
        let allowed = env.events("action.allowed");
        let params = &allowed.last().unwrap()["payload"]["action"]["params"];
        assert_eq!(params["parameters"], serde_json::json!(["1"]), "{params}");
        hashes.push(params["parameters_sha256"].clone());
    }
    assert!(
        hashes[0].is_string() && hashes[0] != hashes[1],
        "{hashes:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_export_waits_for_two_reviewers_runs_once_and_logs_its_rows() {
    let env = setup("wait").await;
    let c = env.connect().await;
    let gw = env.gw.clone();
    let approver = tokio::spawn({
        let gw = gw.clone();
        let (alice, bob) = (env.who("user:carol"), env.who("user:bob"));
        async move {
            let mut changes = gw.subscribe();
            let id = loop {
                let ch = changes.recv().await.unwrap();
                if ch.event == "request.created" {
                    break ch.id;
                }
            };
            gw.review(&alice, &id, ReviewDecision::Approve, None)
                .await
                .unwrap();
            gw.review(&bob, &id, ReviewDecision::Approve, None)
                .await
                .unwrap();
            id
        }
    });
    let stream = c.copy_out("COPY customers TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1200);
    let id = approver.await.unwrap();
    wait_for(|| {
        env.events("action.result.detail")
            .iter()
            .any(|e| e["subjects"]["request"] == id.as_str())
    })
    .await;
    let detail = env
        .events("action.result.detail")
        .into_iter()
        .find(|e| e["subjects"]["request"] == id.as_str())
        .unwrap();
    assert_eq!(detail["payload"]["summary"]["rows"], 1200, "{detail}");
    assert_eq!(detail["payload"]["summary"]["command_tags"][0], "COPY 1200");
    assert_eq!(env.events("grant.consumed").len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_inside_a_transaction_keeps_it_open_and_cancel_ends_a_wait() {
    let env = setup("wait").await;
    let c = env.connect().await;
    c.batch_execute("BEGIN; INSERT INTO customers VALUES (5000, 'new@example.com')")
        .await
        .unwrap();
    let cancel = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel_query(NoTls).await.unwrap();
    });
    let e = c
        .batch_execute("INSERT INTO orders VALUES (200, 1, 1)")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().clone()),
        Some(SqlState::QUERY_CANCELED),
        "{e}"
    );
    canceller.await.unwrap();
    // The transaction is still open and usable.
    let r = c
        .simple_query("SELECT count(*) FROM customers WHERE id = 5000")
        .await
        .unwrap();
    assert!(r
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("1"))));
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(env.events("request.withdrawn").len(), 1);
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders WHERE id = 200", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_and_client_exit_are_handled() {
    let env = setup("retry").await;
    let c = env.connect().await;
    c.batch_execute("SELECT 1").await.unwrap();
    let port = env.cluster_port;
    let count_app = move || {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                APP_USER,
                "-d",
                DATABASE,
                "-c",
            ])
            .arg("SELECT count(*) - 1 FROM pg_stat_activity WHERE usename = 'app'")
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(tokio::task::spawn_blocking(count_app).await.unwrap(), "1");
    drop(c);
    for _ in 0..100 {
        if tokio::task::spawn_blocking(count_app).await.unwrap() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        tokio::task::spawn_blocking(count_app).await.unwrap(),
        "0",
        "the upstream session outlived its client"
    );
    // The server restarts under a connected client: the client gets an
    // error, a new connection works.
    let c = env.connect().await;
    c.batch_execute("SELECT 1").await.unwrap();
    tokio::task::block_in_place(|| env._cluster.restart());
    assert!(c.batch_execute("SELECT 1").await.is_err());
    let c = env.connect().await;
    c.batch_execute("SELECT 1").await.unwrap();
    env.stop().await;
}

// ---- TLS ------------------------------------------------------------------

/// A private certificate authority, made with rcgen.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (host names or IP addresses) and
    /// its private key, both PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A `[[postgres]]` section whose upstream speaks TLS: the gateway dials
/// `host` and trusts `ca_file` (`None`: the public web roots).
fn tls_upstream_section(name: &str, port: u16, host: &str, ca_file: Option<&Path>) -> String {
    let verifier = secondkey_pg::scram::new_verifier(&token("agent:report-bot"));
    let ca = ca_file
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[[postgres]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"agent:report-bot\"]\nhold = \"retry\"\n[postgres.upstream]\nhost = \"{host}\"\nport = {port}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_env = \"SK_TEST_PG_PASSWORD\"\ntls = true\n{ca}[postgres.scram]\n\"agent:report-bot\" = \"{verifier}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_certificate_is_verified_before_anything_is_sent() {
    let ca = Ca::new("secondkey test CA");
    let other = Ca::new("someone else's CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_tls(20, &cert, &key))
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ours = certs.path().join("ca.pem");
    let theirs = certs.path().join("other-ca.pem");
    std::fs::write(&ours, ca.pem()).unwrap();
    std::fs::write(&theirs, other.pem()).unwrap();
    let port = cluster.port;
    let sections = [
        tls_upstream_section("verified", port, "127.0.0.1", Some(&ours)),
        // The server's certificate is not signed by the CA the gateway trusts.
        tls_upstream_section("other-ca", port, "127.0.0.1", Some(&theirs)),
        // The certificate names 127.0.0.1, not the host the gateway dials.
        tls_upstream_section("other-name", port, "localhost", Some(&ours)),
        // Without ca_file only public roots are trusted, not a private CA.
        tls_upstream_section("public-roots", port, "127.0.0.1", None),
    ]
    .concat();
    let env = start_gateway(cluster, &sections).await;

    // The right CA: the gateway logs in over TLS and queries run.
    let c = env.connect_to(env.addrs[0]).await.expect("connect via TLS");
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the upstream session is not TLS");
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    drop(c);
    let log = env._cluster.server_log();
    assert!(
        log.lines()
            .any(|l| l.contains("connection authorized: user=app") && l.contains("SSL enabled")),
        "{log}"
    );

    for (i, why) in [
        (1, "UnknownIssuer"),
        (2, "not valid for name"),
        (3, "UnknownIssuer"),
    ] {
        let before = env._cluster.server_log().len();
        let e = env.connect_to(env.addrs[i]).await.unwrap_err();
        assert_eq!(code(&e), "08006", "{e}");
        let m = message(&e);
        assert!(
            m.contains("TLS to the upstream database failed") && m.contains(why),
            "{why}: {m}"
        );
        assert!(!m.contains(APP_PASSWORD), "{m}");
        // The server saw the handshake fail, and no login or statement after it.
        let since = || env._cluster.server_log()[before..].to_string();
        wait_for(|| since().contains("could not accept SSL connection")).await;
        let new = since();
        for never in ["connection authorized", "statement:", "execute "] {
            assert!(!new.contains(never), "{why}: {never:?} in\n{new}");
        }
    }
    env.stop().await;
}

/// tokio-postgres over rustls (tokio-postgres ships no TLS of its own).
#[derive(Clone)]
struct RustlsConnector(Arc<rustls::ClientConfig>);

impl RustlsConnector {
    fn trusting(ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        RustlsConnector(Arc::new(cfg))
    }
}

struct RustlsConnect(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

struct RustlsStream(tokio_rustls::client::TlsStream<tokio_postgres::Socket>);

impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for RustlsConnector {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnect(self.0.clone(), name))
    }
}

impl tokio_postgres::tls::TlsConnect<tokio_postgres::Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.0)
                .connect(self.1, stream)
                .await
                .map(RustlsStream)
        })
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

async fn connect_tls(
    addr: SocketAddr,
    user: &str,
    password: &str,
    tls: &RustlsConnector,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(DATABASE)
        .ssl_mode(SslMode::Require)
        .connect(tls.clone())
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Sends a plain startup message and returns the first message the
/// gateway answers with: its type, SQLSTATE and message.
async fn first_answer_to_plain_startup(addr: SocketAddr, user: &str) -> (u8, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = secondkey_pg::proto::PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", DATABASE)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&msg).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some((ty, body)) = secondkey_pg::proto::take_message(&mut buf, 1 << 20).unwrap() {
            let (code, message) = secondkey_pg::proto::error_fields(&body);
            return (ty, code, message);
        }
        let n = s.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway closed without an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_a_password_only_over_tls() {
    let ca = Ca::new("secondkey test CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let certs = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (
        certs.path().join("gateway.crt"),
        certs.path().join("gateway.key"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(20))
        .await
        .unwrap();
    // No SCRAM verifier: the agent's token is its password, over TLS.
    let section = format!(
        "[[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:0\"\nprincipals = [\"agent:report-bot\"]\nhold = \"retry\"\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_env = \"SK_TEST_PG_PASSWORD\"\n[postgres.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cluster.port,
        cert_file.display(),
        key_file.display()
    );
    let env = start_gateway(cluster, &section).await;
    let tls = RustlsConnector::trusting(&ca.pem());
    let bot = "agent:report-bot";

    // sslmode=require, the certificate verified against the CA, the token
    // as the password: in, as the upstream role.
    let c = connect_tls(env.pg, bot, &token(bot), &tls)
        .await
        .expect("a TLS login with the token");
    let row = c.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), APP_USER);
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    let allowed = env.events("action.allowed");
    assert!(
        allowed
            .iter()
            .any(|e| e.to_string().contains("agent:report-bot")),
        "{allowed:?}"
    );

    // Over TLS, a wrong token, another principal's token, or a principal
    // this connection does not serve: refused alike.
    let alice = token("user:alice");
    for (user, password) in [
        (bot, "not-the-token"),
        (bot, alice.as_str()),
        ("user:alice", alice.as_str()),
    ] {
        let e = connect_tls(env.pg, user, password, &tls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in with {password:?}"));
        assert_eq!(code(&e), "28P01", "{user}: {e}");
    }

    // Without TLS the same login is refused, before any password is asked
    // for: a token never crosses the network in clear.
    let e = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(env.pg.port())
        .user(bot)
        .password(token(bot))
        .dbname(DATABASE)
        .ssl_mode(SslMode::Disable)
        .connect(NoTls)
        .await
        .err()
        .expect("a plain login with the token was accepted");
    assert_eq!(code(&e), "28000", "{e}");
    assert!(message(&e).contains("over TLS"), "{}", message(&e));
    let (ty, sqlstate, msg) = first_answer_to_plain_startup(env.pg, bot).await;
    assert_eq!(
        (ty, sqlstate.as_str()),
        (b'E', "28000"),
        "the first answer was {:?}: {msg}",
        ty as char
    );

    // Only the one good login opened an upstream session.
    let sessions = tokio::task::block_in_place(|| {
        env._cluster.superuser_sql(
            DATABASE,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        )
    });
    assert_eq!(sessions, "1");
    drop(c);
    env.stop().await;
}

// ---- SQL that reaches around the decision ---------------------------------

/// A driver's prepared statements and bound portals share PostgreSQL's
/// name space with SQL's EXECUTE and FETCH. Preparing or binding runs
/// nothing, so the gateway decides only when it sees Execute; SQL that runs
/// them by name must never pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_portals_cannot_be_run_from_sql() {
    let env = setup("retry").await;
    let delete = "DELETE FROM customers WHERE id = 1 RETURNING id";
    let gone = "SELECT count(*) FROM customers WHERE id = 1";
    let statement_name = "SELECT name FROM pg_prepared_statements WHERE statement = $1";
    let portal_name = "SELECT name FROM pg_cursors WHERE statement = $1";

    // Straight to the database, each of these deletes the row: the attacks
    // are real (rolled back here).
    let (mut direct, conn) = env.direct().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    for attack in ["EXPLAIN ANALYZE EXECUTE {s}", "FETCH ALL FROM {p}"] {
        let tx = direct.transaction().await.unwrap();
        let st = tx.prepare(delete).await.unwrap();
        let portal = tx.bind(&st, &[]).await.unwrap();
        let s: String = tx
            .query_one(statement_name, &[&delete])
            .await
            .unwrap()
            .get(0);
        let p: String = tx.query_one(portal_name, &[&delete]).await.unwrap().get(0);
        tx.batch_execute(&attack.replace("{s}", &s).replace("{p}", &p))
            .await
            .unwrap();
        let n: i64 = tx.query_one(gone, &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{attack} did not run the delete");
        drop(portal);
        tx.rollback().await.unwrap();
    }

    // Through the gateway: refused, and the row stays.
    let mut c = env.connect().await;
    let st = c.prepare(delete).await.unwrap();
    let s: String = c
        .query_one(statement_name, &[&delete])
        .await
        .unwrap()
        .get(0);
    for sql in [
        format!("EXPLAIN ANALYZE EXECUTE {s}"),
        format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {s}"),
        format!("CREATE TEMP TABLE stolen AS EXECUTE {s}"),
        format!("EXECUTE {s}"),
    ] {
        let e = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
        let n: i64 = c.query_one(gone, &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "{sql} ran the delete");
    }
    let tx = c.transaction().await.unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    // Binding sent nothing: the server has no such portal before the
    // decision of its Execute.
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_cursors WHERE statement = $1",
            &[&delete],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the Bind reached the server before any decision");
    // A portal the server does hold (a read, run in part) is not FETCHed
    // from SQL either: only Execute continues it, decided.
    let read = "SELECT id FROM customers ORDER BY id";
    let reading = tx
        .bind(&tx.prepare(read).await.unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(tx.query_portal(&reading, 1).await.unwrap().len(), 1);
    let p: String = tx.query_one(portal_name, &[&read]).await.unwrap().get(0);
    for sql in [
        format!("FETCH ALL FROM {p}"),
        format!("MOVE ALL IN {p}"),
        format!("SELECT 1; FETCH 1 FROM {p}"),
    ] {
        let e = tx.batch_execute(&sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
        assert!(message(&e).contains(&p), "{}", message(&e));
    }
    // The same FETCH prepared and executed through the protocol.
    let fetch = tx.prepare(&format!("FETCH ALL FROM {p}")).await.unwrap();
    let e = tx.query(&fetch, &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    let n: i64 = tx.query_one(gone, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "a FETCH ran the delete");
    // Executing the portal itself is decided — and this delete is denied.
    let e = tx.query_portal(&portal, 0).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(
        message(&e).contains("no-deletes-of-customers"),
        "{}",
        message(&e)
    );
    let n: i64 = tx.query_one(gone, &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // A cursor declared in SQL was decided when declared, and fetches.
    tx.batch_execute("DECLARE mine CURSOR FOR SELECT id FROM customers ORDER BY id")
        .await
        .unwrap();
    let rows = tx.simple_query("FETCH 2 FROM mine").await.unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["1", "2"]);
    drop((portal, reading));
    tx.rollback().await.unwrap();
    env.stop().await;
}

/// A frame of type `ty` around `body`, exactly as given (no checks).
fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = bytes::BytesMut::new();
    secondkey_pg::proto::put_raw(&mut v, ty, body);
    v.to_vec()
}

/// What came back on a raw connection: `(type, sqlstate, message)` per
/// message (the codes only for errors), up to ReadyForQuery when `upto_ready`,
/// else up to the end of the connection.
async fn answers(
    s: &mut secondkey_pg::upstream::Session,
    upto_ready: bool,
) -> Vec<(char, String, String)> {
    answers_until(s, upto_ready.then_some('Z')).await
}

/// Tables are named by `default_schema`. Once a session may have changed
/// its search path (here a procedure calling set_config, which agents may
/// run as a write), an unqualified table could be another schema's — read
/// as `public.customers` but run on `secret.customers` — so it is refused
/// with a hint to name the schema, in that session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_search_path_may_have_moved_unqualified_tables_are_refused() {
    let env = setup("retry").await;
    let (direct, conn) = env.direct().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    direct
        .batch_execute(
            "CREATE SCHEMA secret; CREATE TABLE secret.customers (id int, salary int); \
             INSERT INTO secret.customers VALUES (1, 100); \
             CREATE PROCEDURE public.move_path() LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM set_config('search_path', 'secret', false); END $$;",
        )
        .await
        .unwrap();
    let c = env.connect().await;
    c.query("SELECT id FROM customers", &[]).await.unwrap();
    c.batch_execute("CALL move_path()").await.unwrap();
    for sql in ["SELECT salary FROM customers", "DELETE FROM customers"] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
        assert!(
            message(&e).contains("name its schema (schema.customers)"),
            "{sql}: {e}"
        );
    }
    // Extended protocol too; a qualified name is decided as before.
    let e = c
        .query("SELECT salary FROM customers", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    let rows = c
        .query("SELECT salary FROM secret.customers", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 100);
    // Nothing ran on the unqualified names; another session is not affected.
    let n: i64 = direct
        .query_one("SELECT count(*) FROM secret.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let other = env.connect().await;
    other.query("SELECT id FROM customers", &[]).await.unwrap();
    env.stop().await;
}

/// A simple Query the gateway answers itself (refused, or not SQL) right
/// after extended-protocol messages with no Sync: the client gets the
/// server's answers to those, then the refusal and ReadyForQuery, without
/// sending Sync — PostgreSQL answers a Query at once whatever came before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_query_after_an_unsynced_parse_is_answered_at_once() {
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;
    let env = setup("retry").await;
    for (q, want) in [("selec 1", "42601"), ("DROP TABLE customers", "42501")] {
        let mut raw = raw_login(env.pg, "agent:report-bot").await;
        let mut p = bytes::BytesMut::new();
        secondkey_pg::proto::put_cstr(&mut p, "");
        secondkey_pg::proto::put_cstr(&mut p, "SELECT id FROM customers");
        p.put_u16(0);
        let mut batch = frame(b'P', &p);
        let mut body = bytes::BytesMut::new();
        secondkey_pg::proto::put_cstr(&mut body, q);
        batch.extend(frame(b'Q', &body));
        raw.stream.write_all(&batch).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), answers(&mut raw, true))
            .await
            .unwrap_or_else(|_| panic!("{q}: no answer without a Sync"));
        let types: String = got.iter().map(|m| m.0).collect();
        assert_eq!(types, "1EZ", "{q}: {got:?}");
        assert_eq!(got[1].1, want, "{q}: {got:?}");
    }
    // The table is still there: nothing refused ran.
    let c = env.connect().await;
    c.query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap();
    env.stop().await;
}

/// Hostile bytes from a logged-in client: each ends only its own connection
/// with a protocol error (08P01) naming what was wrong, or refuses the one
/// statement; nothing malformed is forwarded or decided, and the gateway
/// goes on serving. Garbage startup packets are dropped unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_wire_input_ends_only_its_connection_and_runs_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = setup("retry").await;
    let decided = |env: &Env| {
        env.entries()
            .iter()
            .filter(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("action."))
            })
            .count()
    };
    let login = secondkey_pg::config::Upstream {
        host: "127.0.0.1".into(),
        port: env.pg.port(),
        database: DATABASE.into(),
        user: "agent:report-bot".into(),
        password: Some(secondkey_pg::config::Secret(token("agent:report-bot"))),
        tls: false,
        ca_file: None,
    };
    let before = decided(&env);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an unknown message type",
            frame(b'Z', b""),
            "unexpected message type",
        ),
        (
            "a length below 4",
            vec![b'Q', 0, 0, 0, 2],
            "malformed framed",
        ),
        (
            "a 2 GiB length",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
            "larger than the gateway accepts",
        ),
        (
            "a second statement after the Query's NUL",
            frame(b'Q', b"SELECT 1\0DROP TABLE customers\0"),
            "malformed Query",
        ),
        (
            "a Query without its NUL",
            frame(b'Q', b"DROP TABLE customers"),
            "malformed Query",
        ),
        (
            "a Bind cut short",
            frame(b'B', b"\0\0\0\x01"),
            "malformed Bind",
        ),
        (
            "an Execute without its row limit",
            frame(b'E', b"\0"),
            "malformed Execute",
        ),
        (
            "a Describe of neither kind",
            frame(b'D', b"Xs\0"),
            "malformed Describe",
        ),
        // Bytes after the last field: PostgreSQL would refuse these too,
        // the gateway does before forwarding or deciding anything.
        (
            "a byte after a Parse",
            frame(b'P', b"s\0SELECT 1\0\0\0X"),
            "malformed Parse",
        ),
        (
            "a Bind without its result formats",
            frame(b'B', b"\0s\0\0\0\0\0"),
            "malformed Bind",
        ),
        (
            "a byte after a Bind",
            frame(b'B', b"\0s\0\0\0\0\0\0\0X"),
            "malformed Bind",
        ),
        (
            "a byte after an Execute",
            frame(b'E', b"\0\0\0\0\0X"),
            "malformed Execute",
        ),
        (
            "a byte after a Describe",
            frame(b'D', b"Ss\0X"),
            "malformed Describe",
        ),
    ];
    for (what, bytes, want) in cases {
        let mut s = secondkey_pg::upstream::connect(&login, None, &[])
            .await
            .unwrap();
        s.stream.write_all(&bytes).await.unwrap();
        let got = answers(&mut s, false).await;
        let last = got.last().unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(last.0, 'E', "{what}: {got:?}");
        assert_eq!(last.1, "08P01", "{what}: {got:?}");
        assert!(last.2.contains(want), "{what}: {got:?}");
    }
    // A simple query that is not UTF-8 is refused as a statement, and a
    // Parse or Bind holding such a string as an error of its batch (22021,
    // as in PostgreSQL); the connection goes on and runs the next one.
    let mut s = secondkey_pg::upstream::connect(&login, None, &[])
        .await
        .unwrap();
    s.stream
        .write_all(&frame(b'Q', b"SELECT '\xff'\0"))
        .await
        .unwrap();
    let got = answers(&mut s, true).await;
    assert_eq!(got.first().map(|m| m.1.as_str()), Some("22021"), "{got:?}");
    for bad in [
        frame(b'P', b"\xff\0SELECT 1\0\0\0"),
        frame(b'B', b"\0\xff\0\0\0\0\0\0\0"),
    ] {
        let mut batch = bad;
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        s.stream.write_all(&batch).await.unwrap();
        let got = answers(&mut s, true).await;
        let types: String = got.iter().map(|m| m.0).collect();
        assert_eq!(
            types, "EZ",
            "one error, the rest skipped up to Sync: {got:?}"
        );
        assert_eq!(got[0].1, "22021", "{got:?}");
    }
    s.stream
        .write_all(&frame(b'Q', b"SELECT 1\0"))
        .await
        .unwrap();
    let got = answers(&mut s, true).await;
    let types: String = got.iter().map(|m| m.0).collect();
    assert_eq!(types, "TDCZ", "{got:?}");
    // Garbage where the startup packet goes: the connection is dropped,
    // with a FATAL where PostgreSQL sends one, never with a login.
    for (bytes, want) in [
        (vec![0u8, 0, 0, 3], None),
        (vec![0, 1, 0, 0, 0, 3, 0, 0], None),
        (vec![0, 0, 0, 8, 1, 2, 3, 4], Some("0A000")),
        (vec![0, 0, 0, 9, 0, 3, 0, 0, 0], Some("28000")),
    ] {
        let mut t = tokio::net::TcpStream::connect(env.pg).await.unwrap();
        t.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), t.read_to_end(&mut rest))
            .await
            .expect("the gateway closes the connection");
        let mut buf = bytes::BytesMut::from(&rest[..]);
        let mut codes = Vec::new();
        while let Some((ty, body)) = secondkey_pg::proto::take_message(&mut buf, 1 << 20).unwrap() {
            assert_eq!(ty, b'E', "{bytes:?}: {rest:?}");
            codes.push(secondkey_pg::proto::error_fields(&body).0);
        }
        assert!(buf.is_empty(), "{bytes:?}: {rest:?}");
        assert_eq!(codes, want.into_iter().collect::<Vec<_>>(), "{bytes:?}");
    }
    // Only the one good SELECT was decided (its decision and its result).
    wait_for(|| decided(&env) >= before + 2).await;
    assert_eq!(decided(&env), before + 2, "{:?}", env.entries());
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1200);
    env.stop().await;
}

// ---- nothing evaluated before the decision ---------------------------------

/// Runs SQL as the superuser (psql) without blocking the runtime.
fn superuser(env: &Env, sql: &str) -> String {
    tokio::task::block_in_place(|| env._cluster.superuser_sql(DATABASE, sql))
}

/// A raw client logged in at `addr` as `who` (SCRAM).
async fn raw_login(addr: SocketAddr, who: &str) -> secondkey_pg::upstream::Session {
    secondkey_pg::testing::raw_login(addr.port(), who, &token(who)).await
}

/// Parse (unnamed, no declared types), Bind of `params` as text, Describe
/// of the portal, Execute, Sync — what libpq's PQexecParams sends.
fn exec_params(sql: &str, params: &[&str]) -> Vec<u8> {
    use bytes::BufMut;
    let mut p = bytes::BytesMut::new();
    secondkey_pg::proto::put_cstr(&mut p, "");
    secondkey_pg::proto::put_cstr(&mut p, sql);
    p.put_u16(0);
    let mut b = bytes::BytesMut::new();
    secondkey_pg::proto::put_cstr(&mut b, "");
    secondkey_pg::proto::put_cstr(&mut b, "");
    b.put_u16(0);
    b.put_u16(params.len() as u16);
    for v in params {
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
    }
    b.put_u16(0);
    let mut out = frame(b'P', &p);
    out.extend(frame(b'B', &b));
    out.extend(frame(b'D', b"P\0"));
    out.extend(frame(b'E', b"\0\0\0\0\0"));
    out.extend(frame(b'S', b""));
    out
}

/// The id of the next request the gateway opens.
async fn next_request(
    changes: &mut tokio::sync::broadcast::Receiver<secondkey_server::gateway::RequestChange>,
) -> String {
    loop {
        let ch = changes.recv().await.unwrap();
        if ch.event == "request.created" {
            return ch.id;
        }
    }
}

/// Notifications on channel `sk`, received on a direct connection.
async fn listen_sk(env: &Env) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut conn) = env.direct().connect(NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = futures_util::StreamExt::next(&mut s).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN sk").await.unwrap();
    (client, rx)
}

/// Payloads received up to and including `marker` (notifications of one
/// session arrive in commit order).
async fn notified_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    marker: &str,
) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the marker notification")
            .unwrap();
        let done = p == marker;
        got.push(p);
        if done {
            return got;
        }
    }
}

/// What PostgreSQL evaluates before a statement executes — parse analysis
/// (string constants read by their type's input), Bind (parameter input,
/// planning that folds IMMUTABLE functions, also behind column defaults)
/// and the gateway's own EXPLAIN (`estimate_rows = true` here) — must not
/// run before the decision, nor ever after a denial. Each case has a
/// positive control: approved, the same statement does run the code, so
/// the checks would see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_database_evaluates_runs_before_the_decision() {
    let env = setup("wait").await;
    superuser(
        &env,
        "SET ROLE app; CREATE SEQUENCE sk_seq; CREATE TABLE hits (what text); \
         CREATE FUNCTION sidefx() RETURNS int LANGUAGE plpgsql IMMUTABLE AS \
           $$ BEGIN PERFORM nextval('sk_seq'); PERFORM pg_notify('sk', 'ran'); RETURN 1; END $$; \
         CREATE FUNCTION logs_check(int) RETURNS bool LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO hits VALUES ('checked ' || $1); RETURN true; END $$; \
         CREATE DOMAIN checked AS int CHECK (logs_check(VALUE)); \
         CREATE TYPE boxed AS (v checked);",
    );
    let seq = |env: &Env| superuser(env, "SELECT last_value || '/' || is_called FROM sk_seq");
    let hits = |env: &Env| superuser(env, "SELECT count(*) FROM hits");
    let (_listener, mut notes) = listen_sk(&env).await;
    let c = env.connect().await;
    let mut changes = env.gw.subscribe();

    // 1. An IMMUTABLE function that advances a sequence and notifies,
    //    called over the extended protocol in a held statement.
    let ins = c
        .prepare("INSERT INTO orders VALUES ($1, sidefx(), 1)")
        .await
        .unwrap();
    let (r, ()) = tokio::join!(c.execute(&ins, &[&300i32]), async {
        let id = next_request(&mut changes).await;
        assert_eq!(seq(&env), "1/false", "the sequence moved while held");
        env.deny("user:bob", &id).await;
    });
    assert_eq!(code(&r.unwrap_err()), "42501");
    // Denied: never. A marker notified after it arrives after anything the
    // denied statement could have notified.
    c.batch_execute("SELECT pg_notify('sk', 'after deny')")
        .await
        .unwrap();
    assert_eq!(
        notified_until(&mut notes, "after deny").await,
        ["after deny"]
    );
    assert_eq!(seq(&env), "1/false");
    // Positive control: approved, it runs the function.
    let (r, ()) = tokio::join!(c.execute(&ins, &[&301i32]), async {
        let id = next_request(&mut changes).await;
        env.approve("user:bob", &id).await;
    });
    assert_eq!(r.unwrap(), 1);
    assert_eq!(seq(&env), "1/true");
    assert!(notified_until(&mut notes, "ran")
        .await
        .contains(&"ran".to_string()));

    // 2. A parameter of a domain type whose CHECK writes a row: the
    //    DELETE is denied by policy, a held UPDATE denied by a reviewer.
    let mut raw = raw_login(env.pg, "agent:report-bot").await;
    use tokio::io::AsyncWriteExt;
    raw.stream
        .write_all(&exec_params(
            "DELETE FROM customers WHERE id = $1::checked",
            &["5"],
        ))
        .await
        .unwrap();
    let got = answers(&mut raw, true).await;
    assert!(got.iter().any(|m| m.1 == "42501"), "{got:?}");
    assert_eq!(
        hits(&env),
        "0",
        "the domain's CHECK ran for a denied DELETE"
    );
    let update = exec_params("UPDATE orders SET total = 0 WHERE id = $1::checked", &["6"]);
    raw.stream.write_all(&update).await.unwrap();
    let id = next_request(&mut changes).await;
    assert_eq!(hits(&env), "0", "the domain's CHECK ran while held");
    env.deny("user:bob", &id).await;
    let got = answers(&mut raw, true).await;
    assert!(got.iter().any(|m| m.1 == "42501"), "{got:?}");
    assert_eq!(hits(&env), "0");
    raw.stream.write_all(&update).await.unwrap();
    let id = next_request(&mut changes).await;
    env.approve("user:bob", &id).await;
    let got = answers(&mut raw, true).await;
    assert!(got.iter().all(|m| m.0 != 'E'), "{got:?}");
    assert_eq!(hits(&env), "1", "approved, the CHECK runs");

    // 3. A string constant whose input runs the domain's CHECK (a composite
    //    with a domain field) in a statement a driver prepares and
    //    describes first: the description works, nothing runs.
    let boxed = c
        .prepare("INSERT INTO orders VALUES ($1, ('(7)'::boxed).v, 1)")
        .await
        .unwrap();
    assert_eq!(boxed.params(), [tokio_postgres::types::Type::INT4]);
    assert_eq!(hits(&env), "1", "preparing read the constant");
    let (r, ()) = tokio::join!(c.execute(&boxed, &[&302i32]), async {
        let id = next_request(&mut changes).await;
        assert_eq!(hits(&env), "1", "the constant was read while held");
        env.deny("user:bob", &id).await;
    });
    assert_eq!(code(&r.unwrap_err()), "42501");
    assert_eq!(hits(&env), "1");
    let (r, ()) = tokio::join!(c.execute(&boxed, &[&303i32]), async {
        let id = next_request(&mut changes).await;
        env.approve("user:bob", &id).await;
    });
    assert_eq!(r.unwrap(), 1);
    assert_eq!(hits(&env), "2", "approved, the constant is read");
    let row = c
        .query_one("SELECT customer FROM orders WHERE id = 303", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    // 4. The row estimate (estimate_rows = true) of a held simple query
    //    whose column default calls the function: planning would fold it.
    superuser(
        &env,
        "SET ROLE app; ALTER TABLE orders ADD COLUMN stamp int DEFAULT sidefx()",
    );
    let before = seq(&env);
    let (r, ()) = tokio::join!(
        c.batch_execute("INSERT INTO orders (id, customer, total) VALUES (304, 1, 1)"),
        async {
            let id = next_request(&mut changes).await;
            assert_eq!(
                seq(&env),
                before,
                "EXPLAIN ran the default before the decision"
            );
            env.deny("user:bob", &id).await;
        }
    );
    assert_eq!(code(&r.unwrap_err()), "42501");
    assert_eq!(seq(&env), before);
    let held = env.events("request.created").into_iter().last().unwrap();
    assert!(
        held["payload"]["facts"].get("estimated_rows").is_none(),
        "{held}"
    );
    env.stop().await;
}

/// The flows drivers use keep working with Bind held back: describing a
/// statement before binding it (tokio-postgres, also with string
/// constants), a portal bound in one batch and executed in pieces in
/// later ones, binary parameters shown decoded; what cannot be answered
/// without running anything is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_describe_before_execute_and_see_their_parameters_decoded() {
    let env = setup("retry").await;
    let mut c = env.connect().await;
    // A string constant in a prepared statement: the server describes a
    // copy without it, and runs the original once decided.
    let rows = c
        .query(
            "SELECT email FROM customers WHERE id = $1 AND email LIKE 'c%'",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "c2@example.com");
    let allowed = env.events("action.allowed");
    let last = &allowed.last().unwrap()["payload"]["action"]["params"];
    assert_eq!(
        last["statement"],
        "SELECT email FROM customers WHERE id = $1 AND email LIKE 'c%'"
    );
    assert_eq!(last["parameters"], serde_json::json!([2]));
    // Binary values of built-in types, decoded by their type.
    let big: i64 = (1 << 53) + 1;
    let row = c
        .query_one(
            "SELECT $1::bool, $2::int8, $3::float8, $4::text, $5::bytea, $6::int2",
            &[&true, &big, &1.5f64, &"héllo", &vec![1u8, 2], &-7i16],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), big);
    let allowed = env.events("action.allowed");
    let last = &allowed.last().unwrap()["payload"]["action"]["params"];
    assert_eq!(
        last["parameters"],
        serde_json::json!([true, "9007199254740993", "1.5", "héllo", {"hex": "0102", "bytes": 2}, -7])
    );
    // A portal bound in one batch and run in pieces in later ones.
    let tx = c.transaction().await.unwrap();
    let st = tx
        .prepare("SELECT id FROM customers WHERE id <= $1 ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&st, &[&5i32]).await.unwrap();
    let mut pieces = Vec::new();
    for _ in 0..2 {
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        pieces.push(rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>());
    }
    assert_eq!(pieces, [vec![1, 2, 3], vec![4, 5]]);
    tx.rollback().await.unwrap();
    // Raw: a portal described in a batch without its Execute cannot be
    // described without binding it: refused, and the session goes on. The
    // gateway's own statement name is not the client's.
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_login(env.pg, "agent:report-bot").await;
    let mut p = bytes::BytesMut::new();
    secondkey_pg::proto::put_cstr(&mut p, "");
    secondkey_pg::proto::put_cstr(&mut p, "SELECT 1");
    p.put_u16(0);
    let mut batch = frame(b'P', &p);
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'D', b"P\0"));
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    let types: String = got.iter().map(|m| m.0).collect();
    assert_eq!(types, "12EZ", "{got:?}");
    assert_eq!(got[2].1, "0A000");
    assert!(
        got[2].2.contains("only together with its Execute"),
        "{got:?}"
    );
    let mut named = bytes::BytesMut::new();
    secondkey_pg::proto::put_cstr(&mut named, secondkey_pg::session::RUN_STATEMENT);
    secondkey_pg::proto::put_cstr(&mut named, "SELECT 1");
    named.put_u16(0);
    let mut batch = frame(b'P', &named);
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(got[0].1, "42P05", "{got:?}");
    raw.stream
        .write_all(&exec_params("SELECT $1::int4 + 1", &["41"]))
        .await
        .unwrap();
    let got = answers(&mut raw, true).await;
    let types: String = got.iter().map(|m| m.0).collect();
    assert_eq!(types, "12TDCZ", "{got:?}");
    env.stop().await;
}

/// A Parse named `name` of `sql`, no declared types.
fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    use bytes::BufMut;
    let mut p = bytes::BytesMut::new();
    secondkey_pg::proto::put_cstr(&mut p, name);
    secondkey_pg::proto::put_cstr(&mut p, sql);
    p.put_u16(0);
    frame(b'P', &p)
}

/// What came back on a raw connection, as [`answers`] reads it: up to
/// and including the first message of type `until`, else up to the end of
/// the connection.
async fn answers_until(
    s: &mut secondkey_pg::upstream::Session,
    until: Option<char>,
) -> Vec<(char, String, String)> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = async {
        loop {
            while let Some((ty, body)) =
                secondkey_pg::proto::take_message(&mut s.leftover, 1 << 20).unwrap()
            {
                let (code, msg) = if ty == b'E' {
                    secondkey_pg::proto::error_fields(&body)
                } else {
                    Default::default()
                };
                out.push((ty as char, code, msg));
                if Some(ty as char) == until {
                    return;
                }
            }
            if s.stream.read_buf(&mut s.leftover).await.unwrap_or(0) == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the gateway answers");
    out
}

/// After a server-side error in an extended-protocol batch, the server
/// ignores everything up to Sync — also what the client sends after the
/// error reached it. The gateway's mirror of prepared statements follows:
/// a Parse the server ignored never stands for a later one of the same
/// name, so the statement decided is the one the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_keeps_the_statement_mirror_in_step() {
    use tokio::io::AsyncWriteExt;
    let env = setup("retry").await;
    let delete = "DELETE FROM customers WHERE id = 1";
    let types = |got: &[(char, String, String)]| got.iter().map(|m| m.0).collect::<String>();
    let mut raw = raw_login(env.pg, "agent:report-bot").await;
    // A: a failing Parse, flushed: the error comes back before Sync.
    let mut batch = parse_msg("e", "SELECT * FROM no_such");
    batch.extend(frame(b'H', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers_until(&mut raw, Some('E')).await;
    assert_eq!(got.last().map(|m| m.1.as_str()), Some("42P01"), "{got:?}");
    // ... then a Parse the server ignores (still skipping to Sync).
    let mut batch = parse_msg("s", "SELECT 1");
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "Z", "{got:?}");
    // B: the server's `s` is the delete.
    let mut batch = parse_msg("s", delete);
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "1Z", "{got:?}");
    // C: another failing Parse, with its Sync.
    let mut batch = parse_msg("e2", "SELECT * FROM no_such");
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "EZ", "{got:?}");
    // D: run `s`: decided as the delete it is, and denied.
    let mut batch = frame(b'B', b"\0s\0\0\0\0\0\0\0");
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "2EZ", "{got:?}");
    assert_eq!(got[1].1, "42501", "{got:?}");
    assert!(got[1].2.contains("no-deletes-of-customers"), "{got:?}");

    // An honest client pipelining past an error: what follows the error up
    // to Sync did not run (and is logged so), and the session goes on.
    let mut batch = parse_msg("", "SELECT 1");
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(parse_msg("", "SELECT * FROM no_such"));
    batch.extend(parse_msg("", "SELECT 2"));
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "12DCEZ", "{got:?}");
    assert_eq!(got[4].1, "42P01", "{got:?}");
    // The same with the error back before the rest is sent.
    let mut batch = parse_msg("", "SELECT * FROM no_such");
    batch.extend(frame(b'H', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers_until(&mut raw, Some('E')).await;
    assert_eq!(types(&got), "E", "{got:?}");
    let mut batch = parse_msg("", "SELECT 3");
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'Q', b"SELECT 4\0"));
    batch.extend(frame(b'S', b""));
    raw.stream.write_all(&batch).await.unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "Z", "{got:?}");
    raw.stream
        .write_all(&exec_params("SELECT $1::int4 + 1", &["41"]))
        .await
        .unwrap();
    let got = answers(&mut raw, true).await;
    assert_eq!(types(&got), "12TDCZ", "{got:?}");

    // The row is still there, and no statement ran as a delete.
    let (direct, conn) = env.direct().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let n: i64 = direct
        .query_one("SELECT count(*) FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    wait_for(|| {
        env.events("action.result")
            .iter()
            .any(|e| e["payload"]["summary"]["error"]["sqlstate"] == "not_run")
    })
    .await;
    for e in env.events("action.result") {
        let tags = e["payload"]["summary"]["command_tags"].to_string();
        assert!(!tags.contains("DELETE"), "{e}");
    }
    env.stop().await;
}

/// What PostgreSQL runs behind a name that looks like something else is
/// decided as what runs: `(x).f` and `t.f` call f(x) when there is no
/// column f (attribute notation), and a CTE never hides the table a DML
/// statement changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_attribute_notation_and_tables_behind_ctes_are_decided() {
    let env = setup("retry").await;
    superuser(
        &env,
        "SET ROLE app; CREATE FUNCTION purge_customer(int) RETURNS int LANGUAGE sql AS \
           $$ DELETE FROM customers WHERE id = $1 RETURNING id $$;",
    );
    let gone = "SELECT count(*) FROM customers WHERE id = 1";
    // Straight to the database the call is real (rolled back here).
    let (mut direct, conn) = env.direct().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = direct.transaction().await.unwrap();
    tx.batch_execute("SELECT (1).purge_customer").await.unwrap();
    let n: i64 = tx.query_one(gone, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the attribute call did not run the function");
    tx.rollback().await.unwrap();

    // Through the gateway it is a call of an unknown function (a write,
    // naming it), which the policy forbids: simple and extended protocol.
    let c = env.connect().await;
    let e = c
        .batch_execute("SELECT (1).purge_customer")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(message(&e).contains("no-purges"), "{}", message(&e));
    let e = c
        .query("SELECT ($1::int).purge_customer", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    let denied = env.events("action.denied");
    let last = &denied.last().unwrap()["payload"];
    assert_eq!(last["action"]["operation"], "write", "{last}");
    let n: i64 = c.query_one(gone, &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // A column in the same notation is still a read, in a transaction too.
    let row = c
        .query_one("SELECT c.email FROM customers c WHERE c.id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "c2@example.com");
    c.batch_execute("BEGIN").await.unwrap();
    let rows = c
        .simple_query("SELECT (c).id FROM customers c WHERE c.id = 3")
        .await
        .unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("3"))));
    c.batch_execute("COMMIT").await.unwrap();
    let allowed = env.events("action.allowed");
    let last = &allowed.last().unwrap()["payload"]["action"];
    assert_eq!(last["operation"], "read", "{last}");
    // Such a read, no function found, is still logged lean by its shape.
    let shaped = env.raw_entries().into_iter().any(|e| {
        e["event"] == "statement.shape"
            && e["payload"]["text"]
                == serde_json::json!(["SELECT c.email FROM customers c WHERE c.id = $1"])
    });
    assert!(shaped, "no shape for the qualified read");

    // A CTE named like the table does not hide the delete.
    let e = c
        .batch_execute("WITH customers AS (SELECT 1) DELETE FROM customers WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(
        message(&e).contains("no-deletes-of-customers"),
        "{}",
        message(&e)
    );
    let n: i64 = c.query_one(gone, &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    env.stop().await;
}

// ---- what one client or principal can take ----------------------------------

/// A `[[postgres]]` section in front of `port` for the three test agents,
/// with `limits` (TOML lines) added.
fn limited_section(name: &str, port: u16, limits: &str) -> String {
    let mut s = format!(
        "[[postgres]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ndatabase = \"{DATABASE}\"\nprincipals = [\"agent:report-bot\", \"agent:other-bot\", \"agent:third-bot\"]\nhold = \"retry\"\n{limits}\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_env = \"SK_TEST_PG_PASSWORD\"\n[postgres.scram]\n"
    );
    for who in ["agent:report-bot", "agent:other-bot", "agent:third-bot"] {
        s.push_str(&format!(
            "\"{who}\" = \"{}\"\n",
            secondkey_pg::scram::new_verifier(&token(who))
        ));
    }
    s
}

/// Logs in as `who` at `addr` from `source` (a loopback address).
async fn connect_as(
    addr: SocketAddr,
    who: &str,
    source: &str,
) -> Result<Client, tokio_postgres::Error> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .user(who)
        .password(token(who))
        .dbname(DATABASE)
        .connect_raw(tcp, NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A socket from `source` that sends the first `n` bytes of a startup
/// packet (none: a client that connects and says nothing) and stops.
async fn partial_startup(addr: SocketAddr, source: &str, n: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 40, 0, 3, 0, 0][..n])
        .await
        .unwrap();
    tcp
}

/// The answer to a silent socket from `source` once the gateway refuses
/// one (sockets closed just before are released asynchronously).
async fn refused_socket(addr: SocketAddr, source: &str) -> Vec<(String, String)> {
    for _ in 0..200 {
        let mut tcp = partial_startup(addr, source, 0).await;
        let got = until_closed(&mut tcp).await.expect("closed");
        if got.iter().any(|(c, _)| c == "53300") {
            return got;
        }
    }
    panic!("no socket from {source} was refused");
}

/// A session of `who` from `source`, once the slots of sessions that just
/// ended are released.
async fn served_once_freed(addr: SocketAddr, who: &str, source: &str) -> Client {
    for _ in 0..200 {
        if let Ok(c) = connect_as(addr, who, source).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{who} from {source} was not served again");
}

/// Everything the gateway sends on `tcp` until it closes it: the error
/// codes and messages (`None` if it stays open 20 s).
async fn until_closed(tcp: &mut tokio::net::TcpStream) -> Option<Vec<(String, String)>> {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest))
        .await
        .ok()?
        .ok()?;
    let mut buf = bytes::BytesMut::from(&rest[..]);
    let mut out = Vec::new();
    while let Some((_, body)) = secondkey_pg::proto::take_message(&mut buf, 1 << 20).unwrap() {
        out.push(secondkey_pg::proto::error_fields(&body));
    }
    Some(out)
}

/// Connection caps per principal with a reserve (issue: one agent took
/// every upstream slot), and listener hygiene (slowloris: partial
/// startups and byte-by-byte dribbling from one address), idle sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_bound_what_one_client_or_principal_can_take() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(10))
        .await
        .unwrap();
    let port = cluster.port;
    let sections = format!(
        "{}{}{}",
        limited_section(
            "analytics",
            port,
            "max_connections = 12\nmax_connections_per_address = 6\nmax_sessions = 4\nmax_sessions_per_principal = 2\nreserved_sessions = 1\nlogin_timeout = \"2s\"",
        ),
        limited_section("idle", port, "idle_timeout = \"1s\""),
        limited_section(
            "small",
            port,
            "max_message_bytes = 65536\nmax_session_bytes = 131072",
        ),
    );
    let env = start_gateway(cluster, &sections).await;
    let (pg, idle, small) = (env.addrs[0], env.addrs[1], env.addrs[2]);
    let refused = |e: tokio_postgres::Error, cap: &str| {
        assert_eq!(code(&e), "53300", "{e}");
        assert!(message(&e).contains(cap), "{}", message(&e));
    };

    // One agent up to its cap; a second one served; the last slot kept
    // for a principal holding none.
    let session = |who: &'static str| connect_as(pg, who, "127.0.0.1");
    let r1 = session("agent:report-bot").await.unwrap();
    let _r2 = session("agent:report-bot").await.unwrap();
    let third = session("agent:report-bot").await.unwrap_err();
    refused(third, "max_sessions_per_principal = 2");
    let o1 = session("agent:other-bot").await.unwrap();
    o1.batch_execute("SELECT 1").await.unwrap();
    refused(
        session("agent:other-bot").await.unwrap_err(),
        "reserved_sessions",
    );
    let t1 = session("agent:third-bot").await.unwrap();
    t1.batch_execute("SELECT 1").await.unwrap();
    refused(
        session("agent:third-bot").await.unwrap_err(),
        "reserved_sessions",
    );
    // Sessions ended free their slots (two, so that report-bot, which
    // holds one, is below the reserve again).
    drop((r1, o1));
    let again = served_once_freed(pg, "agent:report-bot", "127.0.0.1").await;
    drop((again, _r2, t1));

    // Partial startups from one address (not the one above, whose
    // sockets close asynchronously): the first six wait (and are
    // dropped at the login timeout), the rest are refused at once...
    let mut flood = Vec::new();
    for _ in 0..6 {
        flood.push(partial_startup(pg, "127.0.0.7", 3).await);
    }
    let said = refused_socket(pg, "127.0.0.7").await;
    assert!(
        said[0].1.contains("max_connections_per_address = 6"),
        "{said:?}"
    );
    // ...while a client from elsewhere is served.
    let good = connect_as(pg, "agent:other-bot", "127.0.0.2")
        .await
        .unwrap();
    good.batch_execute("SELECT 1").await.unwrap();
    // A client that sends a byte at a time is dropped at the login
    // timeout, like the silent ones.
    let mut dribbler = partial_startup(pg, "127.0.0.5", 1).await;
    let drip = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for b in [0u8, 0, 40, 0, 3, 0, 0, b'u', b's', b'e', b'r'] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if dribbler.write_all(&[b]).await.is_err() {
                return Some(dribbler);
            }
        }
        None
    });
    for mut s in flood {
        let got = until_closed(&mut s)
            .await
            .expect("dropped at the login timeout");
        assert!(
            got.iter().any(|(_, m)| m.contains("login timed out")),
            "{got:?}"
        );
    }
    let dripped = drip.await.unwrap();
    assert!(dripped.is_some(), "the dribbling client was not dropped");
    drop((good, dripped));
    // The listener's own cap holds across addresses.
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(partial_startup(pg, "127.0.0.3", 0).await);
        open.push(partial_startup(pg, "127.0.0.6", 0).await);
    }
    let said = refused_socket(pg, "127.0.0.4").await;
    assert!(said[0].1.contains("(max_connections)"), "{said:?}");
    drop(open);
    // Freed: the flooding address is served again.
    served_once_freed(pg, "agent:report-bot", "127.0.0.7")
        .await
        .batch_execute("SELECT 1")
        .await
        .unwrap();

    // What one session keeps is bounded: prepared statements up to
    // max_session_bytes, then 54000 and the session goes on; a message
    // over max_message_bytes ends it, said so.
    {
        use bytes::BufMut;
        use tokio::io::AsyncWriteExt;
        let mut raw = raw_login(small, "agent:report-bot").await;
        for i in 0..4 {
            let mut p = bytes::BytesMut::new();
            secondkey_pg::proto::put_cstr(&mut p, &format!("s{i}"));
            secondkey_pg::proto::put_cstr(&mut p, &format!("SELECT '{}'", "x".repeat(40_000)));
            p.put_u16(0);
            let mut batch = frame(b'P', &p);
            batch.extend(frame(b'S', b""));
            raw.stream.write_all(&batch).await.unwrap();
            let got = answers(&mut raw, true).await;
            let types: String = got.iter().map(|m| m.0).collect();
            if i < 3 {
                assert_eq!(types, "1Z", "{got:?}");
            } else {
                assert_eq!(types, "EZ", "{got:?}");
                assert_eq!(got[0].1, "54000");
                assert!(got[0].2.contains("max_session_bytes"), "{got:?}");
            }
        }
        raw.stream
            .write_all(&frame(
                b'Q',
                format!("SELECT '{}'\0", "y".repeat(70_000)).as_bytes(),
            ))
            .await
            .unwrap();
        let got = answers(&mut raw, false).await;
        let last = got.last().unwrap();
        assert_eq!(last.1, "08P01", "{got:?}");
        assert!(last.2.contains("max_message_bytes = 65536"), "{got:?}");
    }

    // An idle session is closed after idle_timeout, with a reason.
    let quiet = connect_as(idle, "agent:report-bot", "127.0.0.1")
        .await
        .unwrap();
    quiet.batch_execute("SELECT 1").await.unwrap();
    wait_for(|| quiet.is_closed()).await;
    let e = quiet.batch_execute("SELECT 1").await.unwrap_err();
    assert!(format!("{e}").contains("closed"), "{e}");
    env.stop().await;
}
