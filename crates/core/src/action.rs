//! Actions — what an agent intends to do — and their digests.
//!
//! An action arrives as JSON. [`Action::from_json`] validates it and computes
//! its [`Digest`]: the SHA-256 of the RFC 8785 (JCS) canonical form of the JSON
//! *exactly as submitted*. Approvals and grants are bound to that digest, so a
//! changed parameter yields a different digest and executes nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::principal::{PrincipalError, PrincipalId, PrincipalKind};

/// Longest `resource`, `target` and lineage entry, in characters.
pub const MAX_RESOURCE_CHARS: usize = 2048;
/// Longest `justification`, in characters.
pub const MAX_JUSTIFICATION_CHARS: usize = 4096;
/// Longest string anywhere in the action (params, context), in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Longest object key anywhere in the action, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Deepest nesting of objects and arrays; the action object itself is depth 1.
pub const MAX_DEPTH: usize = 32;
/// Most JSON values (of any type) in one action.
pub const MAX_VALUES: usize = 100_000;
/// Most entries in `lineage.reads` or `lineage.writes`.
pub const MAX_LINEAGE_ENTRIES: usize = 1024;
/// Largest integer magnitude that survives the IEEE-754 doubles of RFC 8785
/// exactly (2^53 - 1). Larger integers would digest like their neighbours.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Context keys reserved for gateway-derived facts and policy inputs: an agent
/// may not declare them, so policy can tell what the gateway knows from what
/// the agent claims (invariant 8).
pub const RESERVED_CONTEXT_KEYS: [&str; 4] = ["gateway", "params", "lineage", "justification"];

const FIELDS: [&str; 9] = [
    "kind",
    "operation",
    "resource",
    "target",
    "params",
    "justification",
    "on_behalf_of",
    "context",
    "lineage",
];

/// Why an action was rejected. Each variant has a stable [`code`](Self::code)
/// for clients and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The action is not a JSON object.
    #[error("an action must be a JSON object, got {found}; send {{\"kind\":…,\"operation\":…,\"resource\":…}}")]
    NotAnObject {
        /// The JSON type that was sent instead.
        found: &'static str,
    },
    /// A field the contract does not define (typos would otherwise be ignored).
    #[error("unknown field {field:?}; allowed fields are kind, operation, resource, target, params, justification, on_behalf_of, context, lineage (lineage: reads, writes)")]
    UnknownField {
        /// The offending field, e.g. `lineage.read`.
        field: String,
    },
    /// A required field is absent.
    #[error("missing field {field:?}; every action needs kind, operation and resource")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong type or an invalid value.
    #[error("field {field:?} is invalid: {reason}")]
    InvalidField {
        /// The field, e.g. `kind` or `lineage.reads[2]`.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// `on_behalf_of` is not a valid principal id.
    #[error("field \"on_behalf_of\" is invalid: {0}")]
    InvalidPrincipal(PrincipalError),
    /// `on_behalf_of` names an agent or a service: it names the human an
    /// action is done for, and only humans are ever acted for.
    #[error("field \"on_behalf_of\" names {0}, but it names the human an action is done for (user:NAME), never an agent or a service")]
    OnBehalfOfNotHuman(PrincipalId),
    /// The agent used a context key reserved for the gateway.
    #[error("context key {key:?} is reserved for facts the gateway derives; rename it (e.g. \"declared_{key}\")")]
    ReservedContextKey {
        /// The reserved key.
        key: String,
    },
    /// Objects and arrays nest too deeply.
    #[error(
        "the action nests deeper than {MAX_DEPTH} levels at {path}; flatten params or context"
    )]
    TooDeep {
        /// Where the limit was crossed.
        path: String,
    },
    /// A string, key, list or the whole action is too large.
    #[error("{what} at {path} is too large (limit {limit}); move bulk data out of the action")]
    TooLarge {
        /// What exceeded its limit.
        what: &'static str,
        /// Where.
        path: String,
        /// The limit that applies.
        limit: usize,
    },
    /// An integer RFC 8785 cannot represent exactly.
    #[error("the number at {path} is beyond ±2^53-1 and would lose precision in the digest; send it as a string")]
    UnsafeInteger {
        /// Where.
        path: String,
    },
    /// The canonical form could not be produced.
    #[error("the action cannot be canonicalized (RFC 8785): {0}")]
    Canonicalization(String),
    /// The bytes are not JSON, or an object repeats a key (I-JSON forbids it,
    /// and parsers disagree on which duplicate wins).
    #[error("the action is not valid JSON: {0}; send one JSON object with each key once")]
    InvalidJson(String),
}

