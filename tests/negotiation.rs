//! `Accept` and `?format=` over real HTTP: the format chosen, the viewer
//! page for browsers, the 406, and `Vary: Accept` on every answer.

use gateway_tests::{TestServer, client};
use serde_json::Value;

#[tokio::test]
async fn accept_matrix() {
    let server = TestServer::default_config().await;
    let http = client();
    let ndjson = Some("application/x-ndjson");
    let sse = Some("text/event-stream");
    let page = Some("text/html; charset=utf-8");
    let cases: &[(&[&str], &str, Option<&str>)] = &[
        (&[], "", ndjson),
        (&["*/*"], "", ndjson),
        (&["application/x-ndjson"], "", ndjson),
        (&["application/jsonl"], "", ndjson),
        (&["application/json"], "", ndjson),
        (&["text/event-stream"], "", sse),
        (&["text/event-stream;charset=utf-8"], "", sse),
        (&["text/*"], "", sse),
        // A browser navigating to the route gets the viewer page.
        (
            &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            "",
            page,
        ),
        (
            &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            "?format=ndjson",
            ndjson,
        ),
        (
            &["application/json;q=0.4, text/event-stream;q=0.8"],
            "",
            sse,
        ),
        (
            &["text/event-stream;q=0.2, application/*;q=0.5"],
            "",
            ndjson,
        ),
        (&["text/event-stream;q=0, */*"], "", ndjson),
        (&["text/html"], "", page),
        (&["text/html", "image/png"], "", page),
        (&["image/png"], "", None),
        (&["text/html;q=0, image/png"], "", None),
        (&["*/*;q=0"], "", None),
        (&["text/html"], "?format=sse", sse),
        (&["text/event-stream"], "?format=ndjson", ndjson),
        (&["text/html", "text/event-stream;q=0.1"], "", page),
        // A tie goes to the stream.
        (&["text/html", "text/event-stream"], "", sse),
    ];
    for (accept, query, expected) in cases {
        let mut request = http.head(server.url(&format!("/{query}")));
        for value in *accept {
            request = request.header("accept", *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["vary"], "accept", "{accept:?}");
        match expected {
            Some(content_type) => {
                assert_eq!(response.status(), 200, "{accept:?} {query}");
                assert_eq!(
                    response.headers()["content-type"],
                    *content_type,
                    "{accept:?} {query}"
                );
            }
            None => assert_eq!(response.status(), 406, "{accept:?} {query}"),
        }
    }
}

/// The README's table of `Accept` examples, row by row: what it promises is
/// what a real server does.
#[tokio::test]
async fn the_readme_examples_are_what_the_server_does() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("<!-- accept-examples -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /accept-examples -->").next())
        .expect("the README's accept-examples table");
    let code = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let server = TestServer::default_config().await;
    let mut rows = 0;
    for row in table.lines().filter(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (accepts, expected) = (cells[1], code(cells[2]));
        let mut values: Vec<Option<String>> = code(accepts).into_iter().map(Some).collect();
        if accepts.starts_with("none") {
            values.push(None);
        }
        for accept in values {
            let mut request = client().head(server.url("/"));
            if let Some(accept) = &accept {
                request = request.header("accept", accept.as_str());
            }
            let response = request.send().await.unwrap();
            let got = if response.status() == 406 {
                "406".to_string()
            } else {
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(got, expected[0], "README row {row:?}, Accept {accept:?}");
            rows += 1;
        }
    }
    assert!(rows >= 8, "only {rows} examples read from the README");
}

#[tokio::test]
async fn not_acceptable_lists_what_is_offered() {
    let server = TestServer::default_config().await;
    let response = client()
        .get(server.url("/"))
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 406);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["vary"], "accept");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 406);
    assert_eq!(body["error"], "not_acceptable");
    assert_eq!(
        body["offered"],
        serde_json::json!([
            "application/x-ndjson",
            "application/jsonl",
            "application/json",
            "text/event-stream",
            "text/html"
        ])
    );
}

#[tokio::test]
async fn unknown_format_parameter_is_a_bad_request() {
    let server = TestServer::default_config().await;
    let response = client()
        .get(server.url("/?format=xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["vary"], "accept");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("format=sse"),
        "{body}"
    );
}

/// NDJSON of a one-backend route is the events' data alone; a `curl` user
/// who wants to resume asks for the envelope (`?envelope=always`): each
/// line then has its `id`, which `Last-Event-ID` resumes after. An unknown
/// value is a 400 that names the ones there are.
#[tokio::test]
async fn ndjson_clients_ask_for_ids_with_the_envelope() {
    use backends::ticker::{Ticker, TickerConfig};
    use std::sync::Arc;
    let ticker = Arc::new(Ticker::new(TickerConfig {
        interval: std::time::Duration::from_millis(10),
        count: Some(5),
        ..TickerConfig::default()
    }));
    let server = TestServer::route(
        "/ticks",
        vec![("clock", ticker as Arc<dyn backends::Backend>)],
        |_| {},
        gateway::config::ServerConfig::default(),
    )
    .await;
    let lines = |body: String| -> Vec<Value> {
        body.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let plain = client()
        .get(server.url("/ticks?format=ndjson"))
        .send()
        .await
        .expect("a response");
    let plain = lines(plain.text().await.expect("a body"));
    assert_eq!(plain[0]["seq"], 1, "the data alone: {plain:?}");
    assert!(plain[0].get("id").is_none());

    let enveloped = client()
        .get(server.url("/ticks?format=ndjson&envelope=always"))
        .send()
        .await
        .expect("a response");
    let enveloped = lines(enveloped.text().await.expect("a body"));
    assert_eq!(enveloped.len(), 5, "{enveloped:?}");
    assert_eq!(enveloped[1]["data"]["seq"], 2);
    let id = enveloped[1]["id"]
        .as_str()
        .expect("each line's id")
        .to_string();
    let resumed = client()
        .get(server.url("/ticks?format=ndjson&envelope=always"))
        .header("last-event-id", &id)
        .send()
        .await
        .expect("a response");
    let resumed = lines(resumed.text().await.expect("a body"));
    let seqs: Vec<&Value> = resumed.iter().map(|l| &l["data"]["seq"]).collect();
    assert_eq!(seqs, [3, 4, 5], "resumed after {id}");

    let wrong = client()
        .get(server.url("/ticks?format=ndjson&envelope=yes"))
        .send()
        .await
        .expect("a response");
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.expect("a JSON body");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("always"),
        "{body}"
    );
}
