//! Hardening of the REST API and the web UI (issue 23), black-box: the real
//! binary, a real OpenID Connect provider (`oidc-provider-mock`), real
//! sockets. Each test reproduces one finding of the attack and shows it
//! closed: an owner approving her own agent's request by signing in with
//! other letter case; `on_behalf_of` taken on the agent's word; connection
//! exhaustion (slowloris); unbounded long-polls; one digest with two
//! decisions; `/metrics` open to anyone; a misnamed error code.

mod common;
#[path = "common/oidc.rs"]
mod oidc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use oidc::*;
use serde_json::{json, Value};

/// Deletes are held for a data owner; any agent may ask (so a principal
/// the gateway does not know would get a request with nobody excluded).
const DELETE_POLICIES: &str = r#"
@id("agents-delete")
permit(principal is Agent, action == Action::"sql.delete", resource);

@id("deletes-need-a-data-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.delete", resource);

@id("small-writes")
permit(principal in Group::"agents", action == Action::"sql.write", resource)
when { context has estimated_rows && context.estimated_rows < 1000 };
"#;

fn delete(n: u32) -> Value {
    json!({"kind": "sql", "operation": "delete", "resource": "postgres://analytics/public.events",
           "params": {"statement": format!("DELETE FROM events WHERE id = {n}")}})
}

fn user(sub: &str, name: &str, email: &str, groups: Value) -> Value {
    json!({"sub": sub, "preferred_username": name, "email": email, "email_verified": true, "groups": groups})
}

fn oidc_section(dir: &Path, issuer: &str, username_claim: &str) -> String {
    let secret = dir.join("client_secret");
    std::fs::write(&secret, "security-test-client-secret\n").unwrap();
    format!(
        "\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"secondkey-web\"\nclient_secret_file = \"{}\"\nusername_claim = \"{username_claim}\"\ngroups_claim = \"groups\"\n[oidc.group_map]\n\"data-owners\" = [\"data-owners\"]\n",
        secret.display()
    )
}

