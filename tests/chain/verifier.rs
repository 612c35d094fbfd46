//! A SigV4 verifier, written from AWS's description of Signature Version 4
//! (IAM User Guide, "Create a signed AWS API request":
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>),
//! that checks a request the way a Lambda Function URL with `AuthType:
//! AWS_IAM` does before it invokes the function.
//!
//! It shares no code with the signer (`aws-sigv4`): only `hmac`, `sha2` and
//! `hex`, so that a bug in one cannot hide behind the same bug in the other.
//!
//! Beyond the signature itself it checks what Lambda requires of a request
//! that CloudFront signs with Origin Access Control:
//! - the credential scope names the expected region and the service `lambda`;
//! - `X-Amz-Date` is within five minutes of now and on the scope's date;
//! - `host` and `x-amz-date` are signed, and so is `x-amz-content-sha256`
//!   whenever it is sent;
//! - a `POST` or `PUT` carries `x-amz-content-sha256` (Lambda does not take
//!   unsigned payloads:
//!   <https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-restricting-access-to-lambda.html>),
//!   and that header is the SHA-256 of the body actually received.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm SigV4 (not SigV4a) signs with.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last part of every credential scope.
const TERMINATOR: &str = "aws4_request";
/// How far `X-Amz-Date` may be from the verifier's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// What the receiving service expects, and its clock.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The access key id the signer must use, and its secret.
    pub access_key_id: String,
    /// The secret access key of `access_key_id`.
    pub secret_access_key: String,
    /// The region of the endpoint (`us-east-1`).
    pub region: String,
    /// The signing name of the service (`lambda` for a Function URL).
    pub service: String,
    /// The verifier's "now".
    pub now: SystemTime,
}

/// One received request, as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target's path, as sent (percent-encoded once).
    pub path: &'a str,
    /// The request target's query, as sent, without `?`.
    pub query: Option<&'a str>,
    /// All headers, `Host` included.
    pub headers: &'a HeaderMap,
    /// The body bytes actually received.
    pub body: &'a [u8],
}

