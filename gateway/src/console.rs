//! The console's index page (`[server.console] path`): every stream route
//! and publish path, each stream linked to its live viewer (with fields for
//! its path parameters) and each publish path with a form that posts an
//! event. Self-contained like the viewer: its script and the shared style
//! inline, allowed by hash in a strict `Content-Security-Policy`. Names,
//! paths, methods, the kind of auth and backend names are all it shows:
//! never a token, a secret, a URL or a key.

use std::sync::OnceLock;

use axum::response::Response;

use crate::server::Gateway;
use crate::viewer::{STYLE, escape, html_page, page_policy};

const SCRIPT: &str = include_str!("viewer/console.js");

/// The console page's `Content-Security-Policy`: its own script and the
/// style (by hash), connections (publishing) to its own origin.
pub fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| page_policy(SCRIPT))
}

/// The page; for `HEAD`, its headers only.
pub fn page(gateway: &Gateway, head: bool) -> Response {
    html_page(render(gateway), head, policy())
}

/// The `{name}` parameters of a path template.
fn params(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .collect()
}

/// Inputs for a path's parameters (the script fills the path with them).
fn param_inputs(path: &str) -> String {
    params(path)
        .into_iter()
        .map(|name| {
            let name = escape(name);
            format!(
                "<input class=\"param\" data-param=\"{name}\" placeholder=\"{name}\" aria-label=\"{name}\" autocomplete=\"off\">"
            )
        })
        .collect()
}

fn render(gateway: &Gateway) -> String {
    let mut routes = String::new();
    for route in &gateway.listed {
        let path = escape(&route.path);
        let sources: Vec<&str> = route.sources.iter().map(AsRef::as_ref).collect();
        let durable = if route.durable.is_some() {
            " <span class=\"tag\">durable</span>"
        } else {
            ""
        };
        routes.push_str(&format!(
            "<tr data-path=\"{path}\"><td class=\"name\">{name}{durable}</td><td><code>{path}</code></td>\
             <td>{methods}</td><td>{auth}</td><td>{sources}</td>\
             <td class=\"act\">{inputs}<button type=\"button\" class=\"open\">Open</button></td></tr>\n",
            name = escape(&route.name),
            methods = escape(&route.allow_header()),
            auth = route.auth.kind(),
            sources = escape(&sources.join(", ")),
            inputs = param_inputs(&route.path),
        ));
    }
    if routes.is_empty() {
        routes.push_str("<tr><td colspan=\"6\">no stream routes</td></tr>\n");
    }
    let mut publish = String::new();
    for (name, path) in &gateway.publish_paths {
        let escaped = escape(path);
        publish.push_str(&format!(
            "<section class=\"publish\" data-path=\"{escaped}\"><h3>{name} <code>POST {escaped}</code></h3>\
             <div class=\"controls\">{inputs}\
             <label>event <input class=\"event\" placeholder=\"name (optional)\" autocomplete=\"off\"></label>\
             <label>token <input class=\"token\" type=\"password\" placeholder=\"Bearer token\" autocomplete=\"off\"></label></div>\
             <div class=\"controls\"><label class=\"grow\">data (JSON) <textarea class=\"data\" rows=\"2\" spellcheck=\"false\">{{\"text\": \"hello\"}}</textarea></label></div>\
             <div class=\"controls\"><button type=\"button\" class=\"send\">Publish</button> <output class=\"answer\"></output></div></section>\n",
            name = escape(name),
            inputs = param_inputs(path),
        ));
    }
    if publish.is_empty() {
        publish.push_str("<p class=\"muted\">no publish paths</p>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n<title>gateway console</title>\n\
         <style>{STYLE}</style>\n</head>\n<body class=\"console\">\n<header><h1>gateway console</h1>\
         <p class=\"muted\">Open a stream to watch it live; publish an event to a publish path.</p></header>\n<main>\n\
         <h2>Streams</h2>\n<table id=\"routes\">\n<thead><tr><th>route</th><th>path</th><th>methods</th><th>auth</th><th>backends</th><th></th></tr></thead>\n\
         <tbody>\n{routes}</tbody>\n</table>\n<h2>Publish</h2>\n{publish}</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_of_a_path() {
        assert_eq!(params("/rooms/{room}/x/{id}"), ["room", "id"]);
        assert!(params("/plain").is_empty());
        assert!(param_inputs("/r/{a\"b}").contains("data-param=\"a&quot;b\""));
    }

    #[test]
    fn the_policy_names_the_script_and_style() {
        let script = crate::viewer::hash(SCRIPT);
        assert!(policy().contains(&format!("script-src '{script}'")));
        assert!(!SCRIPT.contains("</script"));
    }
}
