"""Publishing through Airflow connections: S3 (moto's server) and PostgreSQL (the throwaway server).

The connections are supplied as Airflow reads them from the environment, ``AIRFLOW_CONN_<ID>`` holding
JSON, and nothing else carries a credential: the environment's AWS keys, ``AWS_ENDPOINT_URL_S3`` and
PGPASSWORD are removed, so a publish that works went through the connections. Then everything the run
left behind (the log at DEBUG, the exported objects, the SQL table, the warehouse files, the result)
is searched for the two secrets.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from dql_model.contract import schema
from dql_model.publishing import connections, publish, sinks
from dql_model.publishing.publish import ExportError, publish_run
from dql_model.publishing.sinks import SinkError
from dql_model.warehouse import storage
from tests.leaks import bucket_objects, found_in, logged, sql_table_text

RUN_DATE = "2026-11-27"
AWS_CONN = "dqlrec_s3"
SQL_CONN = "dqlrec_warehouse"


def recommendations(n_users: int, *, top_k: int = 3) -> pa.Table:
    generated = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{(u * 7 + rank) % 50}",
            schema.SCORE: 10.0 - rank - u / 100,
            schema.SOURCE: schema.SOURCE_DQN,
            schema.PROPENSITY: 1.0,
            schema.MODEL_VERSION: "v0007",
            schema.GENERATED_AT: generated,
        }
        for u in range(n_users)
        for rank in range(1, top_k + 1)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))


def stage(cfg, table: pa.Table) -> None:
    storage.write_partition(table, cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))


@pytest.fixture
def aws_secret(s3_endpoint, no_env_credentials, monkeypatch) -> str:
    secret = "aws-" + secrets.token_urlsafe(24)
    conn = {
        "conn_type": "aws",
        "login": "AKIADQLRECTEST",
        "password": secret,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{AWS_CONN.upper()}", json.dumps(conn))
    return secret


@pytest.fixture
def sql_password(postgres, no_env_credentials, monkeypatch) -> str:
    conn = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": postgres.port,
        "schema": "postgres",
        "login": postgres.USER,
        "password": postgres.password,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQL_CONN.upper()}", json.dumps(conn))
    return postgres.password


# --- the connections carry the credentials -----------------------------------------------------------------


def test_export_and_sql_sink_work_through_airflow_connections_and_never_show_the_secrets(
    tiny_config, s3_endpoint, s3_bucket, aws_secret, postgres, sql_password, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    cfg = tiny_config.replace(
        publish={
            "export_uri": f"s3://{s3_bucket}/recs",
            "aws_conn_id": AWS_CONN,
            "sql_conn_id": SQL_CONN,
            "sql_table": "recs_conn",
        }
    )
    table = recommendations(20)
    stage(cfg, table)

    result = publish_run(cfg, RUN_DATE, model_version="v0007", in_airflow=True)

    assert result["rows"] == result["sql_rows"] == table.num_rows
    client = connections.s3_client(AWS_CONN)
    assert publish.read_export(cfg.publish.export_uri, RUN_DATE, s3_client=client).equals(table)
    stored = sinks.read_run_date(run_date=RUN_DATE, table_name="recs_conn", sql_conn_id=SQL_CONN)
    assert stored.equals(table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]))
    log_text = logged(caplog, capfd)
    assert f"S3 through Airflow connection '{AWS_CONN}'" in log_text
    assert f"SQL sink Airflow connection '{SQL_CONN}': recs_conn for {RUN_DATE} replaced" in log_text

    objects = bucket_objects(s3_endpoint, s3_bucket)
    assert sorted(objects) == [f"recs/run_date={RUN_DATE}/{name}" for name in ("_SUCCESS", "_manifest.json", "part-00000.parquet")]
    warehouse = b"".join(p.read_bytes() for p in Path(cfg.warehouse.root).rglob("*") if p.is_file())
    written = {
        "log": log_text.encode(),
        "export": b"".join(objects.values()),
        "sql table": sql_table_text(postgres, "recs_conn").encode(),
        "warehouse": warehouse,
        "result": json.dumps(result, default=str).encode(),
        "config": json.dumps(cfg.to_dict()).encode(),
    }
    assert found_in(written, aws_secret, sql_password) == []


def test_outside_airflow_the_connection_ids_are_not_read(tiny_config, s3_bucket, aws_secret, caplog, capfd):
    """The CLI keeps the environment's route: here it has no credentials, so the export fails (and says why)."""
    caplog.set_level(logging.INFO)
    cfg = tiny_config.replace(publish={"export_uri": f"s3://{s3_bucket}/recs", "aws_conn_id": AWS_CONN, "s3_attempts": 1})
    stage(cfg, recommendations(2))

    assert not connections.in_airflow_task()
    with pytest.raises(ExportError, match=f"export to s3://{s3_bucket}/recs/run_date={RUN_DATE} failed"):
        publish_run(cfg, RUN_DATE, model_version="v0007")
    assert f"publish.aws_conn_id='{AWS_CONN}': read inside an Airflow task only" in logged(caplog, capfd)


