//! A caller dropped while its commit waits for the store — its client went
//! away, or the server drains. The store commits a job once it is sent,
//! whether or not anyone still waits, so what follows the commit in this
//! gateway's memory must happen all the same: the sessions a sign-out or a
//! revocation voids (memory is the whole truth on the embedded store), and
//! the change feed that long-polls, held adapter sessions and chat
//! channels wait on.
//!
//! Each test holds the store's writer busy, sends the change through a
//! call that it polls once (the job is then queued) and drops, lets the
//! writer go, and looks at what this gateway knows.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::who;
use futures_util::FutureExt;
use secondkey_core::request::{RequestState, ReviewDecision};
use secondkey_server::gateway::RequestChange;
use secondkey_server::web::revocation::revoke_all;
use secondkey_server::web::session::{now_secs, session_holds, sign_out, SessionClaims};
use secondkey_server::{Execution, ExecutionResult, Gateway};
use serde_json::json;
use tokio::sync::broadcast;

const POLICIES: &str = r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-review")
@review("data-owners")
forbid(principal, action == Action::"sql.export", resource);
"#;

const CONFIG: &str = r#"
[web]
session_admins = ["security"]

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
id = "user:sam"
groups = ["security"]
"#;

/// Keeps the store's writer busy until the returned sender sends or is
/// dropped: every job sent meanwhile is queued behind it.
fn hold_writer(g: &Gateway) -> mpsc::Sender<()> {
    let (release, held) = mpsc::channel::<()>();
    // Sent at the first poll; the writer runs it though nobody waits.
    let busy = g.store.transact(move |_| {
        let _ = held.recv();
        Ok(())
    });
    assert!(busy.now_or_never().is_none(), "the writer is held");
    release
}

/// Polls `call` once — far enough to send its job to the held writer —
/// and drops it, as a handler whose client went away is dropped.
fn send_and_drop<F: std::future::Future>(call: F) {
    assert!(
        call.now_or_never().is_none(),
        "the call waits for the held writer"
    );
}

/// Waits until `f` holds; fails after 10 s.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not so after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next change on `feed`; fails after 10 s.
async fn next_change(feed: &mut broadcast::Receiver<RequestChange>) -> RequestChange {
    tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("a change announced within 10 s")
        .unwrap()
}

/// A session of `user` signed in a second ago, for an hour.
fn session_of(g: &Gateway, user: &str) -> SessionClaims {
    let now_ms = g.now().0;
    SessionClaims {
        sid: format!("sid-{user}"),
        sub: user.to_string(),
        groups: vec![],
        subject: None,
        iat: now_ms / 1000 - 1,
        exp: now_ms / 1000 + 3600,
        iat_ms: Some(now_ms - 1000),
    }
}

fn events(g: &Gateway, event: &str) -> usize {
    common::entries(g)
        .iter()
        .filter(|e| e.event == event)
        .count()
}

#[tokio::test]
async fn sessions_ended_for_a_caller_gone_are_void_in_memory() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let alice = session_of(g, "user:alice");
    assert!(session_holds(g, &alice).await);
    let release = hold_writer(g);
    send_and_drop(revoke_all(g, &who(g, "user:sam"), "user:alice"));
    drop(release);
    eventually("the revocation recorded", || {
        events(g, "web.sessions.revoked") == 1
    })
    .await;
    eventually("alice's sessions void in memory", || {
        !g.web.sessions.holds(&alice, now_secs(g))
    })
    .await;
    assert!(!session_holds(g, &alice).await);
}

#[tokio::test]
async fn a_sign_out_for_a_caller_gone_is_void_in_memory() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let alice = session_of(g, "user:alice");
    assert!(session_holds(g, &alice).await);
    let release = hold_writer(g);
    send_and_drop(sign_out(g, &alice));
    drop(release);
    eventually("the sign-out void in memory", || {
        !g.web.sessions.holds(&alice, now_secs(g))
    })
    .await;
    assert!(!session_holds(g, &alice).await);
}

#[tokio::test]
async fn changes_committed_for_a_caller_gone_are_announced() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let mut feed = g.subscribe();
    // A request opened by an agent that hung up…
    let action = json!({"kind": "sql", "operation": "export",
                        "resource": "postgres://prod/customers"});
    let body = action.to_string();
    let release = hold_writer(g);
    send_and_drop(g.submit(&who(g, "agent:bot"), body.as_bytes(), false));
    drop(release);
    let created = next_change(&mut feed).await;
    assert_eq!(created.event, "request.created");
    assert_eq!(created.state, RequestState::Pending);
    // …approved by a reviewer whose browser closed: whoever waits on the
    // request hears of it.
    let release = hold_writer(g);
    send_and_drop(g.review(
        &who(g, "user:bob"),
        &created.id,
        ReviewDecision::Approve,
        None,
    ));
    drop(release);
    let reviewed = next_change(&mut feed).await;
    assert_eq!(
        (
            reviewed.id.as_str(),
            reviewed.event.as_str(),
            reviewed.state
        ),
        (
            created.id.as_str(),
            "request.reviewed",
            RequestState::Approved
        )
    );
    // …used by an adapter whose client hung up, which then reports the
    // result and hangs up too.
    let bot = who(g, "agent:bot");
    let digest = g.get_request(&bot, &created.id).await.unwrap().digest;
    let release = hold_writer(g);
    send_and_drop(g.execute_approved(&bot, &created.id, &digest));
    drop(release);
    let used = next_change(&mut feed).await;
    assert_eq!(
        (used.id.as_str(), used.event.as_str()),
        (created.id.as_str(), "grant.consumed")
    );
    let execution = Execution {
        id: created.id.clone(),
        request_id: Some(created.id.clone()),
        digest,
        approvers: vec!["user:bob".into()],
        reasons: vec![],
    };
    let result = ExecutionResult {
        ok: true,
        summary: json!({"rows": 3}),
        reads: vec![],
        writes: vec![],
    };
    let release = hold_writer(g);
    send_and_drop(g.record_execution(&bot, &execution, result));
    drop(release);
    let reported = next_change(&mut feed).await;
    assert_eq!(
        (reported.id.as_str(), reported.event.as_str()),
        (created.id.as_str(), "action.result")
    );
}
