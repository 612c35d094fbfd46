//! CloudFront's side of the chain, offline: the viewer-request CloudFront
//! Function and the Lambda@Edge edge hasher (the project's own JavaScript,
//! run by Node through `driver.mjs`), the origin request policy (read from
//! `deploy/template.yaml`, with a deploy's parameter values), and Origin
//! Access Control's SigV4 signing (the `aws-sigv4` crate, service `lambda`,
//! signing always).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// The distribution's domain, as viewers address it.
pub const DISTRIBUTION_DOMAIN: &str = "d111111abcdef8.cloudfront.net";
/// The distribution's id, for the events' context.
const DISTRIBUTION_ID: &str = "EDFDVBD6EXAMPLE";
/// The viewer's address, for the events.
const VIEWER_IP: &str = "198.51.100.11";
/// The viewer's source port, for `CloudFront-Viewer-Address`.
const VIEWER_PORT: u16 = 46532;
/// The region of the Function URL, and so of OAC's signature.
pub const REGION: &str = "us-east-1";
/// The signing name of a Function URL.
pub const SERVICE: &str = "lambda";
/// The credentials CloudFront signs with (fixed, for the test).
pub const ACCESS_KEY_ID: &str = "AKIDCHAINTESTOAC0001";
/// The secret of [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "chain+test/secret/OAC0000000000000000000";
/// How much of a body an origin-request Lambda@Edge function sees: "For
/// origin request events, the body is truncated at 1 MB" (CloudFront
/// Developer Guide, Restrictions on Lambda@Edge).
pub const EDGE_BODY_LIMIT: usize = 1 << 20;

/// An HTTP request at some point of the chain. Header names are lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The path, percent-encoded as sent.
    pub uri: String,
    /// The query string as sent, without `?` (empty for none).
    pub query: String,
    /// Headers in order, names lowercase; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, uri: &str, query: &str) -> Self {
        Self {
            method: method.into(),
            uri: uri.into(),
            query: query.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path with its query, as in a request line.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            self.uri.clone()
        } else {
            format!("{}?{}", self.uri, self.query)
        }
    }
}

/// A response generated at the edge: CloudFront answers the viewer with it
/// and never contacts the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The status code.
    pub status: u16,
    /// The body, as the function gave it.
    pub body: String,
}

/// Runs one of the JavaScript functions in Node on one event.
async fn run_js(function: &str, event: Value) -> Value {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let driver = manifest.join("chain").join("driver.mjs");
    let deploy = std::env::var_os("CHAIN_DEPLOY_DIR")
        .map_or_else(|| manifest.join("..").join("deploy"), PathBuf::from);
    let mut child = tokio::process::Command::new("node")
        .arg(&driver)
        .env("CHAIN_DEPLOY_DIR", &deploy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the chain test runs the deploy chain's JavaScript with Node.js 18 or later, \
                 and `node` could not be started ({e}): install Node.js (Debian: apt-get install nodejs)"
            )
        });
    let input = json!({"function": function, "event": event}).to_string();
    let mut stdin = child.stdin.take().expect("node's stdin is piped");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write the event to node");
    drop(stdin);
    // Bounded like every wait here: a function that hangs fails the test.
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("node finished within 20 s")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {function} function failed in node ({}), deploy dir {}:\n{stderr}",
        output.status,
        deploy.display()
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "driver.mjs printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    out["result"].clone()
}

