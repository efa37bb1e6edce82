"""The DAG file imports cleanly, stays light, and has the shape the design asks for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.airflow

DAG_ID = "dql_recommendations"
EXPECTED_EDGES = {
    ("resolve_run_date", "validate_raw_events"),
    ("validate_raw_events", "build_training_data"),
    ("build_training_data", "validate_training_data"),
    ("validate_training_data", "train_model"),
    ("train_model", "evaluate_and_gate"),
    ("evaluate_and_gate", "score_users"),
    ("score_users", "validate_recommendations"),
    ("validate_recommendations", "publish_recommendations"),
    ("publish_recommendations", "write_report"),
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_schedule_catchup_retries_and_tags(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "dqlrec" in dag.tags
    assert dag.doc_md and "run date" in dag.doc_md.lower()
    for task in dag.tasks:
        assert task.retries >= 2, f"{task.task_id} has {task.retries} retries"


def test_task_edges(dagbag):
    dag = dagbag.dags[DAG_ID]
    edges = {(up.task_id, down) for up in dag.tasks for down in up.downstream_task_ids}
    missing = EXPECTED_EDGES - edges
    assert not missing, f"missing edges: {sorted(missing)}"
    # resolve_run_date feeds every task that takes the run date; no other edges may appear.
    extra = {e for e in edges - EXPECTED_EDGES if e[0] != "resolve_run_date"}
    assert not extra, f"unexpected edges: {sorted(extra)}"


def test_training_failure_falls_back_to_champion(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.get_task("evaluate_and_gate").trigger_rule == "all_done"
    assert dag.get_task("train_model").pool == "gpu"
    assert dag.get_task("build_training_data").pool == "spark"


def test_params_are_typed(dagbag):
    params = dagbag.dags[DAG_ID].params
    expected = {"run_date": "string", "top_k": "integer", "skip_training": "boolean",
                "model_version": "string", "force_cpu": "boolean"}
    for name, typ in expected.items():
        param = params.get_param(name)
        assert param.schema["type"] == typ
        assert param.schema.get("title") and param.description


def test_module_level_imports_are_light():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = sorted(m for m in ('torch', 'pyspark', 'great_expectations', 'dql_model', 'pandas') if m in sys.modules); "
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(PROJECT_ROOT / "dags" / f"{DAG_ID}.py")],
        capture_output=True, text=True, check=True,
    )
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker == ["HEAVY="], f"heavy modules imported by the DAG file: {marker}"
