"""Profile running stage processes with py-spy and say what dominates (self and inclusive time)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return found


def start(pid: int, duration_s: int, output: Path) -> subprocess.Popen:
    """Sample `pid` without pausing it, collapsed stacks to `output` (removed first: a sampler that
    fails must not leave an earlier run's stacks to be read as this one's)."""
    output.unlink(missing_ok=True)
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "100", "--nonblocking",
         "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def finish(sampler: subprocess.Popen, timeout_s: float = 60) -> None:
    """Wait for a sampler; raise with what py-spy said if it failed."""
    if sampler.wait(timeout_s) != 0:
        raise RuntimeError(f"py-spy failed: {sampler.stderr.read().decode(errors='replace').strip()[-500:]}")


def summarise(collapsed: Path, top: int = 12) -> dict:
    """Share of samples per function (file and line dropped): where time is spent itself, and
    which functions the time is spent under."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    share = lambda counts: [{"function": f, "share": round(n / total, 3)} for f, n in counts.most_common(top)]
    # Frames under which nearly every sample sits (main, the event loop, the CLI) say nothing.
    telling = Counter({f: n for f, n in under.items() if n / total < 0.9})
    return {"samples": total, "self": share(own), "inclusive": share(telling)}
