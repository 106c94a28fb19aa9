//! The `[slack]`, `[teams]`, `[[webhooks]]` and `[routing]` sections.
//!
//! The gateway keeps these sections raw; this module validates them and
//! names the full key in every error (`slack.routes[1].channel`). Secrets
//! are never written in the file: each is read from the environment
//! variable the file names (`bot_token_env`, `signing_secret_env`, …).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use secondkey_core::principal::{PrincipalId, PrincipalKind};
use secondkey_server::config::{read_section, ConfigError};
use secondkey_sinks::webhook::WebhookSecret;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The section names this crate reads.
pub const SECTIONS: [&str; 4] = ["slack", "teams", "webhooks", "routing"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    bot_token_env: String,
    signing_secret_env: String,
    api_base: Option<String>,
    /// Statements longer than this (bytes) go in full as a file upload.
    inline_limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeams {
    app_id: String,
    app_password_env: String,
    /// Where the Bot Connector's signing keys are published.
    openid_metadata: Option<String>,
    issuer: Option<String>,
    /// Where the bot gets its own token for calling the Bot Connector.
    token_url: Option<String>,
    service_url: String,
    /// Tenant of the conversations (Teams needs it on proactive messages).
    tenant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    secret_env: String,
    #[serde(default)]
    events: Vec<String>,
    ca_file: Option<PathBuf>,
    #[serde(alias = "timeout_secs")]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    remind_before: Option<String>,
    link_ttl: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    linking: Option<String>,
    #[serde(default)]
    accounts: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    group: Option<String>,
    resource: Option<String>,
    slack_channel: Option<String>,
    teams_conversation: Option<String>,
    #[serde(default)]
    escalate_to: Vec<String>,
}

/// Slack: a bot token to post with, the signing secret to check clicks with.
#[derive(Clone)]
pub struct SlackConfig {
    pub bot_token: String,
    pub signing_secret: Vec<u8>,
    /// `https://slack.com/api` unless tests point it elsewhere.
    pub api_base: String,
    pub inline_limit: usize,
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("api_base", &self.api_base)
            .field("inline_limit", &self.inline_limit)
            .finish_non_exhaustive()
    }
}

/// Microsoft Teams through the Bot Framework.
#[derive(Clone)]
pub struct TeamsConfig {
    pub app_id: String,
    pub app_password: String,
    pub openid_metadata: String,
    pub issuer: String,
    pub token_url: String,
    pub service_url: String,
    pub tenant_id: Option<String>,
}

impl std::fmt::Debug for TeamsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamsConfig")
            .field("app_id", &self.app_id)
            .field("openid_metadata", &self.openid_metadata)
            .field("service_url", &self.service_url)
            .finish_non_exhaustive()
    }
}

/// One outbound webhook for request events.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    pub secret: WebhookSecret,
    /// Event types to send (`request.approved`, …); empty means all.
    pub events: BTreeSet<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// Where requests for a reviewer group (or a resource) are posted, and who
/// they escalate to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Matches a request one of whose requirements names this group.
    pub group: Option<String>,
    /// Matches a request on this resource: exact, or a prefix ending in `*`.
    pub resource: Option<String>,
    pub slack_channel: Option<String>,
    pub teams_conversation: Option<String>,
    /// Groups that may also review once the request is due for escalation.
    pub escalate_to: BTreeSet<String>,
}

impl Route {
    fn matches_resource(&self, resource: &str) -> bool {
        match &self.resource {
            None => false,
            Some(p) => match p.strip_suffix('*') {
                Some(prefix) => resource.starts_with(prefix),
                None => resource == p,
            },
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub slack: BTreeSet<String>,
    pub teams: BTreeSet<String>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.slack.is_empty() && self.teams.is_empty()
    }
}

/// Routing, reminders and escalation.
#[derive(Debug, Clone)]
pub struct Routing {
    pub routes: Vec<Route>,
    /// Remind reviewers this long before a request expires.
    pub remind_before: Option<Duration>,
    /// How long a link code stays usable.
    pub link_ttl: Duration,
    /// Which chat accounts count as which human.
    pub linking: Linking,
}

/// Which chat account counts as which human (`[routing] linking` and
/// `[routing.accounts]`).
#[derive(Debug, Clone, Default)]
pub struct Linking {
    /// `linking = "self-service"` (the default): an account not in
    /// `accounts` may be linked through the web by whoever confirms its
    /// link code. `linking = "configured"`: only `accounts` count.
    pub self_service: bool,
    /// Accounts bound by the configuration, `<platform>:<id>` (as
    /// `GET /v1/chat/links` names them) → the human they are. These win
    /// over any link made through the web.
    pub accounts: BTreeMap<String, PrincipalId>,
}

impl Routing {
    /// The channels of every route that names one of `groups` or matches
    /// `resource`.
    pub fn targets(&self, groups: &BTreeSet<String>, resource: &str) -> Targets {
        let mut t = Targets::default();
        for r in &self.routes {
            let hit = r.group.as_ref().is_some_and(|g| groups.contains(g))
                || r.matches_resource(resource);
            if hit {
                t.slack.extend(r.slack_channel.iter().cloned());
                t.teams.extend(r.teams_conversation.iter().cloned());
            }
        }
        t
    }

