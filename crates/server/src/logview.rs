//! Serving the transparency log: tiles, entry bundles and receipts, read
//! from the store and its in-memory tree.

use secondkey_log::tiles::{encode_bundle, parse_tile_path, TileKind};
use serde_json::Value;

use crate::error::ApiError;
use crate::Gateway;

/// Bytes of a C2SP tlog-tiles resource (`tile/<L>/…` or `tile/entries/…`).
pub async fn tile(
    gateway: &Gateway,
    path: &str,
    caller: Option<&secondkey_core::principal::Principal>,
) -> Result<Vec<u8>, ApiError> {
    let r = parse_tile_path(path).map_err(|e| ApiError::not_found(e.to_string()))?;
    match r.kind {
        TileKind::Hash { level } => gateway
            .store
            .with_tree(|t| t.tile(level, r.index, r.width))?
            .map_err(|e| ApiError::not_found(e.to_string())),
        TileKind::Entries => {
            match caller {
                Some(p) => gateway.require_log_reader(p)?,
                None => return Err(ApiError::unauthorized(
                    "entry bundles hold actions and their parameters: send a log reader's token",
                )),
            }
            let end = r
                .index
                .checked_mul(256)
                .and_then(|start| start.checked_add(u64::from(r.width)));
            let Some(end) = end else {
                return Err(ApiError::not_found(format!("{path}: no such bundle")));
            };
            let start = end - u64::from(r.width);
            if end > gateway.store.log_size() {
                return Err(ApiError::not_found(format!(
                    "{path}: the log has only {} entries",
                    gateway.store.log_size()
                )));
            }
            let entries = entries(gateway, start, end).await?;
            encode_bundle(&entries).map_err(|e| ApiError::unavailable(e.to_string()))
        }
    }
}

/// A self-contained inclusion receipt for entry `index` against the current
/// signed checkpoint, as JSON.
pub async fn receipt(gateway: &Gateway, index: u64) -> Result<Value, ApiError> {
    let receipt = receipt_of(gateway, index).await?;
    serde_json::to_value(receipt).map_err(|e| ApiError::unavailable(e.to_string()))
}

