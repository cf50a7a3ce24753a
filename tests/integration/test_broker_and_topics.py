import socket

import pytest

from civicbus.broker import BrokerError, EmbeddedBroker
from civicbus.kafka import apply_topics
from civicbus.topology import TopicSpec
from confluent_kafka.admin import AdminClient


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
