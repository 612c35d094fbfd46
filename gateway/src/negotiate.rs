//! Content negotiation: which wire format a request gets.
//!
//! `Accept` is parsed as RFC 9110 says: several comma-separated media ranges
//! (also across several `Accept` headers), each with parameters, `q` weights
//! and wildcards, quoted strings respected, empty parameters allowed. Each
//! media type we offer takes its weight from the most specific range that
//! matches it (the heaviest, among equally specific ones). A range with a
//! parameter describes a variant: `charset=utf-8` matches (our formats are
//! UTF-8), any other parameter matches nothing we send.
//!
//! The heavier format wins, then the one matched more specifically, then the
//! one whose range comes first; a tie (`*/*`) is NDJSON. A missing `Accept`,
//! or one whose ranges are all malformed, accepts anything. `?format=`
//! overrides `Accept`. NDJSON is labelled `application/x-ndjson`, unless the
//! client refused that type outright (`q=0`) and accepts an alias.
//!
//! A `GET` that prefers `text/html` to every stream format (a browser
//! navigating to the route) gets the live viewer page instead of a stream:
//! see [`prefers_page`].

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

/// What a request gets: its format, and the `Content-Type` to label it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The wire format.
    pub format: Format,
    /// The media type sent: the format's own, unless the client refused it
    /// and accepts an alias (`application/x-ndjson;q=0, application/json`).
    pub content_type: &'static str,
}

impl From<Format> for Negotiated {
    fn from(format: Format) -> Self {
        Self {
            format,
            content_type: format.content_type(),
        }
    }
}

/// Chooses the format for a request from its `?format=` parameter and its
/// `Accept` header values.
pub fn negotiate<'a>(
    format_param: Option<&str>,
    accept: impl IntoIterator<Item = &'a str>,
) -> Result<Negotiated, Refusal> {
    if let Some(param) = format_param {
        return match param.to_ascii_lowercase().as_str() {
            "sse" => Ok(Format::Sse.into()),
            "ndjson" => Ok(Format::Ndjson.into()),
            _ => Err(Refusal::UnknownFormat(param.to_string())),
        };
    }
    let values: Vec<&str> = accept.into_iter().collect();
    let ranges = Ranges(&values);
    if ranges.iter().next().is_none() {
        return Ok(Format::Ndjson.into());
    }
    // Each acceptable media type of a format, best first, with its
    // (weight, specificity, -position) score; higher is better.
    let acceptable = |format: Format| {
        let mut types: Vec<_> = format
            .media_types()
            .iter()
            .filter_map(|&(ty, sub)| Some((best_match(ranges, ty, sub)?, ty, sub)))
            .filter(|(score, _, _)| score.0 > 0.0)
            .collect();
        types.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        types
    };
    let ndjson = acceptable(Format::Ndjson);
    let sse = acceptable(Format::Sse);
    let format = match (ndjson.first(), sse.first()) {
        (None, None) => return Err(Refusal::NotAcceptable),
        (Some(_), None) => Format::Ndjson,
        (None, Some(_)) => Format::Sse,
        // Ties go to NDJSON, the default.
        (Some(n), Some(s)) if s.0 > n.0 => Format::Sse,
        (Some(_), Some(_)) => Format::Ndjson,
    };
    let own = format.content_type();
    // Our own type, unless the client refused it outright (`q=0`): then the
    // alias it likes best.
    let refused = |media_type: &str| {
        let (ty, sub) = media_type.split_once('/').unwrap_or((media_type, ""));
        best_match(ranges, ty, sub).is_some_and(|(q, _, _)| q == 0.0)
    };
    let content_type = match ndjson.first() {
        Some((_, ty, sub)) if format == Format::Ndjson && refused(own) => OFFERED
            .iter()
            .copied()
            .find(|offered| *offered == format!("{ty}/{sub}"))
            .unwrap_or(own),
        _ => own,
    };
    Ok(Negotiated {
        format,
        content_type,
    })
}

