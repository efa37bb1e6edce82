"""Scoring: masks, fallback, deterministic ties, K rows per user, output schema."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from dql_model import data, metrics, schema
from dql_model.config import ModelConfig
from dql_model.networks import QNetwork
from dql_model.score import score_users, top_k_deterministic

torch.set_num_threads(1)
AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def bias_only_model(biases: list[float]) -> QNetwork:
    """A network whose Q(s, a) is b(a) for every state: the item tower outputs zeros."""
    torch.manual_seed(0)
    model = QNetwork(len(biases), 1, ModelConfig(embed_dim=4, hidden_dim=4, price_buckets=4))
    with torch.no_grad():
        last = model.item_tower[-1]
        last.weight.zero_()
        last.bias.zero_()
        model.item_bias.weight[:, 0] = torch.tensor([0.0, *biases])
    return model


def item_features(n_items: int, unavailable=()) -> data.ItemFeatures:
    available = np.ones(n_items + 1, dtype=bool)
    available[0] = False
    available[list(unavailable)] = False
    return data.ItemFeatures(
        item_ids=np.array([None] + [f"i{i}" for i in range(1, n_items + 1)], dtype=object),
        category=np.zeros(n_items + 1, dtype=np.int64),
        price_bucket=np.zeros(n_items + 1, dtype=np.int64),
        available=available,
        category_ids=[],
    )


def user_states(rows: list[tuple[str, list[int], list[int]]], max_len: int = 4) -> data.UserStates:
    items = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, (_, state, _) in enumerate(rows):
        if state:
            items[r, -len(state) :] = state
    counts = [len(p) for _, _, p in rows]
    return data.UserStates(
        user_id=pa.array([u for u, _, _ in rows]),
        state_items=items,
        state_events=(items > 0).astype(np.int64),
        purchased_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        purchased_items=np.array([i for _, _, p in rows for i in p], dtype=np.int64),
    )


def recommendations(table: pa.Table) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["user_id"], []).append((row["item_id"], row["source"]))
        assert row["rank"] == len(out[row["user_id"]])  # ranks 1..n in order
    return out


def score(model, states, items, **kw):
    args = {"top_k": 3, "batch_size": 2, "popularity": np.zeros(items.n_items + 1), "model_version": "v1"}
    return score_users(model, states, items, generated_at=AT, **(args | kw))


def test_masks_purchased_and_unavailable_items_and_breaks_ties_by_index():
    # items 1..8 with Q = bias; items 2, 3 and 5 tie at 5.0
    model = bias_only_model([1.0, 5.0, 5.0, 9.0, 5.0, 0.5, 2.0, 3.0])
    items = item_features(8, unavailable=[8])
    states = user_states([("a", [1, 2], []), ("b", [3], [4]), ("c", [1], [4, 2]), ("d", [5, 6], [])])
    table = score(model, states, items)

    got = recommendations(table)
    assert got["a"] == [("i4", "dqn"), ("i2", "dqn"), ("i3", "dqn")]
    assert got["b"] == [("i2", "dqn"), ("i3", "dqn"), ("i5", "dqn")]  # bought 4: masked
    assert got["c"] == [("i3", "dqn"), ("i5", "dqn"), ("i7", "dqn")]  # 8 (3.0) unavailable
    assert table.num_rows == 12 and table.column("user_id").to_pylist()[:3] == ["a"] * 3
    np.testing.assert_allclose(table.column("score").to_pylist()[:3], [9.0, 5.0, 5.0])
    assert set(table.column("propensity").to_pylist()) == {1.0}
    assert set(table.column("model_version").to_pylist()) == {"v1"}
    assert table.schema == schema.arrow_schema(schema.RECOMMENDATIONS)

    unmasked = recommendations(score(model, states, items, mask_purchased=False))
    assert unmasked["b"][0] == ("i4", "dqn")


def test_unknown_states_get_the_popularity_fallback_with_masks():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0, 5.0])  # the model knows items 1..5
    items = item_features(7, unavailable=[6])  # tonight's index has 7 items; 6 is out of stock
    popularity = np.array([0.0, 1.0, 3.0, 3.0, 0.0, 0.0, 99.0, 50.0])
    states = user_states(
        [
            ("empty", [], []),
            ("new-items-only", [6, 7], [7]),
            ("mixed", [7, 1], []),
        ]
    )
    got = recommendations(score(model, states, items, popularity=popularity))
    # popularity desc, ties by index; 6 unavailable; 7 bought by the second user
    assert got["empty"] == [
        ("i7", "fallback_popular"),
        ("i2", "fallback_popular"),
        ("i3", "fallback_popular"),
    ]
    assert got["new-items-only"] == [
        ("i2", "fallback_popular"),
        ("i3", "fallback_popular"),
        ("i1", "fallback_popular"),
    ]
    # a known item left in the state: the model scores, and never items it does not know (6, 7)
    assert got["mixed"] == [("i5", "dqn"), ("i4", "dqn"), ("i3", "dqn")]


def test_fewer_rows_when_fewer_items_are_left():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0])
    items = item_features(4, unavailable=[1, 2])
    states = user_states([("a", [1], [3]), ("b", [], [])])
    got = recommendations(score(model, states, items, popularity=np.arange(5.0)))
    assert got == {"a": [("i4", "dqn")], "b": [("i4", "fallback_popular"), ("i3", "fallback_popular")]}


def test_scores_are_the_model_q_values_and_exactly_k_per_user():
    torch.manual_seed(1)
    model = QNetwork(30, 2, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4)).eval()
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", rng.integers(1, 31, size=rng.integers(1, 5)).tolist(), []) for u in range(9)]
    states = user_states(rows)
    table = score(model, states, item_features(30), top_k=5, batch_size=4)
    assert table.num_rows == 45
    assert table.column("rank").to_pylist() == list(range(1, 6)) * 9
    with torch.no_grad():
        q = model.q_values(
            torch.from_numpy(states.state_items), torch.from_numpy(states.state_events)
        ).numpy()
    expected, values = metrics.top_k(q, 5)
    np.testing.assert_array_equal(
        np.array([int(i[1:]) for i in table.column("item_id").to_pylist()]).reshape(9, 5), expected
    )
    np.testing.assert_allclose(np.array(table.column("score").to_pylist()).reshape(9, 5), values, rtol=1e-5)


def test_torch_top_k_matches_numpy_under_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(20, 50)).astype(np.float32)
    scores[:, 7] = -np.inf
    index, values = top_k_deterministic(torch.from_numpy(scores), 9)
    expected_index, expected_values = metrics.top_k(scores, 9)
    np.testing.assert_array_equal(index.numpy(), expected_index)
    np.testing.assert_array_equal(values.numpy(), expected_values)


def test_nan_scores_refuse_to_score():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        model.item_bias.weight[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        score(model, user_states([("a", [1], [])]), item_features(4))
