//! Loading a policy directory: parsing, ids, annotations, schema, validation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Effect, Policy, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::annotations::{self, RecordMode, Review};

/// The built-in Cedar schema. A `schema.cedarschema` in the policy directory
/// replaces it (see the crate docs).
pub const BUILTIN_SCHEMA: &str = include_str!("schema.cedarschema");

/// The file name of an optional schema in a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// One problem found while loading policies, located as precisely as Cedar
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// File name relative to the policy directory (or the name given to
    /// [`crate::PolicyEngine::from_sources`]).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// What is wrong, in Cedar's words or ours.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy directory could not be loaded. Nothing is half-loaded: the
/// previous engine stays in use until a load succeeds.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file in it could not be read.
    #[error("cannot read {}: {source}\n  check that the policy directory exists and is readable", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Policies or schema are invalid; every problem found is listed.
    #[error("{}", render_issues(.0))]
    Invalid(Vec<Issue>),
}

impl LoadError {
    /// The located problems (empty for an IO error).
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid(v) => v,
            Self::Io { .. } => &[],
        }
    }
}

fn render_issues(issues: &[Issue]) -> String {
    let mut s = format!(
        "policies are invalid ({} problem{}):\n",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        s.push_str(&format!("  {i}\n"));
    }
    s.push_str("fix these and run `secondkey policy validate` again");
    s
}

/// What loading checks beyond the policy files themselves. The default
/// checks annotations and values but not groups (nothing is known of them).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Annotation names authors may use besides those secondkey reads and
    /// those under [`crate::CUSTOM_PREFIX`] (`[policy] annotations`).
    pub annotations: BTreeSet<String>,
    /// Who is in which group, when known; `None` skips the group checks.
    pub groups: Option<Groups>,
}

/// The groups reviewers can come from, for checking `@review` and `@quorum`.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    /// Every group configured principals belong to, with its humans (agents
    /// and services never review, so they are not counted).
    pub humans: BTreeMap<String, BTreeSet<String>>,
    /// What the identity provider may add at sign-in.
    pub identity_provider: IdpGroups,
}

/// Which groups human sign-in (OpenID Connect) may give a reviewer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdpGroups {
    /// No group claim is read: groups come from config alone.
    #[default]
    None,
    /// The group claim is read as is: any group name may arrive.
    Any,
    /// The group claim is mapped: only these groups may arrive.
    Mapped(BTreeSet<String>),
}

impl IdpGroups {
    fn supplies(&self, group: &str) -> bool {
        match self {
            IdpGroups::None => false,
            IdpGroups::Any => true,
            IdpGroups::Mapped(m) => m.contains(group),
        }
    }
}

