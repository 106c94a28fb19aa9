//! Persistence for secondkey: requests, grants and the transparency log,
//! committed together.
//!
//! Every state change the gateway makes runs as a *job* inside one database
//! transaction together with the log entries that record it (invariant 1:
//! nothing is authorized unless the entry that authorizes it is durable).
//! Jobs from many tasks are queued to one writer thread, which runs a batch of
//! them in a single transaction (each under its own savepoint, so one failing
//! job does not undo the others) and commits once — group commit: one fsync
//! for many appends. A job's future resolves only after that commit; if the
//! commit fails, every job of the batch gets the error and the in-memory tree
//! is left untouched (fail closed).
//!
//! The jobs see the database only through the [`Tx`] trait, so the same
//! gateway logic runs on any backend that can implement it. SQLite (WAL,
//! `synchronous=FULL`) is the embedded default; PostgreSQL
//! ([`StoreOptions::postgres`]) lets several gateway replicas share one
//! store and one log: each batch locks the log's head row, so appends from
//! every replica are totally ordered and each replica's tree is the same.
//!
//! ```no_run
//! # async fn demo() -> Result<(), secondkey_store::StoreError> {
//! use secondkey_store::{Store, StoreOptions};
//! let store = Store::open(StoreOptions::new("./secondkey-data"))?;
//! let index = store
//!     .transact(|tx| {
//!         let entry = secondkey_store::new_entry("2026-01-01T00:00:00Z", "demo.event", None, serde_json::json!({}));
//!         tx.append(entry)
//!     })
//!     .await?;
//! println!("logged as entry {index}");
//! # Ok(()) }
//! ```

mod pg;
mod sqlite;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use secondkey_core::request::{Request, RequestState};
use secondkey_log::entry::Entry;
use secondkey_log::merkle::{Hash, Tree};

pub use pg::{PgOptions, PgTls, WriterStats, REMOTE_RESYNC};
pub use store::Store;

/// Errors from the store. Any of them means the change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Pg(String),
    #[error(
        "cannot reach PostgreSQL ({0}); nothing was recorded and the action is not authorized"
    )]
    PgDown(String),
    #[error("the PostgreSQL store has no schema yet (or an older one: version {found}, this binary's is {current}); run `secondkey store migrate --config FILE` first")]
    NotMigrated { found: i64, current: i64 },
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the audit log is inconsistent with its last signed checkpoint: {0}. Restore the store from a backup (the data directory, or the PostgreSQL database of `[store] url`) and run `secondkey log verify`")]
    Tampered(String),
    #[error("log entry rejected: {0}")]
    Entry(String),
    #[error("the transaction did not commit ({0}); nothing was recorded and the action is not authorized")]
    Commit(String),
    #[error("the store is shut down or its writer failed; the action is not authorized")]
    Unavailable,
    #[error("another secondkey process holds the data directory {path} (lock file {lock}); stop it first, or use a separate data_dir")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("the store was opened read-only; start the gateway to change it")]
    ReadOnly,
    #[error("database schema version {found} is older than this binary's ({current}); start the gateway once to migrate it, then read it")]
    SchemaTooOld { found: i64, current: i64 },
    #[error("database schema version {found} is newer than this binary understands ({supported}); upgrade secondkey")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A domain error raised by a job; carried through unchanged.
    #[error("{0}")]
    Job(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps a domain error raised inside a job so that the caller can
    /// downcast it back.
    pub fn job<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        StoreError::Job(Box::new(e))
    }
}

/// A grant as the store keeps it: enough to make consumption an atomic
/// compare-and-set that survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantRow {
    pub id: String,
    pub request_id: Option<String>,
    pub digest: String,
    pub requester: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// What a job can do inside the transaction. Reads see the job's own writes
