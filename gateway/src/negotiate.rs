//! Content negotiation: which wire format a request gets.
//!
//! `Accept` is parsed as RFC 9110 says: several comma-separated media ranges
//! (also across several `Accept` headers), each with parameters, `q` weights
//! and wildcards, quoted strings respected. For each format the most specific
//! range that matches one of its media types gives its weight; the heavier
//! format wins, then the one matched more specifically, then the one whose
//! range comes first. A missing `Accept`, or one whose ranges are all
//! malformed, accepts anything; anything means NDJSON. `?format=` overrides.

use std::fmt;

/// A wire format the gateway streams in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Newline-delimited JSON, for `curl -N` and programs.
    Ndjson,
    /// Server-Sent Events, for `EventSource`.
    Sse,
}

impl Format {
    /// The response `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Sse => "text/event-stream",
        }
    }

    /// The name used by `?format=` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Sse => "sse",
        }
    }

    /// The media types that ask for this format.
    fn media_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Ndjson => &[
                ("application", "x-ndjson"),
                ("application", "jsonl"),
                ("application", "json"),
            ],
            Self::Sse => &[("text", "event-stream")],
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every media type the gateway offers, for the body of a 406.
pub const OFFERED: [&str; 4] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/json",
    "text/event-stream",
];

/// Why no format could be chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `Accept` excludes every format we offer (406).
    NotAcceptable,
    /// `?format=` names no format (400).
    UnknownFormat(String),
}

/// Chooses the format for a request from its `?format=` parameter and its
/// `Accept` header values.
pub fn negotiate<'a>(
    format_param: Option<&str>,
    accept: impl IntoIterator<Item = &'a str>,
) -> Result<Format, Refusal> {
    if let Some(param) = format_param {
        return match param.to_ascii_lowercase().as_str() {
            "sse" => Ok(Format::Sse),
            "ndjson" => Ok(Format::Ndjson),
            _ => Err(Refusal::UnknownFormat(param.to_string())),
        };
    }
    let ranges: Vec<Range<'_>> = accept
        .into_iter()
        .flat_map(|value| split_unquoted(value, ','))
        .filter_map(Range::parse)
        .collect();
    if ranges.is_empty() {
        return Ok(Format::Ndjson);
    }
    // (weight, specificity, -position) of each format; higher is better.
    let score = |format: Format| {
        format
            .media_types()
            .iter()
            .filter_map(|(ty, sub)| best_match(&ranges, ty, sub))
            .max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
    };
    let ndjson = score(Format::Ndjson).filter(|s| s.0 > 0.0);
    let sse = score(Format::Sse).filter(|s| s.0 > 0.0);
    match (ndjson, sse) {
        (None, None) => Err(Refusal::NotAcceptable),
        (Some(_), None) => Ok(Format::Ndjson),
        (None, Some(_)) => Ok(Format::Sse),
        // Ties go to NDJSON, the default.
        (Some(n), Some(s)) if s > n => Ok(Format::Sse),
        (Some(_), Some(_)) => Ok(Format::Ndjson),
    }
}

/// One media range of an `Accept` header.
#[derive(Debug)]
struct Range<'a> {
    ty: &'a str,
    subtype: &'a str,
    q: f32,
}

impl<'a> Range<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = split_unquoted(text, ';');
        let (ty, subtype) = parts.next()?.trim().split_once('/')?;
        let (ty, subtype) = (ty.trim(), subtype.trim());
        if !is_token(ty) || !is_token(subtype) || (ty == "*" && subtype != "*") {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            let (name, value) = param.split_once('=')?;
            if name.trim().eq_ignore_ascii_case("q") {
                q = parse_weight(value.trim())?;
            }
        }
        Some(Self { ty, subtype, q })
    }

    /// How specifically the range matches `ty/subtype`: 3 exact, 2 `type/*`,
    /// 1 `*/*`, `None` when it does not match.
    fn specificity(&self, ty: &str, subtype: &str) -> Option<u8> {
        let ty_eq = self.ty.eq_ignore_ascii_case(ty);
        if ty_eq && self.subtype.eq_ignore_ascii_case(subtype) {
            Some(3)
        } else if ty_eq && self.subtype == "*" {
            Some(2)
        } else if self.ty == "*" {
            Some(1)
        } else {
            None
        }
    }
}

