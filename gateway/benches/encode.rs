//! Micro-benchmarks of the per-event and per-request hot paths: encoding an
//! event as SSE and NDJSON (bare and enveloped, small and multi-line data),
//! and `Accept` negotiation. `cargo bench -p gateway --bench encode`;
//! results in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use backends::{Data, Event};
use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::Format;
use gateway::encode::Encoder;
use gateway::negotiate::negotiate;

fn events() -> Vec<(&'static str, Event)> {
    let small =
        Event::new(Data::parse_json(r#"{"seq":42,"ts_us":1795624898827000}"#).expect("valid JSON"))
            .with_id("42")
            .with_name("tick")
            .with_source(Arc::from("clock"));
    let text = Event::new(Data::text(
        "line one\nline two\nline three, a bit longer than the rest",
    ))
    .with_id("1795624898827-0")
    .with_source(Arc::from("bus"));
    let big = Event::new(Data::json(&serde_json::json!({
        "choices": [{"delta": {"content": "x".repeat(900)}}], "model": "m", "seq": 7
    })))
    .with_id("7")
    .with_name("chunk")
    .with_source(Arc::from("llm"));
    vec![
        ("small json", small),
        ("multi-line text", text),
        ("1 KiB json", big),
    ]
}

fn encoders(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, event) in events() {
        for (format, envelope) in [
            (Format::Sse, false),
            (Format::Sse, true),
            (Format::Ndjson, false),
            (Format::Ndjson, true),
        ] {
            let encoder = Encoder::new(
                format,
                envelope,
                Duration::from_secs(3),
                r#"{"event":"gateway.heartbeat"}"#,
            );
            let label = format!("{format}{}", if envelope { "+envelope" } else { "" });
            let mut buf = BytesMut::with_capacity(64 * 1024);
            group.bench_with_input(BenchmarkId::new(label, name), &event, |b, event| {
                b.iter(|| {
                    buf.clear();
                    encoder.event(&mut buf, event, event.id.as_deref());
                    std::hint::black_box(buf.len())
                })
            });
        }
    }
    group.finish();
}

fn negotiation(c: &mut Criterion) {
    let mut group = c.benchmark_group("negotiate");
    for (name, accept) in [
        ("eventsource", "text/event-stream"),
        ("curl", "*/*"),
        (
            "browser",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        (
            "ndjson with q",
            "application/json;q=0.5, application/x-ndjson;q=0.9, text/event-stream;q=0.1",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| std::hint::black_box(negotiate(None, [accept]).is_ok()))
        });
        group.bench_function(format!("{name} (page?)"), |b| {
            b.iter(|| std::hint::black_box(gateway::negotiate::prefers_page([accept])))
        });
    }
    group.finish();
}

criterion_group!(benches, encoders, negotiation);
criterion_main!(benches);
