//! The PostgreSQL backend: several gateway replicas share one database and
//! one log.
//!
//! Each replica has its own writer thread doing group commit, as on SQLite.
//! A batch begins by locking the one row of `log_head` (`SELECT … FOR
//! UPDATE`), so batches from all replicas commit one after another: appends
//! are totally ordered, and every compare-and-set a job does (single use of
//! a grant, a request's state) sees the batches before it. Before its jobs
//! run, the batch brings the replica's tree up to the head (reading what
//! other replicas appended), so indices are contiguous and every replica's
//! tree — and so every checkpoint signed over it — is the same. A commit
//! that appended sends `NOTIFY secondkey_log`; each replica's follower
//! listens and catches its tree up at once (and at least once a second,
//! should a notification be lost), and `secondkey_requests` carries the ids
//! of requests that changed, so long-polls on every replica wake.
//!
//! The client is `tokio-postgres`, driven by a small runtime of the store's
//! own; callers block on its futures (as on SQLite's blocking calls).
//! Connections use TLS with the certificate chain and the host name
//! verified (`sslmode=verify-full`, the default), or none at all
//! (`sslmode=disable`, for a Unix socket or loopback).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use secondkey_core::request::{Request, RequestState};
use secondkey_log::merkle::{leaf_hash, Hash, Tree};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::store::{JobFn, JobResult, Opened, Readers as AnyReaders, Writer};
use crate::{
    anchored_tree, decode_request, parties_of, state_str, GrantRow, Reads, Shared, StoreError,
    StoreOptions, Tx,
};

/// The newest schema version this binary knows.
pub const PG_SCHEMA_VERSION: i64 = 2;

/// Each migration moves the schema one version forward, in one
/// transaction, under an advisory lock (so replicas started together do
/// not race). Text keys are `COLLATE "C"`: byte order, as on SQLite, so
/// paging and prefix listing agree between backends.
const PG_MIGRATIONS: &[&str] = &[
    // 1: the first schema (SQLite's version 5, plus the log head).
    r#"CREATE TABLE log_head (
        id   integer PRIMARY KEY CHECK (id = 1),
        size bigint NOT NULL CHECK (size >= 0)
     );
     INSERT INTO log_head VALUES (1, 0);
     CREATE TABLE log_entries (
        idx  bigint PRIMARY KEY,
        data bytea NOT NULL
     );
     CREATE TABLE requests (
        id               text COLLATE "C" PRIMARY KEY,
        state            text NOT NULL,
        requester        text COLLATE "C" NOT NULL,
        created_at       bigint NOT NULL,
        expires_at       bigint NOT NULL,
        grant_expires_at bigint,
        escalated        boolean NOT NULL DEFAULT false,
        body             text NOT NULL,
        digest           text COLLATE "C"
     );
     CREATE INDEX requests_by_state ON requests(state, expires_at);
     CREATE INDEX requests_by_created ON requests(created_at, id);
     CREATE INDEX requests_by_digest ON requests(requester, digest, state);
     CREATE INDEX requests_pending_by_requester ON requests(requester, expires_at)
        WHERE state = 'pending';
     CREATE TABLE request_parties (
        party      text COLLATE "C" NOT NULL,
        request_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (party, request_id)
     );
     CREATE TABLE grants (
        id         text COLLATE "C" PRIMARY KEY,
        request_id text,
        digest     text NOT NULL,
        requester  text NOT NULL,
        expires_at bigint NOT NULL,
        used_at    bigint
     );
     CREATE TABLE meta (
        key   text COLLATE "C" PRIMARY KEY,
        value text NOT NULL
     );
     CREATE TABLE records (
        ns    text COLLATE "C" NOT NULL,
        key   text COLLATE "C" NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (ns, key)
     );"#,
    // 2: the log entries of each request (its timeline), filled at append
    // from the entry's `request` subject, and here from the entries so far.
    r#"CREATE TABLE log_by_request (
        request_id text COLLATE "C" NOT NULL,
        idx        bigint NOT NULL,
        PRIMARY KEY (request_id, idx)
     );
     INSERT INTO log_by_request
        SELECT r, idx FROM (
            SELECT convert_from(data, 'UTF8')::jsonb -> 'subjects' ->> 'request' AS r, idx
            FROM log_entries) e
        WHERE r IS NOT NULL
        ON CONFLICT DO NOTHING;"#,
];

/// The advisory lock key migrations run under ("secondke" in ASCII).
const MIGRATION_LOCK: i64 = 0x7365_636f_6e64_6b65;

/// Where the log's commits are announced (payload: the new size).
const LOG_CHANNEL: &str = "secondkey_log";
/// Where changed requests are announced (payload: `<replica>:<request id>`,
/// so a replica skips its own, which it announced already).
const REQUEST_CHANNEL: &str = "secondkey_requests";

/// How `/healthz` reports a follower that cannot reach the database.
const FOLLOW_FAILED: &str = "cannot follow the shared log";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sent data may stay unacknowledged before a store connection is
/// given up (see `PgOptions::target`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a follower catches up even without a notification.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach the PostgreSQL store.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host[:port]/db[?sslmode=verify-full|disable&sslrootcert=FILE]`
    /// with no password in it.
    pub url: String,
    /// The password (from `password_env` or `password_file`), if any.
    pub password: Option<String>,
    /// PEM file of the certificate authorities to trust; the system-wide
    /// web roots when absent. Overrides `sslrootcert` of the URL.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// How connections are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// TLS, certificate chain and host name verified.
    VerifyFull { ca_file: Option<PathBuf> },
    /// No TLS (a Unix socket, or loopback in tests).
    Disable,
}

