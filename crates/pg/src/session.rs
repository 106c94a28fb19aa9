//! One client connection: the proxy loop between a client and its own
//! upstream session.
//!
//! Client messages are read, classified and decided *before* anything that
//! executes is forwarded: a simple `Query` and an extended-protocol
//! `Execute` reach the upstream only after `Gateway::intercept` (or an
//! approval) has recorded the authorizing log entry durably. Parse, Bind,
//! Describe, Close and Sync execute nothing and are forwarded at once.
//!
//! The proxy mirrors the server's prepared statements and portals exactly:
//! a creation counts once the server confirmed it (ParseComplete,
//! BindComplete), and an `Execute` is decided on the portal the server will
//! run — its statement text and bound values. Within one batch (up to Sync)
//! the not-yet-confirmed messages are looked up too: if one of them fails,
//! the server skips everything up to Sync, so nothing decided on a wrong
//! assumption ever runs.
//!
//! Responses are forwarded in order; what the gateway says itself (a
//! denial, a hold) is queued behind the responses still due, so the client
//! sees exactly the message order PostgreSQL would produce. A denied
//! statement never touches the upstream: an open transaction stays open.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use secondkey_core::principal::Principal;
use secondkey_core::request::RequestState;
use secondkey_server::{Execution, ExecutionResult, Intercept, Verdict};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{Classification, Special};
use crate::config::HoldMode;
use crate::proto::{self, ProtoError};
use crate::upstream::Stream;
use crate::Shared;

/// Longest statement text kept verbatim in an action; longer ones are cut
/// and bound by their SHA-256 (the digest covers it).
const MAX_STATEMENT_CHARS: usize = 8 * 1024;
/// Longest parameter value kept verbatim.
const MAX_PARAM_BYTES: usize = 1024;
/// Largest message the upstream may send in one piece.
const MAX_UPSTREAM_MESSAGE: usize = 1 << 30;

/// A prepared statement the server holds.
pub struct Prepared {
    pub text: String,
    pub class: Arc<Classification>,
}

/// A portal: a prepared statement with its bound values.
pub struct Portal {
    pub stmt: Arc<Prepared>,
    pub params: Vec<Value>,
}

/// A statement that is running with its authorization.
struct Run {
    ex: Execution,
    started: Instant,
    tags: Vec<String>,
    error: Option<(String, String)>,
    /// The session ended before its answer: it may or may not have run.
    unknown: bool,
    reads: Vec<String>,
    writes: Vec<String>,
}

/// What the proxy expects back from the upstream, in order.
enum Pending {
    Parse {
        name: String,
        stmt: Arc<Prepared>,
    },
    Bind {
        name: String,
        portal: Arc<Portal>,
    },
    Close {
        kind: u8,
        name: String,
    },
    Describe,
    Execute(Option<Box<Run>>),
    Sync,
    Query {
        run: Option<Box<Run>>,
        special: Special,
    },
    /// Bytes the gateway itself sends, followed by ReadyForQuery if `ready`.
    Say {
        bytes: BytesMut,
        ready: bool,
    },
}

/// Why a statement did not run.
struct Refusal {
    code: &'static str,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
}

pub enum End {
    ClientLeft,
    UpstreamLost(String),
    Protocol(String),
}

