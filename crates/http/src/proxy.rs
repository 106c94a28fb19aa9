//! One request through the gateway: authenticate the caller, read the
//! request the one way it can be read ([`crate::request`]), shape it into
//! an action ([`crate::action`]), ask [`Gateway::intercept`], and forward
//! exactly what was digested only on a `Run`; deny with an RFC 9457
//! problem; hold per the upstream's `hold` mode. The answer streams back
//! with the credential masked; its status, size and duration are recorded.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRequestParts;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use secondkey_core::principal::Principal;
use secondkey_core::request::RequestState;
use secondkey_server::auth::Authenticated;
use secondkey_server::error::ApiError;
use secondkey_server::{AppState, Execution, ExecutionResult, Gateway, Intercept, Verdict};
use serde_json::{json, Map, Value};

use crate::config::HoldMode;
use crate::redact::Redactor;
use crate::request::{self, Refusal};
use crate::upstream::Upstream;

/// What every request to one upstream shares.
pub struct Shared {
    pub gateway: Arc<Gateway>,
    pub upstream: Upstream,
}

/// An RFC 9457 problem response (`application/problem+json`).
pub fn problem(
    status: u16,
    code: &str,
    title: &str,
    detail: &str,
    extra: Map<String, Value>,
) -> Response<Body> {
    let mut m = Map::new();
    m.insert(
        "type".into(),
        json!(format!("urn:secondkey:problem:{code}")),
    );
    m.insert("title".into(), json!(title));
    m.insert("status".into(), json!(status));
    m.insert("detail".into(), json!(detail));
    m.insert("code".into(), json!(code));
    m.extend(extra);
    let mut resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/problem+json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Body::from(Value::Object(m.clone()).to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()));
    resp.extensions_mut().insert(Problem(m));
    resp
}

/// A problem this gateway answered with (not one relayed from upstream).
#[derive(Clone)]
struct Problem(Map<String, Value>);

/// Whether a client of the Kubernetes profile reads Kubernetes `Status`
/// objects (kubectl and client-go accept `application/json`, not
/// `application/problem+json`): it then gets the problem as a `Status`, so
/// that kubectl prints its message (the decision id, the policies).
fn wants_k8s_status(up: &crate::config::UpstreamConfig, h: &http::HeaderMap) -> bool {
    up.profile == crate::config::Profile::Kubernetes
        && (h.get_all(http::header::ACCEPT).iter().any(|v| {
            let v = v.to_str().unwrap_or("");
            v.contains("application/json") && !v.contains("application/problem+json")
        })
            // kubectl's exec, attach and port-forward upgrades send no
            // Accept, and read a refusal as a `Status`.
            || h.contains_key("x-stream-protocol-version")
            || h
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("k8s.io")))
}

/// The problem of `resp` as a Kubernetes `Status` (v1): `message` is the
/// problem's detail, `reason` the status's, and the problem's other
/// members (the code, the decision id, the request and its URL) are the
/// `details.causes`.
fn k8s_status(mut resp: Response<Body>) -> Response<Body> {
    let Some(Problem(m)) = resp.extensions_mut().remove::<Problem>() else {
        return resp;
    };
    let status = resp.status();
    let reason = match status.as_u16() {
        // Held past `hold_timeout`: Kubernetes' reason for "not completed in
        // time; the request may succeed later" (with retryAfterSeconds).
        202 => "Timeout",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let causes: Vec<Value> = m
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "type" | "title" | "status" | "detail"))
        .map(|(k, v)| json!({"field": k, "message": v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())}))
        .collect();
    let mut details = json!({"causes": causes});
    if let Some(secs) = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        details["retryAfterSeconds"] = json!(secs);
    }
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": m.get("detail").cloned().unwrap_or_default(),
        "reason": reason, "code": status.as_u16(),
        "details": details,
    });
    let mut out = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store");
    for k in [
        http::header::RETRY_AFTER,
        http::header::WWW_AUTHENTICATE,
        http::header::ALLOW,
    ] {
        if let Some(v) = resp.headers().get(&k) {
            out = out.header(k, v.clone());
        }
    }
    out.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn refused(r: Refusal) -> Response<Body> {
    let title = match r.status {
        405 => "Method not relayed",
        413 => "Request body too large",
        415 => "Request body not inspectable",
        _ => "Request refused before any decision",
    };
    let mut resp = problem(
        r.status,
        r.code,
        title,
        &format!(
            "{}{} Nothing was forwarded.",
            r.message,
            if r.message.ends_with('.') { "" } else { "." }
        ),
        Map::new(),
    );
    // RFC 9110 §15.5.6: a 405 lists the methods that are relayed.
    if r.status == 405 {
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static(request::RELAYED_METHODS),
        );
    }
    resp
}

