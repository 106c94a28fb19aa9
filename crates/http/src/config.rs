//! The `[[http]]` configuration sections: one per upstream. Every error
//! names the full key (`http[0].credentials.value_env`). Secrets are read
//! here, kept in [`Secret`] (which never prints) and handed only to the
//! upstream connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secondkey_server::config::{read_section, ConfigError};
use serde::Deserialize;

use crate::routes::{OpenApi, Route};

/// Default largest request body the gateway reads (and digests).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default longest wait of a held request in `wait` mode.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(50);
/// Request headers recorded in the action and forwarded, whatever the
/// configuration adds: the ones that change what a request means.
pub const RECORDED_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    upstream: String,
    listen: Option<String>,
    prefix: Option<String>,
    principals: Vec<String>,
    profile: Option<String>,
    cluster: Option<String>,
    max_body_bytes: Option<usize>,
    hold: Option<String>,
    hold_timeout: Option<String>,
    retry_after_seconds: Option<u64>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    query_lists: Vec<String>,
    openapi: Option<PathBuf>,
    #[serde(default)]
    operations: BTreeMap<String, String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    credentials: Option<RawCredentials>,
    tls: Option<RawTls>,
    listen_tls: Option<RawListenTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "match")]
    pattern: String,
    operation: String,
    #[serde(default)]
    reads: Vec<String>,
    #[serde(default)]
    writes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(rename = "type")]
    kind: String,
    /// The header's name (`type = "header"`).
    name: Option<String>,
    /// Put before the value (`type = "header"`), e.g. `"token "`.
    #[serde(default)]
    prefix: String,
    /// The user name (`type = "basic"`).
    username: Option<String>,
    value_env: Option<String>,
    value_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_cert_env: Option<String>,
    client_key_file: Option<PathBuf>,
    client_key_env: Option<String>,
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// The credential added to every forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <value>`.
    Bearer(Secret),
    /// `<name>: <prefix><value>`.
    Header {
        name: String,
        prefix: String,
        value: Secret,
    },
    /// `Authorization: Basic base64(<username>:<value>)`.
    Basic { username: String, password: Secret },
}

impl Credential {
    /// The header this credential sets, and its full value.
    pub fn header(&self) -> (String, Secret) {
        use base64::Engine;
        match self {
            Credential::Bearer(s) => ("authorization".into(), Secret(format!("Bearer {}", s.0))),
            Credential::Header {
                name,
                prefix,
                value,
            } => (name.clone(), Secret(format!("{prefix}{}", value.0))),
            Credential::Basic { username, password } => (
                "authorization".into(),
                Secret(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.0))
                )),
            ),
        }
    }

    /// The strings that must never appear in what goes back to the client:
    /// the secret itself, the header value carrying it, and the secret's
    /// base64 forms (a Kubernetes Secret holding the gateway's own token
    /// returns it base64-encoded in `data`).
    pub fn needles(&self) -> Vec<Vec<u8>> {
        let (_, full) = self.header();
        let mut out = vec![full.0.clone().into_bytes()];
        let secret = match self {
            Credential::Bearer(s) => &s.0,
            Credential::Header { value, .. } => &value.0,
            Credential::Basic { password, .. } => {
                if let Some(b64) = full.0.strip_prefix("Basic ") {
                    out.push(b64.as_bytes().to_vec());
                }
                &password.0
            }
        };
        out.push(secret.clone().into_bytes());
        out.extend(base64_forms(secret.as_bytes()));
        out.retain(|n| !n.is_empty());
        out.sort();
        out.dedup();
        out
    }
}

/// Shortest base64 needle worth masking: shorter runs of base64 letters
/// occur by chance in ordinary bodies.
const MIN_B64_NEEDLE: usize = 15;

/// What `secret` looks like base64-encoded anywhere inside a longer
/// encoded value, in the standard and the URL-safe alphabet: for each of
/// the three alignments it can start at, the characters that depend on
/// the secret's bytes alone (those shared with a neighbouring byte vary).
fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for align in 0..3usize {
            let mut input = vec![0u8; align];
            input.extend_from_slice(secret);
            let enc = engine.encode(&input).into_bytes();
            // Characters covering the `align` filler bytes, or mixing one
            // of them with the secret's first byte.
            let skip = [0, 2, 3][align];
            // A partial last group's final character mixes in the byte
            // that follows.
            let end = enc.len() - usize::from(input.len() % 3 != 0);
            if end > skip && end - skip >= MIN_B64_NEEDLE {
                out.push(enc[skip..end].to_vec());
            }
        }
    }
    out
}

