//! The embedded SQLite backend: one writer thread doing group commit, a
//! small pool of reader connections (WAL lets them read while it writes).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{params, Connection, OptionalExtension};
use secondkey_core::request::{Request, RequestState};
use secondkey_log::merkle::{leaf_hash, Hash, Tree};

use crate::{Anchor, GrantRow, LogView, Shared, StoreError, StoreOptions, Tx};

/// The newest schema version this binary knows. Each migration below moves
/// the database one version forward, inside a transaction.
const SCHEMA_VERSION: i64 = 5;

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
];

type JobResult = Result<Box<dyn Any + Send>, StoreError>;
type JobFn = Box<dyn FnOnce(&mut dyn Tx) -> JobResult + Send>;

struct Job {
    run: JobFn,
    reply: tokio::sync::oneshot::Sender<JobResult>,
}

/// What the writer thread is woken with.
enum Wake {
    /// A job someone waits on: commit it now, with the parked ones.
    Job(Job),
    /// A parked job's linger is over: commit the parked jobs.
    Nudge,
}

/// Jobs nobody is held up by (results recorded after the fact) wait here,
/// without waking the writer, for the next job someone waits on to take
/// them into its commit, or at most [`BACKGROUND_LINGER`], after which
/// their submitter nudges the writer.
type Parked = Arc<Mutex<Vec<Job>>>;

/// How long a background job waits for a commit to share, so that it
/// neither costs a commit (and a wake-up of the writer) of its own nor
/// makes a waited-on job queue behind one.
const BACKGROUND_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

struct Inner {
    path: PathBuf,
    read_only: bool,
    /// Held until `close`: one writer per data directory.
    lock: Mutex<Option<std::fs::File>>,
    /// The last commit failure, cleared by the next success (`/healthz`).
    health: Arc<Mutex<Option<String>>>,
    /// `None` once closed. Held while a background job is parked, so that
    /// no job is parked after the writer took the last ones.
    jobs: Mutex<Option<mpsc::Sender<Wake>>>,
    parked: Parked,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    view: Shared,
    size_tx: tokio::sync::watch::Sender<u64>,
}

/// The store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

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
    let tree = Tree::from_leaf_hashes(hashes);
    let anchor: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'anchor'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(a) = anchor {
        let anchor = parse_anchor(&a)?;
        if anchor.size > tree.size() {
            return Err(StoreError::Tampered(format!(
                "the log was signed at size {} but only {} entries remain (truncated)",
                anchor.size,
                tree.size()
            )));
        }
        let root = tree
            .root_at(anchor.size)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if root != anchor.root {
            return Err(StoreError::Tampered(format!(
                "the root of the first {} entries no longer matches the signed checkpoint (an entry was changed)",
                anchor.size
            )));
        }
    }
    Ok(tree)
}

