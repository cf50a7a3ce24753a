"""What each part of a running stack costs the embedded broker, after minutes of steady traffic.

    python -m benchmarks share --rate 20 --minute 6

The soak shows the broker's CPU climbing at a steady rate until it fills its core; this says to
what. The three stages, a stock read_committed reader per department's feed (as the soak's) and
`civicbus simulate` at RATE; at minute 1 and at minute MINUTE the broker's CPU is read over
WINDOW_S seconds with everything running, together with the Kafka requests each stage's clients
sent, by API (processors.runner.ClientStatistics). Then, one at a time, each part is held still
for a window, beside a window with everything running just before it (the broker's cost climbs
by the minute): the departments' readers paused (their assignments, so librdkafka stops
fetching), each stage stopped (SIGSTOP, then SIGCONT and RECOVER_S to catch up before the next
pair), and last the traffic itself. What the broker saves while a part is still is what that
part costs it (a stopped stage also stops what its output costs its readers; ingest stopped
leaves the other stages nothing to read). Results: benchmarks/results/share-<rate>.json.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from confluent_kafka import TopicPartition

from benchmarks.harness import bench_bus, department_reader, fetched, processes, stage_samples
from benchmarks.report import write_result
from processors import STAGES

WINDOW_S = 20.0
RECOVER_S = 40.0  # a stopped stage's backlog costs the broker a listing at every fetch until it is read


class PausableReaders:
    """A reader per department's feed, read_committed from the start, fetching as the soak's
    readers do until `paused` is set (each pauses its own assignment from its own thread)."""

    def __init__(self, bootstrap: str, feeds: list[str]):
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(bootstrap, feed), daemon=True) for feed in feeds]
        for thread in self._threads:
            thread.start()

    def _run(self, bootstrap: str, feed: str) -> None:
        reader = department_reader(bootstrap, feed)
        paused = False
        while not self._stop.is_set():
            if self.paused.is_set() != paused:
                paused = self.paused.is_set()
                (reader.pause if paused else reader.resume)([TopicPartition(feed, 0)])
            for _ in fetched(reader, 0.1):
                pass
        reader.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def requests_so_far(metrics_dir: str) -> Counter[str]:
    """The stages' Kafka requests so far, as "stage client API"."""
    counts: Counter[str] = Counter()
    for sample in stage_samples(metrics_dir):
        if sample.name == "civicbus_kafka_requests_total":
            counts[f"{sample.labels['stage']} {sample.labels['client']} {sample.labels['request']}"] += sample.value
    return counts


def window(stages, metrics_dir: str) -> dict:
    """The broker's cores and the stages' requests a second over WINDOW_S."""
    broker = processes(stages)["broker"]
    cpu = lambda: sum(broker.cpu_times()[:2])
    cpu_before, requests_before = cpu(), requests_so_far(metrics_dir)
    time.sleep(WINDOW_S)
    cpu_after, requests_after = cpu(), requests_so_far(metrics_dir)
    rates = {name: round((requests_after[name] - requests_before[name]) / WINDOW_S, 1) for name in requests_after}
    return {"broker_cores": round((cpu_after - cpu_before) / WINDOW_S, 3),
            "stage_requests_per_s": {name: rate for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]) if rate >= 0.5}}


def run(rate: float, minute: int, seed: int) -> Path:
    with tempfile.TemporaryDirectory(prefix="civicbus-share-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the stage processes inherit both
        os.environ["CIVICBUS_CLIENT_STATISTICS_INTERVAL_MS"] = "1000"
        with bench_bus() as (ctx, stages):
            for stage in STAGES:
                stages.start_stage(stage)
            time.sleep(15)  # joined and restored, as the soak's warm-up
            idle = window(stages, metrics_dir)["broker_cores"]
            readers = PausableReaders(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
            simulator = stages.start("simulator", ["-m", "civicbus.cli", "simulate", "--rate", str(rate),
                                                   "--duration", str(minute * 60 + 600), "--seed", str(seed)])
            started = time.monotonic()
            first_minute = window(stages, metrics_dir)
            time.sleep(max(0.0, (minute - 1) * 60 - (time.monotonic() - started)))
            running = window(stages, metrics_dir)
            still: dict[str, dict[str, float]] = {}

            def held_still(part: str, hold, release) -> None:
                """The broker's cores over a window just before and one while `part` is held still."""
                before = window(stages, metrics_dir)["broker_cores"]
                hold()
                try:
                    time.sleep(1)
                    during = window(stages, metrics_dir)["broker_cores"]
                finally:
                    release()
                still[part] = {"running": before, "still": during, "saved": round(before - during, 3)}
                time.sleep(RECOVER_S)

            held_still("departments' readers paused", readers.paused.set, readers.paused.clear)
            for name in (f"{stage}-0" for stage in reversed(STAGES)):  # the fan-out first: least backlog downstream
                pid = stages.processes[name].pid
                held_still(f"{name} stopped", lambda pid=pid: os.kill(pid, signal.SIGSTOP), lambda pid=pid: os.kill(pid, signal.SIGCONT))
            held_still("no traffic", lambda: os.kill(simulator.pid, signal.SIGSTOP), lambda: os.kill(simulator.pid, signal.SIGCONT))
            readers.close()
    for part, cores in still.items():
        print(f"{part}: broker {cores['still']} cores, {cores['running']} just before")
    return write_result(f"share-{int(rate)}", {
        "rate_events_per_s": rate, "minute": minute, "seed": seed, "window_s": WINDOW_S,
        "workload": "`civicbus simulate` into the three stages; a stock read_committed reader per department's feed",
        "broker_cores_fresh_stack_no_traffic": idle,
        "minute_1": first_minute,
        f"minute_{minute}": running,
        f"minute_{minute}_broker_cores_while_still": still,
    })
