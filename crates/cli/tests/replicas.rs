//! Black-box tests of several replicas: three real `secondkey serve`
//! processes on one throwaway PostgreSQL 15 cluster, behind haproxy on
//! loopback, with curl-like HTTP clients.

mod common;
#[path = "common/fakes.rs"]
mod fakes;
#[path = "common/oidc.rs"]
mod oidc;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{export_action, read_action, run_cli, token_of, Gateway, POLICIES};
use secondkey_pg::testing::{Cluster, APP_PASSWORD, APP_USER};
use serde_json::{json, Value};

/// Three replicas sharing the store `sk` of `cluster`, each with its own
/// data directory (keys copied from the first).
struct Replicas {
    cluster: Cluster,
    gws: Vec<Gateway>,
    _dirs: Vec<tempfile::TempDir>,
}

fn store_section(cluster: &Cluster, pwfile: &Path) -> String {
    format!(
        "\n[store]\nurl = \"postgres://{APP_USER}@127.0.0.1:{}/sk?sslmode=disable\"\npassword_file = \"{}\"\n",
        cluster.port,
        pwfile.display()
    )
}

fn replicas(n: usize) -> Replicas {
    replicas_with(n, "")
}

/// [`replicas`] with `extra` configuration on every replica.
fn replicas_with(n: usize, extra_all: &str) -> Replicas {
    replicas_full(n, extra_all, &[])
}

/// [`replicas_with`], with `env` (the secrets `extra_all` names) in every
/// replica's environment.
fn replicas_full(n: usize, extra_all: &str, env: &[(&str, &str)]) -> Replicas {
    let cluster = Cluster::start(0);
    cluster.superuser_sql("postgres", &format!("CREATE DATABASE sk OWNER {APP_USER}"));
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut gws = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let pwfile = d.path().join("store.pw");
        std::fs::write(&pwfile, format!("{APP_PASSWORD}\n")).unwrap();
        let extra = format!("{}{extra_all}", store_section(&cluster, &pwfile));
        if i == 0 {
            // Before `store migrate`, a replica refuses to start, and says why.
            let port = common::free_port();
            let cfg = common::write_config_extra(d.path(), port, POLICIES, &extra);
            let out = Command::new(common::BIN)
                .args(["serve", "--config"])
                .arg(&cfg)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(err.contains("secondkey store migrate"), "{err}");
            let (code, o, e) = run_cli(
                &["store", "migrate", "--config", cfg.to_str().unwrap()],
                "http://127.0.0.1:1",
                None,
            );
            assert_eq!(code, 0, "{o}{e}");
            assert!(o.contains("migrated from version 0"), "{o}");
        } else {
            // The same keys as the first replica (see docs/replicas.md).
            copy_keys(&gws[0], d.path());
        }
        gws.push(Gateway::start_full(d.path(), POLICIES, "", &extra, env));
    }
    Replicas {
        cluster,
        gws,
        _dirs: dirs,
    }
}

/// The OpenID Connect provider the replicas of [`oidc_replicas`] sign
/// people in through; it runs while this lives.
struct Idp {
    _proc: oidc::Proc,
    _dir: tempfile::TempDir,
}

/// Two replicas that sign people in through one provider, started here:
/// `oidc` is added to their `[oidc]` section (a `redirect_url`, say),
/// `extra` after it. Returns the provider (keep it), the replicas and the
/// section as given to them.
fn oidc_replicas(oidc: &str, extra: &str) -> (Idp, Replicas, String) {
    let dir = tempfile::tempdir().unwrap();
    let (proc, issuer) = oidc::start_idp(dir.path());
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, "replica-test-client-secret\n").unwrap();
    let section = format!(
        "\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"secondkey-web\"\nclient_secret_file = \"{}\"\n{oidc}",
        secret.display()
    );
    let r = replicas_with(2, &format!("{section}{extra}"));
    let idp = Idp {
        _proc: proc,
        _dir: dir,
    };
    (idp, r, section)
}

fn copy_keys(from: &Gateway, to: &Path) {
    let src = from.dir.join("data/keys");
    let dst = to.join("data/keys");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
}

fn long_poll(url: &str, id: &str, who: &str, secs: u64) -> Value {
    let r = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(secs + 30))
        .build()
        .get(&format!("{url}/v1/requests/{id}?wait={secs}"))
        .set("Authorization", &format!("Bearer {}", token_of(who)))
        .call()
        .unwrap();
    r.into_json().unwrap()
}

fn checkpoint(g: &Gateway) -> String {
    g.text("/v1/log/checkpoint")
}

