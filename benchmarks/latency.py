"""(b) Publish -> feed latency at fixed rates (100, 1,000 and 5,000 events/s, or `--rates`), the realistic mix.

Measured from outside, as a department feels it: a stock confluent-kafka producer (librdkafka's
defaults) writes Confluent-framed Avro to civic.in.*, and a stock consumer reads every feed
read_committed. Latency of a feed record = when the consumer received it - when the publisher
produced the event (its inbound record timestamp, carried to the feed in the
civic_published_ms header). Every feed record counts. `p50_*_ms` splits it by the records'
CreateTimes: until the event was written to civic.dist.events, until the fan-out wrote the feed
record, and the rest (the fan-out's commit and the read). `slowest_windows` names the stall
episodes: the publish-time windows whose records waited longest, split the same way. `cores`
is what each process used while a phase ran (the stages, the broker, and this benchmark's own
producer and reader): on two cores it says whether the machine was full. Each repeat runs on a
fresh stack, its phases one after the other; the headline figures are medians over the repeats.
Targets (issue 10): p99 <= 100 ms at 100/s and <= 250 ms at 1,000/s. `python -m benchmarks hops`
(benchmarks/hops.py) puts these phases beside what one bare hop costs on the same broker.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import Producer

from benchmarks.harness import Arrivals, Record, Workload, bench_bus, cores_used, locate, processes, produce, read_all
from benchmarks.report import percentile, write_result
from civicbus.topology import DIST_EVENTS
from processors import STAGES

RATES = {100: 10.0, 1_000: 10.0, 5_000: 6.0}  # the phases unless `--rates`: events/s -> seconds at that rate
PHASE_SECONDS = 10.0  # a phase at a rate not in RATES
TARGET_P99_MS = {100: 100, 1_000: 250}
STALL_WINDOW_MS = 250  # publish-time windows compared in slowest_windows


def publish_at(bootstrap: str, records: list[Record], rate: float) -> None:
    """Produce in 5 ms ticks, each its share of the rate, with a stock producer."""
    producer = Producer({"bootstrap.servers": bootstrap})
    started = time.monotonic()
    sent = 0
    while sent < len(records):
        due = min(len(records), int((time.monotonic() - started) * rate) + 1)
        for r in records[sent:due]:
            producer.produce(r.topic, r.value, r.key, headers=r.headers)
        sent = due
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(30)


def summary(latencies_ms: list[float], counted: str = "feed_records") -> dict:
    return {
        counted: len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 1),
        "p95_ms": round(percentile(latencies_ms, 95), 1),
        "p99_ms": round(percentile(latencies_ms, 99), 1),
        "max_ms": round(max(latencies_ms), 1),
    }


@dataclass(frozen=True)
class FeedRecord:
    """One feed record's way, in ms since the epoch: published, written to civic.dist.events (by
    ingest, or by the case stage on the case path), written to its feed by the fan-out, read."""

    path: str
    published: float
    in_dist: float | None
    in_feed: float
    read: float

    @property
    def latency(self) -> float:
        return self.read - self.published

    def segments(self) -> dict[str, float]:
        """Where its time went; `to_dist` is what ingest (and on the case path the case stage)
        took, `dist_to_feed` the fan-out, `feed_to_reader` the fan-out's commit and the read."""
        if self.in_dist is None:
            return {}
        return {"to_dist": self.in_dist - self.published, "dist_to_feed": self.in_feed - self.in_dist,
                "feed_to_reader": self.read - self.in_feed}


