"""Scoring: masks, fallback, deterministic ties, K rows per user, output schema; the engines' summary."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from dql_model.config import ModelConfig
from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.learning.networks import QNetwork
from dql_model.ops import spark_jobs
from dql_model.scoring import engines, masks
from dql_model.scoring.engines import ScoringSummary, score_users
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import top_k_deterministic
from dql_model.warehouse import data
from tests.factories import item_features

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
        excluded_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        excluded_items=np.array([i for _, _, p in rows for i in p], dtype=np.int64),
    )


def recommendations(table: pa.Table) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["user_id"], []).append((row["item_id"], row["source"]))
        assert row["rank"] == len(out[row["user_id"]])  # ranks 1..n in order
    return out


POLICY_FIELDS = {f.name for f in dataclasses.fields(Policy)}


def score(model, states, items, **kw):
    """score_users with small defaults; Policy fields (top_k, temperature, ...) go to its Policy."""
    policy = Policy(**({"top_k": 3} | {k: v for k, v in kw.items() if k in POLICY_FIELDS}))
    args = {"batch_size": 2, "popularity": np.zeros(items.n_items + 1), "model_version": "v1"}
    args |= {k: v for k, v in kw.items() if k not in POLICY_FIELDS}
    return score_users(model, states, items, policy, generated_at=AT, **args)


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

    unmasked = recommendations(score(model, states, items, exclude="none"))
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


def test_mask_counts_per_reason_and_short_lists_match_the_rows_written():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0, 5.0])  # the model knows items 1..5
    items = item_features(6, unavailable=[2])  # item 6 is new since training, item 2 out of stock
    states = user_states(
        [
            ("a", [1], [1, 2]),  # model: bought 1 and 2; 6 unknown to it; candidates 3, 4, 5
            ("b", [], [3]),  # fallback: bought 3; candidates 1, 4, 5, 6
            ("c", [6], []),  # only a new item in the state: fallback; candidates 1, 3, 4, 5, 6
        ]
    )
    table, counts = engines.rank_users(
        model,
        states,
        items,
        Policy(top_k=4),
        batch_size=2,
        popularity=np.arange(7.0),
        model_version="v1",
        generated_at=AT,
    )
    # Each pair once, under its first reason: a's bought-and-unavailable item 2 counts as purchased.
    assert counts.masked == {"already_purchased": 3, "unavailable": 2, "new_since_training": 1}
    assert counts.short_lists == {"model": 1, "fallback": 0}
    rows = {user: n for user, n in zip(*(c.to_pylist() for c in pc.value_counts(table.column("user_id")).flatten()), strict=True)}
    assert rows == {"a": 3, "b": 4, "c": 4}  # the short list is a's, and nothing pads it

    everything = engines.rank_users(
        model, states, items, Policy(top_k=4, exclude="none"), batch_size=3,
        popularity=np.arange(7.0), model_version="v1", generated_at=AT,
    )[1]
    assert everything.masked == {"unavailable": 3, "new_since_training": 1}
    assert everything.short_lists == {"model": 0, "fallback": 0}
    line = masks.describe(counts.masked, counts.short_lists, 4)
    assert "already purchased 3" in line and "1 user had fewer than 4 candidates" in line and "1 ranked by the model" in line


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


# --- fallback by category, and the edge cases marketing asks about -----------------------------------


def categorised(n_items: int, categories: list[int], unavailable=()) -> data.ItemFeatures:
    items = item_features(n_items, unavailable)
    items.category = np.array([0, *categories], dtype=np.int64)
    items.category_ids = [f"c{c}" for c in sorted(set(categories) - {0})]
    return items


def test_fallback_prefers_the_category_of_the_most_recent_interaction():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0])  # knows items 1..4; 5..8 are new tonight
    #                       1  2  3  4  5  6  7  8
    items = categorised(8, [1, 2, 1, 2, 1, 2, 0, 2])
    popularity = np.array([0.0, 5.0, 9.0, 1.0, 8.0, 2.0, 3.0, 7.0, 4.0])
    states = user_states(
        [
            ("brand-new", [], []),  # no interaction at all: popular overall
            ("new-in-2", [5, 6], []),  # most recent: item 6, category 2
            ("new-in-1", [6, 5], []),  # most recent: item 5, category 1
            ("no-category", [7], []),  # its only item has no category: popular overall
        ]
    )
    got = recommendations(score(model, states, items, popularity=popularity, top_k=4))
    fallback = schema.SOURCE_FALLBACK
    assert got["brand-new"] == [(f"i{i}", fallback) for i in (2, 4, 7, 1)]
    assert got["new-in-2"] == [(f"i{i}", fallback) for i in (2, 4, 8, 6)]  # category 2 by popularity first
    assert got["new-in-1"] == [(f"i{i}", fallback) for i in (1, 5, 3, 2)]  # then popular overall
    assert got["no-category"] == got["brand-new"]


def test_user_who_bought_everything_in_a_category():
    #                       1  2  3  4  5  6
    items = categorised(6, [1, 1, 1, 2, 2, 2])
    popularity = np.array([0.0, 9.0, 8.0, 7.0, 3.0, 2.0, 1.0])
    model = bias_only_model([9.0, 8.0, 7.0, 3.0, 2.0, 1.0])  # the model likes category 1 too
    states = user_states(
        [
            ("scored", [1], [1, 2, 3]),  # has a state: the model ranks, category 1 all masked
            ("fallback", [7], [1, 2, 3]),  # state of an item the model does not know, bought all of 1
        ]
    )
    items.item_ids = np.array([None] + [f"i{i}" for i in range(1, 8)], dtype=object)
    items.category = np.append(items.category, 1)  # item 7: new tonight, category 1
    items.price_bucket = np.zeros(8, dtype=np.int64)
    items.available = np.append(items.available, True)
    popularity = np.append(popularity, 0.5)
    got = recommendations(score(model, states, items, popularity=popularity, top_k=3))
    assert got["scored"] == [("i4", "dqn"), ("i5", "dqn"), ("i6", "dqn")]
    # category 1 first: only the new item 7 is left of it; then popular overall, purchases masked
    assert got["fallback"] == [("i7", "fallback_popular"), ("i4", "fallback_popular"), ("i5", "fallback_popular")]


def test_item_unavailable_today_is_never_recommended_by_any_source():
    model = bias_only_model([1.0, 9.0, 2.0, 3.0])  # item 2 is the model's favourite
    items = item_features(4, unavailable=[2])
    popularity = np.array([0.0, 1.0, 9.0, 2.0, 3.0])  # and the most popular
    states = user_states([("a", [1], []), ("b", [], [])])
    for options in ({}, {"explore_slots": 3}, {"explore_epsilon": 1.0, "temperature": 100.0}):
        table = score(model, states, items, popularity=popularity, top_k=3, **options)
        assert "i2" not in table.column("item_id").to_pylist(), options
        assert table.num_rows == 6


def test_rows_do_not_depend_on_the_order_of_users():
    torch.manual_seed(5)
    model = QNetwork(40, 2, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4)).eval()
    rng = np.random.default_rng(2)
    rows = [(f"u{u}", rng.integers(1, 41, size=rng.integers(0, 5)).tolist(), []) for u in range(60)]
    forward = score(model, user_states(rows), item_features(40), top_k=4, batch_size=8, explore_slots=1)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    backward = score(model, user_states(shuffled), item_features(40), top_k=4, batch_size=8, explore_slots=1)
    key = [("user_id", "ascending"), ("rank", "ascending")]
    # The same users land in the same batches whatever the input order: identical bits, not just close.
    assert forward.sort_by(key).equals(backward.sort_by(key))
    assert forward.column("user_id").to_pylist()[::4] == [r[0] for r in rows]  # rows follow the input order


# --- exploration -----------------------------------------------------------------------------------


def softmax(q: np.ndarray, temperature: float) -> np.ndarray:
    w = np.exp((q - q.max()) / temperature)
    return w / w.sum()


def many_users(n: int, state=(1,), bought=()) -> data.UserStates:
    return user_states([(f"user-{u}", list(state), list(bought)) for u in range(n)])


def test_exploration_slots_follow_the_softmax_with_marginal_propensities():
    q = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    model = bias_only_model(q.tolist())
    items = item_features(6, unavailable=[4])  # q = 0.0 item is out of stock
    n, temperature = 4000, 0.7
    table = score(model, many_users(n, bought=[6]), items, top_k=3, batch_size=512, explore_slots=2,
                  temperature=temperature, seed=123)  # fmt: skip
    rows = table.to_pylist()
    assert len(rows) == 3 * n
    # rank 1 is greedy: the best item not bought (6) and available
    assert {(r["item_id"], r["source"], r["propensity"]) for r in rows if r["rank"] == 1} == {("i1", "dqn", 1.0)}
    eligible = np.array([2, 3, 5])  # after item 1 took rank 1: i4 unavailable, i6 bought
    p2 = softmax(q[eligible - 1], temperature)
    second = [r for r in rows if r["rank"] == 2]
    assert {r["source"] for r in second} == {"explore"}
    for item, p in zip(eligible, p2, strict=True):
        chosen = [r for r in second if r["item_id"] == f"i{item}"]
        np.testing.assert_allclose([r["propensity"] for r in chosen], p, rtol=1e-6)
        assert abs(len(chosen) / n - p) < 4 * np.sqrt(p * (1 - p) / n), (item, len(chosen) / n, p)
    # rank 3: drawn from what rank 2 left; its propensity is the marginal over what rank 2 drew
    by_user = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    for picks in by_user.values():
        assert len({p["item_id"] for p in picks}) == 3
    marginal3 = {
        j: sum(p2[a] * softmax(q[np.delete(eligible, a) - 1], temperature)[list(np.delete(eligible, a)).index(j)]
               for a in range(3) if eligible[a] != j)
        for j in eligible
    }  # fmt: skip
    for item, p in marginal3.items():
        got = np.array([r["propensity"] for r in rows if r["rank"] == 3 and r["item_id"] == f"i{item}"])
        # 64 replicate slates per estimate: unbiased, ~0.05 apart; thousands of them average out
        assert abs(got.mean() - p) < 0.005 and got.std() < 0.08, (item, got.mean(), got.std(), p)
        assert abs(len(got) / n - p) < 4 * np.sqrt(p * (1 - p) / n), (item, len(got) / n, p)


def test_epsilon_mixes_greedy_and_drawn_slots_with_mixture_propensities():
    q = np.array([3.0, 2.0, 1.0, 0.0])
    model = bias_only_model(q.tolist())
    n, eps = 3000, 0.25
    table = score(model, many_users(n), item_features(4), top_k=1, explore_epsilon=eps, seed=7)
    rows = table.to_pylist()
    p = softmax(q, 1.0)
    explored = [r for r in rows if r["source"] == "explore"]
    assert abs(len(explored) / n - eps) < 4 * np.sqrt(eps * (1 - eps) / n)
    for r in rows:
        item = int(r["item_id"][1:])
        expected = eps * p[item - 1] + (1 - eps) * (item == 1)
        assert r["propensity"] == pytest.approx(expected, rel=1e-6)
        if r["source"] == "dqn":
            assert item == 1


def test_exploration_is_seeded_and_independent_of_batches():
    model = bias_only_model([1.0, 1.2, 0.8, 1.1, 0.9, 1.05])
    states, items = many_users(200), item_features(6)
    run = lambda **kw: score(model, states, items, top_k=4, explore_slots=3, **({"seed": 1} | kw))  # noqa: E731
    first = run(batch_size=7)
    assert first.equals(run(batch_size=7))  # a rerun of the date draws the same
    assert first.equals(run(batch_size=1000))  # ...whatever the batches
    other = run(seed=2, batch_size=7)
    assert not first.column("item_id").equals(other.column("item_id"))


def test_exploration_with_fewer_items_than_slots_and_a_cold_temperature():
    model = bias_only_model([1.0, 2.0, 3.0, 4.0])
    items = item_features(4, unavailable=[1])
    states = user_states([("a", [2], [4]), ("b", [2], [])])
    got = score(model, states, items, top_k=4, explore_slots=4, temperature=1e-3).to_pylist()
    # a: only 2 and 3 are eligible; a cold softmax draws them best first, almost surely
    assert [(r["user_id"], r["item_id"]) for r in got] == [("a", "i3"), ("a", "i2"), ("b", "i4"), ("b", "i3"), ("b", "i2")]
    assert [r["propensity"] for r in got if r["rank"] > 1 or r["user_id"] == "a"] == pytest.approx([1.0] * 4)
    assert all(r["propensity"] > 0 for r in got)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"explore_slots": 9}, "explore_slots must be between 0 and top_k"),
        ({"explore_epsilon": 1.5}, "explore_epsilon must be between 0 and 1"),
        ({"temperature": 0.0}, "explore_temperature must be a positive number"),
        ({"top_k": 0}, "top_k must be at least 1"),
    ],
)
def test_bad_exploration_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        score(bias_only_model([1.0]), user_states([("a", [1], [])]), item_features(1), **options)


# --- the engines' summary and the Spark engine's child process ---------------------------------------


def summary(**changes) -> ScoringSummary:
    fields = {
        "run_date": "2026-11-27",
        "path": "/warehouse/staging/recommendations/run_date=2026-11-27",
        "rows": 12,
        "users": 4,
        "model_version": "20261127-ab12cd34",
        "top_k": 3,
        "engine": "torch (cpu)",
        "sources": {name: 0 for name in schema.SOURCES} | {schema.SOURCE_DQN: 9, schema.SOURCE_FALLBACK: 3},
    }
    return ScoringSummary(**(fields | changes))


def test_scoring_summary_round_trips_through_its_json_file(tmp_path):
    path = tmp_path / "_runs" / "run_date=2026-11-27" / "score_users.json"
    written = summary()
    written.write(path)
    assert ScoringSummary.read(path) == written
    assert json.loads(path.read_text()) == written.to_dict()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    summary(rows=0, sources={}).write(path)  # a rerun replaces it
    assert ScoringSummary.read(path).rows == 0


def test_failed_job_raises_naming_the_job_the_date_and_its_last_lines(tmp_path, monkeypatch):
    fail = "import sys\nfor i in range(30): print(f'line {i}')\nsys.exit(3)"
    monkeypatch.setattr(spark_jobs, "job_command", lambda *_, **__: [sys.executable, "-c", fail])
    with pytest.raises(spark_jobs.JobFailed, match=r"score_recommendations failed for run date 2026-11-27 \(exit code 3\)") as error:
        spark_jobs.run_job("score_recommendations", "2026-11-27", config={}, scratch=str(tmp_path))
    quoted = str(error.value).splitlines()[1:]
    assert quoted == [f"line {i}" for i in range(10, 30)]
    monkeypatch.setattr(spark_jobs, "job_command", lambda *_, **__: [sys.executable, "-c", "print('fine')"])
    spark_jobs.run_job("score_recommendations", "2026-11-27", config={}, scratch=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # the config file is removed either way


def test_spark_engine_runs_the_job_on_the_resolved_config_and_names_it_when_it_fails(tiny_config, monkeypatch):
    # Starting the real job costs a JVM (~20 s); a stand-in child reads the config file it is given.
    cfg = tiny_config.replace(score={"engine": "spark", "top_k": 7})
    monkeypatch.setenv("DQLREC_SCORE__TOP_K", "99")  # must not override the resolved config in the child
    launched = []

    def stand_in(job: str, run_date: str, args, *, config_file: str) -> list[str]:
        launched.append((job, run_date, list(args)))
        child = "import sys; from dql_model.config import load_config; print('top_k', load_config(sys.argv[1]).score.top_k); sys.exit(2)"
        return [sys.executable, "-c", child, config_file]

    monkeypatch.setattr(spark_jobs, "job_command", stand_in)
    with pytest.raises(spark_jobs.JobFailed, match=r"Spark job score_recommendations failed for run date 2026-11-27") as error:
        engines.score(cfg, "2026-11-27", "20261127-missing")
    assert launched == [("score_recommendations", "2026-11-27", ["--model-version", "20261127-missing"])]
    assert str(error.value).splitlines()[-1] == "top_k 7"
    assert list(Path(cfg.layout.scoring_summary("2026-11-27")).parent.iterdir()) == []  # config file removed


def test_rows_name_what_produced_them():
    from dql_model.learning import registry

    model = bias_only_model([1.0, 5.0, 3.0])
    items = item_features(3)
    states = user_states([("a", [1], []), ("new", [], [])])
    got = recommendations(score(model, states, items, source=schema.SOURCE_SUPERVISED, top_k=2))
    assert {source for _, source in got["a"]} == {"supervised"}
    assert {source for _, source in got["new"]} == {"fallback_popular"}  # no state: the fallback, whatever the model
    with pytest.raises(ValueError, match="is not a model's source"):
        score(model, states, items, source=schema.SOURCE_EXPLORE)
    assert registry.model_source({"config": {"train": {"mode": "supervised"}}}) == "supervised"
    assert registry.model_source({"config": {"train": {"mode": "dqn"}}}) == "dqn"
