//! The `[[postgres]]` configuration sections: one per gateway connection.
//! Every error names the full key (`postgres[0].upstream.password_env`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secondkey_server::config::{read_section, ConfigError};
use serde::Deserialize;

use crate::scram::Verifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: String,
    listen: String,
    /// The database name clients connect to (default: `name`).
    database: Option<String>,
    principals: Vec<String>,
    hold: Option<String>,
    hold_timeout: Option<String>,
    default_schema: Option<String>,
    #[serde(default)]
    pure_functions: Vec<String>,
    #[serde(default)]
    estimate_rows: bool,
    login_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_sessions: Option<usize>,
    max_sessions_per_principal: Option<usize>,
    reserved_sessions: Option<usize>,
    max_message_bytes: Option<usize>,
    max_session_bytes: Option<usize>,
    held_read_bytes: Option<usize>,
    upstream: RawUpstream,
    tls: Option<RawTls>,
    #[serde(default)]
    scram: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    host: String,
    port: Option<u16>,
    database: String,
    user: String,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What happens to a statement that needs review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// The client blocks until the request is decided (or `hold_timeout`).
    Wait,
    /// The client gets an error carrying the request id and retries the
    /// identical statement after approval.
    Retry,
}

/// A password that never prints.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    /// TLS with full verification (certificate chain and host name).
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
}