/// Why a request was refused. Each is a 403 from Lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header, or more than one.
    MissingAuthorization,
    /// `Authorization` is not `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    MalformedAuthorization(String),
    /// The access key is not the expected one.
    UnknownAccessKey,
    /// The scope names another region or service, or is malformed.
    WrongScope(String),
    /// `X-Amz-Date` is missing, malformed, off the scope's date, or too far
    /// from now.
    BadDate(String),
    /// A header that must be signed is not, or a signed header is absent.
    UnsignedHeader(String),
    /// `x-amz-content-sha256` is missing where required, malformed, or not
    /// the SHA-256 of the body received.
    PayloadHash(String),
    /// The signature does not match.
    SignatureMismatch,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAuthorization => {
                write!(
                    f,
                    "Missing Authentication Token: no single Authorization header"
                )
            }
            Self::MalformedAuthorization(why) => write!(f, "Malformed Authorization header: {why}"),
            Self::UnknownAccessKey => write!(
                f,
                "The security token included in the request is invalid (unknown access key)"
            ),
            Self::WrongScope(why) => write!(f, "Credential should be scoped correctly: {why}"),
            Self::BadDate(why) => write!(f, "Signature expired or date invalid: {why}"),
            Self::UnsignedHeader(why) => write!(f, "Header not signed: {why}"),
            Self::PayloadHash(why) => write!(f, "Payload hash refused: {why}"),
            Self::SignatureMismatch => write!(
                f,
                "The request signature we calculated does not match the signature you provided"
            ),
        }
    }
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD` of the scope.
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed header names, as listed.
    pub signed_headers: Vec<String>,
    /// The signature, as 32 bytes.
    pub signature: Vec<u8>,
}

/// Checks `request` against `expected`: `Ok` when Lambda would invoke the
/// function.
pub fn verify(request: &Received<'_>, expected: &Expected) -> Result<(), Refusal> {
    let auth = parse_authorization(request.headers)?;
    if auth.access_key_id != expected.access_key_id {
        return Err(Refusal::UnknownAccessKey);
    }
    if auth.region != expected.region {
        return Err(Refusal::WrongScope(format!(
            "region {:?}, expected {:?}",
            auth.region, expected.region
        )));
    }
    if auth.service != expected.service {
        return Err(Refusal::WrongScope(format!(
            "service {:?}, expected {:?}",
            auth.service, expected.service
        )));
    }

    let amz_date = single_header(request.headers, "x-amz-date")
        .ok_or_else(|| Refusal::BadDate("no single X-Amz-Date header".into()))?;
    let signed_at = parse_amz_date(&amz_date)
        .ok_or_else(|| Refusal::BadDate(format!("{amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'")))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(Refusal::BadDate(format!(
            "X-Amz-Date {amz_date} is not on the credential's date {}",
            auth.date
        )));
    }
    let skew = match expected.now.duration_since(signed_at) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    if skew > MAX_SKEW {
        return Err(Refusal::BadDate(format!(
            "X-Amz-Date {amz_date} is {}s from the server's time (at most {}s)",
            skew.as_secs(),
            MAX_SKEW.as_secs()
        )));
    }

    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(Refusal::UnsignedHeader(format!(
                "{required} must be signed"
            )));
        }
    }
    let content_sha256 = request.headers.get("x-amz-content-sha256");
    if content_sha256.is_some()
        && !auth
            .signed_headers
            .iter()
            .any(|h| h == "x-amz-content-sha256")
    {
        return Err(Refusal::UnsignedHeader(
            "x-amz-content-sha256 is sent, so it must be signed".into(),
        ));
    }
    for name in &auth.signed_headers {
        if !request.headers.contains_key(name.as_str()) {
            return Err(Refusal::UnsignedHeader(format!(
                "{name} is listed in SignedHeaders but not sent"
            )));
        }
    }

    let payload_hash = payload_hash(request)?;
    let canonical = canonical_request(request, &auth.signed_headers, &payload_hash);
    let scope = format!(
        "{}/{}/{}/{TERMINATOR}",
        auth.date, auth.region, auth.service
    );
    let to_sign = string_to_sign(&amz_date, &scope, &canonical);
    let key = signing_key(
        &expected.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
    );
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&auth.signature)
        .map_err(|_| Refusal::SignatureMismatch)
}

/// The payload hash of the canonical request: the `x-amz-content-sha256`
/// header, which must be the SHA-256 of the received body; without the
/// header, a `POST` or `PUT` is refused, and any other method is checked
/// against the SHA-256 of what it sent (nothing: a `GET` signs the hash of
/// the empty payload).
fn payload_hash(request: &Received<'_>) -> Result<String, Refusal> {
    let actual = hex::encode(Sha256::digest(request.body));
    let Some(claimed) = request.headers.get("x-amz-content-sha256") else {
        if request.method == Method::POST || request.method == Method::PUT {
            return Err(Refusal::PayloadHash(format!(
                "a {} must carry x-amz-content-sha256 (unsigned payloads are not supported)",
                request.method
            )));
        }
        return Ok(actual);
    };
    let claimed = claimed
        .to_str()
        .map_err(|_| Refusal::PayloadHash("x-amz-content-sha256 is not ASCII".into()))?;
    let is_hex_digest = claimed.len() == 64
        && claimed
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hex_digest {
        return Err(Refusal::PayloadHash(format!(
            "x-amz-content-sha256 {claimed:?} is not a lowercase hex SHA-256 (unsigned payloads are not supported)"
        )));
    }
    if claimed != actual {
        return Err(Refusal::PayloadHash(format!(
            "x-amz-content-sha256 {claimed} is not the SHA-256 of the {} bytes received ({actual})",
            request.body.len()
        )));
    }
    Ok(actual)
}

/// The value of a header that must appear exactly once, as text.
fn single_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().map(str::to_string)
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request,
/// SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(headers: &HeaderMap) -> Result<Authorization, Refusal> {
    let value = single_header(headers, "authorization").ok_or(Refusal::MissingAuthorization)?;
    let malformed = |why: &str| Refusal::MalformedAuthorization(why.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed("the algorithm must be AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, val) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("components are Key=Value"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(malformed(&format!("unknown component {key:?}"))),
        };
        if slot.replace(val.to_string()).is_some() {
            return Err(malformed(&format!("{key} appears twice")));
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed = signed.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(Refusal::WrongScope(format!(
            "{credential:?} is not key/date/region/service/aws4_request"
        )));
    };
    if terminator != TERMINATOR
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || access_key_id.is_empty()
        || region.is_empty()
        || service.is_empty()
    {
        return Err(Refusal::WrongScope(format!(
            "{credential:?} is not key/YYYYMMDD/region/service/aws4_request"
        )));
    }

    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    let well_formed = signed_headers.iter().all(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
    });
    let sorted_unique = signed_headers.windows(2).all(|w| w[0] < w[1]);
    if !well_formed || !sorted_unique {
        return Err(malformed(
            "SignedHeaders must be lowercase names, sorted, each once, separated by ';'",
        ));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(malformed("Signature must be 64 lowercase hex digits"));
    }
    let signature = hex::decode(&signature).map_err(|_| malformed("Signature is not hex"))?;
    Ok(Authorization {
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature,
    })
}

/// The canonical request:
/// `Method\nCanonicalURI\nCanonicalQuery\nCanonicalHeaders\nSignedHeaders\nHashedPayload`,
/// where CanonicalHeaders is one `name:value\n` line per signed header.
pub fn canonical_request(
    request: &Received<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> String {
    let mut headers = String::new();
    for name in signed_headers {
        // Several fields of one name: their values, comma-separated, each
        // trimmed with inner runs of spaces collapsed.
        let values: Vec<String> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method.as_str(),
        canonical_uri(request.path),
        canonical_query(request.query.unwrap_or("")),
        headers,
        signed_headers.join(";"),
        payload_hash
    )
}

/// The string to sign: algorithm, request date, credential scope and the
/// hex SHA-256 of the canonical request, one per line.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hashed = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hashed}")
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, TERMINATOR.as_bytes())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Services other than S3 sign each path segment URI-encoded twice: the
/// path arrives encoded once, so each of its segments is encoded once more
/// (`%20` becomes `%2520`). An empty path is `/`.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|segment| uri_encode(segment.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Each parameter's name and value decoded, then URI-encoded, sorted by
/// name and then value, and joined as `name=value` with `&`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(name)),
                uri_encode(&percent_decode(value)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// AWS's UriEncode: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` as
