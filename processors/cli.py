"""`civicbus process STAGE`: run one pipeline stage until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

import typer

from civicbus.cli_support import bus_context, configure_logging, stop_on_signals
from processors import StageName, stage_class


def process(
    stage: StageName = typer.Argument(..., help="Which stage to run."),
    instance: str = typer.Option("0", help="Worker instance id; a restart with the same id fences the old one."),
) -> None:
    """Run one pipeline stage in the foreground until SIGTERM or Ctrl-C."""
    configure_logging()
    ctx = bus_context()
    from processors.runner import StageRunner

    StageRunner(stage_class(stage.value)(ctx), ctx, instance=instance).run(stop_on_signals())
    logging.getLogger(__name__).info("stage %s exited cleanly", stage.value)


def register(app: typer.Typer) -> None:
    app.command("process")(process)
