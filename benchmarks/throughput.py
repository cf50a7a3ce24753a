"""(a) Pipeline throughput civic.in.* -> civic.feed.*, one worker per stage, beside
- a raw confluent-kafka consume -> produce passthrough of the same inbound records (one hop, one
  record per event), and
- the replay of exactly the records the pipeline wrote for those events (benchmarks.replay: the
  same topics, partitions, sizes and transactions, no processing), in a second namespace of the
  same broker, in the same run: what the broker alone costs for this pipeline's traffic.
Also counts what the pipeline writes per event (records and transaction markers per topic; per 1,000
events, the record batches and the fetch, produce, transaction and offset-commit requests its
clients reported, beside the replay's) and what each process spends on it: CPU microseconds per event of every stage, the broker and the
benchmark's own producer and reader, pipeline beside replay. On the 2-core machine the broker
alone fills about one core, so the stages' CPU per event is what the ratio to the replay turns on.
Optionally profiles every stage with py-spy while the pipeline is busy.

Target (issue 10): pipeline >= 0.5 of the replay of its own records; the ratio to the raw
passthrough is reported beside it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import psutil

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks import profile as profiler
from benchmarks.harness import (Arrivals, Record, StageProcesses, Workload, bench_bus, client_counts, environment, locate,
                                processes, produce, topic_group, usage)
from benchmarks.replay import capture
from benchmarks.report import RESULTS_DIR, median, write_result
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, producer_config
from civicbus.topology import TopicSpec
from processors import STAGES

PATHS = {"no_case": False, "case": True}
# How often the stages' clients report their statistics here (Settings.client_statistics_interval_ms).
STATISTICS_INTERVAL_MS = 500
WARMUP = 200


def topic(ctx: BusContext, name: str) -> str:
    full = ctx.topology.name(name)
    apply_topics(ctx.bootstrap, [TopicSpec(full, 1)])
    return full


def raw_passthrough(ctx: BusContext, records: list[Record], run: int) -> float:
    """Events/s of a consume -> produce copy, no processing, batches like the runner's."""
    source, destination = topic(ctx, f"bench.raw.{run}.src"), topic(ctx, f"bench.raw.{run}.dst")
    produce(ctx.bootstrap, records, source)
    consumer = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": f"bench-raw-{run}", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = Producer(producer_config(ctx.bootstrap, **{"linger.ms": 2}))  # the runner's settings
    producer.produce(destination, b"")  # learn the new topic's leader before the clock starts
    producer.flush(30)
    copied, started = 0, time.perf_counter()
    while copied < len(records):
        messages = consumer.consume(2000, 0.05)
        for m in messages:
            producer.produce(destination, m.value(), m.key(), headers=m.headers())
            producer.poll(0)
        copied += len(messages)
    producer.flush(30)
    elapsed = time.perf_counter() - started
    consumer.close()
    return len(records) / elapsed


def through(ctx: BusContext, arrivals: Arrivals, records: list[Record], timeout_s: float = 120) -> float:
    """Events/s from producing `records` until each has arrived where `arrivals` reads."""
    started = time.time()
    produce(ctx.bootstrap, records)
    keys = {r.key for r in records}
    try:
        last = arrivals.wait_for(keys, timeout_s)
    except TimeoutError as e:
        missing = keys - set(arrivals.first_seen)
        raise TimeoutError(f"{e}; where the missing ones are: {locate(ctx, missing)}") from None
    return len(records) / (last - started)


class ClientCounted:
    """The requests and record batches the stages' Kafka clients reported (harness.client_counts)
    while the measured runs of one path were under way, read from their metrics folder."""

    def __init__(self, metrics_dir: str):
        self.metrics_dir = metrics_dir
        self.counted: dict[str, Counter] = {}

    @contextmanager
    def measuring(self, path: str):
        before = client_counts(self.metrics_dir)
        yield
        time.sleep(3 * STATISTICS_INTERVAL_MS / 1000)  # the clients' last statistics of the runs
        self.counted[path] = client_counts(self.metrics_dir) - before

    def per_thousand_events(self, path: str, events: int) -> dict[str, dict[str, float]]:
        """Per 1,000 events: a busy stage's commit carries hundreds of events, so per event these round to 0."""
        figures: dict[str, dict[str, float]] = {}
        for (kind, name, stage), n in sorted(self.counted.get(path, Counter()).items()):
            key, inner = (f"{name}_requests", stage) if kind == "requests" else ("batches", name)
            figures.setdefault(key, Counter())[inner] += n
        return {key: {inner: round(n * 1000 / events, 1) for inner, n in sorted(values.items())} for key, values in figures.items()}


