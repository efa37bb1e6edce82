"""The live view of `airflow dags test` that `make run` prints: task starts and ends and the tasks' own
`[dqlrec]` lines as they come, the whole output in the log, the command's exit status kept."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from dql_model.ops import airflow_log

# Lines of `airflow dags test` at INFO (Airflow 3.3), shortened; b fails once and is retried.
INFO_LOG = """\
2026-12-06T10:35:58.917775Z [warning  ] Could not import graphviz. [py.warnings] category=UserWarning
You might need to install the graphviz package and necessary system packages.
2026-12-06T10:35:59.419139Z [info     ] [DAG TEST] starting task_id=a map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-06T10:35:59.419669Z [info     ] [DAG TEST] running task <TaskInstance: tiny.a manual__2026 [TaskInstanceState.SCHEDULED]>
2026-12-06T10:36:04.349390Z [info     ] Task started                   [airflow.api_fastapi.execution_api.routes.task_instances] previous_state=queued
[dqlrec] hello from a
2026-12-06T10:36:04.427565Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] loc=task_instances.py:485 new_state=success rows_affected=1
2026-12-06T10:36:04.444983Z [info     ] [DAG TEST] end task task_id=a map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
\x1b[2m2026-12-06T10:36:04.455396Z\x1b[0m [info     ] [DAG TEST] starting task_id=b map_index=2 [airflow.sdk.definitions.dag]
[dqlrec] b got 1
2026-12-06T10:36:04.519896Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676
Traceback (most recent call last):
  File "/repo/dags/tiny.py", line 13, in b
    raise ValueError("[DAG TEST] end task task_id=b map_index=2, in an error message")
ValueError: [DAG TEST] end task task_id=b map_index=2, in an error message
2026-12-06T10:36:04.544323Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] new_state=up_for_retry rows_affected=1
2026-12-06T10:36:04.555718Z [info     ] [DAG TEST] end task task_id=b map_index=2 [airflow.sdk.definitions.dag] loc=dag.py:1563
DagRun failed
"""


def test_progress_is_the_tasks_lines_and_each_tasks_start_and_end_with_its_state():
    assert list(airflow_log.progress_lines(INFO_LOG.splitlines(keepends=True))) == [
        "[dqlrec] task a started",
        "[dqlrec] hello from a",
        "[dqlrec] task a: success after 5.0 s",
        "[dqlrec] task b[2] started",
        "[dqlrec] b got 1",
        "[dqlrec] task b[2]: up_for_retry after 0.1 s (Airflow runs it again after its retry delay)",
    ]


def test_the_log_keeps_everything_and_the_exit_status_is_the_commands(tmp_path):
    child = [sys.executable, "-c", f"import sys; sys.stdout.write({INFO_LOG!r}); sys.exit(3)"]
    out, log = io.StringIO(), io.StringIO()
    assert airflow_log.follow(child, log, out) == 3
    assert log.getvalue() == INFO_LOG
    assert out.getvalue().splitlines()[0] == "[dqlrec] task a started"
    assert len(out.getvalue().splitlines()) == 6


class _Answering(io.StringIO):
    """An output that answers the child (by creating a file) once a given line was shown."""

    def __init__(self, line: str, answer) -> None:
        super().__init__()
        self.line, self.answer = line, answer

    def write(self, text: str) -> int:
        if text.strip() == self.line:
            self.answer.touch()
        return super().write(text)


def test_a_line_is_shown_while_the_command_still_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    # The child prints (without flushing, as a task's print does), then waits for proof that the line was
    # shown: a follower that showed lines only at the end, or a child whose pipe held them, makes it give up.
    answer = tmp_path / "seen"
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        print("[dqlrec] first")
        for _ in range(600):
            if pathlib.Path({str(answer)!r}).exists():
                print("[dqlrec] second")
                sys.exit(0)
            time.sleep(0.05)
        sys.exit(9)
    """)
    out = _Answering("[dqlrec] first", answer)
    assert airflow_log.follow([sys.executable, "-c", script], io.StringIO(), out) == 0
    assert out.getvalue() == "[dqlrec] first\n[dqlrec] second\n"


def test_the_module_runs_a_command_writes_the_log_and_exits_with_its_status(tmp_path):
    log = tmp_path / "run.log"
    child = "print('2026-12-06T10:00:00Z [info ] noise'); print('[dqlrec] done'); raise SystemExit(4)"
    done = subprocess.run(
        [sys.executable, "-m", "dql_model.ops.airflow_log", "--log", str(log), "--", sys.executable, "-c", child],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (4, "[dqlrec] done\n")
    assert log.read_text() == "2026-12-06T10:00:00Z [info ] noise\n[dqlrec] done\n"
    missing = subprocess.run(
        [sys.executable, "-m", "dql_model.ops.airflow_log", "--log", str(tmp_path / "no" / "run.log"), "--", "true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "run.log" in missing.stderr
