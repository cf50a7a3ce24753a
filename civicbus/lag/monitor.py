"""From successive offset snapshots to lag figures and statuses. Pure: no Kafka here.

Lag is never negative: the embedded broker understates the high watermark when producers batch
(DESIGN.md), so a committed offset can be past the reported end; that is lag 0, not -n.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from civicbus.lag.lookup import LookupTable, Point
from civicbus.lag.offsets import Snapshot, TopicPartitionKey
from civicbus.lag.status import MIN_EVIDENCE, Sample, Status, partition_status, worst


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: assigned but never committed
    latest: int
    lag: float  # NaN when nothing was committed
    lag_seconds: float  # NaN until the lookup table can estimate it
    status: Status


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    status: Status
    partitions: tuple[PartitionLag, ...]

    def _known(self, attribute: str) -> list[float]:
        return [getattr(p, attribute) for p in self.partitions if not math.isnan(getattr(p, attribute))]

    def _max(self, attribute: str) -> float:
        """NaN when no partition's figure is known yet (as kafka-lag-exporter); 0 for no partitions."""
        return max(self._known(attribute), default=math.nan if self.partitions else 0.0)

    @property
    def max_lag(self) -> float:
        return self._max("lag")

    @property
    def sum_lag(self) -> float:
        return sum(self._known("lag"))

    @property
    def max_lag_seconds(self) -> float:
        return self._max("lag_seconds")

    def topic_sum_lag(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for p in self.partitions:
            if not math.isnan(p.lag):
                sums[p.topic] = sums.get(p.topic, 0.0) + p.lag
        return sums


class LagMonitor:
    """Keeps the lookup table of every partition and the status window of every group partition."""

    def __init__(self, window: int = 10, lookup_points: int = 60):
        self.window = window
        self.lookup_points = lookup_points
        self._tables: dict[TopicPartitionKey, LookupTable] = {}
        self._samples: dict[tuple[str, str, int], deque[Sample]] = {}

    def update(self, snapshot: Snapshot) -> tuple[GroupLag, ...]:
        self._forget_what_is_gone(snapshot)
        for tp, offset in snapshot.latest.items():
            self._tables.setdefault(tp, LookupTable(self.lookup_points)).add(Point(offset, snapshot.time))
        groups = []
        for group in snapshot.groups:
            partitions = []
            for (topic, partition), committed in sorted(group.committed.items()):
                latest = snapshot.latest[(topic, partition)]
                if committed is None:
                    partitions.append(PartitionLag(topic, partition, None, latest, math.nan, math.nan, Status.OK))
                    continue
                lag = max(0, latest - committed)
                samples = self._samples.setdefault((group.group, topic, partition), deque(maxlen=max(self.window, MIN_EVIDENCE)))
                samples.append(Sample(snapshot.time, committed, lag))
                lag_seconds = self._tables[(topic, partition)].lag_seconds(committed, snapshot.time)
                status = partition_status(samples, self.window, group.active, snapshot.earliest.get((topic, partition), 0))
                partitions.append(PartitionLag(topic, partition, committed, latest, float(lag), lag_seconds, status))
            groups.append(GroupLag(group.group, group.state, worst(p.status for p in partitions), tuple(partitions)))
        return tuple(groups)

    def _forget_what_is_gone(self, snapshot: Snapshot) -> None:
        """Deleted groups and topics leave no state behind (and so no stale metrics)."""
        present = {(g.group, t, p) for g in snapshot.groups for (t, p) in g.committed}
        for key in set(self._samples) - present:
            del self._samples[key]
        for tp in set(self._tables) - set(snapshot.latest):
            del self._tables[tp]
