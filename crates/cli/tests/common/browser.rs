//! What the black-box tests that use a browser share (`web.rs`,
//! `lineage.rs`): the gateway's `[oidc]` section for the OpenID Connect
//! provider of `common/oidc.rs`, and headless Chromium driven over
//! WebDriver (chromedriver). Included with
//! `#[path = "common/browser.rs"] mod browser;` next to
//! `#[path = "common/oidc.rs"] mod oidc;`.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::free_port;
use crate::oidc::{wait_port, Proc};

pub fn oidc_config(dir: &Path, issuer: &str) -> String {
    let secret = dir.join("client_secret");
    std::fs::write(&secret, "web-test-client-secret\n").unwrap();
    format!(
            "\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"secondkey-web\"\nclient_secret_file = \"{}\"\ngroups_claim = \"groups\"\nsession_ttl = \"1h\"\n[oidc.group_map]\n\"data-owners\" = [\"data-owners\"]\n\"idp-data-owners\" = [\"data-owners\"]\n\"marketing\" = [\"marketing\"]\n\n[[identity.jwt]]\nissuer = \"{issuer}\"\naudience = \"agent-login\"\nprincipal_kind = \"agent\"\nprincipal_claim = \"preferred_username\"\n",
            secret.display()
        )
}

// ---------------------------------------------------------------- Chromium

/// A minimal WebDriver client over HTTP (chromedriver), enough for the
/// end-to-end test.
pub struct Driver {
    base: String,
    session: String,
    http: ureq::Agent,
}

pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = self.http.request(method, &url);
        let r = match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        };
        match r {
            Ok(r) => r.into_json::<Value>().unwrap()["value"].take(),
            Err(ureq::Error::Status(s, r)) => panic!(
                "WebDriver {method} {path}: {s} {}",
                r.into_string().unwrap_or_default()
            ),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap().to_string()
    }
    pub fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_string()
    }
    pub fn screenshot(&self, name: &str) {
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }
    /// Makes the page's viewport exactly `width`×`height` CSS pixels
    /// (Chrome DevTools device metrics, so no window frame eats into it).
    pub fn viewport(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setDeviceMetricsOverride",
                        "params": {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}})),
        );
    }
    /// Where `css` is on the first screen: its box, the viewport and the
    /// scroll offset (`null` when absent).
    pub fn box_of(&self, css: &str) -> Value {
        self.exec(
            "const e = document.querySelector(arguments[0]); if (!e) { return null; }\
             const r = e.getBoundingClientRect();\
             return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height,\
                     vw: window.innerWidth, vh: window.innerHeight, sy: window.scrollY};",
            json!([css]),
        )
    }
    /// Asserts `css` is wholly visible without scrolling.
    pub fn assert_on_first_screen(&self, css: &str) {
        let b = self.box_of(css);
        assert!(!b.is_null(), "{css} is not on the page");
        let f = |k: &str| b[k].as_f64().unwrap();
        assert_eq!(f("sy"), 0.0, "the page is scrolled: {b}");
        assert!(
            f("height") > 0.0 && f("top") >= 0.0 && f("left") >= 0.0,
            "{css} is hidden: {b}"
        );
        assert!(
            f("bottom") <= f("vh") && f("right") <= f("vw"),
            "{css} is below or beside the first screen: {b}"
        );
    }
    pub fn wait_for(&self, what: &str, f: impl Fn(&Driver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn start_chromium(dir: &Path) -> (Proc, Driver) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        panic!("headless Chromium is missing: run `apt-get install -y chromium chromium-driver` (scripts/test does)");
    };
    let port = free_port();
    let mut child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    wait_port(port, "chromedriver", &mut child);
    let proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let profile = dir.join("chromium-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1280,1400",
                     format!("--user-data-dir={}", profile.display())]
        }
    }}});
    let r = http
        .post(&format!("{base}/session"))
        .send_json(caps)
        .unwrap_or_else(|e| panic!("chromedriver could not start Chromium: {e}"));
    let mut body = String::new();
    r.into_reader().read_to_string(&mut body).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    (
        proc,
        Driver {
            base,
            session,
            http,
        },
    )
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(&format!("{}/session/{}", self.base, self.session))
            .call();
    }
}
