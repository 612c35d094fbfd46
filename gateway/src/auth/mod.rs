//! Who may read a route (and publish on a publish route): the credential is
//! found, checked, and its claims matched to the stream key, before any
//! backend is opened and before the body is read.
//!
//! Answers (JSON bodies as in [`crate::error`]):
//!
//! - no credential: 401 `unauthorized` with `WWW-Authenticate: Bearer
//!   realm="…"`;
//! - an expired JWT: 401 `token_expired` with `WWW-Authenticate: Bearer
//!   realm="…", error="invalid_token", error_description="the token
//!   expired"`: the client should get a new token and come back (a 403 would
//!   tell it that retrying is useless);
//! - a wrong credential (unknown static token, bad signature, unknown key,
//!   wrong `aud` or `iss`, an algorithm not accepted, not yet valid,
//!   malformed): 403 `forbidden`;
//! - a valid JWT whose claim does not allow this stream key: 403 `forbidden`
//!   with `error="insufficient_scope"`;
//! - a JWT route whose JWKS URL has not answered yet: 503 `unavailable` with
//!   `Retry-After`.
//!
//! Credentials are never logged.

pub(crate) mod jwks;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, AuthType, CredentialPlace, RestrictConfig};
use crate::error::ApiError;
use jwks::{Jwks, KeySet, Lookup};

/// Longest credential looked at; a longer one is refused as malformed.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// A route's (or publish route's) access check, ready to run.
#[derive(Debug)]
pub struct Auth {
    check: Check,
    places: Vec<Place>,
    challenge: String,
    restrict: Option<RestrictConfig>,
}

#[derive(Debug)]
enum Check {
    Open,
    Tokens(Vec<String>),
    Jwt(Box<Jwt>),
}

#[derive(Debug)]
enum Place {
    Authorization,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// What a granted request may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// How long the credential stays valid: a stream must end then. `None`
    /// for credentials that do not expire.
    pub valid_for: Option<Duration>,
}

/// The request as the check sees it.
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    /// The request's headers (after `server.authorization_source` moved its
    /// header into `Authorization`).
    pub headers: &'a HeaderMap,
    /// The decoded query parameters.
    pub query: &'a [(String, String)],
    /// The decoded path parameters.
    pub params: &'a BTreeMap<String, String>,
    /// `server.authorization_source`, whose value is now in `Authorization`.
    pub authorization_source: Option<&'a HeaderName>,
}

