"""Validate raw events: accepted rows go on, every rejected row goes to quarantine with its rule.

Rules, checked in this order; the first one a row fails is the rule written for it:

1. ``null_id``: ``user_id``, ``item_id`` or ``event_time`` is null (or an id is blank).
2. ``bad_event_type``: ``event_type`` is not one of ``schema.EVENT_TYPES`` (null included).
3. ``unknown_item``: ``item_id`` is not in ``items`` (the nightly job passes the catalogue and
   every item indexed before).
4. ``bad_value``: a rating whose ``value`` is null or outside ``schema.RATING_BOUNDS``.
5. ``event_time_out_of_range``: the event happened after the end (UTC) of the partition it
   arrived in (or of the run date), or, when ``lookback_days`` is given, more than
   ``lookback_days`` days before the start of that partition's date (a late arrival beyond the
   tolerated lateness).
6. ``duplicate``: an exact copy (all six event columns equal) of a row that passed rules 1-5;
   the copy from the earliest partition is kept, the others are quarantined.

Nothing is dropped silently: ``input rows = accepted + quarantined`` holds exactly.

Every rule but ``unknown_item`` depends only on the row, the partition it arrived in and the
partitions at most ``lookback_days`` before it (where the kept copy of a duplicate must be),
never on the run date: a row gets the same verdict whichever night reads it. That is what lets
an incremental night ingest only its new partitions (plus ``lookback_days`` of context) and
agree with a full rebuild. ``unknown_item`` depends on the catalogue of the night: pass the
items ever indexed as well as tonight's catalogue, so an item that left the shop stays known.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from dql_model import schema
from jobs.common import SECONDS_PER_DAY, as_date, day_end_utc, to_contract

EVENT_COLUMNS = [
    schema.EVENT_TIME,
    schema.USER_ID,
    schema.ITEM_ID,
    schema.EVENT_TYPE,
    schema.VALUE,
    schema.SESSION_ID,
]
RULE_ORDER = (
    schema.RULE_NULL_ID,
    schema.RULE_BAD_EVENT_TYPE,
    schema.RULE_UNKNOWN_ITEM,
    schema.RULE_BAD_VALUE,
    schema.RULE_TIME_OUT_OF_RANGE,
    schema.RULE_DUPLICATE,
)
_KNOWN = "_known_item"
PARTITION_DATE_COL = "_partition_date"
"""Column of ``label_events``: the date of the partition a row arrived in (null if unknown)."""


def clean_events(
    events: DataFrame,
    *,
    items: DataFrame,
    run_date: dt.date | str,
    lookback_days: int | None = None,
    keep_event_date: bool = False,
) -> tuple[DataFrame, DataFrame]:
    """Split raw events into ``(accepted, quarantine)``.

    ``events`` has the raw event columns and, when read from the partitioned table, the
    ``event_date`` partition column (it names ``source_partition`` and anchors the lateness
    rule). ``accepted`` has the six event columns of ``schema.SPARK_DDL[EVENTS]``;
    ``quarantine`` has the columns of ``schema.SPARK_DDL[QUARANTINE]``.
    ``lookback_days=None`` accepts events of any age. ``keep_event_date=True`` appends the
    ``event_date`` partition column to ``accepted``, for callers that treat the partitions they
    ingest differently from those read only as duplicate context.
    """
    labelled = label_events(events, items=items, run_date=run_date, lookback_days=lookback_days)
    return split_labelled(labelled, keep_event_date=keep_event_date)


def label_events(
    events: DataFrame,
    *,
    items: DataFrame,
    run_date: dt.date | str,
    lookback_days: int | None = None,
) -> DataFrame:
    """The six event columns, ``PARTITION_DATE_COL`` and ``rule`` (null: accepted) of every row.

    The expensive half of ``clean_events``: a caller that uses both outputs can persist this
    frame and split it with ``split_labelled``, so the cleaning runs once.
    """
    if lookback_days is not None and lookback_days < 0:
        raise ValueError(f"lookback_days must be >= 0 or None, got {lookback_days}")
    has_partition = schema.EVENT_DATE in events.columns
    partition_date = F.col(schema.EVENT_DATE) if has_partition else F.lit(None).cast("date")

    known_items = (
        items.select(schema.ITEM_ID)
        .where(F.col(schema.ITEM_ID).isNotNull())
        .distinct()
        .withColumn(_KNOWN, F.lit(True))
    )
    checked = (
        events.withColumn(PARTITION_DATE_COL, partition_date)
        .join(known_items, on=schema.ITEM_ID, how="left")
        .withColumn(schema.RULE, _first_failed_rule(run_date=as_date(run_date), lookback_days=lookback_days))
    )

    # Among rows that passed every other rule, all but the first copy of an exact duplicate fail.
    # A window partitioned by the event columns groups nulls together, as "exact copy" needs.
    copies = Window.partitionBy(*EVENT_COLUMNS, schema.RULE).orderBy(
        F.col(PARTITION_DATE_COL).asc_nulls_last()
    )
    return checked.select(
        *EVENT_COLUMNS,
        PARTITION_DATE_COL,
        F.when(F.col(schema.RULE).isNull() & (F.row_number().over(copies) > 1), F.lit(schema.RULE_DUPLICATE))
        .otherwise(F.col(schema.RULE))
        .alias(schema.RULE),
    )


def split_labelled(labelled: DataFrame, *, keep_event_date: bool = False) -> tuple[DataFrame, DataFrame]:
    """``(accepted, quarantine)`` of a ``label_events`` frame (see ``clean_events``)."""
    passed = labelled.where(F.col(schema.RULE).isNull())
    if keep_event_date:
        passed = passed.withColumn(schema.EVENT_DATE, F.col(PARTITION_DATE_COL))
    accepted = to_contract(passed, schema.EVENTS, extra=[schema.EVENT_DATE] if keep_event_date else [])
    quarantine = labelled.where(F.col(schema.RULE).isNotNull()).withColumn(
        schema.SOURCE_PARTITION,
        F.concat(F.lit(f"{schema.EVENT_DATE}="), F.col(PARTITION_DATE_COL).cast("string")),
    )
    return accepted, to_contract(quarantine, schema.QUARANTINE)


def _first_failed_rule(*, run_date: dt.date, lookback_days: int | None) -> Column:
    """The first rule (in RULE_ORDER) a row fails, or null; duplicates are decided afterwards."""

    def blank(name: str) -> Column:
        return F.col(name).isNull() | (F.trim(F.col(name)) == "")

    null_id = blank(schema.USER_ID) | blank(schema.ITEM_ID) | F.col(schema.EVENT_TIME).isNull()
    bad_type = ~F.coalesce(F.col(schema.EVENT_TYPE).isin(*schema.EVENT_TYPES), F.lit(False))
    unknown_item = F.col(_KNOWN).isNull()
    low, high = schema.RATING_BOUNDS
    bad_value = (F.col(schema.EVENT_TYPE) == schema.RATING) & ~F.coalesce(
        F.col(schema.VALUE).between(low, high), F.lit(False)
    )
    # Anchor on the partition the row arrived in (rows without one count as the run date's): an
    # event cannot arrive before it happened, and the verdict must not change from night to night.
    anchor_day = F.coalesce(F.col(PARTITION_DATE_COL), F.lit(run_date))
    anchor_end = F.timestamp_seconds((F.unix_date(anchor_day) + 1).cast("bigint") * SECONDS_PER_DAY)
    out_of_range = (F.col(schema.EVENT_TIME) >= F.lit(day_end_utc(run_date))) | (
        F.col(schema.EVENT_TIME) >= anchor_end
    )
    if lookback_days is not None:
        earliest = F.timestamp_seconds(
            (F.unix_date(anchor_day) - lookback_days).cast("bigint") * SECONDS_PER_DAY
        )
        out_of_range = out_of_range | (F.col(schema.EVENT_TIME) < earliest)

    return (
        F.when(null_id, F.lit(schema.RULE_NULL_ID))
        .when(bad_type, F.lit(schema.RULE_BAD_EVENT_TYPE))
        .when(unknown_item, F.lit(schema.RULE_UNKNOWN_ITEM))
        .when(bad_value, F.lit(schema.RULE_BAD_VALUE))
        .when(out_of_range, F.lit(schema.RULE_TIME_OUT_OF_RANGE))
        .otherwise(F.lit(None).cast("string"))
    )
