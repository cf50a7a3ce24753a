"""What the pipeline benchmarks share: an own embedded broker, a seeded workload, stage processes,
and a reader that tells when every event of a run has arrived.

Workload: the simulator's realistic city traffic (case-forming types) plus event types that form
no case. When the catalog has no such type yet (the pipeline adds sensor and traffic types), a
benchmark-only `bench.sensor.reading` is added to a private copy of schemas/ and config/: it
takes exactly the path every non-case type takes (ingest dispatches it, one hop fewer).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from civicbus.broker import EmbeddedBroker
from civicbus.context import BusContext
from civicbus.kafka import FEED_READER_FETCH_WAIT_MS, apply_topics
from civicbus.lag.offsets import OffsetsReader
from civicbus.lifeline import with_lifeline
from civicbus.stack import RESTART_BACKOFF_S
from civicbus.registry import lock_schemas
from civicbus.schemas import EventCatalog
from civicbus.settings import Settings
from civicbus.topology import DIST_EVENTS, DLQ, PIPE_CASES
from civicbus.wire import read_published_ms
from producers.simulator import CityTraffic
from producers.sdk import Publisher

SENSOR_TYPE = "bench.sensor.reading"
SENSOR_DEPARTMENT = "ecoenv"
SENSOR_SCHEMA = {
    "type": "record", "name": "BenchSensorReading", "namespace": "civicbus.events",
    "doc": "Benchmark only: a sensor reading, an event type that forms no case.",
    "civicbus.event_type": SENSOR_TYPE, "civicbus.classification": "INTERNAL",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "BenchSensorKind", "symbols": ["air_quality", "water_level", "noise", "manhole_cover"]}},
        {"name": "value", "type": "double"},
        {"name": "unit", "type": "string"},
    ],
}


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@contextmanager
def benchmark_city(work_dir: Path):
    """Settings over a private copy of schemas/ and config/, with a non-case type if none exists;
    the stage processes started meanwhile find the copy through the environment."""
    schemas, config = work_dir / "schemas", work_dir / "config"
    shutil.copytree(Settings.model_fields["schemas_dir"].default, schemas)
    shutil.copytree(Settings.model_fields["config"].default, config)
    if all(t.case_stage for t in EventCatalog(schemas)):
        (schemas / "events" / f"{SENSOR_TYPE}.avsc").write_text(json.dumps(SENSOR_SCHEMA))
        lock_schemas(EventCatalog(schemas))
        departments = yaml.safe_load((config / "departments.yaml").read_text(encoding="utf-8"))
        for d in departments["departments"]:
            if d["id"] == SENSOR_DEPARTMENT:
                d["publishes"].append(SENSOR_TYPE)
        (config / "departments.yaml").write_text(yaml.safe_dump(departments, allow_unicode=True), encoding="utf-8")
        dispatch = yaml.safe_load((config / "dispatch.yaml").read_text(encoding="utf-8"))
        dispatch["rules"].append({"type": SENSOR_TYPE, "to": [SENSOR_DEPARTMENT]})
        (config / "dispatch.yaml").write_text(yaml.safe_dump(dispatch, allow_unicode=True), encoding="utf-8")
    with environment(CIVICBUS_SCHEMAS_DIR=str(schemas), CIVICBUS_CONFIG=str(config)):
        yield Settings(schemas_dir=schemas, config=config)


@contextmanager
def environment(**values: str):
    """These variables set for the stage processes started meanwhile (they inherit this process's
    environment); what was there before, back afterwards, also whatever was set inside."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})


