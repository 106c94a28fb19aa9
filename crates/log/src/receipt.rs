//! Receipts: a self-contained proof that one entry is in the log.
//!
//! A receipt carries the entry, its inclusion proof and the signed
//! checkpoint the proof leads to, so whoever holds it (the requester, a
//! SIEM, an auditor) can later show the decision was logged, with only the
//! log's verifier key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{Entry, EntryError};
use crate::merkle::{leaf_hash, verify_inclusion, Hash, MerkleError, Tree};
use crate::note::Verifier;

/// What went wrong building or verifying a receipt.
#[derive(Debug, Error)]
pub enum ReceiptError {
    /// The checkpoint is invalid or not signed by the trusted key.
    #[error("receipt checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The receipt's fields disagree with each other or with the tree.
    #[error("receipt is inconsistent: {0}")]
    Inconsistent(String),
    /// The entry is not a valid canonical entry.
    #[error("receipt entry: {0}")]
    Entry(#[from] EntryError),
    /// The inclusion proof does not verify.
    #[error("receipt inclusion proof: {0}")]
    Proof(#[from] MerkleError),
}

/// An inclusion-proof bundle for one entry, serialized as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The entry's index in the log.
    pub index: u64,
    /// The tree size the proof is for (the checkpoint's size).
    pub tree_size: u64,
    /// The entry's canonical JSON, exactly as hashed.
    pub entry: String,
    /// The entry's RFC 6962 leaf hash, lowercase hex.
    pub leaf_hash: String,
    /// The inclusion proof hashes, base64, leaf to root.
    pub proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl Receipt {
    /// Builds the receipt for the entry at `index`, proven against the
    /// checkpoint `checkpoint_note` (which the log signed from `tree`).
    pub fn build(
        tree: &Tree,
        entry_bytes: &[u8],
        index: u64,
        checkpoint_note: &str,
    ) -> Result<Receipt, ReceiptError> {
        let cp = Checkpoint::parse_note_unverified(checkpoint_note)?;
        if tree.root_at(cp.size)? != cp.root {
            return Err(ReceiptError::Inconsistent(
                "the tree's root at the checkpoint size differs from the checkpoint root".into(),
            ));
        }
        let leaf = leaf_hash(entry_bytes);
        if tree.leaf(index) != Some(leaf) {
            return Err(ReceiptError::Inconsistent(format!(
                "the entry does not hash to the tree's leaf {index}"
            )));
        }
        let entry = String::from_utf8(entry_bytes.to_vec())
            .map_err(|_| ReceiptError::Inconsistent("the entry is not UTF-8 JSON".into()))?;
        let proof = tree.inclusion_proof(index, cp.size)?;
        Ok(Receipt {
            index,
            tree_size: cp.size,
            entry,
            leaf_hash: hex::encode(leaf),
            proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
            checkpoint: checkpoint_note.to_owned(),
        })
    }

    /// Verifies the receipt with the log's key and returns the proven entry.
    pub fn verify(&self, verifier: &Verifier) -> Result<Entry, ReceiptError> {
        let cp = Checkpoint::open(&self.checkpoint, verifier)?;
        if cp.size != self.tree_size {
            return Err(ReceiptError::Inconsistent(format!(
                "tree_size {} differs from the checkpoint size {}",
                self.tree_size, cp.size
            )));
        }
        let leaf = leaf_hash(self.entry.as_bytes());
        if hex::encode(leaf) != self.leaf_hash {
            return Err(ReceiptError::Inconsistent(
                "leaf_hash is not the hash of the entry".into(),
            ));
        }
        let entry = Entry::from_bytes(self.entry.as_bytes())?;
        if entry.index != self.index {
            return Err(ReceiptError::Inconsistent(format!(
                "the entry says index {} but the receipt says {}",
                entry.index, self.index
            )));
        }
        let proof = self
            .proof
            .iter()
            .map(|s| {
                STANDARD
                    .decode(s)
                    .ok()
                    .and_then(|v| Hash::try_from(v).ok())
                    .ok_or_else(|| {
                        ReceiptError::Inconsistent("a proof hash is not 32 bytes of base64".into())
                    })
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        verify_inclusion(&leaf, self.index, cp.size, &proof, &cp.root)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Signer;
    use std::collections::BTreeMap;

    fn entry(i: u64) -> Vec<u8> {
        Entry {
            index: i,
            time: "2025-01-01T00:00:00Z".into(),
            event: "request.created".into(),
            actor: None,
            subjects: BTreeMap::new(),
            digest: None,
            payload: serde_json::json!({"n": i}),
        }
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn build_verify_and_tamper() {
        let signer = Signer::generate("example.com/log").unwrap();
        let entries: Vec<Vec<u8>> = (0..13).map(entry).collect();
        let tree = Tree::from_leaf_hashes(entries.iter().map(|e| leaf_hash(e)));
        let note = Checkpoint::new("example.com/log", 13, tree.root())
            .sign(&signer)
            .unwrap();
        let v = signer.verifier();
        for i in 0..13 {
            let r = Receipt::build(&tree, &entries[i as usize], i, &note).unwrap();
            let json = serde_json::to_string(&r).unwrap();
            let back: Receipt = serde_json::from_str(&json).unwrap();
            assert_eq!(back.verify(&v).unwrap().index, i);
        }
        let r = Receipt::build(&tree, &entries[5], 5, &note).unwrap();
        assert!(Receipt::build(&tree, &entries[5], 6, &note).is_err());

        let mut bad = r.clone();
        bad.entry = String::from_utf8(entry(5))
            .unwrap()
            .replace("\"n\":5", "\"n\":6");
        assert!(bad.verify(&v).is_err());
        let mut bad = r.clone();
        bad.leaf_hash = hex::encode(leaf_hash(bad.entry.as_bytes()));
        bad.proof[0] = STANDARD.encode([0u8; 32]);
        assert!(matches!(bad.verify(&v), Err(ReceiptError::Proof(_))));
        let mut bad = r.clone();
        bad.index = 4;
        assert!(bad.verify(&v).is_err());
        let mut bad = r.clone();
        bad.tree_size = 12;
        assert!(bad.verify(&v).is_err());
        let other = Signer::generate("example.com/log").unwrap();
        assert!(matches!(
            r.verify(&other.verifier()),
            Err(ReceiptError::Checkpoint(_))
        ));
    }
}
