"""(f) What the broker's own work costs, in broker CPU: the facts the pipeline's tuning rests on.

- produce: records to one topic or spread over 25 (a fan-out writes to every feed), plain or in
  transactions of a given size: broker CPU microseconds per record, so the fixed cost of a
  transaction (per partition it wrote) shows beside the cost of a record;
- metadata: broker CPU per produced batch (one record, sent and acknowledged before the next),
  idempotent and plain, on a fresh broker and after it was made to hold more topics and more
  registered producers: what civicbus.quirks (8) rests on;
- fetch: a read_committed consumer of 1 or 25 partitions with the fetch wait civicbus uses
  (the embedded broker answers a fetch only when its wait has passed), idle, and while 2,000
  records a second arrive on one of its partitions (each fetch is then answered at once, and
  covers every partition): broker CPU it costs, and fetch requests a second.
Broker CPU is read from /proc for the broker process (the embedded one only).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from benchmarks.report import median, write_result
from civicbus.broker import EmbeddedBroker
from civicbus.kafka import apply_topics, producer_config
from civicbus.settings import Settings
from civicbus.topology import TopicSpec

RECORDS = 20_000
VALUE = b"x" * 400  # about a feed record
HEADERS = [("ce_specversion", b"1.0"), ("ce_id", b"12faba5e-b230-473c-9c01-e874af3119ba"), ("ce_type", b"housing.rental.registered"),
           ("ce_source", b"housing"), ("ce_time", b"2026-11-25T13:59:24.897000Z"), ("content-type", b"application/avro")]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def produce_cost(broker: EmbeddedBroker, process: psutil.Process, topics: list[str], per_transaction: int | None, run: str) -> float:
    """Broker CPU microseconds per record for RECORDS records spread round-robin over `topics`."""
    config = producer_config(broker.bootstrap, **{"linger.ms": 2})
    if per_transaction:
        config["transactional.id"] = f"bench-broker-{run}"
    producer = Producer(config)
    if per_transaction:
        producer.init_transactions()
        producer.begin_transaction()
    before = cpu_seconds(process)
    for n in range(RECORDS):
        producer.produce(topics[n % len(topics)], VALUE, str(n).encode(), headers=HEADERS)
        producer.poll(0)
        if per_transaction and n % per_transaction == per_transaction - 1:
            producer.commit_transaction()
            producer.begin_transaction()
    if per_transaction:
        producer.commit_transaction()
    producer.flush(60)
    return round((cpu_seconds(process) - before) / RECORDS * 1e6, 1)


METADATA_BATCHES = 300
PADDING_TOPICS, PADDING_PRODUCERS = 1_000, 100


def batch_cost(broker: EmbeddedBroker, process: psutil.Process, topic: str, idempotent: bool) -> float:
    """Broker CPU microseconds per single-record batch, each acknowledged before the next."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": idempotent, "acks": "all", "linger.ms": 0})
    producer.produce(topic, VALUE)
    producer.flush(10)  # connected, and its producer id registered, before the clock starts
    before = cpu_seconds(process)
    for _ in range(METADATA_BATCHES):
        producer.produce(topic, VALUE, headers=HEADERS)
        producer.flush(10)
    return round((cpu_seconds(process) - before) / METADATA_BATCHES * 1e6)


def metadata_growth(repeats: int) -> dict:
    """Batch costs on a broker of its own as it holds more topics, then more producers."""
    with EmbeddedBroker() as broker:
        process = psutil.Process(broker.pid)
        apply_topics(broker.bootstrap, [TopicSpec("bench.meta", 1)])
        held_topics, held_producers, figures = 1, 0, {}

        def measure() -> None:
            nonlocal held_producers
            label = f"{held_topics} topics, {held_producers} producers registered"
            figures[label] = {kind: median([batch_cost(broker, process, "bench.meta", kind == "idempotent") for _ in range(repeats)])
                              for kind in ("idempotent", "plain")}
            print(f"batch cost, {label}: {figures[label]} us of broker CPU")
            held_producers += repeats  # each idempotent run registered one

        measure()
        for _ in range(2):
            apply_topics(broker.bootstrap, [TopicSpec(f"bench.pad.{held_topics + i}", 1) for i in range(PADDING_TOPICS)], timeout_s=120)
            held_topics += PADDING_TOPICS
            measure()
        for _ in range(PADDING_PRODUCERS):
            producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
            producer.produce("bench.meta", VALUE)
            producer.flush(10)
        held_producers += PADDING_PRODUCERS
        measure()
    return figures


