import socket

import pytest

from civicbus.broker import BrokerError, EmbeddedBroker
from civicbus.kafka import apply_topics, make_admin, make_producer, partition_offsets
from civicbus.topology import TopicSpec
from confluent_kafka.admin import AdminClient, OffsetSpec


def test_embedded_broker_answers_and_stops():
    with EmbeddedBroker() as broker:
        topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
        assert topics.brokers
        pid = broker.pid
    with pytest.raises(OSError):
        import os

        os.kill(pid, 0)  # reaped: no such process


def test_port_already_taken_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            EmbeddedBroker(port=port).start()


def test_topics_apply_creates_then_is_idempotent_and_reports_differences(bus):
    specs = bus.topology.specs()
    again = apply_topics(bus.bootstrap, specs)
    assert again.created == [] and not again.differs and len(again.unchanged) == len(specs)
    changed = [TopicSpec(specs[0].name, specs[0].partitions + 2, specs[0].config)]
    report = apply_topics(bus.bootstrap, changed)
    assert report.differs == [f"{specs[0].name}: partitions {specs[0].partitions}, expected {specs[0].partitions + 2}"]
    metadata = AdminClient({"bootstrap.servers": bus.bootstrap}).list_topics(timeout=5)
    assert len(metadata.topics[specs[0].name].partitions) == specs[0].partitions  # never altered


def test_partition_offsets_answers_every_partition_of_each_topic_in_one_request(bus):
    feeds = [bus.topology.feed(d) for d in bus.city.department_ids()[:2]]
    producer = make_producer(bus.bootstrap)
    for count, feed in enumerate(feeds, start=2):
        for _ in range(count):
            producer.produce(feed, b"x", partition=0)
            producer.flush(10)  # a batch each: the embedded broker's latest is the last batch's base + 1
    admin = make_admin(bus.bootstrap)
    partitions = {(feed, p) for feed in feeds for p in AdminClient({"bootstrap.servers": bus.bootstrap}).list_topics(timeout=5).topics[feed].partitions}
    earliest = partition_offsets(admin, feeds, OffsetSpec.earliest())
    latest = partition_offsets(admin, feeds, OffsetSpec.latest())
    assert set(earliest) == set(latest) == partitions
    assert [latest[(feed, 0)] for feed in feeds] == [2, 3] and set(earliest.values()) == {0}
    with pytest.raises(KeyError, match="no-such-topic"):
        partition_offsets(admin, [bus.topology.name("no-such-topic")], OffsetSpec.latest())
