//! Credential extraction and checking: any `Authorization`, header, cookie
//! and query value, and any token signed with the route's secret over any
//! header and claims, is granted or refused, never a panic; a token signed
//! with another key is always refused; a grant always means a token that
//! has not expired and, with `restrict`, that names the key asked for.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::auth::{Auth, Presented};
use gateway::config::{AuthConfig, AuthType, CredentialPlace, RestrictConfig};
use gateway_fuzz::{fields, flags};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &str = "fuzz-secret-of-at-least-32-bytes-0123456789";
const TOKEN: &str = "fuzz-static-token-0123456789";

static JWT: LazyLock<Auth> = LazyLock::new(|| {
    let config = AuthConfig {
        kind: AuthType::Jwt,
        from: vec![
            CredentialPlace::Authorization,
            CredentialPlace::Header,
            CredentialPlace::Cookie,
            CredentialPlace::Query,
        ],
        secret: Some(SECRET.into()),
        restrict: Some(RestrictConfig {
            param: "room".into(),
            claim: "rooms".into(),
        }),
        ..AuthConfig::default()
    };
    Auth::from_config(&config, "fuzz").expect("a valid auth config")
});

static BEARER: LazyLock<Auth> = LazyLock::new(|| Auth::bearer(vec![TOKEN.into()]));

fn sign(secret: &str, header: &str, claims: &str) -> String {
    let head = URL_SAFE_NO_PAD.encode(header);
    let body = URL_SAFE_NO_PAD.encode(claims);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{head}.{body}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{signature}")
}

fn header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let f = fields(rest, 5);
    let mut headers = HeaderMap::new();
    let mut query = Vec::new();
    let mut params = BTreeMap::new();
    params.insert("room".to_string(), f[4].clone());
    let signed = match flags % 4 {
        // Raw values in every place.
        0 => {
            header(&mut headers, "authorization", &f[0]);
            header(&mut headers, "x-client-authorization", &f[1]);
            header(&mut headers, "cookie", &f[2]);
            query.push(("access_token".to_string(), f[3].clone()));
            None
        }
        // A token over the fuzzer's header and claims, signed with the
        // route's secret (1, 2) or another (3), in one of the places.
        mode => {
            let head = if f[0].is_empty() {
                r#"{"alg":"HS256","typ":"JWT"}"#
            } else {
                &f[0]
            };
            let secret = if mode == 3 {
                "another-secret-of-at-least-32-bytes-000"
            } else {
                SECRET
            };
            let token = sign(secret, head, &f[1]);
            match (flags >> 2) % 4 {
                0 => header(&mut headers, "authorization", &format!("Bearer {token}")),
                1 => header(&mut headers, "x-client-authorization", &token),
                2 => header(
                    &mut headers,
                    "cookie",
                    &format!("a=b; access_token={token}"),
                ),
                _ => query.push(("access_token".to_string(), token)),
            }
            Some((mode, f[1].clone()))
        }
    };
    let presented = Presented {
        headers: &headers,
        query: &query,
        params: &params,
        authorization_source: None,
    };
    let granted = futures::executor::block_on(JWT.check(presented));
    if let (Ok(_), Some((mode, claims))) = (&granted, &signed) {
        assert_ne!(*mode, 3, "a token signed with another key was granted");
        let claims: Value = serde_json::from_str(claims).expect("granted claims are JSON");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let exp = claims["exp"].as_f64().expect("a granted token has exp");
        assert!(
            exp + 5.0 >= now as f64,
            "an expired token was granted: {claims}"
        );
        let allowed = match &claims["rooms"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let room = &f[4];
        assert!(
            allowed
                .iter()
                .any(|a| a == room || a.strip_suffix('*').is_some_and(|p| room.starts_with(p))),
            "{room:?} granted with rooms {allowed:?}"
        );
    }
    if signed.is_none() {
        assert!(
            granted.is_err(),
            "raw values are never a token signed with the secret"
        );
        let granted = futures::executor::block_on(BEARER.check(presented));
        if granted.is_ok() {
            assert!(
                f[0].contains(TOKEN),
                "bearer granted without the token: {:?}",
                f[0]
            );
        }
    }
});