/// A parsed [`PgOptions`]: what to connect to and how.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    tls: PgTls,
    /// `user@host:port/db`, for messages (never the password).
    pub(crate) display: String,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            password: None,
            ca_file: None,
        }
    }

    /// Checks the URL: a `postgres://` or `postgresql://` URL with a user and
    /// database, no password in it (give it through `password_env` or
    /// `password_file`), `sslmode` `verify-full` (the default) or `disable`.
    /// Returns how connections will be secured.
    pub fn check(&self) -> Result<PgTls, String> {
        self.target().map(|t| t.tls)
    }

    /// Reads the CA file TLS would trust (`ca_file`, else the URL's
    /// `sslrootcert`), so that a missing, unreadable or empty one is a
    /// configuration error at start, not at the first connection.
    pub fn check_ca(&self) -> Result<(), String> {
        match self.check()? {
            PgTls::VerifyFull { ca_file: Some(p) } => match tls::connector(Some(&p)) {
                Ok(_) => Ok(()),
                Err(StoreError::Pg(m)) => Err(m),
                Err(e) => Err(e.to_string()),
            },
            _ => Ok(()),
        }
    }

    pub(crate) fn target(&self) -> Result<Target, String> {
        let url = self.url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL".into());
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut sslmode = "verify-full".to_string();
        let mut rootcert: Option<PathBuf> = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => sslmode = v.to_string(),
                "sslrootcert" => rootcert = Some(PathBuf::from(v)),
                "password" => {
                    return Err(
                        "must not carry the password; set password_env or password_file".into(),
                    )
                }
                _ => rest.push(pair),
            }
        }
        let tls = match sslmode.as_str() {
            "verify-full" => PgTls::VerifyFull {
                ca_file: self.ca_file.clone().or(rootcert),
            },
            "disable" => PgTls::Disable,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported: use verify-full (TLS, certificate and host name checked; the default) or disable (Unix socket or loopback only)"
                ))
            }
        };
        let cleaned = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: tokio_postgres::Config = cleaned
            .parse()
            .map_err(|e| format!("is not a valid PostgreSQL URL: {e}"))?;
        if config.get_password().is_some() {
            return Err("must not carry the password; set password_env or password_file".into());
        }
        if matches!(tls, PgTls::Disable) && !loopback_only(&config) {
            return Err("sslmode=disable is for a Unix socket or loopback only (localhost, 127.0.0.1, ::1): to another host the store's traffic would cross the network in clear; use verify-full (the default) with ca_file".into());
        }
        let user = config
            .get_user()
            .ok_or("must name the user (postgres://USER@host/db)")?
            .to_string();
        let db = config
            .get_dbname()
            .ok_or("must name the database (postgres://user@host/DB)")?
            .to_string();
        if let Some(p) = &self.password {
            config.password(p.as_bytes());
        }
        // The TLS connector passed at connect does the verification;
        // `Require` makes the client refuse to go on without TLS.
        config.ssl_mode(match tls {
            PgTls::VerifyFull { .. } => tokio_postgres::config::SslMode::Require,
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
        });
        config.connect_timeout(CONNECT_TIMEOUT);
        // A connection whose peer vanished (a failover, a cut network) must
        // fail soon, not after the kernel's retransmissions (~15 minutes):
        // the writer would hold every decision meanwhile, and a `LISTEN`
        // connection would miss notifications unseen. Unless the URL says
        // otherwise: unacknowledged data for 15 s ends the connection, and
        // an idle one is probed after 15 s, every 5 s, three times.
        if !rest.iter().any(|p| p.starts_with("tcp_user_timeout=")) {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if !rest.iter().any(|p| p.starts_with("keepalives")) {
            config.keepalives_idle(Duration::from_secs(15));
            config.keepalives_interval(Duration::from_secs(5));
            config.keepalives_retries(3);
        }
        config.application_name("secondkey");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        // An IPv6 address is written in brackets, as in the URL.
        let host = if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Target {
            config,
            tls,
            display: format!("postgres://{user}@{host}:{port}/{db}"),
        })
    }
}

/// Whether every address a connection may go to is this machine: a Unix
/// socket, `localhost` or a loopback IP (hosts and `hostaddr`s alike).
fn loopback_only(config: &tokio_postgres::Config) -> bool {
    let host = |h: &tokio_postgres::config::Host| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(h) => {
            h.eq_ignore_ascii_case("localhost")
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    config.get_hosts().iter().all(host) && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// The store's own runtime, which drives every connection. Shut down in
/// the background when the store goes, since it may be dropped inside
/// another runtime.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn new() -> Result<Arc<Runtime>, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("secondkey-store-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Pg(format!("cannot start the client runtime: {e}")))?;
        Ok(Arc::new(Runtime(Some(rt))))
    }

    fn handle(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.0.as_ref().ok_or(StoreError::Unavailable)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One connection, with its prepared statements.
struct PgConn {
    client: Arc<Client>,
    stmts: HashMap<&'static str, Statement>,
    /// How many times the caller waited for the server's answer.
    waits: u64,
    /// Statements sent and not yet answered, oldest first (the writer's
    /// pipeline; empty on reader connections). Each wait takes their
    /// answers first: the server answers in order.
    inflight: Vec<Sent>,
    /// A statement of the batch itself (a savepoint, the log rows, the
    /// commit) failed: the transaction can only be rolled back.
    broken: Option<String>,
}

/// A statement sent down the writer's connection, not yet answered.
struct Sent {
    answer: Answer,
    /// Whose failure it is: the batch's (the transaction can only be
    /// rolled back) or one job's.
    owner: Owner,
}

/// Parameters of a statement sent without waiting (shared, so that the
/// statement can be sent again: see [`PgWriter::settle`]).
type Owned = Vec<Arc<dyn ToSql + Send + Sync>>;

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// A job's write, kept until the batch commits: should a job of the batch
/// fail after writing, the transaction goes back to the batch's savepoint
/// and the writes of the other jobs are sent again.
struct Recorded {
    /// The job's position in the batch.
    job: usize,
    sql: &'static str,
    params: Owned,
    /// How many rows it changed, when the job was told (a compare-and-set).
    rows: Option<u64>,
    /// PostgreSQL answered it without error: sent again, it must do the
    /// same (its failure is then the batch's).
    confirmed: bool,
}

/// Who a deferred statement belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    /// The job at this position of the batch: its failure fails that job
    /// alone.
    Job(usize),
    /// The batch: its failure fails every job in it.
    Batch,
}

/// What the writer's committed batches cost, summed since the store was
/// opened (see [`Store::writer_stats`](crate::Store::writer_stats)): where a
/// batch's time goes, and how many times it waited for PostgreSQL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Committed batches.
    pub batches: u64,
    /// Jobs in them (committed or rolled back alone).
    pub jobs: u64,
    /// Times the writer waited for PostgreSQL's answer (round trips).
    pub round_trips: u64,
    /// `BEGIN`, the log head's row lock and catching the tree up.
    pub begin: Duration,
    /// Running the jobs (and undoing those that failed after writing).
    pub run: Duration,
    /// Writing the log head, notifying, `COMMIT` (durable when it returns).
    pub commit: Duration,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        StoreError::PgDown(with_causes(&e))
    } else {
        // The server's own words: code, message, detail.
        let db = e.as_db_error().map(|d| {
            format!(
                "{} ({}){}",
                d.message(),
                d.code().code(),
                d.detail().map(|x| format!(": {x}")).unwrap_or_default()
            )
        });
        StoreError::Pg(db.unwrap_or_else(|| e.to_string()))
    }
}

/// An error with its causes: tokio-postgres names only the step that
/// failed ("error performing TLS handshake", "error connecting to server");
/// what to fix — an unknown certificate issuer, a host name the
/// certificate does not name, a refused connection — is in its sources.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
        next = cause.source();
    }
    out
}

/// Connects on the store's runtime and waits for it (callers may be inside
/// another runtime, or none).
fn connect(rt: &Runtime, target: &Target) -> Result<PgConn, StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let config = target.config.clone();
    let tls = target.tls.clone();
    rt.handle()?.spawn(async move {
        match tls {
            PgTls::Disable => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    let _ = tx.send(Ok(client));
                    let _ = conn.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(pg_err(e)));
                }
            },
            PgTls::VerifyFull { ca_file } => {
                let connector = match tls::connector(ca_file.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                match config.connect(connector).await {
                    Ok((client, conn)) => {
                        let _ = tx.send(Ok(client));
                        let _ = conn.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(pg_err(e)));
                    }
                }
            }
        }
    });
    let client = rx
        .recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(2))
        .map_err(|_| StoreError::PgDown(format!("{}: connection timed out", target.display)))?
        .map_err(|e| match e {
            StoreError::PgDown(m) => StoreError::PgDown(format!("{}: {m}", target.display)),
            e => e,
        })?;
    Ok(PgConn {
        client: Arc::new(client),
        stmts: HashMap::new(),
        waits: 0,
        inflight: Vec::new(),
        broken: None,
    })
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Takes the answers of statements sent earlier, in order; the first
/// failure and whose statement it was.
async fn drain(sent: Vec<Sent>) -> Result<(), (StoreError, Owner)> {
    let mut first = None;
    for s in sent {
        // Every answer is taken, even after a failure, so none is left
        // queued on the connection.
        if let Err(e) = s.answer.await {
            first.get_or_insert((e, s.owner));
        }
    }
    first.map_or(Ok(()), Err)
}