/// POSTs a JSON body with a bearer token; (status, body).
fn post_as(g: &Gateway, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = resp(
        g.agent
            .post(&format!("{}{path}", g.url))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
    );
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// Signs in as `sub` and tries to approve `id` through the web form.
fn web_approve(gw: &str, sub: &str, id: &str) -> Resp {
    let s = sign_in(gw, sub, "/");
    let page = get_page(gw, &s.session, &format!("/requests/{id}"));
    assert_eq!(page.status, 200, "{sub} sees the request: {}", page.body);
    let csrf = csrf_of(&page.body);
    post_form(
        gw,
        &s.session,
        &format!("/requests/{id}/review"),
        &[("decision", "approve"), ("csrf", &csrf)],
        None,
    )
}

/// Finding 1: the OIDC user `Alice` became `user:Alice`, not the owner
/// `user:alice`, and approved her own agent's request. Finding 4's token
/// case: an RFC 8693 delegation token backs `on_behalf_of`.
#[test]
fn letter_case_never_makes_a_second_principal() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp_with(
        dir.path(),
        &[
            user(
                "Alice",
                "Alice",
                "Alice@Example.Test",
                json!(["data-owners"]),
            ),
            user(
                "ALICE",
                "ALICE",
                "ALICE@EXAMPLE.TEST",
                json!(["data-owners"]),
            ),
            user("bob", "bob", "bob@example.test", json!(["data-owners"])),
            // Typed bob's address into a provider that never checked it.
            json!({"sub": "mallory", "preferred_username": "mallory", "email": "bob@example.test",
                   "email_verified": false, "groups": ["data-owners"]}),
            json!({"sub": "mallory2", "preferred_username": "mallory2", "email": "bob@example.test",
                   "groups": ["data-owners"]}),
            user("ETL-bot", "ETL-bot", "etl@example.test", json!([])),
            // A token-exchange token: the deploy bot acting for carol.
            json!({"sub": "carol-via-deploy", "preferred_username": "Carol", "act": {"sub": "Deploy-Bot"}}),
            json!({"sub": "no-actor", "preferred_username": "carol", "act": {"client": "x"}}),
        ],
    );

    // Gateway A names users by preferred_username; the bots authenticate
    // with workload tokens of the same provider. The config spells ids
    // in any case.
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let extra = format!(
        "{}\n[[identity.jwt]]\nissuer = \"{issuer}\"\naudience = \"agent-login\"\nprincipal_kind = \"agent\"\nprincipal_claim = \"preferred_username\"\ndelegation_user_claim = \"preferred_username\"\n\n[[principals]]\nid = \"Agent:ETL-Bot\"\nowner = \"USER:Alice\"\ngroups = [\"agents\"]\n\n[[principals]]\nid = \"agent:deploy-bot\"\nowner = \"user:dave\"\ngroups = [\"agents\"]\n",
        oidc_section(&a_dir, &issuer, "preferred_username")
    );
    let g = Gateway::start_extra(&a_dir, DELETE_POLICIES, &extra);
    let gw = g.url.clone();

    // sub "ETL-bot" is the configured agent:etl-bot, owned by alice.
    let etl = id_token_for(&issuer, "agent-login", "ETL-bot");
    let (s, v) = post_as(&g, &etl, "/v1/actions", &delete(1));
    assert_eq!((s, v["decision"].as_str()), (200, Some("review")), "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let (_, r) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(
        (r["requester"].as_str(), r["owner"].as_str()),
        (Some("agent:etl-bot"), Some("user:alice")),
        "{r}"
    );

    // alice signing in as "Alice" or "ALICE" is alice: refused, nothing changed.
    for sub in ["Alice", "ALICE"] {
        let r = web_approve(&gw, sub, &id);
        assert_eq!(r.status, 403, "{sub}: {}", r.body);
        assert!(r.body.contains("Nothing was changed"), "{}", r.body);
    }
    // Through the API too.
    // Approving one's own request (or one made for oneself) is refused.
    let self_review = |who: &str, id: &str| {
        let (s, v) = g.review(who, id, "approve");
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("self_review")),
            "{who}: {v}"
        );
    };
    self_review("user:alice", &id);
    assert_eq!(g.state_of(&id), ("pending".into(), 0));
    // Someone else may.
    assert_eq!(web_approve(&gw, "bob", &id).status, 303);
    assert_eq!(g.state_of(&id), ("approved".into(), 1));

    // A delegation token (RFC 8693 `act`): deploy-bot acting for carol.
    let deploy = id_token_for(&issuer, "agent-login", "carol-via-deploy");
    let mut act = delete(2);
    act["on_behalf_of"] = json!("user:carol");
    let (s, v) = post_as(&g, &deploy, "/v1/actions", &act);
    assert_eq!(s, 200, "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let (_, r) = g.call(
        "GET",
        &format!("/v1/requests/{id}"),
        Some("user:carol"),
        None,
    );
    assert_eq!(r["requester"], "agent:deploy-bot");
    assert_eq!(
        r["on_behalf_of"],
        json!({"principal": "user:carol", "backed": true})
    );
    self_review("user:carol", &id);
    // The same token naming bob: only declared; carol, whom the token
    // proves the agent acts for, still may not review it; bob does.
    act["on_behalf_of"] = json!("user:bob");
    act["params"]["statement"] = json!("DELETE FROM events WHERE id = 3");
    let (_, v) = post_as(&g, &deploy, "/v1/actions", &act);
    let id = v["request"]["id"].as_str().unwrap().to_string();
    self_review("user:carol", &id);
    let (s, r) = g.review("user:bob", &id, "approve");
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r["on_behalf_of"],
        json!({"principal": "user:bob", "backed": false})
    );
    // Naming nobody changes nothing: the token still says whom the agent
    // acts for, and carol may not approve it. Submitting it again waits on
    // the same request.
    let mut quiet = act.clone();
    quiet.as_object_mut().unwrap().remove("on_behalf_of");
    quiet["params"]["statement"] = json!("DELETE FROM events WHERE id = 4");
    let (_, v) = post_as(&g, &deploy, "/v1/actions?execute=true", &quiet);
    let id = v["request"]["id"].as_str().unwrap().to_string();
    self_review("user:carol", &id);
    let (_, r) = g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(r["state"], "pending", "{r}");
    // Submitting the identical action again waits on that request.
    let (_, v) = post_as(&g, &deploy, "/v1/actions?execute=true", &quiet);
    assert_eq!(v["request"]["id"], id.as_str(), "{v}");
    // An `act` without a subject names no actor: refused.
    let (s, v) = post_as(
        &g,
        &id_token_for(&issuer, "agent-login", "no-actor"),
        "/v1/actions",
        &act,
    );
    assert_eq!(s, 401, "{v}");

    // Gateway B names users by their email claim: a mixed-case email is
    // the configured owner too.
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let mail_bot_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        token_of("agent:mail-bot").as_bytes(),
    ));
    let extra = format!(
        "{}\n[[principals]]\nid = \"user:alice@example.test\"\ngroups = [\"data-owners\"]\n\n[[principals]]\nid = \"agent:mail-bot\"\nowner = \"User:Alice@Example.TEST\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{mail_bot_hash}\"\n",
        oidc_section(&b_dir, &issuer, "email")
    );
    let gb = Gateway::start_extra(&b_dir, DELETE_POLICIES, &extra);
    let v = gb.submit("agent:mail-bot", &delete(4));
    let id = v["request"]["id"].as_str().unwrap().to_string();
    for sub in ["Alice", "ALICE"] {
        let r = web_approve(&gb.url, sub, &id);
        assert_eq!(r.status, 403, "{sub}: {}", r.body);
    }
    assert_eq!(gb.state_of(&id), ("pending".into(), 0));
    // An email the provider has not verified (false, or no
    // email_verified claim at all) names nobody.
    for sub in ["mallory", "mallory2"] {
        let r = sign_in_refused(&gb.url, sub);
        assert!(
            r.status >= 400 && r.body.contains("email_verified"),
            "{sub}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(web_approve(&gb.url, "bob", &id).status, 303);
}

/// One provider serves web sign-in and workload tokens, and no
/// `[[principals]]` entry names the agents: bob's own token made him
/// `agent:bob`, unowned, and bob signed in on the web as `user:bob` and
/// approved what `agent:bob` asked. Now the account a request came from
/// never reviews it, whatever principal id the web gives that account; and
/// an unconfigured `agent:NAME` never has `user:NAME` review it.
#[test]
fn one_account_signed_in_twice_never_approves_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp_with(
        dir.path(),
        &[
            user("bob", "bob", "bob@example.test", json!(["data-owners"])),
            // Another account that the provider also calls bob.
            user("bob-ci", "bob", "bob-ci@example.test", json!([])),
            user(
                "carol",
                "carol",
                "carol@example.test",
                json!(["data-owners"]),
            ),
        ],
    );
    let jwt = |claim: &str| {
        format!("\n[[identity.jwt]]\nissuer = \"{issuer}\"\naudience = \"agent-login\"\nprincipal_kind = \"agent\"\nprincipal_claim = \"{claim}\"\n")
    };

    // Gateway A names web users and agents by preferred_username.
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let extra = oidc_section(&a_dir, &issuer, "preferred_username") + &jwt("preferred_username");
    let g = Gateway::start_extra(&a_dir, DELETE_POLICIES, &extra);
    let refused = |gw: &str, sub: &str, id: &str| {
        let r = web_approve(gw, sub, id);
        assert_eq!(r.status, 403, "{sub}: {}", r.body);
        assert!(r.body.contains("Nothing was changed"), "{}", r.body);
    };
    for (n, account) in [(1, "bob"), (2, "bob-ci")] {
        let token = id_token_for(&issuer, "agent-login", account);
        let (s, v) = post_as(&g, &token, "/v1/actions", &delete(n));
        assert_eq!((s, v["decision"].as_str()), (200, Some("review")), "{v}");
        let id = v["request"]["id"].as_str().unwrap().to_string();
        let (_, r) = g.call(
            "GET",
            &format!("/v1/requests/{id}"),
            Some("user:carol"),
            None,
        );
        assert_eq!(r["requester"], "agent:bob", "{r}");
        // bob on the web, by his account (1) or by his name (2) alike;
        // and by name through the API.
        refused(&g.url, "bob", &id);
        let (s, v) = g.review("user:bob", &id, "approve");
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("self_review")),
            "{v}"
        );
        assert_eq!(g.state_of(&id), ("pending".into(), 0));
        assert_eq!(web_approve(&g.url, "carol", &id).status, 303);
        assert_eq!(g.state_of(&id), ("approved".into(), 1));
    }

    // Gateway B names web users by email, agents by preferred_username:
    // bob on the web is user:bob@example.test, no namesake of agent:bob,
    // and still the account the request came from.
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let extra = oidc_section(&b_dir, &issuer, "email") + &jwt("preferred_username");
    let gb = Gateway::start_extra(&b_dir, DELETE_POLICIES, &extra);
    let token = id_token_for(&issuer, "agent-login", "bob");
    let (_, v) = post_as(&gb, &token, "/v1/actions", &delete(3));
    let id = v["request"]["id"].as_str().unwrap().to_string();
    refused(&gb.url, "bob", &id);
    assert_eq!(gb.state_of(&id), ("pending".into(), 0));
    assert_eq!(web_approve(&gb.url, "carol", &id).status, 303);
    assert_eq!(gb.state_of(&id), ("approved".into(), 1));
}

