//! Escalation through the gateway, with a fake clock: an escalation whose
//! widened requirements are already met by the approvals given approves the
//! request there and then, exactly as a last review would (grant, log,
//! waiters woken).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{entries, who};
use secondkey_core::request::{RequestState, ReviewDecision};
use secondkey_server::Gateway;
use serde_json::json;

/// An export needs one data owner and one security reviewer.
const POLICIES: &str = r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.export", resource);

@id("export-security")
@review("security")
forbid(principal, action == Action::"sql.export", resource);
"#;

const CONFIG: &str = r#"
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
"#;

/// Submits an export as the bot; returns the request id and the digest.
async fn export(g: &Gateway, table: &str) -> (String, String) {
    let body = json!({"kind": "sql", "operation": "export",
                      "resource": format!("postgres://prod/{table}")});
    let r = g
        .submit(&who(g, "agent:bot"), body.to_string().as_bytes(), false)
        .await
        .unwrap();
    assert_eq!(r.decision, "review");
    (r.request.unwrap().id, r.digest)
}

async fn approve(g: &Gateway, id: &str, by: &str) -> RequestState {
    g.review(&who(g, by), id, ReviewDecision::Approve, None)
        .await
        .unwrap()
        .state
}

fn data_owners() -> BTreeSet<String> {
    BTreeSet::from(["data-owners".to_string()])
}

#[tokio::test]
async fn escalation_that_completes_quorum_approves_with_a_single_use_grant() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let (id, digest) = export(g, "public.customers").await;
    // Two data owners approve; one human per slot, so the security slot is
    // still empty and the request waits.
    assert_eq!(approve(g, &id, "user:bob").await, RequestState::Pending);
    assert_eq!(approve(g, &id, "user:carol").await, RequestState::Pending);
    // An agent waiting for the decision, as an adapter would.
    let waiter = {
        let g = g.clone();
        let id = id.clone();
        tokio::spawn(async move { g.wait_decided(&id, Duration::from_secs(30)).await })
    };
    let mut changes = g.subscribe();
    // Half the (default, one hour) TTL later the request escalates to the
    // data owners: now both approvals count, and quorum is met.
    env.advance(Duration::from_secs(1800));
    let req = g.escalate(&id, data_owners()).await.unwrap();
    assert_eq!(req.state, RequestState::Approved);
    let grant = req.grant.clone().expect("the escalation issued a grant");
    assert_eq!(req.decided_at, Some(g.now()));

    // Waiters and channels are told, with the new state.
    let change = changes.recv().await.unwrap();
    assert_eq!(
        (change.id.as_str(), change.state),
        (id.as_str(), RequestState::Approved)
    );
    let woken = waiter.await.unwrap().unwrap();
    assert_eq!(woken.state, RequestState::Approved);

    // The log: the escalation, then the approval, in that order, for this
    // request, naming the grant and both approvers.
    let log = entries(g);
    let at = log
        .iter()
        .position(|e| e.event == "request.escalated")
        .expect("escalation logged");
    let (escalated, approved) = (&log[at], &log[at + 1]);
    assert_eq!(approved.event, "request.approved");
    for e in [escalated, approved] {
        assert_eq!(e.subjects.get("request"), Some(&id));
        assert_eq!(e.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(e.actor.as_deref(), Some("service:secondkey"));
    }
    assert_eq!(escalated.payload["groups"], json!(["data-owners"]));
    assert_eq!(approved.payload["grant"], json!(grant.id));
    assert_eq!(approved.payload["via"], json!("escalation"));
    assert_eq!(
        approved.payload["approvers"],
        json!(["user:bob", "user:carol"])
    );
    assert_eq!(
        log.iter().filter(|e| e.event == "request.approved").count(),
        1
    );

    // Stored like any approval: the request page will diff the next
    // similar export against this one.
    let similar = secondkey_server::web::similar_key(&req);
    assert_eq!(
        g.store
            .get_record(secondkey_server::web::SIMILAR_NS, &similar)
            .unwrap(),
        Some(id.clone())
    );

    // The requester gets the grant, which works exactly once.
    let view = g
        .view(&bot, &g.get_request(&bot, &id).await.unwrap())
        .unwrap();
    let token = view.grant.expect("the requester sees its grant");
    let used = g.consume(&bot, &token, &digest).await.unwrap();
    assert_eq!(used["grant"], json!(grant.id));
    assert_eq!(used["approvers"], json!(["user:bob", "user:carol"]));
    let again = g.consume(&bot, &token, &digest).await.unwrap_err();
    assert_eq!(again.code, "grant_used");
    let req = g.get_request(&bot, &id).await.unwrap();
    assert_eq!(req.state, RequestState::Executed);
    let log = entries(g);
    assert_eq!(
        log.iter().filter(|e| e.event == "grant.consumed").count(),
        1
    );
}

#[tokio::test]
async fn escalation_that_does_not_complete_quorum_leaves_the_request_pending() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let (id, _) = export(g, "public.orders").await;
    // One data owner: one human fills one slot, however wide the groups.
    assert_eq!(approve(g, &id, "user:bob").await, RequestState::Pending);
    env.advance(Duration::from_secs(1800));
    let req = g.escalate(&id, data_owners()).await.unwrap();
    assert_eq!(req.state, RequestState::Pending);
    assert!(req.grant.is_none());
    let log = entries(g);
    assert!(log.iter().any(|e| e.event == "request.escalated"));
    assert!(!log.iter().any(|e| e.event == "request.approved"));
    // A second data owner now completes it the usual way, by review, and
    // that approval is not marked as the escalation's.
    assert_eq!(approve(g, &id, "user:carol").await, RequestState::Approved);
    let log = entries(g);
    let approved = log
        .iter()
        .find(|e| e.event == "request.approved")
        .expect("an approval entry");
    assert!(
        approved.payload.get("via").is_none(),
        "{:?}",
        approved.payload
    );
}
