"""(b) What one hop costs on the broker itself, beside the pipeline's publish -> feed latency.

The latency benchmark's no-case path is three hops through the broker (civic.in.* -> ingest ->
civic.dist.events -> the fan-out -> a feed -> the benchmark's reader), each a produce and a fetch,
plus what the stages add (processing, the commit spacing, the flush). This measures the hop alone:
a stock producer (librdkafka's defaults, as the latency benchmark's publisher) writes PROBE_RATE
small records a second to a one-partition topic of its own, and a stock read_committed consumer
waiting as long as a stage does at least (Settings.fetch_wait_max_ms) reads them, with nothing
between. First on the idle broker, then while the stack carries the latency benchmark's workload
at RATE events/s, in one run: the pipeline alone, then the pipeline with the probe beside it (the
probe's consumer is a load of its own, about 0.09 of a core at 10 ms: civicbus.quirks 1, so both
pipeline figures are reported). `three_bare_hops_estimate` sums three hops drawn at random from
the loaded probe's: what the broker alone would take for the no-case path's three hops.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from confluent_kafka import OFFSET_END, Producer

from benchmarks.harness import Workload, bench_bus, cores_used, department_reader, fetched, processes
from benchmarks.latency import by_path, case_keys_of, phase, start_stack, summary
from benchmarks.report import percentile, write_result
from civicbus.kafka import apply_topics
from civicbus.topology import TopicSpec

PROBE_RATE = 50  # records a second: little beside the pipeline's own at 100 events/s
PROBE_VALUE = b"x" * 400  # about a feed record
ESTIMATE_DRAWS = 100_000


class HopProbe:
    """A bare hop, timed while it runs (see the module docstring), in a process of its own so that
    it shares no interpreter lock with the benchmark's reader; `latencies_ms` per record read once
    it stopped. Its clients exist only while it runs: an assigned consumer fetches whether polled
    or not."""

    def __init__(self, bootstrap: str, topic: str, wait_ms: int):
        self.bootstrap, self.topic, self.wait_ms = bootstrap, topic, wait_ms
        self.latencies_ms: list[float] = []
        context = multiprocessing.get_context("spawn")
        self._stop, self._results = context.Event(), context.Queue()
        self._process = context.Process(target=probe_hops, args=(bootstrap, topic, wait_ms, self._stop, self._results), daemon=True)

    def __enter__(self) -> HopProbe:
        self._process.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self.latencies_ms = self._results.get(timeout=60)
        self._process.join(10)


def probe_hops(bootstrap: str, topic: str, wait_ms: int, stop, results) -> None:
    """HopProbe's process: write PROBE_RATE records a second and read them until `stop` is set;
    put the latencies read on `results`."""
    reader = department_reader(bootstrap, topic, wait_ms, OFFSET_END)
    producer = Producer({"bootstrap.servers": bootstrap})
    latencies_ms: list[float] = []

    def write() -> None:
        while not stop.wait(1 / PROBE_RATE):
            producer.produce(topic, PROBE_VALUE)
            producer.poll(0)
        producer.flush(10)

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        for message in fetched(reader, 0.1):
            latencies_ms.append(time.time() * 1000 - message.timestamp()[1])
    writer.join()
    reader.close()
    results.put(latencies_ms)


def sum_of_hops(latencies_ms: list[float], hops: int = 3, seed: int = 6) -> dict:
    """p50/p99 of `hops` hops drawn independently from `latencies_ms`, summed."""
    draw = random.Random(seed).choice
    sums = [sum(draw(latencies_ms) for _ in range(hops)) for _ in range(ESTIMATE_DRAWS)]
    return {"hops": hops, "p50_ms": round(percentile(sums, 50), 1), "p99_ms": round(percentile(sums, 99), 1)}


def run(seed: int = 6, rate: float = 100.0, seconds: float = 20.0) -> Path:
    with bench_bus() as (ctx, stages):
        topic = f"{ctx.settings.namespace}probe.hop"
        apply_topics(ctx.bootstrap, [TopicSpec(topic, 1)])
        idle = HopProbe(ctx.bootstrap, topic, ctx.settings.fetch_wait_max_ms)
        with idle:
            time.sleep(seconds)
        beside = HopProbe(ctx.bootstrap, topic, ctx.settings.fetch_wait_max_ms)
        workload = Workload(ctx, seed)
        phases = {name: workload.inbound_records(workload.mix(int(rate * seconds))) for name in ("pipeline", "pipeline_beside_the_probe")}
        case_keys = case_keys_of(ctx, [r for records in phases.values() for r in records])
        feeds = start_stack(ctx, stages, workload)
        broker = {name: p for name, p in processes(stages).items() if name == "broker"}  # none when CIVICBUS_BOOTSTRAP is another broker
        figures, broker_cores = {}, {}
        for name, records in phases.items():
            cores: dict[str, float] = {}
            during = cores_used(broker, cores, beside if name == "pipeline_beside_the_probe" else nullcontext())
            found, _ = phase(ctx, stages, feeds, records, rate, case_keys, during)
            if "broker" in cores:
                broker_cores[name] = cores["broker"]
            figures[name] = by_path(found)
            print(f"{name} at {rate:g}/s: {figures[name]['all']}")
        feeds.close()
    return write_result("hops", {
        "seed": seed,
        "rate_events_per_s": rate,
        "seconds_each": seconds,
        "probe": {"records_per_s": PROBE_RATE, "fetch_wait_ms": ctx.settings.fetch_wait_max_ms},
        "bare_hop_idle_broker": summary(idle.latencies_ms, "records"),
        "bare_hop_beside_the_pipeline": summary(beside.latencies_ms, "records"),
        "three_bare_hops_estimate": sum_of_hops(beside.latencies_ms),
        "broker_cores_while_publishing": broker_cores,
        **figures,
    })
