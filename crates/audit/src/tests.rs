//! A small log covering every path, shaped as the gateway writes it.

use serde_json::{json, Value};

use secondkey_log::entry::Entry;

use crate::evidence::{self, Framework, Inputs};
use crate::graph::{self, Filter};
use crate::history::{Step, Tracker, Use};
use crate::openlineage;
use crate::time::Period;
use crate::usage;

struct Log(Vec<Entry>);

impl Log {
    fn push(
        &mut self,
        time: &str,
        event: &str,
        actor: &str,
        subjects: &[(&str, &str)],
        payload: Value,
    ) {
        let index = self.0.len() as u64;
        self.0.push(Entry {
            index,
            time: format!("2026-12-01T{time}.000Z"),
            event: event.into(),
            actor: Some(actor.into()),
            subjects: subjects
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            digest: Some("ab".repeat(32)),
            payload,
        });
    }

    fn bytes(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(|e| e.to_bytes().unwrap()).collect()
    }
}

const REQ: &str = "req_019ad7c3e1f03f9a0123456789abcdef";
const ACT_PG: &str = "act_019ad7c3e1f03f9a0000000000000001";
const ACT_API: &str = "act_019ad7c3e1f03f9a0000000000000002";
const ACT_DENY: &str = "act_019ad7c3e1f03f9a0000000000000003";
const REQ_EXP: &str = "req_019ad7c3e1f03f9a0000000000000004";

fn sample() -> Log {
    let mut l = Log(vec![]);
    l.push(
        "08:00:00",
        "gateway.started",
        "service:secondkey",
        &[],
        json!({"version": "0.1.0", "policies": {"count": 3, "policy_set": "aa11"}}),
    );
    // An adapter (pg) ran an allowed read at once and reported rows.
    l.push("09:00:00", "action.allowed", "agent:pg-bot", &[("action", ACT_PG)], json!({"decision": "allow", "executed": true, "transport": "pg", "environment": "prod", "policy_set": "aa11",
        "action": {"kind": "sql", "operation": "read", "resource": "postgres://analytics/public.orders", "context": {"model": "m1"},
                   "lineage": {"reads": ["postgres://analytics/public.orders"]}}}));
    l.push("09:00:01", "action.result", "agent:pg-bot", &[("action", ACT_PG)], json!({"execution": ACT_PG, "ok": true, "summary": {"rows": 42}, "reads": ["postgres://analytics/public.orders"], "writes": []}));
    // A REST agent took a grant and used it.
    l.push("10:00:00", "action.allowed", "agent:api-bot", &[("action", ACT_API), ("grant", "grt_1")], json!({"decision": "allow", "transport": "api", "grant": "grt_1",
        "action": {"kind": "http", "operation": "write", "resource": "https://crm.internal/contacts", "context": {"environment": "staging"}}}));
    l.push(
        "10:00:01",
        "grant.consumed",
        "agent:api-bot",
        &[("grant", "grt_1")],
        json!({"grant": "grt_1", "requester": "agent:api-bot"}),
    );
    // Denied by policy.
    l.push("10:30:00", "action.denied", "agent:api-bot", &[("action", ACT_DENY)], json!({"decision": "deny", "transport": "api", "reasons": [{"policy": "no-ddl-in-prod", "effect": "forbid"}],
        "action": {"kind": "sql", "operation": "ddl", "resource": "postgres://analytics/public.orders"}}));
    // An export held for two owners; a self-review refused; approved; used by MCP; result.
    l.push("11:00:00", "request.created", "agent:mcp-bot", &[("request", REQ)], json!({"decision": "review", "transport": "mcp", "environment": "prod", "policy_set": "aa11",
        "action": {"kind": "mcp", "operation": "export", "resource": "mcp://warehouse/export_table", "on_behalf_of": "user:carol",
                   "context": {"model": "m2"}, "lineage": {"reads": ["postgres://warehouse/customers"], "writes": ["s3://reports/q3.csv"]}}}));
    l.push(
        "11:01:00",
        "review.refused",
        "user:alice",
        &[("request", REQ)],
        json!({"code": "self_review", "message": "user:alice owns the requesting agent"}),
    );
    l.push(
        "11:02:00",
        "review.submitted",
        "user:bob",
        &[("request", REQ)],
        json!({"reviewer": "user:bob", "decision": "approve", "state": "pending"}),
    );
    l.push(
        "11:04:00",
        "review.submitted",
        "user:dave",
        &[("request", REQ)],
        json!({"reviewer": "user:dave", "decision": "approve", "state": "approved"}),
    );
    l.push(
        "11:04:00",
        "request.approved",
        "user:dave",
        &[("request", REQ)],
        json!({"decision": "approved", "approvers": ["user:bob", "user:dave"]}),
    );
    l.push(
        "11:05:00",
        "grant.consumed",
        "agent:mcp-bot",
        &[("request", REQ)],
        json!({"grant": "grt_2", "approvers": ["user:bob", "user:dave"]}),
    );
    l.push(
        "11:05:02",
        "action.result",
        "agent:mcp-bot",
        &[("request", REQ)],
        json!({"outcome": "succeeded", "state": "succeeded"}),
    );
    l.push("11:05:02", "action.result.detail", "agent:mcp-bot", &[("request", REQ)], json!({"execution": REQ, "ok": true, "summary": {"content": 1}, "reads": ["postgres://warehouse/customers"], "writes": ["s3://reports/q3.csv"]}));
    // A request that expired; a policy reload.
    l.push("12:00:00", "request.created", "agent:api-bot", &[("request", REQ_EXP)], json!({"decision": "review", "transport": "api",
        "action": {"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.t"}}));
    l.push(
        "12:00:02",
        "request.expired",
        "service:secondkey",
        &[("request", REQ_EXP)],
        json!({"decision": "expired", "state": "expired"}),
    );
    l.push(
        "13:00:00",
        "policy.reloaded",
        "service:secondkey",
        &[],
        json!({"policies": 4, "policy_set": "bb22"}),
    );
    l
}

