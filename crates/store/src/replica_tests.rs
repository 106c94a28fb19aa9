//! Several stores (as several gateway replicas would open them) on one
//! PostgreSQL database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::pgtest::Cluster;
use crate::tests::multi_thread;
use secondkey_log::merkle::{leaf_hash, root_from_leaves};

fn entry(event: &str) -> Entry {
    new_entry(
        "2026-12-02T00:00:00Z",
        event,
        Some("agent:bot"),
        serde_json::json!({"n": 1}),
    )
}

fn migrated(c: &Cluster) -> (tempfile::TempDir, PgOptions) {
    let (_, dir, opts) = migrated_db(c);
    (dir, opts)
}

/// [`migrated`], with the database's name (for `Cluster::sql`).
fn migrated_db(c: &Cluster) -> (String, tempfile::TempDir, PgOptions) {
    let db = c.database();
    let opts = c.options(&db);
    let dir = tempfile::tempdir().unwrap();
    Store::migrate(&StoreOptions::new(dir.path()).postgres(opts.clone())).unwrap();
    (db, dir, opts)
}

fn open(dir: &tempfile::TempDir, pg: &PgOptions) -> Store {
    Store::open(StoreOptions::new(dir.path()).postgres(pg.clone())).unwrap()
}

/// Two replicas' stores: A to change things, B with its feed of the
/// request changes it hears of.
fn writer_and_listener(
    dir: &tempfile::TempDir,
    pg: &PgOptions,
) -> (Store, Store, tokio::sync::broadcast::Receiver<String>) {
    let (a, b) = (open(dir, pg), open(dir, pg));
    let changes = b
        .remote_changes()
        .expect("a PostgreSQL store announces changes");
    (a, b, changes)
}

/// A migrated store whose grant `taken` exists: a job inserting it again
/// fails, which the batch tests use as their failing statement.
fn with_taken_grant() -> (tempfile::TempDir, PgOptions, Store) {
    let (dir, pg) = migrated(Cluster::get());
    let s = open(&dir, &pg);
    s.transact_blocking(|tx| tx.insert_grant(&grant("taken")))
        .unwrap();
    (dir, pg, s)
}

/// Waits (up to a generous deadline) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn catching_up_while_this_replica_appends_never_reports_a_truncated_log() {
    // The follower reads the head in a snapshot while this replica's writer
    // commits and grows the tree: a head older than the tree it then reads
    // is the race, not a truncation.
    let (dir, pg) = migrated(Cluster::get());
    let s = open(&dir, &pg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.catch_up().map_err(|e| format!("round {rounds}: {e}"))?;
                rounds += 1;
            }
            Ok::<u32, String>(rounds)
        })
    };
    for i in 0..300 {
        s.transact_blocking(move |tx| tx.append(entry(&format!("e.{i}"))))
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = follower.join().unwrap().unwrap();
    assert!(rounds > 0, "the follower ran");
    assert_eq!(s.health(), Ok(()));
    assert_eq!(s.log_size(), 300);
    s.close();
}

#[test]
fn a_commit_does_not_clear_what_the_follower_found() {
    let c = Cluster::get();
    let (db, dir, pg) = migrated_db(c);
    let a = open(&dir, &pg);
    a.transact_blocking(|tx| tx.append(entry("one"))).unwrap();
    // The head names an entry that is not there: the log cannot be followed.
    c.sql(&db, "UPDATE log_head SET size = size + 1");
    eventually("the follower's report", || a.health().is_err());
    // A commit that appends nothing (a lease renewal) succeeds, and says
    // nothing about the log: the report stays.
    a.transact_blocking(|tx| tx.put_meta("k", "v")).unwrap();
    let h = a.health().unwrap_err();
    assert!(h.contains("cannot follow the shared log"), "{h}");
    // Put right, the follower clears its report itself.
    c.sql(&db, "UPDATE log_head SET size = size - 1");
    eventually("healthy again", || a.health().is_ok());
    a.close();
}