def idle_fetch_cost(broker: EmbeddedBroker, process: psutil.Process, topics: list[str], wait_ms: int, seconds: float = 3.0,
                    partitions: int = 1) -> float:
    """Broker CPU (cores) spent answering one idle consumer of `partitions` partitions of each of `topics`."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-broker-idle", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": wait_ms})
    consumer.assign([TopicPartition(t, p, OFFSET_END) for t in topics for p in range(partitions)])  # nothing to read: idle
    consumer.poll(1.0)  # connected and fetching before the clock starts
    before, started = cpu_seconds(process), time.monotonic()
    while time.monotonic() - started < seconds:
        consumer.poll(0.1)
    cost = (cpu_seconds(process) - before) / (time.monotonic() - started)
    consumer.close()
    return round(cost, 3)


def busy_fetch_cost(broker: EmbeddedBroker, process: psutil.Process, topics: list[str], wait_ms: int, rate: int = 2000,
                    seconds: float = 3.0) -> dict:
    """Broker CPU (cores) and fetch requests/s of one consumer of `topics` while `rate` records/s
    arrive on the first of them."""
    stats: dict = {}
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-broker-busy", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": wait_ms, "statistics.interval.ms": 500,
                         "stats_cb": lambda s: stats.update(json.loads(s))})
    consumer.assign([TopicPartition(t, 0, OFFSET_END) for t in topics])
    consumer.poll(1.0)
    stop = threading.Event()

    def publish() -> None:
        producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 2}))
        started, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            for _ in range(due - sent):
                producer.produce(topics[0], VALUE, headers=HEADERS)
            sent = max(sent, due)
            producer.poll(0.002)
        producer.flush(30)

    publisher = threading.Thread(target=publish)
    publisher.start()
    time.sleep(1.0)

    def fetches() -> int:
        return sum(b.get("req", {}).get("Fetch", 0) for b in stats.get("brokers", {}).values())

    before, fetched_before, started = cpu_seconds(process), fetches(), time.monotonic()
    while time.monotonic() - started < seconds:
        consumer.consume(1000, 0.05)
    elapsed = time.monotonic() - started
    figures = {"broker_cores": round((cpu_seconds(process) - before) / elapsed, 3), "fetch_requests_per_s": round((fetches() - fetched_before) / elapsed)}
    stop.set()
    publisher.join()
    consumer.close()
    return figures


def run(repeats: int = 3) -> Path:
    metadata = metadata_growth(repeats)
    with EmbeddedBroker() as broker:
        process = psutil.Process(broker.pid)
        one, many = ["bench.one"], [f"bench.many.{i}" for i in range(25)]
        apply_topics(broker.bootstrap, [TopicSpec(t, 1) for t in one + many])
        cases = {
            "1 topic, no transaction": (one, None),
            "25 topics, no transaction": (many, None),
            "1 topic, 500 records a transaction": (one, 500),
            "25 topics, 500 records a transaction": (many, 500),
            "25 topics, 100 records a transaction": (many, 100),
            "25 topics, 20 records a transaction": (many, 20),
        }
        produce = {name: median([produce_cost(broker, process, topics, size, f"{i}{n}") for n in range(repeats)], digits=3)
                   for i, (name, (topics, size)) in enumerate(cases.items())}
        for name, cost in produce.items():
            print(f"produce, {name}: {cost} us of broker CPU a record")
        wait_ms = Settings().fetch_wait_max_ms
        fetch = {f"{len(topics)} partitions, fetch wait {wait}ms": median([idle_fetch_cost(broker, process, topics, wait) for _ in range(repeats)], digits=3)
                 for topics in (one, many) for wait in (wait_ms, 100)}
        for name, cores in fetch.items():
            print(f"idle consumer, {name}: {cores} broker cores")
        busy = {f"{len(topics)} partitions, fetch wait {wait_ms}ms": busy_fetch_cost(broker, process, topics, wait_ms) for topics in (one, many)}
        for name, figures in busy.items():
            print(f"consumer with 2,000 records/s arriving, {name}: {figures}")
    return write_result("broker", {
        "records_per_case": RECORDS,
        "repeats": repeats,
        "produce_broker_cpu_us_per_record": produce,
        "single_record_batch_broker_cpu_us_by_what_the_broker_holds": metadata,
        "idle_read_committed_consumer_broker_cores": fetch,
        "read_committed_consumer_with_2000_records_per_s_arriving": busy,
    })


# How a partition's batches are spread (civicbus.quirks, 2; departments.yaml `partitions`).
SPREAD_BATCHES = 20_000
SPREAD_RATE = 50  # single-record batches a second while measuring, spread like the held ones
INBOUND_TOPICS = 23  # the sample city's departments


def spread_cost(partitions: int, seconds: float = 20.0) -> dict:
    """One topic holding SPREAD_BATCHES single-record batches over `partitions`, read at its end
    by a read_committed consumer with the stages' fetch wait while SPREAD_RATE more arrive: the
    broker's cores, and how many of the new records the reader got."""
    with EmbeddedBroker() as broker:
        process = psutil.Process(broker.pid)
        topic = "bench.spread"
        apply_topics(broker.bootstrap, [TopicSpec(topic, partitions)])
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        for n in range(SPREAD_BATCHES):
            producer.produce(topic, VALUE, partition=n % partitions)
            producer.flush(10)  # each its own batch, as a publisher of one event at a time writes
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-broker-spread", "enable.auto.commit": False,
                             "isolation.level": "read_committed", "fetch.wait.max.ms": Settings().fetch_wait_max_ms})
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        consumer.poll(1.0)
        received, stop = [0], threading.Event()

        def read() -> None:
            while not stop.is_set():
                received[0] += len([m for m in consumer.consume(100, 0.1) if not m.error()])

        reader = threading.Thread(target=read)
        reader.start()
        before, started, sent = cpu_seconds(process), time.monotonic(), 0
        while time.monotonic() - started < seconds:
            producer.produce(topic, VALUE, partition=sent % partitions)
            producer.flush(10)
            sent += 1
            time.sleep(max(0.0, started + sent / SPREAD_RATE - time.monotonic()))
        time.sleep(1.0)
        cores = (cpu_seconds(process) - before) / (time.monotonic() - started)
        stop.set()
        reader.join()
        consumer.close()
    return {"broker_cores": round(cores, 2), "records_sent": sent, "records_read": received[0]}


