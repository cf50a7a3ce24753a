"""The wire vocabulary: every Kafka record header civicbus writes or reads, and how.

Event records carry the CloudEvents 1.0 Kafka protocol binding in binary content mode: the
attributes as `ce_*` headers, the data content type as `content-type`, the value the Avro
body in the Confluent wire format. civicbus adds its own `civic_*` headers (masked fields,
publish time, the case stage's clock) and `dlq.*` on dead letters. Names and encodings live
here only; every reader and writer of headers goes through these functions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

Headers = list[tuple[str, bytes]]

# CloudEvents Kafka binding (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md)
CE_PREFIX = "ce_"
CE_SPECVERSION = "ce_specversion"
CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_TIME = "ce_time"
CE_SUBJECT = "ce_subject"
CE_DATASCHEMA = "ce_dataschema"
CONTENT_TYPE = "content-type"
AVRO_CONTENT_TYPE = b"application/avro"

# civicbus's own headers
MASKED = "civic_masked"  # personal fields masked for the receiving department, comma-separated
PUBLISHED_MS = "civic_published_ms"  # when the publisher's record reached the bus (end-to-end latency)
CLOCK_MS = "civic_clock_ms"  # a tick of the case stage's deadline clock
INGEST_PROGRESS_MS = "civic_ingest_progress_ms"  # on a tick: how far ingest had read (processors.ingest_progress)
DLQ_PREFIX = "dlq."  # reason and origin of a dead letter

# ce_source is a URI-reference (CloudEvents 1.0); the envelope's `source` stays the bare id.
SOURCE_URN_PREFIX = "urn:civicbus:dept:"


def header(headers: Headers | None, name: str) -> bytes | None:
    """The value of the first header called `name`, or None."""
    for key, value in headers or []:
        if key == name:
            return value
    return None


def rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def source_uri(department: str) -> str:
    return SOURCE_URN_PREFIX + department


def department_of_source(uri: str) -> str:
    if not uri.startswith(SOURCE_URN_PREFIX):
        raise ValueError(f"ce_source {uri!r} is not a civicbus department ({SOURCE_URN_PREFIX}<id>)")
    return uri[len(SOURCE_URN_PREFIX) :]


def dataschema_uri(registry_url: str, subject: str, version: int) -> str:
    """ce_dataschema: the registry's REST address of the subject version a value was written with."""
    return f"{registry_url.split(',')[0].rstrip('/')}/subjects/{subject}/versions/{version}"


def cloudevent_headers(event: dict[str, Any], dataschema: str) -> Headers:
    """CloudEvents 1.0 Kafka protocol binding, binary mode; `dataschema` names the registry subject and version."""
    headers = [
        (CE_SPECVERSION, b"1.0"),
        (CE_ID, event["id"].encode()),
        (CE_TYPE, event["type"].encode()),
        (CE_SOURCE, source_uri(event["source"]).encode()),
        (CE_TIME, rfc3339(event["time"]).encode()),
        (CE_DATASCHEMA, dataschema.encode()),
        (CONTENT_TYPE, AVRO_CONTENT_TYPE),
    ]
    if event.get("subject"):
        headers.append((CE_SUBJECT, event["subject"].encode()))
    return headers


def is_cloudevent_header(name: str) -> bool:
    """Headers that describe one encoding of an event, rewritten whenever it is re-encoded."""
    return name.startswith(CE_PREFIX) or name == CONTENT_TYPE


def masked_header(masked: tuple[str, ...]) -> tuple[str, bytes]:
    return MASKED, ",".join(masked).encode()


def read_masked(headers: Headers | None) -> tuple[str, ...]:
    value = header(headers, MASKED)
    return tuple(f for f in value.decode().split(",") if f) if value else ()


def published_at_header(ms: int) -> tuple[str, bytes]:
    return PUBLISHED_MS, str(ms).encode()


def read_published_ms(headers: Headers | None) -> int | None:
    value = header(headers, PUBLISHED_MS)
    return int(value) if value else None


def clock_header(ms: int) -> tuple[str, bytes]:
    return CLOCK_MS, str(ms).encode()


def read_clock_ms(headers: Headers | None) -> int | None:
    value = header(headers, CLOCK_MS)
    return int(value) if value else None


def ingest_progress_header(ms: int) -> tuple[str, bytes]:
    return INGEST_PROGRESS_MS, str(ms).encode()


def read_ingest_progress_ms(headers: Headers | None) -> int | None:
    value = header(headers, INGEST_PROGRESS_MS)
    return int(value) if value else None


def dead_letter_headers(fields: dict[str, str]) -> Headers:
    return [(DLQ_PREFIX + name, value.encode("utf-8", "replace")) for name, value in fields.items()]


def read_dead_letter(headers: Headers | None) -> dict[str, str]:
    """The dlq.* headers of a dead-letter record, without the prefix."""
    return {k[len(DLQ_PREFIX) :]: v.decode("utf-8", "replace") for k, v in headers or [] if k.startswith(DLQ_PREFIX)}


def to_json(event: dict[str, Any]) -> str:
    """An event as JSON text, times in RFC 3339 (CLI output, HTTP feeds)."""
    return json.dumps(event, ensure_ascii=False, default=lambda v: rfc3339(v) if isinstance(v, datetime) else str(v))
