//! Black-box tamper tests: export a real bundle, damage a copy the way an
//! attacker or a bad operator would, and check `verify_bundle` names the
//! damage.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use secondkey_log::bundle::{export_bundle, verify_bundle, VerifyError};
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::entry::Entry;
use secondkey_log::merkle::{leaf_hash, Tree};
use secondkey_log::note::Signer;
use secondkey_log::tiles::{decode_bundle, encode_bundle, entries_path};

const ORIGIN: &str = "secondkey.example/log";
/// More than one full tile (256) plus a partial one.
const SIZE: u64 = 300;

fn entry(i: u64, note: &str) -> Vec<u8> {
    Entry {
        index: i,
        time: "2025-01-31T12:00:00Z".into(),
        event: "request.created".into(),
        actor: Some("agent:report-bot".into()),
        subjects: BTreeMap::from([("request".into(), format!("req_{i}"))]),
        digest: Some(format!("{i:064x}")),
        payload: serde_json::json!({"note": note, "rows": i}),
    }
    .to_bytes()
    .unwrap()
}

struct Log {
    signer: Signer,
    entries: Vec<Vec<u8>>,
    tree: Tree,
}

impl Log {
    fn new(signer: &Signer, entries: Vec<Vec<u8>>) -> Log {
        let tree = Tree::from_leaf_hashes(entries.iter().map(|e| leaf_hash(e)));
        Log {
            signer: signer.clone(),
            entries,
            tree,
        }
    }

    fn honest(signer: &Signer, n: u64) -> Log {
        Log::new(signer, (0..n).map(|i| entry(i, "honest")).collect())
    }

    fn checkpoint(&self, size: u64) -> String {
        Checkpoint::new(ORIGIN, size, self.tree.root_at(size).unwrap())
            .sign(&self.signer)
            .unwrap()
    }

    fn export(&self, dir: &Path) -> String {
        let note = self.checkpoint(self.tree.size());
        export_bundle(dir, &note, &self.entries, &self.tree).unwrap();
        note
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, Signer) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let signer = Signer::generate(ORIGIN).unwrap();
    Log::honest(&signer, SIZE).export(&dir);
    (tmp, dir, signer)
}

fn tampered(tmp: &tempfile::TempDir, original: &Path, name: &str) -> PathBuf {
    let dir = tmp.path().join(name);
    copy_dir(original, &dir);
    dir
}

/// Rewrites entry bundle 0 (the full one) through `f`.
fn edit_first_bundle(dir: &Path, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let path = dir.join(entries_path(0, 256).unwrap());
    let mut entries = decode_bundle(&fs::read(&path).unwrap()).unwrap();
    f(&mut entries);
    fs::write(&path, encode_bundle(&entries).unwrap()).unwrap();
}

#[test]
fn untampered_bundle_verifies() {
    let (_tmp, dir, signer) = setup();
    let report = verify_bundle(&dir, &signer.verifier(), None).unwrap();
    assert_eq!(report.size, SIZE);
    assert_eq!(report.origin, ORIGIN);
    assert!(dir.join("tile/entries/000").is_file());
    assert!(dir.join("tile/entries/001.p/44").is_file());
    assert!(dir.join("tile/0/000").is_file());
    assert!(dir.join("tile/0/001.p/44").is_file());
    assert!(dir.join("tile/1/000.p/1").is_file());
    // 1 full + 1 partial level-0 tile, 1 partial level-1 tile.
    assert_eq!(report.tiles_checked, 3);
}

#[test]
fn flipped_byte_in_an_entry_is_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "flip");
    edit_first_bundle(&bad, |entries| {
        // Keep it valid canonical JSON so only the hash gives it away.
        let e = &mut entries[42];
        let pos = e.windows(6).position(|w| w == b"honest").unwrap();
        e[pos] ^= 0x01; // 'h' -> 'i'
    });
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::LeafMismatch { index: 42 }),
        "{err}"
    );
    assert!(err.to_string().contains("entry 42"), "{err}");

    // A flip that breaks the JSON is reported as an invalid entry.
    let bad = tampered(&tmp, &dir, "flip-json");
    edit_first_bundle(&bad, |entries| entries[7][0] ^= 0x01);
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::EntryInvalid { index: 7, .. }),
        "{err}"
    );
}