class CpuSpent:
    """CPU seconds spent by each process (the stages, the broker, this benchmark: its producer and
    reader) while the measured runs of one path were under way."""

    def __init__(self, stages: StageProcesses):
        self.stages = stages
        self.spent: dict[str, Counter[str]] = {}

    @contextmanager
    def measuring(self, path: str):
        procs = processes(self.stages) | {"benchmark": psutil.Process()}
        before = usage(procs)
        yield
        after = usage(procs)
        spent = self.spent.setdefault(path, Counter())
        for name, now in after.items():
            if now["cpu_s"] is not None and before[name]["cpu_s"] is not None:
                spent[name.removeprefix("replay-").removesuffix("-0")] += now["cpu_s"] - before[name]["cpu_s"]

    def per_event_us(self, path: str, events: int) -> dict[str, int]:
        spent = self.spent.get(path, Counter())
        figures = {name: round(seconds / events * 1e6) for name, seconds in sorted(spent.items())}
        figures["stages_together"] = round(sum(s for n, s in spent.items() if n not in ("broker", "benchmark")) / events * 1e6)
        return figures


def profile_stages(ctx: BusContext, stages: StageProcesses, workload: Workload, arrivals: Arrivals, seconds: int) -> dict:
    busy = workload.inbound_records(workload.mix(2500 * seconds))
    outputs = {name: RESULTS_DIR / f"profile-{name}.txt" for name in stages.processes}
    samplers = {name: profiler.start(p.pid, seconds, outputs[name]) for name, p in stages.processes.items()}
    through(ctx, arrivals, busy, timeout_s=300)
    for sampler in samplers.values():
        profiler.finish(sampler)
    return {name: profiler.summarise(path) | {"collapsed_stacks": str(path.relative_to(RESULTS_DIR.parent.parent))}
            for name, path in outputs.items() if path.exists()}


def per_event(captured: dict, spans: dict[str, int], events: int) -> dict:
    """Records and transaction markers written per event, by topic (feeds together), from the
    captured run: a marker takes an offset, so it is what an offset span holds beyond records."""
    records: Counter = Counter()
    for outputs in captured.values():
        for written in outputs.values():
            for topic, *_ in written:
                records[topic_group(topic)] += 1
    offsets: Counter = Counter()
    for topic, span in spans.items():
        offsets[topic_group(topic)] += span
    return {topic: {"records": round(n / events, 2), "markers": round(max(0, offsets[topic] - n) / events, 2)}
            for topic, n in sorted(records.items())}


def retargeted(ctx: BusContext, records: list[Record], namespace: str) -> list[Record]:
    return [Record(namespace + r.topic[len(ctx.topology.namespace):], r.key, r.value, r.headers) for r in records]


@contextmanager
def metrics_folders(*phases: str):
    """A metrics folder per phase, the first one's for the stage processes started now (the next
    phase sets its own), and their clients' statistics reported every STATISTICS_INTERVAL_MS."""
    with tempfile.TemporaryDirectory(prefix="civicbus-throughput-") as root:
        folders = {phase: os.path.join(root, phase) for phase in phases}
        for folder in folders.values():
            os.mkdir(folder)
        with environment(CIVICBUS_CLIENT_STATISTICS_INTERVAL_MS=str(STATISTICS_INTERVAL_MS), PROMETHEUS_MULTIPROC_DIR=folders[phases[0]]):
            yield folders