/// The inclusion receipt of entry `index` against the current signed
/// checkpoint.
pub async fn receipt_of(
    gateway: &Gateway,
    index: u64,
) -> Result<secondkey_log::receipt::Receipt, ApiError> {
    let note = gateway.checkpoint().await?;
    let cp = secondkey_log::checkpoint::Checkpoint::parse_note_unverified(&note)
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if index >= cp.size {
        return Err(ApiError::not_found(format!(
            "entry {index} is not in the log (size {})",
            cp.size
        )));
    }
    let entry = entries(gateway, index, index + 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("entry {index} is missing")))?;
    gateway
        .store
        .with_tree(|t| secondkey_log::receipt::Receipt::build(t, &entry, index, &note))?
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// The bytes of entries `start..end`, read off the async threads.
pub async fn entries(gateway: &Gateway, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ApiError> {
    let store = gateway.store.clone();
    Ok(
        tokio::task::spawn_blocking(move || store.entries(start, end))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??,
    )
}

/// The log entries of request `id` (one indexed read; see
/// `Store::request_entries`), at most `limit`.
pub async fn request_entries(
    gateway: &Gateway,
    id: &str,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, ApiError> {
    let store = gateway.store.clone();
    let id = id.to_string();
    Ok(
        tokio::task::spawn_blocking(move || store.request_entries(&id, limit))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??,
    )
}

/// Whether `who` may read log entry `index` (and its receipt): a log
/// reader reads any entry; anyone else the entries of a request they may
/// see, which its timeline links to — those hold nothing the request page
/// does not show them already.
pub async fn may_read_entry(
    gateway: &Gateway,
    who: &secondkey_core::principal::Principal,
    index: u64,
) -> Result<(), ApiError> {
    let reader = gateway.require_log_reader(who);
    if reader.is_ok() || index >= gateway.store.log_size() {
        return reader;
    }
    let bytes = entries(gateway, index, index + 1).await?;
    let request = bytes
        .first()
        .and_then(|b| secondkey_log::entry::Entry::from_bytes(b).ok())
        .and_then(|e| e.subjects.get("request").cloned());
    match request {
        Some(id) if gateway.get_request(who, &id).await.is_ok() => Ok(()),
        _ => reader,
    }
}

/// The store as a source of entries for the log sinks.
pub struct StoreSource(pub secondkey_store::Store);

impl secondkey_sinks::EntrySource for StoreSource {
    fn read_from(
        &self,
        start: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, secondkey_sinks::SourceError> {
        let end = (start + max as u64).min(self.0.log_size());
        if end <= start {
            return Ok(vec![]);
        }
        let entries = self
            .0
            .entries(start, end)
            .map_err(|e| secondkey_sinks::SourceError {
                start,
                message: e.to_string(),
            })?;
        Ok((start..).zip(entries).collect())
    }
}

/// The namespace of sink cursors in the store.
const SINK_CURSOR_NS: &str = "sink.cursor";
/// The namespace of request webhooks' cursors in the store.
const WEBHOOK_CURSOR_NS: &str = "webhook.cursor";

/// Runs `sink` on the committed log from `cursor`. On a store shared by
/// replicas only the holder of the background lease delivers (the cursor
/// is then a [`StoreCursor`], re-read at each turn), so each entry is sent
/// by one replica.
pub fn run_sink(
    gateway: &Gateway,
    name: &str,
    sink: Box<dyn secondkey_sinks::Sink>,
    source: std::sync::Arc<dyn secondkey_sinks::EntrySource>,
    cursor: impl secondkey_sinks::Cursor,
) {
    let options = secondkey_sinks::RunnerOptions {
        active: gateway.store.is_shared().then(|| gateway.replica.leading()),
        ..Default::default()
    };
    secondkey_sinks::spawn_sink_with(
        name,
        sink,
        source,
        cursor,
        gateway.store.watch_log_size(),
        options,
    );
}

/// A sink's cursor kept in the store, for replicas that take turns
/// delivering: the next holder of the background lease reads where the
/// last one stopped.
pub struct StoreCursor {
    store: secondkey_store::Store,
    ns: &'static str,
    name: String,
    /// Where a cursor not stored yet starts.
    start: Start,
}

/// Where a [`StoreCursor`] the store holds nothing for yet starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At the log's first entry: a sink exports the whole log.
    First,
    /// At the log's end (its size when first loaded): a request webhook
    /// does not replay history.
    End,
    /// At this index: where the file cursor of an earlier version
    /// stopped.
    At(u64),
}

impl StoreCursor {
    /// The cursor of sink `name`: while the store holds none, it starts
    /// at the log's first entry (a sink exports the whole log), or where
    /// an earlier version's file cursor stopped
    /// ([`StoreCursor::upgraded_from`]).
    pub fn sink(store: secondkey_store::Store, name: &str) -> StoreCursor {
        StoreCursor {
            store,
            ns: SINK_CURSOR_NS,
            name: name.to_owned(),
            start: Start::First,
        }
    }

    /// The cursor of request webhook `name`: the first time it is loaded,
    /// if the store holds none, it starts at the log's end (its size then)
    /// — or where an earlier version's file cursor stopped
    /// ([`StoreCursor::upgraded_from`]) — and records that start, so every
    /// replica that delivers after it goes on from there. Each replica
    /// records it as it starts ([`StoreCursor::started`]).
    pub fn webhook(store: secondkey_store::Store, name: &str) -> StoreCursor {
        StoreCursor {
            store,
            ns: WEBHOOK_CURSOR_NS,
            name: name.to_owned(),
            start: Start::End,
        }
    }

    /// This cursor after an upgrade from a version that kept it in the file
    /// `dir/<name>.cursor` on a shared store too: while the store holds no
    /// cursor of this name, it starts where that file stopped (see
    /// [`earlier_file_cursor`]: a corrupt file, or one past the log's end,
    /// is an error, `without` saying where the cursor starts once the file
    /// is deleted), and the store owns it from its first save. Once the
    /// store holds the cursor the file is not read at all: a leftover file,
    /// whatever it holds, changes nothing.
    pub fn upgraded_from(
        mut self,
        dir: &std::path::Path,
        without: &str,
    ) -> anyhow::Result<StoreCursor> {
        let held = self.store.get_record(self.ns, &self.name).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the cursor of {} from the store: {e}",
                self.name
            )
        })?;
        if held.is_none() {
            let log_size = self.store.log_size();
            if let Some(at) = earlier_file_cursor(dir, &self.name, log_size, without)? {
                self.start = Start::At(at);
            }
        }
        Ok(self)
    }

    /// This cursor with its start recorded in the store now, if the store
    /// holds none yet: a request webhook's cursor is started by each
    /// replica as it starts, before it serves, so the first replica's start
    /// holds for all — not whichever replica first holds the background
    /// lease, which would skip the requests other replicas took before
    /// then. Call once, at start; it waits for one commit.
    pub fn started(self) -> anyhow::Result<StoreCursor> {
        // The store's blocking call may not run on a runtime's thread.
        std::thread::scope(|s| s.spawn(|| secondkey_sinks::Cursor::load(&self)).join())
            .map_err(|_| anyhow::anyhow!("starting the cursor of {} panicked", self.name))?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(self)
    }

    fn parse(&self, v: &str) -> Result<u64, String> {
        v.parse()
            .map_err(|_| format!("the stored cursor of sink {} is corrupt ({v:?})", self.name))
    }
}

