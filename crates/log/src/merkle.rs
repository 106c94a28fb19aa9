//! RFC 6962 / RFC 9162 Merkle tree hashing, an append-only in-memory tree,
//! and inclusion and consistency proofs.
//!
//! The hashing is exactly that of RFC 6962 §2.1: a leaf hashes as
//! `SHA-256(0x00 || data)`, an interior node as `SHA-256(0x01 || left || right)`,
//! and the empty tree as `SHA-256("")`. Any Certificate Transparency or C2SP
//! tlog client computes the same roots and proofs.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// What went wrong while building or checking a Merkle proof.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MerkleError {
    /// A leaf index at or beyond the tree size was asked for.
    #[error(
        "leaf index {index} is outside a tree of size {size}; ask for an index below the tree size"
    )]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The size of the tree it was asked in.
        size: u64,
    },
    /// A tree size larger than the tree holds was asked for.
    #[error("tree size {requested} is larger than the {available} leaves this tree holds")]
    SizeOutOfRange {
        /// The size asked for.
        requested: u64,
        /// The number of leaves available.
        available: u64,
    },
    /// A consistency proof was asked for from a larger to a smaller tree.
    #[error("old tree size {old_size} is larger than new tree size {new_size}: a log never shrinks, so this is a truncation")]
    OldSizeLarger {
        /// The older (claimed smaller) size.
        old_size: u64,
        /// The newer (claimed larger) size.
        new_size: u64,
    },
    /// The proof has the wrong number of hashes for the given sizes.
    #[error("the proof has the wrong number of hashes for these tree sizes ({0})")]
    ProofLength(&'static str),
    /// The proof does not lead to the expected root hash(es).
    #[error("the proof does not lead to the expected root hash ({0}): the entry, the proof or the root was altered")]
    RootMismatch(&'static str),
}

/// Hashes one leaf per RFC 6962: `SHA-256(0x00 || data)`.
///
/// The 0x00 prefix separates leaves from interior nodes so that no interior
/// node can be passed off as a leaf (second-preimage resistance).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// Hashes an interior node per RFC 6962: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (requires `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle Tree Hash of a list of leaf hashes, by the recursive definition
/// of RFC 6962 §2.1.
///
/// This is the slow, obviously-correct reference that the fast [`Tree`] is
/// tested against; use [`Tree`] for real work.
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            // `n >= 2`, so the split point is in range and fits in usize.
            let k = split_point(n as u64) as usize;
            node_hash(
                &root_from_leaves(&leaves[..k]),
                &root_from_leaves(&leaves[k..]),
            )
        }
    }
}

