//! The embedded SQLite backend: one writer thread doing group commit, a
//! small pool of reader connections (WAL lets them read while it writes).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use secondkey_core::request::{Request, RequestState};
use secondkey_log::merkle::{leaf_hash, Hash, Tree};

use crate::store::{JobFn, JobResult, Opened, Readers as AnyReaders, Writer};
use crate::{
    anchored_tree, decode_request, parties_of, state_str, GrantRow, Reads, Shared, StoreError,
    StoreOptions, Tx,
};

/// The newest schema version this binary knows. Each migration below moves
/// the database one version forward, inside a transaction.
pub(crate) const SCHEMA_VERSION: i64 = 6;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE log_entries (
        idx  INTEGER PRIMARY KEY,
        data BLOB NOT NULL
     );
     CREATE TABLE requests (
        id               TEXT PRIMARY KEY,
        state            TEXT NOT NULL,
        requester        TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        expires_at       INTEGER NOT NULL,
        grant_expires_at INTEGER,
        escalated        INTEGER NOT NULL DEFAULT 0,
        body             TEXT NOT NULL
     );
     CREATE INDEX requests_by_state ON requests(state, expires_at);
     CREATE TABLE grants (
        id         TEXT PRIMARY KEY,
        request_id TEXT,
        digest     TEXT NOT NULL,
        requester  TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
     );
     CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
    // 2: who each request concerns, so listing filters and pages in SQL
    // instead of reading every request; backfilled from the stored bodies.
    "CREATE TABLE request_parties (
        party      TEXT NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (party, request_id)
     ) WITHOUT ROWID;
     CREATE INDEX requests_by_created ON requests(created_at, id);
     INSERT OR IGNORE INTO request_parties SELECT 'p:' || requester, id FROM requests;
     INSERT OR IGNORE INTO request_parties
        SELECT 'p:' || json_extract(body, '$.requester.owner'), id FROM requests
        WHERE json_extract(body, '$.requester.owner') IS NOT NULL;
     INSERT OR IGNORE INTO request_parties
        SELECT 'p:' || json_extract(body, '$.action.on_behalf_of'), id FROM requests
        WHERE json_extract(body, '$.action.on_behalf_of') IS NOT NULL;
     INSERT OR IGNORE INTO request_parties
        SELECT 'g:' || g.value, requests.id
        FROM requests, json_each(requests.body, '$.requirements') AS r, json_each(r.value, '$.groups') AS g;",
    // 3: the action digest of each request, so an adapter finds the pending
    // or approved request for an action it sees again (retry after
    // approval, deduplicated holds); and namespaced records for adapter
    // state (identity links, channel messages, tool pins, lineage).
    "ALTER TABLE requests ADD COLUMN digest TEXT;
     UPDATE requests SET digest = json_extract(body, '$.digest');
     CREATE INDEX requests_by_digest ON requests(requester, digest, state);
     CREATE TABLE records (
        ns         TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        PRIMARY KEY (ns, key)
     ) WITHOUT ROWID;",
    // 4: grants keyed by their id alone (WITHOUT ROWID): one B-tree per
    // insert instead of a rowid table plus its index. Every allow inserts a
    // grant, so this is a page less to write at nearly every commit.
    "CREATE TABLE grants_by_id (
        id         TEXT PRIMARY KEY,
        request_id TEXT,
        digest     TEXT NOT NULL,
        requester  TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
     ) WITHOUT ROWID;
     INSERT INTO grants_by_id SELECT id, request_id, digest, requester, expires_at, used_at FROM grants;
     DROP TABLE grants;
     ALTER TABLE grants_by_id RENAME TO grants;",
    // 5: the pending requests of each requester, so the per-principal cap
    // on pending requests counts them without reading its history.
    "CREATE INDEX IF NOT EXISTS requests_pending_by_requester ON requests(requester, expires_at)
        WHERE state = 'pending';",
    // 6: the log entries of each request (its timeline), filled at append
    // from the entry's `request` subject, and here from the entries so far.
    "CREATE TABLE IF NOT EXISTS log_by_request (
        request_id TEXT NOT NULL,
        idx        INTEGER NOT NULL,
        PRIMARY KEY (request_id, idx)
     ) WITHOUT ROWID;
     INSERT OR IGNORE INTO log_by_request
        SELECT json_extract(CAST(data AS TEXT), '$.subjects.request'), idx FROM log_entries
        WHERE json_valid(CAST(data AS TEXT))
          AND json_extract(CAST(data AS TEXT), '$.subjects.request') IS NOT NULL;",
];

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    if read_only {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        return Ok(conn);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit returns only after the WAL is fsynced.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Rebuilds the tree from the stored entries, checking that indices are
/// contiguous and that the last anchored root still matches.
fn load_tree(conn: &Connection) -> Result<Tree, StoreError> {
    let mut stmt = conn.prepare("SELECT idx, data FROM log_entries ORDER BY idx")?;
    let mut rows = stmt.query([])?;
    let mut hashes: Vec<Hash> = Vec::new();
    while let Some(row) = rows.next()? {
        let idx: i64 = row.get(0)?;
        if idx != hashes.len() as i64 {
            return Err(StoreError::Tampered(format!(
                "log entry {} is missing (found entry {idx} after it)",
                hashes.len()
            )));
        }
        let data: Vec<u8> = row.get(1)?;
        hashes.push(leaf_hash(&data));
    }
    anchored_tree(hashes, read_meta(conn, "anchor")?)
}

/// Takes an exclusive, non-blocking lock on `dir/lock`: two gateways on one
/// data directory would each keep their own tree and corrupt the log.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::io::AsRawFd;
    let lock = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StoreError::DataDir {
            path: lock.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StoreError::Locked {
            path: dir.to_path_buf(),
            lock,
        });
    }
    Ok(file)
}

