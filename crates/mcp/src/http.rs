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

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use secondkey_core::action::{Action, Digest};
use secondkey_core::principal::Principal;
use secondkey_server::auth::{Authenticated, Caller};
use secondkey_server::error::ApiError;
use secondkey_server::identity::Credential;
use secondkey_server::{AppState, Extension, Gateway};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::config::{McpConfig, ServerConfig, Sources};
use crate::decide::{DecideError, Decider, Decision, PinState, Run};
use crate::flood::{self, Budget};
use crate::intercept::{tool_error, Forward, Interceptor, Known, Outcome, Plan, Waiting};
use crate::jsonrpc::{self, error_response, id_key, result_response, Kind, Message};
use crate::limits::{Hold, Quota};
use crate::methods::ClientRequest;
use crate::pins::{self, PinCache};
use crate::refused::{self, Refusal};
use crate::tasks::{self, Owned, TaskRequest};
use crate::tools;

/// The tool result for a call the server received but never answered: it
/// may or may not have run.
fn lost_mid_call(why: &str) -> Value {
    tool_error(format!(
        "the MCP server failed during this call; whether it took effect is unknown ({why})"
    ))
}

/// Decides in the gateway process, as the authenticated caller.
pub struct InProcess {
    pub gateway: Arc<Gateway>,
    pub who: Principal,
    /// What the caller's token proved beyond who it is (a delegation).
    pub credential: Credential,
    pub admins: Vec<String>,
    /// The client connection's peer address: the fact `source_ip`.
    pub peer: Option<std::net::IpAddr>,
    /// The pins read so far (the MCP extension's [`PinCache`]).
    pub pins: Arc<PinCache>,
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
        let mut facts = facts;
        if let Some(ip) = self.peer {
            let (k, v) = secondkey_server::gateway::source_fact(ip);
            facts.insert(k, v);
        }
        let it = secondkey_server::Intercept {
            action,
            transport: "mcp",
            facts,
        };
        Ok(match self
            .gateway
            .intercept_by(&self.who, &self.credential, it)
            .await
            .map_err(de)?
        {
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
                    .map(|r| json!({"policy": r.policy_id, "groups": r.all_groups(), "quorum": r.quorum}))
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

    async fn refused(&self, server: &str, r: Refusal) -> Result<(), DecideError> {
        refused::record(&self.gateway, &self.who, server, r)
            .await
            .map_err(de)
    }

    async fn observe(
        &self,
        server: &str,
        tools: Vec<Value>,
    ) -> Result<Vec<(String, PinState)>, DecideError> {
        pins::observe(&self.gateway, &self.pins, &self.who, server, tools)
            .await
            .map_err(de)
    }
}

/// Most server requests awaiting their client's answer that the gateway
/// remembers (to record the answer), across sessions; each session's own
/// share is bounded by `mcp.max_pending_requests`.
const MAX_SERVER_ASKED: usize = 100_000;

/// A server request relayed to a client after its decision: by caller,
/// server, session (`""` for none) and request id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AskedKey {
    principal: String,
    server: String,
    session: String,
    id: String,
}

/// A relayed server request awaiting the client's answer: its outcome is
/// recorded when the client answers, or as unknown when its session ends
/// first ([`Inner::sessions_ended`]). It holds a slot of its session's quota
/// until then.
struct Asked {
    run: TaskRun,
    _hold: Hold,
}

/// Why a relayed server request is recorded as unknown when its session
/// ends (a `DELETE`) before the client answered it.
const ASKED_ENDED: &str = "the session ended before the client answered the server's request";

/// Why a relayed server request is recorded as unknown when its session
/// idles out before the client answered it.
const ASKED_IDLE: &str = "the session idled out (unused for mcp.session_idle_seconds) before the client answered the server's request";

/// Why relayed server requests are recorded as unknown when the gateway
/// holds [`MAX_SERVER_ASKED`] of them unanswered and forgets them.
const ASKED_FORGOTTEN: &str = "the gateway held too many unanswered server requests (across sessions) and forgot this one before the client answered it";

/// An MCP session an upstream opened through this gateway: bound to the
/// principal that opened it, with what its client declared and listed.
struct SessionInfo {
    principal: String,
    client_info: Option<Value>,
    /// The tools the client listed in this session since the server last
    /// said its list changed (the `listed` fact).
    listed: HashSet<String>,
    /// Last time the session's client used it: began or finished a
    /// request, or closed an event stream.
    used: tokio::time::Instant,
    /// Client requests of the session in progress here (their answers
    /// included, while they stream): [`InUse`].
    busy: usize,
    /// What the session holds (`mcp.max_pending_requests`,
    /// `mcp.max_session_bytes`).
    quota: Quota,
    /// The server's tool definitions as read in this session.
    tools: ToolsSeen,
    /// The tasks the upstream created for this session's decided calls:
    /// the only ones its `tasks/*` requests reach.
    tasks: Owned<TaskRun>,
    /// The `MCP-Protocol-Version` the client last sent in this session:
    /// sent with the `DELETE` that ends the session upstream when the
    /// client left it ([`Inner::end_upstream`]), as the protocol asks of
    /// every request after `initialize`.
    protocol: Option<HeaderValue>,
}

impl SessionInfo {
    /// Whether the session's client has left it: nothing of it in
    /// progress, no event stream open, and unused for `limit`.
    fn idle(&self, now: tokio::time::Instant, limit: Duration) -> bool {
        self.busy == 0 && self.tools.listening == 0 && now.duration_since(self.used) >= limit
    }
}

/// A decided call that runs as a task, awaiting its result: its outcome
/// is recorded, with the interceptor of the caller that made it, from the
/// first `tasks/result` fetched for the task, or as unknown if none ever
/// is ([`record_unfetched`]).
struct TaskRun {
    icp: Interceptor<InProcess>,
    fwd: Forward,
}

/// Records as unknown (`why`) the outcome of runs whose task's result was
/// never fetched: their session ended or was forgotten, or their task was
/// forgotten past [`tasks::MAX_TASKS`]. Off the caller's path.
fn record_unfetched(runs: Vec<TaskRun>, why: &'static str) {
    if runs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for r in runs {
            r.icp.finished(&r.fwd, Outcome::Lost(why.into())).await;
        }
    });
}

/// The tool definitions (their pinned part, by name) the server gave in
/// one session, reused to decide that session's later calls instead of
/// listing again before each. Kept only while the gateway relays an event
/// stream (GET) of the session: that is where the server says its list
/// changed outside a request, so with none open the gateway could miss a
/// change, and lists before every call. Forgotten when that stream ends
/// (the server restarted or the client reconnects), when the server says
/// `notifications/tools/list_changed` on any stream the gateway relays,
/// when the client lists (it may now hold another list than this), and
/// when the server refuses the session. The pin standing of a reused
/// definition is read again for every call.
#[derive(Default)]
struct ToolsSeen {
    defs: HashMap<String, Value>,
    /// Counts what made the definitions forgotten: a listing that began
    /// before one is not kept.
    epoch: u64,
    /// Event streams of the session open through the gateway.
    listening: usize,
}

/// Most tool definitions one session keeps ([`ToolsSeen`]); past it, the
/// calls of tools not kept list again.
const MAX_TOOLS_SEEN: usize = 1000;

impl ToolsSeen {
    fn forget(&mut self) {
        self.defs.clear();
        self.epoch += 1;
    }

    /// Keeps `defs`, read by a listing that began at `epoch`, if nothing
    /// made the definitions forgotten since and a stream is open.
    fn learn(&mut self, epoch: u64, defs: impl IntoIterator<Item = (String, Value)>) {
        if epoch != self.epoch || self.listening == 0 {
            return;
        }
        for (name, def) in defs {
            if self.defs.len() >= MAX_TOOLS_SEEN && !self.defs.contains_key(&name) {
                break;
            }
            self.defs.insert(name, def);
        }
    }
}

/// An event stream (GET) of a session relayed to its client: while one
/// is, the session's tool definitions may be reused; its end forgets them.
struct Listening {
    inner: Arc<Inner>,
    server: String,
    sid: String,
}

impl Listening {
    fn open(inner: &Arc<Inner>, server: &str, sid: &str) -> Option<Listening> {
        inner.with_session(server, sid, |i| {
            // Nothing read before the stream opened is kept.
            i.tools.forget();
            i.tools.listening += 1;
        })?;
        Some(Listening {
            inner: inner.clone(),
            server: server.to_string(),
            sid: sid.to_string(),
        })
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.inner.with_session(&self.server, &self.sid, |i| {
            i.tools.listening = i.tools.listening.saturating_sub(1);
            i.tools.forget();
            i.used = tokio::time::Instant::now();
        });
    }
}

/// A client request of a session in progress: while one is (its answer
/// streaming included), the session is not idle ([`Inner::sweep`]); its
/// end counts as a use.
struct InUse {
    inner: Arc<Inner>,
    key: String,
}

impl InUse {
    /// Counts a request of `who` naming session `sid` on `server` (none
    /// if the session is not theirs: it is refused), and keeps the
    /// protocol version it names, if any.
    fn enter(
        inner: &Arc<Inner>,
        server: &str,
        sid: &str,
        who: &Principal,
        protocol: Option<&HeaderValue>,
    ) -> Option<InUse> {
        let key = session_key(server, sid);
        let mut s = lock(&inner.sessions);
        let i = s
            .by_key
            .get_mut(&key)
            .filter(|i| i.principal == who.id.to_string())?;
        i.busy += 1;
        i.used = tokio::time::Instant::now();
        if let Some(v) = protocol {
            i.protocol = Some(v.clone());
        }
        Some(InUse {
            inner: inner.clone(),
            key,
        })
    }
}

/// `resp`, holding `guard` until its body is done if it is an event
/// stream (a JSON body is already complete: `guard` drops with the call).
fn until_sent<G: Send + Sync + 'static>(guard: G, resp: Response) -> Response {
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !sse {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// A request of a session in progress here, until its answer is sent: a
/// second request of the session with its id is refused meanwhile
/// (JSON-RPC ids are unique within an MCP session; an upstream given two
/// could answer either, or leave the first waiting for ever).
/// An id for the gateway's own `tools/list` in an upstream session:
/// `secondkey-tools-<this process's nonce>-<n>`, never the same twice.
fn own_list_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("the system's random source");
        hex::encode(b)
    });
    format!(
        "secondkey-tools-{nonce}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

struct InFlight {
    inner: Arc<Inner>,
    key: String,
}

impl InFlight {
    /// `None` if a request with this key is in progress already.
    fn enter(inner: &Arc<Inner>, key: String) -> Option<InFlight> {
        lock(&inner.in_flight)
            .insert(key.clone())
            .then(|| InFlight {
                inner: inner.clone(),
                key,
            })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.key);
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(i) = lock(&self.inner.sessions).by_key.get_mut(&self.key) {
            i.busy = i.busy.saturating_sub(1);
            i.used = tokio::time::Instant::now();
        }
    }
}

/// The sessions opened through the gateway, at most `mcp.max_sessions`
/// (those being opened included).
#[derive(Default)]
struct Sessions {
    by_key: HashMap<String, SessionInfo>,
    /// `initialize` requests forwarded whose session is not tracked yet,
    /// in all and by principal.
    opening: usize,
    opening_by: HashMap<String, usize>,
    /// Quotas of requests sent without a session (stateless servers), by
    /// principal and server.
    sessionless: HashMap<String, Quota>,
    /// The tasks created for calls sent without a session, by principal
    /// and server.
    sessionless_tasks: HashMap<String, SessionlessTasks>,
}

/// The tasks of a principal's calls sent to a server without a session,
/// and when that principal last sent it a request: unused for
/// `mcp.session_idle_seconds`, its runs still awaiting a result are
/// recorded as unknown, as a session's are when it idles out.
struct SessionlessTasks {
    tasks: Owned<TaskRun>,
    used: tokio::time::Instant,
}

/// A slot for a session being opened, given back when dropped (the
/// session is then tracked, or was never opened).
struct Opening(Arc<Inner>, String);

impl Drop for Opening {
    fn drop(&mut self) {
        let mut s = lock(&self.0.sessions);
        s.opening = s.opening.saturating_sub(1);
        if let Some(n) = s.opening_by.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.opening_by.remove(&self.1);
            }
        }
    }
}

/// Why no session could be opened.
enum Full {
    /// `mcp.max_sessions`.
    Gateway,
    /// `mcp.max_sessions_per_principal`.
    Principal,
}

/// The key of a session: upstream session ids are only unique per server.
fn session_key(server: &str, sid: &str) -> String {
    format!("{server}\n{sid}")
}

/// The server and the session id of a [`session_key`].
fn session_of_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('\n')
}

/// How a session the gateway tracked ended, for what it leaves behind
/// ([`Inner::sessions_ended`]).
#[derive(Debug, Clone, Copy)]
enum SessionEnd {
    /// The client's `DELETE`, which the upstream accepted.
    Deleted,
    /// Its client left it (unused for `mcp.session_idle_seconds`): swept,
    /// or forgotten to make room. The upstream is sent the `DELETE` the
    /// client did not send.
    Idle,
}

