//! Configuration: a TOML file plus `SECONDKEY_*` environment variables.
//!
//! Every error names the key at fault and what to do about it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secondkey_core::principal::{Principal, PrincipalId, PrincipalKind};
use serde::Deserialize;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A key's value came from a `SECONDKEY_*` variable, not the file.
    #[error("config key `{key}`, set by {var}: {message}")]
    FromEnv {
        var: String,
        key: String,
        message: String,
    },
}

/// The variables that override keys of the file, and those keys.
const ENV_OVERRIDES: [(&str, &str); 8] = [
    ("SECONDKEY_LISTEN", "listen"),
    ("SECONDKEY_DATA_DIR", "data_dir"),
    ("SECONDKEY_STORE_URL", "store.url"),
    ("SECONDKEY_POLICY_DIR", "policy_dir"),
    ("SECONDKEY_PUBLIC_URL", "public_url"),
    ("SECONDKEY_LOG_ORIGIN", "log.origin"),
    ("SECONDKEY_LOG_AFTER_WINDOW", "log.after_window"),
    ("SECONDKEY_LOG_COMMIT_DELAY_US", "log.commit_delay_us"),
];

/// `[log] commit_delay_us` when unset: 300 µs showed no gain on the HTTP
/// gateway bench (bench/README.md §11, 2026-12-03), so off by default.
const DEFAULT_COMMIT_DELAY_US: u64 = 0;

/// The longest `[requests] max_wait_seconds`: a long-poll held an hour
/// is already past what proxies keep open; a client waits longer by
/// asking again.
const MAX_WAIT_SECONDS: u64 = 3600;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Reads an extension's section (or one table of an array of tables),
/// found at `at` (`postgres[0]`), into its typed form. An error comes back
/// as the key it is about and serde's message: a value of the wrong type
/// or an unknown key deep in the section names its own key
/// (`postgres[0].max_sessions`, `http[0].routes[1].method`).
pub fn read_section<T: serde::de::DeserializeOwned>(
    v: &toml::Value,
    at: &str,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let key = match path.as_str() {
            "." => at.to_string(),
            p if p.starts_with('[') => format!("{at}{p}"),
            p => format!("{at}.{p}"),
        };
        (key, e.into_inner().message().to_string())
    })
}

/// `data_dir/keys/<name>`, where the log's and the grants' keys live
/// unless configured. Earlier builds put them under the config file's
/// directory twice over when `data_dir` was relative and the config
/// was named by a relative path (`sub/sk.toml`: `sub/sub/<data_dir>/keys`);
/// a key found only there is used, with a warning to move it, so that an
/// existing log keeps its key.
fn default_key(base: &Path, data_dir: &Path, name: &str) -> PathBuf {
    let path = data_dir.join("keys").join(name);
    if path.is_absolute() || path.exists() {
        return path;
    }
    let old = base.join(&path);
    if old != path && old.is_file() {
        tracing::warn!(
            key = %old.display(),
            expected = %path.display(),
            "a key is where earlier releases put it by mistake: it is used; move it to the expected path"
        );
        return old;
    }
    path
}

/// The canonical spelling of a URI-like resource for matching: scheme and
/// host lowercased, user info dropped, the scheme's default port dropped.
/// `None` for a resource with `.`/`..` path segments or percent-encoded dots,
/// which could name something other than what they appear to.
pub fn normalize_resource(resource: &str) -> Option<String> {
    let Some((scheme, rest)) = resource.split_once("://") else {
        return Some(resource.to_string());
    };
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = host_port.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "postgres" | "postgresql" => Some("5432"),
        "mysql" => Some("3306"),
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    };
    let host = match (host_port.rsplit_once(':'), default_port) {
        (Some((h, p)), Some(d)) if p == d => h.to_string(),
        _ => host_port,
    };
    let lower = path.to_ascii_lowercase();
    let only_path = lower.split(['?', '#']).next().unwrap_or("");
    if only_path.split('/').any(|seg| seg == "." || seg == "..") || lower.contains("%2e") {
        return None;
    }
    Some(format!("{scheme}://{host}{path}"))
}

/// The file as written. Unknown keys are errors, so a typo never silently
/// turns a setting off.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub policy_dir: Option<PathBuf>,
    /// Base URL humans use to reach this gateway (request links).
    pub public_url: Option<String>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub grants: RawGrants,
    #[serde(default)]
    pub requests: RawRequests,
    #[serde(default)]
    pub principals: Vec<RawPrincipal>,
    #[serde(default)]
    pub sinks: Vec<secondkey_sinks::SinkConfig>,
    /// Which resources live in which environment. The gateway passes the
    /// match to policy as `context.gateway.environment` — a fact the agent
    /// cannot forge, unlike its declared `context.environment`.
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    /// `[web]`: the reviewer web UI.
    #[serde(default)]
    pub web: RawWeb,
    /// Sections that extensions validate themselves (see
    /// [`EXTENSION_SECTIONS`]), kept as written.
    pub postgres: Option<toml::Value>,
    pub mcp: Option<toml::Value>,
    /// `[[http]]` upstreams of the HTTP gateway (`secondkey-http`).
    pub http: Option<toml::Value>,
    pub slack: Option<toml::Value>,
    pub teams: Option<toml::Value>,
    pub webhooks: Option<toml::Value>,
    /// Human sign-in for the web UI (OpenID Connect).
    pub oidc: Option<RawOidc>,
    /// Other ways for machines to authenticate besides static tokens.
    #[serde(default)]
    pub identity: RawIdentity,
    /// Channel routing (owned by the channels crate).
    pub routing: Option<toml::Value>,
    /// The SSH gateway's listener and agents' keys, and its upstream
    /// hosts (owned by the ssh crate).
    pub ssh_gateway: Option<toml::Value>,
    pub ssh: Option<toml::Value>,
    /// What one client may hold or do at once (see `docs/security.md`).
    #[serde(default)]
    pub limits: RawLimits,
    /// Who may read `/metrics`.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Where the state and the log are kept: PostgreSQL when `url` is set
    /// (several replicas may share it), else SQLite in `data_dir`.
    pub store: Option<RawStore>,
    /// How policies are checked at load (`[policy]`).
    #[serde(default)]
    pub policy: RawPolicy,
}

/// `[policy]`: what policy loading accepts beyond what secondkey reads.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Annotation names authors may use besides the `x_` prefix
    /// (e.g. `["owner", "ticket"]`); secondkey keeps them and never reads
    /// them.
    #[serde(default)]
    pub annotations: Vec<String>,
}

/// `[store]`: a PostgreSQL store shared by replicas (see `docs/replicas.md`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `postgres://USER@HOST[:PORT]/DB[?sslmode=verify-full|disable]`,
    /// no password in it.
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM certificate authorities the server's certificate must chain to
    /// (default: the web's public roots).
    pub ca_file: Option<PathBuf>,
}

/// `[limits]`: connection hygiene of the main listener and what one
/// principal may hold or do. Every key is optional; see
/// [`Limits::default`] for the defaults and `docs/security.md` for why.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_waits_per_principal: Option<usize>,
    pub max_streams_per_principal: Option<usize>,
    pub max_waits_per_issuer: Option<usize>,
    pub max_streams_per_issuer: Option<usize>,
    pub max_pending_per_principal: Option<u64>,
    pub requests_per_minute: Option<u32>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Groups whose members may read `/metrics` (default `["monitoring"]`).
    pub readers: Option<Vec<String>>,
}

/// The validated `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The main listener's connection caps and deadlines.
    pub conn: crate::limits::ConnLimits,
    /// Concurrent `?wait=` long-polls of one principal.
    pub max_waits_per_principal: usize,
    /// Concurrent event streams of one principal.
    pub max_streams_per_principal: usize,
    /// Concurrent long-polls of all the principals one `[[identity.jwt]]`
    /// issuer vouches for that no `[[principals]]` entry names.
    pub max_waits_per_issuer: usize,
    /// The same, for event streams.
    pub max_streams_per_issuer: usize,
    /// Requests of one principal pending review at once.
    pub max_pending_per_principal: u64,
    /// Requests one principal may open per minute (a minute's worth may
    /// come at once); 0 is unlimited.
    pub requests_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            conn: crate::limits::ConnLimits::default(),
            max_waits_per_principal: 32,
            max_streams_per_principal: 16,
            max_waits_per_issuer: 256,
            max_streams_per_issuer: 128,
            max_pending_per_principal: 100,
            requests_per_minute: 60,
        }
    }
}

/// Whom a principal may act for (`[[principals]] may_act_for`): what backs
/// the `on_behalf_of` of its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActsFor {
    /// `user:*`: any human.
    AnyUser,
    /// One human.
    User(PrincipalId),
}

/// `[oidc]`: the identity provider humans sign in with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The provider's issuer URL; its metadata is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret (mode 0600).
    pub client_secret_file: Option<PathBuf>,
    /// Where the provider sends the browser back; defaults to
    /// `{public_url}/auth/callback`. Register exactly this URL.
    pub redirect_url: Option<String>,
    /// Default `["openid", "profile", "email"]`.
    pub scopes: Option<Vec<String>>,
    /// The ID-token claim that names the user (principal `user:<value>`).
    /// Default `preferred_username`.
    pub username_claim: Option<String>,
    /// The ID-token claim listing the user's groups (an array of strings).
    pub groups_claim: Option<String>,
    /// Provider group → secondkey groups. When set, only mapped groups count.
    pub group_map: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// How long a web session lasts. Default `8h`.
    pub session_ttl: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub token_auth_method: Option<String>,
    /// Refuse sign-ins that are no configured principal. Default false.
    pub require_configured: Option<bool>,
    /// A review through the web needs a sign-in at most this old. Default `1h`.
    pub review_max_age: Option<String>,
}

/// `[identity]`: machine identities beyond static tokens.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    pub jwt: Vec<RawJwtIssuer>,
}

