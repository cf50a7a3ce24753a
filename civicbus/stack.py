"""`civicbus up`: the whole bus on one machine, each part its own supervised process.

Every long-running part (stages, gateway, simulator) runs as `civicbus <command>` in a child
process: a crash of one is contained, restarted with backoff, and both cores get used. The
children write metrics to one PROMETHEUS_MULTIPROC_DIR, which this process serves on
--metrics-port together with the lag exporter's, and summarises in the live view.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from civicbus.broker import EmbeddedBroker
from civicbus.cli_support import stop_on_signals
from civicbus.kafka import apply_topics
from civicbus.processes import stop_process
from civicbus.settings import DEFAULT_REGISTRY_PORT, Settings
from civicbus.topology import Topology

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


@dataclass
class Child:
    name: str
    argv: list[str]
    listens: str = ""
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: str = ""

    def start(self, env: dict[str, str], log_dir: str) -> None:
        self.log_path = os.path.join(log_dir, f"{self.name}.log")
        log = open(self.log_path, "ab")
        # A session of its own: Ctrl-C reaches only the supervisor, which stops children in order.
        self.process = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)


def civicbus_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "civicbus.cli", *args]


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
        stop = stop_on_signals()
        with ExitStack() as cleanup:
            work_dir = tempfile.mkdtemp(prefix="civicbus-up-")
            cleanup.callback(shutil.rmtree, work_dir, True)
            metrics_dir = os.path.join(work_dir, "metrics")
            os.makedirs(metrics_dir)
            if self.settings.bootstrap:
                bootstrap = self.settings.bootstrap
                print(f"broker     external Kafka at {bootstrap}")
            else:
                broker = cleanup.enter_context(EmbeddedBroker(port=self.broker_port, log_path=os.path.join(work_dir, "broker.log")))
                bootstrap = broker.bootstrap
                print(f"broker     embedded (Tansu, memory only) on {bootstrap}")
            from civicbus.config import load_city

            topology = Topology(tuple(load_city(self.settings.config).department_ids()), namespace=self.settings.namespace)
            report = apply_topics(bootstrap, topology.specs())
            print(f"topics     {len(report.created)} created, {len(report.unchanged)} already there")
            env = {**os.environ, "CIVICBUS_BOOTSTRAP": bootstrap, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
            if self.settings.schema_registry_url:
                print(f"registry   external Schema Registry at {self.settings.schema_registry_url}")
            else:  # records name their schema where it is served (ce_dataschema)
                env["CIVICBUS_REGISTRY_URL"] = self.registry_url
            self._load_reference(env)
            self.children = self._children()
            for child in self.children:
                child.start(env, work_dir)
                print(f"{child.name:<10} pid {child.process.pid}{'  ' + child.listens if child.listens else ''}  log {child.log_path}")
            from civicbus.lag.exporter import build_exporter
            from civicbus.live import LiveView, serve_metrics

            exporter = build_exporter(self.settings, bootstrap).start()
            cleanup.callback(exporter.stop)
            serve_metrics(self.metrics_port, metrics_dir, exporter, host=self.settings.metrics_host)
            print(f"metrics    http://{self.settings.metrics_host}:{self.metrics_port}/metrics  (civicbus_* and consumer lag)")
            print("Ctrl-C stops everything.\n")
            view = LiveView(metrics_dir, exporter)
            cleanup.callback(self._stop_children)
            while not stop.wait(1.0):
                self._supervise(env, work_dir)
                view.render()

    @staticmethod
    def _load_reference(env: dict[str, str]) -> None:
        """Master data onto civic.ref.* before the stages start, so ingest enriches from the first event."""
        loaded = subprocess.run(civicbus_command("reference", "load"), env=env, capture_output=True, text=True, timeout=120)
        if loaded.returncode != 0:
            raise RuntimeError(f"`civicbus reference load` failed: {loaded.stderr.strip()}")
        print("reference  " + ", ".join(line.strip() for line in loaded.stdout.splitlines()))

    def _children(self) -> list[Child]:
        children = []
        if not self.settings.schema_registry_url:
            children.append(Child("registry", civicbus_command("registry", "--port", str(self.registry_port)), listens=f"{self.registry_url} (Schema Registry API, the lock's ids)"))
        children += [Child(stage, civicbus_command("process", stage)) for stage in ("ingest", "cases", "fanout")]
        children.append(Child("gateway", civicbus_command("gateway", "--port", str(self.http_port)), listens=f"http://127.0.0.1:{self.http_port}"))
        if self.simulate_rate > 0:
            children.append(Child("simulator", civicbus_command("simulate", "--rate", str(self.simulate_rate), "--duration", "0")))
        return children

    def _supervise(self, env: dict[str, str], work_dir: str) -> None:
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
                child.start(env, work_dir)

    def _stop_children(self) -> None:
        print("\nstopping: simulator and gateway first (they publish), then the stages in pipeline order, the registry last")
        for child in sorted(self.children, key=lambda c: (c.name not in ("simulator", "gateway"), c.name == "registry")):
            child.stop()
            print(f"stopped    {child.name}")
