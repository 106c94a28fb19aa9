//! The `[ssh_gateway]` section (the listener, agents' keys, rules,
//! recordings) and the `[[ssh]]` upstream hosts. Every error names the full
//! key (`ssh[0].host_key`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Certificate, PrivateKey, PublicKey};
use secondkey_server::config::{read_section, ConfigError};
use serde::Deserialize;

use crate::classify::{RawRule, Rule};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: String,
    host_key_file: Option<PathBuf>,
    hold_timeout: Option<String>,
    recordings_dir: Option<PathBuf>,
    recording_retention: Option<String>,
    login_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    authorities: Vec<RawAuthority>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    principal: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthority {
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: String,
    host_key: String,
    user: String,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    certificate_file: Option<PathBuf>,
    certificate_env: Option<String>,
    max_sessions_per_connection: Option<usize>,
}

/// The gateway's own credential for one upstream host. Never printed,
/// never sent anywhere but to that host's sshd.
#[derive(Clone)]
pub struct Credential {
    pub key: Arc<PrivateKey>,
    pub certificate: Option<Certificate>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(redacted)")
    }
}

/// One `[[ssh]]` upstream host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: String,
    /// The pinned host key (from the known_hosts line).
    pub host_key: PublicKey,
    pub user: String,
    pub credential: Credential,
    pub max_sessions: usize,
}

/// The validated SSH gateway configuration.
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub listen: SocketAddr,
    pub host_key_file: PathBuf,
    pub hold_timeout: Duration,
    pub recordings_dir: PathBuf,
    pub recording_retention: Duration,
    /// A connection not logged in within this is closed.
    pub login_timeout: Duration,
    /// Client connections open at once, in all and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Agents' public keys → principal id.
    pub keys: Vec<(PublicKey, String)>,
    /// Certificate authorities whose user certificates are accepted.
    pub authorities: Vec<PublicKey>,
    pub rules: Vec<Rule>,
    pub hosts: Vec<Host>,
}

