//! The Server-Sent Events encoder (WHATWG HTML, "Server-sent events").
//!
//! What a payload can never do here is change the shape of the stream:
//!
//! - `data` is split at every CR, LF and CRLF into several `data:` lines,
//!   which the client joins with LF. (So a text payload's CR and CRLF arrive
//!   as LF: SSE cannot carry the difference.)
//! - `id` and `event` values are single-line by definition: CR, LF and NUL in
//!   them are replaced by U+FFFD (NUL would make a client ignore the `id`).
//!   Replacing keeps the event, where refusing would drop it.
//! - Every value is written after `": "`, so a value that begins with a space
//!   keeps it (the parser strips exactly one).

use bytes::{BufMut, BytesMut};

/// Writes one event: `id`, `event`, then the `data` lines, then a blank line.
pub fn write_event(buf: &mut BytesMut, id: Option<&str>, name: Option<&str>, data: &str) {
    write_head(buf, id, name);
    let mut rest = data;
    loop {
        buf.put_slice(b"data: ");
        match memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
            None => {
                buf.put_slice(rest.as_bytes());
                buf.put_u8(b'\n');
                break;
            }
            Some(end) => {
                buf.put_slice(&rest.as_bytes()[..end]);
                buf.put_u8(b'\n');
                let skip = if rest[end..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
        }
    }
    buf.put_u8(b'\n');
}

/// Writes one event whose data `write_line` writes straight into `buf`, as
/// one line: it must write no CR or LF (compact JSON, say).
pub fn write_event_line(
    buf: &mut BytesMut,
    id: Option<&str>,
    name: Option<&str>,
    write_line: impl FnOnce(&mut BytesMut),
) {
    write_head(buf, id, name);
    buf.put_slice(b"data: ");
    write_line(buf);
    buf.put_slice(b"\n\n");
}

fn write_head(buf: &mut BytesMut, id: Option<&str>, name: Option<&str>) {
    if let Some(id) = id {
        write_single_line(buf, b"id: ", id);
    }
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        write_single_line(buf, b"event: ", name);
    }
}

/// Writes a `retry:` field line. Followed by a blank line it stands alone
/// (no event is dispatched); followed by an event's fields it belongs to it.
pub fn write_retry(buf: &mut BytesMut, millis: u128) {
    buf.put_slice(b"retry: ");
    buf.put_slice(millis.to_string().as_bytes());
    buf.put_u8(b'\n');
}

/// A comment, which clients ignore: used as the heartbeat.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

// Inlined, so that each call's field is a constant of known length.
#[inline]
fn write_single_line(buf: &mut BytesMut, field: &[u8], value: &str) {
    buf.put_slice(field);
    if breaks_a_field(value.as_bytes()) {
        for c in value.chars() {
            let c = if matches!(c, '\r' | '\n' | '\0') {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            };
            let mut utf8 = [0; 4];
            buf.put_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    } else {
        buf.put_slice(value.as_bytes());
    }
    buf.put_u8(b'\n');
}

/// Whether `value` holds a CR, an LF or a NUL. Ids and names are short:
/// below 32 bytes a plain loop costs a fraction of `memchr3`'s set-up, or
/// of a vectorized loop's (callgrind, a `ticker` route's ids and name).
fn breaks_a_field(value: &[u8]) -> bool {
    if value.len() < 32 {
        value
            .iter()
            .any(|&b| b <= b'\r' && matches!(b, b'\r' | b'\n' | b'\0'))
    } else {
        memchr::memchr3(b'\r', b'\n', b'\0', value).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, name: Option<&str>, data: &str) -> String {
        let mut buf = BytesMut::new();
        write_event(&mut buf, id, name, data);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn fields_in_order() {
        assert_eq!(
            event(Some("7"), Some("tick"), r#"{"n":1}"#),
            "id: 7\nevent: tick\ndata: {\"n\":1}\n\n"
        );
        assert_eq!(event(None, None, ""), "data: \n\n");
    }

    #[test]
    fn every_line_break_splits_data() {
        assert_eq!(
            event(None, None, "a\nb\r\nc\rd\n"),
            "data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        );
        assert_eq!(event(None, None, "\r\n\r\n"), "data: \ndata: \ndata: \n\n");
    }

    #[test]
    fn ids_and_names_cannot_break_lines() {
        assert_eq!(
            event(Some("1\n\nid: 2"), Some("x\rdata: y\0"), "z"),
            "id: 1\u{FFFD}\u{FFFD}id: 2\nevent: x\u{FFFD}data: y\u{FFFD}\ndata: z\n\n"
        );
    }

    /// Short values take a loop of their own, long ones `memchr3`: both
    /// find every break, wherever it is.
    #[test]
    fn a_break_is_found_in_short_and_long_values_alike() {
        for len in 1..=40 {
            for at in 0..len {
                for found in [b'\r', b'\n', b'\0'] {
                    let mut value = vec![b'a'; len];
                    value[at] = found;
                    assert!(breaks_a_field(&value), "{len} bytes, {found} at {at}");
                }
            }
            let fine: Vec<u8> = (0..len).map(|i| b" \t\x0b\x0c\x0e\x7f9"[i % 7]).collect();
            assert!(!breaks_a_field(&fine), "{fine:?}");
        }
    }

    #[test]
    fn leading_space_is_kept() {
        assert_eq!(event(Some(" 1"), None, " x"), "id:  1\ndata:  x\n\n");
    }
}
