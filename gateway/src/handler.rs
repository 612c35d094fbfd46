//! The request path of a stream: match, check, negotiate, open, respond.
//!
//! Everything that can fail is done before the status is sent, so that it
//! can still be a real status with a JSON body: unknown path (404), method
//! (405), credential (401, 403; see [`crate::auth`]), format (406, or 400 for a bad `?format=`), shutdown or full (503),
//! body too large (413) or not JSON (400), a `Last-Event-ID` that is not this
//! route's (400), and every backend's `open`. After that, the stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backends::publish::Publication;
use backends::{JsonBody, RequestContext, Shown};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use tracing::Instrument;

use crate::auth::Presented;
use crate::clients::{self, Peer, Slot};
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::fanin;
use crate::metrics::{self, Refused};
use crate::negotiate::{self, Negotiated, Refusal};
use crate::route::Route;
use crate::server::{Gateway, PublishRoute};
use crate::session::Session;

/// The reference's header naming the public host, from CloudFront's copy of
/// the viewer's `Host`.
const ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-original-host");
const REQUEST_HOST: HeaderName = HeaderName::from_static("x-request-host");
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const CLOUDFRONT_ID: HeaderName = HeaderName::from_static("x-amz-cf-id");
/// The durable job a stream reads (see [`backends::durable`]).
pub const JOB_ID: HeaderName = HeaderName::from_static("gateway-job-id");
/// Query parameter that can carry `Last-Event-ID` (for clients that cannot
/// set headers on a reconnect, as `EventSource` polyfills cannot).
const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// Answers every request that is not `/healthz`. Every answer names its
/// request id (`X-Request-Id`), and every log line of the request, its
/// stream's included, carries it.
pub async fn dispatch(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let id = request_id(&gateway, request.headers(), request.extensions());
    let span = tracing::info_span!("request", request_id = %id);
    // A route open to other origins answers their preflights, and adds the
    // CORS headers to its answers (errors included).
    let metrics_of = Arc::clone(&gateway);
    let cors = gateway
        .routes
        .at(request.uri().path())
        .ok()
        .and_then(|matched| matched.value.cors.clone());
    let response = match cors {
        None => answer(Arc::clone(&gateway), request).instrument(span).await,
        Some(cors) => {
            let inner = tower::service_fn(move |request: Request| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, std::convert::Infallible>(answer(gateway, request).await) }
            });
            match cors.layer(inner).oneshot(request).instrument(span).await {
                Ok(response) => only_for_allowed_origins(response),
                Err(never) => match never {},
            }
        }
    };
    finish(&metrics_of, id, response)
}

/// 405 for `method`, naming the methods `allow`ed (also in `Allow`).
pub(crate) fn method_not_allowed(method: &Method, allow: String) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here; use {allow}"),
    )
    .with_header(
        header::ALLOW,
        HeaderValue::try_from(allow).unwrap_or(HeaderValue::from_static("GET")),
    )
}

/// The CORS layer adds `Access-Control-Allow-Credentials`,
/// `-Expose-Headers` (and a preflight's `-Allow-Methods`, `-Allow-Headers`,
/// `-Max-Age`) whatever the origin; an answer to an origin it did not allow
/// (no `Access-Control-Allow-Origin`) keeps none of them: a page of another
/// origin learns nothing of the route's CORS settings.
fn only_for_allowed_origins(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}

/// `/healthz`'s answer named by the request's id, as every other answer.
pub(crate) fn identified(gateway: &Gateway, request: &Request, response: Response) -> Response {
    let id = request_id(gateway, request.headers(), request.extensions());
    with_request_id(id, response)
}

/// Answers a request refused before it reached a route (by the listener's
/// checks or limits) as every other error: a JSON body, the request id, a
/// log line, counted.
pub(crate) fn refuse(
    gateway: &Gateway,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    error: ApiError,
) -> Response {
    let id = request_id(gateway, headers, extensions);
    let status = error.status().as_u16();
    tracing::info!(request_id = %id, status, "Request refused: {}", error.message());
    finish(gateway, id, error.into_response())
}

/// What every answer gets: counted by status, `Vary: Accept`, its id.
fn finish(gateway: &Gateway, id: String, response: Response) -> Response {
    gateway.metrics.responded(response.status());
    with_request_id(id, with_vary(response))
}

