//! The REST API: thin handlers that extract input, call the [`Gateway`] and
//! map the result. The OpenAPI document is generated from these handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use secondkey_core::request::{Outcome as ExecOutcome, RequestState, ReviewDecision};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::admission::Hold;
use crate::auth::{Authenticated, Caller, MaybeCaller};
use crate::error::{ApiError, ErrorBody};
use crate::gateway::clamp_wait;
use crate::views::*;
use crate::AppState;

/// Query parameters whose errors follow our error format.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| {
                // "wait: invalid digit found in string", without the
                // framework's own preamble.
                let text = e.body_text();
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                ApiError::bad_request(
                    "invalid_query",
                    format!("the query string is invalid: {why}"),
                )
            })
    }
}

/// A JSON body kept as bytes, after the same content-type and size checks
/// (actions are parsed strictly by the core).
pub struct RawJson(pub Bytes);

impl FromRequest<AppState> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct = content_type(&req);
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if !is_json(&ct) {
            return Err(unsupported_media());
        }
        Ok(RawJson(bytes))
    }
}

/// The request's Content-Type, or "" when it has none or it is not text.
fn content_type(req: &Request) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Whether a Content-Type is `application/json`, whatever its parameters
/// (`; charset=utf-8`); media types compare without case (RFC 9110 §8.3.1).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The body of a call that takes none (withdraw, revoke): nothing, or the
/// JSON object `{}`. Anything else is refused as any other call's malformed
/// body is, before the call changes anything.
pub struct NoBody;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

impl FromRequest<AppState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct = content_type(&req);
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if bytes.is_empty() {
            return Ok(NoBody);
        }
        if !is_json(&ct) {
            return Err(unsupported_media());
        }
        parse_json::<Nothing>(&bytes).map(|_| NoBody)
    }
}

/// A call's JSON body: `invalid_json`, or `unknown_field` for a key it does
/// not take.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.contains("unknown field") {
            "unknown_field"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(code, format!("the body is not valid: {msg}"))
    })
}

/// A body of any type kept as bytes, read under `[requests]
/// max_body_bytes` with our error format (`413 too_large`,
/// `400 invalid_body`): for endpoints that check the bytes themselves,
/// such as signed chat interactions.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        // A body declared over the limit is refused at once, from its
        // header, instead of waiting for bytes that will be refused anyway.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = state.gateway.config.max_body_bytes;
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large_body(limit));
        }
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| body_error(e, state))
    }
}

fn too_large_body(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than {limit} bytes"),
    )
}

fn body_error(e: axum::extract::rejection::BytesRejection, state: &AppState) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large_body(state.gateway.config.max_body_bytes);
    }
    if let Some(t) = crate::limits::conn::BodyTimedOut::in_causes(&e) {
        return ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string());
    }
    ApiError::bad_request("invalid_body", e.body_text())
}

fn unsupported_media() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as `Content-Type: application/json`",
    )
}

/// A JSON body whose errors follow our error format (400 with a code, 413
/// when too large) instead of the framework's defaults.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawJson(bytes) = RawJson::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "secondkey", description = "Action-level approvals for AI agents and pipelines."),
    paths(submit_action, execution_result, execution_results, lineage, lineage_graph, list_requests, get_request, request_events, review_request,
          review_batch, withdraw_request, revoke_request, request_result, consume_grant, jwks, log_checkpoint,
          log_proof, log_tile, log_verifier_key, healthz, metrics, revoke_sessions),
    components(schemas(ActionResponse, OnBehalfOfView, ExecutionView, ExecutionResultBody, ExecutionResultsBody, BatchResultItem, BatchResultOutcome, crate::intercept::LineageRecord, ReasonView, RequestSummary, RequirementView, RequestView,
                       ReviewView, ReviewBody, BatchReviewBody, BatchReviewResult, ConsumeBody, ConsumedView, ResultBody, ErrorBody,
                       RevokeSessionsBody, crate::web::revocation::Revoked)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The gateway's router, without extensions.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new(), Vec::new())
}