/// The weight of the most specific range matching `ty/subtype`, as a
/// comparable (weight, specificity, earlier-is-better) triple.
fn best_match(ranges: &[Range<'_>], ty: &str, subtype: &str) -> Option<(f32, u8, i64)> {
    ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.specificity(ty, subtype).map(|s| (s, i, r)))
        // Most specific first; among equals, the first listed.
        .min_by_key(|(s, i, _)| (std::cmp::Reverse(*s), *i))
        .map(|(s, i, r)| (r.q, s, -(i as i64)))
}

/// A `q` value: 0 to 1 with at most three decimals.
fn parse_weight(value: &str) -> Option<f32> {
    let ok = match value.split_once('.') {
        None => value == "0" || value == "1",
        Some((int, frac)) => {
            (int == "0" || int == "1")
                && frac.len() <= 3
                && frac.bytes().all(|b| b.is_ascii_digit())
                && (int == "0" || frac.bytes().all(|b| b == b'0'))
        }
    };
    ok.then(|| value.parse().ok()).flatten()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits on `sep` outside double-quoted strings (which may hold `\"`).
fn split_unquoted(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + c.len_utf8()..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Result<Format, Refusal> {
        negotiate(None, [accept])
    }

    #[test]
    fn matrix() {
        use Format::{Ndjson, Sse};
        let cases: &[(&str, Result<Format, Refusal>)] = &[
            ("", Ok(Ndjson)),
            ("*/*", Ok(Ndjson)),
            ("text/event-stream", Ok(Sse)),
            ("TEXT/Event-Stream", Ok(Sse)),
            ("text/event-stream; charset=utf-8", Ok(Sse)),
            ("application/x-ndjson", Ok(Ndjson)),
            ("application/jsonl", Ok(Ndjson)),
            ("application/json", Ok(Ndjson)),
            ("text/*", Ok(Sse)),
            ("application/*", Ok(Ndjson)),
            ("text/event-stream, */*", Ok(Sse)),
            ("*/*, text/event-stream", Ok(Sse)),
            ("application/json, text/event-stream", Ok(Ndjson)),
            ("text/event-stream, application/json", Ok(Sse)),
            ("application/json;q=0.5, text/event-stream", Ok(Sse)),
            ("application/json, text/event-stream;q=0.9", Ok(Ndjson)),
            ("text/event-stream;q=0, */*", Ok(Ndjson)),
            ("application/*;q=0, */*", Ok(Sse)),
            ("application/json;q=0, application/*;q=0.1", Ok(Ndjson)),
            ("text/html", Err(Refusal::NotAcceptable)),
            ("text/html, image/*;q=0.8", Err(Refusal::NotAcceptable)),
            ("*/*;q=0", Err(Refusal::NotAcceptable)),
            (
                "text/event-stream;q=0, application/*;q=0",
                Err(Refusal::NotAcceptable),
            ),
            ("text/html;level=\"a,b;q=1\", text/event-stream", Ok(Sse)),
            ("text/event-stream;q=1.5", Ok(Ndjson)),
            ("garbage", Ok(Ndjson)),
            ("text/html, garbage", Err(Refusal::NotAcceptable)),
        ];
        for (accept, expected) in cases {
            assert_eq!(&pick(accept), expected, "Accept: {accept}");
        }
    }

    #[test]
    fn several_headers_are_one_list() {
        assert_eq!(
            negotiate(None, ["text/html", "text/event-stream"]),
            Ok(Format::Sse)
        );
    }

    #[test]
    fn format_parameter_overrides() {
        assert_eq!(negotiate(Some("sse"), ["text/html"]), Ok(Format::Sse));
        assert_eq!(
            negotiate(Some("NDJSON"), ["text/event-stream"]),
            Ok(Format::Ndjson)
        );
        assert_eq!(
            negotiate(Some("xml"), []),
            Err(Refusal::UnknownFormat("xml".into()))
        );
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("0.5"), Some(0.5));
        assert_eq!(parse_weight("1.000"), Some(1.0));
        assert_eq!(parse_weight("1.5"), None);
        assert_eq!(parse_weight("0.1234"), None);
        assert_eq!(parse_weight("-0"), None);
    }
}
