"""(b) Publish -> feed latency at fixed rates (100, 1,000 and 5,000 events/s), the realistic mix.

Measured from outside, as a department feels it: a stock confluent-kafka producer (librdkafka's
defaults) writes Confluent-framed Avro to civic.in.*, and a stock consumer reads every feed
read_committed. Latency of a feed record = when the consumer received it - when the publisher
produced the event (its inbound record timestamp, carried to the feed in the
civic_published_ms header). Every feed record counts. `*_until_fanout_wrote_ms` splits it:
publish until the fan-out produced the feed record (its CreateTime); the rest is the fan-out's
commit and the read.
Targets (issue 10): p99 <= 100 ms at 100/s and <= 250 ms at 1,000/s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from benchmarks.harness import Arrivals, Record, Workload, bench_bus, locate, produce
from benchmarks.report import percentile, write_result

RATES = {100: 10.0, 1_000: 10.0, 5_000: 6.0}  # events/s: seconds at that rate
TARGET_P99_MS = {100: 100, 1_000: 250}


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


def summary(latencies_ms: list[float]) -> dict:
    return {
        "feed_records": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 1),
        "p95_ms": round(percentile(latencies_ms, 95), 1),
        "p99_ms": round(percentile(latencies_ms, 99), 1),
        "max_ms": round(max(latencies_ms), 1),
    }


def run(seed: int = 6) -> Path:
    results = {}
    with bench_bus() as (ctx, stages):
        workload = Workload(ctx, seed)
        runs = {rate: workload.inbound_records(workload.mix(int(rate * seconds))) for rate, seconds in RATES.items()}
        case_keys = {r.key for records in runs.values() for r in records if ctx.catalog[dict(r.headers)["ce_type"].decode()].case_stage}
        for stage in ("ingest", "cases", "fanout"):
            stages.start_stage(stage)
        feeds = Arrivals(ctx.bootstrap, [ctx.topology.feed(d) for d in ctx.city.department_ids()])
        warmup = workload.inbound_records(workload.mix(300))
        produce(ctx.bootstrap, warmup)
        feeds.wait_for({r.key for r in warmup}, 120)
        for rate, records in runs.items():
            feeds.records.clear()
            publisher = threading.Thread(target=publish_at, args=(ctx.bootstrap, records, rate))
            publisher.start()
            try:
                feeds.wait_for({r.key for r in records}, 120 + RATES[rate])
            except TimeoutError as e:
                missing = {r.key for r in records} - set(feeds.first_seen)
                raise TimeoutError(f"{e}; where the missing ones are: {locate(ctx, missing)}\n{stages.log_tails()}") from None
            publisher.join()
            latencies_ms = {"all": [], "no_case": [], "case": []}
            to_fanout_ms = {"no_case": [], "case": []}
            for key, arrived, published, written in feeds.records:
                path = "case" if key in case_keys else "no_case"
                latencies_ms["all"].append(arrived * 1000 - published)
                latencies_ms[path].append(arrived * 1000 - published)
                to_fanout_ms[path].append(written - published)
            results[str(rate)] = {"events": len(records)} | {path: summary(values) for path, values in latencies_ms.items()}
            for path, values in to_fanout_ms.items():
                results[str(rate)][path]["p50_until_fanout_wrote_ms"] = round(percentile(values, 50), 1)
                results[str(rate)][path]["p99_until_fanout_wrote_ms"] = round(percentile(values, 99), 1)
            print(f"latency at {rate}/s: {results[str(rate)]}")
        stages.stop()
    return write_result("latency", {
        "seed": seed,
        "workload": "half event types that form no case, half the simulator's case traffic, interleaved; "
                    "figures for all feed records and split by path (no_case: ingest -> fanout; case: ingest -> cases -> fanout)",
        "rates_events_per_s": results,
        "target": {f"p99_ms_at_{rate}_per_s_at_most": ms for rate, ms in TARGET_P99_MS.items()},
        "target_met": all(results[str(rate)]["all"]["p99_ms"] <= ms for rate, ms in TARGET_P99_MS.items()),
    })
