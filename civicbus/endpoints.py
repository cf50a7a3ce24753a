"""Where the running `civicbus up` listens: <state_dir>/endpoints.json.

`up` writes it once every part listens and removes it when it exits; any command run from the
same folder (or with the same CIVICBUS_STATE_DIR) takes the broker from it when
CIVICBUS_BOOTSTRAP is unset. A file left behind by a killed `up` is ignored: its pid is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "endpoints.json"


@dataclass(frozen=True)
class Endpoints:
    pid: int  # of `civicbus up`
    broker: str  # bootstrap servers
    gateway: str  # URLs
    metrics: str
    registry: str | None = None  # None: the file registry in schemas/, no HTTP API


def path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def record(state_dir: Path, endpoints: Endpoints) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = path(state_dir).with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(endpoints), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path(state_dir))


def running(state_dir: Path) -> Endpoints | None:
    """The endpoints of the stack running from `state_dir`, or None when none runs."""
    try:
        endpoints = Endpoints(**json.loads(path(state_dir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # absent, half-written or from another version
        return None
    return endpoints if _alive(endpoints.pid) else None


def remove(state_dir: Path) -> None:
    path(state_dir).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
