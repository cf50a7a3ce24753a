"""The subscriber SDK: a department reads its feed, civic.feed.<department>, as typed events.

    with FeedSubscriber(ctx, "citymgmt") as feed:
        feed.run(handle_event, stop)    # commits each event's offset only after handle_event returns

At-least-once: if the handler raises or the process dies, the event is delivered again.
A record the fan-out did not sign (civicbus.signing) is skipped, never handed to the handler:
that takes the stack's key, so a department system without the state folder passes
`verify=False` and relies on Kafka's ACLs, which let only the fan-out write feeds.

Replay (a department joining late, or recovering): `start=` a datetime reads the feed from the
records delivered at or after that time, `start=` an offset from that offset, `start=` a cursor
(`FeedEvent.cursor`, or the gateway's) from that position; each applies to the first assignment
only, then the group's committed offsets take over again.

Resets (consumers/feed_position.py): a feed recreated, or a new embedded broker, would let a
position from before name other events. The subscriber raises `FeedResetError` instead: at start
for a cursor of another epoch or an offset beyond the feed's end, and while running when the
feed's topic id changes (checked before an event is handed out, at most EPOCH_CHECK_S apart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from civicbus.context import BusContext
from civicbus.group_input import GroupInput
from civicbus.kafka import FEED_READER_FETCH_WAIT_MS, make_admin, make_consumer, partition_offsets
from civicbus.metrics import FORGED_SKIPPED
from civicbus.quirks import fetch_wait_for, is_embedded, listing_seconds, partition_ends
from civicbus.signing import RecordSigner
from civicbus.wire import read_masked
from consumers.feed_position import FeedPosition, FeedResetError, topic_epoch  # noqa: F401  (FeedResetError: what the SDK raises)

log = logging.getLogger(__name__)

EPOCH_CHECK_S = 1.0


def offsets_at_time(admin: AdminClient, topic: str, since_ms: int) -> dict[int, int]:
    """Per partition, the first offset delivered at or after `since_ms` (the end if none).

    The embedded broker ignores the timestamp and answers offset 0, so readers also skip records
    older than `since_ms` themselves (see `delivered_before`); on Kafka that skips nothing.
    """
    found = partition_offsets(admin, [topic], OffsetSpec.for_timestamp(since_ms))
    ends = partition_offsets(admin, [topic], OffsetSpec.latest())
    return {p: offset if offset >= 0 else ends[(topic, p)] for (_topic, p), offset in found.items()}


def delivered_before(message: Message, since_ms: int | None) -> bool:
    return since_ms is not None and message.timestamp()[1] < since_ms


@dataclass(frozen=True)
class FeedEvent:
    event: dict[str, Any]
    partition: int
    offset: int
    headers: dict[str, bytes]
    epoch: str  # the feed's topic id when this event was read

    @property
    def cursor(self) -> str:
        """The position after this event, for `start=` (or the gateway's `cursor=`) to resume from."""
        return str(FeedPosition({self.partition: self.offset + 1}, self.epoch))

    @property
    def id(self) -> str:
        return self.event["id"]

    @property
    def type(self) -> str:
        return self.event["type"]

    @property
    def masked(self) -> tuple[str, ...]:
        """Personal fields of `data` masked for this department (see civicbus.policy)."""
        return read_masked(list(self.headers.items()))


class FeedReader:
    """A feed read without a consumer group: partitions assigned directly, nothing committed.

    For throwaway readers (`civicbus tail`): the broker never learns of a group, so none is left
    behind, not even after kill -9, and none shows in the live view or the lag exporter. Its
    fetch wait is chosen when it starts, from how long the broker takes to list the feed then
    (civicbus.quirks 10). `start`: "beginning", "now", or a datetime (the records delivered at or
    after it)."""

    def __init__(self, ctx: BusContext, department: str, start: datetime | str = "beginning", poll_timeout_s: float = 0.5,
                 verify: bool = True):
        ctx.city.department(department)  # KeyError for an unknown department
        self.ctx = ctx
        self._signer = RecordSigner.of_stack(ctx.settings) if verify else None
        self.topic = ctx.topology.feed(department)
        admin = make_admin(ctx.bootstrap)
        self.epoch = topic_epoch(admin, self.topic)
        self.poll_timeout_s = poll_timeout_s
        self._since_ms = int(start.timestamp() * 1000) if isinstance(start, datetime) else None
        if self._since_ms is not None:
            offsets = offsets_at_time(admin, self.topic, self._since_ms)
        else:
            logical = {"beginning": OFFSET_BEGINNING, "now": OFFSET_END}[start]
            offsets = {p: logical for p in admin.list_topics(self.topic, timeout=10).topics[self.topic].partitions}
        partitions = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        wait_ms = fetch_wait_for(listing_seconds(admin, partitions), FEED_READER_FETCH_WAIT_MS)
        # librdkafka wants a group.id even for a consumer that never joins or commits
        self._consumer = make_consumer(ctx.settings, ctx.bootstrap, f"civicbus-reader-{department}", **{"fetch.wait.max.ms": wait_ms})
        self._consumer.assign(partitions)

    def poll(self) -> tuple[FeedEvent, Message] | None:
        message = self._consumer.poll(self.poll_timeout_s)
        if message is None:
            return None
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                return None
            raise KafkaException(message.error())
        return _event_of(self.ctx, message, self._since_ms, self._signer, self.epoch)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> FeedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _event_of(ctx: BusContext, message: Message, since_ms: int | None, signer: RecordSigner | None,
              epoch: str) -> tuple[FeedEvent, Message] | None:
    """The feed event a record holds, or None: a record from before `since_ms`, or one without this
    stack's signature (skipped and counted, never handed on)."""
    if delivered_before(message, since_ms):
        return None
    if signer is not None and not signer.verifies_message(message):
        FORGED_SKIPPED.labels("subscriber").inc()
        log.error("forged record %s[%d]@%d skipped: no valid signature", message.topic(), message.partition(), message.offset())
        return None
    event = ctx.serde.decode(message.value(), message.topic())
    return FeedEvent(event, message.partition(), message.offset(), dict(message.headers() or []), epoch), message


class FeedSubscriber:
    def __init__(
        self,
        ctx: BusContext,
        department: str,
        group_id: str | None = None,
        poll_timeout_s: float = 0.5,
        start: datetime | int | str | None = None,
        verify: bool = True,
    ):
        ctx.city.department(department)  # KeyError for an unknown department
        self.ctx = ctx
        self.department = department
        self.topic = ctx.topology.feed(department)
        self.poll_timeout_s = poll_timeout_s
        self._admin = make_admin(ctx.bootstrap)
        self.epoch = topic_epoch(self._admin, self.topic)
        self._checked_at = time.monotonic()
        if isinstance(start, str):  # ValueError for text that is no cursor
            position = FeedPosition.parse(start)
            position.check_epoch(self.epoch, self.topic)
            start = position
        self._since_ms = int(start.timestamp() * 1000) if isinstance(start, datetime) else None
        self._signer = RecordSigner.of_stack(ctx.settings) if verify else None
        if isinstance(start, int):
            start = FeedPosition({p: start for p in self._ends()})
        group = group_id or ctx.topology.department_group_prefix(department) + "subscriber"
        if isinstance(start, FeedPosition) and start.epoch is None:  # with an epoch, the epoch told
            start.check_within(partition_ends(ctx.settings, ctx.bootstrap, group, self.topic, self._ends()), self.topic)
        self._start: datetime | FeedPosition | None = start
        # its fetch wait follows the broker's listing of the feed, from FEED_READER_FETCH_WAIT_MS up
        self._input = GroupInput(ctx, f"subscriber {department}", group, [self.topic], is_embedded(ctx.bootstrap),
                                 on_assigned=self._on_assign, least_wait_ms=FEED_READER_FETCH_WAIT_MS)

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        """Replay: position the first assignment at the requested time or offset."""
        if self._start is None:
            return
        if self._since_ms is not None:
            offsets = offsets_at_time(self._admin, self.topic, self._since_ms)
        else:
            offsets = self._start.positions
        self._start = None
        self._input.read_from({(self.topic, tp.partition): offsets.get(tp.partition, 0) for tp in partitions})

    def _ends(self) -> dict[int, int]:
        return {p: offset for (_topic, p), offset in partition_offsets(self._admin, [self.topic], OffsetSpec.latest()).items()}

    def _check_epoch(self) -> None:
        """FeedResetError when the feed is no longer the topic this subscriber started on."""
        if time.monotonic() - self._checked_at < EPOCH_CHECK_S:
            return
        try:
            current = topic_epoch(self._admin, self.topic)
        except KafkaException:
            return  # the broker is away: nothing is read either; checked again when it answers
        self._checked_at = time.monotonic()
        FeedPosition({}, self.epoch).check_epoch(current, self.topic)

    def poll(self) -> tuple[FeedEvent, Message] | None:
        self._input.adapt()
        taken = self._input.take(self.poll_timeout_s, 1)
        polled = _event_of(self.ctx, taken[0], self._since_ms, self._signer, self.epoch) if taken else None
        self._check_epoch()
        return polled

    def commit(self, message: Message) -> None:
        self._input.member.commit(offsets=[TopicPartition(message.topic(), message.partition(), message.offset() + 1)],
                                  asynchronous=False)

    def run(self, handler: Callable[[FeedEvent], None], stop: threading.Event) -> None:
        """Call handler for each event; commit its offset after the handler returned."""
        while not stop.is_set():
            polled = self.poll()
            if polled is not None:
                event, message = polled
                handler(event)
                self.commit(message)

    def __iter__(self) -> Iterator[FeedEvent]:
        """Iterate forever; the previous event is committed when the next one is asked for."""
        pending: Message | None = None
        while True:
            polled = self.poll()
            if pending is not None:
                self.commit(pending)
                pending = None
            if polled is not None:
                event, pending = polled
                yield event

    def close(self) -> None:
        self._input.close()

    def __enter__(self) -> FeedSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
