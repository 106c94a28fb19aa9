//! Connecting to the upstream database as the configured role: TLS with
//! full verification when enabled, then SCRAM-SHA-256, MD5 or cleartext,
//! whichever the server asks for. The password stays here; nothing of it
//! is ever written towards the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Upstream;
use crate::proto::{self, put, put_cstr};

/// A byte stream to a client or the upstream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the upstream database at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the upstream database does not accept TLS, and the connection requires it")]
    NoTls,
    #[error("TLS to the upstream database failed: {0}")]
    Tls(String),
    #[error("the upstream database refused the gateway's login: {0}")]
    Auth(String),
    #[error("the upstream database asked for a password, and none is configured")]
    NoPassword,
    #[error("the upstream database asked for an unsupported authentication method ({0})")]
    Method(i32),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection lost: {0}")]
    Io(#[from] std::io::Error),
}

/// A logged-in upstream session, ready for queries.
pub struct Session {
    pub stream: Stream,
    /// ParameterStatus values the server sent at start.
    pub params: Vec<(String, String)>,
    /// The server's cancel key (process id, secret).
    pub key: (i32, i32),
    /// Bytes already read past the first ReadyForQuery.
    pub leftover: BytesMut,
}

/// TLS client settings for an upstream, built once.
pub fn tls_config(u: &Upstream) -> Result<Option<Arc<rustls::ClientConfig>>, UpstreamError> {
    if !u.tls {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &u.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| UpstreamError::Tls(format!("cannot read {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert =
                    cert.map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(cfg)))
}

async fn read_message(s: &mut Stream, buf: &mut BytesMut) -> Result<(u8, BytesMut), UpstreamError> {
    loop {
        if let Some(m) = proto::take_message(buf, proto::MAX_MESSAGE)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok(m);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Opens a TCP (and, when configured, TLS) connection to the upstream.
pub async fn open(
    u: &Upstream,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, UpstreamError> {
    let addr = format!("{}:{}", u.host, u.port);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .map_err(|_| UpstreamError::Connect {
            addr: addr.clone(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(cfg) = tls else {
        return Ok(Box::new(tcp));
    };
    let mut tcp = tcp;
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(proto::SSL_REQUEST);
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::NoTls);
    }
    let name = rustls::pki_types::ServerName::try_from(u.host.clone())
        .map_err(|e| UpstreamError::Tls(format!("{}: {e}", u.host)))?;
    let stream = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

/// Connects and logs in. `client_params` are the startup parameters the
/// gateway passes through (already filtered).
pub async fn connect(
    u: &Upstream,
    tls: Option<&Arc<rustls::ClientConfig>>,
    client_params: &[(String, String)],
) -> Result<Session, UpstreamError> {
    let mut s = open(u, tls).await?;
    let mut out = BytesMut::new();
    {
        let at = out.len();
        out.put_i32(0);
        out.put_i32(proto::PROTOCOL_3);
        for (k, v) in [("user", u.user.as_str()), ("database", u.database.as_str())]
            .into_iter()
            .chain(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            put_cstr(&mut out, k);
            put_cstr(&mut out, v);
        }
        out.put_u8(0);
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let password = || {
        u.password
            .as_ref()
            .map(|p| p.0.as_bytes())
            .ok_or(UpstreamError::NoPassword)
    };
    loop {
        let (ty, body) = read_message(&mut s, &mut buf).await?;
        match ty {
            b'R' => {
                let mut r = proto::Reader::new(&body, "Authentication");
                let code = r
                    .i32()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let mut reply = BytesMut::new();
                match code {
                    0 => break,
                    3 => {
                        let pw = password()?;
                        put(&mut reply, b'p', |b| {
                            b.put_slice(pw);
                            b.put_u8(0);
                        });
                    }
                    5 => {
                        let salt = r
                            .bytes(4)
                            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            u.user.as_bytes(),
                            password()?,
                            [salt[0], salt[1], salt[2], salt[3]],
                        );
                        put(&mut reply, b'p', |b| put_cstr(b, &hash));
                    }
                    10 => {
                        let rest = r.rest();
                        let offered = rest
                            .split(|&b| b == 0)
                            .any(|m| m == crate::scram::MECHANISM.as_bytes());
                        if !offered {
                            return Err(UpstreamError::Auth(
                                "no supported SASL mechanism offered".into(),
                            ));
                        }
                        let client = ScramSha256::new(password()?, ChannelBinding::unsupported());
                        put(&mut reply, b'p', |b| {
                            put_cstr(b, crate::scram::MECHANISM);
                            b.put_i32(client.message().len() as i32);
                            b.put_slice(client.message());
                        });
                        scram = Some(client);
                    }
                    11 => {
                        let c = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("SASL continue without start".into())
                        })?;
                        c.update(r.rest())
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        put(&mut reply, b'p', |b| b.put_slice(c.message()));
                    }
                    12 => {
                        let c = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("SASL final without start".into())
                        })?;
                        c.finish(r.rest()).map_err(|e| {
                            UpstreamError::Auth(format!(
                                "the server's SCRAM signature is wrong: {e}"
                            ))
                        })?;
                    }
                    other => return Err(UpstreamError::Method(other)),
                }
                if !reply.is_empty() {
                    s.write_all(&reply).await?;
                }
            }
            b'E' => {
                let (code, msg) = proto::error_fields(&body);
                return Err(UpstreamError::Auth(format!("{msg} (SQLSTATE {code})")));
            }
            b'N' => {}
            _ => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during login",
                    ty as char
                )))
            }
        }
    }
    let mut params = Vec::new();
    let mut key = (0, 0);
    loop {
        let (ty, body) = read_message(&mut s, &mut buf).await?;
        match ty {
            b'S' => {
                let mut r = proto::Reader::new(&body, "ParameterStatus");
                let k = r
                    .cstr()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let v = r
                    .cstr()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                params.push((k.to_string(), v.to_string()));
            }
            b'K' => {
                let mut r = proto::Reader::new(&body, "BackendKeyData");
                let pid = r
                    .i32()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let secret = r
                    .i32()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                key = (pid, secret);
            }
            b'Z' => break,
            b'N' => {}
            b'E' => {
                let (code, msg) = proto::error_fields(&body);
                return Err(UpstreamError::Auth(format!("{msg} (SQLSTATE {code})")));
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} after login",
                    other as char
                )))
            }
        }
    }
    Ok(Session {
        stream: s,
        params,
        key,
        leftover: buf,
    })
}

/// Sends a CancelRequest for `key` to the upstream (plain TCP, as libpq
/// does; PostgreSQL accepts it without TLS).
pub async fn cancel(u: &Upstream, key: (i32, i32)) -> Result<(), UpstreamError> {
    let addr = format!("{}:{}", u.host, u.port);
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let mut req = BytesMut::new();
    req.put_i32(16);
    req.put_i32(proto::CANCEL_REQUEST);
    req.put_i32(key.0);
    req.put_i32(key.1);
    tcp.write_all(&req).await?;
    let _ = tcp.shutdown().await;
    Ok(())
}
