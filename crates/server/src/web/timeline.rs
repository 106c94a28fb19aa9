//! A request's timeline, read from the log: each entry whose `request`
//! subject is the request (the store indexes them), in log order, in
//! words — submitted, reviews, refused attempts, escalations, approval,
//! the grant's use, the execution's result, expiry — each linked to its
//! entry and to its inclusion receipt.
//!
//! Only what the log holds is shown: the timeline is evidence, not the
//! request record restated. Refused attempts (a self-approval, a decision
//! from someone not eligible, a second review by the same person) are
//! logged and so are visible to every reviewer of the request.

use std::fmt::Write;

use secondkey_core::time::Timestamp;
use secondkey_log::entry::Entry;
use serde_json::Value;

use super::highlight::esc;
use super::pages::when;

/// Most entries one request's timeline lists (a request has a handful;
/// the bound keeps a hostile flood of refused attempts from making the
/// page large).
pub const MAX_EVENTS: usize = 200;

/// How an event reads, for its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Something moved the request forward (submitted, approval, result ok).
    Normal,
    /// A decision in favour (an approving review, the approval).
    Good,
    /// A decision against, or a failure (denial, expiry, failed run).
    Bad,
    /// An attempt the gateway refused.
    Refused,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Normal => "ev",
            Tone::Good => "ev good",
            Tone::Bad => "ev bad",
            Tone::Refused => "ev refused",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The entry's index in the log.
    pub index: u64,
    /// The entry's `event`, e.g. `review.submitted`.
    pub event: String,
    /// When (milliseconds), if the entry's time parses.
    pub at: Option<i64>,
    /// The entry's time as logged.
    pub time: String,
    /// What happened, in words (plain text).
    pub text: String,
    pub tone: Tone,
}

fn s<'a>(p: &'a Value, k: &str) -> Option<&'a str> {
    p.get(k).and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn names(v: Option<&Value>) -> String {
    let list: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "—".into()
    } else {
        list.join(", ")
    }
}

/// What entry `e` says, in words, and its tone.
pub fn describe(e: &Entry) -> (String, Tone) {
    let p = &e.payload;
    let actor = e.actor.as_deref().unwrap_or("the gateway");
    match e.event.as_str() {
        "request.created" => (
            format!("Submitted by {actor}; review required"),
            Tone::Normal,
        ),
        "review.submitted" => {
            let who = s(p, "reviewer").unwrap_or(actor);
            let (verb, tone) = match s(p, "decision") {
                Some("approve") => ("approved", Tone::Good),
                Some("deny") => ("denied", Tone::Bad),
                _ => ("reviewed", Tone::Normal),
            };
            let comment = s(p, "comment")
                .map(|c| format!(": “{c}”"))
                .unwrap_or_default();
            (format!("{who} {verb}{comment}"), tone)
        }
        "review.refused" => {
            let why = match s(p, "code") {
                Some("self_review") => {
                    "a self-approval (the requester, its owner or whom it acts for)"
                }
                Some("not_eligible") => "a decision from someone not eligible to review it",
                Some("duplicate_reviewer") => "a second review by the same person",
                _ => "a review",
            };
            let msg = s(p, "message")
                .map(|m| format!(" — {m}"))
                .unwrap_or_default();
            (format!("Refused: {why} by {actor}{msg}"), Tone::Refused)
        }
        "grant.refused" => {
            let why = match s(p, "code") {
                Some("digest_mismatch") => {
                    "a use for a changed action (its digest differs from the approved one)"
                }
                Some("grant_used") => "a second use of the grant",
                Some("not_requester" | "wrong_requester") => {
                    "a use by someone other than the requester"
                }
                Some("expired") => "a use after the grant expired",
                _ => "a use of the grant",
            };
            let msg = s(p, "message")
                .map(|m| format!(" — {m}"))
                .unwrap_or_default();
            (format!("Refused: {why} by {actor}{msg}"), Tone::Refused)
        }
        "request.approved" => (
            format!(
                "Approved by {}; a single-use grant was issued",
                names(p.get("approvers"))
            ),
            Tone::Good,
        ),
        "request.denied" => (
            format!("Denied by {}", s(p, "by").unwrap_or(actor)),
            Tone::Bad,
        ),
        "request.escalated" => (
            format!("Escalated: {} may now review", names(p.get("groups"))),
            Tone::Normal,
        ),
        "request.escalation_due" => (
            "Waited long enough to be escalated".to_string(),
            Tone::Normal,
        ),
        "request.expired" => (
            "Expired undecided (or its grant unused)".to_string(),
            Tone::Bad,
        ),
        "request.withdrawn" => (format!("Withdrawn by {actor}"), Tone::Bad),
        "request.revoked" => (
            format!("Approval revoked by {}", s(p, "by").unwrap_or(actor)),
            Tone::Bad,
        ),
        "grant.consumed" => (
            format!("Grant used by {actor}: the approved action ran"),
            Tone::Normal,
        ),
        "action.result" => match s(p, "outcome") {
            Some("succeeded") => ("Execution succeeded".to_string(), Tone::Good),
            Some("failed") => ("Execution failed".to_string(), Tone::Bad),
            Some(o) => (format!("Execution result: {o}"), Tone::Bad),
            None => ("Execution result recorded".to_string(), Tone::Normal),
        },
        "action.result.detail" => {
            let ok = p.get("ok").and_then(Value::as_bool);
            let summary = s(p, "summary")
                .map(|x| format!(": {x}"))
                .unwrap_or_default();
            let tone = match ok {
                Some(true) => Tone::Good,
                Some(false) => Tone::Bad,
                None => Tone::Normal,
            };
            (format!("Result reported by {actor}{summary}"), tone)
        }
        other => (format!("{other} by {actor}"), Tone::Normal),
    }
}

