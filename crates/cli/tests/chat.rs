//! Black-box tests of chat approvals: the real `secondkey` binary against
//! local stand-ins for Slack and the Bot Framework that speak their
//! documented formats (signatures and tokens included), and a Standard
//! Webhooks receiver.

mod common;
#[path = "common/fakes.rs"]
mod fakes;

use std::time::Duration;

use common::{token_of, Gateway};
use fakes::*;
use serde_json::{json, Value};

/// Exports need one data owner within `export_ttl`; writes within `write_ttl`.
fn policies(export_ttl: &str, write_ttl: &str) -> String {
    format!(
        r#"
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-an-owner")
@review("data-owners")
@ttl("{export_ttl}")
forbid(principal, action == Action::"sql.export", resource);

@id("agents-write")
permit(principal in Group::"agents", action == Action::"sql.write", resource);

@id("writes-expire-fast")
@review("data-owners")
@ttl("{write_ttl}")
forbid(principal, action == Action::"sql.write", resource);

@id("agents-delete")
permit(principal in Group::"agents", action == Action::"sql.delete", resource);

@id("deletes-need-two-owners")
@review("data-owners")
@quorum("2")
forbid(principal, action == Action::"sql.delete", resource);
"#
    )
}

fn export(statement: &str) -> Value {
    json!({
        "kind": "sql", "operation": "export", "resource": "postgres://analytics/public.customers",
        "params": {"statement": statement, "format": "csv"},
        "justification": "quarterly report",
        "on_behalf_of": "user:carol",
        "context": {"environment": "prod", "estimated_rows": 1200, "model": "test-model-1"},
        "lineage": {"reads": ["postgres://analytics/public.customers"], "writes": ["s3://reports/q3.csv"]}
    })
}

fn delete_action() -> Value {
    json!({"kind": "sql", "operation": "delete", "resource": "postgres://analytics/public.t",
           "params": {"statement": "DELETE FROM t WHERE x = 1"}})
}

fn write_action() -> Value {
    json!({"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.t",
           "params": {"statement": "UPDATE t SET x = 1"}})
}

/// POSTs raw bytes with headers; returns (status, body).
fn post_raw(
    g: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    ct: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut r = g
        .agent
        .post(&format!("{}{}", g.url, path))
        .set("Content-Type", ct);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let read = |resp: ureq::Response| {
        let s = resp.status();
        let t = resp.into_string().unwrap_or_default();
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    };
    match r.send_bytes(body) {
        Ok(resp) => read(resp),
        Err(ureq::Error::Status(_, resp)) => read(resp),
        Err(e) => panic!("POST {path}: {e}"),
    }
}

