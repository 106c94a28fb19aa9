//! `secondkey`: one binary for the gateway, its operators, reviewers and
//! auditors. Thin: every verb calls a library crate or the REST API.

mod auditcmd;
mod client;
mod demo;
mod exec;
mod logcmd;
mod mcpcmd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use client::Client;

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// were 13 % of the gateway's CPU, and with mimalloc an allow costs ~15 %
/// less CPU (bench/README.md §3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "secondkey",
    version,
    about = "Action-level approvals for AI agents and pipelines.",
    long_about = "secondkey intercepts the privileged actions of agents and pipelines, decides each one from \
Cedar policy, holds the risky ones for human review, and proves every step in a signed, \
tamper-evident log.\n\nStart here:  secondkey demo --auto-approve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    #[command(after_help = "Example:\n  secondkey serve --config secondkey.toml")]
    Serve {
        /// The TOML config file (SECONDKEY_* environment variables override it).
        #[arg(long, env = "SECONDKEY_CONFIG")]
        config: PathBuf,
    },
    /// A guided first run: a gateway with sample policies and a scripted agent.
    #[command(
        after_help = "Examples:\n  secondkey demo                  # you approve as two reviewers in another terminal\n  secondkey demo --auto-approve   # no interaction"
    )]
    Demo(demo::DemoArgs),
    /// Validate, test and explain Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// List, inspect and decide requests on a running gateway.
    #[command(subcommand)]
    Request(RequestCmd),
    /// Submit actions to a running gateway.
    #[command(subcommand)]
    Action(ActionCmd),
    /// Verify, prove and export the audit log.
    #[command(subcommand)]
    Log(logcmd::LogCmd),
    /// Create signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// End every web session of one person at once, on a running gateway.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// The gateway's store: schema migrations.
    #[command(subcommand)]
    Store(StoreCmd),
    /// The PostgreSQL gateway's helpers.
    #[command(subcommand)]
    Pg(PgCmd),
    /// Put secondkey in front of MCP servers; manage pinned tool definitions.
    #[command(subcommand)]
    Mcp(mcpcmd::McpCmd),
    /// Reports from the log: data usage per agent, model and user.
    #[command(subcommand)]
    Report(auditcmd::ReportCmd),
    /// Write a compliance evidence pack (SOC 2, FedRAMP Moderate) for a
    /// period, or verify one (`evidence verify DIR`).
    #[command(
        after_help = "Examples:\n  secondkey evidence --config secondkey.toml --from 2026-10-01 --to 2027-01-01 --framework soc2 --out ./evidence-q4\n  secondkey evidence verify ./evidence-q4 --key \"$(cat log.vkey)\""
    )]
    Evidence(auditcmd::EvidenceArgs),
    /// Run a C2SP transparency-log witness, or make its key.
    #[command(subcommand)]
    Witness(auditcmd::WitnessCmd),
    /// Run a pipeline step only once the gateway allows it (or a human
    /// approves it): exactly the approved argv, once; its exit code,
    /// duration and output digests are recorded.
    #[command(after_help = exec::HELP)]
    Exec(exec::ExecArgs),
    /// Replay and list recorded SSH sessions (asciicast v2).
    #[command(subcommand)]
    Recording(RecordingCmd),
}