fn parse_anchor(s: &str) -> Result<Anchor, StoreError> {
    let bad = || StoreError::Corrupt(format!("meta 'anchor' is malformed: {s:?}"));
    let (size, root) = s.split_once(' ').ok_or_else(bad)?;
    let size: u64 = size.parse().map_err(|_| bad())?;
    let bytes = hex::decode(root).map_err(|_| bad())?;
    let root: Hash = bytes.try_into().map_err(|_| bad())?;
    Ok(Anchor { size, root })
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

impl Store {
    /// Opens (creating if needed) the store in `options.data_dir`, runs
    /// migrations, rebuilds the log tree and starts the writer thread.
    /// Read-only stores skip the lock, migrations and writer.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
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
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found < SCHEMA_VERSION {
                return Err(StoreError::SchemaTooOld {
                    found,
                    current: SCHEMA_VERSION,
                });
            }
            (conn, None)
        } else {
            std::fs::create_dir_all(&options.data_dir).map_err(|source| StoreError::DataDir {
                path: options.data_dir.clone(),
                source,
            })?;
            let lock = lock_dir(&options.data_dir)?;
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
        let size = tree.size();
        let view = Arc::new(LogView {
            tree: RwLock::new(tree),
        });
        let (size_tx, _) = tokio::sync::watch::channel(size);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Wake>();
        let parked: Parked = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(Mutex::new(None));
        let inner = Arc::new(Inner {
            path: path.clone(),
            read_only: options.read_only,
            lock: Mutex::new(lock),
            health: health.clone(),
            jobs: Mutex::new((!options.read_only).then_some(jobs_tx)),
            parked: parked.clone(),
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            view: view.clone(),
            size_tx: size_tx.clone(),
        });
        if options.read_only {
            return Ok(Store { inner });
        }
        let max_batch = options.max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("secondkey-store-writer".into())
            .spawn(move || writer_loop(conn, jobs_rx, parked, view, size_tx, max_batch, health))
            .map_err(|source| StoreError::DataDir { path, source })?;
        if let Ok(mut w) = inner.writer.lock() {
            *w = Some(handle);
        }
        Ok(Store { inner })
    }

    /// Runs `job` inside a transaction, together with other queued jobs, and
    /// resolves once the transaction is durable. The job must be quick and
    /// must not block: it runs on the writer thread.
    pub async fn transact<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.enqueue(job, false)?;
        downcast(rx.await.map_err(|_| StoreError::Unavailable)?)
    }

    /// [`Store::transact`] for work nobody is waiting on (recording what an
    /// action did once it ran): just as durable when it returns, but it is
    /// parked without waking the writer for up to 2 ms, to share its commit
    /// with a decision instead of making that decision wait behind a commit
    /// of its own. Needs a Tokio runtime with timers.
    pub async fn transact_background<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let mut rx = self.enqueue(job, true)?;
        // Dropped before the job ran, the caller still leaves it a commit.
        let nudge = NudgeOnDrop(Some(self));
        let out = match tokio::time::timeout(BACKGROUND_LINGER, &mut rx).await {
            Ok(out) => out,
            Err(_) => {
                self.nudge();
                (&mut rx).await
            }
        };
        nudge.disarm();
        downcast(out.map_err(|_| StoreError::Unavailable)?)
    }

    /// Wakes the writer to commit the parked jobs.
    fn nudge(&self) {
        if let Ok(jobs) = self.inner.jobs.lock() {
            if let Some(tx) = jobs.as_ref() {
                let _ = tx.send(Wake::Nudge);
            }
        }
    }

    /// Like [`Store::transact`] for synchronous callers (CLI, tests). Must not
    /// be called from inside an async runtime.
    pub fn transact_blocking<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.enqueue(job, false)?;
        downcast(rx.blocking_recv().map_err(|_| StoreError::Unavailable)?)
    }

    fn enqueue<T, F>(
        &self,
        job: F,
        background: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<JobResult>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let run: JobFn = Box::new(move |tx| job(tx).map(|v| Box::new(v) as Box<dyn Any + Send>));
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        let guard = self
            .inner
            .jobs
            .lock()
            .map_err(|_| StoreError::Unavailable)?;
        let sender = guard.as_ref().ok_or(StoreError::Unavailable)?;
        let job = Job { run, reply };
        if background {
            self.inner
                .parked
                .lock()
                .map_err(|_| StoreError::Unavailable)?
                .push(job);
        } else {
            sender
                .send(Wake::Job(job))
                .map_err(|_| StoreError::Unavailable)?;
        }
        Ok(rx)
    }

    /// Stops accepting jobs, lets the writer finish what is queued, and waits
    /// for it.
    pub fn close(&self) {
        if let Ok(mut j) = self.inner.jobs.lock() {
            j.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Ok(mut l) = self.inner.lock.lock() {
            l.take();
        }
    }

    /// Runs a read on a pooled reader connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = {
            let mut pool = self
                .inner
                .readers
                .lock()
                .map_err(|_| StoreError::Unavailable)?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.inner.path, self.inner.read_only)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        out
    }

    /// `Err` with the reason while the last commit failed (disk full, I/O
    /// error): the gateway is then refusing everything.
    pub fn health(&self) -> Result<(), String> {
        match self.inner.health.lock() {
            Ok(h) => h.clone().map_or(Ok(()), Err),
            Err(_) => Err("the store's health lock is poisoned".into()),
        }
    }

    /// Requests that concern `viewer` (as requester, owner, on-behalf-of
    /// principal or member of a required group), newest first, `limit` at a
    /// time; `before` is the `next` of the previous page.
    pub fn list_for(
        &self,
        viewer: &crate::Viewer,
        state: Option<RequestState>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<crate::RequestPage, StoreError> {
        let limit = limit.clamp(1, 1000);
        let cursor = match before {
            Some(c) => {
                let (ts, id) = c
                    .split_once('.')
                    .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_string())))
                    .ok_or_else(|| StoreError::Corrupt(format!("bad page cursor {c:?}")))?;
                Some((ts, id))
            }
            None => None,
        };
        let mut parties = vec![format!("p:{}", viewer.principal)];
        parties.extend(viewer.groups.iter().map(|g| format!("g:{g}")));
        self.read(|c| {
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
            let mut stmt = c.prepare_cached(&sql)?;
            let mut args: Vec<rusqlite::types::Value> = vec![
                state.map(state_str).into(),
                cursor.as_ref().map(|c| c.0).into(),
                cursor.as_ref().map(|c| c.1.clone()).into(),
                ((limit + 1) as i64).into(),
            ];
            args.extend(parties.iter().cloned().map(rusqlite::types::Value::from));
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut requests = Vec::new();
            let mut next = None;
            for row in rows {
                let (body, ts, id) = row?;
                if requests.len() == limit {
                    break;
                }
                requests.push(decode_request(&body)?);
                next = Some(format!("{ts}.{id}"));
            }
            if requests.len() < limit {
                next = None;
            }
            Ok(crate::RequestPage { requests, next })
        })
    }

    /// The last signed checkpoint the gateway recorded, if any.
    pub fn last_checkpoint(&self) -> Result<Option<String>, StoreError> {
        self.get_meta("checkpoint")
    }

    /// Committed log size.
    pub fn log_size(&self) -> u64 {
        self.inner.view.tree.read().map(|t| t.size()).unwrap_or(0)
    }

    /// A receiver that changes whenever committed log size grows.
    pub fn watch_log_size(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.size_tx.subscribe()
    }

    /// Runs `f` with the committed tree (read lock; keep it short).
    pub fn with_tree<T>(&self, f: impl FnOnce(&Tree) -> T) -> Result<T, StoreError> {
        let t = self
            .inner
            .view
            .tree
            .read()
            .map_err(|_| StoreError::Unavailable)?;
        Ok(f(&t))
    }

    /// Log entries `[start, end)` as stored bytes.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT idx, data FROM log_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let rows = stmt.query_map(params![start as i64, end as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut out = Vec::new();
            for (want, row) in (start as i64..).zip(rows) {
                let (idx, data) = row?;
                if idx != want {
                    return Err(StoreError::Tampered(format!("log entry {want} is missing")));
                }
                out.push(data);
            }
            Ok(out)
        })
    }

    pub fn get_request(&self, id: &str) -> Result<Option<Request>, StoreError> {
        self.read(|c| read_request(c, id))
    }

    /// Ids of requests whose request or grant deadline has passed at `now_ms`.
    pub fn due_for_expiry(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM requests
                 WHERE (state = 'pending' AND expires_at <= ?1)
                    OR (state = 'approved' AND grant_expires_at IS NOT NULL AND grant_expires_at <= ?1)
                 LIMIT 1000",
            )?;
            let rows = stmt.query_map(params![now_ms], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    /// Ids of pending, not yet escalated requests of which at least
    /// `fraction` of the TTL has passed at `now_ms`.
    pub fn due_for_escalation(
        &self,
        now_ms: i64,
        fraction: f64,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM requests
                 WHERE state = 'pending' AND escalated = 0
                   AND created_at + CAST((expires_at - created_at) * ?2 AS INTEGER) <= ?1
                 LIMIT 1000",
            )?;
            let rows = stmt.query_map(params![now_ms, fraction], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    pub fn get_grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        self.read(|c| read_grant(c, id))
    }

    /// Number of requests per state.
    pub fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT state, COUNT(*) FROM requests GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| read_meta(c, key))
    }

    /// The newest request of `requester` for the action with `digest` in
    /// `state`, if any.
    pub fn find_request(
        &self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        self.read(|c| find_request(c, requester, digest, state))
    }

    /// One adapter record (see [`Tx::put_record`]).
    pub fn get_record(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| read_record(c, ns, key))
    }

    /// Records of namespace `ns` whose key starts with `prefix`, in key
    /// order, at most `limit` (capped at 10,000), starting after the key
    /// `after` when given (for paging).
    pub fn list_records(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = limit.clamp(1, 10_000) as i64;
        // Keys in [prefix, prefix + U+10FFFF): everything that starts with it.
        let upper = format!("{prefix}\u{10FFFF}");
        let lower = match after {
            Some(a) if a >= prefix => a.to_string(),
            _ => prefix.to_string(),
        };
        let inclusive = after.is_none_or(|a| a < prefix);
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT key, value FROM records
                 WHERE ns = ?1 AND (key > ?2 OR (?3 AND key = ?2)) AND key < ?4
                 ORDER BY key LIMIT ?5",
            )?;
            let rows = stmt.query_map(params![ns, lower, inclusive, upper, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records that the first `size` entries were signed with root `root`
    /// (and the signed note saying so); at every later start the store
    /// refuses to serve a log whose entries no longer hash to it. Only ever
    /// moves forward.
    pub async fn anchor(&self, size: u64, root: Hash, note: String) -> Result<(), StoreError> {
        self.transact(move |tx| {
            if let Some(old) = tx.get_meta("anchor")? {
                if parse_anchor(&old)?.size >= size {
                    return Ok(());
                }
            }
            tx.put_meta("anchor", &format!("{size} {}", hex::encode(root)))?;
            tx.put_meta("checkpoint", &note)
        })
        .await
    }
}

fn state_str(s: RequestState) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{s:?}").to_lowercase(),
    }
}

