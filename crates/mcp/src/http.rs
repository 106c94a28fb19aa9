//! Streamable HTTP mode: the gateway serves `/mcp/<server>` for each
//! configured server and forwards to its upstream over Streamable HTTP
//! (POST answered with JSON or an SSE stream, the GET stream, DELETE,
//! `Mcp-Session-Id`, `MCP-Protocol-Version` and the stateless revision's
//! `Mcp-Method`/`Mcp-Name`/`Mcp-Param-*` headers). The caller is
//! authenticated by the gateway's [`Caller`] extractor (bearer token; an
//! identity provider plugs in there); the upstream's credentials are the
//! configured headers, added here and never sent back. Decisions are taken
//! in-process ([`InProcess`]), so the facts secondkey derives (server,
//! annotations, pin state) reach policy as gateway facts.

// The error of the request helpers is the HTTP answer itself.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use secondkey_core::action::{Action, Digest};
use secondkey_core::principal::Principal;
use secondkey_server::auth::Caller;
use secondkey_server::error::ApiError;
use secondkey_server::{AppState, Extension, Gateway};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::config::{McpConfig, ServerConfig, Sources};
use crate::decide::{DecideError, Decider, Decision, PinState, Run};
use crate::intercept::{tool_error, Forward, Interceptor, Outcome, Plan, Waiting};
use crate::jsonrpc::{self, error_response, id_key, result_response, Kind, Message};
use crate::{pins, tools};

/// Decides in the gateway process, as the authenticated caller.
pub struct InProcess {
    pub gateway: Arc<Gateway>,
    pub who: Principal,
    pub admins: Vec<String>,
}

fn de(e: ApiError) -> DecideError {
    DecideError::new(e.code, e.message)
}

fn run_of(x: secondkey_server::Execution) -> Run {
    Run {
        id: x.id,
        request_id: x.request_id,
        digest: x.digest.to_string(),
        approvers: x.approvers,
    }
}

