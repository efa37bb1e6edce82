"""jobs.sessions.sessionize: inferred sessions by inactivity gap, tracked sessions kept."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.testing import assertDataFrameEqual

from dql_model.contract import schema
from jobs.sessions import sessionize

pytestmark = pytest.mark.spark


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, 20, hour, minute, tzinfo=dt.UTC)


def inferred(user: str, start: dt.datetime) -> str:
    micros = int(start.timestamp()) * 1_000_000
    return f"inferred:{user}:{micros}"


def test_null_sessions_split_on_gaps_and_tracked_sessions(spark):
    events = spark.createDataFrame(
        [
            (at(10, 0), "u1", "i1", "view", None, None),
            (at(10, 20), "u1", "i2", "view", None, None),  # 20 min: same session
            (at(10, 51), "u1", "i1", "add_to_cart", None, None),  # 31 min > 30: new session
            (at(11, 0), "u1", "i1", "purchase", 10.0, "T1"),  # tracked: kept as is
            (at(11, 5), "u1", "i2", "view", None, None),  # after a tracked event: new session
            (at(11, 35), "u1", "i3", "view", None, None),  # exactly 30 min: same session
            (at(9, 0), "u2", "i1", "view", None, None),  # a user with a single event
            (at(9, 0), "u3", "i1", "view", None, "T9"),
        ],
        schema.SPARK_DDL[schema.EVENTS],
    )

    result = sessionize(events, gap_minutes=30)

    assert result.columns == events.columns
    expected = spark.createDataFrame(
        [
            (at(10, 0), "u1", "i1", "view", None, inferred("u1", at(10, 0))),
            (at(10, 20), "u1", "i2", "view", None, inferred("u1", at(10, 0))),
            (at(10, 51), "u1", "i1", "add_to_cart", None, inferred("u1", at(10, 51))),
            (at(11, 0), "u1", "i1", "purchase", 10.0, "T1"),
            (at(11, 5), "u1", "i2", "view", None, inferred("u1", at(11, 5))),
            (at(11, 35), "u1", "i3", "view", None, inferred("u1", at(11, 5))),
            (at(9, 0), "u2", "i1", "view", None, inferred("u2", at(9, 0))),
            (at(9, 0), "u3", "i1", "view", None, "T9"),
        ],
        schema.SPARK_DDL[schema.EVENTS],
    )
    assertDataFrameEqual(result, expected)