/// The viewer-request CloudFront Function. CloudFront Functions never see
/// the body; it goes on unchanged. Nor do they see a `Cookie` header: its
/// cookies are the event's `cookies` ("If the request contains any Cookie
/// headers, those headers are not part of the headers object"), and
/// CloudFront writes the request's `Cookie` header from what the function
/// returns there.
pub async fn viewer_request(request: &Request) -> Result<Request, Generated> {
    let mut headers = Map::new();
    let mut cookies = Map::new();
    for (name, value) in &request.headers {
        if name == "cookie" {
            for (cookie, value) in cookie_pairs(value) {
                add_multi(&mut cookies, cookie, value);
            }
        } else {
            add_multi(&mut headers, name, value);
        }
    }
    let mut querystring = Map::new();
    for (name, value) in split_query(&request.query) {
        add_multi(&mut querystring, &name, &value);
    }
    let event = json!({
        "version": "1.0",
        "context": {
            "distributionDomainName": DISTRIBUTION_DOMAIN,
            "distributionId": DISTRIBUTION_ID,
            "eventType": "viewer-request",
            "requestId": "chain-test-request",
        },
        "viewer": {"ip": VIEWER_IP},
        "request": {
            "method": request.method,
            "uri": request.uri,
            "querystring": querystring,
            "headers": headers,
            "cookies": cookies,
        },
    });
    let result = run_js("viewer", event).await;
    if let Some(status) = result.get("statusCode") {
        return Err(Generated {
            status: status_code(status),
            body: result["body"].as_str().unwrap_or_default().to_string(),
        });
    }
    let mut headers: Vec<(String, String)> =
        multi_values(object(&result["headers"], "viewer request headers"))
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
    let cookies = match &result["cookies"] {
        Value::Null => Vec::new(),
        cookies => multi_values(object(cookies, "viewer request cookies")),
    };
    if !cookies.is_empty() {
        headers.push(("cookie".into(), join_cookies(&cookies)));
    }
    Ok(Request {
        method: request.method.clone(),
        uri: result["uri"].as_str().unwrap_or(&request.uri).to_string(),
        query: join_query(&result["querystring"]),
        headers,
        body: request.body.clone(),
    })
}

/// One `{value}` per name, or `{value, multiValue: [{value}, …]}` when a
/// name repeats: the CloudFront Functions shape of headers and query strings.
fn add_multi(map: &mut Map<String, Value>, name: &str, value: &str) {
    match map.get_mut(name) {
        None => {
            map.insert(name.into(), json!({"value": value}));
        }
        Some(entry) => {
            let first = entry["value"].clone();
            let multi = entry
                .as_object_mut()
                .expect("an entry is an object")
                .entry("multiValue")
                .or_insert_with(|| json!([{"value": first}]));
            multi
                .as_array_mut()
                .expect("multiValue is an array")
                .push(json!({"value": value}));
        }
    }
}

/// The (name, value) pairs of a CloudFront Functions object of `{value}`
/// or `{value, multiValue: [{value}, …]}` fields, names as they are.
fn multi_values(fields: &Map<String, Value>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (name, field) in fields {
        match field.get("multiValue").and_then(Value::as_array) {
            Some(values) => {
                for v in values {
                    pairs.push((name.clone(), text(&v["value"])));
                }
            }
            None => pairs.push((name.clone(), text(&field["value"]))),
        }
    }
    pairs
}

/// The cookies of a `Cookie` header (`a=1; b=2`) as (name, value) pairs.
/// Cookie names are case-sensitive: they stay as sent.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A `Cookie` header of (name, value) pairs.
fn join_cookies<N: AsRef<str>, V: AsRef<str>>(cookies: &[(N, V)]) -> String {
    cookies
        .iter()
        .map(|(name, value)| format!("{}={}", name.as_ref(), value.as_ref()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `a=1&b=2` as (name, value) pairs, still percent-encoded.
fn split_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (n.to_string(), v.to_string())
        })
        .collect()
}

/// A function's query string back as text: an object of `{value}` or
/// `{multiValue}` (values as they appear in the URL, which is how AWS's own
/// examples rebuild it), or a string a function may set instead.
fn join_query(querystring: &Value) -> String {
    match querystring {
        Value::String(s) => s.trim_start_matches('?').to_string(),
        Value::Object(fields) => {
            let mut parts = Vec::new();
            for (name, field) in fields {
                match field.get("multiValue").and_then(Value::as_array) {
                    Some(values) => {
                        for v in values {
                            parts.push(format!("{name}={}", text(&v["value"])));
                        }
                    }
                    None => parts.push(format!("{name}={}", text(&field["value"]))),
                }
            }
            parts.join("&")
        }
        _ => String::new(),
    }
}

