"""The item index: string item_id -> dense 1-based item_idx, append-only across nights.

An item keeps its item_idx forever, so a model trained on an older index can warm-start.
New items get indices after the current maximum, in the order they were first seen (time,
then item_id), which makes the numbering independent of how Spark partitions the data.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dql_model.contract import schema
from jobs.common import as_date, day_end_utc, to_contract, utc_date


def build_item_index(
    items: DataFrame,
    *,
    previous_index: DataFrame | None,
    events: DataFrame,
    run_date: dt.date | str,
) -> DataFrame:
    """Tonight's index (``schema.SPARK_DDL[ITEM_INDEX]``) from the last one, the catalogue and the events.

    - Items in ``previous_index`` keep ``item_idx`` and ``first_seen``.
    - Items new tonight (in ``items`` or in the accepted ``events``) are numbered from
      ``max(previous item_idx) + 1`` (from 1 on the first night, 0 being padding), ordered by
      the time of their first event, then ``item_id``; items never seen in an event come after
      those that were, and their ``first_seen`` is ``run_date``.
    - ``category_id``, ``price`` and ``available`` come from tonight's ``items``. An indexed item
      missing from tonight's catalogue keeps its last known category and price and is marked
      unavailable, so it is never recommended but its index stays valid.
    """
    run_day = as_date(run_date)
    catalogue = _one_row_per_item(items)
    first_event = (
        events.where(F.col(schema.ITEM_ID).isNotNull())
        .groupBy(schema.ITEM_ID)
        .agg(F.min(schema.EVENT_TIME).alias("_first_time"))
    )
    if previous_index is None:
        previous = catalogue.sparkSession.createDataFrame([], schema.SPARK_DDL[schema.ITEM_INDEX])
    else:
        previous = to_contract(previous_index, schema.ITEM_INDEX)

    candidates = catalogue.select(schema.ITEM_ID).unionByName(first_event.select(schema.ITEM_ID)).distinct()
    new_items = (
        candidates.join(previous.select(schema.ITEM_ID), on=schema.ITEM_ID, how="left_anti")
        .join(first_event, on=schema.ITEM_ID, how="left")
        # Items only in the catalogue sort after every event of the run (end of the run date).
        .withColumn("_first_time", F.coalesce(F.col("_first_time"), F.lit(day_end_utc(run_day))))
    )
    # One global ordering is needed for a partition-independent numbering; new items per night
    # are few, so the single-partition window is cheap.
    numbering = Window.orderBy(F.col("_first_time"), F.col(schema.ITEM_ID))
    start = previous.agg(F.coalesce(F.max(schema.ITEM_IDX), F.lit(0)).alias("_max_idx"))
    appended = new_items.crossJoin(F.broadcast(start)).select(
        schema.ITEM_ID,
        (F.col("_max_idx") + F.row_number().over(numbering)).cast("int").alias(schema.ITEM_IDX),
        F.least(utc_date(F.col("_first_time")), F.lit(run_day)).alias(schema.FIRST_SEEN),
    )

    ids = previous.select(schema.ITEM_ID, schema.ITEM_IDX, schema.FIRST_SEEN).unionByName(appended)
    last_known = previous.select(
        schema.ITEM_ID,
        F.col(schema.CATEGORY_ID).alias("_old_category"),
        F.col(schema.PRICE).alias("_old_price"),
    )
    index = (
        ids.join(catalogue.withColumn("_listed", F.lit(True)), on=schema.ITEM_ID, how="left")
        .join(last_known, on=schema.ITEM_ID, how="left")
        .select(
            schema.ITEM_ID,
            schema.ITEM_IDX,
            F.when(F.col("_listed"), F.col(schema.CATEGORY_ID))
            .otherwise(F.col("_old_category"))
            .alias(schema.CATEGORY_ID),
            F.when(F.col("_listed"), F.col(schema.PRICE)).otherwise(F.col("_old_price")).alias(schema.PRICE),
            F.coalesce(F.col(schema.AVAILABLE), F.lit(False)).alias(schema.AVAILABLE),
            schema.FIRST_SEEN,
        )
    )
    return to_contract(index, schema.ITEM_INDEX)


def _one_row_per_item(items: DataFrame) -> DataFrame:
    """The catalogue with one row per non-null item_id.

    Upstream checks flag a catalogue listing an item twice; should one get through, the
    available row wins, then the higher price, then the smaller category, so the choice is
    deterministic.
    """
    preference = Window.partitionBy(schema.ITEM_ID).orderBy(
        F.col(schema.AVAILABLE).desc_nulls_last(),
        F.col(schema.PRICE).desc_nulls_last(),
        F.col(schema.CATEGORY_ID).asc_nulls_last(),
    )
    return (
        items.where(F.col(schema.ITEM_ID).isNotNull())
        .withColumn("_rank", F.row_number().over(preference))
        .where(F.col("_rank") == 1)
        .select(schema.ITEM_ID, schema.CATEGORY_ID, schema.PRICE, schema.AVAILABLE)
    )
