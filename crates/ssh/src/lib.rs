//! The secondkey SSH gateway, an `Extension` of `secondkey serve` with its
//! own listener (`[ssh_gateway]`), in front of the `[[ssh]]` upstream hosts.
//!
//! Agents log in with an SSH key (or a user certificate of a configured
//! authority) registered for their secondkey principal, as
//! `<host>@gateway` or `<principal>+<host>@gateway`. Each `exec` request
//! becomes an action (kind `ssh`, resource `ssh://<host>/<user>`) whose
//! operation is the highest class of the simple commands in it
//! ([`shell`], [`classify`]); `scp -f`/`-t` and every SFTP request that
//! opens, lists or changes a path ([`sftp`]) are actions with their paths;
//! an interactive shell is one `shell` action, recorded as asciicast v2
//! ([`recording`]). Only what the gateway authorized reaches the upstream,
//! over a connection the gateway logged in to with its own key
//! ([`upstream`]). OpenSSH's jump-host form (`ssh -J <principal>@gateway
//! prod-db-1`) is the same: the gateway answers the `direct-tcpip` channel
//! to a configured host name with an SSH session of its own.
//!
//! Architecture invariants:
//! * nothing reaches the upstream before `Gateway::intercept` (or
//!   `execute_approved`) returned a run: its authorizing log entry is
//!   durable; an approved command runs exactly once, as the bytes that
//!   were decided — the gateway never replays after a lost connection;
//! * the gateway's upstream key is read in [`config`] and used only to log
//!   in upstream: it never appears in an action, a log entry, an error, or
//!   anything sent to the agent (agents cannot forward agents or ports);
//! * what the classifier does not fully model is the most privileged
//!   class (`admin`): unknown programs, dynamic command names, compound
//!   commands, function definitions, unparseable input;
//! * the upstream's host key must be the pinned one, or nothing is sent.

pub mod classify;
pub mod config;
pub mod recording;
pub mod session;
pub mod sftp;
pub mod shell;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey};
use russh::MethodKind;
use secondkey_server::config::ConfigError;
use secondkey_server::Gateway;

use crate::classify::Classifier;
use crate::config::SshConfig;
use crate::session::{Agent, Shared};
use crate::upstream::Pool;

/// Exit codes of an agent's session, and of `secondkey exec`, when the
/// command did not run (the last `secondkey: …` stderr line says which).
pub mod exit {
    /// Policy denied it (or a reviewer did).
    pub const DENIED: u8 = 100;
    /// The request expired before a decision.
    pub const EXPIRED: u8 = 101;
    /// No decision within the hold timeout (the request stays pending).
    pub const TIMED_OUT: u8 = 102;
    /// Withdrawn, revoked, or the approval could not be used.
    pub const NOT_RUN: u8 = 103;
    /// The gateway could not decide, or (SSH) reach the upstream host.
    pub const GATEWAY: u8 = 104;
}

/// Client connections open on the listener, against
/// `max_connections` and `max_connections_per_address`.
#[derive(Default)]
struct Gate {
    open: usize,
    per_address: HashMap<std::net::IpAddr, usize>,
}

/// A client connection counted in its [`Gate`] while it lives.
struct Slot {
    gate: Arc<std::sync::Mutex<Gate>>,
    ip: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        g.open = g.open.saturating_sub(1);
        if let Some(n) = g.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.per_address.remove(&self.ip);
            }
        }
    }
}

/// Counts a new connection from `ip`, or says which cap refuses it.
fn admit(
    gate: &Arc<std::sync::Mutex<Gate>>,
    ip: std::net::IpAddr,
    cfg: &SshConfig,
) -> Result<Slot, String> {
    let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
    if g.open >= cfg.max_connections {
        return Err(format!(
            "{} connections are open (ssh_gateway.max_connections)",
            cfg.max_connections
        ));
    }
    let from = g.per_address.entry(ip).or_default();
    if *from >= cfg.max_connections_per_address {
        return Err(format!(
            "{} connections from this address are open (ssh_gateway.max_connections_per_address)",
            cfg.max_connections_per_address
        ));
    }
    *from += 1;
    g.open += 1;
    Ok(Slot {
        gate: gate.clone(),
        ip,
    })
}

/// The SSH gateway extension.
pub struct SshGateway {
    cfg: SshConfig,
}

