"""A bare faust-streaming passthrough: SOURCE -> DESTINATION, no processing, configured like the
case stage's app (processors.cases.faust_settings), so the case stage can be measured against faust itself on the same broker.

    python -m benchmarks.faust_passthrough SOURCE DESTINATION
"""

from __future__ import annotations

import sys

import faust
from faust.worker import Worker

from civicbus.cli_support import bus_context
from processors.cases import faust_settings


def create_app(source: str, destination: str) -> faust.App:
    ctx = bus_context()
    app = faust.App(ctx.topology.group("bench-faust-passthrough"), **faust_settings(ctx))
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
