//! `secondkey exec`: a pipeline step that runs only once the gateway
//! allows it (or a human approves it), exactly as submitted, once.
//!
//! It submits the argv, the working directory and the CI's facts as an
//! action with `?execute=true`, waits for a held one (long-poll), submits
//! the identical bytes again to use the approval (once), runs the argv,
//! streams its output, and reports exit code, duration and output digests
//! to `POST /v1/executions/{id}/result`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::error_line;
use secondkey_core::time::format_duration as human;

/// Exit codes of `secondkey exec` when the command did not run: the SSH
/// gateway's, and 127 for a command that cannot start.
pub mod code {
    pub use secondkey_ssh::exit::*;
    pub const CANNOT_START: u8 = 127;
}

/// `secondkey exec --help`'s epilogue.
pub const HELP: &str = "Example:
  secondkey exec --url https://secondkey.example --token-env SECONDKEY_ID_TOKEN \\
      --resource deploy://prod/api --operation deploy --justification \"release v1.2.3\" \\
      -- ./deploy.sh v1.2.3

Exit codes:
  0        the command ran and succeeded
  1-99     the command ran and failed with this exit code (also any other code it
           returns itself; a command killed by signal N gives 128+N)
  100      denied (by policy or by a reviewer): nothing ran
  101      the request expired before anyone decided: nothing ran
  102      --wait-timeout passed while the request was pending: nothing ran
           (the request stays pending: run the same step again to keep waiting)
  103      not run for another reason (withdrawn, revoked, approval already used)
  104      secondkey could not submit (gateway unreachable, bad token, invalid
           values such as a bad --wait-timeout); a result that could not be
           recorded is a warning on stderr, and the command's own code stands
  2        usage error (unknown flag, missing --resource): nothing submitted
  127      the command could not be started: not found or not executable
           (then nothing is submitted), or it failed to start after approval
           (recorded as failed)
The last line secondkey writes to stderr names the outcome.";

#[derive(Args)]
pub struct ExecArgs {
    /// The gateway's base URL.
    #[arg(long, env = "SECONDKEY_URL", default_value = "http://127.0.0.1:8750")]
    url: String,
    /// The environment variable that holds the bearer token (a static token,
    /// or a CI OIDC token such as a GitLab `id_tokens` variable). Without it
    /// and without --oidc-audience, the token is read from SECONDKEY_TOKEN.
    #[arg(long)]
    token_env: Option<String>,
    /// GitHub Actions: request an OIDC token with this audience from the
    /// runner (`ACTIONS_ID_TOKEN_REQUEST_URL`/`_TOKEN`, needs
    /// `permissions: id-token: write`) and authenticate with it.
    #[arg(long)]
    oidc_audience: Option<String>,
    /// The resource the step acts on, e.g. deploy://prod/api.
    #[arg(long)]
    resource: String,
    /// The operation (policy sees Action::"exec.<operation>").
    #[arg(long, default_value = "run")]
    operation: String,
    /// Why, for the reviewer.
    #[arg(long)]
    justification: Option<String>,
    /// How long to wait for a decision (e.g. 30m, 2h).
    #[arg(long, default_value = "1h")]
    wait_timeout: String,
    /// A file the command reads whose contents the approval binds (a
    /// script it runs, a manifest, a migration): its SHA-256 is part of the
    /// action and checked again just before the command starts. Repeatable.
    #[arg(long = "bind", value_name = "FILE")]
    bind: Vec<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    argv: Vec<String>,
}

/// Environment variables that change what a program does without being
/// part of its argv (the loader's and the interpreters'): when set, their
/// values are part of the action, so an approval does not carry over to
/// a run that preloads another library or startup script.
pub const BOUND_ENV: [&str; 12] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "BASH_ENV",
    "ENV",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "NODE_OPTIONS",
    "PERL5OPT",
    "PERL5LIB",
    "RUBYOPT",
];

/// What the approval binds besides the words: the program that will run
/// (its absolute path and SHA-256) and the `--bind` files' SHA-256.
struct Bound {
    /// Resolved before anything is submitted: a program not there is refused.
    program: (PathBuf, String),
    files: Vec<(PathBuf, String)>,
}

fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The file `argv0` names, as `execvp` would find it: a name with a `/`
/// relative to `cwd`, any other in `PATH`'s directories (the first
/// executable regular file).
pub fn resolve_program(argv0: &str, path: Option<&str>, cwd: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if argv0.is_empty() {
        return None;
    }
    if argv0.contains('/') {
        let p = cwd.join(argv0);
        return runnable(&p).then(|| p.canonicalize().ok()).flatten();
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|d| {
            if d.is_empty() {
                cwd.to_path_buf()
            } else {
                cwd.join(d)
            }
        })
        .map(|d| d.join(argv0))
        .find(|p| runnable(p))
        .and_then(|p| p.canonicalize().ok())
}

