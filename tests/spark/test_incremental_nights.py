"""Nights of jobs.build_training_data: incremental == full rebuild, and local == local-cluster.

The raw data has what makes incremental processing hard: a late event that belongs inside a
user's kept events, a late event beyond the lookback, duplicates re-delivered one and two days
later, users with a single event, a user first seen on a later night, and an old partition
(11-19) that the last night, seeded by an earlier night's states, must not need to read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from pyspark.testing import assertDataFrameEqual

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.warehouse import storage
from jobs.build_training_data import main

pytestmark = [pytest.mark.spark, pytest.mark.slow]

VIEW, CART, BUY, RATE = (schema.EVENT_CODE[t] for t in schema.EVENT_TYPES)
NIGHTS = ("2026-11-21", "2026-11-23", "2026-11-24")  # 11-23 catches up with 11-22 too
LAST = NIGHTS[-1]
TABLES = (schema.QUARANTINE, schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


RAW_EVENTS = {
    "2026-11-19": [
        (at(19, 9), "u1", "i1", "view", None, "s1"),
        (at(19, 9, 10), "u1", "i2", "view", None, "s1"),
        (at(19, 9, 12), "u1", "i2", "add_to_cart", None, "s1"),
        (at(19, 9, 20), "u1", "i2", "purchase", 20.0, "s1"),
        (at(19, 12), "u2", "i1", "rating", 4.0, None),
    ],
    "2026-11-21": [
        (at(21, 10), "u1", "i3", "view", None, None),
        (at(21, 10), "u1", "i3", "view", None, None),  # a copy in the same partition
        (at(21, 10, 20), "u1", "i1", "view", None, None),
        (at(21, 18), "u3", "i2", "view", None, None),  # u3's only event for three nights
    ],
    "2026-11-22": [
        (at(22, 9), "u1", "i1", "view", None, "s7"),
        (at(21, 10, 20), "u1", "i1", "view", None, None),  # re-delivered a day later: a duplicate
        (at(22, 23, 50), "u4", "i1", "view", None, None),  # a user first seen tonight
        (at(22, 10), None, "i1", "view", None, None),
    ],
    "2026-11-23": [
        (at(21, 10, 25), "u1", "i1", "add_to_cart", None, None),  # 2 days late: inside u1's kept events
        (at(23, 8), "u1", "i4", "view", None, "s8"),  # i4: listed all along, first seen in an event today
        (at(23, 9), "u2", "i2", "view", None, None),
        (at(20, 23), "u2", "i1", "view", None, None),  # 3 days late: beyond the lookback
        (at(23, 9, 30), "u2", "i9", "view", None, None),  # unknown item
    ],
    "2026-11-24": [
        (at(22, 23, 50), "u4", "i1", "view", None, None),  # re-delivered two days later
        (at(23, 0, 5), "u4", "i1", "add_to_cart", None, None),  # 1 day late
        (at(24, 7), "u1", "i4", "purchase", 40.0, "s9"),
        (at(24, 12), "u3", "i3", "view", None, None),
        (at(25, 1), "u3", "i3", "view", None, None),  # after its partition's day
    ],
}
ITEMS = [
    ("i1", "c1", 10.0, True),
    ("i2", "c1", 20.0, True),
    ("i3", "c2", 30.0, True),
    ("i4", "c2", 40.0, True),
]


def write_arrow(rows, table: str, folder: Path) -> None:
    arrow_schema = schema.arrow_schema(table)
    records = [dict(zip(arrow_schema.names, row, strict=True)) for row in rows]
    storage.write_partition(pa.Table.from_pylist(records, schema=arrow_schema), folder)


def make_warehouse(root: Path) -> tuple[Config, str]:
    cfg = Config().replace(
        warehouse={"root": str(root / "warehouse")},
        etl={"max_len": 3, "train_window": "2d", "validation": "time", "val_days": 1, "lookback_days": 2},
        spark={"master": "local[1]", "shuffle_partitions": 1, "driver_memory": "1g"},
    )
    for day, rows in RAW_EVENTS.items():
        write_arrow(rows, schema.EVENTS, Path(cfg.layout.partition(schema.EVENTS, day)))
    write_arrow(ITEMS, schema.ITEMS, Path(cfg.layout.table(schema.ITEMS)))
    config_file = root / "dqlrec.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    return cfg, str(config_file)


def read(spark, cfg: Config, table: str, night: str):
    return spark.read.schema(schema.SPARK_DDL[table]).parquet(cfg.layout.partition(table, night))


def summary_of(cfg: Config, night: str) -> dict:
    path = Path(cfg.layout.etl_summary(night))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def local_nights(spark, tmp_path_factory):
    """The nights run incrementally in local mode: the config and every table, collected."""
    cfg, config_file = make_warehouse(tmp_path_factory.mktemp("local"))
    for night in NIGHTS:
        assert main(["--run-date", night, "--config", config_file]) == 0
    tables = {
        (table, night): read(spark, cfg, table, night).collect() for table in TABLES for night in NIGHTS
    }
    return cfg, config_file, tables


def test_incremental_nights_equal_a_full_rebuild(spark, local_nights):
    cfg, config_file, tables = local_nights
    last = summary_of(cfg, LAST)
    assert (last["mode"], last["previous_user_states"], last["transitions_seed_states"]) == (
        "incremental",
        "2026-11-23",
        "2026-11-21",
    )
    # Seeded by the states of 11-21, the night reads the partitions after them and 2 days of
    # lookback for the duplicates, not the partition of 11-19.
    assert last["partitions"] == {"read_from": "2026-11-20", "ingested_from": LAST, "through": LAST}

    assert main(["--run-date", LAST, "--config", config_file, "--full-rebuild"]) == 0

    assert summary_of(cfg, LAST)["mode"] == "full"
    for table in (schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS):
        assertDataFrameEqual(read(spark, cfg, table, LAST), tables[table, LAST])
    # Each raw row was ingested by exactly one night: the rebuild rejects what the nights did.
    rejected = [row for night in NIGHTS for row in tables[schema.QUARANTINE, night]]
    assertDataFrameEqual(read(spark, cfg, schema.QUARANTINE, LAST), rejected)
    # The spots where incremental processing could go wrong, spelled out.
    states = spark.createDataFrame(
        [
            # u1: the late cart of 11-21 precedes the kept events (first gap); copies count once.
            ("u1", [1, 4, 4], [VIEW, VIEW, BUY], [81_300.0, 82_800.0, 82_800.0], [2, 4], [1, 2, 3, 4], at(24, 7), 10),
            ("u2", [1, 2], [RATE, VIEW], [0.0, 334_800.0], [], [1, 2], at(23, 9), 2),
            ("u3", [2, 3], [VIEW, VIEW], [0.0, 237_600.0], [], [2, 3], at(24, 12), 2),
            ("u4", [1, 1], [VIEW, CART], [0.0, 900.0], [], [1], at(23, 0, 5), 2),
        ],
        schema.SPARK_DDL[schema.USER_STATES],
    )
    assertDataFrameEqual(read(spark, cfg, schema.USER_STATES, LAST), states)
    transitions = spark.createDataFrame(
        [
            ("u1", at(23, 8), [1, 1, 1], [VIEW, CART, VIEW], 4, "view", 0.0, True, "train", None, None),
            # The history before the window comes from the seed states' lists (u3: its 11-21 view).
            ("u1", at(24, 7), [1, 1, 4], [CART, VIEW, VIEW], 4, "purchase", 1.0, True, "validation", [1, 2, 3, 4], [2]),
            ("u2", at(23, 9), [1], [RATE], 2, "view", 0.0, True, "train", None, None),
            ("u3", at(24, 12), [2], [VIEW], 3, "view", 0.0, True, "validation", [2], []),
            ("u4", at(23, 0, 5), [1], [VIEW], 1, "add_to_cart", 0.3, True, "train", None, None),
        ],
        schema.SPARK_DDL[schema.TRANSITIONS],
    )
    assertDataFrameEqual(read(spark, cfg, schema.TRANSITIONS, LAST), transitions)


CLUSTER_DRIVER = textwrap.dedent(
    """
    import sys
    from jobs.build_training_data import main
    from tests.factories import local_cluster_session

    config_file, *nights = sys.argv[1:]
    spark = local_cluster_session("dqlrec-local-cluster-test", **{"spark.sql.shuffle.partitions": "4"})
    for night in nights:
        main(["--run-date", night, "--config", config_file])
    spark.stop()
    """
)


def test_a_multi_process_cluster_writes_what_local_mode_writes(spark, local_nights, tmp_path):
    """The first night, then the last one straight away: a catch-up over three days' partitions."""
    _, _, local_tables = local_nights
    cfg, config_file = make_warehouse(tmp_path)
    first, last = NIGHTS[0], NIGHTS[-1]
    done = subprocess.run(
        [sys.executable, "-c", CLUSTER_DRIVER, config_file, first, last],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "master local-cluster[2,1,1024], executors 2" in done.stdout

    for table in TABLES:
        assertDataFrameEqual(read(spark, cfg, table, first), local_tables[table, first])
    for table in (schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS):
        assertDataFrameEqual(read(spark, cfg, table, last), local_tables[table, last])
    # The catch-up ingested the partitions of three nights: it quarantined what they did.
    quarantined = [row for night in NIGHTS[1:] for row in local_tables[schema.QUARANTINE, night]]
    assertDataFrameEqual(read(spark, cfg, schema.QUARANTINE, last), quarantined)
    summary = summary_of(cfg, last)
    assert (summary["mode"], summary["previous_user_states"], summary["partitions"]["ingested_from"]) == (
        "incremental",
        first,
        "2026-11-22",
    )
