//! Admission through the gateway, in process with a fake clock: the caps
//! on pending requests and on the rate of opening them (REST submissions
//! and `Gateway::intercept` alike), the aggregate log record of refusals,
//! the caps on long-polls and streams, and which `on_behalf_of` counts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{entries, who};
use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_core::request::ReviewDecision;
use secondkey_log::entry::Entry;
use secondkey_server::admission::Hold;
use secondkey_server::identity::Credential;
use secondkey_server::{Gateway, Intercept};
use serde_json::{json, Value};

/// Writes need a DBA; reads are allowed.
const POLICIES: &str = r#"
@id("agents-write")
permit(principal in Group::"agents", action == Action::"sql.write", resource);

@id("writes-need-a-dba")
@review("dba")
forbid(principal, action == Action::"sql.write", resource);
"#;

const CONFIG: &str = r#"
[limits]
max_pending_per_principal = 50
requests_per_minute = 30
max_waits_per_principal = 2
max_waits_per_issuer = 3
max_streams_per_principal = 1
max_streams_per_issuer = 2
[[principals]]
id = "agent:bot"
owner = "user:alice"
groups = ["agents"]
[[principals]]
id = "agent:other"
owner = "user:carol"
groups = ["agents"]
may_act_for = ["User:Dave"]
[[principals]]
id = "agent:helper"
groups = ["agents"]
may_act_for = ["user:*"]
[[principals]]
id = "user:alice"
groups = ["dba"]
[[principals]]
id = "user:bob"
groups = ["dba"]
[[principals]]
id = "user:carol"
groups = ["dba"]
[[principals]]
id = "user:dave"
groups = ["sales"]
"#;

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// A write with a 40 KB statement, `n` making each one different.
fn big_write(n: usize) -> Value {
    json!({"kind": "sql", "operation": "write", "resource": "postgres://prod/events",
           "params": {"statement": format!("INSERT INTO events VALUES ({n}, '{}')", "x".repeat(40 * 1024))}})
}