def segment_medians(records: list[FeedRecord]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for record in records:
        for name, ms in record.segments().items():
            values.setdefault(name, []).append(ms)
    return {f"p50_{name}_ms": round(percentile(ms, 50), 1) for name, ms in values.items()}


def slowest_windows(records: list[FeedRecord], started_ms: float, count: int = 3) -> list[dict]:
    """The publish-time windows whose records waited longest (median), and where that time went:
    the stall episodes behind a p99 far above the p50."""
    windows: dict[int, list[FeedRecord]] = {}
    for record in records:
        windows.setdefault(int((record.published - started_ms) // STALL_WINDOW_MS), []).append(record)
    worst = sorted(windows.items(), key=lambda item: -percentile([r.latency for r in item[1]], 50))[:count]
    return [{"published_from_s": round(index * STALL_WINDOW_MS / 1000, 2), "feed_records": len(found),
             "p50_ms": round(percentile([r.latency for r in found], 50), 1), **segment_medians(found)}
            for index, found in sorted(worst)]


def start_stack(ctx, stages, workload: Workload) -> Arrivals:
    """The stages started and warmed up, and a reader of every feed that has read the warm-up."""
    for stage in STAGES:
        stages.start_stage(stage)
    feeds = Arrivals(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
    warmup = workload.inbound_records(workload.mix(300))
    produce(ctx.bootstrap, warmup)
    feeds.wait_for({r.key for r in warmup}, 120)
    feeds.settle()  # the warm-up's last copies (seen: 130 of them counted in the first phase, 5-6 s after publishing)
    return feeds


def phase(ctx, stages, feeds: Arrivals, records: list[Record], rate: float, case_keys: set[bytes],
          during: AbstractContextManager = nullcontext()) -> tuple[list[FeedRecord], float]:
    """Publish `records` at `rate` and read every feed copy of them: each copy's way, and when the
    phase began (ms since the epoch). `during` is entered from the first publish until every event
    arrived once."""
    feeds.records.clear()
    feeds.rereads = 0
    started_ms = time.time() * 1000
    publisher = threading.Thread(target=publish_at, args=(ctx.bootstrap, records, rate))
    keys = {r.key for r in records}
    with during:
        publisher.start()
        try:
            feeds.wait_for(keys, 120 + len(records) / rate)
        except TimeoutError as e:
            missing = keys - set(feeds.first_seen)
            raise TimeoutError(f"{e}; where the missing ones are: {locate(ctx, missing)}\n{stages.log_tails()}") from None
    feeds.settle()  # and every other copy of them
    publisher.join()
    in_dist = {m.key(): m.timestamp()[1] for m in reversed(read_all(ctx.bootstrap, [ctx.topology.name(DIST_EVENTS)], idle_s=1.0))
               if m.key() in keys}
    found = [FeedRecord("case" if key in case_keys else "no_case", published, in_dist.get(key), written, arrived * 1000)
             for key, arrived, published, written in feeds.records]
    return found, started_ms


def case_keys_of(ctx, records: list[Record]) -> set[bytes]:
    return {r.key for r in records if ctx.catalog[dict(r.headers)["ce_type"].decode()].case_stage}


def by_path(found: list[FeedRecord]) -> dict:
    """Figures for every feed record and per path."""
    figures = {}
    for path in ("all", "no_case", "case"):
        on_path = [r for r in found if path in ("all", r.path)]
        figures[path] = summary([r.latency for r in on_path]) | segment_medians(on_path)
    return figures


def one_run(seed: int, rates: dict[int, float]) -> dict:
    """Every rate in turn on a fresh stack: figures per rate and path, and the cores each process used."""
    results = {}
    with bench_bus() as (ctx, stages):
        workload = Workload(ctx, seed)
        runs = {rate: workload.inbound_records(workload.mix(int(rate * seconds))) for rate, seconds in rates.items()}
        case_keys = case_keys_of(ctx, [r for records in runs.values() for r in records])
        feeds = start_stack(ctx, stages, workload)
        measured = {**processes(stages), "benchmark": psutil.Process()}
        for rate, records in runs.items():
            cores: dict[str, float] = {}
            found, started_ms = phase(ctx, stages, feeds, records, rate, case_keys, cores_used(measured, cores))
            results[str(rate)] = {"events": len(records), **by_path(found)}
            results[str(rate)]["slowest_windows"] = slowest_windows(found, started_ms)
            results[str(rate)]["records_the_reader_read_again"] = feeds.rereads  # left out of the figures
            results[str(rate)]["cores"] = cores
            print(f"latency at {rate}/s: {results[str(rate)]['all']}; cores {cores}")
        feeds.close()
        stages.stop()
        results["stage_log_lines"] = stages.log_tails(chars=600)
    return results


def median_of(runs: list[dict], rates: dict[int, float]) -> dict:
    """Each figure of each rate and path, and each process's cores, the median over the runs."""
    figures = {}
    for rate in rates:
        figures[str(rate)] = {"events": runs[0][str(rate)]["events"]}
        for part in ("all", "no_case", "case", "cores"):
            names = runs[0][str(rate)][part]
            figures[str(rate)][part] = {name: statistics.median(run[str(rate)][part][name] for run in runs) for name in names}
    return figures


def run(seed: int = 6, repeats: int = 3, rates: list[int] | None = None) -> Path:
    """`rates` (events/s) replace RATES's phases, each PHASE_SECONDS long unless RATES names it."""
    phases = RATES if not rates else {rate: RATES.get(rate, PHASE_SECONDS) for rate in rates}
    runs = [one_run(seed, phases) for _ in range(repeats)]
    results = median_of(runs, phases)
    judged = [results[str(rate)]["all"]["p99_ms"] <= ms for rate, ms in TARGET_P99_MS.items() if rate in phases]
    return write_result("latency", {
        "seed": seed,
        "repeats": repeats,
        "workload": "half event types that form no case, half the simulator's case traffic, interleaved; "
                    "figures for all feed records and split by path (no_case: ingest -> fanout; case: ingest -> cases -> fanout); "
                    "each figure the median over the repeats, each repeat on a fresh stack",
        "phase_seconds": {str(rate): seconds for rate, seconds in phases.items()},
        "rates_events_per_s": results,
        "runs": runs,
        "target": {f"p99_ms_at_{rate}_per_s_at_most": ms for rate, ms in TARGET_P99_MS.items()},
        "target_met": all(judged) if judged else None,
    })