fn click(g: &Gateway, body: &str, ts: &str, sig: &str) -> (u16, Value) {
    post_raw(
        g,
        "/chat/slack/interactions",
        &[
            ("X-Slack-Request-Timestamp", ts),
            ("X-Slack-Signature", sig),
        ],
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
}

fn state(g: &Gateway, id: &str) -> Value {
    let (s, v) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(s, 200, "{v}");
    v
}

fn ephemeral_for(calls: &Calls, user: &str, after: usize, needle: &str) -> String {
    wait_for(
        calls,
        &format!("an ephemeral message to {user} containing {needle:?}"),
        |cs| {
            cs[after..]
                .iter()
                .filter(|c| c.path == "chat.postEphemeral" && c.body["user"] == user)
                .filter_map(|c| c.body["text"].as_str())
                .find(|t| t.contains(needle))
                .map(str::to_string)
        },
    )
}

fn link_url(text: &str) -> String {
    let start = text.find("http").expect("a link URL");
    text[start..].split_whitespace().next().unwrap().to_string()
}

/// Long-polls as the agent in a thread; returns the state it wakes with.
fn waiter(g: &Gateway, id: &str) -> std::thread::JoinHandle<Value> {
    let url = format!("{}/v1/requests/{id}?wait=30", g.url);
    let agent = g.agent.clone();
    std::thread::spawn(move || {
        agent
            .get(&url)
            .set(
                "Authorization",
                &format!("Bearer {}", token_of("agent:report-bot")),
            )
            .call()
            .unwrap()
            .into_json::<Value>()
            .unwrap()
    })
}

fn link(g: &Gateway, url: &str, who: &str) -> (u16, Value) {
    let path = url.strip_prefix(&g.url).expect("a link on this gateway");
    g.call("POST", path, Some(who), None)
}

#[test]
fn slack_clicks_approve_only_when_signed_linked_and_eligible() {
    let dir = tempfile::tempdir().unwrap();
    let (api, slack) = fakes::slack();
    let (hook_url, hooks) = webhook_receiver();
    let extra = format!(
        "\n[slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\ninline_limit = 500\n\
         [[webhooks]]\nname = \"ops\"\nurl = \"{hook_url}\"\nsecret_env = \"SK_HOOK\"\n\
         [routing.accounts]\n\"slack:T0TEST/U_CAROL\" = \"user:carol\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\n"
    );
    let g = Gateway::start_full(
        dir.path(),
        &policies("1h", "3s"),
        "",
        &extra,
        &[
            ("SK_SLACK_BOT", SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", SLACK_SIGNING_SECRET),
            ("SK_HOOK", HOOK_SECRET),
        ],
    );

    // A held export is posted to the group's channel with the whole context.
    let a = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    assert_eq!(a["decision"], "review", "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let msg = wait_for(&slack, "the request posted to C1", |cs| {
        cs.iter()
            .find(|c| {
                c.path == "chat.postMessage"
                    && c.body["channel"] == "C1"
                    && c.body.to_string().contains(&id)
            })
            .cloned()
    });
    assert_eq!(
        msg.auth.as_deref(),
        Some(format!("Bearer {SLACK_BOT_TOKEN}").as_str())
    );
    let blocks = msg.body["blocks"].to_string();
    for needle in [
        "COPY customers TO STDOUT",
        // Every parameter besides the statement is on the card too.
        "*Parameters besides the statement*",
        r#"{\"format\":\"csv\"}"#,
        "quarterly report",
        "agent:report-bot, owned by user:alice, on behalf of user:carol, model test-model-1",
        "prod (configured)",
        "rows: 1200",
        "s3://reports/q3.csv",
        "data-owners",
        "\"action_id\":\"approve\"",
        "\"action_id\":\"deny\"",
    ] {
        assert!(blocks.contains(needle), "{needle} missing from {blocks}");
    }
    let msg_ts = {
        let calls = slack.lock().unwrap();
        let n = calls
            .iter()
            .filter(|c| c.path == "chat.postMessage")
            .count();
        format!("1700000000.{n:06}")
    };
    // A fresh signed click by `user`, answered 200; returns how many Slack
    // calls came before it.
    let click_now = |user: &str, verb: &str| {
        let before = slack.lock().unwrap().len();
        let (body, ts, sig) =
            slack_click(SLACK_SIGNING_SECRET, unix_now(), user, verb, &id, &msg_ts);
        assert_eq!(click(&g, &body, &ts, &sig).0, 200);
        before
    };

    // A long statement goes in full as a file in the thread; the message says so.
    let long = format!(
        "SELECT {} FROM customers",
        (0..400)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let b = g.submit("agent:report-bot", &export(&long));
    let bid = b["id"].as_str().unwrap().to_string();
    let done = wait_for(&slack, "the long statement's upload to complete", |cs| {
        cs.iter()
            .find(|c| c.path == "files.completeUploadExternal")
            .cloned()
    });
    let calls = slack.lock().unwrap().clone();
    let posted = calls
        .iter()
        .find(|c| c.path == "chat.postMessage" && c.body.to_string().contains(&bid))
        .unwrap();
    assert!(
        posted.body["blocks"]
            .to_string()
            .contains("full action is attached"),
        "{}",
        posted.body
    );
    let get_url = calls
        .iter()
        .find(|c| c.path == "files.getUploadURLExternal")
        .unwrap();
    let uploaded = calls
        .iter()
        .find(|c| c.path.starts_with("upload/"))
        .unwrap();
    let bytes = uploaded.body["bytes"].as_str().unwrap();
    assert!(bytes.contains(&long), "the file holds the whole statement");
    assert_eq!(get_url.body["length"], json!(bytes.len().to_string()));
    assert_eq!(done.body["channel_id"], "C1");
    assert!(done.body["thread_ts"].as_str().is_some());
    drop(calls);

    let pending = |g: &Gateway| {
        let v = state(g, &id);
        assert_eq!(v["state"], "pending", "{v}");
        assert_eq!(v["reviews"], json!([]), "{v}");
    };

    // Forged (another secret), stale and unsigned clicks are refused.
    let now = unix_now();
    let (body, ts, _) = slack_click(SLACK_SIGNING_SECRET, now, "U_BOB", "approve", &id, &msg_ts);
    let forged = slack_signature("not-the-signing-secret-at-all!!", &ts, body.as_bytes());
    let (s, v) = click(&g, &body, &ts, &forged);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_signature")),
        "{v}"
    );
    let (sbody, sts, ssig) = slack_click(
        SLACK_SIGNING_SECRET,
        now - 400,
        "U_BOB",
        "approve",
        &id,
        &msg_ts,
    );
    let (s, v) = click(&g, &sbody, &sts, &ssig);
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("five minutes"),
        "{v}"
    );
    let (s, _) = post_raw(
        &g,
        "/chat/slack/interactions",
        &[],
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    );
    assert_eq!(s, 401);
    // A body tampered with after signing.
    let (tbody, tts, tsig) = slack_click(SLACK_SIGNING_SECRET, now, "U_BOB", "deny", &id, &msg_ts);
    let (s, _) = click(&g, &tbody.replace("deny", "approve"), &tts, &tsig);
    assert_eq!(s, 401);
    // GET never does anything.
    let (s, _) = g.call("GET", "/chat/slack/interactions", None, None);
    assert_eq!(s, 405);
    pending(&g);

    // An unlinked clicker gets a single-use link, only for them.
    let before = slack.lock().unwrap().len();
    let (body, ts, sig) = slack_click(
        SLACK_SIGNING_SECRET,
        unix_now(),
        "U_BOB",
        "approve",
        &id,
        &msg_ts,
    );
    assert_eq!(click(&g, &body, &ts, &sig).0, 200);
    let text = ephemeral_for(&slack, "U_BOB", before, "/chat/link/");
    let url = link_url(&text);
    // The exact same signed request again is a replay.
    let (s, v) = click(&g, &body, &ts, &sig);
    assert_eq!(
        (
            s,
            v["error"]["message"].as_str().map(|m| m.contains("replay"))
        ),
        (401, Some(true)),
        "{v}"
    );
    pending(&g);
    // Opening (or unfurling) the link changes nothing.
    let page = g.text(url.strip_prefix(&g.url).unwrap());
    assert!(
        page.contains("u_bob") && page.contains("T0TEST/U_BOB"),
        "{page}"
    );
    let before = click_now("U_BOB", "approve");
    ephemeral_for(&slack, "U_BOB", before, "/chat/link/");
    pending(&g);
    // Agents cannot link; bob can, once.
    assert_eq!(link(&g, &url, "agent:report-bot").0, 403);
    let (s, v) = link(&g, &url, "user:bob");
    assert_eq!((s, v["principal"].as_str()), (200, Some("user:bob")), "{v}");
    let (s, v) = link(&g, &url, "user:dave");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("link_code_used")),
        "{v}"
    );
    let (s, _) = link(&g, &format!("{}/chat/link/not-a-code", g.url), "user:bob");
    assert_eq!(s, 404);

    // The requester's owner links too, but her click is refused.
    let before = slack.lock().unwrap().len();
    let (body, ts, sig) = slack_click(
        SLACK_SIGNING_SECRET,
        unix_now(),
        "U_ALICE",
        "approve",
        &id,
        &msg_ts,
    );
    click(&g, &body, &ts, &sig);
    let url = link_url(&ephemeral_for(&slack, "U_ALICE", before, "/chat/link/"));
    assert_eq!(link(&g, &url, "user:alice").0, 200);
    let before = click_now("U_ALICE", "approve");
    ephemeral_for(&slack, "U_ALICE", before, "self_review");
    pending(&g);
    // An account the configuration binds needs no link, and is that
    // human at once: carol, on whose behalf the agent asks, is refused.
    let before = click_now("U_CAROL", "approve");
    let text = ephemeral_for(&slack, "U_CAROL", before, "not counted");
    assert!(
        !text.contains("/chat/link/") && text.contains("self_review"),
        "{text}"
    );
    pending(&g);

    // A link is listed to, and undone by, the person it names only.
    let (s, v) = g.call("GET", "/v1/chat/links", Some("user:alice"), None);
    assert_eq!(s, 200, "{v}");
    let account = v["links"][0]["account"].as_str().unwrap().to_string();
    assert!(
        account.starts_with("slack:") && account.ends_with("/U_ALICE"),
        "{account}"
    );
    let path = format!("/v1/chat/links/{}", account.replace('/', "%2F"));
    assert_eq!(g.call("DELETE", &path, Some("user:bob"), None).0, 404);
    assert_eq!(g.call("DELETE", &path, Some("user:alice"), None).0, 204);
    assert_eq!(g.call("DELETE", &path, Some("user:alice"), None).0, 404);
    let (s, v) = g.call(
        "DELETE",
        "/v1/chat/links/no-colon",
        Some("user:alice"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_account"))
    );
    assert_eq!(
        g.call("GET", "/v1/chat/links", Some("user:alice"), None).1["links"],
        json!([])
    );
    assert!(common::log_entries(&g)
        .iter()
        .any(|e| e["event"] == "identity.unlinked" && e["payload"]["principal"] == "user:alice"));
    // Unlinked, her next click counts for nobody: she only gets a new link.
    let before = click_now("U_ALICE", "approve");
    ephemeral_for(&slack, "U_ALICE", before, "/chat/link/");
    pending(&g);

    // Bob's signed click approves; the waiting agent resumes; the message
    // is updated with the outcome and who decided.
    let w = waiter(&g, &id);
    std::thread::sleep(Duration::from_millis(200));
    let (body, ts, sig) = slack_click(
        SLACK_SIGNING_SECRET,
        unix_now(),
        "U_BOB",
        "approve",
        &id,
        &msg_ts,
    );
    assert_eq!(click(&g, &body, &ts, &sig).0, 200);
    let woke = w.join().unwrap();
    assert_eq!(woke["state"], "approved", "{woke}");
    assert!(woke["grant"].as_str().is_some());
    wait_for(&slack, "chat.update with the outcome", |cs| {
        cs.iter()
            .find(|c| {
                c.path == "chat.update"
                    && c.body["ts"] == msg_ts.as_str()
                    && c.body["blocks"]
                        .to_string()
                        .contains("Approved by user:bob")
                    && !c.body["blocks"]
                        .to_string()
                        .contains("\"action_id\":\"approve\"")
            })
            .map(|_| ())
    });
    // A double click is refused and changes nothing.
    let before = click_now("U_BOB", "approve");
    ephemeral_for(&slack, "U_BOB", before, "already_decided");
    let v = state(&g, &id);
    assert_eq!(
        (v["state"].as_str(), v["reviews"].as_array().map(Vec::len)),
        (Some("approved"), Some(1)),
        "{v}"
    );
    // The agent uses its grant once.
    let (s, v) = g.call(
        "POST",
        "/v1/grants/consume",
        Some("agent:report-bot"),
        Some(&json!({"grant": woke["grant"], "digest": woke["digest"]})),
    );
    assert_eq!(s, 200, "{v}");

    // A click after expiry is refused; the message shows the expiry.
    let wreq = g.submit("agent:report-bot", &write_action());
    let wid = wreq["id"].as_str().unwrap().to_string();
    wait_for(&slack, "the write posted", |cs| {
        cs.iter()
            .any(|c| c.path == "chat.postMessage" && c.body.to_string().contains(&wid))
            .then_some(())
    });
    wait_for(&slack, "the expired write's message", |cs| {
        cs.iter()
            .find(|c| {
                c.path == "chat.update"
                    && c.body["blocks"]
                        .to_string()
                        .contains("Expired: nobody decided")
            })
            .map(|_| ())
    });
    let before = slack.lock().unwrap().len();
    let (body, ts, sig) = slack_click(
        SLACK_SIGNING_SECRET,
        unix_now(),
        "U_BOB",
        "approve",
        &wid,
        "1.1",
    );
    assert_eq!(click(&g, &body, &ts, &sig).0, 200);
    ephemeral_for(&slack, "U_BOB", before, "expired");
    assert_eq!(state(&g, &wid)["state"], "expired");

    // The request events went out as signed webhooks, retried with the
    // same id after the receiver's first failure.
    let wanted = [
        (id.as_str(), "request.created"),
        (id.as_str(), "request.reviewed"),
        (id.as_str(), "request.approved"),
        (id.as_str(), "request.executed"),
        (wid.as_str(), "request.expired"),
    ];
    wait_for(&hooks, "the request webhooks", |cs| {
        wanted
            .iter()
            .all(|(r, t)| {
                cs.iter()
                    .any(|c| c.body["type"] == *t && c.body["data"]["request"] == *r)
            })
            .then_some(())
    });
    let calls = hooks.lock().unwrap().clone();
    let secret = secondkey_sinks::webhook::WebhookSecret::parse(HOOK_SECRET).unwrap();
    for c in &calls {
        let h = |k: &str| c.headers.get(k).cloned().unwrap_or_default();
        secondkey_sinks::webhook::verify(
            &secret,
            &h("webhook-id"),
            &h("webhook-timestamp"),
            &h("webhook-signature"),
            h("x-raw-body").as_bytes(),
            unix_now() as u64,
            300,
        )
        .unwrap_or_else(|e| panic!("bad webhook signature on {:?}: {e}", c.body));
    }
    assert_eq!(
        calls[0].headers["webhook-id"], calls[1].headers["webhook-id"],
        "a retry keeps its id"
    );
    let mut ids: Vec<&String> = calls.iter().map(|c| &c.headers["webhook-id"]).collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        calls.len() - 1,
        "only the failed delivery repeats"
    );
    // Nothing but request events.
    assert!(calls
        .iter()
        .all(|c| c.body["type"].as_str().unwrap().starts_with("request.")));
}