def run(events: int = 10_000, repeats: int = 3, seed: int = 6, profile: bool = False) -> Path:
    with metrics_folders("pipeline", "replay") as metrics_dirs, bench_bus() as (ctx, stages):
        workload = Workload(ctx, seed)
        batches = {path: [workload.inbound_records(workload.events(events, case)) for _ in range(repeats)] for path, case in PATHS.items()}
        warmup = {path: workload.inbound_records(workload.events(WARMUP, case)) for path, case in PATHS.items()}
        raw = {path: [raw_passthrough(ctx, records, f"{path}{i}") for i, records in enumerate(batches[path])] for path in PATHS}

        for stage in STAGES:
            stages.start_stage(stage)
        feeds = Arrivals(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
        through(ctx, feeds, warmup["no_case"] + warmup["case"], timeout_s=120)
        pipeline_cpu, pipeline_clients = CpuSpent(stages), ClientCounted(metrics_dirs["pipeline"])
        pipeline = {}
        for path in PATHS:
            with pipeline_clients.measuring(path), pipeline_cpu.measuring(path):
                pipeline[path] = [through(ctx, feeds, records) for records in batches[path]]
        stages.stop()
        spans: dict[str, int] = {}
        captured = capture(ctx, spans)
        written = per_event(captured, spans, sum(len(b) for runs in batches.values() for b in runs) + 2 * WARMUP)

        # The same inbound records through the replay stages, in a namespace of their own.
        replay_ns = ctx.topology.namespace + "replay."
        apply_topics(ctx.bootstrap, dataclasses.replace(ctx.topology, namespace=replay_ns).specs())
        capture_path = RESULTS_DIR.parent / ".replay-capture.pickle"
        capture_path.write_bytes(pickle.dumps(captured))
        replay_ctx = BusContext(ctx.settings.model_copy(update={"namespace": replay_ns}))
        replay_stages = StageProcesses(replay_ctx, stages.log_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dirs["replay"]
        try:
            for stage in STAGES:
                replay_stages.start(f"replay-{stage}", ["-m", "benchmarks.replay", stage, str(capture_path)])
            replay_feeds = Arrivals(ctx.bootstrap, [replay_ctx.topology.feed(d) for d in ctx.city.department_ids()])
            through(ctx, replay_feeds, retargeted(ctx, warmup["no_case"] + warmup["case"], replay_ns), timeout_s=120)
            replay_cpu, replay_clients = CpuSpent(replay_stages), ClientCounted(metrics_dirs["replay"])
            replay = {}
            for path in PATHS:
                with replay_clients.measuring(path), replay_cpu.measuring(path):
                    replay[path] = [through(ctx, replay_feeds, retargeted(ctx, records, replay_ns)) for records in batches[path]]
        finally:
            replay_stages.stop()
            capture_path.unlink(missing_ok=True)

        if profile:
            for stage in STAGES:
                stages.start_stage(stage)
            profiles = profile_stages(ctx, stages, workload, feeds, 10)
            stages.stop()
        else:
            profiles = None

    figures = {
        "events_per_run": events,
        "repeats": repeats,
        "seed": seed,
        "workload": "no_case: event types that form no case (in -> ingest -> dist -> fanout -> feeds); "
                    "case: the simulator's case traffic (in -> ingest -> pipe.cases -> cases -> dist -> fanout -> feeds)",
        "events_per_s": {
            path: {"pipeline": median(pipeline[path]), "replay_of_its_records": median(replay[path]),
                   "raw_passthrough": median(raw[path]),
                   "ratio_to_replay": round(median(pipeline[path]) / median(replay[path]), 3),
                   "ratio_to_raw": round(median(pipeline[path]) / median(raw[path]), 3),
                   "runs": {"pipeline": pipeline[path], "replay": replay[path], "raw": raw[path]}}
            for path in PATHS
        },
        "records_written_per_event": written,
        "cpu_us_per_event": {path: {"pipeline": pipeline_cpu.per_event_us(path, events * repeats),
                                    "replay": replay_cpu.per_event_us(path, events * repeats)} for path in PATHS},
        "kafka_per_1000_events": {path: {"pipeline": pipeline_clients.per_thousand_events(path, events * repeats),
                                         "replay": replay_clients.per_thousand_events(path, events * repeats)} for path in PATHS},
        "target": {"ratio_to_replay_at_least": 0.5},
    }
    figures["target_met"] = all(figures["events_per_s"][p]["ratio_to_replay"] >= 0.5 for p in PATHS)
    if profiles:
        figures["profiles"] = profiles
    return write_result("throughput", figures)