/// [`router`] with extra routes (those of the extensions), and their
/// OpenAPI descriptions merged into the document at `/openapi.json`.
pub fn router_with(
    state: AppState,
    extra: Router<AppState>,
    docs: Vec<utoipa::openapi::OpenApi>,
) -> Router {
    let limit = state.gateway.config.max_body_bytes;
    let mut doc = ApiDoc::openapi();
    for d in docs {
        doc.merge(d);
    }
    let doc = Arc::new(doc);
    Router::new()
        .merge(extra)
        .route("/v1/actions", post(submit_action))
        .route("/v1/executions/{id}/result", post(execution_result))
        .route("/v1/executions/results", post(execution_results))
        .route("/v1/lineage", get(lineage))
        .route("/v1/lineage/graph", get(lineage_graph))
        .route("/v1/requests", get(list_requests))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/requests/{id}/events", get(request_events))
        .route("/v1/requests/{id}/reviews", post(review_request))
        .route("/v1/requests/{id}/withdraw", post(withdraw_request))
        .route("/v1/requests/{id}/revoke", post(revoke_request))
        .route("/v1/requests/{id}/result", post(request_result))
        .route("/v1/grants/consume", post(consume_grant))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/log/checkpoint", get(log_checkpoint))
        .route("/v1/log/proof/{index}", get(log_proof))
        .route("/v1/log/tile/{*path}", get(log_tile))
        .route("/v1/log/verifier-key", get(log_verifier_key))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .route("/v1/reviews/batch", post(review_batch))
        .route("/v1/sessions/revoke", post(revoke_sessions))
        .merge(crate::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    /// `true`: the caller runs the action itself at once (an adapter).
    execute: Option<bool>,
}

/// Submit an action for a decision. With `?execute=true` an allow (or the
/// approval of an identical earlier request of the caller) comes back used
/// up as `execution`, and an identical pending request is returned rather
/// than a second one.
#[utoipa::path(post, path = "/v1/actions", params(("execute" = Option<bool>, Query)),
    request_body(content = Object, description = "An action (see the brief's contract)"),
    responses((status = 200, body = ActionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "`too_many_pending` or `rate_limited`, with `Retry-After`: nothing was recorded"),
              (status = 503, body = ErrorBody, description = "the log could not record the decision: nothing authorized")))]
async fn submit_action(
    State(s): State<AppState>,
    Authenticated(p, credential): Authenticated,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Q(q): Q<SubmitQuery>,
    RawJson(body): RawJson,
) -> Result<Json<ActionResponse>, ApiError> {
    let execute = q.execute.unwrap_or(false);
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip());
    Ok(Json(
        s.gateway
            .submit_from(&p, &credential, &body, execute, peer)
            .await?,
    ))
}

/// How an action run with `?execute=true` went.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionResultBody {
    pub ok: bool,
    /// What the runner knows: status, size, duration, error…
    #[serde(default)]
    pub summary: Value,
    /// Dataset URIs read and written.
    #[serde(default)]
    pub reads: Vec<String>,
    #[serde(default)]
    pub writes: Vec<String>,
}

/// Report the result of an execution (once; only its own caller).
#[utoipa::path(post, path = "/v1/executions/{id}/result", params(("id" = String, Path)),
    request_body = ExecutionResultBody,
    responses((status = 204, description = "recorded"),
              (status = 400, body = ErrorBody, description = "`unsafe_number` (a number JSON cannot carry exactly), a malformed body"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "`outcome_recorded`")))]
