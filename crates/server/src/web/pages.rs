//! HTML of the web UI, written with `format!` and one escaping function:
//! no template engine, no script. Everything a user or agent wrote goes
//! through [`esc`] (or a highlighter that escapes).

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::Html;
use secondkey_core::request::{Request, RequestState, ReviewDecision};
use serde_json::Value;

use super::highlight::{self, esc};
use super::session::SignedIn;
use crate::gateway::rfc3339;

/// The stylesheet, vendored (served at `/assets/app.css`).
pub const CSS: &str = include_str!("app.css");

/// The page frame: navigation, who is signed in, sign-out form.
pub fn layout(title: &str, user: Option<&SignedIn>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(u) = user {
        let groups: Vec<&str> = u.principal.groups.iter().map(String::as_str).collect();
        let _ = write!(
            nav,
            "<nav><a href=\"/inbox\">Inbox</a><a href=\"/history\">History</a><a href=\"/audit\">Audit</a><a href=\"/lineage\">Lineage</a>\
             <span class=\"who\">{} <small>{}</small></span>\
             <form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button class=\"link\">Sign out</button></form></nav>",
            esc(u.principal.id.as_str()),
            esc(&groups.join(", ")),
            esc(&u.csrf)
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · secondkey</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\
         <body><header><a class=\"brand\" href=\"/\">secondkey</a>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

/// An error page: what happened, and that nothing changed when it did not.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    Html(layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        &format!(
            "<h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/\">Back to the inbox</a></p>",
            status.as_u16(),
            esc(message)
        ),
    ))
}

fn state_badge(s: RequestState) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", s.as_str())
}

fn ago(now_ms: i64, t_ms: i64) -> String {
    let d = (t_ms - now_ms) / 1000;
    let (n, future) = if d >= 0 { (d, true) } else { (-d, false) };
    let text = if n < 90 {
        format!("{n} s")
    } else if n < 90 * 60 {
        format!("{} min", n / 60)
    } else if n < 36 * 3600 {
        format!("{} h", n / 3600)
    } else {
        format!("{} d", n / 86400)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn summary(req: &Request) -> String {
    format!(
        "<code>{}.{}</code> on <code>{}</code>",
        esc(&req.action.kind),
        esc(&req.action.operation),
        esc(&req.action.resource)
    )
}

fn ctx_str<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.action.context.get(key).and_then(Value::as_str)
}

/// The agent session a request belongs to (batch grouping).
pub fn session_of(req: &Request) -> Option<&str> {
    ctx_str(req, "session")
}

/// The inbox: pending requests the user may decide, grouped by requester
/// and agent session; a group of several can be decided together.
pub fn inbox(user: &SignedIn, reqs: &[&Request], now_ms: i64, notice: Option<&str>) -> String {
    let mut body = String::from("<h1>Requests waiting for you</h1>");
    if let Some(n) = notice {
        let _ = write!(body, "<p class=\"notice\">{}</p>", esc(n));
    }
    if reqs.is_empty() {
        body.push_str("<p class=\"empty\">Nothing is waiting for your review.</p>");
        return layout("Inbox", Some(user), &body);
    }
    let mut groups: Vec<(String, Option<&str>, Vec<&Request>)> = Vec::new();
    for r in reqs {
        let key = (r.requester.id.to_string(), session_of(r));
        match groups
            .iter_mut()
            .find(|(a, s, _)| *a == key.0 && *s == key.1)
        {
            Some(g) => g.2.push(r),
            None => groups.push((key.0, key.1, vec![r])),
        }
    }
    for (agent, session, items) in groups {
        let batch = items.len() > 1 && session.is_some();
        let _ = write!(
            body,
            "<section class=\"group\"><h2>{}{}</h2>",
            esc(&agent),
            session
                .map(|s| format!(" <small>session {}</small>", esc(s)))
                .unwrap_or_default()
        );
        if batch {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/inbox/batch\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
                esc(&user.csrf)
            );
        }
        body.push_str("<table><thead><tr>");
        if batch {
            body.push_str("<th></th>");
        }
        body.push_str(
            "<th>Request</th><th>Action</th><th>Why</th><th>Expires</th></tr></thead><tbody>",
        );
        for r in &items {
            body.push_str("<tr>");
            if batch {
                let _ = write!(
                    body,
                    "<td><input type=\"checkbox\" name=\"id\" value=\"{0}\" checked aria-label=\"select {0}\"></td>",
                    esc(&r.id)
                );
            }
            let _ = write!(
                body,
                "<td><a href=\"/requests/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td></tr>",
                esc(&r.id),
                summary(r),
                esc(r.action.justification.as_deref().unwrap_or("")),
                ago(now_ms, r.expires_at.0)
            );
        }
        body.push_str("</tbody></table>");
        if batch {
            body.push_str(
                "<div class=\"decide\"><input name=\"comment\" placeholder=\"Comment (recorded with each review)\" maxlength=\"4096\">\
                 <button name=\"decision\" value=\"approve\" class=\"approve\">Approve selected</button>\
                 <button name=\"decision\" value=\"deny\" class=\"deny\">Deny selected</button></div></form>",
            );
        }
        body.push_str("</section>");
    }
    layout("Inbox", Some(user), &body)
}