/// The timeline of `(index, bytes)` entries (see
/// `Store::request_entries`). An entry that does not decode is still
/// listed, as such: its index is evidence of its own.
pub fn events(entries: &[(u64, Vec<u8>)]) -> Vec<Event> {
    entries
        .iter()
        .take(MAX_EVENTS)
        .map(|(index, bytes)| match Entry::from_bytes(bytes) {
            Ok(e) => {
                let (text, tone) = describe(&e);
                Event {
                    index: *index,
                    at: secondkey_audit::time::millis(&e.time),
                    time: e.time,
                    event: e.event,
                    text,
                    tone,
                }
            }
            Err(err) => Event {
                index: *index,
                event: "?".into(),
                at: None,
                time: String::new(),
                text: format!("entry does not decode: {err}"),
                tone: Tone::Refused,
            },
        })
        .collect()
}

/// What the gateway observed when the request was submitted, as its
/// `request.created` entry records it: the connection's peer address
/// (the fact `source_ip`) and the transport (`api`, `pg`, `mcp`, `http`,
/// `ssh`). Read from the log, so the page shows exactly what policy saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub source_ip: Option<String>,
    pub transport: Option<String>,
}

/// [`Observed`] from a request's entries (its first `request.created`).
pub fn observed(entries: &[(u64, Vec<u8>)]) -> Observed {
    let created = entries
        .iter()
        .filter_map(|(_, b)| Entry::from_bytes(b).ok())
        .find(|e| e.event == "request.created");
    let Some(e) = created else {
        return Observed::default();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    Observed {
        source_ip: text(e.payload.get("facts").and_then(|f| f.get("source_ip"))),
        transport: text(e.payload.get("transport")),
    }
}

/// What the request page reads from a request's log entries.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub events: Vec<Event>,
    pub observed: Observed,
}

impl Timeline {
    /// From `(index, bytes)` entries (see `Store::request_entries`).
    pub fn from_entries(entries: &[(u64, Vec<u8>)]) -> Timeline {
        Timeline {
            events: events(entries),
            observed: observed(entries),
        }
    }
}