async fn execution_result(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecutionResultBody>,
) -> Result<StatusCode, ApiError> {
    let result = body.checked()?;
    s.gateway.report_execution(&p, &id, result).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl ExecutionResultBody {
    /// The result, once its lineage is within bounds.
    fn checked(self) -> Result<crate::intercept::ExecutionResult, ApiError> {
        let too_many = self.reads.len() + self.writes.len() > 1024;
        let too_long = self
            .reads
            .iter()
            .chain(&self.writes)
            .any(|d| d.is_empty() || d.len() > 2048);
        if too_many || too_long {
            return Err(ApiError::bad_request(
                "invalid_lineage",
                "reads and writes: at most 1024 dataset URIs in all, each 1 to 2048 bytes",
            ));
        }
        crate::intercept::check_numbers(&self.summary, "summary")?;
        Ok(crate::intercept::ExecutionResult {
            ok: self.ok,
            summary: self.summary,
            reads: self.reads,
            writes: self.writes,
        })
    }
}

/// Most results in one `POST /v1/executions/results`.
const MAX_BATCH_RESULTS: usize = 256;

/// Body of `POST /v1/executions/results`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionResultsBody {
    /// 1 to 256 results, each of a different execution.
    pub results: Vec<BatchResultItem>,
}

/// One result in a batch: an execution id and what `POST
/// /v1/executions/{id}/result` would carry.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchResultItem {
    pub execution: String,
    pub ok: bool,
    #[serde(default)]
    pub summary: Value,
    #[serde(default)]
    pub reads: Vec<String>,
    #[serde(default)]
    pub writes: Vec<String>,
}

/// How one result of a batch went.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BatchResultOutcome {
    pub execution: String,
    /// Whether it is now recorded.
    pub recorded: bool,
    /// Why not (`not_found`, `outcome_recorded`, …), when it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<crate::error::ErrorDetail>,
}

/// Report the results of several executions at once, as a runner that
/// runs many actions in a row does (the MCP stdio relay). Each is checked
/// and recorded exactly as by `POST /v1/executions/{id}/result`, on its
/// own: one refusal does not stop the others. A malformed batch (empty,
/// over 256, the same execution twice, bad lineage in any item) is
/// refused whole with `400`, and nothing is recorded.
#[utoipa::path(post, path = "/v1/executions/results", request_body = ExecutionResultsBody,
    responses((status = 200, body = [BatchResultOutcome]),
              (status = 400, body = ErrorBody, description = "`invalid_batch`, `invalid_lineage`")))]
