"""The case stage on faust-streaming: the stateful part of the pipeline.

Reads civic.pipe.cases (events that open or update a case), decides the case and its
responsible departments with plain functions from processors.casebook, and writes the result
to civic.dist.events. Runs at-least-once (faust's exactly_once cannot run on the embedded
broker); every event it emits has an id derived from its input, so what a restarted worker
emits twice is dropped by the transactional fan-out.
"""

from __future__ import annotations

import logging

import faust

from civicbus.context import BusContext
from civicbus.metrics import ROUTED
from civicbus.topology import DIST_EVENTS, PIPE_CASES
from processors.casebook import CaseBook

log = logging.getLogger(__name__)


def create_app(ctx: BusContext) -> faust.App:
    session_s = ctx.settings.session_timeout_ms / 1000
    app = faust.App(
        ctx.topology.group("civicbus-cases"),
        broker=f"kafka://{ctx.bootstrap}",
        store="memory://",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=ctx.topology.pipeline_partitions,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 6),
        broker_commit_interval=0.5,
        producer_acks=-1,
    )
    pipe_topic = app.topic(ctx.topology.name(PIPE_CASES), key_type=bytes, value_type=bytes)
    dist_topic = app.topic(ctx.topology.name(DIST_EVENTS), key_type=bytes, value_type=bytes)
    casebook = CaseBook(ctx.city.dispatch)

    @app.agent(pipe_topic)
    async def handle_case_events(stream):
        async for record in stream.events():
            event = ctx.serde.decode(record.value, record.message.topic)
            extra_headers = [(k, v) for k, v in (record.headers or {}).items() if not k.startswith("ce_") and k != "content-type"]
            for out in casebook.handle(event):
                value, headers = ctx.serde.encode(out, dist_topic.get_topic_name())
                ROUTED.labels(out["type"]).inc()
                await dist_topic.send(key=out["id"].encode(), value=value, headers=headers + extra_headers)

    return app
