//! The examples of `config/examples/` and what they need to run: the mock
//! LLM API, the example's gateway.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use gateway::config::{Source, load};

use crate::TestServer;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A process killed when dropped.
#[derive(Debug)]
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `config/examples/llm/mock_llm.py` on a free port: the process and the
/// port.
pub fn mock_llm() -> (Killed, u16) {
    let mut child = Command::new("python3")
        .arg(repo().join("config/examples/llm/mock_llm.py"))
        .args(["--port", "0", "--delay", "0.005"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the mock");
    let stdout = child.stdout.take().expect("its stdout");
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the mock says where it listens");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

/// `config/examples/llm.toml` served, its upstream the mock on `port`.
pub async fn llm_gateway(port: u16) -> TestServer {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    example(
        "llm.toml",
        &[("GATEWAY__ROUTES__CHAT__BACKENDS__LLM__URL", url)],
    )
    .await
}

/// `config/examples/NAME` served, `GATEWAY__…` overrides from `env`.
pub async fn example(name: &str, env: &[(&str, String)]) -> TestServer {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let config = load(
        Source::File(&repo().join("config/examples").join(name)),
        Some(env),
    )
    .unwrap_or_else(|e| panic!("{name} loads: {e}"));
    TestServer::from_config(&config).await
}
