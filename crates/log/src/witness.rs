//! Witnessed checkpoints: C2SP `tlog-cosignature` (Ed25519,
//! `cosignature/v1`) and the checking side of C2SP `tlog-witness`.
//!
//! A witness keeps, per log origin, the latest checkpoint it cosigned, and
//! cosigns a new one only if it is signed by the log's key and a
//! consistency proof shows it extends that one. An operator who holds both
//! the database and the log's signing key can rewrite history nobody saw a
//! checkpoint of; once a witness has cosigned a checkpoint, a rewritten
//! (forked) log can no longer get a cosignature from it, and verifiers that
//! require cosignatures notice.
//!
//! This module is the pure part: keys, cosignatures, the `add-checkpoint`
//! request body, and [`Witness::check`], the decision a witness makes given
//! its stored state. Persisting that state and speaking HTTP are the
//! caller's job.
//!
//! Cosigner keys follow the spec: key id `SHA-256(name || "\n" || 0x04 ||
//! public key)[:4]`, verifier keys `<name>+<id>+base64(0x04 || key)`; secret
//! keys are written `PRIVATE+KEY+<name>+<id>+base64(0x04 || seed)` (the
//! signed-note convention with the cosignature type byte).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::checkpoint::Checkpoint;
use crate::merkle::{empty_root, verify_consistency, Hash};
use crate::note::{self, NoteError, Verifier};

/// The key type byte of Ed25519 cosignatures (`cosignature/v1`).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Most consistency proof lines a request may carry (the spec's limit).
pub const MAX_PROOF_LINES: usize = 63;

/// Largest `add-checkpoint` body accepted (a checkpoint, 63 hashes, room
/// for many signatures).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

const SIG_PREFIX: &str = "\u{2014} ";

/// What is wrong with a cosigner key or a cosignature.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The key string does not parse.
    #[error("cosigner key is malformed ({0}); expected <name>+<8 hex key id>+<base64(0x04 || key)>, as printed by `secondkey witness keygen`")]
    Malformed(&'static str),
    /// The system random number generator failed.
    #[error("could not get randomness from the operating system: {0}")]
    Random(String),
    /// A key name is empty or holds a space or a `+`.
    #[error("key name {0:?} is invalid: it must be non-empty and contain no spaces and no '+'")]
    Name(String),
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(KeyError::Name(name.to_string()));
    }
    Ok(())
}

/// A cosigner key string's parts (type 0x04).
fn decode(s: &str, private: bool) -> Result<note::KeyString, KeyError> {
    note::decode_key_string(
        s,
        private,
        ALG_COSIGNATURE_V1,
        "not a cosignature/v1 (0x04) key; a log's own key (0x01) is given with --key",
    )
    .map_err(|e| match e {
        note::KeyStringError::Name(n) => KeyError::Name(n),
        note::KeyStringError::Malformed(m) => KeyError::Malformed(m),
    })
}

/// The key id of an Ed25519 cosigner key.
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ALG_COSIGNATURE_V1]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a `cosignature/v1` signs: header, time, checkpoint body.
pub fn cosigned_message(checkpoint_body: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_body}")
}

/// A witness's signing key.
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Cosigner, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Cosigner::from_seed(name, seed))
    }

    /// A key from its 32-byte seed (tests and known vectors).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Cosigner {
        let key = SigningKey::from_bytes(&seed);
        Cosigner {
            key_id: cosigner_key_id(name, key.verifying_key().as_bytes()),
            name: name.to_string(),
            key,
        }
    }

    /// The witness's name (on its signature lines).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key, to give to log verifiers.
    pub fn verifier(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The secret key string. An explicit call, never `Display`.
    #[allow(clippy::inherent_to_string)]
    pub fn to_string(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(raw)
        )
    }

    /// A signature line cosigning `checkpoint_body` at `timestamp` (Unix
    /// seconds): `— <name> base64(key id || timestamp || signature)\n`.
    pub fn cosign(&self, checkpoint_body: &str, timestamp: u64) -> String {
        let sig = self
            .key
            .sign(cosigned_message(checkpoint_body, timestamp).as_bytes());
        let mut raw = Vec::with_capacity(76);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }
}

impl FromStr for Cosigner {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Cosigner, KeyError> {
        let k = decode(s, true)?;
        let (name, id, seed) = (k.name.as_str(), k.id, k.key);
        let c = Cosigner::from_seed(name, seed);
        if c.key_id != id {
            return Err(KeyError::Malformed(
                "key id does not match the name and key",
            ));
        }
        Ok(c)
    }
}

