//! Static copies of the log ("bundles") and their offline verification.
//!
//! A bundle is a directory laid out exactly as the tlog-tiles HTTP API:
//! `checkpoint` (the signed note) and `tile/...` (hash tiles and entry
//! bundles). An auditor can verify it with nothing but the log's verifier
//! key; any C2SP tlog client can read it if it is served over HTTP as is.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{Entry, EntryError};
use crate::merkle::{leaf_hash, verify_consistency, Hash, MerkleError, Tree};
use crate::note::Verifier;
use crate::tiles::{
    bundles_for_size, decode_bundle, encode_bundle, tiles_for_size, TileError, TileKind, TileRef,
    TILE_WIDTH,
};

/// The checkpoint file name inside a bundle directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// What went wrong while exporting a bundle.
#[derive(Debug, Error)]
pub enum ExportError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The checkpoint note could not be parsed.
    #[error("the checkpoint to export is invalid: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The tree or entries do not match the checkpoint.
    #[error("refusing to export an inconsistent bundle: {0}")]
    Mismatch(String),
    /// A tile could not be produced.
    #[error("cannot produce tile: {0}")]
    Tile(#[from] TileError),
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The exported tree size.
    pub size: u64,
    /// Number of hash tiles written.
    pub hash_tiles: usize,
    /// Number of entry bundles written.
    pub entry_bundles: usize,
}

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<(), ExportError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| ExportError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    fs::write(&path, data).map_err(|source| ExportError::Io { path, source })
}

/// Writes a static tlog-tiles copy of the log at the checkpoint's size into
/// `dir`: every full and final partial hash tile of every level, every entry
/// bundle, and the `checkpoint` file (written last).
///
/// `entries` must yield exactly the checkpoint's size of entries, in order;
/// each must hash to the tree's leaf and the tree's root at that size must be
/// the checkpoint's root — otherwise nothing inconsistent is published.
pub fn export_bundle<I>(
    dir: &Path,
    checkpoint_note: &str,
    entries: I,
    tree: &Tree,
) -> Result<ExportReport, ExportError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let cp = Checkpoint::parse_note_unverified(checkpoint_note)?;
    let size = cp.size;
    let root = tree.root_at(size).map_err(|e| {
        ExportError::Mismatch(format!("tree cannot give the root at size {size}: {e}"))
    })?;
    if root != cp.root {
        return Err(ExportError::Mismatch(format!(
            "the tree root at size {size} differs from the checkpoint root"
        )));
    }
    let mut entries = entries.into_iter();
    let bundles = bundles_for_size(size);
    for bundle in &bundles {
        let start = bundle.index * u64::from(TILE_WIDTH);
        let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(usize::from(bundle.width));
        for i in 0..u64::from(bundle.width) {
            let index = start + i;
            let e = entries.next().ok_or_else(|| {
                ExportError::Mismatch(format!(
                    "only {index} entries were given for a checkpoint of size {size}"
                ))
            })?;
            let e = e.as_ref();
            if Some(leaf_hash(e)) != tree.leaf(index) {
                return Err(ExportError::Mismatch(format!(
                    "entry {index} does not hash to the tree's leaf {index}"
                )));
            }
            chunk.push(e.to_vec());
        }
        write_file(dir, &bundle.path(), &encode_bundle(&chunk)?)?;
    }
    if entries.next().is_some() {
        return Err(ExportError::Mismatch(format!(
            "more entries were given than the checkpoint's size {size}"
        )));
    }
    let tiles = tiles_for_size(size);
    for t in &tiles {
        let TileKind::Hash { level } = t.kind else {
            continue;
        };
        write_file(dir, &t.path(), &tree.tile(level, t.index, t.width)?)?;
    }
    write_file(dir, CHECKPOINT_FILE, checkpoint_note.as_bytes())?;
    Ok(ExportReport {
        size,
        hash_tiles: tiles.len(),
        entry_bundles: bundles.len(),
    })
}