/// What the origin request policy of `deploy/template.yaml` says for one
/// deploy: its `!If`s and `!Ref`s evaluated with that deploy's parameter
/// values, as CloudFormation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRequestPolicy {
    /// `HeadersConfig.HeaderBehavior`.
    pub header_behavior: String,
    /// `HeadersConfig.Headers`, as written.
    pub headers: Vec<String>,
    /// `QueryStringsConfig.QueryStringBehavior`.
    pub query_string_behavior: String,
    /// `CookiesConfig.CookieBehavior`: `none`, `whitelist`, `allExcept` or
    /// `all`.
    pub cookie_behavior: String,
    /// `CookiesConfig.Cookies`: the cookies `whitelist` forwards and
    /// `allExcept` withholds (names are case-sensitive).
    pub cookies: Vec<String>,
}

impl OriginRequestPolicy {
    /// The policy of the `AWS::CloudFront::OriginRequestPolicy` resource in
    /// `deploy/template.yaml`, for a deploy that gives the template
    /// `parameters` (name, value); the others keep their `Default`.
    pub fn from_template(parameters: &[(&str, &str)]) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("deploy")
            .join("template.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Self::parse(&text, parameters).unwrap_or_else(|why| panic!("{}: {why}", path.display()))
    }

    /// Extracts the first origin request policy of a template, by plain text
    /// extraction: one key a line, lists in block or flow style, and the
    /// intrinsic functions that decide what it forwards (`!Ref`, `!If`,
    /// `!Not`, `!Equals`, in flow style on one line) evaluated for a deploy
    /// that gives the template `parameters`.
    pub fn parse(template: &str, parameters: &[(&str, &str)]) -> Result<Self, String> {
        let template = Template {
            lines: template.lines().collect(),
            parameters,
        };
        let lines = &template.lines;
        let at = lines
            .iter()
            .position(|l| uncommented(l).trim() == "Type: AWS::CloudFront::OriginRequestPolicy")
            .ok_or("no resource of Type AWS::CloudFront::OriginRequestPolicy")?;
        // The resource is the block around its `Type:` line: up to the next
        // line indented less than `Type:`.
        let depth = indent(lines[at]);
        let block: Vec<&str> = lines[at + 1..]
            .iter()
            .take_while(|l| uncommented(l).trim().is_empty() || indent(l) >= depth)
            .copied()
            .collect();
        let scalar = |key: &str| -> Result<String, String> {
            let written = block
                .iter()
                .find_map(|l| value_of(l, key))
                .ok_or_else(|| format!("the origin request policy has no {key}"))?;
            template.evaluate(written)?.text(key)
        };
        let list = |key: &str| -> Result<Vec<String>, String> {
            let Some(at) = block.iter().position(|l| value_of(l, key).is_some()) else {
                return Ok(Vec::new());
            };
            let inline = value_of(block[at], key).expect("the key's line");
            if !inline.is_empty() {
                return match template.evaluate(inline)? {
                    Cfn::List(items) => items.into_iter().map(|item| item.text(key)).collect(),
                    Cfn::NoValue => Ok(Vec::new()),
                    other => Err(format!("{key} is {other:?}, not a list")),
                };
            }
            let key_depth = indent(uncommented(block[at]));
            let mut items = Vec::new();
            for line in &block[at + 1..] {
                let line = uncommented(line);
                if line.trim().is_empty() {
                    continue;
                }
                match line.trim_start().strip_prefix("- ") {
                    Some(item) if indent(line) >= key_depth => {
                        items.push(template.evaluate(item.trim())?.text(key)?);
                    }
                    _ => break,
                }
            }
            Ok(items)
        };
        Ok(Self {
            header_behavior: scalar("HeaderBehavior")?,
            headers: list("Headers")?,
            query_string_behavior: scalar("QueryStringBehavior")?,
            cookie_behavior: scalar("CookieBehavior")?,
            cookies: list("Cookies")?,
        })
    }