/// `[[identity.jwt]]`: a workload identity provider whose JWTs agents and
/// services present as bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    pub issuer: String,
    /// Accepted audiences (a string or a list).
    pub audience: StringOrList,
    /// The JWKS URL; or else `metadata_url`; or else the issuer's
    /// `/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    pub metadata_url: Option<String>,
    /// The claim naming the principal. Default `sub`.
    pub principal_claim: Option<String>,
    /// `agent` or `service` (default): the principal is `<kind>:<claim>`.
    pub principal_kind: Option<String>,
    /// Claim value → principal id, for subjects that are not plain names
    /// (e.g. `repo:org/app:ref:refs/heads/main` → `service:deploy`). When
    /// set, unmapped subjects are refused.
    pub map: Option<std::collections::BTreeMap<String, String>>,
    /// Only principals configured in `[[principals]]` are accepted.
    #[serde(default)]
    pub require_configured: bool,
    /// Accept RFC 8693 delegation tokens: a token with an `act` claim
    /// authenticates its actor (`act.sub`, mapped like `principal_claim`),
    /// acting for the human `user:<this claim's value>`.
    pub delegation_user_claim: Option<String>,
    /// Default: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA.
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf` (default 60s; 1s to 5m).
    pub leeway: Option<String>,
    /// How long the issuer's fetched keys are used before they are fetched
    /// again (default 1h; 1m to 24h).
    pub keys_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s.clone()],
            StringOrList::Many(v) => v.clone(),
        }
    }
}

/// The validated `[oidc]` section. Its `Debug` leaves the client secret out.
#[derive(Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_url: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: Option<String>,
    /// `[oidc.group_map]`. Without it the provider's groups count as sent;
    /// with it — even an empty table — only its targets count.
    pub group_map: Option<std::collections::BTreeMap<String, Vec<String>>>,
    pub session_ttl: Duration,
    /// true: `client_secret_post`; false: HTTP Basic.
    pub secret_in_body: bool,
    /// Only configured principals sign in (see `identity::web_principal`).
    pub require_configured: bool,
    /// A review through the web needs a sign-in at most this old: the
    /// identity provider's groups and the account itself are read again.
    pub review_max_age: Duration,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("username_claim", &self.username_claim)
            .field("groups_claim", &self.groups_claim)
            .field("group_map", &self.group_map)
            .field("session_ttl", &self.session_ttl)
            .field("secret_in_body", &self.secret_in_body)
            .field("require_configured", &self.require_configured)
            .field("review_max_age", &self.review_max_age)
            .finish()
    }
}

/// One validated `[[identity.jwt]]` entry.
#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: crate::jwt::KeySource,
    pub principal_claim: String,
    pub principal_kind: PrincipalKind,
    pub map: std::collections::BTreeMap<String, PrincipalId>,
    pub require_configured: bool,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// RFC 8693 delegation tokens accepted, naming the human in this claim.
    pub delegation_user_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How long fetched keys are used before they are fetched again.
    pub keys_ttl: Duration,
}

/// `[[identity.jwt]]`'s `leeway` when not set, and its bounds.
pub const JWT_LEEWAY: Duration = Duration::from_secs(60);
const JWT_LEEWAY_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// `[[identity.jwt]]`'s `keys_ttl` when not set, and its bounds.
pub const JWT_KEYS_TTL: Duration = Duration::from_secs(3600);
const JWT_KEYS_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(86_400));

/// Top-level keys whose contents belong to an extension crate: the gateway
/// keeps them raw in [`Config::sections`]; the extension's own parser names
/// the full key in its errors (e.g. `postgres[0].upstream.password_env`).
pub const EXTENSION_SECTIONS: [&str; 9] = [
    "postgres",
    "mcp",
    "slack",
    "teams",
    "webhooks",
    "routing",
    "http",
    "ssh_gateway",
    "ssh",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub name: String,
    /// Resource patterns: exact strings, or a prefix ending in `*`.
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub origin: Option<String>,
    /// Signer key file (C2SP note signer format). Created on first start.
    pub key_file: Option<PathBuf>,
    /// Groups whose members may read log entries (entry bundles, receipts).
    /// Checkpoints and hash tiles are public: they reveal nothing.
    pub readers: Option<Vec<String>>,
    /// C2SP tlog witnesses each new checkpoint is submitted to.
    #[serde(default)]
    pub witnesses: Vec<RawWitness>,
    /// How long an allow under `@record("after")` may run before its entry
    /// is durable, e.g. `"10ms"` (the default).
    pub after_window: Option<String>,
    /// Most `@record("after")` allows not yet durable at once (default
    /// 1024); past it, new ones wait for their entry like any allow.
    pub after_max_pending: Option<u64>,
    /// Group commit's delay in microseconds (0..=10000): see
    /// `secondkey_store::StoreOptions::commit_delay`.
    pub commit_delay_us: Option<u64>,
}

/// `[[log.witnesses]]`: a C2SP tlog witness.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWitness {
    /// A name for logs and `/healthz`.
    pub name: String,
    /// The witness's submission prefix; `add-checkpoint` is posted under it.
    pub url: String,
    /// The witness's cosigner verifier key (`<name>+<id>+<base64>`, type 0x04).
    pub key: String,
    /// Seconds per submission; default 10.
    pub timeout_secs: Option<u64>,
}

/// A witness the gateway submits checkpoints to.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    pub name: String,
    pub url: String,
    pub key: secondkey_log::witness::CosignerKey,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// How long the grant of an immediately allowed action stays usable.
    pub allow_ttl: Option<String>,
    /// Ed25519 key for grant JWS. Created on first start.
    pub key_file: Option<PathBuf>,
    /// Principals (usually interception adapters, e.g. `service:pg-gateway`)
    /// that may consume a grant on its requester's behalf and report the
    /// result. Nobody else can use someone else's grant.
    #[serde(default)]
    pub executors: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequests {
    /// Fraction of a request's TTL after which `escalation_due` fires.
    pub escalation_fraction: Option<f64>,
    /// Longest `?wait=` a client may ask for, in seconds.
    pub max_wait_seconds: Option<u64>,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: Option<usize>,
}

/// `[web]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Environments where a batch decision needs a comment when it holds a
    /// sensitive operation (default `["prod", "production"]`).
    pub batch_comment_environments: Option<Vec<String>>,
    /// The sensitive operations (default `["write", "delete", "export",
    /// "admin", "ddl", "grant"]`).
    pub batch_comment_operations: Option<Vec<String>>,
    /// Groups whose members may end all of another person's web sessions
    /// (default `["security"]`).
    pub session_admins: Option<Vec<String>>,
}

/// `[web]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// A batch holding a [`WebConfig::batch_comment_operations`] action
    /// in one of these environments (configured, or declared by the agent)
    /// needs a comment. Empty: never.
    pub batch_comment_environments: Vec<String>,
    pub batch_comment_operations: Vec<String>,
    /// Members of these groups (people and services, never agents) may end
    /// every web session of a person at once (`POST /v1/sessions/revoke`,
    /// `secondkey sessions revoke`). Empty: only people ending their own.
    pub session_admins: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            batch_comment_environments: vec!["prod".into(), "production".into()],
            batch_comment_operations: ["write", "delete", "export", "admin", "ddl", "grant"]
                .map(String::from)
                .to_vec(),
            session_admins: vec!["security".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    pub id: String,
    pub owner: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub token_sha256: Option<String>,
    pub token_env: Option<String>,
    /// The humans this principal may act for: `user:NAME` or `user:*`.
    /// Backs the `on_behalf_of` of its actions (see `docs/identity.md`).
    #[serde(default)]
    pub may_act_for: Vec<String>,
    /// Identity-provider accounts that are this principal, each
    /// `<issuer>|<sub>`: a web sign-in with one of them is this principal
    /// (see `docs/identity.md`).
    #[serde(default)]
    pub oidc_subjects: Vec<String>,
}

/// The validated configuration the gateway runs with. Its `Debug` shows
/// the environment and the extension sections by name only: they hold
/// tokens, passwords and inline secrets.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub public_url: String,
    pub log_origin: String,
    pub log_key_file: PathBuf,
    pub log_readers: Vec<String>,
    pub executors: BTreeSet<String>,
    pub grant_key_file: PathBuf,
    pub allow_grant_ttl: Duration,
    /// `[log] after_window`: the bound on how long an allow under
    /// `@record("after")` runs before its entry is durable.
    pub after_window: Duration,
    /// `[log] after_max_pending`: most such allows not yet durable at once.
    pub after_max_pending: usize,
    /// `[log] commit_delay_us`: group commit's delay under concurrency.
    pub commit_delay: Duration,
    pub escalation_fraction: f64,
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    /// sha256(token) → principal.
    pub tokens: HashMap<[u8; 32], Principal>,
    /// Every configured principal by id (reviewer lookups, ownership).
    pub principals: HashMap<String, Principal>,
    pub sinks: Vec<secondkey_sinks::SinkConfig>,
    /// (environment, resource patterns), first match wins.
    pub environments: Vec<(String, Vec<String>)>,
    /// Raw extension sections by top-level key (see [`EXTENSION_SECTIONS`]).
    pub sections: std::collections::BTreeMap<String, toml::Value>,
    /// The directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// The environment the configuration was read with (for `*_env` keys of
    /// extension sections).
    pub env: HashMap<String, String>,
    /// Human sign-in, when configured.
    pub oidc: Option<OidcConfig>,
    /// Workload identity providers whose JWTs are accepted as bearer tokens.
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    /// Whom each principal may act for, by principal id (`may_act_for`).
    pub delegations: HashMap<String, Vec<ActsFor>>,
    /// `[limits]`.
    pub limits: Limits,
    /// Groups whose members may read `/metrics`.
    pub metrics_readers: Vec<String>,
    /// Witnesses that cosign the log's checkpoints (`[[log.witnesses]]`).
    pub witnesses: Vec<WitnessConfig>,
    /// `[policy] annotations`: custom annotation names policies may carry.
    pub policy_annotations: BTreeSet<String>,
    /// `[web]`.
    pub web: WebConfig,
    /// `[store]`: PostgreSQL, shared by replicas; `None` keeps SQLite in
    /// `data_dir`.
    pub store: Option<secondkey_store::PgOptions>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("policy_dir", &self.policy_dir)
            .field("public_url", &self.public_url)
            .field("log_origin", &self.log_origin)
            .field("log_key_file", &self.log_key_file)
            .field("log_readers", &self.log_readers)
            .field("executors", &self.executors)
            .field("grant_key_file", &self.grant_key_file)
            .field("allow_grant_ttl", &self.allow_grant_ttl)
            .field("after_window", &self.after_window)
            .field("after_max_pending", &self.after_max_pending)
            .field("commit_delay", &self.commit_delay)
            .field("escalation_fraction", &self.escalation_fraction)
            .field("max_wait", &self.max_wait)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tokens", &self.tokens.len())
            .field("principals", &self.principals)
            .field("sinks", &self.sinks)
            .field("environments", &self.environments)
            .field("sections", &self.sections.keys().collect::<Vec<_>>())
            .field("base_dir", &self.base_dir)
            .field("env", &self.env.keys().collect::<BTreeSet<_>>())
            .field("oidc", &self.oidc)
            .field("jwt_issuers", &self.jwt_issuers)
            .field("delegations", &self.delegations)
            .field("limits", &self.limits)
            .field("metrics_readers", &self.metrics_readers)
            .field("witnesses", &self.witnesses)
            .field("policy_annotations", &self.policy_annotations)
            .field("web", &self.web)
            .field("store", &self.store)
            .finish()
    }
}