impl Auth {
    /// What the check asks for: `none`, `bearer` or `jwt` (for the
    /// console and the viewer, which offer a token field).
    pub fn kind(&self) -> &'static str {
        match self.check {
            Check::Open => "none",
            Check::Tokens(_) => "bearer",
            Check::Jwt(_) => "jwt",
        }
    }

    /// Anyone may pass.
    pub fn open() -> Self {
        Self {
            check: Check::Open,
            places: Vec::new(),
            challenge: challenge("gateway"),
            restrict: None,
        }
    }

    /// One of `tokens` in `Authorization: Bearer …` (publish routes).
    pub fn bearer(tokens: Vec<String>) -> Self {
        Self {
            check: Check::Tokens(tokens),
            places: vec![Place::Authorization],
            challenge: challenge("gateway"),
            restrict: None,
        }
    }

    /// The check a validated config describes (`route` names it in logs).
    pub fn from_config(config: &AuthConfig, route: &str) -> Result<Self, String> {
        let places = config
            .from
            .iter()
            .map(|place| match place {
                CredentialPlace::Authorization => Ok(Place::Authorization),
                CredentialPlace::Header => HeaderName::try_from(config.header_name.as_str())
                    .map(Place::Header)
                    .map_err(|e| e.to_string()),
                CredentialPlace::Cookie => Ok(Place::Cookie(config.cookie_name.clone())),
                CredentialPlace::Query => Ok(Place::Query(config.query_param.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let check = match config.kind {
            AuthType::None => Check::Open,
            AuthType::Bearer => Check::Tokens(config.tokens.clone()),
            AuthType::Jwt => Check::Jwt(Box::new(Jwt::from_config(config, route)?)),
        };
        Ok(Self {
            check,
            places,
            challenge: challenge(&config.realm),
            restrict: config.restrict.clone(),
        })
    }

    /// Whether anyone may pass.
    pub fn is_open(&self) -> bool {
        matches!(self.check, Check::Open)
    }

    /// The query parameter that may carry the credential: the backends
    /// never see it.
    pub fn query_param(&self) -> Option<&str> {
        self.places.iter().find_map(|p| match p {
            Place::Query(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Checks the request's credential.
    pub async fn check(&self, request: Presented<'_>) -> Result<Grant, ApiError> {
        let token = match &self.check {
            Check::Open => return Ok(Grant::default()),
            _ => self.credential(&request),
        };
        let Some(token) = token else {
            return Err(self.missing());
        };
        if token.len() > MAX_CREDENTIAL_BYTES {
            return Err(forbidden("the credential is malformed"));
        }
        match &self.check {
            Check::Open => Ok(Grant::default()),
            Check::Tokens(tokens) => {
                if matches_any(tokens, token) {
                    Ok(Grant::default())
                } else {
                    tracing::debug!("Refused: unknown bearer token");
                    Err(forbidden("this token is not allowed here"))
                }
            }
            Check::Jwt(jwt) => {
                let claims = jwt.verify(token, &self.challenge).await?;
                // jsonwebtoken compares whole seconds; the stream's end is
                // exact, and a token is refused from the moment it would end.
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let valid_for = match claims.get("exp").and_then(Value::as_f64) {
                    Some(exp) => {
                        let left = exp + jwt.leeway.as_secs_f64() - now;
                        if left <= 0.0 {
                            return Err(expired(&self.challenge));
                        }
                        Some(Duration::from_secs_f64(left.min(1e9)))
                    }
                    None => None,
                };
                if let Some(restrict) = &self.restrict {
                    self.allowed(restrict, &claims, request.params)?;
                }
                Ok(Grant { valid_for })
            }
        }
    }

    /// The credential from the first configured place that has one.
    fn credential<'a>(&self, request: &Presented<'a>) -> Option<&'a str> {
        self.places.iter().find_map(|place| match place {
            Place::Authorization => bearer(request.headers.get(header::AUTHORIZATION), true),
            // Its value was moved into Authorization.
            Place::Header(name) if Some(name) == request.authorization_source => {
                bearer(request.headers.get(header::AUTHORIZATION), false)
            }
            Place::Header(name) => bearer(request.headers.get(name), false),
            Place::Cookie(name) => cookie(request.headers, name),
            Place::Query(name) => request
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty()),
        })
    }

    fn missing(&self) -> ApiError {
        let places: Vec<&str> = self
            .places
            .iter()
            .map(|p| match p {
                Place::Authorization => "the Authorization header (Bearer)",
                Place::Header(_) => "the configured credential header",
                Place::Cookie(_) => "a cookie",
                Place::Query(_) => "a query parameter",
            })
            .collect();
        let challenge = HeaderValue::try_from(self.challenge.as_str())
            .unwrap_or(HeaderValue::from_static("Bearer"));
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("this route needs a credential, in {}", places.join(" or ")),
        )
        .with_header(header::WWW_AUTHENTICATE, challenge)
    }

    /// Whether the token's claim allows the path parameter's value.
    fn allowed(
        &self,
        restrict: &RestrictConfig,
        claims: &Map<String, Value>,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let value = params
            .get(&restrict.param)
            .map(String::as_str)
            .unwrap_or("");
        let patterns: Vec<&str> = match claims.get(&restrict.claim) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if patterns.iter().any(|p| key_matches(p, value)) {
            return Ok(());
        }
        tracing::debug!(param = %restrict.param, claim = %restrict.claim, "Refused: the token's claim does not allow this key");
        let scope = format!(
            "{}, error=\"insufficient_scope\", error_description=\"the token does not allow this {}\"",
            self.challenge, restrict.param
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token's `{}` claim does not allow this {}",
                restrict.claim, restrict.param
            ),
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::try_from(scope).unwrap_or(HeaderValue::from_static("Bearer")),
        ))
    }
}

/// A claim value matches a key exactly, or, ending in `*`, every key that
/// starts with what precedes the `*`.
fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

fn challenge(realm: &str) -> String {
    format!("Bearer realm=\"{realm}\"")
}

/// 401 for an expired token: the client should get a new one.
fn expired(challenge: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "token_expired",
        "the token expired; get a new one",
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::try_from(format!(
            "{challenge}, error=\"invalid_token\", error_description=\"the token expired\""
        ))
        .unwrap_or(HeaderValue::from_static("Bearer")),
    )
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The token of a header value: `Bearer <token>`, or, where `scheme_needed`
/// is false, the bare token too.
fn bearer(value: Option<&HeaderValue>, scheme_needed: bool) -> Option<&str> {
    let value = value?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        Some(_) => return None,
        None if scheme_needed => return None,
        None => value,
    };
    Some(token).filter(|t| !t.is_empty())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Whether `token` is one of `tokens`. Every token is compared to its end:
/// the time says nothing about which one matched, or how much of one.
pub fn matches_any(tokens: &[String], token: &str) -> bool {
    tokens.iter().fold(false, |ok, allowed| {
        ok | same_bytes(allowed.as_bytes(), token.as_bytes())
    })
}

/// Compares in time that depends on the longer length only, not on where
/// (or whether) the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A JWT check: its keys and, per accepted algorithm, its claim checks.
#[derive(Debug)]
struct Jwt {
    keys: Keys,
    /// One validation per accepted algorithm (jsonwebtoken wants the
    /// algorithms of one validation to share the key's family).
    validations: Vec<(Algorithm, Validation)>,
    leeway: Duration,
}

enum Keys {
    Secret(DecodingKey),
    Set(Arc<Jwks>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(…)"),
            Self::Set(jwks) => f.debug_tuple("Set").field(jwks).finish(),
        }
    }
}