fn tracked(l: &Log) -> Tracker {
    let mut t = Tracker::new();
    t.feed_bytes(l.bytes()).unwrap();
    t
}

#[test]
fn history_joins_entries_by_their_ids() {
    let t = tracked(&sample());
    let r = t.records();
    assert_eq!(r.len(), 5);
    let pg = &r[0];
    assert_eq!(
        (pg.state.as_str(), pg.rows(), pg.execute_mode),
        ("succeeded", Some(42), true)
    );
    assert_eq!(pg.environment.as_deref(), Some("prod"));
    let api = &r[1];
    assert_eq!(api.state, "executed");
    assert_eq!(api.executed.as_ref().unwrap().index, 4);
    assert_eq!(
        api.environment.as_deref(),
        Some("staging"),
        "declared when the gateway logged none"
    );
    assert_eq!(r[2].state, "denied");
    let mcp = &r[3];
    assert_eq!(
        mcp.approvals
            .iter()
            .map(|a| a.by.as_str())
            .collect::<Vec<_>>(),
        ["user:bob", "user:dave"]
    );
    assert_eq!(mcp.approval_latency_ms(), Some(240_000));
    assert_eq!(mcp.state, "succeeded");
    assert_eq!(
        mcp.datasets(),
        vec![
            ("postgres://warehouse/customers".into(), Use::Export),
            ("s3://reports/q3.csv".into(), Use::Write),
            ("mcp://warehouse/export_table".into(), Use::Export),
        ]
    );
    assert_eq!(r[4].state, "expired");
    let kinds: Vec<&str> = t.exceptions().iter().map(|x| x.kind.as_str()).collect();
    assert_eq!(kinds, ["denied_by_policy", "self_review", "expired"]);
    assert_eq!(t.policy_loads().len(), 2);
}

#[test]
fn a_gap_in_the_log_is_an_error_not_a_skip() {
    let mut t = Tracker::new();
    let err = t.feed_bytes([b"{not an entry}".to_vec()]).unwrap_err();
    assert!(err.to_string().contains("log entry 0"), "{err}");
}

