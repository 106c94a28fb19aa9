//! The classification cache must never answer for a statement with the
//! classification of a different one. Any text with a shape key is paired
//! with the same shape written with fixed literals ('x', 1, 1.5): when
//! either classifies as literal-independent (so the cache would share it),
//! both must classify the same — operation, tables, functions or error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secondkey_pg::cache::shape_key;
use secondkey_pg::classify::{classify, Classification, ClassifyError, Options};

/// The statement of `key` with each masked literal replaced by one fixed
/// value of its kind. Keys hold only ASCII besides the markers.
fn representative(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for &b in key {
        match b {
            0x01 => out.push_str("'x'"),
            0x02 => out.push('1'),
            0x03 => out.push_str("1.5"),
            _ => out.push(b as char),
        }
    }
    out
}

fn shared(c: &Result<Classification, ClassifyError>) -> bool {
    matches!(c, Ok(c) if c.literal_independent)
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let Some(key) = shape_key(sql) else {
        return;
    };
    let other = representative(&key);
    if shape_key(&other).as_deref() != Some(&key[..]) {
        return;
    }
    let opts = Options::default();
    let (a, b) = (classify(sql, &opts), classify(&other, &opts));
    if shared(&a) || shared(&b) {
        assert_eq!(a, b, "{sql:?} and {other:?} share a shape key but classify differently");
    }
});
