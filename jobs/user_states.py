"""Per-user state for scoring: the last L interactions as arrays, plus what scoring must mask.

Two ways to the same table:

- ``build_user_states``: from a user's whole event history (the full rebuild, and the definition).
- ``update_user_states``: from yesterday's states plus the events ingested since (the nightly
  incremental path), so a night's cost grows with its events and the number of users, not with
  the history.

Why the update can equal the rebuild: a state keeps the last L events with their gaps, and
``last_event_time`` is the time of the last one, so the kept events' times are exact
(microseconds) by subtracting the gaps from the end. Merging the kept events with the new ones
(late ones included) in event order and keeping the last L gives the rebuild's arrays, because
every older event sorts before the first kept one. The one older event whose time still matters
is the predecessor of the first kept event: its time is the first kept time minus the first gap,
and it enters the merge as a virtual row that is never kept but gives the next row its gap.
Rows that tie on (time, event type, item) hold the same values in every array, so the tie-breaks
on value and session of the full order, which a state does not keep, cannot change the result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from dql_model.contract import schema
from jobs.common import (
    EVENT_CODE_COL,
    day_end_utc,
    event_order,
    seconds_between,
    to_contract,
    with_item_idx_and_code,
)

VIRTUAL_COL = "_virtual"
"""Scratch column of ``state_events``: true on the predecessor row, which is never kept."""


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
    - ``interacted``: sorted distinct item_idx of every event of the user (what ``score.exclude:
      interacted`` masks).
    - ``last_event_time`` and ``n_events`` cover the whole history, not just the kept events.
    """
    _check_max_len(max_len)
    by_user = Window.partitionBy(schema.USER_ID).orderBy(*event_order())
    whole_user = Window.partitionBy(schema.USER_ID)

    ordered = (
        with_item_idx_and_code(events.where(F.col(schema.EVENT_TIME) < F.lit(day_end_utc(as_of))), item_index)
        .withColumn("_pos", F.row_number().over(by_user))
        .withColumn("_gap", seconds_between(F.col(schema.EVENT_TIME), F.lag(schema.EVENT_TIME).over(by_user)))
        .withColumn("_n", F.count(F.lit(1)).over(whole_user))
    )
    is_kept = F.col("_pos") > F.col("_n") - max_len
    purchased_idx = F.when(F.col(schema.EVENT_TYPE) == schema.PURCHASE, F.col(schema.ITEM_IDX))
    states = ordered.groupBy(schema.USER_ID).agg(
        _kept_events(is_kept).alias("_kept"),
        F.array_sort(F.collect_set(purchased_idx)).alias(schema.PURCHASED),
        F.array_sort(F.collect_set(schema.ITEM_IDX)).alias(schema.INTERACTED),
        F.max(schema.EVENT_TIME).alias(schema.LAST_EVENT_TIME),
        F.count(F.lit(1)).alias(schema.N_EVENTS),
    )
    return _to_states(states)


def update_user_states(
    previous: DataFrame,
    events: DataFrame,
    *,
    item_index: DataFrame,
    max_len: int,
    as_of: dt.date | str,
) -> DataFrame:
    """Tonight's states from ``previous`` (built with the same ``max_len``) and the new ``events``.

    ``events`` are the accepted events that ``previous`` did not cover (late ones included, in
    any order); the result equals ``build_user_states`` over the union of both histories (see
    the module docstring). Users without new events keep their row as it is; new users get one.
    Events after the end of ``as_of`` are ignored, as in ``build_user_states``.
    """
    _check_max_len(max_len)
    new = with_item_idx_and_code(
        events.where(F.col(schema.EVENT_TIME) < F.lit(day_end_utc(as_of))), item_index
    )
    touched = new.select(schema.USER_ID).distinct()
    previous = to_contract(previous, schema.USER_STATES)
    untouched = previous.join(touched, on=schema.USER_ID, how="left_anti")
    touched_before = previous.join(touched, on=schema.USER_ID, how="left_semi")

    # One pass over the kept events (carrying the history totals) and the new events.
    with_totals = (
        touched_before.withColumn("_old_n", F.col(schema.N_EVENTS))
        .withColumn("_old_purchased", F.col(schema.PURCHASED))
        .withColumn("_old_interacted", F.col(schema.INTERACTED))
    )
    carried = ("_old_n", "_old_purchased", "_old_interacted")
    merged = state_events(with_totals, item_index=item_index, carry=carried).unionByName(
        _real_events(
            new,
            F.lit(None).cast("bigint").alias("_old_n"),
            F.lit(None).cast("array<int>").alias("_old_purchased"),
            F.lit(None).cast("array<int>").alias("_old_interacted"),
            F.when(F.col(schema.EVENT_TYPE) == schema.PURCHASE, F.col(schema.ITEM_IDX)).alias("_bought"),
        ),
        allowMissingColumns=True,
    )
    # Nulls sort first: a virtual predecessor precedes every real row at its time (see module doc).
    order = [F.col(schema.EVENT_TIME), F.col(EVENT_CODE_COL), F.col(schema.ITEM_ID)]
    by_user = Window.partitionBy(schema.USER_ID).orderBy(*order)
    # Positions count the virtual row too; only the order among the real rows matters. The gap
    # and the position come from the same ordering, so rows tied on every key stay consistent.
    is_kept = ~F.col(VIRTUAL_COL) & (F.col("_pos") > F.col("_n") - max_len)
    is_new = F.col("_old_n").isNull()
    updated = (
        merged.withColumn("_pos", F.row_number().over(by_user))
        .withColumn("_gap", seconds_between(F.col(schema.EVENT_TIME), F.lag(schema.EVENT_TIME).over(by_user)))
        .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy(schema.USER_ID)))
        .groupBy(schema.USER_ID)
        .agg(
            _kept_events(is_kept).alias("_kept"),
            _merged_set("_old_purchased", "_bought").alias(schema.PURCHASED),
            _merged_set("_old_interacted", schema.ITEM_IDX).alias(schema.INTERACTED),
            F.max(F.when(~F.col(VIRTUAL_COL), F.col(schema.EVENT_TIME))).alias(schema.LAST_EVENT_TIME),
            (F.coalesce(F.max("_old_n"), F.lit(0)) + F.count(F.when(is_new, 1))).alias(schema.N_EVENTS),
        )
    )
    return untouched.unionByName(_to_states(updated))


