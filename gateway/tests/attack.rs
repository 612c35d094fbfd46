//! The attack suite (`tests/attack`) at small scale, against this build's
//! `gateway` binary: every scenario, one after the other (their timings
//! must not share the machine with each other), each asserting its pass
//! criteria. `tests/attack/run.sh` runs the same scenarios at full scale.
//!
//! Any failed check fails the test. The churn scenario needs Redis on
//! 127.0.0.1:6379 (`.ci/run` starts it).

#![cfg(unix)]

use std::sync::{Mutex, PoisonError};

use attack::{Options, Scale, Scenario};

/// One scenario at a time: each measures times and memory.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(scenario: Scenario) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let options = Options::new(env!("CARGO_BIN_EXE_gateway"), Scale::Small);
    let report = runtime.block_on(attack::run(scenario, &options));
    eprint!("{}", report.summary());
    let failed: Vec<String> = report
        .failures()
        .into_iter()
        .map(|check| format!("{}: {}", check.name, check.detail))
        .collect();
    assert!(
        !report.checks.is_empty() && failed.is_empty(),
        "{} failed:\n{}",
        scenario.name(),
        failed.join("\n")
    );
}

#[test]
fn slow_heads() {
    run(Scenario::SlowHeads);
}

#[test]
fn big_heads() {
    run(Scenario::BigHeads);
}

#[test]
fn malformed() {
    run(Scenario::Malformed);
}

#[test]
fn amplification() {
    run(Scenario::Amplification);
}

#[test]
fn slow_readers() {
    run(Scenario::SlowReaders);
}

#[test]
fn churn() {
    run(Scenario::Churn);
}

#[test]
fn shutdown() {
    run(Scenario::Shutdown);
}