/// TLS towards the upstream: verified against the system's roots, or
/// against `ca_file` alone; optionally with a client certificate.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and private key of the client certificate.
    pub client: Option<(Secret, Secret)>,
}

/// What happens to a request that needs review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// The client waits up to `hold_timeout`, then gets `202` and retries.
    Wait,
    /// The client gets a problem response naming the request at once and
    /// retries the identical request after approval.
    Retry,
}

/// Which API dialect the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Any HTTP API: operations from route rules or an OpenAPI document.
    Plain,
    /// The Kubernetes API: verbs, resources and namespaces from the path.
    Kubernetes,
}

/// One validated `[[http]]` upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` of the upstream.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// The base URL's path without its trailing slash (`""` for the root).
    pub base_path: String,
    pub listen: Option<SocketAddr>,
    /// Certificate chain and key (PEM files) the own listener serves TLS
    /// with (kubectl sends its token only over TLS).
    pub listen_tls: Option<(PathBuf, PathBuf)>,
    /// Path prefix on the main listener (`/http/<name>`), if served there.
    pub prefix: Option<String>,
    /// Principal ids and `group:<name>` entries that may use it.
    pub principals: BTreeSet<String>,
    pub profile: Profile,
    /// The cluster name in `k8s://<cluster>/…` (Kubernetes profile).
    pub cluster: String,
    pub max_body_bytes: usize,
    pub hold: HoldMode,
    pub hold_timeout: Duration,
    pub retry_after: u64,
    /// Request headers recorded in the action and forwarded (lowercase).
    pub headers: BTreeSet<String>,
    /// Query keys that may repeat (read as lists by the upstream).
    pub query_lists: BTreeSet<String>,
    pub routes: Vec<Route>,
    pub openapi: Option<OpenApi>,
    pub credential: Option<Credential>,
    pub tls: Tls,
}

impl UpstreamConfig {
    /// Whether `who` (with `groups`) may use this upstream.
    pub fn admits(&self, id: &str, groups: impl IntoIterator<Item = String>) -> bool {
        self.principals.contains(id)
            || groups
                .into_iter()
                .any(|g| self.principals.contains(&format!("group:{g}")))
    }
}

