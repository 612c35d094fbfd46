//! The gateway as a service: its routes, its limits, its shutdown, and the
//! one `app` and `serve` that the binary, Lambda and the tests all use.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use axum::http::HeaderName;
use backends::publish::Publisher;

use crate::clients::Tally;
use crate::config::{
    CloudFrontConfig, ConfigError, ConfigProblem, GatewayConfig, HEALTH_PATH, LambdaConfig,
    ServerConfig,
};
use crate::handler;
use crate::lambda::{self, Deadlines};
use crate::metrics::Metrics;
use crate::route::Route;
use backends::durable::Durable;

/// Everything a request needs: routes, limits, the shutdown signal.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) routes: matchit::Router<Arc<Route>>,
    pub(crate) config: ServerConfig,
    pub(crate) streams: Arc<Semaphore>,
    /// The semaphore's size: `max_streams`, within what a semaphore holds.
    capacity: usize,
    pub(crate) shutdown: CancellationToken,
    /// The header moved into `Authorization` (`server.authorization_source`).
    pub(crate) authorization_source: Option<HeaderName>,
    /// When streams must end inside a Lambda invocation.
    pub(crate) deadlines: Deadlines,
    /// Publish routes, by path.
    pub(crate) publishers: matchit::Router<Arc<PublishRoute>>,
    /// What `/metrics` shows.
    pub(crate) metrics: Metrics,
    /// Who may read the metrics on the public port (`server.metrics.tokens`).
    pub(crate) metrics_auth: crate::auth::Auth,
    /// Streams open per client (`server.max_streams_per_client`).
    pub(crate) client_streams: Arc<Tally>,
    /// The header naming the client's address (`server.client_ip_header`).
    pub(crate) client_ip_header: Option<HeaderName>,
    /// The durable routes' jobs, ended on shutdown.
    durables: Vec<Durable>,
    /// The routes in config order, for the console.
    pub(crate) listed: Vec<Arc<Route>>,
    /// The publish routes' names and paths, for the console.
    pub(crate) publish_paths: Vec<(Arc<str>, String)>,
}

/// A path where clients holding one of `tokens` append events.
#[derive(Debug)]
pub struct PublishRoute {
    /// The name in the config, for logs.
    pub name: Arc<str>,
    /// The bearer tokens allowed, as a check.
    pub auth: crate::auth::Auth,
    /// Where events go.
    pub publisher: Arc<dyn Publisher>,
}

impl Gateway {
    /// A gateway from a loaded config (see [`crate::config::load`]).
    pub fn from_config(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let problems: Vec<ConfigProblem> = config
            .validate()
            .into_iter()
            .map(|(key, reason)| ConfigProblem {
                origin: "config".into(),
                key,
                reason,
            })
            .collect();
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let routes = config
            .routes
            .iter()
            .map(|(name, route)| Route::from_config(name, route))
            .collect::<Result<Vec<_>, _>>()?;
        let mut gateway = Self::new(config.server.clone(), routes)?.with_platform(
            &config.lambda,
            &config.cloudfront,
            lambda::in_lambda(),
        );
        for (name, publish) in &config.publish {
            // Validation made sure every target is there.
            let Some(target) = &publish.target else {
                continue;
            };
            let route = PublishRoute {
                name: Arc::from(name.as_str()),
                auth: crate::auth::Auth::bearer(publish.tokens.clone()),
                publisher: target.build(),
            };
            gateway
                .publish_paths
                .push((Arc::clone(&route.name), publish.path.clone()));
            if let Err(e) = gateway.publishers.insert(&publish.path, Arc::new(route)) {
                return Err(ConfigError {
                    problems: vec![ConfigProblem {
                        origin: "config".into(),
                        key: format!("publish.{name}.path"),
                        reason: e.to_string(),
                    }],
                });
            }
        }
        Ok(gateway)
    }

