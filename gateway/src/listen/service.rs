//! The service hyper calls for each request of a connection: the strict
//! HTTP checks, refusals, the peer's address for the per-client limits,
//! and the connection's phase (busy from the request to its response's
//! end).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tower::ServiceExt;

use super::phase::{Busy, ConnState};
use super::strict;
use crate::clients::Peer;
use crate::error::ApiError;
use crate::handler;
use crate::server::Gateway;

/// Why a connection is served only to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `server.max_connections` are open: 503.
    Connections,
    /// The client holds `server.max_connections_per_client`: 429.
    ClientConnections,
}

impl Refusal {
    /// The metrics' label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::ClientConnections => "per_client",
        }
    }

    fn error(self, gateway: &Gateway) -> ApiError {
        let (status, code, message) = match self {
            Self::Connections => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "the gateway holds its maximum of {} connections",
                    gateway.config.max_connections
                ),
            ),
            Self::ClientConnections => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!(
                    "this client holds its maximum of {} connections",
                    gateway.config.max_connections_per_client
                ),
            ),
        };
        ApiError::new(status, code, message)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }
}

/// Serves one connection's requests.
#[derive(Clone, Debug)]
pub(crate) struct ConnService {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) router: Router,
    pub(crate) state: Arc<ConnState>,
    pub(crate) peer: SocketAddr,
    /// Every request of the connection is refused with this.
    pub(crate) refusal: Option<Refusal>,
    /// HTTP/1 (the strict checks are HTTP/1's).
    pub(crate) http1: bool,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.answer(request.map(Body::new))
    }
}

impl ConnService {
    /// Answers one request of the connection (hyper's, or one taken
    /// without hyper: [`super::stream`]).
    pub(crate) fn answer(&self, mut request: Request<Body>) -> Answer {
        let busy = self.state.busy();
        let refused = match self.refusal {
            Some(refusal) => Err(refusal.error(&self.gateway)),
            None if self.http1 => strict::check(&request, self.state.smuggling()),
            None => Ok(()),
        };
        request.extensions_mut().insert(Peer(self.peer));
        if let Err(error) = refused {
            let response = handler::refuse(
                &self.gateway,
                request.headers(),
                request.extensions(),
                error,
            );
            return Box::pin(std::future::ready(Ok(Tracked::wrap(response, busy))));
        }
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(Tracked::wrap(response, busy))
        })
    }
}

/// A response body that keeps its connection busy until it is done.
#[derive(Debug)]
pub(crate) struct Tracked {
    body: Body,
    _busy: Busy,
}

impl Tracked {
    pub(super) fn wrap(response: Response<Body>, busy: Busy) -> Response<Self> {
        response.map(|body| Self { body, _busy: busy })
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
