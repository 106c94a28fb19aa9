//! Streaming the secondkey audit log to the systems auditors already watch.
//!
//! The transparency log (`secondkey-log`) is the source of truth; a SIEM is a
//! copy. This crate keeps that copy complete without ever slowing the writer:
//! each configured sink runs as its own tokio task that *reads* entries from
//! the log ([`EntrySource`]), ships them in log order, and records how far it
//! got in a [`FileCursor`] only after the receiver acknowledged the entry.
//! Delivery is therefore **at least once and in order**: after a crash, a
//! receiver outage or a restart, the sink resumes at the persisted cursor and
//! may repeat the last entries, but never skips one. Every shipped entry
//! carries its log index so receivers can deduplicate.
//!
//! Building blocks:
//!
//! - [`export`] — the formats: one-line canonical JSON ([`export::to_jsonl_line`])
//!   and an OCSF 1.3 *API Activity* event ([`export::to_ocsf`]).
//! - [`syslog`] — RFC 5424 messages with RFC 6587 octet-counting framing over
//!   TCP, optionally TLS (RFC 5425).
//! - [`webhook`] — HTTPS POSTs signed per the Standard Webhooks specification,
//!   plus the matching [`webhook::verify`] for receivers.
//! - [`openlineage`] — OpenLineage run events for executed actions.
//! - [`cursor`] and [`runner`] — crash-safe cursors and the delivery loop.
//! - [`config`] — the `[[sinks]]` TOML tables the server embeds.
//!
//! How the server starts a sink:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use secondkey_sinks::{config::SinkConfig, cursor::FileCursor, runner::{spawn_sink, EntrySource}};
//! # async fn start(cfg: SinkConfig, source: Arc<dyn EntrySource>,
//! #                size_rx: tokio::sync::watch::Receiver<u64>) -> Result<(), Box<dyn std::error::Error>> {
//! let sink = cfg.build("secondkey.example/log")?; // origin prefixes webhook ids
//! let cursor = FileCursor::open("./secondkey-data/sinks", cfg.name())?;
//! let task = spawn_sink(cfg.name(), sink, source, cursor, size_rx);
//! # drop(task); Ok(()) }
//! ```

pub mod config;
pub mod cursor;
pub mod export;
pub mod openlineage;
pub mod runner;
pub mod syslog;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use config::{ConfigError, SinkConfig};
pub use cursor::{Cursor, CursorError, FileCursor};
pub use runner::{
    spawn_sink, spawn_sink_with, Backoff, EntrySource, RunnerOptions, SinkHandle, SinkProgress,
    SourceError,
};

/// The future a [`Sink`] returns for one delivery.
pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for log entries.
///
/// `deliver` resolves to `Ok(())` only once the receiver has acknowledged the
/// entry as far as the transport allows (see each sink for what that means);
/// the runner persists its cursor only then. A sink must bound every wait
/// with a timeout so a stuck receiver turns into an error, never a hang.
pub trait Sink: Send + 'static {
    /// A short word for logs and metrics (`"syslog"`, `"webhook"`).
    fn kind(&self) -> &'static str;

    /// Ships one entry: `entry` is the canonical entry JSON exactly as logged.
    fn deliver<'a>(&'a mut self, index: u64, entry: &'a [u8]) -> DeliverFuture<'a>;
}

/// Why a delivery failed; the runner logs it and retries the same entry.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver could not be reached.
    #[error("cannot connect to {address}: {source}; check that the receiver is running and the address is right")]
    Connect {
        /// Where we tried to connect.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {address} failed: {source}; check ca_file and server_name")]
    Tls {
        /// The receiver.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The connection broke while sending or waiting for acknowledgement.
    #[error("connection to {address} failed during {during}: {source}")]
    Io {
        /// The receiver.
        address: String,
        /// What we were doing.
        during: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The receiver did not answer in time.
    #[error("{during} to {address} timed out after {after:?}; the receiver is stuck or too slow")]
    Timeout {
        /// The receiver.
        address: String,
        /// What we were doing.
        during: &'static str,
        /// The configured limit.
        after: Duration,
    },
    /// The receiver answered, but not with an acknowledgement.
    #[error("{address} answered HTTP {status} (not 2xx): {body}")]
    Rejected {
        /// The receiver.
        address: String,
        /// The HTTP status.
        status: u16,
        /// The first bytes of the response body, for the operator.
        body: String,
    },
    /// An HTTP-level failure (DNS, TLS, protocol).
    #[error("request to {address} failed: {message}")]
    Http {
        /// The receiver.
        address: String,
        /// What went wrong.
        message: String,
    },
}