    /// The groups a request with these reviewer groups (or resource)
    /// escalates to.
    pub fn escalation(&self, groups: &BTreeSet<String>, resource: &str) -> BTreeSet<String> {
        self.routes
            .iter()
            .filter(|r| {
                r.group.as_ref().is_some_and(|g| groups.contains(g)) || r.matches_resource(resource)
            })
            .flat_map(|r| r.escalate_to.iter().cloned())
            .collect()
    }
}

/// Everything this crate was configured with. `None` sections are off.
#[derive(Debug, Clone)]
pub struct ChannelsConfig {
    pub slack: Option<SlackConfig>,
    pub teams: Option<TeamsConfig>,
    pub webhooks: Vec<WebhookConfig>,
    pub routing: Routing,
}

impl ChannelsConfig {
    /// Whether anything is configured at all.
    pub fn is_empty(&self) -> bool {
        self.slack.is_none() && self.teams.is_none() && self.webhooks.is_empty()
    }
}

fn section<T: serde::de::DeserializeOwned>(
    sections: &BTreeMap<String, toml::Value>,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    match sections.get(name) {
        None => Ok(None),
        Some(v) => read_section(v, name)
            .map(Some)
            .map_err(|(k, m)| invalid(k, m)),
    }
}

fn secret(env: &HashMap<String, String>, key: &str, var: &str) -> Result<String, ConfigError> {
    match env.get(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(invalid(
            key,
            format!("environment variable {var} is not set (it holds the secret)"),
        )),
    }
}

/// An https:// URL, or http:// to this machine (a local test server): the
/// bot token, Bot Framework credentials and signed webhook events go
/// there, never in the clear over a network.
fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    if url.starts_with("https://") || secondkey_server::config::http_to_loopback(url) {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(invalid(
            key,
            format!("{url:?} must start with https:// (http:// only to localhost or a loopback address)"),
        ))
    }
}

fn duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    secondkey_core::time::parse_duration(s).map_err(|e| invalid(key, e.to_string()))
}