#[test]
fn appends_from_three_replicas_are_totally_ordered_into_one_tree() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let stores: Vec<Store> = (0..3).map(|_| open(&dir, &pg)).collect();
    let rt = multi_thread();
    let indices = rt.block_on(async {
        let mut tasks = Vec::new();
        for (r, s) in stores.iter().enumerate() {
            for i in 0..40 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.transact(move |tx| tx.append(entry(&format!("r{r}.{i}"))))
                        .await
                }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    // Every acknowledged append got its own index, with no gap.
    let set: HashSet<u64> = indices.iter().copied().collect();
    assert_eq!(set.len(), 120);
    assert_eq!(set, (0..120).collect::<HashSet<u64>>());
    // Each replica's tree comes to the same root, the root of the stored
    // entries, whichever replica appended them.
    let data = stores[0].entries(0, 120).unwrap();
    assert_eq!(data.len(), 120);
    let want = root_from_leaves(&data.iter().map(|d| leaf_hash(d)).collect::<Vec<_>>());
    for s in &stores {
        assert_eq!(s.catch_up().unwrap(), 120);
        assert_eq!(s.with_tree(|t| (t.size(), t.root())).unwrap(), (120, want));
    }
    for (i, d) in data.iter().enumerate() {
        assert_eq!(Entry::from_bytes(d).unwrap().index, i as u64);
    }
    for s in &stores {
        s.close();
    }
    // A replica started afterwards rebuilds the same tree.
    let late = open(&dir, &pg);
    assert_eq!(late.with_tree(|t| t.root()).unwrap(), want);
    late.close();
}

#[test]
fn a_replica_follows_the_others_without_writing() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let (a, b, mut changes) = writer_and_listener(&dir, &pg);
    let rt = multi_thread();
    rt.block_on(a.transact(|tx| tx.append(entry("a")))).unwrap();
    // B's follower hears the commit and grows B's tree by itself.
    eventually("replica B to see A's entry", || b.log_size() == 1);
    assert_eq!(
        a.with_tree(|t| t.root()).unwrap(),
        b.with_tree(|t| t.root()).unwrap()
    );
    // A request changed on A is announced on B.
    let req = crate::tests::pending_request_for_replicas("r-1", "agent:bot");
    rt.block_on(a.transact(move |tx| tx.put_request(&req)))
        .unwrap();
    let id = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), changes.recv())
            .await
            .expect("a change notification within 30 s")
            .unwrap()
    });
    assert_eq!(id, "r-1");
    assert_eq!(
        b.get_request("r-1").unwrap().map(|r| r.id),
        Some("r-1".to_string())
    );
    a.close();
    b.close();
}

#[test]
fn a_change_made_while_a_replica_re_listens_is_not_lost() {
    let c = Cluster::get();
    let (db, dir, pg) = migrated_db(c);
    let (a, b, mut changes) = writer_and_listener(&dir, &pg);
    let rt = multi_thread();
    let next = |changes: &mut tokio::sync::broadcast::Receiver<String>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), changes.recv())
                .await
                .expect("a change notification within 30 s")
                .expect("the change feed is open")
        })
    };
    let put = |id: &str| {
        let req = crate::tests::pending_request_for_replicas(id, "agent:bot");
        rt.block_on(a.transact(move |tx| tx.put_request(&req)))
            .unwrap();
    };
    let listening = "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    eventually("both stores to LISTEN", || c.sql(&db, listening) == "2");
    // B listens; its first LISTEN is no re-sync: the first thing it hears
    // is the change itself.
    put("r-0");
    assert_eq!(next(&mut changes), "r-0");
    // The LISTEN connections drop (a network cut, a PostgreSQL restart of
    // the backend), and A changes a request at once, before B listens
    // again: PostgreSQL keeps no notification for a listener that is gone.
    let killed = c.sql(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    assert_eq!(killed, "2", "both LISTEN backends were cut");
    put("r-1");
    // B learns that it may have missed something (or, had it listened
    // again in time, the change itself).
    let heard = next(&mut changes);
    assert!(
        heard == REMOTE_RESYNC || heard == "r-1",
        "B heard {heard:?}"
    );
    assert_eq!(
        b.get_request("r-1").unwrap().map(|r| r.id).as_deref(),
        Some("r-1")
    );
    // And it listens again: a later change comes through as usual.
    let mut rest = vec![];
    put("r-2");
    while rest.last().map(String::as_str) != Some("r-2") {
        rest.push(next(&mut changes));
    }
    assert!(
        rest.iter()
            .all(|h| h == REMOTE_RESYNC || h == "r-1" || h == "r-2"),
        "{rest:?}"
    );
    a.close();
    b.close();
}

#[test]
fn one_grant_consumed_on_three_replicas_at_once_is_used_once() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let stores: Vec<Store> = (0..3).map(|_| open(&dir, &pg)).collect();
    let g = GrantRow {
        id: "g1".into(),
        request_id: None,
        digest: "d".into(),
        requester: "agent:x".into(),
        expires_at: 10,
        used_at: None,
    };
    stores[0]
        .transact_blocking(move |tx| tx.insert_grant(&g))
        .unwrap();
    let rt = multi_thread();
    let wins = rt.block_on(async {
        let mut tasks = Vec::new();
        for s in &stores {
            for _ in 0..20 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.transact(|tx| {
                        let won = tx.use_grant("g1", 5)?;
                        if won {
                            tx.append(entry("grant.used"))?;
                        }
                        Ok(won)
                    })
                    .await
                }));
            }
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                wins += 1;
            }
        }
        wins
    });
    assert_eq!(wins, 1);
    assert_eq!(stores[1].catch_up().unwrap(), 1, "one use, one log entry");
    for s in &stores {
        s.close();
    }
}

