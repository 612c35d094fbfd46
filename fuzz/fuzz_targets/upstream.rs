//! The `http` backend's decoders (SSE, NDJSON, lines): any body, cut into
//! any pieces, decodes to exactly what it decodes to in one piece, holding
//! no line longer than its bound; never a panic.
#![no_main]

use backends::http::fuzzing::decode;
use gateway_fuzz::flags;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let format = ["sse", "ndjson", "lines"][usize::from(flags % 3)];
    // Small bounds reach the too-long paths; 64 is the least allowed.
    let max_line = 64 << ((flags >> 2) % 4);
    // The first bytes choose where the body is cut.
    let (cuts, body) = rest.split_at(rest.len().min(4));
    let cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * body.len() / 256)
        .collect();
    let whole = decode(format, max_line, body, &[]);
    let pieces = decode(format, max_line, body, &cuts);
    assert_eq!(whole, pieces, "{format} cut at {cuts:?}");
    let bytes: Vec<usize> = (0..body.len()).collect();
    if body.len() <= 256 {
        let byte_by_byte = decode(format, max_line, body, &bytes);
        assert_eq!(whole, byte_by_byte, "{format} byte by byte");
    }
});
