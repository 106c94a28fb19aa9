//! SSH exec commands arrive as bytes from agents: reading and classifying
//! them must never panic, and a command line followed by a privileged one
//! on a new line is never classified below it, whatever came first — unless
//! the first part continues onto that line (a trailing backslash, an open
//! quote or here-document), which the reader then reports as opaque or
//! reads as the shell would.
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_ssh::classify::{Class, Classifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = Classifier::new(vec![]);
    let a = c.classify_str(text);
    if !a.unknown.is_empty() {
        assert_eq!(a.class, Class::Admin);
    }
    if !text.ends_with('\\') && !text.contains('#') && !text.contains("<<") {
        let smuggled = format!("{text}\nsudo reboot");
        let b = c.classify_str(&smuggled);
        assert!(
            b.class == Class::Admin,
            "{smuggled:?} classified {:?}",
            b.class
        );
    }
});
