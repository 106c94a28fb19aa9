//! A real OpenID Connect provider for black-box tests
//! (`oidc-provider-mock` from PyPI, an authlib-based provider), and a
//! plain-HTTP browser: sign in, read pages, post forms, mint ID tokens.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::free_port;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `oidc-provider-mock` on a free port. Users sign in by typing a
/// subject; the claims of the users named here (each a JSON object with
/// `sub`) are what its ID tokens carry.
pub fn start_idp_with(dir: &Path, users: &[Value]) -> (Proc, String) {
    start_idp_args(dir, users, &[])
}

/// [`start_idp_with`], the provider started with `args` too (e.g.
/// `--token-max-age 3` for tokens that expire soon).
pub fn start_idp_args(dir: &Path, users: &[Value], args: &[&str]) -> (Proc, String) {
    let ok = Command::new("python3")
        .args(["-c", "import oidc_provider_mock"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the OpenID Connect provider for these tests is missing: run `python3 -m pip install oidc-provider-mock` (scripts/test does)"
    );
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "oidc_provider_mock", "--port", &port.to_string()]);
    cmd.args(args);
    for u in users {
        cmd.arg("--user-claims").arg(u.to_string());
    }
    let log = std::fs::File::create(dir.join("idp.log")).unwrap();
    let mut child = cmd
        .env("PYTHONWARNINGS", "ignore")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start python3 -m oidc_provider_mock");
    wait_port(port, "oidc-provider-mock", &mut child);
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

/// The users the web tests sign in as: `sub` is also their
/// `preferred_username`, their email is `<sub>@example.test`.
pub fn start_idp(dir: &Path) -> (Proc, String) {
    let users: Vec<Value> = [
        ("bob", json!(["data-owners"])),
        ("alice", json!(["data-owners"])),
        ("erin", json!(["marketing"])),
        ("frank", json!(["idp-data-owners"])),
        ("report-bot", json!([])),
        ("audrey", json!([])),
    ]
    .into_iter()
    .map(|(sub, groups)| json!({"sub": sub, "preferred_username": sub, "groups": groups, "email": format!("{sub}@example.test")}))
    .collect();
    start_idp_with(dir, &users)
}

/// An ID token the provider issues to client `client_id` for `sub`: what
/// the tests use as a workload identity token.
pub fn id_token_for(issuer: &str, client_id: &str, sub: &str) -> String {
    let a = no_redirects();
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:1/cb")
        .append_pair("scope", "openid profile")
        .append_pair("state", "s")
        .finish();
    let granted = resp(
        a.post(&format!("{issuer}/oauth2/authorize?{q}"))
            .send_form(&[("sub", sub)]),
    );
    let code = granted
        .location
        .expect("the provider redirects with a code")
        .split("code=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .expect("a code")
        .to_string();
    let tok: Value = a
        .post(&format!("{issuer}/oauth2/token"))
        .send_form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:1/cb"),
            ("client_id", client_id),
            ("client_secret", "x"),
        ])
        .unwrap()
        .into_json()
        .unwrap();
    tok["id_token"].as_str().expect("an ID token").to_string()
}

pub fn no_redirects() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build()
}

/// A response's status, `Location`, `Set-Cookie` values and body, whatever the status.
pub struct Resp {
    pub status: u16,
    pub location: Option<String>,
    pub cookies: Vec<String>,
    pub body: String,
}

pub fn resp(r: Result<ureq::Response, ureq::Error>) -> Resp {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let cookies = r.all("set-cookie").iter().map(|s| s.to_string()).collect();
    Resp {
        status: r.status(),
        location: r.header("location").map(str::to_string),
        cookies,
        body: r.into_string().unwrap_or_default(),
    }
}

