//! Event sources for the streaming gateway.
//!
//! A backend turns one HTTP request into a stream of [`Event`]s. The gateway
//! negotiates the wire format, merges several backends, adds heartbeats and
//! limits; a backend only has to produce events and stop when its stream is
//! dropped.
//!
//! # Layout
//!
//! - [`event`]: the [`Event`] that every backend yields, and its [`Data`].
//! - [`context`]: the [`RequestContext`] a backend is opened with (method,
//!   path parameters, query, selected headers, JSON body, `Last-Event-ID`).
//! - [`body`]: [`JsonBody`], the request body: checked JSON text, held once
//!   and shared by the route's backends, each reading what it needs.
//! - [`json`]: JSON checked and compacted as text, without a tree (bodies,
//!   published events and upstream lines never become a `Value`).
//! - [`error`]: [`BackendError`] and its [`ErrorKind`], which decides the HTTP
//!   status when a backend fails before the first byte.
//! - [`backend`]: the [`Backend`] trait with its one method, `open`.
//! - [`config`]: [`BackendConfig`], the closed, tagged enum of built-in
//!   backends as they appear in a config file, with `validate` and `build`.
//! - [`problem`]: [`Problem`](problem::Problem), what every `validate`
//!   reports; [`method`]: the [`HttpMethod`](method::HttpMethod) configs name.
//!   Leaves: they use nothing else of the crate.
//! - [`stats`]: [`BackendStats`], what a backend counts about its upstream
//!   and its slow clients, for the gateway's metrics.
//! - [`bus`]: what every bus backend shares (one reader per key, clients,
//!   catch-up, the notices that keep loss from being silent, key templates,
//!   limits), written once over the [`Broker`](bus::Broker) trait that
//!   [`redis`], [`nats`] and [`postgres`] implement.
//! - One module per backend: [`demo`] (the reference stream), [`ticker`],
//!   [`command`], [`http`], [`redis`], [`nats`], [`postgres`]; [`publish`] for the routes
//!   that append to a bus.
//! - [`durable`]: a producing backend's jobs kept on a bus, so that they
//!   survive disconnects, deadlines and instance changes.
//! - `testing` (feature `testing`): mock backends for the gateway's own tests.
//!
//! A request flows: the gateway builds a [`RequestContext`], calls
//! [`Backend::open`] on every backend of the route, and polls the returned
//! [`EventStream`]s until they end or the client goes away, at which point the
//! streams are dropped and every backend's work stops with them.

pub mod backend;
pub mod body;
pub mod bus;
pub mod command;
pub mod config;
pub mod context;
pub mod demo;
pub mod durable;
pub mod env;
pub mod error;
pub mod event;
pub mod http;
pub mod json;
pub mod lines;
pub mod method;
pub mod nats;
pub mod postgres;
pub mod problem;
pub mod publish;
pub mod rabbitmq;
pub mod redis;
pub mod registry;
pub mod stats;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod ticker;

pub use backend::{Backend, EventStream};
pub use body::JsonBody;
pub use config::BackendConfig;
pub use context::RequestContext;
pub use error::{BackendError, ErrorKind, Shown};
pub use event::{Data, Encodings, Event};
pub use stats::BackendStats;
