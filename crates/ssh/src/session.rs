//! One agent connection: authentication, and a task per session channel
//! that turns its request (`exec`, `shell`, the `sftp` subsystem) into
//! actions, waits for decisions, and relays only what was authorized to a
//! channel upstream.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::{Certificate, HashAlg};
use russh::server::{
    self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure};
use secondkey_core::action::Digest;
use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_core::request::RequestState;
use secondkey_core::time::format_duration as human;
use secondkey_server::intercept::{Execution, ExecutionResult, Intercept, Verdict};
use secondkey_server::Gateway;
use serde_json::{json, Map, Value};

use crate::classify::{Class, Classifier};
use crate::config::SshConfig;
use crate::recording::Recorder;
use crate::sftp;
use crate::upstream::{wait_reply, Pool, UpChannel};

pub use crate::exit;

/// Stdin an agent may send while its command is held (bytes); past this
/// the gateway stops reading until the command runs.
const MAX_HELD_INPUT: usize = 4 * 1024 * 1024;

/// What every connection shares.
pub struct Shared {
    /// The server's own configuration (host key, algorithms), also for
    /// the inner sessions of the jump-host form.
    pub server: Arc<server::Config>,
    pub cfg: SshConfig,
    pub gateway: Arc<Gateway>,
    pub classifier: Classifier,
    pub pools: HashMap<String, Arc<Pool>>,
}

/// The per-connection handler russh drives.
pub struct Agent {
    sh: Arc<Shared>,
    peer: Option<SocketAddr>,
    who: Option<Principal>,
    host: String,
    /// The jump-host form: the session inside a `direct-tcpip` channel to
    /// this host, by the principal that opened it.
    inner: Option<(String, String)>,
    /// Set once the agent has logged in (the listener's login timeout
    /// reads it).
    logged_in: Arc<std::sync::atomic::AtomicBool>,
}

impl Agent {
    pub fn new(sh: Arc<Shared>, peer: Option<SocketAddr>) -> Agent {
        Agent {
            sh,
            peer,
            who: None,
            host: String::new(),
            inner: None,
            logged_in: Arc::default(),
        }
    }

    /// The logged-in principal's id, for logs (none before login).
    fn who_id(&self) -> Option<String> {
        self.who.as_ref().map(|p| p.id.to_string())
    }

    /// The flag this handler sets once its agent has logged in.
    pub fn logged_in(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.logged_in.clone()
    }

    /// `user` is `<host>` or `<principal>+<host>`; inside a jump, the host
    /// is the jump's target and `user` is `[<principal>+]<anything>`.
    fn login(&mut self, user: &str, candidates: &[String], how: &str) -> Auth {
        let (named, host) = match user.rsplit_once('+') {
            Some((p, h)) => (Some(p), h),
            None => (None, user),
        };
        let (host, candidates): (&str, Vec<String>) = match &self.inner {
            // The same principal as the outer connection, or nobody.
            Some((h, outer)) => (
                h.as_str(),
                candidates.iter().filter(|c| *c == outer).cloned().collect(),
            ),
            None => (host, candidates.to_vec()),
        };
        let candidates = &candidates[..];
        let named = named.map(|p| {
            p.parse::<PrincipalId>()
                .map_or_else(|_| p.to_string(), |id| id.to_string())
        });
        let chosen = match named.as_deref() {
            Some(p) => candidates.iter().find(|c| c.as_str() == p),
            None if candidates.len() == 1 => candidates.first(),
            None => None,
        };
        let principal =
            chosen.and_then(|id| self.sh.gateway.config.principals.get(id.as_str()).cloned());
        match principal {
            Some(p) => {
                tracing::info!(peer = ?self.peer, principal = %p.id, host, how, "ssh agent logged in");
                self.who = Some(p);
                self.host = host.to_string();
                self.logged_in
                    .store(true, std::sync::atomic::Ordering::Release);
                Auth::Accept
            }
            None => {
                tracing::warn!(peer = ?self.peer, user, how, candidates = ?candidates,
                    "ssh login refused: the key or certificate is not registered for the named principal");
                Auth::reject()
            }
        }
    }
}

