//! `malformed`: a corpus of malformed and smuggling requests, each sent on
//! a connection of its own, each with the status RFC 9110/9112 (and the
//! gateway's README) give it and whether the connection must then close.
//! The attacker's bytes carry a marker that must never come back.
//!
//! Passes when every case is answered as expected, nothing is echoed, the
//! log has no panic, and the gateway still serves. At full scale the whole
//! corpus is sent [`Params::rounds`] times, [`Params::concurrency`] cases
//! at once, and every round must answer alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Target, first_event, mib};
use crate::client::{self, End, Tune};
use crate::error::Error;
use crate::gateway::Config;
use crate::probe;
use crate::{Options, Report, Scale};

/// In every attacking request, where an echo would show.
const MARKER: &str = "ATTACKECHO";

/// The scenario's parameters.
#[derive(Debug, Serialize)]
struct Params {
    /// Times the corpus is sent.
    rounds: usize,
    /// Cases in flight at once.
    concurrency: usize,
    /// `server.head_timeout`, short so that a head the gateway waits on
    /// ends soon (as 408, which no case expects).
    #[serde(with = "humantime_serde")]
    head_timeout: Duration,
    /// Longest a case may take to be answered and closed.
    #[serde(with = "humantime_serde")]
    answer_within: Duration,
    /// After a whole answer, how long to wait for a close.
    #[serde(with = "humantime_serde")]
    linger: Duration,
}

impl Params {
    fn at(scale: Scale) -> Self {
        let (rounds, concurrency) = match scale {
            Scale::Small => (1, 16),
            Scale::Full => (100, 64),
        };
        Self {
            rounds,
            concurrency,
            head_timeout: Duration::from_secs(2),
            answer_within: Duration::from_secs(6),
            linger: Duration::from_millis(300),
        }
    }
}

/// What a case must get.
#[derive(Clone, Copy, Debug, Serialize)]
struct Expect {
    /// The first answer's status, one of these; empty: no answer at all.
    status: &'static [u16],
    /// The statuses of the answers after the first (pipelined cases).
    more: &'static [u16],
    /// Whether the connection must be closed after it (`None`: either).
    close: Option<bool>,
}

const fn answer(status: &'static [u16]) -> Expect {
    Expect {
        status,
        more: &[],
        close: None,
    }
}

const fn closing(status: &'static [u16]) -> Expect {
    Expect {
        status,
        more: &[],
        close: Some(true),
    }
}

/// One malformed request.
#[derive(Debug)]
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// Why that is the right answer.
    why: &'static str,
}

fn case(name: &'static str, text: &str, expect: Expect, why: &'static str) -> Case {
    Case {
        name,
        bytes: text.replace("{M}", MARKER).into_bytes(),
        expect,
        why,
    }
}

