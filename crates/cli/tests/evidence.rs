//! Evidence packs, black-box: `evidence verify` accepts only what the log
//! proves. The real gateway writes a short log; a real `secondkey witness
//! serve`, started a moment after the last entry, cosigns it. Then packs
//! for periods that end after the log does, at the witness's cosignature,
//! and at the log's last entry show: the key must come from the auditor
//! (a pack made from another log verifies under its own key, never under
//! the operator's), a log that ends before the period is reported
//! incomplete unless a witness cosigned at or after the period's end, a
//! witness given twice counts once, a signature line is not a cosigner
//! until checked, and report.pdf is never called verified. Lean statement
//! entries are checked as `log verify --bundle` checks them (and as
//! `report usage --bundle` does), and the manifest must describe the pack:
//! the auditor's key, a format this release reads, a well-formed
//! `made_with`, and the digest of the checkpoint the pack holds.

mod common;

use std::path::{Path, PathBuf};
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

fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli(args, "http://127.0.0.1:1", None)
}

fn act(g: &Gateway, n: u32) {
    let v = g.submit(
        "agent:report-bot",
        &json!({"kind": "sql", "operation": "read", "resource": format!("postgres://analytics/public.t{n}"), "params": {"statement": format!("SELECT {n}")}}),
    );
    assert_eq!(v["decision"], "allow", "{v}");
}

/// Writes an evidence pack (no PDF) of the gateway's log for
/// `[2020-01-01, to)`.
fn pack(g: &Gateway, out: &Path, to: &str) -> PathBuf {
    pack_said(g, out, to).0
}

