//! The HushSpec parser and validator on arbitrary text: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::kernel::policy::Policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::from_text(text, "fuzz");
    }
});