impl PgConn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client.clone();
        let s = self.wait(async move { client.prepare(sql).await })?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    /// Waits for `answer`, and first for the statements sent before it
    /// (sent down the connection together: one round trip). The first of
    /// those that failed is the error; one of the batch's marks the
    /// connection broken until the batch is over.
    fn wait<T>(
        &mut self,
        answer: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        self.waits += 1;
        if self.inflight.is_empty() {
            let out = futures_executor::block_on(answer);
            return out.map_err(pg_err);
        }
        let earlier = std::mem::take(&mut self.inflight);
        let (earlier, out) =
            futures_executor::block_on(futures_util::future::join(drain(earlier), answer));
        self.settle(earlier)?;
        out.map_err(pg_err)
    }

    /// Waits for the statements sent so far (one round trip).
    fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_owned().map_err(|(e, _)| e)
    }

    /// [`PgConn::flush`], saying whose statement failed first (the server
    /// refuses every later one of the transaction until it is rolled
    /// back). A lost connection is the batch's failure, whoever's
    /// statement met it.
    fn flush_owned(&mut self) -> Result<(), (StoreError, Owner)> {
        if self.inflight.is_empty() {
            return Ok(());
        }
        self.waits += 1;
        let earlier = std::mem::take(&mut self.inflight);
        let earlier = futures_executor::block_on(drain(earlier));
        match earlier {
            Ok(()) => Ok(()),
            Err((e, owner)) => {
                let owner = match e {
                    StoreError::PgDown(_) => Owner::Batch,
                    _ if self.client.is_closed() => Owner::Batch,
                    _ => owner,
                };
                if owner == Owner::Batch && self.broken.is_none() {
                    self.broken = Some(e.to_string());
                }
                Err((e, owner))
            }
        }
    }

    /// Whether a job's statement is still unanswered.
    fn owes_jobs(&self) -> bool {
        self.inflight.iter().any(|s| s.owner != Owner::Batch)
    }

    fn settle(&mut self, earlier: Result<(), (StoreError, Owner)>) -> Result<(), StoreError> {
        match earlier {
            Ok(()) => Ok(()),
            Err((e, owner)) => {
                if owner == Owner::Batch && self.broken.is_none() {
                    self.broken = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Sends a prepared statement without waiting for its answer: it is
    /// checked at the next wait (and, with `rows`, that it changed that
    /// many rows). The server runs statements in the order sent, so
    /// whatever is sent after it sees its effect.
    fn defer(
        &mut self,
        sql: &'static str,
        params: Owned,
        rows: Option<u64>,
        owner: Owner,
    ) -> Result<(), StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        self.send(
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                let n = client.execute(&stmt, &refs).await.map_err(pg_err)?;
                match rows {
                    Some(want) if want != n => Err(StoreError::Pg(format!(
                        "a statement changed {n} rows, not the {want} expected"
                    ))),
                    _ => Ok(()),
                }
            }),
            owner,
        );
        Ok(())
    }

    /// [`PgConn::defer`] of statements without parameters.
    fn defer_simple(&mut self, sql: &'static str, owner: Owner) {
        let client = self.client.clone();
        self.send(
            Box::pin(async move { client.batch_execute(sql).await.map_err(pg_err) }),
            owner,
        );
    }

    fn send(&mut self, mut answer: Answer, owner: Owner) {
        // tokio-postgres sends a request when its future is first polled;
        // the answer is collected later (in order, by `drain`).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(r) = answer.as_mut().poll(&mut cx) {
            answer = Box::pin(std::future::ready(r));
        }
        self.inflight.push(Sent { answer, owner });
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        self.wait(async move { client.query(&stmt, params).await })
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        self.wait(async move { client.query_opt(&stmt, params).await })
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        self.wait(async move { client.execute(&stmt, params).await })
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let client = self.client.clone();
        self.wait(async move { client.batch_execute(sql).await })
    }

    fn head(&mut self, lock: bool) -> Result<u64, StoreError> {
        let row = if lock {
            self.query_opt("SELECT size FROM log_head WHERE id = 1 FOR UPDATE", &[])?
        } else {
            self.query_opt("SELECT size FROM log_head WHERE id = 1", &[])?
        };
        let size: i64 = row
            .ok_or_else(|| StoreError::Corrupt("the log_head row is missing".into()))?
            .get(0);
        u64::try_from(size).map_err(|_| StoreError::Corrupt("negative log size".into()))
    }

    /// Leaf hashes of the entries `[from, to)`, checked to be contiguous.
    fn leaf_hashes(&mut self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = self.entries(from, to)?;
        let mut out = Vec::with_capacity(rows.len());
        for (want, (idx, data)) in (from as i64..).zip(rows) {
            if idx != want {
                return Err(StoreError::Tampered(format!("log entry {want} is missing")));
            }
            out.push(leaf_hash(&data));
        }
        if (out.len() as u64) != to - from {
            return Err(StoreError::Tampered(format!(
                "the log head says {to} entries but entry {} is missing",
                from + out.len() as u64
            )));
        }
        Ok(out)
    }

    /// The schema version, 0 when there is none yet.
    fn schema_version(&mut self) -> Result<i64, StoreError> {
        let exists: bool = futures_executor::block_on(
            self.client
                .query_one("SELECT to_regclass('secondkey_schema') IS NOT NULL", &[]),
        )
        .map_err(pg_err)?
        .get(0);
        if !exists {
            return Ok(0);
        }
        let row = futures_executor::block_on(
            self.client
                .query_one("SELECT max(version) FROM secondkey_schema", &[]),
        )
        .map_err(pg_err)?;
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
    }
}

/// An id for this store in notifications: unique enough across replicas
/// (time, process, and the address of a fresh allocation).
fn replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let here = Box::new(0u8);
    let addr = &*here as *const u8 as usize;
    format!("{:x}{:x}{:x}", nanos, std::process::id(), addr)
}

/// Brings the tree up to `conn`'s view of the log head.
fn catch_up(
    conn: &mut PgConn,
    view: &Shared,
    size_tx: &tokio::sync::watch::Sender<u64>,
) -> Result<u64, StoreError> {
    let (head, local) = head_against(conn, view, false)?;
    if head > local {
        let hashes = conn.leaf_hashes(local, head)?;
        let size = view.extend(local, &hashes)?;
        crate::publish_size(size_tx, size);
    }
    Ok(head)
}

