"""jobs.user_states: last L events oldest first, event codes, gaps, purchases, history totals."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from dql_model.contract import schema
from jobs.user_states import build_user_states, update_user_states

pytestmark = pytest.mark.spark

VIEW, CART, BUY, RATE = (schema.EVENT_CODE[t] for t in schema.EVENT_TYPES)
D19, D20 = dt.date(2026, 11, 19), dt.date(2026, 11, 20)


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
            ("u1", [2, 3, 1, 1], [VIEW, VIEW, BUY, BUY], [240.0, 0.0, 60.0, 60.0], [1, 3], [1, 2, 3], at(20, 10, 7), 7),
            ("u2", [2], [RATE], [0.0], [], [2], at(19, 8), 1),
        ],
        schema.SPARK_DDL[schema.USER_STATES],
    )
    assertDataFrameEqual(states, expected)


def test_update_from_yesterdays_states_equals_a_rebuild_from_history(spark, item_index):
    ddl = schema.SPARK_DDL[schema.EVENTS]
    history = [
        (at(18, 9), "u1", "i1", "view", None, "s1"),  # the predecessor of the kept events
        (at(19, 9), "u1", "i2", "view", None, "s2"),
        (at(19, 10), "u1", "i2", "purchase", 20.0, "s2"),
        (at(19, 12), "u1", "i3", "view", None, "s3"),
        (at(19, 8), "u2", "i1", "rating", 5.0, None),  # a user with a single event
        (at(19, 7), "u3", "i3", "view", None, "s4"),  # no new events: kept as is
    ]
    today = [
        (at(19, 11), "u1", "i1", "add_to_cart", None, "s2"),  # late: lands inside the kept events
        (at(18, 20), "u1", "i3", "view", None, "s1"),  # late: older than every kept event
        (at(20, 8), "u1", "i3", "purchase", 30.0, "s5"),
        (at(20, 9), "u2", "i2", "view", None, None),
        (at(20, 9), "u4", "i3", "view", None, None),  # a user first seen today
        (at(21, 0), "u4", "i1", "view", None, None),  # after as_of: ignored
    ]
    previous = build_user_states(
        spark.createDataFrame(history, ddl), item_index=item_index, max_len=3, as_of=D19
    )

    updated = update_user_states(
        previous, spark.createDataFrame(today, ddl), item_index=item_index, max_len=3, as_of=D20
    )

    assertSchemaEqual(updated.schema, StructType.fromDDL(schema.SPARK_DDL[schema.USER_STATES]))
    expected = spark.createDataFrame(
        [
            # The late cart sits between 19-10:00 and 19-12:00; the late 18-20:00 view only counts.
            ("u1", [1, 3, 3], [CART, VIEW, BUY], [3600.0, 3600.0, 72_000.0], [2, 3], [1, 2, 3], at(20, 8), 7),
            ("u2", [1, 2], [RATE, VIEW], [0.0, 90_000.0], [], [1, 2], at(20, 9), 2),
            ("u3", [3], [VIEW], [0.0], [], [3], at(19, 7), 1),
            ("u4", [3], [VIEW], [0.0], [], [3], at(20, 9), 1),
        ],
        schema.SPARK_DDL[schema.USER_STATES],
    )
    assertDataFrameEqual(updated, expected)
    rebuilt = build_user_states(
        spark.createDataFrame(history + today, ddl), item_index=item_index, max_len=3, as_of=D20
    )
    assertDataFrameEqual(rebuilt, expected)


def test_a_late_event_before_the_kept_events_changes_only_the_first_gap(spark, item_index):
    ddl = schema.SPARK_DDL[schema.EVENTS]
    history = [
        (at(18, 9), "u1", "i1", "view", None, "s1"),
        (at(19, 9), "u1", "i2", "view", None, "s2"),
        (at(19, 9, 30), "u1", "i3", "view", None, "s2"),
    ]
    late = [(at(19, 8), "u1", "i3", "add_to_cart", None, "s2")]  # between 18-09:00 and 19-09:00
    previous = build_user_states(
        spark.createDataFrame(history, ddl), item_index=item_index, max_len=2, as_of=D19
    )

    updated = update_user_states(
        previous, spark.createDataFrame(late, ddl), item_index=item_index, max_len=2, as_of=D20
    )

    expected = spark.createDataFrame(
        [("u1", [2, 3], [VIEW, VIEW], [3600.0, 1800.0], [], [1, 2, 3], at(19, 9, 30), 4)],
        schema.SPARK_DDL[schema.USER_STATES],
    )
    assertDataFrameEqual(updated, expected)
    assertDataFrameEqual(
        build_user_states(
            spark.createDataFrame(history + late, ddl), item_index=item_index, max_len=2, as_of=D20
        ),
        expected,
    )