fn api_problem(e: &ApiError, title: &str) -> Response<Body> {
    let mut resp = problem(e.status.as_u16(), e.code, title, &e.message, Map::new());
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"secondkey\""),
        );
    }
    resp
}

/// Reads the body, refusing more than `limit` bytes (a declared length
/// over it before any of the body is read).
async fn read_body(headers: &http::HeaderMap, body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let too_large = || Refusal {
        status: 413,
        code: "body_too_large",
        message: format!("the body is larger than {limit} bytes (http.max_body_bytes)."),
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Refusal {
            status: 400,
            code: "bad_body",
            message: format!("the body could not be read ({e})."),
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Handles one request; `raw_path` is the request's path (still encoded)
/// below the upstream's prefix.
/// The client connection's peer address, as observed at accept (a request
/// extension): each action carries it as the gateway fact `source_ip`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

pub async fn handle(sh: Arc<Shared>, req: Request<Body>, raw_path: &str) -> Response<Body> {
    let as_status = wants_k8s_status(&sh.upstream.cfg, req.headers());
    let resp = decide_and_forward(sh, req, raw_path).await;
    if as_status {
        k8s_status(resp)
    } else {
        resp
    }
}

async fn decide_and_forward(sh: Arc<Shared>, req: Request<Body>, raw_path: &str) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let state = AppState {
        gateway: sh.gateway.clone(),
    };
    let (who, credential) = match Authenticated::from_request_parts(&mut parts, &state).await {
        Ok(Authenticated(p, c)) => (p, c),
        Err(e) => return api_problem(&e, "Not authenticated"),
    };
    let up = &sh.upstream.cfg;
    if !up.admits(who.id.as_str(), who.groups.iter().cloned()) {
        return problem(
            403,
            "not_allowed",
            "Not allowed on this upstream",
            &format!(
                "{} may not use the upstream {} (http.principals)",
                who.id, up.name
            ),
            Map::new(),
        );
    }
    if let Err(r) = request::check_method(&parts.method) {
        return refused(r);
    }
    if parts.version < http::Version::HTTP_2
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
    {
        return refused(Refusal {
            status: 400,
            code: "absolute_form",
            message: "an absolute-form target (a forward-proxy request) names a host of its own; send the path only.".into(),
        });
    }
    let hf = match request::check_headers(&parts.headers, &up.headers) {
        Ok(h) => h,
        Err(r) => return refused(r),
    };
    let target = match request::parse_target(raw_path, parts.uri.query(), &up.query_lists) {
        Ok(t) => t,
        Err(r) => return refused(r),
    };
    let on_upgrade = hf
        .upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    if hf.upgrade.is_some() && on_upgrade.is_none() {
        return refused(Refusal {
            status: 400,
            code: "upgrade_refused",
            message: "this connection cannot be upgraded (HTTP/2 or HTTP/1.0).".into(),
        });
    }
    let bytes = match read_body(&parts.headers, body, up.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    let body_json = match request::body_value(&bytes, hf.media_type.as_deref()) {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    let shaped = crate::action::shape(up, &parts.method, &target, &hf, body_json);
    let mut facts = shaped.facts;
    // Its own listener marks the peer; under the gateway's listener (a
    // prefix route) the gateway's connection info has it.
    let peer = parts.extensions.get::<Peer>().map(|p| p.0).or_else(|| {
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
    });
    if let Some(ip) = peer {
        let (k, v) = secondkey_server::gateway::source_fact(ip);
        facts.insert(k, v);
    }
    let verdict = sh
        .gateway
        .intercept_by(
            &who,
            &credential,
            Intercept {
                action: shaped.action,
                transport: "http",
                facts,
            },
        )
        .await;
    let fwd = Forward {
        sh: sh.clone(),
        who: who.clone(),
        method: parts.method.clone(),
        path: target.path.clone(),
        query: target.query_string.clone(),
        headers: parts.headers,
        upgrade: on_upgrade,
        body: bytes,
        reads: shaped.reads,
        writes: shaped.writes,
    };
    match verdict {
        Err(e) => api_problem(&e, "Not decided: nothing was forwarded"),
        Ok(Verdict::Run(ex)) => fwd.send(ex).await,
        Ok(Verdict::Deny(d)) => {
            // The forbidding policies (none when no permit matched).
            let policies: Vec<&str> = d
                .reasons
                .iter()
                .filter(|r| r.effect != "permit" && !r.policy.is_empty())
                .map(|r| r.policy.as_str())
                .collect();
            let mut extra = Map::new();
            extra.insert("decision".into(), json!(d.id));
            extra.insert("policies".into(), json!(policies));
            extra.insert("reasons".into(), json!(d.reasons));
            problem(403, "denied", "Denied by policy", &d.message, extra)
        }
        Ok(Verdict::Held(h)) => {
            let id = h.request.id.clone();
            match up.hold {
                HoldMode::Retry => {
                    let mut extra = Map::new();
                    extra.insert("request".into(), json!(id));
                    extra.insert("url".into(), json!(h.url));
                    extra.insert("required".into(), required(&h));
                    let mut r = problem(
                        409,
                        "approval_required",
                        "Held for approval",
                        &format!(
                            "secondkey is holding this request for approval (request {id}); send the identical request again once it is approved: it runs once"
                        ),
                        extra,
                    );
                    retry_after(&mut r, up.retry_after);
                    r
                }
                HoldMode::Wait => fwd.wait(h, up.hold_timeout, up.retry_after).await,
            }
        }
    }
}

fn required(h: &secondkey_server::Held) -> Value {
    json!(h
        .request
        .requirements
        .iter()
        .map(|r| json!({"policy": r.policy_id, "groups": r.groups, "quorum": r.quorum}))
        .collect::<Vec<_>>())
}

fn retry_after(r: &mut Response<Body>, secs: u64) {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
}

/// Withdraws a held request if the client goes away while it waits.
struct WithdrawOnDrop(Option<(Arc<Gateway>, Principal, String)>);

impl WithdrawOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if let Some((g, who, id)) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = g.withdraw(&who, &id).await;
                });
            }
        }
    }
}