impl Groups {
    /// Problems with a review's groups and quorum, as (errors, warnings):
    /// an error when no configured set of humans can ever meet it, a
    /// warning naming the group when only the identity provider could.
    fn check(&self, review: &Review) -> (Vec<String>, Vec<String>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let groups = review.groups.join(",");
        for g in &review.groups {
            if self.humans.contains_key(g) {
                continue;
            }
            if self.identity_provider == IdpGroups::Any {
                warnings.push(format!(
                    "@review(\"{groups}\") names group `{g}`, which no configured principal belongs to; its reviewers must get it from the identity provider's group claim"
                ));
                continue;
            }
            if self.identity_provider.supplies(g) {
                continue;
            }
            let close = annotations::closest(g, self.humans.keys().map(String::as_str))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let from = match &self.identity_provider {
                IdpGroups::Mapped(_) => " nor is it a target of `[oidc] group_map`".to_owned(),
                _ => String::new(),
            };
            errors.push(format!(
                "@review(\"{groups}\") names group `{g}`, which no configured principal belongs to{from}{close}; nobody could ever review"
            ));
        }
        if !errors.is_empty() {
            return (errors, warnings);
        }
        let humans: BTreeSet<&String> = review
            .groups
            .iter()
            .filter_map(|g| self.humans.get(g))
            .flatten()
            .collect();
        let needed = review.quorum as usize;
        // A review whose groups all come from the identity provider was
        // warned about above; its quorum says nothing more.
        let warned_already = humans.is_empty() && !warnings.is_empty();
        if needed > humans.len() && !warned_already {
            let from_idp: Vec<&str> = review
                .groups
                .iter()
                .filter(|g| self.identity_provider.supplies(g))
                .map(String::as_str)
                .collect();
            let have = match humans.len() {
                0 => "no human".to_owned(),
                1 => "1 human".to_owned(),
                n => format!("{n} humans"),
            };
            if from_idp.is_empty() && needed == 1 {
                // The quorum may not have been written at all (1 is the
                // default): say what is missing without naming it.
                errors.push(format!(
                    "@review(\"{groups}\") can never be met: it needs a human approver and has none in config (agents and services never review); add reviewers to the group"
                ));
            } else if from_idp.is_empty() {
                errors.push(format!(
                    "@quorum(\"{}\") can never be met: @review(\"{groups}\") has {have} in config (agents and services never review); lower the quorum or add reviewers",
                    review.quorum
                ));
            } else {
                warnings.push(format!(
                    "@quorum(\"{}\") needs {needed} distinct approver{} but @review(\"{groups}\") has {have} in config; the rest must come from the identity provider's groups ({})",
                    review.quorum,
                    if needed == 1 { "" } else { "s" },
                    from_idp.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        (errors, warnings)
    }
}

/// What the engine keeps about each policy besides Cedar's own copy.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub id: String,
    pub effect: Effect,
    pub review: Option<Review>,
    /// `@reason`, checked and trimmed.
    pub reason: Option<String>,
    /// `@record`, on a permit.
    pub record: Option<RecordMode>,
    pub file: String,
    pub line: Option<u32>,
    pub annotations: Vec<(String, String)>,
}

/// The checked result of loading.
pub(crate) struct Loaded {
    /// Policies with their secondkey ids and original effects, in load order.
    pub policies: Vec<Policy>,
    pub metas: Vec<Meta>,
    pub schema: Schema,
    pub warnings: Vec<String>,
}

/// `(file name, text)` of each policy file, sorted by name.
pub(crate) type Sources = Vec<(String, String)>;

/// Reads `*.cedar` and an optional `schema.cedarschema` from `dir`.
pub(crate) fn read_dir(dir: &Path) -> Result<(Sources, Option<String>), LoadError> {
    let io = |path: &Path, source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut schema = None;
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if name == SCHEMA_FILE {
            schema = Some(std::fs::read_to_string(&path).map_err(|e| io(&path, e))?);
        } else if name.ends_with(".cedar") && path.is_file() {
            files.push((
                name,
                std::fs::read_to_string(&path).map_err(|e| io(&path, e))?,
            ));
        }
    }
    files.sort();
    Ok((files, schema))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

fn first_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .or_else(|| d.related().and_then(|mut r| r.find_map(first_offset)))
}

fn diag_message(d: &dyn Diagnostic, e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    if let Some(help) = d.help() {
        m.push_str(&format!(" (help: {help})"));
    }
    m
}

fn file_stem(name: &str) -> &str {
    name.strip_suffix(".cedar").unwrap_or(name)
}

/// A principal entity id the policy names that no principal can ever have,
/// phrased as the fix: principal ids are folded to lowercase wherever the
/// gateway reads them, so `User::"Alice"` would silently match nobody — a
/// `forbid` that never fires. Such a policy is refused at load instead.
fn uncanonical_principal(policy: &Policy) -> Option<String> {
    fn walk(v: &serde_json::Value) -> Option<(String, String)> {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(serde_json::Value::String(ty)), Some(serde_json::Value::String(id))) =
                    (m.get("type"), m.get("id"))
                {
                    let principal_type = matches!(ty.as_str(), "User" | "Agent" | "Service");
                    if principal_type
                        && !secondkey_core::principal::PrincipalId::is_canonical_name(id)
                    {
                        return Some((ty.clone(), id.clone()));
                    }
                }
                m.values().find_map(walk)
            }
            serde_json::Value::Array(a) => a.iter().find_map(walk),
            _ => None,
        }
    }
    let (ty, id) = walk(&policy.to_json().ok()?)?;
    Some(format!(
        "{ty}::{id:?} can never match: principal ids are read in lowercase wherever they come from (config, tokens, sign-in), so write {ty}::{:?}",
        id.to_ascii_lowercase()
    ))
}

/// The line of annotation `@name` in a policy whose source `src` starts at
/// `line`, if it can be found.
fn annotation_line(src: Option<&str>, line: Option<u32>, name: &str) -> Option<u32> {
    let (src, line) = (src?, line?);
    let needle = format!("@{name}");
    let mut from = 0;
    while let Some(at) = src.get(from..)?.find(&needle) {
        let at = from + at;
        let rest = src.get(at + needle.len()..)?;
        // the whole name, not a prefix of a longer one
        if rest.trim_start().starts_with('(') {
            let before = src.get(..at)?.matches('\n').count();
            return Some(line + u32::try_from(before).ok()?);
        }
        from = at + needle.len();
    }
    None
}

