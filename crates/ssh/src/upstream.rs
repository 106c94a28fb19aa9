//! Connections to the upstream sshd: the host key must be the pinned one,
//! the gateway logs in with its own key (or certificate), and each agent
//! session gets a channel on a shared, already authenticated connection
//! (up to `max_sessions_per_connection` channels each).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};

use crate::config::Host;

/// How long connecting and logging in upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {host} at {address}: {message}")]
    Connect {
        host: String,
        address: String,
        message: String,
    },
    #[error("the host key of {host} does not match the pinned key: it presented {got}, the configuration pins {pinned}; nothing was sent to it")]
    HostKeyMismatch {
        host: String,
        got: String,
        pinned: String,
    },
    #[error("{host} refused the gateway's key for user {user}")]
    AuthRefused { host: String, user: String },
    #[error("{host}: {message}")]
    Protocol { host: String, message: String },
}

/// The client side's handler: checks the host key against the pin.
pub struct Pinned {
    pinned: PublicKey,
    /// What the server presented, when it did not match.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::new(c.public_key().clone(), ""),
        };
        if presented.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(presented.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(false)
    }
}

struct Conn {
    handle: Handle<Pinned>,
    open: AtomicUsize,
}

/// A channel on an upstream connection; counts against the connection's
/// sessions until dropped.
pub struct UpChannel {
    pub channel: Channel<client::Msg>,
    conn: Arc<Conn>,
}

impl Drop for UpChannel {
    fn drop(&mut self) {
        self.conn.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections to one upstream host.
pub struct Pool {
    host: Host,
    config: Arc<client::Config>,
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
}

impl Pool {
    pub fn new(host: Host) -> Pool {
        let config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        };
        Pool {
            host,
            config: Arc::new(config),
            conns: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// A new session channel upstream, on a live connection with room, or
    /// on a new one.
    pub async fn channel(&self) -> Result<UpChannel, UpstreamError> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.handle.is_closed());
        for c in conns.iter() {
            let n = c.open.fetch_add(1, Ordering::AcqRel);
            if n < self.host.max_sessions {
                match c.handle.channel_open_session().await {
                    Ok(channel) => {
                        return Ok(UpChannel {
                            channel,
                            conn: c.clone(),
                        })
                    }
                    Err(_) => {
                        c.open.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                }
            }
            c.open.fetch_sub(1, Ordering::AcqRel);
        }
        let conn = Arc::new(Conn {
            handle: self.connect().await?,
            open: AtomicUsize::new(1),
        });
        conns.push(conn.clone());
        drop(conns);
        let channel = conn
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.protocol(format!("cannot open a session: {e}")))?;
        Ok(UpChannel { channel, conn })
    }

    fn protocol(&self, message: String) -> UpstreamError {
        UpstreamError::Protocol {
            host: self.host.name.clone(),
            message,
        }
    }

    async fn connect(&self) -> Result<Handle<Pinned>, UpstreamError> {
        let h = &self.host;
        let seen = Arc::new(Mutex::new(None));
        let handler = Pinned {
            pinned: h.host_key.clone(),
            seen: seen.clone(),
        };
        let connect = client::connect(self.config.clone(), h.address.as_str(), handler);
        let result = tokio::time::timeout(CONNECT_TIMEOUT, connect).await;
        let mut handle = match result {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                if let Some(got) = seen.lock().ok().and_then(|s| s.clone()) {
                    return Err(UpstreamError::HostKeyMismatch {
                        host: h.name.clone(),
                        got,
                        pinned: h.host_key.fingerprint(HashAlg::Sha256).to_string(),
                    });
                }
                return Err(UpstreamError::Connect {
                    host: h.name.clone(),
                    address: h.address.clone(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(UpstreamError::Connect {
                    host: h.name.clone(),
                    address: h.address.clone(),
                    message: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        let cred = &h.credential;
        let auth = match &cred.certificate {
            Some(cert) => {
                handle
                    .authenticate_openssh_cert(h.user.clone(), cred.key.clone(), cert.clone())
                    .await
            }
            None => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten();
                let key = PrivateKeyWithHashAlg::new(cred.key.clone(), hash);
                handle.authenticate_publickey(h.user.clone(), key).await
            }
        };
        match auth {
            Ok(r) if r.success() => Ok(handle),
            Ok(_) => Err(UpstreamError::AuthRefused {
                host: h.name.clone(),
                user: h.user.clone(),
            }),
            Err(e) => Err(self.protocol(format!("login failed: {e}"))),
        }
    }
}

/// Waits for the reply to a request sent with `want_reply`; other messages
/// that arrive first (window adjustments) are skipped.
pub async fn wait_reply(ch: &mut Channel<client::Msg>) -> Result<(), String> {
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err("the upstream refused the request".into()),
            Some(ChannelMsg::WindowAdjusted { .. }) => continue,
            Some(ChannelMsg::Close) | None => return Err("the upstream closed the channel".into()),
            Some(_) => continue,
        }
    }
}
