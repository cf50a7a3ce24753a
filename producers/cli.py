"""`civicbus publish` and `civicbus simulate`. Imports are inside the commands: a fast start-up."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from civicbus.cli_support import bus_context, fail, stop_on_signals

reference_app = typer.Typer(help="Master data on the civic.ref.* topics.", no_args_is_help=True)


def publish(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines: one event per line."),
    agency: str = typer.Option(..., "--agency", help="The publishing department id."),
) -> None:
    """Validate every event of FILE, publish them to civic.in.AGENCY, wait for the broker's ack."""
    from civicbus.schemas import EventValidationError
    from producers.sdk import Publisher, PublishError

    ctx = bus_context()
    events = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as e:
            fail(f"{file}:{number}: not JSON: {e}", 2)
    try:
        with Publisher(ctx, agency) as publisher:
            for number, event in enumerate(events, start=1):
                try:
                    publisher.complete(event)
                except EventValidationError as e:
                    fail(f"{file}: event {number}: {e}", 2)
            ids = publisher.publish_many(events)
    except KeyError as e:
        fail(str(e), 2)
    except PublishError as e:
        fail(str(e))
    for event_id in ids:
        typer.echo(event_id)


def simulate(
    rate: float = typer.Option(20.0, help="Events per second."),
    duration: float = typer.Option(60.0, help="Seconds to run; 0 runs until stopped."),
    seed: int = typer.Option(None, help="Random seed for a reproducible run."),
) -> None:
    """Publish realistic city traffic from several departments."""
    from producers.simulator import run_simulator

    stop = stop_on_signals()
    sent = run_simulator(bus_context(), rate, duration, stop, seed)
    typer.echo(f"published {sent} events")


@reference_app.command("load")
def reference_load() -> None:
    """Validate config/master/*.csv and write it to the compacted civic.ref.* topics."""
    from civicbus.reference import MasterDataError
    from producers.reference import ReferenceLoadError, load_reference

    try:
        counts = load_reference(bus_context())
    except MasterDataError as e:
        fail(str(e), 2)
    except ReferenceLoadError as e:
        fail(str(e))
    for dataset, count in counts.items():
        typer.echo(f"{count:>6} {dataset}")


def register(app: typer.Typer) -> None:
    app.command()(publish)
    app.command()(simulate)
    app.add_typer(reference_app, name="reference")