/// The MCP extension of the gateway: the `/mcp/<server>` endpoints and the
/// pin API (`/v1/mcp/pins…`, also what stdio mode uses).
pub struct McpExtension {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<McpConfig>,
    servers: HashMap<String, Arc<ServerConfig>>,
    /// Each server's url, parsed once (not again for every request).
    urls: HashMap<String, reqwest::Url>,
    http: reqwest::Client,
    /// Calls being decided or held, by caller, server, session and id.
    deciding: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Every request of a session in progress here, by caller, server,
    /// session and id ([`InFlight`]).
    in_flight: Mutex<HashSet<String>>,
    /// The sessions opened through the gateway, by [`session_key`].
    sessions: Mutex<Sessions>,
    /// The server's requests relayed to clients after a decision, by
    /// caller, server, session and id: recorded when the client answers.
    server_asked: Mutex<HashMap<AskedKey, Asked>>,
    /// Refusals of server requests being sent upstream at once (a server
    /// flooding requests past its session's limit gets no more than this).
    refusing: Arc<tokio::sync::Semaphore>,
    /// The pins read so far ([`PinCache`]).
    pins: Arc<PinCache>,
}

/// Most refusals of server requests in flight to upstreams at once.
const MAX_REFUSING: usize = 64;

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
        let urls = config
            .servers
            .iter()
            .filter_map(|(k, v)| {
                let url = reqwest::Url::parse(v.url.as_deref()?).ok()?;
                Some((k.clone(), url))
            })
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
                urls,
                http,
                deciding: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashSet::new()),
                sessions: Mutex::new(Sessions::default()),
                server_asked: Mutex::new(HashMap::new()),
                refusing: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING)),
                pins: Arc::default(),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Room for one more session of `who` (`mcp.max_sessions`,
    /// `mcp.max_sessions_per_principal`), made if need be by forgetting the
    /// session unused for longest (of `who`'s, when it is `who`'s own cap
    /// that is reached), if it has been unused for
    /// `mcp.session_idle_seconds`.
    fn reserve_session(self: &Arc<Self>, who: &Principal) -> Result<Opening, Full> {
        let who = who.id.to_string();
        let mut s = lock(&self.sessions);
        let mine = s.by_key.values().filter(|i| i.principal == who).count()
            + s.opening_by.get(&who).copied().unwrap_or(0);
        let full = if mine >= self.config.max_sessions_per_principal {
            Some(Full::Principal)
        } else if s.by_key.len() + s.opening >= self.config.max_sessions {
            Some(Full::Gateway)
        } else {
            None
        };
        let mut gone = Vec::new();
        if let Some(full) = full {
            let now = tokio::time::Instant::now();
            let own = matches!(full, Full::Principal);
            let idle = s
                .by_key
                .iter()
                .filter(|(_, i)| !own || i.principal == who)
                .min_by_key(|(_, i)| i.used)
                .filter(|(_, i)| now.duration_since(i.used) >= self.config.session_idle)
                .map(|(k, _)| k.clone());
            let Some(idle) = idle else {
                return Err(full);
            };
            gone.extend(s.by_key.remove_entry(&idle));
            tracing::info!("forgot an idle MCP session to make room for a new one");
        }
        s.opening += 1;
        *s.opening_by.entry(who.clone()).or_default() += 1;
        drop(s);
        self.sessions_ended(gone, SessionEnd::Idle);
        Ok(Opening(self.clone(), who))
    }

    /// Binds a session the upstream just opened to the principal whose
    /// `initialize` opened it (in the room `_slot` reserved).
    fn open_session(
        &self,
        _slot: Opening,
        server: &str,
        sid: &str,
        who: &Principal,
        client_info: Option<Value>,
    ) {
        let mut s = lock(&self.sessions);
        s.by_key.insert(
            session_key(server, sid),
            SessionInfo {
                principal: who.id.to_string(),
                client_info,
                listed: HashSet::new(),
                used: tokio::time::Instant::now(),
                busy: 0,
                quota: Quota::new(
                    self.config.max_pending_requests,
                    self.config.max_session_bytes,
                ),
                tools: ToolsSeen::default(),
                tasks: Owned::default(),
                protocol: None,
            },
        );
    }

    /// `f` on the tasks of `who` in session `sid` on `server` (or in no
    /// session); `None` for a session no longer tracked.
    fn with_tasks<T>(
        &self,
        server: &str,
        sid: Option<&str>,
        who: &Principal,
        f: impl FnOnce(&mut Owned<TaskRun>) -> T,
    ) -> Option<T> {
        let mut s = lock(&self.sessions);
        match sid {
            Some(sid) => s
                .by_key
                .get_mut(&session_key(server, sid))
                .filter(|i| i.principal == who.id.to_string())
                .map(|i| f(&mut i.tasks)),
            None => {
                let now = tokio::time::Instant::now();
                let t = s
                    .sessionless_tasks
                    .entry(format!("{}\n{server}", who.id))
                    .or_insert_with(|| SessionlessTasks {
                        tasks: Owned::default(),
                        used: now,
                    });
                t.used = now;
                Some(f(&mut t.tasks))
            }
        }
    }

    /// Takes `answer`, the upstream's answer to `run`, a decided call of
    /// `who` in session `sid` on `server` that `asked` for a task or not
    /// ([`tasks::learn`]): a task it created is theirs, and the run awaits
    /// its result. In a session no longer tracked (it ended while the call
    /// was in progress) the answer is the outcome, unless it created a
    /// task: nobody can fetch that task's result through the gateway any
    /// more, so the run is recorded as unknown as the session's others
    /// were.
    fn learn_run(
        &self,
        (server, sid, who): (&str, Option<&str>, &Principal),
        asked: bool,
        answer: &Value,
        run: TaskRun,
    ) -> tasks::Learned<TaskRun> {
        let mut run = Some(run);
        let learned = self
            .with_tasks(server, sid, who, |t| {
                run.take().map(|r| tasks::learn(t, asked, answer, r))
            })
            .flatten();
        if let Some(learned) = learned {
            return learned;
        }
        if asked && tasks::created(answer).is_some() {
            record_unfetched(run.into_iter().collect(), tasks::ENDED);
            return tasks::Learned {
                now: None,
                forgotten: None,
            };
        }
        tasks::Learned {
            now: run,
            forgotten: None,
        }
    }

    /// Ends the sessions whose clients have left them
    /// ([`SessionInfo::idle`] for `mcp.session_idle_seconds`) as a
    /// `DELETE` would ([`Inner::sessions_ended`]). The runs of principals that
    /// sent a server nothing without a session for as long
    /// ([`SessionlessTasks`]) whose task's result was never fetched are
    /// recorded as unknown ([`tasks::IDLE`]) too; their task ids stay.
    fn sweep(self: &Arc<Self>, now: tokio::time::Instant) {
        let limit = self.config.session_idle;
        let mut s = lock(&self.sessions);
        let gone: Vec<String> = s
            .by_key
            .iter()
            .filter(|(_, i)| i.idle(now, limit))
            .map(|(k, _)| k.clone())
            .collect();
        let ended: Vec<(String, SessionInfo)> = gone
            .iter()
            .filter_map(|k| s.by_key.remove_entry(k))
            .collect();
        let mut runs = Vec::new();
        for t in s.sessionless_tasks.values_mut() {
            if now.duration_since(t.used) >= limit {
                runs.extend(t.tasks.take_all_results());
            }
        }
        drop(s);
        if !gone.is_empty() {
            tracing::info!(
                sessions = gone.len(),
                "ended MCP sessions unused for mcp.session_idle_seconds"
            );
        }
        record_unfetched(runs, tasks::IDLE);
        self.sessions_ended(ended, SessionEnd::Idle);
    }

    /// What sessions that ended `how` leave behind: their runs whose
    /// task's result was never fetched and the server requests relayed to
    /// their clients and never answered are recorded as unknown, saying
    /// how the session ended; a session whose client left it is ended
    /// upstream too (the `DELETE` the client did not send, whatever the
    /// upstream answers: it may have ended the session itself).
    fn sessions_ended(self: &Arc<Self>, ended: Vec<(String, SessionInfo)>, how: SessionEnd) {
        let (tasks_why, asked_why) = match how {
            SessionEnd::Deleted => (tasks::ENDED, ASKED_ENDED),
            SessionEnd::Idle => (tasks::IDLE, ASKED_IDLE),
        };
        let mut runs = Vec::new();
        let mut asked = Vec::new();
        for (key, mut i) in ended {
            runs.extend(i.tasks.take_all_results());
            let Some((server, sid)) = session_of_key(&key) else {
                continue;
            };
            if matches!(how, SessionEnd::Idle) {
                self.end_upstream(server, sid, i.protocol.take());
            }
            asked.push((server.to_string(), sid.to_string(), i.principal));
        }
        record_unfetched(runs, tasks_why);
        self.end_asked(&asked, asked_why);
    }

    /// Sends the upstream `server` a `DELETE` of its session `sid` (with the
    /// session's `MCP-Protocol-Version`, when its client sent one), off the
    /// caller's path; what it answers only goes to the gateway's log.
    fn end_upstream(self: &Arc<Self>, server: &str, sid: &str, protocol: Option<HeaderValue>) {
        let (Some(srv), Ok(sid_header)) = (
            self.servers.get(server).cloned(),
            HeaderValue::from_str(sid),
        ) else {
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            let mut headers = vec![("mcp-session-id".to_string(), sid_header)];
            if let Some(v) = protocol {
                headers.push(("mcp-protocol-version".to_string(), v));
            }
            match upstream(&inner, &srv, Method::DELETE, &headers, None).await {
                Ok(r) => {
                    tracing::debug!(server = %srv.name, status = %r.status(), "ended an idle MCP session upstream")
                }
                Err(f) => {
                    tracing::info!(server = %srv.name, error = %f.why, "could not end an idle MCP session upstream")
                }
            }
        });
    }

    /// Forgets the relayed server requests of the sessions `ended` (server,
    /// session id, principal) that their clients never answered, and
    /// records their outcomes as unknown (`why`): no answer can reach them
    /// through the gateway any more.
    fn end_asked(&self, ended: &[(String, String, String)], why: &'static str) {
        if ended.is_empty() {
            return;
        }
        let unanswered: Vec<TaskRun> = {
            let mut asked = lock(&self.server_asked);
            let keys: Vec<AskedKey> = asked
                .keys()
                .filter(|k| {
                    ended.iter().any(|(srv, sid, who)| {
                        k.server == *srv && k.session == *sid && k.principal == *who
                    })
                })
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| asked.remove(k))
                .map(|a| a.run)
                .collect()
        };
        record_unfetched(unanswered, why);
    }

    /// The quota of `who`'s messages in session `sid` on `server` (or in
    /// no session).
    fn quota(&self, server: &str, sid: Option<&str>, who: &Principal) -> Quota {
        let mut s = lock(&self.sessions);
        if let Some(i) = sid.and_then(|sid| s.by_key.get(&session_key(server, sid))) {
            return i.quota.clone();
        }
        let (pending, bytes) = (
            self.config.max_pending_requests,
            self.config.max_session_bytes,
        );
        let key = format!("{}\n{server}", who.id);
        if let Some(t) = s.sessionless_tasks.get_mut(&key) {
            t.used = tokio::time::Instant::now();
        }
        s.sessionless
            .entry(key)
            .or_insert_with(|| Quota::new(pending, bytes))
            .clone()
    }

    /// Whether `sid` is a session of `who` on `server`: `None` if so (and
    /// it counts as used), else the refusal code (`unknown_session`, or
    /// `foreign_session` for one opened by another principal — answered
    /// the same way).
    fn session_refusal(&self, server: &str, sid: &str, who: &Principal) -> Option<&'static str> {
        match lock(&self.sessions)
            .by_key
            .get_mut(&session_key(server, sid))
        {
            None => Some("unknown_session"),
            Some(i) if i.principal != who.id.to_string() => Some("foreign_session"),
            Some(i) => {
                i.used = tokio::time::Instant::now();
                None
            }
        }
    }

    fn with_session<T>(
        &self,
        server: &str,
        sid: &str,
        f: impl FnOnce(&mut SessionInfo) -> T,
    ) -> Option<T> {
        lock(&self.sessions)
            .by_key
            .get_mut(&session_key(server, sid))
            .map(f)
    }

    /// Forgets the tool definitions read in session `sid` ([`ToolsSeen`]).
    fn forget_tools(&self, server: &str, sid: &str) {
        self.with_session(server, sid, |i| i.tools.forget());
    }
}

