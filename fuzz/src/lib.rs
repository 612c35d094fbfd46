//! What the fuzz targets share: cutting one input into the fields a target
//! needs, and making an event of them.

use std::sync::Arc;

use backends::{Data, Event};
use serde_json::Value;

/// The byte that separates fields in an input (never valid in UTF-8, so a
/// field's text cannot contain it).
pub const SEPARATOR: u8 = 0xff;

/// Up to `n` fields of `data`, cut at [`SEPARATOR`], each as text (invalid
/// UTF-8 replaced); missing fields are empty.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |&b| b == SEPARATOR)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}

/// The first byte of `data` as flags, and the rest.
pub fn flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}

/// An event from four fields (id, name, data, source): the id and name
/// when `flags` bits 1 and 2 say so, the data as JSON when bit 4 says so and
/// it parses, else as text.
pub fn event_of(flags: u8, f: &[String]) -> Event {
    let data = match serde_json::from_str::<Value>(&f[2]) {
        Ok(value) if flags & 4 != 0 => Data::json(&value),
        _ => Data::text(f[2].as_str()),
    };
    let mut event = Event::new(data).with_source(Arc::from(f[3].as_str()));
    if flags & 1 != 0 {
        event = event.with_id(f[0].as_str());
    }
    if flags & 2 != 0 {
        event = event.with_name(f[1].as_str());
    }
    event
}