#[test]
fn graph_marks_approvals_and_filters() {
    let t = tracked(&sample());
    let g = graph::build(t.records(), &Filter::all());
    assert_eq!(g.actions, 3, "executed actions only");
    let approved: Vec<_> = g.edges.iter().filter(|e| e.approved.is_some()).collect();
    assert!(approved.iter().all(|e| e.request.as_deref() == Some(REQ)));
    assert_eq!(
        approved[0].approved.as_ref().unwrap().by,
        ["user:bob", "user:dave"]
    );
    assert!(g
        .edges
        .iter()
        .any(|e| e.kind == "export" && e.to == "dataset:postgres://warehouse/customers"));
    assert!(g.edges.iter().any(|e| e.kind == "write"
        && e.approved.is_none()
        && e.to == "dataset:https://crm.internal/contacts"));
    let kinds: Vec<&str> = g
        .nodes
        .iter()
        .filter(|n| n.kind == "dataset")
        .map(|n| n.category.as_str())
        .collect();
    assert!(
        kinds.contains(&"table")
            && kinds.contains(&"bucket")
            && kinds.contains(&"tool")
            && kinds.contains(&"endpoint"),
        "{kinds:?}"
    );
    // Filters: agent, environment, dataset prefix, period.
    let mut f = Filter::all();
    f.agent = Some("agent:pg-bot".into());
    assert_eq!(graph::build(t.records(), &f).actions, 1);
    let mut f = Filter::all();
    f.environment = Some("prod".into());
    assert_eq!(graph::build(t.records(), &f).actions, 2);
    let mut f = Filter::all();
    f.dataset = Some("s3://reports/".into());
    let g2 = graph::build(t.records(), &f);
    assert_eq!(g2.actions, 1);
    assert_eq!(g2.nodes.iter().filter(|n| n.kind == "dataset").count(), 1);
    let mut f = Filter::all();
    f.period = Period::parse("2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z").unwrap();
    assert_eq!(graph::build(t.records(), &f).actions, 1);
    let svg = crate::svg::render(&g, &crate::svg::NoLinks);
    assert!(
        svg.starts_with("<svg") && svg.contains("approved by bob, dave 11:04"),
        "{svg}"
    );
    assert!(!svg.contains("<script") && !svg.contains("style="));
}

#[test]
fn usage_per_agent_model_and_user() {
    let t = tracked(&sample());
    let rows = usage::report(t.records(), &Filter::all());
    let mcp: Vec<_> = rows
        .iter()
        .filter(|r| r.principal == "agent:mcp-bot")
        .collect();
    assert_eq!(mcp.len(), 3);
    let c = mcp
        .iter()
        .find(|r| r.dataset == "postgres://warehouse/customers")
        .unwrap();
    assert_eq!(
        (
            c.exported,
            c.held,
            c.model.as_str(),
            c.on_behalf_of.as_str()
        ),
        (1, 1, "m2", "user:carol")
    );
    assert_eq!(c.approvers, ["user:bob", "user:dave"]);
    let pg = rows.iter().find(|r| r.principal == "agent:pg-bot").unwrap();
    assert_eq!((pg.read, pg.rows, pg.held), (1, 42, 0));
    let denied = rows
        .iter()
        .find(|r| r.principal == "agent:api-bot" && r.dataset.starts_with("postgres"))
        .unwrap();
    assert_eq!((denied.denied, denied.read), (1, 0));
}

#[test]
fn openlineage_events_fire_once_per_executed_action() {
    let l = sample();
    let mut t = Tracker::new();
    let mut events = vec![];
    for e in &l.0 {
        let (step, i) = t.feed(e);
        if let Some(i) = i {
            if openlineage::emits(step, t.record(i)) {
                events.push(openlineage::run_event(
                    t.record(i),
                    "secondkey",
                    "test/log",
                    e.index,
                ));
            }
        }
        assert!(step != Step::Executed || i.is_some());
    }
    assert_eq!(events.len(), 3, "{events:#?}");
    let ev = events
        .iter()
        .find(|e| e["job"]["name"] == "agent:mcp-bot/mcp.export")
        .unwrap();
    assert_eq!(ev["eventType"], "COMPLETE");
    assert_eq!(ev["run"]["facets"]["secondkey"]["request"], REQ);
    assert_eq!(
        ev["run"]["facets"]["secondkey"]["log_index"], 13,
        "sent with the result's detail, the second of its two entries"
    );
    assert_eq!(
        ev["run"]["facets"]["secondkey"]["approvers"][1]["principal"],
        "user:dave"
    );
    assert_eq!(
        ev["inputs"][0],
        json!({"namespace": "postgres://warehouse", "name": "customers"})
    );
    assert_eq!(
        ev["outputs"][0],
        json!({"namespace": "s3://reports", "name": "q3.csv"})
    );
    let api = events
        .iter()
        .find(|e| e["job"]["name"] == "agent:api-bot/http.write")
        .unwrap();
    assert_eq!(
        api["run"]["facets"]["secondkey"]["log_index"], 4,
        "sent at the grant's use"
    );
}

