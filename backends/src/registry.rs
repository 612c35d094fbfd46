//! Backends of your own, selected from config files by `type` like the
//! built-in ones, without forking.
//!
//! An embedder implements [`Backend`] in its own crate, registers a
//! factory under a type name before the config is loaded, and runs the
//! gateway (`gateway::cli::main()`):
//!
//! ```ignore
//! backends::registry::register("countdown", backends::registry::typed(
//!     |config: &CountdownConfig| config.validate(),   // Vec<Problem>
//!     |config: CountdownConfig| Arc::new(Countdown::new(config)) as Arc<dyn Backend>,
//! ))?;
//! std::process::ExitCode::from(gateway::cli::main())
//! ```
//!
//! A route then says `type = "countdown"`, and its table (every key but
//! `type`) is the backend's config. The built-in types keep their typed
//! configs and errors; a registered type's table is checked by its factory,
//! and its problems are reported with the others, each naming file, key
//! and reason. The built-in names cannot be taken.
//!
//! The registry is process-wide: a factory is registered once, at start.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Backend;
use crate::problem::Problem;

/// The built-in types, which no registration may take.
pub const BUILT_IN: [&str; 8] = [
    "demo", "ticker", "redis", "nats", "postgres", "rabbitmq", "command", "http",
];

/// Makes a registered type's backends from their config tables.
pub trait BackendFactory: Send + Sync {
    /// Every problem with `table` (the route's backend table without
    /// `type`), each naming its key relative to the table.
    fn validate(&self, table: &Value) -> Vec<Problem>;
    /// The backend for a `table` that [`validate`](Self::validate) passed.
    fn build(&self, table: &Value) -> Arc<dyn Backend>;
}

type Factories = BTreeMap<String, Arc<dyn BackendFactory>>;

static FACTORIES: RwLock<Factories> = RwLock::new(BTreeMap::new());

fn read() -> std::sync::RwLockReadGuard<'static, Factories> {
    FACTORIES.read().unwrap_or_else(|e| e.into_inner())
}

/// Registers `factory` as the backend type `name`: a name of lowercase
/// letters, digits and `_`, not a built-in one, not taken yet.
pub fn register(name: &str, factory: impl BackendFactory + 'static) -> Result<(), String> {
    let fine = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !fine {
        return Err(format!(
            "backend type {name:?}: lowercase letters, digits and `_` only"
        ));
    }
    if BUILT_IN.contains(&name) {
        return Err(format!("backend type {name:?} is built in"));
    }
    let mut factories = FACTORIES.write().unwrap_or_else(|e| e.into_inner());
    if factories.contains_key(name) {
        return Err(format!("backend type {name:?} is registered already"));
    }
    factories.insert(name.to_string(), Arc::new(factory));
    Ok(())
}

/// The factory registered as `name`.
pub fn factory(name: &str) -> Option<Arc<dyn BackendFactory>> {
    read().get(name).cloned()
}

/// The registered type names, in order.
pub fn names() -> Vec<String> {
    read().keys().cloned().collect()
}

/// A registered type's backend as a route has it: the type name and the
/// table (without `type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomConfig {
    /// The registered type name.
    pub kind: String,
    /// The backend's table, `type` removed.
    pub table: Value,
}

impl CustomConfig {
    /// Every problem: the type's factory's, or that no such type is
    /// registered (listing the types there are).
    pub fn validate(&self) -> Vec<Problem> {
        match factory(&self.kind) {
            Some(factory) => factory.validate(&self.table),
            None => vec![Problem::new("type", unknown_type(&self.kind))],
        }
    }

    /// The backend (see [`validate`](Self::validate)); a type that is not
    /// registered gives a backend whose every stream fails, saying so.
    pub fn build(&self) -> Arc<dyn Backend> {
        match factory(&self.kind) {
            Some(factory) => factory.build(&self.table),
            None => Arc::new(Unregistered(unknown_type(&self.kind))),
        }
    }
}