/// Why a log failed verification. Each variant names the entry or the check
/// that failed.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A bundle file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file the checkpoint requires is absent.
    #[error("{path} is missing: the bundle is incomplete or entries were removed")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// The bundle's directory itself does not exist (a wrong path, not a
    /// damaged bundle).
    #[error("{0} is not a directory: no bundle there (check the path)")]
    NoBundle(PathBuf),
    /// The checkpoint is not validly signed by the given key, or malformed.
    #[error("the checkpoint is not trustworthy: {0}")]
    Checkpoint(CheckpointError),
    /// The older checkpoint given with `--since` is not valid under the key.
    #[error("the older (--since) checkpoint is not trustworthy: {0}")]
    SinceCheckpoint(CheckpointError),
    /// The older checkpoint is for a different log.
    #[error(
        "the older checkpoint is for log {old:?}, this one for {new:?}: they are different logs"
    )]
    OriginMismatch {
        /// Origin of the older checkpoint.
        old: String,
        /// Origin of the newer checkpoint.
        new: String,
    },
    /// An entry bundle cannot be decoded.
    #[error("entry bundle {path} is corrupt: {source}")]
    BundleCorrupt {
        /// The bundle's path.
        path: String,
        /// The decoding error.
        source: TileError,
    },
    /// An entry bundle holds the wrong number of entries.
    #[error("entry bundle {path} holds {found} entries but the checkpoint requires {expected}: entries were deleted or inserted")]
    BundleCount {
        /// The bundle's path.
        path: String,
        /// Entries required.
        expected: usize,
        /// Entries found.
        found: usize,
    },
    /// An entry is not a valid canonical entry.
    #[error("entry {index} is invalid: {source}")]
    EntryInvalid {
        /// The entry's position.
        index: u64,
        /// What is wrong.
        source: EntryError,
    },
    /// The entry at a position carries another index: deletion, insertion or
    /// reordering.
    #[error("the entry at position {position} says it is entry {found}: entries were deleted, inserted or reordered")]
    IndexMismatch {
        /// Where it was found.
        position: u64,
        /// The `index` field it carries.
        found: u64,
    },
    /// The entries do not number as many as the checkpoint says.
    #[error("the log holds {found} entries but the checkpoint says {expected}")]
    EntryCount {
        /// The checkpoint size.
        expected: u64,
        /// The number of entries given.
        found: u64,
    },
    /// An entry's hash differs from the level-0 hash tile.
    #[error("entry {index} does not match its hash in the level-0 tile: the entry or the tile was altered")]
    LeafMismatch {
        /// The entry's position.
        index: u64,
    },
    /// A hash tile differs from what the entries imply.
    #[error("hash tile {path} does not match the hashes recomputed from the entries")]
    TileMismatch {
        /// The tile's path.
        path: String,
    },
    /// The root recomputed from the entries is not the checkpoint's.
    #[error("the root hash recomputed from the {size} entries differs from the signed checkpoint root: the log was altered")]
    RootMismatch {
        /// The checkpoint size.
        size: u64,
    },
    /// The log is smaller than an older checkpoint of it.
    #[error("the log was truncated: an older checkpoint has {old_size} entries, this one only {new_size}")]
    Truncated {
        /// Size of the older checkpoint.
        old_size: u64,
        /// Size of this checkpoint.
        new_size: u64,
    },
    /// The log does not extend the older checkpoint.
    #[error("history was rewritten: the log at size {new_size} is not consistent with the older checkpoint at size {old_size} ({source})")]
    Inconsistent {
        /// Size of the older checkpoint.
        old_size: u64,
        /// Size of this checkpoint.
        new_size: u64,
        /// The failed proof check.
        source: MerkleError,
    },
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The log's origin.
    pub origin: String,
    /// The number of entries verified.
    pub size: u64,
    /// The verified root hash.
    pub root: Hash,
    /// The size of the older checkpoint the log was proven consistent with.
    pub consistent_with: Option<u64>,
    /// Number of hash tiles checked.
    pub tiles_checked: usize,
}

/// Incrementally checks entries in log order: canonical decoding, the
/// `index` field against the position, and accumulates the tree.
struct EntryChecker {
    tree: Tree,
}

impl EntryChecker {
    fn push(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        let position = self.tree.size();
        let entry = Entry::from_bytes(bytes).map_err(|source| VerifyError::EntryInvalid {
            index: position,
            source,
        })?;
        if entry.index != position {
            return Err(VerifyError::IndexMismatch {
                position,
                found: entry.index,
            });
        }
        self.tree.push(leaf_hash(bytes));
        Ok(())
    }
}