/// The provider calls ann `ann@corp.com`; the configuration calls her
/// `user:ann`, owner of `agent:ann-bot`. Signed in on the web she was a
/// second principal, who approved her own agent. Now her pinned account
/// (`oidc_subjects`) is `user:ann` whatever the username claim says, no
/// other account becomes `user:ann`, and with `[oidc] require_configured`
/// an account that is no configured principal does not sign in.
#[test]
fn a_pinned_account_is_its_principal() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp_with(
        dir.path(),
        &[
            user(
                "ann-1",
                "ann@corp.com",
                "ann@corp.com",
                json!(["data-owners"]),
            ),
            user("ann-2", "ann", "ann2@corp.com", json!(["data-owners"])),
            user("zed", "zed", "zed@corp.com", json!(["data-owners"])),
            user("bob", "bob", "bob@example.test", json!(["data-owners"])),
        ],
    );
    let bot_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        token_of("agent:ann-bot").as_bytes(),
    ));
    let oidc = oidc_section(dir.path(), &issuer, "preferred_username").replace(
        "\n[oidc.group_map]",
        "\nrequire_configured = true\n[oidc.group_map]",
    );
    let extra = format!(
        "{oidc}\n[[principals]]\nid = \"user:ann\"\ngroups = [\"data-owners\"]\noidc_subjects = [\"{issuer}/|ann-1\"]\n\n[[principals]]\nid = \"agent:ann-bot\"\nowner = \"user:ann\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{bot_hash}\"\n"
    );
    let g = Gateway::start_extra(dir.path(), DELETE_POLICIES, &extra);
    let v = g.submit("agent:ann-bot", &delete(1));
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let r = web_approve(&g.url, "ann-1", &id);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("ann may not review this request: it owns"),
        "{}",
        r.body
    );
    // Another account named ann is not her; an unconfigured one is nobody.
    for (sub, why) in [("ann-2", "oidc_subjects"), ("zed", "require_configured")] {
        let r = sign_in_refused(&g.url, sub);
        assert!(
            r.status >= 400 && r.body.contains(why),
            "{sub}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(g.state_of(&id), ("pending".into(), 0));
    assert_eq!(web_approve(&g.url, "bob", &id).status, 303);
    assert_eq!(g.state_of(&id), ("approved".into(), 1));
}

/// Reads what the server sent until it closes the connection (`None` if
/// it stays open past `within`).
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
    None
}

