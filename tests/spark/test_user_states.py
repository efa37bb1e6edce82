"""jobs.user_states: last L events oldest first, event codes, gaps, purchases, history totals."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from dql_model import schema
from jobs.user_states import build_user_states

pytestmark = pytest.mark.spark

VIEW, CART, BUY, RATE = (schema.EVENT_CODE[t] for t in schema.EVENT_TYPES)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def item_index(spark):
    return spark.createDataFrame(
        [(f"i{n}", n, None, None, True, dt.date(2026, 11, 1)) for n in (1, 2, 3)],
        schema.SPARK_DDL[schema.ITEM_INDEX],
    )


def test_last_events_oldest_first_with_codes_gaps_and_purchases(spark, item_index):
    events = spark.createDataFrame(
        [
            (at(20, 10, 1), "u1", "i3", "purchase", 30.0, "s1"),
            (at(20, 10, 0, 30), "u1", "i1", "add_to_cart", None, "s1"),
            (at(20, 10), "u1", "i1", "view", None, "s1"),
            (at(20, 10, 5), "u1", "i3", "view", None, "s1"),  # same time as the next: i2 sorts first
            (at(20, 10, 5), "u1", "i2", "view", None, "s1"),
            (at(20, 10, 6), "u1", "i1", "purchase", 10.0, "s1"),
            (at(20, 10, 7), "u1", "i1", "purchase", 10.0, "s1"),  # bought again: purchased stays distinct
            (at(21, 0), "u1", "i2", "purchase", 20.0, "s2"),  # after as_of: ignored
            (at(19, 8), "u2", "i2", "rating", 2.0, "s3"),  # a user with a single event
        ],
        schema.SPARK_DDL[schema.EVENTS],
    )

    states = build_user_states(events, item_index=item_index, max_len=4, as_of="2026-11-20")

    assertSchemaEqual(states.schema, StructType.fromDDL(schema.SPARK_DDL[schema.USER_STATES]))
    expected = spark.createDataFrame(
        [
            ("u1", [2, 3, 1, 1], [VIEW, VIEW, BUY, BUY], [240.0, 0.0, 60.0, 60.0], [1, 3], at(20, 10, 7), 7),
            ("u2", [2], [RATE], [0.0], [], at(19, 8), 1),
        ],
        schema.SPARK_DDL[schema.USER_STATES],
    )
    assertDataFrameEqual(states, expected)
