"""Logs in other systems' formats, imported with `dqlrec import`, through the whole nightly DAG.

Each case writes a small log in a native format (RetailRocket events with carts and purchases, a
MovieLens ratings file, a shop's own views-only CSV with a column mapping), imports it, runs the
DAG for run_date `latest` and reads the published recommendations back: every user is served,
nothing the user already had is recommended, and the evaluation and the report describe the
data as it is (its split, its mask, its event types), with no setting beyond the format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from dql_model import cli
from dql_model.config import load_config
from dql_model.contract import schema
from dql_model.warehouse import storage
from tests.factories import foreign_log, write_movielens_100k, write_retailrocket, write_views_csv

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

LAST_DAY = "2026-11-27"


def _run_night(cfg_file: Path, import_args: list[str], monkeypatch) -> tuple:
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import PROJECT_ROOT

    monkeypatch.setenv("DQLREC_CONFIG", str(cfg_file))
    cfg = load_config()
    assert cli.main(["import", *import_args]) == 0
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["dql_recommendations"]
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf={"run_date": "latest"})
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    recommendations = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, LAST_DAY))
    evaluation = json.loads((Path(cfg.layout.report(LAST_DAY)) / "evaluation.json").read_text())
    report = (Path(cfg.layout.report(LAST_DAY)) / "report.md").read_text()
    return cfg, recommendations, evaluation, report


@pytest.fixture
def night_config(tiny_config, tmp_path):
    """The tiny config, nothing about the data: the defaults must fit whatever is imported."""
    config = tiny_config.to_dict()
    config["etl"] = {"max_len": 8}  # every window, split and mask setting at its default
    config["eval"] = {"baseline_trials": 1}
    path = tmp_path / "dqlrec.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _users_items(cfg, event_types: set[str]) -> dict[str, set[str]]:
    import pyarrow.dataset as ds

    columns = [schema.USER_ID, schema.ITEM_ID, schema.EVENT_TYPE]
    events = ds.dataset(cfg.layout.table(schema.EVENTS), format="parquet").to_table(columns=columns).to_pylist()
    seen: dict[str, set[str]] = {}
    for row in events:
        if row[schema.EVENT_TYPE] in event_types:
            seen.setdefault(row[schema.USER_ID], set()).add(row[schema.ITEM_ID])
    return seen


def _recommended(table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in table.select([schema.USER_ID, schema.ITEM_ID]).to_pylist():
        out.setdefault(row[schema.USER_ID], set()).add(row[schema.ITEM_ID])
    return out


def test_a_retailrocket_log_is_imported_and_served_without_its_purchases(
    airflow_db, night_config, tmp_path, monkeypatch
):
    folder = write_retailrocket(tmp_path / "retailrocket", foreign_log(span_days=6, seed=1))

    cfg, recs, evaluation, report = _run_night(night_config, ["--format", "retailrocket", str(folder)], monkeypatch)

    recommended = _recommended(recs)
    assert set(recommended) == {str(u) for u in range(1, 41)}  # RetailRocket's visitor ids, as strings
    bought = _users_items(cfg, {schema.PURCHASE})
    assert all(not (recommended[user] & items) for user, items in bought.items())
    assert set(recs.column(schema.SOURCE).to_pylist()) <= {schema.SOURCE_DQN, schema.SOURCE_FALLBACK}
    protocol = evaluation["protocol"]
    assert (protocol["validation"], protocol["exclude"]) == ("time", "purchased")  # daily logs: a time split
    assert protocol["event_types"][schema.PURCHASE] > 0 and protocol["event_types"][schema.RATING] == 0
    assert "simulation" not in evaluation  # the synthetic shop is not this shop
    assert "Validation split: time" in report


def test_a_ratings_only_log_never_recommends_a_rated_item(airflow_db, night_config, tmp_path, monkeypatch):
    # Seven months of ratings, about a dozen per user: the last days hold almost nothing.
    folder = write_movielens_100k(tmp_path / "ml-100k", foreign_log(span_days=210, repeats=False, seed=2))

    cfg, recs, evaluation, report = _run_night(night_config, ["--format", "movielens", str(folder)], monkeypatch)

    recommended = _recommended(recs)
    rated = _users_items(cfg, {schema.RATING})
    assert set(recommended) == set(rated)
    assert all(not (recommended[user] & items) for user, items in rated.items())
    protocol = evaluation["protocol"]
    assert (protocol["validation"], protocol["exclude"]) == ("leave_last_out", "interacted")
    assert evaluation["validation_events"] == len(rated)  # each user's last rating (all have a state)
    challenger = evaluation["metrics"]["challenger"]
    assert schema.metric_name("ndcg", 10, schema.RATING) in challenger
    assert not any(name.startswith("eval/purchase/") for name in challenger)
    assert "rating NDCG@10" in report and "purchase NDCG@10" not in report


def test_a_views_only_log_with_a_column_mapping_runs_the_night(airflow_db, night_config, tmp_path, monkeypatch):
    log = write_views_csv(tmp_path / "clicks" / "2026-11.csv", foreign_log(span_days=5, seed=3))
    mapping = ["--map", "user_id=visitor,item_id=sku,event_time=ts", "--event-type", "view", "--time-unit", "ms"]

    cfg, recs, evaluation, report = _run_night(night_config, ["--format", "events", str(log), *mapping], monkeypatch)

    users = pc.count_distinct(recs.column(schema.USER_ID)).as_py()
    assert users == 40 and recs.num_rows == users * cfg.score.top_k
    assert evaluation["protocol"]["event_types"] == {"view": 40 * 12, "add_to_cart": 0, "purchase": 0, "rating": 0}
    assert evaluation["promoted"] and evaluation["gate_metric"] == schema.metric_name("ndcg", 10)
    assert "none of: add_to_cart, purchase, rating" in report
