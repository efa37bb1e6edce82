"""The run-date lock: one writer of a run date's outputs at a time, across processes and hosts.

Owns: the lock file ``<warehouse>/_locks/run_date=D.lock`` (``Layout.run_date_lock``).

Every step of the nightly run (``dql_model.pipeline.tasks``, the Spark jobs' ``main``) holds the lock of its
run date while it runs, so two runs of the same date (a scheduled run and a manual rerun, two CLI
calls) never read a partition while the other swaps it: the second waits, up to
``warehouse.lock_wait_s``, then fails with a message naming the holder (step, pid, host, start time).
Runs of different dates never wait for each other.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local disks and NFSv3+) and holds
JSON: holder token, step, pid, host, start time. It is released (deleted, if it is still ours) when
the step ends, whether it succeeds or fails. A holder that died without releasing it (SIGKILL, a
lost machine) leaves it behind; it is stale, and taken over, when its host is this host and its pid
is not alive, or when it is older than ``warehouse.lock_stale_s``. A takeover renames the stale file
to a unique name first and checks that it renamed the stale holder's file, so two waiters cannot
both take over, and logs whose lock it took.

Re-entrant: a step that runs another step in the same process (the CLI) or a child process (the
Spark job of the scoring step) passes the lock down: the child finds its token in
``DQLREC_RUN_LOCK_TOKEN`` (``child_env``) and does not take it again.

Limits: the clock of another host decides the age of its lock; a holder alive but hung for longer
than ``lock_stale_s`` loses its lock. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKEN_ENV = "DQLREC_RUN_LOCK_TOKEN"
"""Set for a child process of a lock holder: the child runs under its parent's lock."""
POLL_S = 0.5
"""How often a waiting step looks at the lock again."""
_WRITING_GRACE_S = 10.0
"""A lock file without readable content is being written; older than this, its writer died."""
_held: dict[str, list[Any]] = {}
"""Lock path -> [token, depth] of the locks this process holds."""


class RunDateLocked(RuntimeError):
    """Another run holds the run date's lock for longer than this step may wait (possibly transient)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    token: str
    step: str
    pid: int
    host: str
    started_at: str
    """ISO 8601, UTC."""

    def describe(self) -> str:
        return f"step {self.step} (pid {self.pid} on host {self.host}, since {self.started_at})"


@contextlib.contextmanager
def run_date_lock(
    lock_path: str | os.PathLike[str], *, run_date: str, step: str, wait_s: float, stale_s: float
) -> Iterator[Holder]:
    """Hold the run date's lock inside the block (see the module docstring); yields the holder."""
    path = str(lock_path)
    inherited = os.environ.get(TOKEN_ENV, "")
    if path in _held:
        _held[path][1] += 1
        try:
            yield _read(Path(path)) or _me(_held[path][0], step)
        finally:
            _held[path][1] -= 1
        return
    current = _read(Path(path))
    if inherited and current is not None and current.token == inherited:
        yield current  # the parent process holds it for us
        return
    holder = _acquire(Path(path), run_date=run_date, step=step, wait_s=wait_s, stale_s=stale_s)
    _held[path] = [holder.token, 1]
    try:
        yield holder
    finally:
        del _held[path]
        _release(Path(path), holder.token)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus the token of the lock this process holds, for a child that runs under it."""
    out = dict(env)
    if len(_held) == 1:
        out[TOKEN_ENV] = next(iter(_held.values()))[0]
    return out


def _me(token: str, step: str) -> Holder:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return Holder(token, step, os.getpid(), socket.gethostname(), started)


def _acquire(path: Path, *, run_date: str, step: str, wait_s: float, stale_s: float) -> Holder:
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me(uuid.uuid4().hex, step)
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                json.dump(me.__dict__, out)
                out.flush()
                os.fsync(out.fileno())
            return me
        holder = _read(path)
        if _take_over_if_stale(path, holder, stale_s):
            continue
        if time.monotonic() >= deadline:
            who = holder.describe() if holder else "a writer whose lock file is still being written"
            raise RunDateLocked(
                f"run date {run_date} is being written by another run: {who} holds {path}. "
                f"Step {step} waited {wait_s:.0f} s (warehouse.lock_wait_s). Let that run finish and rerun; "
                "if no such process exists, delete the lock file."
            )
        if not announced:
            log.warning("run date %s is locked by %s; %s waits up to %.0f s", run_date,
                        holder.describe() if holder else "another writer", step, wait_s)
            announced = True
        time.sleep(POLL_S)


def _take_over_if_stale(path: Path, holder: Holder | None, stale_s: float) -> bool:
    """Remove the lock at ``path`` if it is stale; True when it was (or already is) gone."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if holder is None:
        stale, why = age > _WRITING_GRACE_S, f"unreadable for {age:.0f} s"
    elif holder.host == socket.gethostname() and not _alive(holder.pid):
        stale, why = True, f"pid {holder.pid} is not running on this host"
    else:
        stale, why = age > stale_s, f"older than {stale_s:.0f} s (warehouse.lock_stale_s)"
    if not stale:
        return False
    tomb = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return True
    taken = _read(tomb)
    if holder is not None and (taken is None or taken.token != holder.token):
        # Another waiter replaced the stale lock meanwhile: give its lock back (link fails if taken).
        with contextlib.suppress(FileExistsError):
            os.link(tomb, path)
        tomb.unlink(missing_ok=True)
        return False
    tomb.unlink(missing_ok=True)
    log.warning("took over the stale lock %s of %s: %s", path, holder.describe() if holder else "a dead writer", why)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _release(path: Path, token: str) -> None:
    holder = _read(path)
    if holder is not None and holder.token == token:
        path.unlink(missing_ok=True)
    else:
        log.warning("lock %s is no longer ours at release (taken over as stale?); left as it is", path)


def hold(cfg: Any, run_date: str, step: str) -> contextlib.AbstractContextManager[Holder]:
    """The lock of ``run_date`` in ``cfg``'s warehouse, with its wait and staleness settings."""
    return run_date_lock(
        cfg.layout.run_date_lock(run_date),
        run_date=run_date,
        step=step,
        wait_s=cfg.warehouse.lock_wait_s,
        stale_s=cfg.warehouse.lock_stale_s,
    )
