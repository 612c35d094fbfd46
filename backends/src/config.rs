//! Built-in backends as they appear in a config file.

use std::sync::Arc;

use serde::Deserialize;

use crate::Backend;
use crate::bus::{Broker, Bus, BusLog};
use crate::command::{Command, CommandConfig};
use crate::demo::{Demo, DemoConfig};
use crate::durable::JobLog;
use crate::http::{Http, HttpConfig};
use crate::nats::{NatsConfig, NatsPublisher};
use crate::postgres::{PostgresConfig, PostgresPublisher};
use crate::problem::Problem;
use crate::publish::Publisher;
use crate::rabbitmq::{RabbitMqConfig, RabbitMqPublisher};
use crate::redis::{RedisConfig, RedisPublisher};
use crate::registry::CustomConfig;
use crate::ticker::{Ticker, TickerConfig};

/// One backend of a route, selected by its `type`:
///
/// ```toml
/// [routes.reference.backends.demo]
/// type = "demo"
/// token_pause = "300ms"
/// ```
///
/// The built-in types are a closed enum: adding one means adding a variant
/// here, and the compiler then points at every place that must learn about
/// it. Types of an embedder's own are [`Custom`](Self::Custom) (see
/// [`crate::registry`]); the gateway's config loader makes them.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackendConfig {
    /// The reference stream (see [`crate::demo`]).
    Demo(DemoConfig),
    /// An event every interval (see [`crate::ticker`]).
    Ticker(TickerConfig),
    /// A Redis Stream, shared by every client of a key (see [`crate::redis`]
    /// and, for what every bus backend does, [`crate::bus`]).
    Redis(RedisConfig),
    /// A subject of a NATS JetStream stream, shared by every client of a
    /// subject (see [`crate::nats`]).
    Nats(NatsConfig),
    /// Rows of a PostgreSQL table, shared by every client of a key (see
    /// [`crate::postgres`]).
    Postgres(PostgresConfig),
    /// A RabbitMQ stream per key, shared by every client of a key (see
    /// [`crate::rabbitmq`]).
    Rabbitmq(RabbitMqConfig),
    /// A program's output, a line per event (see [`crate::command`]).
    Command(CommandConfig),
    /// An upstream URL that streams SSE, NDJSON or lines (see [`crate::http`]).
    Http(HttpConfig),
    /// A type registered by an embedder (see [`crate::registry`]).
    #[serde(skip)]
    Custom(CustomConfig),
}

impl BackendConfig {
    /// Checks what the types alone cannot. Returns every problem found, each
    /// naming its key relative to the backend's table.
    pub fn validate(&self) -> Vec<Problem> {
        match self {
            Self::Demo(c) => c.validate(),
            Self::Ticker(c) => c.validate(),
            Self::Redis(c) => c.validate(),
            Self::Nats(c) => c.validate(),
            Self::Postgres(c) => c.validate(),
            Self::Rabbitmq(c) => c.validate(),
            Self::Command(c) => c.validate(),
            Self::Http(c) => c.validate(),
            Self::Custom(c) => c.validate(),
        }
    }

    /// Builds the backend. Call [`validate`](Self::validate) first.
    pub fn build(&self) -> Arc<dyn Backend> {
        match self {
            Self::Demo(c) => Arc::new(Demo::new(c.clone())),
            Self::Ticker(c) => Arc::new(Ticker::new(c.clone())),
            Self::Redis(c) => Arc::new(c.build()),
            Self::Nats(c) => Arc::new(c.build()),
            Self::Postgres(c) => Arc::new(c.build()),
            Self::Rabbitmq(c) => Arc::new(c.build()),
            Self::Command(c) => Arc::new(Command::new(c.clone())),
            Self::Http(c) => Arc::new(Http::new(c.clone())),
            Self::Custom(c) => c.build(),
        }
    }

    /// The backend as a durable job's log (read as the backend reads,
    /// appended to as its publish target writes), for the bus backends;
    /// `None` for the others. Call [`validate`](Self::validate) first.
    pub fn job_log(&self) -> Option<Arc<dyn JobLog>> {
        fn log<B: Broker>(bus: Bus<B>, publisher: impl Publisher + 'static) -> Arc<dyn JobLog> {
            Arc::new(BusLog::new(bus, Arc::new(publisher)))
        }
        match self {
            Self::Redis(c) => Some(log(c.build(), RedisPublisher::new(&c.target()))),
            Self::Nats(c) => Some(log(c.build(), NatsPublisher::new(&c.target()))),
            Self::Postgres(c) => Some(log(c.build(), PostgresPublisher::new(&c.target()))),
            Self::Rabbitmq(c) => Some(log(c.build(), RabbitMqPublisher::new(&c.target()))),
            Self::Demo(_)
            | Self::Ticker(_)
            | Self::Command(_)
            | Self::Http(_)
            | Self::Custom(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_by_type_and_denies_unknown_fields() {
        let demo: BackendConfig = serde_json::from_value(json!({"type": "demo"})).unwrap();
        assert_eq!(demo, BackendConfig::Demo(DemoConfig::default()));
        let ticker: BackendConfig =
            serde_json::from_value(json!({"type": "ticker", "interval": "250ms", "count": 3}))
                .unwrap();
        let BackendConfig::Ticker(t) = ticker else {
            panic!("not a ticker")
        };
        assert_eq!(t.interval, std::time::Duration::from_millis(250));
        let err = serde_json::from_value::<BackendConfig>(json!({"type": "demo", "tokenz": []}))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `tokenz`"), "{err}");
        let err = serde_json::from_value::<BackendConfig>(json!({"type": "kafka"})).unwrap_err();
        assert!(err.to_string().contains("unknown variant `kafka`"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let ticker = BackendConfig::Ticker(TickerConfig {
            payload_bytes: usize::MAX,
            name: "a\nb".into(),
            ..TickerConfig::default()
        });
        let keys: Vec<_> = ticker.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["payload_bytes", "name"]);
    }
}
