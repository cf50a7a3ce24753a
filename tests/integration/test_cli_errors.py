"""Every command finds the running stack through the state folder, and says in one line (never a
traceback) what is wrong when something expected is: no broker, a missing config, an unknown
department, a bad file, a port in use. Run as the user runs them: `civicbus ...` in a process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from civicbus import endpoints
from civicbus.settings import REPO_ROOT
from tests.support import case_report


def civicbus(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIVICBUS_")}
    return subprocess.run([sys.executable, "-m", "civicbus.cli", *args], cwd=folder, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "events.jsonl").write_text(json.dumps(case_report()) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("command", [
    ["publish", "--agency", "citymgmt", "events.jsonl"],
    ["tail", "citymgmt"],
    ["lag", "--samples", "1"],
    ["topics", "apply"],
    ["reference", "load"],
    ["gateway", "--port", "0"],
    ["process", "ingest"],
    ["simulate", "--duration", "1"],
])
def test_with_nothing_running_every_command_says_so_in_one_line(folder, command):
    one_line_error(civicbus(folder, *command), "no civicbus stack is running here", "civicbus up")


def test_a_stale_endpoints_file_of_a_killed_up_is_not_a_running_stack(folder):
    dead = subprocess.Popen(["true"])
    dead.wait()
    endpoints.record(folder / ".civicbus", endpoints.Endpoints(dead.pid, "127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"))
    one_line_error(civicbus(folder, "publish", "--agency", "citymgmt", "events.jsonl"), "no civicbus stack is running here")


def test_commands_find_the_stack_in_the_state_folder_without_civicbus_bootstrap(folder, broker_bootstrap, tmp_path_factory):
    namespace = f"t{uuid.uuid4().hex[:10]}."
    state = tmp_path_factory.mktemp("state")
    # as `civicbus up` leaves it while it runs (this test process stands in for its pid)
    endpoints.record(state, endpoints.Endpoints(os.getpid(), broker_bootstrap, "http://127.0.0.1:8080", "http://127.0.0.1:9308/metrics"))
    env = {"CIVICBUS_NAMESPACE": namespace, "CIVICBUS_STATE_DIR": str(state)}
    applied = civicbus(folder, "topics", "apply", **env)
    assert applied.returncode == 0 and "created" in applied.stdout, applied.stderr
    published = civicbus(folder, "publish", "--agency", "citymgmt", "events.jsonl", **env)
    assert published.returncode == 0, published.stderr
    assert str(uuid.UUID(published.stdout.strip())) == published.stdout.strip()


def test_a_missing_or_empty_config_folder_is_named(folder):
    (folder / "emptycity").mkdir()
    for args in (["--config", "emptycity", "token", "citymgmt"], ["--config", "emptycity", "policy", "check"]):
        one_line_error(civicbus(folder, *args), "emptycity/departments.yaml: no such file", "civicbus init")
    one_line_error(civicbus(folder, "token", "citymgmt", CIVICBUS_CONFIG=str(folder / "nowhere")), "nowhere/departments.yaml")


def test_an_unknown_department_is_named(folder, broker_bootstrap):
    one_line_error(civicbus(folder, "token", "ministry"), "unknown department 'ministry'")
    env = {"CIVICBUS_BOOTSTRAP": broker_bootstrap}
    one_line_error(civicbus(folder, "publish", "--agency", "ministry", "events.jsonl", **env), "unknown department 'ministry'")
    one_line_error(civicbus(folder, "tail", "ministry", **env), "ministry")


def test_bad_files_are_named(folder):
    (folder / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    one_line_error(civicbus(folder, "publish", "--agency", "citymgmt", "bad.jsonl"), "bad.jsonl:1: not JSON")
    city = folder / "city"
    shutil.copytree(REPO_ROOT / "config", city)
    (city / "departments.yaml").write_text("departments: [ {id: citymgmt\n", encoding="utf-8")
    one_line_error(civicbus(folder, "--config", "city", "token", "citymgmt"), "ParserError", "departments.yaml")
    (city / "departments.yaml").write_text("departments: [{name: nobody}]\n", encoding="utf-8")
    one_line_error(civicbus(folder, "--config", "city", "policy", "check"), "ValidationError")


def test_a_port_in_use_is_named(folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(civicbus(folder, "broker", "--port", str(port)), f"port {port}", "already in use")
        one_line_error(civicbus(folder, "up", "--metrics-port", str(port)), f"port {port}", "--metrics-port")
