//! JSON Web Key Sets: the public keys a JWT route verifies with, from a file
//! (read once, at start) or a URL (fetched at start, refreshed after a TTL,
//! and fetched again when a token names a key id that is not known, at most
//! once per `jwks_refetch_interval`).
//!
//! Bounds: a JWKS document is at most [`MAX_JWKS_BYTES`] and [`MAX_KEYS`]
//! keys (a bigger one is refused whole, and the keys already known stay in
//! use); one fetch takes at most `jwks_timeout`. Keys for encryption
//! (`"use": "enc"`), symmetric keys (`"kty": "oct"`: HS algorithms only ever
//! use the configured `secret`) and keys of unknown types are skipped.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys in one JWKS.
pub const MAX_KEYS: usize = 64;
/// While no key was ever fetched, the shortest time between two attempts.
const NO_KEYS_RETRY: Duration = Duration::from_secs(1);

/// One verification key.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when it names one: then only that one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.key.family().algorithms().contains(&alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The usable keys of a JWKS document.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

/// What a lookup found.
pub enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a DecodingKey),
    /// The token names a key id the set does not have.
    UnknownKid,
    /// No key id, and not exactly one key for the algorithm.
    NoKey,
}

impl KeySet {
    /// The keys of a JWKS document that can verify one of `algorithms`;
    /// fails when the document is not a JWKS, is too large, or has none.
    pub fn parse(bytes: &[u8], algorithms: &[String]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|e| format!("is not a JWKS ({{\"keys\": […]}}): {e}"))?;
        if document.keys.len() > MAX_KEYS {
            return Err(format!("has more than {MAX_KEYS} keys"));
        }
        let algorithms: Vec<Algorithm> = algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        let mut keys = Vec::new();
        for value in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                // A key for an algorithm the gateway does not verify with
                // (RSA-OAEP, say) is of no use here.
                Some(a) => match Algorithm::from_str(&a.to_string()) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            let key = Key {
                kid: jwk.common.key_id,
                alg,
                key,
            };
            if algorithms.iter().any(|a| key.fits(*a)) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
            return Err(format!("has no key usable for {}", names.join(", ")));
        }
        Ok(Self { keys })
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, the one key
    /// that fits `alg`, if there is exactly one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.fits(alg) => Lookup::Found(&key.key),
                Some(_) => Lookup::NoKey,
                None => Lookup::UnknownKid,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(&key.key),
                    _ => Lookup::NoKey,
                }
            }
        }
    }
}

/// Where a route's keys come from.
#[derive(Debug)]
pub struct Jwks {
    keys: RwLock<Option<Arc<KeySet>>>,
    remote: Option<Remote>,
}

/// A JWKS URL and what is known about fetching it.
#[derive(Debug)]
struct Remote {
    url: String,
    client: reqwest::Client,
    algorithms: Vec<String>,
    ttl: Duration,
    refetch_interval: Duration,
    /// Held while fetching: one fetch at a time, and waiters see its result.
    state: tokio::sync::Mutex<FetchState>,
}

#[derive(Debug, Default)]
struct FetchState {
    /// When the keys in use were fetched.
    fetched: Option<Instant>,
    /// The last attempt, successful or not.
    attempted: Option<Instant>,
    /// The last fetch caused by an unknown key id.
    forced: Option<Instant>,
}

/// Why no key could be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The keys were never fetched.
    NotYet,
}

impl Jwks {
    /// Keys read from a file at start.
    pub fn fixed(keys: KeySet) -> Self {
        Self {
            keys: RwLock::new(Some(Arc::new(keys))),
            remote: None,
        }
    }

