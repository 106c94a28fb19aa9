//! Escalation through the gateway, with a fake clock: an escalation widens
//! who may fill the open slots and never approves by itself; a widened slot
//! is filled only by a review given after the escalation, and the approval's
//! log entry says which slot each approval filled.

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
[[principals]]
id = "user:dave"
groups = ["data-owners"]
[[principals]]
id = "user:sam"
groups = ["security"]
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
async fn escalation_alone_never_approves_and_a_later_review_fills_the_widened_slot() {
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
        tokio::spawn(async move { g.wait_decided(&id, Duration::from_secs(60)).await })
    };
    // Half the (default, one hour) TTL later the request escalates to the
    // data owners. Nobody decided in the place of the security reviewer:
    // it stays pending, with no grant.
    env.advance(Duration::from_secs(1800));
    let req = g.escalate(&id, data_owners()).await.unwrap();
    assert_eq!(req.state, RequestState::Pending);
    assert!(req.grant.is_none() && req.decided_at.is_none());
    let log = entries(g);
    assert!(log.iter().any(|e| e.event == "request.escalated"));
    assert!(!log.iter().any(|e| e.event == "request.approved"));
    assert!(!waiter.is_finished());
    // The requester sees the security slot as escalated, and who may fill it.
    let view = g
        .view(&bot, &g.get_request(&bot, &id).await.unwrap())
        .unwrap();
    let security = serde_json::to_value(&view.required[1]).unwrap();
    assert_eq!(
        security["label"],
        json!("security review (escalated to data-owners)")
    );
    assert_eq!(security["groups"], json!(["security", "data-owners"]));
    assert_eq!(security["escalated_to"], json!(["data-owners"]));

    // A data owner who approved before cannot review again to fill it.
    let again = g
        .review(&who(g, "user:bob"), &id, ReviewDecision::Approve, None)
        .await
        .unwrap_err();
    assert_eq!(again.code, "duplicate_reviewer");

    // A data owner reviewing after the escalation approves it.
    env.advance(Duration::from_secs(1));
    assert_eq!(approve(g, &id, "user:dave").await, RequestState::Approved);
    let woken = waiter.await.unwrap().unwrap();
    assert_eq!(woken.state, RequestState::Approved);

    // The log names the slot each approval filled; the approval is the
    // reviewer's act, not the gateway's.
    let log = entries(g);
    let approved: Vec<_> = log
        .iter()
        .filter(|e| e.event == "request.approved")
        .collect();
    assert_eq!(approved.len(), 1);
    let approved = approved[0];
    assert_eq!(approved.actor.as_deref(), Some("user:dave"));
    assert_eq!(approved.subjects.get("request"), Some(&id));
    assert_eq!(approved.digest.as_deref(), Some(digest.as_str()));
    assert!(
        approved.payload.get("via").is_none(),
        "{:?}",
        approved.payload
    );
    assert_eq!(
        approved.payload["approvers"],
        json!(["user:bob", "user:carol", "user:dave"])
    );
    let filled = approved.payload["filled"].as_array().unwrap();
    assert_eq!(filled.len(), 2);
    assert_eq!(filled[0]["requirement"], json!("p:export-owner"));
    assert_eq!(filled[0]["group"], json!("data-owners"));
    assert_eq!(filled[0]["widened"], json!(false));
    assert_eq!(
        filled[1],
        json!({"requirement": "p:export-security", "approver": "user:dave",
               "group": "data-owners", "widened": true})
    );

    // The grant works exactly once, as any approval's.
    let view = g
        .view(&bot, &g.get_request(&bot, &id).await.unwrap())
        .unwrap();
    let token = view.grant.expect("the requester sees its grant");
    g.consume(&bot, &token, &digest).await.unwrap();
    let again = g.consume(&bot, &token, &digest).await.unwrap_err();
    assert_eq!(again.code, "grant_used");
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
    // A second data owner now completes it by review.
    assert_eq!(approve(g, &id, "user:carol").await, RequestState::Approved);
    let log = entries(g);
    let approved = log
        .iter()
        .find(|e| e.event == "request.approved")
        .expect("an approval entry");
    assert_eq!(
        approved.payload["filled"][1]["approver"],
        json!("user:carol")
    );
    assert_eq!(approved.payload["filled"][1]["widened"], json!(true));
}
