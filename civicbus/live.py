"""The live terminal view of `civicbus up` and the metrics endpoint it serves."""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector


def serve_metrics(port: int, metrics_dir: str, *extra_collectors) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    for collector in extra_collectors:
        registry.register(collector)
    start_http_server(port, addr="127.0.0.1", registry=registry)
    return registry


def totals(registry: CollectorRegistry, metric: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                out[sample.labels.get(label, "")] += sample.value
    return out


class LiveView:
    """Once a second: events/s delivered per department, published per department, dead letters."""

    def __init__(self, metrics_dir: str):
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=metrics_dir)
        self._last: dict[str, dict[str, float]] = {}
        self._last_time = time.monotonic()

    def _rates(self, name: str, metric: str, label: str, elapsed: float) -> dict[str, tuple[float, float]]:
        now = totals(self.registry, metric, label)
        before = self._last.get(name, {})
        self._last[name] = now
        return {k: (v, (v - before.get(k, 0.0)) / elapsed) for k, v in now.items()}

    def render(self) -> None:
        elapsed = max(1e-3, time.monotonic() - self._last_time)
        self._last_time = time.monotonic()
        published = self._rates("published", "civicbus_published_total", "department", elapsed)
        delivered = self._rates("delivered", "civicbus_delivered_total", "department", elapsed)
        rejected = self._rates("rejected", "civicbus_rejected_total", "reason", elapsed)
        stamp = time.strftime("%H:%M:%S")
        pub = "  ".join(f"{d} {r:.0f}/s" for d, (_, r) in sorted(published.items())) or "-"
        dlv = "  ".join(f"{d} {r:.0f}/s" for d, (_, r) in sorted(delivered.items()) if r > 0) or "-"
        dead = sum(total for total, _ in rejected.values())
        print(f"[{stamp}] published: {pub}\n           delivered: {dlv}\n           dead letters so far: {dead:.0f}", flush=True)