/// `%XY` with uppercase hex.
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XY` escapes (and `+` as a space, as form encoding does); a `%`
/// without two hex digits stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
        match bytes[i] {
            b'%' => match (hex_at(i + 1), hex_at(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).expect("two hex digits fit a byte"));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Trims a header value and collapses each run of spaces into one.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses ISO 8601 basic format `YYYYMMDD'T'HHMMSS'Z'` (UTC).
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar:
/// whole years, with their leap days, then whole months of this year.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let leap_days_before = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let years = (year - 1970) * 365 + leap_days_before(year) - leap_days_before(1970);
    let months: i64 = (1..month).map(|m| days_in_month(year, m)).sum();
    years + months + day - 1
}

/// The verifier, proved on AWS's published examples (each reproduced to the
/// last digit, which a mistyped vector could not be) and on requests changed
/// after signing.
#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The example secret of the General Reference and of the SigV4 test
    /// suite.
    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// The S3 API Reference's example secret: one character differs (`/`
    /// for `+`), and only it reproduces that page's signatures.
    const S3_EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    /// An owned request to change and verify.
    #[derive(Clone)]
    struct Req {
        method: Method,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Req {
        fn new(method: Method, target: &str, headers: &[(&str, &str)]) -> Self {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.to_string(), None),
            };
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            Self {
                method,
                path,
                query,
                headers: map,
                body: Vec::new(),
            }
        }

        fn received(&self) -> Received<'_> {
            Received {
                method: &self.method,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                body: &self.body,
            }
        }

        fn set(&mut self, name: &'static str, value: &str) {
            self.headers
                .insert(name, HeaderValue::from_str(value).unwrap());
        }
    }

    use axum::http::HeaderName;

    fn expected(key: &str, service: &str, at: &str) -> Expected {
        Expected {
            access_key_id: key.into(),
            secret_access_key: EXAMPLE_SECRET.into(),
            region: "us-east-1".into(),
            service: service.into(),
            now: parse_amz_date(at).unwrap(),
        }
    }

    /// IAM `ListUsers`, the worked example of AWS's General Reference
    /// ("Signature Version 4 signing process", tasks 1 to 3): canonical
    /// request hash f536975d…, signature 5d672d79….
    fn list_users() -> (Req, Expected) {
        let req = Req::new(
            Method::GET,
            "/?Action=ListUsers&Version=2010-05-08",
            &[
                ("host", "iam.amazonaws.com"),
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                     SignedHeaders=content-type;host;x-amz-date, \
                     Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
                ),
            ],
        );
        (req, expected("AKIDEXAMPLE", "iam", "20150830T123600Z"))
    }

    /// S3 `GetObject` from the S3 API Reference ("Signature Calculations for
    /// the Authorization Header: Transferring Payload in a Single Chunk"), a
    /// request that signs `x-amz-content-sha256`: canonical request hash
    /// 7344ae5b…, signature f0e8bdb8….
    fn get_object() -> (Req, Expected) {
        let req = Req::new(
            Method::GET,
            "/test.txt",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                (
                    "x-amz-content-sha256",
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ),
                ("x-amz-date", "20130524T000000Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
                     SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
                     Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                ),
            ],
        );
        let exp = Expected {
            secret_access_key: S3_EXAMPLE_SECRET.into(),
            ..expected("AKIAIOSFODNN7EXAMPLE", "s3", "20130524T000000Z")
        };
        (req, exp)
    }

    /// `get-vanilla-query-order-key-case` of AWS's SigV4 test suite:
    /// parameters sent out of order are signed sorted.
    fn query_order() -> (Req, Expected) {
        let req = Req::new(
            Method::GET,
            "/?Param2=value2&Param1=value1",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
                ),
            ],
        );
        (req, expected("AKIDEXAMPLE", "service", "20150830T123600Z"))
    }

    fn hashed_canonical(req: &Req) -> String {
        let auth = parse_authorization(&req.headers).unwrap();
        let payload = req.headers.get("x-amz-content-sha256").map_or_else(
            || hex::encode(Sha256::digest(&req.body)),
            |h| h.to_str().unwrap().to_string(),
        );
        let canonical = canonical_request(&req.received(), &auth.signed_headers, &payload);
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }

    #[test]
    fn aws_documented_examples_verify() {
        let (req, exp) = list_users();
        assert_eq!(
            hashed_canonical(&req),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(verify(&req.received(), &exp), Ok(()));

        let (req, exp) = get_object();
        assert_eq!(
            hashed_canonical(&req),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(verify(&req.received(), &exp), Ok(()));

        let (req, exp) = query_order();
        assert_eq!(verify(&req.received(), &exp), Ok(()));
    }

    #[test]
    fn aws_documented_string_to_sign_and_key() {
        let (req, _) = list_users();
        let auth = parse_authorization(&req.headers).unwrap();
        let canonical = canonical_request(
            &req.received(),
            &auth.signed_headers,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        let to_sign = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/iam/aws4_request",
            &canonical,
        );
        assert_eq!(
            to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
             f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let key = signing_key(EXAMPLE_SECRET, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex::encode(hmac(&key, to_sign.as_bytes())),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// Each change after signing, and what it is refused as.
    #[test]
    fn changed_requests_are_refused() {
        let mismatch = Some(Refusal::SignatureMismatch);
        type Change = fn(&mut Req, &mut Expected);
        let cases: Vec<(&str, Change, Option<Refusal>)> = vec![
            ("nothing", |_, _| {}, None),
            (
                "the parameters' order (signed sorted)",
                |r, _| r.query = Some("Version=2010-05-08&Action=ListUsers".into()),
                None,
            ),
            (
                "the secret",
                |_, e| e.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEX".into(),
                mismatch.clone(),
            ),
            (
                "a signed header",
                |r, _| r.set("content-type", "application/json"),
                mismatch.clone(),
            ),
            (
                "a query value",
                |r, _| r.query = Some("Action=ListUsers&Version=2010-05-09".into()),
                mismatch.clone(),
            ),
            (
                "an added query parameter",
                |r, _| r.query = Some("Action=ListUsers&Version=2010-05-08&Marker=x".into()),
                mismatch.clone(),
            ),
            (
                "the path",
                |r, _| r.path = "/users".into(),
                mismatch.clone(),
            ),
            (
                "the method",
                |r, _| r.method = Method::DELETE,
                mismatch.clone(),
            ),
            (
                "one digit of the signature",
                |r, _| {
                    let auth = r.headers["authorization"]
                        .to_str()
                        .unwrap()
                        .replace("5d672d79", "5d672d78");
                    r.set("authorization", &auth);
                },
                mismatch.clone(),
            ),
            (
                "the expected service",
                |_, e| e.service = "lambda".into(),
                Some(Refusal::WrongScope(
                    "service \"iam\", expected \"lambda\"".into(),
                )),
            ),
            (
                "the expected region",
                |_, e| e.region = "eu-west-1".into(),
                Some(Refusal::WrongScope(
                    "region \"us-east-1\", expected \"eu-west-1\"".into(),
                )),
            ),
            (
                "the access key",
                |_, e| e.access_key_id = "AKIDOTHER".into(),
                Some(Refusal::UnknownAccessKey),
            ),
            (
                "the clock, 4 minutes on",
                |_, e| e.now += Duration::from_secs(240),
                None,
            ),
            (
                "the clock, 6 minutes on",
                |_, e| e.now += Duration::from_secs(360),
                Some(Refusal::BadDate(
                    "X-Amz-Date 20150830T123600Z is 360s from the server's time (at most 300s)"
                        .into(),
                )),
            ),
            (
                "the clock, 6 minutes back",
                |_, e| e.now -= Duration::from_secs(360),
                Some(Refusal::BadDate(
                    "X-Amz-Date 20150830T123600Z is 360s from the server's time (at most 300s)"
                        .into(),
                )),
            ),
            (
                "no Authorization",
                |r, _| {
                    r.headers.remove("authorization");
                },
                Some(Refusal::MissingAuthorization),
            ),
            (
                "host left unsigned",
                |r, _| {
                    let auth = r.headers["authorization"]
                        .to_str()
                        .unwrap()
                        .replace("content-type;host;x-amz-date", "content-type;x-amz-date");
                    r.set("authorization", &auth);
                },
                Some(Refusal::UnsignedHeader("host must be signed".into())),
            ),
            (
                "a signed header not sent",
                |r, _| {
                    r.headers.remove("content-type");
                },
                Some(Refusal::UnsignedHeader(
                    "content-type is listed in SignedHeaders but not sent".into(),
                )),
            ),
            (
                "a POST without x-amz-content-sha256",
                |r, _| r.method = Method::POST,
                Some(Refusal::PayloadHash(
                    "a POST must carry x-amz-content-sha256 (unsigned payloads are not supported)"
                        .into(),
                )),
            ),
        ];
        for (what, change, refusal) in cases {
            let (mut req, mut exp) = list_users();
            change(&mut req, &mut exp);
            assert_eq!(
                verify(&req.received(), &exp).err(),
                refusal,
                "changing {what}"
            );
        }
    }

    #[test]
    fn the_payload_must_be_the_hashed_one() {
        let (mut req, exp) = get_object();
        req.body = b"x".to_vec();
        let err = verify(&req.received(), &exp).unwrap_err();
        assert!(
            matches!(&err, Refusal::PayloadHash(m) if m.contains("not the SHA-256 of the 1 bytes received")),
            "{err}"
        );

        // The body and its hash changed together: the signature covers the hash.
        req.set("x-amz-content-sha256", &hex::encode(Sha256::digest(b"x")));
        assert_eq!(
            verify(&req.received(), &exp),
            Err(Refusal::SignatureMismatch)
        );

        let (mut req, exp) = get_object();
        req.set("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
        let err = verify(&req.received(), &exp).unwrap_err();
        assert!(matches!(err, Refusal::PayloadHash(_)), "{err}");

        // Sent but not signed.
        let (mut req, exp) = query_order();
        req.set(
            "x-amz-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        assert_eq!(
            verify(&req.received(), &exp),
            Err(Refusal::UnsignedHeader(
                "x-amz-content-sha256 is sent, so it must be signed".into()
            ))
        );
    }

    #[test]
    fn amz_dates() {
        let at =
            |s: &str| parse_amz_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("19700101T000000Z"), Some(0));
        assert_eq!(at("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(at("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(at("20240229T235959Z"), Some(1_709_251_199));
        for bad in [
            "20230229T000000Z",
            "20150830T123600",
            "20150830 123600Z",
            "20151330T000000Z",
            "20150830T246000Z",
            "2015-08-30T12:36:00Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn uri_and_query_encoding() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a%20b/c~d"), "/a%2520b/c~d");
        assert_eq!(
            canonical_query("b=2&a=J%C3%BCrgen&a=%41&c&q=a+b%2Fc"),
            "a=A&a=J%C3%BCrgen&b=2&c=&q=a%20b%2Fc"
        );
    }
}
