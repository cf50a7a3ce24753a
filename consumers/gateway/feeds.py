"""Reading a department's feed over HTTP: pages by cursor with long-poll, and Server-Sent Events.

The cursor is the position after the last event returned, with the feed's epoch (see
consumers/feed_position.py): `<epoch>.0:15`. A hand-written `0:15` replays from an offset; `since=`
(RFC 3339) replays from a time instead. No cursor and no `since` reads from the oldest event
still within retention. A cursor from before the feed was reset answers 409, never a skip.

Every event handed out is recorded in civic.audit (path "gateway") before the answer is sent: an
event the audit did not acknowledge is not delivered. Then the page's end is committed to the
department's group `dept.<id>.gateway`, so the lag exporter shows HTTP readers like any other.

Nothing here blocks the event loop or holds a thread while a request waits: broker questions go
through the AdminClient's futures, records are taken from a consumer's prefetched queue without
blocking, and a long-poll with nothing to read waits on `FeedWatch`, which asks the end offsets
of every awaited feed in one request per WATCH_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, IsolationLevel, KafkaError, KafkaException, Message, TopicCollection, TopicPartition
from confluent_kafka.admin import OffsetSpec
from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel

from civicbus.audit import GatewayAudit
from civicbus.context import BusContext
from civicbus.kafka import FEED_READER_FETCH_WAIT_MS, consumer_config, make_admin
from civicbus.metrics import FORGED_SKIPPED
from civicbus.quirks import LISTING_PROBE_S, ListingWait, partition_ends
from civicbus.serde import DecodeError
from civicbus.signing import RecordSigner
from civicbus.wire import read_masked, to_json
from consumers.feed_position import FeedPosition, FeedResetError, epoch_of
from consumers.gateway.auth import Authenticate, bearer
from consumers.gateway.limits import DepartmentLimits
from consumers.subscriber import delivered_before

log = logging.getLogger(__name__)

# An answer with nothing new still waits this long for the first fetch after a seek: the
# embedded broker understates the high watermark, so "nothing new" cannot be known sooner.
MIN_FETCH_S = 0.5
FIRST_FETCH_S = 5.0
POLL_STEP_S = 0.02
MAX_LIMIT = 1000
MAX_WAIT_S = 60.0
STREAM_WAIT_S = 2.0  # a stream re-checks its token this often: a revoked one ends it within 5 s
STREAM_PAGE = 200
WATCH_INTERVAL_S = 0.2
READERS_PER_FEED = 2  # consumers of one feed at once; more requests take turns (none waits holding one)
IDLE_CLOSE_S = 60.0
EARLIEST_MS = 0  # since= before 1970 names no record a broker can hold


READ_COMMITTED = {"isolation_level": IsolationLevel.READ_COMMITTED, "request_timeout": 10}


async def _result(future: Future) -> Any:
    return await asyncio.wrap_future(future)


@dataclass(frozen=True)
class FeedItem:
    event: dict[str, Any]
    masked: tuple[str, ...]
    cursor: str  # the position after this event


@dataclass(frozen=True)
class FeedPage:
    items: list[FeedItem]
    position: FeedPosition

    @property
    def cursor(self) -> str:
        return str(self.position)


@dataclass(frozen=True)
class FeedState:
    topic: str
    epoch: str
    partitions: tuple[int, ...]


class FeedAdmin:
    """The broker questions of the gateway, asked without blocking: epochs, offsets, commits."""

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.admin = make_admin(ctx.bootstrap)

    def close(self) -> None:
        """Release the admin client's handle (it has no close(); it goes with its last reference),
        so a stopped gateway's client does not keep reconnecting to its broker."""
        self.admin = None

    async def state(self, topic: str) -> FeedState:
        description = await _result(self.admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic])
        return FeedState(topic, epoch_of(description), tuple(sorted(p.id for p in description.partitions)))

    async def offsets(self, topic: str, partitions: tuple[int, ...], spec: OffsetSpec) -> dict[int, int]:
        futures = self.admin.list_offsets({TopicPartition(topic, p): spec for p in partitions}, **READ_COMMITTED)
        return {tp.partition: (await _result(f)).offset for tp, f in futures.items()}

    async def ends(self, feeds: dict[str, tuple[int, ...]]) -> dict[str, dict[int, int]]:
        """End offsets of several feeds in one request (read_committed: an open transaction's end is
        not yet readable)."""
        if not feeds:
            return {}
        futures = self.admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, ps in feeds.items() for p in ps}, **READ_COMMITTED)
        found: dict[str, dict[int, int]] = {}
        for tp, f in futures.items():
            found.setdefault(tp.topic, {})[tp.partition] = (await _result(f)).offset
        return found

    async def commit(self, group: str, topic: str, positions: dict[int, int]) -> None:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in positions.items()])
        await _result(self.admin.alter_consumer_group_offsets([request], request_timeout=10)[group])


