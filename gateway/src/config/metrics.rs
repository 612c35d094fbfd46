//! `[server.metrics]`: where `/metrics` can be read.

use std::net::SocketAddr;

use serde::Deserialize;

use super::HEALTH_PATH;

/// `[server.metrics]`: where the Prometheus metrics can be read. Off (the
/// default) unless `listen` or `path` is set; both may be.
///
/// ```toml
/// [server.metrics]
/// listen = "127.0.0.1:9464"          # GET /metrics there, no token
/// path = "/metrics"                  # and on the public port…
/// tokens = ["${METRICS_TOKEN}"]      # …for these bearer tokens only
/// ```
///
/// On AWS Lambda only `path` with `tokens` can be reached: nothing but the
/// function's one port is exposed (and native mode has no listener at all).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A listener of its own that serves `GET /metrics` without a token,
    /// off the public port: keep it on a private address. Default: none.
    pub listen: Option<SocketAddr>,
    /// A path on the public port that serves the metrics to a client with
    /// one of `tokens` (`Authorization: Bearer …`, or in the
    /// `server.authorization_source` header when that is set, as behind
    /// CloudFront): 401 without a token, 403 with another. A plain path (no parameters) that no route or
    /// publish path matches. Default: none.
    pub path: Option<String>,
    /// The bearer tokens that may read `path`; `${VAR}` inside one is
    /// replaced by that environment variable. Required with `path`, each at
    /// least 16 characters.
    pub tokens: Vec<String>,
}

impl MetricsConfig {
    /// Checks the settings on their own (not against the routes), each
    /// problem with its key relative to `server.metrics`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut push = |key: &str, reason: String| problems.push((key.to_string(), reason));
        match &self.path {
            None if !self.tokens.is_empty() => push(
                "tokens",
                "tokens protect `path`, which is not set: set it, or remove the tokens".into(),
            ),
            None => {}
            Some(path) => {
                if !path.starts_with('/') {
                    push("path", format!("{path:?} must start with `/`"));
                } else if path.contains(['{', '}', '*', '?', '#']) || path.contains("//") {
                    push(
                        "path",
                        format!("{path:?} must be a plain path, without parameters or a query"),
                    );
                } else if path == HEALTH_PATH {
                    push(
                        "path",
                        format!("{HEALTH_PATH} is the gateway's health check"),
                    );
                }
                if self.tokens.is_empty() {
                    push(
                        "tokens",
                        "required with `path`: metrics on the public port need a bearer token"
                            .into(),
                    );
                }
            }
        }
        if let Some(reason) = Some(&self.tokens)
            .filter(|tokens| !tokens.is_empty())
            .and_then(|tokens| super::auth::check_static_tokens(tokens))
        {
            push("tokens", reason);
        }
        problems
    }
}
