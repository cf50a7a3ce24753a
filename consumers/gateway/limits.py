"""Per-department limits of the gateway (config/policy.yaml `rate_limits`): 429 with Retry-After.

- publishes: a token bucket per department, `publish_per_s` refilled, `publish_burst` deep;
- feed reads: at most `concurrent_reads` requests of one department open at once, so one
  department's idle long-polls and streams cannot take every connection the gateway has.
Both read the policy in force at each request, so a change applies at once. Everything runs on
the event loop (no locks needed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from civicbus.policy import PolicySource


def too_many(message: str, retry_after_s: float) -> HTTPException:
    return HTTPException(429, message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class DepartmentLimits:
    def __init__(self, policy: PolicySource):
        self.policy = policy
        self._buckets: dict[str, tuple[float, float]] = {}  # department -> (tokens, at monotonic time)
        self._reading: dict[str, int] = {}

    def take_publish(self, department: str) -> None:
        """One publish of `department`, or 429 saying when the next one is allowed."""
        limit = self.policy.get().rate_limit(department)
        now = time.monotonic()
        tokens, at = self._buckets.get(department, (float(limit.publish_burst), now))
        tokens = min(float(limit.publish_burst), tokens + (now - at) * limit.publish_per_s)
        if tokens < 1.0:
            self._buckets[department] = (tokens, now)
            raise too_many(f"{department} may publish {limit.publish_per_s:g} events/s (bursts of {limit.publish_burst})", (1.0 - tokens) / limit.publish_per_s)
        self._buckets[department] = (tokens - 1.0, now)

    @contextmanager
    def reading(self, department: str) -> Iterator[None]:
        """Hold one of the department's concurrent feed reads, or 429."""
        limit = self.policy.get().rate_limit(department).concurrent_reads
        if self._reading.get(department, 0) >= limit:
            raise too_many(f"{department} already has {limit} feed requests open (long-polls and streams); close one or wait", 1)
        self._reading[department] = self._reading.get(department, 0) + 1
        try:
            yield
        finally:
            self._reading[department] -= 1
