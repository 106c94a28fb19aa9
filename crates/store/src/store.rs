//! The store every backend shares: the queue of jobs, the writer thread
//! doing group commit, and the in-memory tree readers see. What differs
//! between SQLite and PostgreSQL is behind [`Writer`] (how a batch begins,
//! commits and runs its jobs) and [`Readers`].

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use secondkey_core::request::{Request, RequestState};
use secondkey_log::merkle::{Hash, Tree};

use crate::{
    decode_request, parse_anchor, state_str, GrantRow, LogView, Reads, Shared, StoreError,
    StoreOptions, Tx,
};

pub(crate) type JobResult = Result<Box<dyn Any + Send>, StoreError>;
pub(crate) type JobFn = Box<dyn FnOnce(&mut dyn Tx) -> JobResult + Send>;

pub(crate) struct Job {
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
    /// Where the data is, for messages (a path, or the PostgreSQL target).
    location: String,
    read_only: bool,
    /// Held until `close`: one writer per data directory (SQLite).
    lock: Mutex<Option<std::fs::File>>,
    /// The writer's and the follower's last failures (`/healthz`).
    health: crate::HealthCell,
    /// `None` once closed. Held while a background job is parked, so that
    /// no job is parked after the writer took the last ones.
    jobs: Mutex<Option<mpsc::Sender<Wake>>>,
    parked: Parked,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Readers,
    view: Shared,
    /// PostgreSQL: follows what other replicas commit.
    follower: Mutex<Option<crate::pg::Follower>>,
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
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// How a backend runs a batch of jobs on the writer thread.
pub(crate) trait Writer: Send + 'static {
    /// Begins the batch's transaction; returns the log index its first
    /// append gets (PostgreSQL: after locking the log head, and bringing
    /// the tree up to what other replicas committed).
    fn begin(
        &mut self,
        view: &Shared,
        size_tx: &tokio::sync::watch::Sender<u64>,
    ) -> Result<u64, StoreError>;
    /// Marks where the next job begins (SQLite: a savepoint; PostgreSQL:
    /// where its rows begin, see `pg::PgWriter`).
    fn savepoint(&mut self) -> Result<(), StoreError>;
    /// The job succeeded: keeps what it did.
    fn release(&mut self) -> Result<(), StoreError>;
    /// Undoes the job since its mark, and only it.
    fn rollback_to(&mut self) -> Result<(), StoreError>;
    /// Commits. `pending` holds the leaf hashes of the batch's entries,
    /// from index `base` on (PostgreSQL numbers them here and fills it).
    fn commit(&mut self, base: u64, pending: &mut Vec<Hash>) -> Result<(), StoreError>;
    fn rollback(&mut self);
    /// Runs one job against this backend's [`Tx`].
    fn run(&mut self, base: u64, pending: &mut Vec<Hash>, job: JobFn) -> JobResult;
    /// Jobs of the batch (by position) found to have failed after they
    /// returned, since last asked: each was undone alone (PostgreSQL,
    /// whose writes are checked when something depends on them).
    fn late_failures(&mut self) -> Vec<(usize, StoreError)> {
        Vec::new()
    }
    /// Whether an error means the storage itself is failing (reported by
    /// `/healthz`), not that the job was refused.
    fn is_storage_failure(&self, e: &StoreError) -> bool;
}

/// Reader connections of a backend.
pub(crate) enum Readers {
    Sqlite(crate::sqlite::Readers),
    Pg(Box<crate::pg::Readers>),
}

/// What a backend's `open` hands the store.
pub(crate) struct Opened {
    pub location: String,
    pub writer: Option<Box<dyn Writer>>,
    pub readers: Readers,
    pub tree: Tree,
    pub lock: Option<std::fs::File>,
}