    /// A gateway serving `routes`.
    pub fn new(config: ServerConfig, routes: Vec<Route>) -> Result<Self, ConfigError> {
        let mut router = matchit::Router::new();
        let mut problems = Vec::new();
        let mut header = |key: &str, name: Option<&str>| {
            let parsed = name.map(HeaderName::try_from)?;
            parsed
                .map_err(|e| {
                    problems.push(ConfigProblem {
                        origin: "server".into(),
                        key: key.into(),
                        reason: e.to_string(),
                    });
                })
                .ok()
        };
        let client_ip_header = header("client_ip_header", config.client_ip_header.as_deref());
        let authorization_source = header(
            "authorization_source",
            config.authorization_source.as_deref(),
        );
        for (table, found) in [
            ("metrics", config.metrics.validate()),
            ("console", config.console.validate()),
        ] {
            problems.extend(found.into_iter().map(|(key, reason)| ConfigProblem {
                origin: "server".into(),
                key: format!("{table}.{key}"),
                reason,
            }));
        }
        let metrics = Metrics::new(&routes);
        let durables = routes.iter().filter_map(|r| r.durable.clone()).collect();
        let mut listed = Vec::with_capacity(routes.len());
        for route in routes {
            let (name, path) = (Arc::clone(&route.name), route.path.clone());
            let route = Arc::new(route);
            listed.push(Arc::clone(&route));
            if let Err(e) = router.insert(path, route) {
                problems.push(ConfigProblem {
                    origin: format!("route {name}"),
                    key: "path".into(),
                    reason: e.to_string(),
                });
            }
        }
        let pages = [
            (
                "metrics.path",
                "the metrics",
                config.metrics.path.as_deref(),
            ),
            (
                "console.path",
                "the console",
                config.console.path.as_deref(),
            ),
        ];
        for (key, what, path) in pages {
            if let Some(taken) = path.and_then(|path| router.at(path).ok()) {
                problems.push(ConfigProblem {
                    origin: "server".into(),
                    key: key.into(),
                    reason: format!(
                        "{:?} is a path of route {}; {what} would hide it",
                        path.unwrap_or_default(),
                        taken.value.name
                    ),
                });
            }
        }
        if let (Some(a), Some(b)) = (&config.metrics.path, &config.console.path) {
            if a == b {
                problems.push(ConfigProblem {
                    origin: "server".into(),
                    key: "console.path".into(),
                    reason: format!("{b:?} is the metrics' path too"),
                });
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let capacity = config.max_streams.min(Semaphore::MAX_PERMITS);
        let metrics_auth = crate::auth::Auth::bearer(config.metrics.tokens.clone());
        Ok(Self {
            metrics_auth,
            client_streams: Tally::new(config.max_streams_per_client),
            client_ip_header,
            routes: router,
            streams: Arc::new(Semaphore::new(capacity)),
            capacity,
            config,
            shutdown: CancellationToken::new(),
            authorization_source,
            deadlines: Deadlines::default(),
            publishers: matchit::Router::new(),
            metrics,
            durables,
            listed,
            publish_paths: Vec::new(),
        })
    }

    /// Ends streams before Lambda invocations' deadlines and byte cap, and
    /// before CloudFront's completion timeout, as `lambda` and `cloudfront`
    /// say; `in_lambda` (the process runs in a Lambda runtime) makes the
    /// adapter's `x-amzn-lambda-context` header trusted for the deadline.
    pub fn with_platform(
        mut self,
        lambda: &LambdaConfig,
        cloudfront: &CloudFrontConfig,
        in_lambda: bool,
    ) -> Self {
        self.deadlines = Deadlines::new(lambda, cloudfront, in_lambda);
        self
    }

    /// Cancel it to shut down: every open stream ends with a final event,
    /// new streams are refused, and [`serve`] returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The metrics, in the Prometheus text format: what `/metrics` answers.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// How many streams are open now.
    pub fn open_streams(&self) -> usize {
        self.capacity - self.streams.available_permits()
    }

    /// How long shutdown waits for connections to finish, from now:
    /// `shutdown_grace`, and `shutdown_grace_per_stream` for each open
    /// stream (each has its final event to write and its connection to
    /// close).
    pub fn shutdown_grace(&self) -> Duration {
        let per_stream = self.config.shutdown_grace_per_stream;
        let streams = u32::try_from(self.open_streams()).unwrap_or(u32::MAX);
        self.config.shutdown_grace + per_stream.saturating_mul(streams)
    }
}

/// The HTTP application: `/healthz`, and every stream route.
pub fn app(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(health))
        .fallback(handler::dispatch)
        .with_state(gateway)
}

/// Readiness for the Lambda adapter and load balancers: 200 while serving,
/// 503 once shutting down; named by the request's id as every answer.
async fn health(State(gateway): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    let answer = if gateway.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "open_streams": gateway.open_streams()})),
        )
            .into_response()
    };
    crate::handler::identified(&gateway, &request, answer)
}

