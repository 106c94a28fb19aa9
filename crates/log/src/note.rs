//! C2SP `signed-note` with Ed25519 signatures (signature type `0x01`).
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one or more
//! signature lines `— <key name> <base64(key id || signature)>`. The key
//! strings use the format of Go's `golang.org/x/mod/sumdb/note`, so keys and
//! notes interoperate with the Go ecosystem's tlog tools:
//!
//! - verifier key: `<name>+<8 hex key id>+<base64(0x01 || public key)>`
//! - signer key: `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The signature type byte C2SP assigns to Ed25519.
pub const ALG_ED25519: u8 = 0x01;

/// Notes larger than this are rejected before any parsing, so a hostile
/// server cannot make a verifier chew on unbounded input. It leaves room for
/// the 16 large (post-quantum sized) signatures the spec asks verifiers to
/// accept.
pub const MAX_NOTE_SIZE: usize = 256 * 1024;

/// Notes with more signature lines than this are rejected.
pub const MAX_SIGNATURES: usize = 100;

/// The prefix of every signature line: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// What went wrong with a key or a signed note.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// A key name is empty or contains a space or a `+`.
    #[error("key name {0:?} is invalid: it must be non-empty and contain no spaces and no '+'")]
    InvalidKeyName(String),
    /// A signer key string could not be parsed.
    #[error("signer key is malformed ({0}); expected PRIVATE+KEY+<name>+<8 hex key id>+<base64 key>, as printed by `secondkey keys generate`")]
    MalformedSignerKey(&'static str),
    /// A verifier key string could not be parsed.
    #[error("verifier key is malformed ({0}); expected <name>+<8 hex key id>+<base64 key>")]
    MalformedVerifierKey(&'static str),
    /// The system random number generator failed.
    #[error("could not get randomness from the operating system to generate a key: {0}")]
    Random(String),
    /// The text to sign does not end in a newline.
    #[error("note text must end with a newline")]
    TextNotNewlineTerminated,
    /// The note contains a control character other than newline.
    #[error("note contains a control character (only newline is allowed)")]
    ControlCharacter,
    /// The note exceeds [`MAX_NOTE_SIZE`].
    #[error("note is {size} bytes, more than the {max} bytes accepted")]
    TooLarge {
        /// Size of the note offered.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The note has no signature block.
    #[error("note carries no signature: expected the text, a blank line, then signature lines")]
    MissingSignature,
    /// The note does not follow the signed-note grammar.
    #[error("note is malformed: {0}")]
    Malformed(&'static str),
    /// No signature line was made by the trusted key.
    #[error("note is not signed by the trusted key {name} (key id {key_id:08x}); check that you have the log's verifier key")]
    UnknownKey {
        /// Name of the trusted key.
        name: String,
        /// Key id of the trusted key.
        key_id: u32,
    },
    /// A signature line claims the trusted key but does not verify.
    #[error(
        "signature by {name} (key id {key_id:08x}) does not verify: the note was altered or forged"
    )]
    BadSignature {
        /// Name of the trusted key.
        name: String,
        /// Key id of the trusted key.
        key_id: u32,
    },
}

/// Key names must be non-empty, with no Unicode spaces and no `+`.
fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

/// The C2SP key id of an Ed25519 key:
/// the first 4 bytes (big-endian) of `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The parts of a key string: `<name>+<8 hex id>+<base64(type || 32 bytes)>`,
/// with `PRIVATE+KEY+` in front for a secret key. Shared by log keys (type
/// 0x01) and witness cosigner keys (type 0x04).
pub(crate) struct KeyString {
    pub name: String,
    pub id: u32,
    pub key: [u8; 32],
}

/// What is wrong with a key string.
pub(crate) enum KeyStringError {
    Name(String),
    Malformed(&'static str),
}

impl KeyStringError {
    fn into_note(self, malformed: fn(&'static str) -> NoteError) -> NoteError {
        match self {
            KeyStringError::Name(n) => NoteError::InvalidKeyName(n),
            KeyStringError::Malformed(m) => malformed(m),
        }
    }
}

/// Splits and decodes a key string whose type byte must be `alg`
/// (`wrong_type` says otherwise). The caller checks the key id, which
/// depends on the key's type.
pub(crate) fn decode_key_string(
    s: &str,
    private: bool,
    alg: u8,
    wrong_type: &'static str,
) -> Result<KeyString, KeyStringError> {
    let mut s = s.trim();
    if private {
        s = s
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(KeyStringError::Malformed("missing PRIVATE+KEY prefix"))?;
    }
    // The base64 key may itself contain '+', so split at most twice.
    let parts: Vec<&str> = s.splitn(3, '+').collect();
    let [name, id, b64] = parts.as_slice() else {
        return Err(KeyStringError::Malformed(
            "wrong number of '+'-separated fields",
        ));
    };
    check_name(name).map_err(|_| KeyStringError::Name((*name).to_string()))?;
    let id = parse_key_id(id).ok_or(KeyStringError::Malformed("key id is not 8 hex digits"))?;
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| KeyStringError::Malformed("key is not valid base64"))?;
    let (t, key) = raw
        .split_first()
        .ok_or(KeyStringError::Malformed("key is empty"))?;
    if *t != alg {
        return Err(KeyStringError::Malformed(wrong_type));
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| KeyStringError::Malformed("Ed25519 key is not 32 bytes"))?;
    Ok(KeyString {
        name: (*name).to_string(),
        id,
        key,
    })
}

fn parse_key_id(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// An Ed25519 signing key with its C2SP name, used by the log to sign
/// checkpoints.
///
/// The secret leaves this value only through [`Signer::to_string`]; `Debug`
/// shows the name and key id, never the key.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl Signer {
    /// Generates a fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| NoteError::Random(e.to_string()))?;
        Ok(Self::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(name, key.verifying_key().as_bytes());
        Signer {
            name: name.to_owned(),
            key_id,
            key,
        }
    }

    /// The key name that appears on signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching public verifier, safe to publish.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The secret key string `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>`.
    ///
    /// This is deliberately an inherent method and not `Display`, so the
    /// secret cannot leak through a `{}` in a log line: writing it out is
    /// always an explicit call.
    #[allow(clippy::inherent_to_string)]
    pub fn to_string(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(raw)
        )
    }

    /// Signs `text` (which must end in a newline) and returns the signed note:
    /// `text + "\n" + "— <name> <base64(key id || signature)>\n"`.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::TextNotNewlineTerminated);
        }
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        let note = format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(raw)
        );
        if note.len() > MAX_NOTE_SIZE {
            return Err(NoteError::TooLarge {
                size: note.len(),
                max: MAX_NOTE_SIZE,
            });
        }
        Ok(note)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl FromStr for Signer {
    type Err = NoteError;

    /// Parses `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let k = decode_key_string(s, true, ALG_ED25519, "key is not an Ed25519 (0x01) key")
            .map_err(|e| e.into_note(NoteError::MalformedSignerKey))?;
        let (name, id, seed) = (k.name.as_str(), k.id, k.key);
        let signer = Signer::from_seed(name, seed);
        if signer.key_id != id {
            return Err(NoteError::MalformedSignerKey(
                "key id does not match the name and key",
            ));
        }
        Ok(signer)
    }
}

