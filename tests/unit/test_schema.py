"""Names of the data contract: run dates, metric names, conforming a table to its schema."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from dql_model.contract import schema


def test_run_dates_are_real_calendar_days():
    assert schema.iso_date("2026-11-27") == "2026-11-27"
    assert schema.iso_date(dt.date(2026, 2, 28)) == "2026-02-28"
    for bad in ("2026-13-45", "2026-02-30", "2026-1-5", "20261127", "", dt.datetime(2026, 11, 27)):
        with pytest.raises(ValueError, match="expected a calendar date as YYYY-MM-DD"):
            schema.iso_date(bad)


def test_metric_names_round_trip():
    assert schema.metric_name("ndcg", 10) == "eval/ndcg@10"
    assert schema.metric_name("hr", 20, schema.PURCHASE) == "eval/purchase/hr@20"
    assert schema.metric_k("eval/purchase/hr@20") == 20
    assert schema.is_metric_name("eval/coverage@10")
    assert not schema.is_metric_name("eval/view/coverage@10")  # list metrics are not per event type
    assert not schema.is_metric_name("loss/td")


def test_conform_orders_and_casts_columns_and_names_what_is_wrong():
    table = pa.table({"price": [1], "available": [True], "category_id": ["c"], "item_id": ["i"]})
    conformed = schema.conform(table, schema.ITEMS)
    assert conformed.schema == schema.arrow_schema(schema.ITEMS)
    with pytest.raises(ValueError, match=r"items table does not match the contract: missing columns \['price'\]"):
        schema.conform(table.drop_columns(["price"]), schema.ITEMS)
    with pytest.raises(ValueError, match="items columns .*'price'.* cannot be cast"):
        schema.conform(table.set_column(0, "price", pa.array(["x"])), schema.ITEMS)