pub fn cookie_value(cookies: &[String], name: &str) -> Option<String> {
    cookies.iter().find_map(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

/// Signs in through the provider with plain HTTP, returning the session
/// cookie and the final redirect target. Also returns the callback URL and
/// login cookie (`name=value`), to replay them.
pub struct SignIn {
    pub session: String,
    pub landed: String,
    pub callback: String,
    pub login_cookie: String,
}

pub fn sign_in(gw: &str, user: &str, return_to: &str) -> SignIn {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("return", return_to)
        .finish();
    sign_in_at(gw, user, &format!("/login?{q}"))
}

/// Signs `user` in from a `/login…` path the gateway redirected to, the
/// way a browser follows it: where the sign-in lands shows whether `/login`
/// read the way back the redirect carried.
pub fn sign_in_at(gw: &str, user: &str, login: &str) -> SignIn {
    let (done, callback, login_cookie) = through_provider(gw, user, login);
    assert_eq!(done.status, 303, "{}", done.body);
    SignIn {
        session: cookie_value(&done.cookies, "sk_session").expect("a session cookie"),
        landed: done.location.unwrap_or_default(),
        callback,
        login_cookie,
    }
}

/// The gateway's answer to a sign-in of `user` it refuses (no session).
pub fn sign_in_refused(gw: &str, user: &str) -> Resp {
    let (done, _, _) = through_provider(gw, user, "/login?return=%2F");
    assert!(
        cookie_value(&done.cookies, "sk_session").is_none(),
        "no session for a refused sign-in"
    );
    done
}

/// The login cookie a `/login` answer set, as `name=value` (one cookie per
/// sign-in, named `sk_login_…`).
pub fn login_cookie_of(r: &Resp) -> Option<String> {
    r.cookies.iter().find_map(|c| {
        c.split(';')
            .next()
            .filter(|kv| kv.starts_with("sk_login_"))
            .map(str::to_string)
    })
}

/// `/login` at `gw`: the login cookie (`name=value`) and the provider URL
/// the browser is sent to.
pub fn start_sign_in(gw: &str, return_to: &str) -> (String, String) {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("return", return_to)
        .finish();
    start_sign_in_at(gw, &format!("/login?{q}"))
}

/// [`start_sign_in`] from a `/login…` path exactly as the gateway sent
/// the browser there (a redirect's `Location`).
pub fn start_sign_in_at(gw: &str, login: &str) -> (String, String) {
    let start = resp(no_redirects().get(&format!("{gw}{login}")).call());
    assert_eq!(start.status, 303, "{}", start.body);
    let login_cookie = login_cookie_of(&start).expect("login cookie");
    let authorize = start.location.expect("redirect to the provider");
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    assert!(authorize.contains("nonce="), "{authorize}");
    (login_cookie, authorize)
}

/// The provider's consent as `user`: the callback URL it sends the browser to.
pub fn consent(authorize: &str, user: &str) -> String {
    let granted = resp(no_redirects().post(authorize).send_form(&[("sub", user)]));
    assert_eq!(granted.status, 302, "{}", granted.body);
    granted.location.expect("back to the gateway")
}

/// `GET {gw}/auth/callback?…` with the query of `callback` and `cookie`
/// (`name=value`, or none).
pub fn callback_at(gw: &str, callback: &str, cookie: Option<&str>) -> Resp {
    let query = callback.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut r = no_redirects().get(&format!("{gw}/auth/callback?{query}"));
    if let Some(c) = cookie {
        r = r.set("Cookie", c);
    }
    resp(r.call())
}

/// `login` (a `/login…` path), the provider's consent as `user`, and the gateway's callback:
/// the callback's answer, its URL and the login cookie.
fn through_provider(gw: &str, user: &str, login: &str) -> (Resp, String, String) {
    let (login_cookie, authorize) = start_sign_in_at(gw, login);
    let callback = consent(&authorize, user);
    assert!(
        callback.starts_with(&format!("{gw}/auth/callback?")),
        "{callback}"
    );
    let done = callback_at(gw, &callback, Some(&login_cookie));
    (done, callback, login_cookie)
}

pub fn get_page(gw: &str, session: &str, path: &str) -> Resp {
    resp(
        no_redirects()
            .get(&format!("{gw}{path}"))
            .set("Cookie", &format!("sk_session={session}"))
            .call(),
    )
}

pub fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field");
    let rest = &html[at + 19..];
    rest[..rest.find('"').unwrap()].to_string()
}

pub fn post_form(
    gw: &str,
    session: &str,
    path: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> Resp {
    let mut r = no_redirects()
        .post(&format!("{gw}{path}"))
        .set("Cookie", &format!("sk_session={session}"));
    if let Some(o) = origin {
        r = r.set("Origin", o);
    }
    resp(r.send_form(fields))
}

/// The `state` events of an event stream as they come (`Some`), then
/// `None` once the gateway ends it: `path` opened with the web `session`
/// cookie, or with `token`.
pub fn events(
    gw: &str,
    path: &str,
    session: Option<&str>,
    token: Option<&str>,
) -> std::sync::mpsc::Receiver<Option<Value>> {
    use std::io::BufRead;
    let mut r = ureq::AgentBuilder::new()
        .redirects(0)
        .build()
        .get(&format!("{gw}{path}"));
    if let Some(s) = session {
        r = r.set("Cookie", &format!("sk_session={s}"));
    }
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = r.call().unwrap();
    assert!(resp.content_type().starts_with("text/event-stream"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            // A broken connection is no end the gateway chose: say nothing.
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:") {
                let _ = tx.send(Some(serde_json::from_str(data.trim()).unwrap()));
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// The next of [`events`] within `secs`: `Ok(None)` is the gateway ending
/// the stream.
pub fn next_event(
    rx: &std::sync::mpsc::Receiver<Option<Value>>,
    secs: u64,
) -> Result<Option<Value>, String> {
    rx.recv_timeout(Duration::from_secs(secs))
        .map_err(|_| format!("nothing within {secs} s"))
}
