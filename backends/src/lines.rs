//! A line splitter for streamed bytes, bounded in memory: the `http`
//! backend reads upstream SSE, NDJSON and text with it, and the load
//! generator reads the gateway's own streams.

/// What the line splitter finds.
#[derive(Debug)]
pub enum Piece<'a> {
    /// A complete line, without its line break.
    Line(&'a [u8]),
    /// A line longer than the limit (given) was skipped.
    TooLong(usize),
}

/// Splits bytes into lines, holding at most `max` bytes of an unfinished
/// line: a longer line is reported once and skipped up to its end.
#[derive(Debug)]
pub struct Lines {
    pub(crate) pending: Vec<u8>,
    max: usize,
    /// SSE: a lone CR ends a line too (else only LF does, and a CR before
    /// it is removed).
    cr_ends_line: bool,
    /// The last line ended with CR: an LF right after belongs to it.
    after_cr: bool,
    /// The current line is over `max`: skipped to its end.
    skipping: bool,
    /// No line yet: a byte order mark at the start is dropped.
    first: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most buffer kept for the next line once a line is out: one long line
/// (up to `max`, 1 MiB by default) must not cost its size for the rest of a
/// stream that goes on with short ones.
const KEEP: usize = 64 * 1024;

/// Gives back a line buffer that a long line grew past [`KEEP`] (the
/// `command` backend's too).
pub(crate) fn release(buffer: &mut Vec<u8>) {
    if buffer.capacity() > KEEP {
        *buffer = Vec::new();
    }
}

impl Lines {
    /// A splitter keeping at most `max` bytes of a line; with `cr_ends_line`
    /// a lone CR ends a line (SSE), else only LF does.
    pub fn new(max: usize, cr_ends_line: bool) -> Self {
        Self {
            pending: Vec::new(),
            max,
            cr_ends_line,
            after_cr: false,
            skipping: false,
            first: true,
        }
    }

    /// The longest line kept.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Calls `emit` with each line `chunk` completes, and once for each
    /// line that grew past `max`.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut dyn FnMut(Piece<'_>)) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if std::mem::take(&mut self.after_cr) && rest[0] == b'\n' {
                rest = &rest[1..];
                continue;
            }
            let cr = self.cr_ends_line;
            let Some(end) = rest.iter().position(|&b| b == b'\n' || (cr && b == b'\r')) else {
                if !self.skipping {
                    if self.pending.len() + rest.len() > self.max {
                        self.skipping = true;
                        self.pending = Vec::new();
                        emit(Piece::TooLong(self.max));
                    } else {
                        self.pending.extend_from_slice(rest);
                    }
                }
                return;
            };
            self.after_cr = rest[end] == b'\r';
            let part = &rest[..end];
            rest = &rest[end + 1..];
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if self.pending.len() + part.len() > self.max {
                self.pending.clear();
                release(&mut self.pending);
                emit(Piece::TooLong(self.max));
                continue;
            }
            if self.pending.is_empty() {
                let line = self.clean(part);
                emit(Piece::Line(line));
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(part);
                emit(Piece::Line(self.clean(&line)));
                line.clear();
                self.pending = line;
                release(&mut self.pending);
            }
        }
    }

    /// Drops a BOM before the first line, and the CR of a CRLF.
    fn clean<'a>(&mut self, line: &'a [u8]) -> &'a [u8] {
        let mut line = line;
        if std::mem::take(&mut self.first) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if !self.cr_ends_line {
            line = line.strip_suffix(b"\r").unwrap_or(line);
        }
        line
    }

    /// What is left at the end of the body: a last line without a line break.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let pending = std::mem::take(&mut self.pending);
        if self.skipping || pending.is_empty() {
            return None;
        }
        Some(self.clean(&pending).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_does_not_keep_its_buffer() {
        let mut lines = Lines::new(4 << 20, false);
        let mut got = Vec::new();
        let long = vec![b'x'; 1 << 20];
        // In pieces, as a network delivers it: the buffer grows to 1 MiB.
        for piece in long.chunks(16 * 1024) {
            lines.feed(piece, &mut |p| got.push(format!("{p:?}").len()));
        }
        lines.feed(b"\nshort\n", &mut |p| got.push(format!("{p:?}").len()));
        assert_eq!(got.len(), 2);
        assert!(
            lines.pending.capacity() <= KEEP,
            "{}",
            lines.pending.capacity()
        );
        // Over the limit: skipped, and nothing kept either.
        let mut lines = Lines::new(100 * 1024, false);
        for piece in long.chunks(16 * 1024) {
            lines.feed(piece, &mut |_| {});
        }
        assert!(
            lines.pending.capacity() <= KEEP,
            "{}",
            lines.pending.capacity()
        );
    }
}
