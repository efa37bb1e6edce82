"""The Redshift load: one COPY from the run's S3 export, inside the transaction that deletes the date's rows.

PostgreSQL cannot run Redshift's ``COPY ... IAM_ROLE ... FORMAT AS PARQUET``, so the statements are
checked as sent: ``sinks.load_run_date`` takes the cursor, and a recording cursor stands in for the
cluster's. The INSERT and COPY FROM STDIN paths keep their real-server tests in test_sinks.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dql_model.config import ConfigError, PublishConfig
from dql_model.contract import schema
from dql_model.publishing import publish, sinks
from dql_model.publishing.sinks import S3Copy, SinkError
from dql_model.warehouse import storage

RUN_DATE = "2026-11-27"
ROLE = "arn:aws:iam::123456789012:role/dqlrec-redshift-load"
PREFIX = f"s3://shop-exports/recs/run_date={RUN_DATE}/part-"


def recommendations(n_users: int) -> pa.Table:
    generated = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{u + rank}",
            schema.SCORE: 1.0 / rank,
            schema.SOURCE: schema.SOURCE_DQN,
            schema.PROPENSITY: 1.0,
            schema.MODEL_VERSION: "v0007",
            schema.GENERATED_AT: generated,
        }
        for u in range(n_users)
        for rank in (1, 2)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))


class RecordingCursor:
    """A DB-API cursor that keeps each statement as text with its parameters; the count query answers ``count``."""

    def __init__(self, count: int, deleted: int = 4):
        self.statements: list[tuple[str, tuple | None]] = []
        self.rowcount = -1
        self.count = count
        self.deleted = deleted

    def execute(self, query, params=None):
        text = query.as_string() if hasattr(query, "as_string") else str(query)
        self.statements.append((" ".join(text.split()), params))
        self.rowcount = self.deleted if text.startswith("DELETE") else -1

    def fetchone(self):
        return (self.count,)


def load(cur: RecordingCursor, rows: pa.Table, **kwargs):
    return sinks.load_run_date(
        cur, rows, run_date=date.fromisoformat(RUN_DATE), table_name="recommendations", **kwargs
    )


# --- the statements ---------------------------------------------------------------------------------------


def test_redshift_loads_the_night_by_one_copy_from_the_export_between_create_and_count():
    rows = recommendations(5)
    cur = RecordingCursor(count=rows.num_rows)

    deleted, loaded = load(cur, rows, s3_copy=S3Copy(PREFIX, ROLE))

    assert (deleted, loaded) == (4, rows.num_rows)
    day = date.fromisoformat(RUN_DATE)
    contract = ", ".join(f'"{name}"' for name in schema.arrow_schema(schema.RECOMMENDATIONS).names)
    sent = cur.statements
    assert sent[0][0].startswith('CREATE TABLE IF NOT EXISTS "recommendations" ("run_date" DATE NOT NULL,')
    assert sent[1:] == [
        ('DROP TABLE IF EXISTS "dqlrec_load"', None),
        (
            'CREATE TEMP TABLE "dqlrec_load" ("user_id" VARCHAR(256), "rank" INTEGER, "item_id" VARCHAR(256), '
            '"score" DOUBLE PRECISION, "source" VARCHAR(32), "propensity" DOUBLE PRECISION, '
            '"model_version" VARCHAR(128), "generated_at" TIMESTAMPTZ)',
            None,
        ),
        (f"COPY \"dqlrec_load\" FROM '{PREFIX}' IAM_ROLE '{ROLE}' FORMAT AS PARQUET", None),
        ('DELETE FROM "recommendations" WHERE run_date = %s', (day,)),
        (f'INSERT INTO "recommendations" ("run_date", {contract}) SELECT %s, {contract} FROM "dqlrec_load"', (day,)),
        ('DROP TABLE "dqlrec_load"', None),
        ('SELECT count(*) FROM "recommendations" WHERE run_date = %s', (day,)),
    ]
    text = " ".join(statement for statement, _ in sent)
    assert "VALUES" not in text and "ACCESS_KEY" not in text.upper() and "CREDENTIALS" not in text.upper()


def test_the_load_table_has_the_exported_parts_columns_in_their_order(tmp_path):
    """Redshift maps Parquet columns by position: the temporary table must follow the files export writes."""
    publish.export(recommendations(3), uri=str(tmp_path), run_date=RUN_DATE, model_version="v0007",
                   config_hash="h", rows_per_file=100)  # fmt: skip
    part = next(Path(publish.partition_uri(str(tmp_path), RUN_DATE)).glob("part-*.parquet"))
    cur = RecordingCursor(count=6)
    load(cur, recommendations(3), s3_copy=S3Copy(PREFIX, ROLE))

    create = next(statement for statement, _ in cur.statements if statement.startswith("CREATE TEMP TABLE"))
    columns = [column.split('"')[1] for column in create.split("(", 1)[1].split(", ")]
    assert columns == pq.read_schema(part).names


def test_a_count_that_differs_from_the_nights_rows_fails_the_load():
    cur = RecordingCursor(count=7)
    with pytest.raises(SinkError, match="7 rows for 2026-11-27 after loading 10; rolled back"):
        load(cur, recommendations(5), s3_copy=S3Copy(PREFIX, ROLE))


def test_an_s3_copy_needs_an_s3_prefix_and_a_role():
    with pytest.raises(ValueError, match="not an s3:// prefix"):
        S3Copy("/tmp/export/run_date=2026-11-27/part-", ROLE)
    with pytest.raises(ValueError, match="needs an IAM role"):
        S3Copy(PREFIX, "")


# --- publish_run: where the COPY reads, and in which order --------------------------------------------------


def test_the_parts_prefix_matches_every_part_and_nothing_else(s3_endpoint, s3_bucket):
    uri = f"s3://{s3_bucket}/recs"
    manifest = publish.export(recommendations(40), uri=uri, run_date=RUN_DATE, model_version="v0007",
                              config_hash="h", rows_per_file=25)  # fmt: skip
    prefix = publish.parts_prefix(uri, RUN_DATE)
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket, Prefix=key_prefix)
    names = sorted(obj["Key"].rsplit("/", 1)[1] for obj in listed["Contents"])
    assert names == sorted(f.name for f in manifest.files) and len(names) == 4


def stage(cfg, table: pa.Table) -> None:
    storage.write_partition(table, cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))


def test_a_redshift_sink_without_an_s3_export_or_a_role_is_refused_before_anything_is_written(tiny_config):
    cfg = tiny_config.replace(publish={"sql_url": "redshift://loader@cluster.example:5439/dev"})
    stage(cfg, recommendations(2))
    with pytest.raises(SinkError, match="needs an s3:// publish.export_uri .* and publish.redshift_iam_role"):
        publish.publish_run(cfg, RUN_DATE, model_version="v0007")
    assert not Path(cfg.layout.partition(schema.RECOMMENDATIONS, RUN_DATE)).exists()


def test_redshift_loads_after_the_export_is_complete_and_a_failed_load_leaves_the_night_to_rerun(
    tiny_config, s3_bucket
):
    """The COPY reads the export, so the export comes first; the unreachable cluster fails the publish after it."""
    uri = f"s3://{s3_bucket}/recs"
    cfg = tiny_config.replace(
        publish={"export_uri": uri, "sql_url": "redshift://loader@127.0.0.1:1/dev", "redshift_iam_role": ROLE}
    )
    table = recommendations(6)
    stage(cfg, table)
    with pytest.raises(SinkError, match=r"cannot connect to the SQL sink loader@127\.0\.0\.1:1/dev"):
        publish.publish_run(cfg, RUN_DATE, model_version="v0007")
    assert publish.read_export(uri, RUN_DATE).equals(table)
    assert Path(cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE)).is_dir()  # a rerun publishes again


# --- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [ROLE, "default", "arn:aws-cn:iam::123456789012:role/path/to/loader"])
def test_redshift_iam_role_takes_a_role_arn(role):
    assert PublishConfig(redshift_iam_role=role).redshift_iam_role == role


@pytest.mark.parametrize("role", ["AKIAIOSFODNN7EXAMPLE", "aws_access_key_id=AKIA;aws_secret_access_key=x", "role/x"])
def test_redshift_iam_role_refuses_anything_else_by_name(role):
    with pytest.raises(ConfigError, match="publish.redshift_iam_role=.* is not an IAM role ARN"):
        PublishConfig(redshift_iam_role=role)


def test_a_connection_id_that_is_not_one_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="publish.sql_conn_id is not an Airflow connection id") as error:
        PublishConfig(sql_conn_id="postgres://u:s3cr3t@h/db")
    assert "s3cr3t" not in str(error.value)
    assert PublishConfig(aws_conn_id="aws_exports", sql_conn_id="warehouse.main").sql_conn_id == "warehouse.main"


def test_an_airflow_connection_of_type_redshift_takes_the_copy_route(tiny_config, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_REDSHIFT", '{"conn_type": "redshift", "host": "127.0.0.1", "port": 1}')
    cfg = tiny_config.replace(publish={"sql_conn_id": "shop_redshift"})
    stage(cfg, recommendations(2))
    with pytest.raises(SinkError, match="the SQL sink is Redshift, which loads the night by COPY from the S3 export"):
        publish.publish_run(cfg, RUN_DATE, model_version="v0007", in_airflow=True)
