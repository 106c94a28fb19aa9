use super::*;
use secondkey_log::merkle::leaf_hash;

/// A runtime for the async store calls (`transact_background` needs timers).
/// A runtime with two workers, as the gateway has on two cores.
pub(crate) fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A store to test on either backend: a data directory, and for
/// PostgreSQL a fresh database (migrated) in the shared test cluster.
struct Fixture {
    dir: tempfile::TempDir,
    db: Option<String>,
}

impl Fixture {
    fn new(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => {
                let c = crate::pgtest::Cluster::get();
                let db = c.database();
                Store::migrate(&StoreOptions::new(dir.path()).postgres(c.options(&db))).unwrap();
                Some(db)
            }
        };
        Fixture { dir, db }
    }

    fn options(&self) -> StoreOptions {
        let o = StoreOptions::new(self.dir.path());
        match &self.db {
            Some(db) => o.postgres(crate::pgtest::Cluster::get().options(db)),
            None => o,
        }
    }

    /// Runs SQL behind the store's back (what an operator with write access
    /// to the database could do).
    fn sql(&self, sql: &str) {
        match &self.db {
            Some(db) => {
                crate::pgtest::Cluster::get().sql(db, sql);
            }
            None => {
                let conn =
                    rusqlite::Connection::open(self.dir.path().join("secondkey.db")).unwrap();
                conn.execute_batch(sql).unwrap();
            }
        }
    }

    fn set_entry(&self, idx: u64, data: &[u8]) {
        let lit = match &self.db {
            Some(_) => format!("'\\x{}'::bytea", hex::encode(data)),
            None => format!("X'{}'", hex::encode(data)),
        };
        self.sql(&format!(
            "UPDATE log_entries SET data = {lit} WHERE idx = {idx}"
        ));
    }
}

/// Runs each named test on SQLite and on PostgreSQL.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(super::Kind::Sqlite)
                }
                #[test]
                fn postgres() {
                    super::$name(super::Kind::Postgres)
                }
            }
        )*
    };
}

both_backends!(
    appends_are_durable_and_survive_reopen,
    a_failing_job_changes_nothing_and_does_not_spoil_its_batch,
    oversized_entry_is_refused_with_nothing_written,
    grant_use_is_compare_and_set,
    a_changed_entry_is_caught_at_startup_against_the_anchor,
    the_tree_matches_the_stored_bytes,
    requests_are_found_by_requester_digest_and_state,
    pending_requests_are_counted_per_requester,
    records_are_namespaced_listed_by_prefix_and_rolled_back_with_their_job,
    background_jobs_commit_durably_alone_or_with_a_waited_job,
    a_background_job_whose_submitter_goes_away_is_still_committed,
    concurrent_background_and_waited_jobs_all_commit_once,
    commit_delay_never_holds_a_lone_caller_and_commits_every_job_once,
    entries_are_listed_by_request_in_log_order_and_rolled_back_with_their_job,
    migration_indexes_the_entries_already_logged,
    a_job_handed_over_soon_commits_while_waited_jobs_race_it,
);

/// An entry about request `id` (its `request` subject), or about none.
fn about(event: &str, id: Option<&str>) -> Entry {
    let mut e = entry(event);
    if let Some(id) = id {
        e.subjects.insert("request".into(), id.into());
    }
    e
}

fn indexes(store: &Store, id: &str, limit: usize) -> Vec<u64> {
    let rows = store.request_entries(id, limit).unwrap();
    for (idx, data) in &rows {
        let e = Entry::from_bytes(data).unwrap();
        assert_eq!(
            (e.index, e.subjects.get("request").map(String::as_str)),
            (*idx, Some(id))
        );
    }
    rows.into_iter().map(|(i, _)| i).collect()
}

