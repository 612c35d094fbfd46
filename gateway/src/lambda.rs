//! AWS Lambda: whether the binary serves Lambda invocations itself, how it
//! does (lambda_http's streaming runtime around the very same [`app`]), and
//! how long a stream may live inside one invocation.
//!
//! Two ways to run on Lambda, one router:
//! - under the Lambda Web Adapter (the container image): the gateway listens
//!   on its port as anywhere else, and the adapter turns invocations into
//!   HTTP requests (`mode = "http"`, which `auto` picks when it sees the
//!   adapter);
//! - natively (`provided.al2023` zip, or `mode = "native"`): invocations come
//!   from the Runtime API and responses stream back through it, with no
//!   adapter process and no local socket.
//!
//! A streamed response keeps the invocation (and its bill) running; Lambda
//! kills it at the deadline without a word to the client. So every stream
//! ends [`LambdaConfig::deadline_margin`] before the deadline, with a
//! `gateway.close` event carrying its last id, and `EventSource` resumes on a
//! fresh invocation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName};

use crate::config::{CloudFrontConfig, LambdaConfig, LambdaMode};
use crate::server::{Gateway, app, until_shutdown, with_jobs};

/// Set by Lambda for the runtime process (and its extensions).
pub const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
/// Where a container image carries the Lambda Web Adapter.
pub const ADAPTER_EXTENSION: &str = "/opt/extensions/lambda-adapter";
/// The exec wrapper of the adapter's Lambda layer.
const ADAPTER_WRAPPER: &str = "/opt/bootstrap";
/// What the Lambda runtime needs besides [`RUNTIME_API`]; Lambda sets them.
const RUNTIME_VARS: [&str; 3] = [
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];
/// The adapter's copy of the invocation's context, with its `deadline`.
const CONTEXT_HEADER: HeaderName = HeaderName::from_static("x-amzn-lambda-context");

/// How the binary serves, once `lambda.mode` met the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Listen on `server.host:port`.
    Http,
    /// Take invocations from the Lambda Runtime API.
    Native,
}

/// Resolves `mode` against the process environment `vars`; `adapter_present`
/// tells whether [`ADAPTER_EXTENSION`] exists. An error says why the
/// environment cannot serve the mode asked for.
pub fn resolve(
    mode: LambdaMode,
    vars: &HashMap<String, String>,
    adapter_present: bool,
) -> Result<Serving, String> {
    let in_lambda = is_set(vars.get(RUNTIME_API).map(String::as_str));
    // The adapter's layer (for zip functions) starts the function through
    // its wrapper; other layers' wrappers (tracing, monitoring) are not it.
    let adapter = adapter_present
        || vars.get("AWS_LAMBDA_EXEC_WRAPPER").map(String::as_str) == Some(ADAPTER_WRAPPER)
        || vars.keys().any(|k| k.starts_with("AWS_LWA_"));
    let serving = match mode {
        LambdaMode::Http => Serving::Http,
        LambdaMode::Native => Serving::Native,
        LambdaMode::Auto if in_lambda && !adapter => Serving::Native,
        LambdaMode::Auto => Serving::Http,
    };
    if serving == Serving::Native {
        if !in_lambda {
            return Err(format!(
                "lambda.mode is \"native\" but {RUNTIME_API} is not set: this is not a Lambda \
                 runtime (use mode \"http\" or \"auto\" outside Lambda)"
            ));
        }
        let missing: Vec<&str> = RUNTIME_VARS
            .into_iter()
            .filter(|v| vars.get(*v).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "native Lambda mode needs {}, which Lambda sets for every function",
                missing.join(", ")
            ));
        }
        if vars["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
            .parse::<i32>()
            .is_err()
        {
            return Err("AWS_LAMBDA_FUNCTION_MEMORY_SIZE is not a number".into());
        }
    }
    Ok(serving)
}

/// Whether this process runs in a Lambda execution environment (as the
/// function or beside it): Lambda sets [`RUNTIME_API`] for both.
pub fn in_lambda() -> bool {
    is_set(std::env::var(RUNTIME_API).ok().as_deref())
}

