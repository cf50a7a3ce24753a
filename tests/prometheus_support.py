"""A real Prometheus server for tests (Debian package `prometheus`, installed by `make test`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from civicbus.broker import free_port
from civicbus.processes import stop_process
from tests.support import wait_for

REPO = Path(__file__).resolve().parent.parent
OPS = REPO / "ops"


def require_binary(name: str) -> str:
    """Path of a Prometheus tool; a clear failure (never a skip) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"`{name}` is not installed: it comes with the Debian package `prometheus`, which `make test` "
            f"installs (apt-get install prometheus). Run `make test`, or install it and run pytest again."
        )
    return path


class PrometheusServer:
    """Prometheus on a free loopback port, scraping `targets` every second, with civicbus's rules."""

    def __init__(self, tmp_path: Path, targets: list[str]):
        self.port = free_port()
        self.dir = tmp_path
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(OPS / "prometheus" / "rules" / "*.rules.yml")],
            "scrape_configs": [{"job_name": "civicbus", "static_configs": [{"targets": targets}]}],
        }
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
