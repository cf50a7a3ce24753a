"""Soak: the whole pipeline under the simulator's steady traffic for many minutes, measured per
minute, then the bare replay of its own records at the same pace on a fresh broker.

    python -m benchmarks soak --rate 20 --minutes 60

Phase 1, the pipeline: an own embedded broker (or CIVICBUS_BOOTSTRAP), the three stages as
`civicbus process` children, and, once they have joined (WARM_UP_S), `civicbus simulate` publishing the city's traffic (reports,
calls, camera alerts and the departments' status updates) at RATE events/s.

Phase 2, the bare replay (issue 10, point 3: what the broker alone holds): every record the
stages wrote is captured (benchmarks.replay), and on a fresh embedded broker the same inbound
records are published again at the times they were first published, through the replay stages:
the same transactional runner, topics, partitions, sizes and commit spacing, no processing. On
CIVICBUS_BOOTSTRAP the replay runs in a namespace of its own on the same cluster.

In both phases each department's feed is read by a stock confluent-kafka consumer of its own,
read_committed, as the department would (fetch wait civicbus.kafka.FEED_READER_FETCH_WAIT_MS,
the subscriber SDK's), and each minute records:
- lag per stage group, in records (high watermark - committed) and in seconds (age, at the time
  the committed offsets were read, of the oldest record not yet committed; null when a record
  behind could not be read within 5 s, which counts as a minute missed);
- p50/p99 publish -> feed (the feed record's arrival - the inbound record's timestamp), and the
  same split where the fan-out wrote the record (the feed record's own timestamp, taken when the
  fan-out produced it): publish -> fan-out (ingest, the case stage and the fan-out's read) and
  fan-out -> feed (the fan-out's commit spacing, the append and the department's read);
- records each stage processed (and events delivered and dead letters by stage and reason: the
  real stages' own counters), and the fetch, produce, transaction and offset-commit requests and
  record batches the stages' Kafka clients reported (processors.runner.ClientStatistics; every stage
  together);
- open cases (phase 1), and how often a stage exited and was started again (as `civicbus up`
  restarts them);
- RSS and CPU seconds of every process, the broker included;
- how long the broker takes to answer ListOffsets for civic.dist.events and civic.pipe.cases:
  it lists every batch of the partition, as a fetch that returns data does, so it shows the
  broker slowing down as its logs grow.
Targets (issue 10): every group's lag under 5 s at every minute and p99 publish -> feed under 1 s;
the pipeline holds at least as long as the bare replay of its own records.
Results: benchmarks/results/soak-<rate>.json, written every minute; the processes' logs in
benchmarks/results/soak-<rate>-logs/ (not committed; CIVICBUS_LOG_LEVEL=INFO for the stages' own).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from benchmarks.harness import bench_bus, client_counts, department_reader, fetched, processes, read_all, stage_samples, usage
from benchmarks.replay import capture
from benchmarks.report import RESULTS_DIR, percentile, write_result
from civicbus.context import BusContext
from civicbus.kafka import FEED_READER_FETCH_WAIT_MS, make_producer
from civicbus.quirks import FETCH_WAIT_MOST_MS
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from civicbus.wire import read_published_ms
from processors import STAGES

TARGET_LAG_S = 5.0
TARGET_P99_MS = 1000.0
# Started stages join their groups (about half the session timeout on the embedded broker,
# civicbus.quirks 6) and restore before traffic starts: the soak measures steady traffic.
WARM_UP_S = 15.0
class FeedLatency:
    """A reader per department, each of its own feed (read_committed, no group, the wait of the
    subscriber SDK), and per minute over all of them each record's publish -> arrival, split at
    the fan-out's write (the feed record's timestamp)."""

    def __init__(self, bootstrap: str, feeds: list[str]):
        self.readers = [department_reader(bootstrap, feed) for feed in feeds]
        self.latencies_ms: list[tuple[float, float, float]] = []  # (publish -> feed, -> fan-out, fan-out ->)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(reader,), daemon=True) for reader in self.readers]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _run(self, reader: Consumer) -> None:
        while not self.stop.is_set():
            for message in fetched(reader, 0.1):
                published = read_published_ms(message.headers())
                if published:
                    arrived, written = time.time() * 1000, message.timestamp()[1]
                    with self.lock:
                        self.latencies_ms.append((arrived - published, written - published, arrived - written))
        reader.close()

    def take(self) -> list[tuple[float, float, float]]:
        with self.lock:
            taken, self.latencies_ms = self.latencies_ms, []
        return taken


class GroupLag:
    """Lag of the stages' consumer groups: records, and the age of the oldest uncommitted record."""

    def __init__(self, bootstrap: str):
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        # Reads the record at a committed offset, which is there: the fetch returns as soon as it has
        # it, and its wait is what the broker may spend listing the partition (civicbus.quirks 10;
        # at 10 ms the age of a lag was unreadable from minute 21 of the 60-minute run of 12-07 09:48).
        self.reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-lag-{uuid.uuid4().hex}",
                                "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                                "fetch.wait.max.ms": FETCH_WAIT_MOST_MS})
        # Never fetches, so a ListOffsets it sends never queues behind a fetch held by the broker.
        self.offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-offsets-{uuid.uuid4().hex}"})

    def measure(self, group: str) -> dict:
        future = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        committed = [tp for tp in future.result(timeout=30).topic_partitions if tp.offset >= 0]
        read_at = time.time()
        records, timestamps = 0, []
        for tp in committed:
            _, high = self.offsets.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30, cached=False)
            behind = max(0, high - tp.offset)
            records += behind
            if behind:
                timestamps.append(self._timestamp_at(tp))
        if None in timestamps:  # a record behind could not be read in time: its age is not known
            lag_s = None
        else:
            lag_s = round(max(0.0, read_at - min(timestamps) / 1000), 2) if timestamps else 0.0
        return {"records": records, "seconds": lag_s, "committed": sum(tp.offset for tp in committed)}

    def _timestamp_at(self, tp: TopicPartition) -> int | None:
        self.reader.assign([TopicPartition(tp.topic, tp.partition, tp.offset)])
        message = self.reader.poll(5.0)
        self.reader.unassign()
        if message is None or message.error():
            return None
        return message.timestamp()[1]

    def offsets_round_trip_ms(self, topic: str) -> float:
        started = time.perf_counter()
        self.offsets.get_watermark_offsets(TopicPartition(topic, 0), timeout=60, cached=False)
        return round((time.perf_counter() - started) * 1000, 1)