#[test]
fn the_lease_is_held_by_one_replica_until_it_expires_or_is_released() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let a = open(&dir, &pg);
    let b = open(&dir, &pg);
    let rt = multi_thread();
    rt.block_on(async {
        assert!(a.lease("background", "a", 1_000, 500).await.unwrap());
        assert!(!b.lease("background", "b", 1_200, 500).await.unwrap());
        // The holder renews it.
        assert!(a.lease("background", "a", 1_400, 500).await.unwrap());
        assert!(!b.lease("background", "b", 1_800, 500).await.unwrap());
        // Expired: the other takes it over.
        assert!(b.lease("background", "b", 1_901, 500).await.unwrap());
        assert!(!a.lease("background", "a", 1_950, 500).await.unwrap());
        // Released: free at once.
        b.release_lease("background", "b").await.unwrap();
        assert!(a.lease("background", "a", 1_960, 500).await.unwrap());
    });
    a.close();
    b.close();
}

#[test]
fn the_schema_is_checked_at_start_and_migrated_only_on_request() {
    let c = Cluster::get();
    let db = c.database();
    let pg = c.options(&db);
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::new(dir.path()).postgres(pg.clone());
    let err = Store::open(options.clone()).unwrap_err();
    assert!(
        matches!(err, StoreError::NotMigrated { found: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("secondkey store migrate"), "{err}");
    assert_eq!(
        Store::migrate(&options).unwrap(),
        (0, crate::pg::PG_SCHEMA_VERSION)
    );
    // Again: nothing to do.
    assert_eq!(
        Store::migrate(&options).unwrap(),
        (crate::pg::PG_SCHEMA_VERSION, crate::pg::PG_SCHEMA_VERSION)
    );
    let s = Store::open(options.clone()).unwrap();
    s.close();
    // A schema from a newer secondkey is refused, by start and migrate.
    c.sql(&db, "INSERT INTO secondkey_schema (version) VALUES (99)");
    let err = Store::open(options.clone()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let err = Store::migrate(&options).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn migrations_from_replicas_started_together_apply_once() {
    let c = Cluster::get();
    let db = c.database();
    let pg = c.options(&db);
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::new(dir.path()).postgres(pg);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let o = options.clone();
            std::thread::spawn(move || Store::migrate(&o))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let fresh = results.iter().filter(|(from, _)| *from == 0).count();
    assert_eq!(fresh, 1, "{results:?}");
    assert_eq!(
        c.sql(&db, "SELECT count(*) FROM secondkey_schema"),
        crate::pg::PG_SCHEMA_VERSION.to_string()
    );
}

#[test]
fn urls_with_a_password_or_a_weak_sslmode_are_refused() {
    let cases = [
        ("postgres://sk:secret@db/sk", "password"),
        ("postgres://sk@db/sk?password=secret", "password"),
        ("postgres://sk@db/sk?sslmode=require", "sslmode=require"),
        ("postgres://sk@db/sk?sslmode=prefer", "sslmode=prefer"),
        ("mysql://sk@db/sk", "postgres://"),
        ("postgres://db/sk", "user"),
        ("postgres://sk@db", "database"),
    ];
    for (url, want) in cases {
        let err = PgOptions::new(url).check().unwrap_err();
        assert!(err.contains(want), "{url}: {err}");
    }
    assert_eq!(
        PgOptions::new("postgres://sk@db.internal/sk")
            .check()
            .unwrap(),
        PgTls::VerifyFull { ca_file: None }
    );
    assert_eq!(
        PgOptions::new("postgres://sk@db.internal/sk?sslmode=verify-full&sslrootcert=/etc/ca.pem")
            .check()
            .unwrap(),
        PgTls::VerifyFull {
            ca_file: Some("/etc/ca.pem".into())
        }
    );
    // Messages write the server as its URL does: an IPv6 address in
    // brackets, before the port.
    let t = PgOptions::new("postgres://sk@[::1]:55436/sk?sslmode=disable")
        .target()
        .unwrap();
    assert_eq!(t.display, "postgres://sk@[::1]:55436/sk");
    // The password never shows in debug output.
    let mut o = PgOptions::new("postgres://sk@db/sk");
    o.password = Some("hunter2".into());
    assert!(!format!("{o:?}").contains("hunter2"));
}

#[test]
fn a_vanished_peer_ends_a_store_connection_in_seconds_unless_the_url_says_otherwise() {
    let t = PgOptions::new("postgres://sk@db/sk").target().unwrap();
    assert_eq!(
        t.config.get_tcp_user_timeout(),
        Some(&Duration::from_secs(15))
    );
    assert!(t.config.get_keepalives());
    assert_eq!(t.config.get_keepalives_idle(), Duration::from_secs(15));
    assert_eq!(
        t.config.get_keepalives_interval(),
        Some(Duration::from_secs(5))
    );
    assert_eq!(t.config.get_keepalives_retries(), Some(3));
    let own = PgOptions::new("postgres://sk@db/sk?tcp_user_timeout=60&keepalives_idle=120")
        .target()
        .unwrap();
    assert_eq!(
        own.config.get_tcp_user_timeout(),
        Some(&Duration::from_secs(60))
    );
    assert_eq!(own.config.get_keepalives_idle(), Duration::from_secs(120));
}

#[test]
fn with_postgres_down_every_replica_fails_closed_and_recovers() {
    // A cluster of its own: this test stops it.
    let c = Cluster::start_private();
    let (dir, pg) = migrated(&c);
    let a = open(&dir, &pg);
    let b = open(&dir, &pg);
    a.transact_blocking(|tx| tx.append(entry("before")))
        .unwrap();
    c.stop("fast");
    for s in [&a, &b] {
        let err = s
            .transact_blocking(|tx| tx.append(entry("during")))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Commit(_) | StoreError::PgDown(_)),
            "an append with the database down is refused: {err}"
        );
        // Said once: "nothing was recorded" is not repeated by a wrapper.
        assert_eq!(
            err.to_string().matches("nothing was recorded").count(),
            1,
            "{err}"
        );
        assert!(s.health().is_err(), "health reports the outage");
        assert!(s.get_request("x").is_err(), "reads fail too, and say so");
    }
    c.pg_start();
    // With nothing to commit, each writer's probe finds the database back
    // (a balancer has taken a failing replica out: no traffic would).
    eventually("both replicas healthy again with no traffic", || {
        a.health().is_ok() && b.health().is_ok()
    });
    // Both replicas reconnect at their next batch.
    let i = b.transact_blocking(|tx| tx.append(entry("after"))).unwrap();
    assert_eq!(i, 1, "nothing refused took an index");
    let j = a.transact_blocking(|tx| tx.append(entry("after"))).unwrap();
    assert_eq!(j, 2);
    // The followers reconnect too (within a second or so) and clear their
    // report.
    eventually("both replicas healthy again", || {
        a.health().is_ok() && b.health().is_ok()
    });
    assert_eq!(b.catch_up().unwrap(), 3);
    assert_eq!(
        a.with_tree(|t| t.root()).unwrap(),
        b.with_tree(|t| t.root()).unwrap()
    );
    a.close();
    b.close();
}

/// A private certificate authority and a server certificate for `names`.
fn ca_and_cert(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "store test CA");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = rcgen::CertificateParams::new(names.clone()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_verify_full_checks_the_chain_and_the_host_name() {
    let (ca, cert, key) = ca_and_cert(&["localhost"]);
    let (other_ca, _, _) = ca_and_cert(&["localhost"]);
    let c = Cluster::start_tls(&cert, &key);
    let db = c.database();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    std::fs::write(dir.path().join("other.pem"), &other_ca).unwrap();
    let opts = |host: &str, ca: &str| PgOptions {
        url: format!("postgres://{}@{host}:{}/{db}", crate::pgtest::USER, c.port),
        password: Some(crate::pgtest::PASSWORD.into()),
        ca_file: Some(dir.path().join(ca)),
    };
    let store_options = |pg: PgOptions| StoreOptions::new(dir.path()).postgres(pg);
    // The right CA and the certificate's name: migrate, open, append.
    let good = store_options(opts("localhost", "ca.pem"));
    Store::migrate(&good).unwrap();
    let s = Store::open(good).unwrap();
    s.transact_blocking(|tx| tx.append(entry("over TLS")))
        .unwrap();
    s.close();
    // Another CA: refused.
    let err = Store::open(store_options(opts("localhost", "other.pem"))).unwrap_err();
    assert!(matches!(err, StoreError::PgDown(_)), "{err}");
    // The right CA, but a name the certificate does not carry: refused.
    let err = Store::open(store_options(opts("127.0.0.1", "ca.pem"))).unwrap_err();
    assert!(matches!(err, StoreError::PgDown(_)), "{err}");
    // A CA file that holds no certificate: a clear error.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let err = Store::open(store_options(opts("localhost", "empty.pem"))).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

#[test]
fn a_burst_of_reads_opens_a_bounded_number_of_connections() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let db = pg
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let s = open(&dir, &pg);
    s.transact_blocking(|tx| tx.put_meta("k", "v")).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d2, db2) = (done.clone(), db.clone());
    let watcher = std::thread::spawn(move || {
        let mut peak = 0usize;
        while !d2.load(std::sync::atomic::Ordering::Relaxed) {
            let n: usize = Cluster::get()
                .sql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db2}'"),
                )
                .parse()
                .unwrap();
            peak = peak.max(n);
        }
        peak
    });
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(s.get_meta("k").unwrap().as_deref(), Some("v"));
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    // 8 readers, the writer, the LISTEN connection, the follower's reader.
    assert!(
        peak <= 11,
        "{peak} connections at the peak of 32 concurrent readers"
    );
    assert!(peak >= 3, "the watcher saw the store's connections: {peak}");
    s.close();
}