/// A blocking TCP connection from the loopback address `from` (the whole
/// of 127.0.0.0/8 is this machine), so one test plays several clients.
fn connect_from(rt: &tokio::runtime::Runtime, from: &str, to: SocketAddr) -> TcpStream {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(format!("{from}:0").parse().unwrap())?;
        let s = s.connect(to).await?.into_std()?;
        s.set_nonblocking(false)?;
        Ok::<_, std::io::Error>(s)
    })
    .expect("connect")
}

/// Finding 2: ~20,000 sockets sending partial headers (or a byte every
/// 5 s) exhausted the gateway's descriptors and `/healthz` stopped
/// answering. Now one address holds at most `max_connections_per_address`
/// connections, the rest are answered 429 and closed at once, a head must
/// arrive within `header_read_timeout` however it trickles, idle
/// keep-alive connections end after `idle_timeout`, and a body must arrive
/// within `body_read_timeout`.
#[test]
fn a_slowloris_flood_leaves_health_and_a_good_client_served() {
    // Thousands of sockets in this process: as many descriptors as allowed.
    let nofile = secondkey_server::limits::conn::raise_open_files_limit().unwrap_or(1024);
    let attackers = (nofile.saturating_sub(512) as usize).min(3000);
    assert!(
        attackers >= 1500,
        "the open-files limit ({nofile}) leaves too few sockets for the test"
    );
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_extra(
        dir.path(),
        POLICIES,
        "\n[limits]\nmax_connections_per_address = 1000\nheader_read_timeout = \"10s\"\nidle_timeout = \"3s\"\nbody_read_timeout = \"3s\"\n",
    );
    let addr: SocketAddr = g.url.trim_start_matches("http://").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The flood: partial heads from 127.0.0.2, all at once.
    let t_flood = Instant::now();
    let flood: Vec<TcpStream> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..attackers {
            set.spawn(async move {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind("127.0.0.2:0".parse().unwrap())?;
                let s = s.connect(addr).await?.into_std()?;
                s.set_nonblocking(false)?;
                (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
                Ok::<_, std::io::Error>(s)
            });
        }
        let mut socks = Vec::new();
        while let Some(r) = set.join_next().await {
            socks.push(r.unwrap().expect("connect"));
        }
        socks
    });
    let took = t_flood.elapsed();
    // Health and a well-behaved client (another address) are served, on a
    // new connection: accepted after every socket of the flood.
    let fresh = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let h = resp(fresh.get(&format!("{}/healthz", g.url)).call());
    assert_eq!(h.status, 200, "{}", h.body);
    let (s, v) = g.call(
        "POST",
        "/v1/actions",
        Some("agent:report-bot"),
        Some(&read_action()),
    );
    assert_eq!((s, v["decision"].as_str()), (200, Some("allow")), "{v}");
    let (s, m) = g.call("GET", "/metrics", Some("service:monitor"), None);
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    let gauge = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(gauge("secondkey_connections") <= 1000 + 4, "{m}");
    assert!(gauge("secondkey_connections_refused_total") >= 1, "{m}");

    // Over the cap, the gateway answered 429 at once and closed; under it,
    // it holds the connection, but not for long (below).
    let (mut answered, mut closed) = (0, 0);
    let mut held = Vec::new();
    let mut buf = [0u8; 512];
    for mut s in flood {
        s.set_nonblocking(true).unwrap();
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 429"), "{text}");
                assert!(text.contains("too_many_connections"), "{text}");
                answered += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                s.set_nonblocking(false).unwrap();
                held.push(s);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(held.len() <= 1000, "{} held", held.len());
    assert!(
        answered >= 1,
        "nothing over the per-address cap was refused"
    );
    println!(
        "slowloris: {attackers} sockets from one address in {took:?}: {} held, {answered} refused at accept, {closed} already timed out",
        held.len()
    );

    // Byte-trickles from a third address: a byte a second never completes
    // a head, and the gateway closes them at the head's deadline.
    let trickles: Vec<_> = (0..20)
        .map(|_| {
            let mut s = connect_from(&rt, "127.0.0.3", addr);
            std::thread::spawn(move || {
                let start = Instant::now();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Trickle: ");
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                for _ in 0..60 {
                    match s.read(&mut [0u8; 64]) {
                        Ok(0) => return start.elapsed(),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if s.write_all(b"a").is_err() {
                                return start.elapsed();
                            }
                        }
                        _ => return start.elapsed(),
                    }
                }
                start.elapsed()
            })
        })
        .collect();

    // The held partial heads are closed at their deadline, with no answer.
    for mut s in held {
        let got = read_until_closed(&mut s, Duration::from_secs(60));
        assert_eq!(
            got.as_deref(),
            Some(""),
            "a partial head is closed without an answer"
        );
    }
    for t in trickles {
        let lasted = t.join().unwrap();
        assert!(
            lasted < Duration::from_secs(30),
            "a trickle held its connection for {lasted:?}"
        );
    }

    // An idle keep-alive connection is closed after idle_timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 15];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(60)).is_some(),
        "idle connection never closed"
    );

    // A body that does not arrive in full within body_read_timeout: 408.
    let mut slow = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/actions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\"",
        token_of("agent:report-bot")
    );
    slow.write_all(head.as_bytes()).unwrap();
    let answer =
        read_until_closed(&mut slow, Duration::from_secs(60)).expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // And through all of it, the gateway stayed healthy.
    assert_eq!(
        resp(g.agent.get(&format!("{}/healthz", g.url)).call()).status,
        200
    );
}