class Workload:
    """Seeded events, encoded once, split by path: forms no case / goes through the case stage."""

    def __init__(self, ctx: BusContext, seed: int):
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.traffic = CityTraffic(ctx, seed)
        self.publishers: dict[str, Publisher] = {}

    def _complete(self, department: str, event: dict) -> dict:
        publisher = self.publishers.get(department) or self.publishers.setdefault(department, Publisher(self.ctx, department))
        return publisher.complete(event)

    def _sensor_event(self) -> tuple[str, dict]:
        kind = self.rng.choice(SENSOR_SCHEMA["fields"][1]["type"]["symbols"])
        return SENSOR_DEPARTMENT, {
            "type": SENSOR_TYPE,
            "location": {"raw_address": "东城区安定门内大街1号", "lat": 39.9475 + self.rng.uniform(-0.01, 0.01), "lon": 116.4075},
            "data": {"sensor_id": f"s-{self.rng.randrange(500)}", "kind": kind, "value": self.rng.uniform(0, 200), "unit": "ug/m3"},
        }

    def events(self, count: int, case_stage: bool) -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []
        tries = 0
        while len(out) < count:
            tries += 1
            if tries > 20 * count + 1000:
                raise RuntimeError(f"the simulator produces no {'case' if case_stage else 'non-case'} events")
            if not case_stage and SENSOR_TYPE in self.ctx.catalog:
                department, event = self._sensor_event()
            else:
                department, event = self.traffic.next_event()
                if self.ctx.catalog[event["type"]].case_stage != case_stage:
                    continue
            out.append((department, self._complete(department, event)))
        return out

    def mix(self, count: int) -> list[tuple[str, dict]]:
        """Half events that form no case (sensors, traffic), half case traffic, interleaved."""
        merged = self.events(count // 2, False) + self.events(count - count // 2, True)
        self.rng.shuffle(merged)
        return merged

    def inbound_records(self, events: Iterable[tuple[str, dict]]) -> list[Record]:
        records = []
        for department, event in events:
            topic = self.ctx.topology.inbound(department)
            value, headers = self.ctx.serde.encode(event, topic)
            records.append(Record(topic, event["id"].encode(), value, headers))
        return records


def produce(bootstrap: str, records: Iterable[Record], topic: str | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all", "batch.num.messages": 10000})
    for r in records:
        while True:
            try:
                producer.produce(topic or r.topic, r.value, r.key, headers=r.headers)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the broker did not acknowledge every benchmark record")


class Arrivals:
    """Reads topics (read_committed, no group) and notes when each wanted key first arrives."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
        metadata = self.consumer.list_topics(timeout=10).topics
        self.consumer.assign([TopicPartition(t, p, 0) for t in topics for p in metadata[t].partitions])
        self.first_seen: dict[bytes, float] = {}
        # (key, arrival time s, published-at ms, written-at ms: the record's own CreateTime) per record
        self.records: list[tuple[bytes, float, int, int]] = []
        # A record this reader was handed again at an offset it had read already: the client
        # re-read, nothing was written twice (its offset was reset, see civicbus.quirks 5)
        self._read: set[tuple[str, int, int]] = set()
        self.rereads = 0

    def wait_for(self, keys: set[bytes], timeout_s: float) -> float:
        """Block until every key arrived; return the arrival time of the last one."""
        deadline = time.monotonic() + timeout_s
        missing = set(keys) - set(self.first_seen)
        while missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(keys)} events did not arrive within {timeout_s:.0f}s")
            missing -= self._read_once()
        return max(self.first_seen[k] for k in keys)

    def settle(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Read on until nothing arrives for `quiet_s`: wait_for returns once each key arrived
        once, while an event's copies for other feeds may still be on their way."""
        deadline, last = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            if self._read_once():
                last = time.monotonic()

    def _read_once(self) -> set[bytes]:
        """Note what is fetched already (after waiting up to 0.1 s for it); the keys read."""
        keys = set()
        for message in fetched(self.consumer, 0.1):
            now = time.time()
            where = (message.topic(), message.partition(), message.offset())
            if where in self._read:
                self.rereads += 1
                continue
            self._read.add(where)
            self.first_seen.setdefault(message.key(), now)
            keys.add(message.key())
            published = read_published_ms(message.headers())
            if published:
                self.records.append((message.key(), now, published, message.timestamp()[1]))
        return keys

    def close(self) -> None:
        self.consumer.close()


def fetched(consumer: Consumer, timeout_s: float) -> list:
    """The records fetched already, after waiting up to `timeout_s` for the first one, errors
    left out. consume(n, timeout) would hold what arrived until n records did or the timeout
    passed, and add that wait to every latency measured with it."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [m for m in (first, *consumer.consume(5000, 0)) if not m.error()]


def read_all(bootstrap: str, topics: list[str], idle_s: float = 3.0) -> list:
    """Every record of `topics` (read_committed, no group), until none arrives for `idle_s`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex}", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    metadata = consumer.list_topics(timeout=10).topics
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in metadata[t].partitions])
    records, last = [], time.monotonic()
    while time.monotonic() - last < idle_s:
        for message in consumer.consume(5000, 0.2):
            if not message.error():
                records.append(message)
                last = time.monotonic()
    consumer.close()
    return records