/// What one connection definition lets clients take, and how long they
/// may take it. Every limit is per `[[postgres]]` entry (one listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A client must finish TLS, startup and authentication within this.
    pub login_timeout: Duration,
    /// A logged-in session with nothing in flight and no traffic either
    /// way for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Client sockets open at once on the listener (logging in or not).
    pub max_connections: usize,
    /// Client sockets open at once from one source IP address.
    pub max_connections_per_address: usize,
    /// Logged-in sessions at once; each holds one upstream connection.
    pub max_sessions: usize,
    /// Logged-in sessions of one principal at once.
    pub max_sessions_per_principal: usize,
    /// Of `max_sessions`, how many only a principal holding no session
    /// may take, so that one agent (or a few) cannot take every slot.
    pub reserved_sessions: usize,
    /// Largest message a client may send; checked from its header, before
    /// any of it is buffered.
    pub max_message_bytes: usize,
    /// What the gateway keeps for one session at once: buffered client
    /// bytes plus the prepared statements and portals it mirrors.
    pub max_session_bytes: usize,
    /// While a statement is held, the most the gateway reads further from
    /// that client; past it the session ends.
    pub held_read_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            login_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_connections: 100,
            max_connections_per_address: 20,
            max_sessions: 50,
            max_sessions_per_principal: 10,
            reserved_sessions: 5,
            max_message_bytes: 32 << 20,
            max_session_bytes: 64 << 20,
            held_read_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub listen: SocketAddr,
    pub database: String,
    pub principals: BTreeSet<String>,
    pub hold: HoldMode,
    pub hold_timeout: Duration,
    pub default_schema: String,
    pub pure_functions: BTreeSet<String>,
    pub estimate_rows: bool,
    pub limits: Limits,
    pub upstream: Upstream,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub scram: HashMap<String, Verifier>,
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Parses the raw `postgres` section. `principals` are the configured
/// secondkey principal ids; `env` the process environment.
pub fn parse(
    value: &toml::Value,
    base: &Path,
    principals: &BTreeSet<String>,
    env: &HashMap<String, String>,
) -> Result<Vec<Connection>, ConfigError> {
    let list = value.as_array().ok_or_else(|| {
        invalid(
            "postgres".into(),
            "must be an array of tables: [[postgres]]",
        )
    })?;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut out: Vec<Connection> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = |k: &str| format!("postgres[{i}].{k}");
        let mut raw: RawConnection =
            read_section(v, &format!("postgres[{i}]")).map_err(|(k, m)| invalid(k, m))?;
        // Principal ids have one spelling: read in lowercase here as
        // everywhere else (docs/identity.md).
        for p in &mut raw.principals {
            p.make_ascii_lowercase();
        }
        raw.principals.sort();
        raw.principals.dedup();
        let mut scram_folded = BTreeMap::new();
        for (p, s) in std::mem::take(&mut raw.scram) {
            let id = p.to_ascii_lowercase();
            if scram_folded.insert(id.clone(), s).is_some() {
                return Err(invalid(
                    key("scram"),
                    format!("{id} has two verifiers; ids are read in lowercase, so letter case never makes two principals"),
                ));
            }
        }
        raw.scram = scram_folded;
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                key("name"),
                "use letters, digits, '-' and '_' (it names the resource postgres://<name>/…)",
            ));
        }
        if out.iter().any(|c| c.name == raw.name) {
            return Err(invalid(
                key("name"),
                format!("{} is configured twice", raw.name),
            ));
        }
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid(
                key("listen"),
                format!("{:?} is not an address like \"127.0.0.1:6432\"", raw.listen),
            )
        })?;
        if raw.principals.is_empty() {
            return Err(invalid(
                key("principals"),
                "name at least one principal that may connect",
            ));
        }
        for p in &raw.principals {
            if !principals.contains(p) {
                return Err(invalid(
                    key("principals"),
                    format!("{p} is not a configured principal"),
                ));
            }
        }
        let hold = match raw.hold.as_deref().unwrap_or("wait") {
            "wait" => HoldMode::Wait,
            "retry" => HoldMode::Retry,
            other => {
                return Err(invalid(
                    key("hold"),
                    format!("{other:?}: use \"wait\" or \"retry\""),
                ))
            }
        };
        let hold_timeout = match &raw.hold_timeout {
            Some(s) => secondkey_core::time::parse_duration(s)
                .map_err(|e| invalid(key("hold_timeout"), e.to_string()))?,
            None => Duration::from_secs(15 * 60),
        };
        if hold_timeout > secondkey_server::config::MAX_HOLD_TIMEOUT {
            return Err(invalid(key("hold_timeout"), "at most 24h"));
        }
        let limits = limits(&raw, &key)?;
        let u = &raw.upstream;
        let password = match (&u.password, &u.password_env, &u.password_file) {
            (None, None, None) => None,
            (Some(p), None, None) => Some(Secret(p.clone())),
            (None, Some(var), None) => Some(Secret(env.get(var).cloned().ok_or_else(|| {
                invalid(
                    key("upstream.password_env"),
                    format!("environment variable {var} is not set"),
                )
            })?)),
            (None, None, Some(f)) => {
                let path = resolve(f);
                let s = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        key("upstream.password_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(Secret(s.trim_end_matches(['\n', '\r']).to_string()))
            }
            _ => {
                return Err(invalid(
                    key("upstream.password"),
                    "set one of password, password_env or password_file",
                ))
            }
        };
        if u.ca_file.is_some() && !u.tls {
            return Err(invalid(
                key("upstream.ca_file"),
                "only used with tls = true",
            ));
        }
        let mut scram = HashMap::new();
        for (p, s) in &raw.scram {
            if !raw.principals.contains(p) {
                return Err(invalid(key("scram"), format!("{p} is not in principals")));
            }
            let v: Verifier = s.parse().map_err(|e: crate::scram::ScramError| {
                invalid(format!("postgres[{i}].scram.\"{p}\""), e.to_string())
            })?;
            scram.insert(p.clone(), v);
        }
        let tls = raw
            .tls
            .as_ref()
            .map(|t| (resolve(&t.cert_file), resolve(&t.key_file)));
        if scram.len() < raw.principals.len() && tls.is_none() {
            return Err(invalid(
                key("scram"),
                "principals without a SCRAM verifier can only log in with their token over TLS: add [postgres.tls] or a verifier (`secondkey pg verifier`)",
            ));
        }
        let default_schema = raw
            .default_schema
            .clone()
            .unwrap_or_else(|| "public".into());
        out.push(Connection {
            database: raw.database.clone().unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            listen,
            principals: raw.principals.into_iter().collect(),
            hold,
            hold_timeout,
            default_schema,
            pure_functions: raw.pure_functions.into_iter().collect(),
            estimate_rows: raw.estimate_rows,
            limits,
            upstream: Upstream {
                host: u.host.clone(),
                port: u.port.unwrap_or(5432),
                database: u.database.clone(),
                user: u.user.clone(),
                password,
                tls: u.tls,
                ca_file: u.ca_file.as_deref().map(resolve),
            },
            tls,
            scram,
        });
    }
    Ok(out)
}

