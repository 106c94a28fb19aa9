//! Turning a secondkey principal and action into a Cedar request: the entity
//! store, the request triple and the context record.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use serde_json::Value;

use crate::types::{Action, Principal, PrincipalKind};

/// Context keys only the gateway may fill; an action's declared `context`
/// carrying one of them is refused (core refuses them too; this is the guard
/// at the policy boundary).
pub use secondkey_core::action::RESERVED_CONTEXT_KEYS;

/// Why an action could not be turned into a Cedar request. The decision for
/// such an action is `deny` (fail closed); callers can check earlier with
/// [`check_action`] and answer `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The declared context tried to set a key the gateway owns.
    #[error("context key `{0}` is reserved for the gateway; rename it (reserved: params, lineage, justification, gateway)")]
    ReservedKey(String),
    /// A JSON value Cedar cannot represent.
    #[error("{path}: {problem}")]
    Value {
        /// Where the value sits, e.g. `context.estimated_rows`.
        path: String,
        /// What is wrong and what to send instead.
        problem: String,
    },
    /// Cedar refused to build the request (should not happen for checked input).
    #[error("cannot build the Cedar request: {0}")]
    Cedar(String),
}

/// Checks that an action can be evaluated: no reserved key in its declared
/// context, and only JSON values Cedar can represent (no non-integral numbers,
/// no integers outside the 64-bit signed range, no `null` inside arrays).
pub fn check_action(action: &Action) -> Result<(), RequestError> {
    declared_context(action)?;
    record(&action.params, "params")?;
    Ok(())
}

/// Entity type names, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct TypeNames {
    pub user: EntityTypeName,
    pub agent: EntityTypeName,
    pub service: EntityTypeName,
    pub group: EntityTypeName,
    pub action: EntityTypeName,
    pub resource: EntityTypeName,
}

impl TypeNames {
    pub fn new() -> Self {
        let t = |s: &str| match EntityTypeName::from_str(s) {
            Ok(t) => t,
            // The names are constants of this crate; a failure is a bug here.
            Err(_) => unreachable!("`{s}` is a valid Cedar type name"),
        };
        Self {
            user: t("User"),
            agent: t("Agent"),
            service: t("Service"),
            group: t("Group"),
            action: t("Action"),
            resource: t("Resource"),
        }
    }

    pub fn uid(&self, ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    pub fn action_uid(&self, action: &Action) -> EntityUid {
        self.uid(
            &self.action,
            &format!("{}.{}", action.kind, action.operation),
        )
    }

    pub fn principal_uid(&self, principal: &Principal) -> EntityUid {
        let ty = match principal.id.kind() {
            PrincipalKind::User => &self.user,
            PrincipalKind::Agent => &self.agent,
            PrincipalKind::Service => &self.service,
        };
        self.uid(ty, principal.id.name())
    }
}

/// A Cedar request plus its entities.
pub(crate) struct Built {
    pub request: Request,
    pub entities: Arc<Entities>,
    pub action: EntityUid,
    pub resource: EntityUid,
}

/// The entity store of one request and the uids in it. It depends only on
/// the principal (id, owner, groups) and the action's kind, operation,
/// resource and target — not on the context — so it is cached: Cedar's
/// transitive-closure computation dominated building a request.
#[derive(Clone)]
pub(crate) struct BuiltEntities {
    pub entities: Arc<Entities>,
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
}

/// Most entity stores kept; the cache is emptied when it is full (a bound
/// on memory, not an eviction policy: a miss only costs a rebuild).
const ENTITY_CACHE_MAX: usize = 4096;

/// Entity stores by everything they are built from (full keys: a hash
/// collision must never hand a request someone else's entities).
#[derive(Default)]
pub(crate) struct EntityCache {
    map: Mutex<HashMap<String, BuiltEntities>>,
}

impl EntityCache {
    /// An injective encoding of everything the entities are built from:
    /// each part length-prefixed, so no choice of names makes two
    /// different inputs share a key.
    pub(crate) fn key(principal: &Principal, action: &Action) -> String {
        use std::fmt::Write;
        let mut k = String::with_capacity(160);
        let mut part = |s: &str| {
            let _ = write!(k, "{}:{s}", s.len());
        };
        part(principal.id.as_str());
        part(principal.owner.as_ref().map_or("", |o| o.as_str()));
        part(&principal.groups.len().to_string());
        for g in &principal.groups {
            part(g);
        }
        part(&action.kind);
        part(&action.operation);
        part(&action.resource);
        match &action.target {
            Some(t) => {
                part("t");
                part(t);
            }
            None => part("-"),
        }
        k
    }

