//! Local stand-ins for the SaaS this machine cannot reach, speaking their
//! documented wire formats: the Slack Web API (chat.postMessage,
//! chat.update, chat.postEphemeral, files.getUploadURLExternal + the upload
//! URL + files.completeUploadExternal, bot token in `Authorization`), and
//! the Bot Framework (OpenID metadata, a JWK set with endorsements, the
//! client-credentials token endpoint, the Bot Connector's activities API),
//! plus a Standard Webhooks receiver. Each records what it was sent.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};

pub const SLACK_BOT_TOKEN: &str = "xoxb-test-bot-token-1234";
pub const SLACK_SIGNING_SECRET: &str = "test-signing-secret-0123456789abcdef";
pub const TEAMS_APP_ID: &str = "00000000-0000-0000-0000-00000000a11d";
pub const TEAMS_APP_PASSWORD: &str = "test-app-password";
pub const CONNECTOR_TOKEN: &str = "connector-access-token-for-the-bot";
pub const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: Value,
    pub headers: HashMap<String, String>,
}

pub type Calls = Arc<Mutex<Vec<Call>>>;

/// Serves `app` on a free loopback port, on a thread of its own; its base URL.
pub fn serve(app: Router) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn record(calls: &Calls, method: &str, path: &str, headers: &HeaderMap, body: Value) {
    let hs = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect::<HashMap<_, _>>();
    calls.lock().unwrap().push(Call {
        method: method.into(),
        path: path.into(),
        auth: hs.get("authorization").cloned(),
        body,
        headers: hs,
    });
}