    /// Keys fetched from `url`. The first fetch starts at once when a tokio
    /// runtime is running (a failure is logged; requests are answered 503
    /// until keys arrive), or else with the first request.
    pub fn remote(
        url: &str,
        algorithms: Vec<String>,
        ttl: Duration,
        refetch_interval: Duration,
        timeout: Duration,
        route: &str,
    ) -> Result<Arc<Self>, String> {
        // Redirects are followed (3 at most) only to where a JWKS may come
        // from: never from HTTPS down to plain HTTP.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > 3 {
                attempt.error("more than 3 redirects")
            } else if !trusted_url(attempt.url()) {
                attempt.error("a redirect to plain HTTP off loopback")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirects)
            .build()
            .map_err(|e| format!("cannot make an HTTP client for jwks_url: {e}"))?;
        let jwks = Arc::new(Self {
            keys: RwLock::new(None),
            remote: Some(Remote {
                url: url.to_string(),
                client,
                algorithms,
                ttl,
                refetch_interval,
                state: tokio::sync::Mutex::new(FetchState::default()),
            }),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let first = Arc::clone(&jwks);
            let route = route.to_string();
            runtime.spawn(async move {
                if let Some(remote) = &first.remote {
                    let mut state = remote.state.lock().await;
                    if state.attempted.is_none() {
                        if let Err(e) = first.fetch(&mut state).await {
                            tracing::warn!(%route, url = %remote.url, error = %e, "The route's JWKS could not be fetched at start; its requests are answered 503 until it is");
                        }
                    }
                }
            });
        }
        Ok(jwks)
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The key set to verify a token with `kid`, fetching when there is
    /// none yet, when `kid` is unknown (within the refetch interval), and
    /// in the background when the keys are older than the TTL.
    pub async fn keys_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<KeySet>, Unavailable> {
        let current = self.current();
        let Some(remote) = &self.remote else {
            return current.ok_or(Unavailable::NotYet);
        };
        let known = |set: &KeySet| {
            kid.is_none_or(|kid| set.keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
        };
        if let Some(set) = &current {
            if known(set) {
                self.refresh_if_stale();
                return Ok(Arc::clone(set));
            }
        }
        let mut state = remote.state.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(set) = self.current() {
            if known(&set) {
                return Ok(set);
            }
        }
        let now = Instant::now();
        let may_fetch = match &current {
            None => state.attempted.is_none_or(|at| now >= at + NO_KEYS_RETRY),
            Some(_) => state
                .forced
                .is_none_or(|at| now >= at + remote.refetch_interval),
        };
        if may_fetch {
            if current.is_some() {
                state.forced = Some(now);
            }
            if let Err(e) = self.fetch(&mut state).await {
                tracing::warn!(url = %remote.url, error = %e, "JWKS fetch failed");
            }
        }
        drop(state);
        self.current().ok_or(Unavailable::NotYet)
    }

    fn refresh_if_stale(self: &Arc<Self>) {
        let Some(remote) = &self.remote else {
            return;
        };
        let Ok(mut state) = remote.state.try_lock() else {
            return; // a fetch is under way
        };
        let stale = state.fetched.is_none_or(|at| at.elapsed() >= remote.ttl)
            && state
                .attempted
                .is_none_or(|at| at.elapsed() >= NO_KEYS_RETRY);
        if !stale {
            return;
        }
        state.attempted = Some(Instant::now());
        drop(state);
        let jwks = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(remote) = &jwks.remote {
                let mut state = remote.state.lock().await;
                if let Err(e) = jwks.fetch(&mut state).await {
                    tracing::warn!(url = %remote.url, error = %e, "JWKS refresh failed; the keys fetched before stay in use");
                }
            }
        });
    }

    /// Fetches the URL and installs its keys.
    async fn fetch(&self, state: &mut FetchState) -> Result<(), String> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        state.attempted = Some(Instant::now());
        let response = remote
            .client
            .get(&remote.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set = KeySet::parse(&body, &remote.algorithms)?;
        tracing::debug!(url = %remote.url, keys = set.keys.len(), "JWKS fetched");
        match self.keys.write() {
            Ok(mut keys) => *keys = Some(Arc::new(set)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(set)),
        }
        state.fetched = Some(Instant::now());
        Ok(())
    }
}

/// Whether keys may be fetched from `url`: HTTPS anywhere, plain HTTP only
/// on loopback (a local key server, and the tests).
pub fn trusted_url(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}