/// A witness's public key, as log verifiers configure it.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosignerKey({self})")
    }
}

impl fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(raw)
        )
    }
}

impl FromStr for CosignerKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<CosignerKey, KeyError> {
        let k = decode(s, false)?;
        let (name, id, pk) = (k.name.as_str(), k.id, k.key);
        let key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| KeyError::Malformed("not a valid Ed25519 public key"))?;
        if key.is_weak() {
            return Err(KeyError::Malformed("a small-order key anyone can sign for"));
        }
        let key_id = cosigner_key_id(name, &pk);
        if key_id != id {
            return Err(KeyError::Malformed(
                "key id does not match the name and key",
            ));
        }
        Ok(CosignerKey {
            name: name.to_string(),
            key_id,
            key,
        })
    }
}

impl CosignerKey {
    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cosignature timestamp (Unix seconds) of the first line of
    /// `note` that is a valid cosignature by this key, if any. Lines by
    /// other keys, and malformed or invalid lines claiming this key, are
    /// not cosignatures by it.
    pub fn verify(&self, note: &str) -> Option<u64> {
        let (text, sigs) = note.rsplit_once("\n\n")?;
        let body = format!("{text}\n");
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                continue;
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let Ok(raw) = STANDARD.decode(b64) else {
                continue;
            };
            if raw.len() != 76 || raw[..4] != self.key_id.to_be_bytes() {
                continue;
            }
            let ts = u64::from_be_bytes(raw[4..12].try_into().ok()?);
            if ts > i64::MAX as u64 {
                continue;
            }
            let sig = Signature::from_bytes(raw[12..].try_into().ok()?);
            if self
                .key
                .verify_strict(cosigned_message(&body, ts).as_bytes(), &sig)
                .is_ok()
            {
                return Some(ts);
            }
        }
        None
    }
}

/// Which of `keys` validly cosigned `note`, with their timestamps: one
/// answer per witness public key, however often (or under however many
/// names) it is given, so a count of them is a count of witnesses.
pub fn cosigned_by<'a>(note: &str, keys: &'a [CosignerKey]) -> Vec<(&'a CosignerKey, u64)> {
    let mut seen = std::collections::BTreeSet::new();
    keys.iter()
        .filter_map(|k| k.verify(note).map(|ts| (k, ts)))
        .filter(|(k, _)| seen.insert(k.key.to_bytes()))
        .collect()
}

/// A signature line of a note other than the log's own, as found: nothing
/// about it is checked (anyone can append such a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine {
    /// The key name the line gives.
    pub name: String,
    /// The timestamp (Unix seconds) the line claims, when its signature has
    /// the `cosignature/v1` layout (key id, 8-byte time, 64-byte signature).
    pub claimed_time: Option<u64>,
}

/// The signature lines of `note` not named `origin` (the log's own key),
/// unverified: what a report may say the checkpoint *carries*, never who
/// cosigned it — that takes [`cosigned_by`] with the witnesses' keys.
pub fn other_signature_lines(note: &str, origin: &str) -> Vec<SignatureLine> {
    let sigs = note.rsplit_once("\n\n").map(|(_, s)| s).unwrap_or_default();
    sigs.lines()
        .filter_map(|l| l.strip_prefix(SIG_PREFIX)?.split_once(' '))
        .filter(|(name, _)| *name != origin)
        .map(|(name, b64)| SignatureLine {
            name: name.to_string(),
            claimed_time: STANDARD
                .decode(b64)
                .ok()
                .filter(|raw| raw.len() == 76)
                .and_then(|raw| raw[4..12].try_into().ok())
                .map(u64::from_be_bytes)
                .filter(|ts| *ts <= i64::MAX as u64),
        })
        .collect()
}