    /// Whether the policy forwards a viewer header to the origin.
    pub fn forwards(&self, name: &str) -> bool {
        match self.header_behavior.as_str() {
            "none" => false,
            "whitelist" => self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)),
            "allExcept" => !self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)),
            // allViewer, allViewerAndWhitelistCloudFront
            _ => true,
        }
    }

    /// Whether the policy forwards a viewer's cookie to the origin.
    pub fn forwards_cookie(&self, name: &str) -> bool {
        let listed = self.cookies.iter().any(|c| c == name);
        match self.cookie_behavior.as_str() {
            "none" => false,
            "whitelist" => listed,
            "allExcept" => !listed,
            "all" => true,
            other => panic!("{other:?} is not a CookieBehavior (none, whitelist, allExcept, all)"),
        }
    }

    /// The request CloudFront builds for the origin: only the forwarded
    /// viewer headers, the origin's own `Host` (unless the viewer's is
    /// forwarded), the query string if the policy passes it, the body with
    /// its length, and a `Cookie` header that CloudFront writes with only
    /// the viewer's cookies the policy forwards (none: no header).
    /// CloudFront's own headers (`CloudFront-…`) come from CloudFront, never
    /// from the viewer: `CloudFront-Viewer-Address` (the viewer's
    /// `ip:port`) when the policy names it.
    pub fn apply(&self, viewer: &Request, origin_host: &str) -> Request {
        let mut headers: Vec<(String, String)> = viewer
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("cloudfront-"))
            .filter(|(name, _)| {
                !["host", "content-length", "cookie"].contains(&name.as_str())
                    && self.forwards(name)
            })
            .cloned()
            .collect();
        let host = match viewer.get("host") {
            Some(viewer_host) if self.forwards("host") => viewer_host.to_string(),
            _ => origin_host.to_string(),
        };
        headers.insert(0, ("host".into(), host));
        if self.forwards("cloudfront-viewer-address") {
            headers.push((
                "cloudfront-viewer-address".into(),
                format!("{VIEWER_IP}:{VIEWER_PORT}"),
            ));
        }
        let cookies: Vec<(&str, &str)> = viewer
            .headers
            .iter()
            .filter(|(name, _)| name == "cookie")
            .flat_map(|(_, value)| cookie_pairs(value))
            .filter(|(name, _)| self.forwards_cookie(name))
            .collect();
        if !cookies.is_empty() {
            headers.push(("cookie".into(), join_cookies(&cookies)));
        }
        if !viewer.body.is_empty() {
            headers.push(("content-length".into(), viewer.body.len().to_string()));
        }
        let query = match self.query_string_behavior.as_str() {
            "none" => String::new(),
            "all" => viewer.query.clone(),
            other => panic!("the chain test models QueryStringBehavior none or all, not {other}"),
        };
        Request {
            method: viewer.method.clone(),
            uri: viewer.uri.clone(),
            query,
            headers,
            body: viewer.body.clone(),
        }
    }
}

/// A template's lines, and the parameter values a deploy gives it.
struct Template<'t> {
    lines: Vec<&'t str>,
    parameters: &'t [(&'t str, &'t str)],
}

/// What an expression of a template evaluates to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cfn {
    Text(String),
    List(Vec<Cfn>),
    Bool(bool),
    /// `!Ref AWS::NoValue`: the property is left out.
    NoValue,
}

impl Cfn {
    fn text(self, what: &str) -> Result<String, String> {
        match self {
            Self::Text(text) => Ok(text),
            other => Err(format!("{what} is {other:?}, not a string")),
        }
    }