impl server::Handler for Agent {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Checked after the signature proves possession (auth_publickey).
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let candidates: Vec<String> = self
            .sh
            .cfg
            .keys
            .iter()
            .filter(|(k, _)| k.key_data() == key.public_key.key_data())
            .map(|(_, p)| p.clone())
            .collect();
        if candidates.is_empty() {
            tracing::warn!(peer = ?self.peer, user,
                key = %key.public_key.fingerprint(HashAlg::Sha256),
                "ssh login refused: unknown key (register it in [[ssh_gateway.keys]])");
            return Ok(Auth::reject());
        }
        Ok(self.login(user, &candidates, "key"))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cas: Vec<_> = self
            .sh
            .cfg
            .authorities
            .iter()
            .map(|k| k.fingerprint(HashAlg::Sha256))
            .collect();
        let valid = cert.cert_type() == russh::keys::ssh_key::certificate::CertType::User
            && cert.validate_at(now, cas.iter()).is_ok();
        if !valid {
            tracing::warn!(peer = ?self.peer, user, key_id = cert.key_id(),
                "ssh login refused: the certificate is not a valid user certificate of a configured authority");
            return Ok(Auth::reject());
        }
        if !cert.critical_options().is_empty() {
            // OpenSSH refuses options it does not know; force-command and
            // source-address would narrow what the certificate allows, and
            // the gateway does not enforce them: refuse rather than widen.
            tracing::warn!(peer = ?self.peer, user, key_id = cert.key_id(),
                "ssh login refused: certificates with critical options (force-command, source-address) are not accepted");
            return Ok(Auth::reject());
        }
        // Principal ids in their canonical form; an empty list (valid for
        // anyone, to OpenSSH) names nobody here.
        let candidates: Vec<String> = cert
            .valid_principals()
            .iter()
            .filter_map(|p| p.parse::<PrincipalId>().ok())
            .map(|p| p.to_string())
            .filter(|p| self.sh.gateway.config.principals.contains_key(p.as_str()))
            .collect();
        Ok(self.login(user, &candidates, "certificate"))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(who) = self.who.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let ctx = Ctx {
            sh: self.sh.clone(),
            who,
            host: self.host.clone(),
            peer: self.peer,
        };
        tokio::spawn(channel_task(channel, ctx));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The jump-host form (`ssh -J gateway prod-db-1`): the agent's
        // "connection to the host" is a second SSH session with the gateway
        // itself, inside this channel, decided like any other. Nothing is
        // forwarded anywhere.
        let who = self.who.clone();
        match who {
            Some(who) if self.inner.is_none() && self.sh.pools.contains_key(host_to_connect) => {
                reply.accept().await;
                let mut inner = Agent::new(self.sh.clone(), self.peer);
                inner.inner = Some((host_to_connect.to_string(), who.id.to_string()));
                let config = self.sh.server.clone();
                let peer = self.peer;
                tokio::spawn(async move {
                    match russh::server::run_stream(config, channel.into_stream(), inner).await {
                        Ok(session) => {
                            if let Err(e) = session.await {
                                tracing::debug!(?peer, error = %e, "ssh jump session ended");
                            }
                        }
                        Err(e) if crate::client_left(&e) => {
                            tracing::info!(?peer, "ssh jump session ended: the client left")
                        }
                        Err(e) => tracing::warn!(?peer, error = %e, "ssh jump session refused"),
                    }
                });
            }
            _ => {
                tracing::warn!(peer = ?self.peer, host_to_connect, port_to_connect,
                    "ssh: port forwarding refused (only configured host names are jump targets)");
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    // Every channel request is answered here, as russh parses it, so in
    // order and only if the client asked for an answer (russh keeps one
    // "wants a reply" flag per channel, which the next request resets): an
    // answer sent later, from the channel's task, could be taken as the
    // answer to the request after it. OpenSSH sends `env` and agent
    // forwarding requests without asking for an answer, between a
    // `pty-req` and the `exec` that do. What each request then does is
    // the channel task's (`channel_task`): whether a command runs is said
    // on its stderr and exit status, not by refusing the request.

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            tracing::warn!(peer = ?self.peer, subsystem = %name, "ssh: unknown subsystem refused");
            session.channel_failure(channel)
        }
    }

    // Forwarding the agent, X11 or ports back to the client is refused and
    // logged with the peer.

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(peer = ?self.peer, principal = ?self.who_id(),
            "ssh: agent forwarding refused");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::warn!(peer = ?self.peer, principal = ?self.who_id(),
            "ssh: X11 forwarding refused");
        session.channel_failure(channel)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(peer = ?self.peer, principal = ?self.who_id(),
            address, port = *port, "ssh: remote port forwarding refused");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(peer = ?self.peer, principal = ?self.who_id(),
            socket_path, "ssh: remote socket forwarding refused");
        Ok(false)
    }
}

