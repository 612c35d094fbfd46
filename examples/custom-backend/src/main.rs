//! The gateway with a backend of its own: `countdown`, selected from a
//! config file by `type = "countdown"` as the built-in ones are.
//!
//! ```toml
//! [routes.launch]
//! path = "/launch"
//! [routes.launch.backends.clock]
//! type = "countdown"
//! from = 10            # 10, 9, … 1, then "liftoff"
//! interval = "500ms"
//! ```
//!
//! A crate of its own depends on `gateway` and `backends`, implements
//! [`Backend`], registers a factory for its type name, and runs the
//! gateway's command line: the same program, the same flags, config checks
//! and errors (a bad `countdown` table is reported with file, key and
//! reason like any other), plus the new type.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::problem::Problem;
use backends::registry;
use backends::{Backend, BackendError, Data, Event, EventStream, RequestContext};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

/// `countdown`'s table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountdownConfig {
    /// Where the count starts, 1 to 1000.
    from: u64,
    /// Time between two numbers. Default: `1s`.
    #[serde(default = "one_second", with = "humantime_serde")]
    interval: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl CountdownConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(1..=1000).contains(&self.from) {
            problems.push(Problem::new("from", "must be from 1 to 1000"));
        }
        if self.interval < Duration::from_millis(10) {
            problems.push(Problem::new("interval", "must be at least 10ms"));
        }
        problems
    }
}

/// Counts down from `from`, one number each `interval`, then says
/// `liftoff`. Each number is its event's id: a client that reconnects with
/// `Last-Event-ID: 4` goes on with 3.
#[derive(Debug)]
struct Countdown(CountdownConfig);

#[async_trait]
impl Backend for Countdown {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let start = match ctx.last_event_id.as_deref() {
            None => self.0.from,
            Some("0") => return Err(BackendError::finished()),
            Some(last) => match last.parse::<u64>() {
                Ok(last) if (1..=self.0.from).contains(&last) => last - 1,
                _ => {
                    return Err(BackendError::bad_request(format!(
                        "Last-Event-ID {last:?} is not a number of this countdown"
                    )));
                }
            },
        };
        let interval = self.0.interval;
        let numbers = futures::stream::iter((0..=start).rev()).then(move |n| async move {
            tokio::time::sleep(interval).await;
            let event = if n == 0 {
                Event::new(Data::json(&json!({"liftoff": true}))).with_name("liftoff")
            } else {
                Event::new(Data::json(&json!({"left": n}))).with_name("count")
            };
            Ok(event.with_id(n.to_string()))
        });
        Ok(numbers.boxed())
    }
}

fn main() -> ExitCode {
    let countdown = registry::typed(CountdownConfig::validate, |config: CountdownConfig| {
        Arc::new(Countdown(config)) as Arc<dyn Backend>
    });
    if let Err(reason) = registry::register("countdown", countdown) {
        eprintln!("custom-backend: {reason}");
        return ExitCode::FAILURE;
    }
    gateway::cli::main()
}