class FeedWatch:
    """Wakes long-polls when a feed's end moves past their position: one ListOffsets request a tick
    for every awaited feed, and a waiter wakes only when its feed changed, so idle ones cost nothing.
    A reader's position counts the partition EOF it reached (past transaction markers), so "end
    beyond position" means records to read, not a marker."""

    def __init__(self, admin: FeedAdmin):
        self.admin = admin
        self._waiting: dict[str, tuple[tuple[int, ...], int]] = {}  # topic -> (partitions, waiters)
        self._ends: dict[str, dict[int, int]] = {}
        self._moved: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task | None = None

    async def moved(self, feed: FeedState, positions: dict[int, int], timeout_s: float) -> bool:
        """Wait until the feed's end lies beyond `positions` (True) or `timeout_s` passed (False)."""
        partitions, count = self._waiting.get(feed.topic, (feed.partitions, 0))
        self._waiting[feed.topic] = (partitions, count + 1)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch())
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                ends = self._ends.get(feed.topic, {})
                if any(end > positions.get(p, 0) for p, end in ends.items()):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._moved.setdefault(feed.topic, asyncio.Event()).wait(), remaining)
                except TimeoutError:
                    return False
        finally:
            partitions, count = self._waiting[feed.topic]
            if count == 1:
                del self._waiting[feed.topic]
                self._ends.pop(feed.topic, None)
            else:
                self._waiting[feed.topic] = (partitions, count - 1)

    async def _watch(self) -> None:
        while self._waiting:
            try:
                found = await self.admin.ends({t: ps for t, (ps, _) in self._waiting.items()})
            except KafkaException as e:
                log.warning("feed watch: the broker did not answer: %s", e)
                found = {}
            for topic, ends in found.items():
                if self._ends.get(topic) != ends:
                    self._ends[topic] = ends
                    moved = self._moved.pop(topic, None)
                    if moved is not None:
                        moved.set()
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class _TopicReader:
    """One consumer of one feed incarnation, assigned only while it serves a request (an idle
    assigned consumer would keep fetching)."""

    feed: FeedState
    consumer: Consumer
    wait_ms: int  # its fetch.wait.max.ms (FeedReader.wait_for)
    positions: dict[int, int] = field(default_factory=dict)
    idle_since: float = 0.0
    connected: bool = False

    def seek(self, positions: dict[int, int]) -> None:
        self.consumer.assign([TopicPartition(self.feed.topic, p, o) for p, o in positions.items()])
        self.positions = dict(positions)

    async def fetch(self, limit: int, since_ms: int | None) -> list[tuple[Message, str]]:
        """Up to `limit` records, each with the cursor after it; takes what the consumer fetched
        without blocking, until each partition's end (partition EOF) or for at most MIN_FETCH_S
        (FIRST_FETCH_S for a new consumer, which connects first; its fetch wait if longer) when
        nothing comes."""
        got: list[tuple[Message, str]] = []
        not_at_end = set(self.positions)
        deadline = time.monotonic() + max(MIN_FETCH_S if self.connected else FIRST_FETCH_S, self.wait_ms / 1000)
        while len(got) < limit and not_at_end and time.monotonic() < deadline:
            batch = self.consumer.consume(limit - len(got), 0)
            for message in batch:
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(message.error())
                    not_at_end.discard(message.partition())  # the end, past any transaction marker:
                    self.positions[message.partition()] = max(self.positions[message.partition()], message.offset())
                    continue
                self.connected = True
                self.positions[message.partition()] = message.offset() + 1
                if not delivered_before(message, since_ms):
                    got.append((message, str(FeedPosition(self.positions, self.feed.epoch))))
            if got and not batch:
                break  # what was there has been read; do not wait for more
            if not batch:
                await asyncio.sleep(POLL_STEP_S)
        self.connected = self.connected or not not_at_end
        return got

    def release(self) -> None:
        self.consumer.unassign()
        self.idle_since = time.monotonic()


