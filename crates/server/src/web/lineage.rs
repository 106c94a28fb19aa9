//! The `/lineage` page: the lineage graph of a period, drawn server-side as
//! SVG (no script), with a filter form (GET: it changes nothing) and the
//! same actions as a table. Every node and edge links to the request page
//! or to the log entry (`/audit?index=N`, where a log reader gets its
//! receipt).

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::response::Response;
use secondkey_audit::graph::{Edge, Filter, Graph, Node};
use secondkey_audit::svg::{self, Links};
use secondkey_audit::time::rfc3339;

use super::highlight::esc;
use super::pages::layout;
use super::{api_error_page, ok, SignedIn};
use crate::lineage::GraphQuery;
use crate::AppState;

fn q(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Links of the page: principals and datasets narrow the graph to
/// themselves (same period); actions open their request, or their decision
/// entry; edges open the entry that ran the action.
struct PageLinks<'a> {
    period: &'a str,
}

impl Links for PageLinks<'_> {
    fn node(&self, n: &Node) -> Option<String> {
        match n.kind.as_str() {
            "principal" => Some(format!("/lineage?agent={}&{}", q(&n.label), self.period)),
            "dataset" => Some(format!("/lineage?dataset={}&{}", q(&n.label), self.period)),
            _ => match &n.request {
                Some(r) => Some(format!("/requests/{}", q(r))),
                None => n.entries.first().map(|i| format!("/audit?index={i}")),
            },
        }
    }

    fn edge(&self, e: &Edge) -> Option<String> {
        e.entries.last().map(|i| format!("/audit?index={i}"))
    }
}

fn input(name: &str, label: &str, value: &str, hint: &str) -> String {
    format!(
        "<div><label for=\"{name}\">{label}</label><input id=\"{name}\" name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></div>",
        esc(value)
    )
}

/// Renders the page.
pub fn render(user: &SignedIn, f: &Filter, g: &Graph) -> String {
    let from = rfc3339(f.period.from);
    let to = rfc3339(f.period.to);
    let period = format!("from={}&to={}", q(&from), q(&to));
    let mut b = String::from("<h1>Lineage</h1>");
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/lineage\" class=\"filters\">{}{}{}{}{}<div><button>Show</button></div></form>",
        input("from", "From", &from, "2026-12-01"),
        input("to", "To (exclusive)", &to, "2026-12-02"),
        input("agent", "Agent", f.agent.as_deref().unwrap_or(""), "agent:report-bot"),
        input("dataset", "Dataset (URI or prefix)", f.dataset.as_deref().unwrap_or(""), "postgres://analytics/"),
        input("environment", "Environment", f.environment.as_deref().unwrap_or(""), "prod"),
    );
    let _ = write!(
        b,
        "<p class=\"muted\" id=\"legend\">{} executed action{} · <span class=\"approved-key\">solid green</span>: a human approved it (who, when) · <span class=\"policy-key\">dashed grey</span>: policy allowed it · read / write / export on each edge · nodes and edges link to requests and log entries.{}</p>",
        g.actions,
        if g.actions == 1 { "" } else { "s" },
        if g.truncated { " Only the newest actions are shown: narrow the filters to see the rest." } else { "" }
    );
    if f.visible.is_some() {
        b.push_str("<p class=\"muted\">You see your own actions and those of the agents you own; log readers see everyone's.</p>");
    }
    let links = PageLinks { period: &period };
    let _ = write!(b, "<div class=\"graph\">{}</div>", svg::render(g, &links));
    b.push_str("<h2>Actions</h2><table id=\"actions\"><thead><tr><th>When</th><th>Principal</th><th>Action</th><th>Datasets</th><th>Authorized by</th><th>Log entries</th></tr></thead><tbody>");
    for n in g.nodes.iter().filter(|n| n.kind == "action") {
        let principal = g
            .edges
            .iter()
            .find(|e| e.to == n.id && e.kind == "ran")
            .map(|e| e.from.trim_start_matches("principal:").to_string())
            .unwrap_or_default();
        let datasets: Vec<String> = g
            .edges
            .iter()
            .filter(|e| e.from == n.id)
            .map(|e| {
                format!(
                    "{} <code>{}</code>",
                    esc(&e.kind),
                    esc(e.to.trim_start_matches("dataset:"))
                )
            })
            .collect();
        let by = match (&n.approved, &n.request) {
            (Some(a), Some(r)) => format!(
                "<a href=\"/requests/{}\">approved</a> by {} at {}",
                esc(&q(r)),
                esc(&a.by.join(", ")),
                esc(&a.at)
            ),
            _ => "policy".into(),
        };
        let entries: Vec<String> = n
            .entries
            .iter()
            .map(|i| format!("<a href=\"/audit?index={i}\">{i}</a>"))
            .collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code> on <code>{}</code></td><td>{}</td><td>{by}</td><td>{}</td></tr>",
            esc(n.at.as_deref().unwrap_or("")),
            esc(&principal),
            esc(&n.label),
            esc(n.resource.as_deref().unwrap_or("")),
            datasets.join("<br>"),
            entries.join(" ")
        );
    }
    b.push_str("</tbody></table>");
    layout("Lineage", Some(user), &b)
}

/// `GET /lineage`.
pub async fn page(
    State(s): State<AppState>,
    user: SignedIn,
    Query(query): Query<GraphQuery>,
) -> Response {
    match s.gateway.lineage_graph(&user.principal, &query).await {
        Ok((f, g)) => ok(render(&user, &f, &g)),
        Err(e) => api_error_page(&e),
    }
}
