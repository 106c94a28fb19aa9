//! The secondkey PostgreSQL gateway: a wire-protocol proxy that runs inside
//! `secondkey serve`, one listener per `[[postgres]]` connection.
//!
//! Clients (psql, drivers, agents) log in as their secondkey principal —
//! SCRAM-SHA-256 against a configured verifier, or the principal's token as
//! a password over TLS — and never learn the upstream credentials: the
//! gateway logs in upstream itself ([`upstream`]). Every statement is
//! classified with PostgreSQL's own parser ([`classify`], cached by shape in
//! [`cache`]), turned into an action and decided by the gateway before it
//! is forwarded ([`session`]).
//!
//! Architecture invariants:
//! * nothing that executes (a `Query`, an `Execute`) reaches the upstream
//!   before `Gateway::intercept` or `execute_approved` returned a run, i.e.
//!   before its authorizing log entry is durable;
//! * a statement the parser rejects is refused, never passed through;
//! * the upstream password is read here and written only to the upstream;
//! * an approved statement runs at most once: the proxy never replays
//!   anything after a lost connection;
//! * nothing the database evaluates runs before the decision: Bind waits
//!   for its Execute's, and Parse never hands the server a string constant
//!   whose input could run user code ([`session`]);
//! * every listener bounds what one client can hold: sockets (per
//!   listener, per source address), time to log in, idle time, sessions
//!   (per connection, per principal, with a reserve), and memory per
//!   message and per session ([`config::Limits`]).

pub mod cache;
pub mod classify;
pub mod config;
pub mod params;
pub mod proto;
pub mod scram;
pub mod session;
pub mod testing;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use secondkey_core::principal::Principal;
use secondkey_server::config::ConfigError;
use secondkey_server::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cache::ClassCache;
use crate::config::Connection;
use crate::upstream::Stream;

/// How many shapes of statements each connection's cache keeps.
const CACHE_ENTRIES: usize = 10_000;

/// The cancel key the gateway gave a client, and what it maps to.
struct CancelEntry {
    upstream: (i32, i32),
    hold: Arc<tokio::sync::Notify>,
}

/// What every session of one connection shares.
pub struct Shared {
    pub conn: Connection,
    pub gateway: Arc<Gateway>,
    pub cache: ClassCache,
    client_tls: Option<tokio_rustls::TlsAcceptor>,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
    cancels: Mutex<HashMap<(i32, i32), CancelEntry>>,
    gate: Mutex<Gate>,
}

/// Who holds what on one listener, against [`config::Limits`].
#[derive(Default)]
struct Gate {
    sockets: usize,
    per_address: HashMap<IpAddr, usize>,
    sessions: usize,
    per_principal: HashMap<String, usize>,
}

/// One fewer of `key` in `counts` (gone at zero).
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A client socket counted against `max_connections` and
/// `max_connections_per_address` while it lives.
struct SocketSlot {
    sh: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.sh.gate.lock() {
            g.sockets = g.sockets.saturating_sub(1);
            release(&mut g.per_address, &self.ip);
        }
    }
}

/// A logged-in session counted against `max_sessions` and
/// `max_sessions_per_principal` while it lives.
struct SessionSlot {
    sh: Arc<Shared>,
    principal: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.sh.gate.lock() {
            g.sessions = g.sessions.saturating_sub(1);
            release(&mut g.per_principal, &self.principal);
        }
    }
}

impl Shared {
    /// Admits a new client socket, or says which cap refuses it.
    fn admit_socket(self: &Arc<Self>, ip: IpAddr) -> Result<SocketSlot, String> {
        let l = &self.conn.limits;
        let mut g = self
            .gate
            .lock()
            .map_err(|_| "the connection table is unavailable".to_string())?;
        if g.sockets >= l.max_connections {
            return Err(format!(
                "too many connections: postgres connection {} has its {} client connections open (max_connections)",
                self.conn.name, l.max_connections
            ));
        }
        let from = g.per_address.get(&ip).copied().unwrap_or(0);
        if from >= l.max_connections_per_address {
            return Err(format!(
                "too many connections from {ip}: {from} are open to postgres connection {} (max_connections_per_address = {})",
                self.conn.name, l.max_connections_per_address
            ));
        }
        g.sockets += 1;
        *g.per_address.entry(ip).or_insert(0) += 1;
        Ok(SocketSlot {
            sh: self.clone(),
            ip,
        })
    }