/// Which of `r.gws` holds the background lease, read from the store (the
/// holder's id names its process id); waits until a running one does.
fn leader(r: &Replicas) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = r.cluster.superuser_sql(
            "sk",
            "SELECT value FROM records WHERE ns = 'lease' AND key = 'background'",
        );
        let pid = serde_json::from_str::<Value>(v.trim()).ok().and_then(|v| {
            let holder = v["holder"].as_str()?.strip_prefix("replica-")?.to_string();
            holder.split('-').next()?.parse::<u32>().ok()
        });
        let found = r
            .gws
            .iter()
            .position(|g| pid.is_some() && g.child.as_ref().map(|c| c.id()) == pid);
        if let Some(i) = found {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no running replica holds the lease: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A held export (reviewed by `data-owners`) that no other call submits.
fn held_export(g: &Gateway, n: usize) -> String {
    let mut action = export_action("postgres://analytics/public.customers");
    action["params"]["statement"] = json!(format!("COPY customers_{n} TO STDOUT"));
    let v = g.submit("agent:report-bot", &action);
    assert_eq!(v["decision"], "review", "{v}");
    v["request"]["id"].as_str().unwrap().to_string()
}

/// `n` replicas posting requests for `data-owners` to the Slack channel
/// `C1` of the fake Slack at `api`.
fn slack_replicas(n: usize, api: &str) -> Replicas {
    replicas_full(
        n,
        &format!(
            "\n[slack]\nbot_token_env = \"SK_SLACK_BOT\"\nsigning_secret_env = \"SK_SLACK_SIGNING\"\napi_base = \"{api}\"\n\
             [[routing.routes]]\ngroup = \"data-owners\"\nslack_channel = \"C1\"\n"
        ),
        &[
            ("SK_SLACK_BOT", fakes::SLACK_BOT_TOKEN),
            ("SK_SLACK_SIGNING", fakes::SLACK_SIGNING_SECRET),
        ],
    )
}

/// How many times the request `id` was posted to Slack.
fn posts_of(cs: &[fakes::Call], id: &str) -> usize {
    cs.iter()
        .filter(|c| c.path == "chat.postMessage" && c.body.to_string().contains(id))
        .count()
}

/// `sslmode=disable` is for a Unix socket or loopback only: to any other
/// host the store's traffic would cross the network in clear, so the URL
/// is refused before anything connects (no cluster is needed to see it).
#[test]
fn sslmode_disable_to_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("store.pw");
    std::fs::write(&pwfile, "pw\n").unwrap();
    for (url, refused) in [
        ("postgres://sk@db.example:5432/sk?sslmode=disable", true),
        ("postgres://sk@192.0.2.10/sk?sslmode=disable", true),
        (
            "postgres://sk@localhost/sk?sslmode=disable&hostaddr=192.0.2.10",
            true,
        ),
        // Loopback: allowed (it fails later, for want of a server there).
        ("postgres://sk@127.0.0.1:1/sk?sslmode=disable", false),
        ("postgres://sk@[::1]:1/sk?sslmode=disable", false),
        ("postgres://sk@localhost:1/sk?sslmode=disable", false),
    ] {
        let (_, code, err) = migrate_with_store(dir.path(), url, &pwfile);
        assert_ne!(code, 0, "{url}: {err}");
        assert_eq!(
            err.contains("config key `store.url`")
                && err.contains("sslmode=disable is for a Unix socket or loopback only"),
            refused,
            "{url}: {err}"
        );
        if !refused {
            // `store migrate` decides no action: its error does not say
            // that one was not authorized.
            assert!(
                err.contains("cannot reach PostgreSQL") && !err.contains("action"),
                "{url}: {err}"
            );
        }
    }
}

/// Writes a configuration in `dir` whose `[store]` is `url` with the
/// password in `pwfile`, and runs `store migrate` on it: the
/// configuration's path, the exit code and standard error.
fn migrate_with_store(dir: &Path, url: &str, pwfile: &Path) -> (std::path::PathBuf, i32, String) {
    let extra = format!(
        "\n[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n",
        pwfile.display()
    );
    let cfg = common::write_config_extra(dir, common::free_port(), POLICIES, &extra);
    let (code, _, err) = run_cli(
        &["store", "migrate", "--config", cfg.to_str().unwrap()],
        "http://127.0.0.1:1",
        None,
    );
    (cfg, code, err)
}

/// A store that cannot be reached says which store and why, not only at
/// which step it failed: a refused connection; a server that offers no
/// TLS where `verify-full` (the default) needs it.
#[test]
fn an_unreachable_store_names_the_cause() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("store.pw");
    std::fs::write(&pwfile, "pw\n").unwrap();
    // Answers PostgreSQL's SSLRequest with "no TLS here", as a server
    // without `ssl = on` does.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in plain.incoming() {
            let Ok(mut s) = s else { return };
            let mut ssl_request = [0u8; 8];
            if s.read_exact(&mut ssl_request).is_ok() {
                let _ = s.write_all(b"N");
            }
        }
    });
    for (url, cause) in [
        (
            format!("postgres://sk@127.0.0.1:{port}/sk"),
            "server does not support TLS",
        ),
        (
            "postgres://sk@127.0.0.1:1/sk?sslmode=disable".to_string(),
            "refused",
        ),
    ] {
        let (cfg, code, err) = migrate_with_store(dir.path(), &url, &pwfile);
        assert_ne!(code, 0, "{url}: {err}");
        assert!(
            err.contains("cannot reach PostgreSQL") && err.contains(cause),
            "{url}: names {cause:?}: {err}"
        );
        // An auditor's export names the store it could not open (the
        // database, not the data directory that holds only keys), and
        // speaks of no action: it decides none.
        let bundle = dir.path().join("bundle");
        let (code, _, err) = run_cli(
            &[
                "log",
                "export",
                "--config",
                cfg.to_str().unwrap(),
                "--bundle",
                bundle.to_str().unwrap(),
            ],
            "http://127.0.0.1:1",
            None,
        );
        assert_ne!(code, 0, "{url}: {err}");
        assert!(
            err.contains(&format!("opening the PostgreSQL store {url}"))
                && err.contains(cause)
                && !err.contains("action"),
            "{url}: {err}"
        );
    }
}

