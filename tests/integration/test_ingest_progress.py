"""processors.ingest_progress.IngestProgress against a real broker: the time up to which ingest has
read every inbound partition moves only once ingest's committed offsets reach the ends those
partitions had then, and never moves back."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from civicbus.context import BusContext
from processors.ingest_progress import IngestProgress


def publish(bus: BusContext, topic: str, count: int) -> None:
    """`count` records into partition 0 of `topic`; its other partitions (the sample city's hotline
    has 16) stay empty, which ingest has read whatever it committed."""
    producer = Producer({"bootstrap.servers": bus.bootstrap})
    for _ in range(count):
        producer.produce(topic, b"x", partition=0)
        producer.flush(10)  # one record a batch: the embedded broker's end offsets are then exact


def commit_as_ingest(bus: BusContext, progress: IngestProgress, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bus.bootstrap, "group.id": progress.group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_progress_follows_ingests_committed_offsets_over_every_inbound_partition(bus):
    progress = IngestProgress(bus)
    hotline, police = bus.topology.inbound("hotline12345"), bus.topology.inbound("police")
    assert progress.read(1_000) == 1_000  # nothing to read: ingest has read everything

    publish(bus, hotline, 3)
    publish(bus, police, 1)
    assert progress.read(2_000) == 1_000  # ingest has committed nothing yet (marked: 3 and 1 records at 2,000)
    commit_as_ingest(bus, progress, hotline, 3)
    assert progress.read(3_000) == 1_000  # the police record is still unread
    commit_as_ingest(bus, progress, police, 1)
    assert progress.read(4_000) == 2_000  # everything there at 2,000 read

    publish(bus, hotline, 2)
    assert progress.read(5_000) == 2_000  # marked: 5 hotline records at 5,000
    commit_as_ingest(bus, progress, hotline, 4)
    publish(bus, hotline, 1)
    assert progress.read(6_000) == 2_000  # one of the records there at 5,000 is still unread
    commit_as_ingest(bus, progress, hotline, 5)
    assert progress.read(7_000) == 5_000  # everything there at 5,000 read, whatever came at 6,000
    commit_as_ingest(bus, progress, hotline, 6)
    assert progress.read(8_000) == 8_000  # ingest caught up: a fresh mark is passed at once
    assert progress.read(9_000) == 9_000
