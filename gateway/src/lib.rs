//! A streaming gateway: events from pluggable backends as one HTTP response
//! stream, NDJSON or Server-Sent Events as the client's `Accept` asks.
//!
//! # Layout
//!
//! - [`config`]: the config file's types with their defaults, layered
//!   loading (defaults, file, `GATEWAY__…` variables) and validation that
//!   reports every problem at once.
//! - [`server`]: [`Gateway`] (routes, stream limit, shutdown token),
//!   [`app`] (the axum `Router`) and [`serve`]; the binary, Lambda and the
//!   tests all go through these.
//! - `listen`: the accept loop and each connection's bounds: connections
//!   at once and per client, the request head's time and size, strict
//!   HTTP/1.1, keep-alive idle time.
//! - [`clients`]: who a client is (its address, or a trusted proxy's
//!   header) and how many connections and streams each holds.
//! - [`handler`]: one request, from path match to the opened stream.
//! - [`negotiate`]: `Accept` and `?format=` to a [`Format`].
//! - [`fanin`]: opens a route's backends and merges their events.
//! - [`cursor`]: `Last-Event-ID` for one backend or a merged route.
//! - [`session`]: the response body: events, heartbeats, lifetime, idle
//!   time, shutdown.
//! - [`encode`], [`sse`], [`ndjson`]: events to bytes, and the gateway's own
//!   events.
//! - [`viewer`]: the live viewer page a browser gets on a stream route.
//! - [`error`]: [`ApiError`], the JSON error answered before a stream starts.
//! - [`metrics`]: the Prometheus metrics each gateway keeps, and where
//!   `[server.metrics]` serves them.
//! - [`auth`]: who may read a route: static bearer tokens or JWTs, from
//!   a header, a cookie or a query parameter, with claims that restrict
//!   stream keys.
//! - [`lambda`]: serving Lambda invocations natively, choosing that mode,
//!   and ending streams before an invocation's deadline.
//!
//! A request flows: `handler::dispatch` matches the route, checks method,
//! format, capacity, `Last-Event-ID` and body, opens every backend through
//! `fanin::open`, and answers with a `session::Session` as the body, which
//! polls the merged backends and writes each event as it comes. When the
//! client goes away hyper drops the body, and with it every backend stream.

pub mod auth;
pub mod cli;
pub mod clients;
pub mod config;
pub mod console;
pub mod cursor;
pub mod devtoken;
pub mod encode;
pub mod error;
pub mod fanin;
pub mod handler;
pub mod lambda;
mod listen;
pub mod metrics;
pub mod ndjson;
pub mod negotiate;
pub mod route;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sse;
pub mod viewer;

pub use error::ApiError;
#[doc(hidden)]
pub use listen::stream::{Head, MAX_HEADERS, classify};
pub use listen::{REFUSING, serve_http1_io};
pub use negotiate::Format;
pub use route::Route;
pub use server::{Gateway, app, serve};
