#!/usr/bin/env python3
"""The benchmark results as a Markdown table and two plots.

Reads the JSON reports that tests/bench/*.sh wrote to tests/bench/results/
(loadgen's reports, perf's task-clock counts, instructions.json) and writes
the table to stdout and, next to BENCHMARKS.md:

- BENCHMARKS-fanout.svg: publish-to-delivery latency (p50, p99) against the
  delivery rate each run reached, the gateway beside nchan, at each
  subscriber count;
- BENCHMARKS-memory.svg: RSS against open connections while idle streams
  were being opened (the gateway, a bare hyper server, the same streams
  with no HTTP library, nchan).

Standard library only: python3 tests/bench/report.py
"""

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# BENCH_RESULTS: a side run's reports (as lib.sh takes it).
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "tests" / "bench" / "results"))
COLORS = {"gateway": "#1f6feb", "nchan": "#d1242f", "hyper": "#6e7781", "no HTTP library": "#1a7f37"}


def load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def cpu_seconds(report):
    samples = report.get("processes", {}).get("samples", [])
    return samples[-1]["cpu_s"] - samples[0]["cpu_s"] if len(samples) > 1 else None


def fanout_runs():
    """Every fanout-SERVER-SUBSCRIBERS-RATE.json, as dicts."""
    runs = []
    for path in sorted(RESULTS.glob("fanout-*-*-*.json")):
        match = re.fullmatch(r"fanout-(\w+)-(\d+)-(\d+)\.json", path.name)
        if not match:
            continue
        report = json.loads(path.read_text())
        server, subscribers, rate = match[1], int(match[2]), int(match[3])
        cpu = cpu_seconds(report)
        runs.append({
            "server": server,
            "subscribers": subscribers,
            "rate": rate,
            "deliveries_per_s": report["events_per_second_in_window"],
            "deliveries": report["events"],
            "missing": report["missing"] + report["gaps"],
            "duplicates": report["duplicates"],
            "p50_ms": report["latency"]["p50_us"] / 1000,
            "p99_ms": report["latency"]["p99_us"] / 1000,
            "publish_ms": report["publish_rtt"]["p50_us"] / 1000,
            "cpu_per_million": cpu / report["events"] * 1e6 if cpu and report["events"] else None,
        })
    return runs


def idle_runs():
    """(label, report) of each idle run found."""
    found = []
    for label, name in [("gateway", "idle.json"), ("hyper", "idle-floor.json"),
                        ("no HTTP library", "idle-floor-raw.json"), ("nchan", "idle-nchan.json")]:
        report = load(name)
        if report:
            found.append((label, report))
    return found


def rss_per_connection(report):
    samples = report["processes"]["samples"]
    growth = max(s["rss_kib"] for s in samples) - samples[0]["rss_kib"]
    return growth * 1024 / report["connections"]