/// Why `kind` names no backend type.
pub fn unknown_type(kind: &str) -> String {
    let mut known: Vec<String> = BUILT_IN.iter().map(|s| s.to_string()).collect();
    known.extend(names());
    format!(
        "unknown backend type {kind:?}; expected one of {}",
        known.join(", ")
    )
}

/// The backend of a type that is not registered (validation says so first).
#[derive(Debug)]
struct Unregistered(String);

#[async_trait::async_trait]
impl Backend for Unregistered {
    async fn open(
        &self,
        _ctx: &crate::RequestContext,
    ) -> Result<crate::EventStream, crate::BackendError> {
        Err(crate::BackendError::new(
            crate::ErrorKind::Internal,
            self.0.clone(),
        ))
    }
}

/// A factory from a typed config: the table is deserialized into `C` (its
/// errors are problems naming the key, e.g. an unknown field), checked by
/// `validate`, and built by `build`.
pub fn typed<C, V, B>(validate: V, build: B) -> impl BackendFactory
where
    C: DeserializeOwned + Send + Sync,
    V: Fn(&C) -> Vec<Problem> + Send + Sync,
    B: Fn(C) -> Arc<dyn Backend> + Send + Sync,
{
    Typed {
        validate,
        build,
        _config: std::marker::PhantomData::<fn() -> C>,
    }
}

struct Typed<C, V, B> {
    validate: V,
    build: B,
    _config: std::marker::PhantomData<fn() -> C>,
}

impl<C, V, B> Typed<C, V, B>
where
    C: DeserializeOwned,
{
    fn config(table: &Value) -> Result<C, Problem> {
        serde_path_to_error::deserialize(table).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            Problem::new(key, e.into_inner().to_string())
        })
    }
}

impl<C, V, B> BackendFactory for Typed<C, V, B>
where
    C: DeserializeOwned + Send + Sync,
    V: Fn(&C) -> Vec<Problem> + Send + Sync,
    B: Fn(C) -> Arc<dyn Backend> + Send + Sync,
{
    fn validate(&self, table: &Value) -> Vec<Problem> {
        match Self::config(table) {
            Ok(config) => (self.validate)(&config),
            Err(problem) => vec![problem],
        }
    }

    fn build(&self, table: &Value) -> Arc<dyn Backend> {
        match Self::config(table) {
            Ok(config) => (self.build)(config),
            Err(problem) => Arc::new(Unregistered(format!(
                "the backend's config was not checked: {}: {}",
                problem.key, problem.reason
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::demo::{Demo, DemoConfig};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Echo {
        words: Vec<String>,
    }

    fn echo() -> impl BackendFactory {
        typed(
            |c: &Echo| {
                if c.words.is_empty() {
                    vec![Problem::new("words", "at least one")]
                } else {
                    Vec::new()
                }
            },
            |_c: Echo| Arc::new(Demo::new(DemoConfig::default())) as Arc<dyn Backend>,
        )
    }

    #[test]
    fn names_are_checked_and_taken_once() {
        assert!(register("demo", echo()).is_err());
        assert!(register("Echo", echo()).is_err());
        assert!(register("", echo()).is_err());
        register("echo_registry_test", echo()).expect("a new name");
        assert!(register("echo_registry_test", echo()).is_err());
        assert!(names().contains(&"echo_registry_test".to_string()));
        assert!(unknown_type("kafka").contains("echo_registry_test"));
    }

    #[test]
    fn typed_tables_report_keys() {
        let factory = echo();
        let problems = factory.validate(&json!({"words": [], }));
        assert_eq!(problems[0].key, "words");
        let problems = factory.validate(&json!({"words": ["a"], "wrods": 1}));
        assert!(
            problems[0].reason.contains("unknown field `wrods`"),
            "{problems:?}"
        );
        let problems = factory.validate(&json!({"words": [1]}));
        assert_eq!(problems[0].key, "words[0]", "{problems:?}");
        assert!(factory.validate(&json!({"words": ["a"]})).is_empty());
        let missing = CustomConfig {
            kind: "kafka".into(),
            table: json!({}),
        };
        assert_eq!(missing.validate()[0].key, "type");
    }
}