impl ActionError {
    /// A stable, machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NotAnObject { .. } | ActionError::Canonicalization(_) => "invalid_action",
            ActionError::UnknownField { .. } => "unknown_field",
            ActionError::MissingField { .. } => "missing_field",
            ActionError::InvalidField { .. } => "invalid_field",
            ActionError::InvalidPrincipal(_) => "invalid_principal",
            ActionError::OnBehalfOfNotHuman(_) => "on_behalf_of_not_human",
            ActionError::ReservedContextKey { .. } => "reserved_context_key",
            ActionError::TooDeep { .. } => "too_deep",
            ActionError::TooLarge { .. } => "too_large",
            ActionError::UnsafeInteger { .. } => "unsafe_integer",
            ActionError::InvalidJson(_) => "invalid_json",
        }
    }
}

/// The lowercase hex SHA-256 of an action's RFC 8785 canonical JSON.
///
/// Approvals, grants and log entries name an action by its digest, so what
/// was reviewed is exactly what may run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {0:?} is not 64 lowercase hex characters (a SHA-256); send the digest the gateway returned")]
pub struct DigestError(pub String);

impl Digest {
    /// Digests a JSON value as-is: SHA-256 over its RFC 8785 canonical form.
    /// Does not validate it as an action; see [`Action::from_json`].
    pub fn of_json(value: &Value) -> Result<Digest, ActionError> {
        Digest::of_json_sized(value).map(|(d, _)| d)
    }

    /// [`Digest::of_json`], with the length of the canonical JSON digested.
    pub fn of_json_sized(value: &Value) -> Result<(Digest, usize), ActionError> {
        let canonical = secondkey_jcs::to_vec(value)
            .map_err(|e| ActionError::Canonicalization(e.to_string()))?;
        Ok((
            Digest(hex::encode(Sha256::digest(&canonical))),
            canonical.len(),
        ))
    }

    /// Parses a digest a client sent back (64 lowercase hex characters).
    pub fn from_hex(s: &str) -> Result<Digest, DigestError> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Digest(s.to_string()))
        } else {
            Err(DigestError(s.chars().take(80).collect()))
        }
    }

    /// The hex string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::from_hex(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Datasets an action reads and writes, for lineage reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// Dataset URIs read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// Dataset URIs written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
}

impl Lineage {
    fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }
}

/// What an agent intends to do (the brief's "Action" contract).
///
/// Build one with [`Action::from_json`], which validates and digests the JSON
/// as submitted; the struct is the typed view the policy engine reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// `sql`, `mcp`, `http`, `exec` or a custom lowercase word.
    pub kind: String,
    /// A verb class: `read`, `write`, `delete`, `ddl`, `grant`, `export`, …
    pub operation: String,
    /// A URI-like string naming what is acted on.
    pub resource: String,
    /// A finer target within the resource, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The exact parameters (statement, tool arguments, request body, …).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Why the agent wants to do this, shown to reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// The human this action is done for, as the agent declares it (a user
    /// id; [`Action::from_json`] refuses agents and services). Declared
    /// only: whether it counts — bars that human from reviewing, lets them
    /// see the request — is the gateway's call
    /// ([`crate::request::Request::acting_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<PrincipalId>,
    /// What the agent declares: environment, model, estimates, … (Cedar's
    /// context). Reserved keys are refused; see [`RESERVED_CONTEXT_KEYS`].
    /// Numbers in it, as in `params`, are in their canonical form (see
    /// [`Action::from_json`]).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
    /// What the action reads and writes.
    #[serde(default, skip_serializing_if = "Lineage::is_empty")]
    pub lineage: Lineage,
}