/// A job for [`one_batch`].
type BatchJob = Box<dyn FnOnce(&mut dyn Tx) -> Result<u64, StoreError> + Send>;

/// Runs `jobs` as one batch of `store`'s writer, in order: a job holding
/// the writer (`hold`, run first in a batch of its own) waits until all of
/// them are queued, so the writer then takes them together.
fn one_batch(
    store: &Store,
    hold: impl FnOnce(&mut dyn Tx) -> Result<(), StoreError> + Send + 'static,
    jobs: Vec<BatchJob>,
) -> (Result<(), StoreError>, Vec<Result<u64, StoreError>>) {
    use std::future::Future;
    use std::sync::mpsc;
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let rt = multi_thread();
    rt.block_on(async {
        let mut held = Box::pin(store.transact(move |tx| {
            let _ = started_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(120));
            hold(tx)
        }));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // The first poll queues a job.
        let _ = held.as_mut().poll(&mut cx);
        started_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the holding job runs");
        let mut queued: Vec<_> = jobs
            .into_iter()
            .map(|j| Box::pin(store.transact(j)))
            .collect();
        for f in &mut queued {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        go_tx.send(()).unwrap();
        let held = held.await;
        let mut out = Vec::new();
        for f in queued {
            out.push(f.await);
        }
        (held, out)
    })
}

