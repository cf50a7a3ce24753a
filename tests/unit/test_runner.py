"""The stage runner's parts that need no broker: the commit spacing and the offset-commit answers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition

from civicbus.context import BusContext
from civicbus.metrics import OFFSET_COMMIT_FAILURES
from civicbus.settings import Settings
from processors.runner import CommitSpacing, Stage, StageRunner


def test_commit_spacing_grows_with_the_fullest_partition_written_and_is_bounded():
    spacing = CommitSpacing(minimum_ms=20, maximum_ms=1000, per_batch_us=20)
    assert spacing.interval_s == 0.02
    for _ in range(5_000):  # 10,000 batches and markers in one partition, a few in another
        spacing.committed([("civic.feed.police", 0)], transactional=True)
    spacing.committed([("civic.audit", 0)], transactional=True)
    assert spacing.interval_s == 10_000 * 20e-6
    for _ in range(2_500):  # without a transaction: a batch, no marker
        spacing.committed([("civic.feed.police", 0)], transactional=False)
    assert spacing.interval_s == 12_500 * 20e-6
    for _ in range(100_000):
        spacing.committed([("civic.feed.police", 0)], transactional=True)
    assert spacing.interval_s == 1.0
    fixed = CommitSpacing(minimum_ms=20, maximum_ms=1000, per_batch_us=0)  # Apache Kafka
    fixed.committed([("civic.feed.police", 0)] * 10, transactional=True)
    assert fixed.interval_s == 0.02


@dataclass
class Answered:
    """A partition as librdkafka answers a commit, with its error (TopicPartition.error is read-only)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None


class Quiet(Stage):
    name = "quiet"
    exactly_once = False


def failures() -> float:
    return OFFSET_COMMIT_FAILURES.labels("quiet")._value.get()


def test_a_failed_asynchronous_offset_commit_is_counted_and_logged_and_nothing_else_is(caplog):
    runner = StageRunner(Quiet(), BusContext(Settings(bootstrap="127.0.0.1:1")))
    before = failures()
    caplog.set_level(logging.WARNING, logger="processors.runner")
    runner._offsets_committed(None, [TopicPartition("civic.dist.events", 0, 42)])
    runner._offsets_committed(KafkaError(KafkaError._NO_OFFSET), [])  # nothing new to commit
    assert failures() == before and not caplog.records
    rebalanced = Answered("civic.dist.events", 0, 43, KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    runner._offsets_committed(None, [TopicPartition("civic.dist.events", 1, 7), rebalanced])
    runner._offsets_committed(KafkaError(KafkaError._TRANSPORT), [TopicPartition("civic.dist.events", 0, 44)])
    assert failures() == before + 2
    assert "civic.dist.events[0]@43" in caplog.records[0].getMessage()
    assert "civic.dist.events[1]" not in caplog.records[0].getMessage()
    assert len(caplog.records) == 2
