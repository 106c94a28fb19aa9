//! Lean statement entries: the statements of one session, logged by shape.
//!
//! An adapter that sees the same statement over and over (a PostgreSQL
//! session running `SELECT … WHERE aid = 17`, then `… = 18`, …) logs the
//! statement's *shape* once per session — its text cut at its literal
//! values, the action around it and the facts the adapter derived — in a
//! [`SHAPE_EVENT`] entry, durable before any statement that uses it runs.
//! Each statement then gets one lean entry that names the shape by digest
//! and carries only what differs: its literal values (`literals`) or its
//! bound parameters (`parameters`, `parameters_sha256`).
//!
//! Nothing is lost. [`Shapes`] rebuilds a lean entry's payload exactly as a
//! full entry holds it — `action` (with `params.statement`) and `facts` in
//! place of the lean fields — and checks that the rebuilt action's digest
//! (SHA-256 of its RFC 8785 form, as the gateway computes it) is the
//! entry's `digest`. So a changed shape or value is caught, and a lean
//! entry whose shape no earlier entry of its session records is an error
//! ([`LeanError::MissingShape`]): its statement cannot be recovered.
//!
//! ```
//! use secondkey_log::lean::{Shape, Shapes};
//! use secondkey_log::entry::Entry;
//! use serde_json::json;
//!
//! let shape = Shape {
//!     text: vec!["SELECT abalance FROM pgbench_accounts WHERE aid = ".into(), ";".into()],
//!     action: json!({"kind": "sql", "operation": "read", "resource": "postgres://bench", "params": {}}),
//!     facts: json!({"protocol": "simple"}),
//! };
//! let digest = shape.digest().unwrap();
//! let entry = |event: &str, payload, digest: Option<String>| Entry {
//!     index: 0, time: "2026-12-03T07:00:00Z".into(), event: event.into(),
//!     actor: Some("agent:bench".into()), subjects: Default::default(), digest, payload,
//! };
//! let mut shapes = Shapes::default();
//! shapes.feed(&entry("statement.shape", shape.entry_payload("pgs_1", &digest), None)).unwrap();
//! let action = shape.action(shape.statement(&["17".into()]).unwrap(), None, None).unwrap();
//! let lean = json!({"decision": "allow", "session": "pgs_1", "shape": digest, "literals": ["17"]});
//! let full = shapes
//!     .feed(&entry("action.allowed", lean, Some(secondkey_log::lean::action_digest(&action).unwrap())))
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(full["action"]["params"]["statement"], "SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::entry::Entry;

/// The event of an entry that records a statement shape.
pub const SHAPE_EVENT: &str = "statement.shape";

/// What a lean entry's payload carries instead of `action` and `facts`.
const LEAN_KEYS: [&str; 5] = [
    "session",
    "shape",
    "literals",
    "parameters",
    "parameters_sha256",
];

/// Why a lean entry cannot be read back.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeanError {
    /// No earlier entry of the session records the shape.
    #[error("entry {index} names statement shape {shape} of session {session}, but no earlier entry of that session records it: the statement's text cannot be recovered from the log")]
    MissingShape {
        /// The lean entry.
        index: u64,
        /// Its session.
        session: String,
        /// The shape digest it names.
        shape: String,
    },
    /// The rebuilt action does not hash to the entry's digest.
    #[error("entry {index}: the statement rebuilt from shape {shape} and the entry's values does not match the entry's action digest (rebuilt {rebuilt}, logged {logged})")]
    DigestMismatch {
        /// The lean entry.
        index: u64,
        /// The shape it names.
        shape: String,
        /// Digest of the rebuilt action.
        rebuilt: String,
        /// The entry's `digest`.
        logged: String,
    },
    /// A shape entry, or a lean entry, is not shaped as this module writes it.
    #[error(
        "entry {index} is not a well-formed statement shape or lean statement entry: {reason}"
    )]
    Malformed {
        /// The entry.
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A statement's shape: what every statement of that shape in one session
/// shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// The statement text cut at its literal values: the text is
    /// `text[0] + literal[0] + text[1] + … + text[n]`. A text without
    /// literals (or one whose values travel as bound parameters) is one
    /// piece.
    pub text: Vec<String>,
    /// The action without `params.statement`, `params.parameters` and
    /// `params.parameters_sha256`.
    pub action: Value,
    /// The facts the adapter derived (what policy saw under
    /// `context.gateway`, besides the gateway's own).
    pub facts: Value,
}

