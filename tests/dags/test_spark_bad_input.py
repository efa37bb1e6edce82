"""A Spark job that refuses its input fails its DAG task at once; any other failed spark-submit is retried.

The chain: jobs.common.exit_status turns an InputError into exit status errors.EXIT_BAD_INPUT,
spark-submit exits with its application's status, the provider's hook raises an AirflowException
naming it, and the DAG's operator turns that one code into AirflowFailException (no retries).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.airflow

JOB_ERROR = "raw events partition var/warehouse/raw/events/event_date=2026-11-27 is missing"


def _dag_module():
    sys.path.insert(0, str(PROJECT_ROOT / "dags"))
    try:
        import dql_recommendations
    finally:
        sys.path.remove(str(PROJECT_ROOT / "dags"))
    return dql_recommendations


def _fake_spark_submit(folder: Path, exit_code: int) -> None:
    """A `spark-submit` that prints what a failed job prints last, then exits with ``exit_code``."""
    script = folder / "spark-submit"
    script.write_text(f"#!/bin/sh\necho 'Traceback (most recent call last):'\necho 'bad input: {JOB_ERROR}'\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def _operator(application: str = "jobs/build_training_data.py"):
    return _dag_module().BadInputFailsSparkSubmitOperator(
        task_id="build_training_data", application=application, conn_id="spark_default", retries=2
    )


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_the_bad_input_exit_code_fails_the_task_without_retries(fake_bin):
    from airflow.sdk.exceptions import AirflowFailException

    from dql_model.errors import EXIT_BAD_INPUT

    _fake_spark_submit(fake_bin, EXIT_BAD_INPUT)
    with pytest.raises(AirflowFailException) as caught:
        _operator().execute(context={})
    message = str(caught.value)
    assert message.startswith("build_training_data: build_training_data.py refused its input (exit code 2")
    assert message.endswith(f"bad input: {JOB_ERROR}")  # the job's own words, last in the task's error
    assert f"Error code is: {EXIT_BAD_INPUT}" in str(caught.value.__cause__)


@pytest.mark.parametrize("exit_code", [1, 137])
def test_any_other_exit_code_keeps_its_retries(fake_bin, exit_code):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    _fake_spark_submit(fake_bin, exit_code)
    with pytest.raises(AirflowException) as caught:
        _operator().execute(context={})
    assert not isinstance(caught.value, AirflowFailException)
    assert f"Error code is: {exit_code}." in str(caught.value)


def test_every_spark_task_of_the_dag_fails_fast_on_bad_input():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "dql_recommendations.py")).dags["dql_recommendations"]
    spark_tasks = {t.task_id: type(t).__name__ for t in dag.tasks if hasattr(t, "application")}
    assert spark_tasks == dict.fromkeys(["build_training_data", "score_users_spark"], "BadInputFailsSparkSubmitOperator")


@pytest.mark.spark
@pytest.mark.slow
def test_a_real_spark_submit_passes_the_jobs_bad_input_status_through(tmp_path, monkeypatch):
    """The real spark-submit (one JVM start): a job raising MissingInput ends the task without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    app = tmp_path / "refuses_input.py"
    app.write_text(
        "import sys\n"
        "from jobs.common import exit_status\n"
        "from dql_model.errors import MissingInput\n"
        f"def main():\n    raise MissingInput({JOB_ERROR!r})\n"
        "sys.exit(exit_status(main))\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(AirflowFailException, match=f"refused its input .*: bad input: {JOB_ERROR}$"):
        _operator(str(app)).execute(context={})


def test_a_jobs_exit_status_is_bad_input_only_for_an_input_error(capsys):
    from dql_model.config import ConfigError
    from dql_model.errors import EXIT_BAD_INPUT
    from jobs.common import exit_status

    def refuses():
        raise ConfigError("etl.max_len=0 must be at least 1")

    assert exit_status(refuses) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == "bad input: etl.max_len=0 must be at least 1"
    assert exit_status(lambda: 0) == 0

    def unreachable():
        raise ConnectionError("S3 endpoint unreachable")

    with pytest.raises(ConnectionError):  # anything else is not bad input: spark-submit exits 1, retried
        exit_status(unreachable)