/// Waits until `f` finds something in `calls` (panics after 30 s).
pub fn wait_for<T>(calls: &Calls, what: &str, f: impl Fn(&[Call]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = f(&calls.lock().unwrap()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; calls: {:#?}",
            calls.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- Slack

/// A file upload: the declared length and, once uploaded, the bytes.
type Upload = (usize, Option<Vec<u8>>);

#[derive(Clone)]
struct SlackState {
    calls: Calls,
    base: Arc<Mutex<String>>,
    ts: Arc<Mutex<u64>>,
    files: Arc<Mutex<HashMap<String, Upload>>>,
    /// How long chat.postMessage takes to answer (recorded at once).
    post_delay: Duration,
}

fn slack_auth(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SLACK_BOT_TOKEN}"))
}

fn slack_err(e: &str) -> Response {
    // Slack answers errors with HTTP 200 and ok: false.
    Json(json!({"ok": false, "error": e})).into_response()
}

async fn slack_method(
    State(s): State<SlackState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed: Value = if ct.starts_with("application/json") {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return slack_err("invalid_json"),
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    } else {
        return slack_err("invalid_form_data");
    };
    record(&s.calls, "POST", &method, &headers, parsed.clone());
    if !slack_auth(&headers) {
        return slack_err("not_authed");
    }
    let str_of = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_string);
    match method.as_str() {
        "chat.postMessage" => {
            let (Some(ch), Some(_)) = (str_of("channel"), str_of("text")) else {
                return slack_err("no_text");
            };
            tokio::time::sleep(s.post_delay).await;
            let mut t = s.ts.lock().unwrap();
            *t += 1;
            let ts = format!("1700000000.{:06}", *t);
            Json(json!({"ok": true, "channel": ch, "ts": ts, "message": {"text": parsed["text"], "ts": ts}})).into_response()
        }
        "chat.update" => match (str_of("channel"), str_of("ts")) {
            (Some(ch), Some(ts)) => {
                Json(json!({"ok": true, "channel": ch, "ts": ts, "text": parsed["text"]}))
                    .into_response()
            }
            _ => slack_err("message_not_found"),
        },
        "chat.postEphemeral" => match (str_of("channel"), str_of("user"), str_of("text")) {
            (Some(_), Some(_), Some(_)) => {
                Json(json!({"ok": true, "message_ts": "1700000000.999999"})).into_response()
            }
            _ => slack_err("invalid_arguments"),
        },
        "files.getUploadURLExternal" => {
            let (Some(_), Some(len)) = (
                str_of("filename"),
                str_of("length").and_then(|l| l.parse::<usize>().ok()),
            ) else {
                return slack_err("invalid_arguments");
            };
            let id = format!("F{:08}", s.files.lock().unwrap().len() + 1);
            s.files.lock().unwrap().insert(id.clone(), (len, None));
            let base = s.base.lock().unwrap().clone();
            Json(json!({"ok": true, "upload_url": format!("{base}/upload/{id}"), "file_id": id}))
                .into_response()
        }
        "files.completeUploadExternal" => {
            let files = parsed
                .get("files")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let store = s.files.lock().unwrap();
            for f in &files {
                let id = f.get("id").and_then(Value::as_str).unwrap_or("");
                match store.get(id) {
                    Some((len, Some(bytes))) if bytes.len() == *len => {}
                    _ => return slack_err("file_not_found"),
                }
            }
            Json(json!({"ok": true, "files": files})).into_response()
        }
        _ => slack_err("unknown_method"),
    }
}

async fn slack_upload(
    State(s): State<SlackState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &s.calls,
        "POST",
        &format!("upload/{id}"),
        &headers,
        json!({"bytes": String::from_utf8_lossy(&body)}),
    );
    let mut files = s.files.lock().unwrap();
    match files.get_mut(&id) {
        Some(f) => {
            f.1 = Some(body.to_vec());
            (StatusCode::OK, format!("OK - {}", body.len())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such upload").into_response(),
    }
}

/// The fake Slack: its API base (`…/api`) and what it was sent.
pub fn slack() -> (String, Calls) {
    slack_posting_in(Duration::ZERO)
}

/// [`slack`] whose chat.postMessage answers after `delay` (the call is
/// recorded when it arrives): a post stays in flight that long.
pub fn slack_posting_in(delay: Duration) -> (String, Calls) {
    let calls: Calls = Default::default();
    let st = SlackState {
        calls: calls.clone(),
        base: Default::default(),
        ts: Default::default(),
        files: Default::default(),
        post_delay: delay,
    };
    let base_slot = st.base.clone();
    let app = Router::new()
        .route("/api/{method}", post(slack_method))
        .route("/upload/{id}", post(slack_upload))
        .with_state(st);
    let base = serve(app);
    *base_slot.lock().unwrap() = base.clone();
    (format!("{base}/api"), calls)
}

/// A signed Slack interaction: (body, timestamp header, signature header).
static CLICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Each click has its own `action_ts`, as in Slack, so two clicks in one
/// second are two different signed requests.
pub fn slack_click(
    secret: &str,
    ts: i64,
    user: &str,
    action: &str,
    request: &str,
    message_ts: &str,
) -> (String, String, String) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEST"},
        "api_app_id": "A0TEST", "token": "deprecated-verification-token",
        "team": {"id": "T0TEST", "domain": "test"},
        "channel": {"id": "C1", "name": "reviews"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C1", "is_ephemeral": false},
        "message": {"type": "message", "ts": message_ts, "text": "Approval request"},
        "response_url": "https://hooks.slack.invalid/actions/T0TEST/1/x",
        "trigger_id": "1.2.3",
        "actions": [{"type": "button", "action_id": action, "block_id": "secondkey_review",
                     "value": request, "action_ts": format!("{ts}.{:06}", CLICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                     "text": {"type": "plain_text", "text": action}}]
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let ts_s = ts.to_string();
    let sig = slack_signature(secret, &ts_s, body.as_bytes());
    (body, ts_s, sig)
}

pub fn slack_signature(secret: &str, ts: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("v0:{ts}:").as_bytes());
    m.update(body);
    format!("v0={}", hex::encode(m.finalize().into_bytes()))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------- Bot Framework

/// An RSA key made by `openssl` for the test: PKCS#1 DER for signing, and
/// the modulus for the JWK.
pub struct RsaKey {
    pub der: Vec<u8>,
    pub n_b64url: String,
}

pub fn rsa_key(dir: &std::path::Path, name: &str) -> RsaKey {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("openssl is needed to make test RSA keys (apt-get install openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&["genrsa", "-out", pem.to_str().unwrap(), "2048"]);
    run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-traditional",
        "-out",
        der.to_str().unwrap(),
    ]);
    let modulus = run(&["rsa", "-in", pem.to_str().unwrap(), "-noout", "-modulus"]);
    let hex_n = modulus.trim().strip_prefix("Modulus=").unwrap();
    RsaKey {
        der: std::fs::read(der).unwrap(),
        n_b64url: B64URL.encode(hex::decode(hex_n).unwrap()),
    }
}

pub const KID: &str = "bf-test-key-1";

/// A Bot Framework token signed with `key`, naming [`KID`].
pub fn bot_token(key: &RsaKey, aud: &str, service_url: &str, exp_in: i64) -> String {
    bot_token_kid(key, KID, aud, service_url, exp_in)
}

/// A Bot Framework token signed with `key`, naming key id `kid`.
pub fn bot_token_kid(key: &RsaKey, kid: &str, aud: &str, service_url: &str, exp_in: i64) -> String {
    bot_token_with(key, kid, aud, service_url, exp_in, &[])
}

/// A Bot Framework token with `extra` claims besides the usual ones (the
/// service URL under the Bot Framework's claim name, `serviceurl`).
pub fn bot_token_with(
    key: &RsaKey,
    kid: &str,
    aud: &str,
    service_url: &str,
    exp_in: i64,
    extra: &[(&str, &str)],
) -> String {
    let now = unix_now();
    let mut claims = json!({
        "iss": "https://api.botframework.com", "aud": aud,
        "exp": now + exp_in, "nbf": now - 60, "iat": now - 60,
        "serviceurl": service_url,
    });
    for (k, v) in extra {
        claims[*k] = json!(v);
    }
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&key.der),
    )
    .unwrap()
}

#[derive(Clone)]
struct BotState {
    calls: Calls,
    base: Arc<Mutex<String>>,
    /// The published JWK set's `keys`.
    keys: Vec<Value>,
    next: Arc<Mutex<u64>>,
}

/// A published signing key, as the Bot Framework lists it: with the
/// channels it may sign for (`endorsements`).
pub fn jwk(key: &RsaKey, kid: &str, endorsements: &[&str]) -> Value {
    json!({"kty": "RSA", "use": "sig", "kid": kid, "n": key.n_b64url, "e": "AQAB",
           "endorsements": endorsements})
}

async fn bf_metadata(State(s): State<BotState>) -> Json<Value> {
    let base = s.base.lock().unwrap().clone();
    Json(
        json!({"issuer": "https://api.botframework.com", "authorization_endpoint": "https://invalid.example/auth",
                "jwks_uri": format!("{base}/keys"), "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"]}),
    )
}

