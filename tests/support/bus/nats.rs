//! The NATS engine: a JetStream stream of one test on the shared
//! nats-server (127.0.0.1:4222), or on a private `nats-server -js` on a free
//! port (file storage when it is to keep its messages across restarts,
//! memory storage and a fresh store when not).

use std::ffi::OsString;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use serde_json::{Value, json};

use super::private::Private;
use super::{BOUND, Engine, RESTART_BOUND, free_port, unique, within};
use crate::within_for;

/// The shared NATS.
pub const NATS: &str = "nats://127.0.0.1:4222";

/// A stream of this test only, on subjects `<prefix>.>`: room `r` is the
/// subject `<prefix>.r`. Deleted on drop.
#[derive(Debug)]
pub struct NatsEngine {
    url: String,
    /// The stream's name.
    pub name: String,
    /// The subjects' prefix.
    pub prefix: String,
    storage: StorageType,
    private: Option<PrivateNats>,
}

/// A JetStream context on `url`.
pub async fn jetstream(url: &str) -> jetstream::Context {
    let client = within("connecting to NATS", async_nats::connect(url))
        .await
        .expect("nats-server with JetStream is running (.ci/run starts it)");
    jetstream::new(client)
}

impl NatsEngine {
    /// A stream on the shared NATS whose config `edit` adjusts.
    pub async fn with(name: &str, edit: impl FnOnce(&mut jetstream::stream::Config)) -> Self {
        let engine = Self::named(NATS.into(), name, StorageType::Memory, None);
        engine.create(edit).await;
        engine
    }

    fn named(url: String, name: &str, storage: StorageType, private: Option<PrivateNats>) -> Self {
        let tag = unique(name);
        Self {
            url,
            name: format!("TEST_{tag}"),
            prefix: format!("test.{tag}"),
            storage,
            private,
        }
    }

    async fn create(&self, edit: impl FnOnce(&mut jetstream::stream::Config)) {
        let mut config = jetstream::stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: self.storage,
            ..Default::default()
        };
        edit(&mut config);
        within(
            "creating the stream",
            self.jetstream().await.create_stream(config),
        )
        .await
        .expect("stream created");
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A JetStream context on the engine's server.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream(&self.url).await
    }

    /// The subject of `room`.
    pub fn subject(&self, room: &str) -> String {
        format!("{}.{room}", self.prefix)
    }

    /// How many consumers the stream has now.
    pub async fn consumers(&self) -> usize {
        let js = self.jetstream().await;
        let stream = within("stream info", js.get_stream(&self.name))
            .await
            .expect("stream info");
        stream.cached_info().state.consumer_count
    }

    /// Publishes one message, headers and all; its sequence.
    pub async fn publish_message(
        &self,
        room: &str,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> u64 {
        let js = self.jetstream().await;
        within("a publish", async {
            js.publish_with_headers(self.subject(room), headers, payload)
                .await
                .expect("publish")
                .await
                .expect("stored")
        })
        .await
        .sequence
    }
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        if self.private.is_some() {
            return;
        }
        // On a thread of its own, so that it runs even while a failed test
        // unwinds out of its runtime.
        let (url, name) = (self.url.clone(), self.name.clone());
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let connected =
                    tokio::time::timeout(BOUND, async_nats::connect(url.as_str())).await;
                if let Ok(Ok(client)) = connected {
                    let js = jetstream::new(client);
                    let _ = tokio::time::timeout(BOUND, js.delete_stream(&name)).await;
                }
            });
        })
        .join();
        if deleted.is_err() {
            eprintln!("could not delete stream {}", self.name);
        }
    }
}

impl Engine for NatsEngine {
    async fn shared(name: &str) -> Self {
        Self::with(name, |_| {}).await
    }

    async fn private(name: &str, persistent: bool) -> Self {
        let private = PrivateNats::start(persistent).await;
        let storage = if persistent {
            StorageType::File
        } else {
            StorageType::Memory
        };
        let engine = Self::named(private.url(), name, storage, Some(private));
        engine.create(|_| {}).await;
        engine
    }

