"""The first task failure in an Airflow console log (``airflow dags test``, which ``make run`` writes
to ``var/airflow-run.log``): the error a reader needs, shown last.

A failed task logs a record ``<timestamp> [error    ] Task failed with exception`` followed by the
Python traceback; the last exception of the traceback is the task's error (the one Airflow acted on,
e.g. ``AirflowFailException: <the bad input's message>``). Later failures are mostly consequences
of the first (a downstream task that found no upstream result), so the first is the one to read.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

FAILED = "Task failed with exception"
"""The event of the record Airflow's task runner logs when a task raises."""
MAX_ERROR_LINES = 40
"""Lines of an error kept (a data-quality error lists one line per broken rule)."""

_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
"""A log record starts with its timestamp; lines without one belong to the record above or are prints."""
_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line \d+, in (?P<function>\S+)')
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOT_THE_ERROR = ("[dqlrec]", "DagRun failed")
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
