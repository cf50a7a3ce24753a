"""A group's input on a real broker (civicbus.group_input, civicbus.quirks 10): the reader is
replaced by one with another fetch wait between two batches and nothing is lost, repeated or
reordered; a catch-up read takes a partition to its end."""

from __future__ import annotations

import threading
from collections import defaultdict

from confluent_kafka import TopicPartition

from civicbus.kafka import apply_topics, make_producer
from civicbus.metrics import STAGE_FETCH_WAIT
from civicbus.quirks import read_to_end_of
from civicbus.topology import TopicSpec
from processors.runner import Output, Stage, StageRunner
from tests.support import committed_offset, read_topic, wait_for


class Copy(Stage):
    """Writes each input record's value to `target`, with its input partition in a header."""

    name = "copy"

    def __init__(self, source: str, target: str):
        self.source, self.target = source, target

    def subscription(self) -> list[str]:
        return [self.source]

    def process(self, message):
        yield Output(self.target, message.value(), message.key(), [("from", str(message.partition()).encode())])


def test_a_reader_replaced_for_another_fetch_wait_between_batches_loses_and_repeats_nothing(bus):
    source, target = bus.topology.name("test.copy.in"), bus.topology.name("test.copy.out")
    apply_topics(bus.bootstrap, [TopicSpec(source, 2), TopicSpec(target, 1)])
    runner, stop = StageRunner(Copy(source, target), bus), threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    worker.start()
    producer = make_producer(bus.bootstrap)
    sent: dict[int, list[bytes]] = defaultdict(list)

    def publish(first: int, count: int) -> None:
        for n in range(first, first + count):
            partition = n % 2
            producer.produce(source, f"record-{n}".encode(), partition=partition)
            sent[partition].append(f"record-{n}".encode())
        producer.flush(10)
        read_topic(bus, target, until=lambda got: len(got) >= first + count, timeout_s=60)

    try:
        wait_for(lambda: runner._input is not None, what="the stage's input")
        runner._input.clock.stop()  # the test sets the wait the clock would have measured
        publish(0, 100)
        for wait_ms, first in ((80, 100), (20, 200)):  # a rise, then a fall
            runner._input.clock.listing.wait_ms = wait_ms
            wait_for(lambda w=wait_ms: runner._input._wait_ms == w, what=f"a reader waiting {wait_ms} ms")
            assert STAGE_FETCH_WAIT.labels("copy")._value.get() == wait_ms / 1000
            publish(first, 100)
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    copied: dict[int, list[bytes]] = defaultdict(list)
    for message in read_topic(bus, target, until=lambda got: len(got) >= 300):
        copied[int(dict(message.headers())["from"])].append(message.value())
    assert copied == sent  # each once, in each input partition's order
    group = bus.topology.stage_group("copy")
    assert [committed_offset(bus, group, source, p) for p in (0, 1)] == [150, 150]


def test_a_catch_up_read_takes_a_partition_of_many_transactions_to_its_end(bus):
    topic = bus.topology.name("test.catch-up")
    apply_topics(bus.bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(bus.bootstrap, **{"transactional.id": f"{topic}.writer"})
    producer.init_transactions()
    for n in range(300):  # a batch and a marker each
        producer.begin_transaction()
        producer.produce(topic, str(n).encode())
        producer.commit_transaction()
    read: list[bytes] = []
    read_to_end_of(bus.settings, bus.bootstrap, bus.topology.group("test-catch-up"), [TopicPartition(topic, 0, 0)],
                   lambda message: read.append(message.value()), timeout_s=30)
    assert read == [str(n).encode() for n in range(300)]


def test_a_catch_up_read_ends_while_a_writer_keeps_writing(bus):
    """(civicbus.quirks 11) A reader in step with a steady writer is never told EOF: the read ends
    at the last batch listed when it began, with at least every record written before it."""
    topic = bus.topology.name("test.catch-up-live")
    apply_topics(bus.bootstrap, [TopicSpec(topic, 1)])
    producer = make_producer(bus.bootstrap)
    for n in range(300):
        producer.produce(topic, b"before", str(n).encode())
    producer.flush(10)
    acknowledged, stop = [300], threading.Event()

    def write() -> None:  # a batch about every 10 ms, as the fan-out writes civic.audit under a trickle
        while not stop.is_set():
            producer.produce(topic, b"during")
            producer.flush(10)
            acknowledged[0] += 1
            stop.wait(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for attempt in range(6):
            written_before = acknowledged[0]
            read: list[bytes] = []
            read_to_end_of(bus.settings, bus.bootstrap, bus.topology.group(f"test-catch-up-live-{attempt}"),
                           [TopicPartition(topic, 0, 0)], lambda message: read.append(message.value()), timeout_s=10)
            assert len(read) >= written_before
    finally:
        stop.set()
        writer.join(10)
