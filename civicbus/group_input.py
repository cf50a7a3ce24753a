"""A consumer group's input: a group member that is assigned the partitions and takes the
commits, and a reader that fetches them with the wait the broker needs now (civicbus.quirks, 10).
The stages read through it (processors.runner), and so does a department's subscriber SDK.

On the embedded broker a fetch reads only for as long as its wait, and listing a partition takes
longer the more batches it holds: a stage waiting a fixed 10 ms stops getting its input once
that listing passes 10 ms, and never catches up; a department's reader at 100 ms, later. librdkafka
fixes `fetch.wait.max.ms` when a client is made, and a new group member costs a rebalance (half a
session timeout on the embedded broker, then the case stage restores its state), so the member
never fetches (its partitions stay paused) and a plain assigned consumer reads from where the
group stands; when the wait must change (ListingClock), a new reader takes over from those
positions between two batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from civicbus.context import BusContext
from civicbus.kafka import make_consumer
from civicbus.quirks import ListingClock, SkippedBatchGuard

log = logging.getLogger(__name__)

Partitions = list[TopicPartition]


class GroupInput:
    """The records of a group's assigned partitions, in order, each once unless `rewind` or
    `read_from` moves them.

    `member` is the group consumer: commits go through it (offsets, or a transaction's group
    metadata). `on_assigned` and `on_revoked` are called from its rebalance callbacks, which `take`
    serves; `client_config` makes each client's extra settings (statistics callbacks); `on_wait`
    is told each reader's fetch wait in ms. `least_wait_ms` is the wait while the broker is quick
    (Settings.fetch_wait_max_ms unless given). `name` labels logs and the skipped-batch counter."""

    def __init__(self, ctx: BusContext, name: str, group_id: str, topics: list[str], embedded: bool,
                 on_assigned: Callable[[Partitions], None] = lambda _partitions: None,
                 on_revoked: Callable[[Partitions], None] = lambda _partitions: None,
                 on_commit: Callable | None = None, client_config: Callable[[], dict] = dict,
                 on_wait: Callable[[int], None] = lambda _ms: None, least_wait_ms: int | None = None):
        self.ctx, self.name, self.group_id = ctx, name, group_id
        self._on_assigned, self._on_revoked, self._on_wait = on_assigned, on_revoked, on_wait
        self._client_config = client_config
        self._positions: dict[tuple[str, int], int] = {}  # assigned partition -> the offset to read next
        self.clock = ListingClock(ctx.settings, ctx.bootstrap, least_wait_ms)
        self._wait_ms = self.clock.wait_ms
        self._reader = self._new_reader()
        self._guard = SkippedBatchGuard(self._reader, name) if embedded else None
        member_config = {"on_commit": on_commit} if on_commit is not None else {}
        self.member = make_consumer(ctx.settings, ctx.bootstrap, group_id, **member_config, **client_config())
        self.member.subscribe(topics, on_assign=self._assign, on_revoke=self._revoke)
        self.clock.start()

    def take(self, wait_s: float, most: int) -> list[Message]:
        """Up to `most` records: what is fetched already, after waiting up to `wait_s` for the first."""
        self._serve_member()
        first = self._reader.poll(wait_s)
        if first is None:
            return []
        taken = [first, *(self._reader.consume(most - 1, 0) if most > 1 else [])]
        return [m for m in taken if self._admits(m)]

    def rewind(self) -> None:
        """Back to the committed offsets (the start, where none is committed yet)."""
        self.read_from(self._committed(list(self._assignment())))

    def read_from(self, positions: dict[tuple[str, int], int]) -> None:
        """Read the assigned partitions from these offsets (a replay's start, a rewind)."""
        self._positions = positions
        self._reader.assign([TopicPartition(t, p, offset) for (t, p), offset in positions.items()])
        self.clock.watch(self._assignment())
        if self._guard is not None:
            self._guard = SkippedBatchGuard(self._reader, self.name)

    def adapt(self) -> None:
        """Between two batches: read on with the wait the broker's listing time asks for now."""
        if self.clock.wait_ms == self._wait_ms:
            return
        log.info("%s: the broker's listing of its input now asks for a %d ms fetch wait (was %d)",
                 self.name, self.clock.wait_ms, self._wait_ms)
        old, self._wait_ms = self._reader, self.clock.wait_ms
        self._reader = self._new_reader()
        self.read_from(dict(self._positions))
        old.close()

    def close(self) -> None:
        self.clock.stop()
        self.member.close()  # leave the group now (revoking serves on_revoked), so a successor is assigned at once
        self._reader.close()

    # ---- internals ---------------------------------------------------------------------------

    def _new_reader(self):
        self._on_wait(self._wait_ms)
        return make_consumer(self.ctx.settings, self.ctx.bootstrap, f"{self.group_id}.reader",
                             **{"fetch.wait.max.ms": self._wait_ms, **self._client_config()})

    def _assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self._positions]

    def _committed(self, partitions: Partitions) -> dict[tuple[str, int], int]:
        committed = self.member.committed(partitions, timeout=30) if partitions else []
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in committed}

    def _admits(self, message: Message) -> bool:
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                return False
            raise KafkaException(message.error())
        if self._guard is not None and not self._guard.admits(message):
            return False
        self._positions[(message.topic(), message.partition())] = message.offset() + 1
        return True

    def _serve_member(self) -> None:
        """Rebalance and commit callbacks run here. The member's partitions are paused as soon as
        they are assigned; a record it fetched before that is the reader's to read, not its own."""
        message = self.member.poll(0)
        if message is not None and message.error():
            log.warning("%s: %s", self.name, message.error())

    def _assign(self, member, partitions: Partitions) -> None:
        member.assign(partitions)
        member.pause(partitions)
        self.read_from(self._committed(partitions))
        self._on_assigned(partitions)

    def _revoke(self, member, partitions: Partitions) -> None:
        self._on_revoked(partitions)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.read_from({tp: offset for tp, offset in self._positions.items() if tp not in gone})
