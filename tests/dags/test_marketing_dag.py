"""marketing_audiences: scheduled on the asset the nightly DAG publishes, reading the date from its events."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.airflow

DAG_ID = "marketing_audiences"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_it_is_scheduled_on_the_asset_the_nightly_dag_publishes(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.dags[DAG_ID]
    publish = dagbag.dags["dql_recommendations"].get_task("publish_recommendations")
    scheduled_on = [(a.name, a.uri) for a in dag.timetable.asset_condition.objects]
    assert scheduled_on == [(a.name, a.uri) for a in publish.outlets]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert {"dqlrec", "marketing"} <= set(dag.tags)
    assert dag.doc_md and "asset event" in dag.doc_md
    assert all(task.retries >= 2 for task in dag.tasks)
    assert {(up.task_id, down) for up in dag.tasks for down in up.downstream_task_ids} == {
        ("published_run_dates", "build_campaign_audiences")
    }


def _run_dates(dagbag, events, params=None):
    from airflow.sdk.execution_time.context import set_current_context

    task = dagbag.dags[DAG_ID].get_task("published_run_dates")
    context = {"params": {"run_date": "", "min_share": 0.6, **(params or {})}, "triggering_asset_events": events}
    with set_current_context(context):
        return task.python_callable()


class _Event:
    def __init__(self, run_date):
        self.extra = {"run_date": run_date, "rows": 10}


def test_the_dates_come_from_the_triggering_events(dagbag):
    (asset,) = dagbag.dags[DAG_ID].timetable.asset_condition.objects
    events = {asset: [_Event("2026-11-27"), _Event("2026-11-26"), _Event("2026-11-27")]}
    assert _run_dates(dagbag, events) == ["2026-11-26", "2026-11-27"]
    assert _run_dates(dagbag, events, {"run_date": "2026-11-20"}) == ["2026-11-20"]


def test_a_run_without_an_event_or_a_date_fails_naming_the_asset(dagbag):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="no dqlrec_recommendations asset event"):
        _run_dates(dagbag, {})