/// `response` naming its request's id.
fn with_request_id(id: String, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::try_from(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The request's answer; one refused gets a log line (in the request's
/// span, so with its id): what was asked and why it was refused.
async fn answer(gateway: Arc<Gateway>, request: Request) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    match stream(&gateway, request).await {
        Ok(response) => response,
        Err(error) => {
            let status = error.status().as_u16();
            let path = backends::Shown(&path);
            if status >= 500 {
                tracing::warn!(status, %method, %path, "Request failed: {}", error.message());
            } else {
                tracing::info!(status, %method, %path, "Request refused: {}", error.message());
            }
            error.into_response()
        }
    }
}

/// The request's id: the client's or a proxy's (`X-Request-Id`, then
/// CloudFront's `X-Amz-Cf-Id`), the Lambda invocation's (native mode, or the
/// adapter's context inside Lambda), or a new one. A given id is used when
/// it is 1 to 128 visible ASCII characters.
fn request_id(
    gateway: &Gateway,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> String {
    let given = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
    };
    given(&REQUEST_ID)
        .or_else(|| given(&CLOUDFRONT_ID))
        .or_else(|| gateway.deadlines.request_id(headers, extensions))
        .unwrap_or_else(new_request_id)
}

/// A new id, unique within the process and unlikely to repeat across
/// processes: the process's start time and a counter.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{start:016x}-{n:x}")
}

/// `Vary: Accept` on every answer of a stream route, errors included: the
/// same URL answers differently by `Accept`.
fn with_vary(mut response: Response) -> Response {
    // Appended: CORS adds its own `Vary` values.
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    response
}