impl Store {
    /// Opens the store: in `options.data_dir` (SQLite, created if needed) or
    /// in PostgreSQL when `options.postgres` is set. Checks the schema
    /// (SQLite migrates it; PostgreSQL refuses one `secondkey store migrate`
    /// has not brought up to date), rebuilds the log tree, checks it
    /// against the last anchor and starts the writer thread. Read-only
    /// stores skip the lock, migrations and writer.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
        let opened = match &options.postgres {
            Some(pg) => crate::pg::open(&options, pg)?,
            None => crate::sqlite::open(&options)?,
        };
        let size = opened.tree.size();
        let view = Arc::new(LogView {
            tree: RwLock::new(opened.tree),
        });
        let (size_tx, _) = tokio::sync::watch::channel(size);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Wake>();
        let parked: Parked = Arc::new(Mutex::new(Vec::new()));
        let health = crate::HealthCell::default();
        let follower = match &opened.readers {
            Readers::Pg(r) => Some(r.follow(view.clone(), size_tx.clone(), health.clone())?),
            Readers::Sqlite(_) => None,
        };
        let inner = Arc::new(Inner {
            location: opened.location.clone(),
            read_only: opened.writer.is_none(),
            lock: Mutex::new(opened.lock),
            health: health.clone(),
            jobs: Mutex::new(opened.writer.is_some().then_some(jobs_tx)),
            parked: parked.clone(),
            writer: Mutex::new(None),
            readers: opened.readers,
            view: view.clone(),
            follower: Mutex::new(follower),
            size_tx: size_tx.clone(),
        });
        let Some(backend) = opened.writer else {
            return Ok(Store { inner });
        };
        let batching = Batching {
            max: options.max_batch.max(1),
            delay: options.commit_delay,
        };
        let handle = std::thread::Builder::new()
            .name("secondkey-store-writer".into())
            .spawn(move || writer_loop(backend, jobs_rx, parked, view, size_tx, batching, health))
            .map_err(|source| StoreError::DataDir {
                path: options.data_dir.clone(),
                source,
            })?;
        if let Ok(mut w) = inner.writer.lock() {
            *w = Some(handle);
        }
        Ok(Store { inner })
    }

    /// Whether several gateway replicas may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.readers, Readers::Pg(_))
    }

    /// Ids of requests that any replica changed (PostgreSQL, delivered after
    /// the commit); `None` on SQLite, where the gateway's own broadcast is
    /// all there is.
    pub fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        match &self.inner.readers {
            Readers::Pg(r) => Some(r.subscribe()),
            Readers::Sqlite(_) => None,
        }
    }

    /// What the PostgreSQL writer's committed batches cost so far (time per
    /// phase, round trips): for diagnostics and the benchmarks; `None` on
    /// SQLite.
    pub fn writer_stats(&self) -> Option<crate::WriterStats> {
        match &self.inner.readers {
            Readers::Pg(r) => Some(r.stats()),
            Readers::Sqlite(_) => None,
        }
    }

    /// Brings a store's schema up to this binary's version. SQLite migrates
    /// whenever it is opened for writing; PostgreSQL only here (`secondkey
    /// store migrate`), so that replicas never race an upgrade and an old
    /// binary refuses a newer schema. Returns (version found, version now).
    pub fn migrate(options: &StoreOptions) -> Result<(i64, i64), StoreError> {
        match &options.postgres {
            Some(pg) => crate::pg::migrate(pg),
            None => {
                let found = crate::sqlite::version(&options.data_dir)?;
                let store = Store::open(options.clone())?;
                store.close();
                Ok((found, crate::sqlite::SCHEMA_VERSION))
            }
        }
    }

    /// Holds the lease `name` for `holder` until `now_ms + ttl_ms` if it is
    /// free, expired or already `holder`'s: true if `holder` holds it now.
    /// Background work that must run once across replicas (expiry,
    /// escalation, anchoring, sinks, chat followers) runs only while its
    /// replica holds the lease; all batches are serialized on the log head,
    /// so two replicas cannot both take it.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.transact(move |tx| {
            if let Some(v) = tx.get_record("lease", &name)? {
                let current: serde_json::Value = serde_json::from_str(&v)
                    .map_err(|e| StoreError::Corrupt(format!("lease {name}: {e}")))?;
                let other = current["holder"].as_str() != Some(holder.as_str());
                let live = current["until"].as_i64().unwrap_or(0) > now_ms;
                if other && live {
                    return Ok(false);
                }
            }
            let v = serde_json::json!({"holder": holder, "until": now_ms.saturating_add(ttl_ms)});
            tx.put_record("lease", &name, &v.to_string())?;
            Ok(true)
        })
        .await
    }

    /// Gives the lease up (at shutdown), if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.transact(move |tx| {
            if let Some(v) = tx.get_record("lease", &name)? {
                let current: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
                if current["holder"].as_str() == Some(holder.as_str()) {
                    tx.delete_record("lease", &name)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Brings the tree up to what other replicas committed (PostgreSQL;
    /// a no-op on SQLite, where this process is the only writer). The
    /// follower does this on every notification; callers that must see
    /// the newest log at once (a checkpoint request) call it too.
    pub fn catch_up(&self) -> Result<u64, StoreError> {
        match &self.inner.readers {
            Readers::Pg(r) => off_worker(|| r.catch_up(&self.inner.view, &self.inner.size_tx)),
            Readers::Sqlite(_) => Ok(self.log_size()),
        }
    }

    /// Runs `job` inside a transaction, together with other queued jobs, and
    /// resolves once the transaction is durable. The job must be quick and
    /// must not block: it runs on the writer thread.
    pub async fn transact<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        self.transact_sent(job).await
    }

    /// [`Store::transact`], with its job sent when this is called, not
    /// when the returned future is first polled; the future borrows
    /// nothing, so a task of its own can wait for it and then update what
    /// must follow the commit, however the caller ends (the job commits
    /// once sent, whether or not anyone still waits).
    pub fn transact_sent<T, F>(
        &self,
        job: F,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        answer(self.enqueue(job, false))
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

    /// Queues `job` behind the background jobs already parked (so that it
    /// runs after them, in submission order) and wakes the writer to commit
    /// it now. The job is queued when this is called, not when the returned
    /// future is first polled: a caller may queue it while holding its own
    /// lock, to order it against what that lock guards.
    pub fn transact_soon<T, F>(
        &self,
        job: F,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.enqueue(job, true);
        if rx.is_ok() {
            self.nudge();
        }
        answer(rx)
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
        if let Ok(mut f) = self.inner.follower.lock() {
            f.take();
        }
    }

    /// Runs a read on a pooled reader connection.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Reads) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.inner.readers {
            Readers::Sqlite(r) => r.read(f),
            Readers::Pg(r) => off_worker(|| r.read(f)),
        }
    }

    /// `Err` with the reason while the last commit failed (disk full, I/O
    /// error): the gateway is then refusing everything.
    pub fn health(&self) -> Result<(), String> {
        self.inner.health.report()
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
        let rows =
            self.read(|r| r.list_for(&parties, state.map(state_str), cursor, (limit + 1) as i64))?;
        let mut requests = Vec::new();
        let mut next = None;
        for (body, ts, id) in rows {
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
        let rows = self.read(|r| r.entries(start, end))?;
        let mut out = Vec::with_capacity(rows.len());
        for (want, (idx, data)) in (start as i64..).zip(rows) {
            if idx != want {
                return Err(StoreError::Tampered(format!("log entry {want} is missing")));
            }
            out.push(data);
        }
        Ok(out)
    }

    /// The log entries that concern request `id` (their `request`
    /// subject), in log order, at most `limit`: one indexed read, not a
    /// scan of the log. Entries another replica committed but this one's
    /// tree does not hold yet are left out, so each listed index can be
    /// proven.
    pub fn request_entries(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let size = self.log_size();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|r| r.request_entries(id, limit))?;
        Ok(rows
            .into_iter()
            .filter_map(|(idx, data)| u64::try_from(idx).ok().map(|i| (i, data)))
            .filter(|(idx, _)| *idx < size)
            .collect())
    }

    pub fn get_request(&self, id: &str) -> Result<Option<Request>, StoreError> {
        self.read(|r| r.request(id))
    }

    /// Ids of requests whose request or grant deadline has passed at `now_ms`.
    pub fn due_for_expiry(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.read(|r| r.due_for_expiry(now_ms))
    }

    /// Ids of pending, not yet escalated requests of which at least
    /// `fraction` of the TTL has passed at `now_ms`.
    pub fn due_for_escalation(
        &self,
        now_ms: i64,
        fraction: f64,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|r| r.due_for_escalation(now_ms, fraction))
    }

    /// Ids of pending requests, oldest first, at most `limit`: what a
    /// replica that takes over the background work checks it has posted.
    pub fn pending_ids(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|r| r.pending_ids(limit))
    }

    pub fn get_grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        self.read(|r| r.grant(id))
    }

    /// Number of requests per state.
    pub fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|r| r.count_by_state())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|r| r.meta(key))
    }

    /// The newest request of `requester` for the action with `digest` in
    /// `state`, if any.
    pub fn find_request(
        &self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError> {
        self.read(|r| r.find_request(requester, digest, state))
    }

    /// One adapter record (see [`Tx::put_record`]).
    pub fn get_record(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|r| r.record(ns, key))
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
        self.read(|r| r.records(ns, &lower, inclusive, &upper, limit))
    }

    /// Every record of namespace `ns`, in key order, handed to `f` page by
    /// page (blocking: for loads at start, or from `spawn_blocking`). The
    /// first error, the store's or `f`'s, ends the walk and is returned, so
    /// a caller never mistakes a failed read for an empty namespace.
    pub fn for_each_record<E: From<StoreError>>(
        &self,
        ns: &str,
        mut f: impl FnMut(&str, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        const PAGE: usize = 10_000;
        let mut after: Option<String> = None;
        loop {
            let page = self.list_records(ns, "", after.as_deref(), PAGE)?;
            for (k, v) in &page {
                f(k, v)?;
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE => after = Some(k.clone()),
                _ => return Ok(()),
            }
        }
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

/// Runs `f`, which may wait on the network for long (a PostgreSQL read,
/// when the server hangs), without holding a Tokio worker: on a worker of
/// a multi-thread runtime its other tasks move to another thread
/// meanwhile, so one stuck read does not stop the gateway answering
/// (`/healthz` says 503; other requests are refused, not hung). Anywhere
/// else it just runs.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The answer to a job `enqueue` sent (or its refusal), once it comes.
async fn answer<T: Send + 'static>(
    rx: Result<tokio::sync::oneshot::Receiver<JobResult>, StoreError>,
) -> Result<T, StoreError> {
    downcast(rx?.await.map_err(|_| StoreError::Unavailable)?)
}

/// A job's answer, as the type its caller asked for.
fn downcast<T: 'static>(result: JobResult) -> Result<T, StoreError> {
    result?
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| StoreError::Corrupt("job result type mismatch".into()))
}

