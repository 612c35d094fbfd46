//! A stand-in for the Lambda Function URL (`AuthType: AWS_IAM`,
//! `InvokeMode: RESPONSE_STREAM`): a real HTTP server on a loopback port
//! that checks each request's SigV4 signature with the independent
//! [`verifier`](crate::verifier), answers a refusal as Lambda does (403 with
//! `{"Message": …}`), and otherwise hands the request to the gateway and
//! streams the gateway's answer back chunk by chunk, buffering nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::verifier::{self, Expected, Received};

/// The largest request body the stand-in reads (Lambda's own limit for a
/// request payload is 6 MB).
const MAX_BODY: usize = 6 << 20;

/// The stand-in, serving until dropped.
#[derive(Debug)]
pub struct FunctionUrl {
    /// Where it listens: the "Function URL host" requests are signed for.
    pub addr: SocketAddr,
    state: Arc<Inner>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    gateway: SocketAddr,
    expected: Expected,
    client: reqwest::Client,
    received: AtomicUsize,
    invoked: AtomicUsize,
}

impl FunctionUrl {
    /// Serves on a fresh loopback port, invoking the gateway at `gateway`
    /// for requests signed as `expected` says (its `now` is replaced by the
    /// clock at each request).
    pub async fn start(gateway: SocketAddr, expected: Expected) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let state = Arc::new(Inner {
            host: addr.to_string(),
            gateway,
            expected,
            client: gateway_tests::client(),
            received: AtomicUsize::new(0),
            invoked: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(invoke)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the stand-in serves");
        });
        Self { addr, state, task }
    }

    /// The host (with port) requests must be signed for.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests reached the stand-in.
    pub fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }

    /// How many requests passed the signature check and went to the gateway.
    pub fn invoked(&self) -> usize {
        self.state.invoked.load(Ordering::SeqCst)
    }
}

impl Drop for FunctionUrl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Headers of one connection only, never passed on by a proxy.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
    ]
    .contains(name)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "Message": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn invoke(State(state): State<Arc<Inner>>, request: Request) -> Response {
    state.received.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
        );
    };
    // A Function URL answers for its own host name only.
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if host != Some(state.host.as_str()) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("this Function URL is {}, not {host:?}", state.host),
        );
    }
    let received = Received {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    let expected = Expected {
        now: SystemTime::now(),
        ..state.expected.clone()
    };
    if let Err(refusal) = verifier::verify(&received, &expected) {
        return refuse(StatusCode::FORBIDDEN, &refusal.to_string());
    }
    state.invoked.fetch_add(1, Ordering::SeqCst);

    // The function: the gateway, with the request as signed (Authorization
    // included: the gateway must drop it itself).
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = state
        .client
        .request(
            parts.method.clone(),
            format!("http://{}{target}", state.gateway),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("the function failed: {e}"),
            );
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) && name != header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .expect("a response from a valid status and headers")
}