/// The log head's size (read under its row lock when `lock`) and the size
/// of this replica's tree, refused if the head is behind the tree.
///
/// The tree's size is read first: it only grows to heads already
/// committed, so a head read after it (and the snapshot that read starts)
/// is never behind it unless the log was truncated. Read the other way
/// round, this replica's writer could commit and grow the tree between a
/// follower's snapshot and its look at the tree: a false alarm.
fn head_against(conn: &mut PgConn, view: &Shared, lock: bool) -> Result<(u64, u64), StoreError> {
    let local = view
        .tree
        .read()
        .map_err(|_| StoreError::Unavailable)?
        .size();
    let head = conn.head(lock)?;
    if head < local {
        return Err(StoreError::Tampered(format!(
            "PostgreSQL's log head is at {head} entries but this replica has seen {local} (the log was truncated)"
        )));
    }
    Ok((head, local))
}

/// Upgrades the schema to this binary's version (what `secondkey store
/// migrate` runs); returns (version found, version now).
pub fn migrate(pg: &PgOptions) -> Result<(i64, i64), StoreError> {
    let target = pg
        .target()
        .map_err(|m| StoreError::Pg(format!("[store] url {m}")))?;
    let rt = Runtime::new()?;
    let mut conn = connect(&rt, &target)?;
    conn.batch("BEGIN")?;
    let out = (|| {
        futures_executor::block_on(
            conn.client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]),
        )
        .map_err(pg_err)?;
        conn.batch(
            "CREATE TABLE IF NOT EXISTS secondkey_schema (
                version    bigint PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )?;
        let found = conn.schema_version()?;
        if found > PG_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: PG_SCHEMA_VERSION,
            });
        }
        for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(found as usize) {
            conn.batch(sql)?;
            let v = (i + 1) as i64;
            futures_executor::block_on(
                conn.client
                    .execute("INSERT INTO secondkey_schema (version) VALUES ($1)", &[&v]),
            )
            .map_err(pg_err)?;
        }
        Ok((found, PG_SCHEMA_VERSION))
    })();
    match out {
        Ok(v) => {
            conn.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Opens the store in PostgreSQL: checks the schema is this binary's,
/// rebuilds the tree from the entries and checks it against the anchor.
pub(crate) fn open(options: &StoreOptions, pg: &PgOptions) -> Result<Opened, StoreError> {
    let target = pg
        .target()
        .map_err(|m| StoreError::Pg(format!("[store] url {m}")))?;
    let rt = Runtime::new()?;
    let mut conn = connect(&rt, &target)?;
    crate::check_version(
        conn.schema_version()?,
        PG_SCHEMA_VERSION,
        |found, current| StoreError::NotMigrated { found, current },
    )?;
    // One snapshot for the head, the entries and the anchor.
    conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    let tree = (|| {
        let head = conn.head(false)?;
        let hashes = conn.leaf_hashes(0, head)?;
        let anchor = conn.meta("anchor")?;
        anchored_tree(hashes, anchor)
    })();
    conn.batch("COMMIT")?;
    let tree: Tree = tree?;
    let replica = replica_id();
    let stats = Arc::new(Mutex::new(WriterStats::default()));
    let writer: Option<Box<dyn Writer>> = if options.read_only {
        None
    } else {
        Some(Box::new(PgWriter {
            rt: rt.clone(),
            replica: replica.clone(),
            target: target.clone(),
            conn: Some(conn),
            stats: stats.clone(),
            clock: BatchClock::default(),
            base: 0,
            entries: Vec::new(),
            journal: Vec::new(),
            mark: Mark::default(),
            job: 0,
            begun: 0,
            running: false,
            doomed: None,
            late: Vec::new(),
            careful: false,
            view: None,
        }))
    };
    let (changes, _) = tokio::sync::broadcast::channel(4096);
    Ok(Opened {
        location: target.display.clone(),
        writer,
        readers: AnyReaders::Pg(Box::new(Readers {
            rt,
            replica,
            target,
            pool: Mutex::new(Pool::default()),
            given_back: std::sync::Condvar::new(),
            changes,
            stats,
        })),
        tree,
        lock: None,
    })
}

/// Most reader connections a replica opens.
const MAX_READERS: usize = 8;

/// Idle reader connections, and how many are open (idle or in use).
#[derive(Default)]
struct Pool {
    idle: Vec<PgConn>,
    open: usize,
}

/// Reader connections, and what follows other replicas.
pub(crate) struct Readers {
    rt: Arc<Runtime>,
    /// This store's id in notifications.
    replica: String,
    target: Target,
    pool: Mutex<Pool>,
    given_back: std::sync::Condvar,
    /// Ids of requests changed by the other replicas.
    changes: tokio::sync::broadcast::Sender<String>,
    /// What this replica's writer's batches cost.
    stats: Arc<Mutex<WriterStats>>,
}

impl Readers {
    /// A reader connection: an idle one, a new one while fewer than
    /// [`MAX_READERS`] are open, or else the next one given back (so a
    /// burst of reads never opens more than that many connections).
    fn conn(&self) -> Result<PgConn, StoreError> {
        let mut pool = self.pool.lock().map_err(|_| StoreError::Unavailable)?;
        loop {
            while let Some(c) = pool.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                pool.open -= 1;
            }
            if pool.open < MAX_READERS {
                pool.open += 1;
                break;
            }
            pool = self
                .given_back
                .wait(pool)
                .map_err(|_| StoreError::Unavailable)?;
        }
        drop(pool);
        let conn = connect(&self.rt, &self.target);
        if conn.is_err() {
            self.forget();
        }
        conn
    }

    /// One open connection fewer.
    fn forget(&self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.open = pool.open.saturating_sub(1);
        }
        self.given_back.notify_one();
    }

    fn put_back(&self, conn: PgConn) {
        if conn.client.is_closed() {
            return self.forget();
        }
        if let Ok(mut pool) = self.pool.lock() {
            pool.idle.push(conn);
        }
        self.given_back.notify_one();
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Reads) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let out = f(&mut conn);
        self.put_back(conn);
        out
    }

    pub(crate) fn catch_up(
        &self,
        view: &Shared,
        size_tx: &tokio::sync::watch::Sender<u64>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn()?;
        // One snapshot: the head and the entries below it.
        let out = conn
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .and_then(|_| catch_up(&mut conn, view, size_tx))
            .and_then(|size| conn.batch("COMMIT").map(|_| size));
        match out {
            Ok(size) => {
                self.put_back(conn);
                Ok(size)
            }
            Err(e) => {
                // Maybe inside a failed transaction: not reused.
                drop(conn);
                self.forget();
                Err(e)
            }
        }
    }

    pub(crate) fn stats(&self) -> WriterStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Starts following the other replicas: a connection that `LISTEN`s
    /// (reconnecting when it drops) and a thread that catches the tree up on
    /// each notification, and every second regardless.
    pub(crate) fn follow(
        &self,
        view: Shared,
        size_tx: tokio::sync::watch::Sender<u64>,
        health: crate::HealthCell,
    ) -> Result<Follower, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let listen = self.rt.handle()?.spawn(listen(
            self.target.clone(),
            self.replica.clone(),
            wake_tx,
            self.changes.clone(),
            stop.clone(),
        ));
        let readers = Readers {
            rt: self.rt.clone(),
            replica: self.replica.clone(),
            target: self.target.clone(),
            pool: Mutex::new(Pool::default()),
            given_back: std::sync::Condvar::new(),
            changes: self.changes.clone(),
            stats: self.stats.clone(),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("secondkey-store-follow".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match wake_rx.recv_timeout(FOLLOW_INTERVAL) {
                        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(FOLLOW_INTERVAL)
                        }
                    }
                    while wake_rx.try_recv().is_ok() {}
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let out = readers.catch_up(&view, &size_tx);
                    health.set_follower(out.err().map(|e| format!("{FOLLOW_FAILED}: {e}")));
                }
            })
            .map_err(|e| StoreError::Pg(format!("cannot start the follower: {e}")))?;
        Ok(Follower {
            stop,
            listen,
            thread: Some(thread),
        })
    }
}

