"""The whole nightly DAG through dag.test() on a tiny generated shop, publishing to a real S3 API.

The run goes through the same code as production: SparkSubmitOperator runs spark-submit, the model
trains on CPU, Great Expectations checks both ends, and the export lands in a bucket on moto's
server, reached by boto3 through AWS_ENDPOINT_URL_S3. Then it reads the export back and compares it
with the warehouse partition, and reruns the date to check nothing is duplicated or changed.
"""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import yaml

from dql_model.config import load_config
from dql_model.contract import schema
from dql_model.publishing import publish
from dql_model.warehouse import storage

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def _recommendations_without_time(table):
    cols = [c for c in table.column_names if c != schema.GENERATED_AT]
    return table.select(cols).sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])


def test_nightly_dag_publishes_to_s3_and_reruns_identically(
    airflow_db, tiny_config, s3_bucket, tmp_path, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag

    from dql_model.simulation import simulator
    from tests.conftest import PROJECT_ROOT

    config = tiny_config.to_dict()
    config["publish"]["export_uri"] = f"s3://{s3_bucket}/marketing/recs"
    config_file = tmp_path / "dqlrec.yaml"
    config_file.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DQLREC_CONFIG", str(config_file))
    cfg = load_config()
    simulator.write_shop(cfg)
    run_date = cfg.simulator.end_date

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["dql_recommendations"]
    for task in dag.tasks:
        task.retries = 0  # a failure here is a bug to see at once, not a flake to retry after minutes

    first = dag.test(run_conf={"run_date": run_date})
    assert first.state == "success", [(ti.task_id, ti.state) for ti in first.get_task_instances()]

    warehouse = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    exported = publish.read_export(cfg.publish.export_uri, run_date)
    assert exported.equals(warehouse)

    k = cfg.score.top_k
    users = pc.count_distinct(warehouse.column(schema.USER_ID)).as_py()
    assert warehouse.num_rows == users * k
    assert set(warehouse.column(schema.SOURCE).to_pylist()) <= set(schema.SOURCES)
    assert set(warehouse.column(schema.RANK).to_pylist()) == set(range(1, k + 1))

    second = dag.test(run_conf={"run_date": run_date})
    assert second.state == "success"
    rerun = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    assert _recommendations_without_time(rerun).equals(_recommendations_without_time(warehouse))
    assert _recommendations_without_time(publish.read_export(cfg.publish.export_uri, run_date)).equals(
        _recommendations_without_time(rerun)
    )