fn reasons_json(r: &[secondkey_server::views::ReasonView]) -> Vec<Value> {
    r.iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

impl Decider for InProcess {
    async fn decide(
        &self,
        action: Value,
        facts: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        use secondkey_server::Verdict;
        let it = secondkey_server::Intercept {
            action,
            transport: "mcp",
            facts,
        };
        Ok(match self.gateway.intercept(&self.who, it).await.map_err(de)? {
            Verdict::Run(x) => Decision::Run(run_of(x)),
            Verdict::Deny(d) => Decision::Deny {
                id: d.id,
                reasons: reasons_json(&d.reasons),
            },
            Verdict::Held(h) => Decision::Held {
                url: h.url,
                reused: h.reused,
                required: h
                    .request
                    .requirements
                    .iter()
                    .map(|r| json!({"policy": r.policy_id, "groups": r.groups, "quorum": r.quorum}))
                    .collect(),
                request_id: h.request.id,
            },
        })
    }

    async fn wait(&self, request_id: &str, timeout: Duration) -> Result<String, DecideError> {
        let r = self
            .gateway
            .wait_decided(request_id, timeout)
            .await
            .map_err(de)?;
        Ok(r.state.as_str().to_string())
    }

    async fn run_approved(
        &self,
        request_id: &str,
        action: Value,
        _facts: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        let (_, digest) =
            Action::from_json(&action).map_err(|e| DecideError::new(e.code(), e.to_string()))?;
        let x = self
            .gateway
            .execute_approved(&self.who, request_id, &digest)
            .await
            .map_err(de)?;
        Ok(Decision::Run(run_of(x)))
    }

    async fn withdraw(&self, request_id: &str) -> Result<(), DecideError> {
        self.gateway
            .withdraw(&self.who, request_id)
            .await
            .map(|_| ())
            .map_err(de)
    }

    async fn record(
        &self,
        run: &Run,
        ok: bool,
        summary: Value,
        reads: Vec<String>,
        writes: Vec<String>,
    ) -> Result<(), DecideError> {
        let digest = Digest::from_hex(&run.digest)
            .map_err(|e| DecideError::new("invalid_digest", e.to_string()))?;
        let ex = secondkey_server::Execution {
            id: run.id.clone(),
            request_id: run.request_id.clone(),
            digest,
            approvers: run.approvers.clone(),
            reasons: vec![],
        };
        let result = secondkey_server::ExecutionResult {
            ok,
            summary,
            reads,
            writes,
        };
        self.gateway
            .record_execution(&self.who, &ex, result)
            .await
            .map_err(de)
    }

    async fn observe(
        &self,
        server: &str,
        tools: Vec<Value>,
    ) -> Result<Vec<(String, PinState)>, DecideError> {
        pins::observe(&self.gateway, &self.who, server, tools)
            .await
            .map_err(de)
    }
}

/// Tools as last listed, with their pin standing, by name.
type Catalog = HashMap<String, (Value, PinState)>;

/// The MCP extension of the gateway: the `/mcp/<server>` endpoints and the
/// pin API (`/v1/mcp/pins…`, also what stdio mode uses).
pub struct McpExtension {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<McpConfig>,
    servers: HashMap<String, Arc<ServerConfig>>,
    http: reqwest::Client,
    /// Tools as last listed, per server.
    catalogs: Mutex<HashMap<String, Catalog>>,
    /// Calls being decided or held, by caller, server, session and id.
    deciding: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// The `clientInfo` each handshake-era session declared, by session id.
    clients: Mutex<HashMap<String, Value>>,
}

impl McpExtension {
    /// Reads the `[mcp]` section of the gateway's configuration.
    pub fn from_config(
        cfg: &secondkey_server::Config,
    ) -> Result<McpExtension, secondkey_server::ConfigError> {
        let env = |k: &str| cfg.env.get(k).cloned();
        let mcp = McpConfig::parse(
            cfg.sections.get("mcp"),
            &Sources {
                env: &env,
                base_dir: &cfg.base_dir,
            },
        )
        .map_err(|e| secondkey_server::Config::invalid(e.key, e.message))?;
        Ok(Self::new(mcp))
    }

    pub fn new(config: McpConfig) -> McpExtension {
        let servers = config
            .servers
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        McpExtension {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                servers,
                http,
                catalogs: Mutex::new(HashMap::new()),
                deciding: Mutex::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Extension for McpExtension {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn routes(&self) -> Router<AppState> {
        let (a, b, c, d, e, f) = (
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
            self.inner.clone(),
        );
        Router::new()
            .route(
                "/mcp/{server}",
                post(move |s, c, p, h, b| post_mcp(a.clone(), s, c, p, h, b))
                    .get(move |s, c, p, h| other_mcp(b.clone(), Method::GET, s, c, p, h))
                    .delete(move |s, c2, p, h| other_mcp(c.clone(), Method::DELETE, s, c2, p, h)),
            )
            .route(
                "/v1/mcp/pins/observe",
                post(move |s, c, j| observe_pins(d.clone(), s, c, j)),
            )
            .route(
                "/v1/mcp/pins/accept",
                post(move |s, c, j| accept_pin(e.clone(), s, c, j)),
            )
            .route(
                "/v1/mcp/pins",
                get(move |s, c, q| list_pins(f.clone(), s, c, q)),
            )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObserveBody {
    server: String,
    tools: Vec<Value>,
}

/// `POST /v1/mcp/pins/observe`: a stdio relay reports the tools its server
/// listed. Servers this gateway reaches itself over HTTP are pinned only
/// from what the gateway saw: a client cannot pin (or pre-pin) them.
async fn observe_pins(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    secondkey_server::api::JsonBody(body): secondkey_server::api::JsonBody<ObserveBody>,
) -> Result<Json<Value>, ApiError> {
    if inner
        .servers
        .get(&body.server)
        .is_some_and(|c| c.url.is_some())
    {
        return Err(ApiError::forbidden(
            "pinned_by_gateway",
            format!(
                "server {:?} is reached by this gateway over HTTP; its tool definitions are pinned from what the gateway sees, not from reports",
                body.server
            ),
        ));
    }
    let out = pins::observe(&s.gateway, &p, &body.server, body.tools).await?;
    Ok(Json(
        json!({"tools": out.into_iter().map(|(n, st)| json!({"name": n, "pin": st})).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    server: String,
    tool: String,
    fingerprint: String,
}

async fn accept_pin(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    secondkey_server::api::JsonBody(body): secondkey_server::api::JsonBody<AcceptBody>,
) -> Result<Json<pins::Pin>, ApiError> {
    let pin = pins::accept(
        &s.gateway,
        &p,
        &inner.config.tool_admins,
        &body.server,
        &body.tool,
        &body.fingerprint,
    )
    .await?;
    // Forget the cached standing: the next call sees the acceptance.
    if let Some(c) = lock(&inner.catalogs).get_mut(&body.server) {
        c.remove(&body.tool);
    }
    Ok(Json(pin))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    server: Option<String>,
}

async fn list_pins(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(_p): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<pins::Pin>>, ApiError> {
    let _ = inner;
    Ok(Json(
        pins::list(&s.gateway, q.server.as_deref().unwrap_or("")).await?,
    ))
}

/// Request headers passed to the upstream: the transport's own, never the
/// caller's credentials.
fn forwarded(h: &HeaderMap) -> Vec<(String, HeaderValue)> {
    h.iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            matches!(
                k,
                "accept"
                    | "content-type"
                    | "mcp-session-id"
                    | "mcp-protocol-version"
                    | "mcp-method"
                    | "mcp-name"
                    | "last-event-id"
            ) || k.starts_with("mcp-param-")
        })
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect()
}

async fn upstream(
    inner: &Inner,
    srv: &ServerConfig,
    method: Method,
    headers: &[(String, HeaderValue)],
    body: Option<Bytes>,
) -> Result<reqwest::Response, Response> {
    let url = srv.url.as_deref().unwrap_or_default();
    let mut r = inner.http.request(method, url);
    for (k, v) in headers {
        r = r.header(k.as_str(), v.clone());
    }
    for (k, v) in &srv.headers {
        r = r.header(k.as_str(), v.as_str());
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    let resp = r.send().await.map_err(|e| {
        gateway_error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("the MCP server {} cannot be reached: {e}", srv.name),
        )
    })?;
    if matches!(resp.status().as_u16(), 401 | 403) {
        return Err(gateway_error(
            StatusCode::BAD_GATEWAY,
            "upstream_refused",
            format!(
                "the MCP server {} refused secondkey's credentials (mcp.servers.headers)",
                srv.name
            ),
        ));
    }
    Ok(resp)
}

fn gateway_error(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The upstream's answer as ours: status, the transport headers, the body
/// streamed through.
fn relay_response(resp: reqwest::Response, body: Body) -> Response {
    let mut out = Response::builder().status(resp.status().as_u16());
    for k in [
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "cache-control",
    ] {
        if let Some(v) = resp.headers().get(k) {
            out = out.header(k, v.as_bytes());
        }
    }
    out.body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

fn is_sse(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn server_of(inner: &Inner, name: &str) -> Result<Arc<ServerConfig>, Response> {
    inner
        .servers
        .get(name)
        .filter(|s| s.url.is_some())
        .cloned()
        .ok_or_else(|| {
            gateway_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no MCP server {name:?} is configured with an upstream url ([[mcp.servers]])"
                ),
            )
        })
}

async fn other_mcp(
    inner: Arc<Inner>,
    method: Method,
    State(_s): State<AppState>,
    Caller(_p): Caller,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    let srv = match server_of(&inner, &server) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match upstream(&inner, &srv, method, &forwarded(&headers), None).await {
        Ok(resp) => {
            let (head, stream) = take_stream(resp);
            relay_response(head, Body::from_stream(stream))
        }
        Err(r) => r,
    }
}

fn take_stream(
    resp: reqwest::Response,
) -> (
    reqwest::Response,
    impl Stream<Item = Result<Bytes, std::io::Error>>,
) {
    // reqwest hands out the body only by consuming the response; keep the
    // head for the headers.
    let head = reqwest::Response::from(
        axum::http::Response::builder()
            .status(resp.status().as_u16())
            .body(Vec::<u8>::new())
            .unwrap_or_default(),
    );
    let mut head = head;
    *head.headers_mut() = resp.headers().clone();
    let s = resp
        .bytes_stream()
        .map(|r| r.map_err(std::io::Error::other));
    (head, s)
}

async fn post_mcp(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(server): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let srv = match server_of(&inner, &server) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let msg = match Message::parse(&body, inner.config.max_message_bytes) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(e.response())).into_response(),
    };
    let fwd_headers = forwarded(&headers);
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let call_key = |id: &Value| {
        format!(
            "{}|{}|{}|{}",
            p.id,
            server,
            session.as_deref().unwrap_or(""),
            id_key(id)
        )
    };
    match (msg.kind, msg.method()) {
        (Kind::Request, Some("tools/call")) => {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            let key = call_key(&id);
            {
                let mut d = lock(&inner.deciding);
                if d.contains_key(&key) {
                    return Json(error_response(
                        id,
                        jsonrpc::INVALID_REQUEST,
                        "a request with this id is still in progress; ids must be unique within a session. This one was not forwarded",
                    ))
                    .into_response();
                }
                let (tx, _) = watch::channel(false);
                d.insert(key.clone(), tx);
            }
            let call = CallCtx {
                inner: inner.clone(),
                gateway: s.gateway.clone(),
                who: p,
                srv,
                headers: fwd_headers,
                session,
                key,
            };
            call.run(msg).await
        }
        (Kind::Request, Some("tools/list")) => {
            let resp = match upstream(&inner, &srv, Method::POST, &fwd_headers, Some(body)).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let sse = is_sse(&resp);
            let (head, stream) = take_stream(resp);
            let bytes = match collect(stream, inner.config.max_message_bytes * 4).await {
                Ok(b) => b,
                Err(e) => return gateway_error(StatusCode::BAD_GATEWAY, "upstream_failed", e),
            };
            if let Some(r) = final_response(&bytes, sse, msg.id()) {
                if let Some(result) = r.get("result") {
                    observe(&inner, &s.gateway, &p, &srv, result).await;
                }
            }
            relay_response(head, Body::from(bytes))
        }
        (Kind::Notification, Some("notifications/cancelled")) => {
            if let Some(target) = msg.params().and_then(|x| x.get("requestId")) {
                if let Some(tx) = lock(&inner.deciding).get(&call_key(target)) {
                    let _ = tx.send(true);
                    return StatusCode::ACCEPTED.into_response();
                }
            }
            pass(&inner, &srv, &fwd_headers, body).await
        }
        (Kind::Request, Some("initialize")) => {
            let info = msg.params().and_then(|p| p.get("clientInfo")).cloned();
            let resp = pass(&inner, &srv, &fwd_headers, body).await;
            if let (Some(info), Some(sid)) = (
                info,
                resp.headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok()),
            ) {
                let mut c = lock(&inner.clients);
                // Bounded: a client that opens sessions without end cannot
                // grow this without end.
                if c.len() >= 10_000 {
                    c.clear();
                }
                c.insert(sid.to_string(), info);
            }
            resp
        }
        _ => pass(&inner, &srv, &fwd_headers, body).await,
    }
}

async fn pass(
    inner: &Inner,
    srv: &ServerConfig,
    headers: &[(String, HeaderValue)],
    body: Bytes,
) -> Response {
    match upstream(inner, srv, Method::POST, headers, Some(body)).await {
        Ok(resp) => {
            let (head, stream) = take_stream(resp);
            relay_response(head, Body::from_stream(stream))
        }
        Err(r) => r,
    }
}

async fn collect<S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin>(
    mut s: S,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| format!("the upstream answer broke off: {e}"))?;
        if out.len() + chunk.len() > max {
            return Err(format!("the upstream answer exceeds {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The `data` payloads of the complete SSE events in `buf`, consuming them.
fn sse_events(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let text = String::from_utf8_lossy(buf);
        let norm = text.replace("\r\n", "\n");
        let Some(end) = norm.find("\n\n") else { break };
        let event = &norm[..end];
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| {
                l.strip_prefix("data:")
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
            })
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
        let rest = norm.as_bytes()[end + 2..].to_vec();
        *buf = rest;
    }
    out
}

/// The JSON-RPC response to `id` in an upstream body (JSON or SSE).
fn final_response(bytes: &[u8], sse: bool, id: Option<&Value>) -> Option<Value> {
    let want = id.map(id_key);
    let matches = |v: &Value| {
        v.get("id").map(id_key) == want && (v.get("result").is_some() || v.get("error").is_some())
    };
    if sse {
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(b"\n\n");
        sse_events(&mut buf)
            .into_iter()
            .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
            .find(|v| matches(v))
    } else {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .filter(|v| matches(v))
    }
}

async fn observe(
    inner: &Inner,
    gw: &Arc<Gateway>,
    who: &Principal,
    srv: &ServerConfig,
    result: &Value,
) {
    let Some(list) = result.get("tools").and_then(Value::as_array) else {
        return;
    };
    let defs: Vec<Value> = list
        .iter()
        .filter(|t| t.get("name").and_then(Value::as_str).is_some())
        .map(tools::pinned_part)
        .collect();
    match pins::observe(gw, who, &srv.name, defs.clone()).await {
        Ok(states) => {
            let mut c = lock(&inner.catalogs);
            let cat = c.entry(srv.name.clone()).or_default();
            for (d, (name, st)) in defs.into_iter().zip(states) {
                cat.insert(name, (d, st));
            }
        }
        Err(e) => tracing::warn!(server = %srv.name, error = %e, "cannot pin the listed tools"),
    }
}

/// One `tools/call` through the HTTP endpoint.
struct CallCtx {
    inner: Arc<Inner>,
    gateway: Arc<Gateway>,
    who: Principal,
    srv: Arc<ServerConfig>,
    headers: Vec<(String, HeaderValue)>,
    session: Option<String>,
    key: String,
}

impl Drop for CallCtx {
    fn drop(&mut self) {
        lock(&self.inner.deciding).remove(&self.key);
    }
}

impl CallCtx {
    fn interceptor(&self) -> Interceptor<InProcess> {
        Interceptor::new(
            self.inner.config.clone(),
            self.srv.clone(),
            Arc::new(InProcess {
                gateway: self.gateway.clone(),
                who: self.who.clone(),
                admins: self.inner.config.tool_admins.clone(),
            }),
        )
    }

    fn known(&self, tool: &str) -> Option<(Value, PinState)> {
        lock(&self.inner.catalogs)
            .get(&self.srv.name)
            .and_then(|c| c.get(tool))
            .cloned()
    }

    /// Lists the upstream's tools itself (a call of a tool not listed yet).
    async fn list_tools(&self, call_params: &Map<String, Value>) {
        let mut params = Map::new();
        if let Some(meta) = call_params.get("_meta").and_then(Value::as_object) {
            let mut m = meta.clone();
            m.remove("progressToken");
            params.insert("_meta".into(), Value::Object(m));
        }
        let req = json!({"jsonrpc": "2.0", "id": "secondkey-tools", "method": "tools/list", "params": params});
        let mut headers: Vec<(String, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("mcp-param-") && k != "mcp-name" && k != "mcp-method")
            .cloned()
            .collect();
        headers.push(("mcp-method".into(), HeaderValue::from_static("tools/list")));
        let Ok(resp) = upstream(
            &self.inner,
            &self.srv,
            Method::POST,
            &headers,
            Some(Bytes::from(req.to_string())),
        )
        .await
        else {
            return;
        };
        let sse = is_sse(&resp);
        let (_, stream) = take_stream(resp);
        let Ok(bytes) = collect(stream, self.inner.config.max_message_bytes * 4).await else {
            return;
        };
        if let Some(r) = final_response(&bytes, sse, Some(&json!("secondkey-tools"))) {
            if let Some(result) = r.get("result") {
                observe(&self.inner, &self.gateway, &self.who, &self.srv, result).await;
            }
        }
    }

    async fn run(self, msg: Message) -> Response {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let empty = Map::new();
        let params = msg.params().unwrap_or(&empty).clone();
        let tool = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if self.known(&tool).is_none() && !tool.is_empty() {
            self.list_tools(&params).await;
        }
        let (definition, pin) = match self.known(&tool) {
            Some((d, p)) => (Some(d), Some(p)),
            None => (None, None),
        };
        let client_info = params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/clientInfo"))
            .cloned()
            .or_else(|| {
                let s = self.session.as_deref()?;
                lock(&self.inner.clients).get(s).cloned()
            });
        let cancelled = match lock(&self.inner.deciding).get(&self.key) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(false).1,
        };
        let token = jsonrpc::progress_token(Some(&params));
        if let Some(token) = token {
            // The client hears progress while the call is held: answer with
            // an event stream at once.
            let (tx, rx) = mpsc::channel::<String>(64);
            let waiting = Waiting {
                progress: Some((token, tx.clone())),
                cancelled,
            };
            tokio::spawn(async move {
                let icp = self.interceptor();
                let plan = icp
                    .tools_call(
                        &params,
                        definition.as_ref(),
                        pin,
                        client_info.as_ref(),
                        self.session.as_deref(),
                        waiting,
                    )
                    .await;
                self.finish_streaming(&icp, plan, msg, id, tx).await;
            });
            let events = tokio_stream_of(rx).map(|line| {
                Ok::<_, std::io::Error>(Bytes::from(format!("event: message\ndata: {line}\n\n")))
            });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(events))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        let icp = self.interceptor();
        let (waiting, _keep) = (
            Waiting {
                progress: None,
                cancelled,
            },
            (),
        );
        let plan = icp
            .tools_call(
                &params,
                definition.as_ref(),
                pin,
                client_info.as_ref(),
                self.session.as_deref(),
                waiting,
            )
            .await;
        match plan {
            Plan::Cancelled => StatusCode::ACCEPTED.into_response(),
            Plan::Respond(result) => Json(result_response(id, result)).into_response(),
            Plan::Forward(fwd) => self.forward(icp, fwd, msg, id).await,
        }
    }

    /// Sends the decided call upstream and relays the answer as it comes,
    /// recording its outcome when the final response passes.
    async fn forward(
        &self,
        icp: Interceptor<InProcess>,
        fwd: Forward,
        msg: Message,
        id: Value,
    ) -> Response {
        let body = Bytes::from(msg.to_line());
        let resp = match upstream(
            &self.inner,
            &self.srv,
            Method::POST,
            &self.headers,
            Some(body),
        )
        .await
        {
            Ok(r) => r,
            Err(r) => {
                icp.finished(
                    &fwd,
                    Outcome::Lost("the upstream could not be reached".into()),
                )
                .await;
                return r;
            }
        };
        let sse = is_sse(&resp);
        let (head, stream) = take_stream(resp);
        if !sse {
            let bytes = match collect(stream, self.inner.config.max_message_bytes * 4).await {
                Ok(b) => b,
                Err(e) => {
                    icp.finished(&fwd, Outcome::Lost(e.clone())).await;
                    return Json(result_response(id, tool_error(format!("the MCP server failed during this call; whether it took effect is unknown ({e})")))).into_response();
                }
            };
            // The run was authorized and recorded before it started; its
            // result is recorded off the answer's path.
            let outcome = match final_response(&bytes, false, Some(&id)) {
                Some(r) => outcome_of(&r),
                None => Outcome::Lost(format!(
                    "the upstream answered {} without a result",
                    head.status()
                )),
            };
            tokio::spawn(async move { icp.finished(&fwd, outcome).await });
            return relay_response(head, Body::from(bytes));
        }
        let tap = Tap::new(stream, id, icp, fwd);
        relay_response(head, Body::from_stream(tap))
    }

    async fn finish_streaming(
        &self,
        icp: &Interceptor<InProcess>,
        plan: Plan,
        msg: Message,
        id: Value,
        tx: mpsc::Sender<String>,
    ) {
        match plan {
            Plan::Cancelled => {}
            Plan::Respond(result) => {
                let _ = tx.send(result_response(id, result).to_string()).await;
            }
            Plan::Forward(fwd) => {
                let body = Bytes::from(msg.to_line());
                let resp = match upstream(
                    &self.inner,
                    &self.srv,
                    Method::POST,
                    &self.headers,
                    Some(body),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        icp.finished(
                            &fwd,
                            Outcome::Lost("the upstream could not be reached".into()),
                        )
                        .await;
                        let _ = tx
                            .send(
                                result_response(
                                    id,
                                    tool_error(
                                        "the MCP server cannot be reached; the call was not sent"
                                            .into(),
                                    ),
                                )
                                .to_string(),
                            )
                            .await;
                        return;
                    }
                };
                let sse = is_sse(&resp);
                let (_, mut stream) = take_stream(resp);
                let mut buf = Vec::new();
                let mut done = false;
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { break };
                    buf.extend_from_slice(&chunk);
                    if !sse {
                        continue;
                    }
                    for data in sse_events(&mut buf) {
                        if let Ok(v) = serde_json::from_str::<Value>(&data) {
                            if v.get("id").map(id_key) == Some(id_key(&id))
                                && (v.get("result").is_some() || v.get("error").is_some())
                            {
                                icp.finished(&fwd, outcome_of(&v)).await;
                                done = true;
                            }
                        }
                        let _ = tx.send(data).await;
                    }
                }
                if !sse {
                    if let Some(v) = final_response(&buf, false, Some(&id)) {
                        icp.finished(&fwd, outcome_of(&v)).await;
                        done = true;
                        let _ = tx.send(v.to_string()).await;
                    }
                }
                if !done {
                    icp.finished(
                        &fwd,
                        Outcome::Lost("the upstream connection ended before the result".into()),
                    )
                    .await;
                    let _ = tx.send(result_response(id, tool_error("the MCP server failed during this call; whether it took effect is unknown".into())).to_string()).await;
                }
            }
        }
    }
}

fn outcome_of(v: &Value) -> Outcome {
    match (v.get("result"), v.get("error")) {
        (Some(r), _) => Outcome::Result(r.clone()),
        (None, Some(e)) => Outcome::Error(e.clone()),
        _ => Outcome::Lost("an empty response".into()),
    }
}

fn tokio_stream_of(mut rx: mpsc::Receiver<String>) -> impl Stream<Item = String> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Passes an upstream event stream through unchanged while watching for the
/// call's final response; if the stream ends without one, the outcome is
/// recorded as unknown and the client gets a tool error event.
struct Tap<S> {
    inner: S,
    buf: Vec<u8>,
    id: Value,
    pending: Option<(Interceptor<InProcess>, Forward)>,
    ended: bool,
}

impl<S> Tap<S> {
    fn new(inner: S, id: Value, icp: Interceptor<InProcess>, fwd: Forward) -> Self {
        Tap {
            inner,
            buf: Vec::new(),
            id,
            pending: Some((icp, fwd)),
            ended: false,
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some((icp, fwd)) = self.pending.take() {
            tokio::spawn(async move { icp.finished(&fwd, outcome).await });
        }
    }
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin> Stream for Tap<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match StdPin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.pending.is_some() {
                    self.buf.extend_from_slice(&chunk);
                    let mut buf = std::mem::take(&mut self.buf);
                    let events = sse_events(&mut buf);
                    self.buf = buf;
                    let want = id_key(&self.id);
                    for d in events {
                        if let Ok(v) = serde_json::from_str::<Value>(&d) {
                            if v.get("id").map(id_key).as_deref() == Some(want.as_str())
                                && (v.get("result").is_some() || v.get("error").is_some())
                            {
                                self.settle(outcome_of(&v));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => {
                self.ended = true;
                if self.pending.is_some() {
                    let why = match &other {
                        Some(Err(e)) => format!("the upstream stream broke off: {e}"),
                        _ => "the upstream stream ended before the result".to_string(),
                    };
                    self.settle(Outcome::Lost(why));
                    let ev = result_response(
                        self.id.clone(),
                        tool_error("the MCP server failed during this call; whether it took effect is unknown".into()),
                    );
                    return Poll::Ready(Some(Ok(Bytes::from(format!(
                        "event: message\ndata: {ev}\n\n"
                    )))));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        if self.pending.is_some() {
            // The client went away before the result passed.
            self.settle(Outcome::Lost(
                "the client disconnected before the result".into(),
            ));
        }
    }
}
