//! `secondkey exec` end to end: the real binary as a pipeline step against
//! a real gateway, authenticated with CI OIDC tokens from a local issuer
//! that speaks what the CI runners do — GitHub Actions' token endpoint
//! (`ACTIONS_ID_TOKEN_REQUEST_URL` + bearer `ACTIONS_ID_TOKEN_REQUEST_TOKEN`
//! → `{"value": <JWT>}`), an OpenID configuration and a JWK set — and a
//! GitLab-style `id_tokens` variable. Held deploys run once after approval;
//! every way a step can end has its own exit code.

mod common;
#[path = "common/fakes.rs"]
mod fakes;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const RUNNER_TOKEN: &str = "runner-request-token-0123";
const KID: &str = "ci-key-1";

const POLICY: &str = r#"
@id("deployers-exec")
permit(principal in Group::"deployers", action in Action::"exec", resource);

@id("prod-deploys-need-review")
@reason("production deploys are approved by a data owner")
@review("data-owners")
forbid(principal, action == Action::"exec.deploy", resource)
when { resource.uri like "deploy://prod/*" };

@id("migrations-expire-fast")
@review("data-owners")
@ttl("1s")
forbid(principal, action == Action::"exec.migrate", resource);
"#;

#[derive(Clone)]
struct Issuer {
    base: std::sync::Arc<std::sync::OnceLock<String>>,
    key: std::sync::Arc<fakes::RsaKey>,
}

impl Issuer {
    fn base(&self) -> &str {
        self.base.get().map(String::as_str).unwrap_or_default()
    }
}

fn mint(key: &fakes::RsaKey, iss: &str, aud: &str, sub: &str, extra: Value) -> String {
    let now = fakes::unix_now();
    let mut claims =
        json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 300});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(KID.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&key.der),
    )
    .unwrap()
}

async fn metadata(State(s): State<Issuer>) -> Json<Value> {
    Json(
        json!({"issuer": s.base(), "jwks_uri": format!("{}/keys", s.base()),
                "id_token_signing_alg_values_supported": ["RS256"],
                "subject_types_supported": ["public", "pairwise"], "response_types_supported": ["id_token"]}),
    )
}

async fn keys(State(s): State<Issuer>) -> Json<Value> {
    Json(
        json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID, "n": s.key.n_b64url, "e": "AQAB"}]}),
    )
}

/// GitHub Actions' token endpoint: bearer-authenticated, audience in the query.
async fn token(
    State(s): State<Issuer>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth.eq_ignore_ascii_case(&format!("bearer {RUNNER_TOKEN}")) {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad runner token").into_response();
    }
    let aud = q
        .get("audience")
        .cloned()
        .unwrap_or_else(|| "https://github.com/acme".into());
    let jwt = mint(
        &s.key,
        s.base(),
        &aud,
        "repo:acme/api:ref:refs/heads/main",
        json!({"repository": "acme/api", "ref": "refs/heads/main", "actor": "octocat", "sha": "abc123"}),
    );
    Json(json!({"count": 1, "value": jwt})).into_response()
}

fn issuer(dir: &std::path::Path) -> Issuer {
    let s = Issuer {
        base: Default::default(),
        key: std::sync::Arc::new(fakes::rsa_key(dir, "ci-issuer")),
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/keys", get(keys))
        .route("/token", get(token))
        .with_state(s.clone());
    let _ = s.base.set(fakes::serve(app));
    s
}

fn github_env(iss: &Issuer) -> Vec<(&'static str, String)> {
    vec![
        ("GITHUB_ACTIONS", "true".into()),
        ("GITHUB_REPOSITORY", "acme/api".into()),
        ("GITHUB_SHA", "abc123".into()),
        ("GITHUB_REF", "refs/heads/main".into()),
        ("GITHUB_ACTOR", "octocat".into()),
        ("GITHUB_WORKFLOW", "deploy".into()),
        ("GITHUB_SERVER_URL", "https://github.example".into()),
        ("GITHUB_RUN_ID", "4242".into()),
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            format!("{}/token?api-version=2.0", iss.base()),
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_TOKEN.into()),
    ]
}