def run_partitions(repeats: int = 3) -> Path:
    """What spreading a busy inbound topic over partitions buys and costs on the embedded broker."""
    spread = {}
    for partitions in (1, 4, 16):
        runs = [spread_cost(partitions) for _ in range(repeats)]
        label = f"{SPREAD_BATCHES} batches in {partitions} partitions"
        spread[label] = {"broker_cores": median([r["broker_cores"] for r in runs], digits=2),
                         "records_read_of_sent": [f"{r['records_read']}/{r['records_sent']}" for r in runs]}
        print(f"reader at the end of {label}: {spread[label]}")
    idle = {}
    wait_ms = Settings().fetch_wait_max_ms
    for per_topic in (1, 4):
        with EmbeddedBroker() as broker:
            process = psutil.Process(broker.pid)
            topics = [f"bench.in.{i}" for i in range(INBOUND_TOPICS)]
            apply_topics(broker.bootstrap, [TopicSpec(t, per_topic) for t in topics])
            label = f"{INBOUND_TOPICS} topics x {per_topic} partitions, fetch wait {wait_ms}ms"
            idle[label] = median([idle_fetch_cost(broker, process, topics, wait_ms, partitions=per_topic) for _ in range(repeats)], digits=3)
        print(f"idle consumer, {label}: {idle[label]} broker cores")
    return write_result("partitions", {
        "repeats": repeats,
        "reader_while_50_records_per_s_arrive": spread,
        "idle_read_committed_consumer_broker_cores": idle,
    })