impl SshGateway {
    /// Reads `[ssh_gateway]` and `[[ssh]]`, if configured.
    pub fn from_config(cfg: &secondkey_server::Config) -> Result<Option<SshGateway>, ConfigError> {
        let principals: BTreeSet<String> = cfg.principals.keys().cloned().collect();
        let parsed = config::parse(
            cfg.sections.get("ssh_gateway"),
            cfg.sections.get("ssh"),
            &cfg.base_dir,
            &cfg.data_dir,
            &principals,
            &cfg.env,
        )?;
        Ok(parsed.map(|cfg| SshGateway { cfg }))
    }

    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    /// Binds the listener and spawns its accept loop and the recordings'
    /// pruning; returns the bound address. Must run inside the runtime.
    pub fn listen(&self, gateway: Arc<Gateway>) -> anyhow::Result<std::net::SocketAddr> {
        let host_key = load_or_create_host_key(&self.cfg.host_key_file)?;
        // A shell cannot run unrecorded: a directory that cannot hold
        // recordings stops the start, not each session.
        recording::check_dir(&self.cfg.recordings_dir).map_err(|e| {
            anyhow::anyhow!(
                "config key `ssh_gateway.recordings_dir`: cannot use {} for recordings: {e}",
                self.cfg.recordings_dir.display()
            )
        })?;
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-secondkey".into()),
            methods: russh::MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(60)),
            max_auth_attempts: 6,
            nodelay: true,
            ..Default::default()
        };
        let listener = secondkey_server::limits::conn::bind(self.cfg.listen).map_err(|e| {
            anyhow::anyhow!("ssh gateway: cannot listen on {}: {e}", self.cfg.listen)
        })?;
        let addr = listener.local_addr()?;
        let pools = self
            .cfg
            .hosts
            .iter()
            .map(|h| (h.name.clone(), Arc::new(Pool::new(h.clone()))))
            .collect::<HashMap<_, _>>();
        let config = Arc::new(config);
        let shared = Arc::new(Shared {
            server: config.clone(),
            classifier: Classifier::new(self.cfg.rules.clone()),
            cfg: self.cfg.clone(),
            gateway,
            pools,
        });
        tracing::info!(%addr, hosts = self.cfg.hosts.len(), "ssh gateway listening");
        eprintln!("secondkey ssh gateway listening on {addr}");
        tokio::spawn(accept_loop(listener, config, shared.clone()));
        let dir = self.cfg.recordings_dir.clone();
        let keep = self.cfg.recording_retention;
        tokio::spawn(async move {
            loop {
                let d = dir.clone();
                if let Ok(Ok(n)) =
                    tokio::task::spawn_blocking(move || recording::prune(&d, keep)).await
                {
                    if n > 0 {
                        tracing::info!(removed = n, "ssh: recordings past their retention removed");
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        Ok(addr)
    }
}

impl secondkey_server::extension::Extension for SshGateway {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        self.listen(gateway).map(|_| ())
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
) {
    let gate = Arc::new(std::sync::Mutex::new(Gate::default()));
    let login_timeout = shared.cfg.login_timeout;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let slot = match admit(&gate, peer.ip(), &shared.cfg) {
                    Ok(s) => s,
                    Err(why) => {
                        // Closed before the SSH greeting: the client reads
                        // "connection closed by remote host".
                        tracing::warn!(%peer, "ssh connection refused: {why}");
                        drop(tcp);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                // A second handle on the socket, to shut it if the agent
                // does not log in in time: russh's session runs on a task
                // of its own, which nothing else here can end.
                let kill = {
                    use std::os::fd::AsFd;
                    tcp.as_fd()
                        .try_clone_to_owned()
                        .ok()
                        .map(std::net::TcpStream::from)
                };
                let handler = Agent::new(shared.clone(), Some(peer));
                let logged_in = handler.logged_in();
                let config = config.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let deadline = tokio::time::Instant::now() + login_timeout;
                    let started = tokio::time::timeout_at(
                        deadline,
                        russh::server::run_stream(config, tcp, handler),
                    )
                    .await;
                    let mut session = match started {
                        Ok(Ok(session)) => session,
                        Ok(Err(e)) if client_left(&e) => {
                            tracing::info!(%peer, "ssh client left before its session started");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "ssh connection refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "ssh connection refused: no SSH greeting within ssh_gateway.login_timeout");
                            return;
                        }
                    };
                    let ended = match tokio::time::timeout_at(deadline, &mut session).await {
                        Ok(ended) => ended,
                        Err(_) if !logged_in.load(std::sync::atomic::Ordering::Acquire) => {
                            tracing::warn!(%peer, "ssh connection closed: not logged in within ssh_gateway.login_timeout");
                            if let Some(k) = &kill {
                                let _ = k.shutdown(std::net::Shutdown::Both);
                            }
                            let _ =
                                tokio::time::timeout(Duration::from_secs(5), &mut session).await;
                            return;
                        }
                        Err(_) => {
                            drop(kill);
                            session.await
                        }
                    };
                    match ended {
                        Ok(()) => {}
                        Err(e) if client_left(&e) => {
                            tracing::info!(%peer, "ssh client left");
                        }
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "ssh connection ended by a protocol error")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "ssh accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The gateway's own host key: read, or created (Ed25519, mode 0600).
fn load_or_create_host_key(path: &Path) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        // A private key, read as the gateway reads its others (private to
        // its owner), and one the gateway can sign with.
        let bad = |e: String| {
            anyhow::anyhow!(
                "config key `ssh_gateway.host_key_file`: {}: {e}",
                path.display()
            )
        };
        let text = secondkey_server::keys::read_secret(path).map_err(|e| bad(e.to_string()))?;
        let key = russh::keys::decode_secret_key(&text, None)
            .map_err(|e| bad(format!("not an unencrypted OpenSSH private key: {e}")))?;
        config::supported(key.algorithm()).map_err(bad)?;
        return Ok(key);
    }
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| anyhow::anyhow!("cannot create an ssh host key: {e}"))?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the ssh host key: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    secondkey_server::keys::write_secret_file(path, &text)
        .map_err(|e| anyhow::anyhow!("cannot write the ssh host key {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created the ssh gateway's host key");
    Ok(key)
}

/// A client that went away — closed, reset or hung up, also in the middle
/// of the handshake — rather than one that broke the protocol: logged at
/// `info` as having left, not as refused.
pub(crate) fn client_left(e: &russh::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        russh::Error::Disconnect | russh::Error::HUP => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
        ),
        _ => false,
    }
}
