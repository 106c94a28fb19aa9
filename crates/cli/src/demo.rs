//! `secondkey demo`: a gateway on an embedded store with sample policies and
//! principals, and a scripted agent that does an allowed read, a denied
//! destructive action and an export that needs two approvals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use secondkey_server::auth::token_sha256_hex as sha;
use serde_json::{json, Value};

use crate::client::{failure_code, Client};

/// The sample policies, shared with the docs (`examples/policies`).
const POLICIES: &[(&str, &str)] = &[
    (
        "access.cedar",
        include_str!("../../../examples/policies/access.cedar"),
    ),
    (
        "guardrails.cedar",
        include_str!("../../../examples/policies/guardrails.cedar"),
    ),
    (
        "reviews.cedar",
        include_str!("../../../examples/policies/reviews.cedar"),
    ),
    (
        "demo.tests.toml",
        include_str!("../../../examples/policies/demo.tests.toml"),
    ),
];

#[derive(Args)]
pub struct DemoArgs {
    /// Approve as the two reviewers automatically (no interaction).
    #[arg(long)]
    auto_approve: bool,
    /// Where the gateway listens (a free port is chosen if this one is busy).
    #[arg(long, default_value = "127.0.0.1:8750")]
    listen: String,
    /// Keep the data here instead of a fresh temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn token() -> Result<String> {
    let mut b = [0u8; 18];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(format!("sk_{}", hex::encode(b)))
}

struct People {
    bot: String,
    alice: String,
    bob: String,
    carol: String,
}

