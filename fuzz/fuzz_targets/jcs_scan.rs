//! The one-pass canonical check (log verification) agrees with encoding:
//! bytes it calls canonical are the RFC 8785 form of what they parse to,
//! bytes it calls not canonical are not; and the fast writer agrees with
//! serde_jcs on every value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secondkey_jcs::Scan;

fuzz_target!(|data: &[u8]| {
    let parsed = secondkey_core::action::parse_json_strict(data).ok();
    let canonical = parsed.as_ref().and_then(|v| secondkey_jcs::to_vec(v).ok());
    let is_canonical = canonical.as_deref() == Some(data);
    match secondkey_jcs::scan(data) {
        Scan::Canonical => assert!(is_canonical, "scan says canonical: {:?}", String::from_utf8_lossy(data)),
        Scan::NotCanonical => assert!(!is_canonical, "scan says not canonical: {:?}", String::from_utf8_lossy(data)),
        Scan::Undecided => {}
    }
    if let Some(v) = &parsed {
        let mut fast = Vec::new();
        if secondkey_jcs::write_value(v, &mut fast).is_some() {
            if let Ok(reference) = serde_jcs::to_vec(v) {
                assert_eq!(fast, reference, "{v}");
            }
        }
    }
});
