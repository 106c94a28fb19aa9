//! `secondkey mcp …`: put secondkey in front of an MCP server over stdio,
//! and manage pinned tool definitions. Thin: the work is in `secondkey-mcp`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::{print_json, Remote};

#[derive(Subcommand)]
pub enum McpCmd {
    /// Run an MCP server over stdio behind secondkey: put this command where
    /// the client expects the server's, and the server's after `--`.
    #[command(
        after_help = "Example (in a client's mcpServers entry):\n  secondkey mcp stdio --server warehouse --url http://127.0.0.1:8750 --token-env SECONDKEY_TOKEN \\\n      -- python3 warehouse_server.py"
    )]
    Stdio(StdioArgs),
    /// Pinned tool definitions.
    #[command(subcommand)]
    Tools(ToolsCmd),
}

#[derive(Args)]
pub struct StdioArgs {
    /// The server's name in resources (`mcp://NAME/<tool>`) and pins.
    #[arg(long)]
    server: String,
    /// The gateway's base URL (default: the config file's `url`, else
    /// http://127.0.0.1:8750).
    #[arg(long, env = "SECONDKEY_URL")]
    url: Option<String>,
    /// The environment variable that holds the agent's gateway token
    /// (default: the config file's `token_env`, else SECONDKEY_TOKEN).
    #[arg(long)]
    token_env: Option<String>,
    /// A TOML file with `url`, `token_env` and an `[mcp]` section.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The real server's command and arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
pub enum ToolsCmd {
    /// Pinned tools, and changed definitions waiting for acceptance.
    #[command(after_help = "Example:\n  secondkey mcp tools list --server warehouse")]
    List {
        /// Only this server's tools (its name in `[[mcp.servers]]`).
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Accept a changed tool definition (a human in `mcp.tool_admins`).
    #[command(
        after_help = "Example:\n  secondkey mcp tools accept --server warehouse --tool delete_customer --fingerprint 3f…"
    )]
    Accept {
        /// The server's name (in `[[mcp.servers]]`, or `--server` of `mcp stdio`).
        #[arg(long)]
        server: String,
        /// The tool's name.
        #[arg(long)]
        tool: String,
        /// The new definition's fingerprint (from the held call's message or `tools list`).
        #[arg(long)]
        fingerprint: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn run(cmd: McpCmd) -> Result<ExitCode> {
    match cmd {
        McpCmd::Stdio(a) => stdio(a),
        McpCmd::Tools(ToolsCmd::List { server, remote }) => {
            let path = match &server {
                Some(s) => format!("/v1/mcp/pins?server={}", query_escape(s)),
                None => "/v1/mcp/pins".to_string(),
            };
            let v = remote.client()?.get(&path)?;
            let pins = v.as_array().cloned().unwrap_or_default();
            if pins.is_empty() {
                // Said on stderr: stdout stays the list (empty).
                eprintln!(
                    "no pinned tools{}: a server's tools are pinned when they are first listed through the gateway",
                    server
                        .as_deref()
                        .map(|s| format!(" for server {s:?}"))
                        .unwrap_or_default()
                );
            }
            for p in pins {
                println!(
                    "{}/{}  {}{}",
                    p["server"].as_str().unwrap_or("?"),
                    p["tool"].as_str().unwrap_or("?"),
                    p["fingerprint"].as_str().unwrap_or("?"),
                    match p["changed"]["fingerprint"].as_str() {
                        Some(f) => format!(
                            "  CHANGED to {f} (seen {}), waiting for acceptance",
                            p["changed"]["seen_at"].as_str().unwrap_or("?")
                        ),
                        None => String::new(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        McpCmd::Tools(ToolsCmd::Accept {
            server,
            tool,
            fingerprint,
            remote,
        }) => {
            let v = remote.client()?.post(
                "/v1/mcp/pins/accept",
                &json!({"server": server, "tool": tool, "fingerprint": fingerprint}),
            )?;
            print_json(&v);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stdio(a: StdioArgs) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let (file_url, file_token_env, config) = match &a.config {
        Some(p) => secondkey_mcp::stdio::load_options_file(p, &env).map_err(|e| anyhow!("{e}"))?,
        None => (
            None,
            None,
            secondkey_mcp::McpConfig::parse(
                None,
                &secondkey_mcp::config::Sources {
                    env: &env,
                    base_dir: std::path::Path::new("."),
                },
            )
            .map_err(|e| anyhow!("{e}"))?,
        ),
    };
    let url = a
        .url
        .or(file_url)
        .unwrap_or_else(|| "http://127.0.0.1:8750".to_string());
    crate::client::check_transport(&url)?;
    // An explicit flag wins over the file, the file over the default.
    let var = a
        .token_env
        .or(file_token_env)
        .unwrap_or_else(|| "SECONDKEY_TOKEN".to_string());
    let token = std::env::var(&var).map_err(|_| {
        anyhow!("no gateway token: set {var} (the agent's secondkey token), or name another variable with --token-env")
    })?;
    let opts = secondkey_mcp::stdio::Options {
        server: a.server,
        url,
        token,
        config,
        command: a.command,
    };
    // One thread: the relay only moves bytes and waits on the gateway, and
    // on a multi-threaded runtime each message hopped between workers
    // (a futex wake-up per hop), which showed in the latency it adds.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(secondkey_mcp::stdio::run_stdio(opts))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved bytes).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_escaped() {
        assert_eq!(super::query_escape("ware-house_1.x~"), "ware-house_1.x~");
        assert_eq!(super::query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
