"""The nightly pipeline's steps in order, and how its Spark jobs are launched: the one source for
the DAG, the CLI and the tests.

The DAG file imports this module at parse time, so it imports the standard library only (a test
checks it): the DAG processor parses DAG files often and must not load torch, Spark or pandas.

    validate_raw_events -> build_training_data (Spark) -> validate_training_data -> train_model
    -> evaluate_and_gate -> score_users (torch, or the Spark job) -> validate_recommendations
    -> publish_recommendations -> write_report

Each Python step is the function of the same name in ``dql_model.tasks``; a Spark step is the
module ``jobs.<job>``. A step's ``needs`` is the earlier step whose result it takes (the XCom the
DAG passes, the value the CLI chains).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """One step of the nightly run."""

    name: str
    """Task id in the DAG and name in ``dqlrec task NAME``."""
    job: str = ""
    """Module under ``jobs/`` when the step is a Spark job, else empty (a function in dql_model.tasks)."""
    needs: str = ""
    """The step whose result this one takes as its second argument; empty: only the run date."""


STEPS = (
    Step("validate_raw_events"),
    Step("build_training_data", job="build_training_data"),
    Step("validate_training_data"),
    Step("train_model"),
    Step("evaluate_and_gate", needs="train_model"),
    Step("score_users", needs="evaluate_and_gate"),
    Step("validate_recommendations", needs="score_users"),
    Step("publish_recommendations", needs="validate_recommendations"),
    Step("write_report", needs="publish_recommendations"),
)
STEP_NAMES = tuple(step.name for step in STEPS)
SCORING_JOB = "score_recommendations"
"""The Spark job of the scoring step when ``score.engine`` is spark (``jobs/score_recommendations.py``)."""

RECOMMENDATIONS_ASSET_NAME = "dqlrec_recommendations"
RECOMMENDATIONS_ASSET_URI = "dqlrec://warehouse/output/recommendations"
"""The Airflow asset publishing emits (extra: run_date, rows, users, export_uri, model_version);
downstream DAGs such as dags/marketing_audiences.py are scheduled on it."""

FAST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""Driver JVM flags for short batch jobs: C1 only and the serial GC halve the JVM start-up."""


def step(name: str) -> Step:
    """The step called ``name``; a clear error naming the steps otherwise."""
    for candidate in STEPS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no pipeline step {name!r}; the steps are {list(STEP_NAMES)}")


def chain_to(name: str) -> list[Step]:
    """The steps to run, in order, to get ``name``'s result: it and the steps it needs, transitively."""
    todo = [step(name)]
    while todo[0].needs:
        todo.insert(0, step(todo[0].needs))
    return todo


class JobFailed(RuntimeError):
    """A Spark job run as a child process exited non-zero; the message ends with its last lines."""


CONFIG_ENV_PREFIX = "DQLREC_"
"""Prefix of the config's environment variables (dql_model.config reads them); not passed to a job's child."""
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
    is the run-date lock's token (dql_model.locks), when this process holds the lock: the job then
    runs under it instead of waiting for it. A failure raises
    JobFailed naming the job, the run date and the exit code, with the job's last lines.
    """
    os.makedirs(scratch, exist_ok=True)
    handle, config_file = tempfile.mkstemp(prefix=f".{job}-config-", suffix=".json", dir=scratch)
    env = {name: value for name, value in os.environ.items() if not name.startswith(CONFIG_ENV_PREFIX)}
    from dql_model import locks  # not at module level: the DAG file imports this module alone

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