/// Finding 2, long-polls: one principal could hold any number of them.
#[test]
fn long_polls_are_capped_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_extra(
        dir.path(),
        DELETE_POLICIES,
        "\n[limits]\nmax_waits_per_principal = 2\n",
    );

    // Bob opens three long-polls at once: two are held, the third is
    // refused at once with 429 and Retry-After.
    let id = g.submit("agent:report-bot", &delete(0))["request"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let (url, id, tx) = (g.url.clone(), id.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(90))
                .build()
                .get(&format!("{url}/v1/requests/{id}?wait=60"))
                .set("Authorization", &format!("Bearer {}", token_of("user:bob")))
                .call();
            let out = match r {
                Ok(r) => (
                    200,
                    r.header("retry-after").is_some(),
                    r.into_string().unwrap(),
                ),
                Err(ureq::Error::Status(s, r)) => (
                    s,
                    r.header("retry-after").is_some(),
                    r.into_string().unwrap(),
                ),
                Err(e) => panic!("{e}"),
            };
            tx.send(out).unwrap();
        });
    }
    let (status, retry_after, body) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((status, retry_after), (429, true), "{body}");
    assert!(body.contains("too_many_waits"), "{body}");
    // Another principal is not affected, and answers without a wait take
    // no slot.
    let (s, _) = g.call(
        "GET",
        &format!("/v1/requests/{id}?wait=0"),
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 200);
    let (s, v) = g.call(
        "GET",
        &format!("/v1/requests/{id}?wait=1"),
        Some("user:carol"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // The two held ones end with the decision, and give their slots back.
    assert_eq!(g.review("user:carol", &id, "deny").0, 200);
    for _ in 0..2 {
        let (status, _, body) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"denied\""), "{body}");
    }
    let other = g.submit("agent:report-bot", &delete(1))["request"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = g.call(
        "GET",
        &format!("/v1/requests/{other}?wait=1"),
        Some("user:bob"),
        None,
    );
    assert_eq!(s, 200, "{v}");
}

