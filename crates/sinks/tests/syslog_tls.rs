//! The syslog sink over TLS (RFC 5425) to an in-test receiver with a private CA.

mod common;

use std::time::Duration;

use secondkey_sinks::syslog::{Facility, SyslogFormatter, SyslogSink, TlsSettings};
use secondkey_sinks::Sink;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_octet_counted_frames_over_tls_and_checks_the_certificate() {
    let (_dir, ca, acceptor) = common::tls_server("siem.test");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        // First connection: the sink with the wrong server name fails the
        // handshake; second: the good sink.
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                tls.read_to_end(&mut out).await.unwrap_or_default();
            }
        }
        out
    });

    let formatter = SyslogFormatter::new(Facility::AUTH, Some("gw")).with_procid("1");
    let wrong = TlsSettings::new(Some(&ca), "other.test").unwrap();
    let mut bad = SyslogSink::new(
        &addr,
        Some(wrong),
        formatter.clone(),
        Duration::from_secs(5),
    );
    let err = bad.deliver(0, b"{}").await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    let good = TlsSettings::new(Some(&ca), "siem.test").unwrap();
    let mut sink = SyslogSink::new(&addr, Some(good), formatter, Duration::from_secs(5));
    sink.deliver(0, br#"{"event":"a"}"#).await.unwrap();
    sink.deliver(1, br#"{"event":"b"}"#).await.unwrap();
    drop(sink);
    let got = String::from_utf8(reader.await.unwrap()).unwrap();
    let one = r#"<37>1 - gw secondkey 1 a [secondkey@32473 index="0"] {"event":"a"}"#;
    let two = r#"<37>1 - gw secondkey 1 b [secondkey@32473 index="1"] {"event":"b"}"#;
    assert_eq!(got, format!("{} {one}{} {two}", one.len(), two.len()));
}
