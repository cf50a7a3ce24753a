"""A bare faust-streaming passthrough: SOURCE -> DESTINATION, no processing, configured like the
case stage's app (processors/cases.py: raw serializers, at-least-once, same commit interval and
acks), so the case stage can be measured against faust itself on the same broker.

    python -m benchmarks.faust_passthrough SOURCE DESTINATION
"""

from __future__ import annotations

import sys

import faust
from faust.worker import Worker

from civicbus.cli_support import bus_context


def create_app(source: str, destination: str) -> faust.App:
    ctx = bus_context()
    session_s = ctx.settings.session_timeout_ms / 1000
    app = faust.App(
        ctx.topology.group("bench-faust-passthrough"),
        broker=f"kafka://{ctx.bootstrap}",
        store="memory://",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 6),
        broker_commit_interval=0.5,
        producer_acks=-1,
    )
    source_topic = app.topic(source, key_type=bytes, value_type=bytes)
    destination_topic = app.topic(destination, key_type=bytes, value_type=bytes)

    @app.agent(source_topic)
    async def copy(stream):
        async for record in stream.events():
            await destination_topic.send(key=record.key, value=record.value, headers=record.headers)

    return app


if __name__ == "__main__":
    app = create_app(sys.argv[1], sys.argv[2])
    app.finalize()
    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
