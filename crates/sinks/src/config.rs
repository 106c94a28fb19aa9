//! The `[[sinks]]` tables of the server's TOML configuration.
//!
//! ```toml
//! [[sinks]]
//! name = "siem"
//! type = "syslog"
//! address = "127.0.0.1:6514"
//! tls = true
//! ca_file = "/etc/secondkey/siem-ca.pem"   # default: the system CA bundle
//! server_name = "siem.internal"            # default: the host in `address`
//! facility = "authpriv"                    # default; a name or 0..=23
//!
//! [[sinks]]
//! name = "soar"
//! type = "webhook"
//! url = "https://soar.example/hooks/secondkey"
//! secret_env = "SECONDKEY_SOAR_SECRET"     # or: secret = "whsec_…"
//!
//! [[sinks]]
//! name = "lineage"
//! type = "openlineage"
//! url = "https://marquez.internal/api/v1/lineage"
//! namespace = "secondkey"                  # job namespace; default: the log origin
//! api_key_env = "OPENLINEAGE_API_KEY"      # optional bearer token
//! ```
//!
//! Unknown keys are errors, so a typo cannot silently disable an export.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::syslog::{Facility, SyslogFormatter, SyslogSink, TlsSettings, TlsSetupError};
use crate::webhook::{SecretError, WebhookSecret, WebhookSink};
use crate::Sink;

/// The default bound on one connection attempt, write or HTTP request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[sinks]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// RFC 5424 syslog over TCP or TLS.
    Syslog(SyslogConfig),
    /// Standard Webhooks POSTs.
    Webhook(WebhookConfig),
    /// OpenLineage run events for executed actions.
    Openlineage(OpenLineageConfig),
}

/// `type = "openlineage"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenLineageConfig {
    /// The sink's name; also its cursor file name.
    pub name: String,
    /// Where to POST events (`https://…`; `http://` only for loopback).
    pub url: String,
    /// The job namespace; default: the log origin.
    pub namespace: Option<String>,
    /// The environment variable holding a bearer token, if the receiver
    /// wants one.
    pub api_key_env: Option<String>,
    /// Seconds per attempt; default 10.
    pub timeout_secs: Option<u64>,
    /// Entries read back at start, to know actions decided before the
    /// cursor; default 100000.
    pub lookback: Option<u64>,
}

/// A syslog facility in configuration: a name (`"authpriv"`) or a number.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FacilitySpec {
    /// `0..=23`.
    Code(u8),
    /// `auth`, `authpriv`, `audit`, `local0`…
    Name(String),
}

/// `type = "syslog"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The sink's name; also its cursor file name.
    pub name: String,
    /// `host:port` of the receiver.
    pub address: String,
    /// Use TLS (RFC 5425).
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificates that sign the receiver's certificate.
    pub ca_file: Option<PathBuf>,
    /// The name to check in the receiver's certificate.
    pub server_name: Option<String>,
    /// Syslog facility; default `authpriv`.
    pub facility: Option<FacilitySpec>,
    /// HOSTNAME field; default this machine's name.
    pub hostname: Option<String>,
    /// Seconds to wait for connect / handshake / write / TCP ack; default 10.
    pub timeout_secs: Option<u64>,
}

/// `type = "webhook"`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The sink's name; also its cursor file name.
    pub name: String,
    /// Where to POST (`https://…`; `http://` only for loopback).
    pub url: String,
    /// The signing secret, `whsec_<base64>`.
    pub secret: Option<String>,
    /// Or the environment variable holding it (keeps secrets out of files).
    pub secret_env: Option<String>,
    /// PEM CA certificates for a receiver with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Seconds per attempt; default 10.
    pub timeout_secs: Option<u64>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("ca_file", &self.ca_file)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// Why a sink could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad facility.
    #[error("sink {name}: {message}")]
    Facility {
        /// The sink.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// TLS could not be set up.
    #[error("sink {name}: {source}")]
    Tls {
        /// The sink.
        name: String,
        /// The cause.
        source: TlsSetupError,
    },
    /// Neither or both of `secret` and `secret_env`.
    #[error("sink {name}: set exactly one of `secret` or `secret_env`")]
    SecretSource {
        /// The sink.
        name: String,
    },
    /// `secret_env` names an unset variable.
    #[error("sink {name}: environment variable {var} is not set; export it or use `secret`")]
    SecretEnv {
        /// The sink.
        name: String,
        /// The variable.
        var: String,
    },
    /// `api_key_env` (OpenLineage) names an unset variable.
    #[error("sink {name}: environment variable {var} (api_key_env) is not set; export it, or leave api_key_env out for an endpoint that needs no key")]
    ApiKeyEnv {
        /// The sink.
        name: String,
        /// The variable.
        var: String,
    },
    /// The secret is malformed.
    #[error("sink {name}: {source}")]
    Secret {
        /// The sink.
        name: String,
        /// The cause.
        source: SecretError,
    },
    /// `timeout_secs` outside 1..=120.
    #[error("sink {name}: timeout_secs = {secs} is out of range; use 1..=120 seconds (a sink with no time to answer never delivers)")]
    Timeout {
        /// The sink.
        name: String,
        /// What was given.
        secs: u64,
    },
    /// The URL is neither https nor loopback http.
    #[error("sink {name}: url {url:?} must be https:// (plain http:// is allowed only to 127.0.0.1, [::1] or localhost)")]
    Url {
        /// The sink.
        name: String,
        /// The URL.
        url: String,
    },
}