def locate(ctx: BusContext, keys: set[bytes]) -> dict[str, dict]:
    """Where missing events stopped: how many of `keys` each hop holds, committed and uncommitted,
    the offsets of the first few there, and how far each stage group has committed on the
    partitions it reads (against their high watermarks)."""
    hops = {
        "inbound": [ctx.topology.inbound(d) for d in ctx.city.department_ids()],
        "pipe.cases": [ctx.topology.name(PIPE_CASES)],
        "dist.events": [ctx.topology.name(DIST_EVENTS)],
        "feeds": [ctx.topology.feed(d) for d in ctx.city.department_ids()],
        "dlq": [ctx.topology.name(DLQ)],
    }
    found: dict[str, dict] = {}
    for hop, topics in hops.items():
        for isolation in ("read_committed", "read_uncommitted"):
            consumer = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": f"locate-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                 "isolation.level": isolation, "enable.partition.eof": True})
            metadata = consumer.list_topics(timeout=10).topics
            partitions = [TopicPartition(t, p, 0) for t in topics for p in metadata[t].partitions]
            consumer.assign(partitions)
            seen: dict[bytes, str] = {}
            ended, deadline = 0, time.monotonic() + 30
            while ended < len(partitions) and time.monotonic() < deadline:
                for message in consumer.consume(5000, 0.5):
                    if message.error():
                        ended += message.error().code() == KafkaError._PARTITION_EOF
                    elif message.key() in keys:
                        seen.setdefault(message.key(), f"{message.topic()}[{message.partition()}]@{message.offset()}")
            consumer.close()
            found.setdefault(hop, {})[isolation] = len(seen)
            if isolation == "read_uncommitted" and seen:
                found[hop]["first_at"] = sorted(seen.values())[:5]
    found["committed/high watermark"] = committed_positions(ctx)
    return found


def committed_positions(ctx: BusContext) -> dict[str, str]:
    """Each stage group's committed offset / high watermark, per partition it has committed short
    of the watermark (which the embedded broker understates, civicbus.quirks 5: what shows is behind)."""
    stage_groups = f"^{re.escape(ctx.topology.group('civicbus-'))}(ingest|cases|fanout)$"
    snapshot = OffsetsReader(ctx.bootstrap, stage_groups).read()
    return {f"{g.group} {topic}[{partition}]": f"{offset}/{snapshot.latest[(topic, partition)]}"
            for g in snapshot.groups for (topic, partition), offset in g.committed.items()
            if offset is None or offset < snapshot.latest[(topic, partition)]}  # None: assigned, never committed