    /// Admits a logged-in session of `principal` (one upstream
    /// connection), or says which cap refuses it. The last
    /// `reserved_sessions` slots go only to principals holding none.
    fn admit_session(self: &Arc<Self>, principal: &str) -> Result<SessionSlot, String> {
        let l = &self.conn.limits;
        let name = &self.conn.name;
        let mut g = self
            .gate
            .lock()
            .map_err(|_| "the session table is unavailable".to_string())?;
        let held = g.per_principal.get(principal).copied().unwrap_or(0);
        if held >= l.max_sessions_per_principal {
            return Err(format!(
                "too many connections for {principal}: it holds {held} sessions on postgres connection {name} (max_sessions_per_principal = {})",
                l.max_sessions_per_principal
            ));
        }
        let open_to = if held == 0 {
            l.max_sessions
        } else {
            l.max_sessions - l.reserved_sessions
        };
        if g.sessions >= open_to {
            return Err(if held == 0 {
                format!(
                    "too many connections: all {} sessions of postgres connection {name} are in use (max_sessions)",
                    l.max_sessions
                )
            } else {
                format!(
                    "too many connections: {} of {} sessions of postgres connection {name} are in use, and the last {} are kept for principals holding none (reserved_sessions); {principal} already holds {held}",
                    g.sessions, l.max_sessions, l.reserved_sessions
                )
            });
        }
        g.sessions += 1;
        *g.per_principal.entry(principal.to_string()).or_insert(0) += 1;
        Ok(SessionSlot {
            sh: self.clone(),
            principal: principal.to_string(),
        })
    }
}

/// The PostgreSQL gateway extension: the parsed `[[postgres]]` sections.
pub struct PgGateway {
    connections: Vec<Connection>,
}

impl PgGateway {
    /// Reads the `postgres` section of the configuration, if there is one.
    pub fn from_section(
        section: Option<&toml::Value>,
        base: &std::path::Path,
        principals: &BTreeSet<String>,
        env: &HashMap<String, String>,
    ) -> Result<Option<PgGateway>, ConfigError> {
        let Some(v) = section else { return Ok(None) };
        let connections = config::parse(v, base, principals, env)?;
        Ok(Some(PgGateway { connections }))
    }

    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }

    /// Binds every listener and spawns its accept loop; returns the bound
    /// addresses. Must run inside the tokio runtime.
    pub fn listen(&self, gateway: Arc<Gateway>) -> anyhow::Result<Vec<std::net::SocketAddr>> {
        let mut addrs = Vec::new();
        for conn in &self.connections {
            let listener = secondkey_server::limits::conn::bind(conn.listen).map_err(|e| {
                anyhow::anyhow!(
                    "postgres connection {}: cannot listen on {}: {e}",
                    conn.name,
                    conn.listen
                )
            })?;
            let addr = listener.local_addr()?;
            let client_tls = match &conn.tls {
                Some((cert, key)) => Some(
                    tls_acceptor(cert, key)
                        .map_err(|e| anyhow::anyhow!("postgres connection {}: {e}", conn.name))?,
                ),
                None => None,
            };
            let upstream_tls = upstream::tls_config(&conn.upstream)
                .map_err(|e| anyhow::anyhow!("postgres connection {}: {e}", conn.name))?;
            let shared = Arc::new(Shared {
                cache: ClassCache::new(
                    classify::Options {
                        pure_functions: conn.pure_functions.clone(),
                    },
                    CACHE_ENTRIES,
                ),
                conn: conn.clone(),
                gateway: gateway.clone(),
                client_tls,
                upstream_tls,
                cancels: Mutex::new(HashMap::new()),
                gate: Mutex::new(Gate::default()),
            });
            tracing::info!(connection = %conn.name, %addr, "postgres gateway listening");
            eprintln!(
                "secondkey postgres gateway {} listening on {addr}",
                conn.name
            );
            tokio::spawn(accept_loop(listener, shared));
            addrs.push(addr);
        }
        Ok(addrs)
    }
}

