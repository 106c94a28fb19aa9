//! The reviewer web UI, black-box: the real `secondkey` binary signs humans
//! in through a real OpenID Connect provider process (`oidc-provider-mock`
//! from PyPI, an authlib-based provider), and a real headless Chromium
//! drives it over WebDriver (chromedriver). Hostile input is sent with a
//! plain HTTP client holding a real session.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/fakes.rs"]
mod fakes;
#[path = "common/oidc.rs"]
mod oidc;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use browser::*;
use common::*;
use hmac::{Hmac, Mac};
use oidc::*;
use serde_json::{json, Value};

const WEB_POLICIES: &str = r#"
@id("agents-delete")
permit(principal in Group::"agents", action == Action::"sql.delete", resource);

@id("deletes-need-a-data-owner")
@review("data-owners")
@ttl("1h")
forbid(principal, action == Action::"sql.delete", resource);
"#;

fn start_gateway(dir: &Path, issuer: &str) -> Gateway {
    let policies = format!("{POLICIES}\n{WEB_POLICIES}");
    Gateway::start_extra(dir, &policies, &oidc_config(dir, issuer))
}

fn delete_action(n: u32, session: &str) -> Value {
    json!({
        "kind": "sql", "operation": "delete", "resource": "postgres://analytics/public.events",
        "params": {"statement": format!("DELETE FROM events WHERE day < '2026-0{n}-01' AND kind <> 'audit' -- keep <audit>")},
        "justification": "retention policy",
        "context": {"environment": "prod", "session": session, "model": "gpt-test", "estimated_rows": 1000 * n},
        "lineage": {"writes": ["postgres://analytics/public.events"]}
    })
}