/// What a channel task knows about its connection.
#[derive(Clone)]
struct Ctx {
    sh: Arc<Shared>,
    who: Principal,
    host: String,
    peer: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
struct Pty {
    term: String,
    cols: u32,
    rows: u32,
    modes: Vec<(russh::Pty, u32)>,
}

/// A decision's outcome for the channel.
enum Go {
    Run(Execution),
    Stop(u8),
}

/// What the agent sent while its command was held.
#[derive(Default)]
struct Held {
    msgs: VecDeque<ChannelMsg>,
    bytes: usize,
}

async fn say(ch: &Channel<Msg>, text: &str, pty: bool) {
    let text = if pty {
        text.replace('\n', "\r\n")
    } else {
        text.to_string()
    };
    let _ = ch.extended_data_bytes(1, text.into_bytes()).await;
}

async fn finish(ch: &Channel<Msg>, status: u8) {
    end(ch, u32::from(status), false).await;
}

/// Sends the exit status, EOF (unless the upstream's was passed on
/// already) and closes the channel.
async fn end(ch: &Channel<Msg>, status: u32, eof_sent: bool) {
    let _ = ch.exit_status(status).await;
    if !eof_sent {
        let _ = ch.eof().await;
    }
    let _ = ch.close().await;
}

async fn channel_task(mut ch: Channel<Msg>, ctx: Ctx) {
    let mut pty: Option<Pty> = None;
    let mut env: Vec<String> = Vec::new();
    loop {
        let Some(msg) = ch.wait().await else { return };
        match msg {
            ChannelMsg::Close => return,
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                terminal_modes,
                ..
            } => {
                pty = Some(Pty {
                    term,
                    cols: col_width,
                    rows: row_height,
                    modes: terminal_modes,
                });
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            // Named in the action; values are not passed upstream.
            ChannelMsg::SetEnv { variable_name, .. }
                if env.len() < 64 && !env.contains(&variable_name) =>
            {
                env.push(variable_name);
            }
            ChannelMsg::Exec { command, .. } => {
                run_command(&mut ch, &ctx, command, pty, env).await;
                return;
            }
            ChannelMsg::RequestShell { .. } => {
                run_shell(&mut ch, &ctx, pty, env).await;
                return;
            }
            // Any other subsystem was refused by the handler.
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                run_sftp(&mut ch, &ctx, env).await;
                return;
            }
            // Other subsystems, agent and X11 forwarding: refused and
            // answered by the connection's handler (`Agent`), in order.
            _ => {}
        }
    }
}

impl Ctx {
    fn pool(&self) -> Option<Arc<Pool>> {
        self.sh.pools.get(&self.host).cloned()
    }

    /// The action for `operation` on the host, with `params`.
    fn action(&self, pool: &Pool, operation: &str, params: Value) -> Value {
        json!({
            "kind": "ssh",
            "operation": operation,
            "resource": format!("ssh://{}/{}", pool.host().name, pool.host().user),
            "params": params,
        })
    }

