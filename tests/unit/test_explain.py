"""`dqlrec explain USER`: a user's state decoded, the items masked and why, each published slot's source
and reason, the fallback's reason, the model version; on a tiny warehouse written as the night leaves it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from dql_model import cli
from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.judging import explain
from dql_model.warehouse import storage
from tests.factories import item_index_table, user_states_table, write_parquet

RUN_DATE = "2026-11-27"
MODEL_ITEMS = 10
"""The scoring model knows i1..i10; the item index has i1..i12 (i11, i12 came after its training)."""
VIEW, CART, BUY = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))


@pytest.fixture
def night(tiny_config):
    """A published night: u1 scored by the model (one explored slot), u2 by the fallback (only new items in
    its state), u3 left out by score.active_window (auto: 30 days); the model registered with MODEL_ITEMS items."""
    import torch

    from dql_model.learning import registry
    from dql_model.learning.networks import QNetwork

    cfg, layout = tiny_config, tiny_config.layout
    torch.manual_seed(0)
    version = registry.save_model(
        QNetwork(MODEL_ITEMS, 3, cfg.model).eval(), cfg, registry_root=cfg.registry.root,
        metrics={"history": [], "best": {}}, data_window={"run_date": RUN_DATE, "transitions": 1},
    )  # fmt: skip
    available = [True] * 12
    available[3] = False  # i4 is sold out tonight
    categories = [f"c{i % 3}" for i in range(1, 13)]
    categories[10] = None  # i11 has no category; i12 is in c0
    write_parquet(
        Path(layout.partition(schema.ITEM_INDEX, RUN_DATE)),
        item_index_table(12, available=available, categories=categories),
    )
    old = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    write_parquet(
        Path(layout.partition(schema.USER_STATES, RUN_DATE)),
        user_states_table([
            {"user_id": "u1", "item_seq": [2, 4, 5, 5], "event_seq": [VIEW, VIEW, CART, BUY], "purchased": [5]},
            {"user_id": "u2", "item_seq": [12, 11], "event_seq": [VIEW, VIEW]},
            {"user_id": "u3", "item_seq": [1], "last_event_time": old},
        ]),
    )  # fmt: skip
    rows = [
        ("u1", 1, "i7", 2.5, schema.SOURCE_DQN, 1.0),
        ("u1", 2, "i3", 1.5, schema.SOURCE_DQN, 1.0),
        ("u1", 3, "i9", 0.25, schema.SOURCE_EXPLORE, 0.125),
        ("u2", 1, "i9", 30.0, schema.SOURCE_FALLBACK, 1.0),
        ("u2", 2, "i6", 20.0, schema.SOURCE_FALLBACK, 1.0),
    ]
    columns = list(zip(*rows, strict=True))
    stamp = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    table = pa.table(
        [*columns, [version] * len(rows), [stamp] * len(rows)],
        schema=schema.arrow_schema(schema.RECOMMENDATIONS),
    )
    storage.write_partition(table, layout.partition(schema.RECOMMENDATIONS, RUN_DATE))
    return version


def test_a_model_users_list_state_and_masks(tiny_config, night):
    explained = explain.explain(tiny_config, "u1", RUN_DATE)
    assert (explained["model_version"], explained["model_items"]) == (night, MODEL_ITEMS)
    assert explained["exclude_rule"] == "purchased"  # score.exclude auto, no recorded protocol: purchases
    assert [(e["item_id"], e["event_type"]) for e in explained["state"]["events"]] == [
        ("i2", "view"), ("i4", "view"), ("i5", "add_to_cart"), ("i5", "purchase"),
    ]  # fmt: skip
    assert explained["masked"] == [
        {"item_id": "i5", "code": "already_purchased", "reason": "purchased before (score.exclude = purchased)"},
        {"item_id": "i4", "code": "unavailable", "reason": "not available tonight"},
    ]
    slots = explained["recommendations"]
    assert [(s["rank"], s["item_id"], s["source"]) for s in slots] == [(1, "i7", "dqn"), (2, "i3", "dqn"), (3, "i9", "explore")]
    assert slots[0]["why"] == "greedy by Q"
    assert slots[2]["why"].startswith("explored") and "0.125 = P(this item at this rank)" in slots[2]["why"]
    assert explained["fallback_reason"] is None and explained["not_listed_reason"] is None


def test_the_interacted_rule_masks_every_item_of_the_history(tiny_config, night):
    cfg = tiny_config.replace(score={"exclude": "interacted"})
    masked = explain.explain(cfg, "u1", RUN_DATE)["masked"]
    reason = "interacted with before (score.exclude = interacted)"
    expected = [{"item_id": item, "code": "already_interacted", "reason": reason} for item in ("i2", "i4", "i5")]
    assert masked == expected  # i4 not again


def test_a_fallback_list_says_why(tiny_config, night):
    explained = explain.explain(tiny_config, "u2", RUN_DATE)
    assert [m["item_id"] for m in explained["masked"]] == ["i11", "i12"]
    assert all("newer than the model" in m["reason"] and m["code"] == "new_since_training" for m in explained["masked"])
    assert explained["fallback_reason"] == (
        f"no item of the user's state is one the model knows (item_idx 1..{MODEL_ITEMS}): all are newer; popular "
        "available items of category c0 (of i12, the most recent interaction with a category) came first, then "
        "popular items overall"
    )
    assert {s["why"] for s in explained["recommendations"]} == {
        "popular available item (fallback); score = its popularity"
    }


def test_users_without_a_list_are_told_why(tiny_config, night):
    inactive = explain.explain(tiny_config, "u3", RUN_DATE)
    assert inactive["recommendations"] == [] and inactive["not_listed_reason"].startswith(
        "not scored: the last event (2026-09-01T00:00:00+00:00) is before 2026-10-29"
    )
    unknown = explain.explain(tiny_config, "nobody", RUN_DATE)
    assert unknown["state"] is None and unknown["not_listed_reason"].startswith("no state for this user on 2026-11-27")


def test_a_night_that_published_nothing_is_named(tiny_config, night):
    with pytest.raises(MissingInput, match="recommendations partition .*run_date=2026-11-26 is missing"):
        explain.explain(tiny_config, "u1", "2026-11-26")


def test_the_command_prints_text_and_json_for_the_last_published_night(capsys, tiny_config, night, tmp_path):
    import yaml

    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump(tiny_config.to_dict()))
    assert cli.main(["explain", "u2", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"user u2, run {RUN_DATE}, model {night} ({MODEL_ITEMS} items)\n")
    assert "fallback: no item of the user's state" in text and "  i12: newer than the model" in text
    assert cli.main(["--config", str(config), "explain", "u1", "--run-date", RUN_DATE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(explain.explain(tiny_config, "u1", RUN_DATE)))
    assert cli.main(["--config", str(config), "explain", "u1", "--run-date", "2026-11-01"]) == 2
    assert "run_date=2026-11-01 is missing" in capsys.readouterr().err
