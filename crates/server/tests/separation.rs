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

/// Deletes need two data owners now.
const TIGHTER: &str = r#"
@id("agents-delete")
permit(principal in Group::"agents", action == Action::"sql.delete", resource);

@id("delete-owner")
@review("data-owners")
@quorum("2")
forbid(principal, action == Action::"sql.delete", resource);
"#;

/// Submitting an action again waits on the identical pending request, or
/// runs the identical approved one, only while policy asks what it asked
/// then: after the quorum rises to two, a resubmission opens a new request
/// that needs two, instead of riding on the one that needs one.
#[tokio::test]
async fn a_tightened_policy_is_never_satisfied_by_an_older_request() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let submit = |n: u32| {
        let body = json!({"kind": "sql", "operation": "delete", "resource": "postgres://prod/t",
                          "params": {"id": n}});
        let g = g.clone();
        let bot = bot.clone();
        async move {
            g.submit(&bot, body.to_string().as_bytes(), true)
                .await
                .unwrap()
                .request
                .unwrap()
                .id
        }
    };
    let pending = submit(1).await;
    assert_eq!(
        submit(1).await,
        pending,
        "the same policy: the same request"
    );
    let approved = submit(2).await;
    g.review(
        &who(g, "user:carol"),
        &approved,
        ReviewDecision::Approve,
        None,
    )
    .await
    .unwrap();

    std::fs::write(env.dir.path().join("policies/p.cedar"), TIGHTER).unwrap();
    secondkey_server::reload::reload_now(g).await.unwrap();
    for (n, older) in [(1, &pending), (2, &approved)] {
        let id = submit(n).await;
        assert_ne!(&id, older, "{n}: a new request under the new policy");
        let req = g.get_request(&bot, &id).await.unwrap();
        assert_eq!(req.requirements[0].quorum, 2);
        assert_eq!(req.state, RequestState::Pending);
    }
    // The older approval stays unused.
    let req = g.get_request(&bot, &approved).await.unwrap();
    assert!(req.grant.unwrap().used_at.is_none());
}
