"""Crashes in the middle of publishing: the previous outputs stay as they were, and a rerun completes.

A crash is simulated by an exception that no code path catches (a BaseException, like the worker
being stopped), raised at a chosen step: while the warehouse partition is being staged, while the
SQL sink loads, and while the S3 export uploads (after the warehouse swap). Publishing runs the real
task function against a warehouse folder, a real S3 API (moto's server) and a real PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from boto3.s3.transfer import S3Transfer

from dql_model.contract import schema
from dql_model.pipeline import tasks
from dql_model.publishing import publish, sinks
from dql_model.publishing.publish import IncompleteExportError, read_export
from dql_model.warehouse import storage

DAY_BEFORE, RUN_DATE = "2026-11-26", "2026-11-27"


class Crash(BaseException):
    """The worker stops here: nothing catches it (not an Exception)."""


def recommendations(n_users: int, salt: str) -> pa.Table:
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{(u * 7 + rank) % 50}-{salt}",
            schema.SCORE: 10.0 - rank - u / 100,
            schema.SOURCE: schema.SOURCE_DQN,
            schema.PROPENSITY: 1.0,
            schema.MODEL_VERSION: f"model-{salt}",
            schema.GENERATED_AT: datetime(2026, 11, 27, 3, tzinfo=UTC),
        }
        for u in range(n_users)
        for rank in range(1, 4)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))


@pytest.fixture
def cfg(tiny_config, s3_bucket):
    return tiny_config.replace(publish={"export_uri": f"s3://{s3_bucket}/marketing/recs", "rows_per_file": 10})


def publish_day(cfg, run_date: str, table: pa.Table) -> dict:
    """Stage ``table`` as the scoring task would, then run the publish task."""
    storage.write_partition(table, cfg.layout.staged(schema.RECOMMENDATIONS, run_date))
    return tasks.publish_recommendations(run_date, {"model_version": "m", "top_k": 3}, cfg=cfg)


def rerun(cfg, run_date: str) -> dict:
    """Airflow's retry of the publish task: the staged partition is still there."""
    return tasks.publish_recommendations(run_date, {"model_version": "m", "top_k": 3}, cfg=cfg)


def warehouse(cfg, run_date: str) -> pa.Table:
    return storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))


def s3_objects(cfg, run_date: str) -> pa.Table:
    """The date's export read with plain boto3, as a consumer without our code would: _SUCCESS, then parts."""
    location = publish.parse_uri(cfg.publish.export_uri).child(f"run_date={run_date}")
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=location.bucket, Prefix=location.path + "/").get("Contents", [])
    names = sorted(obj["Key"].rsplit("/", 1)[1] for obj in listed)
    assert "_SUCCESS" in names, f"{location} is not complete: {names}"
    parts = [
        pq.read_table(pa.BufferReader(client.get_object(Bucket=location.bucket, Key=f"{location.path}/{n}")["Body"].read()))
        for n in names
        if n.startswith("part-")
    ]
    return pa.concat_tables(parts)


