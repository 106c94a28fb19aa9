//! Grants are presented by clients: a token that is not one we signed must
//! be refused, never panic, never verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_core::grant::verify_grant;
use secondkey_core::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(verify_grant(token, &key, Timestamp(0)).is_err(), "a forged token verified");
    }
});
