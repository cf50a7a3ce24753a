"""EventSerde writes and reads exactly what confluent-kafka's Avro serializer classes do."""

from confluent_kafka.schema_registry import record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from civicbus.context import BusContext
from civicbus.settings import Settings
from producers.simulator import CityTraffic
from producers.sdk import Publisher


def test_bytes_match_confluents_avro_serializer_both_ways():
    ctx = BusContext(Settings(bootstrap="127.0.0.1:1"))
    registry = ctx.serde._registry
    traffic = CityTraffic(ctx, seed=3)
    publishers = {}
    events = []
    while len(events) < 300:
        department, event = traffic.next_event()
        publisher = publishers.get(department) or publishers.setdefault(department, Publisher(ctx, department))
        events.append(publisher.complete(event))
    assert len({e["type"] for e in events}) >= 2
    conf = {"subject.name.strategy": record_subject_name_strategy, "auto.register.schemas": True}
    confluent_writers = {t.name: AvroSerializer(registry, t.schema_str, conf=conf) for t in ctx.catalog}
    confluent_reader = AvroDeserializer(registry, conf={"subject.name.strategy": record_subject_name_strategy})
    context = SerializationContext("civic.in.x", MessageField.VALUE)
    events += [{**event, "location": None} for event in events[:20]]
    assert any(e["location"] for e in events)
    for event in events:
        ours, _ = ctx.serde.encode(event, "civic.in.x")
        assert ours == confluent_writers[event["type"]](event, context)
        assert ctx.serde.decode(ours, "civic.in.x") == ctx.catalog.validate(confluent_reader(ours, context))