/// `timeout_secs`: [`DEFAULT_TIMEOUT`] when unset, else 1 to 120 seconds
/// (as for `[[log.witnesses]]`): at 0 every attempt times out, so the sink
/// would retry forever and deliver nothing.
fn timeout(name: &str, secs: Option<u64>) -> Result<Duration, ConfigError> {
    match secs {
        None => Ok(DEFAULT_TIMEOUT),
        Some(s @ 1..=120) => Ok(Duration::from_secs(s)),
        Some(secs) => Err(ConfigError::Timeout {
            name: name.to_string(),
            secs,
        }),
    }
}

fn host_of(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((h, _)) => h,
        None => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn http_url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    matches!(host_of(authority), "127.0.0.1" | "::1" | "localhost")
}

impl SinkConfig {
    /// The sink's name (unique per server; names its cursor file).
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Syslog(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::Openlineage(c) => &c.name,
        }
    }

    /// [`SinkConfig::build`], with the log to read from: the OpenLineage
    /// sink reads back a little of it at start.
    pub fn build_with_source(
        &self,
        log_origin: &str,
        source: std::sync::Arc<dyn crate::runner::EntrySource>,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        match self {
            SinkConfig::Openlineage(c) => openlineage(c, log_origin, Some(source)),
            _ => self.build(log_origin),
        }
    }

    /// Builds the sink. `log_origin` (the `[log] origin`) prefixes webhook ids
    /// so ids from different gateways never collide.
    pub fn build(&self, log_origin: &str) -> Result<Box<dyn Sink>, ConfigError> {
        match self {
            SinkConfig::Syslog(c) => {
                let facility = match &c.facility {
                    None => Facility::default(),
                    Some(FacilitySpec::Code(n)) => {
                        Facility::from_code(*n).ok_or_else(|| ConfigError::Facility {
                            name: c.name.clone(),
                            message: format!("facility {n} is out of range; use 0..=23"),
                        })?
                    }
                    Some(FacilitySpec::Name(s)) => {
                        s.parse().map_err(|message| ConfigError::Facility {
                            name: c.name.clone(),
                            message,
                        })?
                    }
                };
                let tls = if c.tls {
                    let server_name = c
                        .server_name
                        .clone()
                        .unwrap_or_else(|| host_of(&c.address).to_string());
                    Some(
                        TlsSettings::new(c.ca_file.as_deref(), &server_name).map_err(|source| {
                            ConfigError::Tls {
                                name: c.name.clone(),
                                source,
                            }
                        })?,
                    )
                } else {
                    None
                };
                let timeout = timeout(&c.name, c.timeout_secs)?;
                Ok(Box::new(SyslogSink::new(
                    &c.address,
                    tls,
                    SyslogFormatter::new(facility, c.hostname.as_deref()),
                    timeout,
                )))
            }
            SinkConfig::Webhook(c) => {
                if !http_url_allowed(&c.url) {
                    return Err(ConfigError::Url {
                        name: c.name.clone(),
                        url: c.url.clone(),
                    });
                }
                let text = match (&c.secret, &c.secret_env) {
                    (Some(s), None) => s.clone(),
                    (None, Some(var)) => {
                        std::env::var(var).map_err(|_| ConfigError::SecretEnv {
                            name: c.name.clone(),
                            var: var.clone(),
                        })?
                    }
                    _ => {
                        return Err(ConfigError::SecretSource {
                            name: c.name.clone(),
                        })
                    }
                };
                let secret = WebhookSecret::parse(&text).map_err(|source| ConfigError::Secret {
                    name: c.name.clone(),
                    source,
                })?;
                let timeout = timeout(&c.name, c.timeout_secs)?;
                let sink =
                    WebhookSink::new(&c.url, secret, log_origin, c.ca_file.as_deref(), timeout)
                        .map_err(|source| ConfigError::Tls {
                            name: c.name.clone(),
                            source,
                        })?;
                Ok(Box::new(sink))
            }
            SinkConfig::Openlineage(c) => openlineage(c, log_origin, None),
        }
    }
}

