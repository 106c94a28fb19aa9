//! Issues 4 and 14: "request page server time p99 < 20 ms with a 2,000-line
//! statement and a 100-line diff".
//!
//! Starts a gateway in this process on 127.0.0.1 with a throwaway data dir,
//! fills it with history (N similar requests by the same agent, half of them
//! approved, so the "last similar approved action" lookup has work to do),
//! submits one more request with a long SQL statement (`SK_BENCH_LINES`,
//! default 2,000 lines) of which `SK_BENCH_DIFF` lines (default 100, spread
//! through it) differ from the last approved one, and then:
//!
//! 1. times `GET /requests/{id}` as a signed-in reviewer over loopback
//!    (keep-alive): the whole server path — session check, store read,
//!    similar-action lookup, diff, highlighting, HTML — plus loopback;
//! 2. times the timeline's read (one indexed query) and decoding;
//! 3. times the rendering alone (`web::render_request`).
//!
//! `cargo bench -p secondkey-server --bench request_page`
//! (`SK_BENCH_N` history size, default 100; `SK_BENCH_ITER` default 500).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secondkey_core::principal::{Principal, PrincipalId};
use secondkey_server::web::session::{SessionClaims, SignedIn};
use secondkey_server::Config;
use serde_json::{json, Value};

const POLICY: &str = r#"
@id("agents-delete")
permit(principal in Group::"agents", action == Action::"sql.delete", resource);

@id("deletes-need-a-data-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.delete", resource);
"#;

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "  {name:<40} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    );
}

fn action(n: usize, sql: &str) -> Value {
    json!({
        "kind": "sql", "operation": "delete", "resource": "postgres://analytics/public.events",
        "params": {"statement": sql, "n": n},
        "justification": "retention",
        "context": {"session": format!("s{}", n % 7), "model": "bench", "estimated_rows": n},
        "lineage": {"writes": ["postgres://analytics/public.events"]}
    })
}