fn grant(id: &str) -> GrantRow {
    GrantRow {
        id: id.into(),
        request_id: None,
        digest: "d".into(),
        requester: "agent:x".into(),
        expires_at: 10,
        used_at: None,
    }
}

fn events(store: &Store) -> Vec<String> {
    let size = store.catch_up().unwrap();
    store
        .entries(0, size)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let e = Entry::from_bytes(d).unwrap();
            assert_eq!(
                e.index, i as u64,
                "entries are contiguous, each at its index"
            );
            e.event
        })
        .collect()
}

#[test]
fn in_one_pipelined_batch_a_failing_job_rolls_back_alone_and_the_others_commit() {
    let (dir, pg, s) = with_taken_grant();
    let before = s.writer_stats().unwrap();
    let jobs: Vec<BatchJob> = vec![
        Box::new(|tx| {
            tx.insert_grant(&grant("a"))?;
            tx.append(entry("ok.0"))
        }),
        // A statement fails (the grant id exists): found when the job ends.
        Box::new(|tx| {
            tx.put_record("t", "1", "x")?;
            tx.insert_grant(&grant("taken"))?;
            tx.append(entry("duplicate"))
        }),
        Box::new(|tx| tx.append(entry("ok.2"))),
        // The job refuses after writing.
        Box::new(|tx| {
            tx.put_record("t", "3", "y")?;
            tx.append(entry("refused"))?;
            Err(StoreError::Corrupt("refused by the job".into()))
        }),
        // The job panics after writing.
        Box::new(|tx| {
            tx.put_record("t", "4", "z")?;
            tx.append(entry("panicked"))?;
            panic!("a job panics (expected in this test)")
        }),
        // Reads see what earlier jobs of the batch wrote.
        Box::new(|tx| {
            assert!(tx.get_grant("a")?.is_some());
            assert!(tx.get_grant("b")?.is_none());
            assert!(tx.get_record("t", "1")?.is_none(), "rolled back");
            assert!(tx.use_grant("a", 5)?);
            tx.append(entry("ok.5"))
        }),
        // A statement fails and a read follows in the same job: the read
        // reports the failure.
        Box::new(|tx| {
            tx.insert_grant(&grant("b"))?;
            tx.insert_grant(&grant("b"))?;
            tx.get_grant("b")?;
            tx.append(entry("never"))
        }),
        Box::new(|tx| tx.append(entry("ok.7"))),
    ];
    let (held, out) = one_batch(&s, |_| Ok(()), jobs);
    held.unwrap();
    let oks: Vec<u64> = out
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(oks, vec![0, 1, 2, 3], "the others got contiguous indices");
    for i in [1, 3, 4, 6] {
        assert!(out[i].is_err(), "job {i} fails: {:?}", out[i]);
    }
    let dup = out[1].as_ref().unwrap_err().to_string();
    assert!(
        dup.contains("23505"),
        "the server's unique violation: {dup}"
    );
    assert!(
        out[3]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("refused by the job"),
        "a job's own error comes back unchanged"
    );
    assert_eq!(s.health(), Ok(()), "a failing job is not a storage failure");
    // One batch (the holding job had its own).
    let after = s.writer_stats().unwrap();
    assert_eq!(after.batches - before.batches, 2);
    assert_eq!(after.jobs - before.jobs, 9);
    assert_eq!(events(&s), vec!["ok.0", "ok.2", "ok.5", "ok.7"]);
    assert!(s.list_records("t", "", None, 10).unwrap().is_empty());
    assert_eq!(s.get_grant("a").unwrap().unwrap().used_at, Some(5));
    assert_eq!(s.get_grant("taken").unwrap().unwrap().used_at, None);
    assert!(s.get_grant("b").unwrap().is_none());
    tree_is_the_stored_entries(s, &dir, &pg, 4);
}

