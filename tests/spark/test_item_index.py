"""jobs.item_index: 1-based, append-only, stable across nights, features from tonight's catalogue."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from dql_model.contract import schema
from jobs.item_index import build_item_index

pytestmark = pytest.mark.spark

ITEM_INDEX = schema.SPARK_DDL[schema.ITEM_INDEX]
D19, D20, D21 = dt.date(2026, 11, 19), dt.date(2026, 11, 20), dt.date(2026, 11, 21)


def at(day: int, hour: int) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC)


def events(spark, rows):
    return spark.createDataFrame(
        [(t, "u1", item, "view", None, "s") for t, item in rows], schema.SPARK_DDL[schema.EVENTS]
    )


def items(spark, rows):
    return spark.createDataFrame(rows, schema.SPARK_DDL[schema.ITEMS])


def test_two_nights_keep_old_indices_and_append_new_ones(spark):
    night1 = build_item_index(
        items(spark, [("i1", "a", 10.0, True), ("i2", "b", 20.0, True), ("i3", "b", None, True)]),
        previous_index=None,
        events=events(spark, [(at(19, 9), "i1"), (at(19, 8), "i2"), (at(20, 7), "i2")]),
        run_date=D20,
    )
    expected1 = spark.createDataFrame(
        [
            ("i2", 1, "b", 20.0, True, D19),  # first seen earliest
            ("i1", 2, "a", 10.0, True, D19),
            ("i3", 3, "b", None, True, D20),  # catalogue only: after seen items, first seen tonight
        ],
        ITEM_INDEX,
    )
    assertSchemaEqual(night1.schema, StructType.fromDDL(ITEM_INDEX))
    assertDataFrameEqual(night1, expected1)

    night2 = build_item_index(
        items(
            spark,
            [
                ("i1", "a", 12.0, True),  # price changed
                ("i3", "b", 5.0, False),  # now unavailable
                ("i4", "c", 1.0, True),  # new, no events yet
                ("i6", "c", 2.0, True),  # new, first seen today (later than i5)
                ("i5", "c", 3.0, True),  # new, first seen today
                ("i5", "c", 3.0, None),  # listed twice: the available row wins
            ],
        ),  # i2 left the catalogue
        previous_index=expected1,
        events=events(spark, [(at(21, 9), "i6"), (at(21, 8), "i5"), (at(21, 10), "i1")]),
        run_date=D21,
    )
    expected2 = spark.createDataFrame(
        [
            ("i2", 1, "b", 20.0, False, D19),  # kept, last known features, unavailable
            ("i1", 2, "a", 12.0, True, D19),
            ("i3", 3, "b", 5.0, False, D20),
            ("i5", 4, "c", 3.0, True, D21),
            ("i6", 5, "c", 2.0, True, D21),
            ("i4", 6, "c", 1.0, True, D21),
        ],
        ITEM_INDEX,
    )
    assertDataFrameEqual(night2, expected2)


def test_rebuilding_a_night_gives_the_same_index(spark):
    catalogue = items(spark, [("b", None, None, True), ("a", None, None, True)])
    seen = events(spark, [(at(20, 9), "a")])
    first = build_item_index(catalogue, previous_index=None, events=seen, run_date=D20)
    again = build_item_index(catalogue, previous_index=None, events=seen.union(seen), run_date=D20)
    expected = spark.createDataFrame(
        [("a", 1, None, None, True, D20), ("b", 2, None, None, True, D20)], ITEM_INDEX
    )
    assertDataFrameEqual(first, expected)
    assertDataFrameEqual(again, expected)