impl Jwt {
    fn from_config(config: &AuthConfig, route: &str) -> Result<Self, String> {
        let names = config.effective_algorithms();
        let algorithms = names
            .iter()
            .map(|a| Algorithm::from_str(a).map_err(|_| format!("unknown algorithm {a:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if let Some(secret) = &config.secret {
            Keys::Secret(DecodingKey::from_secret(secret.as_bytes()))
        } else if let Some(file) = &config.jwks_file {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let set = KeySet::parse(&bytes, &names)?;
            Keys::Set(Arc::new(Jwks::fixed(set)))
        } else if let Some(url) = &config.jwks_url {
            Keys::Set(Jwks::remote(
                url,
                names.clone(),
                config.jwks_ttl,
                config.jwks_refetch_interval,
                config.jwks_timeout,
                route,
            )?)
        } else {
            return Err("no keys: `secret`, `jwks_file` or `jwks_url`".into());
        };
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = config.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                v.validate_aud = !config.audience.is_empty();
                if v.validate_aud {
                    v.set_audience(&config.audience);
                    required.push("aud");
                }
                if !config.issuer.is_empty() {
                    v.set_issuer(&config.issuer);
                    required.push("iss");
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        Ok(Self {
            keys,
            validations,
            leeway: config.leeway,
        })
    }

    /// The token's claims, if it is valid.
    async fn verify(&self, token: &str, challenge: &str) -> Result<Map<String, Value>, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "Refused: malformed token");
            forbidden("the token is malformed")
        })?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            tracing::debug!(alg = ?header.alg, "Refused: algorithm not accepted");
            return Err(forbidden(&format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            )));
        };
        let set;
        let key = match &self.keys {
            Keys::Secret(key) => key,
            Keys::Set(jwks) => {
                set = jwks.keys_for(header.kid.as_deref()).await.map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the keys that verify this route's tokens (its JWKS) could not be fetched yet; retry shortly",
                    )
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
                })?;
                match set.find(header.kid.as_deref(), header.alg) {
                    Lookup::Found(key) => key,
                    Lookup::UnknownKid => {
                        tracing::debug!("Refused: unknown key id");
                        return Err(forbidden("the token's key id (kid) is not known"));
                    }
                    Lookup::NoKey => {
                        tracing::debug!("Refused: no key for the token");
                        return Err(forbidden("no key here verifies this token"));
                    }
                }
            }
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => {
                tracing::debug!(error = %e, "Refused: invalid token");
                Err(match e.kind() {
                    ErrorKind::ExpiredSignature => expired(challenge),
                    ErrorKind::InvalidSignature => forbidden("the token's signature is not valid"),
                    ErrorKind::InvalidAudience => forbidden("the token is not for this audience"),
                    ErrorKind::InvalidIssuer => forbidden("the token's issuer is not accepted"),
                    ErrorKind::ImmatureSignature => forbidden("the token is not valid yet (nbf)"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        forbidden(&format!("the token has no `{claim}` claim"))
                    }
                    ErrorKind::InvalidAlgorithm => {
                        forbidden("the token's algorithm does not fit the key")
                    }
                    _ => forbidden("the token is malformed"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::handler::tests::headers;

    #[test]
    fn bearer_values() {
        let v = |s: &str| HeaderValue::try_from(s).unwrap();
        assert_eq!(bearer(Some(&v("Bearer abc")), true), Some("abc"));
        assert_eq!(bearer(Some(&v("bearer  abc ")), true), Some("abc"));
        assert_eq!(bearer(Some(&v("Basic abc")), true), None);
        assert_eq!(bearer(Some(&v("abc")), true), None);
        assert_eq!(bearer(Some(&v("abc")), false), Some("abc"));
        assert_eq!(bearer(Some(&v("Bearer ")), false), None);
        assert_eq!(bearer(None, false), None);
    }

    #[test]
    fn cookies() {
        let map = headers(&[("cookie", "a=1; tok=\"xyz\""), ("cookie", "b=2")]);
        assert_eq!(cookie(&map, "tok"), Some("xyz"));
        assert_eq!(cookie(&map, "b"), Some("2"));
        assert_eq!(cookie(&map, "c"), None);
    }

    #[test]
    fn tokens_and_patterns() {
        let tokens = vec!["0123456789abcdef".to_string(), "fedcba9876543210".into()];
        assert!(matches_any(&tokens, "fedcba9876543210"));
        assert!(!matches_any(&tokens, "fedcba987654321"));
        assert!(!matches_any(&tokens, ""));
        assert!(key_matches("lobby", "lobby"));
        assert!(!key_matches("lobby", "lobby2"));
        assert!(key_matches("team-*", "team-7"));
        assert!(!key_matches("team-*", "other"));
        assert!(key_matches("*", "anything"));
    }

    /// Streams `steps` on a route with `config` in `format`, the credential
    /// expiring after `expires`; returns the body and how long it ran.
    async fn run_stream(
        config: crate::config::RouteConfig,
        steps: Vec<backends::testing::Step>,
        format: crate::Format,
        expires: Option<Duration>,
    ) -> (String, Duration) {
        crate::session::tests::run(config, steps, format, |s| s.credential_expires(expires)).await
    }

    /// A stream whose credential expires ends then, with `gateway.close`
    /// (`credential_expired`) and the last id, before its other deadlines.
    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_its_credential_expires() {
        use backends::testing::{Step, event};
        use serde_json::json;

        let mut config = crate::config::RouteConfig::new("/s");
        config.heartbeat = Duration::from_secs(3600);
        config.max_idle = Duration::from_secs(7200);
        config.max_lifetime = Duration::from_secs(10_800);
        let steps = vec![Step::Event(event("7", "a", json!({"n": 7}))), Step::Pending];
        let (body, ran) = run_stream(
            config,
            steps,
            crate::Format::Sse,
            Some(Duration::from_secs(90)),
        )
        .await;
        assert_eq!(ran, Duration::from_secs(90), "{body}");
        assert!(
            body.ends_with(
                "retry: 3000\nid: 7\nevent: gateway.close\ndata: \
                 {\"event\":\"gateway.close\",\"reason\":\"credential_expired\",\
                 \"last_event_id\":\"7\"}\n\n"
            ),
            "{body}"
        );

        // Without an expiry, the same stream runs to its lifetime.
        let mut config = crate::config::RouteConfig::new("/s");
        config.max_lifetime = Duration::from_secs(60);
        let (body, ran) =
            run_stream(config, vec![Step::Pending], crate::Format::Ndjson, None).await;
        assert_eq!(ran, Duration::from_secs(60));
        assert!(body.contains("\"reason\":\"lifetime\""), "{body}");
    }
}
