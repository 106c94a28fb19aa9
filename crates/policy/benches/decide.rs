//! CPU per decision (issue 19): one allow as the PostgreSQL gateway asks for
//! it, decided fresh (`decide_uncached`: building the Cedar request and
//! evaluating the sliced policies) and from the decision cache (`decide`),
//! over a policy set of 1,000 policies where one permit matches.
//!
//! `cargo bench -p secondkey-policy --bench decide`

use std::collections::BTreeSet;
use std::time::Instant;

use secondkey_policy::{Action, PolicyEngine, Principal, PrincipalId};
use serde_json::{json, Map, Value};

const N: usize = 200_000;

fn main() {
    let mut src = String::from(
        "@id(\"reads\") @record(\"after\") permit (principal in Group::\"agents\", action == Action::\"sql.read\", resource);\n\
         @id(\"no-secrets\") forbid (principal, action, resource) when { context.gateway has tables && context.gateway.tables.contains(\"public.secrets\") };\n",
    );
    for i in 0..998 {
        src.push_str(&format!(
            "permit (principal in Group::\"team{i}\", action == Action::\"sql.write\", resource == Resource::\"postgres://db/t{i}\");\n"
        ));
    }
    let engine = PolicyEngine::from_sources(&[("bench.cedar", &src)], None).expect("policies");
    let principal = Principal {
        id: PrincipalId::parse("agent:report-bot").expect("id"),
        owner: Some(PrincipalId::parse("user:alice").expect("id")),
        groups: BTreeSet::from(["agents".to_owned()]),
        subjects: Default::default(),
    };
    let mut action = Action {
        kind: "sql".into(),
        operation: "read".into(),
        resource: "postgres://analytics/pgbench_accounts".into(),
        ..Action::default()
    };
    let mut facts: Map<String, Value> = Map::new();
    facts.insert("transport".into(), json!("pg"));
    facts.insert("principal_kind".into(), json!("agent"));
    facts.insert("tables".into(), json!(["public.pgbench_accounts"]));
    facts.insert("protocol".into(), json!("extended"));
    println!("policies: {}, decisions per measurement: {N}", engine.len());

    // Bound values differ per statement and no policy reads them: the
    // cache keys on none of them.
    let mut timed = |what: &str, cached: bool| {
        let t = Instant::now();
        for i in 0..N {
            action
                .params
                .insert("parameters".into(), json!([i % 100_000]));
            let d = if cached {
                engine.decide(&principal, &action, &facts)
            } else {
                engine.decide_uncached(&principal, &action, &facts)
            };
            assert!(d.record_after);
            std::hint::black_box(d);
        }
        println!(
            "  {what:<44} {:>6.2} µs per decision",
            t.elapsed().as_secs_f64() * 1e6 / N as f64
        );
    };
    timed("fresh (Cedar request + sliced evaluation)", false);
    timed("decision cache (key + lookup + clone)", true);
}