/// The outcome of a batch decision, one line per request.
pub fn batch_result(user: &SignedIn, results: &[(String, Result<RequestState, String>)]) -> String {
    let mut body = String::from("<h1>Batch decision</h1><p>Each request was reviewed separately and recorded as its own review.</p><table><thead><tr><th>Request</th><th>Result</th></tr></thead><tbody>");
    for (id, r) in results {
        let res = match r {
            Ok(s) => state_badge(*s),
            Err(e) => format!("<span class=\"error\">{}</span>", esc(e)),
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"/requests/{0}\">{0}</a></td><td>{res}</td></tr>",
            esc(id)
        );
    }
    body.push_str("</tbody></table><p><a href=\"/inbox\">Back to the inbox</a></p>");
    layout("Batch decision", Some(user), &body)
}

/// The text a reviewer compares between similar actions: the statement
/// for SQL, the parameters otherwise.
pub fn comparable_text(req: &Request) -> String {
    if let Some(s) = statement(req) {
        return format!("{s}\n");
    }
    let mut t =
        serde_json::to_string_pretty(&Value::Object(req.action.params.clone())).unwrap_or_default();
    t.push('\n');
    t
}

/// The SQL statement of an action, when it has one.
pub fn statement(req: &Request) -> Option<&str> {
    if req.action.kind != "sql" {
        return None;
    }
    ["sql", "statement", "query"]
        .iter()
        .find_map(|k| req.action.params.get(*k).and_then(Value::as_str))
}

/// What the request page needs besides the request.
pub struct RequestPage<'a> {
    pub req: &'a Request,
    /// The action JSON exactly as submitted.
    pub submitted: &'a Value,
    /// Configured environment of the resource (a gateway fact).
    pub environment: Option<&'a str>,
    /// The last similar approved request the viewer may see, if any.
    pub similar: Option<&'a Request>,
    /// Why this user cannot decide (None: they may).
    pub cannot_decide: Option<String>,
    pub now_ms: i64,
    pub notice: Option<&'a str>,
}

fn row(out: &mut String, label: &str, value_html: &str) {
    let _ = write!(out, "<tr><th>{label}</th><td>{value_html}</td></tr>");
}

fn code_or_dash(v: Option<&str>) -> String {
    v.map(|s| format!("<code>{}</code>", esc(s)))
        .unwrap_or_else(|| "<span class=\"muted\">—</span>".into())
}