class FeedReader:
    """Reads feeds for the gateway. At most READERS_PER_FEED consumers per feed, pooled (unassigned
    between requests, closed after IDLE_CLOSE_S unused or when their feed was reset), all closed at
    stop; a long-poll holds none while it waits."""

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.signer = RecordSigner.of_stack(ctx.settings)
        self.admin = FeedAdmin(ctx)
        self.watch = FeedWatch(self.admin)
        self._idle: dict[str, list[_TopicReader]] = {}
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._listings: dict[str, tuple[ListingWait, float]] = {}  # feed -> (the wait its readers need, when timed last)
        self.open_readers = 0

    async def wait_for(self, feed: FeedState) -> int:
        """(civicbus.quirks 10) The fetch wait a reader of this feed needs: FEED_READER_FETCH_WAIT_MS
        while the broker lists the feed quickly, more as it slows, as the stages' ListingClock
        decides it, from a timing of each partition alone at most every LISTING_PROBE_S."""
        listing, timed_at = self._listings.get(feed.topic, (None, 0.0))
        if listing is None or time.monotonic() - timed_at >= LISTING_PROBE_S:
            listing = listing or ListingWait(FEED_READER_FETCH_WAIT_MS)
            slowest = 0.0
            for partition in feed.partitions:
                started = time.perf_counter()
                await self.admin.offsets(feed.topic, (partition,), OffsetSpec.latest())
                slowest = max(slowest, time.perf_counter() - started)
            listing.timed(slowest)
            self._listings[feed.topic] = (listing, time.monotonic())
        return listing.wait_ms

    def _borrow(self, feed: FeedState, wait_ms: int) -> _TopicReader:
        """A pooled reader of the feed that waits at least `wait_ms`, or a new one."""
        now = time.monotonic()
        for topic, pool in self._idle.items():  # every feed's: a feed nobody reads keeps no consumer
            for reader in [r for r in pool if now - r.idle_since > IDLE_CLOSE_S
                           or (topic == feed.topic and (r.feed.epoch != feed.epoch or r.wait_ms < wait_ms))]:
                pool.remove(reader)
                self._close(reader)
        pool = self._idle.setdefault(feed.topic, [])
        if pool:
            return pool.pop()
        config = consumer_config(self.ctx.settings, self.ctx.bootstrap, "civicbus-gateway-reader",
                                 **{"fetch.wait.max.ms": wait_ms, "enable.partition.eof": True})
        self.open_readers += 1
        return _TopicReader(feed, Consumer(config), wait_ms)  # assigned, never subscribed: no group join

    def _give_back(self, reader: _TopicReader) -> None:
        pool = self._idle.setdefault(reader.feed.topic, [])
        if len(pool) >= READERS_PER_FEED:
            self._close(reader)
            return
        reader.release()
        pool.append(reader)

    def _close(self, reader: _TopicReader) -> None:
        self.open_readers -= 1
        # close() leaves no group (never joined) but waits for the consumer's threads: not on the loop
        asyncio.get_running_loop().run_in_executor(None, reader.consumer.close)

    async def _start(self, feed: FeedState, position: FeedPosition | None, since_ms: int | None) -> dict[int, int]:
        if since_ms is not None:
            found = await self.admin.offsets(feed.topic, feed.partitions, OffsetSpec.for_timestamp(since_ms))
            ends = await self.admin.offsets(feed.topic, feed.partitions, OffsetSpec.latest())
            return {p: o if o >= 0 else ends[p] for p, o in found.items()}
        oldest = await self.admin.offsets(feed.topic, feed.partitions, OffsetSpec.earliest())
        if position is None:
            return oldest
        unknown = set(position.positions) - set(feed.partitions)
        if unknown:
            raise ValueError(f"cursor names partitions {sorted(unknown)} the feed does not have")
        if position.epoch is None:
            reported = await self.admin.offsets(feed.topic, feed.partitions, OffsetSpec.latest())
            ends = await asyncio.get_running_loop().run_in_executor(
                None, partition_ends, self.ctx.settings, self.ctx.bootstrap, "civicbus-gateway-reader", feed.topic, reported)
            position.check_within(ends, feed.topic)
        removed = {p: o for p, o in position.positions.items() if o < oldest[p]}
        if removed:
            raise FeedResetError(f"{feed.topic} no longer holds the events after this cursor (retention removed them up to offset "
                                 f"{', '.join(str(oldest[p]) for p in sorted(removed))}): read without a cursor, or with since=<time>")
        return {p: position.positions.get(p, oldest[p]) for p in feed.partitions}

    async def read(self, department: str, position: FeedPosition | None, since: datetime | None, limit: int, wait_s: float) -> FeedPage:
        """A page of the department's feed; ValueError for a cursor that does not fit the feed,
        FeedResetError for one from before a reset, KafkaException when the broker does not answer."""
        topic = self.ctx.topology.feed(department)
        since_ms = max(EARLIEST_MS, int(since.timestamp() * 1000)) if since else None
        feed = await self.admin.state(topic)
        if position is not None:
            position.check_epoch(feed.epoch, topic)
        positions = await self._start(feed, position, since_ms)
        deadline = time.monotonic() + wait_s
        while True:
            fetched, positions = await self._fetch(feed, positions, limit, since_ms)
            remaining = deadline - time.monotonic()
            if fetched or remaining <= 0:
                break
            if await self.watch.moved(feed, positions, remaining):
                now = await self.admin.state(topic)
                if now.epoch != feed.epoch:
                    FeedPosition(positions, feed.epoch).check_epoch(now.epoch, topic)
        items = [item for item in map(self._item, fetched) if item is not None]
        return FeedPage(items, FeedPosition(positions, feed.epoch))

    async def _fetch(self, feed: FeedState, positions: dict[int, int], limit: int, since_ms: int | None) -> tuple[list[tuple[Message, str]], dict[int, int]]:
        wait_ms = await self.wait_for(feed)
        async with self._turns.setdefault(feed.topic, asyncio.Semaphore(READERS_PER_FEED)):
            reader = self._borrow(feed, wait_ms)
            try:
                reader.seek(positions)
                fetched = await reader.fetch(limit, since_ms)
            except BaseException:
                self._close(reader)  # its position is unknown now
                raise
            self._give_back(reader)
        return fetched, dict(reader.positions)

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

    async def close(self) -> None:
        await self.watch.stop()
        readers = [r for pool in self._idle.values() for r in pool]
        self._idle.clear()
        self.open_readers -= len(readers)
        await asyncio.gather(*(asyncio.to_thread(r.consumer.close) for r in readers))
        self.admin.close()