async fn execution_results(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<ExecutionResultsBody>,
) -> Result<Json<Vec<BatchResultOutcome>>, ApiError> {
    let n = body.results.len();
    if n == 0 || n > MAX_BATCH_RESULTS {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("results: 1 to {MAX_BATCH_RESULTS} items, not {n}"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    for (i, item) in body.results.into_iter().enumerate() {
        if !seen.insert(item.execution.clone()) {
            return Err(ApiError::bad_request(
                "invalid_batch",
                format!("results[{i}]: execution {:?} appears twice", item.execution),
            ));
        }
        let one = ExecutionResultBody {
            ok: item.ok,
            summary: item.summary,
            reads: item.reads,
            writes: item.writes,
        };
        let result = one
            .checked()
            .map_err(|e| ApiError::bad_request(e.code, format!("results[{i}]: {}", e.message)))?;
        items.push((item.execution, result));
    }
    // Concurrently: each becomes its own store job, and they share a commit.
    let outcomes = futures_util::future::join_all(items.into_iter().map(|(id, result)| {
        let g = &s.gateway;
        let p = &p;
        async move {
            let r = g.report_execution(p, &id, result).await;
            (id, r)
        }
    }))
    .await;
    Ok(Json(
        outcomes
            .into_iter()
            .map(|(execution, r)| match r {
                Ok(()) => BatchResultOutcome {
                    execution,
                    recorded: true,
                    error: None,
                },
                Err(e) => BatchResultOutcome {
                    execution,
                    recorded: false,
                    error: Some(e.into()),
                },
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineageQuery {
    principal: String,
}

/// What a principal read and wrote through the gateway's adapters.
#[utoipa::path(get, path = "/v1/lineage", params(("principal" = String, Query)),
    responses((status = 200, body = [crate::intercept::LineageRecord]), (status = 403, body = ErrorBody)))]
async fn lineage(
    State(s): State<AppState>,
    Caller(p): Caller,
    Q(q): Q<LineageQuery>,
) -> Result<Json<Vec<crate::intercept::LineageRecord>>, ApiError> {
    let principal = secondkey_core::principal::PrincipalId::parse(&q.principal)
        .map_err(|e| ApiError::bad_request("invalid_principal", e.to_string()))?;
    Ok(Json(s.gateway.lineage(&p, principal.as_str()).await?))
}

/// The lineage graph of a period, read from the log: principals → the
/// actions they ran → the datasets those read, wrote or exported, each
/// action and edge saying who approved it and when (absent: policy allowed
/// it) and which log entries prove it. Log readers see every principal;
/// anyone else their own actions and those of the agents they own. At most
/// 200 actions (the newest; `truncated` says when more matched).
#[utoipa::path(get, path = "/v1/lineage/graph", params(crate::lineage::GraphQuery),
    responses((status = 200, description = "`{from, to, agent, dataset, environment, nodes: [{id, kind: principal|action|dataset, label, category, request?, approved?: {by, at, index}, at?, resource?, outcome?, entries}], edges: [{from, to, kind: ran|read|write|export, approved?, request?, entries}], actions, truncated}`", body = Object),
              (status = 400, body = ErrorBody, description = "`invalid_period`, `invalid_filter`, `invalid_principal` (`agent` is not a principal id), `period_too_long`")))]
async fn lineage_graph(
    State(s): State<AppState>,
    Caller(p): Caller,
    Q(q): Q<crate::lineage::GraphQuery>,
) -> Result<Json<Value>, ApiError> {
    let (f, g) = s.gateway.lineage_graph(&p, &q).await?;
    let mut v = serde_json::to_value(&g).map_err(|e| ApiError::internal(e.to_string()))?;
    v["from"] = json!(secondkey_audit::time::rfc3339(f.period.from));
    v["to"] = json!(secondkey_audit::time::rfc3339(f.period.to));
    v["agent"] = json!(f.agent);
    v["dataset"] = json!(f.dataset);
    v["environment"] = json!(f.environment);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    /// Page size, 1..=500 (default 100).
    limit: Option<usize>,
    /// The `x-next-before` header of the previous page.
    before: Option<String>,
}

fn parse_state(s: &str) -> Result<RequestState, ApiError> {
    serde_json::from_value(json!(s)).map_err(|_| {
        ApiError::bad_request(
            "invalid_state",
            format!("unknown state {s:?}; use pending, approved, denied, expired, withdrawn, revoked, executed, failed or unknown"),
        )
    })
}

/// Requests the caller made or may review.
#[utoipa::path(get, path = "/v1/requests", params(("state" = Option<String>, Query, description = "e.g. pending"),
        ("limit" = Option<usize>, Query, description = "page size, 1 to 500 (default 100)"),
        ("before" = Option<String>, Query, description = "the `x-next-before` header of the previous page")),
    responses((status = 200, body = [RequestView],
               headers(("x-next-before" = String, description = "present when there are older requests: pass it as `before`"))),
              (status = 400, body = ErrorBody, description = "`invalid_state` or `invalid_limit`")))]
async fn list_requests(
    State(s): State<AppState>,
    Caller(p): Caller,
    Q(q): Q<ListQuery>,
) -> Result<Response, ApiError> {
    let state = q.state.as_deref().map(parse_state).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 500",
        ));
    }
    let page = s.gateway.list(&p, state, limit, q.before).await?;
    let views = page
        .requests
        .iter()
        .map(|r| s.gateway.view(&p, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut resp = Json(views).into_response();
    if let Some(next) = page
        .next
        .and_then(|n| header::HeaderValue::from_str(&n).ok())
    {
        resp.headers_mut().insert("x-next-before", next);
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<u64>,
}

/// One request; `?wait=N` long-polls up to N seconds until its state changes.
#[utoipa::path(get, path = "/v1/requests/{id}", params(("id" = String, Path), ("wait" = Option<u64>, Query)),
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "`too_many_waits`: the caller holds its most long-polls")))]
async fn get_request(
    State(s): State<AppState>,
    Authenticated(p, credential): Authenticated,
    Path(id): Path<String>,
    Q(q): Q<WaitQuery>,
) -> Result<Json<RequestView>, ApiError> {
    let g = &s.gateway;
    let mut changes = g.subscribe();
    let req = g.get_request(&p, &id).await?;
    let wait = clamp_wait(q.wait.unwrap_or(0), g.config.max_wait);
    if wait.is_zero() || req.state.is_terminal() {
        return Ok(Json(g.view(&p, &req)?));
    }
    // Held until this handler ends, however it ends.
    let _slot = g.hold(Hold::Wait, &p, &credential)?;
    let start_state = req.state;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) => break,
            Ok(Ok(c)) if c.id == id && c.state != start_state => break,
            Ok(Ok(c)) if !c.is_resync() => continue,
            // A re-sync or a lag: changes may have been missed; look again.
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                let now = g.get_request(&p, &id).await?;
                if now.state != start_state {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    let req = g.get_request(&p, &id).await?;
    Ok(Json(g.view(&p, &req)?))
}

