use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::types::PrincipalId;
use crate::{Issue, BUILTIN_SCHEMA};

fn engine(files: &[(&str, &str)]) -> PolicyEngine {
    match PolicyEngine::from_sources(files, None) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn principal(id: &str, groups: &[&str]) -> Principal {
    Principal {
        id: PrincipalId::parse(id).unwrap(),
        owner: None,
        groups: groups
            .iter()
            .map(|g| (*g).to_owned())
            .collect::<BTreeSet<_>>(),
        subjects: Default::default(),
    }
}

fn action(kind: &str, op: &str, resource: &str) -> Action {
    Action {
        kind: kind.into(),
        operation: op.into(),
        resource: resource.into(),
        ..Action::default()
    }
}

fn facts(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn none() -> Map<String, Value> {
    Map::new()
}

const PERMIT_ALL: &str = "permit (principal, action, resource);";

#[test]
fn nothing_matches_is_deny() {
    let e = engine(&[(
        "a.cedar",
        "permit (principal in Group::\"x\", action, resource);",
    )]);
    let d = e.decide(
        &principal("user:a", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.reasons[0].effect, ReasonEffect::Default);
    assert!(d.errors.is_empty());
}

#[test]
fn permit_is_allow() {
    let e = engine(&[("a.cedar", PERMIT_ALL)]);
    let d = e.decide(
        &principal("user:a", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.reasons.len(), 1);
    assert_eq!(d.reasons[0].policy_id, "a:0");
    assert_eq!(
        (d.reasons[0].file.as_deref(), d.reasons[0].line),
        (Some("a.cedar"), Some(1))
    );
    assert_eq!((d.ttl, d.grant_ttl), (DEFAULT_TTL, DEFAULT_GRANT_TTL));
}

#[test]
fn plain_forbid_beats_permit_and_review() {
    let e = engine(&[(
        "a.cedar",
        "permit (principal, action, resource);\n\
         @id(\"stop\") forbid (principal, action == Action::\"sql.delete\", resource);\n\
         @review(\"dba\") forbid (principal, action, resource);",
    )]);
    let d = e.decide(
        &principal("user:a", &[]),
        &action("sql", "delete", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.reasons.len(), 1);
    assert_eq!(d.reasons[0].policy_id, "a:stop");
    assert_eq!(d.reasons[0].line, Some(2));
    assert!(d.requirements.is_empty());
}

#[test]
fn review_forbid_with_permit_is_review() {
    let e = engine(&[
        ("p.cedar", PERMIT_ALL),
        (
            "r.cedar",
            "@review(\"data-owners, security\")\n@quorum(\"2\")\n@ttl(\"15m\")\n@grant_ttl(\"1m\")\n\
             forbid (principal, action == Action::\"sql.export\", resource);",
        ),
    ]);
    let d = e.decide(
        &principal("agent:bot", &[]),
        &action("sql", "export", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(
        d.requirements,
        vec![Requirement::new(
            "r:0",
            vec!["data-owners".into(), "security".into()],
            2
        )]
    );
    assert_eq!(d.ttl, Duration::from_secs(900));
    assert_eq!(d.grant_ttl, Duration::from_secs(60));
    let effects: Vec<_> = d.reasons.iter().map(|r| r.effect).collect();
    assert_eq!(effects, vec![ReasonEffect::Review, ReasonEffect::Permit]);
    // Other actions are plainly allowed.
    let d = e.decide(
        &principal("agent:bot", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Allow);
}

#[test]
fn review_forbid_without_permit_is_deny() {
    let e = engine(&[(
        "r.cedar",
        "@review(\"dba\") forbid (principal, action, resource);",
    )]);
    let d = e.decide(
        &principal("user:a", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.requirements.is_empty());
    assert_eq!(d.reasons[0].effect, ReasonEffect::Review);
    assert!(d.reasons[0].message.contains("no permit"));
}

#[test]
fn two_review_policies_need_both_and_take_minimum_ttls() {
    let e = engine(&[(
        "r.cedar",
        "permit (principal, action, resource);\n\
         @id(\"one\") @review(\"dba\") @ttl(\"2h\") @grant_ttl(\"1m\") forbid (principal, action, resource);\n\
         @id(\"two\") @review(\"security\") @quorum(\"3\") @ttl(\"30m\") forbid (principal, action in Action::\"sql\", resource);",
    )]);
    let d = e.decide(
        &principal("user:a", &[]),
        &action("sql", "grant", "r"),
        &none(),
    );
    assert_eq!(d.outcome, Outcome::Review);
    let req: Vec<_> = d
        .requirements
        .iter()
        .map(|r| (r.policy_id.as_str(), r.quorum))
        .collect();
    assert_eq!(req, vec![("r:one", 1), ("r:two", 3)]);
    assert_eq!(d.ttl, Duration::from_secs(1800));
    assert_eq!(d.grant_ttl, Duration::from_secs(60));
}

// `estimated_rows * 10^12` overflows for large estimates: a runtime error the
// validator cannot see.
const OVERFLOW: &str = "context has estimated_rows && context.estimated_rows * 1000000000000 < 0";

fn big_rows() -> Action {
    let mut a = action("sql", "read", "r");
    a.context
        .insert("estimated_rows".into(), json!(1_000_000_000_000i64));
    a
}

#[test]
fn erroring_forbid_denies() {
    let e = engine(&[(
        "a.cedar",
        &format!("permit (principal, action, resource);\nforbid (principal, action, resource) when {{ {OVERFLOW} }};"),
    )]);
    let d = e.decide(&principal("user:a", &[]), &big_rows(), &none());
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].contains("a:1"), "{:?}", d.errors);
    assert!(d.reasons[0].message.contains("failed to evaluate"));
    // Small estimates evaluate fine and do not match.
    let mut ok = big_rows();
    ok.context.insert("estimated_rows".into(), json!(5));
    assert_eq!(
        e.decide(&principal("user:a", &[]), &ok, &none()).outcome,
        Outcome::Allow
    );
}

#[test]
fn erroring_review_forbid_denies() {
    let e = engine(&[(
        "a.cedar",
        &format!("permit (principal, action, resource);\n@review(\"dba\") forbid (principal, action, resource) when {{ {OVERFLOW} }};"),
    )]);
    let d = e.decide(&principal("user:a", &[]), &big_rows(), &none());
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.requirements.is_empty());
    assert_eq!(d.errors.len(), 1);
}

#[test]
fn the_fingerprint_names_the_policy_set() {
    let a = engine(&[("a.cedar", "permit (principal, action, resource);")]);
    let b = engine(&[("a.cedar", "permit (principal, action, resource);")]);
    let c = engine(&[("a.cedar", "forbid (principal, action, resource);")]);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(a.fingerprint().len(), 64);
}

#[test]
fn erroring_permit_is_ignored_and_reported() {
    let e = engine(&[(
        "a.cedar",
        &format!("permit (principal, action, resource) when {{ {OVERFLOW} }};"),
    )]);
    let d = e.decide(&principal("user:a", &[]), &big_rows(), &none());
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.errors.len(), 1);
    assert!(d
        .reasons
        .iter()
        .any(|r| r.policy_id == "a:0" && r.message.contains("ignored")));
}

#[test]
fn bad_request_is_denied_with_error() {
    let e = engine(&[("a.cedar", PERMIT_ALL)]);
    let mut a = action("sql", "read", "r");
    a.context
        .insert("gateway".into(), json!({"environment": "staging"}));
    let d = e.decide(&principal("user:a", &[]), &a, &none());
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.errors[0].contains("reserved"), "{:?}", d.errors);
    let mut a = action("sql", "read", "r");
    a.context.insert("ratio".into(), json!(0.5));
    let d = e.decide(&principal("user:a", &[]), &a, &none());
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.errors[0].contains("context.ratio"), "{:?}", d.errors);
}

#[test]
fn a_null_item_of_a_list_is_left_out_of_its_set() {
    // A SQL NULL bound to a statement arrives as a null parameter: the
    // statement is decided on the other values, not refused as undecidable.
    let e = engine(&[(
        "a.cedar",
        r#"permit (principal, action, resource) when { context.params has parameters && context.params.parameters.contains(5) };
           forbid (principal, action, resource) when { context.params has parameters && context.params.parameters.contains("x") };"#,
    )]);
    let who = principal("user:a", &[]);
    let mut a = action("sql", "write", "r");
    a.params.insert("parameters".into(), json!([null, 5]));
    let d = e.decide(&who, &a, &none());
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.errors);
    a.params.insert("parameters".into(), json!([null, 5, "x"]));
    assert_eq!(e.decide(&who, &a, &none()).outcome, Outcome::Deny);
    a.params.insert("parameters".into(), json!([null]));
    let d = e.decide(&who, &a, &none());
    assert_eq!(
        (d.outcome, d.errors.is_empty()),
        (Outcome::Deny, true),
        "no permit matches a set without 5: {:?}",
        d.errors
    );
}

#[test]
fn entities_and_context_reach_policies() {
    let e = engine(&[(
        "a.cedar",
        r#"@id("owner") permit (principal is Agent, action, resource) when { principal has owner && principal.owner == User::"alice" };
@id("group") permit (principal in Group::"ops", action in Action::"sql", resource == Resource::"pg://x");
@id("attrs") permit (principal, action, resource) when { resource.kind == "http" && resource.operation == "write" && resource has target && resource.target == "t" && resource.uri like "https://*" };
@id("ctx") permit (principal, action, resource) when { context.lineage.reads.contains("s3://a") && context.justification == "why" && context.gateway has transport && context.gateway.transport == "pg" && context has model && context.model == "m" };"#,
    )]);
    let allowed_by = |p: &Principal, a: &Action, f: &Map<String, Value>| {
        let d = e.decide(p, a, f);
        d.reasons
            .iter()
            .filter(|r| r.effect == ReasonEffect::Permit)
            .map(|r| r.policy_id.clone())
            .collect::<Vec<_>>()
    };
    let mut bot = principal("agent:bot", &[]);
    assert!(allowed_by(&bot, &action("x", "y", "z"), &none()).is_empty());
    bot.owner = Some(PrincipalId::parse("user:alice").unwrap());
    assert_eq!(
        allowed_by(&bot, &action("x", "y", "z"), &none()),
        ["a:owner"]
    );
    let ops = principal("service:ci", &["ops"]);
    assert_eq!(
        allowed_by(&ops, &action("sql", "custom", "pg://x"), &none()),
        ["a:group"]
    );
    assert!(allowed_by(&ops, &action("sqlx", "read", "pg://x"), &none()).is_empty());
    let mut a = action("http", "write", "https://api");
    a.target = Some("t".into());
    assert_eq!(allowed_by(&ops, &a, &none()), ["a:attrs"]);
    let mut a = action("k", "o", "r");
    a.lineage.reads.push("s3://a".into());
    a.justification = Some("why".into());
    a.context.insert("model".into(), json!("m"));
    assert!(allowed_by(&ops, &a, &none()).is_empty());
    assert_eq!(
        allowed_by(&ops, &a, &facts(json!({"transport": "pg"}))),
        ["a:ctx"]
    );
}

#[test]
fn custom_kinds_validate_and_decide() {
    let e = engine(&[(
        "jira.cedar",
        r#"permit (principal, action == Action::"jira.create", resource);
forbid (principal, action in Action::"jira", resource) when { context.gateway has environment && context.gateway.environment == "prod" };"#,
    )]);
    let p = principal("agent:bot", &[]);
    assert_eq!(
        e.decide(&p, &action("jira", "create", "j"), &none())
            .outcome,
        Outcome::Allow
    );
    let prod = facts(json!({"environment": "prod"}));
    assert_eq!(
        e.decide(&p, &action("jira", "create", "j"), &prod).outcome,
        Outcome::Deny
    );
    assert_eq!(
        e.decide(&p, &action("jira", "delete", "j"), &none())
            .outcome,
        Outcome::Deny
    );
}

fn issues(files: &[(&str, &str)], schema: Option<&str>) -> Vec<Issue> {
    match PolicyEngine::from_sources(files, schema) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("secondkey policy validate"), "{text}");
            e.issues().to_vec()
        }
    }
}