/// The digest of an action as the gateway computes it: lowercase hex
/// SHA-256 of its RFC 8785 form.
pub fn action_digest(action: &Value) -> Result<String, serde_json::Error> {
    Ok(hex::encode(Sha256::digest(secondkey_jcs::to_vec(action)?)))
}

impl Shape {
    /// The shape's digest: SHA-256 of the RFC 8785 form of
    /// `{"action", "facts", "text"}`.
    pub fn digest(&self) -> Result<String, serde_json::Error> {
        action_digest(&json!({"action": self.action, "facts": self.facts, "text": self.text}))
    }

    /// The statement text with `literals` put back in place.
    pub fn statement(&self, literals: &[String]) -> Result<String, String> {
        if self.text.is_empty() || literals.len() + 1 != self.text.len() {
            return Err(format!(
                "the shape has {} literal positions, the entry {} values",
                self.text.len().saturating_sub(1),
                literals.len()
            ));
        }
        let len = self.text.iter().chain(literals).map(String::len).sum();
        let mut out = String::with_capacity(len);
        for (i, piece) in self.text.iter().enumerate() {
            if i > 0 {
                out.push_str(&literals[i - 1]);
            }
            out.push_str(piece);
        }
        Ok(out)
    }

    /// The action of one statement of this shape.
    pub fn action(
        &self,
        statement: String,
        parameters: Option<&Value>,
        parameters_sha256: Option<&Value>,
    ) -> Result<Value, String> {
        let mut action = self.action.clone();
        let params = action
            .get_mut("params")
            .and_then(Value::as_object_mut)
            .ok_or("the shape's action has no params object")?;
        params.insert("statement".into(), Value::String(statement));
        if let Some(p) = parameters {
            params.insert("parameters".into(), p.clone());
        }
        if let Some(h) = parameters_sha256 {
            params.insert("parameters_sha256".into(), h.clone());
        }
        Ok(action)
    }

    /// The payload of the shape's own entry ([`SHAPE_EVENT`]).
    pub fn entry_payload(&self, session: &str, digest: &str) -> Value {
        json!({"session": session, "shape": digest, "text": self.text,
               "action": self.action, "facts": self.facts})
    }
}

/// Whether `payload` (of an entry other than a shape entry) is lean.
pub fn is_lean(event: &str, payload: &Value) -> bool {
    event != SHAPE_EVENT
        && payload.get("shape").is_some_and(Value::is_string)
        && payload.get("session").is_some_and(Value::is_string)
}

/// The shapes recorded so far, by session: feed entries in log order.
#[derive(Debug, Default, Clone)]
pub struct Shapes {
    known: HashMap<(String, String), Shape>,
    lean: u64,
}

/// What [`check_statements`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeanReport {
    /// Shape entries.
    pub shapes: usize,
    /// Lean entries, each rebuilt and matched to its digest.
    pub lean: u64,
}

impl Shapes {
    /// Feeds one entry, in log order. A shape entry is remembered (its
    /// digest checked); a lean entry comes back as the payload a full
    /// entry would carry (`Some`); any other entry gives `None`.
    pub fn feed(&mut self, e: &Entry) -> Result<Option<Value>, LeanError> {
        if e.event == SHAPE_EVENT {
            let bad = |reason: &str| LeanError::Malformed {
                index: e.index,
                reason: reason.to_string(),
            };
            let p = &e.payload;
            let (Some(session), Some(named)) = (
                p.get("session").and_then(Value::as_str),
                p.get("shape").and_then(Value::as_str),
            ) else {
                return Err(bad("a shape entry names its session and digest"));
            };
            let shape = Shape {
                text: serde_json::from_value(p.get("text").cloned().unwrap_or(Value::Null))
                    .map_err(|_| bad("`text` must be an array of strings"))?,
                action: p.get("action").cloned().unwrap_or(Value::Null),
                facts: p.get("facts").cloned().unwrap_or(Value::Null),
            };
            let digest = shape.digest().map_err(|e| bad(&e.to_string()))?;
            if digest != named {
                return Err(bad(&format!(
                    "its content hashes to {digest}, not to the digest it names ({named})"
                )));
            }
            self.known.insert((session.to_string(), digest), shape);
            return Ok(None);
        }
        let full = self.expand(e)?;
        if full.is_some() {
            self.lean += 1;
        }
        Ok(full)
    }

