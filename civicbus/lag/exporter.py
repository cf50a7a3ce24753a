"""The lag exporter: polls offsets in the background, serves the last figures to Prometheus.

Scrapes never wait for Kafka: a poll every `interval_s` builds a LagReport and `collect()`
turns the newest one into metric families. Metric names are kafka-lag-exporter's (DESIGN.md),
so its dashboards work; what it lacks (status, state, exporter health) is civicbus_*.
An unreachable cluster gives civicbus_lag_exporter_up 0 and no lag series (stale figures would
mislead); the next poll that gets an answer brings everything back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from civicbus.kafka import security_config
from civicbus.lag.monitor import GroupLag, LagMonitor
from civicbus.lag.offsets import GROUP_STATES, KafkaUnavailable, OffsetsReader
from civicbus.lag.status import Status
from civicbus.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagReport:
    time: float
    up: bool
    duration_s: float
    groups: tuple[GroupLag, ...] = ()
    error: str = ""
    list_offsets_s: float = 0.0  # Snapshot.list_offsets_s

    def group(self, name: str) -> GroupLag | None:
        return next((g for g in self.groups if g.group == name), None)


@dataclass(eq=False)  # hashable by identity: prometheus registries key collectors by it
class LagExporter(Collector):
    reader: OffsetsReader
    monitor: LagMonitor
    interval_s: float = 5.0
    report: LagReport = field(default_factory=lambda: LagReport(time.time(), False, 0.0, error="not polled yet"))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def poll(self) -> LagReport:
        """Read one snapshot and publish its report; never raises for an unreachable cluster."""
        started = time.perf_counter()
        try:
            snapshot = self.reader.read()
            groups = self.monitor.update(snapshot)
            report = LagReport(time.time(), True, time.perf_counter() - started, groups, list_offsets_s=snapshot.list_offsets_s)
        except KafkaUnavailable as e:
            report = LagReport(time.time(), False, time.perf_counter() - started, error=str(e))
        if report.up != self.report.up:
            log.log(logging.INFO if report.up else logging.WARNING, "lag exporter %s%s",
                    "reaches Kafka" if report.up else "cannot reach Kafka: ", report.error)
        self.report = report
        return report

    def start(self) -> LagExporter:
        self._thread = threading.Thread(target=self._run, name="lag-exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.reader.timeout_s * 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception:  # a bug in one poll must not end monitoring
                log.exception("lag exporter poll failed")
            self._stop.wait(pause_after(time.monotonic() - started, self.interval_s))

    def collect(self):
        return report_metrics(self.report)


# The most of its time the exporter spends polling: what it asks costs the broker about as long
# as the answer takes, and the embedded broker's answers slow down as its logs grow (offsets.py).
MAX_POLLING_SHARE = 0.1


def pause_after(poll_s: float, interval_s: float) -> float:
    """The wait before the next poll: polls `interval_s` apart, but one that took long is
    followed by a wait long enough that polling stays under MAX_POLLING_SHARE of the time."""
    return max(interval_s - poll_s, poll_s * (1 - MAX_POLLING_SHARE) / MAX_POLLING_SHARE)


def report_metrics(report: LagReport) -> list[GaugeMetricFamily]:
    up = GaugeMetricFamily("civicbus_lag_exporter_up", "1 if the last poll of the Kafka cluster succeeded.")
    up.add_metric([], 1.0 if report.up else 0.0)
    duration = GaugeMetricFamily("civicbus_lag_exporter_scrape_duration_seconds", "Time the last poll of the Kafka cluster took.")
    duration.add_metric([], report.duration_s)
    list_offsets = GaugeMetricFamily("civicbus_broker_list_offsets_seconds",
                                     "Time the broker took to answer the high watermarks of every consumed partition "
                                     "(the embedded broker slows down as its partitions grow).")
    list_offsets.add_metric([], report.list_offsets_s)
    families = [up, duration, list_offsets]
    if not report.up:
        return families
    gtp, g = ["group", "topic", "partition"], ["group"]
    offset = GaugeMetricFamily("kafka_consumergroup_group_offset", "Last committed offset of a group partition.", labels=gtp)
    lag = GaugeMetricFamily("kafka_consumergroup_group_lag", "Offset lag of a group partition (never negative).", labels=gtp)
    lag_s = GaugeMetricFamily("kafka_consumergroup_group_lag_seconds", "Estimated time lag of a group partition.", labels=gtp)
    max_lag = GaugeMetricFamily("kafka_consumergroup_group_max_lag", "Largest offset lag over a group's partitions.", labels=g)
    max_lag_s = GaugeMetricFamily("kafka_consumergroup_group_max_lag_seconds", "Largest time lag over a group's partitions.", labels=g)
    sum_lag = GaugeMetricFamily("kafka_consumergroup_group_sum_lag", "Offset lag summed over a group's partitions.", labels=g)
    topic_sum = GaugeMetricFamily("kafka_consumergroup_group_topic_sum_lag", "Offset lag summed per group and topic.", labels=["group", "topic"])
    latest = GaugeMetricFamily("kafka_partition_latest_offset", "High watermark of a partition.", labels=["topic", "partition"])
    state = GaugeMetricFamily("civicbus_consumergroup_state", "1 for the group's current state as the broker reports it.", labels=["group", "state"])
    status = GaugeMetricFamily("civicbus_consumergroup_status", "1 for the group's sliding-window status (Burrow's rules).", labels=["group", "status"])
    seen_partitions = set()
    for group in report.groups:
        for p in group.partitions:
            labels = [group.group, p.topic, str(p.partition)]
            offset.add_metric(labels, float("nan") if p.committed is None else float(p.committed))
            lag.add_metric(labels, p.lag)
            lag_s.add_metric(labels, p.lag_seconds)
            if (p.topic, p.partition) not in seen_partitions:
                seen_partitions.add((p.topic, p.partition))
                latest.add_metric([p.topic, str(p.partition)], float(p.latest))
        for topic, total in sorted(group.topic_sum_lag().items()):
            topic_sum.add_metric([group.group, topic], total)
        max_lag.add_metric([group.group], group.max_lag)
        max_lag_s.add_metric([group.group], group.max_lag_seconds)
        sum_lag.add_metric([group.group], group.sum_lag)
        for name in GROUP_STATES:
            state.add_metric([group.group, name], 1.0 if group.state == name else 0.0)
        for s in Status:
            status.add_metric([group.group, s.value], 1.0 if group.status is s else 0.0)
    return families + [offset, lag, lag_s, max_lag, max_lag_s, sum_lag, topic_sum, latest, state, status]


def build_exporter(settings: Settings, bootstrap: str, window: int | None = None) -> LagExporter:
    """The exporter for this bus: only the groups of the settings' namespace (all in production)."""
    pattern = "^" + re.escape(settings.namespace) if settings.namespace else ""
    monitor = LagMonitor(window or settings.lag_window, settings.lag_lookup_points)
    reader = OffsetsReader(bootstrap, pattern, **security_config(settings))
    return LagExporter(reader, monitor, settings.lag_poll_interval_s)