/// The tree of `s` is the root of its `size` stored entries, and comes out
/// the same when the store is opened again.
fn tree_is_the_stored_entries(s: Store, dir: &tempfile::TempDir, pg: &PgOptions, size: u64) {
    let data = s.entries(0, size).unwrap();
    let want = root_from_leaves(&data.iter().map(|d| leaf_hash(d)).collect::<Vec<_>>());
    assert_eq!(s.with_tree(|t| (t.size(), t.root())).unwrap(), (size, want));
    s.close();
    let again = open(dir, pg);
    assert_eq!(
        again.with_tree(|t| (t.size(), t.root())).unwrap(),
        (size, want)
    );
    again.close();
}

/// Forty allow-shaped jobs (job `i` inserts grant `g{i}` and appends
/// `allowed.{i}` the way `job` says) as one batch of a store whose
/// statements are prepared: the store, with all of them committed, and
/// how many times the writer waited for PostgreSQL in that batch and the
/// one holding the writer before it.
fn forty_allows(job: impl Fn(usize) -> BatchJob) -> (Store, tempfile::TempDir, u64) {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let s = open(&dir, &pg);
    // Prepares the statements once.
    s.transact_blocking(|tx| {
        tx.insert_grant(&grant("warm"))?;
        tx.append(entry("warm"))
    })
    .unwrap();
    let before = s.writer_stats().unwrap();
    let (held, out) = one_batch(&s, |_| Ok(()), (0..40).map(job).collect());
    held.unwrap();
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    let after = s.writer_stats().unwrap();
    assert_eq!(after.batches - before.batches, 2);
    let want: Vec<String> = std::iter::once("warm".to_string())
        .chain((0..40).map(|i| format!("allowed.{i}")))
        .collect();
    assert_eq!(events(&s), want, "numbered in job order, no gap");
    for i in 0..40 {
        assert!(s.get_grant(&format!("g{i}")).unwrap().is_some());
    }
    (s, dir, after.round_trips - before.round_trips)
}

#[test]
fn a_batch_of_writes_waits_for_postgresql_about_once_per_job() {
    let (s, _dir, waits) = forty_allows(|i| {
        Box::new(move |tx: &mut dyn Tx| {
            tx.insert_grant(&grant(&format!("g{i}")))?;
            tx.append(entry(&format!("allowed.{i}")))
        })
    });
    // Two batches: begin (BEGIN with the head lock), commit (the log
    // rows, the head, COMMIT), and in the second one wait per job, before
    // it is told its entry's index. One statement at a time took four
    // waits per job.
    assert_eq!(waits, (1 + 1) + (1 + 40 + 1), "waits: {waits}");
    s.close();
}

#[test]
fn a_row_another_replica_committed_conflicts_with_its_job_alone() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let a = open(&dir, &pg);
    let b = open(&dir, &pg);
    a.transact_blocking(|tx| {
        tx.insert_grant(&grant("g"))?;
        tx.append(entry("a.0"))
    })
    .unwrap();
    a.transact_blocking(|tx| {
        assert!(tx.use_grant("g", 6)?);
        tx.append(entry("a.1"))
    })
    .unwrap();
    // B's batch sees A's rows: its compare-and-set loses, its insert of
    // the same id conflicts (that job alone fails), and its entries follow
    // A's.
    let jobs: Vec<BatchJob> = vec![
        Box::new(|tx| {
            let won = tx.use_grant("g", 7)?;
            tx.append(entry(if won { "b.cas-won" } else { "b.cas-lost" }))
        }),
        Box::new(|tx| {
            tx.insert_grant(&grant("g"))?;
            tx.append(entry("b.conflict"))
        }),
        Box::new(|tx| tx.append(entry("b.ok"))),
    ];
    let (held, out) = one_batch(&b, |_| Ok(()), jobs);
    held.unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &2);
    let conflict = out[1].as_ref().unwrap_err().to_string();
    assert!(conflict.contains("23505"), "unique violation: {conflict}");
    assert_eq!(out[2].as_ref().unwrap(), &3);
    assert_eq!(events(&a), vec!["a.0", "a.1", "b.cas-lost", "b.ok"]);
    assert_eq!(a.get_grant("g").unwrap().unwrap().used_at, Some(6));
    assert_eq!(
        a.with_tree(|t| t.root()).unwrap(),
        b.with_tree(|t| t.root()).unwrap()
    );
    a.close();
    b.close();
}