/// Makes `dir` (and missing parents) readable by this user alone (0700).
/// A directory that is already there keeps its mode: the operator chose it.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Creates the database file 0600 if it is not there yet (an empty file is
/// an empty database): it holds every action's parameters and every grant.
/// SQLite gives its WAL and shared-memory files the database file's mode.
fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::DataDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The schema version of `data_dir/secondkey.db` (0 if there is none).
pub(crate) fn version(data_dir: &Path) -> Result<i64, StoreError> {
    let path = data_dir.join("secondkey.db");
    if !path.exists() {
        return Ok(0);
    }
    let conn = open_conn(&path, true)?;
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Opens `data_dir/secondkey.db`: locked and migrated for writing, or
/// checked to be at this binary's schema for reading.
pub(crate) fn open(options: &StoreOptions) -> Result<Opened, StoreError> {
    let path = options.data_dir.join("secondkey.db");
    let (conn, lock) = if options.read_only {
        if !path.exists() {
            return Err(StoreError::DataDir {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no database here; is data_dir right?",
                ),
            });
        }
        let conn = open_conn(&path, true)?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        crate::check_version(found, SCHEMA_VERSION, |found, current| {
            StoreError::SchemaTooOld { found, current }
        })?;
        (conn, None)
    } else {
        private_dir(&options.data_dir)?;
        let lock = lock_dir(&options.data_dir)?;
        private_file(&path)?;
        let mut conn = open_conn(&path, false)?;
        // The writer gets 16 MiB of page cache (SQLite's default, which
        // the readers keep, is 2 MiB): it keeps the hot right edges of
        // every index in memory instead of re-reading them through the
        // kernel at each batch. Pages are cached only as they are used.
        conn.pragma_update(None, "cache_size", -16384)?;
        migrate(&mut conn)?;
        if let Some(pages) = options.max_pages {
            conn.pragma_update(None, "max_page_count", pages as i64)?;
        }
        (conn, Some(lock))
    };
    let tree = load_tree(&conn)?;
    let readers = Readers {
        path: path.clone(),
        read_only: options.read_only,
        pool: Mutex::new(Vec::new()),
    };
    let writer: Option<Box<dyn Writer>> = match lock {
        Some(_) => Some(Box::new(SqliteWriter { conn })),
        None => None,
    };
    Ok(Opened {
        location: path.display().to_string(),
        writer,
        readers: AnyReaders::Sqlite(readers),
        tree,
        lock,
    })
}

/// A small pool of reader connections (WAL lets them read while the
/// writer writes).
pub(crate) struct Readers {
    path: PathBuf,
    read_only: bool,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Reads) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.lock().map_err(|_| StoreError::Unavailable)?.pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path, self.read_only)?,
        };
        let out = f(&mut SqliteReads(&conn));
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        out
    }
}

struct SqliteReads<'a>(&'a Connection);

