"""`civicbus tail AGENCY`: print a department's feed as JSON lines. Imports are inside the commands."""

from __future__ import annotations

import signal
import uuid

import typer

from civicbus.cli_support import bus_context, configure_logging, fail, stop_on_signals


def tail(
    agency: str = typer.Argument(..., help="Department id whose feed to read."),
    group: str = typer.Option(None, help="Consumer group (default: a throwaway group that reads from the start)."),
) -> None:
    """Follow civic.feed.AGENCY and print each event as one JSON line until Ctrl-C."""
    from civicbus.serde import to_json
    from consumers.subscriber import FeedEvent, FeedSubscriber

    stop = stop_on_signals()
    ctx = bus_context()

    def show(item: FeedEvent) -> None:
        typer.echo(to_json(item.event))

    try:
        subscriber = FeedSubscriber(ctx, agency, group_id=group or f"civicbus-tail-{uuid.uuid4().hex[:8]}")
    except KeyError as e:
        fail(str(e), 2)
    with subscriber:
        subscriber.run(show, stop)


def gateway(
    port: int = typer.Option(8080, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Run the HTTP gateway (publish, feeds, SSE, catalog) until SIGTERM or Ctrl-C."""
    import uvicorn

    from consumers.gateway.app import create_app

    configure_logging()
    ctx = bus_context()
    broker = ctx.bootstrap  # asked here, so that no broker is one line rather than a failed app start-up
    app = create_app(ctx)
    typer.echo(f"gateway listening on http://{host}:{port} (OpenAPI at /openapi.json), broker {broker}")
    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that
    # was there before: make that a no-op, so a clean stop exits 0 like every other part.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.command()(tail)
    app.command()(gateway)