fn entries_are_listed_by_request_in_log_order_and_rolled_back_with_their_job(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    // 0: a, 1: none, 2: b, 3: a (prepared off the writer), 4: a
    for (event, id) in [("x", Some("req_a")), ("y", None), ("z", Some("req_b"))] {
        store
            .transact_blocking(move |tx| tx.append(about(event, id)))
            .unwrap();
    }
    let prepared = about("p", Some("req_a")).prepare().unwrap();
    assert_eq!(prepared.request(), Some("req_a"));
    store
        .transact_blocking(move |tx| tx.append_prepared(prepared))
        .unwrap();
    store
        .transact_blocking(|tx| tx.append(about("w", Some("req_a"))))
        .unwrap();
    // A job that fails after appending about req_a leaves no index row.
    let failed = store.transact_blocking(|tx| -> Result<(), StoreError> {
        tx.append(about("lost", Some("req_a")))?;
        Err(StoreError::Corrupt("the job fails".into()))
    });
    assert!(failed.is_err());
    store
        .transact_blocking(|tx| tx.append(about("v", Some("req_b"))))
        .unwrap();
    assert_eq!(indexes(&store, "req_a", 100), vec![0, 3, 4]);
    assert_eq!(indexes(&store, "req_b", 100), vec![2, 5]);
    assert_eq!(indexes(&store, "req_a", 2), vec![0, 3]);
    assert!(indexes(&store, "req_none", 100).is_empty());
    // Ids are matched exactly: no prefix, no case folding, no SQL.
    assert!(indexes(&store, "req_", 100).is_empty());
    assert!(indexes(&store, "REQ_A", 100).is_empty());
    assert!(indexes(&store, "' OR 1=1 --", 100).is_empty());
    store.close();
    let store = Store::open(f.options()).unwrap();
    assert_eq!(indexes(&store, "req_a", 100), vec![0, 3, 4]);
}

fn migration_indexes_the_entries_already_logged(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    for (event, id) in [
        ("x", Some("req_a")),
        ("y", None),
        ("z", Some("req_b")),
        ("w", Some("req_a")),
    ] {
        store
            .transact_blocking(move |tx| tx.append(about(event, id)))
            .unwrap();
    }
    store.close();
    // The schema as the previous version left it: no index.
    match kind {
        Kind::Sqlite => f.sql("DROP TABLE log_by_request; PRAGMA user_version = 5;"),
        Kind::Postgres => {
            f.sql("DROP TABLE log_by_request; DELETE FROM secondkey_schema WHERE version = 2;");
            assert!(matches!(
                Store::open(f.options()),
                Err(StoreError::NotMigrated {
                    found: 1,
                    current: 2
                })
            ));
            Store::migrate(&f.options()).unwrap();
        }
    }
    let store = Store::open(f.options()).unwrap();
    assert_eq!(indexes(&store, "req_a", 100), vec![0, 3]);
    assert_eq!(indexes(&store, "req_b", 100), vec![2]);
    // New appends keep indexing after the migration.
    store
        .transact_blocking(|tx| tx.append(about("n", Some("req_b"))))
        .unwrap();
    assert_eq!(indexes(&store, "req_b", 100), vec![2, 4]);
}

fn entry(event: &str) -> Entry {
    new_entry(
        "2026-11-22T00:00:00Z",
        event,
        Some("user:alice"),
        serde_json::json!({"n": 1}),
    )
}

fn appends_are_durable_and_survive_reopen(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    for i in 0..10u64 {
        let idx = store
            .transact_blocking(|tx| tx.append(entry("t.append")))
            .unwrap();
        assert_eq!(idx, i);
    }
    let root = store.with_tree(|t| t.root()).unwrap();
    store.close();
    let store = Store::open(f.options()).unwrap();
    assert_eq!(store.log_size(), 10);
    assert_eq!(store.with_tree(|t| t.root()).unwrap(), root);
    let entries = store.entries(0, 10).unwrap();
    assert_eq!(entries.len(), 10);
    let e = Entry::from_bytes(&entries[3]).unwrap();
    assert_eq!(e.index, 3);
}

fn a_failing_job_changes_nothing_and_does_not_spoil_its_batch(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let rt = current_thread();
    rt.block_on(async {
        let ok1 = store.transact(|tx| tx.append(entry("a")));
        let bad = store.transact(|tx| {
            tx.append(entry("b"))?;
            tx.put_meta("k", "v")?;
            Err::<u64, _>(StoreError::Corrupt("refused on purpose".into()))
        });
        let ok2 = store.transact(|tx| tx.append(entry("c")));
        let (a, b, c) = tokio::join!(ok1, bad, ok2);
        assert_eq!(a.unwrap(), 0);
        assert!(b.is_err());
        assert_eq!(
            c.unwrap(),
            1,
            "the failed job's entry must not take an index"
        );
    });
    assert_eq!(store.log_size(), 2);
    assert_eq!(store.get_meta("k").unwrap(), None);
    let data = store.entries(0, 2).unwrap();
    assert_eq!(Entry::from_bytes(&data[1]).unwrap().event, "c");
}

