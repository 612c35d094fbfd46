//! An HTTP method as a config names it: a leaf that the route config (what
//! a route answers) and the `http` backend (what an upstream is sent) share.

use serde::Deserialize;

/// An HTTP method as a config names it (`"GET"`): what a route answers,
/// what an upstream is sent.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "String")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    /// The method.
    pub fn as_method(self) -> http::Method {
        match self {
            Self::Get => http::Method::GET,
            Self::Post => http::Method::POST,
            Self::Put => http::Method::PUT,
            Self::Patch => http::Method::PATCH,
            Self::Delete => http::Method::DELETE,
        }
    }
}

impl TryFrom<String> for HttpMethod {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Ok(match name.as_str() {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            _ => {
                return Err(format!(
                    "unknown value {name:?}; expected one of \"GET\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\""
                ));
            }
        })
    }
}
