"""Case stage throughput against a bare faust passthrough, on the embedded broker.

    .venv/bin/python -m benchmarks.case_stage [--events 5000] [--rounds 3]

Fills civic.pipe.cases with simulated case reports (standardised, as ingest writes them), then
runs (1) a faust app that copies civic.pipe.cases to civic.dist.events unchanged and (2) the real
case stage, each as `civicbus process`-style child process, and reports events/s of each from
the timestamps of its first and last output record (start-up excluded).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, TopicPartition

from civicbus.broker import EmbeddedBroker
from civicbus.context import BusContext
from civicbus.kafka import apply_topics, make_producer
from civicbus.settings import Settings
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from processors.standardise import Standardiser
from producers.simulator import CityTraffic

PASSTHROUGH = """
import faust, sys
from civicbus.cli_support import bus_context
from processors.cases import create_app
ctx = bus_context()
app = faust.App(ctx.topology.group("civicbus-cases"), broker=f"kafka://{ctx.bootstrap}", store="memory://",
                web_enabled=False, key_serializer="raw", value_serializer="raw", processing_guarantee="at_least_once",
                consumer_auto_offset_reset="earliest", topic_partitions=1, broker_session_timeout=6,
                broker_heartbeat_interval=1, broker_commit_interval=0.5, producer_acks=-1)
src = app.topic(ctx.topology.name("civic.pipe.cases"), key_type=bytes, value_type=bytes)
dst = app.topic(ctx.topology.name("civic.dist.events"), key_type=bytes, value_type=bytes)
@app.agent(src)
async def copy(stream):
    async for record in stream.events():
        await dst.send(key=record.key, value=record.value, headers=list((record.headers or {}).items()))
app.finalize()
from faust.worker import Worker
Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
"""


def case_events(ctx: BusContext, count: int) -> list[tuple[bytes, bytes, list]]:
    traffic, standardiser = CityTraffic(ctx, seed=1), Standardiser.from_config(ctx.settings.config)
    out = []
    while len(out) < count:
        department, event = traffic.next_event()
        if not ctx.catalog[event["type"]].forms_case:
            continue
        event = {**event, "id": str(uuid.uuid4()), "source": department, "time": datetime.now(timezone.utc),
                 "classification": ctx.catalog[event["type"]].classification}
        event = ctx.catalog.validate(event)
        event["location"] = standardiser.standardise(event["location"])
        value, headers = ctx.serde.encode(event, "x")
        out.append((event["id"].encode(), value, headers))
    return out


def run(bootstrap: str, argv: list[str], events: list, label: str) -> float:
    ctx = BusContext(Settings(bootstrap=bootstrap, namespace=f"b{uuid.uuid4().hex[:8]}."))
    apply_topics(bootstrap, ctx.topology.specs())
    producer = make_producer(bootstrap)
    for key, value, headers in events:
        producer.produce(ctx.topology.name(PIPE_CASES), value, key, headers=headers)
    producer.flush(60)
    env = {**os.environ, "CIVICBUS_BOOTSTRAP": bootstrap, "CIVICBUS_NAMESPACE": ctx.settings.namespace}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    consumer.assign([TopicPartition(ctx.topology.name(DIST_EVENTS), 0, 0)])
    stamps: list[int] = []
    deadline = time.monotonic() + 600
    try:
        while len(stamps) < len(events) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if not message.error():
                    stamps.append(message.timestamp()[1])
    finally:
        consumer.close()
        process.terminate()
        process.wait(60)
    rate = (len(stamps) - 1) / max(1e-3, (stamps[-1] - stamps[0]) / 1000)
    print(f"{label:<22} {len(stamps)} events  {rate:8.0f} events/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        events = case_events(BusContext(Settings(bootstrap=broker.bootstrap)), args.events)
        bare, stage = [], []
        for _ in range(args.rounds):
            bare.append(run(broker.bootstrap, [sys.executable, "-c", PASSTHROUGH], events, "faust passthrough"))
            stage.append(run(broker.bootstrap, [sys.executable, "-m", "civicbus.cli", "process", "cases"], events, "case stage"))
        print(f"best of {args.rounds}: case stage {max(stage):.0f}/s, passthrough {max(bare):.0f}/s: {max(stage) / max(bare):.0%}")


if __name__ == "__main__":
    main()
