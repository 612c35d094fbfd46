//! Request smuggling's favourite head: `Content-Length` and
//! `Transfer-Encoding` together.
//!
//! RFC 9112 (section 6.3) lets a server go by `Transfer-Encoding` and ignore
//! `Content-Length`, which hyper does, dropping the latter before the
//! request reaches us. But a proxy in front that went by `Content-Length`
//! would disagree about where the request ends, and the RFC says such a
//! message "ought to be handled as an error". So the connection's bytes are
//! watched as they are read, before hyper parses them, for a block of lines
//! (a head, or a chunked body's trailers) that holds both; the request is
//! then refused with 400 and the connection closed.
//!
//! Only the first bytes of each line are looked at, so the cost is a search
//! for line ends. Bodies are lines too, but ours are JSON, which has no line
//! that starts with a header name; and trailers may not carry framing
//! fields at all (RFC 9110, section 6.5.1).

/// The header names looked for, lowercase, with their colon.
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
/// How much of a line is kept: the longest name above.
const PREFIX: usize = TRANSFER_ENCODING.len();

/// Watches a connection's bytes for a head with both framing headers.
#[derive(Debug, Default)]
pub(crate) struct FramingWatch {
    /// The current line's first bytes, lowercased.
    prefix: [u8; PREFIX],
    /// The current line's length so far (saturating).
    len: usize,
    content_length: bool,
    transfer_encoding: bool,
    /// Both were seen in one block: the connection is not to be trusted.
    both: bool,
}

impl FramingWatch {
    /// Looks at the next bytes read; `true` once a block held both headers.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(end) => {
                    self.take(&bytes[..end]);
                    self.end_line();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.take(bytes);
                    break;
                }
            }
        }
        self.both
    }

    fn take(&mut self, part: &[u8]) {
        let kept = self.len.min(PREFIX);
        let copied = part.len().min(PREFIX - kept);
        for (to, from) in self.prefix[kept..kept + copied].iter_mut().zip(part) {
            *to = from.to_ascii_lowercase();
        }
        self.len = self.len.saturating_add(part.len());
    }

    fn end_line(&mut self) {
        let line = &self.prefix[..self.len.min(PREFIX)];
        let blank = self.len == 0 || (self.len == 1 && line == b"\r");
        if blank {
            self.both |= self.content_length && self.transfer_encoding;
            self.content_length = false;
            self.transfer_encoding = false;
        } else if line.starts_with(CONTENT_LENGTH) {
            self.content_length = true;
        } else if line.starts_with(TRANSFER_ENCODING) {
            self.transfer_encoding = true;
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes.
    fn watch(input: &[u8], step: usize) -> bool {
        let mut watch = FramingWatch::default();
        let mut seen = false;
        for piece in input.chunks(step) {
            seen = watch.feed(piece);
        }
        seen
    }

    fn everywhere(input: &[u8]) -> bool {
        let whole = watch(input, input.len().max(1));
        for step in 1..input.len().min(40) {
            assert_eq!(watch(input, step), whole, "split every {step} bytes");
        }
        whole
    }

    #[test]
    fn both_headers_in_one_head_are_seen_however_the_bytes_arrive() {
        let smuggled = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\n";
        assert!(everywhere(smuggled));
        let bare_lf = b"POST / HTTP/1.1\ntransfer-encoding: chunked\ncontent-length: 4\n\n";
        assert!(everywhere(bare_lf));
        // In trailers, after a chunked body.
        let trailers = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(everywhere(trailers));
    }

    #[test]
    fn one_header_per_head_is_fine_and_heads_are_apart() {
        let fine = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET / HTTP/1.1\r\nX-Content-Length: 1\r\nX: transfer-encoding: chunked\r\n\r\n";
        assert!(!everywhere(fine));
        // A long line is cut to its prefix, and a name inside a value is
        // not a header.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        long.extend(b" HTTP/1.1\r\nContent-Lengthy: 1\r\nHost: transfer-encoding:\r\n\r\n");
        assert!(!everywhere(&long));
    }

    #[test]
    fn once_seen_it_stays_seen() {
        let mut watch = FramingWatch::default();
        assert!(watch.feed(b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(watch.feed(b"GET / HTTP/1.1\r\n\r\n"));
    }
}
