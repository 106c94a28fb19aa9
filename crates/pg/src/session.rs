//! One client connection: the proxy loop between a client and its own
//! upstream session.
//!
//! Nothing the database evaluates runs before the decision. PostgreSQL
//! evaluates code at three points of the extended protocol: Parse (parse
//! analysis reads string constants with their type's input function — an
//! array, composite or range of a domain runs the domain's CHECK), Bind
//! (parameter input runs domain CHECKs; planning runs IMMUTABLE functions
//! on constants, also behind views and column defaults) and Execute. So:
//!
//! * **Parse** goes out at once, but the server only ever analyzes a text
//!   without string constants whose input could reach user code: when a
//!   statement has such constants ([`Statement::literal_input`]), the
//!   server gets a copy with each replaced by `NULL` ([`classify::sanitize`];
//!   a NULL of unknown type is typed exactly like a string constant, so
//!   the parameter and result types are the same). When no such copy can
//!   be built, the gateway answers ParseComplete itself and the server
//!   gets nothing under that name.
//! * **Describe** of a statement goes out at once (it plans nothing),
//!   except for a statement the server does not hold (refused, 0A000).
//! * **Bind** never goes out on its own: the gateway answers BindComplete
//!   itself, keeps the Bind, and sends it right before the portal's first
//!   Execute once that Execute is decided — preceded by a Parse of the
//!   original text under the gateway's own name ([`RUN_STATEMENT`]) when
//!   the server holds another text (or none) under the client's name. A
//!   Describe of such a portal is held with it and must be followed by
//!   the portal's Execute (as libpq, psycopg and JDBC send them);
//!   otherwise it is refused (0A000).
//! * **Execute** and a simple **Query** are decided; they reach the
//!   upstream only after `Gateway::intercept` (or an approval) recorded
//!   the authorizing log entry durably.
//! * Close, Sync and Flush go out at once.
//!
//! The proxy mirrors the server's prepared statements exactly (a creation
//! counts once the server confirmed it) and keeps the portals as the client
//! sees them. An `Execute` is decided on the portal the server will run —
//! its statement text and bound values. Within one batch (up to Sync) the
//! not-yet-confirmed messages are looked up too: if one of them fails, the
//! server skips everything up to Sync, so nothing decided on a wrong
//! assumption ever runs.
//!
//! Responses are forwarded in order; what the gateway says itself (a
//! denial, a hold, a BindComplete) is queued behind the responses still
//! due, so the client sees exactly the message order PostgreSQL would
//! produce. A denied statement never touches the upstream: an open
//! transaction stays open.
//!
//! Memory is bounded: a client message is checked against
//! `max_message_bytes` from its header, before its body is buffered; what
//! the session keeps (unread input, mirrored statements and portals) is
//! bounded by `max_session_bytes`; while a statement is held the gateway
//! reads at most `held_read_bytes` more from the client; upstream rows,
//! COPY data, errors and notices larger than 64 KiB stream through
//! instead of being buffered whole.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use secondkey_core::principal::Principal;
use secondkey_core::request::RequestState;
use secondkey_server::{Execution, ExecutionResult, Intercept, Verdict};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{self, Classification, Special, Statement, Table};
use crate::config::HoldMode;
use crate::params;
use crate::proto::{self, ProtoError};
use crate::upstream::Stream;
use crate::Shared;
use secondkey_log::lean::Shape;

/// Longest statement text kept verbatim in an action; longer ones are cut
/// and bound by their SHA-256 (the digest covers it).
const MAX_STATEMENT_CHARS: usize = 8 * 1024;
/// Upstream messages the proxy does not need whole (rows, COPY data,
/// errors, notices, notifications) stream through once larger than this.
const PASS_AT: usize = 64 << 10;
/// Largest upstream message of any other kind (a RowDescription of 1,664
/// columns is about 200 KB).
const MAX_INSPECTED: usize = 1 << 20;
/// What is kept of a streamed message to read its fields (an error's code
/// and message come first).
const HEAD: usize = 4 << 10;
/// Largest message of the gateway's own EXPLAIN it reads; larger ones are
/// skipped (no estimate).
const MAX_PLAN: usize = 16 << 20;
/// Reads go in pieces of about this size.
const READ_CHUNK: usize = 64 << 10;

/// The statement name under which the gateway prepares a statement's
/// original text right before its decided Execute (closed before each
/// use). Clients may not use it.
pub const RUN_STATEMENT: &str = "secondkey.run";

/// What the server holds under a prepared statement's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Early {
    /// The text exactly as the client sent it.
    Verbatim,
    /// The text with the string constants analysis would read replaced by
    /// NULL ([`classify::sanitize`]).
    Sanitized,
    /// Nothing: the gateway answered the Parse itself.
    Absent,
}

/// A prepared statement the server holds.
pub struct Prepared {
    pub text: String,
    pub class: Arc<Classification>,
    /// Parameter types the Parse declared (0: left to the server).
    pub types: Vec<u32>,
    pub early: Early,
    /// Parameter types the server reported (ParameterDescription).
    pub described: OnceLock<Vec<u32>>,
}

impl Prepared {
    /// The type of parameter `i`: declared, else reported, else 0.
    fn param_type(&self, i: usize) -> u32 {
        self.types
            .get(i)
            .copied()
            .filter(|&t| t != 0)
            .or_else(|| self.described.get().and_then(|d| d.get(i).copied()))
            .unwrap_or(0)
    }
}

/// A portal: a prepared statement with its bound values.
pub struct Portal {
    pub stmt: Arc<Prepared>,
    /// The statement name the Bind named.
    pub stmt_name: String,
    /// The values as the action shows them ([`params::display`]).
    pub params: Vec<Value>,
    /// [`params::wire_sha256`] of the values, when any was sent in binary.
    pub wire_sha256: Option<String>,
    /// The Bind as the client sent it, sent on with the first Execute.
    bind: BytesMut,
}