/// What [`Store::remote_changes`](crate::Store::remote_changes) sends
/// instead of a request id when changes of other replicas may have been
/// missed: the `LISTEN` connection dropped and listens again, and whatever
/// was notified in between is gone. Receivers read again what they wait on.
pub const REMOTE_RESYNC: &str = "*resync";

/// Keeps a `LISTEN` connection up; each notification wakes the follower
/// (log) or is forwarded to the request subscribers, and each LISTEN after
/// the first sends them [`REMOTE_RESYNC`].
async fn listen(
    target: Target,
    replica: String,
    wake: mpsc::Sender<()>,
    changes: tokio::sync::broadcast::Sender<String>,
    stop: Arc<AtomicBool>,
) {
    use futures_util::StreamExt;
    // Set once a LISTEN was tried: from then on, each new LISTEN may have
    // missed notifications (sent while none was up), so it says so.
    let mut again = false;
    while !stop.load(Ordering::Relaxed) {
        let missed = std::mem::replace(&mut again, true);
        let connected = match &target.tls {
            PgTls::Disable => target
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(c, conn)| (c, conn_messages(conn)))
                .map_err(|e| e.to_string()),
            PgTls::VerifyFull { ca_file } => match tls::connector(ca_file.as_deref()) {
                Ok(tls) => target
                    .config
                    .connect(tls)
                    .await
                    .map(|(c, conn)| (c, conn_messages(conn)))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        let (client, mut messages) = match connected {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for other replicas' commits; retrying");
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                continue;
            }
        };
        let listening = async {
            client
                .batch_execute(&format!("LISTEN {LOG_CHANNEL}; LISTEN {REQUEST_CHANNEL}"))
                .await
        };
        // The LISTEN needs the connection polled while it runs.
        let mut listening = Box::pin(listening);
        let mut ok = false;
        loop {
            tokio::select! {
                r = &mut listening, if !ok => {
                    if r.is_err() { break; }
                    ok = true;
                    // Whatever was committed while we were not listening.
                    let _ = wake.send(());
                    if missed {
                        let _ = changes.send(REMOTE_RESYNC.to_string());
                    }
                }
                m = messages.next() => match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if n.channel() == REQUEST_CHANNEL {
                            if let Some((from, id)) = n.payload().split_once(':') {
                                if from != replica {
                                    let _ = changes.send(id.to_string());
                                }
                            }
                        } else {
                            let _ = wake.send(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Messages = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>
            + Send,
    >,
>;

fn conn_messages<S, T>(mut conn: tokio_postgres::Connection<S, T>) -> Messages
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        conn.poll_message(cx)
    }))
}

/// Stops following when dropped.
pub(crate) struct Follower {
    stop: Arc<AtomicBool>,
    listen: tokio::task::JoinHandle<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.listen.abort();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's connection; reconnects at the next batch after it
/// drops (every job of the failed batch got an error: fail closed).
///
/// A batch is pipelined: statements whose answer no job needs (`BEGIN`, a
/// job's inserts and upserts, notifications) are sent without waiting.
/// The writer waits for them only when something depends on their outcome
/// (*settling*): before a job learns anything from PostgreSQL or from the
/// log (a read, a row count, the index of an entry it appends with
/// [`Tx::append_prepared`]), and once before the commit. A job that only
/// writes and appends with [`Tx::append_later`] (an allow: its grant row
/// and its entry) costs no wait of its own.
///
/// Jobs get no savepoint of their own (a savepoint per job cost more
/// than everything else a job sends: bench/README.md §14). The batch has
/// one, taken with the head's row lock. Should a job's statement fail
/// (found when settling) or the job fail after writing, the transaction
/// goes back to it, still holding the lock, and the writes of the other
/// jobs (kept, with the row counts they were told) are sent again: under
/// the lock nothing else changed, so those already answered do the same.
/// This is sound because whoever learned something did so after the jobs
/// before them were settled: the jobs after a failing one that had not
/// been settled yet learned nothing from PostgreSQL nor their entries'
/// indices, so they do the same without it, and their entries, numbered
/// only at commit (`base` + position), close the gap. After one such
/// failure the batch's later jobs take a savepoint each and are settled
/// at their end, so that a batch with many failing jobs sends its writes
/// again once, not once per job.
///
/// The batch holds the head's row lock through `COMMIT` (so through the
/// flush of the WAL, which makes it durable and visible at once). The
/// replica's tree is caught up with what other replicas appended after
/// the commit, outside the lock (`begin` only reads the head's size).
struct PgWriter {
    rt: Arc<Runtime>,
    replica: String,
    target: Target,
    conn: Option<PgConn>,
    stats: Arc<Mutex<WriterStats>>,
    clock: BatchClock,
    /// The log's size when the batch began: its first entry's index.
    base: u64,
    /// The batch's entries so far, in order: the `n`-th gets index
    /// `base + n` at commit.
    entries: Vec<Appended>,
    /// The batch's writes so far, in order.
    journal: Vec<Recorded>,
    /// Where the running job began: its first entry and write.
    mark: Mark,
    /// The running job's position in the batch, and how many began.
    job: usize,
    begun: usize,
    /// A job is running (not yet returned).
    running: bool,
    /// The running job's own statement failed: it fails, whatever it
    /// returns.
    doomed: Option<StoreError>,
    /// Jobs found to have failed after they returned: position, error.
    late: Vec<(usize, StoreError)>,
    /// A job of this batch was undone by sending the others' writes again:
    /// the batch's later jobs take a savepoint each and are settled at
    /// their end, so that the batch sends its writes again once at most,
    /// not once per failing job.
    careful: bool,
    /// The replica's tree, caught up after each commit.
    view: Option<(Shared, tokio::sync::watch::Sender<u64>)>,
}

/// A log entry of the batch, numbered at commit.
struct Appended {
    job: usize,
    entry: secondkey_log::entry::Prepared,
}

#[derive(Default, Clone, Copy)]
struct Mark {
    entries: usize,
    journal: usize,
    /// The job has a savepoint of its own (see `PgWriter::careful`).
    savepoint: bool,
}

/// Where the current batch is, for [`WriterStats`].
#[derive(Default)]
struct BatchClock {
    /// When `begin` started and when it was done.
    started: Option<(std::time::Instant, std::time::Instant)>,
    jobs: u64,
}

/// A copy of a statement's failure, for the job that sees it and for the
/// job's result.
fn copy_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::PgDown(m) => StoreError::PgDown(m.clone()),
        StoreError::Pg(m) => StoreError::Pg(m.clone()),
        other => StoreError::Pg(other.to_string()),
    }
}

impl PgWriter {
    fn conn(&mut self) -> Result<&mut PgConn, StoreError> {
        match &mut self.conn {
            Some(c) => Ok(c),
            None => Err(StoreError::PgDown("not connected".into())),
        }
    }

    /// The connection, unless a statement of the batch failed.
    fn usable(&mut self) -> Result<&mut PgConn, StoreError> {
        let conn = self.conn()?;
        match &conn.broken {
            Some(why) => Err(StoreError::Pg(why.clone())),
            None => Ok(conn),
        }
    }

    /// Forgets a connection that failed, so the next batch opens a new one.
    fn check<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() && self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
        }
        r
    }

    /// Sends a job's write without waiting, and keeps it for the batch.
    fn write(&mut self, sql: &'static str, params: Owned) -> Result<(), StoreError> {
        if !self.conn()?.stmts.contains_key(sql) {
            // Preparing it waits for the server: the statements before it
            // are settled first, so a failure is put on its own job.
            self.learn()?;
        }
        let job = self.job;
        self.journal.push(Recorded {
            job,
            sql,
            params: params.clone(),
            rows: None,
            confirmed: false,
        });
        self.conn()?.defer(sql, params, None, Owner::Job(job))
    }

    /// Before the running job learns anything: settles what was sent; a
    /// failure of the job's own statement is its answer, and fails it.
    fn learn(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.doomed {
            return Err(copy_err(e));
        }
        self.settle(false)
    }

    /// An answer the running job gets: a failure fails the job (the
    /// transaction cannot go on until it is undone).
    fn answered<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            if self.doomed.is_none() {
                self.doomed = Some(copy_err(e));
            }
        }
        r
    }

    /// Waits for every statement sent so far. A job whose statement
    /// failed is undone alone: the transaction goes back to the batch's
    /// savepoint and every other job's writes are sent again (`rewind`
    /// asks for that even when nothing failed: the running job was
    /// undone). Returns the error of the running job's own failed
    /// statement, or of the batch's.
    fn settle(&mut self, mut rewind: bool) -> Result<(), StoreError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(StoreError::PgDown("not connected".into()));
            };
            if let Some(why) = &conn.broken {
                return Err(StoreError::Pg(why.clone()));
            }
            match conn.flush_owned() {
                Ok(()) if rewind => {
                    conn.defer_simple("ROLLBACK TO SAVEPOINT batch", Owner::Batch);
                    for w in &self.journal {
                        let owner = if w.confirmed {
                            Owner::Batch
                        } else {
                            Owner::Job(w.job)
                        };
                        conn.defer(w.sql, w.params.clone(), w.rows, owner)?;
                    }
                    rewind = false;
                }
                Ok(()) => {
                    for w in &mut self.journal {
                        w.confirmed = true;
                    }
                    return Ok(());
                }
                Err((e, Owner::Batch)) => return Err(e),
                Err((e, Owner::Job(j))) => {
                    // Statements before the failed one were answered.
                    for w in self.journal.iter_mut().filter(|w| w.job < j) {
                        w.confirmed = true;
                    }
                    if j == self.job && self.running {
                        self.doomed = Some(copy_err(&e));
                        return Err(e);
                    }
                    // A job that returned already fails now. (A job being
                    // undone is out of the journal already.)
                    if self.journal.iter().any(|w| w.job == j) {
                        self.journal.retain(|w| w.job != j);
                        self.entries.retain(|a| a.job != j);
                        self.late.push((j, e));
                    }
                    self.careful = true;
                    rewind = true;
                }
            }
        }
    }

    /// Undoes a failed job back to its own savepoint.
    fn undo_job(&mut self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        // What the job still owes is its own.
        let _ = conn.flush();
        let conn = self.usable()?;
        conn.defer_simple(
            "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job",
            Owner::Batch,
        );
        Ok(())
    }

    /// After the commit, outside the head's lock: brings the tree up to
    /// the batch's first index (what other replicas appended before it),
    /// so that the batch's entries can join it. Should this fail, the
    /// entries cannot join the tree and the batch's jobs are refused
    /// (`run_batch`); the follower catches up later.
    fn catch_up_to(&mut self, base: u64) {
        let Some((view, size_tx)) = self.view.clone() else {
            return;
        };
        let local = view.tree.read().map(|t| t.size()).unwrap_or(base);
        if local >= base {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.leaf_hashes(local, base) {
            Ok(hashes) => match view.extend(local, &hashes) {
                Ok(size) => {
                    crate::publish_size(&size_tx, size);
                }
                Err(e) => tracing::warn!(error = %e, "cannot catch the tree up"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read other replicas' entries"),
        }
    }

    /// Adds a committed batch to the stats; `t_commit`: when its commit
    /// began.
    fn count(&mut self, t_commit: std::time::Instant) {
        let Some((t0, t_begun)) = self.clock.started else {
            return;
        };
        let waits = self.conn.as_ref().map_or(0, |c| c.waits);
        if let Ok(mut s) = self.stats.lock() {
            s.batches += 1;
            s.jobs += self.clock.jobs;
            s.round_trips += waits;
            s.begin += t_begun - t0;
            s.run += t_commit - t_begun;
            s.commit += t_commit.elapsed();
        }
    }
}

impl Writer for PgWriter {
    fn begin(
        &mut self,
        view: &Shared,
        size_tx: &tokio::sync::watch::Sender<u64>,
    ) -> Result<u64, StoreError> {
        let t0 = std::time::Instant::now();
        self.clock = BatchClock::default();
        self.entries.clear();
        self.journal.clear();
        self.late.clear();
        self.careful = false;
        self.job = 0;
        self.begun = 0;
        self.running = false;
        self.doomed = None;
        self.view = Some((view.clone(), size_tx.clone()));
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(connect(&self.rt, &self.target)?);
        }
        let r = (|| {
            let conn = self.conn()?;
            conn.waits = 0;
            conn.broken = None;
            conn.inflight.clear();
            // Sent with the head's row lock: one round trip.
            conn.defer_simple("BEGIN", Owner::Batch);
            let out = head_against(conn, view, true).map(|(head, _)| head);
            match out {
                // Sent with the first job's statements.
                Ok(_) => conn.defer_simple("SAVEPOINT batch", Owner::Batch),
                Err(_) => {
                    let _ = conn.batch("ROLLBACK");
                }
            }
            out
        })();
        self.clock.started = Some((t0, std::time::Instant::now()));
        if let Ok(head) = r {
            self.base = head;
        }
        self.check(r)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.job = self.begun;
        self.begun += 1;
        let careful = self.careful;
        let r = self.usable().map(|c| {
            if careful {
                c.defer_simple("SAVEPOINT job", Owner::Batch);
            }
        });
        self.check(r)?;
        self.mark = Mark {
            entries: self.entries.len(),
            journal: self.journal.len(),
            savepoint: careful,
        };
        Ok(())
    }

    fn release(&mut self) -> Result<(), StoreError> {
        if !self.mark.savepoint {
            return Ok(());
        }
        let r = self
            .usable()
            .map(|c| c.defer_simple("RELEASE SAVEPOINT job", Owner::Batch));
        self.check(r)
    }

    fn rollback_to(&mut self) -> Result<(), StoreError> {
        let m = self.mark;
        self.running = false;
        self.entries.truncate(m.entries);
        let wrote = self.journal.len() > m.journal;
        self.journal.truncate(m.journal);
        let failed = self.doomed.take().is_some();
        let r = if m.savepoint {
            self.undo_job()
        } else if !wrote && !failed {
            // Neither wrote nor saw a statement fail: the transaction is
            // as it was (the jobs before it stay unsettled).
            Ok(())
        } else {
            self.careful = true;
            self.settle(true)
        };
        self.check(r)
    }

    fn commit(&mut self, _base: u64, pending: &mut Vec<Hash>) -> Result<(), StoreError> {
        let t_commit = std::time::Instant::now();
        let r = (|| {
            // Jobs whose statements failed are found and undone here,
            // before their entries are numbered.
            if self.usable()?.owes_jobs() {
                self.settle(false)?;
            }
            let base = self.base;
            let mut rows = LogRows::default();
            pending.clear();
            for (n, a) in self.entries.iter().enumerate() {
                let index = base + n as u64;
                let idx = i64::try_from(index).map_err(|_| {
                    StoreError::Corrupt(format!("log index {index} is out of range"))
                })?;
                let bytes = a.entry.at(index);
                pending.push(leaf_hash(&bytes));
                if let Some(request) = a.entry.request() {
                    rows.request.push(request.to_string());
                    rows.request_idx.push(idx);
                }
                rows.idx.push(idx);
                rows.data.push(bytes);
            }
            let size = base + pending.len() as u64;
            let conn = self.usable()?;
            if !rows.idx.is_empty() {
                conn.defer(
                    "INSERT INTO log_entries (idx, data) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                    vec![Arc::new(rows.idx), Arc::new(rows.data)],
                    None,
                    Owner::Batch,
                )?;
            }
            if !rows.request.is_empty() {
                conn.defer(
                    "INSERT INTO log_by_request (request_id, idx) SELECT * FROM unnest($1::text[], $2::bigint[])",
                    vec![Arc::new(rows.request), Arc::new(rows.request_idx)],
                    None,
                    Owner::Batch,
                )?;
            }
            if size != base {
                let s = size as i64;
                conn.defer(
                    "UPDATE log_head SET size = $1 WHERE id = 1",
                    vec![Arc::new(s)],
                    Some(1),
                    Owner::Batch,
                )?;
                conn.defer(
                    "SELECT pg_notify('secondkey_log', $1)",
                    vec![Arc::new(s.to_string())],
                    None,
                    Owner::Batch,
                )?;
            }
            // Should anything before it have failed, PostgreSQL answers
            // this COMMIT with a rollback; the failure is the error.
            conn.defer_simple("COMMIT", Owner::Batch);
            conn.flush()
        })();
        self.entries.clear();
        self.journal.clear();
        if r.is_ok() {
            self.count(t_commit);
            self.catch_up_to(self.base);
        }
        self.check(r)
    }

    fn rollback(&mut self) {
        self.entries.clear();
        self.journal.clear();
        self.running = false;
        self.doomed = None;
        if let Some(c) = &mut self.conn {
            let _ = c.flush();
            let _ = c.batch("ROLLBACK");
            c.broken = None;
        }
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
    }

    fn run(&mut self, _base: u64, _pending: &mut Vec<Hash>, job: JobFn) -> JobResult {
        self.clock.jobs += 1;
        self.running = true;
        self.doomed = None;
        let out = job(&mut PgTx { w: self });
        // Careful (after a job was undone in this batch): the job is
        // settled now, so that its failure rolls back to its own savepoint.
        if self.careful && self.doomed.is_none() {
            let _ = self.settle(false);
        }
        self.running = false;
        match (out, &self.doomed) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(copy_err(e)),
            (Ok(v), None) => Ok(v),
        }
    }

    fn late_failures(&mut self) -> Vec<(usize, StoreError)> {
        std::mem::take(&mut self.late)
    }

    fn is_storage_failure(&self, e: &StoreError) -> bool {
        matches!(e, StoreError::PgDown(_))
    }
}

