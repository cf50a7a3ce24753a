"""`civicbus up`: the whole bus on one machine, each part its own supervised process.

Every long-running part (stages, gateway, simulator) runs as `civicbus <command>` in a child
process: a crash of one is contained, restarted with backoff, and both cores get used. The
children write metrics to one PROMETHEUS_MULTIPROC_DIR, which this process serves on
--metrics-port together with the lag exporter's, and summarises in the live view.

Nothing outlives `up`. SIGINT, SIGTERM and SIGHUP stop the parts in order (publishers first,
then the stages in pipeline order, then the broker), also when stdout is a pipe whose reader died
with the same Ctrl-C (`up | tee`). If `up` itself is killed, every child dies with it
(civicbus/lifeline.py). The state folder keeps the parts' logs (logs/) and, while `up` runs,
where it listens (endpoints.json), so other commands run from the same folder find it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from civicbus import endpoints
from civicbus.broker import EmbeddedBroker, port_is_free
from civicbus.cli_support import stop_on_signals
from civicbus.errors import UserError
from civicbus.kafka import apply_topics
from civicbus.lifeline import with_lifeline
from civicbus.processes import stop_process
from civicbus.roles import role
from civicbus.settings import DEFAULT_REGISTRY_PORT, Settings
from civicbus.topology import Topology
from processors import STAGES

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
MEMORY_ONLY_NOTICE = (
    "           it keeps everything in memory: stopping `up` loses every event. For real data run\n"
    "           `docker compose up` (Apache Kafka), or set CIVICBUS_BOOTSTRAP to a Kafka cluster."
)


@dataclass
class Child:
    name: str
    argv: list[str]
    listens: str = ""
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path | None = None
    credentials: dict[str, str] = field(default_factory=dict)  # its own principal on a secured cluster

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        env = {**env, **self.credentials}
        self.log_path = log_dir / f"{self.name}.log"
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} started by civicbus up (pid {os.getpid()})\n".encode())
            log.flush()
            # A session of its own: Ctrl-C reaches only the supervisor, which stops children in order.
            self.process = subprocess.Popen(
                with_lifeline(self.argv), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)


def civicbus_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "civicbus.cli", *args]


class ReaderGone:
    """stdout or stderr that outlives its reader. Under `up | tee`, Ctrl-C ends tee too: the next
    line would raise BrokenPipeError in the middle of stopping the children. From then on output
    goes nowhere; the logs in the state folder still have everything."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (BrokenPipeError, ValueError):  # ValueError: already closed
            self._stream = open(os.devnull, "w")
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            self._stream = open(os.devnull, "w")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@dataclass
class Stack:
    settings: Settings
    broker_port: int
    http_port: int
    metrics_port: int
    simulate_rate: float
    registry_port: int = DEFAULT_REGISTRY_PORT
    children: list[Child] = field(default_factory=list)

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    def run(self) -> None:
        for stream in (sys.stdout, sys.stderr):  # `up > up.log` shows each step as it happens
            stream.reconfigure(line_buffering=True)
        sys.stdout, sys.stderr = ReaderGone(sys.stdout), ReaderGone(sys.stderr)
        stop = stop_on_signals()
        state_dir = self.settings.state_dir
        already = endpoints.running(state_dir)
        if already is not None:
            raise UserError(f"a civicbus stack already runs from {state_dir} (pid {already.pid}, broker {already.broker}); "
                            "stop it first, or give this one its own CIVICBUS_STATE_DIR")
        for option, port in (("--http-port", self.http_port), ("--metrics-port", self.metrics_port)):
            if not port_is_free("127.0.0.1", port):
                raise UserError(f"port {port} is already in use: stop what listens there or choose another with {option}")
        log_dir, metrics_dir = state_dir / "logs", state_dir / "metrics"
        log_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)  # the previous run's figures are not this one's
        metrics_dir.mkdir()
        with ExitStack() as cleanup:
            if self.settings.bootstrap:
                bootstrap = self.settings.bootstrap
                print(f"broker     external Kafka at {bootstrap}")
            else:
                broker = cleanup.enter_context(EmbeddedBroker(port=self.broker_port, log_path=log_dir / "broker.log"))
                bootstrap = broker.bootstrap
                print(f"broker     embedded (Tansu) on {bootstrap}  pid {broker.pid}  log {log_dir / 'broker.log'}")
                print(MEMORY_ONLY_NOTICE)
            from civicbus.config import load_city

            topology = load_city(self.settings.config).topology(self.settings.namespace)
            report = apply_topics(bootstrap, topology.specs())
            print(f"topics     {len(report.created)} created, {len(report.unchanged)} already there")
            env = {**os.environ, "CIVICBUS_BOOTSTRAP": bootstrap, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                   "CIVICBUS_STATE_DIR": str(state_dir.resolve())}
            if self.settings.schema_registry_url:
                print(f"registry   external Schema Registry at {self.settings.schema_registry_url}")
            else:  # records name their schema where it is served (ce_dataschema)
                env["CIVICBUS_REGISTRY_URL"] = self.registry_url
            self._load_reference(env)
            self.children = self._children(topology)
            cleanup.callback(self._stop_children)
            for child in self.children:
                child.start(env, log_dir)
                print(f"{child.name:<10} pid {child.process.pid}{'  ' + child.listens if child.listens else ''}  log {child.log_path}")
            from civicbus.lag.exporter import build_exporter
            from civicbus.live import LiveView, serve_metrics

            exporter = build_exporter(self.settings, bootstrap).start()
            cleanup.callback(exporter.stop)
            serve_metrics(self.metrics_port, str(metrics_dir), exporter, host=self.settings.metrics_host)
            metrics_url = f"http://{self.settings.metrics_host}:{self.metrics_port}/metrics"
            print(f"metrics    {metrics_url}  (civicbus_* and consumer lag)")
            endpoints.record(state_dir, endpoints.Endpoints(
                pid=os.getpid(), broker=bootstrap, gateway=f"http://127.0.0.1:{self.http_port}", metrics=metrics_url,
                registry=self.settings.schema_registry_url or self.registry_url))
            cleanup.callback(endpoints.remove, state_dir)
            print(f"endpoints  {endpoints.path(state_dir)} (commands run from this folder find the stack there)")
            print("Ctrl-C stops everything.\n")
            view = LiveView(str(metrics_dir), exporter)
            while not stop.wait(1.0):
                self._supervise(env, log_dir)
                view.render()

    @staticmethod
    def _load_reference(env: dict[str, str]) -> None:
        """Master data onto civic.ref.* before the stages start, so ingest enriches from the first event."""
        loaded = subprocess.run(civicbus_command("reference", "load"), env=env, capture_output=True, text=True, timeout=120)
        if loaded.returncode != 0:
            raise UserError(f"`civicbus reference load` failed: {loaded.stderr.strip()}")
        print("reference  " + ", ".join(line.strip() for line in loaded.stdout.splitlines()))

    def _children(self, topology: Topology) -> list[Child]:
        children = []
        if not self.settings.schema_registry_url:
            children.append(Child("registry", civicbus_command("registry", "--port", str(self.registry_port)), listens=f"{self.registry_url} (Schema Registry API, the lock's ids)"))
        children += [Child(stage, civicbus_command("process", stage)) for stage in STAGES]
        children.append(Child("gateway", civicbus_command("gateway", "--port", str(self.http_port)), listens=f"http://127.0.0.1:{self.http_port}"))
        if self.simulate_rate > 0:
            children.append(Child("simulator", civicbus_command("simulate", "--rate", str(self.simulate_rate), "--duration", "0")))
        for child in children:
            if child.name != "registry":  # serves the lock over HTTP; it never talks to Kafka
                child.credentials = self._credentials(topology, child.name)
        return children

    def _credentials(self, topology: Topology, role_name: str) -> dict[str, str]:
        """On a SASL cluster each part logs in as its role's principal (`civicbus acl plan`), not as `up`'s."""
        if not (self.settings.kafka_security_protocol or "").startswith("SASL"):
            return {}
        username = role(topology, role_name).username
        if username not in self.settings.kafka_role_passwords:
            raise UserError(f"no password for {username} in CIVICBUS_KAFKA_ROLE_PASSWORDS: every part of `civicbus up` "
                            "logs in as its own principal on a secured cluster")
        return {"CIVICBUS_KAFKA_SASL_USERNAME": username,
                "CIVICBUS_KAFKA_SASL_PASSWORD": self.settings.kafka_role_passwords[username]}

    def _supervise(self, env: dict[str, str], log_dir: Path) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            if child.next_start == 0.0:
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                child.next_start = now + delay
                print(f"!! {child.name} exited with {child.process.returncode}; restarting in {delay}s (log {child.log_path})")
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start(env, log_dir)

    def _stop_children(self) -> None:
        print("\nstopping: simulator and gateway first (they publish), then the stages in pipeline order, the registry last")
        for child in sorted(self.children, key=lambda c: (c.name not in ("simulator", "gateway"), c.name == "registry")):
            child.stop()
            print(f"stopped    {child.name}")
