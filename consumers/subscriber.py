"""The subscriber SDK: a department reads its feed, civic.feed.<department>, as typed events.

    with FeedSubscriber(ctx, "citymgmt") as feed:
        feed.run(handle_event, stop)    # commits each event's offset only after handle_event returns

At-least-once: if the handler raises or the process dies, the event is delivered again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from civicbus.context import BusContext
from civicbus.kafka import make_consumer


@dataclass(frozen=True)
class FeedEvent:
    event: dict[str, Any]
    partition: int
    offset: int
    headers: dict[str, bytes]

    @property
    def id(self) -> str:
        return self.event["id"]

    @property
    def type(self) -> str:
        return self.event["type"]


class FeedSubscriber:
    def __init__(self, ctx: BusContext, department: str, group_id: str | None = None, poll_timeout_s: float = 0.5):
        ctx.city.department(department)  # KeyError for an unknown department
        self.ctx = ctx
        self.department = department
        self.topic = ctx.topology.feed(department)
        self.poll_timeout_s = poll_timeout_s
        self._consumer = make_consumer(ctx.settings, ctx.bootstrap, group_id or ctx.topology.group(f"dept.{department}"))
        self._consumer.subscribe([self.topic])

    def _decode(self, message: Message) -> FeedEvent:
        return FeedEvent(
            self.ctx.serde.decode(message.value(), message.topic()),
            message.partition(),
            message.offset(),
            dict(message.headers() or []),
        )

    def poll(self) -> tuple[FeedEvent, Message] | None:
        message = self._consumer.poll(self.poll_timeout_s)
        if message is None:
            return None
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                return None
            raise KafkaException(message.error())
        return self._decode(message), message

    def commit(self, message: Message) -> None:
        self._consumer.commit(offsets=[TopicPartition(message.topic(), message.partition(), message.offset() + 1)], asynchronous=False)

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
        self._consumer.close()

    def __enter__(self) -> FeedSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
