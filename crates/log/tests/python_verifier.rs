//! Cross-checks our bundles with an independent verifier written in Python
//! from the specifications (tests/python/tlog_verify.py).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use secondkey_log::bundle::export_bundle;
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::entry::Entry;
use secondkey_log::merkle::{leaf_hash, Tree};
use secondkey_log::note::Signer;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/tlog_verify.py")
}

fn require_python() {
    let out = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import the `cryptography` package needed by the independent verifier: \
             run `pip install cryptography` ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "python3 is not available ({e}); install Python 3 and `pip install cryptography`"
        ),
    }
}

fn run(bundle: &Path, key: &str, since: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .arg("--bundle")
        .arg(bundle)
        .arg("--key")
        .arg(key);
    if let Some(s) = since {
        cmd.arg("--since").arg(s);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn entries(n: u64, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            Entry {
                index: i,
                time: "2025-01-31T12:00:00.5Z".into(),
                event: "review.approved".into(),
                actor: Some("user:bob".into()),
                subjects: BTreeMap::from([("request".into(), format!("req_{i}"))]),
                digest: None,
                payload: serde_json::json!({"tag": tag, "ünïcode": "✓", "n": i}),
            }
            .to_bytes()
            .unwrap()
        })
        .collect()
}

fn export(dir: &Path, signer: &Signer, entries: &[Vec<u8>]) -> Tree {
    let tree = Tree::from_leaf_hashes(entries.iter().map(|e| leaf_hash(e)));
    let note = Checkpoint::new("secondkey.example/log", tree.size(), tree.root())
        .sign(signer)
        .unwrap();
    export_bundle(dir, &note, entries, &tree).unwrap();
    tree
}

#[test]
fn python_verifier_agrees() {
    require_python();
    let tmp = tempfile::tempdir().unwrap();
    let signer = Signer::generate("secondkey.example/log").unwrap();
    let key = signer.verifier().to_string();

    // Larger than one level-1 hash's worth would be slow; 700 spans two full
    // tiles, a partial tile and a level-1 partial tile.
    let good = tmp.path().join("good");
    let all = entries(700, "x");
    let tree = export(&good, &signer, &all);
    let (ok, out) = run(&good, &key, None);
    assert!(ok, "independent verifier rejected a good bundle: {out}");
    assert!(out.contains("700 entries"), "{out}");

    // Consistent with an older checkpoint.
    let old = tmp.path().join("old-checkpoint");
    let old_note = Checkpoint::new("secondkey.example/log", 300, tree.root_at(300).unwrap())
        .sign(&signer)
        .unwrap();
    fs::write(&old, &old_note).unwrap();
    let (ok, out) = run(&good, &key, Some(&old));
    assert!(ok, "{out}");

    // Tampered entry.
    let bad = tmp.path().join("bad");
    export(&bad, &signer, &all);
    let path = bad.join("tile/entries/001");
    let mut bytes = fs::read(&path).unwrap();
    let pos = bytes.windows(7).position(|w| w == b"\"tag\":\"").unwrap() + 7;
    bytes[pos] = b'y';
    fs::write(&path, bytes).unwrap();
    let (ok, out) = run(&bad, &key, None);
    assert!(
        !ok,
        "independent verifier accepted a tampered bundle: {out}"
    );
    assert!(out.contains("entry 256"), "{out}");

    // Wrong key.
    let other = Signer::generate("secondkey.example/log").unwrap();
    let (ok, out) = run(&good, &other.verifier().to_string(), None);
    assert!(!ok, "{out}");

    // Rewritten history against the older checkpoint.
    let mut rewritten = all.clone();
    rewritten[3] = entries(4, "rewritten").pop().unwrap();
    let rw = tmp.path().join("rewritten");
    export(&rw, &signer, &rewritten);
    assert!(run(&rw, &key, None).0);
    let (ok, out) = run(&rw, &key, Some(&old));
    assert!(!ok, "{out}");
}