impl secondkey_server::extension::Extension for PgGateway {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        self.listen(gateway).map(|_| ())
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "[postgres.tls] {what} {}: cannot read it: {e}",
                path.display()
            )
        })
    };
    let certs = rustls_pemfile::certs(&mut &read(cert, "cert_file")?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("[postgres.tls] cert_file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "[postgres.tls] cert_file {}: holds no PEM certificate",
            cert.display()
        );
    }
    let key = rustls_pemfile::private_key(&mut &read(key, "key_file")?[..])
        .map_err(|e| anyhow::anyhow!("[postgres.tls] key_file {}: {e}", key.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "[postgres.tls] key_file {}: holds no PEM private key",
                key.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let slot = match shared.admit_socket(peer.ip().to_canonical()) {
                    Ok(s) => s,
                    Err(why) => {
                        // Said without waiting (a full socket buffer drops
                        // it), then closed; what already arrived is read
                        // first, so that the close is not a reset that
                        // loses the answer.
                        let mut scrap = [0u8; 1024];
                        while matches!(tcp.try_read(&mut scrap), Ok(n) if n > 0) {}
                        let mut out = BytesMut::new();
                        proto::fatal(&mut out, "53300", &why);
                        let _ = tcp.try_write(&out);
                        tracing::debug!(%peer, reason = %why, "postgres connection refused");
                        continue;
                    }
                };
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = serve_client(sh, tcp).await {
                        tracing::debug!(%peer, error = %e, "postgres client ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "postgres accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn read_startup(s: &mut Stream, buf: &mut BytesMut) -> anyhow::Result<BytesMut> {
    loop {
        if let Some(m) = proto::take_startup(buf)? {
            return Ok(m);
        }
        if s.read_buf(buf).await? == 0 {
            anyhow::bail!("client closed during startup");
        }
    }
}

async fn read_message(s: &mut Stream, buf: &mut BytesMut) -> anyhow::Result<(u8, BytesMut)> {
    loop {
        if let Some(m) = proto::take_message(buf, proto::MAX_STARTUP)? {
            return Ok(m);
        }
        if s.read_buf(buf).await? == 0 {
            anyhow::bail!("client closed during login");
        }
    }
}

async fn fatal(s: &mut Stream, code: &str, msg: &str) -> anyhow::Error {
    let mut out = BytesMut::new();
    proto::fatal(&mut out, code, msg);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    anyhow::anyhow!("{msg}")
}

fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    i32::from_be_bytes(b)
}

/// Startup parameters passed to the upstream: only those that cannot
/// change identity, name resolution or how statements are parsed.
const PASSED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

async fn serve_client(sh: Arc<Shared>, tcp: TcpStream) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok().map(|a| a.ip());
    let mut s: Stream = Box::new(tcp);
    let mut buf = BytesMut::with_capacity(8192);
    let timeout = sh.conn.limits.login_timeout;
    let login = tokio::time::timeout(timeout, login(&sh, &mut s, &mut buf)).await;
    let (who, params) = match login {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let msg = format!(
                "login timed out: TLS, startup and authentication must finish within {timeout:?} (login_timeout)"
            );
            return Err(fatal(&mut s, "08006", &msg).await);
        }
    };
    let _session = match sh.admit_session(who.id.as_str()) {
        Ok(slot) => slot,
        Err(why) => return Err(fatal(&mut s, "53300", &why).await),
    };
    let up = match upstream::connect(&sh.conn.upstream, sh.upstream_tls.as_ref(), &params).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(connection = %sh.conn.name, error = %e, "upstream login failed");
            let msg = format!("secondkey could not open the upstream connection: {e}");
            return Err(fatal(&mut s, "08006", &msg).await);
        }
    };
    let key = loop {
        let k = (random_i32() & 0x7fff_ffff, random_i32());
        let c = sh
            .cancels
            .lock()
            .map_err(|_| anyhow::anyhow!("cancel table poisoned"))?;
        if !c.contains_key(&k) {
            break k;
        }
    };
    let hold = Arc::new(tokio::sync::Notify::new());
    if let Ok(mut c) = sh.cancels.lock() {
        c.insert(
            key,
            CancelEntry {
                upstream: up.key,
                hold: hold.clone(),
            },
        );
    }
    let mut out = BytesMut::new();
    let mut session = session::Session::new(sh.clone(), who, s, up.stream, buf, up.leftover, hold)
        .with_peer(peer);
    for (k, v) in &up.params {
        session.check_parameter(k, v);
        proto::parameter_status(&mut out, k, v);
    }
    proto::put(&mut out, b'K', |b| {
        b.put_i32(key.0);
        b.put_i32(key.1);
    });
    proto::ready(&mut out, b'I');
    let end = session.start(out).await;
    if let Ok(mut c) = sh.cancels.lock() {
        c.remove(&key);
    }
    match end {
        session::End::ClientLeft => Ok(()),
        session::End::UpstreamLost(w) => Err(anyhow::anyhow!("upstream lost: {w}")),
        session::End::Protocol(w) => Err(anyhow::anyhow!("protocol error: {w}")),
        session::End::Closed(w) => Err(anyhow::anyhow!("closed by the gateway: {w}")),
    }
}

