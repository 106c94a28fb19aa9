//! Compliance evidence: the figures a period of the log proves, mapped to
//! SOC 2 and NIST SP 800-53 (FedRAMP Moderate) controls, and the printable
//! report rendered from them.
//!
//! Everything here is a pure function of the log's entries, its checkpoint
//! and the parameters (framework, period, verifier key): [`figures`] then
//! [`render_html`]. `secondkey evidence verify` runs both again on the
//! bundle and compares, byte for byte, with what the pack holds, so a
//! report cannot drift from the log or be edited unnoticed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::history::{Approval, Exception, PolicyLoad, Tracker};
use crate::svg::esc;
use crate::time::{millis, rfc3339, Period};
use crate::AuditError;

/// The figures file's format version (2: the log's last entry time,
/// whether it ends before the period, and its other signature lines
/// recorded as unverified).
pub const FORMAT: u32 = 2;

/// What a pack's manifest records in `made_with`: the release that made
/// it.
pub fn made_with() -> String {
    format!("secondkey {}", env!("CARGO_PKG_VERSION"))
}

/// Checks the manifest's own fields before anything it lists is trusted,
/// and returns `made_with`. `format` must be [`FORMAT`]: a pack of another
/// format holds other figures, which this release would misread, so it is
/// refused and the message names the release that made it. `made_with`
/// must be `secondkey` and a SemVer version: a record of that release,
/// shown to the auditor, not a condition (any release that reads the
/// pack's format verifies it), but a manifest without it, or with
/// anything else there, was not written by `secondkey evidence`.
pub fn check_manifest(manifest: &serde_json::Value) -> Result<String, AuditError> {
    let bad = |m: String| Err(AuditError::Manifest(m));
    let maker = &manifest["made_with"];
    let format = &manifest["format"];
    match format.as_u64() {
        Some(n) if n == u64::from(FORMAT) => {}
        Some(n) => {
            return bad(format!(
                "says the pack is of format {n}, but {} reads evidence pack format {FORMAT} only: verify it with the release that made it (made_with: {maker})",
                made_with()
            ))
        }
        None if format.is_null() => {
            return bad("has no format: it is not an evidence pack's manifest, or it was edited".into())
        }
        None => {
            return bad(format!(
                "has format {format}, which is not a pack format number: the manifest was edited"
            ))
        }
    }
    let Some(text) = maker.as_str() else {
        return bad(match maker {
            serde_json::Value::Null => "has no made_with (the release that made the pack, like \"secondkey 1.2.0\"): the manifest was edited".into(),
            other => format!("has made_with {other}, which is not a string naming the release that made the pack, like \"secondkey 1.2.0\": the manifest was edited"),
        });
    };
    match text.strip_prefix("secondkey ").map(semver::Version::parse) {
        Some(Ok(_)) => Ok(text.to_string()),
        _ => bad(format!(
            "has made_with {text:?}, which is not `secondkey` and a release version, like \"secondkey 1.2.0\": the manifest was edited"
        )),
    }
}

/// A compliance framework the report maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Framework {
    #[serde(rename = "soc2")]
    Soc2,
    #[serde(rename = "fedramp-moderate")]
    FedrampModerate,
}

impl Framework {
    pub fn parse(s: &str) -> Result<Framework, AuditError> {
        match s {
            "soc2" => Ok(Framework::Soc2),
            "fedramp-moderate" => Ok(Framework::FedrampModerate),
            other => Err(AuditError::Framework(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Soc2 => "soc2",
            Framework::FedrampModerate => "fedramp-moderate",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Framework::Soc2 => "SOC 2 (AICPA Trust Services Criteria, 2017, revised 2022)",
            Framework::FedrampModerate => "FedRAMP Moderate (NIST SP 800-53 Rev. 5)",
        }
    }
}

/// The log the figures come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFigures {
    pub origin: String,
    /// Entries in the log (the checkpoint's size).
    pub size: u64,
    /// The checkpoint's root hash, hex.
    pub root: String,
    /// SHA-256 of the signed checkpoint note as exported.
    pub checkpoint_sha256: String,
    /// The log's verifier key the report was made with (a record, not a
    /// trust anchor: an auditor verifies with the key the operator gave
    /// out of band, and the figures differ under any other).
    pub verifier_key: String,
    /// When the log's last entry was written (none: the log is empty).
    pub last_entry_at: Option<String>,
    /// The log ends before the period does: nothing after `last_entry_at`
    /// is in this report, and the log alone cannot show that nothing
    /// happened before the period's end (a witness cosignature dated at or
    /// after it can; `evidence verify --witness` checks that).
    pub ends_before_period_end: bool,
    /// The checkpoint's signature lines other than the operator's, as
    /// found and NOT checked (anyone can append one): their names and
    /// claimed times. Only `evidence verify --witness KEY` tells which are
    /// valid witness cosignatures.
    pub unverified_signatures: Vec<UnverifiedSignature>,
}

/// A signature line of the checkpoint besides the operator's, unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnverifiedSignature {
    /// The key name the line gives.
    pub name: String,
    /// The cosignature time the line claims, RFC 3339.
    pub claimed_time: Option<String>,
}