/// A decided request, ready to be forwarded as it was digested.
struct Forward {
    sh: Arc<Shared>,
    who: Principal,
    method: http::Method,
    path: String,
    query: String,
    headers: http::HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    body: Bytes,
    reads: Vec<String>,
    writes: Vec<String>,
}

impl Forward {
    /// Wait mode: hold the client until the request is decided or the
    /// limit passes (then `202` and `Retry-After`).
    async fn wait(self, h: secondkey_server::Held, limit: Duration, retry: u64) -> Response<Body> {
        let id = h.request.id.clone();
        let digest = h.request.digest.clone();
        let g = self.sh.gateway.clone();
        let guard = WithdrawOnDrop(Some((g.clone(), self.who.clone(), id.clone())));
        let decided = g.wait_decided(&id, limit).await;
        guard.disarm();
        let req = match decided {
            Ok(r) => r,
            Err(e) => {
                return api_problem(
                    &e,
                    "Held request could not be followed: nothing was forwarded",
                )
            }
        };
        match req.state {
            RequestState::Pending => {
                let detail = format!("request {id} awaits approval; send the identical request again (after Retry-After) to keep waiting or to run it once approved");
                let body = json!({
                    "status": "pending",
                    "detail": detail,
                    "request": {"id": id, "url": h.url, "state": "pending", "required": required(&h)},
                });
                let mut r = Response::builder()
                    .status(202)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap_or_else(|_| Response::new(Body::empty()));
                retry_after(&mut r, retry);
                // A Kubernetes client gets a `Status` instead (`k8s_status`):
                // kubectl cannot read this body as an object.
                let mut m = Map::new();
                m.insert("detail".into(), json!(detail));
                m.insert("request".into(), json!(id));
                m.insert("url".into(), json!(h.url));
                m.insert("state".into(), json!("pending"));
                r.extensions_mut().insert(Problem(m));
                r
            }
            RequestState::Approved => match g.execute_approved(&self.who, &id, &digest).await {
                Ok(ex) => self.send(ex).await,
                Err(e) => api_problem(&e, "The approval could not be used: nothing was forwarded"),
            },
            other => {
                let mut extra = Map::new();
                extra.insert("request".into(), json!(id));
                extra.insert("url".into(), json!(h.url));
                extra.insert("state".into(), json!(other.as_str()));
                let by: Vec<String> = req.reviews.iter().map(|r| r.reviewer.to_string()).collect();
                extra.insert("reviewers".into(), json!(by));
                problem(
                    403,
                    "not_approved",
                    "Not approved",
                    &format!("request {id} was {}; nothing was forwarded", other.as_str()),
                    extra,
                )
            }
        }
    }

