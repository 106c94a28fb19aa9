//! The loaded engine: sliced policy sets, evaluation and the secondkey decision.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use cedar_policy::{
    ActionConstraint, Authorizer, Effect, EntityUid, Policy, PolicyId, PolicySet,
    ResourceConstraint, Schema,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::annotations::{fmt_duration, RecordMode, DEFAULT_GRANT_TTL, DEFAULT_TTL};
use crate::cache::{ContextUse, DecisionCache};
use crate::load::{self, LoadError, LoadOptions, Meta};
use crate::request::{self, TypeNames};
use crate::types::{Action, Principal, Requirement};

/// The three answers secondkey gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Run the action now.
    Allow,
    /// Refuse the action.
    Deny,
    /// Hold the action until the requirements are met by human approvers.
    Review,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Review => "review",
        })
    }
}

/// The role a policy played in a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonEffect {
    /// A `permit` policy.
    Permit,
    /// A plain `forbid` policy.
    Forbid,
    /// A `forbid` carrying `@review`.
    Review,
    /// No policy: the default deny, or a request that could not be evaluated.
    Default,
}

impl std::fmt::Display for ReasonEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Permit => "permit",
            Self::Forbid => "forbid",
            Self::Review => "review",
            Self::Default => "default",
        })
    }
}

/// Why a decision came out as it did, one entry per deciding policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// `<file stem>:<index or @id>`; empty for [`ReasonEffect::Default`].
    pub policy_id: String,
    /// How the policy counted.
    pub effect: ReasonEffect,
    /// The policy file, when known.
    pub file: Option<String>,
    /// The policy's first line in `file`, when known.
    pub line: Option<u32>,
    /// A sentence for humans (shown to requesters and reviewers).
    pub message: String,
    /// The policy's `@reason("…")`: why it applies, in its author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, deny or review.
    pub outcome: Outcome,
    /// The deciding policies (and any that failed to evaluate).
    pub reasons: Vec<Reason>,
    /// For review: one per matching review policy; all must be satisfied.
    pub requirements: Vec<Requirement>,
    /// How long a review request may wait: the smallest `@ttl` of the matching
    /// review policies; the default (1h) otherwise.
    pub ttl: Duration,
    /// How long an approval (or an allow's grant) stays usable: the smallest
    /// `@grant_ttl` of the matching review policies; the default (5m) otherwise.
    pub grant_ttl: Duration,
    /// Evaluation errors, each naming its policy. Non-empty means some policy
    /// could not be evaluated and was counted against the action.
    pub errors: Vec<String>,
    /// An allow whose matching permits all carry `@record("after")` (and
    /// nothing failed to evaluate): it may run before its log entry is
    /// durable, its decision and result recorded together within the
    /// gateway's `[log] after_window`. False for every other decision.
    pub record_after: bool,
}

/// Policies sharing one action-scope key, split by resource `==`/`in` scope.
#[derive(Default)]
struct Shard {
    general: Option<PolicySet>,
    by_resource: HashMap<EntityUid, PolicySet>,
}

#[derive(Default)]
struct ShardBuilder {
    general: Vec<Policy>,
    by_resource: HashMap<EntityUid, Vec<Policy>>,
}