/// Finding 5: `100` was allowed and `1E2`, `100.0` denied ("not an
/// integer"), one digest with two decisions in the log.
#[test]
fn one_digest_gets_one_decision() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_with(dir.path(), DELETE_POLICIES);
    // 100, 1E2, 100.0 (and 0, -0) are one value.
    let write = |rows: &str| -> Value {
        let text = format!(
            r#"{{"kind":"sql","operation":"write","resource":"postgres://analytics/public.t","context":{{"estimated_rows":{rows}}}}}"#
        );
        let (s, v) = g.raw(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            "application/json",
            text.as_bytes(),
        );
        assert_eq!(s, 200, "{rows}: {v}");
        v
    };
    for group in [
        &["100", "1E2", "100.0", "1.0e2"][..],
        &["0", "-0", "0.0", "-0.0"],
    ] {
        let first = write(group[0]);
        for spelling in &group[1..] {
            let v = write(spelling);
            assert_eq!(v["digest"], first["digest"], "{spelling}");
            assert_eq!(
                (v["decision"].as_str(), first["decision"].as_str()),
                (Some("allow"), Some("allow")),
                "{spelling}: {v}"
            );
        }
    }
}

/// Finding 6: `/metrics` answered anyone.
#[test]
fn metrics_are_for_metrics_readers() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_with(dir.path(), DELETE_POLICIES);
    // Only for [metrics] readers (default group "monitoring").
    let (s, v) = g.call("GET", "/metrics", None, None);
    assert_eq!(s, 401, "{v}");
    let (s, v) = g.call("GET", "/metrics", Some("user:bob"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_metrics_reader"))
    );
    let (s, v) = g.call("GET", "/metrics", Some("service:monitor"), None);
    assert_eq!(s, 200);
    assert!(v.as_str().unwrap().contains("secondkey_log_size "), "{v}");
    // Requests by state: every state, before any request reaches it.
    for state in [
        "pending",
        "approved",
        "denied",
        "expired",
        "withdrawn",
        "revoked",
        "executed",
        "failed",
        "unknown",
    ] {
        let line = format!("secondkey_requests{{state=\"{state}\"}} 0\n");
        assert!(v.as_str().unwrap().contains(&line), "{line}: {v}");
    }
}