/// Server-sent events: the request now, then on every change, until final.
#[utoipa::path(get, path = "/v1/requests/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `state` events carrying a RequestView"),
              (status = 429, body = ErrorBody, description = "`too_many_streams`: the caller holds its most event streams")))]
async fn request_events(
    State(s): State<AppState>,
    Authenticated(p, credential): Authenticated,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    event_stream(s.gateway.clone(), p, &credential, None, id).await
}

/// How often an idle event stream sends a keep-alive comment, and checks
/// that the web session it was opened with still holds.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `state` events of one request as `p` may see it: now, then on every
/// change (a review counts), until final. Shared by the API and the web
/// request page, which reaches it with its `session` instead of a token:
/// such a stream ends once the session no longer holds (signed out, or all
/// of its person's sessions ended), checked before each event and at every
/// keep-alive.
pub(crate) async fn event_stream(
    g: Arc<crate::gateway::Gateway>,
    p: secondkey_core::principal::Principal,
    credential: &crate::identity::Credential,
    session: Option<crate::web::session::SessionClaims>,
    id: String,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut changes = g.subscribe();
    let first = g.get_request(&p, &id).await?;
    // Each principal (and each issuer of unconfigured ones) holds a bounded
    // number of open streams; the slot is given back when the stream ends,
    // however it ends.
    let slot = g.hold(Hold::Stream, &p, credential)?;
    let lifetime = credential.lifetime(Duration::from_secs(3600));
    let stream = async_stream(move |tx| async move {
        let _slot = slot;
        let mut req = first;
        let mut last: Option<(RequestState, usize)> = None;
        // A stream lives at most an hour, and no longer than the token that
        // opened it (its `exp`); clients reconnect.
        let end = tokio::time::Instant::now() + lifetime;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let key = (req.state, req.reviews.len());
            if last != Some(key) {
                if !holds(&g, session.as_ref()).await {
                    break;
                }
                last = Some(key);
                let data = match g.view(&p, &req) {
                    Ok(v) => serde_json::to_string(&v).unwrap_or_default(),
                    Err(_) => break,
                };
                if tx
                    .send(Event::default().event("state").data(data))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if req.state.is_terminal() {
                break;
            }
            let next = tokio::select! {
                _ = tx.closed() => break,
                _ = tokio::time::sleep_until(end) => break,
                _ = tick.tick(), if session.is_some() => {
                    if holds(&g, session.as_ref()).await {
                        continue;
                    }
                    break;
                }
                n = changes.recv() => n,
            };
            match next {
                Ok(c) if c.id != id && !c.is_resync() => continue,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
            match g.get_request(&p, &id).await {
                Ok(r) => req = r,
                Err(_) => break,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Whether a stream opened with a web `session` may go on. One opened
/// with a token is checked when it opens only: a `[[principals]]` token
/// holds for the process's life (a workload JWT's stream may outlive its
/// `exp`, within the stream's hour).
async fn holds(
    g: &crate::gateway::Gateway,
    session: Option<&crate::web::session::SessionClaims>,
) -> bool {
    match session {
        Some(s) => crate::web::session::session_holds(g, s).await,
        None => true,
    }
}

/// A tiny adapter from a producer task to a `Stream`, so that SSE needs no
/// extra dependency.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(f(tx));
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// Approve or deny a request.
#[utoipa::path(post, path = "/v1/requests/{id}/reviews", params(("id" = String, Path)), request_body = ReviewBody,
    responses((status = 200, body = RequestView),
              (status = 403, body = ErrorBody, description = "`self_review` or `not_eligible`"),
              (status = 409, body = ErrorBody, description = "`already_decided`, `expired` or `duplicate_reviewer`")))]
async fn review_request(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<Json<RequestView>, ApiError> {
    let decision = parse_review_decision(&body.decision)?;
    let req = s.gateway.review(&p, &id, decision, body.comment).await?;
    Ok(Json(s.gateway.view(&p, &req)?))
}

fn parse_review_decision(s: &str) -> Result<ReviewDecision, ApiError> {
    match s {
        "approve" => Ok(ReviewDecision::Approve),
        "deny" => Ok(ReviewDecision::Deny),
        other => Err(ApiError::bad_request(
            "invalid_decision",
            format!("decision must be \"approve\" or \"deny\", not {other:?}"),
        )),
    }
}

/// Approve or deny several pending requests of one agent session (same
/// requester, same `context.session`) together. Each is reviewed on its own,
/// through the same checks as a single review, and recorded as its own
/// review; one refusal does not stop the others. A batch holding a
/// sensitive operation in a production environment (`[web]`) needs a
/// `comment`, or nothing is decided (`comment_required`).
#[utoipa::path(post, path = "/v1/reviews/batch", request_body = BatchReviewBody,
    responses((status = 200, body = [BatchReviewResult]),
              (status = 400, body = ErrorBody, description = "`invalid_batch`, `mixed_batch` or `comment_required` (nothing was decided)"),
              (status = 404, body = ErrorBody)))]
async fn review_batch(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<BatchReviewBody>,
) -> Result<Json<Vec<BatchReviewResult>>, ApiError> {
    let decision = parse_review_decision(&body.decision)?;
    let results =
        crate::web::review_batch(&s.gateway, &p, &body.requests, decision, body.comment).await?;
    let mut out = Vec::with_capacity(results.len());
    for (id, r) in results {
        out.push(match r {
            Ok(req) => BatchReviewResult {
                id,
                request: Some(s.gateway.view(&p, &req)?),
                error: None,
            },
            Err(e) => BatchReviewResult {
                id,
                request: None,
                error: Some(e.into()),
            },
        });
    }
    Ok(Json(out))
}

/// The requester withdraws a pending request. The call takes no body (or
/// `{}`).
#[utoipa::path(post, path = "/v1/requests/{id}/withdraw", params(("id" = String, Path)),
    responses((status = 200, body = RequestView),
              (status = 400, body = ErrorBody, description = "a body other than none or `{}` (`invalid_json`, `unknown_field`); nothing was changed"),
              (status = 404, body = ErrorBody, description = "no request of yours with this id"),
              (status = 409, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
async fn withdraw_request(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<Json<RequestView>, ApiError> {
    let req = s.gateway.withdraw(&p, &id).await?;
    Ok(Json(s.gateway.view(&p, &req)?))
}

/// An eligible reviewer revokes an approval before its grant is used. The
/// call takes no body (or `{}`).
#[utoipa::path(post, path = "/v1/requests/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200, body = RequestView),
              (status = 400, body = ErrorBody, description = "a body other than none or `{}` (`invalid_json`, `unknown_field`); nothing was changed"),
              (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no request with this id that you may review"),
              (status = 409, body = ErrorBody),
              (status = 415, body = ErrorBody)))]
async fn revoke_request(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<Json<RequestView>, ApiError> {
    let req = s.gateway.revoke(&p, &id).await?;
    Ok(Json(s.gateway.view(&p, &req)?))
}

/// The requester reports how an executed action ended.
#[utoipa::path(post, path = "/v1/requests/{id}/result", params(("id" = String, Path)), request_body = ResultBody,
    responses((status = 200, body = RequestView),
              (status = 400, body = ErrorBody, description = "`invalid_outcome`, `unsafe_number`, a malformed body"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn request_result(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResultBody>,
) -> Result<Json<RequestView>, ApiError> {
    let outcome = match body.outcome.as_str() {
        "succeeded" => ExecOutcome::Succeeded,
        "failed" => ExecOutcome::Failed,
        "unknown" => ExecOutcome::Unknown,
        other => {
            return Err(ApiError::bad_request(
                "invalid_outcome",
                format!("outcome must be succeeded, failed or unknown, not {other:?}"),
            ))
        }
    };
    let req = s
        .gateway
        .record_outcome(&p, &id, outcome, body.detail)
        .await?;
    Ok(Json(s.gateway.view(&p, &req)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSessionsBody {
    /// The person whose web sessions end, `user:NAME`.
    user: String,
}

/// End every web session of one person (someone left, a laptop was
/// stolen): sessions of `user` issued until now are signed out on every
/// replica, a new sign-in works. Members of `[web] session_admins` (people
/// and services) may end anyone's; anyone may end their own. Recorded as a
/// `web.sessions.revoked` log entry.
#[utoipa::path(post, path = "/v1/sessions/revoke", request_body = RevokeSessionsBody,
    responses((status = 200, body = crate::web::revocation::Revoked),
              (status = 400, body = ErrorBody, description = "`invalid_user`: not a person's id (user:NAME); nothing was changed"),
              (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "`not_session_admin`: not your own sessions, and not in `[web] session_admins`"),
              (status = 503, body = ErrorBody, description = "the log could not record it: nothing was changed")))]
async fn revoke_sessions(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<RevokeSessionsBody>,
) -> Result<Json<crate::web::revocation::Revoked>, ApiError> {
    Ok(Json(
        crate::web::revocation::revoke_all(&s.gateway, &p, &body.user).await?,
    ))
}

/// Use a grant: succeeds exactly once, for exactly the approved digest.
#[utoipa::path(post, path = "/v1/grants/consume", request_body = ConsumeBody,
    responses((status = 200, body = ConsumedView, description = "consumed"), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "`grant_used`, `digest_mismatch` or `expired`")))]
async fn consume_grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<ConsumeBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        s.gateway.consume(&p, &body.grant, &body.digest).await?,
    ))
}

/// Public keys that verify grants offline.
#[utoipa::path(get, path = "/.well-known/jwks.json", security(), responses((status = 200, description = "JWK set")))]
async fn jwks(State(s): State<AppState>) -> Json<Value> {
    Json(s.gateway.jwks())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointQuery {
    /// `true`: the newest checkpoint witnesses cosigned (may be older).
    witnessed: Option<bool>,
}

/// The latest signed checkpoint (C2SP tlog-checkpoint signed note), with
/// the cosignatures of `[[log.witnesses]]` that cosigned it already. With
/// `?witnessed=true`, the newest checkpoint that witnesses cosigned
/// (`404 not_witnessed` if none yet).
#[utoipa::path(get, path = "/v1/log/checkpoint", security(), params(("witnessed" = Option<bool>, Query)),
    responses((status = 200, description = "text/plain signed note"), (status = 404, body = ErrorBody, description = "`not_witnessed`")))]
async fn log_checkpoint(
    State(s): State<AppState>,
    Q(q): Q<CheckpointQuery>,
) -> Result<Response, ApiError> {
    let note = if q.witnessed.unwrap_or(false) {
        crate::witness::latest_witnessed(&s.gateway).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_witnessed",
                "no witness has cosigned a checkpoint of this log yet (see [[log.witnesses]])",
            )
        })?
    } else {
        s.gateway.published_checkpoint().await?
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// The log's signed-note verifier key. Auditors should obtain it out of band.
#[utoipa::path(get, path = "/v1/log/verifier-key", security(), responses((status = 200, description = "text/plain verifier key")))]
async fn log_verifier_key(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", s.gateway.verifier_key()),
    )
        .into_response()
}