fn decode_request(body: &str) -> Result<Request, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("request record: {e}")))
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
        let mut parties = vec![format!("p:{}", r.requester.id)];
        if let Some(o) = &r.requester.owner {
            parties.push(format!("p:{o}"));
        }
        if let Some(o) = &r.action.on_behalf_of {
            parties.push(format!("p:{o}"));
        }
        // Groups an escalation added are parties too: their members may
        // now review, so they list and see the request.
        for req in &r.requirements {
            parties.extend(req.all_groups().iter().map(|g| format!("g:{g}")));
        }
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

/// A job's answer, as the type its caller asked for.
fn downcast<T: 'static>(result: JobResult) -> Result<T, StoreError> {
    result?
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| StoreError::Corrupt("job result type mismatch".into()))
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Wake>,
    parked: Parked,
    view: Shared,
    size_tx: tokio::sync::watch::Sender<u64>,
    max_batch: usize,
    health: Arc<Mutex<Option<String>>>,
) {
    // Parked jobs first: they were submitted before the job that woke us.
    let unpark = |batch: &mut Vec<Job>| {
        if let Ok(mut p) = parked.lock() {
            let n = p.len().min(max_batch.saturating_sub(batch.len()));
            batch.extend(p.drain(..n));
        }
    };
    let commit = |batch: Vec<Job>| {
        let outcome = run_batch(&conn, batch, &view, &size_tx);
        if let Ok(mut h) = health.lock() {
            *h = outcome.err();
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        unpark(&mut batch);
        if let Wake::Job(job) = first {
            batch.push(job);
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Wake::Job(job)) => batch.push(job),
                Ok(Wake::Nudge) => {}
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit(batch);
        }
    }
    // Closed: what is still parked gets its commit before the writer ends.
    loop {
        let mut batch = Vec::new();
        unpark(&mut batch);
        if batch.is_empty() {
            break;
        }
        commit(batch);
    }
}

