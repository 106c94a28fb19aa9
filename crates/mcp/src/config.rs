//! The `[mcp]` configuration section, validated here (the gateway keeps it
//! raw). Every error names the full key, e.g. `mcp.servers[0].headers[1].value_env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secondkey_server::config::read_section;
use serde::Deserialize;

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// Longest a held call waits when the client asked for no progress
/// notifications: common clients give up on a silent request after about
/// 60 s, so the answer must come before that.
pub const MAX_SILENT_HOLD: Duration = Duration::from_secs(55);

/// What happens to calls of a tool whose definition changed since it was
/// pinned, until a human accepts the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Wait (like a held call) for a human to accept the new definition.
    Hold,
    /// Refuse at once with a tool error naming the change.
    Deny,
}

/// The validated `[mcp]` section.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Longest wait of a held call without progress notifications.
    pub hold: Duration,
    /// Longest wait of a held call whose client receives progress
    /// notifications (it sees the call is alive).
    pub hold_with_progress: Duration,
    /// How often a held call sends a progress notification.
    pub progress_interval: Duration,
    /// Largest `arguments` object of one `tools/call`, as JSON bytes.
    pub max_argument_bytes: usize,
    /// Largest message a client sends (a stdio line, an HTTP request
    /// body), in bytes.
    pub max_message_bytes: usize,
    /// Largest message a server sends (a stdio line, an HTTP answer body,
    /// one event of an event stream), in bytes.
    pub max_result_bytes: usize,
    /// Most requests one session may have in progress (being decided,
    /// held, or waiting for their answer; either direction).
    pub max_pending_requests: usize,
    /// Most bytes of messages one session may have held in memory while
    /// they are decided.
    pub max_session_bytes: usize,
    /// Most Streamable HTTP sessions the gateway tracks at once.
    pub max_sessions: usize,
    /// Most of them opened by one principal.
    pub max_sessions_per_principal: usize,
    /// A tracked session unused this long (nothing of it in progress) is
    /// ended as its client has left it; one this long unused may be
    /// forgotten at once to make room for a new one when `max_sessions`
    /// is reached. Also how long a first `tasks/result` whose client went
    /// away waits, and how long sessionless task runs wait to be fetched
    /// once their principal is silent.
    pub session_idle: Duration,
    /// Groups whose members may accept a changed tool definition.
    pub tool_admins: Vec<String>,
    pub servers: BTreeMap<String, ServerConfig>,
    /// Defaults for servers not configured (stdio mode names its own).
    pub defaults: ServerConfig,
}

/// One MCP server secondkey fronts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    /// Streamable HTTP upstream (HTTP mode). `None` for stdio-only servers.
    pub url: Option<String>,
    /// Headers added to every upstream request (credentials held by
    /// secondkey: never shown to the client).
    pub headers: Vec<(String, String)>,
    pub on_change: OnChange,
    /// Record the tool result's content in the log (default: status and
    /// size only).
    pub record_content: bool,
    /// Prefix for lineage dataset URIs built from argument values that are
    /// not URIs themselves (default `mcp://<server>/`).
    pub dataset_prefix: String,
    pub tools: BTreeMap<String, ToolConfig>,
}

/// Per-tool settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolConfig {
    /// Overrides the operation derived from the tool's annotations.
    pub operation: Option<String>,
    /// Argument paths (`table`, `source.path`) whose values it reads.
    pub reads: Vec<String>,
    /// Argument paths whose values it writes.
    pub writes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    hold_seconds: Option<u64>,
    hold_with_progress_seconds: Option<u64>,
    progress_interval_seconds: Option<u64>,
    max_argument_bytes: Option<usize>,
    max_message_bytes: Option<usize>,
    max_result_bytes: Option<usize>,
    max_pending_requests: Option<usize>,
    max_session_bytes: Option<usize>,
    max_sessions: Option<usize>,
    max_sessions_per_principal: Option<usize>,
    session_idle_seconds: Option<u64>,
    #[serde(default)]
    tool_admins: Option<Vec<String>>,
    on_definition_change: Option<OnChange>,
    record_content: Option<bool>,
    #[serde(default)]
    servers: Vec<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    url: Option<String>,
    #[serde(default)]
    headers: Vec<RawHeader>,
    on_definition_change: Option<OnChange>,
    record_content: Option<bool>,
    dataset_prefix: Option<String>,
    #[serde(default)]
    tools: BTreeMap<String, RawTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value_env: Option<String>,
    value_file: Option<PathBuf>,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    operation: Option<String>,
    #[serde(default)]
    reads: Vec<String>,
    #[serde(default)]
    writes: Vec<String>,
}

