//! The request body a backend sees: checked JSON, held once as its text.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::json;

/// A request body that is one JSON value, kept as the text the client sent.
///
/// It is checked once, when the gateway reads it (as strictly as parsing it
/// into a `serde_json::Value` would, without building one: see
/// [`json::check`]), and then shared: every backend of a route gets the
/// same text (a clone is a reference count), takes from it only what it
/// needs ([`deserialize`](Self::deserialize) into its own type, borrowing
/// strings where it can), and may keep it for as long as its stream runs
/// (`demo` reads its tokens from it, `http` sends it upstream again on a
/// reconnect). So a body costs its own size once, whatever its shape and
/// however many backends a route has.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonBody(Arc<String>);

impl JsonBody {
    /// Checks that `bytes` is JSON, and keeps them (no copy; spare capacity
    /// is given back). The error is `serde_json`'s, as `Value` would give it.
    pub fn new(mut bytes: Vec<u8>) -> Result<Self, serde_json::Error> {
        json::check(&bytes)?;
        bytes.shrink_to_fit();
        // Checked JSON is UTF-8: its strings were checked, the rest is ASCII.
        let text = String::from_utf8(bytes).map_err(serde::de::Error::custom)?;
        Ok(Self(Arc::new(text)))
    }

    /// The JSON text, as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as `Bytes` sharing this body's memory, for sending it on.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }

    /// The body as a backend's own type; `&str` fields (or `Cow<str>` with
    /// `#[serde(borrow)]`) borrow from the body instead of copying.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl AsRef<[u8]> for JsonBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl FromStr for JsonBody {
    type Err = serde_json::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for JsonBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonBody({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_checked_once_and_shared() {
        let body: JsonBody = r#" {"text": "hi"} "#.parse().unwrap();
        assert_eq!(body.as_str(), r#" {"text": "hi"} "#);
        let copy = body.clone();
        assert!(std::ptr::eq(body.as_str(), copy.as_str()));
        let bytes = body.to_bytes();
        assert_eq!(bytes.as_ptr(), body.as_str().as_ptr());
        #[derive(Deserialize)]
        struct Text<'a> {
            text: &'a str,
        }
        let text: Text<'_> = body.deserialize().unwrap();
        assert_eq!(text.text, "hi");
        assert!("{\"text\": }".parse::<JsonBody>().is_err());
        assert!(JsonBody::new(b"[\"\xff\"]".to_vec()).is_err());
    }
}
