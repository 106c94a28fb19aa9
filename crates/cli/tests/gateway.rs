//! Black-box tests: the real `secondkey` binary, over HTTP and its CLI.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// Verifies a grant JWS against the gateway's JWKS, independently of the
/// gateway's own code.
fn verify_with_jwks(g: &Gateway, token: &str) -> Value {
    let (s, jwks) = g.call("GET", "/.well-known/jwks.json", None, None);
    assert_eq!(s, 200);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "compact JWS");
    let header: Value = serde_json::from_slice(&b64url(parts[0])).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the grant's kid is in the JWKS");
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    let x: [u8; 32] = b64url(key["x"].as_str().unwrap()).try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&b64url(parts[2])).unwrap();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    vk.verify_strict(signing_input.as_bytes(), &sig)
        .expect("grant signature verifies with the JWKS key");
    serde_json::from_slice(&b64url(parts[1])).unwrap()
}

fn consume(g: &Gateway, who: &str, grant: &Value, digest: &str) -> (u16, Value) {
    g.call(
        "POST",
        "/v1/grants/consume",
        Some(who),
        Some(&json!({"grant": grant, "digest": digest})),
    )
}

#[test]
fn allow_deny_and_a_two_person_review_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());

    // Allow: the grant comes at once, verifies with the JWKS, works once.
    let r = g.submit("agent:report-bot", &read_action());
    assert_eq!(r["decision"], "allow", "{r}");
    let digest = r["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    let claims = verify_with_jwks(&g, r["grant"].as_str().unwrap());
    assert_eq!(claims["dig"], digest);
    assert_eq!(claims["sub"], "agent:report-bot");
    let (s, v) = consume(&g, "agent:report-bot", &r["grant"], &digest);
    assert_eq!(s, 200, "{v}");
    let (s, v) = consume(&g, "agent:report-bot", &r["grant"], &digest);
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("grant_used")));

    // Deny: a plain forbid wins, and says which policy.
    // The agent claims "dev"; the gateway knows the resource is in prod.
    let ddl = json!({"kind": "sql", "operation": "ddl", "resource": "postgres://analytics/public.customers",
                     "params": {"statement": "DROP TABLE customers"}, "context": {"environment": "dev"}});
    let r = g.submit("agent:report-bot", &ddl);
    assert_eq!(r["decision"], "deny", "{r}");
    assert!(r.get("grant").is_none());
    assert!(r.to_string().contains("no-ddl-in-prod"), "{r}");

    // Review with quorum 2.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.customers"),
    );
    assert_eq!(r["decision"], "review", "{r}");
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let digest = r["digest"].as_str().unwrap().to_string();
    assert!(r["request"]["url"].as_str().unwrap().ends_with(&id));
    assert_eq!(r["request"]["state"], "pending");

    // Separation of duties.
    let code = |x: (u16, Value)| (x.0, x.1["error"]["code"].as_str().unwrap_or("").to_string());
    assert_eq!(
        code(g.review("user:alice", &id, "approve")),
        (403, "self_review".into()),
        "the agent's owner"
    );
    assert_eq!(
        code(g.review("user:carol", &id, "approve")),
        (403, "self_review".into()),
        "on_behalf_of"
    );
    assert_eq!(
        code(g.review("agent:report-bot", &id, "approve")).0,
        403,
        "the requester"
    );
    assert_eq!(
        code(g.review("agent:rogue-bot", &id, "approve")),
        (403, "not_eligible".into()),
        "agents never review, even in a reviewer group"
    );
    assert_eq!(
        code(g.review("service:ci", &id, "approve")),
        (403, "not_eligible".into()),
        "services never review"
    );
    // Someone with no part in the request does not even learn it exists.
    assert_eq!(code(g.review("user:erin", &id, "approve")).0, 404);
    assert_eq!(code(g.review("agent:other-bot", &id, "approve")).0, 404);

    let (s, v) = g.review("user:bob", &id, "approve");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "pending", "one of two");
    assert_eq!(
        code(g.review("user:bob", &id, "approve")),
        (409, "duplicate_reviewer".into())
    );

    // The agent long-polls; the second approval wakes it.
    let url = g.url.clone();
    let id2 = id.clone();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let (v, at) = long_poll(&url, &id2, "agent:report-bot", 30);
        (v, at - t)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (s, v) = g.review("user:dave", &id, "approve");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "approved");
    assert!(
        v.get("grant").is_none(),
        "only the requester sees the grant"
    );
    let (waited, elapsed) = waiter.join().unwrap();
    assert_eq!(waited["state"], "approved", "{waited}");
    assert!(
        elapsed < Duration::from_secs(29),
        "woken by the decision, not the timeout"
    );
    let grant = waited["grant"].clone();
    let claims = verify_with_jwks(&g, grant.as_str().unwrap());
    assert_eq!(claims["rid"], id.as_str());
    let mut apr: Vec<String> = serde_json::from_value(claims["apr"].clone()).unwrap();
    apr.sort();
    assert_eq!(apr, vec!["user:bob", "user:dave"]);

    // A decided request cannot be decided again.
    assert_eq!(
        code(g.review("user:dave", &id, "deny")).1,
        "already_decided"
    );

    // Digest mismatch executes nothing; then the real one, once.
    let other = "0".repeat(64);
    assert_eq!(
        code(consume(&g, "agent:report-bot", &grant, &other)),
        (409, "digest_mismatch".into())
    );
    assert_eq!(
        code(consume(&g, "agent:other-bot", &grant, &digest)).0,
        403,
        "someone else's grant"
    );
    let (s, v) = consume(&g, "agent:report-bot", &grant, &digest);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        code(consume(&g, "agent:report-bot", &grant, &digest)),
        (409, "grant_used".into())
    );
    let (_, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("agent:report-bot"),
        None,
    );
    assert_eq!(v["state"], "executed");
    // Refused uses of its grant are logged under the request too, so its
    // timeline shows them (in order, between the approval and the end).
    let about: Vec<(String, Option<String>)> = g
        .log_entries()
        .into_iter()
        .filter(|e| e["subjects"]["request"] == id.as_str())
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["payload"]["code"].as_str().map(str::to_string),
            )
        })
        .filter(|(ev, _)| ev.starts_with("grant."))
        .collect();
    let refused = |c: &str| ("grant.refused".to_string(), Some(c.to_string()));
    assert_eq!(
        about,
        vec![
            refused("digest_mismatch"),
            refused("not_requester"),
            ("grant.consumed".to_string(), None),
            refused("grant_used"),
        ],
        "{about:?}"
    );

    // Listing: pending requests visible to a reviewer.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.invoices"),
    );
    let pid = r["request"]["id"].as_str().unwrap().to_string();
    let (s, v) = g.call("GET", "/v1/requests?state=pending", Some("user:bob"), None);
    assert_eq!(s, 200);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == pid.as_str()));
    let (s, v) = g.call("GET", "/v1/requests?state=pending", Some("user:erin"), None);
    assert_eq!(s, 200);
    assert!(v.as_array().unwrap().is_empty(), "erin may not see it: {v}");
    let (s, _) = g.call(
        "GET",
        &format!("/v1/requests/{pid}"),
        Some("user:erin"),
        None,
    );
    assert_eq!(s, 404);

    // The log holds every transition and verifies.
    let (_dir, _vkey, entries) = export_log(&g);
    let events: HashSet<&str> = entries.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in [
        "gateway.started",
        "action.allowed",
        "action.denied",
        "request.created",
        "review.submitted",
        "request.approved",
        "grant.consumed",
    ] {
        assert!(events.contains(want), "missing {want} in {events:?}");
    }
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["index"], i as u64);
    }
}