/// How the writer groups jobs into commits.
#[derive(Clone, Copy)]
struct Batching {
    /// Most jobs in one commit.
    max: usize,
    /// How long to wait for more jobs when the last commit served
    /// concurrent callers ([`crate::StoreOptions::commit_delay`]).
    delay: std::time::Duration,
}

fn writer_loop(
    mut backend: Box<dyn Writer>,
    rx: mpsc::Receiver<Wake>,
    parked: Parked,
    view: Shared,
    size_tx: tokio::sync::watch::Sender<u64>,
    batching: Batching,
    health: crate::HealthCell,
) {
    let max_batch = batching.max;
    // Whether this round consumed a nudge: its parked job may have been
    // parked after the round looked (see the end of the loop).
    let nudged = std::cell::Cell::new(false);
    // A wake-up's job joins the batch; 1 if someone waits on it.
    let take = |wake: Wake, batch: &mut Vec<Job>| match wake {
        Wake::Job(job) => {
            batch.push(job);
            1
        }
        Wake::Nudge => {
            nudged.set(true);
            0
        }
    };
    // Parked jobs first: they were submitted before the job that woke us.
    let unpark = |batch: &mut Vec<Job>| {
        if let Ok(mut p) = parked.lock() {
            let n = p.len().min(max_batch.saturating_sub(batch.len()));
            batch.extend(p.drain(..n));
        }
    };
    // Jobs queued while the batch began (on PostgreSQL, while it waited for
    // the log head's lock) join it: the commit, and the lock, are shared by
    // as many jobs as are ready.
    // Returns how many of the jobs it added have a caller waiting.
    let top_up = |batch: &mut Vec<Job>| {
        unpark(batch);
        let mut waited = 0;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(wake) => waited += take(wake, batch),
                Err(_) => break,
            }
        }
        waited
    };
    // Whether the last commit failed. Only this thread sets the writer's
    // failure, so it knows without asking `health` (and locks it only when
    // the failure changes).
    let failing = std::cell::Cell::new(false);
    let mut commit = |batch: Vec<Job>| {
        health.busy();
        let (outcome, replies) = run_batch(backend.as_mut(), batch, &view, &size_tx, &top_up);
        // Health first: whoever hears of a failed commit finds `/healthz`
        // already reporting it.
        if outcome.is_err() || failing.get() {
            failing.set(outcome.is_err());
            health.set_writer(outcome.err());
        }
        health.idle();
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    };
    // Jobs of waiting callers in the last commit: two or more means others
    // decide concurrently, and more are likely on their way.
    let mut last_waited = 0usize;
    loop {
        // While the last commit failed, nothing may come to show that the
        // storage is back (a balancer takes a failing node out): a probe
        // commit each second clears `/healthz` once one succeeds.
        let first = if failing.get() {
            match rx.recv_timeout(HEALTH_PROBE_INTERVAL) {
                Ok(wake) => wake,
                Err(mpsc::RecvTimeoutError::Timeout) => Wake::Job(health_probe()),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(wake) => wake,
                Err(_) => break,
            }
        };
        let mut batch = Vec::new();
        unpark(&mut batch);
        let mut waited = take(first, &mut batch);
        waited += top_up(&mut batch);
        // Group commit's delay (PostgreSQL's commit_delay with
        // commit_siblings, in effect): wait a little for the concurrent
        // callers' jobs, until as many wait as in the last commit.
        if !batching.delay.is_zero() && last_waited >= 2 && waited > 0 {
            let deadline = std::time::Instant::now() + batching.delay;
            while batch.len() < max_batch && waited < last_waited {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(wake) => waited += take(wake, &mut batch),
                    Err(_) => break,
                }
            }
            unpark(&mut batch);
        }
        last_waited = waited;
        if !batch.is_empty() {
            commit(batch);
        }
        // A nudge taken after the parked jobs were looked at may belong to
        // a job parked in between: nothing else would wake the writer for
        // it, so commit what is parked now.
        while nudged.replace(false) {
            let mut batch = Vec::new();
            unpark(&mut batch);
            top_up(&mut batch);
            if batch.is_empty() {
                break;
            }
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

/// How often a failing writer tries a commit of its own (see `writer_loop`).
const HEALTH_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A commit that writes one meta row and that nobody waits for: whether the
/// storage takes writes again.
fn health_probe() -> Job {
    let (reply, _) = tokio::sync::oneshot::channel();
    let run: JobFn = Box::new(|tx| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        tx.put_meta("health_probe", &now.to_string())?;
        Ok(Box::new(()) as Box<dyn Any + Send>)
    });
    Job { run, reply }
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

/// Each job's answer, sent once the batch's outcome is known (and
/// reported to `/healthz`).
type Replies = Vec<(tokio::sync::oneshot::Sender<JobResult>, JobResult)>;

fn run_batch(
    backend: &mut dyn Writer,
    mut batch: Vec<Job>,
    view: &Shared,
    size_tx: &tokio::sync::watch::Sender<u64>,
    top_up: &dyn Fn(&mut Vec<Job>) -> usize,
) -> (Result<(), String>, Replies) {
    let base = match backend.begin(view, size_tx) {
        Ok(base) => base,
        // An unreachable PostgreSQL is said as such, to every job.
        Err(e @ StoreError::PgDown(_)) => {
            let failed = batch
                .into_iter()
                .map(|job| (job.reply, Err(not_committed(&e))))
                .collect();
            return (Err(format!("cannot begin a transaction: {e}")), failed);
        }
        Err(e) => return fail_all(batch, &format!("cannot begin a transaction: {e}")),
    };
    top_up(&mut batch);
    let mut pending: Vec<Hash> = Vec::new();
    let mut storage_failure: Option<String> = None;
    let mut results: Replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = backend.savepoint() {
            return savepoint_failed(backend, results, job.reply, &e);
        }
        let mark = pending.len();
        let run = job.run;
        let outcome = catch_unwind(AssertUnwindSafe(|| backend.run(base, &mut pending, run)))
            .unwrap_or_else(|_| Err(StoreError::Corrupt("a store job panicked".into())));
        if let Err(e) = &outcome {
            if backend.is_storage_failure(e) {
                storage_failure = Some(e.to_string());
            }
        }
        let undo = outcome.is_err();
        let sp = if undo {
            pending.truncate(mark);
            backend.rollback_to()
        } else {
            backend.release()
        };
        if let Err(e) = sp {
            return savepoint_failed(backend, results, job.reply, &e);
        }
        results.push((job.reply, outcome));
        late(backend, &mut results);
    }
    if let Err(e) = backend.commit(base, &mut pending) {
        backend.rollback();
        let failed = results
            .into_iter()
            .map(|(reply, _)| (reply, Err(not_committed(&e))))
            .collect();
        return (Err(format!("commit failed: {e}")), failed);
    }
    late(backend, &mut results);
    if !pending.is_empty() {
        match view.extend(base, &pending) {
            Ok(size) => {
                crate::publish_size(size_tx, size);
            }
            Err(e) => {
                // Durable but not visible: refuse to claim success.
                let failed = results
                    .into_iter()
                    .map(|(reply, _)| (reply, Err(StoreError::Unavailable)))
                    .collect();
                return (
                    Err(format!("the committed entries cannot join the tree: {e}")),
                    failed,
                );
            }
        }
    }
    (storage_failure.map_or(Ok(()), Err), results)
}

