//! What an auditor and a data owner run: `report usage`, `evidence` (and
//! `evidence verify`), `witness keygen|serve`. Each reads the log itself —
//! the gateway's data directory (`--config`, read-only, like `log
//! export`) or a verified bundle (`--bundle` with `--key`) — never the REST
//! API, so a report holds exactly what the signed log holds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use secondkey_audit::evidence::{self, Framework, Inputs};
use secondkey_audit::graph::Filter;
use secondkey_audit::history::Tracker;
use secondkey_audit::time::Period;

use crate::logcmd::{check_statements, load_cosigner_keys, snapshot, witness_report};

/// Where the log comes from.
#[derive(Args, Clone)]
pub struct Source {
    /// The gateway's config: read its data directory (read-only; lean
    /// statement entries checked, as `log verify --config` does).
    #[arg(long, env = "SECONDKEY_CONFIG", conflicts_with = "bundle")]
    config: Option<PathBuf>,
    /// Or a bundle written by `secondkey log export --bundle` / `log fetch`
    /// (verified first, lean statement entries included, as `log verify
    /// --bundle` does; needs --key).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The log's verifier key (or a file holding it), for --bundle.
    #[arg(long)]
    key: Option<String>,
}

impl Source {
    /// Every entry of the log, held to the statement check of `log verify`
    /// (its count goes to standard error: standard output is the report);
    /// a bundle's are verified against `--key` first. `Ok(Err(code))` when
    /// that check fails, after saying why.
    fn entries(&self) -> Result<std::result::Result<Vec<Vec<u8>>, ExitCode>> {
        let entries = match (&self.config, &self.bundle) {
            (_, Some(dir)) => {
                let key = self
                    .key
                    .as_deref()
                    .ok_or_else(|| anyhow!("--key is required with --bundle"))?;
                let v = crate::logcmd::load_key(key)?;
                secondkey_log::bundle::verify_bundle_entries(dir, &v, None)
                    .map_err(|e| anyhow!("the bundle does not verify: {e}"))?
                    .entries
            }
            (Some(cfg), None) => snapshot(cfg)?.entries,
            (None, None) => bail!(
                "give --config FILE (the gateway's data directory) or --bundle DIR --key VKEY"
            ),
        };
        Ok(check_statements(&entries, &mut std::io::stderr()).map(|()| entries))
    }
}

