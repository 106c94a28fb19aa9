//! A small blocking client for the gateway's REST API.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// Where the gateway is and who we are.
pub struct Client {
    pub url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// The variable that allows a token over plain `http://` to a gateway off
/// loopback (the SDKs read the same one).
pub const ALLOW_INSECURE_HTTP: &str = "SECONDKEY_ALLOW_INSECURE_HTTP";

/// Refuses to send a bearer token over plain `http://` to a host that is
/// not this machine (127.0.0.0/8, `::1`, `localhost`): anyone on the path
/// would read it. `https://` and loopback pass; `SECONDKEY_ALLOW_INSECURE_HTTP=1`
/// opts in (a gateway behind a trusted private network).
///
/// Only `https://…` and `http://…` spelled exactly so pass to the host test:
/// URL parsers also read `http:host`, `http:/host`, a leading blank or a tab
/// inside the scheme as plain http, so any other spelling is refused.
pub fn check_transport(url: &str) -> Result<()> {
    let starts = |p: &str| {
        url.get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    if url.chars().any(|c| c.is_control() || c.is_whitespace())
        || !(starts("https://") || starts("http://"))
    {
        return Err(anyhow!(
            "the gateway URL {url:?} must start with https:// or http:// and hold no blanks or control characters"
        ));
    }
    if starts("https://") {
        return Ok(());
    }
    let rest = &url[7..];
    // A backslash ends the authority too: URL parsers read it as `/` in
    // http URLs, so `http://evil\@127.0.0.1` goes to `evil`.
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
            Ok(std::net::IpAddr::V6(a)) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Err(_) => false,
        };
    if loopback || std::env::var(ALLOW_INSECURE_HTTP).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    Err(anyhow!(
        "refusing to send the token over plain http:// to {host:?}, which is not this machine: \
         use https:// (TLS in front of the gateway), or set {ALLOW_INSECURE_HTTP}=1 if the \
         network between here and the gateway is trusted"
    ))
}

/// A transport error without the URL ureq puts first: the message that
/// carries it already names the gateway and the path.
fn without_url(e: &ureq::Error) -> String {
    let text = e.to_string();
    if let ureq::Error::Transport(t) = e {
        if let Some(rest) = t.url().and_then(|u| text.strip_prefix(&format!("{u}: "))) {
            return rest.to_string();
        }
    }
    text
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(5))
            .timeout_read(std::time::Duration::from_secs(120))
            .build();
        Client {
            url: url.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{}", self.url, path));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    fn handle(&self, what: &str, r: Result<ureq::Response, ureq::Error>) -> Result<Value> {
        match r {
            // 204 No Content (a recorded result, a revocation): nothing to parse.
            Ok(resp) if resp.status() == 204 => Ok(Value::Null),
            Ok(resp) => {
                let text = resp.into_string()?;
                serde_json::from_str(&text).with_context(|| format!("{what}: the gateway's answer is not JSON"))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let (c, m) = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| {
                        let e = v.get("error")?;
                        Some((e.get("code")?.as_str()?.to_string(), e.get("message")?.as_str()?.to_string()))
                    })
                    .unwrap_or_else(|| ("http".into(), body.clone()));
                Err(anyhow!(ApiFailure { status: code, code: c, message: m }))
                    .with_context(|| what.to_string())
            }
            Err(e) => Err(anyhow!(
                "{what}: cannot reach the gateway at {}: {}. Is `secondkey serve` running, and is --url (or SECONDKEY_URL) right?",
                self.url,
                without_url(&e)
            )),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self.req("GET", path).call();
        self.handle(&format!("GET {path}"), r)
    }

    pub fn get_text(&self, path: &str) -> Result<String> {
        match self.req("GET", path).call() {
            Ok(r) => Ok(r.into_string()?),
            // Same error reporting as JSON calls (status, code, message).
            Err(e) => Err(self
                .handle(&format!("GET {path}"), Err(e))
                .err()
                .unwrap_or_else(|| anyhow!("GET {path} failed"))),
        }
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        match self.req("GET", path).call() {
            Ok(r) => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut buf)?;
                Ok(buf)
            }
            // Same error reporting as JSON calls (status, code, message).
            Err(e) => Err(self
                .handle(&format!("GET {path}"), Err(e))
                .err()
                .unwrap_or_else(|| anyhow!("GET {path} failed"))),
        }
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<Value> {
        let r = self
            .req("POST", path)
            .set("Content-Type", "application/json")
            .send_bytes(body);
        self.handle(&format!("POST {path}"), r)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self.req("POST", path).send_json(body.clone());
        self.handle(&format!("POST {path}"), r)
    }
}

/// An error answer from the gateway, with its machine code.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// The machine code of an API failure anywhere in an error chain.
pub fn failure_code(e: &anyhow::Error) -> Option<&str> {
    e.chain()
        .find_map(|c| c.downcast_ref::<ApiFailure>())
        .map(|f| f.code.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which gateway URLs may carry a token without TLS (the opt-in
    /// variable unset: no test of this crate sets it).
    #[test]
    fn a_token_goes_over_plain_http_only_to_this_machine() {
        assert!(std::env::var(ALLOW_INSECURE_HTTP).is_err());
        for ok in [
            "http://127.0.0.1:8750",
            "http://127.3.2.1",
            "HTTP://LOCALHOST:8750/",
            "http://localhost",
            "http://[::1]:8750",
            "http://[::ffff:127.0.0.1]:8750",
            "http://user@127.0.0.1:8750",
            "https://gateway.example.com",
            "https://10.0.0.5:8750",
        ] {
            assert!(check_transport(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://gateway.example.com",
            "http://10.0.0.5:8750",
            "http://[2001:db8::1]:8750",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
            "http://127.0.0.1@evil.example.com",
            "http://evil.example.com#@127.0.0.1",
            "http://evil.example.com\\@127.0.0.1",
            "http://0.0.0.0:8750",
        ] {
            let e = check_transport(refused).expect_err(refused).to_string();
            assert!(e.contains("SECONDKEY_ALLOW_INSECURE_HTTP=1"), "{e}");
        }
        // Spellings a URL parser still sends as plain http to `evil`.
        for odd in [
            "http:evil.example.com",
            "http:/evil.example.com",
            "http:\\\\evil.example.com",
            " http://evil.example.com",
            "ht\ttp://evil.example.com",
            "http:/\t/evil.example.com",
            "http://127.0.0.1\n.evil.example.com",
            "127.0.0.1:8750",
            "ftp://127.0.0.1",
        ] {
            let e = check_transport(odd).expect_err(odd).to_string();
            assert!(e.contains("must start with https:// or http://"), "{e}");
        }
    }
}
