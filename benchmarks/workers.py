"""(d) Two workers per stage against one, on topics with two partitions, the realistic mix.

On a 2-core machine six busy processes share two cores, so expect little or nothing: this is
the figure to re-measure where each worker has its own cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness import Arrivals, Workload, bench_bus
from benchmarks.report import median, write_result
from benchmarks.throughput import through
from processors import STAGES

PARTITIONS = 2


def measure(workers: int, events: int, repeats: int, seed: int) -> list[float]:
    with bench_bus(partitions=PARTITIONS) as (ctx, stages):
        workload = Workload(ctx, seed)
        runs = [workload.inbound_records(workload.mix(events)) for _ in range(repeats)]
        for instance in range(workers):
            for stage in STAGES:
                stages.start_stage(stage, str(instance))
        feeds = Arrivals(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
        rates, missing = [], []
        try:
            for _ in range(2):  # the second round runs after every member has joined and been assigned
                through(ctx, feeds, workload.inbound_records(workload.mix(400)), timeout_s=120)
                time.sleep(ctx.settings.session_timeout_ms / 1000)
            for records in runs:
                rates.append(through(ctx, feeds, records))
        except TimeoutError as e:  # a finding, not a crash: see README "Known faults"
            missing.append(str(e))
        stages.stop()
    return rates, missing


def run(events: int = 10_000, repeats: int = 2, seed: int = 6) -> Path:
    (one, one_missing), (two, two_missing) = measure(1, events, repeats, seed), measure(2, events, repeats, seed)
    rate = lambda rates: median(rates) if rates else None
    return write_result("workers", {
        "events_per_run": events, "repeats": repeats, "seed": seed, "partitions": PARTITIONS,
        "workload": "half event types that form no case, half the simulator's case traffic; ingest, cases and fanout each run N workers",
        "events_per_s": {"one_worker": rate(one), "two_workers": rate(two),
                         "speedup": round(rate(two) / rate(one), 2) if one and two else None,
                         "runs": {"one_worker": one, "two_workers": two}},
        "runs_with_events_missing": {"one_worker": one_missing, "two_workers": two_missing},
    })
