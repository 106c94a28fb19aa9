//! OpenLineage run events (spec 2-0-2) for executed actions.
//!
//! One `RunEvent` per executed action: the job is what the principal ran
//! (`<principal>/<kind>.<operation>`), the run is this execution (its id a
//! UUID made from the action's id), its inputs the datasets it read or
//! exported and its outputs what it wrote, and the run facet `secondkey`
//! says which request held it, who approved it and where the log proves it.
//!
//! When: an action an adapter ran (PostgreSQL, MCP, `?execute=true`) is
//! sent when its result is recorded — `COMPLETE`, or `FAIL` when it failed
//! or its outcome is unknown; an action an agent ran itself with a grant
//! is sent when the grant is used (`COMPLETE`), since the gateway learns
//! nothing after that. [`Emitter`] decides this from the log alone.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::history::{ActionRecord, Step, Use};

/// The schema the events follow.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// The `_schemaURL` of the `secondkey` run facet (documented in
/// docs/lineage.md).
pub const FACET_SCHEMA_URL: &str = "urn:secondkey:openlineage:facet:SecondkeyRunFacet:1";

/// The `producer` of every event and facet.
pub fn producer() -> String {
    format!("urn:secondkey:{}", env!("CARGO_PKG_VERSION"))
}

/// A UUID for an action id. Gateway ids carry 48 bits of milliseconds then
/// 80 random bits, like UUIDv7, so they become one (version and variant bits
/// set); any other id is hashed into a version-8 UUID. Stable: the same id
/// always gives the same run id.
pub fn run_id(id: &str) -> String {
    let hexpart = id.split_once('_').map_or(id, |(_, h)| h);
    let mut b = [0u8; 16];
    let (ok, version) = match hex::decode(hexpart) {
        Ok(v) if v.len() == 16 => {
            b.copy_from_slice(&v);
            (true, 0x70)
        }
        _ => (false, 0x80),
    };
    if !ok {
        b.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    }
    b[6] = (b[6] & 0x0f) | version;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An OpenLineage dataset (`namespace`, `name`) for a dataset URI:
/// `postgres://analytics/public.customers` → (`postgres://analytics`,
/// `public.customers`), following the naming conventions' scheme://authority
/// namespaces; a string with no scheme goes to namespace `secondkey`.
pub fn dataset(uri: &str) -> (String, String) {
    if let Some((scheme, rest)) = uri.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let name = if path.is_empty() { authority } else { path };
        (format!("{scheme}://{authority}"), name.to_string())
    } else {
        ("secondkey".into(), uri.to_string())
    }
}

/// The run event of executed action `r`, sent because of log entry
/// `log_index` (its execution or its result). `namespace` is the job
/// namespace; `origin` the log's origin.
pub fn run_event(r: &ActionRecord, namespace: &str, origin: &str, log_index: u64) -> Value {
    let (event_type, at) = match &r.result {
        Some(res) if res.outcome == "failed" || res.outcome == "unknown" => {
            ("FAIL", res.mark.at.clone())
        }
        Some(res) => ("COMPLETE", res.mark.at.clone()),
        None => (
            "COMPLETE",
            r.executed
                .as_ref()
                .map_or(r.decided.at.clone(), |m| m.at.clone()),
        ),
    };
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (d, u) in r.datasets() {
        let (ns, name) = dataset(&d);
        let v = json!({"namespace": ns, "name": name});
        match u {
            Use::Read | Use::Export => inputs.push(v),
            Use::Write => outputs.push(v),
        }
    }
    let producer = producer();
    json!({
        "eventType": event_type,
        "eventTime": at,
        "producer": producer,
        "schemaURL": SCHEMA_URL,
        "run": {
            "runId": run_id(&r.id),
            "facets": {
                "secondkey": {
                    "_producer": producer,
                    "_schemaURL": FACET_SCHEMA_URL,
                    "log_origin": origin,
                    "log_index": log_index,
                    "decision_index": r.decided.index,
                    "execution_index": r.executed.as_ref().map(|m| m.index),
                    "action_id": r.id,
                    "request": if r.held() { Value::from(r.id.clone()) } else { Value::Null },
                    "decision": r.decision,
                    "approvers": r.approvals.iter().map(|a| json!({"principal": a.by, "at": a.mark.at, "log_index": a.mark.index})).collect::<Vec<_>>(),
                    "approved_at": r.approved.as_ref().map(|m| m.at.clone()),
                    "principal": r.principal,
                    "on_behalf_of": r.on_behalf_of,
                    "model": r.model,
                    "environment": r.environment,
                    "transport": r.transport,
                    "digest": r.digest,
                    "action": {"kind": r.kind, "operation": r.operation, "resource": r.resource},
                    "outcome": r.result.as_ref().map(|x| x.outcome.clone()),
                }
            }
        },
        "job": {"namespace": namespace, "name": format!("{}/{}.{}", r.principal, r.kind, r.operation)},
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// Whether a tracker step of `r` is the moment its event is sent (see the
/// module documentation).
pub fn emits(step: Step, r: &ActionRecord) -> bool {
    let adapter_ran = r.execute_mode || r.transport != "api";
    match step {
        Step::Executed => !adapter_ran,
        Step::Result => adapter_ran && r.was_executed(),
        Step::Nothing => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_uuids_and_stable() {
        let a = run_id("act_019ad7c3e1f03f9a0123456789abcdef");
        assert_eq!(a, "019ad7c3-e1f0-7f9a-8123-456789abcdef");
        assert_eq!(a, run_id("act_019ad7c3e1f03f9a0123456789abcdef"));
        let b = run_id("custom-id");
        assert_eq!(b.len(), 36);
        assert_eq!(&b[14..15], "8");
    }

    #[test]
    fn dataset_names() {
        assert_eq!(
            dataset("postgres://analytics/public.customers"),
            ("postgres://analytics".into(), "public.customers".into())
        );
        assert_eq!(
            dataset("s3://reports/q3/x.csv"),
            ("s3://reports".into(), "q3/x.csv".into())
        );
        assert_eq!(
            dataset("mcp://warehouse"),
            ("mcp://warehouse".into(), "warehouse".into())
        );
        assert_eq!(dataset("plain"), ("secondkey".into(), "plain".into()));
    }
}
