//! Separation of duties through the gateway, where the configuration in
//! force and what a pending request recorded can differ.

mod common;

use common::who;
use secondkey_core::principal::PrincipalId;
use secondkey_core::request::{RequestState, ReviewDecision};
use serde_json::json;

/// Deletes need one data owner.
const POLICIES: &str = r#"
@id("agents-delete")
permit(principal in Group::"agents", action == Action::"sql.delete", resource);

@id("delete-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.delete", resource);
"#;

/// agent:bot belongs to bob now (it used to be alice's).
const CONFIG: &str = r#"
[[principals]]
id = "agent:bot"
owner = "user:bob"
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

/// A request made while alice owned agent:bot, still pending after the
/// configuration gave the agent to bob: neither alice (the owner it
/// recorded) nor bob (its owner now) reviews or revokes it; carol does.
#[tokio::test]
async fn the_owner_as_configured_now_never_reviews() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let mut then = who(g, "agent:bot");
    then.owner = Some(PrincipalId::parse("user:alice").unwrap());
    let body = json!({"kind": "sql", "operation": "delete", "resource": "postgres://prod/t"});
    let r = g
        .submit(&then, body.to_string().as_bytes(), false)
        .await
        .unwrap();
    let id = r.request.unwrap().id;
    for owner in ["user:alice", "user:bob"] {
        let e = g
            .review(&who(g, owner), &id, ReviewDecision::Approve, None)
            .await
            .unwrap_err();
        assert_eq!(e.code, "self_review", "{owner}: {}", e.message);
    }
    let e = g.revoke(&who(g, "user:bob"), &id).await.unwrap_err();
    assert_eq!(e.code, "self_review", "{}", e.message);
    let req = g
        .review(&who(g, "user:carol"), &id, ReviewDecision::Approve, None)
        .await
        .unwrap();
    assert_eq!(req.state, RequestState::Approved);
    assert_eq!(req.approvers(), [PrincipalId::parse("user:carol").unwrap()]);
}