fn oversized_entry_is_refused_with_nothing_written(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let big = "x".repeat(70_000);
    let r = store.transact_blocking(move |tx| {
        tx.append(new_entry(
            "2026-11-22T00:00:00Z",
            "big",
            None,
            serde_json::json!({ "s": big }),
        ))
    });
    assert!(matches!(r, Err(StoreError::Entry(_))), "{r:?}");
    assert_eq!(store.log_size(), 0);
}

fn grant_use_is_compare_and_set(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let g = GrantRow {
        id: "g1".into(),
        request_id: None,
        digest: "d".into(),
        requester: "agent:x".into(),
        expires_at: 10,
        used_at: None,
    };
    store
        .transact_blocking(move |tx| tx.insert_grant(&g))
        .unwrap();
    // Many concurrent consumers: exactly one wins.
    let rt = multi_thread();
    let wins = rt.block_on(async {
        let mut set = Vec::new();
        for _ in 0..50 {
            let s = store.clone();
            set.push(tokio::spawn(async move {
                s.transact(|tx| tx.use_grant("g1", 5)).await
            }));
        }
        let mut wins = 0;
        for h in set {
            if h.await.unwrap().unwrap() {
                wins += 1;
            }
        }
        wins
    });
    assert_eq!(wins, 1);
    store.close();
    let store = Store::open(f.options()).unwrap();
    assert!(
        !store.transact_blocking(|tx| tx.use_grant("g1", 6)).unwrap(),
        "single use survives a restart"
    );
    assert_eq!(store.get_grant("g1").unwrap().unwrap().used_at, Some(5));
}

fn a_changed_entry_is_caught_at_startup_against_the_anchor(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    for _ in 0..5 {
        store.transact_blocking(|tx| tx.append(entry("x"))).unwrap();
    }
    let (size, root) = store.with_tree(|t| (t.size(), t.root())).unwrap();
    let rt = current_thread();
    rt.block_on(store.anchor(size, root, "note".into()))
        .unwrap();
    // The anchor never moves backwards.
    rt.block_on(store.anchor(1, [0u8; 32], "older".into()))
        .unwrap();
    assert_eq!(store.last_checkpoint().unwrap().as_deref(), Some("note"));
    store.close();
    // An operator with write access edits entry 2 in place.
    let mut forged = entry("forged");
    forged.index = 2;
    f.set_entry(2, &forged.to_bytes().unwrap());
    let err = Store::open(f.options()).unwrap_err();
    assert!(matches!(err, StoreError::Tampered(_)), "{err}");
    // And a deleted entry.
    f.sql("DELETE FROM log_entries WHERE idx = 4");
    let err = Store::open(f.options()).unwrap_err();
    assert!(matches!(err, StoreError::Tampered(_)), "{err}");
}