impl Config {
    /// How to open this configuration's store.
    /// Where the store is, for messages: the PostgreSQL URL (it never
    /// holds the password) or the data directory.
    pub fn store_place(&self) -> String {
        match &self.store {
            Some(pg) => format!("the PostgreSQL store {}", pg.url),
            None => format!("the store in {}", self.data_dir.display()),
        }
    }

    pub fn store_options(&self) -> secondkey_store::StoreOptions {
        let mut o = secondkey_store::StoreOptions::new(&self.data_dir);
        o.commit_delay = self.commit_delay;
        match &self.store {
            Some(pg) => o.postgres(pg.clone()),
            None => o,
        }
    }
}

impl Config {
    /// How the policy directory is checked at every load and reload: the
    /// allowed custom annotations, and the groups reviewers come from —
    /// configured principals' groups (humans counted; agents and services
    /// never review) and what `[oidc]` may add at sign-in (any group when
    /// `groups_claim` is read as is, only `group_map`'s targets when mapped).
    pub fn policy_options(&self) -> secondkey_policy::LoadOptions {
        use secondkey_policy::{Groups, IdpGroups};
        let mut humans: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for p in self.principals.values() {
            for g in &p.groups {
                let members = humans.entry(g.clone()).or_default();
                if p.is_human() {
                    members.insert(p.id.to_string());
                }
            }
        }
        let identity_provider = match &self.oidc {
            Some(o) if o.groups_claim.is_some() => match &o.group_map {
                None => IdpGroups::Any,
                Some(map) => IdpGroups::Mapped(map.values().flatten().cloned().collect()),
            },
            _ => IdpGroups::None,
        };
        secondkey_policy::LoadOptions {
            annotations: self.policy_annotations.clone(),
            groups: Some(Groups {
                humans,
                identity_provider,
            }),
        }
    }