#[derive(Subcommand)]
pub enum ReportCmd {
    /// Per agent, model and on-behalf-of user: which datasets it read,
    /// wrote and exported in the period, how much, how often a human had to
    /// approve, and who did.
    #[command(
        after_help = "Examples:\n  secondkey report usage --config secondkey.toml --from 2026-11-01 --to 2026-12-01\n  secondkey report usage --bundle ./audit --key log.vkey --from 2026-11-01 --to 2026-12-01 --agent agent:report-bot --format csv > usage.csv"
    )]
    Usage {
        #[command(flatten)]
        source: Source,
        /// Start (inclusive): 2026-12-01 or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// End (exclusive).
        #[arg(long)]
        to: String,
        /// Only these principals (repeatable): principal ids such as
        /// agent:report-bot.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Only this dataset URI, or URIs starting with it.
        #[arg(long)]
        dataset: Option<String>,
        /// Only this environment.
        #[arg(long)]
        environment: Option<String>,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

pub fn report(cmd: ReportCmd) -> Result<ExitCode> {
    let ReportCmd::Usage {
        source,
        from,
        to,
        agents,
        dataset,
        environment,
        format,
    } = cmd;
    if !matches!(format.as_str(), "table" | "csv" | "json") {
        bail!("--format {format:?}: use table, csv or json");
    }
    // Principal ids as everywhere: `kind:name`, letters folded to lower case.
    let agents = agents
        .iter()
        .map(|a| {
            secondkey_core::principal::PrincipalId::parse(a)
                .map(|id| id.to_string())
                .map_err(|e| anyhow::anyhow!("--agent {a:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let period = Period::parse(&from, &to)?;
    let entries = match source.entries()? {
        Ok(entries) => entries,
        Err(code) => return Ok(code),
    };
    let mut t = Tracker::new();
    t.feed_bytes(entries)?;
    let filter = Filter {
        period,
        agent: None,
        dataset,
        environment,
        visible: (!agents.is_empty()).then(|| agents.into_iter().collect()),
    };
    let rows = secondkey_audit::usage::report(t.records(), &filter);
    match format.as_str() {
        "csv" => print!("{}", secondkey_audit::usage::to_csv(&rows)),
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        _ => print!("{}", secondkey_audit::usage::to_table(&rows)),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    verify: Option<EvidenceSub>,
    /// The gateway's config: the log is read from its data directory.
    #[arg(long, env = "SECONDKEY_CONFIG")]
    config: Option<PathBuf>,
    /// Start of the period (inclusive): 2026-10-01 or an RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    /// End of the period (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// soc2 or fedramp-moderate.
    #[arg(long)]
    framework: Option<String>,
    /// The directory to write the pack to (must not exist, or be empty).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the PDF (report.html is the authoritative copy either way).
    #[arg(long)]
    no_pdf: bool,
    /// Chromium (or Chrome) to print the PDF with; default: chromium,
    /// chromium-browser or google-chrome on PATH.
    #[arg(long, env = "SECONDKEY_CHROMIUM")]
    chromium: Option<PathBuf>,
}

#[derive(Subcommand)]
enum EvidenceSub {
    /// Verify a pack: the manifest's format and maker, its key against
    /// --key, the bundle against that key (and witnesses), its lean
    /// statement entries as `log verify` checks them, then every figure
    /// recomputed from it and compared with the pack's figures and report,
    /// and the manifest's digests with the pack's files and checkpoint.
    #[command(
        after_help = "Example:\n  secondkey evidence verify ./evidence-q4 --key log.vkey --witness w1.vkey --min-witnesses 1\n\nExit status: 0 the report is exactly what the log proves for the whole period;\n3 it is, but the log ends before the period's end and no given witness cosigned it at or after that end;\nany other status: it failed, and says why."
    )]
    Verify {
        /// The pack's directory, as `secondkey evidence --out` wrote it.
        dir: PathBuf,
        /// The log's verifier key, or a file holding it (required): get it
        /// from the operator out of band, never from the pack, which could
        /// hold a log signed with any key.
        #[arg(long)]
        key: Option<String>,
        /// Witness cosigner keys (repeatable).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Fail unless at least N distinct witnesses among them cosigned
        /// the bundle's checkpoint at or after the period's end.
        #[arg(long, default_value_t = 0)]
        min_witnesses: usize,
    },
}

const MANIFEST: &str = "manifest.json";
const FIGURES: &str = "figures.json";
const REPORT: &str = "report.html";
const PDF: &str = "report.pdf";
const CHECKPOINT: &str = "bundle/checkpoint";

fn find_chromium(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(n))
                    .find(|p| p.is_file())
            })
        })
}