/// Refuses a message naming a session that is not the caller's: `404` (as
/// for any unknown session, so another principal's session cannot be told
/// from one that does not exist), recorded as a refused attempt.
async fn check_session(
    inner: &Inner,
    gw: &Gateway,
    who: &Principal,
    server: &str,
    sid: &str,
    method: &str,
) -> Result<(), Response> {
    let Some(code) = inner.session_refusal(server, sid, who) else {
        return Ok(());
    };
    let reason = "unknown MCP session: it does not exist, has ended, or was not opened with these credentials; start a new one with `initialize`. Nothing was forwarded".to_string();
    let r = Refusal {
        method: method.to_string(),
        code: code.to_string(),
        reason: reason.clone(),
        session: Some(sid.to_string()),
    };
    if let Err(e) = refused::record(gw, who, server, r).await {
        tracing::warn!(error = %e, "could not record a refused MCP message");
    }
    Err((
        StatusCode::NOT_FOUND,
        Json(error_response(
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            &reason,
        )),
    )
        .into_response())
}

impl Extension for McpExtension {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        Some(<McpDoc as utoipa::OpenApi>::openapi())
    }

    /// Sweeps the sessions ([`Inner::sweep`]) every half
    /// `mcp.session_idle_seconds`, at least once a minute, for as long as
    /// the extension lives.
    fn start(&self, _gateway: Arc<Gateway>) -> anyhow::Result<()> {
        let every = (self.inner.config.session_idle / 2).min(Duration::from_secs(60));
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                inner.sweep(tokio::time::Instant::now());
            }
        });
        Ok(())
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
        let g = self.inner.clone();
        Router::new()
            .route(
                "/mcp/{server}",
                post(move |s, c, p, ip, h, b| post_mcp(a.clone(), s, c, p, ip, h, b))
                    .get(move |s, c, p, ip, h| other_mcp(b.clone(), Method::GET, s, c, p, ip, h))
                    .delete(move |s, c2, p, ip, h| {
                        other_mcp(c.clone(), Method::DELETE, s, c2, p, ip, h)
                    }),
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
            .route(
                "/v1/mcp/refused",
                post(move |s, c, j| report_refused(g.clone(), s, c, j)),
            )
    }
}

/// The OpenAPI description of the MCP gateway's routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        post_mcp_doc,
        get_mcp_doc,
        delete_mcp_doc,
        observe_pins,
        accept_pin,
        list_pins,
        report_refused
    ),
    components(schemas(
        JsonRpcError,
        JsonRpcErrorDetail,
        ObserveBody,
        ObservedTool,
        ObserveResponse,
        AcceptBody,
        RefusedBody,
        pins::Pin,
        pins::Changed
    ))
)]
struct McpDoc;

/// A JSON-RPC error answer (what the MCP routes send for a message
/// secondkey refuses before relaying it).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct JsonRpcError {
    /// `"2.0"`.
    jsonrpc: String,
    /// The request's id, or null when it had no usable one.
    #[schema(value_type = Object)]
    id: Value,
    error: JsonRpcErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct JsonRpcErrorDetail {
    /// -32700 (not JSON) or -32600 (not a valid message, or too large).
    code: i64,
    message: String,
}

// The three operations of `/mcp/{server}` are documented on these
// signatures; the handlers are closures over the gateway's state.

/// Relays an MCP client's JSON-RPC message (Streamable HTTP) to the
/// configured server `server`: `tools/call` is decided first (allowed,
/// denied as a tool error, or held for review), everything else passes.
/// The answer is one JSON body or an event stream, as the server gives it.
#[utoipa::path(post, path = "/mcp/{server}", tag = "mcp", operation_id = "post_mcp",
    params(("server" = String, Path, description = "an `[[mcp.servers]]` name with a `url`")),
    request_body(content = Object, description = "one JSON-RPC 2.0 message", content_type = "application/json"),
    responses((status = 200, description = "the server's answer (or secondkey's, for a denied or held call), `application/json` or `text/event-stream`"),
              (status = 202, description = "a notification or response was accepted"),
              (status = 400, body = JsonRpcError, description = "not one valid JSON-RPC message; nothing was forwarded"),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 404, body = secondkey_server::error::ErrorBody, description = "no such server"),
              (status = 413, body = JsonRpcError, description = "larger than `mcp.max_message_bytes`; nothing was forwarded"),
              (status = 502, body = secondkey_server::error::ErrorBody, description = "the server could not be reached or refused the gateway's credentials (`upstream_refused`)"),
              (status = "default", description = "any other status and body the server answered, relayed")))]
#[allow(dead_code)]
fn post_mcp_doc() {}

/// Opens the server-to-client event stream of an MCP session (relayed).
#[utoipa::path(get, path = "/mcp/{server}", tag = "mcp", operation_id = "get_mcp",
    params(("server" = String, Path)),
    responses((status = 200, description = "`text/event-stream` from the server"),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 404, body = secondkey_server::error::ErrorBody, description = "no such server"),
              (status = 502, body = secondkey_server::error::ErrorBody, description = "the server could not be reached or refused the gateway's credentials"),
              (status = "default", description = "any other status and body the server answered (405: it offers no stream), relayed")))]
#[allow(dead_code)]
fn get_mcp_doc() {}

/// Ends an MCP session (relayed).
#[utoipa::path(delete, path = "/mcp/{server}", tag = "mcp", operation_id = "delete_mcp",
    params(("server" = String, Path)),
    responses((status = 200, description = "ended"),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 404, body = secondkey_server::error::ErrorBody, description = "no such server"),
              (status = 502, body = secondkey_server::error::ErrorBody, description = "the server could not be reached or refused the gateway's credentials"),
              (status = "default", description = "any other status and body the server answered (405: it does not end sessions), relayed")))]
#[allow(dead_code)]
fn delete_mcp_doc() {}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ObserveBody {
    server: String,
    tools: Vec<Value>,
}

/// One tool of an observation, and where it stands against its pin.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ObservedTool {
    name: String,
    /// `{"state": "pinned", "new": bool}` or `{"state": "changed", "pinned": fingerprint}`.
    #[schema(value_type = Object)]
    pin: crate::decide::PinState,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ObserveResponse {
    tools: Vec<ObservedTool>,
}

/// A stdio relay (`secondkey mcp stdio`) reports the tools its server
/// listed: each is pinned on first sight, or marked changed when it differs
/// from its pin. Servers this gateway reaches itself over HTTP are pinned
/// only from what the gateway saw: a client cannot pin (or pre-pin) them.
#[utoipa::path(post, path = "/v1/mcp/pins/observe", tag = "mcp", request_body = ObserveBody,
    responses((status = 200, body = ObserveResponse),
              (status = 400, body = secondkey_server::error::ErrorBody),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 403, body = secondkey_server::error::ErrorBody, description = "`pinned_by_gateway`"),
              (status = 413, body = secondkey_server::error::ErrorBody),
              (status = 415, body = secondkey_server::error::ErrorBody),
              (status = 503, body = secondkey_server::error::ErrorBody, description = "the log could not record it: nothing pinned")))]
async fn observe_pins(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    secondkey_server::api::JsonBody(body): secondkey_server::api::JsonBody<ObserveBody>,
) -> Result<Json<ObserveResponse>, ApiError> {
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
    let out = pins::observe(&s.gateway, &inner.pins, &p, &body.server, body.tools).await?;
    Ok(Json(ObserveResponse {
        tools: out
            .into_iter()
            .map(|(name, pin)| ObservedTool { name, pin })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    server: String,
    tool: String,
    fingerprint: String,
}

/// A tool admin (`mcp.tool_admins`) accepts a changed tool definition,
/// named by its fingerprint, as the new pin; calls of it are decided
/// normally again.
#[utoipa::path(post, path = "/v1/mcp/pins/accept", tag = "mcp", request_body = AcceptBody,
    responses((status = 200, body = pins::Pin),
              (status = 400, body = secondkey_server::error::ErrorBody),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 403, body = secondkey_server::error::ErrorBody, description = "`not_tool_admin`: a human in `mcp.tool_admins` is needed"),
              (status = 404, body = secondkey_server::error::ErrorBody),
              (status = 409, body = secondkey_server::error::ErrorBody, description = "`no_such_change`: the fingerprint is not the changed definition waiting"),
              (status = 413, body = secondkey_server::error::ErrorBody),
              (status = 415, body = secondkey_server::error::ErrorBody),
              (status = 503, body = secondkey_server::error::ErrorBody, description = "the log could not record it: nothing accepted")))]
async fn accept_pin(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    secondkey_server::api::JsonBody(body): secondkey_server::api::JsonBody<AcceptBody>,
) -> Result<Json<pins::Pin>, ApiError> {
    let pin = pins::accept(
        &s.gateway,
        &inner.pins,
        &p,
        &inner.config.tool_admins,
        &body.server,
        &body.tool,
        &body.fingerprint,
    )
    .await?;
    let _ = inner;
    Ok(Json(pin))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    server: Option<String>,
}

/// The pinned tools, of one server or of all (at most 1,000).
#[utoipa::path(get, path = "/v1/mcp/pins", tag = "mcp",
    params(("server" = Option<String>, Query, description = "only this server's pins")),
    responses((status = 200, body = [pins::Pin]),
              (status = 400, body = secondkey_server::error::ErrorBody, description = "an unknown query parameter"),
              (status = 401, body = secondkey_server::error::ErrorBody)))]
async fn list_pins(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(_p): Caller,
    secondkey_server::api::Q(q): secondkey_server::api::Q<ListQuery>,
) -> Result<Json<Vec<pins::Pin>>, ApiError> {
    let _ = inner;
    Ok(Json(
        pins::list(&s.gateway, q.server.as_deref().unwrap_or("")).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefusedBody {
    server: String,
    /// The refused message's method.
    method: String,
    /// Why, as a lowercase word (`request_without_id`).
    code: String,
    /// What the client was answered.
    reason: String,
    session: Option<String>,
}

/// A stdio relay (`secondkey mcp stdio`) reports a message it refused
/// before any decision (a request method sent without an id): recorded as
/// an `mcp.refused` log entry of the caller.
#[utoipa::path(post, path = "/v1/mcp/refused", tag = "mcp", request_body = RefusedBody,
    responses((status = 204, description = "recorded"),
              (status = 400, body = secondkey_server::error::ErrorBody),
              (status = 401, body = secondkey_server::error::ErrorBody),
              (status = 413, body = secondkey_server::error::ErrorBody),
              (status = 415, body = secondkey_server::error::ErrorBody),
              (status = 503, body = secondkey_server::error::ErrorBody, description = "the log could not record it")))]
async fn report_refused(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Caller(p): Caller,
    secondkey_server::api::JsonBody(body): secondkey_server::api::JsonBody<RefusedBody>,
) -> Result<StatusCode, ApiError> {
    let _ = inner;
    let r = Refusal {
        method: body.method,
        code: body.code,
        reason: body.reason,
        session: body.session,
    };
    refused::record(&s.gateway, &p, &body.server, r).await?;
    Ok(StatusCode::NO_CONTENT)
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

/// An upstream request that got no usable answer.
struct Failure {
    /// The answer for the client (a 502 naming the server).
    response: Response,
    /// What happened, for the log.
    why: String,
    /// The request may have reached the server, so a call may have run
    /// (everything but a refused connection or credentials).
    maybe_ran: bool,
}

async fn upstream(
    inner: &Inner,
    srv: &ServerConfig,
    method: Method,
    headers: &[(String, HeaderValue)],
    body: Option<Bytes>,
) -> Result<reqwest::Response, Failure> {
    let mut r = match inner.urls.get(&srv.name) {
        Some(url) => inner.http.request(method, url.clone()),
        None => inner
            .http
            .request(method, srv.url.as_deref().unwrap_or_default()),
    };
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
        // The url stays out: it may carry a credential.
        let connect = e.is_connect();
        let e = e.without_url();
        let (code, why) = if connect {
            (
                "upstream_unreachable",
                format!("the MCP server {} cannot be reached: {e}", srv.name),
            )
        } else {
            (
                "upstream_failed",
                format!(
                    "the MCP server {} failed before answering ({e}); whether the request took effect is unknown",
                    srv.name
                ),
            )
        };
        Failure {
            response: gateway_error(StatusCode::BAD_GATEWAY, code, why.clone()),
            why,
            maybe_ran: !connect,
        }
    })?;
    if matches!(resp.status().as_u16(), 401 | 403) {
        let why = format!(
            "the MCP server {} refused secondkey's credentials (mcp.servers.headers)",
            srv.name
        );
        return Err(Failure {
            response: gateway_error(StatusCode::BAD_GATEWAY, "upstream_refused", why.clone()),
            why,
            maybe_ran: false,
        });
    }
    Ok(resp)
}

/// The largest answer secondkey takes from an upstream: a JSON body, or
/// one event of an event stream (results can be larger than requests).
fn answer_limit(cfg: &McpConfig) -> usize {
    cfg.max_result_bytes
}

