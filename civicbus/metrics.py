"""civicbus_* metrics, declared once at module level (prometheus client_python style).

Components run as separate processes under `civicbus up`; with PROMETHEUS_MULTIPROC_DIR set,
prometheus-client writes each process's samples to that folder and the exporter serves the sum.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter("civicbus_published_total", "Events accepted at ingest from a publishing department.", ["department", "type"])
REJECTED = Counter("civicbus_rejected_total", "Records sent to civic.dlq, by stage and reason code.", ["stage", "reason"])
ROUTED = Counter("civicbus_routed_total", "Events written to civic.dist.events.", ["type"])
DELIVERED = Counter("civicbus_delivered_total", "Events written to a department feed.", ["department", "type"])
MASKED = Counter("civicbus_masked_fields_total", "Personal fields masked on delivery.", ["department", "type"])
AUDITED = Counter("civicbus_audited_total", "Deliveries recorded in civic.audit, by path (fanout, gateway).", ["path"])
FORGED_SKIPPED = Counter(
    "civicbus_forged_records_total", "Records on internal topics without a valid signature that a reader skipped "
    "(the stages dead-letter theirs: civicbus_rejected_total{reason=\"FORGED\"}).", ["reader"],
)
POLICY_RELOADS = Counter("civicbus_policy_reloads_total", "Policy file changes seen at run time: applied or refused.", ["result"])
GATEWAY_REQUESTS = Counter("civicbus_gateway_requests_total", "HTTP gateway requests by route and status code.", ["route", "status"])
DUPLICATES_DROPPED = Counter("civicbus_duplicates_dropped_total", "Re-emitted events dropped by id.", ["stage"])
STAGE_RECORDS = Counter("civicbus_stage_records_total", "Input records processed by a stage.", ["stage"])
SKIPPED_BATCHES = Counter(
    "civicbus_broker_skipped_batches_total",
    "Record batches the embedded broker left out of a fetch at a partition's end, read again (civicbus.quirks, 9).",
    ["stage", "topic"],
)
OFFSET_COMMIT_FAILURES = Counter(
    "civicbus_offset_commit_failures_total",
    "Input offsets an at-least-once stage failed to commit (asynchronously): its next commit covers them; "
    "a crash before it replays more.",
    ["stage"],
)
KAFKA_REQUESTS = Counter(
    "civicbus_kafka_requests_total",
    "Requests a stage's Kafka clients sent, by client and API (Fetch, Produce, EndTxn, ...): what the stage costs the broker.",
    ["stage", "client", "request"],
)
PRODUCED_BATCHES = Counter(
    "civicbus_produced_batches_total",
    "Record batches a stage's producers wrote, by topic: each one the embedded broker lists again at every fetch of its partition.",
    ["stage", "topic"],
)
STAGE_BATCH_SECONDS = Histogram(
    "civicbus_stage_batch_seconds", "Time to process and commit one batch.", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
END_TO_END_LATENCY = Histogram(
    "civicbus_end_to_end_latency_seconds", "From the publisher's produce time to the write to a department feed.",
    ["department"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STAGE_FETCH_WAIT = Gauge("civicbus_stage_fetch_wait_seconds", "How long a stage's fetches wait: on the embedded broker it "
                         "follows how long listing the stage's input partitions takes (civicbus.quirks, 10).",
                         ["stage"], multiprocess_mode="livemax")
OPEN_CASES = Gauge("civicbus_open_cases", "Cases not yet resolved.", ["department", "category"], multiprocess_mode="livesum")
HELD_UPDATES = Gauge("civicbus_case_held_updates", "Status updates the case stage holds for a report ingest has not read yet.",
                     multiprocess_mode="livesum")
OVERDUE_CASES = Gauge("civicbus_overdue_cases", "Open cases past a deadline.", ["department", "category"], multiprocess_mode="livesum")
ESCALATED = Counter("civicbus_escalated_total", "case.escalated events emitted.", ["department", "category"])


@functools.cache
def labelled(metric, *values: str):
    """`metric.labels(*values)`, remembered: the stages count every event, and labels() takes a
    lock and checks its arguments on each call (7% of the fan-out's time in py-spy). Label values
    come from the city's config (departments, types, stages), so the cache stays small."""
    return metric.labels(*values)


class BatchedMetrics:
    """Counts and observations of a stage's batch, kept in memory and written at its commit.

    In prometheus-client's multiprocess mode (every process `civicbus up` starts) each inc() or
    observe() writes the metric's mmap file under a lock: 1.4 us a counter, 2.8 us a histogram of
    12 buckets, against 0.5 and 0.2 us to note them here (timeit, 12-07), and the fan-out counts
    two or three per delivery, 3.45 deliveries an event. Summed per batch, a label set costs one
    write per commit however many events the batch held; a batch that is aborted and replayed is
    counted once, when it commits."""

    def __init__(self) -> None:
        self._counts: Tally[tuple] = Tally()
        self._observed: defaultdict[tuple, list[float]] = defaultdict(list)

    def inc(self, metric: Counter, *labels: str, amount: float = 1) -> None:
        self._counts[(metric, labels)] += amount

    def observe(self, metric: Histogram, *labels: str, value: float) -> None:
        self._observed[(metric, labels)].append(value)

    def write(self) -> None:
        for (metric, labels), amount in self._counts.items():
            labelled(metric, *labels).inc(amount)
        for (metric, labels), values in self._observed.items():
            observe_all(labelled(metric, *labels), values)
        self.discard()

    def discard(self) -> None:
        self._counts.clear()
        self._observed.clear()


def observe_all(histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for each of `values`, with one write per bucket hit and one for the
    sum. prometheus-client has no bulk observe; this uses the three attributes its own observe()
    uses (pinned version; tests/unit/test_metrics.py checks the samples equal one observe each)."""
    bounds = histogram._upper_bounds
    hits = Tally(bisect.bisect_left(bounds, value) for value in values)
    histogram._sum.inc(sum(values))
    for bucket, count in hits.items():
        histogram._buckets[bucket].inc(count)
