//! How the MCP adapter asks the gateway: [`Decider`], with two
//! implementations — [`RestDecider`] (stdio mode, a separate process that
//! talks to a running gateway over its REST API) and the in-process one of
//! HTTP mode (`http::InProcess`), which calls the gateway directly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// An authorization to run one call now, once; already used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// `act_…`, or the request id of an approved call.
    pub id: String,
    pub request_id: Option<String>,
    /// The action's digest.
    pub digest: String,
    pub approvers: Vec<String>,
}

/// What the gateway decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Run(Run),
    Deny {
        id: String,
        reasons: Vec<Value>,
    },
    Held {
        request_id: String,
        url: String,
        /// The identical call was already pending.
        reused: bool,
        required: Vec<Value>,
    },
}

/// A tool definition's standing against its pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PinState {
    /// The definition is the pinned (accepted) one; `new` when this
    /// observation pinned it.
    Pinned {
        #[serde(default)]
        new: bool,
    },
    /// It differs from the pinned one, and no human has accepted it yet.
    Changed { pinned: String },
}

/// The gateway could not be asked, or refused the question: nothing runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecideError {
    pub code: String,
    pub message: String,
}

impl DecideError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        DecideError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The gateway, as the adapter uses it.
pub trait Decider: Send + Sync + 'static {
    /// Decides and records a call; a `Run` is already used up.
    fn decide(
        &self,
        action: Value,
        facts: Map<String, Value>,
    ) -> impl Future<Output = Result<Decision, DecideError>> + Send;
    /// Waits up to `timeout` for a request to leave `pending`; its state.
    fn wait(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, DecideError>> + Send;
    /// Uses the approval of request `request_id` for exactly this action.
    fn run_approved(
        &self,
        request_id: &str,
        action: Value,
        facts: Map<String, Value>,
    ) -> impl Future<Output = Result<Decision, DecideError>> + Send;
    /// The client gave up on a held call.
    fn withdraw(&self, request_id: &str) -> impl Future<Output = Result<(), DecideError>> + Send;
    /// Records how a run went.
    fn record(
        &self,
        run: &Run,
        ok: bool,
        summary: Value,
        reads: Vec<String>,
        writes: Vec<String>,
    ) -> impl Future<Output = Result<(), DecideError>> + Send;
    /// Records a message refused before any decision (best effort: the
    /// refusal stands either way).
    fn refused(
        &self,
        server: &str,
        refusal: crate::refused::Refusal,
    ) -> impl Future<Output = Result<(), DecideError>> + Send;
    /// Compares listed definitions with their pins, pinning new tools.
    fn observe(
        &self,
        server: &str,
        tools: Vec<Value>,
    ) -> impl Future<Output = Result<Vec<(String, PinState)>, DecideError>> + Send;
}

/// Stdio mode: a running gateway, over REST with the agent's own token.
#[derive(Clone)]
pub struct RestDecider {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Results waiting to go out in the next `POST /v1/executions/results`.
    reports: Arc<Mutex<Vec<QueuedReport>>>,
}

/// One result to report, and who waits for how it went.
type QueuedReport = (Value, oneshot::Sender<Result<(), DecideError>>);

/// How long the first result waits for others to share its request. A
/// client calling tools back to back produces a result every few hundred
/// µs; one request per result made the gateway handle the report of each
/// call at the same moment as the decision of the next, on the same cores.
const REPORT_WINDOW: Duration = Duration::from_millis(5);

/// Most results in one batch (the gateway's limit).
const REPORT_BATCH: usize = 256;