/// The limits of one section, defaults filled in, each checked against
/// the others so that no combination locks everyone out.
fn limits(raw: &RawConnection, key: &dyn Fn(&str) -> String) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let duration = |k: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => {
            secondkey_core::time::parse_duration(s).map_err(|e| invalid(key(k), e.to_string()))
        }
        None => Ok(default),
    };
    let count = |k: &str, v: Option<usize>, default: usize, min: usize| {
        let n = v.unwrap_or(default);
        if n < min {
            return Err(invalid(key(k), format!("must be at least {min}")));
        }
        Ok(n)
    };
    let idle_timeout = match raw.idle_timeout.as_deref() {
        Some("off") => None,
        other => Some(duration(
            "idle_timeout",
            &other.map(str::to_string),
            d.idle_timeout.unwrap_or(Duration::from_secs(3600)),
        )?),
    };
    let l = Limits {
        login_timeout: duration("login_timeout", &raw.login_timeout, d.login_timeout)?,
        idle_timeout,
        max_connections: count("max_connections", raw.max_connections, d.max_connections, 1)?,
        max_connections_per_address: count(
            "max_connections_per_address",
            raw.max_connections_per_address,
            d.max_connections_per_address,
            1,
        )?,
        max_sessions: count("max_sessions", raw.max_sessions, d.max_sessions, 1)?,
        max_sessions_per_principal: count(
            "max_sessions_per_principal",
            raw.max_sessions_per_principal,
            d.max_sessions_per_principal,
            1,
        )?,
        reserved_sessions: count(
            "reserved_sessions",
            raw.reserved_sessions,
            d.reserved_sessions,
            0,
        )?,
        max_message_bytes: count(
            "max_message_bytes",
            raw.max_message_bytes,
            d.max_message_bytes,
            MIN_MESSAGE_BYTES,
        )?,
        max_session_bytes: count(
            "max_session_bytes",
            raw.max_session_bytes,
            d.max_session_bytes,
            1,
        )?,
        held_read_bytes: count("held_read_bytes", raw.held_read_bytes, d.held_read_bytes, 1)?,
    };
    if l.max_message_bytes > MAX_MESSAGE_BYTES {
        return Err(invalid(
            key("max_message_bytes"),
            format!("must be at most {MAX_MESSAGE_BYTES} (PostgreSQL's own limit is 1 GB)"),
        ));
    }
    if l.max_session_bytes < l.max_message_bytes {
        return Err(invalid(
            key("max_session_bytes"),
            "must be at least max_message_bytes (a message is buffered whole before it is decided)",
        ));
    }
    if l.reserved_sessions >= l.max_sessions {
        return Err(invalid(
            key("reserved_sessions"),
            "must be below max_sessions, or nobody could hold a second session",
        ));
    }
    if l.max_sessions > l.max_connections {
        return Err(invalid(
            key("max_sessions"),
            "must be at most max_connections (every session is a client connection)",
        ));
    }
    Ok(l)
}

/// Bounds of `max_message_bytes`: room for a startup-sized statement, and
/// PostgreSQL's own largest message.
const MIN_MESSAGE_BYTES: usize = 16 << 10;
const MAX_MESSAGE_BYTES: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Vec<Connection>, ConfigError> {
        let v: toml::Value = toml::from_str(text).unwrap();
        let principals: BTreeSet<String> = ["agent:bot".to_string()].into();
        let env: HashMap<String, String> = [("PGPW".to_string(), "s3cret".to_string())].into();
        parse(&v["postgres"], Path::new("/etc/sk"), &principals, &env)
    }

    const OK: &str = r#"
