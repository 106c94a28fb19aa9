//! Small persistent records of this crate (identity links, link codes,
//! channel message references), namespaced, as JSON strings.
//!
//! Written inside store jobs ([`Tx`]) so a link and the log entry that
//! records it commit together; read outside jobs through the [`Store`].
//! They live in the store's generic record table, in namespaces prefixed
//! `channels.` (`channels.link`, `channels.linkcode`, `channels.msg`).

use secondkey_store::{Store, StoreError, Tx};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn namespace(ns: &str) -> String {
    format!("channels.{ns}")
}

fn decode<T: DeserializeOwned>(
    ns: &str,
    key: &str,
    v: Option<String>,
) -> Result<Option<T>, StoreError> {
    match v {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("record {ns}/{key}: {e}"))),
    }
}

/// Reads a record inside a job.
pub fn get<T: DeserializeOwned>(
    tx: &mut dyn Tx,
    ns: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let v = tx.get_record(&namespace(ns), key)?;
    decode(ns, key, v)
}

/// Writes a record inside a job.
pub fn put<T: Serialize>(
    tx: &mut dyn Tx,
    ns: &str,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let s = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.put_record(&namespace(ns), key, &s)
}

/// Removes a record inside a job.
pub fn delete(tx: &mut dyn Tx, ns: &str, key: &str) -> Result<bool, StoreError> {
    tx.delete_record(&namespace(ns), key)
}

/// Reads a committed record (blocking: call from `spawn_blocking`).
pub fn read<T: DeserializeOwned>(
    store: &Store,
    ns: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let v = store.get_record(&namespace(ns), key)?;
    decode(ns, key, v)
}

/// [`read`] on a blocking thread.
pub async fn read_async<T: DeserializeOwned + Send + 'static>(
    store: &Store,
    ns: &'static str,
    key: String,
) -> Result<Option<T>, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(&store, ns, &key))
        .await
        .map_err(|e| StoreError::Corrupt(format!("record read task failed: {e}")))?
}

/// Every record of a namespace, key order (blocking: call from
/// `spawn_blocking`).
pub fn list<T: DeserializeOwned>(store: &Store, ns: &str) -> Result<Vec<(String, T)>, StoreError> {
    let ns = namespace(ns);
    let mut out = Vec::new();
    store.for_each_record(&ns, |k, v| {
        let t = decode(&ns, k, Some(v.to_string()))?
            .ok_or_else(|| StoreError::Corrupt(format!("record {ns}/{k} is empty")))?;
        out.push((k.to_string(), t));
        Ok::<_, StoreError>(())
    })?;
    Ok(out)
}