/// A portal as the client sees it.
struct Slot {
    portal: Arc<Portal>,
    /// Whether its Bind went out (with a decided Execute).
    upstream: bool,
    /// How many Syncs (and queries) went out before its Bind: it ends with
    /// the transaction the next ReadyForQuery after them closes.
    born: u64,
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

/// Most statement shapes one session keeps logged (past it, or past
/// [`MAX_SHAPE_BYTES`] of their text, it starts over and logs shapes again).
const MAX_SHAPES: usize = 64;
const MAX_SHAPE_BYTES: usize = 256 << 10;

/// A statement shape this session logged (with its first allow, see
/// `Gateway::intercept_lean`): allowed statements of that shape are logged
/// lean, naming it.
struct Shaped {
    digest: String,
    /// The action without `params.statement`, `parameters` and
    /// `parameters_sha256`.
    template: Value,
    facts: Map<String, Value>,
    reads: Vec<String>,
    writes: Vec<String>,
}

/// The shapes of one session, and the session's id in the log.
#[derive(Default)]
struct Shapes {
    id: Option<String>,
    by_key: HashMap<String, Arc<Shaped>>,
    bytes: usize,
}

/// A statement that can be logged lean: its key among the session's
/// shapes, the shape's text pieces and its literal values.
struct LeanKey {
    key: String,
    pieces: Vec<String>,
    literals: Vec<String>,
}

/// What the proxy expects back from the upstream, in order.
enum Pending {
    /// `own`: the gateway's own Parse (of [`RUN_STATEMENT`]); its answer is
    /// not the client's.
    Parse {
        name: String,
        stmt: Arc<Prepared>,
        own: bool,
    },
    /// A Bind sent with its Execute: the client had its BindComplete.
    Bind {
        portal: String,
    },
    Close {
        kind: u8,
        name: String,
        own: bool,
    },
    Describe {
        stmt: Option<Arc<Prepared>>,
    },
    Execute(Option<Box<Run>>),
    Sync,
    Query {
        run: Option<Box<Run>>,
        special: Special,
    },
    /// Bytes the gateway itself sends, followed by ReadyForQuery if
    /// `ready`; `parsed` is a statement the gateway prepared on its own
    /// ([`Early::Absent`]), mirrored when said.
    Say {
        bytes: BytesMut,
        ready: bool,
        parsed: Option<(String, Arc<Prepared>)>,
    },
}

/// An upstream message larger than [`PASS_AT`] being passed through.
struct Passing {
    ty: u8,
    left: usize,
    head: BytesMut,
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
    /// The gateway ended the session (a limit, the idle timeout); the
    /// client was told why.
    Closed(String),
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
    portals: HashMap<String, Slot>,
    /// Bytes of statement texts and Binds mirrored (`max_session_bytes`).
    kept: usize,
    /// A Describe of a portal whose Bind has not gone out: it goes out
    /// with that portal's Execute, which must be the next message.
    held_describe: Option<(String, BytesMut)>,
    /// Syncs and queries sent, and ReadyForQuery received.
    syncs_sent: u64,
    syncs_done: u64,
    passing: Option<Passing>,
    tx_status: u8,
    /// Set once a statement that may change how unqualified names resolve
    /// ([`Statement::moves_names`]) was let through: from then on a table
    /// named without a schema is refused, as `default_schema` may no
    /// longer be the schema the server reads it in.
    names_moved: bool,
    /// After an error in an extended-protocol batch: drop messages up to Sync.
    skipping: bool,
    /// Set when the server reports settings under which the classifier
    /// would read statements differently than the server does.
    poisoned: Option<String>,
    /// Woken by a CancelRequest while a statement is held.
    cancel: Arc<tokio::sync::Notify>,
    /// When either side last sent anything (for `idle_timeout`).
    last_active: Instant,
    /// The client connection's peer address: the fact `source_ip`.
    peer: Option<std::net::IpAddr>,
    /// Statement shapes logged for this session.
    shapes: Shapes,
}

/// Makes room for one more read of about [`READ_CHUNK`].
fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
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
            kept: 0,
            held_describe: None,
            syncs_sent: 0,
            syncs_done: 0,
            passing: None,
            tx_status: b'I',
            names_moved: false,
            skipping: false,
            poisoned: None,
            cancel,
            last_active: Instant::now(),
            peer: None,
            shapes: Shapes::default(),
        }
    }

    /// The client connection's peer address, as observed at accept: each
    /// action of the session carries it as the gateway fact `source_ip`.
    pub fn with_peer(mut self, peer: Option<std::net::IpAddr>) -> Self {
        self.peer = peer;
        self
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
                return self.ending(e).await;
            }
        }
        loop {
            if let Err(e) = self.flush().await {
                return e;
            }
            enum Got {
                Client(std::io::Result<usize>),
                Upstream(std::io::Result<usize>),
                Idle,
            }
            // Idle: nothing in flight and no traffic either way.
            let idle_at = match self.sh.conn.limits.idle_timeout {
                Some(d) if self.pending.is_empty() && self.passing.is_none() => {
                    Some(tokio::time::Instant::from_std(self.last_active + d))
                }
                _ => None,
            };
            let idle = async move {
                match idle_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            room(&mut self.cin);
            room(&mut self.uin);
            let got = tokio::select! {
                r = self.client.read_buf(&mut self.cin) => Got::Client(r),
                r = self.upstream.read_buf(&mut self.uin) => Got::Upstream(r),
                _ = idle => Got::Idle,
            };
            let r = match got {
                Got::Client(Ok(0)) | Got::Client(Err(_)) => return End::ClientLeft,
                Got::Upstream(Ok(0)) => Err(End::UpstreamLost(
                    "the upstream closed the connection".into(),
                )),
                Got::Upstream(Err(e)) => Err(End::UpstreamLost(e.to_string())),
                Got::Client(Ok(_)) => {
                    self.last_active = Instant::now();
                    self.on_client().await
                }
                Got::Upstream(Ok(_)) => {
                    self.last_active = Instant::now();
                    self.on_upstream()
                }
                Got::Idle => Err(self.close(
                    "57P05",
                    format!(
                        "terminating connection due to idle-session timeout: nothing was sent or received for {:?} (idle_timeout of postgres connection {})",
                        self.sh.conn.limits.idle_timeout.unwrap_or_default(),
                        self.sh.conn.name
                    ),
                )),
            };
            if let Err(e) = r {
                return self.ending(e).await;
            }
        }
    }

    /// Tells the client why the session ends, as far as it can be told.
    async fn ending(&mut self, e: End) -> End {
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
        if matches!(e, End::Protocol(_) | End::Closed(_)) {
            self.hang_up().await;
        }
        e
    }

    /// Ends a session the gateway refuses to go on with, so that the client
    /// reads why: the write side is shut (the reason goes out before the
    /// end), and what the client still sends is read and dropped for a
    /// moment (at most [`READ_CHUNK`] × 16 bytes, one second) — closing
    /// on unread bytes would be a reset that can lose the reason.
    async fn hang_up(&mut self) {
        let _ = self.client.shutdown().await;
        let mut scrap = vec![0u8; READ_CHUNK];
        let mut left = READ_CHUNK * 16;
        let drain = async {
            while left > 0 {
                match self.client.read(&mut scrap).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }

    /// Ends the session with a FATAL the client reads first.
    fn close(&mut self, code: &str, msg: String) -> End {
        proto::fatal(&mut self.cout, code, &msg);
        End::Closed(msg)
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
            // Traffic either way counts for `idle_timeout`: the answer
            // to a statement held for a long time is new traffic.
            self.last_active = Instant::now();
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
            End::Closed(w) => format!("the gateway closed the session ({w})"),
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

    // ---- the mirror ---------------------------------------------------------

    /// A statement the server now holds; its text was counted in `kept`
    /// when the client sent its Parse.
    fn put_statement(&mut self, name: String, stmt: Arc<Prepared>) {
        if let Some(old) = self.statements.insert(name, stmt) {
            self.kept = self.kept.saturating_sub(old.text.len());
        }
    }

    fn drop_statement(&mut self, name: &str) {
        if let Some(old) = self.statements.remove(name) {
            self.kept = self.kept.saturating_sub(old.text.len());
        }
    }

    fn put_portal(&mut self, name: String, slot: Slot) {
        self.kept += slot.portal.bind.len();
        if let Some(old) = self.portals.insert(name, slot) {
            self.kept = self.kept.saturating_sub(old.portal.bind.len());
        }
    }

    fn drop_portal(&mut self, name: &str) {
        if let Some(old) = self.portals.remove(name) {
            self.kept = self.kept.saturating_sub(old.portal.bind.len());
        }
    }

    /// Ends the portals bound before the `sync`-th Sync (or query) went out.
    fn end_portals(&mut self, sync: u64) {
        let mut freed = 0;
        self.portals.retain(|_, s| {
            let keep = s.born >= sync;
            if !keep {
                freed += s.portal.bind.len();
            }
            keep
        });
        self.kept = self.kept.saturating_sub(freed);
    }

    /// A portal whose Bind failed (or was skipped) upstream.
    fn unbind(&mut self, name: &str) {
        if let Some(s) = self.portals.get_mut(name) {
            s.upstream = false;
        }
    }

    /// Refuses what would take the session past `max_session_bytes`.
    fn over_budget(&self, add: usize) -> Option<Refusal> {
        let max = self.sh.conn.limits.max_session_bytes;
        (self.kept + self.cin.len() + add > max).then(|| {
            let mut r = Refusal::new(
                "54000",
                format!("secondkey keeps at most {max} bytes of prepared statements, portals and unread input for one session (max_session_bytes)"),
            );
            r.hint = Some("Close prepared statements and portals you no longer need.".into());
            r
        })
    }

    fn lookup_statement(&self, name: &str) -> Option<Arc<Prepared>> {
        for p in self.pending.iter().rev() {
            match p {
                Pending::Parse {
                    name: n,
                    stmt,
                    own: false,
                } if n == name => return Some(stmt.clone()),
                Pending::Say {
                    parsed: Some((n, stmt)),
                    ..
                } if n == name => return Some(stmt.clone()),
                Pending::Close {
                    kind: b'S',
                    name: n,
                    own: false,
                } if n == name => return None,
                _ => {}
            }
        }
        self.statements.get(name).cloned()
    }

    // ---- client → upstream ----------------------------------------------

    async fn on_client(&mut self) -> Result<(), End> {
        let max = self.sh.conn.limits.max_message_bytes;
        while let Some((ty, body)) =
            proto::take_message(&mut self.cin, max).map_err(|e| self.protocol_error(e))?
        {
            self.client_message(ty, body).await?;
        }
        Ok(())
    }

    fn protocol_error(&mut self, e: ProtoError) -> End {
        let msg = match e {
            ProtoError::TooLarge(n) => format!(
                "message of {n} bytes is larger than the gateway accepts (max_message_bytes = {})",
                self.sh.conn.limits.max_message_bytes
            ),
            e => e.to_string(),
        };
        proto::fatal(&mut self.cout, "08P01", &msg);
        End::Protocol(msg)
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
        self.say_parsed(bytes, ready, None);
    }

    fn say_parsed(
        &mut self,
        bytes: BytesMut,
        ready: bool,
        parsed: Option<(String, Arc<Prepared>)>,
    ) {
        if self.pending.is_empty() {
            self.cout.extend_from_slice(&bytes);
            if ready {
                proto::ready(&mut self.cout, self.tx_status);
            }
            if let Some((name, stmt)) = parsed {
                self.put_statement(name, stmt);
            }
        } else {
            self.pending.push_back(Pending::Say {
                bytes,
                ready,
                parsed,
            });
            if ready {
                // A whole answer (to a Query or a function call) waits for
                // the server's answers to what came before it, which the
                // server keeps buffered until a Sync or Flush when the
                // client sent extended-protocol messages without one. The
                // client waits for ReadyForQuery, so the server must send
                // them now; a Flush changes nothing else.
                proto::put(&mut self.uout, b'H', |_| {});
            }
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
        // A Describe of a portal not bound upstream goes out with that
        // portal's Execute, which must come next.
        if let Some((portal, _)) = &self.held_describe {
            let its_execute =
                ty == b'E' && proto::parse_execute(&body).is_ok_and(|(n, _)| n == portal);
            if !its_execute {
                let portal = portal.clone();
                self.held_describe = None;
                self.batch_error(Refusal::new(
                    "0A000",
                    format!("secondkey describes portal \"{portal}\" only together with its Execute: send Describe and Execute of a portal in one batch (as libpq does), or describe the statement"),
                ));
            }
        }
        // The server ignores everything up to Sync after an error in an
        // extended-protocol batch, simple queries and function calls too.
        if self.skipping && matches!(ty, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'Q' | b'F') {
            return Ok(());
        }
        match ty {
            b'Q' => self.query(&body).await,
            b'P' => self.parse(&body),
            b'B' => self.bind(body),
            b'D' => self.describe(body),
            b'C' => {
                let (kind, name) = match proto::parse_target(&body, "Close") {
                    Ok(t) => t,
                    Err(e) => return self.malformed(e),
                };
                let name = name.to_string();
                if kind == b'P' {
                    // Portals are the client's view: gone at once.
                    self.drop_portal(&name);
                }
                self.forward(ty, &body);
                self.pending.push_back(Pending::Close {
                    kind,
                    name,
                    own: false,
                });
                Ok(())
            }
            b'E' => self.execute(&body).await,
            b'S' => {
                self.skipping = false;
                self.forward(ty, &body);
                self.pending.push_back(Pending::Sync);
                self.syncs_sent += 1;
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

    fn parse(&mut self, body: &[u8]) -> Result<(), End> {
        let p = match proto::parse_parse(body) {
            Ok(p) => p,
            Err(e) => return self.malformed(e),
        };
        let (text, name, types) = (p.query.to_string(), p.name.to_string(), p.types);
        if name == RUN_STATEMENT {
            self.batch_error(Refusal::new(
                "42P05",
                format!("prepared statement name \"{RUN_STATEMENT}\" is reserved by secondkey"),
            ));
            return Ok(());
        }
        if let Some(why) = self.poisoned.clone() {
            self.batch_error(poisoned(&why));
            return Ok(());
        }
        let class = match self.sh.cache.classify(&text) {
            Ok(c) => c,
            Err(e) => {
                self.batch_error(classify_refusal(e));
                return Ok(());
            }
        };
        if let Some(r) = self.over_budget(text.len()) {
            self.batch_error(r);
            return Ok(());
        }
        let sent = if class.statements.iter().any(|s| s.literal_input) {
            classify::sanitize(&text)
        } else {
            Some(text.clone())
        };
        let early = match &sent {
            Some(s) if *s == text => Early::Verbatim,
            Some(_) => Early::Sanitized,
            None => Early::Absent,
        };
        if early == Early::Absent && !name.is_empty() && self.lookup_statement(&name).is_some() {
            self.batch_error(Refusal::new(
                "42P05",
                format!("prepared statement \"{name}\" already exists"),
            ));
            return Ok(());
        }
        self.kept += text.len();
        let stmt = Arc::new(Prepared {
            text,
            class,
            types,
            early,
            described: OnceLock::new(),
        });
        match (early, sent) {
            (Early::Verbatim, _) => self.forward(b'P', body),
            (_, Some(sanitized)) => {
                let b = parse_body(&name, &sanitized, &stmt.types);
                self.forward(b'P', &b);
            }
            (_, None) => {
                // The server gets nothing under this name; the statement is
                // prepared with its decided Execute.
                let mut b = BytesMut::new();
                proto::put(&mut b, b'1', |_| {});
                self.say_parsed(b, false, Some((name, stmt)));
                return Ok(());
            }
        }
        self.pending.push_back(Pending::Parse {
            name,
            stmt,
            own: false,
        });
        Ok(())
    }

    fn bind(&mut self, body: BytesMut) -> Result<(), End> {
        let b = match proto::parse_bind(&body) {
            Ok(b) => b,
            Err(e) => return self.malformed(e),
        };
        let Some(stmt) = self.lookup_statement(b.statement) else {
            let msg = format!("prepared statement \"{}\" does not exist", b.statement);
            self.batch_error(Refusal::new("26000", msg));
            return Ok(());
        };
        let binary: Vec<bool> = (0..b.values.len()).map(|i| b.is_binary(i)).collect();
        let shown: Vec<Value> = b
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| params::display(*v, binary[i], stmt.param_type(i)))
            .collect();
        // Declared types change what a text value means (`'1'` as `int8`
        // or as a domain): they are bound like binary values.
        let wire_sha256 = (binary.iter().any(|&x| x) || stmt.types.iter().any(|&t| t != 0))
            .then(|| params::wire_sha256(&stmt.types, &binary, &b.values));
        if b.portal == RUN_STATEMENT {
            self.batch_error(Refusal::new(
                "42P03",
                format!("portal name \"{RUN_STATEMENT}\" is reserved by secondkey"),
            ));
            return Ok(());
        }
        let (name, stmt_name) = (b.portal.to_string(), b.statement.to_string());
        if let Some(r) = self.over_budget(body.len()) {
            self.batch_error(r);
            return Ok(());
        }
        let portal = Arc::new(Portal {
            stmt,
            stmt_name,
            params: shown,
            wire_sha256,
            bind: body,
        });
        let born = self.syncs_sent;
        self.put_portal(
            name,
            Slot {
                portal,
                upstream: false,
                born,
            },
        );
        // The Bind itself goes out with the portal's decided Execute.
        let mut b = BytesMut::new();
        proto::put(&mut b, b'2', |_| {});
        self.say(b, false);
        Ok(())
    }

    fn describe(&mut self, body: BytesMut) -> Result<(), End> {
        let (kind, name) = match proto::parse_target(&body, "Describe") {
            Ok(t) => t,
            Err(e) => return self.malformed(e),
        };
        let name = name.to_string();
        let stmt = if kind == b'P' {
            if self.portals.get(&name).is_some_and(|s| !s.upstream) {
                self.held_describe = Some((name, body));
                return Ok(());
            }
            None
        } else {
            let stmt = self.lookup_statement(&name);
            if stmt.as_ref().is_some_and(|s| s.early == Early::Absent) {
                let mut r = Refusal::new(
                    "0A000",
                    format!("secondkey cannot describe statement \"{name}\" before it runs: preparing it would let the database read its string constants before the decision"),
                );
                r.hint = Some("Send those constants as parameters, or run the statement without describing it first.".into());
                self.batch_error(r);
                return Ok(());
            }
            stmt
        };
        self.forward(b'D', &body);
        self.pending.push_back(Pending::Describe { stmt });
        Ok(())
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
            self.send_query(body, None, Special::None);
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
        let decided = self.decide(&class, &text, None, None, "simple").await?;
        if self.skipping {
            // An earlier message of the client's batch failed while the
            // gateway read the upstream (the estimate): the server ignores
            // this query, so it is not sent, and says nothing of it.
            if let Ok(mut run) = decided {
                run.error = Some(not_run());
                self.record(run);
            }
            return Ok(());
        }
        match decided {
            Ok(run) => self.send_query(body, Some(Box::new(run)), special),
            Err(r) => {
                let b = Self::refusal_bytes(&r);
                self.say(b, true);
            }
        }
        Ok(())
    }

    fn send_query(&mut self, body: &[u8], run: Option<Box<Run>>, special: Special) {
        self.forward(b'Q', body);
        self.pending.push_back(Pending::Query { run, special });
        self.syncs_sent += 1;
    }

    async fn execute(&mut self, body: &[u8]) -> Result<(), End> {
        let (name, _) = match proto::parse_execute(body) {
            Ok(x) => x,
            Err(e) => return self.malformed(e),
        };
        let name = name.to_string();
        let describe = self
            .held_describe
            .take()
            .filter(|(p, _)| *p == name)
            .map(|(_, b)| b);
        let Some((portal, upstream)) = self
            .portals
            .get(&name)
            .map(|s| (s.portal.clone(), s.upstream))
        else {
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
            self.send_portal(&name, &portal, upstream, describe);
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
            .decide(
                &class,
                &text,
                Some(&portal.params),
                portal.wire_sha256.as_deref(),
                "extended",
            )
            .await?
        {
            // An earlier message of the batch failed while the gateway read
            // the upstream: the server skips this Execute.
            Ok(mut run) if self.skipping => {
                run.error = Some(not_run());
                self.record(run);
            }
            Ok(run) => {
                self.send_portal(&name, &portal, upstream, describe);
                self.forward(b'E', body);
                self.pending
                    .push_back(Pending::Execute(Some(Box::new(run))));
            }
            Err(r) => self.batch_error(r),
        }
        Ok(())
    }

    /// What goes out right before an Execute of a portal the server does
    /// not have yet: its statement (the original text under
    /// [`RUN_STATEMENT`], when the server holds another text or none under
    /// the name the Bind used), the Bind, and the Describe held with it.
    fn send_portal(
        &mut self,
        name: &str,
        portal: &Portal,
        upstream: bool,
        describe: Option<BytesMut>,
    ) {
        if !upstream {
            let as_bound = portal.stmt.early == Early::Verbatim
                && self
                    .lookup_statement(&portal.stmt_name)
                    .is_some_and(|s| Arc::ptr_eq(&s, &portal.stmt));
            if as_bound {
                self.forward(b'B', &portal.bind);
            } else {
                let mut close = BytesMut::new();
                close.extend_from_slice(b"S");
                proto::put_cstr(&mut close, RUN_STATEMENT);
                self.forward(b'C', &close);
                self.pending.push_back(Pending::Close {
                    kind: b'S',
                    name: RUN_STATEMENT.into(),
                    own: true,
                });
                let parse = parse_body(RUN_STATEMENT, &portal.stmt.text, &portal.stmt.types);
                self.forward(b'P', &parse);
                self.pending.push_back(Pending::Parse {
                    name: RUN_STATEMENT.into(),
                    stmt: portal.stmt.clone(),
                    own: true,
                });
                let bind = proto::rebind(&portal.bind, RUN_STATEMENT);
                self.forward(b'B', &bind);
            }
            self.pending.push_back(Pending::Bind {
                portal: name.to_string(),
            });
            if let Some(s) = self.portals.get_mut(name) {
                s.upstream = true;
            }
        }
        if let Some(d) = describe {
            self.forward(b'D', &d);
            self.pending.push_back(Pending::Describe { stmt: None });
        }
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
            .find(|n| self.portals.contains_key(*n))?;
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
        wire_sha256: Option<&str>,
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
        if let Some(h) = wire_sha256 {
            p.insert("parameters_sha256".into(), json!(h));
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
        if let Some(ip) = self.peer {
            let (k, v) = secondkey_server::gateway::source_fact(ip);
            facts.insert(k, v);
        }
        (action, facts, read_uris, write_uris)
    }

    /// Decides a statement: `Ok(Ok(run))` to forward it, `Ok(Err(_))` to
    /// refuse it, `Err` when the session must end.
    async fn decide(
        &mut self,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
        wire_sha256: Option<&str>,
        protocol: &str,
    ) -> Result<Result<Run, Refusal>, End> {
        // Tables are named by `default_schema`; after the session (or this
        // very query string) may have changed the search path, an
        // unqualified name may be another schema's table.
        if self.names_moved || class.moves_names() {
            if let Some(t) = class.unqualified_table() {
                let schema = &self.sh.conn.default_schema;
                return Ok(Err(Refusal::new(
                    "0A000",
                    format!("secondkey cannot tell which table \"{t}\" names: this session may have changed how names resolve (search_path, role, set_config, a DO block or procedure), and an unqualified table is read as {schema}.{t}; name its schema (schema.{t})"),
                )));
            }
        }
        let decided = self
            .decide_named(class, text, params, wire_sha256, protocol)
            .await;
        if class.moves_names() && matches!(decided, Ok(Ok(_))) {
            self.names_moved = true;
        }
        decided
    }

    async fn decide_named(
        &mut self,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
        wire_sha256: Option<&str>,
        protocol: &str,
    ) -> Result<Result<Run, Refusal>, End> {
        // Names in attribute notation that the catalog has as functions are
        // calls: decided as such, and logged in full (a session's shape of
        // the text may have been made without them).
        let names = class.attribute_names();
        let mut calls = false;
        let called;
        let class = if names.is_empty() {
            class
        } else {
            let found = match self.functions_named(&names, params.is_none()).await? {
                Ok(f) => f,
                Err(r) => return Ok(Err(r)),
            };
            calls = !found.is_empty();
            called = class.calling(&found);
            &called
        };
        let lean = lean_key(class, text, params.is_some(), protocol).filter(|_| !calls);
        let estimated = match params {
            None => self.estimate(class, text).await?,
            Some(_) => None,
        };
        // A statement with an estimate has facts of its own: logged in full.
        let shaped = match lean.filter(|_| estimated.is_none()) {
            Some(k) => {
                match self.shaped(&k.key, k.pieces, class, text, params, wire_sha256, protocol) {
                    Ok((s, new)) => Some((k.key, k.literals, s, new)),
                    Err(r) => return Ok(Err(r)),
                }
            }
            None => None,
        };
        let mut logged = None;
        let (action, facts, reads, writes, lean) = match shaped {
            Some((key, literals, s, new)) => {
                let mut action = s.template.clone();
                let mut values = Map::new();
                if let Some(p) = action.get_mut("params").and_then(Value::as_object_mut) {
                    p.insert("statement".into(), json!(text));
                    if let Some(v) = params {
                        p.insert("parameters".into(), Value::Array(v.to_vec()));
                        values.insert("parameters".into(), Value::Array(v.to_vec()));
                    }
                    if let Some(h) = wire_sha256 {
                        p.insert("parameters_sha256".into(), json!(h));
                        values.insert("parameters_sha256".into(), json!(h));
                    }
                }
                if !literals.is_empty() {
                    values.insert("literals".into(), json!(literals));
                }
                if let Some(n) = &new {
                    let text_bytes = n.text.iter().map(String::len).sum::<usize>();
                    logged = Some((key, s.clone(), text_bytes));
                }
                let lean = secondkey_server::Lean {
                    session: self.shapes.id.clone().unwrap_or_default(),
                    shape: s.digest.clone(),
                    new_shape: new,
                    values,
                };
                (
                    action,
                    s.facts.clone(),
                    s.reads.clone(),
                    s.writes.clone(),
                    Some(lean),
                )
            }
            None => {
                let (action, mut facts, reads, writes) =
                    self.action(class, text, params, wire_sha256, protocol);
                if let Some(rows) = estimated {
                    facts.insert("estimated_rows".into(), json!(rows));
                }
                (action, facts, reads, writes, None)
            }
        };
        let it = Intercept {
            action,
            transport: "pg",
            facts,
        };
        let verdict = match lean {
            Some(l) => self.sh.gateway.intercept_lean(&self.who, it, l).await,
            None => self.sh.gateway.intercept(&self.who, it).await,
        };
        // An allow (a run without a request) logged the new shape with it.
        if let (Some((key, shaped, bytes)), Ok(Verdict::Run(ex))) = (logged, &verdict) {
            if ex.request_id.is_none() {
                self.shape_logged(key, shaped, bytes);
            }
        }
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

    /// The session's shape of a statement, and the shape itself when the
    /// session has not logged it yet (its first allow logs it).
    #[allow(clippy::too_many_arguments)]
    fn shaped(
        &mut self,
        key: &str,
        pieces: Vec<String>,
        class: &Classification,
        text: &str,
        params: Option<&[Value]>,
        wire_sha256: Option<&str>,
        protocol: &str,
    ) -> Result<(Arc<Shaped>, Option<Shape>), Refusal> {
        if let Some(s) = self.shapes.by_key.get(key) {
            return Ok((s.clone(), None));
        }
        let failed = |why: String| {
            Refusal::new(
                "42501",
                format!("secondkey could not log this statement, so it was not run: {why}"),
            )
        };
        if self.shapes.id.is_none() {
            let id = secondkey_server::gateway::new_id("pgs").map_err(|e| failed(e.message))?;
            self.shapes.id = Some(id);
        }
        let (mut template, facts, reads, writes) =
            self.action(class, text, params, wire_sha256, protocol);
        if let Some(p) = template.get_mut("params").and_then(Value::as_object_mut) {
            for k in ["statement", "parameters", "parameters_sha256"] {
                p.remove(k);
            }
        }
        let shape = Shape {
            text: pieces,
            action: template,
            facts: Value::Object(facts),
        };
        let digest = shape.digest().map_err(|e| failed(e.to_string()))?;
        let shaped = Arc::new(Shaped {
            digest,
            template: shape.action.clone(),
            facts: shape.facts.as_object().cloned().unwrap_or_default(),
            reads,
            writes,
        });
        Ok((shaped, Some(shape)))
    }

    /// Remembers a shape the log now holds for this session.
    fn shape_logged(&mut self, key: String, shaped: Arc<Shaped>, text_bytes: usize) {
        let bytes = key.len() + text_bytes;
        if self.shapes.by_key.len() >= MAX_SHAPES || self.shapes.bytes + bytes > MAX_SHAPE_BYTES {
            self.shapes.by_key.clear();
            self.shapes.bytes = 0;
        }
        self.shapes.bytes += bytes;
        self.shapes.by_key.insert(key, shaped);
    }

    /// EXPLAIN's row estimate for a write, delete or export, when the
    /// connection asks for it (`estimate_rows`). Planning evaluates
    /// IMMUTABLE (and, for estimates, STABLE) functions on constants —
    /// also those behind views, column defaults, rules and row security —
    /// and parse analysis reads string constants with their types' input
    /// functions. So it runs only where the database can reach nothing but
    /// PostgreSQL's own code:
    ///
    /// * simple-protocol statements on their own (`COPY table TO` is
    ///   estimated as `SELECT * FROM table`), outside transactions (a
    ///   failing EXPLAIN must not abort the client's), while nothing else
    ///   is in flight;
    /// * calling only functions and operators the classifier knows to be
    ///   built in, naming no type that is not built in;
    /// * and, checked by the server inside the same read-only transaction
    ///   that runs the EXPLAIN, with every table it names locked (ACCESS
    ///   SHARE) first so none can change in between: every table (and its
    ///   partitions or children) is a plain, partitioned or materialized
    ///   table without rules or row security, and neither it nor its
    ///   indexes, defaults and constraints depend on a function, type,
    ///   operator or operator class that is not built in (OID ≥ 16384).
    ///
    /// Otherwise there is no estimate (`estimated_rows` is absent).
    async fn estimate(&mut self, class: &Classification, text: &str) -> Result<Option<i64>, End> {
        use crate::classify::Operation;
        let Some(st) = class.statements.first() else {
            return Ok(None);
        };
        if !self.sh.conn.estimate_rows
            || class.statements.len() != 1
            || !st.unknown_functions.is_empty()
            || st.foreign_types
            || (st.reads.is_empty() && st.writes.is_empty())
            || !matches!(
                class.operation(),
                Operation::Write | Operation::Delete | Operation::Export
            )
            || self.passing.is_some()
        {
            return Ok(None);
        }
        if !self.settle().await? {
            return Ok(None);
        }
        // The server skips to the client's Sync after an error: it would
        // ignore the gateway's own query too.
        if self.tx_status != b'I' || self.passing.is_some() || self.skipping {
            return Ok(None);
        }
        let Some(target) = explain_target(st, text, &self.sh.conn.default_schema) else {
            return Ok(None);
        };
        let tables: Vec<&Table> = st.reads.iter().chain(st.writes.iter()).collect();
        let mut q = BytesMut::new();
        proto::put(&mut q, b'Q', |b| {
            proto::put_cstr(b, &guarded_explain(&tables, &target))
        });
        proto::put(&mut q, b'Q', |b| proto::put_cstr(b, "ROLLBACK"));
        self.upstream
            .write_all(&q)
            .await
            .map_err(|e| End::UpstreamLost(e.to_string()))?;
        let mut plan = None;
        let mut ready = 0;
        while ready < 2 {
            let (ty, body) = self.own_message().await?;
            match ty {
                b'D' => {
                    if let Some(p) =
                        only_value(&body).and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    {
                        plan = Some(p);
                    }
                }
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(self.tx_status);
                    ready += 1;
                }
                // Parameter changes still go to the client.
                b'S' => proto::put_raw(&mut self.cout, ty, &body),
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

    /// Reads the upstream until every response due is in, so that the
    /// gateway may send a query of its own. Responses still due to the
    /// client go first (a driver pipelines a Close behind its last query),
    /// unless one of them may wait for the client itself (COPY FROM
    /// STDIN): then `false`, at once. What the client sent before this
    /// statement may still sit in our buffer: it is sent, or its answers
    /// never come.
    async fn settle(&mut self) -> Result<bool, End> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        while !self.pending.is_empty() {
            if self
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Query { .. } | Pending::Execute(_)))
            {
                return Ok(false);
            }
            self.read_upstream().await?;
            self.on_upstream()?;
        }
        Ok(true)
    }

    /// Which of `names` the upstream's catalog has as functions that a call
    /// in attribute notation (`x.f`, one argument) could reach. The check
    /// goes out under the gateway's own statement and portal name
    /// ([`RUN_STATEMENT`]) and, for a statement of the extended protocol,
    /// without a Sync (it joins the client's batch and commits nothing);
    /// for a simple query with one. When the catalog cannot be asked
    /// without waiting on the client's own statements (one still running,
    /// an aborted transaction, a batch the server skips), every name
    /// counts as a function. A failed check refuses the statement.
    async fn functions_named(
        &mut self,
        names: &std::collections::BTreeSet<String>,
        simple: bool,
    ) -> Result<Result<std::collections::BTreeSet<String>, Refusal>, End> {
        use bytes::BufMut;
        let all = Ok(Ok(names.clone()));
        if self.passing.is_some() {
            return all;
        }
        if !self.settle().await? {
            return all;
        }
        if self.tx_status == b'E' || self.passing.is_some() || self.skipping {
            return all;
        }
        let array: Vec<String> = names
            .iter()
            .map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        let array = format!("{{{}}}", array.join(","));
        let mut q = BytesMut::new();
        let close = |q: &mut BytesMut, kind: u8| {
            proto::put(q, b'C', |b| {
                b.put_u8(kind);
                proto::put_cstr(b, RUN_STATEMENT);
            })
        };
        close(&mut q, b'S');
        proto::put_raw(
            &mut q,
            b'P',
            &parse_body(RUN_STATEMENT, FUNCTIONS_NAMED, &[TEXT_ARRAY]),
        );
        proto::put(&mut q, b'B', |b| {
            proto::put_cstr(b, RUN_STATEMENT);
            proto::put_cstr(b, RUN_STATEMENT);
            b.put_u16(0);
            b.put_u16(1);
            b.put_i32(array.len() as i32);
            b.put_slice(array.as_bytes());
            b.put_u16(0);
        });
        proto::put(&mut q, b'E', |b| {
            proto::put_cstr(b, RUN_STATEMENT);
            b.put_i32(0);
        });
        close(&mut q, b'P');
        close(&mut q, b'S');
        proto::put(&mut q, if simple { b'S' } else { b'H' }, |_| {});
        self.upstream
            .write_all(&q)
            .await
            .map_err(|e| End::UpstreamLost(e.to_string()))?;
        let mut found = std::collections::BTreeSet::new();
        let mut failed = None;
        let mut closed = 0;
        loop {
            let (ty, body) = self.own_message().await?;
            match ty {
                b'D' => {
                    if let Some(b) = only_value(&body) {
                        found.insert(String::from_utf8_lossy(b).into_owned());
                    }
                }
                b'3' => {
                    closed += 1;
                    if closed == 3 && !simple {
                        break;
                    }
                }
                b'E' => {
                    failed = Some(proto::error_fields(&body));
                    if !simple {
                        // The server now skips to the client's Sync.
                        break;
                    }
                }
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(self.tx_status);
                    break;
                }
                // Parameter changes still go to the client.
                b'S' => proto::put_raw(&mut self.cout, ty, &body),
                _ => {}
            }
        }
        Ok(match failed {
            None => Ok(found),
            Some((code, msg)) => Err(Refusal::new(
                "42501",
                format!("secondkey could not check which names of this statement are functions, so it was not run ({code}: {msg})"),
            )),
        })
    }

    /// The next upstream message of the gateway's own query; the body of
    /// one larger than [`MAX_PLAN`] is skipped (returned empty).
    async fn own_message(&mut self) -> Result<(u8, BytesMut), End> {
        loop {
            let head =
                proto::peek_header(&self.uin).map_err(|e| End::UpstreamLost(e.to_string()))?;
            if let Some((ty, len)) = head {
                if len > MAX_PLAN {
                    let mut left = 1 + len;
                    loop {
                        let n = left.min(self.uin.len());
                        let _ = self.uin.split_to(n);
                        left -= n;
                        if left == 0 {
                            return Ok((ty, BytesMut::new()));
                        }
                        self.read_upstream().await?;
                    }
                }
                if let Some(m) = proto::take_message(&mut self.uin, MAX_PLAN)
                    .map_err(|e| End::UpstreamLost(e.to_string()))?
                {
                    return Ok(m);
                }
            }
            self.read_upstream().await?;
        }
    }

    async fn read_upstream(&mut self) -> Result<(), End> {
        room(&mut self.uin);
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
        Ok(())
    }

    /// Wait mode: tell the client at once, then wait for the decision while
    /// watching for a cancel request or the client leaving. What the client
    /// sends meanwhile is read (to see it leave) up to `held_read_bytes`,
    /// each message's header checked against `max_message_bytes`; past
    /// either, the request is withdrawn and the session ends.
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
        let limits = self.sh.conn.limits.clone();
        let deadline = Instant::now() + self.sh.conn.hold_timeout;
        let gw = self.sh.gateway.clone();
        let mut scratch = vec![0u8; 16 << 10];
        let mut read = 0usize;
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
                r = self.client.read(&mut scratch) => W::Client(r),
            };
            match w {
                W::Client(Ok(0)) | W::Client(Err(_)) => {
                    let _ = gw.withdraw(&self.who, id).await;
                    return Err(End::ClientLeft);
                }
                // Pipelined messages wait in the buffer until this one is
                // done — within bounds.
                W::Client(Ok(n)) => {
                    self.cin.extend_from_slice(&scratch[..n]);
                    read += n;
                    let over = match proto::check_headers(&self.cin, limits.max_message_bytes) {
                        Err(ProtoError::TooLarge(len)) => Some(format!(
                            "a message of {len} bytes is larger than the gateway accepts (max_message_bytes = {})",
                            limits.max_message_bytes
                        )),
                        Err(e) => Some(e.to_string()),
                        Ok(()) if read > limits.held_read_bytes => Some(format!(
                            "more than {} bytes arrived while the statement waited (held_read_bytes)",
                            limits.held_read_bytes
                        )),
                        Ok(()) => None,
                    };
                    if let Some(why) = over {
                        let _ = gw.withdraw(&self.who, id).await;
                        let end = self.close(
                            "54000",
                            format!("secondkey ended this session while request {id} was held for approval: {why}; the request was withdrawn and the statement was not run"),
                        );
                        return Err(end);
                    }
                    continue;
                }
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

    /// Forwards every upstream message that arrived, updating the mirrored
    /// state and completing pending entries. Large rows, COPY data, errors
    /// and notices stream through as their bytes arrive.
    fn on_upstream(&mut self) -> Result<(), End> {
        loop {
            if let Some(p) = self.passing.as_mut() {
                let n = p.left.min(self.uin.len());
                if n == 0 {
                    return Ok(());
                }
                let chunk = self.uin.split_to(n);
                let keep = HEAD.saturating_sub(p.head.len()).min(n);
                p.head.extend_from_slice(&chunk[..keep]);
                self.cout.extend_from_slice(&chunk);
                p.left -= n;
                if p.left == 0 {
                    if let Some(p) = self.passing.take() {
                        self.upstream_message(p.ty, &p.head)?;
                        self.emit_said();
                    }
                }
                continue;
            }
            let head =
                proto::peek_header(&self.uin).map_err(|e| End::UpstreamLost(e.to_string()))?;
            let Some((ty, len)) = head else {
                return Ok(());
            };
            if len > PASS_AT && matches!(ty, b'D' | b'd' | b'E' | b'N' | b'A') {
                let header = self.uin.split_to(5);
                self.cout.extend_from_slice(&header);
                self.passing = Some(Passing {
                    ty,
                    left: len - 4,
                    head: BytesMut::new(),
                });
                continue;
            }
            let Some((ty, body)) = proto::take_message(&mut self.uin, MAX_INSPECTED)
                .map_err(|e| End::UpstreamLost(format!("the upstream sent {e}")))?
            else {
                return Ok(());
            };
            if self.upstream_message(ty, &body)? {
                proto::put_raw(&mut self.cout, ty, &body);
            }
            self.emit_said();
        }
    }

    /// Updates the mirror for one upstream message; `false` when the
    /// message answers the gateway's own and is not the client's. An
    /// answer that is not the one due ends the session: the mirror no
    /// longer shows what the server holds, and a decision made on it could
    /// be a decision of another statement.
    fn upstream_message(&mut self, ty: u8, body: &[u8]) -> Result<bool, End> {
        match ty {
            b'1' => match self.pop_if(|p| matches!(p, Pending::Parse { .. })) {
                Some(Pending::Parse { name, stmt, own }) => {
                    if own {
                        return Ok(false);
                    }
                    self.put_statement(name, stmt);
                }
                _ => return Err(self.lost_track("ParseComplete")),
            },
            // The client had its BindComplete when it sent the Bind.
            b'2' => {
                return match self.pop_if(|p| matches!(p, Pending::Bind { .. })) {
                    Some(_) => Ok(false),
                    None => Err(self.lost_track("BindComplete")),
                };
            }
            b'3' => match self.pop_if(|p| matches!(p, Pending::Close { .. })) {
                Some(Pending::Close { kind, name, own }) => {
                    if own {
                        return Ok(false);
                    }
                    if kind == b'S' {
                        self.drop_statement(&name);
                    }
                }
                _ => return Err(self.lost_track("CloseComplete")),
            },
            b't' => {
                if let Some(Pending::Describe { stmt: Some(s) }) = self.pending.front() {
                    let mut r = proto::Reader::new(body, "ParameterDescription");
                    if let Ok(n) = r.count() {
                        let types: Vec<u32> = (0..n)
                            .filter_map(|_| r.i32().ok().map(|t| t as u32))
                            .collect();
                        let _ = s.described.set(types);
                    }
                }
            }
            b'T' | b'n' => {
                self.pop_if(|p| matches!(p, Pending::Describe { .. }));
            }
            b'C' | b'I' | b's' => {
                let tag = proto::Reader::new(body, "CommandComplete")
                    .cstr()
                    .unwrap_or("")
                    .to_string();
                let mut special = Special::None;
                match self.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(Some(mut run))) = self.pending.pop_front() {
                            if ty == b'C' {
                                run.tags.push(tag.clone());
                            }
                            self.record(*run);
                        }
                    }
                    Some(Pending::Query { run, special: s }) => {
                        if ty == b'C' {
                            if let Some(run) = run {
                                run.tags.push(tag.clone());
                            }
                            special = s.clone();
                        }
                    }
                    _ => return Err(self.lost_track("CommandComplete")),
                }
                match special {
                    Special::Deallocate(Some(name)) if tag == "DEALLOCATE" => {
                        self.drop_statement(&name);
                    }
                    Special::Deallocate(None) => {
                        let names: Vec<String> = self.statements.keys().cloned().collect();
                        for n in names {
                            self.drop_statement(&n);
                        }
                        if tag == "DISCARD ALL" {
                            self.end_portals(self.syncs_done + 1);
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
                        if !self.batch_failed(code, msg) {
                            // The client has not sent its Sync yet: what it
                            // sends up to it, the server ignores.
                            self.skipping = true;
                        }
                    }
                }
            }
            b'Z' => {
                self.syncs_done += 1;
                self.tx_status = body.first().copied().unwrap_or(b'I');
                // What is still due before the Sync (or query) this answers
                // was skipped by the server.
                while self
                    .pending
                    .front()
                    .is_some_and(|p| !matches!(p, Pending::Sync | Pending::Query { .. }))
                {
                    if let Some(p) = self.pending.pop_front() {
                        self.skipped(p);
                    }
                }
                match self.pending.pop_front() {
                    Some(Pending::Query { run: Some(run), .. }) => self.record(*run),
                    Some(_) => {}
                    None => return Err(self.lost_track("ReadyForQuery")),
                }
                if self.tx_status == b'I' {
                    // Portals end with their transaction.
                    self.end_portals(self.syncs_done);
                }
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
        Ok(true)
    }

    /// Ends the session on an upstream answer that is not the one due.
    fn lost_track(&mut self, what: &str) -> End {
        self.close(
            "08P01",
            format!("secondkey lost track of the upstream's answers (a {what} arrived where none was due) and closed the session; the statements still running have an unknown outcome"),
        )
    }

    /// Something sent upstream that the server skipped (after an error in
    /// its batch): a Parse created nothing, a Bind bound nothing, an
    /// Execute did not run; what the gateway would have said of it is not
    /// said.
    fn skipped(&mut self, p: Pending) {
        match p {
            Pending::Execute(Some(mut run))
            | Pending::Query {
                run: Some(mut run), ..
            } => {
                run.error = Some(not_run());
                self.record(*run);
            }
            Pending::Bind { portal } => self.unbind(&portal),
            // Never created: its text is no longer kept.
            Pending::Parse {
                stmt, own: false, ..
            }
            | Pending::Say {
                parsed: Some((_, stmt)),
                ..
            } => {
                self.kept = self.kept.saturating_sub(stmt.text.len());
            }
            _ => {}
        }
    }

    /// An extended-protocol message failed: the server skips everything up
    /// to Sync. A failure of what was sent for an Execute (the statement's
    /// own Parse, its Bind) is that Execute's error; anything later did
    /// not run. `false` when no Sync is queued (the client has not sent it
    /// yet).
    fn batch_failed(&mut self, code: String, msg: String) -> bool {
        let mut carried = false;
        let mut first = true;
        while let Some(p) = self.pending.front() {
            if !first && matches!(p, Pending::Sync) {
                return true;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            match p {
                Pending::Execute(Some(mut run))
                | Pending::Query {
                    run: Some(mut run), ..
                } if first || carried => {
                    run.error = Some((code.clone(), msg.clone()));
                    carried = false;
                    self.record(*run);
                }
                Pending::Bind { .. }
                | Pending::Parse { own: true, .. }
                | Pending::Close { own: true, .. } => {
                    carried = carried || first;
                    self.skipped(p);
                }
                p => self.skipped(p),
            }
            first = false;
        }
        false
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
            if let Some(Pending::Say {
                bytes,
                ready,
                parsed,
            }) = self.pending.pop_front()
            {
                self.cout.extend_from_slice(&bytes);
                if ready {
                    proto::ready(&mut self.cout, self.tx_status);
                }
                if let Some((name, stmt)) = parsed {
                    self.put_statement(name, stmt);
                }
            }
        }
    }

    /// Reports a finished statement to the log, off the client's path.
    fn record(&self, run: Run) {
        let (gw, who) = (&self.sh.gateway, &self.who);
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
        gw.record_execution_later(who, run.ex, result, "a statement");
    }
}

/// Whether a statement can be logged lean, and under which key of the
/// session's shapes: a bound statement by its text (its values are the
/// parameters); a simple query whose classification does not depend on
/// its literals by its text cut at them ([`crate::cache::split_literals`])
/// and the kind of each literal. Cut statements (longer than
/// [`MAX_STATEMENT_CHARS`]) are logged in full.
fn lean_key(class: &Classification, text: &str, bound: bool, protocol: &str) -> Option<LeanKey> {
    if text.chars().count() > MAX_STATEMENT_CHARS {
        return None;
    }
    if bound {
        return Some(LeanKey {
            key: format!("{protocol}\0{text}"),
            pieces: vec![text.to_string()],
            literals: vec![],
        });
    }
    if !class.literal_independent {
        return None;
    }
    let (pieces, literals) = crate::cache::split_literals(text)?;
    let kinds: String = literals
        .iter()
        .map(|l| match l.as_bytes().first() {
            Some(b'\'') => 's',
            _ if l.contains('.') => 'd',
            _ => 'i',
        })
        .collect();
    Some(LeanKey {
        key: format!("{protocol}\0{kinds}\0{}", pieces.join("\0")),
        pieces,
        literals,
    })
}

/// A Parse message body.
fn parse_body(name: &str, text: &str, types: &[u32]) -> BytesMut {
    use bytes::BufMut;
    let mut b = BytesMut::new();
    proto::put_cstr(&mut b, name);
    proto::put_cstr(&mut b, text);
    b.put_u16(types.len() as u16);
    for t in types {
        b.put_u32(*t);
    }
    b
}

/// What the gateway's EXPLAIN explains: the statement, or for `COPY table
/// TO` the equivalent `SELECT * FROM table`.
fn explain_target(st: &Statement, text: &str, default_schema: &str) -> Option<String> {
    if st.command != "CopyStmt" {
        return Some(text.to_string());
    }
    match (st.reads.iter().next(), st.reads.len()) {
        (Some(t), 1)
            if text
                .trim_start()
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("copy ")) =>
        {
            Some(format!(
                "SELECT * FROM {}.{}",
                ident(t.schema.as_deref().unwrap_or(default_schema)),
                ident(&t.name)
            ))
        }
        _ => None,
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The server-side check of [`Session::estimate`]: the tables a statement
/// names (`$names`, resolved like the statement's own) and everything
/// planning could reach through them are built in. Every operator and
/// function is schema-qualified, so a search path cannot change what the
/// check itself runs. It fails (an integer cast of a text) when unsafe,
/// which skips the EXPLAIN after it.
const GUARD: &str = "WITH RECURSIVE named(rel) AS ( \
 SELECT pg_catalog.to_regclass(n) FROM pg_catalog.unnest(ARRAY[$names]::pg_catalog.text[]) AS n \
), rels(rel) AS ( \
 SELECT rel::pg_catalog.oid FROM named WHERE rel IS NOT NULL \
 UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i, rels r WHERE i.inhparent OPERATOR(pg_catalog.=) r.rel \
), owned(classid, objid) AS ( \
 SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, rel FROM rels \
 UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, x.indexrelid FROM pg_catalog.pg_index x, rels r WHERE x.indrelid OPERATOR(pg_catalog.=) r.rel \
 UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::pg_catalog.oid, a.oid FROM pg_catalog.pg_attrdef a, rels r WHERE a.adrelid OPERATOR(pg_catalog.=) r.rel \
 UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, c.oid FROM pg_catalog.pg_constraint c, rels r WHERE c.conrelid OPERATOR(pg_catalog.=) r.rel \
) SELECT CASE WHEN \
 NOT EXISTS (SELECT FROM named WHERE rel IS NULL) \
 AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c, rels r WHERE c.oid OPERATOR(pg_catalog.=) r.rel \
 AND (c.relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p', 'm']::pg_catalog.\"char\"[]) OR c.relhasrules OR c.relrowsecurity)) \
 AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d, owned o \
 WHERE d.classid OPERATOR(pg_catalog.=) o.classid AND d.objid OPERATOR(pg_catalog.=) o.objid \
 AND d.refobjid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid \
 AND d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_type'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass, 'pg_catalog.pg_opclass'::pg_catalog.regclass, 'pg_catalog.pg_opfamily'::pg_catalog.regclass]::pg_catalog.oid[])) \
 THEN 'built in' \
 ELSE pg_catalog.int4(('secondkey: no estimate ' OPERATOR(pg_catalog.||) pg_catalog.now()::pg_catalog.text))::pg_catalog.text END";

/// One simple query: a read-only transaction that locks the tables, runs
/// [`GUARD`] and only then the EXPLAIN (a failing statement skips the rest
/// of the string). The caller sends ROLLBACK after it.
fn guarded_explain(tables: &[&Table], target: &str) -> String {
    let name = |t: &Table| match &t.schema {
        Some(s) => format!("{}.{}", ident(s), ident(&t.name)),
        None => ident(&t.name),
    };
    let lock: Vec<String> = tables.iter().map(|t| name(t)).collect();
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("'{}'", name(t).replace('\'', "''")))
        .collect();
    format!(
        "BEGIN READ ONLY; SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '10s'; LOCK TABLE {} IN ACCESS SHARE MODE; {}; EXPLAIN (FORMAT JSON) {target}",
        lock.join(", "),
        GUARD.replace("$names", &names.join(", "))
    )
}

/// The functions a call in attribute notation could reach, among the
/// names in `$1` (see [`Session::functions_named`]); like [`GUARD`],
/// schema-qualified throughout.
const FUNCTIONS_NAMED: &str = "SELECT DISTINCT p.proname::pg_catalog.text FROM pg_catalog.pg_proc p \
 WHERE p.proname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1) AND p.pronargs OPERATOR(pg_catalog.>=) 1";
/// The type oid of `text[]`.
const TEXT_ARRAY: u32 = 1009;

/// The value of a DataRow of one column (not NULL).
fn only_value(body: &[u8]) -> Option<&[u8]> {
    let mut r = proto::Reader::new(body, "DataRow");
    match (r.i16(), r.i32()) {
        (Ok(1), Ok(len)) if len >= 0 => r.bytes(len as usize).ok(),
        _ => None,
    }
}

/// The error recorded for a statement the server skipped.
fn not_run() -> (String, String) {
    (
        "not_run".into(),
        "not executed: an earlier message of the batch failed".into(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guarded_explain_is_one_valid_query_string() {
        let tables = [
            Table {
                schema: None,
                name: "orders".into(),
            },
            Table {
                schema: Some("we\"ird".into()),
                name: "it's".into(),
            },
        ];
        let refs: Vec<&Table> = tables.iter().collect();
        let q = guarded_explain(&refs, "DELETE FROM orders WHERE id > 15");
        let parsed = pg_query::parse(&q, 0).expect("parses");
        assert_eq!(parsed.protobuf.stmts.len(), 6, "{q}");
        assert!(q.contains("LOCK TABLE \"orders\", \"we\"\"ird\".\"it's\" IN ACCESS SHARE MODE"));
        assert!(q.contains("'\"we\"\"ird\".\"it''s\"'"), "{q}");
        assert!(q.ends_with("EXPLAIN (FORMAT JSON) DELETE FROM orders WHERE id > 15"));
    }

    #[test]
    fn only_statements_classified_alike_share_a_shape() {
        let opts = crate::classify::Options::default();
        let key = |sql: &str, bound: bool| {
            let c = crate::classify::classify(sql, &opts).unwrap();
            let p = if bound { "extended" } else { "simple" };
            lean_key(&c, sql, bound, p)
        };
        let a = key("SELECT a FROM t WHERE b = 1", false).unwrap();
        let b = key("SELECT a FROM t WHERE b = 22", false).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(
            (b.pieces, b.literals),
            (
                vec!["SELECT a FROM t WHERE b = ".to_string(), String::new()],
                vec!["22".to_string()]
            )
        );
        // Another kind of literal, other whitespace: another shape.
        assert_ne!(
            key("SELECT a FROM t WHERE b = '1'", false).unwrap().key,
            a.key
        );
        assert_ne!(
            key("SELECT a FROM t WHERE b = 1.5", false).unwrap().key,
            a.key
        );
        assert_ne!(
            key("SELECT a FROM t  WHERE b = 1", false).unwrap().key,
            a.key
        );
        // What a literal can change is never shared, nor what the scanner
        // does not read.
        assert!(key("SET application_name = 'x'", false).is_none());
        assert!(key("SELECT a FROM t WHERE b = 1 -- c", false).is_none());
        // A bound statement is its text; its values are its parameters.
        let e = key("SELECT a FROM t WHERE b = $1", true).unwrap();
        assert_eq!(e.pieces, ["SELECT a FROM t WHERE b = $1"]);
        assert!(e.literals.is_empty());
        assert_ne!(
            key("SELECT a FROM t WHERE b = $1", false).unwrap().key,
            e.key
        );
        // A statement cut in the action is logged in full.
        let long = format!(
            "SELECT a FROM t WHERE b = 1 {}",
            " ".repeat(MAX_STATEMENT_CHARS)
        );
        assert!(key(&long, true).is_none());
    }

    #[test]
    fn parse_bodies_round_trip() {
        let b = parse_body("s", "SELECT $1", &[23]);
        let p = proto::parse_parse(&b).unwrap();
        assert_eq!((p.name, p.query, p.types), ("s", "SELECT $1", vec![23]));
    }
}