fn step(g: &Gateway, env: &[(&str, String)], args: &[&str], cwd: &std::path::Path) -> Watched {
    let mut c = Command::new(BIN);
    c.arg("exec")
        .args(["--url", &g.url])
        .args(args)
        .current_dir(cwd)
        .env_remove("SECONDKEY_TOKEN")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITLAB_CI")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    Watched::spawn(c)
}

/// A GitHub Actions step: `--oidc-audience secondkey --resource R
/// --operation OP [extra…] -- argv…`.
fn gh_step(
    g: &Gateway,
    iss: &Issuer,
    resource: &str,
    op: &str,
    extra: &[&str],
    argv: &[&str],
    cwd: &std::path::Path,
) -> Watched {
    let mut args = vec![
        "--oidc-audience",
        "secondkey",
        "--resource",
        resource,
        "--operation",
        op,
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(argv);
    step(g, &github_env(iss), &args, cwd)
}

/// A gateway that maps the local issuer's GitHub and GitLab subjects to
/// `service:deploy`.
fn ci_gateway(tmp: &std::path::Path) -> (Issuer, Gateway) {
    let iss = issuer(tmp);
    let extra = format!(
        r#"
[[principals]]
id = "service:deploy"
groups = ["deployers"]

[[identity.jwt]]
issuer = "{base}"
audience = "secondkey"
principal_kind = "service"
require_configured = true
[identity.jwt.map]
"repo:acme/api:ref:refs/heads/main" = "service:deploy"
"project_path:acme/api:ref_type:branch:ref:main" = "service:deploy"
"#,
        base = iss.base()
    );
    let g = Gateway::start_full(&tmp.join("gw"), POLICY, "", &extra, &[]);
    (iss, g)
}

#[test]
fn exec_runs_a_held_deploy_once_after_approval_with_ci_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (iss, g) = ci_gateway(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let deployed = work.join("deployed.log");
    let script = format!(
        "echo deploying \"$1\"; echo \"$1\" >> {}",
        deployed.display()
    );
    let deploy = |v: &'static str| ["sh", "-c", script.as_str(), "deploy", v];
    let prod = "deploy://prod/api";

    // A held production deploy: the request URL while it waits, then the
    // approved argv runs exactly once.
    let mut s = gh_step(
        &g,
        &iss,
        prod,
        "deploy",
        &["--justification", "release v1.2.3"],
        &deploy("v1.2.3"),
        &work,
    );
    let held = s.wait_line("held for review as request");
    assert!(held.contains(&g.url), "{held}");
    let id = request_id(&held);
    let (_, req) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(
        req["requester"], "service:deploy",
        "the CI's OIDC identity: {req}"
    );
    let a = &req["action"];
    assert_eq!(a["params"]["argv"], json!(deploy("v1.2.3")), "{req}");
    assert_eq!(a["params"]["cwd"], work.to_str().unwrap(), "{req}");
    assert_eq!(a["context"]["ci"]["repository"], "acme/api", "{req}");
    assert_eq!(
        a["context"]["ci"]["run_url"], "https://github.example/acme/api/actions/runs/4242",
        "{req}"
    );
    assert_eq!(a["justification"], "release v1.2.3");
    assert!(!deployed.exists(), "nothing ran while held");
    let (st, v) = g.review("user:bob", &id, "approve");
    assert_eq!(st, 200, "{v}");
    let (code, out, err) = s.finish(60);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(out, "deploying v1.2.3\n", "its output streams through");
    assert_eq!(
        std::fs::read_to_string(&deployed).unwrap(),
        "v1.2.3\n",
        "ran once"
    );
    assert!(err.last().unwrap().contains("succeeded"), "{err:?}");
    // The result was recorded: no warning that it could not be.
    assert!(!err.iter().any(|l| l.contains("warning")), "{err:?}");
    let detail = g.wait_log("the deploy's result", |e| {
        e["event"] == "action.result.detail" && e["subjects"]["request"] == id.as_str()
    });
    let summary = &detail["payload"]["summary"];
    assert_eq!(summary["exit_code"], 0, "{detail}");
    assert_eq!(
        summary["stdout_sha256"],
        hex::encode(Sha256::digest(b"deploying v1.2.3\n")),
        "{detail}"
    );
    assert!(summary["duration_ms"].is_u64(), "{detail}");
    let (_, req) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(req["state"], "executed", "{req}");

    // An allowed step that fails: its exit code passes through and is recorded.
    let s = gh_step(
        &g,
        &iss,
        "deploy://staging/api",
        "deploy",
        &[],
        &["sh", "-c", "echo broken >&2; exit 3"],
        &work,
    );
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 3, "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("failed with exit code 3")),
        "{err:?}"
    );
    assert!(!err.iter().any(|l| l.contains("warning")), "{err:?}");
    g.wait_log("the failed step's result", |e| {
        e["event"] == "action.result"
            && e["payload"]["summary"]["exit_code"] == 3
            && e["payload"]["ok"] == false
    });

    // GitLab: the `id_tokens` variable is the bearer token.
    let gl_token = mint(
        &iss.key,
        iss.base(),
        "secondkey",
        "project_path:acme/api:ref_type:branch:ref:main",
        json!({}),
    );
    let gl = vec![
        ("GITLAB_CI", "true".to_string()),
        ("CI_PROJECT_PATH", "acme/api".into()),
        ("CI_COMMIT_SHA", "def456".into()),
        (
            "CI_JOB_URL",
            "https://gitlab.example/acme/api/-/jobs/7".into(),
        ),
        ("SECONDKEY_ID_TOKEN", gl_token),
    ];
    let s = step(
        &g,
        &gl,
        &[
            "--token-env",
            "SECONDKEY_ID_TOKEN",
            "--resource",
            "deploy://staging/api",
            "--",
            "true",
        ],
        &work,
    );
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 0, "{err:?}");

    // Denied by the reviewer: 100, nothing ran.
    let mut s = gh_step(&g, &iss, prod, "deploy", &[], &deploy("v9"), &work);
    let id = request_id(&s.wait_line("held for review as request"));
    g.review("user:bob", &id, "deny");
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 100, "{err:?}");
    // Pending past --wait-timeout: 102, nothing ran, the request stays pending.
    let s = gh_step(
        &g,
        &iss,
        prod,
        "deploy",
        &["--wait-timeout", "2s"],
        &deploy("v10"),
        &work,
    );
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 102, "{err:?}");
    // Expired before a decision: 101.
    let s = gh_step(
        &g,
        &iss,
        "db://prod/main",
        "migrate",
        &[],
        &deploy("v11"),
        &work,
    );
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 101, "{err:?}");
    assert_eq!(
        std::fs::read_to_string(&deployed).unwrap(),
        "v1.2.3\n",
        "only the approved run ran"
    );
    // A token the gateway does not accept: 104, nothing ran.
    let bad = vec![("BAD", "not-a-token".to_string())];
    let mut args = vec![
        "--token-env",
        "BAD",
        "--resource",
        "deploy://staging/api",
        "--",
    ];
    args.extend_from_slice(&deploy("bad"));
    let (code, _, err) = step(&g, &bad, &args, &work).finish(60);
    assert_eq!(code, 104, "{err:?}");
    // A program that is not there: 127 before anything is submitted
    // (approved while absent, whatever appeared under its name would run).
    let s = gh_step(
        &g,
        &iss,
        "deploy://staging/api",
        "run",
        &[],
        &["/nonexistent/deploy"],
        &work,
    );
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 127, "{err:?}");
    assert!(
        err.iter()
            .any(|l| l.contains("nothing was submitted or run")),
        "{err:?}"
    );
    assert!(
        !common::log_entries(&g)
            .iter()
            .any(|e| e.to_string().contains("/nonexistent/deploy")),
        "nothing was submitted"
    );
    assert_eq!(std::fs::read_to_string(&deployed).unwrap(), "v1.2.3\n");
    // --help documents the exit codes.
    let (code, out, _) = run_cli(&["exec", "--help"], &g.url, None);
    assert_eq!(code, 0);
    for c in ["100", "101", "102", "103", "104", "127"] {
        assert!(out.contains(c), "{out}");
    }
    // A usage error exits 2, as --help and docs/exec.md say, before
    // anything is submitted.
    let (code, _, err) = run_cli(
        &["exec", "--bogus", "--resource", "x", "--", "true"],
        &g.url,
        None,
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cli(&["exec", "--", "true"], &g.url, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--resource"), "{err}");
}

/// The approval binds the program that runs and the `--bind` files by
/// their SHA-256: a script changed after the request no longer matches
/// (a new request), and one changed while held does not run under the
/// approval. A re-run of the job (a new attempt) with nothing changed
/// goes on with the same request and uses its approval.
#[test]
fn exec_binds_the_program_and_files_and_a_rerun_uses_the_approval() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (iss, g) = ci_gateway(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let ran = work.join("ran.log");
    let script = work.join("deploy.sh");
    let write_script = |tag: &str| {
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho {tag} \"$1\" >> {}\n", ran.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_script("v1");
    let manifest = work.join("app.yaml");
    std::fs::write(&manifest, "replicas: 2\n").unwrap();
    let prod = "deploy://prod/api";
    let attempt = |n: &str, extra: &[&str]| {
        let mut env = github_env(&iss);
        env.push(("GITHUB_RUN_ATTEMPT", n.to_string()));
        let mut args = vec![
            "--oidc-audience",
            "secondkey",
            "--resource",
            prod,
            "--operation",
            "deploy",
            "--bind",
            "app.yaml",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "./deploy.sh", "r1"]);
        step(&g, &env, &args, &work)
    };

    // Attempt 1 waits too briefly: 102, pending.
    let mut s = attempt("1", &["--wait-timeout", "2s"]);
    let first = request_id(&s.wait_line("held for review as request"));
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 102, "{err:?}");
    let (_, req) = g.call(
        "GET",
        &format!("/v1/requests/{first}"),
        Some("user:bob"),
        None,
    );
    let params = &req["action"]["params"];
    assert_eq!(
        params["program"]["path"],
        script.canonicalize().unwrap().to_str().unwrap(),
        "{req}"
    );
    assert_eq!(
        params["program"]["sha256"],
        hex::encode(Sha256::digest(std::fs::read(&script).unwrap())),
        "{req}"
    );
    assert_eq!(
        params["files"][manifest.to_str().unwrap()],
        hex::encode(Sha256::digest(b"replicas: 2\n")),
        "{req}"
    );
    let (st, v) = g.review("user:bob", &first, "approve");
    assert_eq!(st, 200, "{v}");

    // The script changed since: attempt 2 is a new action, held anew.
    write_script("v2");
    let mut s = attempt("2", &["--wait-timeout", "2s"]);
    let second = request_id(&s.wait_line("held for review as request"));
    assert_ne!(second, first, "a changed script is another action");
    assert_eq!(s.finish(60).0, 102);
    assert!(!ran.exists(), "nothing ran");

    // Restored, a re-run (attempt 3) is the approved action: it runs once.
    write_script("v1");
    let (code, _, err) = attempt("3", &[]).finish(60);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "v1 r1\n");
    let (_, req) = g.call(
        "GET",
        &format!("/v1/requests/{first}"),
        Some("user:bob"),
        None,
    );
    assert_eq!(req["state"], "executed", "{req}");

    // Changed while held: the approval is used up, the command does not
    // run (103), and the result says why.
    let mut s = attempt("4", &[]);
    let third = request_id(&s.wait_line("held for review as request"));
    std::fs::write(&manifest, "replicas: 200\n").unwrap();
    let (st, v) = g.review("user:bob", &third, "approve");
    assert_eq!(st, 200, "{v}");
    let (code, _, err) = s.finish(60);
    assert_eq!(code, 103, "{err:?}");
    assert!(
        err.last()
            .unwrap()
            .contains("app.yaml changed since it was submitted"),
        "{err:?}"
    );
    // …and never said it was running it.
    assert!(!err.iter().any(|l| l.contains("running")), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "v1 r1\n",
        "ran once in all"
    );
    let detail = g.wait_log("the refused run's result", |e| {
        e["event"] == "action.result.detail" && e["subjects"]["request"] == third.as_str()
    });
    assert_eq!(detail["payload"]["ok"], false, "{detail}");
    assert_eq!(detail["payload"]["summary"]["ran"], false, "{detail}");

    // A --bind file that cannot be read: 104 before anything is submitted.
    let (code, _, err) = attempt("5", &["--bind", "missing.yaml"]).finish(60);
    assert_eq!(code, 104, "{err:?}");
    assert!(err.last().unwrap().contains("missing.yaml"), "{err:?}");
}

