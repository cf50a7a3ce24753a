"""processors.runner.ClientStatistics: a stage's clients count the requests they send and the record
batches they write (civicbus_kafka_requests_total, civicbus_produced_batches_total), read from
librdkafka's own statistics against a real broker."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import TopicPartition

from civicbus.kafka import TopicFollower, apply_topics, make_consumer, make_producer
from civicbus.metrics import KAFKA_REQUESTS, PRODUCED_BATCHES
from civicbus.topology import TopicSpec
from processors.runner import ClientStatistics
from tests.conftest import make_settings


def count(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


def settle(client, until, timeout_s: float = 10.0) -> None:
    """Serve the client's statistics callbacks until `until()` holds, then one window more."""
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        client.poll(0.05)
    for _ in range(6):  # three more windows: nothing else may be counted
        client.poll(0.05)


def test_a_stage_client_counts_the_batches_it_wrote_and_the_requests_it_sent(broker_bootstrap):
    settings = make_settings(broker_bootstrap, client_statistics_interval_ms=100)
    topic = settings.namespace + "statistics"
    apply_topics(broker_bootstrap, [TopicSpec(topic, 1)])
    stage = f"stage-{uuid.uuid4().hex[:6]}"

    producer = make_producer(broker_bootstrap, **{"linger.ms": 1000}, **ClientStatistics(settings, stage, "producer").config())
    for n in (1, 1, 1, 1, 3):  # a flush sends what lingers as one batch: five batches, seven records
        for _ in range(n):
            producer.produce(topic, b"value", b"key")
        assert producer.flush(10) == 0
    settle(producer, lambda: count(PRODUCED_BATCHES, stage, topic) >= 5)
    assert count(PRODUCED_BATCHES, stage, topic) == 5
    assert count(KAFKA_REQUESTS, stage, "producer", "Produce") >= 5

    consumer = make_consumer(settings, broker_bootstrap, f"{settings.namespace}statistics",
                             **ClientStatistics(settings, stage, "consumer").config())
    consumer.assign([TopicPartition(topic, 0, 0)])
    read, started = 0, time.monotonic()
    while time.monotonic() - started < 2.0:
        read += consumer.poll(0.05) is not None
    settle(consumer, lambda: count(KAFKA_REQUESTS, stage, "consumer", "Fetch") > 0)
    consumer.close()
    assert read == 7
    fetches = count(KAFKA_REQUESTS, stage, "consumer", "Fetch")
    # a fetch waits settings.fetch_wait_max_ms (10 ms) on the embedded broker, less than that nowhere
    assert 10 <= fetches <= 2.5 * 1000 / settings.fetch_wait_max_ms
    assert count(PRODUCED_BATCHES, stage, topic) == 5  # the consumer writes none


def test_a_follower_counts_its_fetches_beside_its_stage(broker_bootstrap):
    """The followers of a stage (master data, the case router) fetch too: counted under their client name."""
    settings = make_settings(broker_bootstrap, client_statistics_interval_ms=100)
    topic = settings.namespace + "followed"
    apply_topics(broker_bootstrap, [TopicSpec(topic, 1)])
    stage = f"stage-{uuid.uuid4().hex[:6]}"
    applied = []
    follower = TopicFollower(settings, broker_bootstrap, f"{settings.namespace}follower", [topic],
                             lambda m: applied.append(m), "follower", **ClientStatistics(settings, stage, "follower").config())
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while count(KAFKA_REQUESTS, stage, "follower", "Fetch") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        follower.stop()
    assert count(KAFKA_REQUESTS, stage, "follower", "Fetch") > 0


def test_statistics_off_configure_nothing(broker_bootstrap):
    assert ClientStatistics(make_settings(broker_bootstrap, client_statistics_interval_ms=0), "ingest", "producer").config() == {}
