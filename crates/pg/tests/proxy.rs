//! The proxy against a real PostgreSQL 15 cluster and a real gateway
//! (in-process), with tokio-postgres as the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secondkey_core::principal::Principal;
use secondkey_core::request::ReviewDecision;
use secondkey_pg::testing::{Cluster, APP_PASSWORD, APP_USER, DATABASE};
use secondkey_pg::PgGateway;
use secondkey_server::{Config, Gateway, Running};
use serde_json::Value;
use sha2::{Digest, Sha256};
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
    _dir: tempfile::TempDir,
}

async fn setup(hold: &str) -> Env {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1200))
        .await
        .unwrap();
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
    let verifier = secondkey_pg::scram::new_verifier(&token("agent:report-bot"));
    cfg.push_str(&format!(
        "[[postgres]]\nname = \"analytics\"\nlisten = \"127.0.0.1:0\"\nprincipals = [\"agent:report-bot\"]\nhold = \"{hold}\"\nhold_timeout = \"20s\"\nestimate_rows = true\n[postgres.upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{DATABASE}\"\nuser = \"{APP_USER}\"\npassword_env = \"SK_TEST_PG_PASSWORD\"\n[postgres.scram]\n\"agent:report-bot\" = \"{verifier}\"\n",
        cluster.port
    ));
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
        _dir: dir,
    }
}

impl Env {
    async fn connect(&self) -> Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.pg.port())
            .user("agent:report-bot")
            .password(token("agent:report-bot"))
            .dbname(DATABASE)
            .connect(NoTls)
            .await
            .expect("connect through the gateway");
        tokio::spawn(conn);
        client
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

    fn entries(&self) -> Vec<Value> {
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

    // Deny: no policy permits DDL. The table survives.
    let e = c.batch_execute("DROP TABLE customers").await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(message(&e).contains("decision act_"), "{}", message(&e));
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
    assert_eq!(last["params"]["parameters"][0]["binary"], "AAAAAw==");
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