    /// The full payload of a lean entry (`None` if `e` is not lean), from
    /// the shapes fed so far.
    pub fn expand(&self, e: &Entry) -> Result<Option<Value>, LeanError> {
        let p = &e.payload;
        if !is_lean(&e.event, p) {
            return Ok(None);
        }
        let bad = |reason: String| LeanError::Malformed {
            index: e.index,
            reason,
        };
        let session = p["session"].as_str().unwrap_or_default();
        let named = p["shape"].as_str().unwrap_or_default();
        let shape = self
            .known
            .get(&(session.to_string(), named.to_string()))
            .ok_or_else(|| LeanError::MissingShape {
                index: e.index,
                session: session.to_string(),
                shape: named.to_string(),
            })?;
        let literals: Vec<String> = match p.get("literals") {
            None => vec![],
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| bad("`literals` must be an array of strings".into()))?,
        };
        let statement = shape.statement(&literals).map_err(bad)?;
        let action = shape
            .action(statement, p.get("parameters"), p.get("parameters_sha256"))
            .map_err(|m| bad(m.to_string()))?;
        let rebuilt = action_digest(&action).map_err(|e| bad(e.to_string()))?;
        let logged = e.digest.clone().unwrap_or_default();
        if rebuilt != logged {
            return Err(LeanError::DigestMismatch {
                index: e.index,
                shape: named.to_string(),
                rebuilt,
                logged,
            });
        }
        let mut full: Map<String, Value> = p
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !LEAN_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        full.insert("action".into(), action);
        if shape.facts.as_object().is_some_and(|f| !f.is_empty()) {
            full.insert("facts".into(), shape.facts.clone());
        }
        Ok(Some(Value::Object(full)))
    }

    /// Shape entries and lean entries fed so far.
    pub fn report(&self) -> LeanReport {
        LeanReport {
            shapes: self.known.len(),
            lean: self.lean,
        }
    }
}

