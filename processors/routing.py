"""Which civic.pipe.cases partition a case event goes to, so that each case lives in one partition.

Reports are keyed by place: the district of their standardised location (an unplaced report by
its own id). Reports that may merge (the same category within `merge.distance_m`) then meet in
one partition, and one case-stage worker decides their merge alone. Two reports on either side of
a district boundary do not merge: they belong to two district offices anyway.

A status update names its case by a report id; it goes to the partition that report went to.
Ingest learns that from the reports it routes itself, and, for reports another ingest worker
routed or routed before a restart, from the case stage's state log (civic.state.cases partition
p lists the reports of civic.pipe.cases partition p). An update naming a report nobody knows
goes by the hash of that id, and the case stage parks it until the report arrives or the wait
runs out (processors.cases).

With one partition (a stack's default) every case lives in it: the router remembers nothing and
follows no state log. That log is the fullest partition the case stage writes (a record per
report, a transaction marker per commit), and on the embedded broker every fetch that returns
data lists all of it (civicbus.quirks, 2): at 20 events/s it held 32,000 records by minute 14.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections import OrderedDict
from typing import Any

from confluent_kafka import Message

from civicbus.context import BusContext
from civicbus.kafka import TopicFollower

# Report ids remembered from ingest's own routing, beyond what the state log lists.
RECENT_CAPACITY = 200_000
REPORT_PREFIX = b"report/"


def place_key(event: dict[str, Any]) -> str:
    location = event.get("location") or {}
    return f"district/{location['district']}" if location.get("resolved") and location.get("district") else event["id"]


def partition_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


class CaseRouter:
    def __init__(self, partitions: int):
        self.partitions = partitions
        self._lock = threading.Lock()  # the state-log follower writes from its thread
        self._logged: dict[str, int] = {}  # report id -> partition, from the state log
        self._recent: OrderedDict[str, int] = OrderedDict()  # report id -> partition, routed here
        self._follower: TopicFollower | None = None

    def report(self, event: dict[str, Any]) -> int:
        partition = partition_of(place_key(event), self.partitions)
        if self.partitions == 1:
            return partition
        with self._lock:
            self._recent[event["id"]] = partition
            if len(self._recent) > RECENT_CAPACITY:
                self._recent.popitem(last=False)
        return partition

    def update(self, reference: str) -> int:
        with self._lock:
            known = self._recent.get(reference, self._logged.get(reference))
        return known if known is not None else partition_of(reference, self.partitions)

    def follow(self, ctx: BusContext, **client_config) -> None:
        """Learn, then keep learning, which partition holds each report, from the state log."""
        if self.partitions == 1:
            return
        group = f"{ctx.topology.group('civicbus-ingest-case-router')}-{uuid.uuid4().hex[:8]}"  # never commits; ingest's prefix
        self._follower = TopicFollower(ctx.settings, ctx.bootstrap, group, [ctx.topology.cases_changelog], self._learn, "case-router",
                                      **client_config)
        self._follower.catch_up()
        self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def _learn(self, message: Message) -> None:
        key = message.key() or b""
        if not key.startswith(REPORT_PREFIX):
            return
        report_id = key[len(REPORT_PREFIX):].decode()
        with self._lock:
            if message.value() is None:
                self._logged.pop(report_id, None)
            else:
                self._logged[report_id] = message.partition()