    fn facts(&self, pool: &Pool, class: Class) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("host".into(), json!(pool.host().name));
        f.insert("ssh_user".into(), json!(pool.host().user));
        f.insert("operation".into(), json!(class.as_str()));
        if let Some(p) = self.peer {
            f.insert("source_ip".into(), json!(p.ip().to_string()));
        }
        f
    }

    /// Refuses a session for an unknown host, with the hosts it could use.
    async fn unknown_host(&self, ch: &Channel<Msg>, pty: bool) {
        let mut names: Vec<&str> = self.sh.cfg.hosts.iter().map(|h| h.name.as_str()).collect();
        names.sort();
        tracing::warn!(peer = ?self.peer, principal = %self.who.id, host = %self.host,
            "ssh: refused a session for an unknown host");
        say(
            ch,
            &format!(
                "secondkey: unknown host {:?}; this gateway serves: {}. Connect as <host>@gateway (or <principal>+<host>@gateway). Nothing was run.\n",
                self.host,
                names.join(", ")
            ),
            pty,
        )
        .await;
        finish(ch, exit::GATEWAY).await;
    }

    /// Decides `action`; tells the agent what happens on stderr; holds
    /// with a line naming the request's URL, buffering what the agent
    /// sends meanwhile into `held`.
    async fn decide(
        &self,
        ch: &mut Channel<Msg>,
        action: Value,
        facts: Map<String, Value>,
        pty: bool,
        held: &mut Held,
    ) -> Go {
        let gw = &self.sh.gateway;
        let verdict = gw
            .intercept(
                &self.who,
                Intercept {
                    action,
                    transport: "ssh",
                    facts,
                },
            )
            .await;
        match verdict {
            Err(e) => {
                say(
                    ch,
                    &format!(
                        "secondkey: could not decide this, so it was not run: {}\n",
                        e.message
                    ),
                    pty,
                )
                .await;
                Go::Stop(exit::GATEWAY)
            }
            Ok(Verdict::Run(ex)) => {
                // The identical command sent again once approved: say so,
                // as when the approval lands while it waits.
                if let Some(id) = &ex.request_id {
                    say(
                        ch,
                        &format!("secondkey: request {id} approved; running it once\n"),
                        pty,
                    )
                    .await;
                }
                Go::Run(ex)
            }
            Ok(Verdict::Deny(d)) => {
                let why: Vec<String> = d
                    .reasons
                    .iter()
                    .map(|r| r.message.clone())
                    .filter(|m| !m.is_empty())
                    .collect();
                let mut text = format!("secondkey: denied: {}\n", d.message);
                if !why.is_empty() {
                    text.push_str(&format!("secondkey: {}\n", why.join("; ")));
                }
                say(ch, &text, pty).await;
                Go::Stop(exit::DENIED)
            }
            Ok(Verdict::Held(h)) => {
                let id = h.request.id.clone();
                let timeout = self.sh.cfg.hold_timeout;
                say(
                    ch,
                    &format!(
                        "secondkey: held for review as request {id}: {}\nsecondkey: waiting up to {} for a decision…\n",
                        h.url,
                        human(timeout)
                    ),
                    pty,
                )
                .await;
                self.wait(ch, &id, &h.request.digest, pty, held).await
            }
        }
    }

    async fn wait(
        &self,
        ch: &mut Channel<Msg>,
        id: &str,
        digest: &Digest,
        pty: bool,
        held: &mut Held,
    ) -> Go {
        let gw = &self.sh.gateway;
        let deadline = Instant::now() + self.sh.cfg.hold_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                say(ch, &format!("secondkey: request {id} was not decided within {}; nothing was run (the request stays pending: send the identical command again once it is approved; it runs once)\n", human(self.sh.cfg.hold_timeout)), pty).await;
                return Go::Stop(exit::TIMED_OUT);
            }
            let reading = held.bytes < MAX_HELD_INPUT;
            tokio::select! {
                r = gw.wait_decided(id, left.min(Duration::from_secs(30))) => match r {
                    Err(e) => {
                        say(ch, &format!("secondkey could not follow request {id}, so nothing was run: {}\n", e.message), pty).await;
                        return Go::Stop(exit::GATEWAY);
                    }
                    Ok(req) => match req.state {
                        RequestState::Pending => continue,
                        RequestState::Approved => {
                            return match gw.execute_approved(&self.who, id, digest).await {
                                Ok(ex) => {
                                    say(ch, &format!("secondkey: request {id} approved; running it once\n"), pty).await;
                                    Go::Run(ex)
                                }
                                Err(e) => {
                                    say(ch, &format!("secondkey could not use the approval of request {id}: {}\n", e.message), pty).await;
                                    Go::Stop(exit::NOT_RUN)
                                }
                            };
                        }
                        other => {
                            let by: Vec<String> = req.reviews.iter().map(|r| r.reviewer.to_string()).collect();
                            let state = other.as_str();
                            let mut text = format!("secondkey: request {id} was {state}; nothing was run");
                            if !by.is_empty() {
                                text.push_str(&format!(" (reviewed by {})", by.join(", ")));
                            }
                            text.push('\n');
                            say(ch, &text, pty).await;
                            return Go::Stop(match other {
                                RequestState::Denied => exit::DENIED,
                                RequestState::Expired => exit::EXPIRED,
                                _ => exit::NOT_RUN,
                            });
                        }
                    },
                },
                m = ch.wait(), if reading => match m {
                    None | Some(ChannelMsg::Close) => {
                        let _ = gw.withdraw(&self.who, id).await;
                        tracing::info!(request = id, "ssh agent left while held; request withdrawn");
                        return Go::Stop(exit::NOT_RUN);
                    }
                    Some(ChannelMsg::Data { data }) => {
                        held.bytes += data.len();
                        held.msgs.push_back(ChannelMsg::Data { data });
                    }
                    Some(m @ (ChannelMsg::Eof | ChannelMsg::WindowChange { .. } | ChannelMsg::Signal { .. })) => held.msgs.push_back(m),
                    Some(_) => {}
                },
            }
        }
    }

    /// Records how an execution went (`action.result`).
    async fn record(&self, ex: &Execution, ok: bool, summary: Value) {
        let r = ExecutionResult {
            ok,
            summary,
            reads: vec![],
            writes: vec![],
        };
        if let Err(e) = self.sh.gateway.record_execution(&self.who, ex, r).await {
            tracing::warn!(execution = %ex.id, error = %e.message, "ssh: could not record a result");
        }
    }
}

/// How the relay ended.
#[derive(Debug, Default)]
struct Relayed {
    exit: Option<u32>,
    signal: Option<String>,
    bytes_out: u64,
    bytes_in: u64,
    /// The agent went away before the upstream finished.
    agent_left: bool,
    /// The upstream's EOF was passed on.
    eof_sent: bool,
}