async fn stream(gateway: &Arc<Gateway>, request: Request) -> Result<Response, ApiError> {
    let requested = tokio::time::Instant::now();
    let (mut parts, body) = request.into_parts();
    if let Some(source) = &gateway.authorization_source {
        restore_authorization(&mut parts.headers, source);
    }
    let path = parts.uri.path();
    if gateway.config.metrics.path.as_deref() == Some(path) {
        return metrics::public(gateway, &parts.method, &parts.headers).await;
    }
    if gateway.config.console.path.as_deref() == Some(path) {
        return match parts.method {
            Method::GET | Method::HEAD => {
                Ok(crate::console::page(gateway, parts.method == Method::HEAD))
            }
            _ => Err(method_not_allowed(&parts.method, "GET, HEAD".into())),
        };
    }
    if let Ok(matched) = gateway.publishers.at(path) {
        let route = Arc::clone(matched.value);
        let params = decoded_params(&matched.params);
        return publish(gateway, &route, params, parts, body).await;
    }
    let Ok(matched) = gateway.routes.at(path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no stream route matches {}", Shown(path)),
        ));
    };
    let route = Arc::clone(matched.value);
    let params = decoded_params(&matched.params);
    let mut query = query_pairs(parts.uri.query())?;
    // A browser navigating here gets the live viewer, which reads this
    // same URL as a stream (`?format=` always asks for the stream). Before
    // the method and the credential are checked: the page shows the route's
    // name, path and backends' names only, and offers a token field and a
    // body form, with which it reads the stream.
    if matches!(parts.method, Method::GET | Method::HEAD)
        && !query.iter().any(|(k, _)| k == "format")
    {
        let accept = parts.headers.get_all(header::ACCEPT).iter();
        if negotiate::prefers_page(accept.filter_map(|v| v.to_str().ok())) {
            return Ok(crate::viewer::page(&route, parts.method == Method::HEAD));
        }
    }
    if !route.allows(&parts.method) {
        return Err(method_not_allowed(&parts.method, route.allow_header()));
    }
    // Before anything is opened or read, HEAD included.
    let grant = route
        .auth
        .check(Presented {
            headers: &parts.headers,
            query: &query,
            params: &params,
            authorization_source: gateway.authorization_source.as_ref(),
        })
        .await?;
    // The credential's time runs from now: reading the body and opening the
    // backends come out of it.
    let checked = tokio::time::Instant::now();
    if let Some(name) = route.auth.query_param() {
        // The credential is not the backends' business.
        query.retain(|(k, _)| k != name);
    }
    if let (Some(durable), &Method::DELETE) = (&route.durable, &parts.method) {
        let mut context = RequestContext {
            method: Method::DELETE,
            path: path.to_string(),
            params,
            query,
            ..RequestContext::default()
        };
        durable.identify(&mut context, false)?;
        let answer = durable.cancel(&context).await?;
        tracing::info!(route = %route.name, job = ?context.job, "Job cancelled");
        return Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response());
    }
    let readable = matches!(parts.method, Method::GET | Method::HEAD);
    let negotiated = negotiate_format(&parts.headers, &query, readable)?;
    let envelope = envelope_param(&query, route.envelope)?;
    if gateway.shutdown.is_cancelled() {
        // HEAD opens no stream: no stream was refused.
        if parts.method != Method::HEAD {
            gateway.metrics.refused(&route, Refused::ShuttingDown);
        }
        return Err(unavailable(
            "the gateway is shutting down; retry on another instance",
        ));
    }
    if parts.method == Method::HEAD {
        // The headers a GET would get, without opening the backends. Over
        // HTTP the body has an unknown length, like a stream's (an empty body
        // would make the answer claim length 0), and HEAD never sends it. The
        // Lambda runtime (native mode) streams whatever body it is given, so
        // there it is empty, or the invocation would never end.
        let body = if parts.extensions.get::<lambda_http::Context>().is_some() {
            Body::empty()
        } else {
            let unsized_body =
                futures::stream::pending::<Result<Bytes, std::convert::Infallible>>();
            Body::from_stream(unsized_body)
        };
        return Ok(stream_response(&route, negotiated, &parts.headers, body));
    }
    let Ok(permit) = Arc::clone(&gateway.streams).try_acquire_owned() else {
        gateway.metrics.refused(&route, Refused::Full);
        return Err(unavailable(format!(
            "the gateway holds its maximum of {} open streams",
            gateway.config.max_streams
        )));
    };
    let client = clients::client_of(
        gateway.client_ip_header.as_ref(),
        &parts.headers,
        parts.extensions.get::<Peer>().copied(),
    );
    let client_slot = match client {
        None => Slot::unlimited(),
        Some(client) => gateway.client_streams.take(client).ok_or_else(|| {
            gateway.metrics.refused(&route, Refused::PerClient);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this client holds its maximum of {} open streams",
                    gateway.config.max_streams_per_client
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        })?,
    };

    // EventSource sends the id UTF-8 encoded; an empty one means none.
    let header_id = match parts
        .headers
        .get(LAST_EVENT_ID)
        .map(|v| std::str::from_utf8(v.as_bytes()))
    {
        Some(Ok(id)) => Some(id).filter(|id| !id.is_empty()),
        Some(Err(_)) => return Err(ApiError::bad_request("Last-Event-ID is not UTF-8")),
        None => None,
    };
    let query_id = query
        .iter()
        .find(|(k, _)| k == LAST_EVENT_ID_PARAM)
        .map(|(_, v)| v.as_str());
    let last_event_id = header_id.or(query_id);
    let cursor =
        Cursor::parse(Arc::clone(&route.sources), last_event_id).map_err(ApiError::bad_request)?;
    let body = read_body(gateway, &parts.headers, body).await?;

    let mut passed = HeaderMap::new();
    for name in &route.pass_headers {
        for value in parts.headers.get_all(name) {
            passed.append(name.clone(), value.clone());
        }
    }
    // The platform's deadline (less the margin) bounds the work the request
    // starts (a durable job); it and CloudFront's completion timeout bound
    // the stream, and a Lambda response's bytes are capped.
    let bounds = gateway.deadlines.stream(&parts);
    let time_left = bounds.time_left;
    let lifetime = match bounds.lifetime {
        Some(Duration::ZERO) => {
            tracing::warn!(route = %route.name, "The invocation's deadline (or CloudFront's completion timeout) is within its margin: the stream ends at once (raise the timeout or lower lambda.deadline_margin / cloudfront.completion_margin)");
            Duration::ZERO
        }
        Some(left) if left < route.max_lifetime => {
            tracing::debug!(route = %route.name, left_ms = left.as_millis() as u64, "Stream ends before the platform's deadline");
            left
        }
        _ => route.max_lifetime,
    };
    let context = RequestContext {
        method: parts.method.clone(),
        path: path.to_string(),
        params,
        query,
        headers: passed,
        body,
        last_event_id: None,
        job: None,
        time_left,
    };
    // One context per backend, the last one this very context: the body is
    // shared by all (a reference count), the rest copied once per backend.
    let mut contexts: Vec<RequestContext> =
        (1..route.backends.len()).map(|_| context.clone()).collect();
    contexts.push(context);
    for (i, context) in contexts.iter_mut().enumerate() {
        context.last_event_id = cursor.position(i).map(str::to_string);
    }
    // A durable route's one context names its job (a new one, or the one
    // its path, Last-Event-ID or ?job= names), answered in a header.
    let job = match (&route.durable, contexts.as_mut_slice()) {
        (Some(durable), [context]) => Some(durable.identify(context, true)?),
        _ => None,
    };
    let events = fanin::open(&route, &contexts)
        .await
        .map_err(|(backend, error)| {
            gateway.metrics.open_failed(&route, backend, &error);
            error
        })?;
    let format = negotiated.format;
    let session = Session::new(
        Arc::clone(&route),
        format,
        events,
        cursor,
        lifetime,
        gateway.shutdown.clone().cancelled_owned(),
        permit,
        gateway.metrics.stream(&route, format, requested),
    )
    .enveloped(envelope)
    .holding(client_slot)
    .max_bytes(bounds.max_bytes)
    .credential_expires(
        grant
            .valid_for
            .map(|valid| valid.saturating_sub(checked.elapsed())),
    );
    tracing::debug!(route = %route.name, %format, path, ?job, "Stream opened");
    let mut response = stream_response(
        &route,
        negotiated,
        &parts.headers,
        Body::from_stream(session),
    );
    if let Some(value) = job.and_then(|job| HeaderValue::try_from(job).ok()) {
        response.headers_mut().insert(JOB_ID, value);
    }
    Ok(response)
}