/// Parses, names, checks annotations and validates against the schema.
pub(crate) fn load(
    files: &[(String, String)],
    schema_src: Option<&str>,
    options: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    let mut policies = Vec::new();
    let mut metas = Vec::new();
    let mut seen = HashSet::new();
    // policy id -> index of its file, to locate validation errors
    let mut file_of: HashMap<String, usize> = HashMap::new();

    for (fi, (name, text)) in files.iter().enumerate() {
        let pset = match PolicySet::from_str(text) {
            Ok(p) => p,
            Err(errs) => {
                for e in errs.iter() {
                    let (line, column) = first_offset(e).map(|o| line_col(text, o)).unzip();
                    issues.push(Issue {
                        file: name.clone(),
                        line,
                        column,
                        message: diag_message(e, e),
                    });
                }
                continue;
            }
        };
        if pset.templates().next().is_some() {
            issues.push(Issue {
                file: name.clone(),
                line: None,
                column: None,
                message: "policy templates (`?principal`, `?resource`) are not supported; write static policies".into(),
            });
            continue;
        }
        // Cedar names the policies of a text `policy0`, `policy1`, … in order.
        let mut in_file: Vec<(usize, &Policy)> = pset
            .policies()
            .filter_map(|p| {
                p.id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse().ok())
                    .map(|n| (n, p))
            })
            .collect();
        in_file.sort_by_key(|(n, _)| *n);
        let mut cursor = 0;
        for (index, policy) in in_file {
            // Locate the policy: Cedar keeps its exact source text.
            let src = policy.to_cedar();
            let line = src.as_ref().and_then(|src| {
                let at = text.get(cursor..)?.find(src.as_str())? + cursor;
                cursor = at + src.len();
                Some(line_col(text, at).0)
            });
            let issue = |message: String| Issue {
                file: name.clone(),
                line,
                column: None,
                message,
            };
            let local = match policy.annotation("id") {
                Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
                Some(_) => {
                    issues.push(issue(
                        "@id(\"\") is empty; give the policy a name or drop @id".into(),
                    ));
                    continue;
                }
                None => index.to_string(),
            };
            let id = format!("{}:{local}", file_stem(name));
            if !seen.insert(id.clone()) {
                issues.push(issue(format!(
                    "policy id `{id}` is used twice; give each policy in a file a distinct @id"
                )));
                continue;
            }
            let written: Vec<(String, String)> = policy
                .annotations()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let annotated = match annotations::check(
                policy.effect() == Effect::Forbid,
                &written,
                &options.annotations,
            ) {
                Ok(a) => a,
                Err(problems) => {
                    for p in problems {
                        issues.push(Issue {
                            file: name.clone(),
                            line: annotation_line(src.as_deref(), line, &p.annotation).or(line),
                            column: None,
                            message: format!("policy `{id}`: {}", p.message),
                        });
                    }
                    continue;
                }
            };
            if let (Some(groups), Some(review)) = (&options.groups, &annotated.review) {
                let (errors, warned) = groups.check(review);
                let locate = |m: &str| {
                    let which = if m.starts_with("@quorum") {
                        "quorum"
                    } else {
                        "review"
                    };
                    annotation_line(src.as_deref(), line, which).or(line)
                };
                let failed = !errors.is_empty();
                for m in errors {
                    issues.push(Issue {
                        file: name.clone(),
                        line: locate(&m),
                        column: None,
                        message: format!("policy `{id}`: {m}"),
                    });
                }
                for m in warned {
                    warnings.push(
                        Issue {
                            file: name.clone(),
                            line: locate(&m),
                            column: None,
                            message: format!("policy `{id}`: {m}"),
                        }
                        .to_string(),
                    );
                }
                if failed {
                    continue;
                }
            }
            if let Some(m) = uncanonical_principal(policy) {
                issues.push(issue(format!("policy `{id}`: {m}")));
                continue;
            }
            let renamed = policy.new_id(PolicyId::new(&id));
            file_of.insert(id.clone(), fi);
            metas.push(Meta {
                id,
                effect: policy.effect(),
                review: annotated.review,
                reason: annotated.reason,
                record: annotated.record,
                file: name.clone(),
                line,
                annotations: written,
            });
            policies.push(renamed);
        }
    }

    let schema_name = if schema_src.is_some() {
        SCHEMA_FILE
    } else {
        "<built-in schema>"
    };
    let schema_text = schema_src.unwrap_or(BUILTIN_SCHEMA);
    let schema = match build_schema(schema_text, &policies) {
        Ok(s) => Some(s),
        Err((offset, message)) => {
            let (line, column) = offset.map(|o| line_col(schema_text, o)).unzip();
            issues.push(Issue {
                file: schema_name.into(),
                line,
                column,
                message,
            });
            None
        }
    };

    if let Some(schema) = &schema {
        let mut set = PolicySet::new();
        for p in &policies {
            if let Err(e) = set.add(p.clone()) {
                issues.push(Issue {
                    file: String::new(),
                    line: None,
                    column: None,
                    message: e.to_string(),
                });
            }
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        let locate = |id: &PolicyId, d: &dyn Diagnostic| {
            let fi = file_of.get(&id.to_string()).copied();
            let file = fi.and_then(|i| files.get(i));
            let (line, column) = file
                .and_then(|(_, text)| first_offset(d).map(|o| line_col(text, o)))
                .unzip();
            (
                file.map(|(n, _)| n.clone()).unwrap_or_default(),
                line,
                column,
            )
        };
        for e in result.validation_errors() {
            let (file, line, column) = locate(e.policy_id(), e);
            issues.push(Issue {
                file,
                line,
                column,
                message: diag_message(e, e),
            });
        }
        for w in result.validation_warnings() {
            let (file, line, column) = locate(w.policy_id(), w);
            warnings.push(
                Issue {
                    file,
                    line,
                    column,
                    message: diag_message(w, w),
                }
                .to_string(),
            );
        }
    }

    match schema {
        Some(schema) if issues.is_empty() => Ok(Loaded {
            policies,
            metas,
            schema,
            warnings,
        }),
        _ => Err(LoadError::Invalid(issues)),
    }
}

