"""Events on the wire: Avro in the Confluent wire format plus CloudEvents Kafka headers.

One serializer for the whole bus, on whichever registry client is configured (confluent-kafka's
SchemaRegistryClient or the lock-file registry with the same surface). Subjects follow the
record-name strategy, because one topic carries several event types.

The bytes are exactly what confluent-kafka's AvroSerializer/AvroDeserializer read and write
(magic byte 0, 4-byte schema id, schemaless Avro body, by fastavro), but this does the per-record
work itself: those classes run their data-contract rule machinery on every record, which cost
two thirds of a decode here (py-spy; `python -m benchmarks serde`). Schemas are resolved through
the registry once per type (encode) or id (decode), as the confluent classes do.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from civicbus.dlq import Reason
from civicbus.schemas import EventCatalog, EventValidationError
from civicbus.wire import cloudevent_headers, dataschema_uri

MAGIC_BYTE = 0
_FRAMING = struct.Struct(">bI")  # magic byte, schema id: the Confluent wire format
# The largest encoded event accepted; pictures and video travel as references, never inline.
MAX_EVENT_BYTES = 256 * 1024
# The envelope's `location` is a union of null and this record. fastavro picks a union's branch by
# validating the value against each, which for the record cost a third of an encode; fastavro's
# tuple notation (name, value) names the branch instead (same bytes: tests/unit/test_serde_wire.py).
LOCATION_RECORD = "civicbus.Location"


class DecodeError(ValueError):
    def __init__(self, reason: Reason, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


class EventSerde:
    """Encode validated events to the wire and decode wire bytes back to event dicts."""

    def __init__(self, catalog: EventCatalog, registry_client):
        self.catalog = catalog
        self._registry = registry_client
        self._writers: dict[str, tuple[bytes, Any, str]] = {}  # type -> (framing, parsed schema, ce_dataschema)
        self._readers: dict[int, Any] = {}  # schema id -> parsed writer schema

    def _writer(self, type_name: str) -> tuple[bytes, Any, str]:
        if type_name not in self._writers:
            event_type = self.catalog[type_name]
            # Looked up, never registered (auto-registration off): the lock is the only source of
            # ids, loaded into a Confluent Schema Registry by `civicbus schemas push`.
            registered = self._registry.lookup_schema(event_type.subject, Schema(event_type.schema_str, "AVRO"))
            self._writers[type_name] = (
                _FRAMING.pack(MAGIC_BYTE, registered.schema_id),
                fastavro.parse_schema(json.loads(event_type.schema_str)),
                dataschema_uri(self._registry.config()["url"], registered.subject, registered.version),
            )
        return self._writers[type_name]

    def _reader(self, schema_id: int) -> Any:
        if schema_id not in self._readers:
            self._readers[schema_id] = fastavro.parse_schema(json.loads(self._registry.get_schema(schema_id).schema_str))
        return self._readers[schema_id]

    def encode(self, event: dict[str, Any], topic: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Encode an event already validated by the catalog (see EventCatalog.validate)."""
        framing, schema, dataschema = self._writer(event["type"])
        body = io.BytesIO()
        body.write(framing)
        location = event.get("location")
        fastavro.schemaless_writer(body, schema, event if location is None else {**event, "location": (LOCATION_RECORD, location)})
        return body.getvalue(), cloudevent_headers(event, dataschema)

    def decode(self, value: bytes | None, topic: str, validate: bool = True) -> dict[str, Any]:
        """Decode and validate one record value; raise DecodeError with a dead-letter reason.

        `validate=False` is for civicbus's own internal topics, whose events a stage validated
        before writing them: it halves the cost of a decode (`python -m benchmarks serde`)."""
        if value is None or len(value) < 5 or value[0] != MAGIC_BYTE:
            raise DecodeError(Reason.NOT_AVRO, "value lacks the Confluent wire-format header (magic byte 0, schema id)")
        if len(value) > MAX_EVENT_BYTES:
            raise DecodeError(Reason.OVERSIZE, f"{len(value)} bytes is more than the {MAX_EVENT_BYTES} accepted")
        schema_id = _FRAMING.unpack_from(value)[1]
        try:
            schema = self._reader(schema_id)
        except SchemaRegistryError as e:
            raise DecodeError(Reason.UNKNOWN_SCHEMA, f"schema id {schema_id}: {e}") from None
        try:
            event = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        except Exception as e:  # fastavro raises several types on bad bodies
            raise DecodeError(Reason.CORRUPT_PAYLOAD, f"{type(e).__name__}: {e}") from None
        if not validate:
            return event
        try:
            return self.catalog.validate(event)
        except EventValidationError as e:
            reason = Reason.UNKNOWN_TYPE if e.errors[0]["field"] == "type" else Reason.INVALID_EVENT
            raise DecodeError(reason, str(e)) from None