/// What a PEM file named in the configuration must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Checks at start that a PEM file can be used, so a bad one stops the
/// start naming its key, before anything (the log included) is touched.
fn check_pem(path: &Path, key: String, want: Pem) -> Result<(), ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(key.clone(), format!("cannot read {}: {e}", path.display())))?;
    let ok = match want {
        Pem::Certificates => rustls_pemfile::certs(&mut &bytes[..])
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|c| !c.is_empty()),
        Pem::PrivateKey => matches!(rustls_pemfile::private_key(&mut &bytes[..]), Ok(Some(_))),
    };
    if ok {
        Ok(())
    } else {
        let what = match want {
            Pem::Certificates => "no PEM certificate",
            Pem::PrivateKey => "no PEM private key",
        };
        Err(invalid(key, format!("{} holds {what}", path.display())))
    }
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The operation words a route or override may name: the contract's verb
/// classes (a lowercase word, as actions require).
fn valid_operation(op: &str) -> bool {
    !op.is_empty()
        && op.len() <= 32
        && op.as_bytes()[0].is_ascii_lowercase()
        && op
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Reads a secret from an environment variable or a file (trailing line
/// ends dropped).
fn secret(
    env: &HashMap<String, String>,
    base: &Path,
    var: Option<&String>,
    file: Option<&PathBuf>,
    key: &dyn Fn(&str) -> String,
    names: (&str, &str),
) -> Result<Secret, ConfigError> {
    match (var, file) {
        (Some(v), None) => {
            env.get(v).cloned().map(Secret).ok_or_else(|| {
                invalid(key(names.0), format!("environment variable {v} is not set"))
            })
        }
        (None, Some(f)) => {
            let p = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            std::fs::read_to_string(&p)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| invalid(key(names.1), format!("cannot read {}: {e}", p.display())))
        }
        _ => Err(invalid(
            key(names.0),
            format!(
                "set exactly one of {} or {} (secrets stay out of the config file)",
                names.0, names.1
            ),
        )),
    }
}

/// Parses the raw `http` section. `principals` are the configured
/// principal ids; `env` the process environment.
pub fn parse(
    value: &toml::Value,
    base: &Path,
    principals: &BTreeSet<String>,
    env: &HashMap<String, String>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid("http".into(), "must be an array of tables: [[http]]"))?;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut out: Vec<UpstreamConfig> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = |k: &str| format!("http[{i}].{k}");
        let raw: RawUpstream =
            read_section(v, &format!("http[{i}]")).map_err(|(k, m)| invalid(k, m))?;
        if raw.name.is_empty()
            || raw.name.len() > 64
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                key("name"),
                "use lowercase letters, digits, '-' and '_' (it names the resource https://<name>/…)",
            ));
        }
        if out.iter().any(|c| c.name == raw.name) {
            return Err(invalid(
                key("name"),
                format!("{} is configured twice", raw.name),
            ));
        }
        let (scheme, authority, host, port, base_path) =
            parse_base(&raw.upstream).map_err(|m| invalid(key("upstream"), m))?;
        let listen = match &raw.listen {
            None => None,
            Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    key("listen"),
                    format!("{l:?} is not an address like \"127.0.0.1:8760\""),
                )
            })?),
        };
        let listen_tls = match (&raw.listen_tls, listen) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(key("listen_tls"), "only used with listen"));
            }
            (Some(t), Some(_)) => {
                let (cert, tls_key) = (resolve(&t.cert_file), resolve(&t.key_file));
                check_pem(&cert, key("listen_tls.cert_file"), Pem::Certificates)?;
                check_pem(&tls_key, key("listen_tls.key_file"), Pem::PrivateKey)?;
                Some((cert, tls_key))
            }
        };
        let prefix = match (&raw.prefix, listen) {
            (Some(p), _) => {
                let ok = p.starts_with("/http/")
                    && p.len() > "/http/".len()
                    && !p.ends_with('/')
                    && p[1..].split('/').all(|s| {
                        !s.is_empty()
                            && s.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                            })
                            && s != "."
                            && s != ".."
                    });
                if !ok {
                    return Err(invalid(
                        key("prefix"),
                        format!(
                            "{p:?}: use a path under /http/ such as \"/http/{}\"",
                            raw.name
                        ),
                    ));
                }
                Some(p.clone())
            }
            (None, Some(_)) => None,
            (None, None) => Some(format!("/http/{}", raw.name)),
        };
        if let Some(p) = &prefix {
            if out.iter().any(|c| {
                c.prefix.as_ref().is_some_and(|q| {
                    q == p || q.starts_with(&format!("{p}/")) || p.starts_with(&format!("{q}/"))
                })
            }) {
                return Err(invalid(
                    key("prefix"),
                    format!("{p} overlaps another upstream's prefix"),
                ));
            }
        }
        if raw.principals.is_empty() {
            return Err(invalid(
                key("principals"),
                "name at least one principal (or \"group:<name>\") that may use it",
            ));
        }
        for p in &raw.principals {
            if let Some(g) = p.strip_prefix("group:") {
                if g.is_empty() {
                    return Err(invalid(key("principals"), "\"group:\" needs a group name"));
                }
            } else if !principals.contains(p) {
                return Err(invalid(
                    key("principals"),
                    format!("{p} is not a configured principal (or write \"group:<name>\")"),
                ));
            }
        }
        let profile = match raw.profile.as_deref() {
            None | Some("plain") => Profile::Plain,
            Some("kubernetes") => Profile::Kubernetes,
            Some(other) => {
                return Err(invalid(
                    key("profile"),
                    format!("{other:?}: use \"kubernetes\" or leave it out"),
                ))
            }
        };
        if raw.cluster.is_some() && profile != Profile::Kubernetes {
            return Err(invalid(
                key("cluster"),
                "only used with profile = \"kubernetes\"",
            ));
        }
        let cluster = raw.cluster.clone().unwrap_or_else(|| raw.name.clone());
        if cluster.is_empty()
            || !cluster
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                key("cluster"),
                "use lowercase letters, digits, '-' and '_'",
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                key("max_body_bytes"),
                "between 1 and 67108864 (64 MiB)",
            ));
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
            None => DEFAULT_HOLD_TIMEOUT,
        };
        if hold_timeout > Duration::from_secs(3600) {
            return Err(invalid(key("hold_timeout"), "at most 1h"));
        }
        let retry_after = match raw.retry_after_seconds {
            None => 5,
            Some(n @ 1..=3600) => n,
            Some(_) => {
                return Err(invalid(
                    key("retry_after_seconds"),
                    "must be between 1 and 3600 (seconds)",
                ))
            }
        };
        let mut headers: BTreeSet<String> =
            RECORDED_HEADERS.iter().map(|s| s.to_string()).collect();
        for h in &raw.headers {
            let lower = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                || crate::request::never_forwarded(&lower)
            {
                return Err(invalid(
                    key("headers"),
                    format!("{h:?} cannot be recorded and forwarded (not a header name, or one secondkey owns)"),
                ));
            }
            headers.insert(lower);
        }
        let mut query_lists: BTreeSet<String> = raw.query_lists.iter().cloned().collect();
        if profile == Profile::Kubernetes {
            // exec and attach take one `command` parameter per argument.
            query_lists.insert("command".into());
        }
        let mut routes = Vec::new();
        for (j, r) in raw.routes.iter().enumerate() {
            let rk = format!("http[{i}].routes[{j}]");
            if !valid_operation(&r.operation) {
                return Err(invalid(
                    format!("{rk}.operation"),
                    format!(
                        "{:?} is not an operation word (read, write, delete, grant, admin, …)",
                        r.operation
                    ),
                ));
            }
            let route = Route::parse(&r.pattern, &r.operation, &r.reads, &r.writes)
                .map_err(|m| invalid(format!("{rk}.match"), m))?;
            routes.push(route);
        }
        for (op_id, op) in &raw.operations {
            if !valid_operation(op) {
                return Err(invalid(
                    format!("http[{i}].operations.{op_id}"),
                    format!("{op:?} is not an operation word"),
                ));
            }
        }
        let openapi = match &raw.openapi {
            None => {
                if !raw.operations.is_empty() {
                    return Err(invalid(key("operations"), "only used with openapi"));
                }
                None
            }
            Some(p) => {
                let path = resolve(p);
                let text = std::fs::read(&path).map_err(|e| {
                    invalid(
                        key("openapi"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let doc = OpenApi::parse(&text, &raw.operations)
                    .map_err(|m| invalid(key("openapi"), format!("{}: {m}", path.display())))?;
                Some(doc)
            }
        };
        let credential = match &raw.credentials {
            None => None,
            Some(c) => {
                let ck = |k: &str| format!("http[{i}].credentials.{k}");
                let value = secret(
                    env,
                    base,
                    c.value_env.as_ref(),
                    c.value_file.as_ref(),
                    &ck,
                    ("value_env", "value_file"),
                )?;
                if value.0.is_empty() || value.0.chars().any(|ch| ch.is_control()) {
                    return Err(invalid(
                        ck("value_env"),
                        "the secret is empty or holds control characters",
                    ));
                }
                let cred = match c.kind.as_str() {
                    "bearer" => Credential::Bearer(value),
                    "header" => {
                        let name = c
                            .name
                            .as_deref()
                            .map(str::to_ascii_lowercase)
                            .ok_or_else(|| invalid(ck("name"), "type = \"header\" needs the header's name"))?;
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                            || matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection")
                        {
                            return Err(invalid(ck("name"), format!("{name:?} cannot carry a credential")));
                        }
                        Credential::Header {
                            name,
                            prefix: c.prefix.clone(),
                            value,
                        }
                    }
                    "basic" => {
                        let username = c
                            .username
                            .clone()
                            .ok_or_else(|| invalid(ck("username"), "type = \"basic\" needs a username"))?;
                        if username.contains(':') {
                            return Err(invalid(ck("username"), "a Basic user name cannot hold ':'"));
                        }
                        Credential::Basic {
                            username,
                            password: value,
                        }
                    }
                    other => {
                        return Err(invalid(
                            ck("type"),
                            format!("{other:?}: use \"bearer\", \"header\" or \"basic\" (a client certificate goes in [http.tls])"),
                        ))
                    }
                };
                if c.kind != "header" && (c.name.is_some() || !c.prefix.is_empty()) {
                    return Err(invalid(
                        ck("name"),
                        "name and prefix are only used with type = \"header\"",
                    ));
                }
                if c.kind != "basic" && c.username.is_some() {
                    return Err(invalid(ck("username"), "only used with type = \"basic\""));
                }
                Some(cred)
            }
        };
        let tls = match &raw.tls {
            None => Tls::default(),
            Some(t) => {
                if scheme != "https" {
                    return Err(invalid(key("tls"), "only used with an https:// upstream"));
                }
                let tk = |k: &str| format!("http[{i}].tls.{k}");
                let client = match (
                    t.client_cert_file.is_some() || t.client_cert_env.is_some(),
                    t.client_key_file.is_some() || t.client_key_env.is_some(),
                ) {
                    (false, false) => None,
                    (true, true) => Some((
                        secret(
                            env,
                            base,
                            t.client_cert_env.as_ref(),
                            t.client_cert_file.as_ref(),
                            &tk,
                            ("client_cert_env", "client_cert_file"),
                        )?,
                        secret(
                            env,
                            base,
                            t.client_key_env.as_ref(),
                            t.client_key_file.as_ref(),
                            &tk,
                            ("client_key_env", "client_key_file"),
                        )?,
                    )),
                    _ => {
                        return Err(invalid(
                            tk("client_key_file"),
                            "a client certificate needs both its certificate and its key",
                        ))
                    }
                };
                let ca_file = t.ca_file.as_deref().map(resolve);
                if let Some(f) = &ca_file {
                    check_pem(f, tk("ca_file"), Pem::Certificates)?;
                }
                Tls { ca_file, client }
            }
        };
        out.push(UpstreamConfig {
            name: raw.name,
            scheme,
            authority,
            host,
            port,
            base_path,
            listen,
            listen_tls,
            prefix,
            principals: raw.principals.into_iter().collect(),
            profile,
            cluster,
            max_body_bytes,
            hold,
            hold_timeout,
            retry_after,
            headers,
            query_lists,
            routes,
            openapi,
            credential,
            tls,
        });
    }
    Ok(out)
}

/// Splits an upstream base URL: `(scheme, authority, host, port, path)`.
fn parse_base(url: &str) -> Result<(String, String, String, u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL like \"https://api.example.com\""))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("{url:?}: use an http:// or https:// URL")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("{url:?} names no host"))?;
    if auth.as_str().contains('@') {
        return Err("credentials go in [http.credentials], not in the URL".into());
    }
    if uri.query().is_some() || url.contains('#') {
        return Err("the base URL takes no query or fragment".into());
    }
    let host = auth.host().to_ascii_lowercase();
    let port = auth.port_u16().unwrap_or(default_port);
    let path = uri.path().trim_end_matches('/').to_string();
    if path.split('/').any(|s| s == "." || s == "..") || path.contains('%') || path.contains(';') {
        return Err("the base URL's path must be plain segments".into());
    }
    Ok((scheme, auth.as_str().to_ascii_lowercase(), host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Vec<UpstreamConfig>, ConfigError> {
        let v: toml::Value = toml::from_str(text).unwrap();
        let principals: BTreeSet<String> = ["agent:bot".to_string()].into();
        let env: HashMap<String, String> =
            [("GH_TOKEN".to_string(), "ghp_s3cret".to_string())].into();
        parse(&v["http"], Path::new("/nonexistent"), &principals, &env)
    }

    /// The token base64-encoded inside any longer value (a Kubernetes
    /// Secret's `data`, a JSON blob encoded whole), at any of the three
    /// alignments, padded or not, in either alphabet, is found by a needle.
    #[test]
    fn the_secret_is_masked_in_its_base64_forms_at_every_alignment() {
        use base64::Engine;
        let token = "eyJhbGciOiJSUzI1NiJ9.sa-token-of-the-gateway~?>";
        let c = Credential::Bearer(Secret(token.into()));
        let needles = c.needles();
        for prefix in ["", "a", "ab", "abc", "{\"token\":\""] {
            for suffix in ["", "x", "xy", "\"}"] {
                let plain = format!("{prefix}{token}{suffix}");
                for engine in [
                    &base64::engine::general_purpose::STANDARD,
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ] {
                    let mut body =
                        format!("{{\"data\":{{\"token\":\"{}\"}}}}", engine.encode(&plain))
                            .into_bytes();
                    let masked = crate::redact::Redactor::mask(&needles, &mut body);
                    assert!(masked > 0, "{plain:?} not masked");
                }
            }
        }
        // Short secrets get no base64 needle (it would match by chance).
        let short = Credential::Bearer(Secret("abc123".into()));
        assert!(short.needles().iter().all(|n| n.len() >= 6));
        assert_eq!(short.needles().len(), 2);
        // Ordinary base64 of something else is left alone.
        let mut other = base64::engine::general_purpose::STANDARD
            .encode("a different value of the same length as the token!!")
            .into_bytes();
        assert_eq!(crate::redact::Redactor::mask(&needles, &mut other), 0);
    }

    /// A header credential with a prefix: the secret alone, and its base64
    /// forms, are masked too, not only the whole header value.
    #[test]
    fn a_prefixed_header_secret_is_masked_alone() {
        use base64::Engine;
        let c = Credential::Header {
            name: "x-api-key".into(),
            prefix: "Key ".into(),
            value: Secret("header-secret-value-ABCDEFG123".into()),
        };
        assert_eq!(c.header().1 .0, "Key header-secret-value-ABCDEFG123");
        let needles = c.needles();
        let b64 =
            base64::engine::general_purpose::STANDARD.encode("header-secret-value-ABCDEFG123");
        let mut body =
            format!("{{\"raw\": \"header-secret-value-ABCDEFG123\", \"u64\": \"{b64}\"}}")
                .into_bytes();
        let masked = crate::redact::Redactor::mask(&needles, &mut body);
        let body = String::from_utf8(body).unwrap();
        assert!(masked >= 2 && !body.contains("ABCDEFG123"), "{body}");
        assert!(!body.contains(&b64[4..24]), "{body}");
    }

    const OK: &str = r#"
[[http]]
name = "github"
upstream = "https://api.github.com/v3/"
principals = ["agent:bot", "group:agents"]
hold = "retry"
headers = ["X-GitHub-Api-Version"]
[[http.routes]]
match = "DELETE /repos/**"
operation = "delete"
writes = ["github://repos/{1}"]
[http.credentials]
type = "bearer"
value_env = "GH_TOKEN"
"#;

    #[test]
    fn a_full_section_loads_and_the_secret_stays_redacted() {
        let c = load(OK).unwrap();
        let u = &c[0];
        assert_eq!(u.prefix.as_deref(), Some("/http/github"));
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port),
            ("https", "api.github.com", 443)
        );
        assert_eq!(u.base_path, "/v3");
        assert_eq!(u.hold, HoldMode::Retry);
        assert!(u.headers.contains("x-github-api-version"));
        assert!(u.admits("agent:other", ["agents".to_string()]));
        assert!(!u.admits("agent:other", ["ops".to_string()]));
        let (name, value) = u.credential.as_ref().unwrap().header();
        assert_eq!(
            (name.as_str(), value.0.as_str()),
            ("authorization", "Bearer ghp_s3cret")
        );
        assert!(!format!("{c:?}").contains("ghp_s3cret"));
    }

    #[test]
    fn errors_name_the_key() {
        for (edit, want) in [
            (
                ("value_env = \"GH_TOKEN\"", "value_env = \"NOPE\""),
                "http[0].credentials.value_env",
            ),
            (("hold = \"retry\"", "hold = \"later\""), "http[0].hold"),
            (("name = \"github\"", "name = \"Git/Hub\""), "http[0].name"),
            (
                (
                    "upstream = \"https://api.github.com/v3/\"",
                    "upstream = \"ftp://x\"",
                ),
                "http[0].upstream",
            ),
            (
                (
                    "upstream = \"https://api.github.com/v3/\"",
                    "upstream = \"https://u:p@x\"",
                ),
                "http[0].upstream",
            ),
            (
                (
                    "principals = [\"agent:bot\", \"group:agents\"]",
                    "principals = [\"agent:nobody\"]",
                ),
                "http[0].principals",
            ),
            (
                ("operation = \"delete\"", "operation = \"Delete!\""),
                "http[0].routes[0].operation",
            ),
            (
                ("match = \"DELETE /repos/**\"", "match = \"DELETE repos\""),
                "http[0].routes[0].match",
            ),
            (
                ("type = \"bearer\"", "type = \"cookie\""),
                "http[0].credentials.type",
            ),
            (
                ("hold = \"retry\"", "hold = \"retry\"\nsurprise = 1"),
                "http[0]",
            ),
            (
                ("hold = \"retry\"", "hold = \"retry\"\nprefix = \"/v1/x\""),
                "http[0].prefix",
            ),
            (
                ("hold = \"retry\"", "hold = \"retry\"\ncluster = \"prod\""),
                "http[0].cluster",
            ),
            (
                (
                    "headers = [\"X-GitHub-Api-Version\"]",
                    "headers = [\"Authorization\"]",
                ),
                "http[0].headers",
            ),
            // A compressed tunnel would hide the credential from the mask.
            (
                (
                    "headers = [\"X-GitHub-Api-Version\"]",
                    "headers = [\"Sec-WebSocket-Extensions\"]",
                ),
                "http[0].headers",
            ),
        ] {
            let text = OK.replacen(edit.0, edit.1, 1);
            assert_ne!(text, OK, "{want}: the edit applies");
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("ghp_s3cret"), "{e}");
        }
    }

    #[test]
    fn a_listener_alone_serves_no_prefix_and_prefixes_must_not_overlap() {
        let text = OK.replacen("hold = \"retry\"", "listen = \"127.0.0.1:0\"", 1);
        assert_eq!(load(&text).unwrap()[0].prefix, None);
        let tls = format!("{OK}[http.listen_tls]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n");
        let e = load(&tls).unwrap_err().to_string();
        assert!(
            e.contains("http[0].listen_tls"),
            "TLS needs a listener of its own: {e}"
        );
        let with_listener = tls.replacen("hold = \"retry\"", "listen = \"127.0.0.1:0\"", 1);
        // Files that cannot be read stop the start, naming the key.
        let e = load(&with_listener).unwrap_err().to_string();
        assert!(
            e.contains("http[0].listen_tls.cert_file")
                && e.contains("cannot read /nonexistent/a.pem"),
            "{e}"
        );
        // With real ones (relative to the config's directory) it loads.
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("a.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), cert.key_pair.serialize_pem()).unwrap();
        let v: toml::Value = toml::from_str(&with_listener).unwrap();
        let principals: BTreeSet<String> = ["agent:bot".to_string()].into();
        let env: HashMap<String, String> =
            [("GH_TOKEN".to_string(), "ghp_s3cret".to_string())].into();
        let c = parse(&v["http"], dir.path(), &principals, &env).unwrap();
        assert_eq!(
            c[0].listen_tls,
            Some((dir.path().join("a.pem"), dir.path().join("a.key")))
        );
        // A key file that holds no key, a CA file that holds no certificate.
        std::fs::write(dir.path().join("a.key"), "not PEM\n").unwrap();
        let e = parse(&v["http"], dir.path(), &principals, &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http[0].listen_tls.key_file") && e.contains("holds no PEM private key"),
            "{e}"
        );
        let ca = format!("{OK}[http.tls]\nca_file = \"a.key\"\n");
        let v: toml::Value = toml::from_str(&ca).unwrap();
        let e = parse(&v["http"], dir.path(), &principals, &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http[0].tls.ca_file") && e.contains("holds no PEM certificate"),
            "{e}"
        );
        let two = format!("{OK}\n[[http]]\nname = \"gh2\"\nupstream = \"http://x\"\nprincipals = [\"agent:bot\"]\nprefix = \"/http/github/sub\"\n");
        let e = load(&two).unwrap_err().to_string();
        assert!(e.contains("http[1].prefix"), "{e}");
    }

    #[test]
    fn basic_credentials_hide_the_password_and_its_encoding() {
        let text = OK.replacen(
            "type = \"bearer\"",
            "type = \"basic\"\nusername = \"deploy\"",
            1,
        );
        let c = load(&text).unwrap();
        let cred = c[0].credential.as_ref().unwrap();
        let needles = cred.needles();
        assert!(needles.contains(&b"ghp_s3cret".to_vec()));
        assert!(
            needles.iter().any(|n| n.starts_with(b"ZGVwbG95")),
            "base64 of deploy:… is a needle"
        );
    }
}