    /// The configured environment of a resource, if any. Matching is on the
    /// normalized resource (see [`normalize_resource`]), so spelling tricks
    /// (`postgres://Analytics`, `postgres://bob@analytics:5432`) do not
    /// escape it; a resource with dot segments has no environment.
    pub fn environment_of(&self, resource: &str) -> Option<&str> {
        if self.environments.is_empty() {
            return None;
        }
        let resource = normalize_resource(resource)?;
        self.environments.iter().find_map(|(name, pats)| {
            pats.iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => resource.starts_with(prefix),
                    None => resource == *p,
                })
                .then_some(name.as_str())
        })
    }

    /// Reads `path` and applies `SECONDKEY_*` overrides from `env`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::load_as(path, env, false)
    }

    /// [`Config::load`] for commands that do not run the gateway (`policy
    /// validate`, `log export`, `recording`, …): the gateway's own secrets —
    /// an agent's `token_env`, `[oidc] client_secret_env` — may be unset
    /// (that principal then has no token, sign-in no client secret).
    /// What the command itself needs, such as `[store] password_env`, is
    /// still required.
    pub fn load_offline(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::load_as(path, env, true)
    }

    fn load_as(
        path: &Path,
        env: &HashMap<String, String>,
        offline: bool,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_as(&text, &path.display().to_string(), base, env, offline)
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn from_toml(
        text: &str,
        name: &str,
        base: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        Config::from_toml_as(text, name, base, env, false)
    }

    fn from_toml_as(
        text: &str,
        name: &str,
        base: &Path,
        env: &HashMap<String, String>,
        offline: bool,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        Config::from_raw(raw, base, env, offline)
    }

    /// A path from the file, resolved against [`Config::base_dir`].
    pub fn resolve_path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Builds the error an extension returns for a key of its section.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        invalid(key, message)
    }

    /// Checks and resolves a parsed file; `offline`: see
    /// [`Config::load_offline`]. An error about a key a `SECONDKEY_*`
    /// variable set names that variable, where the fix is.
    fn from_raw(
        raw: RawConfig,
        base: &Path,
        env: &HashMap<String, String>,
        offline: bool,
    ) -> Result<Config, ConfigError> {
        Config::from_raw_env(raw, base, env, offline).map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                match ENV_OVERRIDES
                    .iter()
                    .find(|(var, k)| *k == key && env.contains_key(*var))
                {
                    Some((var, _)) => ConfigError::FromEnv {
                        var: var.to_string(),
                        key,
                        message,
                    },
                    None => ConfigError::Invalid { key, message },
                }
            }
            other => other,
        })
    }

    fn from_raw_env(
        mut raw: RawConfig,
        base: &Path,
        env: &HashMap<String, String>,
        offline: bool,
    ) -> Result<Config, ConfigError> {
        if let Some(v) = env.get("SECONDKEY_LISTEN") {
            raw.listen = Some(v.clone());
        }
        if let Some(v) = env.get("SECONDKEY_DATA_DIR") {
            raw.data_dir = Some(v.into());
        }
        if let Some(v) = env.get("SECONDKEY_STORE_URL") {
            raw.store.get_or_insert_with(Default::default).url = Some(v.clone());
        }
        if let Some(v) = env.get("SECONDKEY_POLICY_DIR") {
            raw.policy_dir = Some(v.into());
        }
        if let Some(v) = env.get("SECONDKEY_PUBLIC_URL") {
            raw.public_url = Some(v.clone());
        }
        if let Some(v) = env.get("SECONDKEY_LOG_ORIGIN") {
            raw.log.origin = Some(v.clone());
        }
        if let Some(v) = env.get("SECONDKEY_LOG_AFTER_WINDOW") {
            raw.log.after_window = Some(v.clone());
        }
        if let Some(v) = env.get("SECONDKEY_LOG_COMMIT_DELAY_US") {
            raw.log.commit_delay_us = Some(v.trim().parse().map_err(|_| {
                invalid(
                    "log.commit_delay_us",
                    format!("must be a whole number of microseconds, not {v:?}"),
                )
            })?);
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let listen_s = raw.listen.unwrap_or_else(|| "127.0.0.1:8750".into());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_s:?} is not an address like \"127.0.0.1:8750\""),
            )
        })?;
        let data_dir = resolve(raw.data_dir.unwrap_or_else(|| "./secondkey-data".into()));
        let policy_dir = resolve(raw.policy_dir.unwrap_or_else(|| "./policies".into()));
        let public_url = raw
            .public_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(invalid("public_url", "must start with http:// or https://"));
        }
        let log_origin = raw
            .log
            .origin
            .unwrap_or_else(|| "secondkey.local/log".into());
        if log_origin.is_empty()
            || log_origin.contains(char::is_whitespace)
            || log_origin.contains('+')
        {
            return Err(invalid(
                "log.origin",
                "must be a non-empty name without spaces or '+', like \"secondkey.example/log\"",
            ));
        }
        // A configured key file is read from the config file's directory
        // when relative; the defaults are under `data_dir`, already so.
        let log_key_file = raw
            .log
            .key_file
            .map(&resolve)
            .unwrap_or_else(|| default_key(base, &data_dir, "log.key"));
        let grant_key_file = raw
            .grants
            .key_file
            .map(&resolve)
            .unwrap_or_else(|| default_key(base, &data_dir, "grant.key"));
        let allow_grant_ttl = match raw.grants.allow_ttl {
            Some(s) => secondkey_core::time::parse_duration(&s)
                .map_err(|e| invalid("grants.allow_ttl", e.to_string()))?,
            None => Duration::from_secs(300),
        };
        let (lo, hi) = secondkey_policy::GRANT_TTL_BOUNDS;
        if allow_grant_ttl < lo || allow_grant_ttl > hi {
            return Err(invalid(
                "grants.allow_ttl",
                format!(
                    "must be between {} and {}, as @grant_ttl (e.g. \"5m\")",
                    secondkey_policy::fmt_duration(lo),
                    secondkey_policy::fmt_duration(hi)
                ),
            ));
        }
        let after_window = match &raw.log.after_window {
            Some(s) => secondkey_core::time::parse_duration(s)
                .map_err(|e| invalid("log.after_window", e.to_string()))?,
            None => Duration::from_millis(10),
        };
        if after_window < Duration::from_millis(4) || after_window > Duration::from_secs(60) {
            return Err(invalid(
                "log.after_window",
                "must be between 4ms and 60s (e.g. \"10ms\"): a result waits up to a quarter of the window to share a commit, and a decision without its result half of it, so a smaller one cannot be kept",
            ));
        }
        let commit_delay = match raw.log.commit_delay_us {
            None => Duration::from_micros(DEFAULT_COMMIT_DELAY_US),
            Some(n @ 0..=10_000) => Duration::from_micros(n),
            Some(_) => {
                return Err(invalid(
                    "log.commit_delay_us",
                    "must be between 0 and 10000 (microseconds; 0 commits at once)",
                ))
            }
        };
        let after_max_pending = match raw.log.after_max_pending {
            None => 1024,
            Some(n @ 1..=1_000_000) => n as usize,
            Some(_) => {
                return Err(invalid(
                    "log.after_max_pending",
                    "must be between 1 and 1000000",
                ))
            }
        };
        let escalation_fraction = raw.requests.escalation_fraction.unwrap_or(0.5);
        if !(escalation_fraction > 0.0 && escalation_fraction < 1.0) {
            return Err(invalid(
                "requests.escalation_fraction",
                "must be between 0 and 1 (exclusive), e.g. 0.5",
            ));
        }
        let max_wait = match raw.requests.max_wait_seconds {
            None => Duration::from_secs(60),
            Some(n @ 1..=MAX_WAIT_SECONDS) => Duration::from_secs(n),
            Some(_) => {
                return Err(invalid(
                    "requests.max_wait_seconds",
                    format!("must be between 1 and {MAX_WAIT_SECONDS} (seconds; a client waits longer by asking again)"),
                ))
            }
        };
        let max_body_bytes = raw.requests.max_body_bytes.unwrap_or(1 << 20);
        if max_body_bytes < 1024 {
            return Err(invalid("requests.max_body_bytes", "must be at least 1024"));
        }

        let mut principals = HashMap::new();
        let mut tokens = HashMap::new();
        let mut delegations = HashMap::new();
        // id → where it was configured, to name both spellings of a collision
        let mut first_seen: HashMap<String, (usize, String)> = HashMap::new();
        // pinned account → the principal it is
        let mut pinned: HashMap<String, PrincipalId> = HashMap::new();
        for (i, p) in raw.principals.iter().enumerate() {
            let key = |k: &str| format!("principals[{i}].{k}");
            let id: PrincipalId =
                p.id.parse()
                    .map_err(|e: secondkey_core::principal::PrincipalError| {
                        invalid(key("id"), e.to_string())
                    })?;
            let owner = match &p.owner {
                Some(o) => {
                    let o: PrincipalId =
                        o.parse()
                            .map_err(|e: secondkey_core::principal::PrincipalError| {
                                invalid(key("owner"), e.to_string())
                            })?;
                    if id.kind() != PrincipalKind::Agent {
                        return Err(invalid(key("owner"), "only agents have an owner"));
                    }
                    if o.kind() != PrincipalKind::User {
                        return Err(invalid(key("owner"), "an owner must be a user (user:NAME)"));
                    }
                    Some(o)
                }
                None => None,
            };
            let groups: BTreeSet<String> = p.groups.iter().cloned().collect();
            for g in &groups {
                if g.is_empty() || g.contains(',') || g.contains('"') {
                    return Err(invalid(key("groups"), format!("bad group name {g:?}")));
                }
            }
            let mut subjects = BTreeSet::new();
            for sub in &p.oidc_subjects {
                let ok = sub.len() <= 1024
                    && sub
                        .split_once('|')
                        .is_some_and(|(iss, s)| !iss.is_empty() && !s.is_empty());
                if !ok {
                    return Err(invalid(
                        key("oidc_subjects"),
                        format!(
                            "{sub:?} is not <issuer>|<sub>, e.g. \"https://idp.example|00u1abcd\""
                        ),
                    ));
                }
                let (iss, s) = sub.split_once('|').unwrap_or_default();
                let sub = crate::identity::subject_key(iss, s);
                if let Some(other) = pinned.insert(sub.clone(), id.clone()) {
                    if other != id {
                        return Err(invalid(
                            key("oidc_subjects"),
                            format!("{sub:?} is pinned to {other} already; one account is one principal"),
                        ));
                    }
                }
                subjects.insert(sub);
            }
            let principal = Principal {
                id: id.clone(),
                owner,
                groups,
                subjects,
            };
            let hash = match (&p.token_sha256, &p.token_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("token_sha256"),
                        "set either token_sha256 or token_env, not both",
                    ))
                }
                (Some(h), None) => {
                    let bytes = hex::decode(h).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                        invalid(
                            key("token_sha256"),
                            "must be 64 hex characters: the SHA-256 of the token (e.g. `printf %s TOKEN | sha256sum`)",
                        )
                    })?;
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&bytes);
                    Some(a)
                }
                // Offline, an unset variable leaves the principal without
                // a token: nothing authenticates then.
                (None, Some(var)) if offline && !env.contains_key(var) => None,
                (None, Some(var)) => {
                    let token = env.get(var).ok_or_else(|| {
                        invalid(
                            key("token_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    if token.len() < 16 {
                        return Err(invalid(
                            key("token_env"),
                            format!("the token in {var} is shorter than 16 characters"),
                        ));
                    }
                    Some(crate::auth::token_hash(token))
                }
                (None, None) => None,
            };
            if let Some((j, earlier)) = first_seen.get(id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!(
                        "{:?} is {id}, already configured as {earlier:?} in principals[{j}]; ids are read in lowercase, so letter case never makes two principals",
                        p.id
                    ),
                ));
            }
            first_seen.insert(id.to_string(), (i, p.id.clone()));
            principals.insert(id.to_string(), principal.clone());
            if !p.may_act_for.is_empty() {
                delegations.insert(
                    id.to_string(),
                    acts_for(&key("may_act_for"), &p.may_act_for)?,
                );
            }
            if let Some(h) = hash {
                if tokens.insert(h, principal).is_some() {
                    return Err(invalid(
                        key("token_sha256"),
                        "the same token is used by two principals",
                    ));
                }
            }
        }
        for (id, p) in &principals {
            if let Some(o) = &p.owner {
                if !principals.contains_key(&o.to_string()) {
                    return Err(invalid(
                        "principals",
                        format!("{id} is owned by {o}, which is not configured"),
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, s) in raw.sinks.iter().enumerate() {
            if !names.insert(s.name().to_string()) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    "sink names must be unique",
                ));
            }
            // Built once here (no connection is made) so that a bad value
            // (facility, URL, secret, CA file) refuses the configuration.
            // A secret's environment variable is the running gateway's
            // business: `serve` refuses to start without it, while offline
            // commands (`policy validate --config`) need not have it.
            match s.build(&log_origin) {
                Ok(_)
                | Err(secondkey_sinks::ConfigError::SecretEnv { .. })
                | Err(secondkey_sinks::ConfigError::ApiKeyEnv { .. }) => {}
                Err(e) => return Err(invalid(format!("sinks[{i}]"), e.to_string())),
            }
        }
        let mut environments = Vec::new();
        for (i, e) in raw.environments.iter().enumerate() {
            if e.name.is_empty() || e.resources.is_empty() {
                return Err(invalid(
                    format!("environments[{i}]"),
                    "needs a name and at least one resource pattern",
                ));
            }
            if let Some(p) = e
                .resources
                .iter()
                .find(|p| p.is_empty() || p[..p.len().saturating_sub(1)].contains('*'))
            {
                return Err(invalid(
                    format!("environments[{i}].resources"),
                    format!("{p:?}: use an exact resource or a prefix ending in a single `*`"),
                ));
            }
            let mut pats = Vec::new();
            for p in &e.resources {
                let (body, star) = match p.strip_suffix('*') {
                    Some(b) => (b, "*"),
                    None => (p.as_str(), ""),
                };
                let norm = normalize_resource(body).ok_or_else(|| {
                    invalid(
                        format!("environments[{i}].resources"),
                        format!("{p:?} has dot segments"),
                    )
                })?;
                pats.push(format!("{norm}{star}"));
            }
            environments.push((e.name.clone(), pats));
        }
        let mut executors = BTreeSet::new();
        for (i, e) in raw.grants.executors.iter().enumerate() {
            let id: PrincipalId =
                e.parse()
                    .map_err(|err: secondkey_core::principal::PrincipalError| {
                        invalid(format!("grants.executors[{i}]"), err.to_string())
                    })?;
            if !principals.contains_key(id.as_str()) {
                return Err(invalid(
                    format!("grants.executors[{i}]"),
                    format!("{id} is not a configured principal"),
                ));
            }
            executors.insert(id.to_string());
        }
        let log_readers = raw.log.readers.unwrap_or_else(|| vec!["auditors".into()]);
        if log_readers.is_empty() || log_readers.iter().any(String::is_empty) {
            return Err(invalid(
                "log.readers",
                "name at least one group, e.g. [\"auditors\"]; entries are never public (leave the group without members to let nobody read them)",
            ));
        }
        let limits = limits_config(&raw.limits)?;
        let metrics_readers = raw
            .metrics
            .readers
            .unwrap_or_else(|| vec!["monitoring".into()]);
        if metrics_readers.is_empty() || metrics_readers.iter().any(String::is_empty) {
            return Err(invalid(
                "metrics.readers",
                "name at least one group, e.g. [\"monitoring\"]; /metrics is never public",
            ));
        }
        let witnesses = witnesses(&raw.log.witnesses)?;
        let oidc = match &raw.oidc {
            Some(o) => Some(oidc_config(o, &public_url, base, env, offline)?),
            None => None,
        };
        let store = match &raw.store {
            Some(st) => store_config(st, base, env)?,
            None => None,
        };
        let jwt_issuers = raw
            .identity
            .jwt
            .iter()
            .enumerate()
            .map(|(i, j)| jwt_issuer(i, j, &principals))
            .collect::<Result<Vec<_>, _>>()?;
        // A token picks its entry by its `iss`: a second entry for one
        // issuer would never be consulted, its tokens refused.
        for (i, j) in jwt_issuers.iter().enumerate() {
            if let Some(k) = jwt_issuers[..i].iter().position(|e| e.issuer == j.issuer) {
                return Err(invalid(
                    format!("identity.jwt[{i}].issuer"),
                    format!(
                        "{:?} is configured already in identity.jwt[{k}]; give each issuer one entry (its audience may be a list)",
                        j.issuer
                    ),
                ));
            }
        }
        let sections = [
            ("postgres", raw.postgres),
            ("mcp", raw.mcp),
            ("slack", raw.slack),
            ("teams", raw.teams),
            ("webhooks", raw.webhooks),
            ("routing", raw.routing),
            ("http", raw.http),
            ("ssh_gateway", raw.ssh_gateway),
            ("ssh", raw.ssh),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
        let mut policy_annotations = BTreeSet::new();
        for a in &raw.policy.annotations {
            let ident = a
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return Err(invalid(
                    "policy.annotations",
                    format!("{a:?} is not an annotation name (letters, digits and `_`, e.g. \"ticket\")"),
                ));
            }
            if secondkey_policy::KNOWN_ANNOTATIONS.contains(&a.as_str()) {
                return Err(invalid(
                    "policy.annotations",
                    format!("@{a} is one secondkey reads; list only your own annotations"),
                ));
            }
            policy_annotations.insert(a.clone());
        }
        let web = {
            let d = WebConfig::default();
            let words = |key: &str, v: Option<Vec<String>>, default: Vec<String>| {
                let v = v.unwrap_or(default);
                match v
                    .iter()
                    .find(|w| w.trim().is_empty() || w.chars().any(char::is_whitespace))
                {
                    Some(w) => Err(invalid(
                        format!("web.{key}"),
                        format!("`{w}` is not a single word; list names such as \"prod\""),
                    )),
                    None => Ok(v.into_iter().map(|w| w.to_ascii_lowercase()).collect()),
                }
            };
            WebConfig {
                batch_comment_environments: words(
                    "batch_comment_environments",
                    raw.web.batch_comment_environments,
                    d.batch_comment_environments,
                )?,
                batch_comment_operations: words(
                    "batch_comment_operations",
                    raw.web.batch_comment_operations,
                    d.batch_comment_operations,
                )?,
                session_admins: {
                    let groups = raw.web.session_admins.unwrap_or(d.session_admins);
                    // Group names as principals carry them (case kept).
                    if let Some(g) = groups.iter().find(|g| {
                        g.is_empty()
                            || g.chars().count() > 128
                            || g.chars().any(|c| c.is_control() || c == ',' || c == '"')
                    }) {
                        return Err(invalid(
                            "web.session_admins",
                            format!("{g:?} is not a group name; list groups such as \"security\" (1-128 characters, no commas or quotes)"),
                        ));
                    }
                    groups
                },
            }
        };
        Ok(Config {
            policy_annotations,
            web,
            store,
            delegations,
            limits,
            metrics_readers,
            witnesses,
            sections,
            base_dir: base.to_path_buf(),
            env: env.clone(),
            oidc,
            jwt_issuers,
            log_readers,
            executors,
            environments,
            listen,
            data_dir,
            policy_dir,
            public_url,
            log_origin,
            log_key_file,
            grant_key_file,
            allow_grant_ttl,
            after_window,
            after_max_pending,
            commit_delay,
            escalation_fraction,
            max_wait,
            max_body_bytes,
            tokens,
            principals,
            sinks: raw.sinks,
        })
    }
}

