"""Nothing outlives `civicbus up`: Ctrl-C under `| tee`, SIGHUP, and kill -9 of `up` itself.

Each test starts the whole embedded stack with the simulator from an empty folder, collects the
pid of every part from what `up` prints, ends `up` one way, and checks by pid that every part
is gone within the bound. The logs stay in the state folder.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from civicbus.broker import free_port
from tests.support import wait_for

PARTS = ("broker", "registry", "ingest", "cases", "fanout", "gateway", "simulator")
GRACEFUL_STOP_S = 60  # SIGTERM to every part in order, each with its grace period
DIES_WITH_UP_S = 10  # the bound after kill -9


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _survivors(pids: dict[str, int]) -> dict[str, int]:
    return {name: pid for name, pid in pids.items() if _alive(pid)}


class Up:
    """`civicbus up | tee up.log` in a process group of its own, run from an empty folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.log = folder / "up.log"
        ports = [str(free_port()) for _ in range(4)]
        command = [sys.executable, "-m", "civicbus.cli", "up", "--broker-port", ports[0], "--http-port", ports[1],
                   "--metrics-port", ports[2], "--registry-port", ports[3], "--simulate", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICBUS_")}
        self.shell = subprocess.Popen(
            ["bash", "-c", f"{shlex.join(command)} 2>&1 | tee {shlex.quote(str(self.log))} >/dev/null"],
            cwd=folder, env=env, start_new_session=True,
        )
        try:
            wait_for(lambda: "Ctrl-C stops everything" in self.output(), 90, f"`civicbus up` to start:\n{self.output()}")
            self.parts = {name: int(pid) for name, pid in re.findall(r"^(\w+) .*?\bpid (\d+)", self.output(), re.M)}
            assert set(self.parts) == set(PARTS), self.output()
            for stage in ("ingest", "fanout"):  # running, with their signal handlers in place
                wait_for(lambda: "running as" in self.part_log(stage), 60, f"{stage} to run")
            self.pid = int(subprocess.check_output(["pgrep", "-f", "-P", str(self.shell.pid), "civicbus.cli up"]).split()[0])
        except BaseException:  # a failed start must not leave the stack running after the test
            os.killpg(self.shell.pid, signal.SIGKILL)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def part_log(self, part: str) -> str:
        path = self.folder / ".civicbus" / "logs" / f"{part}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until_gone(self, timeout_s: float) -> None:
        everyone = {**self.parts, "up": self.pid}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _survivors(everyone):
            time.sleep(0.2)
        assert not _survivors(everyone), f"still running after {timeout_s}s: {_survivors(everyone)}\n{self.output()[-3000:]}"

    def kill_everything(self) -> None:
        for pid in [self.pid, *self.parts.values()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up(tmp_path):
    started = Up(tmp_path)
    yield started
    started.kill_everything()
    started.shell.wait(10)


def test_ctrl_c_under_tee_stops_every_part_in_order(up):
    os.killpg(up.shell.pid, signal.SIGINT)  # what the terminal does: tee gets it too, and dies first
    up.wait_until_gone(GRACEFUL_STOP_S)
    logs = {part: up.part_log(part) for part in PARTS}
    assert all(logs.values()), "every part's log stays in the state folder"
    for stage in ("ingest", "fanout"):  # stopped with SIGTERM by `up`, not killed with it
        assert f"stage {stage} exited cleanly" in logs[stage], logs[stage][-2000:]
    assert not (up.folder / ".civicbus" / "endpoints.json").exists()


def test_sighup_stops_every_part(up):
    os.kill(up.pid, signal.SIGHUP)
    up.wait_until_gone(GRACEFUL_STOP_S)
    assert re.search(r"^stopped +fanout$", up.output(), re.M), up.output()[-2000:]
    assert not (up.folder / ".civicbus" / "endpoints.json").exists()


def test_every_part_dies_with_up_after_kill_9(up):
    os.kill(up.pid, signal.SIGKILL)
    up.wait_until_gone(DIES_WITH_UP_S)
    assert "started by civicbus up" in up.part_log("ingest")