fn outcome(code: u8, line: &str) -> ExitCode {
    eprintln!("secondkey: {line}");
    ExitCode::from(code)
}

/// The CI facts found in the environment (GitHub Actions, GitLab CI).
pub fn ci_facts(env: &dyn Fn(&str) -> Option<String>) -> Option<Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            m.insert(k.to_string(), json!(v));
        }
    };
    if env("GITHUB_ACTIONS").as_deref() == Some("true") {
        put("provider", Some("github".into()));
        put("repository", env("GITHUB_REPOSITORY"));
        put("commit", env("GITHUB_SHA"));
        put("ref", env("GITHUB_REF"));
        put("actor", env("GITHUB_ACTOR"));
        put("workflow", env("GITHUB_WORKFLOW"));
        if let (Some(server), Some(repo), Some(run)) = (
            env("GITHUB_SERVER_URL"),
            env("GITHUB_REPOSITORY"),
            env("GITHUB_RUN_ID"),
        ) {
            // The run, not its attempt: re-running the job is how a step
            // goes on waiting for (and then uses) its approval, and the
            // action must stay the same for that.
            put(
                "run_url",
                Some(format!("{server}/{repo}/actions/runs/{run}")),
            );
        }
    } else if env("GITLAB_CI").as_deref() == Some("true") {
        put("provider", Some("gitlab".into()));
        put("repository", env("CI_PROJECT_PATH"));
        put("commit", env("CI_COMMIT_SHA"));
        put("ref", env("CI_COMMIT_REF_NAME"));
        put("actor", env("GITLAB_USER_LOGIN"));
        put("workflow", env("CI_JOB_NAME"));
        // The pipeline, not the job: a retried job is a new job.
        put(
            "run_url",
            env("CI_PIPELINE_URL").or_else(|| env("CI_JOB_URL")),
        );
    } else {
        return None;
    }
    Some(Value::Object(m))
}

/// Asks the GitHub Actions runner for an OIDC token with `audience`.
fn github_oidc_token(audience: &str) -> Result<String> {
    let (Ok(url), Ok(bearer)) = (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) else {
        bail!("--oidc-audience: ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set (on GitHub Actions give the job `permissions: id-token: write`; on GitLab declare `id_tokens` and pass --token-env)");
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let aud: String = form_urlencoded::byte_serialize(audience.as_bytes()).collect();
    let v: Value = ureq::get(&format!("{url}{sep}audience={aud}"))
        .set("Authorization", &format!("bearer {bearer}"))
        .timeout(Duration::from_secs(30))
        .call()
        .map_err(|e| anyhow!("the runner's OIDC token endpoint: {e}"))?
        .into_json()
        .context("the runner's OIDC token endpoint answered no JSON")?;
    v.get("value")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the runner's OIDC token endpoint answered no `value`"))
}

pub fn run(a: ExecArgs) -> Result<ExitCode> {
    // A program that is not there is refused before anything is submitted:
    // approved while absent, whatever appeared under its name during the
    // wait would run, unbound.
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            return Ok(outcome(
                code::GATEWAY,
                &format!("nothing ran: the working directory: {e}"),
            ))
        }
    };
    let path = std::env::var("PATH").ok();
    let Some(program) = resolve_program(&a.argv[0], path.as_deref(), &cwd) else {
        return Ok(outcome(
            code::CANNOT_START,
            &format!(
                "{}: no such program, or not executable (a name without `/` is looked up in PATH); nothing was submitted or run",
                a.argv[0]
            ),
        ));
    };
    match prepare(&a, &cwd, program) {
        Ok((client, body, bound)) => execute(&a, &client, &body, &bound),
        Err(e) => Ok(outcome(
            code::GATEWAY,
            &format!("nothing ran: {}", error_line(&e)),
        )),
    }
}

