"""Give every event a session: keep the tracker's session_id, infer the missing ones by inactivity."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dql_model.contract import schema
from jobs.common import EVENT_CODE_COL, event_code, event_order, seconds_between

INFERRED_PREFIX = "inferred"
"""Inferred ids read ``inferred:<user_id>:<session start in epoch microseconds>``."""


def sessionize(events: DataFrame, *, gap_minutes: int) -> DataFrame:
    """Fill null ``session_id``s; same columns out as in, rows with a session_id untouched.

    A user's events are taken in event order. An event without a session_id starts a new
    inferred session when it is the user's first event, when more than ``gap_minutes`` passed
    since the user's previous event, or when the previous event belongs to a tracked session;
    otherwise it joins the inferred session of the previous event. The inferred id is derived
    from the user and the session's first event time, so a rerun gives the same ids.
    """
    if gap_minutes <= 0:
        raise ValueError(f"gap_minutes must be > 0, got {gap_minutes}")
    by_user = Window.partitionBy(schema.USER_ID).orderBy(*event_order())
    up_to_here = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)

    previous_time = F.lag(schema.EVENT_TIME).over(by_user)
    previous_session = F.lag(schema.SESSION_ID).over(by_user)
    starts_session = F.col(schema.SESSION_ID).isNull() & (
        previous_time.isNull()
        | (seconds_between(F.col(schema.EVENT_TIME), previous_time) > gap_minutes * 60)
        | previous_session.isNotNull()
    )
    inferred_id = F.concat_ws(
        ":",
        F.lit(INFERRED_PREFIX),
        F.col(schema.USER_ID),
        F.unix_micros(F.col("_session_start")).cast("string"),
    )
    return (
        events.withColumn(EVENT_CODE_COL, event_code(F.col(schema.EVENT_TYPE)))
        .withColumn("_starts", starts_session)
        .withColumn(
            "_session_start",
            F.last(F.when(F.col("_starts"), F.col(schema.EVENT_TIME)), ignorenulls=True).over(up_to_here),
        )
        .withColumn(schema.SESSION_ID, F.coalesce(F.col(schema.SESSION_ID), inferred_id))
        .select(*events.columns)
    )