#[test]
fn teams_action_execute_needs_a_valid_bot_framework_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "bf");
    let other = rsa_key(dir.path(), "other");
    let (bf, calls) = bot_framework(&key);
    let extra = format!(
        "\n[teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}/\"\n\
         tenant_id = \"tenant-1\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nteams_conversation = \"19:reviewers@thread.tacv2\"\n"
    );
    let g = Gateway::start_full(
        dir.path(),
        &policies("1h", "3s"),
        "",
        &extra,
        &[("SK_TEAMS_PW", TEAMS_APP_PASSWORD)],
    );
    let service_url = format!("{bf}/");

    let a = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    let id = a["id"].as_str().unwrap().to_string();
    let sent = wait_for(&calls, "the card sent to the conversation", |cs| {
        cs.iter()
            .find(|c| {
                c.method == "POST" && c.path == "conversations/19:reviewers@thread.tacv2/activities"
            })
            .cloned()
    });
    assert_eq!(
        sent.auth.as_deref(),
        Some(format!("Bearer {CONNECTOR_TOKEN}").as_str())
    );
    assert_eq!(sent.body["channelData"]["tenant"]["id"], "tenant-1");
    let att = &sent.body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["version"], "1.4");
    let card = att["content"].to_string();
    assert!(
        card.contains("\"verb\":\"approve\"")
            && card.contains("Action.Execute")
            && card.contains("COPY customers TO STDOUT")
            && card.contains(r#"{\"format\":\"csv\"}"#),
        "{card}"
    );
    let activity_id = "1:activity-1";

    let send = |token: Option<&str>, activity: &Value| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        post_raw(
            &g,
            "/chat/teams/messages",
            &headers,
            "application/json",
            activity.to_string().as_bytes(),
        )
    };
    let pending = || {
        let v = state(&g, &id);
        assert_eq!(
            (v["state"].as_str(), v["reviews"].as_array().map(Vec::len)),
            (Some("pending"), Some(0)),
            "{v}"
        );
    };
    let act = |n: &str| invoke(n, &service_url, "aad-bob", "approve", &id, activity_id);

    // Refused: no token, another key, wrong audience, expired, a token
    // minted for another service URL.
    assert_eq!(send(None, &act("i1")).0, 401);
    let (s, v) = send(
        Some(&bot_token(&other, TEAMS_APP_ID, &service_url, 600)),
        &act("i2"),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_token")),
        "{v}"
    );
    assert_eq!(
        send(
            Some(&bot_token(&key, "another-app", &service_url, 600)),
            &act("i3")
        )
        .0,
        401
    );
    assert_eq!(
        send(
            Some(&bot_token(&key, TEAMS_APP_ID, &service_url, -600)),
            &act("i4")
        )
        .0,
        401
    );
    assert_eq!(
        send(
            Some(&bot_token(&key, TEAMS_APP_ID, "https://evil.example/", 600)),
            &act("i5")
        )
        .0,
        401
    );
    assert_eq!(send(Some("not.a.jwt"), &act("i6")).0, 401);
    // A valid token, but the activity comes from another organization.
    let mut foreign = act("i6c");
    foreign["conversation"]["tenantId"] = json!("tenant-2");
    foreign["channelData"]["tenant"]["id"] = json!("tenant-2");
    let (s, v) = send(
        Some(&bot_token(&key, TEAMS_APP_ID, &service_url, 600)),
        &foreign,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("wrong_tenant")),
        "{v}"
    );
    // The claim's other spelling, naming another service URL, beside the
    // right one: the token must agree with itself.
    let (s, v) = send(
        Some(&bot_token_with(
            &key,
            KID,
            TEAMS_APP_ID,
            &service_url,
            600,
            &[("serviceUrl", "https://evil.example/")],
        )),
        &act("i6b"),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_token")),
        "{v}"
    );
    pending();

    // Valid token, unlinked account: told to link, nothing counted.
    let tok = bot_token(&key, TEAMS_APP_ID, &service_url, 600);
    let (s, v) = send(Some(&tok), &act("i7"));
    assert_eq!(
        (s, v["type"].as_str()),
        (200, Some("application/vnd.microsoft.activity.message")),
        "{v}"
    );
    let url = link_url(v["value"].as_str().unwrap());
    pending();
    assert_eq!(link(&g, &url, "user:bob").0, 200);

    // Linked and valid: approves, the invoke answer refreshes the card, the
    // posted card is updated, the agent resumes.
    let w = waiter(&g, &id);
    std::thread::sleep(Duration::from_millis(200));
    let (s, v) = send(Some(&tok), &act("i8"));
    assert_eq!(
        (s, v["type"].as_str()),
        (200, Some("application/vnd.microsoft.card.adaptive")),
        "{v}"
    );
    assert!(
        v["value"].to_string().contains("Approved by user:bob"),
        "{v}"
    );
    assert!(!v["value"].to_string().contains("Action.Execute"));
    assert_eq!(w.join().unwrap()["state"], "approved");
    wait_for(&calls, "the card updated with the outcome", |cs| {
        cs.iter()
            .find(|c| {
                c.method == "PUT"
                    && c.path.ends_with(activity_id)
                    && c.body.to_string().contains("Approved by user:bob")
            })
            .map(|_| ())
    });
    // The same activity with the same token again: a replay.
    let (s, v) = send(Some(&tok), &act("i8"));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("replayed")),
        "{v}"
    );
    // A new click on the decided request: refused, nothing changes.
    let (s, v) = send(Some(&tok), &act("i9"));
    assert_eq!(s, 200);
    assert!(
        v["value"].as_str().unwrap().contains("already_decided"),
        "{v}"
    );
    assert_eq!(state(&g, &id)["reviews"].as_array().unwrap().len(), 1);
}

