//! The secondkey transparency log: the part of secondkey an auditor can use
//! on its own.
//!
//! Every request, decision, grant and execution the gateway records becomes
//! an [`entry::Entry`] appended to an append-only Merkle log. The log's
//! operator signs checkpoints; anyone with the log's public key can then
//! check, offline, that no entry was changed, removed, reordered or
//! inserted, and that a later copy of the log extends an earlier one.
//!
//! The crate does no IO other than reading and writing a bundle directory,
//! reads no clock and knows no database. It speaks open standards, so any
//! standard transparency-log client can check our logs too:
//!
//! - **RFC 6962 / RFC 9162** Merkle trees, inclusion and consistency proofs
//!   ([`merkle`]);
//! - **C2SP signed-note** with Ed25519, key strings compatible with Go's
//!   `golang.org/x/mod/sumdb/note` ([`note`]);
//! - **C2SP tlog-checkpoint** tree heads ([`checkpoint`]);
//! - **C2SP tlog-tiles**: hash tiles and entry bundles, the on-disk and HTTP
//!   layout ([`tiles`], [`bundle`]);
//! - **RFC 8785** canonical JSON for entries ([`entry`]);
//! - **C2SP tlog-cosignature** and the checks of **C2SP tlog-witness**
//!   ([`witness`]).
//!
//! Lean statement entries, which name a statement shape logged once per
//! session instead of repeating it, are rebuilt and checked offline by
//! [`lean`].
//!
//! ```
//! use secondkey_log::{checkpoint::Checkpoint, merkle::{leaf_hash, Tree}, note::Signer};
//! use secondkey_log::bundle::verify_log;
//! use secondkey_log::entry::Entry;
//!
//! let signer = Signer::generate("example.com/log").unwrap();
//! let entry = Entry {
//!     index: 0,
//!     time: "2025-01-31T12:00:00Z".into(),
//!     event: "request.created".into(),
//!     actor: Some("agent:report-bot".into()),
//!     subjects: Default::default(),
//!     digest: None,
//!     payload: serde_json::json!({}),
//! };
//! let bytes = entry.to_bytes().unwrap();
//! let mut tree = Tree::new();
//! tree.push(leaf_hash(&bytes));
//! let note = Checkpoint::new("example.com/log", tree.size(), tree.root()).sign(&signer).unwrap();
//! let report = verify_log(&note, &signer.verifier(), [&bytes], None).unwrap();
//! assert_eq!(report.size, 1);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod checkpoint;
pub mod entry;
pub mod lean;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod tiles;
pub mod witness;

pub use bundle::{
    export_bundle, verify_bundle, verify_entries, verify_log, VerifyError, VerifyReport,
};
pub use checkpoint::{Checkpoint, SignedCheckpoint};
pub use entry::Entry;
pub use merkle::{Hash, Tree};
pub use note::{Signer, Verifier};
pub use receipt::Receipt;
