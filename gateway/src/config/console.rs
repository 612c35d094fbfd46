//! `[server.console]`: where the console's index page is served.

use serde::Deserialize;

use super::HEALTH_PATH;

/// `[server.console]`: an index page of the routes and publish paths, each
/// linked to its live viewer (a stream route's own URL in a browser) or
/// with a form that publishes an event. Off (the default) unless `path` is
/// set. The page shows names, paths, methods, what auth a route asks for
/// and its backends' names: never a token, a secret, a URL or a key.
///
/// ```toml
/// [server.console]
/// path = "/console"
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// The index page's path: a plain path (no parameters) that no route or
    /// publish path matches. Default: none (no console).
    pub path: Option<String>,
}

impl ConsoleConfig {
    /// Checks the settings on their own (not against the routes), each
    /// problem with its key relative to `server.console`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let reason = if !path.starts_with('/') {
            format!("{path:?} must start with `/`")
        } else if path.contains(['{', '}', '*', '?', '#']) || path.contains("//") {
            format!("{path:?} must be a plain path, without parameters or a query")
        } else if path == HEALTH_PATH {
            format!("{HEALTH_PATH} is the gateway's health check")
        } else {
            return Vec::new();
        };
        vec![("path".into(), reason)]
    }
}
