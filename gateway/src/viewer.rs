//! The built-in live viewer: a browser that navigates to a stream route
//! (its `Accept` prefers `text/html`, see [`crate::negotiate::prefers_page`])
//! gets a small page, served from the binary, that reads the same URL as
//! Server-Sent Events and shows the events live.
//!
//! The page is self-contained: its script and style are inline, allowed by
//! their SHA-256 hashes in a strict `Content-Security-Policy` (nothing else
//! runs, loads or connects, except back to this origin). What varies per
//! route (its name, path, backend names, whether events come in an envelope)
//! is HTML-escaped into `data-` attributes the script reads as text.
//!
//! Bounds: the page keeps the newest [`MAX_ROWS`] rows (older ones are
//! dropped), holds at most as many while paused (older ones dropped, and
//! counted), and shows at most the first 100 000 characters of an event's
//! data.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::route::Route;

/// The page's script and style, inlined as they are (their hashes are in
/// the policy, so they must not change between hashing and sending).
const SCRIPT: &str = include_str!("viewer/viewer.js");
pub(crate) const STYLE: &str = include_str!("viewer/viewer.css");
/// The page's markup around them.
const MARKUP: &str = include_str!("viewer/viewer.html");

/// Rows the page keeps, and rows it holds while paused; the oldest go
/// first. (The page reads it from the markup; a test checks that its
/// fallback agrees.)
pub const MAX_ROWS: usize = 500;

/// The viewer page of `route`; for `HEAD`, its headers only.
pub fn page(route: &Route, head: bool) -> Response {
    html_page(render(route), head, policy())
}

/// A page of the gateway's own (`html`; for `HEAD`, its headers only)
/// under `policy`, never cached, sniffed or referred.
pub(crate) fn html_page(html: String, head: bool, policy: &str) -> Response {
    let length = html.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(html)
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(policy) = HeaderValue::try_from(policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The page's `Content-Security-Policy`: nothing but its own script and
/// style (by hash), and connections to its own origin.
pub fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| page_policy(SCRIPT))
}

/// The policy of a page with `script` and the shared style inline.
pub(crate) fn page_policy(script: &str) -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(script),
        hash(STYLE)
    )
}

pub(crate) fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The page for `route`, its names escaped. The markup's `{name}`
/// placeholders are filled in one pass, so nothing inserted (a route named
/// `{script}`, say) is read as a placeholder again.
fn render(route: &Route) -> String {
    // One backend names every event's source; several (or an envelope)
    // name it in each event.
    let source = match &*route.sources {
        [only] => only.as_ref(),
        _ => "",
    };
    let sources: Vec<&str> = route.sources.iter().map(AsRef::as_ref).collect();
    let value = |name: &str| -> Option<String> {
        Some(match name {
            "route" => escape(&route.name),
            "path" => escape(&route.path),
            "source" => escape(source),
            "sources" => escape(&sources.join(", ")),
            "envelope" => route.envelope.to_string(),
            "methods" => escape(&route.allow_header()),
            "auth" => route.auth.kind().to_string(),
            "max_rows" => MAX_ROWS.to_string(),
            "style" => STYLE.to_string(),
            "script" => SCRIPT.to_string(),
            _ => return None,
        })
    };
    let mut out = String::with_capacity(MARKUP.len() + SCRIPT.len() + STYLE.len() + 256);
    let mut rest = MARKUP;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after
            .find('}')
            .and_then(|end| Some((end, value(&after[..end])?)))
        {
            Some((end, text)) => {
                out.push_str(&text);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text made safe inside HTML text and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            escape(r#"<script>"a"&'b'</script>"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("clock"), "clock");
    }

    #[test]
    fn the_policy_names_the_inline_script_and_style() {
        let policy = policy();
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
        assert!(policy.contains(&format!("script-src '{}'", hash(SCRIPT))));
        assert!(policy.contains(&format!("style-src '{}'", hash(STYLE))));
        assert!(policy.contains("connect-src 'self'"));
        // The assets are inlined whole, exactly as hashed, once each.
        assert_eq!(MARKUP.matches("<script>{script}</script>").count(), 1);
        assert_eq!(MARKUP.matches("<style>{style}</style>").count(), 1);
        assert!(!SCRIPT.contains("</script"));
        assert!(!STYLE.contains("</style"));
    }

    #[test]
    fn the_script_keeps_as_many_rows_as_documented() {
        assert!(MARKUP.contains("data-max-rows=\"{max_rows}\""));
        assert!(SCRIPT.contains(&format!("Number(conf.maxRows) || {MAX_ROWS}")));
    }
}