/// The schema used for validation: the built-in (or replacing) schema plus a
/// generated fragment declaring every action the policies name that the
/// schema does not: `Action::"<kind>.<op>"` as a member of `Action::"<kind>"`
/// applying to all principals, `Resource` and `Context`, and `Action::"<kind>"`
/// as a group. This is how custom action kinds validate without a schema edit.
fn build_schema(text: &str, policies: &[Policy]) -> Result<Schema, (Option<usize>, String)> {
    let err = |e: &dyn Diagnostic, m: String| (first_offset(e), m);
    let (base, _) =
        SchemaFragment::from_cedarschema_str(text).map_err(|e| err(&e, diag_message(&e, &e)))?;
    let declared =
        Schema::from_schema_fragments([base.clone()]).map_err(|e| err(&e, diag_message(&e, &e)))?;
    let known: HashSet<String> = declared
        .actions()
        .map(|a| a.id().unescaped().to_owned())
        .collect();
    let mut groups = BTreeSet::new();
    let mut members = BTreeSet::new();
    for p in policies {
        for uid in p.entity_literals() {
            if uid.type_name().to_string() != "Action" {
                continue;
            }
            let id = uid.id().unescaped().to_owned();
            match id.split_once('.') {
                Some((kind, _)) => {
                    if !known.contains(kind) {
                        groups.insert(kind.to_owned());
                    }
                    if !known.contains(&id) {
                        members.insert(id);
                    }
                }
                None => {
                    if !known.contains(&id) {
                        groups.insert(id);
                    }
                }
            }
        }
    }
    if groups.is_empty() && members.is_empty() {
        return Ok(declared);
    }
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut extra = String::new();
    for g in &groups {
        extra.push_str(&format!("action {};\n", q(g)));
    }
    for m in &members {
        let kind = m.split_once('.').map_or(m.as_str(), |(k, _)| k);
        extra.push_str(&format!(
            "action {} in [{}] appliesTo {{ principal: [User, Agent, Service], resource: Resource, context: Context }};\n",
            q(m),
            q(kind)
        ));
    }
    let (frag, _) = SchemaFragment::from_cedarschema_str(&extra).map_err(|e| {
        (None, format!("cannot declare the custom actions the policies use ({e}); declare them in {SCHEMA_FILE}"))
    })?;
    Schema::from_schema_fragments([base, frag]).map_err(|e| {
        (None, format!("cannot declare the custom actions the policies use ({e}); the schema must define the entity types User, Agent, Service, Resource and a common type `Context`, or declare the actions itself"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "ab\ncde\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 4), (2, 2));
        assert_eq!(line_col(t, 100), (3, 1));
    }
}
