//! Events to bytes, in the negotiated format, and the gateway's own events.
//!
//! An event is written as its *body*: the event's data alone, or, where the
//! route uses an envelope, `{"id":…,"event":…,"source":…,"data":…}`. An NDJSON
//! line is the body; an SSE event is `id:` and `event:` fields around the body
//! as `data:`. So `JSON.parse(e.data)` in a browser and one NDJSON line give
//! the same object. With the default config the body is the data alone, and
//! the NDJSON lines are exactly the reference stream's.
//!
//! In an envelope, `id` is what to send back as `Last-Event-ID` to resume
//! after this event (on a merged route, a cursor over every backend), and
//! `source` is the backend's name.
//!
//! The gateway's own events carry an `event` field like the reference's:
//!
//! - `gateway.error`: a backend failed after the stream started:
//!   `{"event":"gateway.error","source":"b","kind":"upstream","message":"…"}`.
//!   When the error says where the client stands (a bus's `lagged`, a gap,
//!   an entry it cannot decode), it adds `"resume_id"`: the id that resumes
//!   exactly where the stream goes on after it, also the SSE event's `id`.
//! - `gateway.close`: the gateway ends the stream before its backends did
//!   (lifetime, idle time, shutdown, an aborting error, the client's token
//!   expiring: `credential_expired`) or a stream would
//!   otherwise have an empty body: `{"event":"gateway.close","reason":"lifetime","last_event_id":"5"}`.
//!   In SSE it carries the last id and a `retry:` hint, so `EventSource`
//!   resumes where the stream stopped.
//! - heartbeats: an SSE comment, or the route's `ndjson_heartbeat` line.

use std::sync::Arc;
use std::time::Duration;

use backends::{BackendError, Data, Event};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;

use crate::negotiate::Format;
use crate::{ndjson, sse};

/// Why the gateway ended a stream itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The route's `max_lifetime` was reached.
    Lifetime,
    /// No event for the route's `max_idle`.
    Idle,
    /// The gateway is shutting down.
    Shutdown,
    /// A backend failed and the route's policy is `abort`.
    Error,
    /// Every backend ended without a single event.
    Empty,
    /// The client's credential (a JWT) expired: it reconnects with a new one.
    CredentialExpired,
    /// The response reached its byte budget (`lambda.max_response_bytes`,
    /// under Lambda's cap on a streamed response).
    ResponseCap,
}

impl CloseReason {
    /// The stable name, as in the `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lifetime => "lifetime",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
            Self::Empty => "empty",
            Self::CredentialExpired => "credential_expired",
            Self::ResponseCap => "response_cap",
        }
    }
}

/// Name of the gateway's error event.
pub const ERROR_EVENT: &str = "gateway.error";
/// Name of the gateway's closing event.
pub const CLOSE_EVENT: &str = "gateway.close";

/// The in-band event for a backend's failure after the stream started;
/// `resume_id` is the route's id for the error's own
/// [`resume_id`](BackendError::resume_id), when it has one.
pub fn error_event(source: &Arc<str>, error: &BackendError, resume_id: Option<&str>) -> Event {
    let mut data = json!({
        "event": ERROR_EVENT,
        "source": &**source,
        "kind": error.kind.as_str(),
        "message": error.message,
    });
    if let Some(id) = resume_id {
        data["resume_id"] = id.into();
    }
    Event::new(Data::json(&data))
        .with_name(ERROR_EVENT)
        .with_source(Arc::clone(source))
}

fn close_event(reason: CloseReason, last_id: Option<&str>) -> Event {
    let data = json!({
        "event": CLOSE_EVENT,
        "reason": reason.as_str(),
        "last_event_id": last_id,
    });
    Event::new(Data::json(&data))
        .with_name(CLOSE_EVENT)
        .with_source(Arc::from("gateway"))
}

/// Writes a route's events in one format.
#[derive(Clone, Debug)]
pub struct Encoder {
    format: Format,
    envelope: bool,
    retry_millis: u128,
    heartbeat: Bytes,
}

impl Encoder {
    /// An encoder for `format`; `ndjson_heartbeat` is the route's heartbeat
    /// line without its newline.
    pub fn new(format: Format, envelope: bool, retry: Duration, ndjson_heartbeat: &str) -> Self {
        let heartbeat = match format {
            Format::Sse => Bytes::from_static(sse::HEARTBEAT),
            Format::Ndjson => Bytes::from(format!("{ndjson_heartbeat}\n")),
        };
        Self {
            format,
            envelope,
            retry_millis: retry.as_millis(),
            heartbeat,
        }
    }

    /// What starts every stream: SSE's reconnection delay; nothing in NDJSON.
    pub fn preamble(&self, buf: &mut BytesMut) {
        if self.format == Format::Sse {
            sse::write_retry(buf, self.retry_millis);
            buf.put_u8(b'\n');
        }
    }

