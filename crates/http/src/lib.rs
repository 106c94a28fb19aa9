//! The secondkey HTTP gateway: an identity-aware reverse proxy, started by
//! `secondkey serve` as an `Extension` when `[[http]]` upstreams are
//! configured. Each upstream is served on a path prefix of the main
//! listener (`/http/<name>/…`), on a listener of its own, or both.
//!
//! Clients (agents, pipelines, kubectl) authenticate with their secondkey
//! token or workload JWT; their own `Authorization` never goes upstream.
//! Every request becomes an action ([`action`]): kind `http` (or `k8s`
//! under the Kubernetes profile, [`k8s`]), the operation from route rules
//! or an OpenAPI document ([`routes`]), the request read one way
//! ([`request`]). [`proxy`] decides it through `Gateway::intercept` and
//! forwards it; [`upstream`] adds the credential and speaks TLS.
//!
//! Architecture invariants:
//! * only exactly the digested request is forwarded — its method,
//!   canonical path and query, recorded headers and body bytes — and only
//!   after `intercept` (or `execute_approved`) returned a run whose
//!   authorizing entry is durable;
//! * what an upstream might read in two ways is refused, never guessed;
//! * the credential is read in [`config`], added in [`upstream`] and
//!   masked out of every response ([`redact`]); it never appears in an
//!   action, a log entry or an error;
//! * a request no rule matches is the most privileged class (`admin`),
//!   never a read.

pub mod action;
pub mod config;
pub mod k8s;
pub mod proxy;
pub mod redact;
pub mod request;
pub mod routes;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::any;
use secondkey_server::config::ConfigError;
use secondkey_server::{AppState, Gateway};

use crate::config::UpstreamConfig;
use crate::proxy::Shared;

/// The HTTP gateway extension: the parsed `[[http]]` sections.
pub struct HttpGateway {
    upstreams: Vec<Arc<UpstreamConfig>>,
    /// Filled at start: routes of the main listener reach them.
    shared: Arc<Mutex<HashMap<String, Arc<Shared>>>>,
}