/// An inclusion-proof receipt for one entry against the current checkpoint.
#[utoipa::path(get, path = "/v1/log/proof/{index}", params(("index" = u64, Path)),
    responses((status = 200, description = "receipt JSON"), (status = 404, body = ErrorBody)))]
async fn log_proof(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(index): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.gateway.require_log_reader(&p)?;
    let index: u64 = index.parse().map_err(|_| {
        ApiError::bad_request("invalid_index", "the index must be a non-negative integer")
    })?;
    let receipt = crate::logview::receipt(&s.gateway, index).await?;
    Ok(Json(receipt))
}

/// C2SP tlog-tiles: hash tiles (public) and entry bundles (log readers only:
/// entries hold actions and their parameters).
#[utoipa::path(get, path = "/v1/log/tile/{path}", security(), params(("path" = String, Path, description = "e.g. 0/x001/234.p/7 or entries/000")),
    responses((status = 200, description = "application/octet-stream"), (status = 404, body = ErrorBody)))]
async fn log_tile(
    State(s): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = crate::logview::tile(&s.gateway, &format!("tile/{path}"), caller.as_ref()).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

/// Liveness and log writability.
#[utoipa::path(get, path = "/healthz", security(), responses((status = 200, description = "ok"), (status = 503, description = "the log cannot be written: everything is refused")))]
async fn healthz(State(s): State<AppState>) -> Response {
    let g = &s.gateway;
    let (status, mut v) = match g.store.health() {
        Ok(()) => (
            StatusCode::OK,
            json!({"status": "ok", "log_size": g.store.log_size()}),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failing", "error": {"code": "log_unavailable", "message": why},
                    "log_size": g.store.log_size()}),
        ),
    };
    if g.store.is_shared() {
        v["replica"] = json!({"id": g.replica.id, "leader": g.replica.is_leader()});
    }
    if status == StatusCode::OK && !g.config.witnesses.is_empty() {
        v["witnesses"] = json!(g.witness_status());
    }
    (status, Json(v)).into_response()
}

