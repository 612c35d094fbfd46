//! What a backend learns about the request that opened it.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, Method};

use crate::JsonBody;

/// The request a backend is opened for.
///
/// The gateway fills it before any byte of the response is sent, so a backend
/// can still refuse the request with a real HTTP status.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The request method.
    pub method: Method,
    /// The request path, as received.
    pub path: String,
    /// Parameters captured by the route's path pattern (`/jobs/{id}`).
    pub params: BTreeMap<String, String>,
    /// Query parameters, in order, percent-decoded.
    pub query: Vec<(String, String)>,
    /// The request headers the route passes on (`pass_headers`), nothing else.
    pub headers: HeaderMap,
    /// The request body, checked JSON shared by every backend of the route;
    /// `None` when the request had no body.
    pub body: Option<JsonBody>,
    /// Where the client left off: this backend's own part of the request's
    /// `Last-Event-ID` (the gateway splits the cursor of a merged stream).
    pub last_event_id: Option<String>,
    /// The durable job the request reads (see [`crate::durable`]), named by
    /// the gateway before the backend opens; `None` on other routes.
    pub job: Option<String>,
    /// How long the platform lets this request's work run, when it bounds
    /// it: a Lambda invocation's deadline less `lambda.deadline_margin`.
    /// Work started for the request (a durable job) ends by then.
    pub time_left: Option<Duration>,
}

impl RequestContext {
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
