//! Loading: layer the sources, then deserialize piece by piece so that one
//! bad value does not hide the next.
//!
//! Serde stops at the first error of a struct. To report every problem at
//! once, a table that fails is tried again one key at a time (keeping the keys
//! that select an enum variant), which isolates each bad key; missing required
//! keys are found by trying the table with none of its keys.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ::config::{Config, Environment, File, FileFormat, Map, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::{
    AuthConfig, CloudFrontConfig, ConfigError, ConfigProblem, GatewayConfig, LambdaConfig,
    PublishConfig, RouteConfig, ServerConfig,
};
use backends::BackendConfig;
use backends::publish::PublisherConfig;
use backends::registry;

/// The built-in configuration, used when no file is given: the reference
/// stream on `/`. It is `config/default.toml`, which documents every option.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");

/// Prefix of the environment variables that override config keys:
/// `GATEWAY__SERVER__PORT=9090` sets `server.port`.
const ENV_PREFIX: &str = "GATEWAY";
const ENV_SEPARATOR: &str = "__";
/// How values from the built-in config are named in problems.
const DEFAULT_ORIGIN: &str = "built-in default config";
const ENV_ORIGIN: &str = "the environment";

/// Where the base configuration comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The built-in [`DEFAULT_CONFIG`].
    Default,
    /// A file; its extension (`.toml`, `.yaml`/`.yml`, `.json`) says its format.
    File(&'a Path),
    /// TOML text, named `origin` in problems (a config given in memory: the
    /// fuzzer's, a test's).
    Text {
        /// What problems name as the text's origin.
        origin: &'a str,
        /// The TOML.
        text: &'a str,
    },
}

/// Loads and validates the configuration: `base`, then the `GATEWAY__…`
/// variables of `env` (the process environment when `None`).
///
/// Every problem is reported at once, each naming its origin (file or
/// environment variable), key and reason.
pub fn load(
    base: Source<'_>,
    env: Option<HashMap<String, String>>,
) -> Result<GatewayConfig, ConfigError> {
    let origin = match base {
        Source::Default => DEFAULT_ORIGIN.to_string(),
        Source::File(path) => path.display().to_string(),
        Source::Text { origin, .. } => origin.to_string(),
    };
    let base_source = match base {
        Source::Default => File::from_str(DEFAULT_CONFIG, FileFormat::Toml),
        Source::File(path) => {
            let format = match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => FileFormat::Toml,
                Some("yaml" | "yml") => FileFormat::Yaml,
                Some("json") => FileFormat::Json,
                _ => {
                    return Err(one_problem(
                        &origin,
                        "the file name must end in .toml, .yaml, .yml or .json",
                    ));
                }
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| one_problem(&origin, &format!("cannot read the file: {e}")))?;
            File::from_str(&text, format)
        }
        Source::Text { text, .. } => File::from_str(text, FileFormat::Toml),
    };
    let env_vars = env;
    let env = Environment::with_prefix(ENV_PREFIX)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .source(env_vars.clone().map(|env| env.into_iter().collect()));
    let built = Config::builder()
        .add_source(base_source)
        .add_source(env)
        .build()
        .map_err(|e| one_problem(&origin, &e.to_string()))?;
    let root =
        ::config::Source::collect(&built).map_err(|e| one_problem(&origin, &e.to_string()))?;

    let mut parser = Parser {
        root: &root,
        default_origin: origin,
        problems: Vec::new(),
    };
    // Validate what parsed, so that its problems show beside the others.
    let (mut config, complete) = parser.config();
    let lookup = |name: &str| match &env_vars {
        Some(vars) => vars.get(name).cloned(),
        None => std::env::var(name).ok(),
    };
    // Secrets come from the environment: `${VAR}` in tokens and secrets.
    let mut expand = |value: &mut String, key: String| match backends::env::expand(value, &lookup) {
        Ok(expanded) => *value = expanded,
        Err(reason) => parser.problem(&key, reason),
    };
    for (name, publish) in &mut config.publish {
        for token in &mut publish.tokens {
            expand(token, format!("publish.{name}.tokens"));
        }
    }
    for (name, route) in &mut config.routes {
        for token in &mut route.auth.tokens {
            expand(token, format!("routes.{name}.auth.tokens"));
        }
        if let Some(secret) = &mut route.auth.secret {
            expand(secret, format!("routes.{name}.auth.secret"));
        }
    }
    for token in &mut config.server.metrics.tokens {
        expand(token, "server.metrics.tokens".into());
    }
    for (key, reason) in config.validate() {
        // An empty route table is no news when routes failed to parse.
        if complete || key != "routes" {
            parser.problem(&key, reason);
        }
    }
    if parser.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: parser.problems,
        })
    }
}