/// One privileged action: an action policy held for human review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileged {
    pub request: String,
    pub requester: String,
    pub on_behalf_of: Option<String>,
    /// `kind.operation`.
    pub action: String,
    pub resource: String,
    pub environment: Option<String>,
    pub requested_at: String,
    pub requested_index: u64,
    pub approvers: Vec<Approval>,
    /// When it was approved, denied, expired, withdrawn or revoked.
    pub decided_at: Option<String>,
    /// Its final state.
    pub state: String,
    pub executed_at: Option<String>,
    pub latency_ms: Option<i64>,
}

/// Approval latency, over the requests approved in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub approved: u64,
    pub min_ms: i64,
    pub median_ms: i64,
    pub p90_ms: i64,
    pub max_ms: i64,
    pub mean_ms: i64,
}

/// A control, and what the log proves for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub id: String,
    pub title: String,
    /// What the log shows, with the period's numbers.
    pub proves: String,
    /// The report sections that hold the evidence.
    pub sections: Vec<String>,
}

/// Every figure of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub format: u32,
    pub framework: Framework,
    pub framework_title: String,
    /// `[from, to)`, RFC 3339.
    pub from: String,
    pub to: String,
    pub log: LogFigures,
    /// Decisions and outcomes in the period.
    pub totals: BTreeMap<String, u64>,
    /// Log entries in the period, by event type.
    pub events: BTreeMap<String, u64>,
    /// Principals that acted in the period, with how many actions each.
    pub principals: BTreeMap<String, u64>,
    pub privileged: Vec<Privileged>,
    pub exceptions: Vec<Exception>,
    pub exceptions_by_kind: BTreeMap<String, u64>,
    pub latency: Latency,
    /// The policy set in force when the period began, and every one loaded
    /// during it.
    pub policies: Vec<PolicyLoad>,
    pub controls: Vec<Control>,
}

/// What figures are computed from besides the entries.
pub struct Inputs<'a> {
    pub framework: Framework,
    pub period: Period,
    /// The signed checkpoint note the entries end at.
    pub checkpoint: &'a str,
    pub verifier_key: &'a str,
}

type CheckpointFacts = (String, u64, String, Vec<UnverifiedSignature>);

fn checkpoint_facts(note: &str) -> Result<CheckpointFacts, AuditError> {
    let cp = secondkey_log::checkpoint::Checkpoint::parse_note_unverified(note)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let lines = secondkey_log::witness::other_signature_lines(note, &cp.origin)
        .into_iter()
        .map(|l| UnverifiedSignature {
            name: l.name,
            claimed_time: l
                .claimed_time
                .map(|ts| rfc3339((ts as i64).saturating_mul(1000))),
        })
        .collect();
    Ok((cp.origin, cp.size, hex::encode(cp.root), lines))
}

fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Computes every figure from the entries (all of them, in order, as the
/// bundle holds them) and the inputs.
pub fn figures<I>(entries: I, inputs: &Inputs<'_>) -> Result<Figures, AuditError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let (origin, size, root, unverified_signatures) = checkpoint_facts(inputs.checkpoint)?;
    let period = inputs.period;
    let mut tracker = Tracker::new();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    let mut last_entry_at = None;
    for b in entries {
        let e =
            secondkey_log::entry::Entry::from_bytes(b.as_ref()).map_err(|e| AuditError::Entry {
                index: n,
                message: e.to_string(),
            })?;
        n += 1;
        if period.contains(&e.time) {
            *events.entry(e.event.clone()).or_default() += 1;
        }
        tracker.feed(&e);
        last_entry_at = Some(e.time);
    }
    if n != size {
        return Err(AuditError::Checkpoint(format!(
            "the checkpoint says {size} entries but {n} were given"
        )));
    }
    let in_period = |at: &str| period.contains(at);
    let mut totals: BTreeMap<String, u64> = [
        "decisions",
        "allowed",
        "denied_by_policy",
        "held_for_review",
        "approved",
        "denied_by_reviewer",
        "expired",
        "withdrawn",
        "revoked",
        "executed",
        "succeeded",
        "failed",
        "outcome_unknown",
        "escalated",
        "self_approvals_refused",
    ]
    .iter()
    .map(|k| (k.to_string(), 0))
    .collect();
    let mut bump = |k: &str| *totals.entry(k.to_string()).or_default() += 1;
    let mut principals: BTreeMap<String, u64> = BTreeMap::new();
    let mut privileged = Vec::new();
    let mut latencies = Vec::new();
    for r in tracker.records() {
        if in_period(&r.decided.at) {
            bump("decisions");
            *principals.entry(r.principal.clone()).or_default() += 1;
            match r.decision.as_str() {
                "allow" => bump("allowed"),
                "deny" => bump("denied_by_policy"),
                _ => bump("held_for_review"),
            }
            if r.held() {
                let decided_at = r
                    .approved
                    .as_ref()
                    .or(r.ended.as_ref())
                    .map(|m| m.at.clone());
                privileged.push(Privileged {
                    request: r.id.clone(),
                    requester: r.principal.clone(),
                    on_behalf_of: r.on_behalf_of.clone(),
                    action: format!("{}.{}", r.kind, r.operation),
                    resource: r.resource.clone(),
                    environment: r.environment.clone(),
                    requested_at: r.decided.at.clone(),
                    requested_index: r.decided.index,
                    approvers: r.approvals.clone(),
                    decided_at,
                    state: r.state.clone(),
                    executed_at: r.executed.as_ref().map(|m| m.at.clone()),
                    latency_ms: r.approval_latency_ms(),
                });
            }
        }
        if let Some(m) = &r.approved {
            if in_period(&m.at) {
                bump("approved");
                if let Some(l) = r.approval_latency_ms() {
                    latencies.push(l);
                }
            }
        }
        if let Some(m) = &r.ended {
            if in_period(&m.at) {
                match r.state.as_str() {
                    "denied" if r.held() => bump("denied_by_reviewer"),
                    "expired" => bump("expired"),
                    "withdrawn" => bump("withdrawn"),
                    "revoked" => bump("revoked"),
                    _ => {}
                }
            }
        }
        if r.escalated && in_period(&r.decided.at) {
            bump("escalated");
        }
        if let Some(m) = &r.executed {
            if in_period(&m.at) {
                bump("executed");
            }
        }
        if let Some(res) = &r.result {
            if in_period(&res.mark.at) {
                match res.outcome.as_str() {
                    "succeeded" => bump("succeeded"),
                    "failed" => bump("failed"),
                    "unknown" => bump("outcome_unknown"),
                    _ => {}
                }
            }
        }
    }
    let exceptions: Vec<Exception> = tracker
        .exceptions()
        .iter()
        .filter(|x| in_period(&x.mark.at))
        .cloned()
        .collect();
    let mut exceptions_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for x in &exceptions {
        *exceptions_by_kind.entry(x.kind.clone()).or_default() += 1;
    }
    totals.insert(
        "self_approvals_refused".into(),
        exceptions_by_kind.get("self_review").copied().unwrap_or(0),
    );
    latencies.sort_unstable();
    let latency = if latencies.is_empty() {
        Latency::default()
    } else {
        let sum: i64 = latencies.iter().sum();
        Latency {
            approved: latencies.len() as u64,
            min_ms: latencies[0],
            median_ms: percentile(&latencies, 50),
            p90_ms: percentile(&latencies, 90),
            max_ms: latencies[latencies.len() - 1],
            mean_ms: sum / latencies.len() as i64,
        }
    };
    let loads = tracker.policy_loads();
    let mut policies: Vec<PolicyLoad> = Vec::new();
    if let Some(before) = loads
        .iter()
        .rev()
        .find(|p| millis(&p.mark.at).is_some_and(|t| t < period.from))
    {
        policies.push(before.clone());
    }
    policies.extend(loads.iter().filter(|p| in_period(&p.mark.at)).cloned());
    let log = LogFigures {
        origin,
        size,
        root,
        checkpoint_sha256: hex::encode(Sha256::digest(inputs.checkpoint.as_bytes())),
        verifier_key: inputs.verifier_key.trim().to_string(),
        ends_before_period_end: last_entry_at
            .as_deref()
            .and_then(millis)
            .is_none_or(|t| t < period.to),
        last_entry_at,
        unverified_signatures,
    };
    let mut f = Figures {
        format: FORMAT,
        framework: inputs.framework,
        framework_title: inputs.framework.title().into(),
        from: rfc3339(period.from),
        to: rfc3339(period.to),
        log,
        totals,
        events,
        principals,
        privileged,
        exceptions,
        exceptions_by_kind,
        latency,
        policies,
        controls: vec![],
    };
    f.controls = controls(&f);
    Ok(f)
}

fn t(f: &Figures, k: &str) -> u64 {
    f.totals.get(k).copied().unwrap_or(0)
}

fn x(f: &Figures, k: &str) -> u64 {
    f.exceptions_by_kind.get(k).copied().unwrap_or(0)
}

fn witnessed(f: &Figures) -> String {
    let lines = &f.log.unverified_signatures;
    if lines.is_empty() {
        return "The checkpoint carries only the operator's signature: no witness cosignature."
            .into();
    }
    let named: Vec<String> = lines
        .iter()
        .map(|l| match &l.claimed_time {
            Some(t) => format!("{} (claiming {t})", l.name),
            None => l.name.clone(),
        })
        .collect();
    format!(
        "The checkpoint carries {} other signature line(s), unverified here: {}. Anyone can append such a line; only `secondkey evidence verify --witness KEY` shows which of them are valid cosignatures by witnesses you trust.",
        lines.len(),
        named.join(", ")
    )
}

/// What the report says when the log ends before the period does.
fn incomplete(f: &Figures) -> Option<String> {
    if !f.log.ends_before_period_end {
        return None;
    }
    Some(match &f.log.last_entry_at {
        Some(t) => format!(
            "Incomplete: the log ends at {t}, before the period's end ({}). Nothing after {t} is in this report: the pack was made before the period ended, or nothing was logged since; the log alone cannot tell which. A witness cosignature dated at or after {} shows that nothing followed (`secondkey evidence verify --witness KEY --min-witnesses 1`).",
            f.to, f.to
        ),
        None => format!(
            "Incomplete: the log is empty, so it shows nothing about the period up to {}.",
            f.to
        ),
    })
}

fn control(id: &str, title: &str, proves: String, sections: &[&str]) -> Control {
    Control {
        id: id.into(),
        title: title.into(),
        proves,
        sections: sections.iter().map(|s| s.to_string()).collect(),
    }
}

/// The control mapping of `f`'s framework, with `f`'s numbers.
pub fn controls(f: &Figures) -> Vec<Control> {
    let decisions = format!(
        "{} actions were decided by Cedar policy before they ran: {} allowed, {} denied, {} held for human review.",
        t(f, "decisions"),
        t(f, "allowed"),
        t(f, "denied_by_policy"),
        t(f, "held_for_review")
    );
    let sod = format!(
        "No request was approved by its requester, the owner of the requesting agent or the human it acted for: {} such attempts were refused and recorded ({} by ineligible reviewers, {} duplicate reviews); quorum counts distinct humans.",
        x(f, "self_review"),
        x(f, "not_eligible"),
        x(f, "duplicate_reviewer")
    );
    let population = format!(
        "{} privileged actions were requested; {} were approved by named humans (median approval latency {} s), {} denied by reviewers, {} expired; every approval yields a single-use grant bound to the action's digest.",
        f.privileged.len(),
        t(f, "approved"),
        f.latency.median_ms / 1000,
        t(f, "denied_by_reviewer"),
        t(f, "expired")
    );
    let monitoring = format!(
        "Exceptions in the period: {} ({} policy denials, {} reviewer denials, {} expiries, {} escalations, {} refused grant uses, {} refused reviews, {} rejected policy sets).",
        f.exceptions.len(),
        x(f, "denied_by_policy"),
        x(f, "denied_by_reviewer"),
        x(f, "expired"),
        x(f, "escalated"),
        x(f, "grant_refused"),
        x(f, "self_review") + x(f, "not_eligible") + x(f, "duplicate_reviewer"),
        x(f, "policy_rejected")
    );
    let policy = format!(
        "{} policy set(s) were in force in the period, each named by the SHA-256 digest of its files as the gateway logged it at start or reload; {} reload(s) were rejected and the previous set kept.",
        f.policies.len(),
        x(f, "policy_rejected")
    );
    let integrity = format!(
        "The log is an RFC 6962 Merkle tree of {} entries whose checkpoint (root {}) is a signed note of the operator's key; any change, reordering or truncation fails `secondkey log verify`. {}",
        f.log.size,
        &f.log.root[..16.min(f.log.root.len())],
        witnessed(f)
    );
    let records = format!(
        "{} entries were written in the period across {} event types; each records its time, actor, subjects (request, action, grant ids), the action digest and the decision with the policies that matched.",
        f.events.values().sum::<u64>(),
        f.events.len()
    );
    match f.framework {
        Framework::Soc2 => vec![
            control("CC6.1", "Logical access security: access to protected assets is restricted", decisions, &["summary", "policies"]),
            control("CC6.2", "Access is authorized before it is granted", population.clone(), &["population"]),
            control("CC6.3", "Access is role-based, least privilege, separation of duties", sod, &["population", "exceptions"]),
            control("CC7.2", "Anomalies and security events are monitored", monitoring, &["exceptions"]),
            control("CC8.1", "Changes are authorized and recorded", policy, &["policies"]),
        ],
        Framework::FedrampModerate => vec![
            control("AC-2", "Account management", format!("{} principals acted in the period (listed with their action counts); every one is a configured or identity-provider-verified principal.", f.principals.len()), &["principals"]),
            control("AC-3", "Access enforcement", decisions, &["summary", "policies"]),
            control("AC-5", "Separation of duties", sod, &["population", "exceptions"]),
            control("AC-6", "Least privilege", population, &["population"]),
            control("AU-2", "Event logging", records.clone(), &["events"]),
            control("AU-3", "Content of audit records", records, &["events", "population"]),
            control("AU-6", "Audit record review, analysis and reporting", monitoring, &["exceptions"]),
            control("AU-9", "Protection of audit information", integrity.clone(), &["log"]),
            control("AU-10", "Non-repudiation", format!("Every approval is attributed to an authenticated human in a signed, append-only log; actions are bound to their digests. {integrity}"), &["population", "log"]),
            control("AU-12", "Audit record generation", format!("Records are generated before any authorized action runs (fail closed), for every transport: {}.", f.principals.keys().cloned().collect::<Vec<_>>().join(", ")), &["events"]),
            control("CM-3", "Configuration change control", policy, &["policies"]),
        ],
    }
}

/// The figures as the pack stores them (pretty JSON, newline-terminated).
pub fn to_json(f: &Figures) -> String {
    let mut s = serde_json::to_string_pretty(f).unwrap_or_default();
    s.push('\n');
    s
}

/// SHA-256, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn ms(v: i64) -> String {
    if v < 1000 {
        format!("{v} ms")
    } else {
        format!("{:.1} s", v as f64 / 1000.0)
    }
}

