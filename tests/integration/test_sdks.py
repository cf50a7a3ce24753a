import threading

import pytest

from civicbus.schemas import EventValidationError
from consumers.subscriber import FeedSubscriber
from producers.sdk import Publisher, PublishError
from tests.support import case_report, committed_offset, headers_of, produce_signed, read_topic


def test_publish_returns_after_ack_with_wire_format_and_cloudevent_headers(bus):
    with Publisher(bus, "citymgmt") as publisher:
        event_id = publisher.publish(case_report())
    [record] = read_topic(bus, bus.topology.inbound("citymgmt"), until=lambda m: len(m) >= 1)
    assert record.value()[0] == 0  # Confluent magic byte
    headers = headers_of(record)
    assert headers["ce_id"] == event_id.encode()
    assert headers["ce_source"] == b"urn:civicbus:dept:citymgmt" and headers["ce_type"] == b"city.case.reported"
    assert bus.serde.decode(record.value(), record.topic())["classification"] == "INTERNAL"


def test_invalid_event_is_refused_before_sending(bus):
    with Publisher(bus, "citymgmt") as publisher:
        with pytest.raises(EventValidationError, match="data.category"):
            publisher.publish(case_report(category="nonsense"))
        with pytest.raises(EventValidationError, match="source"):
            publisher.publish({**case_report(), "source": "police"})
    assert read_topic(bus, bus.topology.inbound("citymgmt"), idle_s=1.0) == []


def test_unknown_department_is_refused(bus):
    with pytest.raises(KeyError, match="unknown department"):
        Publisher(bus, "ministry-of-magic")


def test_unacknowledged_publish_raises(bus):
    bus.settings.bootstrap = "127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(PublishError, match="unacknowledged"):
        Publisher(bus, "citymgmt", timeout_s=2).publish(case_report())


def test_subscriber_commits_only_after_the_handler_returns(bus):
    feed_topic = bus.topology.feed("citymgmt")
    event = bus.catalog.validate({**case_report(), "id": "0f0e0d0c-0b0a-4908-8706-050403020100", "source": "citymgmt",
                                  "time": "2026-01-01T00:00:00Z", "classification": "INTERNAL"})
    from civicbus.kafka import make_producer

    producer = make_producer(bus.bootstrap)
    for i in range(3):
        value, headers = bus.serde.encode({**event, "id": f"0f0e0d0c-0b0a-4908-8706-05040302010{i}"}, feed_topic)
        produce_signed(bus, producer, feed_topic, value, None, headers)
    producer.flush(10)
    group = bus.topology.group("dept-test")
    seen = []

    def crash_on_second(item):
        seen.append(item.id)
        if len(seen) == 2:
            raise RuntimeError("department system down")

    with FeedSubscriber(bus, "citymgmt", group_id=group) as subscriber:
        with pytest.raises(RuntimeError):
            subscriber.run(crash_on_second, threading.Event())
    stop = threading.Event()
    redelivered = []

    def collect(item):
        redelivered.append(item.id)
        if len(redelivered) == 2:
            stop.set()

    with FeedSubscriber(bus, "citymgmt", group_id=group) as subscriber:
        subscriber.run(collect, stop)
    assert redelivered == seen[1:] + ["0f0e0d0c-0b0a-4908-8706-050403020102"]


def test_subscriber_reads_on_without_loss_or_repeat_when_its_fetch_wait_changes(bus):
    """civicbus.quirks 10: the SDK's reader is replaced for another wait between two events; the
    group's member, which commits, stays (no rebalance)."""
    from civicbus.kafka import make_producer

    feed_topic = bus.topology.feed("citymgmt")
    event = bus.catalog.validate({**case_report(), "id": "0f0e0d0c-0b0a-4908-8706-000000000000", "source": "citymgmt",
                                  "time": "2026-01-01T00:00:00Z", "classification": "INTERNAL"})
    producer = make_producer(bus.bootstrap)
    ids = [f"0f0e0d0c-0b0a-4908-8706-{n:012d}" for n in range(60)]

    def publish(chunk: list[str]) -> None:
        for event_id in chunk:
            value, headers = bus.serde.encode({**event, "id": event_id}, feed_topic)
            produce_signed(bus, producer, feed_topic, value, None, headers)
        producer.flush(10)

    group = bus.topology.group("dept-wait")
    seen: list[str] = []
    with FeedSubscriber(bus, "citymgmt", group_id=group, start=0) as subscriber:
        subscriber._input.clock.stop()  # the test sets the wait the clock would have measured
        assert subscriber._input._wait_ms == 100  # a department's reader starts at FEED_READER_FETCH_WAIT_MS
        member = subscriber._input.member
        for chunk, wait_ms in ((ids[:20], 400), (ids[20:40], 200), (ids[40:], None)):
            publish(chunk)
            while len(seen) < ids.index(chunk[-1]) + 1:
                polled = subscriber.poll()  # the first poll after a change reads on with the new wait
                if polled is not None:
                    seen.append(polled[0].id)
                    subscriber.commit(polled[1])
            if wait_ms is not None:
                subscriber._input.clock.listing.wait_ms = wait_ms
        assert subscriber._input._wait_ms == 200 and subscriber._input.member is member
    assert seen == ids
    assert committed_offset(bus, group, feed_topic) == 60
