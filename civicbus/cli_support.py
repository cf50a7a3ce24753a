"""Small helpers shared by the CLI commands of every package."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import NoReturn

import typer

from civicbus.context import BusContext
from civicbus.settings import Settings


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: long-running commands finish their work and exit 0."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` in red on stderr and exit with `code`."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def bus_context() -> BusContext:
    return BusContext(Settings())


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CIVICBUS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