/// Most query parameters a request may have: each costs a pair of strings
/// (about 80 bytes for `a&`, two bytes of the target).
pub const MAX_QUERY_PAIRS: usize = 64;

/// The query's parameters, percent-decoded, refused (400) past
/// [`MAX_QUERY_PAIRS`] before more are made.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    let query: Vec<(String, String)> = pairs
        .take(MAX_QUERY_PAIRS + 1)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if query.len() > MAX_QUERY_PAIRS {
        return Err(ApiError::bad_request(format!(
            "the query has more than {MAX_QUERY_PAIRS} parameters"
        )));
    }
    Ok(query)
}

/// Moves the client's credential from `source` into `Authorization`, where
/// everything after reads it; an `Authorization` that did not come from
/// `source` (OAC's signature, say) is dropped, never passed on.
fn restore_authorization(headers: &mut HeaderMap, source: &HeaderName) {
    headers.remove(header::AUTHORIZATION);
    let values: Vec<HeaderValue> = headers.get_all(source).iter().cloned().collect();
    headers.remove(source);
    for value in values {
        headers.append(header::AUTHORIZATION, value);
    }
}

fn decoded_params(params: &matchit::Params<'_, '_>) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

/// The request body as checked JSON, within the gateway's size and time
/// bounds.
async fn read_body(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<JsonBody>, ApiError> {
    let limit = gateway.config.max_body_bytes;
    let timeout = gateway.config.body_timeout;
    tokio::time::timeout(timeout, read_json_body(headers, body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {timeout:?}"),
            )
        })?
}

/// A publish route: `POST` with a bearer token and `{"data": …, "event":
/// "name"}` appends the event; the answer is `201 {"id": …}`, the id readers
/// will see. No token is 401, a wrong one 403.
async fn publish(
    gateway: &Gateway,
    route: &PublishRoute,
    params: BTreeMap<String, String>,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    if parts.method != Method::POST {
        return Err(method_not_allowed(&parts.method, "POST".into()));
    }
    route
        .auth
        .check(Presented {
            headers: &parts.headers,
            query: &[],
            params: &params,
            authorization_source: gateway.authorization_source.as_ref(),
        })
        .await?;
    let body = read_body(gateway, &parts.headers, body)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(r#"the body is the event: {"data": …, "event": "name"}"#)
        })?;
    let publication = Publication::from_json(&body).map_err(ApiError::bad_request)?;
    let context = RequestContext {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        params,
        ..RequestContext::default()
    };
    let id = route.publisher.publish(&context, &publication).await?;
    tracing::debug!(publisher = %route.name, %id, "Event published");
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "id": id })),
    )
        .into_response())
}

/// The query parameter that puts a request's events in the envelope or
/// not, whatever the route's `envelope` (an NDJSON client that wants each
/// line's id to resume with: `?envelope=always`).
const ENVELOPE_PARAM: &str = "envelope";

/// Whether the request's events are in the envelope: `?envelope=always`,
/// `never`, or the route's own choice (`auto`, or no parameter).
fn envelope_param(query: &[(String, String)], route: bool) -> Result<bool, ApiError> {
    match query
        .iter()
        .find(|(k, _)| k == ENVELOPE_PARAM)
        .map(|(_, v)| v.as_str())
    {
        None | Some("auto") => Ok(route),
        Some("always") => Ok(true),
        Some("never") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "envelope={} is unknown; use envelope=always, never or auto",
            Shown(other)
        ))),
    }
}