fn prepare(
    a: &ExecArgs,
    cwd: &std::path::Path,
    program: PathBuf,
) -> Result<(Client, Vec<u8>, Bound)> {
    let token = match (&a.oidc_audience, &a.token_env) {
        (Some(aud), None) => github_oidc_token(aud)?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| anyhow!("--token-env: environment variable {var} is not set"))?,
        (None, None) => std::env::var("SECONDKEY_TOKEN").map_err(|_| {
            anyhow!("no token: pass --token-env VAR or --oidc-audience AUD, or set SECONDKEY_TOKEN")
        })?,
        (Some(_), Some(_)) => bail!("pass one of --token-env and --oidc-audience"),
    };
    let mut context = Map::new();
    if let Some(ci) = ci_facts(&|k| std::env::var(k).ok()) {
        context.insert("ci".into(), ci);
    }
    let bound = bind(a, cwd, program)?;
    let mut params = json!({"argv": a.argv, "cwd": cwd.to_string_lossy()});
    let (path, sha) = &bound.program;
    params["program"] = json!({"path": path.to_string_lossy(), "sha256": sha});
    if !bound.files.is_empty() {
        let files: Map<String, Value> = bound
            .files
            .iter()
            .map(|(p, h)| (p.to_string_lossy().to_string(), json!(h)))
            .collect();
        params["files"] = Value::Object(files);
    }
    let env: Map<String, Value> = BOUND_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), json!(v))))
        .collect();
    if !env.is_empty() {
        params["env"] = Value::Object(env);
    }
    let mut action = json!({
        "kind": "exec",
        "operation": a.operation,
        "resource": a.resource,
        "params": params,
        "context": context,
    });
    if let Some(j) = &a.justification {
        action["justification"] = json!(j);
    }
    // Serialized once: the second submission (using an approval) sends the
    // very same bytes, so it has the same digest.
    let body = serde_json::to_vec(&action)?;
    crate::client::check_transport(&a.url)?;
    Ok((Client::new(&a.url, Some(token)), body, bound))
}

/// Hashes the program (as resolved) and the `--bind` files.
fn bind(a: &ExecArgs, cwd: &std::path::Path, program: PathBuf) -> Result<Bound> {
    let h = sha256_file(&program).with_context(|| format!("reading {}", program.display()))?;
    let program = (program, h);
    let mut files = Vec::new();
    for f in &a.bind {
        let p = cwd.join(f);
        let h = sha256_file(&p).with_context(|| format!("--bind {}", f.display()))?;
        files.push((p, h));
    }
    Ok(Bound { program, files })
}

/// What changed since the action was submitted, if anything.
fn changed_since(b: &Bound) -> Option<String> {
    std::iter::once(&b.program)
        .chain(&b.files)
        .find(|(p, h)| sha256_file(p).ok().as_deref() != Some(h.as_str()))
        .map(|(p, _)| p.display().to_string())
}

fn execute(a: &ExecArgs, c: &Client, body: &[u8], bound: &Bound) -> Result<ExitCode> {
    let wait = match secondkey_core::time::parse_duration(&a.wait_timeout) {
        Ok(d) => d,
        Err(e) => {
            return Ok(outcome(
                code::GATEWAY,
                &format!("--wait-timeout: {e}; nothing ran"),
            ))
        }
    };
    let v = match c.post_raw("/v1/actions?execute=true", body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(outcome(
                code::GATEWAY,
                &format!("nothing ran: {}", error_line(&e)),
            ))
        }
    };
    let execution = match v["decision"].as_str() {
        Some("allow") => v["execution"].clone(),
        Some("deny") => return Ok(denied(&v)),
        Some("review") => {
            let id = v["request"]["id"].as_str().unwrap_or_default().to_string();
            let url = v["request"]["url"].as_str().unwrap_or_default().to_string();
            match wait_decision(c, &id, &url, wait)? {
                Ok(()) => {}
                Err(code) => return Ok(code),
            }
            // Use the approval: the identical action again, once.
            let again = match c.post_raw("/v1/actions?execute=true", body) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(outcome(
                        code::GATEWAY,
                        &format!(
                            "request {id} was approved but could not be used: {}; nothing ran",
                            error_line(&e)
                        ),
                    ))
                }
            };
            if again["execution"].is_null() {
                return Ok(match again["decision"].as_str() {
                    Some("deny") => denied(&again),
                    _ => outcome(code::NOT_RUN, &format!("the approval of request {id} could not be used (it was revoked, expired or used already); nothing ran")),
                });
            }
            again["execution"].clone()
        }
        other => {
            return Ok(outcome(
                code::GATEWAY,
                &format!("unexpected decision {other:?}; nothing ran"),
            ))
        }
    };
    let Some(exec_id) = execution["id"].as_str().map(str::to_string) else {
        return Ok(outcome(
            code::GATEWAY,
            "the gateway returned no execution; nothing ran",
        ));
    };
    let approvers: Vec<String> = execution["approvers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // The approval names these bytes: a program or bound file changed
    // since (while a reviewer looked) does not run under it.
    if let Some(path) = changed_since(bound) {
        let why = format!("{path} changed since it was submitted");
        let report = json!({"ok": false, "summary": {"error": why, "ran": false}});
        if let Err(e) = c.post(&format!("/v1/executions/{exec_id}/result"), &report) {
            eprintln!(
                "secondkey: warning: the result could not be recorded: {}",
                error_line(&e)
            );
        }
        return Ok(outcome(
            code::NOT_RUN,
            &format!("{exec_id}: {why}; nothing ran"),
        ));
    }
    if approvers.is_empty() {
        eprintln!("secondkey: allowed ({exec_id}); running {}", shown(&a.argv));
    } else {
        eprintln!(
            "secondkey: approved by {} ({exec_id}); running {}",
            approvers.join(", "),
            shown(&a.argv)
        );
    }
    let (exit, summary) = run_once(&a.argv, &bound.program.0);
    let ok = exit == Some(0);
    let report = json!({"ok": ok, "summary": summary});
    let recorded = c.post(&format!("/v1/executions/{exec_id}/result"), &report);
    if let Err(e) = &recorded {
        eprintln!(
            "secondkey: warning: the result could not be recorded: {}",
            error_line(e)
        );
    }
    Ok(match exit {
        Some(0) => outcome(0, &format!("ran {exec_id}: succeeded")),
        Some(code) => outcome(
            code,
            &format!("ran {exec_id}: the command failed with exit code {code}"),
        ),
        None if summary.get("error").is_some() => outcome(
            code::CANNOT_START,
            &format!(
                "{exec_id}: the command could not be started: {}",
                summary["error"].as_str().unwrap_or("?")
            ),
        ),
        None => outcome(
            1,
            &format!("ran {exec_id}: the command ended without an exit code"),
        ),
    })
}