impl SshConfig {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// `host:port` with a port from 1 to 65535; an IPv6 host in brackets.
fn host_and_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = if host.starts_with('[') {
        host.ends_with(']') && host.len() > 2
    } else {
        !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace)
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn duration(key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => secondkey_core::time::parse_duration(s).map_err(|e| invalid(key, e.to_string())),
    }
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn public_key(line: &str) -> Result<PublicKey, String> {
    let mut parts = line.split_whitespace();
    let (Some(alg), Some(b64)) = (parts.next(), parts.next()) else {
        return Err("expected `<type> <base64> [comment]`".into());
    };
    let key = PublicKey::from_openssh(&format!("{alg} {b64}"))
        .map_err(|e| format!("not an OpenSSH public key: {e}"))?;
    supported(key.algorithm())?;
    Ok(key)
}

/// Ed25519 and ECDSA are built in; any other key (RSA) is refused where it
/// is configured, rather than one that could never log in or match.
pub(crate) fn supported(alg: russh::keys::Algorithm) -> Result<(), String> {
    match alg {
        russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Ecdsa { .. } => Ok(()),
        other => Err(format!(
            "{} keys are not supported: use Ed25519 or ECDSA (P-256/384/521)",
            other.as_str()
        )),
    }
}

/// Parses a known_hosts line (`host[,host…] <type> <base64> [comment]`,
/// no markers) into its key.
pub fn known_hosts_key(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    if line.starts_with('@') {
        return Err(
            "markers (@cert-authority, @revoked) are not supported: pin the host's own key".into(),
        );
    }
    const FORM: &str =
        "expected `<host> <type> <base64>` (a known_hosts line, as ssh-keyscan prints it)";
    let mut parts = line.splitn(2, char::is_whitespace);
    let hosts = parts.next().unwrap_or_default();
    if hosts.starts_with("ssh-") || hosts.starts_with("ecdsa-") || hosts.starts_with("sk-") {
        return Err(format!(
            "{FORM}: this line starts with the key type {hosts:?}, not the host"
        ));
    }
    let rest = parts.next().ok_or(FORM)?;
    public_key(rest.trim())
}

/// Parses `[ssh_gateway]` and `[[ssh]]`. `principals` are the configured
/// principal ids; `data_dir` the gateway's data directory.
pub fn parse(
    gateway: Option<&toml::Value>,
    hosts: Option<&toml::Value>,
    base: &Path,
    data_dir: &Path,
    principals: &BTreeSet<String>,
    env: &HashMap<String, String>,
) -> Result<Option<SshConfig>, ConfigError> {
    let Some(g) = gateway else {
        if hosts.is_some() {
            return Err(invalid(
                "ssh",
                "upstream hosts are configured but no [ssh_gateway] section says where agents connect",
            ));
        }
        return Ok(None);
    };
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let raw: RawGateway = read_section(g, "ssh_gateway").map_err(|(k, m)| invalid(k, m))?;
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|e| invalid("ssh_gateway.listen", format!("{:?}: {e}", raw.listen)))?;
    let mut keys = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let id: secondkey_core::principal::PrincipalId =
            k.principal
                .parse()
                .map_err(|e: secondkey_core::principal::PrincipalError| {
                    invalid(format!("ssh_gateway.keys[{i}].principal"), e.to_string())
                })?;
        if !principals.contains(id.as_str()) {
            return Err(invalid(
                format!("ssh_gateway.keys[{i}].principal"),
                format!("{id} is not a configured principal"),
            ));
        }
        let key =
            public_key(&k.key).map_err(|e| invalid(format!("ssh_gateway.keys[{i}].key"), e))?;
        if keys.iter().any(|(other, p): &(PublicKey, String)| {
            other.key_data() == key.key_data() && p != id.as_str()
        }) {
            return Err(invalid(
                format!("ssh_gateway.keys[{i}].key"),
                "this key is already registered for another principal: one key, one principal",
            ));
        }
        keys.push((key, id.to_string()));
    }
    let mut authorities = Vec::new();
    for (i, a) in raw.authorities.iter().enumerate() {
        authorities.push(
            public_key(&a.key)
                .map_err(|e| invalid(format!("ssh_gateway.authorities[{i}].key"), e))?,
        );
    }
    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        rules.push(
            r.rule()
                .map_err(|e| invalid(format!("ssh_gateway.rules[{i}]"), e))?,
        );
    }
    let mut out_hosts = Vec::new();
    if let Some(h) = hosts {
        let list = h
            .as_array()
            .ok_or_else(|| invalid("ssh", "must be an array of tables: [[ssh]]"))?;
        for (i, v) in list.iter().enumerate() {
            let key = |k: &str| format!("ssh[{i}].{k}");
            let raw: RawHost =
                read_section(v, &format!("ssh[{i}]")).map_err(|(k, m)| invalid(k, m))?;
            if raw.name.is_empty()
                || !raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(invalid(
                    key("name"),
                    "use letters, digits, '-', '_' and '.' (it is the host part of ssh://<name>/<user>)",
                ));
            }
            if out_hosts.iter().any(|o: &Host| o.name == raw.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is configured twice", raw.name),
                ));
            }
            if raw.user.is_empty() || raw.user.contains('/') {
                return Err(invalid(key("user"), "an upstream user name"));
            }
            let host_key =
                known_hosts_key(&raw.host_key).map_err(|e| invalid(key("host_key"), e))?;
            let key_text = match (&raw.key_file, &raw.key_env) {
                (Some(f), None) => secondkey_server::keys::read_secret(&resolve(f))
                    .map_err(|e| invalid(key("key_file"), e.to_string()))?,
                (None, Some(var)) => env
                    .get(var)
                    .cloned()
                    .ok_or_else(|| invalid(key("key_env"), format!("environment variable {var} is not set")))?,
                _ => {
                    return Err(invalid(
                        format!("ssh[{i}]"),
                        "set exactly one of key_file, key_env (the gateway's own private key for this host)",
                    ))
                }
            };
            let private = russh::keys::decode_secret_key(&key_text, None).map_err(|e| {
                invalid(
                    key(if raw.key_file.is_some() {
                        "key_file"
                    } else {
                        "key_env"
                    }),
                    format!("not an unencrypted OpenSSH private key: {e}"),
                )
            })?;
            supported(private.algorithm()).map_err(|e| {
                invalid(
                    key(if raw.key_file.is_some() {
                        "key_file"
                    } else {
                        "key_env"
                    }),
                    e,
                )
            })?;
            let certificate = match (&raw.certificate_file, &raw.certificate_env) {
                (None, None) => None,
                (Some(f), None) => {
                    let text = std::fs::read_to_string(resolve(f)).map_err(|e| {
                        invalid(
                            key("certificate_file"),
                            format!("cannot read {}: {e}", f.display()),
                        )
                    })?;
                    Some(Certificate::from_openssh(text.trim()).map_err(|e| {
                        invalid(
                            key("certificate_file"),
                            format!("not an OpenSSH certificate: {e}"),
                        )
                    })?)
                }
                (None, Some(var)) => {
                    let text = env.get(var).ok_or_else(|| {
                        invalid(
                            key("certificate_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    Some(Certificate::from_openssh(text.trim()).map_err(|e| {
                        invalid(
                            key("certificate_env"),
                            format!("not an OpenSSH certificate: {e}"),
                        )
                    })?)
                }
                _ => {
                    return Err(invalid(
                        format!("ssh[{i}]"),
                        "set at most one of certificate_file, certificate_env",
                    ))
                }
            };
            if let Some(c) = &certificate {
                if c.public_key() != private.public_key().key_data() {
                    return Err(invalid(
                        format!("ssh[{i}]"),
                        "the certificate is not for the configured private key",
                    ));
                }
            }
            if !host_and_port(&raw.address) {
                return Err(invalid(
                    key("address"),
                    format!(
                        "{:?} is not host:port (\"10.0.0.5:22\", \"db.internal:22\", \"[::1]:22\")",
                        raw.address
                    ),
                ));
            }
            let max_sessions = raw.max_sessions_per_connection.unwrap_or(8);
            if max_sessions == 0 || max_sessions > 64 {
                return Err(invalid(
                    key("max_sessions_per_connection"),
                    "between 1 and 64 (sshd's MaxSessions is 10 by default)",
                ));
            }
            out_hosts.push(Host {
                name: raw.name,
                address: raw.address,
                host_key,
                user: raw.user,
                credential: Credential {
                    key: Arc::new(private),
                    certificate,
                },
                max_sessions,
            });
        }
    }
    Ok(Some(SshConfig {
        listen,
        host_key_file: raw
            .host_key_file
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("ssh_host_ed25519_key")),
        hold_timeout: {
            let d = duration(
                "ssh_gateway.hold_timeout",
                raw.hold_timeout.as_deref(),
                Duration::from_secs(600),
            )?;
            if d > secondkey_server::config::MAX_HOLD_TIMEOUT {
                return Err(invalid("ssh_gateway.hold_timeout", "at most 24h"));
            }
            d
        },
        recordings_dir: raw
            .recordings_dir
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("recordings")),
        recording_retention: duration(
            "ssh_gateway.recording_retention",
            raw.recording_retention.as_deref(),
            Duration::from_secs(90 * 86400),
        )?,
        login_timeout: {
            let d = duration(
                "ssh_gateway.login_timeout",
                raw.login_timeout.as_deref(),
                Duration::from_secs(30),
            )?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
                return Err(invalid("ssh_gateway.login_timeout", "must be 1s to 10m"));
            }
            d
        },
        max_connections: match raw.max_connections.unwrap_or(100) {
            n @ 1..=100_000 => n,
            _ => {
                return Err(invalid(
                    "ssh_gateway.max_connections",
                    "must be 1 to 100000",
                ))
            }
        },
        max_connections_per_address: match raw.max_connections_per_address {
            None => 20.min(raw.max_connections.unwrap_or(100)),
            Some(n) if n >= 1 && n <= raw.max_connections.unwrap_or(100) => n,
            Some(_) => {
                return Err(invalid(
                    "ssh_gateway.max_connections_per_address",
                    "must be 1 to max_connections",
                ))
            }
        },
        keys,
        authorities,
        rules,
        hosts: out_hosts,
    }))
}