fn gateway_error(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The upstream's answer as ours: status, the transport headers, the body
/// streamed through.
fn relay_response(resp: Head, body: Body) -> Response {
    let mut out = Response::builder().status(resp.status.as_u16());
    for k in [
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "cache-control",
    ] {
        if let Some(v) = resp.headers.get(k) {
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
    State(s): State<AppState>,
    Authenticated(p, cred): Authenticated,
    Path(server): Path<String>,
    peer: PeerInfo,
    headers: HeaderMap,
) -> Response {
    let srv = match server_of(&inner, &server) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sid = match session_of(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(sid) = &sid {
        if let Err(r) = check_session(&inner, &s.gateway, &p, &server, sid, method.as_str()).await {
            return r;
        }
    }
    let delete = method == Method::DELETE;
    let get = method == Method::GET;
    let fwd_headers = forwarded(&headers);
    let watch = watch_of(
        &inner,
        &s.gateway,
        (&p, &cred),
        &srv,
        &fwd_headers,
        sid.as_deref(),
        peer_ip(peer),
    );
    match upstream(&inner, &srv, method, &fwd_headers, None).await {
        Ok(resp) => {
            if let (true, Some(sid)) = (delete && resp.status().is_success(), &sid) {
                let gone = lock(&inner.sessions)
                    .by_key
                    .remove_entry(&session_key(&server, sid));
                inner.sessions_ended(gone.into_iter().collect(), SessionEnd::Deleted);
            }
            // The session's event stream: its tool definitions may be
            // reused while the gateway relays it.
            let listening = match &sid {
                Some(sid) if get && resp.status().is_success() && is_sse(&resp) => {
                    Listening::open(&inner, &server, sid)
                }
                _ => None,
            };
            relay_stream(&inner, resp, watch, listening)
        }
        Err(f) => f.response,
    }
}

/// The request's `Mcp-Session-Id`: exactly one, of visible ASCII (the
/// spec's alphabet for it). Two, or one the gateway cannot read, are
/// refused: the gateway checks one session and forwards exactly that one,
/// so an upstream reading another value cannot be steered into another
/// principal's session.
fn session_of(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let mut all = headers.get_all("mcp-session-id").iter();
    let Some(v) = all.next() else { return Ok(None) };
    let bad = |why: &str| invalid_request(Value::Null, why);
    if all.next().is_some() {
        return Err(bad("more than one Mcp-Session-Id header; send exactly one"));
    }
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)) => {
            Ok(Some(s.to_string()))
        }
        _ => Err(bad("the Mcp-Session-Id header must be visible ASCII")),
    }
}

/// A `400` carrying JSON-RPC error -32600 (invalid request) for `id`.
fn invalid_request(id: Value, why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(error_response(id, jsonrpc::INVALID_REQUEST, why)),
    )
        .into_response()
}

/// The routing headers a client mirrors from its message (`Mcp-Method`,
/// `Mcp-Name`: SEP-2243) must say what the message says: an upstream or a
/// proxy routing by them must not see another call than the one decided.
fn routing_mismatch(headers: &HeaderMap, msg: &Message) -> Option<String> {
    let one = |name: &str| {
        let mut all = headers.get_all(name).iter();
        let first = all.next()?;
        Some(if all.next().is_some() {
            Err(())
        } else {
            first.to_str().map_err(|_| ())
        })
    };
    if let Some(m) = one("mcp-method") {
        if m != Ok(msg.method().unwrap_or_default()) {
            return Some("the Mcp-Method header does not name the message's method".into());
        }
    }
    if let Some(n) = one("mcp-name") {
        let key = msg.method().and_then(jsonrpc::target_key).unwrap_or("name");
        let named = msg
            .params()
            .and_then(|p| p.get(key))
            .and_then(Value::as_str);
        if named.is_none() || n.ok() != named {
            return Some(format!(
                "the Mcp-Name header does not name the message's `params.{key}`"
            ));
        }
    }
    None
}

/// The context of the event streams answering one request of `who`.
fn watch_of(
    inner: &Arc<Inner>,
    gateway: &Arc<Gateway>,
    (who, credential): (&Principal, &Credential),
    srv: &Arc<ServerConfig>,
    headers: &[(String, HeaderValue)],
    sid: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> Option<ListWatch> {
    Some(ListWatch {
        inner: inner.clone(),
        gateway: gateway.clone(),
        who: who.clone(),
        credential: credential.clone(),
        srv: srv.clone(),
        headers: headers.to_vec(),
        session: sid.map(str::to_string),
        peer,
    })
}

/// The upstream's answer streamed through; an event stream through a
/// [`Tap`] (notifications bounded, unreadable events dropped, a changed
/// tool list noted for the session).
fn relay_stream(
    inner: &Inner,
    resp: reqwest::Response,
    watch: Option<ListWatch>,
    listening: Option<Listening>,
) -> Response {
    let sse = is_sse(&resp);
    let max = answer_limit(&inner.config);
    if !sse && resp.content_length().is_some_and(|n| n > max as u64) {
        let why = format!(
            "the MCP server answered with {} bytes, more than secondkey relays (mcp.max_result_bytes = {max})",
            resp.content_length().unwrap_or_default()
        );
        tracing::warn!("{why}");
        return gateway_error(StatusCode::BAD_GATEWAY, "upstream_too_large", why);
    }
    let (head, stream) = take_stream(resp);
    if sse {
        let mut tap = Tap::new(stream, max, None).watching(watch);
        tap._listening = listening;
        relay_response(head, Body::from_stream(tap))
    } else {
        relay_response(head, Body::from_stream(capped(stream, max)))
    }
}

/// A body streamed through that breaks off (the client sees a cut
/// answer) once it exceeds `max` bytes: nothing is buffered, and nothing
/// larger than `mcp.max_result_bytes` reaches a client whole.
fn capped<S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin>(
    s: S,
    max: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let mut seen = 0usize;
    s.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > max {
            tracing::warn!(
                "cut off an answer of the MCP server larger than mcp.max_result_bytes ({max})"
            );
            return Err(std::io::Error::other(format!(
                "the answer exceeds mcp.max_result_bytes ({max})"
            )));
        }
        Ok(chunk)
    })
}

fn take_stream(
    mut resp: reqwest::Response,
) -> (Head, impl Stream<Item = Result<Bytes, std::io::Error>>) {
    // reqwest hands out the body only by consuming the response; keep the
    // head for the headers.
    let head = Head {
        status: resp.status(),
        headers: std::mem::take(resp.headers_mut()),
    };
    let s = resp
        .bytes_stream()
        .map(|r| r.map_err(std::io::Error::other));
    (head, s)
}

/// The status and headers of an upstream's answer whose body was taken
/// ([`take_stream`]).
struct Head {
    status: StatusCode,
    headers: axum::http::HeaderMap,
}

/// A message refused by a limit of `[mcp]`: `status` with a JSON-RPC
/// error ([`jsonrpc::LIMIT`]) naming it.
fn over_limit(status: StatusCode, id: Option<&Value>, why: &str) -> Response {
    (
        status,
        Json(error_response(
            id.cloned().unwrap_or(Value::Null),
            jsonrpc::LIMIT,
            why,
        )),
    )
        .into_response()
}

/// `413` with a JSON-RPC error (no id: the message was not read).
fn too_large(limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(error_response(
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            &format!(
                "the message is larger than {limit} bytes, the most secondkey relays (mcp.max_message_bytes); nothing was forwarded"
            ),
        )),
    )
        .into_response()
}

/// The request body, of at most `limit` bytes (`mcp.max_message_bytes`,
/// the limit of stdio mode too, whatever the REST API's). A declared
/// length over it is refused before any of the body is read, so a client
/// waiting for `100 Continue` never sends it.
async fn read_message(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                Json(error_response(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    &format!("the message could not be read: {e}; nothing was forwarded"),
                )),
            )
                .into_response()
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The connection's peer, as the gateway's listener observed it.
type PeerInfo = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

fn peer_ip(peer: PeerInfo) -> Option<std::net::IpAddr> {
    peer.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip())
}

/// A message of a client, counted as its session's use while it is in
/// progress ([`InUse`]).
async fn post_mcp(
    inner: Arc<Inner>,
    s: State<AppState>,
    caller: Authenticated,
    Path(server): Path<String>,
    peer: PeerInfo,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let in_use = match session_of(&headers) {
        Ok(Some(sid)) => InUse::enter(
            &inner,
            &server,
            &sid,
            &caller.0,
            headers.get("mcp-protocol-version"),
        ),
        _ => None,
    };
    let mut in_flight = None;
    let resp = post_message(
        inner,
        s,
        caller,
        Path(server),
        peer,
        headers,
        body,
        &mut in_flight,
    )
    .await;
    match (in_use, in_flight) {
        (None, None) => resp,
        guards => until_sent(guards, resp),
    }
}

/// Answers one message; a request of a session leaves its [`InFlight`]
/// in `in_flight`, for the caller to hold until the answer is sent.
#[allow(clippy::too_many_arguments)]
async fn post_message(
    inner: Arc<Inner>,
    State(s): State<AppState>,
    Authenticated(p, cred): Authenticated,
    Path(server): Path<String>,
    peer: PeerInfo,
    headers: HeaderMap,
    body: Body,
    in_flight: &mut Option<InFlight>,
) -> Response {
    let srv = match server_of(&inner, &server) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match read_message(&headers, body, inner.config.max_message_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg = match Message::parse(&body, inner.config.max_message_bytes) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(e.response())).into_response(),
    };
    if let Some(why) = routing_mismatch(&headers, &msg) {
        return invalid_request(msg.id().cloned().unwrap_or(Value::Null), &why);
    }
    let fwd_headers = forwarded(&headers);
    let session = match session_of(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let method = msg.method().unwrap_or("(response)");
    if let Some(sid) = &session {
        if let Err(r) = check_session(&inner, &s.gateway, &p, &server, sid, method).await {
            return r;
        }
    }
    // A request counts against its session while it is in progress here
    // (notifications and answers pass at once, so that a full session can
    // still cancel and answer).
    let hold = match msg.kind {
        Kind::Request => match inner
            .quota(&server, session.as_deref(), &p)
            .take(body.len())
        {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(principal = %p.id, server = %server, method, "refused an MCP request: {e}");
                return over_limit(StatusCode::TOO_MANY_REQUESTS, msg.id(), &e.to_string());
            }
        },
        _ => None,
    };
    if let (Kind::Request, Some(sid), Some(id)) = (msg.kind, &session, msg.id()) {
        // Keyed loosely: 91 and "91" are one id to some servers.
        let key = format!("{}|{server}|{sid}|{}", p.id, jsonrpc::loose_id_key(id));
        match InFlight::enter(&inner, key) {
            Some(f) => *in_flight = Some(f),
            None => {
                return Json(error_response(
                    id.clone(),
                    jsonrpc::INVALID_REQUEST,
                    "a request with this id (or the same id as a number or a string) is still in progress in this session; ids must be unique within a session. This one was not forwarded",
                ))
                .into_response()
            }
        }
    }
    let watch = watch_of(
        &inner,
        &s.gateway,
        (&p, &cred),
        &srv,
        &fwd_headers,
        session.as_deref(),
        peer_ip(peer),
    );
    let call_key = |id: &Value| {
        format!(
            "{}|{}|{}|{}",
            p.id,
            server,
            session.as_deref().unwrap_or(""),
            id_key(id)
        )
    };
    let class = match (msg.kind, msg.method()) {
        (Kind::Request, Some(m)) => Some(crate::methods::client_request(&server, m, msg.params())),
        _ => None,
    };
    if let Some(ClientRequest::Task(t)) = &class {
        let call = TaskCall {
            inner: &inner,
            gateway: &s.gateway,
            who: &p,
            srv: &srv,
            session: session.as_deref(),
            headers: &fwd_headers,
        };
        return call.relay(&msg, t, (body, hold), watch).await;
    }
    match (msg.kind, msg.method()) {
        (Kind::Request, Some(_))
            if matches!(
                class,
                Some(ClientRequest::Acts(_)) | Some(ClientRequest::ToolsCall)
            ) =>
        {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            let act = match class {
                Some(ClientRequest::Acts(a)) => Some(a),
                _ => None,
            };
            let tool = match (&act, jsonrpc::tool_name(&msg)) {
                (Some(_), _) => String::new(),
                (None, Ok(t)) => t,
                (None, Err(e)) => return Json(e.response()).into_response(),
            };
            let key = call_key(&id);
            let cancel = {
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
                d.insert(key.clone(), tx.clone());
                tx
            };
            let call = CallCtx {
                _hold: hold,
                inner: inner.clone(),
                gateway: s.gateway.clone(),
                who: p,
                credential: cred,
                srv,
                headers: fwd_headers,
                session,
                peer: peer_ip(peer),
                key,
                cancel,
                watch,
            };
            match act {
                Some(a) => call.act(msg, a).await,
                None => call.run(msg, tool).await,
            }
        }
        (Kind::Request, Some("tools/list")) => {
            let epoch = session
                .as_deref()
                .and_then(|sid| inner.with_session(&server, sid, |i| i.tools.epoch));
            let resp = match upstream(&inner, &srv, Method::POST, &fwd_headers, Some(body)).await {
                Ok(r) => r,
                Err(f) => return f.response,
            };
            let sse = is_sse(&resp);
            let (head, stream) = take_stream(resp);
            let bytes = match collect(stream, answer_limit(&inner.config)).await {
                Ok(b) => b,
                Err(e) => return gateway_error(StatusCode::BAD_GATEWAY, "upstream_failed", e),
            };
            if let Some(r) = final_response(&bytes, sse, msg.id()) {
                if let Some(result) = r.get("result") {
                    let names = observe(&s.gateway, &inner.pins, &p, &srv, result).await;
                    if let Some(sid) = &session {
                        // The client may now hold another list than the
                        // one read before: only this one is kept.
                        let defs = listed_defs(result);
                        inner.with_session(&server, sid, |i| {
                            i.listed.extend(names);
                            let unchanged = epoch == Some(i.tools.epoch);
                            i.tools.forget();
                            if unchanged {
                                i.tools.learn(i.tools.epoch, defs);
                            }
                        });
                    }
                }
            }
            if sse {
                let once =
                    futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(bytes))]);
                let tap = Tap::new(once, answer_limit(&inner.config), None).watching(watch);
                return relay_response(head, Body::from_stream(tap));
            }
            relay_response(head, Body::from(bytes))
        }
        (Kind::Notification, Some("notifications/cancelled")) => {
            if let Some(target) = msg.params().and_then(|x| x.get("requestId")) {
                if let Some(tx) = lock(&inner.deciding).get(&call_key(target)) {
                    // The upstream never saw this call: withdraw it here and
                    // tell the upstream nothing.
                    tx.send_replace(true);
                    return StatusCode::ACCEPTED.into_response();
                }
            }
            pass(&inner, &srv, &fwd_headers, body, watch).await
        }
        (Kind::Notification, Some(method)) if !method.starts_with("notifications/") => {
            // A request method without an id (`tools/call` sent as a
            // notification): a lenient server would run it, and nothing
            // could be answered or recorded. Refused, never forwarded.
            let reason = refused::idless_message(method);
            let r = Refusal {
                method: method.to_string(),
                code: "request_without_id".into(),
                reason: reason.clone(),
                session: session.clone(),
            };
            if let Err(e) = refused::record(&s.gateway, &p, &server, r).await {
                tracing::warn!(error = %e, "could not record a refused MCP message");
            }
            (
                StatusCode::BAD_REQUEST,
                Json(error_response(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    &reason,
                )),
            )
                .into_response()
        }
        (Kind::Request, Some("initialize")) => {
            let slot = match inner.reserve_session(&p) {
                Ok(slot) => slot,
                Err(full) => {
                    let why = match full {
                        Full::Gateway => format!(
                            "secondkey already tracks {} MCP sessions, the most it keeps (mcp.max_sessions), and none has been idle for mcp.session_idle_seconds; end unused sessions (DELETE) or retry later. Nothing was forwarded",
                            inner.config.max_sessions
                        ),
                        Full::Principal => format!(
                            "{} already has {} MCP sessions open, the most one principal may (mcp.max_sessions_per_principal), and none has been idle for mcp.session_idle_seconds; end unused sessions (DELETE) or retry later. Nothing was forwarded",
                            p.id, inner.config.max_sessions_per_principal
                        ),
                    };
                    tracing::warn!(principal = %p.id, server = %server, "refused a new MCP session: {why}");
                    return over_limit(StatusCode::SERVICE_UNAVAILABLE, msg.id(), &why);
                }
            };
            let info = msg.params().and_then(|p| p.get("clientInfo")).cloned();
            let resp = pass(&inner, &srv, &fwd_headers, body, None).await;
            if let Some(sid) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                // Bound to the caller before the client can use it.
                inner.open_session(slot, &server, sid, &p, info);
            }
            drop(hold);
            resp
        }
        (Kind::Response, _) => {
            if let (Some(w), Some(id)) = (&watch, msg.id()) {
                let asked = lock(&inner.server_asked).remove(&w.asked_key(id));
                if let Some(Asked { run, _hold }) = asked {
                    let outcome = outcome_of(&Value::Object(msg.value.clone()));
                    tokio::spawn(async move { run.icp.finished(&run.fwd, outcome).await });
                }
            }
            pass(&inner, &srv, &fwd_headers, body, watch).await
        }
        _ => pass(&inner, &srv, &fwd_headers, body, watch).await,
    }
}

