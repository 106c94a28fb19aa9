//! Cedar policy for secondkey: schema, entities, the allow / deny / review
//! decision, explanations and table-driven policy tests.
//!
//! # The request Cedar sees
//!
//! | Cedar      | secondkey                                                             |
//! |------------|-----------------------------------------------------------------------|
//! | principal  | `User::"alice"`, `Agent::"report-bot"`, `Service::"ci"`, member of `Group::"<g>"` for each configured group; an agent with a known owner has `owner: User::"<owner>"` |
//! | action     | `Action::"<kind>.<operation>"`, member of `Action::"<kind>"` (plus any ancestors a schema declares) |
//! | resource   | `Resource::"<resource>"` with `uri` (the resource string, for `like`), `kind`, `operation` and optional `target`; it has no parents, so `resource in R` means `resource == R` |
//! | context    | see below                                                             |
//!
//! The Cedar `context` record mixes two sources that policies must tell apart
//! (invariant 8):
//!
//! * **declared** — the action's own `context` object, as the agent sent it:
//!   top-level keys such as `context.environment` or `context.estimated_rows`.
//!   Untrusted: an agent can write anything there.
//! * **gateway-filled** — reserved keys the agent cannot set (a declared
//!   context naming one of them is refused, see [`RESERVED_CONTEXT_KEYS`]):
//!   `context.params` (the action's params), `context.lineage`
//!   (`{reads, writes}` as sets of strings), `context.justification` (string,
//!   `""` when absent) and `context.gateway` — facts the gateway derived itself
//!   and passes to [`PolicyEngine::decide`] (authenticated principal kind,
//!   transport, the configured environment of the target, the tables a parser
//!   found, …). Write rules that matter against `context.gateway.*`.
//!
//! JSON maps to Cedar as: string → String, bool → Bool, integer → Long, array
//! → Set, object → Record. A non-integral number or an integer outside the
//! 64-bit signed range cannot be represented and the action is denied with a
//! clear error ([`check_action`] lets callers answer `400` first). `null`
//! object members are dropped (as if absent); `null` inside an array is refused.
//!
//! # Decision rules
//!
//! Every policy that can match is evaluated; then, on top of Cedar:
//!
//! 1. any matching plain `forbid` → **deny**;
//! 2. otherwise, if a matching `forbid` carries `@review("g1,g2")` and some
//!    `permit` matches → **review**, with one [`Requirement`] per matching
//!    review policy (`@quorum("N")`, default 1); the request may wait the
//!    smallest `@ttl` (default 1h) and an approval stays usable for the
//!    smallest `@grant_ttl` (default 5m). A review forbid without a matching
//!    permit → **deny**;
//! 3. otherwise a matching `permit` → **allow**; nothing matches → **deny**.
//!
//! A policy that fails to evaluate counts against the action: an erroring
//! `forbid` — plain or `@review` — counts as a matching plain forbid (deny), an
//! erroring `permit` is ignored. Both are reported in [`Decision::reasons`]
//! and [`Decision::errors`].
//!
//! Annotations are checked at load time (every load and reload), and a
//! policy set with a bad one is refused: an annotation secondkey does not
//! read is an error naming the closest known one, unless it carries
//! [`CUSTOM_PREFIX`] or is allow-listed ([`LoadOptions::annotations`]);
//! `@review` only on `forbid`, `@quorum`/`@ttl`/`@grant_ttl` only together
//! with `@review`, `@record("after")` only on `permit`, `@reason` anywhere
//! (non-empty, at most [`MAX_REASON_CHARS`] characters); durations are
//! `30s`, `15m`, `1h`, `1d` within [`TTL_BOUNDS`] / [`GRANT_TTL_BOUNDS`].
//! Given the groups reviewers come from ([`LoadOptions::groups`]), an
//! `@review` group nobody is in, or a quorum more than its humans, is an
//! error — a warning naming the group when the identity provider could
//! supply the rest.
//!
//! `@reason("…")`, on any policy, is the sentence a reviewer or a denied
//! agent reads about why the policy applies: it travels in
//! [`Reason::reason`] and [`Requirement::reason`].
//!
//! `@record("after")` (only on `permit`) marks an allow that may run before
//! its log entry is durable: [`Decision::record_after`] is set when every
//! matching permit carries it and nothing failed to evaluate. The gateway
//! gives it its meaning (recorded with the result within `[log]
//! after_window`).
//!
//! # Loading and schema
//!
//! [`PolicyEngine::load_dir`] reads `*.cedar` files (policy ids are
//! `<file stem>:<index in file>` or `<file stem>:<@id>`) and validates them
//! strictly against a schema. The built-in schema ([`BUILTIN_SCHEMA`])
//! declares the entity types above, the `Context` type and the common action
//! kinds. A `schema.cedarschema` in the directory **replaces** it (Cedar
//! fragments cannot redefine a type, so extending `Context` requires a
//! replacement); copy the built-in one and add to it. Actions the policies
//! name but the schema does not declare (custom kinds such as
//! `Action::"jira.create"`) are declared automatically — member of their kind,
//! applying to all principal types, `Resource` and `Context` — so custom kinds
//! validate without schema edits.
//!
//! # Speed
//!
//! Policies are sliced by their action scope (`==`, `in`, `in [...]`, none)
//! and by a resource `==`/`in` scope, so a decision evaluates only policies
//! that can match. Each policy is evaluated as a `permit` twin (same scope and
//! conditions) so Cedar lists every satisfied policy; effects are applied by
//! the rules above. Decisions are cached by everything the policies can
//! read (the principal, the action's entities, and the context attributes
//! some policy references), per loaded engine.

mod annotations;
mod cache;
mod engine;
mod load;
mod request;
mod testing;

/// The `secondkey-core` types this crate consumes, re-exported for callers.
pub mod types {
    pub use secondkey_core::action::{Action, Lineage};
    pub use secondkey_core::principal::{Principal, PrincipalId, PrincipalKind};
    pub use secondkey_core::request::Requirement;
}

pub use annotations::{
    fmt_duration, parse_duration, RecordMode, CUSTOM_PREFIX, DEFAULT_GRANT_TTL, DEFAULT_TTL,
    GRANT_TTL_BOUNDS, KNOWN_ANNOTATIONS, MAX_REASON_CHARS, TTL_BOUNDS,
};
pub use engine::{Decision, Outcome, PolicyEngine, Reason, ReasonEffect};
pub use load::{Groups, IdpGroups, Issue, LoadError, LoadOptions, BUILTIN_SCHEMA, SCHEMA_FILE};
pub use request::{check_action, RequestError, RESERVED_CONTEXT_KEYS};
pub use testing::{run_tests, run_tests_str, CaseResult, TestReport};
pub use types::{Action, Principal, PrincipalId, Requirement};
