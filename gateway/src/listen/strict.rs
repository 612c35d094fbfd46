//! What hyper lets through and HTTP/1.1 does not: each refused with the
//! status RFC 9110/9112 names, and without echoing the offending value.
//!
//! hyper already refuses what it cannot parse (`400`: obs-fold, bad header
//! names or values, a bad `Content-Length`; `431`: a head over
//! `max_head_bytes`; `414`: a target over 64 KiB), without a body. These are
//! the rest, answered as every other error, with a JSON body:
//!
//! | what | status |
//! |---|---|
//! | `Content-Length` and `Transfer-Encoding` in one head | 400, connection closed |
//! | HTTP/1.1 without `Host`, with two, or with a malformed one | 400 |
//! | a transfer coding before `chunked` (`gzip, chunked`) | 501, connection closed |
//! | a last transfer coding other than `chunked` | 400 (hyper: the length is unknown), closed |
//! | `chunked` twice | 400, connection closed |
//! | a method longer than [`MAX_METHOD_BYTES`] | 501 |
//! | a target with bytes other than visible ASCII (raw UTF-8) | 400 |
//! | a target longer than [`MAX_TARGET_BYTES`] | 414 |

use axum::http::uri::Authority;
use axum::http::{HeaderValue, Request, StatusCode, Version, header};

use crate::error::ApiError;

/// Longest request target: what CloudFront accepts in a URL.
pub const MAX_TARGET_BYTES: usize = 8192;
/// Longest method: the standard ones have at most 7 letters; a longer token
/// is no method this gateway implements.
pub const MAX_METHOD_BYTES: usize = 16;

/// Refuses what HTTP/1.1 does not allow; `smuggling` says the request's
/// connection sent a head with both framing headers.
pub(crate) fn check<B>(request: &Request<B>, smuggling: bool) -> Result<(), ApiError> {
    let close =
        |error: ApiError| error.with_header(header::CONNECTION, HeaderValue::from_static("close"));
    if smuggling {
        return Err(close(ApiError::bad_request(
            "Content-Length and Transfer-Encoding in one request: its length is ambiguous",
        )));
    }
    if request.method().as_str().len() > MAX_METHOD_BYTES {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "the request method is not one this gateway implements",
        ));
    }
    let uri = request.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let ascii = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().bytes().all(|b| b.is_ascii_graphic()));
    if !ascii {
        return Err(ApiError::bad_request(
            "the request target must be ASCII: percent-encode other characters",
        ));
    }
    if target > MAX_TARGET_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_TARGET_BYTES} bytes"),
        ));
    }
    let headers = request.headers();
    if request.version() == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return Err(ApiError::bad_request("an HTTP/1.1 request needs a Host")),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("the request has more than one Host"));
            }
            (Some(host), None) => {
                if !host.is_empty() && Authority::try_from(host.as_bytes()).is_err() {
                    return Err(ApiError::bad_request("the request's Host is malformed"));
                }
            }
        }
    }
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let value = value.to_str().unwrap_or("\u{fffd}");
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(close(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    "the only transfer coding accepted is chunked",
                )));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(close(ApiError::bad_request(
            "chunked may be applied once only",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status(request: &Request<()>) -> Option<u16> {
        check(request, false).err().map(|e| e.status().as_u16())
    }

    #[test]
    fn host_is_required_once_and_well_formed_on_http_1_1_only() {
        assert_eq!(
            status(&request(Version::HTTP_11, &[("host", "a.example:8080")])),
            None
        );
        assert_eq!(status(&request(Version::HTTP_11, &[])), Some(400));
        assert_eq!(
            status(&request(Version::HTTP_11, &[("host", "a"), ("host", "b")])),
            Some(400)
        );
        assert_eq!(
            status(&request(Version::HTTP_11, &[("host", "a b")])),
            Some(400)
        );
        // RFC 9112, section 3.2: an empty Host is allowed (no authority).
        assert_eq!(status(&request(Version::HTTP_11, &[("host", "")])), None);
        assert_eq!(status(&request(Version::HTTP_10, &[])), None);
        assert_eq!(status(&request(Version::HTTP_2, &[])), None);
    }

    #[test]
    fn only_chunked_once_is_a_transfer_coding() {
        let host = ("host", "a");
        let with = |te: &str| {
            status(&request(
                Version::HTTP_11,
                &[host, ("transfer-encoding", te)],
            ))
        };
        assert_eq!(with("chunked"), None);
        assert_eq!(with("Chunked"), None);
        assert_eq!(with("gzip, chunked"), Some(501));
        assert_eq!(with("identity"), Some(501));
        assert_eq!(with("chunked, chunked"), Some(400));
        let error = check(
            &request(
                Version::HTTP_11,
                &[host, ("transfer-encoding", "gzip, chunked")],
            ),
            false,
        )
        .unwrap_err();
        let response = axum::response::IntoResponse::into_response(error);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn long_methods_and_targets_are_refused_without_an_echo() {
        let method = "A".repeat(10_000);
        let request = Request::builder()
            .method(method.as_str())
            .uri("/")
            .header("host", "a")
            .body(())
            .unwrap();
        let error = check(&request, false).unwrap_err();
        assert_eq!(error.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(!format!("{error:?}").contains("AAAA"));

        let long = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        let request = Request::get(long.as_str())
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(status(&request), Some(414));
        let fits = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        let request = Request::get(fits.as_str())
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(status(&request), None);
    }

    #[test]
    fn a_target_is_visible_ascii() {
        let request = |target: &str| {
            Request::get(axum::http::Uri::try_from(target.as_bytes()).unwrap())
                .header("host", "a")
                .body(())
                .unwrap()
        };
        assert_eq!(status(&request("/a%C3%BF?q=%20")), None);
        assert_eq!(status(&request("/\u{ff}")), Some(400));
    }

    #[test]
    fn a_smuggling_connection_is_refused_and_closed() {
        let error = check(&request(Version::HTTP_11, &[("host", "a")]), true).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let response = axum::response::IntoResponse::into_response(error);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
