"""Publish -> ingest -> case stage -> fan-out -> feeds, and dead letters, on a real broker."""

import os

from civicbus.kafka import make_producer
from civicbus.wire import read_dead_letter
from producers.sdk import Publisher
from tests.support import case_report, headers_of, read_topic


def feed_ids(bus, department, until=None, timeout_s=60.0):
    messages = read_topic(bus, bus.topology.feed(department), until=until, timeout_s=timeout_s)
    return [m.key().decode() for m in messages]


def test_event_reaches_exactly_the_responsible_departments(bus, pipeline):
    with Publisher(bus, "street.dongcheng.andingmen") as publisher:
        street_order = publisher.publish(case_report(category="street_order", subcategory="illegal_parking"))
        landscaping = publisher.publish(case_report(category="landscaping", subcategory="fallen_tree"))
    citymgmt = read_topic(bus, bus.topology.feed("citymgmt"), until=lambda m: len(m) >= 2, timeout_s=60)
    assert sorted(m.key().decode() for m in citymgmt) == sorted([street_order, landscaping])
    record = citymgmt[0]
    assert record.value()[0] == 0 and {"ce_id", "ce_type", "ce_source", "ce_time"} <= set(headers_of(record))
    event = bus.serde.decode(record.value(), record.topic())
    assert event["correlation_id"] == event["id"] and "citymgmt" in event["targets"]
    assert feed_ids(bus, "police", until=lambda m: len(m) >= 1) == [street_order]
    office = feed_ids(bus, "street.dongcheng.andingmen", until=lambda m: len(m) >= 2)
    assert sorted(office) == sorted([street_order, landscaping])  # the office owning the location
    receivers = ("citymgmt", "police", "street.dongcheng.andingmen", "district.dongcheng")
    others = [bus.topology.feed(d) for d in bus.city.department_ids() if d not in receivers]
    assert [m.topic() for m in read_topic(bus, others)] == []
    assert set(pipeline.stop_all().values()) == {0}, pipeline.logs()


def test_bad_input_goes_to_the_dead_letter_topic_while_valid_events_flow(bus, pipeline):
    garbage = os.urandom(64)
    producer = make_producer(bus.bootstrap)
    delivered = []
    producer.produce(bus.topology.inbound("citymgmt"), garbage, b"junk", on_delivery=lambda err, m: delivered.append(m))
    producer.flush(10)
    [junk] = delivered
    with Publisher(bus, "citymgmt") as publisher:
        valid = publisher.publish(case_report(category="city_appearance", subcategory="exposed_garbage"))
    with Publisher(bus, "police") as publisher:  # police may publish cases, but not as someone else
        forged = publisher.complete(case_report())
        forged_value, headers = bus.serde.encode({**forged, "source": "citymgmt"}, "x")
    producer.produce(bus.topology.inbound("police"), forged_value, headers=headers)
    producer.flush(10)
    letters = read_topic(bus, bus.topology.name("civic.dlq"), until=lambda m: len(m) >= 2, timeout_s=60)
    by_reason = {read_dead_letter(m.headers())["reason"]: m for m in letters}
    assert set(by_reason) == {"NOT_AVRO", "SOURCE_MISMATCH"}
    letter_garbage = by_reason["NOT_AVRO"]
    meta = read_dead_letter(letter_garbage.headers())
    assert meta["stage"] == "ingest" and "magic byte" in meta["detail"]
    assert meta["topic"] == bus.topology.inbound("citymgmt") and meta["offset"] == str(junk.offset()) and meta["partition"] == str(junk.partition())
    assert letter_garbage.value() == garbage and letter_garbage.key() == b"junk"
    assert read_dead_letter(by_reason["SOURCE_MISMATCH"].headers())["topic"] == bus.topology.inbound("police")
    assert feed_ids(bus, "citymgmt", until=lambda m: len(m) >= 1) == [valid]
    assert pipeline.stages["ingest"].process.poll() is None  # still running