/// Finding 7: a result summary holding `1e300` was refused as
/// `entry_too_large`.
#[test]
fn an_unsafe_number_in_a_result_is_named_so() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_with(dir.path(), DELETE_POLICIES);
    let (s, v) = g.call("POST", "/v1/actions?execute=true", Some("agent:report-bot"), Some(&json!(
        {"kind": "sql", "operation": "write", "resource": "postgres://analytics/public.t", "context": {"estimated_rows": 5}})));
    assert_eq!(s, 200, "{v}");
    let exec = v["execution"]["id"].as_str().unwrap().to_string();
    let (s, v) = g.call(
        "POST",
        &format!("/v1/executions/{exec}/result"),
        Some("agent:report-bot"),
        Some(&json!({"ok": true, "summary": {"rows": 1e300}})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("unsafe_number")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("summary.rows"),
        "{v}"
    );
    // Nothing was recorded: the right result still goes in, once.
    let (s, v) = g.call(
        "POST",
        &format!("/v1/executions/{exec}/result"),
        Some("agent:report-bot"),
        Some(&json!({"ok": true, "summary": {"rows": 1}})),
    );
    assert_eq!(s, 204, "{v}");
}

/// An API event stream opened with a workload token ends when the token
/// expires (its `exp`), though its request is still pending: a token that
/// is no longer valid keeps nothing open. The provider issues tokens that
/// live 3 s.
#[test]
fn an_event_stream_ends_when_its_workload_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let users = [json!({"sub": "etl-bot", "preferred_username": "etl-bot"})];
    let (_idp, issuer) = oidc::start_idp_args(dir.path(), &users, &["--token-max-age", "3"]);
    let extra = format!(
        "\n[[identity.jwt]]\nissuer = \"{issuer}\"\naudience = \"agent-login\"\nprincipal_kind = \"agent\"\nprincipal_claim = \"preferred_username\"\n"
    );
    let g = Gateway::start_extra(dir.path(), DELETE_POLICIES, &extra);
    let token = id_token_for(&issuer, "agent-login", "etl-bot");
    let (s, v) = post_as(&g, &token, "/v1/actions", &delete(1));
    assert_eq!((s, v["decision"].as_str()), (200, Some("review")), "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_string();
    let addr: SocketAddr = g.url.trim_start_matches("http://").parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/requests/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(30))
        .expect("the stream outlived its token by 30 s");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.contains("event: state") && got.contains("pending"),
        "{got}"
    );
    assert_eq!(
        g.state_of(&id).0,
        "pending",
        "closed by the token's end, not the request's"
    );
}