/// Nudges the writer when a background job's submitter goes away before
/// its job ran, so that the job does not wait for some later commit.
struct NudgeOnDrop<'a>(Option<&'a Store>);

impl NudgeOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for NudgeOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            store.nudge();
        }
    }
}

fn run_batch(
    conn: &Connection,
    batch: Vec<Job>,
    view: &Shared,
    size_tx: &tokio::sync::watch::Sender<u64>,
) -> Result<(), String> {
    let base = match view.tree.read() {
        Ok(t) => t.size(),
        Err(_) => return fail_all(batch, "the log tree lock is poisoned"),
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return fail_all(batch, &format!("cannot begin a transaction: {e}"));
    }
    let mut pending: Vec<Hash> = Vec::new();
    let mut storage_failure: Option<String> = None;
    let mut results: Vec<(tokio::sync::oneshot::Sender<JobResult>, JobResult)> =
        Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = sql(conn, "SAVEPOINT job") {
            let _ = conn.execute_batch("ROLLBACK");
            let mut rest: Vec<_> = results.into_iter().map(|(r, _)| r).collect();
            rest.push(job.reply);
            for r in rest {
                let _ = r.send(Err(StoreError::Commit(format!("savepoint failed: {e}"))));
            }
            return Err(format!("savepoint failed: {e}"));
        }
        let mark = pending.len();
        let run = job.run;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut tx = SqliteTx {
                conn,
                base,
                pending: &mut pending,
            };
            run(&mut tx)
        }))
        .unwrap_or_else(|_| Err(StoreError::Corrupt("a store job panicked".into())));
        if let Err(StoreError::Db(e)) = &outcome {
            if is_storage_failure(e) {
                storage_failure = Some(e.to_string());
            }
        }
        let undo = outcome.is_err();
        let sp = if undo {
            pending.truncate(mark);
            sql(conn, "ROLLBACK TO job").and_then(|_| sql(conn, "RELEASE job"))
        } else {
            sql(conn, "RELEASE job")
        };
        if let Err(e) = sp {
            let _ = conn.execute_batch("ROLLBACK");
            let mut rest: Vec<_> = results.into_iter().map(|(r, _)| r).collect();
            rest.push(job.reply);
            for r in rest {
                let _ = r.send(Err(StoreError::Commit(format!("savepoint failed: {e}"))));
            }
            return Err(format!("savepoint failed: {e}"));
        }
        results.push((job.reply, outcome));
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        for (reply, _) in results {
            let _ = reply.send(Err(StoreError::Commit(e.to_string())));
        }
        return Err(format!("commit failed: {e}"));
    }
    if !pending.is_empty() {
        match view.tree.write() {
            Ok(mut tree) => {
                for h in pending {
                    tree.push(h);
                }
                let size = tree.size();
                drop(tree);
                size_tx.send_replace(size);
            }
            Err(_) => {
                // Durable but not visible: refuse to claim success.
                for (reply, _) in results {
                    let _ = reply.send(Err(StoreError::Unavailable));
                }
                return Err("the log tree lock is poisoned".into());
            }
        }
    }
    for (reply, result) in results {
        let _ = reply.send(result);
    }
    storage_failure.map_or(Ok(()), Err)
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

fn fail_all(batch: Vec<Job>, why: &str) -> Result<(), String> {
    for job in batch {
        let _ = job.reply.send(Err(StoreError::Commit(why.to_string())));
    }
    Err(why.to_string())
}
