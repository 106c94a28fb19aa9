//! The adapter interface, in process: what a PostgreSQL or MCP adapter gets
//! from `Gateway::intercept` and friends, and what the log records.

mod common;

use std::time::Duration;

use common::{entries, who};
use secondkey_core::action::Digest;
use secondkey_core::request::{RequestState, ReviewDecision};
use secondkey_server::{ExecutionResult, Gateway, Intercept, Verdict};
use serde_json::{json, Map, Value};

const POLICIES: &str = r#"
@id("agents-read")
permit(principal in Group::"agents", action == Action::"sql.read", resource);

@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-two")
@review("data-owners")
@quorum("2")
forbid(principal, action == Action::"sql.export", resource);

@id("no-reads-of-secrets")
forbid(principal, action == Action::"sql.read", resource)
when { context.gateway has tables && context.gateway.tables.contains("secrets") };

@id("prod-reads-need-review")
@review("data-owners")
forbid(principal, action == Action::"sql.read", resource)
when { context.gateway has environment && context.gateway.environment == "prod" };
"#;

const CONFIG: &str = r#"
[[environments]]
name = "prod"
resources = ["postgres://prod/*"]
[[principals]]
id = "agent:bot"
owner = "user:alice"
groups = ["agents"]
[[principals]]
id = "user:alice"
groups = ["data-owners"]
[[principals]]
id = "user:bob"
groups = ["data-owners"]
[[principals]]
id = "user:carol"
groups = ["data-owners"]
[[principals]]
id = "user:audrey"
groups = ["auditors"]
"#;

fn sql(operation: &str, resource: &str, text: &str) -> Value {
    json!({"kind": "sql", "operation": operation, "resource": resource, "params": {"statement": text}})
}

fn facts(tables: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("tables".into(), json!(tables));
    m
}

fn it(action: Value, tables: &[&str]) -> Intercept {
    Intercept {
        action,
        transport: "pg",
        facts: facts(tables),
    }
}