fn the_tree_matches_the_stored_bytes(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    for _ in 0..300 {
        store.transact_blocking(|tx| tx.append(entry("x"))).unwrap();
    }
    let data = store.entries(0, 300).unwrap();
    let hashes: Vec<_> = data.iter().map(|d| leaf_hash(d)).collect();
    let want = secondkey_log::merkle::root_from_leaves(&hashes);
    assert_eq!(store.with_tree(|t| t.root()).unwrap(), want);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    store.close();
    let conn = rusqlite::Connection::open(dir.path().join("secondkey.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let err = Store::open(StoreOptions::new(dir.path()).read_only()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    // A reader does not migrate: an older database is refused, and says so.
    let conn = rusqlite::Connection::open(dir.path().join("secondkey.db")).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    let err = Store::open(StoreOptions::new(dir.path()).read_only()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooOld { found: 1, .. }),
        "{err}"
    );
}

/// The store holds every action's parameters and every grant: a data
/// directory the store makes is its user's alone (0700), and so are the
/// database and its WAL and shared-memory files (0600), whatever the umask.
#[test]
fn a_new_store_is_readable_by_its_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let store = Store::open(StoreOptions::new(&dir)).unwrap();
    store.transact_blocking(|tx| tx.append(entry("x"))).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    for f in ["secondkey.db", "secondkey.db-wal", "secondkey.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    store.close();
}

#[test]
fn one_writer_per_data_directory_and_read_only_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    store.transact_blocking(|tx| tx.append(entry("x"))).unwrap();
    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let ro = Store::open(StoreOptions::new(dir.path()).read_only()).unwrap();
    assert_eq!(ro.log_size(), 1);
    assert_eq!(ro.entries(0, 1).unwrap().len(), 1);
    let err = ro
        .transact_blocking(|tx| tx.append(entry("y")))
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly), "{err}");
    let missing = tempfile::tempdir().unwrap();
    assert!(Store::open(StoreOptions::new(missing.path()).read_only()).is_err());
}

#[test]
fn a_full_disk_fails_every_append_closed_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.max_pages = Some(40);
    let store = Store::open(opts).unwrap();
    let mut acked = 0u64;
    let mut failed = 0;
    for i in 0..2000 {
        let big = "y".repeat(2000 + i);
        let r = store.transact_blocking(move |tx| {
            tx.append(new_entry(
                "2026-11-22T00:00:00Z",
                "fill",
                None,
                serde_json::json!({ "s": big }),
            ))
        });
        match r {
            Ok(idx) => {
                assert_eq!(idx, acked);
                acked += 1;
            }
            Err(e) => {
                assert!(!matches!(e, StoreError::Job(_)), "{e}");
                failed += 1;
                if failed > 5 {
                    break;
                }
            }
        }
    }
    assert!(failed > 0, "the cap was reached");
    assert!(
        store.health().is_err(),
        "health reports the failing storage"
    );
    // Nothing unacknowledged became part of the log; the tree matches disk.
    assert_eq!(store.log_size(), acked);
    let data = store.entries(0, acked + 10).unwrap();
    assert_eq!(data.len() as u64, acked);
    let hashes: Vec<_> = data.iter().map(|d| leaf_hash(d)).collect();
    assert_eq!(
        store.with_tree(|t| t.root()).unwrap(),
        secondkey_log::merkle::root_from_leaves(&hashes)
    );
}

fn pending_request(id: &str, requester: &str, action_json: serde_json::Value) -> Request {
    use secondkey_core::action::Action;
    use secondkey_core::principal::Principal;
    use secondkey_core::time::Timestamp;
    let (action, digest) = Action::from_json(&action_json).unwrap();
    let requester = Principal {
        id: requester.parse().unwrap(),
        owner: None,
        groups: Default::default(),
        subjects: Default::default(),
    };
    Request::new(
        id.into(),
        digest,
        action,
        requester,
        vec![],
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(60),
        Timestamp(1_000),
    )
}

fn requests_are_found_by_requester_digest_and_state(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let a = serde_json::json!({"kind": "sql", "operation": "read", "resource": "postgres://x/t"});
    let b = serde_json::json!({"kind": "sql", "operation": "read", "resource": "postgres://x/u"});
    let r1 = pending_request("req_1", "agent:bot", a.clone());
    let r2 = pending_request("req_2", "agent:other", a.clone());
    let digest = r1.digest.as_str().to_string();
    store
        .transact_blocking(move |tx| {
            tx.put_request(&r1)?;
            tx.put_request(&r2)
        })
        .unwrap();
    let found = store
        .find_request("agent:bot", &digest, RequestState::Pending)
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "req_1");
    assert!(store
        .find_request("agent:bot", &digest, RequestState::Approved)
        .unwrap()
        .is_none());
    let other = pending_request("req_3", "agent:bot", b).digest;
    assert!(store
        .find_request("agent:bot", other.as_str(), RequestState::Pending)
        .unwrap()
        .is_none());
    // Inside a job the lookup sees the job's own writes.
    let d2 = digest.clone();
    let seen = store
        .transact_blocking(move |tx| {
            let mut r = tx
                .find_request("agent:other", &d2, RequestState::Pending)?
                .unwrap();
            r.state = RequestState::Withdrawn;
            tx.put_request(&r)?;
            Ok(tx
                .find_request("agent:other", &d2, RequestState::Pending)?
                .is_none())
        })
        .unwrap();
    assert!(seen);
}

