//! C2SP `tlog-tiles`: hash tiles, entry bundles and their paths.
//!
//! A tile is 256 consecutive hashes at one level of the tree (tile height 8).
//! A level-`L` tile holds hashes of complete subtrees of height `8 * L`; the
//! `N`-th tile at level `L` covers entries `N * 256^(L+1) .. (N+1) * 256^(L+1)`.
//! The rightmost tile of a level may be partial (`.p/<W>`, 1 ≤ W ≤ 255).

use std::fmt;

use thiserror::Error;

use crate::entry::MAX_ENTRY_SIZE;
use crate::merkle::{Hash, Tree};

/// Tile height: each tile spans 8 levels of the Merkle tree.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile (or bundle).
pub const TILE_WIDTH: u16 = 256;
/// The highest tile level the spec allows in a path.
pub const MAX_LEVEL: u8 = 63;

/// What went wrong with a tile, a tile path or an entry bundle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TileError {
    /// A tile width outside 1..=256 was given.
    #[error("tile width {0} is invalid: it must be between 1 and 256")]
    Width(u16),
    /// A tile level above 63 was given.
    #[error("tile level {0} is invalid: it must be between 0 and 63")]
    Level(u8),
    /// A tile path does not follow the tlog-tiles grammar.
    #[error("tile path {path:?} is invalid: {reason}")]
    Path {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tree does not (yet) hold all the hashes the tile needs.
    #[error("tile {path} is not available: the tree holds only {size} entries")]
    NotAvailable {
        /// The tile's path.
        path: String,
        /// The tree size.
        size: u64,
    },
    /// An entry is too long for the 16-bit length prefix.
    #[error("entry {index} of the bundle is {size} bytes; entries are limited to {MAX_ENTRY_SIZE} bytes")]
    EntryTooLarge {
        /// Position in the bundle.
        index: usize,
        /// Its size.
        size: usize,
    },
    /// A bundle holds more than 256 entries.
    #[error("an entry bundle holds at most 256 entries, found {0}")]
    TooManyEntries(usize),
    /// An entry bundle ends in the middle of a length prefix or an entry.
    #[error("entry bundle is truncated or has trailing garbage at byte {offset}")]
    Truncated {
        /// Byte offset where decoding failed.
        offset: usize,
    },
}

/// Which kind of resource a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// A hash tile at the given level: `tile/<L>/<N>`.
    Hash {
        /// The tile level, 0..=63.
        level: u8,
    },
    /// An entry bundle: `tile/entries/<N>`.
    Entries,
}

/// A parsed tile or entry-bundle reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileRef {
    /// Hash tile or entry bundle.
    pub kind: TileKind,
    /// The tile index `N` within its level.
    pub index: u64,
    /// Number of hashes or entries, 1..=256; 256 means a full tile.
    pub width: u16,
}

impl TileRef {
    /// Whether this is a partial tile (`.p/<W>`).
    pub fn is_partial(&self) -> bool {
        self.width < TILE_WIDTH
    }

    /// The path relative to the log prefix, e.g. `tile/0/x001/x234/067.p/5`.
    pub fn path(&self) -> String {
        let mut s = String::from("tile/");
        match self.kind {
            TileKind::Hash { level } => s.push_str(&level.to_string()),
            TileKind::Entries => s.push_str("entries"),
        }
        s.push('/');
        s.push_str(&encode_index(self.index));
        if self.is_partial() {
            s.push_str(&format!(".p/{}", self.width));
        }
        s
    }
}

