"""(g) Start-up of the `civicbus` command: how long until a command can do its work.

Each command runs `repeats` times as a user runs it, in an empty folder with no stack running:
`--help` and `token` run to the end; `publish` and `tail` stop at their first need of the broker
(one line: no stack is running here), so their time is everything they load and check before
talking to Kafka. Figures: wall and CPU seconds (min and median), and from `python -X importtime`
the packages whose modules cost most to import (their own microseconds summed per top-level
package, so the figures do not overlap; one run, inflated by importtime itself). Aim: < 1 s.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_result

COMMANDS = {
    "--help": ["--help"],
    "token": ["token", "citymgmt"],
    "publish": ["publish", "--agency", "citymgmt", "events.jsonl"],
    "tail": ["tail", "citymgmt"],
}
EVENT = {"type": "city.case.reported", "location": {"raw_address": "东城区安定门内大街1号"},
         "data": {"category": "municipal_facilities", "subcategory": "pothole", "description": "路面坑洼"}}
TOP_IMPORTS = 8


def _timed(argv: list[str], folder: Path, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=folder, env=env, capture_output=True, timeout=60)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _heaviest_imports(args: list[str], folder: Path, env: dict[str, str]) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "civicbus.cli", *args], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=60)
    per_package: dict[str, int] = {}
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            package = name.strip().split(".")[0]
            per_package[package] = per_package.get(package, 0) + int(own)
    return dict(sorted(per_package.items(), key=lambda item: -item[1])[:TOP_IMPORTS])


def run(repeats: int = 7) -> Path:
    executable = Path(sys.executable).with_name("civicbus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICBUS_")}
    figures = {}
    with tempfile.TemporaryDirectory(prefix="civicbus-bench-") as work:
        folder = Path(work)
        (folder / "events.jsonl").write_text(json.dumps(EVENT, ensure_ascii=False) + "\n", encoding="utf-8")
        for name, args in COMMANDS.items():
            runs = [_timed([str(executable), *args], folder, env) for _ in range(repeats)]
            walls, cpus = [w for w, _ in runs], [c for _, c in runs]
            figures[name] = {
                "command": f"civicbus {' '.join(args)}",
                "wall_s_min": round(min(walls), 3), "wall_s_median": round(statistics.median(walls), 3),
                "cpu_s_min": round(min(cpus), 3), "cpu_s_median": round(statistics.median(cpus), 3),
                "under_1_s": statistics.median(walls) < 1.0,
                "heaviest_imports_us": _heaviest_imports(args, folder, env),
            }
            print(f"{name:<8} wall {figures[name]['wall_s_median']:.2f}s median ({figures[name]['wall_s_min']:.2f}s min), "
                  f"cpu {figures[name]['cpu_s_median']:.2f}s")
    return write_result("cli", {"repeats": repeats, "commands": figures})