impl secondkey_sinks::Cursor for StoreCursor {
    fn load(&self) -> Result<u64, String> {
        match self.store.get_record(self.ns, &self.name) {
            Ok(None) => {
                let start = match self.start {
                    Start::First => return Ok(0),
                    Start::End => self.store.log_size(),
                    Start::At(at) => at,
                }
                .to_string();
                // The first holder to load it sets the start, in one
                // transaction (batches are serialized across replicas).
                let (ns, name) = (self.ns, self.name.clone());
                let v = self
                    .store
                    .transact_blocking(move |tx| match tx.get_record(ns, &name)? {
                        Some(v) => Ok(v),
                        None => tx.put_record(ns, &name, &start).map(|()| start),
                    })
                    .map_err(|e| format!("cannot start the cursor of sink {}: {e}", self.name))?;
                self.parse(&v)
            }
            Ok(Some(v)) => self.parse(&v),
            Err(e) => Err(format!("cannot read the cursor of sink {}: {e}", self.name)),
        }
    }

    fn save(&self, next: u64) -> Result<(), String> {
        let (ns, name) = (self.ns, self.name.clone());
        self.store
            .transact_blocking(move |tx| tx.put_record(ns, &name, &next.to_string()))
            .map_err(|e| format!("cannot save the cursor of sink {}: {e}", self.name))
    }
}

/// Where the file cursor `name` in `dir` of an earlier version stopped, if
/// there is one: earlier versions kept the cursors of sinks and request
/// webhooks in files on a shared store too, and a cursor the store does
/// not hold yet starts from it (not from its default start, which would
/// re-send or skip what lies between). Refused when it is not a number or
/// lies past `log_size`, the end of this store's log; `without` says where
/// the cursor starts once the file is deleted ("to start at the log's end").
fn earlier_file_cursor(
    dir: &std::path::Path,
    name: &str,
    log_size: u64,
    without: &str,
) -> anyhow::Result<Option<u64>> {
    if !dir.exists() {
        return Ok(None);
    }
    let file = secondkey_sinks::FileCursor::open(dir, name)?;
    if !file.path().exists() {
        return Ok(None);
    }
    let path = file.path().display();
    let next = match file.load() {
        Ok(next) => next,
        Err(secondkey_sinks::CursorError::Corrupt { content, .. }) => anyhow::bail!(
            "the cursor file {path} of an earlier version is corrupt ({content:?}): write the next log index to deliver in it, or delete it {without}"
        ),
        Err(e) => return Err(e.into()),
    };
    if next > log_size {
        anyhow::bail!(
            "the cursor file {path} of an earlier version says {next}, past the end of this store's log ({log_size}): it belongs to another store; delete it {without}"
        );
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_versions_file_cursor_is_where_the_store_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sinks");
        let start = |size| earlier_file_cursor(&dir, "siem", size, "to start afresh");
        // No directory, or no file: no start of its own.
        assert_eq!(start(10).unwrap(), None);
        assert!(!dir.exists(), "nothing is created");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(start(10).unwrap(), None);
        let file = dir.join("siem.cursor");
        std::fs::write(&file, "7\n").unwrap();
        assert_eq!(start(10).unwrap(), Some(7));
        assert_eq!(start(7).unwrap(), Some(7));
        let past = start(6).unwrap_err().to_string();
        assert!(
            past.contains("siem.cursor")
                && past.contains("another store")
                && past.contains("delete it to start afresh"),
            "{past}"
        );
        std::fs::write(&file, "seven").unwrap();
        let corrupt = start(10).unwrap_err().to_string();
        assert!(
            corrupt.contains("corrupt") && corrupt.contains("delete it to start afresh"),
            "{corrupt}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "seven",
            "left as it was"
        );
    }

    /// A request webhook's cursor starts where the log ended when the
    /// (first) replica started, not where it ends when a replica first
    /// delivers: what was logged in between is delivered.
    #[test]
    fn a_webhook_cursor_starts_at_the_first_start_not_the_first_delivery() {
        use secondkey_sinks::Cursor;
        let tmp = tempfile::tempdir().unwrap();
        let store =
            secondkey_store::Store::open(secondkey_store::StoreOptions::new(tmp.path())).unwrap();
        let append = |n: usize| {
            store
                .transact_blocking(move |tx| {
                    for _ in 0..n {
                        tx.append(crate::gateway::entry(
                            secondkey_core::time::Timestamp(0),
                            "test.entry",
                            "user:test",
                            &[],
                            None,
                            serde_json::json!({}),
                        ))?;
                    }
                    Ok(())
                })
                .unwrap()
        };
        append(3);
        let first = StoreCursor::webhook(store.clone(), "hook")
            .started()
            .unwrap();
        let at_start = store.log_size();
        // A request on another replica, before any replica delivers.
        append(2);
        let later = StoreCursor::webhook(store.clone(), "hook")
            .started()
            .unwrap();
        assert_eq!(first.load().unwrap(), at_start);
        assert_eq!(later.load().unwrap(), at_start, "the first start holds");
        // Inside a runtime too (where replicas start their webhooks).
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inside = rt.block_on(async {
            StoreCursor::webhook(store.clone(), "other")
                .started()
                .unwrap()
                .load()
                .unwrap()
        });
        assert_eq!(inside, store.log_size());
    }
}