#[derive(Subcommand)]
enum RecordingCmd {
    /// Replay a recorded SSH session in this terminal.
    #[command(
        after_help = "Example:\n  secondkey recording play act_0193a1b2c3 --config secondkey.toml --speed 2"
    )]
    Play {
        /// The recording's id: the execution id of the session (in the log's
        /// `action.result` entry, `summary.recording.id`).
        id: String,
        /// The gateway's config (to find the recordings directory).
        #[arg(long, env = "SECONDKEY_CONFIG", required_unless_present = "dir")]
        config: Option<PathBuf>,
        /// The recordings directory itself, instead of --config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// The longest pause between two outputs, in seconds.
        #[arg(long, default_value_t = 2.0)]
        max_pause: f64,
    },
    /// List the kept recordings: id, size, SHA-256.
    #[command(
        after_help = "Example:\n  secondkey recording list --config secondkey.toml",
        group(clap::ArgGroup::new("source").required(true).args(["config", "dir"]))
    )]
    List {
        /// The gateway's config: its recordings directory
        /// ([ssh_gateway] recordings_dir, default <data_dir>/recordings).
        /// Give this or --dir.
        #[arg(long, env = "SECONDKEY_CONFIG")]
        config: Option<PathBuf>,
        /// The recordings directory itself (a copy, say). Give this or
        /// --config.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PgCmd {
    /// Print the SCRAM-SHA-256 verifier of a principal's token, for
    /// `[postgres.scram]` (clients then log in with the token as password).
    #[command(
        after_help = "Example:\n  REPORT_BOT_TOKEN=… secondkey pg verifier --token-env REPORT_BOT_TOKEN\n\nThe verifier cannot be used to log in; only the token can."
    )]
    Verifier {
        /// The environment variable holding the token (default: read one line from stdin).
        #[arg(long)]
        token_env: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Check every policy in DIR: syntax, schema, and the annotations
    /// secondkey reads (names, placement, values); errors name file and line.
    /// With --config, also the @review groups and quorums against the
    /// configured principals and identity provider, and the configured
    /// custom annotations.
    #[command(
        after_help = "Example:\n  secondkey policy validate ./policies --config secondkey.toml"
    )]
    Validate {
        /// The policy directory (its *.cedar files).
        dir: PathBuf,
        /// The gateway's configuration file: check groups, quorums and
        /// `[policy] annotations` as the gateway will.
        #[arg(long, env = "SECONDKEY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the table-driven cases in DIR/*.tests.toml.
    #[command(after_help = "Example:\n  secondkey policy test ./policies")]
    Test {
        /// The policy directory (its *.cedar and *.tests.toml files).
        dir: PathBuf,
    },
    /// Show which policies decide an action and why.
    #[command(
        after_help = "Example:\n  secondkey policy explain ./policies --principal agent:report-bot --owner user:alice \\\n      --group agents --action export.json --fact environment=prod"
    )]
    Explain {
        /// The policy directory (its *.cedar files).
        dir: PathBuf,
        /// The principal, e.g. agent:report-bot.
        #[arg(long)]
        principal: String,
        /// The principal's groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The agent's owner, e.g. user:alice.
        #[arg(long)]
        owner: Option<String>,
        /// The action as a JSON file ('-' for stdin).
        #[arg(long)]
        action: PathBuf,
        /// A gateway-derived fact, KEY=VALUE (repeatable).
        #[arg(long = "fact")]
        facts: Vec<String>,
    },
}

#[derive(Args, Clone)]
pub struct Remote {
    /// The gateway's base URL.
    #[arg(long, env = "SECONDKEY_URL", default_value = "http://127.0.0.1:8750")]
    url: String,
    /// Your bearer token.
    #[arg(long, env = "SECONDKEY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    pub fn client(&self) -> Result<Client> {
        let token = self
            .token
            .clone()
            .ok_or_else(|| anyhow!("no token: pass --token or set SECONDKEY_TOKEN"))?;
        client::check_transport(&self.url)?;
        Ok(Client::new(&self.url, Some(token)))
    }
}

