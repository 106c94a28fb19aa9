//! JSON shapes of the REST API (the public contract; see BRIEF.md).

use secondkey_core::request::{RequestState, Requirement, Review};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer to `POST /v1/actions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResponse {
    /// Id of this decision (`act_…`), or of the request for a review (`req_…`).
    pub id: String,
    /// Lowercase hex SHA-256 of the RFC 8785 canonical JSON of the action.
    pub digest: String,
    /// `allow`, `deny` or `review`.
    pub decision: String,
    pub reasons: Vec<ReasonView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSummary>,
    /// Compact JWS (EdDSA), present at once for an allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// With `?execute=true`: the allow (or the approval of an identical
    /// earlier request) is already used up, and the caller runs the action
    /// now; it reports the result to `/v1/executions/{id}/result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionView>,
}

/// An authorization used up for the caller to run the action once, now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionView {
    /// `act_…` for an allow, the request id for an approved action.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who approved it (empty for an allow).
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// Why a decision came out as it did: one matching policy each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReasonView {
    pub policy: String,
    pub effect: String,
    pub message: String,
    /// The policy's `@reason("…")`, when it has one: why it applies, in
    /// its author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&secondkey_policy::Reason> for ReasonView {
    fn from(r: &secondkey_policy::Reason) -> Self {
        ReasonView {
            policy: r.policy_id.clone(),
            effect: r.effect.to_string(),
            message: r.message.clone(),
            reason: r.reason.clone(),
        }
    }
}

/// The held request, as returned with a `review` decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestSummary {
    pub id: String,
    #[schema(value_type = String)]
    pub state: RequestState,
    /// A page a human can open.
    pub url: String,
    pub expires_at: String,
    pub required: Vec<RequirementView>,
}

/// One review requirement: `quorum` distinct humans from `groups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequirementView {
    pub policy: String,
    /// Every group whose members may fill a slot now: the policy's, then
    /// any an escalation added.
    pub groups: Vec<String>,
    pub quorum: u32,
    /// Groups an escalation added; their members fill a slot only by a
    /// review given after the escalation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_to: Vec<String>,
    /// How reviewers read it: `security review`, or `security review
    /// (escalated to data-owners)`.
    #[serde(default)]
    pub label: String,
    /// Who may fill a slot: `security`, or once escalated `security, or
    /// data-owners reviewing after the escalation`.
    #[serde(default)]
    pub may_fill: String,
    /// The policy's `@reason("…")`: why review is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Requirement> for RequirementView {
    fn from(r: &Requirement) -> Self {
        RequirementView {
            policy: r.policy_id.clone(),
            groups: r.all_groups().into_iter().map(str::to_string).collect(),
            quorum: r.quorum,
            escalated_to: r.widened_groups().into_iter().map(str::to_string).collect(),
            label: r.label(),
            may_fill: r.who_may_fill(),
            reason: r.reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    pub reviewer: String,
    /// `approve` or `deny`.
    pub decision: String,
    pub comment: Option<String>,
    /// When it was given, in milliseconds since the Unix epoch.
    pub at: i64,
}

impl From<&Review> for ReviewView {
    fn from(r: &Review) -> Self {
        ReviewView {
            reviewer: r.reviewer.to_string(),
            decision: serde_json::to_value(r.decision)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            comment: r.comment.clone(),
            at: r.at.0,
        }
    }
}

/// A request as `GET /v1/requests/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub id: String,
    #[schema(value_type = String)]
    pub state: RequestState,
    pub url: String,
    pub digest: String,
    /// The action exactly as it will run.
    #[schema(value_type = Object)]
    pub action: serde_json::Value,
    pub requester: String,
    pub owner: Option<String>,
    /// The human the action says it is done for, and whether that is
    /// backed (a configured delegation or a verified token claim). Unbacked,
    /// it is only declared: it bars nobody from reviewing and lets nobody
    /// see the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<OnBehalfOfView>,
    pub required: Vec<RequirementView>,
    pub reviews: Vec<ReviewView>,
    pub created_at: String,
    pub expires_at: String,
    pub decided_at: Option<String>,
    /// The grant (compact JWS) — only for the requester, once approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    pub grant_expires_at: Option<String>,
}

/// `on_behalf_of` as a request shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnBehalfOfView {
    pub principal: String,
    /// `false`: declared by the agent only, with no effect on anyone's rights.
    pub backed: bool,
}

/// Body of `POST /v1/requests/{id}/reviews`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `approve` or `deny`.
    pub decision: String,
    pub comment: Option<String>,
}

/// Body of `POST /v1/reviews/batch`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchReviewBody {
    /// Request ids, all from one agent session (1 to 100).
    pub requests: Vec<String>,
    /// `approve` or `deny`, for each of them.
    pub decision: String,
    pub comment: Option<String>,
}

/// One request's outcome in a batch review.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchReviewResult {
    pub id: String,
    /// The request after the review, when it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestView>,
    /// Why this one was refused (`self_review`, `already_decided`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<crate::error::ErrorDetail>,
}

/// Body of `POST /v1/grants/consume`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    pub grant: String,
    pub digest: String,
}

/// Answer to `POST /v1/grants/consume` (documentation of the JSON the
/// gateway builds from the grant's verified claims).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsumedView {
    /// Always `true`: a refused use is an error.
    pub consumed: bool,
    /// The grant id (`jti`).
    pub grant: String,
    /// The request id, or null for an immediate allow.
    pub request: Option<String>,
    pub digest: String,
    pub requester: String,
    pub approvers: Vec<String>,
}

/// Body of `POST /v1/requests/{id}/result`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultBody {
    /// `succeeded`, `failed` or `unknown`.
    pub outcome: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}
