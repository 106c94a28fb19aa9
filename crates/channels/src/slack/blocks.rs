//! Block Kit messages for a request.
//!
//! Slack caps a section's text at 3000 characters. The message shows every
//! statement and every other parameter of the action; one longer than the
//! configured inline limit is shown as a clearly marked excerpt, and the
//! whole action goes up as a file in the message's thread; the message says
//! so. Nothing is ever cut silently.

use serde_json::{json, Value};

use crate::card::{prefix, Summary};

/// Block Kit `mrkdwn` needs `&`, `<` and `>` escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn field(label: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": format!("*{label}*\n{}", escape(value))})
}

/// A zero-width space: invisible, and it breaks a run of backticks.
const ZWSP: char = '\u{200B}';

/// Agent text for inside a ```` ``` ```` block, shown as typed: [`escape`]d,
/// and every backtick set between zero-width spaces, so that no run of
/// them in the text can close the block early and turn what follows into
/// markup (Slack has no escape for a backtick).
pub fn escape_code(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => {
                out.push(ZWSP);
                out.push('`');
                out.push(ZWSP);
            }
            c => out.push(c),
        }
    }
    out
}

/// What a character of agent text becomes in [`escape_code`], in bytes.
fn code_cost(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        '`' => 1 + 2 * ZWSP.len_utf8(),
        c => c.len_utf8(),
    }
}

/// What the message shows of the action: each statement and the other
/// parameters, each at most `inline_limit` bytes once escaped.
fn excerpts(s: &Summary, inline_limit: usize) -> Vec<crate::card::Excerpt<'_>> {
    s.excerpts(inline_limit, usize::MAX, code_cost)
}

/// Whether anything of the action is cut, so the whole action goes up as a
/// file.
pub fn needs_file(s: &Summary, inline_limit: usize) -> bool {
    excerpts(s, inline_limit).iter().any(|e| e.cut())
}