/// The stream format; `page` says whether the route also offers the viewer
/// (`text/html`), for the 406's list.
fn negotiate_format(
    headers: &HeaderMap,
    query: &[(String, String)],
    page: bool,
) -> Result<Negotiated, ApiError> {
    let param = query
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str());
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    negotiate::negotiate(param, accept).map_err(|refusal| match refusal {
        Refusal::NotAcceptable => ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "Accept allows none of the formats this route streams",
        )
        .with("offered", {
            let mut offered = negotiate::OFFERED.to_vec();
            if page {
                offered.push("text/html");
            }
            offered
        }),
        Refusal::UnknownFormat(f) => ApiError::bad_request(format!(
            "format={} is unknown; use format=sse or format=ndjson",
            Shown(&f)
        )),
    })
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Reads the body up to `limit` bytes and checks that it is JSON; an empty
/// body is `None`. The `Content-Type` is not required to say JSON, so that
/// `curl -d '{"text":"hi"}'` works as it reads.
///
/// The body is kept as the text it is (see [`JsonBody`]), never as a
/// `Value` tree, which would cost up to 36 times its size. Each chunk is
/// dropped once copied into one buffer, which ends at the body's size.
async fn read_json_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Option<JsonBody>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let needed = bytes.len() + chunk.len();
        if needed > limit {
            return Err(too_large());
        }
        if needed > bytes.capacity() {
            // Doubling as bytes arrive (a declared length costs nothing
            // until it is sent), up to the declared length exactly.
            let declared = declared.map_or(limit, |n| n as usize).max(needed);
            let grown = needed.max(2 * bytes.capacity()).min(declared);
            bytes.reserve_exact(grown - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    JsonBody::new(bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn stream_response(
    route: &Route,
    negotiated: Negotiated,
    request: &HeaderMap,
    body: Body,
) -> Response {
    let host = request
        .get(ORIGINAL_HOST)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or(HeaderValue::from_static("unknown"));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiated.content_type),
    );
    // A protected stream is nobody else's: no shared cache may keep it.
    let cache = if route.auth.is_open() {
        "no-cache"
    } else {
        "private, no-store"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(REQUEST_HOST, host);
    for (name, value) in &route.response_headers {
        headers.insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map from name-value pairs.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::try_from(*k).unwrap(),
                    HeaderValue::try_from(*v).unwrap(),
                )
            })
            .collect()
    }

    fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn queries_are_decoded_and_bounded_in_parameters() {
        assert_eq!(query_pairs(None).unwrap(), []);
        assert_eq!(
            query_pairs(Some("a=1&b=x%20y")).unwrap(),
            [("a".into(), "1".into()), ("b".into(), "x y".into())]
        );
        let most = vec!["a"; MAX_QUERY_PAIRS].join("&");
        assert_eq!(query_pairs(Some(&most)).unwrap().len(), MAX_QUERY_PAIRS);
        let over = vec!["a"; 4000].join("&");
        let error = query_pairs(Some(&over)).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_credential_moves_back_and_the_signature_is_dropped() {
        let source = HeaderName::from_static("x-client-authorization");
        let mut map = headers(&[
            ("authorization", "AWS4-HMAC-SHA256 Credential=…"),
            ("x-client-authorization", "Bearer a"),
            ("x-client-authorization", "Bearer b"),
            ("accept", "text/event-stream"),
        ]);
        restore_authorization(&mut map, &source);
        assert_eq!(values(&map, "authorization"), ["Bearer a", "Bearer b"]);
        assert!(map.get(&source).is_none());
        assert_eq!(values(&map, "accept"), ["text/event-stream"]);

        // Without the source header, no Authorization reaches anything.
        let mut map = headers(&[("authorization", "AWS4-HMAC-SHA256 Credential=…")]);
        restore_authorization(&mut map, &source);
        assert!(map.is_empty(), "{map:?}");
    }

    /// A body sent in chunks without a declared length.
    fn chunked(parts: &[&[u8]]) -> Body {
        let chunks: Vec<_> = parts
            .iter()
            .map(|p| Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(p)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_its_limit_and_kept_as_the_text_it_is() {
        let none = HeaderMap::new();
        let body = read_json_body(&none, chunked(&[b"{\"text\":", b" \"hi\"}"]), 14)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body.as_str(), r#"{"text": "hi"}"#);
        let over = read_json_body(&none, chunked(&[b"{\"text\":", b" \"hi\"} "]), 14).await;
        assert_eq!(over.err().unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            read_json_body(&none, chunked(&[b" \n"]), 14)
                .await
                .unwrap()
                .is_none()
        );
        // As strict as parsing into a Value was: nesting past 128 is refused.
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let refused = read_json_body(&none, chunked(&[deep.as_bytes()]), 1024)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}