#[test]
fn a_requests_lineage_event_carries_what_its_run_reported() {
    // A REST caller ran an approved request in execute mode and reported
    // other datasets than the action declared: the event is sent once the
    // result is whole (its detail names them), with those datasets.
    let mut l = Log(vec![]);
    l.push("09:00:00", "request.created", "agent:api-bot", &[("request", REQ)], json!({"decision": "review", "transport": "api",
        "action": {"kind": "sql", "operation": "export", "resource": "postgres://analytics/public.orders",
                   "lineage": {"reads": ["postgres://analytics/public.orders"]}}}));
    l.push(
        "09:01:00",
        "request.approved",
        "user:bob",
        &[("request", REQ)],
        json!({"decision": "approved", "approvers": ["user:bob"]}),
    );
    l.push(
        "09:02:00",
        "grant.consumed",
        "agent:api-bot",
        &[("request", REQ)],
        json!({"grant": "grt_9", "approvers": ["user:bob"], "executed": true}),
    );
    l.push(
        "09:03:00",
        "action.result",
        "agent:api-bot",
        &[("request", REQ)],
        json!({"outcome": "succeeded", "state": "succeeded"}),
    );
    l.push("09:03:00", "action.result.detail", "agent:api-bot", &[("request", REQ)], json!({"execution": REQ, "ok": true, "summary": {"rows": 7},
        "reads": ["postgres://analytics/public.orders", "postgres://analytics/public.items"], "writes": ["s3://exports/orders.csv"]}));
    let mut t = Tracker::new();
    let mut events = vec![];
    for e in &l.0 {
        let (step, i) = t.feed(e);
        if let Some(i) = i.filter(|&i| openlineage::emits(step, t.record(i))) {
            events.push(openlineage::run_event(
                t.record(i),
                "ns",
                "test/log",
                e.index,
            ));
        }
    }
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = &events[0];
    assert_eq!(ev["run"]["facets"]["secondkey"]["log_index"], 4);
    assert_eq!(ev["eventType"], "COMPLETE");
    assert_eq!(
        ev["inputs"],
        json!([{"namespace": "postgres://analytics", "name": "public.orders"},
               {"namespace": "postgres://analytics", "name": "public.items"}])
    );
    assert_eq!(
        ev["outputs"],
        json!([{"namespace": "s3://exports", "name": "orders.csv"}])
    );
}

fn figures_of(l: &Log, fw: Framework) -> evidence::Figures {
    figures_with(l, fw, "2026-12-02", "")
}

/// Figures for the period from 09:00 to `to`, over a checkpoint carrying
/// `extra` signature lines after the operator's.
fn figures_with(l: &Log, fw: Framework, to: &str, extra: &str) -> evidence::Figures {
    let signer = secondkey_log::note::Signer::generate("test/log").unwrap();
    let mut tree = secondkey_log::merkle::Tree::new();
    for b in l.bytes() {
        tree.push(secondkey_log::merkle::leaf_hash(&b));
    }
    let note = secondkey_log::checkpoint::Checkpoint::new("test/log", tree.size(), tree.root())
        .sign(&signer)
        .unwrap();
    evidence::figures(
        l.bytes(),
        &Inputs {
            framework: fw,
            period: Period::parse("2026-12-01T09:00:00Z", to).unwrap(),
            checkpoint: &format!("{note}{extra}"),
            verifier_key: &signer.verifier().to_string(),
        },
    )
    .unwrap()
}