fn shown(argv: &[String]) -> String {
    serde_json::to_string(argv).unwrap_or_default()
}

fn denied(v: &Value) -> ExitCode {
    let reasons: Vec<String> = v["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| {
                    x["message"]
                        .as_str()
                        .or(x["policy"].as_str())
                        .map(str::to_string)
                })
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let why = if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    };
    outcome(code::DENIED, &format!("denied{why}; nothing ran"))
}

/// Waits for request `id`; `Err(exit code)` when it ends without approval.
fn wait_decision(c: &Client, id: &str, url: &str, wait: Duration) -> Result<Result<(), ExitCode>> {
    eprintln!("secondkey: held for review as request {id}: {url}");
    eprintln!("secondkey: waiting up to {} for a decision…", human(wait));
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(outcome(
                code::TIMED_OUT,
                &format!(
                    "request {id} was not decided within {}; nothing ran (it stays pending: {url})",
                    human(wait)
                ),
            )));
        }
        let secs = left.as_secs().clamp(1, 30);
        let r = match c.get(&format!("/v1/requests/{id}?wait={secs}")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "secondkey: cannot follow request {id}: {}; retrying",
                    error_line(&e)
                );
                std::thread::sleep(Duration::from_secs(2).min(left));
                continue;
            }
        };
        match r["state"].as_str() {
            Some("pending") => continue,
            Some("approved") => return Ok(Ok(())),
            Some("denied") => {
                let by: Vec<&str> = r["reviews"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|x| x["decision"] == "deny")
                            .filter_map(|x| x["reviewer"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Err(outcome(
                    code::DENIED,
                    &format!("request {id} was denied by {}; nothing ran", by.join(", ")),
                )));
            }
            Some("expired") => {
                return Ok(Err(outcome(
                    code::EXPIRED,
                    &format!("request {id} expired before a decision; nothing ran"),
                )))
            }
            Some(s) => {
                return Ok(Err(outcome(
                    code::NOT_RUN,
                    &format!("request {id} is {s}; nothing ran"),
                )))
            }
            None => {
                return Ok(Err(outcome(
                    code::GATEWAY,
                    &format!("request {id}: unreadable answer; nothing ran"),
                )))
            }
        }
    }
}

/// Copies `from` to `to` while hashing; returns (sha256, bytes).
fn tee(mut from: impl Read, mut to: impl Write) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
                let _ = to.write_all(&buf[..k]);
                let _ = to.flush();
            }
        }
    }
    (hex::encode(h.finalize()), n)
}