#[test]
fn expiry_withdraw_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let code = |x: (u16, Value)| (x.0, x.1["error"]["code"].as_str().unwrap_or("").to_string());

    // Expiry (policy @ttl("2s")): the waiting agent is told, reviews refused.
    let write = json!({"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.orders",
                       "params": {"statement": "UPDATE orders SET x = 1"}});
    let r = g.submit("agent:report-bot", &write);
    assert_eq!(r["decision"], "review", "{r}");
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = g.call(
            "GET",
            &format!("/v1/requests/{id}?wait=5"),
            Some("agent:report-bot"),
            None,
        );
        if v["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "the request never expired: {v}");
    }
    assert_eq!(code(g.review("user:bob", &id, "approve")).1, "expired");

    // Withdraw: only the requester, only while pending.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.a"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let (s, _) = g.call(
        "POST",
        &format!("/v1/requests/{id}/withdraw"),
        Some("user:bob"),
        None,
    );
    assert!(s == 403 || s == 404, "{s}");
    // Withdraw takes no body (or `{}`): any other body is refused and the
    // request stays pending.
    let path = format!("/v1/requests/{id}/withdraw");
    for (ct, body, want) in [
        ("application/json", &b"not json"[..], (400, "invalid_json")),
        ("application/json", b"[1,2]", (400, "invalid_json")),
        (
            "application/json",
            b"{\"reason\":\"x\"}",
            (400, "unknown_field"),
        ),
        ("text/plain", b"{}", (415, "unsupported_media_type")),
    ] {
        let (s, v) = g.raw("POST", &path, Some("agent:report-bot"), ct, body);
        assert_eq!((s, v["error"]["code"].as_str().unwrap_or("")), want, "{v}");
        let (_, v) = g.call(
            "GET",
            &format!("/v1/requests/{id}"),
            Some("agent:report-bot"),
            None,
        );
        assert_eq!(v["state"], "pending", "{v}");
    }
    // Media types compare without case.
    let (s, v) = g.raw(
        "POST",
        &path,
        Some("agent:report-bot"),
        "Application/JSON; charset=utf-8",
        b"{}",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "withdrawn");
    assert_eq!(
        code(g.review("user:bob", &id, "approve")).1,
        "already_decided"
    );

    // Revoke before the grant is used: the grant then executes nothing.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.b"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let digest = r["digest"].as_str().unwrap().to_string();
    assert_eq!(g.review("user:bob", &id, "approve").0, 200);
    assert_eq!(g.review("user:dave", &id, "approve").0, 200);
    let (_, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("agent:report-bot"),
        None,
    );
    let grant = v["grant"].clone();
    assert!(grant.is_string(), "{v}");
    let (s, _) = g.call(
        "POST",
        &format!("/v1/requests/{id}/revoke"),
        Some("user:erin"),
        None,
    );
    assert!(s == 403 || s == 404);
    let (s, v) = g.raw(
        "POST",
        &format!("/v1/requests/{id}/revoke"),
        Some("user:bob"),
        "text/plain",
        b"garbage",
    );
    assert_eq!(s, 415, "a malformed revoke changes nothing: {v}");
    let (s, v) = g.call(
        "POST",
        &format!("/v1/requests/{id}/revoke"),
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "revoked");
    let (s, _) = consume(&g, "agent:report-bot", &grant, &digest);
    assert_eq!(s, 409, "a revoked approval executes nothing");

    // A denial by one eligible reviewer denies.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.c"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let (s, v) = g.review("user:dave", &id, "deny");
    assert_eq!(s, 200);
    assert_eq!(v["state"], "denied");

    let (_d, _k, entries) = export_log(&g);
    let events: HashSet<&str> = entries.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in [
        "request.expired",
        "request.withdrawn",
        "request.revoked",
        "request.denied",
    ] {
        assert!(events.contains(want), "missing {want} in {events:?}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let size_before = g.text("/healthz");
    let err = |x: (u16, Value)| (x.0, x.1["error"]["code"].as_str().unwrap_or("").to_string());

    assert_eq!(
        err(g.raw(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            "application/json",
            b"{not json"
        ))
        .0,
        400
    );
    assert_eq!(
        err(g.raw(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            "application/json",
            b"{\"kind\":\"sql\",\"operation\":\"read\",\"resource\":\"x\",\"surprise\":1}"
        )),
        (400, "unknown_field".into())
    );
    assert_eq!(
        err(g.raw(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            "text/plain",
            b"{}"
        ))
        .0,
        415
    );
    // Oversized: 413 before the body is read (see `post_oversized`).
    let answer = post_oversized(
        &g.url,
        "/v1/actions",
        &[
            (
                "Authorization",
                &format!("Bearer {}", token_of("agent:report-bot")),
            ),
            ("Content-Type", "application/json"),
        ],
        &vec![b' '; 100_000],
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");
    let mut reserved = read_action();
    reserved["context"]["gateway"] = json!({"environment": "dev"});
    let (s, v) = g.call(
        "POST",
        "/v1/actions",
        Some("agent:report-bot"),
        Some(&reserved),
    );
    assert_eq!(s, 400, "an agent may not forge gateway facts: {v}");
    let (s, _) = g.call("POST", "/v1/actions", None, Some(&read_action()));
    assert_eq!(s, 401);
    // A number past 2^53 - 1, written as a double: refused like the
    // integer it canonicalizes to (it used to be logged, and the log could
    // then no longer be exported or verified).
    for n in ["1e16", "6.505955555555555e20", "-1e300"] {
        let body = format!(
            r#"{{"kind":"sql","operation":"read","resource":"postgres://analytics/public.orders","params":{{"n":{n}}}}}"#
        );
        let (s, v) = g.raw(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("unsafe_integer")),
            "{n}: {v}"
        );
    }
    let (s, v) = g.raw("POST", "/v1/actions", None, "application/json", b"{}");
    assert_eq!(s, 401, "{v}");
    let mut r = g
        .agent
        .post(&format!("{}/v1/actions", g.url))
        .set("Authorization", "Bearer wrong-token");
    r = r.set("Content-Type", "application/json");
    match r.send_string("{}") {
        // It says how to authenticate (RFC 6750 §3).
        Err(ureq::Error::Status(401, resp)) => assert_eq!(
            resp.header("WWW-Authenticate"),
            Some("Bearer realm=\"secondkey\"")
        ),
        other => panic!("a wrong token must be 401, got {other:?}"),
    }
    let (s, v) = g.call(
        "POST",
        "/v1/requests/req_nope/reviews",
        Some("user:bob"),
        Some(&json!({"decision": "maybe"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_decision"))
    );
    let (s, _) = g.call("GET", "/v1/requests?state=bogus", Some("user:bob"), None);
    assert_eq!(s, 400);
    let (s, _) = g.call(
        "POST",
        "/v1/grants/consume",
        Some("agent:report-bot"),
        Some(&json!({"grant": "a.b.c", "digest": "00"})),
    );
    assert_eq!(s, 400);
    let (s, _) = g.call("GET", "/v1/log/proof/999999", Some("user:audrey"), None);
    assert_eq!(s, 404);
    let (s, _) = g.call("GET", "/v1/log/tile/0/x999/001", None, None);
    assert_eq!(s, 404);
    // Nothing above was logged: only the start entry exists.
    assert_eq!(g.text("/healthz"), size_before);

    // The OpenAPI document is served and lists the contract's paths.
    let (s, v) = g.call("GET", "/openapi.json", None, None);
    assert_eq!(s, 200);
    for p in [
        "/v1/actions",
        "/v1/requests/{id}",
        "/v1/requests/{id}/reviews",
        "/v1/grants/consume",
        "/v1/log/checkpoint",
    ] {
        assert!(v["paths"].get(p).is_some(), "openapi lacks {p}");
    }
}

#[test]
fn racing_reviews_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let g = std::sync::Arc::new(Gateway::start(dir.path()));
    // Ten reviews race for a quorum of two: exactly two count.
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.race"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let digest = r["digest"].as_str().unwrap().to_string();
    let handles: Vec<_> = [
        "user:bob",
        "user:dave",
        "user:bob",
        "user:dave",
        "user:bob",
        "user:dave",
    ]
    .into_iter()
    .map(|who| {
        let g = g.clone();
        let id = id.clone();
        std::thread::spawn(move || g.review(who, &id, "approve").0)
    })
    .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    let (_, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("agent:report-bot"),
        None,
    );
    assert_eq!(v["state"], "approved");
    assert_eq!(v["reviews"].as_array().unwrap().len(), 2);
    // A grant presented twice at once: exactly one wins.
    let grant = v["grant"].clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let g = g.clone();
            let grant = grant.clone();
            let digest = digest.clone();
            std::thread::spawn(move || consume(&g, "agent:report-bot", &grant, &digest).0)
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 409), "{codes:?}");
}

#[test]
fn pending_requests_and_used_grants_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(dir.path());
    let r = g.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.k9"),
    );
    let id = r["request"]["id"].as_str().unwrap().to_string();
    let digest = r["digest"].as_str().unwrap().to_string();
    assert_eq!(g.review("user:bob", &id, "approve").0, 200);
    let allowed = g.submit("agent:report-bot", &read_action());
    g.kill();
    g.spawn();
    let (_, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("agent:report-bot"),
        None,
    );
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(
        v["reviews"].as_array().unwrap().len(),
        1,
        "the first approval survived"
    );
    assert_eq!(g.review("user:dave", &id, "approve").0, 200);
    let (_, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("agent:report-bot"),
        None,
    );
    let grant = v["grant"].clone();
    assert_eq!(consume(&g, "agent:report-bot", &grant, &digest).0, 200);
    // The allow grant issued before the crash still works, once.
    assert_eq!(
        consume(
            &g,
            "agent:report-bot",
            &allowed["grant"],
            allowed["digest"].as_str().unwrap()
        )
        .0,
        200
    );
    g.kill();
    g.spawn();
    assert_eq!(
        consume(&g, "agent:report-bot", &grant, &digest).0,
        409,
        "single use survives kill -9"
    );
    assert_eq!(
        consume(
            &g,
            "agent:report-bot",
            &allowed["grant"],
            allowed["digest"].as_str().unwrap()
        )
        .0,
        409
    );
    g.stop();
    g.spawn();
    export_log(&g);
}