pub struct Session {
    sh: Arc<Shared>,
    who: Principal,
    client: Stream,
    upstream: Stream,
    cin: BytesMut,
    cout: BytesMut,
    uin: BytesMut,
    uout: BytesMut,
    pending: VecDeque<Pending>,
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Arc<Portal>>,
    tx_status: u8,
    /// After an error in an extended-protocol batch: drop messages up to Sync.
    skipping: bool,
    /// Set when the server reports settings under which the classifier
    /// would read statements differently than the server does.
    poisoned: Option<String>,
    /// Woken by a CancelRequest while a statement is held.
    cancel: Arc<tokio::sync::Notify>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sh: Arc<Shared>,
        who: Principal,
        client: Stream,
        upstream: Stream,
        cin: BytesMut,
        uin: BytesMut,
        cancel: Arc<tokio::sync::Notify>,
    ) -> Self {
        Session {
            sh,
            who,
            client,
            upstream,
            cin,
            cout: BytesMut::with_capacity(16 * 1024),
            uin,
            uout: BytesMut::with_capacity(4096),
            pending: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            tx_status: b'I',
            skipping: false,
            poisoned: None,
            cancel,
        }
    }

    /// Checks a ParameterStatus value the server reported.
    pub fn check_parameter(&mut self, k: &str, v: &str) {
        let bad = match k {
            "standard_conforming_strings" => v != "on",
            "client_encoding" => !matches!(v, "UTF8" | "SQL_ASCII"),
            _ => false,
        };
        if bad {
            self.poisoned = Some(format!("the server reports {k} = {v}"));
        }
    }

    /// Sends `hello` (the rest of the startup answer), then proxies until
    /// either side leaves.
    pub async fn start(mut self, hello: BytesMut) -> End {
        self.cout.extend_from_slice(&hello);
        self.run().await
    }

    /// Runs until either side leaves.
    pub async fn run(mut self) -> End {
        let end = self.proxy().await;
        self.abandon(&end);
        end
    }

    async fn proxy(&mut self) -> End {
        // Anything the client pipelined behind its startup.
        if !self.cin.is_empty() {
            if let Err(e) = self.on_client().await {
                return e;
            }
        }
        loop {
            if let Err(e) = self.flush().await {
                return e;
            }
            enum Got {
                Client(std::io::Result<usize>),
                Upstream(std::io::Result<usize>),
            }
            let got = tokio::select! {
                r = self.client.read_buf(&mut self.cin) => Got::Client(r),
                r = self.upstream.read_buf(&mut self.uin) => Got::Upstream(r),
            };
            let r = match got {
                Got::Client(Ok(0)) | Got::Client(Err(_)) => return End::ClientLeft,
                Got::Upstream(Ok(0)) => Err(End::UpstreamLost(
                    "the upstream closed the connection".into(),
                )),
                Got::Upstream(Err(e)) => Err(End::UpstreamLost(e.to_string())),
                Got::Client(Ok(_)) => self.on_client().await,
                Got::Upstream(Ok(_)) => self.on_upstream(),
            };
            if let Err(e) = r {
                if let End::UpstreamLost(why) = &e {
                    // Forward what arrived (often the server's own FATAL).
                    let _ = self.on_upstream();
                    proto::fatal(
                        &mut self.cout,
                        "08006",
                        &format!("secondkey lost the connection to the upstream database ({why}); nothing is retried"),
                    );
                }
                let _ = self.flush().await;
                return e;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.uout.is_empty() {
            self.upstream
                .write_all(&self.uout)
                .await
                .map_err(|e| End::UpstreamLost(e.to_string()))?;
            self.uout.clear();
        }
        if !self.cout.is_empty() {
            self.client
                .write_all(&self.cout)
                .await
                .map_err(|_| End::ClientLeft)?;
            self.cout.clear();
        }
        Ok(())
    }

    /// Records what became of statements still running when the session
    /// ended: their outcome is unknown, and nothing is retried.
    fn abandon(&mut self, end: &End) {
        let why = match end {
            End::ClientLeft => "the client disconnected before the result".to_string(),
            End::UpstreamLost(w) => format!("the upstream connection was lost ({w})"),
            End::Protocol(w) => format!("protocol error ({w})"),
        };
        for p in std::mem::take(&mut self.pending) {
            if let Pending::Execute(Some(mut run))
            | Pending::Query {
                run: Some(mut run), ..
            } = p
            {
                run.error = Some(("08006".into(), format!("outcome unknown: {why}")));
                run.unknown = true;
                self.record(*run);
            }
        }
    }

    // ---- client → upstream ----------------------------------------------

    async fn on_client(&mut self) -> Result<(), End> {
        while let Some((ty, body)) = proto::take_message(&mut self.cin, proto::MAX_MESSAGE)
            .map_err(|e| self.protocol_error(e))?
        {
            self.client_message(ty, body).await?;
        }
        Ok(())
    }

    fn protocol_error(&mut self, e: ProtoError) -> End {
        proto::fatal(&mut self.cout, "08P01", &e.to_string());
        End::Protocol(e.to_string())
    }

    /// An extended-protocol message that could not be read: a string that
    /// is not UTF-8 is an error of this batch, as in PostgreSQL (22021);
    /// anything else ends the connection.
    fn malformed(&mut self, e: ProtoError) -> Result<(), End> {
        match e {
            ProtoError::NotUtf8(_) => {
                self.batch_error(Refusal::new("22021", e.to_string()));
                Ok(())
            }
            e => Err(self.protocol_error(e)),
        }
    }

    fn forward(&mut self, ty: u8, body: &[u8]) {
        proto::put_raw(&mut self.uout, ty, body);
    }

    /// Queues something the gateway says, behind the responses still due.
    fn say(&mut self, bytes: BytesMut, ready: bool) {
        if self.pending.is_empty() {
            self.cout.extend_from_slice(&bytes);
            if ready {
                proto::ready(&mut self.cout, self.tx_status);
            }
        } else {
            self.pending.push_back(Pending::Say { bytes, ready });
        }
    }

    fn refusal_bytes(r: &Refusal) -> BytesMut {
        let mut b = BytesMut::new();
        proto::error(
            &mut b,
            r.code,
            &r.message,
            r.detail.as_deref(),
            r.hint.as_deref(),
        );
        b
    }

    /// An error inside an extended-protocol batch: said in order, then the
    /// rest of the batch is dropped up to Sync, as the server would.
    fn batch_error(&mut self, r: Refusal) {
        let b = Self::refusal_bytes(&r);
        self.say(b, false);
        self.skipping = true;
    }

    async fn client_message(&mut self, ty: u8, body: BytesMut) -> Result<(), End> {
        if self.skipping && matches!(ty, b'P' | b'B' | b'D' | b'E' | b'C' | b'H') {
            return Ok(());
        }
        match ty {
            b'Q' => self.query(&body).await,
            b'P' => {
                let p = match proto::parse_parse(&body) {
                    Ok(p) => p,
                    Err(e) => return self.malformed(e),
                };
                let text = p.query.to_string();
                let name = p.name.to_string();
                if let Some(why) = &self.poisoned {
                    let why = why.clone();
                    self.batch_error(poisoned(&why));
                    return Ok(());
                }
                match self.sh.cache.classify(&text) {
                    Ok(class) => {
                        let stmt = Arc::new(Prepared { text, class });
                        self.forward(ty, &body);
                        self.pending.push_back(Pending::Parse { name, stmt });
                    }
                    Err(e) => self.batch_error(classify_refusal(e)),
                }
                Ok(())
            }
            b'B' => {
                let b = match proto::parse_bind(&body) {
                    Ok(b) => b,
                    Err(e) => return self.malformed(e),
                };
                let Some(stmt) = self.lookup_statement(b.statement) else {
                    let msg = format!("prepared statement \"{}\" does not exist", b.statement);
                    self.batch_error(Refusal::new("26000", msg));
                    return Ok(());
                };
                let params = b
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| param_value(*v, b.is_binary(i)))
                    .collect();
                let name = b.portal.to_string();
                self.forward(ty, &body);
                self.pending.push_back(Pending::Bind {
                    name,
                    portal: Arc::new(Portal { stmt, params }),
                });
                Ok(())
            }
            b'D' => {
                if let Err(e) = proto::parse_target(&body, "Describe") {
                    return self.malformed(e);
                }
                self.forward(ty, &body);
                self.pending.push_back(Pending::Describe);
                Ok(())
            }
            b'C' => {
                let (kind, name) = match proto::parse_target(&body, "Close") {
                    Ok(t) => t,
                    Err(e) => return self.malformed(e),
                };
                let name = name.to_string();
                self.forward(ty, &body);
                self.pending.push_back(Pending::Close { kind, name });
                Ok(())
            }
            b'E' => self.execute(&body).await,
            b'S' => {
                self.skipping = false;
                self.forward(ty, &body);
                self.pending.push_back(Pending::Sync);
                Ok(())
            }
            b'H' | b'd' | b'c' | b'f' => {
                self.forward(ty, &body);
                Ok(())
            }
            b'X' => {
                self.forward(ty, &body);
                let _ = self.flush().await;
                Err(End::ClientLeft)
            }
            b'F' => {
                let r = Refusal::new(
                    "0A000",
                    "secondkey does not pass the fastpath function-call interface; call the function in a statement",
                );
                let b = Self::refusal_bytes(&r);
                self.say(b, true);
                Ok(())
            }
            other => {
                let msg = format!("unexpected message type {:?}", other as char);
                proto::fatal(&mut self.cout, "08P01", &msg);
                Err(End::Protocol(msg))
            }
        }
    }

    fn lookup_statement(&self, name: &str) -> Option<Arc<Prepared>> {
        for p in self.pending.iter().rev() {
            match p {
                Pending::Parse { name: n, stmt } if n == name => return Some(stmt.clone()),
                Pending::Close {
                    kind: b'S',
                    name: n,
                } if n == name => return None,
                _ => {}
            }
        }
        self.statements.get(name).cloned()
    }

    fn lookup_portal(&self, name: &str) -> Option<Arc<Portal>> {
        for p in self.pending.iter().rev() {
            match p {
                Pending::Bind { name: n, portal } if n == name => return Some(portal.clone()),
                Pending::Close {
                    kind: b'P',
                    name: n,
                } if n == name => return None,
                _ => {}
            }
        }
        self.portals.get(name).cloned()
    }

    async fn query(&mut self, body: &[u8]) -> Result<(), End> {
        let text = match proto::query_text(body) {
            Ok(t) => t.to_string(),
            Err(ProtoError::NotUtf8(_)) => {
                let r = Refusal::new("22021", "the statement is not valid UTF-8");
                let b = Self::refusal_bytes(&r);
                self.say(b, true);
                return Ok(());
            }
            Err(e) => return Err(self.protocol_error(e)),
        };
        if let Some(why) = self.poisoned.clone() {
            let b = Self::refusal_bytes(&poisoned(&why));
            self.say(b, true);
            return Ok(());
        }
        let class = match self.sh.cache.classify(&text) {
            Ok(c) => c,
            Err(e) => {
                let b = Self::refusal_bytes(&classify_refusal(e));
                self.say(b, true);
                return Ok(());
            }
        };
        if class.statements.is_empty() {
            // Only comments or whitespace: nothing runs.
            self.forward(b'Q', body);
            self.pending.push_back(Pending::Query {
                run: None,
                special: Special::None,
            });
            return Ok(());
        }
        let specials: Vec<&Special> = class
            .statements
            .iter()
            .map(|s| &s.special)
            .filter(|s| **s != Special::None)
            .collect();
        if !specials.is_empty() && class.statements.len() > 1 {
            let r = Refusal::new(
                "0A000",
                "send DEALLOCATE and DISCARD as statements of their own through secondkey",
            );
            let b = Self::refusal_bytes(&r);
            self.say(b, true);
            return Ok(());
        }
        let special = specials
            .first()
            .map(|s| (*s).clone())
            .unwrap_or(Special::None);
        if let Some(r) = self.fetches_bound_portal(&class) {
            let b = Self::refusal_bytes(&r);
            self.say(b, true);
            return Ok(());
        }
        match self.decide(&class, &text, None, "simple").await? {
            Ok(run) => {
                self.forward(b'Q', body);
                self.pending.push_back(Pending::Query {
                    run: Some(Box::new(run)),
                    special,
                });
            }
            Err(r) => {
                let b = Self::refusal_bytes(&r);
                self.say(b, true);
            }
        }
        Ok(())
    }

    async fn execute(&mut self, body: &[u8]) -> Result<(), End> {
        let (name, _) = match proto::parse_execute(body) {
            Ok(x) => x,
            Err(e) => return self.malformed(e),
        };
        let Some(portal) = self.lookup_portal(name) else {
            let msg = format!("portal \"{name}\" does not exist");
            self.batch_error(Refusal::new("34000", msg));
            return Ok(());
        };
        if let Some(why) = self.poisoned.clone() {
            self.batch_error(poisoned(&why));
            return Ok(());
        }
        let class = portal.stmt.class.clone();
        if class.statements.is_empty() {
            self.forward(b'E', body);
            self.pending.push_back(Pending::Execute(None));
            return Ok(());
        }
        if class.statements.iter().any(|s| s.special != Special::None) {
            self.batch_error(Refusal::new(
                "0A000",
                "send DEALLOCATE and DISCARD as simple queries through secondkey",
            ));
            return Ok(());
        }
        if let Some(r) = self.fetches_bound_portal(&class) {
            self.batch_error(r);
            return Ok(());
        }
        let text = portal.stmt.text.clone();
        match self
            .decide(&class, &text, Some(&portal.params), "extended")
            .await?
        {
            Ok(run) => {
                self.forward(b'E', body);
                self.pending
                    .push_back(Pending::Execute(Some(Box::new(run))));
            }
            Err(r) => self.batch_error(r),
        }
        Ok(())
    }

    /// A `FETCH` or `MOVE` from a portal bound through the extended
    /// protocol would run that portal's statement, which was never decided
    /// (only an `Execute` of it is): refused. Cursors made with `DECLARE`
    /// were decided when declared, and are not in the mirror.
    fn fetches_bound_portal(&self, class: &Classification) -> Option<Refusal> {
        let name = class
            .statements
            .iter()
            .filter_map(|s| s.portal.as_deref())
            .find(|n| self.lookup_portal(n).is_some())?;
        Some(Refusal::new(
            "0A000",
            format!("secondkey: FETCH and MOVE cannot read portal \"{name}\": it was bound through the extended protocol, so run it with Execute"),
        ))
    }

    // ---- deciding ---------------------------------------------------------

    /// Builds the action and the gateway facts for a statement.
    fn action(
        &self,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
        protocol: &str,
    ) -> (Value, Map<String, Value>, Vec<String>, Vec<String>) {
        let conn = &self.sh.conn;
        let schema = conn.default_schema.as_str();
        let mut reads = std::collections::BTreeSet::new();
        let mut writes = std::collections::BTreeSet::new();
        let mut functions = std::collections::BTreeSet::new();
        for s in &class.statements {
            reads.extend(s.reads.iter().flat_map(|t| t.candidates(schema)));
            writes.extend(s.writes.iter().flat_map(|t| t.candidates(schema)));
            functions.extend(s.functions.iter().cloned());
        }
        let uri = |t: &String| format!("postgres://{}/{t}", conn.name);
        let resource = writes
            .iter()
            .next()
            .or_else(|| reads.iter().next())
            .map(uri)
            .unwrap_or_else(|| format!("postgres://{}", conn.name));
        let read_uris: Vec<String> = reads.iter().map(uri).collect();
        let write_uris: Vec<String> = writes.iter().map(uri).collect();
        let op = class.operation();
        let mut p = Map::new();
        if text.chars().count() > MAX_STATEMENT_CHARS {
            let cut: String = text.chars().take(MAX_STATEMENT_CHARS).collect();
            p.insert("statement".into(), json!(format!("{cut}…")));
            p.insert(
                "statement_sha256".into(),
                json!(hex::encode(Sha256::digest(text.as_bytes()))),
            );
        } else {
            p.insert("statement".into(), json!(text));
        }
        if let Some(values) = params {
            p.insert("parameters".into(), Value::Array(values.to_vec()));
        }
        let action = json!({
            "kind": "sql",
            "operation": op.as_str(),
            "resource": resource,
            "params": p,
            "lineage": {"reads": read_uris, "writes": write_uris},
        });
        let mut tables: Vec<String> = reads.iter().chain(writes.iter()).cloned().collect();
        tables.sort();
        tables.dedup();
        let mut facts = Map::new();
        facts.insert("connection".into(), json!(conn.name));
        facts.insert("database".into(), json!(conn.upstream.database));
        facts.insert("operation".into(), json!(op.as_str()));
        facts.insert("tables".into(), json!(tables));
        facts.insert("reads".into(), json!(reads));
        facts.insert("writes".into(), json!(writes));
        facts.insert("functions".into(), json!(functions));
        facts.insert("statements".into(), json!(class.statements.len()));
        facts.insert("protocol".into(), json!(protocol));
        (action, facts, read_uris, write_uris)
    }

    /// Decides a statement: `Ok(Ok(run))` to forward it, `Ok(Err(_))` to
    /// refuse it, `Err` when the session must end.
    async fn decide(
        &mut self,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
        protocol: &str,
    ) -> Result<Result<Run, Refusal>, End> {
        let (action, mut facts, reads, writes) = self.action(class, text, params, protocol);
        if let Some(rows) = self.estimate(class, text, params).await? {
            facts.insert("estimated_rows".into(), json!(rows));
        }
        let verdict = self
            .sh
            .gateway
            .intercept(
                &self.who,
                Intercept {
                    action,
                    transport: "pg",
                    facts,
                },
            )
            .await;
        let run = |ex: Execution| Run {
            ex,
            started: Instant::now(),
            tags: Vec::new(),
            error: None,
            unknown: false,
            reads: reads.clone(),
            writes: writes.clone(),
        };
        match verdict {
            Err(e) => Ok(Err(Refusal::new(
                "42501",
                format!(
                    "secondkey could not decide this statement, so it was not run: {}",
                    e.message
                ),
            ))),
            Ok(Verdict::Run(ex)) => Ok(Ok(run(ex))),
            Ok(Verdict::Deny(d)) => {
                let mut r = Refusal::new("42501", d.message.clone());
                r.detail = Some(
                    d.reasons
                        .iter()
                        .map(|x| x.message.clone())
                        .filter(|m| !m.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
                .filter(|s| !s.is_empty());
                Ok(Err(r))
            }
            Ok(Verdict::Held(h)) => {
                let id = h.request.id.clone();
                match self.sh.conn.hold {
                    HoldMode::Retry => {
                        let mut r = Refusal::new(
                            "SK001",
                            format!(
                                "secondkey is holding this statement for approval: request {id}"
                            ),
                        );
                        r.detail = Some(format!("Review it at {}", h.url));
                        r.hint = Some("Run the identical statement again once the request is approved; it runs once.".into());
                        Ok(Err(r))
                    }
                    HoldMode::Wait => {
                        let digest = h.request.digest.clone();
                        self.wait(&id, &h.url, &digest).await.map(|r| r.map(run))
                    }
                }
            }
        }
    }

    /// EXPLAIN's row estimate for a write, delete or export, when the
    /// connection asks for it (`estimate_rows`): simple-protocol statements
    /// on their own (`COPY table TO` is estimated as `SELECT * FROM table`),
    /// outside transactions (a failing EXPLAIN must not abort the client's)
    /// and only while nothing else is in flight, never for statements that
    /// call functions we do not know. EXPLAIN without ANALYZE executes
    /// nothing.
    async fn estimate(
        &mut self,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
    ) -> Result<Option<i64>, End> {
        use crate::classify::Operation;
        // Planning may evaluate functions declared IMMUTABLE: one we do not
        // know (a write for all we know) must not run before the decision.
        if !self.sh.conn.estimate_rows
            || params.is_some()
            || class.statements.len() != 1
            || !class.statements[0].unknown_functions.is_empty()
            || !matches!(
                class.operation(),
                Operation::Write | Operation::Delete | Operation::Export
            )
        {
            return Ok(None);
        }
        // Responses still due to the client go first (a driver pipelines a
        // Close behind its last query), unless one of them may wait for the
        // client itself (COPY FROM STDIN). What the client sent before this
        // statement may still sit in our buffer: send it, or its answers
        // never come.
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        while !self.pending.is_empty() {
            if self
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Query { .. } | Pending::Execute(_)))
            {
                return Ok(None);
            }
            let n = self
                .upstream
                .read_buf(&mut self.uin)
                .await
                .map_err(|e| End::UpstreamLost(e.to_string()))?;
            if n == 0 {
                return Err(End::UpstreamLost(
                    "the upstream closed the connection".into(),
                ));
            }
            self.on_upstream()?;
        }
        if self.tx_status != b'I' {
            return Ok(None);
        }
        let st = &class.statements[0];
        let target = if st.command == "CopyStmt" {
            match (st.reads.iter().next(), st.reads.len()) {
                (Some(t), 1)
                    if text
                        .trim_start()
                        .get(..5)
                        .is_some_and(|p| p.eq_ignore_ascii_case("copy ")) =>
                {
                    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                    format!(
                        "SELECT * FROM {}.{}",
                        ident(t.schema.as_deref().unwrap_or(&self.sh.conn.default_schema)),
                        ident(&t.name)
                    )
                }
                _ => return Ok(None),
            }
        } else {
            text.to_string()
        };
        let mut q = BytesMut::new();
        proto::put(&mut q, b'Q', |b| {
            proto::put_cstr(b, &format!("EXPLAIN (FORMAT JSON) {target}"))
        });
        self.upstream
            .write_all(&q)
            .await
            .map_err(|e| End::UpstreamLost(e.to_string()))?;
        let mut plan = None;
        loop {
            let msg = proto::take_message(&mut self.uin, MAX_UPSTREAM_MESSAGE)
                .map_err(|e| End::UpstreamLost(e.to_string()))?;
            let Some((ty, body)) = msg else {
                let n = self
                    .upstream
                    .read_buf(&mut self.uin)
                    .await
                    .map_err(|e| End::UpstreamLost(e.to_string()))?;
                if n == 0 {
                    return Err(End::UpstreamLost("closed during EXPLAIN".into()));
                }
                continue;
            };
            match ty {
                b'D' => {
                    let mut r = proto::Reader::new(&body, "DataRow");
                    if let (Ok(1), Ok(len)) = (r.i16(), r.i32()) {
                        if let Ok(b) = r.bytes(len.max(0) as usize) {
                            plan = serde_json::from_slice::<Value>(b).ok();
                        }
                    }
                }
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(self.tx_status);
                    break;
                }
                // Notices and parameter changes still go to the client.
                b'N' | b'S' | b'A' => proto::put_raw(&mut self.cout, ty, &body),
                _ => {}
            }
        }
        // A write's top node (ModifyTable) returns nothing; the rows it
        // changes are its input's.
        Ok(plan.and_then(|p| {
            let top = &p[0]["Plan"];
            let node = if top["Node Type"] == "ModifyTable" {
                &top["Plans"][0]
            } else {
                top
            };
            node["Plan Rows"].as_f64().map(|r| r as i64)
        }))
    }

    /// Wait mode: tell the client at once, then wait for the decision while
    /// watching for a cancel request or the client leaving.
    async fn wait(
        &mut self,
        id: &str,
        url: &str,
        digest: &secondkey_core::action::Digest,
    ) -> Result<Result<Execution, Refusal>, End> {
        let mut note = BytesMut::new();
        let msg = format!("secondkey: waiting for approval of request {id}: {url}");
        proto::diag(
            &mut note,
            b'N',
            &proto::Diag {
                severity: "NOTICE",
                code: "00000",
                message: &msg,
                detail: None,
                hint: None,
            },
        );
        // A notice may be sent at any time: it goes out now, not in order.
        self.cout.extend_from_slice(&note);
        self.flush().await?;
        let deadline = Instant::now() + self.sh.conn.hold_timeout;
        let gw = self.sh.gateway.clone();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Err(Refusal::new(
                    "57014",
                    format!("secondkey: request {id} was not decided within {:?}; the statement was not run (the request stays pending: run it again to keep waiting)", self.sh.conn.hold_timeout),
                )));
            }
            let slice = left.min(Duration::from_secs(30));
            // Lives for one select; its size does not matter.
            #[allow(clippy::large_enum_variant)]
            enum W {
                Decided(
                    Result<secondkey_core::request::Request, secondkey_server::error::ApiError>,
                ),
                Cancel,
                Client(std::io::Result<usize>),
            }
            let w = tokio::select! {
                r = gw.wait_decided(id, slice) => W::Decided(r),
                _ = self.cancel.notified() => W::Cancel,
                r = self.client.read_buf(&mut self.cin) => W::Client(r),
            };
            match w {
                W::Client(Ok(0)) | W::Client(Err(_)) => {
                    let _ = gw.withdraw(&self.who, id).await;
                    return Err(End::ClientLeft);
                }
                // Pipelined messages wait in the buffer until this one is done.
                W::Client(Ok(_)) => continue,
                W::Cancel => {
                    let _ = gw.withdraw(&self.who, id).await;
                    return Ok(Err(Refusal::new(
                        "57014",
                        format!(
                            "canceling statement due to user request (request {id} was withdrawn)"
                        ),
                    )));
                }
                W::Decided(Err(e)) => {
                    return Ok(Err(Refusal::new(
                        "42501",
                        format!(
                        "secondkey could not follow request {id}, so the statement was not run: {}",
                        e.message
                    ),
                    )))
                }
                W::Decided(Ok(req)) => {
                    match req.state {
                        RequestState::Pending => continue,
                        RequestState::Approved => {
                            return Ok(match gw.execute_approved(&self.who, id, digest).await {
                                Ok(ex) => Ok(ex),
                                Err(e) => Err(Refusal::new(
                                    "42501",
                                    format!(
                                        "secondkey could not use the approval of request {id}: {}",
                                        e.message
                                    ),
                                )),
                            })
                        }
                        other => {
                            let by: Vec<String> =
                                req.reviews.iter().map(|r| r.reviewer.to_string()).collect();
                            let state = serde_json::to_value(other)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default();
                            let mut r = Refusal::new(
                            "42501",
                            format!("secondkey: request {id} was {state}; the statement was not run"),
                        );
                            if !by.is_empty() {
                                r.detail = Some(format!("reviewed by {}", by.join(", ")));
                            }
                            return Ok(Err(r));
                        }
                    }
                }
            }
        }
    }

    // ---- upstream → client ------------------------------------------------

    /// Forwards every complete upstream message, updating the mirrored
    /// state and completing pending entries.
    fn on_upstream(&mut self) -> Result<(), End> {
        loop {
            let Some((ty, body)) = proto::take_message(&mut self.uin, MAX_UPSTREAM_MESSAGE)
                .map_err(|e| End::UpstreamLost(e.to_string()))?
            else {
                return Ok(());
            };
            proto::put_raw(&mut self.cout, ty, &body);
            self.upstream_message(ty, &body);
        }
    }

    fn upstream_message(&mut self, ty: u8, body: &[u8]) {
        match ty {
            b'1' => {
                if let Some(Pending::Parse { name, stmt }) =
                    self.pop_if(|p| matches!(p, Pending::Parse { .. }))
                {
                    self.statements.insert(name, stmt);
                }
            }
            b'2' => {
                if let Some(Pending::Bind { name, portal }) =
                    self.pop_if(|p| matches!(p, Pending::Bind { .. }))
                {
                    self.portals.insert(name, portal);
                }
            }
            b'3' => {
                if let Some(Pending::Close { kind, name }) =
                    self.pop_if(|p| matches!(p, Pending::Close { .. }))
                {
                    if kind == b'S' {
                        self.statements.remove(&name);
                    } else {
                        self.portals.remove(&name);
                    }
                }
            }
            b'T' | b'n' => {
                self.pop_if(|p| matches!(p, Pending::Describe));
            }
            b'C' | b'I' | b's' => {
                let tag = proto::Reader::new(body, "CommandComplete")
                    .cstr()
                    .unwrap_or("")
                    .to_string();
                match self.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(Some(mut run))) = self.pending.pop_front() {
                            if ty == b'C' {
                                run.tags.push(tag);
                            }
                            self.record(*run);
                        }
                        self.emit_said();
                    }
                    Some(Pending::Query { run, special }) if ty == b'C' => {
                        if let Some(run) = run {
                            run.tags.push(tag.clone());
                        }
                        match special.clone() {
                            Special::Deallocate(Some(name)) if tag == "DEALLOCATE" => {
                                self.statements.remove(&name);
                            }
                            Special::Deallocate(None) => {
                                self.statements.clear();
                                if tag == "DISCARD ALL" {
                                    self.portals.clear();
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            b'E' => {
                let (code, msg) = proto::error_fields(body);
                match self.pending.front_mut() {
                    Some(Pending::Query { run, .. }) => {
                        if let Some(run) = run {
                            run.error = Some((code, msg));
                        }
                    }
                    Some(Pending::Sync) | None | Some(Pending::Say { .. }) => {}
                    Some(_) => {
                        // The failed message and everything up to Sync is
                        // skipped by the server.
                        let failed = self.pending.pop_front();
                        if let Some(Pending::Execute(Some(mut run))) = failed {
                            run.error = Some((code.clone(), msg.clone()));
                            self.record(*run);
                        }
                        while let Some(p) = self.pending.front() {
                            if matches!(p, Pending::Sync) {
                                break;
                            }
                            if let Some(Pending::Execute(Some(mut run)))
                            | Some(Pending::Query {
                                run: Some(mut run), ..
                            }) = self.pending.pop_front()
                            {
                                run.error = Some((
                                    "not_run".into(),
                                    "not executed: an earlier message of the batch failed".into(),
                                ));
                                self.record(*run);
                            }
                        }
                    }
                }
            }
            b'Z' => {
                self.tx_status = body.first().copied().unwrap_or(b'I');
                if let Some(Pending::Query { run: Some(run), .. }) =
                    self.pop_if(|p| matches!(p, Pending::Sync | Pending::Query { .. }))
                {
                    self.record(*run);
                }
                if self.tx_status == b'I' {
                    // Portals end with their transaction.
                    self.portals.clear();
                }
                self.emit_said();
            }
            b'S' => {
                let mut r = proto::Reader::new(body, "ParameterStatus");
                if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
                    let (k, v) = (k.to_string(), v.to_string());
                    self.check_parameter(&k, &v);
                }
            }
            _ => {}
        }
        if matches!(ty, b'1' | b'2' | b'3' | b'T' | b'n') {
            self.emit_said();
        }
    }

    fn pop_if(&mut self, f: impl Fn(&Pending) -> bool) -> Option<Pending> {
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front()
        } else {
            None
        }
    }

    /// Emits what the gateway queued once the responses before it are out.
    fn emit_said(&mut self) {
        while let Some(Pending::Say { .. }) = self.pending.front() {
            if let Some(Pending::Say { bytes, ready }) = self.pending.pop_front() {
                self.cout.extend_from_slice(&bytes);
                if ready {
                    proto::ready(&mut self.cout, self.tx_status);
                }
            }
        }
    }

    /// Reports a finished statement to the log, off the client's path.
    fn record(&self, run: Run) {
        let gw = self.sh.gateway.clone();
        let who = self.who.clone();
        let rows: i64 = run
            .tags
            .iter()
            .filter_map(|t| t.rsplit(' ').next().and_then(|n| n.parse::<i64>().ok()))
            .sum();
        let mut summary = json!({
            "command_tags": run.tags,
            "rows": rows,
            "duration_ms": (run.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        });
        if let Some((code, message)) = &run.error {
            summary["error"] = json!({"sqlstate": code, "message": message});
        }
        if run.unknown {
            summary["status"] = json!("unknown");
        }
        let result = ExecutionResult {
            ok: run.error.is_none(),
            summary,
            reads: run.reads,
            writes: run.writes,
        };
        let ex = run.ex;
        tokio::spawn(async move {
            if let Err(e) = gw.record_execution(&who, &ex, result).await {
                tracing::warn!(execution = %ex.id, error = %e.message, "could not record a statement's result");
            }
        });
    }
}

fn poisoned(why: &str) -> Refusal {
    Refusal::new(
        "0A000",
        format!("secondkey stopped classifying statements on this connection: {why}, which changes how statements are read; reconnect"),
    )
}

fn classify_refusal(e: crate::classify::ClassifyError) -> Refusal {
    match e {
        crate::classify::ClassifyError::Parse(m) => {
            let mut r = Refusal::new(
                "42601",
                format!("secondkey could not parse this statement, so it was not sent: {m}"),
            );
            r.hint = Some("Only statements PostgreSQL's parser accepts are passed.".into());
            r
        }
        crate::classify::ClassifyError::Refused(m) => {
            Refusal::new("0A000", format!("secondkey: {m}"))
        }
    }
}

/// A bound value as the action shows it: text as a string, binary as
/// base64, long values by their SHA-256 (the digest still binds them).
fn param_value(v: Option<&[u8]>, binary: bool) -> Value {
    use base64::Engine;
    let Some(v) = v else { return Value::Null };
    if v.len() > MAX_PARAM_BYTES {
        return json!({"sha256": hex::encode(Sha256::digest(v)), "bytes": v.len()});
    }
    match (binary, std::str::from_utf8(v)) {
        (false, Ok(s)) => json!(s),
        _ => json!({"binary": base64::engine::general_purpose::STANDARD.encode(v)}),
    }
}