/// and those of earlier jobs in the same batch.
pub trait Tx {
    fn get_request(&mut self, id: &str) -> Result<Option<Request>, StoreError>;
    /// Inserts or replaces a request.
    fn put_request(&mut self, request: &Request) -> Result<(), StoreError>;
    fn insert_grant(&mut self, grant: &GrantRow) -> Result<(), StoreError>;
    fn get_grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError>;
    /// Marks a grant used if, and only if, it is unused: returns false if it
    /// was already used (the compare-and-set behind single use).
    fn use_grant(&mut self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Appends a log entry; the store assigns its index (the `index` field of
    /// `entry` is overwritten) and returns it. The entry becomes part of the
    /// tree only when the transaction commits.
    fn append(&mut self, entry: Entry) -> Result<u64, StoreError> {
        let prepared = entry
            .prepare()
            .map_err(|e| StoreError::Entry(e.to_string()))?;
        self.append_prepared(prepared)
    }
    /// [`Tx::append`] of an entry encoded before the job (see
    /// [`Entry::prepare`]): the writer thread, which runs jobs one after
    /// another, then only places the index and hashes.
    fn append_prepared(&mut self, entry: secondkey_log::entry::Prepared)
        -> Result<u64, StoreError>;
    /// [`Tx::append_prepared`] for a job that does not need the entry's
    /// index: the store numbers it at commit, in job order. Nothing the
    /// job is told then depends on the jobs before it, so PostgreSQL's
    /// writer need not wait for their statements' answers before this job
    /// runs on (see `pg::PgWriter`): an allow that writes its grant and
    /// appends this way costs no round trip of its own.
    fn append_later(&mut self, entry: secondkey_log::entry::Prepared) -> Result<(), StoreError> {
        self.append_prepared(entry).map(|_| ())
    }
    /// Reads a small key/value setting (e.g. a sink cursor or a fingerprint).
    fn get_meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;
    /// The newest request of `requester` for the action with `digest` in
    /// `state` (an adapter seeing the same action again).
    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError>;
    /// How many requests of `requester` are pending and not yet past their
    /// deadline at `now_ms`, and the earliest such deadline: what the
    /// gateway's cap on pending requests per principal counts, inside the
    /// transaction that would add one (so concurrent submissions cannot
    /// both slip under it).
    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError>;
    /// Adapter state kept next to the log, in the same transactions:
    /// namespaced key/value records (`ns` names the owner, e.g.
    /// `slack.link`, `mcp.pin`, `lineage`). Values are opaque text
    /// (usually JSON).
    fn get_record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Inserts or replaces a record.
    fn put_record(&mut self, ns: &str, key: &str, value: &str) -> Result<(), StoreError>;
    /// Deletes a record; false if there was none.
    fn delete_record(&mut self, ns: &str, key: &str) -> Result<bool, StoreError>;
}

/// Builds an entry with no index yet (the store assigns it at append).
/// `time` is RFC 3339 UTC, chosen by the caller: the store keeps no clock.
pub fn new_entry(
    time: &str,
    event: &str,
    actor: Option<&str>,
    payload: serde_json::Value,
) -> Entry {
    Entry {
        index: 0,
        time: time.to_string(),
        event: event.to_string(),
        actor: actor.map(str::to_string),
        subjects: Default::default(),
        digest: None,
        payload,
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    /// Most jobs committed in one transaction.
    pub max_batch: usize,
    /// Group commit's delay (`[log] commit_delay_us`): when the last commit
    /// held jobs of at least two waiting callers — others are deciding
    /// concurrently — the writer waits up to this long for more jobs
    /// before it commits, so that one commit (and one `fsync`) serves
    /// more of them. Zero commits at once; a lone caller never waits.
    pub commit_delay: std::time::Duration,
    /// Open for reading only: no writer, no lock, no migrations (for
    /// `secondkey log export` next to a running gateway).
    pub read_only: bool,
    /// Caps the database at this many pages (SQLite `max_page_count`):
    /// a way to exercise the disk-full path in tests.
    pub max_pages: Option<u64>,
    /// Keep the store in PostgreSQL instead of `data_dir/secondkey.db`
    /// (several replicas may share it).
    pub postgres: Option<PgOptions>,
}

impl StoreOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: data_dir.into(),
            max_batch: 4096,
            commit_delay: std::time::Duration::ZERO,
            read_only: false,
            max_pages: None,
            postgres: None,
        }
    }

    /// The store in PostgreSQL (see [`PgOptions`]).
    pub fn postgres(mut self, pg: PgOptions) -> Self {
        self.postgres = Some(pg);
        self
    }

    /// The same directory, for reading only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
}

/// A page of requests, and where the next page starts.
#[derive(Debug, Clone)]
pub struct RequestPage {
    pub requests: Vec<Request>,
    /// Pass back as `before` to get the next (older) page.
    pub next: Option<String>,
}

