//! The Redis engine: the shared Redis on 127.0.0.1:6379, or a private
//! `redis-server` on a free port (with an append-only file, fsync on every
//! write, when it is to keep its data across restarts).

use std::ffi::OsString;

use redis::AsyncCommands;
use serde_json::{Value, json};

use super::private::Private;
use super::{Engine, free_port, unique, within};

/// The shared Redis.
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Redis, with a key prefix of one test: room `r` is key `<prefix>:r`.
#[derive(Debug)]
pub struct RedisEngine {
    url: String,
    prefix: String,
    private: Option<PrivateRedis>,
}

impl RedisEngine {
    /// The key of `room`.
    pub fn key(&self, room: &str) -> String {
        format!("{}:{room}", self.prefix)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to the engine's Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        connection(&self.url).await
    }

    async fn expire(&self, redis: &mut redis::aio::MultiplexedConnection, room: &str) {
        // Test keys on the shared Redis go away by themselves, passed or
        // failed.
        if self.private.is_none() {
            let _: bool = redis.expire(self.key(room), 600).await.expect("EXPIRE");
        }
    }
}

/// A connection to the Redis at `url`.
pub async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("a Redis URL");
    within(
        "connecting to Redis",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("Redis is running (.ci/run starts it)")
}

impl Engine for RedisEngine {
    async fn shared(name: &str) -> Self {
        Self {
            url: REDIS.into(),
            prefix: format!("test:{}", unique(name)),
            private: None,
        }
    }

    async fn private(name: &str, persistent: bool) -> Self {
        let private = PrivateRedis::start(persistent).await;
        Self {
            url: private.url(),
            prefix: format!("test:{}", unique(name)),
            private: Some(private),
        }
    }

    fn backend(&self) -> Value {
        json!({
            "type": "redis",
            "url": self.url,
            "stream": format!("{}:{{room}}", self.prefix),
            "allow": format!("{}:*", self.prefix),
        })
    }

    fn target(&self) -> Value {
        self.backend()
            .as_object()
            .map(|table| {
                let mut table = table.clone();
                table.insert("max_len".into(), json!(100_000));
                Value::Object(table)
            })
            .expect("a table")
    }

    async fn append(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        let mut redis = self.connection().await;
        let mut ids = Vec::new();
        for payload in payloads {
            let id: String = redis
                .xadd(self.key(room), "*", &[("data", payload.to_string())])
                .await
                .expect("XADD");
            ids.push(id);
        }
        self.expire(&mut redis, room).await;
        ids
    }

    async fn burst(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        let mut redis = self.connection().await;
        let mut burst = redis::pipe();
        burst.atomic();
        for payload in payloads {
            burst.xadd(self.key(room), "*", &[("data", payload.to_string())]);
        }
        let ids: Vec<String> = burst.query_async(&mut redis).await.expect("a burst");
        self.expire(&mut redis, room).await;
        ids
    }

    async fn keep_last(&self, room: &str, keep: usize) {
        let mut redis = self.connection().await;
        let _: i64 = redis
            .xtrim(self.key(room), redis::streams::StreamMaxlen::Equals(keep))
            .await
            .expect("XTRIM");
    }

    async fn restart(&mut self) {
        let private = self.private.as_mut().expect("a private Redis");
        private.restart().await;
    }

    async fn recreate(&self, room: &str) {
        let mut redis = self.connection().await;
        let _: i64 = redis.del(self.key(room)).await.expect("DEL");
    }

    async fn undecodable(&self, room: &str) -> Vec<String> {
        let mut redis = self.connection().await;
        let not_utf8: String = redis
            .xadd(self.key(room), "*", &[("data", &b"\xff\xfe{"[..])])
            .await
            .expect("XADD");
        let no_field: String = redis
            .xadd(self.key(room), "*", &[("other", "1")])
            .await
            .expect("XADD");
        self.expire(&mut redis, room).await;
        vec![not_utf8, no_field]
    }

    fn future_id(&self) -> String {
        "99999999999999-0".into()
    }

    fn origin(&self) -> &'static str {
        "0-0"
    }

    /// Ids are times: a key made again goes on past the old ones.
    fn renumbers(&self) -> bool {
        false
    }

    fn unreachable(&self) -> Value {
        let mut backend = self.backend();
        backend["url"] = json!(format!("redis://127.0.0.1:{}", free_port()));
        backend
    }
}

/// A private Redis on a free port, restartable: with an append-only file
/// (fsync on every write) when persistent, without any persistence else.
#[derive(Debug)]
pub struct PrivateRedis(Private);

impl PrivateRedis {
    async fn start(persistent: bool) -> Self {
        let mut redis = Self(Private::new(persistent));
        redis.spawn().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }

    async fn spawn(&mut self) {
        let mut args: Vec<OsString> = ["--port", &self.0.port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .map(OsString::from)
            .collect();
        let persistence: &[&str] = if self.0.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        args.extend(["--save", ""].iter().chain(persistence).map(OsString::from));
        args.extend([OsString::from("--dir"), self.0.dir().into()]);
        let url = self.url();
        // Ready once it answers: a Redis loading its data accepts
        // connections and answers LOADING until done.
        let ready = || async {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut connection).await;
            pong.is_ok()
        };
        self.0.start("redis-server", &args, ready).await;
    }

    async fn restart(&mut self) {
        self.0.kill().await;
        self.spawn().await;
    }
}