def stage_counters(metrics_dir: str) -> dict[str, float]:
    """civicbus_* counters and gauges summed over the stage processes."""
    totals: dict[str, float] = defaultdict(float)
    for sample in stage_samples(metrics_dir):
        if sample.name == "civicbus_stage_records_total":
            totals[f"records.{sample.labels['stage']}"] += sample.value
        elif sample.name in ("civicbus_delivered_total", "civicbus_routed_total"):
            totals[sample.name.removeprefix("civicbus_").removesuffix("_total")] += sample.value
        elif sample.name == "civicbus_rejected_total":
            totals[f"rejected.{sample.labels['stage']}.{sample.labels['reason']}"] += sample.value
        elif sample.name == "civicbus_open_cases":
            totals["open_cases"] += sample.value
        elif sample.name == "civicbus_stage_fetch_wait_seconds":
            key = f"fetch_wait_ms.{sample.labels['stage']}"
            totals[key] = max(totals[key], round(sample.value * 1000))
    for (kind, name, _), value in client_counts(metrics_dir).items():  # every stage together
        totals[f"{name}_requests" if kind == "requests" else "batches"] += value
    return dict(totals)


def cpu_per_minute(now: dict, before: dict | None) -> float | None:
    """CPU seconds over the minute; a process started again since counts from its start."""
    if now["cpu_s"] is None:
        return None
    if before is None or before["pid"] != now["pid"] or before["cpu_s"] is None:
        return round(now["cpu_s"], 1)
    return round(now["cpu_s"] - before["cpu_s"], 1)


def quantile(latencies: list[tuple[float, ...]], part: int, q: float) -> float | None:
    """The q-th percentile of one part of FeedLatency's samples, None for a minute with none."""
    return round(percentile([sample[part] for sample in latencies], q), 1) if latencies else None


