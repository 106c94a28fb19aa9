//! What a reviewer sees, end to end (issue 14): the real `secondkey`
//! binary, the real OpenID Connect provider of `common/oidc.rs` and two
//! headless Chromium browsers at 1400×900.
//!
//! - the request page's first screen holds the headline, why review is
//!   required (`@reason`), quorum progress, time left and the decision
//!   form, with nothing scrolled;
//! - the changes since the last similar approved action are told in words
//!   (a destination moved, estimated rows ×10);
//! - a page open in one browser updates live when a second reviewer
//!   approves in another, and the approver sees it under "Waiting on
//!   others" and in history;
//! - a batch has nothing pre-ticked, shows every selected statement before
//!   the deciding click, and needs a comment for production deletes;
//! - the timeline shows the owner's refused self-approval to another
//!   reviewer, and its entry opens as a readable proof that verifies.
//!
//! Screenshots go to tests/artifacts/ (gitignored).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/oidc.rs"]
mod oidc;

use browser::*;
use common::*;
use oidc::*;
use serde_json::{json, Value};

const UX_POLICIES: &str = r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("agents-change")
permit(principal in Group::"agents", action in [Action::"sql.delete", Action::"sql.write"], resource);

@id("exports-need-two-owners")
@review("data-owners")
@quorum("2")
@reason("Exports copy customer data out of the warehouse; two data owners must agree.")
forbid(principal, action == Action::"sql.export", resource);

@id("prod-changes-need-an-owner")
@review("data-owners")
@reason("Changes to production tables need a data owner.")
forbid(principal, action in [Action::"sql.delete", Action::"sql.write"], resource);
"#;

/// A 60-line export, to `target`, with `rows` estimated; `extra` columns
/// are added to its select list.
fn export(target: &str, rows: u64, extra: &str, session: &str) -> Value {
    let mut sql = format!("SELECT c.id, c.name{extra}\nFROM customers c\n");
    for i in 0..57 {
        sql.push_str(&format!("  AND c.segment_{i} IS NOT NULL\n"));
    }
    sql.push_str("ORDER BY c.id");
    json!({
        "kind": "sql", "operation": "export", "resource": "postgres://analytics/public.customers",
        "target": target,
        "params": {"statement": sql},
        "justification": "weekly churn report",
        "context": {"environment": "prod", "session": session, "model": "gpt-test", "estimated_rows": rows},
        "lineage": {"reads": ["postgres://analytics/public.customers"], "writes": [target]}
    })
}

fn change(op: &str, sql: &str, session: &str) -> Value {
    json!({
        "kind": "sql", "operation": op, "resource": "postgres://analytics/public.events",
        "params": {"statement": sql},
        "justification": "nightly cleanup",
        "context": {"session": session, "estimated_rows": 1200},
    })
}

fn sign_in_browser(b: &Driver, url: &str, issuer: &str, user: &str) {
    b.goto(url);
    b.wait_for("the provider's sign-in form", |d| {
        d.url().starts_with(issuer)
    });
    b.type_into("input[name=sub]", user);
    b.click("form button[type=submit]");
    b.wait_for("the page after sign-in", |d| d.url() == url);
}

/// From the inbox: tick each of `ids`, then "Review selected…".
fn select_all_and_review(b: &Driver, gw: &str, ids: &[String]) {
    b.goto(&format!("{gw}/inbox"));
    b.wait_for("the inbox", |d| d.source().contains("session night-1"));
    for i in ids {
        b.click(&format!("input[value='{i}']"));
    }
    b.click("#review-selected");
    b.wait_for("the confirmation step", |d| {
        d.source()
            .contains(&format!("Review {} requests together", ids.len()))
    });
}

