//! Black-box tests of the audit side: bundles, the independent verifier,
//! tamper detection from the CLI, tiles over HTTP, SSE, reload, escalation
//! and the live webhook sink.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn verify(bundle: &Path, key: &str, since: Option<&Path>) -> (i32, String) {
    let mut args = vec![
        "log",
        "verify",
        "--bundle",
        bundle.to_str().unwrap(),
        "--key",
        key,
    ];
    if let Some(s) = since {
        args.push("--since");
        args.push(s.to_str().unwrap());
    }
    let (code, out, err) = run_cli(&args, "http://127.0.0.1:1", None);
    (code, format!("{out}{err}"))
}

fn python_verify(bundle: &Path, key: &str) -> (bool, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/tlog_verify.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--bundle", bundle.to_str().unwrap(), "--key", key])
        .output()
        .expect("python3 runs (install it and `pip install cryptography`)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn busy(g: &Gateway, n: usize) {
    for _ in 0..n {
        g.submit("agent:report-bot", &read_action());
    }
}

/// A fetch refused part-way (the hash tiles are public, the entry bundles
/// are not) takes back what it made: no half bundle is left to mistake
/// for a copy, and a directory that was there keeps only what it had.
#[test]
fn a_refused_fetch_leaves_nothing_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    busy(&g, 3);
    let fresh = dir.path().join("x");
    let (code, _, err) = g.cli(
        &["log", "fetch", "--bundle", fresh.to_str().unwrap()],
        Some("user:bob"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("not_log_reader"), "{err}");
    assert!(!fresh.exists(), "{err}");
    let there = dir.path().join("there");
    std::fs::create_dir_all(&there).unwrap();
    std::fs::write(there.join("notes"), "mine").unwrap();
    let (code, _, err) = g.cli(
        &["log", "fetch", "--bundle", there.to_str().unwrap()],
        Some("user:bob"),
    );
    assert_ne!(code, 0, "{err}");
    let left: Vec<_> = std::fs::read_dir(&there)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("notes")]);
}

#[test]
fn an_exported_log_verifies_independently_and_every_tamper_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    busy(&g, 40);
    let key = g.text("/v1/log/verifier-key").trim().to_string();
    let old = dir.path().join("old");
    export_bundle(&g, &old);
    let old_checkpoint = dir.path().join("old-checkpoint");
    std::fs::copy(old.join("checkpoint"), &old_checkpoint).unwrap();
    busy(&g, 300); // crosses a full tile of 256 entries
    let new = dir.path().join("new");
    export_bundle(&g, &new);

    // An auditor fetches the same log over HTTP; without a reader's token
    // the entry bundles are refused.
    let fetched = dir.path().join("fetched");
    let (code, _, err) = g.cli(
        &["log", "fetch", "--bundle", fetched.to_str().unwrap()],
        Some("user:bob"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("not_log_reader"), "{err}");
    let (code, _, err) = g.cli(
        &["log", "fetch", "--bundle", fetched.to_str().unwrap()],
        Some("user:audrey"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out) = verify(&fetched, &key, Some(&old_checkpoint));
    assert_eq!(code, 0, "{out}");
    assert!(python_verify(&fetched, &key).0);

    // Both our verifier and the independent Python one accept it.
    let (code, out) = verify(&new, &key, Some(&old_checkpoint));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("consistent with the older checkpoint"),
        "{out}"
    );
    let (ok, out) = python_verify(&new, &key);
    assert!(ok, "independent verifier: {out}");

    // The tiles served over HTTP are the exported ones, byte for byte.
    for rel in ["tile/0/000", "tile/entries/000"] {
        let file = std::fs::read(new.join(rel)).unwrap();
        let mut served = Vec::new();
        g.agent
            .get(&format!("{}/v1/log/{rel}", g.url))
            .set(
                "Authorization",
                &format!("Bearer {}", token_of("user:audrey")),
            )
            .call()
            .unwrap()
            .into_reader()
            .read_to_end(&mut served)
            .unwrap();
        assert_eq!(file, served, "{rel}");
    }

    // A flipped byte inside an entry.
    let t = dir.path().join("flip");
    copy_dir(&new, &t);
    let bundle = t.join("tile/entries/000");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let pos = bytes
        .windows(5)
        .position(|w| w == b"sql\",")
        .expect("an entry mentions sql");
    bytes[pos] = b'S';
    std::fs::write(&bundle, bytes).unwrap();
    let (code, out) = verify(&t, &key, None);
    assert_ne!(code, 0);
    assert!(out.contains("entry"), "names the entry: {out}");
    assert!(
        !python_verify(&t, &key).0,
        "the independent verifier catches it too"
    );

    // A checkpoint forged with another key.
    let t = dir.path().join("forged");
    copy_dir(&new, &t);
    let other = dir.path().join("other.key");
    let other_vkey = new_key(["keys", "generate"], "test.secondkey/log", &other);
    let (code, out) = verify(&t, &other_vkey, None);
    assert_ne!(code, 0, "a bundle checked with the wrong key fails: {out}");

    // Truncation: the old (shorter) log presented as newer than the new checkpoint.
    let new_checkpoint = dir.path().join("new-checkpoint");
    std::fs::copy(new.join("checkpoint"), &new_checkpoint).unwrap();
    let (code, out) = verify(&old, &key, Some(&new_checkpoint));
    assert_ne!(code, 0);
    assert!(out.to_lowercase().contains("truncat"), "{out}");
}

