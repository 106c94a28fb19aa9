//! Witnessed checkpoints, black-box: the real gateway submits each new
//! checkpoint to a real `secondkey witness serve` process, which cosigns
//! it; `log verify --witness … --min-witnesses N` requires the
//! cosignature and says when a checkpoint is signed only by the operator.
//! Then the operator — holding the data directory and the log key — rolls
//! the data back to a backup and writes a different history: the witness
//! refuses to cosign the fork, and verification that requires a witness
//! fails.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Witness(Child);

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_witness(d: &Path, log_vkey: &str) -> (Witness, String, String) {
    let (code, wkey, err) = run_cli(
        &[
            "witness",
            "keygen",
            "--name",
            "witness.test/w1",
            "--out",
            d.join("w1.key").to_str().unwrap(),
        ],
        "http://127.0.0.1:1",
        None,
    );
    assert_eq!(code, 0, "{err}");
    let port = free_port();
    let child = Command::new(BIN)
        .args(["witness", "serve", "--key"])
        .arg(d.join("w1.key"))
        .arg("--state")
        .arg(d.join("w1-state"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", log_vkey])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("witness.log")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("{url}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "the witness did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Witness(child), url, wkey.trim().to_string())
}

fn health(g: &Gateway) -> Value {
    g.call("GET", "/healthz", None, None).1
}

/// Waits until the witness cosigned the gateway's current size.
fn wait_cosigned(g: &Gateway) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health(g);
        let size = h["log_size"].as_u64().unwrap();
        if h["witnesses"][0]["cosigned_size"].as_u64() == Some(size) {
            return size;
        }
        assert!(Instant::now() < deadline, "not cosigned: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn act(g: &Gateway, n: u32) {
    let v = g.submit(
        "agent:report-bot",
        &json!({"kind": "sql", "operation": "read", "resource": format!("postgres://analytics/public.t{n}"), "params": {"statement": format!("SELECT {n}")}}),
    );
    assert_eq!(v["decision"], "allow", "{v}");
}

fn verify(bundle: &Path, vkey: &str, wkey: &str, min: &str) -> (i32, String, String) {
    run_cli(
        &[
            "log",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            vkey,
            "--witness",
            wkey,
            "--min-witnesses",
            min,
        ],
        "http://127.0.0.1:1",
        None,
    )
}

/// A gateway started once (so its log key exists) and stopped, with its
/// verifier key.
fn stopped_gateway(d: &Path) -> (Gateway, String) {
    let mut g = Gateway::start(d);
    let vkey = g.text("/v1/log/verifier-key").trim().to_string();
    g.stop();
    (g, vkey)
}

/// Starts `g` again, submitting its checkpoints to witness `name`.
fn spawn_witnessed(g: &mut Gateway, name: &str, url: &str, key: &str) {
    let port: u16 = g.url.rsplit(':').next().unwrap().parse().unwrap();
    write_config_extra(
        &g.dir.clone(),
        port,
        POLICIES,
        &format!("\n[[log.witnesses]]\nname = \"{name}\"\nurl = \"{url}\"\nkey = \"{key}\"\n"),
    );
    g.spawn();
}

/// Fetches the newest witnessed checkpoint's bundle as an auditor.
fn fetch_witnessed(g: &Gateway, bundle: &Path) {
    let (code, _, err) = g.cli(
        &[
            "log",
            "fetch",
            "--bundle",
            bundle.to_str().unwrap(),
            "--witnessed",
        ],
        Some("user:audrey"),
    );
    assert_eq!(code, 0, "{err}");
}

/// `[[log.witnesses]] url`: `http://` only to this machine — a host name
/// that merely starts like a loopback one is another machine.
#[test]
fn a_witness_url_over_plain_http_must_be_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let key = "witness.example/w1+7ee4614e+BPxyrQWB92BmYFj7//uA7ixdtSDFQVFXGTKp9GD2cVhU";
    for (url, ok) in [
        ("http://127.evil.example/w1", false),
        ("http://localhost.evil.example/w1", false),
        ("http://127.0.0.1@evil.example/w1", false),
        ("http://[::1]x.example/w1", false),
        ("http://127.0.0.1:7380/w1", true),
        ("http://127.1.2.3:7380", true),
        ("http://localhost:7380/w1", true),
        ("http://[::1]:7380", true),
        ("https://witness.example/w1", true),
    ] {
        let extra =
            format!("\n[[log.witnesses]]\nname = \"w1\"\nurl = \"{url}\"\nkey = \"{key}\"\n");
        let cfg = write_config_extra(dir.path(), free_port(), POLICIES, &extra);
        let (code, _, err) = run_cli(
            &[
                "policy",
                "validate",
                dir.path().join("policies").to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ],
            "http://127.0.0.1:1",
            None,
        );
        assert_eq!(code == 0, ok, "{url}: {err}");
        if !ok {
            assert!(err.contains("log.witnesses[0].url"), "{url}: {err}");
        }
    }
}

#[test]
fn a_witness_cosigns_the_log_and_refuses_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut g, vkey) = stopped_gateway(d);
    let (_w, wurl, wkey) = start_witness(d, &vkey);
    spawn_witnessed(&mut g, "w1", &wurl, &wkey);
    act(&g, 1);
    let s1 = wait_cosigned(&g);
    // The checkpoint as published carries the cosignature.
    let cp = g.text("/v1/log/checkpoint");
    assert!(cp.contains("\n\u{2014} witness.test/w1 "), "{cp}");
    let bundle = d.join("audit");
    fetch_witnessed(&g, &bundle);
    let (code, out, err) = verify(&bundle, &vkey, &wkey, "1");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cosigned by witness witness.test/w1"), "{out}");
    // The same checkpoint without its cosignature: reported as signed by
    // the operator only, and refused when a witness is required.
    let note = std::fs::read_to_string(bundle.join("checkpoint")).unwrap();
    let operator_only: String = note
        .lines()
        .filter(|l| !l.contains("witness.test/w1"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(bundle.join("checkpoint"), &operator_only).unwrap();
    let (code, out, _) = verify(&bundle, &vkey, &wkey, "0");
    assert_eq!(code, 0);
    assert!(out.contains("signed only by the operator"), "{out}");
    let (code, _, err) = verify(&bundle, &vkey, &wkey, "1");
    assert!(
        code != 0 && err.contains("0 of the required 1 witnesses"),
        "{err}"
    );
    // A checkpoint altered around its signatures fails outright.
    let moved = note.replacen(&format!("\n{s1}\n"), &format!("\n{}\n", s1 + 1), 1);
    std::fs::write(bundle.join("checkpoint"), moved).unwrap();
    assert!(
        verify(&bundle, &vkey, &wkey, "0").0 != 0,
        "an altered checkpoint fails the log's signature"
    );

    // A backup of the data directory as of now (the gateway stopped).
    g.stop();
    let backup = d.join("data.bak");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(d.join("data"))
        .arg(&backup)
        .status()
        .unwrap()
        .success());
    g.spawn();
    for n in 2..5 {
        act(&g, n);
    }
    let s2 = wait_cosigned(&g);
    assert!(s2 > s1);
    let (code, _, err) = g.cli(
        &[
            "log",
            "export",
            "--config",
            g.config.to_str().unwrap(),
            "--bundle",
            d.join("honest").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    g.stop();
    // With the gateway stopped, the export carries the final checkpoint,
    // cosigned at shutdown.
    let (code, _, err) = g.cli(
        &[
            "log",
            "export",
            "--config",
            g.config.to_str().unwrap(),
            "--bundle",
            d.join("final").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(verify(&d.join("final"), &vkey, &wkey, "1").0, 0);

    // The operator restores the backup and writes another history, longer
    // than what the witness saw. The gateway starts (its own anchor is
    // the backup's), but the witness refuses to cosign the fork.
    std::fs::remove_dir_all(d.join("data")).unwrap();
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(&backup)
        .arg(d.join("data"))
        .status()
        .unwrap()
        .success());
    g.spawn();
    for n in 100..110 {
        act(&g, n);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until the fork outgrows what the witness saw, the gateway itself sees
    // the rollback (the witness names a larger size); then the witness
    // refuses the consistency proof (422).
    let mut seen = Vec::new();
    loop {
        let h = health(&g);
        if let Some(e) = h["witnesses"][0]["error"].as_str() {
            if !seen.iter().any(|s: &String| s == e) {
                seen.push(e.to_string());
            }
            if e.contains("HTTP 422") {
                break;
            }
            assert!(e.contains("rolled back or forked"), "{e}");
        }
        assert!(
            Instant::now() < deadline,
            "the witness did not refuse: {h} {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        health(&g)["witnesses"][0]["cosigned_size"]
            .as_u64()
            .unwrap()
            < s2
    );
    let kept = std::fs::read_to_string(d.join("w1-state/refused.jsonl")).unwrap();
    assert!(
        kept.contains("\"status\":422"),
        "the witness keeps the fork as evidence: {kept}"
    );
    let forked = d.join("forked");
    let (code, _, err) = g.cli(
        &["log", "fetch", "--bundle", forked.to_str().unwrap()],
        Some("user:audrey"),
    );
    assert_eq!(code, 0, "{err}");
    // The forked log verifies under the operator's key alone — that is the
    // gap witnesses close — but not when a witness is required, and not
    // against the checkpoint an auditor kept.
    assert_eq!(verify(&forked, &vkey, &wkey, "0").0, 0);
    let (code, _, err) = verify(&forked, &vkey, &wkey, "1");
    assert!(code != 0 && err.contains("0 of the required 1"), "{err}");
    let (code, _, err) = run_cli(
        &[
            "log",
            "verify",
            "--bundle",
            forked.to_str().unwrap(),
            "--key",
            &vkey,
            "--since",
            d.join("final/checkpoint").to_str().unwrap(),
        ],
        "http://127.0.0.1:1",
        None,
    );
    assert!(code != 0 && err.contains("history was rewritten"), "{err}");
}

/// Interoperability: `aics-witness` (PyPI), an independent C2SP
/// tlog-witness implementation in Python (its own signed-note, checkpoint,
/// cosignature and consistency-proof code in `aics-tlog`), witnesses our
/// log: it checks our checkpoints and proofs and cosigns them, and our
/// gateway and `log verify` accept its cosignatures.
#[test]
fn an_independent_witness_implementation_cosigns_our_log() {
    let ok = Command::new("python3")
        .args(["-c", "import aics_witness"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "aics-witness is missing: run `python3 -m pip install --no-deps --ignore-requires-python aics-tlog aics-witness` (./scripts/test does)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut g, vkey) = stopped_gateway(d);
    let wdir = d.join("aics");
    std::fs::create_dir_all(&wdir).unwrap();
    let aics = |args: &[&str]| {
        let o = Command::new("python3")
            .args(["-m", "aics_witness"])
            .args(args)
            .env("AICS_WITNESS_CONFIG", wdir.join("witness.json"))
            .current_dir(&wdir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let wkey = aics(&["init", "--name", "witness.test/aics"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    aics(&["add-log", "--origin", "test.secondkey/log", "--vkey", &vkey]);
    let port = free_port();
    let _w = Witness(
        Command::new("python3")
            .args([
                "-m",
                "aics_witness",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("AICS_WITNESS_CONFIG", wdir.join("witness.json"))
            .current_dir(&wdir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("aics.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "aics-witness did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    spawn_witnessed(&mut g, "aics", &format!("http://127.0.0.1:{port}"), &wkey);
    // Two rounds: the first from size 0, the second with a consistency proof.
    act(&g, 1);
    let s1 = wait_cosigned(&g);
    act(&g, 2);
    act(&g, 3);
    let s2 = wait_cosigned(&g);
    assert!(s2 > s1);
    let bundle = d.join("audit");
    fetch_witnessed(&g, &bundle);
    let (code, out, err) = verify(&bundle, &vkey, &wkey, "1");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("cosigned by witness witness.test/aics"),
        "{out}"
    );
    let log = std::fs::read_to_string(d.join("aics.log")).unwrap();
    assert!(log.contains(&format!("size {s1} -> {s2}")), "{log}");
}

/// A witness is reached by anyone, so its listener has the gateway's
/// connection limits: a client that never finishes its request head is
/// cut off (after `header_read_timeout`, 10 s), one whose body never
/// arrives in full is answered `408` (after `body_read_timeout`, 30 s),
/// and the witness answers others meanwhile. Before, such connections
/// stayed open for as long as the client liked.
#[test]
fn a_witness_cuts_off_a_client_that_never_finishes_its_request() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A log key made for the purpose: no gateway needed.
    let log_vkey = new_key(["keys", "generate"], "log.test/l1", &d.join("log.key"));
    let (_w, url, _) = start_witness(d, &log_vkey);
    let addr = url.trim_start_matches("http://");
    let mut slow_head = std::net::TcpStream::connect(addr).unwrap();
    slow_head
        .write_all(b"POST /add-checkpoint HTTP/1.1\r\nHost: witness\r\nX-Slow: ")
        .unwrap();
    let mut slow_body = std::net::TcpStream::connect(addr).unwrap();
    slow_body
        .write_all(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: witness\r\nContent-Length: 100\r\n\r\nold\n",
        )
        .unwrap();
    let health = ureq::get(&format!("{url}/healthz")).call().unwrap();
    assert_eq!(health.status(), 200);
    // Well past both timeouts: a read still blocked then fails the test.
    for s in [&slow_head, &slow_body] {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let mut answer = Vec::new();
    match slow_head.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection was not cut off: {e}"),
    }
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut answer = Vec::new();
    let _ = slow_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
