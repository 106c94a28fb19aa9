//! SFTP packets arrive from agents: framing and decoding never panic, and a
//! packet taken off the buffer is exactly its declared length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_ssh::sftp;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let before = buf.len();
    if let Ok(Some(p)) = sftp::take_packet(&mut buf) {
        assert_eq!(before, buf.len() + 4 + p.len());
        let _ = sftp::decided_op(&p);
    }
    let _ = sftp::decided_op(data);
});
