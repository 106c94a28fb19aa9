//! C2SP `tlog-checkpoint`: the signed statement "this log, at this size, has
//! this root".
//!
//! The note text is `<origin>\n<size>\n<base64 root>\n` followed by optional
//! non-empty extension lines.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use thiserror::Error;

use crate::merkle::Hash;
use crate::note::{self, NoteError, Signer, Verifier};

/// What went wrong with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The signed note around the checkpoint is invalid or not trusted.
    #[error("checkpoint signature: {0}")]
    Note(#[from] NoteError),
    /// The note text is not a well-formed checkpoint body.
    #[error("checkpoint body is malformed: {0}")]
    Malformed(&'static str),
}

/// A transparency log checkpoint (tree head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `secondkey.example/log`.
    pub origin: String,
    /// The number of entries in the tree.
    pub size: u64,
    /// The RFC 6962 root hash of the tree at `size`.
    pub root: Hash,
    /// Optional opaque extension lines (not recommended by the spec).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Checkpoint {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), CheckpointError> {
        if self.origin.is_empty() {
            return Err(CheckpointError::Malformed("the origin is empty"));
        }
        if self.origin.contains('\n') {
            return Err(CheckpointError::Malformed("the origin contains a newline"));
        }
        for ext in &self.extensions {
            if ext.is_empty() || ext.contains('\n') {
                return Err(CheckpointError::Malformed(
                    "an extension line is empty or contains a newline",
                ));
            }
        }
        Ok(())
    }

    /// The note text: `<origin>\n<size>\n<base64 root>\n` plus extension lines.
    pub fn to_body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for ext in &self.extensions {
            s.push_str(ext);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body (the note text, signatures removed).
    pub fn parse(body: &str) -> Result<Checkpoint, CheckpointError> {
        let Some(body) = body.strip_suffix('\n') else {
            return Err(CheckpointError::Malformed(
                "the body does not end with a newline",
            ));
        };
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(CheckpointError::Malformed("the origin line is empty"));
        }
        let size_line = lines
            .next()
            .ok_or(CheckpointError::Malformed("the tree size line is missing"))?;
        let canonical_number = !size_line.is_empty()
            && size_line.bytes().all(|b| b.is_ascii_digit())
            && (size_line == "0" || !size_line.starts_with('0'));
        if !canonical_number {
            return Err(CheckpointError::Malformed(
                "the tree size is not a decimal number without leading zeros",
            ));
        }
        let size = size_line
            .parse::<u64>()
            .map_err(|_| CheckpointError::Malformed("the tree size does not fit in 64 bits"))?;
        let root_line = lines
            .next()
            .ok_or(CheckpointError::Malformed("the root hash line is missing"))?;
        let root: Hash = STANDARD
            .decode(root_line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CheckpointError::Malformed(
                "the root hash is not 32 bytes of base64",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        let cp = Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        };
        cp.validate()?;
        Ok(cp)
    }

    /// Signs the checkpoint and returns the signed note.
    pub fn sign(&self, signer: &Signer) -> Result<String, CheckpointError> {
        self.validate()?;
        Ok(signer.sign(&self.to_body())?)
    }

    /// Verifies a signed checkpoint note with the log's key and parses it.
    pub fn open(signed_note: &str, verifier: &Verifier) -> Result<Checkpoint, CheckpointError> {
        let text = note::open(signed_note, verifier)?;
        Checkpoint::parse(&text)
    }

    /// Parses a signed checkpoint note *without* checking its signature.
    ///
    /// Only for the log itself (which just signed it), e.g. to build
    /// receipts or exports; auditors use [`Checkpoint::open`].
    pub fn parse_note_unverified(signed_note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse(note::text_unverified(signed_note)?)
    }
}

/// A checkpoint together with the exact signed note it came from.
///
/// Keeping the note text matters: it is what is published and what auditors
/// verify, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed checkpoint.
    pub checkpoint: Checkpoint,
    /// The signed note text.
    pub note: String,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with the log key.
    pub fn sign(checkpoint: Checkpoint, signer: &Signer) -> Result<Self, CheckpointError> {
        let note = checkpoint.sign(signer)?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Verifies and parses a signed checkpoint note.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Self, CheckpointError> {
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint::open(note, verifier)?,
            note: note.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::empty_root;
    use proptest::prelude::*;

    #[test]
    fn spec_example_body_parses() {
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let cp = Checkpoint::parse(body).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert_eq!(cp.to_body(), body);
    }

    #[test]
    fn sign_open_round_trip_with_extensions() {
        let signer = Signer::generate("example.com/log").unwrap();
        let mut cp = Checkpoint::new("example.com/log", 0, empty_root());
        cp.extensions.push("ext one".into());
        let note = cp.sign(&signer).unwrap();
        assert_eq!(Checkpoint::open(&note, &signer.verifier()).unwrap(), cp);
        let sc = SignedCheckpoint::open(&note, &signer.verifier()).unwrap();
        assert_eq!(sc.note, note);
        assert_eq!(Checkpoint::parse_note_unverified(&note).unwrap(), cp);
        let other = Signer::generate("example.com/log").unwrap();
        assert!(matches!(
            Checkpoint::open(&note, &other.verifier()),
            Err(CheckpointError::Note(NoteError::UnknownKey { .. }))
        ));
    }

    #[test]
    fn malformed_bodies() {
        let root = STANDARD.encode([0u8; 32]);
        for body in [
            String::new(),
            "\n0\nAA==\n".to_string(),
            format!("o\n01\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n1\n{root}"),
            "o\n1\nAAAA\n".to_string(),
            "o\n1\n".to_string(),
            format!("o\n1\n{root}\n\n"),
            format!("o\n99999999999999999999\n{root}\n"),
        ] {
            assert!(Checkpoint::parse(&body).is_err(), "{body:?}");
        }
        let signer = Signer::generate("k").unwrap();
        assert!(Checkpoint::new("", 1, [0; 32]).sign(&signer).is_err());
        assert!(Checkpoint::new("a\nb", 1, [0; 32]).sign(&signer).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Checkpoint::parse(&s);
        }

        #[test]
        fn body_round_trips(origin in "[a-z./]{1,20}", size in any::<u64>(), root in any::<[u8; 32]>()) {
            let cp = Checkpoint::new(origin, size, root);
            prop_assert_eq!(Checkpoint::parse(&cp.to_body()).unwrap(), cp);
        }
    }
}
