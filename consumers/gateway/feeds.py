"""Reading a department's feed over HTTP: pages by cursor with long-poll, and Server-Sent Events.

The cursor is the position after the last event returned, `partition:offset` pairs joined by
commas (`0:15`), so replay from an offset is a cursor a client can write by hand; `since=`
(RFC 3339) replays from a time instead. No cursor and no `since` reads from the oldest event
still within retention. Every event handed out is recorded in civic.audit (path "gateway")
before the answer is sent: an event the audit did not acknowledge is not delivered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel

from civicbus.audit import GatewayAudit
from civicbus.context import BusContext
from civicbus.kafka import AsyncProducer, consumer_config
from civicbus.metrics import FORGED_SKIPPED
from civicbus.serde import DecodeError, to_json
from civicbus.signing import RecordSigner
from civicbus.wire import read_masked
from consumers.subscriber import delivered_before, offsets_at_time

log = logging.getLogger(__name__)

# An answer with nothing new still waits this long for the first fetch after a seek: the
# embedded broker understates the high watermark, so "nothing new" cannot be known sooner.
MIN_FETCH_S = 0.5
MAX_LIMIT = 1000
MAX_WAIT_S = 60.0
STREAM_WAIT_S = 5.0
STREAM_PAGE = 200


def format_cursor(positions: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def parse_cursor(text: str) -> dict[int, int]:
    try:
        positions = {int(p): int(o) for p, o in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise ValueError(f"cursor {text[:40]!r} is not partition:offset pairs such as 0:15 or 0:15,1:3") from None
    if any(p < 0 or o < 0 for p, o in positions.items()):
        raise ValueError("cursor partitions and offsets are never negative")
    return positions


@dataclass(frozen=True)
class FeedItem:
    event: dict[str, Any]
    masked: tuple[str, ...]
    cursor: str  # the position after this event


@dataclass(frozen=True)
class FeedPage:
    items: list[FeedItem]
    cursor: str


class _TopicReader:
    """One consumer assigned to one feed, remembering its position so the next page of a client
    reading on continues from data already fetched instead of seeking again."""

    def __init__(self, ctx: BusContext, topic: str):
        self.topic = topic
        config = consumer_config(ctx.settings, ctx.bootstrap, ctx.topology.group("civicbus-gateway"), **{"fetch.wait.max.ms": 100})
        self.consumer = Consumer(config)  # assigned, never subscribed: no group join, no commits
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        self.partitions = sorted(metadata.partitions)
        self.positions: dict[int, int] = {}

    def start_positions(self, cursor: dict[int, int] | None, since_ms: int | None) -> dict[int, int]:
        unknown = set(cursor or ()) - set(self.partitions)
        if unknown:
            raise ValueError(f"cursor names partitions {sorted(unknown)} the feed does not have")
        if since_ms is not None:
            return offsets_at_time(self.consumer, self.topic, self.partitions, since_ms)
        oldest = {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)[0] for p in self.partitions}
        return {p: max(oldest[p], (cursor or {}).get(p, 0)) for p in self.partitions}

    def seek(self, positions: dict[int, int]) -> None:
        if positions != self.positions:
            self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in positions.items()])
            self.positions = dict(positions)

    def fetch(self, limit: int, wait_s: float, since_ms: int | None) -> list[tuple[Message, str]]:
        """Up to `limit` records, each with the cursor after it; waits up to `wait_s` for the first."""
        got: list[tuple[Message, str]] = []
        deadline = time.monotonic() + max(wait_s, MIN_FETCH_S)
        while len(got) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = self.consumer.consume(limit - len(got), 0.05 if got else min(remaining, 0.25))
            for message in batch:
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(message.error())
                    continue
                self.positions[message.partition()] = message.offset() + 1
                if not delivered_before(message, since_ms):
                    got.append((message, format_cursor(self.positions)))
            if got and not batch:
                break  # what was there has been read; do not wait for more
        return got

    def close(self) -> None:
        self.consumer.close()


class FeedReader:
    """Reads feeds for the gateway; a small pool of consumers per feed, reused across requests."""

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.signer = RecordSigner.of_stack(ctx.settings)
        self._idle: dict[str, list[_TopicReader]] = {}
        self._lock = threading.Lock()

    def _borrow(self, topic: str) -> _TopicReader:
        with self._lock:
            pool = self._idle.setdefault(topic, [])
            if pool:
                return pool.pop()
        return _TopicReader(self.ctx, topic)

    def _give_back(self, reader: _TopicReader) -> None:
        with self._lock:
            self._idle.setdefault(reader.topic, []).append(reader)

    def read(self, department: str, cursor: dict[int, int] | None, since: datetime | None, limit: int, wait_s: float) -> FeedPage:
        """Blocking: call it from a worker thread."""
        topic = self.ctx.topology.feed(department)
        since_ms = int(since.timestamp() * 1000) if since else None
        reader = self._borrow(topic)
        try:
            reader.seek(reader.start_positions(cursor, since_ms))
            fetched = reader.fetch(limit, wait_s, since_ms)
            page = FeedPage([item for item in map(self._item, fetched) if item is not None], format_cursor(reader.positions))
        except BaseException:
            reader.close()  # its position is unknown now
            raise
        self._give_back(reader)
        return page

    def _item(self, fetched: tuple[Message, str]) -> FeedItem | None:
        message, cursor = fetched
        if not self.signer.verifies_message(message):  # not written by the fan-out: never served
            FORGED_SKIPPED.labels("gateway").inc()
            log.error("forged record %s[%d]@%d skipped: no valid signature", message.topic(), message.partition(), message.offset())
            return None
        try:
            event = self.ctx.serde.decode(message.value(), message.topic())
        except DecodeError as e:  # cannot happen for records the fan-out wrote; never fail a page on it
            log.error("unreadable record %s[%d]@%d skipped: %s", message.topic(), message.partition(), message.offset(), e)
            return None
        return FeedItem(event, read_masked(message.headers()), cursor)

    def close(self) -> None:
        with self._lock:
            readers = [r for pool in self._idle.values() for r in pool]
            self._idle.clear()
        for reader in readers:
            reader.close()


class FeedPageModel(BaseModel):
    """The documented shape of a page (the events are envelopes as JSON)."""

    events: list[dict[str, Any]]
    cursor: str


@dataclass
class FeedAccess:
    ctx: BusContext
    reader: Callable[[], FeedReader]
    producer: Callable[[], AsyncProducer]

    def __post_init__(self) -> None:
        self.audit_log = GatewayAudit(self.ctx, self.producer)

    async def audited(self, department: str, items: list[FeedItem]) -> None:
        """Record every event handed out; raises (and nothing is handed out) unless all acknowledged."""
        await self.audit_log.record(department, [(i.event["id"], i.event["type"], i.masked) for i in items])

    async def page(self, department: str, cursor: str | None, since: datetime | None, limit: int, wait_s: float) -> FeedPage:
        if cursor is not None and since is not None:
            raise HTTPException(422, [{"field": "since", "message": "give a cursor or since, not both"}])
        try:
            positions = parse_cursor(cursor) if cursor is not None else None
            page = await run_in_threadpool(self.reader().read, department, positions, since, limit, wait_s)
        except ValueError as e:
            raise HTTPException(422, [{"field": "cursor", "message": str(e)}]) from None
        except KafkaException as e:
            raise HTTPException(503, f"the broker did not answer: {e.args[0].str()}") from None
        try:
            await self.audited(department, page.items)
        except KafkaException as e:
            raise HTTPException(503, f"the audit record was not acknowledged, so nothing is delivered: {e.args[0].str()}") from None
        return page


def feeds_router(access: FeedAccess, department_of_caller: Callable[..., str]) -> APIRouter:
    router = APIRouter(tags=["feeds"])

    def own_feed(agency: str, department: str = Depends(department_of_caller)) -> str:
        if agency != department:
            raise HTTPException(403, f"a token of {department} cannot read the feed of {agency}")
        return department

    @router.get(
        "/v1/feeds/{agency}/events",
        response_model=FeedPageModel,
        summary="The department's feed, oldest first, from a cursor; long-polls when empty",
        responses={401: {}, 403: {}, 422: {}, 503: {}},
    )
    async def feed_events(
        department: str = Depends(own_feed),
        cursor: str | None = Query(None, description="Position to continue from (partition:offset,...), as returned by the previous page."),
        since: datetime | None = Query(None, description="Replay from this time (RFC 3339) instead of a cursor."),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
        wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S, description="Seconds to wait for an event when there is none."),
    ) -> Response:
        page = await access.page(department, cursor, since, limit, wait)
        body = '{"events":[' + ",".join(to_json(i.event) for i in page.items) + '],"cursor":' + json.dumps(page.cursor) + "}"
        return Response(body, media_type="application/json")

    async def first_page(
        department: str = Depends(own_feed),
        cursor: str | None = Query(None, description="Position to continue from; a reconnecting EventSource sends Last-Event-ID instead."),
        since: datetime | None = Query(None, description="Replay from this time (RFC 3339)."),
        last_event_id: str | None = Header(None),
    ) -> tuple[str, FeedPage]:
        """Read before the stream starts, so a bad cursor is a 4xx, not a broken stream."""
        return department, await access.page(department, cursor or last_event_id, since, STREAM_PAGE, 0.0)

    @router.get(
        "/v1/feeds/{agency}/stream",
        response_class=EventSourceResponse,
        summary="The department's feed as Server-Sent Events (id: the cursor after each event)",
        responses={401: {}, 403: {}, 422: {}, 503: {}},
    )
    async def feed_stream(start: tuple[str, FeedPage] = Depends(first_page)) -> AsyncIterator[ServerSentEvent]:
        department, page = start
        while True:
            for item in page.items:
                yield ServerSentEvent(raw_data=to_json(item.event), event=item.event["type"], id=item.cursor)
            page = await access.page(department, page.cursor, None, STREAM_PAGE, STREAM_WAIT_S)

    return router