#[test]
fn no_acknowledged_entry_is_lost_when_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(dir.path());
    let url = g.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let mut acked = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && acked.len() < 5000 {
                    let r = agent
                        .post(&format!("{url}/v1/actions"))
                        .set(
                            "Authorization",
                            &format!("Bearer {}", token_of("agent:report-bot")),
                        )
                        .send_json(read_action());
                    match r {
                        Ok(resp) => {
                            let v: Value = resp.into_json().unwrap();
                            acked.push(v["id"].as_str().unwrap().to_string());
                        }
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    g.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 10, "the stream ran ({} acked)", acked.len());
    g.spawn();
    g.stop();
    g.spawn();
    let (_d, _k, entries) = export_log(&g);
    let logged: HashSet<&str> = entries
        .iter()
        .filter(|e| e["event"] == "action.allowed")
        .filter_map(|e| e["subjects"]["action"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|a| !logged.contains(a.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged decisions lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn the_cli_walks_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let action = dir.path().join("export.json");
    std::fs::write(
        &action,
        export_action("postgres://analytics/public.cli").to_string(),
    )
    .unwrap();
    let (code, out, err) = g.cli(
        &["action", "submit", action.to_str().unwrap()],
        Some("agent:report-bot"),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let (code, out, _) = g.cli(&["request", "list", "--state", "pending"], Some("user:bob"));
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = g.cli(&["request", "approve", &id], Some("user:alice"));
    assert_ne!(code, 0);
    assert!(err.contains("self_review"), "{err}");
    let (code, out, err) = g.cli(
        &["request", "approve", &id, "--comment", "ok"],
        Some("user:bob"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 of 2"), "{out}");
    let (code, out, _) = g.cli(&["request", "approve", &id], Some("user:dave"));
    assert_eq!(code, 0);
    assert!(out.contains("approved"), "{out}");
    let (code, out, _) = g.cli(&["request", "show", &id], Some("agent:report-bot"));
    assert_eq!(code, 0);
    assert!(out.contains("\"grant\""), "{out}");
    let (code, _, err) = g.cli(&["request", "show", &id], None);
    assert_ne!(code, 0);
    assert!(err.contains("SECONDKEY_TOKEN"), "{err}");
    // Receipts verify offline.
    let (code, _, err) = g.cli(&["log", "proof", "1"], Some("user:bob"));
    assert_ne!(code, 0, "entries are for log readers only");
    assert!(err.contains("not_log_reader"), "{err}");
    let (code, out, err) = g.cli(&["log", "proof", "1"], Some("user:audrey"));
    assert_eq!(code, 0, "{err}");
    let receipt = dir.path().join("receipt.json");
    std::fs::write(&receipt, out).unwrap();
    let vkey = g.text("/v1/log/verifier-key");
    let (code, out, err) = g.cli(
        &[
            "log",
            "verify",
            "--receipt",
            receipt.to_str().unwrap(),
            "--key",
            vkey.trim(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    // --help on every verb carries an example.
    for verb in [
        vec!["serve"],
        vec!["demo"],
        vec!["policy", "validate"],
        vec!["policy", "test"],
        vec!["policy", "explain"],
        vec!["request", "list"],
        vec!["request", "approve"],
        vec!["action", "submit"],
        vec!["log", "verify"],
        vec!["log", "proof"],
        vec!["log", "export"],
        vec!["keys", "generate"],
    ] {
        let mut args = verb.clone();
        args.push("--help");
        let (code, out, _) = g.cli(&args, None);
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{verb:?} --help has no example");
    }
}

/// Starts `secondkey serve` on `config` (with `env`) and expects it to
/// refuse the config and exit; returns what it printed.
fn serve_refused(
    dir: &std::path::Path,
    config: &str,
    env: &[(&str, &str)],
) -> Result<String, String> {
    let path = dir.join("refused.toml");
    let pdir = dir.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("test.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let text = format!(
        "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n{config}\n",
        free_port(),
        dir.join("data").display(),
        pdir.display()
    );
    std::fs::write(&path, &text).unwrap();
    serve_refusal(&path, env).map_err(|_| format!("serve accepted {config:?} (env {env:?})"))
}

/// A value outside its documented range is refused at start with an error
/// naming the key (and the variable, when one set it), never clamped or
/// taken silently.
#[test]
fn config_values_out_of_range_are_refused_naming_the_key() {
    let mut misses = Vec::new();
    for (config, key) in [
        ("[grants]\nallow_ttl = \"400d\"", "grants.allow_ttl"),
        ("[grants]\nallow_ttl = \"0s\"", "grants.allow_ttl"),
        ("[requests]\nmax_wait_seconds = 0", "requests.max_wait_seconds"),
        (
            "[requests]\nmax_wait_seconds = 100000000",
            "requests.max_wait_seconds",
        ),
        ("[log]\nreaders = []", "log.readers"),
        ("[metrics]\nreaders = []", "metrics.readers"),
        (
            "[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:1\"\nprincipals = [\"group:agents\"]\nretry_after_seconds = 0",
            "http[0].retry_after_seconds",
        ),
        (
            "[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:1\"\nprincipals = [\"group:agents\"]\nretry_after_seconds = 3601",
            "http[0].retry_after_seconds",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        match serve_refused(dir.path(), config, &[]) {
            Ok(err) if err.contains(&format!("`{key}`")) => {}
            Ok(err) => misses.push(format!("{config:?}: {err}")),
            Err(e) => misses.push(e),
        }
    }
    // A key set by a SECONDKEY_* variable: the error names the variable.
    let dir = tempfile::tempdir().unwrap();
    match serve_refused(dir.path(), "", &[("SECONDKEY_LISTEN", "nonsense")]) {
        Ok(err) if err.contains("`listen`") && err.contains("SECONDKEY_LISTEN") => {}
        Ok(err) => misses.push(format!("SECONDKEY_LISTEN=nonsense: {err}")),
        Err(e) => misses.push(e),
    }
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

/// `policy validate` checks files offline: a failure says how to fix it,
/// and nothing about "previous policies" (only a running gateway's reload
/// keeps those).
#[test]
fn a_failed_policy_validate_speaks_of_no_previous_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource",
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["policy", "validate", dir.path().to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    let text = format!("{out}{err}");
    assert!(text.contains("policy validate"), "{text}");
    assert!(!text.contains("previous"), "{text}");
}

/// A command that fails says what it could not do and why, each once: a
/// missing config file, an export or an evidence pack to a directory that
/// cannot be made.
#[test]
fn a_failed_command_names_what_failed_and_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = run_cli(
        &["serve", "--config", missing.to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot read config file"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A regular file where a directory must be made.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = file.join("pack");
    let (code, _, err) = run_cli(
        &[
            "evidence",
            "--config",
            missing.to_str().unwrap(),
            "--from",
            "2026-10-01",
            "--to",
            "2027-01-01",
            "--framework",
            "soc2",
            "--no-pdf",
            "--out",
            out.to_str().unwrap(),
        ],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(out.to_str().unwrap()),
        "names the directory: {err}"
    );
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

/// `secondkey request list | head` and `secondkey log export … | head`:
/// when the reader closes the pipe, a command that only prints ends
/// silently (by SIGPIPE, as `cat` would), with no panic and no error line.
#[test]
fn a_printing_command_whose_reader_left_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let (s, v) = g.call(
        "POST",
        "/v1/actions",
        Some("agent:report-bot"),
        Some(&export_action("postgres://analytics/public.pipe")),
    );
    assert_eq!(s, 200, "{v}");
    let config = g.config.to_str().unwrap().to_string();
    for args in [
        vec!["request", "list"],
        vec!["log", "export", "--config", &config],
    ] {
        // A pipe whose reader is gone: every write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(BIN)
            .args(&args)
            .env("SECONDKEY_URL", &g.url)
            .env("SECONDKEY_TOKEN", token_of("agent:report-bot"))
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_eq!(out.status.signal(), Some(13), "{args:?}: {:?}", out.status);
    }
}

#[test]
fn keys_generate_writes_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    let (code, out, err) = keygen(["keys", "generate"], "example.org/log", &key);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("example.org/log+"), "{out}");
    assert!(!out.contains("PRIVATE"), "the secret is never printed");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, _) = keygen(["keys", "generate"], "example.org/log", &key);
    assert_ne!(code, 0, "an existing key is never overwritten");
    // A key only goes into a directory that exists: a mistyped --out is an
    // error that makes nothing.
    let missing = dir.path().join("no-such-dir");
    for cmd in [["keys", "generate"], ["witness", "keygen"]] {
        let (code, _, err) = keygen(cmd, "example.org/log", &missing.join("k.key"));
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("does not exist; create it first"), "{err}");
        assert!(!missing.exists(), "{cmd:?} made the directory");
    }
}

/// Paths that name nothing are said to name nothing: a key "file" that
/// does not exist, a bundle directory that does not exist, a recordings
/// directory given on the command line that does not exist.
#[test]
fn offline_commands_say_when_a_path_names_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vkey = new_key(
        ["keys", "generate"],
        "example.org/log",
        &dir.path().join("log.key"),
    );
    let nope = dir.path().join("nope");
    let nope = nope.to_str().unwrap();
    let verify = ["log", "verify", "--bundle", nope, "--key"];
    let cases: [(Vec<&str>, &str); 4] = [
        (
            [&verify[..], &[&vkey]].concat(),
            "is not a directory: no bundle there",
        ),
        (
            [&verify[..], &["./log.vkey"]].concat(),
            "./log.vkey: no such file",
        ),
        (
            [&verify[..], &[&vkey, "--witness", "w1.vkey"]].concat(),
            "w1.vkey: no such file",
        ),
        (vec!["recording", "list", "--dir", nope], "cannot list"),
    ];
    for (args, says) in cases {
        let (code, out, err) = run_cli(&args, "http://127.0.0.1:1", None);
        assert_eq!(code, 1, "{args:?}: {out} {err}");
        assert!(
            err.contains(says) || out.contains(says),
            "{args:?}: {out} {err}"
        );
    }
}

#[test]
fn a_broken_policy_is_rejected_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    assert_eq!(
        g.submit("agent:report-bot", &read_action())["decision"],
        "allow"
    );
    std::fs::write(
        dir.path().join("policies/test.cedar"),
        "permit(principal, action, resource) when { nonsense",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (_d, _k, entries) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (d, k, entries) = export_log(&g);
        if entries.iter().any(|e| e["event"] == "policy.rejected") {
            break (d, k, entries);
        }
        assert!(Instant::now() < deadline, "the rejection was never logged");
    };
    assert!(!entries.iter().any(|e| e["event"] == "policy.reloaded"));
    assert_eq!(
        g.submit("agent:report-bot", &read_action())["decision"],
        "allow",
        "old policy in force"
    );
    // A good change takes effect: now reads are denied (nothing permits them).
    std::fs::write(
        dir.path().join("policies/test.cedar"),
        "@id(\"only-ddl\")\npermit(principal, action == Action::\"sql.ddl\", resource);\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if g.submit("agent:report-bot", &read_action())["decision"] == "deny" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new policy never took effect"
        );
    }
}

#[test]
fn executors_consume_for_requesters_and_lists_page() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    // A configured executor (an adapter) uses the agent's grant for it once.
    let r = g.submit("agent:report-bot", &read_action());
    let digest = r["digest"].as_str().unwrap();
    assert_eq!(consume(&g, "agent:other-bot", &r["grant"], digest).0, 403);
    let (s, v) = consume(&g, "service:ci", &r["grant"], digest);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["requester"], "agent:report-bot");
    assert_eq!(consume(&g, "agent:report-bot", &r["grant"], digest).0, 409);

    // Listing pages through x-next-before, newest first, nothing twice.
    // (Requests made in the same millisecond are ordered by id, so space
    // them out to know the expected order.)
    let mut ids = Vec::new();
    for i in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(3));
        let r = g.submit(
            "agent:report-bot",
            &export_action(&format!("postgres://analytics/public.p{i}")),
        );
        ids.push(r["request"]["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/requests?state=pending&limit=2", g.url);
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let resp = g
            .agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", token_of("user:bob")))
            .call()
            .unwrap();
        let next = resp.header("x-next-before").map(str::to_string);
        let page: Vec<Value> = resp.into_json().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "all five, newest first, once each");
    let (s, v) = g.call("GET", "/v1/requests?limit=0", Some("user:bob"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_limit"))
    );
    let (s, v) = g.call(
        "GET",
        "/v1/requests?wait=abc&nope=1",
        Some("user:bob"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (s, v) = g.call("GET", "/v1/requests?wait=abc", Some("user:bob"), None);
    assert_eq!(s, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.starts_with("the query string is invalid: wait"), "{v}");
}

/// The REST form of the adapter interface: `?execute=true`, results and
/// lineage, as an adapter outside the gateway process uses them.
#[test]
fn execute_mode_over_rest_runs_once_and_records_results_and_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let bot = "agent:report-bot";
    // An allow comes back used up: an execution, no grant.
    let (s, r) = g.call(
        "POST",
        "/v1/actions?execute=true",
        Some(bot),
        Some(&read_action()),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["decision"], "allow");
    assert!(r.get("grant").is_none(), "{r}");
    let exec = r["execution"]["id"].as_str().unwrap().to_string();
    assert_eq!(exec, r["id"].as_str().unwrap());
    let result = json!({"ok": true, "summary": {"rows": 2},
                        "reads": ["postgres://analytics/public.orders"]});
    let path = format!("/v1/executions/{exec}/result");
    // Only its own caller reports it, and only once.
    let (s, v) = g.call("POST", &path, Some("agent:other-bot"), Some(&result));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (s, v) = g.call("POST", &path, Some(bot), Some(&json!({"ok": "yes"})));
    assert_eq!(s, 400, "{v}");
    let (s, _) = g.call("POST", &path, Some(bot), Some(&result));
    assert_eq!(s, 204);
    let (s, v) = g.call("POST", &path, Some(bot), Some(&result));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("outcome_recorded")),
        "{v}"
    );
    // A held export: retried while pending it is the same request; after
    // two approvals the identical retry runs once, a changed one does not.
    let export = json!({"kind": "sql", "operation": "export", "resource": "postgres://analytics/public.customers",
                        "params": {"statement": "COPY customers TO STDOUT"}});
    let (_, held) = g.call("POST", "/v1/actions?execute=true", Some(bot), Some(&export));
    assert_eq!(held["decision"], "review", "{held}");
    let rid = held["request"]["id"].as_str().unwrap().to_string();
    let (_, again) = g.call("POST", "/v1/actions?execute=true", Some(bot), Some(&export));
    assert_eq!(again["request"]["id"], json!(rid));
    for who in ["user:bob", "user:carol"] {
        let (s, v) = g.call(
            "POST",
            &format!("/v1/requests/{rid}/reviews"),
            Some(who),
            Some(&json!({"decision": "approve"})),
        );
        assert_eq!(s, 200, "{v}");
    }
    let mut changed = export.clone();
    changed["params"]["statement"] = json!("COPY customers TO STDOUT WITH CSV");
    let (_, other) = g.call(
        "POST",
        "/v1/actions?execute=true",
        Some(bot),
        Some(&changed),
    );
    assert_eq!(other["decision"], "review");
    assert_ne!(other["request"]["id"], json!(rid));
    // Another agent's identical action does not use this approval.
    let (_, theirs) = g.call(
        "POST",
        "/v1/actions?execute=true",
        Some("agent:other-bot"),
        Some(&export),
    );
    assert_eq!(theirs["decision"], "review");
    assert_ne!(theirs["request"]["id"], json!(rid));
    let (s, ran) = g.call("POST", "/v1/actions?execute=true", Some(bot), Some(&export));
    assert_eq!(s, 200);
    assert_eq!(ran["decision"], "allow", "{ran}");
    assert_eq!(ran["execution"]["request_id"], json!(rid));
    assert_eq!(ran["execution"]["approvers"].as_array().unwrap().len(), 2);
    let (_, once_more) = g.call("POST", "/v1/actions?execute=true", Some(bot), Some(&export));
    assert_eq!(
        once_more["decision"], "review",
        "the approval is used up: {once_more}"
    );
    let (s, _) = g.call(
        "POST",
        &format!("/v1/executions/{rid}/result"),
        Some(bot),
        Some(&json!({"ok": true, "summary": {"rows": 3}, "reads": ["postgres://analytics/public.customers"]})),
    );
    assert_eq!(s, 204);
    let (_, req) = g.call("GET", &format!("/v1/requests/{rid}"), Some(bot), None);
    assert_eq!(req["state"], "executed");
    // Lineage: the agent, its owner and auditors read it; others may not.
    let (s, lin) = g.call(
        "GET",
        "/v1/lineage?principal=agent:report-bot",
        Some("user:alice"),
        None,
    );
    assert_eq!(s, 200, "{lin}");
    let datasets: HashSet<&str> = lin
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(
        datasets,
        HashSet::from([
            "postgres://analytics/public.orders",
            "postgres://analytics/public.customers"
        ])
    );
    let customers = lin
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dataset"] == "postgres://analytics/public.customers")
        .unwrap();
    assert_eq!(customers["last_approvers"].as_array().unwrap().len(), 2);
    let (s, _) = g.call(
        "GET",
        "/v1/lineage?principal=agent:report-bot",
        Some("user:audrey"),
        None,
    );
    assert_eq!(s, 200);
    let (s, v) = g.call(
        "GET",
        "/v1/lineage?principal=agent:report-bot",
        Some("user:bob"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_lineage_reader"))
    );
    let (s, _) = g.call(
        "POST",
        "/v1/actions?execute=maybe",
        Some(bot),
        Some(&read_action()),
    );
    assert_eq!(s, 400);
    // The log verifies and holds every step.
    let (_tmp, _bundle, entries) = export_log(&g);
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "action.allowed",
        "action.result",
        "request.created",
        "request.approved",
        "grant.consumed",
        "action.result.detail",
    ] {
        assert!(events.contains(&want), "{want} missing from {events:?}");
    }
}

/// `POST /v1/executions/results`: several results in one request, each
/// checked and recorded as on its own; a malformed batch changes nothing.
#[test]
fn results_reported_in_a_batch_are_checked_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let bot = "agent:report-bot";
    let mut execs = Vec::new();
    for _ in 0..3 {
        let (s, r) = g.call(
            "POST",
            "/v1/actions?execute=true",
            Some(bot),
            Some(&read_action()),
        );
        assert_eq!(s, 200, "{r}");
        execs.push(r["execution"]["id"].as_str().unwrap().to_string());
    }
    let (_, theirs) = g.call(
        "POST",
        "/v1/actions?execute=true",
        Some("agent:other-bot"),
        Some(&read_action()),
    );
    let theirs = theirs["execution"]["id"].as_str().unwrap().to_string();
    let item = |id: &str| {
        json!({"execution": id, "ok": true, "summary": {"rows": 1},
               "reads": ["postgres://analytics/public.orders"]})
    };
    let size = |g: &Gateway| g.call("GET", "/v1/log/checkpoint", None, None).1;
    let before = size(&g);
    // Malformed batches are refused whole, and nothing is recorded.
    let too_many: Vec<Value> = (0..257).map(|i| item(&format!("act_{i}"))).collect();
    let mut bad_lineage = item(&execs[1]);
    bad_lineage["reads"] = json!([""]);
    for (body, code) in [
        (json!({"results": []}), "invalid_batch"),
        (json!({"results": too_many}), "invalid_batch"),
        (
            json!({"results": [item(&execs[0]), item(&execs[0])]}),
            "invalid_batch",
        ),
        (
            json!({"results": [item(&execs[0]), bad_lineage]}),
            "invalid_lineage",
        ),
        (
            json!({"results": [item(&execs[0])], "extra": 1}),
            "unknown_field",
        ),
        (json!({"results": "no"}), "invalid_json"),
    ] {
        let (s, v) = g.call("POST", "/v1/executions/results", Some(bot), Some(&body));
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some(code)), "{v}");
    }
    let (s, _) = g.call(
        "POST",
        "/v1/executions/results",
        None,
        Some(&json!({"results": [item(&execs[0])]})),
    );
    assert_eq!(s, 401);
    assert_eq!(size(&g), before, "a refused batch logs nothing");
    // One refusal does not stop the others: someone else's execution and
    // an unknown one are refused, the caller's own are recorded.
    let (s, v) = g.call(
        "POST",
        "/v1/executions/results",
        Some(bot),
        Some(&json!({"results": [item(&execs[0]), item(&theirs), item("act_nope"), item(&execs[1])]})),
    );
    assert_eq!(s, 200, "{v}");
    let got: Vec<(String, bool, Option<String>)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["execution"].as_str().unwrap().to_string(),
                o["recorded"].as_bool().unwrap(),
                o["error"]["code"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (execs[0].clone(), true, None),
            (theirs.clone(), false, Some("not_found".into())),
            ("act_nope".into(), false, Some("not_found".into())),
            (execs[1].clone(), true, None),
        ]
    );
    // Once each: a second report of a recorded one is refused, also when
    // it shares a batch with a fresh one; the single endpoint agrees.
    let (s, v) = g.call(
        "POST",
        "/v1/executions/results",
        Some(bot),
        Some(&json!({"results": [item(&execs[1]), item(&execs[2])]})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["error"]["code"], "outcome_recorded", "{v}");
    assert_eq!(v[1]["recorded"], true, "{v}");
    let (s, v) = g.call(
        "POST",
        &format!("/v1/executions/{}/result", execs[2]),
        Some(bot),
        Some(&json!({"ok": true})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("outcome_recorded")),
        "{v}"
    );
    // Three results recorded, each once, and the log verifies.
    let (_tmp, _bundle, entries) = export_log(&g);
    let results: Vec<&str> = entries
        .iter()
        .filter(|e| e["event"] == "action.result")
        .map(|e| e["payload"]["execution"].as_str().unwrap_or_default())
        .collect();
    let mut sorted = results.clone();
    sorted.sort();
    let mut want: Vec<&str> = execs.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(sorted, want, "{results:?}");
}