impl fmt::Display for TileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// Encodes a tile index as zero-padded 3-digit groups, all but the last
/// prefixed with `x`: 1234067 → `x001/x234/067`.
pub fn encode_index(mut n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

fn check_width(width: u16) -> Result<(), TileError> {
    if width == 0 || width > TILE_WIDTH {
        return Err(TileError::Width(width));
    }
    Ok(())
}

/// The path of a hash tile: `tile/<level>/<N>[.p/<width>]`; width 256 is full.
pub fn tile_path(level: u8, index: u64, width: u16) -> Result<String, TileError> {
    check_width(width)?;
    if level > MAX_LEVEL {
        return Err(TileError::Level(level));
    }
    Ok(TileRef {
        kind: TileKind::Hash { level },
        index,
        width,
    }
    .path())
}

/// The path of an entry bundle: `tile/entries/<N>[.p/<width>]`; width 256 is full.
pub fn entries_path(index: u64, width: u16) -> Result<String, TileError> {
    check_width(width)?;
    Ok(TileRef {
        kind: TileKind::Entries,
        index,
        width,
    }
    .path())
}

/// Parses a tile or entry-bundle path, with or without the leading `tile/`
/// (so the server can route `/v1/log/tile/{*rest}` directly).
///
/// Only the canonical spelling is accepted (no leading zeros, no redundant
/// `x000` groups), so each resource has exactly one path.
pub fn parse_tile_path(path: &str) -> Result<TileRef, TileError> {
    let err = |reason| TileError::Path {
        path: path.to_owned(),
        reason,
    };
    let rest = path.strip_prefix("tile/").unwrap_or(path);
    let (head, rest) = rest.split_once('/').ok_or(err("missing tile index"))?;
    let kind = if head == "entries" {
        TileKind::Entries
    } else {
        let canonical = !head.is_empty()
            && head.len() <= 2
            && head.bytes().all(|b| b.is_ascii_digit())
            && (head == "0" || !head.starts_with('0'));
        let level: u8 = if canonical { head.parse().ok() } else { None }
            .ok_or(err("level is not a decimal number without leading zeros"))?;
        if level > MAX_LEVEL {
            return Err(err("level is above 63"));
        }
        TileKind::Hash { level }
    };
    let (index_part, width) = match rest.split_once(".p/") {
        Some((idx, w)) => {
            let canonical = !w.is_empty()
                && w.len() <= 3
                && w.bytes().all(|b| b.is_ascii_digit())
                && !w.starts_with('0');
            let width: u16 = if canonical { w.parse().ok() } else { None }.ok_or(err(
                "partial width is not a decimal number without leading zeros",
            ))?;
            if !(1..TILE_WIDTH).contains(&width) {
                return Err(err("partial width must be between 1 and 255"));
            }
            (idx, width)
        }
        None => (rest, TILE_WIDTH),
    };
    let groups: Vec<&str> = index_part.split('/').collect();
    let mut index: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let last = i + 1 == groups.len();
        let digits = if last { Some(*g) } else { g.strip_prefix('x') }
            .ok_or(err("all index groups but the last must start with 'x'"))?;
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("index groups must be three digits"));
        }
        let v: u64 = digits
            .parse()
            .map_err(|_| err("index group is not a number"))?;
        index = index
            .checked_mul(1000)
            .and_then(|x| x.checked_add(v))
            .ok_or(err("index does not fit in 64 bits"))?;
    }
    let tile = TileRef { kind, index, width };
    let canonical = tile.path();
    if canonical.strip_prefix("tile/") != Some(path.strip_prefix("tile/").unwrap_or(path)) {
        return Err(err("index has redundant leading zero groups"));
    }
    Ok(tile)
}

/// `256^level` leaves per hash at a tile level, if it fits in u64.
fn leaves_per_hash(level: u8) -> Option<u64> {
    1u64.checked_shl(TILE_HEIGHT * u32::from(level))
        .filter(|_| u32::from(level) * TILE_HEIGHT < 64)
}

/// The widths of the tiles at `level` for a tree of `size` leaves:
/// `(number of full tiles, width of the partial tile or 0)`.
pub fn tiles_at_level(size: u64, level: u8) -> (u64, u16) {
    let Some(per_hash) = leaves_per_hash(level) else {
        return (0, 0);
    };
    let hashes = size / per_hash;
    (hashes / 256, (hashes % 256) as u16)
}

/// All hash tiles (every level) that a tree of `size` leaves consists of:
/// the full ones and the final partial one of each level.
pub fn tiles_for_size(size: u64) -> Vec<TileRef> {
    let mut out = Vec::new();
    for level in 0..=MAX_LEVEL {
        let (full, partial) = tiles_at_level(size, level);
        if full == 0 && partial == 0 {
            break;
        }
        let kind = TileKind::Hash { level };
        out.extend((0..full).map(|index| TileRef {
            kind,
            index,
            width: TILE_WIDTH,
        }));
        if partial > 0 {
            out.push(TileRef {
                kind,
                index: full,
                width: partial,
            });
        }
    }
    out
}