class FeedPageModel(BaseModel):
    """The documented shape of a page (the events are envelopes as JSON)."""

    events: list[dict[str, Any]]
    cursor: str


def _broker_message(e: KafkaException) -> str:
    error = e.args[0] if e.args else None
    return error.str() if isinstance(error, KafkaError) else str(error)


@dataclass
class FeedAccess:
    ctx: BusContext
    reader: Callable[[], FeedReader]
    audit_log: GatewayAudit  # the gateway's one audit chain, shared with the case views
    last_committed: dict[str, dict[int, int]] = field(default_factory=dict)

    async def audited(self, department: str, items: list[FeedItem]) -> None:
        """Record every event handed out; raises (and nothing is handed out) unless all acknowledged."""
        await self.audit_log.record(department, [(i.event["id"], i.event["type"], i.masked) for i in items])

    async def committed(self, department: str, page: FeedPage) -> None:
        """The department's read position, for the lag exporter, when it moved (also past a
        transaction marker on an empty page, or lag would never read 0); a failed commit fails no page."""
        if self.last_committed.get(department) == page.position.positions:
            return
        group = self.ctx.topology.department_group_prefix(department) + "gateway"
        try:
            await self.reader().admin.commit(group, self.ctx.topology.feed(department), page.position.positions)
            self.last_committed[department] = page.position.positions
        except KafkaException as e:
            log.warning("could not commit %s's read position to %s: %s", department, group, _broker_message(e))

    async def page(self, department: str, cursor: str | None, since: datetime | None, limit: int, wait_s: float) -> FeedPage:
        if cursor is not None and since is not None:
            raise HTTPException(422, [{"field": "since", "message": "give a cursor or since, not both"}])
        try:
            position = FeedPosition.parse(cursor) if cursor is not None else None
            page = await self.reader().read(department, position, since, limit, wait_s)
        except ValueError as e:
            raise HTTPException(422, [{"field": "cursor", "message": str(e)}]) from None
        except FeedResetError as e:
            raise HTTPException(409, str(e)) from None
        except KafkaException as e:
            raise HTTPException(503, f"the broker did not answer: {_broker_message(e)}") from None
        try:
            await self.audited(department, page.items)
        except KafkaException as e:
            raise HTTPException(503, f"the audit record was not acknowledged, so nothing is delivered: {_broker_message(e)}") from None
        await self.committed(department, page)
        return page