    fn bool(self, what: &str) -> Result<bool, String> {
        match self {
            Self::Bool(value) => Ok(value),
            other => Err(format!("{what} is {other:?}, not a condition")),
        }
    }
}

/// A flow-style value as written: a scalar, a `[…]` list, or a short-form
/// tag (`!If`) with its argument.
#[derive(Debug)]
enum Node {
    Scalar(String),
    List(Vec<Node>),
    Tagged(String, Box<Node>),
}

impl Template<'_> {
    /// Evaluates a value written on one line, as CloudFormation would.
    fn evaluate(&self, written: &str) -> Result<Cfn, String> {
        let mut rest = written.trim();
        let node = flow_node(&mut rest, false)?;
        if !rest.trim().is_empty() {
            return Err(format!("{written:?}: {rest:?} is left over"));
        }
        self.eval(&node)
            .map_err(|why| format!("{written:?}: {why}"))
    }

    fn eval(&self, node: &Node) -> Result<Cfn, String> {
        Ok(match node {
            Node::Scalar(text) => Cfn::Text(text.clone()),
            // CloudFormation drops `!Ref AWS::NoValue` from a list.
            Node::List(items) => Cfn::List(
                items
                    .iter()
                    .map(|item| self.eval(item))
                    .filter(|item| item != &Ok(Cfn::NoValue))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Tagged(tag, argument) => match (tag.as_str(), &**argument) {
                ("Ref", Node::Scalar(name)) if name == "AWS::NoValue" => Cfn::NoValue,
                ("Ref", Node::Scalar(name)) => Cfn::Text(self.parameter(name)?),
                ("If", Node::List(args)) if args.len() == 3 => {
                    let Node::Scalar(condition) = &args[0] else {
                        return Err(format!("!If names a condition first, not {:?}", args[0]));
                    };
                    self.eval(&args[if self.condition(condition)? { 1 } else { 2 }])?
                }
                ("Not", Node::List(args)) if args.len() == 1 => {
                    Cfn::Bool(!self.eval(&args[0])?.bool("the argument of !Not")?)
                }
                ("Equals", Node::List(args)) if args.len() == 2 => {
                    Cfn::Bool(self.eval(&args[0])? == self.eval(&args[1])?)
                }
                _ => {
                    return Err(format!(
                        "the chain test does not evaluate !{tag} {argument:?}"
                    ));
                }
            },
        })
    }

    /// A parameter's value in this deploy: the one given, else its
    /// `Default`.
    fn parameter(&self, name: &str) -> Result<String, String> {
        if let Some((_, value)) = self.parameters.iter().find(|(n, _)| *n == name) {
            return Ok((*value).to_string());
        }
        let (_, body) = self
            .entry("Parameters", name)
            .ok_or_else(|| format!("the template has no parameter {name}"))?;
        let depth = body
            .iter()
            .map(|l| uncommented(l))
            .find(|l| !l.trim().is_empty())
            .map_or(0, indent);
        let default = body
            .iter()
            .filter(|l| indent(uncommented(l)) == depth)
            .find_map(|l| value_of(l, "Default"))
            .ok_or_else(|| format!("parameter {name} has no Default, and the deploy gives none"))?;
        self.evaluate(default)?.text(name)
    }

    /// Whether a condition of the `Conditions` section holds in this deploy.
    fn condition(&self, name: &str) -> Result<bool, String> {
        let (written, _) = self
            .entry("Conditions", name)
            .ok_or_else(|| format!("the template has no condition {name}"))?;
        self.evaluate(written)?.bool(name)
    }

    /// Entry `name` of a top-level section: the value on its key's line,
    /// and the lines under it.
    fn entry(&self, section: &str, name: &str) -> Option<(&str, Vec<&str>)> {
        let header = format!("{section}:");
        let start = self
            .lines
            .iter()
            .position(|l| uncommented(l).trim_end() == header)?;
        let lines: Vec<&str> = self.lines[start + 1..]
            .iter()
            .take_while(|l| uncommented(l).trim().is_empty() || indent(l) > 0)
            .copied()
            .collect();
        let depth = lines
            .iter()
            .map(|l| uncommented(l))
            .find(|l| !l.trim().is_empty())
            .map(indent)?;
        let at = lines
            .iter()
            .position(|l| indent(l) == depth && value_of(l, name).is_some())?;
        let body = lines[at + 1..]
            .iter()
            .take_while(|l| uncommented(l).trim().is_empty() || indent(l) > depth)
            .copied()
            .collect();
        Some((value_of(lines[at], name)?, body))
    }
}

