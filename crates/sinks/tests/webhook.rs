//! The webhook sink against a local HTTP(S) receiver that verifies Standard
//! Webhooks signatures and can fail on purpose.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::MemLog;
use secondkey_sinks::config::SinkConfig;
use secondkey_sinks::runner::{spawn_sink_with, Backoff, RunnerOptions};
use secondkey_sinks::webhook::{verify, WebhookSecret, WebhookSink};
use secondkey_sinks::{FileCursor, SinkHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ORIGIN: &str = "secondkey.test/log";

fn entry(i: u64) -> Vec<u8> {
    serde_json::json!({"event": "grant.consumed", "index": i, "subjects": {"grant": format!("g\"]{i}")}})
        .to_string()
        .into_bytes()
}

#[derive(Debug, Clone)]
struct Received {
    id: String,
    body: Vec<u8>,
    signature_ok: bool,
    status: u16,
}

#[derive(Default)]
struct Receiver {
    fail_next: usize,
    log: Vec<Received>,
}

type Shared = Arc<Mutex<Receiver>>;

/// Reads one HTTP/1.1 request, answers, closes.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Shared) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let id = header("webhook-id");
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature_ok = verify(
        &secret,
        &id,
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        &body,
        now,
        300,
    )
    .is_ok();
    let status = {
        let mut s = state.lock().unwrap();
        let status = if !signature_ok {
            401
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            503
        } else {
            200
        };
        s.log.push(Received {
            id,
            body,
            signature_ok,
            status,
        });
        status
    };
    let response =
        format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state: Shared = Arc::default();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let st = st.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => handle(tcp, st).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            handle(s, st).await
                        }
                    }
                }
            });
        }
    });
    (port, state)
}

fn options() -> RunnerOptions {
    RunnerOptions {
        backoff: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(80),
        },
        batch: 4,
        active: None,
    }
}

fn start(
    url: &str,
    secret: &str,
    ca: Option<&Path>,
    log: Arc<MemLog>,
    cursor: FileCursor,
    size_rx: watch::Receiver<u64>,
) -> SinkHandle {
    let sink = WebhookSink::new(
        url,
        WebhookSecret::parse(secret).unwrap(),
        ORIGIN,
        ca,
        Duration::from_secs(5),
    )
    .unwrap();
    spawn_sink_with("hook", Box::new(sink), log, cursor, size_rx, options())
}

fn distinct_ids(log: &[Received]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in log {
        if out.last() != Some(&r.id) {
            assert!(
                !out.contains(&r.id),
                "id {} came back after a later one",
                r.id
            );
            out.push(r.id.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_order_with_stable_ids_and_resumes_from_the_cursor() {
    let (port, state) = serve(None).await;
    state.lock().unwrap().fail_next = 3;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemLog::default());
    for i in 0..10 {
        log.append(entry(i));
    }
    let (size_tx, size_rx) = watch::channel(10u64);
    let cursor = FileCursor::open(dir.path(), "hook").unwrap();
    let url = format!("http://127.0.0.1:{port}/hook");

    let mut first = start(
        &url,
        SECRET,
        None,
        log.clone(),
        cursor.clone(),
        size_rx.clone(),
    );
    first.progress.wait_for(|p| p.cursor == 10).await.unwrap();
    first.task.abort();
    assert_eq!(first.progress.borrow().total_failures, 3);
    assert_eq!(cursor.load().unwrap(), 10);
    {
        let s = state.lock().unwrap();
        assert!(s.log.iter().all(|r| r.signature_ok));
        // Entry 0 was tried four times with the same id: 503, 503, 503, 200.
        let first_four: Vec<_> = s.log[..4]
            .iter()
            .map(|r| (r.id.as_str(), r.status))
            .collect();
        let id0 = "secondkey.test_log-0";
        assert_eq!(
            first_four,
            vec![(id0, 503), (id0, 503), (id0, 503), (id0, 200)]
        );
        let expected: Vec<String> = (0..10).map(|i| format!("secondkey.test_log-{i}")).collect();
        assert_eq!(distinct_ids(&s.log), expected);
        for r in s.log.iter().filter(|r| r.status == 200) {
            let i: u64 = r.id.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(r.body, entry(i), "body must be the entry bytes exactly");
        }
    }

    // The gateway restarts: a new runner resumes from the persisted cursor.
    state.lock().unwrap().log.clear();
    for i in 10..15 {
        size_tx.send(log.append(entry(i))).unwrap();
    }
    let mut second = start(&url, SECRET, None, log.clone(), cursor.clone(), size_rx);
    second.progress.wait_for(|p| p.cursor == 15).await.unwrap();
    drop(size_tx);
    second.task.await.unwrap();
    let s = state.lock().unwrap();
    let expected: Vec<String> = (10..15)
        .map(|i| format!("secondkey.test_log-{i}"))
        .collect();
    assert_eq!(
        distinct_ids(&s.log),
        expected,
        "nothing before the cursor is re-sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_and_never_counts_as_delivered() {
    let (port, state) = serve(None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemLog::default());
    log.append(entry(0));
    let (_size_tx, size_rx) = watch::channel(1u64);
    let cursor = FileCursor::open(dir.path(), "hook").unwrap();
    let wrong = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut h = start(
        &format!("http://127.0.0.1:{port}/"),
        wrong,
        None,
        log,
        cursor.clone(),
        size_rx,
    );
    h.progress
        .wait_for(|p| p.total_failures >= 3)
        .await
        .unwrap();
    h.task.abort();
    assert_eq!(cursor.load().unwrap(), 0);
    assert!(h
        .progress
        .borrow()
        .last_error
        .as_deref()
        .unwrap()
        .contains("401"));
    let s = state.lock().unwrap();
    assert!(s.log.iter().all(|r| !r.signature_ok && r.status == 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_from_config() {
    let (dir, ca_path, acceptor) = common::tls_server("127.0.0.1");
    let (port, state) = serve(Some(acceptor)).await;

    #[derive(serde::Deserialize)]
    struct Cfg {
        sinks: Vec<SinkConfig>,
    }
    let cfg: Cfg = toml::from_str(&format!(
        "[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"https://127.0.0.1:{port}/\"\n\
         secret = \"{SECRET}\"\nca_file = \"{}\"\n",
        ca_path.display()
    ))
    .unwrap();
    let sink = cfg.sinks[0].build(ORIGIN).unwrap();
    let log = Arc::new(MemLog::default());
    for i in 0..3 {
        log.append(entry(i));
    }
    let (size_tx, size_rx) = watch::channel(3u64);
    let cursor = FileCursor::open(dir.path().join("c"), cfg.sinks[0].name()).unwrap();
    let h = spawn_sink_with("hook", sink, log, cursor.clone(), size_rx, options());
    drop(size_tx);
    h.task.await.unwrap();
    assert_eq!(cursor.load().unwrap(), 3);
    {
        let s = state.lock().unwrap();
        assert_eq!(s.log.len(), 3);
        assert!(s.log.iter().all(|r| r.signature_ok && r.status == 200));
    }

    // Without the private CA the same receiver is refused (web PKI roots).
    let untrusted = WebhookSink::new(
        &format!("https://127.0.0.1:{port}/"),
        WebhookSecret::parse(SECRET).unwrap(),
        ORIGIN,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let mut boxed: Box<dyn secondkey_sinks::Sink> = Box::new(untrusted);
    assert!(boxed.deliver(0, &entry(0)).await.is_err());
}
