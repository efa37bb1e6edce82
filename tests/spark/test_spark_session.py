"""jobs.spark_session: all-or-nothing partition writes and the reuse of an active session."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dql_model.config import SparkConfig
from jobs.spark_session import get_spark, list_partitions, write_partition_atomic, write_text_atomic

pytestmark = pytest.mark.spark

DDL = "k STRING, v INT"


def test_rewrite_replaces_the_partition_whole_and_a_failed_write_changes_nothing(spark, tmp_path):
    final = tmp_path / "table" / "run_date=2026-11-21"
    first = spark.createDataFrame([("a", 1), ("b", 2)], DDL)
    second = spark.createDataFrame([("c", 3)], DDL)

    write_partition_atomic(first, str(final))
    write_partition_atomic(second, str(final))
    assertDataFrameEqual(spark.read.schema(DDL).parquet(str(final)), spark.createDataFrame([("c", 3)], DDL))

    crashing = second.withColumn("v", F.raise_error(F.lit("simulated crash mid-write")).cast("int"))
    with pytest.raises(Exception, match="simulated crash"):
        write_partition_atomic(crashing, str(final))
    assertDataFrameEqual(spark.read.schema(DDL).parquet(str(final)), spark.createDataFrame([("c", 3)], DDL))
    assert sorted(p.name for p in final.parent.iterdir()) == ["run_date=2026-11-21"]  # no staging left


def test_leftovers_of_a_dead_writer_are_recovered(spark, tmp_path):
    final = tmp_path / "table" / "run_date=2026-11-21"
    write_partition_atomic(spark.createDataFrame([("old", 1)], DDL), str(final))
    # A writer died between its two renames: the old partition is aside, a staging folder remains.
    final.rename(final.parent / ".run_date=2026-11-21.retired-0badc0de")
    (final.parent / ".run_date=2026-11-21.staging-0badc0de").mkdir()

    # The next writer puts the old partition back first, so even its own crash leaves it in place.
    crashing = spark.createDataFrame([("new", 2)], DDL).withColumn(
        "v", F.raise_error(F.lit("boom")).cast("int")
    )
    with pytest.raises(Exception, match="boom"):
        write_partition_atomic(crashing, str(final))
    assertDataFrameEqual(spark.read.schema(DDL).parquet(str(final)), spark.createDataFrame([("old", 1)], DDL))

    write_partition_atomic(spark.createDataFrame([("new", 2)], DDL), str(final))
    assertDataFrameEqual(spark.read.schema(DDL).parquet(str(final)), spark.createDataFrame([("new", 2)], DDL))
    assert sorted(p.name for p in final.parent.iterdir()) == ["run_date=2026-11-21"]


def test_text_and_partition_listing(spark, tmp_path):
    summary = tmp_path / "_runs" / "run_date=2026-11-21" / "job.json"
    write_text_atomic(spark, str(summary), json.dumps({"n": 1}))
    write_text_atomic(spark, str(summary), json.dumps({"n": 2}))
    assert json.loads(summary.read_text()) == {"n": 2}
    assert [p.name for p in summary.parent.iterdir()] == ["job.json"]

    for name in ("run_date=2026-11-20", "run_date=2026-11-21", ".run_date=2026-11-22.staging-1", "other"):
        (tmp_path / "t" / name).mkdir(parents=True)
    found = list_partitions(spark, str(tmp_path / "t"), "run_date")
    assert sorted(found) == ["2026-11-20", "2026-11-21"]
    assert found["2026-11-21"].endswith("/t/run_date=2026-11-21")
    assert list_partitions(spark, str(tmp_path / "missing"), "run_date") == {}


def test_get_spark_reuses_the_active_session(spark):
    assert get_spark(SparkConfig(master="local[2]"), "other-app") is spark
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_the_partition_is_assembled_outside_the_table_and_a_retired_one_there_is_put_back(spark, tmp_path, capsys):
    final = tmp_path / "table" / "run_date=2026-11-21"
    write_partition_atomic(spark.createDataFrame([("old", 1)], DDL), str(final))
    area = tmp_path / "_swap" / "table"
    assert area.is_dir() and list(area.iterdir()) == []  # assembled there, nothing left behind
    # A two-rename swap (HDFS) died between its renames: the old partition waits in the swap area.
    final.rename(area / "run_date=2026-11-21.retired-0badc0de")

    crashing = spark.createDataFrame([("new", 2)], DDL).withColumn("v", F.raise_error(F.lit("boom")).cast("int"))
    with pytest.raises(Exception, match="boom"):
        write_partition_atomic(crashing, str(final))
    assertDataFrameEqual(spark.read.schema(DDL).parquet(str(final)), spark.createDataFrame([("old", 1)], DDL))
    assert "put back" in capsys.readouterr().out  # the recovery says what it did
    assert list(area.iterdir()) == [] and sorted(p.name for p in final.parent.iterdir()) == [final.name]