/// Who a request concerns, for listing: principal ids and group names.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub principal: String,
    pub groups: Vec<String>,
}

/// The in-memory view of the committed log, shared by readers.
#[derive(Debug)]
pub(crate) struct LogView {
    pub tree: RwLock<Tree>,
}

/// A root the store last saw signed; used at startup to detect entries that
/// were changed in the database behind the gateway's back.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub size: u64,
    pub root: Hash,
}

pub(crate) type Shared = Arc<LogView>;

/// What `/healthz` reports for the store: the writer's last commit failure
/// and the follower's last failure to follow the shared log, each cleared
/// only by its own next success (a lease renewal that commits says nothing
/// about entries the follower found missing, nor the other way round).
///
/// The writer marks every batch busy and idle again without a lock (an
/// atomic), and takes the lock only when its failure changes: a healthy
/// writer locks nothing here. It alone sets its failure, so it knows
/// whether one is set without reading it back.
#[derive(Debug)]
pub(crate) struct Health {
    failures: std::sync::Mutex<Failures>,
    /// What `busy_since` counts from.
    epoch: std::time::Instant,
    /// When the batch the writer is in began, in nanoseconds after `epoch`
    /// plus one; 0 between batches. A commit that has not come back for
    /// [`STALLED_AFTER`] (a frozen database host) is a failure too, though
    /// nothing has failed yet.
    busy_since: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Failures {
    writer: Option<String>,
    follower: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            failures: Default::default(),
            epoch: std::time::Instant::now(),
            busy_since: Default::default(),
        }
    }
}