#[test]
fn an_entry_edited_in_the_database_stops_the_gateway_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(dir.path());
    busy(&g, 5);
    // Serving a checkpoint anchors its root in the store.
    let cp = g.text("/v1/log/checkpoint");
    assert!(cp.contains("test.secondkey/log"));
    g.stop();
    let db = dir.path().join("data/secondkey.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             d=c.execute('select data from log_entries where idx=2').fetchone()[0]; \
             c.execute('update log_entries set data=? where idx=2', (bytes(d).replace(b'allow', b'Allow'),)); c.commit()",
            db.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config", g.config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a gateway over a tampered log must refuse to start, but it is serving");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a tampered log must not be served");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("inconsistent with its last signed checkpoint"),
        "{err}"
    );
}

#[test]
fn server_sent_events_follow_a_request_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.sse"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let resp = g
        .agent
        .get(&format!("{}/v1/requests/{id}/events", g.url))
        .set(
            "Authorization",
            &format!("Bearer {}", token_of("agent:report-bot")),
        )
        .call()
        .unwrap();
    assert!(resp.content_type().starts_with("text/event-stream"));
    let reader = BufReader::new(resp.into_reader());
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                let _ = tx.send(serde_json::from_str(data.trim()).unwrap());
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first["state"], "pending");
    g.review("user:bob", &id, "approve");
    let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(second["reviews"].as_array().unwrap().len(), 1);
    g.review("user:dave", &id, "approve");
    let third = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(third["state"], "approved");
    assert!(
        third["grant"].is_string(),
        "the requester's stream carries the grant"
    );
}

#[test]
fn sighup_reloads_escalation_fires_and_metrics_count() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    g.signal("-HUP");
    // A request with a 2 s TTL escalates at half of it, then expires.
    let write = json!({"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.t",
                       "params": {"statement": "UPDATE t SET x = 1"}});
    let r = g.submit("agent:report-bot", &write);
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = g.call(
            "GET",
            &format!("/v1/requests/{id}?wait=5"),
            Some("agent:report-bot"),
            None,
        );
        if v["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let entries = log_entries(&g);
    let events: Vec<&str> = entries.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(
        events.contains(&"policy.reloaded"),
        "SIGHUP reloads: {events:?}"
    );
    let esc = events
        .iter()
        .position(|e| *e == "request.escalation_due")
        .expect("escalation_due logged");
    let exp = events
        .iter()
        .position(|e| *e == "request.expired")
        .expect("expiry logged");
    assert!(esc < exp, "escalation comes before expiry");
    // OCSF export carries the fields auditors filter on.
    let (code, out, _) = run_cli(
        &[
            "log",
            "export",
            "--config",
            g.config.to_str().unwrap(),
            "--format",
            "ocsf",
        ],
        &g.url,
        None,
    );
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(
        first.get("time").is_some() && first.get("class_uid").is_some(),
        "{first}"
    );
    // Metrics, for members of [metrics] readers (default "monitoring").
    busy(&g, 2);
    let (s, v) = g.call("GET", "/metrics", Some("service:monitor"), None);
    assert_eq!(s, 200, "{v}");
    let m = v.as_str().unwrap().to_string();
    assert!(m.contains("secondkey_requests{state=\"expired\"} 1"), "{m}");
    assert!(m.contains("secondkey_log_size "), "{m}");
    // Every decision counts once, under the surface that asked.
    for line in [
        "secondkey_decisions_total{decision=\"review\",transport=\"api\"} 1",
        "secondkey_decisions_total{decision=\"allow\",transport=\"api\"} 2",
        "secondkey_decisions_total{decision=\"deny\",transport=\"api\"} 0",
        "secondkey_after_pending 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} in {m}");
    }
}