/// The startup phase up to AuthenticationOk: TLS, protocol version,
/// parameters and authentication. `None` for a handled cancel request.
async fn login(
    sh: &Shared,
    s: &mut Stream,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<(Principal, Vec<(String, String)>)>> {
    let mut tls = false;
    let body = loop {
        let body = read_startup(s, buf).await?;
        let code = proto::Reader::new(&body, "startup").i32()?;
        match code {
            proto::SSL_REQUEST if !tls => match &sh.client_tls {
                Some(acceptor) => {
                    if !buf.is_empty() {
                        return Err(fatal(s, "08P01", "data after SSLRequest").await);
                    }
                    s.write_all(b"S").await?;
                    let plain = std::mem::replace(s, Box::new(tokio::io::duplex(1).0));
                    let stream = acceptor.accept(plain).await?;
                    *s = Box::new(stream);
                    tls = true;
                }
                None => s.write_all(b"N").await?,
            },
            proto::GSSENC_REQUEST => s.write_all(b"N").await?,
            proto::CANCEL_REQUEST => {
                let mut r = proto::Reader::new(&body[4..], "CancelRequest");
                let key = (r.i32()?, r.i32()?);
                cancel(sh, key).await;
                return Ok(None);
            }
            _ => break body,
        }
    };
    let mut r = proto::Reader::new(&body, "startup");
    let version = r.i32()?;
    if version >> 16 != 3 {
        return Err(fatal(
            s,
            "0A000",
            "unsupported frontend protocol: secondkey speaks protocol 3.0",
        )
        .await);
    }
    let params = proto::startup_params(&body[4..])?;
    if version & 0xffff != 0 {
        // Offer 3.0, as PostgreSQL does for a newer minor version.
        let mut out = BytesMut::new();
        proto::put(&mut out, b'v', |b| {
            b.put_i32(proto::PROTOCOL_3);
            let unknown: Vec<&(String, String)> = params
                .iter()
                .filter(|(k, _)| k.starts_with("_pq_."))
                .collect();
            b.put_i32(unknown.len() as i32);
            for (k, _) in unknown {
                proto::put_cstr(b, k);
            }
        });
        s.write_all(&out).await?;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(user) = get("user").map(str::to_string) else {
        return Err(fatal(
            s,
            "28000",
            "no user name given: connect as your secondkey principal (e.g. user=agent:report-bot)",
        )
        .await);
    };
    if get("replication").is_some_and(|v| v != "false" && v != "0") {
        return Err(fatal(
            s,
            "0A000",
            "replication connections are not passed through secondkey",
        )
        .await);
    }
    if get("options").is_some_and(|v| !v.trim().is_empty()) {
        return Err(fatal(s, "0A000", "startup options (PGOPTIONS) are not passed through secondkey; use SET for harmless settings").await);
    }
    let database = get("database").unwrap_or(&user);
    if database != sh.conn.database {
        let msg = format!(
            "database \"{database}\" does not exist here: this gateway connection serves \"{}\"",
            sh.conn.database
        );
        return Err(fatal(s, "3D000", &msg).await);
    }
    if let Some(enc) = get("client_encoding") {
        if !matches!(
            enc.to_ascii_uppercase().replace(['-', '_'], "").as_str(),
            "UTF8" | "UNICODE" | "SQLASCII"
        ) {
            let msg = format!("client_encoding {enc} is not supported through secondkey (statements are classified as UTF-8); use UTF8");
            return Err(fatal(s, "0A000", &msg).await);
        }
    }
    let passed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| PASSED_PARAMETERS.contains(&k.as_str()))
        .cloned()
        .collect();
    // Ids are read in lowercase wherever they come from (docs/identity.md).
    let id = user.to_ascii_lowercase();
    let known = sh.conn.principals.contains(&id);
    let principal = sh
        .gateway
        .config
        .principals
        .get(&id)
        .filter(|_| known)
        .cloned();
    let verifier = principal
        .as_ref()
        .and_then(|_| sh.conn.scram.get(&id).cloned());
    let ok = if verifier.is_some() || !tls {
        if principal.is_some() && verifier.is_none() {
            return Err(fatal(
                s,
                "28000",
                "log in over TLS (sslmode=require) with your secondkey token as the password",
            )
            .await);
        }
        scram_login(s, buf, verifier).await?
    } else {
        let mut out = BytesMut::new();
        proto::auth(&mut out, 3, &[]);
        s.write_all(&out).await?;
        let (ty, body) = read_message(s, buf).await?;
        if ty != b'p' {
            return Err(fatal(s, "08P01", "expected a password message").await);
        }
        let token = proto::Reader::new(&body, "PasswordMessage")
            .cstr()?
            .to_string();
        let hash = secondkey_server::auth::token_hash(&token);
        sh.gateway
            .config
            .tokens
            .get(&hash)
            .is_some_and(|p| principal.as_ref().is_some_and(|q| q.id == p.id))
    };
    let Some(principal) = principal.filter(|_| ok) else {
        let msg = format!("password authentication failed for user \"{user}\"");
        return Err(fatal(s, "28P01", &msg).await);
    };
    let mut out = BytesMut::new();
    proto::auth(&mut out, 0, &[]);
    s.write_all(&out).await?;
    Ok(Some((principal, passed)))
}

/// Runs a SCRAM-SHA-256 exchange; `false` when the proof is wrong.
async fn scram_login(
    s: &mut Stream,
    buf: &mut BytesMut,
    verifier: Option<scram::Verifier>,
) -> anyhow::Result<bool> {
    let mut out = BytesMut::new();
    proto::auth(&mut out, 10, b"SCRAM-SHA-256\0\0");
    s.write_all(&out).await?;
    let (ty, body) = read_message(s, buf).await?;
    if ty != b'p' {
        return Err(fatal(s, "08P01", "expected a SASL initial response").await);
    }
    let mut r = proto::Reader::new(&body, "SASLInitialResponse");
    let mech = r.cstr()?;
    if mech != scram::MECHANISM {
        return Err(fatal(s, "28000", "only SCRAM-SHA-256 is offered").await);
    }
    let n = r.i32()?;
    let first = if n < 0 { &[][..] } else { r.bytes(n as usize)? };
    let mut random = [0u8; 18];
    getrandom::getrandom(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut ex = scram::ServerExchange::new(verifier, random);
    let server_first = match ex.first(first) {
        Ok(m) => m,
        Err(e) => return Err(fatal(s, "28000", &e.to_string()).await),
    };
    let mut out = BytesMut::new();
    proto::auth(&mut out, 11, server_first.as_bytes());
    s.write_all(&out).await?;
    let (ty, body) = read_message(s, buf).await?;
    if ty != b'p' {
        return Err(fatal(s, "08P01", "expected a SASL response").await);
    }
    match ex.finish(&body) {
        Ok(server_final) => {
            let mut out = BytesMut::new();
            proto::auth(&mut out, 12, server_final.as_bytes());
            s.write_all(&out).await?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// A CancelRequest: stops a held statement's wait, and cancels whatever
/// runs upstream. Unknown keys are ignored, as PostgreSQL does.
async fn cancel(sh: &Shared, key: (i32, i32)) {
    let target = sh
        .cancels
        .lock()
        .ok()
        .and_then(|c| c.get(&key).map(|e| (e.upstream, e.hold.clone())));
    if let Some((upstream, hold)) = target {
        hold.notify_waiters();
        if let Err(e) = upstream::cancel(&sh.conn.upstream, upstream).await {
            tracing::warn!(error = %e, "could not forward a cancel request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tls_acceptor;

    /// A `[postgres.tls]` file that cannot be used is named with its key
    /// and path, and what is wrong with it.
    #[test]
    fn tls_files_that_cannot_be_used_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM at all\n").unwrap();
        let err = |cert: &std::path::Path, key: &std::path::Path| {
            tls_acceptor(cert, key).err().expect("refused").to_string()
        };
        let e = err(&missing, &empty);
        assert!(
            e.starts_with(&format!(
                "[postgres.tls] cert_file {}: cannot read it:",
                missing.display()
            )),
            "{e}"
        );
        let e = err(&empty, &empty);
        assert_eq!(
            e,
            format!(
                "[postgres.tls] cert_file {}: holds no PEM certificate",
                empty.display()
            )
        );
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_file = dir.path().join("cert.pem");
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        let e = err(&cert_file, &missing);
        assert!(
            e.starts_with(&format!(
                "[postgres.tls] key_file {}: cannot read it:",
                missing.display()
            )),
            "{e}"
        );
        let e = err(&cert_file, &cert_file);
        assert_eq!(
            e,
            format!(
                "[postgres.tls] key_file {}: holds no PEM private key",
                cert_file.display()
            )
        );
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
        assert!(tls_acceptor(&cert_file, &key_file).is_ok());
    }
}