impl RestDecider {
    pub fn new(base: &str, token: &str) -> Result<RestDecider, DecideError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| DecideError::new("client", e.to_string()))?;
        Ok(RestDecider {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
            reports: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Sends the queued results (all of them, in batches) and tells each
    /// waiter how its own went.
    async fn flush_reports(&self) {
        let queued = std::mem::take(&mut *self.reports.lock().unwrap_or_else(|p| p.into_inner()));
        let mut queued = queued.into_iter().peekable();
        while queued.peek().is_some() {
            let chunk: Vec<QueuedReport> = queued.by_ref().take(REPORT_BATCH).collect();
            let (items, waiters): (Vec<Value>, Vec<_>) = chunk.into_iter().unzip();
            let ids: Vec<String> = items
                .iter()
                .map(|i| i["execution"].as_str().unwrap_or_default().to_string())
                .collect();
            let answer = self
                .call(
                    reqwest::Method::POST,
                    "/v1/executions/results",
                    Some(&json!({ "results": &items })),
                )
                .await;
            let mut outcomes: HashMap<String, Result<(), DecideError>> = HashMap::new();
            match answer {
                Ok(v) => {
                    for o in v.as_array().into_iter().flatten() {
                        let id = o["execution"].as_str().unwrap_or_default().to_string();
                        let r = if o["recorded"] == true {
                            Ok(())
                        } else {
                            Err(DecideError::new(
                                o["error"]["code"].as_str().unwrap_or("gateway_error"),
                                o["error"]["message"].as_str().unwrap_or("not recorded"),
                            ))
                        };
                        outcomes.insert(id, r);
                    }
                }
                // The batch endpoint answers 200 whatever its items' fate: a
                // 404 means a gateway older than it, and a batch refused
                // whole (one item's lineage out of bounds) must not cost the
                // others their record. Report one by one.
                Err(e)
                    if matches!(
                        e.code.as_str(),
                        "not_found" | "invalid_lineage" | "invalid_batch"
                    ) =>
                {
                    for (id, item) in ids.iter().zip(&items) {
                        let mut body = item.clone();
                        if let Some(o) = body.as_object_mut() {
                            o.remove("execution");
                        }
                        let r = self
                            .call(
                                reqwest::Method::POST,
                                &format!("/v1/executions/{id}/result"),
                                Some(&body),
                            )
                            .await
                            .map(|_| ());
                        outcomes.insert(id.clone(), r);
                    }
                }
                Err(e) => {
                    for id in &ids {
                        outcomes.insert(id.clone(), Err(e.clone()));
                    }
                }
            }
            for (id, waiter) in ids.into_iter().zip(waiters) {
                let r = outcomes.remove(&id).unwrap_or_else(|| {
                    Err(DecideError::new(
                        "gateway_error",
                        "the gateway's answer does not mention this execution",
                    ))
                });
                let _ = waiter.send(r);
            }
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DecideError> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).unwrap_or_default());
        }
        let resp = r.send().await.map_err(|e| {
            DecideError::new(
                "gateway_unreachable",
                format!("cannot reach the secondkey gateway at {}: {e}", self.base),
            )
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DecideError::new("gateway_unreachable", e.to_string()))?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(v);
        }
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or("gateway_error")
            .to_string();
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the gateway answered {status}"));
        Err(DecideError { code, message })
    }
}

/// Reads `POST /v1/actions?execute=true`'s answer.
pub fn decision_from_response(v: &Value) -> Result<Decision, DecideError> {
    let reasons = v["reasons"].as_array().cloned().unwrap_or_default();
    match v["decision"].as_str() {
        Some("allow") | Some("review") if v.get("execution").is_some_and(|e| e.is_object()) => {
            let x = &v["execution"];
            Ok(Decision::Run(Run {
                id: x["id"].as_str().unwrap_or_default().to_string(),
                request_id: x["request_id"].as_str().map(str::to_string),
                digest: v["digest"].as_str().unwrap_or_default().to_string(),
                approvers: x["approvers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        }
        Some("deny") => Ok(Decision::Deny {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            reasons,
        }),
        Some("review") => Ok(Decision::Held {
            request_id: v["request"]["id"].as_str().unwrap_or_default().to_string(),
            url: v["request"]["url"].as_str().unwrap_or_default().to_string(),
            reused: v["request"]["reused"].as_bool().unwrap_or(false),
            required: v["request"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        }),
        _ => Err(DecideError::new(
            "gateway_error",
            "the gateway's answer carries no usable decision (does it support ?execute=true?)",
        )),
    }
}

impl Decider for RestDecider {
    async fn decide(
        &self,
        action: Value,
        facts: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        let mut action = action;
        crate::action::declare_facts(&mut action, facts);
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/actions?execute=true",
                Some(&action),
            )
            .await?;
        decision_from_response(&v)
    }

    async fn wait(&self, request_id: &str, timeout: Duration) -> Result<String, DecideError> {
        let secs = timeout.as_secs().max(1);
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/requests/{request_id}?wait={secs}"),
                None,
            )
            .await?;
        Ok(v["state"].as_str().unwrap_or("unknown").to_string())
    }

    async fn run_approved(
        &self,
        _request_id: &str,
        action: Value,
        facts: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        // The identical action again: the gateway uses this requester's
        // approved request with the same digest, once.
        self.decide(action, facts).await
    }

    async fn withdraw(&self, request_id: &str) -> Result<(), DecideError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/requests/{request_id}/withdraw"),
            Some(&json!({})),
        )
        .await
        .map(|_| ())
    }

    async fn record(
        &self,
        run: &Run,
        ok: bool,
        summary: Value,
        reads: Vec<String>,
        writes: Vec<String>,
    ) -> Result<(), DecideError> {
        // Queued, and sent with the results of the calls that follow within
        // REPORT_WINDOW in one `POST /v1/executions/results`; this resolves
        // once the gateway has recorded it (or refused it).
        let item = json!({"execution": run.id, "ok": ok, "summary": summary,
                          "reads": reads, "writes": writes});
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut q = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            q.push((item, tx));
            q.len() == 1
        };
        if first {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REPORT_WINDOW).await;
                me.flush_reports().await;
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(DecideError::new(
                "client",
                "the result was dropped before it was sent",
            ))
        })
    }

    async fn refused(
        &self,
        server: &str,
        refusal: crate::refused::Refusal,
    ) -> Result<(), DecideError> {
        let mut body = serde_json::to_value(&refusal).unwrap_or_default();
        body["server"] = json!(server);
        self.call(reqwest::Method::POST, "/v1/mcp/refused", Some(&body))
            .await
            .map(|_| ())
    }

    async fn observe(
        &self,
        server: &str,
        tools: Vec<Value>,
    ) -> Result<Vec<(String, PinState)>, DecideError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/mcp/pins/observe",
                Some(&json!({"server": server, "tools": tools})),
            )
            .await?;
        parse_observed(&v)
    }
}