/// The log rows a batch appends, written at commit.
#[derive(Default)]
struct LogRows {
    /// `log_entries`: index and bytes.
    idx: Vec<i64>,
    data: Vec<Vec<u8>>,
    /// `log_by_request`: request id and index.
    request: Vec<String>,
    request_idx: Vec<i64>,
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Reads for PgConn {
    fn request(&mut self, id: &str) -> Result<Option<Request>, StoreError> {
        let row = self.query_opt("SELECT body FROM requests WHERE id = $1", &[&id])?;
        row.map(|r| decode_request(r.get(0))).transpose()
    }

    fn grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id, request_id, digest, requester, expires_at, used_at FROM grants WHERE id = $1",
            &[&id],
        )?;
        Ok(row.map(|r| GrantRow {
            id: r.get(0),
            request_id: r.get(1),
            digest: r.get(2),
            requester: r.get(3),
            expires_at: r.get(4),
            used_at: r.get(5),
        }))
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        let state = state_str(state);
        let row = self.query_opt(
            "SELECT body FROM requests WHERE requester = $1 AND digest = $2 AND state = $3
             ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&requester, &digest, &state],
        )?;
        row.map(|r| decode_request(r.get(0))).transpose()
    }

    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let rows = self.query(
            "SELECT count(*), min(expires_at) FROM requests
             WHERE requester = $1 AND state = 'pending' AND expires_at > $2",
            &[&requester, &now_ms],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("count returned no row".into()))?;
        Ok((u64_of(row.get(0)), row.get(1)))
    }

    fn record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT value FROM records WHERE ns = $1 AND key = $2",
            &[&ns, &key],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn records(
        &mut self,
        ns: &str,
        lower: &str,
        inclusive: bool,
        upper: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(
            "SELECT key, value FROM records
             WHERE ns = $1 AND (key > $2 OR ($3 AND key = $2)) AND key < $4
             ORDER BY key LIMIT $5",
            &[&ns, &lower, &inclusive, &upper, &limit],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn entries(&mut self, start: u64, end: u64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let (s, e) = (
            start.min(i64::MAX as u64) as i64,
            end.min(i64::MAX as u64) as i64,
        );
        let rows = self.query(
            "SELECT idx, data FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            &[&s, &e],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn request_entries(
        &mut self,
        request_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = self.query(
            "SELECT e.idx, e.data FROM log_by_request r JOIN log_entries e ON e.idx = r.idx
             WHERE r.request_id = $1 ORDER BY r.idx LIMIT $2",
            &[&request_id, &limit],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn list_for(
        &mut self,
        parties: &[String],
        state: Option<String>,
        cursor: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        let (ts, id) = match cursor {
            Some((t, i)) => (Some(t), Some(i)),
            None => (None, None),
        };
        let rows = self.query(
            "SELECT body, created_at, id FROM requests
             WHERE id IN (SELECT request_id FROM request_parties WHERE party = ANY($5))
               AND ($1::text IS NULL OR state = $1)
               AND ($2::bigint IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3))
             ORDER BY created_at DESC, id DESC LIMIT $4",
            &[&state, &ts, &id, &limit, &parties],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn due_for_expiry(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM requests
             WHERE (state = 'pending' AND expires_at <= $1)
                OR (state = 'approved' AND grant_expires_at IS NOT NULL AND grant_expires_at <= $1)
             LIMIT 1000",
            &[&now_ms],
        )?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    fn due_for_escalation(
        &mut self,
        now_ms: i64,
        fraction: f64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM requests
             WHERE state = 'pending' AND NOT escalated
               AND created_at + trunc((expires_at - created_at) * $2::float8)::bigint <= $1
             LIMIT 1000",
            &[&now_ms, &fraction],
        )?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    fn count_by_state(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self.query("SELECT state, count(*) FROM requests GROUP BY state", &[])?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), u64_of(r.get(1))))
            .collect())
    }

    fn pending_ids(&mut self, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM requests WHERE state = 'pending'
             ORDER BY created_at, id LIMIT $1",
            &[&limit],
        )?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}

struct PgTx<'a> {
    w: &'a mut PgWriter,
}