#[test]
fn reviewer_first_screen_live_update_and_batch_safety() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = Gateway::start_extra(dir.path(), UX_POLICIES, &oidc_config(dir.path(), &issuer));

    // Last week's export, approved by two owners.
    let first = g.submit(
        "agent:report-bot",
        &export("s3://internal-exports/churn", 41_200, "", "w1"),
    );
    let first_id = first["request"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        first["reasons"][0]["reason"],
        "Exports copy customer data out of the warehouse; two data owners must agree.",
        "{first}"
    );
    assert_eq!(
        first["request"]["required"][0]["reason"],
        first["reasons"][0]["reason"]
    );
    for who in ["user:bob", "user:carol"] {
        let (s, v) = g.review(who, &first_id, "approve");
        assert_eq!(s, 200, "{v}");
    }
    assert_eq!(g.state_of(&first_id).0, "approved");

    // Today's: to a partner's bucket, ten times the rows, two more columns.
    let held = g.submit(
        "agent:report-bot",
        &export(
            "s3://partner-share/drop",
            412_000,
            ", c.email, c.phone",
            "w2",
        ),
    );
    let id = held["request"]["id"].as_str().unwrap().to_string();
    let url = held["request"]["url"].as_str().unwrap().to_string();

    let (_cd1, bob) = start_chromium(&dir.path().join("bob"));
    bob.viewport(1400, 900);
    sign_in_browser(&bob, &url, &issuer, "bob");

    // The first screen, unscrolled, at 1400×900.
    for css in [
        "#headline",
        "#risk",
        "#changes",
        "#quorum",
        "#time-left",
        "#comment",
        "#approve",
        "#deny",
    ] {
        bob.assert_on_first_screen(css);
    }
    let text = |b: &Driver, css: &str| {
        b.exec(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    };
    let headline = text(&bob, "#headline");
    assert!(
        headline.contains("agent:report-bot wants to export")
            && headline.contains("postgres://analytics/public.customers → s3://partner-share/drop")
            && headline.contains("in prod")
            && headline.contains("412,000 rows"),
        "{headline}"
    );
    assert!(
        text(&bob, "#risk").contains("two data owners must agree"),
        "{}",
        text(&bob, "#risk")
    );
    let changes = text(&bob, "#changes");
    assert!(
        changes
            .contains("destination changed: s3://internal-exports/churn → s3://partner-share/drop")
            && changes.contains("estimated rows ×10: 41,200 → 412,000")
            && changes.contains("lineage writes added: s3://partner-share/drop")
            && changes.contains(&first_id),
        "{changes}"
    );
    assert!(
        text(&bob, "#quorum").contains("0 of 2 from data-owners — 2 more needed"),
        "{}",
        text(&bob, "#quorum")
    );
    assert!(text(&bob, "#time-left").contains("left"));
    // What the gateway established and what the agent declared are apart.
    assert!(text(&bob, "#established").contains("prod"));
    assert!(text(&bob, "#declared").contains("412,000"));
    // The unified diff collapses unchanged lines and numbers the rest.
    let diff = text(&bob, "#diff");
    assert!(
        diff.contains("unchanged lines") && diff.contains("c.email"),
        "{diff}"
    );
    assert_eq!(
        bob.exec("return document.body.getAttribute('data-live');", json!([])),
        "on"
    );
    bob.screenshot("ux-1-request-first-screen.png");

    // alice owns the agent: her approval is refused, and logged.
    let (s, v) = g.review("user:alice", &id, "approve");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("self_review")),
        "{v}"
    );

    // A second reviewer approves in another browser: bob's page follows.
    let (_cd2, frank) = start_chromium(&dir.path().join("frank"));
    frank.viewport(1400, 900);
    sign_in_browser(&frank, &url, &issuer, "frank");
    frank.type_into("#comment", "partner contract checked");
    frank.click("#approve");
    frank.wait_for("frank's approval", |d| {
        d.source().contains("Your approval was recorded")
    });
    bob.wait_for("the live update on bob's page", |d| {
        d.exec(
            "const q = document.getElementById('quorum'); return q ? q.innerText : '';",
            json!([]),
        )
        .as_str()
        .unwrap_or_default()
        .contains("1 of 2 from data-owners (user:frank) — 1 more needed")
    });
    assert!(text(&bob, "#reviews-section").contains("partner contract checked"));
    assert_eq!(bob.url(), url, "updated in place, not navigated");
    bob.screenshot("ux-2-live-update.png");
    // The timeline, swapped in live too: alice's refused self-approval is
    // visible to bob, another reviewer, next to frank's approval.
    let timeline = text(&bob, "#timeline");
    assert!(
        timeline.contains("Refused: a self-approval") && timeline.contains("user:alice"),
        "{timeline}"
    );
    assert!(
        timeline.contains("user:frank approved: “partner contract checked”"),
        "{timeline}"
    );
    bob.exec(
        "document.getElementById('timeline').scrollIntoView({block: 'center'});",
        json!([]),
    );
    bob.screenshot("ux-7-timeline.png");
    // frank waits on others, and has it in history.
    frank.goto(&format!("{}/inbox", g.url));
    frank.wait_for("frank's inbox", |d| {
        d.source().contains("Waiting on others")
    });
    assert!(text(&frank, "#waiting-on-others").contains(&id));
    frank.goto(&format!("{}/history", g.url));
    frank.wait_for("frank's history", |d| d.source().contains(&id));

    // bob completes the quorum from the page that updated itself.
    bob.type_into("#comment", "ok for this week");
    bob.click("#approve");
    bob.wait_for("bob's approval", |d| {
        d.source().contains("Your approval was recorded")
    });
    assert_eq!(g.state_of(&id), ("approved".into(), 2));
    // The refused attempt's entry, as a readable proof that verifies.
    let refused_entry = bob
        .exec(
            "const li = document.querySelector('#timeline li[data-event=\"review.refused\"] a.entry'); return li ? li.getAttribute('href') : null;",
            json!([]),
        )
        .as_str()
        .map(str::to_string)
        .expect("a link to the refused attempt's entry");
    bob.goto(&format!("{}{refused_entry}", g.url));
    bob.wait_for("the readable receipt", |d| {
        d.source().contains("id=\"receipt-verdict\"")
    });
    let verdict = text(&bob, "#receipt-verdict");
    assert!(verdict.starts_with("Verified: entry"), "{verdict}");
    assert_eq!(text(&bob, "#signature"), "valid");
    assert!(text(&bob, "#receipt").contains("review.refused"));
    bob.screenshot("ux-8-receipt.png");

    // A batch: three production changes of one session, one of them a
    // DELETE the agent labelled a write.
    let stmts = [
        ("delete", "DELETE FROM events WHERE day < '2026-01-01'"),
        (
            "write",
            "UPDATE events SET kind = 'archived' WHERE day < '2026-02-01'",
        ),
        ("write", "DELETE FROM events WHERE kind = 'debug'"),
    ];
    let ids: Vec<String> = stmts
        .iter()
        .map(|(op, sql)| {
            g.submit("agent:report-bot", &change(op, sql, "night-1"))["request"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    bob.goto(&format!("{}/inbox", g.url));
    bob.wait_for("the inbox", |d| d.source().contains("session night-1"));
    let boxes = bob.exec(
        "return [document.querySelectorAll('input[type=checkbox][name=id]').length, document.querySelectorAll('input[type=checkbox]:checked').length];",
        json!([]),
    );
    assert_eq!(boxes, json!([3, 0]), "three boxes, none pre-ticked");
    let inbox = bob.source();
    assert!(inbox.contains("0 of 1 from data-owners") && inbox.contains("left"));
    assert!(
        inbox.contains("The agent labels it “write”, but the statement shows delete."),
        "the mislabelled DELETE is called out"
    );
    bob.screenshot("ux-3-inbox.png");
    // Nothing ticked: nothing to review, nothing changed.
    bob.click("#review-selected");
    bob.wait_for("the refusal", |d| {
        d.source().contains("No request was selected")
    });
    for i in &ids {
        assert_eq!(g.state_of(i), ("pending".into(), 0));
    }
    select_all_and_review(&bob, &g.url, &ids);
    // Every statement is there, in full, before the deciding click; nothing
    // is decided yet.
    let confirm = text(&bob, "#batch-confirm");
    for (_, sql) in stmts {
        assert!(confirm.contains(sql), "{sql} not shown:\n{confirm}");
    }
    for i in &ids {
        assert_eq!(g.state_of(i), ("pending".into(), 0));
    }
    assert!(confirm.contains("required"), "{confirm}");
    bob.screenshot("ux-4-batch-confirm.png");
    // The browser insists on the comment; so does the server when the
    // browser's check is taken away.
    bob.exec(
        "document.getElementById('comment').removeAttribute('required');",
        json!([]),
    );
    bob.click("#confirm-approve");
    bob.wait_for("the server's refusal", |d| {
        d.source().contains("needs a comment")
    });
    for i in &ids {
        assert_eq!(g.state_of(i), ("pending".into(), 0));
    }
    bob.screenshot("ux-5-comment-required.png");
    select_all_and_review(&bob, &g.url, &ids);
    bob.type_into("#comment", "retention runbook step 4");
    bob.click("#confirm-approve");
    bob.wait_for("the batch result", |d| {
        d.source().contains("Batch decision")
    });
    bob.screenshot("ux-6-batch-result.png");
    for i in &ids {
        assert_eq!(g.state_of(i), ("approved".into(), 1), "{i}");
    }
}