/// The session cookie format (see `web/session.rs`), to forge one with the
/// real key: only the expiry makes it invalid.
fn signed_cookie(key_file: &Path, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = base64::engine::general_purpose::STANDARD
        .decode(std::fs::read_to_string(key_file).unwrap().trim())
        .unwrap();
    let payload = b64.encode(claims.to_string());
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
    for p in [&b"session"[..], payload.as_bytes()] {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    format!("{payload}.{}", b64.encode(m.finalize().into_bytes()))
}

/// The timeline of a request page: `(entry index, event, words)` in order.
fn timeline_of(html: &str) -> Vec<(u64, String, String)> {
    let list = html
        .split("<ol class=\"timeline\" id=\"timeline\">")
        .nth(1)
        .and_then(|r| r.split("</ol>").next())
        .unwrap_or_else(|| panic!("no timeline in {html}"));
    list.split("<li ")
        .skip(1)
        .map(|li| {
            let ev = li
                .split("data-event=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let what = li
                .split("<span class=\"what\">")
                .nth(1)
                .unwrap()
                .split("</span>")
                .next()
                .unwrap();
            let ix = li
                .split("href=\"/audit?index=")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (
                ix.parse().unwrap(),
                ev.to_string(),
                what.replace("&#39;", "'"),
            )
        })
        .collect()
}

/// The entry indexes listed on an audit page, top to bottom.
fn entry_indexes(html: &str) -> Vec<u64> {
    let table = html
        .split("<table id=\"entries\">")
        .nth(1)
        .and_then(|r| r.split("</table>").next())
        .unwrap_or_else(|| panic!("no entry list in {html}"));
    table
        .split("<tr><td><a href=\"/audit?index=")
        .skip(1)
        .map(|r| r.split('"').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn oidc_sign_in_decisions_and_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = start_gateway(dir.path(), &issuer);
    let gw = g.url.clone();

    // Not signed in: the request link sends the browser to sign in and back.
    let held = g.submit("agent:report-bot", &delete_action(1, "sess-a"));
    assert_eq!(held["decision"], "review", "{held}");
    let id = held["request"]["id"].as_str().unwrap().to_string();
    let url = held["request"]["url"].as_str().unwrap();
    assert_eq!(url, format!("{gw}/requests/{id}"));
    let anon = resp(no_redirects().get(url).call());
    assert_eq!(anon.status, 303);
    assert_eq!(
        anon.location.as_deref(),
        Some(format!("/login?return=%2Frequests%2F{id}").as_str())
    );

    // Sign in as bob (data-owners from the provider's groups claim).
    let bob = sign_in(&gw, "bob", &format!("/requests/{id}"));
    assert_eq!(bob.landed, format!("/requests/{id}"));
    let page = get_page(&gw, &bob.session, &format!("/requests/{id}"));
    assert_eq!(page.status, 200);
    for must in [
        "agent:report-bot",
        "user:alice", // owner
        "gpt-test",   // model
        "retention policy",
        "deletes-need-a-data-owner",
        "<span class=\"k\">DELETE</span>",
        "&#39;2026-01-01&#39;",
        "-- keep &lt;audit&gt;",
        "postgres://analytics/public.events",
        "id=\"approve\"",
        // The address the gateway observed, as an established fact.
        "<code id=\"source-observed\">127.0.0.1</code> <small class=\"muted\">the connection's peer, via api</small>",
    ] {
        assert!(page.body.contains(must), "request page lacks {must}");
    }
    let csrf = csrf_of(&page.body);

    // A GET never changes state: the decision endpoints refuse GET.
    for path in [
        format!("/requests/{id}/review?decision=approve&csrf={csrf}"),
        format!("/inbox/batch?decision=approve&id={id}&csrf={csrf}"),
        format!("/logout?csrf={csrf}"),
    ] {
        let r = get_page(&gw, &bob.session, &path);
        assert_eq!(r.status, 405, "GET {path}");
    }
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // CSRF: no token, a wrong token, a token of another session, a
    // cross-site Origin with the right token.
    let review = format!("/requests/{id}/review");
    let erin = sign_in(&gw, "erin", "/");
    let erin_csrf = csrf_of(&get_page(&gw, &erin.session, "/inbox").body);
    for (fields, origin) in [
        (vec![("decision", "approve")], None),
        (vec![("decision", "approve"), ("csrf", "forged")], None),
        (
            vec![("decision", "approve"), ("csrf", erin_csrf.as_str())],
            None,
        ),
        (
            vec![("decision", "approve"), ("csrf", csrf.as_str())],
            Some("http://evil.example"),
        ),
    ] {
        let r = post_form(&gw, &bob.session, &review, &fields, origin);
        assert_eq!(r.status, 403, "{fields:?} {origin:?}: {}", r.body);
        assert!(r.body.contains("Nothing was changed"), "{}", r.body);
    }
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // Forged and expired sessions are no sessions.
    let (payload, sig) = bob.session.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    claims["sub"] = json!("user:dave");
    let forged = format!("{}.{sig}", b64.encode(claims.to_string()));
    claims["sub"] = json!("user:bob");
    claims["exp"] = json!(1);
    let expired = signed_cookie(&dir.path().join("data/keys/session.key"), &claims);
    for bad in [forged.as_str(), expired.as_str(), "garbage", "a.b"] {
        let r = get_page(&gw, bad, "/inbox");
        assert_eq!(r.status, 303, "{bad}: a bad cookie must not be a session");
        assert!(r.location.unwrap().starts_with("/login"));
        let r = post_form(
            &gw,
            bad,
            &review,
            &[("decision", "approve"), ("csrf", &csrf)],
            None,
        );
        assert_eq!(r.status, 401, "{bad}");
    }
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // A session signed in longer ago than `review_max_age` (1h by default)
    // still shows pages, but decides nothing: the identity provider's
    // groups in it are that old. The reviewer signs in again first.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["iat"] = json!(now - 2 * 3600);
    claims["exp"] = json!(now + 3600);
    let stale = signed_cookie(&dir.path().join("data/keys/session.key"), &claims);
    assert_eq!(get_page(&gw, &stale, "/inbox").status, 200);
    let r = post_form(
        &gw,
        &stale,
        &review,
        &[("decision", "approve"), ("csrf", &csrf)],
        None,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/login?return=%2Frequests%2F{id}").as_str())
    );
    // Followed as a browser does, the fresh sign-in lands back on the
    // request page it was sent from.
    let again = sign_in_at(&gw, "bob", r.location.as_deref().unwrap());
    assert_eq!(again.landed, format!("/requests/{id}"));
    let r = post_form(
        &gw,
        &stale,
        "/inbox/batch",
        &[
            ("step", "decide"),
            ("decision", "approve"),
            ("id", &id),
            ("csrf", &csrf),
        ],
        None,
    );
    assert_eq!(
        (r.status, r.location.as_deref()),
        (303, Some("/login?return=%2Finbox"))
    );
    let again = sign_in_at(&gw, "bob", r.location.as_deref().unwrap());
    assert_eq!(again.landed, "/inbox");
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // A replayed OIDC callback (same state, code and login cookie) is
    // refused and makes no session; a callback without the browser's login
    // cookie too.
    let replay = callback_at(&gw, &bob.callback, Some(&bob.login_cookie));
    assert_eq!(replay.status, 403, "{}", replay.body);
    assert!(cookie_value(&replay.cookies, "sk_session").is_none());
    let foreign = callback_at(&gw, &bob.callback, None);
    assert_eq!(foreign.status, 403);

    // Open redirects in the return URL end at home.
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/%09/evil.example",
    ] {
        let s = sign_in(&gw, "bob", evil);
        assert!(
            s.landed == "/"
                || (s.landed.starts_with('/')
                    && !s.landed.starts_with("//")
                    && !s.landed.contains('\\')),
            "{evil} → {}",
            s.landed
        );
        if evil != "/%09/evil.example" {
            assert_eq!(s.landed, "/", "{evil}");
        }
    }

    // The requester's owner (alice owns agent:report-bot) cannot review it
    // through the UI: no form, and a post is refused with nothing changed.
    let alice = sign_in(&gw, "alice", "/");
    let ap = get_page(&gw, &alice.session, &format!("/requests/{id}"));
    assert_eq!(ap.status, 200);
    assert!(!ap.body.contains("id=\"approve\""));
    assert!(ap.body.contains("owns the requesting agent"), "{}", ap.body);
    let a_csrf = csrf_of(&ap.body);
    let r = post_form(
        &gw,
        &alice.session,
        &review,
        &[("decision", "approve"), ("csrf", &a_csrf)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Nothing was changed"));
    // Not eligible (marketing) either.
    let r = post_form(
        &gw,
        &erin.session,
        &review,
        &[("decision", "approve"), ("csrf", &erin_csrf)],
        None,
    );
    assert_eq!(r.status, 404, "erin may not even see it: {}", r.body);
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // Oversized input: a comment over 4096 bytes, a form over 256 KiB.
    let long = "x".repeat(5000);
    let r = post_form(
        &gw,
        &bob.session,
        &review,
        &[("decision", "approve"), ("comment", &long), ("csrf", &csrf)],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Oversized: 413 before the body is read (see `post_oversized`).
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("decision", "approve")
        .append_pair("csrf", &csrf)
        .append_pair("pad", &"x".repeat(300 * 1024))
        .finish();
    let answer = post_oversized(
        &gw,
        &review,
        &[
            ("Cookie", &format!("sk_session={}", bob.session)),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let r = post_form(
        &gw,
        &bob.session,
        &review,
        &[("decision", "maybe"), ("csrf", &csrf)],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // Bob approves; a double submit is refused and changes nothing.
    let r = post_form(
        &gw,
        &bob.session,
        &review,
        &[
            ("decision", "approve"),
            ("comment", "ok <b>"),
            ("csrf", &csrf),
        ],
        None,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/requests/{id}?done=approve").as_str())
    );
    assert_eq!(g.state_of(&id), ("approved".into(), 1));
    let again = post_form(
        &gw,
        &bob.session,
        &review,
        &[("decision", "deny"), ("csrf", &csrf)],
        None,
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(g.state_of(&id), ("approved".into(), 1));
    let shown = get_page(&gw, &bob.session, &format!("/requests/{id}?done=approve"));
    assert!(shown.body.contains("Your approval was recorded"));
    assert!(shown.body.contains("ok &lt;b&gt;"), "comments are escaped");
    // The timeline, from the log: alice's refused self-approval is visible
    // to bob, another reviewer; erin's attempt concerned a request she may
    // not see (404, nothing logged for her).
    let timeline = timeline_of(&shown.body);
    let words: Vec<&str> = timeline.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(timeline[0].1, "request.created", "{words:?}");
    let refused = timeline
        .iter()
        .find(|(_, ev, _)| ev == "review.refused")
        .unwrap_or_else(|| panic!("no refused attempt in {words:?}"));
    assert!(
        refused.2.contains("a self-approval") && refused.2.contains("user:alice"),
        "{words:?}"
    );
    assert!(
        words.iter().any(|w| w.contains("user:bob approved")),
        "{words:?}"
    );
    assert!(
        words.iter().any(|w| w.starts_with("Approved by user:bob")),
        "{words:?}"
    );
    let indexes: Vec<u64> = timeline.iter().map(|(i, _, _)| *i).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "log order: {indexes:?}"
    );
    // Each event links to its receipt, which bob (no log reader) may read
    // because he may see the request, and which verifies offline.
    let vkey = g.text("/v1/log/verifier-key");
    for (i, ev, _) in &timeline {
        let r = get_page(&gw, &bob.session, &format!("/audit/receipt/{i}"));
        assert_eq!(r.status, 200, "receipt {i}: {}", r.body);
        let receipt: Value = serde_json::from_str(&r.body).unwrap();
        let entry: Value = serde_json::from_str(receipt["entry"].as_str().unwrap()).unwrap();
        assert_eq!(
            (&entry["event"], &entry["subjects"]["request"]),
            (&json!(ev), &json!(id))
        );
        let file = dir.path().join(format!("receipt-{i}.json"));
        std::fs::write(&file, &r.body).unwrap();
        let (code, out, err) = g.cli(
            &[
                "log",
                "verify",
                "--receipt",
                file.to_str().unwrap(),
                "--key",
                vkey.trim(),
            ],
            None,
        );
        assert_eq!(code, 0, "receipt {i}: {out}{err}");
        let readable = get_page(&gw, &bob.session, &format!("/audit?index={i}"));
        assert!(
            readable
                .body
                .contains(&format!("Verified: entry {i} is included")),
            "{}",
            readable.body
        );
        assert!(readable.body.contains("id=\"signature\">valid</span>"));
        assert!(readable
            .body
            .contains(receipt["leaf_hash"].as_str().unwrap()));
    }
    // Erin may not see the request, nor read its entries.
    let first = timeline[0].0;
    assert_eq!(
        get_page(&gw, &erin.session, &format!("/audit/receipt/{first}")).status,
        403
    );
    let e = get_page(&gw, &erin.session, &format!("/audit?index={first}"));
    assert!(!e.body.contains("Verified:"), "{}", e.body);

    // The next similar request shows a diff against the approved one.
    let next = g.submit("agent:report-bot", &delete_action(2, "sess-b"));
    let next_id = next["request"]["id"].as_str().unwrap().to_string();
    let np = get_page(&gw, &bob.session, &format!("/requests/{next_id}"));
    assert!(
        np.body
            .contains("Changed since</strong> the last similar approved action"),
        "{}",
        np.body
    );
    assert!(np
        .body
        .contains("<li>estimated rows ×2: 1,000 → 2,000</li>"));
    assert!(np.body.contains(&format!("href=\"/requests/{id}\"")));
    assert!(np.body.contains("<tr class=\"del\"><td class=\"ln\">1</td><td class=\"ln\"></td><td class=\"sign\">-</td><td><span class=\"k\">DELETE</span> <span class=\"k\">FROM</span> events <span class=\"k\">WHERE</span> day &lt; <span class=\"s\">&#39;2026-01-01&#39;</span>"));
    assert!(np.body.contains("<tr class=\"ins\"><td class=\"ln\"></td><td class=\"ln\">1</td><td class=\"sign\">+</td><td><span class=\"k\">DELETE</span> <span class=\"k\">FROM</span> events <span class=\"k\">WHERE</span> day &lt; <span class=\"s\">&#39;2026-02-01&#39;</span>"));
    // The page's one script runs under a fresh nonce its CSP names.
    let nonce = np
        .body
        .split("<script nonce=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page script")
        .to_string();
    assert!(nonce.len() >= 32, "{nonce}");
    let again = get_page(&gw, &bob.session, &format!("/requests/{next_id}"));
    assert!(!again.body.contains(&nonce), "a nonce is never reused");

    // Concurrent double submits (four tabs at once): exactly one review.
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    post_form(
                        &gw,
                        &bob.session,
                        &format!("/requests/{next_id}/review"),
                        &[("decision", "approve"), ("csrf", &csrf)],
                        None,
                    )
                    .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 303 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(g.state_of(&next_id), ("approved".into(), 1));

    // A decision after expiry is refused (writes expire after 2 s).
    let write = g.submit(
        "agent:report-bot",
        &json!({"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.t", "params": {"statement": "UPDATE t SET x = 1"}}),
    );
    let wid = write["request"]["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2300));
    let late = post_form(
        &gw,
        &bob.session,
        &format!("/requests/{wid}/review"),
        &[("decision", "approve"), ("csrf", &csrf)],
        None,
    );
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(g.state_of(&wid), ("expired".into(), 0));

    // Batch: three requests of one agent session, decided together, each
    // recorded as its own review. Frank is a data owner only through the
    // provider group mapping.
    let ids: Vec<String> = (3..6)
        .map(|n| {
            g.submit("agent:report-bot", &delete_action(n, "sess-batch"))["request"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let frank = sign_in(&gw, "frank", "/inbox");
    let inbox = get_page(&gw, &frank.session, "/inbox");
    assert!(inbox.body.contains("session sess-batch"), "{}", inbox.body);
    assert!(inbox.body.contains("Review selected"));
    assert!(!inbox.body.contains(" checked"), "nothing is pre-ticked");
    let f_csrf = csrf_of(&inbox.body);
    let with_ids = |mut fields: Vec<(&'static str, &'static str)>| {
        let mut f: Vec<(&str, &str)> = std::mem::take(&mut fields);
        for i in &ids {
            f.push(("id", i.as_str()));
        }
        f.push(("csrf", f_csrf.as_str()));
        f
    };
    // A decision that skipped the confirmation step, and a production
    // batch without a comment, decide nothing.
    for (fields, needle) in [
        (
            vec![("decision", "approve"), ("comment", "retention")],
            "Review selected",
        ),
        (
            vec![("step", "decide"), ("decision", "approve")],
            "needs a comment",
        ),
        (
            vec![
                ("step", "decide"),
                ("decision", "approve"),
                ("comment", "   "),
            ],
            "needs a comment",
        ),
    ] {
        let r = post_form(
            &gw,
            &frank.session,
            "/inbox/batch",
            &with_ids(fields),
            Some(&gw),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains(needle) && r.body.contains("Inbox"),
            "{}",
            r.body
        );
    }
    for i in &ids {
        assert_eq!(g.state_of(i), ("pending".into(), 0), "{i}");
    }
    // The confirmation step shows each statement and decides nothing.
    let r = post_form(
        &gw,
        &frank.session,
        "/inbox/batch",
        &with_ids(vec![("step", "confirm")]),
        Some(&gw),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for n in 3..6 {
        assert!(r.body.contains(&format!("2026-0{n}-01")), "{}", r.body);
    }
    for i in &ids {
        assert_eq!(g.state_of(i), ("pending".into(), 0), "{i}");
    }
    let r = post_form(
        &gw,
        &frank.session,
        "/inbox/batch",
        &with_ids(vec![
            ("step", "decide"),
            ("decision", "approve"),
            ("comment", "retention"),
        ]),
        Some(&gw),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for i in &ids {
        assert_eq!(g.state_of(i), ("approved".into(), 1), "{i}");
    }
    // A mixed batch (two sessions) is refused whole.
    let other = g.submit("agent:report-bot", &delete_action(7, "sess-other"))["request"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = g.call(
        "POST",
        "/v1/reviews/batch",
        Some("user:bob"),
        Some(&json!({"requests": [other, next_id], "decision": "approve"})),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "mixed_batch");
    assert_eq!(g.state_of(&other), ("pending".into(), 0));
    // The batch API: one refused (owner alice), each its own review.
    let pair: Vec<String> = (8..10)
        .map(|n| {
            g.submit("agent:report-bot", &delete_action(n, "sess-api"))["request"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (s, v) = g.call(
        "POST",
        "/v1/reviews/batch",
        Some("user:carol"),
        Some(&json!({"requests": pair, "decision": "deny", "comment": "no"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["request"]["state"], "denied");
    assert_eq!(v[1]["request"]["state"], "denied");
    // The API obeys the web's rule: a production delete in a batch needs
    // a comment (blank is none), or nothing is decided.
    for body in [
        json!({"requests": [other], "decision": "approve"}),
        json!({"requests": [other], "decision": "approve", "comment": "  "}),
    ] {
        let (s, v) = g.call("POST", "/v1/reviews/batch", Some("user:carol"), Some(&body));
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "comment_required", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(&other),
            "{v}"
        );
    }
    assert_eq!(g.state_of(&other), ("pending".into(), 0));
    let (s, v) = g.call(
        "POST",
        "/v1/reviews/batch",
        Some("user:alice"),
        Some(&json!({"requests": [other], "decision": "approve", "comment": "mine"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["error"]["code"], "self_review");

    // History and audit pages; receipts for log readers only.
    let h = get_page(&gw, &bob.session, "/history");
    assert!(h.body.contains(&id) && h.body.contains("expired"));
    let a = get_page(&gw, &bob.session, "/audit?index=1");
    assert!(a.body.contains("test.secondkey/log"), "{}", a.body);
    assert!(a.body.contains("needs membership"), "bob is no log reader");
    assert!(
        !a.body.contains("id=\"entries\""),
        "the entry list is for log readers"
    );
    // Entry 0 concerns no request: a log reader's only.
    assert_eq!(get_page(&gw, &bob.session, "/audit/receipt/0").status, 403);
    for bad in ["-1", "x", "99999999999999999999999"] {
        assert_eq!(
            get_page(&gw, &bob.session, &format!("/audit/receipt/{bad}")).status,
            400
        );
    }
    // Audrey gets no groups from the provider, but [[principals]] makes her
    // an auditor: she fetches receipts.
    let audrey = sign_in(&gw, "audrey", "/audit");
    let a = get_page(&gw, &audrey.session, "/audit?index=1");
    assert!(a.body.contains("id=\"receipt\""), "{}", a.body);
    let r = get_page(&gw, &audrey.session, "/audit/receipt/1");
    assert_eq!(r.status, 200);
    let receipt: Value = serde_json::from_str(&r.body).unwrap();
    assert!(receipt.get("checkpoint").is_some(), "{receipt}");
    assert!(
        a.body.contains("Verified: entry 1 is included"),
        "{}",
        a.body
    );
    // The entry list, newest first, paged; each row links to its receipt.
    let list = get_page(&gw, &audrey.session, "/audit");
    let rows = entry_indexes(&list.body);
    let size = g.log_entries().len() as u64;
    assert!(!rows.is_empty() && rows.len() <= 50, "{rows:?}");
    assert_eq!(rows[0], size - 1, "newest first");
    assert!(rows.windows(2).all(|w| w[0] == w[1] + 1), "{rows:?}");
    assert!(list
        .body
        .contains(&format!("href=\"/audit/receipt/{}\"", rows[0])));
    let page = get_page(&gw, &audrey.session, "/audit?before=10");
    assert_eq!(
        entry_indexes(&page.body),
        (0..10).rev().collect::<Vec<u64>>()
    );
    assert!(
        page.body.contains(&format!(
            "href=\"/audit?before={}\" rel=\"prev\"",
            size.min(60)
        )),
        "{}",
        page.body
    );
    assert!(!page.body.contains("rel=\"next\""), "nothing older than 0");
    let past = get_page(&gw, &audrey.session, &format!("/audit?before={}", u64::MAX));
    assert_eq!(entry_indexes(&past.body)[0], size - 1, "clamped to the log");
    let none = get_page(&gw, &audrey.session, "/audit?before=0");
    assert!(none.body.contains("No entries here."), "{}", none.body);
    let bad = get_page(&gw, &audrey.session, "/audit?before=nope");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let a = get_page(&gw, &audrey.session, "/audit?index=999999");
    assert!(
        a.body.contains("class=\"error\""),
        "an index past the end is a clear error"
    );

    // Sign-out ends the session (POST with CSRF).
    let r = post_form(&gw, &erin.session, "/logout", &[("csrf", &erin_csrf)], None);
    assert_eq!(r.status, 200);
    assert_eq!(get_page(&gw, &erin.session, "/inbox").status, 303);
    // After a restart: sessions survive (signed with the key on disk), and
    // a signed-out one stays signed out.
    let mut g = g;
    g.stop();
    g.spawn();
    assert_eq!(get_page(&gw, &bob.session, "/inbox").status, 200);
    assert_eq!(get_page(&gw, &erin.session, "/inbox").status, 303);
}

/// The answer to a callback that must be refused: the clear 403 page, no
/// session, and the login cookie cleared.
fn refused_callback(r: &Resp, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.body);
    assert!(
        r.body.contains("was not started in this browser") || r.body.contains("already used"),
        "{what}: {}",
        r.body
    );
    assert!(
        cookie_value(&r.cookies, "sk_session").is_none(),
        "{what}: no session"
    );
}

/// Sign-in keeps no memory per `/login` in the gateway (the state travels
/// sealed in the browser's login cookie): a flood of `/login` cannot make
/// real sign-ins wait or fail, and a login cookie that is not exactly one
/// this gateway sealed, for this sign-in, in the last ten minutes, opens
/// nothing.
#[test]
fn a_login_flood_refuses_nobody_and_hostile_login_cookies_open_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = start_gateway(dir.path(), &issuer);
    let gw = g.url.clone();

    // 20,000 sign-ins started and never finished, from four connections.
    let refused: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let gw = &gw;
                sc.spawn(move || {
                    let a = no_redirects();
                    (0..5_000)
                        .filter(|_| match a.get(&format!("{gw}/login")).call() {
                            Ok(r) => r.status() != 303,
                            Err(_) => true,
                        })
                        .count()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(refused, 0, "every /login of the flood was answered");
    // A real reviewer still signs in at once.
    let bob = sign_in(&gw, "bob", "/inbox");
    assert_eq!(bob.landed, "/inbox");
    assert_eq!(get_page(&gw, &bob.session, "/inbox").status, 200);

    // A sign-in at the provider, then callbacks with hostile cookies.
    let (cookie, authorize) = start_sign_in(&gw, "/history");
    let callback = consent(&authorize, "alice");
    let (name, value) = cookie.split_once('=').unwrap();
    assert!(
        !value.contains(&authorize.split("nonce=").nth(1).unwrap()[..20]),
        "the nonce is not readable in the cookie"
    );
    let mut flipped = value.as_bytes().to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    // Another sign-in's cookie (sealed by this gateway, another state).
    let (other, _) = start_sign_in(&gw, "/");
    let other_value = other.split_once('=').unwrap().1.to_string();
    for (what, bad) in [
        ("one character changed", flipped),
        ("truncated", value[..value.len() - 3].to_string()),
        ("cut short", value[..12].to_string()),
        ("extended", format!("{value}AAAA")),
        ("garbage", "garbage".to_string()),
        ("empty", String::new()),
        ("oversized", "A".repeat(6000)),
        ("a session cookie", bob.session.clone()),
        ("another sign-in's cookie", other_value),
    ] {
        let r = callback_at(&gw, &callback, Some(&format!("{name}={bad}")));
        refused_callback(&r, what);
    }
    refused_callback(&callback_at(&gw, &callback, None), "no cookie");
    // The state the provider returns must be the sealed one: a changed
    // state (whose cookie name is the same) is refused.
    let state = callback
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let last = if state.ends_with('A') { "B" } else { "A" };
    let changed = callback.replace(
        &format!("state={state}"),
        &format!("state={}{last}", &state[..state.len() - 1]),
    );
    refused_callback(&callback_at(&gw, &changed, Some(&cookie)), "state mismatch");
    // None of that used the sign-in up: the real cookie completes it, once.
    let done = callback_at(&gw, &callback, Some(&cookie));
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/history"));
    assert!(cookie_value(&done.cookies, "sk_session").is_some());
    assert!(
        done.cookies
            .iter()
            .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0")),
        "the login cookie is cleared: {:?}",
        done.cookies
    );
    refused_callback(&callback_at(&gw, &callback, Some(&cookie)), "replayed");

    // Two tabs sign in at once: each has its own login cookie, the browser
    // sends both, and both complete.
    let (c1, a1) = start_sign_in(&gw, "/inbox");
    let (c2, a2) = start_sign_in(&gw, "/history");
    let (cb1, cb2) = (consent(&a1, "bob"), consent(&a2, "bob"));
    let jar = format!("{c1}; {c2}");
    let d2 = callback_at(&gw, &cb2, Some(&jar));
    let d1 = callback_at(&gw, &cb1, Some(&jar));
    assert_eq!(
        (
            d1.status,
            d1.location.as_deref(),
            d2.status,
            d2.location.as_deref()
        ),
        (303, Some("/inbox"), 303, Some("/history")),
        "{} {}",
        d1.body,
        d2.body
    );
}

#[test]
fn workload_jwt_from_the_provider_authenticates_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = start_gateway(dir.path(), &issuer);
    // An ID token the provider issues to client `agent-login` for subject
    // report-bot stands in for a workload identity token.
    let jwt = &id_token_for(&issuer, "agent-login", "report-bot");
    let submit = |token: &str| {
        resp(
            g.agent
                .post(&format!("{}/v1/actions", g.url))
                .set("Authorization", &format!("Bearer {token}"))
                .set("Content-Type", "application/json")
                .send_string(&delete_action(1, "jwt").to_string()),
        )
    };
    let ok = submit(jwt);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let v: Value = serde_json::from_str(&ok.body).unwrap();
    let id = v["request"]["id"].as_str().unwrap();
    // The principal is agent:report-bot with its configured owner: alice
    // (its owner) may not review, bob may.
    let (s, r) = g.review("user:alice", id, "approve");
    assert_eq!((s, r["error"]["code"].as_str()), (403, Some("self_review")));
    let (s, r) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(s, 200);
    assert_eq!(r["requester"], "agent:report-bot");
    assert_eq!(r["owner"], "user:alice");
    // A tampered token (payload changed, signature kept) and garbage are 401.
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["preferred_username"] = json!("rogue-bot");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    for bad in [tampered.as_str(), "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."] {
        let r = submit(bad);
        assert_eq!(r.status, 401, "{}", r.body);
    }
}

#[test]
fn chromium_signs_in_and_approves_and_the_agent_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = start_gateway(dir.path(), &issuer);
    let (_chromedriver, browser) = start_chromium(dir.path());

    // The agent asks, and waits (long-poll) for the decision.
    let held = g.submit("agent:report-bot", &delete_action(1, "e2e"));
    let id = held["request"]["id"].as_str().unwrap().to_string();
    let url = held["request"]["url"].as_str().unwrap().to_string();
    let digest = held["digest"].as_str().unwrap().to_string();
    let (gw, wid) = (g.url.clone(), id.clone());
    let waiter = std::thread::spawn(move || long_poll(&gw, &wid, "agent:report-bot", 60));

    // The reviewer opens the link, signs in at the provider, comes back.
    browser.goto(&url);
    browser.wait_for("the provider's sign-in form", |b| {
        b.url().starts_with(&issuer)
    });
    browser.screenshot("web-1-provider-sign-in.png");
    browser.type_into("input[name=sub]", "bob");
    browser.click("form button[type=submit]");
    browser.wait_for("the request page", |b| b.url() == url);
    let src = browser.source();
    assert!(src.contains("retention policy") && src.contains("agent:report-bot"));
    browser.screenshot("web-2-request-page.png");

    browser.type_into("#comment", "approved in Chromium");
    browser.click("#approve");
    browser.wait_for("the confirmation", |b| {
        b.source().contains("Your approval was recorded")
    });
    let clicked = Instant::now();
    browser.screenshot("web-3-approved.png");

    // The waiting agent resumes with its grant and uses it once.
    let (v, resumed) = waiter.join().unwrap();
    assert_eq!(v["state"], "approved", "{v}");
    assert!(resumed <= clicked + Duration::from_secs(5));
    let grant = v["grant"]
        .as_str()
        .expect("the requester sees its grant")
        .to_string();
    let (s, c) = g.call(
        "POST",
        "/v1/grants/consume",
        Some("agent:report-bot"),
        Some(&json!({"grant": grant, "digest": digest})),
    );
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["approvers"], json!(["user:bob"]));
    assert_eq!(g.state_of(&id).0, "executed");

    // The inbox groups one agent session's requests for a batch decision.
    let batch: Vec<String> = (2..4)
        .map(|n| {
            g.submit("agent:report-bot", &delete_action(n, "e2e-batch"))["request"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    browser.goto(&format!("{}/inbox", g.url));
    browser.wait_for("the inbox", |b| b.source().contains("session e2e-batch"));
    browser.screenshot("web-4-inbox-batch.png");
    // Nothing is pre-ticked; the next step shows each statement.
    for i in &batch {
        browser.click(&format!("input[value='{i}']"));
    }
    browser.click("#review-selected");
    browser.wait_for("the batch confirmation", |b| {
        b.source().contains("Review 2 requests together")
    });
    browser.type_into("#comment", "retention batch");
    browser.click("#confirm-approve");
    browser.wait_for("the batch result", |b| {
        b.source().contains("Batch decision")
    });
    browser.screenshot("web-5-batch-result.png");
    for i in &batch {
        assert_eq!(g.state_of(i), ("approved".into(), 1), "{i}");
    }
}

/// A Slack account is linked once, through the web UI, by the human signed
/// in through the OIDC provider: the link page sends an anonymous browser to
/// sign in and back, shows what will be linked, and only a same-origin,
/// CSRF-checked POST links; after that the account's clicks are that
/// human's reviews.
#[test]
fn a_slack_account_is_linked_through_the_signed_in_web_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let (api, slack) = fakes::slack();
    let extra = format!(
        "{}\n[slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
         [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\n",
        oidc_config(dir.path(), &issuer)
    );
    let g = Gateway::start_full(
        dir.path(),
        &format!("{POLICIES}\n{WEB_POLICIES}"),
        "",
        &extra,
        &[
            ("SK_SLACK_BOT", fakes::SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", fakes::SLACK_SIGNING_SECRET),
        ],
    );
    let gw = g.url.clone();
    let held = g.submit("agent:report-bot", &delete_action(1, "sess-link"));
    assert_eq!(held["decision"], "review", "{held}");
    let id = held["request"]["id"].as_str().unwrap().to_string();
    fakes::wait_for(&slack, "the request posted to C1", |cs| {
        cs.iter()
            .find(|c| c.path == "chat.postMessage" && c.body.to_string().contains(&id))
            .map(|_| ())
    });
    let msg_ts = "1700000000.000001";
    let click = |user: &str| {
        let (body, ts, sig) = fakes::slack_click(
            fakes::SLACK_SIGNING_SECRET,
            fakes::unix_now(),
            user,
            "approve",
            &id,
            msg_ts,
        );
        resp(
            no_redirects()
                .post(&format!("{gw}/chat/slack/interactions"))
                .set("X-Slack-Request-Timestamp", &ts)
                .set("X-Slack-Signature", &sig)
                .set("Content-Type", "application/x-www-form-urlencoded")
                .send_bytes(body.as_bytes()),
        )
    };

    // A click of U_BOB that counts for nothing: the link page only it is
    // offered.
    let link_offer = |what: &str| {
        let before = slack.lock().unwrap().len();
        assert_eq!(click("U_BOB").status, 200);
        let text = fakes::wait_for(&slack, what, |cs| {
            cs[before..]
                .iter()
                .filter(|c| c.path == "chat.postEphemeral" && c.body["user"] == "U_BOB")
                .filter_map(|c| c.body["text"].as_str())
                .find(|t| t.contains("/chat/link/"))
                .map(str::to_string)
        });
        assert_eq!(g.state_of(&id), ("pending".into(), 0));
        let at = text.find("/chat/link/").unwrap();
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "/-_".contains(*c))
            .collect::<String>()
    };

    // An unlinked click counts for nothing and gets a link only it sees.
    let path = link_offer("a link for U_BOB");

    // Anonymous: sign in first, then back to the link page.
    let anon = resp(no_redirects().get(&format!("{gw}{path}")).call());
    assert_eq!(anon.status, 303, "{}", anon.body);
    let bob = sign_in(&gw, "bob", &path);
    assert_eq!(bob.landed, path);
    let page = get_page(&gw, &bob.session, &path);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("T0TEST/U_BOB") && page.body.contains("Link to user:bob"),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    // Opening the page twice links nobody; forged posts change nothing.
    get_page(&gw, &bob.session, &path);
    assert_eq!(
        post_form(&gw, &bob.session, &path, &[], Some(&gw)).status,
        403
    );
    assert_eq!(
        post_form(&gw, &bob.session, &path, &[("csrf", "forged")], Some(&gw)).status,
        403
    );
    assert_eq!(
        post_form(
            &gw,
            &bob.session,
            &path,
            &[("csrf", &csrf)],
            Some("https://evil.example")
        )
        .status,
        403
    );
    // A sign-in older than `review_max_age` (1h by default) links
    // nothing: bob signs in again and comes back to the link page.
    let (payload, _) = bob.session.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["iat"] = json!(now - 2 * 3600);
    let stale = signed_cookie(&dir.path().join("data/keys/session.key"), &claims);
    let r = post_form(&gw, &stale, &path, &[("csrf", &csrf)], Some(&gw));
    assert_eq!(r.status, 303, "{}", r.body);
    let back = format!("/login?return={}", path.replace('/', "%2F"));
    assert_eq!(r.location.as_deref(), Some(back.as_str()));
    let before = slack.lock().unwrap().len();
    assert_eq!(click("U_BOB").status, 200);
    fakes::wait_for(&slack, "a second link offer", |cs| {
        cs[before..]
            .iter()
            .find(|c| c.path == "chat.postEphemeral" && c.body["user"] == "U_BOB")
            .map(|_| ())
    });
    assert_eq!(g.state_of(&id), ("pending".into(), 0));

    // The real form links, once.
    let done = post_form(&gw, &bob.session, &path, &[("csrf", &csrf)], Some(&gw));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("now linked to user:bob"),
        "{}",
        done.body
    );
    let again = post_form(&gw, &bob.session, &path, &[("csrf", &csrf)], Some(&gw));
    assert_eq!(again.status, 409, "{}", again.body);

    // Ending bob's web sessions also voids the chat link made through
    // one of them (a stolen session must not leave a chat account behind
    // that approves): his click counts for nobody and is offered a link.
    let (s, v) = g.call(
        "POST",
        "/v1/sessions/revoke",
        Some("user:bob"),
        Some(&json!({"user": "user:bob"})),
    );
    assert_eq!(s, 200, "{v}");
    let path = link_offer("a new link offer after the revocation");
    // Linked again through a fresh sign-in, it counts.
    let bob = sign_in(&gw, "bob", &path);
    let page = get_page(&gw, &bob.session, &path);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let done = post_form(&gw, &bob.session, &path, &[("csrf", &csrf)], Some(&gw));
    assert_eq!(done.status, 200, "{}", done.body);

    // Now bob's click is bob's review.
    assert_eq!(click("U_BOB").status, 200);
    assert_eq!(g.state_of(&id), ("approved".into(), 1));

    // frank signs in through the provider but is no configured principal:
    // he may link, the page says his clicks count for nobody, and his next
    // click says so too (with the request's page) instead of offering
    // another link.
    let ephemeral_for_frank = |before: usize, what: &str| {
        fakes::wait_for(&slack, what, |cs| {
            cs[before..]
                .iter()
                .filter(|c| c.path == "chat.postEphemeral" && c.body["user"] == "U_FRANK")
                .find_map(|c| c.body["text"].as_str().map(str::to_string))
        })
    };
    let before = slack.lock().unwrap().len();
    assert_eq!(click("U_FRANK").status, 200);
    let text = ephemeral_for_frank(before, "a link for U_FRANK");
    let at = text.find("/chat/link/").expect("a link offer");
    let path: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "/-_".contains(*c))
        .collect();
    let frank = sign_in(&gw, "frank", &path);
    let page = get_page(&gw, &frank.session, &path);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let done = post_form(&gw, &frank.session, &path, &[("csrf", &csrf)], Some(&gw));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("now linked to user:frank")
            && done.body.contains("not a configured principal")
            && done.body.contains("count for nobody"),
        "{}",
        done.body
    );
    let before = slack.lock().unwrap().len();
    assert_eq!(click("U_FRANK").status, 200);
    let text = ephemeral_for_frank(before, "frank's click answered");
    assert!(
        text.contains("linked to user:frank")
            && text.contains("not a configured principal")
            && text.contains(&format!("/requests/{id}"))
            && !text.contains("/chat/link/"),
        "{text}"
    );
    let entries = common::log_entries(&g);
    assert!(
        entries
            .iter()
            .any(|e| e["event"] == "identity.linked" && e["payload"]["principal"] == "user:bob"),
        "the link is in the audit log: {entries:?}"
    );
}

/// [`start_gateway`] with `user:sam` (token [`token_of`]) in the default
/// `[web] session_admins` group, security: who ends others' sessions.
fn start_with_session_admin(dir: &Path, issuer: &str) -> Gateway {
    use sha2::Digest;
    let sam = format!(
        "{}\n[[principals]]\nid = \"user:sam\"\ngroups = [\"security\"]\ntoken_sha256 = \"{}\"\n",
        oidc_config(dir, issuer),
        hex::encode(sha2::Sha256::digest(token_of("user:sam").as_bytes()))
    );
    Gateway::start_extra(dir, &format!("{POLICIES}\n{WEB_POLICIES}"), &sam)
}

/// Approves request `id` from its page as the browser holding `session`
/// does: reads the page (it must show), posts the decision with its CSRF
/// token. The gateway's answer.
fn approve_from_page(gw: &str, session: &str, id: &str) -> Resp {
    let page = get_page(gw, session, &format!("/requests/{id}"));
    assert_eq!(page.status, 200, "{}", page.body);
    post_form(
        gw,
        session,
        &format!("/requests/{id}/review"),
        &[("decision", "approve"), ("csrf", &csrf_of(&page.body))],
        None,
    )
}

/// The request page's live updates end with the session that opened them:
/// a signed-out session's stream closes within a keep-alive interval
/// though nothing changed, and a revoked person's sends no further state.
/// Others' streams, and the same person's API stream with a token, go on.
#[test]
fn an_open_event_stream_ends_with_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let g = start_with_session_admin(dir.path(), &issuer);
    let gw = g.url.clone();
    let v = g.submit("agent:report-bot", &delete_action(1, "sess-stream"));
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let page = format!("/requests/{id}");
    let (laptop, phone, frank) = (
        sign_in(&gw, "bob", "/inbox"),
        sign_in(&gw, "bob", "/inbox"),
        sign_in(&gw, "frank", "/inbox"),
    );
    let live = format!("{page}/events");
    let web = |s: &SignIn| events(&gw, &live, Some(&s.session), None);
    let (on_laptop, on_phone, on_frank) = (web(&laptop), web(&phone), web(&frank));
    let bob_token = token_of("user:bob");
    let api = events(&gw, &format!("/v1{live}"), None, Some(&bob_token));
    for rx in [&on_laptop, &on_phone, &on_frank, &api] {
        let first = next_event(rx, 10).unwrap().expect("the first state");
        assert_eq!(first["state"], "pending");
    }

    // Signing out ends the laptop's stream, with no change to send: the
    // keep-alive check (every 15 s) finds the session gone.
    let csrf = csrf_of(&get_page(&gw, &laptop.session, &page).body);
    let out = post_form(&gw, &laptop.session, "/logout", &[("csrf", &csrf)], None);
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(
        next_event(&on_laptop, 30),
        Ok(None),
        "the signed-out stream ends"
    );

    // Revoking all of bob's sessions: his phone's stream ends before it
    // sends the next state.
    let (code, out, err) = g.cli(&["sessions", "revoke", "user:bob"], Some("user:sam"));
    assert_eq!(code, 0, "{out}{err}");
    let r = approve_from_page(&gw, &frank.session, &id);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        next_event(&on_phone, 30),
        Ok(None),
        "a revoked session's stream sends nothing more"
    );
    // Frank's stream, and bob's stream with his API token, go on.
    for rx in [&on_frank, &api] {
        let approved = next_event(rx, 10).unwrap().expect("the approval");
        assert_eq!(approved["reviews"].as_array().map(Vec::len), Some(1));
    }
}

/// A start that cannot read which web sessions were signed out or ended
/// refuses to serve, naming what it could not read: skipping a record
/// would sign its sessions back in.
#[test]
fn a_start_that_cannot_read_the_ended_sessions_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let mut g = start_with_session_admin(dir.path(), &issuer);
    let gw = g.url.clone();
    let (laptop, phone) = (sign_in(&gw, "bob", "/inbox"), sign_in(&gw, "bob", "/inbox"));
    let csrf = csrf_of(&get_page(&gw, &laptop.session, "/inbox").body);
    let out = post_form(&gw, &laptop.session, "/logout", &[("csrf", &csrf)], None);
    assert_eq!(out.status, 200, "{}", out.body);
    let (code, out, err) = g.cli(&["sessions", "revoke", "user:bob"], Some("user:sam"));
    assert_eq!(code, 0, "{out}{err}");
    g.stop();

    // `value` (SQL) as the value of the records of namespace `ns`; what
    // they held before.
    let db = dir.path().join("data/secondkey.db");
    let set = |ns: &str, value: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                 old=c.execute('select value from records where ns=?', (sys.argv[2],)).fetchall(); \
                 c.execute('update records set value=' + sys.argv[3] + ' where ns=?', (sys.argv[2],)); c.commit(); \
                 print(repr(old[0][0]) if len(old) == 1 else 'not one record')",
                db.to_str().unwrap(),
                ns,
                value,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let refused = || {
        let mut c = std::process::Command::new(BIN);
        c.args(["serve", "--config"])
            .arg(&g.config)
            .envs(g.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (code, _, err) = Watched::spawn(c).finish(30);
        assert_ne!(code, 0, "{err:?}");
        err.join("\n")
    };
    // A value that is no number: the record is named.
    let ended = set("web.sessions_ended", "'soon'");
    let err = refused();
    assert!(
        err.contains("refusing to start") && err.contains("web.sessions_ended/user:bob"),
        "{err}"
    );
    set("web.sessions_ended", &ended);
    let signed_out = set("web.signed_out", "'never'");
    let err = refused();
    assert!(
        err.contains("refusing to start") && err.contains("web.signed_out/"),
        "{err}"
    );
    // A value the store cannot read as text at all.
    set("web.signed_out", "x'ff'");
    let err = refused();
    assert!(
        err.contains("refusing to start") && err.contains("records web.signed_out"),
        "{err}"
    );
    // Mended, it starts, and both sessions stay dead.
    set("web.signed_out", &signed_out);
    g.spawn();
    for s in [&laptop, &phone] {
        assert_eq!(get_page(&gw, &s.session, "/inbox").status, 303);
    }
}

/// Someone left, or a laptop was stolen: `secondkey sessions revoke` ends
/// every web session of that one person — pages ask them to sign in, a
/// decision posted with one is refused with nothing changed — and nobody
/// else's. A new sign-in of theirs works; the revocation is in the audit
/// log and holds across a restart. Malformed ids and callers without the
/// right change nothing.
#[test]
fn revoking_a_person_s_sessions_signs_out_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let mut g = start_with_session_admin(dir.path(), &issuer);
    let gw = g.url.clone();
    let held = |n: u32| {
        let v = g.submit("agent:report-bot", &delete_action(n, "sess-revoke"));
        assert_eq!(v["decision"], "review", "{v}");
        v["request"]["id"].as_str().unwrap().to_string()
    };
    let (first, second) = (held(1), held(2));
    let page = format!("/requests/{first}");
    let review = format!("/requests/{first}/review");

    // Bob on his laptop and his phone; frank elsewhere.
    let laptop = sign_in(&gw, "bob", "/inbox");
    let phone = sign_in(&gw, "bob", "/inbox");
    let frank = sign_in(&gw, "frank", "/inbox");
    for s in [&laptop, &phone, &frank] {
        assert_eq!(get_page(&gw, &s.session, &page).status, 200);
    }
    let laptop_csrf = csrf_of(&get_page(&gw, &laptop.session, &page).body);
    let revoked_entries = |g: &Gateway| {
        g.log_entries()
            .into_iter()
            .filter(|e| e["event"] == "web.sessions.revoked")
            .collect::<Vec<_>>()
    };

    let (_, doc) = g.call("GET", "/openapi.json", None, None);
    assert!(doc["paths"].get("/v1/sessions/revoke").is_some());

    // Malformed ids: refused before anything is sent, and by the API.
    for bad in [
        "bob",
        "user:",
        "user:bo b",
        "agent:report-bot",
        "service:ci",
        "group:dba",
    ] {
        let (code, out, err) = g.cli(&["sessions", "revoke", bad], Some("user:sam"));
        assert_ne!(code, 0, "{bad}: {out}");
        assert!(err.contains("nothing was changed"), "{bad}: {err}");
        assert!(
            err.contains("user:") && !err.contains("panicked"),
            "{bad}: the error says what an id looks like: {err}"
        );
        let (s, v) = g.call(
            "POST",
            "/v1/sessions/revoke",
            Some("user:sam"),
            Some(&json!({"user": bad})),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_user")),
            "{bad}: {v}"
        );
    }
    for body in [
        json!({}),
        json!({"user": 7}),
        json!({"user": "user:bob", "also": "user:frank"}),
    ] {
        let (s, v) = g.call("POST", "/v1/sessions/revoke", Some("user:sam"), Some(&body));
        assert_eq!(s, 400, "{body}: {v}");
    }
    // Not in [web] session_admins: not someone else's sessions.
    let (code, _, err) = g.cli(&["sessions", "revoke", "user:bob"], Some("user:erin"));
    assert_ne!(code, 0);
    assert!(
        err.contains("not_session_admin") || err.contains("session_admins"),
        "{err}"
    );
    let (s, v) = g.call(
        "POST",
        "/v1/sessions/revoke",
        None,
        Some(&json!({"user": "user:bob"})),
    );
    assert_eq!(s, 401, "{v}");
    assert!(
        revoked_entries(&g).is_empty(),
        "refusals record no revocation"
    );
    assert_eq!(
        get_page(&gw, &laptop.session, &page).status,
        200,
        "nothing was changed"
    );

    // The revocation (any spelling of the id is the one person).
    let (code, out, err) = g.cli(&["sessions", "revoke", "User:Bob"], Some("user:sam"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("user:bob") && out.contains("signed out"),
        "{out}"
    );

    // Both of bob's sessions are signed out: pages ask him to sign in and
    // back, a decision decides nothing.
    for s in [&laptop, &phone] {
        for path in [page.as_str(), "/inbox", "/history"] {
            let r = get_page(&gw, &s.session, path);
            assert_eq!(r.status, 303, "{path}: {}", r.body);
            assert!(
                r.location.as_deref().unwrap_or("").starts_with("/login?"),
                "{path}"
            );
        }
    }
    let r = post_form(
        &gw,
        &laptop.session,
        &review,
        &[("decision", "approve"), ("csrf", &laptop_csrf)],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post_form(
        &gw,
        &laptop.session,
        "/inbox/batch",
        &[
            ("step", "decide"),
            ("decision", "approve"),
            ("id", &first),
            ("comment", "ok"),
            ("csrf", &laptop_csrf),
        ],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(g.state_of(&first), ("pending".into(), 0));

    // Frank is untouched: he reads and decides.
    let r = approve_from_page(&gw, &frank.session, &second);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(g.state_of(&second), ("approved".into(), 1));

    // The log says who ended whose sessions, and when.
    let entries = revoked_entries(&g);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["actor"], "user:sam", "{e}");
    assert_eq!(e["subjects"]["principal"], "user:bob", "{e}");
    assert_eq!(e["payload"]["user"], "user:bob", "{e}");
    assert_eq!(e["payload"]["configured"], true, "{e}");
    assert!(
        e["payload"]["signed_in_before"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{e}"
    );

    // Bob signs in again, at once, and decides.
    let again = sign_in(&gw, "bob", &page);
    let r = approve_from_page(&gw, &again.session, &first);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(g.state_of(&first), ("approved".into(), 1));

    // It holds across a restart: the old sessions stay dead, the new one lives.
    g.stop();
    g.spawn();
    assert_eq!(get_page(&gw, &phone.session, "/inbox").status, 303);
    assert_eq!(get_page(&gw, &again.session, "/inbox").status, 200);
    assert_eq!(get_page(&gw, &frank.session, "/inbox").status, 200);
}

/// A sign-out the store cannot record changes nothing and says so: `503`,
/// the person is still signed in (the cookie stays and works), so they can
/// try again; a "signed out" page would leave a copied cookie that comes
/// back after a restart. Once the store records it, the sign-out holds,
/// across a restart too. The store's refusal is real: a SQLite trigger
/// that aborts every write of a sign-out record.
#[test]
fn a_sign_out_the_store_cannot_record_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp(dir.path());
    let mut g = start_with_session_admin(dir.path(), &issuer);
    let gw = g.url.clone();
    let bob = sign_in(&gw, "bob", "/inbox");
    let db = dir.path().join("data/secondkey.db");
    let sql = |statement: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); c.executescript(sys.argv[2]); c.close()",
                db.to_str().unwrap(),
                statement,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    sql(
        "CREATE TRIGGER no_sign_out BEFORE INSERT ON records WHEN NEW.ns = 'web.signed_out' \
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
    );
    let sign_out = || {
        let csrf = csrf_of(&get_page(&gw, &bob.session, "/inbox").body);
        post_form(&gw, &bob.session, "/logout", &[("csrf", &csrf)], None)
    };
    let out = sign_out();
    assert_eq!(out.status, 503, "{}", out.body);
    assert!(
        out.body.contains("still signed in") && out.body.contains("the disk is full"),
        "{}",
        out.body
    );
    assert!(
        out.cookies.is_empty(),
        "the cookie is kept: {:?}",
        out.cookies
    );
    assert_eq!(
        get_page(&gw, &bob.session, "/inbox").status,
        200,
        "still signed in"
    );

    sql("DROP TRIGGER no_sign_out;");
    let out = sign_out();
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(get_page(&gw, &bob.session, "/inbox").status, 303);
    g.stop();
    g.spawn();
    assert_eq!(
        get_page(&gw, &bob.session, "/inbox").status,
        303,
        "dead after a restart"
    );
}