def state_events(states: DataFrame, *, item_index: DataFrame, carry: Sequence[str] = ()) -> DataFrame:
    """The events a user_states frame keeps, one row each, with their exact times.

    Columns: ``user_id``, ``event_time``, ``item_id``, ``item_idx``, the event-code scratch
    column, ``VIRTUAL_COL`` and the ``carry`` columns of ``states`` (repeated on each row of
    the state). Times are ``last_event_time`` minus the later gaps. When the user has older
    events than the kept ones, one more row (``VIRTUAL_COL`` true, no item, no code) stands for
    the predecessor of the first kept event, at its time.
    """
    ids = item_index.select(schema.ITEM_ID, schema.ITEM_IDX)
    gaps_us = F.transform(schema.GAP_SEQ, lambda g: F.round(g * 1_000_000).cast("bigint"))
    # Time of the i-th kept event: the last event's time minus the gaps of the events after it.
    times_us = F.transform(
        "_gaps_us",
        lambda _g, i: (
            F.unix_micros(F.col(schema.LAST_EVENT_TIME))
            - F.aggregate(
                F.slice("_gaps_us", i + 2, F.size("_gaps_us")), F.lit(0).cast("bigint"), lambda a, x: a + x
            )
        ),
    )
    with_times = states.withColumn("_gaps_us", gaps_us).withColumn("_times_us", times_us)
    kept = (
        with_times.select(
            schema.USER_ID,
            *carry,
            F.explode(
                F.arrays_zip(
                    F.col("_times_us").alias("t"),
                    F.col(schema.ITEM_SEQ).alias("idx"),
                    F.col(schema.EVENT_SEQ).alias("code"),
                )
            ).alias("_e"),
        )
        .select(
            schema.USER_ID,
            F.timestamp_micros(F.col("_e.t")).alias(schema.EVENT_TIME),
            F.col("_e.idx").alias(schema.ITEM_IDX),
            F.col("_e.code").alias(EVENT_CODE_COL),
            *carry,
        )
        .join(F.broadcast(ids), on=schema.ITEM_IDX, how="left")
    )
    predecessors = with_times.where(F.col(schema.N_EVENTS) > F.size(schema.ITEM_SEQ)).select(
        schema.USER_ID,
        F.timestamp_micros(F.col("_times_us")[0] - F.col("_gaps_us")[0]).alias(schema.EVENT_TIME),
        F.lit(None).cast("string").alias(schema.ITEM_ID),
        F.lit(None).cast("int").alias(schema.ITEM_IDX),
        F.lit(None).cast("int").alias(EVENT_CODE_COL),
        F.lit(True).alias(VIRTUAL_COL),
        *carry,
    )
    return _real_events(kept, *carry).unionByName(predecessors)


def _real_events(frame: DataFrame, *extra: str | Column) -> DataFrame:
    """``frame``'s event columns as ``state_events`` unions them, flagged as real (not predecessor) rows."""
    return frame.select(
        schema.USER_ID,
        schema.EVENT_TIME,
        schema.ITEM_ID,
        schema.ITEM_IDX,
        EVENT_CODE_COL,
        F.lit(False).alias(VIRTUAL_COL),
        *extra,
    )


def _merged_set(old: str, new: str) -> Column:
    """Sorted distinct union of a carried list (the previous state's, null for new users) and the
    non-null values of ``new`` over the user's rows."""
    earlier = F.coalesce(F.max(old), F.array().cast("array<int>"))
    return F.array_sort(F.array_distinct(F.concat(earlier, F.collect_set(new))))


def _check_max_len(max_len: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")


def _kept_events(is_kept: Column) -> Column:
    """Sorted array of (pos, idx, code, gap) structs of the kept rows; needs ``_pos`` and ``_gap``.

    array_sort orders the structs by their first field, the event's position.
    """
    kept_event = F.struct(
        F.col("_pos").alias("pos"),
        F.col(schema.ITEM_IDX).alias("idx"),
        F.col(EVENT_CODE_COL).alias("code"),
        F.coalesce(F.col("_gap"), F.lit(0.0)).alias("gap"),
    )
    return F.array_sort(F.collect_list(F.when(is_kept, kept_event)))


def _to_states(states: DataFrame) -> DataFrame:
    """The contract's columns from ``_kept`` (see ``_kept_events``) and the history totals."""
    return to_contract(
        states.select(
            schema.USER_ID,
            F.transform("_kept", lambda e: e["idx"]).alias(schema.ITEM_SEQ),
            F.transform("_kept", lambda e: e["code"]).alias(schema.EVENT_SEQ),
            F.transform("_kept", lambda e: e["gap"]).alias(schema.GAP_SEQ),
            schema.PURCHASED,
            schema.INTERACTED,
            schema.LAST_EVENT_TIME,
            schema.N_EVENTS,
        ),
        schema.USER_STATES,
    )
