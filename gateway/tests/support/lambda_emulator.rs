//! A Lambda service stand-in for tests: the Runtime API (with response
//! streaming) and the Extensions API on one port, and a Function URL on
//! another, written from AWS's documentation of both.
//!
//! A request to the Function URL becomes a Function URL event (payload format
//! 2.0), queued for `GET /2018-06-01/runtime/invocation/next`. The runtime's
//! answer to `POST …/invocation/{id}/response` goes back to the client:
//! - streamed (`Lambda-Runtime-Function-Response-Mode: streaming`): a JSON
//!   prelude with status, headers and cookies, eight NUL bytes, then the
//!   body, forwarded chunk by chunk as it arrives;
//! - buffered: one JSON document with `statusCode`, `headers` and `body`.
//!
//! Invocations get a deadline (`Lambda-Runtime-Deadline-Ms`) that is
//! enforced: a response still running then is cut off and recorded as timed
//! out. Each invocation is recorded (response mode, whether the response body
//! ended cleanly, errors), so tests can check how the runtime answered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The bytes between a streamed response's JSON prelude and its body.
const PRELUDE_END: [u8; 8] = [0; 8];
const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:gateway";

/// How the runtime answered one invocation.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The invocation's request id.
    pub id: String,
    /// `Some("streaming")` for a streamed response, `None` for buffered.
    pub mode: Option<String>,
    /// The response body reached its end without error.
    pub completed: bool,
    /// An error the runtime reported (error endpoint or stream trailer).
    pub error: Option<String>,
}

/// The emulator; it serves until dropped.
#[derive(Debug)]
pub struct Emulator {
    /// What `AWS_LAMBDA_RUNTIME_API` is set to.
    pub runtime_api: SocketAddr,
    /// The Function URL's address.
    pub url: SocketAddr,
    state: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
}

struct Responder {
    head: oneshot::Sender<Head>,
    body: mpsc::Sender<Result<Bytes, Infallible>>,
}

struct Shared {
    queue: mpsc::UnboundedSender<(String, Value)>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    waiting: Mutex<HashMap<String, Responder>>,
    records: Mutex<HashMap<String, Record>>,
    /// Each invocation's deadline, which the emulator enforces as Lambda
    /// does: a response still running then is cut off ("Task timed out").
    deadlines: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Bumped whenever a record changes.
    changed: tokio::sync::watch::Sender<()>,
    ids: AtomicU64,
    timeout: Duration,
    extensions: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts both listeners on 127.0.0.1; invocations get `timeout` until
    /// their deadline.
    pub async fn start(timeout: Duration) -> Self {
        let (queue, next) = mpsc::unbounded_channel();
        let state = Arc::new(Shared {
            queue,
            next: tokio::sync::Mutex::new(next),
            waiting: Mutex::default(),
            records: Mutex::default(),
            deadlines: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(()),
            ids: AtomicU64::new(1),
            timeout,
            extensions: Mutex::default(),
        });
        let api = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route("/2020-01-01/extension/register", post(register_extension))
            .route("/2020-01-01/extension/event/next", get(extension_next))
            .with_state(Arc::clone(&state));
        let url = Router::new()
            .fallback(function_url)
            .with_state(Arc::clone(&state));
        let (runtime_api, api_task) = spawn(api).await;
        let (url, url_task) = spawn(url).await;
        Self {
            runtime_api,
            url,
            state,
            tasks: vec![api_task, url_task],
        }
    }

    /// Every invocation so far, in order.
    pub fn records(&self) -> Vec<Record> {
        let records = self.state.records.lock().expect("records lock");
        let mut ids: Vec<&String> = records.keys().collect();
        ids.sort_by_key(|id| id.parse::<u64>().unwrap_or(u64::MAX));
        ids.into_iter().map(|id| records[id].clone()).collect()
    }

    /// The last invocation's record, once its response has ended (or failed).
    pub async fn finished_last(&self) -> Record {
        let mut changed = self.state.changed.subscribe();
        loop {
            if let Some(last) = self.records().pop() {
                if last.completed || last.error.is_some() {
                    return last;
                }
            }
            if changed.changed().await.is_err() {
                return Record::default();
            }
        }
    }

    /// The names of the extensions that registered.
    pub fn extensions(&self) -> Vec<String> {
        self.state
            .extensions
            .lock()
            .expect("extensions lock")
            .clone()
    }