/// Runs the jobs `make` builds (one of them stops the cluster it is given)
/// as one batch after an entry "before": every job is refused, nothing of
/// the batch is kept, and after PostgreSQL returns the next append takes
/// index 1.
fn stopping_postgresql_mid_batch_keeps_nothing(
    make: impl FnOnce(std::sync::Arc<Cluster>) -> Vec<BatchJob>,
) {
    // A cluster of its own: this test stops it.
    let c = std::sync::Arc::new(Cluster::start_private());
    let (dir, pg) = migrated(&c);
    let s = open(&dir, &pg);
    s.transact_blocking(|tx| tx.append(entry("before")))
        .unwrap();
    let (held, out) = one_batch(&s, |_| Ok(()), make(c.clone()));
    held.unwrap();
    for (i, r) in out.iter().enumerate() {
        assert!(r.is_err(), "job {i} of the batch is refused: {r:?}");
    }
    assert!(s.health().is_err(), "health reports the outage");
    assert_eq!(s.log_size(), 1, "nothing refused joined the tree");
    c.pg_start();
    // The writer reconnects at its next batch; nothing refused was kept.
    let i = s.transact_blocking(|tx| tx.append(entry("after"))).unwrap();
    assert_eq!(i, 1, "nothing refused took an index");
    assert_eq!(events(&s), vec!["before", "after"]);
    for g in ["lost.0", "lost.1", "lost.2"] {
        assert!(s.get_grant(g).unwrap().is_none(), "{g} was not kept");
    }
    s.close();
}

#[test]
fn postgresql_stopping_mid_batch_fails_every_job_of_it_and_keeps_nothing() {
    // The batch's second job stops PostgreSQL after its writes were sent.
    stopping_postgresql_mid_batch_keeps_nothing(|cluster| {
        vec![
            Box::new(|tx| {
                tx.insert_grant(&grant("lost.0"))?;
                tx.append(entry("lost.0"))
            }),
            Box::new(move |tx| {
                tx.insert_grant(&grant("lost.1"))?;
                let i = tx.append(entry("lost.1"))?;
                cluster.stop("immediate");
                Ok(i)
            }),
            Box::new(|tx| {
                tx.insert_grant(&grant("lost.2"))?;
                tx.append(entry("lost.2"))
            }),
        ]
    });
}

#[test]
fn a_batch_where_many_jobs_fail_after_writing_sends_its_writes_again_once() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let s = open(&dir, &pg);
    s.transact_blocking(|tx| {
        tx.insert_grant(&grant("warm"))?;
        tx.put_record("t", "warm", "x")?;
        tx.append(entry("warm"))
    })
    .unwrap();
    let before = s.writer_stats().unwrap();
    // Every odd job writes, then refuses.
    let jobs: Vec<BatchJob> = (0..20)
        .map(|i| {
            Box::new(move |tx: &mut dyn Tx| {
                tx.insert_grant(&grant(&format!("g{i}")))?;
                tx.put_record("t", &format!("k{i}"), "v")?;
                let index = tx.append(entry(&format!("job.{i}")))?;
                if i % 2 == 1 {
                    return Err(StoreError::Corrupt(format!("job {i} refuses")));
                }
                Ok(index)
            }) as BatchJob
        })
        .collect();
    let (held, out) = one_batch(&s, |_| Ok(()), jobs);
    held.unwrap();
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(index) => {
                assert_eq!(i % 2, 0);
                assert_eq!(*index, 1 + i as u64 / 2, "contiguous after the kept ones");
            }
            Err(e) => {
                assert_eq!(i % 2, 1);
                assert!(e.to_string().contains("refuses"), "{e}");
            }
        }
    }
    let want: Vec<String> = std::iter::once("warm".to_string())
        .chain((0..20).step_by(2).map(|i| format!("job.{i}")))
        .collect();
    assert_eq!(events(&s), want);
    for i in 0..20 {
        let kept = i % 2 == 0;
        assert_eq!(s.get_grant(&format!("g{i}")).unwrap().is_some(), kept);
        assert_eq!(s.get_record("t", &format!("k{i}")).unwrap().is_some(), kept);
    }
    // The holding batch: 2 waits. This one: begin, one per job (before
    // it is told its index), one to send the earlier writes again after
    // the first failure (the later failures roll back to savepoints of
    // their own, in the pipeline), commit.
    let waits = s.writer_stats().unwrap().round_trips - before.round_trips;
    assert_eq!(waits, 2 + (1 + 20 + 1 + 1), "waits: {waits}");
    s.close();
}