impl PgTx<'_> {
    /// A read inside the transaction, once what was sent is settled.
    fn read<T>(
        &mut self,
        f: impl FnOnce(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.w.learn()?;
        let r = f(self.w.conn()?);
        self.w.answered(r)
    }

    /// A write whose row count the job is told: waits for it.
    fn counted(&mut self, sql: &'static str, params: Owned) -> Result<u64, StoreError> {
        self.w.learn()?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        // Kept before the answer: sent, it is part of the transaction even
        // if it failed (the job then fails, and it is dropped with it).
        self.w.journal.push(Recorded {
            job: self.w.job,
            sql,
            params: params.clone(),
            rows: None,
            confirmed: false,
        });
        let r = self.w.conn()?.execute(sql, &refs);
        let n = self.w.answered(r)?;
        if let Some(w) = self.w.journal.last_mut() {
            w.rows = Some(n);
            w.confirmed = true;
        }
        Ok(n)
    }
}

impl Tx for PgTx<'_> {
    fn get_request(&mut self, id: &str) -> Result<Option<Request>, StoreError> {
        self.read(|c| c.request(id))
    }

    fn put_request(&mut self, r: &Request) -> Result<(), StoreError> {
        let body = serde_json::to_string(r)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode request: {e}")))?;
        let requester = r.requester.id.to_string();
        let grant_expires = r.grant.as_ref().map(|g| g.expires_at.0);
        self.w.write(
            "INSERT INTO requests (id, state, requester, created_at, expires_at, grant_expires_at, escalated, body, digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, expires_at = excluded.expires_at,
               grant_expires_at = excluded.grant_expires_at, escalated = excluded.escalated, body = excluded.body",
            vec![
                Arc::new(r.id.clone()),
                Arc::new(state_str(r.state)),
                Arc::new(requester),
                Arc::new(r.created_at.0),
                Arc::new(r.expires_at.0),
                Arc::new(grant_expires),
                Arc::new(r.escalated),
                Arc::new(body),
                Arc::new(r.digest.as_str().to_string()),
            ],
        )?;
        self.w.write(
            "INSERT INTO request_parties (party, request_id) SELECT unnest($1::text[]), $2
             ON CONFLICT DO NOTHING",
            vec![Arc::new(parties_of(r)), Arc::new(r.id.clone())],
        )?;
        // Delivered at commit, to every replica's long-polls and streams.
        let payload = format!("{}:{}", self.w.replica, r.id);
        self.w.write(
            "SELECT pg_notify('secondkey_requests', $1)",
            vec![Arc::new(payload)],
        )
    }

    fn insert_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        self.w.write(
            "INSERT INTO grants (id, request_id, digest, requester, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Arc::new(g.id.clone()),
                Arc::new(g.request_id.clone()),
                Arc::new(g.digest.clone()),
                Arc::new(g.requester.clone()),
                Arc::new(g.expires_at),
                Arc::new(g.used_at),
            ],
        )
    }

    fn get_grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        self.read(|c| c.grant(id))
    }

    fn use_grant(&mut self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.counted(
            "UPDATE grants SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
            vec![Arc::new(id.to_string()), Arc::new(now_ms)],
        )?;
        Ok(n == 1)
    }

    fn append_prepared(
        &mut self,
        entry: secondkey_log::entry::Prepared,
    ) -> Result<u64, StoreError> {
        // The index counts the entries of the jobs before: true only once
        // they are settled.
        self.w.learn()?;
        let index = self.w.base + self.w.entries.len() as u64;
        self.append_later(entry)?;
        Ok(index)
    }

    fn append_later(&mut self, entry: secondkey_log::entry::Prepared) -> Result<(), StoreError> {
        // Numbered and written at commit, with the batch's other entries
        // (no job reads them back inside the transaction).
        self.w.entries.push(Appended {
            job: self.w.job,
            entry,
        });
        Ok(())
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| c.meta(key))
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.w.write(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            vec![Arc::new(key.to_string()), Arc::new(value.to_string())],
        )
    }

    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        self.read(|c| c.find_request(requester, digest, state))
    }

    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        self.read(|c| Reads::pending_of(c, requester, now_ms))
    }

    fn get_record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| c.record(ns, key))
    }

    fn put_record(&mut self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.w.write(
            "INSERT INTO records (ns, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
            vec![
                Arc::new(ns.to_string()),
                Arc::new(key.to_string()),
                Arc::new(value.to_string()),
            ],
        )
    }

    fn delete_record(&mut self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n = self.counted(
            "DELETE FROM records WHERE ns = $1 AND key = $2",
            vec![Arc::new(ns.to_string()), Arc::new(key.to_string())],
        )?;
        Ok(n == 1)
    }
}

