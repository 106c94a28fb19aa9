//! Several stores (as several gateway replicas would open them) on one
//! PostgreSQL database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::pgtest::Cluster;
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
    let db = c.database();
    let opts = c.options(&db);
    let dir = tempfile::tempdir().unwrap();
    Store::migrate(&StoreOptions::new(dir.path()).postgres(opts.clone())).unwrap();
    (dir, opts)
}

fn open(dir: &tempfile::TempDir, pg: &PgOptions) -> Store {
    Store::open(StoreOptions::new(dir.path()).postgres(pg.clone())).unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
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
    let a = open(&dir, &pg);
    let b = open(&dir, &pg);
    let mut changes = b
        .remote_changes()
        .expect("a PostgreSQL store announces changes");
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
    // The password never shows in debug output.
    let mut o = PgOptions::new("postgres://sk@db/sk");
    o.password = Some("hunter2".into());
    assert!(!format!("{o:?}").contains("hunter2"));
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
            matches!(err, StoreError::Commit(_)),
            "an append with the database down is refused: {err}"
        );
        assert!(s.health().is_err(), "health reports the outage");
        assert!(s.get_request("x").is_err(), "reads fail too, and say so");
    }
    c.pg_start();
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