/// The message blocks. `file_note` says where the full statement is when it
/// does not fit (set once the upload is known).
pub fn message(s: &Summary, inline_limit: usize) -> Vec<Value> {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": prefix(&format!("Approval request: {}", s.title), 150), "emoji": true}
    })];
    // First what a reviewer must read: the headline, why review is
    // required, what changed since the last similar approval.
    let mut lead = format!("*{}*", escape(&s.headline));
    if !s.risk.is_empty() {
        lead.push_str(&format!(
            "\n:warning: *Review required:* {}",
            escape(&s.risk.join("; "))
        ));
    }
    if !s.changes.is_empty() {
        lead.push_str(&format!("\n*Changed* {}", escape(&s.changes.join("\n• "))));
    }
    if lead.len() > 2900 {
        lead = format!(
            "{}… _(cut: the request page has every change)_",
            prefix(&lead, 2800)
        );
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": lead}}));
    let mut fields = vec![field("Who asked", &s.who())];
    if let Some(j) = &s.justification {
        fields.push(field("Why", j));
    }
    if !s.environment.is_empty() || !s.source.is_empty() {
        let mut w = s.environment.join("\n");
        if !s.source.is_empty() {
            if !w.is_empty() {
                w.push('\n');
            }
            w.push_str(&s.source.join("\n"));
        }
        fields.push(field("Where", &w));
    }
    if !s.impact.is_empty() {
        fields.push(field("Impact", &s.impact.join("\n")));
    }
    // A section holds at most 10 fields of 2000 characters each.
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|f| {
            let t = f["text"].as_str().unwrap_or_default();
            if t.len() > 1900 {
                let cut = format!(
                    "{}… _(cut: {} bytes in all; the request page has it whole)_",
                    prefix(t, 1800),
                    t.len()
                );
                json!({"type": "mrkdwn", "text": cut})
            } else {
                json!({"type": "mrkdwn", "text": t})
            }
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    // What exactly: every statement and every other parameter. A part
    // that does not fit says so; the whole action is then in the thread.
    for e in excerpts(s, inline_limit) {
        let what = if e.cut() {
            format!(
                "*{}* — {} bytes long; the first {} are shown and *the full action is attached in this message's thread* (`{}.json`):\n```{}```",
                e.label,
                e.len,
                e.shown.len(),
                s.id,
                escape_code(e.shown)
            )
        } else {
            format!("*{}*\n```{}```", e.label, escape_code(e.shown))
        };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": what}}));
    }
    let mut req = format!("*Approvals*\n{}", escape(&s.required.join("\n")));
    if !s.escalated_to.is_empty() {
        req.push_str(&format!(
            "\n_Escalated: members of {} may now review._",
            escape(&s.escalated_to.join(", "))
        ));
    }
    if !s.approvals.is_empty() {
        req.push_str(&format!("\n*Reviews*\n{}", escape(&s.approvals.join("\n"))));
    }
    if req.len() > 2900 {
        req = format!(
            "{}… _(cut: the request page has every review)_",
            prefix(&req, 2800)
        );
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": req}}));
    match &s.outcome {
        None => {
            blocks.push(json!({
                "type": "actions",
                "block_id": "secondkey_review",
                "elements": [
                    {"type": "button", "action_id": "approve", "style": "primary",
                     "text": {"type": "plain_text", "text": "Approve"}, "value": s.id},
                    {"type": "button", "action_id": "deny", "style": "danger",
                     "text": {"type": "plain_text", "text": "Deny"}, "value": s.id,
                     "confirm": {"title": {"type": "plain_text", "text": "Deny this request?"},
                                 "text": {"type": "plain_text", "text": "The agent is told no; it must submit again."},
                                 "confirm": {"type": "plain_text", "text": "Deny"},
                                 "deny": {"type": "plain_text", "text": "Cancel"}}}
                ]
            }));
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "Request `{}` · expires {} · <{}|open in secondkey>", s.id, s.expires_at, s.url)}]}));
        }
        Some(o) => {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", escape(o))}}));
            blocks.push(
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "Request `{}` · <{}|open in secondkey>", s.id, s.url)}]}),
            );
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use secondkey_core::request::RequestState;

    fn summary(what: &str) -> Summary {
        Summary {
            id: "req_1".into(),
            url: "https://sk.example/requests/req_1".into(),
            title: "sql.export on postgres://analytics/public.customers".into(),
            headline: "agent:report-bot wants to export (sql) postgres://analytics/public.customers → s3://partner/drop in prod, about 412,000 rows (estimate).".into(),
            risk: vec!["Exports copy customer data out; two data owners must agree.".into()],
            changes: vec![
                "since the approved req_0:".into(),
                "destination changed: s3://internal/x → s3://partner/drop".into(),
                "estimated rows ×10: 41,200 → 412,000".into(),
            ],
            requester: "agent:report-bot".into(),
            owner: Some("user:alice".into()),
            on_behalf_of: Some("user:carol".into()),
            model: Some("gpt-x".into()),
            what: vec![crate::card::What {
                label: "Statement".into(),
                text: what.into(),
            }],
            action_json: "{}".into(),
            justification: Some("quarterly <report>".into()),
            environment: vec!["prod (configured)".into()],
            source: vec![],
            impact: vec!["rows: 1200".into()],
            required: vec!["1 of 2 from data-owners (user:bob) — 1 more needed".into()],
            approvals: vec![],
            state: RequestState::Pending,
            outcome: None,
            expires_at: "2026-01-01T00:00:00.000Z".into(),
            escalated_to: vec![],
        }
    }

    #[test]
    fn short_statements_are_inline_with_buttons() {
        let b = message(&summary("COPY customers TO STDOUT"), 2000);
        let all = serde_json::to_string(&b).unwrap();
        assert!(all.contains("COPY customers TO STDOUT"));
        assert!(all.contains("quarterly &lt;report&gt;"));
        assert!(all.contains(
            "agent:report-bot, owned by user:alice, on behalf of user:carol, model gpt-x"
        ));
        assert!(
            all.contains("\"action_id\":\"approve\"") && all.contains("\"action_id\":\"deny\"")
        );
        assert!(!all.contains("attached"));
        // The headline, the reason, the changes and the progress lead.
        let lead = b[1]["text"]["text"].as_str().unwrap();
        assert!(
            lead.starts_with("*agent:report-bot wants to export"),
            "{lead}"
        );
        assert!(lead.contains("*Review required:* Exports copy customer data out"));
        assert!(lead.contains("destination changed: s3://internal/x → s3://partner/drop"));
        assert!(lead.contains("estimated rows ×10"));
        assert!(all.contains("1 of 2 from data-owners (user:bob) — 1 more needed"));
    }

    #[test]
    fn long_statements_say_they_are_attached_and_never_cut_silently() {
        let long = "x".repeat(10_000) + "é";
        assert!(needs_file(&summary(&long), 2000));
        let b = message(&summary(&long), 2000);
        let all = serde_json::to_string(&b).unwrap();
        assert!(all.contains("10002 bytes long"), "{all}");
        assert!(all.contains("the first 2000 are shown"));
        assert!(all.contains("full action is attached"));
        for block in &b {
            if let Some(t) = block.pointer("/text/text").and_then(Value::as_str) {
                assert!(t.chars().count() <= 3000);
            }
        }
    }

    #[test]
    fn every_parameter_is_shown_and_a_long_one_is_attached() {
        let mut s = summary("SELECT * FROM t WHERE id = $1");
        s.what.push(crate::card::What {
            label: "Parameters besides the statement".into(),
            text: r#"{"parameters":["1 OR 1=1"]}"#.into(),
        });
        let b = message(&s, 2000);
        let all = serde_json::to_string(&b).unwrap();
        assert!(
            all.contains("*Statement*\\n```SELECT * FROM t WHERE id = $1```"),
            "{all}"
        );
        assert!(
            all.contains(
                r#"*Parameters besides the statement*\n```{\"parameters\":[\"1 OR 1=1\"]}```"#
            ),
            "{all}"
        );
        assert!(!needs_file(&s, 2000));
        // Parameters too long for the message: an excerpt that says so,
        // and the whole action in the thread.
        s.what[1].text = format!(r#"{{"body":"{}"}}"#, "<".repeat(3000));
        assert!(needs_file(&s, 2000));
        let b = message(&s, 2000);
        let all = serde_json::to_string(&b).unwrap();
        assert!(
            all.contains("*Parameters besides the statement* — 3011 bytes long; the first 506 are shown and *the full action is attached"),
            "{all}"
        );
        for block in &b {
            if let Some(t) = block.pointer("/text/text").and_then(Value::as_str) {
                assert!(t.chars().count() <= 3000, "{t}");
            }
        }
    }

    #[test]
    fn backticks_cannot_close_the_code_block() {
        let sql = "SELECT 1 ```\n*Approved by security* <@U1> ```";
        let b = message(&summary(sql), 2000);
        let what = b
            .iter()
            .filter_map(|x| x.pointer("/text/text").and_then(Value::as_str))
            .find(|t| t.starts_with("*Statement*"))
            .unwrap();
        let inner = what
            .strip_prefix("*Statement*\n```")
            .and_then(|t| t.strip_suffix("```"))
            .unwrap();
        // The only ``` are the block's own; the text reads as typed once
        // the invisible spaces and entities are taken out.
        assert!(!inner.contains("``"), "{inner}");
        assert!(!inner.starts_with('`') && !inner.ends_with('`'), "{inner}");
        let shown = inner
            .replace(ZWSP, "")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        assert_eq!(shown, sql);
        // The budget counts what the escaping adds.
        let ticks = "`".repeat(3000);
        assert!(needs_file(&summary(&ticks), 2000));
        for block in &message(&summary(&ticks), 2000) {
            if let Some(t) = block.pointer("/text/text").and_then(Value::as_str) {
                assert!(t.len() <= 3000, "{}", t.len());
            }
        }
    }

    #[test]
    fn decided_requests_lose_their_buttons() {
        let mut s = summary("SELECT 1");
        s.state = RequestState::Approved;
        s.outcome = Some("✅ Approved by user:bob".into());
        let all = serde_json::to_string(&message(&s, 2000)).unwrap();
        assert!(all.contains("Approved by user:bob"));
        assert!(!all.contains("\"actions\""));
    }
}