/// Reads the answer of `POST /v1/mcp/pins/observe`.
pub fn parse_observed(v: &Value) -> Result<Vec<(String, PinState)>, DecideError> {
    let list = v["tools"]
        .as_array()
        .ok_or_else(|| DecideError::new("gateway_error", "no `tools` in the pin answer"))?;
    list.iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or_default().to_string();
            let st: PinState = serde_json::from_value(t["pin"].clone())
                .map_err(|e| DecideError::new("gateway_error", format!("pin state: {e}")))?;
            Ok((name, st))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::{Json, Router};

    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    /// A gateway stand-in: the batch endpoint (when `batch`) refusing the
    /// execution `act_theirs`, and the single-result endpoint.
    async fn serve(batch: bool) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let s1 = seen.clone();
        let s2 = seen.clone();
        let mut app = Router::new().route(
            "/v1/executions/{id}/result",
            post(
                move |axum::extract::Path(id): axum::extract::Path<String>,
                      Json(b): Json<Value>| {
                    let s = s2.clone();
                    async move {
                        s.lock().unwrap().push((format!("single {id}"), b));
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        if batch {
            app = app.route(
                "/v1/executions/results",
                post(move |Json(b): Json<Value>| {
                    let s = s1.clone();
                    async move {
                        s.lock().unwrap().push(("batch".into(), b.clone()));
                        let whole = b["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|i| i["execution"] == "act_badlineage");
                        if whole {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                Json(json!({"error": {"code": "invalid_lineage", "message": "results[1]: reads…"}})),
                            );
                        }
                        let out: Vec<Value> = b["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|i| {
                                if i["execution"] == "act_theirs" {
                                    json!({"execution": i["execution"], "recorded": false,
                                           "error": {"code": "not_found", "message": "no execution act_theirs of yours"}})
                                } else {
                                    json!({"execution": i["execution"], "recorded": true})
                                }
                            })
                            .collect();
                        (axum::http::StatusCode::OK, Json(Value::Array(out)))
                    }
                }),
            );
        }
        let app = app.fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "not_found", "message": "no such endpoint"}})),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    fn run(id: &str) -> Run {
        Run {
            id: id.into(),
            request_id: None,
            digest: "d".into(),
            approvers: vec![],
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn results_in_quick_succession_share_one_request_and_keep_their_own_fate() {
        let (url, seen) = serve(true).await;
        let d = RestDecider::new(&url, "t").unwrap();
        let ids = ["act_1", "act_theirs", "act_2", "act_3"];
        let runs: Vec<Run> = ids.iter().map(|id| run(id)).collect();
        let outcomes = futures_util::future::join_all(
            runs.iter()
                .map(|r| d.record(r, true, json!({"n": 1}), vec!["r".into()], vec![])),
        )
        .await;
        let codes: Vec<Option<String>> = outcomes
            .into_iter()
            .map(|r| r.err().map(|e| e.code))
            .collect();
        assert_eq!(codes, vec![None, Some("not_found".into()), None, None]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one request for all four: {seen:?}");
        let sent: Vec<&str> = seen[0].1["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["execution"].as_str().unwrap())
            .collect();
        assert_eq!(sent, ids);
        assert_eq!(seen[0].1["results"][0]["reads"], json!(["r"]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_older_gateway_without_the_batch_endpoint_gets_them_one_by_one() {
        let (url, seen) = serve(false).await;
        let d = RestDecider::new(&url, "t").unwrap();
        let (r1, r2) = (run("act_1"), run("act_2"));
        let (a, b) = tokio::join!(
            d.record(&r1, true, json!({}), vec![], vec![]),
            d.record(&r2, false, json!({"status": "unknown"}), vec![], vec![]),
        );
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["single act_1", "single act_2"]);
        assert_eq!(
            seen[1].1,
            json!({"ok": false, "summary": {"status": "unknown"}, "reads": [], "writes": []})
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_refused_whole_is_reported_one_by_one() {
        let (url, seen) = serve(true).await;
        let d = RestDecider::new(&url, "t").unwrap();
        let (r1, r2) = (run("act_1"), run("act_badlineage"));
        let (a, b) = tokio::join!(
            d.record(&r1, true, json!({}), vec![], vec![]),
            d.record(&r2, true, json!({}), vec![], vec![]),
        );
        // The stand-in's single endpoint accepts both: neither result is
        // lost because the other made the batch unacceptable.
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["batch", "single act_1", "single act_badlineage"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_gateway_fails_every_queued_result() {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let d = RestDecider::new(&url, "t").unwrap();
        let (r1, r2) = (run("act_1"), run("act_2"));
        let (a, b) = tokio::join!(
            d.record(&r1, true, json!({}), vec![], vec![]),
            d.record(&r2, true, json!({}), vec![], vec![]),
        );
        assert_eq!(a.unwrap_err().code, "gateway_unreachable");
        assert_eq!(b.unwrap_err().code, "gateway_unreachable");
    }
}