def measure_minutes(ctx: BusContext, stages, metrics_dir: str, minutes: int, label: str, on_minute) -> list[dict]:
    """The per-minute rows of one phase; `on_minute(rows)` after each (the file is written then)."""
    rows: list[dict] = []
    feeds = FeedLatency(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
    feeds.start()
    lag = GroupLag(ctx.bootstrap)
    previous_counts: dict[str, float] = {}
    previous_cpu = usage(processes(stages))
    started = time.monotonic()
    try:
        for minute in range(1, minutes + 1):
            time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            latencies = feeds.take()
            counts = stage_counters(metrics_dir)
            now_usage = usage(processes(stages))  # anew: a stage started again has another pid
            row = {
                "minute": minute,
                "load_average_1m": round(os.getloadavg()[0], 2),  # the machine's, shared with whatever else runs
                "lag": {stage: lag.measure(ctx.topology.group(f"civicbus-{stage}")) for stage in STAGES},
                "feed_records": len(latencies),
                "p50_ms": quantile(latencies, 0, 50),
                "p99_ms": quantile(latencies, 0, 99),
                "to_fanout_p50_p99_ms": [quantile(latencies, 1, 50), quantile(latencies, 1, 99)],
                "fanout_to_feed_p50_p99_ms": [quantile(latencies, 2, 50), quantile(latencies, 2, 99)],
                "per_minute": {k: round(v - previous_counts.get(k, 0.0)) for k, v in counts.items()
                               if k != "open_cases" and not k.startswith("fetch_wait_ms.")},
                "open_cases": counts.get("open_cases"),
                "fetch_wait_ms": {k.removeprefix("fetch_wait_ms."): v for k, v in counts.items() if k.startswith("fetch_wait_ms.")},
                "stage_restarts": dict(stages.restarts),  # since the start: each exited and was started again
                "processes": {name: {"rss_mb": u["rss_mb"], "cpu_s_per_min": cpu_per_minute(u, previous_cpu.get(name))}
                              for name, u in now_usage.items()},
                "broker_list_offsets_ms": {"dist.events": lag.offsets_round_trip_ms(ctx.topology.name(DIST_EVENTS)),
                                           "pipe.cases": lag.offsets_round_trip_ms(ctx.topology.name(PIPE_CASES))},
            }
            previous_counts, previous_cpu = counts, now_usage
            rows.append(row)
            lags = ", ".join(f"{s}: {v['records']} rec/{v['seconds']} s" for s, v in row["lag"].items())
            print(f"{label} minute {minute}: lag {{{lags}}} p50/p99 {row['p50_ms']}/{row['p99_ms']} ms "
                  f"(to the fan-out {row['to_fanout_p50_p99_ms']}, then {row['fanout_to_feed_p50_p99_ms']}), feed records {row['feed_records']}, "
                  f"open cases {row['open_cases']}, fetch waits {row['fetch_wait_ms']}, broker cpu {row['processes'].get('broker', {}).get('cpu_s_per_min')} s/min, "
                  f"list offsets {row['broker_list_offsets_ms']}", flush=True)
            on_minute(rows)
    finally:
        feeds.close()
    return rows


def inbound_schedule(ctx: BusContext) -> list[tuple[float, str, bytes | None, bytes | None, list]]:
    """Every inbound record of phase 1 as (seconds after the first, topic without the namespace,
    key, value, headers), in publishing order."""
    records = read_all(ctx.bootstrap, [ctx.topology.inbound(d) for d in ctx.city.department_ids()])
    records.sort(key=lambda m: m.timestamp()[1])
    first_ms = records[0].timestamp()[1] if records else 0
    strip = len(ctx.topology.namespace)
    return [((m.timestamp()[1] - first_ms) / 1000, m.topic()[strip:], m.key(), m.value(), list(m.headers() or [])) for m in records]


def publish_on_schedule(ctx: BusContext, schedule: list, stop: threading.Event) -> None:
    """Publishes `schedule` again at its own pace (timestamps: now), through a stock idempotent
    producer per inbound topic, as the simulator's publishers are one per department: each is a
    producer the embedded broker keeps in the metadata document every idempotent produce
    rewrites (civicbus.quirks, 8), so one producer for all would spare the replay that cost."""
    producers: dict[str, Producer] = {}
    started = time.monotonic()
    for offset_s, topic, key, value, headers in schedule:
        delay = started + offset_s - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        if topic not in producers:  # not `get(topic) or ...`: a Producer with an empty queue is falsy (its len())
            producers[topic] = make_producer(ctx.bootstrap)  # the simulator's publishers' settings
        producer = producers[topic]
        producer.produce(ctx.topology.namespace + topic, value, key, headers=headers)
        producer.poll(0)
    for producer in producers.values():
        producer.flush(30)


def held_until(rows: list[dict]) -> dict:
    """The first minute that missed a target, both together and each alone, and how many minutes
    met each (a start-up minute over the p99 target says less than a minute 40 over it)."""
    met = {
        "lag": lambda r: all(v["seconds"] is not None and v["seconds"] < TARGET_LAG_S for v in r["lag"].values()),
        "p99": lambda r: r["p99_ms"] is not None and r["p99_ms"] < TARGET_P99_MS,
    }
    first_missed = lambda held: next((r["minute"] for r in rows if not held(r)), None)  # noqa: E731
    return {"minutes_done": len(rows), "first_minute_missed": first_missed(lambda r: all(m(r) for m in met.values())),
            "first_minute_missed_by": {name: first_missed(m) for name, m in met.items()},
            "minutes_meeting": {name: sum(1 for r in rows if m(r)) for name, m in met.items()},
            "minutes_measured": rows}


def run(rate: float, minutes: int, seed: int = 6, bare_replay: bool = True) -> Path:
    phases: dict[str, dict] = {}

    def write(name: str, rows: list[dict]) -> Path:
        phases[name] = held_until(rows)
        return write_soak(rate, minutes, seed, phases)

    with tempfile.TemporaryDirectory(prefix="civicbus-soak-") as work:
        work_dir = Path(work)
        pipeline_metrics = tempfile.mkdtemp(prefix="metrics-pipeline-", dir=work)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = pipeline_metrics  # the stage processes inherit it
        with bench_bus(keep_logs_in=RESULTS_DIR / f"soak-{int(rate)}-logs" / "pipeline") as (ctx, stages):
            for stage in STAGES:
                stages.start_stage(stage)
            stages.supervise(f"{stage}-0" for stage in STAGES)
            time.sleep(WARM_UP_S)
            stages.start("simulator", ["-m", "civicbus.cli", "simulate", "--rate", str(rate), "--duration", str(minutes * 60 + 30),
                                       "--seed", str(seed)])
            path = write("pipeline", measure_minutes(ctx, stages, pipeline_metrics, minutes, "pipeline", lambda rows: write("pipeline", rows)))
            if not bare_replay:
                return path
            stages.stop()  # what the stages wrote is final before it is captured
            capture_path = work_dir / "capture.pickle"
            capture_path.write_bytes(pickle.dumps(capture(ctx)))
            schedule = inbound_schedule(ctx)
        replay_metrics = tempfile.mkdtemp(prefix="metrics-replay-", dir=work)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = replay_metrics
        with bench_bus(namespace="bench.replay.", keep_logs_in=RESULTS_DIR / f"soak-{int(rate)}-logs" / "bare_replay") as (ctx, stages):
            for stage in STAGES:
                stages.start(f"replay-{stage}", ["-m", "benchmarks.replay", stage, str(capture_path)])
            stages.supervise(f"replay-{stage}" for stage in STAGES)
            time.sleep(WARM_UP_S)
            stop = threading.Event()
            publisher = threading.Thread(target=publish_on_schedule, args=(ctx, schedule, stop), daemon=True)
            publisher.start()
            try:
                path = write("bare_replay", measure_minutes(ctx, stages, replay_metrics, minutes, "bare replay",
                                                            lambda rows: write("bare_replay", rows)))
            finally:
                stop.set()
                publisher.join(30)
    return path


def write_soak(rate: float, minutes: int, seed: int, phases: dict[str, dict]) -> Path:
    pipeline, replay = phases.get("pipeline"), phases.get("bare_replay")
    done = lambda phase: phase is not None and phase["minutes_done"] == minutes  # noqa: E731
    figures = {
        "rate_events_per_s": rate,
        "minutes": minutes,
        "seed": seed,
        "workload": "`civicbus simulate` (the city's reports, calls, alerts and status updates) into the three stages; "
                    "then the same inbound records at the same pace through the replay of the stages' own records "
                    "(benchmarks.replay) on a fresh broker; in both, a read_committed consumer of each department's feed",
        "reader_fetch_wait_ms": FEED_READER_FETCH_WAIT_MS,
        "targets": {"lag_seconds_below": TARGET_LAG_S, "p99_publish_to_feed_ms_below": TARGET_P99_MS},
        "held_every_minute": done(pipeline) and pipeline["first_minute_missed"] is None,
    }
    if done(pipeline) and done(replay):
        last = lambda phase: minutes if phase["first_minute_missed"] is None else phase["first_minute_missed"] - 1  # noqa: E731
        figures["minutes_held"] = {"pipeline": last(pipeline), "bare_replay": last(replay)}
        figures["pipeline_holds_as_long_as_bare_replay"] = last(pipeline) >= last(replay)
    return write_result(f"soak-{int(rate)}", {**figures, "phases": phases})
