"""jobs.clean_events: every rule, the rule order, duplicates, and input = accepted + quarantined."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from dql_model.contract import schema
from jobs.clean_events import clean_events

pytestmark = pytest.mark.spark

RAW_DDL = f"{schema.SPARK_DDL[schema.EVENTS]}, {schema.EVENT_DATE} DATE"
D20, D21 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def items(spark):
    return spark.createDataFrame(
        [("i1", "c1", 10.0, True), ("i2", "c1", 20.0, True), ("i3", None, None, False)],
        schema.SPARK_DDL[schema.ITEMS],
    )


def test_each_rule_first_failure_wins_and_copies_are_quarantined(spark, items):
    ok = (at(20, 10), "u1", "i1", "view", None, "s1")
    rows = [
        (*ok, D20),
        (*ok, D21),  # the same event delivered again the next day: a duplicate
        (*ok, D20),  # and a second copy in the same partition
        (at(20, 11), None, "i1", "view", None, "s1", D20),
        (at(20, 11), "u1", "", "view", None, "s1", D20),  # blank id counts as missing
        (None, "u1", "i1", "view", None, "s1", D20),
        (at(20, 12), None, "i1", "click", None, None, D20),  # null id and bad type: null_id first
        (at(20, 12), None, "i1", "click", None, None, D20),  # a copy of a rejected row keeps its rule
        (at(20, 13), "u2", "i1", "click", None, None, D20),
        (at(20, 13), "u2", "i1", None, None, None, D20),
        (at(20, 14), "u2", "zz", "view", None, None, D20),
        (at(20, 14), "u2", "zz", "click", None, None, D20),  # bad type comes before unknown item
        (at(22, 0), "u2", "i2", "view", None, None, D21),  # first instant after the run date
        (at(22, 0), "u2", "zz", "view", None, None, D21),  # unknown item comes before the time rule
        (at(21, 23, 59, 59), "u2", "i2", "purchase", 20.0, None, D21),  # last second of the run date
        (at(21, 9), "u3", "i3", "rating", 4.0, None, D21),  # an unavailable item is still known
        (at(21, 9, 30), "u3", "i1", "rating", 7.0, None, D21),  # rating outside [1, 5]
        (at(21, 9, 31), "u3", "i1", "rating", None, None, D21),  # rating without a value
        (at(21, 9, 32), "u3", "zz", "rating", 9.0, None, D21),  # unknown item comes before bad value
    ]
    events = spark.createDataFrame(rows, RAW_DDL)

    accepted, quarantine = clean_events(events, items=items, run_date="2026-11-21")

    assertSchemaEqual(accepted.schema, StructType.fromDDL(schema.SPARK_DDL[schema.EVENTS]))
    assertSchemaEqual(quarantine.schema, StructType.fromDDL(schema.SPARK_DDL[schema.QUARANTINE]))
    expected_accepted = spark.createDataFrame(
        [
            ok,
            (at(21, 23, 59, 59), "u2", "i2", "purchase", 20.0, None),
            (at(21, 9), "u3", "i3", "rating", 4.0, None),
        ],
        schema.SPARK_DDL[schema.EVENTS],
    )
    p20, p21 = "event_date=2026-11-20", "event_date=2026-11-21"
    expected_quarantine = spark.createDataFrame(
        [
            (*ok, schema.RULE_DUPLICATE, p21),
            (*ok, schema.RULE_DUPLICATE, p20),
            (at(20, 11), None, "i1", "view", None, "s1", schema.RULE_NULL_ID, p20),
            (at(20, 11), "u1", "", "view", None, "s1", schema.RULE_NULL_ID, p20),
            (None, "u1", "i1", "view", None, "s1", schema.RULE_NULL_ID, p20),
            (at(20, 12), None, "i1", "click", None, None, schema.RULE_NULL_ID, p20),
            (at(20, 12), None, "i1", "click", None, None, schema.RULE_NULL_ID, p20),
            (at(20, 13), "u2", "i1", "click", None, None, schema.RULE_BAD_EVENT_TYPE, p20),
            (at(20, 13), "u2", "i1", None, None, None, schema.RULE_BAD_EVENT_TYPE, p20),
            (at(20, 14), "u2", "zz", "view", None, None, schema.RULE_UNKNOWN_ITEM, p20),
            (at(20, 14), "u2", "zz", "click", None, None, schema.RULE_BAD_EVENT_TYPE, p20),
            (at(22, 0), "u2", "i2", "view", None, None, schema.RULE_TIME_OUT_OF_RANGE, p21),
            (at(21, 9, 30), "u3", "i1", "rating", 7.0, None, schema.RULE_BAD_VALUE, p21),
            (at(21, 9, 31), "u3", "i1", "rating", None, None, schema.RULE_BAD_VALUE, p21),
            (at(21, 9, 32), "u3", "zz", "rating", 9.0, None, schema.RULE_UNKNOWN_ITEM, p21),
            (at(22, 0), "u2", "zz", "view", None, None, schema.RULE_UNKNOWN_ITEM, p21),
        ],
        schema.SPARK_DDL[schema.QUARANTINE],
    )
    assertDataFrameEqual(accepted, expected_accepted)
    assertDataFrameEqual(quarantine, expected_quarantine)
    assert accepted.count() + quarantine.count() == len(rows)


def test_lookback_rejects_late_arrivals_relative_to_their_partition(spark, items):
    events = spark.createDataFrame(
        [
            (at(19, 23, 59), "u1", "i1", "view", None, None, D21),  # 2 days late, over the 1-day tolerance
            (at(20, 0), "u1", "i1", "view", None, None, D21),  # exactly 1 day late
            (at(19, 8), "u1", "i2", "view", None, None, D20),  # 1 day late in its own partition
        ],
        RAW_DDL,
    )

    accepted, quarantine = clean_events(events, items=items, run_date=D21, lookback_days=1)

    assertDataFrameEqual(
        accepted,
        spark.createDataFrame(
            [(at(20, 0), "u1", "i1", "view", None, None), (at(19, 8), "u1", "i2", "view", None, None)],
            schema.SPARK_DDL[schema.EVENTS],
        ),
    )
    assertDataFrameEqual(
        quarantine,
        spark.createDataFrame(
            [
                (
                    at(19, 23, 59),
                    "u1",
                    "i1",
                    "view",
                    None,
                    None,
                    schema.RULE_TIME_OUT_OF_RANGE,
                    "event_date=2026-11-21",
                )
            ],
            schema.SPARK_DDL[schema.QUARANTINE],
        ),
    )


def test_frames_without_a_partition_column_have_no_source_partition(spark, items):
    events = spark.createDataFrame(
        [(at(20, 10), "u1", "i9", "view", None, None), (at(20, 10), "u1", "i1", "view", None, None)],
        schema.SPARK_DDL[schema.EVENTS],
    )

    accepted, quarantine = clean_events(events, items=items, run_date=D21)

    assert quarantine.select(schema.RULE, schema.SOURCE_PARTITION).collect() == [
        (schema.RULE_UNKNOWN_ITEM, None)
    ]
    assertDataFrameEqual(
        accepted,
        spark.createDataFrame(
            [(at(20, 10), "u1", "i1", "view", None, None)], schema.SPARK_DDL[schema.EVENTS]
        ),
    )


def test_verdicts_depend_on_the_partition_not_on_the_night_that_reads_it(spark, items):
    events = spark.createDataFrame(
        [
            (at(21, 9), "u1", "i1", "view", None, None, D20),  # claims to happen after it arrived
            (at(20, 9), "u1", "i1", "view", None, None, D20),
            (at(20, 9), "u1", "i1", "view", None, None, D21),  # re-delivered the next day
            (at(20, 10), "u1", "i2", "view", None, None, D21),  # late by one day, tolerated
        ],
        RAW_DDL,
    )

    for run_date in (D21, dt.date(2026, 11, 25)):
        accepted, quarantine = clean_events(
            events, items=items, run_date=run_date, lookback_days=1, keep_event_date=True
        )

        assertDataFrameEqual(
            accepted,
            spark.createDataFrame(
                [
                    (at(20, 9), "u1", "i1", "view", None, None, D20),
                    (at(20, 10), "u1", "i2", "view", None, None, D21),
                ],
                RAW_DDL,
            ),
        )
        assertDataFrameEqual(
            quarantine,
            spark.createDataFrame(
                [
                    (
                        at(21, 9),
                        "u1",
                        "i1",
                        "view",
                        None,
                        None,
                        schema.RULE_TIME_OUT_OF_RANGE,
                        "event_date=2026-11-20",
                    ),
                    (
                        at(20, 9),
                        "u1",
                        "i1",
                        "view",
                        None,
                        None,
                        schema.RULE_DUPLICATE,
                        "event_date=2026-11-21",
                    ),
                ],
                schema.SPARK_DDL[schema.QUARANTINE],
            ),
        )