/// A run awaiting the upstream's answer (to the call, or to its task's
/// first fetch): dropped before it is settled (its client gone, it ran out
/// of time), it is recorded as unknown, `.1` saying why.
struct Unsettled(Option<TaskRun>, &'static str);

impl Unsettled {
    /// Records `outcome` as the run's, off the answer's path.
    fn settle(mut self, outcome: Outcome) {
        if let Some(run) = self.0.take() {
            tokio::spawn(async move { run.icp.finished(&run.fwd, outcome).await });
        }
    }

    /// The run, for whatever settles it now.
    fn take(mut self) -> TaskRun {
        self.0.take().expect("a run until settled")
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        record_unfetched(self.0.take().into_iter().collect(), self.1);
    }
}

/// Why a decided `tools/call` is recorded as unknown when its client went
/// away before the answer and the upstream did not answer in time.
const CALL_GAVE_UP: &str = "the client went away during the call, and the upstream did not answer within mcp.session_idle_seconds after";

/// Relays the first `tasks/result` of a task that `run`, a decided call,
/// created, recording its answer as that call's outcome. Run under
/// [`Detachable`], so that it goes on if the client goes away before the
/// answer: a JSON answer is then still read and recorded, an event stream
/// not relayed is recorded as unknown (its [`Tap`] is dropped), and an
/// upstream that does not answer within `mcp.session_idle_seconds` of the
/// client leaving has the run recorded as unknown ([`Unsettled`]).
async fn first_result(
    inner: Arc<Inner>,
    srv: Arc<ServerConfig>,
    headers: Vec<(String, HeaderValue)>,
    run: TaskRun,
    (id, body): (Value, Bytes),
    watch: Option<ListWatch>,
    // The request's share of its session's quota, until it is answered.
    _hold: Option<Hold>,
) -> Response {
    let mut run = Unsettled(Some(run), tasks::GAVE_UP);
    let resp = match upstream(&inner, &srv, Method::POST, &headers, Some(body)).await {
        Ok(r) => r,
        Err(f) => {
            run.settle(Outcome::Lost(f.why.clone()));
            return f.response;
        }
    };
    let max = answer_limit(&inner.config);
    let sse = is_sse(&resp);
    let (head, stream) = take_stream(resp);
    if sse {
        let call = run.0.take().map(|TaskRun { icp, fwd }| (id, icp, fwd));
        let tap = Tap::new(stream, max, call).watching(watch);
        return relay_response(head, Body::from_stream(tap));
    }
    let why = match collect(stream, max).await {
        Ok(bytes) => {
            let outcome = match final_response(&bytes, false, Some(&id)) {
                Some(r) => outcome_of(&r),
                None => Outcome::Lost(format!(
                    "the upstream answered {} without a result",
                    head.status
                )),
            };
            run.settle(outcome);
            return relay_response(head, Body::from(bytes));
        }
        Err(e) => e,
    };
    run.settle(Outcome::Lost(why.clone()));
    gateway_error(StatusCode::BAD_GATEWAY, "upstream_failed", why)
}

/// A `tasks/*` request of `who` in session `session`: it reaches only the
/// tasks the upstream created for that caller's decided calls there.
struct TaskCall<'a> {
    inner: &'a Arc<Inner>,
    gateway: &'a Arc<Gateway>,
    who: &'a Principal,
    srv: &'a Arc<ServerConfig>,
    session: Option<&'a str>,
    headers: &'a [(String, HeaderValue)],
}

impl TaskCall<'_> {
    /// Refuses a request for a task that is not the caller's (or that
    /// names none) with -32602, as the spec answers an unknown task,
    /// recording the attempt; relays the rest, a `tasks/list` answer with
    /// only the caller's tasks in it.
    async fn relay(
        &self,
        msg: &Message,
        t: &TaskRequest,
        (body, hold): (Bytes, Option<Hold>),
        watch: Option<ListWatch>,
    ) -> Response {
        let refusal = match t {
            TaskRequest::BadId(why) => Some(("invalid_task_id", why.clone())),
            TaskRequest::One(task) => {
                let own = self
                    .inner
                    .with_tasks(&self.srv.name, self.session, self.who, |o| o.contains(task));
                (own != Some(true)).then(|| ("unknown_task", tasks::unknown(task)))
            }
            TaskRequest::List => None,
        };
        let id = msg.id().cloned().unwrap_or(Value::Null);
        if let Some((code, why)) = refusal {
            let r = Refusal {
                method: msg.method().unwrap_or_default().to_string(),
                code: code.to_string(),
                reason: why.clone(),
                session: self.session.map(str::to_string),
            };
            if let Err(e) = refused::record(self.gateway, self.who, &self.srv.name, r).await {
                tracing::warn!(error = %e, "could not record a refused MCP message");
            }
            return Json(error_response(id, jsonrpc::INVALID_PARAMS, &why)).into_response();
        }
        if let (TaskRequest::One(task), Some("tasks/result")) = (t, msg.method()) {
            let run = self
                .inner
                .with_tasks(&self.srv.name, self.session, self.who, |o| {
                    o.take_result(task)
                })
                .flatten();
            if let Some(run) = run {
                // Taken out of the session: from here on, only this fetch
                // records the run's outcome, whatever its client does.
                let fetch = first_result(
                    self.inner.clone(),
                    self.srv.clone(),
                    self.headers.to_vec(),
                    run,
                    (id, body),
                    watch,
                    hold,
                );
                return Detachable::bounded(fetch, self.inner.config.session_idle)
                    .await
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            }
        }
        if *t != TaskRequest::List {
            return pass(self.inner, self.srv, self.headers, body, watch).await;
        }
        let resp =
            match upstream(self.inner, self.srv, Method::POST, self.headers, Some(body)).await {
                Ok(r) => r,
                Err(f) => return f.response,
            };
        if !resp.status().is_success() {
            return relay_stream(self.inner, resp, watch, None);
        }
        let sse = is_sse(&resp);
        let (head, stream) = take_stream(resp);
        let max = answer_limit(&self.inner.config);
        let bytes = match collect(stream, max).await {
            Ok(b) => b,
            Err(e) => return gateway_error(StatusCode::BAD_GATEWAY, "upstream_failed", e),
        };
        let own = self
            .inner
            .with_tasks(&self.srv.name, self.session, self.who, |o| o.ids())
            .unwrap_or_default();
        let filter = |v: &mut Value| tasks::filter_list(v, &own);
        if sse {
            let bytes = rewrite_final_event(&bytes, Some(&id), filter);
            let once = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(bytes))]);
            let tap = Tap::new(once, max, None).watching(watch);
            return relay_response(head, Body::from_stream(tap));
        }
        match final_response(&bytes, false, Some(&id)) {
            Some(mut v) => {
                filter(&mut v);
                relay_response(head, Body::from(v.to_string()))
            }
            None => gateway_error(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                format!(
                    "the MCP server {} did not answer tasks/list with a JSON-RPC response",
                    self.srv.name
                ),
            ),
        }
    }
}

/// An upstream event-stream body with the final response to `id` passed
/// through `f` (and written again as one event); its other events as they
/// were.
fn rewrite_final_event(bytes: &[u8], id: Option<&Value>, f: impl Fn(&mut Value)) -> Vec<u8> {
    let want = id.map(id_key);
    let mut split = SseSplitter::new(usize::MAX);
    let mut events = Vec::new();
    split.push(bytes, &mut events);
    split.push(b"\n\n", &mut events);
    let mut out = Vec::with_capacity(bytes.len());
    for event in events {
        let parsed = event_data(&event).and_then(|d| serde_json::from_slice::<Value>(&d).ok());
        match parsed {
            Some(mut v) if is_final_for(&v, want.as_deref()) => {
                f(&mut v);
                out.extend_from_slice(format!("event: message\ndata: {v}\n\n").as_bytes());
            }
            _ => out.extend_from_slice(&event),
        }
    }
    out
}