/// The timeline as HTML: an ordered list, each event with its time, its
/// words, and links to its log entry (the readable receipt,
/// `/audit?index=N`) and its receipt (`/audit/receipt/N`, JSON).
pub fn render(events: &[Event]) -> String {
    let mut b = String::from("<section id=\"timeline-section\"><h2>Timeline <small class=\"muted\">from the audit log</small></h2>");
    if events.is_empty() {
        b.push_str("<p class=\"muted\" id=\"timeline\">No log entries yet.</p></section>");
        return b;
    }
    b.push_str("<ol class=\"timeline\" id=\"timeline\">");
    for e in events {
        let at = match e.at {
            Some(ms) => when(Timestamp(ms)),
            None => esc(&e.time),
        };
        let _ = write!(
            b,
            "<li class=\"{}\" data-event=\"{}\">{at} <span class=\"what\">{}</span> \
             <a class=\"entry\" href=\"/audit?index={i}\" title=\"log entry {i}, with its inclusion proof\">entry #{i}</a> \
             <a class=\"receipt\" href=\"/audit/receipt/{i}\" download=\"receipt-{i}.json\">receipt</a></li>",
            e.tone.class(),
            esc(&e.event),
            esc(&e.text),
            i = e.index,
        );
    }
    b.push_str("</ol></section>");
    b
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Log entry `index` of request `req_1`, encoded as the store keeps it
    /// (the request page's tests use it too).
    pub(crate) fn entry(index: u64, event: &str, actor: &str, payload: Value) -> (u64, Vec<u8>) {
        let e = Entry {
            index,
            time: "2026-12-02T10:00:00.000Z".into(),
            event: event.into(),
            actor: Some(actor.into()),
            subjects: [("request".to_string(), "req_1".to_string())]
                .into_iter()
                .collect(),
            digest: None,
            payload,
        };
        (index, e.to_bytes().unwrap())
    }

    #[test]
    fn each_step_of_a_request_reads_in_words() {
        let entries = vec![
            entry(3, "request.created", "agent:bot", json!({})),
            entry(
                5,
                "review.refused",
                "user:alice",
                json!({"code": "self_review", "message": "alice owns agent:bot"}),
            ),
            entry(
                6,
                "review.refused",
                "user:eve",
                json!({"code": "not_eligible", "message": "not in dba"}),
            ),
            entry(
                7,
                "review.submitted",
                "user:bob",
                json!({"reviewer": "user:bob", "decision": "approve", "comment": "ok <b>"}),
            ),
            entry(
                8,
                "request.escalated",
                "service:secondkey",
                json!({"groups": ["oncall"]}),
            ),
            entry(
                9,
                "request.approved",
                "user:carol",
                json!({"approvers": ["user:bob", "user:carol"]}),
            ),
            entry(10, "grant.consumed", "agent:bot", json!({})),
            entry(
                11,
                "action.result",
                "agent:bot",
                json!({"outcome": "failed"}),
            ),
            entry(
                12,
                "action.result.detail",
                "agent:bot",
                json!({"ok": false, "summary": "ERROR 42P01"}),
            ),
            entry(13, "request.expired", "service:secondkey", json!({})),
            entry(
                14,
                "grant.refused",
                "agent:bot",
                json!({"code": "grant_used", "message": "this grant was already used"}),
            ),
        ];
        let ev = events(&entries);
        let texts: Vec<(u64, &str, Tone)> = ev
            .iter()
            .map(|e| (e.index, e.text.as_str(), e.tone))
            .collect();
        assert_eq!(
            texts,
            vec![
                (3, "Submitted by agent:bot; review required", Tone::Normal),
                (5, "Refused: a self-approval (the requester, its owner or whom it acts for) by user:alice — alice owns agent:bot", Tone::Refused),
                (6, "Refused: a decision from someone not eligible to review it by user:eve — not in dba", Tone::Refused),
                (7, "user:bob approved: “ok <b>”", Tone::Good),
                (8, "Escalated: oncall may now review", Tone::Normal),
                (9, "Approved by user:bob, user:carol; a single-use grant was issued", Tone::Good),
                (10, "Grant used by agent:bot: the approved action ran", Tone::Normal),
                (11, "Execution failed", Tone::Bad),
                (12, "Result reported by agent:bot: ERROR 42P01", Tone::Bad),
                (13, "Expired undecided (or its grant unused)", Tone::Bad),
                (14, "Refused: a second use of the grant by agent:bot — this grant was already used", Tone::Refused),
            ]
        );
        assert_eq!(ev[0].at, Some(1_796_205_600_000));
    }

    #[test]
    fn html_escapes_what_people_wrote_and_links_every_entry() {
        let entries = vec![
            entry(0, "request.created", "agent:bot", json!({})),
            entry(
                4,
                "review.submitted",
                "user:bob",
                json!({"reviewer": "user:bob", "decision": "deny", "comment": "<script>alert(1)</script>"}),
            ),
        ];
        let html = render(&events(&entries));
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        for i in [0, 4] {
            assert!(
                html.contains(&format!("href=\"/audit?index={i}\"")),
                "{html}"
            );
            assert!(
                html.contains(&format!("href=\"/audit/receipt/{i}\"")),
                "{html}"
            );
        }
        assert_eq!(html.matches("<li ").count(), 2);
        assert!(
            html.contains("<time datetime=\"2026-12-02T10:00:00.000Z\""),
            "{html}"
        );
    }

    #[test]
    fn the_observed_source_comes_from_the_request_created_entry() {
        let entries = vec![
            (0, b"garbage".to_vec()),
            entry(
                1,
                "request.created",
                "agent:bot",
                json!({"transport": "pg", "facts": {"source_ip": "10.1.2.3"}}),
            ),
            entry(
                2,
                "request.created",
                "agent:bot",
                json!({"transport": "api", "facts": {"source_ip": "10.9.9.9"}}),
            ),
        ];
        assert_eq!(
            observed(&entries),
            Observed {
                source_ip: Some("10.1.2.3".into()),
                transport: Some("pg".into())
            }
        );
        let declared_only = vec![entry(
            1,
            "request.created",
            "agent:bot",
            json!({"transport": "api", "action": {"context": {"source_ip": "1.1.1.1"}}}),
        )];
        assert_eq!(observed(&declared_only).source_ip, None);
        assert_eq!(observed(&[]), Observed::default());
    }

    #[test]
    fn an_entry_that_does_not_decode_is_listed_not_hidden_and_the_list_is_bounded() {
        let mut entries = vec![(2u64, b"{not json".to_vec())];
        let ev = events(&entries);
        assert_eq!((ev[0].index, ev[0].tone), (2, Tone::Refused));
        assert!(
            ev[0].text.starts_with("entry does not decode"),
            "{}",
            ev[0].text
        );
        entries = (0..(MAX_EVENTS as u64 + 50))
            .map(|i| {
                entry(
                    i,
                    "review.refused",
                    "user:eve",
                    json!({"code": "not_eligible"}),
                )
            })
            .collect();
        assert_eq!(events(&entries).len(), MAX_EVENTS);
        assert!(render(&[]).contains("No log entries yet."));
    }
}