    /// The environment Lambda gives a function's processes.
    pub fn lambda_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.runtime_api.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "gateway".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

async fn spawn(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the emulator");
    let addr = listener.local_addr().expect("emulator address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lambda_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "Message": message }))).into_response()
}

/// The Function URL: the request becomes an event, the runtime's answer the
/// response.
async fn function_url(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return lambda_error(StatusCode::BAD_REQUEST, "could not read the body");
    };
    let id = state.ids.fetch_add(1, Ordering::Relaxed).to_string();
    let event = function_url_event(&id, &parts, &body);
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(64);
    state.waiting.lock().expect("waiting lock").insert(
        id.clone(),
        Responder {
            head: head_tx,
            body: body_tx,
        },
    );
    state.records.lock().expect("records lock").insert(
        id.clone(),
        Record {
            id: id.clone(),
            ..Record::default()
        },
    );
    if state.queue.send((id, event)).is_err() {
        return lambda_error(StatusCode::INTERNAL_SERVER_ERROR, "emulator stopped");
    }
    let Ok(head) = head_rx.await else {
        return lambda_error(StatusCode::BAD_GATEWAY, "the function gave no response");
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// The event a Function URL sends (payload format version 2.0).
fn function_url_event(id: &str, parts: &axum::http::request::Parts, body: &[u8]) -> Value {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if name == "cookie" {
            cookies.extend(values.iter().flat_map(|v| v.split("; ")).map(String::from));
            continue;
        }
        headers.insert(name.as_str().into(), values.join(",").into());
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        let joined = match query.get(k.as_ref()).and_then(Value::as_str) {
            Some(before) => format!("{before},{v}"),
            None => v.into_owned(),
        };
        query.insert(k.into_owned(), joined.into());
    }
    let (body, base64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (text.into(), false),
        Err(_) => (BASE64.encode(body).into(), true),
    };
    let now = SystemTime::now();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "emulated",
            "domainName": "emulated.lambda-url.us-east-1.on.aws",
            "domainPrefix": "emulated",
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": parts.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
            },
            "requestId": id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:00:00:00 +0000",
            "timeEpoch": millis_since_epoch(now),
        },
        "isBase64Encoded": base64,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = query.into();
    }
    if !cookies.is_empty() {
        event["cookies"] = cookies.into();
    }
    if !body.is_null() {
        event["body"] = body;
    }
    event
}

async fn next_invocation(State(state): State<Arc<Shared>>) -> Response {
    let next = state.next.lock().await.recv().await;
    let Some((id, event)) = next else {
        return lambda_error(StatusCode::INTERNAL_SERVER_ERROR, "emulator stopped");
    };
    let deadline = millis_since_epoch(SystemTime::now() + state.timeout);
    state
        .deadlines
        .lock()
        .expect("deadlines lock")
        .insert(id.clone(), tokio::time::Instant::now() + state.timeout);
    let mut response = axum::Json(event).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        ("lambda-runtime-invoked-function-arn", FUNCTION_ARN.into()),
        (
            "lambda-runtime-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0".into(),
        ),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    response
}

fn take_responder(state: &Shared, id: &str) -> Option<Responder> {
    state.waiting.lock().expect("waiting lock").remove(id)
}

fn record(state: &Shared, id: &str, update: impl FnOnce(&mut Record)) {
    if let Some(r) = state.records.lock().expect("records lock").get_mut(id) {
        update(r);
    }
    state.changed.send_replace(());
}