#[test]
fn annotation_errors_are_load_errors_with_location() {
    let cases = [
        "permit (principal, action, resource);\n\n@review(\"dba\") permit (principal, action, resource);",
        "permit (principal, action, resource);\n\n@quorum(\"2\") forbid (principal, action, resource);",
        "permit (principal, action, resource);\n\n@review(\"dba\") @quorum(\"0\") forbid (principal, action, resource);",
        "permit (principal, action, resource);\n\n@review(\"dba\") @ttl(\"soon\") forbid (principal, action, resource);",
        "permit (principal, action, resource);\n\n@review(\"dba\") @grant_ttl(\"5x\") forbid (principal, action, resource);",
        "permit (principal, action, resource);\n\n@review(\"\") forbid (principal, action, resource);",
    ];
    for src in cases {
        let i = issues(&[("bad.cedar", src)], None);
        assert_eq!(i.len(), 1, "{src}: {i:?}");
        assert_eq!(
            (i[0].file.as_str(), i[0].line),
            ("bad.cedar", Some(3)),
            "{src}"
        );
        assert!(i[0].message.contains("bad:1"), "{:?}", i[0]);
    }
}

#[test]
fn parse_errors_have_line_and_column() {
    let i = issues(
        &[
            ("ok.cedar", PERMIT_ALL),
            (
                "bad.cedar",
                "permit (principal, action, resource);\npermit (principal action, resource);",
            ),
        ],
        None,
    );
    assert!(!i.is_empty());
    assert_eq!(i[0].file, "bad.cedar");
    assert_eq!(i[0].line, Some(2));
    assert!(i[0].column.is_some());
}