/// The printable report: a pure function of the figures (and so checkable
/// by rendering again). `bundle_dir` is how the report names the bundle
/// in its verify commands.
pub fn render_html(f: &Figures) -> String {
    let figures_json = to_json(f);
    let digest = sha256_hex(figures_json.as_bytes());
    let mut h = String::new();
    let w = &mut h;
    w.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    w.push_str(&format!(
        "<title>secondkey evidence · {} · {} to {}</title>",
        esc(f.framework.as_str()),
        esc(&f.from),
        esc(&f.to)
    ));
    w.push_str("<style>body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#111827}h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #d1d5db;page-break-after:avoid}table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #d1d5db;padding:.25rem .4rem;text-align:left;vertical-align:top;font-size:12px}th{background:#f3f4f6}code,pre{font-family:ui-monospace,monospace;font-size:12px}pre{background:#f9fafb;border:1px solid #e5e7eb;padding:.5rem;white-space:pre-wrap;word-break:break-all}.num{text-align:right}.muted{color:#6b7280}tr{page-break-inside:avoid}@media print{body{margin:0}a{color:inherit}}</style></head><body>");
    w.push_str(&format!(
        "<h1>Compliance evidence: {}</h1><p>Period <strong>{}</strong> to <strong>{}</strong> (end exclusive), from the secondkey audit log <code>{}</code> at size {}.</p>",
        esc(&f.framework_title),
        esc(&f.from),
        esc(&f.to),
        esc(&f.log.origin),
        f.log.size
    ));
    if let Some(text) = incomplete(f) {
        w.push_str(&format!(
            "<p id=\"incomplete\" style=\"border:2px solid #b91c1c;padding:.5rem\"><strong>{}</strong></p>",
            esc(&text)
        ));
    }
    w.push_str(&format!(
        "<p class=\"muted\">Every number below is computed from the log bundle beside this report; <code>secondkey evidence verify</code> computes them again and fails if any differs or if this file was changed. Figures file SHA-256: <code id=\"figures-sha256\">{digest}</code>.</p>"
    ));

    w.push_str("<h2 id=\"controls\">Controls</h2><table><thead><tr><th>Control</th><th>What the log proves</th><th>Evidence</th></tr></thead><tbody>");
    for c in &f.controls {
        let links: Vec<String> = c
            .sections
            .iter()
            .map(|s| format!("<a href=\"#{0}\">{0}</a>", esc(s)))
            .collect();
        w.push_str(&format!(
            "<tr><td><strong>{}</strong><br>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.id),
            esc(&c.title),
            esc(&c.proves),
            links.join(", ")
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str("<h2 id=\"summary\">Summary</h2><table><tbody>");
    for (k, v) in &f.totals {
        w.push_str(&format!(
            "<tr><th>{}</th><td class=\"num\">{v}</td></tr>",
            esc(&k.replace('_', " "))
        ));
    }
    w.push_str("</tbody></table>");
    let l = &f.latency;
    w.push_str(&format!(
        "<h3>Approval latency</h3><p>{} approvals: min {}, median {}, 90th percentile {}, max {}, mean {}.</p>",
        l.approved,
        ms(l.min_ms),
        ms(l.median_ms),
        ms(l.p90_ms),
        ms(l.max_ms),
        ms(l.mean_ms)
    ));

    w.push_str(&format!(
        "<h2 id=\"population\">Privileged actions ({})</h2><p>Every action policy held for human review, requested in the period.</p><table><thead><tr><th>Request</th><th>Requester</th><th>Action</th><th>Requested</th><th>Approvers</th><th>Decided</th><th>Executed</th><th>Result</th><th class=\"num\">Latency</th></tr></thead><tbody>",
        f.privileged.len()
    ));
    for p in &f.privileged {
        let approvers: Vec<String> = p
            .approvers
            .iter()
            .map(|a| {
                format!(
                    "{} ({}, entry {})",
                    esc(&a.by),
                    esc(&a.mark.at),
                    a.mark.index
                )
            })
            .collect();
        w.push_str(&format!(
            "<tr><td><code>{}</code><br><span class=\"muted\">entry {}</span></td><td>{}{}</td><td><code>{}</code> on <code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(&p.request),
            p.requested_index,
            esc(&p.requester),
            p.on_behalf_of.as_deref().map(|o| format!("<br>for {}", esc(o))).unwrap_or_default(),
            esc(&p.action),
            esc(&p.resource),
            p.environment.as_deref().map(|e| format!(" ({})", esc(e))).unwrap_or_default(),
            esc(&p.requested_at),
            if approvers.is_empty() { "—".into() } else { approvers.join("<br>") },
            esc(p.decided_at.as_deref().unwrap_or("—")),
            esc(p.executed_at.as_deref().unwrap_or("—")),
            esc(&p.state),
            p.latency_ms.map(ms).unwrap_or_else(|| "—".into())
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str(&format!(
        "<h2 id=\"exceptions\">Exceptions ({})</h2><table><thead><tr><th>When</th><th>Entry</th><th>Kind</th><th>Who</th><th>Subject</th><th>Detail</th></tr></thead><tbody>",
        f.exceptions.len()
    ));
    for e in &f.exceptions {
        w.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&e.mark.at),
            e.mark.index,
            esc(&e.kind),
            esc(e.actor.as_deref().unwrap_or("")),
            esc(e.subject.as_deref().unwrap_or("")),
            esc(&e.detail)
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str("<h2 id=\"policies\">Policy versions in force</h2><table><thead><tr><th>Since</th><th>Entry</th><th>Event</th><th>Policies</th><th>Policy set SHA-256</th></tr></thead><tbody>");
    for p in &f.policies {
        w.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
            esc(&p.mark.at),
            p.mark.index,
            esc(&p.event),
            p.policies,
            esc(&p.policy_set)
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str("<h2 id=\"principals\">Principals</h2><table><thead><tr><th>Principal</th><th class=\"num\">Actions</th></tr></thead><tbody>");
    for (p, n) in &f.principals {
        w.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
            esc(p)
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str("<h2 id=\"events\">Log entries in the period, by event</h2><table><tbody>");
    for (k, v) in &f.events {
        w.push_str(&format!(
            "<tr><th><code>{}</code></th><td class=\"num\">{v}</td></tr>",
            esc(k)
        ));
    }
    w.push_str("</tbody></table>");

    w.push_str(&format!(
        "<h2 id=\"log\">The log, and how to verify this report</h2><p>Origin <code>{}</code>, {} entries, root <code>{}</code>, checkpoint SHA-256 <code>{}</code>, last entry {}. {}</p>",
        esc(&f.log.origin),
        f.log.size,
        esc(&f.log.root),
        esc(&f.log.checkpoint_sha256),
        esc(f.log.last_entry_at.as_deref().unwrap_or("none")),
        esc(&witnessed(f))
    ));
    if let Some(text) = incomplete(f) {
        w.push_str(&format!("<p><strong>{}</strong></p>", esc(&text)));
    }
    let mut names: Vec<&str> = f
        .log
        .unverified_signatures
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let witness_flags: String = names
        .iter()
        .map(|n| format!(" --witness '<cosigner key of {n}, from that witness>'"))
        .collect();
    let min = if names.is_empty() {
        String::new()
    } else {
        format!(" --min-witnesses {}", names.len())
    };
    w.push_str(&format!(
        "<p>Get the log's verifier key from the operator, out of band, and save it as <code>log.vkey</code>: not from this pack, which could hold a log signed with any key. Then, in the directory holding this report:</p><pre>secondkey log verify --bundle bundle --key log.vkey{}{}\nsecondkey evidence verify . --key log.vkey{}{}</pre><p>The first checks the checkpoint's signature, every entry and the Merkle root; the second also recomputes every figure of this report from the bundle and checks that this file is exactly what those figures render to. <code>evidence verify</code> exits 0 when this report is exactly what the log proves for the whole period, 3 when it is but the log ends before the period's end and no given witness cosigned it at or after that end, and any other status when it fails; <code>--min-witnesses N</code> requires N of the given witnesses to have cosigned at or after the period's end. report.pdf, if present, is a print of this file and is not verified.</p>",
        esc(&witness_flags),
        esc(&min),
        esc(&witness_flags),
        esc(&min)
    ));
    w.push_str("</body></html>\n");
    h
}

/// The figures file of a report as rendered, digested (a report embeds
/// this digest).
pub fn figures_digest(f: &Figures) -> String {
    sha256_hex(to_json(f).as_bytes())
}

/// Differences between two figure sets, as `path: expected → found` lines
/// (empty when equal).
pub fn diff(expected: &Figures, found: &serde_json::Value) -> Vec<String> {
    let exp = serde_json::to_value(expected).unwrap_or_default();
    let mut out = Vec::new();
    diff_values("", &exp, found, &mut out);
    out
}

fn diff_values(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::*;
    if out.len() >= 50 {
        return;
    }
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&std::string::String> =
                x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                    (Some(va), None) => out.push(format!("{p}: {va} → missing")),
                    (None, Some(vb)) => out.push(format!("{p}: absent → {vb}")),
                    (None, None) => {}
                }
            }
        }
        (Array(x), Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{path}: {} items → {}", x.len(), y.len()));
            }
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}/{i}"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}
