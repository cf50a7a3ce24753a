"""A real Prometheus server and Alertmanager for tests (Debian packages `prometheus` and
`prometheus-alertmanager`, installed by `make test`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from civicbus.broker import free_port
from civicbus.lag.exporter import LagExporter, build_exporter
from civicbus.processes import stop_process
from tests.support import wait_for

REPO = Path(__file__).resolve().parent.parent
OPS = REPO / "ops"


def serve_lag_exporter(bus):
    """The lag exporter of `bus`, polling every 0.5 s, on a metrics port of its own: (exporter,
    port, server); stop with `server.shutdown()` and `exporter.stop()`."""
    settings = bus.settings.model_copy(update={"lag_poll_interval_s": 0.5, "lag_window": 3})
    exporter: LagExporter = build_exporter(settings, bus.bootstrap).start()
    registry = CollectorRegistry()
    registry.register(exporter)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return exporter, port, server


def require_binary(name: str) -> str:
    """Path of a Prometheus tool; a clear failure (never a skip) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"`{name}` is not installed: it comes with the Debian packages `prometheus` and `prometheus-alertmanager`, "
            f"which `make test` installs (apt-get install prometheus prometheus-alertmanager). Run `make test`, "
            f"or install them and run pytest again."
        )
    return path


class PrometheusServer:
    """Prometheus on a free loopback port, scraping `targets` every second, with civicbus's rules
    (or `rule_files`), sending its alerts to `alertmanagers` (host:port)."""

    def __init__(self, tmp_path: Path, targets: list[str], rule_files: list[str] | None = None, alertmanagers: list[str] = ()):
        self.port = free_port()
        self.dir = tmp_path
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files or [str(OPS / "prometheus" / "rules" / "*.rules.yml")],
            "scrape_configs": [{"job_name": "civicbus", "static_configs": [{"targets": targets}]}],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = tmp_path / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [require_binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(self._ready, 60, f"Prometheus to be ready (log {self.log_path})")
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process, 30)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"Prometheus exited:\n{self.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def values(self, query: str) -> list[float]:
        """The instant values of a PromQL query, one per series."""
        return [float(series["value"][1]) for series in self.api("query", query=query)["result"]]


class AlertmanagerServer:
    """Alertmanager on a free loopback port with the given config file, clustering off."""

    def __init__(self, tmp_path: Path, config_file: Path):
        self.port = free_port()
        self.dir = tmp_path
        self.config_file = config_file
        self.log_path = tmp_path / "alertmanager.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> AlertmanagerServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [require_binary("prometheus-alertmanager"), f"--config.file={self.config_file}",
                 f"--storage.path={self.dir / 'alertmanager-data'}", f"--web.listen-address={self.address}",
                 "--cluster.listen-address="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_for(self._ready, 60, f"Alertmanager to be ready (log {self.log_path})")
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process, 30)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"Alertmanager exited:\n{self.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
