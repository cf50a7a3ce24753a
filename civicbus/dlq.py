"""Dead letters: rejected input as data, with a reason code from one enumeration.

Follows Kafka Connect's dead-letter convention: the record value is the original bytes,
untouched, and the reason and origin travel in headers, so an operator can fix and replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from civicbus.wire import Headers, dead_letter_headers


class Reason(str, Enum):
    NOT_AVRO = "NOT_AVRO"  # no Confluent wire-format framing (magic byte 0 + schema id)
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"  # schema id not in the registry
    CORRUPT_PAYLOAD = "CORRUPT_PAYLOAD"  # framing fine, Avro body does not decode
    OVERSIZE = "OVERSIZE"  # larger than the largest event civicbus accepts
    UNKNOWN_TYPE = "UNKNOWN_TYPE"  # event type not in the catalog
    INVALID_EVENT = "INVALID_EVENT"  # decodes, but fails validation (fields named in detail)
    SOURCE_MISMATCH = "SOURCE_MISMATCH"  # envelope source is not the department owning the topic
    TYPE_NOT_PERMITTED = "TYPE_NOT_PERMITTED"  # department may not publish this type
    CLASSIFICATION_TOO_LOW = "CLASSIFICATION_TOO_LOW"  # below its type's default classification (field named in detail)
    ID_CONFLICT = "ID_CONFLICT"  # an id already published by another department, or by the same one for other content
    UNKNOWN_CASE = "UNKNOWN_CASE"  # a status update for a case the bus never opened
    NOT_RESPONSIBLE = "NOT_RESPONSIBLE"  # a status update its sender's role on the case does not allow
    UNDELIVERABLE = "UNDELIVERABLE"  # the policy lets no department receive it (a dispatch the clearances refuse)
    FORGED = "FORGED"  # on an internal topic without a valid signature of this stack (civicbus.signing)
    PROCESSING_ERROR = "PROCESSING_ERROR"  # a stage failed on this record; the stage keeps running


@dataclass(frozen=True)
class DeadLetter:
    reason: Reason
    detail: str
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def headers(self) -> Headers:
        return dead_letter_headers({
            "reason": self.reason.value,
            "detail": self.detail[:4000],
            "stage": self.stage,
            "topic": self.topic,
            "partition": str(self.partition),
            "offset": str(self.offset),
            "time": str(int(time.time() * 1000)),
        })