#[test]
fn a_configured_webhook_sink_receives_every_entry_signed() {
    let (port, rx) = webhook_receiver();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[[sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let g = Gateway::start_extra(dir.path(), POLICIES, &extra);
    busy(&g, 5);
    let mut got = Vec::new();
    while got.len() < 6 {
        let (head, body) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("entries arrive");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("webhook-id:") && head.contains("webhook-signature: v1,"),
            "{head}"
        );
        got.push(body["index"].as_u64().unwrap());
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5], "in order, from the start");
}

#[test]
fn policy_verbs_from_the_cli() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let (code, out, err) = run_cli(
        &["policy", "validate", examples.to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cli(
        &["policy", "test", examples.to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.cedar"), "permit(principal, action, resource);\n\nforbid(principal, action == Action::\"sql.read\", resource)\nwhen { context.nope > 1 };\n").unwrap();
    let (code, out, err) = run_cli(
        &["policy", "validate", dir.path().to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    let text = format!("{out}{err}");
    assert!(
        text.contains("bad.cedar:4:"),
        "file and line of the bad attribute: {text}"
    );

    // The issue's example: typos in annotations no longer pass.
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource);\n@review(\"dba\") @quorom(\"2\") @tll(\"5m\")\nforbid(principal, action == Action::\"sql.export\", resource);\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["policy", "validate", dir.path().to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(
            "bad.cedar:2: policy `bad:1`: unknown annotation @quorom; did you mean @quorum?"
        ),
        "{err}"
    );
    assert!(
        err.contains("unknown annotation @tll; did you mean @ttl?"),
        "{err}"
    );
    // With the gateway's config: groups and quorums are checked too.
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource);\n@review(\"dba\") @quorum(\"2\") @x_owner(\"data\")\nforbid(principal, action == Action::\"sql.export\", resource);\n",
    )
    .unwrap();
    let config = dir.path().join("sk.toml");
    std::fs::write(
        &config,
        "[[principals]]\nid = \"user:ann\"\ngroups = [\"dba\"]\n[[principals]]\nid = \"agent:bot\"\ngroups = [\"dba\"]\n",
    )
    .unwrap();
    let (code, out, _) = run_cli(
        &["policy", "validate", dir.path().to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("groups and quorums not checked: pass --config"),
        "{out}"
    );
    let (code, _, err) = run_cli(
        &[
            "policy",
            "validate",
            dir.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("@quorum(\"2\") can never be met: @review(\"dba\") has 1 human in config"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"p\")\npermit(principal, action, resource);\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("x.tests.toml"), "[[case]]\nname = \"wrong on purpose\"\nprincipal = \"agent:a\"\naction = { kind = \"sql\", operation = \"read\", resource = \"r\" }\nexpect = \"deny\"\n").unwrap();
    let (code, out, _) = run_cli(
        &["policy", "test", dir.path().to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0, "a failing case fails the run: {out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");

    let action = dir.path().join("a.json");
    std::fs::write(
        &action,
        r#"{"kind":"sql","operation":"export","resource":"postgres://analytics/public.t"}"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &[
            "policy",
            "explain",
            examples.to_str().unwrap(),
            "--principal",
            "agent:report-bot",
            "--group",
            "agents",
            "--action",
            action.to_str().unwrap(),
        ],
        "http://127.0.0.1:1",
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("export-needs-data-owners"), "{out}");
}

#[test]
#[allow(clippy::result_large_err)] // ureq's error type, in a test
fn event_streams_per_principal_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.streams"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let open = |who: &str| {
        // A fresh agent per stream: one connection each.
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
            .get(&format!("{}/v1/requests/{id}/events", g.url))
            .set("Authorization", &format!("Bearer {}", token_of(who)))
            .call()
    };
    let mut streams: Vec<ureq::Response> = (0..16).map(|_| open("user:bob").unwrap()).collect();
    match open("user:bob") {
        Err(ureq::Error::Status(429, resp)) => {
            let v: Value = resp.into_json().unwrap();
            assert_eq!(v["error"]["code"], "too_many_streams");
        }
        other => panic!(
            "the 17th stream must be refused with 429, got {:?}",
            other.map(|r| r.status())
        ),
    }
    // Another principal is not affected.
    assert!(open("user:dave").is_ok());
    // Closing a stream gives its slot back.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open("user:bob") {
            Ok(s) => {
                streams.push(s);
                break;
            }
            Err(ureq::Error::Status(429, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the slot never came back: {e}"),
        }
    }
}

/// A sink whose secret's variable is unset: `policy validate` (offline)
/// accepts the file, `serve` refuses to start and names the variable; a
/// sink with a bad value is refused by both.
#[test]
fn a_sink_that_cannot_start_refuses_serve_not_offline_checks() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("p.cedar"),
        "permit(principal, action == Action::\"sql.read\", resource);\n",
    )
    .unwrap();
    let write = |sink: &str| {
        let path = dir.path().join("secondkey.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n{sink}",
                dir.path().join("data").display(),
                policies.display()
            ),
        )
        .unwrap();
        path
    };
    // Each must end (within 30 s): a gateway that started would not.
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args).env_remove("SECONDKEY_TEST_SINK_SECRET");
        let (code, _, err) = Watched::spawn(c).finish(30);
        (code == 0, err.join("\n"))
    };
    let config = write(
        "[[sinks]]\nname = \"hooks\"\ntype = \"webhook\"\nurl = \"https://siem.example/ingest\"\nsecret_env = \"SECONDKEY_TEST_SINK_SECRET\"\n",
    );
    let cfg = config.to_str().unwrap();
    let pol = policies.to_str().unwrap();
    let (ok, err) = run(&["policy", "validate", pol, "--config", cfg]);
    assert!(ok, "offline checks need no runtime secret: {err}");
    let (ok, err) = run(&["serve", "--config", cfg]);
    // The key names the sink, as every other sink error does.
    assert!(
        !ok && err.contains("config key `sinks[0]`") && err.contains("SECONDKEY_TEST_SINK_SECRET"),
        "{err}"
    );
    assert!(
        !dir.path().join("data/sinks").exists(),
        "no sink ran: {err}"
    );
    // A refused start leaves nothing: no data directory, keys or log
    // entry saying the gateway started.
    assert!(!dir.path().join("data").exists(), "nothing made: {err}");
    write("[[sinks]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"127.0.0.1:6514\"\nfacility = \"nope\"\n");
    for args in [
        vec!["policy", "validate", pol, "--config", cfg],
        vec!["serve", "--config", cfg],
    ] {
        let (ok, err) = run(&args);
        assert!(
            !ok && err.contains("sinks[0]") && err.contains("facility"),
            "{args:?}: {err}"
        );
    }
    // No time to answer: every attempt would time out, and the sink would
    // retry forever, delivering nothing.
    for sink in [
        "[[sinks]]\nname = \"hooks\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/ingest\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\ntimeout_secs = 0\n",
        "[[sinks]]\nname = \"siem\"\ntype = \"syslog\"\naddress = \"127.0.0.1:6514\"\ntimeout_secs = 0\n",
        "[[sinks]]\nname = \"lineage\"\ntype = \"openlineage\"\nurl = \"http://127.0.0.1:9/api/v1/lineage\"\ntimeout_secs = 121\n",
    ] {
        write(sink);
        for args in [
            vec!["policy", "validate", pol, "--config", cfg],
            vec!["serve", "--config", cfg],
        ] {
            let (ok, err) = run(&args);
            assert!(
                !ok && err.contains("sinks[0]") && err.contains("timeout_secs"),
                "{sink} {args:?}: {err}"
            );
        }
    }
}