impl Action {
    /// Validates action JSON and computes its digest over the JSON exactly as
    /// submitted (so adding a field with its default value changes the
    /// digest, and re-serializing the struct is never what gets digested).
    ///
    /// **One digest, one meaning.** RFC 8785 writes `100`, `1E2`, `100.0`
    /// and `1.0e2` alike (and `-0` as `0`), so they share a digest. The typed
    /// action that policy reads holds every number of `params` and
    /// `context` in that same canonical form: a double with an integral
    /// value becomes the integer it denotes. Two submissions with one
    /// digest are then one action to policy too, and get one decision.
    pub fn from_json(raw: &Value) -> Result<(Action, Digest), ActionError> {
        Action::from_json_sized(raw).map(|(a, d, _)| (a, d))
    }

    /// [`Action::from_json`], with the length in bytes of the canonical
    /// JSON that was digested (what the action weighs in a log entry).
    pub fn from_json_sized(raw: &Value) -> Result<(Action, Digest, usize), ActionError> {
        let obj = raw.as_object().ok_or(ActionError::NotAnObject {
            found: type_name(raw),
        })?;
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) {
                return Err(ActionError::UnknownField { field: key.clone() });
            }
        }
        check_limits(raw)?;

        let kind = word(obj, "kind")?;
        let operation = word(obj, "operation")?;
        let resource = match obj.get("resource") {
            None => return Err(ActionError::MissingField { field: "resource" }),
            Some(v) => uri_like("resource", v)?,
        };
        let target = match obj.get("target") {
            None | Some(Value::Null) => None,
            Some(v) => Some(uri_like("target", v)?),
        };
        let mut params = object(obj, "params")?;
        params.values_mut().for_each(canonical_numbers);
        let justification = match obj.get("justification") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                if s.chars().count() > MAX_JUSTIFICATION_CHARS {
                    return Err(invalid(
                        "justification",
                        format!("at most {MAX_JUSTIFICATION_CHARS} characters"),
                    ));
                }
                if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(invalid(
                        "justification",
                        "control characters other than newline and tab are not allowed",
                    ));
                }
                Some(s.clone())
            }
            Some(v) => return Err(wrong_type("justification", "a string", v)),
        };
        let on_behalf_of = match obj.get("on_behalf_of") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let id = PrincipalId::parse(s).map_err(ActionError::InvalidPrincipal)?;
                if id.kind() != PrincipalKind::User {
                    return Err(ActionError::OnBehalfOfNotHuman(id));
                }
                Some(id)
            }
            Some(v) => return Err(wrong_type("on_behalf_of", "a principal id string", v)),
        };
        let mut context = object(obj, "context")?;
        context.values_mut().for_each(canonical_numbers);
        if let Some(key) = context
            .keys()
            .find(|k| RESERVED_CONTEXT_KEYS.contains(&k.as_str()))
        {
            return Err(ActionError::ReservedContextKey { key: key.clone() });
        }
        let lineage = lineage(obj)?;

        let (digest, size) = Digest::of_json_sized(raw)?;
        let action = Action {
            kind,
            operation,
            resource,
            target,
            params,
            justification,
            on_behalf_of,
            context,
            lineage,
        };
        Ok((action, digest, size))
    }

    /// Parses action bytes strictly (a repeated object key is an error, not
    /// "last one wins"), then validates and digests them like
    /// [`Action::from_json`]. Returns the parsed JSON too, since that is what
    /// was digested and what should be logged and executed.
    pub fn from_slice(bytes: &[u8]) -> Result<(Value, Action, Digest), ActionError> {
        let raw = parse_json_strict(bytes)?;
        let (action, digest) = Action::from_json(&raw)?;
        Ok((raw, action, digest))
    }

    /// Serializes this action (omitting empty optional fields), validates the
    /// result and digests it: how an adapter that builds actions in code gets
    /// the same JSON and digest the gateway computes on submission.
    pub fn canonical(&self) -> Result<(Value, Digest), ActionError> {
        let raw =
            serde_json::to_value(self).map_err(|e| ActionError::Canonicalization(e.to_string()))?;
        let (_, digest) = Action::from_json(&raw)?;
        Ok((raw, digest))
    }

    /// The Cedar action id, `"<kind>.<operation>"`.
    pub fn cedar_action_id(&self) -> String {
        format!("{}.{}", self.kind, self.operation)
    }
}