    fn backend(&self) -> Value {
        json!({
            "type": "nats",
            "url": self.url,
            "stream": self.name,
            "subject": format!("{}.{{room}}", self.prefix),
            "allow": format!("{}.*", self.prefix),
        })
    }

    fn target(&self) -> Value {
        self.backend()
    }

    async fn append(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        let js = self.jetstream().await;
        let mut seqs = Vec::new();
        for payload in payloads {
            let payload = Bytes::from(payload.to_string());
            let ack = within("a publish", async {
                js.publish(self.subject(room), payload)
                    .await
                    .expect("publish")
                    .await
                    .expect("stored")
            })
            .await;
            seqs.push(ack.sequence.to_string());
        }
        seqs
    }

    async fn burst(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        // Every publish sent before any ack is awaited.
        let js = self.jetstream().await;
        let mut acks = Vec::new();
        for payload in payloads {
            let payload = Bytes::from(payload.to_string());
            let sent = js.publish(self.subject(room), payload);
            acks.push(within("a publish", sent).await.expect("publish"));
        }
        let mut seqs = Vec::new();
        for ack in acks {
            let ack = within("an ack", ack.into_future()).await.expect("stored");
            seqs.push(ack.sequence.to_string());
        }
        seqs
    }

    async fn keep_last(&self, room: &str, keep: usize) {
        let js = self.jetstream().await;
        let stream = within("the stream", js.get_stream(&self.name))
            .await
            .expect("the stream");
        within(
            "a purge",
            stream
                .purge()
                .filter(self.subject(room))
                .keep(keep as u64)
                .into_future(),
        )
        .await
        .expect("purged");
    }

    async fn restart(&mut self) {
        let private = self.private.as_mut().expect("a private NATS");
        private.restart().await;
        let persistent = private.0.persistent;
        let js = self.jetstream().await;
        if persistent {
            within_for(RESTART_BOUND, "the stream is back", async {
                while js.get_stream(&self.name).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        } else {
            // What an operator does when a memory stream is gone.
            self.create(|_| {}).await;
        }
    }

    async fn recreate(&self, _room: &str) {
        let js = self.jetstream().await;
        within("deleting the stream", js.delete_stream(&self.name))
            .await
            .expect("deleted");
        self.create(|_| {}).await;
    }

    async fn undecodable(&self, room: &str) -> Vec<String> {
        let seq = self
            .publish_message(
                room,
                async_nats::HeaderMap::new(),
                Bytes::from_static(b"\xff\xfe{"),
            )
            .await;
        vec![seq.to_string()]
    }

    fn future_id(&self) -> String {
        "1000000".into()
    }

    fn origin(&self) -> &'static str {
        "0"
    }

    fn renumbers(&self) -> bool {
        true
    }

    fn unreachable(&self) -> Value {
        let mut backend = self.backend();
        backend["url"] = json!(format!("nats://127.0.0.1:{}", free_port()));
        backend
    }
}

/// A private nats-server with JetStream on a free port.
#[derive(Debug)]
pub struct PrivateNats(Private);

impl PrivateNats {
    async fn start(persistent: bool) -> Self {
        let mut nats = Self(Private::new(persistent));
        nats.spawn().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }

    async fn spawn(&mut self) {
        let mut args: Vec<OsString> = [
            "-a",
            "127.0.0.1",
            "-p",
            &self.0.port.to_string(),
            "-js",
            "-sd",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(self.0.dir().into());
        let url = self.url();
        let ready = || async {
            let Ok(Ok(client)) =
                tokio::time::timeout(BOUND, async_nats::connect(url.as_str())).await
            else {
                return false;
            };
            // JetStream answers too: a stream that is not there is its
            // answer.
            let js = jetstream::new(client);
            js.get_stream("PROBE")
                .await
                .is_err_and(|e| matches!(e.kind(), GetStreamErrorKind::JetStream(_)))
        };
        self.0.start("nats-server", &args, ready).await;
    }

    async fn restart(&mut self) {
        self.0.kill().await;
        self.spawn().await;
    }
}
