//! The NDJSON encoder: one compact JSON value per line, `\n` terminated.
//!
//! JSON payloads are already compact (see [`backends::Data`]) and so never
//! hold a raw line break; text payloads are written as JSON strings.

use bytes::{BufMut, BytesMut};

/// Writes one line holding `json`, which must be compact JSON.
pub fn write_line(buf: &mut BytesMut, json: &str) {
    buf.put_slice(json.as_bytes());
    buf.put_u8(b'\n');
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
