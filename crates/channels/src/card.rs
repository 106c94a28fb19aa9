//! What a reviewer must see, independent of the channel: who asked, what
//! exactly, why, where, the impact, what is required and where it stands.
//! Slack blocks and Teams cards are both drawn from this one summary, so
//! the two channels never disagree about a request.

use secondkey_core::request::{Request, RequestState, ReviewDecision};
use secondkey_server::reviewer;
use serde_json::Value;

/// A request as a reviewer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: String,
    pub url: String,
    pub title: String,
    /// One sentence: who wants to do what, where, how much, for whom.
    pub headline: String,
    /// Why review is required: each policy's `@reason`, else its id.
    pub risk: Vec<String>,
    /// What changed since the last similar approved action, in words
    /// (empty when there is none or nothing changed; see
    /// [`Summary::with_changes`]).
    pub changes: Vec<String>,
    pub requester: String,
    pub owner: Option<String>,
    pub on_behalf_of: Option<String>,
    pub model: Option<String>,
    /// The statement, or the full parameters as pretty JSON.
    pub what: String,
    /// The whole action exactly as submitted, pretty JSON (for the file).
    pub action_json: String,
    pub justification: Option<String>,
    /// `configured env (gateway)`, then what the agent declared.
    pub environment: Vec<String>,
    pub source: Vec<String>,
    pub impact: Vec<String>,
    /// Quorum progress per requirement, as every surface renders it
    /// ([`secondkey_server::reviewer::Progress::line`]).
    pub required: Vec<String>,
    pub approvals: Vec<String>,
    pub state: RequestState,
    /// The outcome line once decided ("Approved by user:bob, user:carol").
    pub outcome: Option<String>,
    pub expires_at: String,
    pub escalated_to: Vec<String>,
}

