//! Stream parsers that cost little per event: the load generator shares the
//! machine with what it measures.
//!
//! [`Sse`] follows the WHATWG event-stream rules that matter for counting:
//! lines end with LF, CRLF or CR; `:` lines are comments; `field: value`
//! with one optional space; `data` lines accumulate; a blank line dispatches
//! an event when it has data; `id` sets the last id (kept across events), and
//! an id with NUL is ignored. [`Ndjson`] takes one JSON value per line, blank
//! lines skipped. Neither allocates per event beyond the event's own bytes.
//! Both split lines with the `http` backend's splitter.

use backends::lines::{Lines, Piece};

/// The stream format asked for and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    /// The `Accept` header that asks for it.
    pub fn accept(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

/// One event as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// SSE `event` field (empty: `message`); NDJSON: the `event` key, if
    /// the line is an envelope.
    pub name: &'a str,
    /// SSE: the last id; NDJSON: the line's `id` key (string or number).
    pub id: Option<&'a str>,
    pub data: &'a [u8],
}

/// What a parser reports besides events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub comments: u64,
    /// Lines or events longer than the bound, skipped.
    pub oversized: u64,
}

/// An incremental `text/event-stream` parser.
#[derive(Debug)]
pub struct Sse {
    lines: Lines,
    data: Vec<u8>,
    name: String,
    last_id: String,
    has_id: bool,
    oversized: bool,
    pub counts: Counts,
}

impl Sse {
    /// Lines and events are bounded by `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            lines: Lines::new(max, true),
            data: Vec::new(),
            name: String::new(),
            last_id: String::new(),
            has_id: false,
            oversized: false,
            counts: Counts::default(),
        }
    }

    /// Feeds bytes; calls `event` for each event they complete.
    pub fn feed(&mut self, chunk: &[u8], event: &mut dyn FnMut(Parsed<'_>)) {
        let Self {
            lines,
            data,
            name,
            last_id,
            has_id,
            oversized,
            counts,
        } = self;
        let max = lines.max();
        lines.feed(chunk, &mut |piece| {
            let Piece::Line(line) = piece else {
                counts.oversized += 1;
                *oversized = true;
                return;
            };
            if line.is_empty() {
                if !std::mem::take(oversized) && !data.is_empty() {
                    data.pop();
                    event(Parsed {
                        name: if name.is_empty() { "message" } else { name },
                        id: has_id.then_some(last_id.as_str()),
                        data,
                    });
                }
                data.clear();
                name.clear();
                return;
            }
            if line[0] == b':' {
                counts.comments += 1;
                return;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => {
                    let value = &line[at + 1..];
                    (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if data.len() + value.len() >= max {
                        counts.oversized += 1;
                        *oversized = true;
                        data.clear();
                    } else if !*oversized {
                        data.extend_from_slice(value);
                        data.push(b'\n');
                    }
                }
                b"event" => {
                    name.clear();
                    name.push_str(&String::from_utf8_lossy(value));
                }
                b"id" if !value.contains(&0) => {
                    last_id.clear();
                    last_id.push_str(&String::from_utf8_lossy(value));
                    *has_id = !last_id.is_empty();
                }
                _ => {}
            }
        });
    }
}

/// An incremental NDJSON parser: each non-blank line is an event.
#[derive(Debug)]
pub struct Ndjson {
    lines: Lines,
    pub counts: Counts,
}

impl Ndjson {
    pub fn new(max: usize) -> Self {
        Self {
            lines: Lines::new(max, false),
            counts: Counts::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8], event: &mut dyn FnMut(Parsed<'_>)) {
        let Self { lines, counts } = self;
        lines.feed(chunk, &mut |piece| {
            let Piece::Line(line) = piece else {
                counts.oversized += 1;
                return;
            };
            let line = line.trim_ascii();
            if line.is_empty() {
                return;
            }
            event(Parsed {
                name: field_str(line, "event").unwrap_or("message"),
                id: field_str(line, "id").or_else(|| field_raw(line, "id")),
                data: line,
            });
        });
    }
}

/// The text after `"key":` (spaces allowed) in a JSON object's bytes, up to
/// the value's end: a cheap look-up that needs no parse. It finds the first
/// occurrence of the key at any depth; the load generator's own payloads
/// (ticker, publisher) put their keys where this finds them.
fn field_raw<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let mut at = 0;
    while let Some(found) = find(&json[at..], key.as_bytes()) {
        let start = at + found;
        at = start + key.len();
        let quoted =
            start > 0 && json[start - 1] == b'"' && json.get(start + key.len()) == Some(&b'"');
        if !quoted {
            continue;
        }
        let rest = json[start + key.len() + 1..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let end = rest
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(rest.len());
        return std::str::from_utf8(&rest[..end]).ok();
    }
    None
}

/// A string value (without its quotes; no escapes inside) for `key`.
pub fn field_str<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let raw = field_raw(json, key)?;
    let inner = raw.strip_prefix('"')?;
    inner
        .strip_suffix('"')
        .or(Some(inner))
        .filter(|s| !s.contains('\\'))
}

/// An unsigned integer value for `key` (`"seq": 42`).
pub fn field_u64(json: &[u8], key: &str) -> Option<u64> {
    field_raw(json, key)?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(chunks: &[&[u8]]) -> (Vec<(String, Option<String>, String)>, Counts) {
        let mut parser = Sse::new(64);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut |e| {
                out.push((
                    e.name.to_string(),
                    e.id.map(str::to_string),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        (out, parser.counts)
    }

    #[test]
    fn sse_events_split_anywhere_parse_the_same() {
        let wire = b"retry: 3000\n\n: hi\n\nid: 1\nevent: tick\ndata: {\"seq\":1}\n\n\
                     data: a\r\ndata: b\r\n\r\nid: 7\rdata:x\r\r";
        let whole = sse(&[wire]);
        assert_eq!(
            whole.0,
            vec![
                ("tick".into(), Some("1".into()), "{\"seq\":1}".into()),
                ("message".into(), Some("1".into()), "a\nb".into()),
                ("message".into(), Some("7".into()), "x".into()),
            ]
        );
        assert_eq!(whole.1.comments, 1);
        for cut in 1..wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(sse(&[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_sse_events_are_counted_and_skipped() {
        let long = format!("data: {}\n\ndata: ok\n\n", "y".repeat(100));
        let (events, counts) = sse(&[long.as_bytes()]);
        assert_eq!(events, vec![("message".into(), None, "ok".into())]);
        assert_eq!(counts.oversized, 1);
    }

    #[test]
    fn ndjson_lines_and_fields() {
        let mut parser = Ndjson::new(1024);
        let mut out = Vec::new();
        parser.feed(
            b"{\"id\":\"3\",\"event\":\"tick\",\"data\":{\"seq\":3,\"ts_us\":17}}\n\n{\"seq\": 4}\n",
            &mut |e| out.push((e.name.to_string(), e.id.map(str::to_string), e.data.to_vec())),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, "tick");
        assert_eq!(out[0].1.as_deref(), Some("3"));
        assert_eq!(field_u64(&out[0].2, "ts_us"), Some(17));
        assert_eq!(field_u64(&out[1].2, "seq"), Some(4));
        assert_eq!(out[1].1, None);
    }

    #[test]
    fn field_lookup_needs_a_quoted_key() {
        assert_eq!(field_u64(b"{\"xseq\":1,\"seq\" : 2}", "seq"), Some(2));
        assert_eq!(field_u64(b"{\"a\":\"seq\"}", "seq"), None);
        assert_eq!(field_u64(b"{\"seq\":\"x\"}", "seq"), None);
    }
}
