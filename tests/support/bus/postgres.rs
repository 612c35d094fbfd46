//! The PostgreSQL engine: a table of the shared server on 127.0.0.1:5432
//! (database `test`), or a private cluster on a free port (`initdb` into
//! the test's directory, run as the `postgres` user when the tests run as
//! root, since PostgreSQL refuses root). A restart is an immediate shutdown
//! (`SIGQUIT`: no checkpoint, clients cut off) and a start on the same port;
//! without persistence the cluster is made anew, and the table with it.

use std::ffi::OsString;

use backends::postgres::{self, Ordering};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use super::private::Private;
use super::{Engine, free_port, unique, within};

/// The shared server's test database.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The table every test of the shared server writes to, each under keys
/// of its own: ids interleave across tests, as across a real table's keys.
pub const TABLE: &str = "conformance";
/// Where the server's programs are (Debian: one directory per version).
const BIN: &str = "/usr/lib/postgresql";

/// PostgreSQL, with a key prefix of one test: room `r` is key `<prefix>:r`.
#[derive(Debug)]
pub struct PostgresEngine {
    url: String,
    table: String,
    prefix: String,
    private: Option<PrivatePostgres>,
}

impl PostgresEngine {
    /// The key of `room`.
    pub fn key(&self, room: &str) -> String {
        format!("{}:{room}", self.prefix)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// A connection to the engine's server, the table made if missing.
    pub async fn client(&self) -> Client {
        let client = connect(&self.url).await;
        let sql = postgres::create(&self.table, &self.table, Ordering::Commit);
        within("making the table", client.batch_execute(&sql))
            .await
            .expect("the table is made");
        client
    }

    async fn insert(
        &self,
        client: &Client,
        room: &str,
        data: Option<&str>,
        name: Option<&str>,
    ) -> String {
        let sql = format!(
            "INSERT INTO \"{}\" (key, event, data) VALUES ($1, $2, $3) RETURNING id",
            self.table
        );
        let row = within(
            "an INSERT",
            client.query_one(&sql, &[&self.key(room), &name, &data]),
        )
        .await
        .expect("INSERT");
        row.get::<_, i64>(0).to_string()
    }
}

/// A connection to the server at `url` (its driver spawned).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = within(
        "connecting to PostgreSQL",
        tokio_postgres::connect(url, NoTls),
    )
    .await
    .expect("PostgreSQL is running (.ci/run starts it)");
    tokio::spawn(connection);
    client
}

impl Engine for PostgresEngine {
    async fn shared(name: &str) -> Self {
        Self {
            url: POSTGRES.into(),
            table: TABLE.into(),
            prefix: format!("test:{}", unique(name)),
            private: None,
        }
    }

    async fn private(name: &str, persistent: bool) -> Self {
        let private = PrivatePostgres::start(persistent).await;
        Self {
            url: private.url(),
            table: TABLE.into(),
            prefix: format!("test:{}", unique(name)),
            private: Some(private),
        }
    }

    fn backend(&self) -> Value {
        json!({
            "type": "postgres",
            "url": self.url,
            "table": self.table,
            "key": format!("{}:{{room}}", self.prefix),
            "allow": format!("{}:*", self.prefix),
        })
    }

    fn target(&self) -> Value {
        let mut target = self.backend();
        target["max_len"] = json!(100_000);
        target
    }

    async fn append(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        let client = self.client().await;
        let mut ids = Vec::new();
        for payload in payloads {
            ids.push(
                self.insert(&client, room, Some(&payload.to_string()), None)
                    .await,
            );
        }
        ids
    }

    async fn burst(&self, room: &str, payloads: &[Value]) -> Vec<String> {
        let client = self.client().await;
        let data: Vec<String> = payloads.iter().map(Value::to_string).collect();
        let sql = format!(
            "INSERT INTO \"{}\" (key, data) SELECT $1, d FROM unnest($2::text[]) WITH ORDINALITY AS u(d, n)
             ORDER BY n RETURNING id",
            self.table
        );
        let rows = within("a burst", client.query(&sql, &[&self.key(room), &data]))
            .await
            .expect("a burst");
        let mut ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        ids.sort_unstable();
        ids.iter().map(i64::to_string).collect()
    }

    async fn keep_last(&self, room: &str, keep: usize) {
        let client = self.client().await;
        let sql = format!(
            "DELETE FROM \"{0}\" WHERE key = $1 AND id <= (SELECT id FROM \"{0}\"
             WHERE key = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            self.table
        );
        within(
            "a DELETE",
            client.execute(&sql, &[&self.key(room), &(keep as i64)]),
        )
        .await
        .expect("DELETE");
    }