/// `s` cut to at most `max` bytes on a character boundary. Callers say
/// when they cut; nothing is shortened silently.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Summary {
    /// `environment` is the gateway-configured environment of the
    /// resource (a fact), shown apart from what the agent declared.
    pub fn of(req: &Request, url: String, environment: Option<&str>, expires_at: String) -> Self {
        let a = &req.action;
        let raw = req
            .submitted
            .clone()
            .unwrap_or_else(|| serde_json::to_value(a).unwrap_or(Value::Null));
        let ctx = raw.get("context");
        let params = raw.get("params");
        let what = match params.and_then(|p| p.get("statement")) {
            Some(Value::String(s)) => s.clone(),
            _ => params
                .map(|p| serde_json::to_string_pretty(p).unwrap_or_default())
                .unwrap_or_default(),
        };
        let mut env = Vec::new();
        if let Some(e) = environment {
            env.push(format!("{e} (configured)"));
        }
        if let Some(e) = text(ctx.and_then(|c| c.get("environment"))) {
            env.push(format!("{e} (declared by the agent)"));
        }
        let mut source = Vec::new();
        for k in ["source_ip", "session", "source"] {
            if let Some(v) = text(ctx.and_then(|c| c.get(k))) {
                source.push(format!("{k}: {v}"));
            }
        }
        let mut impact = Vec::new();
        if let Some(Value::Object(c)) = ctx {
            for (k, v) in c {
                if k.starts_with("estimated_") {
                    impact.push(format!("{}: {v}", k.trim_start_matches("estimated_")));
                }
            }
        }
        if let Some(l) = raw.get("lineage") {
            for (k, label) in [("reads", "reads"), ("writes", "writes")] {
                if let Some(Value::Array(xs)) = l.get(k) {
                    if !xs.is_empty() {
                        let list: Vec<String> = xs.iter().filter_map(|x| text(Some(x))).collect();
                        impact.push(format!("{label}: {}", list.join(", ")));
                    }
                }
            }
        }
        let approvers: Vec<String> = req
            .reviews
            .iter()
            .filter(|r| r.decision == ReviewDecision::Approve)
            .map(|r| r.reviewer.to_string())
            .collect();
        let required = reviewer::progress(req)
            .iter()
            .map(reviewer::Progress::line)
            .collect();
        let outcome = outcome_line(req, &approvers);
        Summary {
            id: req.id.clone(),
            url,
            title: format!("{}.{} on {}", a.kind, a.operation, a.resource),
            headline: reviewer::headline(req, environment),
            risk: reviewer::risks(req).into_iter().map(|r| r.text).collect(),
            changes: Vec::new(),
            requester: req.requester.id.to_string(),
            owner: req.requester.owner.as_ref().map(|o| o.to_string()),
            // Only a backed on_behalf_of counts; an unbacked one is shown
            // for what it is.
            on_behalf_of: a.on_behalf_of.as_ref().map(|o| match req.acting_for() {
                Some(_) => o.to_string(),
                None => format!("{o} (declared by the agent, not verified)"),
            }),
            model: text(ctx.and_then(|c| c.get("model"))),
            what,
            action_json: serde_json::to_string_pretty(&raw).unwrap_or_default(),
            justification: text(raw.get("justification")),
            environment: env,
            source,
            impact,
            required,
            approvals: req
                .reviews
                .iter()
                .map(|r| {
                    let verb = match r.decision {
                        ReviewDecision::Approve => "approved",
                        ReviewDecision::Deny => "denied",
                    };
                    match &r.comment {
                        Some(c) if !c.is_empty() => format!("{} {verb}: {c}", r.reviewer),
                        _ => format!("{} {verb}", r.reviewer),
                    }
                })
                .collect(),
            state: req.state,
            outcome,
            expires_at,
            escalated_to: req.escalated_to.iter().cloned().collect(),
        }
    }

    /// With the changes since `prev`, the last similar approved action.
    pub fn with_changes(mut self, req: &Request, prev: Option<&Request>) -> Self {
        self.changes = match prev {
            Some(p) => {
                let mut c = reviewer::changes(&p.action, &req.action);
                if c.is_empty() {
                    c.push(format!("same as the approved {}", p.id));
                } else {
                    c.insert(0, format!("since the approved {}:", p.id));
                }
                c
            }
            None => Vec::new(),
        };
        self
    }

    /// Whether buttons still make sense.
    pub fn open(&self) -> bool {
        self.state == RequestState::Pending
    }

    /// A one-line plain-text summary (notification text, fallbacks).
    pub fn headline(&self) -> String {
        match &self.outcome {
            Some(o) => format!("{} — {}", self.title, o),
            None => format!(
                "Approval needed: {} (asked by {})",
                self.title, self.requester
            ),
        }
    }

    /// "who asked" as one line.
    pub fn who(&self) -> String {
        let mut s = self.requester.clone();
        if let Some(o) = &self.owner {
            s.push_str(&format!(", owned by {o}"));
        }
        if let Some(b) = &self.on_behalf_of {
            s.push_str(&format!(", on behalf of {b}"));
        }
        if let Some(m) = &self.model {
            s.push_str(&format!(", model {m}"));
        }
        s
    }
}

fn outcome_line(req: &Request, approvers: &[String]) -> Option<String> {
    let deniers = || {
        req.reviews
            .iter()
            .filter(|r| r.decision == ReviewDecision::Deny)
            .map(|r| r.reviewer.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(match req.state {
        RequestState::Pending => return None,
        RequestState::Approved => format!("✅ Approved by {}", approvers.join(", ")),
        RequestState::Denied => format!("⛔ Denied by {}", deniers()),
        RequestState::Expired if req.grant.is_some() => format!(
            "⌛ Expired: approved by {} but the grant went unused",
            approvers.join(", ")
        ),
        RequestState::Expired => "⌛ Expired: nobody decided in time (not approved)".to_string(),
        RequestState::Withdrawn => "↩️ Withdrawn by the requester".to_string(),
        RequestState::Revoked => format!("🚫 Revoked after approval by {}", approvers.join(", ")),
        RequestState::Executed => format!("▶️ Executed (approved by {})", approvers.join(", ")),
        RequestState::Failed => format!(
            "❌ Executed and failed (approved by {})",
            approvers.join(", ")
        ),
        RequestState::Unknown => format!(
            "❔ Executed, result unknown (approved by {})",
            approvers.join(", ")
        ),
    })
}