/// Prints `html` to `pdf` with headless Chromium (no network: the report
/// is one self-contained file).
fn print_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<()> {
    let profile = tempfile::tempdir()?;
    let url = format!("file://{}", html.canonicalize()?.display());
    let mut child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", chromium.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        if let Some(st) = child.try_wait()? {
            if st.success() && pdf.is_file() {
                return Ok(());
            }
            bail!(
                "{} exited with {st} without writing the PDF",
                chromium.display()
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish the PDF within 90 s", chromium.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    std::fs::write(dir.join(name), data)
        .with_context(|| format!("cannot write {}", dir.join(name).display()))
}

pub fn evidence(a: EvidenceArgs) -> Result<ExitCode> {
    if let Some(EvidenceSub::Verify {
        dir,
        key,
        witnesses,
        min_witnesses,
    }) = a.verify
    {
        return verify(&dir, key, &witnesses, min_witnesses);
    }
    let need =
        |v: Option<String>, k: &str| v.ok_or_else(|| anyhow!("--{k} is required (see --help)"));
    let framework = Framework::parse(&need(a.framework, "framework")?)?;
    let period = Period::parse(&need(a.from, "from")?, &need(a.to, "to")?)?;
    let out = a.out.ok_or_else(|| anyhow!("--out DIR is required"))?;
    let config = a.config.ok_or_else(|| {
        anyhow!("--config FILE is required: the pack is made from the gateway's data directory")
    })?;
    let not_empty = out.exists()
        && std::fs::read_dir(&out)
            .with_context(|| format!("cannot read --out {}", out.display()))?
            .next()
            .is_some();
    if not_empty {
        bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| {
        format!(
            "cannot create --out {}; choose a directory you can write",
            out.display()
        )
    })?;
    let snap = snapshot(&config)?;
    let bundle = out.join("bundle");
    secondkey_log::bundle::export_bundle(&bundle, &snap.note, &snap.entries, &snap.tree)?;
    let vkey = snap.verifier.to_string();
    // The pack is made from what an auditor will read: the bundle, verified.
    let vb = secondkey_log::bundle::verify_bundle_entries(&bundle, &snap.verifier, None)
        .map_err(|e| anyhow!("the exported bundle does not verify: {e}"))?;
    // The pack is still made (the report lists such entries as
    // `statement_unresolved` exceptions), but it cannot pass verification.
    if let Err(e) = secondkey_log::lean::check_statements(&vb.entries) {
        eprintln!("warning: the log fails the statement check, so `evidence verify` will fail this pack: {e}");
    }
    let f = evidence::figures(
        &vb.entries,
        &Inputs {
            framework,
            period,
            checkpoint: &vb.checkpoint,
            verifier_key: &vkey,
        },
    )?;
    let figures = evidence::to_json(&f);
    let html = evidence::render_html(&f);
    write(&out, FIGURES, figures.as_bytes())?;
    write(&out, REPORT, html.as_bytes())?;
    let mut pdf_sha = None;
    if !a.no_pdf {
        match find_chromium(a.chromium) {
            Some(c) => {
                print_pdf(&c, &out.join(REPORT), &out.join(PDF))?;
                pdf_sha = Some(evidence::sha256_hex(&std::fs::read(out.join(PDF))?));
            }
            None => eprintln!("warning: no Chromium found (give --chromium PATH or install chromium); the PDF was skipped, report.html is complete"),
        }
    }
    let manifest = serde_json::json!({
        "format": evidence::FORMAT,
        "framework": framework.as_str(),
        "from": f.from,
        "to": f.to,
        "verifier_key": vkey,
        "made_with": evidence::made_with(),
        "sha256": {
            FIGURES: evidence::sha256_hex(figures.as_bytes()),
            REPORT: evidence::sha256_hex(html.as_bytes()),
            PDF: pdf_sha,
            CHECKPOINT: evidence::sha256_hex(vb.checkpoint.as_bytes()),
        }
    });
    write(
        &out,
        MANIFEST,
        format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes(),
    )?;
    let verify_txt = format!(
        "This pack was made from the log of {origin} at size {size}.\n\
         Get the log's verifier key from the operator, out of band, and save it as log.vkey:\n\
         not from this pack, which could hold a log signed with any key. Then, in this directory:\n\n  \
         secondkey log verify --bundle bundle --key log.vkey\n  secondkey evidence verify . --key log.vkey\n\n\
         Add --witness <cosigner key, from that witness> (repeatable) and --min-witnesses N to require\n\
         that N of those witnesses cosigned the log at or after the period's end.\n\
         evidence verify exits 0 when the report is exactly what the log proves for the whole period,\n\
         3 when it is but the log ends before the period's end and no given witness cosigned it at or\n\
         after that end, and any other status when it fails.\n\
         report.pdf is a print of report.html (made with headless Chromium) and is not verified:\n\
         it cannot be made again byte for byte; report.html is the verified copy.\n",
        origin = f.log.origin,
        size = f.log.size,
    );
    write(&out, "VERIFY.txt", verify_txt.as_bytes())?;
    if let Some(t) = &f.log.last_entry_at {
        if f.log.ends_before_period_end {
            eprintln!("note: the log ends at {t}, before the period's end: the report says it is incomplete");
        }
    }
    eprintln!(
        "wrote the {} evidence pack for {} to {} ({} privileged actions, {} exceptions) to {}",
        framework.as_str(),
        f.from,
        f.to,
        f.privileged.len(),
        f.exceptions.len(),
        out.display()
    );
    println!(
        "verify with: secondkey evidence verify {} --key '{vkey}'",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, key: Option<String>, witnesses: &[String], min: usize) -> Result<ExitCode> {
    let key = key.ok_or_else(|| {
        anyhow!("--key is required: the log's verifier key (or a file holding it), as the operator gave it to you out of band. The key named inside the pack proves nothing: a forged log signed with a fresh key verifies under its own key")
    })?;
    let fail = |m: String| -> Result<ExitCode> {
        eprintln!("FAILED: {m}");
        Ok(ExitCode::FAILURE)
    };
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let manifest: serde_json::Value = serde_json::from_slice(&read(MANIFEST)?)
        .with_context(|| format!("{MANIFEST} is not JSON"))?;
    // A format this release does not know is refused before any field of
    // it is read as this format's.
    let made_with = match evidence::check_manifest(&manifest) {
        Ok(m) => m,
        Err(e) => return fail(e.to_string()),
    };
    let s = |k: &str| -> Result<String> {
        manifest[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{MANIFEST} has no {k}"))
    };
    let framework = Framework::parse(&s("framework")?)?;
    let period = Period::parse(&s("from")?, &s("to")?)?;
    let v = crate::logcmd::load_key(&key)?;
    let wkeys = load_cosigner_keys(witnesses)?;
    if min > wkeys.len() {
        bail!("--min-witnesses {min} needs at least that many --witness keys");
    }
    // The manifest's key is a record of the log the pack was made from,
    // never a trust anchor: it must be the auditor's key, or the pack is
    // evidence of some other log (or its manifest was edited).
    let named = s("verifier_key")?;
    match named.trim().parse::<secondkey_log::note::Verifier>() {
        Ok(n) if n == v => {}
        Ok(n) => {
            return fail(format!(
                "{MANIFEST} says the pack was made from the log of key {n}, but --key is {v}: it is not evidence of the log you hold the key for (or its manifest was edited); ask the operator which log it was made from"
            ))
        }
        Err(e) => {
            return fail(format!(
                "{MANIFEST}'s verifier_key {named:?} is not a signed-note verifier key ({e}): the manifest was edited"
            ))
        }
    }
    let vb = match secondkey_log::bundle::verify_bundle_entries(&dir.join("bundle"), &v, None) {
        Ok(vb) => vb,
        Err(e) => return fail(format!("the log bundle does not verify: {e}")),
    };
    println!("ok: {}", crate::describe(&vb.report));
    // Every lean statement entry must rebuild from a shape its session
    // logged, exactly as `log verify --bundle` requires.
    if let Err(code) = check_statements(&vb.entries, &mut std::io::stdout()) {
        return Ok(code);
    }
    // Cosignatures say "as of this time, this was the largest tree the
    // witness saw" (C2SP tlog-cosignature v1): one dated at or after the
    // period's end shows the log held nothing more of the period.
    let _ = witness_report(&vb.checkpoint, &wkeys, 0);
    let after_end: Vec<(String, u64)> = secondkey_log::witness::cosigned_by(&vb.checkpoint, &wkeys)
        .into_iter()
        .filter(|(_, ts)| i64::try_from(*ts).is_ok_and(|t| t.saturating_mul(1000) >= period.to))
        .map(|(k, ts)| (k.name().to_string(), ts))
        .collect();
    if after_end.len() < min {
        return fail(format!(
            "{} of the required {min} witnesses cosigned this checkpoint at or after the period's end ({}); an earlier cosignature does not show that the log held every entry of the period",
            after_end.len(),
            secondkey_audit::time::rfc3339(period.to)
        ));
    }
    let f = evidence::figures(
        &vb.entries,
        &Inputs {
            framework,
            period,
            checkpoint: &vb.checkpoint,
            verifier_key: &v.to_string(),
        },
    )?;
    let found: serde_json::Value = match serde_json::from_slice(&read(FIGURES)?) {
        Ok(v) => v,
        Err(e) => return fail(format!("{FIGURES} is not JSON: {e}")),
    };
    let diffs = evidence::diff(&f, &found);
    if !diffs.is_empty() {
        return fail(format!(
            "{FIGURES} does not match the figures recomputed from the log ({} difference(s), recomputed → in the pack):\n  {}",
            diffs.len(),
            diffs.join("\n  ")
        ));
    }
    let html = read(REPORT)?;
    let expected = evidence::render_html(&f);
    if html != expected.as_bytes() {
        let text = String::from_utf8_lossy(&html);
        let at = text
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(text.len().min(expected.len()));
        let from = at.saturating_sub(60);
        return fail(format!(
            "{REPORT} is not what the log's figures render to: it was edited (first difference at byte {at}: …{}…)",
            text.get(from..(at + 60).min(text.len())).unwrap_or("")
        ));
    }
    // The manifest must describe this pack: the checkpoint it names is the
    // one the figures were recomputed from, byte for byte.
    let digests = &manifest["sha256"];
    for (name, bytes) in [
        (FIGURES, read(FIGURES)?),
        (REPORT, html),
        (CHECKPOINT, vb.checkpoint.clone().into_bytes()),
    ] {
        let found = evidence::sha256_hex(&bytes);
        match digests[name].as_str() {
            Some(d) if d == found => {}
            Some(d) => {
                return fail(format!(
                    "{MANIFEST} lists another SHA-256 for {name} ({d}) than the pack holds ({found}): the manifest or the file was changed after the pack was made"
                ))
            }
            None => {
                return fail(format!(
                    "{MANIFEST} lists no SHA-256 for {name}: the manifest was edited"
                ))
            }
        }
    }
    // The PDF cannot be printed again byte for byte, and only the unsigned
    // manifest names it: it is checked for consistency, never verified.
    match (digests[PDF].as_str(), dir.join(PDF).exists()) {
        (None, true) => {
            return fail(format!(
                "{PDF} is in the pack but {MANIFEST} lists no PDF: it was not made with this pack"
            ))
        }
        (Some(_), false) => {
            return fail(format!("{MANIFEST} lists {PDF} but the pack has none"))
        }
        (Some(d), true) if d != evidence::sha256_hex(&read(PDF)?) => {
            return fail(format!(
                "{PDF} is not the file the pack was made with (its SHA-256 differs from {MANIFEST})"
            ))
        }
        (Some(_), true) => println!(
            "note: {PDF} is NOT verified: it is a print of {REPORT} that cannot be made again byte for byte, and only the unsigned {MANIFEST} names its digest; {REPORT} is the verified copy"
        ),
        (None, false) => println!("(the pack has no PDF)"),
    }
    println!(
        "ok: every figure of the {} report for {} to {} was recomputed from the log and matches; {REPORT} is exactly their rendering ({} privileged actions, {} exceptions, {} policy versions)",
        framework.as_str(),
        f.from,
        f.to,
        f.privileged.len(),
        f.exceptions.len(),
        f.policies.len()
    );
    println!(
        "ok: {MANIFEST} (pack format {}, made with {made_with}) lists exactly the pack's {FIGURES}, {REPORT} and {CHECKPOINT}",
        evidence::FORMAT
    );
    if f.log.ends_before_period_end {
        let ends = f
            .log
            .last_entry_at
            .as_deref()
            .unwrap_or("its start (it is empty)");
        if let Some((name, ts)) = after_end.first() {
            println!(
                "ok: the log ends at {ends}, before the period's end, but witness {name} cosigned it at {}: as that witness saw the log then, it held nothing more, so no entry of the period is missing",
                secondkey_audit::time::rfc3339((*ts as i64).saturating_mul(1000))
            );
        } else {
            eprintln!(
                "INCOMPLETE: the log ends at {ends}, before the period's end ({}): the report is exactly what the log proves up to then, and says so, but nothing shows that no entry followed before the period's end (a witness cosignature dated at or after it would: --witness KEY)",
                f.to
            );
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Create a witness key (mode 0600) and print its cosigner verifier key.
    #[command(
        after_help = "Example:\n  secondkey witness keygen --name witness.example/w1 --out w1.key > w1.vkey"
    )]
    Keygen {
        /// The witness's name (a schema-less URL is conventional).
        #[arg(long)]
        name: String,
        /// Where to write the secret key: a new file in an existing directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a C2SP tlog witness: cosigns checkpoints of the given logs that
    /// extend the last one it cosigned, refuses forks.
    #[command(
        after_help = "Example:\n  secondkey witness serve --key w1.key --state ./w1-state --listen 127.0.0.1:7380 \\\n      --log \"$(cat log.vkey)\"\n\nThe state directory is the witness's memory: keep it. A witness that lost it must get a new key."
    )]
    Serve {
        /// The witness's secret key (from `witness keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where the latest cosigned checkpoint of each log is kept.
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7380")]
        listen: String,
        /// A log to witness: its verifier key, or ORIGIN=KEY (repeatable).
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
    },
}

pub fn witness(cmd: WitnessCmd) -> Result<ExitCode> {
    match cmd {
        WitnessCmd::Keygen { name, out } => {
            let c = secondkey_log::witness::Cosigner::generate(&name)
                .map_err(|e| anyhow!("cannot create a key named {name:?}: {e}"))?;
            crate::key_dir_exists(&out)?;
            secondkey_server::keys::write_secret_file(&out, &format!("{}\n", c.to_string()))
                .map_err(|e| anyhow!("{e} (it must not exist already)"))?;
            eprintln!(
                "wrote the witness's secret key to {} (mode 0600)",
                out.display()
            );
            println!("{}", c.verifier());
            Ok(ExitCode::SUCCESS)
        }
        WitnessCmd::Serve {
            key,
            state,
            listen,
            logs,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let cosigner: secondkey_log::witness::Cosigner = text
                .trim()
                .parse()
                .map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let mut map =
                std::collections::BTreeMap::<String, Vec<secondkey_log::note::Verifier>>::new();
            for l in logs {
                let (origin, k) = match l.split_once('=') {
                    Some((o, k)) if !o.contains('+') => (Some(o.to_string()), k.to_string()),
                    _ => (None, l.clone()),
                };
                let v = crate::logcmd::load_key(&k)?;
                let origin = origin.unwrap_or_else(|| v.name().to_string());
                map.entry(origin).or_default().push(v);
            }
            let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
                anyhow!("--listen {listen:?} is not an address like 127.0.0.1:7380")
            })?;
            let svc = secondkey_server::witness::WitnessService::open(
                secondkey_log::witness::Witness {
                    cosigner,
                    logs: map,
                },
                &state,
            )?;
            crate::runtime()?.block_on(secondkey_server::witness::serve(addr, svc))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