fn main() {
    let n: usize = env_or("SK_BENCH_N", 100);
    let lines: usize = env_or("SK_BENCH_LINES", 2000);
    let changed_lines: usize = env_or("SK_BENCH_DIFF", 100).min(lines);
    let iters: usize = env_or("SK_BENCH_ITER", 500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).expect("policy dir");
    std::fs::write(pdir.join("bench.cedar"), POLICY).expect("policy");
    let sha = secondkey_server::auth::token_sha256_hex;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n\
         [requests]\nmax_body_bytes = 8388608\n[limits]\nrequests_per_minute = 100000\nmax_pending_per_principal = 100000\n\
         [log]\norigin = \"bench.secondkey.example/log\"\n\
         [[principals]]\nid = \"agent:bot\"\nowner = \"user:alice\"\ngroups = [\"agents\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nid = \"user:alice\"\n\
         [[principals]]\nid = \"user:bob\"\ngroups = [\"data-owners\"]\ntoken_sha256 = \"{}\"\n",
        dir.path().join("data").display(),
        pdir.display(),
        sha("bench-agent-token-123"),
        sha("bench-bob-token-12345"),
    );
    let config = Config::from_toml(&toml, "bench", dir.path(), &HashMap::new()).expect("config");
    let running = rt
        .block_on(secondkey_server::start(config))
        .expect("gateway");
    let g = running.gateway.clone();
    let base = format!("http://{}", running.addr);
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let post = |path: &str, token: &str, body: Value| -> Value {
        http.post(&format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(body)
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(s, r) => {
                    panic!("POST {path}: {s} {}", r.into_string().unwrap_or_default())
                }
                e => panic!("POST {path}: {e}"),
            })
            .into_json()
            .expect("json")
    };
    // Short lines: a whole action is at most 48 KB (`MAX_ACTION_BYTES`),
    // so 2,000 lines average under 24 bytes.
    let long_sql: String = std::iter::once("DELETE FROM events WHERE false\n".to_string())
        .chain((1..lines).map(|i| format!("  OR id = {i}\n")))
        .collect();
    println!("filling: {n} similar requests, every second one approved");
    for i in 0..n {
        let v = post("/v1/actions", "bench-agent-token-123", action(i, &long_sql));
        if i % 2 == 0 {
            let id = v["request"]["id"].as_str().expect("held").to_string();
            post(
                &format!("/v1/requests/{id}/reviews"),
                "bench-bob-token-12345",
                json!({"decision": "approve"}),
            );
        }
    }
    // `changed_lines` lines, evenly spread, each gain an `OR true`.
    let step = (lines / changed_lines.max(1)).max(1);
    let changed: String = long_sql
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i % step == step / 2 && i / step < changed_lines {
                format!("{}\n", l.replacen(" = ", " >= ", 1))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let v = post("/v1/actions", "bench-agent-token-123", action(n, &changed));
    let id = v["request"]["id"].as_str().expect("held").to_string();

    let now = g.now().0 / 1000;
    let claims = SessionClaims {
        sid: "bench".into(),
        sub: "user:bob".into(),
        groups: vec![],
        subject: None,
        iat: now,
        exp: now + 3600,
        iat_ms: None,
    };
    let cookie = format!(
        "{}={}",
        g.web.sessions.cookie_name(),
        g.web.sessions.encode(&claims)
    );
    let url = format!("{base}/requests/{id}");
    let page = http
        .get(&url)
        .set("Cookie", &cookie)
        .call()
        .expect("page")
        .into_string()
        .expect("html");
    assert!(page.contains("Changed since"));
    assert!(
        page.contains("id=\"timeline\""),
        "the page shows the timeline"
    );
    let shown = page.matches("<tr class=\"ins\">").count();
    assert_eq!(shown, changed_lines, "the diff shows each changed line");
    println!(
        "request page: {} KB of HTML, statement {} lines ({} KB), {} lines changed",
        page.len() / 1024,
        lines,
        changed.len() / 1024,
        shown
    );
    for _ in 0..20 {
        let _ = http.get(&url).set("Cookie", &cookie).call();
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let r = http.get(&url).set("Cookie", &cookie).call().expect("page");
        let _ = r.into_string();
        times.push(t.elapsed());
    }
    percentiles("GET /requests/{id} (loopback, whole path)", times);

    let req = rt
        .block_on(g.get_request(
            &Principal {
                id: "user:bob".parse::<PrincipalId>().expect("id"),
                owner: None,
                groups: ["data-owners".to_string()].into(),
                subjects: Default::default(),
            },
            &id,
        ))
        .expect("request");
    let user = SignedIn::from_headers(&g, &{
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::COOKIE, cookie.parse().expect("header"));
        h
    })
    .expect("session");
    let similar = rt
        .block_on(secondkey_server::web::similar_approved(
            &g,
            &user.principal,
            &req,
        ))
        .expect("a similar approved request");
    let timeline_entries = g
        .store
        .request_entries(&req.id, secondkey_server::web::timeline::MAX_EVENTS)
        .expect("timeline");
    assert!(!timeline_entries.is_empty(), "the request has log entries");
    let timeline = secondkey_server::web::timeline::Timeline::from_entries(&timeline_entries);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let entries = g
            .store
            .request_entries(&req.id, secondkey_server::web::timeline::MAX_EVENTS)
            .expect("timeline");
        std::hint::black_box(secondkey_server::web::timeline::Timeline::from_entries(
            &entries,
        ));
        times.push(t.elapsed());
    }
    percentiles("timeline (indexed read + decode)", times);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let html = secondkey_server::web::render_request(
            &g,
            &user,
            &req,
            Some(&similar),
            None,
            Some("bench-nonce"),
            &timeline,
        );
        std::hint::black_box(html);
        times.push(t.elapsed());
    }
    percentiles("render_request (HTML only)", times);
    let mut times = Vec::with_capacity(iters / 5);
    for _ in 0..iters / 5 {
        let t = Instant::now();
        let s = rt.block_on(secondkey_server::web::similar_approved(
            &g,
            &user.principal,
            &req,
        ));
        std::hint::black_box(s);
        times.push(t.elapsed());
    }
    percentiles("similar_approved (store lookup)", times);
    rt.block_on(running.stop()).expect("stop");
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
