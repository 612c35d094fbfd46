//! Cursors and `Last-Event-ID`: whatever ids the backends of a route send,
//! the id the gateway gives a client survives the trip out (an SSE `id:`
//! line, a header value) and back, and resumes every backend exactly where
//! it was. Any other `Last-Event-ID` is parsed or refused, never a panic.
#![no_main]

use std::sync::Arc;

use gateway::cursor::Cursor;
use gateway_fuzz::{fields, flags};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let f = fields(rest, 10);
    // One to three backends, named by the first fields (route names are
    // distinct).
    let count = usize::from(flags % 3) + 1;
    let mut names: Vec<Arc<str>> = Vec::new();
    for name in &f[..count] {
        if !names.iter().any(|n| **n == **name) {
            names.push(Arc::from(name.as_str()));
        }
    }
    let names: Arc<[Arc<str>]> = names.into();
    // A raw Last-Event-ID: parsed or refused.
    let _ = Cursor::parse(Arc::clone(&names), Some(&f[3]));

    let mut cursor = Cursor::parse(Arc::clone(&names), None).expect("a fresh start");
    let mut expected: Vec<Option<String>> = vec![None; names.len()];
    let mut sent = None;
    let advances = usize::from(flags >> 5) + 1;
    for (i, id) in f[4..].iter().take(advances).enumerate() {
        let index = (usize::from(flags >> 2) + i) % names.len();
        sent = Some(Arc::clone(cursor.advance(index, &Arc::from(id.as_str()))));
        // An empty id is no position: SSE's `id:` with nothing resets the
        // client's last id, and it resumes from the start.
        expected[index] = Some(id.clone()).filter(|id| !id.is_empty() || names.len() > 1);
    }
    let Some(sent) = sent else { return };
    if sent.is_empty() {
        assert!(expected.iter().all(Option::is_none), "{expected:?}");
        return;
    }
    assert_eq!(cursor.current(), Some(&*sent));
    // Out: one line of SSE (no CR, LF or NUL) and a valid header value,
    // with no space at either end (proxies trim them).
    assert!(!sent.contains(['\r', '\n', '\0']), "{sent:?}");
    assert!(HeaderValue::from_str(&sent).is_ok(), "{sent:?}");
    assert_eq!(sent.trim(), &*sent);
    // Back: every backend resumes where it was.
    let back = Cursor::parse(Arc::clone(&names), Some(&sent)).expect("our own id parses");
    for (index, id) in expected.iter().enumerate() {
        assert_eq!(
            back.position(index),
            id.as_deref(),
            "backend {index} from {sent:?}"
        );
    }
});
