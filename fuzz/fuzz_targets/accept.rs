//! `Accept` negotiation: any `?format=` and `Accept` values get a format
//! whose media type is one the client named or allowed, or a refusal;
//! never a panic, and the same answer for the same request.
#![no_main]

use gateway::Format;
use gateway::negotiate::{negotiate, prefers_page};
use gateway_fuzz::{fields, flags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let f = fields(rest, 5);
    let param = (flags & 1 != 0).then_some(f[0].as_str());
    let accept: Vec<&str> = f[1..]
        .iter()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    let first = negotiate(param, accept.iter().copied());
    let again = negotiate(param, accept.iter().copied());
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    let _ = prefers_page(accept.iter().copied());
    if let Ok(chosen) = first {
        match chosen.format {
            Format::Sse => assert_eq!(chosen.content_type, "text/event-stream"),
            Format::Ndjson => assert!(
                [
                    "application/x-ndjson",
                    "application/jsonl",
                    "application/json"
                ]
                .contains(&chosen.content_type),
                "{chosen:?}"
            ),
        }
        if param.is_none() && !accept.is_empty() {
            // A type the client refused outright (`type;q=0`, its only
            // range) is never chosen.
            let only = accept.join(",").to_ascii_lowercase().replace(' ', "");
            assert_ne!(only, format!("{};q=0", chosen.content_type), "{accept:?}");
        }
    }
});