/// docs/identity.md: `[[identity.jwt]] leeway` narrows the clock skew
/// allowed past a token's `exp` (60 s by default). The provider issues
/// tokens that live 3 s; with `leeway = "1s"` one is refused 5 s after it
/// was issued, where the default would still take it for a minute.
#[test]
fn a_workload_token_is_refused_past_its_exp_plus_the_configured_leeway() {
    let dir = tempfile::tempdir().unwrap();
    let users = [json!({"sub": "etl-bot", "preferred_username": "etl-bot"})];
    let (_idp, issuer) = oidc::start_idp_args(dir.path(), &users, &["--token-max-age", "3"]);
    let extra = format!(
        "\n[[identity.jwt]]\nissuer = \"{issuer}\"\naudience = \"agent-login\"\nprincipal_kind = \"agent\"\nprincipal_claim = \"preferred_username\"\nleeway = \"1s\"\nkeys_ttl = \"5m\"\n"
    );
    let g = Gateway::start_extra(dir.path(), DELETE_POLICIES, &extra);
    let token = id_token_for(&issuer, "agent-login", "etl-bot");
    let issued = Instant::now();
    let (s, v) = post_as(&g, &token, "/v1/actions", &delete(1));
    assert_eq!((s, v["decision"].as_str()), (200, Some("review")), "{v}");
    std::thread::sleep(Duration::from_secs(5).saturating_sub(issued.elapsed()));
    let (s, v) = post_as(&g, &token, "/v1/actions", &delete(2));
    assert_eq!(s, 401, "{v}");
}

/// docs/web.md: `[oidc.group_map]` — "when present only mapped groups
/// count". An empty table is present: the provider's groups count for
/// nothing, so someone the provider puts in `data-owners` (and the file
/// does not) neither sees nor decides a data owner's request.
#[test]
fn an_empty_group_map_lets_no_provider_group_through() {
    let dir = tempfile::tempdir().unwrap();
    let (_idp, issuer) = start_idp_with(
        dir.path(),
        &[
            user(
                "mallory",
                "mallory",
                "mallory@example.test",
                json!(["data-owners"]),
            ),
            user("bob", "bob", "bob@example.test", json!([])),
        ],
    );
    let oidc = oidc_section(dir.path(), &issuer, "preferred_username").replace(
        "[oidc.group_map]\n\"data-owners\" = [\"data-owners\"]\n",
        "[oidc.group_map]\n",
    );
    assert!(oidc.ends_with("[oidc.group_map]\n"), "{oidc}");
    let g = Gateway::start_extra(dir.path(), DELETE_POLICIES, &oidc);
    let v = g.submit("agent:report-bot", &delete(1));
    let id = v["request"]["id"].as_str().unwrap().to_string();

    let s = sign_in(&g.url, "mallory", "/");
    let page = get_page(&g.url, &s.session, &format!("/requests/{id}"));
    assert_eq!(page.status, 404, "{}", page.body);
    let inbox = get_page(&g.url, &s.session, "/inbox");
    assert!(!inbox.body.contains(&id), "{}", inbox.body);
    assert_eq!(g.state_of(&id), ("pending".into(), 0));
    // bob is a data owner by the file, whatever the provider says.
    assert_eq!(web_approve(&g.url, "bob", &id).status, 303);
    assert_eq!(g.state_of(&id), ("approved".into(), 1));
}