    fn get_or_build(
        &self,
        principal: &Principal,
        action: &Action,
        build: impl FnOnce() -> Result<BuiltEntities, RequestError>,
    ) -> Result<BuiltEntities, RequestError> {
        let key = Self::key(principal, action);
        if let Ok(map) = self.map.lock() {
            if let Some(hit) = map.get(&key) {
                return Ok(hit.clone());
            }
        }
        let built = build()?;
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= ENTITY_CACHE_MAX {
                map.clear();
            }
            map.insert(key, built.clone());
        }
        Ok(built)
    }
}

/// Builds the Cedar request. `action_ancestors` are all ancestors of the
/// action entity (its kind group first).
pub(crate) fn build(
    names: &TypeNames,
    cache: &EntityCache,
    principal: &Principal,
    action: &Action,
    action_ancestors: Vec<EntityUid>,
    gateway: &serde_json::Map<String, Value>,
) -> Result<Built, RequestError> {
    let mut pairs = declared_context(action)?;
    pairs.push(("params".to_owned(), record(&action.params, "params")?));
    let set = |items: &[String]| {
        RestrictedExpression::new_set(
            items
                .iter()
                .map(|s| RestrictedExpression::new_string(s.clone())),
        )
    };
    let lineage = RestrictedExpression::new_record([
        ("reads".to_owned(), set(&action.lineage.reads)),
        ("writes".to_owned(), set(&action.lineage.writes)),
    ])
    .map_err(|e| RequestError::Cedar(e.to_string()))?;
    pairs.push(("lineage".to_owned(), lineage));
    pairs.push((
        "justification".to_owned(),
        RestrictedExpression::new_string(action.justification.clone().unwrap_or_default()),
    ));
    pairs.push(("gateway".to_owned(), record(gateway, "gateway")?));
    let context = Context::from_pairs(pairs).map_err(|e| RequestError::Cedar(e.to_string()))?;

    let e = cache.get_or_build(principal, action, || {
        build_entities(names, principal, action, action_ancestors)
    })?;
    let request = Request::new(
        e.principal,
        e.action.clone(),
        e.resource.clone(),
        context,
        None,
    )
    .map_err(|e| RequestError::Cedar(e.to_string()))?;
    Ok(Built {
        request,
        entities: e.entities,
        action: e.action,
        resource: e.resource,
    })
}

fn build_entities(
    names: &TypeNames,
    principal: &Principal,
    action: &Action,
    action_ancestors: Vec<EntityUid>,
) -> Result<BuiltEntities, RequestError> {
    let principal_uid = names.principal_uid(principal);
    let parents: HashSet<EntityUid> = principal
        .groups
        .iter()
        .map(|g| names.uid(&names.group, g))
        .collect();
    let mut attrs = HashMap::new();
    if principal.id.kind() == PrincipalKind::Agent {
        if let Some(owner) = &principal.owner {
            attrs.insert(
                "owner".to_owned(),
                RestrictedExpression::new_entity_uid(names.uid(&names.user, owner.name())),
            );
        }
    }
    let principal_entity = Entity::new(principal_uid.clone(), attrs, parents)
        .map_err(|e| RequestError::Cedar(e.to_string()))?;

    let action_uid = names.action_uid(action);
    let action_entity =
        Entity::new_no_attrs(action_uid.clone(), action_ancestors.into_iter().collect());

    let resource_uid = names.uid(&names.resource, &action.resource);
    let mut rattrs = HashMap::from([
        (
            "uri".to_owned(),
            RestrictedExpression::new_string(action.resource.clone()),
        ),
        (
            "kind".to_owned(),
            RestrictedExpression::new_string(action.kind.clone()),
        ),
        (
            "operation".to_owned(),
            RestrictedExpression::new_string(action.operation.clone()),
        ),
    ]);
    if let Some(t) = &action.target {
        rattrs.insert(
            "target".to_owned(),
            RestrictedExpression::new_string(t.clone()),
        );
    }
    let resource_entity = Entity::new(resource_uid.clone(), rattrs, HashSet::new())
        .map_err(|e| RequestError::Cedar(e.to_string()))?;

    let entities =
        Entities::from_entities([principal_entity, action_entity, resource_entity], None)
            .map_err(|e| RequestError::Cedar(e.to_string()))?;
    Ok(BuiltEntities {
        entities: Arc::new(entities),
        principal: principal_uid,
        action: action_uid,
        resource: resource_uid,
    })
}

