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

import logging
import time

import faust

from civicbus.context import BusContext
from civicbus.dlq import DeadLetter, Reason
from civicbus.metrics import ESCALATED, OPEN_CASES, OVERDUE_CASES, REJECTED, ROUTED
from civicbus.serde import DecodeError
from civicbus.topology import DIST_EVENTS, DLQ, PIPE_CASES
from processors.casebook import CaseBook, CaseError, CaseRules, TickResult

log = logging.getLogger(__name__)

STAGE = "cases"
# A record on civic.pipe.cases with this header is a clock tick (value: epoch milliseconds).
CLOCK_HEADER = "civic_clock_ms"


def _forwarded(headers: dict) -> list[tuple[str, bytes]]:
    """Headers to carry on (e.g. the publish time for end-to-end latency), not the CloudEvents ones."""
    return [(k, v) for k, v in headers.items() if not k.startswith("ce_") and k != "content-type"]


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


def faust_settings(ctx: BusContext) -> dict:
    """How civicbus runs faust: raw bytes (our serde decodes), at-least-once, short sessions for
    the embedded broker. Shared with the bare-faust benchmark so the comparison is fair."""
    session_s = ctx.settings.session_timeout_ms / 1000
    return {
        "broker": f"kafka://{ctx.bootstrap}",
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
    app = faust.App(ctx.topology.group("civicbus-cases"), topic_partitions=partitions, **faust_settings(ctx))
    pipe_topic = app.topic(ctx.topology.name(PIPE_CASES), key_type=bytes, value_type=bytes)
    dist_topic = app.topic(ctx.topology.name(DIST_EVENTS), key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(ctx.topology.name(DLQ), key_type=bytes, value_type=bytes)
    cases = app.Table("cases", default=None, partitions=partitions, schema=faust.Schema(key_serializer="json", value_serializer="json"))
    casebook = CaseBook(CaseRules.from_city(ctx.city, ctx.catalog["case.escalated"]), cases)
    metrics = CaseMetrics()
    dist_name = dist_topic.get_topic_name()

    async def distribute(event: dict, extra_headers: list[tuple[str, bytes]]) -> None:
        value, headers = ctx.serde.encode(event, dist_name)
        ROUTED.labels(event["type"]).inc()
        await dist_topic.send(key=event["id"].encode(), value=value, headers=headers + extra_headers)

    async def dead_letter(record, reason: Reason, detail: str) -> None:
        REJECTED.labels(STAGE, reason.value).inc()
        message = record.message
        letter = DeadLetter(reason, detail, STAGE, message.topic, message.partition, message.offset, record.key, record.value)
        await dlq_topic.send(key=letter.key, value=letter.value, headers=letter.headers())

    @app.agent(pipe_topic)
    async def handle_case_events(stream):
        async for record in stream.events():
            headers = dict(record.headers or {})
            if CLOCK_HEADER in headers:
                result = casebook.tick(int(headers[CLOCK_HEADER]))
                for event in result.events:
                    await distribute(event, [])
                metrics.record(result)
                continue
            try:
                event = ctx.serde.decode(record.value, record.message.topic)
                outputs = casebook.handle(event, ctx.catalog[event["type"]])
            except (DecodeError, CaseError) as e:
                await dead_letter(record, e.reason, e.detail)
                continue
            except Exception as e:  # a bug or an unforeseen input must not stop the case stage
                log.exception("case stage failed on %s@%d", record.message.topic, record.message.offset)
                await dead_letter(record, Reason.PROCESSING_ERROR, f"{type(e).__name__}: {e}")
                continue
            for out in outputs:
                await distribute(out, _forwarded(headers))

    @app.timer(interval=ctx.city.categories.clock.total_seconds())
    async def clock():
        now_ms = str(int(time.time() * 1000)).encode()
        for partition in range(partitions):
            await pipe_topic.send(key=b"clock", value=b"", partition=partition, headers=[(CLOCK_HEADER, now_ms)])

    return app
