//! The RabbitMQ engine: streams `test.<name>.<room>` of one test on the
//! shared RabbitMQ (stream port 5552), or on a private node on free ports
//! (its data kept across restarts, or a fresh data directory when not).
//!
//! Streams are made with one chunk per segment, so that `keep_last` can
//! have RabbitMQ's own retention remove exactly the oldest entries: a
//! policy's `max-length-bytes` of the newest segments' size, which RabbitMQ
//! applies when the policy changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitmq_stream_client::types::{Message, MessageResult, OffsetSpecification, ResponseKind};
use rabbitmq_stream_client::{Client, ClientOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::private::Private;
use super::{BOUND, Engine, RESTART_BOUND, free_port, unique, within};
use crate::within_for;

/// The shared RabbitMQ's stream port.
pub const STREAM_PORT: u16 = 5552;
/// Segments of one chunk each: RabbitMQ rolls a segment that has reached
/// this size before it writes a chunk. (More than an empty segment's 8
/// bytes of header: with less, the writer rolls empty segments forever.)
const SEGMENT_BYTES: u64 = 64;

/// Streams of this test only, `<prefix><room>`. Deleted on drop.
#[derive(Debug)]
pub struct RabbitEngine {
    port: u16,
    /// The streams' prefix.
    pub prefix: String,
    private: Option<PrivateRabbit>,
    /// The engine's own connection, made on first use and after a restart;
    /// one publish at a time.
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// What a connection of the engine's hears: chunks by subscription,
/// confirmed publishing ids.
#[derive(Default)]
struct Heard {
    chunks: HashMap<u8, mpsc::UnboundedSender<(u64, Vec<Message>)>>,
    /// Each publishing id confirmed (`Ok`) or refused (`Err`).
    confirmed: Option<mpsc::UnboundedSender<Result<u64, u64>>>,
    closed: bool,
}

/// A raw connection to a stream port.
pub struct Connection {
    client: Client,
    heard: Arc<Mutex<Heard>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the stream port `port` on loopback.
    pub async fn open(port: u16) -> Self {
        Self::try_open(port)
            .await
            .expect("RabbitMQ with the stream plugin is running (.ci/run starts it)")
    }

    async fn try_open(port: u16) -> Option<Self> {
        let options = ClientOptions::builder()
            .host("127.0.0.1")
            .port(port)
            .build();
        let client = tokio::time::timeout(BOUND, Client::connect(options))
            .await
            .ok()?
            .ok()?;
        let heard = Arc::new(Mutex::new(Heard::default()));
        let routes = Arc::clone(&heard);
        client
            .set_handler(move |item: MessageResult| {
                let heard = Arc::clone(&routes);
                async move {
                    if !matches!(item, Some(Ok(_))) {
                        heard.lock().expect("lock").closed = true;
                    }
                    if let Some(Ok(response)) = item {
                        let heard = heard.lock().expect("lock");
                        match response.kind() {
                            ResponseKind::Deliver(d) => {
                                if let Some(s) = heard.chunks.get(&d.subscription_id) {
                                    let _ = s.send((d.chunk_first_offset, d.messages));
                                }
                            }
                            ResponseKind::PublishConfirm(c) => {
                                if let Some(s) = &heard.confirmed {
                                    for id in c.publishing_ids {
                                        let _ = s.send(Ok(id));
                                    }
                                }
                            }
                            ResponseKind::PublishError(e) => {
                                if let Some(s) = &heard.confirmed {
                                    for failed in e.publishing_errors {
                                        let _ = s.send(Err(failed.publishing_id));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                }
            })
            .await;
        Some(Self { client, heard })
    }

    /// Declares `stream` (one chunk per segment); one that exists is fine.
    pub async fn create(&self, stream: &str) {
        let arguments = [(
            "stream-max-segment-size-bytes".to_string(),
            SEGMENT_BYTES.to_string(),
        )]
        .into();
        within(
            "declaring a stream",
            self.client.create_stream(stream, arguments),
        )
        .await
        .expect("declared");
    }

    /// Deletes `stream`.
    pub async fn delete(&self, stream: &str) {
        within("deleting a stream", self.client.delete_stream(stream))
            .await
            .expect("deleted");
    }

    /// Publishes `messages` to `stream` (declared first), in one frame when
    /// `together`, else one by one, each confirmed before the next; their
    /// offsets.
    pub async fn publish(&self, stream: &str, messages: Vec<Message>, together: bool) -> Vec<u64> {
        self.create(stream).await;
        let count = messages.len();
        // Subscribed at the end first: what follows is ours.
        let (chunks_in, mut chunks) = mpsc::unbounded_channel();
        let (confirms_in, mut confirms) = mpsc::unbounded_channel();
        {
            let mut heard = self.heard.lock().expect("lock");
            heard.chunks.insert(1, chunks_in);
            heard.confirmed = Some(confirms_in);
        }
        // Until the stream answers (its writer comes back a moment after a
        // restart): subscribed, and a publisher declared.
        within_for(RESTART_BOUND, "the stream answers", async {
            loop {
                let subscribed = self.client.subscribe(
                    1,
                    stream,
                    OffsetSpecification::Next,
                    u16::MAX,
                    HashMap::new(),
                );
                let subscribed = within("subscribing", subscribed).await.expect("an answer");
                if subscribed.is_ok() {
                    let declared = self.client.declare_publisher(1, None, stream);
                    let declared = within("a publisher", declared).await.expect("an answer");
                    if declared.is_ok() {
                        break;
                    }
                    let _ = self.client.unsubscribe(1).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if together {
            within("a publish", self.client.publish(1, messages))
                .await
                .expect("published");
            for _ in 0..count {
                let confirm = within("a confirm", confirms.recv()).await;
                confirm.expect("an answer").expect("confirmed");
            }
        } else {
            for message in messages {
                // Sent again while RabbitMQ refuses it (a stream whose
                // writer is not back yet after a restart), as a producer
                // would.
                within_for(RESTART_BOUND, "a confirm", async {
                    loop {
                        let publish = self.client.publish(1, message.clone());
                        within("a publish", publish).await.expect("published");
                        match within("a confirm", confirms.recv()).await {
                            Some(Ok(_)) => break,
                            // A publisher declared while the stream's writer
                            // was not back is declared again.
                            _ => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                let _ = self.client.delete_publisher(1).await;
                                let _ = self.client.declare_publisher(1, None, stream).await;
                            }
                        }
                    }
                })
                .await;
            }
        }
        let mut offsets = Vec::new();
        while offsets.len() < count {
            let (first, messages) = within("our messages", chunks.recv())
                .await
                .expect("a chunk");
            offsets.extend((0..messages.len() as u64).map(|i| first + i));
        }
        offsets.truncate(count);
        let _ = within("unsubscribing", self.client.unsubscribe(1)).await;
        let _ = within("a publisher gone", self.client.delete_publisher(1)).await;
        offsets
    }
}

impl RabbitEngine {
    fn named(port: u16, name: &str, private: Option<PrivateRabbit>) -> Self {
        Self {
            port,
            prefix: format!("test.{}.", unique(name)),
            private,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// The stream of `room`.
    pub fn stream(&self, room: &str) -> String {
        format!("{}{room}", self.prefix)
    }

    /// The engine's stream port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The engine's connection to its node, made when there is none (or it
    /// closed); one user at a time.
    pub async fn connection(&self) -> tokio::sync::MappedMutexGuard<'_, Connection> {
        let mut held = self.connection.lock().await;
        if held
            .as_ref()
            .is_none_or(|c| c.heard.lock().expect("lock").closed)
        {
            *held = Some(Connection::open(self.port).await);
        }
        tokio::sync::MutexGuard::map(held, |c| c.as_mut().expect("connected"))
    }

    /// Publishes one message; its offset.
    pub async fn publish_message(&self, room: &str, message: Message) -> u64 {
        let connection = self.connection().await;
        connection
            .publish(&self.stream(room), vec![message], false)
            .await[0]
    }

    async fn publish_all(&self, room: &str, payloads: &[Value], together: bool) -> Vec<String> {
        let messages = payloads
            .iter()
            .map(|p| Message::builder().body(p.to_string()).build())
            .collect();
        let connection = self.connection().await;
        let offsets = connection
            .publish(&self.stream(room), messages, together)
            .await;
        offsets.iter().map(u64::to_string).collect()
    }

    /// `rabbitmqctl` for the engine's node.
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new("rabbitmqctl");
        if let Some(private) = &self.private {
            command.args(["-n", &private.node]);
        }
        let output = command
            .args(args)
            .output()
            .expect("rabbitmqctl is installed");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The directory of `stream`'s segments.
    fn stream_dir(&self, stream: &str) -> PathBuf {
        let out = self.ctl(&["eval", "rabbit_mnesia:dir()."]);
        let dir = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_matches('"')
            .to_string();
        let streams = Path::new(&dir).join("stream");
        // `<vhost>_<name>_<time>`, each character but letters and digits `_`.
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        let wanted = format!("{}_{}_", safe("/"), safe(stream));
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&streams).expect("the streams' directory") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            if name.is_some_and(|n| n.starts_with(&wanted)) {
                found.push(path);
            }
        }
        assert_eq!(found.len(), 1, "{stream} in {streams:?}: {found:?}");
        found.remove(0)
    }
}

impl Drop for RabbitEngine {
    fn drop(&mut self) {
        if self.private.is_some() {
            return;
        }
        // On a thread of its own, so that it runs even while a failed test
        // unwinds out of its runtime.
        let (port, prefix) = (self.port, self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Some(connection) = Connection::try_open(port).await else {
                    return;
                };
                let listed = std::process::Command::new("rabbitmqctl")
                    .args(["list_queues", "-q", "--no-table-headers", "name"])
                    .output();
                let Ok(listed) = listed else { return };
                for name in String::from_utf8_lossy(&listed.stdout).lines() {
                    if name.starts_with(&prefix) {
                        let _ = tokio::time::timeout(BOUND, connection.client.delete_stream(name))
                            .await;
                    }
                }
                let _ = std::process::Command::new("rabbitmqctl")
                    .args(["clear_policy", &prefix])
                    .output();
            });
        })
        .join();
    }
}

impl Engine for RabbitEngine {
    async fn shared(name: &str) -> Self {
        Self::named(STREAM_PORT, name, None)
    }

    async fn private(name: &str, persistent: bool) -> Self {
        let private = PrivateRabbit::start(persistent).await;
        Self::named(private.stream_port, name, Some(private))
    }

    fn backend(&self) -> Value {
        json!({
            "type": "rabbitmq",
            "port": self.port,
            "stream": format!("{}{{room}}", self.prefix),
            "allow": format!("{}*", self.prefix),
            "create": {"max_segment_size_bytes": SEGMENT_BYTES},
        })
    }

    fn target(&self) -> Value {
        self.backend()
    }

    async fn append(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        self.publish_all(room, payloads, false).await
    }

    async fn burst(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        self.publish_all(room, payloads, true).await
    }

    async fn keep_last(&self, room: &str, keep: usize) {
        let stream = self.stream(room);
        let dir = self.stream_dir(&stream);
        let mut segments: Vec<_> = std::fs::read_dir(&dir)
            .expect("the stream's directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "segment"))
            .collect();
        segments.sort();
        // Retention keeps the newest segments whose sizes add up to at most
        // the limit: exactly the newest `keep`, one chunk each.
        let bytes: u64 = segments
            .iter()
            .rev()
            .take(keep)
            .map(|p| std::fs::metadata(p).expect("a segment").len())
            .sum();
        let pattern = format!("^{}$", stream.replace('.', "\\."));
        let definition = json!({"max-length-bytes": bytes}).to_string();
        self.ctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "100",
            &self.prefix,
            &pattern,
            &definition,
        ]);
        // Applied in the background: wait until the oldest are gone.
        let left = || {
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "segment"))
                        .count()
                })
                .unwrap_or(0)
        };
        within("retention at work", async {
            while left() > keep {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn restart(&mut self) {
        *self.connection.get_mut() = None;
        let private = self.private.as_mut().expect("a private RabbitMQ");
        private.restart().await;
    }

    async fn recreate(&self, room: &str) {
        let connection = self.connection().await;
        let stream = self.stream(room);
        connection.delete(&stream).await;
        connection.create(&stream).await;
    }

    async fn undecodable(&self, room: &str) -> Vec<String> {
        let not_utf8 = Message::builder().body(b"\xff\xfe{".to_vec()).build();
        let no_body = Message::builder().build();
        let a_number_as_name = Message::builder()
            .body("{}")
            .application_properties()
            .insert("event", 5i32)
            .message_builder()
            .build();
        let connection = self.connection().await;
        let offsets = connection
            .publish(
                &self.stream(room),
                vec![not_utf8, no_body, a_number_as_name],
                false,
            )
            .await;
        offsets.iter().map(u64::to_string).collect()
    }

    fn future_id(&self) -> String {
        "1000000".into()
    }

    fn origin(&self) -> &'static str {
        "first"
    }

    fn renumbers(&self) -> bool {
        true
    }

    fn unreachable(&self) -> Value {
        let mut backend = self.backend();
        backend["port"] = json!(free_port());
        backend
    }
}

impl Drop for PrivateRabbit {
    /// A failed test shows the end of the node's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = self
            .private
            .dir()
            .join("log")
            .join(format!("{}.log", self.node));
        if let Ok(text) = std::fs::read_to_string(&log) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("the end of {}:\n{tail}", log.display());
        }
    }
}

/// The server's start script (Debian's place for it).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A private RabbitMQ node with the stream plugin on free ports.
#[derive(Debug)]
pub struct PrivateRabbit {
    private: Private,
    /// Its stream port.
    pub stream_port: u16,
    /// Its node name, for `rabbitmqctl -n`.
    pub node: String,
    dist_port: u16,
}

impl PrivateRabbit {
    /// Starts one; `persistent`: it keeps its streams across restarts.
    pub async fn start(persistent: bool) -> Self {
        let private = Private::new(persistent);
        let mut rabbit = Self {
            node: format!("gwtest{}@localhost", private.port),
            private,
            stream_port: free_port(),
            dist_port: free_port(),
        };
        rabbit.spawn().await;
        rabbit
    }

    async fn spawn(&mut self) {
        let dir = self.private.dir().to_path_buf();
        let config = dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nstream.listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n",
                self.private.port, self.stream_port
            ),
        )
        .expect("a config file");
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[rabbitmq_stream].\n").expect("a plugins file");
        let env: Vec<(&str, OsString)> = vec![
            // Its own Erlang cookie.
            ("HOME", dir.clone().into()),
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("RABBITMQ_NODE_PORT", self.private.port.to_string().into()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string().into()),
            ("RABBITMQ_CONFIG_FILE", config.into()),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", plugins.into()),
            ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").into()),
            ("RABBITMQ_LOG_BASE", dir.join("log").into()),
            ("RABBITMQ_PID_FILE", dir.join("pid").into()),
            ("RABBITMQ_CONF_ENV_FILE", dir.join("none.conf").into()),
            // `exec erl` (no shell in between to outlive a kill), no input.
            ("RABBITMQ_ALLOW_INPUT", "1".into()),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-noinput".into()),
            (
                "ERL_FLAGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ];
        let port = self.stream_port;
        let ready = || async move { Connection::try_open(port).await.is_some() };
        // The script itself, as the test's user: Debian's
        // /usr/sbin/rabbitmq-server runs it under `su rabbitmq`, whose child
        // would outlive a kill of `su`.
        self.private.start_with(SERVER, &[], &env, ready).await;
    }

    /// Stops the node and starts it again on the same ports. With SIGTERM,
    /// not SIGKILL: RabbitMQ 3.10 did not bring back a stream of a node
    /// that was killed (StreamDoesNotExist for the minute measured after a
    /// SIGKILL restart; back at once after SIGTERM). Its clients' connections
    /// end either way.
    pub async fn restart(&mut self) {
        self.private.terminate().await;
        within_for(RESTART_BOUND, "the old node is gone", async {
            while std::net::TcpStream::connect(("127.0.0.1", self.stream_port)).is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.spawn().await;
    }
}