/// Refused Teams clicks, each changing nothing: the requester's owner, a
/// click after expiry, a key that does not endorse the channel, a double
/// click; and what a reused token (new activity id) can and cannot do.
#[test]
fn teams_refuses_owners_late_unendorsed_and_double_clicks() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "bf");
    let webchat_key = rsa_key(dir.path(), "webchat");
    const WEBCHAT_KID: &str = "bf-webchat-only";
    let (bf, calls) = bot_framework_keys(vec![
        jwk(&key, KID, &["msteams", "webchat"]),
        jwk(&webchat_key, WEBCHAT_KID, &["webchat"]),
    ]);
    let extra = format!(
        "\n[teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}/\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nteams_conversation = \"19:reviewers@thread.tacv2\"\n"
    );
    let g = Gateway::start_full(
        dir.path(),
        &policies("1h", "3s"),
        "",
        &extra,
        &[("SK_TEAMS_PW", TEAMS_APP_PASSWORD)],
    );
    let service_url = format!("{bf}/");
    let send = |token: &str, activity: &Value| {
        let auth = format!("Bearer {token}");
        post_raw(
            &g,
            "/chat/teams/messages",
            &[("Authorization", auth.as_str())],
            "application/json",
            activity.to_string().as_bytes(),
        )
    };
    let tok = bot_token(&key, TEAMS_APP_ID, &service_url, 600);
    let click = |n: &str, aad: &str, verb: &str, req: &str| {
        invoke(n, &service_url, aad, verb, req, "1:activity-1")
    };
    // (status, what Teams shows: a message's text or a card's JSON)
    let answer = |(s, v): (u16, Value)| -> (u16, String, String) {
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        let shown = match &v["value"] {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        (s, kind, shown)
    };
    const MESSAGE: &str = "application/vnd.microsoft.activity.message";
    const CARD: &str = "application/vnd.microsoft.card.adaptive";
    let reviews = |id: &str| -> (String, Vec<String>) {
        let v = state(&g, id);
        let who = v["reviews"]
            .as_array()
            .unwrap_or_else(|| panic!("no reviews array: {v}"))
            .iter()
            .map(|r| r["reviewer"].as_str().unwrap_or_default().to_string())
            .collect();
        (v["state"].as_str().unwrap_or_default().to_string(), who)
    };
    let untouched = |id: &str| assert_eq!(reviews(id), ("pending".into(), vec![]), "{id}");

    // An export by agent:report-bot (owned by user:alice), and a write that
    // expires in 3 s while the rest runs.
    let e = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    assert_eq!(e["decision"], "review", "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let w = g.submit("agent:report-bot", &write_action());
    let wid = w["id"].as_str().unwrap().to_string();

    // Bob and alice link their Teams accounts (their first clicks count for nothing).
    for (n, aad, user) in [
        ("l1", "aad-bob", "user:bob"),
        ("l2", "aad-alice", "user:alice"),
    ] {
        let (s, kind, text) = answer(send(&tok, &click(n, aad, "approve", &id)));
        assert_eq!((s, kind.as_str()), (200, MESSAGE), "{text}");
        assert!(text.contains("link your Teams account"), "{text}");
        assert_eq!(link(&g, &link_url(&text), user).0, 200);
    }
    untouched(&id);

    // 1. The requester's owner, linked and in the reviewer group, is refused
    // and told why; the request stays pending with no review.
    let owner = click("o1", "aad-alice", "approve", &id);
    let (s, kind, text) = answer(send(&tok, &owner));
    assert_eq!((s, kind.as_str()), (200, MESSAGE), "{text}");
    assert!(
        text.contains("not counted") && text.contains("self_review"),
        "{text}"
    );
    untouched(&id);
    // 5. The exact same activity with the same token is a replay…
    let (s, v) = send(&tok, &owner);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("replayed")),
        "{v}"
    );
    // …but the Bot Framework reuses one token for every activity it sends
    // during the token's lifetime, so the same token with a new activity id
    // is a new activity. It gets exactly the checks of any click: the owner
    // (deny or approve) is still refused.
    let (s, kind, text) = answer(send(&tok, &click("o2", "aad-alice", "deny", &id)));
    assert_eq!((s, kind.as_str()), (200, MESSAGE), "{text}");
    assert!(text.contains("self_review"), "{text}");
    untouched(&id);

    // 3. A token from a key endorsed only for "webchat", on an msteams
    // activity of an eligible, linked reviewer: 403 not_endorsed.
    let webchat_tok = bot_token_kid(&webchat_key, WEBCHAT_KID, TEAMS_APP_ID, &service_url, 600);
    let (s, v) = send(&webchat_tok, &click("n1", "aad-bob", "approve", &id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_endorsed")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("msteams"),
        "{v}"
    );
    untouched(&id);
    // (The key itself verifies: the same token on a webchat activity is
    // accepted — a plain message, which does nothing.)
    let mut chat = click("n2", "aad-bob", "approve", &id);
    chat["type"] = json!("message");
    chat["channelId"] = json!("webchat");
    assert_eq!(send(&webchat_tok, &chat).0, 200);
    untouched(&id);

    // 4. A double click on a request that needs two approvers: the first
    // counts, the second (a new activity, same person) adds nothing.
    let d = g.submit("agent:report-bot", &delete_action());
    assert_eq!(d["decision"], "review", "{d}");
    let did = d["id"].as_str().unwrap().to_string();
    let (s, kind, shown) = answer(send(&tok, &click("d1", "aad-bob", "approve", &did)));
    assert_eq!((s, kind.as_str()), (200, CARD), "{shown}");
    assert!(
        shown.contains("user:bob approved") && shown.contains("Action.Execute"),
        "the card shows bob's review and still has its buttons: {shown}"
    );
    let (s, kind, text) = answer(send(&tok, &click("d2", "aad-bob", "approve", &did)));
    assert_eq!((s, kind.as_str()), (200, MESSAGE), "{text}");
    assert!(text.contains("duplicate_reviewer"), "{text}");
    assert_eq!(reviews(&did), ("pending".into(), vec!["user:bob".into()]));
    // The same two clicks at the same moment: one counts.
    let d = g.submit("agent:report-bot", &delete_action());
    let did2 = d["id"].as_str().unwrap().to_string();
    let both = std::sync::Barrier::new(2);
    let answers: Vec<(u16, String, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = ["d3", "d4"]
            .into_iter()
            .map(|n| {
                let a = click(n, "aad-bob", "approve", &did2);
                let (send, answer, both, tok) = (&send, &answer, &both, &tok);
                sc.spawn(move || {
                    both.wait();
                    answer(send(tok, &a))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut kinds: Vec<(u16, &str)> = answers.iter().map(|(s, k, _)| (*s, k.as_str())).collect();
    kinds.sort();
    assert_eq!(kinds, [(200, MESSAGE), (200, CARD)], "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|(_, k, t)| k == MESSAGE && t.contains("duplicate_reviewer")),
        "{answers:?}"
    );
    assert_eq!(reviews(&did2), ("pending".into(), vec!["user:bob".into()]));

    // 2. Once the write has expired its card says so (no buttons left); a
    // click then is refused, and the request stays expired with no review.
    wait_for(&calls, "the write's card updated to expired", |cs| {
        cs.iter()
            .find(|c| {
                let b = c.body.to_string();
                c.method == "PUT"
                    && b.contains(&wid)
                    && b.contains("Expired: nobody decided")
                    && !b.contains("Action.Execute")
            })
            .map(|_| ())
    });
    let (s, kind, text) = answer(send(&tok, &click("x1", "aad-bob", "approve", &wid)));
    assert_eq!((s, kind.as_str()), (200, MESSAGE), "{text}");
    assert!(
        text.contains("not counted") && text.contains("(expired)"),
        "{text}"
    );
    assert_eq!(reviews(&wid), ("expired".into(), vec![]));

    // After all that, the export is still open to an eligible reviewer.
    untouched(&id);
    let (s, kind, shown) = answer(send(&tok, &click("b1", "aad-bob", "approve", &id)));
    assert_eq!((s, kind.as_str()), (200, CARD), "{shown}");
    assert_eq!(reviews(&id), ("approved".into(), vec!["user:bob".into()]));

    // The audit log agrees: per request, exactly these events.
    let entries = common::log_entries(&g);
    let events_of = |rid: &str| -> Vec<(String, String, String)> {
        entries
            .iter()
            .filter(|e| e["subjects"]["request"] == rid)
            .map(|e| {
                let detail = e["payload"]["code"]
                    .as_str()
                    .or(e["payload"]["decision"].as_str())
                    .unwrap_or_default();
                (
                    e["event"].as_str().unwrap_or_default().to_string(),
                    e["actor"].as_str().unwrap_or_default().to_string(),
                    detail.to_string(),
                )
            })
            .collect()
    };
    let ev = |e: &str, a: &str, d: &str| (e.to_string(), a.to_string(), d.to_string());
    let created = |rid: &str| {
        let c = events_of(rid);
        assert_eq!(
            c.first().map(|e| e.0.as_str()),
            Some("request.created"),
            "{c:?}"
        );
        c[1..].to_vec()
    };
    assert_eq!(
        created(&id),
        [
            ev("review.refused", "user:alice", "self_review"),
            ev("review.refused", "user:alice", "self_review"),
            ev("review.submitted", "user:bob", "approve"),
            ev("request.approved", "user:bob", "approved"),
        ],
    );
    // (The sweeper may also have noted the write due for escalation; that
    // changes nothing.)
    assert_eq!(
        created(&wid)
            .into_iter()
            .filter(|e| !e.0.starts_with("request.escalat"))
            .collect::<Vec<_>>(),
        [ev("request.expired", "service:secondkey", "expired")],
        "expired once, no review"
    );
    for rid in [&did, &did2] {
        assert_eq!(
            created(rid),
            [
                ev("review.submitted", "user:bob", "approve"),
                ev("review.refused", "user:bob", "duplicate_reviewer"),
            ],
        );
    }
}

#[test]
fn escalation_and_expiry_update_every_channel() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "bf");
    let (bf, teams) = bot_framework(&key);
    let (api, slack) = fakes::slack();
    let policies = policies("30s", "4s");
    let lena = "test-token-user-lena";
    let extra = format!(
        "\n[[principals]]\nid = \"user:lena\"\ngroups = [\"dba-leads\"]\ntoken_sha256 = \"{}\"\n\
         [slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
         [teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}\"\n\
         [routing]\nremind_before = \"3s\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\nteams_conversation = \"conv-owners\"\nescalate_to = [\"dba-leads\"]\n\
         [[routing.routes]]\ngroup = \"dba-leads\"\nslack_channel = \"C9\"\nteams_conversation = \"conv-leads\"\n",
        secondkey_server::auth::token_sha256_hex(lena)
    );
    let g = Gateway::start_full(
        dir.path(),
        &policies,
        "escalation_fraction = 0.25",
        &extra,
        &[
            ("SK_SLACK_BOT", SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", SLACK_SIGNING_SECRET),
            ("SK_TEAMS_PW", TEAMS_APP_PASSWORD),
        ],
    );
    let as_lena = |id: &str| {
        g.agent
            .post(&format!("{}/v1/requests/{id}/reviews", g.url))
            .set("Authorization", &format!("Bearer {lena}"))
            .send_json(json!({"decision": "approve"}))
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(s, _) => s,
                e => panic!("{e}"),
            })
    };

    // An export (30 s TTL, escalates after 7.5 s): a lead may not review it yet.
    let e = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    let eid = e["id"].as_str().unwrap().to_string();
    // (404: someone who may not review a request does not even see it)
    assert_eq!(as_lena(&eid), 404, "not eligible before escalation");
    // A write (4 s TTL, escalates after 1 s, then expires).
    let w = g.submit("agent:report-bot", &write_action());
    let wid = w["id"].as_str().unwrap().to_string();
    let posted_to = |calls: &Calls, id: &str, path: &str| {
        let id = id.to_string();
        let path = path.to_string();
        wait_for(calls, &format!("{id} posted to {path}"), move |cs| {
            cs.iter()
                .find(|c| c.method == "POST" && c.path == path && c.body.to_string().contains(&id))
                .cloned()
        })
    };
    let in_slack = |cs: &[fakes::Call], ch: &str, id: &str| {
        cs.iter()
            .find(|c| {
                c.path == "chat.postMessage"
                    && c.body["channel"] == ch
                    && c.body.to_string().contains(id)
            })
            .map(|c| c.body["channel"].clone())
    };
    for id in [&eid, &wid] {
        wait_for(&slack, "posted to C1", |cs| in_slack(cs, "C1", id));
        posted_to(&teams, id, "conversations/conv-owners/activities");
    }

    // The write escalates to the leads: posted to their channels too, the
    // owners' messages say so, and the log records it.
    wait_for(&slack, "the write posted to the leads' channel", |cs| {
        in_slack(cs, "C9", &wid)
    });
    posted_to(&teams, &wid, "conversations/conv-leads/activities");
    // The requirement reads as escalated, with who may fill it now, on
    // both channels.
    let escalated = "data-owners review (escalated to dba-leads): 0 of 1 from data-owners, or dba-leads reviewing after the escalation";
    wait_for(&slack, "the owners' message marked escalated", |cs| {
        cs.iter()
            .find(|c| {
                c.path == "chat.update"
                    && c.body["channel"] == "C1"
                    && c.body["blocks"].to_string().contains("Escalated")
                    && c.body["blocks"].to_string().contains(escalated)
            })
            .map(|_| ())
    });
    wait_for(&teams, "the owners' card marked escalated", |cs| {
        cs.iter()
            .find(|c| c.method == "PUT" && c.body.to_string().contains(escalated))
            .map(|_| ())
    });
    // Three seconds before it expires, a reminder goes to every thread.
    wait_for(&slack, "a Slack reminder in the thread", |cs| {
        cs.iter()
            .find(|c| {
                c.path == "chat.postMessage"
                    && c.body["thread_ts"].is_string()
                    && c.body["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("Reminder") && t.contains(&wid))
            })
            .map(|_| ())
    });
    wait_for(&teams, "a Teams reminder replying to the card", |cs| {
        cs.iter()
            .find(|c| {
                c.method == "POST"
                    && c.body["replyToId"].is_string()
                    && c.body["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("Reminder") && t.contains(&wid))
            })
            .map(|_| ())
    });
    // Then it expires: every Slack message and every Teams card says so.
    wait_for(&slack, "both Slack messages show the expiry", |cs| {
        let ch: std::collections::BTreeSet<String> = cs
            .iter()
            .filter(|c| {
                c.path == "chat.update"
                    && c.body["blocks"]
                        .to_string()
                        .contains("Expired: nobody decided")
            })
            .map(|c| c.body["channel"].as_str().unwrap_or("").to_string())
            .collect();
        (ch.contains("C1") && ch.contains("C9")).then_some(())
    });
    wait_for(&teams, "both Teams cards show the expiry", |cs| {
        let n = cs
            .iter()
            .filter(|c| c.method == "PUT" && c.body.to_string().contains("Expired: nobody decided"))
            .map(|c| c.path.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        (n >= 2).then_some(())
    });
    assert_eq!(state(&g, &wid)["state"], "expired");

    // Once the export escalates, a lead may approve it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = state(&g, &eid);
        if v["required"].to_string().contains("dba-leads") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export did not escalate: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(as_lena(&eid), 200);
    assert_eq!(state(&g, &eid)["state"], "approved");

    // Both escalations are in the audit log, with the groups they added.
    let escalated: Vec<Value> = common::log_entries(&g)
        .into_iter()
        .filter(|e| e["event"] == "request.escalated")
        .collect();
    assert_eq!(escalated.len(), 2, "{escalated:?}");
    for e in &escalated {
        assert_eq!(e["payload"]["groups"], json!(["dba-leads"]), "{e}");
        assert_eq!(e["actor"], "service:secondkey");
    }
}

/// `[routing] linking = "configured"`: only the accounts the configuration
/// binds count, no link code is issued or accepted (a link someone talks
/// another person into confirming is impossible), and a bound account wins
/// over a web link.
#[test]
fn only_configured_chat_accounts_count_when_linking_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (api, slack) = fakes::slack();
    let extra = format!(
        "\n[slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
         [routing]\nlinking = \"configured\"\n\
         [routing.accounts]\n\"slack:T0TEST/U_BOB\" = \"user:bob\"\n\"slack:T0TEST/U_GONE\" = \"user:nobody\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\n"
    );
    let g = Gateway::start_full(
        dir.path(),
        &policies("1h", "1h"),
        "",
        &extra,
        &[
            ("SK_SLACK_BOT", SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", SLACK_SIGNING_SECRET),
        ],
    );
    let a = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    assert_eq!(a["decision"], "review", "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    wait_for(&slack, "the request posted to C1", |cs| {
        cs.iter()
            .find(|c| c.path == "chat.postMessage" && c.body.to_string().contains(&id))
            .cloned()
    });
    let click_now = |user: &str| {
        let before = slack.lock().unwrap().len();
        let (body, ts, sig) = slack_click(
            SLACK_SIGNING_SECRET,
            unix_now(),
            user,
            "approve",
            &id,
            "1700000000.000001",
        );
        assert_eq!(click(&g, &body, &ts, &sig).0, 200);
        before
    };

    // An account the configuration does not bind counts for nobody and is
    // told what an administrator adds; no link code is offered. Nor for an
    // account bound to a principal that is not configured.
    for user in ["U_DAVE", "U_GONE"] {
        let before = click_now(user);
        let text = ephemeral_for(&slack, user, before, "[routing.accounts]");
        assert!(text.contains(&format!("slack:T0TEST/{user}")), "{text}");
        assert!(!text.contains("/chat/link/"), "{text}");
    }
    let v = state(&g, &id);
    assert_eq!(
        (v["state"].as_str(), &v["reviews"]),
        (Some("pending"), &json!([])),
        "{v}"
    );

    // Link codes are off: the page and the confirmation refuse, whatever the code.
    for who in ["user:dave", "user:bob"] {
        let (s, v) = g.call("POST", "/chat/link/AAAAAAAAAAAAAAAAAAAAAA", Some(who), None);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("linking_disabled")),
            "{v}"
        );
    }
    let (s, _) = g.call(
        "GET",
        "/chat/link/AAAAAAAAAAAAAAAAAAAAAA",
        Some("user:dave"),
        None,
    );
    assert_eq!(s, 403);

    // The bound account lists as configured, and its click is bob's review.
    let (s, v) = g.call("GET", "/v1/chat/links", Some("user:bob"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["links"],
        json!([{"account": "slack:T0TEST/U_BOB", "platform": "slack", "external_id": "T0TEST/U_BOB",
                "source": "configured", "counts": true}])
    );
    // Bob cannot undo the configuration's binding through the API (and is
    // told why); to anyone else it is just not theirs.
    let (s, v) = g.call(
        "DELETE",
        "/v1/chat/links/slack:T0TEST%2FU_BOB",
        Some("user:bob"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("configured_binding")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[routing.accounts]"),
        "{v}"
    );
    let (s, v) = g.call(
        "DELETE",
        "/v1/chat/links/slack:T0TEST%2FU_BOB",
        Some("user:dave"),
        None,
    );
    assert_eq!(s, 404, "{v}");
    click_now("U_BOB");
    let v = state(&g, &id);
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "user:bob", "{v}");
}

/// A gateway with `[teams]` (tenant `tenant-1`), `aad-bob` bound to
/// user:bob, the fake Bot Framework publishing `keys`, and a held export;
/// returns it with the Bot Framework's URL and the request id.
fn teams_gateway(dir: &std::path::Path, keys: Vec<Value>) -> (Gateway, String, String) {
    let (bf, _calls) = bot_framework_keys(keys);
    let extra = format!(
        "\n[teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}/\"\n\
         tenant_id = \"tenant-1\"\n\
         [routing.accounts]\n\"teams:tenant-1/aad-bob\" = \"user:bob\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nteams_conversation = \"19:reviewers@thread.tacv2\"\n"
    );
    let g = Gateway::start_full(
        dir,
        &policies("1h", "1h"),
        "",
        &extra,
        &[("SK_TEAMS_PW", TEAMS_APP_PASSWORD)],
    );
    let a = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    let id = a["id"].as_str().unwrap().to_string();
    (g, format!("{bf}/"), id)
}

/// POSTs `activity` to the bot's endpoint with `token`.
fn to_bot(g: &Gateway, token: &str, activity: &Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    post_raw(
        g,
        "/chat/teams/messages",
        &[("Authorization", auth.as_str())],
        "application/json",
        activity.to_string().as_bytes(),
    )
}

fn error_code((s, v): (u16, Value)) -> (u16, Option<String>) {
    (s, v["error"]["code"].as_str().map(str::to_string))
}

fn untouched(g: &Gateway, id: &str) {
    let v = state(g, id);
    assert_eq!(
        (v["state"].as_str(), &v["reviews"]),
        (Some("pending"), &json!([])),
        "{v}"
    );
}

/// docs/chat.md: the token's key must list the activity's `channelId` in
/// its `endorsements`. A key that lists none endorses nothing (`403
/// not_endorsed`, as the Bot Framework's own SDKs refuse it); its click
/// by an eligible, bound reviewer counts nothing. The same click under an
/// endorsed key is bob's approval.
#[test]
fn teams_key_that_lists_no_endorsements_endorses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "bf");
    let bare = rsa_key(dir.path(), "bare");
    const BARE_KID: &str = "bf-no-endorsements";
    let mut bare_jwk = jwk(&bare, BARE_KID, &[]);
    bare_jwk.as_object_mut().unwrap().remove("endorsements");
    let (g, service_url, id) =
        teams_gateway(dir.path(), vec![jwk(&key, KID, &["msteams"]), bare_jwk]);
    let click = |n: &str| invoke(n, &service_url, "aad-bob", "approve", &id, "1:activity-1");

    let bare_tok = bot_token_kid(&bare, BARE_KID, TEAMS_APP_ID, &service_url, 600);
    assert_eq!(
        error_code(to_bot(&g, &bare_tok, &click("e1"))),
        (403, Some("not_endorsed".into()))
    );
    untouched(&g, &id);

    let tok = bot_token(&key, TEAMS_APP_ID, &service_url, 600);
    let (s, v) = to_bot(&g, &tok, &click("e2"));
    assert_eq!(
        (s, v["type"].as_str()),
        (200, Some("application/vnd.microsoft.card.adaptive")),
        "{v}"
    );
    assert_eq!(state(&g, &id)["state"], "approved");
}

/// docs/chat.md: with `[teams] tenant_id`, *any* activity from another
/// tenant is `403 wrong_tenant` — a message, a conversation update naming
/// the tenant only in `channelData`, a card action with a verb nobody
/// sent — not only a well-formed click. Our tenant's message is
/// acknowledged. Nothing changes.
#[test]
fn teams_refuses_every_activity_of_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "bf");
    let (g, service_url, id) = teams_gateway(dir.path(), vec![jwk(&key, KID, &["msteams"])]);
    let tok = bot_token(&key, TEAMS_APP_ID, &service_url, 600);
    let activity = |n: &str, kind: &str, tenant: &str| {
        let mut a = invoke(n, &service_url, "aad-bob", "approve", &id, "1:activity-1");
        a["type"] = json!(kind);
        a["conversation"]["tenantId"] = json!(tenant);
        a["channelData"]["tenant"]["id"] = json!(tenant);
        a
    };
    let wrong = (403, Some("wrong_tenant".to_string()));
    assert_eq!(
        error_code(to_bot(&g, &tok, &activity("f1", "message", "tenant-2"))),
        wrong
    );
    let mut update = activity("f2", "conversationUpdate", "tenant-2");
    update["conversation"]
        .as_object_mut()
        .unwrap()
        .remove("tenantId");
    assert_eq!(error_code(to_bot(&g, &tok, &update)), wrong);
    let mut odd = activity("f3", "invoke", "tenant-2");
    odd["value"]["action"]["verb"] = json!("snooze");
    assert_eq!(error_code(to_bot(&g, &tok, &odd)), wrong);
    untouched(&g, &id);
    assert_eq!(
        to_bot(&g, &tok, &activity("m1", "message", "tenant-1")).0,
        200
    );
    untouched(&g, &id);
}

