//! Starting the `gateway` binary for a black-box test: on a port of its
//! choosing, told by its JSON log.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Starts `command` (the binary, with `GATEWAY__SERVER__LOG_FORMAT=json` or
/// its config's `log_format = "json"`, and port 0) and returns the process,
/// killed when dropped, with the address its "Listening" line names. Its
/// stderr goes on being read, so that later logs never meet a closed pipe.
/// Not bounded in time: the caller bounds it.
pub async fn listening(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(address) = log["fields"]["address"].as_str() {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, address.to_string());
        }
    }
    panic!("the gateway exited before listening");
}
