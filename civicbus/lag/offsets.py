"""One snapshot of a cluster's consumer-group offsets, read with confluent-kafka's AdminClient.

Works on Apache Kafka and on the embedded broker (Tansu), which reports group states but not
members, so there only committed partitions are seen (see DESIGN.md on Tansu).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

TopicPartitionKey = tuple[str, int]

# States in which a group has members that consume (or are about to).
ACTIVE_STATES = {ConsumerGroupState.STABLE, ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING}
GROUP_STATES = tuple(s.name for s in ConsumerGroupState)


class KafkaUnavailable(RuntimeError):
    """The cluster did not answer one of the requests of a snapshot."""


@dataclass(frozen=True)
class GroupOffsets:
    group: str
    state: str  # STABLE, EMPTY, ... as the broker reports it
    active: bool
    # Committed offset per partition; None for a partition assigned to a member but never committed.
    committed: dict[TopicPartitionKey, int | None]


@dataclass(frozen=True)
class Snapshot:
    time: float
    groups: tuple[GroupOffsets, ...]
    latest: dict[TopicPartitionKey, int]  # high watermark
    earliest: dict[TopicPartitionKey, int]  # log start offset
    # How long the broker took to answer the high watermarks: the embedded broker lists every batch
    # of a partition for it, as for every fetch that returns data, so this climbs as its logs grow.
    list_offsets_s: float = 0.0


class OffsetsReader:
    """Reads Snapshots; raises KafkaUnavailable when the cluster does not answer in time.

    Log start offsets move only when retention deletes old segments, so they are read once every
    `earliest_every_s` (and for a partition seen for the first time), not at every poll: each
    ListOffsets costs the embedded broker a listing of every batch of each partition asked for.
    """

    def __init__(self, bootstrap: str, group_pattern: str = "", timeout_s: float = 5.0, earliest_every_s: float = 60.0,
                 **client_config):
        self.group_pattern = re.compile(group_pattern)
        self.timeout_s = timeout_s
        self.earliest_every_s = earliest_every_s
        self._earliest: dict[TopicPartitionKey, int] = {}
        self._earliest_read_at = float("-inf")
        quiet = logging.getLogger("civicbus.lag.librdkafka")
        quiet.setLevel(logging.CRITICAL)  # an unreachable broker is reported as up=0, not as log noise
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet, **client_config})

    def read(self) -> Snapshot:
        try:
            partitions_of = self.partitions_by_topic()
            groups = [self._group(g, partitions_of) for g in self._group_ids()]
            wanted = {tp for g in groups for tp in g.committed}
            started = time.perf_counter()
            latest = self.end_offsets(wanted)
            list_offsets_s = time.perf_counter() - started
            earliest = self._log_starts(wanted)
        except KafkaException as e:
            raise KafkaUnavailable(str(e.args[0] if e.args else e)) from None
        return Snapshot(time.time(), tuple(groups), latest, earliest, list_offsets_s)

    def partitions_by_topic(self) -> dict[str, int]:
        metadata = self.admin.list_topics(timeout=self.timeout_s)
        return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}

    def _group_ids(self) -> list[str]:
        result = self.admin.list_consumer_groups(request_timeout=self.timeout_s).result()
        if result.errors:
            raise KafkaUnavailable(f"listing consumer groups failed: {result.errors[0]}")
        return sorted(g.group_id for g in result.valid if self.group_pattern.search(g.group_id))

    def _group(self, group: str, partitions_of: dict[str, int]) -> GroupOffsets:
        description = self.admin.describe_consumer_groups([group], request_timeout=self.timeout_s)[group].result()
        committed: dict[TopicPartitionKey, int | None] = dict(self.committed_offsets(group, partitions_of))
        for member in description.members:
            for tp in member.assignment.topic_partitions if member.assignment else ():
                if tp.partition < partitions_of.get(tp.topic, 0):
                    committed.setdefault((tp.topic, tp.partition), None)
        state = description.state
        return GroupOffsets(group, state.name, state in ACTIVE_STATES, committed)

    def committed_offsets(self, group: str, partitions_of: dict[str, int]) -> dict[TopicPartitionKey, int]:
        """What `group` has committed, on partitions of the topics in `partitions_of` (a deleted
        topic's are left out: their lag has no meaning any more). Raises KafkaException."""
        request = [ConsumerGroupTopicPartitions(group)]
        listed = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)[group].result()
        return {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions
                if tp.offset >= 0 and tp.partition < partitions_of.get(tp.topic, 0)}

    def end_offsets(self, partitions: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """High watermarks (the embedded broker's: civicbus.quirks, 5). Raises KafkaException."""
        return self._list_offsets(partitions, OffsetSpec.latest())

    def _log_starts(self, partitions: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        if time.monotonic() - self._earliest_read_at >= self.earliest_every_s:
            self._earliest, self._earliest_read_at = self._list_offsets(partitions, OffsetSpec.earliest()), time.monotonic()
        else:
            self._earliest.update(self._list_offsets(partitions - self._earliest.keys(), OffsetSpec.earliest()))
        return {tp: self._earliest[tp] for tp in partitions}

    def _list_offsets(self, partitions: set[TopicPartitionKey], spec: OffsetSpec) -> dict[TopicPartitionKey, int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions}, request_timeout=self.timeout_s)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