/// TLS for `sslmode=verify-full`: rustls, the chain checked against the
/// configured CA file (or the web roots), the host name against the
/// certificate.
mod tls {
    use std::future::Future;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use crate::StoreError;

    #[derive(Clone)]
    pub(super) struct Connector(Arc<rustls::ClientConfig>);

    pub(super) fn connector(ca_file: Option<&Path>) -> Result<Connector, StoreError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    StoreError::Pg(format!("cannot read the CA file {}: {e}", path.display()))
                })?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| {
                        StoreError::Pg(format!("the CA file {} is not PEM: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        StoreError::Pg(format!("a certificate in {}: {e}", path.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(StoreError::Pg(format!(
                        "the CA file {} holds no certificate",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Pg(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector(Arc::new(cfg)))
    }

    pub(super) struct Connect(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    );

    pub(super) struct Stream(tokio_rustls::client::TlsStream<tokio_postgres::Socket>);

    impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for Connector {
        type Stream = Stream;
        type TlsConnect = Connect;
        type Error = rustls::pki_types::InvalidDnsNameError;

        fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
            let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
            Ok(Connect(self.0.clone(), name))
        }
    }

    impl tokio_postgres::tls::TlsConnect<tokio_postgres::Socket> for Connect {
        type Stream = Stream;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Stream>> + Send>>;

        fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
            Box::pin(async move {
                tokio_rustls::TlsConnector::from(self.0)
                    .connect(self.1, stream)
                    .await
                    .map(Stream)
            })
        }
    }

    impl tokio_postgres::tls::TlsStream for Stream {
        fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
            tokio_postgres::tls::ChannelBinding::none()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }
}
