"""A department's own tools on the bus: Confluent's stock Avro serde against the served registry,
the CloudEvents SDK on the headers, and the real pipeline in between."""

from urllib.parse import urlparse

import httpx
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from civicbus.wire import department_of_source
from producers.sdk import Publisher, complete_event
from tests.support import case_report, read_topic, served_registry


@pytest.fixture(scope="module")
def registry_url():
    with served_registry() as url:
        yield url


def test_stock_clients_encode_and_decode_through_the_served_registry(bus, pipeline, registry_url):
    inbound = bus.topology.inbound("citymgmt")
    serializer = AvroSerializer(  # a department's producer: auto-registration off, the lock's subjects
        SchemaRegistryClient({"url": registry_url}),
        bus.catalog["city.case.reported"].schema_str,
        conf={"auto.register.schemas": False, "subject.name.strategy.type": "RECORD"},
    )
    producer = Producer({"bootstrap.servers": bus.bootstrap})
    stock_ids = []
    for n in range(3):
        event = complete_event(bus, "citymgmt", case_report(description=f"stock client {n}"))
        value = serializer(event, SerializationContext(inbound, MessageField.VALUE))
        producer.produce(inbound, value, event["id"].encode())
        stock_ids.append(event["id"])
    assert producer.flush(10) == 0
    with Publisher(bus, "citymgmt") as publisher:
        sdk_ids = [publisher.publish(case_report(description=f"sdk {n}")) for n in range(3)]

    feed = read_topic(bus, bus.topology.feed("citymgmt"), until=lambda m: len(m) >= 6, timeout_s=90)
    assert sorted(m.key().decode() for m in feed) == sorted(stock_ids + sdk_ids)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))  # default configuration
    for record in feed:
        event = deserializer(record.value(), SerializationContext(record.topic(), MessageField.VALUE))
        assert event == bus.serde.decode(record.value(), record.topic()) and event["source"] == "citymgmt"
    assert set(pipeline.stop_all().values()) == {0}, pipeline.logs()


def test_the_cloudevents_sdk_reads_a_feed_record_and_its_dataschema_resolves(bus, pipeline, registry_url):
    with Publisher(bus, "citymgmt") as publisher:
        event_id = publisher.publish(case_report())
    record = read_topic(bus, bus.topology.feed("citymgmt"), until=lambda m: len(m) >= 1, timeout_s=60)[0]
    message = KafkaMessage(headers=dict(record.headers()), key=record.key(), value=record.value())
    cloudevent = from_binary(message, JSONFormat())
    assert (cloudevent.get_id(), cloudevent.get_type()) == (event_id, "city.case.reported")
    assert department_of_source(cloudevent.get_source()) == "citymgmt"
    assert cloudevent.get_datacontenttype() == "application/avro" and cloudevent.get_data() == record.value()
    # ce_dataschema names the subject version on the registry; there it is the schema of the record's id
    dataschema = urlparse(cloudevent.get_dataschema())
    assert dataschema.scheme == "http" and dataschema.path.startswith("/subjects/civicbus.events.")
    version = httpx.get(f"{registry_url}{dataschema.path}").json()
    assert version["id"] == int.from_bytes(record.value()[1:5], "big")
    assert set(pipeline.stop_all().values()) == {0}, pipeline.logs()
