"""The wheel works without the checkout: built with `python -m build`, installed into a new venv,
run from an empty folder. The new venv sees this venv's dependencies (no downloads) but not the
checkout: civicbus comes from the wheel, with its shipped schemas, sample city and ops files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from civicbus.broker import free_port
from civicbus.settings import REPO_ROOT
from tests.support import wait_for

NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".civicbus", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a new venv holding only the civicbus wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    # sdist first, then the wheel from the sdist: MANIFEST.in must carry what setup.py ships
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("civicbus-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    site_packages = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies from this venv, as a plain path (its .pth files, the editable checkout among them, stay unread)
    Path(site_packages, "test-venv-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_dir: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIVICBUS_", "PYTHON"))}
    return subprocess.run([bin_dir / "civicbus", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_carries_its_data_and_not_the_checkout(installed, tmp_path):
    where = subprocess.run([installed / "python", "-c", "import civicbus.settings as s; print(s.REPO_ROOT)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).name == "shipped" and "site-packages" in where and Path(where) != REPO_ROOT
    for shipped in ("schemas/envelope.avsc", "schemas/schemas.lock.json", "config/departments.yaml", "config/master/entities.csv",
                    "ops/prometheus/rules/civicbus.rules.yml", "ops/kafka/start.sh"):
        assert (Path(where) / shipped).is_file(), shipped


def test_checks_and_init_work_from_an_empty_folder(installed, tmp_path):
    checked = run(installed, tmp_path, "schemas", "check")
    assert checked.returncode == 0 and "schemas locked and compatible" in checked.stdout, checked.stderr
    policy = run(installed, tmp_path, "policy", "check")
    assert policy.returncode == 0 and policy.stdout.startswith("policy ok"), policy.stderr
    assert run(installed, tmp_path, "init", "mycity").returncode == 0
    (tmp_path / "mycity" / "policy.yaml").write_text("departments:\n  nobody-here: {}\n", encoding="utf-8")
    edited = run(installed, tmp_path, "--config", "mycity", "policy", "check")
    assert edited.returncode == 1 and "nobody-here" in edited.stderr and "Traceback" not in edited.stderr
    token = run(installed, tmp_path, "token", "citymgmt")
    assert token.returncode == 0 and token.stdout.startswith("cbt_")
    assert (tmp_path / ".civicbus" / "gateway-tokens.json").is_file()  # state in the working directory


def test_up_from_an_empty_folder_delivers_an_event_and_stops_on_ctrl_c(installed, tmp_path):
    ports = [str(free_port()) for _ in range(4)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIVICBUS_", "PYTHON"))}
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen([installed / "civicbus", "up", "--broker-port", ports[0], "--http-port", ports[1],
                               "--metrics-port", ports[2], "--registry-port", ports[3], "--simulate", "10"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    output = lambda: (tmp_path / "up.log").read_text(errors="replace")
    tail = None
    try:
        try:
            wait_for(lambda: "Ctrl-C stops everything" in output() or up.poll() is not None, 90, "up to print its endpoints")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; up printed:\n{output()[-3000:]}\n{logs_of(tmp_path)}") from None
        assert up.poll() is None, f"up exited with {up.returncode}:\n{output()[-3000:]}\n{logs_of(tmp_path)}"
        recorded = json.loads((tmp_path / ".civicbus" / "endpoints.json").read_text())
        assert recorded["broker"] == f"127.0.0.1:{ports[0]}" and recorded["gateway"] == f"http://127.0.0.1:{ports[1]}"
        assert "keeps everything in memory" in output()
        # `tail` finds the stack through the state folder; one line is one delivered event
        tail = subprocess.Popen([installed / "civicbus", "tail", "citymgmt"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        event = json.loads(tail.stdout.readline())
        assert event["type"] and event["id"]
    finally:
        if tail is not None:
            tail.terminate()
            tail.wait(30)
        up.send_signal(signal.SIGINT)
        returncode = up.wait(90)
    assert returncode == 0, output()[-3000:]
    assert not (tmp_path / ".civicbus" / "endpoints.json").exists()
    assert (tmp_path / ".civicbus" / "logs" / "fanout.log").stat().st_size > 0


def logs_of(folder: Path, tail_chars: int = 1500) -> str:
    """The end of each log `up` keeps in its state folder, for a failure report."""
    return "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-tail_chars:]}"
                     for log in sorted((folder / ".civicbus" / "logs").glob("*.log")))