/// Where `*_env` and `*_file` keys are looked up.
pub struct Sources<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub base_dir: &'a Path,
}

/// Whether `s` is an operation word (`[a-z][a-z0-9_-]{0,31}`, as the
/// action contract requires).
pub fn is_word(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z'))
        && s.len() <= 32
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Server names appear in resources (`mcp://<server>/<tool>`) and routes
/// (`/mcp/<server>`): keep them to a safe alphabet.
pub fn is_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

const HOP_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "transfer-encoding",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

impl McpConfig {
    /// Parses the raw `[mcp]` section (`None`: no section, all defaults).
    pub fn parse(raw: Option<&toml::Value>, src: &Sources<'_>) -> Result<McpConfig, ConfigError> {
        let raw: RawMcp = match raw {
            None => RawMcp::default(),
            Some(v) => read_section(v, "mcp").map_err(|(k, m)| bad(k, m))?,
        };
        let hold = Duration::from_secs(raw.hold_seconds.unwrap_or(50));
        if hold > MAX_SILENT_HOLD || hold.is_zero() {
            return Err(bad(
                "mcp.hold_seconds",
                format!(
                    "must be 1 to {} (clients give up on a silent call after about a minute)",
                    MAX_SILENT_HOLD.as_secs()
                ),
            ));
        }
        let hold_with_progress = Duration::from_secs(raw.hold_with_progress_seconds.unwrap_or(300));
        if hold_with_progress < hold || hold_with_progress > Duration::from_secs(3600) {
            return Err(bad(
                "mcp.hold_with_progress_seconds",
                "must be at least hold_seconds and at most 3600",
            ));
        }
        let progress_interval = Duration::from_secs(raw.progress_interval_seconds.unwrap_or(5));
        if progress_interval.is_zero() || progress_interval > Duration::from_secs(30) {
            return Err(bad("mcp.progress_interval_seconds", "must be 1 to 30"));
        }
        let max_argument_bytes = raw.max_argument_bytes.unwrap_or(32 * 1024);
        // The arguments travel inside the action, which must fit in one
        // audit-log entry.
        let action_limit = secondkey_server::gateway::MAX_ACTION_BYTES - 4096;
        if max_argument_bytes == 0 || max_argument_bytes > action_limit {
            return Err(bad(
                "mcp.max_argument_bytes",
                format!("must be 1 to {action_limit} (the arguments are logged with the action)"),
            ));
        }
        let max_message_bytes = raw.max_message_bytes.unwrap_or(4 * 1024 * 1024);
        if max_message_bytes < max_argument_bytes + 1024 || max_message_bytes > 64 * 1024 * 1024 {
            return Err(bad(
                "mcp.max_message_bytes",
                "must exceed max_argument_bytes by 1 KiB and be at most 64 MiB",
            ));
        }
        let max_result_bytes = raw
            .max_result_bytes
            .unwrap_or_else(|| max_message_bytes.saturating_mul(4).max(64 * 1024));
        if !(64 * 1024..=256 * 1024 * 1024).contains(&max_result_bytes) {
            return Err(bad("mcp.max_result_bytes", "must be 64 KiB to 256 MiB"));
        }
        let max_pending_requests = raw.max_pending_requests.unwrap_or(100);
        if !(1..=10_000).contains(&max_pending_requests) {
            return Err(bad("mcp.max_pending_requests", "must be 1 to 10000"));
        }
        let max_session_bytes = raw
            .max_session_bytes
            .unwrap_or_else(|| max_message_bytes.saturating_mul(8).max(max_result_bytes));
        if max_session_bytes < max_message_bytes.max(max_result_bytes)
            || max_session_bytes > 4 * 1024 * 1024 * 1024
        {
            return Err(bad(
                "mcp.max_session_bytes",
                "must be at least max_message_bytes and max_result_bytes (one message of either fits) and at most 4 GiB",
            ));
        }
        let max_sessions = raw.max_sessions.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_sessions) {
            return Err(bad("mcp.max_sessions", "must be 1 to 1000000"));
        }
        let max_sessions_per_principal = raw
            .max_sessions_per_principal
            .unwrap_or_else(|| max_sessions.min(1000));
        if max_sessions_per_principal == 0 || max_sessions_per_principal > max_sessions {
            return Err(bad(
                "mcp.max_sessions_per_principal",
                "must be 1 to max_sessions",
            ));
        }
        let session_idle = Duration::from_secs(raw.session_idle_seconds.unwrap_or(3600));
        if session_idle.is_zero() || session_idle > Duration::from_secs(7 * 86_400) {
            return Err(bad(
                "mcp.session_idle_seconds",
                "must be 1 to 604800 (a week)",
            ));
        }
        let default_on_change = raw.on_definition_change.unwrap_or(OnChange::Hold);
        let default_record = raw.record_content.unwrap_or(false);
        let mut servers = BTreeMap::new();
        for (i, s) in raw.servers.into_iter().enumerate() {
            let key = |k: &str| format!("mcp.servers[{i}].{k}");
            if !is_server_name(&s.name) {
                return Err(bad(key("name"), "use 1 to 64 of A-Z a-z 0-9 - _ ."));
            }
            if servers.contains_key(&s.name) {
                return Err(bad(
                    key("name"),
                    format!("{:?} is configured twice", s.name),
                ));
            }
            if let Some(u) = &s.url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(bad(key("url"), "must be an http:// or https:// URL"));
                }
            }
            let mut headers = Vec::new();
            for (j, h) in s.headers.into_iter().enumerate() {
                let hk = |k: &str| format!("mcp.servers[{i}].headers[{j}].{k}");
                let lname = h.name.to_ascii_lowercase();
                if h.name.is_empty()
                    || !h
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(bad(hk("name"), "not a valid HTTP header name"));
                }
                if HOP_HEADERS.contains(&lname.as_str()) {
                    return Err(bad(
                        hk("name"),
                        format!("{} is set by the MCP transport itself", h.name),
                    ));
                }
                let value = match (&h.value_env, &h.value_file) {
                    (Some(var), None) => (src.env)(var).ok_or_else(|| {
                        bad(hk("value_env"), format!("environment variable {var} is not set"))
                    })?,
                    (None, Some(file)) => {
                        let p = if file.is_absolute() {
                            file.clone()
                        } else {
                            src.base_dir.join(file)
                        };
                        std::fs::read_to_string(&p)
                            .map_err(|e| bad(hk("value_file"), format!("{}: {e}", p.display())))?
                            .trim_end_matches(['\r', '\n'])
                            .to_string()
                    }
                    _ => {
                        return Err(bad(
                            hk("value_env"),
                            "set exactly one of value_env or value_file (secrets stay out of the config file)",
                        ))
                    }
                };
                let full = format!("{}{value}", h.prefix);
                if full.chars().any(|c| c.is_control()) {
                    return Err(bad(
                        hk("value_env"),
                        "the value contains control characters",
                    ));
                }
                headers.push((h.name, full));
            }
            let mut tools = BTreeMap::new();
            for (name, t) in s.tools {
                let tk = |k: &str| format!("mcp.servers[{i}].tools.{name}.{k}");
                if let Some(op) = &t.operation {
                    if !is_word(op) {
                        return Err(bad(
                            tk("operation"),
                            "a lowercase word such as read, write, delete, export",
                        ));
                    }
                }
                for (k, paths) in [("reads", &t.reads), ("writes", &t.writes)] {
                    if let Some(p) = paths.iter().find(|p| !valid_path(p)) {
                        return Err(bad(
                            tk(k),
                            format!(
                                "{p:?} is not an argument path (e.g. `table` or `source.path`)"
                            ),
                        ));
                    }
                }
                tools.insert(
                    name,
                    ToolConfig {
                        operation: t.operation,
                        reads: t.reads,
                        writes: t.writes,
                    },
                );
            }
            let name = s.name.clone();
            servers.insert(
                s.name,
                ServerConfig {
                    url: s.url,
                    headers,
                    on_change: s.on_definition_change.unwrap_or(default_on_change),
                    record_content: s.record_content.unwrap_or(default_record),
                    dataset_prefix: s.dataset_prefix.unwrap_or_else(|| format!("mcp://{name}/")),
                    tools,
                    name,
                },
            );
        }
        Ok(McpConfig {
            hold,
            hold_with_progress,
            progress_interval,
            max_argument_bytes,
            max_message_bytes,
            max_result_bytes,
            max_pending_requests,
            max_session_bytes,
            max_sessions,
            max_sessions_per_principal,
            session_idle,
            tool_admins: raw.tool_admins.unwrap_or_else(|| vec!["security".into()]),
            servers,
            defaults: ServerConfig {
                name: String::new(),
                url: None,
                headers: vec![],
                on_change: default_on_change,
                record_content: default_record,
                dataset_prefix: String::new(),
                tools: BTreeMap::new(),
            },
        })
    }

    /// The settings of server `name`: configured, or the defaults.
    pub fn server(&self, name: &str) -> ServerConfig {
        self.servers
            .get(name)
            .cloned()
            .unwrap_or_else(|| ServerConfig {
                name: name.to_string(),
                dataset_prefix: format!("mcp://{name}/"),
                ..self.defaults.clone()
            })
    }
}

