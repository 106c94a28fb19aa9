//! Policy checks at load and reload with the gateway's configuration: a
//! typo in an annotation, an `@review` group nobody is in or a quorum no
//! configured set of humans can meet refuses the whole set; on reload the
//! previous set stays in force and the refusal is in the audit log.

mod common;

use common::{entries, who};
use secondkey_server::reload::reload_now;
use serde_json::json;

const GOOD: &str = r#"
@id("agents")
permit(principal in Group::"agents", action, resource);

@id("export")
@reason("Exports leave the company.")
@review("dba") @quorum("2") @ttl("5m")
forbid(principal, action == Action::"sql.export", resource);
"#;

const CONFIG: &str = r#"
[policy]
annotations = ["ticket"]
[[principals]]
id = "agent:bot"
owner = "user:alice"
groups = ["agents"]
[[principals]]
id = "user:alice"
groups = ["dba"]
[[principals]]
id = "user:bob"
groups = ["dba"]
[[principals]]
id = "service:ci"
groups = ["dba"]
"#;

async fn decide(g: &secondkey_server::Gateway, operation: &str) -> String {
    let body = json!({"kind": "sql", "operation": operation, "resource": "postgres://prod/t"});
    g.submit(&who(g, "agent:bot"), body.to_string().as_bytes(), false)
        .await
        .unwrap()
        .decision
}

#[tokio::test]
async fn a_reload_with_a_bad_annotation_keeps_the_previous_policies_and_logs_why() {
    let env = common::gateway(GOOD, CONFIG).await;
    let g = &env.gateway;
    assert_eq!(decide(g, "export").await, "review");
    assert_eq!(decide(g, "read").await, "allow");
    let file = env.dir.path().join("policies/p.cedar");
    // Each of these would weaken or break the export rule: every one is
    // refused, and the export still needs review.
    let bad = [
        (
            GOOD.replace("@quorum(\"2\")", "@quorom(\"2\")"),
            "unknown annotation @quorom; did you mean @quorum?",
        ),
        (
            GOOD.replace("@ttl(\"5m\")", "@tll(\"5m\")"),
            "unknown annotation @tll; did you mean @ttl?",
        ),
        (
            GOOD.replace("@review(\"dba\")", "@review(\"dbas\")"),
            "names group `dbas`, which no configured principal belongs to (did you mean `dba`?)",
        ),
        // service:ci is in dba but never reviews: two humans, not three
        (
            GOOD.replace("@quorum(\"2\")", "@quorum(\"3\")"),
            "@quorum(\"3\") can never be met: @review(\"dba\") has 2 humans in config",
        ),
        (
            GOOD.replace("@id(\"agents\")", "@id(\"agents\") @record(\"later\")"),
            "@record(\"later\") is not a record mode",
        ),
        (
            GOOD.replace("@reason(\"Exports leave the company.\")", "@reason(\"\")"),
            "@reason(\"\") is empty",
        ),
    ];
    for (i, (text, message)) in bad.iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        let err = reload_now(g).await.unwrap_err();
        assert!(err.contains(message), "{err}");
        assert!(err.contains("p.cedar:"), "{err}");
        let log = entries(g);
        let rejected: Vec<_> = log
            .iter()
            .filter(|e| e.event == "policy.rejected")
            .collect();
        assert_eq!(rejected.len(), i + 1);
        let last = rejected[i];
        assert!(
            last.payload["error"].as_str().unwrap().contains(message),
            "{:?}",
            last.payload
        );
        assert_eq!(last.payload["kept"], json!("previous policy set"));
        assert_eq!(decide(g, "export").await, "review", "{message}");
    }
    // Custom annotations under the prefix or allow-listed load.
    let custom = GOOD.replace(
        "@id(\"export\")",
        "@id(\"export\") @x_owner(\"data-team\") @ticket(\"SEC-1\")",
    );
    std::fs::write(&file, custom).unwrap();
    reload_now(g).await.unwrap();
    assert_eq!(decide(g, "export").await, "review");
}

#[tokio::test]
async fn a_gateway_does_not_start_on_an_unsatisfiable_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::write(
        pol.join("p.cedar"),
        GOOD.replace("@quorum(\"2\")", "@quorum(\"3\")"),
    )
    .unwrap();
    let toml = format!("data_dir = \"data\"\npolicy_dir = \"policies\"\n{CONFIG}");
    let config =
        secondkey_server::Config::from_toml(&toml, "test.toml", dir.path(), &Default::default())
            .unwrap();
    let err = secondkey_server::build(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("can never be met"), "{err}");
}