async fn bf_keys(State(s): State<BotState>) -> Json<Value> {
    Json(json!({ "keys": s.keys }))
}

async fn bf_token(State(s): State<BotState>, headers: HeaderMap, body: Bytes) -> Response {
    let pairs: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    record(&s.calls, "POST", "token", &headers, json!(pairs));
    let ok = pairs.get("grant_type").map(String::as_str) == Some("client_credentials")
        && pairs.get("client_id").map(String::as_str) == Some(TEAMS_APP_ID)
        && pairs.get("client_secret").map(String::as_str) == Some(TEAMS_APP_PASSWORD)
        && pairs.get("scope").map(String::as_str) == Some("https://api.botframework.com/.default");
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": CONNECTOR_TOKEN}))
        .into_response()
}

fn connector_auth(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CONNECTOR_TOKEN}"))
}

async fn bf_send(
    State(s): State<BotState>,
    Path(conv): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &s.calls,
        "POST",
        &format!("conversations/{conv}/activities"),
        &headers,
        body,
    );
    if !connector_auth(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut n = s.next.lock().unwrap();
    *n += 1;
    (
        StatusCode::CREATED,
        Json(json!({"id": format!("1:activity-{}", *n)})),
    )
        .into_response()
}

async fn bf_update(
    State(s): State<BotState>,
    Path((conv, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &s.calls,
        "PUT",
        &format!("conversations/{conv}/activities/{id}"),
        &headers,
        body,
    );
    if !connector_auth(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"id": id})).into_response()
}

/// The fake Bot Framework: its base URL (also the service URL) and calls.
/// It publishes `key` as [`KID`], endorsed for `msteams` and `webchat`.
pub fn bot_framework(key: &RsaKey) -> (String, Calls) {
    bot_framework_keys(vec![jwk(key, KID, &["msteams", "webchat"])])
}

/// The fake Bot Framework publishing exactly `keys` (see [`jwk`]).
pub fn bot_framework_keys(keys: Vec<Value>) -> (String, Calls) {
    let calls: Calls = Default::default();
    let st = BotState {
        calls: calls.clone(),
        base: Default::default(),
        keys,
        next: Default::default(),
    };
    let base_slot = st.base.clone();
    let app = Router::new()
        .route("/v1/.well-known/openidconfiguration", get(bf_metadata))
        .route("/keys", get(bf_keys))
        .route("/token", post(bf_token))
        .route("/v3/conversations/{conv}/activities", post(bf_send))
        .route("/v3/conversations/{conv}/activities/{id}", put(bf_update))
        .with_state(st);
    let base = serve(app);
    *base_slot.lock().unwrap() = base.clone();
    (base, calls)
}

/// An `adaptiveCard/action` invoke, as Teams sends it.
pub fn invoke(
    id: &str,
    service_url: &str,
    aad: &str,
    verb: &str,
    request: &str,
    reply_to: &str,
) -> Value {
    json!({
        "type": "invoke", "name": "adaptiveCard/action", "id": id,
        "timestamp": "2026-12-01T10:00:00.000Z", "channelId": "msteams", "serviceUrl": service_url,
        "from": {"id": format!("29:{aad}"), "name": aad, "aadObjectId": aad},
        "conversation": {"id": "19:reviewers@thread.tacv2", "conversationType": "channel", "tenantId": "tenant-1"},
        "recipient": {"id": format!("28:{TEAMS_APP_ID}"), "name": "secondkey"},
        "replyToId": reply_to,
        "channelData": {"tenant": {"id": "tenant-1"}},
        "value": {"action": {"type": "Action.Execute", "verb": verb, "data": {"request": request}}, "trigger": "manual"}
    })
}

// ---------------------------------------------------------------- webhooks

/// A receiver that answers 500 to the first delivery, 200 afterwards.
pub fn webhook_receiver() -> (String, Calls) {
    let calls: Calls = Default::default();
    let c2 = calls.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let calls = c2.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let first = calls.lock().unwrap().is_empty();
                let mut hs = HashMap::new();
                for (k, val) in headers.iter() {
                    hs.insert(k.to_string(), val.to_str().unwrap_or("").to_string());
                }
                hs.insert(
                    "x-raw-body".into(),
                    String::from_utf8_lossy(&body).to_string(),
                );
                calls.lock().unwrap().push(Call {
                    method: "POST".into(),
                    path: "hook".into(),
                    auth: None,
                    body: v,
                    headers: hs,
                });
                if first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    (format!("{}/hook", serve(app)), calls)
}
