"""`civicbus tail AGENCY`: print a department's feed as JSON lines; `civicbus gateway`.

Imports of Kafka clients and the serde are inside the commands, so `civicbus --help` and the
commands that need no broker start fast (benchmarks/cli.py)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import typer

from civicbus.cli_support import bus_context, configure_logging, fail, serve_http, stop_on_signals


def _start(value: str | None) -> datetime | str | None:
    if value is None or value in ("beginning", "now"):
        return value
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not beginning, now, or an ISO 8601 time such as 2026-12-01T08:00:00Z", param_hint="--from") from None
    return start if start.tzinfo else start.replace(tzinfo=timezone.utc)


def tail(
    agency: str = typer.Argument(..., help="Department id whose feed to read."),
    start: str = typer.Option(None, "--from", help="beginning (default), now, or a time (ISO 8601; UTC unless it says otherwise)."),
    types: list[str] = typer.Option(None, "--type", help="Print only events of this type (repeatable)."),
    limit: int = typer.Option(0, min=0, help="Stop after printing this many events (0: follow until Ctrl-C)."),
    group: str = typer.Option(None, help="Read as this consumer group, committing what was printed (default: no group, nothing committed)."),
) -> None:
    """Follow civic.feed.AGENCY and print each event as one JSON line until Ctrl-C or --limit."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    from civicbus.wire import to_json
    from consumers.subscriber import FeedReader, FeedSubscriber

    stop = stop_on_signals()
    ctx = bus_context()
    begin = _start(start)
    unknown = sorted(set(types or ()) - set(ctx.catalog.types))
    if unknown:
        fail(f"unknown event type {', '.join(unknown)}; known: {', '.join(sorted(ctx.catalog.types))}", 2)
    # The decoder (the schema registry's client: a fifth of a second of imports) loads while the reader connects.
    threading.Thread(target=lambda: ctx.serde, name="load-decoder", daemon=True).start()
    try:
        if group:  # a named group's committed position, unless --from says otherwise
            reader = FeedSubscriber(ctx, agency, group_id=group, start={"beginning": OFFSET_BEGINNING, "now": OFFSET_END}.get(begin, begin))
        else:
            reader = FeedReader(ctx, agency, begin or "beginning")
    except KeyError as e:
        fail(str(e), 2)
    printed = 0
    with reader:
        while not stop.is_set() and (not limit or printed < limit):
            polled = reader.poll()
            if polled is None:
                continue
            item, message = polled
            if not types or item.type in types:
                typer.echo(to_json(item.event))
                printed += 1
            if group:
                reader.commit(message)


def gateway(
    port: int = typer.Option(8080, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Run the HTTP gateway (publish, feeds, SSE, catalog) until SIGTERM or Ctrl-C."""
    from consumers.gateway.app import create_app

    configure_logging()
    ctx = bus_context()
    broker = ctx.bootstrap  # asked here, so that no broker is one line rather than a failed app start-up
    app = create_app(ctx)
    typer.echo(f"gateway listening on http://{host}:{port} (OpenAPI at /openapi.json), broker {broker}")
    serve_http(app, host, port)


def register(app: typer.Typer) -> None:
    app.command()(tail)
    app.command()(gateway)