/// docs/replicas.md: "a replica started with other keys refuses to start
/// and says which file to replace" — each file that differs, by its path,
/// and only those.
#[test]
fn a_replica_with_other_keys_refuses_to_start_and_names_the_files() {
    let r = replicas(1);
    let d = tempfile::tempdir().unwrap();
    let pwfile = d.path().join("store.pw");
    std::fs::write(&pwfile, format!("{APP_PASSWORD}\n")).unwrap();
    let extra = store_section(&r.cluster, &pwfile);
    let cfg = common::write_config_extra(d.path(), common::free_port(), POLICIES, &extra);
    let keys = d.path().join("data/keys");
    let path_of = |f: &str| keys.join(f).display().to_string();

    // Started with keys of its own (made at this start): all three differ.
    let err = common::serve_refusal(&cfg, &[]).unwrap();
    assert!(err.contains("keys differ"), "{err}");
    for f in ["log.key", "grant.key", "session.key"] {
        assert!(err.contains(&path_of(f)), "names {f}: {err}");
    }

    // The log and grant keys copied, the session key still its own.
    for f in ["log.key", "grant.key"] {
        std::fs::copy(r.gws[0].dir.join("data/keys").join(f), keys.join(f)).unwrap();
    }
    let err = common::serve_refusal(&cfg, &[]).unwrap();
    assert!(err.contains(&path_of("session.key")), "{err}");
    for f in ["log.key", "grant.key"] {
        assert!(!err.contains(&path_of(f)), "{f} is the same: {err}");
    }

    // All three copied: it starts, and serves the same log.
    copy_keys(&r.gws[0], d.path());
    let b = Gateway::start_full(d.path(), POLICIES, "", &extra, &[]);
    common::wait_until("both serve the same checkpoint", || {
        checkpoint(&b) == checkpoint(&r.gws[0])
    });
}

#[test]
fn requests_made_while_the_leader_is_dead_are_posted_once_by_the_next() {
    let (api, slack) = fakes::slack();
    let mut r = slack_replicas(3, &api);
    // While the leader is up, a request is posted once.
    let before = held_export(&r.gws[0], 0);
    fakes::wait_for(&slack, "the first request posted", |cs| {
        (posts_of(cs, &before) > 0).then_some(())
    });

    // kill -9 of the leader; its lease stays live for up to 5 s, so the
    // survivors do not lead yet when these requests are made on them.
    let l = leader(&r);
    r.gws[l].kill();
    let ids: Vec<String> = (0..r.gws.len())
        .filter(|i| *i != l)
        .map(|i| held_export(&r.gws[i], i + 1))
        .collect();
    // The survivor that takes the lease over posts both.
    for id in &ids {
        fakes::wait_for(&slack, "a request made in the gap posted", |cs| {
            (posts_of(cs, id) > 0).then_some(())
        });
    }
    let next = leader(&r);
    assert_ne!(next, l);
    // And nothing twice (another catch-up, a change seen on another
    // replica, or the takeover racing the event do not post again).
    std::thread::sleep(Duration::from_secs(3));
    let calls = slack.lock().unwrap().clone();
    for id in ids.iter().chain([&before]) {
        assert_eq!(posts_of(&calls, id), 1, "{id} posted once: {calls:#?}");
    }
}

/// A clean hand-over does not post twice: the holder is stopped (SIGTERM)
/// while its Slack post is on its way; it waits for Slack's answer and
/// records the message before it lets the lease go, so the replica that
/// takes over finds the request posted.
#[test]
fn a_post_in_flight_at_a_clean_hand_over_is_posted_once() {
    // Slack takes 2 s to answer a post: the holder is stopped meanwhile.
    let (api, slack) = fakes::slack_posting_in(Duration::from_secs(2));
    let mut r = slack_replicas(2, &api);
    let l = leader(&r);
    let id = held_export(&r.gws[l], 0);
    fakes::wait_for(&slack, "the holder's post on its way", |cs| {
        (posts_of(cs, &id) > 0).then_some(())
    });
    r.gws[l].stop();
    let next = leader(&r);
    assert_ne!(next, l);
    // The new holder has caught up from the store; give a second post time
    // to arrive, were there one.
    std::thread::sleep(Duration::from_secs(4));
    let calls = slack.lock().unwrap().clone();
    assert_eq!(posts_of(&calls, &id), 1, "{id} posted once: {calls:#?}");
    // And recorded where it was posted, so no later holder posts it either.
    let recorded = r.cluster.superuser_sql(
        "sk",
        &format!("SELECT value FROM records WHERE ns = 'channels.msg' AND key = '{id}'"),
    );
    let m: Value = serde_json::from_str(recorded.trim())
        .unwrap_or_else(|e| panic!("the message of {id} is recorded ({e}): {recorded:?}"));
    assert_eq!(m["slack"][0]["channel"], "C1", "{m}");
}