/// The request page: who, what, why, where, impact, policies, reviews,
/// and the decision form.
pub fn request(user: &SignedIn, p: &RequestPage<'_>) -> String {
    let r = p.req;
    let a = &r.action;
    let mut b = String::with_capacity(8192);
    let _ = write!(
        b,
        "<h1>{} {}</h1><p class=\"lead\">{}{}</p>",
        esc(&r.id),
        state_badge(r.state),
        summary(r),
        if p.cannot_decide.is_none() {
            " · <a href=\"#decide\">Decide ↓</a>"
        } else {
            ""
        }
    );
    if let Some(n) = p.notice {
        let _ = write!(b, "<p class=\"notice\">{}</p>", esc(n));
    }

    // Who asked.
    b.push_str("<section><h2>Who</h2><table class=\"kv\">");
    row(
        &mut b,
        "Requester",
        &code_or_dash(Some(r.requester.id.as_str())),
    );
    row(&mut b, "Model", &code_or_dash(ctx_str(r, "model")));
    row(
        &mut b,
        "Owner",
        &code_or_dash(r.requester.owner.as_ref().map(|o| o.as_str())),
    );
    let on_behalf_of = code_or_dash(a.on_behalf_of.as_ref().map(|o| o.as_str()));
    let on_behalf_of = match (&a.on_behalf_of, r.acting_for()) {
        (Some(_), None) => format!("{on_behalf_of} <em>declared by the agent, not verified: it changes nobody's rights</em>"),
        _ => on_behalf_of,
    };
    row(&mut b, "On behalf of", &on_behalf_of);
    row(&mut b, "Session", &code_or_dash(ctx_str(r, "session")));
    b.push_str("</table></section>");

    // What exactly.
    b.push_str("<section><h2>What</h2><table class=\"kv\">");
    row(&mut b, "Kind", &code_or_dash(Some(&a.kind)));
    row(&mut b, "Operation", &code_or_dash(Some(&a.operation)));
    row(&mut b, "Resource", &code_or_dash(Some(&a.resource)));
    if let Some(t) = &a.target {
        row(&mut b, "Target", &code_or_dash(Some(t)));
    }
    row(&mut b, "Digest", &code_or_dash(Some(r.digest.as_str())));
    b.push_str("</table>");
    if let Some(sql) = statement(r) {
        let _ = write!(
            b,
            "<h3>Statement</h3><pre class=\"code sql\" id=\"statement\">{}</pre>",
            highlight::sql(sql)
        );
    }
    if !a.params.is_empty() {
        let params =
            serde_json::to_string_pretty(&Value::Object(a.params.clone())).unwrap_or_default();
        let _ = write!(
            b,
            "<h3>Parameters</h3><pre class=\"code json\" id=\"params\">{}</pre>",
            highlight::json(&params)
        );
    }
    if let Some(prev) = p.similar {
        match highlight::diff(&comparable_text(prev), &comparable_text(r)) {
            Some(d) => {
                let _ = write!(
                    b,
                    "<h3>Changes since the last similar approved action</h3>\
                     <p class=\"muted\">Compared with <a href=\"/requests/{0}\">{0}</a> ({1}, {2}).</p>\
                     <pre class=\"code diff\" id=\"diff\">{d}</pre>",
                    esc(&prev.id),
                    prev.state.as_str(),
                    rfc3339(prev.created_at)
                );
            }
            None => {
                let _ = write!(
                    b,
                    "<p class=\"notice\">Identical to the approved action <a href=\"/requests/{0}\">{0}</a>.</p>",
                    esc(&prev.id)
                );
            }
        }
    }
    let full = serde_json::to_string_pretty(p.submitted).unwrap_or_default();
    let _ = write!(
        b,
        "<details><summary>The action exactly as submitted</summary><pre class=\"code json\">{}</pre></details></section>",
        highlight::json(&full)
    );

    // Why.
    let _ = write!(
        b,
        "<section><h2>Why</h2><blockquote>{}</blockquote></section>",
        a.justification
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "<span class=\"muted\">No justification given.</span>".into())
    );

    // Where.
    b.push_str("<section><h2>Where</h2><table class=\"kv\">");
    row(
        &mut b,
        "Environment (configured)",
        &code_or_dash(p.environment),
    );
    row(
        &mut b,
        "Environment (declared by the agent)",
        &code_or_dash(ctx_str(r, "environment")),
    );
    row(&mut b, "Source", &code_or_dash(ctx_str(r, "source_ip")));
    b.push_str("</table></section>");

    // Impact.
    b.push_str("<section><h2>Impact</h2><table class=\"kv\">");
    let mut any = false;
    for (k, v) in &a.context {
        if k.starts_with("estimated_") || k.ends_with("_estimate") {
            any = true;
            row(
                &mut b,
                &esc(k),
                &format!("<code>{}</code>", esc(&v.to_string())),
            );
        }
    }
    if !any {
        row(
            &mut b,
            "Estimates",
            "<span class=\"muted\">none declared</span>",
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "<span class=\"muted\">—</span>".to_string()
        } else {
            v.iter()
                .map(|s| format!("<code>{}</code>", esc(s)))
                .collect::<Vec<_>>()
                .join("<br>")
        }
    };
    row(&mut b, "Reads", &list(&a.lineage.reads));
    row(&mut b, "Writes", &list(&a.lineage.writes));
    b.push_str("</table></section>");

    // Policies and reviews.
    b.push_str("<section><h2>Review required by</h2><table><thead><tr><th>Policy</th><th>Groups</th><th>Approvals needed</th></tr></thead><tbody>");
    for q in &r.requirements {
        // An escalated requirement names itself and who may fill it now.
        let groups = if q.widened.is_empty() {
            esc(&q.groups.join(", "))
        } else {
            format!(
                "<strong>{}</strong><br>may be filled by {}",
                esc(&q.label()),
                esc(&q.who_may_fill())
            )
        };
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{groups}</td><td>{}</td></tr>",
            esc(&q.policy_id),
            q.quorum.max(1)
        );
    }
    b.push_str("</tbody></table>");
    let _ = write!(
        b,
        "<p class=\"muted\">Created {} · expires {} ({})</p>",
        rfc3339(r.created_at),
        rfc3339(r.expires_at),
        ago(p.now_ms, r.expires_at.0)
    );
    b.push_str("<h3>Reviews so far</h3>");
    if r.reviews.is_empty() {
        b.push_str("<p class=\"muted\">None yet.</p>");
    } else {
        b.push_str("<table id=\"reviews\"><thead><tr><th>Reviewer</th><th>Decision</th><th>Comment</th><th>When</th></tr></thead><tbody>");
        for rv in &r.reviews {
            let d = match rv.decision {
                ReviewDecision::Approve => "approve",
                ReviewDecision::Deny => "deny",
            };
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td><span class=\"badge {d}\">{d}</span></td><td>{}</td><td>{}</td></tr>",
                esc(rv.reviewer.as_str()),
                esc(rv.comment.as_deref().unwrap_or("")),
                rfc3339(rv.at)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");

    // Decide.
    b.push_str("<section id=\"decide\"><h2>Your decision</h2>");
    match &p.cannot_decide {
        None => {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/requests/{}/review\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <label for=\"comment\">Comment</label>\
                 <textarea id=\"comment\" name=\"comment\" rows=\"3\" maxlength=\"4096\"></textarea>\
                 <div class=\"decide\"><button id=\"approve\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
                 <button id=\"deny\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></div></form>",
                esc(&r.id),
                esc(&user.csrf)
            );
        }
        Some(why) => {
            let _ = write!(b, "<p class=\"muted\">{}</p>", esc(why));
        }
    }
    b.push_str("</section>");
    layout(&r.id, Some(user), &b)
}

