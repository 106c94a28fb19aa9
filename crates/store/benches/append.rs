//! Durable log appends through the store's group commit, against plain
//! SQLite inserts of the same rows, in the same run.
//!
//! `cargo bench -p secondkey-store --bench append`

use std::time::Instant;

use rusqlite::params;
use secondkey_store::{new_entry, Store, StoreOptions};

const TOTAL: usize = 200_000;
const TASKS: usize = 256;

fn sample(i: usize) -> secondkey_log::entry::Entry {
    let mut e = new_entry(
        "2026-11-22T10:00:00.000Z",
        "action.allowed",
        Some("agent:report-bot"),
        serde_json::json!({"decision": "allow", "action": {"kind": "sql", "operation": "read",
            "resource": "postgres://analytics/public.orders"}, "n": i}),
    );
    e.subjects.insert("action".into(), format!("act_{i:024x}"));
    e.digest = Some("9f".repeat(32));
    e
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: Vec<Vec<u8>> = (0..TOTAL)
        .map(|i| sample(i).to_bytes().expect("entry"))
        .collect();
    let avg = rows.iter().map(Vec::len).sum::<usize>() / rows.len();
    println!("entries: {TOTAL}, average size {avg} bytes, {TASKS} concurrent appenders");

    // 1. secondkey: every append acknowledged only after its commit.
    let store = Store::open(StoreOptions::new(dir.path().join("sk"))).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let t = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                let mut i = task;
                while i < TOTAL {
                    let e = sample(i);
                    s.transact(move |tx| tx.append(e)).await.expect("append");
                    i += TASKS;
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
    });
    let sk = t.elapsed();
    assert_eq!(store.log_size(), TOTAL as u64);
    store.close();
    let sk_rate = TOTAL as f64 / sk.as_secs_f64();
    println!(
        "secondkey group commit:             {:>10.0} entries/s ({:.2} s)",
        sk_rate,
        sk.as_secs_f64()
    );

    // 2. Plain SQLite, same rows, same durability (WAL, synchronous=FULL),
    //    one transaction per row — what a naive durable audit table does.
    let conn = rusqlite::Connection::open(dir.path().join("plain.db")).expect("db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.execute_batch("CREATE TABLE t (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        .expect("table");
    let n1 = 5_000;
    let t = Instant::now();
    for (i, r) in rows.iter().take(n1).enumerate() {
        conn.execute(
            "INSERT INTO t (idx, data) VALUES (?1, ?2)",
            params![i as i64, r],
        )
        .expect("insert");
    }
    let per_row = n1 as f64 / t.elapsed().as_secs_f64();
    println!(
        "plain SQLite, a commit per row:     {:>10.0} rows/s    (ratio secondkey/plain {:.1}x)",
        per_row,
        sk_rate / per_row
    );

    // 3. Plain SQLite, all rows in one transaction: the upper bound with no
    //    per-entry durability and no hashing.
    conn.execute_batch("DELETE FROM t").expect("clear");
    let t = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    {
        let mut stmt = conn
            .prepare("INSERT INTO t (idx, data) VALUES (?1, ?2)")
            .expect("prepare");
        for (i, r) in rows.iter().enumerate() {
            stmt.execute(params![i as i64, r]).expect("insert");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    let bulk = TOTAL as f64 / t.elapsed().as_secs_f64();
    println!(
        "plain SQLite, one bulk transaction: {:>10.0} rows/s    (ratio secondkey/plain {:.2}x)",
        bulk,
        sk_rate / bulk
    );

    // 4. Where secondkey's time goes: each step of the writer's per-job work
    //    alone, single-threaded, over the same rows.
    println!("breakdown, per entry, single thread:");
    let t = Instant::now();
    let entries: Vec<_> = (0..TOTAL).map(sample).collect();
    per_entry("build the Entry (caller side)", t, TOTAL);
    let t = Instant::now();
    for e in &entries {
        std::hint::black_box(e.to_bytes().expect("entry"));
    }
    per_entry("Entry::to_bytes (RFC 8785 JCS)", t, TOTAL);
    let t = Instant::now();
    for r in &rows {
        std::hint::black_box(secondkey_log::merkle::leaf_hash(r));
    }
    per_entry("leaf hash (SHA-256)", t, TOTAL);
    conn.execute_batch("DELETE FROM t").expect("clear");
    let t = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    {
        let mut stmt = conn
            .prepare_cached("INSERT INTO t (idx, data) VALUES (?1, ?2)")
            .expect("prepare");
        for (i, r) in rows.iter().enumerate() {
            conn.execute_batch("SAVEPOINT job").expect("savepoint");
            stmt.execute(params![i as i64, r]).expect("insert");
            conn.execute_batch("RELEASE job").expect("release");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
    per_entry("SQLite insert inside SAVEPOINT/RELEASE", t, TOTAL);

    // 5. A PostgreSQL statement's entry, in full and lean (issue 19).
    println!("a pgbench -S statement under @record(\"after\"), per entry, single thread:");
    encode_and_hash("full entry (action and facts)", |i| pg_statement(i, false));
    encode_and_hash("lean entry (shape digest and literals)", |i| {
        pg_statement(i, true)
    });
}

/// What the PostgreSQL gateway logs for one `pgbench -S` statement under
/// `@record("after")` (decision and result in one entry): in full, and
/// lean — naming its statement shape, logged once per session.
fn pg_statement(i: usize, lean: bool) -> secondkey_log::entry::Entry {
    let aid = 1 + (i * 7919) % 1_000_000;
    let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
    let mut payload = serde_json::json!({
        "decision": "allow", "executed": true, "recorded": "after",
        "decided_at": "2026-11-22T10:00:00.000Z", "transport": "pg",
        "policy_set": "c0ffee".repeat(10),
        "reasons": [{"policy": "bench-reads-after", "effect": "permit", "message": "permitted by bench-reads-after"}],
        "result": {"ok": true, "summary": {"command_tags": ["SELECT 1"], "rows": 1, "duration_ms": 0.071},
                   "reads": ["postgres://bench/public.pgbench_accounts"], "writes": []},
    });
    if lean {
        payload["session"] = serde_json::json!("pgs_0192a0b1c2d3e4f5a6b7c8d9e0f1a2b3");
        payload["shape"] = serde_json::json!("5e".repeat(32));
        payload["literals"] = serde_json::json!([aid.to_string()]);
    } else {
        payload["action"] = serde_json::json!({"kind": "sql", "operation": "read",
            "resource": "postgres://bench/public.pgbench_accounts",
            "params": {"statement": text},
            "lineage": {"reads": ["postgres://bench/public.pgbench_accounts"], "writes": []}});
        payload["facts"] = serde_json::json!({"connection": "bench", "database": "bench",
            "operation": "read", "tables": ["public.pgbench_accounts"],
            "reads": ["public.pgbench_accounts"], "writes": [], "functions": [],
            "statements": 1, "protocol": "simple", "source_ip": "127.0.0.1"});
    }
    let mut e = new_entry(
        "2026-11-22T10:00:00.000Z",
        "action.allowed",
        Some("agent:fast"),
        payload,
    );
    e.subjects.insert("action".into(), format!("act_{i:032x}"));
    e.digest = Some("9f".repeat(32));
    e
}

/// Encoding and hashing cost of one kind of entry, per entry.
fn encode_and_hash(what: &str, make: impl Fn(usize) -> secondkey_log::entry::Entry) {
    const N: usize = 100_000;
    let entries: Vec<_> = (0..N).map(&make).collect();
    let t = Instant::now();
    let bytes: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| std::hint::black_box(e.to_bytes().expect("entry")))
        .collect();
    let encode = t.elapsed().as_secs_f64() * 1e6 / N as f64;
    let t = Instant::now();
    for b in &bytes {
        std::hint::black_box(secondkey_log::merkle::leaf_hash(b));
    }
    let hash = t.elapsed().as_secs_f64() * 1e6 / N as f64;
    // The same entry again and again: its tree stays in the caches, as
    // an entry just built by the gateway does. The pass over 100,000
    // distinct entries above mostly waits for memory.
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(std::hint::black_box(&entries[7]).to_bytes().expect("entry"));
    }
    let warm = t.elapsed().as_secs_f64() * 1e6 / N as f64;
    let size = bytes.iter().map(Vec::len).sum::<usize>() / N;
    println!(
        "  {what:<40} {size:>5} bytes, encode (JCS) {encode:>5.2} µs (cached: {warm:>5.2} µs), leaf hash {hash:>5.2} µs"
    );
}

fn per_entry(what: &str, since: Instant, n: usize) {
    println!(
        "  {what:<40} {:>6.2} µs",
        since.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