#[test]
fn a_two_person_review_walks_across_three_replicas() {
    let (hook, deliveries) = common::webhook_receiver();
    let r = replicas_with(
        3,
        &format!(
            "\n[[sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{hook}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
        ),
    );
    let (a, b, c) = (&r.gws[0], &r.gws[1], &r.gws[2]);

    // The agent asks on C and waits there.
    let sub = c.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.customers"),
    );
    assert_eq!(sub["decision"], "review", "{sub}");
    let id = sub["request"]["id"].as_str().unwrap().to_string();
    let digest = sub["digest"].as_str().unwrap().to_string();
    let (url, id2) = (c.url.clone(), id.clone());
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let v = long_poll(&url, &id2, "agent:report-bot", 60);
        (v, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    // Reviewer one on A, reviewer two on B.
    let (s, v) = a.review("user:bob", &id, "approve");
    assert_eq!((s, v["state"].as_str()), (200, Some("pending")), "{v}");
    // The same reviewer again, on another replica: still one person.
    let (s, v) = b.review("user:bob", &id, "approve");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("duplicate_reviewer"))
    );
    let (s, v) = b.review("user:dave", &id, "approve");
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");
    let (waited, elapsed) = waiter.join().unwrap();
    assert_eq!(waited["state"], "approved", "{waited}");
    assert!(
        elapsed < Duration::from_secs(55),
        "C's long-poll was woken by B's decision, not its timeout"
    );
    // A decided request cannot be decided again, on any replica.
    let (s, _) = c.review("user:erin", &id, "deny");
    assert!(s == 404 || s == 409, "{s}");

    // The grant, consumed on all three replicas at once: exactly one wins.
    let grant = waited["grant"].clone();
    assert!(grant.is_string(), "{waited}");
    let wins: Vec<_> = [a, b, c]
        .into_iter()
        .flat_map(|g| {
            let (url, grant, digest) = (g.url.clone(), grant.clone(), digest.clone());
            (0..4).map(move |_| {
                let (url, grant, digest) = (url.clone(), grant.clone(), digest.clone());
                std::thread::spawn(move || {
                    let res = ureq::post(&format!("{url}/v1/grants/consume"))
                        .set(
                            "Authorization",
                            &format!("Bearer {}", token_of("agent:report-bot")),
                        )
                        .send_json(json!({"grant": grant, "digest": digest}));
                    match res {
                        Ok(r) => r.status(),
                        Err(ureq::Error::Status(s, _)) => s,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(wins.iter().filter(|s| **s == 200).count(), 1, "{wins:?}");
    assert_eq!(wins.iter().filter(|s| **s == 409).count(), 11, "{wins:?}");

    // One log: every replica signs the same checkpoint.
    let cps: Vec<String> = [a, b, c].iter().map(|g| checkpoint(g)).collect();
    assert_eq!(cps[0], cps[1]);
    assert_eq!(cps[1], cps[2]);
    let entries = common::export_log(a).2;
    let events: Vec<&str> = entries
        .iter()
        .filter(|e| e.to_string().contains(&id))
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "review.submitted").count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["event"] == "grant.consumed")
            .count(),
        1
    );

    // The webhook sink runs on one replica (the lease holder): every entry
    // arrives, each once.
    let mut seen = std::collections::BTreeMap::<u64, usize>::new();
    let size = entries.len() as u64;
    receive_until(&deliveries, &mut seen, size);
    std::thread::sleep(Duration::from_secs(2));
    while let Ok((_, body)) = deliveries.try_recv() {
        *seen.entry(body["index"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, size, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "delivered twice: {seen:?}");

    // Two replicas go away, the lease holder among them or not: the one
    // left takes over (within the lease's 5 s) from the cursor in the
    // store — nothing is left out.
    let Replicas {
        cluster: _cluster,
        mut gws,
        _dirs,
    } = r;
    let c = gws.pop().unwrap();
    drop(gws);
    for _ in 0..3 {
        let v = c.submit("agent:report-bot", &read_action());
        assert_eq!(v["decision"], "allow", "{v}");
    }
    let size = common::export_log(&c).2.len() as u64;
    receive_until(&deliveries, &mut seen, size);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..size).collect::<Vec<_>>(),
        "no entry left out"
    );
}

/// Counts webhook deliveries by log index until every index below `size`
/// has arrived (a minute at most).
fn receive_until(
    rx: &std::sync::mpsc::Receiver<(String, Value)>,
    seen: &mut std::collections::BTreeMap<u64, usize>,
    size: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..size).any(|i| !seen.contains_key(&i)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, body) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("entries below {size} did not all arrive: {seen:?}"));
        *seen.entry(body["index"].as_u64().unwrap()).or_default() += 1;
    }
}

