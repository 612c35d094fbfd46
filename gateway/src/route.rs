//! A route as the server uses it: its backends built, its options checked
//! and turned into the types the request path needs.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use backends::Backend;
use backends::durable::Durable;

use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Auth;
use crate::config::{
    ConfigError, ConfigProblem, CorsConfig, Envelope, ErrorPolicy, RouteConfig, RouteMethod,
};
use crate::encode::Encoder;
use crate::negotiate::Format;

/// One stream route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The route's name in the config.
    pub name: Arc<str>,
    /// The path pattern.
    pub path: String,
    /// Methods answered (plus `HEAD` where `GET` is).
    pub methods: Vec<Method>,
    /// Backend names, in route order; they tag events as their `source`.
    pub sources: Arc<[Arc<str>]>,
    /// The backends, in the same order.
    pub backends: Vec<Arc<dyn Backend>>,
    /// What a mid-stream failure does.
    pub on_error: ErrorPolicy,
    /// Whether events are written in an envelope.
    pub envelope: bool,
    /// Longest silence before a heartbeat.
    pub heartbeat: Duration,
    /// The NDJSON heartbeat line, without its newline.
    pub ndjson_heartbeat: String,
    /// The SSE reconnection delay.
    pub retry: Duration,
    /// Longest life of a stream.
    pub max_lifetime: Duration,
    /// Longest time without an event.
    pub max_idle: Duration,
    /// Longest time the backends may take to open.
    pub open_timeout: Duration,
    /// How long an event may wait to be written with the ones after it.
    pub write_delay: Duration,
    /// Request headers passed to the backends.
    pub pass_headers: Vec<HeaderName>,
    /// Headers added to every stream response.
    pub response_headers: HeaderMap,
    /// Cross-origin access, when the route allows any.
    pub cors: Option<CorsLayer>,
    /// Who may read the route.
    pub auth: Auth,
    /// The route's jobs, when it is durable: its one backend is then the
    /// durable reader of the producer.
    pub durable: Option<Durable>,
}

impl Route {
    /// A route from its config, with its backends built from the config.
    pub fn from_config(name: &str, config: &RouteConfig) -> Result<Self, ConfigError> {
        let backends = config
            .backends
            .iter()
            .map(|(name, backend)| (name.clone(), backend.build()))
            .collect();
        Self::new(name, config, backends)
    }

    /// A route from its options and the given backends (the config's
    /// `backends` table is not used): how tests and embedders plug in
    /// backends of their own.
    pub fn new(
        name: &str,
        config: &RouteConfig,
        backends: Vec<(String, Arc<dyn Backend>)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = config.validate();
        if backends.is_empty() {
            problems.push((
                "backends".into(),
                "the route needs at least one backend".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                problems: problems
                    .into_iter()
                    .map(|(field, reason)| ConfigProblem {
                        origin: format!("route {name}"),
                        key: field,
                        reason,
                    })
                    .collect(),
            });
        }
        let auth = Auth::from_config(&config.auth, name).map_err(|reason| ConfigError {
            problems: vec![ConfigProblem {
                origin: format!("route {name}"),
                key: "auth".into(),
                reason,
            }],
        })?;
        // Validated above: the names and values parse.
        let pass_headers = config
            .pass_headers
            .iter()
            .filter_map(|h| HeaderName::try_from(h.as_str()).ok())
            .collect();
        let response_headers = config
            .response_headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::try_from(k).ok()?,
                    HeaderValue::try_from(v).ok()?,
                ))
            })
            .collect();
        let envelope = match config.envelope {
            Envelope::Auto => backends.len() > 1,
            Envelope::Always => true,
            Envelope::Never => false,
        };
        let (sources, mut backends): (Vec<Arc<str>>, Vec<_>) = backends
            .into_iter()
            .map(|(name, backend)| (Arc::from(name), backend))
            .unzip();
        let durable = match (&config.durable, backends.as_slice()) {
            (Some(settings), [producer]) => {
                let durable = settings
                    .build(Arc::clone(producer))
                    .map_err(|e| ConfigError {
                        problems: vec![ConfigProblem {
                            origin: format!("route {name}"),
                            key: "durable".into(),
                            reason: e.message,
                        }],
                    })?;
                backends = vec![Arc::new(durable.clone())];
                Some(durable)
            }
            _ => None,
        };
        Ok(Self {
            name: Arc::from(name),
            path: config.path.clone(),
            methods: config.methods.iter().map(|m| m.as_method()).collect(),
            sources: sources.into(),
            backends,
            on_error: config.on_error,
            envelope,
            heartbeat: config.heartbeat,
            ndjson_heartbeat: config.ndjson_heartbeat.clone(),
            retry: config.retry,
            max_lifetime: config.max_lifetime,
            max_idle: config.max_idle,
            open_timeout: config.open_timeout,
            write_delay: config.write_delay,
            pass_headers,
            response_headers,
            cors: config
                .cors
                .as_ref()
                .map(|cors| cors_layer(cors, &config.methods, config.durable.is_some())),
            auth,
            durable,
        })
    }

    /// Whether the route answers `method`.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
            || (method == Method::DELETE && self.durable.is_some())
    }

    /// The value of an `Allow` header for the route.
    pub fn allow_header(&self) -> String {
        let mut names: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        if self.methods.contains(&Method::GET) {
            names.push("HEAD");
        }
        if self.durable.is_some() && !self.methods.contains(&Method::DELETE) {
            names.push("DELETE");
        }
        names.join(", ")
    }

    /// The encoder for a stream of this route in `format`, with the
    /// envelope or without.
    pub fn encoder(&self, format: Format, envelope: bool) -> Encoder {
        Encoder::new(format, envelope, self.retry, &self.ndjson_heartbeat)
    }
}

/// The CORS layer of validated settings. Lists are explicit, never `*`
/// beside credentials (which tower-http would refuse at run time).
fn cors_layer(config: &CorsConfig, methods: &[RouteMethod], durable: bool) -> CorsLayer {
    let headers = |names: &[String]| -> Vec<HeaderName> {
        names
            .iter()
            .filter_map(|n| HeaderName::try_from(n.as_str()).ok())
            .collect()
    };
    let origins = if config.origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .origins
                .iter()
                .filter_map(|o| HeaderValue::try_from(o.as_str()).ok()),
        )
    };
    let mut allowed: Vec<Method> = methods.iter().map(|m| m.as_method()).collect();
    if allowed.contains(&Method::GET) {
        allowed.push(Method::HEAD);
    }
    if durable && !allowed.contains(&Method::DELETE) {
        allowed.push(Method::DELETE);
    }
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(allowed)
        .allow_headers(headers(&config.allow_headers))
        .expose_headers(headers(&config.expose_headers))
        .allow_credentials(config.credentials)
        .max_age(config.max_age)
}