fn say(step: &str, text: &str) {
    // Bold on a terminal only: piped or captured output stays plain text.
    let (bold, plain) = match std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        true => ("\x1b[1m", "\x1b[0m"),
        false => ("", ""),
    };
    println!("\n{bold}[{step}]{plain} {text}");
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            let mut b = [0u8; 6];
            getrandom::getrandom(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
            std::env::temp_dir().join(format!("secondkey-demo-{}", hex::encode(b)))
        }
    };
    let policy_dir = dir.join("policies");
    std::fs::create_dir_all(&policy_dir)
        .with_context(|| format!("cannot create {}", policy_dir.display()))?;
    for (name, text) in POLICIES {
        std::fs::write(policy_dir.join(name), text)?;
    }
    let people = People {
        bot: token()?,
        alice: token()?,
        bob: token()?,
        carol: token()?,
    };
    let listen = match std::net::TcpListener::bind(&args.listen) {
        Ok(l) => {
            drop(l);
            args.listen.clone()
        }
        Err(_) => "127.0.0.1:0".to_string(),
    };
    let config_text = format!(
        r#"listen = "{listen}"
data_dir = "{data}"
policy_dir = "{policies}"

[log]
origin = "demo.secondkey.local/log"

[[environments]]
name = "prod"
resources = ["postgres://analytics/*"]

[[principals]]
id = "agent:report-bot"
owner = "user:alice"
groups = ["agents"]
# Backs the `on_behalf_of` its actions carry (otherwise only declared).
may_act_for = ["user:alice"]
token_sha256 = "{bot}"

[[principals]]
id = "user:alice"
groups = ["data-owners", "analysts"]
token_sha256 = "{alice}"

[[principals]]
id = "user:bob"
groups = ["data-owners", "dba"]
token_sha256 = "{bob}"

[[principals]]
id = "user:carol"
groups = ["data-owners", "security", "auditors"]
token_sha256 = "{carol}"
"#,
        data = dir.join("data").display(),
        policies = policy_dir.display(),
        bot = sha(&people.bot),
        alice = sha(&people.alice),
        bob = sha(&people.bob),
        carol = sha(&people.carol),
    );
    let config_path = dir.join("secondkey.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = secondkey_server::Config::load(&config_path, &Default::default())?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let running = rt.block_on(secondkey_server::start(config))?;
    let url = format!("http://{}", running.addr);
    println!("secondkey demo: a gateway is running at {url}");
    println!("  data, policies and config: {}", dir.display());
    let auto = args.auto_approve;
    let cfg_path = config_path.clone();
    let result = std::thread::spawn(move || script(&url, &people, auto, &cfg_path))
        .join()
        .map_err(|_| anyhow!("the demo agent crashed"))?;
    let stop = rt.block_on(running.stop());
    let checkpoint = result?;
    stop?;
    say("7/7", "the audit log verifies; its signed checkpoint:");
    print!("{checkpoint}");
    println!(
        "\ndone. The demo's gateway has stopped; its data stays in {}. Read the log with `secondkey log export --config {}`, or start the gateway again with `secondkey serve --config {}` to try the commands above.",
        dir.display(),
        config_path.display(),
        config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn action(op: &str, resource: &str, justification: &str, extra: Value) -> Value {
    let mut a = json!({
        "kind": "sql",
        "operation": op,
        "resource": resource,
        "justification": justification,
        "on_behalf_of": "user:alice",
        "context": {"environment": "prod", "model": "demo-model-1"},
    });
    if let (Some(obj), Some(more)) = (a.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    a
}

/// The scripted agent. Returns the final signed checkpoint.
fn script(url: &str, p: &People, auto: bool, config: &std::path::Path) -> Result<String> {
    let bot = Client::new(url, Some(p.bot.clone()));
    let exe = std::env::current_exe()
        .map(|e| e.display().to_string())
        .unwrap_or_else(|_| "secondkey".into());

    say(
        "1/7",
        "agent:report-bot (owned by user:alice) reads yesterday's orders",
    );
    let read = action(
        "read",
        "postgres://analytics/public.orders",
        "daily revenue report",
        json!({"params": {"statement": "SELECT sum(total) FROM orders WHERE day = current_date - 1"},
               "lineage": {"reads": ["postgres://analytics/public.orders"], "writes": []}}),
    );
    let r = bot.post("/v1/actions", &read)?;
    println!(
        "  decision: {}  (policy: {})",
        r["decision"].as_str().unwrap_or("?"),
        reasons(&r)
    );
    if r["decision"] != "allow" {
        bail!("expected the read to be allowed, got {r}");
    }
    let used = bot.post(
        "/v1/grants/consume",
        &json!({"grant": r["grant"], "digest": r["digest"]}),
    )?;
    println!("  grant used once: {}", used["consumed"]);

    say("2/7", "the agent tries to drop a production table");
    let drop = action(
        "ddl",
        "postgres://analytics/public.customers",
        "cleanup",
        json!({"params": {"statement": "DROP TABLE customers"}}),
    );
    let r = bot.post("/v1/actions", &drop)?;
    println!(
        "  decision: {}  (policy: {})",
        r["decision"].as_str().unwrap_or("?"),
        reasons(&r)
    );
    if r["decision"] != "deny" {
        bail!("expected the drop to be denied, got {r}");
    }

    say(
        "3/7",
        "the agent exports the customer table: two data owners must approve",
    );
    let export = action(
        "export",
        "postgres://analytics/public.customers",
        "quarterly churn analysis for the board",
        json!({"params": {"statement": "COPY customers TO STDOUT", "format": "csv"},
               "context": {"environment": "prod", "model": "demo-model-1", "estimated_rows": 120000},
               "lineage": {"reads": ["postgres://analytics/public.customers"], "writes": ["s3://reports/churn.csv"]}}),
    );
    let r = bot.post("/v1/actions", &export)?;
    println!(
        "  decision: {}  (policy: {})",
        r["decision"].as_str().unwrap_or("?"),
        reasons(&r)
    );
    let id = r["request"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("expected a review request, got {r}"))?
        .to_string();
    let digest = r["digest"].as_str().unwrap_or_default().to_string();
    println!(
        "  request {id}  ({})",
        r["request"]["url"].as_str().unwrap_or("")
    );
    println!("  the agent now waits; it resumes the moment quorum is reached.");

    say("4/7", "approve it as two different reviewers:");
    println!(
        "  {exe} request approve {id} --url {url} --token {}   # user:bob",
        p.bob
    );
    println!(
        "  {exe} request approve {id} --url {url} --token {}   # user:carol",
        p.carol
    );
    println!("  (user:alice owns the agent, so her approval is refused — try it:)");
    println!(
        "  {exe} request approve {id} --url {url} --token {}   # user:alice",
        p.alice
    );

    if auto {
        let alice = Client::new(url, Some(p.alice.clone()));
        let bob = Client::new(url, Some(p.bob.clone()));
        let carol = Client::new(url, Some(p.carol.clone()));
        let approve = json!({"decision": "approve", "comment": "scope checked"});
        let path = format!("/v1/requests/{id}/reviews");
        let e = alice
            .post(&path, &approve)
            .err()
            .ok_or_else(|| anyhow!("alice's approval was accepted!"))?;
        println!(
            "  user:alice approves  -> refused: {}",
            failure_code(&e).unwrap_or("?")
        );
        bob.post(&path, &approve)?;
        println!("  user:bob approves    -> 1 of 2");
        let e = bob
            .post(&path, &approve)
            .err()
            .ok_or_else(|| anyhow!("bob counted twice!"))?;
        println!(
            "  user:bob again       -> refused: {}",
            failure_code(&e).unwrap_or("?")
        );
        let carol_bg = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            carol.post(&path, &approve)
        });
        let r = wait(&bot, &id)?;
        carol_bg
            .join()
            .map_err(|_| anyhow!("reviewer thread crashed"))??;
        println!("  user:carol approves  -> 2 of 2");
        finish(&bot, &id, &digest, r)?;
    } else {
        let r = wait(&bot, &id)?;
        finish(&bot, &id, &digest, r)?;
    }

    say("6/7", "verifying the audit log offline");
    let checkpoint = bot.get_text("/v1/log/checkpoint")?;
    let vkey: secondkey_log::note::Verifier = bot
        .get_text("/v1/log/verifier-key")?
        .trim()
        .parse()
        .map_err(|e| anyhow!("verifier key: {e}"))?;
    let tmp = std::env::temp_dir().join(format!("secondkey-demo-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // Entry bundles hold the actions: an auditor's token reads them.
    let auditor = Client::new(url, Some(p.carol.clone()));
    crate::logcmd::fetch_bundle(&auditor, &checkpoint, &tmp)?;
    let report = secondkey_log::bundle::verify_bundle(&tmp, &vkey, None)
        .map_err(|e| anyhow!("the log does not verify: {e}"))?;
    println!("  {}", crate::describe(&report));
    println!("  an auditor does the same with: secondkey log export --config {} --bundle ./audit && secondkey log verify --bundle ./audit --key '{vkey}'", config.display());
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(checkpoint)
}

fn reasons(r: &Value) -> String {
    r["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["policy"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none matched".into())
}

fn wait(bot: &Client, id: &str) -> Result<Value> {
    loop {
        let r = bot.get(&format!("/v1/requests/{id}?wait=30"))?;
        match r["state"].as_str() {
            Some("pending") => continue,
            _ => return Ok(r),
        }
    }
}

fn finish(bot: &Client, id: &str, digest: &str, r: Value) -> Result<()> {
    say(
        "5/7",
        &format!("request {id} is {}", r["state"].as_str().unwrap_or("?")),
    );
    if r["state"] != "approved" {
        bail!(
            "the export was not approved ({}); the agent stops here",
            r["state"]
        );
    }
    let grant = r["grant"].clone();
    let used = bot.post(
        "/v1/grants/consume",
        &json!({"grant": grant, "digest": digest}),
    )?;
    println!(
        "  the agent uses its grant once: approvers {}",
        used["approvers"]
    );
    let again = bot.post(
        "/v1/grants/consume",
        &json!({"grant": grant, "digest": digest}),
    );
    match again {
        Err(e) => println!(
            "  using it a second time -> refused: {}",
            failure_code(&e).unwrap_or("?")
        ),
        Ok(_) => bail!("a grant was accepted twice"),
    }
    Ok(())
}