/// Runs `argv` once, streaming its output; (exit code, summary). The
/// resolved `program` is what starts (not a new `PATH` lookup), with
/// `argv[0]` as its name.
/// Runs `program` (resolved when the action was built, so no second PATH
/// lookup) with `argv[0]` kept as the name it was called by.
fn run_once(argv: &[String], program: &std::path::Path) -> (Option<u8>, Value) {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.arg0(&argv[0]);
    let child = cmd
        .args(&argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return (
                None,
                json!({"error": format!("cannot start {}: {e}", argv[0]), "ran": false}),
            )
        }
    };
    let out = child
        .stdout
        .take()
        .map(|o| std::thread::spawn(move || tee(o, std::io::stdout())));
    let err = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || tee(e, std::io::stderr())));
    let status = child.wait();
    let (out_sha, out_n) = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let (err_sha, err_n) = err.and_then(|t| t.join().ok()).unwrap_or_default();
    let mut summary = json!({
        "duration_ms": started.elapsed().as_millis() as u64,
        "stdout_sha256": out_sha, "stdout_bytes": out_n,
        "stderr_sha256": err_sha, "stderr_bytes": err_n,
    });
    let code = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => Some((c & 0xff) as u8),
                (None, Some(sig)) => {
                    summary["signal"] = json!(sig);
                    Some((128 + sig).min(255) as u8)
                }
                _ => None,
            }
        }
        Err(e) => {
            summary["error"] = json!(format!("waiting for the command: {e}"));
            summary["status"] = json!("unknown");
            None
        }
    };
    summary["exit_code"] = json!(code);
    (code, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_facts_from_github_and_gitlab() {
        let gh = |k: &str| {
            Some(
                match k {
                    "GITHUB_ACTIONS" => "true",
                    "GITHUB_REPOSITORY" => "acme/api",
                    "GITHUB_SHA" => "abc123",
                    "GITHUB_REF" => "refs/heads/main",
                    "GITHUB_ACTOR" => "octocat",
                    "GITHUB_SERVER_URL" => "https://github.com",
                    "GITHUB_RUN_ID" => "42",
                    "GITHUB_RUN_ATTEMPT" => "2",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let f = ci_facts(&gh).unwrap();
        assert_eq!(f["provider"], "github");
        // The run without its attempt: a re-run is the same action.
        assert_eq!(f["run_url"], "https://github.com/acme/api/actions/runs/42");
        assert_eq!(f["commit"], "abc123");
        let gl = |k: &str| {
            Some(
                match k {
                    "GITLAB_CI" => "true",
                    "CI_PROJECT_PATH" => "acme/api",
                    "CI_COMMIT_SHA" => "def456",
                    "CI_COMMIT_REF_NAME" => "main",
                    "GITLAB_USER_LOGIN" => "alice",
                    "CI_JOB_URL" => "https://gitlab.example/acme/api/-/jobs/7",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let f = ci_facts(&gl).unwrap();
        assert_eq!(f["provider"], "gitlab");
        assert_eq!(f["actor"], "alice");
        assert_eq!(f["run_url"], "https://gitlab.example/acme/api/-/jobs/7");
        // A pipeline URL is preferred: a retried job gets a new job URL.
        let gl2 = |k: &str| match k {
            "CI_PIPELINE_URL" => Some("https://gitlab.example/acme/api/-/pipelines/9".to_string()),
            other => gl(other),
        };
        assert_eq!(
            ci_facts(&gl2).unwrap()["run_url"],
            "https://gitlab.example/acme/api/-/pipelines/9"
        );
        assert!(ci_facts(&|_| None).is_none());
    }

    #[test]
    fn the_program_is_found_as_execvp_finds_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let make = |p: &std::path::Path, mode: u32| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Not executable in a, executable in b: b's.
        make(&a.join("deploy"), 0o644);
        make(&b.join("deploy"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        let found = resolve_program("deploy", Some(&path), tmp.path()).unwrap();
        assert_eq!(found, b.join("deploy").canonicalize().unwrap());
        // A name with a slash is relative to the working directory, PATH unused.
        make(&tmp.path().join("run.sh"), 0o755);
        assert_eq!(
            resolve_program("./run.sh", Some(&path), tmp.path()).unwrap(),
            tmp.path().join("run.sh").canonicalize().unwrap()
        );
        assert!(resolve_program("./a/deploy", None, tmp.path()).is_none());
        assert!(resolve_program("missing", Some(&path), tmp.path()).is_none());
        assert!(
            resolve_program("a", Some(&path), tmp.path()).is_none(),
            "a directory is not a program"
        );
        assert!(resolve_program("", Some(&path), tmp.path()).is_none());
    }
}
