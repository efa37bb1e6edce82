"""End to end: jobs.build_training_data.main on a tiny Parquet warehouse, two nights and a rerun.

tests/spark/test_incremental_nights.py compares the incremental nights with full rebuilds."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from pyspark.testing import assertDataFrameEqual

from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.warehouse import storage
from jobs.build_training_data import STATES_FORMAT, Plan, main, plan_run
from jobs.common import SparkJobFailed

pytestmark = [pytest.mark.spark, pytest.mark.slow]

VIEW, CART, BUY, RATE = (schema.EVENT_CODE[t] for t in schema.EVENT_TYPES)
CURATED = (schema.QUARANTINE, schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS)
NIGHT1, NIGHT2 = "2026-11-26", "2026-11-27"


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


RAW_EVENTS = {
    "2026-11-25": [
        (at(25, 10), "u1", "i1", "view", None, "a1"),
        (at(25, 10, 5), "u1", "i2", "add_to_cart", None, "a1"),
        (at(25, 10, 5), "u1", "i2", "add_to_cart", None, "a1"),  # exact duplicate
        (at(25, 11), None, "i1", "view", None, None),  # missing user
    ],
    "2026-11-26": [
        (at(26, 9), "u1", "i2", "purchase", 20.0, None),  # no session id: inferred
        (at(26, 9, 10), "u2", "i3", "rating", 4.0, None),  # a user with a single event
        (at(26, 9, 20), "u2", "i9", "view", None, None),  # unknown item
    ],
    "2026-11-27": [
        (at(27, 8), "u3", "i4", "view", None, None),  # an item first seen today
        (at(27, 8, 30), "u1", "i1", "view", None, None),
        (at(28, 2), "u1", "i1", "view", None, None),  # in the future of the run date
    ],
    "2026-11-28": [(at(28, 9), "u2", "i1", "view", None, None)],  # a later partition: never read
}
ITEMS_NIGHT1 = [("i1", "c1", 10.0, True), ("i2", "c1", 20.0, True), ("i3", "c2", 30.0, True)]
ITEMS_NIGHT2 = [*ITEMS_NIGHT1, ("i4", "c2", 40.0, True)]


def write_arrow(rows, table: str, folder: Path) -> None:
    arrow_schema = schema.arrow_schema(table)
    records = [dict(zip(arrow_schema.names, row, strict=True)) for row in rows]
    storage.write_partition(pa.Table.from_pylist(records, schema=arrow_schema), folder)


@pytest.fixture
def warehouse(tiny_config, tmp_path):
    for day, rows in RAW_EVENTS.items():
        write_arrow(
            rows, schema.EVENTS, Path(tiny_config.layout.partition(schema.EVENTS, day))
        )
    write_arrow(ITEMS_NIGHT1, schema.ITEMS, Path(tiny_config.layout.table(schema.ITEMS)))
    config_file = tmp_path / "dqlrec.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config.to_dict()))
    return tiny_config, str(config_file)


def read(spark, cfg, table: str, run_date: str):
    return spark.read.schema(schema.SPARK_DDL[table]).parquet(cfg.layout.partition(table, run_date))


def summary_of(cfg, run_date: str) -> dict:
    path = Path(cfg.layout.etl_summary(run_date))
    return json.loads(path.read_text())


def test_two_nights_and_a_rerun(spark, warehouse, capsys):
    cfg, config_file = warehouse

    assert main(["--run-date", NIGHT1, "--config", config_file]) == 0
    night1_index = spark.createDataFrame(
        [
            ("i1", 1, "c1", 10.0, True, dt.date(2026, 11, 25)),
            ("i2", 2, "c1", 20.0, True, dt.date(2026, 11, 25)),
            ("i3", 3, "c2", 30.0, True, dt.date(2026, 11, 26)),
        ],
        schema.SPARK_DDL[schema.ITEM_INDEX],
    )
    assertDataFrameEqual(read(spark, cfg, schema.ITEM_INDEX, NIGHT1), night1_index)
    night1 = summary_of(cfg, NIGHT1)
    assert night1["mode"] == "full"  # the first night
    assert night1["counts"]["input_events"] == 7  # partitions 11-25 and 11-26 only
    assert night1["counts"]["quarantined"] == {
        **NO_RULES,
        schema.RULE_NULL_ID: 1,
        schema.RULE_UNKNOWN_ITEM: 1,
        schema.RULE_DUPLICATE: 1,
    }

    write_arrow(ITEMS_NIGHT2, schema.ITEMS, Path(cfg.layout.table(schema.ITEMS)))
    assert main(["--run-date", NIGHT2, "--config", config_file]) == 0
    printed = capsys.readouterr().out
    # Incremental: tonight ingests (counts, cleans, quarantines) only its own partition.
    assert f"[build_training_data {NIGHT2}] input 3 events: accepted 2, quarantined 1" in printed
    assert "rule event_time_out_of_range" in printed

    expect_night2_tables(spark, cfg)
    summary = summary_of(cfg, NIGHT2)
    assert (summary["mode"], summary["previous_user_states"]) == ("incremental", NIGHT1)
    counts = summary["counts"]
    assert counts == {
        "input_events": 3,
        "accepted": 2,
        "quarantined": {**NO_RULES, schema.RULE_TIME_OUT_OF_RANGE: 1},
        "quarantined_total": 1,
        "duplicates": 0,
        "items": 4,
        "new_items": 1,
        "users": 3,
        "transitions_train": 4,
        "transitions_validation": 2,
    }

    before = {table: read(spark, cfg, table, NIGHT2).collect() for table in CURATED}
    summary_before = summary_of(cfg, NIGHT2)
    assert main(["--run-date", NIGHT2, "--config", config_file]) == 0
    for table in CURATED:
        assertDataFrameEqual(read(spark, cfg, table, NIGHT2), before[table])
        table_root = Path(cfg.layout.partition(table, NIGHT2)).parent
        assert sorted(p.name for p in table_root.iterdir()) == [f"run_date={NIGHT1}", f"run_date={NIGHT2}"]
    assert summary_of(cfg, NIGHT2) == summary_before


NO_RULES = dict.fromkeys(
    (
        schema.RULE_NULL_ID,
        schema.RULE_BAD_EVENT_TYPE,
        schema.RULE_UNKNOWN_ITEM,
        schema.RULE_BAD_VALUE,
        schema.RULE_TIME_OUT_OF_RANGE,
        schema.RULE_DUPLICATE,
    ),
    0,
)


def expect_night2_tables(spark, cfg) -> None:
    # Only what tonight's partition brought: earlier rejects are in earlier nights' partitions.
    quarantine = [
        (at(28, 2), "u1", "i1", "view", None, None, schema.RULE_TIME_OUT_OF_RANGE, "event_date=2026-11-27")
    ]
    index = [
        ("i1", 1, "c1", 10.0, True, dt.date(2026, 11, 25)),
        ("i2", 2, "c1", 20.0, True, dt.date(2026, 11, 25)),
        ("i3", 3, "c2", 30.0, True, dt.date(2026, 11, 26)),
        ("i4", 4, "c2", 40.0, True, dt.date(2026, 11, 27)),  # appended, old indices unchanged
    ]
    states = [
        (
            "u1",
            [1, 2, 2, 1],
            [VIEW, CART, BUY, VIEW],
            [0.0, 300.0, 82_500.0, 84_600.0],
            [2],
            [1, 2],
            at(27, 8, 30),
            4,
        ),
        ("u2", [3], [RATE], [0.0], [], [3], at(26, 9, 10), 1),
        ("u3", [4], [VIEW], [0.0], [], [4], at(27, 8), 1),
    ]
    # Window 11-23..11-27 (train_window 5 days), validation on 11-27 (val_days=1), max_len=8.
    # Validation rows carry the user's whole history before them: what the evaluation masks.
    transitions = [
        ("u1", at(25, 10), [], [], 1, "view", 0.0, False, "train", None, None),
        ("u1", at(25, 10, 5), [1], [VIEW], 2, "add_to_cart", 0.3, True, "train", None, None),  # new session next
        ("u1", at(26, 9), [1, 2], [VIEW, CART], 2, "purchase", 1.0, True, "train", None, None),  # 23 h gap
        ("u1", at(27, 8, 30), [1, 2, 2], [VIEW, CART, BUY], 1, "view", 0.0, True, "validation", [1, 2], [2]),
        ("u2", at(26, 9, 10), [], [], 3, "rating", 0.5, True, "train", None, None),
        ("u3", at(27, 8), [], [], 4, "view", 0.0, True, "validation", [], []),  # no history before it
    ]
    for table, rows in [
        (schema.QUARANTINE, quarantine),
        (schema.ITEM_INDEX, index),
        (schema.USER_STATES, states),
        (schema.TRANSITIONS, transitions),
    ]:
        assertDataFrameEqual(
            read(spark, cfg, table, NIGHT2), spark.createDataFrame(rows, schema.SPARK_DDL[table])
        )


def test_missing_input_and_bad_arguments_name_the_problem(spark, tiny_config, tmp_path, capsys):
    config_file = tmp_path / "dqlrec.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config.to_dict()))
    events_root = tiny_config.layout.table(schema.EVENTS)
    with pytest.raises(MissingInput, match="the table has no event_date partitions"):
        main(["--run-date", NIGHT2, "--config", str(config_file)])
    write_arrow(RAW_EVENTS[NIGHT1], schema.EVENTS, Path(tiny_config.layout.partition(schema.EVENTS, NIGHT1)))
    with pytest.raises(
        MissingInput,
        match=f"no events partition event_date={NIGHT2} under {events_root}; the last loaded day is {NIGHT1}",
    ):
        main(["--run-date", NIGHT2, "--config", str(config_file)])
    with pytest.raises(SystemExit):
        main(["--run-date", "27/11/2026"])
    assert "expected a calendar date as YYYY-MM-DD, got '27/11/2026'" in capsys.readouterr().err


def test_the_plan_builds_on_the_latest_states_made_with_the_same_settings(spark, tiny_config):
    cfg = tiny_config.replace(etl={"train_window": "3d", "lookback_days": 2})
    run_date = dt.date(2026, 11, 27)
    window_start = dt.date(2026, 11, 25)

    def night(day: str, **etl) -> None:
        Path(cfg.layout.partition(schema.USER_STATES, day)).mkdir(parents=True)
        settings = {"max_len": cfg.etl.max_len, "lookback_days": cfg.etl.lookback_days, "states_format": STATES_FORMAT}
        summary = {"etl": {**settings, **etl}}
        path = Path(cfg.layout.etl_summary(day))
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(summary))

    assert plan_run(spark, cfg, run_date, window_start) == Plan(
        "full", "no user_states partition before the run date (first night)"
    )
    night("2026-11-23")
    night("2026-11-24", max_len=cfg.etl.max_len + 1)  # built with other settings: not usable
    night("2026-11-25", states_format=STATES_FORMAT - 1)  # states without `interacted`: not usable
    night("2026-11-26")
    night("2026-11-27")  # the run date itself (a rerun): never its own base
    plan = plan_run(spark, cfg, run_date, window_start)
    assert (plan.mode, plan.previous_states, plan.seed_states) == (
        "incremental",
        dt.date(2026, 11, 26),
        dt.date(2026, 11, 23),
    )
    assert (plan.ingest_from(), plan.transitions_from(), plan.read_from(2)) == (
        run_date,
        dt.date(2026, 11, 24),
        dt.date(2026, 11, 22),
    )
    assert plan_run(spark, cfg.replace(etl={"max_len": 3}), run_date, window_start).mode == "full"
    assert plan_run(spark, cfg.replace(etl={"incremental": False}), run_date, window_start).mode == "full"


def test_a_file_spark_cannot_read_is_named_in_the_last_line(spark, warehouse, capsys):
    cfg, config_file = warehouse
    broken = Path(cfg.layout.partition(schema.EVENTS, NIGHT1)) / "part-00001.parquet"
    broken.write_bytes(b"PAR1 this is not a Parquet file PAR1")

    with pytest.raises(SparkJobFailed) as failure:
        main(["--run-date", NIGHT1, "--config", config_file])

    assert str(failure.value).startswith(f"[build_training_data {NIGHT1}] failed: ")
    assert "part-00001.parquet" in str(failure.value)
    assert capsys.readouterr().err.strip().splitlines()[-1] == str(failure.value)  # the last word
    assert not Path(cfg.layout.partition(schema.TRANSITIONS, NIGHT1)).exists()  # nothing half written
