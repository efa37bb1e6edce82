"""Marketing's campaign audiences: the users whose top-K is dominated by one category.

Owns the ``campaign_audiences`` table (its columns and the rule that builds it); it is an example of a
downstream reader of the published recommendations, run by dags/marketing_audiences.py when the
recommendations asset says a date is published. One row per (category, user): the user's list puts
at least ``min_share`` of its K items in that category, so a campaign for the category can target them.
``min_share`` above one half makes the dominant category unique.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.warehouse import storage

TABLE = "campaign_audiences"
CATEGORY_SHARE = "category_share"
N_IN_CATEGORY = "n_in_category"
N_RECOMMENDED = "n_recommended"
COLUMNS = pa.schema(
    [
        (schema.CATEGORY_ID, pa.string()),
        (schema.USER_ID, pa.string()),
        (N_IN_CATEGORY, pa.int64()),
        (N_RECOMMENDED, pa.int64()),
        (CATEGORY_SHARE, pa.float64()),
        (schema.MODEL_VERSION, pa.string()),
    ]
)
"""The table's Parquet columns (run_date is the partition)."""
DEFAULT_MIN_SHARE = 0.6


def build_campaign_audiences(
    recommendations: pa.Table, items: pa.Table, *, min_share: float = DEFAULT_MIN_SHARE
) -> pa.Table:
    """Rows of ``COLUMNS`` sorted by category then user: each user whose list is dominated by a category.

    The share counts every recommended item in the denominator, items without a category (or unknown
    to the catalogue) included, so a list of unknown items never makes an audience.
    """
    if not 0.5 < min_share <= 1.0:
        raise ValueError(f"min_share={min_share}: expected more than 0.5 (one dominant category) and at most 1")
    recs = recommendations.select([schema.USER_ID, schema.ITEM_ID, schema.MODEL_VERSION]).to_pandas()
    categories = items.select([schema.ITEM_ID, schema.CATEGORY_ID]).to_pandas().drop_duplicates(schema.ITEM_ID)
    recs = recs.merge(categories, on=schema.ITEM_ID, how="left")
    totals = recs.groupby(schema.USER_ID).size().rename(N_RECOMMENDED)
    versions = recs.groupby(schema.USER_ID)[schema.MODEL_VERSION].first()
    per_category = (
        recs.dropna(subset=[schema.CATEGORY_ID]).groupby([schema.USER_ID, schema.CATEGORY_ID]).size().rename(N_IN_CATEGORY)
    )
    rows = per_category.reset_index().join(totals, on=schema.USER_ID).join(versions, on=schema.USER_ID)
    rows[CATEGORY_SHARE] = rows[N_IN_CATEGORY] / rows[N_RECOMMENDED]
    rows = rows[rows[CATEGORY_SHARE] >= min_share].sort_values([schema.CATEGORY_ID, schema.USER_ID])
    return pa.Table.from_pandas(rows[COLUMNS.names], schema=COLUMNS, preserve_index=False)


def write_campaign_audiences(cfg: Config, run_date: str, *, min_share: float = DEFAULT_MIN_SHARE) -> dict[str, Any]:
    """Build the run date's audiences from its published recommendations and replace that partition."""
    run_date = schema.iso_date(run_date)
    layout = cfg.layout
    recommendations = storage.read_partition(layout.partition(schema.RECOMMENDATIONS, run_date))
    items = storage.read_partition(layout.table(schema.ITEMS))
    audiences = build_campaign_audiences(recommendations, items, min_share=min_share)
    path = layout.marketing(TABLE, run_date)
    storage.write_partition(audiences, path)
    sizes = audiences.group_by(schema.CATEGORY_ID).aggregate([(schema.USER_ID, "count")]).to_pylist()
    return {
        "run_date": run_date,
        "path": path,
        "rows": audiences.num_rows,
        "audiences": {row[schema.CATEGORY_ID]: row[f"{schema.USER_ID}_count"] for row in sizes},
    }
