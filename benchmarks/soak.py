"""Soak: the whole pipeline under the simulator's steady traffic for many minutes, measured per minute.

    python -m benchmarks soak --rate 20 --minutes 60

An own embedded broker (or CIVICBUS_BOOTSTRAP), the three stages as `civicbus process` children,
and `civicbus simulate` publishing the city's traffic (reports, calls, camera alerts and the
departments' status updates) at RATE events/s. A stock confluent-kafka consumer reads every feed
read_committed, as a department would. Each minute it records:
- lag per stage group, in records (high watermark - committed) and in seconds (age of the oldest
  record not yet committed);
- p50/p99 publish -> feed (the feed record's arrival - the inbound record's timestamp);
- records each stage processed and events delivered (the stages' own counters);
- open cases;
- RSS and CPU seconds of every process, the broker included;
- how long the broker takes to answer ListOffsets for civic.dist.events: it lists every batch of
  the partition, as a fetch does, so it shows the broker slowing down as its logs grow.
Targets (issue 10): every group's lag under 5 s at every minute and p99 publish -> feed under 1 s.
Results: benchmarks/results/soak-<rate>.json.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from benchmarks.harness import bench_bus
from benchmarks.report import percentile, write_result
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from civicbus.wire import read_published_ms

STAGES = ("ingest", "cases", "fanout")
TARGET_LAG_S = 5.0
TARGET_P99_MS = 1000.0


class FeedLatency:
    """Reads every feed (read_committed, no group) and keeps publish -> arrival per minute."""

    def __init__(self, bootstrap: str, feeds: list[str]):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(feed, 0, 0) for feed in feeds])
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(5000, 0.1):
                if message.error():
                    continue
                published = read_published_ms(message.headers())
                if published:
                    with self.lock:
                        self.latencies_ms.append(time.time() * 1000 - published)
        self.consumer.close()

    def take(self) -> list[float]:
        with self.lock:
            taken, self.latencies_ms = self.latencies_ms, []
        return taken


class GroupLag:
    """Lag of the stages' consumer groups: records, and the age of the oldest uncommitted record."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-lag-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": "read_uncommitted"})

    def measure(self, group: str) -> dict:
        from confluent_kafka import ConsumerGroupTopicPartitions

        future = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        committed = [tp for tp in future.result(timeout=30).topic_partitions if tp.offset >= 0]
        records, oldest_ms = 0, None
        for tp in committed:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)
            behind = max(0, high - tp.offset)
            records += behind
            if behind:
                timestamp = self._timestamp_at(tp)
                if timestamp is not None:
                    oldest_ms = timestamp if oldest_ms is None else min(oldest_ms, timestamp)
        lag_s = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
        return {"records": records, "seconds": round(lag_s, 2), "committed": sum(tp.offset for tp in committed)}

    def _timestamp_at(self, tp: TopicPartition) -> int | None:
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset)])
        message = self.consumer.poll(5.0)
        self.consumer.unassign()
        if message is None or message.error():
            return None
        return message.timestamp()[1]

    def offsets_round_trip_ms(self, topic: str) -> float:
        started = time.perf_counter()
        self.consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=60, cached=False)
        return round((time.perf_counter() - started) * 1000, 1)


