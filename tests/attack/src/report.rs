//! What a scenario found: its settings, its checks (each a pass criterion
//! with what was measured against it), its figures, the gateway's resource
//! samples and its log in a few counts; as JSON, and as a summary for a
//! person.

use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::Scale;
use crate::gateway::LogSummary;
use crate::probe::Sample;

/// One pass criterion and how it came out.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What must hold.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was measured, against what bound.
    pub detail: String,
}

/// The report of one scenario.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The scale it ran at.
    pub scale: Scale,
    /// Every check passed (and there was at least one).
    pub passed: bool,
    /// Wall time of the whole scenario.
    pub seconds: f64,
    /// Its parameters at this scale.
    pub settings: Value,
    /// Its pass criteria.
    pub checks: Vec<Check>,
    /// What it measured, by name.
    pub figures: Map<String, Value>,
    /// The gateway's RSS, CPU time and open files over the run (of each
    /// gateway started, one after the other).
    pub samples: Vec<Sample>,
    /// The gateways' logs, in counts (one per gateway started).
    pub logs: Vec<LogSummary>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Report {
    /// An empty report of `scenario` at `scale`, timed from now.
    pub fn new(scenario: &str, scale: Scale) -> Self {
        Self {
            scenario: scenario.to_string(),
            scale,
            passed: false,
            seconds: 0.0,
            settings: Value::Null,
            checks: Vec::new(),
            figures: Map::new(),
            samples: Vec::new(),
            logs: Vec::new(),
            started: Some(Instant::now()),
        }
    }

    /// When the scenario started: samples count their time from it.
    pub fn origin(&self) -> Instant {
        self.started.unwrap_or_else(Instant::now)
    }

    /// Records a pass criterion.
    pub fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }

    /// Records a figure.
    pub fn figure(&mut self, name: impl Into<String>, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.figures.insert(name.into(), value);
    }

    /// Settles `passed` and `seconds`.
    pub fn finish(mut self) -> Self {
        self.passed = !self.checks.is_empty() && self.checks.iter().all(|c| c.passed);
        if let Some(started) = self.started {
            self.seconds = started.elapsed().as_secs_f64();
        }
        self
    }

    /// The checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// For a person: the outcome and every check.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} ({:?}): {} in {:.1} s\n",
            self.scenario,
            self.scale,
            if self.passed { "PASSED" } else { "FAILED" },
            self.seconds
        );
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {}: {}", check.name, check.detail);
        }
        for log in &self.logs {
            for panic in &log.panics {
                let _ = writeln!(out, "  gateway log: {panic}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_passes_only_with_checks_all_passed() {
        assert!(!Report::new("x", Scale::Small).finish().passed);
        let mut report = Report::new("x", Scale::Small);
        report.check("a", true, "1 <= 2");
        assert!(Report::finish(report).passed);
        let mut report = Report::new("x", Scale::Small);
        report.check("a", true, "1 <= 2");
        report.check("b", false, "3 > 2");
        let report = report.finish();
        assert!(!report.passed);
        assert_eq!(report.failures().len(), 1);
        assert!(report.summary().contains("FAIL b: 3 > 2"));
    }
}
