//! Publishing: appending an event to a bus that stream routes read.
//!
//! A publisher takes one event a client posted and appends it to the
//! configured target, answering the id the bus gave it — the id readers will
//! see, and resume after.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{self, Key, Scalar, Shape};
use crate::nats::{NatsPublisher, NatsTarget};
use crate::postgres::{PostgresPublisher, PostgresTarget};
use crate::problem::Problem;
use crate::rabbitmq::{RabbitMqPublisher, RabbitMqTarget};
use crate::redis::{RedisPublisher, RedisTarget};
use crate::{BackendError, Data, JsonBody, RequestContext};

/// What a client publishes: the event's data and, optionally, its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    /// The event's data, any JSON value, as compact JSON text (never a
    /// `Value` tree: 1 MiB of `[0,0,…]` costs 1 MiB, not 36).
    pub data: Data,
    /// The event's name (SSE `event:`).
    pub name: Option<String>,
}

const NOT_AN_EVENT: &str = r#"expected a JSON object {"data": …, "event": "name"}"#;
const NO_DATA: &str = r#"the object needs "data" (any JSON value)"#;
const BAD_NAME: &str =
    r#""event" must be a non-empty string of at most 256 bytes without control characters"#;

impl Publication {
    /// Reads `{"data": …, "event": "name"}`, the body a client posts. The
    /// name must be one line of at most 256 bytes (it becomes an SSE field).
    /// `data` is taken as the text it is, compacted.
    pub fn from_json(body: &JsonBody) -> Result<Self, String> {
        let shape = json::object(body.as_str(), Fields).map_err(|e| e.to_string())?;
        let Shape::Object(posted) = shape else {
            return Err(NOT_AN_EVENT.into());
        };
        let data = posted.data.ok_or(NO_DATA)?;
        let name = match posted.event {
            None | Some(Scalar::Null) => None,
            Some(Scalar::String(name)) if is_event_name(&name) => Some(name.into_owned()),
            Some(_) => return Err(BAD_NAME.into()),
        };
        if let Some(other) = posted.unknown {
            return Err(format!(
                r#"unknown field {other:?}; expected "data" and optionally "event""#
            ));
        }
        let data = Data::parse_json(data.get()).map_err(|e| e.to_string())?;
        Ok(Self { data, name })
    }
}

/// A posted object, read in one pass: `data` as the text it is, `event`,
/// and the first unknown key (a key given twice counts as its last).
struct Posted<'a> {
    data: Option<&'a RawValue>,
    event: Option<Scalar<'a>>,
    unknown: Option<String>,
}

struct Fields;

impl<'de> Visitor<'de> for Fields {
    type Value = Posted<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_AN_EVENT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Posted<'de>, A::Error> {
        let mut posted = Posted {
            data: None,
            event: None,
            unknown: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "data" => posted.data = Some(map.next_value()?),
                "event" => posted.event = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    posted.unknown.get_or_insert_with(|| key.into_owned());
                }
            }
        }
        Ok(posted)
    }
}

pub(crate) fn is_event_name(name: &str) -> bool {
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
    /// A PostgreSQL table (what a `postgres` backend reads).
    Postgres(PostgresTarget),
    /// A RabbitMQ stream (what a `rabbitmq` backend reads).
    Rabbitmq(RabbitMqTarget),
}

impl PublisherConfig {
    /// Every problem with the settings, keys relative to the target's table.
    pub fn validate(&self) -> Vec<Problem> {
        match self {
            Self::Redis(c) => c.validate(),
            Self::Nats(c) => c.validate(),
            Self::Postgres(c) => c.validate(),
            Self::Rabbitmq(c) => c.validate(),
        }
    }

    /// The publisher. Call [`validate`](Self::validate) first.
    pub fn build(&self) -> Arc<dyn Publisher> {
        match self {
            Self::Redis(c) => Arc::new(RedisPublisher::new(c)),
            Self::Nats(c) => Arc::new(NatsPublisher::new(c)),
            Self::Postgres(c) => Arc::new(PostgresPublisher::new(c)),
            Self::Rabbitmq(c) => Arc::new(RabbitMqPublisher::new(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<Publication, String> {
        Publication::from_json(&body.parse().unwrap())
    }

    #[test]
    fn a_publication_is_data_and_an_optional_name() {
        let p = read(r#"{"data": {"a": 1}, "event": "note"}"#).unwrap();
        assert_eq!(p.data.as_str(), r#"{"a":1}"#);
        assert_eq!(p.name.as_deref(), Some("note"));
        assert_eq!(read(r#"{"data": null}"#).unwrap().name, None);
        assert_eq!(read(r#"{"data": 1, "event": null}"#).unwrap().name, None);
        let expected_object = r#"expected a JSON object {"data": …, "event": "name"}"#;
        for (bad, why) in [
            ("[1]", expected_object),
            ("null", expected_object),
            (r#""data""#, expected_object),
            (r#"{"event": "x"}"#, NO_DATA),
            (r#"{"extra": true, "event": 7}"#, NO_DATA),
            (r#"{"data": 1, "event": "a\nb"}"#, BAD_NAME),
            (r#"{"data": 1, "event": ""}"#, BAD_NAME),
            (r#"{"data": 1, "event": 7}"#, BAD_NAME),
            (r#"{"data": 1, "x": 1, "event": [7]}"#, BAD_NAME),
            (
                r#"{"data": 1, "extra": true, "more": 2}"#,
                r#"unknown field "extra"; expected "data" and optionally "event""#,
            ),
        ] {
            assert_eq!(read(bad).err().as_deref(), Some(why), "{bad}");
        }
    }

    #[test]
    fn data_is_kept_as_written_without_the_spaces() {
        let p = read(
            "{\"event\": \"n\", \"data\": [ 1.50, 12345678901234567890123, \"\\u00e9 x\" ,{ } ]}",
        )
        .unwrap();
        assert_eq!(
            p.data.as_str(),
            r#"[1.50,12345678901234567890123,"\u00e9 x",{}]"#
        );
        // A key given twice counts as its last.
        let p = read(r#"{"data": 1, "data": {"b": 2}}"#).unwrap();
        assert_eq!(p.data.as_str(), r#"{"b":2}"#);
    }
}