impl Health {
    /// The writer begins a batch.
    pub(crate) fn busy(&self) {
        let since = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.busy_since
            .store(since + 1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The writer's batch is over.
    pub(crate) fn idle(&self) {
        self.busy_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets (or clears) the writer's failure. The writer calls it only when
    /// the failure changes.
    pub(crate) fn set_writer(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failures.lock() {
            f.writer = failure;
        }
    }

    /// Sets (or clears) the follower's failure.
    pub(crate) fn set_follower(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failures.lock() {
            f.follower = failure;
        }
    }

    /// `Err` with the reason while the store fails: the writer's failure,
    /// then a stalled commit, then the follower's failure.
    pub(crate) fn report(&self) -> Result<(), String> {
        let f = self
            .failures
            .lock()
            .map_err(|_| "the store's health lock is poisoned".to_string())?;
        let stalled = match self.busy_since.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            since => {
                let began = self.epoch + std::time::Duration::from_nanos(since - 1);
                Some(began.elapsed()).filter(|d| *d >= STALLED_AFTER)
            }
        };
        match (&f.writer, stalled, &f.follower) {
            (Some(e), _, _) => Err(e.clone()),
            (None, Some(d), _) => Err(format!(
                "a commit has not come back for {} s: the storage does not answer",
                d.as_secs()
            )),
            (None, None, Some(e)) => Err(e.clone()),
            (None, None, None) => Ok(()),
        }
    }
}

/// How long a commit may take before `/healthz` calls the store stalled.
pub(crate) const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) type HealthCell = Arc<Health>;

/// Tells the log's watchers (sinks, webhooks, waiters) the tree's new size.
/// Never moves it back: the writer and the follower extend the tree from
/// their own threads and publish after letting go of its lock, so a smaller
/// size can arrive after a larger one; the watchers would then wait for an
/// append that may never come for entries already in the tree.
pub(crate) fn publish_size(size_tx: &tokio::sync::watch::Sender<u64>, size: u64) {
    size_tx.send_if_modified(|seen| {
        let grew = size > *seen;
        if grew {
            *seen = size;
        }
        grew
    });
}

impl LogView {
    /// Adds the leaf hashes of entries `from..` to the tree, skipping those
    /// already in it (another path may have added them first: entries are
    /// immutable once committed, so the same index is the same leaf).
    /// Returns the new size, or an error if there is a gap.
    pub(crate) fn extend(&self, from: u64, hashes: &[Hash]) -> Result<u64, StoreError> {
        let mut tree = self.tree.write().map_err(|_| StoreError::Unavailable)?;
        let size = tree.size();
        if from > size {
            return Err(StoreError::Corrupt(format!(
                "log entries {size}..{from} are missing from this replica's tree"
            )));
        }
        let skip = (size - from) as usize;
        for h in hashes.iter().skip(skip) {
            tree.push(*h);
        }
        Ok(tree.size())
    }
}

/// The reads every backend answers, inside a job's transaction and on
/// reader connections alike.
pub(crate) trait Reads {
    fn request(&mut self, id: &str) -> Result<Option<Request>, StoreError>;
    fn grant(&mut self, id: &str) -> Result<Option<GrantRow>, StoreError>;
    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    fn find_request(
        &mut self,
        requester: &str,
        digest: &str,
        state: RequestState,
    ) -> Result<Option<Request>, StoreError>;
    fn pending_of(
        &mut self,
        requester: &str,
        now_ms: i64,
    ) -> Result<(u64, Option<i64>), StoreError>;
    fn record(&mut self, ns: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Records of `ns` with `lower <(=) key < upper`, in key order.
    fn records(
        &mut self,
        ns: &str,
        lower: &str,
        inclusive: bool,
        upper: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// `(index, bytes)` of the entries in `[start, end)`, in order.
    fn entries(&mut self, start: u64, end: u64) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;
    /// `(index, bytes)` of the entries whose `request` subject is
    /// `request_id`, in log order, at most `limit`.
    fn request_entries(
        &mut self,
        request_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;
    /// `(body, created_at, id)` of the requests that concern one of
    /// `parties`, newest first, older than `cursor`, at most `limit`.
    fn list_for(
        &mut self,
        parties: &[String],
        state: Option<String>,
        cursor: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, StoreError>;
    fn due_for_expiry(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError>;
    fn due_for_escalation(&mut self, now_ms: i64, fraction: f64)
        -> Result<Vec<String>, StoreError>;
    fn count_by_state(&mut self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Ids of pending requests, oldest first, at most `limit`.
    fn pending_ids(&mut self, limit: i64) -> Result<Vec<String>, StoreError>;
}

/// Checks that the stored leaves still hash to the last anchored root and
/// builds the tree from them.
pub(crate) fn anchored_tree(hashes: Vec<Hash>, anchor: Option<String>) -> Result<Tree, StoreError> {
    let tree = Tree::from_leaf_hashes(hashes);
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

pub(crate) fn parse_anchor(s: &str) -> Result<Anchor, StoreError> {
    let bad = || StoreError::Corrupt(format!("meta 'anchor' is malformed: {s:?}"));
    let (size, root) = s.split_once(' ').ok_or_else(bad)?;
    let size: u64 = size.parse().map_err(|_| bad())?;
    let bytes = hex::decode(root).map_err(|_| bad())?;
    let root: Hash = bytes.try_into().map_err(|_| bad())?;
    Ok(Anchor { size, root })
}

/// Refuses a schema version other than `current`: newer is
/// [`StoreError::SchemaTooNew`], older what `too_old` makes of it.
pub(crate) fn check_version(
    found: i64,
    current: i64,
    too_old: impl FnOnce(i64, i64) -> StoreError,
) -> Result<(), StoreError> {
    if found > current {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: current,
        });
    }
    if found < current {
        return Err(too_old(found, current));
    }
    Ok(())
}

pub(crate) fn state_str(s: RequestState) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{s:?}").to_lowercase(),
    }
}

pub(crate) fn decode_request(body: &str) -> Result<Request, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("request record: {e}")))
}

/// The parties a request concerns (see [`Viewer`]): `p:<principal>` for
/// its requester, the requester's owner and whom it acts for, `g:<group>`
/// for each group that may review it.
pub(crate) fn parties_of(r: &Request) -> Vec<String> {
    let mut parties = vec![format!("p:{}", r.requester.id)];
    if let Some(o) = &r.requester.owner {
        parties.push(format!("p:{o}"));
    }
    if let Some(o) = &r.action.on_behalf_of {
        parties.push(format!("p:{o}"));
    }
    // Groups an escalation added are parties too: their members may now
    // review, so they list and see the request.
    for req in &r.requirements {
        parties.extend(req.all_groups().iter().map(|g| format!("g:{g}")));
    }
    parties
}

#[cfg(test)]
mod pgtest;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