fn one_problem(origin: &str, reason: &str) -> ConfigError {
    ConfigError {
        problems: vec![ConfigProblem {
            origin: origin.into(),
            key: String::new(),
            reason: reason.into(),
        }],
    }
}

struct Parser<'a> {
    root: &'a Map<String, Value>,
    default_origin: String,
    problems: Vec<ConfigProblem>,
}

impl Parser<'_> {
    /// The config, with defaults for what failed to parse, and whether
    /// everything parsed.
    fn config(&mut self) -> (GatewayConfig, bool) {
        for key in self.root.keys() {
            if !["server", "routes", "lambda", "cloudfront", "publish"].contains(&key.as_str()) {
                self.problem(
                    key,
                    "unknown key; expected `server`, `routes`, `publish`, `lambda` or `cloudfront`"
                        .into(),
                );
            }
        }
        let server = match self.root.get("server") {
            None => Some(ServerConfig::default()),
            Some(value) => self.table::<ServerConfig>(value, "server", &[]),
        };
        let lambda = match self.root.get("lambda") {
            None => Some(LambdaConfig::default()),
            Some(value) => self.table::<LambdaConfig>(value, "lambda", &[]),
        };
        let cloudfront = match self.root.get("cloudfront") {
            None => Some(CloudFrontConfig::default()),
            Some(value) => self.table::<CloudFrontConfig>(value, "cloudfront", &[]),
        };
        let routes = match self.root.get("routes") {
            None => {
                self.problem("routes", "missing; there must be at least one route".into());
                None
            }
            Some(value) => self.routes(value),
        };
        let (routes, routes_ok) = routes.unwrap_or_default();
        let (publish, publish_ok) = match self.root.get("publish") {
            None => (BTreeMap::new(), true),
            Some(value) => self.publish(value).unwrap_or_default(),
        };
        let complete =
            server.is_some() && lambda.is_some() && cloudfront.is_some() && routes_ok && publish_ok;
        let config = GatewayConfig {
            server: server.unwrap_or_default(),
            lambda: lambda.unwrap_or_default(),
            cloudfront: cloudfront.unwrap_or_default(),
            publish,
            routes,
        };
        (config, complete)
    }

    /// The routes that parsed, and whether all did.
    fn routes(&mut self, value: &Value) -> Option<(BTreeMap<String, RouteConfig>, bool)> {
        let table = self.as_table(value, "routes")?;
        let mut routes = BTreeMap::new();
        let mut ok = true;
        for (name, value) in table {
            let key = format!("routes.{name}");
            let Some(mut fields) = self.as_table(&value, &key) else {
                ok = false;
                continue;
            };
            // Backends are parsed one by one, so each one's problems show;
            // so is `auth`, so that each of its problems shows.
            let backends = fields.shift_remove("backends");
            let auth = fields.shift_remove("auth");
            let without = Value::new(
                value.origin().map(String::from).as_ref(),
                ValueKind::Table(fields),
            );
            let route = self.table::<RouteConfig>(&without, &key, &[]);
            let backends = match backends {
                None => Some(Default::default()),
                Some(backends) => self.backends(&backends, &format!("{key}.backends")),
            };
            let auth = match auth {
                None => Some(AuthConfig::default()),
                Some(auth) => self.table::<AuthConfig>(&auth, &format!("{key}.auth"), &[]),
            };
            match (route, backends, auth) {
                (Some(mut route), Some(backends), Some(auth)) => {
                    route.backends = backends;
                    route.auth = auth;
                    routes.insert(name, route);
                }
                _ => ok = false,
            }
        }
        Some((routes, ok))
    }

    /// The publish routes that parsed, and whether all did. The target is
    /// parsed on its own, so that each of its problems shows.
    fn publish(&mut self, value: &Value) -> Option<(BTreeMap<String, PublishConfig>, bool)> {
        let table = self.as_table(value, "publish")?;
        let mut parsed = BTreeMap::new();
        let mut ok = true;
        for (name, value) in table {
            let key = format!("publish.{name}");
            let Some(mut fields) = self.as_table(&value, &key) else {
                ok = false;
                continue;
            };
            let target = fields.shift_remove("target");
            let without = Value::new(
                value.origin().map(String::from).as_ref(),
                ValueKind::Table(fields),
            );
            let publish = self.table::<PublishConfig>(&without, &key, &[]);
            let target = match target {
                None => Some(None),
                Some(target) => self
                    .table::<PublisherConfig>(&target, &format!("{key}.target"), &["type"])
                    .map(Some),
            };
            match (publish, target) {
                (Some(mut publish), Some(target)) => {
                    publish.target = target;
                    parsed.insert(name, publish);
                }
                _ => ok = false,
            }
        }
        Some((parsed, ok))
    }

    fn backends(&mut self, value: &Value, key: &str) -> Option<BTreeMap<String, BackendConfig>> {
        let table = self.as_table(value, key)?;
        let mut backends = BTreeMap::new();
        let mut ok = true;
        for (name, value) in table {
            let key = format!("{key}.{name}");
            let parsed = match self.other_type(&value, &key) {
                Some(other) => other,
                None => self.table::<BackendConfig>(&value, &key, &["type"]),
            };
            match parsed {
                Some(backend) => {
                    backends.insert(name, backend);
                }
                None => ok = false,
            }
        }
        ok.then_some(backends)
    }

    /// A backend table whose `type` is not built in: a registered type's
    /// (its table, checked later by its factory), or a problem naming the
    /// types there are. `None` for a built-in type (or no `type`).
    fn other_type(&mut self, value: &Value, key: &str) -> Option<Option<BackendConfig>> {
        let ValueKind::Table(table) = &value.kind else {
            return None;
        };
        let kind = match table.get("type").map(|t| &t.kind) {
            Some(ValueKind::String(kind)) if !registry::BUILT_IN.contains(&kind.as_str()) => {
                kind.clone()
            }
            _ => return None,
        };
        if registry::factory(&kind).is_none() {
            self.problem(&format!("{key}.type"), registry::unknown_type(&kind));
            return Some(None);
        }
        let rest: Map<String, Value> = table
            .iter()
            .filter(|(k, _)| *k != "type")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rest = Value::new(
            value.origin().map(String::from).as_ref(),
            ValueKind::Table(rest),
        );
        match deserialize::<serde_json::Value>(rest) {
            Ok(table) => Some(Some(BackendConfig::Custom(registry::CustomConfig {
                kind,
                table,
            }))),
            Err(e) => {
                self.deserialize_problem(key, None, &e);
                Some(None)
            }
        }
    }

    fn as_table(&mut self, value: &Value, key: &str) -> Option<Map<String, Value>> {
        match &value.kind {
            ValueKind::Table(table) => Some(table.clone()),
            other => {
                self.problem(key, format!("must be a table, not {other}"));
                None
            }
        }
    }

    /// Deserializes a table, or records every problem in it. `pinned` keys
    /// (an enum's tag) are kept in every one-key retry.
    fn table<T: DeserializeOwned>(
        &mut self,
        value: &Value,
        key: &str,
        pinned: &[&str],
    ) -> Option<T> {
        let first = match deserialize::<T>(value.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let Ok(table) = value.clone().into_table() else {
            self.deserialize_problem(key, None, &first);
            return None;
        };
        let origin = value.origin().map(String::from);
        let subset = |keys: &[&str]| {
            let map: Map<String, Value> = table
                .iter()
                .filter(|(k, _)| keys.contains(&k.as_str()) || pinned.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::new(origin.as_ref(), ValueKind::Table(map))
        };
        // Each error with the key it is about, when a one-key retry tells.
        let mut found: Vec<(Option<&str>, _)> = Vec::new();
        // With only the pinned keys: a bad tag shows, and stops the retries.
        let tag_ok = match deserialize::<T>(subset(&[])) {
            Err(e) if !is_missing_field(&e) => {
                found.push((pinned.first().copied(), e));
                false
            }
            _ => true,
        };
        if tag_ok {
            let mut good = Vec::new();
            for k in table.keys().filter(|k| !pinned.contains(&k.as_str())) {
                match deserialize::<T>(subset(&[k.as_str()])) {
                    Err(e) if !is_missing_field(&e) => found.push((Some(k.as_str()), e)),
                    _ => good.push(k.as_str()),
                }
            }
            // With every good key: what is still missing is truly missing.
            if let Err(e) = deserialize::<T>(subset(&good)) {
                if is_missing_field(&e) {
                    found.push((None, e));
                }
            }
        }
        if found.is_empty() {
            found.push((None, first));
        }
        for (hint, e) in found {
            self.deserialize_problem(key, hint, &e);
        }
        None
    }

    /// Records a deserialization error. Serde loses the path inside an
    /// internally tagged enum; `hint` is the key a one-key retry was about.
    fn deserialize_problem(&mut self, key: &str, hint: Option<&str>, error: &DeError) {
        let path = error.path().to_string();
        let full = match (path.as_str(), hint) {
            (".", Some(hint)) => format!("{key}.{hint}"),
            (".", None) => key.to_string(),
            (path, _) => format!("{key}.{path}"),
        };
        let reason = match error.inner() {
            ::config::ConfigError::Type {
                unexpected,
                expected,
                ..
            } => {
                format!("invalid type: {unexpected}, expected {expected}")
            }
            ::config::ConfigError::At { error, .. } => error.to_string(),
            ::config::ConfigError::NotFound(field) => format!("missing required key `{field}`"),
            other => other.to_string(),
        };
        let reason = match reason.strip_prefix("missing field ") {
            Some(field) => format!("missing required key {field}"),
            None => reason,
        };
        self.problem(&full, reason);
    }

    /// Records a problem at `key`, naming where the value there came from.
    fn problem(&mut self, key: &str, reason: String) {
        let origin = self.origin_of(key);
        self.problems.push(ConfigProblem {
            origin,
            key: key.into(),
            reason,
        });
    }

    /// Where the value at `key` came from: an environment variable, or else
    /// the base file (whose values carry no origin of their own). For a key
    /// that is missing, the nearest table above it that exists decides: it
    /// came from the environment when everything in it did.
    fn origin_of(&self, key: &str) -> String {
        let segments: Vec<&str> = key
            .split('.')
            .map(|s| s.split('[').next().unwrap_or(s))
            .collect();
        let mut path: Vec<&str> = Vec::new();
        let mut table = self.root;
        let mut deepest = None;
        for segment in &segments {
            let Some(value) = table.get(*segment) else {
                break;
            };
            path.push(segment);
            deepest = Some(value);
            match &value.kind {
                ValueKind::Table(t) => table = t,
                _ => break,
            }
        }
        let mut leaf = path.iter().map(|s| s.to_string()).collect();
        match deepest {
            Some(value) if first_env_leaf(value, &mut leaf) => {
                let name: Vec<String> = leaf.iter().map(|s| s.to_uppercase()).collect();
                format!(
                    "environment variable {ENV_PREFIX}{ENV_SEPARATOR}{}",
                    name.join(ENV_SEPARATOR)
                )
            }
            _ => self.default_origin.clone(),
        }
    }
}

/// Whether every value in `value` came from the environment; if so, `path`
/// is extended to the first of them (the variable to name). Linear in the
/// size of `value`: a variable nests as deep as its name has separators.
fn first_env_leaf(value: &Value, path: &mut Vec<String>) -> bool {
    if !all_from_env(value) {
        return false;
    }
    let mut value = value;
    while let ValueKind::Table(table) = &value.kind {
        let Some((key, first)) = table.iter().next() else {
            break;
        };
        path.push(key.clone());
        value = first;
    }
    true
}

fn all_from_env(value: &Value) -> bool {
    match &value.kind {
        ValueKind::Table(table) if !table.is_empty() => table.values().all(all_from_env),
        _ => value.origin() == Some(ENV_ORIGIN),
    }
}

/// A deserialization error with the path where it happened (boxed: large).
type DeError = Box<serde_path_to_error::Error<::config::ConfigError>>;

fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, DeError> {
    serde_path_to_error::deserialize(value).map_err(Box::new)
}

fn is_missing_field(error: &DeError) -> bool {
    match error.inner() {
        ::config::ConfigError::NotFound(_) => true,
        other => other.to_string().starts_with("missing field"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use backends::BackendConfig;
    use backends::demo::DemoConfig;

    use super::*;
    use crate::config::RouteConfig;

    fn no_env() -> Option<HashMap<String, String>> {
        Some(HashMap::new())
    }

    #[test]
    fn default_toml_is_exactly_the_documented_defaults() {
        let loaded = load(Source::Default, no_env()).unwrap();
        let mut route = RouteConfig::new("/");
        route
            .backends
            .insert("demo".into(), BackendConfig::Demo(DemoConfig::default()));
        route.response_headers = BTreeMap::from([("X-AggregateInfo-Result".into(), "OK".into())]);
        let expected = GatewayConfig {
            server: ServerConfig::default(),
            lambda: LambdaConfig::default(),
            cloudfront: CloudFrontConfig::default(),
            publish: BTreeMap::new(),
            routes: BTreeMap::from([("reference".into(), route)]),
        };
        assert_eq!(loaded, expected);
    }

    #[test]
    fn every_example_loads() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // Programs the examples run (config/examples/jobs/).
                continue;
            }
            // Examples take secrets from the environment, as deployments do.
            let env = HashMap::from([
                ("PUBLISH_TOKEN".into(), "example-token-0123456789".into()),
                (
                    "JWT_SECRET".into(),
                    "an-example-secret-of-32-bytes-or-more".into(),
                ),
                ("METRICS_TOKEN".into(), "example-metrics-token-0123".into()),
            ]);
            if let Err(e) = load(Source::File(&path), Some(env)) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 3);
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = HashMap::from([
            ("GATEWAY__SERVER__PORT".to_string(), "9090".to_string()),
            ("GATEWAY__ROUTES__REFERENCE__HEARTBEAT".into(), "5s".into()),
            ("GATEWAY_CONFIG".into(), "ignored.toml".into()),
        ]);
        let config = load(Source::Default, Some(env)).unwrap();
        assert_eq!(config.server.port, 9090);
        assert_eq!(
            config.routes["reference"].heartbeat,
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn every_problem_at_once_with_origin_key_and_reason() {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            r#"
[server]
port = "abc"
bogus = 1
[routes.api]
path = "/api/{id}"
heartbeat = "5 parsecs"
methods = ["GET", "get"]
colour = "red"
[routes.api.backends.t]
type = "ticker"
interval = "fast"
count = "x"
[routes.api.backends.k]
type = "kafka"
[routes.nopath.backends.d]
type = "demo"
[routes.ok]
path = "/ok"
max_idle = "0s"
write_delay = "500ms"
[routes.ok.backends.d]
type = "ticker"
payload_bytes = 99999999
"#,
        )
        .unwrap();
        let env = HashMap::from([(
            "GATEWAY__SERVER__SHUTDOWN_GRACE".to_string(),
            "soon".to_string(),
        )]);
        let err = load(Source::File(&path), Some(env)).unwrap_err();
        let file = path.display().to_string();
        let got: Vec<(String, String)> = err
            .problems
            .iter()
            .map(|p| (p.origin.clone(), p.key.clone()))
            .collect();
        let env_origin = "environment variable GATEWAY__SERVER__SHUTDOWN_GRACE".to_string();
        let expected: Vec<(String, String)> = [
            (&file, "server.port"),
            (&file, "server.bogus"),
            (&env_origin, "server.shutdown_grace"),
            (&file, "routes.api.heartbeat"),
            (&file, "routes.api.methods[1]"),
            (&file, "routes.api.colour"),
            (&file, "routes.api.backends.t.interval"),
            (&file, "routes.api.backends.t.count"),
            (&file, "routes.api.backends.k.type"),
            (&file, "routes.nopath"),
            (&file, "routes.ok.max_idle"),
            (&file, "routes.ok.write_delay"),
            (&file, "routes.ok.backends.d.payload_bytes"),
        ]
        .into_iter()
        .map(|(o, k)| (o.clone(), k.to_string()))
        .collect();
        assert_eq!(got, expected, "{err}");
        let text = err.to_string();
        for reason in [
            "invalid type: string \"abc\", expected an integer",
            "unknown field `bogus`",
            "expected a duration",
            "unknown value \"get\"; expected one of \"GET\"",
            "must be under heartbeat (15s) and max_idle (0ns)",
            "unknown backend type \"kafka\"; expected one of demo, ticker",
            "missing required key `path`",
            "must be at least 10ms",
            "must be at most 1048576",
        ] {
            assert!(text.contains(reason), "{reason:?} not in:\n{text}");
        }
    }

    /// A postgres backend's and target's problems, each named by file, key
    /// and reason (table and channel names are SQL identifiers, checked
    /// before anything connects).
    #[test]
    fn postgres_problems_name_their_keys() {
        let dir = std::env::temp_dir().join(format!("gateway-config-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pg.toml");
        std::fs::write(
            &path,
            r#"
[routes.pg]
path = "/pg/{room}"
[routes.pg.backends.bus]
type = "postgres"
table = "Events; DROP TABLE users"
channel = "a-b"
key = "rooms:{room}"
[publish.pg]
path = "/pg/{room}/events"
tokens = ["publish-token-0123456789"]
[publish.pg.target]
type = "postgres"
key = "rooms:{room"
max_len = 0
"#,
        )
        .unwrap();
        let err = load(Source::File(&path), Some(HashMap::new())).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes.pg.backends.bus.table",
                "routes.pg.backends.bus.channel",
                "routes.pg.backends.bus.allow",
                "publish.pg.target.key",
                "publish.pg.target.allow",
                "publish.pg.target.max_len",
            ],
            "{err}"
        );
        let file = path.display().to_string();
        assert!(err.problems.iter().all(|p| p.origin == file), "{err}");
        assert!(err.to_string().contains("an SQL identifier"), "{err}");
    }

    #[test]
    fn a_route_made_only_of_variables_is_blamed_on_them() {
        let env = HashMap::from([
            ("GATEWAY__ROUTES__NEW__PATH".to_string(), "/x".to_string()),
            ("GATEWAY__ROUTES__REFERENCE__MAX_IDLE".into(), "0s".into()),
        ]);
        let err = load(Source::Default, Some(env)).unwrap_err();
        let got: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "environment variable GATEWAY__ROUTES__NEW__PATH: routes.new.backends: \
                 the route needs at least one backend",
                "environment variable GATEWAY__ROUTES__REFERENCE__MAX_IDLE: \
                 routes.reference.max_idle: must be at least 10ms",
            ]
        );
    }

    /// Found by the `config` fuzz target: naming the variable behind a
    /// problem took time doubling with each level of nesting (an input of
    /// 2 KB took 16 s of CPU); 48 levels would take days.
    #[test]
    fn a_deeply_nested_variable_is_named_at_once() {
        let name = format!("GATEWAY__ROUTES__NEW__{}B", "A__".repeat(48));
        let env = HashMap::from([(name.clone(), "1".to_string())]);
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(load(Source::Default, Some(env)));
        });
        // A watchdog, not a speed target: the load takes microseconds.
        let err = result
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the load ends")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("environment variable GATEWAY__ROUTES__NEW__A__A__"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_or_unknown_files_are_one_clear_problem() {
        let err = load(Source::File(Path::new("/nonexistent/gw.toml")), no_env()).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.to_string()
                .contains("/nonexistent/gw.toml: cannot read the file"),
            "{err}"
        );
        let err = load(Source::File(Path::new("gw.ini")), no_env()).unwrap_err();
        assert!(err.to_string().contains("must end in .toml"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("gateway-syntax-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broken.yaml");
        std::fs::write(&path, "routes: [unclosed\n").unwrap();
        let err = load(Source::File(&path), no_env()).unwrap_err();
        assert!(err.to_string().contains("broken.yaml"), "{err}");
    }
}