def assert_published(cfg, run_date: str, table: pa.Table, sql_url: str | None = None) -> None:
    assert warehouse(cfg, run_date).equals(table)
    assert s3_objects(cfg, run_date).equals(table)
    assert read_export(cfg.publish.export_uri, run_date).equals(table)  # manifest and checksums agree
    if sql_url:
        key = [(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]
        assert sinks.read_run_date(url=sql_url, run_date=run_date).equals(table.sort_by(key))


def crash_on_upload(monkeypatch, after_files: int) -> None:
    real = S3Transfer.upload_file
    done = []

    def upload(self, *args, **kwargs):
        if len(done) == after_files:
            raise Crash("worker stopped during the S3 upload")
        done.append(kwargs.get("key", args[2:3]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3Transfer, "upload_file", upload)


def test_published_s3_objects_equal_the_warehouse_partition(cfg):
    table = recommendations(12, "a")  # 36 rows: four files of at most 10
    published = publish_day(cfg, RUN_DATE, table)
    assert (published["rows"], published["files"], published["sql_rows"]) == (36, 4, None)
    assert s3_objects(cfg, RUN_DATE).equals(warehouse(cfg, RUN_DATE))
    assert_published(cfg, RUN_DATE, table)
    assert not Path(cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE)).exists()


def test_crash_during_the_s3_upload_after_the_warehouse_swap(cfg, monkeypatch):
    yesterday = recommendations(12, "yesterday")
    publish_day(cfg, DAY_BEFORE, yesterday)
    today = recommendations(12, "today")

    with monkeypatch.context() as patched, pytest.raises(Crash):
        crash_on_upload(patched, after_files=2)
        publish_day(cfg, RUN_DATE, today)

    assert_published(cfg, DAY_BEFORE, yesterday)  # the previous day: untouched
    assert warehouse(cfg, RUN_DATE).equals(today)  # swapped in whole before the export began
    with pytest.raises(IncompleteExportError, match="no _SUCCESS"):
        read_export(cfg.publish.export_uri, RUN_DATE)  # readers that gate on _SUCCESS skip the date
    assert Path(cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE)).is_dir()  # kept for the rerun

    rerun(cfg, RUN_DATE)
    assert_published(cfg, RUN_DATE, today)
    assert_published(cfg, DAY_BEFORE, yesterday)


def test_crash_while_staging_the_warehouse_partition(cfg, monkeypatch):
    yesterday, first = recommendations(12, "yesterday"), recommendations(12, "first")
    publish_day(cfg, DAY_BEFORE, yesterday)
    publish_day(cfg, RUN_DATE, first)
    second = recommendations(9, "second")

    real_write = pq.write_table
    written = []

    def write_then_crash(table, where, *args, **kwargs):
        if "recommendations" in str(where) and ".staging-" in str(where) and "output" in str(where):
            if written:
                raise Crash("worker stopped while writing the warehouse partition")
            written.append(where)
        return real_write(table, where, *args, **kwargs)

    storage.write_partition(second, cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(pq, "write_table", write_then_crash)
        rerun(cfg, RUN_DATE)

    # Nothing was swapped or exported: both dates read as before, with no leftovers beside them.
    assert_published(cfg, DAY_BEFORE, yesterday)
    assert_published(cfg, RUN_DATE, first)
    output = cfg.layout.table(schema.RECOMMENDATIONS)
    assert sorted(p.name for p in Path(output).iterdir()) == [
        f"run_date={DAY_BEFORE}",
        f"run_date={RUN_DATE}",
    ]

    rerun(cfg, RUN_DATE)
    assert_published(cfg, RUN_DATE, second)
    assert_published(cfg, DAY_BEFORE, yesterday)


def test_crash_in_the_sql_sink_rolls_back_and_a_rerun_completes_everything(cfg, pg_url, monkeypatch):
    cfg = cfg.replace(publish={"sql_url": pg_url})
    yesterday, first = recommendations(12, "yesterday"), recommendations(12, "first")
    publish_day(cfg, DAY_BEFORE, yesterday)
    publish_day(cfg, RUN_DATE, first)
    assert_published(cfg, RUN_DATE, first, pg_url)
    second = recommendations(10, "second")

    real_records = sinks._records

    def records_then_crash(rows, run_date):
        for n, record in enumerate(real_records(rows, run_date)):
            if n == 5:
                raise Crash("worker stopped during the SQL load")
            yield record

    storage.write_partition(second, cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(sinks, "_records", records_then_crash)
        rerun(cfg, RUN_DATE)

    assert_published(cfg, DAY_BEFORE, yesterday, pg_url)
    key = [(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]
    assert sinks.read_run_date(url=pg_url, run_date=RUN_DATE).equals(first.sort_by(key))  # rolled back
    assert read_export(cfg.publish.export_uri, RUN_DATE).equals(first)  # the export was not begun

    published = rerun(cfg, RUN_DATE)
    assert (published["sql_rows"], published["sql_table"]) == (30, "recommendations")
    assert_published(cfg, RUN_DATE, second, pg_url)
    assert_published(cfg, DAY_BEFORE, yesterday, pg_url)
