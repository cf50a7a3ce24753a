"""Fan-out: civic.dist.events -> civic.feed.<department> for every department that receives it.

Exactly once into the feeds. The stage runs in Kafka transactions, and it also drops events it
has already delivered, by id: the case stage is at-least-once (faust) and may emit an event
twice after a restart, and the embedded broker exposes records of aborted transactions (see
DESIGN notes in README). Delivered ids are kept in memory and in civic.state.fanout-seen,
written in the same transaction *after* the feed records were acknowledged, so the set restored
after a crash never claims an event the feeds do not hold.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from civicbus.context import BusContext
from civicbus.metrics import DELIVERED, DUPLICATES_DROPPED, END_TO_END_LATENCY
from civicbus.topology import DIST_EVENTS, STATE_FANOUT_SEEN
from processors.ingest import PUBLISHED_AT_HEADER
from processors.runner import Output, Stage

# Ids remembered for deduplication: far more than can be re-emitted between two commits.
SEEN_CAPACITY = 1_000_000


def header(message: Message, name: str) -> bytes | None:
    for key, value in message.headers() or []:
        if key == name:
            return value
    return None


class SeenIds:
    """A bounded, insertion-ordered set of event ids."""

    def __init__(self, capacity: int = SEEN_CAPACITY):
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, event_id: bytes) -> bool:
        return event_id in self._ids

    def add(self, event_id: bytes) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class FanoutStage(Stage):
    name = "fanout"

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.topology = ctx.topology
        self.seen_topic = self.topology.name(STATE_FANOUT_SEEN)
        self.seen = SeenIds()
        self._delivered_in_batch: list[bytes] = []

    def subscription(self) -> list[str]:
        return [self.topology.name(DIST_EVENTS)]

    def prepare(self, ctx: BusContext) -> None:
        """Restore the delivered ids from the changelog (read_committed)."""
        consumer = Consumer(
            {
                "bootstrap.servers": ctx.bootstrap,
                "group.id": self.topology.group("civicbus-fanout-restore"),
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            metadata = consumer.list_topics(self.seen_topic, timeout=10).topics[self.seen_topic]
            partitions = [TopicPartition(self.seen_topic, p, 0) for p in metadata.partitions]
            consumer.assign(partitions)
            remaining = {p.partition for p in partitions}
            idle_since = time.monotonic()
            while remaining and time.monotonic() - idle_since < 2.0:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                idle_since = time.monotonic()
                if message.error():
                    remaining.discard(message.partition())
                    continue
                self.seen.add(message.key())
        finally:
            consumer.close()

    def process(self, message: Message) -> Iterable[Output]:
        event_id = message.key()
        if event_id in self.seen:
            DUPLICATES_DROPPED.labels(self.name).inc()
            return []
        self.seen.add(event_id)
        self._delivered_in_batch.append(event_id)
        event = self.ctx.serde.decode(message.value(), message.topic())
        published_ms = header(message, PUBLISHED_AT_HEADER)
        outputs = []
        for department in event["targets"]:
            outputs.append(Output(self.topology.feed(department), message.value(), event_id, message.headers()))
            DELIVERED.labels(department, event["type"]).inc()
            if published_ms:
                END_TO_END_LATENCY.labels(department).observe(max(0.0, time.time() - int(published_ms) / 1000))
        return outputs

    def before_commit(self, producer: Producer) -> None:
        if not self._delivered_in_batch:
            return
        producer.flush()  # the feed records first: see the module docstring
        for event_id in self._delivered_in_batch:
            producer.produce(self.seen_topic, b"", event_id)
        self._delivered_in_batch = []