/// An Ed25519 public key with its C2SP name: what an auditor needs, out of
/// band, to trust a log's checkpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// The key name expected on signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Verifier").field(&self.to_string()).finish()
    }
}

impl fmt::Display for Verifier {
    /// `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
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

impl FromStr for Verifier {
    type Err = NoteError;

    /// Parses `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let k = decode_key_string(s, false, ALG_ED25519, "key is not an Ed25519 (0x01) key")
            .map_err(|e| e.into_note(NoteError::MalformedVerifierKey))?;
        let (name, id, pk) = (k.name.as_str(), k.id, k.key);
        let key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| NoteError::MalformedVerifierKey("not a valid Ed25519 public key"))?;
        if key_id(name, &pk) != id {
            return Err(NoteError::MalformedVerifierKey(
                "key id does not match the name and key",
            ));
        }
        Ok(Verifier {
            name: name.to_owned(),
            key_id: id,
            key,
        })
    }
}

fn check_text(s: &str) -> Result<(), NoteError> {
    if s.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

/// A signature line split into its parts, not yet verified.
struct SigLine<'a> {
    name: &'a str,
    key_id: u32,
    sig: Vec<u8>,
}

/// Splits a note into its text and parsed signature lines, checking the
/// grammar but no signature.
fn split(note: &str) -> Result<(&str, Vec<SigLine<'_>>), NoteError> {
    if note.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge {
            size: note.len(),
            max: MAX_NOTE_SIZE,
        });
    }
    check_text(note)?;
    if !note.ends_with('\n') {
        return Err(NoteError::Malformed("the note does not end with a newline"));
    }
    // The text is separated from the signatures by the last blank line.
    let split = note.rfind("\n\n").ok_or(NoteError::MissingSignature)?;
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    if sigs.is_empty() {
        return Err(NoteError::MissingSignature);
    }
    let mut lines = Vec::new();
    for line in sigs.strip_suffix('\n').unwrap_or(sigs).split('\n') {
        if lines.len() >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signature lines"));
        }
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "a signature line does not start with an em dash and a space",
        ))?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "a signature line has no space between name and signature",
        ))?;
        check_name(name)
            .map_err(|_| NoteError::Malformed("a signature line has an invalid key name"))?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("a signature is not valid base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        lines.push(SigLine {
            name,
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            sig: raw[4..].to_vec(),
        });
    }
    Ok((text, lines))
}

