"""The first task failure in an Airflow console log (``airflow dags test``, which ``make run`` writes
to ``var/airflow-run.log``): the error a reader needs, shown last.

A failed task logs a record ``<timestamp> [error    ] Task failed with exception`` followed by the
Python traceback; the last exception of the traceback is the task's error (the one Airflow acted on,
e.g. ``AirflowFailException: <the bad input's message>``). Later failures are mostly consequences
of the first (a downstream task that found no upstream result), so the first is the one to read.

Also the live view of that log: ``python -m dql_model.ops.airflow_log --log FILE -- COMMAND...`` runs
the command, writes its whole output to FILE and prints, as they come, the tasks' own ``[dqlrec]``
lines and one line per task start and end (Airflow logs those at INFO as ``[DAG TEST] starting
task_id=...`` / ``[DAG TEST] end task task_id=...``, with the state in between as
``Task instance state updated ... new_state=...``). It exits with the command's status.

Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

FAILED = "Task failed with exception"
"""The event of the record Airflow's task runner logs when a task raises."""
MAX_ERROR_LINES = 40
"""Lines of an error kept (a data-quality error lists one line per broken rule)."""

_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
"""A log record starts with its timestamp; lines without one belong to the record above or are prints."""
_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line \d+, in (?P<function>\S+)')
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = "[dqlrec]"
"""The start of the tasks' own progress lines (printed, not logged)."""
_NOT_THE_ERROR = (PROGRESS, "DagRun failed")
"""Starts of lines that follow a traceback without a timestamp: task progress prints, the CLI's last word."""


@dataclass(frozen=True)
class TaskFailure:
    """The first failure in a log."""

    error: str
    """The last exception of the traceback: ``module.Type: message`` and the message's further lines."""
    task: str | None = None
    """The task's function (its task id) when the traceback shows it (Python tasks); None otherwise."""

    def render(self) -> str:
        head = f"The first task that failed, {self.task}:" if self.task else "The first task failure:"
        return f"{head}\n{self.error}"


def first_task_failure(lines: Iterable[str]) -> TaskFailure | None:
    """The first task failure logged in ``lines`` (an Airflow console log); None when no task failed."""
    block: list[str] | None = None
    for raw in lines:
        line = _ANSI.sub("", raw).rstrip("\n").rstrip()
        if block is None:
            if _RECORD.match(line) and FAILED in line:
                block = []
            continue
        if _RECORD.match(line) or line.startswith(_NOT_THE_ERROR):
            break
        block.append(line)
    if block is None:
        return None
    return _failure(block)


def _failure(block: list[str]) -> TaskFailure:
    frames = [(i, _FRAME.match(line)) for i, line in enumerate(block)]
    frames = [(i, match) for i, match in frames if match]
    # A @task's function (its task id here) is the frame Airflow's callback runner calls.
    task = next(
        (
            after["function"]
            for (_, frame), (_, after) in zip(frames, frames[1:], strict=False)
            if frame["file"].endswith("callback_runner.py") and frame["function"] == "run"
        ),
        None,
    )
    rest = block[frames[-1][0] + 1 :] if frames else block
    # After the last frame come its source lines (indented), then the exception at column 0.
    start = next((i for i, line in enumerate(rest) if line and not line[0].isspace()), len(rest))
    error = rest[start:] or [line.strip() for line in rest if line.strip()]
    while error and not error[-1].strip():
        error.pop()
    if len(error) > MAX_ERROR_LINES:
        error = [*error[:MAX_ERROR_LINES], f"... ({len(error) - MAX_ERROR_LINES} more lines in the log)"]
    return TaskFailure(error="\n".join(error) or "(no exception text in the log)", task=task)


_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_NEW_STATE = re.compile(r"Task instance state updated .* new_state=(?P<state>\w+)")
_WHAT_THE_STATE_MEANS = {"up_for_retry": " (Airflow runs it again after its retry delay)"}


def progress_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines of an Airflow console log a person watching the run wants, as they come: the tasks'
    ``[dqlrec]`` lines unchanged, and ``[dqlrec] task X started`` / ``[dqlrec] task X: STATE after N s``
    for every task Airflow starts and ends (the time from the records' own timestamps)."""
    started: dict[str, datetime | None] = {}
    state = "unknown state"
    for raw in lines:
        line = _ANSI.sub("", raw).rstrip("\n").rstrip()
        if line.startswith(PROGRESS):
            yield line
            continue
        if not _RECORD.match(line):
            continue
        if match := _TASK_START.search(line):
            task = _task_name(match)
            started[task], state = _timestamp(line), "unknown state"
            yield f"{PROGRESS} task {task} started"
        elif match := _NEW_STATE.search(line):
            state = match["state"]
        elif match := _TASK_END.search(line):
            task = _task_name(match)
            begun, ended = started.pop(task, None), _timestamp(line)
            took = f" after {(ended - begun).total_seconds():.1f} s" if begun and ended else ""
            yield f"{PROGRESS} task {task}: {state}{took}{_WHAT_THE_STATE_MEANS.get(state, '')}"


def _task_name(match: re.Match) -> str:
    return match["task"] if match["index"] == "-1" else f"{match['task']}[{match['index']}]"


def _timestamp(line: str) -> datetime | None:
    try:
        return datetime.fromisoformat(line.split(" ", 1)[0])
    except ValueError:
        return None


def follow(command: list[str], log: TextIO, out: TextIO) -> int:
    """Run ``command``, writing its output (stdout and stderr) to ``log`` and its progress lines to ``out``
    as they come; the command's exit status."""
    # Unbuffered: a Python child writing to a pipe would otherwise hold its prints back for minutes.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    ) as child:
        assert child.stdout is not None

        def logged() -> Iterator[str]:
            for line in child.stdout:
                log.write(line)
                log.flush()
                yield line

        for shown in progress_lines(logged()):
            print(shown, file=out, flush=True)
    return child.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dql_model.ops.airflow_log",
        description="Run COMMAND (e.g. `airflow dags test ...`), write its whole output to LOG and print its "
        "progress lines as they come; exits with COMMAND's status.",
    )
    parser.add_argument("--log", required=True, help="file that receives the whole output (replaced)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run: give it after --")
    try:
        with open(args.log, "w") as log:
            return follow(command, log, sys.stdout)
    except OSError as error:  # the log's folder or the command does not exist
        print(f"airflow_log: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
