"""Enrich events from master data held in memory, fed from the compacted civic.ref.* topics.

Which fields are filled, from which dataset and by which key is declared in each event type's
.avsc (`civicbus.enrich`), so adding an enrichment is a schema change, not a code change.
Master data is authoritative: it overwrites what the publisher wrote. A key the tables do not
know leaves the fields as published. Updates apply to every event processed after them; a
version older than the one held (by `updated`) is stale and ignored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import ValidationError

from civicbus.context import BusContext
from civicbus.kafka import TopicFollower
from civicbus.reference import DATASETS, MasterRecord, decode_record
from civicbus.schemas import EventType

log = logging.getLogger(__name__)


class ReferenceTables:
    """The newest version of every master-data record, by dataset and key."""

    def __init__(self):
        self._tables: dict[str, dict[str, MasterRecord]] = {dataset: {} for dataset in DATASETS}

    def apply(self, dataset: str, key: str, value: bytes | None) -> bool:
        """Apply one record of civic.ref.<dataset> (None deletes); False if stale and ignored.

        Raises pydantic.ValidationError for a record that does not match its dataset."""
        table = self._tables[dataset]
        if value is None:
            table.pop(key, None)
            return True
        record = decode_record(dataset, value)
        current = table.get(key)
        if current is not None and current.updated > record.updated:
            return False
        table[key] = record
        return True

    def get(self, dataset: str, key: str) -> MasterRecord | None:
        return self._tables[dataset].get(key)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())


def enrich(event: dict[str, Any], event_type: EventType, tables: ReferenceTables) -> dict[str, Any]:
    """Fill the event type's declared enrichment fields in place; return the event."""
    data = event["data"]
    location = event.get("location") or {}
    for enrichment in event_type.enrichments:
        by = enrichment.by
        key = location.get(by[len("location.") :]) if by.startswith("location.") else data.get(by)
        record = tables.get(enrichment.dataset, key) if key else None
        if record is not None:
            data[enrichment.field] = getattr(record, enrichment.take)
    return event


class ReferenceFollower:
    """Reads every civic.ref.* topic from the start into ReferenceTables, then follows them
    (civicbus.kafka.TopicFollower: `catch_up`, `start`, `stop`)."""

    def __init__(self, ctx: BusContext, tables: ReferenceTables, **client_config):
        self.tables = tables
        self._datasets = {ctx.topology.reference(d): d for d in DATASETS}
        group = f"{ctx.topology.group('civicbus-reference')}-{uuid.uuid4().hex[:8]}"  # never commits
        self._follower = TopicFollower(ctx.settings, ctx.bootstrap, group, list(self._datasets), self._apply, "reference-follower",
                                      **client_config)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        self._follower.catch_up(timeout_s)
        log.info("master data loaded: %d records", len(self.tables))

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def _apply(self, message) -> None:
        if message.error():
            return  # end of partition: nothing to apply
        dataset = self._datasets[message.topic()]
        try:
            if not self.tables.apply(dataset, message.key().decode(), message.value()):
                log.info("stale %s record %s ignored", dataset, message.key())
        except (ValidationError, UnicodeDecodeError, AttributeError) as e:
            # `civicbus reference load` validates before writing; this is someone else's bad write.
            log.error("invalid %s record at offset %d ignored: %s", dataset, message.offset(), e)
