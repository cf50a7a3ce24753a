"""The case stage on faust-streaming: the stateful part of the pipeline.

Topology, all of it declared here:
  civic.pipe.cases  --handle_case_events-->  civic.dist.events   (and civic.dlq for refusals)
  table:  cases (case id -> case, with its reports and statuses), logged to its faust changelog
  timer:  every `clock` of categories.yaml, a clock record on civic.pipe.cases; the agent
          checks deadlines when it reaches it, so escalations are decided in stream order
          and a replayed clock record decides exactly what it decided the first time.

The agents are thin: processors.casebook holds the logic. Runs at-least-once (faust's
exactly_once cannot run on the embedded broker); every event it emits has the id of its input
or one derived from it, so what a restarted worker emits twice is dropped by the fan-out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

import faust
from confluent_kafka import KafkaError, TopicPartition
from faust.auth import SASLCredentials, SSLCredentials

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.kafka import make_consumer, read_to_end
from civicbus.metrics import ESCALATED, OPEN_CASES, OVERDUE_CASES, REJECTED, ROUTED
from civicbus.schemas import ESCALATION_TYPE
from civicbus.serde import DecodeError
from civicbus.topology import CASES_APP, CASES_TABLE, DIST_EVENTS, DLQ, PIPE_CASES
from civicbus.wire import clock_header, is_cloudevent_header, read_clock_ms
from processors import faust_transport
from processors.casebook import CaseBook, CaseError, CaseRules, TickResult

log = logging.getLogger(__name__)

STAGE = "cases"


def _forwarded(headers: dict) -> list[tuple[str, bytes]]:
    """Headers to carry on (e.g. the publish time for end-to-end latency), not the CloudEvents ones."""
    return [(k, v) for k, v in headers.items() if not is_cloudevent_header(k)]


class CaseMetrics:
    """Open and overdue gauges per (department, category), refreshed at every clock tick."""

    def __init__(self):
        self._labels: set[tuple[str, str]] = set()

    def record(self, result: TickResult) -> None:
        for department, category in result.escalated:
            ESCALATED.labels(department, category).inc()
        labels = set(result.open) | self._labels
        for key in labels:
            OPEN_CASES.labels(*key).set(result.open[key])
            OVERDUE_CASES.labels(*key).set(result.overdue[key])
        self._labels = set(result.open)


class ChangeloggedStore(MutableMapping):
    """A faust table's store, written through to its changelog and restored from all of it.

    Writes: faust's own (`table[key] = value`) queue changelog records in a producer buffer that
    its pre-commit flush may leave undrained (it gives up after 0.1 s without progress), so an
    offset could be committed before the record of the change it caused. Records sent by
    `publish` go straight to the producer, which faust flushes before every offset commit.
    Restore: faust's recovery reads up to the reported high watermark, which the embedded broker
    gives as the base offset of the last record batch + 1 (DESIGN.md), losing the newest cases
    on restart. `restore` reads the changelog to its real end (end-of-partition) instead.
    """

    def __init__(self, table: faust.Table):
        self.table = table
        self._changed: dict[str, dict | None] = {}

    def __getitem__(self, key: str) -> dict:
        return self.table.data[key]

    def __setitem__(self, key: str, value: dict) -> None:
        self.table.data[key] = value
        self._changed[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
        self._changed[key] = None  # a tombstone: recovery deletes the key

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)

    def restore(self, ctx: BusContext, partitions: list[int], timeout_s: float = 120.0) -> None:
        """Rebuild the store from the whole changelog: what it says last about a key is the case."""
        topic = self.table.changelog_topic.get_topic_name()
        consumer = make_consumer(ctx.settings, ctx.bootstrap, f"{topic}-restore", **{"enable.partition.eof": True})
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.table.data.clear()
        try:
            read_to_end(consumer, self._apply, timeout_s)
        finally:
            consumer.close()
        log.info("case stage restored %d cases from %s", len(self.table.data), topic)

    def _apply(self, message) -> None:
        key, value = json.loads(message.key()), json.loads(message.value()) if message.value() else None
        if value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value

    async def publish(self, partition: int) -> None:
        """Send the changes of the event just processed to the changelog partition of its source."""
        changed, self._changed = self._changed, {}
        for key, value in changed.items():
            await self.table.changelog_topic.send(key=key, value=value, partition=partition)


@dataclass(frozen=True)
class PipeRecord:
    """One civic.pipe.cases record, whether faust delivered it or GapReader found it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict


class GapReader:
    """Finds records of civic.pipe.cases that faust skipped, by reading the topic directly.

    faust drops records it fetched while its flow control was suspended (start-up, rebalance)
    and acks them, so their offsets get committed unprocessed (seen in
    tests/e2e/test_case_restart.py). The agent tracks the last offset it processed per partition,
    starting from the group's committed offset; when the next record's offset jumps, this reads
    the range in between. Transaction markers also leave gaps; read_committed hides them.
    """

    def __init__(self, ctx: BusContext, topic: str, group: str):
        self.topic = topic
        self._consumer = make_consumer(ctx.settings, ctx.bootstrap, group, **{"enable.partition.eof": True})

    def next_offsets(self, partitions: list[int]) -> dict[int, int]:
        """The group's committed offset per partition: the first offset the stage has not processed."""
        committed = self._consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=30)
        return {tp.partition: max(tp.offset, 0) for tp in committed}

    def read(self, partition: int, start: int, end: int) -> list[PipeRecord]:
        """Records with start <= offset < end."""
        self._consumer.assign([TopicPartition(self.topic, partition, start)])
        found: list[PipeRecord] = []
        while True:
            message = self._consumer.poll(5.0)
            if message is None or (message.error() and message.error().code() == KafkaError._PARTITION_EOF):
                break
            if message.error():
                continue
            if message.offset() >= end:
                break
            found.append(PipeRecord(message.topic(), partition, message.offset(), message.key(), message.value(),
                                    dict(message.headers() or [])))
        self._consumer.unassign()  # or it keeps fetching the topic in the background, for nothing
        return found