fn declared_context(action: &Action) -> Result<Vec<(String, RestrictedExpression)>, RequestError> {
    let mut pairs = Vec::with_capacity(action.context.len() + 4);
    for (k, v) in &action.context {
        if RESERVED_CONTEXT_KEYS.contains(&k.as_str()) {
            return Err(RequestError::ReservedKey(k.clone()));
        }
        if v.is_null() {
            continue;
        }
        pairs.push((k.clone(), value(v, &format!("context.{k}"))?));
    }
    Ok(pairs)
}

/// A JSON object as a Cedar record. `null` members are left out: the sender
/// could have omitted them, so dropping them grants nothing.
fn record(
    map: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<RestrictedExpression, RequestError> {
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        if v.is_null() {
            continue;
        }
        fields.push((k.clone(), value(v, &format!("{path}.{k}"))?));
    }
    RestrictedExpression::new_record(fields).map_err(|e| RequestError::Value {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn value(v: &Value, path: &str) -> Result<RestrictedExpression, RequestError> {
    Ok(match v {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => {
                let problem = if n.is_f64() {
                    format!("{n} is not an integer; Cedar has only 64-bit integers, so send a whole number (e.g. scale it) or a string")
                } else {
                    format!("{n} does not fit in a 64-bit signed integer; send it as a string")
                };
                return Err(RequestError::Value {
                    path: path.to_owned(),
                    problem,
                });
            }
        },
        // A list is a Cedar set, which keeps neither order nor repeats;
        // Cedar has no null, so a null item is left out of it as a null
        // member of a record is (a SQL NULL parameter, a JSON null in a
        // tool's argument list). The logged action keeps the whole list.
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if !item.is_null() {
                    out.push(value(item, &format!("{path}[{i}]"))?);
                }
            }
            RestrictedExpression::new_set(out)
        }
        Value::Object(map) => record(map, path)?,
        Value::Null => {
            return Err(RequestError::Value {
                path: path.to_owned(),
                problem: "null has no Cedar equivalent; omit the key".to_owned(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(context: Value) -> Action {
        Action {
            kind: "sql".into(),
            operation: "read".into(),
            resource: "postgres://db/t".into(),
            context: context.as_object().cloned().unwrap_or_default(),
            ..Action::default()
        }
    }

    #[test]
    fn reserved_keys_are_refused() {
        for k in RESERVED_CONTEXT_KEYS {
            let a = action(json!({ k: "x" }));
            assert_eq!(
                check_action(&a),
                Err(RequestError::ReservedKey(k.to_owned()))
            );
        }
    }

    #[test]
    fn numbers() {
        assert!(check_action(&action(json!({"n": 5, "m": -3, "o": {"p": [1, 2]}}))).is_ok());
        assert!(
            check_action(&action(json!({"n": 2.0}))).is_err(),
            "floats are refused even when whole"
        );
        let err = check_action(&action(json!({"n": 1.5}))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("context.n: 1.5 is not an integer"),
            "{err}"
        );
        let err = check_action(&action(json!({"n": u64::MAX}))).unwrap_err();
        assert!(err.to_string().contains("64-bit"), "{err}");
        let mut a = action(json!({}));
        a.params.insert("x".into(), json!([0.5]));
        assert_eq!(
            check_action(&a).unwrap_err().to_string().split(':').next(),
            Some("params.x[0]")
        );
    }

    #[test]
    fn nulls() {
        assert!(check_action(&action(json!({"n": null, "o": {"p": null}}))).is_ok());
        // A null item of a list is left out of the set, at any depth; what
        // is around it is still checked.
        assert!(check_action(&action(json!({"n": [null, 1, [null]]}))).is_ok());
        let err = check_action(&action(json!({"n": [null, 1.5]}))).unwrap_err();
        assert!(err.to_string().starts_with("context.n[1]: 1.5"), "{err}");
        // A bare null stays refused where it can only be a value.
        assert!(value(&Value::Null, "x").is_err());
    }
}