async fn approve(g: &Gateway, id: &str, by: &[&str]) {
    for r in by {
        g.review(&who(g, r), id, ReviewDecision::Approve, None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn allow_runs_once_recorded_and_the_result_feeds_lineage() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let v = g
        .intercept(
            &bot,
            it(
                sql("read", "postgres://dev/public.t", "SELECT 1 FROM t"),
                &["public.t"],
            ),
        )
        .await
        .unwrap();
    let Verdict::Run(ex) = v else {
        panic!("expected run, got {v:?}")
    };
    assert!(ex.id.starts_with("act_") && ex.request_id.is_none());
    let allowed = entries(g)
        .into_iter()
        .find(|e| e.event == "action.allowed")
        .unwrap();
    assert_eq!(allowed.payload["executed"], json!(true));
    assert_eq!(allowed.payload["transport"], json!("pg"));
    assert_eq!(allowed.payload["facts"]["tables"], json!(["public.t"]));
    assert!(allowed.payload.get("grant").is_none(), "no token is minted");
    g.record_execution(
        &bot,
        &ex,
        ExecutionResult {
            ok: true,
            summary: json!({"tag": "SELECT 1", "rows": 1}),
            reads: vec!["postgres://dev/public.t".into()],
            writes: vec![],
        },
    )
    .await
    .unwrap();
    let result = entries(g)
        .into_iter()
        .find(|e| e.event == "action.result")
        .unwrap();
    assert_eq!(result.payload["summary"]["rows"], json!(1));
    assert_eq!(result.digest.as_deref(), Some(ex.digest.as_str()));
    let lineage = g.lineage(&bot, "agent:bot").await.unwrap();
    assert_eq!(lineage.len(), 1);
    assert_eq!(lineage[0].dataset, "postgres://dev/public.t");
    assert_eq!((lineage[0].reads, lineage[0].writes), (1, 0));
    // The owner and log readers may read it; another human may not.
    assert!(g.lineage(&who(g, "user:alice"), "agent:bot").await.is_ok());
    assert!(g.lineage(&who(g, "user:audrey"), "agent:bot").await.is_ok());
    let e = g
        .lineage(&who(g, "user:bob"), "agent:bot")
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_lineage_reader");
}

#[tokio::test]
async fn adapter_facts_reach_policy_but_cannot_override_the_gateways() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    // The parser found a secrets table: denied, and the message names the
    // policy and the decision.
    let v = g
        .intercept(
            &bot,
            it(
                sql(
                    "read",
                    "postgres://dev/public.t",
                    "SELECT * FROM t, secrets",
                ),
                &["public.t", "secrets"],
            ),
        )
        .await
        .unwrap();
    let Verdict::Deny(d) = v else {
        panic!("expected deny, got {v:?}")
    };
    assert!(d.message.contains("no-reads-of-secrets"), "{}", d.message);
    assert!(d.message.contains(&d.id), "{}", d.message);
    // An adapter claiming a dev environment for a prod resource does not
    // escape the prod review.
    let mut f = facts(&["public.t"]);
    f.insert("environment".into(), json!("dev"));
    let v = g
        .intercept(
            &bot,
            Intercept {
                action: sql("read", "postgres://prod/public.t", "SELECT 1"),
                transport: "pg",
                facts: f,
            },
        )
        .await
        .unwrap();
    assert!(matches!(v, Verdict::Held(_)), "{v:?}");
}

#[tokio::test]
async fn a_held_action_is_deduplicated_then_runs_once_after_approval() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let export = || {
        it(
            sql(
                "export",
                "postgres://dev/public.customers",
                "COPY customers TO STDOUT",
            ),
            &["public.customers"],
        )
    };
    let Verdict::Held(first) = g.intercept(&bot, export()).await.unwrap() else {
        panic!("expected a hold")
    };
    assert!(!first.reused);
    assert!(first
        .url
        .ends_with(&format!("/requests/{}", first.request.id)));
    // Retried while pending: the same request, no second one.
    let Verdict::Held(again) = g.intercept(&bot, export()).await.unwrap() else {
        panic!("expected a hold")
    };
    assert!(again.reused);
    assert_eq!(again.request.id, first.request.id);
    let created = entries(g)
        .iter()
        .filter(|e| e.event == "request.created")
        .count();
    assert_eq!(created, 1);
    // The owner cannot approve; two other humans can.
    assert!(g
        .review(
            &who(g, "user:alice"),
            &first.request.id,
            ReviewDecision::Approve,
            None
        )
        .await
        .is_err());
    approve(g, &first.request.id, &["user:bob", "user:carol"]).await;
    let decided = g
        .wait_decided(&first.request.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(decided.state, RequestState::Approved);
    // A different statement does not use the approval.
    let other = it(
        sql(
            "export",
            "postgres://dev/public.customers",
            "COPY customers TO STDOUT WITH CSV",
        ),
        &["public.customers"],
    );
    assert!(matches!(g.intercept(&bot, other).await.unwrap(), Verdict::Held(h) if !h.reused));
    // Eight identical retries at once: exactly one runs.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let g = g.clone();
        let bot = bot.clone();
        tasks.push(tokio::spawn(
            async move { g.intercept(&bot, export()).await },
        ));
    }
    let mut runs = Vec::new();
    let mut holds = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Verdict::Run(ex) => runs.push(ex),
            Verdict::Held(h) => {
                assert_ne!(h.request.id, first.request.id);
                holds += 1
            }
            Verdict::Deny(d) => panic!("unexpected deny {d:?}"),
        }
    }
    assert_eq!(runs.len(), 1, "the approval runs once");
    assert_eq!(holds, 7);
    let ex = &runs[0];
    assert_eq!(ex.request_id.as_deref(), Some(first.request.id.as_str()));
    assert_eq!(ex.approvers.len(), 2);
    let req = g.store.get_request(&first.request.id).unwrap().unwrap();
    assert_eq!(req.state, RequestState::Executed);
    g.record_execution(
        &bot,
        ex,
        ExecutionResult {
            ok: true,
            summary: json!({"tag": "COPY 3", "rows": 3}),
            reads: vec!["postgres://dev/public.customers".into()],
            writes: vec![],
        },
    )
    .await
    .unwrap();
    // Reported once.
    let e = g
        .record_execution(&bot, ex, ExecutionResult::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, "outcome_recorded");
    let detail = entries(g)
        .into_iter()
        .find(|e| e.event == "action.result.detail")
        .unwrap();
    assert_eq!(detail.payload["summary"]["rows"], json!(3));
    let lineage = g.lineage(&bot, "agent:bot").await.unwrap();
    assert_eq!(lineage[0].last_approvers.len(), 2);
}