def test_a_sql_connection_id_alone_is_refused_outside_airflow(tiny_config):
    cfg = tiny_config.replace(publish={"sql_conn_id": SQL_CONN})
    stage(cfg, recommendations(2))
    with pytest.raises(SinkError, match=f"publish.sql_conn_id='{SQL_CONN}' is read inside an Airflow task only"):
        publish_run(cfg, RUN_DATE, model_version="v0007", in_airflow=False)
    assert not Path(cfg.layout.partition(schema.RECOMMENDATIONS, RUN_DATE)).exists()  # refused before writing


def test_a_running_task_context_is_what_turns_the_connections_on():
    # The task runner enters this context around every task's execute (airflow.sdk.execution_time.task_runner).
    from airflow.sdk.execution_time.context import set_current_context

    assert not connections.in_airflow_task()
    with set_current_context({}):
        assert connections.in_airflow_task()
    assert not connections.in_airflow_task()


# --- errors name the connection, never its secret --------------------------------------------------------


def test_wrong_password_names_the_connection_and_hides_the_password(postgres, no_env_credentials, monkeypatch):
    wrong = "wrong-" + secrets.token_urlsafe(12)
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": postgres.port, "schema": "postgres",
            "login": postgres.USER, "password": wrong}  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQL_CONN.upper()}", json.dumps(conn))
    with pytest.raises(SinkError, match=f"Airflow connection '{SQL_CONN}'") as error:
        sinks.replace_run_date(recommendations(1), run_date=RUN_DATE, sql_conn_id=SQL_CONN)
    assert f"dqlrec@127.0.0.1:{postgres.port}/postgres" in str(error.value)
    assert wrong not in str(error.value)


def test_a_missing_connection_is_named(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOT_DEFINED_HERE", raising=False)
    with pytest.raises(SinkError, match="Airflow connection 'not_defined_here' cannot be read.*AIRFLOW_CONN_NOT_DEFINED_HERE"):
        sinks.replace_run_date(recommendations(1), run_date=RUN_DATE, sql_conn_id="not_defined_here")


def test_aws_connection_settings_it_cannot_honour_are_refused(monkeypatch):
    conn = {"conn_type": "aws", "extra": {"role_arn": "arn:aws:iam::123456789012:role/r"}}
    monkeypatch.setenv("AIRFLOW_CONN_ROLE_ONLY", json.dumps(conn))
    with pytest.raises(connections.AirflowConnectionError, match=r"'role_only': extra \['role_arn'\] is not supported"):
        connections.s3_client("role_only")
    monkeypatch.setenv("AIRFLOW_CONN_HALF_KEYS", json.dumps({"conn_type": "aws", "login": "AKIA"}))
    with pytest.raises(connections.AirflowConnectionError, match="'half_keys' has a login but no password"):
        connections.s3_client("half_keys")


def test_a_connection_of_another_kind_is_refused_for_sql(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HTTP_ONE", json.dumps({"conn_type": "http", "host": "example.com"}))
    with pytest.raises(SinkError, match="'http_one' is of type 'http'"):
        sinks.replace_run_date(recommendations(1), run_date=RUN_DATE, sql_conn_id="http_one")