    /// Sends the request upstream (authorized and recorded already) and
    /// relays the answer.
    async fn send(self, ex: Execution) -> Response<Body> {
        let started = Instant::now();
        let up = &self.sh.upstream;
        let upgrade_value = self
            .headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let rec = Recorder {
            gateway: self.sh.gateway.clone(),
            who: self.who.clone(),
            ex: Some(ex),
            started,
            reads: self.reads.clone(),
            writes: self.writes.clone(),
            masked: 0,
        };
        let req = match up.request(
            &self.method,
            &self.path,
            &self.query,
            &self.headers,
            self.upgrade.as_ref().and(upgrade_value.as_deref()),
            self.body.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                rec.finish(
                    None,
                    0,
                    false,
                    Some(format!("the request could not be built: {e}")),
                );
                return problem(
                    502,
                    "upstream_failed",
                    "Upstream request not sent",
                    "the request could not be built",
                    Map::new(),
                );
            }
        };
        if let Some(client_upgrade) = self.upgrade {
            return upgrade(up, req, client_upgrade, rec).await;
        }
        match up.client.request(req).await {
            Ok(resp) => relay(up, resp, rec),
            Err(e) => {
                let connect = e.is_connect();
                let why = if connect {
                    format!("the upstream {} cannot be reached", up.cfg.name)
                } else {
                    format!(
                        "the upstream {} failed before answering; whether the request took effect is unknown",
                        up.cfg.name
                    )
                };
                rec.finish(
                    None,
                    0,
                    false,
                    Some(if connect {
                        why.clone()
                    } else {
                        format!("unknown: {why}")
                    }),
                );
                problem(
                    502,
                    if connect {
                        "upstream_unreachable"
                    } else {
                        "upstream_failed"
                    },
                    "Upstream failed",
                    &why,
                    Map::new(),
                )
            }
        }
    }
}

/// Response headers never relayed: hop-by-hop ones.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    ) || name.starts_with("proxy-")
}

/// The upstream's status and headers as ours, hop-by-hop headers dropped
/// and the credential masked in their values, with how many times it was;
/// `None` when the answer is compressed and must be checked for the
/// credential.
fn relay_head(
    up: &Upstream,
    resp: &Response<hyper::body::Incoming>,
    keep_upgrade: bool,
) -> Option<(http::response::Builder, u64)> {
    let mut out = Response::builder().status(resp.status());
    let encoded = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded && !up.needles.is_empty() {
        return None;
    }
    let mut masked = 0;
    for (k, v) in resp.headers() {
        let name = k.as_str();
        if hop_by_hop(name) && !(keep_upgrade && (name == "upgrade" || name == "connection")) {
            continue;
        }
        if up.needles.is_empty() {
            out = out.header(k.clone(), v.clone());
            continue;
        }
        let mut bytes = v.as_bytes().to_vec();
        let n = Redactor::mask(&up.needles, &mut bytes);
        if n > 0 {
            masked += n;
            tracing::warn!(upstream = %up.cfg.name, header = name, "masked the upstream credential in a response header");
        }
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            out = out.header(k.clone(), v);
        }
    }
    Some((out, masked))
}

