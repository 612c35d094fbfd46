//! The conformance checks every bus backend passes (see [`super`]). Each is
//! generic over the [`Engine`]; `tests/bus.rs` runs them once per engine.
//!
//! Loss is never silent: every check that removes, loses or renumbers
//! entries asserts that the client is told (a `gateway.error` event) before
//! it goes on, and that what the bus still holds arrives once, in order.

use futures::StreamExt;
use serde_json::{Value, json};

use super::{
    BOUND, Engine, RESTART_BOUND, gateway, gateway_with, lines, numbered, open, post, publish,
    read_until, refused, request, resume_id, take, within,
};
use crate::{client, ndjson_lines, numbers as ns, read_numbered, sse_events, take_events};

fn none() -> Value {
    json!({})
}

/// One append reaches the clients of two gateways, each once.
pub async fn two_gateways_get_every_entry<E: Engine>() {
    let engine = E::shared("two").await;
    let a = gateway(&engine, none(), none()).await;
    let b = gateway(&engine, none(), none()).await;
    let mut on_a = lines(&a, "lobby", None).await;
    let mut also_on_a = lines(&a, "lobby", None).await;
    let mut on_b = lines(&b, "lobby", None).await;
    // The streams are open, so their readers are there: append now.
    publish(&engine, "lobby", 0..3).await;
    assert_eq!(ns(&take(&mut on_a, 3).await), [0, 1, 2]);
    assert_eq!(ns(&take(&mut also_on_a, 3).await), [0, 1, 2]);
    assert_eq!(ns(&take(&mut on_b, 3).await), [0, 1, 2]);
}

/// `history` sends the last N on connect; event ids are the bus's ids.
pub async fn history_and_ids<E: Engine>() {
    let engine = E::shared("history").await;
    let ids = publish(&engine, "h", 0..5).await;
    publish(&engine, "other", 100..103).await;
    let server = gateway(&engine, json!({"history": 2}), none()).await;
    let mut got = lines(&server, "h", None).await;
    assert_eq!(ns(&take(&mut got, 2).await), [3, 4], "the last two");
    let response = within(
        "an SSE stream",
        client().get(server.url("/s/h?format=sse")).send(),
    )
    .await
    .expect("request");
    let mut events = sse_events(response);
    for id in &ids[3..] {
        let event = within("an event", events.next()).await.expect("event");
        assert_eq!(&event.id, id);
        assert_eq!(event.event, "message");
    }
    // A named event, through the publish route, keeps its name.
    let (status, body) = post(
        &server,
        "h",
        &json!({"data": "hello there", "event": "greeting"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let event = within("an event", events.next()).await.expect("event");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("greeting", "\"hello there\"")
    );
    assert_eq!(body["id"].as_str(), Some(event.id.as_str()));
}

/// What a client missed while away comes exactly once when it resumes,
/// on any gateway.
pub async fn resumes_exactly_on_another_gateway<E: Engine>() {
    let engine = E::shared("resume").await;
    let a = gateway(&engine, none(), none()).await;
    let b = gateway(&engine, none(), none()).await;
    let mut got = lines(&a, "r", None).await;
    publish(&engine, "other", 100..102).await;
    let ids = publish(&engine, "r", 0..3).await;
    assert_eq!(ns(&take(&mut got, 3).await), [0, 1, 2]);
    drop(got);
    // Missed while away, another room's entries between.
    publish(&engine, "r", 3..5).await;
    publish(&engine, "other", 102..104).await;
    publish(&engine, "r", 5..7).await;
    let mut got = lines(&b, "r", Some(&ids[2])).await;
    assert_eq!(ns(&take(&mut got, 4).await), [3, 4, 5, 6]);
    publish(&engine, "r", 7..9).await;
    assert_eq!(ns(&take(&mut got, 2).await), [7, 8], "no repeats, no gaps");
}

/// A catch-up longer than any page arrives whole, then the stream goes on
/// live.
pub async fn a_long_catch_up_comes_page_by_page<E: Engine>() {
    let engine = E::shared("pages").await;
    let total = 700u64;
    // Interleaved with another room, so that ids do not follow each other.
    let mut ids = Vec::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1] + 1);
        ids.extend(engine.burst("p", &numbered(first..last)).await);
        engine.burst("q", &numbered(first..last)).await;
    }
    let server = gateway(&engine, none(), none()).await;
    let mut got = lines(&server, "p", Some(&ids[0])).await;
    assert_eq!(
        ns(&take(&mut got, total as usize - 1).await),
        (1..total).collect::<Vec<_>>()
    );
    publish(&engine, "p", total..total + 1).await;
    assert_eq!(ns(&take(&mut got, 1).await), [total], "then live");
    // From the origin: all the key holds, and nothing said of a gap.
    let mut all = lines(&server, "p", Some(engine.origin())).await;
    assert_eq!(
        ns(&take(&mut all, total as usize + 1).await),
        (0..=total).collect::<Vec<_>>()
    );
}