/// Parses JSON, refusing objects that repeat a key anywhere.
///
/// `serde_json` keeps the last duplicate silently; another parser downstream
/// might keep the first, so two readers could see different actions behind
/// one digest. Refusing duplicates removes the ambiguity.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, ActionError> {
    parse_strict(bytes).map_err(ActionError::InvalidJson)
}

/// [`parse_json_strict`] for JSON that is not an action (a request body,
/// an OpenAPI document, a JSON-RPC message): the error is the parser's own
/// words (`the key "a" appears twice in one object at line 1 column 10`),
/// for the caller to say what was being read.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(v) = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {:?} appears twice in one object",
                    key.chars().take(64).collect::<String>()
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ActionError {
    ActionError::InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ActionError {
    invalid(
        field,
        format!("expected {expected}, got {}", type_name(got)),
    )
}

/// `kind` and `operation`: `[a-z][a-z0-9_-]{0,31}`.
fn word(obj: &Map<String, Value>, field: &'static str) -> Result<String, ActionError> {
    let s = match obj.get(field) {
        None => return Err(ActionError::MissingField { field }),
        Some(Value::String(s)) => s,
        Some(v) => return Err(wrong_type(field, "a string", v)),
    };
    let ok = s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(invalid(
            field,
            format!(
                "{s:?} must be a lowercase word of 1-32 characters: a-z first, then a-z 0-9 _ -"
            ),
        ));
    }
    Ok(s.clone())
}