/// A request refused before its body arrived (no token; a body declared
/// over the limit): the answer says `Connection: close` and the connection
/// is closed, so a client never sends its next request on a connection
/// being torn down, nor waits for one that cannot be accepted.
/// A client that sends its whole body before reading (as most do) reads
/// the `413` the gateway answered from the header, under load too: the
/// gateway lingers on the closed connection, reading and dropping the body,
/// instead of closing with unread bytes, which makes the kernel reset the
/// connection and the client fail writing (`EPIPE`) or reading (reset)
/// before it sees the answer.
#[test]
fn a_body_refused_from_its_length_is_answered_to_a_client_still_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let addr = g.url.trim_start_matches("http://").to_string();
    let auth = format!("Authorization: Bearer {}", token_of("agent:report-bot"));
    let (n, wrong) =
        common::send_whole_bodies("HTTP/1.1 413 ", &addr, "/v1/actions", &auth, 4 << 20, 8, 15);
    assert!(wrong.is_empty(), "{} of {n}: {wrong:?}", wrong.len());
    // Lingering connections closed; the gateway still answers.
    let (s, _) = g.call(
        "POST",
        "/v1/actions",
        Some("agent:report-bot"),
        Some(&read_action()),
    );
    assert_eq!(s, 200);
}

#[test]
fn a_post_refused_before_its_body_is_answered_with_connection_close() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(dir.path());
    let addr = g.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // Headers only: the promised body never comes.
    let head = format!(
        "POST /v1/actions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains("\"unauthorized\""), "{answer}");
    // read_to_end returned: the gateway closed the connection. The same,
    // at once, for a body declared larger than the limit (with a token).
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /v1/actions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        token_of("agent:report-bot")
    );
    sock.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");
    // A request with a token still works on a fresh connection.
    let (s, _) = g.call(
        "POST",
        "/v1/actions",
        Some("agent:report-bot"),
        Some(&read_action()),
    );
    assert_eq!(s, 200);
}