#[test]
fn deleted_entry_is_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "delete");
    edit_first_bundle(&bad, |entries| {
        entries.remove(100);
    });
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::IndexMismatch {
                position: 100,
                found: 101
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("position 100"), "{err}");

    // Deleting the last entry of a bundle leaves the indexes in order but
    // the bundle short.
    let bad = tampered(&tmp, &dir, "delete-last");
    edit_first_bundle(&bad, |entries| {
        entries.pop();
    });
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BundleCount {
                expected: 256,
                found: 255,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn swapped_entries_are_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "swap");
    edit_first_bundle(&bad, |entries| entries.swap(10, 20));
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::IndexMismatch {
                position: 10,
                found: 20
            }
        ),
        "{err}"
    );
}

#[test]
fn inserted_entry_is_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "insert");
    // Insert a forged entry and push the last one out, keeping the count.
    edit_first_bundle(&bad, |entries| {
        entries.insert(5, entry(5, "forged"));
        entries.pop();
    });
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    // Position 5 holds a forged entry claiming index 5 (its hash will not be
    // in the tile); position 6 holds the old entry 5.
    assert!(
        matches!(
            err,
            VerifyError::IndexMismatch {
                position: 6,
                found: 5
            }
        ),
        "{err}"
    );

    // Inserting into the partial bundle makes it too long.
    let bad = tampered(&tmp, &dir, "insert-partial");
    let path = bad.join(entries_path(1, 44).unwrap());
    let mut entries = decode_bundle(&fs::read(&path).unwrap()).unwrap();
    entries.push(entry(300, "appended"));
    fs::write(&path, encode_bundle(&entries).unwrap()).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BundleCount {
                expected: 44,
                found: 45,
                ..
            }
        ),
        "{err}"
    );

    // A full bundle with a 257th entry is not a valid bundle at all.
    let bad = tampered(&tmp, &dir, "insert-257");
    let path = bad.join(entries_path(0, 256).unwrap());
    let mut bytes = fs::read(&path).unwrap();
    let extra = entry(256, "extra");
    bytes.extend_from_slice(&(extra.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&extra);
    fs::write(&path, bytes).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(matches!(err, VerifyError::BundleCorrupt { .. }), "{err}");
}

#[test]
fn truncation_is_detected() {
    let (tmp, _dir, signer) = setup();
    let full = Log::honest(&signer, SIZE);
    let old_checkpoint = full.checkpoint(SIZE);
    // The operator later publishes a shorter log, properly signed.
    let short = Log::honest(&signer, 200);
    let dir = tmp.path().join("short");
    short.export(&dir);
    // On its own it is a valid log…
    verify_bundle(&dir, &signer.verifier(), None).unwrap();
    // …but not a continuation of what we saw before.
    let err = verify_bundle(&dir, &signer.verifier(), Some(&old_checkpoint)).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Truncated {
                old_size: 300,
                new_size: 200
            }
        ),
        "{err}"
    );
}

#[test]
fn checkpoint_forged_with_another_key_is_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "forge");
    let mallory = Signer::generate(ORIGIN).unwrap();
    let honest = Log::honest(&signer, SIZE);
    let forged = Checkpoint::new(ORIGIN, SIZE, honest.tree.root())
        .sign(&mallory)
        .unwrap();
    fs::write(bad.join("checkpoint"), forged).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(matches!(err, VerifyError::Checkpoint(_)), "{err}");
    assert!(
        err.to_string().contains("not signed by the trusted key"),
        "{err}"
    );

    // Altering the checkpoint text breaks the genuine signature.
    let bad = tampered(&tmp, &dir, "edit-checkpoint");
    let note = fs::read_to_string(bad.join("checkpoint")).unwrap();
    fs::write(
        bad.join("checkpoint"),
        note.replacen("\n300\n", "\n299\n", 1),
    )
    .unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn rewritten_history_is_detected() {
    let (tmp, _dir, signer) = setup();
    let honest = Log::honest(&signer, SIZE);
    let saved = honest.checkpoint(280);
    // The operator rewrites entry 17 and re-signs a larger, self-consistent log.
    let mut entries = honest.entries.clone();
    entries[17] = entry(17, "rewritten");
    entries.extend((SIZE..SIZE + 20).map(|i| entry(i, "later")));
    let rewritten = Log::new(&signer, entries);
    let dir = tmp.path().join("rewritten");
    rewritten.export(&dir);
    verify_bundle(&dir, &signer.verifier(), None).unwrap();
    let err = verify_bundle(&dir, &signer.verifier(), Some(&saved)).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Inconsistent {
                old_size: 280,
                new_size: 320,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("history was rewritten"), "{err}");

    // Same size, different content.
    let same = honest.checkpoint(SIZE);
    let mut entries = honest.entries.clone();
    entries[299] = entry(299, "rewritten");
    let dir = tmp.path().join("rewritten-same-size");
    Log::new(&signer, entries).export(&dir);
    let err = verify_bundle(&dir, &signer.verifier(), Some(&same)).unwrap_err();
    assert!(matches!(err, VerifyError::Inconsistent { .. }), "{err}");

    // An honest extension verifies against the saved checkpoint.
    let grown = Log::honest(&signer, SIZE + 20);
    let dir = tmp.path().join("grown");
    grown.export(&dir);
    let report = verify_bundle(&dir, &signer.verifier(), Some(&saved)).unwrap();
    assert_eq!(report.consistent_with, Some(280));
}

