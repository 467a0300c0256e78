//! The argument normaliser on arbitrary bytes: never panics, and what it
//! accepts normalises stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::kernel::normalize::{Limits, normalize_text, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(args) = parse(text, &Limits::default()) {
            for s in &args.strings {
                assert_eq!(normalize_text(&s.text), s.text);
            }
        }
    }
});