/// Appends signature lines (a witness's answer) to a signed note.
pub fn add_signatures(note: &str, lines: &str) -> String {
    let mut out = note.to_string();
    for l in lines.lines().filter(|l| l.starts_with(SIG_PREFIX)) {
        if !out.contains(l) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The body of `POST <prefix>/add-checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned (as the log
    /// believes).
    pub old_size: u64,
    /// A consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// Why a witness refuses, with the HTTP status the spec assigns.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// 400: the body or checkpoint is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 404: the witness does not witness this origin.
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// 403: no trusted key signed the checkpoint.
    #[error("no signature verifies against a key trusted for this origin")]
    Forbidden,
    /// 409: the log's idea of what was cosigned last is stale.
    #[error("old size {old} does not match the latest cosigned size {latest}")]
    Conflict {
        /// The old size the request named.
        old: u64,
        /// The size the witness cosigned last.
        latest: u64,
    },
    /// 409: same size as the latest cosigned checkpoint, another root.
    #[error(
        "the checkpoint has the size of the latest cosigned one but another root: the log forked"
    )]
    SameSizeOtherRoot,
    /// 422: the proof does not lead from the cosigned checkpoint.
    #[error("the consistency proof does not verify: this checkpoint does not extend the one cosigned at size {latest} (a forked or rewritten log)")]
    Inconsistent {
        /// The size the witness cosigned last.
        latest: u64,
    },
}

impl Refusal {
    /// The HTTP status of this refusal (C2SP tlog-witness).
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::Forbidden => 403,
            Refusal::Conflict { .. } | Refusal::SameSizeOtherRoot => 409,
            Refusal::Inconsistent { .. } => 422,
        }
    }
}

fn bad(m: &str) -> Refusal {
    Refusal::BadRequest(m.to_string())
}

impl AddCheckpoint {
    /// Parses a request body strictly.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, Refusal> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(bad("request body too large"));
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("the first line is not `old <size>`"))?;
        let canonical = !old.is_empty()
            && old.bytes().all(|b| b.is_ascii_digit())
            && (old == "0" || !old.starts_with('0'));
        if !canonical {
            return Err(bad("the old size is not a decimal without leading zeros"));
        }
        let old_size: u64 = old.parse().map_err(|_| bad("the old size is too large"))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad("more than 63 proof lines"));
            }
            let h: Hash = STANDARD
                .decode(l)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?;
            proof.push(h);
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// The request body.
    pub fn to_body(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&STANDARD.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }
}

/// What a witness keeps per log: the latest checkpoint it cosigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosigned {
    /// Its tree size.
    pub size: u64,
    /// Its root hash.
    pub root: Hash,
}

/// A witness: its key and the logs it witnesses (origin → trusted keys).
#[derive(Debug, Clone)]
pub struct Witness {
    /// The witness's own key.
    pub cosigner: Cosigner,
    /// Each witnessed origin and the log keys trusted for it.
    pub logs: BTreeMap<String, Vec<Verifier>>,
}

impl Witness {
    /// Decides a request given what was cosigned last for its origin
    /// (`latest`; `None` if nothing yet). On success returns the origin, the
    /// new state to persist (before answering) and the cosignature line to
    /// answer with, cosigned at `now` (Unix seconds). Checks follow the
    /// spec's order: checkpoint format, origin, signature, old size,
    /// consistency.
    pub fn check(
        &self,
        req: &AddCheckpoint,
        latest: impl FnOnce(&str) -> Option<Cosigned>,
        now: u64,
    ) -> Result<(String, Cosigned, String), Refusal> {
        let text = note::text_unverified(&req.checkpoint)
            .map_err(|e| Refusal::BadRequest(format!("checkpoint note: {e}")))?;
        let cp =
            Checkpoint::parse(text).map_err(|e| Refusal::BadRequest(format!("checkpoint: {e}")))?;
        let keys = self
            .logs
            .get(&cp.origin)
            .ok_or_else(|| Refusal::UnknownLog(cp.origin.clone()))?;
        let signed = keys.iter().any(|k| match note::open(&req.checkpoint, k) {
            Ok(_) => true,
            Err(NoteError::UnknownKey { .. }) => false,
            Err(_) => false,
        });
        if !signed {
            return Err(Refusal::Forbidden);
        }
        if req.old_size > cp.size {
            return Err(bad("the old size is larger than the checkpoint's"));
        }
        if cp.size == 0 && cp.root != empty_root() {
            return Err(Refusal::Inconsistent { latest: 0 });
        }
        let last = latest(&cp.origin).unwrap_or(Cosigned {
            size: 0,
            root: empty_root(),
        });
        if req.old_size != last.size {
            return Err(Refusal::Conflict {
                old: req.old_size,
                latest: last.size,
            });
        }
        if req.old_size == 0 && !req.proof.is_empty() {
            return Err(bad("a proof from size 0 must be empty"));
        }
        if req.old_size == cp.size {
            if cp.root != last.root {
                return Err(Refusal::SameSizeOtherRoot);
            }
        } else if req.old_size > 0 {
            verify_consistency(req.old_size, cp.size, &last.root, &cp.root, &req.proof)
                .map_err(|_| Refusal::Inconsistent { latest: last.size })?;
        }
        let line = self.cosigner.cosign(text, now);
        Ok((
            cp.origin,
            Cosigned {
                size: cp.size,
                root: cp.root,
            },
            line,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};
    use crate::note::Signer;

    fn tree(leaves: &[&str]) -> Tree {
        let mut t = Tree::new();
        for l in leaves {
            t.push(leaf_hash(l.as_bytes()));
        }
        t
    }

    fn signed(signer: &Signer, t: &Tree) -> String {
        Checkpoint::new(signer.name(), t.size(), t.root())
            .sign(signer)
            .unwrap()
    }

    /// The cosignature example of C2SP tlog-cosignature: the line's layout
    /// is key id, then the big-endian timestamp of the example's signed
    /// message (`time 1679315147`), then 64 signature bytes.
    #[test]
    fn spec_example_cosignature_layout() {
        let b64 = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
        let raw = STANDARD.decode(b64).unwrap();
        assert_eq!(raw.len(), 4 + 8 + 64);
        assert_eq!(
            u64::from_be_bytes(raw[4..12].try_into().unwrap()),
            1679315147
        );
        assert_eq!(
            cosigned_message("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", 1679315147),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    /// The request example of C2SP tlog-witness parses and re-encodes.
    #[test]
    fn spec_example_request_round_trips() {
        let body = "old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\njrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
        let r = AddCheckpoint::parse(body.as_bytes()).unwrap();
        assert_eq!((r.old_size, r.proof.len()), (20852014, 4));
        assert!(r
            .checkpoint
            .starts_with("example.com/behind-the-sofa\n20852163\n"));
        assert_eq!(r.to_body(), body);
    }

    #[test]
    fn malformed_requests_are_400() {
        let cp = "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} o AAAA\n";
        for body in [
            String::new(),
            format!("old 1\n{cp}"),
            format!("old 01\n\n{cp}"),
            format!("old -1\n\n{cp}"),
            format!("new 1\n\n{cp}"),
            format!("old 1\nnot-base64\n\n{cp}"),
            format!("old 1\nAAAA\n\n{cp}"),
            format!(
                "old 1\n{}\n{cp}",
                "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n".repeat(64)
            ),
        ] {
            let r = AddCheckpoint::parse(body.as_bytes());
            assert!(matches!(r, Err(Refusal::BadRequest(_))), "{body:?}: {r:?}");
        }
        assert!(AddCheckpoint::parse(&[0xff, 0xfe]).is_err());
        assert!(AddCheckpoint::parse(&vec![b'a'; MAX_REQUEST_BYTES + 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn hostile_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = AddCheckpoint::parse(&body);
        }

        #[test]
        fn hostile_cosignature_lines_never_verify(line in "\\PC{0,120}") {
            let c = Cosigner::from_seed("w", [1; 32]);
            let note = format!("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} w {line}\n");
            proptest::prop_assert_eq!(c.verifier().verify(&note), None);
        }
    }

    /// A witness is one Ed25519 key: given twice, or under a second name
    /// (a cosignature line can be relabelled, since the signed message
    /// does not hold the name), it still counts once.
    #[test]
    fn a_witness_counts_once_however_often_its_key_is_given() {
        let w1 = Cosigner::from_seed("w1", [7; 32]);
        let alias = Cosigner::from_seed("w1-again", [7; 32]);
        let log = Signer::generate("log").unwrap();
        let note = signed(&log, &tree(&["a"]));
        let body = note::text_unverified(&note).unwrap();
        let line = w1.cosign(body, 1_700_000_000);
        let raw = STANDARD
            .decode(line.trim().rsplit_once(' ').unwrap().1)
            .unwrap();
        let mut relabelled = alias.verifier().key_id.to_be_bytes().to_vec();
        relabelled.extend_from_slice(&raw[4..]);
        let with = add_signatures(
            &note,
            &format!(
                "{line}{SIG_PREFIX}w1-again {}\n",
                STANDARD.encode(relabelled)
            ),
        );
        assert_eq!(alias.verifier().verify(&with), Some(1_700_000_000));
        let keys = [w1.verifier(), w1.verifier(), alias.verifier()];
        let by = cosigned_by(&with, &keys);
        assert_eq!(by.len(), 1, "{by:?}");
        assert_eq!(by[0].0.name(), "w1");
        // The first key that verifies is the one named, whatever its place.
        let keys = [alias.verifier(), w1.verifier()];
        assert_eq!(cosigned_by(&add_signatures(&note, &line), &keys).len(), 1);
    }

    #[test]
    fn keys_round_trip_and_verify() {
        let c = Cosigner::generate("witness.example/w1").unwrap();
        let back: Cosigner = c.to_string().parse().unwrap();
        assert_eq!(back.verifier(), c.verifier());
        let vk: CosignerKey = c.verifier().to_string().parse().unwrap();
        assert_eq!(vk, c.verifier());
        // A log key (0x01) is not a cosigner key.
        let log = Signer::generate("log").unwrap();
        assert!(log.verifier().to_string().parse::<CosignerKey>().is_err());
        let note = signed(&log, &tree(&["a"]));
        let body = note::text_unverified(&note).unwrap();
        let with = add_signatures(&note, &c.cosign(body, 1_700_000_000));
        assert_eq!(vk.verify(&with), Some(1_700_000_000));
        assert_eq!(vk.verify(&note), None);
        // Another checkpoint's cosignature does not carry over.
        let other = signed(&log, &tree(&["a", "b"]));
        let moved = add_signatures(&other, with.lines().last().unwrap());
        assert_eq!(vk.verify(&moved), None);
        // Nor does a changed timestamp.
        let line = with.lines().last().unwrap();
        let (name, b64) = line.trim_start_matches(SIG_PREFIX).split_once(' ').unwrap();
        let mut raw = STANDARD.decode(b64).unwrap();
        raw[11] ^= 1;
        let forged = add_signatures(
            &note,
            &format!("{SIG_PREFIX}{name} {}\n", STANDARD.encode(raw)),
        );
        assert_eq!(vk.verify(&forged), None);
    }

    #[test]
    fn a_witness_cosigns_growth_and_refuses_a_fork() {
        let log = Signer::generate("example.com/log").unwrap();
        let mut logs = BTreeMap::new();
        logs.insert("example.com/log".to_string(), vec![log.verifier()]);
        let w = Witness {
            cosigner: Cosigner::generate("witness.example/w1").unwrap(),
            logs,
        };
        let mut state: Option<Cosigned> = None;
        let honest = tree(&["a", "b", "c"]);
        let req = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: signed(&log, &honest),
        };
        let (_, st, line) = w.check(&req, |_| state, 100).unwrap();
        assert!(w
            .cosigner
            .verifier()
            .verify(&add_signatures(&req.checkpoint, &line))
            .is_some());
        state = Some(st);
        // Growth with a proof: cosigned.
        let grown = tree(&["a", "b", "c", "d", "e"]);
        let req = AddCheckpoint {
            old_size: 3,
            proof: grown.consistency_proof(3, 5).unwrap(),
            checkpoint: signed(&log, &grown),
        };
        state = Some(w.check(&req, |_| state, 101).unwrap().1);
        // A stale old size: 409 naming the latest size.
        let req = AddCheckpoint {
            old_size: 3,
            proof: vec![],
            checkpoint: signed(&log, &grown),
        };
        assert_eq!(
            w.check(&req, |_| state, 102).unwrap_err(),
            Refusal::Conflict { old: 3, latest: 5 }
        );
        // A fork: same key, history rewritten from entry 2 on. Its own
        // proof is internally valid but does not lead from what was cosigned.
        let fork = tree(&["a", "b", "X", "d", "e", "f"]);
        let req = AddCheckpoint {
            old_size: 5,
            proof: fork.consistency_proof(5, 6).unwrap(),
            checkpoint: signed(&log, &fork),
        };
        let err = w.check(&req, |_| state, 103).unwrap_err();
        assert_eq!(
            (err.status(), err.clone()),
            (422, Refusal::Inconsistent { latest: 5 })
        );
        // The fork at the same size: refused too.
        let fork5 = tree(&["a", "b", "X", "d", "e"]);
        let req = AddCheckpoint {
            old_size: 5,
            proof: vec![],
            checkpoint: signed(&log, &fork5),
        };
        assert_eq!(
            w.check(&req, |_| state, 104).unwrap_err(),
            Refusal::SameSizeOtherRoot
        );
        // Unknown origin, unknown key.
        let stranger = Signer::generate("other.example/log").unwrap();
        let req = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: signed(&stranger, &honest),
        };
        assert_eq!(w.check(&req, |_| None, 105).unwrap_err().status(), 404);
        let impostor = Signer::generate("example.com/log").unwrap();
        let req = AddCheckpoint {
            old_size: 5,
            proof: vec![],
            checkpoint: signed(&impostor, &grown),
        };
        assert_eq!(
            w.check(&req, |_| state, 106).unwrap_err(),
            Refusal::Forbidden
        );
    }
}