/// `deploy/template.yaml`'s text.
pub fn template_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/template.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A numeric attribute (`Default`, `MinValue`, `MaxValue`) of a parameter of
/// `deploy/template.yaml`.
pub fn parameter_number(name: &str, attribute: &str) -> u64 {
    let text = template_text();
    let template = Template {
        lines: text.lines().collect(),
        parameters: &[],
    };
    let (_, body) = template
        .entry("Parameters", name)
        .unwrap_or_else(|| panic!("deploy/template.yaml has no parameter {name}"));
    body.iter()
        .find_map(|l| value_of(l, attribute))
        .unwrap_or_else(|| panic!("parameter {name} has no {attribute}"))
        .parse()
        .unwrap_or_else(|e| panic!("parameter {name}'s {attribute} is not a number: {e}"))
}

/// The value written after `key:` on a line, if the line is that key's.
fn value_of<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    uncommented(line)
        .trim()
        .strip_prefix(key)?
        .strip_prefix(':')
        .map(str::trim)
}

/// Reads one value from the start of `rest`: inside a `[…]` list
/// (`in_list`) a plain scalar ends at `,` or `]`, outside at the line's end.
fn flow_node(rest: &mut &str, in_list: bool) -> Result<Node, String> {
    *rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix('!') {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let tag = after[..end].to_string();
        *rest = &after[end..];
        return Ok(Node::Tagged(tag, Box::new(flow_node(rest, in_list)?)));
    }
    if let Some(after) = rest.strip_prefix('[') {
        *rest = after;
        let mut items = Vec::new();
        loop {
            *rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix(']') {
                *rest = after;
                return Ok(Node::List(items));
            }
            if !items.is_empty() {
                *rest = rest
                    .strip_prefix(',')
                    .ok_or_else(|| format!("a list goes on with , or ends with ], not {rest:?}"))?;
            }
            items.push(flow_node(rest, true)?);
        }
    }
    if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let quoted = &rest[1..];
        let end = quoted
            .find(quote)
            .ok_or_else(|| format!("{rest:?} has no closing {quote}"))?;
        let text = quoted[..end].to_string();
        *rest = &quoted[end + 1..];
        return Ok(Node::Scalar(text));
    }
    let end = if in_list {
        rest.find([',', ']']).unwrap_or(rest.len())
    } else {
        rest.len()
    };
    let text = rest[..end].trim();
    *rest = &rest[end..];
    if text.is_empty() {
        return Err("a value is missing".into());
    }
    Ok(Node::Scalar(text.to_string()))
}