/// Relays between the agent's channel and the upstream's until the
/// upstream closes (or the agent leaves).
async fn relay(
    ch: &mut Channel<Msg>,
    up: &mut UpChannel,
    held: Held,
    mut rec: Option<&mut Recorder>,
) -> Relayed {
    let mut r = Relayed::default();
    for m in held.msgs {
        forward_to_upstream(m, up, &mut r, rec.as_deref_mut()).await;
    }
    let mut agent_open = true;
    loop {
        tokio::select! {
            m = ch.wait(), if agent_open => match m {
                None | Some(ChannelMsg::Close) => {
                    agent_open = false;
                    r.agent_left = true;
                    let _ = up.channel.close().await;
                }
                Some(m) => forward_to_upstream(m, up, &mut r, rec.as_deref_mut()).await,
            },
            m = up.channel.wait() => match m {
                None | Some(ChannelMsg::Close) => break,
                Some(ChannelMsg::Data { data }) => {
                    r.bytes_out += data.len() as u64;
                    if let Some(rec) = rec.as_deref_mut() {
                        let _ = rec.output(&data);
                    }
                    if agent_open {
                        let _ = ch.data_bytes(data).await;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    r.bytes_out += data.len() as u64;
                    if agent_open {
                        let _ = ch.extended_data_bytes(ext, data).await;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => r.exit = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => r.signal = Some(format!("{signal_name:?}")),
                Some(ChannelMsg::Eof) => {
                    if agent_open && !r.eof_sent {
                        let _ = ch.eof().await;
                        r.eof_sent = true;
                    }
                }
                Some(_) => {}
            },
        }
    }
    r
}

async fn forward_to_upstream(
    m: ChannelMsg,
    up: &mut UpChannel,
    r: &mut Relayed,
    rec: Option<&mut Recorder>,
) {
    match m {
        ChannelMsg::Data { data } => {
            r.bytes_in += data.len() as u64;
            let _ = up.channel.data_bytes(data).await;
        }
        ChannelMsg::Eof => {
            let _ = up.channel.eof().await;
        }
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            pix_width,
            pix_height,
        } => {
            if let Some(rec) = rec {
                let _ = rec.resize(col_width, row_height);
            }
            let _ = up
                .channel
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        ChannelMsg::Signal { signal } => {
            let _ = up.channel.signal(signal).await;
        }
        _ => {}
    }
}

fn summary(r: &Relayed, started: Instant) -> (bool, Value) {
    let ok = r.exit == Some(0);
    let mut s = json!({
        "exit_status": r.exit,
        "duration_ms": started.elapsed().as_millis() as u64,
        "bytes_out": r.bytes_out,
        "bytes_in": r.bytes_in,
    });
    if let Some(sig) = &r.signal {
        s["signal"] = json!(sig);
    }
    if r.exit.is_none() && r.signal.is_none() {
        // It may or may not have taken effect.
        s["status"] = json!("unknown");
    }
    (ok, s)
}

/// Opens a channel upstream; on failure tells the agent and records the
/// execution as failed (its authorization is already used).
async fn open_upstream(
    ctx: &Ctx,
    ch: &Channel<Msg>,
    pool: &Pool,
    ex: &Execution,
    pty: bool,
) -> Option<UpChannel> {
    match pool.channel().await {
        Ok(up) => Some(up),
        Err(e) => {
            tracing::warn!(peer = ?ctx.peer, principal = %ctx.who.id, host = %pool.host().name, error = %e, "ssh: upstream unavailable");
            say(ch, &format!("secondkey: {e}\n"), pty).await;
            ctx.record(ex, false, json!({"error": e.to_string(), "ran": false}))
                .await;
            finish(ch, exit::GATEWAY).await;
            None
        }
    }
}

/// `scp -f`/`-t` in server mode: (`export`|`write`, paths).
pub fn scp_mode(script: &crate::shell::Script) -> Option<(Class, Vec<String>)> {
    use crate::shell::Word;
    if !script.opaque.is_empty() || script.commands.len() != 1 {
        return None;
    }
    let c = &script.commands[0];
    if !c.assignments.is_empty() || !c.redirects.is_empty() || c.argv.first()?.lit()? != "scp" {
        return None;
    }
    let mut mode = None;
    let mut paths = Vec::new();
    let mut options = true;
    for w in &c.argv[1..] {
        let Word::Lit(w) = w else { return None };
        if options && w == "--" {
            options = false;
        } else if options && w.starts_with('-') && w.len() > 1 {
            for f in w[1..].chars() {
                match f {
                    'f' => mode = Some(Class::Export),
                    't' => mode = Some(mode.unwrap_or(Class::Write).max(Class::Write)),
                    'r' | 'p' | 'd' | 'v' => {}
                    _ => return None,
                }
            }
        } else {
            options = false;
            paths.push(w.clone());
        }
    }
    Some((mode?, paths))
}

async fn run_command(
    ch: &mut Channel<Msg>,
    ctx: &Ctx,
    command: Vec<u8>,
    pty: Option<Pty>,
    env: Vec<String>,
) {
    let tty = pty.is_some();
    let Some(pool) = ctx.pool() else {
        return ctx.unknown_host(ch, tty).await;
    };
    let text = String::from_utf8_lossy(&command).to_string();
    let script = if std::str::from_utf8(&command).is_ok() {
        crate::shell::parse(&text)
    } else {
        crate::shell::Script {
            commands: vec![],
            opaque: vec!["the command is not UTF-8".into()],
        }
    };
    // The terminal is part of what is approved: the same command with a
    // pty is another action (a pager on a terminal starts a shell).
    let mut params = json!({"command": text, "env": env, "pty": tty});
    if std::str::from_utf8(&command).is_err() {
        // The text shows invalid bytes as U+FFFD, so two commands that
        // differ only there read the same: the exact bytes are part of
        // what is decided, or one's approval would run the other.
        params["command_hex"] = json!(hex::encode(&command));
    }
    if let Some(p) = &pty {
        params["term"] = json!(p.term);
    }
    let mut a = match scp_mode(&script) {
        Some((class, paths)) => {
            params["scp"] = json!(if class == Class::Export { "from" } else { "to" });
            params["paths"] = json!(paths);
            crate::classify::Analysis {
                class,
                classes: [class].into(),
                commands: ["scp".to_string()].into(),
                paths: paths.into_iter().collect(),
                unknown: vec![],
            }
        }
        None => ctx.sh.classifier.classify(&script),
    };
    if tty && a.class < Class::Admin {
        // journalctl, systemctl status, git log start a pager on a
        // terminal, and `!sh` in less is a shell.
        a.class = Class::Admin;
        a.classes.insert(Class::Admin);
        a.unknown
            .push("a terminal was requested: a pager on it can start a shell".into());
    }
    let class = a.class;
    let mut facts = ctx.facts(&pool, class);
    facts.insert(
        "classes".into(),
        json!(a.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
    );
    facts.insert("commands".into(), json!(a.commands));
    facts.insert("paths".into(), json!(a.paths));
    if !a.unknown.is_empty() {
        facts.insert("unknown".into(), json!(a.unknown));
    }
    facts.insert("pty".into(), json!(tty));
    let action = ctx.action(&pool, class.as_str(), params);
    let mut held = Held::default();
    let ex = match ctx.decide(ch, action, facts, tty, &mut held).await {
        Go::Stop(code) => return finish(ch, code).await,
        Go::Run(ex) => ex,
    };
    let started = Instant::now();
    let Some(mut up) = open_upstream(ctx, ch, &pool, &ex, tty).await else {
        return;
    };
    if let Some(p) = &pty {
        let _ = up
            .channel
            .request_pty(false, &p.term, p.cols, p.rows, 0, 0, &p.modes)
            .await;
    }
    // Exactly the bytes that were decided, once.
    if let Err(e) = up.channel.exec(true, command).await {
        return upstream_failed(ctx, ch, &ex, &e.to_string(), tty).await;
    }
    if let Err(e) = wait_reply(&mut up.channel).await {
        return upstream_failed(ctx, ch, &ex, &e, tty).await;
    }
    let r = relay(ch, &mut up, held, None).await;
    let (ok, s) = summary(&r, started);
    ctx.record(&ex, ok, s).await;
    finish_relayed(ch, &r, tty).await;
}

/// Ends the agent's channel as the host ended the command: its exit
/// status, or 104 with a line saying the outcome is unknown when the
/// connection to the host ended without one.
async fn finish_relayed(ch: &Channel<Msg>, r: &Relayed, pty: bool) {
    if r.agent_left {
        return;
    }
    if r.exit.is_none() && r.signal.is_none() {
        say(
            ch,
            "secondkey: the connection to the host ended before the command's exit status: whether it took effect is unknown (recorded as unknown)\n",
            pty,
        )
        .await;
    }
    end(ch, r.exit.unwrap_or(u32::from(exit::GATEWAY)), r.eof_sent).await;
}

async fn upstream_failed(ctx: &Ctx, ch: &Channel<Msg>, ex: &Execution, e: &str, pty: bool) {
    not_started(
        ctx,
        ch,
        ex,
        &format!("the upstream host did not start it: {e}"),
        pty,
    )
    .await;
}

/// An authorized execution that did not start, for `why`: said to the
/// agent, recorded as not run, exit 104.
async fn not_started(ctx: &Ctx, ch: &Channel<Msg>, ex: &Execution, why: &str, pty: bool) {
    say(ch, &format!("secondkey: {why}\n"), pty).await;
    ctx.record(ex, false, json!({"error": why, "ran": false}))
        .await;
    finish(ch, exit::GATEWAY).await;
}

async fn run_shell(ch: &mut Channel<Msg>, ctx: &Ctx, pty: Option<Pty>, env: Vec<String>) {
    let tty = pty.is_some();
    let Some(pool) = ctx.pool() else {
        return ctx.unknown_host(ch, tty).await;
    };
    let mut facts = ctx.facts(&pool, Class::MOST);
    facts.insert("operation".into(), json!("shell"));
    facts.insert("pty".into(), json!(tty));
    let action = ctx.action(
        &pool,
        "shell",
        json!({"shell": true, "pty": tty, "term": pty.as_ref().map(|p| p.term.clone()), "env": env}),
    );
    let mut held = Held::default();
    let ex = match ctx.decide(ch, action, facts, tty, &mut held).await {
        Go::Stop(code) => return finish(ch, code).await,
        Go::Run(ex) => ex,
    };
    let started = Instant::now();
    let Some(mut up) = open_upstream(ctx, ch, &pool, &ex, tty).await else {
        return;
    };
    let p = pty.clone().unwrap_or_default();
    let mut rec = match Recorder::create(
        &ctx.sh.cfg.recordings_dir,
        &ex.id,
        p.cols.max(1),
        p.rows.max(1),
        if p.term.is_empty() { "dumb" } else { &p.term },
    ) {
        Ok(r) => r,
        Err(e) => {
            // An allowed session is recorded, or it does not run.
            let msg = format!("the gateway cannot start the session's recording: {e}");
            return not_started(ctx, ch, &ex, &msg, tty).await;
        }
    };
    if let Some(p) = &pty {
        let _ = up
            .channel
            .request_pty(false, &p.term, p.cols, p.rows, 0, 0, &p.modes)
            .await;
    }
    if let Err(e) = up.channel.request_shell(true).await {
        return upstream_failed(ctx, ch, &ex, &e.to_string(), tty).await;
    }
    if let Err(e) = wait_reply(&mut up.channel).await {
        return upstream_failed(ctx, ch, &ex, &e, tty).await;
    }
    let r = relay(ch, &mut up, held, Some(&mut rec)).await;
    let (ok, mut s) = summary(&r, started);
    match rec.finish() {
        Ok(f) => {
            s["recording"] = json!({"id": ex.id, "sha256": f.sha256, "bytes": f.bytes});
        }
        Err(e) => {
            s["recording"] = json!({"id": ex.id, "error": e.to_string()});
        }
    }
    ctx.record(&ex, ok, s).await;
    finish_relayed(ch, &r, tty).await;
}

/// Ends an SFTP session whose client sent what the gateway cannot read:
/// nothing more is passed.
async fn malformed_sftp(ctx: &Ctx, ch: &Channel<Msg>, up: &UpChannel, e: &sftp::SftpError) {
    tracing::warn!(peer = ?ctx.peer, principal = %ctx.who.id, error = %e,
        "ssh: malformed SFTP input; session closed");
    say(
        ch,
        &format!("secondkey: {e}; the session is closed and nothing more was passed\n"),
        false,
    )
    .await;
    let _ = up.channel.close().await;
    finish(ch, exit::GATEWAY).await;
}

/// The SFTP subsystem: each request that opens, lists or changes a path is
/// decided on its own; a refused one is answered `PERMISSION_DENIED`
/// without reaching the server.
async fn run_sftp(ch: &mut Channel<Msg>, ctx: &Ctx, env: Vec<String>) {
    let Some(pool) = ctx.pool() else {
        return ctx.unknown_host(ch, false).await;
    };
    let mut up: Option<UpChannel> = None;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut outbuf: Vec<u8> = Vec::new();
    // Request id → its execution and when it was sent.
    let mut pending: HashMap<u32, (Execution, Instant)> = HashMap::new();
    // Request id of a passed open → its path; an open handle → its path
    // (what an `fsetstat` on the handle changes).
    let mut opens: HashMap<u32, String> = HashMap::new();
    let mut handles: HashMap<Vec<u8>, String> = HashMap::new();
    let started = Instant::now();
    loop {
        let Some(u) = up.as_mut() else {
            // Connect before the first packet is passed: the subsystem
            // itself runs nothing.
            match pool.channel().await {
                Ok(mut c) => {
                    if c.channel.request_subsystem(true, "sftp").await.is_err()
                        || wait_reply(&mut c.channel).await.is_err()
                    {
                        say(
                            ch,
                            "secondkey: the upstream host refused the sftp subsystem\n",
                            false,
                        )
                        .await;
                        return finish(ch, exit::GATEWAY).await;
                    }
                    up = Some(c);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(peer = ?ctx.peer, principal = %ctx.who.id, host = %pool.host().name, error = %e, "ssh: upstream unavailable");
                    say(ch, &format!("secondkey: {e}\n"), false).await;
                    return finish(ch, exit::GATEWAY).await;
                }
            }
        };
        tokio::select! {
            m = ch.wait() => match m {
                None | Some(ChannelMsg::Close) => {
                    let _ = u.channel.close().await;
                    break;
                }
                Some(ChannelMsg::Eof) => {
                    let _ = u.channel.eof().await;
                }
                Some(ChannelMsg::Data { data }) => {
                    inbuf.extend_from_slice(&data);
                    loop {
                        let packet = match sftp::take_packet(&mut inbuf) {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => return malformed_sftp(ctx, ch, u, &e).await,
                        };
                        let op = match sftp::decided_op(&packet) {
                            Ok(op) => op,
                            Err(e) => return malformed_sftp(ctx, ch, u, &e).await,
                        };
                        if let Some(h) = sftp::closed_handle(&packet) {
                            handles.remove(&h);
                        }
                        if let Some(mut op) = op {
                            if pending.contains_key(&op.id) {
                                // Its result could not be told from the earlier one's.
                                let e = sftp::SftpError::Malformed("a request id reused while its request is outstanding");
                                return malformed_sftp(ctx, ch, u, &e).await;
                            }
                            if let Some(h) = &op.handle {
                                match handles.get(h) {
                                    Some(path) => op.paths = vec![path.clone()],
                                    None => op.class = Class::MOST,
                                }
                            }
                            let mut facts = ctx.facts(&pool, op.class);
                            facts.insert(
                                "classes".into(),
                                json!(op.classes().iter().map(|c| c.as_str()).collect::<Vec<_>>()),
                            );
                            facts.insert("paths".into(), json!(op.paths));
                            facts.insert("sftp".into(), json!(op.name));
                            let mut params = json!({"sftp": op.name, "paths": op.paths, "env": env});
                            if let Some(f) = op.flags {
                                params["flags"] = json!(f);
                            }
                            let action = ctx.action(&pool, op.class.as_str(), params);
                            let mut held = Held::default();
                            let go = ctx.decide(ch, action, facts, false, &mut held).await;
                            // Input that arrived while held is later
                            // packets, whatever the decision.
                            for m in held.msgs {
                                if let ChannelMsg::Data { data } = m {
                                    inbuf.extend_from_slice(&data);
                                }
                            }
                            match go {
                                Go::Run(ex) => {
                                    pending.insert(op.id, (ex, Instant::now()));
                                    if let (true, Some(path)) =
                                        (op.name == "open" || op.name == "opendir", op.paths.first())
                                    {
                                        opens.insert(op.id, path.clone());
                                    }
                                }
                                Go::Stop(_) => {
                                    let _ = ch.data_bytes(sftp::denied(op.id, "denied by secondkey")).await;
                                    continue;
                                }
                            }
                        }
                        let mut framed = (packet.len() as u32).to_be_bytes().to_vec();
                        framed.extend_from_slice(&packet);
                        let _ = u.channel.data_bytes(framed).await;
                    }
                }
                Some(_) => {}
            },
            m = u.channel.wait() => match m {
                None | Some(ChannelMsg::Close) => break,
                Some(ChannelMsg::Data { data }) => {
                    outbuf.extend_from_slice(&data);
                    loop {
                        let p = match sftp::take_packet(&mut outbuf) {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(host = %pool.host().name, error = %e, "ssh: malformed SFTP reply from the upstream; session closed");
                                say(ch, &format!("secondkey: the upstream sent {e}; the session is closed\n"), false).await;
                                let _ = u.channel.close().await;
                                return finish(ch, exit::GATEWAY).await;
                            }
                        };
                        if let Some(v) = sftp::server_version(&p).filter(|v| *v != 3) {
                            // Versions 4-6 have requests (links, rename
                            // flags) this gateway does not decide.
                            tracing::warn!(host = %pool.host().name, version = v, "ssh: the upstream offered an SFTP version other than 3; session closed");
                            say(ch, &format!("secondkey: the upstream offered SFTP version {v}; the gateway speaks version 3 only; the session is closed\n"), false).await;
                            let _ = u.channel.close().await;
                            return finish(ch, exit::GATEWAY).await;
                        }
                        if let Some((id, h)) = sftp::handle_reply(&p) {
                            if let Some(path) = opens.remove(&id) {
                                handles.insert(h, path);
                            }
                        }
                        if p.len() >= 5 {
                            let id = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
                            if let Some((ex, at)) = pending.remove(&id) {
                                let ok = p[0] != sftp::STATUS || p.get(5..9) == Some(&[0, 0, 0, 0]);
                                ctx.record(&ex, ok, json!({"sftp_reply": p[0], "duration_ms": at.elapsed().as_millis() as u64})).await;
                            }
                        }
                        let mut framed = (p.len() as u32).to_be_bytes().to_vec();
                        framed.extend_from_slice(&p);
                        let _ = ch.data_bytes(framed).await;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    let _ = ch.extended_data_bytes(ext, data).await;
                }
                Some(ChannelMsg::Eof) => {
                    let _ = ch.eof().await;
                }
                Some(_) => {}
            },
        }
    }
    for (_, (ex, _)) in pending {
        ctx.record(
            &ex,
            false,
            json!({"status": "unknown", "duration_ms": started.elapsed().as_millis() as u64}),
        )
        .await;
    }
    finish(ch, 0).await;
}