fn pending_requests_are_counted_per_requester(kind: Kind) {
    use secondkey_core::time::Timestamp;
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let action = |n: u32| serde_json::json!({"kind": "sql", "operation": "write", "resource": format!("postgres://x/t{n}")});
    let mut rs: Vec<Request> = (0..4)
        .map(|n| pending_request(&format!("req_{n}"), "agent:bot", action(n)))
        .collect();
    rs[1].state = RequestState::Approved;
    rs[2].expires_at = Timestamp(5_000);
    rs.push(pending_request("req_x", "agent:other", action(9)));
    let (n, first) = store
        .transact_blocking(move |tx| {
            for r in &rs {
                tx.put_request(r)?;
            }
            tx.pending_of("agent:bot", 2_000)
        })
        .unwrap();
    // req_0, req_2 (until 5 s) and req_3; not the approved one, not another's.
    assert_eq!((n, first), (3, Some(5_000)));
    let (n, first) = store
        .transact_blocking(|tx| tx.pending_of("agent:bot", 5_000))
        .unwrap();
    assert_eq!(
        (n, first),
        (2, Some(61_000)),
        "past its deadline it no longer counts"
    );
    let none = store
        .transact_blocking(|tx| tx.pending_of("agent:nobody", 0))
        .unwrap();
    assert_eq!(none, (0, None));
}

#[test]
fn migration_backfills_the_digest_of_existing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    let r = pending_request(
        "req_old",
        "agent:bot",
        serde_json::json!({"kind": "mcp", "operation": "write", "resource": "mcp://s/t"}),
    );
    let digest = r.digest.as_str().to_string();
    store
        .transact_blocking(move |tx| tx.put_request(&r))
        .unwrap();
    store.close();
    // Roll the database back to schema 2 as an older binary left it.
    let conn = rusqlite::Connection::open(dir.path().join("secondkey.db")).unwrap();
    conn.execute_batch(
        "DROP INDEX requests_by_digest; ALTER TABLE requests DROP COLUMN digest;
         DROP TABLE records; PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    let found = store
        .find_request("agent:bot", &digest, RequestState::Pending)
        .unwrap();
    assert_eq!(found.map(|r| r.id), Some("req_old".to_string()));
}