/// Past `max_catchup` a resumed stream ends with `lagged`, naming the id
/// that resumes exactly after the last event it sent.
pub async fn a_catch_up_past_max_catchup_names_where_to_resume<E: Engine>() {
    let engine = E::shared("far").await;
    let ids = publish(&engine, "f", 0..10).await;
    let server = gateway(&engine, json!({"max_catchup": 4}), none()).await;
    let mut from = ids[0].clone();
    let mut got = Vec::new();
    for named in [&ids[4], &ids[8]] {
        let response = open(&server, "f", Some(&from)).await;
        let (seen, lagged) = read_numbered(&mut ndjson_lines(response), BOUND).await;
        let lagged = lagged.expect("a lagged error");
        assert_eq!(lagged["kind"], "lagged", "{lagged}");
        assert_eq!(seen.len(), 4, "{seen:?}");
        got.extend(seen);
        from = resume_id(&lagged);
        assert_eq!(&from, named, "{lagged}");
        assert!(
            lagged["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(named)),
            "{lagged}"
        );
    }
    let mut rest = lines(&server, "f", Some(&from)).await;
    got.extend(ns(&take(&mut rest, 1).await));
    assert_eq!(got, (1..10).collect::<Vec<_>>(), "each once, in order");
    // Within the bound now: it goes on live.
    publish(&engine, "f", 10..11).await;
    assert_eq!(ns(&take(&mut rest, 1).await), [10]);
}

/// A client that reads nothing does not slow one that reads; it is cut
/// short with `lagged` and its resume id, and resuming from it (again and
/// again) gets every event exactly once.
pub async fn a_slow_client_does_not_hold_back_a_fast_one<E: Engine>() {
    let engine = E::shared("slow").await;
    let settings = json!({"buffer": 64, "max_catchup": 256});
    let server = gateway(&engine, settings, none()).await;
    let slow = open(&server, "s", None).await;
    let mut fast = lines(&server, "s", None).await;
    // Far more bytes than the slow client's socket buffers hold, appended
    // while the fast client reads.
    let total = 600u64;
    let pad = "x".repeat(64 * 1024);
    let appending = async {
        for n in 0..total {
            engine.append("s", &[json!({ "n": n, "pad": pad })]).await;
        }
    };
    let (got, ()) = tokio::join!(take(&mut fast, total as usize), appending);
    assert_eq!(ns(&got), (0..total).collect::<Vec<_>>());
    let (mut seen, lagged) = read_numbered(&mut ndjson_lines(slow), BOUND).await;
    let mut lagged = lagged.expect("a lagged error event");
    assert_eq!(lagged["kind"], "lagged", "{lagged}");
    assert!((seen.len() as u64) < total, "the slow client was cut short");
    assert_eq!(
        seen,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "nothing skipped before the error"
    );
    for _ in 0..10 {
        let mut resumed = lines(&server, "s", Some(&resume_id(&lagged))).await;
        let mut next = None;
        while let Some(line) = within("a resumed stream", resumed.next()).await {
            let value: Value = serde_json::from_str(&line).expect("JSON line");
            if value["event"] == "gateway.error" {
                next = Some(value);
                break;
            } else if let Some(n) = value["n"].as_u64() {
                seen.push(n);
                if n + 1 == total {
                    break;
                }
            }
        }
        match next {
            Some(again) => lagged = again,
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "resumed to the end, exactly"
    );
}

/// A burst far over the buffer right after a client joined: it gets the
/// burst, and nothing from before it joined.
pub async fn a_client_that_lags_before_its_first_event_gets_no_old_entries<E: Engine>() {
    let engine = E::shared("early").await;
    publish(&engine, "e", 0..20).await;
    let server = gateway(&engine, json!({"buffer": 4}), none()).await;
    let mut got = lines(&server, "e", None).await;
    engine.burst("e", &numbered(100..200)).await;
    assert_eq!(
        ns(&take(&mut got, 100).await),
        (100..200).collect::<Vec<_>>()
    );
}

/// Entries the bus removed before a client read them are announced (a
/// `lagged` error first), then what is left follows.
pub async fn removed_entries_are_announced_not_skipped<E: Engine>() {
    let engine = E::shared("trim").await;
    let ids = publish(&engine, "t", 0..10).await;
    engine.keep_last("t", 5).await;
    let server = gateway(&engine, none(), none()).await;
    let mut got = lines(&server, "t", Some(&ids[1])).await;
    let first = take(&mut got, 1).await;
    assert_eq!(first[0]["event"], "gateway.error", "{first:?}");
    assert_eq!(first[0]["kind"], "lagged", "{first:?}");
    assert_eq!(ns(&take(&mut got, 5).await), [5, 6, 7, 8, 9]);
    // A client that has what is left hears nothing of it.
    let mut got = lines(&server, "t", Some(&ids[6])).await;
    assert_eq!(ns(&take(&mut got, 3).await), [7, 8, 9]);
}

/// A broker that restarts with its data: connected clients get what
/// follows, once; a client resuming with an id from before goes on exactly.
pub async fn a_restart_with_persistence_loses_and_repeats_nothing<E: Engine>() {
    let mut engine = E::private("restart", true).await;
    let server = gateway(&engine, none(), none()).await;
    let mut first = lines(&server, "k", None).await;
    let mut second = lines(&server, "k", None).await;
    let before = publish(&engine, "k", 0..2).await;
    assert_eq!(ns(&take(&mut first, 2).await), [0, 1]);
    assert_eq!(ns(&take(&mut second, 2).await), [0, 1]);

    engine.restart().await;
    // Appended right away, before the gateway has necessarily noticed:
    // these must all come, once.
    publish(&engine, "k", 2..5).await;
    for got in [&mut first, &mut second] {
        let got = take_events(got, 3, RESTART_BOUND).await;
        assert_eq!(ns(&got), [2, 3, 4], "{got:?}");
    }
    publish(&engine, "k", 5..7).await;
    assert_eq!(ns(&take(&mut first, 2).await), [5, 6]);
    let mut resumed = lines(&server, "k", Some(&before[0])).await;
    assert_eq!(ns(&take(&mut resumed, 6).await), [1, 2, 3, 4, 5, 6]);
}

/// A broker that restarts without its data: every client, connected or
/// resuming with an id from before, is told its history is gone before it
/// gets what follows, and gets all of that.
pub async fn a_restart_without_persistence_is_announced<E: Engine>() {
    let mut engine = E::private("amnesia", false).await;
    let server = gateway(&engine, none(), none()).await;
    let mut connected = lines(&server, "k", None).await;
    let before = publish(&engine, "k", 0..5).await;
    assert_eq!(ns(&take(&mut connected, 5).await), [0, 1, 2, 3, 4]);

    engine.restart().await;
    // Fewer than before: a bus that numbers from 1 again is not past them.
    publish(&engine, "k", 5..7).await;
    let (notices, seen) = read_until(&mut connected, 2, RESTART_BOUND).await;
    assert_eq!(seen, [5, 6], "{notices:?}");
    assert!(!notices.is_empty(), "a connected client is told");
    // Ids the bus has not given out again (a bus that numbers from 1 anew
    // gives out the low ones again, and an id carries no epoch to tell
    // them apart: README says so).
    for id in [&before[2], &before[4]] {
        let mut resumed = lines(&server, "k", Some(id)).await;
        let got = take(&mut resumed, 3).await;
        assert_eq!(got[0]["event"], "gateway.error", "after {id}: {got:?}");
        assert_eq!(got[0]["kind"], "lagged", "{got:?}");
        assert_eq!(ns(&got[1..]), [5, 6], "after {id}: {got:?}");
    }
}

/// A stream deleted and made again: connected clients follow it; a client
/// resuming with an id from before, or one the bus never gave, gets a
/// stream (never a 400) that says so first and then goes on.
pub async fn a_stream_made_again_is_announced_and_followed<E: Engine>() {
    let engine = E::shared("again").await;
    let server = gateway(&engine, none(), none()).await;
    let mut connected = lines(&server, "r", None).await;
    let before = publish(&engine, "r", 0..5).await;
    assert_eq!(ns(&take(&mut connected, 5).await), [0, 1, 2, 3, 4]);

    engine.recreate("r").await;
    publish(&engine, "r", 5..7).await;
    let (notices, seen) = read_until(&mut connected, 2, RESTART_BOUND).await;
    assert_eq!(seen, [5, 6], "{notices:?}");
    if engine.renumbers() {
        assert_eq!(notices.len(), 1, "the ids started over: {notices:?}");
        assert_eq!(resume_id(&notices[0]), engine.origin(), "{notices:?}");
    }
    for id in [before[3].clone(), engine.future_id()] {
        let mut resumed = lines(&server, "r", Some(&id)).await;
        let got = take(&mut resumed, 3).await;
        assert_eq!(got[0]["event"], "gateway.error", "after {id}: {got:?}");
        assert_eq!(got[0]["kind"], "lagged", "{got:?}");
        assert_eq!(ns(&got[1..]), [5, 6], "after {id}: {got:?}");
        publish(&engine, "r", 7..8).await;
        assert_eq!(ns(&take(&mut resumed, 1).await), [7], "then live");
    }
}

/// A gateway that was idle through a broker restart answers its first
/// publish and its first new stream as if nothing happened.
pub async fn the_first_requests_after_a_restart_succeed<E: Engine>() {
    let mut engine = E::private("first", true).await;
    let server = gateway(&engine, none(), none()).await;
    // Connected once, for publishing and reading.
    let (status, body) = post(&server, "a", &json!({"data": 1})).await;
    assert_eq!(status, 201, "{body}");
    let mut got = lines(&server, "a", None).await;
    publish(&engine, "a", 0..1).await;
    assert_eq!(ns(&take(&mut got, 1).await), [0]);
    drop(got);

    engine.restart().await;
    let (status, body) = post(&server, "b", &json!({"data": {"n": 1}})).await;
    assert_eq!(status, 201, "the first publish after the restart: {body}");
    let response = request(&server, "c", None).await;
    assert_eq!(response.status(), 200, "the first stream after the restart");
    let mut got = ndjson_lines(response);
    publish(&engine, "c", 0..1).await;
    assert_eq!(ns(&take(&mut got, 1).await), [0]);
}

/// An entry the backend cannot decode is an error event naming its id, in
/// place (live, in history and in a catch-up), never an empty event.
pub async fn undecodable_entries_are_errors_naming_their_id<E: Engine>() {
    let engine = E::shared("undecodable").await;
    let server = gateway(&engine, json!({"history": 10}), none()).await;
    let mut live = lines(&server, "u", None).await;
    let before = publish(&engine, "u", 0..1).await;
    let bad = engine.undecodable("u").await;
    publish(&engine, "u", 1..2).await;
    let check = |got: Vec<Value>| {
        assert_eq!(ns(&got[..1]), [0], "{got:?}");
        for (error, id) in got[1..=bad.len()].iter().zip(&bad) {
            assert_eq!(error["event"], "gateway.error", "{got:?}");
            assert_eq!(error["resume_id"].as_str(), Some(id.as_str()), "{error}");
            assert!(
                error["message"].as_str().is_some_and(|m| m.contains(id)),
                "{error}"
            );
        }
        assert_eq!(ns(&got[bad.len() + 1..]), [1], "{got:?}");
    };
    check(take(&mut live, bad.len() + 2).await);
    check(take(&mut lines(&server, "u", None).await, bad.len() + 2).await);
    let mut resumed = lines(&server, "u", Some(&before[0])).await;
    let mut got = vec![json!({"n": 0})];
    got.extend(take(&mut resumed, bad.len() + 1).await);
    check(got);
}

/// `max_keys` caps the keys read at once (503 beyond); ids that are not the
/// bus's are 400; keys outside `allow` 404; a broker that is not there 503.
pub async fn the_key_cap_and_refusals<E: Engine>() {
    let engine = E::shared("refusals").await;
    let capped = gateway(&engine, json!({"max_keys": 1}), none()).await;
    let held = open(&capped, "a", None).await;
    let (status, body) = refused(&capped, "b", None).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    drop(held);

    for bad in ["nope", "1-x", "-1", ""] {
        if bad.is_empty() {
            continue;
        }
        let (status, body) = refused(&capped, "a", Some(bad)).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("bad_request")),
            "{bad}: {body}"
        );
    }
    let mut narrow = engine.backend();
    narrow["allow"] = json!("elsewhere.*");
    let outside = gateway_with(narrow, engine.target(), none(), none()).await;
    let (status, body) = refused(&outside, "a", None).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let down = gateway_with(engine.unreachable(), engine.target(), none(), none()).await;
    let (status, body) = refused(&down, "a", None).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
}

/// A `POST` to the publish route appends an event that readers get with the
/// id the answer named.
pub async fn a_published_event_reaches_readers_with_its_id<E: Engine>() {
    let engine = E::shared("publish").await;
    let server = gateway(&engine, none(), none()).await;
    let response = within(
        "a stream",
        client().get(server.url("/s/lobby?format=sse")).send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    let (status, body) = post(
        &server,
        "lobby",
        &json!({"data": {"text": "hello"}, "event": "message"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let event = within("the event", events.next()).await.expect("an event");
    assert_eq!(Some(event.id.as_str()), body["id"].as_str());
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).expect("JSON data"),
        json!({"text": "hello"})
    );
}