fn relay(up: &Upstream, resp: Response<hyper::body::Incoming>, rec: Recorder) -> Response<Body> {
    let status = resp.status();
    let Some((head, masked)) = relay_head(up, &resp, false) else {
        rec.finish(
            Some(status.as_u16()),
            0,
            false,
            Some("the upstream compressed its answer although asked not to".into()),
        );
        return problem(
            502,
            "upstream_encoded",
            "Upstream answer not relayed",
            "the upstream compressed its answer although asked not to; secondkey cannot check it for credentials",
            Map::new(),
        );
    };
    // The count recorded covers the head's values and the body.
    let mut redactor = Redactor::new(up.needles.clone());
    redactor.masked = masked;
    let body = RelayBody {
        inner: resp.into_body(),
        redactor,
        bytes: 0,
        status: status.as_u16(),
        rec: Some(rec),
        ended: false,
    };
    head.body(Body::new(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// `req` with its target in origin form (path and query only).
fn origin_form<B>(mut req: Request<B>) -> Request<B> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
    req
}

/// An upgrade (websocket, SPDY): sent on a connection of its own; on `101`
/// both sides are joined and the bytes counted until either closes.
async fn upgrade(
    up: &Upstream,
    req: Request<http_body_util::Full<Bytes>>,
    client: hyper::upgrade::OnUpgrade,
    rec: Recorder,
) -> Response<Body> {
    let unreachable = |rec: Recorder, why: String| {
        rec.finish(None, 0, false, Some(why.clone()));
        problem(
            502,
            "upstream_unreachable",
            "Upstream failed",
            &why,
            Map::new(),
        )
    };
    let conn = match up.connector.connect().await {
        Ok(c) => c,
        Err(e) => {
            return unreachable(
                rec,
                format!("the upstream {} cannot be reached: {e}", up.cfg.name),
            )
        }
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, http_body_util::Full<Bytes>>(conn).await {
            Ok(x) => x,
            Err(e) => return unreachable(rec, format!("the upstream {} failed: {e}", up.cfg.name)),
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    // On a connection of its own, hyper sends the target as it is given:
    // the path and query (origin form), as the pooled client sends every
    // other request, not the absolute URI it was built with.
    let req = origin_form(req);
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            let why = format!(
                "unknown: the upstream {} failed before answering the upgrade: {e}",
                up.cfg.name
            );
            rec.finish(None, 0, false, Some(why));
            return problem(
                502,
                "upstream_failed",
                "Upstream failed",
                "the upstream failed before answering the upgrade",
                Map::new(),
            );
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return relay(up, resp, rec);
    }
    let Some((head, _)) = relay_head(up, &resp, true) else {
        return relay(up, resp, rec);
    };
    let upstream_side = hyper::upgrade::on(&mut resp);
    let needles = up.needles.clone();
    tokio::spawn(async move {
        let (c, u) = tokio::join!(client, upstream_side);
        match (c, u) {
            (Ok(c), Ok(u)) => {
                let c = hyper_util::rt::TokioIo::new(c);
                let u = hyper_util::rt::TokioIo::new(u);
                let r = tunnel(c, u, Redactor::new(needles)).await;
                let (sent, received, note) = match r {
                    Ok((a, b)) => (a, b, None),
                    Err(e) => (0, 0, Some(format!("the tunnel ended: {e}"))),
                };
                let mut rec = rec;
                rec.finish_tunnel(sent, received, note);
            }
            _ => rec.finish(
                Some(101),
                0,
                false,
                Some("unknown: the upgrade was not completed".into()),
            ),
        }
    });
    head.body(Body::empty())
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Joins an upgraded client and upstream until both directions end:
/// the client's bytes go up as they are, the upstream's come back through
/// `redactor` (an upstream that echoes the handshake, or a shell printing
/// its environment, cannot hand the credential to the client). Returns the
/// bytes (sent up, received from the upstream).
async fn tunnel<C, U>(client: C, upstream: U, mut redactor: Redactor) -> std::io::Result<(u64, u64)>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = async {
        let n = tokio::io::copy(&mut cr, &mut uw).await?;
        uw.shutdown().await?;
        Ok::<u64, std::io::Error>(n)
    };
    let down = async {
        let mut received = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n as u64;
            let out = redactor.push(Bytes::copy_from_slice(&buf[..n]));
            cw.write_all(&out).await?;
            // Flushed at once: a held-back tail waits only for a possible
            // credential, never for more traffic.
            cw.flush().await?;
        }
        cw.write_all(&redactor.finish()).await?;
        cw.shutdown().await?;
        Ok::<u64, std::io::Error>(received)
    };
    tokio::try_join!(up, down)
}

/// Records how a forwarded request went, once, off the client's path.
struct Recorder {
    gateway: Arc<Gateway>,
    who: Principal,
    ex: Option<Execution>,
    started: Instant,
    reads: Vec<String>,
    writes: Vec<String>,
    /// Credentials masked in the answer, recorded with its result.
    masked: u64,
}

impl Recorder {
    fn duration_ms(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
    }

    fn send(&mut self, ok: bool, mut summary: Map<String, Value>) {
        let Some(ex) = self.ex.take() else { return };
        summary.insert("duration_ms".into(), json!(self.duration_ms()));
        if self.masked > 0 {
            summary.insert("masked".into(), json!(self.masked));
        }
        let result = ExecutionResult {
            ok,
            summary: Value::Object(summary),
            reads: if ok {
                std::mem::take(&mut self.reads)
            } else {
                vec![]
            },
            writes: if ok {
                std::mem::take(&mut self.writes)
            } else {
                vec![]
            },
        };
        self.gateway
            .record_execution_later(&self.who, ex, result, "an HTTP request");
    }

    /// `note` starting with `unknown:` marks an outcome the gateway cannot
    /// know (the request may have reached the upstream).
    fn finish(mut self, status: Option<u16>, bytes: u64, ok: bool, note: Option<String>) {
        self.finish_ref(status, bytes, ok, note)
    }

    fn finish_ref(&mut self, status: Option<u16>, bytes: u64, ok: bool, note: Option<String>) {
        let mut s = Map::new();
        if let Some(st) = status {
            s.insert("http_status".into(), json!(st));
        }
        s.insert("bytes".into(), json!(bytes));
        if let Some(n) = note {
            if let Some(rest) = n.strip_prefix("unknown: ") {
                s.insert("status".into(), json!("unknown"));
                s.insert("error".into(), json!(rest));
            } else {
                s.insert("error".into(), json!(n));
            }
        }
        self.send(ok, s)
    }

    fn finish_tunnel(&mut self, sent: u64, received: u64, note: Option<String>) {
        let mut s = Map::new();
        s.insert("http_status".into(), json!(101));
        s.insert("upgraded".into(), json!(true));
        s.insert("bytes".into(), json!(received));
        s.insert("bytes_sent".into(), json!(sent));
        if let Some(n) = note {
            s.insert("note".into(), json!(n));
        }
        self.send(true, s)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.ex.is_some() {
            self.finish_ref(
                None,
                0,
                false,
                Some("unknown: the gateway lost track of the request".into()),
            );
        }
    }
}

/// The upstream's body streamed to the client: masked, counted, and
/// recorded when it ends (or the client goes away).
struct RelayBody {
    inner: hyper::body::Incoming,
    redactor: Redactor,
    bytes: u64,
    status: u16,
    rec: Option<Recorder>,
    ended: bool,
}

impl RelayBody {
    fn settle(&mut self, note: Option<String>) {
        if let Some(mut rec) = self.rec.take() {
            let ok = self.status < 400 && note.is_none();
            rec.masked = self.redactor.masked;
            rec.finish_ref(Some(self.status), self.bytes, ok, note);
        }
    }
}

impl http_body::Body for RelayBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers are not relayed.
                        continue;
                    };
                    this.bytes += data.len() as u64;
                    let out = this.redactor.push(data);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.settle(Some(format!("the upstream's answer broke off: {e}")));
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if this.redactor.masked > 0 {
                        tracing::warn!(
                            masked = this.redactor.masked,
                            "masked the upstream credential in a response body"
                        );
                    }
                    this.settle(None);
                    let rest = this.redactor.finish();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    /// Masking keeps lengths: the upstream's size is the answer's.
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if !self.ended {
            // An answer of known length is not polled past its last byte:
            // all of it relayed is a normal end, not a client going away.
            if http_body::Body::is_end_stream(&self.inner) && self.redactor.holds_nothing() {
                self.ended = true;
                self.settle(None);
                return;
            }
            // The client went away mid-answer (a watch or `logs -f` ends so).
            let status = self.status;
            if let Some(mut rec) = self.rec.take() {
                rec.masked = self.redactor.masked;
                let mut s = Map::new();
                s.insert("http_status".into(), json!(status));
                s.insert("bytes".into(), json!(self.bytes));
                s.insert(
                    "note".into(),
                    json!("the client closed the answer before its end"),
                );
                rec.send(status < 400, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_tunnel_masks_the_credential_coming_back_even_split_across_reads() {
        let (mut client, client_gw) = tokio::io::duplex(64);
        let (upstream_gw, mut upstream) = tokio::io::duplex(64);
        let needles = Arc::new(vec![b"Bearer s3cret-token".to_vec()]);
        let joined = tokio::spawn(tunnel(client_gw, upstream_gw, Redactor::new(needles)));
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got_up = Vec::new();
        upstream.read_to_end(&mut got_up).await.unwrap();
        assert_eq!(got_up, b"ping", "the client's bytes go up unchanged");
        // The upstream echoes its request headers, the credential split
        // over two writes.
        upstream
            .write_all(b"Authorization: Bearer s3c")
            .await
            .unwrap();
        upstream.write_all(b"ret-token\r\nbye").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("Authorization: {}\r\nbye", "*".repeat(19))
        );
        let (sent, received) = joined.await.unwrap().unwrap();
        assert_eq!((sent, received), (4, 39));
    }
}
