"""(a) Pipeline throughput civic.in.* -> civic.feed.*, one worker per stage, beside a raw
confluent-kafka consume -> produce passthrough of the same records on the same broker; the
case stage alone beside a bare faust passthrough of the same records. Optionally profiles
every stage with py-spy while the pipeline is busy.

Targets (issue 6): pipeline / raw >= 0.15 for event types that form no case; case stage >= 80%
of the bare faust passthrough.
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks import profile as profiler
from benchmarks.harness import Arrivals, Record, StageProcesses, Workload, bench_bus, locate, produce, stamped
from benchmarks.report import RESULTS_DIR, median, write_result
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, producer_config
from civicbus.topology import DIST_EVENTS, PIPE_CASES, TopicSpec

PATHS = {"no_case": False, "case": True}
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


def profile_stages(ctx: BusContext, stages: StageProcesses, workload: Workload, arrivals: Arrivals, seconds: int) -> dict:
    busy = workload.inbound_records(workload.mix(2500 * seconds))
    outputs = {name: RESULTS_DIR / f"profile-{name}.txt" for name in stages.processes}
    samplers = {name: profiler.start(p.pid, seconds, outputs[name]) for name, p in stages.processes.items()}
    through(ctx, arrivals, busy, timeout_s=300)
    for sampler in samplers.values():
        sampler.wait(60)
    return {name: profiler.summarise(path) | {"collapsed_stacks": str(path.relative_to(RESULTS_DIR.parent.parent))}
            for name, path in outputs.items() if path.exists()}


def run(events: int = 10_000, repeats: int = 3, seed: int = 6, profile: bool = False) -> Path:
    with bench_bus() as (ctx, stages):
        workload = Workload(ctx, seed)
        batches = {path: [workload.inbound_records(workload.events(events, case)) for _ in range(repeats)] for path, case in PATHS.items()}
        warmup = {path: workload.inbound_records(workload.events(WARMUP, case)) for path, case in PATHS.items()}
        raw = {path: [raw_passthrough(ctx, records, f"{path}{i}") for i, records in enumerate(batches[path])] for path in PATHS}

        for stage in ("ingest", "cases", "fanout"):
            stages.start_stage(stage)
        feeds = Arrivals(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
        through(ctx, feeds, warmup["no_case"] + warmup["case"], timeout_s=120)
        pipeline = {path: [through(ctx, feeds, records) for records in batches[path]] for path in PATHS}
        profiles = profile_stages(ctx, stages, workload, feeds, 10) if profile else None
        stages.stop()

        # The case stage alone, fed what ingest writes to civic.pipe.cases, against a bare faust copy.
        pipe = ctx.topology.name(PIPE_CASES)
        as_piped = [[stamped(r, pipe) for r in workload.inbound_records(workload.events(events, True))] for _ in range(repeats)]
        stages.start_stage("cases")
        dist = Arrivals(ctx.bootstrap, [ctx.topology.name(DIST_EVENTS)])
        through(ctx, dist, [stamped(r, pipe) for r in warmup["case"]] + [stamped(r, pipe) for r in workload.inbound_records(workload.events(WARMUP, True))])
        case_stage = [through(ctx, dist, records) for records in as_piped]
        stages.stop()
        source, destination = topic(ctx, "bench.faust.src"), topic(ctx, "bench.faust.dst")
        stages.start("faust-passthrough", ["-m", "benchmarks.faust_passthrough", source, destination])
        copied = Arrivals(ctx.bootstrap, [destination])
        retarget = lambda records: [Record(source, r.key, r.value, r.headers) for r in records]
        through(ctx, copied, retarget(workload.inbound_records(workload.events(WARMUP, True))))
        faust = [through(ctx, copied, retarget(records)) for records in as_piped]
        stages.stop()

    figures = {
        "events_per_run": events,
        "repeats": repeats,
        "seed": seed,
        "workload": "no_case: event types that form no case (ingest dispatches them: in -> ingest -> dist -> fanout -> feeds); "
                    "case: the simulator's case traffic (in -> ingest -> pipe.cases -> cases (faust) -> dist -> fanout -> feeds)",
        "events_per_s": {
            path: {"pipeline": median(pipeline[path]), "raw_passthrough": median(raw[path]),
                   "ratio": round(median(pipeline[path]) / median(raw[path]), 3), "runs": {"pipeline": pipeline[path], "raw": raw[path]}}
            for path in PATHS
        },
        "case_stage": {"case_stage": median(case_stage), "faust_passthrough": median(faust),
                       "ratio": round(median(case_stage) / median(faust), 3), "runs": {"case_stage": case_stage, "faust": faust}},
        "targets": {"no_case_ratio_at_least": 0.15, "case_stage_to_faust_at_least": 0.8},
    }
    figures["targets_met"] = {
        "no_case_ratio": figures["events_per_s"]["no_case"]["ratio"] >= 0.15,
        "case_stage_to_faust": figures["case_stage"]["ratio"] >= 0.8,
    }
    if profiles:
        figures["profiles"] = profiles
    return write_result("throughput", figures)
