"""A night run with its credentials supplied each legitimate way, then a search of everything it wrote.

The night's export goes to S3 (moto's server) and its rows to PostgreSQL (the throwaway server), with
the S3 secret key and the database password supplied by one route per case:

- the environment: AWS_SECRET_ACCESS_KEY and PGPASSWORD;
- files under the home folder: ``~/.aws/credentials`` and ``~/.pgpass`` (a temporary HOME);
- Airflow connections (``AIRFLOW_CONN_<ID>`` JSON) named by publish.aws_conn_id and sql_conn_id, read
  inside a running task.

Every other route is closed, so a night that publishes went through the one supplied. Then the log at
DEBUG, every file under the night's folder (warehouse tables, reports, Data Docs, registry, locks),
the exported objects, the SQL table and the steps' results are searched for both secrets
(tests/leaks.py). Credentials given the wrong way (inside a URL) are refused by the config
(tests/unit/test_config.py); a publish alone through connections is tests/unit/test_connections.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from pathlib import Path

import pytest

from dql_model.contract import schema
from dql_model.warehouse import storage
from tests.leaks import bucket_objects, files_under, found_in, logged, sql_table_text
from tests.reliability.conftest import DAY2
from tests.reliability.night import run_steps

AWS_KEY_ID = "AKIADQLRECNIGHT"
AWS_CONN, SQL_CONN = "dqlrec_night_s3", "dqlrec_night_sql"
SQL_TABLE = "recs_secret_night"


def through_environment(monkeypatch, home: Path, aws_secret: str, postgres, endpoint: str) -> dict:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    return {"sql_url": postgres.url}


def through_home_files(monkeypatch, home: Path, aws_secret: str, postgres, endpoint: str) -> dict:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {aws_secret}\n"
    )
    pgpass = home / ".pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:postgres:{postgres.USER}:{postgres.password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    return {"sql_url": postgres.url}


def through_airflow_connections(monkeypatch, home: Path, aws_secret: str, postgres, endpoint: str) -> dict:
    aws = {"conn_type": "aws", "login": AWS_KEY_ID, "password": aws_secret,
           "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}  # fmt: skip
    sql = {"conn_type": "postgres", "host": "127.0.0.1", "port": postgres.port, "schema": "postgres",
           "login": postgres.USER, "password": postgres.password}  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{AWS_CONN.upper()}", json.dumps(aws))
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQL_CONN.upper()}", json.dumps(sql))
    return {"aws_conn_id": AWS_CONN, "sql_conn_id": SQL_CONN}


ROUTES = {f.__name__: f for f in (through_environment, through_home_files, through_airflow_connections)}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_night_never_writes_the_secrets_it_was_given(
    night, route, tmp_path, s3_endpoint, s3_bucket, postgres, no_env_credentials, monkeypatch, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    aws_secret = "aws-" + secrets.token_urlsafe(24)
    supplied = ROUTES[route](monkeypatch, tmp_path / "home", aws_secret, postgres, s3_endpoint)
    cfg = night.replace(publish={"export_uri": f"s3://{s3_bucket}/recs", "sql_table": SQL_TABLE, **supplied})
    task = contextlib.nullcontext()
    if route == "through_airflow_connections":  # connections are read inside a running task only
        from airflow.sdk.execution_time.context import set_current_context

        task = set_current_context({})

    with task:
        published = run_steps(cfg, DAY2, last="publish_recommendations")
        report = run_steps(cfg, DAY2, "write_report", "write_report", published)

    # It published everywhere, so the one route given carried both credentials.
    rows = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, DAY2)).num_rows
    assert published["rows"] == published["sql_rows"] == rows > 0, published
    stored = bucket_objects(s3_endpoint, s3_bucket)
    assert f"recs/run_date={DAY2}/_SUCCESS" in stored
    sql_rows = sql_table_text(postgres, SQL_TABLE)
    assert len(sql_rows.splitlines()) == rows
    written = {
        "log": logged(caplog, capfd).encode(),
        **files_under(Path(cfg.warehouse.root).parent),  # warehouse, reports, Data Docs, registry
        **{f"s3://{s3_bucket}/{key}": data for key, data in stored.items()},
        "sql table": sql_rows.encode(),
        "results": json.dumps([published, report], default=str).encode(),
    }
    assert any("/reports/" in where for where in written) and any("/models/" in where for where in written)
    assert found_in(written, aws_secret, postgres.password) == []
