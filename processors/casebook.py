"""Case logic as plain functions over event dicts: testable without a broker or faust."""

from __future__ import annotations

import uuid
from typing import Any

from civicbus.config import DispatchTable
from processors.dispatch import responsible_departments

# Namespace for ids the pipeline derives from its inputs (uuid5): the same input always
# yields the same output id, which is what lets the fan-out drop re-emitted events.
DERIVED_ID_NAMESPACE = uuid.UUID("6f1c1d52-2f0e-4b1e-9a57-1c1b6a2f1e00")


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(DERIVED_ID_NAMESPACE, "/".join(parts)))


class CaseBook:
    def __init__(self, dispatch: DispatchTable):
        self.dispatch = dispatch

    def handle(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to distribute for one incoming case event."""
        out = dict(event)  # keeps the publisher's id: the same report, now with an owner
        out["correlation_id"] = event.get("correlation_id") or event["id"]
        out["targets"] = responsible_departments(self.dispatch, event)
        return [out]