async fn pass(
    inner: &Inner,
    srv: &ServerConfig,
    headers: &[(String, HeaderValue)],
    body: Bytes,
    watch: Option<ListWatch>,
) -> Response {
    match upstream(inner, srv, Method::POST, headers, Some(body)).await {
        Ok(resp) => relay_stream(inner, resp, watch, None),
        Err(f) => f.response,
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
            return Err(format!(
                "the upstream answer exceeds {max} bytes, the most secondkey takes (mcp.max_result_bytes)"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Cuts an upstream event stream into events as its bytes arrive, in one
/// pass: line ends normalized to `\n` (CRLF and CR are line ends too), an
/// event ends at a blank line. An event longer than `max` is dropped whole
/// (the stream goes on), so a server cannot grow the buffer without end.
struct SseSplitter {
    max: usize,
    cur: Vec<u8>,
    /// Bytes in the current line so far (0: a line end would be a blank line).
    line: usize,
    /// The last byte seen was `\r` (a following `\n` belongs to it).
    cr: bool,
    /// The event being read is over `max`: skip to its end.
    skipping: bool,
    /// Events dropped for their size.
    oversized: u64,
}

impl SseSplitter {
    fn new(max: usize) -> SseSplitter {
        SseSplitter {
            // Room for the field names around the data.
            max: max.saturating_add(1024),
            cur: Vec::new(),
            line: 0,
            cr: false,
            skipping: false,
            oversized: 0,
        }
    }

    /// Adds `chunk`; appends each event it completes (blank line included)
    /// to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut i = 0;
        while i < chunk.len() {
            if self.skipping && !self.cr {
                // Nothing of an oversized event is kept: jump to its next
                // line end (an event without end costs no memory).
                match memchr::memchr2(b'\n', b'\r', &chunk[i..]) {
                    None => {
                        self.line = self.line.saturating_add(chunk.len() - i);
                        return;
                    }
                    Some(k) => {
                        self.line = self.line.saturating_add(k);
                        i += k;
                    }
                }
            }
            let b = chunk[i];
            i += 1;
            let b = match b {
                b'\n' if self.cr => {
                    self.cr = false;
                    continue;
                }
                b'\r' => {
                    self.cr = true;
                    b'\n'
                }
                b => {
                    self.cr = false;
                    b
                }
            };
            if b == b'\n' {
                let blank = self.line == 0;
                self.line = 0;
                if blank {
                    if self.skipping {
                        self.skipping = false;
                    } else if !self.cur.is_empty() {
                        self.cur.push(b'\n');
                        out.push(std::mem::take(&mut self.cur));
                    }
                } else if !self.skipping {
                    self.cur.push(b'\n');
                }
                continue;
            }
            self.line = self.line.saturating_add(1);
            if self.skipping {
                continue;
            }
            self.cur.push(b);
            if self.cur.len() > self.max {
                self.cur = Vec::new();
                self.skipping = true;
                self.oversized += 1;
            }
        }
    }
}

/// The `data` of one event (its `data:` lines joined by `\n`); `None` for
/// an event without data or with only whitespace in it (a comment, a
/// `retry:`, an event id priming a reconnection).
fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|b| *b == b'\n') {
        let Some(d) = line.strip_prefix(b"data:") else {
            continue;
        };
        let d = d.strip_prefix(b" ").unwrap_or(d);
        match &mut data {
            None => data = Some(d.to_vec()),
            Some(v) => {
                v.push(b'\n');
                v.extend_from_slice(d);
            }
        }
    }
    data.filter(|d| !d.iter().all(u8::is_ascii_whitespace))
}

/// The data of the events in a whole upstream event-stream body.
fn sse_payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut split = SseSplitter::new(usize::MAX);
    let mut events = Vec::new();
    split.push(bytes, &mut events);
    split.push(b"\n\n", &mut events);
    events.iter().filter_map(|e| event_data(e)).collect()
}

fn is_final_for(v: &Value, want: Option<&str>) -> bool {
    v.get("id").map(id_key).as_deref() == want
        && (v.get("result").is_some() || v.get("error").is_some())
}

/// The JSON-RPC response to `id` in an upstream body (JSON or SSE).
fn final_response(bytes: &[u8], sse: bool, id: Option<&Value>) -> Option<Value> {
    let want = id.map(id_key);
    // Read strictly, as every message is: a repeated key or trailing bytes
    // make an answer that two readers could read two ways.
    let strict = |b: &[u8]| secondkey_core::action::parse_strict(b).ok();
    if sse {
        sse_payloads(bytes)
            .into_iter()
            .filter_map(|d| strict(&d))
            .find(|v| is_final_for(v, want.as_deref()))
    } else {
        strict(bytes).filter(|v| is_final_for(v, want.as_deref()))
    }
}

/// The definitions (pinned part) in a `tools/list` result, by name.
fn listed_defs(result: &Value) -> Vec<(String, Value)> {
    result
        .get("tools")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|t| {
                    let name = t.get("name").and_then(Value::as_str)?;
                    Some((name.to_string(), tools::pinned_part(t)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Pins (or checks against their pins) the tools of a client's
/// `tools/list` result; the names it listed.
async fn observe(
    gw: &Arc<Gateway>,
    cache: &Arc<PinCache>,
    who: &Principal,
    srv: &ServerConfig,
    result: &Value,
) -> Vec<String> {
    let Some(list) = result.get("tools").and_then(Value::as_array) else {
        return vec![];
    };
    let defs: Vec<Value> = list
        .iter()
        .filter(|t| t.get("name").and_then(Value::as_str).is_some())
        .map(tools::pinned_part)
        .collect();
    match pins::observe(gw, cache, who, &srv.name, defs).await {
        Ok(states) => states.into_iter().map(|(name, _)| name).collect(),
        Err(e) => {
            tracing::warn!(server = %srv.name, error = %e, "cannot pin the listed tools");
            vec![]
        }
    }
}

/// The interceptor deciding for `who` on server `srv`, in this process.
fn in_process(
    inner: &Inner,
    srv: &Arc<ServerConfig>,
    gateway: &Arc<Gateway>,
    (who, credential): (&Principal, &Credential),
    peer: Option<std::net::IpAddr>,
) -> Interceptor<InProcess> {
    Interceptor::new(
        inner.config.clone(),
        srv.clone(),
        Arc::new(InProcess {
            gateway: gateway.clone(),
            who: who.clone(),
            credential: credential.clone(),
            admins: inner.config.tool_admins.clone(),
            peer,
            pins: inner.pins.clone(),
        }),
    )
}

/// Who an upstream event stream is relayed to, and in which session: what
/// its [`Tap`] needs to decide the server's requests to the client for
/// that principal, and to clear what the session's client listed when the
/// server says its tool list changed.
#[derive(Clone)]
struct ListWatch {
    inner: Arc<Inner>,
    gateway: Arc<Gateway>,
    who: Principal,
    credential: Credential,
    srv: Arc<ServerConfig>,
    /// The request's transport headers (session, protocol version).
    headers: Vec<(String, HeaderValue)>,
    session: Option<String>,
    peer: Option<std::net::IpAddr>,
}

impl ListWatch {
    fn changed(&self) {
        if let Some(sid) = &self.session {
            self.inner.with_session(&self.srv.name, sid, |i| {
                i.listed.clear();
                i.tools.forget();
            });
        }
    }

    fn interceptor(&self) -> Interceptor<InProcess> {
        in_process(
            &self.inner,
            &self.srv,
            &self.gateway,
            (&self.who, &self.credential),
            self.peer,
        )
    }

    /// Whether `m` tells the state of a task that is not this caller's
    /// ([`tasks::foreign_status`]).
    fn foreign_status(&self, m: &Message) -> bool {
        m.method() == Some("notifications/tasks/status")
            && self
                .inner
                .with_tasks(&self.srv.name, self.session.as_deref(), &self.who, |own| {
                    tasks::foreign_status(m.method(), m.params(), own)
                })
                .unwrap_or(true)
    }

    fn asked_key(&self, id: &Value) -> AskedKey {
        AskedKey {
            principal: self.who.id.to_string(),
            server: self.srv.name.clone(),
            session: self.session.clone().unwrap_or_default(),
            id: id_key(id),
        }
    }

    /// Decides a request of the server before the client sees it: `Some`
    /// (the event, to relay) if allowed; else the server is answered with
    /// the refusal and the client sees nothing.
    async fn decide_server_request(
        self,
        act: crate::methods::Act,
        id: Value,
        event: Bytes,
        mut hold: Hold,
    ) -> Option<Bytes> {
        let icp = self.interceptor();
        match icp.act(&act, self.session.as_deref()).await {
            Ok(fwd) => {
                hold.sent();
                let run = TaskRun { icp, fwd };
                let mut asked = lock(&self.inner.server_asked);
                if asked.len() >= MAX_SERVER_ASKED {
                    let forgotten = asked.drain().map(|(_, a)| a.run).collect();
                    record_unfetched(forgotten, ASKED_FORGOTTEN);
                }
                asked.insert(self.asked_key(&id), Asked { run, _hold: hold });
                Some(event)
            }
            Err(text) => {
                self.refuse(id, jsonrpc::DENIED, &text).await;
                None
            }
        }
    }

    /// Answers a request of the server with a refusal (the client sees
    /// nothing of it).
    async fn refuse(&self, id: Value, code: i64, text: &str) {
        let refusal = error_response(id, code, text).to_string();
        let headers: Vec<(String, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("mcp-param-") && k != "mcp-name" && k != "mcp-method")
            .cloned()
            .collect();
        if let Err(f) = upstream(
            &self.inner,
            &self.srv,
            Method::POST,
            &headers,
            Some(Bytes::from(refusal)),
        )
        .await
        {
            tracing::warn!(error = %f.why, "could not tell the MCP server its request was refused");
        }
    }
}

/// Why the server's current definition of a tool could not be read.
enum Unlisted {
    /// The answer for the client as it is (the upstream's own refusal, such
    /// as 404 for a session it no longer knows, or a 502).
    Answer(Response),
    /// A tool error to answer the call with.
    Error(String),
}

/// One `tools/call` through the HTTP endpoint.
struct CallCtx {
    /// The call's share of its session's quota, until it is answered.
    _hold: Option<Hold>,
    inner: Arc<Inner>,
    gateway: Arc<Gateway>,
    who: Principal,
    credential: Credential,
    srv: Arc<ServerConfig>,
    headers: Vec<(String, HeaderValue)>,
    session: Option<String>,
    peer: Option<std::net::IpAddr>,
    key: String,
    /// The call's cancel switch (also in `Inner::deciding`, under `key`).
    cancel: watch::Sender<bool>,
    /// The session's list watch, for the call's event stream.
    watch: Option<ListWatch>,
}

impl Drop for CallCtx {
    fn drop(&mut self) {
        lock(&self.inner.deciding).remove(&self.key);
    }
}

/// Flips a call's cancel switch when dropped before it is disarmed: the
/// client went away, which withdraws a held call as `notifications/cancelled`
/// would. (The MCP transport does not make a disconnection a cancellation,
/// but these answers cannot be resumed: nobody could receive the result.)
struct CancelOnDrop(Option<watch::Sender<bool>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.send_replace(true);
        }
    }
}

/// A future that finishes even when whoever awaits it goes away. Awaited,
/// it runs on the awaiting task; dropped before it is done, it is spawned
/// to run on its own (its output is then discarded) for at most its
/// limit, after which it is dropped. A panic inside it comes out as
/// `Err`, as a spawned task's would, and leaves nothing behind to spawn.
struct Detachable<F: Future + Send + 'static>(Option<StdPin<Box<F>>>, Duration);

impl<F: Future + Send + 'static> Detachable<F> {
    /// Runs on its own for at most `limit` once dropped.
    fn bounded(f: F, limit: Duration) -> Self {
        Self(Some(Box::pin(f)), limit)
    }
}

impl<F: Future + Send + 'static> Future for Detachable<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(f) = self.0.as_mut() else {
            // Polled again after it finished: never ready again.
            return Poll::Pending;
        };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx)));
        let out = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(out)) => Ok(out),
            Err(panic) => Err(panic),
        };
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<F: Future + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let limit = self.1;
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = tokio::time::timeout(limit, f).await;
                    });
                }
                Err(_) => tracing::warn!("a call was dropped outside the runtime, unfinished"),
            }
        }
    }
}

impl CallCtx {
    fn interceptor(&self) -> Interceptor<InProcess> {
        in_process(
            &self.inner,
            &self.srv,
            &self.gateway,
            (&self.who, &self.credential),
            self.peer,
        )
    }