impl ShardBuilder {
    fn push(&mut self, p: &Policy) {
        match p.resource_constraint() {
            // Resource entities have no parents, so `in` is `==`.
            ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) => {
                self.by_resource.entry(uid).or_default().push(p.clone());
            }
            _ => self.general.push(p.clone()),
        }
    }

    fn build(self) -> Result<Shard, String> {
        let set = |v: Vec<Policy>| PolicySet::from_policies(v).map_err(|e| e.to_string());
        Ok(Shard {
            general: if self.general.is_empty() {
                None
            } else {
                Some(set(self.general)?)
            },
            by_resource: self
                .by_resource
                .into_iter()
                .map(|(k, v)| Ok((k, set(v)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

/// Which policies were satisfied and which failed, for one request.
#[derive(Debug, Default)]
pub(crate) struct Evaluation {
    /// Indices into `metas`, ascending.
    pub matched: Vec<usize>,
    /// Index and message, ascending by index.
    pub errored: Vec<(usize, String)>,
    /// The request could not be built.
    pub request_error: Option<String>,
}

/// A loaded, validated policy set, ready to decide. Immutable and
/// `Send + Sync`, so a server can swap a new one in atomically
/// (`ArcSwap<PolicyEngine>` or `RwLock<Arc<PolicyEngine>>`) on reload.
pub struct PolicyEngine {
    metas: Vec<Meta>,
    by_id: HashMap<String, usize>,
    /// Every policy as a `permit` (same id, same scope and conditions), so
    /// Cedar reports every satisfied policy; effects are applied by us.
    all: PolicySet,
    any_action: Shard,
    action_eq: HashMap<EntityUid, Shard>,
    action_in: HashMap<EntityUid, Shard>,
    /// Ancestors of actions declared in the schema (besides the kind group).
    action_ancestors: HashMap<EntityUid, Vec<EntityUid>>,
    names: TypeNames,
    schema: Schema,
    warnings: Vec<String>,
    fingerprint: String,
    /// Entity stores of recent (principal, action target) pairs.
    entity_cache: request::EntityCache,
    /// The context attributes the policies read (the decision cache's key).
    context_use: ContextUse,
    /// Decisions by everything the policies can read (`cache.rs`).
    decisions: DecisionCache,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.metas.len())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Loads every `*.cedar` file of `dir` and its optional
    /// `schema.cedarschema`, validating strictly. Policy ids are
    /// `<file stem>:<index in file>` or `<file stem>:<@id>`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load_dir_with(dir, &LoadOptions::default())
    }

    /// Like [`PolicyEngine::load_dir`], with the allowed custom annotations
    /// and, when known, the groups reviewers come from (so an `@review`
    /// naming a group nobody is in, or a quorum no set of humans can meet,
    /// is refused).
    pub fn load_dir_with(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self, LoadError> {
        let (files, schema) = load::read_dir(dir.as_ref())?;
        Self::from_loaded_files(&files, schema.as_deref(), options)
    }

    /// Builds an engine from in-memory sources: `(file name, text)` pairs such
    /// as `("agents.cedar", "permit(...);")`, and an optional schema replacing
    /// the built-in one. Same rules as [`PolicyEngine::load_dir`].
    pub fn from_sources(files: &[(&str, &str)], schema: Option<&str>) -> Result<Self, LoadError> {
        Self::from_sources_with(files, schema, &LoadOptions::default())
    }

    /// [`PolicyEngine::from_sources`] with [`LoadOptions`].
    pub fn from_sources_with(
        files: &[(&str, &str)],
        schema: Option<&str>,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        Self::from_loaded_files(&files, schema, options)
    }

    fn from_loaded_files(
        files: &[(String, String)],
        schema: Option<&str>,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let fingerprint = fingerprint(files, schema);
        let loaded = load::load(files, schema, options)?;
        let internal = |message: String| {
            LoadError::Invalid(vec![load::Issue {
                file: String::new(),
                line: None,
                column: None,
                message: format!("internal error while indexing policies: {message}"),
            }])
        };
        let context_use = ContextUse::of(&loaded.policies);
        let mut shadows = Vec::with_capacity(loaded.policies.len());
        for p in &loaded.policies {
            shadows.push(as_permit(p).map_err(internal)?);
        }
        let all = PolicySet::from_policies(shadows.clone()).map_err(|e| internal(e.to_string()))?;

        let mut any = ShardBuilder::default();
        let mut eq: HashMap<EntityUid, ShardBuilder> = HashMap::new();
        let mut inn: HashMap<EntityUid, ShardBuilder> = HashMap::new();
        for p in &shadows {
            match p.action_constraint() {
                ActionConstraint::Any => any.push(p),
                ActionConstraint::Eq(uid) => eq.entry(uid).or_default().push(p),
                ActionConstraint::In(uids) => {
                    let mut uids = uids;
                    uids.sort_by_key(ToString::to_string);
                    uids.dedup();
                    for uid in uids {
                        inn.entry(uid).or_default().push(p);
                    }
                }
            }
        }
        let build_map = |m: HashMap<EntityUid, ShardBuilder>| {
            m.into_iter()
                .map(|(k, b)| Ok((k, b.build()?)))
                .collect::<Result<HashMap<_, _>, String>>()
        };
        let names = TypeNames::new();
        let mut action_ancestors = HashMap::new();
        if let Ok(actions) = loaded.schema.action_entities() {
            for a in loaded.schema.actions() {
                let anc: Vec<EntityUid> = actions
                    .ancestors(a)
                    .map(|anc| anc.cloned().collect())
                    .unwrap_or_default();
                action_ancestors.insert(a.clone(), anc);
            }
        }
        let by_id = loaded
            .metas
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        Ok(Self {
            metas: loaded.metas,
            by_id,
            all,
            any_action: any.build().map_err(internal)?,
            action_eq: build_map(eq).map_err(internal)?,
            action_in: build_map(inn).map_err(internal)?,
            action_ancestors,
            names,
            schema: loaded.schema,
            warnings: loaded.warnings,
            fingerprint,
            entity_cache: Default::default(),
            context_use,
            decisions: Default::default(),
        })
    }

    /// Lowercase hex SHA-256 over every policy file (name and text, in name
    /// order) and the schema: names the exact policy set behind a decision,
    /// so an auditor can tell which policies were in force.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Number of loaded policies.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether no policy is loaded (then everything is denied).
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The checked `@reason` of a policy (by its secondkey id), trimmed:
    /// the sentence reviewers, or a denied agent, read about why it applies.
    pub fn reason_of(&self, policy_id: &str) -> Option<&str> {
        let i = *self.by_id.get(policy_id)?;
        self.metas[i].reason.as_deref()
    }

    /// Validator warnings (impossible policies, confusable strings, …) and
    /// review groups or quorums only the identity provider can fill, one
    /// located line each; loading succeeds despite them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The schema policies were validated against (including the generated
    /// declarations for custom action kinds).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Decides an action: allow, deny or review, with reasons and the review
    /// requirements. `gateway_facts` are facts the gateway derived itself
    /// (trusted); they reach policies as `context.gateway`. Never panics and
    /// never fails open: an action that cannot be evaluated is denied.
    ///
    /// A decision is reused when everything the policies can read is equal
    /// (see the decision cache in `cache.rs`); it is the decision a fresh
    /// evaluation gives ([`PolicyEngine::decide_uncached`]).
    pub fn decide(
        &self,
        principal: &Principal,
        action: &Action,
        gateway_facts: &serde_json::Map<String, Value>,
    ) -> Decision {
        let key = DecisionCache::key(&self.context_use, principal, action, gateway_facts);
        if let Some(d) = key.as_deref().and_then(|k| self.decisions.get(k)) {
            return d;
        }
        let d = self.decide_uncached(principal, action, gateway_facts);
        if let Some(k) = key {
            self.decisions.put(k, &d);
        }
        d
    }

    /// [`PolicyEngine::decide`] without the decision cache: evaluates the
    /// policies every time.
    pub fn decide_uncached(
        &self,
        principal: &Principal,
        action: &Action,
        gateway_facts: &serde_json::Map<String, Value>,
    ) -> Decision {
        let eval = self.evaluate(principal, action, gateway_facts, true);
        self.decide_from(&eval)
    }

    /// Like [`PolicyEngine::decide`], evaluating every policy instead of the
    /// slice that can match. Only for checking that slicing changes nothing.
    #[doc(hidden)]
    pub fn decide_unsliced(
        &self,
        principal: &Principal,
        action: &Action,
        gateway_facts: &serde_json::Map<String, Value>,
    ) -> Decision {
        let eval = self.evaluate(principal, action, gateway_facts, false);
        self.decide_from(&eval)
    }

    fn ancestors(&self, action: &Action, uid: &EntityUid) -> Vec<EntityUid> {
        let mut anc = vec![self.names.uid(&self.names.action, &action.kind)];
        if let Some(more) = self.action_ancestors.get(uid) {
            for a in more {
                if !anc.contains(a) {
                    anc.push(a.clone());
                }
            }
        }
        anc
    }

    pub(crate) fn evaluate(
        &self,
        principal: &Principal,
        action: &Action,
        facts: &serde_json::Map<String, Value>,
        sliced: bool,
    ) -> Evaluation {
        let action_uid = self.names.action_uid(action);
        let ancestors = self.ancestors(action, &action_uid);
        let built = match request::build(
            &self.names,
            &self.entity_cache,
            principal,
            action,
            ancestors.clone(),
            facts,
        ) {
            Ok(b) => b,
            Err(e) => {
                return Evaluation {
                    request_error: Some(e.to_string()),
                    ..Evaluation::default()
                }
            }
        };
        let mut sets: Vec<&PolicySet> = Vec::new();
        if sliced {
            let shards = [Some(&self.any_action), self.action_eq.get(&built.action)]
                .into_iter()
                .chain(
                    std::iter::once(&built.action)
                        .chain(&ancestors)
                        .map(|a| self.action_in.get(a)),
                )
                .flatten();
            for shard in shards {
                sets.extend(shard.general.as_ref());
                sets.extend(shard.by_resource.get(&built.resource));
            }
        } else {
            sets.push(&self.all);
        }
        let authorizer = Authorizer::new();
        let mut matched = Vec::new();
        let mut errored = Vec::new();
        for set in sets {
            let response = authorizer.is_authorized(&built.request, set, &built.entities);
            let diag = response.diagnostics();
            matched.extend(diag.reason().filter_map(|id| self.index(id)));
            for e in diag.errors() {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                if let Some(i) = self.index(pe.policy_id()) {
                    errored.push((i, pe.inner().to_string()));
                }
            }
        }
        matched.sort_unstable();
        matched.dedup();
        errored.sort();
        errored.dedup_by_key(|(i, _)| *i);
        Evaluation {
            matched,
            errored,
            request_error: None,
        }
    }

    fn index(&self, id: &PolicyId) -> Option<usize> {
        self.by_id.get(id.to_string().as_str()).copied()
    }

    fn reason(&self, i: usize, effect: ReasonEffect, message: String) -> Reason {
        let m = &self.metas[i];
        Reason {
            policy_id: m.id.clone(),
            effect,
            file: Some(m.file.clone()),
            line: m.line,
            message,
            reason: m.reason.clone(),
        }
    }

    pub(crate) fn decide_from(&self, eval: &Evaluation) -> Decision {
        let mut d = Decision {
            outcome: Outcome::Deny,
            reasons: Vec::new(),
            requirements: Vec::new(),
            ttl: DEFAULT_TTL,
            grant_ttl: DEFAULT_GRANT_TTL,
            errors: eval
                .errored
                .iter()
                .map(|(i, e)| format!("policy `{}`: {e}", self.metas[*i].id))
                .collect(),
            record_after: false,
        };
        if let Some(e) = &eval.request_error {
            d.errors.push(e.clone());
            d.reasons.push(Reason {
                policy_id: String::new(),
                effect: ReasonEffect::Default,
                file: None,
                line: None,
                message: format!("the action cannot be evaluated, so it is denied: {e}"),
                reason: None,
            });
            return d;
        }
        let errored: BTreeMap<usize, &str> =
            eval.errored.iter().map(|(i, e)| (*i, e.as_str())).collect();
        // Invariant 8: an erroring forbid counts as matching; an erroring permit does not.
        let mut forbids = Vec::new();
        let mut reviews = Vec::new();
        let mut permits = Vec::new();
        let counted = eval
            .matched
            .iter()
            .copied()
            .chain(errored.keys().copied())
            .collect::<std::collections::BTreeSet<usize>>();
        for i in counted {
            let m = &self.metas[i];
            match (m.effect, &m.review, errored.get(&i)) {
                (Effect::Forbid, None, _) => forbids.push(i),
                // The brief: an erroring forbid denies. A review forbid that
                // cannot be evaluated cannot say what review it wants either.
                (Effect::Forbid, Some(_), Some(_)) => forbids.push(i),
                (Effect::Forbid, Some(_), None) => reviews.push(i),
                (Effect::Permit, _, None) => permits.push(i),
                (Effect::Permit, _, Some(_)) => {}
            }
        }
        let err_note = |i: usize| {
            errored
                .get(&i)
                .map(|e| format!(" (failed to evaluate, counted as matching: {e})"))
                .unwrap_or_default()
        };
        if !forbids.is_empty() {
            for i in forbids {
                let msg = format!("forbidden by policy `{}`{}", self.metas[i].id, err_note(i));
                d.reasons.push(self.reason(i, ReasonEffect::Forbid, msg));
            }
        } else if !reviews.is_empty() && !permits.is_empty() {
            d.outcome = Outcome::Review;
            let mut ttl = None::<Duration>;
            let mut grant_ttl = None::<Duration>;
            for &i in &reviews {
                let m = &self.metas[i];
                let Some(r) = &m.review else { continue };
                ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                grant_ttl = Some(grant_ttl.map_or(r.grant_ttl, |t| t.min(r.grant_ttl)));
                let mut q = Requirement::new(m.id.clone(), r.groups.clone(), r.quorum);
                q.reason = m.reason.clone();
                d.requirements.push(q);
                let msg = format!(
                    "needs {} approval{} from {} (policy `{}`){}",
                    r.quorum,
                    if r.quorum == 1 { "" } else { "s" },
                    r.groups.join(" or "),
                    m.id,
                    err_note(i)
                );
                d.reasons.push(self.reason(i, ReasonEffect::Review, msg));
            }
            d.ttl = ttl.unwrap_or(DEFAULT_TTL);
            d.grant_ttl = grant_ttl.unwrap_or(DEFAULT_GRANT_TTL);
            for i in permits {
                let msg = format!("permitted by policy `{}` once approved", self.metas[i].id);
                d.reasons.push(self.reason(i, ReasonEffect::Permit, msg));
            }
        } else if !reviews.is_empty() {
            for i in reviews {
                let msg = format!(
                    "policy `{}` requires review, but no permit policy allows the action, so it is denied{}",
                    self.metas[i].id,
                    err_note(i)
                );
                d.reasons.push(self.reason(i, ReasonEffect::Review, msg));
            }
        } else if !permits.is_empty() {
            d.outcome = Outcome::Allow;
            // Every matching permit must say so, and no policy may have failed.
            d.record_after = errored.is_empty()
                && permits
                    .iter()
                    .all(|&i| self.metas[i].record == Some(RecordMode::After));
            for i in permits {
                let msg = format!("permitted by policy `{}`", self.metas[i].id);
                d.reasons.push(self.reason(i, ReasonEffect::Permit, msg));
            }
        } else {
            d.reasons.push(Reason {
                policy_id: String::new(),
                effect: ReasonEffect::Default,
                file: None,
                line: None,
                message: "no permit policy matches, so the action is denied by default".into(),
                reason: None,
            });
        }
        for (&i, e) in &errored {
            if self.metas[i].effect == Effect::Permit {
                let msg = format!(
                    "permit policy `{}` failed to evaluate and was ignored: {e}",
                    self.metas[i].id
                );
                d.reasons.push(self.reason(i, ReasonEffect::Permit, msg));
            }
        }
        d
    }

    /// Renders, for humans, which policies matched, their effect and
    /// annotations, and which rule decided (`secondkey policy explain`).
    pub fn explain(
        &self,
        principal: &Principal,
        action: &Action,
        gateway_facts: &serde_json::Map<String, Value>,
    ) -> String {
        let eval = self.evaluate(principal, action, gateway_facts, true);
        let d = self.decide_from(&eval);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "request: {} does {}.{} on {}",
            principal.id, action.kind, action.operation, action.resource
        );
        let rule = match (&eval.request_error, d.outcome) {
            (Some(_), _) => "the action could not be evaluated (fail closed)",
            (None, Outcome::Allow) => "rule 3: a permit matched and no forbid did",
            (None, Outcome::Review) => "rule 2: a @review forbid and a permit matched",
            (None, Outcome::Deny) => {
                if d.reasons.iter().any(|r| r.effect == ReasonEffect::Forbid) {
                    "rule 1: a plain forbid matched"
                } else if d.reasons.iter().any(|r| r.effect == ReasonEffect::Review) {
                    "rule 2: a @review forbid matched but no permit did"
                } else {
                    "rule 3: no permit matched (default deny)"
                }
            }
        };
        let _ = writeln!(s, "decision: {} ({rule})", d.outcome);
        if d.outcome == Outcome::Allow {
            let _ = writeln!(
                s,
                "{}",
                if d.record_after {
                    "recorded: after the run -- every matching permit carries @record(\"after\"), so it may run before its log entry is durable; decision and result are logged together within [log] after_window"
                } else {
                    "recorded: before the run -- the allow's log entry is durable before it runs (a matching permit lacks @record(\"after\"))"
                }
            );
        }
        if d.outcome == Outcome::Review {
            for r in &d.requirements {
                let _ = writeln!(
                    s,
                    "  requires {} approval(s) from [{}] (policy {})",
                    r.quorum,
                    r.groups.join(", "),
                    r.policy_id
                );
            }
            let _ = writeln!(
                s,
                "  request waits at most {} (smallest @ttl), approval usable for {} (smallest @grant_ttl)",
                fmt_duration(d.ttl),
                fmt_duration(d.grant_ttl)
            );
        }
        let errored: BTreeMap<usize, &str> =
            eval.errored.iter().map(|(i, e)| (*i, e.as_str())).collect();
        if eval.matched.is_empty() && errored.is_empty() {
            let _ = writeln!(s, "matched policies: none");
        } else {
            let _ = writeln!(s, "matched policies:");
            let all: std::collections::BTreeSet<usize> = eval
                .matched
                .iter()
                .copied()
                .chain(errored.keys().copied())
                .collect();
            for i in all {
                let m = &self.metas[i];
                let effect = match (m.effect, &m.review) {
                    (Effect::Permit, _) => "permit",
                    (Effect::Forbid, None) => "forbid",
                    (Effect::Forbid, Some(_)) => "review",
                };
                let loc = match m.line {
                    Some(l) => format!("{}:{l}", m.file),
                    None => m.file.clone(),
                };
                let _ = write!(s, "  {effect:<6} {} ({loc})", m.id);
                if let Some(e) = errored.get(&i) {
                    let _ = write!(
                        s,
                        " -- ERROR: {e}; {}",
                        if m.effect == Effect::Forbid {
                            "counted as matching"
                        } else {
                            "ignored"
                        }
                    );
                }
                s.push('\n');
                for line in annotation_effects(m) {
                    let _ = writeln!(s, "           {line}");
                }
            }
        }
        for e in &d.errors {
            if eval.request_error.as_deref() == Some(e.as_str()) {
                let _ = writeln!(s, "error: {e}");
            }
        }
        s
    }
}

/// What each annotation of a policy does, one line each, for `explain`.
fn annotation_effects(m: &Meta) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &m.annotations {
        let written = format!("@{k}({})", Value::String(v.clone()));
        let effect = match (k.as_str(), &m.review) {
            ("id", _) => "names the policy in decisions, the log and explanations".to_owned(),
            ("review", Some(r)) => format!(
                "holds the action for a member of {}",
                r.groups.join(" or ")
            ),
            ("quorum", Some(r)) => format!("{} distinct human approvers needed", r.quorum),
            ("ttl", Some(r)) => format!("the request waits at most {}", fmt_duration(r.ttl)),
            ("grant_ttl", Some(r)) => format!(
                "an approval stays usable for {}",
                fmt_duration(r.grant_ttl)
            ),
            ("reason", _) => match m.effect {
                Effect::Forbid if m.review.is_some() => "shown to reviewers as why review is required",
                Effect::Forbid => "shown to the denied agent as why",
                Effect::Permit => "shown as why the action is permitted",
            }
            .to_owned(),
            ("record", _) => "an allow whose matching permits all carry it may run before its log entry is durable; it is recorded within the configured window".to_owned(),
            _ => "the author's own; secondkey does not read it".to_owned(),
        };
        out.push(format!("{written}: {effect}"));
    }
    if let Some(r) = &m.review {
        for (k, dflt) in [
            ("quorum", format!("{} approver", r.quorum)),
            ("ttl", format!("waits at most {}", fmt_duration(r.ttl))),
            (
                "grant_ttl",
                format!("usable for {}", fmt_duration(r.grant_ttl)),
            ),
        ] {
            if !m.annotations.iter().any(|(n, _)| n == k) {
                out.push(format!("(no @{k}: default, {dflt})"));
            }
        }
    }
    out
}

/// The same policy with effect `permit`: same id, scope, conditions and
/// annotations, so Cedar reports it in `reason()` whenever it is satisfied.
fn as_permit(p: &Policy) -> Result<Policy, String> {
    if p.effect() == Effect::Permit {
        return Ok(p.clone());
    }
    let mut json = p.to_json().map_err(|e| e.to_string())?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("effect".into(), Value::String("permit".into()));
    }
    Policy::from_json(Some(p.id().clone()), json).map_err(|e| e.to_string())
}

// The server keeps the engine behind an atomic pointer swap.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
};

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

fn fingerprint(files: &[(String, String)], schema: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(String, String)> = files.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (name, text) in sorted {
        for part in [name.as_bytes(), text.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    if let Some(s) = schema {
        h.update(b"schema");
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
