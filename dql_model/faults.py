"""Kill points for the fault-injection tests: the one place a test can stop the process mid-step.

Owns: the named step boundaries where ``tests/reliability`` kills a run with SIGKILL.

``point(name)`` is called at each boundary (a task's start and end, a swap's renames, a checkpoint
written). It does nothing unless the variable ``DQLREC_FAULT_AT`` named this point when the module
was imported: ``DQLREC_FAULT_AT=swap:exchanged`` kills the process at the first such point,
``swap:exchanged#2`` at the second. The production path pays one comparison of an empty string per
point: the variable is read once, and a run without it never looks at the name.

The process is killed with SIGKILL, as the kernel's OOM killer or ``kill -9`` would: no ``finally``
block, no ``atexit`` handler, no buffered write runs. Standard library only.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "DQLREC_FAULT_AT"
"""``<point>`` or ``<point>#<n>``: kill this process at the n-th (default first) time it reaches the point."""

_armed, _, _nth = os.environ.get(FAULT_ENV, "").partition("#")
_remaining = int(_nth or 1)


def point(name: str) -> None:
    """A step boundary: SIGKILL this process here when ``DQLREC_FAULT_AT`` names it (see the module)."""
    if not _armed or name != _armed:
        return
    global _remaining
    _remaining -= 1
    if _remaining == 0:
        print(f"[dqlrec] fault injection: killing pid {os.getpid()} at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