/// The corpus. `/tick` is a GET stream route, `/post` a route that reads a
/// JSON body, `/healthz` the gateway's own.
fn corpus() -> Vec<Case> {
    let long_method = "M".repeat(10_000) + MARKER;
    let long_target = format!("/tick?{MARKER}{}", "q".repeat(9_000));
    let huge_target = format!("/tick?{MARKER}{}", "q".repeat(40_000));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: {MARKER}\r\n")).collect();
    let mut cases = vec![
        case(
            "no Host",
            "GET /healthz HTTP/1.1\r\nX-A: {M}\r\n\r\n",
            answer(&[400]),
            "RFC 9112 3.2: a request without Host is 400",
        ),
        case(
            "two Hosts",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: {M}\r\n\r\n",
            answer(&[400]),
            "RFC 9112 3.2: more than one Host is 400",
        ),
        case(
            "malformed Host",
            "GET /healthz HTTP/1.1\r\nHost: a b{M}\r\n\r\n",
            answer(&[400]),
            "RFC 9112 3.2: an invalid Host is 400",
        ),
        case(
            "gzip, chunked",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n{M}\r\n0\r\n\r\n",
            closing(&[501]),
            "RFC 9112 6.1: an unknown transfer coding is 501, then close",
        ),
        case(
            "identity coding",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9112 6.3: a request whose last coding is not chunked has no reliable length: 400, then close",
        ),
        case(
            "xchunked coding",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9112 6.3: the last coding is not chunked",
        ),
        case(
            "chunked twice",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            closing(&[400]),
            "RFC 9112 7: chunked applied more than once is 400, then close",
        ),
        case(
            "Content-Length then Transfer-Encoding",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz?{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            closing(&[400]),
            "RFC 9112 6.1: both framing headers may be a smuggling attempt: 400 and close, the rest not read as a request",
        ),
        case(
            "Transfer-Encoding then Content-Length",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /healthz?{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            closing(&[400]),
            "as above, in the other order",
        ),
        case(
            "space before colon",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            closing(&[400]),
            "RFC 9112 5.1: whitespace between a field name and colon is 400",
        ),
        case(
            "obs-fold",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n {M}\r\n\r\n",
            closing(&[400]),
            "RFC 9112 5.2: obs-fold outside message/http is 400",
        ),
        case(
            "long method",
            &format!("{long_method} /tick HTTP/1.1\r\nHost: a\r\n\r\n"),
            answer(&[501]),
            "RFC 9110 9.1: a method the server does not implement is 501",
        ),
        case(
            "17-byte method",
            "ABCDEFGHIJKLMNOPQ /tick HTTP/1.1\r\nHost: a\r\n\r\n",
            answer(&[501]),
            "the gateway implements no method over 16 bytes",
        ),
        case(
            "unknown method",
            "BREW /tick HTTP/1.1\r\nHost: a\r\n\r\n",
            answer(&[405]),
            "RFC 9110 15.5.6: a method the route does not allow is 405",
        ),
        case(
            "long target",
            &format!("GET {long_target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            answer(&[414]),
            "RFC 9110 15.5.15: a target over 8 KiB is 414",
        ),
        case(
            "target over max_head_bytes",
            &format!("GET {huge_target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            closing(&[414, 431]),
            "a head over 32 KiB is refused whole (431), or its target first (414)",
        ),
        case(
            "bad chunk size",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{M}\r\n0\r\n\r\n",
            closing(&[400]),
            "RFC 9112 7.1: a chunk size must be hex: the body is malformed",
        ),
        case(
            "chunk size overflow",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{M}\r\n0\r\n\r\n",
            closing(&[400, 413]),
            "a chunk size beyond 64 bits is malformed (or over max_body_bytes)",
        ),
        case(
            "chunk without its CRLF",
            "POST /post HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}X{M}\r\n0\r\n\r\n",
            closing(&[400]),
            "RFC 9112 7.1: chunk data is followed by CRLF",
        ),
        case(
            "NUL in a header value",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\0{M}\r\n\r\n",
            closing(&[400]),
            "RFC 9110 5.5: NUL is not allowed in a field value",
        ),
        case(
            "NUL in a header name",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-\0{M}: b\r\n\r\n",
            closing(&[400]),
            "RFC 9110 5.1: a field name is a token",
        ),
        case(
            "bare CR in a header value",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r{M}\r\n\r\n",
            closing(&[400]),
            "RFC 9112 2.2: a bare CR is rejected",
        ),
        case(
            "HTTP/0.9",
            "GET /healthz?{M}\r\n\r\n",
            closing(&[400, 505]),
            "RFC 9112 2.3: no version is not HTTP/1.x",
        ),
        case(
            "HTTP/1.2",
            "GET /healthz?{M} HTTP/1.2\r\nHost: a\r\n\r\n",
            closing(&[400, 505]),
            "RFC 9112 2.3: an unsupported minor version",
        ),
        case(
            "HTTP/2.0 as text",
            "GET /healthz?{M} HTTP/2.0\r\nHost: a\r\n\r\n",
            closing(&[400, 505]),
            "RFC 9112 2.3: HTTP/2 does not use this syntax",
        ),
        case(
            "bare LF line ends",
            "GET /healthz HTTP/1.1\nHost: a\nX-A: {M}\n\n",
            answer(&[200]),
            "RFC 9112 2.2: a recipient MAY take a bare LF as a line end",
        ),
        case(
            "huge Content-Length",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9112 6.3: an invalid Content-Length is unrecoverable",
        ),
        case(
            "Content-Length over max_body_bytes",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{M}",
            answer(&[413]),
            "README: a declared body over 1 MiB is 413 before it is read",
        ),
        case(
            "negative Content-Length",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9112 6.3: an invalid Content-Length",
        ),
        case(
            "two Content-Lengths",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9112 6.3: differing Content-Lengths",
        ),
        case(
            "Content-Length with a sign",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n{M}",
            closing(&[400]),
            "RFC 9110 8.6: Content-Length is 1*DIGIT",
        ),
        case(
            "double space in the request line",
            "GET  /healthz?{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            closing(&[400]),
            "RFC 9112 3: one SP between the parts",
        ),
        case(
            "non-ASCII (UTF-8) target",
            "GET /\u{ff}{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            answer(&[400]),
            "RFC 9112 3.2 and RFC 3986: a target is ASCII; a server SHOULD answer an invalid request line 400",
        ),
        case(
            "header line without a colon",
            "GET /healthz HTTP/1.1\r\nHost: a\r\n{M}\r\n\r\n",
            closing(&[400]),
            "RFC 9112 5: field-name \":\" field-value",
        ),
        case(
            "space in a header name",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nBad {M}: x\r\n\r\n",
            closing(&[400]),
            "RFC 9110 5.1: a field name is a token",
        ),
        case(
            "200 headers",
            &format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n"),
            closing(&[431]),
            "RFC 6585 5: more header fields than the server takes (hyper: 100)",
        ),
        case(
            "TLS ClientHello",
            "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}\u{1}\u{fc}\u{3}\u{3}{M}\r\n\r\n",
            closing(&[400]),
            "not HTTP at all",
        ),
        case(
            "NUL before the method",
            "\0GET /healthz?{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            closing(&[400]),
            "a method is a token",
        ),
        case(
            "absolute-form target",
            "GET http://elsewhere.example/healthz?{M} HTTP/1.1\r\nHost: a\r\n\r\n",
            answer(&[200]),
            "RFC 9112 3.2.2: a server MUST accept the absolute form",
        ),
        case(
            "GET with a body",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{M}",
            answer(&[200]),
            "a GET body has no meaning, but is allowed and read past",
        ),
        case(
            "100-continue over max_body_bytes",
            "POST /post HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
            answer(&[413]),
            "RFC 9110 10.1.1: the server may refuse before the body",
        ),
        case(
            "h2c upgrade",
            "GET /healthz?{M} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
            answer(&[200]),
            "RFC 9110 7.8: a server may ignore Upgrade",
        ),
        case(
            "HTTP/2 preface then garbage",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{M}{M}{M}",
            closing(&[]),
            "HTTP/2 with prior knowledge: a bad first frame is a connection error (GOAWAY), no HTTP/1 status",
        ),
    ];
    cases.push(Case {
        name: "byte 0xFF in the target",
        bytes: [
            &b"GET /\xff"[..],
            MARKER.as_bytes(),
            b" HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat(),
        expect: closing(&[400]),
        why: "RFC 9112 3.2: not even UTF-8",
    });
    cases.push(Case {
        name: "pipelined: a good request, then no Host",
        bytes: format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz?{MARKER} HTTP/1.1\r\n\r\n"
        )
        .into_bytes(),
        expect: Expect {
            status: &[200],
            more: &[400],
            close: None,
        },
        why: "RFC 9112 9.3.2: pipelined requests are answered in order; the second is 400",
    });
    cases
}

/// What one case got.
#[derive(Debug, Clone, Serialize)]
struct Got {
    statuses: Vec<u16>,
    end: End,
    echoed: bool,
}

impl Got {
    fn as_expected(&self, expect: &Expect) -> bool {
        let status_ok = match self.statuses.split_first() {
            Some((first, more)) => expect.status.contains(first) && more == expect.more,
            None => expect.status.is_empty(),
        };
        let close_ok = match expect.close {
            Some(true) => self.end != End::Open,
            Some(false) => self.end == End::Open,
            None => true,
        };
        status_ok && close_ok && !self.echoed
    }
}

/// Every status line in `bytes`.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = bytes[at..]
        .windows(9)
        .position(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")
    {
        let start = at + i;
        if let Some(status) = client::status_of(&bytes[start..]) {
            found.push(status);
        }
        at = start + 9;
    }
    found
}

pub(super) async fn run(options: &Options, report: &mut Report) -> Result<(), Error> {
    let params = Params::at(options.scale);
    report.settings = serde_json::to_value(&params).unwrap_or_default();
    let config = Config::new()
        .server(
            "head_timeout",
            format!("{}ms", params.head_timeout.as_millis()).as_str(),
        )
        .route("tick", "/tick", "", "type = \"ticker\"\ninterval = \"1s\"")
        .route(
            "post",
            "/post",
            "methods = [\"GET\", \"POST\"]",
            "type = \"demo\"\ntokens = [\"a\"]\nstart_pause = \"0s\"\ntoken_pause = \"0s\"",
        );
    let label = "malformed";
    let target = Target::start(options, report, label, &config).await?;
    let gateway = &target.gateway;
    let before = probe::sample(gateway.pid, report.origin());
    let cases = Arc::new(corpus());
    let limit = Arc::new(Semaphore::new(params.concurrency));
    let mut set = JoinSet::new();
    for round in 0..params.rounds {
        for index in 0..cases.len() {
            let permit = Arc::clone(&limit)
                .acquire_owned()
                .await
                .map_err(|_| Error::Unexpected("semaphore closed".into()))?;
            let cases = Arc::clone(&cases);
            let (addr, within, linger) = (gateway.addr, params.answer_within, params.linger);
            let from = client::source(round * cases.len() + index, 8);
            set.spawn(async move {
                let _permit = permit;
                let got = send(addr, from, &cases[index].bytes, within, linger).await;
                (index, got)
            });
        }
    }
    let mut seen: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); cases.len()];
    let mut wrong: Vec<usize> = vec![0; cases.len()];
    let mut example: Vec<Option<Got>> = vec![None; cases.len()];
    while let Some(done) = set.join_next().await {
        let Ok((index, got)) = done else { continue };
        let key = format!(
            "{:?} {:?}{}",
            got.statuses,
            got.end,
            if got.echoed { " ECHOED" } else { "" }
        );
        *seen[index].entry(key).or_default() += 1;
        if !got.as_expected(&cases[index].expect) {
            wrong[index] += 1;
        }
        example[index].get_or_insert(got);
    }
    let after = probe::sample(gateway.pid, report.origin());
    let served = first_event(
        gateway,
        client::source(9, 10),
        "/tick",
        Duration::from_secs(5),
    )
    .await;

    let mut table = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let passed = wrong[index] == 0 && !seen[index].is_empty();
        report.check(
            format!("{label}: {}", case.name),
            passed,
            format!(
                "expected {:?}{}{}, got {}",
                case.expect.status,
                match case.expect.close {
                    Some(true) => " and closed",
                    Some(false) => " kept open",
                    None => "",
                },
                if case.expect.more.is_empty() {
                    String::new()
                } else {
                    format!(" then {:?}", case.expect.more)
                },
                seen[index]
                    .iter()
                    .map(|(k, n)| format!("{k} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        table.push(json!({
            "case": case.name,
            "expected": case.expect,
            "got": seen[index],
            "wrong": wrong[index],
            "why": case.why,
        }));
    }
    let echoed: usize = example.iter().flatten().filter(|g| g.echoed).count();
    report.check(
        format!("{label}: no answer echoes the attacker's bytes"),
        echoed == 0,
        format!("{echoed} cases echoed {MARKER}"),
    );
    report.check(
        format!("{label}: the gateway still serves afterwards"),
        served.is_ok(),
        format!("{served:?}"),
    );
    report.figure("cases", table);
    report.figure(
        "rss_mib",
        json!({
            "before": before.map(|s| mib(s.rss_kib)),
            "after": after.map(|s| mib(s.rss_kib)),
            "peak": after.map(|s| mib(s.hwm_kib)),
        }),
    );
    report.figure("requests", params.rounds * cases.len());
    target.finish(report);
    Ok(())
}

/// Sends one case on a connection of its own and reads what comes back.
async fn send(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    bytes: &[u8],
    within: Duration,
    linger: Duration,
) -> Got {
    let mut tcp = match client::connect(addr, from, Tune::default()).await {
        Ok(tcp) => tcp,
        Err(_) => {
            return Got {
                statuses: Vec::new(),
                end: End::Open,
                echoed: false,
            };
        }
    };
    // The gateway may close before it has read everything: that write
    // fails, and what it answered is still read.
    let _ = tcp.write_all(bytes).await;
    let answer = client::read_answer(&mut tcp, within, linger).await;
    Got {
        statuses: statuses(&answer.bytes),
        end: answer.end,
        echoed: answer.contains(MARKER.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_line_is_found() {
        let bytes =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 400 Bad Request\r\n\r\n";
        assert_eq!(statuses(bytes), vec![200, 400]);
        assert_eq!(statuses(b""), Vec::<u16>::new());
    }

    #[test]
    fn every_case_carries_the_marker_or_needs_none() {
        for case in corpus() {
            let text = String::from_utf8_lossy(&case.bytes);
            assert!(!text.contains("{M}"), "{}", case.name);
        }
    }
}