/// `may_act_for`: `user:NAME` or `user:*`, never an agent or a service.
fn acts_for(key: &str, items: &[String]) -> Result<Vec<ActsFor>, ConfigError> {
    items
        .iter()
        .map(|s| {
            if s.eq_ignore_ascii_case("user:*") {
                return Ok(ActsFor::AnyUser);
            }
            let id: PrincipalId =
                s.parse()
                    .map_err(|e: secondkey_core::principal::PrincipalError| {
                        invalid(key, e.to_string())
                    })?;
            if id.kind() != PrincipalKind::User {
                return Err(invalid(
                    key,
                    format!("{id}: a principal acts for humans only; use user:NAME or user:*"),
                ));
            }
            Ok(ActsFor::User(id))
        })
        .collect()
}

fn duration_key(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let range = (Duration::from_secs(1), Duration::from_secs(3600));
    duration_in(key, v, default, range, "1s and 1h (e.g. \"10s\")")
}

/// A duration key's value (or `default`), refused outside `min..=max`,
/// which `range` says in words.
fn duration_in(
    key: &str,
    v: &Option<String>,
    default: Duration,
    (min, max): (Duration, Duration),
    range: &str,
) -> Result<Duration, ConfigError> {
    let d = match v {
        Some(s) => {
            secondkey_core::time::parse_duration(s).map_err(|e| invalid(key, e.to_string()))?
        }
        None => default,
    };
    if d < min || d > max {
        return Err(invalid(key, format!("must be between {range}")));
    }
    Ok(d)
}

/// The validated `[limits]`: every cap at least 1 (a cap of 0 would refuse
/// everyone; `requests_per_minute = 0` is the one way to say unlimited).
fn limits_config(l: &RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let at_least_one = |k: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(invalid(format!("limits.{k}"), "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let conn = crate::limits::ConnLimits {
        max_connections: at_least_one(
            "max_connections",
            l.max_connections,
            d.conn.max_connections,
        )?,
        max_per_address: at_least_one(
            "max_connections_per_address",
            l.max_connections_per_address,
            d.conn.max_per_address,
        )?,
        header_read_timeout: duration_key(
            "limits.header_read_timeout",
            &l.header_read_timeout,
            d.conn.header_read_timeout,
        )?,
        idle_timeout: duration_key("limits.idle_timeout", &l.idle_timeout, d.conn.idle_timeout)?,
        body_read_timeout: duration_key(
            "limits.body_read_timeout",
            &l.body_read_timeout,
            d.conn.body_read_timeout,
        )?,
    };
    if conn.max_per_address > conn.max_connections {
        return Err(invalid(
            "limits.max_connections_per_address",
            "must not exceed limits.max_connections",
        ));
    }
    let max_pending_per_principal = match l.max_pending_per_principal {
        Some(0) => {
            return Err(invalid(
                "limits.max_pending_per_principal",
                "must be at least 1",
            ))
        }
        Some(n) => n,
        None => d.max_pending_per_principal,
    };
    Ok(Limits {
        conn,
        max_waits_per_principal: at_least_one(
            "max_waits_per_principal",
            l.max_waits_per_principal,
            d.max_waits_per_principal,
        )?,
        max_streams_per_principal: at_least_one(
            "max_streams_per_principal",
            l.max_streams_per_principal,
            d.max_streams_per_principal,
        )?,
        max_waits_per_issuer: at_least_one(
            "max_waits_per_issuer",
            l.max_waits_per_issuer,
            d.max_waits_per_issuer,
        )?,
        max_streams_per_issuer: at_least_one(
            "max_streams_per_issuer",
            l.max_streams_per_issuer,
            d.max_streams_per_issuer,
        )?,
        max_pending_per_principal,
        requests_per_minute: l.requests_per_minute.unwrap_or(d.requests_per_minute),
    })
}

/// The longest an adapter's `hold_timeout` may be (`wait` mode, the pg
/// and SSH gateways): a held statement or command keeps its client
/// connection and the upstream session's place, and a day is longer than
/// any review should take.
pub const MAX_HOLD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether `url` is `http://` to this machine: its host (no user info)
/// is `localhost` or a loopback address — not merely a name that starts
/// like one (`http://127.evil.example`, `http://localhost.evil.example`).
pub fn http_to_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) if port.is_empty() || port.starts_with(':') => host,
            _ => return false,
        },
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn witnesses(raw: &[RawWitness]) -> Result<Vec<WitnessConfig>, ConfigError> {
    let mut out: Vec<WitnessConfig> = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let at = |k: &str| format!("log.witnesses[{i}].{k}");
        if w.name.is_empty() || out.iter().any(|o| o.name == w.name) {
            return Err(invalid(at("name"), "must be non-empty and unique"));
        }
        let url = w.url.trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || http_to_loopback(&url)) {
            return Err(invalid(
                at("url"),
                "must be an https:// URL (http:// only for loopback)",
            ));
        }
        let key = w
            .key
            .parse()
            .map_err(|e: secondkey_log::witness::KeyError| invalid(at("key"), e.to_string()))?;
        let timeout = match w.timeout_secs.unwrap_or(10) {
            t @ 1..=120 => Duration::from_secs(t),
            t => {
                return Err(invalid(
                    at("timeout_secs"),
                    format!("{t} is out of range; use 1..=120 seconds"),
                ))
            }
        };
        out.push(WitnessConfig {
            name: w.name.clone(),
            url,
            key,
            timeout,
        });
    }
    Ok(out)
}

fn check_claim_name(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 128 {
        return Err(invalid(key, "must be a claim name like \"groups\""));
    }
    Ok(())
}

