//! Publishing: appending an event to a bus that stream routes read.
//!
//! A publisher takes one event a client posted and appends it to the
//! configured target, answering the id the bus gave it — the id readers will
//! see, and resume after.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use crate::nats::{NatsPublisher, NatsTarget};
use crate::problem::Problem;
use crate::redis::{RedisPublisher, RedisTarget};
use crate::{BackendError, RequestContext};

/// What a client publishes: the event's data and, optionally, its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    /// The event's data, any JSON value.
    pub data: Value,
    /// The event's name (SSE `event:`).
    pub name: Option<String>,
}

impl Publication {
    /// Reads `{"data": …, "event": "name"}`, the body a client posts. The
    /// name must be one line of at most 256 bytes (it becomes an SSE field).
    pub fn from_json(body: Value) -> Result<Self, String> {
        let Value::Object(mut fields) = body else {
            return Err(r#"expected a JSON object {"data": …, "event": "name"}"#.into());
        };
        let data = fields
            .remove("data")
            .ok_or(r#"the object needs "data" (any JSON value)"#)?;
        let name = match fields.remove("event") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if is_event_name(&name) => Some(name),
            Some(_) => {
                return Err(
                    r#""event" must be a non-empty string of at most 256 bytes without control characters"#
                        .into(),
                );
            }
        };
        if let Some(other) = fields.keys().next() {
            return Err(format!(
                r#"unknown field {other:?}; expected "data" and optionally "event""#
            ));
        }
        Ok(Self { data, name })
    }
}

fn is_event_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
}

/// Appends events to a bus.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Appends `publication` for the request `ctx` (its path parameters
    /// choose the stream), answering the id the bus gave the event.
    async fn publish(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError>;
}

/// Where a publish route appends, selected by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PublisherConfig {
    /// A Redis Stream (what a `redis` backend reads).
    Redis(RedisTarget),
    /// A JetStream subject (what a `nats` backend reads).
    Nats(NatsTarget),
}

impl PublisherConfig {
    /// Every problem with the settings, keys relative to the target's table.
    pub fn validate(&self) -> Vec<Problem> {
        match self {
            Self::Redis(c) => c.validate(),
            Self::Nats(c) => c.validate(),
        }
    }

    /// The publisher. Call [`validate`](Self::validate) first.
    pub fn build(&self) -> Arc<dyn Publisher> {
        match self {
            Self::Redis(c) => Arc::new(RedisPublisher::new(c)),
            Self::Nats(c) => Arc::new(NatsPublisher::new(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_publication_is_data_and_an_optional_name() {
        let p = Publication::from_json(json!({"data": {"a": 1}, "event": "note"})).unwrap();
        assert_eq!(p.data, json!({"a": 1}));
        assert_eq!(p.name.as_deref(), Some("note"));
        assert_eq!(
            Publication::from_json(json!({"data": null})).unwrap().name,
            None
        );
        for bad in [
            json!([1]),
            json!({"event": "x"}),
            json!({"data": 1, "event": "a\nb"}),
            json!({"data": 1, "event": ""}),
            json!({"data": 1, "event": 7}),
            json!({"data": 1, "extra": true}),
        ] {
            assert!(Publication::from_json(bad.clone()).is_err(), "{bad}");
        }
    }
}
