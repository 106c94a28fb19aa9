//! SSH exec commands arrive as bytes from agents: reading and classifying
//! them must never panic, and a command line followed by a privileged one
//! on a new line is never classified below it, whatever came first
//! (comments and here-documents included) — unless a trailing backslash
//! joins the lines or the line is the delimiter of a here-document.
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_ssh::classify::{Class, Classifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = Classifier::new(vec![]);
    let a = c.classify_str(text);
    if !a.unknown.is_empty() {
        assert_eq!(a.class, Class::Admin);
    }
    // The next line is a command to the shell unless a trailing backslash
    // joins it, or it is the delimiter of a here-document (which must then
    // spell it out).
    if !text.ends_with('\\') && !text.contains("reboot") {
        let smuggled = format!("{text}\nsudo reboot");
        let b = c.classify_str(&smuggled);
        assert!(
            b.class == Class::Admin,
            "{smuggled:?} classified {:?}",
            b.class
        );
    }
});