async fn invocation_response(
    State(state): State<Arc<Shared>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let Some(responder) = take_responder(&state, &id) else {
        return lambda_error(StatusCode::BAD_REQUEST, "unknown or answered invocation");
    };
    let mode = request
        .headers()
        .get("lambda-runtime-function-response-mode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    record(&state, &id, |r| r.mode = mode.clone());
    let body = request.into_body();
    let deadline = state
        .deadlines
        .lock()
        .expect("deadlines lock")
        .get(&id)
        .copied()
        .unwrap_or_else(|| tokio::time::Instant::now() + state.timeout);
    let respond = async {
        if mode.as_deref() == Some("streaming") {
            streamed(body, responder).await
        } else {
            buffered(body, responder).await
        }
    };
    let outcome = tokio::time::timeout_at(deadline, respond)
        .await
        .unwrap_or_else(|_| Err(format!("Task timed out after {:?}", state.timeout)));
    match outcome {
        Ok(()) => record(&state, &id, |r| r.completed = true),
        Err(error) => record(&state, &id, |r| r.error = Some(error)),
    }
    StatusCode::ACCEPTED.into_response()
}

/// Forwards a streamed response: the prelude becomes the head, the rest the
/// body, chunk by chunk. An error trailer ends it as failed.
async fn streamed(mut body: Body, responder: Responder) -> Result<(), String> {
    let mut head = Some(responder.head);
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body: {e}"))?;
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(kind) = trailers.get("lambda-runtime-function-error-type") {
                        return Err(format!("stream error: {kind:?}"));
                    }
                }
                continue;
            }
        };
        let data = if let Some(sender) = head.take() {
            pending.extend_from_slice(&frame);
            let Some(at) = pending
                .windows(PRELUDE_END.len())
                .position(|w| w == PRELUDE_END)
            else {
                head = Some(sender);
                continue;
            };
            let prelude: Value = serde_json::from_slice(&pending[..at])
                .map_err(|e| format!("prelude is not JSON: {e}"))?;
            let _ = sender.send(head_from(&prelude)?);
            Bytes::copy_from_slice(&pending[at + PRELUDE_END.len()..])
        } else {
            frame
        };
        if !data.is_empty() && responder.body.send(Ok(data)).await.is_err() {
            return Err("the client went away".into());
        }
    }
    match head {
        None => Ok(()),
        Some(_) => Err("the stream ended before its prelude".into()),
    }
}

async fn buffered(body: Body, responder: Responder) -> Result<(), String> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    let document: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("response is not JSON: {e}"))?;
    let text = document.get("body").and_then(Value::as_str).unwrap_or("");
    let data = if document.get("isBase64Encoded") == Some(&Value::Bool(true)) {
        BASE64
            .decode(text)
            .map_err(|e| format!("body is not base64: {e}"))?
    } else {
        text.as_bytes().to_vec()
    };
    let _ = responder.head.send(head_from(&document)?);
    let _ = responder.body.send(Ok(Bytes::from(data))).await;
    Ok(())
}

/// Status, headers and cookies of a prelude or a buffered response.
fn head_from(document: &Value) -> Result<Head, String> {
    let status = document
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("no valid statusCode")?;
    let mut headers = HeaderMap::new();
    let listed = document.get("headers").and_then(Value::as_object);
    for (name, value) in listed.into_iter().flatten() {
        let name = HeaderName::try_from(name.as_str()).map_err(|e| e.to_string())?;
        let values = match value {
            Value::Array(values) => values.clone(),
            one => vec![one.clone()],
        };
        for value in values {
            let value = value.as_str().ok_or("a header value is not a string")?;
            headers.append(
                name.clone(),
                HeaderValue::try_from(value).map_err(|e| e.to_string())?,
            );
        }
    }
    let cookies = document.get("cookies").and_then(Value::as_array);
    for cookie in cookies.into_iter().flatten().filter_map(Value::as_str) {
        headers.append(
            "set-cookie",
            HeaderValue::try_from(cookie).map_err(|e| e.to_string())?,
        );
    }
    Ok(Head { status, headers })
}

async fn invocation_error(
    State(state): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let error = String::from_utf8_lossy(&body).into_owned();
    record(&state, &id, |r| r.error = Some(error));
    if let Some(responder) = take_responder(&state, &id) {
        let _ = responder.head.send(Head {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
        });
    }
    StatusCode::ACCEPTED.into_response()
}

async fn init_error(body: Bytes) -> Response {
    eprintln!("init error: {}", String::from_utf8_lossy(&body));
    StatusCode::ACCEPTED.into_response()
}

async fn register_extension(State(state): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let name = headers
        .get("lambda-extension-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let identifier = format!("ext-{}", state.ids.fetch_add(1, Ordering::Relaxed));
    state.extensions.lock().expect("extensions lock").push(name);
    let mut response = axum::Json(json!({
        "functionName": "gateway",
        "functionVersion": "$LATEST",
        "handler": "bootstrap",
    }))
    .into_response();
    if let Ok(value) = HeaderValue::try_from(identifier) {
        response
            .headers_mut()
            .insert("lambda-extension-identifier", value);
    }
    response
}

/// Extensions that subscribe to no event wait here until the environment
/// shuts down: for the emulator, until it is dropped.
async fn extension_next() -> Response {
    futures::future::pending::<()>().await;
    StatusCode::OK.into_response()
}