fn is_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

/// When and after how many bytes streams must end: inside a Lambda
/// invocation (its deadline, its cap on a streamed response) and behind
/// CloudFront (its response completion timeout).
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    function_timeout: Option<Duration>,
    margin: Duration,
    /// Whether `x-amzn-lambda-context` comes from the adapter (the process
    /// runs in Lambda, where the adapter sets it on every request) rather
    /// than from whoever sent the request.
    trust_context_header: bool,
    /// `lambda.max_response_bytes`.
    max_response_bytes: u64,
    /// How long CloudFront lets a response last, less its margin.
    completion: Option<Duration>,
}

/// What bounds one stream besides its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamBounds {
    /// The platform's deadline (Lambda's, less the margin) for the request
    /// and the work it starts.
    pub time_left: Option<Duration>,
    /// How long the response itself may last (the deadline, or CloudFront's
    /// completion timeout less its margin, whichever comes first).
    pub lifetime: Option<Duration>,
    /// The most bytes its body may carry (a Lambda invocation's).
    pub max_bytes: Option<u64>,
}

impl Deadlines {
    pub(crate) fn new(
        lambda: &LambdaConfig,
        cloudfront: &CloudFrontConfig,
        trust_context_header: bool,
    ) -> Self {
        Self {
            function_timeout: lambda.function_timeout,
            margin: lambda.deadline_margin,
            trust_context_header,
            max_response_bytes: lambda.max_response_bytes,
            completion: cloudfront
                .response_completion_timeout
                .map(|timeout| timeout.saturating_sub(cloudfront.completion_margin)),
        }
    }

