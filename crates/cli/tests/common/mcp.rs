//! What the MCP black-box tests share (`mcp.rs`, `mcp_http.rs`): the
//! policies, the Python test servers and starting them as HTTP upstreams.
//! Included with `#[path = "common/mcp.rs"] mod mcp_common;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

pub const MCP_POLICIES: &str = r#"
@id("agents-read") permit(principal in Group::"agents", action == Action::"mcp.read", resource);
@id("agents-call") permit(principal in Group::"agents", action == Action::"mcp.call", resource);
@id("agents-export") permit(principal in Group::"agents", action == Action::"mcp.export", resource);
@id("export-needs-review")
@review("data-owners")
forbid(principal, action == Action::"mcp.export", resource);
@id("no-destructive-tools") forbid(principal, action == Action::"mcp.delete", resource);
"#;

pub fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mcp/tests/python")
}

pub fn require_python_mcp() {
    let ok = Command::new("python3")
        .args(["-c", "import mcp, httpx2"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need the official MCP Python SDK: run `python3 -m pip install mcp` (./scripts/test does)"
    );
}

/// A Python MCP server over Streamable HTTP, killed when dropped.
pub struct Upstream {
    pub child: Child,
    pub port: u16,
    pub url: String,
    /// One JSON line per HTTP request the server received (its headers).
    pub headers: PathBuf,
}

impl Upstream {
    /// HTTP requests the server has received so far.
    pub fn requests_seen(&self) -> usize {
        std::fs::read_to_string(&self.headers)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Waits for the server process to exit (it crashed or was told to).
    pub fn wait_exited(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the upstream did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SDK test server (`test_server.py`) with a bearer token required.
pub fn upstream(dir: &Path, runs: &Path) -> Upstream {
    upstream_with(
        dir,
        "test_server.py",
        &[
            ("MCP_TEST_RUNS", runs.to_str().unwrap()),
            ("MCP_TEST_UPSTREAM_TOKEN", "upstream-secret"),
        ],
        None,
    )
}

/// `script` (in `crates/mcp/tests/python`) as `script http PORT`, with
/// `env`, on `port` (a free one if `None`: pass the old one to restart).
pub fn upstream_with(
    dir: &Path,
    script: &str,
    env: &[(&str, &str)],
    port: Option<u16>,
) -> Upstream {
    let port = port.unwrap_or_else(free_port);
    let headers = dir.join("upstream-headers.jsonl");
    let child = Command::new("python3")
        .arg(python().join(script))
        .args(["http", &port.to_string()])
        .envs(env.iter().copied())
        .env("MCP_TEST_HEADERS", &headers)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the upstream MCP server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Upstream {
        child,
        port,
        url: format!("http://127.0.0.1:{port}/mcp"),
        headers,
    }
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`: resident now,
/// `VmHWM`: the peak resident set since the process started).
pub fn proc_mem(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        * 1024
}

pub const MB: u64 = 1_000_000;

/// Asserts that process `pid` never held more than `bound` bytes resident
/// (its peak, `VmHWM`, covers the whole test so far); returns the peak.
pub fn assert_peak_rss_under(pid: u32, bound: u64, what: &str) -> u64 {
    let peak = proc_mem(pid, "VmHWM");
    let now = proc_mem(pid, "VmRSS");
    eprintln!("{what}: peak RSS {} MB, now {} MB", peak / MB, now / MB);
    assert!(
        peak < bound,
        "{what}: the peak RSS was {} MB, over the {} MB bound",
        peak / MB,
        bound / MB
    );
    peak
}
