//! The PostgreSQL writer under allow-shaped load: each job inserts a grant
//! row and appends one log entry (what `POST /v1/actions` commits for an
//! allow), from many concurrent tasks on 1..N stores sharing one database
//! (as replicas would). Prints jobs/s and, per committed batch, jobs, round
//! trips to PostgreSQL and the time spent in begin (head lock, catching
//! up), running the jobs and committing.
//!
//! Needs a database to write into (created fresh by `bench/pg_writer.sh`):
//! `SECONDKEY_BENCH_PG=postgres://user@127.0.0.1:PORT/db?sslmode=disable`,
//! `SECONDKEY_BENCH_PG_PASSWORD`, optionally `REPLICAS` (1), `TASKS` (32)
//! and `SECS` (10).

use std::time::{Duration, Instant};

use secondkey_store::{new_entry, GrantRow, PgOptions, Store, StoreOptions, WriterStats};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Ok(url) = std::env::var("SECONDKEY_BENCH_PG") else {
        eprintln!("set SECONDKEY_BENCH_PG (see bench/pg_writer.sh)");
        return;
    };
    let replicas = env_or("REPLICAS", 1).max(1);
    let tasks = env_or("TASKS", 32).max(1);
    let secs = env_or("SECS", 10).max(1) as u64;
    // INDEX=1: each job asks for its entry's index (`append_prepared`),
    // which makes the writer wait for the jobs before it; by default it
    // appends as the gateway's allow does (`append_later`).
    let index_told = env_or("INDEX", 0) == 1;
    let mut pg = PgOptions::new(url);
    pg.password = std::env::var("SECONDKEY_BENCH_PG_PASSWORD").ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions::new(dir.path()).postgres(pg);
    Store::migrate(&options).expect("migrate");
    let stores: Vec<Store> = (0..replicas)
        .map(|_| Store::open(options.clone()).expect("open"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let done: usize = rt.block_on(async {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let s = stores[task % replicas].clone();
            handles.push(tokio::spawn(async move {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let id = format!("grt_{task}_{n}");
                    let row = GrantRow {
                        id: id.clone(),
                        request_id: None,
                        digest: "9f".repeat(32),
                        requester: "agent:report-bot".into(),
                        expires_at: 1_900_000_000_000,
                        used_at: None,
                    };
                    let mut e = new_entry(
                        "2026-12-03T04:00:00.000Z",
                        "action.allowed",
                        Some("agent:report-bot"),
                        serde_json::json!({"decision": "allow", "grant": id,
                            "action": {"kind": "sql", "operation": "read",
                            "resource": "postgres://analytics/public.orders"}}),
                    );
                    e.subjects
                        .insert("action".into(), format!("act_{task}_{n}"));
                    let e = e.prepare().expect("entry");
                    s.transact(move |tx| {
                        tx.insert_grant(&row)?;
                        if index_told {
                            tx.append_prepared(e).map(|_| ())
                        } else {
                            tx.append_later(e)
                        }
                    })
                    .await
                    .expect("allow");
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.expect("task");
        }
        total
    });
    let elapsed = t.elapsed();
    let mut sum = WriterStats::default();
    for s in &stores {
        let w = s.writer_stats().expect("a PostgreSQL store");
        sum.batches += w.batches;
        sum.jobs += w.jobs;
        sum.round_trips += w.round_trips;
        sum.begin += w.begin;
        sum.run += w.run;
        sum.commit += w.commit;
    }
    let b = sum.batches.max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / b;
    println!(
        "replicas {replicas}, tasks {tasks}, {secs} s, {}: {done} allows, {:.0}/s; \
         per batch: {:.1} jobs, {:.1} round trips, begin {:.2} ms, run {:.2} ms, commit {:.2} ms \
         ({} batches)",
        if index_told {
            "index told"
        } else {
            "appended later"
        },
        done as f64 / elapsed.as_secs_f64(),
        sum.jobs as f64 / b,
        sum.round_trips as f64 / b,
        ms(sum.begin),
        ms(sum.run),
        ms(sum.commit),
        sum.batches,
    );
    for s in &stores {
        s.close();
    }
}
