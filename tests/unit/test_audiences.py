"""Marketing's campaign audiences: the rule on a hand-made list, and the partition it writes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dql_model.contract import schema
from dql_model.publishing import audiences
from dql_model.warehouse import storage


def _recommendations(lists: dict[str, list[str]]) -> pa.Table:
    rows = [(user, rank, item) for user, items in lists.items() for rank, item in enumerate(items, start=1)]
    return pa.table(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.RANK: pa.array([r[1] for r in rows], pa.int32()),
            schema.ITEM_ID: [r[2] for r in rows],
            schema.MODEL_VERSION: ["v7"] * len(rows),
        }
    )


ITEMS = pa.table(
    {
        schema.ITEM_ID: ["a1", "a2", "a3", "b1", "b2", "x", "a1"],  # a duplicate row of a1
        schema.CATEGORY_ID: ["A", "A", "A", "B", "B", None, "A"],
    }
)


def test_users_dominated_by_one_category_form_its_audience():
    recs = _recommendations(
        {
            "u_a": ["a1", "a2", "a3", "b1", "x"],  # 3/5 A
            "u_b": ["b1", "b2", "a1", "x", "unknown"],  # 2/5 B: not dominated
            "u_all_b": ["b2", "b1"],  # 2/2 B
            "u_unknown": ["x", "unknown", "x"],  # no category at all
            "u_tie": ["a1", "b1"],  # 1/2 each: no dominant category
        }
    )
    got = audiences.build_campaign_audiences(recs, ITEMS, min_share=0.6)
    assert got.schema == audiences.COLUMNS
    assert got.to_pylist() == [
        {"category_id": "A", "user_id": "u_a", "n_in_category": 3, "n_recommended": 5, "category_share": 0.6, "model_version": "v7"},
        {"category_id": "B", "user_id": "u_all_b", "n_in_category": 2, "n_recommended": 2, "category_share": 1.0, "model_version": "v7"},
    ]


def test_a_share_of_one_half_or_less_is_refused():
    with pytest.raises(ValueError, match="min_share=0.5"):
        audiences.build_campaign_audiences(_recommendations({"u": ["a1"]}), ITEMS, min_share=0.5)


def test_the_run_dates_partition_is_replaced_whole(tiny_config):
    layout = tiny_config.layout
    storage.write_partition(ITEMS, layout.table(schema.ITEMS))
    run_date = "2026-11-27"
    published = layout.partition(schema.RECOMMENDATIONS, run_date)
    storage.write_partition(_recommendations({"u1": ["a1", "a2"], "u2": ["b1", "b2"], "u3": ["a1", "b1"]}), published)
    first = audiences.write_campaign_audiences(tiny_config, run_date)
    assert (first["rows"], first["audiences"]) == (2, {"A": 1, "B": 1})
    assert first["path"] == layout.marketing(audiences.TABLE, run_date)

    storage.write_partition(_recommendations({"u1": ["b1", "b2"]}), published)  # a rerun of the date
    again = audiences.write_campaign_audiences(tiny_config, run_date)
    table = storage.read_partition(again["path"])
    assert table.column(schema.USER_ID).to_pylist() == ["u1"]
    assert table.column(schema.CATEGORY_ID).to_pylist() == ["B"]