#[tokio::test]
async fn a_waiting_adapter_uses_the_approval_once_and_only_for_its_digest() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let action = sql(
        "export",
        "postgres://dev/public.orders",
        "COPY orders TO STDOUT",
    );
    let Verdict::Held(h) = g.intercept(&bot, it(action, &[])).await.unwrap() else {
        panic!("expected a hold")
    };
    let id = h.request.id.clone();
    let digest = h.request.digest.clone();
    // Still pending: nothing to use, and waiting times out as pending.
    let e = g.execute_approved(&bot, &id, &digest).await.unwrap_err();
    assert_eq!(e.code, "not_approved");
    let waited = g
        .wait_decided(&id, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(waited.state, RequestState::Pending);
    let g2 = g.clone();
    let id2 = id.clone();
    let waiter = tokio::spawn(async move { g2.wait_decided(&id2, Duration::from_secs(10)).await });
    approve(g, &id, &["user:bob", "user:carol"]).await;
    assert_eq!(waiter.await.unwrap().unwrap().state, RequestState::Approved);
    // Another principal cannot use it; another digest cannot; then once.
    let e = g
        .execute_approved(&who(g, "user:bob"), &id, &digest)
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_found");
    let wrong = Digest::of_json(&json!({"other": 1})).unwrap();
    let e = g.execute_approved(&bot, &id, &wrong).await.unwrap_err();
    assert_eq!(e.code, "digest_mismatch");
    let ex = g.execute_approved(&bot, &id, &digest).await.unwrap();
    assert_eq!(ex.request_id.as_deref(), Some(id.as_str()));
    let e = g.execute_approved(&bot, &id, &digest).await.unwrap_err();
    assert!(
        matches!(e.code, "already_used" | "not_approved" | "grant_used"),
        "{}",
        e.code
    );
    // A failed run marks the request failed.
    g.record_execution(
        &bot,
        &ex,
        ExecutionResult {
            ok: false,
            summary: json!({"error": "connection reset"}),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let req = g.store.get_request(&id).unwrap().unwrap();
    assert_eq!(req.state, RequestState::Failed);
}

#[tokio::test]
async fn malformed_intercepts_change_nothing() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let before = g.store.log_size();
    for bad in [
        json!({"kind": "sql"}),
        json!({"kind": "sql", "operation": "read", "resource": "x", "context": {"gateway": {}}}),
        json!({"kind": "sql", "operation": "read", "resource": "x", "params": {"big": "a".repeat(60_000)}}),
        json!([1, 2]),
    ] {
        let e = g.intercept(&bot, it(bad.clone(), &[])).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{bad}");
    }
    assert_eq!(g.store.log_size(), before);
}

/// The events a reader of the log alone (the OpenLineage sink) sends for
/// it: `(log index, eventType, outcome, outputs)` of each.
fn openlineage_events(g: &Gateway) -> Vec<(u64, Value, Value, Value)> {
    use secondkey_audit::history::Tracker;
    use secondkey_audit::openlineage::{emits, run_event};
    let mut t = Tracker::new();
    let mut out = vec![];
    for e in entries(g) {
        let (step, i) = t.feed(&e);
        if let Some(i) = i.filter(|&i| emits(step, t.record(i))) {
            let ev = run_event(t.record(i), "ns", "origin", e.index);
            out.push((
                e.index,
                ev["eventType"].clone(),
                ev["run"]["facets"]["secondkey"]["outcome"].clone(),
                ev["outputs"].clone(),
            ));
        }
    }
    out
}

/// `agent:bot`'s export of the orders table (`execute`: with
/// `?execute=true`), held for review and approved by bob and carol: the
/// action's body and the submission that was held.
async fn approved_export(
    g: &Gateway,
    execute: bool,
) -> (String, secondkey_server::views::ActionResponse) {
    let body = sql(
        "export",
        "postgres://dev/public.orders",
        "COPY orders TO STDOUT",
    )
    .to_string();
    let held = g
        .submit(&who(g, "agent:bot"), body.as_bytes(), execute)
        .await
        .unwrap();
    let id = &held.request.as_ref().expect("held for review").id;
    approve(g, id, &["user:bob", "user:carol"]).await;
    (body, held)
}

#[tokio::test]
async fn an_approval_used_in_execute_mode_is_marked_and_lineage_waits_for_its_result() {
    // `POST /v1/actions?execute=true` of an approved request: the caller
    // runs it now and reports the result, as an adapter does. The log says
    // so, so the OpenLineage event is sent once, with that result (a
    // failure is `FAIL`), as for an execute-mode allow — not at once as
    // `COMPLETE`, as for an agent that uses a grant itself.
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let (body, held) = approved_export(g, true).await;
    let id = held.request.expect("held for review").id;
    let ran = g.submit(&bot, body.as_bytes(), true).await.unwrap();
    let ex = ran.execution.expect("the approval is used up at once");
    assert_eq!(ex.id, id);
    let consumed = entries(g)
        .into_iter()
        .find(|e| e.event == "grant.consumed")
        .unwrap();
    assert_eq!(consumed.payload["executed"], json!(true));
    assert!(
        openlineage_events(g).is_empty(),
        "nothing is sent before the result: {:?}",
        openlineage_events(g)
    );
    g.report_execution(
        &bot,
        &ex.id,
        ExecutionResult {
            ok: false,
            summary: json!({"status": "failed", "error": "disk full"}),
            reads: vec!["postgres://dev/public.orders".into()],
            writes: vec!["s3://exports/orders.csv".into()],
        },
    )
    .await
    .unwrap();
    let sent = openlineage_events(g);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (index, kind, outcome, outputs) = &sent[0];
    let detail = entries(g)
        .into_iter()
        .find(|e| e.event == "action.result.detail")
        .unwrap();
    assert_eq!(*index, detail.index, "sent once the result is whole");
    assert_eq!(kind, &json!("FAIL"));
    assert_eq!(outcome, &json!("failed"));
    assert_eq!(
        outputs,
        &json!([{"namespace": "s3://exports", "name": "orders.csv"}]),
        "what the run reported it wrote"
    );

    // An adapter's own wait (`execute_approved`) is marked the same way.
    let action = sql(
        "export",
        "postgres://dev/public.items",
        "COPY items TO STDOUT",
    );
    let Verdict::Held(h) = g.intercept(&bot, it(action, &[])).await.unwrap() else {
        panic!("expected a hold")
    };
    approve(g, &h.request.id, &["user:bob", "user:carol"]).await;
    g.execute_approved(&bot, &h.request.id, &h.request.digest)
        .await
        .unwrap();
    let consumed: Vec<_> = entries(g)
        .into_iter()
        .filter(|e| e.event == "grant.consumed")
        .collect();
    assert_eq!(consumed.len(), 2);
    assert_eq!(consumed[1].payload["executed"], json!(true));
}

#[tokio::test]
async fn a_grant_the_agent_uses_itself_is_not_marked_executed() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let (_, held) = approved_export(g, false).await;
    let id = held.request.as_ref().expect("held for review").id.clone();
    let req = g.get_request(&bot, &id).await.unwrap();
    let grant = g.view(&bot, &req).unwrap().grant;
    let grant = grant.expect("the requester sees its grant");
    g.consume(&bot, &grant, &held.digest).await.unwrap();
    let consumed = entries(g)
        .into_iter()
        .find(|e| e.event == "grant.consumed")
        .unwrap();
    assert!(consumed.payload.get("executed").is_none());
    // Sent when the grant is used: the gateway learns nothing after that.
    let sent = openlineage_events(g);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, consumed.index);
    assert_eq!(sent[0].1, json!("COMPLETE"));
}
