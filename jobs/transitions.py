"""Training transitions (state, action, event, reward, done) for the training window.

``next_state`` is not stored: the loader derives it from the state plus the action.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dql_model.contract import schema
from dql_model.warehouse.rewards import RewardRule
from jobs.common import (
    EVENT_CODE_COL,
    day_end_utc,
    day_start_utc,
    event_order,
    to_contract,
    with_item_idx_and_code,
)
from jobs.sessions import sessionize
from jobs.user_states import VIRTUAL_COL, state_events

TIME, LEAVE_LAST_OUT = "time", "leave_last_out"
VALIDATION_PROTOCOLS = (TIME, LEAVE_LAST_OUT)
"""How ``build_transitions`` holds out the validation split (``etl.validation`` once resolved)."""
ORDER_COL = "_ord"
"""Scratch column: an event's position in its user's history (seed events included)."""


def build_transitions(
    events: DataFrame,
    *,
    item_index: DataFrame,
    max_len: int,
    rewards: Mapping[str, float],
    rating_scale: float,
    value_weighted: bool,
    window_start: dt.date | str,
    val_start: dt.date | str | None = None,
    window_end: dt.date | str | None = None,
    validation: str = TIME,
    session_gap_minutes: int | None = None,
    seed_states: DataFrame | None = None,
) -> DataFrame:
    """One row per event in ``[window_start, window_end]`` (UTC days), per ``SPARK_DDL[TRANSITIONS]``.

    - state (``item_seq``, ``event_seq``): the user's previous up to ``max_len`` events, oldest
      first, taken from the whole history in ``events`` (not only the window); empty arrays for
      a user's first event.
    - ``action``: the event's item_idx; ``event_type`` kept as a string.
    - ``reward``: ``rewards[event_type]`` for views, add-to-carts and purchases (purchases times
      price / mean catalogue price when ``value_weighted``, missing prices weigh 1); a rating v
      earns ``rating_scale * (v - 3) / 2`` clipped to [-1, 1], 0 when v is missing.
    - ``done``: the event is the last of its session, or the user's last event.
    - ``split``: with ``validation`` ``time``, ``validation`` from ``val_start`` on, else ``train``;
      with ``leave_last_out``, ``validation`` for each user's last event in the window when it has a
      state (an earlier event), else ``train``.
    - ``history_items`` / ``history_purchased`` (validation rows only, null on train rows; empty for
      a user's first event): the
      sorted distinct item_idx the user interacted with / purchased before the event, over the whole
      history (not only the state's L events), so the evaluation can mask what scoring masks.

    ``events`` should carry session ids (``jobs.sessions.sessionize``); with
    ``session_gap_minutes`` the missing ones are inferred here. Events after ``window_end``
    (default: no bound) still count as the next event for ``done``.

    ``seed_states`` (user_states) stand in for the history before ``events``, so that only the
    window's partitions need reading: a state's kept events (with their exact times, see
    ``jobs.user_states``) join each user's events, in event order, as earlier interactions. They
    must cover every event not in ``events`` and end before ``window_start``; they only ever
    appear inside states, never as transitions or as the next event of one. Their ``interacted`` and
    ``purchased`` lists stand for the history before ``events`` in the validation rows' history.
    """
    if validation not in VALIDATION_PROTOCOLS:
        raise ValueError(f"validation must be one of {VALIDATION_PROTOCOLS}, got {validation!r}")
    if validation == TIME and val_start is None:
        raise ValueError("validation='time' needs val_start")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    rule = RewardRule(fixed=rewards, rating_scale=rating_scale)  # refuses missing event types
    if session_gap_minutes is not None:
        events = sessionize(events, gap_minutes=session_gap_minutes)

    by_user = Window.partitionBy(schema.USER_ID).orderBy(*event_order())
    indexed = with_item_idx_and_code(events, item_index).withColumn("_seed", F.lit(False))
    active = None
    if seed_states is not None:
        # Only the users with events here: the states of everyone else cannot matter.
        active = seed_states.join(
            events.select(schema.USER_ID).distinct(), on=schema.USER_ID, how="left_semi"
        )
        seeded = (
            state_events(active, item_index=item_index)
            .where(~F.col(VIRTUAL_COL))
            .drop(VIRTUAL_COL)
            .withColumn("_seed", F.lit(True))
        )
        indexed = indexed.unionByName(seeded, allowMissingColumns=True)
    indexed = indexed.withColumn(ORDER_COL, F.row_number().over(by_user))
    # The previous max_len events, oldest first, as offsets in one pass over the sorted rows:
    # cheaper than collecting a sliding frame and sorting it for every row.
    event = F.struct(F.col(schema.ITEM_IDX).alias("idx"), F.col(EVENT_CODE_COL).alias("code"))
    previous_events = F.array(*[F.lag(event, k).over(by_user) for k in range(max_len, 0, -1)])
    state = F.filter(previous_events, lambda e: e.isNotNull())
    next_session = F.lead(schema.SESSION_ID).over(by_user)
    has_next = F.lead(F.lit(True)).over(by_user).isNotNull()
    done = ~has_next | ~next_session.eqNullSafe(F.col(schema.SESSION_ID))

    in_window = F.col(schema.EVENT_TIME) >= F.lit(day_start_utc(window_start))
    next_time = F.lead(schema.EVENT_TIME).over(by_user)
    last_in_window = next_time.isNull()
    if window_end is not None:
        end = F.lit(day_end_utc(window_end))
        in_window = in_window & (F.col(schema.EVENT_TIME) < end)
        last_in_window = last_in_window | (next_time >= end)
    if validation == TIME:
        held_out = F.col(schema.EVENT_TIME) >= F.lit(day_start_utc(val_start))
    else:
        held_out = last_in_window & (F.size("_state") > 0)

    transitions = (
        indexed.withColumn("_state", state)
        .withColumn(schema.DONE, done)
        .withColumn("_held_out", held_out)
        .where(in_window & ~F.col("_seed"))
        .select(
            ORDER_COL,
            schema.USER_ID,
            schema.EVENT_TIME,
            F.transform("_state", lambda e: e["idx"]).alias(schema.ITEM_SEQ),
            F.transform("_state", lambda e: e["code"]).alias(schema.EVENT_SEQ),
            F.col(schema.ITEM_IDX).alias(schema.ACTION),
            schema.EVENT_TYPE,
            schema.ITEM_ID,
            schema.VALUE,
            schema.DONE,
            F.when(F.col("_held_out"), F.lit(schema.VALIDATION)).otherwise(F.lit(schema.TRAIN)).alias(schema.SPLIT),
        )
    )
    transitions = _with_history(transitions, indexed, active)
    if value_weighted:
        mean_price = item_index.where(F.col(schema.PRICE) > 0).agg(F.avg(schema.PRICE).alias("_mean_price"))
        prices = item_index.select(schema.ITEM_ID, schema.PRICE)
        transitions = transitions.join(prices, on=schema.ITEM_ID, how="left").crossJoin(
            F.broadcast(mean_price)
        )
        purchase_weight = F.coalesce(F.col(schema.PRICE) / F.col("_mean_price"), F.lit(1.0))
    else:
        purchase_weight = F.lit(1.0)
    return to_contract(
        transitions.withColumn(
            schema.REWARD, rule.spark_column(purchase_weight)
        ),
        schema.TRANSITIONS,
    )


def _with_history(transitions: DataFrame, indexed: DataFrame, seed_states: DataFrame | None) -> DataFrame:
    """``history_items`` / ``history_purchased`` on the validation rows (see ``build_transitions``).

    The history is gathered for the validation rows only (few: a time window or one per user) and
    broadcast back, so the transitions keep their user and time order within each partition.
    """
    held_out = transitions.where(F.col(schema.SPLIT) == schema.VALIDATION).select(schema.USER_ID, ORDER_COL)
    past = indexed.where(~F.col("_seed")).select(
        schema.USER_ID,
        F.col(ORDER_COL).alias("_past"),
        schema.ITEM_IDX,
        F.when(F.col(schema.EVENT_TYPE) == schema.PURCHASE, F.col(schema.ITEM_IDX)).alias("_bought"),
    )
    before = (
        held_out.join(past, on=schema.USER_ID)
        .where(F.col("_past") < F.col(ORDER_COL))
        .groupBy(schema.USER_ID, ORDER_COL)
        .agg(F.collect_set(schema.ITEM_IDX).alias("_items"), F.collect_set("_bought").alias("_purchased"))
    )
    empty = F.array().cast("array<int>")
    history = held_out.join(before, on=[schema.USER_ID, ORDER_COL], how="left").select(
        schema.USER_ID,
        ORDER_COL,
        F.coalesce("_items", empty).alias("_items"),
        F.coalesce("_purchased", empty).alias("_purchased"),
    )
    if seed_states is not None:  # the history before the events read: the seed states' lists
        earlier = seed_states.select(
            schema.USER_ID,
            F.coalesce(F.col(schema.INTERACTED), empty).alias("_seed_items"),
            F.coalesce(F.col(schema.PURCHASED), empty).alias("_seed_purchased"),
        )
        history = (
            history.join(earlier, on=schema.USER_ID, how="left")
            .withColumn("_items", F.concat("_items", F.coalesce("_seed_items", empty)))
            .withColumn("_purchased", F.concat("_purchased", F.coalesce("_seed_purchased", empty)))
        )
    history = history.select(
        schema.USER_ID,
        ORDER_COL,
        F.array_sort(F.array_distinct("_items")).alias(schema.HISTORY_ITEMS),
        F.array_sort(F.array_distinct("_purchased")).alias(schema.HISTORY_PURCHASED),
    )
    # A broadcast join streams the transitions in their order; the hint keeps Spark from shuffling them.
    return transitions.join(F.broadcast(history), on=[schema.USER_ID, ORDER_COL], how="left")
