//! The SSE framer: whatever the chunking, the bytes out are the bytes in.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::proxy::sse::Framer;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = (cut as usize).min(rest.len());
    let mut framer = Framer::new();
    let mut out = Vec::new();
    for piece in [&rest[..at], &rest[at..]] {
        if let Some(b) = framer.push(Bytes::copy_from_slice(piece)) {
            out.extend_from_slice(&b);
        }
    }
    out.extend_from_slice(&framer.finish());
    assert_eq!(out, rest);
});