#[derive(Subcommand)]
enum RequestCmd {
    /// Requests you made or may review.
    #[command(after_help = "Example:\n  secondkey request list --state pending")]
    List {
        /// Only requests in this state: pending, approved, denied, expired,
        /// withdrawn, revoked, executed, failed or unknown.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// One request in full.
    #[command(after_help = "Example:\n  secondkey request show req_0123 --wait 30")]
    Show {
        /// The request's id (`req_…`).
        id: String,
        /// Wait up to this many seconds for its state to change.
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve a request.
    #[command(
        after_help = "Example:\n  secondkey request approve req_0123 --comment \"checked the export scope\""
    )]
    Approve {
        /// The request's id (`req_…`).
        id: String,
        /// Why, for the record (kept with the review, in the request and the log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deny a request.
    #[command(
        after_help = "Example:\n  secondkey request deny req_0123 --comment \"not during the freeze\""
    )]
    Deny {
        /// The request's id (`req_…`).
        id: String,
        /// Why, for the record (kept with the review, in the request and the log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke an approval before its grant is used.
    #[command(after_help = "Example:\n  secondkey request revoke req_0123")]
    Revoke {
        /// The request's id (`req_…`).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Withdraw your own pending request.
    #[command(after_help = "Example:\n  secondkey request withdraw req_0123")]
    Withdraw {
        /// The request's id (`req_…`).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ActionCmd {
    /// Submit an action (JSON file, '-' for stdin); with --wait, wait for the
    /// decision and print the grant.
    #[command(
        after_help = "Example:\n  secondkey action submit export.json --wait\n\nExit status: 0 allowed, or held (without --wait; the answer names the request), or approved (with --wait);\n2 denied, or (with --wait) decided otherwise: denied, expired, withdrawn;\n1 an error, including --wait giving up with the request still pending (it stays pending)."
    )]
    Submit {
        /// The action as JSON, sent exactly as written ('-' reads stdin).
        file: PathBuf,
        /// If the action is held for review, wait for the decision and print
        /// the request (see the exit status below).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Bring the store's schema up to this binary's version. PostgreSQL
    /// (`[store] url`) is only ever migrated by this command, once, before
    /// replicas of the new version start; replicas refuse a schema they do
    /// not know. SQLite in `data_dir` is also migrated when the gateway
    /// starts.
    #[command(after_help = "Example:\n  secondkey store migrate --config secondkey.toml")]
    Migrate {
        /// The gateway's config file (its `[store]`, or `data_dir`).
        #[arg(long, env = "SECONDKEY_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// Sign USER out of the web UI everywhere: every session of theirs
    /// signed in until now ends, on every replica, at once (pages ask them
    /// to sign in, approve and deny decide nothing); a new sign-in works.
    /// Recorded in the audit log as a `web.sessions.revoked` entry. Needs a
    /// token of a person or service in `[web] session_admins` (default
    /// group `security`), or USER's own.
    #[command(
        after_help = "Examples:\n  SECONDKEY_TOKEN=$SECURITY_TOKEN secondkey sessions revoke user:alice\n  secondkey sessions revoke user:alice --url https://secondkey.example --token \"$SECURITY_TOKEN\"\n\nTo keep a person out, also disable their account at the identity provider (or remove them\nfrom [[principals]] with [oidc] require_configured = true): this ends the sessions they hold,\nit does not refuse a new sign-in."
    )]
    Revoke {
        /// The person, `user:NAME` (capitals are read as lowercase), as in
        /// `[[principals]]` or as the identity provider names them.
        user: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a log signing key (mode 0600) and print its verifier key.
    #[command(
        after_help = "Example:\n  secondkey keys generate --name secondkey.example/log --out log.key"
    )]
    Generate {
        /// The key name: use the log origin.
        #[arg(long)]
        name: String,
        /// Where to write the private key: a new file in an existing
        /// directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SECONDKEY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if cli.command.only_prints() {
        die_quietly_when_the_reader_leaves();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: many of our
/// errors already name their cause in their own message ("cannot read
/// config file F: No such file or directory"), and `{:#}` would repeat it.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

impl Command {
    /// Whether the command only reads and prints (listings, exports,
    /// reports, policy checks): nothing is left half done if it stops at
    /// any write.
    fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Policy(_)
                | Command::Log(_)
                | Command::Report(_)
                | Command::Keys(_)
                | Command::Request(RequestCmd::List { .. } | RequestCmd::Show { .. })
                | Command::Recording(RecordingCmd::List { .. } | RecordingCmd::Play { .. })
        )
    }
}