def faust_credentials(ctx: BusContext) -> SASLCredentials | SSLCredentials | None:
    """The CIVICBUS_KAFKA_SECURITY_* settings (civicbus.kafka.security_config) in faust's terms."""
    settings = ctx.settings
    protocol = settings.kafka_security_protocol
    if not protocol or protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        return SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                               mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return SSLCredentials(context)


def faust_settings(ctx: BusContext) -> dict:
    """How civicbus runs faust: raw bytes (our serde decodes), at-least-once, short sessions for
    the embedded broker, civicbus's fetch wait (processors.faust_transport). Shared with the
    bare-faust benchmark so the comparison is fair."""
    session_s = ctx.settings.session_timeout_ms / 1000
    return {
        "broker": f"{faust_transport.SCHEME}://{ctx.bootstrap}",
        "broker_credentials": faust_credentials(ctx),
        "store": "memory://",
        "web_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": max(0.5, session_s / 6),
        "broker_commit_interval": 0.5,
        "producer_acks": -1,
    }


def create_app(ctx: BusContext) -> faust.App:
    partitions = ctx.topology.pipeline_partitions
    app = faust.App(ctx.topology.group(CASES_APP), topic_partitions=partitions, **faust_settings(ctx))
    pipe_topic = app.topic(ctx.topology.name(PIPE_CASES), key_type=bytes, value_type=bytes)
    dist_topic = app.topic(ctx.topology.name(DIST_EVENTS), key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(ctx.topology.name(DLQ), key_type=bytes, value_type=bytes)
    table = app.Table(CASES_TABLE, default=None, partitions=partitions, schema=faust.Schema(key_serializer="json", value_serializer="json"))
    cases = ChangeloggedStore(table)
    casebook = CaseBook(CaseRules.from_city(ctx.city, ctx.catalog[ESCALATION_TYPE]), cases)
    metrics = CaseMetrics()
    dist_name = dist_topic.get_topic_name()

    async def distribute(event: dict, extra_headers: list[tuple[str, bytes]]) -> None:
        value, headers = ctx.serde.encode(event, dist_name)
        ROUTED.labels(event["type"]).inc()
        await dist_topic.send(key=event["id"].encode(), value=value, headers=headers + extra_headers)

    async def dead_letter(record: PipeRecord, reason: Reason, detail: str) -> None:
        REJECTED.labels(STAGE, reason.value).inc()
        letter = DeadLetter(reason, detail, STAGE, record.topic, record.partition, record.offset, record.key, record.value)
        await dlq_topic.send(key=letter.key, value=letter.value, headers=letter.headers())

    gaps = GapReader(ctx, pipe_topic.get_topic_name(), app.conf.id)
    next_offset: dict[int, int] = {}  # per partition: the offset after the last one processed

    @app.agent(pipe_topic)
    async def handle_case_events(stream):
        # Manual acks: faust acks the current event in a `finally`, so a SIGTERM landing mid-event
        # would commit an event whose outputs were never sent. Acked only once all are handed over.
        manual = stream.noack()
        async for event in manual.events():
            message = event.message
            if not next_offset:  # records flow only after faust's recovery; then the changelog exists
                await asyncio.to_thread(cases.restore, ctx, list(range(partitions)))
                next_offset.update(await asyncio.to_thread(gaps.next_offsets, list(range(partitions))))
            expected = next_offset.get(message.partition, 0)
            if message.offset > expected:
                skipped = await asyncio.to_thread(gaps.read, message.partition, expected, message.offset)
                if skipped:
                    log.warning("faust skipped %d records of %s[%d] at %d..%d: processing them now", len(skipped),
                                message.topic, message.partition, expected, message.offset - 1)
                for record in skipped:
                    await process(record)
            await process(PipeRecord(message.topic, message.partition, message.offset, event.key, event.value,
                                     dict(event.headers or {})))
            next_offset[message.partition] = max(expected, message.offset + 1)
            await manual.ack(event)

    async def process(record: PipeRecord) -> None:
        clock_ms = read_clock_ms(list(record.headers.items()))
        if clock_ms is not None:  # a record on civic.pipe.cases with this header is a clock tick
            result = casebook.tick(clock_ms)
            for event in result.events:
                await distribute(event, [])
            metrics.record(result)
        else:
            await handle_one(record)
        await cases.publish(record.partition)

    async def handle_one(record: PipeRecord) -> None:
        try:
            event = ctx.serde.decode(record.value, record.topic)
            outputs = casebook.handle(event, ctx.catalog[event["type"]])
        except (DecodeError, CaseError) as e:
            await dead_letter(record, e.reason, e.detail)
            return
        except Exception as e:  # a bug or an unforeseen input must not stop the case stage
            log.exception("case stage failed on %s@%d", record.topic, record.offset)
            await dead_letter(record, Reason.PROCESSING_ERROR, f"{type(e).__name__}: {e}")
            return
        for out in outputs:
            await distribute(out, _forwarded(record.headers))

    @app.timer(interval=ctx.city.categories.clock.total_seconds())
    async def clock():
        tick = clock_header(int(time.time() * 1000))
        for partition in range(partitions):
            await pipe_topic.send(key=b"clock", value=b"", partition=partition, headers=[tick])

    return app