/// A token never goes over plain `http://` to another machine: `exec`,
/// `action submit` and `mcp stdio` refuse such a URL before sending
/// anything, and `SECONDKEY_ALLOW_INSECURE_HTTP=1` lets it through (here to
/// a port nothing listens on, so the next error is "cannot reach").
#[test]
fn a_token_never_goes_over_plain_http_off_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let action = dir.path().join("action.json");
    std::fs::write(
        &action,
        r#"{"kind":"sql","operation":"read","resource":"postgres://a/b"}"#,
    )
    .unwrap();
    let action = action.to_str().unwrap();
    let run = |url: &str, opt_in: bool, args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SECONDKEY_URL", url)
            .env("SECONDKEY_TOKEN", "tok")
            .env_remove("SECONDKEY_ALLOW_INSECURE_HTTP")
            .current_dir(dir.path())
            .stdin(Stdio::null());
        if opt_in {
            c.env("SECONDKEY_ALLOW_INSECURE_HTTP", "1");
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let commands: [&[&str]; 3] = [
        &["exec", "--resource", "deploy://prod/api", "--", "true"],
        &["action", "submit", action],
        &["mcp", "stdio", "--server", "s", "--", "true"],
    ];
    for cmd in commands {
        // 0.0.0.0 is not loopback by name; nothing listens on port 9 there.
        let (code, err) = run("http://0.0.0.0:9", false, cmd);
        assert_ne!(code, Some(0), "{cmd:?}: {err}");
        assert!(
            err.contains("refusing to send the token over plain http://"),
            "{cmd:?}: {err}"
        );
        assert!(
            err.contains("SECONDKEY_ALLOW_INSECURE_HTTP=1"),
            "{cmd:?}: {err}"
        );
        let (_, err) = run("http://0.0.0.0:9", true, cmd);
        assert!(
            !err.contains("refusing to send the token"),
            "{cmd:?}: {err}"
        );
    }
    let (code, err) = run("http://0.0.0.0:9", false, commands[0]);
    assert_eq!(code, Some(104), "{err}");
    // Loopback by address passes the check (and then finds nothing there).
    let (_, err) = run("http://127.0.0.1:9", false, commands[1]);
    assert!(!err.contains("refusing"), "{err}");
    assert!(err.contains("cannot reach the gateway"), "{err}");
    // The gateway's address is said once, not again in the transport error.
    assert_eq!(err.matches("127.0.0.1:9").count(), 1, "{err}");
}