/// `log export` refuses a `--format` it does not know before it touches
/// `--out`: the file that names (yesterday's export, say) is left as it was.
#[test]
fn a_refused_export_leaves_its_out_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    busy(&g, 2);
    let out = dir.path().join("events.jsonl");
    std::fs::write(&out, "yesterday's export\n").unwrap();
    let config = g.config.to_str().unwrap();
    let out_s = out.to_str().unwrap();
    let (code, _, err) = g.cli(
        &[
            "log", "export", "--config", config, "--format", "xml", "--out", out_s,
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("--format \"xml\": use jsonl or ocsf"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "yesterday's export\n"
    );
    let (code, _, err) = g.cli(
        &[
            "log", "export", "--config", config, "--format", "jsonl", "--out", out_s,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), g.log_entries().len());
    // The export was written beside --out and renamed over it: no
    // temporary file is left, and the file has the mode a plain create
    // gives under this umask.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".secondkey-export"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    use std::os::unix::fs::PermissionsExt;
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), mode(&plain));

    // A symbolic link stays one: the file it points to gets the export.
    let export_to = |path: &str| {
        g.cli(
            &[
                "log", "export", "--config", config, "--format", "jsonl", "--out", path,
            ],
            None,
        )
    };
    let link = dir.path().join("latest.jsonl");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    std::fs::write(&out, "stale\n").unwrap();
    let (code, _, err) = export_to(link.to_str().unwrap());
    assert_eq!(code, 0, "{err}");
    let link_type = std::fs::symlink_metadata(&link).unwrap().file_type();
    assert!(link_type.is_symlink());
    // (The gateway keeps running: later entries may follow.)
    assert!(std::fs::read_to_string(&out).unwrap().starts_with(&written));

    // Not a regular file (here the command's own standard output): written
    // to directly, as before.
    let (code, stdout, err) = export_to("/dev/stdout");
    assert_eq!(code, 0, "{err}");
    assert!(stdout.starts_with(&written), "{stdout}");
}