/// Verifies a list of entry bytes against an already trusted checkpoint and
/// returns the rebuilt tree (which the caller may keep appending to).
///
/// Checks that each entry is canonical, that its `index` is its position,
/// that there are exactly `checkpoint.size` entries, and that they hash to
/// the checkpoint's root.
pub fn verify_entries<I>(checkpoint: &Checkpoint, entries: I) -> Result<Tree, VerifyError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut checker = EntryChecker { tree: Tree::new() };
    for e in entries {
        if checker.tree.size() == checkpoint.size {
            return Err(VerifyError::EntryCount {
                expected: checkpoint.size,
                found: checkpoint.size + 1,
            });
        }
        checker.push(e.as_ref())?;
    }
    let tree = checker.tree;
    if tree.size() != checkpoint.size {
        return Err(VerifyError::EntryCount {
            expected: checkpoint.size,
            found: tree.size(),
        });
    }
    if tree.root() != checkpoint.root {
        return Err(VerifyError::RootMismatch {
            size: checkpoint.size,
        });
    }
    Ok(tree)
}

/// Verifies a signed checkpoint note and a list of entry bytes together; the
/// in-memory counterpart of [`verify_bundle`] (see there for `since`).
pub fn verify_log<I>(
    checkpoint_note: &str,
    verifier: &Verifier,
    entries: I,
    since: Option<&str>,
) -> Result<VerifyReport, VerifyError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let cp = Checkpoint::open(checkpoint_note, verifier).map_err(VerifyError::Checkpoint)?;
    let tree = verify_entries(&cp, entries)?;
    let consistent_with = check_since(&cp, &tree, verifier, since)?;
    Ok(VerifyReport {
        origin: cp.origin,
        size: cp.size,
        root: cp.root,
        consistent_with,
        tiles_checked: 0,
    })
}

/// With an older checkpoint: same key, same origin, no truncation, and an
/// RFC 9162 consistency proof from old to new that verifies.
fn check_since(
    cp: &Checkpoint,
    tree: &Tree,
    verifier: &Verifier,
    since: Option<&str>,
) -> Result<Option<u64>, VerifyError> {
    let Some(old_note) = since else {
        return Ok(None);
    };
    let old = Checkpoint::open(old_note, verifier).map_err(VerifyError::SinceCheckpoint)?;
    if old.origin != cp.origin {
        return Err(VerifyError::OriginMismatch {
            old: old.origin,
            new: cp.origin.clone(),
        });
    }
    if old.size > cp.size {
        return Err(VerifyError::Truncated {
            old_size: old.size,
            new_size: cp.size,
        });
    }
    let inconsistent = |source| VerifyError::Inconsistent {
        old_size: old.size,
        new_size: cp.size,
        source,
    };
    let proof = tree
        .consistency_proof(old.size, cp.size)
        .map_err(inconsistent)?;
    verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(inconsistent)?;
    Ok(Some(old.size))
}

/// Reads a tile or bundle file. A missing partial file falls back to the full
/// file at the same index (the log may have grown since), as the spec allows;
/// the flag says whether that happened, so the caller keeps only the prefix.
fn read_tile(dir: &Path, tile: &TileRef) -> Result<(Vec<u8>, bool), VerifyError> {
    let path = dir.join(tile.path());
    match fs::read(&path) {
        Ok(b) => Ok((b, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if tile.is_partial() {
                let full = TileRef {
                    width: TILE_WIDTH,
                    ..*tile
                };
                if let Ok(b) = fs::read(dir.join(full.path())) {
                    return Ok((b, true));
                }
            }
            Err(VerifyError::MissingFile { path })
        }
        Err(source) => Err(VerifyError::Io { path, source }),
    }
}

/// Verifies a bundle directory offline.
///
/// Checks, in order: the checkpoint's signature under `verifier`; every
/// entry bundle (each entry canonical, its `index` equal to its position,
/// each bundle exactly as long as the checkpoint requires); each entry's
/// hash against the level-0 tile; the root against the checkpoint; every
/// higher-level tile. With `since` (an older signed checkpoint of the same
/// log): that it verifies with the same key, that the log did not shrink,
/// and an RFC 9162 consistency proof from it to this checkpoint.
pub fn verify_bundle(
    dir: &Path,
    verifier: &Verifier,
    since: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    verify_bundle_entries(dir, verifier, since).map(|v| v.report)
}

/// A verified bundle: what was established, the checkpoint note as found
/// (with any cosignatures) and every entry, in order.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// What the verification established.
    pub report: VerifyReport,
    /// The `checkpoint` file.
    pub checkpoint: String,
    /// The entries, in log order.
    pub entries: Vec<Vec<u8>>,
}