/// Decided requests the user was party to, newest first.
pub fn history(user: &SignedIn, reqs: &[&Request]) -> String {
    let mut b = String::from("<h1>History</h1>");
    if reqs.is_empty() {
        b.push_str("<p class=\"empty\">No decided requests yet.</p>");
        return layout("History", Some(user), &b);
    }
    b.push_str("<table><thead><tr><th>Request</th><th>State</th><th>Requester</th><th>Action</th><th>Reviews</th><th>Decided</th></tr></thead><tbody>");
    for r in reqs {
        let reviewers: Vec<String> = r
            .reviews
            .iter()
            .map(|v| {
                format!(
                    "{} ({})",
                    v.reviewer,
                    if v.decision == ReviewDecision::Approve {
                        "approve"
                    } else {
                        "deny"
                    }
                )
            })
            .collect();
        let _ = write!(
            b,
            "<tr><td><a href=\"/requests/{0}\">{0}</a></td><td>{1}</td><td><code>{2}</code></td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
            esc(&r.id),
            state_badge(r.state),
            esc(r.requester.id.as_str()),
            summary(r),
            esc(&reviewers.join(", ")),
            r.decided_at.map(rfc3339).unwrap_or_default()
        );
    }
    b.push_str("</tbody></table>");
    layout("History", Some(user), &b)
}

