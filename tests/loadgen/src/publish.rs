//! The publisher: POSTs events at a fixed rate over keep-alive connections,
//! each body made from a template with `{seq}` and `{ts_us}` filled in, so
//! that subscribers can check order and measure publish-to-delivery latency.
//! It speaks to the gateway's publish routes and to any peer's (nchan's
//! `/pub`) alike.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use crate::conn::micros_since_epoch;
use crate::stats::Stats;

#[derive(Debug, Clone)]
pub struct Publisher {
    pub addr: std::net::SocketAddr,
    pub host: String,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub template: String,
    /// Events per second over all connections.
    pub rate: f64,
    pub count: u64,
    pub connections: usize,
}

impl Publisher {
    /// Publishes `count` events; connection `k` of `n` sends every `n`-th.
    pub async fn run(&self, stats: &RefCell<Stats>) {
        let lanes = self.connections.max(1);
        let tasks: Vec<_> = (0..lanes)
            .map(|lane| self.lane(lane, lanes, stats))
            .collect();
        futures::future::join_all(tasks).await;
    }

    async fn lane(&self, lane: usize, lanes: usize, stats: &RefCell<Stats>) {
        let mut sender = match self.connect().await {
            Ok(sender) => sender,
            Err(kind) => {
                *stats.borrow_mut().publish_errors.entry(kind).or_default() += 1;
                return;
            }
        };
        let period = Duration::from_secs_f64(lanes as f64 / self.rate.max(0.001));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut seq = lane as u64 + 1;
        while seq <= self.count {
            ticks.tick().await;
            let body = self
                .template
                .replace("{seq}", &seq.to_string())
                .replace("{ts_us}", &micros_since_epoch().to_string());
            let mut request = Request::post(self.path.as_str())
                .header(HOST, self.host.as_str())
                .header(CONTENT_TYPE, "application/json");
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
                return;
            };
            let sent = Instant::now();
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    // Read the answer to the end: the connection is reused.
                    let answer = response.into_body().collect().await;
                    if status.is_success() {
                        Ok(())
                    } else {
                        // Said once per failure, with what the server said.
                        let body = answer.map(|b| b.to_bytes()).unwrap_or_default();
                        let shown = String::from_utf8_lossy(&body[..body.len().min(500)]);
                        eprintln!("publish {seq}: status {}: {shown}", status.as_u16());
                        Err(format!("status {}", status.as_u16()))
                    }
                }
                Err(e) => Err(format!("send: {e}")),
            };
            let failed = {
                let mut s = stats.borrow_mut();
                match outcome {
                    Ok(()) => {
                        s.published += 1;
                        s.publish_rtt.record(sent.elapsed().as_micros() as u64);
                        false
                    }
                    Err(kind) => {
                        *s.publish_errors.entry(kind).or_default() += 1;
                        true
                    }
                }
            };
            if failed {
                match self.connect().await {
                    Ok(fresh) => sender = fresh,
                    Err(_) => return,
                }
            }
            seq += lanes as u64;
        }
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::task::spawn_local(connection);
        Ok(sender)
    }
}
