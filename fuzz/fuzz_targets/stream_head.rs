//! The request heads the listener answers without hyper
//! (`gateway/src/listen/stream.rs`): any bytes are either left to hyper
//! or taken as a complete `GET` head over HTTP/1.1, no longer than the
//! bytes and the limit, with an origin-form target and nothing that frames
//! a body or asks for another protocol; never a panic.
#![no_main]

use gateway::classify;
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Some(head) = classify(data, MAX_HEAD) else {
        return;
    };
    assert!(head.len <= data.len() && head.len <= MAX_HEAD);
    assert!(data[..head.len].ends_with(b"\n\n") || data[..head.len].ends_with(b"\n\r\n"));
    let request = &head.request;
    assert_eq!(request.method(), "GET");
    assert_eq!(format!("{:?}", request.version()), "HTTP/1.1");
    assert!(request.uri().path().starts_with('/'));
    assert!(request.uri().authority().is_none());
    for name in ["content-length", "transfer-encoding", "expect", "upgrade"] {
        assert!(!request.headers().contains_key(name), "{name}");
    }
    assert!(request.headers().len() <= gateway::MAX_HEADERS);
    // The same bytes cut before the head's end are never taken.
    assert!(classify(&data[..head.len - 1], MAX_HEAD).is_none());
});
