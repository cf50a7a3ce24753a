"""Ids belong to their publisher: an event is known by (source, id), and its content.

The same event published again (a retry, a restarted stage re-emitting it) is a duplicate and is
dropped. An id reused by another department, or by the same one for different content, is a
conflict: it never replaces or suppresses the event that came first. The case stage and the
fan-out dead-letter it (ID_CONFLICT, naming both publishers); the HTTP gateway can answer 409
with the same `id_conflict` where it remembers a `Publication` per id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from civicbus.schemas import ESCALATION_TYPE, EventType

# What the case stage derives from a case (an escalation) may have grown by the time a restarted
# stage emits it again: only what its id is derived from counts as its content.
_DERIVED_CONTENT = {ESCALATION_TYPE: ("case_id", "missed")}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(f"{type(value).__name__} is not part of an event")


def content_digest(event: dict[str, Any], event_type: EventType) -> str:
    """A digest of what the publisher said: the envelope fields it writes and `data`, without what
    the pipeline adds or may raise (standardised location, master data, case id, targets, deadline,
    classification: a case's updates carry the case's, which can rise as reports join it)."""
    data = event.get("data") or {}
    if event_type.name in _DERIVED_CONTENT:
        said = {"type": event["type"], "source": event["source"], "data": {k: data.get(k) for k in _DERIVED_CONTENT[event_type.name]}}
    else:
        enriched = {e.field for e in event_type.enrichments}
        said = {
            "type": event["type"], "source": event["source"], "time": event.get("time"), "subject": event.get("subject"),
            "raw_address": (event.get("location") or {}).get("raw_address"),
            "data": {k: v for k, v in data.items() if k not in enriched},
        }
    text = json.dumps(said, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Publication:
    """Who published an id, and a digest of what they said under it."""

    source: str
    digest: str

    @classmethod
    def of(cls, event: dict[str, Any], event_type: EventType) -> Publication:
        return cls(event["source"], content_digest(event, event_type))


def id_conflict(event_id: str, first: Publication, again: Publication) -> str | None:
    """None when `again` is the first publication once more (a duplicate); else why it is refused."""
    if again == first:
        return None
    if again.source != first.source:
        return f"id {event_id} belongs to {first.source}; {again.source} reused it for another event"
    return f"id {event_id} was published by {first.source} already, with other content; {again.source} reused it"