/// Checks that every lean entry of a log (canonical entry bytes, in log
/// order) names a shape recorded earlier in its session and rebuilds to
/// its digest. Entries that mention no shape are not decoded.
pub fn check_statements<I>(entries: I) -> Result<LeanReport, LeanError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut shapes = Shapes::default();
    for (i, b) in entries.into_iter().enumerate() {
        let b = b.as_ref();
        if !b.windows(8).any(|w| w == b"\"shape\":") {
            continue;
        }
        let e = Entry::from_bytes(b).map_err(|err| LeanError::Malformed {
            index: i as u64,
            reason: err.to_string(),
        })?;
        shapes.feed(&e)?;
    }
    Ok(shapes.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            text: vec![
                "SELECT a FROM t WHERE b = ".into(),
                " AND c = ".into(),
                "".into(),
            ],
            action: json!({"kind": "sql", "operation": "read", "resource": "postgres://db/public.t",
                           "params": {}, "lineage": {"reads": ["postgres://db/public.t"], "writes": []}}),
            facts: json!({"connection": "db", "protocol": "simple", "tables": ["public.t"]}),
        }
    }

    fn entry(index: u64, event: &str, payload: Value, digest: Option<String>) -> Entry {
        Entry {
            index,
            time: "2026-12-03T07:00:00Z".into(),
            event: event.into(),
            actor: Some("agent:a".into()),
            subjects: Default::default(),
            digest,
            payload,
        }
    }

    /// What the gateway would log in full for one statement, and its lean form.
    fn both(s: &Shape, session: &str, literals: &[&str]) -> (Entry, Value) {
        let lits: Vec<String> = literals.iter().map(|s| s.to_string()).collect();
        let action = s.action(s.statement(&lits).unwrap(), None, None).unwrap();
        let digest = action_digest(&action).unwrap();
        let full = json!({"decision": "allow", "action": action, "facts": s.facts,
                          "reasons": [{"policy": "p"}], "transport": "pg", "executed": true});
        let lean = json!({"decision": "allow", "session": session, "shape": s.digest().unwrap(),
                          "literals": lits, "reasons": [{"policy": "p"}], "transport": "pg", "executed": true});
        (entry(5, "action.allowed", lean, Some(digest)), full)
    }

    #[test]
    fn a_lean_entry_expands_to_the_full_payload() {
        let s = shape();
        let mut shapes = Shapes::default();
        let d = s.digest().unwrap();
        assert_eq!(
            shapes
                .feed(&entry(1, SHAPE_EVENT, s.entry_payload("pgs_1", &d), None))
                .unwrap(),
            None
        );
        let (lean, full) = both(&s, "pgs_1", &["42", "'it''s'"]);
        let got = shapes.feed(&lean).unwrap().unwrap();
        assert_eq!(got, full);
        assert_eq!(
            got["action"]["params"]["statement"],
            "SELECT a FROM t WHERE b = 42 AND c = 'it''s'"
        );
        assert_eq!(shapes.report(), LeanReport { shapes: 1, lean: 1 });
    }

    #[test]
    fn bound_parameters_are_put_back() {
        let s = Shape {
            text: vec!["SELECT a FROM t WHERE b = $1".into()],
            ..shape()
        };
        let d = s.digest().unwrap();
        let mut shapes = Shapes::default();
        shapes
            .feed(&entry(0, SHAPE_EVENT, s.entry_payload("pgs_1", &d), None))
            .unwrap();
        let action = s
            .action(
                "SELECT a FROM t WHERE b = $1".into(),
                Some(&json!([7])),
                Some(&json!("ab")),
            )
            .unwrap();
        let lean = json!({"decision": "allow", "session": "pgs_1", "shape": d,
                          "parameters": [7], "parameters_sha256": "ab"});
        let got = shapes
            .feed(&entry(
                1,
                "action.allowed",
                lean,
                Some(action_digest(&action).unwrap()),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(got["action"]["params"]["parameters"], json!([7]));
        assert_eq!(got["action"]["params"]["parameters_sha256"], "ab");
        assert!(got.get("parameters").is_none() && got.get("shape").is_none());
    }

    #[test]
    fn a_missing_shape_is_detected() {
        let s = shape();
        let mut shapes = Shapes::default();
        let (lean, _) = both(&s, "pgs_1", &["1", "2"]);
        assert!(matches!(
            shapes.feed(&lean),
            Err(LeanError::MissingShape { index: 5, .. })
        ));
        // The same shape recorded for another session does not count.
        let d = s.digest().unwrap();
        shapes
            .feed(&entry(0, SHAPE_EVENT, s.entry_payload("pgs_2", &d), None))
            .unwrap();
        assert!(matches!(
            shapes.feed(&lean),
            Err(LeanError::MissingShape { .. })
        ));
    }

    #[test]
    fn changed_values_or_shapes_are_detected() {
        let s = shape();
        let d = s.digest().unwrap();
        let mut shapes = Shapes::default();
        shapes
            .feed(&entry(0, SHAPE_EVENT, s.entry_payload("pgs_1", &d), None))
            .unwrap();
        // A value changed after the fact: the digest no longer matches.
        let (mut lean, _) = both(&s, "pgs_1", &["1", "2"]);
        lean.payload["literals"] = json!(["1", "3"]);
        assert!(matches!(
            shapes.feed(&lean),
            Err(LeanError::DigestMismatch { .. })
        ));
        // Too few values for the shape.
        lean.payload["literals"] = json!(["1"]);
        assert!(matches!(
            shapes.feed(&lean),
            Err(LeanError::Malformed { .. })
        ));
        // A shape entry whose content does not hash to the digest it names.
        let mut forged = s.entry_payload("pgs_1", &d);
        forged["text"][0] = json!("DELETE FROM t WHERE b = ");
        assert!(matches!(
            shapes.feed(&entry(9, SHAPE_EVENT, forged, None)),
            Err(LeanError::Malformed { index: 9, .. })
        ));
    }

    #[test]
    fn check_statements_reads_only_what_names_a_shape() {
        let s = shape();
        let d = s.digest().unwrap();
        let (lean, _) = both(&s, "pgs_1", &["1", "2"]);
        let other = entry(2, "gateway.started", json!({}), None);
        let shape_entry = entry(0, SHAPE_EVENT, s.entry_payload("pgs_1", &d), None);
        let bytes = |e: &Entry, i: u64| {
            let mut e = e.clone();
            e.index = i;
            e.to_bytes().unwrap()
        };
        let log = vec![bytes(&other, 0), bytes(&shape_entry, 1), bytes(&lean, 2)];
        assert_eq!(
            check_statements(&log).unwrap(),
            LeanReport { shapes: 1, lean: 1 }
        );
        let without = vec![bytes(&other, 0), bytes(&lean, 1)];
        assert!(matches!(
            check_statements(&without),
            Err(LeanError::MissingShape { index: 1, .. })
        ));
    }
}
