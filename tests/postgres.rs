//! What only the `postgres` backend does, against the real PostgreSQL on
//! 127.0.0.1:5432 (database `test`): ids in commit order (and what a table
//! without the ordering trigger loses), a table the gateway may not read
//! refused with why, retention by the publish target, and two gateways
//! through a restart. Everything every bus backend does is in the
//! conformance suite (`tests/bus.rs`).

use std::time::Duration;

use gateway_tests::bus::postgres::{PostgresEngine, connect};
use gateway_tests::bus::{
    BOUND, Engine, RESTART_BOUND, gateway, gateway_with, lines, post, publish, read_until, refused,
    take, unique, within,
};
use gateway_tests::{numbers as ns, take_events};
use serde_json::{Value, json};
use tokio_postgres::Client;

/// `{"n": n}` inserted in an open transaction of `client` (no commit).
async fn insert(client: &Client, table: &str, key: &str, n: u64) -> i64 {
    let sql = format!("INSERT INTO \"{table}\" (key, data) VALUES ($1, $2) RETURNING id");
    let data = json!({ "n": n }).to_string();
    within("an INSERT", client.query_one(&sql, &[&key, &data]))
        .await
        .expect("INSERT")
        .get(0)
}

/// Waits until the backend `pid` waits for an advisory lock.
async fn waits_for_the_lock(observer: &Client, pid: i32) {
    within("the second writer waits for the first", async {
        loop {
            let row = observer
                .query_one(
                    "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .expect("pg_stat_activity");
            if row.get::<_, String>(0) == "advisory" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// Two transactions that would commit out of order: the second writer
/// cannot take an id until the first commits, so a live client gets both,
/// in order.
#[tokio::test]
async fn writers_commit_in_id_order_and_a_live_client_gets_every_row() {
    let engine = PostgresEngine::shared("order").await;
    let server = gateway(&engine, json!({"poll_interval": "50ms"}), json!({})).await;
    let mut got = lines(&server, "o", None).await;
    let key = engine.key("o");
    let (first, second, observer) = (
        engine.client().await,
        engine.client().await,
        engine.client().await,
    );
    first.batch_execute("BEGIN").await.expect("BEGIN");
    let one = insert(&first, engine.table(), &key, 1).await;
    second.batch_execute("BEGIN").await.expect("BEGIN");
    let second_pid = pid(&second).await;
    let key2 = key.clone();
    let table = engine.table().to_string();
    let blocked = tokio::spawn(async move {
        let two = insert(&second, &table, &key2, 2).await;
        second.batch_execute("COMMIT").await.expect("COMMIT");
        two
    });
    waits_for_the_lock(&observer, second_pid).await;
    assert!(!blocked.is_finished(), "the second insert waits");
    first.batch_execute("COMMIT").await.expect("COMMIT");
    let two = within("the second insert", blocked).await.expect("task");
    assert!(two > one, "ids in commit order: {one} then {two}");
    let got = take(&mut got, 2).await;
    assert_eq!(ns(&got), [1, 2], "every row, in order: {got:?}");
}

/// The same scenario on a table without the ordering trigger (`ordering =
/// "unchecked"`): the second writer takes a larger id and commits first;
/// a client that read it never gets the first writer's row. This is the
/// loss the trigger prevents, and why `unchecked` is the operator's call.
#[tokio::test]
async fn without_the_ordering_trigger_a_late_commit_is_lost() {
    let engine = PostgresEngine::shared("unchecked").await;
    let table = format!("unchecked_{}", unique("t").trim_start_matches("t_"));
    let mut backend = engine.backend();
    backend["table"] = json!(table);
    let settings = json!({"ordering": "unchecked", "poll_interval": "20ms"});
    let mut target = engine.target();
    target["table"] = json!(table);
    target["ordering"] = json!("unchecked");
    let server = gateway_with(backend, target, settings, json!({})).await;
    let mut got = lines(&server, "u", None).await;
    let key = engine.key("u");
    let (first, second) = (connect(engine.url()).await, connect(engine.url()).await);
    first.batch_execute("BEGIN").await.expect("BEGIN");
    let one = insert(&first, &table, &key, 1).await;
    // Not blocked: no trigger orders the writers.
    let two = insert(&second, &table, &key, 2).await;
    assert!(two > one);
    assert_eq!(
        ns(&take(&mut got, 1).await),
        [2],
        "the later id, read first"
    );
    first.batch_execute("COMMIT").await.expect("COMMIT");
    insert(&second, &table, &key, 3).await;
    assert_eq!(
        ns(&take(&mut got, 1).await),
        [3],
        "row {one} (n = 1) committed after {two} was read: never delivered"
    );
    second
        .batch_execute(&format!("DROP TABLE \"{table}\", \"{table}_trim\""))
        .await
        .expect("DROP");
}

/// A table the gateway may not make and that lacks the ordering trigger is
/// refused (503) with the reason, unless `ordering = "unchecked"`.
#[tokio::test]
async fn a_table_without_the_ordering_trigger_is_refused_with_why() {
    let engine = PostgresEngine::shared("refused").await;
    let table = format!("plain_{}", unique("t").trim_start_matches("t_"));
    let client = connect(engine.url()).await;
    let sql = backends::postgres::schema(&table, &table, backends::postgres::Ordering::Unchecked);
    client.batch_execute(&sql).await.expect("the table");
    let mut backend = engine.backend();
    backend["table"] = json!(table);
    backend["create"] = json!(false);
    let strict = gateway_with(backend.clone(), engine.target(), json!({}), json!({})).await;
    let (status, body) = refused(&strict, "a", None).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{table}_order")) && message.contains("unchecked"),
        "{body}"
    );
    let unchecked = gateway_with(
        backend,
        engine.target(),
        json!({"ordering": "unchecked"}),
        json!({}),
    )
    .await;
    let mut got = lines(&unchecked, "a", None).await;
    let key = engine.key("a");
    client
        .execute(
            &format!("INSERT INTO \"{table}\" (key, data) VALUES ($1, '{{\"n\": 7}}')"),
            &[&key],
        )
        .await
        .expect("INSERT");
    client
        .execute(&format!("NOTIFY \"{table}\", '{key}'"), &[])
        .await
        .expect("NOTIFY");
    assert_eq!(ns(&take(&mut got, 1).await), [7]);
    client
        .batch_execute(&format!("DROP TABLE \"{table}\", \"{table}_trim\""))
        .await
        .expect("DROP");
}

/// The publish target keeps about `max_len` rows per key; a client that
/// resumes from a deleted row is told before it gets what is left.
#[tokio::test]
async fn the_publish_target_trims_and_readers_are_told() {
    let engine = PostgresEngine::shared("retain").await;
    let mut target = engine.target();
    target["max_len"] = json!(5);
    let server = gateway_with(engine.backend(), target, json!({}), json!({})).await;
    let mut first = None;
    let total = 600u64;
    for n in 0..total {
        let (status, body) = post(&server, "r", &json!({ "data": { "n": n } })).await;
        assert_eq!(status, 201, "{body}");
        first.get_or_insert_with(|| body["id"].as_str().map(str::to_string));
    }
    let client = engine.client().await;
    let held: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\" WHERE key = $1", engine.table()),
            &[&engine.key("r")],
        )
        .await
        .expect("count")
        .get(0);
    assert!(held < total as i64, "trimmed: {held} of {total} left");
    let first = first.flatten().expect("an id");
    let mut got = lines(&server, "r", Some(&first)).await;
    let (notices, seen) = read_until(&mut got, held as usize, BOUND).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["kind"], "lagged");
    assert_eq!(seen.last(), Some(&(total - 1)), "what is left, to the end");
}

/// Two gateways (two backends, each with its own connections) through a
/// server restart: clients on both get what is inserted after it, once; a
/// client resumes on the other gateway exactly.
#[tokio::test]
async fn two_gateways_through_a_restart() {
    let mut engine = PostgresEngine::private("two", true).await;
    let a = gateway(&engine, json!({}), json!({})).await;
    let b = gateway(&engine, json!({}), json!({})).await;
    let mut on_a = lines(&a, "k", None).await;
    let mut on_b = lines(&b, "k", None).await;
    let ids = publish(&engine, "k", 0..2).await;
    assert_eq!(ns(&take(&mut on_a, 2).await), [0, 1]);
    assert_eq!(ns(&take(&mut on_b, 2).await), [0, 1]);
    drop(on_a);

    engine.restart().await;
    let (status, body) = post(&a, "k", &json!({"data": {"n": 2}})).await;
    assert_eq!(status, 201, "the first publish after the restart: {body}");
    publish(&engine, "k", 3..4).await;
    let got: Vec<Value> = take_events(&mut on_b, 2, RESTART_BOUND).await;
    assert_eq!(ns(&got), [2, 3], "{got:?}");
    let mut resumed = lines(&b, "k", Some(&ids[1])).await;
    assert_eq!(ns(&take(&mut resumed, 2).await), [2, 3]);
    publish(&engine, "k", 4..5).await;
    assert_eq!(ns(&take(&mut resumed, 1).await), [4], "no repeats");
}

/// A table dropped and made again while clients read it (its sequence
/// starts over, and its new ids pass the clients' position): connected
/// clients are told, then get the new table's rows from its start.
#[tokio::test]
async fn a_table_made_again_is_announced_to_connected_clients() {
    let engine = PostgresEngine::shared("remade").await;
    let table = format!("remade_{}", unique("t").trim_start_matches("t_"));
    let mut backend = engine.backend();
    backend["table"] = json!(table);
    let mut target = engine.target();
    target["table"] = json!(table);
    let server = gateway_with(backend, target, json!({"poll_interval": "50ms"}), json!({})).await;
    let mut got = lines(&server, "a", None).await;
    let key = engine.key("a");
    let client = connect(engine.url()).await;
    let make = backends::postgres::create(&table, &table, backends::postgres::Ordering::Commit);
    client.batch_execute(&make).await.expect("the table");
    for n in 0..3 {
        insert(&client, &table, &key, n).await;
    }
    assert_eq!(ns(&take(&mut got, 3).await), [0, 1, 2]);
    client
        .batch_execute(&format!("DROP TABLE \"{table}\", \"{table}_trim\"; {make}"))
        .await
        .expect("made again");
    for n in 10..15 {
        insert(&client, &table, &key, n).await;
    }
    let (notices, seen) = read_until(&mut got, 5, RESTART_BOUND).await;
    assert_eq!(seen, [10, 11, 12, 13, 14], "{notices:?}");
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["resume_id"], "0", "{notices:?}");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\", \"{table}_trim\""))
        .await
        .expect("DROP");
}