/// An allow as the gateway commits it: its grant row, and its entry
/// appended without asking for the index.
fn allow(id: &str, event: &str) -> BatchJob {
    let (id, event) = (id.to_string(), event.to_string());
    Box::new(move |tx| {
        tx.insert_grant(&grant(&id))?;
        tx.append_later(entry(&event).prepare().unwrap())?;
        Ok(0)
    })
}

#[test]
fn allows_that_append_later_wait_for_postgresql_once_per_batch() {
    let (s, _dir, waits) = forty_allows(|i| allow(&format!("g{i}"), &format!("allowed.{i}")));
    // The holding batch: begin, commit. This one: begin, one wait for all
    // forty jobs' statements (before the commit numbers their entries),
    // commit.
    assert_eq!(waits, 2 + (1 + 1 + 1), "waits: {waits}");
    s.close();
}

#[test]
fn an_allow_whose_statement_fails_after_it_returned_is_undone_alone() {
    let (dir, pg, s) = with_taken_grant();
    let jobs: Vec<BatchJob> = vec![
        allow("a", "ok.0"),
        // Its grant's id exists: found only when a later job reads.
        allow("taken", "duplicate.1"),
        allow("b", "ok.2"),
        // Reads what the jobs before wrote, once they are settled: the
        // failed one is undone, the others kept.
        Box::new(|tx| {
            assert!(tx.get_grant("a")?.is_some());
            assert!(tx.get_grant("b")?.is_some());
            assert_eq!(tx.get_grant("taken")?.unwrap().digest, "d");
            let won = tx.use_grant("b", 9)?;
            tx.append(entry(if won { "read.3" } else { "lost.3" }))
        }),
        allow("c", "ok.4"),
        // Fails too: after the first failure the batch's jobs are
        // settled at their end, so this one rolls back to its own
        // savepoint.
        allow("taken", "duplicate.5"),
        allow("d", "ok.6"),
    ];
    let (held, out) = one_batch(&s, |_| Ok(()), jobs);
    held.unwrap();
    for i in [1, 5] {
        let e = out[i].as_ref().unwrap_err().to_string();
        assert!(e.contains("23505"), "job {i}: the unique violation: {e}");
    }
    for i in [0, 2, 4, 6] {
        assert!(out[i].is_ok(), "job {i}: {:?}", out[i]);
    }
    assert_eq!(
        out[3].as_ref().unwrap(),
        &2,
        "the reading job's index counts only the kept entries before it"
    );
    assert_eq!(s.health(), Ok(()), "a failing job is not a storage failure");
    // Entries contiguous, each at its index, in job order without the
    // failed ones.
    assert_eq!(events(&s), vec!["ok.0", "ok.2", "read.3", "ok.4", "ok.6"]);
    for g in ["a", "b", "c", "d"] {
        assert!(s.get_grant(g).unwrap().is_some(), "{g} kept");
    }
    assert_eq!(s.get_grant("b").unwrap().unwrap().used_at, Some(9));
    tree_is_the_stored_entries(s, &dir, &pg, 5);
}

#[test]
fn allows_from_three_replicas_appending_later_are_totally_ordered_into_one_tree() {
    let c = Cluster::get();
    let (dir, pg) = migrated(c);
    let stores: Vec<Store> = (0..3).map(|_| open(&dir, &pg)).collect();
    let rt = multi_thread();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (r, s) in stores.iter().enumerate() {
            for i in 0..40 {
                let s = s.clone();
                let job = allow(&format!("g{r}.{i}"), &format!("r{r}.{i}"));
                tasks.push(tokio::spawn(async move { s.transact(job).await }));
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    // Every replica's view: the same 120 entries, each once, each at its
    // index, and the same root.
    let got = events(&stores[0]);
    assert_eq!(got.len(), 120);
    let set: HashSet<&String> = got.iter().collect();
    assert_eq!(set.len(), 120, "each acknowledged allow logged once");
    let data = stores[0].entries(0, 120).unwrap();
    let want = root_from_leaves(&data.iter().map(|d| leaf_hash(d)).collect::<Vec<_>>());
    for s in &stores {
        eventually("each replica's tree has all entries", || {
            s.log_size() == 120
        });
        assert_eq!(s.with_tree(|t| t.root()).unwrap(), want);
        assert_eq!(events(s), got);
    }
    for s in &stores {
        s.close();
    }
}

#[test]
fn postgresql_stopping_before_allows_are_settled_fails_them_all_and_keeps_nothing() {
    // The second allow stops PostgreSQL after the first two sent their
    // writes, none of them answered yet.
    stopping_postgresql_mid_batch_keeps_nothing(|cluster| {
        vec![
            allow("lost.0", "lost.0"),
            Box::new(move |tx| {
                tx.insert_grant(&grant("lost.1"))?;
                tx.append_later(entry("lost.1").prepare().unwrap())?;
                cluster.stop("immediate");
                Ok(0)
            }),
            allow("lost.2", "lost.2"),
        ]
    });
}
