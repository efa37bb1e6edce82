"""Per-user state for scoring: the last L interactions as arrays, plus what scoring must mask."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dql_model import schema
from jobs.common import (
    EVENT_CODE_COL,
    day_end_utc,
    event_order,
    seconds_between,
    to_contract,
    with_item_idx_and_code,
)


def build_user_states(
    events: DataFrame,
    *,
    item_index: DataFrame,
    max_len: int,
    as_of: dt.date | str,
) -> DataFrame:
    """One row per user with an event before the end of ``as_of`` (UTC), per ``SPARK_DDL[USER_STATES]``.

    - ``item_seq`` / ``event_seq`` / ``gap_seq``: the user's last ``max_len`` events, oldest first:
      item_idx, ``schema.EVENT_CODE`` and seconds since the user's previous event (0.0 for the
      user's first event ever; that predecessor may be older than the kept events).
    - ``purchased``: sorted distinct item_idx the user ever purchased (empty if none).
    - ``last_event_time`` and ``n_events`` cover the whole history, not just the kept events.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    by_user = Window.partitionBy(schema.USER_ID).orderBy(*event_order())
    whole_user = Window.partitionBy(schema.USER_ID)

    ordered = (
        with_item_idx_and_code(events.where(F.col(schema.EVENT_TIME) < F.lit(day_end_utc(as_of))), item_index)
        .withColumn("_pos", F.row_number().over(by_user))
        .withColumn("_gap", seconds_between(F.col(schema.EVENT_TIME), F.lag(schema.EVENT_TIME).over(by_user)))
        .withColumn("_n", F.count(F.lit(1)).over(whole_user))
    )
    # array_sort orders the structs by their first field, the event's position.
    kept_event = F.struct(
        F.col("_pos").alias("pos"),
        F.col(schema.ITEM_IDX).alias("idx"),
        F.col(EVENT_CODE_COL).alias("code"),
        F.coalesce(F.col("_gap"), F.lit(0.0)).alias("gap"),
    )
    is_kept = F.col("_pos") > F.col("_n") - max_len
    purchased_idx = F.when(F.col(schema.EVENT_TYPE) == schema.PURCHASE, F.col(schema.ITEM_IDX))
    states = (
        ordered.groupBy(schema.USER_ID)
        .agg(
            F.array_sort(F.collect_list(F.when(is_kept, kept_event))).alias("_kept"),
            F.array_sort(F.collect_set(purchased_idx)).alias(schema.PURCHASED),
            F.max(schema.EVENT_TIME).alias(schema.LAST_EVENT_TIME),
            F.count(F.lit(1)).alias(schema.N_EVENTS),
        )
        .select(
            schema.USER_ID,
            F.transform("_kept", lambda e: e["idx"]).alias(schema.ITEM_SEQ),
            F.transform("_kept", lambda e: e["code"]).alias(schema.EVENT_SEQ),
            F.transform("_kept", lambda e: e["gap"]).alias(schema.GAP_SEQ),
            schema.PURCHASED,
            schema.LAST_EVENT_TIME,
            schema.N_EVENTS,
        )
    )
    return to_contract(states, schema.USER_STATES)
