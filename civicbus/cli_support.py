"""Small helpers shared by the CLI commands of every package."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from civicbus.context import BusContext


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (the terminal closed): long-running commands finish
    their work and exit 0."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` in red on stderr and exit with `code`."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def bus_context() -> BusContext:
    from civicbus.context import BusContext
    from civicbus.settings import Settings

    return BusContext(Settings())


# How long the HTTP servers (gateway, registry) keep an idle keep-alive connection: longer than
# clients keep theirs (httpx, requests: 5 s, as uvicorn's own default). At equal timeouts a client
# may reuse a connection just as the server closes it, and its request fails with a reset (the
# gateway benchmark saw 2 of 492 feed reads fail so). 75 s is nginx's keepalive_timeout.
HTTP_KEEP_ALIVE_S = 75


def serve_http(app, host: str, port: int) -> None:
    """Serve an ASGI app on uvicorn until SIGTERM or Ctrl-C, then exit 0 like every part of `up`."""
    import gc

    import uvicorn

    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that
    # was there before: make that a no-op, so a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # What start-up built (FastAPI's routes and models, the catalog, the policy) lives as long as
    # the process: out of the collector's sight, a full collection no longer scans it, and no
    # longer stalls every request for 70-140 ms (seen in the gateway benchmark's case reads).
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=HTTP_KEEP_ALIVE_S)
CONFIG_HINT = "the city config folder comes from --config or CIVICBUS_CONFIG; `civicbus init DIR` writes one"


def expected_error_message(error: BaseException) -> str | None:
    """The one line to print for an error a user can cause and fix; None for a bug (keep its traceback).

    Expected: civicbus's own UserError (no broker, port taken), a missing or unreadable file, a bad
    YAML or config value, and Kafka's errors (an unreachable or refusing cluster). The libraries
    are looked up only if loaded: if one raised, it is.
    """
    from civicbus.errors import UserError

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{error.filename}: no such file ({CONFIG_HINT})"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    expected = [ValueError]  # pydantic's ValidationError of a config file is one
    for module, name in (("yaml", "YAMLError"), ("confluent_kafka", "KafkaException")):
        if module in sys.modules:
            expected.append(getattr(sys.modules[module], name))
    if isinstance(error, tuple(expected)):
        return f"{type(error).__name__}: {' '.join(str(error).split())}"  # one line, however many the library wrote
    return None


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CIVICBUS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