/// A secret from an environment variable or a file (trimmed), never both:
/// `env_key`/`file_key` name the config keys in errors. An unset variable
/// is an error, or no secret when `may_be_unset` (offline loading).
fn secret(
    (env_key, var): (&str, &Option<String>),
    (file_key, file): (&str, &Option<PathBuf>),
    base: &Path,
    env: &HashMap<String, String>,
    may_be_unset: bool,
) -> Result<Option<String>, ConfigError> {
    match (var, file) {
        (Some(_), Some(_)) => Err(invalid(
            env_key,
            format!("set either {env_key} or {file_key}, not both"),
        )),
        (Some(var), None) => match env.get(var) {
            Some(v) => Ok(Some(v.clone())),
            None if may_be_unset => Ok(None),
            None => Err(invalid(
                env_key,
                format!("environment variable {var} is not set"),
            )),
        },
        (None, Some(f)) => {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(file_key, format!("cannot read {}: {e}", path.display())))?;
            Ok(Some(text.trim().to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// `[store]`: checks the URL and reads the password.
fn store_config(
    st: &RawStore,
    base: &Path,
    env: &HashMap<String, String>,
) -> Result<Option<secondkey_store::PgOptions>, ConfigError> {
    let Some(url) = &st.url else {
        if st.password_env.is_some() || st.password_file.is_some() || st.ca_file.is_some() {
            return Err(invalid(
                "store.url",
                "is missing; set it to postgres://USER@HOST/DB (or remove [store] to keep SQLite in data_dir)",
            ));
        }
        return Ok(None);
    };
    let mut pg = secondkey_store::PgOptions::new(url.clone());
    pg.password = secret(
        ("store.password_env", &st.password_env),
        ("store.password_file", &st.password_file),
        base,
        env,
        // The command that reads the store needs its password.
        false,
    )?;
    pg.ca_file = st.ca_file.as_ref().map(|f| {
        if f.is_absolute() {
            f.clone()
        } else {
            base.join(f)
        }
    });
    pg.check().map_err(|m| invalid("store.url", m))?;
    pg.check_ca().map_err(|m| {
        let key = if st.ca_file.is_some() {
            "store.ca_file"
        } else {
            "store.url"
        };
        invalid(key, m)
    })?;
    Ok(Some(pg))
}

fn oidc_config(
    o: &RawOidc,
    public_url: &str,
    base: &Path,
    env: &HashMap<String, String>,
    offline: bool,
) -> Result<OidcConfig, ConfigError> {
    let issuer = o.issuer.trim_end_matches('/').to_string();
    crate::jwt::check_url(&issuer, false).map_err(|m| invalid("oidc.issuer", m))?;
    if o.client_id.is_empty() {
        return Err(invalid("oidc.client_id", "must not be empty"));
    }
    // Offline, sign-in does not run: its secret may be unset.
    let client_secret = secret(
        ("oidc.client_secret_env", &o.client_secret_env),
        ("oidc.client_secret_file", &o.client_secret_file),
        base,
        env,
        offline,
    )?;
    let redirect_url = o
        .redirect_url
        .clone()
        .unwrap_or_else(|| format!("{public_url}/auth/callback"));
    if !redirect_url.ends_with("/auth/callback") {
        return Err(invalid(
            "oidc.redirect_url",
            "must end with /auth/callback (the gateway's sign-in return endpoint)",
        ));
    }
    crate::jwt::check_url(&redirect_url, false).map_err(|m| invalid("oidc.redirect_url", m))?;
    let scopes = o
        .scopes
        .clone()
        .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
    if !scopes.iter().any(|s| s == "openid") {
        return Err(invalid("oidc.scopes", "must include \"openid\""));
    }
    if let Some(s) = scopes
        .iter()
        .find(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err(invalid("oidc.scopes", format!("bad scope {s:?}")));
    }
    let username_claim = o
        .username_claim
        .clone()
        .unwrap_or_else(|| "preferred_username".into());
    check_claim_name("oidc.username_claim", &username_claim)?;
    if let Some(g) = &o.groups_claim {
        check_claim_name("oidc.groups_claim", g)?;
    }
    let group_map = o.group_map.clone();
    for (from, to) in group_map.iter().flatten() {
        if let Some(g) = to
            .iter()
            .find(|g| g.is_empty() || g.contains(',') || g.contains('"'))
        {
            return Err(invalid(
                format!("oidc.group_map.{from}"),
                format!("bad group name {g:?}"),
            ));
        }
    }
    let session_ttl = match &o.session_ttl {
        Some(s) => secondkey_core::time::parse_duration(s)
            .map_err(|e| invalid("oidc.session_ttl", e.to_string()))?,
        None => Duration::from_secs(8 * 3600),
    };
    if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(30 * 86400) {
        return Err(invalid(
            "oidc.session_ttl",
            "must be between 1m and 30d (e.g. \"8h\")",
        ));
    }
    let review_max_age = match &o.review_max_age {
        Some(s) => secondkey_core::time::parse_duration(s)
            .map_err(|e| invalid("oidc.review_max_age", e.to_string()))?,
        None => Duration::from_secs(3600),
    };
    if review_max_age < Duration::from_secs(60) || review_max_age > Duration::from_secs(30 * 86400)
    {
        return Err(invalid(
            "oidc.review_max_age",
            "must be between 1m and 30d (e.g. \"1h\")",
        ));
    }
    let secret_in_body = match o.token_auth_method.as_deref() {
        None | Some("client_secret_basic") => false,
        Some("client_secret_post") => true,
        Some(other) => {
            return Err(invalid(
                "oidc.token_auth_method",
                format!("{other:?}: use client_secret_basic or client_secret_post"),
            ))
        }
    };
    Ok(OidcConfig {
        issuer,
        client_id: o.client_id.clone(),
        client_secret,
        redirect_url,
        scopes,
        username_claim,
        groups_claim: o.groups_claim.clone(),
        group_map,
        session_ttl,
        secret_in_body,
        require_configured: o.require_configured.unwrap_or(false),
        review_max_age,
    })
}

fn jwt_issuer(
    i: usize,
    j: &RawJwtIssuer,
    principals: &HashMap<String, Principal>,
) -> Result<JwtIssuerConfig, ConfigError> {
    use crate::jwt::{check_url, KeySource};
    let key = |k: &str| format!("identity.jwt[{i}].{k}");
    if j.issuer.is_empty() {
        return Err(invalid(key("issuer"), "must not be empty"));
    }
    let audiences = j.audience.to_vec();
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(invalid(key("audience"), "name at least one audience"));
    }
    let keys = match (&j.jwks_url, &j.metadata_url) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("jwks_url"),
                "set either jwks_url or metadata_url, not both",
            ))
        }
        (Some(u), None) => {
            check_url(u, false).map_err(|m| invalid(key("jwks_url"), m))?;
            KeySource::Jwks(u.clone())
        }
        (None, Some(u)) => {
            check_url(u, false).map_err(|m| invalid(key("metadata_url"), m))?;
            KeySource::Metadata(u.clone())
        }
        (None, None) => {
            let u = format!(
                "{}/.well-known/openid-configuration",
                j.issuer.trim_end_matches('/')
            );
            check_url(&u, false).map_err(|m| invalid(key("issuer"), m))?;
            KeySource::Metadata(u)
        }
    };
    let principal_claim = j.principal_claim.clone().unwrap_or_else(|| "sub".into());
    check_claim_name(&key("principal_claim"), &principal_claim)?;
    let principal_kind = match j.principal_kind.as_deref() {
        None | Some("service") => PrincipalKind::Service,
        Some("agent") => PrincipalKind::Agent,
        Some(other) => {
            return Err(invalid(
                key("principal_kind"),
                format!("{other:?}: use agent or service (humans sign in through [oidc])"),
            ))
        }
    };
    let mut map = std::collections::BTreeMap::new();
    for (from, to) in j.map.clone().unwrap_or_default() {
        let id: PrincipalId =
            to.parse()
                .map_err(|e: secondkey_core::principal::PrincipalError| {
                    invalid(key(&format!("map.{from}")), e.to_string())
                })?;
        if id.kind() == PrincipalKind::User {
            return Err(invalid(
                key(&format!("map.{from}")),
                "workload tokens name agents or services, not users",
            ));
        }
        map.insert(from, id);
    }
    if j.require_configured {
        if let Some(id) = map
            .values()
            .find(|id| !principals.contains_key(id.as_str()))
        {
            return Err(invalid(
                key("map"),
                format!("{id} is not configured in [[principals]]"),
            ));
        }
    }
    let algorithms = match &j.algorithms {
        None => crate::jwt::DEFAULT_ALGORITHMS.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| crate::jwt::parse_algorithm(n).map_err(|m| invalid(key("algorithms"), m)))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if algorithms.is_empty() {
        return Err(invalid(
            key("algorithms"),
            "name at least one algorithm (or leave it out for the defaults); none would refuse every token",
        ));
    }
    if let Some(c) = &j.delegation_user_claim {
        check_claim_name(&key("delegation_user_claim"), c)?;
    }
    let leeway = duration_in(
        &key("leeway"),
        &j.leeway,
        JWT_LEEWAY,
        JWT_LEEWAY_RANGE,
        "1s and 5m (e.g. \"30s\")",
    )?;
    if leeway.subsec_nanos() != 0 {
        return Err(invalid(
            key("leeway"),
            "is checked in whole seconds: give it in seconds (e.g. \"30s\")",
        ));
    }
    let keys_ttl = duration_in(
        &key("keys_ttl"),
        &j.keys_ttl,
        JWT_KEYS_TTL,
        JWT_KEYS_TTL_RANGE,
        "1m and 24h (e.g. \"1h\")",
    )?;
    Ok(JwtIssuerConfig {
        leeway,
        keys_ttl,
        delegation_user_claim: j.delegation_user_claim.clone(),
        issuer: j.issuer.clone(),
        audiences,
        keys,
        principal_claim,
        principal_kind,
        map,
        require_configured: j.require_configured,
        algorithms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", Path::new("/tmp"), &HashMap::new())
    }

    #[test]
    fn a_store_ca_file_that_cannot_be_used_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let env: HashMap<String, String> = [("PGPW".to_string(), "pw".to_string())].into();
        let load = |query: &str, extra: &str| {
            Config::from_toml(
                &format!("[store]\nurl = \"postgres://sk@db.example/sk{query}\"\npassword_env = \"PGPW\"\n{extra}"),
                "test.toml",
                dir.path(),
                &env,
            )
        };
        for (query, extra, key, says) in [
            (
                "",
                "ca_file = \"missing.pem\"\n",
                "store.ca_file",
                "cannot read the CA file",
            ),
            (
                "",
                "ca_file = \"empty.pem\"\n",
                "store.ca_file",
                "holds no certificate",
            ),
            (
                "?sslrootcert=/nonexistent/ca.pem",
                "",
                "store.url",
                "cannot read the CA file",
            ),
        ] {
            let e = load(query, extra).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(says),
                "{query}{extra}: {e}"
            );
        }
        // Without a CA file, the web's roots: nothing to read.
        assert!(load("", "").is_ok());
    }

    #[test]
    fn a_section_error_names_the_key_it_is_about() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Rule {
            #[allow(dead_code)]
            operation: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Section {
            #[allow(dead_code)]
            limit: u32,
            #[allow(dead_code)]
            #[serde(default)]
            rules: Vec<Rule>,
        }
        let read = |text: &str| {
            let v: toml::Value = toml::from_str(text).unwrap();
            read_section::<Section>(&v, "thing[2]")
        };
        assert!(read("limit = 3\nrules = [{operation = \"read\"}]").is_ok());
        for (text, key, says) in [
            (
                "limit = \"ten\"",
                "thing[2].limit",
                "invalid type: string \"ten\"",
            ),
            ("limit = -1", "thing[2].limit", "invalid value"),
            (
                "limit = 1\nrules = [{operation = \"read\"}, {operation = 4}]",
                "thing[2].rules[1].operation",
                "invalid type: integer",
            ),
            (
                "limit = 1\nrules = [{op = \"read\"}]",
                "thing[2].rules[0].op",
                "unknown field `op`",
            ),
            (
                "limit = 1\nlimits = 2",
                "thing[2].limits",
                "unknown field `limits`",
            ),
            ("rules = []", "thing[2]", "missing field `limit`"),
        ] {
            let (k, m) = read(text).unwrap_err();
            assert_eq!(k, key, "{text}: {m}");
            assert!(m.contains(says), "{text}: {m}");
        }
    }

    #[test]
    fn offline_commands_need_no_gateway_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secondkey.toml");
        std::fs::write(
            &path,
            "public_url = \"https://sk.example\"\n[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"sk\"\nclient_secret_env = \"SK_TEST_UNSET_OIDC\"\n[[principals]]\nid = \"agent:bot\"\ntoken_env = \"SK_TEST_UNSET_TOKEN\"\n",
        )
        .unwrap();
        let env = HashMap::new();
        let e = Config::load(&path, &env).unwrap_err().to_string();
        assert!(e.contains("is not set"), "{e}");
        let c = Config::load_offline(&path, &env).unwrap();
        assert!(c.tokens.is_empty(), "no token: nothing authenticates");
        assert!(c.oidc.as_ref().unwrap().client_secret.is_none());
        // What an offline command needs itself is still required.
        std::fs::write(
            &path,
            "[store]\nurl = \"postgres://sk@db.example/sk\"\npassword_env = \"SK_TEST_UNSET_PG\"\n",
        )
        .unwrap();
        let e = Config::load_offline(&path, &env).unwrap_err().to_string();
        assert!(e.contains("store.password_env"), "{e}");
    }

    #[test]
    fn witnesses_are_checked() {
        let key = secondkey_log::witness::Cosigner::from_seed("w.example/w1", [3; 32])
            .verifier()
            .to_string();
        let w = |url: &str, key: &str| {
            load(&format!(
                "[log]\norigin = \"o.example/log\"\n[[log.witnesses]]\nname = \"w1\"\nurl = \"{url}\"\nkey = \"{key}\"\n"
            ))
        };
        let c = w("https://w.example/w1/", &key).unwrap();
        assert_eq!(c.witnesses[0].url, "https://w.example/w1");
        assert_eq!(c.witnesses[0].timeout, Duration::from_secs(10));
        assert!(w("http://127.0.0.1:7380", &key).is_ok());
        for (url, k, field) in [
            ("http://w.example", key.as_str(), "url"),
            ("https://w.example", "w.example/w1+00000000+AAAA", "key"),
            // A log's own key (type 0x01) is not a witness key.
            ("https://w.example", "o.example/log+1a2b3c4d+AT3x", "key"),
        ] {
            let e = w(url, k).unwrap_err().to_string();
            assert!(e.contains(&format!("log.witnesses[0].{field}")), "{e}");
        }
        // A timeout out of 1..=120 s is refused, not clamped.
        for t in [0, 500] {
            let e = load(&format!(
                "[log]\norigin = \"o.example/log\"\n[[log.witnesses]]\nname = \"w1\"\nurl = \"https://w.example\"\nkey = \"{key}\"\ntimeout_secs = {t}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("log.witnesses[0].timeout_secs") && e.contains("1..=120"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_brief_example_loads() {
        let c = load(
            r#"
listen = "127.0.0.1:8750"
data_dir = "./secondkey-data"
policy_dir = "./policies"
[log]
origin = "secondkey.example/log"
[[principals]]
id = "user:alice"
[[principals]]
id = "agent:report-bot"
owner = "user:alice"
groups = ["agents"]
token_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
"#,
        )
        .unwrap();
        assert_eq!(c.log_origin, "secondkey.example/log");
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.data_dir, Path::new("/tmp/./secondkey-data"));
        assert_eq!(c.environment_of("postgres://x"), None);
        let c = load("[[environments]]\nname = \"prod\"\nresources = [\"postgres://analytics/*\", \"https://api.example\"]").unwrap();
        assert_eq!(
            c.environment_of("postgres://analytics/public.t"),
            Some("prod")
        );
        assert_eq!(c.environment_of("https://api.example"), Some("prod"));
        assert_eq!(c.environment_of("https://api.example/x"), None);
        assert!(load("[[environments]]\nname = \"prod\"\nresources = [\"a*b*\"]").is_err());
        // Spelling tricks do not escape the environment.
        for r in [
            "postgres://Analytics/public.t",
            "POSTGRES://analytics/public.t",
            "postgres://bob@analytics/public.t",
            "postgres://analytics:5432/public.t",
        ] {
            assert_eq!(c.environment_of(r), Some("prod"), "{r}");
        }
        assert_eq!(c.environment_of("postgres://analytics/../billing/t"), None);
        assert_eq!(c.environment_of("postgres://analytics:6543/public.t"), None);
    }

    #[test]
    fn web_batch_comment_keys() {
        assert_eq!(load("").unwrap().web, WebConfig::default());
        let c =
            load("[web]\nbatch_comment_environments = [\"Live\"]\nbatch_comment_operations = []")
                .unwrap();
        assert_eq!(c.web.batch_comment_environments, vec!["live".to_string()]);
        assert!(c.web.batch_comment_operations.is_empty());
        let e = load("[web]\nbatch_comment_environments = [\"prod env\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.batch_comment_environments"), "{e}");
        let e = load("[web]\nbatch_comment_operations = [\"\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.batch_comment_operations"), "{e}");
        assert!(load("[web]\ncomment_required = true").is_err());
        assert_eq!(
            load("").unwrap().web.session_admins,
            vec!["security".to_string()]
        );
        let c = load("[web]\nsession_admins = [\"IT Security\"]").unwrap();
        assert_eq!(c.web.session_admins, vec!["IT Security".to_string()]);
        assert!(load("[web]\nsession_admins = []")
            .unwrap()
            .web
            .session_admins
            .is_empty());
        for bad in ["[\"\"]", "[\"a,b\"]"] {
            let e = load(&format!("[web]\nsession_admins = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("web.session_admins"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("listen = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("`listen`"), "{e}");
        let e = load("[[principals]]\nid = \"robot\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("principals[0].id"), "{e}");
        let e = load("[[principals]]\nid = \"user:a\"\nowner = \"user:b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("principals[0].owner"), "{e}");
        let e = load("[[principals]]\nid = \"user:a\"\ntoken_sha256 = \"abc\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("principals[0].token_sha256"), "{e}");
        let e = load("lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = load("[requests]\nescalation_fraction = 2.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("requests.escalation_fraction"), "{e}");
        // A sink that could not start refuses the configuration.
        let sink = "[[sinks]]\ntype = \"syslog\"\nname = \"siem\"\naddress = \"127.0.0.1:6514\"\n";
        load(sink).unwrap();
        let e = load(&format!("{sink}facility = \"nope\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sinks[0]") && e.contains("unknown syslog facility"),
            "{e}"
        );
        let e = load("[[sinks]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"http://example.com/hook\"\nsecret = \"0123456789abcdef0123456789abcdef\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks[0]") && e.contains("https://"), "{e}");
        // A secret's variable is checked when the gateway starts, not here:
        // offline commands read the file without the running gateway's
        // environment.
        load("[[sinks]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"https://siem.example/hook\"\nsecret_env = \"SECONDKEY_TEST_UNSET_SINK_SECRET\"").unwrap();
    }

    #[test]
    fn after_window_and_pending_bound() {
        let c = load("").unwrap();
        assert_eq!(
            (c.after_window, c.after_max_pending),
            (Duration::from_millis(10), 1024)
        );
        let c = load("[log]\nafter_window = \"250ms\"\nafter_max_pending = 8").unwrap();
        assert_eq!(
            (c.after_window, c.after_max_pending),
            (Duration::from_millis(250), 8)
        );
        for bad in [
            "after_window = \"1ms\"",
            "after_window = \"2m\"",
            "after_window = \"soon\"",
        ] {
            let e = load(&format!("[log]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains("log.after_window"), "{bad}: {e}");
        }
        let e = load("[log]\nafter_max_pending = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.after_max_pending"), "{e}");
    }

    #[test]
    fn identity_sections_validate_and_name_the_key() {
        let mut env = HashMap::new();
        env.insert("OIDC_SECRET".to_string(), "s3cret".to_string());
        let ok = Config::from_toml(
            "public_url = \"https://sk.example\"\n[oidc]\nissuer = \"https://idp.example/\"\nclient_id = \"sk\"\nclient_secret_env = \"OIDC_SECRET\"\ngroups_claim = \"groups\"\n[oidc.group_map]\n\"DBA Team\" = [\"dba\"]\n[[identity.jwt]]\nissuer = \"https://token.example\"\naudience = [\"sk\", \"sk2\"]\nprincipal_kind = \"agent\"\n[identity.jwt.map]\n\"repo:a/b\" = \"service:deploy\"",
            "t",
            Path::new("/"),
            &env,
        )
        .unwrap();
        let o = ok.oidc.clone().unwrap();
        assert_eq!(o.issuer, "https://idp.example");
        assert_eq!(o.redirect_url, "https://sk.example/auth/callback");
        assert_eq!(o.client_secret.as_deref(), Some("s3cret"));
        // Neither the section's nor the whole configuration's debug output
        // carries the client secret.
        let shown = format!("{o:?} {ok:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // The environment it was read with shows by name only.
        assert!(shown.contains("env: {\"OIDC_SECRET\"}"), "{shown}");
        assert!(
            shown.contains("client_secret: Some(\"<redacted>\")"),
            "{shown}"
        );
        assert_eq!(o.username_claim, "preferred_username");
        assert_eq!(
            o.group_map.as_ref().map(|m| &m["DBA Team"]),
            Some(&vec!["dba".to_string()])
        );
        let j = &ok.jwt_issuers[0];
        assert_eq!(j.audiences, vec!["sk", "sk2"]);
        assert!(
            matches!(&j.keys, crate::jwt::KeySource::Metadata(u) if u == "https://token.example/.well-known/openid-configuration")
        );
        assert_eq!(j.map["repo:a/b"].as_str(), "service:deploy");
        assert_eq!((j.leeway, j.keys_ttl), (JWT_LEEWAY, JWT_KEYS_TTL));
        let set = load(
            "[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nleeway = \"5s\"\nkeys_ttl = \"10m\"",
        )
        .unwrap();
        assert_eq!(
            (set.jwt_issuers[0].leeway, set.jwt_issuers[0].keys_ttl),
            (Duration::from_secs(5), Duration::from_secs(600))
        );

        let oidc = "[oidc]\nclient_id = \"sk\"\n";
        for (text, key) in [
            (format!("{oidc}issuer = \"http://idp.example\""), "oidc.issuer"),
            (format!("{oidc}issuer = \"https://idp.example\"\nclient_secret_env = \"NOPE\""), "oidc.client_secret_env"),
            (format!("{oidc}issuer = \"https://idp.example\"\nredirect_url = \"https://evil.example/x\""), "oidc.redirect_url"),
            (format!("{oidc}issuer = \"https://idp.example\"\nscopes = [\"profile\"]"), "oidc.scopes"),
            (format!("{oidc}issuer = \"https://idp.example\"\nsession_ttl = \"10s\""), "oidc.session_ttl"),
            (format!("{oidc}issuer = \"https://idp.example\"\nreview_max_age = \"10s\""), "oidc.review_max_age"),
            (format!("{oidc}issuer = \"https://idp.example\"\ntoken_auth_method = \"none\""), "oidc.token_auth_method"),
            (format!("{oidc}issuer = \"https://idp.example\"\nclient_secret = \"inline\""), "client_secret"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = []".into(), "identity.jwt[0].audience"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nprincipal_kind = \"user\"".into(), "identity.jwt[0].principal_kind"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nalgorithms = [\"HS256\"]".into(), "identity.jwt[0].algorithms"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\njwks_url = \"http://t.example/k\"".into(), "identity.jwt[0].jwks_url"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\n[identity.jwt.map]\nx = \"user:bob\"".into(), "identity.jwt[0].map.x"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nalgorithms = []".into(), "identity.jwt[0].algorithms"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nleeway = \"6m\"".into(), "identity.jwt[0].leeway"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nleeway = \"0s\"".into(), "identity.jwt[0].leeway"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nleeway = \"1500ms\"".into(), "identity.jwt[0].leeway"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nkeys_ttl = \"30s\"".into(), "identity.jwt[0].keys_ttl"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nkeys_ttl = \"2d\"".into(), "identity.jwt[0].keys_ttl"),
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nkeys_ttl = \"soon\"".into(), "identity.jwt[0].keys_ttl"),
            // A second entry for one issuer would never be consulted.
            ("[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\n[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"b\"\nprincipal_kind = \"agent\"".into(), "identity.jwt[1].issuer"),
        ] {
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    /// Ids are read in lowercase everywhere in the file: two entries that
    /// differ only in letter case are one principal configured twice, and
    /// references (owner, executors, may_act_for, map) fold the same way.
    #[test]
    fn principal_ids_fold_and_collisions_are_errors() {
        let c = load(
            "[[principals]]\nid = \"User:Alice\"\n[[principals]]\nid = \"Agent:ETL-Bot\"\nowner = \"USER:ALICE\"\nmay_act_for = [\"User:Carol\", \"USER:*\"]\n[grants]\nexecutors = [\"Agent:Etl-Bot\"]\n[[identity.jwt]]\nissuer = \"https://t.example\"\naudience = \"a\"\nrequire_configured = true\n[identity.jwt.map]\n\"repo:x\" = \"AGENT:etl-bot\"",
        )
        .unwrap();
        let bot = &c.principals["agent:etl-bot"];
        assert_eq!(bot.owner.as_ref().unwrap().as_str(), "user:alice");
        assert!(c.principals.contains_key("user:alice"));
        assert!(c.executors.contains("agent:etl-bot"));
        assert_eq!(
            c.delegations["agent:etl-bot"],
            vec![
                ActsFor::User(PrincipalId::parse("user:carol").unwrap()),
                ActsFor::AnyUser
            ]
        );
        assert_eq!(c.jwt_issuers[0].map["repo:x"].as_str(), "agent:etl-bot");
        let e = load("[[principals]]\nid = \"user:alice\"\n[[principals]]\nid = \"user:ALICE\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("principals[1].id") && e.contains("\"user:alice\" in principals[0]"),
            "{e}"
        );
        for (text, key) in [
            (
                "[[principals]]\nid = \"agent:a\"\nmay_act_for = [\"agent:b\"]",
                "principals[0].may_act_for",
            ),
            (
                "[[principals]]\nid = \"agent:a\"\nmay_act_for = [\"bob\"]",
                "principals[0].may_act_for",
            ),
            (
                "[[principals]]\nid = \"user:\u{c9}mile\"",
                "principals[0].id",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn limits_and_metrics_have_defaults_and_are_checked() {
        let c = load("").unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.metrics_readers, vec!["monitoring".to_string()]);
        let c = load("[limits]\nmax_connections = 100\nmax_connections_per_address = 10\nheader_read_timeout = \"2s\"\nidle_timeout = \"5s\"\nbody_read_timeout = \"3s\"\nmax_waits_per_principal = 2\nmax_streams_per_principal = 3\nmax_waits_per_issuer = 4\nmax_streams_per_issuer = 5\nmax_pending_per_principal = 6\nrequests_per_minute = 0\n[metrics]\nreaders = [\"ops\"]").unwrap();
        let l = &c.limits;
        assert_eq!(
            (
                l.conn.max_connections,
                l.conn.max_per_address,
                l.conn.header_read_timeout,
                l.conn.idle_timeout,
                l.conn.body_read_timeout
            ),
            (
                100,
                10,
                Duration::from_secs(2),
                Duration::from_secs(5),
                Duration::from_secs(3)
            )
        );
        assert_eq!(
            (
                l.max_waits_per_principal,
                l.max_streams_per_principal,
                l.max_waits_per_issuer,
                l.max_streams_per_issuer,
                l.max_pending_per_principal,
                l.requests_per_minute
            ),
            (2, 3, 4, 5, 6, 0)
        );
        assert_eq!(c.metrics_readers, vec!["ops".to_string()]);
        for (text, key) in [
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_connections = 10\nmax_connections_per_address = 11",
                "limits.max_connections_per_address",
            ),
            (
                "[limits]\nheader_read_timeout = \"0s\"",
                "limits.header_read_timeout",
            ),
            ("[limits]\nidle_timeout = \"soon\"", "limits.idle_timeout"),
            (
                "[limits]\nmax_pending_per_principal = 0",
                "limits.max_pending_per_principal",
            ),
            (
                "[limits]\nmax_wait_per_principal = 3",
                "max_wait_per_principal",
            ),
            ("[metrics]\nreaders = []", "metrics.readers"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn env_overrides_and_token_env() {
        let mut env = HashMap::new();
        env.insert("SECONDKEY_LISTEN".to_string(), "127.0.0.1:9999".to_string());
        env.insert(
            "BOB_TOKEN".to_string(),
            "a-very-long-token-for-bob".to_string(),
        );
        let c = Config::from_toml(
            "[[principals]]\nid = \"user:bob\"\ntoken_env = \"BOB_TOKEN\"",
            "t",
            Path::new("/"),
            &env,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        let h = crate::auth::token_hash("a-very-long-token-for-bob");
        assert_eq!(c.tokens[&h].id.to_string(), "user:bob");
        let e = Config::from_toml(
            "[[principals]]\nid = \"user:bob\"\ntoken_env = \"MISSING\"",
            "t",
            Path::new("/"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("MISSING"), "{e}");
    }

    #[test]
    fn policy_section_and_the_groups_policies_are_checked_against() {
        let e = load("[policy]\nannotations = [\"quorum\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policy.annotations") && e.contains("one secondkey reads"),
            "{e}"
        );
        let e = load("[policy]\nannotations = [\"my-tag\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an annotation name"), "{e}");
        let c = load(
            "[policy]\nannotations = [\"ticket\"]\n[[principals]]\nid = \"user:ann\"\ngroups = [\"dba\"]\n[[principals]]\nid = \"agent:bot\"\ngroups = [\"dba\", \"agents\"]",
        )
        .unwrap();
        let o = c.policy_options();
        assert_eq!(o.annotations, BTreeSet::from(["ticket".to_string()]));
        let g = o.groups.unwrap();
        // agents count as members of nothing a reviewer needs
        assert_eq!(g.humans["dba"], BTreeSet::from(["user:ann".to_string()]));
        assert!(g.humans["agents"].is_empty());
        assert_eq!(g.identity_provider, secondkey_policy::IdpGroups::None);
    }

    #[test]
    fn store_takes_a_postgres_url_and_a_password_from_env_or_file() {
        let mut env = HashMap::new();
        env.insert("DB_PW".to_string(), "s3cret".to_string());
        let load = |toml: &str, env: &HashMap<String, String>| {
            Config::from_toml(toml, "t", Path::new("/"), env).map_err(|e| e.to_string())
        };
        let c = load(
            "[store]\nurl = \"postgres://sk@db.internal/sk\"\npassword_env = \"DB_PW\"",
            &env,
        )
        .unwrap();
        let pg = c.store.clone().unwrap();
        assert_eq!(pg.password.as_deref(), Some("s3cret"));
        assert!(c.store_options().postgres.is_some());
        // No [store]: SQLite in data_dir.
        assert!(load("", &env).unwrap().store.is_none());
        // SECONDKEY_STORE_URL sets the URL.
        let mut env2 = env.clone();
        env2.insert(
            "SECONDKEY_STORE_URL".into(),
            "postgres://sk@db2.internal/sk".into(),
        );
        let c = load("", &env2).unwrap();
        assert_eq!(c.store.unwrap().url, "postgres://sk@db2.internal/sk");
        for (toml, key) in [
            ("[store]\nurl = \"postgres://sk:pw@db/sk\"", "store.url"),
            ("[store]\nurl = \"postgres://sk@db/sk?sslmode=require\"", "store.url"),
            ("[store]\nurl = \"postgres://sk@db/sk\"\npassword_env = \"NOPE\"", "store.password_env"),
            (
                "[store]\nurl = \"postgres://sk@db/sk\"\npassword_env = \"DB_PW\"\npassword_file = \"/x\"",
                "store.password_env",
            ),
            ("[store]\nurl = \"postgres://sk@db/sk\"\npassword_file = \"/nonexistent/pw\"", "store.password_file"),
            ("[store]\npassword_env = \"DB_PW\"", "store.url"),
            ("[store]\nurl = \"postgres://sk@db/sk\"\nbogus = 1", "bogus"),
        ] {
            let e = load(toml, &env).unwrap_err();
            assert!(e.contains(key), "{toml}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