/// Checks the note's grammar and returns its text *without* verifying any
/// signature.
///
/// Only for a party that already trusts the note (the log that just signed
/// it, e.g. to build a receipt); everyone else must use [`open`].
pub fn text_unverified(note: &str) -> Result<&str, NoteError> {
    split(note).map(|(text, _)| text)
}

/// Verifies a signed note against one trusted key and returns its text.
///
/// Following the spec, signatures by other keys are ignored; the note is
/// rejected if it is malformed, oversized, carries no signature, carries no
/// signature by `verifier`, or carries a signature by `verifier` that does
/// not verify.
pub fn open(note: &str, verifier: &Verifier) -> Result<String, NoteError> {
    let (text, lines) = split(note)?;
    let mut verified = false;
    for line in lines {
        if line.name != verifier.name || line.key_id != verifier.key_id {
            continue;
        }
        let bad = || NoteError::BadSignature {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
        };
        let sig: [u8; 64] = line.sig.as_slice().try_into().map_err(|_| bad())?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| bad())?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::UnknownKey {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
        });
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> Signer {
        Signer::from_seed("example.com/log", [7u8; 32])
    }

    #[test]
    fn key_strings_round_trip() {
        let s = Signer::generate("secondkey.example/log").unwrap();
        let text = s.to_string();
        assert!(text.starts_with("PRIVATE+KEY+secondkey.example/log+"));
        let back: Signer = text.parse().unwrap();
        assert_eq!(back.to_string(), text);
        let v = s.verifier();
        let vtext = v.to_string();
        assert!(vtext.starts_with("secondkey.example/log+"));
        let vback: Verifier = vtext.parse().unwrap();
        assert_eq!(vback, v);
        assert_eq!(back.verifier(), v);
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let s = signer();
        let secret = s.to_string();
        let b64 = secret.rsplit('+').next().unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(b64), "{dbg}");
        assert!(dbg.contains("example.com/log"));
    }

    #[test]
    fn key_id_matches_spec_formula() {
        let s = signer();
        let pk = s.verifier().public_key();
        let mut data = b"example.com/log\n\x01".to_vec();
        data.extend_from_slice(&pk);
        let d = Sha256::digest(&data);
        assert_eq!(s.key_id(), u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
    }

    // Key pair and note from the Go golang.org/x/mod/sumdb/note documentation
    // example ("PeterNeumann"), an independent check of our formats.
    #[test]
    fn go_sumdb_note_example_verifies() {
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let signer: Signer = skey.parse().unwrap();
        assert_eq!(signer.verifier().to_string(), vkey);
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v: Verifier = vkey.parse().unwrap();
        let text = open(note, &v).unwrap();
        assert!(text.starts_with("If you think"));
        // Ed25519 is deterministic, so we reproduce the exact note.
        assert_eq!(signer.sign(&text).unwrap(), note);
    }

    #[test]
    fn sign_and_open() {
        let s = signer();
        let note = s.sign("hello\nworld\n").unwrap();
        assert!(note.starts_with("hello\nworld\n\n\u{2014} example.com/log "));
        assert_eq!(open(&note, &s.verifier()).unwrap(), "hello\nworld\n");
    }

    #[test]
    fn sign_rejects_bad_text() {
        let s = signer();
        assert_eq!(
            s.sign("no newline"),
            Err(NoteError::TextNotNewlineTerminated)
        );
        assert_eq!(s.sign("tab\there\n"), Err(NoteError::ControlCharacter));
    }

    #[test]
    fn open_rejections() {
        let s = signer();
        let v = s.verifier();
        let note = s.sign("hello\n").unwrap();
        assert_eq!(open("hello\n", &v), Err(NoteError::MissingSignature));
        assert_eq!(open("hello\n\n", &v), Err(NoteError::MissingSignature));
        let other = Signer::from_seed("example.com/log", [8u8; 32]);
        let forged = other.sign("hello\n").unwrap();
        assert!(matches!(
            open(&forged, &v),
            Err(NoteError::UnknownKey { .. })
        ));
        let altered = note.replacen("hello", "hellp", 1);
        assert!(matches!(
            open(&altered, &v),
            Err(NoteError::BadSignature { .. })
        ));
        assert!(matches!(
            open(&note.replace('\u{2014}', "-"), &v),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            open(note.trim_end(), &v),
            Err(NoteError::Malformed(_))
        ));
        let big = format!("{}\n", "a".repeat(MAX_NOTE_SIZE));
        assert!(matches!(open(&big, &v), Err(NoteError::TooLarge { .. })));
        assert!(matches!(s.sign(&big), Err(NoteError::TooLarge { .. })));
        assert_eq!(open("hi\r\n\n", &v), Err(NoteError::ControlCharacter));
        // Unknown extra signatures are ignored; a second valid one is fine.
        let two = format!("{note}{}", forged.lines().last().unwrap()) + "\n";
        assert_eq!(open(&two, &v).unwrap(), "hello\n");
        // A truncated signature by the known key fails.
        let line = note.lines().last().unwrap();
        let b64 = line.rsplit(' ').next().unwrap();
        let mut raw = STANDARD.decode(b64).unwrap();
        raw.truncate(20);
        let short = format!(
            "hello\n\n\u{2014} example.com/log {}\n",
            STANDARD.encode(raw)
        );
        assert!(matches!(
            open(&short, &v),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_parsing_rejections() {
        assert!("".parse::<Verifier>().is_err());
        assert!("a+b".parse::<Verifier>().is_err());
        let v = signer().verifier().to_string();
        let (name, rest) = v.split_once('+').unwrap();
        let wrong_id = format!("{name}+00000000{}", &rest[8..]);
        assert!(wrong_id.parse::<Verifier>().is_err());
        let renamed = v.replacen("example.com/log", "example.com/other", 1);
        assert!(matches!(
            renamed.parse::<Verifier>(),
            Err(NoteError::MalformedVerifierKey(_))
        ));
        let s = signer().to_string();
        let renamed = s.replacen("example.com/log", "example.com/other", 1);
        assert!(renamed.parse::<Signer>().is_err());
        assert!(Signer::generate("has space").is_err());
        assert!(Signer::generate("has+plus").is_err());
        assert!(Signer::generate("").is_err());
    }

    proptest! {
        #[test]
        fn open_never_panics(s in "\\PC*") {
            let _ = open(&s, &signer().verifier());
        }

        #[test]
        fn any_valid_text_round_trips(lines in proptest::collection::vec("[^\\n\\p{Cc}]{0,40}", 1..6)) {
            let text = lines.join("\n") + "\n";
            let s = signer();
            let note = s.sign(&text).unwrap();
            prop_assert_eq!(open(&note, &s.verifier()).unwrap(), text);
        }
    }
}