class StageProcesses:
    """`civicbus process` children (or any module) for the benchmark's namespace."""

    def __init__(self, ctx: BusContext, log_dir: Path):
        self.ctx = ctx
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self._argv: dict[str, list[str]] = {}
        self.restarts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "CIVICBUS_BOOTSTRAP": self.ctx.bootstrap, "CIVICBUS_NAMESPACE": self.ctx.settings.namespace,
                "CIVICBUS_LOG_LEVEL": os.environ.get("CIVICBUS_LOG_LEVEL", "WARNING")}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        self._argv[name] = argv
        with open(self.log_dir / f"{name}.log", "ab") as log:
            # they die with the benchmark, however it ends
            self.processes[name] = subprocess.Popen(with_lifeline([sys.executable, *argv]), env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        return self.processes[name]

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {log.stem}\n{log.read_text(errors='replace')[-chars:]}" for log in sorted(self.log_dir.glob("*.log")))

    def start_stage(self, stage: str, instance: str = "0") -> None:
        self.start(f"{stage}-{instance}", ["-m", "civicbus.cli", "process", stage, "--instance", instance])

    def supervise(self, names: Iterable[str]) -> None:
        """Start these processes again whenever they exit, after civicbus up's backoff, until
        stop(): a soak measures the stack as `civicbus up` runs it. `restarts` counts them."""
        names = list(names)

        def run() -> None:
            due: dict[str, float] = {}
            while not self._stopping.wait(0.5):
                for name in names:
                    if self.processes[name].poll() is None:
                        continue
                    if name not in due:
                        due[name] = time.monotonic() + RESTART_BACKOFF_S[min(self.restarts[name], len(RESTART_BACKOFF_S) - 1)]
                    elif time.monotonic() >= due.pop(name):
                        self.restarts[name] += 1
                        self.start(name, self._argv[name])  # from this thread, which lives until stop()

        self._supervisor = threading.Thread(target=run, name="bench-supervisor", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(10)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = {}


@contextmanager
def bench_bus(partitions: int = 1, namespace: str = "bench.", keep_logs_in: Path | None = None):
    """An own embedded broker (or CIVICBUS_BOOTSTRAP), a context over the benchmark city, and
    the stage processes, stopped on the way out; with `keep_logs_in`, their logs (and the
    broker's) are copied there then."""
    with tempfile.TemporaryDirectory(prefix="civicbus-bench-") as work, ExitStack() as cleanup:
        if keep_logs_in is not None:
            cleanup.callback(lambda: shutil.copytree(work, keep_logs_in, ignore=shutil.ignore_patterns("config", "schemas", "state"),
                                                     dirs_exist_ok=True))
        work_dir = Path(work)
        settings = cleanup.enter_context(benchmark_city(work_dir))
        bootstrap = os.environ.get("CIVICBUS_BOOTSTRAP")
        if not bootstrap:
            bootstrap = cleanup.enter_context(EmbeddedBroker(log_path=work_dir / "broker.log")).bootstrap
        namespace = f"{namespace}{uuid.uuid4().hex[:6]}."
        ctx = BusContext(settings.model_copy(update={"bootstrap": bootstrap, "namespace": namespace, "state_dir": work_dir / "state"}))
        topology = dataclasses.replace(ctx.topology, pipeline_partitions=partitions)
        apply_topics(bootstrap, topology.specs())
        stages = StageProcesses(ctx, work_dir)
        cleanup.callback(stages.stop)  # before the broker stops, also when the benchmark fails
        yield ctx, stages


def department_reader(bootstrap: str, feed: str, wait_ms: int = FEED_READER_FETCH_WAIT_MS, offset: int = 0) -> Consumer:
    """A department's stock reader of its feed, from `offset` (the start unless given): read_committed,
    a group of its own that commits nothing, and the subscriber SDK's fetch wait unless given."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}", "enable.auto.commit": False,
                       "isolation.level": "read_committed", "fetch.wait.max.ms": wait_ms})
    reader.assign([TopicPartition(feed, 0, offset)])
    return reader


def processes(stages: StageProcesses) -> dict[str, psutil.Process]:
    """The stage processes by name, and the embedded broker (a child of this process) as "broker"."""
    found = {name: psutil.Process(p.pid) for name, p in stages.processes.items()}
    for child in psutil.Process().children(recursive=True):
        try:
            if "tansu" in child.name() or "tansu" in " ".join(child.cmdline()[:1]):
                found["broker"] = child
        except psutil.Error:
            continue
    return found


def usage(procs: dict[str, psutil.Process]) -> dict[str, dict]:
    """Pid, resident memory and CPU seconds (user + system, since it started) of each process."""
    out = {}
    for name, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[name] = {"pid": proc.pid, "rss_mb": round(proc.memory_info().rss / 2**20, 1), "cpu_s": times.user + times.system}
        except psutil.Error:
            out[name] = {"pid": proc.pid, "rss_mb": None, "cpu_s": None}
    return out


@contextmanager
def cores_used(procs: dict[str, psutil.Process], into: dict[str, float],
               alongside: AbstractContextManager = nullcontext()) -> Iterator[None]:
    """Run `alongside` and note in `into` the cores each process used meanwhile (CPU seconds a
    second), by name, and their "total"."""
    before, started = usage(procs), time.monotonic()
    with alongside:
        yield
    after, elapsed = usage(procs), time.monotonic() - started
    into.update({name: round((after[name]["cpu_s"] - before[name]["cpu_s"]) / elapsed, 2)
                 for name in after if None not in (before[name]["cpu_s"], after[name]["cpu_s"])})
    into["total"] = round(sum(into.values()), 2)


def stage_samples(metrics_dir: str) -> Iterator[Sample]:
    """Every metric sample the stage processes wrote to their multiprocess folder
    (PROMETHEUS_MULTIPROC_DIR, inherited when they start), summed over the processes."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, metrics_dir)
    for family in registry.collect():
        yield from family.samples


# librdkafka's names of the requests a transaction costs beside its Produce requests.
TRANSACTION_REQUESTS = ("AddPartitionsToTxn", "AddOffsetsToTxn", "TxnOffsetCommit", "EndTxn")
REQUEST_KINDS = {"Fetch": "fetch", "Produce": "produce", "OffsetCommit": "offset_commit"} | {r: "transaction" for r in TRANSACTION_REQUESTS}


def client_counts(metrics_dir: str) -> Counter[tuple[str, str, str]]:
    """What the stages' Kafka clients reported (processors.runner.ClientStatistics), totals so far:
    ("requests", kind, stage) by REQUEST_KINDS and ("batches", topic_group(topic), stage)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for sample in stage_samples(metrics_dir):
        if sample.name == "civicbus_kafka_requests_total" and sample.labels["request"] in REQUEST_KINDS:
            counts[("requests", REQUEST_KINDS[sample.labels["request"]], sample.labels["stage"])] += sample.value
        elif sample.name == "civicbus_produced_batches_total":
            counts[("batches", topic_group(sample.labels["topic"]), sample.labels["stage"])] += sample.value
    return counts


def topic_group(topic: str) -> str:
    """A topic as the benchmarks report it: without the namespace, the feeds together."""
    topic = topic[topic.find("civic."):]
    return "civic.feed.*" if topic.startswith("civic.feed.") else topic
