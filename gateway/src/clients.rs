//! Per-client limits: how many connections and streams one client holds.
//!
//! A client is an address: an IPv4 address, or an IPv6 /64 (one subscriber
//! line usually gets a whole /64, so single IPv6 addresses would be free to
//! pick). Behind a trusted proxy the address comes from a header the proxy
//! sets (`server.client_ip_header`), else from the connection's peer.
//!
//! [`Tally`] counts what each client holds; a [`Slot`] is one of them and
//! gives itself back when dropped, so a stream or a connection that ends in
//! any way frees its place. Entries disappear at zero: the map holds only
//! clients that hold something, so it is bounded by the connections open.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{HeaderMap, HeaderName};

/// Who a limit applies to: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The client an address belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// The connection's peer, which the listener puts in every request's
/// extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The client a request comes from: the address in `header` when it is
/// configured and the request carries a readable one, else the peer's.
/// `None` when neither is known (a native Lambda invocation without the
/// header).
pub fn client_of(
    header: Option<&HeaderName>,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> Option<ClientKey> {
    header
        .and_then(|name| {
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            address_in(name, value)
        })
        .or(peer.map(|Peer(addr)| addr.ip()))
        .map(ClientKey::of)
}

/// The address in a proxy's header value. `X-Forwarded-For`-style lists
/// count by their last element (the one the proxy nearest the gateway
/// added). `CloudFront-Viewer-Address` is always `ip:port`, with an IPv6
/// address unbracketed (`2001:db8::1:443`), so its last `:` is cut off
/// first; other headers hold an address, perhaps with a port
/// (`[2001:db8::1]:443`, `192.0.2.1:443`).
fn address_in(name: &HeaderName, value: &str) -> Option<IpAddr> {
    let value = value.rsplit(',').next()?.trim();
    if name.as_str() == "cloudfront-viewer-address" {
        if let Some(ip) = value.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()) {
            return Some(ip);
        }
    }
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// How many of something each client holds, with a limit per client.
#[derive(Debug)]
pub struct Tally {
    limit: usize,
    held: Mutex<HashMap<ClientKey, usize>>,
}

impl Tally {
    /// A tally allowing `limit` per client; `0` allows any number.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The limit per client (`0`: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One more for `client`, or `None` when it holds its limit already.
    pub fn take(self: &Arc<Self>, client: ClientKey) -> Option<Slot> {
        if self.limit == 0 {
            return Some(Slot(None));
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(client).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot(Some((Arc::clone(self), client))))
    }

    /// How many `client` holds now.
    pub fn held(&self, client: ClientKey) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&client).copied().unwrap_or(0)
    }

    fn give_back(&self, client: ClientKey) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&client);
            }
        }
    }
}

/// One place in a [`Tally`], given back when dropped.
#[derive(Debug)]
pub struct Slot(Option<(Arc<Tally>, ClientKey)>);

impl Slot {
    /// A slot that counts nowhere (no limit applies).
    pub fn unlimited() -> Self {
        Self(None)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((tally, client)) = self.0.take() {
            tally.give_back(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_itself() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7")),
            ClientKey::of(ip("192.0.2.7"))
        );
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn the_trusted_header_names_the_client_else_the_peer() {
        let peer = Some(Peer("10.0.0.1:5000".parse().unwrap()));
        let cf = HeaderName::from_static("cloudfront-viewer-address");
        let xff = HeaderName::from_static("x-forwarded-for");
        let with = |name: &HeaderName, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
            client_of(Some(name), &headers, peer)
        };
        let key = |s: &str| Some(ClientKey::of(ip(s)));
        assert_eq!(with(&cf, "198.51.100.10:46532"), key("198.51.100.10"));
        // CloudFront's IPv6 form: the port is cut off before parsing, or
        // "2001::1:2:3:4:443" would read as another /64.
        assert_eq!(with(&cf, "2001::1:2:3:4:443"), key("2001::1:2:3:4"));
        assert_eq!(
            with(&xff, "203.0.113.9, 198.51.100.10"),
            key("198.51.100.10")
        );
        assert_eq!(with(&xff, "[2001:db8::1]:443"), key("2001:db8::1"));
        assert_eq!(with(&xff, "2001:db8::1"), key("2001:db8::1"));
        // Unreadable or missing: the peer.
        assert_eq!(with(&xff, "not an address"), key("10.0.0.1"));
        assert_eq!(
            client_of(Some(&xff), &HeaderMap::new(), peer),
            key("10.0.0.1")
        );
        assert_eq!(client_of(None, &HeaderMap::new(), None), None);
        // Without a configured header, a client's own header means nothing.
        let mut headers = HeaderMap::new();
        headers.insert(&xff, HeaderValue::from_static("192.0.2.1"));
        assert_eq!(client_of(None, &headers, peer), key("10.0.0.1"));
    }

    #[test]
    fn slots_are_counted_per_client_and_given_back_on_drop() {
        let tally = Tally::new(2);
        let (a, b) = (
            ClientKey::of(ip("192.0.2.1")),
            ClientKey::of(ip("192.0.2.2")),
        );
        let first = tally.take(a).unwrap();
        let second = tally.take(a).unwrap();
        assert!(tally.take(a).is_none());
        let other = tally.take(b).unwrap();
        assert_eq!((tally.held(a), tally.held(b)), (2, 1));
        drop(first);
        let third = tally.take(a).unwrap();
        drop((second, third, other));
        assert_eq!((tally.held(a), tally.held(b)), (0, 0));
        assert!(
            tally.held.lock().unwrap().is_empty(),
            "no entry outlives its slots"
        );

        let unlimited = Tally::new(0);
        let slots: Vec<_> = (0..10_000).map(|_| unlimited.take(a).unwrap()).collect();
        assert_eq!(slots.len(), 10_000);
        assert!(unlimited.held.lock().unwrap().is_empty());
    }
}
