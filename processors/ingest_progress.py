"""How far ingest has read its input, as a time: what the case stage's hold of a status update is
measured in.

A status update can reach the case stage before the report it answers: ingest reads every
department's inbound topic, and under a backlog it may be minutes behind on the report's topic
and not on the update's. Held for a fixed wall time, such an update was dead-lettered
UNKNOWN_CASE while its report still waited in ingest's input (measured: `python -m benchmarks
soak --rate 100 --minutes 10` at 0daf050, 276-428 a minute from minute 9, once ingest was a
minute behind). So the hold is measured in ingest's progress instead: an update is given up only
once ingest has read every inbound record published up to `case_report_wait_ms` after it.

Ingest commits an inbound offset only after what it wrote for the records before it is
acknowledged (processors.runner, at least once), so once its committed offsets have reached the
end offsets an inbound partition had at time t, every report published before t is in
civic.pipe.cases, ahead of any clock record written afterwards. The embedded broker answers the
end as the base offset of a partition's last batch + 1 (civicbus.quirks, 5): the rest of a batch
being written at t may still be unread; it was published within a producer's linger of t.
"""

from __future__ import annotations

import logging
from functools import cached_property

from confluent_kafka import KafkaException

from civicbus.context import BusContext
from civicbus.kafka import security_config
from civicbus.lag.offsets import OffsetsReader, TopicPartitionKey
from civicbus.topology import IN_PREFIX

log = logging.getLogger(__name__)


class IngestProgress:
    """The latest time at which everything the inbound topics held had been read by ingest.

    A read notes the inbound end offsets at `now_ms` (a mark) when no mark is pending, then reads
    ingest's committed offsets; once they reach the pending mark's ends, its time is passed and the
    next read takes a new mark. So ListOffsets, which costs the embedded broker a listing of every
    batch of each inbound partition (civicbus.quirks, 2; 17-110 ms for one partition in the 100/s
    soak), is asked once per mark passed: while ingest is behind, reads cost an OffsetFetch only.
    """

    def __init__(self, ctx: BusContext, timeout_s: float = 5.0):
        self.group = ctx.topology.stage_group("ingest")
        self.prefix = ctx.topology.name(IN_PREFIX)
        self.timeout_s = timeout_s
        self.passed_ms = 0  # nothing is known to be read until a read says so
        self._mark: tuple[int, dict[TopicPartitionKey, int]] | None = None  # (time, inbound end offsets then)
        self._inbound: dict[str, int] = {}  # inbound topic -> its partitions, as of the mark
        self._bootstrap, self._settings = ctx.bootstrap, ctx.settings

    @cached_property
    def _offsets(self) -> OffsetsReader:
        return OffsetsReader(self._bootstrap, timeout_s=self.timeout_s, **security_config(self._settings))

    def read(self, now_ms: int) -> int:
        """The time up to which ingest has read every inbound partition; the last known one when
        the broker does not answer (a hold then lasts longer, never shorter)."""
        try:
            if self._mark is None:
                self._inbound = {t: n for t, n in self._offsets.partitions_by_topic().items() if t.startswith(self.prefix)}
                partitions = {(t, p) for t, n in self._inbound.items() for p in range(n)}
                self._mark = (now_ms, self._offsets.end_offsets(partitions))  # before the committed offsets: reaching these ends reaches now_ms
            committed = self._offsets.committed_offsets(self.group, self._inbound)
        except KafkaException as e:
            log.warning("ingest's progress not read (%s); holding status updates by the last known (%d)", e, self.passed_ms)
            return self.passed_ms
        marked_ms, ends = self._mark
        if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
            self.passed_ms, self._mark = marked_ms, None
        return self.passed_ms
