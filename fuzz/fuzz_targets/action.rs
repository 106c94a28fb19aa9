//! Actions arrive as bytes from the network: parsing must never panic, and
//! whatever parses must digest stably (same bytes → same digest, and the
//! canonical re-encoding parses to the same digest).
#![no_main]
use libfuzzer_sys::fuzz_target;
use secondkey_core::action::Action;

fuzz_target!(|data: &[u8]| {
    if let Ok((raw, action, digest)) = Action::from_slice(data) {
        let (_, again) = Action::from_json(&raw).expect("a parsed action re-validates");
        assert_eq!(digest.as_str(), again.as_str());
        let _ = action.cedar_action_id();
    }
});