    async fn restart(&mut self) {
        let private = self.private.as_mut().expect("a private PostgreSQL");
        private.restart().await;
        // As an operator would, when the cluster is new.
        drop(self.client().await);
    }

    /// A key's stream made again: its rows deleted (which the table
    /// records), new ones after.
    async fn recreate(&self, room: &str) {
        let client = self.client().await;
        let sql = format!("DELETE FROM \"{}\" WHERE key = $1", self.table);
        within("a DELETE", client.execute(&sql, &[&self.key(room)]))
            .await
            .expect("DELETE");
    }

    async fn undecodable(&self, room: &str) -> Vec<String> {
        let client = self.client().await;
        let no_data = self.insert(&client, room, None, Some("note")).await;
        let bad_name = self.insert(&client, room, Some("1"), Some("a\nb")).await;
        vec![no_data, bad_name]
    }

    fn future_id(&self) -> String {
        "999999999999999".into()
    }

    fn origin(&self) -> &'static str {
        "0"
    }

    /// The sequence goes on past deleted rows.
    fn renumbers(&self) -> bool {
        false
    }

    fn unreachable(&self) -> Value {
        let mut backend = self.backend();
        backend["url"] = json!(format!(
            "postgres://postgres@127.0.0.1:{}/test",
            free_port()
        ));
        backend
    }
}

/// A private cluster on a free port: `initdb` when its directory is new,
/// `postgres` in the foreground (so that its process is the child), run as
/// the `postgres` user when the tests run as root.
#[derive(Debug)]
pub struct PrivatePostgres(Private);

impl PrivatePostgres {
    /// A cluster, started.
    pub async fn start(persistent: bool) -> Self {
        let mut cluster = Self(Private::new(persistent));
        cluster.spawn().await;
        cluster
    }

    /// Its URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.0.port)
    }

    /// Stops it at once (clients cut off, no checkpoint) and starts it
    /// again on the same port.
    pub async fn restart(&mut self) {
        self.0.stop(Some("QUIT")).await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let bin = bin_dir();
        let data = self.0.dir().join("data");
        let as_root = is_root();
        if !data.exists() {
            if as_root {
                let chown = std::process::Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(self.0.dir())
                    .status();
                assert!(chown.is_ok_and(|s| s.success()), "chown to postgres");
            }
            let mut initdb = as_user(as_root, bin.join("initdb"));
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let made = within("initdb", initdb.status()).await;
            assert!(made.is_ok_and(|s| s.success()), "initdb into {data:?}");
        }
        let postgres = bin.join("postgres");
        let mut args: Vec<OsString> = Vec::new();
        let program = if as_root {
            args.extend(setpriv().into_iter().map(OsString::from));
            args.push(postgres.into());
            "setpriv".to_string()
        } else {
            postgres.to_string_lossy().into_owned()
        };
        args.extend([OsString::from("-D"), data.into()]);
        args.extend(["-p", &self.0.port.to_string()].iter().map(OsString::from));
        args.extend([OsString::from("-k"), self.0.dir().into()]);
        args.extend(
            [
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ]
            .iter()
            .map(OsString::from),
        );
        let url = self.url();
        let ready = || async {
            match tokio_postgres::connect(&url, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client.simple_query("SELECT 1").await.is_ok()
                }
                Err(_) => false,
            }
        };
        self.0.start(&program, &args, ready).await;
    }
}

/// The newest installed server's `bin` directory.
fn bin_dir() -> std::path::PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir(BIN)
        .unwrap_or_else(|e| panic!("{BIN}: PostgreSQL is installed (.ci/run installs it): {e}"))
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions
        .last()
        .expect("a PostgreSQL version in /usr/lib/postgresql");
    std::path::Path::new(BIN)
        .join(version.to_string())
        .join("bin")
}

/// `setpriv`'s arguments that run a program as `postgres`.
fn setpriv() -> [&'static str; 4] {
    [
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ]
}

fn as_user(as_root: bool, program: std::path::PathBuf) -> tokio::process::Command {
    if as_root {
        let mut command = tokio::process::Command::new("setpriv");
        command.args(setpriv()).arg(program);
        command
    } else {
        tokio::process::Command::new(program)
    }
}

/// Whether the tests run as root (`id -u` is 0).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}
