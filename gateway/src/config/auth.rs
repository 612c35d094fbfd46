//! `[routes.NAME.auth]`: who may read a route, and where their credential
//! comes from. The checks themselves are in [`crate::auth`].

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use serde::Deserialize;

/// The shortest static bearer token accepted (publish and route tokens):
/// shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The algorithms a route may accept. `none` is not one of them, ever.
pub const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// `[routes.NAME.auth]`: the credential a route asks for.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` (anyone may read), `bearer` (one of `tokens`) or `jwt` (a
    /// signed JSON Web Token). Default: `none`.
    #[serde(rename = "type")]
    pub kind: AuthType,
    /// Where the credential may come from, tried in this order:
    /// `authorization` (`Authorization: Bearer …`), `header` (the header
    /// `header_name`, with or without `Bearer `), `cookie` (the cookie
    /// `cookie_name`) and `query` (the query parameter `query_param`; URLs end
    /// up in proxies' and browsers' logs, so prefer the others). The gateway
    /// never logs a credential, and removes the query parameter before the
    /// backends see the query. Default: `["authorization"]`.
    pub from: Vec<CredentialPlace>,
    /// The header read for `from = ["header"]`. Default:
    /// `X-Client-Authorization`. When it is also `server.authorization_source`,
    /// its value has been moved into `Authorization` and is read there.
    pub header_name: String,
    /// The cookie read for `from = ["cookie"]`. Default: `access_token`.
    pub cookie_name: String,
    /// The query parameter read for `from = ["query"]`. Default:
    /// `access_token`.
    pub query_param: String,
    /// The realm named in `WWW-Authenticate`. Default: `gateway`.
    pub realm: String,
    /// `bearer`: the tokens accepted; `${VAR}` inside one is replaced by
    /// that environment variable. At least one, each at least 16 characters.
    pub tokens: Vec<String>,
    /// `jwt` with HS256/HS384/HS512: the shared secret (`${VAR}` expanded),
    /// at least as many bytes as the hash (32, 48, 64).
    pub secret: Option<String>,
    /// `jwt` with RS/PS/ES/EdDSA: a JWKS file (`{"keys": […]}`), read at
    /// start. Not with `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    /// `jwt` with RS/PS/ES/EdDSA: the JWKS URL (`https://…`), fetched at
    /// start, again after `jwks_ttl`, and when a token names an unknown key
    /// id (at most once per `jwks_refetch_interval`). Until it is first
    /// fetched, requests are answered 503 with `Retry-After`.
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before they are fetched again (in the
    /// background; the old ones serve meanwhile). Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub jwks_ttl: Duration,
    /// The shortest time between two fetches caused by unknown key ids.
    /// Default: `30s`.
    #[serde(with = "humantime_serde")]
    pub jwks_refetch_interval: Duration,
    /// Longest time one JWKS fetch may take. Default: `5s`.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// The `alg` values accepted. Default: `["HS256"]` with `secret`,
    /// `["RS256", "ES256"]` with a JWKS. HS algorithms only with `secret`,
    /// the others only with a JWKS; `none` never.
    pub algorithms: Vec<String>,
    /// Accepted `aud` values; when set, a token must carry one of them.
    /// Default: none (not checked).
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must carry one of them.
    /// Default: none (not checked).
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`. A stream ends at the token's
    /// `exp` plus this. Default: `5s`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// `jwt`: which stream keys a token may read. Default: any.
    pub restrict: Option<RestrictConfig>,
}

/// `[routes.NAME.auth.restrict]`: the path parameter `param` must be one of
/// the token's `claim` values (a string or an array of strings); a value
/// ending in `*` matches every key that starts with what precedes it (`*`
/// alone matches all). Otherwise 403.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestrictConfig {
    /// A parameter of the route's path (`room` in `/rooms/{room}`).
    pub param: String,
    /// The claim listing the allowed values (`rooms`).
    pub claim: String,
}

/// What a route asks of its clients.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum AuthType {
    /// Nothing.
    #[default]
    None,
    /// One of the configured static tokens.
    Bearer,
    /// A signed JWT.
    Jwt,
}

/// A place a credential may come from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum CredentialPlace {
    /// `Authorization: Bearer …`.
    Authorization,
    /// The header `header_name`.
    Header,
    /// The cookie `cookie_name`.
    Cookie,
    /// The query parameter `query_param`.
    Query,
}

impl TryFrom<String> for AuthType {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "none" => Ok(Self::None),
            "bearer" => Ok(Self::Bearer),
            "jwt" => Ok(Self::Jwt),
            _ => Err(format!(
                "unknown value {name:?}; expected one of \"none\", \"bearer\", \"jwt\""
            )),
        }
    }
}

impl TryFrom<String> for CredentialPlace {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "authorization" => Ok(Self::Authorization),
            "header" => Ok(Self::Header),
            "cookie" => Ok(Self::Cookie),
            "query" => Ok(Self::Query),
            _ => Err(format!(
                "unknown value {name:?}; expected one of \"authorization\", \"header\", \"cookie\", \"query\""
            )),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            kind: AuthType::None,
            from: vec![CredentialPlace::Authorization],
            header_name: "x-client-authorization".into(),
            cookie_name: "access_token".into(),
            query_param: "access_token".into(),
            realm: "gateway".into(),
            tokens: Vec::new(),
            secret: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ttl: Duration::from_secs(600),
            jwks_refetch_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            algorithms: Vec::new(),
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(5),
            restrict: None,
        }
    }
}

/// What is wrong with a list of static bearer tokens (publish routes' and
/// `type = "bearer"` routes'), if anything.
pub fn check_static_tokens(tokens: &[String]) -> Option<String> {
    if tokens.is_empty() {
        return Some("at least one token is required".into());
    }
    tokens
        .iter()
        .any(|t| t.chars().count() < MIN_TOKEN_CHARS || t.contains(char::is_whitespace))
        .then(|| format!("each token needs at least {MIN_TOKEN_CHARS} characters and no spaces"))
}

/// The shortest HMAC secret for an algorithm: the hash's size (RFC 7518 3.2).
fn min_secret_bytes(alg: &str) -> usize {
    match alg {
        "HS384" => 48,
        "HS512" => 64,
        _ => 32,
    }
}

impl AuthConfig {
    /// Whether request header `name` can carry this route's credential.
    pub fn carries_credential(&self, name: &str) -> bool {
        self.from.iter().any(|place| match place {
            CredentialPlace::Authorization => name.eq_ignore_ascii_case("authorization"),
            CredentialPlace::Header => name.eq_ignore_ascii_case(&self.header_name),
            CredentialPlace::Cookie => name.eq_ignore_ascii_case("cookie"),
            CredentialPlace::Query => false,
        })
    }

    /// The accepted algorithms: the configured ones, or the default for the
    /// key source.
    pub fn effective_algorithms(&self) -> Vec<String> {
        if !self.algorithms.is_empty() {
            self.algorithms.clone()
        } else if self.secret.is_some() {
            vec!["HS256".into()]
        } else {
            vec!["RS256".into(), "ES256".into()]
        }
    }

    /// Every problem, keys relative to the `auth` table. `path` is the
    /// route's path (for `restrict.param`).
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut push = |key: &str, reason: String| problems.push((key.into(), reason));
        let jwt_only: [(&str, bool); 7] = [
            ("secret", self.secret.is_some()),
            ("jwks_file", self.jwks_file.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("algorithms", !self.algorithms.is_empty()),
            ("audience", !self.audience.is_empty()),
            ("issuer", !self.issuer.is_empty()),
            ("restrict", self.restrict.is_some()),
        ];
        match self.kind {
            AuthType::None => {
                for (key, set) in jwt_only {
                    if set {
                        push(key, "has no effect with type = \"none\" (the route is open): set type = \"jwt\"".into());
                    }
                }
                if !self.tokens.is_empty() {
                    push(
                        "tokens",
                        "has no effect with type = \"none\" (the route is open): set type = \"bearer\"".into(),
                    );
                }
            }
            AuthType::Bearer => {
                for (key, set) in jwt_only {
                    if set {
                        push(key, "only for type = \"jwt\"".into());
                    }
                }
                if let Some(reason) = check_static_tokens(&self.tokens) {
                    push("tokens", reason);
                }
            }
            AuthType::Jwt => {
                if !self.tokens.is_empty() {
                    push("tokens", "only for type = \"bearer\"".into());
                }
                self.validate_jwt(&mut push, path);
            }
        }
        if self.from.is_empty() {
            push(
                "from",
                "name at least one of \"authorization\", \"header\", \"cookie\", \"query\"".into(),
            );
        }
        match HeaderName::try_from(self.header_name.as_str()) {
            Err(_) => push("header_name", "is not a header name".into()),
            Ok(name) if name == axum::http::header::AUTHORIZATION => push(
                "header_name",
                "must name another header than Authorization (from = [\"authorization\"] reads that one)".into(),
            ),
            Ok(_) => {}
        }
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.cookie_name.is_empty() || !self.cookie_name.chars().all(token_char) {
            push(
                "cookie_name",
                "is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)".into(),
            );
        }
        if self.query_param.is_empty()
            || ["format", "lastEventId"].contains(&self.query_param.as_str())
        {
            push(
                "query_param",
                "must be a name other than the gateway's own `format` and `lastEventId`".into(),
            );
        }
        if self.realm.is_empty()
            || !self
                .realm
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ')
        {
            push(
                "realm",
                "must be printable ASCII without quotes or backslashes".into(),
            );
        }
        if self.leeway > Duration::from_secs(300) {
            push("leeway", "must be at most 5m".into());
        }
        problems
    }

    fn validate_jwt(&self, push: &mut impl FnMut(&str, String), path: &str) {
        let sources = [
            self.secret.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => push(
                "secret",
                "type = \"jwt\" needs its keys: `secret` (HS256), `jwks_file` or `jwks_url`".into(),
            ),
            1 => {}
            _ => push(
                "jwks_url",
                "give one of `secret`, `jwks_file` and `jwks_url`".into(),
            ),
        }
        let algorithms = self.effective_algorithms();
        for alg in &algorithms {
            if !ALGORITHMS.contains(&alg.as_str()) {
                push(
                    "algorithms",
                    format!(
                        "{alg:?} is not an algorithm the gateway accepts; use {} (never \"none\")",
                        ALGORITHMS.join(", ")
                    ),
                );
            } else if alg.starts_with("HS") && self.secret.is_none() {
                push(
                    "algorithms",
                    format!("{alg} needs `secret`; a JWKS is for RS, PS, ES and EdDSA"),
                );
            } else if !alg.starts_with("HS") && self.secret.is_some() {
                push(
                    "algorithms",
                    format!("{alg} needs `jwks_file` or `jwks_url`; `secret` is for HS algorithms"),
                );
            }
        }
        if let Some(secret) = &self.secret {
            let need = algorithms
                .iter()
                .map(|a| min_secret_bytes(a))
                .max()
                .unwrap_or(32);
            if secret.len() < need {
                push(
                    "secret",
                    format!(
                        "must be at least {need} bytes for {}",
                        algorithms.join(", ")
                    ),
                );
            }
        }
        if let Some(file) = &self.jwks_file {
            match std::fs::read(file) {
                Err(e) => push("jwks_file", format!("cannot read {}: {e}", file.display())),
                Ok(bytes) => {
                    if let Err(reason) = crate::auth::jwks::KeySet::parse(&bytes, &algorithms) {
                        push("jwks_file", format!("{}: {reason}", file.display()));
                    }
                }
            }
        }
        if let Some(url) = &self.jwks_url {
            match reqwest::Url::parse(url) {
                Ok(parsed) if crate::auth::jwks::trusted_url(&parsed) => {}
                Ok(parsed) if parsed.scheme() == "http" => push(
                    "jwks_url",
                    format!(
                        "{url:?} is plain HTTP: anyone on the way could hand the gateway \
                         their own keys; use https:// (http:// is allowed on loopback only)"
                    ),
                ),
                _ => push("jwks_url", format!("{url:?} is not an https:// URL")),
            }
        }
        for (key, value) in [
            ("jwks_ttl", self.jwks_ttl),
            ("jwks_refetch_interval", self.jwks_refetch_interval),
            ("jwks_timeout", self.jwks_timeout),
        ] {
            if value < Duration::from_millis(10) || value > Duration::from_secs(7 * 24 * 3600) {
                push(key, "must be from 10ms to 7days".into());
            }
        }
        if let Some(restrict) = &self.restrict {
            let params = path_params(path);
            if !params.contains(&restrict.param.as_str()) {
                push(
                    "restrict.param",
                    format!(
                        "{:?} is not a parameter of the path {path:?} (it has: {})",
                        restrict.param,
                        if params.is_empty() {
                            "none".to_string()
                        } else {
                            params.join(", ")
                        }
                    ),
                );
            }
            if restrict.claim.is_empty() {
                push("restrict.claim", "must name a claim".into());
            }
        }
    }
}

/// The parameter names of a route path (`{name}` and `{*name}`).
fn path_params(path: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        names.push(rest[open + 1..open + close].trim_start_matches('*'));
        rest = &rest[open + close + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> AuthConfig {
        AuthConfig {
            kind: AuthType::Jwt,
            secret: Some("s".repeat(32)),
            ..AuthConfig::default()
        }
    }

    fn keys(config: &AuthConfig, path: &str) -> Vec<String> {
        config.validate(path).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn defaults_and_a_good_jwt_route_pass() {
        assert!(keys(&AuthConfig::default(), "/").is_empty());
        let mut good = jwt();
        good.restrict = Some(RestrictConfig {
            param: "room".into(),
            claim: "rooms".into(),
        });
        assert!(keys(&good, "/rooms/{room}").is_empty());
    }

    #[test]
    fn every_problem_is_named() {
        let mut bad = jwt();
        bad.secret = Some("short".into());
        bad.jwks_url = Some("ftp://x".into());
        bad.algorithms = vec!["none".into(), "HS256".into(), "RS256".into()];
        bad.tokens = vec!["t".into()];
        bad.from = vec![];
        bad.header_name = "Authorization".into();
        bad.cookie_name = "a b".into();
        bad.query_param = "format".into();
        bad.restrict = Some(RestrictConfig {
            param: "room".into(),
            claim: String::new(),
        });
        assert_eq!(
            keys(&bad, "/rooms/{id}"),
            [
                "tokens",
                "jwks_url",
                "algorithms",
                "algorithms",
                "secret",
                "jwks_url",
                "restrict.param",
                "restrict.claim",
                "from",
                "header_name",
                "cookie_name",
                "query_param",
            ]
        );
    }

    #[test]
    fn keys_for_another_type_are_refused() {
        let bearer = AuthConfig {
            kind: AuthType::Bearer,
            tokens: vec!["0123456789abcdef".into()],
            secret: Some("x".repeat(40)),
            ..AuthConfig::default()
        };
        assert_eq!(keys(&bearer, "/"), ["secret"]);
        let none = AuthConfig {
            tokens: vec!["0123456789abcdef".into()],
            ..AuthConfig::default()
        };
        assert_eq!(keys(&none, "/"), ["tokens"]);
        let empty = AuthConfig {
            kind: AuthType::Jwt,
            ..AuthConfig::default()
        };
        assert_eq!(keys(&empty, "/"), ["secret"]);
        let missing = AuthConfig {
            kind: AuthType::Jwt,
            jwks_file: Some("/nonexistent/jwks.json".into()),
            ..AuthConfig::default()
        };
        let problems = missing.validate("/");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("cannot read"), "{problems:?}");
    }

    #[test]
    fn hs512_needs_a_longer_secret() {
        let mut c = jwt();
        c.algorithms = vec!["HS512".into()];
        assert_eq!(keys(&c, "/"), ["secret"]);
        c.secret = Some("s".repeat(64));
        assert!(keys(&c, "/").is_empty());
    }

    #[test]
    fn path_parameters() {
        assert_eq!(path_params("/a/{x}/b/{*rest}"), ["x", "rest"]);
        assert!(path_params("/").is_empty());
    }
}