/// All entry bundles for a log of `size` entries.
pub fn bundles_for_size(size: u64) -> Vec<TileRef> {
    let (full, partial) = tiles_at_level(size, 0);
    let mut out: Vec<TileRef> = (0..full)
        .map(|index| TileRef {
            kind: TileKind::Entries,
            index,
            width: TILE_WIDTH,
        })
        .collect();
    if partial > 0 {
        out.push(TileRef {
            kind: TileKind::Entries,
            index: full,
            width: partial,
        });
    }
    out
}

impl Tree {
    /// The contents of hash tile `tile/<level>/<index>[.p/<width>]`: `width`
    /// concatenated 32-byte hashes of complete subtrees of height `8 * level`.
    ///
    /// Fails if the tree does not hold every leaf the tile covers.
    pub fn tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>, TileError> {
        let path = tile_path(level, index, width)?;
        let not_available = || TileError::NotAvailable {
            path: path.clone(),
            size: self.size(),
        };
        let height = TILE_HEIGHT * u32::from(level);
        let first = index.checked_mul(256).ok_or_else(not_available)?;
        let mut out = Vec::with_capacity(usize::from(width) * 32);
        for i in 0..u64::from(width) {
            let hash: Hash = self
                .subtree_hash(height, first + i)
                .ok_or_else(not_available)?;
            out.extend_from_slice(&hash);
        }
        Ok(out)
    }
}

