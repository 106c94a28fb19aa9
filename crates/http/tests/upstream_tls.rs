//! TLS to an upstream, against a real TLS server (tokio-rustls) that asks
//! for a client certificate: the chain and host name are verified against
//! the configured CA file (or the system's roots, which do not know a
//! private CA); the client certificate is presented when configured; the
//! credential is added to what the server receives.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use secondkey_http::upstream::Upstream;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn issue(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS server for 127.0.0.1 requiring a client certificate of `clients`;
/// records the Authorization header of each request.
async fn server(ca: &Ca, clients: &Ca) -> (u16, Arc<Mutex<Vec<String>>>) {
    let (cert, key) = ca.issue("127.0.0.1", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let certs = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(clients.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(auth);
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

fn upstream(port: u16, tls: &str, env: &[(&str, &str)]) -> Upstream {
    let text = format!(
        "[[http]]\nname = \"secure\"\nupstream = \"https://127.0.0.1:{port}\"\nprincipals = [\"agent:bot\"]\n[http.credentials]\ntype = \"header\"\nname = \"Authorization\"\nprefix = \"token \"\nvalue_env = \"SECRET\"\n{tls}"
    );
    let v: toml::Value = toml::from_str(&text).unwrap();
    let p: BTreeSet<String> = ["agent:bot".to_string()].into();
    let mut e: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e.insert("SECRET".into(), "t0ken".into());
    let cfg = secondkey_http::config::parse(&v["http"], std::path::Path::new("/"), &p, &e)
        .unwrap()
        .remove(0);
    Upstream::new(Arc::new(cfg)).unwrap()
}

async fn get(u: &Upstream) -> Result<String, String> {
    let req = u
        .request(
            &http::Method::GET,
            "/x",
            "",
            &http::HeaderMap::new(),
            None,
            Bytes::new(),
        )
        .unwrap();
    let resp = u.client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_and_presents_the_client_certificate() {
    let ca = Ca::new("upstream CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("another CA");
    let (port, seen) = server(&ca, &clients).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other.cert.pem()).unwrap();
    let (ccert, ckey) = clients.issue("agent-gateway", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let client_tls = "client_cert_env = \"CLIENT_CERT\"\nclient_key_env = \"CLIENT_KEY\"\n";
    let env = [
        ("CLIENT_CERT", ccert.as_str()),
        ("CLIENT_KEY", ckey.as_str()),
    ];

    // The right CA and a client certificate: the request arrives, with the
    // credential.
    let ok = upstream(
        port,
        &format!(
            "[http.tls]\nca_file = \"{}\"\n{client_tls}",
            ca_file.display()
        ),
        &env,
    );
    assert_eq!(get(&ok).await.unwrap(), "ok");
    assert_eq!(seen.lock().unwrap().as_slice(), ["token t0ken"]);

    // Another CA, or the system's roots: the server is not trusted and
    // nothing is sent.
    let wrong = upstream(
        port,
        &format!(
            "[http.tls]\nca_file = \"{}\"\n{client_tls}",
            other_file.display()
        ),
        &env,
    );
    let e = get(&wrong).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.to_lowercase().contains("certificate"),
        "{e}"
    );
    let system = upstream(port, client_tls_section(client_tls).as_str(), &env);
    assert!(
        get(&system).await.is_err(),
        "a private CA is not among the system's roots"
    );
    // No client certificate: the server refuses the handshake.
    let anonymous = upstream(
        port,
        &format!("[http.tls]\nca_file = \"{}\"\n", ca_file.display()),
        &[],
    );
    assert!(get(&anonymous).await.is_err());
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the verified, authenticated request arrived"
    );
}

fn client_tls_section(client_tls: &str) -> String {
    format!("[http.tls]\n{client_tls}")
}
