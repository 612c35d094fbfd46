//! `gateway token`: a development JWT for a route whose `jwt` auth checks
//! tokens with a shared secret, made from the route's own settings (its
//! algorithm, audience and issuer), so that a user can call a protected
//! route minutes after writing its config. Routes whose tokens come from
//! an identity provider (a JWKS) cannot be served this way: the gateway
//! holds no private key, and the error says so.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::config::{AuthType, GatewayConfig};

/// What the token says beyond the route's own settings.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The route whose auth the token is for.
    pub route: &'a str,
    /// `sub`.
    pub subject: &'a str,
    /// From now to `exp`.
    pub ttl: Duration,
    /// More claims (a JSON object), over the ones made here.
    pub claims: Option<&'a str>,
}

/// The signed token, or why there is none.
pub fn mint(config: &GatewayConfig, request: &Request<'_>) -> Result<String, String> {
    let route = config.routes.get(request.route).ok_or_else(|| {
        let names: Vec<&str> = config.routes.keys().map(String::as_str).collect();
        format!(
            "no route {:?} in the config (routes: {})",
            request.route,
            names.join(", ")
        )
    })?;
    let auth = &route.auth;
    let secret = match (auth.kind, &auth.secret) {
        (AuthType::Jwt, Some(secret)) => secret,
        (AuthType::Jwt, None) => {
            return Err(format!(
                "route {:?} checks tokens against its identity provider's keys (jwks_url or jwks_file): get a token from that provider; `gateway token` signs only for routes with a `secret`",
                request.route
            ));
        }
        (AuthType::Bearer, _) => {
            return Err(format!(
                "route {:?} takes static bearer tokens: send one of its `tokens`",
                request.route
            ));
        }
        (AuthType::None, _) => {
            return Err(format!(
                "route {:?} asks for no credential: call it without a token",
                request.route
            ));
        }
    };
    let name = auth.algorithms.first().map_or("HS256", String::as_str);
    let algorithm = Algorithm::from_str(name).map_err(|_| format!("unknown algorithm {name:?}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(request.subject));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + request.ttl.as_secs().max(1)));
    if let Some(audience) = auth.audience.first() {
        claims.insert("aud".into(), json!(audience));
    }
    if let Some(issuer) = auth.issuer.first() {
        claims.insert("iss".into(), json!(issuer));
    }
    if let Some(more) = request.claims {
        match serde_json::from_str::<Value>(more) {
            Ok(Value::Object(more)) => claims.extend(more),
            Ok(_) => return Err("--claims must be a JSON object".into()),
            Err(e) => return Err(format!("--claims is not JSON: {e}")),
        }
    }
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign: {e}"))
}