/// [`pack`], with what `evidence` wrote to stderr.
fn pack_said(g: &Gateway, out: &Path, to: &str) -> (PathBuf, String) {
    let (code, _, err) = cli(&[
        "evidence",
        "--config",
        g.config.to_str().unwrap(),
        "--from",
        "2020-01-01",
        "--to",
        to,
        "--framework",
        "soc2",
        "--no-pdf",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    (out.to_path_buf(), err)
}

fn verify(pack: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["evidence", "verify", pack.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(&args)
}

fn figures(pack: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(pack.join("figures.json")).unwrap()).unwrap()
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    assert!(Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
    to.to_path_buf()
}

#[test]
fn evidence_verify_accepts_only_what_the_log_proves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, wkey, err) = cli(&[
        "witness",
        "keygen",
        "--name",
        "witness.test/w1",
        "--out",
        d.join("w1.key").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let wkey = wkey.trim().to_string();
    let wport = free_port();
    let wurl = format!("http://127.0.0.1:{wport}");
    // The witness is configured but not running yet: it cosigns only
    // after the last entry, so its cosignature is dated later than it.
    let g = Gateway::start_extra(
        d,
        POLICIES,
        &format!("\n[[log.witnesses]]\nname = \"w1\"\nurl = \"{wurl}\"\nkey = \"{wkey}\"\n"),
    );
    let vkey = g.text("/v1/log/verifier-key").trim().to_string();
    for n in 0..3 {
        act(&g, n);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let _w = Witness(
        Command::new(BIN)
            .args(["witness", "serve", "--key"])
            .arg(d.join("w1.key"))
            .arg("--state")
            .arg(d.join("w1-state"))
            .args(["--listen", &format!("127.0.0.1:{wport}"), "--log", &vkey])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("witness.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = g.call("GET", "/healthz", None, None).1;
        if h["witnesses"][0]["cosigned_size"].as_u64() == h["log_size"].as_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "not cosigned: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A period that ends after the log does.
    let open = pack(&g, &d.join("open"), "2100-01-01");
    let f = figures(&open);
    let last = f["log"]["last_entry_at"].as_str().unwrap().to_string();
    assert_eq!(f["log"]["ends_before_period_end"], true);
    let lines = f["log"]["unverified_signatures"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{f}");
    assert_eq!(lines[0]["name"], "witness.test/w1");
    let cosigned_at = lines[0]["claimed_time"].as_str().unwrap().to_string();
    assert!(last < cosigned_at, "{last} {cosigned_at}");

    // The key comes from the auditor, never from the pack.
    let verify_txt = std::fs::read_to_string(open.join("VERIFY.txt")).unwrap();
    assert!(!verify_txt.contains(&vkey), "{verify_txt}");
    assert!(verify_txt.contains("--key log.vkey"), "{verify_txt}");
    let html = std::fs::read_to_string(open.join("report.html")).unwrap();
    assert!(
        !html.contains(&format!("--key '{vkey}'")) && !html.contains(&format!("--key &#39;{vkey}")),
        "the report's verify command carries the pack's own key"
    );
    assert!(html.contains("--key log.vkey"));
    let (code, _, err) = verify(&open, &[]);
    assert!(code != 0 && err.contains("--key is required"), "{err}");
    // A log forged under a fresh key: its pack verifies only if the pack
    // supplies the key, which it no longer can.
    let mut other = Gateway::start(&d.join("forger"));
    act(&other, 9);
    let forged = pack(&other, &d.join("forged"), "2100-01-01");
    other.stop();
    let (code, _, err) = verify(&forged, &[]);
    assert!(code != 0 && err.contains("--key is required"), "{err}");
    let (code, _, err) = verify(&forged, &["--key", &vkey]);
    assert!(
        code != 0 && err.contains("manifest.json says the pack was made from the log of key"),
        "{err}"
    );
    // Naming the operator's key in its manifest does not help it.
    let renamed = copy(&forged, &d.join("renamed"));
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(renamed.join("manifest.json")).unwrap()).unwrap();
    m["verifier_key"] = json!(vkey);
    std::fs::write(renamed.join("manifest.json"), m.to_string()).unwrap();
    let (code, _, err) = verify(&renamed, &["--key", &vkey]);
    assert!(code != 0 && err.contains("does not verify"), "{err}");

    // The log ends before the period: said in the report and by verify
    // (exit status 3), unless a witness cosigned at or after its end.
    assert!(
        html.contains(&format!("Incomplete: the log ends at {last}")),
        "the report does not say it is incomplete"
    );
    let (code, out, err) = verify(&open, &["--key", &vkey]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("every figure"), "{out}");
    assert!(
        err.contains(&format!("INCOMPLETE: the log ends at {last}")),
        "{err}"
    );
    let (code, out, err) = verify(
        &open,
        &["--key", &vkey, "--witness", &wkey, "--min-witnesses", "1"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "0 of the required 1 witnesses cosigned this checkpoint at or after the period's end"
        ),
        "{err}"
    );
    // A period that ends at the witness's cosignature, after the last
    // entry: the log alone leaves it open, the witness closes it.
    let closed = pack(&g, &d.join("closed"), &cosigned_at);
    let (code, out, err) = verify(&closed, &["--key", &vkey]);
    assert_eq!(code, 3, "{out}{err}");
    let (code, out, err) = verify(
        &closed,
        &["--key", &vkey, "--witness", &wkey, "--min-witnesses", "1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("but witness witness.test/w1 cosigned it at"),
        "{out}"
    );
    // One witness given twice is one witness.
    let (code, out, err) = verify(
        &closed,
        &[
            "--key",
            &vkey,
            "--witness",
            &wkey,
            "--witness",
            &wkey,
            "--min-witnesses",
            "2",
        ],
    );
    assert!(
        code == 1 && err.contains("1 of the required 2 witnesses"),
        "{out}{err}"
    );
    // A period that ends at the last entry (exclusive): the log reaches it.
    let reached = pack(&g, &d.join("reached"), &last);
    assert_eq!(figures(&reached)["log"]["ends_before_period_end"], false);
    let (code, out, err) = verify(&reached, &["--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("INCOMPLETE") && !out.contains("ends at"),
        "{out}{err}"
    );

    // The report names no cosigner it did not check.
    let html = std::fs::read_to_string(closed.join("report.html")).unwrap();
    assert!(
        !html.contains("cosignatures of"),
        "names an unchecked cosigner"
    );
    assert!(
        html.contains("1 other signature line(s), unverified here: witness.test/w1"),
        "the report does not say the line is unverified"
    );

    // report.pdf: one the manifest does not list fails; one it lists is
    // never called verified.
    let pdf = copy(&reached, &d.join("pdf"));
    std::fs::write(pdf.join("report.pdf"), b"%PDF-1.4 forged").unwrap();
    let (code, out, err) = verify(&pdf, &["--key", &vkey]);
    assert!(
        code == 1 && err.contains("report.pdf is in the pack but manifest.json lists no PDF"),
        "{out}{err}"
    );
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(pdf.join("manifest.json")).unwrap()).unwrap();
    m["sha256"]["report.pdf"] = json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"%PDF-1.4 forged"
    )));
    std::fs::write(pdf.join("manifest.json"), m.to_string()).unwrap();
    let (code, out, err) = verify(&pdf, &["--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("report.pdf is NOT verified"), "{out}");
    std::fs::remove_file(pdf.join("report.pdf")).unwrap();
    let (code, _, err) = verify(&pdf, &["--key", &vkey]);
    assert!(
        code == 1 && err.contains("lists report.pdf but the pack has none"),
        "{err}"
    );
}

/// Appends `entries` to the stopped gateway's log through its store, as the
/// gateway itself would: numbered, in the tree the next checkpoint signs.
fn append(g: &Gateway, entries: Vec<secondkey_log::entry::Entry>) {
    let store =
        secondkey_store::Store::open(secondkey_store::StoreOptions::new(g.dir.join("data")))
            .unwrap();
    store
        .transact_blocking(move |tx| {
            for e in entries {
                tx.append(e)?;
            }
            Ok(())
        })
        .unwrap();
    store.close();
}

/// A pack's log is held to the statement check of `log verify --bundle`:
/// a lean statement entry whose shape its session never logged, or whose
/// shape entry was changed, fails `evidence verify` even though the log
/// is signed and every figure matches (the report lists the entry as a
/// `statement_unresolved` exception, and `evidence` warns when it makes
/// such a pack), and `report usage` refuses it with the same message,
/// from the bundle or from the data directory (`--config`). A manifest naming another key than `--key` fails too.
#[test]
fn evidence_verify_checks_statement_shapes_and_the_manifest_key() {
    use secondkey_log::lean::{action_digest, Shape, SHAPE_EVENT};
    use secondkey_store::new_entry;
    let dir = tempfile::tempdir().unwrap();
    // What the PostgreSQL gateway logs for `SELECT total FROM orders
    // WHERE id = 7`: the shape once per session, then a lean entry.
    let shape = Shape {
        text: vec!["SELECT total FROM orders WHERE id = ".into(), String::new()],
        action: json!({"kind": "sql", "operation": "read",
                       "resource": "postgres://analytics/public.orders", "params": {}}),
        facts: json!({"connection": "analytics", "tables": ["public.orders"]}),
    };
    let digest = shape.digest().unwrap();
    let action = shape
        .action(shape.statement(&["7".into()]).unwrap(), None, None)
        .unwrap();
    let statements = |case: &str, time: &str| {
        let shape_entry = |session: &str, edited: bool| {
            let mut p = shape.entry_payload(session, &digest);
            if edited {
                // The text a reviewer reads no longer is the one that ran.
                p["text"][0] = json!("SELECT 1 FROM orders WHERE id = ");
            }
            new_entry(time, SHAPE_EVENT, Some("agent:report-bot"), p)
        };
        let lean = |session: &str| {
            let mut e = new_entry(
                time,
                "action.allowed",
                Some("agent:report-bot"),
                json!({"decision": "allow", "session": session, "shape": digest,
                       "literals": ["7"], "executed": true, "transport": "pg"}),
            );
            e.digest = Some(action_digest(&action).unwrap());
            e
        };
        match case {
            "whole" => vec![shape_entry("pgs_1", false), lean("pgs_1")],
            "missing" => vec![lean("pgs_2")],
            _ => vec![shape_entry("pgs_3", true), lean("pgs_3")],
        }
    };
    let mut keys = vec![];
    let mut packs = vec![];
    for case in ["missing", "tampered", "whole"] {
        let d = dir.path().join(case);
        let mut g = Gateway::start(&d);
        let vkey = g.text("/v1/log/verifier-key").trim().to_string();
        act(&g, 0);
        let entries = g.log_entries();
        let n = entries.len();
        let time = entries[n - 1]["time"].as_str().unwrap().to_string();
        // The first appended entry is entry n.
        let failure = match case {
            "whole" => None,
            "missing" => Some(format!("FAILED: entry {n} names statement shape {digest} of session pgs_2, but no earlier entry of that session records it")),
            _ => Some(format!("FAILED: entry {n} is not a well-formed statement shape or lean statement entry: its content hashes to")),
        };
        g.stop();
        append(&g, statements(case, &time));
        let (p, said) = pack_said(&g, &d.join("pack"), "2100-01-01");
        let bundle = p.join("bundle");
        let (lcode, lout, lerr) = verify_bundle(&bundle, &vkey);
        let (code, out, err) = verify(&p, &["--key", &vkey]);
        // `report usage` from the bundle and from the data directory.
        let config = g.config.to_str().unwrap();
        let sources = [
            vec!["--bundle", bundle.to_str().unwrap(), "--key", &vkey],
            vec!["--config", config],
        ];
        let usage: Vec<_> = sources
            .iter()
            .map(|source| {
                let mut args = vec!["report", "usage"];
                args.extend(source);
                args.extend(["--from", "2020-01-01", "--to", "2100-01-01"]);
                args.extend(["--format", "csv"]);
                (source[0], cli(&args))
            })
            .collect();
        match &failure {
            None => {
                assert!(!said.contains("warning"), "{said}");
                assert_eq!(lcode, 0, "{lout}{lerr}");
                // The report alone on standard output, the check's count
                // beside it.
                for (source, (ucode, uout, uerr)) in &usage {
                    assert_eq!(*ucode, 0, "{source}: {uout}{uerr}");
                    assert!(uout.starts_with("principal,model,"), "{source}: {uout}");
                    assert!(
                        uerr.contains(
                            "ok: 1 lean statement entries rebuilt from 1 statement shapes"
                        ),
                        "{source}: {uerr}"
                    );
                }
                // Complete but for the period's end (exit 3).
                assert_eq!(code, 3, "{out}{err}");
                assert!(
                    out.contains("ok: 1 lean statement entries rebuilt from 1 statement shapes"),
                    "{out}"
                );
            }
            Some(m) => {
                assert!(
                    said.contains("warning: the log fails the statement check, so `evidence verify` will fail this pack"),
                    "{said}"
                );
                // The report lists it (an edited shape entry, and the
                // statement that then has no shape).
                assert_eq!(
                    figures(&p)["exceptions_by_kind"]["statement_unresolved"],
                    if case == "missing" { 1 } else { 2 },
                );
                // The same failure from all three commands, and nothing
                // after it: no figure, no usage report.
                assert!(lcode == 1 && lerr.contains(m.as_str()), "{lout}{lerr}");
                assert!(code == 1 && err.contains(m.as_str()), "{out}{err}");
                assert!(!out.contains("every figure"), "{out}");
                for (source, (ucode, uout, uerr)) in &usage {
                    assert!(
                        *ucode == 1 && uerr.contains(m.as_str()) && uout.is_empty(),
                        "{source}: {uout}{uerr}"
                    );
                }
            }
        }
        keys.push(vkey);
        packs.push(p);
    }

    // The manifest's key is the auditor's, or the pack fails.
    let whole = &packs[2];
    let (code, out, err) = verify(whole, &["--key", &keys[0]]);
    assert!(
        code == 1
            && err.contains(&format!(
                "manifest.json says the pack was made from the log of key {}, but --key is {}",
                keys[2], keys[0]
            )),
        "{out}{err}"
    );
    let edited = copy(whole, &dir.path().join("edited"));
    let set_key = |v: Value| {
        let path = edited.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["verifier_key"] = v;
        std::fs::write(&path, m.to_string()).unwrap();
    };
    set_key(json!(keys[0]));
    let (code, out, err) = verify(&edited, &["--key", &keys[2]]);
    assert!(
        code == 1 && err.contains("it is not evidence of the log you hold the key for"),
        "{out}{err}"
    );
    set_key(json!("not a key"));
    let (code, out, err) = verify(&edited, &["--key", &keys[2]]);
    assert!(
        code == 1 && err.contains("is not a signed-note verifier key"),
        "{out}{err}"
    );
    set_key(Value::Null);
    let (code, out, err) = verify(&edited, &["--key", &keys[2]]);
    assert!(
        code != 0 && err.contains("manifest.json has no verifier_key"),
        "{out}{err}"
    );
    set_key(json!(keys[2]));
    let (code, out, err) = verify(&edited, &["--key", &keys[2]]);
    assert_eq!(code, 3, "{out}{err}");
}

/// The manifest must describe the pack it is in: a pack format this
/// release reads, a `made_with` naming a release, and the SHA-256 of the
/// pack's checkpoint. Each field tampered alone fails `evidence verify`
/// with a message naming it, though every figure still matches; the
/// untampered pack passes, and so does one whose `made_with` names another
/// release (a record, not a condition).
#[test]
fn evidence_verify_refuses_a_manifest_that_disagrees_with_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut g = Gateway::start(&d.join("gw"));
    let vkey = g.text("/v1/log/verifier-key").trim().to_string();
    act(&g, 0);
    let last = g.log_entries().last().unwrap()["time"]
        .as_str()
        .unwrap()
        .to_string();
    g.stop();
    // A period the log reaches (its last entry is at the period's end).
    let p = pack(&g, &d.join("pack"), &last);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap();
    let checkpoint = std::fs::read(p.join("bundle/checkpoint")).unwrap();
    assert_eq!(
        manifest["sha256"]["bundle/checkpoint"],
        json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            &checkpoint
        )))
    );
    let made_with = manifest["made_with"].as_str().unwrap().to_string();
    assert!(made_with.starts_with("secondkey "), "{made_with}");
    let (code, out, err) = verify(&p, &["--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ok: manifest.json (pack format 2, made with {made_with}) lists exactly the pack's figures.json, report.html and bundle/checkpoint")),
        "{out}"
    );

    let edited = copy(&p, &d.join("edited"));
    // Sets the manifest's field at `path` (removes it for `None`), verifies,
    // and puts the manifest back.
    let tampered = |path: &[&str], v: Option<Value>| {
        let mut m = manifest.clone();
        let (last, parents) = path.split_last().unwrap();
        let at = parents.iter().fold(&mut m, |m, k| &mut m[*k]);
        match v {
            Some(v) => at[*last] = v,
            None => {
                at.as_object_mut().unwrap().remove(*last);
            }
        }
        std::fs::write(edited.join("manifest.json"), m.to_string()).unwrap();
        let said = verify(&edited, &["--key", &vkey]);
        std::fs::write(edited.join("manifest.json"), manifest.to_string()).unwrap();
        said
    };
    let other_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"another checkpoint",
    ));
    let cases: Vec<(&[&str], Option<Value>, String)> = vec![
        (
            &["format"],
            Some(json!(3)),
            format!("FAILED: manifest.json says the pack is of format 3, but {made_with} reads evidence pack format 2 only: verify it with the release that made it (made_with: \"{made_with}\")"),
        ),
        (&["format"], Some(json!(1)), "says the pack is of format 1".into()),
        (
            &["format"],
            Some(json!("2")),
            "FAILED: manifest.json has format \"2\", which is not a pack format number".into(),
        ),
        (&["format"], None, "FAILED: manifest.json has no format".into()),
        (&["made_with"], None, "FAILED: manifest.json has no made_with".into()),
        (
            &["made_with"],
            Some(json!(7)),
            "FAILED: manifest.json has made_with 7, which is not a string".into(),
        ),
        (
            &["made_with"],
            Some(json!("secondkey")),
            "FAILED: manifest.json has made_with \"secondkey\", which is not `secondkey` and a release version".into(),
        ),
        (&["made_with"], Some(json!("secondkey 1.2")), "has made_with \"secondkey 1.2\", which is not".into()),
        (&["made_with"], Some(json!("other 1.2.0")), "has made_with \"other 1.2.0\", which is not".into()),
        (
            &["sha256", "bundle/checkpoint"],
            Some(json!(other_digest)),
            format!("FAILED: manifest.json lists another SHA-256 for bundle/checkpoint ({other_digest}) than the pack holds"),
        ),
        (
            &["sha256", "bundle/checkpoint"],
            None,
            "FAILED: manifest.json lists no SHA-256 for bundle/checkpoint".into(),
        ),
    ];
    for (path, v, want) in cases {
        let (code, out, err) = tampered(path, v.clone());
        assert!(
            code == 1 && err.contains(want.as_str()),
            "{path:?} = {v:?}: {out}{err}"
        );
    }
    // Another release's name is a record of who made it, not a condition.
    let (code, out, err) = tampered(&["made_with"], Some(json!("secondkey 9.4.1-rc.1")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("made with secondkey 9.4.1-rc.1"), "{out}");
    // Put back, the copy passes again.
    let (code, out, err) = verify(&edited, &["--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
}