/// The audit page: the latest signed checkpoint, and a receipt lookup for
/// log readers.
pub fn audit(
    user: &SignedIn,
    checkpoint: &str,
    verifier_key: &str,
    reader: Result<(), String>,
    receipt: Option<Result<(u64, String), String>>,
) -> String {
    let mut b = String::from("<h1>Audit log</h1><h2>Latest signed checkpoint</h2>");
    let _ = write!(
        b,
        "<pre class=\"code\" id=\"checkpoint\">{}</pre><p class=\"muted\">Verifier key (get it out of band to rely on it): <code>{}</code></p>",
        esc(checkpoint),
        esc(verifier_key)
    );
    b.push_str("<h2>Receipt for an entry</h2>");
    match reader {
        Err(why) => {
            let _ = write!(b, "<p class=\"muted\">{}</p>", esc(&why));
        }
        Ok(()) => {
            b.push_str(
                "<form method=\"get\" action=\"/audit\" class=\"row\"><label for=\"index\">Entry index</label>\
                 <input id=\"index\" name=\"index\" inputmode=\"numeric\" pattern=\"[0-9]+\" required>\
                 <button>Get receipt</button></form>",
            );
            match receipt {
                None => {}
                Some(Ok((index, json))) => {
                    let _ = write!(
                        b,
                        "<h3>Entry {index}</h3><p><a href=\"/audit/receipt/{index}\" download=\"receipt-{index}.json\">Download receipt-{index}.json</a> · verify with <code>secondkey log verify --receipt receipt-{index}.json --key …</code></p><pre class=\"code json\" id=\"receipt\">{}</pre>",
                        highlight::json(&json)
                    );
                }
                Some(Err(e)) => {
                    let _ = write!(b, "<p class=\"error\">{}</p>", esc(&e));
                }
            }
        }
    }
    layout("Audit", Some(user), &b)
}

/// After sign-out.
pub fn signed_out() -> String {
    layout(
        "Signed out",
        None,
        "<h1>Signed out</h1><p><a href=\"/login\">Sign in again</a></p>",
    )
}

/// The request link's page when web sign-in is not configured.
pub fn cli_hint(id: &str, public_url: &str) -> String {
    let id = esc(id);
    let url = esc(public_url);
    layout(
        &format!("Request {id}"),
        None,
        &format!(
            "<h1>Request {id}</h1><p>Web sign-in is not configured on this gateway. Review it with the CLI:</p>\
             <pre class=\"code\">secondkey request show {id} --url {url} --token $SECONDKEY_TOKEN\n\
secondkey request approve {id} --url {url} --token $SECONDKEY_TOKEN</pre>"
        ),
    )
}