/// Whether `Accept` prefers `text/html` to every format we stream: its
/// weight is higher, or equal and matched more specifically (a browser's
/// `text/html,…,*/*;q=0.8`, or `text/html, */*`). Ties go to the stream
/// (`text/html, text/event-stream` is SSE), and so do a missing `Accept`,
/// `*/*` and `text/*`: `curl`, `fetch` and `EventSource` get streams as
/// before. `?format=` is not looked at here: it always asks for a stream.
pub fn prefers_page<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    let values: Vec<&str> = accept.into_iter().collect();
    let ranges = Ranges(&values);
    let Some((q, specificity, _)) = best_match(ranges, "text", "html") else {
        return false;
    };
    q > 0.0
        && [Format::Ndjson, Format::Sse]
            .iter()
            .flat_map(|format| format.media_types())
            .filter_map(|&(ty, sub)| best_match(ranges, ty, sub))
            .filter(|(stream_q, _, _)| *stream_q > 0.0)
            .all(|(stream_q, stream_specificity, _)| {
                (q, specificity) > (stream_q, stream_specificity)
            })
}

/// How a media range's parameters (those before `q`) bear on our offers,
/// which have none but are always UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Params {
    /// No parameters.
    None,
    /// `charset=utf-8`: what our formats are anyway; counts as none.
    Utf8,
    /// Anything else: it describes a variant we never send.
    Other,
}

/// The media ranges of `Accept` values, parsed again on each look rather
/// than kept: a range is 40 bytes and may be written in 4 (`a/b,`), so a
/// long header would cost ten times its size; a look costs a pass over it.
#[derive(Clone, Copy)]
struct Ranges<'a>(&'a [&'a str]);

impl<'a> Ranges<'a> {
    fn iter(self) -> impl Iterator<Item = Range<'a>> {
        self.0
            .iter()
            .flat_map(|value| split_unquoted(value, ','))
            .filter_map(Range::parse)
    }
}

/// One media range of an `Accept` header.
#[derive(Debug)]
struct Range<'a> {
    ty: &'a str,
    subtype: &'a str,
    params: Params,
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
        let mut params = Params::None;
        // Parameters may be empty (`text/event-stream;`); those after `q`
        // are accept extensions, not the media type's.
        let mut after_q = false;
        for param in parts.map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=')?;
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("q") {
                q = parse_weight(value)?;
                after_q = true;
            } else if !after_q {
                let utf8 = name.eq_ignore_ascii_case("charset")
                    && value.trim_matches('"').eq_ignore_ascii_case("utf-8");
                params = match (params, utf8) {
                    (Params::None, true) => Params::Utf8,
                    _ => Params::Other,
                };
            }
        }
        Some(Self {
            ty,
            subtype,
            params,
            q,
        })
    }

    /// How specifically the range matches `ty/subtype`: 3 exact, 2 `type/*`,
    /// 1 `*/*`; `None` when it does not match (including a range with
    /// parameters that describe a variant we never send).
    fn specificity(&self, ty: &str, subtype: &str) -> Option<u8> {
        let ty_eq = self.ty.eq_ignore_ascii_case(ty);
        let base = if ty_eq && self.subtype.eq_ignore_ascii_case(subtype) {
            3
        } else if ty_eq && self.subtype == "*" {
            2
        } else if self.ty == "*" {
            1
        } else {
            return None;
        };
        (self.params != Params::Other).then_some(base)
    }
}

