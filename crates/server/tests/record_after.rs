//! `@record("after")` in process: an adapter's allow runs before its entry
//! is durable, decision and result land in one entry, and back-pressure
//! sends allows past the bound down the strict path (issue 19).

mod common;

use common::{entries, who};
use secondkey_server::{ExecutionResult, Intercept, Verdict};
use serde_json::{json, Map, Value};

const POLICIES: &str = r#"
@id("reads-after")
@record("after")
permit(principal in Group::"agents", action == Action::"sql.read", resource);

@id("no-secrets")
forbid(principal, action == Action::"sql.read", resource)
when { context.gateway has tables && context.gateway.tables.contains("secrets") };
"#;

/// A window no test waits out: an entry is written by its result, or at
/// shutdown, never by the timer here.
const CONFIG: &str = r#"
[log]
after_window = "60s"
after_max_pending = 2
[[principals]]
id = "agent:bot"
groups = ["agents"]
"#;

fn read(table: &str) -> Intercept {
    let mut facts = Map::new();
    facts.insert("tables".into(), json!([table]));
    Intercept {
        action: json!({"kind": "sql", "operation": "read", "resource": format!("postgres://dev/{table}"),
                       "params": {"statement": format!("SELECT * FROM {table}")}}),
        transport: "pg",
        facts,
    }
}

fn ok(table: &str) -> ExecutionResult {
    ExecutionResult {
        ok: true,
        summary: json!({"tag": "SELECT 1", "rows": 1}),
        reads: vec![format!("postgres://dev/{table}")],
        writes: vec![],
    }
}

fn allowed(g: &secondkey_server::Gateway, id: &str) -> Vec<Value> {
    entries(g)
        .into_iter()
        .filter(|e| {
            e.event == "action.allowed" && e.subjects.get("action").map(String::as_str) == Some(id)
        })
        .map(|e| e.payload)
        .collect()
}

#[tokio::test]
async fn runs_first_then_one_entry_and_back_pressure_goes_strict() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let size0 = g.store.log_size();
    let mut runs = Vec::new();
    for t in ["public.a", "public.b", "public.c"] {
        match g.intercept(&bot, read(t)).await.unwrap() {
            Verdict::Run(x) => runs.push(x),
            v => panic!("expected a run, got {v:?}"),
        }
    }
    // Two ran with nothing logged yet; the third was past after_max_pending
    // and waited for its own entry, like any allow.
    assert_eq!(g.store.log_size(), size0 + 1);
    assert!(allowed(g, &runs[0].id).is_empty());
    assert!(allowed(g, &runs[1].id).is_empty());
    let strict = allowed(g, &runs[2].id);
    assert_eq!(strict.len(), 1);
    assert!(strict[0].get("recorded").is_none(), "{}", strict[0]);
    // A deny never takes the path.
    let v = g.intercept(&bot, read("secrets")).await.unwrap();
    assert!(matches!(v, Verdict::Deny(_)), "{v:?}");
    assert_eq!(g.store.log_size(), size0 + 2);

    // The result writes decision and result together, and the lineage.
    g.record_execution(&bot, &runs[0], ok("public.a"))
        .await
        .unwrap();
    let one = allowed(g, &runs[0].id);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["recorded"], "after");
    assert_eq!(one[0]["executed"], true);
    assert_eq!(one[0]["result"]["summary"]["rows"], 1);
    assert_eq!(one[0]["facts"]["tables"], json!(["public.a"]));
    assert!(!entries(g)
        .iter()
        .any(|e| e.event == "action.result" && e.subjects.get("action") == Some(&runs[0].id)));
    let lineage = g.lineage(&bot, "agent:bot").await.unwrap();
    assert!(lineage
        .iter()
        .any(|l| l.dataset == "postgres://dev/public.a"));

    // A slot freed: the next allow runs first again.
    let Verdict::Run(next) = g.intercept(&bot, read("public.d")).await.unwrap() else {
        panic!("expected a run")
    };
    assert!(allowed(g, &next.id).is_empty());
    // Its result, reported twice (an adapter retrying), is one entry and
    // then an ordinary result entry: nothing is lost or merged twice.
    g.record_execution(&bot, &next, ok("public.d"))
        .await
        .unwrap();
    g.record_execution(&bot, &next, ok("public.d"))
        .await
        .unwrap();
    assert_eq!(allowed(g, &next.id).len(), 1);

    // Shutdown writes what is still waiting (runs[1] never reported).
    g.flush_after().await;
    let late = allowed(g, &runs[1].id);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["recorded"], "after");
    assert!(late[0].get("result").is_none());
    // Flushed for shutdown, the gateway admits no more: an allow decided
    // now (a connection still open) has its entry before it runs, since no
    // flusher would write it before the store closes.
    let Verdict::Run(closing) = g.intercept(&bot, read("public.e")).await.unwrap() else {
        panic!("expected a run")
    };
    let strict = allowed(g, &closing.id);
    assert_eq!(strict.len(), 1, "durable before it runs");
    assert!(strict[0].get("recorded").is_none(), "{}", strict[0]);
}

/// Many after-allows at once, each reporting its result while others are
/// admitted and handed over: every one ends as exactly one entry holding
/// its result, every reporter hears its entry committed, and the log grows
/// by one entry per allow (hand-overs share commits; none is lost or
/// written twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_after_allows_each_become_one_entry_with_their_result() {
    const N: usize = 64;
    let config = CONFIG.replace("after_max_pending = 2", "after_max_pending = 1000");
    let env = common::gateway(POLICIES, &config).await;
    let g = env.gateway.clone();
    let bot = who(&g, "agent:bot");
    let size0 = g.store.log_size();
    let mut tasks = Vec::new();
    for i in 0..N {
        let (g, bot) = (g.clone(), bot.clone());
        tasks.push(tokio::spawn(async move {
            let table = format!("public.t{i}");
            let Verdict::Run(x) = g.intercept(&bot, read(&table)).await.unwrap() else {
                panic!("expected a run")
            };
            g.record_execution(&bot, &x, ok(&table)).await.unwrap();
            x.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(g.store.log_size(), size0 + N as u64);
    let all = entries(&g);
    for id in &ids {
        let one: Vec<&secondkey_log::entry::Entry> = all
            .iter()
            .filter(|e| e.subjects.get("action") == Some(id))
            .collect();
        assert_eq!(one.len(), 1, "{id}: {one:?}");
        assert_eq!(one[0].event, "action.allowed");
        assert_eq!(one[0].payload["recorded"], "after");
        assert_eq!(one[0].payload["result"]["ok"], true, "{:?}", one[0]);
    }
}