/// The finding: one agent submitted 1,500 held writes of 40 KB in seconds,
/// all accepted, and the data directory grew by 177 MiB for good. Now at
/// most `max_pending_per_principal` are held, at most
/// `requests_per_minute` are opened a minute, the rest are refused with
/// 429 and a code, nothing of them is stored, and the log records them
/// in one entry per principal per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_held_requests_is_bounded() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bot = who(g, "agent:bot");
    let data = env.dir.path().join("data");
    let before = dir_size(&data);
    let log_before = g.store.log_size();

    // Two bursts of 1,500 concurrent submissions, a minute apart.
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut retry_after = HashMap::new();
    for burst in 0..2 {
        let results = futures_util::future::join_all((0..1500).map(|i| {
            let body = big_write(burst * 1500 + i).to_string();
            let bot = bot.clone();
            async move { g.submit(&bot, body.as_bytes(), false).await }
        }))
        .await;
        for r in results {
            let key = match r {
                Ok(a) => a.decision,
                Err(e) => {
                    assert_eq!(e.status.as_u16(), 429, "{e}");
                    retry_after.insert(e.code.to_string(), e.retry_after);
                    e.code.to_string()
                }
            };
            *outcomes.entry(key).or_insert(0) += 1;
        }
        if burst == 0 {
            // Refusals are tallied, not logged one by one; the tally is
            // written once its window (a minute) is over.
            assert_eq!(g.flush_refusals(false).await.unwrap(), 0);
        }
        env.advance(Duration::from_secs(60));
    }
    // 30 at once (a minute's rate), 30 more a minute later but only 20 fit
    // under the cap of 50 pending; the cap is checked first, so those
    // refusals spend no rate.
    assert_eq!(outcomes.get("review"), Some(&50), "{outcomes:?}");
    assert_eq!(outcomes.get("rate_limited"), Some(&1470), "{outcomes:?}");
    assert_eq!(
        outcomes.get("too_many_pending"),
        Some(&1480),
        "{outcomes:?}"
    );
    // One request a minute / 30 is 2 s; the oldest pending request expires
    // in an hour, told as a minute.
    assert_eq!(retry_after["rate_limited"], Some(Duration::from_secs(2)));
    assert_eq!(
        retry_after["too_many_pending"],
        Some(Duration::from_secs(60))
    );

    // An adapter in the process gets the same typed refusal.
    let it = Intercept {
        action: big_write(99_999),
        transport: "pg",
        facts: Default::default(),
    };
    let e = g.intercept(&bot, it).await.unwrap_err();
    assert!(e.is_limited());
    assert_eq!(
        (e.code, e.retry_after.is_some()),
        ("too_many_pending", true)
    );

    // Another principal is not affected.
    let other = g
        .submit(
            &who(g, "agent:other"),
            big_write(0).to_string().as_bytes(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(other.decision, "review");

    // Refused submissions wrote nothing; the window of the tally is over:
    // one entry for 2,951 refusals.
    let written = g.store.log_size() - log_before;
    assert_eq!(written, 51, "one request.created per request opened");
    assert_eq!(g.flush_refusals(false).await.unwrap(), 1);
    let refused: Vec<Entry> = entries(g)
        .into_iter()
        .filter(|e| e.event == "limit.refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].subjects["principal"], "agent:bot");
    assert_eq!(refused[0].payload["count"], 2951);
    assert_eq!(refused[0].payload["by_code"]["rate_limited"], 1470);
    assert_eq!(refused[0].payload["by_code"]["too_many_pending"], 1481);

    // Growth: 51 held requests of 40 KB (the request row keeps the action
    // and its log entry), bounded whatever the flood's size.
    let growth = dir_size(&data).saturating_sub(before);
    println!(
        "data dir growth after 3,001 submissions of 40 KB: {:.1} MiB",
        growth as f64 / (1 << 20) as f64
    );
    assert!(growth < 24 << 20, "grew {growth} bytes");

    // A decision frees a slot: the bot may open a request again.
    let pending = g
        .list(
            &bot,
            Some(secondkey_core::request::RequestState::Pending),
            1,
            None,
        )
        .await
        .unwrap();
    let id = &pending.requests[0].id;
    g.review(&who(g, "user:bob"), id, ReviewDecision::Deny, None)
        .await
        .unwrap();
    let again = g
        .submit(&bot, big_write(123_456).to_string().as_bytes(), false)
        .await
        .unwrap();
    assert_eq!(again.decision, "review");
}

/// Long-polls and event streams are capped per principal, and the
/// principals no `[[principals]]` entry names are capped per issuer too:
/// a fresh subject buys no fresh slots.
#[tokio::test]
async fn waits_and_streams_are_capped_per_principal_and_per_issuer() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let bob = who(g, "user:bob");
    let none = Credential::default();
    let w1 = g.hold(Hold::Wait, &bob, &none).unwrap();
    let _w2 = g.hold(Hold::Wait, &bob, &none).unwrap();
    let e = g.hold(Hold::Wait, &bob, &none).unwrap_err();
    assert_eq!((e.status.as_u16(), e.code), (429, "too_many_waits"));
    assert!(e.retry_after.is_some());
    drop(w1);
    let _w3 = g.hold(Hold::Wait, &bob, &none).unwrap();
    let _s1 = g.hold(Hold::Stream, &bob, &none).unwrap();
    assert_eq!(
        g.hold(Hold::Stream, &bob, &none).unwrap_err().code,
        "too_many_streams"
    );
    // Unconfigured workload principals of one issuer share its cap.
    let fresh = |n: usize| Principal {
        id: PrincipalId::parse(&format!("service:job-{n}")).unwrap(),
        owner: None,
        groups: Default::default(),
        subjects: Default::default(),
    };
    let iss = Credential {
        unconfigured_issuer: Some("https://ci.example".into()),
        acting_for: None,
        namesake: None,
        expires_at: None,
    };
    let held: Vec<_> = (0..3)
        .map(|n| g.hold(Hold::Wait, &fresh(n), &iss).unwrap())
        .collect();
    let e = g.hold(Hold::Wait, &fresh(3), &iss).unwrap_err();
    assert_eq!(e.code, "too_many_waits");
    assert!(e.message.contains("https://ci.example"), "{}", e.message);
    drop(held);
    let _ok = g.hold(Hold::Wait, &fresh(3), &iss).unwrap();
}

async fn submit_for(
    g: &Gateway,
    by: &str,
    on_behalf_of: &str,
    cred: &Credential,
) -> Result<String, secondkey_server::error::ApiError> {
    let body = json!({"kind": "sql", "operation": "write", "resource": "postgres://prod/t",
                      "params": {"statement": format!("UPDATE t SET x = 1 -- {by} {on_behalf_of}")},
                      "on_behalf_of": on_behalf_of});
    g.submit_as(&who(g, by), cred, body.to_string().as_bytes(), false)
        .await
        .map(|r| r.request.unwrap().id)
}

/// `by` approves `id`: done, or the refusal's code.
async fn approve(g: &Gateway, by: &str, id: &str) -> Result<(), &'static str> {
    g.review(&who(g, by), id, ReviewDecision::Approve, None)
        .await
        .map(|_| ())
        .map_err(|e| e.code)
}

