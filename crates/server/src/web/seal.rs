//! Sealed values: state the gateway hands a browser to keep, which only the
//! gateway can read or change (today: a sign-in in progress, see
//! [`super::oidc::LoginState`]).
//!
//! A value is sealed with AES-256-GCM under a key of its own, derived from
//! the session key with HMAC-SHA256 over a domain-separated input
//! (`"seal"`, the label, a fresh random salt). The label is also the
//! associated data, so a value sealed for one purpose never opens as
//! another, and no key is ever shared with session signing (`"session"`)
//! or CSRF tokens (`"csrf"`). One key seals exactly one value, so the nonce
//! need not vary and random nonces can never collide.
//!
//! Layout, base64url without padding: `salt (16) ‖ ciphertext ‖ tag (16)`.
//! Anything that does not open — another key, another label, one byte
//! changed, cut short, too long, not base64 — is simply nothing.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const SALT: usize = 16;
const TAG: usize = 16;

/// Longest sealed value [`open`] reads: a cookie's worth (browsers keep
/// 4096 bytes per cookie, name included).
pub const MAX_SEALED: usize = 4000;

/// Why a value could not be sealed (the system's randomness failed, or the
/// value is too large to fit a cookie).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("cannot seal: {0}")]
pub struct SealError(String);

fn key_for(key: &[u8; 32], label: &str, salt: &[u8]) -> Option<LessSafeKey> {
    let k = super::session::mac(key, &[b"seal", label.as_bytes(), salt]);
    UnboundKey::new(&AES_256_GCM, &k).ok().map(LessSafeKey::new)
}

/// Seals `plaintext` under `key` for `label`.
pub fn seal(key: &[u8; 32], label: &str, plaintext: &[u8]) -> Result<String, SealError> {
    let mut salt = [0u8; SALT];
    getrandom::getrandom(&mut salt).map_err(|e| SealError(e.to_string()))?;
    let k = key_for(key, label, &salt).ok_or_else(|| SealError("no key".into()))?;
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(label.as_bytes()),
        &mut buf,
    )
    .map_err(|_| SealError("the value is too large".into()))?;
    let mut out = salt.to_vec();
    out.extend_from_slice(&buf);
    let sealed = B64.encode(out);
    if sealed.len() > MAX_SEALED {
        return Err(SealError("the value is too large for a cookie".into()));
    }
    Ok(sealed)
}

/// The plaintext of a value [`seal`]ed under `key` for `label`, or nothing.
pub fn open(key: &[u8; 32], label: &str, sealed: &str) -> Option<Vec<u8>> {
    if sealed.len() > MAX_SEALED {
        return None;
    }
    let raw = B64.decode(sealed).ok()?;
    if raw.len() < SALT + TAG {
        return None;
    }
    let (salt, ct) = raw.split_at(SALT);
    let k = key_for(key, label, salt)?;
    let mut buf = ct.to_vec();
    let plain = k
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(label.as_bytes()),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip_and_nothing_else_opens() {
        let msg = br#"{"secret":"verifier"}"#;
        let s = seal(&KEY, "login", msg).unwrap();
        assert_eq!(open(&KEY, "login", &s).as_deref(), Some(&msg[..]));
        // Confidential: the plaintext is not in the value, and two seals
        // of the same plaintext differ.
        let raw = B64.decode(&s).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        assert_ne!(seal(&KEY, "login", msg).unwrap(), s);
        // Another key, another label.
        assert_eq!(open(&[8; 32], "login", &s), None);
        assert_eq!(open(&KEY, "session", &s), None);
        assert_eq!(open(&KEY, "login2", &s), None);
        // Empty plaintexts seal too.
        let e = seal(&KEY, "login", b"").unwrap();
        assert_eq!(open(&KEY, "login", &e).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let s = seal(&KEY, "login", b"state nonce verifier").unwrap();
        let raw = B64.decode(&s).unwrap();
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= bit;
                assert_eq!(open(&KEY, "login", &B64.encode(&bad)), None, "byte {i}");
            }
        }
    }

    #[test]
    fn truncated_extended_oversized_and_garbage_are_refused() {
        let s = seal(&KEY, "login", b"state nonce verifier").unwrap();
        let raw = B64.decode(&s).unwrap();
        for n in 0..raw.len() {
            assert_eq!(open(&KEY, "login", &B64.encode(&raw[..n])), None, "{n}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(open(&KEY, "login", &B64.encode(&longer)), None);
        for junk in ["", "=", "not base64!", &"A".repeat(MAX_SEALED + 1), &s[1..]] {
            assert_eq!(open(&KEY, "login", junk), None, "{junk:?}");
        }
        assert!(seal(&KEY, "login", &[0u8; MAX_SEALED]).is_err());
    }
}
