"""The lock-file registry in process: Confluent's stock Avro serde in its default configuration."""

import json

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from civicbus.registry import FileSchemaRegistry
from civicbus.schemas import EventCatalog
from civicbus.serde import EventSerde
from civicbus.settings import REPO_ROOT
from tests.support import case_report
from tests.unit.test_schemas import complete

SCHEMAS = REPO_ROOT / "schemas"
LOCK = json.loads((SCHEMAS / "schemas.lock.json").read_text())


@pytest.fixture(scope="module")
def catalog():
    return EventCatalog(SCHEMAS)


def test_stock_serializer_and_deserializer_in_default_configuration(catalog):
    registry = FileSchemaRegistry(SCHEMAS)
    event_type = catalog["city.case.reported"]
    event = catalog.validate(complete(case_report()))
    ctx = SerializationContext("civic.in.citymgmt", MessageField.VALUE)

    value = AvroSerializer(registry, event_type.schema_str)(event, ctx)
    assert int.from_bytes(value[1:5], "big") == LOCK["subjects"][event_type.subject][-1]["id"]
    assert EventSerde(catalog, registry).decode(value, "civic.in.citymgmt") == event

    ours, _ = EventSerde(catalog, registry).encode(event, "civic.feed.citymgmt")
    decoded = AvroDeserializer(registry)(ours, SerializationContext("civic.feed.citymgmt", MessageField.VALUE))
    assert decoded == event


def test_the_lock_is_read_only(catalog):
    registry = FileSchemaRegistry(SCHEMAS)
    held = catalog["city.case.reported"]
    assert registry.register_schema("any-subject", Schema(held.schema_str, "AVRO")) == LOCK["subjects"][held.subject][-1]["id"]
    changed = json.loads(held.schema_str)
    changed["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(held.subject, Schema(json.dumps(changed), "AVRO"))
    assert (refused.value.http_status_code, refused.value.error_code) == (422, 42205)
    with pytest.raises(SchemaRegistryError) as unknown:
        registry.lookup_schema(held.subject, Schema(json.dumps(changed), "AVRO"))
    assert unknown.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as no_subject:
        registry.get_latest_version("civic.in.citymgmt-value")
    assert no_subject.value.error_code == 40401
    assert registry.test_compatibility(held.subject, Schema(json.dumps(changed), "AVRO"))


class NeverRegister(FileSchemaRegistry):
    def register_schema_full_response(self, *args, **kwargs):
        raise AssertionError("civicbus registered a schema")

    register_schema = register_schema_full_response


def test_civicbus_never_registers_a_schema(catalog):
    """Auto-registration off: the serde only looks up, so ids come from the lock alone (`schemas push`)."""
    serde = EventSerde(catalog, NeverRegister(SCHEMAS))
    value, _ = serde.encode(catalog.validate(complete(case_report())), "civic.in.citymgmt")
    assert serde.decode(value, "t")["type"] == "city.case.reported"