    /// The tool's definition as the upstream gives it in this call's
    /// session, and its standing against its pin (checked now). The
    /// definition is one read earlier in this session if it is still kept
    /// ([`ToolsSeen`]: nothing said the list changed, the session's event
    /// stream stayed open); else the upstream is listed now (all pages,
    /// until the tool is found). Nothing read in another session, before a
    /// restart of the server or a change of its list, is trusted.
    async fn current(
        &self,
        call_params: &Map<String, Value>,
        tool: &str,
    ) -> Result<Option<(Value, PinState)>, Unlisted> {
        let seen = self.session.as_deref().and_then(|sid| {
            self.inner.with_session(&self.srv.name, sid, |i| {
                (i.tools.defs.get(tool).cloned(), i.tools.epoch)
            })
        });
        if let Some((Some(def), _)) = seen {
            return self.standing(def).await.map(Some);
        }
        let epoch = seen.map(|(_, e)| e);
        let mut headers: Vec<(String, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("mcp-param-") && k != "mcp-name" && k != "mcp-method")
            .cloned()
            .collect();
        headers.push(("mcp-method".into(), HeaderValue::from_static("tools/list")));
        let mut cursor: Option<Value> = None;
        for _ in 0..20 {
            let params = jsonrpc::own_list_params(call_params, cursor.take());
            // Unique in the upstream session (calls decided at once each
            // list the tools), and not one a client would pick.
            let own_id = json!(own_list_id());
            let req =
                json!({"jsonrpc": "2.0", "id": own_id, "method": "tools/list", "params": params});
            let resp = upstream(
                &self.inner,
                &self.srv,
                Method::POST,
                &headers,
                Some(Bytes::from(req.to_string())),
            )
            .await
            .map_err(|f| Unlisted::Answer(f.response))?;
            if !resp.status().is_success() {
                // Relayed as the server gave it: a client whose session the
                // server no longer knows (it restarted) opens a new one.
                if let Some(sid) = &self.session {
                    self.inner.forget_tools(&self.srv.name, sid);
                }
                return Err(Unlisted::Answer(relay_stream(
                    &self.inner,
                    resp,
                    None,
                    None,
                )));
            }
            let sse = is_sse(&resp);
            let (_, stream) = take_stream(resp);
            let bytes = collect(stream, answer_limit(&self.inner.config))
                .await
                .map_err(Unlisted::Error)?;
            let answer = final_response(&bytes, sse, Some(&own_id));
            let Some(result) = answer.as_ref().and_then(|r| r.get("result")) else {
                let why = answer
                    .as_ref()
                    .and_then(|r| r["error"]["message"].as_str())
                    .unwrap_or("no usable answer")
                    .chars()
                    .take(200)
                    .collect::<String>();
                return Err(Unlisted::Error(format!(
                    "the server did not list its tools: {why}"
                )));
            };
            let defs = listed_defs(result);
            let found = defs.iter().find(|(n, _)| n == tool).map(|(_, d)| d.clone());
            if let (Some(sid), Some(epoch)) = (&self.session, epoch) {
                self.inner
                    .with_session(&self.srv.name, sid, |i| i.tools.learn(epoch, defs));
            }
            if let Some(def) = found {
                return self.standing(def).await.map(Some);
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// A definition and its standing against its pin (pinned now if it is
    /// the tool's first sight, recorded if it differs).
    async fn standing(&self, def: Value) -> Result<(Value, PinState), Unlisted> {
        let states = pins::observe(
            &self.gateway,
            &self.inner.pins,
            &self.who,
            &self.srv.name,
            vec![def.clone()],
        )
        .await
        .map_err(|e| Unlisted::Error(format!("its pin could not be checked: {}", e.message)))?;
        let st = states
            .into_iter()
            .next()
            .map(|(_, st)| st)
            .ok_or_else(|| Unlisted::Error("its pin could not be checked".into()))?;
        Ok((def, st))
    }

    /// A request that acts other than `tools/call`: decided, then
    /// forwarded as decided and its outcome recorded, or refused with a
    /// JSON-RPC error ([`jsonrpc::DENIED`]).
    async fn act(self, msg: Message, act: crate::methods::Act) -> Response {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let icp = self.interceptor();
        match icp.act(&act, self.session.as_deref()).await {
            Err(text) => Json(error_response(id, jsonrpc::DENIED, &text)).into_response(),
            Ok(fwd) => self.forward(icp, fwd, msg, id).await,
        }
    }

    /// Decides the call with `params` (the tool as `known`, the client as
    /// `client_info`), waiting on a hold as `waiting` says: the interceptor
    /// that decided it, and what to do.
    async fn decide(
        &self,
        params: &Map<String, Value>,
        known: &Known,
        client_info: Option<&Value>,
        waiting: Waiting,
    ) -> (Interceptor<InProcess>, Plan) {
        let icp = self.interceptor();
        let plan = icp
            .tools_call(params, known, client_info, self.session.as_deref(), waiting)
            .await;
        (icp, plan)
    }

    async fn run(self, msg: Message, tool: String) -> Response {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let empty = Map::new();
        let params = msg.params().unwrap_or(&empty).clone();
        if let Err(refusal) = self.interceptor().arguments(&params) {
            return Json(result_response(id, refusal)).into_response();
        }
        let current = match self.current(&params, &tool).await {
            Ok(c) => c,
            Err(Unlisted::Answer(r)) => return r,
            Err(Unlisted::Error(why)) => {
                return Json(result_response(
                    id,
                    tool_error(format!(
                        "secondkey could not read the current definition of tool {tool:?} from the server `{}` ({why}), so the call was not decided. Nothing ran.",
                        self.srv.name
                    )),
                ))
                .into_response()
            }
        };
        let (session_info, listed) = self
            .session
            .as_deref()
            .and_then(|sid| {
                self.inner.with_session(&self.srv.name, sid, |i| {
                    (i.client_info.clone(), i.listed.contains(&tool))
                })
            })
            .unwrap_or((None, false));
        let known = Known {
            current,
            listed,
            unchecked: None,
        };
        let client_info = params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/clientInfo"))
            .cloned()
            .or(session_info);
        let cancelled = self.cancel.subscribe();
        // The client going away cancels the call: its HTTP request (or the
        // event stream answering it) is dropped, and so is this guard.
        let gone = CancelOnDrop(Some(self.cancel.clone()));
        let token = jsonrpc::progress_token(Some(&params));
        if let Some(token) = token {
            // The client hears progress while the call is held: answer with
            // an event stream at once.
            // Few messages queue for a slow client: each may be as large
            // as an upstream answer.
            let (tx, rx) = mpsc::channel::<String>(4);
            let waiting = Waiting {
                progress: Some((token, tx.clone())),
                cancelled,
            };
            // Once the client has gone, the call goes on for at most
            // `session_idle_seconds` (then `finish_streaming` records it as
            // unknown).
            let left = tx.clone();
            let limit = self.inner.config.session_idle;
            tokio::spawn(async move {
                let call = async {
                    let (icp, plan) = self
                        .decide(&params, &known, client_info.as_ref(), waiting)
                        .await;
                    self.finish_streaming(icp, plan, msg, id, tx).await;
                };
                tokio::select! {
                    () = call => {}
                    () = async {
                        left.closed().await;
                        tokio::time::sleep(limit).await;
                    } => {}
                }
            });
            let events = tokio_stream_of(rx).map(move |line| {
                let _stream_alive = &gone;
                Ok::<_, std::io::Error>(Bytes::from(format!("event: message\ndata: {line}\n\n")))
            });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(events))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        // One JSON answer. The call is decided on this task (no hand-off to
        // another worker on the common path), but it is `Detachable`: if the
        // client goes away first, it goes on in a task of its own, so that a
        // held call is withdrawn (instead of left pending) and a run already
        // under way is still recorded — for at most `session_idle_seconds`,
        // then it is recorded as unknown (`forward`).
        let limit = self.inner.config.session_idle;
        let resp = Detachable::bounded(
            async move {
                let waiting = Waiting {
                    progress: None,
                    cancelled,
                };
                let (icp, plan) = self
                    .decide(&params, &known, client_info.as_ref(), waiting)
                    .await;
                match plan {
                    Plan::Cancelled => StatusCode::ACCEPTED.into_response(),
                    Plan::Respond(result) => Json(result_response(id, result)).into_response(),
                    Plan::Forward(fwd) => self.forward(icp, fwd, msg, id).await,
                }
            },
            limit,
        )
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        gone.disarm();
        resp
    }

    /// Keeps the task the upstream created for this call, if it asked for
    /// one, as the caller's (before the client can name it), and records
    /// the call's outcome: this answer, or later the task's result.
    fn learn_task(
        &self,
        icp: Interceptor<InProcess>,
        fwd: Forward,
        msg: &Message,
        response: &Value,
    ) {
        let learned = self.inner.learn_run(
            (&self.srv.name, self.session.as_deref(), &self.who),
            tasks::asks(msg.params()),
            response,
            TaskRun { icp, fwd },
        );
        record_learned(learned, outcome_of(response));
    }

    /// Sends exactly the decided call `run` upstream; a call that could
    /// not be sent, or whose answer was lost, is recorded as such here.
    /// Sent, the run comes back in a guard: dropped before the answer
    /// settles it (its client gone, past the limit of
    /// `Detachable::bounded`), it is recorded as unknown.
    async fn send_call(
        &self,
        run: TaskRun,
        msg: &Message,
    ) -> Result<(reqwest::Response, Unsettled), Failure> {
        let run = Unsettled(Some(run), CALL_GAVE_UP);
        let body = Bytes::from(msg.to_line());
        let sent = upstream(
            &self.inner,
            &self.srv,
            Method::POST,
            &self.headers,
            Some(body),
        )
        .await;
        match sent {
            Err(f) => {
                let TaskRun { icp, fwd } = run.take();
                icp.finished(&fwd, Outcome::Lost(f.why.clone())).await;
                Err(f)
            }
            Ok(r) => {
                // The server no longer knows the session (it restarted).
                if r.status() == StatusCode::NOT_FOUND {
                    if let Some(sid) = &self.session {
                        self.inner.forget_tools(&self.srv.name, sid);
                    }
                }
                Ok((r, run))
            }
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
        let (resp, run) = match self.send_call(TaskRun { icp, fwd }, &msg).await {
            Ok(sent) => sent,
            Err(f) => {
                if f.maybe_ran {
                    return Json(result_response(id, lost_mid_call(&f.why))).into_response();
                }
                return f.response;
            }
        };
        let sse = is_sse(&resp);
        let (head, stream) = take_stream(resp);
        let max = answer_limit(&self.inner.config);
        if !sse {
            let collected = collect(stream, max).await;
            let TaskRun { icp, fwd } = run.take();
            let bytes = match collected {
                Ok(b) => b,
                Err(e) => {
                    icp.finished(&fwd, Outcome::Lost(e.clone())).await;
                    return Json(result_response(id, lost_mid_call(&e))).into_response();
                }
            };
            // The run was authorized and recorded before it started; its
            // result is recorded off the answer's path.
            match final_response(&bytes, false, Some(&id)) {
                Some(r) => self.learn_task(icp, fwd, &msg, &r),
                None => {
                    // Not one strict JSON-RPC answer to this call (not JSON,
                    // a repeated key, another id): never relayed as it is,
                    // since the agent could read it otherwise than the log.
                    let why = format!(
                        "the upstream answered {} without a readable result for this call",
                        head.status
                    );
                    icp.finished(&fwd, Outcome::Lost(why.clone())).await;
                    return Json(result_response(id, lost_mid_call(&why))).into_response();
                }
            }
            return relay_response(head, Body::from(bytes));
        }
        let TaskRun { icp, fwd } = run.take();
        let tap = Tap::new(stream, max, Some((id, icp, fwd)))
            .watching(self.watch.clone())
            .learning_task(tasks::asks(msg.params()));
        relay_response(head, Body::from_stream(tap))
    }

    /// The rest of a call answered with our own event stream (`tx`): the
    /// decision's answer, or the upstream's messages once it is forwarded.
    async fn finish_streaming(
        &self,
        icp: Interceptor<InProcess>,
        plan: Plan,
        msg: Message,
        id: Value,
        tx: mpsc::Sender<String>,
    ) {
        let fwd = match plan {
            Plan::Cancelled => return,
            Plan::Respond(result) => {
                let _ = tx.send(result_response(id, result).to_string()).await;
                return;
            }
            Plan::Forward(fwd) => fwd,
        };
        let (resp, run) = match self.send_call(TaskRun { icp, fwd }, &msg).await {
            Ok(sent) => sent,
            Err(f) => {
                let answer = if f.maybe_ran {
                    lost_mid_call(&f.why)
                } else {
                    tool_error(format!("the call was not sent: {}", f.why))
                };
                let _ = tx.send(result_response(id, answer).to_string()).await;
                return;
            }
        };
        let max = answer_limit(&self.inner.config);
        let sse = is_sse(&resp);
        let (head, stream) = take_stream(resp);
        if sse {
            // The tap records the outcome (or its loss) and adds the tool
            // error of a stream that ends without the result.
            let TaskRun { icp, fwd } = run.take();
            let mut tap = Tap::new(stream, max, Some((id, icp, fwd)))
                .watching(self.watch.clone())
                .learning_task(tasks::asks(msg.params()));
            while let Some(Ok(event)) = tap.next().await {
                if let Some(data) = event_data(&event) {
                    // A client gone does not stop the tap: the outcome is
                    // still recorded.
                    let _ = tx.send(String::from_utf8_lossy(&data).into_owned()).await;
                }
            }
            return;
        }
        let collected = collect(stream, max).await;
        let TaskRun { icp, fwd } = run.take();
        let why = match collected {
            Ok(bytes) => match final_response(&bytes, false, Some(&id)) {
                Some(v) => {
                    self.learn_task(icp, fwd, &msg, &v);
                    let _ = tx.send(v.to_string()).await;
                    return;
                }
                None => format!("the upstream answered {} without a result", head.status),
            },
            Err(e) => e,
        };
        icp.finished(&fwd, Outcome::Lost(why.clone())).await;
        let _ = tx
            .send(result_response(id, lost_mid_call(&why)).to_string())
            .await;
    }
}

/// Records what a decided call's answer leaves to record
/// ([`tasks::Learned`]), off the answer's path.
fn record_learned(learned: tasks::Learned<TaskRun>, outcome: Outcome) {
    if let Some(run) = learned.now {
        tokio::spawn(async move { run.icp.finished(&run.fwd, outcome).await });
    }
    record_unfetched(learned.forgotten.into_iter().collect(), tasks::FORGOTTEN);
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

/// Passes an upstream event stream through event by event, holding it to
/// what stdio mode holds a server to: notifications beyond
/// [`flood::MAX_NOTIFICATIONS_PER_SECOND`] are dropped, and so are events
/// whose data is not a JSON-RPC message or that exceed [`answer_limit`],
/// and task status notifications about another's task.
/// For a forwarded `tools/call` it watches for the
/// call's final response to record the outcome; if the stream ends without
/// one, the outcome is recorded as unknown and the client gets a tool
/// error event.
struct Tap<S> {
    inner: S,
    split: SseSplitter,
    max: usize,
    budget: Budget,
    oversized_seen: u64,
    /// Events ready for the client.
    out: VecDeque<Bytes>,
    /// The call's id and what records its outcome, until it is recorded.
    pending: Option<(Value, Interceptor<InProcess>, Forward)>,
    ended: bool,
    /// Who the stream goes to: the server's requests are decided for
    /// them, a changed tool list clears their session's listing.
    watch: Option<ListWatch>,
    /// Server requests being decided: the event to relay (`None`: refused).
    decided: (
        mpsc::UnboundedSender<Option<Bytes>>,
        mpsc::UnboundedReceiver<Option<Bytes>>,
    ),
    undecided: usize,
    /// Held while this is a session's event stream ([`Listening`]).
    _listening: Option<Listening>,
    /// The call asked to run as a task: the task its answer creates is
    /// kept as the caller's (for whom `watch` says).
    learns_task: bool,
}

impl<S> Tap<S> {
    fn new(inner: S, max: usize, call: Option<(Value, Interceptor<InProcess>, Forward)>) -> Self {
        Tap {
            inner,
            split: SseSplitter::new(max),
            max,
            budget: Budget::new(tokio::time::Instant::now()),
            oversized_seen: 0,
            out: VecDeque::new(),
            pending: call,
            ended: false,
            watch: None,
            decided: mpsc::unbounded_channel(),
            undecided: 0,
            _listening: None,
            learns_task: false,
        }
    }

    fn watching(mut self, watch: Option<ListWatch>) -> Self {
        self.watch = watch;
        self
    }

    fn learning_task(mut self, asked: bool) -> Self {
        self.learns_task = asked;
        self
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some((_, icp, fwd)) = self.pending.take() {
            tokio::spawn(async move { icp.finished(&fwd, outcome).await });
        }
    }

    /// Takes the events `chunk` completes.
    fn feed(&mut self, chunk: &[u8]) {
        let mut events = Vec::new();
        self.split.push(chunk, &mut events);
        if self.split.oversized > self.oversized_seen {
            self.oversized_seen = self.split.oversized;
            tracing::warn!(
                limit = self.max,
                "dropped an event of the MCP server larger than mcp.max_result_bytes"
            );
        }
        for e in events {
            self.event(e);
        }
    }

    fn event(&mut self, event: Vec<u8>) {
        let msg = match event_data(&event) {
            None => None,
            Some(data) => match Message::parse(&data, self.max) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "dropped an unreadable event of the MCP server");
                    return;
                }
            },
        };
        // Answers and the server's own requests pass; everything else
        // counts against the budget.
        let counted = msg.as_ref().is_none_or(|m| m.kind == Kind::Notification);
        if counted && !self.budget.admit(tokio::time::Instant::now()) {
            if self.budget.report_drop() {
                tracing::warn!(
                    dropped = self.budget.dropped(),
                    "the MCP server floods notifications; dropping what exceeds {} a second",
                    flood::MAX_NOTIFICATIONS_PER_SECOND
                );
            }
            return;
        }
        if let (Some(m), Some(w)) = (&msg, &self.watch) {
            if m.method() == Some("notifications/tools/list_changed") {
                w.changed();
            }
            if m.kind == Kind::Notification && w.foreign_status(m) {
                // Another's task's state is not this client's to see.
                return;
            }
        }
        if let Some(m) = msg.as_ref().filter(|m| m.kind == Kind::Request) {
            let act = crate::methods::server_request(
                &self.srv_name(),
                m.method().unwrap_or_default(),
                m.params(),
            );
            if let Some(act) = act {
                // Decided before the client sees it; a stream without the
                // context to decide it never relays it.
                let Some(w) = self.watch.clone() else {
                    tracing::warn!("dropped a request of the MCP server that could not be decided");
                    return;
                };
                let id = m.id().cloned().unwrap_or(Value::Null);
                let quota = w.inner.quota(&w.srv.name, w.session.as_deref(), &w.who);
                let hold = match quota.take(event.len()) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(server = %w.srv.name, "refused a request of the MCP server: {e}");
                        match w.inner.refusing.clone().try_acquire_owned() {
                            Ok(permit) => {
                                tokio::spawn(async move {
                                    w.refuse(id, jsonrpc::LIMIT, &e.to_string()).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => tracing::warn!(
                                server = %w.srv.name,
                                "too many refusals in flight; this one was not sent"
                            ),
                        }
                        return;
                    }
                };
                let tx = self.decided.0.clone();
                self.undecided += 1;
                let event = Bytes::from(event);
                tokio::spawn(async move {
                    let out = w.decide_server_request(act, id, event, hold).await;
                    let _ = tx.send(out);
                });
                return;
            }
        }
        if let (Some(m), Some((id, _, _))) = (&msg, &self.pending) {
            if m.kind == Kind::Response && m.id().map(id_key) == Some(id_key(id)) {
                let answer = Value::Object(m.value.clone());
                match (&self.watch, self.pending.take()) {
                    (Some(w), Some((_, icp, fwd))) => {
                        // Before the client sees the answer naming a task.
                        let learned = w.inner.learn_run(
                            (&w.srv.name, w.session.as_deref(), &w.who),
                            self.learns_task,
                            &answer,
                            TaskRun { icp, fwd },
                        );
                        record_learned(learned, outcome_of(&answer));
                    }
                    (_, pending) => {
                        self.pending = pending;
                        self.settle(outcome_of(&answer));
                    }
                }
            }
        }
        self.out.push_back(Bytes::from(event));
    }
}

impl<S> Tap<S> {
    fn srv_name(&self) -> String {
        self.watch
            .as_ref()
            .map(|w| w.srv.name.clone())
            .unwrap_or_default()
    }
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin> Stream for Tap<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            while this.undecided > 0 {
                match this.decided.1.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => {
                        this.undecided -= 1;
                        if let Some(b) = ev {
                            this.out.push_back(b);
                        }
                    }
                    Poll::Ready(None) => this.undecided = 0,
                    Poll::Pending => break,
                }
            }
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.ended {
                if this.undecided > 0 {
                    return Poll::Pending;
                }
                return Poll::Ready(None);
            }
            match StdPin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.feed(&chunk),
                Poll::Ready(end) => {
                    this.ended = true;
                    // An event the stream did not finish still counts.
                    this.feed(b"\n\n");
                    if let Some((id, _, _)) = &this.pending {
                        let id = id.clone();
                        let why = match &end {
                            Some(Err(e)) => format!("the upstream stream broke off: {e}"),
                            _ if this.split.oversized > 0 => format!(
                                "the upstream's answer was larger than {} bytes (mcp.max_result_bytes) and was dropped",
                                this.max
                            ),
                            _ => "the upstream stream ended before the result".to_string(),
                        };
                        let ev = result_response(id, lost_mid_call(&why));
                        this.settle(Outcome::Lost(why));
                        this.out
                            .push_back(Bytes::from(format!("event: message\ndata: {ev}\n\n")));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
        let mut s = SseSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        (out, s.oversized)
    }

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_line_ends_and_chunks() {
        let (ev, _) = split(
            100,
            &[
                b"event: message\r\ndata: {\"a\"",
                b":1}\r",
                b"\n\r\n: ping\n\ndata: x\rdata: y\r\r",
            ],
        );
        assert_eq!(
            ev,
            vec![
                b"event: message\ndata: {\"a\":1}\n\n".to_vec(),
                b": ping\n\n".to_vec(),
                b"data: x\ndata: y\n\n".to_vec()
            ]
        );
        assert_eq!(event_data(&ev[0]).unwrap(), b"{\"a\":1}");
        assert_eq!(event_data(&ev[1]), None, "a comment has no data");
        assert_eq!(event_data(&ev[2]).unwrap(), b"x\ny");
        assert_eq!(event_data(b"id: 7\ndata:\n\n"), None, "a priming event");
        let (ev, _) = split(100, &[b"\n\n\ndata: 1\n\n\n\n"]);
        assert_eq!(
            ev,
            vec![b"data: 1\n\n".to_vec()],
            "stray blank lines dispatch nothing"
        );
    }

    #[test]
    fn an_oversized_event_is_dropped_whole_and_the_stream_goes_on() {
        let big = format!("data: {}\nmore: x\n\n", "y".repeat(3000));
        let (ev, oversized) = split(
            1000,
            &[
                b"data: 1\n\n",
                &big.as_bytes()[..1500],
                &big.as_bytes()[1500..],
                b"data: 2\n\n",
            ],
        );
        assert_eq!(ev, vec![b"data: 1\n\n".to_vec(), b"data: 2\n\n".to_vec()]);
        assert_eq!(oversized, 1);
    }

    #[test]
    fn the_final_response_is_found_in_an_event_stream() {
        let body = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}";
        let r = final_response(body, true, Some(&json!(3))).unwrap();
        assert_eq!(r["id"], 3);
        assert!(final_response(body, true, Some(&json!("3"))).is_none());
    }

    #[test]
    fn only_the_final_event_of_a_stream_is_rewritten() {
        let body = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n: ping\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tasks\":[1,2]}}";
        let out = rewrite_final_event(body, Some(&json!(7)), |v| v["result"]["tasks"] = json!([]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n: ping\n\n\
             event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tasks\":[]}}\n\n"
        );
        // Another id's response is not the one rewritten.
        let out = rewrite_final_event(body, Some(&json!("7")), |v| v["result"] = json!(null));
        assert!(String::from_utf8(out).unwrap().contains("[1,2]"));
    }

    #[test]
    fn a_listing_is_kept_only_with_a_stream_open_and_nothing_forgotten_since_it_began() {
        let def = |n: &str| (n.to_string(), json!({"name": n}));
        let mut t = ToolsSeen::default();
        t.learn(t.epoch, [def("a")]);
        assert!(t.defs.is_empty(), "no stream open: nothing kept");
        t.listening = 1;
        let began = t.epoch;
        t.forget();
        t.learn(began, [def("a")]);
        assert!(t.defs.is_empty(), "forgotten while it was read: not kept");
        t.learn(t.epoch, [def("a"), def("b")]);
        assert_eq!(t.defs.len(), 2);
        t.forget();
        assert!(t.defs.is_empty());
        t.learn(
            t.epoch,
            (0..MAX_TOOLS_SEEN + 5).map(|i| def(&i.to_string())),
        );
        assert_eq!(t.defs.len(), MAX_TOOLS_SEEN, "bounded");
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_detachable_call_finishes_on_the_awaiting_task_or_after_it_is_dropped() {
        // Awaited: the output comes back, from the same task.
        let here = std::thread::current().id();
        let (out, there) = Detachable::bounded(
            async move {
                tokio::task::yield_now().await;
                (7, std::thread::current().id())
            },
            LONG,
        )
        .await
        .unwrap();
        assert_eq!(out, 7);
        assert_eq!(there, here, "a current-task future stays on its thread");

        // Dropped half way: it still runs to its end.
        let (started_tx, started) = oneshot::channel::<()>();
        let (go_tx, go) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<&str>();
        let waiter = tokio::spawn(Detachable::bounded(
            async move {
                let _ = started_tx.send(());
                let _ = go.await;
                let _ = done_tx.send("finished");
            },
            LONG,
        ));
        started.await.unwrap();
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        go_tx.send(()).unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(5), done).await;
        assert_eq!(finished.unwrap().unwrap(), "finished");

        // A panic comes out as an error, once: nothing is left to respawn.
        let panicked = Detachable::bounded(
            async {
                tokio::task::yield_now().await;
                panic!("a bug in a call");
            },
            LONG,
        )
        .await;
        assert!(panicked.is_err());

        // Dropped, it runs on for at most its limit, then is dropped.
        let (started_tx, started) = oneshot::channel::<()>();
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        struct OnDrop(Option<oneshot::Sender<()>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let waiter = tokio::spawn(Detachable::bounded(
            async move {
                let _guard = OnDrop(Some(dropped_tx));
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            },
            Duration::from_millis(200),
        ));
        started.await.unwrap();
        let t0 = std::time::Instant::now();
        waiter.abort();
        let _ = waiter.await;
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("dropped at its limit")
            .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "not before its limit"
        );
    }
}
