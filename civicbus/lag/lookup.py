"""When was an offset the newest in its partition? kafka-lag-exporter's sampled lookup table.

Each poll adds a point (latest offset, wall time) per partition. A group's committed offset is
looked up in the table: interpolated between the two points around it, or extrapolated from the
whole table's trend when it is older than the oldest point. Time lag is now minus that time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Point:
    offset: int
    time: float  # seconds since the epoch


class LookupTable:
    def __init__(self, limit: int = 60):
        self.points: deque[Point] = deque(maxlen=max(2, limit))

    def add(self, point: Point) -> None:
        if self.points:
            last = self.points[-1]
            if point.time <= last.time or point.offset < last.offset:
                return  # out of order, or the partition was recreated: not part of this trend
            # A flat line is kept as two points, its start and its newest sample, so that a
            # quiet partition does not push every useful point out of the table.
            if point.offset == last.offset and len(self.points) > 1 and self.points[-2].offset == point.offset:
                self.points[-1] = point
                return
        self.points.append(point)

    def newest(self) -> Point | None:
        return self.points[-1] if self.points else None

    def time_of(self, offset: int) -> float | None:
        """Estimated wall time at which `offset` was the partition's latest offset.

        None when the table cannot tell yet (fewer than two points and not caught up).
        """
        if not self.points:
            return None
        newest = self.points[-1]
        if offset >= newest.offset:
            return newest.time
        if len(self.points) < 2:
            return None
        for left, right in reversed(list(pairwise(self.points))):
            if left.offset <= offset <= right.offset and left.offset < right.offset:
                return _on_line(left, right, offset)
        first = self.points[0]
        if newest.offset == first.offset:
            return first.time  # nothing written since the first sample: the best lower bound
        return _on_line(first, newest, offset)

    def lag_seconds(self, committed: int, now: float) -> float:
        """Time lag of a committed offset: 0 when caught up, never negative, NaN while unknown."""
        newest = self.newest()
        if newest is not None and committed >= newest.offset:
            return 0.0
        estimated = self.time_of(committed)
        if estimated is None:
            return math.nan
        return max(0.0, now - estimated)


def _on_line(left: Point, right: Point, offset: int) -> float:
    slope_s_per_offset = (right.time - left.time) / (right.offset - left.offset)
    return right.time - (right.offset - offset) * slope_s_per_offset
