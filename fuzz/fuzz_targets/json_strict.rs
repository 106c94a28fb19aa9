//! The strict JSON parser (actions, MCP messages) reads exactly what
//! serde_json reads, and refuses only repeated keys on top.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = secondkey_core::action::parse_json_strict(data);
    let loose = serde_json::from_slice::<serde_json::Value>(data);
    match (&strict, &loose) {
        (Ok(s), Ok(l)) => assert_eq!(s, l),
        (Ok(_), Err(e)) => panic!("strict accepted what serde_json refuses: {e}"),
        (Err(e), Ok(_)) => assert!(
            e.to_string().contains("appears twice in one object"),
            "strict refused valid JSON: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
});
