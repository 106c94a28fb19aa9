//! `secondkey log …`: what an auditor runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use secondkey_log::note::Verifier;

use crate::{env_map, Remote};

#[derive(Subcommand)]
pub enum LogCmd {
    /// Verify a bundle offline (signature, every entry, the root; with --since,
    /// consistency with an older checkpoint), or a single receipt.
    #[command(
        after_help = "Examples:\n  secondkey log verify --bundle ./audit --key \"$(cat log.vkey)\"\n  secondkey log verify --bundle ./audit --key log.vkey --since old-checkpoint\n  secondkey log verify --receipt receipt.json --key log.vkey\n  secondkey log verify --config secondkey.toml   # the live data directory"
    )]
    Verify {
        /// A directory written by `secondkey log export --bundle`.
        #[arg(long, conflicts_with_all = ["receipt", "config"])]
        bundle: Option<PathBuf>,
        /// A receipt written by `secondkey log proof`.
        #[arg(long, conflicts_with = "config")]
        receipt: Option<PathBuf>,
        /// Verify the gateway's own data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: Option<String>,
        /// An older signed checkpoint (file) the log must extend.
        #[arg(long)]
        since: Option<PathBuf>,
        /// A witness's cosigner verifier key, or a file holding it
        /// (repeatable): its cosignature on the checkpoint is checked.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Fail unless at least N of the --witness keys cosigned the
        /// checkpoint (default: 0, just report).
        #[arg(long, default_value_t = 0)]
        min_witnesses: usize,
    },
    /// Print an inclusion receipt for entry INDEX (verifies offline). The
    /// token must be a log reader's ([log] readers, default group
    /// auditors).
    #[command(
        after_help = "Example:\n  secondkey log proof 42 --token \"$AUDITOR_TOKEN\" > receipt.json"
    )]
    Proof {
        /// The entry's index in the log (0 is the first).
        index: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Export the log: a static tlog-tiles bundle, or JSONL / OCSF events.
    #[command(
        after_help = "Examples:\n  secondkey log export --config secondkey.toml --bundle ./audit\n  secondkey log export --config secondkey.toml --format ocsf --out events.json\n  secondkey log export --config secondkey.toml --format jsonl --expand   # lean statements with their full text"
    )]
    Export {
        /// The gateway's config: the log is read from its data directory
        /// (read-only; the gateway may be running).
        #[arg(long, env = "SECONDKEY_CONFIG")]
        config: PathBuf,
        /// Write a C2SP tlog-tiles copy (checkpoint + tiles + entry bundles).
        #[arg(long, conflicts_with = "format")]
        bundle: Option<PathBuf>,
        /// jsonl or ocsf, one event per line.
        #[arg(long)]
        format: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print lean statement entries (which name a statement shape
        /// logged once per session) as the full entries they stand for:
        /// `payload.action`, with the statement's text, and
        /// `payload.facts` rebuilt from the shape and checked against the
        /// entry's digest; such lines carry `"expanded": {"session",
        /// "shape"}` and are no longer the logged bytes. Fails if a shape
        /// is missing.
        #[arg(long, conflicts_with = "bundle")]
        expand: bool,
    },
    /// Print the gateway's current signed checkpoint.
    #[command(after_help = "Example:\n  secondkey log checkpoint > checkpoint-2026-11-22")]
    Checkpoint {
        #[arg(long, env = "SECONDKEY_URL", default_value = "http://127.0.0.1:8750")]
        url: String,
    },
    /// Download the current checkpoint, hash tiles and entry bundles from a
    /// running gateway into DIR (a tlog-tiles copy to verify offline).
    /// Entry bundles need a log reader's token (`[log] readers`).
    #[command(
        after_help = "Example:\n  secondkey log fetch --bundle ./audit --token $AUDITOR_TOKEN\n  secondkey log verify --bundle ./audit --key log.vkey --since ./last-checkpoint"
    )]
    Fetch {
        /// The directory to write the bundle into (created if missing).
        #[arg(long)]
        bundle: PathBuf,
        /// Fetch the newest checkpoint witnesses cosigned (it may be a
        /// little older than the newest one).
        #[arg(long)]
        witnessed: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// A key given on the command line, or the content of the file it names.
fn key_text(k: &str) -> Result<String> {
    if Path::new(k).is_file() {
        std::fs::read_to_string(k).with_context(|| format!("cannot read key file {k}"))
    } else if !k.contains('+') {
        // Every key has `+`-separated fields: this was meant as a file.
        bail!("{k}: no such file (and not a key: a key reads name+hash+base64)")
    } else {
        Ok(k.to_string())
    }
}

pub fn load_key(k: &str) -> Result<Verifier> {
    key_text(k)?
        .trim()
        .parse()
        .map_err(|e| anyhow!("--key is not a signed-note verifier key (name+hash+base64): {e}"))
}

pub fn run(cmd: LogCmd) -> Result<ExitCode> {
    match cmd {
        LogCmd::Verify {
            bundle,
            receipt,
            config,
            key,
            since,
            witnesses,
            min_witnesses,
        } => {
            let wkeys = load_cosigner_keys(&witnesses)?;
            if min_witnesses > wkeys.len() {
                bail!("--min-witnesses {min_witnesses} needs at least that many --witness keys");
            }
            let since_text = since
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                })
                .transpose()?;
            if let Some(dir) = bundle {
                let key = key.ok_or_else(|| anyhow!("--key is required to verify a bundle"))?;
                let v = load_key(&key)?;
                match secondkey_log::bundle::verify_bundle_entries(&dir, &v, since_text.as_deref())
                {
                    Ok(vb) => {
                        if let Err(code) = check_statements(&vb.entries, &mut std::io::stdout()) {
                            return Ok(code);
                        }
                        println!("ok: {}", crate::describe(&vb.report));
                        Ok(witness_report(&vb.checkpoint, &wkeys, min_witnesses))
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            } else if let Some(r) = receipt {
                let key = key.ok_or_else(|| anyhow!("--key is required to verify a receipt"))?;
                let v = load_key(&key)?;
                let text = std::fs::read_to_string(&r)
                    .with_context(|| format!("cannot read {}", r.display()))?;
                let receipt: secondkey_log::receipt::Receipt = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a receipt", r.display()))?;
                match receipt.verify(&v) {
                    Ok(entry) => {
                        println!(
                            "ok: entry {} ({}) is in the log of size {} signed by {}",
                            entry.index,
                            entry.event,
                            receipt.tree_size,
                            v.name()
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            } else if let Some(cfg) = config {
                let (dir, v, stored) = export_bundle_tmp(&cfg)?;
                let v = match key {
                    Some(k) => load_key(&k)?,
                    None => v,
                };
                // Without --since, the gateway's own last signed checkpoint is
                // the reference: entries changed after it was signed are caught.
                let since_text = since_text.or(stored);
                match secondkey_log::bundle::verify_bundle_entries(
                    dir.path(),
                    &v,
                    since_text.as_deref(),
                ) {
                    Ok(vb) => {
                        if let Err(code) = check_statements(&vb.entries, &mut std::io::stdout()) {
                            return Ok(code);
                        }
                        println!("ok: {}", crate::describe(&vb.report));
                        Ok(witness_report(&vb.checkpoint, &wkeys, min_witnesses))
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            } else {
                bail!("give --bundle DIR, --receipt FILE or --config FILE")
            }
        }
        LogCmd::Proof { index, remote } => {
            let c = remote.client()?;
            let v = c.get(&format!("/v1/log/proof/{index}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        LogCmd::Fetch {
            bundle,
            witnessed,
            remote,
        } => {
            let c = remote.client()?;
            let checkpoint = if witnessed {
                c.get_text("/v1/log/checkpoint?witnessed=true")?
            } else {
                c.get_text("/v1/log/checkpoint")?
            };
            fetch_bundle(&c, &checkpoint, &bundle)?;
            eprintln!(
                "fetched the log at its checkpoint into {}; verify it with `secondkey log verify --bundle {} --key <verifier key>`",
                bundle.display(),
                bundle.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        LogCmd::Checkpoint { url } => {
            let c = crate::client::Client::new(&url, None);
            print!("{}", c.get_text("/v1/log/checkpoint")?);
            Ok(ExitCode::SUCCESS)
        }
        LogCmd::Export {
            config,
            bundle,
            format,
            out,
            expand,
        } => {
            let cfg = secondkey_server::Config::load_offline(&config, &env_map())?;
            let store = open_read_only(&cfg)?;
            let size = store.log_size();
            let entries = store.entries(0, size)?;
            if let Some(dir) = bundle {
                let signer =
                    secondkey_server::keys::load_log_signer(&cfg.log_key_file, &cfg.log_origin)?;
                let note = store.with_tree(|t| {
                    secondkey_log::checkpoint::Checkpoint::new(
                        cfg.log_origin.clone(),
                        t.size(),
                        t.root(),
                    )
                    .sign(&signer)
                })??;
                let note = with_cosignatures(&store, note, !cfg.witnesses.is_empty());
                // Never sign over a rewritten history: the new checkpoint must
                // extend the gateway's last signed one.
                if let Some(stored) = store.last_checkpoint()? {
                    secondkey_log::bundle::verify_log(&note, &signer.verifier(), &entries, Some(&stored))
                        .map_err(|e| anyhow!("refusing to export: the stored log does not extend the gateway's last signed checkpoint: {e}"))?;
                }
                store.with_tree(|t| {
                    secondkey_log::bundle::export_bundle(&dir, &note, &entries, t)
                })??;
                store.close();
                eprintln!("wrote {size} entries to {}", dir.display());
                eprintln!(
                    "verify with: secondkey log verify --bundle {} --key '{}'",
                    dir.display(),
                    signer.verifier()
                );
                return Ok(ExitCode::SUCCESS);
            }
            store.close();
            let format = format.unwrap_or_else(|| "jsonl".into());
            // Checked before --out is created: a refused export leaves the
            // file it names as it was.
            if !matches!(format.as_str(), "jsonl" | "ocsf") {
                bail!("--format {format:?}: use jsonl or ocsf");
            }
            let (mut w, replace) = export_writer(out.as_deref())?;
            let mut shapes = secondkey_log::lean::Shapes::default();
            for (i, e) in entries.iter().enumerate() {
                let expanded = if expand {
                    expand_entry(&mut shapes, e).with_context(|| format!("--expand: entry {i}"))?
                } else {
                    None
                };
                let line = match (format.as_str(), expanded) {
                    ("jsonl", None) => secondkey_sinks::export::to_jsonl_line(i as u64, e),
                    ("jsonl", Some(v)) => serde_json::to_string(&v)?,
                    (_, expanded) => {
                        let v: serde_json::Value = match expanded {
                            Some(v) => v,
                            None => serde_json::from_slice(e)?,
                        };
                        serde_json::to_string(&secondkey_sinks::export::to_ocsf(i as u64, &v))?
                    }
                };
                writeln!(w, "{}", line.trim_end())?;
            }
            w.flush()?;
            drop(w);
            if let Some((tmp, target)) = replace {
                tmp.persist(&target)
                    .map_err(|e| e.error)
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks the lean statement entries of a verified log (each names a
/// statement shape recorded earlier in its session and rebuilds to its
/// digest); says how many on `ok`, or why not on standard error.
/// `log verify`, `evidence verify` and `report usage` all run it,
/// so a log passes one exactly when it passes the others. `report usage`
/// gives standard error as `ok`: its standard output is the report.
pub(crate) fn check_statements(
    entries: &[Vec<u8>],
    ok: &mut dyn Write,
) -> std::result::Result<(), ExitCode> {
    match secondkey_log::lean::check_statements(entries) {
        Ok(r) if r.lean > 0 || r.shapes > 0 => {
            let _ = writeln!(
                ok,
                "ok: {} lean statement entries rebuilt from {} statement shapes, each matching its action digest",
                r.lean, r.shapes
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("FAILED: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// An entry as `log export --expand` prints it: a lean statement entry as
/// the full entry it stands for, marked `expanded`; `None` for any other.
fn expand_entry(
    shapes: &mut secondkey_log::lean::Shapes,
    bytes: &[u8],
) -> Result<Option<serde_json::Value>> {
    if !bytes.windows(8).any(|w| w == b"\"shape\":") {
        return Ok(None);
    }
    let e = secondkey_log::entry::Entry::from_bytes(bytes)?;
    let Some(full) = shapes.feed(&e)? else {
        return Ok(None);
    };
    let mut v = serde_json::to_value(&e)?;
    v["expanded"] =
        serde_json::json!({"session": e.payload["session"], "shape": e.payload["shape"]});
    v["payload"] = full;
    Ok(Some(v))
}

/// An export written beside its `--out` file, and that file.
type Pending = (tempfile::NamedTempFile, PathBuf);

/// Where `log export` writes its lines, and what to rename when done.
/// Without `--out`, standard output. `--out FILE` (a regular file, or a
/// path not there yet) is written to a temporary file beside it, renamed
/// over it once the export is whole: an export that fails half-way (an
/// entry --expand cannot rebuild, a full disk) leaves FILE as it was. A
/// symbolic link keeps pointing where it did; anything that is not a
/// regular file (/dev/stdout, a pipe) is written to directly.
fn export_writer(out: Option<&Path>) -> Result<(Box<dyn Write>, Option<Pending>)> {
    let Some(p) = out else {
        return Ok((Box::new(std::io::stdout().lock()), None));
    };
    let target = match std::fs::metadata(p) {
        Ok(m) if !m.is_file() => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            return Ok((Box::new(std::io::BufWriter::new(f)), None));
        }
        Ok(_) => {
            std::fs::canonicalize(p).with_context(|| format!("cannot write {}", p.display()))?
        }
        Err(_) => p.to_path_buf(),
    };
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".secondkey-export")
        // As File::create would: 0666 less the umask.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create {}", p.display()))?;
    let file = tmp.as_file().try_clone()?;
    Ok((Box::new(std::io::BufWriter::new(file)), Some((tmp, target))))
}

/// Opens the store of `cfg` to read it (export, verify, reports): an
/// unreachable PostgreSQL store is said to be that, without the words of
/// a refused decision, since these commands decide nothing.
fn open_read_only(cfg: &secondkey_server::Config) -> Result<secondkey_store::Store> {
    secondkey_store::Store::open(cfg.store_options().read_only()).map_err(|e| match e {
        secondkey_store::StoreError::PgDown(why) => anyhow!(
            "opening {}: cannot reach PostgreSQL ({why}); nothing was read",
            cfg.store_place()
        ),
        e => anyhow::Error::new(e).context(format!("opening {}", cfg.store_place())),
    })
}

/// Exports the live log to a temporary bundle (for `verify --config`).
fn export_bundle_tmp(config: &Path) -> Result<(tempfile::TempDir, Verifier, Option<String>)> {
    let cfg = secondkey_server::Config::load_offline(config, &env_map())?;
    let store = open_read_only(&cfg)?;
    let signer = secondkey_server::keys::load_log_signer(&cfg.log_key_file, &cfg.log_origin)?;
    let entries = store.entries(0, store.log_size())?;
    let dir = tempfile::tempdir()?;
    let note = store.with_tree(|t| {
        secondkey_log::checkpoint::Checkpoint::new(cfg.log_origin.clone(), t.size(), t.root())
            .sign(&signer)
    })??;
    store.with_tree(|t| secondkey_log::bundle::export_bundle(dir.path(), &note, &entries, t))??;
    let stored = store.last_checkpoint()?;
    store.close();
    Ok((dir, signer.verifier(), stored))
}

/// Downloads the checkpoint's tiles and entry bundles into `dir`, the way
/// any tlog-tiles client would; the checkpoint file is written last, so a
/// half-finished download never looks complete. A download that fails
/// removes what it made (files and directories that were not there
/// before), so a refused fetch leaves nothing behind.
pub fn fetch_bundle(c: &crate::client::Client, checkpoint: &str, dir: &Path) -> Result<()> {
    let cp = secondkey_log::checkpoint::Checkpoint::parse_note_unverified(checkpoint)
        .map_err(|e| anyhow!("the gateway's checkpoint is malformed: {e}"))?;
    let mut made = Made::default();
    let fetched = (|| -> Result<()> {
        made.dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let refs = secondkey_log::tiles::tiles_for_size(cp.size)
            .into_iter()
            .chain(secondkey_log::tiles::bundles_for_size(cp.size));
        for t in refs {
            let path = t.path();
            let rest = path.strip_prefix("tile/").unwrap_or(&path);
            let bytes = c.get_bytes(&format!("/v1/log/tile/{rest}"))?;
            let out = dir.join(&path);
            if let Some(parent) = out.parent() {
                made.dir_all(parent)?;
            }
            made.file(&out, &bytes)?;
        }
        made.file(&dir.join("checkpoint"), checkpoint.as_bytes())?;
        Ok(())
    })();
    if fetched.is_err() {
        made.undo();
    }
    fetched
}

/// What a fetch created, to take it back when the fetch fails.
#[derive(Default)]
struct Made {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Made {
    /// `create_dir_all`, remembering each directory that was not there.
    fn dir_all(&mut self, dir: &Path) -> std::io::Result<()> {
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir)?;
        self.dirs.extend(missing.into_iter().rev());
        Ok(())
    }

    /// Writes a file, remembering it if it was not there.
    fn file(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let new = !path.exists();
        std::fs::write(path, bytes)?;
        if new {
            self.files.push(path.to_path_buf());
        }
        Ok(())
    }

    /// Removes the files, then the directories, newest first.
    fn undo(self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Cosigner keys from `--witness` values (a key, or a file holding one).
pub fn load_cosigner_keys(list: &[String]) -> Result<Vec<secondkey_log::witness::CosignerKey>> {
    list.iter()
        .map(|k| {
            key_text(k)?
                .trim()
                .parse()
                .map_err(|e| anyhow!("--witness {k:?} is not a witness's cosigner key: {e}"))
        })
        .collect()
}

/// Says which witnesses cosigned `note` (or that only the operator signed
/// it), and fails when fewer than `min` did.
pub fn witness_report(
    note: &str,
    keys: &[secondkey_log::witness::CosignerKey],
    min: usize,
) -> ExitCode {
    let by = secondkey_log::witness::cosigned_by(note, keys);
    let others = note
        .rsplit_once("\n\n")
        .map(|(_, s)| s.lines().count().saturating_sub(1))
        .unwrap_or(0);
    if by.is_empty() {
        if keys.is_empty() && others > 0 {
            println!("the checkpoint carries {others} other signature line(s); pass --witness KEY to check them");
        } else {
            println!(
                "the checkpoint is signed only by the operator: no witness cosignature{}",
                if keys.is_empty() {
                    ""
                } else {
                    " from the given --witness keys"
                }
            );
        }
    }
    for (k, ts) in &by {
        println!(
            "cosigned by witness {} at {}",
            k.name(),
            secondkey_audit::time::rfc3339(*ts as i64 * 1000)
        );
    }
    if by.len() < min {
        eprintln!(
            "FAILED: {} of the required {min} witnesses cosigned this checkpoint",
            by.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `note` with the cosignatures the gateway collected for exactly this
/// checkpoint, if any (the operator's signature is deterministic, so the
/// gateway's note for this size is byte for byte this one).
pub fn with_cosignatures(store: &secondkey_store::Store, note: String, witnesses: bool) -> String {
    let stored = store
        .get_record(secondkey_server::witness::WITNESSED_NS, "latest")
        .ok()
        .flatten();
    match stored {
        Some(w) if w.starts_with(&note) => w,
        _ => {
            if witnesses {
                eprintln!("note: no witness has cosigned this exact checkpoint yet; it is signed only by the operator (stop the gateway, or wait a second for the witnesses, then export again)");
            }
            note
        }
    }
}

/// The live log read from the data directory, as `log export` sees it.
pub struct Snapshot {
    pub entries: Vec<Vec<u8>>,
    /// The signed checkpoint over all of them, with cosignatures when the
    /// witnesses cosigned it.
    pub note: String,
    pub verifier: Verifier,
    pub tree: secondkey_log::merkle::Tree,
}

/// Reads the data directory of `config` read-only; refuses a log that does
/// not extend the gateway's last signed checkpoint.
pub fn snapshot(config: &Path) -> Result<Snapshot> {
    let cfg = secondkey_server::Config::load_offline(config, &env_map())?;
    let store = open_read_only(&cfg)?;
    let signer = secondkey_server::keys::load_log_signer(&cfg.log_key_file, &cfg.log_origin)?;
    let entries = store.entries(0, store.log_size())?;
    let (note, tree) = store.with_tree(|t| {
        secondkey_log::checkpoint::Checkpoint::new(cfg.log_origin.clone(), t.size(), t.root())
            .sign(&signer)
            .map(|n| (n, t.clone()))
    })??;
    if let Some(stored) = store.last_checkpoint()? {
        secondkey_log::bundle::verify_log(&note, &signer.verifier(), &entries, Some(&stored))
            .map_err(|e| anyhow!("refusing to read: the stored log does not extend the gateway's last signed checkpoint: {e}"))?;
    }
    let note = with_cosignatures(&store, note, !cfg.witnesses.is_empty());
    store.close();
    Ok(Snapshot {
        entries,
        note,
        verifier: signer.verifier(),
        tree,
    })
}
