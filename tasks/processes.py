"""Child processes that die with their parent: a run killed with SIGKILL must leave no worker training on.

    subprocess.run(dying_with_this_process(cmd))         # the launcher (torchrun, deepspeed) dies with the run
    die_with_parent(expected_parent=os.getppid())       # first thing in a worker the launcher starts

Linux's PR_SET_PDEATHSIG delivers SIGKILL to a process when the thread that started it ends, and survives exec; a
launcher started from a flow's task thread waits on it in that thread, so the launcher dies exactly when the run does.
(`python -m tasks.processes --parent PID -- CMD...` sets it and execs CMD: subprocess's preexec_fn is not safe in a
process with threads.) Launchers start
their workers in sessions of their own (a process-group kill misses them), so each worker asks for the same signal
about its launcher. Elsewhere than Linux this is a no-op.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit at once if it has died already (the parent
    is no longer `expected_parent`, when given)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent died before the request took effect: nobody is waiting for this process


def dying_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd` wrapped so that the process it becomes is SIGKILLed when this process (this thread) ends."""
    return [sys.executable, "-m", "tasks.processes", "--parent", str(os.getpid()), "--", *cmd]


def _exec(argv: list[str]) -> None:
    if len(argv) < 4 or argv[0] != "--parent" or argv[2] != "--":
        raise SystemExit("usage: python -m tasks.processes --parent PID -- CMD [ARG...]")
    die_with_parent(int(argv[1]))
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    _exec(sys.argv[1:])