def stage_counters(metrics_dir: str) -> dict[str, float]:
    """civicbus_* counters and gauges summed over the stage processes."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, metrics_dir)
    totals: dict[str, float] = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "civicbus_stage_records_total":
                totals[f"records.{sample.labels['stage']}"] += sample.value
            elif sample.name in ("civicbus_delivered_total", "civicbus_routed_total", "civicbus_rejected_total"):
                totals[sample.name.removeprefix("civicbus_").removesuffix("_total")] += sample.value
            elif sample.name == "civicbus_open_cases":
                totals["open_cases"] += sample.value
    return dict(totals)


def processes(stages) -> dict[str, psutil.Process]:
    found = {name: psutil.Process(p.pid) for name, p in stages.processes.items()}
    for child in psutil.Process().children(recursive=True):
        try:
            if "tansu" in child.name() or "tansu" in " ".join(child.cmdline()[:1]):
                found["broker"] = child
        except psutil.Error:
            continue
    return found


def usage(procs: dict[str, psutil.Process]) -> dict[str, dict]:
    out = {}
    for name, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[name] = {"rss_mb": round(proc.memory_info().rss / 2**20, 1), "cpu_s": round(times.user + times.system, 1)}
        except psutil.Error:
            out[name] = {"rss_mb": None, "cpu_s": None}
    return out


def run(rate: float, minutes: int, seed: int = 6) -> Path:
    metrics_dir = tempfile.mkdtemp(prefix="civicbus-soak-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the stage processes inherit it
    rows = []
    with bench_bus() as (ctx, stages):
        for stage in STAGES:
            stages.start_stage(stage)
        stages.start("simulator", ["-m", "civicbus.cli", "simulate", "--rate", str(rate), "--duration", str(minutes * 60 + 30),
                                   "--seed", str(seed)])
        feeds = FeedLatency(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
        feeds.thread.start()
        lag = GroupLag(ctx.bootstrap)
        procs = processes(stages)
        previous_counts: dict[str, float] = {}
        previous_cpu = usage(procs)
        started = time.monotonic()
        try:
            for minute in range(1, minutes + 1):
                time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
                latencies = feeds.take()
                counts = stage_counters(metrics_dir)
                now_usage = usage(procs)
                row = {
                    "minute": minute,
                    "load_average_1m": round(os.getloadavg()[0], 2),  # the machine's, shared with whatever else runs
                    "lag": {stage: lag.measure(ctx.topology.group(f"civicbus-{stage}")) for stage in STAGES},
                    "feed_records": len(latencies),
                    "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
                    "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
                    "per_minute": {k: round(v - previous_counts.get(k, 0.0)) for k, v in counts.items() if k != "open_cases"},
                    "open_cases": counts.get("open_cases"),
                    "processes": {name: {"rss_mb": u["rss_mb"],
                                         "cpu_s_per_min": None if u["cpu_s"] is None or previous_cpu[name]["cpu_s"] is None
                                         else round(u["cpu_s"] - previous_cpu[name]["cpu_s"], 1)}
                                  for name, u in now_usage.items()},
                    "broker_list_offsets_ms": {"dist.events": lag.offsets_round_trip_ms(ctx.topology.name(DIST_EVENTS)),
                                               "pipe.cases": lag.offsets_round_trip_ms(ctx.topology.name(PIPE_CASES))},
                }
                previous_counts, previous_cpu = counts, now_usage
                rows.append(row)
                lags = ", ".join(f"{s}: {v['records']} rec/{v['seconds']} s" for s, v in row["lag"].items())
                print(f"minute {minute}: lag {{{lags}}} "
                      f"p50/p99 {row['p50_ms']}/{row['p99_ms']} ms, feed records {row['feed_records']}, open cases {row['open_cases']}, "
                      f"broker cpu {row['processes'].get('broker', {}).get('cpu_s_per_min')} s/min, "
                      f"list offsets {row['broker_list_offsets_ms']}", flush=True)
                write_soak(rate, minutes, seed, rows)  # every minute, so a run stopped early keeps what it measured
        finally:
            feeds.stop.set()
            feeds.thread.join(10)
            stages.stop()
    return write_soak(rate, minutes, seed, rows)


def write_soak(rate: float, minutes: int, seed: int, rows: list[dict]) -> Path:
    held = [r for r in rows if all(v["seconds"] < TARGET_LAG_S for v in r["lag"].values())
            and r["p99_ms"] is not None and r["p99_ms"] < TARGET_P99_MS]
    first_miss = next((r["minute"] for r in rows if r not in held), None)
    return write_result(f"soak-{int(rate)}", {
        "rate_events_per_s": rate,
        "minutes": minutes,
        "minutes_done": len(rows),
        "seed": seed,
        "workload": "`civicbus simulate` (the city's reports, calls, alerts and status updates) into the three stages; "
                    "a read_committed consumer of every feed",
        "targets": {"lag_seconds_below": TARGET_LAG_S, "p99_publish_to_feed_ms_below": TARGET_P99_MS},
        "held_every_minute": first_miss is None and len(rows) == minutes,
        "first_minute_missed": first_miss,
        "minutes_measured": rows,
    })