/// Where recordings are kept: `[ssh_gateway] recordings_dir`, or
/// `<data_dir>/recordings` (for `secondkey recording`, which needs nothing
/// else of the section).
pub fn recordings_dir(gateway: Option<&toml::Value>, base: &Path, data_dir: &Path) -> PathBuf {
    match gateway
        .and_then(|g| g.get("recordings_dir"))
        .and_then(|v| v.as_str())
    {
        Some(d) if Path::new(d).is_absolute() => PathBuf::from(d),
        Some(d) => base.join(d),
        None => data_dir.join("recordings"),
    }
}

#[cfg(test)]
mod tests {
    use super::{host_and_port, known_hosts_key};

    #[test]
    fn an_upstream_address_is_host_and_port() {
        for ok in [
            "10.0.0.5:22",
            "db.internal:2222",
            "[::1]:22",
            "[fe80::1%eth0]:22",
        ] {
            assert!(host_and_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "nohostport",
            "db:0",
            "db:65536",
            "db:ssh",
            ":22",
            "::1:22",
            "[]:22",
            "db internal:22",
            "",
        ] {
            assert!(!host_and_port(bad), "{bad}");
        }
    }

    #[test]
    fn a_host_key_line_without_its_host_says_what_is_missing() {
        const KEY: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(known_hosts_key(&format!("db1 {KEY}")).is_ok());
        assert!(known_hosts_key(&format!("[db1]:2222,10.0.0.5 {KEY} comment")).is_ok());
        let e = known_hosts_key(KEY).unwrap_err();
        assert!(
            e.contains("<host> <type> <base64>") && e.contains("\"ssh-ed25519\", not the host"),
            "{e}"
        );
        let e = known_hosts_key("db1").unwrap_err();
        assert!(e.contains("<host> <type> <base64>"), "{e}");
        let e = known_hosts_key(&format!("@cert-authority db1 {KEY}")).unwrap_err();
        assert!(e.contains("markers"), "{e}");
    }
}
