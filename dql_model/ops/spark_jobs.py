"""Launching a pipeline step's Spark job (``jobs/<job>.py``) as a child process of this interpreter.

Owns: the job's command line, the config handed to it, and the error a failed job raises. The step
names and which step runs which job are ``dql_model.contract.steps``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from dql_model.contract.steps import CONFIG_ENV_PREFIX
from dql_model.warehouse import locks


class JobFailed(RuntimeError):
    """A Spark job run as a child process exited non-zero; the message ends with its last lines."""


FAILED_JOB_LINES = 20
"""Lines of a failed job's output quoted in its error."""


def job_command(job: str, run_date: str, args: Sequence[str], *, config_file: str) -> list[str]:
    """The command that runs ``jobs/<job>.py`` in this interpreter (spark-submit is the DAG's way)."""
    return [sys.executable, "-m", f"jobs.{job}", "--config", config_file, "--run-date", run_date, *args]


def run_job(job: str, run_date: str, args: Sequence[str] = (), *, config: Mapping[str, Any], scratch: str) -> None:
    """Run a Spark job for a run date as a child process, its output passed through to ours.

    The child gets exactly ``config`` (the resolved config as a dict, written to a temporary JSON
    file under ``scratch``, which YAML reads), and no DQLREC_* variables: read again by the child,
    they would override options applied in this process (a trigger's top_k, say). The one exception
    is the run-date lock's token (dql_model.warehouse.locks), when this process holds the lock: the job then
    runs under it instead of waiting for it. A failure raises
    JobFailed naming the job, the run date and the exit code, with the job's last lines.
    """
    os.makedirs(scratch, exist_ok=True)
    handle, config_file = tempfile.mkstemp(prefix=f".{job}-config-", suffix=".json", dir=scratch)
    env = {name: value for name, value in os.environ.items() if not name.startswith(CONFIG_ENV_PREFIX)}

    env = locks.child_env(env)  # a step holding the run date's lock runs its job under it
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(config, out)
        command = job_command(job, run_date, args, config_file=config_file)
        returncode, tail = _stream(command, env)
    finally:
        os.unlink(config_file)
    if returncode:
        raise JobFailed(
            f"Spark job {job} failed for run date {run_date} (exit code {returncode}); "
            f"its last {len(tail)} lines:\n" + "\n".join(tail)
        )


def _stream(command: list[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run ``command``, echoing its output line by line; (exit code, its last FAILED_JOB_LINES lines)."""
    tail: deque[str] = deque(maxlen=FAILED_JOB_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=dict(env)
    ) as child:
        for line in child.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    return child.returncode, list(tail)
