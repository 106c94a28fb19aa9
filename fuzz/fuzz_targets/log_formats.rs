//! Everything an auditor's verifier reads from untrusted files or the
//! network: entry bytes, entry bundles, tile paths, checkpoints and signed
//! notes. None may panic; what decodes must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_log::{checkpoint::Checkpoint, entry::Entry, note, tiles};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::from_bytes(data) {
        assert_eq!(e.to_bytes().expect("a decoded entry encodes"), data);
    }
    if let Ok(items) = tiles::decode_bundle(data) {
        assert_eq!(tiles::encode_bundle(&items).expect("re-encodes"), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = tiles::parse_tile_path(text) {
            let p = r.path();
            assert_eq!(tiles::parse_tile_path(&p).ok(), Some(r));
        }
        if let Ok(c) = Checkpoint::parse(text) {
            assert_eq!(Checkpoint::parse(&c.to_body()).ok(), Some(c));
        }
        let _ = note::text_unverified(text);
        let _ = text.parse::<note::Verifier>();
    }
});
