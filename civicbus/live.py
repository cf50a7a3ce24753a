"""The live terminal view of `civicbus up` (`make run`) and the metrics endpoint it serves.

Once a second: events/s published and delivered per department (from the civicbus_* counters
the children write to the multiprocess folder), lag and status per consumer group (from the lag
exporter's newest report), and overdue cases per department.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from civicbus.lag.exporter import LagExporter, LagReport


# When the live view warns that the broker is slowing down (civicbus_broker_list_offsets_seconds).
BROKER_SLOW_S = 0.5


def redraw_over(lines: int) -> str:
    """ANSI: back to the start of the previous frame and erase it, keeping what `up` printed above."""
    return f"\x1b[{lines}F\x1b[J" if lines else ""


def serve_metrics(port: int, metrics_dir: str, *extra_collectors, host: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    for collector in extra_collectors:
        registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
    return registry


def totals(registry: CollectorRegistry, metric: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                out[sample.labels.get(label, "")] += sample.value
    return out


@dataclass(frozen=True)
class Figures:
    """What one frame shows; rates are per second since the previous frame."""

    published: dict[str, float]
    delivered: dict[str, float]
    overdue: dict[str, float]
    open_cases: float
    dead_letters: float
    lag: LagReport | None
    fetch_waits: dict[str, float] = field(default_factory=dict)  # stage -> seconds (civicbus.quirks, 10)


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def format_frame(stamp: str, figures: Figures) -> str:
    lines = [f"civicbus live {stamp}  (Ctrl-C stops everything)", "", f"{'department':<32}{'published/s':>12}{'delivered/s':>12}"]
    departments = sorted(set(figures.published) | set(figures.delivered))
    for d in departments:
        lines.append(f"{d:<32}{figures.published.get(d, 0.0):>12.1f}{figures.delivered.get(d, 0.0):>12.1f}")
    if not departments:
        lines.append("  (no events yet)")
    lines += ["", f"{'consumer group':<40}{'status':<9}{'lag':>8}{'lag s':>8}"]
    if figures.lag is None or not figures.lag.up:
        lines.append(f"  lag unknown: {figures.lag.error if figures.lag else 'no exporter'}")
    else:
        for g in figures.lag.groups:
            lines.append(f"{g.group:<40}{g.status.value:<9}{g.sum_lag:>8.0f}{_seconds(g.max_lag_seconds):>8}")
    if figures.fetch_waits:
        waits = ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in sorted(figures.fetch_waits.items()))
        lines += ["", f"stage fetch waits: {waits}"]
    if figures.lag is not None and figures.lag.up and figures.lag.list_offsets_s > BROKER_SLOW_S:
        lines += ["", f"WARNING broker slow: {figures.lag.list_offsets_s:.1f} s to answer offsets. The embedded broker lists every "
                  "batch a partition holds for each read, and gets slower the longer it runs (README, broker facts); "
                  "for long runs use Apache Kafka (docker compose, CIVICBUS_BOOTSTRAP)."]
    overdue = ", ".join(f"{d} {n:.0f}" for d, n in sorted(figures.overdue.items()) if n > 0) or "none"
    lines += ["", f"overdue cases: {overdue}   open cases: {figures.open_cases:.0f}   dead letters so far: {figures.dead_letters:.0f}"]
    return "\n".join(lines)


class LiveView:
    def __init__(self, metrics_dir: str, exporter: LagExporter | None = None):
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=metrics_dir)
        self.exporter = exporter
        self._last: dict[str, dict[str, float]] = {}
        self._last_time = time.monotonic()
        self._in_place = sys.stdout.isatty()
        self._previous_lines = 0

    def _rates(self, metric: str, elapsed: float) -> dict[str, float]:
        now = totals(self.registry, metric, "department")
        before = self._last.get(metric, {})
        self._last[metric] = now
        return {k: (v - before.get(k, 0.0)) / elapsed for k, v in now.items()}

    def figures(self) -> Figures:
        elapsed = max(1e-3, time.monotonic() - self._last_time)
        self._last_time = time.monotonic()
        return Figures(
            published=self._rates("civicbus_published_total", elapsed),
            delivered=self._rates("civicbus_delivered_total", elapsed),
            overdue=dict(totals(self.registry, "civicbus_overdue_cases", "department")),
            open_cases=sum(totals(self.registry, "civicbus_open_cases", "department").values()),
            dead_letters=sum(totals(self.registry, "civicbus_rejected_total", "reason").values()),
            lag=self.exporter.report if self.exporter else None,
            fetch_waits=dict(totals(self.registry, "civicbus_stage_fetch_wait_seconds", "stage")),
        )

    def render(self) -> None:
        frame = format_frame(time.strftime("%H:%M:%S"), self.figures())
        if self._in_place:
            print(redraw_over(self._previous_lines) + frame, flush=True)
            self._previous_lines = frame.count("\n") + 1
        else:  # a log file or a pipe: one frame after the other
            print(frame + "\n", flush=True)