/// [`verify_bundle`], also returning the checkpoint note and the entries
/// (for tools that compute from a verified copy of the log).
pub fn verify_bundle_entries(
    dir: &Path,
    verifier: &Verifier,
    since: Option<&str>,
) -> Result<VerifiedBundle, VerifyError> {
    if !dir.is_dir() {
        return Err(VerifyError::NoBundle(dir.to_path_buf()));
    }
    let cp_path = dir.join(CHECKPOINT_FILE);
    let note = fs::read_to_string(&cp_path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            VerifyError::MissingFile {
                path: cp_path.clone(),
            }
        } else {
            VerifyError::Io {
                path: cp_path.clone(),
                source,
            }
        }
    })?;
    let cp = Checkpoint::open(&note, verifier).map_err(VerifyError::Checkpoint)?;

    let mut checker = EntryChecker { tree: Tree::new() };
    let mut all: Vec<Vec<u8>> = Vec::new();
    for bundle in bundles_for_size(cp.size) {
        let (bytes, from_full) = read_tile(dir, &bundle)?;
        let path = bundle.path();
        let mut entries = decode_bundle(&bytes).map_err(|source| VerifyError::BundleCorrupt {
            path: path.clone(),
            source,
        })?;
        let expected = usize::from(bundle.width);
        if from_full && entries.len() == usize::from(TILE_WIDTH) {
            entries.truncate(expected);
        }
        for e in entries.iter().take(expected) {
            checker.push(e)?;
        }
        all.extend(entries.iter().take(expected).cloned());
        if entries.len() != expected {
            return Err(VerifyError::BundleCount {
                path,
                expected,
                found: entries.len(),
            });
        }
    }
    let tree = checker.tree;

    let tiles = tiles_for_size(cp.size);
    // Level 0 first, hash by hash, so a mismatch names the entry.
    for tile in tiles
        .iter()
        .filter(|t| t.kind == TileKind::Hash { level: 0 })
    {
        let (mut bytes, from_full) = read_tile(dir, tile)?;
        let width = usize::from(tile.width);
        if from_full && bytes.len() == 8192 {
            bytes.truncate(width * 32);
        }
        if bytes.len() < width * 32 {
            return Err(VerifyError::TileMismatch { path: tile.path() });
        }
        for i in 0..width {
            let index = tile.index * u64::from(TILE_WIDTH) + i as u64;
            if tree.leaf(index).as_ref().map(|h| &h[..]) != Some(&bytes[i * 32..(i + 1) * 32]) {
                return Err(VerifyError::LeafMismatch { index });
            }
        }
        if bytes.len() != width * 32 {
            return Err(VerifyError::TileMismatch { path: tile.path() });
        }
    }
    if tree.root() != cp.root {
        return Err(VerifyError::RootMismatch { size: cp.size });
    }
    for tile in &tiles {
        let TileKind::Hash { level } = tile.kind else {
            continue;
        };
        if level == 0 {
            continue;
        }
        let (mut bytes, from_full) = read_tile(dir, tile)?;
        let want = tree
            .tile(level, tile.index, tile.width)
            .map_err(|_| VerifyError::TileMismatch { path: tile.path() })?;
        if from_full && bytes.len() == 8192 {
            bytes.truncate(want.len());
        }
        if bytes != want {
            return Err(VerifyError::TileMismatch { path: tile.path() });
        }
    }

    let consistent_with = check_since(&cp, &tree, verifier, since)?;
    Ok(VerifiedBundle {
        report: VerifyReport {
            origin: cp.origin,
            size: cp.size,
            root: cp.root,
            consistent_with,
            tiles_checked: tiles.len(),
        },
        checkpoint: note,
        entries: all,
    })
}
