//! The load generator's parts that other load tools share (the attack suite
//! in `tests/attack` reads streams and watches processes the same way):
//!
//! - [`parse`]: SSE and NDJSON stream parsers that cost little per event;
//! - [`stats`]: HDR histograms and their percentiles, mergeable across
//!   connections and processes;
//! - [`watch`]: a process's RSS, peak RSS, CPU time and open files, read
//!   from Linux `/proc`, and a sampler over a run.
//!
//! The `loadgen` binary (`src/main.rs`) adds the connections, the
//! publisher and the coordination of worker processes.

pub mod parse;
pub mod stats;
pub mod watch;