impl Reads for SqliteReads<'_> {
    fn request(&mut self, id: &str) -> Result<Option<Request>, StoreError> {
        read_request(self.0, id)
    }

    fn grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        read_grant(self.0, id)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        read_meta(self.0, key)
    }

    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        find_request(self.0, requester, digest, state)
    }

    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        pending_of(self.0, requester, now_ms)
    }

    fn record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        read_record(self.0, ns, key)
    }

    fn records(
        &mut self,
        ns: &str,
        lower: &str,
        inclusive: bool,
        upper: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT key, value FROM records
             WHERE ns = ?1 AND (key > ?2 OR (?3 AND key = ?2)) AND key < ?4
             ORDER BY key LIMIT ?5",
        )?;
        let rows = stmt.query_map(params![ns, lower, inclusive, upper, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn entries(&mut self, start: u64, end: u64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT idx, data FROM log_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )?;
        let rows = stmt.query_map(
            params![
                start.min(i64::MAX as u64) as i64,
                end.min(i64::MAX as u64) as i64
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn request_entries(
        &mut self,
        request_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT e.idx, e.data FROM log_by_request r JOIN log_entries e ON e.idx = r.idx
             WHERE r.request_id = ?1 ORDER BY r.idx LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![request_id, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn list_for(
        &mut self,
        parties: &[String],
        state: Option<String>,
        cursor: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        let marks = (0..parties.len())
            .map(|i| format!("?{}", i + 5))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT body, created_at, id FROM requests
             WHERE id IN (SELECT request_id FROM request_parties WHERE party IN ({marks}))
               AND (?1 IS NULL OR state = ?1)
               AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3))
             ORDER BY created_at DESC, id DESC LIMIT ?4"
        );
        let mut stmt = self.0.prepare_cached(&sql)?;
        let mut args: Vec<rusqlite::types::Value> = vec![
            state.into(),
            cursor.as_ref().map(|c| c.0).into(),
            cursor.map(|c| c.1).into(),
            limit.into(),
        ];
        args.extend(parties.iter().cloned().map(rusqlite::types::Value::from));
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn due_for_expiry(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id FROM requests
             WHERE (state = 'pending' AND expires_at <= ?1)
                OR (state = 'approved' AND grant_expires_at IS NOT NULL AND grant_expires_at <= ?1)
             LIMIT 1000",
        )?;
        let rows = stmt.query_map(params![now_ms], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    fn due_for_escalation(
        &mut self,
        now_ms: i64,
        fraction: f64,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id FROM requests
             WHERE state = 'pending' AND escalated = 0
               AND created_at + CAST((expires_at - created_at) * ?2 AS INTEGER) <= ?1
             LIMIT 1000",
        )?;
        let rows = stmt.query_map(params![now_ms, fraction], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    fn count_by_state(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT state, COUNT(*) FROM requests GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pending_ids(&mut self, limit: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id FROM requests WHERE state = 'pending'
             ORDER BY created_at, id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }
}

/// The writer thread's connection.
struct SqliteWriter {
    conn: Connection,
}

impl Writer for SqliteWriter {
    fn begin(
        &mut self,
        view: &Shared,
        _size_tx: &tokio::sync::watch::Sender<u64>,
    ) -> Result<u64, StoreError> {
        let base = view
            .tree
            .read()
            .map_err(|_| StoreError::Unavailable)?
            .size();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(base)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        Ok(sql(&self.conn, "SAVEPOINT job")?)
    }

    fn release(&mut self) -> Result<(), StoreError> {
        Ok(sql(&self.conn, "RELEASE job")?)
    }

    fn rollback_to(&mut self) -> Result<(), StoreError> {
        sql(&self.conn, "ROLLBACK TO job")?;
        Ok(sql(&self.conn, "RELEASE job")?)
    }

    fn commit(&mut self, _base: u64, _pending: &mut Vec<Hash>) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn run(&mut self, base: u64, pending: &mut Vec<Hash>, job: JobFn) -> JobResult {
        let mut tx = SqliteTx {
            conn: &self.conn,
            base,
            pending,
        };
        job(&mut tx)
    }

    fn is_storage_failure(&self, e: &StoreError) -> bool {
        matches!(e, StoreError::Db(e) if is_storage_failure(e))
    }
}

fn read_request(c: &Connection, id: &str) -> Result<Option<Request>, StoreError> {
    let body: Option<String> = c
        .prepare_cached("SELECT body FROM requests WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    body.map(|b| decode_request(&b)).transpose()
}

fn read_grant(c: &Connection, id: &str) -> Result<Option<GrantRow>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT id, request_id, digest, requester, expires_at, used_at FROM grants WHERE id = ?1",
    )?
    .query_row(params![id], |r| {
        Ok(GrantRow {
            id: r.get(0)?,
            request_id: r.get(1)?,
            digest: r.get(2)?,
            requester: r.get(3)?,
            expires_at: r.get(4)?,
            used_at: r.get(5)?,
        })
    })
    .optional()?)
}

fn read_meta(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?)
}

fn find_request(
    c: &Connection,
    requester: &str,
    digest: &str,
    state: RequestState,
) -> Result<Option<Request>, StoreError> {
    let body: Option<String> = c
        .prepare_cached(
            "SELECT body FROM requests WHERE requester = ?1 AND digest = ?2 AND state = ?3
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )?
        .query_row(params![requester, digest, state_str(state)], |r| r.get(0))
        .optional()?;
    body.map(|b| decode_request(&b)).transpose()
}

fn pending_of(
    c: &Connection,
    requester: &str,
    now_ms: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let (n, first): (i64, Option<i64>) = c
        .prepare_cached(
            "SELECT count(*), min(expires_at) FROM requests
             WHERE requester = ?1 AND state = 'pending' AND expires_at > ?2",
        )?
        .query_row(params![requester, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((u64::try_from(n).unwrap_or(0), first))
}

fn read_record(c: &Connection, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
    Ok(
        c.prepare_cached("SELECT value FROM records WHERE ns = ?1 AND key = ?2")?
            .query_row(params![ns, key], |r| r.get(0))
            .optional()?,
    )
}

struct SqliteTx<'a> {
    conn: &'a Connection,
    base: u64,
    pending: &'a mut Vec<Hash>,
}

impl Tx for SqliteTx<'_> {
    fn get_request(&mut self, id: &str) -> Result<Option<Request>, StoreError> {
        read_request(self.conn, id)
    }

    fn put_request(&mut self, r: &Request) -> Result<(), StoreError> {
        let body = serde_json::to_string(r)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode request: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO requests (id, state, requester, created_at, expires_at, grant_expires_at, escalated, body, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, expires_at = excluded.expires_at,
                   grant_expires_at = excluded.grant_expires_at, escalated = excluded.escalated, body = excluded.body",
            )?
            .execute(params![
                r.id,
                state_str(r.state),
                r.requester.id.to_string(),
                r.created_at.0,
                r.expires_at.0,
                r.grant.as_ref().map(|g| g.expires_at.0),
                r.escalated as i64,
                body,
                r.digest.as_str()
            ])?;
        let parties = parties_of(r);
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO request_parties (party, request_id) VALUES (?1, ?2)",
        )?;
        for p in parties {
            stmt.execute(params![p, r.id])?;
        }
        Ok(())
    }

    fn insert_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO grants (id, request_id, digest, requester, expires_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                g.id,
                g.request_id,
                g.digest,
                g.requester,
                g.expires_at,
                g.used_at
            ])?;
        Ok(())
    }

    fn get_grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        read_grant(self.conn, id)
    }

    fn use_grant(&mut self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("UPDATE grants SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL")?
            .execute(params![id, now_ms])?;
        Ok(n == 1)
    }

    fn append_prepared(
        &mut self,
        entry: secondkey_log::entry::Prepared,
    ) -> Result<u64, StoreError> {
        let index = self.base + self.pending.len() as u64;
        let bytes = entry.at(index);
        self.conn
            .prepare_cached("INSERT INTO log_entries (idx, data) VALUES (?1, ?2)")?
            .execute(params![index as i64, bytes])?;
        if let Some(request) = entry.request() {
            self.conn
                .prepare_cached("INSERT INTO log_by_request (request_id, idx) VALUES (?1, ?2)")?
                .execute(params![request, index as i64])?;
        }
        self.pending.push(leaf_hash(&bytes));
        Ok(index)
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        read_meta(self.conn, key)
    }

    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        find_request(self.conn, requester, digest, state)
    }

    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        pending_of(self.conn, requester, now_ms)
    }

    fn get_record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        read_record(self.conn, ns, key)
    }

    fn put_record(&mut self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO records (ns, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![ns, key, value])?;
        Ok(())
    }

    fn delete_record(&mut self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM records WHERE ns = ?1 AND key = ?2")?
            .execute(params![ns, key])?;
        Ok(n == 1)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }
}

/// Errors that mean the storage itself is failing (not a bad job).
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(DiskFull | SystemIoFailure | ReadOnly | CannotOpen | DatabaseCorrupt | NotADatabase)
    )
}

/// Runs a statement through the statement cache (savepoints run once per
/// job; re-parsing them each time showed up in profiles).
fn sql(conn: &Connection, stmt: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(stmt)?.execute([])?;
    Ok(())
}