/// A signature line anyone can append is reported as such, never as a
/// witness that cosigned; the report names no cosigner it did not check.
#[test]
fn signature_lines_are_reported_unverified() {
    // A cosignature of something else: its layout is right, it proves nothing.
    let forged = secondkey_log::witness::Cosigner::from_seed("witness.example/w1", [7; 32])
        .cosign("another/log\n1\nAAAA\n", 1_796_000_000);
    let f = figures_with(&sample(), Framework::FedrampModerate, "2026-12-02", &forged);
    let lines = &f.log.unverified_signatures;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].name, "witness.example/w1");
    assert_eq!(
        lines[0].claimed_time.as_deref(),
        Some("2026-11-30T00:53:20.000Z")
    );
    let html = evidence::render_html(&f);
    assert!(
        !html.contains("cosignatures of"),
        "names an unchecked cosigner"
    );
    assert!(
        html.contains("1 other signature line(s), unverified here: witness.example/w1"),
        "{html}"
    );
    let au9 = f.controls.iter().find(|c| c.id == "AU-9").unwrap();
    assert!(au9.proves.contains("unverified"), "{}", au9.proves);
    let plain = figures_with(&sample(), Framework::Soc2, "2026-12-02", "");
    assert!(plain.log.unverified_signatures.is_empty());
    assert!(evidence::render_html(&plain).contains("only the operator&#39;s signature"));
}

/// A log that ends before the period does is marked incomplete, with the
/// time of its last entry; one that reaches the period's end is not.
#[test]
fn a_log_ending_before_the_period_is_marked_incomplete() {
    let short = figures_with(&sample(), Framework::Soc2, "2026-12-02", "");
    assert_eq!(
        short.log.last_entry_at.as_deref(),
        Some("2026-12-01T13:00:00.000Z")
    );
    assert!(short.log.ends_before_period_end);
    let html = evidence::render_html(&short);
    assert!(
        html.contains(
            "Incomplete: the log ends at 2026-12-01T13:00:00.000Z, before the period&#39;s end"
        ),
        "{html}"
    );
    // The period ends at the last entry (exclusive): the log reaches it.
    let full = figures_with(&sample(), Framework::Soc2, "2026-12-01T13:00:00Z", "");
    assert!(!full.log.ends_before_period_end);
    assert!(!evidence::render_html(&full).contains("Incomplete"));
}

#[test]
fn evidence_figures_and_report() {
    let l = sample();
    let f = figures_of(&l, Framework::Soc2);
    assert_eq!(f.totals["decisions"], 5);
    assert_eq!(f.totals["held_for_review"], 2);
    assert_eq!(f.totals["self_approvals_refused"], 1);
    assert_eq!(f.privileged.len(), 2);
    assert_eq!(f.latency.approved, 1);
    assert_eq!(f.latency.median_ms, 240_000);
    // The set in force at the start (loaded before the period) and the reload.
    let sets: Vec<&str> = f.policies.iter().map(|p| p.policy_set.as_str()).collect();
    assert_eq!(sets, ["aa11", "bb22"]);
    let ids: Vec<&str> = f.controls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["CC6.1", "CC6.2", "CC6.3", "CC7.2", "CC8.1"]);
    let fed = figures_of(&l, Framework::FedrampModerate);
    let ids: Vec<&str> = fed.controls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "AC-2", "AC-3", "AC-5", "AC-6", "AU-2", "AU-3", "AU-6", "AU-9", "AU-10", "AU-12",
            "CM-3"
        ]
    );
    // Rendering is a function of the figures: the same twice, and it names
    // the figures' digest.
    let html = evidence::render_html(&f);
    assert_eq!(html, evidence::render_html(&f));
    assert!(html.contains(&evidence::figures_digest(&f)));
    assert!(html.contains(REQ) && html.contains("self_review"));
    // A changed figure is found by the diff.
    let mut v = serde_json::to_value(&f).unwrap();
    v["totals"]["approved"] = json!(7);
    assert_eq!(evidence::diff(&f, &v), ["/totals/approved: 1 → 7"]);
}