/// The finding's four cases: an agent could strike its strictest reviewer
/// by naming them, exclude another agent's owner by naming that agent,
/// let a non-reviewer read its request by naming them, and name an
/// unconfigured agent. Now `on_behalf_of` names a human, and counts only
/// when backed: by `may_act_for` or a verified delegation token.
#[tokio::test]
async fn on_behalf_of_counts_only_when_backed() {
    let env = common::gateway(POLICIES, CONFIG).await;
    let g = &env.gateway;
    let none = Credential::default();
    let code = |r: Result<_, secondkey_server::error::ApiError>| r.map(|_| ()).unwrap_err().code;

    // Naming bob does not strike him: declared only, he reviews.
    let id = submit_for(g, "agent:bot", "user:bob", &none).await.unwrap();
    let req = g.get_request(&who(g, "user:bob"), &id).await.unwrap();
    assert_eq!(req.acting_for(), None);
    let view = g.view(&who(g, "user:bob"), &req).unwrap();
    assert_eq!(
        serde_json::to_value(&view.on_behalf_of).unwrap(),
        json!({"principal": "user:bob", "backed": false})
    );
    assert_eq!(approve(g, "user:bob", &id).await, Ok(()));

    // Naming another agent (to exclude its owner carol), or an agent that
    // does not exist: refused outright.
    for name in ["agent:other", "agent:ghost", "service:ci"] {
        assert_eq!(
            code(submit_for(g, "agent:bot", name, &none).await),
            "on_behalf_of_not_human",
            "{name}"
        );
    }

    // Naming dave does not let him read the request.
    let id = submit_for(g, "agent:bot", "user:dave", &none)
        .await
        .unwrap();
    assert_eq!(
        g.get_request(&who(g, "user:dave"), &id)
            .await
            .unwrap_err()
            .code,
        "not_found"
    );

    // Backed by may_act_for (written "User:Dave" in the config): dave sees
    // it, and the log says what backs it.
    let id = submit_for(g, "agent:other", "user:DAVE", &none)
        .await
        .unwrap();
    let req = g.get_request(&who(g, "user:dave"), &id).await.unwrap();
    assert_eq!(req.acting_for().map(|p| p.as_str()), Some("user:dave"));
    let created = entries(g)
        .into_iter()
        .rev()
        .find(|e| e.event == "request.created")
        .unwrap();
    assert_eq!(
        created.payload["on_behalf_of"],
        json!({"principal": "user:dave", "backing": "delegation"})
    );
    // may_act_for names dave only: naming bob is declared.
    let id = submit_for(g, "agent:other", "user:bob", &none)
        .await
        .unwrap();
    assert_eq!(approve(g, "user:bob", &id).await, Ok(()));

    // `user:*` backs any human: the one acted for may not review.
    let id = submit_for(g, "agent:helper", "user:bob", &none)
        .await
        .unwrap();
    assert_eq!(approve(g, "user:bob", &id).await, Err("self_review"));

    // A verified delegation token for carol backs naming carol, and only her.
    let token = Credential {
        unconfigured_issuer: None,
        acting_for: Some(PrincipalId::parse("user:carol").unwrap()),
        namesake: None,
        expires_at: None,
    };
    let id = submit_for(g, "agent:bot", "user:carol", &token)
        .await
        .unwrap();
    assert_eq!(approve(g, "user:carol", &id).await, Err("self_review"));
    let id = submit_for(g, "agent:bot", "user:bob", &token)
        .await
        .unwrap();
    assert_eq!(approve(g, "user:bob", &id).await, Ok(()));
}