/// `resource`, `target` and lineage entries: non-empty, bounded, printable.
fn uri_like(field: &str, v: &Value) -> Result<String, ActionError> {
    let s = v.as_str().ok_or_else(|| wrong_type(field, "a string", v))?;
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.chars().count() > MAX_RESOURCE_CHARS {
        return Err(invalid(
            field,
            format!("at most {MAX_RESOURCE_CHARS} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(s.to_string())
}

/// Rewrites the numbers in `v` to the value their RFC 8785 form denotes: a
/// double with an integral value (`1E2`, `100.0`, `-0`) becomes that
/// integer (`100`, `0`). Other doubles already read back as themselves.
/// Runs after [`check_limits`], so every double here is within ±(2^53 − 1)
/// and the conversion is exact.
fn canonical_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_numbers),
        Value::Object(m) => m.values_mut().for_each(canonical_numbers),
        _ => {}
    }
}

fn object(obj: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, ActionError> {
    match obj.get(field) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(v) => Err(wrong_type(field, "an object", v)),
    }
}

fn lineage(obj: &Map<String, Value>) -> Result<Lineage, ActionError> {
    let m = match obj.get("lineage") {
        None => return Ok(Lineage::default()),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(wrong_type("lineage", "an object with reads and writes", v)),
    };
    if let Some(k) = m.keys().find(|k| *k != "reads" && *k != "writes") {
        return Err(ActionError::UnknownField {
            field: format!("lineage.{k}"),
        });
    }
    let list = |name: &str| -> Result<Vec<String>, ActionError> {
        let field = format!("lineage.{name}");
        let items = match m.get(name) {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(wrong_type(&field, "an array of dataset URIs", v)),
        };
        if items.len() > MAX_LINEAGE_ENTRIES {
            return Err(ActionError::TooLarge {
                what: "the list",
                path: field,
                limit: MAX_LINEAGE_ENTRIES,
            });
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| uri_like(&format!("{field}[{i}]"), v))
            .collect()
    };
    Ok(Lineage {
        reads: list("reads")?,
        writes: list("writes")?,
    })
}

/// One step of a path into the action, for error messages.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn render(path: &[Seg<'_>]) -> String {
    let mut out = String::from("$");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                out.push('.');
                out.extend(k.chars().take(64));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Depth, size and number limits over the whole value, before anything else
/// looks inside it.
fn check_limits(raw: &Value) -> Result<(), ActionError> {
    let mut path = Vec::new();
    let mut count = 0usize;
    walk(raw, 1, &mut path, &mut count)
}

fn walk<'a>(
    v: &'a Value,
    depth: usize,
    path: &mut Vec<Seg<'a>>,
    count: &mut usize,
) -> Result<(), ActionError> {
    *count += 1;
    if *count > MAX_VALUES {
        return Err(ActionError::TooLarge {
            what: "the number of JSON values",
            path: render(path),
            limit: MAX_VALUES,
        });
    }
    match v {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) => {
            let safe = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= MAX_SAFE_INTEGER,
                (None, Some(i)) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
                // A finite f64: past 2^53 it is an integer too, whose
                // canonical form (plain digits below 1e21) would read
                // back as an unsafe integer.
                (None, None) => n
                    .as_f64()
                    .is_some_and(|f| f.abs() <= MAX_SAFE_INTEGER as f64),
            };
            if safe {
                Ok(())
            } else {
                Err(ActionError::UnsafeInteger { path: render(path) })
            }
        }
        Value::String(s) => {
            if s.len() > MAX_STRING_BYTES {
                return Err(ActionError::TooLarge {
                    what: "a string",
                    path: render(path),
                    limit: MAX_STRING_BYTES,
                });
            }
            Ok(())
        }
        Value::Array(items) => {
            if depth > MAX_DEPTH {
                return Err(ActionError::TooDeep { path: render(path) });
            }
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                walk(item, depth + 1, path, count)?;
                path.pop();
            }
            Ok(())
        }
        Value::Object(m) => {
            if depth > MAX_DEPTH {
                return Err(ActionError::TooDeep { path: render(path) });
            }
            for (k, item) in m {
                path.push(Seg::Key(k));
                if k.len() > MAX_KEY_BYTES {
                    return Err(ActionError::TooLarge {
                        what: "an object key",
                        path: render(path),
                        limit: MAX_KEY_BYTES,
                    });
                }
                walk(item, depth + 1, path, count)?;
                path.pop();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    fn digest_of(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        Digest::of_json(&v).unwrap().as_str().to_string()
    }

    fn minimal() -> Value {
        json!({"kind": "sql", "operation": "read", "resource": "db://prod/customers"})
    }

    fn err(v: Value) -> ActionError {
        Action::from_json(&v).unwrap_err()
    }

    fn with(key: &str, val: Value) -> Value {
        let mut v = minimal();
        v.as_object_mut().unwrap().insert(key.into(), val);
        v
    }

    #[test]
    fn parses_full_action() {
        let raw = json!({
            "kind": "sql", "operation": "export", "resource": "db://prod/customers",
            "target": "customers", "params": {"sql": "SELECT * FROM customers"},
            "justification": "quarterly report\nfor finance", "on_behalf_of": "user:alice",
            "context": {"environment": "prod", "estimated_rows": 120000},
            "lineage": {"reads": ["db://prod/customers"], "writes": ["s3://exports/q3.csv"]}
        });
        let (a, d) = Action::from_json(&raw).unwrap();
        assert_eq!(a.cedar_action_id(), "sql.export");
        assert_eq!(
            a.on_behalf_of.as_ref().map(|p| p.as_str()),
            Some("user:alice")
        );
        assert_eq!(a.lineage.writes, vec!["s3://exports/q3.csv".to_string()]);
        assert_eq!(d.as_str().len(), 64);
        // The typed view round-trips through serde (the store persists it).
        let back: Action = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn digest_is_of_the_json_as_submitted() {
        let (_, d1) = Action::from_json(&minimal()).unwrap();
        let (_, d2) = Action::from_json(&with("params", json!({}))).unwrap();
        assert_ne!(
            d1, d2,
            "an explicit default field is part of what was submitted"
        );
        // Key order does not matter.
        let reordered: Value = serde_json::from_str(
            r#"{"resource":"db://prod/customers","operation":"read","kind":"sql"}"#,
        )
        .unwrap();
        assert_eq!(Action::from_json(&reordered).unwrap().1, d1);
        assert_eq!(
            d1.as_str(),
            sha(r#"{"kind":"sql","operation":"read","resource":"db://prod/customers"}"#)
        );
        // A changed parameter changes the digest.
        let a = with("params", json!({"limit": 10}));
        let b = with("params", json!({"limit": 11}));
        assert_ne!(
            Action::from_json(&a).unwrap().1,
            Action::from_json(&b).unwrap().1
        );
    }

    #[test]
    fn canonical_matches_from_json_for_built_actions() {
        let a = Action {
            kind: "http".into(),
            operation: "write".into(),
            resource: "https://api.example/x".into(),
            ..Action::default()
        };
        let (raw, d) = a.canonical().unwrap();
        assert_eq!(
            raw,
            json!({"kind":"http","operation":"write","resource":"https://api.example/x"})
        );
        assert_eq!(Action::from_json(&raw).unwrap(), (a, d));
    }

    /// RFC 8785 behaviour: key order by UTF-16 code units, ECMAScript number
    /// formatting, minimal string escaping.
    #[test]
    fn jcs_vectors() {
        assert_eq!(digest_of(r#"{"b":1,"a":2}"#), sha(r#"{"a":2,"b":1}"#));
        assert_eq!(digest_of("1e30"), sha("1e+30"));
        assert_eq!(digest_of("4.50"), sha("4.5"));
        assert_eq!(digest_of("-0"), sha("0"));
        assert_eq!(digest_of("-0.0"), sha("0"));
        assert_eq!(digest_of("1E2"), sha("100"));
        assert_eq!(digest_of("0.000001"), sha("0.000001"));
        assert_eq!(digest_of("1e-7"), sha("1e-7"));
        assert_eq!(digest_of("[1.0, 2.50, 1e21]"), sha("[1,2.5,1e+21]"));
        assert_eq!(digest_of(r#""\u0041\u00e9\u20ac""#), sha("\"Aé€\""));
        assert_eq!(
            digest_of(r#""\u000f\n\"\\/""#),
            sha("\"\\u000f\\n\\\"\\\\/\"")
        );
        assert_eq!(digest_of(r#""\u007f""#), sha("\"\u{7f}\""));
        // RFC 8785 §3.2.3 sorting example: by UTF-16 code units, so the
        // astral U+1F600 (0xD83D…) sorts before U+FB33 (0xFB33).
        let sorted = digest_of(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        );
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(sorted, sha(expected));
        // RFC 8785 §3.2.2 example.
        let example = digest_of(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}"#,
        );
        let expected = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(example, sha(expected));
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            Action::from_json(&json!([1])).unwrap_err().code(),
            "invalid_action"
        );
        assert_eq!(err(with("colour", json!("red"))).code(), "unknown_field");
        assert_eq!(
            err(with("lineage", json!({"read": []}))).code(),
            "unknown_field"
        );
        assert_eq!(
            err(json!({"kind": "sql", "operation": "read"})).code(),
            "missing_field"
        );
        assert_eq!(err(with("kind", json!("SQL"))).code(), "invalid_field");
        assert_eq!(
            err(with("kind", json!("a".repeat(33)))).code(),
            "invalid_field"
        );
        assert!(Action::from_json(&with("kind", json!("a".repeat(32)))).is_ok());
        assert_eq!(err(with("kind", json!("9sql"))).code(), "invalid_field");
        assert_eq!(err(with("operation", json!(7))).code(), "invalid_field");
        assert_eq!(err(with("resource", json!(""))).code(), "invalid_field");
        assert_eq!(
            err(with("resource", json!("a\u{0}b"))).code(),
            "invalid_field"
        );
        assert_eq!(
            err(with("resource", json!("r".repeat(2049)))).code(),
            "invalid_field"
        );
        assert_eq!(err(with("target", json!("t\n"))).code(), "invalid_field");
        assert_eq!(err(with("params", json!([]))).code(), "invalid_field");
        assert_eq!(
            err(with("justification", json!("x\u{7}"))).code(),
            "invalid_field"
        );
        assert_eq!(
            err(with("on_behalf_of", json!("alice"))).code(),
            "invalid_principal"
        );
        for not_human in ["agent:ghost", "service:ci", "Agent:Report-Bot"] {
            assert_eq!(
                err(with("on_behalf_of", json!(not_human))).code(),
                "on_behalf_of_not_human",
                "{not_human}"
            );
        }
        let (a, _) = Action::from_json(&with("on_behalf_of", json!("User:Carol"))).unwrap();
        assert_eq!(a.on_behalf_of.unwrap().as_str(), "user:carol");
        for key in RESERVED_CONTEXT_KEYS {
            let e = err(with("context", json!({ key: 1 })));
            assert_eq!(e.code(), "reserved_context_key");
            assert!(e.to_string().contains(key));
        }
        assert_eq!(
            err(with("lineage", json!({"reads": [""]}))).code(),
            "invalid_field"
        );
        assert_eq!(
            err(with("params", json!({"n": 9_007_199_254_740_992u64}))).code(),
            "unsafe_integer"
        );
        assert_eq!(
            err(with("params", json!({"n": -9_007_199_254_740_992i64}))).code(),
            "unsafe_integer"
        );
        assert!(Action::from_json(&with("params", json!({"n": 9_007_199_254_740_991u64}))).is_ok());
        // The same bound for numbers written as doubles: 1e16 canonicalizes
        // to 10000000000000000, an unsafe integer.
        for big in [1e16, -1e16, 6.505955555555555e20, 1e300] {
            assert_eq!(
                err(with("params", json!({"n": big}))).code(),
                "unsafe_integer",
                "{big}"
            );
        }
        assert!(Action::from_json(&with("params", json!({"n": 9007199254740990.5}))).is_ok());
        assert!(Action::from_json(&with("params", json!({"n": 1.5e-300}))).is_ok());
        assert_eq!(
            err(with(
                "params",
                json!({"s": "x".repeat(MAX_STRING_BYTES + 1)})
            ))
            .code(),
            "too_large"
        );
        assert_eq!(
            err(with("params", json!({ "k".repeat(257): 1 }))).code(),
            "too_large"
        );
        // Nulls for optional strings are accepted as absent.
        assert!(Action::from_json(&with("target", Value::Null)).is_ok());
    }

    #[test]
    fn strict_parsing() {
        let text = br#"{"kind":"sql","operation":"read","resource":"db://x","params":{"n":1.5,"s":"\u00e9","a":[null,true,-3]}}"#;
        let (raw, action, digest) = Action::from_slice(text).unwrap();
        assert_eq!(raw, serde_json::from_slice::<Value>(text).unwrap());
        assert_eq!(Action::from_json(&raw).unwrap(), (action, digest));
        for bad in [
            &br#"{"kind":"sql","kind":"mcp","operation":"read","resource":"x"}"#[..],
            br#"{"kind":"sql","operation":"read","resource":"x","params":{"a":1,"a":2}}"#,
            br#"{"kind":"sql","operation":"read","resource":"x"} trailing"#,
            b"{",
            b"",
        ] {
            assert_eq!(Action::from_slice(bad).unwrap_err().code(), "invalid_json");
        }
        // serde_json's own recursion limit still applies
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_json_strict(deep.as_bytes()).is_err());
    }

    /// A number is read as the double nearest to what was written (the
    /// `float_roundtrip` parser), so the digest is of the action as the
    /// agent wrote it: the default parser reads this one a unit in the last
    /// place low and the canonical form would end in ...306, not ...3061.
    #[test]
    fn numbers_are_read_exactly() {
        let text = br#"{"kind":"sql","operation":"read","resource":"db://x","params":{"n":130.65331632653061}}"#;
        let (raw, _, digest) = Action::from_slice(text).unwrap();
        let n = raw["params"]["n"].as_f64().unwrap();
        assert_eq!(n, "130.65331632653061".parse::<f64>().unwrap());
        let canonical = secondkey_jcs::to_vec(&raw).unwrap();
        assert!(
            String::from_utf8_lossy(&canonical).contains("130.65331632653061"),
            "{}",
            String::from_utf8_lossy(&canonical)
        );
        assert_eq!(digest, Action::from_json(&raw).unwrap().1);
    }

    /// Spellings RFC 8785 writes alike are one value to policy: the typed
    /// action holds the canonical number, whatever the agent wrote.
    #[test]
    fn numbers_take_their_canonical_form() {
        let typed = |n: &str| {
            let text = format!(
                r#"{{"kind":"sql","operation":"write","resource":"db://x","params":{{"n":{n},"a":[{n}]}},"context":{{"rows":{{"est":{n}}}}}}}"#
            );
            let (raw, action, digest) = Action::from_slice(text.as_bytes()).unwrap();
            (raw, action, digest)
        };
        let (_, plain, d) = typed("100");
        for spelling in ["1E2", "100.0", "1.0e2", "100.000", "10000e-2"] {
            let (raw, action, digest) = typed(spelling);
            assert_eq!(digest, d, "{spelling}");
            assert_eq!(action, plain, "{spelling}");
            assert!(action.params["n"].is_i64(), "{spelling}");
            // What was submitted stays as it was written (what the digest covers).
            assert!(raw["params"]["n"].is_f64(), "{spelling}");
        }
        let (_, zero, dz) = typed("0");
        for spelling in ["-0", "-0.0", "0.0", "0e5", "-0E-3"] {
            let (_, action, digest) = typed(spelling);
            assert_eq!((action, digest), (zero.clone(), dz.clone()), "{spelling}");
        }
        // Non-integral doubles keep their value.
        let (_, half, dh) = typed("2.5");
        let (_, half2, dh2) = typed("25e-1");
        assert_eq!((half.clone(), dh), (half2, dh2));
        assert_eq!(half.params["n"], json!(2.5));
    }

    #[test]
    fn depth_limit() {
        // The action is depth 1 and params depth 2, so 30 more levels fit.
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "x": v });
            }
            with("params", v)
        };
        assert!(Action::from_json(&nest(31)).is_ok());
        let e = err(nest(32));
        assert_eq!(e.code(), "too_deep");
        assert!(e.to_string().contains("$.params.x"), "{e}");
    }

    #[test]
    fn digest_from_hex() {
        let d = Digest::of_json(&json!({})).unwrap();
        assert_eq!(Digest::from_hex(d.as_str()), Ok(d.clone()));
        assert!(Digest::from_hex(&d.as_str().to_uppercase()).is_err());
        assert!(Digest::from_hex("abc").is_err());
        assert!(serde_json::from_value::<Digest>(json!("zz")).is_err());
        assert_eq!(serde_json::to_value(&d).unwrap(), json!(d.as_str()));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z\u{e9}\u{1F600}]{0,4}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary input never panics, and a success digests what was sent.
        #[test]
        fn from_json_total(params in json_value(), context in json_value(), extra in any::<bool>()) {
            let mut raw = serde_json::json!({"kind": "mcp", "operation": "call", "resource": "tool://x"});
            let obj = raw.as_object_mut().unwrap();
            obj.insert("params".into(), params);
            obj.insert("context".into(), context);
            if extra { obj.insert("surprise".into(), Value::Null); }
            match Action::from_json(&raw) {
                Ok((_, d)) => prop_assert_eq!(d, Digest::of_json(&raw).unwrap()),
                Err(e) => prop_assert!(!e.code().is_empty()),
            }
        }

        /// Strict parsing reads exactly what serde_json writes.
        #[test]
        fn strict_parse_round_trip(v in json_value()) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(parse_json_strict(&text).unwrap(), v);
        }

        /// The digest ignores key order but nothing else.
        #[test]
        fn digest_ignores_key_order(v in json_value()) {
            fn reverse(v: &Value) -> Value {
                match v {
                    Value::Object(m) => Value::Object(m.iter().rev().map(|(k, v)| (k.clone(), reverse(v))).collect()),
                    Value::Array(a) => Value::Array(a.iter().map(reverse).collect()),
                    other => other.clone(),
                }
            }
            prop_assert_eq!(Digest::of_json(&v).unwrap(), Digest::of_json(&reverse(&v)).unwrap());
            // The digest is that of the reference encoder's output.
            let reference = serde_jcs::to_vec(&v).unwrap();
            let ours = Digest::of_json(&v).unwrap();
            prop_assert_eq!(ours.as_str(), hex::encode(Sha256::digest(&reference)));
            // The canonical text parses back to the same value.
            let text = serde_jcs::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Digest::of_json(&back).unwrap(), Digest::of_json(&v).unwrap());
        }
    }
}
