//! The NDJSON encoder: one compact JSON value per line, `\n` terminated.
//!
//! JSON payloads are already compact (see [`backends::Data`]) and so never
//! hold a raw line break; text payloads are written as JSON strings.

use backends::Data;
use bytes::{BufMut, BytesMut};

/// Writes a payload as one JSON value (no newline after it): JSON as it is
/// (already compact), text as a JSON string.
pub fn write_data(buf: &mut BytesMut, data: &Data) {
    if data.is_json() {
        buf.put_slice(data.as_str().as_bytes());
    } else {
        write_json_string(buf, data.as_str());
    }
}

/// Writes `text` as a JSON string (no line break, no newline after it).
pub fn write_json_string(buf: &mut BytesMut, text: &str) {
    // Serializing a `str` into memory cannot fail.
    let _ = serde_json::to_writer(buf.writer(), text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_a_single_line_json_string() {
        let mut buf = BytesMut::new();
        write_json_string(&mut buf, "a\nb\"c\u{2028}");
        buf.put_u8(b'\n');
        assert_eq!(&buf[..], b"\"a\\nb\\\"c\xe2\x80\xa8\"\n");
    }
}