fn valid_path(p: &str) -> bool {
    !p.is_empty() && p.len() <= 256 && p.split('.').all(|seg| !seg.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<McpConfig, ConfigError> {
        let v: toml::Value = toml::from_str(text).unwrap();
        let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        McpConfig::parse(
            v.get("mcp"),
            &Sources {
                env: &env,
                base_dir: Path::new("/nonexistent"),
            },
        )
    }

    #[test]
    fn defaults_and_a_server() {
        let c = parse(
            r#"
            [mcp]
            [[mcp.servers]]
            name = "warehouse"
            url = "http://127.0.0.1:9/mcp"
            headers = [{ name = "Authorization", value_env = "TOKEN", prefix = "Bearer " }]
            [mcp.servers.tools.export_table]
            operation = "export"
            reads = ["table"]
            "#,
        )
        .unwrap();
        assert_eq!(c.hold, Duration::from_secs(50));
        assert_eq!(
            (c.max_message_bytes, c.max_result_bytes, c.max_session_bytes),
            (4 << 20, 16 << 20, 32 << 20),
            "the limits' defaults"
        );
        assert_eq!(
            (
                c.max_pending_requests,
                c.max_sessions,
                c.max_sessions_per_principal
            ),
            (100, 10_000, 1000)
        );
        assert_eq!(c.session_idle, Duration::from_secs(3600));
        let s = c.server("warehouse");
        assert_eq!(
            s.headers,
            vec![("Authorization".into(), "Bearer s3cret".into())]
        );
        assert_eq!(s.tools["export_table"].operation.as_deref(), Some("export"));
        assert_eq!(s.dataset_prefix, "mcp://warehouse/");
        assert_eq!(c.server("other").dataset_prefix, "mcp://other/");
    }

    #[test]
    fn the_smallest_message_limit_loads_with_the_other_limits_at_their_defaults() {
        // `max_message_bytes` may be as low as `max_argument_bytes` + 1 KiB;
        // the result limit's default (4 times it) does not go under its
        // own floor then.
        let c = parse("[mcp]\nmax_argument_bytes = 4096\nmax_message_bytes = 5120\n").unwrap();
        assert_eq!(
            (c.max_message_bytes, c.max_result_bytes, c.max_session_bytes),
            (5120, 64 << 10, 64 << 10)
        );
        let c = parse("[mcp]\nmax_argument_bytes = 1\nmax_message_bytes = 1025\n").unwrap();
        assert_eq!(c.max_result_bytes, 64 << 10);
        let c = parse("[mcp]\nmax_message_bytes = 40000\n").unwrap();
        assert_eq!(c.max_result_bytes, 160_000);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[mcp]\nhold_seconds = 120\n").unwrap_err();
        assert_eq!(e.key, "mcp.hold_seconds");
        let e = parse("[[mcp.servers]]\nname = \"a\"\nheaders = [{ name = \"X\", value_env = \"MISSING\" }]\n")
            .unwrap_err();
        assert_eq!(e.key, "mcp.servers[0].headers[0].value_env");
        let e = parse("[[mcp.servers]]\nname = \"a/b\"\n").unwrap_err();
        assert_eq!(e.key, "mcp.servers[0].name");
        let e = parse(
            "[[mcp.servers]]\nname = \"a\"\n[mcp.servers.tools.t]\noperation = \"Drop Table\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "mcp.servers[0].tools.t.operation");
        let e = parse("[[mcp.servers]]\nname = \"a\"\nheaders = [{ name = \"Mcp-Session-Id\", value_env = \"TOKEN\" }]\n")
            .unwrap_err();
        assert_eq!(e.key, "mcp.servers[0].headers[0].name");
        for (text, key) in [
            ("max_result_bytes = 1000", "mcp.max_result_bytes"),
            ("max_pending_requests = 0", "mcp.max_pending_requests"),
            ("max_session_bytes = 1048576", "mcp.max_session_bytes"),
            ("max_sessions = 0", "mcp.max_sessions"),
            (
                "max_sessions = 5\nmax_sessions_per_principal = 6",
                "mcp.max_sessions_per_principal",
            ),
            ("session_idle_seconds = 0", "mcp.session_idle_seconds"),
        ] {
            assert_eq!(parse(&format!("[mcp]\n{text}\n")).unwrap_err().key, key);
        }
        let e = parse("[mcp]\ntypo = 1\n").unwrap_err();
        assert!(e.message.contains("typo"), "{e}");
    }
}
