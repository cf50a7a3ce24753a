"""A consumer group's status evaluated over a sliding window of samples, as Burrow does.

No thresholds: a partition is judged by how its committed offset and lag moved over the last
`window` polls. Burrow sees every commit; an exporter that polls sees only committed offsets,
so "is anyone still consuming" comes from the group state (members present or not):

- OK       lag is zero now or was zero somewhere in the window, or the window is not full yet
           (a window of one sample is never full: one poll is no evidence of movement or its lack)
- WARNING  the offset advances but the lag never went down across the window (falling behind)
- ERROR    the committed offset went backwards (reset, rewind), or is below the partition's
           first offset (records were deleted before the group read them)
- STALLED  members are in the group, the offset has not moved over the whole window, lag > 0
- STOPPED  no member is in the group, the offset has not moved over the whole window, lag > 0

A group's status is its worst partition's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise


# Movement needs two polls: with fewer, whatever the window size asked for, nothing has been seen.
MIN_EVIDENCE = 2


class Status(str, Enum):
    OK = "OK"
    WARNING = "WARNING"
    ERROR = "ERROR"
    STALLED = "STALLED"
    STOPPED = "STOPPED"

    @property
    def severity(self) -> int:
        return list(Status).index(self)


@dataclass(frozen=True)
class Sample:
    time: float
    committed: int
    lag: int


def partition_status(samples: Sequence[Sample], window: int, group_active: bool, log_start: int = 0) -> Status:
    """Status of one partition from its samples, oldest first (at most `window` of them)."""
    if not samples or samples[-1].lag == 0:
        return Status.OK
    current = samples[-1]
    if current.committed < log_start:
        return Status.ERROR
    if any(later.committed < earlier.committed for earlier, later in pairwise(samples)):
        return Status.ERROR
    if len(samples) < max(window, MIN_EVIDENCE) or any(s.lag == 0 for s in samples):
        return Status.OK
    if all(s.committed == current.committed for s in samples):
        return Status.STALLED if group_active else Status.STOPPED
    if all(later.lag >= earlier.lag for earlier, later in pairwise(samples)):
        return Status.WARNING
    return Status.OK


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: s.severity, default=Status.OK)
