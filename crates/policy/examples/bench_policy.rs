//! Micro benchmark: 1,000 generated policies, 20,000 decisions, p50/p99 in µs.
//!
//! `cargo run --release -p secondkey-policy --example bench_policy`

use std::collections::BTreeSet;
use std::time::Instant;

use secondkey_policy::{Action, PolicyEngine, Principal, PrincipalId};
use serde_json::{json, Map, Value};

const POLICIES: usize = 1_000;
const DECISIONS: usize = 20_000;
const KINDS: usize = 40;
const OPS: [&str; 8] = [
    "read", "write", "delete", "ddl", "grant", "export", "deploy", "call",
];
const RESOURCES: usize = 200;
const GROUPS: [&str; 5] = ["agents", "dba", "security", "data-owners", "platform"];

/// A small deterministic generator, so runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn kind(i: usize) -> String {
    format!("k{i}")
}

fn policies(rng: &mut Lcg) -> String {
    let mut src = String::new();
    for i in 0..POLICIES {
        let k = kind(rng.next(KINDS));
        let action = match rng.next(10) {
            0 => format!("action in Action::\"{k}\""),
            1 => format!(
                "action in [Action::\"{k}.{}\", Action::\"{k}.{}\"]",
                OPS[rng.next(8)],
                OPS[rng.next(8)]
            ),
            2 if i % 50 == 0 => "action".to_owned(),
            _ => format!("action == Action::\"{k}.{}\"", OPS[rng.next(8)]),
        };
        let resource = if rng.next(3) == 0 {
            format!("resource == Resource::\"db://r{}\"", rng.next(RESOURCES))
        } else {
            "resource".to_owned()
        };
        let principal = format!("principal in Group::\"{}\"", GROUPS[rng.next(5)]);
        let cond = match rng.next(3) {
            0 => " when { context.gateway has environment && context.gateway.environment == \"prod\" }",
            1 => " when { context has estimated_rows && context.estimated_rows > 1000 }",
            _ => "",
        };
        let head = match rng.next(6) {
            0 => "forbid",
            1 => "@review(\"dba\") @quorum(\"2\") @ttl(\"15m\") forbid",
            _ => "permit",
        };
        src.push_str(&format!(
            "{head} ({principal}, {action}, {resource}){cond};\n"
        ));
    }
    src
}

fn request(rng: &mut Lcg) -> (Principal, Action, Map<String, Value>) {
    let principal = Principal {
        id: PrincipalId::parse(["agent:bot", "user:alice", "service:ci"][rng.next(3)])
            .unwrap_or_else(|e| panic!("{e}")),
        owner: None,
        groups: [
            GROUPS[rng.next(5)].to_owned(),
            GROUPS[rng.next(5)].to_owned(),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>(),
        subjects: Default::default(),
    };
    let mut action = Action {
        kind: kind(rng.next(KINDS)),
        operation: OPS[rng.next(8)].to_owned(),
        resource: format!("db://r{}", rng.next(RESOURCES)),
        ..Action::default()
    };
    action
        .context
        .insert("estimated_rows".into(), json!(rng.next(5000)));
    action.context.insert("model".into(), json!("gpt"));
    action.params.insert("sql".into(), json!("select 1"));
    let mut facts = Map::new();
    facts.insert(
        "environment".into(),
        json!(["prod", "staging"][rng.next(2)]),
    );
    (principal, action, facts)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

fn main() {
    let mut rng = Lcg(42);
    let src = policies(&mut rng);
    let t = Instant::now();
    let engine = PolicyEngine::from_sources(&[("bench.cedar", &src)], None)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "loaded {} policies in {:.1} ms",
        engine.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    let requests: Vec<_> = (0..DECISIONS).map(|_| request(&mut rng)).collect();
    let mut outcomes = [0usize; 3];
    let mut times = Vec::with_capacity(DECISIONS);
    for (p, a, f) in &requests {
        let t = Instant::now();
        let d = engine.decide(p, a, f);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        outcomes[d.outcome as usize] += 1;
    }
    let (p50, p99) = percentiles(times);
    println!(
        "sliced:   {DECISIONS} decisions  p50 {p50:.1} µs  p99 {p99:.1} µs  (allow {}, deny {}, review {})",
        outcomes[0], outcomes[1], outcomes[2]
    );

    let n = 1_000;
    let mut times = Vec::with_capacity(n);
    for (p, a, f) in requests.iter().take(n) {
        let t = Instant::now();
        let _ = engine.decide_unsliced(p, a, f);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = percentiles(times);
    println!(
        "unsliced: {n} decisions  p50 {p50:.1} µs  p99 {p99:.1} µs  (all policies, for comparison)"
    );
}
