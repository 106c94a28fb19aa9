//! The syslog sink against a real rsyslog receiver (imtcp, octet counting).
//!
//! rsyslogd is killed while the log keeps growing and started again on the
//! same port: the sink must retry without advancing its cursor, then deliver
//! everything, in order, with the entry JSON intact.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::MemLog;
use secondkey_sinks::runner::{spawn_sink_with, Backoff, EntrySource, RunnerOptions};
use secondkey_sinks::syslog::{Facility, SyslogFormatter, SyslogSink};
use secondkey_sinks::FileCursor;
use tokio::sync::watch;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// An entry with characters that need escaping in SD and JSON.
fn entry(i: u64) -> Vec<u8> {
    serde_json::json!({
        "actor": "agent:report-bot",
        "digest": format!("{i:064x}"),
        "event": if i.is_multiple_of(2) { "request.created" } else { "review.submitted" },
        "index": i,
        "payload": {"action": {"kind": "sql", "operation": "export", "resource": "db://prod/\"t]\\"},
                    "note": "héllo ] \" \\ end"},
        "subjects": {"request": format!("req-\"]\\-{i}")},
        "time": "2025-03-01T12:00:00Z"
    })
    .to_string()
    .into_bytes()
}

struct Rsyslog {
    child: Child,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = dir.join("out.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imtcp")
template(name="sk" type="string" string="%msgid%\t%structured-data%\t%msg%\n")
ruleset(name="sk") {{
  action(type="omfile" file="{out}" template="sk")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="sk" supportOctetCountedFraming="on")
"#,
            work = work.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    conf
}

async fn start_rsyslog(dir: &Path, conf: &Path, port: u16) -> Rsyslog {
    let child = Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let r = Rsyslog { child };
    wait_until("rsyslogd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    r
}

/// Polls `cond`; the deadline only guards against a hung test.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// (index, msgid, msg) for each line rsyslog wrote.
fn received(dir: &Path) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let msgid = parts.next().unwrap().to_string();
            let sd = parts.next().unwrap();
            let msg = parts.next().unwrap().to_string();
            let rest = sd
                .strip_prefix("[secondkey@32473 index=\"")
                .unwrap_or_else(|| panic!("unexpected SD {sd}"));
            let index = rest[..rest.find('"').unwrap()].parse().unwrap();
            (index, msgid, msg)
        })
        .collect()
}

fn distinct_in_order(got: &[(u64, String, String)]) -> Vec<u64> {
    let mut seen = Vec::new();
    for (i, _, _) in got {
        if !seen.contains(i) {
            seen.push(*i);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_outage_is_retried_without_loss_or_skips() {
    assert!(
        Path::new(RSYSLOGD).exists(),
        "{RSYSLOGD} not found: this test needs a real rsyslog receiver; apt-get install rsyslog"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = write_config(dir.path(), port);
    let rsyslog = start_rsyslog(dir.path(), &conf, port).await;

    let log = Arc::new(MemLog::default());
    for i in 0..20 {
        log.append(entry(i));
    }
    let (size_tx, size_rx) = watch::channel(20u64);
    let cursor = FileCursor::open(dir.path().join("cursors"), "rsyslog").unwrap();
    let sink = SyslogSink::new(
        &format!("127.0.0.1:{port}"),
        None,
        SyslogFormatter::new(Facility::AUTHPRIV, Some("gw-test")),
        Duration::from_secs(2),
    );
    let options = RunnerOptions {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        batch: 7,
        active: None,
    };
    let mut handle = spawn_sink_with(
        "rsyslog",
        Box::new(sink),
        log.clone(),
        cursor.clone(),
        size_rx,
        options,
    );

    // Phase 1: the first 20 entries are acknowledged and reach rsyslog's file.
    handle.progress.wait_for(|p| p.cursor == 20).await.unwrap();
    wait_until("20 entries in rsyslog output", || {
        distinct_in_order(&received(dir.path())).len() == 20
    })
    .await;
    assert_eq!(cursor.load().unwrap(), 20);

    // Phase 2: rsyslogd dies; the log keeps growing. Appending never waits
    // for the sink, the sink keeps failing and retrying, the cursor holds.
    drop(rsyslog);
    let failures_before = handle.progress.borrow().total_failures;
    for i in 20..40 {
        let size = log.append(entry(i));
        size_tx.send(size).unwrap();
    }
    handle
        .progress
        .wait_for(|p| p.total_failures >= failures_before + 5)
        .await
        .unwrap();
    assert_eq!(
        cursor.load().unwrap(),
        20,
        "cursor moved while the receiver was down"
    );
    assert_eq!(handle.progress.borrow().cursor, 20);
    assert!(handle.progress.borrow().last_error.is_some());
    assert_eq!(
        log.read_from(0, 100).unwrap().len(),
        40,
        "the log stays readable"
    );

    // Phase 3: rsyslogd comes back on the same port; everything arrives.
    let _rsyslog = start_rsyslog(dir.path(), &conf, port).await;
    handle.progress.wait_for(|p| p.cursor == 40).await.unwrap();
    wait_until("40 entries in rsyslog output", || {
        distinct_in_order(&received(dir.path())).len() == 40
    })
    .await;
    assert_eq!(cursor.load().unwrap(), 40);
    assert_eq!(handle.progress.borrow().consecutive_failures, 0);

    let got = received(dir.path());
    assert_eq!(distinct_in_order(&got), (0..40).collect::<Vec<_>>());
    let entries = log.all();
    for (index, msgid, msg) in &got {
        let original = &entries[*index as usize];
        assert_eq!(
            msg.as_bytes(),
            original.as_slice(),
            "entry {index} altered in transit"
        );
        let event: serde_json::Value = serde_json::from_slice(original).unwrap();
        assert_eq!(msgid, event["event"].as_str().unwrap());
    }

    // The log closes: the runner finishes once everything is delivered.
    drop(size_tx);
    handle.task.await.unwrap();
}