    /// The bounds of a stream opened now for `request`.
    pub(crate) fn stream(&self, request: &Parts) -> StreamBounds {
        let time_left = self.remaining(request);
        let lifetime = match (time_left, self.completion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        StreamBounds {
            time_left,
            lifetime,
            // A Lambda response: its invocation is known, or the function
            // timeout is (the gateway was told it runs on Lambda).
            max_bytes: time_left.map(|_| self.max_response_bytes),
        }
    }

    /// The invocation a request belongs to: the native runtime's context,
    /// or, inside Lambda, the adapter's copy of it (`x-amzn-lambda-context`).
    fn invocation(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<Invocation> {
        if let Some(context) = extensions.get::<lambda_http::Context>() {
            return Some(Invocation {
                request_id: context.request_id.clone(),
                deadline: context.deadline,
            });
        }
        let header = headers
            .get(CONTEXT_HEADER)
            .filter(|_| self.trust_context_header)?;
        serde_json::from_slice(header.as_bytes()).ok()
    }

    /// The Lambda invocation's id, when the request is one's.
    pub(crate) fn request_id(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Option<String> {
        self.invocation(headers, extensions)
            .map(|invocation| invocation.request_id)
            .filter(|id| !id.is_empty())
    }

    /// How long a stream opened now for `request` may live, when an
    /// invocation limits it: the margin before the earliest known deadline.
    fn remaining(&self, request: &Parts) -> Option<Duration> {
        let invocation = self
            .invocation(&request.headers, &request.extensions)
            .map(|invocation| invocation.deadline)
            .filter(|&deadline| deadline > 0)
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now_millis())));
        let limit = match (invocation, self.function_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(limit.saturating_sub(self.margin))
    }
}

/// What the gateway reads of a Lambda invocation's context (the adapter
/// sends it as JSON).
#[derive(serde::Deserialize)]
struct Invocation {
    #[serde(default)]
    request_id: String,
    /// Milliseconds since the epoch.
    deadline: u64,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The name of the extension [`run`] registers.
pub const EXTENSION_NAME: &str = "gateway-shutdown";

/// Serves Lambda invocations through the Runtime API, each answered by the
/// gateway's router as a streamed response, until the shutdown token is
/// cancelled. Open streams then get their final event, and the runtime keeps
/// running for the shutdown grace so those last bytes reach Lambda.
///
/// Lambda sends SIGTERM before it shuts an environment down only when an
/// extension is registered, so `run` first registers an internal one that
/// subscribes to no event (it costs no invocation anything). If that fails,
/// streams still end before their deadline; only the signal is lost.
pub async fn run(gateway: Arc<Gateway>) -> Result<(), lambda_http::Error> {
    if let Err(error) = register_extension().await {
        tracing::warn!(%error, "Could not register for Lambda's SIGTERM; streams end at their deadline only");
    }
    let shutdown = gateway.shutdown_token();
    let runtime = lambda_http::run_with_streaming_response(app(Arc::clone(&gateway)));
    // The runtime never returns by itself: the grace always runs out, and
    // that is no news.
    let serving = with_jobs(&gateway, runtime);
    until_shutdown(serving, shutdown, || gateway.shutdown_grace(), None).await
}

/// Registers [`EXTENSION_NAME`] with the Extensions API and waits for its
/// (never coming) events in the background, as an extension must.
async fn register_extension() -> Result<(), lambda_http::Error> {
    use lambda_runtime_api_client::body::Body;
    use lambda_runtime_api_client::{Client, build_request};

    let client = Client::builder().build()?;
    let register = build_request()
        .method("POST")
        .uri("/2020-01-01/extension/register")
        .header("Lambda-Extension-Name", EXTENSION_NAME)
        .body(Body::from(r#"{"events":[]}"#))?;
    let response = client.call(register).await?;
    let status = response.status();
    let id = response
        .headers()
        .get("lambda-extension-identifier")
        .cloned()
        .filter(|_| status.is_success())
        .ok_or_else(|| format!("the Extensions API answered {status}"))?;
    let next = build_request()
        .method("GET")
        .uri("/2020-01-01/extension/event/next")
        .header("Lambda-Extension-Identifier", id)
        .body(Body::empty())?;
    tokio::spawn(client.call(next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const LAMBDA: [(&str, &str); 4] = [
        (RUNTIME_API, "127.0.0.1:9001"),
        ("AWS_LAMBDA_FUNCTION_NAME", "gateway"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ];

    #[test]
    fn auto_is_native_in_lambda_without_an_adapter() {
        let lambda = vars(&LAMBDA);
        assert_eq!(
            resolve(LambdaMode::Auto, &lambda, false),
            Ok(Serving::Native)
        );
        assert_eq!(resolve(LambdaMode::Auto, &lambda, true), Ok(Serving::Http));
        let mut lwa = lambda.clone();
        lwa.insert("AWS_LWA_INVOKE_MODE".into(), "response_stream".into());
        assert_eq!(resolve(LambdaMode::Auto, &lwa, false), Ok(Serving::Http));
        let mut layer = lambda.clone();
        layer.insert("AWS_LAMBDA_EXEC_WRAPPER".into(), "/opt/bootstrap".into());
        assert_eq!(resolve(LambdaMode::Auto, &layer, false), Ok(Serving::Http));
        // Another layer's wrapper (tracing, say) is not the adapter.
        let mut otel = lambda.clone();
        otel.insert("AWS_LAMBDA_EXEC_WRAPPER".into(), "/opt/otel-handler".into());
        assert_eq!(resolve(LambdaMode::Auto, &otel, false), Ok(Serving::Native));
        assert_eq!(
            resolve(LambdaMode::Auto, &vars(&[]), false),
            Ok(Serving::Http)
        );
        assert_eq!(resolve(LambdaMode::Http, &lambda, false), Ok(Serving::Http));
        assert_eq!(resolve(LambdaMode::Native, &lwa, true), Ok(Serving::Native));
    }

    #[test]
    fn native_outside_lambda_says_what_is_missing() {
        let err = resolve(LambdaMode::Native, &vars(&[]), false).unwrap_err();
        assert!(err.contains(RUNTIME_API), "{err}");
        let err = resolve(LambdaMode::Auto, &vars(&LAMBDA[..2]), false).unwrap_err();
        assert!(
            err.contains("AWS_LAMBDA_FUNCTION_MEMORY_SIZE, AWS_LAMBDA_FUNCTION_VERSION"),
            "{err}"
        );
        let mut bad = vars(&LAMBDA);
        bad.insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "lots".into());
        assert!(resolve(LambdaMode::Native, &bad, false).is_err());
    }

    fn request(context: Option<&str>) -> Parts {
        let mut builder = axum::http::Request::builder();
        if let Some(json) = context {
            builder = builder.header(CONTEXT_HEADER, json);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn deadlines(timeout: Option<u64>, trust: bool) -> Deadlines {
        let config = LambdaConfig {
            function_timeout: timeout.map(Duration::from_secs),
            deadline_margin: Duration::from_secs(10),
            ..LambdaConfig::default()
        };
        Deadlines::new(&config, &CloudFrontConfig::default(), trust)
    }

    /// A stream's lifetime is the earliest of the Lambda deadline and
    /// CloudFront's completion timeout (each less its margin); only a
    /// Lambda response has a byte budget.
    #[test]
    fn a_stream_is_bounded_by_every_platform_in_front() {
        let lambda = |timeout: Option<u64>| LambdaConfig {
            function_timeout: timeout.map(Duration::from_secs),
            max_response_bytes: 1_000_000,
            ..LambdaConfig::default()
        };
        let cloudfront = |timeout: Option<u64>| CloudFrontConfig {
            response_completion_timeout: timeout.map(Duration::from_secs),
            completion_margin: Duration::from_secs(5),
        };
        let bounds =
            |l, c| Deadlines::new(&lambda(l), &cloudfront(c), false).stream(&request(None));
        let secs = |s| Some(Duration::from_secs(s));
        let plain = bounds(None, None);
        assert_eq!(
            (plain.time_left, plain.lifetime, plain.max_bytes),
            (None, None, None)
        );
        let behind_cloudfront = bounds(None, Some(600));
        assert_eq!(behind_cloudfront.lifetime, secs(595));
        assert_eq!(
            behind_cloudfront.time_left, None,
            "jobs outlive the response"
        );
        assert_eq!(behind_cloudfront.max_bytes, None, "not a Lambda response");
        let on_lambda = bounds(Some(900), Some(600));
        assert_eq!(on_lambda.time_left, secs(890));
        assert_eq!(on_lambda.lifetime, secs(595));
        assert_eq!(on_lambda.max_bytes, Some(1_000_000));
        assert_eq!(bounds(Some(300), Some(600)).lifetime, secs(290));
    }

    #[test]
    fn streams_end_a_margin_before_the_earliest_deadline() {
        assert_eq!(deadlines(None, true).remaining(&request(None)), None);
        assert_eq!(
            deadlines(Some(900), false).remaining(&request(None)),
            Some(Duration::from_secs(890))
        );
        let in_60s = format!(
            r#"{{"request_id":"r","deadline":{}}}"#,
            now_millis() + 60_000
        );
        let left = deadlines(Some(900), true)
            .remaining(&request(Some(&in_60s)))
            .unwrap();
        assert!(left <= Duration::from_secs(50) && left > Duration::from_secs(45));
        // Outside Lambda the header is the client's, and means nothing.
        assert_eq!(
            deadlines(Some(900), false).remaining(&request(Some(&in_60s))),
            Some(Duration::from_secs(890))
        );
        // A deadline already within the margin leaves nothing.
        let soon = format!(r#"{{"deadline":{}}}"#, now_millis() + 5_000);
        assert_eq!(
            deadlines(None, true).remaining(&request(Some(&soon))),
            Some(Duration::ZERO)
        );
        // A malformed header is ignored.
        assert_eq!(
            deadlines(None, true).remaining(&request(Some("{\"deadline\":\"x\"}"))),
            None
        );
    }

    #[test]
    fn the_native_context_is_the_deadline() {
        let mut parts = request(None);
        let mut context = lambda_http::Context::default();
        context.deadline = now_millis() + 30_000;
        parts.extensions.insert(context);
        let left = deadlines(Some(900), false).remaining(&parts).unwrap();
        assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(15));
    }
}