def table():
    lines = ["| server | subscribers | asked (events/s) | deliveries/s | p50 | p99 | publish p50 | CPU-s per 10^6 deliveries | lost / repeated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in fanout_runs():
        cpu = f"{run['cpu_per_million']:.2f}" if run["cpu_per_million"] else "n/a"
        lines.append(
            f"| {run['server']} | {run['subscribers']:,} | {run['rate']} | {run['deliveries_per_s']:,.0f} "
            f"| {run['p50_ms']:.1f} ms | {run['p99_ms']:.1f} ms | {run['publish_ms']:.1f} ms | {cpu} "
            f"| {run['missing']} / {run['duplicates']} |")
    lines += ["", "| idle streams | connections | RSS per connection |", "|---|---|---|"]
    for label, report in idle_runs():
        lines.append(f"| {label} | {report['connections']:,} | {rss_per_connection(report) / 1000:.1f} KB |")
    instructions = load("instructions.json")
    if instructions:
        lines += ["", "| instructions per delivery (callgrind) | subscribers | count |", "|---|---|---|"]
        for server in ("gateway", "nchan"):
            count = instructions[server]["instructions_per_delivery"]
            if count is not None:
                lines.append(f"| {server} | {instructions['subscribers']:,} | {count:,} |")
    gateway, ceiling = load("firehose-gateway.json"), load("firehose-ceiling.json")
    if gateway and ceiling:
        g, c = gateway["events_per_second_in_window"], ceiling["events_per_second_in_window"]
        lines += ["", f"Firehose: gateway {g / 1e6:.2f} M events/s, bare hyper {c / 1e6:.2f} M/s: {g / c:.0%}."]
    return "\n".join(lines)


class Plot:
    """A scatter/line plot on linear axes, as SVG text."""

    def __init__(self, title, x_label, y_label, x_max, y_max, width=720, height=420):
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.x_max, self.y_max = nice(x_max), nice(y_max)
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 70, 190, 40, 50
        self.items = []

    def x(self, value):
        return self.left + value / self.x_max * (self.width - self.left - self.right)

    def y(self, value):
        return self.height - self.bottom - value / self.y_max * (self.height - self.top - self.bottom)

    def line(self, points, color, dashed=False):
        path = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in points)
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        self.items.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')

    def point(self, a, b, color, hollow=False):
        fill = "white" if hollow else color
        self.items.append(f'<circle cx="{self.x(a):.1f}" cy="{self.y(b):.1f}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.6"/>')

    def svg(self, legend):
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" font-family="sans-serif" font-size="12">',
               '<rect width="100%" height="100%" fill="white"/>',
               f'<text x="{self.width / 2}" y="22" text-anchor="middle" font-size="14">{self.title}</text>']
        for i in range(6):
            xv, yv = self.x_max * i / 5, self.y_max * i / 5
            out.append(f'<line x1="{self.x(xv):.1f}" y1="{self.y(0):.1f}" x2="{self.x(xv):.1f}" y2="{self.y(self.y_max):.1f}" stroke="#eee"/>')
            out.append(f'<line x1="{self.x(0):.1f}" y1="{self.y(yv):.1f}" x2="{self.x(self.x_max):.1f}" y2="{self.y(yv):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{self.x(xv):.1f}" y="{self.y(0) + 16:.1f}" text-anchor="middle">{short(xv)}</text>')
            out.append(f'<text x="{self.x(0) - 6:.1f}" y="{self.y(yv) + 4:.1f}" text-anchor="end">{short(yv)}</text>')
        out.append(f'<line x1="{self.x(0)}" y1="{self.y(0)}" x2="{self.x(self.x_max)}" y2="{self.y(0)}" stroke="black"/>')
        out.append(f'<line x1="{self.x(0)}" y1="{self.y(0)}" x2="{self.x(0)}" y2="{self.y(self.y_max)}" stroke="black"/>')
        out.append(f'<text x="{(self.x(0) + self.x(self.x_max)) / 2}" y="{self.height - 12}" text-anchor="middle">{self.x_label}</text>')
        out.append(f'<text transform="translate(16,{(self.y(0) + self.y(self.y_max)) / 2}) rotate(-90)" text-anchor="middle">{self.y_label}</text>')
        out += self.items
        for i, (label, color, hollow) in enumerate(legend):
            ly = self.top + 10 + i * 20
            lx = self.width - self.right + 16
            fill = "white" if hollow else color
            out.append(f'<circle cx="{lx}" cy="{ly}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.6"/>')
            out.append(f'<text x="{lx + 10}" y="{ly + 4}">{label}</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"


def nice(value):
    """A round upper bound for an axis."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def short(value):
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def fanout_plot(runs):
    plot = Plot("Fan-out: publish-to-delivery latency against deliveries per second",
                "deliveries per second", "latency (ms)",
                max(r["deliveries_per_s"] for r in runs), max(r["p99_ms"] for r in runs))
    legend = []
    for server in ("gateway", "nchan"):
        for subscribers in sorted({r["subscribers"] for r in runs}):
            mine = sorted((r for r in runs if r["server"] == server and r["subscribers"] == subscribers),
                          key=lambda r: r["deliveries_per_s"])
            if not mine:
                continue
            color = COLORS[server]
            small = subscribers < max(r["subscribers"] for r in runs)
            for key, hollow in (("p50_ms", True), ("p99_ms", False)):
                plot.line([(r["deliveries_per_s"], r[key]) for r in mine], color, dashed=small)
                for r in mine:
                    plot.point(r["deliveries_per_s"], r[key], color, hollow)
            legend += [(f"{server} {subscribers:,} p50", color, True), (f"{server} {subscribers:,} p99", color, False)]
    return plot.svg(legend)


def memory_plot(runs):
    """RSS against the connections open so far (loadgen opens them at a steady
    rate, `rate` per second, so connections at a sample are rate × time)."""
    series = []
    for label, report in runs:
        samples = report["processes"]["samples"]
        rate = report["settings"]["rate"] or report["connections"]
        base = samples[0]["rss_kib"]
        points = {}
        for s in samples:
            x = round(min(report["connections"], rate * s["at_s"]))
            points[x] = max(points.get(x, 0), (s["rss_kib"] - base) / 1024)
        series.append((label, sorted(points.items())))
    plot = Plot("Idle streams: RSS growth against open connections",
                "connections", "RSS growth (MiB)",
                max(p[0] for _, pts in series for p in pts), max(p[1] for _, pts in series for p in pts))
    for label, points in series:
        plot.line(points, COLORS[label])
    legend = [(f"{label}: {rss_per_connection(report) / 1000:.1f} KB each", COLORS[label], False) for label, report in runs]
    return plot.svg(legend)


def main():
    print(table())
    # A side run's plots go beside its reports, not over the committed ones.
    out = RESULTS if "BENCH_RESULTS" in os.environ else ROOT
    runs = fanout_runs()
    if runs:
        (out / "BENCHMARKS-fanout.svg").write_text(fanout_plot(runs))
    idle = idle_runs()
    if idle:
        (out / "BENCHMARKS-memory.svg").write_text(memory_plot(idle))
    print(f"\nplots: {out}/BENCHMARKS-fanout.svg, {out}/BENCHMARKS-memory.svg", file=sys.stderr)


if __name__ == "__main__":
    main()