#[test]
fn tampered_tiles_and_missing_files_are_detected() {
    let (tmp, dir, signer) = setup();
    let bad = tampered(&tmp, &dir, "tile0");
    let path = bad.join("tile/0/001.p/44");
    let mut t = fs::read(&path).unwrap();
    t[32 * 3] ^= 0xff;
    fs::write(&path, t).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::LeafMismatch { index: 259 }),
        "{err}"
    );

    let bad = tampered(&tmp, &dir, "tile1");
    let path = bad.join("tile/1/000.p/1");
    fs::write(&path, [0u8; 32]).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(matches!(err, VerifyError::TileMismatch { .. }), "{err}");

    let bad = tampered(&tmp, &dir, "missing");
    fs::remove_file(bad.join("tile/entries/001.p/44")).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(matches!(err, VerifyError::MissingFile { .. }), "{err}");

    let bad = tampered(&tmp, &dir, "garbage");
    let path = bad.join("tile/entries/001.p/44");
    let mut b = fs::read(&path).unwrap();
    b.push(0xff);
    fs::write(&path, b).unwrap();
    let err = verify_bundle(&bad, &signer.verifier(), None).unwrap_err();
    assert!(matches!(err, VerifyError::BundleCorrupt { .. }), "{err}");
}

#[test]
fn re_export_after_growth_keeps_old_partials_harmless() {
    // Exporting a grown log into the same directory leaves the old partial
    // files; verifying the new checkpoint must ignore them.
    let (_tmp, dir, signer) = setup();
    let grown = Log::honest(&signer, 600);
    grown.export(&dir);
    let report = verify_bundle(&dir, &signer.verifier(), None).unwrap();
    assert_eq!(report.size, 600);
    // An old checkpoint whose partial tiles were deleted still verifies by
    // falling back to the full tiles, as the spec allows.
    let old = grown.checkpoint(SIZE);
    fs::remove_file(dir.join("tile/entries/001.p/44")).unwrap();
    fs::remove_file(dir.join("tile/0/001.p/44")).unwrap();
    fs::write(dir.join("checkpoint"), &old).unwrap();
    verify_bundle(&dir, &signer.verifier(), None).unwrap();
}

#[test]
fn export_refuses_inconsistent_input() {
    let tmp = tempfile::tempdir().unwrap();
    let signer = Signer::generate(ORIGIN).unwrap();
    let log = Log::honest(&signer, 10);
    let note = log.checkpoint(10);
    assert!(export_bundle(tmp.path(), &note, &log.entries[..9], &log.tree).is_err());
    let mut wrong = log.entries.clone();
    wrong[3] = entry(3, "other");
    assert!(export_bundle(tmp.path(), &note, &wrong, &log.tree).is_err());
    let other = Log::honest(&signer, 11);
    assert!(export_bundle(tmp.path(), &note, &other.entries, &other.tree).is_err());
}

#[test]
fn in_memory_verification() {
    let signer = Signer::generate(ORIGIN).unwrap();
    let log = Log::honest(&signer, 40);
    let note = log.checkpoint(40);
    let v = signer.verifier();
    let old = log.checkpoint(30);
    let report = secondkey_log::verify_log(&note, &v, &log.entries, Some(&old)).unwrap();
    assert_eq!(report.consistent_with, Some(30));
    let mut swapped = log.entries.clone();
    swapped.swap(1, 2);
    assert!(matches!(
        secondkey_log::verify_log(&note, &v, &swapped, None),
        Err(VerifyError::IndexMismatch {
            position: 1,
            found: 2
        })
    ));
    assert!(matches!(
        secondkey_log::verify_log(&note, &v, &log.entries[..39], None),
        Err(VerifyError::EntryCount {
            expected: 40,
            found: 39
        })
    ));
    let cp = Checkpoint::open(&note, &v).unwrap();
    let tree = secondkey_log::verify_entries(&cp, &log.entries).unwrap();
    assert_eq!(tree.root(), cp.root);
}