fn haproxy(dir: &Path, port: u16, backends: &[&Gateway]) -> Child {
    let mut cfg = format!(
        "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 90s\n  timeout server 90s\n  retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n  default-server inter 500ms fall 2 rise 2\n"
    );
    for (i, g) in backends.iter().enumerate() {
        let addr = g.url.trim_start_matches("http://");
        cfg.push_str(&format!("  server r{i} {addr} check\n"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt-get install -y haproxy)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "haproxy did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a client got acknowledged: a grant id and the digest it is for.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

fn grant_id(grant: &str) -> String {
    use base64::Engine as _;
    let claims = grant.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().unwrap_or_default().to_string()
}

#[test]
fn kill_9_of_a_replica_and_postgres_stopped_under_load_lose_nothing_acknowledged() {
    let mut r = replicas(3);
    let hdir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let lb = format!("http://127.0.0.1:{port}");
    let _haproxy = Kill(haproxy(
        hdir.path(),
        port,
        &[&r.gws[0], &r.gws[1], &r.gws[2]],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let consumed = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0u32));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (lb, stop, acked, consumed, refused) = (
                lb.clone(),
                stop.clone(),
                acked.clone(),
                consumed.clone(),
                refused.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let auth = format!("Bearer {}", token_of("agent:report-bot"));
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let mut action = read_action();
                    action["params"]["statement"] = json!(format!("SELECT {n}, {i}"));
                    let res = agent
                        .post(&format!("{lb}/v1/actions"))
                        .set("Authorization", &auth)
                        .send_json(action);
                    let v: Value = match res {
                        Ok(r) => r.into_json().unwrap(),
                        // A replica died mid-request, or the store is down:
                        // the client retries (through the balancer).
                        Err(_) => {
                            *refused.lock().unwrap() += 1;
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    let grant = v["grant"].as_str().unwrap().to_string();
                    let digest = v["digest"].as_str().unwrap().to_string();
                    acked
                        .lock()
                        .unwrap()
                        .push((grant_id(&grant), digest.clone()));
                    // Use it; retried until the answer is known (200, or
                    // 409 when an earlier try took effect).
                    loop {
                        let res = agent
                            .post(&format!("{lb}/v1/grants/consume"))
                            .set("Authorization", &auth)
                            .send_json(json!({"grant": grant, "digest": digest}));
                        match res {
                            Ok(_) => {
                                consumed.lock().unwrap().push(grant_id(&grant));
                                break;
                            }
                            Err(ureq::Error::Status(409, _)) => break,
                            // The outage, felt while using the grant.
                            Err(_) => {
                                *refused.lock().unwrap() += 1;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "load did not progress");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(40);
    // kill -9 of one replica in the middle of it.
    r.gws[1].kill();
    let at_kill = acked.lock().unwrap().len();
    wait_for(at_kill + 40);
    // PostgreSQL stops: every replica refuses (fails closed)...
    r.cluster.stop_server();
    std::thread::sleep(Duration::from_millis(500));
    let during = acked.lock().unwrap().len();
    for g in [&r.gws[0], &r.gws[2]] {
        let (s, v) = g.call(
            "POST",
            "/v1/actions",
            Some("agent:report-bot"),
            Some(&read_action()),
        );
        assert!(s >= 500, "with the store down the answer is no: {s} {v}");
        assert!(v.get("grant").is_none(), "{v}");
    }
    std::thread::sleep(Duration::from_secs(1));
    // (nothing was acknowledged while it was down, beyond what was in flight)
    let still = acked.lock().unwrap().len();
    assert!(still <= during + 4, "{during} → {still}");
    // ...and recovers when it returns.
    r.cluster.start_server();
    wait_for(still + 40);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(*refused.lock().unwrap() > 0, "the outages were felt");

    // Nothing acknowledged is lost; nothing ran twice; the log verifies.
    let entries = common::export_log(&r.gws[0]).2;
    let text: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    let acked = acked.lock().unwrap().clone();
    for (gid, digest) in &acked {
        assert!(
            text.iter()
                .any(|t| t.contains(gid.as_str()) && t.contains(digest.as_str())),
            "acknowledged grant {gid} is in the log"
        );
    }
    let consumed = consumed.lock().unwrap().clone();
    let mut uses = std::collections::HashMap::<&str, usize>::new();
    for e in entries.iter().filter(|e| e["event"] == "grant.consumed") {
        for (gid, _) in &acked {
            if e.to_string().contains(gid.as_str()) {
                *uses.entry(gid.as_str()).or_default() += 1;
            }
        }
    }
    assert!(
        uses.values().all(|n| *n == 1),
        "no grant used twice: {uses:?}"
    );
    for gid in &consumed {
        assert_eq!(uses.get(gid.as_str()), Some(&1), "{gid}");
    }
    // Replicas still up sign the same checkpoint.
    assert_eq!(checkpoint(&r.gws[0]), checkpoint(&r.gws[2]));
}

/// Sessions are cookies any replica accepts (one session key); signing out
/// on one replica must end the session on the others too, not only in the
/// memory of the replica that took the sign-out.
#[test]
fn signing_out_on_one_replica_ends_the_session_on_the_others() {
    use oidc::{csrf_of, get_page, post_form, sign_in};
    let (_idp, r, _) = oidc_replicas("", "");
    let (a, b) = (&r.gws[0], &r.gws[1]);
    let bob = sign_in(&a.url, "bob", "/inbox");
    let page = get_page(&b.url, &bob.session, "/inbox");
    assert_eq!(page.status, 200, "any replica accepts the session");
    let csrf = csrf_of(&page.body);
    let out = post_form(&a.url, &bob.session, "/logout", &[("csrf", &csrf)], None);
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(get_page(&a.url, &bob.session, "/inbox").status, 303);
    assert_eq!(
        get_page(&b.url, &bob.session, "/inbox").status,
        303,
        "signed out on A, signed out on B"
    );
    // Another session of the same person is untouched.
    let again = sign_in(&b.url, "bob", "/inbox");
    assert_eq!(get_page(&a.url, &again.session, "/inbox").status, 200);
}

/// Ending all of one person's web sessions on one replica ends them on
/// every replica at once (each web request reads the record through), and
/// a new sign-in on any replica works.
#[test]
fn revoking_a_person_s_sessions_on_one_replica_ends_them_on_the_others() {
    use oidc::{events, get_page, next_event, sign_in};
    use sha2::Digest;
    let (_idp, r, _) = oidc_replicas(
        "",
        &format!(
            "\n[[principals]]\nid = \"service:offboarding\"\ngroups = [\"security\"]\ntoken_sha256 = \"{}\"\n",
            hex::encode(sha2::Sha256::digest(token_of("service:offboarding").as_bytes()))
        ),
    );
    let (a, b) = (&r.gws[0], &r.gws[1]);
    let bob = sign_in(&a.url, "bob", "/inbox");
    let alice = sign_in(&b.url, "alice", "/inbox");
    for g in [a, b] {
        assert_eq!(get_page(&g.url, &bob.session, "/inbox").status, 200);
    }
    // Bob watches a request on B.
    let held = b.submit(
        "agent:report-bot",
        &export_action("postgres://analytics/public.live"),
    );
    let id = held["request"]["id"].as_str().unwrap();
    let live = events(
        &b.url,
        &format!("/requests/{id}/events"),
        Some(&bob.session),
        None,
    );
    let first = next_event(&live, 10).unwrap().expect("the first state");
    assert_eq!(first["state"], "pending");
    let (s, v) = a.call(
        "POST",
        "/v1/sessions/revoke",
        Some("service:offboarding"),
        Some(&json!({"user": "user:bob"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"], "user:bob");
    for g in [a, b] {
        assert_eq!(
            get_page(&g.url, &bob.session, "/inbox").status,
            303,
            "revoked on A, signed out on {}",
            g.url
        );
        assert_eq!(get_page(&g.url, &alice.session, "/inbox").status, 200);
    }
    assert_eq!(
        next_event(&live, 30),
        Ok(None),
        "revoked on A, bob's open stream on B ends"
    );
    let again = sign_in(&b.url, "bob", "/inbox");
    for g in [a, b] {
        assert_eq!(get_page(&g.url, &again.session, "/inbox").status, 200);
    }
}

/// A sign-in keeps no state in the replica that started it (it travels
/// sealed in the browser's login cookie), so `/login` and `/auth/` need no
/// sticky routing: the callback completes on any replica with the same
/// session key, once across all of them, and on no gateway with another key.
#[test]
fn a_sign_in_started_on_one_replica_completes_on_another() {
    use oidc::{callback_at, consent, cookie_value, get_page, start_sign_in};
    // Behind a balancer every replica has the same public callback URL;
    // the test hands the provider's redirect to the replica it chooses.
    let (_idp, r, section) =
        oidc_replicas("redirect_url = \"http://127.0.0.1:9/auth/callback\"\n", "");
    let (a, b) = (&r.gws[0], &r.gws[1]);
    let (cookie, authorize) = start_sign_in(&a.url, "/inbox");
    let callback = consent(&authorize, "bob");

    // A gateway with a session key of its own cannot open the cookie.
    let alone = tempfile::tempdir().unwrap();
    let other = Gateway::start_extra(alone.path(), POLICIES, &section);
    let refused = callback_at(&other.url, &callback, Some(&cookie));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(cookie_value(&refused.cookies, "sk_session").is_none());

    // Started on A, completed on B; the session works on both.
    let done = callback_at(&b.url, &callback, Some(&cookie));
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/inbox"));
    let session = cookie_value(&done.cookies, "sk_session").expect("a session");
    for g in [a, b] {
        assert_eq!(get_page(&g.url, &session, "/inbox").status, 200);
    }
    // Replayed on either replica: refused, no session.
    for g in [a, b] {
        let again = callback_at(&g.url, &callback, Some(&cookie));
        assert_eq!(again.status, 403, "{}", again.body);
        assert!(cookie_value(&again.cookies, "sk_session").is_none());
    }
}

#[test]
fn a_request_webhook_is_delivered_by_one_replica() {
    let (hook_url, hooks) = fakes::webhook_receiver();
    let r = replicas_full(
        2,
        &format!(
            "\n[[webhooks]]\nname = \"ops\"\nurl = \"{hook_url}\"\nsecret_env = \"SK_HOOK\"\n"
        ),
        &[("SK_HOOK", fakes::HOOK_SECRET)],
    );
    // Two requests, one made on each replica.
    let ids = [held_export(&r.gws[0], 1), held_export(&r.gws[1], 2)];
    let created = |cs: &[fakes::Call], id: &str| {
        cs.iter()
            .any(|c| c.body["type"] == "request.created" && c.body["data"]["request"] == id)
    };
    for id in &ids {
        fakes::wait_for(&hooks, "request.created delivered", |cs| {
            created(cs, id).then_some(())
        });
    }
    // Time for a second replica's copy to arrive, were there one.
    std::thread::sleep(Duration::from_secs(3));
    let calls = hooks.lock().unwrap().clone();
    // The receiver answers 500 to the very first delivery (it is retried
    // with the same id); every delivery it accepted is a different event.
    let mut accepted = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls[1..] {
        let id = c.headers["webhook-id"].clone();
        *accepted.entry(id).or_default() += 1;
    }
    assert!(
        accepted.values().all(|n| *n == 1),
        "each webhook id delivered once: {accepted:?}"
    );
    assert!(
        accepted.contains_key(&calls[0].headers["webhook-id"]),
        "the refused delivery was sent again"
    );
}

/// Stops `g` and writes, in directory `dir` of its data directory, the
/// cursor file `<name>.cursor` an earlier version kept on a shared store
/// too, saying `next`; returns that directory.
fn stop_with_file_cursor(g: &mut Gateway, dir: &str, name: &str, next: u64) -> std::path::PathBuf {
    g.stop();
    let files = g.dir.join("data").join(dir);
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join(format!("{name}.cursor")), format!("{next}\n")).unwrap();
    files
}

#[test]
fn a_webhook_upgraded_from_its_file_cursor_sends_what_the_file_had_not() {
    let (hook_url, hooks) = fakes::webhook_receiver();
    let mut r = replicas(1);
    let g = &mut r.gws[0];
    // An earlier version, its cursor in a file, delivered the first
    // request's creation; two more were made before the upgrade.
    let sent = held_export(g, 1);
    let missed = [held_export(g, 2), held_export(g, 3)];
    let entries = g.log_entries();
    let created_at = |id: &str| {
        let e = entries
            .iter()
            .find(|e| e["event"] == "request.created" && e["subjects"]["request"] == id)
            .expect("its request.created entry");
        e["index"].as_u64().unwrap()
    };
    let cursor = created_at(&missed[0]);
    assert!(created_at(&sent) < cursor);
    let files = stop_with_file_cursor(g, "channels/webhooks", "ops", cursor);
    // The upgrade: the same data directory, the webhook configured.
    let port = common::free_port();
    let extra = format!(
        "{}\n[[webhooks]]\nname = \"ops\"\nurl = \"{hook_url}\"\nsecret_env = \"SK_HOOK\"\n",
        store_section(&r.cluster, &g.dir.join("store.pw"))
    );
    g.config = common::write_config_extra(&g.dir, port, POLICIES, &extra);
    g.url = format!("http://127.0.0.1:{port}");
    g.env
        .push(("SK_HOOK".to_string(), fakes::HOOK_SECRET.to_string()));
    g.spawn();
    let created = |cs: &[fakes::Call], id: &str| {
        cs.iter()
            .skip(1) // the receiver refuses the first delivery
            .filter(|c| c.body["type"] == "request.created" && c.body["data"]["request"] == id)
            .count()
    };
    for id in &missed {
        fakes::wait_for(&hooks, "a missed request.created delivered", |cs| {
            (created(cs, id) > 0).then_some(())
        });
    }
    // The store owns the cursor now: a restart does not read the file
    // again (put back at 0, it would re-send the whole log).
    std::fs::write(files.join("ops.cursor"), "0\n").unwrap();
    g.stop();
    g.spawn();
    let later = held_export(g, 4);
    fakes::wait_for(&hooks, "the next request.created delivered", |cs| {
        (created(cs, &later) > 0).then_some(())
    });
    // Time for a duplicate to arrive, were there one.
    std::thread::sleep(Duration::from_secs(3));
    let calls = hooks.lock().unwrap().clone();
    assert_eq!(created(&calls, &sent), 0, "delivered before the upgrade");
    for id in missed.iter().chain([&later]) {
        assert_eq!(created(&calls, id), 1, "{id} once: {calls:#?}");
    }
    let mut accepted = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls[1..] {
        *accepted.entry(c.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert!(
        accepted.values().all(|n| *n == 1),
        "each webhook id delivered once: {accepted:?}"
    );
}

#[test]
fn a_sink_upgraded_from_its_file_cursor_sends_what_the_file_had_not() {
    let (hook, deliveries) = common::webhook_receiver();
    let mut r = replicas(1);
    let g = &mut r.gws[0];
    // An earlier version, its cursor in a file, delivered the log up to
    // `cursor`; more was appended before the upgrade.
    held_export(g, 1);
    let cursor = g.log_entries().len() as u64;
    held_export(g, 2);
    held_export(g, 3);
    let files = stop_with_file_cursor(g, "sinks", "siem", cursor);
    // The upgrade: the same data directory, the sink configured.
    let port = common::free_port();
    let sink = format!(
        "\n[[sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{hook}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let store = store_section(&r.cluster, &g.dir.join("store.pw"));
    g.config = common::write_config_extra(&g.dir, port, POLICIES, &format!("{store}{sink}"));
    g.url = format!("http://127.0.0.1:{port}");
    g.spawn();
    let mut seen = std::collections::BTreeMap::<u64, usize>::new();
    let receive = |seen: &mut std::collections::BTreeMap<u64, usize>, size: u64| {
        common::wait_until("the log's end delivered", || {
            while let Ok((_, body)) = deliveries.try_recv() {
                *seen.entry(body["index"].as_u64().unwrap()).or_default() += 1;
            }
            seen.contains_key(&(size - 1))
        })
    };
    let size = g.log_entries().len() as u64;
    receive(&mut seen, size);
    // The store owns the cursor now: a restart does not read the file
    // again (put back at 0, it would re-send the whole log).
    std::fs::write(files.join("siem.cursor"), "0\n").unwrap();
    g.stop();
    g.spawn();
    held_export(g, 4);
    let size = g.log_entries().len() as u64;
    receive(&mut seen, size);
    // Time for a duplicate to arrive, were there one.
    std::thread::sleep(Duration::from_secs(3));
    let size = g.log_entries().len() as u64;
    receive(&mut seen, size);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (cursor..size).collect::<Vec<_>>(),
        "what the file had delivered is not sent again, the rest is"
    );
    assert!(seen.values().all(|n| *n == 1), "delivered twice: {seen:?}");

    // A file cursor past this store's log end refuses the start, naming it.
    g.stop();
    let other = sink.replace("\"siem\"", "\"siem2\"");
    std::fs::write(files.join("siem2.cursor"), format!("{}\n", size + 100)).unwrap();
    g.config = common::write_config_extra(&g.dir, port, POLICIES, &format!("{store}{sink}{other}"));
    let out = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("siem2.cursor") && err.contains("past the end") && err.contains("delete it"),
        "{err}"
    );
}

/// Once the store owns a sink's or a webhook's cursor, the file cursor an
/// earlier version left behind is not read again: gone corrupt, it does not
/// stop the start, and delivery goes on from the store's cursor.
#[test]
fn a_leftover_file_cursor_is_not_read_once_the_store_owns_the_cursor() {
    let (sink_port, deliveries) = common::webhook_receiver();
    let (hook_url, hooks) = fakes::webhook_receiver();
    let mut r = replicas(1);
    let g = &mut r.gws[0];
    // An earlier version, its cursors in files, delivered the log up to
    // `cursor`; a request was made after.
    held_export(g, 1);
    let cursor = g.log_entries().len() as u64;
    let missed = held_export(g, 2);
    let sinks = stop_with_file_cursor(g, "sinks", "siem", cursor);
    let hooks_dir = g.dir.join("data").join("channels").join("webhooks");
    std::fs::create_dir_all(&hooks_dir).unwrap();
    std::fs::write(hooks_dir.join("ops.cursor"), format!("{cursor}\n")).unwrap();
    // The upgrade: both start from their files.
    let port = common::free_port();
    let extra = format!(
        "{}\n[[sinks]]\nname = \"siem\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{sink_port}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         \n[[webhooks]]\nname = \"ops\"\nurl = \"{hook_url}\"\nsecret_env = \"SK_HOOK\"\n",
        store_section(&r.cluster, &g.dir.join("store.pw"))
    );
    g.config = common::write_config_extra(&g.dir, port, POLICIES, &extra);
    g.url = format!("http://127.0.0.1:{port}");
    g.env
        .push(("SK_HOOK".to_string(), fakes::HOOK_SECRET.to_string()));
    g.spawn();
    let mut seen = std::collections::BTreeSet::<u64>::new();
    let receive = |seen: &mut std::collections::BTreeSet<u64>, size: u64| {
        common::wait_until("the log's end delivered", || {
            while let Ok((_, body)) = deliveries.try_recv() {
                seen.insert(body["index"].as_u64().unwrap());
            }
            seen.contains(&(size - 1))
        })
    };
    let created = |id: &str| {
        fakes::wait_for(&hooks, "a request.created delivered", |cs| {
            cs.iter()
                .skip(1) // the receiver refuses the first delivery
                .any(|c| c.body["type"] == "request.created" && c.body["data"]["request"] == id)
                .then_some(())
        })
    };
    receive(&mut seen, g.log_entries().len() as u64);
    created(&missed);
    // The store owns both cursors now. Their leftover files go corrupt.
    std::fs::write(sinks.join("siem.cursor"), "siem was here\n").unwrap();
    std::fs::write(hooks_dir.join("ops.cursor"), "ops was here\n").unwrap();
    g.stop();
    g.spawn();
    let later = held_export(g, 4);
    let size = g.log_entries().len() as u64;
    receive(&mut seen, size);
    created(&later);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        (cursor..size).collect::<Vec<_>>(),
        "the sink went on from the store's cursor"
    );
}

#[test]
fn a_replica_stopped_cleanly_hands_the_lease_over_at_once() {
    let mut r = replicas(3);
    // Twice: the leader stops (SIGTERM), and another replica takes the
    // lease at its next renewal (every 0.5 s), long before the 5 s a
    // lease lives unrenewed — the stopped one gave it up.
    for _ in 0..2 {
        let l = leader(&r);
        r.gws[l].stop();
        let stopped = Instant::now();
        let next = leader(&r);
        let took = stopped.elapsed();
        assert_ne!(next, l);
        assert!(
            took < Duration::from_secs(4),
            "the lease was handed over after {took:?}, not released at shutdown"
        );
    }
}

/// Whether `g` says (on `/healthz`) that it holds the background lease;
/// `None` if it does not say.
fn lead_of(g: &Gateway) -> Option<bool> {
    let (_, v) = g.call("GET", "/healthz", None, None);
    v["replica"]["leader"].as_bool()
}

fn leads(g: &Gateway) -> bool {
    lead_of(g) == Some(true)
}

/// A holder whose lease renewal hangs (PostgreSQL frozen: connections open,
/// nothing answers) stands down instead of running background work on
/// while its lease lapses and another replica may take it, and `/healthz`
/// reports the stalled store; once PostgreSQL answers again, a replica
/// leads again and every replica is healthy.
#[test]
fn a_holder_whose_renewal_hangs_stands_down() {
    // One Tokio worker, as on a 2-core machine: a read stuck on the frozen
    // store must not take it (every other request would hang behind it).
    let r = replicas_full(2, "", &[("TOKIO_WORKER_THREADS", "1")]);
    common::wait_until("a replica to hold the lease", || r.gws.iter().any(leads));
    let holder = r.gws.iter().position(leads).unwrap();
    // Resumed however the test ends, so the cluster can shut down.
    struct Resume<'a>(&'a Cluster);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            self.0.resume_server();
        }
    }
    r.cluster.pause_server();
    let resume = Resume(&r.cluster);
    // A reader waiting on the frozen store, on each replica (the
    // checkpoint as published reads the witnesses' latest from the store).
    let readers: Vec<_> = r
        .gws
        .iter()
        .map(|g| {
            let url = format!("{}/v1/log/checkpoint", g.url);
            std::thread::spawn(move || {
                let _ = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .get(&url)
                    .set("Authorization", &format!("Bearer {}", token_of("user:bob")))
                    .call();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    common::wait_until("the holder to stand down", || {
        lead_of(&r.gws[holder]) == Some(false)
    });
    // Nothing has failed, but no commit comes back: /healthz says so (after
    // 10 s), so a balancer takes the replica out.
    let stalled = |g: &Gateway| {
        let (s, v) = g.call("GET", "/healthz", None, None);
        s == 503
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not answer"))
    };
    common::wait_until("the stalled store reported", || stalled(&r.gws[holder]));
    // The other replica answers too, its reader still waiting.
    let other = &r.gws[1 - holder];
    let (s, _) = other.call("GET", "/healthz", None, None);
    assert!(s == 200 || s == 503, "{s}");
    drop(resume);
    for t in readers {
        t.join().unwrap();
    }
    common::wait_until("a replica to lead again", || r.gws.iter().any(leads));
    common::wait_until("every replica healthy again", || {
        r.gws
            .iter()
            .all(|g| g.call("GET", "/healthz", None, None).0 == 200)
    });
}

/// Witness submissions come from the lease holder only — the final one at
/// shutdown too: a replica that does not hold the lease sends a witness
/// nothing when it stops.
#[test]
fn only_the_lease_holder_submits_to_witnesses_even_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let vkey = common::new_key(
        ["witness", "keygen"],
        "w.example/w1",
        &tmp.path().join("w1.key"),
    );
    // A witness that is never there: every submission fails, and says so.
    let extra = format!(
        "\n[[log.witnesses]]\nname = \"w1\"\nurl = \"http://127.0.0.1:1\"\nkey = \"{}\"\n",
        vkey.trim()
    );
    let mut r = replicas_with(2, &extra);
    common::wait_until("a replica to hold the lease", || r.gws.iter().any(leads));
    let holder = r.gws.iter().position(leads).unwrap();
    let other = 1 - holder;
    r.gws[other].stop();
    let log = std::fs::read_to_string(r.gws[other].dir.join("gateway.log")).unwrap();
    assert!(
        !log.contains("could not submit the last checkpoint") && !log.contains("witness=w1"),
        "a replica without the lease submitted: {log}"
    );
    // The holder does submit (and fails, the witness being absent).
    r.gws[holder].stop();
    let log = std::fs::read_to_string(r.gws[holder].dir.join("gateway.log")).unwrap();
    assert!(log.contains("w1"), "the holder submitted: {log}");
}