/// Starts `secondkey serve --config <config>` from `cwd` and returns the
/// log's verifier key it serves, then stops it.
fn served_verifier(cwd: &std::path::Path, config: &str, port: u16) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config", config])
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/log/verifier-key");
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        if let Ok(r) = ureq::get(&url).call() {
            break r.into_string().unwrap();
        }
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    key.trim().to_string()
}

/// `root/sub/sk.toml` with a relative `data_dir` (`d`) and policy
/// directory, listening on a free port: `sub` and the port.
fn relative_config(root: &std::path::Path) -> (std::path::PathBuf, u16) {
    let sub = root.join("sub");
    std::fs::create_dir_all(sub.join("policies")).unwrap();
    std::fs::write(
        sub.join("policies/p.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let port = free_port();
    std::fs::write(
        sub.join("sk.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"d\"\npolicy_dir = \"policies\"\n"),
    )
    .unwrap();
    (sub, port)
}

/// With a relative `data_dir` and the config named by a relative path,
/// the log's and the grants' keys are under `data_dir/keys` — where the
/// session key is and the guides say — whatever directory the gateway is
/// started from; a key an earlier build left under the config's directory
/// twice over is still used (the log keeps its key).
#[test]
fn default_keys_are_under_data_dir_whatever_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (sub, port) = relative_config(root);
    let first = served_verifier(root, "sub/sk.toml", port);
    for k in ["log.key", "grant.key", "session.key"] {
        assert!(sub.join("d/keys").join(k).is_file(), "{k} under data_dir");
    }
    assert!(!sub.join("sub").exists(), "nothing under sub/sub");
    // From the config's own directory: the same keys.
    assert_eq!(served_verifier(&sub, "sk.toml", port), first);

    // A log key where an earlier build put it (sub/sub/d/keys) and none
    // where it belongs: that one is used.
    let other = tempfile::tempdir().unwrap();
    let root = other.path();
    let (sub, port) = relative_config(root);
    let old = sub.join("sub/d/keys");
    std::fs::create_dir_all(&old).unwrap();
    let vkey = new_key(
        ["keys", "generate"],
        "secondkey.local/log",
        &old.join("log.key"),
    );
    assert_eq!(served_verifier(root, "sub/sk.toml", port), vkey);
    assert!(!sub.join("d/keys/log.key").exists(), "no second log key");
}

/// A log key that did not sign the store's log (its file lost and made
/// anew at start, or another directory's keys) is refused at start,
/// naming the key file; with the key that signed it back, the gateway
/// starts.
#[test]
fn a_log_key_that_did_not_sign_the_log_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(dir.path());
    assert_eq!(
        g.submit("agent:report-bot", &read_action())["decision"],
        "allow"
    );
    // A stop anchors the last checkpoint in the store.
    g.stop();
    let key = dir.path().join("data/keys/log.key");
    let kept = dir.path().join("log.key.kept");
    std::fs::rename(&key, &kept).unwrap();
    new_key(["keys", "generate"], "test.secondkey/log", &key);
    let err = serve_refusal(&g.config, &[]).expect("a foreign log key is refused");
    assert!(
        err.contains("did not sign this store's log") && err.contains(key.to_str().unwrap()),
        "{err}"
    );
    // Nor does a start without any log key make one and go on.
    std::fs::remove_file(&key).unwrap();
    let err = serve_refusal(&g.config, &[]).expect("a new log key is refused");
    assert!(err.contains("did not sign this store's log"), "{err}");
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(&kept, &key).unwrap();
    g.spawn();
    assert_eq!(
        g.submit("agent:report-bot", &read_action())["decision"],
        "allow"
    );
}