/// Encodes an entry bundle: each entry as a big-endian u16 length and its bytes.
pub fn encode_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, TileError> {
    if entries.len() > usize::from(TILE_WIDTH) {
        return Err(TileError::TooManyEntries(entries.len()));
    }
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.as_ref().len() + 2).sum());
    for (index, e) in entries.iter().enumerate() {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| TileError::EntryTooLarge {
            index,
            size: e.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Decodes an entry bundle, rejecting truncated input, trailing garbage and
/// more than 256 entries.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Vec<u8>>, TileError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        if out.len() == usize::from(TILE_WIDTH) {
            return Err(TileError::TooManyEntries(out.len() + 1));
        }
        let len_bytes = bytes
            .get(offset..offset + 2)
            .ok_or(TileError::Truncated { offset })?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let entry = bytes
            .get(offset + 2..offset + 2 + len)
            .ok_or(TileError::Truncated { offset })?;
        out.push(entry.to_vec());
        offset += 2 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, node_hash, root_from_leaves};
    use proptest::prelude::*;

    #[test]
    fn index_encoding_matches_spec() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(999), "999");
        assert_eq!(encode_index(1000), "x001/000");
        assert_eq!(tile_path(0, 1234067, 256).unwrap(), "tile/0/x001/x234/067");
        assert_eq!(tile_path(2, 5, 17).unwrap(), "tile/2/005.p/17");
        assert_eq!(entries_path(1, 3).unwrap(), "tile/entries/001.p/3");
        assert!(tile_path(0, 0, 0).is_err());
        assert!(tile_path(0, 0, 257).is_err());
        assert!(tile_path(64, 0, 1).is_err());
    }

    #[test]
    fn parse_paths() {
        let t = parse_tile_path("tile/0/x001/x234/067").unwrap();
        assert_eq!(
            t,
            TileRef {
                kind: TileKind::Hash { level: 0 },
                index: 1234067,
                width: 256
            }
        );
        let t = parse_tile_path("entries/005.p/255").unwrap();
        assert_eq!(
            t,
            TileRef {
                kind: TileKind::Entries,
                index: 5,
                width: 255
            }
        );
        let t = parse_tile_path("tile/63/000.p/1").unwrap();
        assert_eq!(t.kind, TileKind::Hash { level: 63 });
        for bad in [
            "tile/0/1",
            "tile/00/000",
            "tile/64/000",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/05",
            "tile/0/001/x002",
            "tile/0/x1000/000",
            "tile/0/",
            "tile/x/000",
            "tile/0/000.p/",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "",
        ] {
            assert!(parse_tile_path(bad).is_err(), "{bad}");
        }
        let max = parse_tile_path("tile/0/x018/x446/x744/x073/x709/x551/615").unwrap();
        assert_eq!(max.index, u64::MAX);
    }

    #[test]
    fn tile_inventory_matches_spec_example() {
        // "a tree of size 70,000 will be represented by 273 full level 0 tiles,
        // one partial level 0 tile of width 112, one full level 1 tile, one
        // partial level 1 tile of width 17, and one partial level 2 tile of width 1."
        assert_eq!(tiles_at_level(70_000, 0), (273, 112));
        assert_eq!(tiles_at_level(70_000, 1), (1, 17));
        assert_eq!(tiles_at_level(70_000, 2), (0, 1));
        assert_eq!(tiles_at_level(70_000, 3), (0, 0));
        assert_eq!(tiles_for_size(70_000).len(), 273 + 1 + 1 + 1 + 1);
        // "a tree of size 256 will be represented by a full level 0 tile and a
        // partial level 1 tile of width 1."
        let t = tiles_for_size(256);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].path(), "tile/1/000.p/1");
        assert!(tiles_for_size(0).is_empty());
        assert_eq!(bundles_for_size(300).len(), 2);
        assert_eq!(tiles_at_level(u64::MAX, 63), (0, 0));
    }

    #[test]
    fn tile_contents() {
        let leaves: Vec<Hash> = (0..600u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = Tree::from_leaf_hashes(leaves.iter().copied());
        let t0 = tree.tile(0, 1, 256).unwrap();
        assert_eq!(t0.len(), 8192);
        assert_eq!(&t0[..32], &leaves[256]);
        let p0 = tree.tile(0, 2, 88).unwrap();
        assert_eq!(&p0[32 * 87..], &leaves[599]);
        assert!(tree.tile(0, 2, 89).is_err());
        let t1 = tree.tile(1, 0, 2).unwrap();
        assert_eq!(&t1[..32], &root_from_leaves(&leaves[..256]));
        assert_eq!(&t1[32..], &root_from_leaves(&leaves[256..512]));
        assert!(tree.tile(1, 0, 3).is_err());
        // A level-1 tile's hashes combine to the level-2 hash of the tile.
        let full = Tree::from_leaf_hashes((0..65536u32).map(|i| leaf_hash(&i.to_be_bytes())));
        let t1 = full.tile(1, 0, 256).unwrap();
        let mut row: Vec<Hash> = t1.chunks(32).map(|c| c.try_into().unwrap()).collect();
        while row.len() > 1 {
            row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
        }
        assert_eq!(row[0], full.root());
        assert_eq!(full.tile(2, 0, 1).unwrap(), full.root().to_vec());
    }

    #[test]
    fn bundle_codec() {
        let entries = vec![b"a".to_vec(), Vec::new(), vec![7u8; 300]];
        let b = encode_bundle(&entries).unwrap();
        assert_eq!(&b[..3], &[0, 1, b'a']);
        assert_eq!(decode_bundle(&b).unwrap(), entries);
        assert!(matches!(
            decode_bundle(&b[..b.len() - 1]),
            Err(TileError::Truncated { .. })
        ));
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(decode_bundle(&trailing).is_err());
        assert!(encode_bundle(&[vec![0u8; 65536]]).is_err());
        assert!(encode_bundle(&vec![Vec::<u8>::new(); 257]).is_err());
        assert!(decode_bundle(&[0u8; 2 * 257]).is_err());
        assert_eq!(decode_bundle(&[]).unwrap(), Vec::<Vec<u8>>::new());
    }

    proptest! {
        #[test]
        fn path_round_trip(level in 0u8..=63, index in any::<u64>(), width in 1u16..=256, entries in any::<bool>()) {
            let p = if entries { entries_path(index, width).unwrap() } else { tile_path(level, index, width).unwrap() };
            let t = parse_tile_path(&p).unwrap();
            prop_assert_eq!(t.path(), p.clone());
            prop_assert_eq!(t.index, index);
            prop_assert_eq!(t.width, width);
            let short = p.strip_prefix("tile/").unwrap();
            prop_assert_eq!(parse_tile_path(short).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "[tilex0-9./p]{0,40}") {
            let _ = parse_tile_path(&s);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(entries) = decode_bundle(&bytes) {
                prop_assert_eq!(encode_bundle(&entries).unwrap(), bytes);
            }
        }
    }
}