/// The weight of the most specific range matching `ty/subtype`, as a
/// comparable (weight, specificity, earlier-is-better) triple. Among equally
/// specific ranges the heaviest counts (a client that lists a type twice
/// accepts it at its best).
fn best_match(ranges: Ranges<'_>, ty: &str, subtype: &str) -> Option<(f32, u8, i64)> {
    ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((r.specificity(ty, subtype)?, r.q, -(i as i64))))
        .max_by(|a, b| {
            (a.0, a.1)
                .partial_cmp(&(b.0, b.1))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.2.cmp(&b.2))
        })
        .map(|(specificity, q, position)| (q, specificity, position))
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
        negotiate(None, [accept]).map(|n| n.format)
    }

    #[test]
    fn a_long_accept_is_read_in_passes_with_the_same_answer() {
        // 400 KB of ranges, the most a header can hold: passes over the
        // text, no list of 100,000 ranges.
        let long = format!(
            "{}text/event-stream;q=0.9, */*;q=0.1",
            "x/y,".repeat(100_000)
        );
        assert_eq!(
            negotiate(None, [long.as_str()]).map(|n| n.format),
            Ok(Format::Sse)
        );
        assert!(!prefers_page([long.as_str()]));
        let page = format!("{}text/html", "x/y;q=0.5,".repeat(40_000));
        assert!(prefers_page([page.as_str()]));
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
            ("text/event-stream;", Ok(Sse)),
            ("text/event-stream; ;charset=\"UTF-8\", text/html", Ok(Sse)),
            (
                "text/event-stream;charset=utf-8;q=0, text/event-stream",
                Ok(Sse),
            ),
            (
                "text/event-stream;q=0, text/event-stream;q=0.5, */*;q=0.1",
                Ok(Sse),
            ),
            (
                "text/event-stream;charset=latin1",
                Err(Refusal::NotAcceptable),
            ),
            (
                "text/event-stream;charset=latin1, text/html",
                Err(Refusal::NotAcceptable),
            ),
            ("application/json;profile=x", Err(Refusal::NotAcceptable)),
            (
                "application/x-ndjson;q=0, application/json, text/event-stream;q=0.1",
                Ok(Ndjson),
            ),
            ("text/event-stream;q=0.5;ext=1", Ok(Sse)),
        ];
        for (accept, expected) in cases {
            assert_eq!(&pick(accept), expected, "Accept: {accept}");
        }
    }

    /// The stream formats' negotiation above still refuses `text/html`
    /// alone (a `POST` route answers it 406); a `GET` asks this first.
    #[test]
    fn the_page_when_html_is_preferred() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,\
                       image/avif,image/webp,*/*;q=0.8";
        let cases: &[(&str, bool)] = &[
            (browser, true),
            ("text/html", true),
            ("TEXT/HTML; charset=utf-8", true),
            ("text/html, image/png;q=0.9", true),
            ("text/html, */*", true),
            ("text/html;q=0.9, */*;q=0.8", true),
            ("text/html, text/event-stream;q=0.1", true),
            ("", false),
            ("*/*", false),
            ("text/*", false),
            ("garbage", false),
            ("text/event-stream", false),
            ("application/x-ndjson", false),
            // A tie goes to the stream.
            ("text/html, text/event-stream", false),
            ("text/event-stream, text/html", false),
            ("text/html;q=0.5, application/json", false),
            ("text/html;q=0, */*", false),
            ("text/html;level=1", false),
            ("image/png", false),
        ];
        for (accept, expected) in cases {
            assert_eq!(prefers_page([*accept]), *expected, "Accept: {accept}");
        }
        assert!(!prefers_page(["text/html", "text/event-stream"]));
        assert!(prefers_page(["text/html", "*/*;q=0.1"]));
    }

    #[test]
    fn several_headers_are_one_list() {
        let got = negotiate(None, ["text/html", "text/event-stream"]);
        assert_eq!(got, Ok(Format::Sse.into()));
    }

    #[test]
    fn a_refused_media_type_is_never_the_label() {
        let label = |accept: &str| negotiate(None, [accept]).map(|n| n.content_type);
        assert_eq!(label("application/json"), Ok("application/x-ndjson"));
        assert_eq!(label("*/*"), Ok("application/x-ndjson"));
        let refused = "application/x-ndjson;q=0, application/json";
        assert_eq!(label(refused), Ok("application/json"));
        let ranked = "application/x-ndjson;q=0, application/jsonl;q=0.5, application/json;q=0.4";
        assert_eq!(label(ranked), Ok("application/jsonl"));
        let wild = "application/x-ndjson;q=0, application/*";
        assert_eq!(label(wild), Ok("application/jsonl"));
        assert_eq!(label("text/*"), Ok("text/event-stream"));
    }

    #[test]
    fn format_parameter_overrides() {
        let sse = negotiate(Some("sse"), ["text/html"]);
        assert_eq!(sse, Ok(Format::Sse.into()));
        let ndjson = negotiate(Some("NDJSON"), ["text/event-stream"]);
        assert_eq!(ndjson, Ok(Format::Ndjson.into()));
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