/// Validates the sections. `env` supplies the secrets; `base` resolves
/// relative paths.
pub fn parse(
    sections: &BTreeMap<String, toml::Value>,
    env: &HashMap<String, String>,
    base: &Path,
) -> Result<ChannelsConfig, ConfigError> {
    let slack = match section::<RawSlack>(sections, "slack")? {
        None => None,
        Some(s) => {
            let bot_token = secret(env, "slack.bot_token_env", &s.bot_token_env)?;
            if !bot_token.starts_with("xox") {
                return Err(invalid(
                    "slack.bot_token_env",
                    format!(
                        "{} does not hold a Slack bot token (xoxb-…)",
                        s.bot_token_env
                    ),
                ));
            }
            let signing_secret =
                secret(env, "slack.signing_secret_env", &s.signing_secret_env)?.into_bytes();
            if signing_secret.len() < 16 {
                return Err(invalid(
                    "slack.signing_secret_env",
                    "the signing secret is shorter than 16 characters; copy it from the app's Basic Information page",
                ));
            }
            let api_base = http_url(
                "slack.api_base",
                s.api_base.as_deref().unwrap_or("https://slack.com/api"),
            )?;
            let inline_limit = s.inline_limit.unwrap_or(2000);
            if !(100..=2800).contains(&inline_limit) {
                return Err(invalid(
                    "slack.inline_limit",
                    "must be between 100 and 2800 (a Block Kit text holds 3000 characters)",
                ));
            }
            Some(SlackConfig {
                bot_token,
                signing_secret,
                api_base,
                inline_limit,
            })
        }
    };
    let teams = match section::<RawTeams>(sections, "teams")? {
        None => None,
        Some(t) => {
            if t.app_id.trim().is_empty() {
                return Err(invalid(
                    "teams.app_id",
                    "set the bot's Microsoft App ID (a GUID)",
                ));
            }
            Some(TeamsConfig {
                app_password: secret(env, "teams.app_password_env", &t.app_password_env)?,
                openid_metadata: http_url(
                    "teams.openid_metadata",
                    t.openid_metadata.as_deref().unwrap_or(
                        "https://login.botframework.com/v1/.well-known/openidconfiguration",
                    ),
                )?,
                issuer: t
                    .issuer
                    .unwrap_or_else(|| "https://api.botframework.com".into()),
                token_url: http_url(
                    "teams.token_url",
                    t.token_url.as_deref().unwrap_or(
                        "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token",
                    ),
                )?,
                service_url: http_url("teams.service_url", &t.service_url)?,
                tenant_id: t.tenant_id,
                app_id: t.app_id,
            })
        }
    };
    let mut webhooks = Vec::new();
    if let Some(list) = section::<Vec<RawWebhook>>(sections, "webhooks")? {
        let mut names = BTreeSet::new();
        for (i, w) in list.into_iter().enumerate() {
            let key = |k: &str| format!("webhooks[{i}].{k}");
            if w.name.is_empty()
                || !w
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(key("name"), "use letters, digits, - and _"));
            }
            if !names.insert(w.name.clone()) {
                return Err(invalid(key("name"), "webhook names must be unique"));
            }
            let url = http_url(&key("url"), &w.url)?;
            let secret_text = secret(env, &key("secret_env"), &w.secret_env)?;
            let secret = WebhookSecret::parse(&secret_text)
                .map_err(|e| invalid(key("secret_env"), e.to_string()))?;
            for e in &w.events {
                if !crate::webhooks::EVENT_TYPES.contains(&e.as_str()) {
                    return Err(invalid(
                        key("events"),
                        format!(
                            "unknown event {e:?}; use {}",
                            crate::webhooks::EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
            webhooks.push(WebhookConfig {
                name: w.name,
                url,
                secret,
                events: w.events.into_iter().collect(),
                ca_file: w
                    .ca_file
                    .map(|p| if p.is_absolute() { p } else { base.join(p) }),
                timeout: match w.timeout_seconds.unwrap_or(10) {
                    t @ 1..=120 => Duration::from_secs(t),
                    t => {
                        return Err(invalid(
                            key("timeout_seconds"),
                            format!("{t} is out of range; use 1..=120 seconds"),
                        ))
                    }
                },
            });
        }
    }
    let raw = section::<RawRouting>(sections, "routing")?.unwrap_or_default();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = |k: &str| format!("routing.routes[{i}].{k}");
        if r.group.is_none() && r.resource.is_none() {
            return Err(invalid(
                key("group"),
                "a route needs a reviewer `group` or a `resource` pattern",
            ));
        }
        if let Some(p) = &r.resource {
            if p.is_empty() || p[..p.len().saturating_sub(1)].contains('*') {
                return Err(invalid(
                    key("resource"),
                    "use an exact resource or a prefix ending in a single `*`",
                ));
            }
        }
        if r.slack_channel.is_some() && slack.is_none() {
            return Err(invalid(
                key("slack_channel"),
                "there is no [slack] section to post with",
            ));
        }
        if r.teams_conversation.is_some() && teams.is_none() {
            return Err(invalid(
                key("teams_conversation"),
                "there is no [teams] section to post with",
            ));
        }
        routes.push(Route {
            group: r.group,
            resource: r.resource,
            slack_channel: r.slack_channel,
            teams_conversation: r.teams_conversation,
            escalate_to: r.escalate_to.into_iter().collect(),
        });
    }
    let remind_before = raw
        .remind_before
        .map(|s| duration("routing.remind_before", &s))
        .transpose()?;
    let link_ttl = match raw.link_ttl {
        Some(s) => duration("routing.link_ttl", &s)?,
        None => Duration::from_secs(600),
    };
    if link_ttl > Duration::from_secs(86_400) {
        return Err(invalid("routing.link_ttl", "a link code lives at most 1d"));
    }
    let self_service = match raw.linking.as_deref() {
        None | Some("self-service") => true,
        Some("configured") => false,
        Some(other) => {
            return Err(invalid(
                "routing.linking",
                format!("`{other}` is neither \"self-service\" nor \"configured\""),
            ))
        }
    };
    let mut accounts = BTreeMap::new();
    for (account, principal) in raw.accounts {
        let key = format!("routing.accounts.\"{account}\"");
        let id = match account.split_once(':') {
            Some(("slack", id)) | Some(("teams", id)) => id,
            _ => {
                return Err(invalid(
                    key,
                    "an account is slack:<TEAM>/<USER> or teams:<TENANT>/<AAD-OBJECT-ID>",
                ))
            }
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(invalid(
                key,
                "an account is slack:<TEAM>/<USER> or teams:<TENANT>/<AAD-OBJECT-ID>",
            ));
        }
        let who = PrincipalId::parse(&principal)
            .map_err(|e| invalid(key.clone(), format!("`{principal}`: {e}")))?;
        if who.kind() != PrincipalKind::User {
            return Err(invalid(
                key,
                format!("`{principal}` is not a human (user:…); only humans review"),
            ));
        }
        accounts.insert(account, who);
    }
    Ok(ChannelsConfig {
        slack,
        teams,
        webhooks,
        routing: Routing {
            routes,
            remind_before,
            link_ttl,
            linking: Linking {
                self_service,
                accounts,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sections(text: &str) -> BTreeMap<String, toml::Value> {
        let v: toml::Table = toml::from_str(text).unwrap();
        v.into_iter().collect()
    }

    fn env() -> HashMap<String, String> {
        [
            ("SLACK_BOT", "xoxb-1-2-3"),
            ("SLACK_SIGNING", "0123456789abcdef0123"),
            ("TEAMS_PW", "pw"),
            ("HOOK", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn load(text: &str) -> Result<ChannelsConfig, ConfigError> {
        parse(&sections(text), &env(), Path::new("/etc/secondkey"))
    }

    #[test]
    fn a_full_configuration_loads_and_routes() {
        let c = load(
            r#"
[slack]
bot_token_env = "SLACK_BOT"
signing_secret_env = "SLACK_SIGNING"
[teams]
app_id = "00000000-0000-0000-0000-000000000001"
app_password_env = "TEAMS_PW"
service_url = "https://smba.trafficmanager.net/teams/"
[[webhooks]]
name = "ops"
url = "https://hooks.example/secondkey"
secret_env = "HOOK"
events = ["request.approved"]
[routing]
remind_before = "5m"
[[routing.routes]]
group = "dba"
slack_channel = "C1"
teams_conversation = "19:a@thread.tacv2"
escalate_to = ["dba-leads"]
[[routing.routes]]
resource = "postgres://billing/*"
slack_channel = "C2"
"#,
        )
        .unwrap();
        assert_eq!(c.slack.as_ref().unwrap().api_base, "https://slack.com/api");
        assert_eq!(
            c.teams.as_ref().unwrap().service_url,
            "https://smba.trafficmanager.net/teams"
        );
        assert_eq!(c.routing.remind_before, Some(Duration::from_secs(300)));
        let dba: BTreeSet<String> = ["dba".to_string()].into();
        let t = c.routing.targets(&dba, "postgres://billing/x");
        assert_eq!(t.slack, ["C1".to_string(), "C2".to_string()].into());
        assert_eq!(t.teams.len(), 1);
        assert!(c
            .routing
            .targets(&BTreeSet::new(), "postgres://other/x")
            .is_empty());
        assert_eq!(
            c.routing.escalation(&dba, "x"),
            ["dba-leads".to_string()].into()
        );
        // secrets never show in Debug output
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("xoxb") && !dbg.contains("0123456789abcdef"));
    }

    #[test]
    fn linking_defaults_to_self_service_and_binds_configured_accounts() {
        let c = load("[routing]\n").unwrap();
        assert!(c.routing.linking.self_service && c.routing.linking.accounts.is_empty());
        let c = load("[routing]\nlinking = \"configured\"\n[routing.accounts]\n\"slack:T1/U1\" = \"user:Bob\"\n\"teams:t-1/0b-2\" = \"user:carol\"").unwrap();
        let l = &c.routing.linking;
        assert!(!l.self_service);
        assert_eq!(l.accounts["slack:T1/U1"].as_str(), "user:bob");
        assert_eq!(l.accounts["teams:t-1/0b-2"].as_str(), "user:carol");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[slack]\nbot_token_env = \"NOPE\"\nsigning_secret_env = \"SLACK_SIGNING\"", "slack.bot_token_env"),
            ("[slack]\nbot_token_env = \"TEAMS_PW\"\nsigning_secret_env = \"SLACK_SIGNING\"", "slack.bot_token_env"),
            ("[slack]\nbot_token_env = \"SLACK_BOT\"\nsigning_secret_env = \"TEAMS_PW\"", "slack.signing_secret_env"),
            ("[slack]\nbot_token = \"xoxb\"", "slack.bot_token"),
            ("[slack]\nbot_token_env = 3", "slack.bot_token_env"),
            ("[slack]\nbot_token_env = \"SLACK_BOT\"\nsigning_secret_env = \"SLACK_SIGNING\"\napi_base = \"ftp://x\"", "slack.api_base"),
            ("[slack]\nbot_token_env = \"SLACK_BOT\"\nsigning_secret_env = \"SLACK_SIGNING\"\napi_base = \"http://slack.example/api\"", "slack.api_base"),
            ("[slack]\nbot_token_env = \"SLACK_BOT\"\nsigning_secret_env = \"SLACK_SIGNING\"\napi_base = \"http://127.0.0.1.evil.example/api\"", "slack.api_base"),
            ("[teams]\napp_id = \"00000000-0000-0000-0000-000000000001\"\napp_password_env = \"TEAMS_PW\"\nservice_url = \"http://smba.example/teams/\"", "teams.service_url"),
            ("[teams]\napp_id = \"00000000-0000-0000-0000-000000000001\"\napp_password_env = \"TEAMS_PW\"\nservice_url = \"https://smba.example/teams/\"\ntoken_url = \"http://login.example/token\"", "teams.token_url"),
            ("[[webhooks]]\nname = \"a\"\nurl = \"http://ops.example/hook\"\nsecret_env = \"HOOK\"", "webhooks[0].url"),
            ("[[webhooks]]\nname = \"a\"\nurl = \"https://x\"\nsecret_env = \"HOOK\"\nevents = [\"request.nope\"]", "webhooks[0].events"),
            ("[[webhooks]]\nname = \"a b\"\nurl = \"https://x\"\nsecret_env = \"HOOK\"", "webhooks[0].name"),
            ("[[webhooks]]\nname = \"a\"\nurl = \"https://x\"\nsecret_env = \"TEAMS_PW\"", "webhooks[0].secret_env"),
            ("[[webhooks]]\nname = \"a\"\nurl = \"https://x\"\nsecret_env = \"HOOK\"\ntimeout_seconds = 500", "webhooks[0].timeout_seconds"),
            ("[[webhooks]]\nname = \"a\"\nurl = \"https://x\"\nsecret_env = \"HOOK\"\ntimeout_secs = 0", "webhooks[0].timeout_seconds"),
            ("[[routing.routes]]\nslack_channel = \"C1\"", "routing.routes[0].group"),
            ("[[routing.routes]]\ngroup = \"dba\"\nslack_channel = \"C1\"", "routing.routes[0].slack_channel"),
            ("[[routing.routes]]\nresource = \"a*b*\"", "routing.routes[0].resource"),
            ("[routing]\nremind_before = \"soon\"", "routing.remind_before"),
            ("[routing]\nlinking = \"anyone\"", "routing.linking"),
            ("[routing.accounts]\n\"U0456\" = \"user:bob\"", "routing.accounts.\"U0456\""),
            ("[routing.accounts]\n\"irc:T/U\" = \"user:bob\"", "routing.accounts.\"irc:T/U\""),
            ("[routing.accounts]\n\"slack:U0456\" = \"user:bob\"", "routing.accounts.\"slack:U0456\""),
            ("[routing.accounts]\n\"slack:T1/\" = \"user:bob\"", "routing.accounts.\"slack:T1/\""),
            ("[routing.accounts]\n\"slack:T1/U1\" = \"agent:bot\"", "routing.accounts.\"slack:T1/U1\""),
            ("[routing.accounts]\n\"teams:t/o\" = \"bob\"", "routing.accounts.\"teams:t/o\""),
        ];
        for (text, key) in cases {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }
}
