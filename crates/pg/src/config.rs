//! The `[[postgres]]` configuration sections: one per gateway connection.
//! Every error names the full key (`postgres[0].upstream.password_env`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secondkey_server::config::ConfigError;
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
        let raw: RawConnection = v.clone().try_into().map_err(|e: toml::de::Error| {
            invalid(format!("postgres[{i}]"), e.message().to_string())
        })?;
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
                "postgres[0]",
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
