//! The decision cache: a decision is reused when everything the policies can
//! read is equal.
//!
//! What a decision can depend on: the principal (id, owner, groups), the
//! action's kind, operation, resource and target (the entities), and the
//! context attributes some policy reads. Those are found by walking every
//! policy once at load ([`ContextUse::of`]): `context.x` and `context has x`
//! name a top-level attribute; any other use of `context` (passed whole,
//! compared, …) makes the whole context part of the key. A policy set that
//! reads `context.params` thus keys on the parameter values, one that reads
//! `context.gateway` on every gateway fact.
//!
//! A request that cannot be built (a reserved key in the declared context,
//! a value Cedar cannot represent — anywhere, read or not) is never looked
//! up or stored: it is evaluated fresh and denied with its error.
//!
//! The cache lives in the engine, so a policy reload starts an empty one; a
//! change of a principal's groups or owner changes the key. Keys are full
//! injective encodings, never hashes: a collision must never hand one
//! request another's decision. Bounded: emptied when full.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use cedar_policy::Policy;
use serde_json::{Map, Value};

use crate::engine::Decision;
use crate::types::{Action, Principal};
use secondkey_core::action::RESERVED_CONTEXT_KEYS;

/// Most decisions kept; emptied when full (a miss only costs an evaluation).
const MAX: usize = 8192;

/// Which top-level context attributes the policies read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContextUse {
    /// Only these (sorted).
    Attrs(BTreeSet<String>),
    /// Some policy uses `context` otherwise: all of it.
    All,
}

impl ContextUse {
    /// Walks the policies' JSON form for uses of the `context` variable.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> ContextUse {
        let mut attrs = BTreeSet::new();
        for p in policies {
            let Ok(json) = p.to_json() else {
                return ContextUse::All;
            };
            if !walk(&json, &mut attrs) {
                return ContextUse::All;
            }
        }
        ContextUse::Attrs(attrs)
    }
}

fn is_context_var(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("Var").and_then(Value::as_str) == Some("context"))
}

/// Collects `context.<attr>` / `context has <attr>` into `attrs`; false when
/// `context` is used any other way.
fn walk(v: &Value, attrs: &mut BTreeSet<String>) -> bool {
    match v {
        Value::Object(o) => {
            if is_context_var(v) {
                return false;
            }
            if o.len() == 1 {
                for op in [".", "has"] {
                    if let Some(inner) = o.get(op).and_then(Value::as_object) {
                        if let (Some(left), Some(Value::String(attr))) =
                            (inner.get("left"), inner.get("attr"))
                        {
                            if is_context_var(left) {
                                attrs.insert(attr.clone());
                                return true;
                            }
                        }
                    }
                }
            }
            o.values().all(|x| walk(x, attrs))
        }
        Value::Array(a) => a.iter().all(|x| walk(x, attrs)),
        _ => true,
    }
}

/// Whether building a Cedar value from `v` succeeds (the rules of
/// `request::value`): integers in the 64-bit signed range, no `null` in
/// arrays. Checked on everything, read or not, before the cache is used.
fn representable(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().is_some(),
        Value::Array(a) => a.iter().all(|x| !x.is_null() && representable(x)),
        Value::Object(o) => o.values().all(representable),
        _ => true,
    }
}

/// Decisions by key.
#[derive(Default)]
pub(crate) struct DecisionCache {
    map: Mutex<HashMap<String, Decision>>,
}

impl DecisionCache {
    /// The key of a request, or `None` if it must be evaluated fresh.
    pub fn key(
        uses: &ContextUse,
        principal: &Principal,
        action: &Action,
        facts: &Map<String, Value>,
    ) -> Option<String> {
        if action
            .context
            .keys()
            .any(|k| RESERVED_CONTEXT_KEYS.contains(&k.as_str()))
            || !action.context.values().all(representable)
            || !action.params.values().all(representable)
            || !facts.values().all(representable)
        {
            return None;
        }
        // The entities' key first: principal and the action's entities.
        let mut k = crate::request::EntityCache::key(principal, action);
        let mut part = |s: &str| {
            let _ = write!(k, "{}:{s}", s.len());
        };
        let json = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        let attr = |name: &str| -> String {
            match name {
                "params" => json(&Value::Object(action.params.clone())),
                "gateway" => json(&Value::Object(facts.clone())),
                "lineage" => format!(
                    "{}{}",
                    json(&Value::from(action.lineage.reads.clone())),
                    json(&Value::from(action.lineage.writes.clone()))
                ),
                "justification" => json(&Value::from(
                    action.justification.clone().unwrap_or_default(),
                )),
                declared => match action.context.get(declared) {
                    // Absent and null read the same: the member is dropped.
                    None | Some(Value::Null) => "-".to_owned(),
                    Some(v) => json(v),
                },
            }
        };
        match uses {
            ContextUse::Attrs(names) => {
                for n in names {
                    part(n);
                    part(&attr(n));
                }
            }
            ContextUse::All => {
                for n in RESERVED_CONTEXT_KEYS {
                    part(n);
                    part(&attr(n));
                }
                part("declared");
                part(&json(&Value::Object(action.context.clone())));
            }
        }
        Some(k)
    }

    pub fn get(&self, key: &str) -> Option<Decision> {
        self.map.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: String, d: &Decision) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= MAX {
                m.clear();
            }
            m.insert(key, d.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(src: &str) -> ContextUse {
        let set: cedar_policy::PolicySet = src.parse().unwrap();
        ContextUse::of(set.policies())
    }

    #[test]
    fn finds_the_attributes_policies_read() {
        assert_eq!(
            uses("permit(principal, action, resource);"),
            ContextUse::Attrs(BTreeSet::new())
        );
        let u = uses(
            r#"permit(principal, action, resource) when { context.gateway.environment == "prod" && context has estimated_rows };
               forbid(principal, action, resource) when { context.params.limit > 10 };"#,
        );
        assert_eq!(
            u,
            ContextUse::Attrs(
                ["estimated_rows", "gateway", "params"]
                    .map(String::from)
                    .into()
            )
        );
        assert_eq!(
            uses(r#"permit(principal, action, resource) when { context == {} };"#),
            ContextUse::All
        );
        assert_eq!(
            uses(
                r#"permit(principal, action, resource) when { context["gateway"].transport == "pg" };"#
            ),
            uses(
                r#"permit(principal, action, resource) when { context.gateway.transport == "pg" };"#
            ),
        );
    }
}