#[test]
fn migration_keeps_grants_and_their_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    store.close();
    // The grants table as schema 3 had it (a rowid table), with one used
    // and one unused grant in it.
    let conn = rusqlite::Connection::open(dir.path().join("secondkey.db")).unwrap();
    conn.execute_batch(
        "DROP TABLE grants;
         CREATE TABLE grants (id TEXT PRIMARY KEY, request_id TEXT, digest TEXT NOT NULL,
            requester TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
         INSERT INTO grants VALUES ('grt_used', 'req_1', 'd1', 'agent:x', 10, 5);
         INSERT INTO grants VALUES ('grt_fresh', NULL, 'd2', 'agent:y', 20, NULL);
         PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    let used = store.get_grant("grt_used").unwrap().unwrap();
    assert_eq!(
        (used.request_id.as_deref(), used.used_at),
        (Some("req_1"), Some(5))
    );
    let fresh = store.get_grant("grt_fresh").unwrap().unwrap();
    assert_eq!((fresh.digest.as_str(), fresh.expires_at), ("d2", 20));
    let first = store
        .transact_blocking(|tx| tx.use_grant("grt_fresh", 7))
        .unwrap();
    let again = store
        .transact_blocking(|tx| tx.use_grant("grt_fresh", 8))
        .unwrap();
    let old = store
        .transact_blocking(|tx| tx.use_grant("grt_used", 9))
        .unwrap();
    assert_eq!((first, again, old), (true, false, false));
    store.close();
    let conn = rusqlite::Connection::open(dir.path().join("secondkey.db")).unwrap();
    let without_rowid: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'grants'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(without_rowid.contains("WITHOUT ROWID"), "{without_rowid}");
}

fn records_are_namespaced_listed_by_prefix_and_rolled_back_with_their_job(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    store
        .transact_blocking(|tx| {
            for k in ["U1", "U2", "U3", "V1"] {
                tx.put_record("slack.link", k, &format!("user:{k}"))?;
            }
            tx.put_record("teams.link", "U1", "user:t")?;
            tx.put_record("slack.link", "U2", "user:replaced")
        })
        .unwrap();
    assert_eq!(
        store.get_record("slack.link", "U2").unwrap().as_deref(),
        Some("user:replaced")
    );
    assert_eq!(
        store.get_record("teams.link", "U1").unwrap().as_deref(),
        Some("user:t")
    );
    assert_eq!(store.get_record("slack.link", "nope").unwrap(), None);
    let keys = |v: Vec<(String, String)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list_records("slack.link", "U", None, 100).unwrap()),
        ["U1", "U2", "U3"]
    );
    assert_eq!(
        keys(store.list_records("slack.link", "", None, 2).unwrap()),
        ["U1", "U2"]
    );
    assert_eq!(
        keys(
            store
                .list_records("slack.link", "U", Some("U1"), 100)
                .unwrap()
        ),
        ["U2", "U3"]
    );
    assert_eq!(
        keys(
            store
                .list_records("slack.link", "", Some("U3"), 100)
                .unwrap()
        ),
        ["V1"]
    );
    // A failing job's records are undone with it.
    let r = store.transact_blocking(|tx| {
        tx.put_record("slack.link", "U9", "x")?;
        assert!(tx.delete_record("slack.link", "U1")?);
        Err::<(), _>(StoreError::Corrupt("refused on purpose".into()))
    });
    assert!(r.is_err());
    assert_eq!(store.get_record("slack.link", "U9").unwrap(), None);
    assert!(store.get_record("slack.link", "U1").unwrap().is_some());
    let deleted = store
        .transact_blocking(|tx| {
            Ok((
                tx.delete_record("slack.link", "U1")?,
                tx.delete_record("slack.link", "U1")?,
            ))
        })
        .unwrap();
    assert_eq!(deleted, (true, false));

    // Walked whole, past a page of 10,000, each record once in key order;
    // an error from the walker ends the walk and is returned.
    store
        .transact_blocking(|tx| {
            for i in 0..10_001 {
                tx.put_record("t.walk", &format!("k{i:05}"), &i.to_string())?;
            }
            Ok(())
        })
        .unwrap();
    let mut seen = Vec::new();
    store
        .for_each_record("t.walk", |k, v| {
            seen.push((k.to_string(), v.to_string()));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let want: Vec<_> = (0..10_001)
        .map(|i| (format!("k{i:05}"), i.to_string()))
        .collect();
    assert_eq!(seen.len(), want.len(), "every record once");
    assert!(seen == want, "in key order, with its value");
    let mut walked = 0;
    let r = store.for_each_record("t.walk", |k, _| {
        walked += 1;
        match k {
            "k00002" => Err(StoreError::Corrupt("stop here".into())),
            _ => Ok(()),
        }
    });
    assert!(matches!(r, Err(StoreError::Corrupt(m)) if m == "stop here"));
    assert_eq!(walked, 3);
}

/// Background jobs (results recorded after the fact) are as durable as any
/// other when they return, whether they commit alone after their linger or
/// together with a job someone waits on; a failing background job changes
/// nothing and does not take the other job of its batch down.
fn background_jobs_commit_durably_alone_or_with_a_waited_job(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let rt = current_thread();
    rt.block_on(async {
        // Alone: it commits once its linger is over.
        store
            .transact_background(|tx| tx.put_record("t.bg", "alone", "1"))
            .await
            .unwrap();
        // With a waited-on job arriving while it lingers, and a failing one.
        let bg = store.transact_background(|tx| tx.put_record("t.bg", "shared", "2"));
        let bad = store.transact_background(|tx| {
            tx.put_record("t.bg", "bad", "3")?;
            Err::<(), _>(StoreError::Corrupt("refused".into()))
        });
        let fg = store.transact(|tx| tx.put_record("t.fg", "decision", "4"));
        let (a, b, c) = tokio::join!(bg, bad, fg);
        a.unwrap();
        assert!(b.is_err());
        c.unwrap();
    });
    store.close();
    drop(store);
    let store = Store::open(f.options()).unwrap();
    assert_eq!(
        store.get_record("t.bg", "alone").unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(
        store.get_record("t.bg", "shared").unwrap().as_deref(),
        Some("2")
    );
    assert_eq!(store.get_record("t.bg", "bad").unwrap(), None);
    assert_eq!(
        store.get_record("t.fg", "decision").unwrap().as_deref(),
        Some("4")
    );
}

/// A background job is parked without waking the writer; if whoever
/// submitted it goes away before it ran, it still gets its commit (the
/// submitter nudges the writer as it goes), without any other job coming.
fn a_background_job_whose_submitter_goes_away_is_still_committed(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let rt = current_thread();
    rt.block_on(async {
        let job = store.transact_background(|tx| tx.put_record("t.bg", "orphan", "1"));
        // Polled (so parked), then dropped long before its linger is over.
        let gone = tokio::time::timeout(std::time::Duration::from_micros(1), job).await;
        assert!(
            gone.is_err(),
            "the job cannot have committed within 1 µs of its linger"
        );
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.get_record("t.bg", "orphan").unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "an orphaned background job was never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    store.close();
}

/// Runs `jobs` jobs on each of 8 concurrent tasks (job `i` of task `t`
/// made by `job(store, "t-i", i)`) and counts the jobs that failed.
async fn failed_jobs<F, Fut>(store: &Store, jobs: usize, job: F) -> usize
where
    F: Fn(Store, String, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (s, job) = (store.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..jobs {
                failed += usize::from(job(s.clone(), format!("{t}-{i}"), i).await.is_err());
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    failed
}

/// Many background jobs at once, from many tasks, mixed with jobs someone
/// waits on, and more parked than one batch may hold: every one commits,
/// once, and each waiter hears its own outcome.
fn concurrent_background_and_waited_jobs_all_commit_once(kind: Kind) {
    let f = Fixture::new(kind);
    let mut options = f.options();
    options.max_batch = 4;
    let store = Store::open(options).unwrap();
    let rt = multi_thread();
    let failed = rt.block_on(failed_jobs(&store, 50, |s, key, i| async move {
        if i % 5 == 0 {
            s.transact(move |tx| tx.put_record("t.fg", &key, "1")).await
        } else if i % 7 == 0 {
            // A failing background job changes nothing.
            s.transact_background(move |tx| {
                tx.put_record("t.bg", &key, "1")?;
                Err(StoreError::Corrupt("refused".into()))
            })
            .await
        } else {
            s.transact_background(move |tx| tx.put_record("t.bg", &key, "1"))
                .await
        }
    }));
    // Of i in 0..50: multiples of 5 are waited on (10); of the rest,
    // multiples of 7 (7, 14, 21, 28, 42, 49) fail: 6 per task.
    assert_eq!(failed, 8 * 6);
    let bg = store.list_records("t.bg", "", None, 10_000).unwrap();
    let fg = store.list_records("t.fg", "", None, 10_000).unwrap();
    assert_eq!(fg.len(), 8 * 10);
    assert_eq!(bg.len(), 8 * 34);
    store.close();
}

/// Group commit's delay: a caller alone never waits for it (each of 20
/// sequential jobs would otherwise take the whole delay), and jobs of many
/// concurrent callers, batched by it, each commit once with their own
/// outcome.
fn commit_delay_never_holds_a_lone_caller_and_commits_every_job_once(kind: Kind) {
    let f = Fixture::new(kind);
    let mut options = f.options();
    let delay = std::time::Duration::from_millis(500);
    options.commit_delay = delay;
    let store = Store::open(options).unwrap();
    let rt = multi_thread();
    rt.block_on(async {
        let started = std::time::Instant::now();
        for i in 0..20 {
            let key = format!("lone-{i}");
            store
                .transact(move |tx| tx.put_record("t.lone", &key, "1"))
                .await
                .unwrap();
        }
        // Held by the delay, 20 jobs would take at least 10 s.
        assert!(
            started.elapsed() < delay * 10,
            "a lone caller waited for the commit delay: {:?}",
            started.elapsed()
        );
        let failed = failed_jobs(&store, 25, |s, key, i| async move {
            if i % 6 == 5 {
                // A failing job changes nothing and spoils no other.
                s.transact(move |tx| {
                    tx.put_record("t.many", &key, "1")?;
                    Err::<(), _>(StoreError::Corrupt("refused".into()))
                })
                .await
            } else {
                s.transact(move |tx| tx.put_record("t.many", &key, "1"))
                    .await
            }
        })
        .await;
        // i in 0..25 with i % 6 == 5: 5, 11, 17, 23.
        assert_eq!(failed, 8 * 4);
    });
    assert_eq!(
        store.list_records("t.lone", "", None, 100).unwrap().len(),
        20
    );
    assert_eq!(
        store.list_records("t.many", "", None, 1000).unwrap().len(),
        8 * 21
    );
    store.close();
}

/// A pending request, for the replica tests.
pub(crate) fn pending_request_for_replicas(id: &str, requester: &str) -> Request {
    pending_request(
        id,
        requester,
        serde_json::json!({"kind": "sql", "operation": "write", "resource": "db://x", "params": {}}),
    )
}

#[test]
fn the_log_size_watch_never_moves_back() {
    // The writer and the follower publish from their own threads after
    // letting go of the tree: a smaller size may come second.
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    crate::publish_size(&tx, 12);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 12);
    crate::publish_size(&tx, 10);
    crate::publish_size(&tx, 12);
    assert!(!rx.has_changed().unwrap(), "no wake-up for nothing new");
    assert_eq!(*rx.borrow(), 12);
    crate::publish_size(&tx, 13);
    assert_eq!(*rx.borrow_and_update(), 13);
}

/// `transact_soon` parks its job and nudges the writer, racing jobs that
/// wake the writer themselves: each soon job commits without any later
/// traffic (a nudge consumed by a batch that looked at the parked jobs
/// before the job was parked must not strand it).
fn a_job_handed_over_soon_commits_while_waited_jobs_race_it(kind: Kind) {
    let f = Fixture::new(kind);
    let store = Store::open(f.options()).unwrap();
    let rt = multi_thread();
    rt.block_on(async {
        for i in 0..200 {
            let s = store.clone();
            let waited = tokio::spawn(async move {
                s.transact(move |tx| tx.put_record("t.w", &i.to_string(), "1"))
                    .await
            });
            let soon = store.transact_soon(move |tx| tx.put_record("t.s", &i.to_string(), "1"));
            tokio::time::timeout(std::time::Duration::from_secs(30), soon)
                .await
                .unwrap_or_else(|_| panic!("soon job {i} was stranded"))
                .unwrap();
            waited.await.unwrap().unwrap();
        }
    });
    assert_eq!(
        store.list_records("t.s", "", None, 1000).unwrap().len(),
        200
    );
    store.close();
}

#[test]
fn health_reports_the_writer_then_a_stalled_commit_then_the_follower() {
    let h = crate::Health::default();
    assert_eq!(h.report(), Ok(()));
    h.busy();
    assert_eq!(h.report(), Ok(()), "a batch under way is no failure");
    h.idle();
    // A batch that began longer ago than STALLED_AFTER and has not ended.
    let long_ago = crate::STALLED_AFTER + std::time::Duration::from_secs(1);
    let h = crate::Health {
        epoch: std::time::Instant::now().checked_sub(long_ago).unwrap(),
        ..Default::default()
    };
    h.busy_since.store(1, std::sync::atomic::Ordering::Relaxed);
    let stalled = || {
        h.report()
            .unwrap_err()
            .contains("a commit has not come back")
    };
    assert!(stalled(), "{:?}", h.report());
    h.set_follower(Some("the follower fails".into()));
    assert!(stalled(), "a stalled commit comes before the follower");
    h.set_writer(Some("the disk is full".into()));
    assert_eq!(h.report(), Err("the disk is full".into()));
    h.set_writer(None);
    h.idle();
    assert_eq!(h.report(), Err("the follower fails".into()));
    h.set_follower(None);
    assert_eq!(h.report(), Ok(()));
}
