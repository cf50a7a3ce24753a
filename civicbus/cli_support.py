"""Small helpers shared by the CLI commands of every package."""

from __future__ import annotations

import logging
import os

from civicbus.context import BusContext
from civicbus.settings import Settings


def bus_context() -> BusContext:
    return BusContext(Settings())


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CIVICBUS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("faust", "mode", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