/// `secondkey log export … | head`: once the reader has what it wanted
/// and closes the pipe, the command ends as `cat` or `ls` would, by
/// SIGPIPE, silently — not with "failed printing to stdout: Broken pipe"
/// (a panic) or an error line. Rust ignores SIGPIPE by default; only the
/// commands that merely print take the default back (a gateway or a
/// wrapped step must never die of a closed socket or pipe).
fn die_quietly_when_the_reader_leaves() {
    // SAFETY: before any other thread exists; sets a signal disposition
    // to its default, which needs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// One line an auditor can read: what was verified.
pub fn describe(r: &secondkey_log::bundle::VerifyReport) -> String {
    let mut s = format!(
        "log {} verified: {} entries, root {}, signature good, {} hash tiles checked",
        r.origin,
        r.size,
        hex::encode(r.root),
        r.tiles_checked
    );
    if let Some(old) = r.consistent_with {
        s.push_str(&format!(
            "; consistent with the older checkpoint of size {old} (nothing rewritten or truncated)"
        ));
    }
    s
}

pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

pub fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// The runtime of `secondkey serve`. The store's
/// writer is a thread of its own, busy whenever the gateway is, so the
/// runtime takes one worker fewer than the machine has cores (at least one):
/// on two cores one worker plus the writer decided as many allows per second
/// as two workers with a lower p99, and answered an MCP call sooner, because
/// fewer tasks hop between cores (bench/README.md §3, §10).
/// `TOKIO_WORKER_THREADS` sets the number of workers instead.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        b.worker_threads(cores.saturating_sub(1).max(1));
    }
    Ok(b.enable_all().build()?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = secondkey_server::Config::load(&config, &env_map())?;
            let extensions = extensions(&cfg)?;
            runtime()?.block_on(secondkey_server::serve_with(cfg, extensions))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pg(PgCmd::Verifier { token_env }) => {
            let token = match token_env {
                Some(var) => std::env::var(&var)
                    .map_err(|_| anyhow!("environment variable {var} is not set"))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            if token.len() < 16 {
                bail!(
                    "that token is shorter than 16 characters; use the principal's secondkey token"
                );
            }
            println!("{}", secondkey_pg::scram::new_verifier(&token));
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args),
        Command::Policy(p) => policy(p),
        Command::Request(r) => request(r),
        Command::Action(ActionCmd::Submit {
            file,
            wait,
            timeout,
            remote,
        }) => submit(&file, wait, timeout, &remote),
        Command::Log(l) => logcmd::run(l),
        Command::Mcp(m) => mcpcmd::run(m),
        Command::Exec(a) => exec::run(a),
        Command::Recording(r) => recording(r),
        Command::Report(r) => auditcmd::report(r),
        Command::Evidence(e) => auditcmd::evidence(e),
        Command::Witness(w) => auditcmd::witness(w),
        Command::Store(StoreCmd::Migrate { config }) => {
            let cfg = secondkey_server::Config::load_offline(&config, &env_map())?;
            let options = cfg.store_options();
            let (from, to) = secondkey_store::Store::migrate(&options).map_err(|e| match e {
                // Its own words speak of a decision; here none is at stake.
                secondkey_store::StoreError::PgDown(why) => anyhow!(
                    "cannot migrate the store: cannot reach PostgreSQL ({why}); nothing was changed"
                ),
                e => anyhow!("cannot migrate the store: {e}"),
            })?;
            let place = match &cfg.store {
                Some(pg) => pg.url.clone(),
                None => cfg.data_dir.display().to_string(),
            };
            if from == to {
                println!("{place}: schema version {to}, up to date");
            } else {
                println!("{place}: schema migrated from version {from} to {to}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCmd::Revoke { user, remote }) => revoke_sessions(&user, &remote),
        Command::Keys(KeysCmd::Generate { name, out }) => {
            let signer = secondkey_log::note::Signer::generate(&name)
                .map_err(|e| anyhow!("cannot create a key named {name:?}: {e}"))?;
            key_dir_exists(&out)?;
            secondkey_server::keys::write_secret_file(&out, &format!("{}\n", signer.to_string()))
                .map_err(|e| anyhow!("{e} (it must not exist already)"))?;
            eprintln!(
                "wrote the private key to {} (mode 0600); keep it secret",
                out.display()
            );
            println!("{}", signer.verifier());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A new key goes into a directory that exists: a mistyped `--out` is an
/// error, not a directory made where nobody will look for the key.
pub(crate) fn key_dir_exists(out: &Path) -> Result<()> {
    match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => bail!(
            "{}: the directory {} does not exist; create it first (a key is only written into an existing directory)",
            out.display(),
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// `policy validate`: every problem with file and line on stderr and a
/// failing exit, or `ok` with the warnings.
fn validate(
    dir: &Path,
    config: Option<&Path>,
    options: &secondkey_policy::LoadOptions,
) -> Result<ExitCode> {
    match secondkey_policy::PolicyEngine::load_dir_with(dir, options) {
        Ok(engine) => {
            for w in engine.warnings() {
                eprintln!("warning: {w}");
            }
            let groups = match config {
                Some(c) => format!("groups and quorums checked against {}", c.display()),
                None => "groups and quorums not checked: pass --config".to_owned(),
            };
            println!(
                "ok: {} policies in {} are valid ({groups})",
                engine.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn policy(cmd: PolicyCmd) -> Result<ExitCode> {
    use secondkey_policy::PolicyEngine;
    match cmd {
        PolicyCmd::Validate { dir, config } => {
            let options = match &config {
                Some(path) => secondkey_server::Config::load_offline(path, &env_map())
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?
                    .policy_options(),
                None => Default::default(),
            };
            validate(&dir, config.as_deref(), &options)
        }
        PolicyCmd::Test { dir } => {
            let engine = PolicyEngine::load_dir(&dir).map_err(|e| anyhow!("{e}"))?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".tests.toml"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("no *.tests.toml files in {}", dir.display());
            }
            let (mut passed, mut failed) = (0, 0);
            for f in files {
                let report = secondkey_policy::run_tests(&engine, &f);
                print!("{report}");
                failed += report.failures() + usize::from(report.error.is_some());
                passed += report.cases.len() - report.failures();
            }
            // Each file printed its own count; this is all of them.
            println!("total: {passed} passed, {failed} failed");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCmd::Explain {
            dir,
            principal,
            groups,
            owner,
            action,
            facts,
        } => {
            let engine = PolicyEngine::load_dir(&dir).map_err(|e| anyhow!("{e}"))?;
            let id: secondkey_core::principal::PrincipalId =
                principal.parse().map_err(|e| anyhow!("--principal: {e}"))?;
            let owner = owner
                .map(|o| o.parse().map_err(|e| anyhow!("--owner: {e}")))
                .transpose()?;
            let p = secondkey_core::principal::Principal {
                id,
                owner,
                groups: groups.into_iter().collect(),
                subjects: Default::default(),
            };
            let raw: Value = serde_json::from_str(&read_input(&action)?)
                .with_context(|| format!("{} is not JSON", action.display()))?;
            let (act, digest) = secondkey_core::action::Action::from_json(&raw)
                .map_err(|e| anyhow!("the action is not valid: {e}"))?;
            let mut m = serde_json::Map::new();
            for f in facts {
                let (k, v) = f
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--fact {f:?}: use KEY=VALUE"))?;
                let v = serde_json::from_str(v).unwrap_or(json!(v));
                m.insert(k.to_string(), v);
            }
            println!("action digest: {}", digest.as_str());
            println!("{}", engine.explain(&p, &act, &m));
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn request(cmd: RequestCmd) -> Result<ExitCode> {
    match cmd {
        RequestCmd::List { state, remote } => {
            let c = remote.client()?;
            let path = match state {
                Some(s) => format!("/v1/requests?state={s}"),
                None => "/v1/requests".to_string(),
            };
            let v = c.get(&path)?;
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no requests");
            }
            for r in list {
                let a = &r["action"];
                println!(
                    "{}  {:<9} {}.{} {}  by {}  expires {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    a["kind"].as_str().unwrap_or("?"),
                    a["operation"].as_str().unwrap_or("?"),
                    a["resource"].as_str().unwrap_or("?"),
                    r["requester"].as_str().unwrap_or("?"),
                    r["expires_at"].as_str().unwrap_or("?"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RequestCmd::Show { id, wait, remote } => {
            let c = remote.client()?;
            let path = match wait {
                Some(w) => format!("/v1/requests/{id}?wait={w}"),
                None => format!("/v1/requests/{id}"),
            };
            print_json(&c.get(&path)?);
            Ok(ExitCode::SUCCESS)
        }
        RequestCmd::Approve {
            id,
            comment,
            remote,
        } => review(&remote, &id, "approve", comment),
        RequestCmd::Deny {
            id,
            comment,
            remote,
        } => review(&remote, &id, "deny", comment),
        RequestCmd::Revoke { id, remote } => {
            let v = remote
                .client()?
                .post(&format!("/v1/requests/{id}/revoke"), &json!({}))?;
            println!("{id}: {}", v["state"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        RequestCmd::Withdraw { id, remote } => {
            let v = remote
                .client()?
                .post(&format!("/v1/requests/{id}/withdraw"), &json!({}))?;
            println!("{id}: {}", v["state"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sessions revoke`: a malformed id is refused here, before anything is
/// sent; the gateway checks it again, and the right to do it.
fn revoke_sessions(user: &str, remote: &Remote) -> Result<ExitCode> {
    let id = secondkey_server::web::revocation::parse_user(user)
        .map_err(|e| anyhow!("{}; nothing was changed", e.message))?;
    let v = remote
        .client()?
        .post("/v1/sessions/revoke", &json!({"user": id.as_str()}))
        .map_err(|e| anyhow!("{e:#}; nothing was changed"))?;
    println!(
        "{}: every web session signed in before {} is signed out (log entry {})",
        v["user"].as_str().unwrap_or("?"),
        v["signed_in_before"].as_str().unwrap_or("?"),
        v["log_index"]
    );
    if v["configured"] == json!(false) {
        eprintln!(
            "note: {id} is not in [[principals]]; if the identity provider names this person otherwise (a typo?), their sessions are untouched"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn review(remote: &Remote, id: &str, decision: &str, comment: Option<String>) -> Result<ExitCode> {
    let v = remote.client()?.post(
        &format!("/v1/requests/{id}/reviews"),
        &json!({"decision": decision, "comment": comment}),
    )?;
    let approvals = v["reviews"]
        .as_array()
        .map(|r| r.iter().filter(|x| x["decision"] == "approve").count())
        .unwrap_or(0);
    let needed: u64 = v["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["quorum"].as_u64()).sum())
        .unwrap_or(0);
    println!(
        "{id}: {} ({approvals} of {needed} approvals)",
        v["state"].as_str().unwrap_or("?")
    );
    print_escalated(&v);
    Ok(ExitCode::SUCCESS)
}

/// One line per escalated requirement of a request view: what it is now
/// and who may fill it ("security review (escalated to data-owners): may be
/// filled by security, or data-owners reviewing after the escalation").
fn print_escalated(v: &Value) {
    for r in v["required"].as_array().into_iter().flatten() {
        let widened = r["escalated_to"].as_array().is_some_and(|a| !a.is_empty());
        if widened {
            println!(
                "  {}: may be filled by {}",
                r["label"].as_str().unwrap_or("?"),
                r["may_fill"].as_str().unwrap_or("?")
            );
        }
    }
}

fn submit(file: &Path, wait: bool, timeout: u64, remote: &Remote) -> Result<ExitCode> {
    let c = remote.client()?;
    // Sent exactly as written: the digest covers this JSON, and the
    // gateway's strict parser (not ours) judges it.
    let body = read_input(file)?;
    let v = c.post_raw("/v1/actions", body.as_bytes())?;
    let decision = v["decision"].as_str().unwrap_or("?").to_string();
    if decision != "review" || !wait {
        print_json(&v);
        return Ok(if decision == "deny" {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let id = v["request"]["id"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "held for review: {} (open {})",
        id,
        v["request"]["url"].as_str().unwrap_or("")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        // Each poll waits at most what is left of --timeout (and 30 s).
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r = c.get(&format!(
            "/v1/requests/{id}?wait={}",
            left.as_secs().min(30)
        ))?;
        let state = r["state"].as_str().unwrap_or("?");
        if state != "pending" {
            print_json(&r);
            return Ok(if state == "approved" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        if std::time::Instant::now() >= deadline {
            bail!("still pending after {timeout}s: {id}");
        }
    }
}

/// The extensions the configuration asks for (interception adapters and
/// channels), each validating its own section. A section no linked crate
/// claims is an error, so a typo never silently turns an adapter off.
/// Every extension section of the config (`EXTENSION_SECTIONS`) is read by
/// one of these: channels (`slack`, `teams`, `webhooks`, `routing`), `postgres`, `mcp`,
/// `http`, `ssh_gateway` and `ssh`.
fn extensions(
    cfg: &secondkey_server::Config,
) -> anyhow::Result<Vec<std::sync::Arc<dyn secondkey_server::Extension>>> {
    // The MCP extension always runs: stdio mode (`secondkey mcp stdio`)
    // pins tool definitions through its API even without an [mcp] section.
    let mut exts: Vec<std::sync::Arc<dyn secondkey_server::Extension>> = vec![std::sync::Arc::new(
        secondkey_mcp::http::McpExtension::from_config(cfg)?,
    )];
    if let Some(ch) =
        secondkey_channels::Channels::from_sections(&cfg.sections, &cfg.env, &cfg.base_dir)?
    {
        exts.push(std::sync::Arc::new(ch));
    }
    if let Some(ssh) = secondkey_ssh::SshGateway::from_config(cfg)? {
        exts.push(std::sync::Arc::new(ssh));
    }
    let principals = cfg.principals.keys().cloned().collect();
    if let Some(pg) = secondkey_pg::PgGateway::from_section(
        cfg.sections.get("postgres"),
        &cfg.base_dir,
        &principals,
        &cfg.env,
    )? {
        exts.push(std::sync::Arc::new(pg));
    }
    if let Some(http) = secondkey_http::HttpGateway::from_section(
        cfg.sections.get("http"),
        &cfg.base_dir,
        &principals,
        &cfg.env,
    )? {
        exts.push(std::sync::Arc::new(http));
    }
    Ok(exts)
}

/// The recordings directory: `--dir`, or the one the config names.
fn recordings_dir(config: Option<PathBuf>, dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let path = config.ok_or_else(|| anyhow!("pass --config or --dir"))?;
    let cfg = secondkey_server::Config::load_offline(&path, &env_map())?;
    Ok(secondkey_ssh::config::recordings_dir(
        cfg.sections.get("ssh_gateway"),
        &cfg.base_dir,
        &cfg.data_dir,
    ))
}

fn recording(cmd: RecordingCmd) -> Result<ExitCode> {
    use secondkey_ssh::recording;
    match cmd {
        RecordingCmd::Play {
            id,
            config,
            dir,
            speed,
            max_pause,
        } => {
            let dir = recordings_dir(config, dir)?;
            let path = recording::path_of(&dir, &id).ok_or_else(|| {
                anyhow!("{id:?} is not a recording id (the execution id of a session, e.g. act_…)")
            })?;
            let bytes = std::fs::read(&path).map_err(|e| {
                anyhow!(
                    "no recording {id} in {}: {e} (recordings are kept for the configured retention)",
                    dir.display()
                )
            })?;
            let text = String::from_utf8(bytes.clone())
                .map_err(|_| anyhow!("{} is not UTF-8: not a recording", path.display()))?;
            let cast = recording::read(&text)?;
            eprintln!(
                "recording {id}: {} bytes, sha256 {} (compare with summary.recording of its action.result log entry)",
                bytes.len(),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
            );
            if !(speed > 0.0 && speed.is_finite() && max_pause >= 0.0 && max_pause.is_finite()) {
                bail!("--speed must be above 0 and --max-pause at least 0");
            }
            let mut out = std::io::stdout();
            recording::play(
                &cast,
                &mut out,
                speed,
                std::time::Duration::from_secs_f64(max_pause),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        RecordingCmd::List { config, dir } => {
            let given = dir.is_some();
            let dir = recordings_dir(config, dir)?;
            let mut rows = Vec::new();
            let listed = match std::fs::read_dir(&dir) {
                Ok(entries) => Some(entries),
                // A configured directory the gateway has not made yet
                // holds no recordings; one named on the command line must
                // exist.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !given => None,
                Err(e) => bail!("cannot list {}: {e}", dir.display()),
            };
            if let Some(entries) = listed {
                for e in entries.flatten() {
                    let p = e.path();
                    let Some(id) = p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".cast"))
                    else {
                        continue;
                    };
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    rows.push(format!(
                        "{id}  {} bytes  sha256 {}",
                        bytes.len(),
                        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
                    ));
                }
            }
            rows.sort();
            if rows.is_empty() {
                println!("no recordings in {}", dir.display());
            }
            for r in rows {
                println!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