    /// Writes `event`; `id` is what a client resumes from after it.
    pub fn event(&self, buf: &mut BytesMut, event: &Event, id: Option<&str>) {
        match (self.format, self.envelope) {
            (Format::Ndjson, true) => {
                write_envelope(buf, event, id);
                buf.put_u8(b'\n');
            }
            (Format::Ndjson, false) => {
                ndjson::write_data(buf, &event.data);
                buf.put_u8(b'\n');
            }
            (Format::Sse, true) => {
                // The envelope is compact JSON: one line, written in place.
                sse::write_event_line(buf, id, event.name.as_deref(), |buf| {
                    write_envelope(buf, event, id)
                });
            }
            (Format::Sse, false) => {
                sse::write_event(buf, id, event.name.as_deref(), event.data.as_str());
            }
        }
    }

    /// Writes the closing event, carrying the id to resume from and, in SSE,
    /// the reconnection delay in the same block.
    pub fn close(&self, buf: &mut BytesMut, reason: CloseReason, last_id: Option<&str>) {
        if self.format == Format::Sse {
            sse::write_retry(buf, self.retry_millis);
        }
        self.event(buf, &close_event(reason, last_id), last_id);
    }

    /// The heartbeat, ready to send.
    pub fn heartbeat(&self) -> Bytes {
        self.heartbeat.clone()
    }
}

/// `{"id":…,"event":…,"source":…,"data":…}`, leaving out an absent id or name.
fn write_envelope(buf: &mut BytesMut, event: &Event, id: Option<&str>) {
    buf.put_u8(b'{');
    if let Some(id) = id {
        buf.put_slice(b"\"id\":");
        ndjson::write_json_string(buf, id);
        buf.put_u8(b',');
    }
    if let Some(name) = &event.name {
        buf.put_slice(b"\"event\":");
        ndjson::write_json_string(buf, name);
        buf.put_u8(b',');
    }
    buf.put_slice(b"\"source\":");
    ndjson::write_json_string(buf, &event.source);
    buf.put_slice(b",\"data\":");
    ndjson::write_data(buf, &event.data);
    buf.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn encode(format: Format, envelope: bool, event: &Event, id: Option<&str>) -> String {
        let encoder = Encoder::new(format, envelope, Duration::from_secs(3), "{}");
        let mut buf = BytesMut::new();
        encoder.event(&mut buf, event, id);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn sample() -> Event {
        Event::new(Data::json(&json!({"token": "a\nb"})))
            .with_id("3")
            .with_name("data")
            .with_source(Arc::from("demo"))
    }

    #[test]
    fn data_alone() {
        assert_eq!(
            encode(Format::Ndjson, false, &sample(), Some("3")),
            "{\"token\":\"a\\nb\"}\n"
        );
        assert_eq!(
            encode(Format::Sse, false, &sample(), Some("3")),
            "id: 3\nevent: data\ndata: {\"token\":\"a\\nb\"}\n\n"
        );
        let text = Event::new(Data::text("x\ny"));
        assert_eq!(encode(Format::Ndjson, false, &text, None), "\"x\\ny\"\n");
        assert_eq!(
            encode(Format::Sse, false, &text, None),
            "data: x\ndata: y\n\n"
        );
    }

    #[test]
    fn envelope_is_the_same_object_in_both_formats() {
        let line = encode(Format::Ndjson, true, &sample(), Some("a=3"));
        let expected =
            json!({"id": "a=3", "event": "data", "source": "demo", "data": {"token": "a\nb"}});
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), expected);
        let sse = encode(Format::Sse, true, &sample(), Some("a=3"));
        let data = sse.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        assert_eq!(serde_json::from_str::<Value>(data).unwrap(), expected);
        let bare = encode(Format::Ndjson, true, &Event::new(Data::text("t")), None);
        assert_eq!(bare, "{\"source\":\"\",\"data\":\"t\"}\n");
    }

    #[test]
    fn an_error_names_where_the_client_resumes_when_it_knows() {
        let source = Arc::from("bus");
        let lagged =
            BackendError::new(backends::ErrorKind::Lagged, "behind").with_resume_id("1700-0");
        let event = error_event(&source, &lagged, Some("bus=1700-0"));
        assert_eq!(
            event.data.to_value(),
            json!({"event": "gateway.error", "source": "bus", "kind": "lagged",
                   "message": "behind", "resume_id": "bus=1700-0"})
        );
        let plain = error_event(&source, &BackendError::bad_request("no"), None);
        assert!(plain.data.to_value().get("resume_id").is_none());
    }

    #[test]
    fn close_carries_the_last_id_and_a_retry_hint() {
        let encoder = Encoder::new(Format::Sse, false, Duration::from_millis(1500), "{}");
        let mut buf = BytesMut::new();
        encoder.close(&mut buf, CloseReason::Lifetime, Some("5"));
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "retry: 1500\nid: 5\nevent: gateway.close\n\
             data: {\"event\":\"gateway.close\",\"reason\":\"lifetime\",\"last_event_id\":\"5\"}\n\n"
        );
    }
}