/// Lean statement entries are read as the full entries they stand for;
/// one whose shape is missing is an exception, not a silent gap.
#[test]
fn lean_statements_are_read_in_full_and_missing_shapes_are_exceptions() {
    use secondkey_log::lean::{action_digest, Shape, SHAPE_EVENT};
    let shape = Shape {
        text: vec!["SELECT * FROM orders WHERE id = ".into(), String::new()],
        action: json!({"kind": "sql", "operation": "read", "resource": "postgres://a/public.orders",
                       "params": {}, "lineage": {"reads": ["postgres://a/public.orders"], "writes": []}}),
        facts: json!({"connection": "a", "tables": ["public.orders"]}),
    };
    let digest = shape.digest().unwrap();
    let action = shape
        .action(shape.statement(&["7".into()]).unwrap(), None, None)
        .unwrap();
    let mut l = Log(vec![]);
    l.push(
        "09:00:00",
        SHAPE_EVENT,
        "agent:report-bot",
        &[("session", "pgs_1")],
        shape.entry_payload("pgs_1", &digest),
    );
    let lean = |session: &str| {
        json!({"decision": "allow", "session": session, "shape": digest, "literals": ["7"],
               "executed": true, "transport": "pg", "environment": "prod"})
    };
    l.push(
        "09:00:01",
        "action.allowed",
        "agent:report-bot",
        &[("action", ACT_PG)],
        lean("pgs_1"),
    );
    // A statement of another session whose shape entry is not in the log.
    l.push(
        "09:00:02",
        "action.allowed",
        "agent:report-bot",
        &[("action", ACT_API)],
        lean("pgs_2"),
    );
    for e in &mut l.0[1..] {
        e.digest = Some(action_digest(&action).unwrap());
    }
    let t = tracked(&l);
    let r = t.records();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[0].kind.as_str(),
            r[0].operation.as_str(),
            r[0].resource.as_str()
        ),
        ("sql", "read", "postgres://a/public.orders")
    );
    assert_eq!(r[0].declared_reads, ["postgres://a/public.orders"]);
    assert_eq!(r[1].resource, "", "nothing to read it from");
    let unresolved: Vec<_> = t
        .exceptions()
        .iter()
        .filter(|x| x.kind == "statement_unresolved")
        .collect();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(unresolved[0].subject.as_deref(), Some(ACT_API));
    assert!(
        unresolved[0].detail.contains("pgs_2"),
        "{}",
        unresolved[0].detail
    );
}

/// A manifest's format and maker: only this release's format, and a maker
/// of the form `secondkey` SemVer (another release's is fine).
#[test]
fn manifest_format_and_maker() {
    let me = evidence::made_with();
    let with = |format: Value, made_with: Value| {
        let mut m = json!({"framework": "soc2"});
        for (k, v) in [("format", format), ("made_with", made_with)] {
            if !v.is_null() {
                m[k] = v;
            }
        }
        evidence::check_manifest(&m).map_err(|e| e.to_string())
    };
    let ok = json!(evidence::FORMAT);
    assert_eq!(with(ok.clone(), json!(me)), Ok(me.clone()));
    assert_eq!(
        with(ok.clone(), json!("secondkey 10.0.3-rc.1+b7")),
        Ok("secondkey 10.0.3-rc.1+b7".to_string())
    );
    for (format, made_with, says) in [
        (
            json!(evidence::FORMAT + 1),
            json!(me),
            "says the pack is of format 3, but",
        ),
        (
            json!(1),
            json!("secondkey 0.0.9"),
            "(made_with: \"secondkey 0.0.9\")",
        ),
        (Value::Null, json!(me), "manifest.json has no format"),
        (
            json!("2"),
            json!(me),
            "has format \"2\", which is not a pack format number",
        ),
        (json!(-2), json!(me), "has format -2, which is not"),
        (json!(2.5), json!(me), "has format 2.5, which is not"),
        (ok.clone(), Value::Null, "manifest.json has no made_with"),
        (
            ok.clone(),
            json!(["secondkey 1.0.0"]),
            "which is not a string",
        ),
        (ok.clone(), json!(""), "has made_with \"\", which is not"),
        (
            ok.clone(),
            json!("secondkey"),
            "which is not `secondkey` and a release version",
        ),
        (ok.clone(), json!("secondkey v1.2.0"), "which is not"),
        (ok.clone(), json!("secondkey 1.2"), "which is not"),
        (ok.clone(), json!("Secondkey 1.2.0"), "which is not"),
        (ok.clone(), json!("secondkey  1.2.0"), "which is not"),
        (ok.clone(), json!("secondkey 1.2.0\n"), "which is not"),
    ] {
        let got = with(format.clone(), made_with.clone());
        assert!(
            got.as_ref().is_err_and(|e| e.contains(says)),
            "{format} {made_with}: {got:?}"
        );
    }
}