[[postgres]]
name = "analytics"
listen = "127.0.0.1:6432"
principals = ["agent:bot"]
hold = "retry"
[postgres.upstream]
host = "127.0.0.1"
database = "analytics"
user = "app"
password_env = "PGPW"
[postgres.scram]
"agent:bot" = "SCRAM-SHA-256$4096:c2FsdA==$dVyNvQ3aL6jG5nAcQJyT8/kqAUQ1nXoWM0r8lQwoqL8=:1mPkDVn9J6oZbFDrxJ8p3UgqoY8ZpKp7QwS5hJkq1eI="
"#;

    #[test]
    fn a_full_section_loads_and_the_password_stays_redacted() {
        let c = load(OK).unwrap();
        assert_eq!(c[0].name, "analytics");
        assert_eq!(c[0].hold, HoldMode::Retry);
        assert_eq!(c[0].upstream.port, 5432);
        assert_eq!(c[0].upstream.password.as_ref().unwrap().0, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c[0].limits, Limits::default());
    }

    #[test]
    fn limits_load_and_bad_combinations_name_the_key() {
        let text = OK.replacen(
            "hold = \"retry\"",
            "hold = \"retry\"\nlogin_timeout = \"2s\"\nidle_timeout = \"off\"\nmax_connections = 8\nmax_connections_per_address = 4\nmax_sessions = 6\nmax_sessions_per_principal = 2\nreserved_sessions = 1\nmax_message_bytes = 65536\nmax_session_bytes = 131072\nheld_read_bytes = 4096",
            1,
        );
        let l = &load(&text).unwrap()[0].limits;
        assert_eq!(l.login_timeout, Duration::from_secs(2));
        assert_eq!(l.idle_timeout, None);
        assert_eq!(
            (
                l.max_connections,
                l.max_connections_per_address,
                l.max_sessions
            ),
            (8, 4, 6)
        );
        assert_eq!((l.max_sessions_per_principal, l.reserved_sessions), (2, 1));
        assert_eq!(
            (l.max_message_bytes, l.max_session_bytes, l.held_read_bytes),
            (65536, 131072, 4096)
        );
        for (extra, key) in [
            ("login_timeout = \"0s\"", "login_timeout"),
            ("idle_timeout = \"never\"", "idle_timeout"),
            ("max_connections = 0", "max_connections"),
            (
                "max_sessions = 10\nreserved_sessions = 10",
                "reserved_sessions",
            ),
            (
                "max_connections = 5\nmax_sessions = 6\nreserved_sessions = 1",
                "max_sessions",
            ),
            ("max_message_bytes = 100", "max_message_bytes"),
            ("max_message_bytes = 2000000000", "max_message_bytes"),
            (
                "max_message_bytes = 65536\nmax_session_bytes = 1000",
                "max_session_bytes",
            ),
            ("held_read_bytes = 0", "held_read_bytes"),
        ] {
            let text = OK.replacen("hold = \"retry\"", &format!("hold = \"retry\"\n{extra}"), 1);
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("postgres[0].{key}")), "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (edit, key) in [
            (
                ("password_env = \"PGPW\"", "password_env = \"NOPE\""),
                "postgres[0].upstream.password_env",
            ),
            (("hold = \"retry\"", "hold = \"later\""), "postgres[0].hold"),
            (
                (
                    "hold = \"retry\"",
                    "hold = \"wait\"\nhold_timeout = \"24h1s\"",
                ),
                "postgres[0].hold_timeout",
            ),
            (
                ("listen = \"127.0.0.1:6432\"", "listen = \"here\""),
                "postgres[0].listen",
            ),
            (
                (
                    "principals = [\"agent:bot\"]",
                    "principals = [\"agent:nobody\"]",
                ),
                "postgres[0].principals",
            ),
            (
                ("\"agent:bot\" = \"SCRAM", "\"agent:bot\" = \"md5"),
                "postgres[0].scram",
            ),
            (
                ("name = \"analytics\"", "name = \"a/b\""),
                "postgres[0].name",
            ),
            (
                ("hold = \"retry\"", "hold = \"retry\"\nport = 1"),
                "postgres[0].port",
            ),
            (
                (
                    "hold = \"retry\"",
                    "hold = \"retry\"\nmax_sessions = \"ten\"",
                ),
                "postgres[0].max_sessions",
            ),
            (
                ("password_env = \"PGPW\"", "password_env = 5"),
                "postgres[0].upstream.password_env",
            ),
        ] {
            let text = OK.replacen(edit.0, edit.1, 1);
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let no_auth = OK.split("[postgres.scram]").next().unwrap();
        let e = load(no_auth).unwrap_err().to_string();
        assert!(e.contains("postgres[0].scram"), "{e}");
    }
}