impl HttpGateway {
    /// Reads the `http` section of the configuration, if there is one.
    pub fn from_section(
        section: Option<&toml::Value>,
        base: &std::path::Path,
        principals: &BTreeSet<String>,
        env: &HashMap<String, String>,
    ) -> Result<Option<HttpGateway>, ConfigError> {
        let Some(v) = section else { return Ok(None) };
        let upstreams = config::parse(v, base, principals, env)?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(Some(HttpGateway {
            upstreams,
            shared: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    pub fn upstreams(&self) -> &[Arc<UpstreamConfig>] {
        &self.upstreams
    }

    /// Connects the upstreams and binds their own listeners; returns the
    /// bound addresses by upstream name. Must run inside the runtime.
    pub fn listen(
        &self,
        gateway: Arc<Gateway>,
    ) -> anyhow::Result<Vec<(String, std::net::SocketAddr)>> {
        let mut addrs = Vec::new();
        for cfg in &self.upstreams {
            let upstream = upstream::Upstream::new(cfg.clone())
                .map_err(|e| anyhow::anyhow!("http upstream {}: {e}", cfg.name))?;
            let sh = Arc::new(Shared {
                gateway: gateway.clone(),
                upstream,
            });
            lock(&self.shared).insert(cfg.name.clone(), sh.clone());
            if let Some(listen) = cfg.listen {
                let listener = secondkey_server::limits::conn::bind(listen).map_err(|e| {
                    anyhow::anyhow!("http upstream {}: cannot listen on {listen}: {e}", cfg.name)
                })?;
                let addr = listener.local_addr()?;
                let tls = match &cfg.listen_tls {
                    None => None,
                    Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(|e| {
                        anyhow::anyhow!("http upstream {}: listen_tls: {e}", cfg.name)
                    })?),
                };
                tracing::info!(upstream = %cfg.name, %addr, tls = tls.is_some(), "http gateway listening");
                eprintln!(
                    "secondkey http gateway {} listening on {}://{addr}",
                    cfg.name,
                    if tls.is_some() { "https" } else { "http" }
                );
                tokio::spawn(accept_loop(listener, sh, tls));
                addrs.push((cfg.name.clone(), addr));
            }
        }
        Ok(addrs)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The TLS settings of an own listener (HTTP/1.1 only: upgrades are
/// HTTP/1.1's).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
    };
    let certs = rustls_pemfile::certs(&mut &read(cert)?[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read(key)?[..])?
        .ok_or_else(|| anyhow::anyhow!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    sh: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let sh = sh.clone();
                let tls = tls.clone();
                let ip = Some(peer.ip());
                tokio::spawn(async move {
                    let r = match tls {
                        None => serve_connection(tcp, sh, ip).await,
                        Some(acceptor) => match tokio::time::timeout(
                            Duration::from_secs(10),
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => serve_connection(s, sh, ip).await,
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("TLS handshake timed out".into()),
                        },
                    };
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "http client connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection with hyper's HTTP/1.1 server; each
/// request carries the connection's `peer` address ([`proxy::Peer`]).
async fn serve_connection<I>(
    io: I,
    sh: Arc<Shared>,
    peer: Option<std::net::IpAddr>,
) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let sh = sh.clone();
        async move {
            let mut req = req.map(Body::new);
            if let Some(ip) = peer {
                req.extensions_mut().insert(proxy::Peer(ip));
            }
            let path = req.uri().path().to_string();
            Ok::<_, Infallible>(proxy::handle(sh, req, &path).await)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024)
        // Closed with a lingering close: a client still sending a body the
        // gateway refused reads the answer instead of a reset.
        .serve_connection(
            hyper_util::rt::TokioIo::new(secondkey_server::limits::Lingering::new(io)),
            svc,
        )
        .with_upgrades()
        .await
        .map_err(|e| e.to_string())
}

/// The OpenAPI description of the HTTP gateway's routes on the main
/// listener.
#[derive(utoipa::OpenApi)]
#[openapi(paths(proxied_doc))]
struct HttpDoc;

/// Relays a request to the `[[http]]` upstream served under this prefix
/// (default `/http/<name>`), any method of GET, HEAD, POST, PUT, PATCH,
/// DELETE, OPTIONS: the request is decided as an action first (see
/// docs/http.md) and forwarded exactly as decided, with the upstream's
/// credential added. Errors are RFC 9457 problems.
#[utoipa::path(get, path = "/http/{upstream}/{path}", tag = "http", operation_id = "http_proxy",
    params(("upstream" = String, Path, description = "an `[[http]]` name (its `prefix`)"),
           ("path" = String, Path, description = "the upstream's path")),
    responses((status = 202, description = "`hold = \"wait\"`: still held after `hold_timeout`; `Retry-After`"),
              (status = 400, description = "refused before any decision (`application/problem+json`: dot_segment, ambiguous_query, method_override, invalid_json, …); nothing forwarded"),
              (status = 401, description = "no or unknown token"),
              (status = 403, description = "`denied` (naming the policies and the decision id), `not_allowed`, or `not_approved`"),
              (status = 405, description = "`method_not_supported`: a method other than GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; `Allow` lists them"),
              (status = 409, description = "`hold = \"retry\"`: `approval_required`, with the request id and URL; `Retry-After`"),
              (status = 413, description = "larger than `max_body_bytes`"),
              (status = 415, description = "`encoded_body`: a `Content-Encoding` other than identity; the body cannot be inspected"),
              (status = 502, description = "the upstream could not be reached, failed before answering, or compressed its answer"),
              (status = 503, description = "the log could not record the decision (the API's codes); nothing forwarded"),
              (status = "default", description = "the upstream's answer, relayed")))]
#[allow(dead_code)]
fn proxied_doc() {}

/// [`HttpDoc`] with the relay described under every method it relays,
/// each with an operation id of its own (`http_proxy_post`, …; GET keeps
/// `http_proxy`), as OpenAPI wants them unique.
fn http_doc() -> utoipa::openapi::OpenApi {
    let mut doc = <HttpDoc as utoipa::OpenApi>::openapi();
    for item in doc.paths.paths.values_mut() {
        let Some(get) = item.get.clone() else {
            continue;
        };
        let as_method = |m: &str| {
            let mut op = get.clone();
            op.operation_id = Some(format!("http_proxy_{m}"));
            Some(op)
        };
        item.head = as_method("head");
        item.post = as_method("post");
        item.put = as_method("put");
        item.patch = as_method("patch");
        item.delete = as_method("delete");
        item.options = as_method("options");
    }
    doc
}

impl secondkey_server::Extension for HttpGateway {
    fn name(&self) -> &'static str {
        "http"
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        self.upstreams
            .iter()
            .any(|u| u.prefix.is_some())
            .then(http_doc)
    }

    fn routes(&self) -> axum::Router<AppState> {
        let mut r = axum::Router::new();
        for cfg in &self.upstreams {
            let Some(prefix) = cfg.prefix.clone() else {
                continue;
            };
            let shared = self.shared.clone();
            let name = cfg.name.clone();
            let handler = move |req: axum::extract::Request| {
                let sh = lock(&shared).get(&name).cloned();
                let prefix = prefix.clone();
                async move {
                    let Some(sh) = sh else {
                        return proxy::problem(
                            503,
                            "not_started",
                            "Not started",
                            "the HTTP gateway is not started",
                            Default::default(),
                        );
                    };
                    let rest = req
                        .uri()
                        .path()
                        .strip_prefix(prefix.as_str())
                        .unwrap_or("")
                        .to_string();
                    proxy::handle(sh, req, &rest).await
                }
            };
            let p = cfg.prefix.clone().unwrap_or_default();
            r = r
                .route(&p, any(handler.clone()))
                .route(&format!("{p}/{{*rest}}"), any(handler));
        }
        r
    }

    fn start(&self, gateway: Arc<Gateway>) -> anyhow::Result<()> {
        self.listen(gateway).map(|_| ())
    }
}
