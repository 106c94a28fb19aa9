//! Connections to an upstream: TCP, TLS verified against the system's
//! roots (or the configured CA file alone) with an optional client
//! certificate, HTTP/1.1 through hyper's pooled client, and dedicated
//! connections for upgrades. The credential is added here, on the way out,
//! and nowhere else.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{Tls, UpstreamConfig};

/// A plain or TLS byte stream to the upstream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection as hyper's client wants it.
pub struct Conn(TokioIo<Io>);

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Opens connections to one upstream (whatever URI hyper asks for: the
/// client only ever sends this upstream's URIs).
#[derive(Clone)]
pub struct Connector {
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Connector {
    pub async fn connect(&self) -> io::Result<Conn> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "connecting timed out after 10 s")
        })??;
        let _ = tcp.set_nodelay(true);
        let io = match &self.tls {
            None => Io::Plain(tcp),
            Some((c, name)) => Io::Tls(Box::new(c.connect(name.clone(), tcp).await?)),
        };
        Ok(Conn(TokioIo::new(io)))
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect().await })
    }
}

/// The TLS client settings of an upstream.
pub fn tls_config(t: &Tls) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                roots.add(cert?)?;
            }
            if roots.is_empty() {
                anyhow::bail!("{} holds no certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                anyhow::bail!("no system root certificates found; set [http.tls] ca_file");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs =
                rustls_pemfile::certs(&mut cert.0.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut key.0.as_bytes())?
                .ok_or_else(|| anyhow::anyhow!("the client key holds no private key"))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// One upstream, ready to send to.
pub struct Upstream {
    pub cfg: Arc<UpstreamConfig>,
    pub connector: Connector,
    pub client: Client,
    /// The credential header, marked sensitive.
    credential: Option<(HeaderName, HeaderValue)>,
    /// What must never go back to the client (see [`crate::redact`]).
    pub needles: Arc<Vec<Vec<u8>>>,
}

/// Request headers forwarded besides the recorded ones: they only say
/// what the client is.
const PASSED: [&str; 1] = ["user-agent"];

/// An upgrade's handshake headers, forwarded with an upgrade only. Not
/// `Sec-WebSocket-Extensions`: a compressed tunnel (permessage-deflate)
/// would hide the credential from the mask on the way back.
const HANDSHAKE: [&str; 4] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

impl Upstream {
    pub fn new(cfg: Arc<UpstreamConfig>) -> anyhow::Result<Upstream> {
        let tls = if cfg.scheme == "https" {
            let c = tls_config(&cfg.tls)?;
            let name = rustls::pki_types::ServerName::try_from(cfg.host.clone())
                .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.host))?;
            Some((tokio_rustls::TlsConnector::from(c), name))
        } else {
            None
        };
        let connector = Connector {
            host: cfg
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: cfg.port,
            tls,
        };
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let credential = match &cfg.credential {
            None => None,
            Some(c) => {
                let (name, value) = c.header();
                let name = HeaderName::from_bytes(name.as_bytes())?;
                let mut value = HeaderValue::from_str(&value.0)
                    .map_err(|_| anyhow::anyhow!("the credential is not a valid header value"))?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        let needles = Arc::new(
            cfg.credential
                .as_ref()
                .map(|c| c.needles())
                .unwrap_or_default(),
        );
        Ok(Upstream {
            cfg,
            connector,
            client,
            credential,
            needles,
        })
    }

    /// The request sent upstream: the method, the canonical path and query
    /// (under the base URL's path), the recorded headers, the body bytes
    /// that were digested, and the credential. Nothing else of the
    /// client's request passes.
    pub fn request(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        client_headers: &HeaderMap,
        upgrade: Option<&str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut pq = format!("{}{}", self.cfg.base_path, path);
        if !query.is_empty() {
            pq.push('?');
            pq.push_str(query);
        }
        let uri = format!("{}://{}{}", self.cfg.scheme, self.cfg.authority, pq);
        let mut b = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = b.headers_mut() {
            // A recorded header goes up as the one value the action
            // recorded (repeated lines joined with ", ", each trimmed): two
            // lines and one joined line have one digest, so they must be
            // one request upstream too.
            for name in &self.cfg.headers {
                let texts: Vec<&str> = client_headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .collect();
                if texts.is_empty() {
                    continue;
                }
                if let Ok(k) = http::header::HeaderName::from_bytes(name.as_bytes()) {
                    h.insert(k, HeaderValue::from_str(&texts.join(", "))?);
                }
            }
            for (k, v) in client_headers {
                let passed = PASSED.contains(&k.as_str())
                    || (upgrade.is_some() && HANDSHAKE.contains(&k.as_str()));
                if passed && !self.cfg.headers.contains(k.as_str()) {
                    h.append(k.clone(), v.clone());
                }
            }
            h.insert(
                http::header::HOST,
                HeaderValue::from_str(&self.cfg.authority)?,
            );
            // Answers are checked for the credential: they must come
            // uncompressed.
            h.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            if let Some(u) = upgrade {
                h.insert(
                    http::header::CONNECTION,
                    HeaderValue::from_static("Upgrade"),
                );
                h.insert(http::header::UPGRADE, HeaderValue::from_str(u)?);
            }
            if let Some((k, v)) = &self.credential {
                h.insert(k.clone(), v.clone());
            }
        }
        b.body(Full::new(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn upstream() -> Upstream {
        let v: toml::Value = toml::from_str(
            "[[http]]\nname = \"app\"\nupstream = \"http://127.0.0.1:9/\"\nprincipals = [\"agent:bot\"]\nheaders = [\"X-Tenant\", \"User-Agent\"]\n",
        )
        .unwrap();
        let principals: BTreeSet<String> = ["agent:bot".to_string()].into();
        let cfg = crate::config::parse(
            &v["http"],
            std::path::Path::new("/nonexistent"),
            &principals,
            &HashMap::new(),
        )
        .unwrap()
        .remove(0);
        Upstream::new(Arc::new(cfg)).unwrap()
    }

    #[test]
    fn a_recorded_header_goes_up_as_the_one_value_that_was_digested() {
        let mut client = HeaderMap::new();
        client.append("x-tenant", HeaderValue::from_static(" a "));
        client.append("x-tenant", HeaderValue::from_static("b"));
        client.append("user-agent", HeaderValue::from_static("curl/8"));
        client.append("x-other", HeaderValue::from_static("dropped"));
        let req = upstream()
            .request(&http::Method::GET, "/x", "", &client, None, Bytes::new())
            .unwrap();
        let h = req.headers();
        let tenant: Vec<_> = h.get_all("x-tenant").iter().collect();
        assert_eq!(tenant, vec![&HeaderValue::from_static("a, b")]);
        // Recorded and also passed: once, as recorded.
        let ua: Vec<_> = h.get_all("user-agent").iter().collect();
        assert_eq!(ua, vec![&HeaderValue::from_static("curl/8")]);
        assert!(h.get("x-other").is_none());
    }

    /// An upgrade's handshake headers go up with an upgrade, and only
    /// then: on a plain request they are not the client's to pass.
    #[test]
    fn handshake_headers_go_up_with_an_upgrade_only() {
        let mut client = HeaderMap::new();
        client.append("sec-websocket-key", HeaderValue::from_static("k"));
        client.append("sec-websocket-version", HeaderValue::from_static("13"));
        client.append(
            "x-stream-protocol-version",
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        let up = upstream();
        let plain = up
            .request(&http::Method::GET, "/x", "", &client, None, Bytes::new())
            .unwrap();
        for name in HANDSHAKE {
            assert!(plain.headers().get(name).is_none(), "{name}");
        }
        assert!(plain.headers().get("upgrade").is_none());
        let upgrade = up
            .request(
                &http::Method::GET,
                "/x",
                "",
                &client,
                Some("websocket"),
                Bytes::new(),
            )
            .unwrap();
        let h = upgrade.headers();
        assert_eq!(h.get("sec-websocket-key").unwrap(), "k");
        assert_eq!(h.get("sec-websocket-version").unwrap(), "13");
        assert_eq!(
            h.get("x-stream-protocol-version").unwrap(),
            "v4.channel.k8s.io"
        );
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }
}
