"""Children that cannot outlive their parent, even when the parent gets kill -9.

`with_lifeline(argv)` wraps a command so that it runs as `python -m civicbus.lifeline PID -- argv`:
that small launcher asks Linux for PR_SET_PDEATHSIG (prctl(2)) and then execs the command,
which keeps the setting. When the parent dies, however it dies, the kernel sends the child
SIGKILL. A supervisor's own clean stop (SIGTERM, then a grace period) happens long before that:
the lifeline only matters when the supervisor can no longer stop anyone. Elsewhere than Linux the
command runs without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def with_lifeline(argv: list[str]) -> list[str]:
    """`argv`, launched so that it dies with the calling process."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-m", "civicbus.lifeline", str(os.getpid()), "--", *argv]


def _die_with(parent_pid: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody would send the signal
        os._exit(1)


def main(args: list[str]) -> None:
    parent_pid, separator, *argv = args
    if separator != "--" or not argv:
        raise SystemExit("usage: python -m civicbus.lifeline PARENT_PID -- COMMAND [ARG...]")
    _die_with(int(parent_pid))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
