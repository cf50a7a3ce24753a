"""civic.audit: who received which event, when, with which fields masked, through which path.

One JSON record per delivery, keyed by event id. The fan-out writes its records in the same
transaction as the feed records (path "fanout"); the HTTP gateway writes one per event it hands
to a department and answers only once they are acknowledged (path "gateway").
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

DeliveryPath = Literal["fanout", "gateway"]


class AuditRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    type: str
    department: str
    time_ms: int  # when the delivery was made
    masked_fields: tuple[str, ...]
    path: DeliveryPath

    @classmethod
    def now(cls, event_id: str, event_type: str, department: str, masked: tuple[str, ...], path: DeliveryPath) -> AuditRecord:
        return cls(event_id=event_id, type=event_type, department=department, time_ms=int(time.time() * 1000), masked_fields=masked, path=path)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, value: bytes) -> AuditRecord:
        return cls.model_validate_json(value)

