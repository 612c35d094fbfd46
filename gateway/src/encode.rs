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

    /// Whether events are written with their source (an envelope).
    pub fn names_source(&self) -> bool {
        self.envelope
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
            // JSON data is compact, one line (see `Data`): no scan for
            // line breaks.
            (Format::Sse, false) if event.data.is_json() => {
                sse::write_event_line(buf, id, event.name.as_deref(), |buf| {
                    buf.put_slice(event.data.as_str().as_bytes())
                });
            }
            (Format::Sse, false) => {
                sse::write_event(buf, id, event.name.as_deref(), event.data.as_str());
            }
        }
    }

    /// The bytes of `event` with `id`, made once for all the clients of a
    /// shared event (see [`backends::Encodings`]): `None` when this stream
    /// writes it in a form of its own (an envelope names the route's
    /// source; an id other than the event's own is the client's cursor) or
    /// the event is not shared. Then [`event`](Self::event) writes it.
    pub fn shared(&self, event: &Event, id: Option<&Arc<str>>) -> Option<Bytes> {
        if self.envelope || !event.encodings.is_shared() {
            return None;
        }
        let own_id = match (id, &event.id) {
            (None, None) => true,
            (Some(id), Some(own)) => Arc::ptr_eq(id, own),
            _ => false,
        };
        // NDJSON without an envelope writes the data alone.
        if !own_id && self.format == Format::Sse {
            return None;
        }
        let slot = match self.format {
            Format::Sse => 0,
            Format::Ndjson => 1,
        };
        event.encodings.get_or_encode(slot, || {
            let mut buf = BytesMut::with_capacity(self.estimate(event, id));
            self.event(&mut buf, event, id.map(|id| &**id));
            buf.freeze()
        })
    }

    /// About the size of `event` written with `id` (exact for one SSE data
    /// line), so that its buffer is allocated once.
    fn estimate(&self, event: &Event, id: Option<&Arc<str>>) -> usize {
        let fields =
            id.map_or(0, |id| id.len() + 5) + event.name.as_ref().map_or(0, |n| n.len() + 8);
        fields + event.data.as_str().len() + 8
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
        // JSON is one data line, unscanned: it arrives compacted.
        let pretty = Event::new(Data::parse_json("{\n  \"a\": [1,\r\n 2]\n}").unwrap());
        assert_eq!(
            encode(Format::Sse, false, &pretty, None),
            "data: {\"a\":[1,2]}\n\n"
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
    fn a_shared_event_is_encoded_once_for_all_its_clients_in_each_format() {
        let event = sample().shared();
        let id = event.id.clone();
        for format in [Format::Sse, Format::Ndjson] {
            let encoder = Encoder::new(format, false, Duration::from_secs(3), "{}");
            // Two clients, each with its clone of the event.
            let (one, two) = (event.clone(), event.clone());
            let first = encoder.shared(&one, one.id.as_ref()).unwrap();
            let second = encoder.shared(&two, two.id.as_ref()).unwrap();
            assert_eq!(first.as_ptr(), second.as_ptr(), "{format}: one allocation");
            let written = encode(format, false, &event, id.as_deref());
            assert_eq!(std::str::from_utf8(&second).unwrap(), written, "{format}");
        }
    }

    #[test]
    fn what_differs_per_client_or_per_route_is_never_shared() {
        let event = sample().shared();
        let sse = Encoder::new(Format::Sse, false, Duration::from_secs(3), "{}");
        // A cursor's id (a merged route, an escaped id) is the client's own,
        // even when it reads the same.
        let cursor = Arc::from("3");
        assert_eq!(sse.shared(&event, Some(&cursor)), None);
        assert_eq!(sse.shared(&event, None), None);
        // An envelope names the route's source.
        for format in [Format::Sse, Format::Ndjson] {
            let enveloped = Encoder::new(format, true, Duration::from_secs(3), "{}");
            assert_eq!(enveloped.shared(&event, event.id.as_ref()), None);
        }
        // An event nobody shared is written by each stream itself.
        let alone = sample();
        assert_eq!(sse.shared(&alone, alone.id.as_ref()), None);
        // Changing the id of a shared event leaves its old bytes behind.
        let _ = sse.shared(&event, event.id.as_ref()).unwrap();
        let renamed = event.clone().with_id("job:3");
        assert_eq!(sse.shared(&renamed, renamed.id.as_ref()), None);
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