/// A batch's jobs' error when its commit failed with `e`: an unreachable
/// PostgreSQL is said as such (its message already says that nothing was
/// recorded), any other failure wrapped.
fn not_committed(e: &StoreError) -> StoreError {
    match e {
        StoreError::PgDown(m) => StoreError::PgDown(m.clone()),
        other => StoreError::Commit(other.to_string()),
    }
}

/// Jobs that failed after they returned get their error instead.
fn late(backend: &mut dyn Writer, results: &mut Replies) {
    for (at, e) in backend.late_failures() {
        if let Some((_, result)) = results.get_mut(at) {
            *result = Err(e);
        }
    }
}

/// A savepoint could not be set or released: the whole batch is rolled back
/// and every job in it, run or not, gets the error.
fn savepoint_failed(
    backend: &mut dyn Writer,
    results: Replies,
    current: tokio::sync::oneshot::Sender<JobResult>,
    e: &StoreError,
) -> (Result<(), String>, Replies) {
    backend.rollback();
    let why = format!("savepoint failed: {e}");
    let failed = results
        .into_iter()
        .map(|(r, _)| r)
        .chain([current])
        .map(|r| (r, Err(StoreError::Commit(why.clone()))))
        .collect();
    (Err(why), failed)
}

fn fail_all(batch: Vec<Job>, why: &str) -> (Result<(), String>, Replies) {
    let failed = batch
        .into_iter()
        .map(|job| (job.reply, Err(StoreError::Commit(why.to_string()))))
        .collect();
    (Err(why.to_string()), failed)
}