#[test]
fn validation_errors_have_line_and_column() {
    let i = issues(
        &[("v.cedar", "permit (principal, action, resource);\npermit (principal, action, resource)\n  when { principal.nope == 1 };")],
        None,
    );
    assert!(!i.is_empty());
    for issue in &i {
        assert_eq!(
            (issue.file.as_str(), issue.line, issue.column),
            ("v.cedar", Some(3), Some(10))
        );
        assert!(issue.message.contains("policy `v:1`"), "{issue:?}");
    }
    let shown = LoadError::Invalid(i).to_string();
    assert!(
        shown.contains("v.cedar:3:10: for policy `v:1`, attribute `nope`"),
        "{shown}"
    );
}

#[test]
fn duplicate_ids_and_templates_are_refused() {
    let i = issues(&[("d.cedar", "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") permit (principal, action, resource);")], None);
    assert_eq!((i.len(), i[0].line), (1, Some(2)));
    let i = issues(
        &[(
            "t.cedar",
            "permit (principal == ?principal, action, resource);",
        )],
        None,
    );
    assert!(i[0].message.contains("templates"));
}

#[test]
fn a_schema_file_replaces_the_builtin() {
    let schema = format!("{BUILTIN_SCHEMA}\ntype Extra = {{ ticket: String }};").replace(
        "  estimated_rows?: Long,",
        "  estimated_rows?: Long,\n  ticket?: String,",
    );
    let policy = [("t.cedar", "permit (principal, action, resource) when { context has ticket && context.ticket like \"T-*\" };")];
    // With the built-in schema `ticket` is undeclared: the validator flags the
    // policy as impossible (a warning).
    assert!(!PolicyEngine::from_sources(&policy, None)
        .unwrap()
        .warnings()
        .is_empty());
    let e = PolicyEngine::from_sources(&policy, Some(&schema)).unwrap();
    assert!(e.warnings().is_empty(), "{:?}", e.warnings());
    let mut a = action("sql", "read", "r");
    assert_eq!(
        e.decide(&principal("user:a", &[]), &a, &none()).outcome,
        Outcome::Deny
    );
    a.context.insert("ticket".into(), json!("T-1"));
    assert_eq!(
        e.decide(&principal("user:a", &[]), &a, &none()).outcome,
        Outcome::Allow
    );
    let i = issues(&policy, Some("entity User;\nentity = ;"));
    assert_eq!(
        (i[0].file.as_str(), i[0].line),
        (crate::SCHEMA_FILE, Some(2))
    );
}

#[test]
fn explain_names_rule_policies_and_annotations() {
    let e = engine(&[(
        "x.cedar",
        "@id(\"ok\") permit (principal, action, resource);\n@id(\"exp\") @review(\"data-owners\") @quorum(\"2\") forbid (principal, action == Action::\"sql.export\", resource);",
    )]);
    let s = e.explain(
        &principal("agent:bot", &[]),
        &action("sql", "export", "r"),
        &none(),
    );
    assert!(s.contains("decision: review (rule 2"), "{s}");
    assert!(
        s.contains("requires 2 approval(s) from [data-owners]"),
        "{s}"
    );
    assert!(s.contains("permit x:ok (x.cedar:1)"), "{s}");
    assert!(s.contains("review x:exp (x.cedar:2)\n"), "{s}");
    // each annotation with its effect, defaults named
    for line in [
        "@id(\"exp\"): names the policy in decisions, the log and explanations",
        "@quorum(\"2\"): 2 distinct human approvers needed",
        "@review(\"data-owners\"): holds the action for a member of data-owners",
        "(no @ttl: default, waits at most 1h)",
        "(no @grant_ttl: default, usable for 5m)",
        "request waits at most 1h (smallest @ttl), approval usable for 5m (smallest @grant_ttl)",
    ] {
        assert!(s.contains(line), "{line}\n{s}");
    }
    let s = e.explain(
        &principal("agent:bot", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert!(s.contains("decision: allow (rule 3"), "{s}");
    assert!(s.contains("recorded: before the run"), "{s}");
}

#[test]
fn explain_shows_record_mode_and_reason() {
    let e = engine(&[(
        "y.cedar",
        "@id(\"reads\") @record(\"after\") @reason(\"Reads are cheap to audit later.\")\npermit (principal, action == Action::\"sql.read\", resource);\n@id(\"all\") permit (principal, action == Action::\"sql.write\", resource);",
    )]);
    let s = e.explain(
        &principal("agent:bot", &[]),
        &action("sql", "read", "r"),
        &none(),
    );
    assert!(
        s.contains("recorded: after the run -- every matching permit carries @record(\"after\")"),
        "{s}"
    );
    assert!(
        s.contains("@record(\"after\"): an allow whose matching permits all carry it may run before its log entry is durable"),
        "{s}"
    );
    assert!(
        s.contains(
            "@reason(\"Reads are cheap to audit later.\"): shown as why the action is permitted"
        ),
        "{s}"
    );
    assert_eq!(
        e.reason_of("y:reads"),
        Some("Reads are cheap to audit later.")
    );
    assert_eq!(e.reason_of("y:all"), None);
    let s = e.explain(
        &principal("agent:bot", &[]),
        &action("sql", "write", "r"),
        &none(),
    );
    assert!(s.contains("recorded: before the run"), "{s}");
}

#[test]
fn sample_policies_pass_their_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let e = match PolicyEngine::load_dir(&dir) {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    assert!(e.warnings().is_empty(), "{:?}", e.warnings());
    let report = crate::run_tests(&e, dir.join("demo.tests.toml"));
    assert!(report.passed(), "{report}");
    assert!(report.cases.len() >= 8);
}

#[test]
fn test_reports_show_failures() {
    let e = engine(&[("a.cedar", PERMIT_ALL)]);
    let r = crate::run_tests_str(
        &e,
        "t.tests.toml",
        r#"
[[case]]
name = "wrong"
principal = "user:a"
action = { kind = "sql", operation = "read", resource = "r" }
expect = "deny"
[[case]]
name = "right"
principal = "user:a"
action = { kind = "sql", operation = "read", resource = "r" }
expect = "allow"
"#,
    );
    assert!(!r.passed());
    assert_eq!(r.failures(), 1);
    assert!(r.cases[0]
        .failure
        .as_deref()
        .unwrap_or("")
        .starts_with("expected deny, got allow"));
    assert!(r.to_string().contains("FAIL wrong"));
    let r = crate::run_tests_str(&e, "t.tests.toml", "[[case]]\nname = 1");
    assert!(r.error.is_some() && !r.passed());
}

#[test]
fn load_dir_reads_files_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.cedar"), PERMIT_ALL).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let e = PolicyEngine::load_dir(dir.path()).unwrap();
    assert_eq!(e.len(), 1);
    assert!(matches!(
        PolicyEngine::load_dir(dir.path().join("missing")),
        Err(LoadError::Io { .. })
    ));
}

// ---- slicing must not change any decision ----

const KINDS: [&str; 3] = ["sql", "http", "jira"];
const OPS: [&str; 4] = ["read", "write", "delete", "export"];
const RESOURCES: [&str; 3] = ["r1", "r2", "r3"];
const GROUPS: [&str; 3] = ["agents", "dba", "security"];

/// A deterministic mix of every scope shape the index distinguishes.
fn sliced_engine() -> PolicyEngine {
    let mut seed: u64 = 0x5eed;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    let mut src = String::new();
    for _ in 0..300 {
        let k = KINDS[next(3)];
        let action = match next(5) {
            0 => "action".to_owned(),
            1 => format!("action == Action::\"{k}.{}\"", OPS[next(4)]),
            2 => format!("action in Action::\"{k}\""),
            3 => format!(
                "action in [Action::\"{k}.{}\", Action::\"{}\"]",
                OPS[next(4)],
                KINDS[next(3)]
            ),
            _ => format!("action in Action::\"{k}.{}\"", OPS[next(4)]),
        };
        let resource = match next(4) {
            0 => format!("resource == Resource::\"{}\"", RESOURCES[next(3)]),
            1 => format!("resource in Resource::\"{}\"", RESOURCES[next(3)]),
            2 => "resource is Resource".to_owned(),
            _ => "resource".to_owned(),
        };
        let principal = match next(4) {
            0 => format!("principal in Group::\"{}\"", GROUPS[next(3)]),
            1 => "principal is Agent".to_owned(),
            _ => "principal".to_owned(),
        };
        let cond = match next(4) {
            0 => " when { context.gateway has environment && context.gateway.environment == \"prod\" }".to_owned(),
            1 => format!(" when {{ {OVERFLOW} }}"),
            _ => String::new(),
        };
        let head = match next(4) {
            0 => "permit",
            1 => "forbid",
            2 => "@review(\"dba\") @ttl(\"10m\") forbid",
            _ => "permit",
        };
        src.push_str(&format!(
            "{head} ({principal}, {action}, {resource}){cond};\n"
        ));
    }
    engine(&[("gen.cedar", &src)])
}

proptest! {
    #[test]
    fn sliced_and_unsliced_decisions_agree(
        kind in 0..3usize, op in 0..4usize, res in 0..3usize, pkind in 0..3usize,
        groups in proptest::collection::btree_set(0..3usize, 0..3),
        prod in any::<bool>(), big in any::<bool>(),
    ) {
        thread_local!(static ENGINE: PolicyEngine = sliced_engine());
        let id = ["user:u", "agent:a", "service:s"][pkind];
        let p = principal(id, &groups.iter().map(|g| GROUPS[*g]).collect::<Vec<_>>());
        let mut a = action(KINDS[kind], OPS[op], RESOURCES[res]);
        if big { a.context.insert("estimated_rows".into(), json!(1_000_000_000_000i64)); }
        let f = if prod { facts(json!({"environment": "prod"})) } else { none() };
        ENGINE.with(|e| {
            let sliced = e.decide(&p, &a, &f);
            let full = e.decide_unsliced(&p, &a, &f);
            prop_assert_eq!(sliced, full);
            Ok(())
        })?;
    }
}

/// Entity stores are cached by everything they are built from: a principal
/// whose groups or owner changed (an OIDC sign-in with other claims), or
/// names crafted to run together, never gets another principal's entities.
#[test]
fn cached_entities_never_cross_principals_groups_or_resources() {
    let e = engine(&[(
        "a.cedar",
        r#"permit (principal in Group::"dba", action, resource);
           forbid (principal, action, resource) when { resource.uri like "*secret*" };
           permit (principal, action, resource) when { principal has owner && principal.owner == User::"alice" };"#,
    )]);
    let read = action("sql", "read", "postgres://db/t");
    let dba = principal("user:a", &["dba"]);
    let not_dba = principal("user:a", &["dev"]);
    for _ in 0..3 {
        assert_eq!(e.decide(&dba, &read, &none()).outcome, Outcome::Allow);
        assert_eq!(e.decide(&not_dba, &read, &none()).outcome, Outcome::Deny);
    }
    // Group names that would run together under a naive separator.
    let joined = principal("user:a", &["d", "ba"]);
    let split = principal("user:a", &["dba"]);
    assert_eq!(e.decide(&split, &read, &none()).outcome, Outcome::Allow);
    assert_eq!(e.decide(&joined, &read, &none()).outcome, Outcome::Deny);
    // The resource's attributes come from its own entity.
    let secret = action("sql", "read", "postgres://db/secret");
    assert_eq!(e.decide(&dba, &secret, &none()).outcome, Outcome::Deny);
    assert_eq!(e.decide(&dba, &read, &none()).outcome, Outcome::Allow);
    // An agent's owner is part of the key.
    let mut bot = principal("agent:bot", &[]);
    bot.owner = Some(PrincipalId::parse("user:alice").unwrap());
    assert_eq!(e.decide(&bot, &read, &none()).outcome, Outcome::Allow);
    bot.owner = Some(PrincipalId::parse("user:mallory").unwrap());
    assert_eq!(e.decide(&bot, &read, &none()).outcome, Outcome::Deny);
    // Many distinct principals: the bounded cache keeps deciding right.
    for i in 0..5000 {
        let p = principal(
            &format!("user:u{i}"),
            if i % 2 == 0 { &["dba"] } else { &[] },
        );
        let want = if i % 2 == 0 {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        assert_eq!(e.decide(&p, &read, &none()).outcome, want, "user:u{i}");
    }
}

/// Principal ids are folded to lowercase wherever the gateway reads them,
/// so a policy naming `User::"Alice"` could never match anyone: a forbid
/// meant for her would silently never fire. It is refused at load, with
/// the spelling to use.
#[test]
fn principal_ids_with_capitals_are_refused_at_load() {
    for (src, shown) in [
        (
            r#"forbid (principal == User::"Alice", action, resource);"#,
            r#"User::"alice""#,
        ),
        (
            r#"permit (principal, action, resource) when { principal in [Agent::"ETL-Bot"] };"#,
            r#"Agent::"etl-bot""#,
        ),
        (
            r#"permit (principal, action, resource) when { principal.owner == User::"Bob" };"#,
            r#"User::"bob""#,
        ),
        (
            r#"permit (principal, action, resource) unless { principal == Service::"CI" };"#,
            r#"Service::"ci""#,
        ),
    ] {
        let i = issues(&[("p.cedar", src)], None);
        assert_eq!(i.len(), 1, "{src}: {i:?}");
        assert!(
            i[0].message.contains("can never match") && i[0].message.contains(shown),
            "{src}: {i:?}"
        );
        assert_eq!(i[0].line, Some(1));
    }
    // Lowercase ids, and capitals where they are not principal ids, load.
    engine(&[(
        "ok.cedar",
        r#"forbid (principal == User::"alice", action, resource) when { resource.uri like "*Secret*" };
           permit (principal in Group::"DBA Team", action == Action::"sql.read", resource == Resource::"postgres://Analytics");"#,
    )]);
}

/// The spellings of one number that RFC 8785 writes alike.
fn spellings(n: i64, half: bool) -> Vec<String> {
    if half {
        let f = n as f64 + 0.5;
        return vec![
            format!("{f}"),
            format!("{f}0"),
            format!("{}e-1", n * 10 + 5),
            format!("{f}E0"),
        ];
    }
    let mut v = vec![
        format!("{n}"),
        format!("{n}.0"),
        format!("{n}E0"),
        format!("{n}e+0"),
        format!("{}e-1", n * 10),
        format!("{n}.000"),
    ];
    if n == 0 {
        v.extend(["-0".to_owned(), "-0.0".to_owned(), "-0E5".to_owned()]);
    }
    v
}

proptest! {
    /// One digest, one meaning: two submissions with the same digest —
    /// the same numbers spelled differently (`100`, `1E2`, `100.0`, `-0`) —
    /// always get the same decision.
    #[test]
    fn equal_digests_get_equal_decisions(
        rows in prop_oneof![Just(0i64), Just(100), Just(999), Just(1000), -5i64..2000],
        limit in -3i64..3, half_rows in any::<bool>(), half_limit in any::<bool>(),
        a in 0..16usize, b in 0..16usize, c in 0..16usize, d in 0..16usize,
    ) {
        thread_local!(static ENGINE: PolicyEngine = PolicyEngine::from_sources(&[(
            "n.cedar",
            r#"permit (principal, action == Action::"sql.write", resource)
                 when { context has estimated_rows && context.estimated_rows < 1000 };
               @review("dba") forbid (principal, action == Action::"sql.write", resource)
                 when { context has estimated_rows && context.estimated_rows >= 100 && context.params has limit && context.params.limit > 0 };
               forbid (principal, action, resource)
                 when { (context has estimated_rows && context.estimated_rows == 0) || (context.params has limit && context.params.limit == 0) };"#,
        )], Some(&BUILTIN_SCHEMA.replace("params: {},", "params: { limit?: Long },"))).unwrap());
        let rs = spellings(rows, half_rows);
        let ls = spellings(limit, half_limit);
        let text = |r: &str, l: &str| format!(
            r#"{{"kind":"sql","operation":"write","resource":"postgres://db/t","params":{{"limit":{l}}},"context":{{"estimated_rows":{r}}}}}"#
        );
        let one = text(&rs[a % rs.len()], &ls[b % ls.len()]);
        let two = text(&rs[c % rs.len()], &ls[d % ls.len()]);
        let (_, a1, d1) = secondkey_core::action::Action::from_slice(one.as_bytes()).unwrap();
        let (_, a2, d2) = secondkey_core::action::Action::from_slice(two.as_bytes()).unwrap();
        prop_assert_eq!(&d1, &d2, "{} and {} spell the same numbers", one, two);
        let p = principal("agent:bot", &["agents"]);
        ENGINE.with(|e| {
            prop_assert_eq!(e.decide(&p, &a1, &none()), e.decide(&p, &a2, &none()), "{} vs {}", one, two);
            Ok(())
        })?;
    }
}

/// Every misspelled, misplaced or malformed annotation is refused with a
/// message naming the file, the annotation's line, the annotation and, for
/// a misspelling, the closest known name.
#[test]
fn bad_annotations_are_refused_each_with_its_message() {
    let permit = "permit (principal, action, resource);\n";
    let long = "x".repeat(crate::MAX_REASON_CHARS + 1);
    let too_long = format!("@reason(\"{long}\")\nforbid (principal, action, resource);");
    #[rustfmt::skip]
    let cases: Vec<(&str, String, u32, &str)> = vec![
        // misspelled: the issue's example, each typo on its own line
        ("quorom", "@review(\"dba\")\n@quorom(\"2\")\nforbid (principal, action, resource);".into(), 3,
         "unknown annotation @quorom; did you mean @quorum?"),
        ("tll", "@review(\"dba\")\n@ttl(\"5m\")\n@tll(\"5m\")\nforbid (principal, action, resource);".into(), 4,
         "unknown annotation @tll; did you mean @ttl?"),
        ("reveiw", "@reveiw(\"dba\")\nforbid (principal, action, resource);".into(), 2,
         "unknown annotation @reveiw; did you mean @review?"),
        ("Review", "@Review(\"dba\")\nforbid (principal, action, resource);".into(), 2,
         "unknown annotation @Review; did you mean @review?"),
        ("granttl", "@review(\"dba\")\n@granttl(\"1m\")\nforbid (principal, action, resource);".into(), 3,
         "unknown annotation @granttl; did you mean @grant_ttl?"),
        ("reasons", "@reasons(\"why\")\nforbid (principal, action, resource);".into(), 2,
         "unknown annotation @reasons; did you mean @reason?"),
        ("recrod", "@recrod(\"after\")\npermit (principal, action == Action::\"sql.read\", resource);".into(), 2,
         "unknown annotation @recrod; did you mean @record?"),
        ("owner (far from any)", "@owner(\"team-a\")\nforbid (principal, action, resource);".into(), 2,
         "unknown annotation @owner; secondkey reads @id, @review"),
        // misplaced
        ("review on permit", "@review(\"dba\")\npermit (principal, action == Action::\"sql.read\", resource);".into(), 2,
         "@review only applies to `forbid` policies"),
        ("quorum without review", "@quorum(\"2\")\nforbid (principal, action, resource);".into(), 2,
         "@quorum only applies to a `forbid` policy with @review"),
        ("ttl on permit", "@ttl(\"1h\")\npermit (principal, action == Action::\"sql.read\", resource);".into(), 2,
         "a `permit` never waits for review; remove @ttl"),
        ("grant_ttl without review", "@grant_ttl(\"1m\")\nforbid (principal, action, resource);".into(), 2,
         "@grant_ttl only applies to a `forbid` policy with @review"),
        ("record on forbid", "@record(\"after\")\nforbid (principal, action, resource);".into(), 2,
         "@record only applies to `permit` policies"),
        // malformed
        ("quorum zero", "@review(\"dba\")\n@quorum(\"0\")\nforbid (principal, action, resource);".into(), 3,
         "@quorum(\"0\") must be a whole number of approvers, at least 1"),
        ("quorum words", "@review(\"dba\")\n@quorum(\"two\")\nforbid (principal, action, resource);".into(), 3,
         "@quorum(\"two\") must be a whole number"),
        ("quorum negative", "@review(\"dba\")\n@quorum(\"-1\")\nforbid (principal, action, resource);".into(), 3,
         "@quorum(\"-1\") must be a whole number"),
        ("ttl no unit", "@review(\"dba\")\n@ttl(\"15\")\nforbid (principal, action, resource);".into(), 3,
         "@ttl: `15` has no unit"),
        ("ttl too long", "@review(\"dba\")\n@ttl(\"31d\")\nforbid (principal, action, resource);".into(), 3,
         "@ttl(\"31d\") is outside 1s to 30d"),
        ("grant_ttl too long", "@review(\"dba\")\n@grant_ttl(\"2d\")\nforbid (principal, action, resource);".into(), 3,
         "@grant_ttl(\"2d\") is outside 1s to 1d"),
        ("grant_ttl zero", "@review(\"dba\")\n@grant_ttl(\"0s\")\nforbid (principal, action, resource);".into(), 3,
         "@grant_ttl: `0s` is zero"),
        ("review empty", "@review(\"\")\nforbid (principal, action, resource);".into(), 2,
         "must be a comma-separated list of group names"),
        ("review spaces", "@review(\"data owners\")\nforbid (principal, action, resource);".into(), 2,
         "must be a comma-separated list of group names"),
        ("reason empty", "@reason(\"\")\nforbid (principal, action, resource);".into(), 2,
         "@reason(\"\") is empty"),
        ("reason blank", "@reason(\"  \")\nforbid (principal, action, resource);".into(), 2,
         "@reason(\"  \") is only whitespace"),
        ("quorum signed", "@review(\"dba\")\n@quorum(\"+2\")\nforbid (principal, action, resource);".into(), 3,
         "@quorum(\"+2\") must be a whole number"),
        ("reason too long", too_long, 2,
         "@reason is 501 characters long; at most 500"),
        ("reason control", "@reason(\"bell\\u{7}\")\nforbid (principal, action, resource);".into(), 2,
         "@reason contains the control character"),
        ("record value", "@record(\"before\")\npermit (principal, action == Action::\"sql.read\", resource);".into(), 2,
         "@record(\"before\") is not a record mode; the only one is @record(\"after\")"),
    ];
    for (what, policy, line, message) in cases {
        let text = format!("{permit}\n{policy}");
        let i = issues(&[("bad.cedar", &text)], None);
        assert_eq!(i.len(), 1, "{what}: {i:?}");
        assert_eq!(
            (i[0].file.as_str(), i[0].line),
            ("bad.cedar", Some(line + 1)),
            "{what}: {:?}",
            i[0]
        );
        assert!(
            i[0].message.contains("policy `bad:1`") && i[0].message.contains(message),
            "{what}: {:?}",
            i[0].message
        );
        // validate prints it as file:line: message
        assert!(i[0]
            .to_string()
            .starts_with(&format!("bad.cedar:{}: ", line + 1)));
    }
}

/// Several problems in one policy are all reported, each on its own line.
#[test]
fn every_bad_annotation_of_a_policy_is_reported() {
    let src =
        "@review(\"dba\")\n@quorom(\"2\")\n@tll(\"5m\")\nforbid (principal, action, resource);";
    let i = issues(&[("p.cedar", src)], None);
    let got: Vec<(Option<u32>, bool)> = i
        .iter()
        .map(|x| (x.line, x.message.contains("did you mean")))
        .collect();
    assert_eq!(got, vec![(Some(2), true), (Some(3), true)], "{i:?}");
}

/// Annotations under the prefix, or allow-listed, are the author's own:
/// accepted, kept and shown, never read.
#[test]
fn custom_annotations_under_the_prefix_or_allow_listed_load() {
    let src = "@x_owner(\"team-a\") @x_ticket(\"SEC-1\") @id(\"ok\")\npermit (principal, action, resource);\n@jira(\"OPS-2\") @reason(\"production exports need a data owner\") @review(\"dba\")\nforbid (principal, action == Action::\"sql.export\", resource);";
    // without the allow-list, @jira is refused
    let i = issues(&[("c.cedar", src)], None);
    assert_eq!(i.len(), 1, "{i:?}");
    assert!(i[0].message.contains("unknown annotation @jira"), "{i:?}");
    assert!(i[0].message.contains("@x_jira"), "{i:?}");
    let options = LoadOptions {
        annotations: ["jira".to_owned()].into(),
        groups: None,
    };
    let e = PolicyEngine::from_sources_with(&[("c.cedar", src)], None, &options).unwrap();
    assert_eq!(e.len(), 2);
    let s = e.explain(
        &principal("agent:bot", &[]),
        &action("sql", "export", "r"),
        &none(),
    );
    assert!(
        s.contains("@x_owner(\"team-a\"): the author's own; secondkey does not read it"),
        "{s}"
    );
    assert!(
        s.contains("@reason(\"production exports need a data owner\"): shown to reviewers as why review is required"),
        "{s}"
    );
}

fn groups(members: &[(&str, &[&str])], idp: crate::IdpGroups) -> crate::Groups {
    crate::Groups {
        humans: members
            .iter()
            .map(|(g, people)| {
                (
                    (*g).to_owned(),
                    people.iter().map(|p| (*p).to_owned()).collect(),
                )
            })
            .collect(),
        identity_provider: idp,
    }
}

/// A requirement no set of configured humans can meet is an error with
/// groups from config, and a warning naming the group when the identity
/// provider may add members.
#[test]
fn unsatisfiable_quorum_and_unknown_groups() {
    use crate::IdpGroups;
    let src = |review: &str, quorum: &str| {
        format!("permit (principal, action, resource);\n@review(\"{review}\")\n@quorum(\"{quorum}\")\nforbid (principal, action == Action::\"sql.export\", resource);")
    };
    let load = |text: &str, g: crate::Groups| {
        PolicyEngine::from_sources_with(
            &[("q.cedar", text)],
            None,
            &LoadOptions {
                annotations: Default::default(),
                groups: Some(g),
            },
        )
    };
    let config = || {
        groups(
            &[("dba", &["user:ann", "user:ben"]), ("agents", &[])],
            IdpGroups::None,
        )
    };
    // two humans in dba: quorum 2 loads, quorum 3 cannot be met
    assert!(load(&src("dba", "2"), config()).is_ok());
    let e = load(&src("dba", "3"), config()).unwrap_err();
    let i = e.issues();
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].line, Some(3));
    assert!(
        i[0].message.contains("@quorum(\"3\") can never be met: @review(\"dba\") has 2 humans in config (agents and services never review)"),
        "{i:?}"
    );
    // a group with agents only has no human: said without naming a
    // @quorum the policy may not have written (1 is the default)
    let e = load(&src("agents", "1"), config()).unwrap_err();
    assert!(
        e.issues()[0].message.ends_with("@review(\"agents\") can never be met: it needs a human approver and has none in config (agents and services never review); add reviewers to the group"),
        "{e}"
    );
    let e = load(&src("agents", "2"), config()).unwrap_err();
    assert!(
        e.issues()[0]
            .message
            .contains("@quorum(\"2\") can never be met: @review(\"agents\") has no human"),
        "{e}"
    );
    // a person in two of the groups counts once
    let both = groups(
        &[("dba", &["user:ann"]), ("sec", &["user:ann"])],
        IdpGroups::None,
    );
    assert!(load(&src("dba,sec", "2"), both).is_err());
    // a group nobody is in, spelled close to one that exists
    let e = load(&src("dbas", "1"), config()).unwrap_err();
    assert_eq!(e.issues()[0].line, Some(2));
    assert!(
        e.issues()[0].message.contains(
            "names group `dbas`, which no configured principal belongs to (did you mean `dba`?)"
        ),
        "{e}"
    );
    // with groups from the identity provider: warnings naming the group
    let idp = || groups(&[("dba", &["user:ann", "user:ben"])], IdpGroups::Any);
    let ok = load(&src("dba", "3"), idp()).unwrap();
    let w = ok.warnings().join("\n");
    assert!(
        w.contains("q.cedar:3: policy `q:1`: @quorum(\"3\") needs 3 distinct approvers but @review(\"dba\") has 2 humans in config; the rest must come from the identity provider's groups (`dba`)"),
        "{w}"
    );
    let ok = load(&src("security", "1"), idp()).unwrap();
    assert!(
        ok.warnings().join("\n").contains("names group `security`, which no configured principal belongs to; its reviewers must get it from the identity provider"),
        "{:?}",
        ok.warnings()
    );
    // a mapped claim supplies only its targets
    let mapped = || {
        groups(
            &[("dba", &["user:ann"])],
            IdpGroups::Mapped(["security".to_owned()].into()),
        )
    };
    assert!(load(&src("security", "2"), mapped()).is_ok());
    let e = load(&src("secops", "1"), mapped()).unwrap_err();
    assert!(
        e.issues()[0]
            .message
            .contains("nor is it a target of `[oidc] group_map`"),
        "{e}"
    );
    let e = load(&src("dba", "2"), mapped()).unwrap_err();
    assert!(e.issues()[0].message.contains("can never be met"), "{e}");
}

// ---- @record("after") ----

#[test]
fn record_after_needs_every_matching_permit() {
    let e = engine(&[(
        "r.cedar",
        r#"@id("reads") @record("after") permit (principal, action == Action::"sql.read", resource);
           @id("writes") @record("after") permit (principal, action == Action::"sql.write", resource);
           @id("writes-strict") permit (principal, action == Action::"sql.write", resource) when { context has strict };
           @id("exports") permit (principal, action == Action::"sql.export", resource);
           @id("exp-review") @review("dba") forbid (principal, action == Action::"sql.export", resource) when { context has review };"#,
    )]);
    let p = principal("agent:bot", &[]);
    let d = e.decide(&p, &action("sql", "read", "r"), &none());
    assert_eq!((d.outcome, d.record_after), (Outcome::Allow, true));
    let d = e.decide(&p, &action("sql", "write", "r"), &none());
    assert_eq!((d.outcome, d.record_after), (Outcome::Allow, true));
    // A second matching permit without the annotation makes it strict.
    let mut w = action("sql", "write", "r");
    w.context.insert("strict".into(), json!(true));
    let d = e.decide(&p, &w, &none());
    assert_eq!((d.outcome, d.record_after), (Outcome::Allow, false));
    let d = e.decide(&p, &action("sql", "export", "r"), &none());
    assert_eq!((d.outcome, d.record_after), (Outcome::Allow, false));
    // Never on a deny or a review.
    let d = e.decide(&p, &action("sql", "delete", "r"), &none());
    assert_eq!((d.outcome, d.record_after), (Outcome::Deny, false));
    let mut x = action("sql", "export", "r");
    x.context.insert("review".into(), json!(true));
    assert!(!e.decide(&p, &x, &none()).record_after);
    // explain says how it is recorded.
    let s = e.explain(&p, &action("sql", "read", "r"), &none());
    assert!(s.contains("recorded: after the run"), "{s}");
    assert!(s.contains("@record(\"after\")"), "{s}");
    let s = e.explain(&p, &w, &none());
    assert!(s.contains("recorded: before the run"), "{s}");
}

#[test]
fn record_after_errors_at_load() {
    for (src, want) in [
        (
            r#"@record("after") forbid (principal, action, resource);"#,
            "only applies to `permit`",
        ),
        (
            r#"@record("before") permit (principal, action, resource);"#,
            "is not a record mode",
        ),
    ] {
        let err = PolicyEngine::from_sources(&[("r.cedar", src)], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{src}: {err}");
    }
}

#[test]
fn an_erroring_policy_keeps_the_allow_strict() {
    let e = engine(&[(
        "r.cedar",
        &format!(
            "@record(\"after\") permit (principal, action, resource);\n@record(\"after\") permit (principal, action, resource) when {{ {OVERFLOW} }};"
        ),
    )]);
    let mut a = action("sql", "read", "r");
    a.context
        .insert("estimated_rows".into(), json!(1_000_000_000_000i64));
    let d = e.decide(&principal("agent:bot", &[]), &a, &none());
    assert_eq!(d.outcome, Outcome::Allow);
    assert!(!d.errors.is_empty());
    assert!(!d.record_after);
}

// ---- the decision cache: cached == fresh ----

/// The changes of a principal the cache must see: groups and owner.
#[test]
fn cached_decisions_follow_principal_changes() {
    let e = engine(&[(
        "c.cedar",
        r#"permit (principal in Group::"agents", action, resource);
           forbid (principal is Agent, action, resource) when { principal has owner && principal.owner == User::"mallory" };"#,
    )]);
    let a = action("sql", "read", "r");
    let mut p = principal("agent:bot", &["agents"]);
    assert_eq!(e.decide(&p, &a, &none()).outcome, Outcome::Allow);
    p.groups.clear();
    assert_eq!(e.decide(&p, &a, &none()).outcome, Outcome::Deny);
    p.groups.insert("agents".into());
    p.owner = Some(PrincipalId::parse("user:mallory").unwrap());
    assert_eq!(e.decide(&p, &a, &none()).outcome, Outcome::Deny);
    p.owner = Some(PrincipalId::parse("user:alice").unwrap());
    assert_eq!(e.decide(&p, &a, &none()).outcome, Outcome::Allow);
}

/// A random policy set over every kind of input a policy can read.
fn random_policies(picks: &[(u8, u8, u8, u8, u8)]) -> String {
    let mut src = String::new();
    for &(head, who, what, res, cond) in picks {
        let head = match head % 5 {
            0 => "permit",
            1 => "@record(\"after\") permit",
            2 => "forbid",
            3 => "@review(\"dba\") forbid",
            _ => "@record(\"after\") permit",
        };
        let who = match who % 4 {
            0 => format!(
                "principal in Group::\"{}\"",
                GROUPS[usize::from(who / 4) % 3]
            ),
            1 => "principal is Agent".to_owned(),
            _ => "principal".to_owned(),
        };
        let what = match what % 4 {
            0 => format!(
                "action == Action::\"sql.{}\"",
                OPS[usize::from(what / 4) % 4]
            ),
            1 => "action in Action::\"sql\"".to_owned(),
            _ => "action".to_owned(),
        };
        let res = match res % 3 {
            0 => format!(
                "resource == Resource::\"{}\"",
                RESOURCES[usize::from(res / 3) % 3]
            ),
            _ => "resource".to_owned(),
        };
        let cond = match cond % 12 {
            0 => " when { context.gateway has environment && context.gateway.environment == \"prod\" }",
            1 => " when { context.params has n && context.params.n > 2 }",
            2 => " when { context has x && context.x == \"a\" }",
            3 => " when { context.justification like \"*ticket*\" }",
            4 => " when { context.lineage.writes.contains(\"w\") }",
            5 => " when { principal has owner && principal.owner == User::\"alice\" }",
            6 => " when { resource.uri like \"r1*\" }",
            7 => " when { context.x == \"b\" }",
            8 => " when { context has rows && context.rows * 1000000000000 > 5 }",
            9 => " unless { context.gateway.transport == \"pg\" }",
            _ => "",
        };
        src.push_str(&format!("{head} ({who}, {what}, {res}){cond};\n"));
    }
    src
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn cached_decisions_equal_fresh_ones(
        picks in proptest::collection::vec(any::<(u8, u8, u8, u8, u8)>(), 1..8),
        inputs in proptest::collection::vec(
            (0..3usize, proptest::collection::btree_set(0..3usize, 0..3), 0..4usize, 0..3usize,
             0..4usize, 0..4usize, 0..4usize, 0..3usize, any::<bool>()),
            1..12),
    ) {
        let src = random_policies(&picks);
        let Ok(e) = PolicyEngine::from_sources(&[("gen.cedar", &src)], None) else {
            // Some random sets do not validate; those are not what is tested.
            return Ok(());
        };
        // Every input twice, so the second round is served from the cache.
        for round in 0..2 {
            for (pk, groups, op, res, x, n, env, just, owner) in &inputs {
                let id = ["user:u", "agent:a", "agent:b"][*pk];
                let mut p = principal(id, &groups.iter().map(|g| GROUPS[*g]).collect::<Vec<_>>());
                if *owner && p.id.kind() == crate::types::PrincipalKind::Agent {
                    p.owner = Some(PrincipalId::parse("user:alice").unwrap());
                }
                let mut a = action("sql", OPS[*op], RESOURCES[*res]);
                match x {
                    0 => {}
                    1 => { a.context.insert("x".into(), json!("a")); }
                    2 => { a.context.insert("x".into(), json!("b")); }
                    _ => { a.context.insert("rows".into(), json!(1_000_000_000_000i64)); }
                }
                match n {
                    0 => {}
                    1 => { a.params.insert("n".into(), json!(1)); }
                    2 => { a.params.insert("n".into(), json!(5)); }
                    // Not representable: never cached, always denied fresh.
                    _ => { a.params.insert("n".into(), json!(2.5)); }
                }
                if *just == 1 { a.justification = Some("see ticket 7".into()); }
                if *just == 2 { a.lineage.writes = vec!["w".into()]; }
                let f = match env {
                    0 => none(),
                    1 => facts(json!({"environment": "prod", "transport": "pg"})),
                    2 => facts(json!({"environment": "dev", "transport": "api"})),
                    _ => facts(json!({"transport": "pg"})),
                };
                let cached = e.decide(&p, &a, &f);
                let fresh = e.decide_uncached(&p, &a, &f);
                prop_assert_eq!(&cached, &fresh, "round {} policies:\n{}", round, src);
            }
        }
    }
}