def _since(since: datetime | None) -> datetime | None:
    """since= as an aware time; 422 for one before 1970 (no broker holds a record from then)."""
    if since is None:
        return None
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    if since < datetime(1970, 1, 1, tzinfo=timezone.utc):
        raise HTTPException(422, [{"field": "since", "message": "since must be a time after 1970-01-01T00:00:00Z"}])
    return since


FEED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid token"},
    403: {"description": "Another department's feed"},
    409: {"description": "The cursor is from before the feed was reset, or retention removed what follows it"},
    422: {"description": "A query parameter is invalid; `detail` names it"},
    429: {"description": "Too many feed requests of this department open at once (see Retry-After)"},
    503: {"description": "The broker did not answer"},
}


def feeds_router(access: FeedAccess, authenticate: Authenticate, limits: DepartmentLimits) -> APIRouter:
    router = APIRouter(tags=["feeds"])

    async def own_feed(agency: str, department: str = Depends(authenticate)) -> str:
        if agency != department:
            raise HTTPException(403, f"a token of {department} cannot read the feed of {agency}")
        return department

    @router.get(
        "/v1/feeds/{agency}/events",
        response_model=FeedPageModel,
        summary="The department's feed, oldest first, from a cursor; long-polls when empty",
        responses=FEED_RESPONSES,
    )
    async def feed_events(
        department: str = Depends(own_feed),
        cursor: str | None = Query(None, description="Position to continue from, as returned by the previous page (or partition:offset,... by hand)."),
        since: datetime | None = Query(None, description="Replay from this time (RFC 3339) instead of a cursor."),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
        wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S, description="Seconds to wait for an event when there is none."),
    ) -> Response:
        with limits.reading(department):
            page = await access.page(department, cursor, _since(since), limit, wait)
        body = '{"events":[' + ",".join(to_json(i.event) for i in page.items) + '],"cursor":' + json.dumps(page.cursor) + "}"
        return Response(body, media_type="application/json")

    async def stream_slot(department: str = Depends(own_feed)) -> AsyncIterator[str]:
        """One of the department's concurrent reads, held until the stream ends."""
        with limits.reading(department):
            yield department

    async def first_page(
        department: str = Depends(stream_slot),
        cursor: str | None = Query(None, description="Position to continue from; a reconnecting EventSource sends Last-Event-ID instead."),
        since: datetime | None = Query(None, description="Replay from this time (RFC 3339)."),
        last_event_id: str | None = Header(None),
    ) -> tuple[str, FeedPage]:
        """Read before the stream starts, so a bad cursor is a 4xx, not a broken stream."""
        return department, await access.page(department, cursor or last_event_id, _since(since), STREAM_PAGE, 0.0)

    @router.get(
        "/v1/feeds/{agency}/stream",
        response_class=EventSourceResponse,
        summary="The department's feed as Server-Sent Events (id: the cursor after each event)",
        description="Ends within 5 s of the token's revocation, and with an `event: reset` when the feed is reset.",
        responses=FEED_RESPONSES,
    )
    async def feed_stream(
        start: tuple[str, FeedPage] = Depends(first_page),
        credentials: HTTPAuthorizationCredentials = Depends(bearer),
    ) -> AsyncIterator[ServerSentEvent]:
        department, page = start
        while True:
            for item in page.items:
                yield ServerSentEvent(raw_data=to_json(item.event), event=item.event["type"], id=item.cursor)
            if authenticate.department_of(credentials.credentials) != department:
                return  # revoked: the stream ends, and a reconnect gets 401
            try:
                page = await access.page(department, page.cursor, None, STREAM_PAGE, STREAM_WAIT_S)
            except HTTPException as e:
                yield ServerSentEvent(raw_data=json.dumps({"detail": e.detail}, ensure_ascii=False), event="reset" if e.status_code == 409 else "error")
                return

    return router
