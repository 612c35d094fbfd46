//! What a run measured: counters, errors by kind and HDR histograms, which
//! merge across connections and processes, a JSON report and a summary.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram records, in microseconds (one hour); larger
/// values are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Debug, Clone)]
pub struct Micros(Histogram<u64>);

impl Default for Micros {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Micros {
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Micros) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Percentiles {
        let at = |q: f64| self.0.value_at_quantile(q);
        Percentiles {
            count: self.0.len(),
            min_us: if self.0.is_empty() { 0 } else { self.0.min() },
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: self.0.max(),
            mean_us: self.0.mean(),
        }
    }

    /// Every recorded value with its count: lossless, for merging reports.
    fn to_pairs(&self) -> Vec<[u64; 2]> {
        self.0
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect()
    }

    fn from_pairs(pairs: &[[u64; 2]]) -> Self {
        let mut h = Self::default();
        for [value, count] in pairs {
            let _ = h.0.record_n(*value, *count);
        }
        h
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Everything one process measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub connections: u64,
    /// Connections whose stream ended by itself (the server closed it).
    pub completed: u64,
    /// Connections the generator closed (`--hold` or `--events` reached).
    pub closed_by_client: u64,
    pub events: u64,
    pub body_bytes: u64,
    pub comments: u64,
    /// Events or lines longer than `--max-event-bytes`, skipped.
    pub oversized: u64,
    /// Events whose sequence skipped numbers, by how many were missing.
    pub gaps: u64,
    pub missing: u64,
    /// Events whose sequence was not above the previous one.
    pub duplicates: u64,
    pub errors: BTreeMap<String, u64>,
    /// Connect start to the response's headers.
    pub ttfb: Micros,
    /// Connect start to the first event.
    pub ttfe: Micros,
    /// From the event's own timestamp to its arrival.
    pub latency: Micros,
    /// Connect start to the end of the stream.
    pub duration: Micros,
    /// Publisher: requests sent and how they were answered.
    pub published: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_rtt: Micros,
    /// When the first and the last event arrived (µs since the Unix epoch):
    /// the window over which deliveries per second are counted.
    pub first_event_us: Option<u64>,
    pub last_event_us: Option<u64>,
}

impl Stats {
    /// Notes that an event arrived at `now_us`.
    pub fn arrived(&mut self, now_us: u64) {
        self.first_event_us = Some(self.first_event_us.map_or(now_us, |t| t.min(now_us)));
        self.last_event_us = Some(self.last_event_us.map_or(now_us, |t| t.max(now_us)));
    }

    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.connections += other.connections;
        self.completed += other.completed;
        self.closed_by_client += other.closed_by_client;
        self.events += other.events;
        self.body_bytes += other.body_bytes;
        self.comments += other.comments;
        self.oversized += other.oversized;
        self.gaps += other.gaps;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.ttfb.merge(&other.ttfb);
        self.ttfe.merge(&other.ttfe);
        self.latency.merge(&other.latency);
        self.duration.merge(&other.duration);
        self.published += other.published;
        for (k, v) in &other.publish_errors {
            *self.publish_errors.entry(k.clone()).or_default() += v;
        }
        self.publish_rtt.merge(&other.publish_rtt);
        if let Some(t) = other.first_event_us {
            self.arrived(t);
        }
        if let Some(t) = other.last_event_us {
            self.arrived(t);
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What a process hands to the one that started it: lossless.
#[derive(Debug, Serialize, Deserialize)]
pub struct Partial {
    counters: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    publish_errors: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Vec<[u64; 2]>>,
}

impl From<&Stats> for Partial {
    fn from(s: &Stats) -> Self {
        let counters = [
            ("connections", s.connections),
            ("completed", s.completed),
            ("closed_by_client", s.closed_by_client),
            ("events", s.events),
            ("body_bytes", s.body_bytes),
            ("comments", s.comments),
            ("oversized", s.oversized),
            ("gaps", s.gaps),
            ("missing", s.missing),
            ("duplicates", s.duplicates),
            ("published", s.published),
            ("first_event_us", s.first_event_us.unwrap_or(0)),
            ("last_event_us", s.last_event_us.unwrap_or(0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let histograms = [
            ("ttfb", &s.ttfb),
            ("ttfe", &s.ttfe),
            ("latency", &s.latency),
            ("duration", &s.duration),
            ("publish_rtt", &s.publish_rtt),
        ]
        .into_iter()
        .map(|(k, h)| (k.to_string(), h.to_pairs()))
        .collect();
        Self {
            counters,
            errors: s.errors.clone(),
            publish_errors: s.publish_errors.clone(),
            histograms,
        }
    }
}

impl From<&Partial> for Stats {
    fn from(p: &Partial) -> Self {
        let c = |k: &str| p.counters.get(k).copied().unwrap_or(0);
        let h = |k: &str| {
            p.histograms
                .get(k)
                .map(|pairs| Micros::from_pairs(pairs))
                .unwrap_or_default()
        };
        Stats {
            connections: c("connections"),
            completed: c("completed"),
            closed_by_client: c("closed_by_client"),
            events: c("events"),
            body_bytes: c("body_bytes"),
            comments: c("comments"),
            oversized: c("oversized"),
            gaps: c("gaps"),
            missing: c("missing"),
            duplicates: c("duplicates"),
            published: c("published"),
            first_event_us: Some(c("first_event_us")).filter(|t| *t > 0),
            last_event_us: Some(c("last_event_us")).filter(|t| *t > 0),
            errors: p.errors.clone(),
            publish_errors: p.publish_errors.clone(),
            ttfb: h("ttfb"),
            ttfe: h("ttfe"),
            latency: h("latency"),
            duration: h("duration"),
            publish_rtt: h("publish_rtt"),
        }
    }
}

/// The JSON report of a whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub settings: serde_json::Value,
    pub wall_seconds: f64,
    pub connections: u64,
    pub completed: u64,
    pub closed_by_client: u64,
    pub errors: BTreeMap<String, u64>,
    pub events: u64,
    pub events_per_second: f64,
    /// From the first event's arrival to the last one's.
    pub event_window_seconds: f64,
    /// Events over that window: deliveries per second while events flowed.
    pub events_per_second_in_window: f64,
    pub body_bytes: u64,
    pub heartbeats: u64,
    pub oversized: u64,
    pub gaps: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub ttfb: Percentiles,
    pub ttfe: Percentiles,
    pub latency: Percentiles,
    pub duration: Percentiles,
    pub published: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_rtt: Percentiles,
}

impl Report {
    pub fn new(stats: &Stats, settings: serde_json::Value, wall_seconds: f64) -> Self {
        let window = match (stats.first_event_us, stats.last_event_us) {
            (Some(first), Some(last)) => (last - first) as f64 / 1e6,
            _ => 0.0,
        };
        Self {
            settings,
            wall_seconds,
            connections: stats.connections,
            completed: stats.completed,
            closed_by_client: stats.closed_by_client,
            errors: stats.errors.clone(),
            events: stats.events,
            events_per_second: if wall_seconds > 0.0 {
                stats.events as f64 / wall_seconds
            } else {
                0.0
            },
            event_window_seconds: window,
            events_per_second_in_window: if window > 0.0 {
                stats.events as f64 / window
            } else {
                0.0
            },
            body_bytes: stats.body_bytes,
            heartbeats: stats.comments,
            oversized: stats.oversized,
            gaps: stats.gaps,
            missing: stats.missing,
            duplicates: stats.duplicates,
            ttfb: stats.ttfb.summary(),
            ttfe: stats.ttfe.summary(),
            latency: stats.latency.summary(),
            duration: stats.duration.summary(),
            published: stats.published,
            publish_errors: stats.publish_errors.clone(),
            publish_rtt: stats.publish_rtt.summary(),
        }
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let line = |name: &str, p: &Percentiles| {
            if p.count == 0 {
                return format!("  {name:<10} -\n");
            }
            format!(
                "  {name:<10} p50 {:>9.2} ms  p90 {:>9.2} ms  p99 {:>9.2} ms  max {:>9.2} ms  (n={})\n",
                ms(p.p50_us),
                ms(p.p90_us),
                ms(p.p99_us),
                ms(p.max_us),
                p.count
            )
        };
        let mut out = format!(
            "connections {}: {} completed, {} closed by the client, {} errors {:?}\n\
             events {} ({:.0}/s over {:.2} s; {:.0}/s over the {:.2} s they flowed), \
             {} body bytes, {} heartbeats\n\
             sequence: {} gaps ({} missing), {} duplicates\n",
            self.connections,
            self.completed,
            self.closed_by_client,
            self.errors.values().sum::<u64>(),
            self.errors,
            self.events,
            self.events_per_second,
            self.wall_seconds,
            self.events_per_second_in_window,
            self.event_window_seconds,
            self.body_bytes,
            self.heartbeats,
            self.gaps,
            self.missing,
            self.duplicates,
        );
        out += &line("ttfb", &self.ttfb);
        out += &line("ttfe", &self.ttfe);
        out += &line("latency", &self.latency);
        out += &line("duration", &self.duration);
        if self.published > 0 || !self.publish_errors.is_empty() {
            out += &format!(
                "published {} (errors {:?})\n",
                self.published, self.publish_errors
            );
            out += &line("publish", &self.publish_rtt);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_merge_losslessly() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for v in 1..=1000 {
            a.latency.record(v);
            b.latency.record(v * 1000);
        }
        a.events = 3;
        b.error("connect");
        let a2 = Stats::from(
            &serde_json::from_str::<Partial>(&serde_json::to_string(&Partial::from(&a)).unwrap())
                .unwrap(),
        );
        let mut all = a2;
        all.merge(&b);
        assert_eq!(all.latency.count(), 2000);
        assert_eq!(all.events, 3);
        assert_eq!(all.errors["connect"], 1);
        let p = all.latency.summary();
        assert!(p.p50_us >= 999 && p.p50_us <= 1001, "{p:?}");
        assert!(p.max_us >= 999_000, "{p:?}");
    }
}