/// A gateway with `[slack]`, `[teams]` and `[oidc]` (a provider nobody
/// reaches), `linking = "configured"`, and a held export.
fn chat_gateway(dir: &std::path::Path) -> (Gateway, RsaKey, String, String) {
    let key = rsa_key(dir, "bf");
    let (bf, _calls) = bot_framework(&key);
    let (api, _slack) = fakes::slack();
    let secret = dir.join("oidc_secret");
    std::fs::write(&secret, "web-client-secret\n").unwrap();
    let extra = format!(
        "\n[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"secondkey-web\"\nclient_secret_file = \"{}\"\n\
         [slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
         [teams]\napp_id = \"{TEAMS_APP_ID}\"\napp_password_env = \"SK_TEAMS_PW\"\n\
         openid_metadata = \"{bf}/v1/.well-known/openidconfiguration\"\ntoken_url = \"{bf}/token\"\nservice_url = \"{bf}/\"\n\
         [routing]\nlinking = \"configured\"\n\
         [routing.accounts]\n\"slack:T0TEST/U_BOB\" = \"user:bob\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\n",
        secret.display()
    );
    let g = Gateway::start_full(
        dir,
        &policies("1h", "1h"),
        "",
        &extra,
        &[
            ("SK_SLACK_BOT", SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", SLACK_SIGNING_SECRET),
            ("SK_TEAMS_PW", TEAMS_APP_PASSWORD),
        ],
    );
    let a = g.submit("agent:report-bot", &export("COPY customers TO STDOUT"));
    let id = a["id"].as_str().unwrap().to_string();
    (g, key, format!("{bf}/"), id)
}

/// Bad bodies on the chat endpoints get the API's error format and change
/// nothing: over `[requests] max_body_bytes` (the test gateway's is
/// 64 KiB) is `413 too_large` for Slack and Teams alike, as everywhere
/// else; a signed Slack body that is no interaction payload is `400
/// invalid_payload`, a verified Teams body that is no activity `400
/// invalid_activity`.
#[test]
fn chat_endpoints_answer_bad_bodies_in_the_api_format() {
    let dir = tempfile::tempdir().unwrap();
    let (g, key, service_url, id) = chat_gateway(dir.path());
    // Status and JSON body of a raw HTTP answer.
    let answer = |raw: &str| -> (u16, Option<String>) {
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        (status, v["error"]["code"].as_str().map(str::to_string))
    };
    let too_large = (413, Some("too_large".to_string()));

    let (body, ts, _) = slack_click(
        SLACK_SIGNING_SECRET,
        unix_now(),
        "U_BOB",
        "approve",
        &id,
        "1.1",
    );
    let big = format!("{body}&pad={}", "x".repeat(70_000));
    let sig = slack_signature(SLACK_SIGNING_SECRET, &ts, big.as_bytes());
    let raw = common::post_oversized(
        &g.url,
        "/chat/slack/interactions",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Slack-Request-Timestamp", &ts),
            ("X-Slack-Signature", &sig),
        ],
        big.as_bytes(),
    );
    assert_eq!(answer(&raw), too_large, "{raw}");
    let auth = format!(
        "Bearer {}",
        bot_token(&key, TEAMS_APP_ID, &service_url, 600)
    );
    let raw = common::post_oversized(
        &g.url,
        "/chat/teams/messages",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        &[b' '; 70_000],
    );
    assert_eq!(answer(&raw), too_large, "{raw}");
    untouched(&g, &id);

    let ts = unix_now().to_string();
    let junk = "payload=%7Bnot-json";
    let sig = slack_signature(SLACK_SIGNING_SECRET, &ts, junk.as_bytes());
    assert_eq!(
        error_code(click(&g, junk, &ts, &sig)),
        (400, Some("invalid_payload".into()))
    );
    let not_activity = post_raw(
        &g,
        "/chat/teams/messages",
        &[("Authorization", &auth)],
        "application/json",
        b"[1, 2]",
    );
    assert_eq!(
        error_code(not_activity),
        (400, Some("invalid_activity".into()))
    );
    untouched(&g, &id);
}

/// docs/chat.md: with `linking = "configured"`, "every link page and
/// confirmation is refused with `403 linking_disabled`" — at once, signed
/// in or not: nobody is first sent to the identity provider (or told
/// their session ended) for a link that cannot work.
#[test]
fn link_codes_are_refused_before_sign_in_when_linking_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _key, _service_url, id) = chat_gateway(dir.path());
    let no_redirects = ureq::AgentBuilder::new().redirects(0).build();
    let url = format!("{}/chat/link/AAAAAAAAAAAAAAAAAAAAAA", g.url);
    let status = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status(no_redirects.get(&url).call()), 403);
    let form = no_redirects
        .post(&url)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string("csrf=x");
    assert_eq!(status(form), 403);
    assert_eq!(
        error_code(g.call(
            "POST",
            "/chat/link/AAAAAAAAAAAAAAAAAAAAAA",
            Some("user:bob"),
            None
        )),
        (403, Some("linking_disabled".into()))
    );
    untouched(&g, &id);
}