fn openlineage(
    c: &OpenLineageConfig,
    log_origin: &str,
    source: Option<std::sync::Arc<dyn crate::runner::EntrySource>>,
) -> Result<Box<dyn Sink>, ConfigError> {
    if !http_url_allowed(&c.url) {
        return Err(ConfigError::Url {
            name: c.name.clone(),
            url: c.url.clone(),
        });
    }
    let api_key = match &c.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| ConfigError::ApiKeyEnv {
            name: c.name.clone(),
            var: var.clone(),
        })?),
        None => None,
    };
    let timeout = timeout(&c.name, c.timeout_secs)?;
    Ok(Box::new(crate::openlineage::OpenLineageSink::new(
        &c.url,
        c.namespace.as_deref().unwrap_or(log_origin),
        log_origin,
        api_key,
        timeout,
        source,
        c.lookback.unwrap_or(crate::openlineage::DEFAULT_LOOKBACK),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Server {
        sinks: Vec<SinkConfig>,
    }

    #[test]
    fn parses_the_documented_tables() {
        let cfg: Server = toml::from_str(
            r#"
            [[sinks]]
            name = "siem"
            type = "syslog"
            address = "127.0.0.1:6514"
            tls = false
            facility = "auth"

            [[sinks]]
            name = "siem2"
            type = "syslog"
            address = "siem.internal:6514"
            tls = true
            ca_file = "/etc/ca.pem"
            server_name = "siem.internal"
            facility = 13

            [[sinks]]
            name = "soar"
            type = "webhook"
            url = "https://soar.example/hook"
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.sinks.len(), 3);
        assert_eq!(cfg.sinks[0].name(), "siem");
        assert!(
            matches!(&cfg.sinks[1], SinkConfig::Syslog(s) if s.facility == Some(FacilitySpec::Code(13)))
        );
        assert!(cfg.sinks[0].build("o").is_ok());
        assert!(cfg.sinks[2].build("o").is_ok());
        // An inline signing secret never shows in debug output.
        let shown = format!("{:?}", cfg.sinks[2]);
        assert!(!shown.contains("whsec_"), "{shown}");
        assert!(shown.contains("secret: Some(\"<redacted>\")"), "{shown}");
        let ol: Server = toml::from_str(
            "[[sinks]]\nname = \"lineage\"\ntype = \"openlineage\"\nurl = \"https://marquez.example/api/v1/lineage\"\nnamespace = \"sk\"\n",
        )
        .unwrap();
        assert_eq!(ol.sinks[0].name(), "lineage");
        assert_eq!(ol.sinks[0].build("o").unwrap().kind(), "openlineage");
        let plain: Server = toml::from_str(
            "[[sinks]]\nname = \"l\"\ntype = \"openlineage\"\nurl = \"http://marquez.example/\"\n",
        )
        .unwrap();
        assert!(matches!(
            plain.sinks[0].build("o"),
            Err(ConfigError::Url { .. })
        ));
        let typo = toml::from_str::<Server>(
            "[[sinks]]\nname = \"l\"\ntype = \"openlineage\"\nurl = \"https://x\"\nnamspace = \"x\"\n",
        );
        assert!(typo.is_err());
        // An unset api_key_env says which key named it, and no `secret`
        // (OpenLineage sinks have none).
        let keyless: Server = toml::from_str(
            "[[sinks]]\nname = \"l\"\ntype = \"openlineage\"\nurl = \"https://x\"\napi_key_env = \"SECONDKEY_TEST_SURELY_UNSET_VAR\"\n",
        )
        .unwrap();
        let e = keyless.sinks[0].build("o").err().unwrap();
        assert!(matches!(e, ConfigError::ApiKeyEnv { .. }), "{e}");
        assert!(
            e.to_string().contains("api_key_env") && !e.to_string().contains("`secret`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let typo = toml::from_str::<Server>(
            "[[sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"a:1\"\ntsl = true\n",
        );
        assert!(typo.unwrap_err().to_string().contains("tsl"));
        let bad_type = toml::from_str::<Server>("[[sinks]]\nname = \"s\"\ntype = \"kafka\"\n");
        assert!(bad_type.is_err());

        let hook = |extra: &str| -> SinkConfig {
            toml::from_str::<Server>(&format!(
                "[[sinks]]\nname = \"w\"\ntype = \"webhook\"\n{extra}\n"
            ))
            .unwrap()
            .sinks
            .remove(0)
        };
        let both = hook("url = \"https://x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nsecret_env = \"X\"");
        assert!(matches!(
            both.build("o"),
            Err(ConfigError::SecretSource { .. })
        ));
        let plain = hook(
            "url = \"http://example.com/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
        );
        assert!(matches!(plain.build("o"), Err(ConfigError::Url { .. })));
        let local = hook(
            "url = \"http://127.0.0.1:9/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
        );
        assert!(local.build("o").is_ok());
        let unset = hook("url = \"https://x\"\nsecret_env = \"SECONDKEY_TEST_SURELY_UNSET_VAR\"");
        assert!(matches!(
            unset.build("o"),
            Err(ConfigError::SecretEnv { .. })
        ));

        let fac = toml::from_str::<Server>(
            "[[sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"a:1\"\nfacility = \"local9\"\n",
        )
        .unwrap();
        assert!(matches!(
            fac.sinks[0].build("o"),
            Err(ConfigError::Facility { .. })
        ));
        let tls = toml::from_str::<Server>(
            "[[sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"a:1\"\ntls = true\nca_file = \"/nonexistent.pem\"\n",
        )
        .unwrap();
        assert!(matches!(
            tls.sinks[0].build("o"),
            Err(ConfigError::Tls { .. })
        ));
    }
}