/// An append-only Merkle tree held in memory.
///
/// It keeps the hash of every complete, aligned subtree:
/// `levels[k][i]` is the hash of the `2^k` leaves starting at `i * 2^k`.
/// That costs about two hashes of memory per leaf (64 MiB per million
/// leaves) and makes every root, proof and tile a handful of lookups plus at
/// most `O(log² n)` hashes along the right edge, instead of a rehash of the
/// log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from leaf hashes in log order.
    pub fn from_leaf_hashes<I: IntoIterator<Item = Hash>>(leaves: I) -> Self {
        let iter = leaves.into_iter();
        let mut tree = Tree::new();
        let (lower, _) = iter.size_hint();
        if lower > 0 {
            tree.levels.push(Vec::with_capacity(lower));
        }
        for leaf in iter {
            tree.push(leaf);
        }
        tree
    }

    /// Appends a leaf hash and returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            let len = row.len();
            if len % 2 == 1 {
                break;
            }
            hash = node_hash(&row[len - 2], &row[len - 1]);
            level += 1;
        }
        index
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaf hash at `index`, if the tree holds it.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root hash of the whole tree.
    pub fn root(&self) -> Hash {
        self.subtree(0, self.size())
    }

    /// The root hash the tree had when it held `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        Ok(self.subtree(0, size))
    }

    /// The hash of the complete subtree of height `height` at position
    /// `index` within its level (the `2^height` leaves starting at
    /// `index * 2^height`), if all of those leaves are present.
    pub fn subtree_hash(&self, height: u32, index: u64) -> Option<Hash> {
        let row = self.levels.get(usize::try_from(height).ok()?)?;
        row.get(usize::try_from(index).ok()?).copied()
    }

    /// RFC 9162 §2.1.3.1 inclusion proof for the leaf at `index` in the tree
    /// of size `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::with_capacity(64);
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    /// RFC 9162 §2.1.4.1 consistency proof between the trees of sizes
    /// `old_size` and `new_size`. Empty when `old_size` is 0 or equals
    /// `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(MerkleError::OldSizeLarger { old_size, new_size });
        }
        let mut out = Vec::with_capacity(64);
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut out);
        }
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        let available = self.size();
        if size > available {
            return Err(MerkleError::SizeOutOfRange {
                requested: size,
                available,
            });
        }
        Ok(())
    }

    /// MTH(D[start:end]); `end <= self.size()` and `start` aligned as in the
    /// RFC recursion (a multiple of a power of two at least `end - start`).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(start >> k) as usize];
        }
        let k = split_point(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// PATH(m, D[start:end]) of RFC 9162 §2.1.3.1.
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// SUBPROOF(m, D[start:end], b) of RFC 9162 §2.1.4.1.
    fn subproof(&self, m: u64, start: u64, end: u64, b: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !b {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, b, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// Right-shifts `fn_` and `sn` together until `fn_` is odd or zero.
fn shift_while_even(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Verifies an inclusion proof by the algorithm of RFC 9162 §2.1.3.2.
///
/// Anyone holding only a leaf, a proof and a signed root can check that the
/// leaf is at `index` in the tree of `size` leaves.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(MerkleError::ProofLength("too many hashes"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            shift_while_even(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::ProofLength("too few hashes"));
    }
    if r != *root {
        return Err(MerkleError::RootMismatch("inclusion"));
    }
    Ok(())
}

/// Verifies a consistency proof by the algorithm of RFC 9162 §2.1.4.2.
///
/// Success means the tree of `new_size` leaves extends the tree of
/// `old_size` leaves without changing any of them: history was not rewritten.
/// Equal sizes need an empty proof and equal roots; an empty old tree is
/// consistent with everything (empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeLarger { old_size, new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength("equal sizes need an empty proof"));
        }
        if old_root != new_root {
            return Err(MerkleError::RootMismatch(
                "equal sizes with different roots",
            ));
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength(
                "an empty old tree needs an empty proof",
            ));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(MerkleError::ProofLength("empty proof"));
    }
    let (first, rest): (&Hash, &[Hash]) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (&proof[0], &proof[1..])
    };
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if sn == 0 {
            return Err(MerkleError::ProofLength("too many hashes"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            shift_while_even(&mut fn_, &mut sn);
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::ProofLength("too few hashes"));
    }
    if fr != *old_root {
        return Err(MerkleError::RootMismatch("old root"));
    }
    if sr != *new_root {
        return Err(MerkleError::RootMismatch("new root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).unwrap();
        v.try_into().unwrap()
    }

    // RFC 6962 test vectors as published in transparency-dev/merkle
    // (testonly/constants.go and proof/verify_test.go), originally from
    // google/certificate-transparency.
    fn vector_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| hex::decode(s).unwrap())
        .collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];

    fn vector_tree() -> Tree {
        Tree::from_leaf_hashes(vector_leaves().iter().map(|l| leaf_hash(l)))
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        let expect = h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Tree::new().root(), expect);
        assert_eq!(root_from_leaves(&[]), expect);
        assert_eq!(Tree::new().root_at(0).unwrap(), expect);
    }

    #[test]
    fn rfc6962_leaf_hashes_and_roots() {
        let tree = vector_tree();
        for (i, want) in LEAF_HASHES.iter().enumerate() {
            assert_eq!(tree.leaf(i as u64).unwrap(), h(want), "leaf {i}");
        }
        for (i, want) in ROOTS.iter().enumerate() {
            let size = i as u64 + 1;
            assert_eq!(tree.root_at(size).unwrap(), h(want), "root at size {size}");
            let prefix: Vec<Hash> = (0..size).map(|j| tree.leaf(j).unwrap()).collect();
            assert_eq!(root_from_leaves(&prefix), h(want));
        }
        // Some interior nodes from the published NodeHashes.
        assert_eq!(
            tree.subtree_hash(1, 2).unwrap(),
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a")
        );
        assert_eq!(
            tree.subtree_hash(2, 1).unwrap(),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")
        );
    }

    #[test]
    fn rfc6962_inclusion_vectors() {
        let tree = vector_tree();
        // (0-based leaf index, tree size, proof)
        let vectors: Vec<(u64, u64, Vec<&str>)> = vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                vec![
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, proof) in vectors {
            let want: Vec<Hash> = proof.iter().map(|s| h(s)).collect();
            assert_eq!(
                tree.inclusion_proof(index, size).unwrap(),
                want,
                "{index}@{size}"
            );
            let root = h(ROOTS[size as usize - 1]);
            let leaf = tree.leaf(index).unwrap();
            verify_inclusion(&leaf, index, size, &want, &root).unwrap();
            // Corruptions that must fail.
            assert!(verify_inclusion(&leaf, index + 1, size, &want, &root).is_err());
            assert!(verify_inclusion(&leaf, index, size * 2, &want, &root).is_err());
            assert!(verify_inclusion(&empty_root(), index, size, &want, &root).is_err());
            let mut longer = want.clone();
            longer.push(root);
            assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
            if !want.is_empty() {
                assert!(
                    verify_inclusion(&leaf, index, size, &want[..want.len() - 1], &root).is_err()
                );
            }
        }
        assert!(tree.inclusion_proof(8, 8).is_err());
        assert!(tree.inclusion_proof(0, 9).is_err());
    }

    #[test]
    fn rfc6962_consistency_vectors() {
        let tree = vector_tree();
        let vectors: Vec<(u64, u64, Vec<&str>)> = vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, proof) in vectors {
            let want: Vec<Hash> = proof.iter().map(|s| h(s)).collect();
            assert_eq!(
                tree.consistency_proof(old, new).unwrap(),
                want,
                "{old}->{new}"
            );
            let r1 = h(ROOTS[old as usize - 1]);
            let r2 = h(ROOTS[new as usize - 1]);
            verify_consistency(old, new, &r1, &r2, &want).unwrap();
            if !want.is_empty() {
                assert!(verify_consistency(old, new, &r2, &r1, &want).is_err());
                assert!(verify_consistency(old + 1, new, &r1, &r2, &want).is_err());
                assert!(verify_consistency(old, new, &r1, &r2, &[]).is_err());
                assert!(verify_consistency(old, new, &r1, &r2, &want[..want.len() - 1]).is_err());
                let mut longer = want.clone();
                longer.push(r1);
                assert!(verify_consistency(old, new, &r1, &r2, &longer).is_err());
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert!(verify_consistency(0, 0, &a, &a, &[]).is_ok());
        assert!(verify_consistency(0, 5, &a, &b, &[]).is_ok());
        assert!(verify_consistency(0, 5, &a, &b, &[a]).is_err());
        assert!(verify_consistency(3, 3, &a, &b, &[]).is_err());
        assert!(verify_consistency(3, 3, &a, &a, &[a]).is_err());
        assert!(matches!(
            verify_consistency(4, 3, &a, &b, &[]),
            Err(MerkleError::OldSizeLarger { .. })
        ));
        let tree = vector_tree();
        assert!(tree.consistency_proof(5, 3).is_err());
        assert!(tree.consistency_proof(3, 9).is_err());
        assert!(tree.consistency_proof(0, 8).unwrap().is_empty());
    }

    fn leaves_for(n: usize) -> Vec<Hash> {
        (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roots_match_reference(n in 0usize..600) {
            let leaves = leaves_for(n);
            let tree = Tree::from_leaf_hashes(leaves.iter().copied());
            prop_assert_eq!(tree.size(), n as u64);
            prop_assert_eq!(tree.root(), root_from_leaves(&leaves));
            for size in [0, n / 3, n / 2, n.saturating_sub(1)] {
                prop_assert_eq!(tree.root_at(size as u64).unwrap(), root_from_leaves(&leaves[..size]));
            }
        }

        #[test]
        fn inclusion_proofs_verify_and_flips_fail(
            n in 1usize..600,
            pick in any::<proptest::sample::Index>(),
            size_pick in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let leaves = leaves_for(n);
            let tree = Tree::from_leaf_hashes(leaves.iter().copied());
            let size = size_pick.index(n) as u64 + 1;
            let index = pick.index(size as usize) as u64;
            let root = root_from_leaves(&leaves[..size as usize]);
            let proof = tree.inclusion_proof(index, size).unwrap();
            prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &root).is_ok());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let j = flip.index(bad.len());
                bad[j][usize::from(bit) * 4 % 32] ^= 1 << bit;
                prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &bad, &root).is_err());
            }
            let mut bad_leaf = leaves[index as usize];
            bad_leaf[0] ^= 1;
            prop_assert!(verify_inclusion(&bad_leaf, index, size, &proof, &root).is_err());
        }

        #[test]
        fn consistency_proofs_verify_and_flips_fail(
            n in 1usize..600,
            a in any::<proptest::sample::Index>(),
            b in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let leaves = leaves_for(n);
            let tree = Tree::from_leaf_hashes(leaves.iter().copied());
            let x = a.index(n + 1) as u64;
            let y = b.index(n + 1) as u64;
            let (old, new) = if x <= y { (x, y) } else { (y, x) };
            let r1 = root_from_leaves(&leaves[..old as usize]);
            let r2 = root_from_leaves(&leaves[..new as usize]);
            let proof = tree.consistency_proof(old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &r1, &r2, &proof).is_ok());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let j = flip.index(bad.len());
                bad[j][31 - usize::from(bit)] ^= 1 << bit;
                prop_assert!(verify_consistency(old, new, &r1, &r2, &bad).is_err());
                // A different history of the same size is inconsistent.
                let mut other = leaves.clone();
                other[0][0] ^= 1;
                let fake_old = root_from_leaves(&other[..old as usize]);
                prop_assert!(verify_consistency(old, new, &fake_old, &r2, &proof).is_err());
            }
            if old > 0 && old < new {
                prop_assert!(verify_consistency(new, old, &r2, &r1, &proof).is_err());
            }
        }
    }
}
