"""Validate raw events: accepted rows go on, every rejected row goes to quarantine with its rule.

The rules, their order and their meaning are ``dql_model.contract.rules.RAW_ROW_RULES`` (the raw data gate
reads the same table); the first rule a row fails is the rule written for it. Here each rule is a
Spark condition (``_CONDITIONS``). The time rule is anchored on the partition the row arrived in (or
the run date), and ``duplicate`` is decided last, among the rows that passed every other rule: the
copy from the earliest partition is kept, the others are quarantined.

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

from dql_model.contract import rules, schema
from jobs.common import SECONDS_PER_DAY, as_date, day_end_utc, to_contract

EVENT_COLUMNS = [
    schema.EVENT_TIME,
    schema.USER_ID,
    schema.ITEM_ID,
    schema.EVENT_TYPE,
    schema.VALUE,
    schema.SESSION_ID,
]
RULE_ORDER = rules.RULE_ORDER
"""The rules in the order a row is judged (dql_model.contract.rules owns them)."""
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


def _blank(name: str) -> Column:
    return F.col(name).isNull() | (F.trim(F.col(name)) == "")


def _null_id(run_date: dt.date, lookback_days: int | None) -> Column:
    return _blank(schema.USER_ID) | _blank(schema.ITEM_ID) | F.col(schema.EVENT_TIME).isNull()


def _bad_event_type(run_date: dt.date, lookback_days: int | None) -> Column:
    return ~F.coalesce(F.col(schema.EVENT_TYPE).isin(*schema.EVENT_TYPES), F.lit(False))


def _unknown_item(run_date: dt.date, lookback_days: int | None) -> Column:
    return F.col(_KNOWN).isNull()


def _bad_value(run_date: dt.date, lookback_days: int | None) -> Column:
    low, high = schema.RATING_BOUNDS
    in_bounds = F.coalesce(F.col(schema.VALUE).between(low, high), F.lit(False))
    return (F.col(schema.EVENT_TYPE) == schema.RATING) & ~in_bounds


def _time_out_of_range(run_date: dt.date, lookback_days: int | None) -> Column:
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
    return out_of_range


_CONDITIONS = {
    schema.RULE_NULL_ID: _null_id,
    schema.RULE_BAD_EVENT_TYPE: _bad_event_type,
    schema.RULE_UNKNOWN_ITEM: _unknown_item,
    schema.RULE_BAD_VALUE: _bad_value,
    schema.RULE_TIME_OUT_OF_RANGE: _time_out_of_range,
}
"""Rule -> the condition a row breaking it meets; ``duplicate`` is decided in ``label_events``."""
SPARK_RULES = (*_CONDITIONS, schema.RULE_DUPLICATE)
"""The rules this job implements (a test checks they are exactly dql_model.contract.rules' table)."""


def _first_failed_rule(*, run_date: dt.date, lookback_days: int | None) -> Column:
    """The first rule (in RULE_ORDER) a row fails, or null; duplicates are decided afterwards."""
    if set(SPARK_RULES) != set(RULE_ORDER):
        raise NotImplementedError(
            f"the rule table dql_model.contract.rules has {list(RULE_ORDER)}; clean_events implements {list(SPARK_RULES)}: "
            "give every rule of the table a condition in _CONDITIONS"
        )
    first, *others = (name for name in RULE_ORDER if name in _CONDITIONS)
    verdict = F.when(_CONDITIONS[first](run_date, lookback_days), F.lit(first))
    for name in others:
        verdict = verdict.when(_CONDITIONS[name](run_date, lookback_days), F.lit(name))
    return verdict.otherwise(F.lit(None).cast("string"))