fn uncommented(line: &str) -> &str {
    match line.find(" #") {
        Some(at) => &line[..at],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Methods whose body CloudFront exposes to a Lambda@Edge function with
/// IncludeBody ("HTTP methods that allow writing (POST, PUT, DELETE, etc.)").
const BODY_METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// The Lambda@Edge edge hasher on origin-request (IncludeBody: true):
/// CloudFront hands it at most [`EDGE_BODY_LIMIT`] bytes of the body,
/// base64-encoded, with `inputTruncated` when there was more; the origin
/// later gets the whole body, unchanged (action `read-only`).
pub async fn edge_hasher(request: &Request, origin_host: &str) -> Result<Request, Generated> {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let entry = headers.entry(name.clone()).or_insert_with(|| json!([]));
        entry
            .as_array_mut()
            .expect("header entries are arrays")
            .push(json!({"key": name, "value": value}));
    }
    let (domain, port) = origin_host
        .rsplit_once(':')
        .map_or((origin_host, 443), |(d, p)| {
            (d, p.parse().expect("the origin port is a number"))
        });
    let mut cf_request = json!({
        "clientIp": VIEWER_IP,
        "method": request.method,
        "uri": request.uri,
        "querystring": request.query,
        "headers": headers,
        "origin": {"custom": {
            "customHeaders": {},
            "domainName": domain,
            "keepaliveTimeout": 5,
            "path": "",
            "port": port,
            "protocol": "https",
            "readTimeout": 30,
            "sslProtocols": ["TLSv1.2"],
        }},
    });
    if BODY_METHODS.contains(&request.method.as_str()) {
        let seen = &request.body[..request.body.len().min(EDGE_BODY_LIMIT)];
        cf_request["body"] = json!({
            "inputTruncated": request.body.len() > EDGE_BODY_LIMIT,
            "action": "read-only",
            "encoding": "base64",
            "data": BASE64.encode(seen),
        });
    }
    let event = json!({"Records": [{"cf": {
        "config": {
            "distributionDomainName": DISTRIBUTION_DOMAIN,
            "distributionId": DISTRIBUTION_ID,
            "eventType": "origin-request",
            "requestId": "chain-test-request",
        },
        "request": cf_request,
    }}]});
    let result = run_js("edge", event).await;
    if let Some(status) = result.get("status") {
        return Err(Generated {
            status: status_code(status),
            body: result["body"].as_str().unwrap_or_default().to_string(),
        });
    }
    let mut headers = Vec::new();
    for (name, values) in object(&result["headers"], "edge request headers") {
        for v in values
            .as_array()
            .expect("Lambda@Edge header values are arrays")
        {
            headers.push((name.to_ascii_lowercase(), text(&v["value"])));
        }
    }
    Ok(Request {
        method: request.method.clone(),
        uri: result["uri"].as_str().unwrap_or(&request.uri).to_string(),
        query: result["querystring"]
            .as_str()
            .unwrap_or(&request.query)
            .to_string(),
        headers,
        body: request.body.clone(),
    })
}

/// Origin Access Control signing the origin request, `always`: any
/// `Authorization` is replaced by the SigV4 one, every header sent is
/// signed (as `aws-sigv4` does, except its default exclusions such as
/// `user-agent`), and the payload hash is the `x-amz-content-sha256` the
/// edge hasher set. CloudFront does not read the body to hash it; for a
/// request without that header (a `GET`, which has no body) the signature
/// covers the hash of the empty payload, and no header is added.
pub fn oac_sign(request: &Request, now: SystemTime) -> Request {
    let mut signed = request.clone();
    signed
        .headers
        .retain(|(name, _)| name != "authorization" && name != "x-amz-date");
    let host = signed.get("host").expect("the origin request has a Host");
    let url = format!("https://{host}{}", signed.target());
    let body = match signed.get("x-amz-content-sha256") {
        Some(hash) => SignableBody::Precomputed(hash.to_string()),
        None => SignableBody::Bytes(&[]),
    };
    let identity =
        Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "chain-test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .expect("complete signing parameters")
        .into();
    let signable = SignableRequest::new(
        &signed.method,
        url,
        signed.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        body,
    )
    .expect("a signable request");
    let (instructions, _signature) = sign(signable, &params)
        .expect("aws-sigv4 signs the request")
        .into_parts();
    let added: Vec<(String, String)> = instructions
        .headers()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    signed.headers.extend(added);
    signed
}

fn object<'a>(value: &'a Value, what: &str) -> &'a Map<String, Value> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{what} are not an object: {value}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn status_code(value: &Value) -> u16 {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or_else(|| panic!("{value} is not a status code"))
}