/// Serves `gateway` on `listener` until its shutdown token is cancelled.
///
/// On shutdown every open stream is sent its final event at once; then
/// connections get `shutdown_grace` to finish before `serve` returns anyway
/// (a client that does not read must not hold the process).
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) -> io::Result<()> {
    let shutdown = gateway.shutdown_token();
    let server = crate::listen::serve(
        listener,
        Arc::clone(&gateway),
        app(Arc::clone(&gateway)),
        shutdown.clone(),
    );
    until_shutdown(
        with_jobs(&gateway, server),
        shutdown,
        || gateway.shutdown_grace(),
        Some("Connections still open after the shutdown grace; closing them"),
    )
    .await
}

/// Runs `service` and, once `gateway` shuts down, ends the durable jobs it
/// runs (each job's end on the bus: readers anywhere learn it now).
pub(crate) async fn with_jobs<T>(gateway: &Gateway, service: impl Future<Output = T>) -> T {
    let stop_jobs = async {
        if !gateway.durables.is_empty() {
            tracing::info!("Shutting down: ending the durable jobs this instance runs");
        }
        futures::future::join_all(gateway.durables.iter().map(Durable::stop_jobs)).await;
    };
    after_shutdown(&gateway.shutdown, service, stop_jobs).await
}

/// Runs `service`; once `shutdown` is cancelled, runs `then` beside it and
/// returns when both are done. `then` runs whenever the shutdown came, even
/// when the service ended in the same instant (a server whose last stream
/// closed at once): only a service that ends by itself skips it.
async fn after_shutdown<T>(
    shutdown: &CancellationToken,
    service: impl Future<Output = T>,
    then: impl Future<Output = ()>,
) -> T {
    tokio::pin!(service);
    tokio::select! {
        out = &mut service => {
            if shutdown.is_cancelled() {
                then.await;
            }
            return out;
        }
        () = shutdown.cancelled() => {}
    }
    futures::future::join(service, then).await.0
}

/// Runs `service` until `shutdown`, then gives it `grace()` (read at that
/// moment) to finish (every open stream's final event is on its way) before
/// returning anyway: a client that does not read must not hold the
/// process. `late`, when given, is the warning for a service still running
/// after the grace.
pub(crate) async fn until_shutdown<E>(
    service: impl Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
    grace: impl FnOnce() -> Duration,
    late: Option<&str>,
) -> Result<(), E> {
    tokio::pin!(service);
    tokio::select! {
        result = &mut service => return result,
        () = shutdown.cancelled() => {}
    }
    let grace = grace();
    match tokio::time::timeout(grace, service).await {
        Ok(result) => result,
        Err(_) => {
            if let Some(late) = late {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "{late}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A service that ends in the same instant as the shutdown (the
    /// server's last stream closed at once) still has the shutdown's work
    /// done: before, which came first was a coin toss, and a lost toss left
    /// the jobs to end a lease later.
    #[tokio::test]
    async fn the_shutdown_work_runs_when_the_service_ends_with_it() {
        for round in 0..64 {
            let shutdown = CancellationToken::new();
            shutdown.cancel();
            let done = AtomicBool::new(false);
            let out = after_shutdown(&shutdown, async { round }, async {
                done.store(true, Ordering::SeqCst);
            })
            .await;
            assert_eq!(out, round);
            assert!(done.load(Ordering::SeqCst), "round {round}: skipped");
        }
    }

    /// A service that ends by itself (no shutdown) returns at once, and one
    /// still running at the shutdown runs beside the shutdown's work.
    #[tokio::test]
    async fn the_shutdown_work_runs_only_after_a_shutdown() {
        let shutdown = CancellationToken::new();
        let out =
            after_shutdown(&shutdown, async { 1 }, async { panic!("no shutdown came") }).await;
        assert_eq!(out, 1);
        let done = AtomicBool::new(false);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = async {
            rx.await.expect("told to end");
            assert!(done.load(Ordering::SeqCst), "the work ran first");
            2
        };
        let work = async {
            done.store(true, Ordering::SeqCst);
            tx.send(()).expect("the service waits");
        };
        shutdown.cancel();
        assert_eq!(after_shutdown(&shutdown, service, work).await, 2);
    }
}