/// Prometheus metrics, for members of the `[metrics] readers` groups
/// (default `monitoring`).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "`not_metrics_reader`")))]
async fn metrics(State(s): State<AppState>, Caller(p): Caller) -> Result<Response, ApiError> {
    s.gateway.require_metrics_reader(&p)?;
    let store = s.gateway.store.clone();
    let counts = tokio::task::spawn_blocking(move || store.count_by_state())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    let mut out = String::new();
    out.push_str(
        "# HELP secondkey_log_size Entries in the audit log.\n# TYPE secondkey_log_size gauge\n",
    );
    out.push_str(&format!(
        "secondkey_log_size {}\n",
        s.gateway.store.log_size()
    ));
    out.push_str("# HELP secondkey_requests Requests by state.\n# TYPE secondkey_requests gauge\n");
    // Every state, 0 included: a series that appears only once a request
    // reaches its state cannot be alerted on (`pending > 10` is "no data"
    // on a quiet gateway, not false).
    use RequestState as S;
    for state in [
        S::Pending,
        S::Approved,
        S::Denied,
        S::Expired,
        S::Withdrawn,
        S::Revoked,
        S::Executed,
        S::Failed,
        S::Unknown,
    ] {
        let state = state.as_str();
        let n: u64 = counts
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| n)
            .sum();
        out.push_str(&format!("secondkey_requests{{state=\"{state}\"}} {n}\n"));
    }
    s.gateway
        .counters
        .render(s.gateway.after_pending(), &mut out);
    if let Some(c) = s.gateway.connections.get() {
        out.push_str(&format!(
            "# HELP secondkey_connections Connections open on the main listener.\n# TYPE secondkey_connections gauge\nsecondkey_connections {}\n# HELP secondkey_connections_refused_total Connections turned away at accept by [limits] caps.\n# TYPE secondkey_connections_refused_total counter\nsecondkey_connections_refused_total {}\n",
            c.open(),
            c.refused()
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
