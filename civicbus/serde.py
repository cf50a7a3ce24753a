"""Events on the wire: Avro in the Confluent wire format plus CloudEvents Kafka headers.

One serializer for the whole bus, built on confluent-kafka's schema_registry Avro
serializer/deserializer (fastavro underneath) and whichever registry client is configured.
Subjects follow the record-name strategy, because one topic carries several event types.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from confluent_kafka.schema_registry import record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from civicbus.dlq import Reason
from civicbus.schemas import EventCatalog, EventValidationError

MAGIC_BYTE = 0
CONTENT_TYPE = b"application/avro"
# The largest encoded event accepted; pictures and video travel as references, never inline.
MAX_EVENT_BYTES = 256 * 1024


class DecodeError(ValueError):
    def __init__(self, reason: Reason, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def to_json(event: dict[str, Any]) -> str:
    """An event as JSON text, times in RFC 3339 (CLI output, HTTP feeds)."""
    return json.dumps(event, ensure_ascii=False, default=lambda v: _rfc3339(v) if isinstance(v, datetime) else str(v))


def cloudevent_headers(event: dict[str, Any]) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 Kafka protocol binding, binary mode (ce_* headers)."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event["id"].encode()),
        ("ce_type", event["type"].encode()),
        ("ce_source", event["source"].encode()),
        ("ce_time", _rfc3339(event["time"]).encode()),
        ("content-type", CONTENT_TYPE),
    ]
    if event.get("subject"):
        headers.append(("ce_subject", event["subject"].encode()))
    return headers


class EventSerde:
    """Encode validated events to the wire and decode wire bytes back to event dicts."""

    def __init__(self, catalog: EventCatalog, registry_client):
        self.catalog = catalog
        conf = {"subject.name.strategy": record_subject_name_strategy, "auto.register.schemas": True}
        self._serializers = {t.name: AvroSerializer(registry_client, t.schema_str, conf=conf) for t in catalog}
        self._deserializer = AvroDeserializer(registry_client, conf={"subject.name.strategy": record_subject_name_strategy})

    def encode(self, event: dict[str, Any], topic: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Encode an event already validated by the catalog (see EventCatalog.validate)."""
        value = self._serializers[event["type"]](event, SerializationContext(topic, MessageField.VALUE))
        return value, cloudevent_headers(event)

    def decode(self, value: bytes | None, topic: str) -> dict[str, Any]:
        """Decode and validate one record value; raise DecodeError with a dead-letter reason."""
        if value is None or len(value) < 5 or value[0] != MAGIC_BYTE:
            raise DecodeError(Reason.NOT_AVRO, "value lacks the Confluent wire-format header (magic byte 0, schema id)")
        if len(value) > MAX_EVENT_BYTES:
            raise DecodeError(Reason.OVERSIZE, f"{len(value)} bytes is more than the {MAX_EVENT_BYTES} accepted")
        try:
            event = self._deserializer(value, SerializationContext(topic, MessageField.VALUE))
        except SchemaRegistryError as e:
            raise DecodeError(Reason.UNKNOWN_SCHEMA, f"schema id {int.from_bytes(value[1:5], 'big')}: {e}") from None
        except (SerializationError, Exception) as e:  # fastavro raises several types on bad bodies
            raise DecodeError(Reason.CORRUPT_PAYLOAD, f"{type(e).__name__}: {e}") from None
        try:
            return self.catalog.validate(event)
        except EventValidationError as e:
            reason = Reason.UNKNOWN_TYPE if e.errors[0]["field"] == "type" else Reason.INVALID_EVENT
            raise DecodeError(reason, str(e)) from None
